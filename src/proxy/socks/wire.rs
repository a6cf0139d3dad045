//! The SOCKS5 wire format (RFC 1928) and username/password sub-negotiation (RFC 1929) as
//! pure functions over byte slices, so every message is tested without sockets.
//!
//! Parsers of stream messages return `Ok(None)` while more bytes are needed and
//! `Ok(Some((value, n)))` once the message took the first `n` bytes.

use crate::proxy::vless::{Host, Target};
use std::net::{IpAddr, SocketAddr};

pub const VERSION: u8 = 5;
pub const METHOD_NONE: u8 = 0x00;
pub const METHOD_USER_PASS: u8 = 0x02;
pub const METHOD_REFUSED: u8 = 0xff;
const AUTH_VERSION: u8 = 1;

const ATYP_V4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_V6: u8 = 4;

/// Reply codes (RFC 1928 §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    Succeeded = 0,
    GeneralFailure = 1,
    HostUnreachable = 4,
    ConnectionRefused = 5,
    CommandNotSupported = 7,
    AddressTypeNotSupported = 8,
}

/// What is wrong with a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("SOCKS version {0}, expected 5")]
    Version(u8),
    #[error("greeting offers no authentication method")]
    NoMethods,
    #[error("username/password version {0}, expected 1")]
    AuthVersion(u8),
    #[error("unknown command {0}")]
    Command(u8),
    #[error("unknown address type {0}")]
    AddressType(u8),
    #[error("domain name is empty or not UTF-8")]
    Domain,
    #[error("datagram shorter than its SOCKS header")]
    Truncated,
}

impl WireError {
    /// The reply a request with this error gets.
    pub fn reply(&self) -> Reply {
        match self {
            WireError::Command(_) => Reply::CommandNotSupported,
            WireError::AddressType(_) => Reply::AddressTypeNotSupported,
            _ => Reply::GeneralFailure,
        }
    }
}

pub type Parsed<T> = Result<Option<(T, usize)>, WireError>;

/// Greeting: `VER NMETHODS METHODS…`; yields the offered methods.
pub fn parse_greeting(buf: &[u8]) -> Parsed<Vec<u8>> {
    let Some(&ver) = buf.first() else {
        return Ok(None);
    };
    if ver != VERSION {
        return Err(WireError::Version(ver));
    }
    let Some(&n) = buf.get(1) else {
        return Ok(None);
    };
    if n == 0 {
        return Err(WireError::NoMethods);
    }
    let end = 2 + n as usize;
    Ok(buf.get(2..end).map(|m| (m.to_vec(), end)))
}

/// The method this server picks from `offered` (`METHOD_REFUSED` if none fits).
pub fn choose_method(offered: &[u8], need_auth: bool) -> u8 {
    let want = if need_auth {
        METHOD_USER_PASS
    } else {
        METHOD_NONE
    };
    if offered.contains(&want) {
        want
    } else {
        METHOD_REFUSED
    }
}

pub fn method_reply(method: u8) -> [u8; 2] {
    [VERSION, method]
}

/// RFC 1929 credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub user: Vec<u8>,
    pub pass: Vec<u8>,
}

impl Credentials {
    /// Compares without an early exit, so timing does not reveal how much matched.
    pub fn matches(&self, user: &str, pass: &str) -> bool {
        fn eq(a: &[u8], b: &[u8]) -> bool {
            let mut diff = (a.len() != b.len()) as u8;
            for (i, x) in a.iter().enumerate() {
                diff |= x ^ b.get(i).copied().unwrap_or(!x);
            }
            diff == 0
        }
        eq(&self.user, user.as_bytes()) & eq(&self.pass, pass.as_bytes())
    }
}

/// Username/password request: `VER ULEN UNAME PLEN PASSWD`.
pub fn parse_auth(buf: &[u8]) -> Parsed<Credentials> {
    let Some(&ver) = buf.first() else {
        return Ok(None);
    };
    if ver != AUTH_VERSION {
        return Err(WireError::AuthVersion(ver));
    }
    let Some(&ulen) = buf.get(1) else {
        return Ok(None);
    };
    let p = 2 + ulen as usize;
    let Some(&plen) = buf.get(p) else {
        return Ok(None);
    };
    let end = p + 1 + plen as usize;
    if buf.len() < end {
        return Ok(None);
    }
    let c = Credentials {
        user: buf[2..p].to_vec(),
        pass: buf[p + 1..end].to_vec(),
    };
    Ok(Some((c, end)))
}

