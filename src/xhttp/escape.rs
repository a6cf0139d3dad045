//! Percent-encoding as Go's `net/url` does it, for query values and share links. A leaf
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
        assert_eq!(unescape_strict("a%2Fb+c").as_deref(), Some("a/b+c"));
        for bad in ["%zz", "%4", "%", "%E4%B8"] {
            assert_eq!(unescape_strict(bad), None, "{bad}");
        }
    }
}
