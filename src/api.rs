//! The blocking Rust API: what the C ABI and the bindings wrap. Every call runs its work on
//! the library's runtime and returns; `close` never blocks.
//!
//! A client's close wakes every call blocked on it, whatever it waits for (a dial against
//! a server that never answers included), and every call on it or its tunnels that ends
//! after the close began reports [`Error::Closed`]: what the close did to connections
//! and sockets (a dial refused, a stream reset) never shows through as another error.
//!
//! Its `*_async` twins return futures any executor can poll (what the bindings' suspend and
//! async functions wrap): the waiting runs as a task on the library's runtime, handed back
//! through a oneshot ([`Runtime::hand_off`]); dropping the future cancels the task. The
//! rule for a dropped (cancelled) call: it did nothing, or what it did is undone by ending
//! the tunnel, never half of it silently —
//! - `read_async` takes bytes out of the tunnel only in the poll that returns them: dropped
//!   earlier, it took nothing and the tunnel stays usable;
//! - `write_async` of at most the upload queue's size takes room for all of it before it
//!   queues a byte, then queues it in one step: dropped, it queued nothing (the tunnel stays
//!   usable) or all of it and returned. A longer write goes in parts; stopped part-way by
//!   its timeout or the tunnel's end, it returns the count queued; dropped after its first
//!   part, it ends the tunnel with an error naming the count, and the upload is reset, so
//!   the server never takes the part for the whole;
//! - `open_async` dropped closes a tunnel it already opened; `shutdown_write_async` is
//!   idempotent; a client's `close` ends a pending `open_async`/`probe_async` at once with
//!   [`Error::Closed`].

use crate::config::{Config, Mode};
use crate::error::{Error, Result};
use crate::proxy::socks::SocksOptions;
pub use crate::proxy::udp::UdpOptions;
use crate::proxy::vless::{self, Target};
use crate::proxy::{forward, socks, udp};
use crate::runtime::{Deadline, Runtime};
use crate::tunnel::{Dialer, TunnelCore, Upload};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A client for one server config. Cheap to share across threads (`Clone`).
#[derive(Clone)]
pub struct Client {
    dialer: Arc<Dialer>,
    /// Cancelled first thing by `close`, shared with the client's tunnels.
    closed: CancellationToken,
    rt: Arc<Runtime>,
}

impl Client {
    pub fn new(cfg: Config) -> Result<Client> {
        let rt = Runtime::shared()?;
        let dialer = Arc::new(Dialer::new(cfg)?);
        Ok(Client {
            dialer,
            closed: CancellationToken::new(),
            rt,
        })
    }

    /// Runs `fut` on the runtime until it ends, `timeout` runs out or the client is closed.
    fn run<T>(&self, timeout: Option<Duration>, fut: impl Future<Output = Result<T>>) -> Result<T> {
        let closed = self.closed.clone();
        let r = self.rt.block_on(timeout, async move {
            tokio::select! {
                biased;
                _ = closed.cancelled() => Err(Error::Closed),
                r = fut => r,
            }
        });
        settle(&self.closed, r)
    }

    /// Accepts the library JSON, an Xray outbound, a whole Xray config or a `vless://` link.
    pub fn from_json(json: &str) -> Result<Client> {
        Client::new(crate::config::xray::import(json)?)
    }

    /// The mode tunnels are opened in (`auto` already resolved).
    pub fn mode(&self) -> Mode {
        self.dialer.mode()
    }

    /// Opens one tunnel; `timeout` bounds connecting and sending the request heads.
    pub fn open(&self, timeout: Option<Duration>) -> Result<Tunnel> {
        let d = self.dialer.clone();
        let core = self.run(timeout, async move { d.open().await })?;
        Ok(self.tunnel(core))
    }

    /// Opens a VLESS TCP flow to `target` (`host:port`, `[v6]:port`) as a [`Tunnel`]: its
    /// reads and writes move the flow's payload (the VLESS headers are the tunnel's own
    /// business). The config must carry a VLESS id. `timeout` bounds the open as in
    /// [`open`](Self::open).
    pub fn connect_tcp(&self, target: &str, timeout: Option<Duration>) -> Result<Tunnel> {
        let target = Target::parse(target)?;
        vless::configured_id(&self.dialer)?;
        let d = self.dialer.clone();
        let core = self.run(timeout, async move {
            vless::open(&d, vless::Command::Tcp, &target).await
        })?;
        Ok(self.tunnel(core))
    }

