//! What sits behind the transport (the "inbound" in Xray terms): `Echo` writes every upload
//! byte back on the download; `Sink` counts and hashes the upload and sends nothing; `Vless`
//! relays to the destination its request header names (see `vless`).

use super::Target;
use super::download::Download;
use super::events::{Event, Recorder};
use super::quic::write_outcome;
use super::run_end::RunEnd;
use super::session::Upload;
use sha2::{Digest, Sha256};

pub(crate) struct Runner {
    target: Target,
    hasher: Sha256,
    bytes: u64,
}

impl Runner {
    pub(crate) fn new(target: Target) -> Runner {
        Runner {
            target,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    fn consume(&mut self, b: &[u8]) {
        self.hasher.update(b);
        self.bytes += b.len() as u64;
    }

    /// Runs until the upload ends, a write fails or (VLESS) the destination ends.
    /// Echo and sink are cancel-safe as far as the upload goes.
    pub(crate) async fn run(
        &mut self,
        upload: &mut Upload,
        out: &mut Download,
        rec: &Recorder,
    ) -> RunEnd {
        let echo = match self.target {
            Target::Vless { id } => return super::vless::run(&id, upload, out, rec).await,
            Target::Echo => true,
            Target::Sink => false,
        };
        loop {
            let b = match upload.next().await {
                Ok(Some(b)) => b,
                Ok(None) => return RunEnd::UploadDone,
                Err(e) => return RunEnd::UploadFailed(e),
            };
            if echo {
                let n = b.len();
                if let Err(e) = out.send_data(b).await {
                    return RunEnd::WriteFailed(write_outcome(&e));
                }
                rec.downloaded(n);
            } else {
                self.consume(&b);
            }
        }
    }

    /// After the download ended: a sink takes what already arrived in order, then reports.
    pub(crate) fn finish(mut self, upload: &mut Upload, rec: &Recorder, session: Option<String>) {
        if self.target == Target::Sink {
            for b in upload.drain_ready() {
                self.consume(&b);
            }
            rec.push(Event::SinkDone {
                session,
                bytes: self.bytes,
                sha256: self.hasher.finalize().into(),
            });
        }
    }
}
