//! The TUN data plane: the VPN's IP packets in, every TCP connection and UDP socket of the
//! device carried over VLESS/XHTTP, the replies out as IP packets. A user-space TCP/IP stack
//! (netstack-smoltcp, smoltcp inside; see docs/tun.md) turns packets into TCP streams and UDP
//! datagrams; [`tcp`] and [`udp`] carry them through the client's tunnels.
//!
//! Guarantees this module owns:
//! - stop is idempotent, works from any thread, and ends every flow (tunnels closed, app
//!   connections closed) and every task of the TUN; a client's close stops its TUNs;
//! - no more than `maxFlows` flows at once (the least recently active gives way);
//! - memory is bounded: per TCP flow the stack buffers and the tunnel's queues, per UDP flow
//!   a few queued datagrams; packets beyond a full queue are dropped and counted;
//! - a bad packet is counted and dropped (see [`packet`]), never a panic.

mod device;
mod dns;
mod flows;
#[cfg(target_os = "linux")]
pub mod linux;
mod options;
mod packet;
mod reset;
mod stats;
mod tcp;
mod udp;

pub use device::{BatchOut, OUT_BATCH, PACKET_QUEUE, PacketIo, PacketOut};
pub use dns::DnsRedirect;
pub use options::TunOptions;
pub use stats::{Dropped, TunStats};

use crate::api::Client;
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::tunnel::Dialer;
use device::{Device, InputQueue, OutThread, Reader, Writer};
use flows::{Flow, FlowKey, FlowTable};
use futures_util::{FutureExt, SinkExt, StreamExt};
use netstack_smoltcp::{StackBuilder, TcpStream};
use reset::{Conn, SeqTable};
use stats::{Counters, add};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long [`Tun::stop`] waits, from an app thread, for the TUN's tasks to end.
const STOP_BOUND: Duration = Duration::from_secs(3);

/// A running TUN. Stops on [`Tun::stop`], when dropped, or when its client is closed.
pub struct Tun {
    stop: CancellationToken,
    input: Option<InputQueue>,
    counters: Arc<Counters>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    out_thread: Option<OutThread>,
    // Field order is drop order: the dialer before the runtime (possibly the last reference).
    _dialer: Arc<Dialer>,
    rt: Arc<Runtime>,
}

/// What the TUN's tasks share.
struct Ctx {
    dialer: Arc<Dialer>,
    opts: TunOptions,
    counters: Arc<Counters>,
    flows: Mutex<FlowTable>,
    stop: CancellationToken,
    started: Instant,
    /// The stack's sequence numbers per TCP connection, for resets.
    seqs: Mutex<SeqTable>,
    /// Packets for the app, besides the stack's own (resets).
    out: Writer,
    /// Packets for the stack, as if from the app (resets).
    to_stack: tokio::sync::mpsc::Sender<Vec<u8>>,
}

impl Ctx {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Enters a new flow, ending what must give way for it.
    fn admit(&self, key: FlowKey) -> Arc<Flow> {
        let (flow, out) = self.table().insert(key, &self.stop, self.now_ms());
        for old in out {
            add(&self.counters.evicted, 1);
            old.stop.cancel();
        }
        flow
    }

    fn forget(&self, key: &FlowKey, flow: &Flow) {
        self.table().remove(key, flow);
    }

    fn table(&self) -> std::sync::MutexGuard<'_, FlowTable> {
        self.flows.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn seqs(&self) -> std::sync::MutexGuard<'_, SeqTable> {
        self.seqs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the app's connection `conn` with a reset: a RST into the stack (its socket
    /// closes without a FIN), a RST to the app, then the stream is dropped. Without numbers
    /// seen for it (or once the TUN is stopping) the stream is only dropped: a FIN.
    async fn reset(&self, conn: Conn, stream: TcpStream) {
        let resets = self.seqs().resets(&conn);
        match resets {
            Some(r) if !self.stop.is_cancelled() => {
                // A full queue only loses the stack's early close: the app's TCP answers
                // the stack's FIN with a RST of its own.
                let _ = self.to_stack.try_send(r.to_stack);
                add(&self.counters.packets_out, 1);
                self.out.send(r.to_app, &self.counters).await;
            }
            _ => log::debug!("tun: no reset for {} -> {}", conn.app, conn.remote),
        }
        drop(stream);
    }
}

