//! What a passive observer sees of this client's QUIC and HTTP/3, in one place. Xray's own
//! client is the crowd we hide in: quic-go's HTTP/3 client (the apernet fork Xray pins) as
//! Xray's XHTTP dialer configures it. Every choice below names the behaviour it mirrors;
//! what the crates cannot match is listed in `docs/interop.md`.

use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// Xray sets `MaxIdleTimeout` to `net.ConnIdleTimeout` (300 s) for its H3 client. (The
/// smaller of the two peers' values applies: 30 s against an Xray server.)
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// quic-go's `HandshakeIdleTimeout` is 5 s of silence; quinn has no separate handshake
/// timer (its idle timeout, 300 s here, would apply), so the whole handshake is bounded
/// instead, with room for the initial retransmissions of a lossy path.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// quic-go's initial stream receive window (`DefaultInitialMaxStreamData`, 2 MiB in the
/// fork Xray pins), sent as `initial_max_stream_data_*`. quic-go grows it up to 6 MiB;
/// quinn's stays fixed, which also bounds memory on iOS.
pub const STREAM_WINDOW: u32 = 2 << 20;

/// quic-go's initial connection window, 1.5 × the stream window (`initial_max_data`).
pub const CONNECTION_WINDOW: u32 = 3 << 20;

/// quic-go's `max_udp_payload_size` transport parameter (`MaxPacketBufferSize`).
pub const MAX_UDP_PAYLOAD: u16 = 1452;

/// quic-go's `InitialPacketSize`: client Initial datagrams are padded to 1280 bytes
/// (quinn pads to 1200 unless told otherwise).
pub const INITIAL_PACKET_SIZE: u16 = 1280;

/// quic-go's HTTP/3 client sends one setting, `SETTINGS_MAX_FIELD_SECTION_SIZE`, with its
/// `defaultMaxResponseHeaderBytes` (10 MiB).
pub const MAX_FIELD_SECTION_SIZE: u64 = 10 << 20;

/// quic-go's client picks the initial destination connection id's length at random in
/// 8..=20 bytes (`GenerateConnectionIDForInitial`); quinn's is always 20.
pub const INITIAL_DCID_LEN: std::ops::RangeInclusive<usize> = 8..=20;

/// Path MTU discovery: Xray turns it off everywhere but Linux, Windows and macOS
/// (`runtime.GOOS`), so on Android and iOS. quinn's probing goes up to 1452 bytes like
/// quic-go's.
pub const PMTUD: bool = !cfg!(any(target_os = "android", target_os = "ios"));

/// The default `user-agent` of quic-go's HTTP/3 client, sent when none is set (Xray's
/// `golang` magic word deletes its own).
pub const DEFAULT_USER_AGENT: &str = "quic-go HTTP/3";

/// The UDP endpoint of one connection. quic-go dials with a fresh packet conn per
/// connection (`quic.DialEarly`), which lets its client use zero-length connection ids:
/// packets toward us then carry no id at all. One endpoint per connection makes that safe
/// for us too (quinn routes such packets by the remote address). Migration still works:
/// the server keeps sending to our new address once we move (`rebind`).
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut c = quinn::EndpointConfig::default();
    c.cid_generator(|| Box::new(ZeroLengthCid));
    // In range by construction (1200..=65527).
    let _ = c.max_udp_payload_size(MAX_UDP_PAYLOAD);
    // quic-go neither greases the QUIC bit nor sends the grease_quic_bit parameter.
    c.grease_quic_bit(false);
    c
}

/// Zero-length connection ids for every connection of the endpoint.
struct ZeroLengthCid;

impl quinn::ConnectionIdGenerator for ZeroLengthCid {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&[])
    }

    fn cid_len(&self) -> usize {
        0
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The client's transport parameters and loss recovery, like quic-go's client.
pub fn transport_config(keep_alive: Option<Duration>) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(keep_alive);
    t.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    t.receive_window(CONNECTION_WINDOW.into());
    t.stream_receive_window(STREAM_WINDOW.into());
    // quic-go/http3's client sets MaxIncomingStreams to -1: the server may open no
    // bidirectional stream; 100 unidirectional ones (control, QPACK, push) as quic-go.
    t.max_concurrent_bidi_streams(0u32.into());
    t.max_concurrent_uni_streams(100u32.into());
    // No QUIC datagrams: quic-go sends no max_datagram_frame_size parameter unless
    // EnableDatagrams, which Xray never sets.
    t.datagram_receive_buffer_size(None);
    // quic-go never sets the spin bit.
    t.allow_spin(false);
    t.initial_mtu(INITIAL_PACKET_SIZE);
    t.min_mtu(INITIAL_PACKET_SIZE);
    if !PMTUD {
        t.mtu_discovery_config(None);
    }
    t
}

