//! One HTTP/3 connection = one QUIC connection on its own UDP socket (so retiring it
//! releases the socket), with the h3 driver polled for the connection's whole life.

use super::guarded::{self, Guarded};
use super::socket::{MobileSocket, SocketHooks};
use super::surface::{self, Congestion};
use crate::error::{Error, Result};
use bytes::Bytes;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub type RequestStream = h3::client::RequestStream<Guarded<h3_quinn::BidiStream<Bytes>>, Bytes>;
/// The halves of a request stream (`RequestStream::split`).
pub type SendHalf = h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
pub type RecvHalf = h3::client::RequestStream<Guarded<h3_quinn::RecvStream>, Bytes>;
type Sender = h3::client::SendRequest<guarded::Connection<h3_quinn::OpenStreams>, Bytes>;

/// Why a request head was not sent.
#[derive(Debug)]
pub enum Refused {
    /// The server announced GOAWAY: nothing was sent; try another connection.
    GoingAway,
    /// The request failed on this connection (h3's words).
    Failed(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::GoingAway => f.write_str("the server is closing the connection (GOAWAY)"),
            Refused::Failed(e) => f.write_str(e),
        }
    }
}

/// Per-destination choices on top of the fixed surface (`surface.rs`).
#[derive(Clone, Debug)]
pub struct QuicOptions {
    /// `None` disables keep-alive. Xray's H3 client default is 10 s (`xmux.hKeepAlivePeriod`).
    pub keep_alive: Option<Duration>,
    pub congestion: Congestion,
    /// `memoryLimits`: replaces the surface's windows (and the send window) where set.
    pub limits: crate::config::MemoryLimits,
}

impl Default for QuicOptions {
    fn default() -> Self {
        QuicOptions {
            keep_alive: Some(Duration::from_secs(10)),
            congestion: Congestion::default(),
            limits: Default::default(),
        }
    }
}

impl QuicOptions {
    fn transport(&self) -> quinn::TransportConfig {
        let mut t = surface::transport_config(self.keep_alive);
        self.congestion.apply(&mut t);
        super::limits::apply(&self.limits, &mut t);
        t
    }
}

/// An established HTTP/3 connection.
pub struct H3Conn {
    quic: quinn::Connection,
    // Owned so the endpoint (and its socket) lives exactly as long as this connection.
    endpoint: quinn::Endpoint,
    hooks: Arc<SocketHooks>,
    sender: Mutex<Sender>,
    /// Changes when the connection moves to a new socket (`rebind`).
    local: Mutex<SocketAddr>,
    remote: SocketAddr,
    broken: Arc<AtomicBool>,
    runtime: tokio::runtime::Handle,
}

/// How long a retired connection waits before CONNECTION_CLOSE, so the stream resets its
/// last tunnel queued are sent (quinn drops pending frames on close).
const CLOSE_GRACE: Duration = Duration::from_millis(50);

