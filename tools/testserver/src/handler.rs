//! Admitting one request in Xray's order (protocol doc §3 steps 1–9), answering the short
//! ones, and handing streams to `streams`. Every failure becomes a status code or a log line.

use super::events::{Event, RequestKind};
use super::exchange::Exchange;
use super::quic::{self, StopWatches, read_outcome};
use super::request::{
    classify, cookie_payload, cookies, extract_meta, extract_padding, header, header_payload,
    host_matches, path_unescape, request_shape, sessionless_allowed, upload_allowed,
};
use super::session::Session;
use super::{Fault, Shared, streams};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use h3::server::RequestResolver;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request};
use std::net::SocketAddr;
use std::sync::Arc;
use xhttp_mobile::config::{DataPlacement, Placement, XhttpSettings};
use xhttp_mobile::xhttp::padding::PaddingPlacement;

/// Serves one request stream of a connection.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    resolver: RequestResolver<quic::Conn, Bytes>,
    watches: StopWatches,
    peer: SocketAddr,
) {
    let (req, stream) = match resolver.resolve_request().await {
        Ok(r) => r,
        Err(e) => {
            log::debug!("testserver: unreadable request from {peer}: {e}");
            return;
        }
    };
    let stop = watches.take(stream.id());
    let shape = request_shape(&req, &shared.path);
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let ex = Exchange {
        shared,
        stream,
        stop,
        peer,
        method: req.method().to_string(),
        path_and_query,
        kind: None,
        headers: HeaderMap::new(),
        shape,
        accepts_gzip: accepts_gzip(req.headers()),
    };
    admit(ex, req).await
}

fn accepts_gzip(h: &HeaderMap) -> bool {
    h.get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("gzip")
        })
}

async fn admit(mut ex: Exchange, req: Request<()>) {
    let shared = ex.shared.clone();
    let s = &shared.settings;
    let (uri, headers) = (req.uri(), req.headers());

    // 1. Host (the :authority, else a Host header), 2. path prefix.
    if !s.host.is_empty() {
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| header(headers, "host"));
        if !host_matches(&s.host, authority.as_deref()) {
            return ex.reply(404).await;
        }
    }
    // Xray matches `r.URL.Path`: the path with its escapes decoded.
    let Some(path) = path_unescape(uri.path()) else {
        return ex.reply(400).await;
    };
    if !path.starts_with(&shared.path) {
        return ex.reply(404).await;
    }

    // 3. CORS and response padding on everything from here on; 4. preflight.
    ex.headers = response_headers(s, &req);
    if req.method() == Method::OPTIONS {
        let echo = |name: &str| {
            headers
                .get(name)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("*"))
        };
        let methods = echo("access-control-request-method");
        let allow_headers = echo("access-control-request-headers");
        ex.headers
            .insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
        ex.headers
            .insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
        return ex.reply(200).await;
    }

    // 5. Padding.
    let cookies = cookies(headers);
    let query = uri.query().unwrap_or("");
    let padding = extract_padding(&s.padding, headers, query, &cookies);
    ex.shape.padding_len = padding.len();
    if !s.padding.accepts(&padding) {
        return ex.reply(400).await;
    }
    // The stream-up keep-alive marker: a Referer, or accepted obfs padding.
    let keepalive = headers.contains_key(header::REFERER) || s.padding.obfs;

    // 6. Session and seq; classification (reported from here on).
    let (session_id, seq) = extract_meta(
        s,
        &shared.keys,
        &shared.path,
        &path,
        query,
        headers,
        &cookies,
    );
    let kind = classify(req.method(), !session_id.is_empty(), !seq.is_empty());
    ex.kind = Some(kind);

    // 7. Mode rule for session-less requests; 8. the session; 9. mode rules for uploads.
    if session_id.is_empty() && !sessionless_allowed(s.mode) {
        return ex.reply(400).await;
    }
    let session = (!session_id.is_empty()).then(|| shared.sessions.upsert(&session_id));
    if !upload_allowed(s.mode, kind) {
        return ex.reply(400).await;
    }

    match shared.fault() {
        Some(Fault::Status { status, on }) if on.matches(kind) => return ex.reply(status).await,
        Some(Fault::StallResponse { on }) if on.matches(kind) => return streams::stall(ex).await,
        _ => {}
    }

    match (kind, session) {
        (RequestKind::StreamDown, Some(session)) => streams::stream_down(ex, session).await,
        (RequestKind::StreamUp, Some(session)) => streams::stream_up(ex, session, keepalive).await,
        (RequestKind::PacketUp, Some(session)) => {
            packet_up(ex, session, headers, &cookies, &seq).await
        }
        _ => streams::stream_one(ex).await,
    }
}

