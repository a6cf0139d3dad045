//! Xray's `RangeConfig` (`Int32Range` in JSON): `{from, to}` drawn as [from, to) unless equal.

use rand::Rng;

/// An inclusive-looking but half-open range, exactly as Xray draws it: a draw lies in
/// `[from, to)` unless `from == to`, in which case it is `from`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Range {
    pub from: i64,
    pub to: i64,
}

impl Range {
    pub const fn new(from: i64, to: i64) -> Self {
        Range { from, to }
    }

    pub const fn fixed(v: i64) -> Self {
        Range { from: v, to: v }
    }

    pub fn is_zero(&self) -> bool {
        self.from == 0 && self.to == 0
    }

    /// Draws a value. Parsing guarantees `from <= to`; an inverted range built by hand yields
    /// `from` rather than panicking.
    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R) -> i64 {
        if self.from >= self.to {
            self.from
        } else {
            rng.random_range(self.from..self.to)
        }
    }

    /// Parses the JSON forms Xray accepts: a number, `"a-b"`, `"a"`, `""` (zero), or an object
    /// `{"from": a, "to": b}`. An inverted range (`"1000-100"`) is swapped, as Go's
    /// `Int32Range.ensureOrder` does, so every config Xray takes means the same here. The
    /// error text names what was wrong, not the field (the caller adds that).
    pub fn from_json(v: &serde_json::Value) -> Result<Range, String> {
        Self::parse(v).map(Range::ordered)
    }

    /// `from <= to`, swapping if needed.
    pub fn ordered(self) -> Range {
        if self.from > self.to {
            Range::new(self.to, self.from)
        } else {
            self
        }
    }

    fn parse(v: &serde_json::Value) -> Result<Range, String> {
        use serde_json::Value;
        // Xray's ranges are int32: larger values are refused rather than overflowing later.
        let int = |v: &Value| -> Result<i64, String> {
            v.as_i64()
                .filter(|n| i32::try_from(*n).is_ok())
                .ok_or_else(|| format!("expected a 32-bit integer, got {v}"))
        };
        match v {
            Value::Number(_) => int(v).map(Range::fixed),
            Value::String(s) => parse_range_str(s),
            Value::Object(m) => {
                let mut from = None;
                let mut to = None;
                for (k, v) in m {
                    match k.to_ascii_lowercase().as_str() {
                        "from" => from = Some(int(v)?),
                        "to" => to = Some(int(v)?),
                        _ => return Err(format!("unknown key {k:?} in range object")),
                    }
                }
                let from = from.unwrap_or(0);
                Ok(Range::new(from, to.unwrap_or(from)))
            }
            Value::Null => Ok(Range::default()),
            _ => Err(format!(
                "expected a number, \"from-to\" string or object, got {v}"
            )),
        }
    }
}

fn parse_range_str(s: &str) -> Result<Range, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Range::default());
    }
    let num = |t: &str| -> Result<i64, String> {
        t.trim()
            .parse::<i32>()
            .map(i64::from)
            .map_err(|_| format!("{s:?} is not a number or \"from-to\" range of 32-bit integers"))
    };
    // A leading '-' belongs to the first number; the separator is the next '-'.
    let split_at = s
        .char_indices()
        .skip(1)
        .find(|&(_, c)| c == '-')
        .map(|(i, _)| i);
    match split_at {
        None => num(s).map(Range::fixed),
        Some(i) => Ok(Range::new(num(&s[..i])?, num(&s[i + 1..])?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_every_json_form() {
        assert_eq!(Range::from_json(&json!(100)).unwrap(), Range::fixed(100));
        assert_eq!(
            Range::from_json(&json!("100-1000")).unwrap(),
            Range::new(100, 1000)
        );
        assert_eq!(Range::from_json(&json!("7")).unwrap(), Range::fixed(7));
        assert_eq!(Range::from_json(&json!("")).unwrap(), Range::default());
        assert_eq!(Range::from_json(&json!("-1")).unwrap(), Range::fixed(-1));
        assert_eq!(
            Range::from_json(&json!("-5--1")).unwrap(),
            Range::new(-5, -1)
        );
        assert_eq!(
            Range::from_json(&json!({"from": 2, "To": 9})).unwrap(),
            Range::new(2, 9)
        );
        assert!(Range::from_json(&json!("abc")).is_err());
        assert!(Range::from_json(&json!([1])).is_err());
        assert!(Range::from_json(&json!(1.5)).is_err());
        assert!(Range::from_json(&json!(3_000_000_000u64)).is_err());
        assert!(Range::from_json(&json!("1-9999999999")).is_err());
        // Inverted ranges are swapped, like Go's Int32Range.
        assert_eq!(
            Range::from_json(&json!("1000-100")).unwrap(),
            Range::new(100, 1000)
        );
        assert_eq!(
            Range::from_json(&json!("20--1")).unwrap(),
            Range::new(-1, 20)
        );
        assert_eq!(
            Range::from_json(&json!({"from": 9, "to": 2})).unwrap(),
            Range::new(2, 9)
        );
    }

    #[test]
    fn draw_is_half_open_unless_fixed() {
        let mut rng = rand::rng();
        let r = Range::new(100, 103);
        let mut seen = [false; 3];
        for _ in 0..2000 {
            let v = r.draw(&mut rng);
            assert!((100..103).contains(&v), "{v}");
            seen[(v - 100) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(Range::fixed(5).draw(&mut rng), 5);
        assert_eq!(Range::new(9, 3).draw(&mut rng), 9);
    }
}