/// Congestion control of our sending side (the upload). Xray's client runs Hysteria's BBR
/// (profile `standard`) on quic-go; quinn offers Cubic (its default) and a BBR of its own.
/// Which one we use is measured, not assumed: see `examples/congestion.rs` and
/// BENCHMARKS.md.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Congestion {
    #[default]
    Cubic,
    Bbr,
}

impl Congestion {
    pub(crate) fn apply(self, t: &mut quinn::TransportConfig) {
        match self {
            Congestion::Cubic => {
                t.congestion_controller_factory(
                    Arc::new(quinn::congestion::CubicConfig::default()),
                );
            }
            Congestion::Bbr => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
            }
        }
    }
}

/// A client config whose initial destination connection id has quic-go's random length.
pub fn client_config(crypto: Arc<dyn quinn::crypto::ClientConfig>) -> quinn::ClientConfig {
    let mut cc = quinn::ClientConfig::new(crypto);
    cc.initial_dst_cid_provider(Arc::new(|| {
        use rand::Rng;
        let mut rng = rand::rng();
        let mut id = [0u8; 20];
        let len = rng.random_range(INITIAL_DCID_LEN);
        rng.fill(&mut id[..len]);
        quinn::ConnectionId::new(&id[..len])
    }));
    cc
}

/// The HTTP/3 client: no GREASE (quic-go sends none) and quic-go's field-section limit.
/// h3 0.0.8 always adds four more settings with value 0 and opens the two QPACK streams;
/// quic-go sends one setting and opens neither (see docs/interop.md).
pub fn h3_builder() -> h3::client::Builder {
    let mut b = h3::client::builder();
    b.send_grease(false)
        .max_field_section_size(MAX_FIELD_SECTION_SIZE);
    b
}

/// What a request carries after its head, for the headers Go's HTTP/3 client derives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// No body (`Request.Body == nil`): a GET, or packet-up data in headers or cookies.
    None,
    /// A body of known length (packet-up data in the body).
    Sized(u64),
    /// A streaming body of unknown length (stream-up, stream-one).
    Streaming,
}

/// Marks a request whose `accept-encoding: gzip` was added here, so a gzip-encoded
/// response is decoded transparently, as quic-go does in that case only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestedGzip;

/// The headers quic-go's request writer adds or drops (`encodeHeaders`):
/// - connection-specific fields and a user `content-length` are never sent;
/// - `content-length` is sent for a known body length above 0, and `0` for a bodyless
///   POST, PUT or PATCH (`shouldSendReqContentLength`);
/// - `accept-encoding: gzip` unless the request has an `Accept-Encoding` or a `Range`, or is
///   a HEAD (then a gzip answer is decoded, see [`RequestedGzip`]);
/// - one `user-agent`: the first if several, none if empty, quic-go's default if absent.
pub fn go_request_headers(req: &mut http::Request<()>, body: Body) {
    use http::header::{self, HeaderValue};
    let method = req.method().clone();
    let h = req.headers_mut();
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::CONTENT_LENGTH,
        header::HOST,
        http::HeaderName::from_static("keep-alive"),
        http::HeaderName::from_static("proxy-connection"),
    ] {
        h.remove(name);
    }
    let length = match body {
        Body::Sized(n) if n > 0 => Some(n),
        Body::Streaming => None,
        _ => matches!(method.as_str(), "POST" | "PUT" | "PATCH").then_some(0),
    };
    if let Some(n) = length {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    let gzip = method != http::Method::HEAD
        && !h.contains_key(header::ACCEPT_ENCODING)
        && !h.contains_key(header::RANGE);
    if gzip {
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
    }
    match h.get(header::USER_AGENT).cloned() {
        None => {
            h.insert(
                header::USER_AGENT,
                HeaderValue::from_static(DEFAULT_USER_AGENT),
            );
        }
        Some(first) if first.is_empty() => {
            h.remove(header::USER_AGENT);
        }
        Some(first) => {
            h.insert(header::USER_AGENT, first);
        }
    }
    if gzip {
        req.extensions_mut().insert(RequestedGzip);
    }
}

/// Whether a response body must be gunzipped before use: we asked for gzip ourselves and
/// the response says it is gzip (quic-go's `requestedGzip && Content-Encoding == gzip`).
pub fn gzip_response(requested: bool, resp: &http::Response<()>) -> bool {
    requested
        && resp
            .headers()
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"))
}

/// An incremental gzip decoder for a response body that arrives in pieces (a CDN that
/// compresses the download): decoded bytes come out as compressed ones go in, and the
/// end of the body must be the end of the gzip stream (members may follow each other, as
/// Go's reader accepts).
pub struct Gunzip {
    inner: flate2::write::MultiGzDecoder<Vec<u8>>,
}

impl Default for Gunzip {
    fn default() -> Self {
        Gunzip {
            inner: flate2::write::MultiGzDecoder::new(Vec::new()),
        }
    }
}

