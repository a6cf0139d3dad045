//! Mux.Cool framing (Xray `common/mux`), as pure code: the frame codec and what a client does
//! with each frame it receives. This module owns the guarantee that every frame we write is
//! one Xray's server reads as we mean it, and that no input, cut anywhere, makes a reader
//! panic or misread a later frame: bad bytes are an error naming what was wrong.
//!
//! A frame is a metadata block then, if the Data option is set, one data chunk:
//!
//! ```text
//! meta length (u16 BE, at most 512)
//!   session id (u16 BE) | status (1 New, 2 Keep, 3 End, 4 KeepAlive) | option (1 Data, 2 Error)
//!   New:            network (1 TCP, 2 UDP) | port (u16 BE) | address type + address
//!                   [+ 8-byte XUDP GlobalID: UDP with data only]
//!   Keep, UDP:      network 2 | port | address   (the datagram's address; optional)
//! [data length (u16 BE) | data]                    (option Data only)
//! ```
//!
//! Bytes after what a status defines inside the metadata are padding and ignored, as Xray
//! ignores them.

use super::vless::{Target, parse_address_port, write_address_port};
use crate::error::{Error, Result};
use bytes::Bytes;

/// Xray's reader refuses longer metadata.
pub const MAX_META: usize = 512;

/// Option bit: a data chunk follows the metadata.
pub const OPTION_DATA: u8 = 0x01;
/// Option bit: the session ended with an error (End frames).
pub const OPTION_ERROR: u8 = 0x02;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Opens a session to the destination it names.
    New = 1,
    /// More data for an open session.
    Keep = 2,
    /// The session is over (with option Error: it failed).
    End = 3,
    /// Ignored by the receiver; data it carries is discarded.
    KeepAlive = 4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    Tcp = 1,
    Udp = 2,
}

/// One Mux.Cool frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub session: u16,
    pub status: Status,
    /// Option Error (set on End frames of sessions that failed).
    pub error: bool,
    /// A New frame's destination, or the address of a UDP datagram in a Keep frame.
    pub target: Option<(Network, Target)>,
    /// The XUDP GlobalID of a UDP New frame that carries data.
    pub global_id: Option<[u8; 8]>,
    /// The data chunk (option Data). `Some` of an empty chunk is a chunk of length 0.
    pub data: Option<Bytes>,
}

impl Frame {
    /// A frame of `status` for `session` with nothing else.
    pub fn bare(session: u16, status: Status) -> Frame {
        Frame {
            session,
            status,
            error: false,
            target: None,
            global_id: None,
            data: None,
        }
    }

    /// Appends the frame's bytes to `out`. Refuses (naming why) what Xray would not read
    /// back as the same frame: a New frame without a destination, an address on an End or
    /// KeepAlive frame or a TCP address on a Keep frame, a GlobalID anywhere but on a UDP
    /// New frame with data, more than 65535 bytes of data.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        let bad = |what: &str| Err(Error::Other(format!("Mux.Cool frame: {what}")));
        match (self.status, &self.target) {
            (Status::New, None) => return bad("a New frame needs a destination"),
            (Status::Keep, Some((Network::Tcp, _))) => {
                return bad("a Keep frame carries only UDP addresses");
            }
            (Status::End | Status::KeepAlive, Some(_)) => {
                return bad("End and KeepAlive frames carry no address");
            }
            _ => {}
        }
        if self.global_id.is_some()
            && !(self.status == Status::New
                && matches!(self.target, Some((Network::Udp, _)))
                && self.data.is_some())
        {
            return bad("a GlobalID goes only on a UDP New frame with data");
        }
        if let Some(d) = &self.data {
            if d.len() > u16::MAX as usize {
                return bad(&format!(
                    "{} bytes of data do not fit one frame (at most 65535)",
                    d.len()
                ));
            }
        }
        let start = out.len();
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.session.to_be_bytes());
        out.push(self.status as u8);
        let mut option = 0;
        if self.data.is_some() {
            option |= OPTION_DATA;
        }
        if self.error {
            option |= OPTION_ERROR;
        }
        out.push(option);
        if let Some((net, t)) = &self.target {
            out.push(*net as u8);
            write_address_port(t, out);
        }
        if let Some(g) = &self.global_id {
            out.extend_from_slice(g);
        }
        // At most 4 + 1 + 2 + 1 + 1 + 255 + 8 = 272 bytes: always under MAX_META.
        let meta = (out.len() - start - 2) as u16;
        out[start..start + 2].copy_from_slice(&meta.to_be_bytes());
        if let Some(d) = &self.data {
            out.extend_from_slice(&(d.len() as u16).to_be_bytes());
            out.extend_from_slice(d);
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.encode(&mut v)?;
        Ok(v)
    }
}

