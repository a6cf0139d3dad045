//! Our own small server-side adapter of h3's `quic` traits over quinn, instead of h3-quinn:
//!
//! * h3-quinn 0.0.10 panics in `stop_sending` after a cancelled `recv_data`; here reads are
//!   plain polls on the quinn stream (no future owns it), so stopping is always safe.
//! * h3 gives no way to learn that a client stopped reading a response (STOP_SENDING) while
//!   the server has nothing to write. Each accepted request stream registers quinn's
//!   `stopped()` future in [`StopWatches`], which the handler takes by stream id.
//! * An unread request body is stopped with H3_NO_ERROR (not quinn's default 0) when dropped,
//!   as an HTTP/3 server does once it has answered.

use crate::held::{ConnCounts, Hold};
use bytes::{Buf, Bytes};
use h3::error::Code;
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};
use quinn::VarInt;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type StoppedFuture = BoxFuture<Result<Option<VarInt>, quinn::StoppedError>>;

/// Why a response stream can no longer be delivered.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The client sent STOP_SENDING with this code.
    Stopped(u64),
    /// The connection is gone.
    Lost(String),
}

/// `stopped()` futures of the request streams of one connection, by stream id.
#[derive(Clone, Default)]
pub(crate) struct StopWatches(Arc<Mutex<HashMap<u64, StoppedFuture>>>);

impl StopWatches {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, StoppedFuture>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the watch of a request stream (an inert one if there is none).
    pub(crate) fn take(&self, id: StreamId) -> StopWatch {
        StopWatch(self.map().remove(&id.into_inner()))
    }
}

/// Resolves when the client stops reading a response or the connection is lost.
pub(crate) struct StopWatch(Option<StoppedFuture>);

impl StopWatch {
    /// Cancel-safe. Pending forever once the stream was closed by us or after it fired.
    pub(crate) async fn wait(&mut self) -> Stop {
        loop {
            let Some(fut) = self.0.as_mut() else {
                return std::future::pending().await;
            };
            let r = fut.await;
            self.0 = None;
            match r {
                Ok(Some(code)) => return Stop::Stopped(code.into_inner()),
                // Finished or reset by us: nothing to report.
                Ok(None) => continue,
                Err(e) => return Stop::Lost(e.to_string()),
            }
        }
    }
}

fn stream_id(id: quinn::StreamId) -> StreamId {
    // quinn stream ids are QUIC varints, the same range h3 accepts.
    StreamId::try_from(u64::from(id)).expect("QUIC stream id is a varint")
}

fn varint(code: u64) -> VarInt {
    VarInt::from_u64(code).unwrap_or(VarInt::MAX)
}

fn connection_error(e: quinn::ConnectionError) -> ConnectionErrorIncoming {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => ConnectionErrorIncoming::ApplicationClose {
            error_code: c.error_code.into_inner(),
        },
        quinn::ConnectionError::TimedOut => ConnectionErrorIncoming::Timeout,
        e => ConnectionErrorIncoming::Undefined(Arc::new(e)),
    }
}

fn read_error(e: quinn::ReadError) -> StreamErrorIncoming {
    match e {
        quinn::ReadError::Reset(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        quinn::ReadError::ConnectionLost(e) => StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error: connection_error(e),
        },
        e => StreamErrorIncoming::Unknown(Box::new(e)),
    }
}

fn write_error(e: quinn::WriteError) -> StreamErrorIncoming {
    match e {
        quinn::WriteError::Stopped(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        quinn::WriteError::ConnectionLost(e) => StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error: connection_error(e),
        },
        e => StreamErrorIncoming::Unknown(Box::new(e)),
    }
}

/// One QUIC connection as h3 sees it.
pub(crate) struct Conn {
    conn: quinn::Connection,
    watches: StopWatches,
    /// Counts the request streams this connection holds.
    counts: Arc<ConnCounts>,
    accept_bi:
        Option<BoxFuture<Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError>>>,
    accept_uni: Option<BoxFuture<Result<quinn::RecvStream, quinn::ConnectionError>>>,
    opener: Opener,
}

impl Conn {
    pub(crate) fn new(
        conn: quinn::Connection,
        watches: StopWatches,
        counts: Arc<ConnCounts>,
    ) -> Self {
        Conn {
            opener: Opener::new(conn.clone()),
            conn,
            watches,
            counts,
            accept_bi: None,
            accept_uni: None,
        }
    }
}

