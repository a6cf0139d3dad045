//! VLESS framing (protocol doc §8): the request header, the response header, UDP datagram
//! framing, and how a tunnel carries them ([`frame`]: the header with the first payload).

use crate::error::{Error, Result};
use crate::tunnel::{Carries, Framing, TunnelCore};
use sha1::{Digest, Sha1};
use std::net::IpAddr;
use std::time::Duration;

/// VLESS command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Tcp = 1,
    Udp = 2,
    /// Mux.Cool (XUDP): the request names no destination, every frame inside does.
    Mux = 3,
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
    /// Parses `host:port`, `[v6]:port` or `v4:port`. Refused with an error naming the
    /// input and the rule: no `:port`, a port that is not 1-65535 (0 is no destination), an
    /// IPv6 address without brackets, an empty or over-long host.
    pub fn parse(s: &str) -> Result<Target> {
        let bad = |why: &str| Error::Other(format!("{s:?} is not host:port ({why})"));
        let (h, p) = s.rsplit_once(':').ok_or_else(|| bad("no :port"))?;
        let port: u16 = p
            .parse()
            .map_err(|_| bad(&format!("port {p:?} is not a number 1-65535")))?;
        if port == 0 {
            return Err(bad("port 0 is not a destination"));
        }
        // An IPv6 address needs brackets: in `2001:db8::1:443` the port is ambiguous.
        let host = match h.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => {
                Host::Ip(IpAddr::V6(v6.parse().map_err(|_| {
                    bad(&format!("{v6:?} in brackets is not an IPv6 address"))
                })?))
            }
            None if h.contains(':') && !h.contains(['[', ']']) => {
                return Err(bad("an IPv6 address needs brackets: [addr]:port"));
            }
            None if h.contains([':', '[', ']']) => return Err(bad("unbalanced brackets")),
            None => match h.parse::<IpAddr>() {
                Ok(ip) => Host::Ip(ip),
                Err(_) if !h.is_empty() && h.len() <= 255 => Host::Domain(h.to_string()),
                Err(_) if h.is_empty() => return Err(bad("empty host")),
                Err(_) => return Err(bad("host longer than 255 bytes")),
            },
        };
        Ok(Target { host, port })
    }
}

impl From<std::net::SocketAddr> for Target {
    fn from(a: std::net::SocketAddr) -> Target {
        Target {
            host: Host::Ip(a.ip()),
            port: a.port(),
        }
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
    let mut h = command_header(id, cmd);
    write_address_port(target, &mut h);
    h
}

/// The request header of a Mux.Cool connection: version 0, user id, no addons, command 3 and
/// no address (Xray writes none for Mux: every frame inside names its own destination).
pub fn mux_request_header(id: &[u8; 16]) -> Vec<u8> {
    command_header(id, Command::Mux)
}

fn command_header(id: &[u8; 16], cmd: Command) -> Vec<u8> {
    let mut h = Vec::with_capacity(24 + 256);
    h.push(0);
    h.extend_from_slice(id);
    h.push(0);
    h.push(cmd as u8);
    h
}

/// Port then address, as VLESS and Mux.Cool both write them: 2-byte big-endian port, an
/// address type (1 IPv4, 2 domain, 3 IPv6) and the address (a domain with a length byte).
pub fn write_address_port(target: &Target, out: &mut Vec<u8>) {
    out.extend_from_slice(&target.port.to_be_bytes());
    match &target.host {
        Host::Ip(IpAddr::V4(ip)) => {
            out.push(1);
            out.extend_from_slice(&ip.octets());
        }
        Host::Domain(d) => {
            out.push(2);
            out.push(d.len() as u8);
            out.extend_from_slice(d.as_bytes());
        }
        Host::Ip(IpAddr::V6(ip)) => {
            out.push(3);
            out.extend_from_slice(&ip.octets());
        }
    }
}

/// Reads what [`write_address_port`] writes from the start of `buf`. `Ok(None)`: more bytes
/// are needed; `Ok(Some((target, n)))`: it took the first `n` bytes. An unknown address type
/// or an empty or non-UTF-8 domain is an error naming it.
pub fn parse_address_port(buf: &[u8]) -> Result<Option<(Target, usize)>> {
    let bad = |what: String| Err(Error::Other(what));
    let Some(fixed) = buf.get(..3) else {
        return Ok(None);
    };
    let port = u16::from_be_bytes([fixed[0], fixed[1]]);
    let (host, end) = match fixed[2] {
        1 => match buf.get(3..7) {
            Some(b) => (Host::Ip(IpAddr::from([b[0], b[1], b[2], b[3]])), 7),
            None => return Ok(None),
        },
        3 => match buf.get(3..19) {
            Some(b) => {
                let mut o = [0u8; 16];
                o.copy_from_slice(b);
                (Host::Ip(IpAddr::from(o)), 19)
            }
            None => return Ok(None),
        },
        2 => {
            let Some(&n) = buf.get(3) else {
                return Ok(None);
            };
            let Some(name) = buf.get(4..4 + n as usize) else {
                return Ok(None);
            };
            match std::str::from_utf8(name) {
                Ok(d) if !d.is_empty() => (Host::Domain(d.to_string()), 4 + n as usize),
                _ => return bad("empty or non-UTF-8 domain".into()),
            }
        }
        t => return bad(format!("unknown address type {t}")),
    };
    Ok(Some((Target { host, port }, end)))
}

/// A request header as a server reads it (the test server's VLESS target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    pub id: [u8; 16],
    pub cmd: Command,
    /// The destination; `None` exactly for [`Command::Mux`].
    pub target: Option<Target>,
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
    let Some(&cmd) = buf.get(at) else {
        return Ok(None);
    };
    let cmd = match cmd {
        1 => Command::Tcp,
        2 => Command::Udp,
        3 => Command::Mux,
        c => return bad(format!("unknown command {c}")),
    };
    let mut id = [0u8; 16];
    id.copy_from_slice(&buf[1..17]);
    if cmd == Command::Mux {
        let h = RequestHeader {
            id,
            cmd,
            target: None,
        };
        return Ok(Some((h, at + 1)));
    }
    let (target, n) = match parse_address_port(&buf[at + 1..]) {
        Ok(Some(t)) => t,
        Ok(None) => return Ok(None),
        Err(e) => return bad(e.to_string()),
    };
    let target = Some(target);
    Ok(Some((RequestHeader { id, cmd, target }, at + 1 + n)))
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

impl crate::tunnel::ResponsePrefix for ResponseHeader {
    fn consume(&mut self, data: &[u8]) -> Result<usize> {
        ResponseHeader::consume(self, data)
    }