/// Parses one whole frame from the start of `buf`: `Ok(None)` when more bytes are needed,
/// `Ok(Some((frame, n)))` when it took the first `n` bytes.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>> {
    let bad = |what: String| Err(Error::Other(format!("Mux.Cool frame: {what}")));
    let Some(len) = buf.get(..2) else {
        return Ok(None);
    };
    let meta_len = u16::from_be_bytes([len[0], len[1]]) as usize;
    if meta_len > MAX_META {
        return bad(format!("metadata length {meta_len} (at most {MAX_META})"));
    }
    if meta_len < 4 {
        return bad(format!("metadata length {meta_len} (at least 4)"));
    }
    let Some(meta) = buf.get(2..2 + meta_len) else {
        return Ok(None);
    };
    let session = u16::from_be_bytes([meta[0], meta[1]]);
    let status = match meta[2] {
        1 => Status::New,
        2 => Status::Keep,
        3 => Status::End,
        4 => Status::KeepAlive,
        s => return bad(format!("unknown session status {s}")),
    };
    let option = meta[3];
    let mut target = None;
    let mut rest = &meta[4..];
    // A Keep frame has an address only if its network byte says UDP (Xray checks the byte
    // before anything else; other bytes there are padding).
    if status == Status::New || (status == Status::Keep && rest.first() == Some(&2)) {
        let net = match rest.first() {
            Some(1) => Network::Tcp,
            Some(2) => Network::Udp,
            Some(n) => return bad(format!("unknown network type {n}")),
            None => return bad("a New frame without a destination".into()),
        };
        match parse_address_port(&rest[1..]) {
            Ok(Some((t, n))) => {
                target = Some((net, t));
                rest = &rest[1 + n..];
            }
            Ok(None) => return bad("address cut short inside the metadata".into()),
            Err(e) => return bad(e.to_string()),
        }
    }
    let has_data = option & OPTION_DATA != 0;
    let global_id = match (status, &target) {
        (Status::New, Some((Network::Udp, _))) if has_data && rest.len() >= 8 => {
            let mut g = [0u8; 8];
            g.copy_from_slice(&rest[..8]);
            Some(g)
        }
        _ => None,
    };
    let mut end = 2 + meta_len;
    let data = if has_data {
        let Some(l) = buf.get(end..end + 2) else {
            return Ok(None);
        };
        let n = u16::from_be_bytes([l[0], l[1]]) as usize;
        let Some(d) = buf.get(end + 2..end + 2 + n) else {
            return Ok(None);
        };
        end += 2 + n;
        Some(Bytes::copy_from_slice(d))
    } else {
        None
    };
    let frame = Frame {
        session,
        status,
        error: option & OPTION_ERROR != 0,
        target,
        global_id,
        data,
    };
    Ok(Some((frame, end)))
}

/// Reassembles frames from a byte stream cut anywhere.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Where the next frame starts: frames are read through a cursor and the buffer is
    /// compacted now and then, so many small frames cost linear time.
    start: usize,
}

