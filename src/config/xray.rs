//! Import of what users carry (protocol doc §7): an Xray outbound object, a whole Xray client
//! config, or a `vless://` share link. Everything is turned into the library [`Config`]
//! through the same readers as our own JSON, so the field rules and errors are shared.

use super::json::Fields;
use super::{Config, TlsSettings, VlessSettings, XhttpSettings, prefix_field};
use crate::error::{Error, Result};
use crate::xhttp::escape::unescape_strict;
use serde_json::{Map, Value, json};

/// Reads any accepted shape: a `vless://` link, a whole Xray config (first VLESS/XHTTP
/// outbound), an Xray outbound object, or the library's own JSON.
pub fn import(input: &str) -> Result<Config> {
    import_tagged(input, None)
}

/// Like [`import`]; with `tag`, a whole Xray config contributes the outbound with that tag.
pub fn import_tagged(input: &str, tag: Option<&str>) -> Result<Config> {
    let s = input.trim();
    // Bytes, not `str` slicing: the 8th byte may fall inside a multi-byte character.
    if s.as_bytes()
        .get(..8)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"vless://"))
    {
        return outbound(&share_link(s)?);
    }
    let v: Value = serde_json::from_str(&strip_comments(s))
        .map_err(|e| Error::config("(root)", format!("not valid JSON or a vless:// link: {e}")))?;
    let has = |k: &str| {
        v.as_object()
            .is_some_and(|m| m.keys().any(|key| key.eq_ignore_ascii_case(k)))
    };
    if has("outbounds") {
        whole_config(&v, tag)
    } else if has("protocol") {
        outbound(&v)
    } else {
        // Our own JSON (which may carry Xray's downloadSettings inside xhttpSettings too).
        Config::from_json(&v)
    }
}

/// Xray accepts `//` and `/* */` comments in JSON; drop them outside strings. Works on
/// bytes: every delimiter is ASCII, so removing whole comments keeps the text UTF-8, and
/// no index can land inside a multi-byte character.
fn strip_comments(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let (mut i, mut in_str) = (0, false);
    while i < b.len() {
        let c = b[i];
        if in_str {
            if c == b'\\' && i + 1 < b.len() {
                out.extend_from_slice(&b[i..i + 2]);
                i += 2;
                continue;
            }
            if c == b'"' {
                in_str = false;
            }
        } else if c == b'"' {
            in_str = true;
        } else if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
            continue;
        }
        out.push(c);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn whole_config(v: &Value, tag: Option<&str>) -> Result<Config> {
    let mut f = Fields::new("", v)?;
    let Some(Value::Array(outs)) = f.take("outbounds") else {
        return Err(Error::config(
            "outbounds",
            "expected a list of outbound objects",
        ));
    };
    for (i, o) in outs.iter().enumerate() {
        let get = |k: &str| {
            o.as_object().and_then(|m| {
                m.iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case(k))
                    .and_then(|(_, v)| v.as_str())
            })
        };
        let chosen = match tag {
            Some(t) => get("tag") == Some(t),
            None => {
                get("protocol").is_some_and(|p| p.eq_ignore_ascii_case("vless"))
                    && network_of(o).is_some_and(is_xhttp)
            }
        };
        if chosen {
            return outbound(o).map_err(|e| prefix_field(&format!("outbounds[{i}]"), e));
        }
    }
    Err(match tag {
        Some(t) => Error::config("outbounds", format!("no outbound has tag {t:?}")),
        None => Error::config("outbounds", "no VLESS outbound with network xhttp"),
    })
}

fn is_xhttp(n: &str) -> bool {
    n.eq_ignore_ascii_case("xhttp") || n.eq_ignore_ascii_case("splithttp")
}

/// `streamSettings.method` (newer alias) wins over `network`.
fn network_of(outbound: &Value) -> Option<&str> {
    let ss = lookup(outbound, "streamSettings")?;
    lookup(ss, "method")
        .or_else(|| lookup(ss, "network"))
        .and_then(Value::as_str)
}

fn lookup<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
    v.as_object()?
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(k))
        .map(|(_, v)| v)
}

