//! UDP ASSOCIATE: a UDP socket on the listener's IP relays the app's datagrams; each
//! (app address, destination) pair gets its own VLESS UDP tunnel, created on its first
//! datagram and closed after an idle period. Everything ends with the control connection.

use super::wire::{self, Reply};
use super::{Handshake, SocksOptions, UNSPECIFIED};
use crate::proxy::relay::log_open_failure;
use crate::proxy::vless::{self, Target, UdpDeframer, VlessTunnel};
use crate::tunnel::Dialer;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Destinations one association may talk to at once; later new ones are dropped.
const MAX_FLOWS: usize = 256;
/// Datagrams waiting for one flow's tunnel; beyond this they are dropped, as UDP may be.
const FLOW_QUEUE: usize = 64;
const MAX_DATAGRAM: usize = 65_535;

pub(super) async fn associate(
    mut h: Handshake,
    peer: SocketAddr,
    requested: Target,
    dialer: Arc<Dialer>,
    opts: Arc<SocksOptions>,
    token: CancellationToken,
) -> Result<(), String> {
    let Some(id) = dialer.config().vless.as_ref().map(|v| v.id) else {
        h.reply(Reply::CommandNotSupported, UNSPECIFIED).await?;
        return Err("UDP ASSOCIATE needs VLESS (no vlessId in the config)".into());
    };
    let ip = match h.tcp.local_addr() {
        Ok(a) => a.ip(),
        Err(e) => {
            h.reply(Reply::GeneralFailure, UNSPECIFIED).await?;
            return Err(format!("UDP ASSOCIATE: local address: {e}"));
        }
    };
    let sock = match UdpSocket::bind((ip, 0)).await.and_then(|s| {
        let a = s.local_addr()?;
        Ok((s, a))
    }) {
        Ok(s) => s,
        Err(e) => {
            h.reply(Reply::GeneralFailure, UNSPECIFIED).await?;
            return Err(format!("UDP ASSOCIATE: binding a UDP socket on {ip}: {e}"));
        }
    };
    let (sock, bound) = (Arc::new(sock.0), sock.1);
    h.reply(Reply::Succeeded, bound).await?;
    log::debug!("socks: {peer}: UDP ASSOCIATE relaying on {bound}");

    // Datagrams are taken from the control connection's host only, and from the port the
    // app announced if it announced one (RFC 1928 §7).
    let allowed = move |from: SocketAddr| {
        from.ip() == peer.ip() && (requested.port == 0 || from.port() == requested.port)
    };
    let ctx = FlowContext {
        dialer,
        id,
        sock,
        opts,
        token: token.clone(),
    };
    let mut ctrl = h.tcp;
    let control_open = async {
        let mut b = [0u8; 256];
        // Nothing more is expected on the control connection; it only says "still here".
        while let Ok(n) = ctrl.read(&mut b).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! {
        _ = control_open => {}
        _ = token.cancelled() => {}
        _ = relay_datagrams(&ctx, allowed) => {}
    }
    // Every flow holds a child token: this ends them and closes their tunnels.
    token.cancel();
    Ok(())
}

struct FlowContext {
    dialer: Arc<Dialer>,
    id: [u8; 16],
    sock: Arc<UdpSocket>,
    opts: Arc<SocksOptions>,
    token: CancellationToken,
}

/// App → flows. Never returns on its own.
async fn relay_datagrams(ctx: &FlowContext, allowed: impl Fn(SocketAddr) -> bool) {
    let sock = &ctx.sock;
    let mut flows: HashMap<(SocketAddr, Target), mpsc::Sender<Bytes>> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                log::debug!("socks: UDP receive: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if !allowed(from) {
            log::debug!("socks: UDP datagram from {from} ignored (not this association's app)");
            continue;
        }
        let pkt = match wire::parse_udp(&buf[..n]) {
            Ok(p) => p,
            Err(e) => {
                log::debug!("socks: UDP datagram from {from} dropped: {e}");
                continue;
            }
        };
        if pkt.frag != 0 {
            log::debug!("socks: UDP fragment from {from} dropped (fragmentation unsupported)");
            continue;
        }
        let data = Bytes::copy_from_slice(pkt.payload);
        let key = (from, pkt.target);
        let data = match flows.get(&key) {
            None => data,
            Some(tx) => match tx.try_send(data) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    log::debug!("socks: UDP flow to {} is behind; datagram dropped", key.1);
                    continue;
                }
                // The flow ended (idle, tunnel closed): start a new one.
                Err(mpsc::error::TrySendError::Closed(d)) => d,
            },
        };
        flows.retain(|_, tx| !tx.is_closed());
        if flows.len() >= MAX_FLOWS {
            log::debug!(
                "socks: {MAX_FLOWS} UDP flows open; datagram to {} dropped",
                key.1
            );
            continue;
        }
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        let _ = tx.try_send(data);
        tokio::spawn(flow(
            ctx.dialer.clone(),
            ctx.id,
            key.1.clone(),
            from,
            rx,
            ctx.sock.clone(),
            ctx.opts.clone(),
            ctx.token.child_token(),
        ));
        flows.insert(key, tx);
    }
}

