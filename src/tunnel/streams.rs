//! The tasks behind a tunnel: the download reader, the streaming upload, packet-up POSTs
//! and response checks. Each owns its h3 stream half; cancellation drops it.

use super::Shared;
use super::queue::{QueueRx, QueueTx, TryRecvError};
use crate::error::{Error, RequestLabel};
use crate::transport::surface::{self, Gunzip};
use crate::transport::{H3Conn, RecvHalf, Refused, RequestStream, SendHalf};
use crate::xhttp::range::Range;
use crate::xhttp::request::{RequestKind, Shaper};
use crate::xhttp::upload;
use crate::xmux::{Pool, Slot};
use bytes::{Buf, Bytes, BytesMut};
use h3::error::{Code, StreamError};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Owns an upload's send half and resets it (H3_REQUEST_CANCELLED) when dropped, unless
/// `finish()` succeeded first. h3 does not reset on drop (quinn would finish the stream
/// cleanly), so without this a cancelled upload would reach the server as a complete body.
pub(crate) struct SendGuard {
    stream: Option<SendHalf>,
}

impl SendGuard {
    pub(crate) fn new(stream: SendHalf) -> Self {
        SendGuard {
            stream: Some(stream),
        }
    }

    async fn send(&mut self, data: Bytes) -> Result<(), StreamError> {
        match self.stream.as_mut() {
            Some(s) => s.send_data(data).await,
            None => Ok(()),
        }
    }

    /// Ends the body cleanly and disarms the reset.
    pub(crate) async fn finish(&mut self) -> Result<(), StreamError> {
        if let Some(s) = self.stream.as_mut() {
            s.finish().await?;
            self.stream = None;
        }
        Ok(())
    }
}

impl Drop for SendGuard {
    fn drop(&mut self) {
        if let Some(mut s) = self.stream.take() {
            s.stop_stream(Code::H3_REQUEST_CANCELLED);
        }
    }
}

/// Whether a send error is the server saying "I am done reading" (STOP_SENDING with
/// H3_NO_ERROR), which ends the upload without failing the tunnel.
fn is_peer_done(e: &StreamError) -> bool {
    matches!(e, StreamError::RemoteTerminate { code, .. } if *code == Code::H3_NO_ERROR)
}

fn request_error(label: &RequestLabel, e: impl std::fmt::Display) -> Error {
    Error::Request {
        request: label.clone(),
        detail: e.to_string(),
    }
}

/// Sends a request head on `conn`. Whether the connection itself broke is for `H3Conn` to
/// tell (its QUIC close reason); a failed request alone does not retire it.
/// `None`: the connection is going away (GOAWAY) and nothing was sent.
pub(crate) async fn open_request(
    conn: &H3Conn,
    req: http::Request<()>,
    label: &RequestLabel,
) -> Result<Option<RequestStream>, Error> {
    match conn.send_request(req).await {
        Ok(s) => Ok(Some(s)),
        Err(Refused::GoingAway) => Ok(None),
        Err(e) => Err(request_error(label, e)),
    }
}

/// How long a request head may wait for a free stream on its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamWait {
    /// Not at all: `None` at once if no stream is free.
    No,
    /// Up to this long, then `None`.
    UpTo(Duration),
    /// Until a stream is free (the caller's deadline bounds it).
    Always,
}

/// Sends a request head on the connection of `slot`, telling XMUX whether it had to wait for
/// a stream: a head that cannot go out at once is waiting for the server's stream credit
/// (MAX_STREAMS), and later tunnels are steered elsewhere where the XMUX rules allow.
/// `None`: no stream came within `wait`, or the connection is going away (GOAWAY); nothing
/// was sent, and XMUX no longer offers a connection going away.
pub(crate) async fn open_on_slot(
    pool: &Pool,
    slot: &Slot,
    req: http::Request<()>,
    label: &RequestLabel,
    wait: StreamWait,
) -> Result<Option<RequestStream>, Error> {
    let open = open_request(slot.conn(), req, label);
    tokio::pin!(open);
    if let Some(r) = futures_util::FutureExt::now_or_never(&mut open) {
        pool.set_saturated(slot.id(), false);
        return r;
    }
    pool.set_saturated(slot.id(), true);
    match wait {
        StreamWait::No => Ok(None),
        StreamWait::UpTo(d) => tokio::time::timeout(d, open).await.unwrap_or(Ok(None)),
        StreamWait::Always => open.await,
    }
}

