//! `xhttpSettings`: the typed transport settings, their JSON reading and the validation
//! rules Xray applies (protocol doc §7.1). Shared by the client and the test server.

use super::json::Fields;
use crate::error::{Error, Result};
use crate::xhttp::padding::{Padding, PaddingMethod, PaddingPlacement};
use crate::xhttp::range::Range;
use crate::xmux::XmuxSettings;
use serde_json::Value;

/// The largest `xPaddingBytes` accepted: padding is built for every request.
const MAX_PADDING: i64 = 1 << 20;
/// The longest session id accepted from `sessionIDLength` (a UUID has 36 characters).
const MAX_SESSION_ID_LENGTH: i64 = 256;

/// `mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Auto,
    PacketUp,
    StreamUp,
    StreamOne,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "" | "auto" => Mode::Auto,
            "packet-up" => Mode::PacketUp,
            "stream-up" => Mode::StreamUp,
            "stream-one" => Mode::StreamOne,
            _ => return None,
        })
    }

    /// What the client dials: `auto` is `packet-up` because this project has no REALITY.
    pub fn resolve(self) -> Mode {
        match self {
            Mode::Auto => Mode::PacketUp,
            m => m,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::PacketUp => "packet-up",
            Mode::StreamUp => "stream-up",
            Mode::StreamOne => "stream-one",
        }
    }
}

/// Where the session id or the seq goes (`sessionIDPlacement`, `seqPlacement`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    Path,
    Query,
    Header,
    Cookie,
}

impl Placement {
    fn parse(s: &str) -> Option<Placement> {
        Some(match s {
            "" | "path" => Placement::Path,
            "query" => Placement::Query,
            "header" => Placement::Header,
            "cookie" => Placement::Cookie,
            _ => return None,
        })
    }
}

/// Where packet-up upload data goes (`uplinkDataPlacement`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataPlacement {
    /// Client: body. Server: accepts header ‖ cookie ‖ body.
    Auto,
    Body,
    Header,
    Cookie,
}

impl DataPlacement {
    fn parse(s: &str) -> Option<DataPlacement> {
        Some(match s {
            "" | "auto" => DataPlacement::Auto,
            "body" => DataPlacement::Body,
            "header" => DataPlacement::Header,
            "cookie" => DataPlacement::Cookie,
            _ => return None,
        })
    }
}

/// The session-id alphabet: UUIDv4 by default, or `length` characters from `table`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionIdShape {
    Uuid,
    Table { table: Vec<char>, length: Range },
}

/// All `xhttpSettings` fields, defaults already applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XhttpSettings {
    pub host: String,
    pub path: String,
    pub mode: Mode,
    pub headers: Vec<(String, String)>,
    pub padding: Padding,
    pub uplink_http_method: String,
    pub session_placement: Placement,
    pub session_key: String,
    pub session_id: SessionIdShape,
    pub seq_placement: Placement,
    pub seq_key: String,
    pub uplink_data_placement: DataPlacement,
    pub uplink_data_key: String,
    pub uplink_chunk_size: Range,
    pub no_grpc_header: bool,
    pub no_sse_header: bool,
    pub sc_max_each_post_bytes: Range,
    pub sc_min_posts_interval_ms: Range,
    pub sc_max_buffered_posts: i64,
    pub sc_stream_up_server_secs: Range,
    pub xmux: XmuxSettings,
    /// `downloadSettings` as given (a stream-settings object), turned into a destination by
    /// the config import.
    pub download_settings: Option<Value>,
}

impl Default for XhttpSettings {
    fn default() -> Self {
        XhttpSettings {
            host: String::new(),
            path: "/".into(),
            mode: Mode::Auto,
            headers: Vec::new(),
            padding: Padding::default(),
            uplink_http_method: "POST".into(),
            session_placement: Placement::Path,
            session_key: String::new(),
            session_id: SessionIdShape::Uuid,
            seq_placement: Placement::Path,
            seq_key: String::new(),
            uplink_data_placement: DataPlacement::Auto,
            uplink_data_key: String::new(),
            uplink_chunk_size: Range::default(),
            no_grpc_header: false,
            no_sse_header: false,
            sc_max_each_post_bytes: Range::fixed(1_000_000),
            sc_min_posts_interval_ms: Range::fixed(30),
            sc_max_buffered_posts: 30,
            sc_stream_up_server_secs: Range::new(20, 80),
            xmux: XmuxSettings::xray_defaults(),
            download_settings: None,
        }
    }
}

fn key_default(placement: Placement, query_or_cookie: &str, header: &str) -> String {
    match placement {
        Placement::Header => header.into(),
        _ => query_or_cookie.into(),
    }
}

