//! One HTTP exchange in progress: the request stream and what every response to it carries
//! (CORS and padding headers), with the recording of its answer. Shared by the admission
//! code (`handler`) and the long-lived streams (`streams`).

use super::Shared;
use super::events::{Event, RequestKind, RequestShape};
use super::quic::{self, StopWatch};
use bytes::Bytes;
use h3::server::RequestStream;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;

pub(crate) type FullStream = RequestStream<quic::Bidi, Bytes>;

/// One request in progress, with what every response to it carries.
pub(crate) struct Exchange {
    pub(crate) shared: Arc<Shared>,
    pub(crate) stream: FullStream,
    pub(crate) stop: StopWatch,
    pub(crate) peer: SocketAddr,
    pub(crate) method: String,
    pub(crate) path_and_query: String,
    pub(crate) kind: Option<RequestKind>,
    /// CORS and response padding (§3 step 3); empty for 404s before that step.
    pub(crate) headers: HeaderMap,
    pub(crate) shape: RequestShape,
    /// The request's `accept-encoding` names gzip (for `ServerOptions::gzip_download`).
    pub(crate) accepts_gzip: bool,
}

impl Exchange {
    /// Counts and logs the answer (`status` 0: none will be sent).
    pub(crate) fn record_request(&self, status: u16) {
        let rec = &self.shared.rec;
        rec.request(self.kind);
        if status != 0 {
            rec.response(status);
        }
        rec.push(Event::Request {
            kind: self.kind,
            method: self.method.clone(),
            path_and_query: self.path_and_query.clone(),
            status,
            peer: self.peer,
            shape: self.shape.clone(),
        });
    }

    /// Sends the response head; the body stays open.
    pub(crate) async fn send_head(
        &mut self,
        status: u16,
        extra: &[(&'static str, &'static str)],
    ) -> Result<(), h3::error::StreamError> {
        self.record_request(status);
        let mut resp = Response::new(());
        *resp.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut headers = self.headers.clone();
        for (name, value) in extra {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        *resp.headers_mut() = headers;
        self.stream.send_response(resp).await
    }

    /// Answers with an empty body. An unread request body is then stopped (H3_NO_ERROR).
    pub(crate) async fn reply(self, status: u16) {
        self.reply_with(status, &[]).await
    }

    pub(crate) async fn reply_with(mut self, status: u16, extra: &[(&'static str, &'static str)]) {
        if self.send_head(status, extra).await.is_ok() {
            let _ = self.stream.finish().await;
        }
    }
}
