//! One app connection carried by one tunnel: the tunnel kinds a local inbound opens (raw
//! bytes, or VLESS to a destination) and the two-way TCP ↔ tunnel pipe with half-close.

use super::vless::{Command, Target, VlessTunnel};
use crate::error::Result;
use crate::tunnel::{Dialer, TunnelCore};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Per direction per connection: small, since a phone may hold hundreds of connections.
const BUF: usize = 32 * 1024;

/// How long the download waits for the app's first bytes before reading, so that the VLESS
/// request header travels with the first payload (Xray's client waits up to 500 ms too);
/// protocols where the server speaks first pay this once.
const HEADER_HOLD: Duration = Duration::from_millis(200);

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

/// Pipes `tcp` and `flow` both ways until both directions ended; `first` is app data that
/// arrived with the handshake. App EOF → `shutdown_write` on the tunnel; tunnel EOF →
/// shutdown(write) on the socket. The first error ends both directions and is returned,
/// naming the side that failed. The caller closes the tunnel; dropping `tcp` closes it.
pub async fn relay(mut tcp: TcpStream, flow: &Flow, first: &[u8]) -> Result<(), String> {
    let (mut rd, mut wr) = tcp.split();
    let (wrote, first_write) = oneshot::channel::<()>();
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
                return flow
                    .shutdown_write()
                    .await
                    .map_err(|e| format!("tunnel shutdown_write: {e}"));
            }
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
                return Ok(());
            }
            wr.write_all(&buf[..n])
                .await
                .map_err(|e| format!("app write: {e}"))?;
        }
    };
    tokio::try_join!(up, down).map(|_| ())
}
