//! Typed configuration with validation. `Config::from_json` reads the library's own JSON:
//!
//! ```json
//! { "address": "example.com", "port": 443,
//!   "tlsSettings": { "serverName": "example.com", "pinnedPeerCertSha256": "<hex>",
//!                    "caPem": "-----BEGIN CERTIFICATE-----..." },
//!   "xhttpSettings": { "path": "/xh", "mode": "auto" } }
//! ```
//!
//! `tlsSettings` and `xhttpSettings` use Xray's field names, so the Xray-config import can
//! hand its objects straight through.

mod json;
pub mod limits;
mod xhttp;
pub mod xray;

pub use json::Fields;
pub use limits::MemoryLimits;
pub use xhttp::{DataPlacement, Mode, Placement, SessionIdShape, XhttpSettings};

use crate::error::{Error, Result};
use serde_json::Value;

/// TLS settings for the HTTP/3 connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// SNI and certificate name; empty means the server address.
    pub server_name: String,
    /// SHA-256 digests of certificates (leaf or CA in the chain) to trust.
    pub pinned_sha256: Vec<[u8; 32]>,
    /// Extra CA certificates (DER), trusted besides the built-in web roots.
    pub ca_der: Vec<Vec<u8>>,
    /// Skip the built-in web roots (only the custom CA and pins are trusted).
    pub disable_system_root: bool,
}

/// VLESS outbound settings (protocol doc §8): tunnels carry VLESS when present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VlessSettings {
    /// The 16-byte user id (a UUID, or a string mapped to UUIDv5).
    pub id: [u8; 16],
    /// How UDP travels (`packetEncoding`).
    pub packet_encoding: PacketEncoding,
    /// Xray's outbound `mux` object, as far as it decides how UDP travels.
    pub mux: MuxSettings,
}

impl VlessSettings {
    pub fn new(id: [u8; 16]) -> VlessSettings {
        VlessSettings {
            id,
            packet_encoding: PacketEncoding::default(),
            mux: MuxSettings::default(),
        }
    }
}

/// `packetEncoding`: how VLESS UDP is carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PacketEncoding {
    /// `"xudp"` (default), Xray's client: XUDP over Mux.Cool, one tunnel carrying every
    /// destination of a UDP session, full-cone — except to ports 53 and 443, which get a
    /// plain VLESS UDP tunnel per destination.
    #[default]
    Xudp,
    /// `"none"`: a plain VLESS UDP tunnel per destination, always (Xray's client with
    /// `xray.cone.disabled=true`).
    None,
}

impl PacketEncoding {
    pub fn parse(field: &str, s: &str) -> Result<PacketEncoding> {
        match s {
            "xudp" => Ok(PacketEncoding::Xudp),
            "none" | "" => Ok(PacketEncoding::None),
            other => Err(Error::config(
                field,
                format!("{other:?} is not \"xudp\" or \"none\""),
            )),
        }
    }
}

/// What Xray's `mux.xudpProxyUDP443` does with UDP to port 443 when Mux is enabled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Udp443 {
    /// `"reject"` (Xray's default): refused, so QUIC falls back to TCP.
    #[default]
    Reject,
    /// `"allow"`: through XUDP like any other port.
    Allow,
    /// `"skip"`: not through Mux (a plain VLESS UDP tunnel, as port 443 always gets outside it).
    Skip,
}

/// Xray's outbound `mux` object (`enabled`, `concurrency`, `xudpConcurrency`,
/// `xudpProxyUDP443`). Only its rules for UDP are applied: TCP flows always get one tunnel
/// each (XHTTP's XMUX already shares connections).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MuxSettings {
    pub enabled: bool,
    pub concurrency: i16,
    pub xudp_concurrency: i16,
    pub xudp_proxy_udp443: Udp443,
}