/// CORS headers and the response padding (§3 step 3).
fn response_headers(s: &XhttpSettings, req: &Request<()>) -> HeaderMap {
    let mut h = HeaderMap::new();
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    let p = &s.padding;
    let cookie_used = s.session_placement == Placement::Cookie
        || s.seq_placement == Placement::Cookie
        || p.placement == PaddingPlacement::Cookie
        || s.uplink_data_placement == DataPlacement::Cookie;
    if cookie_used {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    let value = p.generate(&mut rand::rng());
    let named = |name: &str| HeaderName::from_bytes(name.as_bytes()).ok();
    let (name, value) = match (p.obfs, p.placement) {
        (false, _) => (named("X-Padding"), value),
        (true, PaddingPlacement::Header) => (named(&p.header), value),
        (true, PaddingPlacement::QueryInHeader) => {
            let authority = req
                .uri()
                .authority()
                .map(|a| a.as_str())
                .unwrap_or("localhost");
            let url = format!("https://{authority}{}?{}={value}", req.uri().path(), p.key);
            (named(&p.header), url)
        }
        (true, PaddingPlacement::Cookie) => (
            Some(header::SET_COOKIE),
            format!("{}={value}; Path=/", p.key),
        ),
        (true, PaddingPlacement::Query) => (None, value),
    };
    if let (Some(name), Ok(value)) = (name, HeaderValue::from_str(&value)) {
        h.append(name, value);
    }
    h
}

/// Go's `strconv.ParseUint(s, 10, 64)`: digits only.
fn parse_seq(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// §3.3: one packet-up POST.
async fn packet_up(
    mut ex: Exchange,
    session: Arc<Session>,
    headers: &HeaderMap,
    cookies: &[(String, String)],
    seq: &str,
) {
    let shared = ex.shared.clone();
    let s = &shared.settings;
    let limit = usize::try_from(s.sc_max_each_post_bytes.to)
        .ok()
        .filter(|&n| n > 0)
        .unwrap_or(1_000_000);
    if let Some(cl) = headers.get(header::CONTENT_LENGTH) {
        match cl.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) {
            Some(n) if n > limit as u64 => return ex.reply(413).await,
            Some(_) => {}
            None => return ex.reply(400).await,
        }
    }

    let placement = s.uplink_data_placement;
    let mut payload = BytesMut::new();
    if matches!(placement, DataPlacement::Header | DataPlacement::Auto) {
        match header_payload(headers, &shared.keys.data_header) {
            Ok(v) => payload.put_slice(&v),
            Err(_) => return ex.reply(400).await,
        }
    }
    if matches!(placement, DataPlacement::Cookie | DataPlacement::Auto) {
        match cookie_payload(cookies, &shared.keys.data_cookie) {
            Ok(v) => payload.put_slice(&v),
            Err(_) => return ex.reply(400).await,
        }
    }
    let mut body_bytes = 0;
    if matches!(placement, DataPlacement::Body | DataPlacement::Auto) {
        loop {
            match ex.stream.recv_data().await {
                Ok(Some(mut buf)) => {
                    body_bytes += buf.remaining();
                    while buf.has_remaining() {
                        let chunk = buf.chunk();
                        let n = chunk.len();
                        payload.put_slice(chunk);
                        buf.advance(n);
                    }
                    if payload.len() > limit {
                        return ex.reply(413).await;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    shared.rec.push(Event::UploadEnded {
                        kind: RequestKind::PacketUp,
                        session: Some(session.id.clone()),
                        outcome: read_outcome(&e),
                    });
                    return ex.reply(400).await;
                }
            }
        }
    }
    if payload.len() > limit {
        return ex.reply(413).await;
    }
    let Some(seq) = parse_seq(seq) else {
        return ex.reply(500).await;
    };
    let n = payload.len();
    match session.push_packet(seq, payload.freeze()).await {
        Ok(()) => {
            shared.rec.uploaded(n);
            if body_bytes == 0 {
                ex.reply_with(200, &[("cache-control", "no-store")]).await
            } else {
                ex.reply(200).await
            }
        }
        Err(_) => ex.reply(500).await,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_seq;

    #[test]
    fn seq_is_plain_decimal() {
        assert_eq!(parse_seq("0"), Some(0));
        assert_eq!(parse_seq("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_seq("18446744073709551616"), None);
        assert_eq!(parse_seq("+1"), None);
        assert_eq!(parse_seq("-1"), None);
        assert_eq!(parse_seq(""), None);
        assert_eq!(parse_seq("1a"), None);
    }
}