/// An Xray outbound object: `protocol: vless`, `settings` (flat or `vnext`), `streamSettings`.
pub fn outbound(v: &Value) -> Result<Config> {
    let mut f = Fields::new("", v)?;
    let protocol = f.string("protocol")?.unwrap_or_default();
    if !protocol.eq_ignore_ascii_case("vless") {
        return Err(Error::config(
            "protocol",
            format!("only vless outbounds are supported, got {protocol:?}"),
        ));
    }
    let settings = f
        .take("settings")
        .ok_or_else(|| Error::config("settings", "is required"))?;
    let (address, port, vless) = vless_settings(&settings)?;
    let ss = f
        .take("streamSettings")
        .ok_or_else(|| Error::config("streamSettings", "is required (network xhttp)"))?;
    let mut vless = vless;
    if let Some(m) = f.take("mux") {
        vless.mux = super::MuxSettings::from_json("mux", &m)?;
    }
    if let Some(tag) = f
        .take("proxySettings")
        .as_ref()
        .and_then(|p| lookup(p, "tag"))
    {
        if tag.as_str().is_some_and(|t| !t.is_empty()) {
            return Err(Error::config(
                "proxySettings.tag",
                "chaining through another outbound is not supported; the connection would go direct",
            ));
        }
    }
    for k in ["tag", "sendThrough", "targetStrategy"] {
        f.take(k);
    }
    f.finish();
    let mut c = destination("streamSettings", &ss, address, port)?;
    c.vless = Some(vless);
    c.validate()?;
    Ok(c)
}

/// Settings that would change where traffic goes or whether the handshake is answered,
/// which this client cannot honour: refused, never ignored.
fn refuse_unhonoured(path: &str, f: &mut Fields) -> Result<()> {
    if let Some(so) = f.take("sockopt") {
        if let Some(p) = lookup(&so, "dialerProxy").and_then(Value::as_str) {
            if !p.is_empty() {
                return Err(Error::config(
                    format!("{path}.sockopt.dialerProxy"),
                    "chaining through another outbound is not supported; the connection would go direct",
                ));
            }
        }
        log::debug!("config: {path}.sockopt is not used by this client");
    }
    if let Some(fm) = f.take("finalmask") {
        refuse_finalmask(&format!("{path}.finalmask"), &fm)?;
    }
    Ok(())
}

/// Xray's `finalmask` (UDP/TCP masks, QUIC parameters, port hopping) is not implemented:
/// a server expecting a mask never answers an unmasked handshake. An empty one is fine.
fn refuse_finalmask(field: &str, fm: &Value) -> Result<()> {
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    };
    let Value::Object(o) = fm else {
        if empty(fm) {
            return Ok(());
        }
        return Err(Error::config(field, "must be a JSON object"));
    };
    match o.iter().find(|(_, v)| !empty(v)) {
        None => Ok(()),
        Some((k, _)) => Err(Error::config(
            format!("{field}.{k}"),
            "finalmask (UDP masks, QUIC parameters, port hopping) is not supported yet; without it a server that expects it never answers",
        )),
    }
}

fn vless_settings(v: &Value) -> Result<(String, u16, VlessSettings)> {
    let mut f = Fields::new("settings", v)?;
    let (mut s, path) = match f.take("vnext") {
        Some(Value::Array(servers)) => {
            if servers.len() != 1 {
                return Err(Error::config(
                    "settings.vnext",
                    "exactly one server is supported",
                ));
            }
            let mut srv = Fields::new("settings.vnext[0]", &servers[0])?;
            let users = match srv.take("users") {
                Some(Value::Array(u)) if u.len() == 1 => {
                    u.into_iter().next().unwrap_or(Value::Null)
                }
                _ => {
                    return Err(Error::config(
                        "settings.vnext[0].users",
                        "exactly one user is required",
                    ));
                }
            };
            let mut merged: Map<String, Value> = users.as_object().cloned().unwrap_or_default();
            for k in ["address", "port"] {
                if let Some(v) = srv.take(k) {
                    merged.insert(k.into(), v);
                }
            }
            srv.finish();
            f.finish();
            (
                Fields::from_map("settings.vnext[0]", &merged),
                "settings.vnext[0]",
            )
        }
        Some(other) => {
            return Err(Error::config(
                "settings.vnext",
                format!("expected a list, got {other}"),
            ));
        }
        None => (f, "settings"),
    };
    let address = s
        .string("address")?
        .filter(|a| !a.is_empty())
        .ok_or_else(|| Error::config(format!("{path}.address"), "is required"))?;
    let port = match s.take("port") {
        Some(Value::Number(n)) => n.as_u64().filter(|p| (1..=65535).contains(p)),
        Some(Value::String(p)) => p.parse::<u64>().ok().filter(|p| (1..=65535).contains(p)),
        _ => return Err(Error::config(format!("{path}.port"), "is required")),
    }
    .ok_or_else(|| Error::config(format!("{path}.port"), "must be 1-65535"))? as u16;
    let id = s
        .string("id")?
        .ok_or_else(|| Error::config(format!("{path}.id"), "is required"))?;
    let id = crate::proxy::vless::user_id(&format!("{path}.id"), &id)?;
    if let Some(enc) = s.string("encryption")? {
        if !enc.is_empty() && enc != "none" {
            return Err(Error::config(
                format!("{path}.encryption"),
                format!("{enc:?} is not supported; only \"none\""),
            ));
        }
    }
    if let Some(flow) = s.string("flow")?.filter(|f| !f.is_empty()) {
        return Err(Error::config(
            format!("{path}.flow"),
            format!("{flow:?} cannot run over XHTTP; leave flow empty"),
        ));
    }
    for k in ["level", "email"] {
        s.take(k);
    }
    s.finish();
    Ok((address, port, VlessSettings::new(id)))
}