impl quic::Connection<Bytes> for Conn {
    type RecvStream = RecvHalf;
    type OpenStreams = Opener;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<RecvHalf, ConnectionErrorIncoming>> {
        let conn = &self.conn;
        let fut = self.accept_uni.get_or_insert_with(|| {
            let c = conn.clone();
            Box::pin(async move { c.accept_uni().await })
        });
        let r = ready!(fut.as_mut().poll(cx));
        self.accept_uni = None;
        Poll::Ready(r.map(RecvHalf::new).map_err(connection_error))
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Bidi, ConnectionErrorIncoming>> {
        let conn = &self.conn;
        let fut = self.accept_bi.get_or_insert_with(|| {
            let c = conn.clone();
            Box::pin(async move { c.accept_bi().await })
        });
        let r = ready!(fut.as_mut().poll(cx));
        self.accept_bi = None;
        let (send, recv) = r.map_err(connection_error)?;
        let id = u64::from(send.id());
        self.watches.map().insert(id, Box::pin(send.stopped()));
        let held = self.counts.stream();
        Poll::Ready(Ok(Bidi {
            send: SendHalf::new(send, Some(self.watches.clone())).held(held.clone()),
            recv: RecvHalf::new(recv).held(held),
        }))
    }

    fn opener(&self) -> Opener {
        Opener::new(self.conn.clone())
    }
}

impl quic::OpenStreams<Bytes> for Conn {
    type BidiStream = Bidi;
    type SendStream = SendHalf;

    fn poll_open_bidi(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bidi, StreamErrorIncoming>> {
        self.opener.poll_open_bidi(cx)
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<SendHalf, StreamErrorIncoming>> {
        self.opener.poll_open_send(cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        self.conn.close(varint(code.value()), reason);
    }
}

/// Opens streams (h3 opens the control and QPACK streams through this).
pub(crate) struct Opener {
    conn: quinn::Connection,
    open_bi:
        Option<BoxFuture<Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError>>>,
    open_uni: Option<BoxFuture<Result<quinn::SendStream, quinn::ConnectionError>>>,
}

impl Opener {
    fn new(conn: quinn::Connection) -> Self {
        Opener {
            conn,
            open_bi: None,
            open_uni: None,
        }
    }
}

fn conn_to_stream_error(e: quinn::ConnectionError) -> StreamErrorIncoming {
    StreamErrorIncoming::ConnectionErrorIncoming {
        connection_error: connection_error(e),
    }
}

impl quic::OpenStreams<Bytes> for Opener {
    type BidiStream = Bidi;
    type SendStream = SendHalf;

    fn poll_open_bidi(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bidi, StreamErrorIncoming>> {
        let conn = &self.conn;
        let fut = self.open_bi.get_or_insert_with(|| {
            let c = conn.clone();
            Box::pin(async move { c.open_bi().await })
        });
        let r = ready!(fut.as_mut().poll(cx));
        self.open_bi = None;
        let (send, recv) = r.map_err(conn_to_stream_error)?;
        Poll::Ready(Ok(Bidi {
            send: SendHalf::new(send, None),
            recv: RecvHalf::new(recv),
        }))
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<SendHalf, StreamErrorIncoming>> {
        let conn = &self.conn;
        let fut = self.open_uni.get_or_insert_with(|| {
            let c = conn.clone();
            Box::pin(async move { c.open_uni().await })
        });
        let r = ready!(fut.as_mut().poll(cx));
        self.open_uni = None;
        Poll::Ready(
            r.map(|s| SendHalf::new(s, None))
                .map_err(conn_to_stream_error),
        )
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        self.conn.close(varint(code.value()), reason);
    }
}

/// A request stream: both halves.
pub(crate) struct Bidi {
    send: SendHalf,
    recv: RecvHalf,
}

impl quic::BidiStream<Bytes> for Bidi {
    type SendStream = SendHalf;
    type RecvStream = RecvHalf;

    fn split(self) -> (SendHalf, RecvHalf) {
        (self.send, self.recv)
    }
}

impl quic::SendStream<Bytes> for Bidi {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<Bytes>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.send.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.send.reset(reset_code)
    }

    fn send_id(&self) -> StreamId {
        self.send.send_id()
    }
}

impl quic::RecvStream for Bidi {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        self.recv.poll_data(cx)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.recv.stop_sending(error_code)
    }

    fn recv_id(&self) -> StreamId {
        self.recv.recv_id()
    }
}

/// A send half; h3 hands us one buffer at a time.
pub(crate) struct SendHalf {
    stream: quinn::SendStream,
    pending: Option<WriteBuf<Bytes>>,
    /// Nothing (not even response HEADERS) was ever written, and no finish or reset.
    untouched: bool,
    /// Where this stream's `stopped()` watch was registered, so that dropping removes it.
    watches: Option<StopWatches>,
    /// A request stream stays counted until both halves are gone.
    _held: Option<Arc<Hold>>,
}

impl SendHalf {
    fn new(stream: quinn::SendStream, watches: Option<StopWatches>) -> Self {
        SendHalf {
            stream,
            pending: None,
            untouched: true,
            watches,
            _held: None,
        }
    }

    fn held(mut self, h: Arc<Hold>) -> Self {
        self._held = Some(h);
        self
    }
}

impl Drop for SendHalf {
    fn drop(&mut self) {
        // A request abandoned before any response: reset it, as Go's servers (Xray) do.
        // quinn would finish it instead, and a response stream that ends without HEADERS
        // is a connection error for the client's h3 (H3_FRAME_UNEXPECTED), which would
        // take every other tunnel on that connection down with it.
        if self.untouched {
            let _ = self.stream.reset(varint(H3_REQUEST_CANCELLED));
        }
        if let Some(w) = &self.watches {
            w.map().remove(&u64::from(self.stream.id()));
        }
    }
}

impl quic::SendStream<Bytes> for SendHalf {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        while let Some(buf) = self.pending.as_mut() {
            if !buf.has_remaining() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, buf.chunk()))
                .map_err(write_error)?;
            buf.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    fn send_data<T: Into<WriteBuf<Bytes>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        if self.pending.is_some() {
            return Err(StreamErrorIncoming::Unknown(
                "send_data called while a previous write is pending".into(),
            ));
        }
        self.pending = Some(data.into());
        self.untouched = false;
        Ok(())
    }

    fn poll_finish(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.untouched = false;
        Poll::Ready(
            self.stream
                .finish()
                .map_err(|e| StreamErrorIncoming::Unknown(Box::new(e))),
        )
    }

    fn reset(&mut self, reset_code: u64) {
        self.untouched = false;
        let _ = self.stream.reset(varint(reset_code));
    }

    fn send_id(&self) -> StreamId {
        stream_id(self.stream.id())
    }
}

/// HTTP/3's "request cancelled" (RFC 9114 §8.1).
const H3_REQUEST_CANCELLED: u64 = 0x10c;

const READ_CHUNK: usize = 32 * 1024;

/// A receive half, read by polling (never by a stored future).
pub(crate) struct RecvHalf {
    stream: quinn::RecvStream,
    buf: Vec<u8>,
    /// FIN seen, reset seen or stopped: no STOP_SENDING needed on drop.
    done: bool,
    /// A request stream stays counted until both halves are gone.
    _held: Option<Arc<Hold>>,
}

impl RecvHalf {
    fn new(stream: quinn::RecvStream) -> Self {
        RecvHalf {
            stream,
            buf: Vec::new(),
            done: false,
            _held: None,
        }
    }

