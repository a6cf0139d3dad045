//! One app connection carried by one tunnel: the tunnel kinds a local inbound opens (raw
//! bytes, or VLESS to a destination) and the two-way TCP ↔ tunnel pipe with half-close.
//!
//! The pipe always ends: like Xray's client (its `policy` timeouts), once one direction has
//! ended the other may only idle for a short while, and a flow idle both ways is closed.
//! That matters most for packet-up, where the server never learns that the app's upload
//! ended, so it never ends the download of a flow the app has closed.

pub use super::policy::IdleTimeouts;
use super::vless::{self, Command, Target};
use crate::error::{Error, Result};
use crate::tunnel::{Dialer, TunnelCore};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Per direction per connection: small, since a phone may hold hundreds of connections.
const BUF: usize = 32 * 1024;

/// A tunnel as a local inbound uses it: raw bytes when the config has no VLESS id (the
/// server's inbound, Xray `tunnel`/`dokodemo-door`, picks the destination), else framed as
/// VLESS to the destination in its request header.
pub struct Flow(TunnelCore);

impl Flow {
    /// A VLESS tunnel to `target` when the config has a VLESS id; otherwise a raw tunnel, and
    /// `target` is not sent anywhere (the server decides where raw bytes go).
    pub async fn open(dialer: &Dialer, cmd: Command, target: &Target) -> Result<Flow> {
        Ok(Flow(match &dialer.config().vless {
            Some(_) => vless::open(dialer, cmd, target).await?,
            None => dialer.open().await?,
        }))
    }

    pub async fn open_raw(dialer: &Dialer) -> Result<Flow> {
        Ok(Flow(dialer.open().await?))
    }

    pub async fn read(&self, buf: &mut [u8]) -> Result<usize> {
        self.0.read(buf).await
    }

    pub async fn write(&self, data: &[u8]) -> Result<usize> {
        self.0.write(data).await
    }

    /// Queues all of `data`, or fails: a short count never passes silently.
    async fn write_all(&self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let n = self.write(data).await?;
            if n == 0 {
                return Err(Error::Closed);
            }
            data = &data[n..];
        }
        Ok(())
    }

    pub async fn shutdown_write(&self) -> Result<()> {
        self.0.shutdown_write().await
    }

    /// Idempotent, never blocks.
    pub fn close(&self) {
        self.0.close();
    }
}

/// The last time bytes moved either way, and how long the flow may stay quiet. Shared by
/// the two directions of one pipe (hence atomics: the pipe's future must be `Send`).
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
    /// Milliseconds; changed when a direction ends.
    allowed: AtomicU64,
    changed: Notify,
}

impl Activity {
    fn new(allowed: Duration) -> Activity {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
            allowed: AtomicU64::new(millis(allowed)),
            changed: Notify::new(),
        }
    }

    fn touch(&self) {
        let now = millis(self.start.elapsed());
        self.last.fetch_max(now, Ordering::Relaxed);
    }

    /// A new quiet period, counted from now (as Xray's `SetTimeout` does).
    fn allow(&self, d: Duration) {
        self.touch();
        self.allowed.store(millis(d), Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// Resolves once the flow has been quiet for the allowed period; returns that period.
    async fn expired(&self) -> Duration {
        loop {
            let changed = self.changed.notified();
            let allowed = self.allowed.load(Ordering::Relaxed);
            let due = self.last.load(Ordering::Relaxed).saturating_add(allowed);
            let now = millis(self.start.elapsed());
            if now >= due {
                return Duration::from_millis(allowed);
            }
            // A far-off deadline is checked again later rather than overflowing `Instant`.
            let wait = Duration::from_millis((due - now).min(86_400_000));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = changed => {}
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Opens a flow within an inbound's deadline (`policy.openTimeout`); a late open is
/// [`Error::Timeout`] and leaves nothing behind (an open dropped part-way closes its tunnel).
pub async fn open_within(
    limit: Duration,
    open: impl std::future::Future<Output = Result<Flow>>,
) -> Result<Flow> {
    match tokio::time::timeout(limit, open).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout(millis(limit))),
    }
}

/// Logs a failed open from an inbound, once, at warn: the app itself only sees a refusal
/// or a close, so this line is where a user learns the cause (status, timeout, reset,
/// handshake).
pub fn log_open_failure(who: &str, e: &Error) {
    match e {
        Error::Timeout(_) => log::warn!("{who}: opening a tunnel failed: {e} (policy.openTimeout)"),
        _ => log::warn!("{who}: opening a tunnel failed: {e}"),
    }
}

/// Logs how a relay ended: a tunnel failure at warn (the app saw only a close), the app's
/// own socket errors at debug.
pub fn log_relay_end(who: &str, r: &Result<(), RelayError>) {
    match r {
        Ok(()) => {}
        Err(e @ RelayError::Tunnel(_)) => log::warn!("{who}: {e}"),
        Err(e @ RelayError::App(_)) => log::debug!("{who}: {e}"),
    }
}

/// Why a relay ended before both directions did: which side failed, and how.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayError {
    /// The app's socket failed (reset, broken pipe): the app's own doing.
    App(String),
    /// The tunnel failed: a status from the server, a reset, a lost connection.
    Tunnel(String),
}

impl std::fmt::Display for RelayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayError::App(e) => write!(f, "app {e}"),
            RelayError::Tunnel(e) => write!(f, "tunnel {e}"),
        }
    }
}

