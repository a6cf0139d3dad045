//! The blocking Rust API: what the C ABI and the bindings wrap. Every call runs its work on
//! the library's runtime and returns; `close` never blocks.

use crate::config::{Config, Mode};
use crate::error::Result;
use crate::runtime::Runtime;
use crate::tunnel::{Dialer, TunnelCore};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A client for one server config. Cheap to share across threads (`Clone`).
#[derive(Clone)]
pub struct Client {
    dialer: Arc<Dialer>,
    rt: Arc<Runtime>,
}

impl Client {
    pub fn new(cfg: Config) -> Result<Client> {
        let rt = Runtime::shared()?;
        let dialer = Arc::new(Dialer::new(cfg)?);
        Ok(Client { dialer, rt })
    }

    pub fn from_json(json: &str) -> Result<Client> {
        Client::new(Config::from_json_str(json)?)
    }

    /// The mode tunnels are opened in (`auto` already resolved).
    pub fn mode(&self) -> Mode {
        self.dialer.mode()
    }

    /// Opens one tunnel; `timeout` bounds connecting and sending the request heads.
    pub fn open(&self, timeout: Option<Duration>) -> Result<Tunnel> {
        let d = self.dialer.clone();
        let core = self.rt.block_on(timeout, async move { d.open().await })?;
        Ok(Tunnel {
            core: Arc::new(core),
            _dialer: self.dialer.clone(),
            rt: self.rt.clone(),
        })
    }

    /// Bytes up/down, open tunnels, live connections.
    pub fn stats(&self) -> crate::tunnel::ClientStats {
        self.dialer.stats()
    }

    /// XMUX introspection: live and draining connections, running slots, charged requests.
    pub fn pool_stats(&self) -> crate::xmux::PoolStats {
        self.dialer.pool_stats()
    }

    /// Closes every tunnel and connection of this client. Idempotent.
    pub fn close(&self) {
        self.dialer.close();
    }

    /// The async dialer, for callers already on a tokio runtime.
    pub fn dialer(&self) -> &Arc<Dialer> {
        &self.dialer
    }
}

/// One tunnel. All methods take `&self` and may be called from any thread at once.
/// A tunnel keeps its client's connections alive: dropping the last `Client` handle while
/// tunnels are open does not close them (an explicit [`Client::close`] does).
#[derive(Clone)]
pub struct Tunnel {
    core: Arc<TunnelCore>,
    _dialer: Arc<Dialer>,
    rt: Arc<Runtime>,
}

impl Tunnel {
    /// Reads downloaded bytes; `Ok(0)` is the end of the download.
    pub fn read(&self, buf: &mut [u8], timeout: Option<Duration>) -> Result<usize> {
        self.rt.block_on(timeout, self.core.read(buf))
    }

    /// Queues all of `data` for upload.
    pub fn write(&self, data: &[u8], timeout: Option<Duration>) -> Result<usize> {
        self.rt.block_on(timeout, self.core.write(data))
    }

    /// Queues as much of `data` as `timeout` allows and says how much: `Ok(n)` with
    /// `0 < n <= data.len()` (fewer only when the timeout ran out part-way), or
    /// [`Error::Timeout`](crate::Error::Timeout) when nothing was queued. Unlike
    /// [`write`](Self::write), a timeout never leaves an unknown part of `data` queued.
    pub fn write_some(&self, data: &[u8], timeout: Option<Duration>) -> Result<usize> {
        self.rt
            .block_on(None, self.core.write_within(data, timeout))
    }

    /// Ends the upload cleanly once everything queued is sent.
    pub fn shutdown_write(&self) -> Result<()> {
        self.shutdown_write_within(None)
    }

    /// [`shutdown_write`](Self::shutdown_write) that waits at most `timeout` for a write in
    /// progress on another thread to finish queueing.
    pub fn shutdown_write_within(&self, timeout: Option<Duration>) -> Result<()> {
        self.rt.block_on(timeout, self.core.shutdown_write())
    }

    /// Closes the tunnel; see [`TunnelCore::close`]. Idempotent, never blocks.
    pub fn close(&self) {
        self.core.close();
    }

    pub fn is_closed(&self) -> bool {
        self.core.is_closed()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.core.local_addr()
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.core.peer_addr()
    }
}
