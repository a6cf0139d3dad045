//! Request shapes (protocol doc §2.2–§2.5): one function builds every request a tunnel
//! sends, whatever the mode, so placement, padding and header rules live in one place.

use crate::config::{DataPlacement, Placement, XhttpSettings};
use crate::error::{Error, RequestLabel, Result};
use crate::transport::surface::{self, Body};
use crate::xhttp::browser;
use crate::xhttp::escape::{escape, escape_invalid_query, escape_path, unescape_query};
use crate::xhttp::padding::PaddingPlacement;
use base64::Engine;
use rand::Rng;

/// The requests of a tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// The GET whose response body is the download (packet-up, stream-up).
    StreamDown,
    /// One packet-up upload with its sequence number.
    PacketUp { seq: u64 },
    /// The single streaming upload of stream-up.
    StreamUp,
    /// The single request of stream-one (upload in the body, download in the response).
    StreamOne,
}

impl RequestKind {
    pub fn role(self) -> String {
        match self {
            RequestKind::StreamDown => "stream-down".into(),
            RequestKind::PacketUp { seq } => format!("packet-up #{seq}"),
            RequestKind::StreamUp => "stream-up".into(),
            RequestKind::StreamOne => "stream-one".into(),
        }
    }
}

/// Builds requests for one destination. Everything that does not change per request
/// (normalized path, base query, default headers) is computed once.
#[derive(Clone, Debug)]
pub struct Shaper {
    settings: XhttpSettings,
    authority: String,
    /// The path before session and seq, unescaped (Go's `URL.Path`).
    path: String,
    /// Whatever followed `?` in the configured path, sent as is unless a key is added.
    raw_query: String,
    headers: Vec<(String, String)>,
}

/// The query of a request being built: the configured one as written, until something is
/// added, which makes Go parse and re-encode it (`url.Values.Encode`, keys sorted).
enum Query {
    Raw(String),
    Pairs(Vec<(String, String)>),
}

impl Query {
    /// Go's `q := URL.Query(); q.Set(key, value); URL.RawQuery = q.Encode()`.
    fn set(&mut self, key: &str, value: &str) {
        if let Query::Raw(raw) = self {
            *self = Query::Pairs(parse_query(raw));
        }
        if let Query::Pairs(pairs) = self {
            pairs.retain(|(k, _)| k != key);
            pairs.push((key.to_string(), value.to_string()));
        }
    }

    fn encode(self) -> String {
        match self {
            Query::Raw(raw) => escape_invalid_query(&raw),
            Query::Pairs(pairs) => encode_query(pairs),
        }
    }
}

/// Go's `Header.Set`: replaces every field of that name (case-insensitively), so a user
/// header never goes out beside ours.
fn set_header(headers: &mut Vec<(String, String)>, name: &str, value: String) {
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    headers.push((name.to_string(), value));
}

/// Go's `Request.AddCookie`: appended to the first `Cookie` field with `; ` (a user's
/// `Cookie` header included), which then replaces them all.
fn add_cookie(headers: &mut Vec<(String, String)>, name: &str, value: &str) {
    let pair = format!("{name}={value}");
    let joined = match headers
        .iter()
        .find(|(k, v)| k.eq_ignore_ascii_case("cookie") && !v.is_empty())
    {
        Some((_, old)) => format!("{old}; {pair}"),
        None => pair,
    };
    set_header(headers, "Cookie", joined);
}

impl Shaper {
    pub fn new(settings: &XhttpSettings, authority: &str) -> Shaper {
        let mut headers = settings.headers.clone();
        browser::apply_defaults(&mut headers);
        Shaper {
            path: settings.request_path(),
            raw_query: settings.normalized_query().to_string(),
            authority: authority.to_string(),
            headers,
            settings: settings.clone(),
        }
    }

    pub fn settings(&self) -> &XhttpSettings {
        &self.settings
    }

    /// Whether a packet-up chunk travels in the request body (else in headers/cookies).
    pub fn data_in_body(&self) -> bool {
        matches!(
            self.settings.uplink_data_placement,
            DataPlacement::Auto | DataPlacement::Body
        )
    }

    fn method(&self, kind: RequestKind) -> &str {
        match kind {
            RequestKind::StreamDown => "GET",
            _ => &self.settings.uplink_http_method,
        }
    }