/// Pipes the app's connection (its read half `rd`, write half `wr`: a TCP socket's, or a
/// TUN flow's) and `flow` both ways until both directions ended or the flow went quiet
/// past `idle`; `first` is app data that arrived with the handshake. App EOF →
/// `shutdown_write` on the tunnel; tunnel EOF → shutdown(write) on the app's side. The
/// first error ends both directions and is returned, naming the side that failed. The
/// caller closes the tunnel and the app's connection.
pub async fn relay(
    mut rd: impl AsyncRead + Unpin,
    mut wr: impl AsyncWrite + Unpin,
    flow: &Flow,
    first: &[u8],
    idle: IdleTimeouts,
) -> Result<(), RelayError> {
    let activity = Activity::new(idle.conn_idle);
    let up = async {
        if !first.is_empty() {
            flow.write_all(first)
                .await
                .map_err(|e| RelayError::Tunnel(format!("write: {e}")))?;
        }
        let mut buf = vec![0u8; BUF];
        loop {
            let n = rd
                .read(&mut buf)
                .await
                .map_err(|e| RelayError::App(format!("read: {e}")))?;
            if n == 0 {
                flow.shutdown_write()
                    .await
                    .map_err(|e| RelayError::Tunnel(format!("shutdown_write: {e}")))?;
                activity.allow(idle.downlink_only);
                return Ok(());
            }
            activity.touch();
            flow.write_all(&buf[..n])
                .await
                .map_err(|e| RelayError::Tunnel(format!("write: {e}")))?;
        }
    };
    let down = async {
        let mut buf = vec![0u8; BUF];
        loop {
            let n = flow
                .read(&mut buf)
                .await
                .map_err(|e| RelayError::Tunnel(format!("read: {e}")))?;
            if n == 0 {
                // The peer may already be gone; the download is complete either way.
                let _ = wr.shutdown().await;
                activity.allow(idle.uplink_only);
                return Ok(());
            }
            activity.touch();
            wr.write_all(&buf[..n])
                .await
                .map_err(|e| RelayError::App(format!("write: {e}")))?;
        }
    };
    tokio::select! {
        r = async { tokio::try_join!(up, down) } => r.map(|_| ()),
        quiet = activity.expired() => {
            log::debug!("relay: closing a flow quiet for {quiet:?}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn quiet_periods_follow_activity_and_the_latest_allowance() {
        let ms = Duration::from_millis;
        let a = Activity::new(ms(300));
        let t0 = Instant::now();
        let expired = a.expired();
        tokio::pin!(expired);
        // Bytes every 100 ms keep it alive well past the first allowance.
        tokio::select! {
            _ = &mut expired => panic!("expired while active"),
            _ = async {
                for _ in 0..6 {
                    tokio::time::sleep(ms(100)).await;
                    a.touch();
                }
            } => {}
        }
        // One direction ends: from now on 50 ms of quiet is enough.
        a.allow(ms(50));
        assert_eq!(expired.await, ms(50));
        let took = t0.elapsed();
        assert!(took >= ms(650), "{took:?}");
        // No activity at all: the connection idle time.
        let b = Activity::new(ms(200));
        let t1 = Instant::now();
        assert_eq!(b.expired().await, ms(200));
        assert!(t1.elapsed() >= ms(200));
    }
}