impl FrameReader {
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next whole frame, `Ok(None)` until one is complete. After an error the stream
    /// cannot be resynchronised: the caller ends the connection.
    pub fn next_frame(&mut self) -> Result<Option<Frame>> {
        let Some((f, n)) = parse_frame(&self.buf[self.start..])? else {
            return Ok(None);
        };
        self.start += n;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(f))
    }

    /// Bytes received and not yet part of a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// What a Mux.Cool client does with a frame from the server (Xray's `ClientWorker`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientAction {
    /// Data for an open session; `from` is the datagram's source when the frame names one.
    Deliver {
        session: u16,
        from: Option<Target>,
        data: Bytes,
    },
    /// The server ended the session (`error`: it failed).
    End { session: u16, error: bool },
    /// Data for a session we do not have: tell the server to end it, drop the data.
    ReplyEnd { session: u16 },
    /// Nothing to do (KeepAlive, a New from the server, a Keep without data, an End for a
    /// session we do not have).
    Ignore,
}

/// Decides what a client does with `frame`; `open` says whether a session id is ours and
/// open. Mirrors Xray: KeepAlive and server-sent New frames are dropped with their data,
/// Keep without data is nothing, Keep with data for an unknown session gets an End back.
pub fn client_action(frame: Frame, open: impl Fn(u16) -> bool) -> ClientAction {
    let s = frame.session;
    match frame.status {
        Status::KeepAlive | Status::New => ClientAction::Ignore,
        Status::End if open(s) => ClientAction::End {
            session: s,
            error: frame.error,
        },
        Status::End => ClientAction::Ignore,
        Status::Keep => match frame.data {
            None => ClientAction::Ignore,
            Some(_) if !open(s) => ClientAction::ReplyEnd { session: s },
            Some(data) => ClientAction::Deliver {
                session: s,
                from: frame
                    .target
                    .and_then(|(n, t)| (n == Network::Udp).then_some(t)),
                data,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Target {
        Target::parse(s).unwrap()
    }

    fn frames() -> Vec<Frame> {
        let gid = [1, 2, 3, 4, 5, 6, 7, 8];
        vec![
            Frame {
                session: 0,
                status: Status::New,
                error: false,
                target: Some((Network::Udp, t("127.0.0.1:5000"))),
                global_id: Some(gid),
                data: Some(Bytes::from_static(b"first")),
            },
            Frame {
                session: 7,
                status: Status::New,
                error: false,
                target: Some((Network::Tcp, t("example.com:443"))),
                global_id: None,
                data: None,
            },
            Frame {
                session: 0,
                status: Status::Keep,
                error: false,
                target: Some((Network::Udp, t("[2001:db8::1]:53"))),
                global_id: None,
                data: Some(Bytes::from(vec![9u8; 1400])),
            },
            Frame {
                session: 3,
                status: Status::Keep,
                error: false,
                target: None,
                global_id: None,
                data: Some(Bytes::new()),
            },
            Frame {
                error: true,
                ..Frame::bare(3, Status::End)
            },
            Frame::bare(0, Status::End),
            Frame::bare(0, Status::KeepAlive),
            Frame {
                data: Some(Bytes::from_static(b"pad")),
                ..Frame::bare(9, Status::KeepAlive)
            },
        ]
    }

    #[test]
    fn xudp_first_packet_layout_is_xrays() {
        // Xray's xudp.PacketWriter: 00 00 | New | Data | UDP | port | IPv4 | GlobalID, then
        // the length-prefixed payload.
        let f = &frames()[0];
        let b = f.to_bytes().unwrap();
        let mut want = vec![0, 20, 0, 0, 1, 1, 2, 0x13, 0x88, 1, 127, 0, 0, 1];
        want.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        want.extend_from_slice(&[0, 5]);
        want.extend_from_slice(b"first");
        assert_eq!(b, want);
        // A later datagram: Keep | Data | UDP | its address, no GlobalID.
        let k = Frame {
            session: 0,
            status: Status::Keep,
            error: false,
            target: Some((Network::Udp, t("a.example:53"))),
            global_id: None,
            data: Some(Bytes::from_static(b"q")),
        };
        let mut want = vec![0, 18, 0, 0, 2, 1, 2, 0, 53, 2, 9];
        want.extend_from_slice(b"a.example");
        want.extend_from_slice(&[0, 1, b'q']);
        assert_eq!(k.to_bytes().unwrap(), want);
        // End with the error option: 00 04 | id | End | Error.
        let e = Frame {
            error: true,
            ..Frame::bare(0x0102, Status::End)
        };
        assert_eq!(e.to_bytes().unwrap(), vec![0, 4, 1, 2, 3, 2]);
    }

    #[test]
    fn every_frame_roundtrips_split_at_every_byte() {
        let all = frames();
        let mut wire = Vec::new();
        for f in &all {
            f.encode(&mut wire).unwrap();
        }
        for cut in 0..=wire.len() {
            let mut r = FrameReader::default();
            let mut got = Vec::new();
            r.push(&wire[..cut]);
            while let Some(f) = r.next_frame().unwrap() {
                got.push(f);
            }
            r.push(&wire[cut..]);
            while let Some(f) = r.next_frame().unwrap() {
                got.push(f);
            }
            assert_eq!(got, all, "cut at {cut}");
            assert_eq!(r.pending(), 0);
        }
        // Byte by byte.
        let mut r = FrameReader::default();
        let mut got = Vec::new();
        for b in &wire {
            r.push(std::slice::from_ref(b));
            while let Some(f) = r.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, all);
    }

    #[test]
    fn every_prefix_of_a_frame_asks_for_more() {
        for f in frames() {
            let b = f.to_bytes().unwrap();
            for cut in 0..b.len() {
                assert_eq!(parse_frame(&b[..cut]).unwrap(), None, "{f:?} cut {cut}");
            }
            assert_eq!(parse_frame(&b).unwrap(), Some((f.clone(), b.len())));
        }
    }

    #[test]
    fn padding_in_the_metadata_is_ignored() {
        // A Keep whose 5th byte is not UDP: no address, the rest is padding.
        let wire = [0, 7, 0, 1, 2, 1, 0, 0xaa, 0xbb, 0, 1, b'x'];
        let (f, n) = parse_frame(&wire).unwrap().unwrap();
        assert_eq!(n, wire.len());
        assert_eq!(
            (f.status, f.target, f.data),
            (Status::Keep, None, Some("x".into()))
        );
        // A UDP New frame without data carries no GlobalID even if 8 bytes follow.
        let mut wire = vec![0, 20, 0, 1, 1, 0, 2, 0, 80, 1, 10, 0, 0, 1];
        wire.extend_from_slice(&[7; 8]);
        let (f, _) = parse_frame(&wire).unwrap().unwrap();
        assert_eq!(f.global_id, None);
        // Fewer than 8 bytes after the address: no GlobalID (Xray's "may be padding").
        let mut wire = vec![0, 13, 0, 1, 1, 1, 2, 0, 80, 1, 10, 0, 0, 1, 0xff];
        wire.extend_from_slice(&[0, 0]);
        let (f, _) = parse_frame(&wire).unwrap().unwrap();
        assert_eq!((f.global_id, f.data), (None, Some(Bytes::new())));
    }

    #[test]
    fn bad_input_is_a_named_error() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0x02, 0x01], "metadata length 513"),
            (vec![0, 3, 0, 0, 2], "metadata length 3"),
            (vec![0, 4, 0, 0, 9, 0], "unknown session status 9"),
            (vec![0, 4, 0, 0, 1, 0], "New frame without a destination"),
            (
                vec![0, 8, 0, 0, 1, 0, 5, 0, 80, 1],
                "unknown network type 5",
            ),
            (
                vec![0, 8, 0, 0, 1, 0, 2, 0, 80, 9],
                "unknown address type 9",
            ),
            (vec![0, 8, 0, 0, 1, 0, 2, 0, 80, 1], "cut short"),
            (
                vec![0, 9, 0, 0, 1, 0, 2, 0, 80, 2, 0],
                "empty or non-UTF-8 domain",
            ),
        ];
        for (wire, want) in cases {
            let e = parse_frame(&wire).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("Mux.Cool"), "{wire:?}: {e}");
        }
        // What Xray would not read back is not written.
        let enc = |f: Frame| f.to_bytes().unwrap_err().to_string();
        assert!(enc(Frame::bare(1, Status::New)).contains("needs a destination"));
        let tcp_keep = Frame {
            target: Some((Network::Tcp, t("1.2.3.4:5"))),
            ..Frame::bare(1, Status::Keep)
        };
        assert!(enc(tcp_keep).contains("only UDP"));
        let end_addr = Frame {
            target: Some((Network::Udp, t("1.2.3.4:5"))),
            ..Frame::bare(1, Status::End)
        };
        assert!(enc(end_addr).contains("no address"));
        let gid_no_data = Frame {
            target: Some((Network::Udp, t("1.2.3.4:5"))),
            global_id: Some([1; 8]),
            ..Frame::bare(1, Status::New)
        };
        assert!(enc(gid_no_data).contains("GlobalID"));
        let big = Frame {
            data: Some(Bytes::from(vec![0u8; 70_000])),
            ..Frame::bare(1, Status::Keep)
        };
        assert!(enc(big).contains("70000 bytes"));
    }

    #[test]
    fn seeded_garbage_never_panics() {
        // Random bytes and mutated valid frames, pushed in random pieces.
        let mut wire = Vec::new();
        for f in frames() {
            f.encode(&mut wire).unwrap();
        }
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for round in 0..2000 {
            let mut b = if round % 2 == 0 {
                wire.clone()
            } else {
                (0..(next() % 600)).map(|_| next() as u8).collect()
            };
            for _ in 0..(next() % 6) {
                if !b.is_empty() {
                    let i = (next() as usize) % b.len();
                    b[i] = next() as u8;
                }
            }
            let mut r = FrameReader::default();
            let mut at = 0;
            'feed: while at < b.len() {
                let n = 1 + (next() as usize) % 64;
                let end = (at + n).min(b.len());
                r.push(&b[at..end]);
                at = end;
                loop {
                    match r.next_frame() {
                        Ok(Some(f)) => {
                            let _ = client_action(f, |id| id % 2 == 0);
                        }
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
            }
        }
    }

    #[test]
    fn client_actions_follow_xrays_client_worker() {
        let open = |id: u16| id == 0;
        let keep = |id, target, data: Option<&'static [u8]>| Frame {
            target,
            data: data.map(Bytes::from_static),
            ..Frame::bare(id, Status::Keep)
        };
        let from = t("127.0.0.1:9");
        assert_eq!(
            client_action(
                keep(0, Some((Network::Udp, from.clone())), Some(b"r")),
                open
            ),
            ClientAction::Deliver {
                session: 0,
                from: Some(from),
                data: "r".into()
            }
        );
        assert_eq!(
            client_action(keep(0, None, Some(b"r")), open),
            ClientAction::Deliver {
                session: 0,
                from: None,
                data: "r".into()
            }
        );
        assert_eq!(
            client_action(keep(0, None, None), open),
            ClientAction::Ignore
        );
        assert_eq!(
            client_action(keep(5, None, Some(b"r")), open),
            ClientAction::ReplyEnd { session: 5 }
        );
        let end = Frame {
            error: true,
            ..Frame::bare(0, Status::End)
        };
        assert_eq!(
            client_action(end, open),
            ClientAction::End {
                session: 0,
                error: true
            }
        );
        assert_eq!(
            client_action(Frame::bare(4, Status::End), open),
            ClientAction::Ignore
        );
        for f in [frames()[0].clone(), frames()[7].clone()] {
            assert_eq!(client_action(f, open), ClientAction::Ignore);
        }
    }
}