fn named_table(name: &str) -> String {
    const UPPER: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    const LOWER: &str = "abcdefghijklmnopqrstuvwxyz";
    const DIGITS: &str = "0123456789";
    match name {
        "ALPHABET" => UPPER.into(),
        "Alphabet" => format!("{UPPER}{LOWER}"),
        "alphabet" => LOWER.into(),
        "BASE36" => format!("{DIGITS}{UPPER}"),
        "base36" => format!("{DIGITS}{LOWER}"),
        "Base62" => format!("{DIGITS}{UPPER}{LOWER}"),
        "HEX" => format!("{DIGITS}ABCDEF"),
        "hex" => format!("{DIGITS}abcdef"),
        "number" => DIGITS.into(),
        literal => literal.into(),
    }
}

/// `sessionIDTable` with `sessionIDLength`: a named or literal alphabet, checked like
/// Xray's JSON layer (enough distinct ids), plus our rule that ids need no escaping.
fn session_id_table(table: &str, length: Range, tp: &str, lp: &str) -> Result<SessionIdShape> {
    let table = named_table(table);
    // Ids go into paths, queries, headers and cookies as they are: only characters that
    // need no escaping anywhere (RFC 3986 unreserved).
    if let Some(c) = table
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')))
    {
        return Err(Error::config(
            tp,
            format!("{c:?} is not allowed: use letters, digits and - . _ ~ only"),
        ));
    }
    if length.to > MAX_SESSION_ID_LENGTH {
        return Err(Error::config(
            lp,
            format!(
                "at most {MAX_SESSION_ID_LENGTH} characters, got {}",
                length.to
            ),
        ));
    }
    if length.from <= 0 {
        return Err(Error::config(
            lp,
            format!(
                "must be greater than 0 with a sessionIDTable, got {}-{}",
                length.from, length.to
            ),
        ));
    }
    // Distinct characters only (a repeated one adds no ids), in table order.
    let mut chars: Vec<char> = Vec::new();
    for c in table.chars() {
        if !chars.contains(&c) {
            chars.push(c);
        }
    }
    // Enough distinct ids to avoid collisions: sum of |table|^k over the range >= 2^31.
    let n = chars.len() as f64;
    let space: f64 = (length.from..=length.to).map(|k| n.powi(k as i32)).sum();
    if space < 2f64.powi(31) {
        return Err(Error::config(
            lp,
            format!(
                "too few possible session ids ({space:.0} < 2^31) with {} characters",
                chars.len()
            ),
        ));
    }
    Ok(SessionIdShape::Table {
        table: chars,
        length,
    })
}

impl XhttpSettings {
    /// What Xray uses when a stream has no `xhttpSettings` object at all: the protobuf
    /// defaults, which differ from the JSON layer's only in XMUX (no limits: one
    /// connection, reused for everything).
    pub fn absent() -> Self {
        // An empty object always reads; the fallback is never taken.
        let empty = Value::Object(Default::default());
        XhttpSettings {
            xmux: XmuxSettings::default(),
            ..Self::from_json("xhttpSettings", &empty).unwrap_or_default()
        }
    }

    /// Reads an `xhttpSettings` object. `extra`, when present, replaces every field except
    /// `host`, `path` and `mode` (protocol doc §7.1).
    pub fn from_json(path: &str, v: &Value) -> Result<Self> {
        let mut f = Fields::new(path, v)?;
        let host = f.string("host")?;
        let p = f.string("path")?;
        let mode = f.string("mode")?;
        let extra = f.take("extra");
        let mut s = match extra {
            Some(extra) => {
                if !extra.is_object() {
                    return Err(Error::config(
                        f.path_of("extra"),
                        format!("must be a JSON object, got {extra}"),
                    ));
                }
                f.finish();
                let mut e = Fields::new(&format!("{path}.extra"), &extra)?;
                // host/path/mode inside extra are ignored, like Xray.
                for k in ["host", "path", "mode"] {
                    e.take(k);
                }
                Self::read_fields(e)?
            }
            None => Self::read_fields(f)?,
        };
        if let Some(h) = host {
            s.host = h;
        }
        if let Some(p) = p {
            s.path = p;
        }
        if let Some(m) = mode {
            s.mode = Mode::parse(&m).ok_or_else(|| {
                Error::config(
                    format!("{path}.mode"),
                    format!(
                        "unknown mode {m:?} (expected auto, packet-up, stream-up or stream-one)"
                    ),
                )
            })?;
        }
        s.validate(path)?;
        Ok(s)
    }

