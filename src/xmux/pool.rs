//! The async side of XMUX: dials the connections the state machine asks for, hands out
//! running slots as RAII guards (released exactly once), closes retired connections as
//! soon as they are idle, and sweeps for connections whose reusable time ran out.

use super::settings::XmuxSettings;
use super::state::{Choice, ConnId, ConnStats, XmuxState};
use crate::error::{Error, Result};
use crate::transport::{H3Conn, QuicOptions, SocketHooks};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// Where and how to dial.
pub struct Connector {
    pub address: String,
    pub port: u16,
    pub sni: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub quic: QuicOptions,
    /// The client's socket hooks (protect), shared by all its pools.
    pub hooks: Arc<SocketHooks>,
}

impl Connector {
    async fn resolve(&self) -> Result<SocketAddr> {
        let addr = if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        };
        let fail = |detail: String| Error::Connect {
            addr: addr.clone(),
            detail,
        };
        // (host, port), not "host:port": an IPv6 literal has colons of its own.
        tokio::net::lookup_host((self.address.as_str(), self.port))
            .await
            .map_err(|e| fail(format!("resolve: {e}")))?
            .next()
            .ok_or_else(|| fail("resolve: no address".into()))
    }

    async fn connect(&self) -> Result<Arc<H3Conn>> {
        let remote = self.resolve().await?;
        H3Conn::connect(
            remote,
            &self.sni,
            self.tls.clone(),
            &self.quic,
            self.hooks.clone(),
        )
        .await
    }
}

type Cell = Arc<OnceCell<Result<Arc<H3Conn>>>>;

/// Pool-level numbers for apps and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open (dialled and not yet closed), active or draining.
    pub live_connections: usize,
    /// Retired connections still carrying tunnels.
    pub draining: usize,
    /// Running slots in total.
    pub running: u64,
    /// Requests charged since the pool started, on every connection it ever had.
    pub requests_total: u64,
    pub connections: Vec<ConnInfo>,
}

/// One tracked connection: its XMUX numbers and, once dialled, its local UDP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    pub stats: ConnStats,
    pub local: Option<SocketAddr>,
}

pub struct Pool {
    connector: Connector,
    state: Mutex<XmuxState>,
    conns: Mutex<HashMap<ConnId, Cell>>,
    closed: AtomicBool,
    sweeper: Mutex<Option<tokio::task::AbortHandle>>,
    requests_total: std::sync::atomic::AtomicU64,
    /// Network changes so far (see `dial`).
    rebinds: std::sync::atomic::AtomicU64,
}

/// A running slot on one connection. Dropping it (or `release`) gives the slot back exactly
/// once; if that leaves a retired connection idle, the connection is closed right away.
pub struct Slot {
    pool: Arc<Pool>,
    id: ConnId,
    conn: Option<Arc<H3Conn>>,
    released: AtomicBool,
    /// XMUX had only connections out of request streams to offer.
    out_of_streams: bool,
}

impl Slot {
    /// Picked though its connection is out of request streams (no other was allowed): a
    /// tunnel here waits for a stream.
    pub fn out_of_streams(&self) -> bool {
        self.out_of_streams
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    pub fn conn(&self) -> &Arc<H3Conn> {
        // Only slots with a dialled connection are handed out.
        self.conn.as_ref().expect("slot has a connection")
    }

    pub fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.pool.release(self.id);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
    }
}

