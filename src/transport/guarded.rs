//! h3-quinn's connection and streams with a `FrameGuard` on every stream h3 reads from,
//! so the guard's limits hold before h3 buffers anything (see `frame_guard.rs`). Sending
//! passes through untouched.

use super::frame_guard::FrameGuard;
use bytes::{Buf, Bytes};
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};
use std::task::{Context, Poll, ready};

/// H3_FRAME_ERROR (RFC 9114 §8.1), sent with STOP_SENDING when a stream breaks the rules;
/// h3 closes the connection itself where the stream was critical.
const H3_FRAME_ERROR: u64 = 0x106;
/// H3_EXCESSIVE_LOAD: for a frame over its size limit.
const H3_EXCESSIVE_LOAD: u64 = 0x107;

/// A guarded stream: `S` is h3-quinn's receive stream or bidirectional stream.
pub struct Guarded<S> {
    inner: S,
    guard: FrameGuard,
}

impl<S> Guarded<S> {
    /// A request stream (either side's bidirectional stream).
    fn request(inner: S) -> Self {
        Guarded {
            inner,
            guard: FrameGuard::request(),
        }
    }
}

impl<S: quic::RecvStream<Buf = Bytes>> quic::RecvStream for Guarded<S> {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        loop {
            match self.guard.next() {
                Some(Ok(bytes)) => return Poll::Ready(Ok(Some(bytes))),
                Some(Err(v)) => {
                    let code = match v {
                        super::frame_guard::Violation::Oversized { .. } => H3_EXCESSIVE_LOAD,
                        super::frame_guard::Violation::Truncated { .. } => H3_FRAME_ERROR,
                    };
                    self.inner.stop_sending(code);
                    return Poll::Ready(Err(StreamErrorIncoming::Unknown(Box::new(v))));
                }
                None => {}
            }
            match ready!(self.inner.poll_data(cx)) {
                Ok(Some(chunk)) => self.guard.push(chunk),
                Ok(None) => {
                    return Poll::Ready(match self.guard.finish() {
                        Ok(()) => Ok(None),
                        Err(v) => Err(StreamErrorIncoming::Unknown(Box::new(v))),
                    });
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.inner.stop_sending(error_code)
    }

    fn recv_id(&self) -> StreamId {
        self.inner.recv_id()
    }
}

impl<B: Buf, S: quic::SendStream<B>> quic::SendStream<B> for Guarded<S> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.inner.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.inner.reset(reset_code)
    }

    fn send_id(&self) -> StreamId {
        self.inner.send_id()
    }
}

impl<B, S> quic::BidiStream<B> for Guarded<S>
where
    B: Buf,
    S: quic::BidiStream<B> + quic::RecvStream<Buf = Bytes>,
    S::RecvStream: quic::RecvStream<Buf = Bytes>,
{
    type SendStream = S::SendStream;
    type RecvStream = Guarded<S::RecvStream>;

    fn split(self) -> (Self::SendStream, Self::RecvStream) {
        let (send, recv) = self.inner.split();
        (
            send,
            Guarded {
                inner: recv,
                guard: self.guard,
            },
        )
    }
}

/// h3-quinn's connection (or its stream opener) handing out guarded streams.
pub struct Connection<C>(C);

impl Connection<h3_quinn::Connection> {
    pub fn new(quic: quinn::Connection) -> Self {
        Connection(h3_quinn::Connection::new(quic))
    }
}

impl<C: Clone> Clone for Connection<C> {
    fn clone(&self) -> Self {
        Connection(self.0.clone())
    }
}

impl<B, C> quic::OpenStreams<B> for Connection<C>
where
    B: Buf,
    C: quic::OpenStreams<B>,
    C::BidiStream: quic::RecvStream<Buf = Bytes>,
{
    type BidiStream = Guarded<C::BidiStream>;
    type SendStream = C::SendStream;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        let inner = ready!(self.0.poll_open_bidi(cx))?;
        Poll::Ready(Ok(Guarded::request(inner)))
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        self.0.poll_open_send(cx)
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        self.0.close(code, reason)
    }
}

impl<B, C> quic::Connection<B> for Connection<C>
where
    B: Buf,
    C: quic::Connection<B>,
    C::BidiStream: quic::RecvStream<Buf = Bytes>,
    C::RecvStream: quic::RecvStream<Buf = Bytes>,
    C::OpenStreams: quic::OpenStreams<B, SendStream = C::SendStream, BidiStream = C::BidiStream>,
{
    type RecvStream = Guarded<C::RecvStream>;
    type OpenStreams = Connection<C::OpenStreams>;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::RecvStream, ConnectionErrorIncoming>> {
        let inner = ready!(self.0.poll_accept_recv(cx))?;
        Poll::Ready(Ok(Guarded {
            inner,
            guard: FrameGuard::unidirectional(),
        }))
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, ConnectionErrorIncoming>> {
        // HTTP/3 servers may not open bidirectional streams; h3 refuses them. Guarded all
        // the same, so nothing reaches h3 unchecked.
        let inner = ready!(self.0.poll_accept_bidi(cx))?;
        Poll::Ready(Ok(Guarded::request(inner)))
    }

    fn opener(&self) -> Self::OpenStreams {
        Connection(self.0.opener())
    }
}