/// A stream-settings object (`network`, `security`, `tlsSettings`, `xhttpSettings`) for
/// `address:port`, as the main side or as `downloadSettings`.
fn destination(path: &str, v: &Value, address: String, port: u16) -> Result<Config> {
    let mut f = Fields::new(path, v)?;
    let network = match f.take("method") {
        Some(m) => {
            f.take("network");
            Some(m)
        }
        None => f.take("network"),
    };
    let network = network
        .and_then(|n| n.as_str().map(str::to_string))
        .unwrap_or_default();
    if !is_xhttp(&network) {
        return Err(Error::config(
            format!("{path}.network"),
            format!("only xhttp (splithttp) is supported, got {network:?}"),
        ));
    }
    let security = f
        .string("security")?
        .unwrap_or_default()
        .to_ascii_lowercase();
    match security.as_str() {
        "tls" => {}
        "reality" => {
            return Err(Error::config(
                format!("{path}.security"),
                "REALITY is not supported by this client (HTTP/3 over TLS only)",
            ));
        }
        _ => {
            return Err(Error::config(
                format!("{path}.security"),
                format!("{security:?}: XHTTP over HTTP/3 needs \"tls\""),
            ));
        }
    }
    let tls_v = f.take("tlsSettings").unwrap_or_else(|| json!({}));
    let alpn = lookup(&tls_v, "alpn").cloned();
    let h3_only = match &alpn {
        Some(Value::Array(a)) => a.len() == 1 && a[0] == "h3",
        Some(Value::String(s)) => s.trim() == "h3",
        _ => false,
    };
    if !h3_only {
        return Err(Error::config(
            format!("{path}.tlsSettings.alpn"),
            "must be [\"h3\"]: with any other ALPN Xray uses HTTP/2 or HTTP/1.1 over TCP, which this client does not speak",
        ));
    }
    let tls = TlsSettings::from_json(&format!("{path}.tlsSettings"), &tls_v)?;
    let mut xhttp = match (f.take("xhttpSettings"), f.take("splithttpSettings")) {
        (Some(x), _) | (None, Some(x)) => {
            XhttpSettings::from_json(&format!("{path}.xhttpSettings"), &x)?
        }
        // No object at all: Xray's protobuf defaults, not its JSON ones.
        (None, None) => XhttpSettings::absent(),
    };
    refuse_unhonoured(path, &mut f)?;
    f.finish();
    let download = match xhttp.download_settings.take() {
        Some(d) => Some(Box::new(stream_destination(
            &format!("{path}.xhttpSettings.downloadSettings"),
            &d,
        )?)),
        None => None,
    };
    Ok(Config {
        address: super::unbracket(&address),
        port,
        tls,
        xhttp,
        vless: None,
        download,
        policy: Default::default(),
        limits: Default::default(),
    })
}

/// `downloadSettings`: a stream-settings object that also names `address` and `port`.
pub(crate) fn stream_destination(path: &str, v: &Value) -> Result<Config> {
    let mut m = v
        .as_object()
        .cloned()
        .ok_or_else(|| Error::config(path, "must be a JSON object"))?;
    let mut take = |k: &str| {
        let key = m.keys().find(|key| key.eq_ignore_ascii_case(k)).cloned();
        key.and_then(|key| m.remove(&key))
    };
    let address = match take("address") {
        Some(Value::String(a)) if !a.is_empty() => a,
        _ => return Err(Error::config(format!("{path}.address"), "is required")),
    };
    let port = take("port")
        .and_then(|p| {
            p.as_u64()
                .or_else(|| p.as_str().and_then(|s| s.parse().ok()))
        })
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| Error::config(format!("{path}.port"), "is required (1-65535)"))?
        as u16;
    let mut d = destination(path, &Value::Object(m), address, port)?;
    d.download = None;
    Ok(d)
}