    fn done(&self) -> bool {
        ResponseHeader::done(self)
    }
}

/// How long the request header waits for the app's first bytes, so that it travels with
/// the first payload (Xray's client waits up to 500 ms too); protocols where the server
/// speaks first pay this once.
pub const HEADER_HOLD: Duration = Duration::from_millis(200);

/// Makes `core` carry one VLESS connection of `cmd`: `header` (a request header, or
/// [`mux_request_header`]) goes out ahead of the upload, with the first write or alone
/// after [`HEADER_HOLD`]; the response header is stripped from the download. Every read
/// and write of the tunnel then moves payload only. Runs on the runtime.
pub fn frame(core: &TunnelCore, cmd: Command, header: Vec<u8>) {
    core.frame(Framing {
        carries: match cmd {
            Command::Tcp => Carries::VlessTcp,
            Command::Udp => Carries::VlessUdp,
            Command::Mux => Carries::Mux,
        },
        preamble: header.into(),
        hold: HEADER_HOLD,
        response: Box::new(ResponseHeader::default()),
    });
}

/// The VLESS id of `dialer`'s config, or an error naming `vlessId`.
pub fn configured_id(dialer: &crate::tunnel::Dialer) -> Result<[u8; 16]> {
    dialer
        .config()
        .vless
        .as_ref()
        .map(|v| v.id)
        .ok_or_else(|| Error::config("vlessId", "VLESS is not configured for this client"))
}

/// Opens a tunnel through `dialer` carrying a VLESS connection to `target`; the config
/// must carry a VLESS id.
pub async fn open(
    dialer: &crate::tunnel::Dialer,
    cmd: Command,
    target: &Target,
) -> Result<TunnelCore> {
    let id = configured_id(dialer)?;
    let core = dialer.open().await?;
    frame(&core, cmd, request_header(&id, cmd, target));
    Ok(core)
}

/// A VLESS UDP tunnel: one datagram per call each way.
pub struct UdpTunnel {
    inner: TunnelCore,
    deframer: tokio::sync::Mutex<UdpDeframer>,
}

impl UdpTunnel {
    /// `inner` must already be framed as VLESS UDP ([`open`] with [`Command::Udp`]).
    pub fn new(inner: TunnelCore) -> Self {
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
        // Each refusal names the input and the rule.
        for (bad, why) in [
            ("2001:db8::1:443", "needs brackets"),
            ("::1:53", "needs brackets"),
            ("a.example", "no :port"),
            ("a.example:0", "port 0"),
            ("a.example:70000", "not a number 1-65535"),
            ("[zz]:1", "not an IPv6 address"),
            ("[::1:53", "unbalanced brackets"),
            (":80", "empty host"),
        ] {
            let e = Target::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains(why), "{bad}: {e}");
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
            assert_eq!((h.id, h.cmd, h.target, n), (id, cmd, Some(target), hlen));
        }
        // Mux: command 3 and no address; what follows is the first frame.
        let mut wire = mux_request_header(&id);
        assert_eq!(wire.len(), 19);
        assert_eq!(wire[18], 3);
        wire.extend_from_slice(&[0, 4]);
        assert_eq!(parse_request_header(&wire[..18]).unwrap(), None);
        let (h, n) = parse_request_header(&wire).unwrap().unwrap();
        assert_eq!((h.cmd, h.target, n), (Command::Mux, None, 19));
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
        h[18] = 9;
        assert!(
            parse_request_header(&h)
                .unwrap_err()
                .to_string()
                .contains("unknown command 9")
        );
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
        assert_eq!(
            (p.target.unwrap().to_string(), n),
            ("10.0.0.1:80".into(), h.len())
        );
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
