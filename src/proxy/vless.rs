//! VLESS framing (protocol doc §8): the request header, the response header, UDP datagram
//! framing, and a tunnel wrapper that sends the header with the first payload.

use crate::error::{Error, Result};
use crate::tunnel::TunnelCore;
use sha1::{Digest, Sha1};
use std::net::IpAddr;

/// VLESS command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Tcp = 1,
    Udp = 2,
}

/// A destination as VLESS (and SOCKS5) carry it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    Domain(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

impl Target {
    /// Parses `host:port`, `[v6]:port` or `v4:port`.
    pub fn parse(s: &str) -> Result<Target> {
        let bad = || Error::Other(format!("{s:?} is not host:port"));
        let (h, p) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = p.parse().map_err(|_| bad())?;
        // An IPv6 address needs brackets: in `2001:db8::1:443` the port is ambiguous.
        let host = match h.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => Host::Ip(IpAddr::V6(v6.parse().map_err(|_| bad())?)),
            None if h.contains([':', '[', ']']) => return Err(bad()),
            None => match h.parse::<IpAddr>() {
                Ok(ip) => Host::Ip(ip),
                Err(_) if !h.is_empty() && h.len() <= 255 => Host::Domain(h.to_string()),
                Err(_) => return Err(bad()),
            },
        };
        Ok(Target { host, port })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(ip) => write!(f, "{ip}:{}", self.port),
            Host::Domain(d) => write!(f, "{d}:{}", self.port),
        }
    }
}

/// The 16-byte user id, read as Xray's `uuid.ParseString` does: 32 to 36 bytes are hex
/// groups 8-4-4-4-12, each optionally preceded by one `-` (so dashes are optional);
/// any 1–30 byte string is mapped to a UUIDv5 (SHA-1 over 16 zero bytes then the string,
/// version 5, RFC 4122 variant).
pub fn user_id(field: &str, id: &str) -> Result<[u8; 16]> {
    if (32..=36).contains(&id.len()) {
        let bad = || Error::config(field, format!("{id:?} is not a valid UUID"));
        let mut text = id.as_bytes();
        let mut out = [0u8; 16];
        let mut at = 0;
        for group in [8usize, 4, 4, 4, 12] {
            if let Some(rest) = text.strip_prefix(b"-") {
                text = rest;
            }
            let digits = text.get(..group).ok_or_else(bad)?;
            hex::decode_to_slice(digits, &mut out[at..at + group / 2]).map_err(|_| bad())?;
            text = &text[group..];
            at += group / 2;
        }
        // Like Go, whatever follows the fifth group is not looked at.
        return Ok(out);
    }
    if id.is_empty() || id.len() > 30 {
        return Err(Error::config(
            field,
            format!("{id:?} is neither a UUID nor a 1-30 byte string"),
        ));
    }
    let mut h = Sha1::new();
    h.update([0u8; 16]);
    h.update(id.as_bytes());
    let d = h.finalize();
    let mut u = [0u8; 16];
    u.copy_from_slice(&d[..16]);
    u[6] = (u[6] & 0x0f) | 0x50;
    u[8] = (u[8] & 0x3f) | 0x80;
    Ok(u)
}

/// The request header: version 0, user id, no addons, command, port, address.
pub fn request_header(id: &[u8; 16], cmd: Command, target: &Target) -> Vec<u8> {
    let mut h = Vec::with_capacity(24 + 256);
    h.push(0);
    h.extend_from_slice(id);
    h.push(0);
    h.push(cmd as u8);
    h.extend_from_slice(&target.port.to_be_bytes());
    match &target.host {
        Host::Ip(IpAddr::V4(ip)) => {
            h.push(1);
            h.extend_from_slice(&ip.octets());
        }
        Host::Domain(d) => {
            h.push(2);
            h.push(d.len() as u8);
            h.extend_from_slice(d.as_bytes());
        }
        Host::Ip(IpAddr::V6(ip)) => {
            h.push(3);
            h.extend_from_slice(&ip.octets());
        }
    }
    h
}

/// A request header as a server reads it (the test server's VLESS target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    pub id: [u8; 16],
    pub cmd: Command,
    pub target: Target,
}

