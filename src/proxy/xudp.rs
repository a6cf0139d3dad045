//! XUDP (Xray `common/xudp` and the VLESS outbound's UDP rule), as pure code: which UDP
//! datagrams travel as XUDP, the GlobalID, and the frames of one XUDP session. This module
//! owns the guarantee that a UDP session writes exactly what Xray's client writes:
//!
//! - the tunnel is a VLESS request with command Mux (3) and no address;
//! - its first datagram goes in a New frame (session 0, option Data, network UDP, the
//!   destination, the 8-byte GlobalID), every later one in a Keep frame naming its own
//!   destination; each datagram is one frame, never split or merged;
//! - the server's Keep frames name each reply's source (full-cone: any source reaches the
//!   session); KeepAlive frames are dropped; an End frame ends the session;
//! - nothing is sent to end the session: the tunnel's upload ends (Xray's client closes the
//!   connection, it writes no End for XUDP);
//! - we never send KeepAlive frames (Xray's client never does).

use super::mux::{Frame, Network, Status};
use super::vless::Target;
use crate::config::{MuxSettings, PacketEncoding, Udp443};
use crate::error::{Error, Result};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// The largest datagram XUDP carries: Xray's server reads a frame's data into one 8 KiB
/// buffer (`buf.Size`) and drops the whole connection on a larger one. (Xray's own client
/// silently drops datagrams above 8192 - 666 bytes; we refuse above 8192 with an error.)
pub const MAX_XUDP_PAYLOAD: usize = 8192;

/// How one UDP datagram travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpPath {
    /// In the session's XUDP tunnel.
    Xudp,
    /// In a plain VLESS UDP tunnel of its own destination.
    Plain,
    /// Refused (Mux enabled with `xudpProxyUDP443: "reject"`).
    Reject,
}

/// Xray's client rule for a UDP flow to `port` (VLESS outbound `Process`, and the outbound
/// handler's Mux dispatch when `mux.enabled`):
/// - without Mux: XUDP unless the port is 53 or 443 (or `packetEncoding` is `none`);
/// - with Mux: port 443 follows `xudpProxyUDP443` (reject, allow: XUDP, skip: as without
///   Mux); other ports go through Mux as XUDP unless `xudpConcurrency` < 0, or it is 0 and
///   `concurrency` < 0 (then as without Mux).
pub fn udp_path(port: u16, encoding: PacketEncoding, mux: &MuxSettings) -> UdpPath {
    let without_mux = || match encoding {
        PacketEncoding::Xudp if port != 53 && port != 443 => UdpPath::Xudp,
        _ => UdpPath::Plain,
    };
    if !mux.enabled {
        return without_mux();
    }
    if port == 443 {
        match mux.xudp_proxy_udp443 {
            Udp443::Reject => return UdpPath::Reject,
            Udp443::Skip => return without_mux(),
            Udp443::Allow => {}
        }
    }
    if encoding == PacketEncoding::None
        || mux.xudp_concurrency < 0
        || (mux.xudp_concurrency == 0 && mux.concurrency < 0)
    {
        return without_mux();
    }
    UdpPath::Xudp
}

/// A GlobalID: what lets the server keep a UDP session's outbound socket (its mapped address)
/// across reconnects. Like Xray's (a BLAKE3 keyed hash of the inbound source with a random
/// per-process key), ours is a keyed hash of the session's source with a random per-process
/// key: stable for one source within the process, unrelated across processes, never zero.
pub fn global_id(source: &str) -> [u8; 8] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    let key = KEY.get_or_init(rand::random);
    let mut h = Sha256::new();
    h.update(key);
    h.update(source.as_bytes());
    let mut g = [0u8; 8];
    g.copy_from_slice(&h.finalize()[..8]);
    if g == [0; 8] {
        // Xray ignores an all-zero GlobalID; a 2^-64 chance, but never send one.
        g[7] = 1;
    }
    g
}

/// The sending half of one XUDP session.
#[derive(Debug)]
pub struct XudpWriter {
    session: u16,
    global_id: [u8; 8],
    opened: bool,
}

impl XudpWriter {
    /// Session 0 is the XUDP connection of Xray's VLESS client (one session per tunnel).
    pub fn new(session: u16, global_id: [u8; 8]) -> XudpWriter {
        XudpWriter {
            session,
            global_id,
            opened: false,
        }
    }

