//! Opens tunnels for one config: takes a running slot from XMUX, builds each mode's
//! requests through the one [`Shaper`], charges each request to the connection carrying
//! it, and starts the tasks.

use super::streams::{self, PacketPlan, StreamWait};
use super::{Carries, Counters, Shared, TunnelCore};
use crate::config::{Config, MemoryLimits, Mode};
use crate::error::{Error, RequestLabel, Result};
use crate::transport::surface::RequestedGzip;
use crate::transport::{Protect, QuicOptions, SocketHooks, tls};
use crate::transport::{RecvHalf, SendHalf};
use crate::xhttp::request::{RequestKind, Shaper};
use crate::xhttp::session;
use crate::xmux::pool::Connector;
use crate::xmux::{Pool, PoolStats, Slot};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Downloaded bytes buffered between the download task and the reader. QUIC flow control
/// (bounded windows) does the rest of the back-pressure.
const DOWN_QUEUE_BYTES: usize = 256 * 1024;

/// When XMUX can offer only connections out of streams, how long a tunnel's first request
/// waits on the one it landed on before the tunnel tries another.
const FIRST_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

pub struct Dialer {
    cfg: Config,
    hooks: Arc<SocketHooks>,
    mode: Mode,
    main: Side,
    /// `downloadSettings`: where the GET goes, with its own shapes and XMUX pool.
    download: Option<Side>,
    tunnels: Mutex<Vec<Weak<Shared>>>,
    closed: AtomicBool,
    counters: Arc<Counters>,
}

/// One destination: its request shapes and its XMUX pool.
pub(super) struct Side {
    pub(super) shaper: Arc<Shaper>,
    pub(super) pool: Arc<Pool>,
}

impl Side {
    /// `limits`: the client's `memoryLimits` (the download side has none of its own).
    fn new(cfg: &Config, limits: &MemoryLimits, hooks: &Arc<SocketHooks>) -> Result<Side> {
        let tls = Arc::new(tls::client_config(&cfg.tls)?);
        let shaper = Arc::new(Shaper::new(&cfg.xhttp, &cfg.authority()));
        // Fail at construction, not at the first tunnel, if a request cannot be built.
        shaper.build(RequestKind::StreamOne, None, None, &mut rand::rng())?;
        let quic = QuicOptions {
            keep_alive: cfg.xhttp.xmux.keep_alive(),
            limits: *limits,
            ..QuicOptions::default()
        };
        let connector = Connector {
            address: cfg.address.clone(),
            port: cfg.port,
            sni: cfg.sni().to_string(),
            tls,
            quic,
            hooks: hooks.clone(),
        };
        Ok(Side {
            shaper,
            pool: Pool::new(connector, cfg.xhttp.xmux.clone()),
        })
    }

    /// Builds one of the tunnel's streaming requests, charges it to the connection of `slot`
    /// and sends its head. (Packet-up POSTs are sent by the upload task.)
    /// `None`: no stream came free within `wait` (nothing was sent).
    async fn request(
        &self,
        slot: &Slot,
        kind: RequestKind,
        session: Option<&str>,
        wait: StreamWait,
    ) -> Result<Option<(SendHalf, RecvHalf, RequestLabel, bool)>> {
        let label = self.shaper.label(kind, session);
        let req = self.shaper.build(kind, session, None, &mut rand::rng())?;
        let gzip = req.extensions().get::<RequestedGzip>().is_some();
        let Some(stream) = streams::open_on_slot(&self.pool, slot, req, &label, wait).await? else {
            return Ok(None);
        };
        self.pool.charge(slot.id());
        let (send, recv) = stream.split();
        Ok(Some((send, recv, label, gzip)))
    }
}

/// What a client has done so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Bytes accepted by `write` (queued for upload).
    pub bytes_up: u64,
    /// Bytes returned by `read`.
    pub bytes_down: u64,
    /// Tunnels opened and not yet closed or failed.
    pub open_tunnels: u64,
    /// QUIC connections currently open.
    pub live_connections: u64,
    /// Of `open_tunnels`, by what they carry: raw bytes, VLESS TCP flows, VLESS UDP flows
    /// to one destination each, Mux.Cool tunnels carrying XUDP.
    pub raw_tunnels: u64,
    pub tcp_flows: u64,
    pub udp_flows: u64,
    pub mux_tunnels: u64,
}

