//! The Mux.Cool target behind a VLESS Mux request, serving UDP sessions the way Xray's mux
//! server plus a freedom outbound does (`common/mux/server.go`):
//! - a New frame (UDP) opens a session on an unconnected UDP socket (full-cone: replies from
//!   any source come back in Keep frames naming that source); its data goes to the
//!   destination, later Keep frames' data to the address each names (or the first one);
//! - a New frame with a GlobalID takes over the socket of the session that had it, live on
//!   another connection (which gets an End) or closed within the last minute, so the mapped
//!   address survives a reconnect;
//! - Keep with data for an unknown session is answered with an End; KeepAlive is ignored;
//!   an End closes the session; TCP sessions are refused with an End carrying the error
//!   option (the client under test never opens one);
//! - when the upload ends, every session closes (GlobalIDs stay claimable for a minute).
//!
//! Destinations must be loopback, as for every VLESS destination of the test server.

use super::run_end::RunEnd;
use super::session::Upload;
use super::vless::{Downstream, resolve};
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use xhttp_mobile::proxy::mux::{Frame, FrameReader, Network, Status};
use xhttp_mobile::proxy::vless::Target;

/// How long a closed session's socket stays claimable by its GlobalID (Xray: a minute).
const KEEP_MAPPING: Duration = Duration::from_secs(60);
/// Frames waiting to go down; a session's reader waits when it is full.
const DOWN_QUEUE: usize = 256;

/// A GlobalID's socket: held by a live session (`owner` cancels it) or waiting to be
/// claimed until `expires`.
struct Mapping {
    sock: Arc<UdpSocket>,
    owner: Option<CancellationToken>,
    expires: Instant,
}

/// Process-wide like Xray's `XUDPManager`: a reconnect may reach another session.
fn mappings() -> &'static Mutex<HashMap<[u8; 8], Mapping>> {
    static M: std::sync::OnceLock<Mutex<HashMap<[u8; 8], Mapping>>> = std::sync::OnceLock::new();
    M.get_or_init(Default::default)
}

struct Session {
    sock: Arc<UdpSocket>,
    first: SocketAddr,
    global_id: Option<[u8; 8]>,
    stop: CancellationToken,
}

impl Session {
    /// Stops the reader; a GlobalID's socket stays claimable for a while.
    fn close(&self) {
        self.stop.cancel();
        if let Some(g) = self.global_id {
            let mut m = mappings().lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = m.get_mut(&g) {
                if e.owner.as_ref().is_some_and(|o| o.is_cancelled()) {
                    e.owner = None;
                    e.expires = Instant::now() + KEEP_MAPPING;
                }
            }
        }
    }
}

pub(crate) async fn run(first: Bytes, upload: &mut Upload, down: &mut Downstream<'_>) -> RunEnd {
    let mut frames = FrameReader::default();
    frames.push(&first);
    let mut sessions: HashMap<u16, Session> = HashMap::new();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(DOWN_QUEUE);
    let end = loop {
        loop {
            let f = match frames.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return close_all(&mut sessions, RunEnd::TargetFailed(e.to_string())),
            };
            if let Err(e) = handle(f, &mut sessions, &tx).await {
                return close_all(&mut sessions, e);
            }
        }
        tokio::select! {
            next = upload.next() => match next {
                Ok(Some(b)) => frames.push(&b),
                Ok(None) => break RunEnd::UploadDone,
                Err(e) => break RunEnd::UploadFailed(e),
            },
            Some(frame) = rx.recv() => {
                if let Err(e) = down.send(&frame).await {
                    break e;
                }
            }
        }
    };
    close_all(&mut sessions, end)
}

fn close_all(sessions: &mut HashMap<u16, Session>, end: RunEnd) -> RunEnd {
    for (_, s) in sessions.drain() {
        s.close();
    }
    end
}

fn end_frame(session: u16, error: bool) -> Vec<u8> {
    Frame {
        error,
        ..Frame::bare(session, Status::End)
    }
    .to_bytes()
    .expect("an End frame encodes")
}

/// Queues an End without waiting: the loop that drains the queue is the one calling this.
fn reply_end(tx: &mpsc::Sender<Vec<u8>>, id: u16, error: bool) {
    if tx.try_send(end_frame(id, error)).is_err() {
        log::debug!("testserver: XUDP End for session {id} dropped (download queue full)");
    }
}