    fn tunnel(&self, core: TunnelCore) -> Tunnel {
        Tunnel {
            core: Arc::new(core),
            client_closed: self.closed.clone(),
            _dialer: self.dialer.clone(),
            rt: self.rt.clone(),
        }
    }

    /// Bytes up/down, open tunnels, live connections.
    pub fn stats(&self) -> crate::tunnel::ClientStats {
        self.dialer.stats()
    }

    /// XMUX introspection: live and draining connections, running slots, charged requests.
    pub fn pool_stats(&self) -> crate::xmux::PoolStats {
        self.dialer.pool_stats()
    }

    /// Opens a VLESS UDP tunnel to `target`: datagrams each way, length-prefixed inside.
    pub fn open_vless_udp(&self, target: &str, timeout: Option<Duration>) -> Result<VlessUdp> {
        let target = Target::parse(target)?;
        let d = self.dialer.clone();
        let t = self.run(timeout, async move {
            vless::open(&d, vless::Command::Udp, &target).await
        })?;
        Ok(VlessUdp {
            inner: Arc::new(vless::UdpTunnel::new(t)),
            _dialer: self.dialer.clone(),
            rt: self.rt.clone(),
        })
    }

    /// Opens a full-cone UDP session: one handle sends to many destinations and receives
    /// from any source, as Xray's client carries UDP (XUDP over Mux.Cool in one tunnel, or a
    /// plain VLESS UDP tunnel per destination for ports 53/443; see [`crate::proxy::udp`]).
    /// Tunnels open with the first datagram that needs them; `timeout` bounds nothing yet
    /// and is kept for symmetry with the other opens. The config must carry VLESS.
    pub fn open_udp(&self, timeout: Option<Duration>) -> Result<UdpSession> {
        self.open_udp_with(timeout, UdpOptions::default())
    }

    /// [`Client::open_udp`] with every option.
    pub fn open_udp_with(
        &self,
        _timeout: Option<Duration>,
        opts: UdpOptions,
    ) -> Result<UdpSession> {
        use std::sync::atomic::{AtomicU64, Ordering};
        if self.closed.is_cancelled() {
            return Err(Error::Closed);
        }
        // Each handle is its own source: distinct GlobalIDs, so two handles never take over
        // each other's server-side mapping.
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let source = format!("handle:{}", NEXT.fetch_add(1, Ordering::Relaxed));
        // Closing the client closes the session too.
        let inner = udp::UdpSession::new(
            self.dialer.clone(),
            &source,
            opts,
            self.closed.child_token(),
        )?;
        Ok(UdpSession {
            inner: Arc::new(inner),
            taken: Arc::default(),
            _dialer: self.dialer.clone(),
            rt: self.rt.clone(),
        })
    }

    /// Closes every tunnel and connection of this client and wakes every call blocked on
    /// it. Idempotent.
    pub fn close(&self) {
        // First: whatever the dialer's close does to a call in progress, that call must
        // already see the client closed.
        self.closed.cancel();
        self.dialer.close();
    }

    /// [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Measures the config's latency on a connection of its own (the pool is untouched):
    /// the time to connect, and the round trip of the mode's first request. A non-200
    /// answer or a failed connect is the error a tunnel would have got.
    pub fn probe(&self, timeout: Option<Duration>) -> Result<crate::tunnel::Probe> {
        let d = self.dialer.clone();
        self.run(timeout, async move { d.probe().await })
    }

    /// Sets (or clears) the hook each new UDP socket of this client passes through before
    /// use, e.g. Android's `VpnService.protect(fd)`; returning `false` refuses the socket
    /// and the dial fails. Called on the library's runtime thread: it must not block long.
    pub fn set_protect(&self, protect: Option<crate::transport::Protect>) {
        self.dialer.set_protect(protect);
    }

    /// Tells the client the device changed networks: every open QUIC connection moves to a
    /// new UDP socket (through the protect hook) and its tunnels carry on (QUIC migration).
    /// Returns how many connections moved.
    pub fn network_changed(&self) -> Result<usize> {
        let d = self.dialer.clone();
        // Not `run`: it does not wait on the network, and a closed client answers 0.
        let r = self
            .rt
            .block_on(None, async move { Ok(d.network_changed()) });
        settle(&self.closed, r)
    }

    /// The async dialer, for callers already on a tokio runtime.
    pub fn dialer(&self) -> &Arc<Dialer> {
        &self.dialer
    }

