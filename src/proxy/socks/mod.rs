//! A local SOCKS5 inbound (RFC 1928, RFC 1929): CONNECT and UDP ASSOCIATE.
//!
//! With `vlessId` in the config every CONNECT is a VLESS tunnel to the destination the app
//! asked for, and every app address of a UDP ASSOCIATE gets one full-cone UDP session as
//! Xray's client carries it (XUDP over Mux.Cool; a plain VLESS UDP tunnel per destination
//! for ports 53/443; see [`crate::proxy::udp`]). Without it, CONNECT opens
//! a *raw* tunnel and the requested destination is ignored: that is for servers whose inbound
//! is Xray's `tunnel` (`dokodemo-door`), which sends every session to its one fixed address.
//! UDP ASSOCIATE needs VLESS (a raw tunnel has no datagram framing) and is refused without it.
//!
//! CONNECT is answered "succeeded" once the tunnel's requests are sent; like Xray's own SOCKS
//! inbound, whether the server then reaches the destination shows only as data or a close.

mod udp;
pub mod wire;

use super::policy::{IdleTimeouts, Policy};
use super::relay::{Flow, log_open_failure, log_relay_end, open_within, relay};
use super::vless::{self, Target};
use crate::error::Error;
use crate::tunnel::Dialer;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use wire::{Command, Reply};

/// How the SOCKS inbound behaves.
#[derive(Clone, Debug)]
pub struct SocksOptions {
    /// Username and password every client must give (RFC 1929); `None`: no authentication.
    pub auth: Option<(String, String)>,
    /// Greeting, authentication and request must arrive within this.
    pub handshake_timeout: Duration,
    /// Opening a tunnel may take this long; then the app gets "host unreachable".
    pub open_timeout: Duration,
    /// A UDP tunnel with no datagram either way for this long is closed (the next datagram
    /// opens a new one).
    pub udp_idle_timeout: Duration,
    /// When a quiet TCP flow is closed.
    pub idle: IdleTimeouts,
    /// Listen on an address other than loopback without credentials (anyone who reaches it
    /// may use the server); refused unless set.
    pub allow_open: bool,
}

/// Checks what a SOCKS inbound is asked to start with: credentials of 1-255 bytes each (RFC
/// 1929), and no server open to the network without them unless `allow_open`. The error
/// names `listen`, `user` or `pass`.
pub fn check_start(
    listen: SocketAddr,
    auth: Option<(&str, &str)>,
    allow_open: bool,
) -> Result<(), Error> {
    if let Some((user, pass)) = auth {
        for (name, v) in [("user", user), ("pass", pass)] {
            if v.is_empty() || v.len() > 255 {
                return Err(Error::config(
                    name,
                    format!("must be 1-255 bytes (RFC 1929), got {}", v.len()),
                ));
            }
        }
    }
    if !listen.ip().is_loopback() && auth.is_none() && !allow_open {
        return Err(Error::config(
            "listen",
            format!(
                "{listen} is not loopback: give a user and password, or allow an open \
                 server explicitly"
            ),
        ));
    }
    Ok(())
}

impl SocksOptions {
    /// The config's `policy` and no authentication.
    pub fn from_policy(p: &Policy) -> Self {
        SocksOptions {
            auth: None,
            handshake_timeout: p.handshake,
            open_timeout: p.open_timeout,
            udp_idle_timeout: Duration::from_secs(60),
            idle: p.idle,
            allow_open: false,
        }
    }
}

impl Default for SocksOptions {
    fn default() -> Self {
        SocksOptions::from_policy(&Policy::default())
    }
}

/// Serves SOCKS5 on `listener` until `shutdown` is cancelled; then closes the listener and
/// every flow (their sockets and tunnels) and returns.
pub async fn serve(
    listener: TcpListener,
    dialer: Arc<Dialer>,
    opts: SocksOptions,
    shutdown: CancellationToken,
) {
    let opts = Arc::new(opts);
    super::accept::run(listener, shutdown, "socks", move |tcp, peer, token| {
        let (dialer, opts) = (dialer.clone(), opts.clone());
        async move {
            if let Err(e) = session(tcp, peer, dialer, opts, token).await {
                log::debug!("socks: client {peer}: {e}");
            }
        }
    })
    .await
}

/// The reply code for a tunnel that could not be opened.
fn reply_for(e: &Error) -> Reply {
    match e {
        Error::Connect { .. } | Error::Timeout(_) => Reply::HostUnreachable,
        Error::Status { .. } => Reply::ConnectionRefused,
        _ => Reply::GeneralFailure,
    }
}

const UNSPECIFIED: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// A connection in the handshake: bytes read so far and not yet parsed.
struct Handshake {
    tcp: TcpStream,
    buf: Vec<u8>,
}

/// No handshake message is longer than this (a request with a 255-byte domain: 262).
const HANDSHAKE_MAX: usize = 1024;

