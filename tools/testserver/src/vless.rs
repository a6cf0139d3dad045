//! The VLESS target: reads the request header (protocol doc §8) from the start of the upload,
//! then relays to the destination it names — a TCP connection for command TCP, a connected
//! UDP socket with length-prefixed datagrams for command UDP, XUDP sessions for command Mux
//! (see `xudp`). The 2-byte response header
//! goes out with the first downstream payload, as Xray sends it, or alone when the
//! destination closes without a byte or cannot be reached (Xray flushes it when the link
//! closes). A bad header or an unknown user ends the session without a byte, like Xray
//! without fallbacks. Only loopback
//! destinations are served, so a test server can never be used as an open proxy.

use super::download::Download;
use super::events::Recorder;
use super::quic::write_outcome;
use super::run_end::RunEnd;
use super::session::Upload;
use bytes::{Bytes, BytesMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use xhttp_mobile::proxy::vless::{self, Command, Host, Target, UdpDeframer};

const RESPONSE_HEADER: [u8; 2] = [0, 0];
const READ_BUF: usize = 64 * 1024;

pub(crate) async fn run(
    id: &[u8; 16],
    upload: &mut Upload,
    out: &mut Download,
    rec: &Recorder,
) -> RunEnd {
    let mut buf = BytesMut::new();
    let (req, used) = loop {
        match vless::parse_request_header(&buf) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) => {}
            Err(e) => return RunEnd::TargetFailed(e.to_string()),
        }
        match upload.next().await {
            Ok(Some(b)) => buf.extend_from_slice(&b),
            Ok(None) => return RunEnd::UploadDone,
            Err(e) => return RunEnd::UploadFailed(e),
        }
    };
    if &req.id != id {
        return RunEnd::TargetFailed(format!(
            "VLESS request: unknown user {}",
            hex::encode(req.id)
        ));
    }
    let first = buf.split_off(used).freeze();
    let mut down = Downstream {
        out,
        rec,
        header_sent: false,
    };
    match (req.cmd, &req.target) {
        (Command::Tcp, Some(t)) => tcp(t, first, upload, &mut down).await,
        (Command::Udp, Some(t)) => udp(t, first, upload, &mut down).await,
        (Command::Mux, _) => super::xudp::run(first, upload, &mut down).await,
        (_, None) => RunEnd::TargetFailed("VLESS request without a destination".into()),
    }
}

/// The response body, prefixed once with the response header.
pub(crate) struct Downstream<'a> {
    out: &'a mut Download,
    rec: &'a Recorder,
    header_sent: bool,
}

impl Downstream<'_> {
    pub(crate) async fn send(&mut self, payload: &[u8]) -> Result<(), RunEnd> {
        let mut b = Vec::with_capacity(2 + payload.len());
        if !self.header_sent {
            b.extend_from_slice(&RESPONSE_HEADER);
            self.header_sent = true;
        }
        b.extend_from_slice(payload);
        self.out
            .send_data(Bytes::from(b))
            .await
            .map_err(|e| RunEnd::WriteFailed(write_outcome(&e)))?;
        self.rec.downloaded(payload.len());
        Ok(())
    }

    /// A destination that closes without a byte still answers the header.
    async fn end(&mut self) -> RunEnd {
        if !self.header_sent {
            if let Err(e) = self.send(&[]).await {
                return e;
            }
        }
        RunEnd::TargetDone
    }
}

pub(crate) async fn resolve(t: &Target) -> Result<SocketAddr, RunEnd> {
    let addr = match &t.host {
        Host::Ip(ip) => SocketAddr::new(*ip, t.port),
        Host::Domain(d) => tokio::net::lookup_host((d.as_str(), t.port))
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| RunEnd::TargetFailed(format!("cannot resolve {t}")))?,
    };
    if !addr.ip().is_loopback() && !is_local(addr.ip()) {
        return Err(RunEnd::TargetFailed(format!(
            "destination {t} is not loopback; the test server relays to loopback only"
        )));
    }
    Ok(addr)
}