    /// What a data plane started from this client needs (`tun::Tun`): the dialer, the
    /// token the client's close cancels, the runtime.
    pub(crate) fn parts(&self) -> (&Arc<Dialer>, &CancellationToken, &Arc<Runtime>) {
        (&self.dialer, &self.closed, &self.rt)
    }

    /// Starts a TUN data plane on `io`; see [`crate::tun`].
    pub fn start_tun(
        &self,
        io: crate::tun::PacketIo,
        opts: crate::tun::TunOptions,
    ) -> Result<crate::tun::Tun> {
        crate::tun::Tun::start(self, io, opts)
    }

    /// Starts a local SOCKS5 inbound on `listen` (port 0 picks one), optionally requiring a
    /// username and password; see [`crate::proxy::socks`] for how flows map to tunnels.
    pub fn start_socks(
        &self,
        listen: SocketAddr,
        auth: Option<(String, String)>,
    ) -> Result<Inbound> {
        self.start_socks_with(
            listen,
            SocksOptions {
                auth,
                ..SocksOptions::from_policy(&self.dialer.config().policy)
            },
        )
    }

    /// [`Client::start_socks`] with every option (the config's `policy` is not consulted).
    /// Refused, with an error naming the field: credentials outside 1-255 bytes, or a
    /// listen address that is not loopback without credentials unless `opts.allow_open`.
    pub fn start_socks_with(&self, listen: SocketAddr, opts: SocksOptions) -> Result<Inbound> {
        let auth = opts.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
        socks::check_start(listen, auth, opts.allow_open)?;
        let dialer = self.dialer.clone();
        Inbound::start(self, listen, "SOCKS", move |l, stop| {
            socks::serve(l, dialer, opts, stop)
        })
    }

    /// Starts a TCP forwarder on `listen`: each connection becomes one tunnel, raw without
    /// `vlessId`, or VLESS to `to` (`host:port`, required then) with it.
    pub fn start_forward(&self, listen: SocketAddr, to: Option<&str>) -> Result<Inbound> {
        let to = to.map(Target::parse).transpose()?;
        forward::check_destination(&self.dialer, to.as_ref())?;
        let dialer = self.dialer.clone();
        Inbound::start(self, listen, "forward", move |l, stop| {
            forward::serve(l, dialer, to, stop)
        })
    }
}

impl Client {
    /// [`open`](Self::open) as a future any executor can poll; see the module doc for
    /// cancellation.
    pub fn open_async(
        &self,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Tunnel>> + Send + 'static {
        let client = self.clone();
        let deadline = Deadline::after(timeout);
        async move {
            let d = client.dialer.clone();
            let work = until_closed(client.closed.clone(), async move { d.open().await });
            let core = settle(&client.closed, client.rt.hand_off(deadline, work).await)?;
            Ok(client.tunnel(core))
        }
    }

    /// [`connect_tcp`](Self::connect_tcp) as a future any executor can poll; dropped, it
    /// closes a flow it already opened.
    pub fn connect_tcp_async(
        &self,
        target: &str,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Tunnel>> + Send + 'static {
        let client = self.clone();
        let deadline = Deadline::after(timeout);
        let target =
            Target::parse(target).and_then(|t| vless::configured_id(&self.dialer).map(|_| t));
        async move {
            let target = target?;
            let d = client.dialer.clone();
            let work = until_closed(client.closed.clone(), async move {
                vless::open(&d, vless::Command::Tcp, &target).await
            });
            let core = settle(&client.closed, client.rt.hand_off(deadline, work).await)?;
            Ok(client.tunnel(core))
        }
    }

    /// [`probe`](Self::probe) as a future any executor can poll.
    pub fn probe_async(
        &self,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<crate::tunnel::Probe>> + Send + 'static {
        let client = self.clone();
        let deadline = Deadline::after(timeout);
        async move {
            let d = client.dialer.clone();
            let work = until_closed(client.closed.clone(), async move { d.probe().await });
            settle(&client.closed, client.rt.hand_off(deadline, work).await)
        }
    }
}

/// Ends `work` with [`Error::Closed`] as soon as the client's close begins (a dial in
/// progress would otherwise run on to its own timeout), as [`Client::run`] does for the
/// blocking calls.
async fn until_closed<T>(
    closed: CancellationToken,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        biased;
        _ = closed.cancelled() => Err(Error::Closed),
        r = work => r,
    }
}