const SWEEP_EVERY: Duration = Duration::from_millis(250);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    pub fn new(connector: Connector, settings: XmuxSettings) -> Arc<Pool> {
        Arc::new(Pool {
            connector,
            state: Mutex::new(XmuxState::new(settings, &mut rand::rng())),
            conns: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            sweeper: Mutex::new(None),
            requests_total: Default::default(),
            rebinds: Default::default(),
        })
    }

    /// Takes a running slot on the connection XMUX picks, dialling it if needed.
    pub async fn acquire(self: &Arc<Self>) -> Result<Slot> {
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            self.ensure_sweeper();
            self.retire_broken();
            let (choice, to_close, out_of_streams) = {
                let mut st = lock(&self.state);
                let (choice, to_close) = st.acquire(Instant::now(), &mut rand::rng());
                (choice, to_close, st.picked_saturated())
            };
            self.close_ids(&to_close);
            let id = choice.id();
            // From here the slot is owned by a guard, so a cancelled acquire still releases.
            let mut slot = Slot {
                pool: self.clone(),
                id,
                conn: None,
                released: AtomicBool::new(false),
                out_of_streams,
            };
            let cell = {
                let mut conns = lock(&self.conns);
                match choice {
                    Choice::Create(_) => Some(conns.entry(id).or_default().clone()),
                    Choice::Reuse(_) => conns.get(&id).cloned(),
                }
            };
            let Some(cell) = cell else {
                // Picked between another acquire's two locks; let it register the cell
                // instead of spinning.
                drop(slot);
                tokio::task::yield_now().await;
                continue;
            };
            let r = cell.get_or_init(|| self.dial()).await;
            if self.closed.load(Ordering::Acquire) {
                // Closed while dialling: this connection must not outlive the close, nor
                // its entry (the close's snapshot may have missed it).
                if let Ok(c) = r {
                    c.close();
                }
                lock(&self.state).mark_broken(id);
                self.close_ids_with(&[id], false);
                return Err(Error::Closed);
            }
            match r {
                Ok(c) if !c.is_broken() => {
                    slot.conn = Some(c.clone());
                    return Ok(slot);
                }
                Ok(c) => {
                    self.mark_broken(id);
                    if let Choice::Create(_) = choice {
                        // Dead on arrival: dialling again at once could loop for ever.
                        return Err(Error::Connect {
                            addr: c.remote_addr().to_string(),
                            detail: "the connection closed right after it was set up".into(),
                        });
                    }
                    // Broke since it was picked: never again; try another.
                    continue;
                }
                Err(e) => {
                    self.mark_broken(id);
                    return Err(e.clone());
                }
            }
        }
    }

    /// Dials a connection for the pool. One that finishes dialling after a network change
    /// began moves to a new socket too, or it would keep the old network's.
    async fn dial(&self) -> Result<Arc<H3Conn>> {
        let rebinds = self.rebinds.load(Ordering::Acquire);
        let c = self.connector.connect().await?;
        if self.rebinds.load(Ordering::Acquire) != rebinds {
            if let Err(e) = c.rebind() {
                c.close();
                return Err(Error::Connect {
                    addr: c.remote_addr().to_string(),
                    detail: format!("moving to the new network: {e}"),
                });
            }
        }
        Ok(c)
    }

    /// Tells XMUX whether a request on `id` had to wait for a stream (the server's
    /// MAX_STREAMS reached): new tunnels then go elsewhere where the rules allow.
    pub fn set_saturated(&self, id: ConnId, saturated: bool) {
        if saturated {
            log::debug!("xmux: connection {id} is out of request streams");
        }
        lock(&self.state).set_saturated(id, saturated);
    }

    /// Charges one HTTP request to the connection that carries it.
    pub fn charge(&self, id: ConnId) {
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        lock(&self.state).charge(id);
    }

    /// Whether a packet-up upload on `id` must move to another connection.
    pub fn needs_switch(&self, id: ConnId) -> bool {
        lock(&self.state).needs_switch(id, Instant::now())
    }

    /// Never pick `id` again (a request on it failed at transport level).
    pub fn mark_broken(&self, id: ConnId) {
        let idle = lock(&self.state).mark_broken(id);
        if let Some(id) = idle {
            self.close_ids(&[id]);
        }
    }

    fn release(&self, id: ConnId) {
        let idle = lock(&self.state).release(id, Instant::now());
        if let Some(id) = idle {
            self.close_ids(&[id]);
        }
    }

    fn retire_broken(&self) {
        let broken: Vec<ConnId> = lock(&self.conns)
            .iter()
            .filter(|(_, c)| matches!(c.get(), Some(Ok(conn)) if conn.is_broken()))
            .map(|(id, _)| *id)
            .collect();
        for id in broken {
            self.mark_broken(id);
        }
    }

    /// Closes and forgets these retired connections (CONNECTION_CLOSE after a short grace
    /// for the last resets; the UDP socket goes with the last reference).
    fn close_ids(&self, ids: &[ConnId]) {
        self.close_ids_with(ids, true);
    }

    fn close_ids_with(&self, ids: &[ConnId], graceful: bool) {
        if ids.is_empty() {
            return;
        }
        let cells: Vec<(ConnId, Cell)> = {
            let mut conns = lock(&self.conns);
            ids.iter()
                .filter_map(|id| conns.remove(id).map(|c| (*id, c)))
                .collect()
        };
        for (id, cell) in cells {
            if let Some(Ok(c)) = cell.get() {
                log::debug!("xmux: closing connection {id} to {}", c.remote_addr());
                if graceful {
                    c.close_gracefully();
                } else {
                    c.close();
                }
            }
        }
    }

    /// Retires connections past their reusable time even when no new tunnel asks.
    fn ensure_sweeper(self: &Arc<Self>) {
        let mut s = lock(&self.sweeper);
        // `close` sets `closed` before taking this lock: no sweeper starts after it.
        if s.is_some() || self.closed.load(Ordering::Acquire) {
            return;
        }
        let weak: Weak<Pool> = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                pool.retire_broken();
                let idle = lock(&pool.state).sweep(Instant::now());
                pool.close_ids(&idle);
            }
        });
        *s = Some(task.abort_handle());
    }

    pub fn stats(&self) -> PoolStats {
        let st = lock(&self.state);
        let conns = lock(&self.conns);
        let dialled = |id: &ConnId| match conns.get(id).and_then(|c| c.get()) {
            Some(Ok(c)) => Some(c.clone()),
            _ => None,
        };
        let connections: Vec<ConnInfo> = st
            .stats()
            .into_iter()
            .map(|s| ConnInfo {
                local: dialled(&s.id).map(|c| c.local_addr()),
                stats: s,
            })
            .collect();
        let live = conns
            .keys()
            .filter_map(dialled)
            .filter(|c| !c.is_closed())
            .count();
        PoolStats {
            live_connections: live,
            draining: connections.iter().filter(|c| c.stats.retired).count(),
            running: st.running(),
            requests_total: self.requests_total.load(Ordering::Relaxed),
            connections,
        }
    }

    /// Dials a connection of this pool's destination that the pool does not track or
    /// count (the latency probe's own). The caller closes it.
    pub async fn dial_unpooled(&self) -> Result<Arc<H3Conn>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        self.connector.connect().await
    }

    /// Moves every open connection to a new UDP socket (network change); tunnels on them
    /// carry on over the new path. A connection that cannot move is retired (closed once
    /// idle) so new tunnels dial afresh. Returns how many moved. Must run on the runtime.
    pub fn rebind_all(&self) -> usize {
        self.rebinds.fetch_add(1, Ordering::AcqRel);
        let open: Vec<(ConnId, Arc<H3Conn>)> = lock(&self.conns)
            .iter()
            .filter_map(|(id, c)| match c.get() {
                Some(Ok(conn)) if !conn.is_broken() => Some((*id, conn.clone())),
                _ => None,
            })
            .collect();
        let mut moved = 0;
        for (id, conn) in open {
            match conn.rebind() {
                Ok(local) => {
                    log::debug!("xmux: connection {id} moved to {local}");
                    moved += 1;
                }
                Err(e) => {
                    log::info!("xmux: connection {id} could not move to a new socket: {e}");
                    self.mark_broken(id);
                }
            }
        }
        moved
    }

    /// Closes every connection. Idempotent. Slots still held release into nothing.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(s) = lock(&self.sweeper).take() {
            s.abort();
        }
        let all: Vec<ConnId> = lock(&self.conns).keys().copied().collect();
        for id in &all {
            lock(&self.state).mark_broken(*id);
        }
        self.close_ids_with(&all, false);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.close();
    }
}
