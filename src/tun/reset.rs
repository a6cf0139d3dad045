//! Ending an app's TCP connection with a reset, as a refused or broken connection ends on a
//! real network. The stack (netstack-smoltcp 0.2.4) can only end a connection with a FIN,
//! which tells the app "the peer is done, all is well"; so the TUN notes the sequence
//! numbers the stack sends on each connection and, when a flow fails, builds the RST itself:
//! one to the app, and one into the stack, whose socket then closes at once (no FIN, its
//! buffers freed).
//!
//! Guarantees this module owns: a reset is built only from numbers the stack itself sent on
//! that connection — to the app with the stack's next sequence number (what the app's TCP
//! expects, so it accepts the RST), to the stack with the last acknowledgement it sent; the
//! table holds at most its cap of connections (the least recently seen gives way).

use super::packet::ip_frame;
use netstack_smoltcp::smoltcp::phy::ChecksumCapabilities;
use netstack_smoltcp::smoltcp::wire::{
    IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// Whether a flow the server ended should reach the app as a reset rather than a FIN: the
/// server ended it without a byte while the app had not finished sending. That is all a
/// refused destination looks like through VLESS (Xray answers a failed dial with its
/// response header and an end; so does our test server). A real origin that closes a
/// connection with a request unread resets it too; one the app already finished writing to
/// (an upload) still ends with a FIN.
pub fn server_refused(bytes_down: u64, app_finished: bool) -> bool {
    bytes_down == 0 && !app_finished
}

/// One TCP connection, as the app sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conn {
    pub app: SocketAddr,
    pub remote: SocketAddr,
}

/// What the stack last told the app on one connection.
#[derive(Clone, Copy, Debug)]
struct Seen {
    /// The stack's next sequence number (past everything it sent, SYN and FIN included).
    snd_nxt: TcpSeqNumber,
    /// The last acknowledgement it sent: the app's bytes it has taken.
    rcv_nxt: TcpSeqNumber,
    /// What its SYN-ACK acknowledged: the app's initial sequence number plus one.
    syn_acked: TcpSeqNumber,
    /// The right edge of the receive window it announced (furthest seen), and the window
    /// scale it announced in its SYN-ACK.
    win_end: TcpSeqNumber,
    win_shift: u8,
    /// When it was last updated (a counter), for giving way when full.
    at: u64,
}

/// The packets that end one connection with a reset.
#[derive(Debug)]
pub struct Resets {
    /// To the app (write it to the device).
    pub to_app: Vec<u8>,
    /// To the stack (hand it in as if the app had sent it).
    pub to_stack: Vec<u8>,
}

/// Why a segment from the app is kept from the stack (netstack-smoltcp 0.2.4 on smoltcp 0.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldBack {
    /// A SYN the stack already answered: the app sending it again because the SYN-ACK was
    /// lost or late (a full output queue, a slow packet sink). The layer opens a new socket
    /// for every SYN, and the new flow would replace the live one and stall the connection;
    /// the stack's own SYN-ACK retransmission completes the handshake instead.
    RepeatedSyn,
    /// Bytes past the right edge of the receive window the stack announced. smoltcp 0.12
    /// stores them when its buffer has room, then panics computing its next window
    /// ("attempt to subtract sequence numbers with underflow", smoltcp#1048; fixed in 0.13.1,
    /// which the layer does not take). A TCP that keeps to the window sends them only as a
    /// one-byte zero-window probe (BSD stacks, Apple's among them); RFC 9293 has a receiver
    /// drop them anyway, and the app sends them again once the window opens.
    PastWindow,
}

/// The stack's sequence numbers per connection, from the packets it sends to the app.
pub struct SeqTable {
    cap: usize,
    clock: u64,
    conns: HashMap<Conn, Seen>,
}

impl SeqTable {
    pub fn new(cap: usize) -> SeqTable {
        SeqTable {
            cap: cap.max(1),
            clock: 0,
            conns: HashMap::new(),
        }
    }