/// How long [`Inbound::stop`] waits for the listener and its flows to close.
const STOP_BOUND: Duration = Duration::from_secs(3);

/// A local inbound (SOCKS5 server or TCP forwarder) running on the library's runtime.
/// Stops on [`Inbound::stop`], when dropped, or when its client is closed.
pub struct Inbound {
    addr: SocketAddr,
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    // Field order is drop order: the dialer closes its connections before the runtime
    // (possibly the last reference) flushes and stops.
    _dialer: Arc<Dialer>,
    rt: Arc<Runtime>,
}

impl Inbound {
    fn start<F, Fut>(client: &Client, listen: SocketAddr, what: &str, run: F) -> Result<Inbound>
    where
        F: FnOnce(tokio::net::TcpListener, CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if client.closed.is_cancelled() {
            return Err(Error::Closed);
        }
        let fail = |e: std::io::Error| Error::Other(format!("{what} inbound on {listen}: {e}"));
        let std_listener = std::net::TcpListener::bind(listen).map_err(fail)?;
        std_listener.set_nonblocking(true).map_err(fail)?;
        let addr = std_listener.local_addr().map_err(fail)?;
        let rt = client.rt.clone();
        let listener = {
            let _in_runtime = rt.handle().enter();
            tokio::net::TcpListener::from_std(std_listener).map_err(fail)?
        };
        // The client's close stops it too (and with it its flows).
        let stop = client.closed.child_token();
        let task = rt.handle().spawn(run(listener, stop.clone()));
        log::info!("{what} inbound listening on {addr}");
        Ok(Inbound {
            addr,
            stop,
            task: Mutex::new(Some(task)),
            rt,
            _dialer: client.dialer.clone(),
        })
    }

    /// The address it listens on (with the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and closes every flow (app sockets and tunnels). Idempotent. From an
    /// app thread it waits (at most a few seconds) until the listener is closed; from a
    /// runtime thread it only starts the stop.
    pub fn stop(&self) {
        self.stop.cancel();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            self.rt.wait_from_app_thread(task, STOP_BOUND);
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }
}

impl Drop for Inbound {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One tunnel. All methods take `&self` and may be called from any thread at once.
/// A tunnel keeps its client's connections alive: dropping the last `Client` handle while
/// tunnels are open does not close them (an explicit [`Client::close`] does).
#[derive(Clone)]
pub struct Tunnel {
    core: Arc<TunnelCore>,
    client_closed: CancellationToken,
    _dialer: Arc<Dialer>,
    rt: Arc<Runtime>,
}

impl Tunnel {
    fn run<T>(&self, timeout: Option<Duration>, fut: impl Future<Output = Result<T>>) -> Result<T> {
        settle(&self.client_closed, self.rt.block_on(timeout, fut))
    }

    /// Reads downloaded bytes; `Ok(0)` is the end of the download.
    pub fn read(&self, buf: &mut [u8], timeout: Option<Duration>) -> Result<usize> {
        self.run(timeout, self.core.read(buf))
    }

    /// [`read`](Self::read) into possibly uninitialised memory (the C ABI's buffers); the
    /// first `n` bytes are initialised when it returns `Ok(n)`.
    pub fn read_uninit(
        &self,
        buf: &mut [std::mem::MaybeUninit<u8>],
        timeout: Option<Duration>,
    ) -> Result<usize> {
        self.run(timeout, self.core.read_uninit(buf))
    }

    /// Queues all of `data` for upload.
    pub fn write(&self, data: &[u8], timeout: Option<Duration>) -> Result<usize> {
        self.run(timeout, self.core.write(data))
    }

    /// Queues as much of `data` as `timeout` allows and says how much: `Ok(n)` with
    /// `0 < n <= data.len()` (fewer only when the timeout ran out part-way), or
    /// [`Error::Timeout`] when nothing was queued. Unlike
    /// [`write`](Self::write), a timeout never leaves an unknown part of `data` queued.
    pub fn write_some(&self, data: &[u8], timeout: Option<Duration>) -> Result<usize> {
        self.run(None, self.core.write_within(data, timeout))
    }

    /// Ends the upload cleanly once everything queued is sent.
    pub fn shutdown_write(&self) -> Result<()> {
        self.shutdown_write_within(None)
    }