impl Gunzip {
    /// Feeds compressed bytes; returns what they decoded to (maybe nothing yet).
    pub fn feed(&mut self, compressed: &[u8]) -> std::io::Result<Bytes> {
        use std::io::Write;
        self.inner.write_all(compressed)?;
        self.inner.flush()?;
        Ok(Bytes::from(std::mem::take(self.inner.get_mut())))
    }

    /// The body ended: the last decoded bytes, or an error if the gzip stream is cut.
    pub fn finish(self) -> std::io::Result<Bytes> {
        Ok(Bytes::from(self.inner.finish()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::builder().method(method).uri("https://h/p");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn get<'a>(r: &'a http::Request<()>, k: &str) -> Option<&'a str> {
        r.headers().get(k).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn content_length_like_go() {
        let cases = [
            ("POST", Body::Sized(1234), Some("1234")),
            ("POST", Body::None, Some("0")),
            ("PUT", Body::None, Some("0")),
            ("GET", Body::None, None),
            ("GET", Body::Sized(5), Some("5")),
            ("POST", Body::Streaming, None),
        ];
        for (method, body, want) in cases {
            let mut r = req(method, &[("content-length", "99")]);
            go_request_headers(&mut r, body);
            assert_eq!(get(&r, "content-length"), want, "{method} {body:?}");
        }
    }

    #[test]
    fn accept_encoding_and_user_agent_like_go() {
        let mut r = req("GET", &[("user-agent", "A"), ("connection", "close")]);
        go_request_headers(&mut r, Body::None);
        assert_eq!(get(&r, "accept-encoding"), Some("gzip"));
        assert!(r.extensions().get::<RequestedGzip>().is_some());
        assert_eq!(get(&r, "user-agent"), Some("A"));
        assert_eq!(get(&r, "connection"), None);
        // The user's own Accept-Encoding (or a Range) is left alone and not decoded.
        let mut r = req("GET", &[("accept-encoding", "br")]);
        go_request_headers(&mut r, Body::None);
        assert_eq!(get(&r, "accept-encoding"), Some("br"));
        assert!(r.extensions().get::<RequestedGzip>().is_none());
        assert_eq!(get(&r, "user-agent"), Some(DEFAULT_USER_AGENT));
        let mut r = req("POST", &[("range", "bytes=0-"), ("user-agent", "")]);
        go_request_headers(&mut r, Body::Streaming);
        assert_eq!(get(&r, "accept-encoding"), None);
        assert_eq!(get(&r, "user-agent"), None);
        let mut r = req("HEAD", &[]);
        go_request_headers(&mut r, Body::None);
        assert_eq!(get(&r, "accept-encoding"), None);
    }

    #[test]
    fn gzip_bodies_decode_in_pieces_and_a_cut_one_fails() {
        use std::io::Write;
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&data).unwrap();
        let mut zipped = z.finish().unwrap();
        // A second member, as a concatenating proxy may produce.
        let mut z2 = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        z2.write_all(b"tail").unwrap();
        zipped.extend(z2.finish().unwrap());
        let mut want = data.clone();
        want.extend_from_slice(b"tail");
        let mut g = Gunzip::default();
        let mut got = Vec::new();
        for piece in zipped.chunks(1000) {
            got.extend_from_slice(&g.feed(piece).unwrap());
        }
        got.extend_from_slice(&g.finish().unwrap());
        assert_eq!(got, want);

        let mut g = Gunzip::default();
        let _ = g.feed(&zipped[..zipped.len() / 2]).unwrap();
        assert!(g.finish().is_err(), "a cut gzip body must not end cleanly");

        let resp = |enc: Option<&str>| {
            let mut b = http::Response::builder();
            if let Some(e) = enc {
                b = b.header("content-encoding", e);
            }
            b.body(()).unwrap()
        };
        assert!(gzip_response(true, &resp(Some("gzip"))));
        assert!(!gzip_response(false, &resp(Some("gzip"))));
        assert!(!gzip_response(true, &resp(None)));
    }

    #[test]
    fn transport_parameters_like_quic_go() {
        let t = transport_config(Some(Duration::from_secs(10)));
        let dbg = format!("{t:?}");
        for want in [
            "max_concurrent_bidi_streams: 0,",
            "max_concurrent_uni_streams: 100,",
            "max_idle_timeout: Some(300000)",
            "min_mtu: 1280",
            "allow_spin: false",
            "datagram_receive_buffer_size: None",
            "initial_mtu: 1280",
            "stream_receive_window: 2097152",
            "receive_window: 3145728",
        ] {
            assert!(dbg.contains(want), "{want} not in {dbg}");
        }
        assert_eq!(PMTUD, !cfg!(any(target_os = "android", target_os = "ios")));
        let mut g = ZeroLengthCid;
        use quinn::ConnectionIdGenerator;
        assert_eq!((g.cid_len(), g.generate_cid().len()), (0, 0));
    }
}
