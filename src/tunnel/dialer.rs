//! Opens tunnels for one config: picks the connection, builds each mode's requests through
//! the one [`Shaper`], and starts the tasks.

use super::streams::{self, PacketPlan};
use super::{Shared, TunnelCore};
use crate::config::{Config, Mode};
use crate::error::{Error, Result};
use crate::transport::{H3Conn, QuicOptions, tls};
use crate::xhttp::request::{RequestKind, Shaper};
use crate::xhttp::session;
use bytes::Bytes;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::mpsc;

/// Download chunks buffered between the download task and the reader. QUIC flow control
/// (bounded windows) does the rest of the back-pressure.
const DOWN_QUEUE: usize = 16;

pub struct Dialer {
    cfg: Config,
    mode: Mode,
    shaper: Arc<Shaper>,
    tls: Arc<rustls::ClientConfig>,
    quic: QuicOptions,
    current: tokio::sync::Mutex<Option<Arc<H3Conn>>>,
    conns: Mutex<Vec<Weak<H3Conn>>>,
    tunnels: Mutex<Vec<Weak<Shared>>>,
    closed: std::sync::atomic::AtomicBool,
}

impl Dialer {
    /// Validates what the config layer could not (TLS material) and prepares the shaper.
    pub fn new(cfg: Config) -> Result<Dialer> {
        let tls = Arc::new(tls::client_config(&cfg.tls)?);
        let shaper = Arc::new(Shaper::new(&cfg.xhttp, cfg.authority()));
        // Fail at construction, not at the first tunnel, if a request cannot be built.
        shaper.build(RequestKind::StreamOne, None, None, &mut rand::rng())?;
        Ok(Dialer {
            mode: cfg.xhttp.mode.resolve(),
            cfg,
            shaper,
            tls,
            quic: QuicOptions::default(),
            current: tokio::sync::Mutex::new(None),
            conns: Mutex::new(Vec::new()),
            tunnels: Mutex::new(Vec::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The connection for the next tunnel: the current one while it is healthy, else a new
    /// one. (XMUX's selection rules replace this.)
    async fn connection(&self) -> Result<Arc<H3Conn>> {
        let mut cur = self.current.lock().await;
        if let Some(c) = cur.as_ref().filter(|c| !c.is_broken()) {
            return Ok(c.clone());
        }
        let addr = format!("{}:{}", self.cfg.address, self.cfg.port);
        let remote = tokio::net::lookup_host(&addr)
            .await
            .map_err(|e| Error::Connect {
                addr: addr.clone(),
                detail: format!("resolve: {e}"),
            })?
            .next()
            .ok_or_else(|| Error::Connect {
                addr: addr.clone(),
                detail: "resolve: no address".into(),
            })?;
        let c = H3Conn::connect(remote, self.cfg.sni(), self.tls.clone(), &self.quic).await?;
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|w| w.strong_count() > 0);
        conns.push(Arc::downgrade(&c));
        *cur = Some(c.clone());
        Ok(c)
    }

    /// Opens one tunnel in the configured mode. Returns once the requests are sent (not
    /// when responses arrive: a bad status fails the tunnel's reads and writes later).
    pub async fn open(&self) -> Result<TunnelCore> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let conn = self.connection().await?;
        let shared = Shared::new();
        {
            let mut t = self.tunnels.lock().unwrap_or_else(|p| p.into_inner());
            t.retain(|w| w.strong_count() > 0);
            t.push(Arc::downgrade(&shared));
        }
        let r = self.start(&conn, &shared).await;
        match r {
            Ok((down_rx, up_tx)) => Ok(TunnelCore::new(
                shared,
                down_rx,
                up_tx,
                conn.local_addr(),
                conn.remote_addr(),
            )),
            Err(e) => {
                shared.fail(e.clone());
                Err(e)
            }
        }
    }

    async fn start(
        &self,
        conn: &Arc<H3Conn>,
        shared: &Arc<Shared>,
    ) -> Result<(mpsc::Receiver<Bytes>, mpsc::Sender<Bytes>)> {
        let s = &self.cfg.xhttp;
        let mut rng = rand::rng();
        let max_post = s.sc_max_each_post_bytes.draw(&mut rng).max(1) as usize;
        let (down_tx, down_rx) = mpsc::channel(DOWN_QUEUE);
        // Packet-up batches what is queued, so let about one POST's worth queue up.
        let up_cap = match self.mode {
            Mode::PacketUp => (max_post / super::WRITE_PIECE).clamp(2, 64),
            _ => 8,
        };
        let (up_tx, up_rx) = mpsc::channel(up_cap);

        if self.mode == Mode::StreamOne {
            let kind = RequestKind::StreamOne;
            let label = self.shaper.label(kind, None);
            let req = self.shaper.build(kind, None, None, &mut rng)?;
            let (send, recv) = streams::open_request(conn, req, &label).await?.split();
            spawn_holding(conn, streams::download(recv, label.clone(), down_tx, shared.clone()));
            spawn_holding(conn, streams::stream_upload(send, label, up_rx, shared.clone()));
            return Ok((down_rx, up_tx));
        }

        let id = session::generate(&s.session_id, &mut rng);
        let kind = RequestKind::StreamDown;
        let label = self.shaper.label(kind, Some(&id));
        let req = self.shaper.build(kind, Some(&id), None, &mut rng)?;
        let (mut send, recv) = streams::open_request(conn, req, &label).await?.split();
        // A GET has no body: end our side now.
        send.finish().await.map_err(|e| Error::Request {
            request: label.clone(),
            detail: e.to_string(),
        })?;
        spawn_holding(conn, streams::download(recv, label, down_tx, shared.clone()));

        if self.mode == Mode::StreamUp {
            let kind = RequestKind::StreamUp;
            let label = self.shaper.label(kind, Some(&id));
            let req = self.shaper.build(kind, Some(&id), None, &mut rng)?;
            let (send, recv) = streams::open_request(conn, req, &label).await?.split();
            spawn_holding(conn, streams::drain_response(recv, label.clone(), shared.clone()));
            spawn_holding(conn, streams::stream_upload(send, label, up_rx, shared.clone()));
        } else {
            let plan = PacketPlan {
                max_post,
                interval: s.sc_min_posts_interval_ms,
            };
            spawn_holding(conn, streams::packet_upload(
                conn.clone(),
                self.shaper.clone(),
                id,
                plan,
                up_rx,
                shared.clone(),
            ));
        }
        Ok((down_rx, up_tx))
    }

    /// Closes every tunnel of this dialer and every connection it opened. Idempotent.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let tunnels = std::mem::take(&mut *self.tunnels.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tunnels.iter().filter_map(Weak::upgrade) {
            t.closed.store(true, Ordering::Release);
            t.end();
        }
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|p| p.into_inner()));
        for c in conns.iter().filter_map(Weak::upgrade) {
            c.close();
        }
    }
}

impl Drop for Dialer {
    fn drop(&mut self) {
        self.close();
    }
}

/// Runs a tunnel task that keeps its connection alive until it ends.
fn spawn_holding(conn: &Arc<H3Conn>, f: impl Future<Output = ()> + Send + 'static) {
    let keep = conn.clone();
    tokio::spawn(async move {
        f.await;
        drop(keep);
    });
}
