//! Reading an XHTTP request the way Xray's server does (protocol doc §3): host and path
//! checks, padding extraction, session/seq extraction, classification, mode rules and
//! packet-up payloads in headers or cookies. Pure functions, no I/O.

use super::events::{RequestKind, RequestShape};
use base64::Engine;
use http::{HeaderMap, Method};
use xhttp_mobile::config::{DataPlacement, Mode, Placement, XhttpSettings};
use xhttp_mobile::xhttp::padding::{Padding, PaddingPlacement};

/// The keys the server looks for, with Xray's defaults where the settings leave them empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Keys {
    pub(crate) session: String,
    pub(crate) seq: String,
    pub(crate) data_header: String,
    pub(crate) data_cookie: String,
}

impl Keys {
    pub(crate) fn of(s: &XhttpSettings) -> Keys {
        let or = |k: &str, placement: Placement, query: &str, header: &str| {
            if !k.is_empty() {
                k.to_string()
            } else if placement == Placement::Header {
                header.to_string()
            } else {
                query.to_string()
            }
        };
        let data = s.uplink_data_key.as_str();
        Keys {
            session: or(
                &s.session_key,
                s.session_placement,
                "x_session",
                "X-Session",
            ),
            seq: or(&s.seq_key, s.seq_placement, "x_seq", "X-Seq"),
            data_header: if data.is_empty() {
                "X-Data".into()
            } else {
                data.into()
            },
            // One key for both, as Xray: its default follows the server's own placement
            // (`X-Data` for auto and header, `x_data` for cookie), so a client sending
            // cookies under `x_data` to an `auto` server is not read (cookies `X-Data_0`…
            // are). Being lenient here once hid exactly that mismatch from the tests.
            data_cookie: match (s.uplink_data_placement, data) {
                (DataPlacement::Cookie, "") => "x_data".into(),
                (_, "") => "X-Data".into(),
                (_, k) => k.into(),
            },
        }
    }
}

/// The host part of an authority: no userinfo, no port, no IPv6 brackets.
fn host_only(authority: &str) -> &str {
    let a = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match a.split_once(':') {
        Some((host, port)) if !port.contains(':') => host,
        _ => a,
    }
}

/// Xray's `IsValidHTTPHost`: the request host without its port, case-insensitively.
pub(crate) fn host_matches(expected: &str, authority: Option<&str>) -> bool {
    authority.is_some_and(|a| host_only(a).eq_ignore_ascii_case(host_only(expected)))
}

/// The first value of a header, as text (lossy for non-UTF-8, like Go's byte strings).
pub(crate) fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// The query of a URL given as text, or `None` if Go's `url.Parse` would reject it (we only
/// model the control-character rule, the one that matters for header values).
pub(crate) fn url_query(raw: &str) -> Option<&str> {
    if raw.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return None;
    }
    let no_fragment = raw.split('#').next().unwrap_or("");
    Some(no_fragment.split_once('?').map(|(_, q)| q).unwrap_or(""))
}

fn percent_decode(s: &str) -> Option<String> {
    unescape(s, true)
}

/// Go's `url.PathUnescape`, what `r.URL.Path` holds: `%XX` decoded, `+` kept. `None` for a
/// bad escape (Go's server answers 400 before any handler).
pub(crate) fn path_unescape(s: &str) -> Option<String> {
    unescape(s, false)
}

