//! The UDP sockets under QUIC: created through [`SocketHooks`] (so a VPN app can exclude
//! them from its own tunnel, Android's `VpnService.protect(fd)`) and wrapped in
//! [`MobileSocket`], which keeps mobile kernels' send errors from killing connections.
//!
//! Why the wrapper: quinn 0.11 fails a connection on any send error other than
//! `WouldBlock`. Some Android kernels answer a `sendmsg` carrying ECN bits with EIO, so
//! nothing would ever be sent (quinn#2718); and during a network handover sends fail for a
//! moment with "network unreachable" and the like, which for QUIC is just loss.

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use std::cell::Cell;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

/// The OS handle of a socket as the protect hook sees it (a file descriptor).
#[cfg(unix)]
pub type RawSocket = std::os::fd::RawFd;
#[cfg(not(unix))]
pub type RawSocket = u64;

/// Called with every UDP socket the client creates, before it sends anything; `false`
/// refuses the socket (the dial fails). Runs on the library's runtime thread: be quick.
pub type Protect = Arc<dyn Fn(RawSocket) -> bool + Send + Sync>;

/// Per-client socket hooks, shared by every connection the client dials. Settable at any
/// time; sockets created afterwards see the change.
#[derive(Default)]
pub struct SocketHooks {
    protect: RwLock<Option<Protect>>,
    /// Set by `close`: no socket is made (nor protect called) any more.
    closed: AtomicBool,
}

thread_local! {
    /// This thread is inside the protect hook: taking the write lock here would deadlock.
    static IN_PROTECT: Cell<bool> = const { Cell::new(false) };
}

fn in_protect() -> bool {
    IN_PROTECT.try_with(Cell::get).unwrap_or(false)
}

/// Never waits (it may end up in a log record): a hook being replaced shows as unknown.
impl fmt::Debug for SocketHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = self.protect.try_read().ok().map(|p| p.is_some());
        f.debug_struct("SocketHooks")
            .field("protect", &set)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl SocketHooks {
    /// Replaces the hook. When it returns, no call of the old hook is running (unless
    /// called from inside the hook itself, where waiting would deadlock: then the change
    /// is refused with a warning).
    pub fn set_protect(&self, protect: Option<Protect>) {
        if in_protect() {
            log::warn!("set_protect called from inside the protect hook: ignored");
            return;
        }
        *self.protect.write().unwrap_or_else(|p| p.into_inner()) = protect;
    }

    /// The client is closing: later sockets are refused and the hook is dropped, after any
    /// running call of it returns (so what it uses may be freed once this returns).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if !in_protect() {
            self.protect
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .take();
        }
    }

    /// A new UDP socket for talking to `remote`, bound to the wildcard address of its
    /// family and passed through the protect hook.
    pub fn udp_socket(&self, remote: SocketAddr) -> io::Result<std::net::UdpSocket> {
        let closed = || io::Error::new(io::ErrorKind::NotConnected, "the client is closed");
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        let bind: SocketAddr = if remote.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = std::net::UdpSocket::bind(bind)?;
        // Called under the read lock: replacing the hook waits until no call of the old
        // one is running, so an app may free what the old one used once it is replaced.
        let protect = self.protect.read().unwrap_or_else(|p| p.into_inner());
        // Checked again under the lock: `close` may have run meanwhile, and an unprotected
        // socket in a VPN app loops its traffic back into the VPN.
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        if let Some(protect) = protect.as_ref() {
            let _ = IN_PROTECT.try_with(|c| c.set(true));
            let ok = protect(raw(&socket));
            let _ = IN_PROTECT.try_with(|c| c.set(false));
            if !ok {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the socket protect callback refused the UDP socket",
                ));
            }
        }
        Ok(socket)
    }
}

#[cfg(unix)]
fn raw(s: &std::net::UdpSocket) -> RawSocket {
    use std::os::fd::AsRawFd;
    s.as_raw_fd()
}

#[cfg(not(unix))]
fn raw(_: &std::net::UdpSocket) -> RawSocket {
    0
}

/// What a failed send means for the connection.
#[derive(Debug, PartialEq, Eq)]
enum SendFailure {
    /// The kernel refused the ECN bits (EIO/EINVAL with ECN set): send again without.
    DropEcn,
    /// The path is gone for now (handover, no route): the datagram is lost, QUIC recovers
    /// or times out.
    Lost,
    /// Anything else: report it.
    Fatal,
}

/// `segmented`: the transmit used segmentation offload (GSO). quinn-udp turns GSO off
/// after an EIO/EINVAL, but transmits already built with it may still fail the same way.
fn classify(e: &io::Error, had_ecn: bool, segmented: bool) -> SendFailure {
    #[cfg(unix)]
    if matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) {
        if had_ecn {
            return SendFailure::DropEcn;
        }
        if segmented {
            return SendFailure::Lost;
        }
    }
    #[cfg(not(unix))]
    let _ = (had_ecn, segmented);
    match e.kind() {
        io::ErrorKind::NetworkUnreachable
        | io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkDown
        | io::ErrorKind::AddrNotAvailable
        | io::ErrorKind::ConnectionRefused
        | io::ErrorKind::PermissionDenied => SendFailure::Lost,
        #[cfg(unix)]
        _ if e.raw_os_error() == Some(libc::ENOBUFS) => SendFailure::Lost,
        _ => SendFailure::Fatal,
    }
}