    fn read_fields(mut f: Fields) -> Result<Self> {
        let mut s = XhttpSettings::default();
        if let Some(mut h) = f.object("headers")? {
            let hp = f.path_of("headers");
            let mut headers = Vec::new();
            for (k, v) in std::mem::take(h.entries_mut()) {
                let Value::String(v) = v else {
                    return Err(Error::config(
                        format!("{hp}.{k}"),
                        "header values must be strings",
                    ));
                };
                if k.eq_ignore_ascii_case("host") {
                    return Err(Error::config(
                        format!("{hp}.{k}"),
                        "a Host header is not allowed here; use xhttpSettings.host",
                    ));
                }
                headers.push((k, v));
            }
            s.headers = headers;
        }
        if let Some(r) = f.range("xPaddingBytes")? {
            if !r.is_zero() && (r.from <= 0 || r.to <= 0) {
                return Err(Error::config(
                    f.path_of("xPaddingBytes"),
                    format!(
                        "padding cannot be disabled: from and to must be > 0, got {}-{}",
                        r.from, r.to
                    ),
                ));
            }
            if r.to > MAX_PADDING {
                return Err(Error::config(
                    f.path_of("xPaddingBytes"),
                    format!(
                        "at most {MAX_PADDING} bytes (padding is built per request), got {}",
                        r.to
                    ),
                ));
            }
            if !r.is_zero() {
                s.padding.bytes = r;
            }
        }
        if let Some(b) = f.bool("xPaddingObfsMode")? {
            s.padding.obfs = b;
        }
        if let Some(k) = f.string("xPaddingKey")?.filter(|k| !k.is_empty()) {
            s.padding.key = k;
        }
        if let Some(h) = f.string("xPaddingHeader")?.filter(|k| !k.is_empty()) {
            s.padding.header = h;
        }
        if let Some(p) = f.string("xPaddingPlacement")? {
            s.padding.placement = PaddingPlacement::parse(&p).ok_or_else(|| {
                Error::config(
                    f.path_of("xPaddingPlacement"),
                    format!(
                        "unknown placement {p:?} (expected queryInHeader, header, query or cookie)"
                    ),
                )
            })?;
        }
        if let Some(m) = f.string("xPaddingMethod")? {
            s.padding.method = PaddingMethod::parse(&m).ok_or_else(|| {
                Error::config(
                    f.path_of("xPaddingMethod"),
                    format!("unknown method {m:?} (expected repeat-x or tokenish)"),
                )
            })?;
        }
        if let Some(m) = f.string("uplinkHTTPMethod")?.filter(|m| !m.is_empty()) {
            let m = m.to_ascii_uppercase();
            if http::Method::from_bytes(m.as_bytes()).is_err() {
                return Err(Error::config(
                    f.path_of("uplinkHTTPMethod"),
                    format!("{m:?} is not an HTTP method"),
                ));
            }
            s.uplink_http_method = m;
        }
        // `sessionPlacement`/`sessionKey` are the names before Xray's 2026-06 rename.
        let sp = match f.string("sessionIDPlacement")? {
            Some(v) => Some(("sessionIDPlacement", v)),
            None => f
                .string("sessionPlacement")?
                .map(|v| ("sessionPlacement", v)),
        };
        if let Some((name, p)) = sp {
            s.session_placement = Placement::parse(&p).ok_or_else(|| {
                Error::config(
                    f.path_of(name),
                    format!("unknown placement {p:?} (expected path, query, header or cookie)"),
                )
            })?;
        }
        let sk = match f.string("sessionIDKey")? {
            Some(v) => Some(v),
            None => f.string("sessionKey")?,
        };
        if let Some(p) = f.string("seqPlacement")? {
            s.seq_placement = Placement::parse(&p).ok_or_else(|| {
                Error::config(
                    f.path_of("seqPlacement"),
                    format!("unknown placement {p:?} (expected path, query, header or cookie)"),
                )
            })?;
        }
        let qk = f.string("seqKey")?;
        s.session_key = sk
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| key_default(s.session_placement, "x_session", "X-Session"));
        s.seq_key = qk
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| key_default(s.seq_placement, "x_seq", "X-Seq"));

        let table = f.string("sessionIDTable")?.unwrap_or_default();
        let length = f.range("sessionIDLength")?.unwrap_or_default();
        // Without a table Xray ignores sessionIDLength and uses a UUID (GenerateSessionID);
        // so do we.
        if !table.is_empty() {
            s.session_id = session_id_table(
                &table,
                length,
                &f.path_of("sessionIDTable"),
                &f.path_of("sessionIDLength"),
            )?;
        }

        if let Some(p) = f.string("uplinkDataPlacement")? {
            s.uplink_data_placement = DataPlacement::parse(&p).ok_or_else(|| {
                Error::config(
                    f.path_of("uplinkDataPlacement"),
                    format!("unknown placement {p:?} (expected auto, body, header or cookie)"),
                )
            })?;
        }
        let dk = f.string("uplinkDataKey")?.filter(|k| !k.is_empty());
        s.uplink_data_key = dk.unwrap_or_else(|| match s.uplink_data_placement {
            DataPlacement::Cookie => "x_data".into(),
            _ => "X-Data".into(),
        });
        let cs = f.range("uplinkChunkSize")?.unwrap_or_default();
        s.uplink_chunk_size = if cs.is_zero() {
            match s.uplink_data_placement {
                DataPlacement::Cookie => Range::new(2048, 3072),
                _ => Range::new(3000, 4000),
            }
        } else {
            Range::new(cs.from.max(64), cs.to.max(64))
        };
        if let Some(b) = f.bool("noGRPCHeader")? {
            s.no_grpc_header = b;
        }
        if let Some(b) = f.bool("noSSEHeader")? {
            s.no_sse_header = b;
        }
        if let Some(r) = f.range("scMaxEachPostBytes")? {
            if !r.is_zero() {
                if r.from <= 0 || r.to <= 0 {
                    return Err(Error::config(
                        f.path_of("scMaxEachPostBytes"),
                        format!("from and to must be > 0, got {}-{}", r.from, r.to),
                    ));
                }
                s.sc_max_each_post_bytes = r;
            }
        }
        // A `from` of 0 or less means no pacing at all (Go sleeps only when from > 0).
        if let Some(r) = f.range("scMinPostsIntervalMs")? {
            if !r.is_zero() {
                s.sc_min_posts_interval_ms = r;
            }
        }
        if let Some(n) = f.int("scMaxBufferedPosts")? {
            if n < 0 {
                return Err(Error::config(
                    f.path_of("scMaxBufferedPosts"),
                    "must not be negative",
                ));
            }
            if n > 0 {
                s.sc_max_buffered_posts = n;
            }
        }
        // Server only; a `to` of 0 or less disables the keep-alive padding.
        if let Some(r) = f.range("scStreamUpServerSecs")? {
            if !r.is_zero() {
                s.sc_stream_up_server_secs = r;
            }
        }
        s.xmux = XmuxSettings::from_json(&f.path_of("xmux"), f.take("xmux").as_ref())?;
        s.download_settings = f.take("downloadSettings");
        // Renamed or removed keys Xray now ignores; accepted silently for old configs.
        for old in [
            "scMaxConcurrentPosts",
            "maxUploadSize",
            "maxConcurrentUploads",
            "minUploadIntervalMs",
            "keepAlivePeriod",
            "serverMaxHeaderBytes",
        ] {
            if f.take(old).is_some() {
                log::debug!("config: `{}` is not used by this client", f.path_of(old));
            }
        }
        f.finish();
        Ok(s)
    }

    /// Rules that involve several fields, checked after defaults are applied.
    fn validate(&self, path: &str) -> Result<()> {
        let packet_up = self.mode == Mode::PacketUp;
        if self.uplink_http_method == "GET" && !packet_up {
            return Err(Error::config(
                format!("{path}.uplinkHTTPMethod"),
                format!(
                    "GET is only allowed in packet-up mode, not {}",
                    self.mode.name()
                ),
            ));
        }
        if matches!(
            self.uplink_data_placement,
            DataPlacement::Header | DataPlacement::Cookie
        ) && !packet_up
        {
            return Err(Error::config(
                format!("{path}.uplinkDataPlacement"),
                format!(
                    "header/cookie data placement is only allowed in packet-up mode, not {}",
                    self.mode.name()
                ),
            ));
        }
        Ok(())
    }

    /// The path prefix a server of Xray v26.7.11 or later checks (its `GetNormalizedPath`):
    /// the path up to `?`, with a leading `/`, and a trailing `/` only if the session id or
    /// seq goes into the path.
    pub fn normalized_path(&self) -> String {
        let mut p = self.leading_slash_path();
        let in_path =
            self.session_placement == Placement::Path || self.seq_placement == Placement::Path;
        if in_path && !p.ends_with('/') {
            p.push('/');
        }
        p
    }

    /// The path prefix a server before Xray v26.7.11 checks: always with a trailing `/`.
    pub fn legacy_normalized_path(&self) -> String {
        let mut p = self.leading_slash_path();
        if !p.ends_with('/') {
            p.push('/');
        }
        p
    }

    /// The path this client sends (before session and seq): always with a trailing `/`,
    /// as Xray's clients before v26.7.11 did. Servers before v26.7.11 check the prefix
    /// `/p/`, later ones `/p` (or `/p/` with a placement in the path), and `/p/` starts
    /// with both, so every deployed server accepts it (Xray v26.7's own client sends `/p`,
    /// which older servers answer with 404).
    pub fn request_path(&self) -> String {
        self.legacy_normalized_path()
    }

    fn leading_slash_path(&self) -> String {
        let p = self.path.split('?').next().unwrap_or("");
        if p.starts_with('/') {
            p.to_string()
        } else {
            format!("/{p}")
        }
    }

    /// `GetNormalizedQuery`: whatever followed `?` in the path.
    pub fn normalized_query(&self) -> &str {
        self.path.split_once('?').map(|(_, q)| q).unwrap_or("")
    }
}