/// Waits for the response head and fails the tunnel unless it is 200.
async fn expect_ok(recv: &mut RecvHalf, label: &RequestLabel, shared: &Shared) -> bool {
    ok_response(recv, label, shared).await.is_some()
}

/// The 200 response head, or `None` once the tunnel has been failed (or ended).
async fn ok_response(
    recv: &mut RecvHalf,
    label: &RequestLabel,
    shared: &Shared,
) -> Option<http::Response<()>> {
    let token = shared.token().clone();
    let resp = loop {
        // Biased, cancel first, here and in the receive loops: once the tunnel ended, its
        // streams are never polled again. A stream the server ends badly after our close
        // (FIN without HEADERS) is a *connection* error in h3, which would hit every other
        // tunnel sharing the connection.
        let resp = tokio::select! {
            biased;
            _ = token.cancelled() => return None,
            r = recv.recv_response() => r,
        };
        match resp {
            // An interim answer (103 Early Hints, 100): the final one follows on the same
            // stream (RFC 9114 §4.1). The server may send any number of them; each costs
            // it a frame, so this loop is paced by the server's sending, like the body.
            Ok(r) if is_interim(r.status()) => continue,
            other => break other,
        }
    };
    match resp {
        Ok(r) if r.status() == http::StatusCode::OK => Some(r),
        Ok(r) => {
            shared.fail(Error::Status {
                status: r.status().as_u16(),
                request: label.clone(),
            });
            None
        }
        Err(e) => {
            shared.fail(request_error(label, e));
            None
        }
    }
}

/// A 1xx response other than 101 (which would switch protocols, meaningless here): an
/// interim answer to skip.
fn is_interim(status: http::StatusCode) -> bool {
    status.is_informational() && status != http::StatusCode::SWITCHING_PROTOCOLS
}

/// The download: checks the response status, then forwards body chunks to the reader
/// until the body ends (EOF for the reader) or the tunnel ends. When another request of
/// the tunnel fails, what this stream already received is still handed to the reader.
///
/// `gzip_requested`: the request's `accept-encoding: gzip` was ours, so a gzip-encoded
/// body (a CDN compressing it) is decoded, as Go's HTTP/3 client does.
pub(crate) async fn download(
    mut recv: RecvHalf,
    label: RequestLabel,
    gzip_requested: bool,
    tx: QueueTx,
    shared: Arc<Shared>,
) {
    let Some(resp) = ok_response(&mut recv, &label, &shared).await else {
        return;
    };
    let mut gunzip = surface::gzip_response(gzip_requested, &resp).then(Gunzip::default);
    let token = shared.token().clone();
    let mut ended = false;
    loop {
        let chunk = tokio::select! {
            biased;
            _ = token.cancelled() => return drain_received(&mut recv, &mut gunzip, &tx, &shared),
            c = recv.recv_data() => c,
        };
        let chunk = match (chunk, gunzip.as_mut()) {
            (Ok(Some(mut b)), Some(g)) => match g.feed(&b.copy_to_bytes(b.remaining())) {
                Ok(plain) => Ok(Some(plain)),
                Err(e) => return shared.fail(request_error(&label, gzip_error(e))),
            },
            (Ok(Some(mut b)), None) => Ok(Some(b.copy_to_bytes(b.remaining()))),
            // The body ended: the decoder's last bytes go out first, then the end.
            (Ok(None), Some(_)) => match gunzip.take().map(Gunzip::finish) {
                Some(Ok(rest)) if !rest.is_empty() => {
                    ended = true;
                    Ok(Some(rest))
                }
                Some(Err(e)) => return shared.fail(request_error(&label, gzip_error(e))),
                _ => Ok(None),
            },
            (other, _) => other.map(|o| o.map(|mut b| b.copy_to_bytes(b.remaining()))),
        };
        match chunk {
            Ok(Some(mut bytes)) => {
                while !bytes.is_empty() {
                    let piece = bytes.split_to(bytes.len().min(super::WRITE_PIECE));
                    tokio::select! {
                        _ = token.cancelled() => {
                            // Keep the piece in hand and the rest of this chunk in order.
                            let _ = tx.push_now(piece);
                            if !bytes.is_empty() {
                                let _ = tx.push_now(bytes);
                            }
                            return drain_received(&mut recv, &mut gunzip, &tx, &shared);
                        }
                        r = tx.send(piece.clone()) => if r.is_err() { return },
                    }
                }
                if ended {
                    shared.download_ended();
                    return;
                }
            }
            Ok(None) => {
                shared.download_ended();
                return;
            }
            Err(e) => {
                shared.fail(request_error(&label, e));
                return;
            }
        }
    }
}