/// An address of this host (in the server's network namespace): the kernel delivers to it
/// locally, so relaying there sends nothing off the machine (the TUN test's origin lives on
/// such addresses). Binding succeeds only for a local address.
pub(crate) fn is_local(ip: std::net::IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Upload → destination until the upload ends (then half-close), while the destination's
/// bytes go down; ends when the destination closes.
async fn tcp(t: &Target, first: Bytes, upload: &mut Upload, down: &mut Downstream<'_>) -> RunEnd {
    let addr = match resolve(t).await {
        Ok(a) => a,
        Err(e) => return e,
    };
    let stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            // As Xray: a failed dial closes the inbound's writer, which flushes the response
            // header, then the response ends. The client learns no more than that the flow
            // ended without a byte.
            if let Err(w) = down.send(&[]).await {
                return w;
            }
            return RunEnd::TargetFailed(format!("connect to {t}: {e}"));
        }
    };
    let (mut rd, mut wr) = stream.into_split();
    let up = async {
        if !first.is_empty() {
            wr.write_all(&first)
                .await
                .map_err(|e| RunEnd::TargetFailed(format!("write to {t}: {e}")))?;
        }
        loop {
            match upload.next().await {
                Ok(Some(b)) => wr
                    .write_all(&b)
                    .await
                    .map_err(|e| RunEnd::TargetFailed(format!("write to {t}: {e}")))?,
                Ok(None) => {
                    let _ = wr.shutdown().await;
                    return Ok(());
                }
                Err(e) => return Err(RunEnd::UploadFailed(e)),
            }
        }
    };
    let dn = async {
        let mut buf = vec![0u8; READ_BUF];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => return down.end().await,
                Ok(n) => {
                    if let Err(e) = down.send(&buf[..n]).await {
                        return e;
                    }
                }
                Err(e) => return RunEnd::TargetFailed(format!("read from {t}: {e}")),
            }
        }
    };
    tokio::pin!(up, dn);
    let mut up_done = false;
    loop {
        tokio::select! {
            r = &mut up, if !up_done => match r {
                Ok(()) => up_done = true,
                Err(e) => return e,
            },
            end = &mut dn => return end,
        }
    }
}

/// Each uploaded datagram goes to the destination; each reply comes back framed. Ends with
/// the upload (UDP has no half-close).
async fn udp(t: &Target, first: Bytes, upload: &mut Upload, down: &mut Downstream<'_>) -> RunEnd {
    let addr = match resolve(t).await {
        Ok(a) => a,
        Err(e) => return e,
    };
    let any: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = match UdpSocket::bind(any).await {
        Ok(s) => s,
        Err(e) => return RunEnd::TargetFailed(format!("UDP bind for {t}: {e}")),
    };
    if let Err(e) = sock.connect(addr).await {
        return RunEnd::TargetFailed(format!("UDP connect to {t}: {e}"));
    }
    let sock = &sock;
    let up = async {
        let mut frames = UdpDeframer::default();
        frames.push(&first);
        loop {
            while let Some(d) = frames.next_datagram() {
                // Like any UDP relay: a datagram the destination refuses is lost, not fatal.
                if let Err(e) = sock.send(&d).await {
                    log::debug!("testserver: UDP send to {t}: {e}");
                }
            }
            match upload.next().await {
                Ok(Some(b)) => frames.push(&b),
                Ok(None) => return RunEnd::UploadDone,
                Err(e) => return RunEnd::UploadFailed(e),
            }
        }
    };
    let dn = async {
        let mut buf = vec![0u8; READ_BUF];
        loop {
            match sock.recv(&mut buf).await {
                Ok(n) => {
                    let framed = match vless::frame_udp(&buf[..n]) {
                        Ok(f) => f,
                        Err(_) => continue,
                    };
                    if let Err(e) = down.send(&framed).await {
                        return e;
                    }
                }
                // ICMP unreachable surfaces here on a connected socket; keep listening.
                Err(e) => {
                    log::debug!("testserver: UDP recv from {t}: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    };
    tokio::select! {
        end = up => end,
        end = dn => end,
    }
}