/// Counts a flow as active for as long as it lives.
struct Active<'a>(&'a AtomicU64);

impl<'a> Active<'a> {
    fn new(c: &'a AtomicU64) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Active(c)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Tun {
    /// Starts carrying the packets of `io` through `client` (which must carry VLESS).
    pub fn start(client: &Client, io: PacketIo, opts: TunOptions) -> Result<Tun> {
        let (dialer, closed, rt) = client.parts();
        if closed.is_cancelled() {
            return Err(Error::Closed);
        }
        crate::proxy::vless::configured_id(dialer)?;
        let rt = rt.clone();
        let (stack, runner, udp_socket, tcp_listener) = StackBuilder::default()
            .enable_tcp(true)
            .enable_udp(true)
            .mtu(opts.mtu)
            .tcp_recv_buffer_size(opts.tcp_buffer as u32)
            .tcp_send_buffer_size(opts.tcp_buffer as u32)
            .build()
            .map_err(|e| Error::Other(format!("TUN stack: {e}")))?;
        let (Some(runner), Some(udp_socket), Some(tcp_listener)) =
            (runner, udp_socket, tcp_listener)
        else {
            return Err(Error::Other("TUN stack: TCP or UDP missing".into()));
        };
        // The client's close stops it too (and with it its flows).
        let stop = closed.child_token();
        let (device, input, out_thread) = {
            let _in_runtime = rt.handle().enter();
            Device::open(io, stop.clone())?
        };
        let counters = Arc::new(Counters::default());
        let (reader, writer) = device.split();
        // Resets only: a few at a time suffice (see `Ctx::reset` for a full queue).
        let (to_stack, injected) = tokio::sync::mpsc::channel(64);
        let ctx = Arc::new(Ctx {
            dialer: dialer.clone(),
            counters: counters.clone(),
            flows: Mutex::new(FlowTable::new(opts.max_flows)),
            stop: stop.clone(),
            started: Instant::now(),
            seqs: Mutex::new(SeqTable::new(opts.max_flows.saturating_mul(2))),
            out: writer.clone(),
            to_stack,
            opts,
        });
        let task = rt.handle().spawn(async move {
            let (to_stack, from_stack) = stack.split();
            let run = async {
                tokio::select! {
                    _ = ctx.stop.cancelled() => {}
                    r = runner => log::warn!("tun: the stack ended: {r:?}"),
                    _ = packets_in(&ctx, reader, injected, to_stack) => log::info!("tun: the device is gone"),
                    _ = packets_out(&ctx, writer, from_stack) => log::info!("tun: the device is gone"),
                    _ = tcp::accept(ctx.clone(), tcp_listener) => {}
                    _ = udp::run(ctx.clone(), udp_socket) => {}
                }
            };
            // A panic in the stack's code (smoltcp 0.12 has known ones) must end this TUN
            // like any other failure, its flows ended and released, never leave them hanging.
            if std::panic::AssertUnwindSafe(run).catch_unwind().await.is_err() {
                log::error!("tun: the TCP/IP stack panicked; the TUN stopped");
            }
            // Ends every flow, whatever ended the TUN.
            ctx.stop.cancel();
            ctx.table().drain();
        });
        log::info!("tun: started");
        Ok(Tun {
            stop,
            input,
            counters,
            task: Mutex::new(Some(task)),
            out_thread,
            _dialer: dialer.clone(),
            rt,
        })
    }

    /// Hands the TUN one packet from the app (packet-callback TUNs). A packet arriving while
    /// the input queue is full is dropped and counted, as a link would lose it. Refused on a
    /// TUN reading an fd, and once stopped.
    pub fn input(&self, packet: &[u8]) -> Result<()> {
        let Some(q) = &self.input else {
            return Err(Error::Other(
                "this TUN reads its fd; packets cannot be given to it".into(),
            ));
        };
        if self.stop.is_cancelled() {
            return Err(Error::Closed);
        }
        match q.try_send(packet.to_vec()) {
            Ok(()) => Ok(()),
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                add(&self.counters.drop_input_full, 1);
                Ok(())
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Err(Error::Closed),
        }
    }

    pub fn stats(&self) -> TunStats {
        self.counters.snapshot()
    }

    /// Stops the TUN: every flow ends, the device is released (the TUN's duplicate of a fd
    /// closed), and the packet callback is not called again. Idempotent, any thread. From an
    /// app thread it waits (at most a few seconds) for the TUN's tasks and flows to end and
    /// for a packet callback still running to return; from a runtime thread, or from inside the
    /// packet callback, it only starts the stop.
    pub fn stop(&self) {
        self.stop.cancel();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            // The TUN's task, then every flow's (each ends once it has closed its tunnel).
            let c = self.counters.clone();
            let ended = async move {
                let _ = task.await;
                let open = |c: &Counters| {
                    c.tcp_active.load(Ordering::Relaxed) + c.udp_active.load(Ordering::Relaxed)
                };
                while open(&c) > 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            self.rt.wait_from_app_thread(ended, STOP_BOUND);
            if tokio::runtime::Handle::try_current().is_err() {
                if let Some(t) = &self.out_thread {
                    t.wait(STOP_BOUND);
                }
            }
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }
}

impl Drop for Tun {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Device → stack: each packet classified, the bad ones counted and dropped. Waits while the
/// stack is full (a TUN fd is then read more slowly: the kernel's queue absorbs or drops).
/// Resets the TUN itself builds (`injected`) go in first, unclassified.
async fn packets_in(
    ctx: &Ctx,
    mut reader: Reader,
    mut injected: tokio::sync::mpsc::Receiver<Vec<u8>>,
    mut to_stack: impl futures_util::Sink<Vec<u8>, Error = std::io::Error> + Unpin,
) {
    let c = &ctx.counters;
    // Large enough for any packet, so an oversized one is seen whole and counted as such.
    let mut buf = vec![0u8; 65536];
    loop {
        let p = tokio::select! {
            biased;
            Some(rst) = injected.recv() => {
                if let Err(e) = to_stack.send(rst).await {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        return;
                    }
                }
                continue;
            }
            // Cancel-safe: a packet is taken from the device only when returned.
            p = reader.next(&mut buf) => match p {
                Some(p) => p,
                None => return,
            },
        };
        add(&c.packets_in, 1);
        match packet::classify(&p, ctx.opts.mtu, ctx.opts.ipv6) {
            Err(why) => {
                c.dropped(why);
                continue;
            }
            Ok(packet::Carried::Tcp) => {
                // Not counted as drops: both are ordinary TCP the stack layer mishandles.
                if let Some(why) = ctx.seqs().hold_back(&p) {
                    log::debug!("tun: {why:?} segment kept from the stack");
                    continue;
                }
            }
            Ok(_) => {}
        }
        if let Err(e) = to_stack.send(p).await {
            // The stack refuses what it cannot parse (already filtered) or has ended.
            log::debug!("tun: stack refused a packet: {e}");
            add(&c.drop_malformed, 1);
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return;
            }
        }
    }
}

/// Stack → device.
async fn packets_out(
    ctx: &Ctx,
    writer: Writer,
    mut from_stack: impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> + Unpin,
) {
    while let Some(Ok(p)) = from_stack.next().await {
        add(&ctx.counters.packets_out, 1);
        ctx.seqs().observe(&p);
        if !writer.send(p, &ctx.counters).await {
            return;
        }
    }
}
