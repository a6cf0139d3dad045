//! Percent-encoding as Go's `net/url` does it, for paths, query values and share links. A leaf
//! module: both the config layer (link decoding) and the request shapes use it.

/// Go's `url.QueryEscape`: unreserved bytes stay, space becomes `+`, the rest `%XX`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Lenient query decoding (`+` is a space, a malformed `%` stays as it is), for values a
/// server or a test reads back.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Go's `URL.EscapedPath()` for a path without a raw form: everything but letters, digits,
/// `-_.~` and `$&+,/:;=@` is percent-encoded (a `%` too: a configured `/a%20b` is sent as
/// `/a%2520b`, which Xray's server decodes back to the configured `/a%20b`).
pub fn escape_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The configured query goes out as written, as Go sends it; only bytes that are not
/// allowed in a URI at all (spaces, controls, non-ASCII, `"<>\^`{|}`) are percent-encoded,
/// where Go would send them raw and break the request line.
pub fn escape_invalid_query(q: &str) -> String {
    let mut out = String::with_capacity(q.len());
    for b in q.bytes() {
        if b.is_ascii_graphic() && !b"\"<>\\^`{|}#".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Go's `QueryUnescape`: `+` is a space; a malformed `%` is an error. Bytes that are not
/// UTF-8 are replaced (Go strings are bytes), never dropped.
pub fn unescape_query(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let h = hex_val(*b.get(i + 1)?)?;
                let l = hex_val(*b.get(i + 2)?)?;
                out.push(h << 4 | l);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Percent-decoding that refuses what Go's URL parser refuses: a `%` not followed by two
/// hex digits, or bytes that are not UTF-8. `+` stays a plus.
pub fn unescape_strict(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = hex_val(*b.get(i + 1)?)?;
            let l = hex_val(*b.get(i + 2)?)?;
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_escaping_roundtrips() {
        for v in ["a b", "x&y=z", "ü", "100%"] {
            assert_eq!(unescape(&escape(v)), v);
        }
        assert_eq!(unescape("%zz%4"), "%zz%4");
        for v in ["a b", "x&y=z", "ü", "100%"] {
            assert_eq!(unescape_query(&escape(v)).as_deref(), Some(v));
        }
        assert_eq!(unescape_query("%zz%4"), None);
        assert_eq!(escape_path("/a%20b/ü c?"), "/a%2520b/%C3%BC%20c%3F");
        assert_eq!(escape_invalid_query("a=x y&b=%41"), "a=x%20y&b=%41");
        assert_eq!(unescape_strict("a%2Fb+c").as_deref(), Some("a/b+c"));
        for bad in ["%zz", "%4", "%", "%E4%B8"] {
            assert_eq!(unescape_strict(bad), None, "{bad}");
        }
    }
}