    /// [`shutdown_write`](Self::shutdown_write) that waits at most `timeout` for a write in
    /// progress on another thread to finish queueing.
    pub fn shutdown_write_within(&self, timeout: Option<Duration>) -> Result<()> {
        self.run(timeout, self.core.shutdown_write())
    }

    /// Closes the tunnel; see [`TunnelCore::close`]. Idempotent, never blocks.
    pub fn close(&self) {
        self.core.close();
    }

    pub fn is_closed(&self) -> bool {
        self.core.is_closed()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.core.local_addr()
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.core.peer_addr()
    }
}

/// A call that failed after its client's close began reports the close: the failure was
/// (or may have been) caused by it. Refusals of the calling thread or process stand.
fn settle<T>(closed: &CancellationToken, r: Result<T>) -> Result<T> {
    match r {
        Err(Error::WrongThread | Error::ThreadExiting | Error::Forked) => r,
        Err(_) if closed.is_cancelled() => Err(Error::Closed),
        r => r,
    }
}

impl Tunnel {
    /// [`read`](Self::read) as a future any executor can poll: up to `max` bytes, empty at
    /// the end of the download. The wait for bytes runs on the runtime and takes nothing;
    /// the bytes leave the tunnel in the poll that returns them.
    pub fn read_async(
        &self,
        max: usize,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Vec<u8>>> + Send + 'static {
        let (core, rt) = (self.core.clone(), self.rt.clone());
        let deadline = Deadline::after(timeout);
        settled(self.client_closed.clone(), async move {
            let mut buf = vec![0u8; max];
            loop {
                if let Some(r) = core.try_read(&mut buf) {
                    buf.truncate(r?);
                    return Ok(buf);
                }
                // Ready but taken by another reader first, past the deadline.
                if deadline.passed() {
                    return Err(deadline.error());
                }
                let c = core.clone();
                rt.hand_off(deadline, async move {
                    c.readable().await;
                    Ok(())
                })
                .await?;
            }
        })
    }

    /// [`write`](Self::write) as a future any executor can poll: queues all of `data` and
    /// returns its length; stopped part-way (the timeout ran out, the tunnel ended), returns
    /// what was queued (as [`write_some`](Self::write_some) does), the error when nothing
    /// was. See the
    /// module doc for what a dropped write does.
    pub fn write_async(
        &self,
        data: Vec<u8>,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<usize>> + Send + 'static {
        let (core, rt) = (self.core.clone(), self.rt.clone());
        let deadline = Deadline::after(timeout);
        settled(self.client_closed.clone(), async move {
            let c = core.clone();
            let upload = rt
                .hand_off(deadline, async move { c.upload().await })
                .await?;
            let part = write_part(data.len(), upload.capacity());
            let mut w = PartialWrite {
                upload: &upload,
                queued: 0,
                total: data.len(),
                returned: false,
            };
            for piece in data.chunks(part.max(1)) {
                let room = match rt.hand_off(deadline, upload.room(piece.len())).await {
                    Ok(room) => room,
                    Err(e) => return w.give_up(e),
                };
                if let Err(e) = upload.commit(room, piece) {
                    return w.give_up(e);
                }
                w.queued += piece.len();
            }
            Ok(w.returned())
        })
    }

    /// Waits (on the runtime) until [`try_read`](Self::try_read) would not return `None`:
    /// bytes, the end of the download or the tunnel's failure are there. Takes nothing, so
    /// a read split into this wait and `try_read` (a call that cannot be interrupted) loses
    /// nothing wherever it is cancelled: how the Kotlin bindings read.
    pub fn readable_async(
        &self,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        let (core, rt) = (self.core.clone(), self.rt.clone());
        let deadline = Deadline::after(timeout);
        settled(self.client_closed.clone(), async move {
            rt.hand_off(deadline, async move {
                core.readable().await;
                Ok(())
            })
            .await
        })
    }

    /// [`read`](Self::read) without waiting: `None` when nothing is there yet.
    pub fn try_read(&self, buf: &mut [u8]) -> Option<Result<usize>> {
        self.core
            .try_read(buf)
            .map(|r| settle(&self.client_closed, r))
    }

    /// Waits (on the runtime) until the upload queue has room for the next part of a
    /// `len`-byte write, and returns that part's size: `len` when it fits the queue, else a
    /// half-queue part. Takes nothing; [`try_write`](Self::try_write) then queues the part.
    pub fn writable_async(
        &self,
        len: usize,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<usize>> + Send + 'static {
        let (core, rt) = (self.core.clone(), self.rt.clone());
        let deadline = Deadline::after(timeout);
        settled(self.client_closed.clone(), async move {
            let upload = rt
                .hand_off(deadline, async move { core.upload().await })
                .await?;
            let part = write_part(len, upload.capacity());
            // The room is given back at once: the wait only tells it is there.
            rt.hand_off(deadline, upload.room(part)).await?;
            Ok(part)
        })
    }

