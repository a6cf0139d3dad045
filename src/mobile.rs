//! The Kotlin/Swift surface, exported with uniffi: thin objects over [`crate::api`] that
//! only convert and delegate, like the C ABI in `ffi/`.
//!
//! Names: uniffi-generated Kotlin does not compile with a method named `close` or
//! `destroy` (uniffi#2955; the generated class already has them for freeing the object),
//! so ending a client or tunnel is `shutdown()`. Freeing is the binding's own `close()` /
//! `destroy()` (Kotlin) or deinit (Swift); both are idempotent.
//!
//! Timeouts are milliseconds as in the C ABI: `XH_TIMEOUT_INFINITE` (u32::MAX) waits
//! without limit, 0 does not wait.

use crate::api;
use crate::error::Error;
use std::sync::Arc;

/// Every failure, as one exception type with a kind and the library's text in `detail`
/// (which names the field, the status or the request). Not `message`: Kotlin exceptions
/// already have one, and a field of that name does not compile.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum XhException {
    #[error("{detail}")]
    Config { detail: String },
    #[error("{detail}")]
    ServerStatus { status: u16, detail: String },
    #[error("{detail}")]
    Request { detail: String },
    #[error("{detail}")]
    Connect { detail: String },
    #[error("{detail}")]
    Closed { detail: String },
    #[error("{detail}")]
    WriteShutdown { detail: String },
    #[error("{detail}")]
    Timeout { detail: String },
    #[error("{detail}")]
    WrongThread { detail: String },
    #[error("{detail}")]
    Other { detail: String },
}

impl From<Error> for XhException {
    fn from(e: Error) -> Self {
        let detail = e.to_string();
        match e {
            Error::Config { .. } => XhException::Config { detail },
            Error::Status { status, .. } => XhException::ServerStatus { status, detail },
            Error::Request { .. } => XhException::Request { detail },
            Error::Connect { .. } => XhException::Connect { detail },
            Error::Closed => XhException::Closed { detail },
            Error::WriteShutdown => XhException::WriteShutdown { detail },
            Error::Timeout(_) => XhException::Timeout { detail },
            Error::WrongThread | Error::ThreadExiting | Error::Forked => {
                XhException::WrongThread { detail }
            }
            Error::Other(_) => XhException::Other { detail },
        }
    }
}

type R<T> = Result<T, XhException>;

/// The bindings pass the socket as an `i32` file descriptor (what `RawSocket` is on unix).
#[allow(clippy::unnecessary_cast)]
fn fd_i32(fd: crate::transport::RawSocket) -> i32 {
    fd as i32
}

fn timeout(ms: u32) -> Option<std::time::Duration> {
    crate::ffi::timeout(ms)
}

/// What a client has done so far.
#[derive(Debug, Clone, uniffi::Record)]
pub struct XhStats {
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub open_tunnels: u64,
    pub live_connections: u64,
}

/// What a latency probe measured, in microseconds.
#[derive(Debug, Clone, uniffi::Record)]
pub struct XhProbe {
    pub connect_us: u64,
    pub round_trip_us: u64,
}

impl From<crate::tunnel::Probe> for XhProbe {
    fn from(p: crate::tunnel::Probe) -> Self {
        let (connect_us, round_trip_us) = p.micros();
        XhProbe {
            connect_us,
            round_trip_us,
        }
    }
}

/// Implemented by the app: called with each UDP socket the client creates, before use
/// (Android: return `VpnService.protect(fd)`). Runs on a library thread; must be quick.
#[uniffi::export(with_foreign)]
pub trait SocketProtector: Send + Sync {
    fn protect(&self, fd: i32) -> bool;
}

/// Calls the app's protector. uniffi turns an exception thrown by a foreign callback that
/// returns no `Result` into a panic here; it must not unwind into the dial (or through
/// the runtime), so it becomes a refusal.
fn protect_contained(p: &dyn SocketProtector, fd: i32) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.protect(fd))).unwrap_or_else(|_| {
        log::warn!("the socket protector threw; socket refused");
        false
    })
}

