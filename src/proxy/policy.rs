//! How long the local inbounds (SOCKS5, forwarder) wait: for an app's handshake, for a
//! tunnel to open, and for a quiet flow before closing it. Every wait is bounded, so no app
//! connection and no tunnel can outlive its use.
//!
//! Library JSON, top level (seconds, fractions allowed; every field optional):
//!
//! ```json
//! "policy": { "openTimeout": 5, "handshake": 10,
//!             "connIdle": 300, "uplinkOnly": 1, "downlinkOnly": 1 }
//! ```
//!
//! `connIdle`, `uplinkOnly`, `downlinkOnly` and `handshake` are Xray's session-policy
//! names with its meaning and (except `handshake`) its defaults; `openTimeout` is ours.

use crate::config::Fields;
use crate::error::{Error, Result};
use serde_json::Value;
use std::time::Duration;

/// When a relay gives up on a quiet flow. Xray's client applies the same three to every
/// connection it carries (`policy.levels.0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleTimeouts {
    /// Neither direction moved a byte for this long: the flow is closed.
    pub conn_idle: Duration,
    /// After the download ended, the app's upload may go quiet this long.
    pub uplink_only: Duration,
    /// After the app's upload ended (its FIN), the download may go quiet this long.
    /// Packet-up cannot tell the server that the upload ended, so a server never ends the
    /// download of a flow the app closed: this is what closes it.
    pub downlink_only: Duration,
}

impl IdleTimeouts {
    /// Xray's defaults: connIdle 300 s, uplinkOnly 1 s, downlinkOnly 1 s.
    pub const XRAY: IdleTimeouts = IdleTimeouts {
        conn_idle: Duration::from_secs(300),
        uplink_only: Duration::from_secs(1),
        downlink_only: Duration::from_secs(1),
    };
}

impl Default for IdleTimeouts {
    fn default() -> Self {
        IdleTimeouts::XRAY
    }
}

/// The inbounds' time limits (`policy` in the library JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `openTimeout`: an app connection whose tunnel is not open by then is refused (SOCKS
    /// reply "host unreachable", or a plain close from the forwarder). Covers dialling, the
    /// wait for a free request stream, and sending the request heads.
    pub open_timeout: Duration,
    /// `handshake`: the SOCKS greeting, authentication and request must arrive within this.
    pub handshake: Duration,
    /// `connIdle`, `uplinkOnly`, `downlinkOnly`.
    pub idle: IdleTimeouts,
}

/// Defaults of [`Policy`].
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
pub const HANDSHAKE: Duration = Duration::from_secs(10);

impl Default for Policy {
    fn default() -> Self {
        Policy {
            open_timeout: OPEN_TIMEOUT,
            handshake: HANDSHAKE,
            idle: IdleTimeouts::XRAY,
        }
    }
}

/// Longer than this is surely a unit mistake (milliseconds given as seconds). [`seconds`]
/// reads a duration field under this rule (also for the TUN options).
const MAX_SECS: f64 = 86_400.0;

pub(crate) fn seconds(f: &mut Fields, name: &str, zero_ok: bool) -> Result<Option<Duration>> {
    let Some(v) = f.take(name) else {
        return Ok(None);
    };
    let field = f.path_of(name);
    let s = v
        .as_f64()
        .ok_or_else(|| Error::config(&field, format!("expected seconds (a number), got {v}")))?;
    if !(0.0..=MAX_SECS).contains(&s) || (s == 0.0 && !zero_ok) {
        let low = if zero_ok { "0" } else { "more than 0" };
        return Err(Error::config(
            &field,
            format!("must be {low} and at most {MAX_SECS} seconds, got {s}"),
        ));
    }
    Ok(Some(Duration::from_secs_f64(s)))
}

impl Policy {
    /// Reads `policy` (`None` = absent: the defaults).
    pub fn from_json(path: &str, v: Option<&Value>) -> Result<Policy> {
        let mut p = Policy::default();
        let Some(v) = v else {
            return Ok(p);
        };
        let mut f = Fields::new(path, v)?;
        if let Some(d) = seconds(&mut f, "openTimeout", false)? {
            p.open_timeout = d;
        }
        if let Some(d) = seconds(&mut f, "handshake", false)? {
            p.handshake = d;
        }
        if let Some(d) = seconds(&mut f, "connIdle", false)? {
            p.idle.conn_idle = d;
        }
        // 0 is Xray's "close as soon as the other direction ended".
        if let Some(d) = seconds(&mut f, "uplinkOnly", true)? {
            p.idle.uplink_only = d;
        }
        if let Some(d) = seconds(&mut f, "downlinkOnly", true)? {
            p.idle.downlink_only = d;
        }
        f.finish();
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Policy> {
        Policy::from_json("policy", Some(&v))
    }

    #[test]
    fn defaults_and_overrides() {
        let d = Policy::from_json("policy", None).unwrap();
        assert_eq!(d.open_timeout, Duration::from_secs(5));
        assert_eq!(d.idle, IdleTimeouts::XRAY);
        assert_eq!(parse(json!({})).unwrap(), d);
        let p = parse(json!({"openTimeout": 2.5, "CONNIDLE": 60, "downlinkOnly": 0})).unwrap();
        assert_eq!(p.open_timeout, Duration::from_millis(2500));
        assert_eq!(p.idle.conn_idle, Duration::from_secs(60));
        assert_eq!(p.idle.downlink_only, Duration::ZERO);
        assert_eq!(p.idle.uplink_only, Duration::from_secs(1));
        assert_eq!(p.handshake, HANDSHAKE);
    }

    #[test]
    fn bad_values_name_the_field() {
        for (v, field) in [
            (json!({"openTimeout": 0}), "policy.openTimeout"),
            (json!({"openTimeout": "5"}), "policy.openTimeout"),
            (json!({"handshake": -1}), "policy.handshake"),
            (json!({"connIdle": 5000000}), "policy.connIdle"),
            (json!({"uplinkOnly": -0.5}), "policy.uplinkOnly"),
            (json!([]), "policy"),
        ] {
            match parse(v.clone()) {
                Err(Error::Config { field: f, .. }) => assert_eq!(f, field, "{v}"),
                other => panic!("{v}: expected an error, got {other:?}"),
            }
        }
    }
}
