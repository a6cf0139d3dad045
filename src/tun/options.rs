//! What a TUN may be told (`options_json` of `xh_tun_start_fd` / `xh_tun_new_packets`), read
//! strictly: every field is checked, and a bad or unknown one is refused with its name, since
//! a mistyped option silently ignored would leave a VPN leaking or half-working.
//!
//! ```json
//! { "dnsAddress": ["198.18.0.2", "fd00::2"], "dnsServer": "1.1.1.1:53",
//!   "maxFlows": 512, "udpIdle": 60, "tcpBuffer": 16384, "ipv6": true }
//! ```
//!
//! Every field is optional; `dnsAddress` and `dnsServer` go together.

use super::dns::DnsRedirect;
use crate::config::Fields;
use crate::error::{Error, Result};
use crate::proxy::policy::seconds;
use crate::proxy::vless::{Host, Target};
use serde_json::Value;
use std::net::IpAddr;
use std::time::Duration;

/// The smallest MTU accepted: IPv6's minimum link MTU (RFC 8200), below which no IPv6
/// packet may be refused for size and TCP's MSS would be too small to be useful.
pub const MIN_MTU: usize = 1280;
pub const MAX_MTU: usize = 65535;

/// Defaults. A flow's stack buffers cost 4 × `tcpBuffer` (receive and send, in the stack
/// and beside it), so 512 flows of 16 KiB stay near 32 MiB: within what an iOS network
/// extension may use.
pub const MAX_FLOWS: usize = 512;
pub const TCP_BUFFER: usize = 16 * 1024;
pub const UDP_IDLE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq)]
pub struct TunOptions {
    /// The largest packet read from or written to the device.
    pub mtu: usize,
    /// DNS sent to the app's virtual DNS address, and where it really goes.
    pub dns: Option<DnsRedirect>,
    /// `maxFlows`: TCP and UDP flows at once; beyond it the least recently active is ended.
    pub max_flows: usize,
    /// `udpIdle`: a UDP flow (one app socket) with no datagram either way for this long ends.
    pub udp_idle: Duration,
    /// `tcpBuffer`: bytes of stack buffer per TCP flow and direction (its TCP window).
    pub tcp_buffer: usize,
    /// `ipv6`: carry IPv6 packets; `false` drops them (counted).
    pub ipv6: bool,
}

impl TunOptions {
    /// Reads `json` (empty or `null`: every default) for a device of `mtu` bytes.
    pub fn from_json(mtu: usize, json: &str) -> Result<TunOptions> {
        if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
            return Err(Error::config(
                "mtu",
                format!("must be {MIN_MTU}..={MAX_MTU}, got {mtu}"),
            ));
        }
        let mut o = TunOptions {
            mtu,
            dns: None,
            max_flows: MAX_FLOWS,
            udp_idle: UDP_IDLE,
            tcp_buffer: TCP_BUFFER,
            ipv6: true,
        };
        if json.trim().is_empty() {
            return Ok(o);
        }
        let v: Value = serde_json::from_str(json)
            .map_err(|e| Error::config("options", format!("not JSON: {e}")))?;
        if v.is_null() {
            return Ok(o);
        }
        if !v.is_object() {
            return Err(Error::config(
                "options",
                format!("expected a JSON object, got {v}"),
            ));
        }
        let mut f = Fields::new("", &v)?;
        let addrs = addresses(&mut f, "dnsAddress")?;
        let server = match f.string("dnsServer")? {
            None => None,
            Some(s) => Some(dns_server(&s)?),
        };
        o.dns = match (addrs, server) {
            (None, None) => None,
            (Some(a), Some(s)) => Some(DnsRedirect::new(a, s)),
            (Some(_), None) => {
                return Err(Error::config(
                    "dnsServer",
                    "required with dnsAddress: where the app's DNS goes",
                ));
            }
            (None, Some(_)) => {
                return Err(Error::config(
                    "dnsAddress",
                    "required with dnsServer: the address the app sends DNS to",
                ));
            }
        };
        if let Some(n) = bounded(&mut f, "maxFlows", 1, 65_536)? {
            o.max_flows = n;
        }
        if let Some(d) = seconds(&mut f, "udpIdle", false)? {
            o.udp_idle = d;
        }
        if let Some(n) = bounded(&mut f, "tcpBuffer", 4096, 4 << 20)? {
            o.tcp_buffer = n;
        }
        if let Some(b) = f.bool("ipv6")? {
            o.ipv6 = b;
        }
        if let Some((k, _)) = f.entries_mut().first() {
            return Err(Error::config(
                k.clone(),
                "unknown TUN option (known: dnsAddress, dnsServer, maxFlows, udpIdle, tcpBuffer, ipv6)",
            ));
        }
        Ok(o)
    }
}

fn bounded(f: &mut Fields, name: &str, lo: i64, hi: i64) -> Result<Option<usize>> {
    match f.int(name)? {
        None => Ok(None),
        Some(n) if (lo..=hi).contains(&n) => Ok(Some(n as usize)),
        Some(n) => Err(Error::config(
            f.path_of(name),
            format!("must be {lo}..={hi}, got {n}"),
        )),
    }
}