/// One frame from the client. An error ends the whole connection (as in Xray).
async fn handle(
    f: Frame,
    sessions: &mut HashMap<u16, Session>,
    tx: &mpsc::Sender<Vec<u8>>,
) -> Result<(), RunEnd> {
    let id = f.session;
    match f.status {
        Status::KeepAlive => {}
        Status::End => {
            if let Some(s) = sessions.remove(&id) {
                s.close();
            }
        }
        Status::Keep => {
            let Some(data) = f.data else { return Ok(()) };
            match sessions.get(&id) {
                Some(s) => {
                    let to = match f.target {
                        Some((_, t)) => resolve(&t).await?,
                        None => s.first,
                    };
                    send(&s.sock, &data, to).await;
                }
                None => {
                    reply_end(tx, id, false);
                }
            }
        }
        Status::New => {
            let Some((net, target)) = f.target else {
                return Err(RunEnd::TargetFailed(
                    "New frame without a destination".into(),
                ));
            };
            if net == Network::Tcp {
                reply_end(tx, id, true);
                return Ok(());
            }
            let first = resolve(&target).await?;
            let stop = CancellationToken::new();
            let global_id = f.global_id.filter(|g| *g != [0; 8]);
            let sock = match claim(global_id, &stop) {
                Some(sock) => sock,
                None => {
                    let sock = UdpSocket::bind(("0.0.0.0", 0))
                        .await
                        .map_err(|e| RunEnd::TargetFailed(format!("UDP bind for {target}: {e}")))?;
                    let sock = Arc::new(sock);
                    if let Some(g) = global_id {
                        let mapping = Mapping {
                            sock: sock.clone(),
                            owner: Some(stop.clone()),
                            expires: Instant::now(),
                        };
                        mappings()
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(g, mapping);
                    }
                    sock
                }
            };
            if let Some(data) = &f.data {
                send(&sock, data, first).await;
            }
            tokio::spawn(replies(id, sock.clone(), tx.clone(), stop.clone()));
            let s = Session {
                sock,
                first,
                global_id,
                stop,
            };
            if let Some(old) = sessions.insert(id, s) {
                old.close();
            }
        }
    }
    Ok(())
}

/// The socket a GlobalID had, taken over for the session `stop` belongs to: a live owner is
/// stopped (its reader sends its connection an End), an expired one is forgotten.
fn claim(global_id: Option<[u8; 8]>, stop: &CancellationToken) -> Option<Arc<UdpSocket>> {
    let g = global_id?;
    let mut m = mappings().lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    m.retain(|_, e| e.owner.is_some() || e.expires > now);
    let e = m.get_mut(&g)?;
    if let Some(old) = e.owner.replace(stop.clone()) {
        old.cancel();
    }
    Some(e.sock.clone())
}

async fn send(sock: &UdpSocket, data: &[u8], to: SocketAddr) {
    if !to.ip().is_loopback() && !super::vless::is_local(to.ip()) {
        log::debug!("testserver: XUDP datagram to {to} dropped (loopback only)");
        return;
    }
    // Like any UDP relay: a datagram the destination refuses is lost, not fatal.
    if let Err(e) = sock.send_to(data, to).await {
        log::debug!("testserver: XUDP send to {to}: {e}");
    }
}

/// Datagrams from any source → Keep frames naming it, until the session stops; then an End.
async fn replies(
    id: u16,
    sock: Arc<UdpSocket>,
    tx: mpsc::Sender<Vec<u8>>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = tokio::select! {
            // Stop first: a session whose GlobalID was taken over shares this socket with
            // the new one, and a reply read here after the takeover would be lost.
            biased;
            _ = stop.cancelled() => break,
            r = sock.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    // ICMP unreachable surfaces here; keep listening.
                    log::debug!("testserver: XUDP recv: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let frame = Frame {
            target: Some((Network::Udp, Target::from(from))),
            data: Some(Bytes::copy_from_slice(&buf[..n])),
            ..Frame::bare(id, Status::Keep)
        };
        let Ok(bytes) = frame.to_bytes() else {
            continue;
        };
        if tx.send(bytes).await.is_err() {
            return;
        }
    }
    let _ = tx.send(end_frame(id, false)).await;
}