/// Lock-free on purpose: it may be formatted into a log record on any thread, and asking
/// quinn (`is_broken`, `close_reason`) would wait for the connection's mutex, which a
/// runtime thread holds while it logs (a lock cycle through the log sink).
impl std::fmt::Debug for H3Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3Conn")
            .field("remote", &self.remote)
            .field("broken", &self.broken.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl H3Conn {
    /// Dials `remote` with TLS name `sni` and sets up HTTP/3. Must run on the runtime.
    pub async fn connect(
        remote: SocketAddr,
        sni: &str,
        tls: Arc<rustls::ClientConfig>,
        opts: &QuicOptions,
        hooks: Arc<SocketHooks>,
    ) -> Result<Arc<H3Conn>> {
        let fail = |detail: String| Error::Connect {
            addr: remote.to_string(),
            detail,
        };
        let socket = hooks
            .udp_socket(remote)
            .map_err(|e| fail(format!("UDP socket: {e}")))?;
        let socket = MobileSocket::wrap(socket).map_err(|e| fail(format!("UDP socket: {e}")))?;
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            surface::endpoint_config(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|e| fail(format!("QUIC endpoint: {e}")))?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| fail(format!("TLS config unusable for QUIC: {e}")))?;
        let mut cc = surface::client_config(Arc::new(crypto));
        cc.transport_config(Arc::new(opts.transport()));
        let connecting = endpoint
            .connect_with(cc, remote, sni)
            .map_err(|e| fail(format!("{e}")))?;
        let quic = match tokio::time::timeout(surface::HANDSHAKE_TIMEOUT, connecting).await {
            Ok(Ok(quic)) => quic,
            Ok(Err(e)) => return Err(fail(handshake_failure(&e))),
            Err(_) => {
                return Err(fail(handshake_failure(&quinn::ConnectionError::TimedOut)));
            }
        };
        let (mut driver, sender) = surface::h3_builder()
            .build::<_, _, Bytes>(guarded::Connection::new(quic.clone()))
            .await
            .map_err(|e| fail(format!("HTTP/3 setup: {e}")))?;
        let broken = Arc::new(AtomicBool::new(false));
        let flag = broken.clone();
        tokio::spawn(async move {
            let err = futures_util::future::poll_fn(|cx| driver.poll_close(cx)).await;
            flag.store(true, Ordering::Release);
            log::debug!("HTTP/3 connection to {remote} ended: {err}");
        });
        let local = local_addr(&endpoint, &quic);
        Ok(Arc::new(H3Conn {
            local: Mutex::new(local),
            remote: quic.remote_address(),
            quic,
            endpoint,
            hooks,
            sender: Mutex::new(sender),
            broken,
            runtime: tokio::runtime::Handle::current(),
        }))
    }

    /// Sends a request head; returns the stream for its body and response.
    pub async fn send_request(&self, req: http::Request<()>) -> Result<RequestStream, Refused> {
        let mut sender = self
            .sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let r = sender.send_request(req).await;
        match r {
            Ok(s) => Ok(s),
            // The server sent GOAWAY: h3 refuses new requests before sending anything. The
            // connection is retired (XMUX gives it no new tunnel) while the requests it
            // already carries finish.
            Err(h3::error::StreamError::RemoteClosing { .. }) => {
                self.broken.store(true, Ordering::Release);
                Err(Refused::GoingAway)
            }
            Err(e) => {
                if self.quic.close_reason().is_some() {
                    self.broken.store(true, Ordering::Release);
                }
                Err(Refused::Failed(e.to_string()))
            }
        }
    }

    /// True once the connection failed, closed or was told to go away (GOAWAY); such a
    /// connection is never given a new request again.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire) || self.quic.close_reason().is_some()
    }

    /// True once CONNECTION_CLOSE was sent or received.
    pub fn is_closed(&self) -> bool {
        self.quic.close_reason().is_some()
    }

    pub fn local_addr(&self) -> SocketAddr {
        *self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the connection to a new UDP socket (made and protected like the first), for a
    /// network change: QUIC migrates the path and open streams carry on. The old socket is
    /// released. Must run on the runtime.
    pub fn rebind(&self) -> std::io::Result<SocketAddr> {
        let socket = self.hooks.udp_socket(self.remote)?;
        self.endpoint.rebind_abstract(MobileSocket::wrap(socket)?)?;
        // Not quinn's view of the local IP: that is the old path's until a packet arrives.
        let port = self.endpoint.local_addr()?.port();
        let ip = route_local_ip(self.remote).unwrap_or_else(|| self.local_addr().ip());
        let local = SocketAddr::new(ip, port);
        *self.local.lock().unwrap_or_else(|p| p.into_inner()) = local;
        Ok(local)
    }

    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// Sends CONNECTION_CLOSE now. Idempotent.
    pub fn close(&self) {
        self.broken.store(true, Ordering::Release);
        self.quic.close(0u32.into(), b"");
    }
}

impl H3Conn {
    /// Never used again; closed after a short grace (see `CLOSE_GRACE`). Callable from any
    /// thread.
    pub fn close_gracefully(self: &Arc<Self>) {
        self.broken.store(true, Ordering::Release);
        let me = self.clone();
        self.runtime.spawn(async move {
            tokio::time::sleep(CLOSE_GRACE).await;
            me.close();
        });
    }
}

impl Drop for H3Conn {
    fn drop(&mut self) {
        self.close();
    }
}

/// What a failed QUIC handshake most likely means, for the connect error.
fn handshake_failure(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::TimedOut => format!(
            "no answer to the QUIC handshake within {} s: UDP may be blocked on this network, \
             the server may expect a UDP mask (finalmask), or nothing listens on this UDP port",
            surface::HANDSHAKE_TIMEOUT.as_secs()
        ),
        other => other.to_string(),
    }
}

/// The connection's local address: the socket's port, and the IP quinn saw packets arrive
/// on or else the one the routing table picks.
fn local_addr(endpoint: &quinn::Endpoint, quic: &quinn::Connection) -> SocketAddr {
    let bound = endpoint
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let ip = quic
        .local_ip()
        .or_else(|| route_local_ip(quic.remote_address()))
        .unwrap_or(bound.ip());
    SocketAddr::new(ip, bound.port())
}

/// The local address the kernel would use toward `remote` (a connected UDP socket sends
/// nothing; it only asks the routing table). Used when quinn cannot tell us.
fn route_local_ip(remote: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if remote.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(remote).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}