fn gzip_error(e: std::io::Error) -> String {
    format!("the gzip-encoded download is corrupt: {e}")
}

/// After a failure (not a close by this side), hands the reader what the stream has
/// already buffered, without waiting for more. Bounded by the stream's receive window.
fn drain_received(recv: &mut RecvHalf, gunzip: &mut Option<Gunzip>, tx: &QueueTx, shared: &Shared) {
    use futures_util::FutureExt;
    if shared.closed_by_us() {
        return;
    }
    while let Some(Ok(Some(mut b))) = recv.recv_data().now_or_never() {
        let bytes = b.copy_to_bytes(b.remaining());
        let plain = match gunzip.as_mut() {
            Some(g) => match g.feed(&bytes) {
                Ok(p) => p,
                Err(_) => return,
            },
            None => bytes,
        };
        if tx.push_now(plain).is_err() {
            return;
        }
    }
}

/// Reads and discards a response body after checking its status: the stream-up POST's
/// response carries the server's keep-alive padding; packet-up responses are empty.
pub(crate) async fn drain_response(mut recv: RecvHalf, label: RequestLabel, shared: Arc<Shared>) {
    if !expect_ok(&mut recv, &label, &shared).await {
        return;
    }
    let token = shared.token().clone();
    loop {
        let chunk = tokio::select! {
            biased;
            _ = token.cancelled() => return,
            c = recv.recv_data() => c,
        };
        match chunk {
            Ok(Some(_)) => {}
            // An upload's response ending says nothing about the download.
            Ok(None) => return,
            Err(e) => {
                shared.fail(request_error(&label, e));
                return;
            }
        }
    }
}

/// The streaming upload of stream-up and stream-one: queued writes become body data;
/// the queue closing (shutdown_write) finishes the body; cancellation resets it.
/// Takes the send half already guarded, so a task dropped before its first poll (the
/// runtime shutting down) still resets it.
pub(crate) async fn stream_upload(
    mut guard: SendGuard,
    label: RequestLabel,
    mut rx: QueueRx,
    shared: Arc<Shared>,
) {
    let token = shared.token().clone();
    loop {
        // Biased: a drop closes the queue right after cancelling, and a closed queue must
        // not win the race and finish the body (the server would see a complete upload).
        let next = tokio::select! {
            biased;
            _ = token.cancelled() => return,
            n = rx.recv() => n,
        };
        let r = match next {
            Some(data) => tokio::select! {
                _ = token.cancelled() => return,
                r = guard.send(data) => r,
            },
            None => {
                let r = tokio::select! {
                    biased;
                    _ = token.cancelled() => return,
                    r = guard.finish() => r,
                };
                if let Err(e) = r {
                    if !is_peer_done(&e) {
                        shared.fail(request_error(&label, e));
                    }
                }
                return;
            }
        };
        if let Err(e) = r {
            if !is_peer_done(&e) {
                shared.fail(request_error(&label, e));
            }
            return;
        }
    }
}

/// The slot XMUX picks now for a packet-up upload moving connections; `None` if the
/// tunnel ended meanwhile.
async fn next_slot(
    pool: &Arc<Pool>,
    token: &tokio_util::sync::CancellationToken,
) -> Option<Result<Arc<Slot>, Error>> {
    tokio::select! {
        _ = token.cancelled() => None,
        r = pool.acquire() => Some(r.map(Arc::new)),
    }
}

/// Packet-up parameters drawn once per tunnel.
pub(crate) struct PacketPlan {
    pub max_post: usize,
    pub interval: Range,
}

