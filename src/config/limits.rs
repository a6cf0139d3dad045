//! `memoryLimits`: the knob that bounds what the library may buffer, for processes with a
//! hard memory ceiling (an iOS network extension is killed at about 50 MB).
//!
//! ```json
//! "memoryLimits": { "streamReceiveWindow": 1048576, "connectionReceiveWindow": 2097152,
//!                   "sendWindow": 1048576, "downloadQueue": 131072, "uploadQueue": 131072 }
//! ```
//!
//! Every field is optional: an absent one keeps the library's default, a present one is used
//! exactly (never silently raised or lowered). Bytes, as integers. What each bounds:
//! - `streamReceiveWindow`: QUIC flow-control window of one stream (one tunnel's download);
//! - `connectionReceiveWindow`: the same for a whole QUIC connection (all its tunnels);
//! - `sendWindow`: bytes a connection may have sent and not yet acknowledged;
//! - `downloadQueue` / `uploadQueue`: bytes queued per tunnel between the app's reads/writes
//!   and the network.
//!
//! The price is throughput: a tunnel cannot move more than one window per round trip.

use super::json::Fields;
use crate::error::{Error, Result};
use serde_json::Value;

/// The largest piece the tunnel tasks queue at once (`tunnel::WRITE_PIECE`): a smaller
/// queue could never take one.
pub const MIN_QUEUE: u64 = 64 * 1024;
/// Below this a window does not hold a few full-size QUIC packets.
pub const MIN_WINDOW: u64 = 16 * 1024;
/// Far beyond any phone's use; keeps every value well inside QUIC's varints and `u32`.
pub const MAX_BYTES: u64 = 1 << 30;

/// Bounds on what the library buffers; `None` keeps the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryLimits {
    pub stream_receive_window: Option<u32>,
    pub connection_receive_window: Option<u32>,
    pub send_window: Option<u64>,
    pub download_queue: Option<usize>,
    pub upload_queue: Option<usize>,
}

impl MemoryLimits {
    /// Reads the `memoryLimits` object at `path`. Unknown keys are refused: a misspelt
    /// limit silently ignored would leave the default the user meant to lower.
    pub fn from_json(path: &str, v: &Value) -> Result<MemoryLimits> {
        let mut f = Fields::new(path, v)?;
        let mut bytes = |name: &str, min: u64| -> Result<Option<u64>> {
            let field = f.path_of(name);
            match f.int(name)? {
                None => Ok(None),
                Some(n) if n >= 0 && (min..=MAX_BYTES).contains(&(n as u64)) => Ok(Some(n as u64)),
                Some(n) => Err(Error::config(
                    field,
                    format!("must be {min}-{MAX_BYTES} bytes, got {n}"),
                )),
            }
        };
        let l = MemoryLimits {
            stream_receive_window: bytes("streamReceiveWindow", MIN_WINDOW)?.map(|n| n as u32),
            connection_receive_window: bytes("connectionReceiveWindow", MIN_WINDOW)?
                .map(|n| n as u32),
            send_window: bytes("sendWindow", MIN_WINDOW)?,
            download_queue: bytes("downloadQueue", MIN_QUEUE)?.map(|n| n as usize),
            upload_queue: bytes("uploadQueue", MIN_QUEUE)?.map(|n| n as usize),
        };
        if let Some(k) = f.entries_mut().first().map(|(k, _)| k.clone()) {
            return Err(Error::config(
                f.path_of(&k),
                "is not a memory limit (streamReceiveWindow, connectionReceiveWindow, \
                 sendWindow, downloadQueue, uploadQueue)",
            ));
        }
        l.check_windows(path, None)?;
        Ok(l)
    }

    /// A stream's window above its connection's would be capped by it, silently: refused.
    /// `default_connection` is the connection window used when none is set.
    pub fn check_windows(&self, path: &str, default_connection: Option<u32>) -> Result<()> {
        let conn = self.connection_receive_window.or(default_connection);
        if let (Some(s), Some(c)) = (self.stream_receive_window, conn) {
            if s > c {
                let whose = if self.connection_receive_window.is_some() {
                    "connectionReceiveWindow"
                } else {
                    "the default connection window"
                };
                let prefix = if path.is_empty() {
                    String::new()
                } else {
                    format!("{path}.")
                };
                return Err(Error::config(
                    format!("{prefix}streamReceiveWindow"),
                    format!("{s} exceeds {whose} ({c}), which caps every stream"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(v: Value) -> Result<MemoryLimits> {
        MemoryLimits::from_json("memoryLimits", &v)
    }

    #[test]
    fn absent_fields_keep_the_defaults() {
        assert_eq!(read(json!({})).unwrap(), MemoryLimits::default());
        let l = read(json!({"StreamReceiveWindow": 65536, "uploadQueue": 65536})).unwrap();
        assert_eq!(l.stream_receive_window, Some(65536));
        assert_eq!(l.upload_queue, Some(65536));
        assert_eq!(l.connection_receive_window, None);
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (
                json!({"streamReceiveWindow": 1000}),
                "memoryLimits.streamReceiveWindow",
            ),
            (json!({"sendWindow": -1}), "memoryLimits.sendWindow"),
            (
                json!({"downloadQueue": 65535}),
                "memoryLimits.downloadQueue",
            ),
            (json!({"uploadQueue": "1M"}), "memoryLimits.uploadQueue"),
            (
                json!({"connectionReceiveWindow": 2_000_000_000u64}),
                "memoryLimits.connectionReceiveWindow",
            ),
            (json!({"downloadQueu": 65536}), "memoryLimits.downloadQueu"),
            (
                json!({"streamReceiveWindow": 1_048_576, "connectionReceiveWindow": 524_288}),
                "memoryLimits.streamReceiveWindow",
            ),
            (json!(5), "memoryLimits"),
        ];
        for (v, field) in cases {
            match read(v.clone()) {
                Err(Error::Config { field: f, .. }) => assert_eq!(f, field, "{v}"),
                other => panic!("{v}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_stream_window_above_the_default_connection_window_is_refused() {
        let l = read(json!({"streamReceiveWindow": 8_388_608})).unwrap();
        assert!(l.check_windows("memoryLimits", Some(16 << 20)).is_ok());
        let e = l.check_windows("memoryLimits", Some(4 << 20)).unwrap_err();
        assert!(e.to_string().contains("default connection window"), "{e}");
    }
}