    /// Notes one packet the stack sends to the app. A connection is entered at its SYN-ACK
    /// and leaves at a RST; other packets only update one already there (so a late packet of
    /// a connection already forgotten does not bring it back). Anything not TCP is ignored.
    pub fn observe(&mut self, p: &[u8]) {
        let Some((src, dst, tcp)) = tcp_of(p) else {
            return;
        };
        let Ok(t) = TcpPacket::new_checked(tcp) else {
            return;
        };
        let conn = Conn {
            app: SocketAddr::new(dst, t.dst_port()),
            remote: SocketAddr::new(src, t.src_port()),
        };
        if t.rst() {
            self.conns.remove(&conn);
            return;
        }
        if !t.ack() {
            return;
        }
        self.clock += 1;
        let end = t.seq_number() + t.segment_len();
        let (ack, at) = (t.ack_number(), self.clock);
        if t.syn() {
            if !self.conns.contains_key(&conn) && self.conns.len() >= self.cap {
                self.evict_oldest();
            }
            // The stack announces a scale only when the app's SYN offered one (RFC 7323):
            // then it applies to every later window. The SYN-ACK's own is never scaled.
            let shift = window_scale(&t).unwrap_or(0);
            let seen = Seen {
                snd_nxt: end,
                rcv_nxt: ack,
                syn_acked: ack,
                win_end: ack + usize::from(t.window_len()),
                win_shift: shift,
                at,
            };
            self.conns.insert(conn, seen);
        } else if let Some(s) = self.conns.get_mut(&conn) {
            // Retransmissions carry older numbers: keep the furthest (in sequence space).
            s.snd_nxt = s.snd_nxt.max(end);
            s.rcv_nxt = s.rcv_nxt.max(ack);
            let win = usize::from(t.window_len()) << s.win_shift;
            s.win_end = s.win_end.max(ack + win);
            s.at = at;
        }
    }

    /// Whether a TCP segment from the app must be kept from the stack, and why (`None`: hand
    /// it on). Both reasons work around the stack layer; see [`HoldBack`].
    pub fn hold_back(&self, p: &[u8]) -> Option<HoldBack> {
        let (src, dst, tcp) = tcp_of(p)?;
        let t = TcpPacket::new_checked(tcp).ok()?;
        if t.rst() {
            return None;
        }
        let conn = Conn {
            app: SocketAddr::new(src, t.src_port()),
            remote: SocketAddr::new(dst, t.dst_port()),
        };
        let s = self.conns.get(&conn)?;
        let n = t.payload().len();
        if t.syn() {
            // A SYN with another initial sequence number is a new connection: it goes on.
            (!t.ack() && s.syn_acked == t.seq_number() + 1).then_some(HoldBack::RepeatedSyn)
        } else {
            (n > 0 && t.seq_number() + n > s.win_end).then_some(HoldBack::PastWindow)
        }
    }

    /// The connection ended without needing a reset.
    pub fn forget(&mut self, conn: &Conn) {
        self.conns.remove(conn);
    }

    /// The resets that end `conn` (which leaves the table), or `None` when the stack has
    /// sent nothing on it that was seen.
    pub fn resets(&mut self, conn: &Conn) -> Option<Resets> {
        let s = self.conns.remove(conn)?;
        Some(Resets {
            to_app: rst(conn.remote, conn.app, s.snd_nxt, s.rcv_nxt)?,
            to_stack: rst(conn.app, conn.remote, s.rcv_nxt, s.snd_nxt)?,
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.conns.len()
    }

    fn evict_oldest(&mut self) {
        if let Some(c) = self.conns.iter().min_by_key(|(_, s)| s.at).map(|(c, _)| *c) {
            self.conns.remove(&c);
        }
    }
}

/// The window scale option of a SYN segment, if it has one.
fn window_scale(t: &TcpPacket<&[u8]>) -> Option<u8> {
    use netstack_smoltcp::smoltcp::wire::TcpOption;
    let mut opts = t.options();
    while !opts.is_empty() {
        let (rest, opt) = TcpOption::parse(opts).ok()?;
        match opt {
            TcpOption::EndOfList => return None,
            TcpOption::WindowScale(s) => return Some(s.min(14)),
            _ => {}
        }
        opts = rest;
    }
    None
}

/// Source, destination and TCP segment of an IP packet carrying TCP (unfragmented, no IPv6
/// extension headers: the stack sends none).
fn tcp_of(p: &[u8]) -> Option<(IpAddr, IpAddr, &[u8])> {
    match p.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(p).ok()?;
            if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
                return None;
            }
            let (hl, total) = (usize::from(ip.header_len()), usize::from(ip.total_len()));
            let (s, d) = (ip.src_addr(), ip.dst_addr());
            Some((s.into(), d.into(), p.get(hl..total)?))
        }
        6 => {
            let ip = Ipv6Packet::new_checked(p).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            let (s, d) = (ip.src_addr(), ip.dst_addr());
            Some((s.into(), d.into(), p.get(40..ip.total_len())?))
        }
        _ => None,
    }
}