    /// Names a request for error messages without building it. The session id is shown as
    /// `<session>`: error texts end up in app logs, and the id lets anyone who reads it post
    /// into the live session.
    pub fn label(&self, kind: RequestKind, session: Option<&str>) -> RequestLabel {
        let target = match self.head(kind, session, None, String::new(), &mut rand::rng()) {
            Ok(r) => r
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            Err(_) => self.path.clone(),
        };
        let target = match session.filter(|s| !s.is_empty()) {
            Some(id) => target.replace(id, "<session>"),
            None => target,
        };
        RequestLabel {
            method: self.method(kind).to_string(),
            target,
            role: kind.role(),
        }
    }

    /// Builds the request head. `session` is `None` only for stream-one. `data` is the
    /// packet-up chunk: placed in headers or cookies here, or sent as the body by the
    /// caller (see [`Self::data_in_body`]), whose length the head then announces.
    pub fn build<R: Rng + ?Sized>(
        &self,
        kind: RequestKind,
        session: Option<&str>,
        data: Option<&[u8]>,
        rng: &mut R,
    ) -> Result<http::Request<()>> {
        let padding = self.settings.padding.generate(rng);
        self.head(kind, session, data, padding, rng)
    }

    /// Xray's `FillStreamRequest` / `FillPacketRequest`, step for step: the user's headers
    /// with the browser defaults, then (packet-up) the data in headers or cookies, then the
    /// padding, then session and seq, then the gRPC content type. Everything Xray *sets*
    /// replaces a user header of the same name; cookies are appended.
    fn head<R: Rng + ?Sized>(
        &self,
        kind: RequestKind,
        session: Option<&str>,
        data: Option<&[u8]>,
        padding: String,
        rng: &mut R,
    ) -> Result<http::Request<()>> {
        let s = &self.settings;
        let mut path = self.path.clone();
        let mut query = Query::Raw(self.raw_query.clone());
        let mut headers: Vec<(String, String)> = self.headers.clone();

        if let (Some(data), false) = (data, self.data_in_body()) {
            let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data);
            let mut rest = encoded.as_str();
            let mut i = 0;
            while !rest.is_empty() {
                let n = (s.uplink_chunk_size.draw(rng).max(1) as usize).min(rest.len());
                let (piece, tail) = rest.split_at(n);
                if s.uplink_data_placement == DataPlacement::Cookie {
                    add_cookie(&mut headers, &format!("{}_{i}", s.uplink_data_key), piece);
                } else {
                    set_header(
                        &mut headers,
                        &format!("{}-{i}", s.uplink_data_key),
                        piece.to_string(),
                    );
                }
                rest = tail;
                i += 1;
            }
        }

        // Padding is drawn per request and placed as configured (§2.4). The URL in a
        // `queryInHeader` value is the request's before session and seq, its query replaced.
        let (placement, header, key, _) = s.padding.effective();
        match placement {
            PaddingPlacement::QueryInHeader => set_header(
                &mut headers,
                header,
                format!(
                    "https://{}{}?{}={}",
                    self.authority,
                    escape_path(&self.path),
                    key,
                    padding
                ),
            ),
            PaddingPlacement::Header => set_header(&mut headers, header, padding),
            PaddingPlacement::Query => query.set(key, &padding),
            PaddingPlacement::Cookie => add_cookie(&mut headers, key, &padding),
        }

        let seq = match kind {
            RequestKind::PacketUp { seq } => Some(seq.to_string()),
            _ => None,
        };
        let meta = [
            (session, s.session_placement, &s.session_key),
            (seq.as_deref(), s.seq_placement, &s.seq_key),
        ];
        for (value, placement, key) in meta {
            let Some(value) = value else { continue };
            match placement {
                Placement::Path => {
                    if !path.ends_with('/') {
                        path.push('/');
                    }
                    path.push_str(value);
                }
                Placement::Query => query.set(key, value),
                Placement::Header => set_header(&mut headers, key, value.to_string()),
                Placement::Cookie => add_cookie(&mut headers, key, value),
            }
        }

        if matches!(kind, RequestKind::StreamUp | RequestKind::StreamOne) && !s.no_grpc_header {
            set_header(&mut headers, "Content-Type", "application/grpc".into());
        }