/// quinn's own socket for the runtime, with the send policy above.
pub struct MobileSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    ecn: AtomicBool,
    lost: AtomicU64,
}

impl fmt::Debug for MobileSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MobileSocket")
            .field("local", &self.inner.local_addr().ok())
            .field("ecn", &self.ecn.load(Ordering::Relaxed))
            .finish()
    }
}

impl MobileSocket {
    /// Wraps `socket` for quinn's tokio runtime. Must run on the runtime.
    pub fn wrap(socket: std::net::UdpSocket) -> io::Result<Arc<MobileSocket>> {
        use quinn::Runtime;
        Ok(Arc::new(MobileSocket {
            inner: quinn::TokioRuntime.wrap_udp_socket(socket)?,
            ecn: AtomicBool::new(true),
            lost: AtomicU64::new(0),
        }))
    }

    /// A send that failed in a way QUIC treats as loss.
    fn lost(&self, e: &io::Error) -> io::Result<()> {
        if self.lost.fetch_add(1, Ordering::Relaxed) % 100 == 0 {
            log::debug!("UDP send failed ({e}); counted as loss");
        }
        Ok(())
    }

    fn send(&self, transmit: &Transmit) -> io::Result<()> {
        if self.ecn.load(Ordering::Relaxed) || transmit.ecn.is_none() {
            return self.inner.try_send(transmit);
        }
        self.inner.try_send(&Transmit {
            ecn: None,
            ..*transmit
        })
    }
}

impl AsyncUdpSocket for MobileSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let had_ecn = transmit.ecn.is_some() && self.ecn.load(Ordering::Relaxed);
        let e = match self.send(transmit) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => e,
            r => return r,
        };
        match classify(&e, had_ecn, transmit.segment_size.is_some()) {
            SendFailure::DropEcn => {
                log::info!("UDP send with ECN failed ({e}); sending without ECN from now on");
                self.ecn.store(false, Ordering::Relaxed);
                match self.send(transmit) {
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                        match classify(&e, false, transmit.segment_size.is_some()) {
                            SendFailure::Fatal => Err(e),
                            _ => self.lost(&e),
                        }
                    }
                    r => r,
                }
            }
            SendFailure::Lost => self.lost(&e),
            SendFailure::Fatal => Err(e),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[cfg(unix)]
    #[test]
    fn send_errors_are_classified_for_mobile_kernels() {
        assert_eq!(classify(&os(libc::EIO), true, false), SendFailure::DropEcn);
        assert_eq!(
            classify(&os(libc::EINVAL), true, true),
            SendFailure::DropEcn
        );
        assert_eq!(classify(&os(libc::EIO), false, true), SendFailure::Lost);
        assert_eq!(classify(&os(libc::EIO), false, false), SendFailure::Fatal);
        for code in [
            libc::ENETUNREACH,
            libc::EHOSTUNREACH,
            libc::ENETDOWN,
            libc::EADDRNOTAVAIL,
            libc::EPERM,
            libc::ENOBUFS,
        ] {
            assert_eq!(
                classify(&os(code), false, false),
                SendFailure::Lost,
                "{code}"
            );
        }
        assert_eq!(classify(&os(libc::EBADF), false, false), SendFailure::Fatal);
    }

    #[test]
    fn protect_sees_each_socket_and_can_refuse_it() {
        let hooks = SocketHooks::default();
        let remote: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(hooks.udp_socket(remote).is_ok());
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        hooks.set_protect(Some(Arc::new(move |fd| {
            log.lock().unwrap().push(fd);
            true
        })));
        let s = hooks.udp_socket(remote).unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![raw(&s)]);
        hooks.set_protect(Some(Arc::new(|_| false)));
        let e = hooks.udp_socket(remote).unwrap_err();
        assert!(e.to_string().contains("protect"), "{e}");
    }

    #[test]
    fn a_closed_client_makes_no_sockets_and_drops_its_hook() {
        let hooks = Arc::new(SocketHooks::default());
        let remote: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n = calls.clone();
        let inner = hooks.clone();
        hooks.set_protect(Some(Arc::new(move |_| {
            n.fetch_add(1, Ordering::SeqCst);
            // Re-entering from the hook neither deadlocks nor takes effect.
            inner.set_protect(None);
            inner.close();
            true
        })));
        assert!(hooks.udp_socket(remote).is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // `close` from inside the hook marked it closed without waiting on itself.
        assert!(hooks.udp_socket(remote).is_err());
        hooks.close();
        assert!(
            hooks.protect.read().unwrap().is_none(),
            "hook kept after close"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