    /// Queues all of `data` if the upload queue has room for it now, else nothing (`false`);
    /// never waits. `data` no larger than the part [`writable_async`](Self::writable_async)
    /// returned fits once there is room.
    pub fn try_write(&self, data: &[u8]) -> Result<bool> {
        let r = (|| {
            let Some(upload) = self.core.try_upload()? else {
                return Ok(false);
            };
            let Some(room) = upload.try_room(data.len())? else {
                return Ok(false);
            };
            upload.commit(room, data)?;
            Ok(true)
        })();
        settle(&self.client_closed, r)
    }

    /// Ends the tunnel because a write split into parts was cancelled after `queued` of its
    /// `total` bytes were queued (what a dropped [`write_async`](Self::write_async) does
    /// itself): the server never takes the part for the whole, and later calls name the
    /// count.
    pub fn abort_write(&self, queued: u64, total: u64) {
        self.core.fail(cancelled_write_error(queued, total));
    }

    /// [`shutdown_write_within`](Self::shutdown_write_within) as a future any executor can
    /// poll. Dropped, it may have taken effect; it is idempotent.
    pub fn shutdown_write_async(
        &self,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        let core = self.core.clone();
        let rt = self.rt.clone();
        let deadline = Deadline::after(timeout);
        settled(self.client_closed.clone(), async move {
            rt.hand_off(deadline, async move { core.shutdown_write().await })
                .await
        })
    }
}

/// `fut`'s result, settled as the blocking calls' (see [`settle`]).
async fn settled<T>(closed: CancellationToken, fut: impl Future<Output = Result<T>>) -> Result<T> {
    settle(&closed, fut.await)
}

/// A write in parts: dropped after a part was queued and before the count was returned,
/// it ends the tunnel (the caller would think nothing was queued).
struct PartialWrite<'a> {
    upload: &'a Upload,
    queued: usize,
    total: usize,
    returned: bool,
}

impl PartialWrite<'_> {
    fn returned(&mut self) -> usize {
        self.returned = true;
        self.queued
    }

    /// Stopped by `e` (a timeout, the tunnel's end): the count when some parts were queued,
    /// as the blocking write reports it (the next call gets the error), else `e`.
    fn give_up(&mut self, e: Error) -> Result<usize> {
        match self.returned() {
            0 => Err(e),
            n => Ok(n),
        }
    }
}

impl Drop for PartialWrite<'_> {
    fn drop(&mut self) {
        if !self.returned && self.queued > 0 {
            self.upload
                .fail(cancelled_write_error(self.queued as u64, self.total as u64));
        }
    }
}

/// What ends a tunnel whose write was cancelled part-way.
fn cancelled_write_error(queued: u64, total: u64) -> Error {
    Error::Other(format!(
        "a write was cancelled after {queued} of its {total} bytes were queued; the tunnel \
         is closed so that the server never takes the part for the whole"
    ))
}

/// How much of a `len`-byte write is queued in one step: all of it when it fits the queue
/// (so a cancelled write queued nothing); else half-queue parts, so the next part's room
/// frees while one is being sent.
fn write_part(len: usize, capacity: usize) -> usize {
    if len <= capacity {
        len
    } else {
        (capacity / 2).max(1)
    }
}

/// A VLESS UDP flow to one destination.
#[derive(Clone)]
pub struct VlessUdp {
    inner: Arc<vless::UdpTunnel>,
    _dialer: Arc<Dialer>,
    rt: Arc<Runtime>,
}

impl VlessUdp {
    pub fn send_datagram(&self, d: &[u8], timeout: Option<Duration>) -> Result<()> {
        self.rt.block_on(timeout, self.inner.send(d))
    }

    pub fn recv_datagram(&self, timeout: Option<Duration>) -> Result<Vec<u8>> {
        self.rt.block_on(timeout, self.inner.recv())
    }

    pub fn close(&self) {
        self.inner.close();
    }
}

