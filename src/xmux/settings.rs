//! `xmux` settings (protocol doc §5.1): six fields with Xray's ranges and JSON defaults.

use crate::config::Fields;
use crate::error::{Error, Result};
use crate::xhttp::range::Range;
use serde_json::Value;
use std::time::Duration;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XmuxSettings {
    /// Max tunnels running at once on one connection (drawn once per pool); 0 = unlimited.
    pub max_concurrency: Range,
    /// Open connections until the pool holds this many, then reuse at random; 0 = no target.
    pub max_connections: Range,
    /// How many times one connection may be picked (the creating pick counts); 0 = unlimited.
    pub c_max_reuse_times: Range,
    /// How many HTTP requests one connection may carry; 0 = unlimited.
    pub h_max_request_times: Range,
    /// Seconds after creation past which a connection is not picked; 0 = unlimited.
    pub h_max_reusable_secs: Range,
    /// 0 → 10 s keep-alive on H3; > 0 → that many seconds; < 0 → off.
    pub h_keep_alive_period: i64,
}

impl XmuxSettings {
    /// Xray's JSON defaults, applied when `xmux` is absent or all zero.
    pub fn xray_defaults() -> Self {
        XmuxSettings {
            max_connections: Range::fixed(3),
            h_max_request_times: Range::new(600, 900),
            h_max_reusable_secs: Range::new(1800, 3000),
            ..Default::default()
        }
    }

    /// Reads `xmux` (`None` = absent). Setting any field drops every default.
    pub fn from_json(path: &str, v: Option<&Value>) -> Result<Self> {
        let Some(v) = v else {
            return Ok(Self::xray_defaults());
        };
        let mut f = Fields::new(path, v)?;
        let mut s = XmuxSettings::default();
        let ranges: [(&str, &mut Range); 5] = [
            ("maxConcurrency", &mut s.max_concurrency),
            ("maxConnections", &mut s.max_connections),
            ("cMaxReuseTimes", &mut s.c_max_reuse_times),
            ("hMaxRequestTimes", &mut s.h_max_request_times),
            ("hMaxReusableSecs", &mut s.h_max_reusable_secs),
        ];
        for (name, slot) in ranges {
            // Negative values are accepted like Xray: a draw of 0 or less means no limit.
            if let Some(r) = f.range(name)? {
                *slot = r;
            }
        }
        if let Some(k) = f.int("hKeepAlivePeriod")? {
            // Beyond a day a keep-alive is pointless, and huge values overflow QUIC timers.
            if k > 86_400 {
                return Err(Error::config(
                    f.path_of("hKeepAlivePeriod"),
                    format!("must be at most 86400 seconds, got {k}"),
                ));
            }
            s.h_keep_alive_period = k;
        }
        f.finish();
        if s.max_connections.to > 0 && s.max_concurrency.to > 0 {
            return Err(Error::config(
                format!("{path}.maxConnections"),
                "cannot be used together with maxConcurrency",
            ));
        }
        if s == XmuxSettings::default() {
            return Ok(Self::xray_defaults());
        }
        Ok(s)
    }

    /// The QUIC keep-alive this setting asks for.
    pub fn keep_alive(&self) -> Option<Duration> {
        match self.h_keep_alive_period {
            0 => Some(Duration::from_secs(10)),
            k if k > 0 => Some(Duration::from_secs(k as u64)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<XmuxSettings> {
        XmuxSettings::from_json("xhttpSettings.xmux", Some(&v))
    }

    #[test]
    fn defaults_only_when_absent_or_all_zero() {
        let d = XmuxSettings::xray_defaults();
        assert_eq!(XmuxSettings::from_json("x", None).unwrap(), d);
        assert_eq!(parse(json!({})).unwrap(), d);
        assert_eq!(
            parse(json!({"maxConcurrency": 0, "hMaxRequestTimes": ""})).unwrap(),
            d
        );
        // Setting any one field, even only the keep-alive, drops every default.
        let k = parse(json!({"hKeepAlivePeriod": 5})).unwrap();
        assert_eq!(k.max_connections, Range::default());
        assert_eq!(k.h_max_request_times, Range::default());
        assert_eq!(k.keep_alive(), Some(Duration::from_secs(5)));
        let c = parse(json!({"maxConcurrency": "2-4"})).unwrap();
        assert_eq!(c.max_concurrency, Range::new(2, 4));
        assert_eq!(c.h_max_reusable_secs, Range::default());
        assert_eq!(c.keep_alive(), Some(Duration::from_secs(10)));
        assert_eq!(
            parse(json!({"hKeepAlivePeriod": -1})).unwrap().keep_alive(),
            None
        );
    }

    #[test]
    fn negative_and_inverted_ranges_are_taken_like_xray() {
        let s = parse(json!({"maxConcurrency": -1, "cMaxReuseTimes": "5-2",
            "hMaxRequestTimes": "-3-4"}))
        .unwrap();
        assert_eq!(s.max_concurrency, Range::fixed(-1));
        assert_eq!(s.c_max_reuse_times, Range::new(2, 5));
        assert_eq!(s.h_max_request_times, Range::new(-3, 4));
        // Negative values are not "all zero": Xray's defaults are not applied.
        assert_ne!(s, XmuxSettings::xray_defaults());
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let cases = [
            (
                json!({"maxConnections": 2, "maxConcurrency": 2}),
                "xhttpSettings.xmux.maxConnections",
                "together",
            ),
            (
                json!({"hMaxReusableSecs": "x"}),
                "xhttpSettings.xmux.hMaxReusableSecs",
                "not a number",
            ),
            (
                json!({"hKeepAlivePeriod": "x"}),
                "xhttpSettings.xmux.hKeepAlivePeriod",
                "integer",
            ),
            (json!([]), "xhttpSettings.xmux", "object"),
        ];
        for (v, field, rule) in cases {
            match parse(v.clone()) {
                Err(Error::Config { field: f, rule: r }) => {
                    assert_eq!(f, field, "{v}");
                    assert!(r.contains(rule), "{v}: {r}");
                }
                other => panic!("{v}: expected error, got {other:?}"),
            }
        }
    }
}
