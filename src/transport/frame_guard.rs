//! The HTTP/3 frame sequence of one incoming stream, checked as its bytes arrive, before h3
//! sees them. Pure: bytes in, bytes (or a violation) out.
//!
//! h3 0.0.8 reads whole frames into memory before looking at them, and reads the end of a
//! body too generously. This guard owns four guarantees it lacks:
//! - no frame h3 would buffer whole may declare more than its limit (a 1 GiB HEADERS or
//!   SETTINGS fails at its header, before one byte of it is stored);
//! - frames of unknown type (RFC 9114 §9: "MUST be ignored") are skipped as they stream
//!   past, never buffered;
//! - an empty DATA frame on a request stream is dropped (h3 would take it for the end of
//!   the body and lose what follows);
//! - a stream that ends inside a frame is an error (h3 would end a cut-short body cleanly).
//!
//! Payload bytes of the frames h3 gets are handed on as slices of the chunks QUIC
//! delivered: nothing is copied on the data path.

use super::surface::MAX_FIELD_SECTION_SIZE;
use bytes::{Buf, Bytes};

const DATA: u64 = 0x0;
const HEADERS: u64 = 0x1;
const PUSH_PROMISE: u64 = 0x5;
/// Every type h3 decodes itself (RFC 9114 frames, HTTP/2's reserved ones it rejects, and
/// WebTransport's stream signal); any other type is skipped here.
const KNOWN: [u64; 12] = [0x0, 0x1, 0x2, 0x3, 0x4, 0x5, 0x6, 0x7, 0x8, 0x9, 0xd, 0x41];
/// Control frames (SETTINGS, GOAWAY, CANCEL_PUSH, MAX_PUSH_ID, …) are a few bytes; quic-go
/// refuses SETTINGS over 8 KiB.
const CONTROL_FRAME_MAX: u64 = 16 << 10;
/// The unidirectional stream type of the control stream; other types (QPACK, push,
/// unknown) carry no frames h3 buffers and pass through untouched.
const CONTROL_STREAM: u64 = 0x0;

/// What the guard refused, for the error that ends the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A frame h3 would buffer whole declared more than we accept.
    Oversized {
        frame_type: u64,
        len: u64,
        limit: u64,
    },
    /// The stream ended inside a frame (or inside a frame's header: no type yet).
    Truncated { frame_type: Option<u64> },
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::Oversized {
                frame_type,
                len,
                limit,
            } => write!(
                f,
                "the server sent an HTTP/3 frame of type {frame_type:#x} declaring {len} bytes, \
                 over the {limit}-byte limit"
            ),
            Violation::Truncated {
                frame_type: Some(t),
            } => write!(
                f,
                "the stream ended inside an HTTP/3 frame of type {t:#x} (truncated frame)"
            ),
            Violation::Truncated { frame_type: None } => {
                f.write_str("the stream ended inside an HTTP/3 frame header (truncated frame)")
            }
        }
    }
}

impl std::error::Error for Violation {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// A unidirectional stream whose type is not yet complete.
    StreamType,
    /// No frames to follow (QPACK, push and unknown unidirectional streams).
    Raw,
    /// Between frames.
    Header,
    Payload {
        frame_type: u64,
        remaining: u64,
        keep: bool,
    },
}

/// One stream's guard. Feed chunks with `push` (when `next` asked for more), take what h3
/// may see with `next`, and call `finish` at the end of the stream.
#[derive(Debug)]
pub struct FrameGuard {
    state: State,
    /// Frames of a request stream (true) or of a control stream (false).
    request: bool,
    /// Header bytes (stream type, frame type, length) that arrived split across chunks.
    held: [u8; 16],
    held_len: usize,
    pending: Bytes,
    failed: Option<Violation>,
}

impl FrameGuard {
    /// A request stream (the response side of a bidirectional stream).
    pub fn request() -> Self {
        Self::with(State::Header, true)
    }

    /// A unidirectional stream the server opened: its type decides what is checked.
    pub fn unidirectional() -> Self {
        Self::with(State::StreamType, false)
    }

