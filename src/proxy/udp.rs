//! A full-cone UDP session over VLESS: one handle, many destinations, and replies from any
//! source reach it with their source address. Datagrams travel as Xray's client sends them
//! ([`super::xudp::udp_path`]): most in one XUDP tunnel (VLESS command Mux, session 0),
//! those to ports 53 and 443 in a plain VLESS UDP tunnel per destination.
//!
//! Guarantees this module owns:
//! - each datagram is queued whole in one tunnel or refused with an error naming why; a
//!   datagram is never split, merged or sent twice;
//! - a tunnel that ends (idle, server End, failure) is replaced on the next send, with the
//!   same GlobalID, so the server can give the session its old outbound socket back;
//! - `close` is idempotent, never blocks, works from any thread, and wakes every blocked
//!   call with [`Error::Closed`]; tunnels then end cleanly (upload finished, bounded wait
//!   for the server's end, then closed) in the background.

use super::mux::{ClientAction, FrameReader, client_action};
use super::vless::{self, Target, UdpDeframer};
use super::xudp::{self, UdpPath, XudpWriter};
use crate::config::VlessSettings;
use crate::error::{Error, Result};
use crate::tunnel::{Dialer, TunnelCore};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Replies waiting for `recv_from`; beyond this they are dropped, as UDP may be.
const REPLY_QUEUE: usize = 256;
/// Plain (port 53/443) destinations one session keeps open at once.
const MAX_PLAIN: usize = 256;
/// How long a tunnel that is ending waits for the server's end before it is closed.
const END_BOUND: Duration = Duration::from_secs(1);
/// Per read from a tunnel; larger frames are reassembled.
const READ_BUF: usize = 16 * 1024;

/// How a UDP session behaves.
#[derive(Clone, Debug)]
pub struct UdpOptions {
    /// A tunnel with no datagram either way for this long ends (Xray's client ends a UDP
    /// flow after a minute without traffic); the session stays open and the next send opens
    /// a new tunnel with the same GlobalID.
    pub idle_timeout: Duration,
}

