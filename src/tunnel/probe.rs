//! The latency probe: how long a config takes to connect and to answer its mode's first
//! request, on a connection of its own so that XMUX pools and counters stay untouched.
//!
//! The request is the one a tunnel would send first: the download GET (to
//! `downloadSettings`' destination if set) for packet-up and stream-up, the POST for
//! stream-one. Its body is reset, never finished, once the response head arrives, so the
//! server never takes it for a complete upload.

use super::dialer::Dialer;
use super::streams::{SendGuard, open_request};
use crate::config::Mode;
use crate::error::{Error, Result};
use crate::xhttp::request::RequestKind;
use crate::xhttp::session;
use std::time::{Duration, Instant};

/// The longest a probe may take.
pub const PROBE_BOUND: Duration = Duration::from_secs(30);

/// What a probe measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Name resolution, the QUIC handshake and HTTP/3 setup.
    pub connect: Duration,
    /// From sending the request head to receiving the 200 response head.
    pub round_trip: Duration,
}

impl Probe {
    /// `(connect, round_trip)` in whole microseconds, as the C ABI and the bindings give them.
    pub fn micros(&self) -> (u64, u64) {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        (us(self.connect), us(self.round_trip))
    }
}

impl Dialer {
    /// Connects afresh and times one request; a non-200 answer is an error naming it.
    /// Bounded by [`PROBE_BOUND`] even when the caller sets no timeout: a server that
    /// answers keep-alives but never the request would otherwise hold it for ever.
    pub async fn probe(&self) -> Result<Probe> {
        tokio::time::timeout(PROBE_BOUND, self.probe_unbounded())
            .await
            .unwrap_or(Err(Error::Timeout(PROBE_BOUND.as_millis() as u64)))
    }

    async fn probe_unbounded(&self) -> Result<Probe> {
        let (side, kind) = match self.mode() {
            Mode::StreamOne => (self.main_side(), RequestKind::StreamOne),
            _ => (self.download_side(), RequestKind::StreamDown),
        };
        let started = Instant::now();
        let conn = side.pool.dial_unpooled().await?;
        let connect = started.elapsed();
        let id = (kind == RequestKind::StreamDown)
            .then(|| session::generate(&self.config().xhttp.session_id, &mut rand::rng()));
        let label = side.shaper.label(kind, id.as_deref());
        let req = side
            .shaper
            .build(kind, id.as_deref(), None, &mut rand::rng())?;
        let sent = Instant::now();
        let answer = async {
            let (send, mut recv) = open_request(&conn, req, &label)
                .await?
                .ok_or_else(|| Error::Request {
                    request: label.clone(),
                    detail: crate::transport::Refused::GoingAway.to_string(),
                })?
                .split();
            let mut send = SendGuard::new(send);
            if kind == RequestKind::StreamDown {
                // A GET has no body.
                send.finish().await.map_err(|e| Error::Request {
                    request: label.clone(),
                    detail: e.to_string(),
                })?;
            }
            let resp = recv.recv_response().await.map_err(|e| Error::Request {
                request: label.clone(),
                detail: e.to_string(),
            })?;
            // Dropping `send` here resets a stream-one body: never a complete upload.
            Ok::<_, Error>(resp.status())
        }
        .await;
        let round_trip = sent.elapsed();
        conn.close_gracefully();
        match answer? {
            http::StatusCode::OK => Ok(Probe {
                connect,
                round_trip,
            }),
            status => Err(Error::Status {
                status: status.as_u16(),
                request: label,
            }),
        }
    }
}