impl Dialer {
    /// Validates what the config layer could not (TLS material) and prepares the shaper
    /// and the XMUX pool. Does no I/O.
    pub fn new(cfg: Config) -> Result<Dialer> {
        cfg.validate()?;
        cfg.limits.check_windows(
            "memoryLimits",
            Some(crate::transport::surface::CONNECTION_WINDOW),
        )?;
        let hooks = Arc::new(SocketHooks::default());
        let main = Side::new(&cfg, &cfg.limits, &hooks)?;
        let download = match &cfg.download {
            Some(d) => Some(
                Side::new(d, &cfg.limits, &hooks)
                    .map_err(|e| crate::config::prefix_field("downloadSettings", e))?,
            ),
            None => None,
        };
        Ok(Dialer {
            hooks,
            mode: cfg.xhttp.mode.resolve(),
            main,
            download,
            cfg,
            tunnels: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            counters: Arc::default(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Sets (or clears) the hook every new UDP socket of this client goes through before
    /// use: Android's `VpnService.protect(fd)`, so the client's own traffic bypasses the
    /// VPN it serves. Sockets already open are not revisited.
    pub fn set_protect(&self, protect: Option<Protect>) {
        self.hooks.set_protect(protect);
    }

    /// The device changed networks: moves every open QUIC connection to a new (protected)
    /// UDP socket so tunnels carry on over the new path (QUIC connection migration).
    /// Returns how many connections moved. Must run on the runtime.
    pub fn network_changed(&self) -> usize {
        let mut moved = self.main.pool.rebind_all();
        if let Some(d) = &self.download {
            moved += d.pool.rebind_all();
        }
        moved
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub(super) fn main_side(&self) -> &Side {
        &self.main
    }

    /// Where the download GET goes: `downloadSettings`' destination, else the main one.
    pub(super) fn download_side(&self) -> &Side {
        self.download.as_ref().unwrap_or(&self.main)
    }

    /// XMUX introspection: connections, running slots, charged requests.
    pub fn pool_stats(&self) -> PoolStats {
        self.main.pool.stats()
    }

    /// XMUX introspection of the `downloadSettings` pool, if configured.
    pub fn download_pool_stats(&self) -> Option<PoolStats> {
        self.download.as_ref().map(|d| d.pool.stats())
    }

    pub fn stats(&self) -> ClientStats {
        let mut by_kind = [0u64; 4];
        for t in self
            .tunnels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|t| !t.token().is_cancelled())
        {
            by_kind[t.carries() as usize] += 1;
        }
        ClientStats {
            bytes_up: self.counters.up.load(Ordering::Relaxed),
            bytes_down: self.counters.down.load(Ordering::Relaxed),
            open_tunnels: by_kind.iter().sum(),
            raw_tunnels: by_kind[Carries::Raw as usize],
            tcp_flows: by_kind[Carries::VlessTcp as usize],
            udp_flows: by_kind[Carries::VlessUdp as usize],
            mux_tunnels: by_kind[Carries::Mux as usize],
            live_connections: (self.main.pool.stats().live_connections
                + self
                    .download
                    .as_ref()
                    .map_or(0, |d| d.pool.stats().live_connections))
                as u64,
        }
    }

    /// Opens one tunnel in the configured mode. Returns once the requests are sent (not
    /// when responses arrive: a bad status fails the tunnel's reads and writes later).
    ///
    /// A tunnel's requests must all find a stream on their connection: one that would have
    /// to wait for the server's stream credit (MAX_STREAMS) gives up what it sent and tries
    /// again where XMUX now points (another connection, or a new one if its rules allow).
    /// Where XMUX has nothing better, the first request waits a little for a stream on the
    /// connection it landed on, then the tunnel tries again (elsewhere, at random among
    /// those the rules allow). A tunnel never holds some streams while waiting for more,
    /// which could leave every stream held by half-open tunnels. The caller's deadline
    /// bounds it all.
    pub async fn open(&self) -> Result<TunnelCore> {
        // Each try either lands on a connection with streams free or makes XMUX skip the
        // one it landed on; past this many, tries are paced.
        const TRIES: u32 = 16;
        for attempt in 1u32.. {
            if let Some(t) = self.open_once(attempt >= TRIES).await? {
                return Ok(t);
            }
            log::debug!("open: no request stream free on the picked connection; trying again");
            if attempt >= TRIES {
                let pause = 10u64 << (attempt - TRIES).min(3);
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
        }
        unreachable!("tries are unbounded; the caller's deadline ends them")
    }

    /// One try of [`open`](Self::open); `None` when a request found no stream (within
    /// [`FIRST_WAIT`] when `patient`): the partial tunnel is closed.
    async fn open_once(&self, patient: bool) -> Result<Option<TunnelCore>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let slot = match self.main.pool.acquire().await {
            Ok(slot) => Arc::new(slot),
            Err(e) => return Err(self.closed_or(e)),
        };
        // XMUX had nothing better than a connection out of streams: wait on it.
        let patient = patient || slot.out_of_streams();
        let slot_id = slot.id();
        // The GET's slot, on the download pool when `downloadSettings` is set.
        let down_slot = match (&self.download, self.mode) {
            (Some(d), Mode::PacketUp | Mode::StreamUp) => match d.pool.acquire().await {
                Ok(s) => Arc::new(s),
                Err(e) => return Err(self.closed_or(e)),
            },
            _ => slot.clone(),
        };
        let down_id = down_slot.id();
        let shared = Shared::new();
        // Set once every request of the tunnel has its stream.
        let opened = Arc::new(AtomicBool::new(false));
        {
            // Packet-up's upload manages its own slots (it moves between connections);
            // the tunnel holds the main slot only where the GET rides on it too.
            let uploads_move = self.mode == Mode::PacketUp && self.download.is_some();
            let held = ((!uploads_move).then(|| slot.clone()), down_slot.clone());
            let (main, down, opened) = (
                self.main.pool.clone(),
                self.download_side().pool.clone(),
                opened.clone(),
            );
            shared.on_end(Box::new(move || {
                // A tunnel that had its streams frees them: its connections have room again.
                if opened.load(Ordering::Acquire) {
                    main.set_saturated(slot_id, false);
                    down.set_saturated(down_id, false);
                }
                drop(held)
            }));
        }
        {
            let mut t = self.tunnels.lock().unwrap_or_else(|p| p.into_inner());
            t.retain(|w| w.strong_count() > 0);
            t.push(Arc::downgrade(&shared));
        }
        // A client close racing this open must still close the new tunnel.
        if self.closed.load(Ordering::Acquire) {
            shared.close();
            return Err(Error::Closed);
        }
        // If this future is dropped part-way (an open timeout), the tasks already started
        // must not live on holding slots and a GET.
        let guard = CloseOnDrop(Some(shared.clone()));
        let started = self.start(slot.clone(), down_slot, &shared, patient).await;
        guard.disarm();
        match started {
            Ok(Some((down_rx, up_tx))) => {
                opened.store(true, Ordering::Release);
                Ok(Some(TunnelCore::new(
                    shared,
                    self.counters.clone(),
                    down_rx,
                    up_tx,
                    slot.conn().local_addr(),
                    slot.conn().remote_addr(),
                )))
            }
            Ok(None) => {
                shared.close();
                Ok(None)
            }
            Err(e) => {
                shared.fail(e.clone());
                Err(self.closed_or(e))
            }
        }
    }

    /// A client close during an open makes the open fail with whatever the close did to
    /// its connection; report the cause (`Closed`) instead.
    fn closed_or(&self, e: Error) -> Error {
        if self.closed.load(Ordering::Acquire) {
            Error::Closed
        } else {
            e
        }
    }

    async fn start(
        &self,
        slot: Arc<Slot>,
        down_slot: Arc<Slot>,
        shared: &Arc<Shared>,
        patient: bool,
    ) -> Result<Option<(super::queue::QueueRx, super::queue::QueueTx)>> {
        let patient_down = patient || down_slot.out_of_streams();
        let first_wait = |patient: bool| {
            if patient {
                StreamWait::UpTo(FIRST_WAIT)
            } else {
                StreamWait::No
            }
        };
        let main = &self.main;
        let down = self.download.as_ref().unwrap_or(main);
        let s = &self.cfg.xhttp;
        // `ThreadRng` is not `Send`: take it per use so this future can be spawned.
        let max_post = s.sc_max_each_post_bytes.draw(&mut rand::rng()).max(1) as usize;
        let (down_bytes, up_bytes) = self.queue_bytes(max_post);
        let (down_tx, down_rx) = super::queue::queue(down_bytes);
        let (up_tx, up_rx) = super::queue::queue(up_bytes);
        let keep = |f| spawn_holding(&slot, f);

        // Stream-one has no session: its one POST's response is the download. The other
        // modes download with a GET on the session first.
        let mut down_tx = Some(down_tx);
        let session = match self.mode {
            Mode::StreamOne => None,
            _ => Some(session::generate(&s.session_id, &mut rand::rng())),
        };
        if let Some(id) = &session {
            let Some((mut send, recv, label, gzip)) = down
                .request(
                    &down_slot,
                    RequestKind::StreamDown,
                    Some(id),
                    first_wait(patient_down),
                )
                .await?
            else {
                return Ok(None);
            };
            // A GET has no body: end our side now.
            send.finish().await.map_err(|e| Error::Request {
                request: label.clone(),
                detail: e.to_string(),
            })?;
            let tx = down_tx.take().expect("download queue unused so far");
            spawn_holding(
                &down_slot,
                Box::pin(streams::download(recv, label, gzip, tx, shared.clone())),
            );
        }

        match (self.mode, session) {
            (Mode::PacketUp, Some(id)) => {
                let plan = PacketPlan {
                    max_post,
                    interval: s.sc_min_posts_interval_ms,
                };
                // Not `keep`: the task holds the slot it uploads on and lets it go when
                // XMUX moves it elsewhere.
                tokio::spawn(streams::packet_upload(
                    main.pool.clone(),
                    slot.clone(),
                    main.shaper.clone(),
                    id,
                    plan,
                    up_rx,
                    shared.clone(),
                ));
            }
            (mode, session) => {
                let kind = match mode {
                    Mode::StreamOne => RequestKind::StreamOne,
                    _ => RequestKind::StreamUp,
                };
                // Stream-up's POST never waits while the tunnel holds its GET.
                let wait = first_wait(patient && kind == RequestKind::StreamOne);
                let Some((send, recv, label, gzip)) =
                    main.request(&slot, kind, session.as_deref(), wait).await?
                else {
                    return Ok(None);
                };
                // Stream-one: the response is the download. Stream-up: the server writes
                // keep-alive padding into it, read and discarded.
                keep(match down_tx.take() {
                    Some(tx) => Box::pin(streams::download(
                        recv,
                        label.clone(),
                        gzip,
                        tx,
                        shared.clone(),
                    )),
                    None => Box::pin(streams::drain_response(recv, label.clone(), shared.clone())),
                });
                keep(Box::pin(streams::stream_upload(
                    streams::SendGuard::new(send),
                    label,
                    up_rx,
                    shared.clone(),
                )));
            }
        }
        Ok(Some((down_rx, up_tx)))
    }

    /// The download and upload queue bounds of a tunnel: `memoryLimits` where set, else the
    /// defaults. Packet-up batches what is queued, so by default one POST's worth may queue
    /// up (at least one write piece, or a piece could never fit); a smaller `uploadQueue`
    /// makes POSTs smaller.
    fn queue_bytes(&self, max_post: usize) -> (usize, usize) {
        let l = &self.cfg.limits;
        let up_default = match self.mode {
            Mode::PacketUp => max_post.clamp(super::WRITE_PIECE, 8 << 20),
            _ => 512 * 1024,
        };
        (
            l.download_queue.unwrap_or(DOWN_QUEUE_BYTES),
            l.upload_queue.unwrap_or(up_default),
        )
    }

    /// Closes every tunnel of this dialer and every connection it opened. Idempotent.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // First: no dial in progress may call the app's protect hook after this returns.
        self.hooks.close();
        let tunnels = std::mem::take(&mut *self.tunnels.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tunnels.iter().filter_map(Weak::upgrade) {
            t.close();
        }
        self.main.pool.close();
        if let Some(d) = &self.download {
            d.pool.close();
        }
    }
}

impl Drop for Dialer {
    fn drop(&mut self) {
        self.close();
    }
}

/// Runs a tunnel task that keeps the tunnel's slot (and so its connection) until it ends.
fn spawn_holding(
    slot: &Arc<Slot>,
    f: std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>,
) {
    let keep = slot.clone();
    tokio::spawn(async move {
        f.await;
        drop(keep);
    });
}

/// Closes a tunnel being opened unless the open completed.
struct CloseOnDrop(Option<Arc<Shared>>);

impl CloseOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.close();
        }
    }
}