/// Parses a request header from the start of an upload. `Ok(None)`: more bytes are needed;
/// `Ok(Some((header, n)))`: the header took the first `n` bytes and payload follows.
/// Addons are skipped (they only carry a flow, which XHTTP cannot use).
pub fn parse_request_header(buf: &[u8]) -> Result<Option<(RequestHeader, usize)>> {
    let bad = |what: String| Err(Error::Other(format!("VLESS request: {what}")));
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != 0 {
        return bad(format!("version {version}, expected 0"));
    }
    let Some(&addons) = buf.get(17) else {
        return Ok(None);
    };
    let at = 18 + addons as usize;
    // command, port (2), address type
    let Some(fixed) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    let cmd = match fixed[0] {
        1 => Command::Tcp,
        2 => Command::Udp,
        3 => return bad("command 3 (mux) is not supported".into()),
        c => return bad(format!("unknown command {c}")),
    };
    let port = u16::from_be_bytes([fixed[1], fixed[2]]);
    let addr = at + 4;
    let (host, end) = match fixed[3] {
        1 => match buf.get(addr..addr + 4) {
            Some(b) => (Host::Ip(IpAddr::from([b[0], b[1], b[2], b[3]])), addr + 4),
            None => return Ok(None),
        },
        3 => match buf.get(addr..addr + 16) {
            Some(b) => {
                let mut o = [0u8; 16];
                o.copy_from_slice(b);
                (Host::Ip(IpAddr::from(o)), addr + 16)
            }
            None => return Ok(None),
        },
        2 => {
            let Some(&n) = buf.get(addr) else {
                return Ok(None);
            };
            let Some(name) = buf.get(addr + 1..addr + 1 + n as usize) else {
                return Ok(None);
            };
            match std::str::from_utf8(name) {
                Ok(d) if !d.is_empty() => (Host::Domain(d.to_string()), addr + 1 + n as usize),
                _ => return bad("empty or non-UTF-8 domain".into()),
            }
        }
        t => return bad(format!("unknown address type {t}")),
    };
    let mut id = [0u8; 16];
    id.copy_from_slice(&buf[1..17]);
    let target = Target { host, port };
    Ok(Some((RequestHeader { id, cmd, target }, end)))
}

/// Strips the response header (`00`, addons length, addons) from the start of the download.
#[derive(Debug, Default)]
pub struct ResponseHeader {
    seen: usize,
    addons: Option<usize>,
}

impl ResponseHeader {
    /// Consumes header bytes from `data`; returns how many bytes of `data` were header.
    pub fn consume(&mut self, data: &[u8]) -> Result<usize> {
        let mut used = 0;
        while !self.done() && used < data.len() {
            let b = data[used];
            match (self.seen, self.addons) {
                (0, _) if b != 0 => {
                    return Err(Error::Other(format!(
                        "VLESS response version {b}, expected 0"
                    )));
                }
                (0, _) => {}
                (1, _) => self.addons = Some(b as usize),
                _ => {}
            }
            self.seen += 1;
            used += 1;
        }
        Ok(used)
    }

    pub fn done(&self) -> bool {
        matches!(self.addons, Some(n) if self.seen >= 2 + n)
    }
}

/// The largest UDP payload carried: above any IP datagram's (65507 on IPv4, 65527 on IPv6),
/// and small enough that a framed datagram fits one tunnel write piece, so a frame is
/// queued whole or not at all and the stream of frames can never be cut mid-frame.
pub const MAX_UDP_PAYLOAD: usize = 65534;

/// Frames one UDP datagram (2-byte big-endian length, then the payload).
pub fn frame_udp(payload: &[u8]) -> Result<Vec<u8>> {
    if payload.len() > MAX_UDP_PAYLOAD {
        return Err(Error::Other(format!(
            "UDP datagram of {} bytes is too large (at most {MAX_UDP_PAYLOAD})",
            payload.len()
        )));
    }
    let mut v = Vec::with_capacity(2 + payload.len());
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.extend_from_slice(payload);
    Ok(v)
}

/// Reassembles length-prefixed datagrams from a byte stream.
#[derive(Debug, Default)]
pub struct UdpDeframer {
    buf: Vec<u8>,
    /// Where the next frame starts in `buf`: frames are read through a cursor and the
    /// buffer compacted now and then, so many small frames cost linear time.
    start: usize,
}

impl UdpDeframer {
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    pub fn next_datagram(&mut self) -> Option<Vec<u8>> {
        let rest = &self.buf[self.start..];
        let len = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize;
        let d = rest.get(2..2 + len)?.to_vec();
        self.start += 2 + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Some(d)
    }
}

/// A tunnel carrying one VLESS connection. The request header goes out with the first
/// write (or alone, right before the first read if the app reads first, for protocols where
/// the server speaks first); the response header is stripped from the download.
pub struct VlessTunnel {
    inner: TunnelCore,
    /// Held across the write that queues it, so no payload can overtake the header.
    header: tokio::sync::Mutex<Option<Vec<u8>>>,
    response: tokio::sync::Mutex<ResponseHeader>,
}

impl VlessTunnel {
    pub fn new(inner: TunnelCore, id: &[u8; 16], cmd: Command, target: &Target) -> Self {
        VlessTunnel {
            inner,
            header: tokio::sync::Mutex::new(Some(request_header(id, cmd, target))),
            response: tokio::sync::Mutex::new(ResponseHeader::default()),
        }
    }