/// A client for one server config: the library JSON, an Xray outbound, a whole Xray
/// config or a `vless://` link.
///
/// Memory: the library JSON's `memoryLimits` (`streamReceiveWindow`,
/// `connectionReceiveWindow`, `sendWindow`, `downloadQueue`, `uploadQueue`, in bytes) bounds
/// what the client buffers (an iOS network extension dies at about 50 MB); smaller windows
/// cap a tunnel's throughput at about one stream window per round trip (numbers: README,
/// "Memory limits").
#[derive(uniffi::Object)]
pub struct XhClient {
    inner: api::Client,
}

#[uniffi::export]
impl XhClient {
    #[uniffi::constructor]
    pub fn new(config: String) -> R<Arc<Self>> {
        Ok(Arc::new(XhClient {
            inner: api::Client::from_json(&config)?,
        }))
    }

    /// Like the constructor, with `memoryLimits` (a JSON object) given apart, for configs
    /// that cannot carry it (Xray outbounds and configs, `vless://` links).
    #[uniffi::constructor]
    pub fn with_memory_limits(config: String, memory_limits: String) -> R<Arc<Self>> {
        let mut cfg = crate::config::xray::import(&config)?;
        let v: serde_json::Value = serde_json::from_str(&memory_limits)
            .map_err(|e| Error::config("memoryLimits", format!("not valid JSON: {e}")))?;
        if cfg.limits != crate::config::MemoryLimits::default() {
            return Err(
                Error::config("memoryLimits", "is also set in the config; set it once").into(),
            );
        }
        cfg.limits = crate::config::MemoryLimits::from_json("memoryLimits", &v)?;
        Ok(Arc::new(XhClient {
            inner: api::Client::new(cfg)?,
        }))
    }

    /// Opens one tunnel in the configured mode.
    pub fn open(&self, timeout_ms: u32) -> R<Arc<XhTunnel>> {
        let t = self.inner.open(timeout(timeout_ms))?;
        Ok(Arc::new(XhTunnel { inner: t }))
    }

    pub fn stats(&self) -> XhStats {
        let s = self.inner.stats();
        XhStats {
            bytes_up: s.bytes_up,
            bytes_down: s.bytes_down,
            open_tunnels: s.open_tunnels,
            live_connections: s.live_connections,
        }
    }

    /// Latency of the config on a connection of its own (the pool is untouched).
    pub fn probe(&self, timeout_ms: u32) -> R<XhProbe> {
        Ok(self.inner.probe(timeout(timeout_ms))?.into())
    }