    /// The frame carrying one datagram to `target`: New (with the GlobalID) until a frame
    /// was [`sent`](Self::sent), Keep after. An empty or too large datagram is refused,
    /// naming its size. Making a frame changes nothing: a frame that never goes out (its
    /// write cancelled or failed) leaves the next one a New, so the server always learns
    /// of the session.
    pub fn datagram(&self, target: &Target, data: &[u8]) -> Result<Vec<u8>> {
        check_datagram(target, data.len())?;
        let frame = Frame {
            session: self.session,
            status: if self.opened {
                Status::Keep
            } else {
                Status::New
            },
            error: false,
            target: Some((Network::Udp, target.clone())),
            global_id: (!self.opened).then_some(self.global_id),
            data: Some(Bytes::copy_from_slice(data)),
        };
        frame.to_bytes()
    }

    /// The last frame made by [`datagram`](Self::datagram) is queued whole.
    pub fn sent(&mut self) {
        self.opened = true;
    }

    /// The End frame a Mux.Cool session closes with (`error`: it failed). Session 0 of a
    /// VLESS XUDP tunnel never sends it: the tunnel ends instead.
    pub fn end(&self, error: bool) -> Vec<u8> {
        let f = Frame {
            error,
            ..Frame::bare(self.session, Status::End)
        };
        f.to_bytes().expect("an End frame always encodes")
    }

    pub fn opened(&self) -> bool {
        self.opened
    }
}