/// RFC 1929 status: 0 accepts, anything else refuses (and the server closes).
pub fn auth_reply(ok: bool) -> [u8; 2] {
    [AUTH_VERSION, if ok { 0 } else { 1 }]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Connect,
    Bind,
    UdpAssociate,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub cmd: Command,
    pub target: Target,
}

/// Request: `VER CMD RSV ATYP DST.ADDR DST.PORT` (RSV is not checked, as most servers).
pub fn parse_request(buf: &[u8]) -> Parsed<Request> {
    let Some(&ver) = buf.first() else {
        return Ok(None);
    };
    if ver != VERSION {
        return Err(WireError::Version(ver));
    }
    let Some(&c) = buf.get(1) else {
        return Ok(None);
    };
    let cmd = match c {
        1 => Command::Connect,
        2 => Command::Bind,
        3 => Command::UdpAssociate,
        other => return Err(WireError::Command(other)),
    };
    if buf.len() < 3 {
        return Ok(None);
    }
    Ok(parse_address(&buf[3..])?.map(|(target, n)| (Request { cmd, target }, 3 + n)))
}

/// `ATYP ADDR PORT`. A domain that is an IP literal becomes that IP (curl's
/// `--socks5-hostname` sends addresses this way).
fn parse_address(buf: &[u8]) -> Parsed<Target> {
    let Some(&atyp) = buf.first() else {
        return Ok(None);
    };
    let (host, at) = match atyp {
        ATYP_V4 => match buf.get(1..5) {
            Some(b) => (Host::Ip(IpAddr::from([b[0], b[1], b[2], b[3]])), 5),
            None => return Ok(None),
        },
        ATYP_V6 => match buf.get(1..17) {
            Some(b) => {
                let mut o = [0u8; 16];
                o.copy_from_slice(b);
                (Host::Ip(IpAddr::from(o)), 17)
            }
            None => return Ok(None),
        },
        ATYP_DOMAIN => {
            let Some(&n) = buf.get(1) else {
                return Ok(None);
            };
            let Some(name) = buf.get(2..2 + n as usize) else {
                return Ok(None);
            };
            let name = std::str::from_utf8(name).map_err(|_| WireError::Domain)?;
            if name.is_empty() {
                return Err(WireError::Domain);
            }
            let host = match name.parse::<IpAddr>() {
                Ok(ip) => Host::Ip(ip),
                Err(_) => Host::Domain(name.to_string()),
            };
            (host, 2 + n as usize)
        }
        other => return Err(WireError::AddressType(other)),
    };
    let Some(p) = buf.get(at..at + 2) else {
        return Ok(None);
    };
    let port = u16::from_be_bytes([p[0], p[1]]);
    Ok(Some((Target { host, port }, at + 2)))
}

fn encode_address(out: &mut Vec<u8>, t: &Target) {
    match &t.host {
        Host::Ip(IpAddr::V4(ip)) => {
            out.push(ATYP_V4);
            out.extend_from_slice(&ip.octets());
        }
        Host::Ip(IpAddr::V6(ip)) => {
            out.push(ATYP_V6);
            out.extend_from_slice(&ip.octets());
        }
        Host::Domain(d) => {
            // A SOCKS domain holds at most 255 bytes; ours come from SOCKS, so they fit.
            let d = &d.as_bytes()[..d.len().min(255)];
            out.push(ATYP_DOMAIN);
            out.push(d.len() as u8);
            out.extend_from_slice(d);
        }
    }
    out.extend_from_slice(&t.port.to_be_bytes());
}

/// Reply: `VER REP RSV ATYP BND.ADDR BND.PORT`.
pub fn encode_reply(reply: Reply, bound: SocketAddr) -> Vec<u8> {
    let mut v = vec![VERSION, reply as u8, 0];
    encode_address(
        &mut v,
        &Target {
            host: Host::Ip(bound.ip()),
            port: bound.port(),
        },
    );
    v
}