    fn with(state: State, request: bool) -> Self {
        FrameGuard {
            state,
            request,
            held: [0; 16],
            held_len: 0,
            pending: Bytes::new(),
            failed: None,
        }
    }

    /// Takes the next chunk from the stream. Call only after `next` returned `None`.
    pub fn push(&mut self, chunk: Bytes) {
        debug_assert!(self.pending.is_empty());
        self.pending = chunk;
    }

    /// The next bytes h3 may see; `None` when more input is needed. A violation is sticky.
    pub fn next(&mut self) -> Option<Result<Bytes, Violation>> {
        if let Some(v) = &self.failed {
            return Some(Err(v.clone()));
        }
        while !self.pending.is_empty() {
            match self.state {
                State::Raw => return Some(Ok(std::mem::take(&mut self.pending))),
                State::Payload {
                    frame_type,
                    remaining,
                    keep,
                } => {
                    let take = remaining.min(self.pending.len() as u64) as usize;
                    let part = self.pending.split_to(take);
                    let remaining = remaining - take as u64;
                    self.state = if remaining == 0 {
                        State::Header
                    } else {
                        State::Payload {
                            frame_type,
                            remaining,
                            keep,
                        }
                    };
                    if keep {
                        return Some(Ok(part));
                    }
                }
                State::StreamType => {
                    let Some((header, [stream_type])) = self.take_varints::<1>() else {
                        continue;
                    };
                    self.state = if stream_type == CONTROL_STREAM {
                        State::Header
                    } else {
                        State::Raw
                    };
                    return Some(Ok(header));
                }
                State::Header => {
                    let Some((header, [frame_type, len])) = self.take_varints::<2>() else {
                        continue;
                    };
                    let keep = match self.decide(frame_type, len) {
                        Ok(keep) => keep,
                        Err(v) => {
                            self.failed = Some(v.clone());
                            return Some(Err(v));
                        }
                    };
                    self.state = if len == 0 {
                        State::Header
                    } else {
                        State::Payload {
                            frame_type,
                            remaining: len,
                            keep,
                        }
                    };
                    if keep {
                        return Some(Ok(header));
                    }
                }
            }
        }
        None
    }

    /// At the end of the stream: fine only between frames.
    pub fn finish(&mut self) -> Result<(), Violation> {
        if let Some(v) = &self.failed {
            return Err(v.clone());
        }
        let v = match self.state {
            State::Payload { frame_type, .. } => Violation::Truncated {
                frame_type: Some(frame_type),
            },
            // A stream may end before its type or between frames; not inside a header.
            State::Header if self.held_len > 0 => Violation::Truncated { frame_type: None },
            _ => return Ok(()),
        };
        self.failed = Some(v.clone());
        Err(v)
    }

    /// Whether h3 gets the frame (true) or it is skipped here (false).
    fn decide(&self, frame_type: u64, len: u64) -> Result<bool, Violation> {
        if !KNOWN.contains(&frame_type) {
            return Ok(false);
        }
        let limit = match frame_type {
            // h3 streams DATA through; only an empty one is a problem (see the module doc).
            DATA => return Ok(len > 0 || !self.request),
            HEADERS | PUSH_PROMISE => MAX_FIELD_SECTION_SIZE,
            _ => CONTROL_FRAME_MAX,
        };
        if len > limit {
            return Err(Violation::Oversized {
                frame_type,
                len,
                limit,
            });
        }
        Ok(true)
    }

    /// Completes `N` varints from the held bytes and `pending`; returns their encoding (to
    /// hand on) and values, or holds what there is and returns `None`.
    fn take_varints<const N: usize>(&mut self) -> Option<(Bytes, [u64; N])> {
        let mut view = [0u8; 16];
        let from_pending = self.pending.len().min(16 - self.held_len);
        view[..self.held_len].copy_from_slice(&self.held[..self.held_len]);
        view[self.held_len..self.held_len + from_pending]
            .copy_from_slice(&self.pending[..from_pending]);
        let avail = self.held_len + from_pending;
        let mut at = 0;
        let mut values = [0u64; N];
        for v in &mut values {
            match varint(&view[at..avail]) {
                Some((value, used)) => {
                    *v = value;
                    at += used;
                }
                None => {
                    // Every byte left fits: a header is at most 16 bytes.
                    self.held[self.held_len..avail].copy_from_slice(&view[self.held_len..avail]);
                    self.held_len = avail;
                    self.pending.advance(from_pending);
                    return None;
                }
            }
        }
        let encoded = if self.held_len == 0 {
            self.pending.split_to(at)
        } else {
            self.pending.advance(at - self.held_len);
            Bytes::copy_from_slice(&view[..at])
        };
        self.held_len = 0;
        Some((encoded, values))
    }
}

