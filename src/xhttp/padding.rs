//! Request padding (protocol doc §2.4): its length draw, the `repeat-x` and `tokenish`
//! generators, and the length rule a server checks.

use super::range::Range;
use rand::Rng;

/// Where obfs padding goes on a request (`xPaddingPlacement`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaddingPlacement {
    /// Header `<xPaddingHeader>` = base URL with query `<key>=<padding>`.
    QueryInHeader,
    /// Header `<xPaddingHeader>` = padding.
    Header,
    /// URL query `<key>=<padding>`.
    Query,
    /// Cookie `<key>=<padding>`.
    Cookie,
}

impl PaddingPlacement {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queryInHeader" | "" => Self::QueryInHeader,
            "header" => Self::Header,
            "query" => Self::Query,
            "cookie" => Self::Cookie,
            _ => return None,
        })
    }
}

/// How padding characters are chosen (`xPaddingMethod`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaddingMethod {
    RepeatX,
    Tokenish,
}

impl PaddingMethod {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "repeat-x" | "" => Self::RepeatX,
            "tokenish" => Self::Tokenish,
            _ => return None,
        })
    }
}

/// Padding settings of one side (client or server); the defaults are Xray's JSON defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Padding {
    pub bytes: Range,
    pub obfs: bool,
    pub key: String,
    pub header: String,
    pub placement: PaddingPlacement,
    pub method: PaddingMethod,
}

impl Default for Padding {
    fn default() -> Self {
        Padding {
            bytes: Range::new(100, 1000),
            obfs: false,
            key: "x_padding".into(),
            header: "X-Padding".into(),
            placement: PaddingPlacement::QueryInHeader,
            method: PaddingMethod::RepeatX,
        }
    }
}

impl Padding {
    /// The effective (placement, header, key, method): the non-obfs mode is `queryInHeader`
    /// on `Referer` with key `x_padding` and `repeat-x`.
    pub fn effective(&self) -> (PaddingPlacement, &str, &str, PaddingMethod) {
        if self.obfs {
            (self.placement, &self.header, &self.key, self.method)
        } else {
            (
                PaddingPlacement::QueryInHeader,
                "Referer",
                "x_padding",
                PaddingMethod::RepeatX,
            )
        }
    }

    /// Draws a length and generates one padding value.
    pub fn generate<R: Rng + ?Sized>(&self, rng: &mut R) -> String {
        let n = self.bytes.draw(rng).max(0) as usize;
        generate(self.effective().3, n, rng)
    }

    /// The server-side check of a received padding value (protocol doc §3 step 5):
    /// `repeat-x` counts characters in [from, to]; `tokenish` checks the Huffman-coded length
    /// in [from-2, to+2]. Only the length matters. An empty value is invalid.
    pub fn accepts(&self, value: &str) -> bool {
        if value.is_empty() {
            return false;
        }
        let (from, to) = (self.bytes.from, self.bytes.to);
        match self.effective().3 {
            PaddingMethod::RepeatX => {
                let n = value.chars().count() as i64;
                n >= from && n <= to
            }
            PaddingMethod::Tokenish => {
                let n = huffman_len(value.as_bytes()) as i64;
                n >= from - 2 && n <= to + 2
            }
        }
    }
}

/// Generates `n` bytes' worth of padding with `method`.
pub fn generate<R: Rng + ?Sized>(method: PaddingMethod, n: usize, rng: &mut R) -> String {
    match method {
        PaddingMethod::RepeatX => "X".repeat(n),
        PaddingMethod::Tokenish => tokenish(n, rng),
    }
}

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A random base62 token whose HPACK Huffman length is within ±2 bytes of `n`: start with
/// ceil(n/0.8) characters, then nudge up to 150 times (append `X`/`Z` alternately when short,
/// drop the last character when long), as Xray does.
fn tokenish<R: Rng + ?Sized>(n: usize, rng: &mut R) -> String {
    if n == 0 {
        return String::new();
    }
    let start = (n * 5).div_ceil(4);
    let mut s: Vec<u8> = (0..start)
        .map(|_| BASE62[rng.random_range(0..BASE62.len())])
        .collect();
    let mut bits: usize = s.iter().map(|&c| HUFFMAN_BITS[c as usize] as usize).sum();
    let target = n as i64;
    let mut append_x = true;
    for _ in 0..150 {
        let len = bits.div_ceil(8) as i64;
        if (len - target).abs() <= 2 {
            break;
        }
        if len < target {
            let c = if append_x { b'X' } else { b'Z' };
            append_x = !append_x;
            bits += HUFFMAN_BITS[c as usize] as usize;
            s.push(c);
        } else if let Some(c) = s.pop() {
            bits -= HUFFMAN_BITS[c as usize] as usize;
        }
    }
    // Only ASCII alphanumerics were pushed.
    String::from_utf8(s).unwrap_or_default()
}

