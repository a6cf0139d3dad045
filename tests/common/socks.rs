//! A minimal blocking SOCKS5 client and small local servers (TCP echo, UDP echo) for the
//! inbound tests. Written independently of the library's parser on purpose.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

pub fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to the SOCKS inbound");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Greets offering no-auth, or username/password when `auth` is given, and authenticates.
pub fn greet(s: &mut TcpStream, auth: Option<(&str, &str)>) {
    match auth {
        None => s.write_all(&[5, 1, 0]).unwrap(),
        Some(_) => s.write_all(&[5, 1, 2]).unwrap(),
    }
    let mut m = [0u8; 2];
    s.read_exact(&mut m).expect("method reply");
    match auth {
        None => assert_eq!(m, [5, 0], "method reply"),
        Some((u, p)) => {
            assert_eq!(m, [5, 2], "method reply");
            s.write_all(&auth_message(u, p)).unwrap();
            let mut r = [0u8; 2];
            s.read_exact(&mut r).expect("auth reply");
            assert_eq!(r, [1, 0], "auth accepted");
        }
    }
}

pub fn auth_message(user: &str, pass: &str) -> Vec<u8> {
    let mut v = vec![1, user.len() as u8];
    v.extend_from_slice(user.as_bytes());
    v.push(pass.len() as u8);
    v.extend_from_slice(pass.as_bytes());
    v
}

fn addr_bytes(a: SocketAddr) -> Vec<u8> {
    let mut v = match a.ip() {
        IpAddr::V4(ip) => {
            let mut v = vec![1];
            v.extend_from_slice(&ip.octets());
            v
        }
        IpAddr::V6(ip) => {
            let mut v = vec![4];
            v.extend_from_slice(&ip.octets());
            v
        }
    };
    v.extend_from_slice(&a.port().to_be_bytes());
    v
}

pub fn request(cmd: u8, dest: SocketAddr) -> Vec<u8> {
    let mut v = vec![5, cmd, 0];
    v.extend(addr_bytes(dest));
    v
}

/// Reads a reply: (code, bound address). Only IPv4/IPv6 bound addresses are expected.
pub fn read_reply(s: &mut TcpStream) -> std::io::Result<(u8, SocketAddr)> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h)?;
    assert_eq!(h[0], 5, "reply version");
    let ip: IpAddr = match h[3] {
        1 => {
            let mut b = [0u8; 4];
            s.read_exact(&mut b)?;
            b.into()
        }
        4 => {
            let mut b = [0u8; 16];
            s.read_exact(&mut b)?;
            b.into()
        }
        t => panic!("unexpected bound address type {t}"),
    };
    let mut p = [0u8; 2];
    s.read_exact(&mut p)?;
    Ok((h[1], SocketAddr::new(ip, u16::from_be_bytes(p))))
}

/// Opens the control connection of a UDP ASSOCIATE (from 0.0.0.0:0: the app's address is
/// not known in advance); returns it and the relay address.
pub fn udp_associate(socks: SocketAddr) -> (TcpStream, SocketAddr) {
    let mut ctrl = tcp(socks);
    greet(&mut ctrl, None);
    ctrl.write_all(&request(3, "0.0.0.0:0".parse().unwrap()))
        .unwrap();
    let (code, relay) = read_reply(&mut ctrl).unwrap();
    assert_eq!(code, 0, "UDP ASSOCIATE accepted");
    (ctrl, relay)
}

/// A CONNECT through the inbound at `proxy`; panics unless it succeeds.
pub fn connect(proxy: SocketAddr, dest: SocketAddr, auth: Option<(&str, &str)>) -> TcpStream {
    let mut s = tcp(proxy);
    greet(&mut s, auth);
    s.write_all(&request(1, dest)).unwrap();
    let (code, _) = read_reply(&mut s).expect("CONNECT reply");
    assert_eq!(code, 0, "CONNECT to {dest} refused");
    s
}

/// Whether the peer closed: EOF or a reset, within the read timeout.
pub fn is_closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

/// A TCP echo server on loopback: each connection echoes until EOF, then closes.
pub fn tcp_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// Sends `msg` and reads back exactly as many bytes.
pub fn echo_once(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("echo");
    assert_eq!(back, msg);
}

/// A UDP echo server on loopback.
pub fn udp_echo() -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut b = vec![0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut b) {
            let _ = sock.send_to(&b[..n], from);
        }
    });
    addr
}

/// A SOCKS5 UDP datagram to `dest`.
pub fn udp_datagram(dest: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 0];
    v.extend(addr_bytes(dest));
    v.extend_from_slice(payload);
    v
}

/// Splits a SOCKS5 UDP reply into (source, payload).
pub fn parse_udp_reply(d: &[u8]) -> (SocketAddr, Vec<u8>) {
    assert_eq!(&d[..3], &[0, 0, 0], "RSV and FRAG");
    let (ip, at): (IpAddr, usize) = match d[3] {
        1 => (<[u8; 4]>::try_from(&d[4..8]).unwrap().into(), 8),
        4 => (<[u8; 16]>::try_from(&d[4..20]).unwrap().into(), 20),
        t => panic!("unexpected address type {t} in a UDP reply"),
    };
    let port = u16::from_be_bytes([d[at], d[at + 1]]);
    (SocketAddr::new(ip, port), d[at + 2..].to_vec())
}