/// One UDP ASSOCIATE datagram: `RSV(2) FRAG ATYP DST.ADDR DST.PORT DATA`.
#[derive(Debug, PartialEq, Eq)]
pub struct UdpPacket<'a> {
    pub frag: u8,
    pub target: Target,
    pub payload: &'a [u8],
}

pub fn parse_udp(d: &[u8]) -> Result<UdpPacket<'_>, WireError> {
    if d.len() < 4 {
        return Err(WireError::Truncated);
    }
    match parse_address(&d[3..])? {
        Some((target, n)) => Ok(UdpPacket {
            frag: d[2],
            target,
            payload: &d[3 + n..],
        }),
        None => Err(WireError::Truncated),
    }
}

pub fn encode_udp(target: &Target, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(3 + 1 + 18 + payload.len());
    v.extend_from_slice(&[0, 0, 0]);
    encode_address(&mut v, target);
    v.extend_from_slice(payload);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Target {
        Target::parse(s).unwrap()
    }

    /// Every proper prefix of a complete message asks for more bytes.
    fn needs_more_until_complete<T: std::fmt::Debug>(msg: &[u8], parse: fn(&[u8]) -> Parsed<T>) {
        for cut in 0..msg.len() {
            assert!(
                matches!(parse(&msg[..cut]), Ok(None)),
                "prefix of {cut} bytes of {msg:?}"
            );
        }
    }

    #[test]
    fn greeting() {
        let g = [5, 2, 0, 2, 0xaa];
        needs_more_until_complete(&g[..4], parse_greeting);
        assert_eq!(parse_greeting(&g).unwrap(), Some((vec![0, 2], 4)));
        assert_eq!(parse_greeting(&[4, 1, 0]), Err(WireError::Version(4)));
        assert_eq!(
            parse_greeting(b"GET / HTTP/1.1"),
            Err(WireError::Version(b'G'))
        );
        assert_eq!(parse_greeting(&[5, 0]), Err(WireError::NoMethods));
    }

    #[test]
    fn method_choice() {
        assert_eq!(choose_method(&[0], false), METHOD_NONE);
        assert_eq!(choose_method(&[2, 0], true), METHOD_USER_PASS);
        assert_eq!(choose_method(&[0], true), METHOD_REFUSED);
        assert_eq!(choose_method(&[2], false), METHOD_REFUSED);
        assert_eq!(method_reply(METHOD_REFUSED), [5, 0xff]);
    }

    #[test]
    fn auth() {
        let m = [1, 3, b'b', b'o', b'b', 2, b'p', b'w', 9];
        needs_more_until_complete(&m[..8], parse_auth);
        let (c, n) = parse_auth(&m).unwrap().unwrap();
        assert_eq!(n, 8);
        assert!(c.matches("bob", "pw"));
        assert!(!c.matches("bob", "pW"));
        assert!(!c.matches("bob", "pw2"));
        assert!(!c.matches("bo", "pw"));
        assert!(!c.matches("", ""));
        let (empty, _) = parse_auth(&[1, 0, 0]).unwrap().unwrap();
        assert!(empty.matches("", ""));
        assert_eq!(parse_auth(&[5, 1, 0]), Err(WireError::AuthVersion(5)));
        assert_eq!(auth_reply(true), [1, 0]);
        assert_eq!(auth_reply(false), [1, 1]);
    }

    #[test]
    fn requests_for_every_address_type() {
        let v4 = [5, 1, 0, 1, 127, 0, 0, 1, 0x1f, 0x90];
        needs_more_until_complete(&v4, parse_request);
        let (r, n) = parse_request(&v4).unwrap().unwrap();
        assert_eq!(
            (r.cmd, r.target, n),
            (Command::Connect, t("127.0.0.1:8080"), 10)
        );

        let mut v6 = vec![5, 3, 0, 4];
        v6.extend_from_slice(&"::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[0, 53]);
        needs_more_until_complete(&v6, parse_request);
        let (r, n) = parse_request(&v6).unwrap().unwrap();
        assert_eq!(
            (r.cmd, r.target, n),
            (Command::UdpAssociate, t("[::1]:53"), 22)
        );

        let mut dom = vec![5, 1, 0, 3, 11];
        dom.extend_from_slice(b"example.com");
        dom.extend_from_slice(&[1, 187, b'x']);
        needs_more_until_complete(&dom[..dom.len() - 1], parse_request);
        let (r, n) = parse_request(&dom).unwrap().unwrap();
        assert_eq!(r.target.host, Host::Domain("example.com".into()));
        assert_eq!((r.target.port, n), (443, dom.len() - 1));

        // An IP literal sent as a domain becomes the IP.
        let mut lit = vec![5, 1, 0, 3, 9];
        lit.extend_from_slice(b"127.0.0.1");
        lit.extend_from_slice(&[0, 80]);
        assert_eq!(
            parse_request(&lit).unwrap().unwrap().0.target,
            t("127.0.0.1:80")
        );

        let (r, _) = parse_request(&[5, 2, 0, 1, 0, 0, 0, 0, 0, 0])
            .unwrap()
            .unwrap();
        assert_eq!(r.cmd, Command::Bind);
    }

    #[test]
    fn bad_requests_map_to_replies() {
        let e = parse_request(&[5, 9, 0, 1]).unwrap_err();
        assert_eq!(
            (e.clone(), e.reply()),
            (WireError::Command(9), Reply::CommandNotSupported)
        );
        let e = parse_request(&[5, 1, 0, 2, 0]).unwrap_err();
        assert_eq!(
            (e.clone(), e.reply()),
            (WireError::AddressType(2), Reply::AddressTypeNotSupported)
        );
        let e = parse_request(&[4, 1, 0, 1]).unwrap_err();
        assert_eq!(e.reply(), Reply::GeneralFailure);
        assert_eq!(
            parse_request(&[5, 1, 0, 3, 0, 0, 80]),
            Err(WireError::Domain)
        );
        assert_eq!(
            parse_request(&[5, 1, 0, 3, 2, 0xff, 0xfe, 0, 80]),
            Err(WireError::Domain)
        );
    }

    #[test]
    fn replies() {
        assert_eq!(
            encode_reply(Reply::Succeeded, "10.1.2.3:1080".parse().unwrap()),
            [5, 0, 0, 1, 10, 1, 2, 3, 0x04, 0x38]
        );
        let r = encode_reply(Reply::HostUnreachable, "[::1]:7".parse().unwrap());
        assert_eq!(
            (&r[..4], r.len(), &r[20..]),
            (&[5, 4, 0, 4][..], 22, &[0, 7][..])
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(1928);
        for _ in 0..20_000 {
            let len = rng.random_range(0..300);
            let mut b: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            // Make the interesting paths likely: valid versions and small lengths.
            if let Some(x) = b.first_mut() {
                *x = [5, 1, 0, *x][rng.random_range(0..4)];
            }
            let _ = parse_greeting(&b);
            let _ = parse_auth(&b);
            let _ = parse_request(&b);
            let _ = parse_udp(&b);
            let _ = crate::proxy::vless::parse_request_header(&b);
        }
    }

    #[test]
    fn udp_header_roundtrip() {
        for target in ["127.0.0.1:53", "[2001:db8::1]:5353", "dns.example:53"] {
            let target = t(target);
            let d = encode_udp(&target, b"query");
            let p = parse_udp(&d).unwrap();
            assert_eq!((p.frag, &p.target, p.payload), (0, &target, &b"query"[..]));
            for cut in 0..d.len() - 5 {
                assert!(parse_udp(&d[..cut]).is_err(), "{cut}");
            }
        }
        let mut frag = encode_udp(&t("1.2.3.4:5"), b"x");
        frag[2] = 1;
        assert_eq!(parse_udp(&frag).unwrap().frag, 1);
        assert_eq!(
            parse_udp(&[0, 0, 0, 7, 1, 2]),
            Err(WireError::AddressType(7))
        );
        // An empty payload is a valid datagram.
        assert_eq!(
            parse_udp(&encode_udp(&t("1.2.3.4:5"), b""))
                .unwrap()
                .payload,
            b""
        );
    }
}