    /// The device changed networks: every connection moves to a new, protected socket.
    pub fn network_changed(&self) -> R<u32> {
        let n = self.inner.network_changed()?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Sets (or with `None`, removes) the socket protector. A protector that throws refuses
    /// the socket: the dial fails with `Connect`, the library carries on.
    pub fn set_protect(&self, protector: Option<Arc<dyn SocketProtector>>) {
        self.inner.set_protect(protector.map(|p| {
            Arc::new(move |fd: crate::transport::RawSocket| protect_contained(&*p, fd_i32(fd)))
                as crate::transport::Protect
        }));
    }

    /// Closes every tunnel and connection of this client. Idempotent, never blocks.
    pub fn shutdown(&self) {
        self.inner.close();
    }
}

/// One tunnel: a bidirectional byte stream.
#[derive(uniffi::Object)]
pub struct XhTunnel {
    inner: api::Tunnel,
}

#[uniffi::export]
impl XhTunnel {
    /// Up to `max` downloaded bytes; empty means the server ended the download.
    pub fn read(&self, max: u32, timeout_ms: u32) -> R<Vec<u8>> {
        let mut buf = vec![0u8; max.clamp(1, 1 << 20) as usize];
        let n = self.inner.read(&mut buf, timeout(timeout_ms))?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Queues `data` for upload; returns how many bytes were queued (all of them unless
    /// the timeout ran out part-way).
    pub fn write(&self, data: Vec<u8>, timeout_ms: u32) -> R<u64> {
        Ok(self.inner.write_some(&data, timeout(timeout_ms))? as u64)
    }

    /// Ends the upload cleanly after everything queued is sent.
    pub fn shutdown_write(&self, timeout_ms: u32) -> R<()> {
        Ok(self.inner.shutdown_write_within(timeout(timeout_ms))?)
    }

    /// Ends the tunnel: blocked reads and writes fail with `Closed`. Idempotent, never
    /// blocks, any thread.
    pub fn shutdown(&self) {
        self.inner.close();
    }

    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    pub fn local_addr(&self) -> String {
        self.inner.local_addr().to_string()
    }

    pub fn peer_addr(&self) -> String {
        self.inner.peer_addr().to_string()
    }
}

// Suspend functions (Kotlin) and async methods (Swift) for the calls that wait. The work
// runs on the library's runtime, never on the caller's thread or dispatcher; the futures
// need no runtime of the caller's (uniffi polls them from Kotlin/Swift). What a cancelled
// call did is stated in `api.rs`'s module doc and in bindings/README.md.

/// The calls that wait, as suspend functions (Kotlin) and async methods (Swift), with the
/// same timeouts as their blocking twins. Kotlin: cancelling the coroutine cancels the
/// call. Swift: uniffi's async calls ignore task cancellation; a timeout or `shutdown()`
/// ends them. `shutdown()` of the client ends its pending `openAsync`/`probeAsync` (and,
/// closing its tunnels, their reads and writes) with `Closed` at once.
#[uniffi::export]
impl XhClient {
    /// `open` without blocking a thread. Cancelled, it opens nothing (a tunnel it already
    /// opened is closed).
    pub async fn open_async(&self, timeout_ms: u32) -> R<Arc<XhTunnel>> {
        let t = self.inner.open_async(timeout(timeout_ms)).await?;
        Ok(Arc::new(XhTunnel { inner: t }))
    }

    /// `probe` without blocking a thread.
    pub async fn probe_async(&self, timeout_ms: u32) -> R<XhProbe> {
        Ok(self.inner.probe_async(timeout(timeout_ms)).await?.into())
    }
}

#[uniffi::export]
impl XhTunnel {
    /// `read` without blocking a thread: up to `max` bytes, empty at the end of the
    /// download. Cancelled (or timed out), it took nothing: the tunnel stays usable.
    pub async fn read_async(&self, max: u32, timeout_ms: u32) -> R<Vec<u8>> {
        let max = max.clamp(1, 1 << 20) as usize;
        Ok(self.inner.read_async(max, timeout(timeout_ms)).await?)
    }

    /// `write` without blocking a thread: queues all of `data` and returns its size, or
    /// what was queued when the timeout ran out part-way. Cancelled: a write no larger than
    /// the upload queue (`memoryLimits.uploadQueue`) queued nothing and the tunnel stays
    /// usable; a larger one cancelled after its first part closes the tunnel (reads and
    /// writes then fail naming the count), so the server never takes the part for the whole.
    pub async fn write_async(&self, data: Vec<u8>, timeout_ms: u32) -> R<u64> {
        Ok(self.inner.write_async(data, timeout(timeout_ms)).await? as u64)
    }

    /// `shutdownWrite` without blocking a thread. Idempotent; a cancelled one may have
    /// taken effect.
    pub async fn shutdown_write_async(&self, timeout_ms: u32) -> R<()> {
        Ok(self.inner.shutdown_write_async(timeout(timeout_ms)).await?)
    }
}

/// A log level for [`enable_platform_log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum XhLogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<XhLogLevel> for log::LevelFilter {
    fn from(l: XhLogLevel) -> Self {
        match l {
            XhLogLevel::Off => log::LevelFilter::Off,
            XhLogLevel::Error => log::LevelFilter::Error,
            XhLogLevel::Warn => log::LevelFilter::Warn,
            XhLogLevel::Info => log::LevelFilter::Info,
            XhLogLevel::Debug => log::LevelFilter::Debug,
            XhLogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// Sends the library's log records of `level` and more severe to the platform's log:
/// logcat with tag `xhttp` on Android, the unified log (subsystem `dev.xhttpmobile`) on iOS.
/// Call again to change the level. Returns `false` where the platform has no log of its own
/// (a desktop JVM). Records never contain VLESS ids, pins, links, session ids or padding.
#[uniffi::export]
pub fn enable_platform_log(level: XhLogLevel) -> R<bool> {
    Ok(crate::platform_log::install(level.into())?)
}