/// Refuses what a UDP session cannot carry, naming it: port 0, an empty datagram (XUDP
/// cannot carry one; Xray drops them), a datagram over [`MAX_XUDP_PAYLOAD`].
pub fn check_datagram(target: &Target, len: usize) -> Result<()> {
    if target.port == 0 {
        return Err(Error::Other(format!(
            "UDP destination {target}: port 0 is not a destination"
        )));
    }
    if len == 0 {
        return Err(Error::Other(format!(
            "UDP datagram to {target} is empty; XUDP cannot carry a zero-length datagram"
        )));
    }
    if len > MAX_XUDP_PAYLOAD {
        return Err(Error::Other(format!(
            "UDP datagram of {len} bytes to {target} is too large for XUDP (at most {MAX_XUDP_PAYLOAD})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::mux::{ClientAction, FrameReader, client_action};

    fn t(s: &str) -> Target {
        Target::parse(s).unwrap()
    }

    #[test]
    fn xrays_rule_without_mux() {
        let off = MuxSettings::default();
        for (port, want) in [
            (53, UdpPath::Plain),
            (443, UdpPath::Plain),
            (5353, UdpPath::Xudp),
            (1, UdpPath::Xudp),
            (80, UdpPath::Xudp),
        ] {
            assert_eq!(udp_path(port, PacketEncoding::Xudp, &off), want, "{port}");
            assert_eq!(udp_path(port, PacketEncoding::None, &off), UdpPath::Plain);
        }
    }

    #[test]
    fn xrays_rule_with_mux() {
        let mux = |c, x, u| MuxSettings {
            enabled: true,
            concurrency: c,
            xudp_concurrency: x,
            xudp_proxy_udp443: u,
        };
        let x = PacketEncoding::Xudp;
        // Default xudpProxyUDP443 rejects 443; other ports, 53 included, go through Mux.
        let m = mux(0, 0, Udp443::Reject);
        assert_eq!(udp_path(443, x, &m), UdpPath::Reject);
        assert_eq!(udp_path(53, x, &m), UdpPath::Xudp);
        assert_eq!(udp_path(9000, x, &m), UdpPath::Xudp);
        assert_eq!(udp_path(443, x, &mux(0, 0, Udp443::Allow)), UdpPath::Xudp);
        assert_eq!(udp_path(443, x, &mux(0, 0, Udp443::Skip)), UdpPath::Plain);
        // xudpConcurrency < 0, or 0 with concurrency < 0: Mux is not used for UDP ...
        for m in [mux(8, -1, Udp443::Allow), mux(-1, 0, Udp443::Allow)] {
            assert_eq!(udp_path(53, x, &m), UdpPath::Plain);
            assert_eq!(udp_path(9000, x, &m), UdpPath::Xudp);
            assert_eq!(udp_path(443, x, &m), UdpPath::Plain);
        }
        // ... but the 443 rule still applies first.
        assert_eq!(
            udp_path(443, x, &mux(-1, -1, Udp443::Reject)),
            UdpPath::Reject
        );
        assert_eq!(
            udp_path(9000, x, &mux(-1, 4, Udp443::Reject)),
            UdpPath::Xudp
        );
        // Disabled Mux: its other fields mean nothing.
        let off = MuxSettings {
            enabled: false,
            ..mux(0, 0, Udp443::Reject)
        };
        assert_eq!(udp_path(443, x, &off), UdpPath::Plain);
    }

    #[test]
    fn global_ids_are_stable_per_source_and_distinct() {
        let a = global_id("udp:127.0.0.1:5000");
        assert_eq!(a, global_id("udp:127.0.0.1:5000"));
        assert_ne!(a, global_id("udp:127.0.0.1:5001"));
        assert_ne!(a, [0; 8]);
    }

    #[test]
    fn first_datagram_is_new_with_the_global_id_then_keep() {
        let mut w = XudpWriter::new(0, [9; 8]);
        assert!(!w.opened());
        let a = w.datagram(&t("127.0.0.1:5000"), b"one").unwrap();
        // Made but never sent (a cancelled write): the next frame is still the New.
        assert_eq!(w.datagram(&t("127.0.0.1:5000"), b"one").unwrap(), a);
        w.sent();
        let b = w.datagram(&t("[::1]:6000"), b"two").unwrap();
        w.sent();
        let c = w
            .datagram(&t("dns.example:5353"), &[7; MAX_XUDP_PAYLOAD])
            .unwrap();
        let mut r = FrameReader::default();
        r.push(&[a, b, c].concat());
        let f = r.next_frame().unwrap().unwrap();
        assert_eq!((f.session, f.status), (0, Status::New));
        assert_eq!(f.target, Some((Network::Udp, t("127.0.0.1:5000"))));
        assert_eq!((f.global_id, f.data), (Some([9; 8]), Some("one".into())));
        let f = r.next_frame().unwrap().unwrap();
        assert_eq!((f.status, f.global_id), (Status::Keep, None));
        assert_eq!(f.target, Some((Network::Udp, t("[::1]:6000"))));
        let f = r.next_frame().unwrap().unwrap();
        assert_eq!(f.data.unwrap().len(), MAX_XUDP_PAYLOAD);
        assert_eq!(w.end(false), vec![0, 4, 0, 0, 3, 0]);
        assert_eq!(XudpWriter::new(5, [1; 8]).end(true), vec![0, 4, 0, 5, 3, 2]);
    }

    #[test]
    fn what_xudp_cannot_carry_is_refused_by_name() {
        let w = XudpWriter::new(0, [9; 8]);
        let port0 = Target {
            port: 0,
            ..t("127.0.0.1:9")
        };
        let e = w.datagram(&port0, b"x").unwrap_err().to_string();
        assert!(e.contains("port 0"), "{e}");
        let e = w.datagram(&t("127.0.0.1:9"), b"").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = w
            .datagram(&t("127.0.0.1:9"), &vec![0; 70_000])
            .unwrap_err()
            .to_string();
        assert!(e.contains("70000 bytes") && e.contains("8192"), "{e}");
        // Nothing was sent: the next datagram still opens the session.
        assert!(!w.opened());
        let f = w.datagram(&t("127.0.0.1:9"), b"x").unwrap();
        assert_eq!(f[4], Status::New as u8);
    }

    #[test]
    fn replies_carry_their_source() {
        // What Xray's server writes back for session 0: Keep frames naming each source.
        let reply = |from: &str, d: &'static [u8]| {
            Frame {
                target: Some((Network::Udp, t(from))),
                data: Some(Bytes::from_static(d)),
                ..Frame::bare(0, Status::Keep)
            }
            .to_bytes()
            .unwrap()
        };
        let mut r = FrameReader::default();
        r.push(&reply("127.0.0.1:7000", b"a"));
        r.push(&reply("127.0.0.1:7001", b"b"));
        let mut got = Vec::new();
        while let Some(f) = r.next_frame().unwrap() {
            got.push(client_action(f, |id| id == 0));
        }
        assert_eq!(
            got,
            vec![
                ClientAction::Deliver {
                    session: 0,
                    from: Some(t("127.0.0.1:7000")),
                    data: "a".into()
                },
                ClientAction::Deliver {
                    session: 0,
                    from: Some(t("127.0.0.1:7001")),
                    data: "b".into()
                },
            ]
        );
    }
}