/// One destination for one app address: a VLESS UDP tunnel; replies go back to `app` with
/// the destination in their SOCKS header.
#[allow(clippy::too_many_arguments)]
async fn flow(
    dialer: Arc<Dialer>,
    id: [u8; 16],
    target: Target,
    app: SocketAddr,
    mut rx: mpsc::Receiver<Bytes>,
    sock: Arc<UdpSocket>,
    opts: Arc<SocksOptions>,
    token: CancellationToken,
) {
    let _end_with_flow = token.clone().drop_guard();
    let opened = tokio::select! {
        _ = token.cancelled() => return,
        r = tokio::time::timeout(opts.open_timeout, dialer.open()) => r,
    };
    let core = match opened {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return log_open_failure(&format!("socks: UDP to {target}"), &e),
        Err(_) => {
            let e = crate::error::Error::Timeout(opts.open_timeout.as_millis() as u64);
            return log_open_failure(&format!("socks: UDP to {target}"), &e);
        }
    };
    let t = VlessTunnel::new(core, &id, vless::Command::Udp, &target);
    let started = Instant::now();
    let last = AtomicU64::new(0);
    let touch = || last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    let reply_header = wire::encode_udp(&target, &[]);

    let up = async {
        while let Some(d) = rx.recv().await {
            let framed = vless::frame_udp(&d).map_err(|e| e.to_string())?;
            t.write(&framed)
                .await
                .map_err(|e| format!("tunnel write: {e}"))?;
            touch();
        }
        Ok::<(), String>(())
    };
    let down = async {
        let mut frames = UdpDeframer::default();
        // Frames larger than this are reassembled by the deframer.
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = t
                .read(&mut buf)
                .await
                .map_err(|e| format!("tunnel read: {e}"))?;
            if n == 0 {
                return Ok::<(), String>(());
            }
            frames.push(&buf[..n]);
            while let Some(d) = frames.next_datagram() {
                let mut out = Vec::with_capacity(reply_header.len() + d.len());
                out.extend_from_slice(&reply_header);
                out.extend_from_slice(&d);
                if let Err(e) = sock.send_to(&out, app).await {
                    log::debug!("socks: UDP reply to {app}: {e}");
                }
                touch();
            }
        }
    };
    let idle = async {
        loop {
            // An idle timeout too long to represent never fires (no overflow panic).
            let Some(due) = started
                .checked_add(Duration::from_millis(last.load(Ordering::Relaxed)))
                .and_then(|t| t.checked_add(opts.udp_idle_timeout))
            else {
                return std::future::pending().await;
            };
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    };
    // Biased, upload first: the first datagram is already queued, so the VLESS header goes
    // out with it rather than alone from the first read.
    let why = tokio::select! {
        biased;
        r = up => r.err().unwrap_or_else(|| "association ended".into()),
        r = down => r.err().unwrap_or_else(|| "tunnel ended".into()),
        _ = idle => format!("idle for {:?}", opts.udp_idle_timeout),
        _ = token.cancelled() => "association ended".into(),
    };
    log::debug!("socks: UDP flow {app} -> {target} closed: {why}");
    t.close();
}