impl Handshake {
    /// Reads until `parse` yields a message, which is removed from the buffer.
    async fn next<T>(
        &mut self,
        what: &str,
        parse: fn(&[u8]) -> wire::Parsed<T>,
    ) -> Result<Result<T, wire::WireError>, String> {
        loop {
            match parse(&self.buf) {
                Ok(Some((v, n))) => {
                    self.buf.drain(..n);
                    return Ok(Ok(v));
                }
                Ok(None) => {}
                Err(e) => return Ok(Err(e)),
            }
            if self.buf.len() >= HANDSHAKE_MAX {
                return Err(format!("{what} longer than {HANDSHAKE_MAX} bytes"));
            }
            let mut chunk = [0u8; 512];
            let n = self
                .tcp
                .read(&mut chunk)
                .await
                .map_err(|e| format!("reading the {what}: {e}"))?;
            if n == 0 {
                return Err(format!("closed during the {what}"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn send(&mut self, what: &str, bytes: &[u8]) -> Result<(), String> {
        self.tcp
            .write_all(bytes)
            .await
            .map_err(|e| format!("sending the {what}: {e}"))
    }

    async fn reply(&mut self, r: Reply, bound: SocketAddr) -> Result<(), String> {
        self.send("reply", &wire::encode_reply(r, bound)).await
    }
}

/// Greeting, optional authentication and the request. Every refusal is answered as RFC 1928
/// says (except a greeting that is not SOCKS5, which gets a plain close) and returned as `Err`.
async fn handshake(h: &mut Handshake, opts: &SocksOptions) -> Result<wire::Request, String> {
    let methods = match h.next("greeting", wire::parse_greeting).await? {
        Ok(m) => m,
        Err(e @ wire::WireError::NoMethods) => {
            h.send("method reply", &wire::method_reply(wire::METHOD_REFUSED))
                .await?;
            return Err(format!("greeting: {e}"));
        }
        Err(e) => return Err(format!("greeting: {e}")),
    };
    let method = wire::choose_method(&methods, opts.auth.is_some());
    h.send("method reply", &wire::method_reply(method)).await?;
    if method == wire::METHOD_REFUSED {
        return Err(format!("no acceptable method among {methods:?}"));
    }
    if let Some((user, pass)) = &opts.auth {
        let ok = match h.next("username/password", wire::parse_auth).await? {
            Ok(c) => c.matches(user, pass),
            Err(e) => {
                h.send("auth reply", &wire::auth_reply(false)).await?;
                return Err(format!("username/password: {e}"));
            }
        };
        h.send("auth reply", &wire::auth_reply(ok)).await?;
        if !ok {
            return Err("wrong username or password".into());
        }
    }
    match h.next("request", wire::parse_request).await? {
        Ok(r) => Ok(r),
        Err(e) => {
            h.reply(e.reply(), UNSPECIFIED).await?;
            Err(format!("request: {e}"))
        }
    }
}

async fn session(
    tcp: TcpStream,
    peer: SocketAddr,
    dialer: Arc<Dialer>,
    opts: Arc<SocksOptions>,
    token: CancellationToken,
) -> Result<(), String> {
    let mut h = Handshake {
        tcp,
        buf: Vec::new(),
    };
    let req = tokio::time::timeout(opts.handshake_timeout, handshake(&mut h, &opts))
        .await
        .map_err(|_| format!("no complete handshake within {:?}", opts.handshake_timeout))??;
    match req.cmd {
        Command::Connect => connect(h, req.target, &dialer, &opts).await,
        Command::UdpAssociate => udp::associate(h, peer, req.target, dialer, opts, token).await,
        Command::Bind => {
            h.reply(Reply::CommandNotSupported, UNSPECIFIED).await?;
            Err("BIND is not supported".into())
        }
    }
}

async fn connect(
    mut h: Handshake,
    target: Target,
    dialer: &Dialer,
    opts: &SocksOptions,
) -> Result<(), String> {
    let who = format!("socks: CONNECT {target}");
    let opened = open_within(
        opts.open_timeout,
        Flow::open(dialer, vless::Command::Tcp, &target),
    )
    .await;
    let flow = match opened {
        Ok(f) => f,
        Err(e) => {
            log_open_failure(&who, &e);
            // Logged: the caller's debug line would only repeat it.
            return h.reply(reply_for(&e), UNSPECIFIED).await;
        }
    };
    let bound = h.tcp.local_addr().unwrap_or(UNSPECIFIED);
    h.reply(Reply::Succeeded, bound).await?;
    let (rd, wr) = h.tcp.split();
    let result = relay(rd, wr, &flow, &h.buf, opts.idle).await;
    flow.close();
    log_relay_end(&who, &result);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_failures_map_to_replies() {
        let connect = Error::Connect {
            addr: "x".into(),
            detail: "y".into(),
        };
        assert_eq!(reply_for(&connect), Reply::HostUnreachable);
        assert_eq!(reply_for(&Error::Timeout(5)), Reply::HostUnreachable);
        assert_eq!(reply_for(&Error::Closed), Reply::GeneralFailure);
        let status = Error::Status {
            status: 404,
            request: crate::error::RequestLabel {
                method: "GET".into(),
                target: "/".into(),
                role: "stream-down".into(),
            },
        };
        assert_eq!(reply_for(&status), Reply::ConnectionRefused);
    }
}
