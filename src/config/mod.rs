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
mod xhttp;

pub use json::Fields;
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

/// Everything a client needs to reach one XHTTP/H3 server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub address: String,
    pub port: u16,
    pub tls: TlsSettings,
    pub xhttp: XhttpSettings,
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
            None => XhttpSettings::default(),
        };
        f.finish();
        Ok(Config {
            address,
            port,
            tls,
            xhttp,
        })
    }

    /// The HTTP authority (`Host`): `xhttpSettings.host`, else `serverName`, else the
    /// address. No port is added, like Xray.
    pub fn authority(&self) -> &str {
        [self.xhttp.host.as_str(), self.tls.server_name.as_str()]
            .into_iter()
            .find(|s| !s.is_empty())
            .unwrap_or(&self.address)
    }

    /// The TLS server name: `serverName`, else the address.
    pub fn sni(&self) -> &str {
        if self.tls.server_name.is_empty() {
            &self.address
        } else {
            &self.tls.server_name
        }
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
        if f.take("fingerprint").is_some() {
            log::debug!(
                "config: tlsSettings.fingerprint ignored (uTLS fingerprints are not available with rustls)"
            );
        }
        f.finish();
        Ok(t)
    }
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