/// A `vless://` share link as an outbound object (the shape GUI clients build).
fn share_link(link: &str) -> Result<Value> {
    let rest = &link[8..];
    let rest = rest.split('#').next().unwrap_or("");
    let (auth, query) = rest.split_once('?').unwrap_or((rest, ""));
    let auth = auth.trim_end_matches('/');
    let (user, hostport) = auth
        .rsplit_once('@')
        .ok_or_else(|| Error::config("link", "missing <id>@ before the host"))?;
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let (h, p) = h
            .split_once("]:")
            .ok_or_else(|| Error::config("link", "IPv6 host needs [addr]:port"))?;
        (h.to_string(), p)
    } else {
        let (h, p) = hostport
            .rsplit_once(':')
            .ok_or_else(|| Error::config("link", "missing :port after the host"))?;
        (h.to_string(), p)
    };
    if host.is_empty() {
        return Err(Error::config("link.address", "is required"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Error::config("link.port", format!("{port:?} is not a port")))?;
    let mut p: Vec<(String, String)> = Vec::new();
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        p.push((k.to_string(), unescape_link(&format!("link.{k}"), v)?));
    }
    let get = |k: &str| p.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    for k in ["insecure", "allowInsecure", "allow_insecure"] {
        if get(k) == Some("1") || get(k) == Some("true") {
            return Err(Error::config(
                format!("link.{k}"),
                "skipping certificate checks is refused (as current Xray refuses it); use pcs=<sha256 of the certificate>",
            ));
        }
    }
    if get("ech").is_some_and(|e| !e.is_empty()) {
        return Err(Error::config(
            "link.ech",
            "Encrypted Client Hello is not supported: the server name would go out in the clear",
        ));
    }
    if let Some(fm) = get("fm").filter(|s| !s.is_empty()) {
        let v: Value = serde_json::from_str(fm)
            .map_err(|err| Error::config("link.fm", format!("not valid JSON: {err}")))?;
        refuse_finalmask("link.fm", &v)?;
    }
    let network = get("type").unwrap_or("tcp");
    let mut tls = Map::new();
    if let Some(s) = link_sni(get("sni"), get("host")) {
        tls.insert("serverName".into(), json!(s));
    }
    if let Some(a) = get("alpn").filter(|s| !s.is_empty()) {
        tls.insert(
            "alpn".into(),
            json!(a.split(',').map(str::trim).collect::<Vec<_>>()),
        );
    }
    if let Some(pcs) = get("pcs").filter(|s| !s.is_empty()) {
        tls.insert("pinnedPeerCertSha256".into(), json!(pcs));
    }
    if let Some(fp) = get("fp") {
        tls.insert("fingerprint".into(), json!(fp));
    }
    let mut x = Map::new();
    x.insert(
        "path".into(),
        json!(get("path").filter(|s| !s.is_empty()).unwrap_or("/")),
    );
    for k in ["host", "mode"] {
        if let Some(v) = get(k).filter(|s| !s.is_empty()) {
            x.insert(k.into(), json!(v));
        }
    }
    if let Some(extra) = get("extra").filter(|s| !s.is_empty()) {
        let e: Value = serde_json::from_str(extra)
            .map_err(|err| Error::config("link.extra", format!("not valid JSON: {err}")))?;
        if !e.is_object() {
            return Err(Error::config("link.extra", "must be a JSON object"));
        }
        x.insert("extra".into(), e);
    }
    let id = unescape_link("link.id", user)?;
    Ok(json!({
        "protocol": "vless",
        "settings": {
            "address": host, "port": port, "id": id,
            "encryption": get("encryption").unwrap_or("none"),
            "flow": get("flow").unwrap_or(""),
        },
        "streamSettings": {
            "network": network,
            "security": get("security").unwrap_or("none"),
            "tlsSettings": tls,
            "xhttpSettings": x,
        }
    }))
}

/// The TLS server name of a link: `sni`, else `host` when it is a domain (its first entry
/// if it is a list), as v2rayN and v2rayNG do, so "clean IP + host=" CDN links verify the
/// CDN's certificate; else none (the address is used).
fn link_sni<'a>(sni: Option<&'a str>, host: Option<&'a str>) -> Option<&'a str> {
    if let Some(s) = sni.map(str::trim).filter(|s| !s.is_empty()) {
        return Some(s);
    }
    let host = host?.split(',').map(str::trim).find(|h| !h.is_empty())?;
    let is_ip = unbracket_str(host).parse::<std::net::IpAddr>().is_ok();
    (!is_ip).then_some(host)
}

fn unbracket_str(s: &str) -> &str {
    s.strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s)
}

/// Strict percent-decoding for link parts, like Go's URL parser: a malformed `%` or
/// non-UTF-8 bytes are an error naming the part. `+` stays a plus (paths and ids keep it;
/// an `extra` JSON never has one unencoded).
fn unescape_link(field: &str, s: &str) -> Result<String> {
    unescape_strict(s).ok_or_else(|| {
        Error::config(
            field,
            "bad percent-encoding (a % must be followed by two hex digits, and the text be UTF-8)",
        )
    })
}

#[cfg(test)]
mod tests;