/// One IP or a list of them.
fn addresses(f: &mut Fields, name: &str) -> Result<Option<Vec<IpAddr>>> {
    let field = f.path_of(name);
    let list = match f.take(name) {
        None => return Ok(None),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(a)) => a
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                v => Err(Error::config(
                    &field,
                    format!("expected IP addresses, got {v}"),
                )),
            })
            .collect::<Result<_>>()?,
        Some(v) => {
            return Err(Error::config(
                &field,
                format!("expected an IP address or a list of them, got {v}"),
            ));
        }
    };
    if list.is_empty() {
        return Err(Error::config(&field, "an empty list: give at least one IP"));
    }
    list.iter()
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|_| Error::config(&field, format!("{s:?} is not an IP address")))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// `ip:port`, `[v6]:port` or a bare IP (port 53). A name is refused: replies must be matched
/// to the server by address, and the server side would resolve a name anyway.
fn dns_server(s: &str) -> Result<Target> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Target {
            host: Host::Ip(ip),
            port: 53,
        });
    }
    let t = Target::parse(s).map_err(|e| Error::config("dnsServer", e.to_string()))?;
    match t.host {
        Host::Ip(_) => Ok(t),
        Host::Domain(_) => Err(Error::config(
            "dnsServer",
            format!("{s:?}: must be an IP address (with an optional port), not a name"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(r: Result<TunOptions>) -> String {
        match r {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_every_field() {
        let d = TunOptions::from_json(1500, "").unwrap();
        assert_eq!(d, TunOptions::from_json(1500, "null").unwrap());
        assert_eq!(d, TunOptions::from_json(1500, "{}").unwrap());
        assert_eq!(
            (d.max_flows, d.tcp_buffer, d.udp_idle),
            (512, 16384, UDP_IDLE)
        );
        assert!(d.ipv6 && d.dns.is_none());
        let o = TunOptions::from_json(
            9000,
            r#"{"dnsAddress": ["198.18.0.2", "fd00::2"], "dnsServer": "10.0.0.53",
                "maxFlows": 8, "udpIdle": 2.5, "tcpBuffer": 65536, "ipv6": false}"#,
        )
        .unwrap();
        assert_eq!(o.mtu, 9000);
        assert_eq!((o.max_flows, o.tcp_buffer, o.ipv6), (8, 65536, false));
        assert_eq!(o.udp_idle, Duration::from_millis(2500));
        let dns = o.dns.unwrap();
        assert_eq!(dns.server().to_string(), "10.0.0.53:53");
        assert!(dns.redirect("198.18.0.2:53".parse().unwrap()).is_some());
        assert!(dns.redirect("[fd00::2]:53".parse().unwrap()).is_some());
        let one = TunOptions::from_json(
            1500,
            r#"{"dnsAddress": "198.18.0.2", "dnsServer": "[2001:db8::1]:5353"}"#,
        )
        .unwrap();
        assert_eq!(one.dns.unwrap().server().port, 5353);
    }

    #[test]
    fn bad_fields_are_named() {
        for (mtu, json, field) in [
            (1279, "{}", "mtu"),
            (70000, "{}", "mtu"),
            (1500, "[1]", "options"),
            (1500, "{", "options"),
            (1500, r#"{"maxflows": 0}"#, "maxFlows"),
            (1500, r#"{"maxFlows": 1e9}"#, "maxFlows"),
            (1500, r#"{"tcpBuffer": 100}"#, "tcpBuffer"),
            (1500, r#"{"udpIdle": 0}"#, "udpIdle"),
            (1500, r#"{"udpIdle": "60"}"#, "udpIdle"),
            (1500, r#"{"ipv6": 1}"#, "ipv6"),
            (1500, r#"{"dnsAddress": "1.2.3.4"}"#, "dnsServer"),
            (1500, r#"{"dnsServer": "1.2.3.4"}"#, "dnsAddress"),
            (
                1500,
                r#"{"dnsAddress": [], "dnsServer": "1.1.1.1"}"#,
                "dnsAddress",
            ),
            (
                1500,
                r#"{"dnsAddress": ["x"], "dnsServer": "1.1.1.1"}"#,
                "dnsAddress",
            ),
            (
                1500,
                r#"{"dnsAddress": [5], "dnsServer": "1.1.1.1"}"#,
                "dnsAddress",
            ),
            (
                1500,
                r#"{"dnsAddress": "1.1.1.2", "dnsServer": "dns.google:53"}"#,
                "dnsServer",
            ),
            (
                1500,
                r#"{"dnsAddress": "1.1.1.2", "dnsServer": "1.1.1.1:0"}"#,
                "dnsServer",
            ),
            (1500, r#"{"mtu": 1500}"#, "mtu"),
            (1500, r#"{"dnsAdress": "1.1.1.2"}"#, "dnsAdress"),
        ] {
            assert_eq!(field_of(TunOptions::from_json(mtu, json)), field, "{json}");
        }
    }
}
