//! What an incoming packet is, decided before the stack sees it: TCP or UDP the TUN carries,
//! or a named reason to drop it. Malformed, truncated, oversized and fragmented packets and
//! bad checksums are dropped here, counted by reason, and never reach a flow.
//!
//! ICMP is dropped (counted as `protocol`): echo requests are not answered locally, since a
//! local answer would report a path as alive that the tunnel may not have.

use netstack_smoltcp::smoltcp::phy::ChecksumCapabilities;
use netstack_smoltcp::smoltcp::wire::{
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpPacket, UdpPacket,
};
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carried {
    Tcp,
    Udp,
}

/// Why a packet from the app was dropped (each a counter in the stats).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// Not a well-formed IPv4/IPv6 + TCP/UDP packet: truncated, bad lengths, bad checksum.
    Malformed,
    /// Larger than the MTU.
    Oversized,
    /// An IP fragment: apps' TCP never fragments, and UDP that does would need reassembly.
    Fragment,
    /// ICMP and every protocol other than TCP and UDP.
    Protocol,
    /// IPv6 while the options say `ipv6: false`.
    Ipv6Off,
}

/// Classifies one packet read from the device.
pub fn classify(p: &[u8], mtu: usize, ipv6: bool) -> Result<Carried, Drop> {
    if p.len() > mtu {
        return Err(Drop::Oversized);
    }
    let (src, dst, proto, payload) = match p.first().map(|b| b >> 4) {
        Some(4) => {
            let ip = Ipv4Packet::new_checked(p).map_err(|_| Drop::Malformed)?;
            if !ip.verify_checksum() {
                return Err(Drop::Malformed);
            }
            if ip.more_frags() || ip.frag_offset() != 0 {
                return Err(Drop::Fragment);
            }
            let hl = usize::from(ip.header_len());
            let total = usize::from(ip.total_len());
            (
                IpAddress::Ipv4(ip.src_addr()),
                IpAddress::Ipv4(ip.dst_addr()),
                ip.next_header(),
                &p[hl..total],
            )
        }
        Some(6) => {
            if !ipv6 {
                return Err(Drop::Ipv6Off);
            }
            let ip = Ipv6Packet::new_checked(p).map_err(|_| Drop::Malformed)?;
            let total = ip.total_len();
            (
                IpAddress::Ipv6(ip.src_addr()),
                IpAddress::Ipv6(ip.dst_addr()),
                ip.next_header(),
                &p[40..total],
            )
        }
        _ => return Err(Drop::Malformed),
    };
    match proto {
        IpProtocol::Tcp => {
            let t = TcpPacket::new_checked(payload).map_err(|_| Drop::Malformed)?;
            if !t.verify_checksum(&src, &dst) {
                return Err(Drop::Malformed);
            }
            Ok(Carried::Tcp)
        }
        IpProtocol::Udp => {
            let u = UdpPacket::new_checked(payload).map_err(|_| Drop::Malformed)?;
            if !u.verify_checksum(&src, &dst) || u.dst_port() == 0 {
                return Err(Drop::Malformed);
            }
            Ok(Carried::Udp)
        }
        // IPv6 extension headers here are fragments (or options before them): not carried.
        IpProtocol::Ipv6Frag => Err(Drop::Fragment),
        _ => Err(Drop::Protocol),
    }
}

/// An IP packet from `src` to `dst` for `len` bytes of `proto`: the header written (the
/// IPv4 checksum too), the payload zeroed; with the payload's offset. `None` when the
/// addresses are of different families.
pub fn ip_frame(
    src: IpAddr,
    dst: IpAddr,
    proto: IpProtocol,
    len: usize,
) -> Option<(Vec<u8>, usize)> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ip = Ipv4Repr {
                src_addr: s,
                dst_addr: d,
                next_header: proto,
                payload_len: len,
                hop_limit: 64,
            };
            let mut buf = vec![0u8; 20 + len];
            let caps = ChecksumCapabilities::default();
            ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]), &caps);
            Some((buf, 20))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = Ipv6Repr {
                src_addr: s,
                dst_addr: d,
                next_header: proto,
                payload_len: len,
                hop_limit: 64,
            };
            let mut buf = vec![0u8; 40 + len];
            ip.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
            Some((buf, 40))
        }
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod build {
    //! Well-formed packets for tests, built field by field with checksums.
    use netstack_smoltcp::smoltcp::phy::ChecksumCapabilities;
    use netstack_smoltcp::smoltcp::wire::{IpAddress, IpProtocol, UdpPacket, UdpRepr};
    use std::net::SocketAddr;

    /// A UDP datagram from `src` to `dst` as an IP packet.
    pub fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
        let udp = UdpRepr {
            src_port: src.port(),
            dst_port: dst.port(),
        };
        let (mut buf, hl) = super::ip_frame(src.ip(), dst.ip(), IpProtocol::Udp, 8 + payload.len())
            .expect("one family");
        let (s, d): (IpAddress, IpAddress) = (src.ip().into(), dst.ip().into());
        udp.emit(
            &mut UdpPacket::new_unchecked(&mut buf[hl..]),
            &s,
            &d,
            payload.len(),
            |b| b.copy_from_slice(payload),
            &ChecksumCapabilities::default(),
        );
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::build::udp;
    use super::*;
    use std::net::SocketAddr;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn good_packets_are_carried_bad_ones_are_named() {
        let v4 = udp(a("10.0.0.2:5000"), a("10.9.0.1:53"), b"query");
        let v6 = udp(a("[fd00::2]:5000"), a("[fd00::9]:53"), b"query");
        assert_eq!(classify(&v4, 1500, true), Ok(Carried::Udp));
        assert_eq!(classify(&v6, 1500, true), Ok(Carried::Udp));
        assert_eq!(classify(&v6, 1500, false), Err(Drop::Ipv6Off));
        assert_eq!(classify(&v4, v4.len() - 1, true), Err(Drop::Oversized));
        assert_eq!(classify(&[], 1500, true), Err(Drop::Malformed));
        assert_eq!(classify(&[0x50; 40], 1500, true), Err(Drop::Malformed));
        // Every truncation is malformed, never a panic.
        for n in 1..v4.len() {
            assert_eq!(classify(&v4[..n], 1500, true), Err(Drop::Malformed), "{n}");
        }
        for n in 1..v6.len() {
            assert_eq!(classify(&v6[..n], 1500, true), Err(Drop::Malformed), "{n}");
        }
        // A flipped payload bit breaks the UDP checksum; a flipped header bit the IPv4 one.
        let mut bad = v4.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(classify(&bad, 1500, true), Err(Drop::Malformed));
        let mut bad = v4.clone();
        bad[8] ^= 1; // TTL
        assert_eq!(classify(&bad, 1500, true), Err(Drop::Malformed));
        // A fragment (more-fragments flag, checksum fixed up).
        let mut frag = v4.clone();
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut frag[..]);
            ip.set_more_frags(true);
            ip.fill_checksum();
        }
        assert_eq!(classify(&frag, 1500, true), Err(Drop::Fragment));
        // ICMP (protocol 1).
        let mut icmp = v4.clone();
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut icmp[..]);
            ip.set_next_header(IpProtocol::Icmp);
            ip.fill_checksum();
        }
        assert_eq!(classify(&icmp, 1500, true), Err(Drop::Protocol));
    }
}