/// A RST|ACK from `src` to `dst`; `None` for mixed address families.
fn rst(src: SocketAddr, dst: SocketAddr, seq: TcpSeqNumber, ack: TcpSeqNumber) -> Option<Vec<u8>> {
    let tcp = TcpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
        control: TcpControl::Rst,
        seq_number: seq,
        ack_number: Some(ack),
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    emit(src.ip(), dst.ip(), &tcp)
}

/// `tcp` in an IP packet from `src` to `dst`, checksums filled in; `None` for mixed address
/// families.
fn emit(src: IpAddr, dst: IpAddr, tcp: &TcpRepr) -> Option<Vec<u8>> {
    let (mut buf, hl) = ip_frame(src, dst, IpProtocol::Tcp, tcp.buffer_len())?;
    let (s, d): (IpAddress, IpAddress) = (src.into(), dst.into());
    let caps = ChecksumCapabilities::default();
    tcp.emit(&mut TcpPacket::new_unchecked(&mut buf[hl..]), &s, &d, &caps);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tun::packet::{Carried, classify};

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A segment with a payload and checksums.
    fn segment(
        src: SocketAddr,
        dst: SocketAddr,
        control: TcpControl,
        seq: i32,
        ack: Option<i32>,
        payload: &[u8],
    ) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: src.port(),
            dst_port: dst.port(),
            control,
            seq_number: TcpSeqNumber(seq),
            ack_number: ack.map(TcpSeqNumber),
            window_len: 1000,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        emit(src.ip(), dst.ip(), &tcp).unwrap()
    }

    /// Parses a reset: (src, dst, seq, ack), after checking it is a well-formed RST|ACK with
    /// valid checksums (the TUN's own classifier, which checks them, accepts it).
    fn parsed(p: &[u8]) -> (SocketAddr, SocketAddr, i32, i32) {
        assert_eq!(classify(p, 1500, true), Ok(Carried::Tcp));
        let (s, d, seg) = tcp_of(p).unwrap();
        let t = TcpPacket::new_checked(seg).unwrap();
        assert!(t.rst() && t.ack() && !t.syn() && !t.fin() && t.payload().is_empty());
        (
            SocketAddr::new(s, t.src_port()),
            SocketAddr::new(d, t.dst_port()),
            t.seq_number().0,
            t.ack_number().0,
        )
    }

    #[test]
    fn resets_carry_the_numbers_the_stack_sent_ipv4_and_ipv6() {
        for (app, remote) in [
            (a("10.0.0.2:40000"), a("10.77.0.1:9")),
            (a("[fd00::2]:40000"), a("[fd77::1]:9")),
        ] {
            let mut t = SeqTable::new(8);
            let conn = Conn { app, remote };
            // SYN-ACK (ISS 1000, acking the app's SYN 5000), data, a retransmission of
            // older data, then an ACK of the app's 7 bytes.
            t.observe(&segment(
                remote,
                app,
                TcpControl::Syn,
                1000,
                Some(5001),
                b"",
            ));
            t.observe(&segment(
                remote,
                app,
                TcpControl::None,
                1001,
                Some(5001),
                b"abc",
            ));
            t.observe(&segment(
                remote,
                app,
                TcpControl::Psh,
                1001,
                Some(5001),
                b"a",
            ));
            t.observe(&segment(
                remote,
                app,
                TcpControl::None,
                1004,
                Some(5008),
                b"",
            ));
            let r = t.resets(&conn).expect("resets");
            assert_eq!(parsed(&r.to_app), (remote, app, 1004, 5008));
            assert_eq!(parsed(&r.to_stack), (app, remote, 5008, 1004));
            // The connection left the table.
            assert!(t.resets(&conn).is_none());
        }
    }

    #[test]
    fn a_syn_the_stack_already_answered_is_recognised() {
        for (app, remote) in [
            (a("10.0.0.2:40000"), a("10.77.0.1:9")),
            (a("[fd00::2]:40000"), a("[fd77::1]:9")),
        ] {
            let mut t = SeqTable::new(8);
            let syn = |isn| segment(app, remote, TcpControl::Syn, isn, None, b"");
            // Before the stack answered: a SYN is a SYN.
            assert_eq!(t.hold_back(&syn(5000)), None);
            t.observe(&segment(
                remote,
                app,
                TcpControl::Syn,
                1000,
                Some(5001),
                b"",
            ));
            assert_eq!(
                t.hold_back(&syn(5000)),
                Some(HoldBack::RepeatedSyn),
                "{app}: the app sent it again"
            );
            // Another initial sequence number: a new connection on the same addresses.
            assert_eq!(t.hold_back(&syn(9000)), None);
            // Not a bare SYN: never held back.
            let ack = segment(app, remote, TcpControl::None, 5001, Some(1001), b"");
            assert_eq!(t.hold_back(&ack), None);
            // Another connection.
            let other_app = SocketAddr::new(app.ip(), app.port() + 1);
            let other = segment(other_app, remote, TcpControl::Syn, 5000, None, b"");
            assert_eq!(t.hold_back(&other), None);
            // Once the connection is gone, the same SYN opens a new one.
            t.forget(&Conn { app, remote });
            assert_eq!(t.hold_back(&syn(5000)), None);
        }
    }

    #[test]
    fn bytes_past_the_announced_window_are_recognised() {
        let (app, remote) = (a("10.0.0.2:40000"), a("10.77.0.1:9"));
        let data = |seq, n: usize| {
            segment(
                app,
                remote,
                TcpControl::None,
                seq,
                Some(1001),
                &vec![7u8; n],
            )
        };
        // Unscaled: the SYN-ACK announces 1000 bytes from 5001.
        let mut t = SeqTable::new(8);
        assert_eq!(
            t.hold_back(&data(5001, 2000)),
            None,
            "no connection known: not judged"
        );
        t.observe(&segment(
            remote,
            app,
            TcpControl::Syn,
            1000,
            Some(5001),
            b"",
        ));
        assert_eq!(t.hold_back(&data(5001, 1000)), None);
        assert_eq!(t.hold_back(&data(5001, 1001)), Some(HoldBack::PastWindow));
        // The stack took 1000 bytes and announces 1000 more.
        t.observe(&segment(
            remote,
            app,
            TcpControl::None,
            1001,
            Some(6001),
            b"",
        ));
        assert_eq!(t.hold_back(&data(6001, 1)), None);
        // The edge never moves back (a later, smaller window from an older ACK).
        t.observe(&segment(
            remote,
            app,
            TcpControl::None,
            1001,
            Some(5500),
            b"",
        ));
        assert_eq!(t.hold_back(&data(6001, 1000)), None);
        assert_eq!(t.hold_back(&data(6001, 1001)), Some(HoldBack::PastWindow));
        // Scaled: the SYN-ACK announces shift 4, later windows count 16-byte units.
        let mut t = SeqTable::new(8);
        let syn_ack = TcpRepr {
            src_port: remote.port(),
            dst_port: app.port(),
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(1000),
            ack_number: Some(TcpSeqNumber(5001)),
            window_len: 1000,
            window_scale: Some(4),
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        t.observe(&emit(remote.ip(), app.ip(), &syn_ack).unwrap());
        t.observe(&segment(
            remote,
            app,
            TcpControl::None,
            1001,
            Some(5001),
            b"",
        ));
        assert_eq!(t.hold_back(&data(5001, 16_000)), None);
        assert_eq!(t.hold_back(&data(5001, 16_001)), Some(HoldBack::PastWindow));
    }

    #[test]
    fn sequence_numbers_wrap() {
        let (app, remote) = (a("10.0.0.2:1"), a("10.0.0.9:2"));
        let mut t = SeqTable::new(8);
        t.observe(&segment(
            remote,
            app,
            TcpControl::Syn,
            -2,
            Some(i32::MAX),
            b"",
        ));
        t.observe(&segment(
            remote,
            app,
            TcpControl::None,
            -1,
            Some(i32::MAX),
            b"xyz",
        ));
        // A FIN counts one in sequence space, like a SYN.
        t.observe(&segment(
            remote,
            app,
            TcpControl::Fin,
            2,
            Some(i32::MIN),
            b"",
        ));
        let r = t.resets(&Conn { app, remote }).unwrap();
        assert_eq!(parsed(&r.to_app), (remote, app, 3, i32::MIN));
    }

    #[test]
    fn only_a_syn_ack_enters_a_connection_and_a_rst_removes_it() {
        let (app, remote) = (a("10.0.0.2:1"), a("10.0.0.9:2"));
        let conn = Conn { app, remote };
        let mut t = SeqTable::new(8);
        // A late segment of a connection never entered (or already forgotten).
        t.observe(&segment(remote, app, TcpControl::None, 7, Some(8), b"late"));
        assert!(t.resets(&conn).is_none());
        t.observe(&segment(remote, app, TcpControl::Syn, 7, Some(8), b""));
        t.observe(&segment(remote, app, TcpControl::Rst, 8, Some(8), b""));
        assert!(t.resets(&conn).is_none());
        t.observe(&segment(remote, app, TcpControl::Syn, 7, Some(8), b""));
        t.forget(&conn);
        assert!(t.resets(&conn).is_none());
        // The app's own packets (a SYN without ACK), truncated packets, UDP: ignored.
        t.observe(&segment(app, remote, TcpControl::Syn, 1, None, b""));
        let good = segment(remote, app, TcpControl::Syn, 7, Some(8), b"");
        for n in 0..good.len() {
            t.observe(&good[..n]);
        }
        t.observe(&crate::tun::packet::build::udp(remote, app, b"dgram"));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn the_table_keeps_its_cap_and_the_least_recent_gives_way() {
        let app = |p: u16| SocketAddr::new("10.0.0.2".parse().unwrap(), p);
        let remote = a("10.0.0.9:80");
        let mut t = SeqTable::new(2);
        t.observe(&segment(remote, app(1), TcpControl::Syn, 1, Some(1), b""));
        t.observe(&segment(remote, app(2), TcpControl::Syn, 1, Some(1), b""));
        // Connection 1 is seen again, so 2 is the least recent when 3 arrives.
        t.observe(&segment(remote, app(1), TcpControl::None, 2, Some(1), b""));
        t.observe(&segment(remote, app(3), TcpControl::Syn, 1, Some(1), b""));
        assert_eq!(t.len(), 2);
        let conn = |p| Conn {
            app: app(p),
            remote,
        };
        assert!(t.resets(&conn(2)).is_none());
        assert!(t.resets(&conn(1)).is_some() && t.resets(&conn(3)).is_some());
    }

    #[test]
    fn a_refusal_is_an_end_without_a_byte_while_the_app_still_sends() {
        assert!(server_refused(0, false));
        assert!(!server_refused(1, false));
        // An upload the app finished, answered by nothing: a normal end.
        assert!(!server_refused(0, true));
    }
}