fn unescape(s: &str, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Go's `url.Values.Get` on a raw query: the first value of `key`, empty if absent. Pairs
/// that fail to decode (or contain `;`) are skipped, as Go's `ParseQuery` does.
pub(crate) fn query_get(query: &str, key: &str) -> String {
    for pair in query.split('&') {
        if pair.is_empty() || pair.contains(';') {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(k), Some(v)) = (percent_decode(k), percent_decode(v)) else {
            continue;
        };
        if k == key {
            return v;
        }
    }
    String::new()
}

/// The names a request head is made of (see [`RequestShape`]); `prefix` is the configured
/// path.
pub(crate) fn request_shape(req: &http::Request<()>, prefix: &str) -> RequestShape {
    let headers = req.headers();
    let query = req.uri().query().unwrap_or("");
    let path = path_unescape(req.uri().path()).unwrap_or_else(|| req.uri().path().into());
    let rest = path.strip_prefix(prefix).unwrap_or(&path);
    let path_rest = rest
        .split('/')
        .map(|seg| if seg.is_empty() { "" } else { "*" })
        .collect::<Vec<_>>()
        .join("/");
    RequestShape {
        header_names: headers.keys().map(|k| k.as_str().to_string()).collect(),
        cookie_names: cookies(headers).into_iter().map(|(k, _)| k).collect(),
        query_keys: query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').map_or(p, |(k, _)| k).to_string())
            .collect(),
        path_rest,
        content_length: headers.contains_key(http::header::CONTENT_LENGTH),
        padding_len: 0,
    }
}

/// All request cookies in order, from every `Cookie` header (HTTP/3 may split them).
pub(crate) fn cookies(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for v in headers.get_all(http::header::COOKIE) {
        let v = String::from_utf8_lossy(v.as_bytes());
        for part in v.split(';') {
            let part = part.trim();
            let Some((name, value)) = part.split_once('=') else {
                continue;
            };
            if name.is_empty() {
                continue;
            }
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            out.push((name.to_string(), value.to_string()));
        }
    }
    out
}

/// Go's `Request.Cookie(name)`: the first cookie with that name.
pub(crate) fn cookie<'a>(cookies: &'a [(String, String)], name: &str) -> Option<&'a str> {
    cookies
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The padding value of a request (Xray's `ExtractXPaddingFromRequest`); empty if none.
pub(crate) fn extract_padding(
    p: &Padding,
    headers: &HeaderMap,
    query: &str,
    cookies: &[(String, String)],
) -> String {
    if !p.obfs {
        match header(headers, "referer").filter(|r| !r.is_empty()) {
            None => return query_get(query, "x_padding"),
            Some(r) => {
                if let Some(q) = url_query(&r) {
                    return query_get(q, "x_padding");
                }
                // An unparsable Referer falls through to the obfs lookups, as in Xray.
            }
        }
    }
    if let Some(v) = cookie(cookies, &p.key).filter(|v| !v.is_empty()) {
        return v.to_string();
    }
    if let Some(h) = header(headers, &p.header).filter(|h| !h.is_empty()) {
        if p.placement == PaddingPlacement::Header {
            return h;
        }
        if let Some(q) = url_query(&h) {
            return query_get(q, &p.key);
        }
    }
    query_get(query, &p.key)
}

/// Session id and seq per the placements (Xray's `ExtractMetaFromRequest`); empty = absent.
/// `prefix` is the normalized path, which `path` is known to start with.
pub(crate) fn extract_meta(
    s: &XhttpSettings,
    keys: &Keys,
    prefix: &str,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    cookies: &[(String, String)],
) -> (String, String) {
    let mut segments = path.get(prefix.len()..).unwrap_or("").split('/');
    let mut take = |placement: Placement, key: &str| -> String {
        match placement {
            Placement::Path => segments.next().unwrap_or("").to_string(),
            Placement::Query => query_get(query, key),
            Placement::Header => header(headers, key).unwrap_or_default(),
            Placement::Cookie => cookie(cookies, key).unwrap_or("").to_string(),
        }
    };
    let session = take(s.session_placement, &keys.session);
    let seq = take(s.seq_placement, &keys.seq);
    (session, seq)
}

/// §3 step 9: a `GET` is an upload iff it has a seq; any other method is an upload.
pub(crate) fn classify(method: &Method, has_session: bool, has_seq: bool) -> RequestKind {
    let upload = *method != Method::GET || has_seq;
    match (has_session, upload, has_seq) {
        (false, _, _) => RequestKind::StreamOne,
        (true, true, false) => RequestKind::StreamUp,
        (true, true, true) => RequestKind::PacketUp,
        (true, false, _) => RequestKind::StreamDown,
    }
}

/// §3 step 7: session-less requests need mode auto, stream-one or stream-up.
pub(crate) fn sessionless_allowed(mode: Mode) -> bool {
    matches!(mode, Mode::Auto | Mode::StreamOne | Mode::StreamUp)
}

/// §3.2/§3.3: stream-up and packet-up uploads need their own mode (or auto).
pub(crate) fn upload_allowed(mode: Mode, kind: RequestKind) -> bool {
    match kind {
        RequestKind::StreamUp => matches!(mode, Mode::Auto | Mode::StreamUp),
        RequestKind::PacketUp => matches!(mode, Mode::Auto | Mode::PacketUp),
        _ => true,
    }
}

/// Packet-up data carried in headers or cookies was not valid base64url.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadPayload;

fn decode_pieces(pieces: Vec<String>) -> Result<Vec<u8>, BadPayload> {
    let joined: String = pieces.concat();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(joined.as_bytes())
        .map_err(|_| BadPayload)
}

/// Headers `<key>-0`, `<key>-1`, … until one is missing, base64url (no padding) decoded.
pub(crate) fn header_payload(headers: &HeaderMap, key: &str) -> Result<Vec<u8>, BadPayload> {
    let pieces = (0..)
        .map_while(|i| header(headers, &format!("{key}-{i}")))
        .collect();
    decode_pieces(pieces)
}

/// Cookies `<key>_0`, `<key>_1`, … until one is missing, base64url (no padding) decoded.
pub(crate) fn cookie_payload(
    cookies: &[(String, String)],
    key: &str,
) -> Result<Vec<u8>, BadPayload> {
    let pieces = (0..)
        .map_while(|i| cookie(cookies, &format!("{key}_{i}")).map(str::to_string))
        .collect();
    decode_pieces(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use xhttp_mobile::xhttp::padding::PaddingMethod;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn paths_are_unescaped_as_go_does() {
        assert_eq!(
            path_unescape("/a%2520b/%C3%BC/x+y").as_deref(),
            Some("/a%20b/ü/x+y")
        );
        assert_eq!(path_unescape("/bad%2").as_deref(), None);
        assert_eq!(percent_decode("x+y%21").as_deref(), Some("x y!"));
    }

    #[test]
    fn a_shape_names_the_parts_and_hides_the_values() {
        let req = http::Request::post("https://h/xh/SESSION/7?x_padding=XXX&b=2&b=3")
            .header("Cookie", "a=1; b=2")
            .header("cookie", "c=3")
            .header("Content-Length", "5")
            .header("X-Custom", "v")
            .body(())
            .unwrap();
        let shape = request_shape(&req, "/xh/");
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            shape.header_names,
            set(&["cookie", "content-length", "x-custom"])
        );
        assert_eq!(shape.cookie_names, set(&["a", "b", "c"]));
        assert_eq!(shape.query_keys, set(&["b", "x_padding"]));
        assert_eq!(shape.path_rest, "*/*");
        assert!(shape.content_length);
        let bare = http::Request::get("https://h/xh").body(()).unwrap();
        // Outside the prefix (a 404), the whole path's shape.
        assert_eq!(request_shape(&bare, "/xh/").path_rest, "/*");
        assert_eq!(request_shape(&bare, "/xh").path_rest, "");
    }

    fn settings(session: Placement, seq: Placement) -> XhttpSettings {
        XhttpSettings {
            path: "/xh".into(),
            session_placement: session,
            seq_placement: seq,
            ..XhttpSettings::default()
        }
    }

    fn meta(s: &XhttpSettings, path: &str, query: &str, h: &HeaderMap) -> (String, String) {
        let keys = Keys::of(s);
        let c = cookies(h);
        extract_meta(s, &keys, &s.normalized_path(), path, query, h, &c)
    }

    #[test]
    fn meta_from_path() {
        let s = settings(Placement::Path, Placement::Path);
        let none = HeaderMap::new();
        assert_eq!(meta(&s, "/xh/abc/7", "", &none), ("abc".into(), "7".into()));
        assert_eq!(meta(&s, "/xh/abc", "", &none), ("abc".into(), "".into()));
        assert_eq!(meta(&s, "/xh/", "", &none), ("".into(), "".into()));
        // Extra segments are ignored; an empty segment means "absent".
        assert_eq!(
            meta(&s, "/xh/abc/7/x", "", &none),
            ("abc".into(), "7".into())
        );
        assert_eq!(meta(&s, "/xh//7", "", &none), ("".into(), "7".into()));
    }

    #[test]
    fn meta_from_query_header_cookie() {
        let s = settings(Placement::Query, Placement::Query);
        assert_eq!(s.normalized_path(), "/xh");
        let none = HeaderMap::new();
        assert_eq!(
            meta(&s, "/xh", "x_seq=3&x_session=ab%2Dc", &none),
            ("ab-c".into(), "3".into())
        );

        let s = settings(Placement::Header, Placement::Header);
        let h = headers(&[("x-session", "S1"), ("X-Seq", "12")]);
        assert_eq!(meta(&s, "/xh", "", &h), ("S1".into(), "12".into()));

        let s = settings(Placement::Cookie, Placement::Cookie);
        let h = headers(&[("cookie", "a=1; x_session=S2"), ("cookie", "x_seq=\"5\"")]);
        assert_eq!(meta(&s, "/xh", "", &h), ("S2".into(), "5".into()));
    }

    #[test]
    fn meta_mixed_placements() {
        // Session in a header, seq in the path: the first path segment is the seq.
        let s = settings(Placement::Header, Placement::Path);
        let h = headers(&[("x-session", "S")]);
        assert_eq!(meta(&s, "/xh/9", "", &h), ("S".into(), "9".into()));
        // Custom keys.
        let s = XhttpSettings {
            session_key: "sid".into(),
            seq_key: "n".into(),
            ..settings(Placement::Query, Placement::Cookie)
        };
        let h = headers(&[("cookie", "n=4")]);
        assert_eq!(meta(&s, "/xh", "sid=Q", &h), ("Q".into(), "4".into()));
    }

    #[test]
    fn classification_and_modes() {
        use RequestKind::*;
        assert_eq!(classify(&Method::GET, true, false), StreamDown);
        assert_eq!(classify(&Method::GET, true, true), PacketUp);
        assert_eq!(classify(&Method::POST, true, true), PacketUp);
        assert_eq!(classify(&Method::PUT, true, false), StreamUp);
        assert_eq!(classify(&Method::POST, false, false), StreamOne);
        assert_eq!(classify(&Method::GET, false, true), StreamOne);
        assert!(sessionless_allowed(Mode::StreamUp));
        assert!(!sessionless_allowed(Mode::PacketUp));
        assert!(!upload_allowed(Mode::StreamOne, StreamUp));
        assert!(!upload_allowed(Mode::StreamUp, PacketUp));
        assert!(upload_allowed(Mode::Auto, PacketUp));
        assert!(upload_allowed(Mode::PacketUp, StreamDown));
    }

    #[test]
    fn padding_extraction() {
        let p = Padding::default();
        let pad = "X".repeat(120);
        let h = headers(&[("referer", &format!("https://h/xh/?x_padding={pad}#frag"))]);
        assert_eq!(extract_padding(&p, &h, "", &[]), pad);
        // Referer present: the URL query is not consulted.
        let h = headers(&[("referer", "https://h/xh/")]);
        assert_eq!(
            extract_padding(&p, &h, &format!("x_padding={pad}"), &[]),
            ""
        );
        // No Referer: the URL query.
        assert_eq!(
            extract_padding(&p, &HeaderMap::new(), &format!("a=1&x_padding={pad}"), &[]),
            pad
        );

        let obfs = Padding {
            obfs: true,
            key: "pk".into(),
            header: "X-Pad".into(),
            placement: PaddingPlacement::Header,
            method: PaddingMethod::RepeatX,
            ..Padding::default()
        };
        let h = headers(&[("x-pad", "XXXX"), ("cookie", "pk=YY")]);
        let c = cookies(&h);
        assert_eq!(extract_padding(&obfs, &h, "pk=Z", &c), "YY");
        assert_eq!(extract_padding(&obfs, &h, "pk=Z", &[]), "XXXX");
        let qih = Padding {
            placement: PaddingPlacement::QueryInHeader,
            ..obfs.clone()
        };
        let h = headers(&[("x-pad", "https://h/?pk=ABC")]);
        assert_eq!(extract_padding(&qih, &h, "pk=Z", &[]), "ABC");
        assert_eq!(extract_padding(&qih, &HeaderMap::new(), "pk=Z", &[]), "Z");
    }

    #[test]
    fn host_check_ignores_port_and_case() {
        assert!(host_matches("Example.com", Some("example.COM")));
        assert!(host_matches("example.com", Some("example.com:8443")));
        assert!(host_matches("::1", Some("[::1]:443")));
        assert!(host_matches("localhost", Some("user@localhost")));
        assert!(!host_matches("example.com", Some("other.com")));
        assert!(!host_matches("example.com", None));
    }

    #[test]
    fn payload_from_headers_and_cookies() {
        let data = b"hello, packet-up world";
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data);
        let (a, b) = enc.split_at(7);
        let h = headers(&[("x-data-0", a), ("X-Data-1", b), ("x-data-3", "ignored")]);
        assert_eq!(header_payload(&h, "X-Data").unwrap(), data);
        assert_eq!(header_payload(&HeaderMap::new(), "X-Data").unwrap(), b"");
        let bad = headers(&[("x-data-0", "ab=c")]);
        assert_eq!(header_payload(&bad, "X-Data"), Err(BadPayload));

        let h = headers(&[("cookie", &format!("x_data_1={b}; x_data_0={a}"))]);
        assert_eq!(cookie_payload(&cookies(&h), "x_data").unwrap(), data);
        let bad = headers(&[("cookie", "x_data_0=!!")]);
        assert_eq!(cookie_payload(&cookies(&bad), "x_data"), Err(BadPayload));
    }

    #[test]
    fn default_keys() {
        let s = XhttpSettings::default();
        let k = Keys::of(&s);
        assert_eq!((k.session.as_str(), k.seq.as_str()), ("x_session", "x_seq"));
        // Xray: with placement auto the one default key is `X-Data`, for cookies too.
        assert_eq!(
            (k.data_header.as_str(), k.data_cookie.as_str()),
            ("X-Data", "X-Data")
        );
        let s = settings(Placement::Header, Placement::Header);
        let k = Keys::of(&s);
        assert_eq!((k.session.as_str(), k.seq.as_str()), ("X-Session", "X-Seq"));
    }

    #[test]
    fn query_decoding() {
        assert_eq!(query_get("a=1&b=x%20y+z", "b"), "x y z");
        assert_eq!(query_get("a=1&a=2", "a"), "1");
        assert_eq!(query_get("a=%zz&a=2", "a"), "2");
        assert_eq!(query_get("b=1", "a"), "");
        assert_eq!(url_query("https://h/p?q=1#x"), Some("q=1"));
        assert_eq!(url_query("bad\u{1}url"), None);
    }
}