/// Length in bytes of `s` once HPACK/QPACK Huffman-coded (RFC 7541 Appendix B).
pub fn huffman_len(s: &[u8]) -> usize {
    let bits: usize = s.iter().map(|&c| HUFFMAN_BITS[c as usize] as usize).sum();
    bits.div_ceil(8)
}

/// Code length in bits of each octet in the HPACK Huffman code (RFC 7541 Appendix B).
#[rustfmt::skip]
const HUFFMAN_BITS: [u8; 256] = [
    13,23,28,28,28,28,28,28,28,24,30,28,28,30,28,28,28,28,28,28,28,28,30,28,28,28,28,28,28,28,28,28,
    6,10,10,12,13,6,8,11,10,10,8,11,8,6,6,6,5,5,5,6,6,6,6,6,6,6,7,8,15,6,12,10,
    13,6,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,8,7,8,13,19,13,14,6,
    15,5,6,5,6,5,6,6,6,5,7,7,6,6,6,5,6,7,6,5,5,6,7,7,7,7,7,15,11,14,13,28,
    20,22,20,20,22,22,22,23,22,23,23,23,23,23,24,23,24,24,22,23,24,23,23,23,23,21,22,23,22,23,23,24,
    22,21,20,22,22,23,23,21,23,22,22,24,21,22,23,23,21,21,22,21,23,22,23,23,20,22,22,22,23,22,22,23,
    26,26,20,19,22,23,22,25,26,26,26,27,27,26,24,25,19,21,26,27,27,26,27,24,21,21,26,26,28,27,27,27,
    20,24,20,21,22,21,21,23,22,22,25,25,24,24,26,23,26,27,26,26,27,27,27,27,27,28,27,27,27,27,27,26,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huffman_lengths_match_rfc7541_examples() {
        // RFC 7541 C.4.1: "www.example.com" encodes to 12 octets.
        assert_eq!(huffman_len(b"www.example.com"), 12);
        // C.4.2: "no-cache" -> 6 octets; C.4.3: "custom-value" -> 9 octets.
        assert_eq!(huffman_len(b"no-cache"), 6);
        assert_eq!(huffman_len(b"custom-value"), 9);
        // 'X' has an 8-bit code, so N X's cost N bytes (why Xray pads with X).
        assert_eq!(huffman_len("X".repeat(777).as_bytes()), 777);
    }

    #[test]
    fn tokenish_hits_target_within_two_bytes() {
        let mut rng = rand::rng();
        for n in [1usize, 5, 64, 100, 333, 999, 4000] {
            for _ in 0..20 {
                let t = tokenish(n, &mut rng);
                assert!(t.bytes().all(|c| c.is_ascii_alphanumeric()));
                let len = huffman_len(t.as_bytes()) as i64;
                assert!((len - n as i64).abs() <= 2, "n={n} got {len}");
            }
        }
    }

    #[test]
    fn server_accepts_only_lengths_in_range() {
        let p = Padding::default();
        assert!(!p.accepts(""));
        assert!(!p.accepts(&"X".repeat(99)));
        assert!(p.accepts(&"X".repeat(100)));
        assert!(p.accepts(&"X".repeat(1000)));
        assert!(!p.accepts(&"X".repeat(1001)));
        let t = Padding {
            obfs: true,
            method: PaddingMethod::Tokenish,
            ..Padding::default()
        };
        let mut rng = rand::rng();
        for _ in 0..50 {
            let v = t.generate(&mut rng);
            assert!(t.accepts(&v), "{}", v.len());
        }
        assert!(!t.accepts(&"X".repeat(97)));
        assert!(t.accepts(&"X".repeat(98)));
    }

    #[test]
    fn generated_default_padding_is_100_to_999_x() {
        let p = Padding::default();
        let mut rng = rand::rng();
        for _ in 0..500 {
            let v = p.generate(&mut rng);
            assert!((100..1000).contains(&v.len()));
            assert!(v.bytes().all(|c| c == b'X'));
        }
    }
}
