//! One app connection carried by one tunnel: the tunnel kinds a local inbound opens (raw
//! bytes, or VLESS to a destination) and the two-way TCP ↔ tunnel pipe with half-close.
//!
//! The pipe always ends: like Xray's client (its `policy` timeouts), once one direction has
//! ended the other may only idle for a short while, and a flow idle both ways is closed.
//! That matters most for packet-up, where the server never learns that the app's upload
//! ended, so it never ends the download of a flow the app has closed.

use super::vless::{Command, Target, VlessTunnel};
use crate::error::Result;
use crate::tunnel::{Dialer, TunnelCore};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

/// Per direction per connection: small, since a phone may hold hundreds of connections.
const BUF: usize = 32 * 1024;

/// How long the download waits for the app's first bytes before reading, so that the VLESS
/// request header travels with the first payload (Xray's client waits up to 500 ms too);
/// protocols where the server speaks first pay this once.
const HEADER_HOLD: Duration = Duration::from_millis(200);

/// When the pipe gives up on a quiet flow. Names and defaults are Xray's session policy
/// (`policy.levels.0`), which its client applies to every outbound connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleTimeouts {
    /// Neither direction moved a byte for this long: the flow is closed.
    pub conn_idle: Duration,
    /// After the download ended, the app's upload may go quiet this long.
    pub uplink_only: Duration,
    /// After the app's upload ended (its FIN), the download may go quiet this long.
    pub downlink_only: Duration,
}

impl IdleTimeouts {
    /// Xray's defaults: connIdle 300 s, uplinkOnly 1 s, downlinkOnly 1 s.
    pub const XRAY: IdleTimeouts = IdleTimeouts {
        conn_idle: Duration::from_secs(300),
        uplink_only: Duration::from_secs(1),
        downlink_only: Duration::from_secs(1),
    };
}

impl Default for IdleTimeouts {
    fn default() -> Self {
        IdleTimeouts::XRAY
    }
}

/// A tunnel as a local inbound uses it.
pub enum Flow {
    /// Raw bytes: the server's inbound (Xray `tunnel`/`dokodemo-door`) picks the destination.
    Raw(TunnelCore),
    /// VLESS to the destination in its request header.
    Vless(VlessTunnel),
}

impl Flow {
    /// A VLESS tunnel to `target` when the config has a VLESS id; otherwise a raw tunnel, and
    /// `target` is not sent anywhere (the server decides where raw bytes go).
    pub async fn open(dialer: &Dialer, cmd: Command, target: &Target) -> Result<Flow> {
        let core = dialer.open().await?;
        Ok(match &dialer.config().vless {
            Some(v) => Flow::Vless(VlessTunnel::new(core, &v.id, cmd, target)),
            None => Flow::Raw(core),
        })
    }

    pub async fn open_raw(dialer: &Dialer) -> Result<Flow> {
        Ok(Flow::Raw(dialer.open().await?))
    }

    pub async fn read(&self, buf: &mut [u8]) -> Result<usize> {
        match self {
            Flow::Raw(t) => t.read(buf).await,
            Flow::Vless(t) => t.read(buf).await,
        }
    }

    pub async fn write(&self, data: &[u8]) -> Result<usize> {
        match self {
            Flow::Raw(t) => t.write(data).await,
            Flow::Vless(t) => t.write(data).await,
        }
    }

    /// Queues all of `data`, or fails: a short count never passes silently.
    async fn write_all(&self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let n = self.write(data).await?;
            if n == 0 {
                return Err(crate::error::Error::Closed);
            }
            data = &data[n..];
        }
        Ok(())
    }

    pub async fn shutdown_write(&self) -> Result<()> {
        match self {
            Flow::Raw(t) => t.shutdown_write().await,
            Flow::Vless(t) => t.shutdown_write().await,
        }
    }

    /// Idempotent, never blocks.
    pub fn close(&self) {
        match self {
            Flow::Raw(t) => t.close(),
            Flow::Vless(t) => t.close(),
        }
    }

    fn is_vless(&self) -> bool {
        matches!(self, Flow::Vless(_))
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

/// Pipes `tcp` and `flow` both ways until both directions ended or the flow went quiet
/// past `idle`; `first` is app data that arrived with the handshake. App EOF →
/// `shutdown_write` on the tunnel; tunnel EOF → shutdown(write) on the socket. The first
/// error ends both directions and is returned, naming the side that failed. The caller
/// closes the tunnel; dropping `tcp` closes it.
pub async fn relay(
    mut tcp: TcpStream,
    flow: &Flow,
    first: &[u8],
    idle: IdleTimeouts,
) -> Result<(), String> {
    let (mut rd, mut wr) = tcp.split();
    let (wrote, first_write) = oneshot::channel::<()>();
    let activity = Activity::new(idle.conn_idle);
    let up = async {
        let mut wrote = Some(wrote);
        if !first.is_empty() {
            flow.write_all(first)
                .await
                .map_err(|e| format!("tunnel write: {e}"))?;
            wrote.take();
        }
        let mut buf = vec![0u8; BUF];
        loop {
            let n = rd
                .read(&mut buf)
                .await
                .map_err(|e| format!("app read: {e}"))?;
            if n == 0 {
                flow.shutdown_write()
                    .await
                    .map_err(|e| format!("tunnel shutdown_write: {e}"))?;
                activity.allow(idle.downlink_only);
                return Ok(());
            }
            activity.touch();
            flow.write_all(&buf[..n])
                .await
                .map_err(|e| format!("tunnel write: {e}"))?;
            // Dropping the sender wakes the download.
            wrote.take();
        }
    };
    let down = async {
        if flow.is_vless() {
            let _ = tokio::time::timeout(HEADER_HOLD, first_write).await;
        }
        let mut buf = vec![0u8; BUF];
        loop {
            let n = flow
                .read(&mut buf)
                .await
                .map_err(|e| format!("tunnel read: {e}"))?;
            if n == 0 {
                // The peer may already be gone; the download is complete either way.
                let _ = wr.shutdown().await;
                activity.allow(idle.uplink_only);
                return Ok(());
            }
            activity.touch();
            wr.write_all(&buf[..n])
                .await
                .map_err(|e| format!("app write: {e}"))?;
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
