//! The response body a download (stream-down GET, stream-one) is written into: as it is, or
//! gzip-encoded the way a CDN in front of the server may encode it when the request accepts
//! gzip (`ServerOptions::gzip_download`). Go's HTTP/3 client, and so Xray's, asks for gzip on
//! its own and decodes it transparently; our client must too.
//!
//! Every write is compressed and sync-flushed at once, so a streaming download is never held
//! back waiting for more input; the gzip trailer goes out with `finish`.

use super::events::Recorder;
use super::quic::ResponseSend;
use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use h3::error::{Code, StreamError};
use std::io::Write;
use std::sync::Arc;

pub(crate) struct Download {
    send: ResponseSend,
    gzip: Option<GzEncoder<Vec<u8>>>,
    rec: Arc<Recorder>,
}

impl Download {
    pub(crate) fn new(send: ResponseSend, gzip: bool, rec: Arc<Recorder>) -> Self {
        Download {
            send,
            gzip: gzip.then(|| GzEncoder::new(Vec::new(), Compression::fast())),
            rec,
        }
    }

    pub(crate) async fn send_data(&mut self, b: Bytes) -> Result<(), StreamError> {
        let b = match self.gzip.as_mut() {
            None => b,
            Some(z) => {
                // Writing into a Vec cannot fail.
                let _ = z.write_all(&b).and_then(|_| z.flush());
                let out = std::mem::take(z.get_mut());
                self.rec.gzip_sent(out.len());
                Bytes::from(out)
            }
        };
        if b.is_empty() {
            return Ok(());
        }
        self.send.send_data(b).await
    }

    /// Ends the body (with the gzip trailer when encoding).
    pub(crate) async fn finish(&mut self) -> Result<(), StreamError> {
        if let Some(z) = self.gzip.take() {
            let tail = z.finish().unwrap_or_default();
            self.rec.gzip_sent(tail.len());
            if !tail.is_empty() {
                self.send.send_data(Bytes::from(tail)).await?;
            }
        }
        self.send.finish().await
    }

    pub(crate) fn stop_stream(&mut self, code: Code) {
        self.send.stop_stream(code)
    }
}
