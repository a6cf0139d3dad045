//! Request shapes (protocol doc §2.2–§2.5): one function builds every request a tunnel
//! sends, whatever the mode, so placement, padding and header rules live in one place.

use crate::config::{DataPlacement, Placement, XhttpSettings};
use crate::error::{Error, RequestLabel, Result};
use crate::xhttp::browser;
use crate::xhttp::escape::{escape, unescape};
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
    path: String,
    base_query: Vec<(String, String)>,
    raw_query: String,
    headers: Vec<(String, String)>,
}

impl Shaper {
    pub fn new(settings: &XhttpSettings, authority: &str) -> Shaper {
        let mut headers = settings.headers.clone();
        browser::apply_defaults(&mut headers);
        let raw_query = settings.normalized_query().to_string();
        Shaper {
            path: settings.normalized_path(),
            base_query: parse_query(&raw_query),
            raw_query,
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
    /// packet-up chunk when it is placed in headers or cookies (see [`Self::data_in_body`]).
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

    fn head<R: Rng + ?Sized>(
        &self,
        kind: RequestKind,
        session: Option<&str>,
        data: Option<&[u8]>,
        padding: String,
        rng: &mut R,
    ) -> Result<http::Request<()>> {
        let s = &self.settings;
        let seq = match kind {
            RequestKind::PacketUp { seq } => Some(seq.to_string()),
            _ => None,
        };
        let mut path = self.path.clone();
        let mut query: Vec<(String, String)> = Vec::new();
        let mut query_touched = false;
        let mut headers: Vec<(String, String)> = self.headers.clone();
        let mut cookies: Vec<(String, String)> = Vec::new();

        let mut place =
            |placement: Placement, key: &str, value: &str, path: &mut String| match placement {
                Placement::Path => {
                    if !path.ends_with('/') {
                        path.push('/');
                    }
                    path.push_str(value);
                }
                Placement::Query => {
                    query_touched = true;
                    query.retain(|(k, _)| k != key);
                    query.push((key.to_string(), value.to_string()));
                }
                Placement::Header => headers.push((key.to_string(), value.to_string())),
                Placement::Cookie => cookies.push((key.to_string(), value.to_string())),
            };
        if let Some(id) = session {
            place(s.session_placement, &s.session_key, id, &mut path);
        }
        if let Some(seq) = &seq {
            place(s.seq_placement, &s.seq_key, seq, &mut path);
        }

        // Padding is drawn per request and placed as configured (§2.4).
        let (placement, header, key, _) = s.padding.effective();
        match placement {
            PaddingPlacement::QueryInHeader => headers.push((
                header.to_string(),
                format!(
                    "https://{}{}?{}={}",
                    self.authority, self.path, key, padding
                ),
            )),
            PaddingPlacement::Header => headers.push((header.to_string(), padding)),
            PaddingPlacement::Query => {
                query_touched = true;
                query.push((key.to_string(), padding));
            }
            PaddingPlacement::Cookie => cookies.push((key.to_string(), padding)),
        }

        if let (Some(data), false) = (data, self.data_in_body()) {
            let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data);
            let mut rest = encoded.as_str();
            let mut i = 0;
            while !rest.is_empty() {
                let n = (s.uplink_chunk_size.draw(rng).max(64) as usize).min(rest.len());
                let (piece, tail) = rest.split_at(n);
                if s.uplink_data_placement == DataPlacement::Cookie {
                    cookies.push((format!("{}_{i}", s.uplink_data_key), piece.to_string()));
                } else {
                    headers.push((format!("{}-{i}", s.uplink_data_key), piece.to_string()));
                }
                rest = tail;
                i += 1;
            }
        }

        if matches!(kind, RequestKind::StreamUp | RequestKind::StreamOne) && !s.no_grpc_header {
            headers.push(("Content-Type".into(), "application/grpc".into()));
        }
        if !cookies.is_empty() {
            let joined: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            headers.push(("Cookie".into(), joined.join("; ")));
        }

        // Go re-encodes (sorted) only when something was added to the query.
        let query = if query_touched {
            let mut all = self.base_query.clone();
            for (k, v) in query {
                all.retain(|(bk, _)| *bk != k);
                all.push((k, v));
            }
            encode_query(all)
        } else {
            self.raw_query.clone()
        };
        let target = if query.is_empty() {
            path
        } else {
            format!("{path}?{query}")
        };
        let uri = format!("https://{}{}", self.authority, target);
        let mut b = http::Request::builder().method(self.method(kind)).uri(&uri);
        for (k, v) in &headers {
            b = b.header(k.as_str(), v.as_str());
        }
        b.body(()).map_err(|e| {
            Error::config(
                "xhttpSettings",
                format!("cannot build request {uri:?}: {e} (check host, path and headers)"),
            )
        })
    }
}

/// Go's `url.ParseQuery` for the base query: `&`-separated, `+` is a space.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

/// Go's `url.Values.Encode`: keys sorted, values escaped with `QueryEscape`.
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
        assert_eq!(target(&r), "/q?a=x+y&x_seq=3&x_session=S&z=1");
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
        assert_eq!(target(&r), "/p");
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
}