/// A QUIC variable-length integer (RFC 9000 §16) at the start of `b`, and its length.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let len = 1usize << (first >> 6);
    let bytes = b.get(..len)?;
    let mut v = u64::from(first & 0x3f);
    for &x in &bytes[1..] {
        v = (v << 8) | u64::from(x);
    }
    Some((v, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: u64) -> Vec<u8> {
        match v {
            0..64 => vec![v as u8],
            64..16384 => (v as u16 | 0x4000).to_be_bytes().to_vec(),
            16384..1073741824 => (v as u32 | 0x8000_0000).to_be_bytes().to_vec(),
            _ => (v | 0xc000_0000_0000_0000).to_be_bytes().to_vec(),
        }
    }

    fn frame(t: u64, payload: &[u8]) -> Vec<u8> {
        let mut f = enc(t);
        f.extend(enc(payload.len() as u64));
        f.extend_from_slice(payload);
        f
    }

    fn header(t: u64, len: u64) -> Vec<u8> {
        let mut f = enc(t);
        f.extend(enc(len));
        f
    }

    /// Feeds `input` in chunks of `size` and returns what h3 would see, or the violation.
    fn run(mut g: FrameGuard, input: &[u8], size: usize) -> Result<Vec<u8>, Violation> {
        let mut out = Vec::new();
        for chunk in input.chunks(size) {
            g.push(Bytes::copy_from_slice(chunk));
            while let Some(r) = g.next() {
                out.extend_from_slice(&r?);
            }
        }
        g.finish()?;
        Ok(out)
    }

    fn every_split(g: fn() -> FrameGuard, input: &[u8]) -> Result<Vec<u8>, Violation> {
        let whole = run(g(), input, input.len().max(1));
        for size in 1..input.len().min(40) {
            assert_eq!(run(g(), input, size), whole, "chunks of {size}");
        }
        whole
    }

    #[test]
    fn varints_of_every_length() {
        for v in [
            0,
            63,
            64,
            16383,
            16384,
            (1 << 30) - 1,
            1 << 30,
            (1 << 62) - 1,
        ] {
            assert_eq!(varint(&enc(v)), Some((v, enc(v).len())), "{v}");
            assert_eq!(varint(&enc(v)[..enc(v).len() - 1]), None, "{v} cut");
        }
    }

    #[test]
    fn a_response_passes_unchanged() {
        let mut input = frame(HEADERS, b"qpack block");
        input.extend(frame(DATA, &[7u8; 300]));
        input.extend(frame(DATA, b"more"));
        input.extend(frame(HEADERS, b"trailers"));
        assert_eq!(every_split(FrameGuard::request, &input), Ok(input));
    }

    #[test]
    fn unknown_frames_and_empty_data_are_dropped() {
        let mut input = frame(HEADERS, b"h");
        let mut want = input.clone();
        input.extend(frame(0x21, &[1u8; 200])); // a reserved (grease) type
        input.extend(frame(DATA, b""));
        input.extend(frame(DATA, b"hello"));
        want.extend(frame(DATA, b"hello"));
        input.extend(frame(0x1f * 7 + 0x21, b""));
        assert_eq!(every_split(FrameGuard::request, &input), Ok(want));
    }

    #[test]
    fn an_unknown_frame_is_skipped_without_being_stored() {
        let mut g = FrameGuard::request();
        g.push(Bytes::from(header(0x21, 1 << 40)));
        assert_eq!(g.next(), None);
        for _ in 0..100 {
            g.push(Bytes::from(vec![0u8; 1 << 16]));
            assert_eq!(g.next(), None);
        }
        assert!(matches!(g.state, State::Payload { keep: false, .. }));
    }

    #[test]
    fn oversized_frames_fail_at_their_header() {
        for (t, len) in [
            (HEADERS, MAX_FIELD_SECTION_SIZE + 1),
            (PUSH_PROMISE, 1 << 30),
            (0x4, CONTROL_FRAME_MAX + 1),
        ] {
            let mut g = FrameGuard::request();
            g.push(Bytes::from(header(t, len)));
            let want = Violation::Oversized {
                frame_type: t,
                len,
                limit: if t == 0x4 {
                    CONTROL_FRAME_MAX
                } else {
                    MAX_FIELD_SECTION_SIZE
                },
            };
            assert_eq!(g.next(), Some(Err(want.clone())));
            // Sticky: later input and the end report it again.
            g.push(Bytes::from_static(b"x"));
            assert_eq!(g.next(), Some(Err(want.clone())));
            assert_eq!(g.finish(), Err(want));
        }
        let ok = frame(HEADERS, &vec![b'a'; 70_000]);
        assert_eq!(every_split(FrameGuard::request, &ok), Ok(ok.clone()));
    }

    #[test]
    fn ending_inside_a_frame_is_an_error() {
        let mut input = frame(HEADERS, b"h");
        input.extend(header(DATA, 10));
        input.extend(b"12345");
        assert_eq!(
            run(FrameGuard::request(), &input, 3),
            Err(Violation::Truncated {
                frame_type: Some(DATA)
            })
        );
        let cut = [0x40u8]; // the first byte of a two-byte frame type
        assert_eq!(
            run(FrameGuard::request(), &cut, 1),
            Err(Violation::Truncated { frame_type: None })
        );
        let mut skipped = header(0x21, 10);
        skipped.extend(b"123");
        assert_eq!(
            run(FrameGuard::request(), &skipped, 2),
            Err(Violation::Truncated {
                frame_type: Some(0x21)
            })
        );
        assert_eq!(run(FrameGuard::request(), b"", 1), Ok(vec![]));
    }

    #[test]
    fn the_control_stream_is_checked_and_other_streams_pass() {
        let mut control = enc(CONTROL_STREAM);
        control.extend(frame(0x4, &[1, 2, 3, 4]));
        let want = control.clone();
        control.extend(frame(0x2f, &[9u8; 50]));
        control.extend(frame(DATA, b"")); // h3 must see it: DATA on a control stream is an error
        let mut want = want;
        want.extend(frame(DATA, b""));
        assert_eq!(every_split(FrameGuard::unidirectional, &control), Ok(want));

        let mut big = enc(CONTROL_STREAM);
        big.extend(header(0x7, 1 << 20));
        assert!(matches!(
            run(FrameGuard::unidirectional(), &big, 5),
            Err(Violation::Oversized { frame_type: 7, .. })
        ));

        // QPACK, push and unknown streams: bytes as they are, whatever they look like.
        for t in [0x2u64, 0x3, 0x1, 0x54] {
            let mut s = enc(t);
            s.extend(header(HEADERS, 1 << 40));
            s.extend([0u8; 33]);
            assert_eq!(every_split(FrameGuard::unidirectional, &s), Ok(s.clone()));
        }
        // A stream may end before its type arrived.
        assert_eq!(run(FrameGuard::unidirectional(), &[0x40], 1), Ok(vec![]));
    }

    #[test]
    fn data_payloads_are_not_copied() {
        let mut g = FrameGuard::request();
        let mut input = header(DATA, 1000);
        input.extend([5u8; 1000]);
        let chunk = Bytes::from(input);
        let base = chunk.as_ptr();
        g.push(chunk);
        let h = g.next().unwrap().unwrap();
        assert_eq!(h.as_ptr(), base);
        let p = g.next().unwrap().unwrap();
        assert_eq!((p.len(), p.as_ptr()), (1000, base.wrapping_add(3)));
    }
}