    fn held(mut self, h: Arc<Hold>) -> Self {
        self._held = Some(h);
        self
    }
}

impl Drop for RecvHalf {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.stream.stop(varint(Code::H3_NO_ERROR.value()));
        }
    }
}

impl quic::RecvStream for RecvHalf {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        if self.done {
            return Poll::Ready(Ok(None));
        }
        if self.buf.len() != READ_CHUNK {
            self.buf.resize(READ_CHUNK, 0);
        }
        let mut rb = tokio::io::ReadBuf::new(&mut self.buf);
        match ready!(self.stream.poll_read_buf(cx, &mut rb)) {
            Ok(()) if rb.filled().is_empty() => {
                self.done = true;
                Poll::Ready(Ok(None))
            }
            Ok(()) => Poll::Ready(Ok(Some(Bytes::copy_from_slice(rb.filled())))),
            Err(e) => {
                self.done = true;
                Poll::Ready(Err(read_error(e)))
            }
        }
    }

    fn stop_sending(&mut self, error_code: u64) {
        if !self.done {
            self.done = true;
            let _ = self.stream.stop(varint(error_code));
        }
    }

    fn recv_id(&self) -> StreamId {
        stream_id(self.stream.id())
    }
}

/// A request-body read error as seen by the server.
pub(crate) fn read_outcome(e: &h3::error::StreamError) -> super::Outcome {
    match e {
        h3::error::StreamError::RemoteTerminate { code, .. } => super::Outcome::Reset(code.value()),
        e => super::Outcome::Error(e.to_string()),
    }
}

/// A response write error: the peer's terminate is a STOP_SENDING here.
pub(crate) fn write_outcome(e: &h3::error::StreamError) -> super::Outcome {
    match e {
        h3::error::StreamError::RemoteTerminate { code, .. } => {
            super::Outcome::Stopped(code.value())
        }
        e => super::Outcome::Error(e.to_string()),
    }
}

/// The send side of a response stream: what a target writes the download into.
pub(crate) type ResponseSend = h3::server::RequestStream<SendHalf, Bytes>;