        let query = query.encode();
        let mut target = escape_path(&path);
        if !query.is_empty() {
            target.push('?');
            target.push_str(&query);
        }
        let uri = format!("https://{}{}", self.authority, target);
        let mut b = http::Request::builder().method(self.method(kind)).uri(&uri);
        for (k, v) in &headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let mut req = b.body(()).map_err(|e| {
            Error::config(
                "xhttpSettings",
                format!("cannot build request {uri:?}: {e} (check host, path and headers)"),
            )
        })?;
        let body = match kind {
            RequestKind::StreamDown => Body::None,
            RequestKind::StreamUp | RequestKind::StreamOne => Body::Streaming,
            RequestKind::PacketUp { .. } if self.data_in_body() => {
                Body::Sized(data.map_or(0, |d| d.len() as u64))
            }
            RequestKind::PacketUp { .. } => Body::None,
        };
        surface::go_request_headers(&mut req, body);
        Ok(req)
    }
}

/// Go's `url.ParseQuery` for the base query: `&`-separated, `+` is a space; a pair with a
/// `;` or a bad escape is dropped, as Go drops it (with an error nobody reads).
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty() && !p.contains(';'))
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((unescape_query(k)?, unescape_query(v)?))
        })
        .collect()
}

/// Go's `url.Values.Encode`: keys sorted (values of one key keep their order), escaped
/// with `QueryEscape`.
pub fn encode_query(mut pairs: Vec<(String, String)>) -> String {
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::XhttpSettings;
    use serde_json::json;

    fn shaper(v: serde_json::Value) -> Shaper {
        Shaper::new(&XhttpSettings::from_json("x", &v).unwrap(), "example.com")
    }

    fn hdr<'a>(r: &'a http::Request<()>, k: &str) -> Option<&'a str> {
        r.headers().get(k).map(|v| v.to_str().unwrap())
    }

    fn target(r: &http::Request<()>) -> String {
        r.uri().path_and_query().unwrap().to_string()
    }

    #[test]
    fn default_shapes_per_mode() {
        let s = shaper(json!({"path": "/xh"}));
        let mut rng = rand::rng();
        let get = s
            .build(RequestKind::StreamDown, Some("S"), None, &mut rng)
            .unwrap();
        assert_eq!(get.method(), "GET");
        assert_eq!(target(&get), "/xh/S");
        assert_eq!(hdr(&get, "content-type"), None);
        let referer = hdr(&get, "referer").unwrap();
        let pad = referer
            .strip_prefix("https://example.com/xh/?x_padding=")
            .unwrap();
        assert!((100..1000).contains(&pad.len()) && pad.bytes().all(|c| c == b'X'));

        let post = s
            .build(RequestKind::PacketUp { seq: 7 }, Some("S"), None, &mut rng)
            .unwrap();
        assert_eq!(
            (post.method().as_str(), target(&post).as_str()),
            ("POST", "/xh/S/7")
        );
        assert_eq!(hdr(&post, "content-type"), None);
        // What Go's HTTP/3 client adds: the body's length, and gzip.
        let post = s
            .build(
                RequestKind::PacketUp { seq: 8 },
                Some("S"),
                Some(&[1u8; 1234][..]),
                &mut rng,
            )
            .unwrap();
        assert_eq!(hdr(&post, "content-length"), Some("1234"));
        assert_eq!(hdr(&post, "accept-encoding"), Some("gzip"));
        assert_eq!(hdr(&get, "content-length"), None);

        let up = s
            .build(RequestKind::StreamUp, Some("S"), None, &mut rng)
            .unwrap();
        assert_eq!(target(&up), "/xh/S");
        assert_eq!(hdr(&up, "content-type"), Some("application/grpc"));

        let one = s
            .build(RequestKind::StreamOne, None, None, &mut rng)
            .unwrap();
        assert_eq!(
            (one.method().as_str(), target(&one).as_str()),
            ("POST", "/xh/")
        );
        assert_eq!(hdr(&one, "content-type"), Some("application/grpc"));
        assert_eq!(hdr(&one, "content-length"), None);
        assert!(hdr(&one, "user-agent").unwrap().contains("Chrome/"));
        assert_eq!(one.uri().authority().unwrap().as_str(), "example.com");
    }

    #[test]
    fn path_normalization_and_base_query() {
        let s = shaper(json!({"path": "sh?ed=2048&a=b"}));
        let r = s
            .build(RequestKind::StreamDown, Some("S"), None, &mut rand::rng())
            .unwrap();
        assert_eq!(target(&r), "/sh/S?ed=2048&a=b");
        // Query placement re-encodes the whole query, sorted, like Go's url.Values.
        let s = shaper(
            json!({"path": "/q?z=1&a=x y", "sessionIDPlacement": "query", "seqPlacement": "query"}),
        );
        assert_eq!(s.settings().normalized_path(), "/q");
        let r = s
            .build(
                RequestKind::PacketUp { seq: 3 },
                Some("S"),
                None,
                &mut rand::rng(),
            )
            .unwrap();
        // Sent with a trailing slash: servers before v26.7.11 check the prefix `/q/`.
        assert_eq!(target(&r), "/q/?a=x+y&x_seq=3&x_session=S&z=1");
        // Untouched, the configured query goes out as written; a pair Go cannot parse is
        // dropped once the query is re-encoded.
        let s = shaper(json!({"path": "/r?b=%zz&a=1;2&c=3"}));
        let r = s
            .build(RequestKind::StreamDown, Some("S"), None, &mut rand::rng())
            .unwrap();
        assert_eq!(target(&r), "/r/S?b=%zz&a=1;2&c=3");
        let s = shaper(json!({"path": "/r?b=%zz&a=1;2&c=3", "sessionIDPlacement": "query"}));
        let r = s
            .build(RequestKind::StreamDown, Some("S"), None, &mut rand::rng())
            .unwrap();
        assert_eq!(target(&r), "/r/?c=3&x_session=S");
    }

    #[test]
    fn paths_are_sent_as_gos_escaped_path() {
        let cases = [
            ("/a%20b", "/a%2520b/S"),
            ("/\u{fc}ber", "/%C3%BCber/S"),
            ("/a b/c", "/a%20b/c/S"),
            ("/x!*'()", "/x%21%2A%27%28%29/S"),
            ("/k:@&=+$,;", "/k:@&=+$,;/S"),
        ];
        for (path, want) in cases {
            let s = shaper(json!({ "path": path }));
            let r = s
                .build(RequestKind::StreamDown, Some("S"), None, &mut rand::rng())
                .unwrap();
            assert_eq!(target(&r), want, "{path}");
            let referer = hdr(&r, "referer").unwrap();
            let base = want.strip_suffix("S").unwrap();
            assert!(
                referer.starts_with(&format!("https://example.com{base}?x_padding=")),
                "{referer}"
            );
        }
        // A raw query keeps what a URI allows and escapes the rest.
        let s = shaper(json!({"path": "/p?a=x y&b=\u{fc}"}));
        let r = s
            .build(RequestKind::StreamDown, Some("S"), None, &mut rand::rng())
            .unwrap();
        assert_eq!(target(&r), "/p/S?a=x%20y&b=%C3%BC");
    }

    #[test]
    fn user_headers_that_collide_with_ours_are_replaced() {
        let mut rng = rand::rng();
        let s = shaper(json!({"path": "/p", "mode": "stream-up", "headers": {
            "Referer": "https://cdn.example/", "content-type": "text/plain",
            "X-Session": "mine", "Cookie": "a=1", "X-Custom": "kept"},
            "sessionIDPlacement": "header", "seqPlacement": "cookie"}));
        let r = s
            .build(RequestKind::StreamUp, Some("S"), None, &mut rng)
            .unwrap();
        let all = |k: &str| {
            r.headers()
                .get_all(k)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        let referer = all("referer");
        assert_eq!(referer.len(), 1, "{referer:?}");
        assert!(referer[0].starts_with("https://example.com/p/?x_padding=X"));
        assert_eq!(all("content-type"), ["application/grpc"]);
        assert_eq!(all("x-session"), ["S"]);
        assert_eq!(all("x-custom"), ["kept"]);
        // Cookies are appended to the user's, in one field.
        assert_eq!(all("cookie"), ["a=1"]);
        let r = s
            .build(RequestKind::PacketUp { seq: 5 }, Some("S"), None, &mut rng)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(hdr(&r, "cookie"), Some("a=1; x_seq=5"));

        // Obfs padding header and data headers replace the user's too; cookies go in
        // Xray's order: data, padding, session, seq.
        let s = shaper(json!({"mode": "packet-up", "xPaddingObfsMode": true,
            "xPaddingPlacement": "header", "xPaddingBytes": 10,
            "uplinkDataPlacement": "header", "headers": {"X-Padding": "u", "X-Data-0": "u"}}));
        let r = s
            .build(
                RequestKind::PacketUp { seq: 0 },
                Some("S"),
                Some(&b"hi"[..]),
                &mut rng,
            )
            .unwrap();
        assert_eq!(r.headers().get_all("x-padding").iter().count(), 1);
        assert_eq!(hdr(&r, "x-padding"), Some("XXXXXXXXXX"));
        assert_eq!(hdr(&r, "x-data-0"), Some("aGk"));
        let s = shaper(json!({"mode": "packet-up", "xPaddingObfsMode": true,
            "xPaddingPlacement": "cookie", "xPaddingBytes": 3, "uplinkDataPlacement": "cookie",
            "sessionIDPlacement": "cookie", "seqPlacement": "cookie"}));
        let r = s
            .build(
                RequestKind::PacketUp { seq: 2 },
                Some("S"),
                Some(&b"hi"[..]),
                &mut rng,
            )
            .unwrap();
        assert_eq!(
            hdr(&r, "cookie"),
            Some("x_data_0=aGk; x_padding=XXX; x_session=S; x_seq=2")
        );
    }

    #[test]
    fn an_ipv6_authority_is_bracketed() {
        let s = Shaper::new(
            &XhttpSettings::from_json("x", &json!({"path": "/p"})).unwrap(),
            "[::1]",
        );
        let r = s
            .build(RequestKind::StreamDown, Some("S"), None, &mut rand::rng())
            .unwrap();
        assert_eq!(r.uri().authority().unwrap().as_str(), "[::1]");
        assert!(hdr(&r, "referer").unwrap().starts_with("https://[::1]/p/?"));
    }

    #[test]
    fn every_session_and_seq_placement() {
        let mut rng = rand::rng();
        let s =
            shaper(json!({"path": "/p", "sessionIDPlacement": "header", "seqPlacement": "cookie"}));
        let r = s
            .build(
                RequestKind::PacketUp { seq: 0 },
                Some("abc"),
                None,
                &mut rng,
            )
            .unwrap();
        assert_eq!(target(&r), "/p/");
        assert_eq!(hdr(&r, "x-session"), Some("abc"));
        assert_eq!(hdr(&r, "cookie"), Some("x_seq=0"));

        let s = shaper(
            json!({"path": "/p", "sessionIDPlacement": "cookie", "sessionIDKey": "sid", "seqPlacement": "header", "seqKey": "N"}),
        );
        let r = s
            .build(
                RequestKind::PacketUp { seq: 12 },
                Some("abc"),
                None,
                &mut rng,
            )
            .unwrap();
        assert_eq!(hdr(&r, "cookie"), Some("sid=abc"));
        assert_eq!(hdr(&r, "n"), Some("12"));

        // Session in a header, seq in the path: only the seq is a path segment.
        let s = shaper(json!({"path": "/p", "sessionIDPlacement": "header"}));
        let r = s
            .build(
                RequestKind::PacketUp { seq: 4 },
                Some("abc"),
                None,
                &mut rng,
            )
            .unwrap();
        assert_eq!(target(&r), "/p/4");
        // Old key names still work.
        let s = shaper(json!({"path": "/p", "sessionPlacement": "query", "sessionKey": "k"}));
        let r = s
            .build(RequestKind::StreamDown, Some("abc"), None, &mut rng)
            .unwrap();
        assert_eq!(target(&r), "/p/?k=abc");
    }

    #[test]
    fn obfs_padding_placements() {
        let mut rng = rand::rng();
        let base = json!({"path": "/o", "xPaddingObfsMode": true, "xPaddingBytes": "10-11"});
        let with = |extra: serde_json::Value| {
            let mut v = base.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            shaper(v)
        };
        let r = with(json!({}))
            .build(RequestKind::StreamDown, Some("S"), None, &mut rng)
            .unwrap();
        assert_eq!(
            hdr(&r, "x-padding"),
            Some("https://example.com/o/?x_padding=XXXXXXXXXX")
        );
        assert_eq!(hdr(&r, "referer"), None);
        let r = with(json!({"xPaddingPlacement": "header", "xPaddingHeader": "X-P"}))
            .build(RequestKind::StreamDown, Some("S"), None, &mut rng)
            .unwrap();
        assert_eq!(hdr(&r, "x-p"), Some("XXXXXXXXXX"));
        let r = with(json!({"xPaddingPlacement": "query", "xPaddingKey": "pad"}))
            .build(RequestKind::StreamDown, Some("S"), None, &mut rng)
            .unwrap();
        assert_eq!(target(&r), "/o/S?pad=XXXXXXXXXX");
        let r = with(json!({"xPaddingPlacement": "cookie", "xPaddingMethod": "tokenish"}))
            .build(RequestKind::StreamDown, Some("S"), None, &mut rng)
            .unwrap();
        let c = hdr(&r, "cookie")
            .unwrap()
            .strip_prefix("x_padding=")
            .unwrap();
        let n = crate::xhttp::padding::huffman_len(c.as_bytes());
        assert!((8..=13).contains(&n), "{n}");
    }

    #[test]
    fn packet_data_in_headers_and_cookies_roundtrips() {
        let mut rng = rand::rng();
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let dec = |s: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .unwrap()
        };
        let s = shaper(
            json!({"mode": "packet-up", "uplinkDataPlacement": "header", "uplinkChunkSize": 100}),
        );
        assert!(!s.data_in_body());
        let r = s
            .build(
                RequestKind::PacketUp { seq: 0 },
                Some("S"),
                Some(&data),
                &mut rng,
            )
            .unwrap();
        // No body: Go announces a zero length on a POST.
        assert_eq!(hdr(&r, "content-length"), Some("0"));
        let mut joined = String::new();
        for i in 0.. {
            match hdr(&r, &format!("x-data-{i}")) {
                Some(p) => {
                    assert!(p.len() <= 100);
                    joined.push_str(p)
                }
                None => break,
            }
        }
        assert_eq!(dec(&joined), data);

        let s = shaper(
            json!({"mode": "packet-up", "uplinkDataPlacement": "cookie", "uplinkHTTPMethod": "get"}),
        );
        let r = s
            .build(
                RequestKind::PacketUp { seq: 1 },
                Some("S"),
                Some(&data),
                &mut rng,
            )
            .unwrap();
        assert_eq!(r.method(), "GET");
        assert_eq!(hdr(&r, "content-length"), None);
        let cookie = hdr(&r, "cookie").unwrap();
        let joined: String = cookie
            .split("; ")
            .filter_map(|c| c.split_once('='))
            .filter(|(k, _)| k.starts_with("x_data_"))
            .map(|(_, v)| v)
            .collect();
        assert_eq!(dec(&joined), data);
    }

    #[test]
    fn method_headers_and_grpc_switch() {
        let s = shaper(json!({"uplinkHTTPMethod": "put", "noGRPCHeader": true,
            "headers": {"X-Custom": "1", "User-Agent": "MyApp"}}));
        let r = s
            .build(RequestKind::StreamOne, None, None, &mut rand::rng())
            .unwrap();
        assert_eq!(r.method(), "PUT");
        assert_eq!(hdr(&r, "content-type"), None);
        assert_eq!(hdr(&r, "x-custom"), Some("1"));
        assert_eq!(hdr(&r, "user-agent"), Some("MyApp"));
        assert_eq!(hdr(&r, "sec-fetch-mode"), None);
        let label = s.label(RequestKind::StreamOne, None);
        assert_eq!(label.to_string(), "PUT / (stream-one)");
    }

    #[test]
    fn labels_hide_the_session_id() {
        for placement in ["path", "query"] {
            let s = shaper(json!({"path": "/xh", "sessionPlacement": placement}));
            let label = s.label(RequestKind::PacketUp { seq: 3 }, Some("s3cr3tsess"));
            let text = label.to_string();
            assert!(!text.contains("s3cr3tsess"), "{placement}: {text}");
            assert!(text.contains("<session>"), "{placement}: {text}");
        }
    }

    #[test]
    fn base_query_is_parsed_like_go() {
        assert_eq!(
            parse_query("a=1&b&c=%4&d;=2&e=x+y"),
            [
                ("a".into(), "1".into()),
                ("b".into(), String::new()),
                ("e".into(), "x y".into())
            ]
        );
        assert_eq!(encode_query(parse_query("z=1&a=x y&a=2")), "a=x+y&a=2&z=1");
    }
}