/// The packet-up upload: batches queued writes into POSTs of at most `max_post` bytes,
/// seq from 0, at least `interval` apart, each body fully sent before the next POST;
/// responses are checked concurrently.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn packet_upload(
    pool: Arc<Pool>,
    mut upload: Arc<Slot>,
    shaper: Arc<Shaper>,
    session: String,
    plan: PacketPlan,
    mut rx: QueueRx,
    shared: Arc<Shared>,
) {
    let token = shared.token().clone();
    let mut responses = tokio::task::JoinSet::new();
    let mut buf = BytesMut::new();
    let mut seq: u64 = 0;
    let mut last_start: Option<Instant> = None;
    let mut open = true;
    loop {
        // Finished response checks are reaped as we go: a JoinSet keeps them until joined,
        // which on a long tunnel would grow by one task per POST.
        while responses.try_join_next().is_some() {}
        // Like Xray's upload loop: take everything queued now, then send it in POSTs of at
        // most `max_post`; what is written meanwhile waits for the next round.
        if buf.is_empty() && open {
            let next = tokio::select! {
                _ = token.cancelled() => return,
                n = rx.recv() => n,
            };
            match next {
                Some(b) => buf.extend_from_slice(&b),
                None => open = false,
            }
            while open {
                match rx.try_recv() {
                    Ok(b) => buf.extend_from_slice(&b),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
        }
        if buf.is_empty() {
            break;
        }
        let chunk = buf.split_to(buf.len().min(plan.max_post)).freeze();
        let wait = upload::pause_before_post(
            plan.interval,
            last_start.map(|t| t.elapsed()),
            &mut rand::rng(),
        );
        if !wait.is_zero() {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        last_start = Some(Instant::now());
        let kind = RequestKind::PacketUp { seq };
        let label = shaper.label(kind, Some(&session));
        let in_body = shaper.data_in_body();
        // XMUX: move to another connection once this one's budget or time is used up;
        // the old slot is released when its in-flight POSTs are done.
        if pool.needs_switch(upload.id()) {
            match next_slot(&pool, &token).await {
                None => return,
                Some(Ok(s)) => upload = s,
                Some(Err(e)) => return shared.fail(e),
            }
        }
        // A connection out of request streams (the GETs of long tunnels can take them all)
        // is left for one XMUX offers, as long as it offers one with streams free; only
        // then does the POST wait for a stream.
        let stream = loop {
            // The chunk goes in headers or cookies, or the head announces its length.
            let req = match shaper.build(kind, Some(&session), Some(&chunk[..]), &mut rand::rng()) {
                Ok(r) => r,
                Err(e) => return shared.fail(e),
            };
            let wait = if upload.out_of_streams() {
                StreamWait::Always
            } else {
                StreamWait::No
            };
            let opened = tokio::select! {
                _ = token.cancelled() => return,
                r = open_on_slot(&pool, &upload, req, &label, wait) => r,
            };
            match opened {
                Ok(Some(s)) => break s,
                Ok(None) => match next_slot(&pool, &token).await {
                    None => return,
                    Some(Ok(s)) => upload = s,
                    Some(Err(e)) => return shared.fail(e),
                },
                Err(e) => return shared.fail(e),
            }
        };
        pool.charge(upload.id());
        let (send, recv) = stream.split();
        let mut guard = SendGuard::new(send);
        let sent = tokio::select! {
            _ = token.cancelled() => return,
            r = async {
                if in_body {
                    guard.send(chunk).await?;
                }
                guard.finish().await
            } => r,
        };
        // A reset of this one POST fails the tunnel but says nothing about the connection,
        // which other tunnels may share; a dead connection shows in its close reason.
        if let Err(e) = sent {
            return shared.fail(request_error(&label, e));
        }
        let in_flight = upload.clone();
        let sh = shared.clone();
        responses.spawn(async move {
            drain_response(recv, label, sh).await;
            drop(in_flight);
        });
        seq += 1;
    }
    // Upload shut down and flushed: wait for the last responses (a late non-200 still
    // fails the tunnel). Dropping the JoinSet on cancel aborts them.
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            r = responses.join_next() => if r.is_none() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interim_responses_are_skipped_and_final_ones_decide() {
        let s = |c| http::StatusCode::from_u16(c).unwrap();
        assert!(is_interim(s(100)));
        assert!(is_interim(s(103)));
        // 101 cannot be followed by a final response on an HTTP/3 stream: it fails.
        assert!(!is_interim(s(101)));
        for c in [200, 204, 304, 404, 500] {
            assert!(!is_interim(s(c)), "{c}");
        }
    }
}