impl Default for UdpOptions {
    fn default() -> Self {
        UdpOptions {
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// One UDP session. All methods take `&self` and may run concurrently.
pub struct UdpSession {
    inner: Arc<Inner>,
}

struct Inner {
    dialer: Arc<Dialer>,
    vless: VlessSettings,
    global_id: [u8; 8],
    opts: UdpOptions,
    /// Cancelled by `close`: ends every tunnel of the session.
    closed: CancellationToken,
    replies_tx: mpsc::Sender<(Bytes, Target)>,
    replies_rx: Mutex<mpsc::Receiver<(Bytes, Target)>>,
    /// The XUDP tunnel, opened on the first datagram that needs it. Held while opening,
    /// so concurrent senders never open two.
    xudp: Mutex<Option<Arc<XudpTunnel>>>,
    plain: Mutex<HashMap<Target, Arc<PlainFlow>>>,
}

impl UdpSession {
    /// A session whose GlobalID derives from `source` (e.g. `udp:127.0.0.1:5000` for a
    /// SOCKS client, as Xray derives it from the inbound source): two live sessions must
    /// not share a source, or the server moves the mapping from one to the other. Cancelling
    /// `closed` closes the session (pass a child token of whatever owns it). Opens nothing
    /// yet; the config must carry VLESS.
    pub fn new(
        dialer: Arc<Dialer>,
        source: &str,
        opts: UdpOptions,
        closed: CancellationToken,
    ) -> Result<UdpSession> {
        let vless = dialer.config().vless.clone().ok_or_else(|| {
            Error::config("vlessId", "UDP needs VLESS (no vlessId in the config)")
        })?;
        let (replies_tx, replies_rx) = mpsc::channel(REPLY_QUEUE);
        Ok(UdpSession {
            inner: Arc::new(Inner {
                dialer,
                vless,
                global_id: xudp::global_id(source),
                opts,
                closed,
                replies_tx,
                replies_rx: Mutex::new(replies_rx),
                xudp: Mutex::new(None),
                plain: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Sends one datagram to `target`, opening (or reopening) the tunnel it needs. Returns
    /// once the datagram is queued whole. Refused with an error naming it: port 0, an
    /// empty or too large datagram, UDP/443 under Mux's `xudpProxyUDP443: "reject"`.
    pub async fn send_to(&self, target: &Target, data: &[u8]) -> Result<()> {
        xudp::check_datagram(target, data.len())?;
        let i = &self.inner;
        let path = xudp::udp_path(target.port, i.vless.packet_encoding, &i.vless.mux);
        let token = i.closed.clone();
        tokio::select! {
            biased;
            _ = token.cancelled() => Err(Error::Closed),
            r = async {
                match path {
                    UdpPath::Xudp => i.send_xudp(target, data).await,
                    UdpPath::Plain => i.send_plain(target, data).await,
                    UdpPath::Reject => Err(Error::Other(format!(
                        "UDP to {target} refused: mux.xudpProxyUDP443 is \"reject\" (as Xray's client)"
                    ))),
                }
            } => r,
        }
    }

    /// The next datagram from any source, with that source.
    pub async fn recv_from(&self) -> Result<(Bytes, Target)> {
        let token = self.inner.closed.clone();
        tokio::select! {
            biased;
            _ = token.cancelled() => Err(Error::Closed),
            r = async {
                let mut rx = self.inner.replies_rx.lock().await;
                rx.recv().await.ok_or(Error::Closed)
            } => r,
        }
    }

    /// Ends the session; see the module comment. Idempotent, never blocks, any thread.
    pub fn close(&self) {
        self.inner.closed.cancel();
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    /// The GlobalID this session's XUDP tunnels carry.
    pub fn global_id(&self) -> [u8; 8] {
        self.inner.global_id
    }

    /// Closes the current XUDP tunnel at once, as a network failure would (tests of the
    /// reconnect); the session stays open.
    #[doc(hidden)]
    pub async fn break_xudp_tunnel(&self) {
        if let Some(t) = self.inner.xudp.lock().await.as_ref() {
            t.carrier.tunnel.close();
            t.carrier.ended.cancel();
        }
    }
}

impl Drop for UdpSession {
    fn drop(&mut self) {
        self.close();
    }
}

impl Inner {
    async fn send_xudp(self: &Arc<Self>, target: &Target, data: &[u8]) -> Result<()> {
        let mut slot = self.xudp.lock().await;
        let mut retried = false;
        loop {
            let (t, fresh) = match slot.as_ref().filter(|t| !t.carrier.ended.is_cancelled()) {
                Some(t) => (t.clone(), false),
                None => {
                    let t = XudpTunnel::open(self, target).await?;
                    *slot = Some(t.clone());
                    (t, true)
                }
            };
            match t.send(target, data).await {
                // A tunnel that was already up and died under this send is replaced once;
                // the datagram was not queued, so it cannot go twice.
                Err(e) if !fresh && !retried && t.carrier.ended.is_cancelled() => {
                    log::debug!("udp: XUDP tunnel ended under a send ({e}); reopening");
                    *slot = None;
                    retried = true;
                }
                r => return r,
            }
        }
    }

    async fn send_plain(self: &Arc<Self>, target: &Target, data: &[u8]) -> Result<()> {
        let flow = {
            let mut flows = self.plain.lock().await;
            flows.retain(|_, f| !f.carrier.ended.is_cancelled());
            match flows.get(target) {
                Some(f) => f.clone(),
                None => {
                    if flows.len() >= MAX_PLAIN {
                        return Err(Error::Other(format!(
                            "UDP to {target}: {MAX_PLAIN} plain VLESS UDP destinations are open in this session"
                        )));
                    }
                    let f = PlainFlow::open(self, target).await?;
                    flows.insert(target.clone(), f.clone());
                    f
                }
            }
        };
        flow.send(data).await
    }

    /// Queues a reply for `recv_from`, dropping it if the app is that far behind.
    fn deliver(&self, data: Bytes, from: Target) {
        if let Err(mpsc::error::TrySendError::Full((d, f))) = self.replies_tx.try_send((data, from))
        {
            log::debug!(
                "udp: reply of {} B from {f} dropped: the app is not reading",
                d.len()
            );
        }
    }
}

/// When a tunnel last carried a datagram, for its idle timeout.
struct Activity {
    started: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Returns once nothing moved for `idle`.
    async fn idle(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            // A timeout too long to represent never fires.
            let Some(due) = self
                .started
                .checked_add(last)
                .and_then(|t| t.checked_add(idle))
            else {
                return std::future::pending().await;
            };
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// One tunnel of a session: its end token and idle clock; a supervisor task runs its
/// download and ends it (see [`supervise`]).
struct Carrier {
    tunnel: Arc<TunnelCore>,
    ended: CancellationToken,
    activity: Arc<Activity>,
}

impl Carrier {
    /// Opens a tunnel whose first write carries `header` (of a `cmd` connection) and starts its supervisor over the
    /// download `download` makes.
    async fn open<F, Fut>(
        session: &Arc<Inner>,
        cmd: vless::Command,
        header: Vec<u8>,
        what: String,
        download: F,
    ) -> Result<Carrier>
    where
        F: FnOnce(Weak<Inner>, Arc<TunnelCore>, Arc<Activity>) -> Fut,
        Fut: std::future::Future<Output = Result<String>> + Send + 'static,
    {
        let core = session.dialer.open().await?;
        vless::frame(&core, cmd, header);
        let c = Carrier {
            tunnel: Arc::new(core),
            ended: CancellationToken::new(),
            activity: Arc::new(Activity::new()),
        };
        let dl = download(
            Arc::downgrade(session),
            c.tunnel.clone(),
            c.activity.clone(),
        );
        supervise(session, &c, what, dl);
        Ok(c)
    }

    /// Queues one frame whole or fails and ends the tunnel. Frames are below one write
    /// piece, so a short count cannot happen; if it did, the server would misread every
    /// later frame, so the tunnel ends rather than carry on.
    async fn write_whole(&self, frame: &[u8]) -> Result<()> {
        match self.tunnel.write(frame).await {
            Ok(n) if n == frame.len() => {
                self.activity.touch();
                Ok(())
            }
            Ok(n) => {
                self.ended.cancel();
                Err(Error::Other(format!(
                    "frame cut after {n} of {} bytes; tunnel ended",
                    frame.len()
                )))
            }
            Err(e) => {
                self.ended.cancel();
                Err(e)
            }
        }
    }
}

/// Runs a tunnel's download until it ends, then ends the tunnel: cleanly (finish the
/// upload, wait a bounded time for the server's end, close) when the session closed or the
/// tunnel idled, at once otherwise.
fn supervise<F>(session: &Arc<Inner>, c: &Carrier, what: String, download: F)
where
    F: std::future::Future<Output = Result<String>> + Send + 'static,
{
    let closed = session.closed.clone();
    let idle = session.opts.idle_timeout;
    let (tunnel, ended, activity) = (c.tunnel.clone(), c.ended.clone(), c.activity.clone());
    tokio::spawn(async move {
        tokio::pin!(download);
        let mut download_done = false;
        let why = tokio::select! {
            r = &mut download => {
                download_done = true;
                match r {
                    Ok(why) => why,
                    Err(e) => format!("failed: {e}"),
                }
            }
            _ = ended.cancelled() => "ended".to_string(),
            _ = closed.cancelled() => "session closed".to_string(),
            _ = activity.idle(idle) => format!("idle for {idle:?}"),
        };
        let clean = closed.is_cancelled() || why.starts_with("idle");
        ended.cancel();
        if clean && !download_done && !tunnel.is_closed() {
            // Like Xray's client closing the connection: the upload ends; what the server
            // still sends until it ends the response is read and dropped.
            let _ = tunnel.shutdown_write().await;
            let _ = tokio::time::timeout(END_BOUND, &mut download).await;
        }
        tunnel.close();
        log::debug!("udp: {what} closed: {why}");
    });
}

/// The XUDP tunnel of a session: VLESS command Mux, session 0.
struct XudpTunnel {
    carrier: Carrier,
    writer: Mutex<XudpWriter>,
}

impl XudpTunnel {
    async fn open(session: &Arc<Inner>, first: &Target) -> Result<Arc<XudpTunnel>> {
        let first_dest = first.clone();
        let carrier = Carrier::open(
            session,
            vless::Command::Mux,
            vless::mux_request_header(&session.vless.id),
            format!("XUDP tunnel (first destination {first})"),
            move |s, t, a| xudp_download(s, t, first_dest, a),
        )
        .await?;
        Ok(Arc::new(XudpTunnel {
            carrier,
            writer: Mutex::new(XudpWriter::new(0, session.global_id)),
        }))
    }

    async fn send(&self, target: &Target, data: &[u8]) -> Result<()> {
        // Held across the write: frames go out in the order their state was decided (New
        // before any Keep).
        let mut w = self.writer.lock().await;
        let frame = w.datagram(target, data)?;
        // A frame is below one write piece: queued whole or (cancelled) not at all, and no
        // await lies between the queueing and `sent`.
        self.carrier.write_whole(&frame).await?;
        w.sent();
        Ok(())
    }
}

/// The download of an XUDP tunnel: frames → replies. Returns why it ended.
async fn xudp_download(
    session: Weak<Inner>,
    tunnel: Arc<TunnelCore>,
    first: Target,
    activity: Arc<Activity>,
) -> Result<String> {
    let mut frames = FrameReader::default();
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = tunnel.read(&mut buf).await?;
        if n == 0 {
            return Ok("the server ended the tunnel".into());
        }
        frames.push(&buf[..n]);
        while let Some(f) = frames.next_frame()? {
            match client_action(f, |id| id == 0) {
                ClientAction::Deliver { from, data, .. } => {
                    let Some(s) = session.upgrade() else {
                        return Ok("session gone".into());
                    };
                    activity.touch();
                    // A reply that names no source comes from the first destination, as
                    // Xray's SOCKS inbound answers it.
                    s.deliver(data, from.unwrap_or_else(|| first.clone()));
                }
                ClientAction::End { error, .. } => {
                    return Ok(format!(
                        "the server ended the session{}",
                        if error { " with an error" } else { "" }
                    ));
                }
                ClientAction::ReplyEnd { session: id } => {
                    tunnel
                        .write(&XudpWriter::new(id, [0; 8]).end(false))
                        .await?;
                }
                ClientAction::Ignore => {}
            }
        }
    }
}

/// A plain VLESS UDP tunnel to one destination.
struct PlainFlow {
    carrier: Carrier,
    target: Target,
}

impl PlainFlow {
    async fn open(session: &Arc<Inner>, target: &Target) -> Result<Arc<PlainFlow>> {
        let dest = target.clone();
        let carrier = Carrier::open(
            session,
            vless::Command::Udp,
            vless::request_header(&session.vless.id, vless::Command::Udp, target),
            format!("VLESS UDP tunnel to {target}"),
            move |s, t, a| plain_download(s, t, dest, a),
        )
        .await?;
        Ok(Arc::new(PlainFlow {
            carrier,
            target: target.clone(),
        }))
    }

    async fn send(&self, data: &[u8]) -> Result<()> {
        let frame = vless::frame_udp(data)?;
        self.carrier
            .write_whole(&frame)
            .await
            .map_err(|e| Error::Other(format!("UDP to {}: {e}", self.target)))
    }
}

async fn plain_download(
    session: Weak<Inner>,
    tunnel: Arc<TunnelCore>,
    target: Target,
    activity: Arc<Activity>,
) -> Result<String> {
    let mut frames = UdpDeframer::default();
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = tunnel.read(&mut buf).await?;
        if n == 0 {
            return Ok("the server ended the tunnel".into());
        }
        frames.push(&buf[..n]);
        while let Some(d) = frames.next_datagram() {
            let Some(s) = session.upgrade() else {
                return Ok("session gone".into());
            };
            activity.touch();
            s.deliver(Bytes::from(d), target.clone());
        }
    }
}