    /// Queues the request header if it has not gone yet. The header is smaller than one
    /// write piece, so it is queued whole or (if this is cancelled) not at all and kept.
    async fn send_header(&self) -> Result<()> {
        let mut h = self.header.lock().await;
        if let Some(hdr) = h.as_ref() {
            self.inner.write(hdr).await?;
            *h = None;
        }
        Ok(())
    }

    /// Writes `data`; the first write carries the header right before it (both are queued
    /// before the upload task takes them, so packet-up sends them in one POST).
    pub async fn write(&self, data: &[u8]) -> Result<usize> {
        self.send_header().await?;
        self.inner.write(data).await
    }

    pub async fn read(&self, buf: &mut [u8]) -> Result<usize> {
        self.send_header().await?;
        let mut resp = self.response.lock().await;
        loop {
            let n = self.inner.read(buf).await?;
            if n == 0 || resp.done() {
                return Ok(n);
            }
            let used = resp.consume(&buf[..n])?;
            if used < n {
                buf.copy_within(used..n, 0);
                return Ok(n - used);
            }
        }
    }

    pub async fn shutdown_write(&self) -> Result<()> {
        self.send_header().await?;
        self.inner.shutdown_write().await
    }

    pub fn close(&self) {
        self.inner.close();
    }

    pub fn core(&self) -> &TunnelCore {
        &self.inner
    }
}

/// Opens a VLESS tunnel through `dialer` to `target`; the config must carry a VLESS id.
pub async fn open(
    dialer: &crate::tunnel::Dialer,
    cmd: Command,
    target: &Target,
) -> Result<VlessTunnel> {
    let id = dialer
        .config()
        .vless
        .as_ref()
        .ok_or_else(|| Error::config("vlessId", "VLESS is not configured for this client"))?
        .id;
    let core = dialer.open().await?;
    Ok(VlessTunnel::new(core, &id, cmd, target))
}

/// A VLESS UDP tunnel: one datagram per call each way.
pub struct UdpTunnel {
    inner: VlessTunnel,
    deframer: tokio::sync::Mutex<UdpDeframer>,
}

impl UdpTunnel {
    pub fn new(inner: VlessTunnel) -> Self {
        UdpTunnel {
            inner,
            deframer: tokio::sync::Mutex::new(UdpDeframer::default()),
        }
    }

    pub async fn send(&self, datagram: &[u8]) -> Result<()> {
        let frame = frame_udp(datagram)?;
        let n = self.inner.write(&frame).await?;
        if n != frame.len() {
            // Cannot happen with one-piece frames; if it did, the server would misread
            // every later datagram: end the flow instead.
            self.inner.close();
            return Err(Error::Other(format!(
                "UDP datagram cut after {n} of {} bytes; tunnel closed",
                frame.len()
            )));
        }
        Ok(())
    }

    /// The next datagram; `Err(Closed)`-style errors when the tunnel ends.
    pub async fn recv(&self) -> Result<Vec<u8>> {
        let mut d = self.deframer.lock().await;
        let mut buf = vec![0u8; 65536];
        loop {
            if let Some(dg) = d.next_datagram() {
                return Ok(dg);
            }
            let n = self.inner.read(&mut buf).await?;
            if n == 0 {
                return Err(Error::Other("UDP tunnel ended".into()));
            }
            d.push(&buf[..n]);
        }
    }

