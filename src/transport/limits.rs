//! `memoryLimits` (see [`crate::config::limits`]) applied to a QUIC connection: a window the
//! config sets replaces the transport's default, one it leaves out keeps it.

use crate::config::MemoryLimits;

/// Applied last, over the defaults of [`super::QuicOptions`].
pub(crate) fn apply(l: &MemoryLimits, t: &mut quinn::TransportConfig) {
    if let Some(w) = l.stream_receive_window {
        t.stream_receive_window(w.into());
    }
    if let Some(w) = l.connection_receive_window {
        t.receive_window(w.into());
    }
    if let Some(w) = l.send_window {
        t.send_window(w);
    }
}