/// A full-cone UDP session ([`Client::open_udp`]). All methods take `&self` and may be
/// called from any thread at once; `close` wakes every blocked call with
/// [`Error::Closed`](crate::Error::Closed).
#[derive(Clone)]
pub struct UdpSession {
    inner: Arc<udp::UdpSession>,
    taken: Arc<Taken>,
    _dialer: Arc<Dialer>,
    rt: Arc<Runtime>,
}

/// Datagrams taken off a session by a receive whose caller may be gone (a cancelled
/// [`UdpSession::recv_from_async`]): every receive returns these first, so a cancelled
/// receive loses no datagram.
#[derive(Default)]
struct Taken {
    /// Held while taking a datagram off the session: whoever holds it next sees what the
    /// previous holder took.
    gate: tokio::sync::Mutex<()>,
    queue: Mutex<VecDeque<(bytes::Bytes, Target)>>,
}

impl Taken {
    /// The first datagram queued here, unless the session is closed.
    fn pop(&self, session: &udp::UdpSession) -> Result<Option<(Vec<u8>, Target)>> {
        if session.is_closed() {
            return Err(Error::Closed);
        }
        let d = self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        Ok(d.map(|(d, from)| (d.to_vec(), from)))
    }

    /// Waits until a datagram is queued here (taking the session's next one, unless one
    /// already is).
    async fn fill(&self, session: &udp::UdpSession) -> Result<()> {
        let _gate = self.gate.lock().await;
        if self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            let d = session.recv_from().await?;
            // No await between the receive and this: a cancelled fill took nothing.
            self.queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back(d);
        }
        Ok(())
    }
}

impl UdpSession {
    /// Sends one datagram to `target` (`host:port`, `[v6]:port`). Returns once it is queued
    /// whole. Refused with an error naming it: a target that is not `host:port`, port 0, an
    /// empty datagram or one over 8192 bytes (the most an Xray server carries intact).
    pub fn send_to(&self, target: &str, data: &[u8], timeout: Option<Duration>) -> Result<()> {
        let target = Target::parse(target)?;
        self.send_to_target(&target, data, timeout)
    }

    /// [`send_to`](Self::send_to) with a parsed destination.
    pub fn send_to_target(
        &self,
        target: &Target,
        data: &[u8],
        timeout: Option<Duration>,
    ) -> Result<()> {
        self.rt.block_on(timeout, self.inner.send_to(target, data))
    }

    /// The next datagram from any source, and that source (an IP address and port, or a
    /// domain when the server reports the name the datagram was sent to).
    pub fn recv_from(&self, timeout: Option<Duration>) -> Result<(Vec<u8>, Target)> {
        self.rt.block_on(timeout, async {
            loop {
                if let Some(d) = self.taken.pop(&self.inner)? {
                    return Ok(d);
                }
                self.taken.fill(&self.inner).await?;
            }
        })
    }

    /// [`send_to_target`](Self::send_to_target) as a future any executor can poll. Dropped,
    /// the datagram was queued whole or not at all (and, as any datagram, may be lost).
    pub fn send_to_target_async(
        &self,
        target: Target,
        data: Vec<u8>,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        let (inner, rt) = (self.inner.clone(), self.rt.clone());
        let deadline = Deadline::after(timeout);
        async move {
            rt.hand_off(deadline, async move { inner.send_to(&target, &data).await })
                .await
        }
    }

    /// [`recv_from`](Self::recv_from) as a future any executor can poll. The wait runs on
    /// the runtime; the datagram is handed over in the poll that returns it: dropped
    /// earlier, it took none (the next receive gets it).
    pub fn recv_from_async(
        &self,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<(Vec<u8>, Target)>> + Send + 'static {
        let (inner, taken, rt) = (self.inner.clone(), self.taken.clone(), self.rt.clone());
        let deadline = Deadline::after(timeout);
        async move {
            loop {
                if let Some(d) = taken.pop(&inner)? {
                    return Ok(d);
                }
                // Queued but taken by another receiver first, past the deadline.
                if deadline.passed() {
                    return Err(deadline.error());
                }
                let (s, t) = (inner.clone(), taken.clone());
                rt.hand_off(deadline, async move { t.fill(&s).await })
                    .await?;
            }
        }
    }

    /// Ends the session and its tunnels. Idempotent, never blocks, any thread.
    pub fn close(&self) {
        self.inner.close();
    }

    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// The async session, for callers already on a tokio runtime.
    pub fn session(&self) -> &Arc<udp::UdpSession> {
        &self.inner
    }
}
