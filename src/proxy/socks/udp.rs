//! UDP ASSOCIATE: a UDP socket on the listener's IP relays the app's datagrams. Each app
//! address gets one full-cone UDP session ([`crate::proxy::udp`]), as Xray's SOCKS inbound
//! gives each source one UDP flow: XUDP in one tunnel for most destinations, a plain VLESS
//! UDP tunnel per destination for ports 53/443; replies from any source come back to the
//! app with that source. Tunnels close after an idle period; everything ends with the
//! control connection.

use super::wire::{self, Reply};
use super::{Handshake, SocksOptions, UNSPECIFIED};
use crate::error::Error;
use crate::proxy::udp::{UdpOptions, UdpSession};
use crate::proxy::vless::Target;
use crate::tunnel::Dialer;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// App addresses one association serves at once; datagrams from later new ones are dropped.
const MAX_SESSIONS: usize = 256;
/// Datagrams waiting for one app address's session; beyond this they are dropped, as UDP
/// may be.
const SESSION_QUEUE: usize = 256;
const MAX_DATAGRAM: usize = 65_535;

pub(super) async fn associate(
    mut h: Handshake,
    peer: SocketAddr,
    requested: Target,
    dialer: Arc<Dialer>,
    opts: Arc<SocksOptions>,
    token: CancellationToken,
) -> Result<(), String> {
    if dialer.config().vless.is_none() {
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
    sock: Arc<UdpSocket>,
    opts: Arc<SocksOptions>,
    token: CancellationToken,
}

/// App → sessions. Never returns on its own.
async fn relay_datagrams(ctx: &FlowContext, allowed: impl Fn(SocketAddr) -> bool) {
    let sock = &ctx.sock;
    let mut sessions: HashMap<SocketAddr, mpsc::Sender<(Target, Bytes)>> = HashMap::new();
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
        let item = (pkt.target, Bytes::copy_from_slice(pkt.payload));
        let item = match sessions.get(&from) {
            None => item,
            Some(tx) => match tx.try_send(item) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Full((t, _))) => {
                    log::debug!("socks: UDP session of {from} is behind; datagram to {t} dropped");
                    continue;
                }
                // The session ended (its tunnel could not be opened): start a new one.
                Err(mpsc::error::TrySendError::Closed(item)) => item,
            },
        };
        sessions.retain(|_, tx| !tx.is_closed());
        if sessions.len() >= MAX_SESSIONS {
            log::debug!("socks: {MAX_SESSIONS} UDP sources open; datagram from {from} dropped");
            continue;
        }
        // Xray keys a UDP session by the app's source address, and so its GlobalID.
        // Ends with the association (its token is this session's parent).
        let token = ctx.token.child_token();
        let session = match UdpSession::new(
            ctx.dialer.clone(),
            &format!("udp:{from}"),
            UdpOptions {
                idle_timeout: ctx.opts.udp_idle_timeout,
            },
            token.clone(),
        ) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("socks: UDP from {from}: {e}");
                continue;
            }
        };
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let _ = tx.try_send(item);
        tokio::spawn(app_session(session, from, rx, ctx.sock.clone(), token));
        sessions.insert(from, tx);
    }
}

/// One app address: its datagrams go out through its UDP session, in order; replies from
/// any source come back to it with that source in their SOCKS header (full-cone).
async fn app_session(
    session: UdpSession,
    app: SocketAddr,
    mut rx: mpsc::Receiver<(Target, Bytes)>,
    sock: Arc<UdpSocket>,
    token: CancellationToken,
) {
    let up = async {
        while let Some((target, d)) = rx.recv().await {
            match session.send_to(&target, &d).await {
                Ok(()) => {}
                Err(Error::Closed) => return "session closed".to_string(),
                // UDP may be lost: a datagram the session refuses or cannot send now is
                // dropped, and the next one tries again.
                Err(e) => log::debug!("socks: UDP {app} -> {target}: {e}"),
            }
        }
        "association ended".to_string()
    };
    let down = async {
        loop {
            let (d, from) = match session.recv_from().await {
                Ok(r) => r,
                Err(e) => return format!("session: {e}"),
            };
            if let Err(e) = sock.send_to(&wire::encode_udp(&from, &d), app).await {
                log::debug!("socks: UDP reply to {app}: {e}");
            }
        }
    };
    let why = tokio::select! {
        why = up => why,
        why = down => why,
        _ = token.cancelled() => "association ended".to_string(),
    };
    log::debug!("socks: UDP session of {app} closed: {why}");
    session.close();
}