impl MuxSettings {
    pub fn from_json(path: &str, v: &Value) -> Result<MuxSettings> {
        let mut f = Fields::new(path, v)?;
        let mut int16 = |name: &str| -> Result<i16> {
            match f.int(name)? {
                None => Ok(0),
                Some(n) => i16::try_from(n).map_err(|_| {
                    Error::config(
                        format!("{path}.{name}"),
                        format!("{n} is out of range (-32768 to 32767)"),
                    )
                }),
            }
        };
        let concurrency = int16("concurrency")?;
        let xudp_concurrency = int16("xudpConcurrency")?;
        let enabled = f.bool("enabled")?.unwrap_or(false);
        let udp443 = match f.string("xudpProxyUDP443")?.as_deref() {
            None | Some("") | Some("reject") => Udp443::Reject,
            Some("allow") => Udp443::Allow,
            Some("skip") => Udp443::Skip,
            Some(other) => {
                return Err(Error::config(
                    format!("{path}.xudpProxyUDP443"),
                    format!("{other:?} is not \"reject\", \"allow\" or \"skip\""),
                ));
            }
        };
        f.finish();
        Ok(MuxSettings {
            enabled,
            concurrency,
            xudp_concurrency,
            xudp_proxy_udp443: udp443,
        })
    }
}

/// Everything a client needs to reach one XHTTP/H3 server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub address: String,
    pub port: u16,
    pub tls: TlsSettings,
    pub xhttp: XhttpSettings,
    /// `None`: raw tunnels (the server's inbound is Xray's `tunnel`/`dokodemo-door`).
    pub vless: Option<VlessSettings>,
    /// `downloadSettings`: the GET goes here, with its own settings and XMUX pool.
    pub download: Option<Box<Config>>,
    /// `policy`: the local inbounds' time limits (open deadline, idle flows).
    pub policy: crate::proxy::policy::Policy,
    /// `memoryLimits`: QUIC windows and queue sizes, for the whole client (both sides).
    pub limits: MemoryLimits,
}

impl Config {
    pub fn from_json_str(s: &str) -> Result<Config> {
        let v: Value = serde_json::from_str(s)
            .map_err(|e| Error::config("(root)", format!("not valid JSON: {e}")))?;
        Config::from_json(&v)
    }

