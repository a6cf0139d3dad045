//! Why a target (echo, sink, VLESS relay) stopped on its own: what the stream tasks act on.

use super::Outcome;
use super::session::UploadError;

/// Why a target stopped on its own.
pub(crate) enum RunEnd {
    /// The upload ended cleanly (everything was echoed / consumed).
    UploadDone,
    UploadFailed(UploadError),
    /// Writing the download failed.
    WriteFailed(Outcome),
    /// The destination closed: finish the download.
    TargetDone,
    /// The target refused the session or its destination failed; the text says why.
    TargetFailed(String),
}