    pub fn close(&self) {
        self.inner.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_need_brackets_around_ipv6() {
        assert_eq!(Target::parse("[::1]:53").unwrap().to_string(), "[::1]:53");
        assert_eq!(
            Target::parse("1.2.3.4:80").unwrap().to_string(),
            "1.2.3.4:80"
        );
        assert_eq!(
            Target::parse("a.example:443").unwrap().to_string(),
            "a.example:443"
        );
        for bad in [
            "2001:db8::1:443",
            "[::1:53",
            "::1]:53",
            "[example]:1",
            "a.example",
            ":80",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_layout_port_before_address() {
        let id = user_id("id", "b831381d-6324-4d53-ad4f-8cda48b30811").unwrap();
        assert_eq!(id[0], 0xb8);
        let t = Target::parse("127.0.0.1:20007").unwrap();
        let h = request_header(&id, Command::Tcp, &t);
        assert_eq!(h[0], 0);
        assert_eq!(&h[1..17], &id);
        assert_eq!(&h[17..], &[0, 1, 0x4e, 0x27, 1, 127, 0, 0, 1]);
        let d = request_header(&id, Command::Udp, &Target::parse("dns.example:53").unwrap());
        assert_eq!(&d[17..22], &[0, 2, 0, 53, 2]);
        assert_eq!(d[22] as usize, "dns.example".len());
        let v6 = request_header(&id, Command::Tcp, &Target::parse("[::1]:80").unwrap());
        assert_eq!(v6[21], 3);
        assert_eq!(v6.len(), 22 + 16);
    }

    #[test]
    fn request_header_parses_back_byte_by_byte() {
        let id = [7u8; 16];
        for (cmd, t) in [
            (Command::Tcp, "127.0.0.1:20007"),
            (Command::Udp, "dns.example:53"),
            (Command::Tcp, "[::1]:80"),
        ] {
            let target = Target::parse(t).unwrap();
            let mut wire = request_header(&id, cmd, &target);
            let hlen = wire.len();
            wire.extend_from_slice(b"payload");
            for cut in 0..hlen {
                assert_eq!(
                    parse_request_header(&wire[..cut]).unwrap(),
                    None,
                    "{t} {cut}"
                );
            }
            let (h, n) = parse_request_header(&wire).unwrap().unwrap();
            assert_eq!((h.id, h.cmd, &h.target, n), (id, cmd, &target, hlen));
        }
    }

    #[test]
    fn request_header_refuses_what_it_cannot_serve() {
        let t = Target::parse("127.0.0.1:1").unwrap();
        let mut h = request_header(&[1; 16], Command::Tcp, &t);
        h[0] = 1;
        assert!(
            parse_request_header(&h)
                .unwrap_err()
                .to_string()
                .contains("version 1")
        );
        let mut h = request_header(&[1; 16], Command::Tcp, &t);
        h[18] = 3;
        assert!(
            parse_request_header(&h)
                .unwrap_err()
                .to_string()
                .contains("mux")
        );
        h[18] = 9;
        assert!(parse_request_header(&h).is_err());
        let mut h = request_header(&[1; 16], Command::Tcp, &t);
        h[21] = 7;
        assert!(
            parse_request_header(&h)
                .unwrap_err()
                .to_string()
                .contains("address type 7")
        );
        // Addons are skipped.
        let mut h = vec![0u8];
        h.extend_from_slice(&[1; 16]);
        h.extend_from_slice(&[2, 0xaa, 0xbb, 1, 0, 80, 1, 10, 0, 0, 1]);
        let (p, n) = parse_request_header(&h).unwrap().unwrap();
        assert_eq!((p.target.to_string(), n), ("10.0.0.1:80".into(), h.len()));
        // A zero-length domain is refused.
        let mut h = vec![0u8];
        h.extend_from_slice(&[1; 16]);
        h.extend_from_slice(&[0, 1, 0, 80, 2, 0]);
        assert!(parse_request_header(&h).is_err());
    }

    #[test]
    fn string_ids_map_to_uuid_v5() {
        let u = user_id("id", "hello").unwrap();
        assert_eq!(u[6] >> 4, 5);
        assert_eq!(u[8] >> 6, 2);
        assert_eq!(u, user_id("id", "hello").unwrap());
        assert_ne!(u, user_id("id", "hellp").unwrap());
        assert!(user_id("id", "").is_err());
        assert!(user_id("id", &"x".repeat(31)).is_err());
        // Dashes are optional, as in Xray: 32 hex digits are the same UUID.
        let dashed = user_id("id", "b831381d-6324-4d53-ad4f-8cda48b30811").unwrap();
        assert_eq!(
            user_id("id", "b831381d63244d53ad4f8cda48b30811").unwrap(),
            dashed
        );
        assert_eq!(
            user_id("id", "B831381D63244D53-AD4F8CDA48B30811").unwrap(),
            dashed
        );
        assert!(user_id("id", &"g".repeat(32)).is_err());
        match user_id("settings.id", "b831381d-6324-4d53-ad4f-8cda48b3081z") {
            Err(Error::Config { field, .. }) => assert_eq!(field, "settings.id"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn response_header_split_across_reads() {
        let mut r = ResponseHeader::default();
        assert_eq!(r.consume(&[0]).unwrap(), 1);
        assert!(!r.done());
        assert_eq!(r.consume(&[2, 9]).unwrap(), 2);
        assert_eq!(r.consume(&[9, b'x']).unwrap(), 1);
        assert!(r.done());
        assert!(ResponseHeader::default().consume(&[1, 0]).is_err());
    }

    #[test]
    fn udp_frames_roundtrip() {
        let mut d = UdpDeframer::default();
        let a = frame_udp(b"hello").unwrap();
        let b = frame_udp(&[7u8; 1400]).unwrap();
        let mut all = a.clone();
        all.extend_from_slice(&b);
        d.push(&all[..4]);
        assert_eq!(d.next_datagram(), None);
        d.push(&all[4..]);
        assert_eq!(d.next_datagram().unwrap(), b"hello");
        assert_eq!(d.next_datagram().unwrap(), vec![7u8; 1400]);
        assert_eq!(d.next_datagram(), None);
        assert!(frame_udp(&vec![0u8; 70000]).is_err());
    }
}