    pub fn from_json(v: &Value) -> Result<Config> {
        let mut f = Fields::new("", v)?;
        let address = f
            .string("address")?
            .filter(|a| !a.is_empty())
            .ok_or_else(|| Error::config("address", "is required"))?;
        let address = unbracket(&address);
        let port = match f.int("port")? {
            Some(p) if (1..=65535).contains(&p) => p as u16,
            Some(p) => return Err(Error::config("port", format!("must be 1-65535, got {p}"))),
            None => return Err(Error::config("port", "is required")),
        };
        let tls = match f.take("tlsSettings") {
            Some(t) => TlsSettings::from_json("tlsSettings", &t)?,
            None => TlsSettings::default(),
        };
        let xhttp = match f.take("xhttpSettings") {
            Some(x) => XhttpSettings::from_json("xhttpSettings", &x)?,
            None => XhttpSettings::absent(),
        };
        let packet_encoding = f
            .string("packetEncoding")?
            .map(|p| PacketEncoding::parse("packetEncoding", &p))
            .transpose()?;
        let mux = f
            .take("mux")
            .map(|m| MuxSettings::from_json("mux", &m))
            .transpose()?;
        let vless = match f.string("vlessId")? {
            Some(id) => Some(VlessSettings {
                id: crate::proxy::vless::user_id("vlessId", &id)?,
                packet_encoding: packet_encoding.unwrap_or_default(),
                mux: mux.unwrap_or_default(),
            }),
            None => {
                // Both only shape VLESS UDP: without VLESS they would silently do nothing.
                for (set, field) in [
                    (packet_encoding.is_some(), "packetEncoding"),
                    (mux.is_some(), "mux"),
                ] {
                    if set {
                        return Err(Error::config(field, "needs vlessId (it shapes VLESS UDP)"));
                    }
                }
                None
            }
        };
        let policy = crate::proxy::policy::Policy::from_json("policy", f.take("policy").as_ref())?;
        let limits = match f.take("memoryLimits") {
            Some(l) => MemoryLimits::from_json(&f.path_of("memoryLimits"), &l)?,
            None => MemoryLimits::default(),
        };
        let mut xhttp = xhttp;
        let download = match (f.take("downloadSettings"), xhttp.download_settings.take()) {
            (Some(_), Some(_)) => {
                return Err(Error::config(
                    "xhttpSettings.downloadSettings",
                    "downloadSettings is also set at the top level; set it once",
                ));
            }
            (Some(d), None) => {
                let dl = Config::from_json(&d).map_err(|e| prefix_field("downloadSettings", e))?;
                // Refused, not dropped: neither has a meaning for the download side.
                if dl.vless.is_some() {
                    return Err(Error::config(
                        "downloadSettings.vlessId",
                        "the VLESS header goes with the upload; set vlessId at the top level",
                    ));
                }
                if dl.policy != crate::proxy::policy::Policy::default() {
                    return Err(Error::config(
                        "downloadSettings.policy",
                        "the inbounds' time limits belong to the client; set policy at the top level",
                    ));
                }
                if dl.limits != MemoryLimits::default() {
                    return Err(Error::config(
                        "downloadSettings.memoryLimits",
                        "memory limits are the whole client's; set memoryLimits at the top level",
                    ));
                }
                if dl.download.is_some() {
                    return Err(Error::config(
                        "downloadSettings.downloadSettings",
                        "a download destination cannot have its own",
                    ));
                }
                Some(Box::new(dl))
            }
            // Xray's shape, inside xhttpSettings (address, port, network, tlsSettings, …).
            (None, Some(d)) => Some(Box::new(xray::stream_destination(
                "xhttpSettings.downloadSettings",
                &d,
            )?)),
            (None, None) => None,
        };
        f.finish();
        let cfg = Config {
            address,
            port,
            tls,
            xhttp,
            vless,
            download,
            policy,
            limits,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rules across sections.
    pub fn validate(&self) -> Result<()> {
        if self.download.is_some() && self.xhttp.mode == Mode::StreamOne {
            return Err(Error::config(
                "downloadSettings",
                "cannot be used with mode stream-one (its download shares the upload request)",
            ));
        }
        Ok(())
    }

    /// The HTTP authority (`Host`): `xhttpSettings.host`, else `serverName`, else the
    /// address. No port is added, like Xray. An IPv6 literal is bracketed, as Xray's
    /// address `String()` gives it (`https://::1/` is no URL).
    pub fn authority(&self) -> String {
        let host = [self.xhttp.host.as_str(), self.tls.server_name.as_str()]
            .into_iter()
            .find(|s| !s.is_empty())
            .unwrap_or(&self.address);
        match host.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{host}]"),
            Err(_) => host.to_string(),
        }
    }

    /// The TLS server name: `serverName`, else the address. Never bracketed: an IP address
    /// is verified as such and sent without SNI, as Go's TLS does.
    pub fn sni(&self) -> &str {
        if self.tls.server_name.is_empty() {
            &self.address
        } else {
            &self.tls.server_name
        }
    }
}

/// `[::1]` → `::1`: an address given with IPv6 brackets (Xray's parser takes both forms).
pub fn unbracket(address: &str) -> String {
    match address
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .filter(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
    {
        Some(inner) => inner.to_string(),
        None => address.to_string(),
    }
}

/// Puts a section name in front of a config error's field.
pub fn prefix_field(prefix: &str, e: Error) -> Error {
    match e {
        Error::Config { field, rule } if field == "(root)" || field.is_empty() => {
            Error::config(prefix, rule)
        }
        Error::Config { field, rule } => Error::config(format!("{prefix}.{field}"), rule),
        other => other,
    }
}

/// Parses `pinnedPeerCertSha256`: comma-separated hex SHA-256 digests, colons allowed.
pub fn parse_pins(field: &str, s: &str) -> Result<Vec<[u8; 32]>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let clean: String = p.chars().filter(|&c| c != ':').collect();
            let bytes = hex::decode(&clean)
                .map_err(|_| Error::config(field, format!("{p:?} is not hex")))?;
            <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                Error::config(
                    field,
                    format!("{p:?} is {} bytes; a SHA-256 digest is 32", bytes.len()),
                )
            })
        })
        .collect()
}

impl TlsSettings {
    pub fn from_json(path: &str, v: &Value) -> Result<TlsSettings> {
        let mut f = Fields::new(path, v)?;
        let mut t = TlsSettings {
            server_name: f.string("serverName")?.unwrap_or_default(),
            ..Default::default()
        };
        if let Some(p) = f.take("pinnedPeerCertSha256") {
            let field = f.path_of("pinnedPeerCertSha256");
            let s = match p {
                Value::String(s) => s,
                Value::Array(a) => a
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| Error::config(&field, "expected hex strings"))?
                    .join(","),
                other => {
                    return Err(Error::config(
                        &field,
                        format!("expected a hex string, got {other}"),
                    ));
                }
            };
            t.pinned_sha256 = parse_pins(&field, &s)?;
        }
        if let Some(pem) = f.string("caPem")? {
            t.ca_der
                .extend(pem_certs(&f.path_of("caPem"), pem.as_bytes())?);
        }
        if let Some(path) = f.string("caFile")? {
            let field = f.path_of("caFile");
            let data = std::fs::read(&path)
                .map_err(|e| Error::config(&field, format!("cannot read {path:?}: {e}")))?;
            t.ca_der.extend(pem_certs(&field, &data)?);
        }
        if let Some(alpn) = f.string_list("alpn")? {
            if !alpn.is_empty() && alpn != ["h3"] {
                return Err(Error::config(
                    f.path_of("alpn"),
                    format!("this client speaks HTTP/3 only; alpn must be [\"h3\"], got {alpn:?}"),
                ));
            }
        }
        if let Some(certs) = f.take("certificates") {
            t.ca_der
                .extend(verify_certificates(&f.path_of("certificates"), &certs)?);
        }
        if let Some(b) = f.bool("disableSystemRoot")? {
            t.disable_system_root = b;
        }
        if f.take("allowInsecure")
            .is_some_and(|v| v != Value::Bool(false))
        {
            return Err(Error::config(
                f.path_of("allowInsecure"),
                "is refused (removed from Xray); pin the certificate with pinnedPeerCertSha256 instead",
            ));
        }
        // ECH hides the server name; ignoring it would send the name in the clear while the
        // user believes it hidden.
        if f.take("echConfigList")
            .is_some_and(|v| v != Value::Null && v != Value::String(String::new()))
        {
            return Err(Error::config(
                f.path_of("echConfigList"),
                "Encrypted Client Hello is not supported: the server name would go out in the clear",
            ));
        }
        if f.take("fingerprint").is_some() {
            log::debug!(
                "config: tlsSettings.fingerprint ignored (uTLS fingerprints are not available with rustls)"
            );
        }
        f.finish();
        Ok(t)
    }
}

/// Xray's `certificates` entries with `"usage": "verify"` are CAs to trust; others (server
/// certificates) mean nothing to a client and are ignored.
fn verify_certificates(field: &str, v: &Value) -> Result<Vec<Vec<u8>>> {
    let Value::Array(list) = v else {
        return Err(Error::config(field, "expected a list"));
    };
    let mut out = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let path = format!("{field}[{i}]");
        let mut e = Fields::new(&path, c)?;
        if e.string("usage")?.as_deref() != Some("verify") {
            e.finish();
            continue;
        }
        if let Some(file) = e.string("certificateFile")? {
            let data = std::fs::read(&file).map_err(|err| {
                Error::config(
                    e.path_of("certificateFile"),
                    format!("cannot read {file:?}: {err}"),
                )
            })?;
            out.extend(pem_certs(&e.path_of("certificateFile"), &data)?);
        }
        if let Some(lines) = e.string_list_lines("certificate")? {
            out.extend(pem_certs(
                &e.path_of("certificate"),
                lines.join("\n").as_bytes(),
            )?);
        }
        e.finish();
    }
    Ok(out)
}

fn pem_certs(field: &str, data: &[u8]) -> Result<Vec<Vec<u8>>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(data)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::config(field, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::config(field, "contains no PEM certificate"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests;
