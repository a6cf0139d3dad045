//! TLS for the QUIC connection: web roots (plus a custom CA) by default, or
//! `pinnedPeerCertSha256` with Xray's meaning: a pin matching the leaf accepts the chain as
//! is; a pin matching a CA in the presented chain makes that CA the only root.

use crate::config::TlsSettings;
use crate::error::{Error, Result};
use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use std::sync::Arc;

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client config for HTTP/3: TLS 1.3, ALPN `h3`, no 0-RTT (replayable).
pub fn client_config(tls: &TlsSettings) -> Result<rustls::ClientConfig> {
    let provider = provider();
    let verifier = Verifier::new(tls, provider.clone())?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Other(format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h3".to_vec()];
    cfg.enable_early_data = false;
    Ok(cfg)
}

#[derive(Debug)]
struct Verifier {
    pins: Vec<[u8; 32]>,
    /// Chain verification against web roots and/or the custom CA; `None` when pins are the
    /// only trust (no roots at all).
    roots: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl Verifier {
    fn new(tls: &TlsSettings, provider: Arc<CryptoProvider>) -> Result<Self> {
        let mut store = rustls::RootCertStore::empty();
        if !tls.disable_system_root {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for der in &tls.ca_der {
            store.add(CertificateDer::from(der.clone())).map_err(|e| {
                Error::config("tlsSettings.caPem", format!("unusable CA certificate: {e}"))
            })?;
        }
        if store.is_empty() && tls.pinned_sha256.is_empty() {
            return Err(Error::config(
                "tlsSettings",
                "nothing to trust: disableSystemRoot is set without a CA or pinnedPeerCertSha256",
            ));
        }
        let roots = if store.is_empty() {
            None
        } else {
            Some(webpki_verifier(store, &provider)?)
        };
        Ok(Verifier {
            pins: tls.pinned_sha256.clone(),
            roots,
            provider,
        })
    }
}

fn webpki_verifier(
    store: rustls::RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .build()
        .map_err(|e| Error::Other(format!("TLS verifier: {e}")))
}

fn sha256(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if self.pins.is_empty() {
            return match &self.roots {
                Some(v) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
                None => Err(rustls::Error::General("no trust anchors".into())),
            };
        }
        if self.pins.contains(&sha256(end_entity)) {
            return Ok(ServerCertVerified::assertion());
        }
        for ca in intermediates {
            if self.pins.contains(&sha256(ca)) {
                let mut store = rustls::RootCertStore::empty();
                store.add(ca.clone().into_owned())?;
                let v = webpki_verifier(store, &self.provider)
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                return v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
            }
        }
        // Naming what the server presented tells a user a wrong pin from a server (or a
        // middlebox) presenting another certificate.
        Err(rustls::Error::General(format!(
            "server certificate chain matches no pinnedPeerCertSha256 (the server's \
             certificate has SHA-256 {})",
            hex::encode(sha256(end_entity))
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    struct Chain {
        ca: Vec<u8>,
        leaf: Vec<u8>,
    }

    fn chain() -> Chain {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(vec![]).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["server.test".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        Chain {
            ca: ca.der().to_vec(),
            leaf: leaf.der().to_vec(),
        }
    }

    fn verify(tls: &TlsSettings, c: &Chain, name: &str) -> std::result::Result<(), String> {
        let v = Verifier::new(tls, provider()).map_err(|e| e.to_string())?;
        let leaf = CertificateDer::from(c.leaf.clone());
        let inter = [CertificateDer::from(c.ca.clone())];
        let sn = ServerName::try_from(name.to_string()).unwrap();
        v.verify_server_cert(&leaf, &inter, &sn, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn pins_match_leaf_or_ca_and_nothing_else() {
        let c = chain();
        let pin = |der: &[u8]| TlsSettings {
            pinned_sha256: vec![sha256(der)],
            disable_system_root: true,
            ..Default::default()
        };
        // Leaf pin: accepted as is, whatever the name (Xray's rule).
        assert_eq!(verify(&pin(&c.leaf), &c, "other.name"), Ok(()));
        // CA pin: that CA becomes the only root, so the name is still checked.
        assert_eq!(verify(&pin(&c.ca), &c, "server.test"), Ok(()));
        assert!(verify(&pin(&c.ca), &c, "other.name").is_err());
        let wrong = verify(&pin(b"something else"), &c, "server.test").unwrap_err();
        assert!(wrong.contains("pinnedPeerCertSha256"), "{wrong}");
        assert!(wrong.contains(&hex::encode(sha256(&c.leaf))), "{wrong}");
    }

    #[test]
    fn custom_ca_and_web_roots() {
        let c = chain();
        let with_ca = TlsSettings {
            ca_der: vec![c.ca.clone()],
            disable_system_root: true,
            ..Default::default()
        };
        assert_eq!(verify(&with_ca, &c, "server.test"), Ok(()));
        assert!(verify(&with_ca, &c, "other.name").is_err());
        // Web roots only: a private CA is unknown.
        assert!(verify(&TlsSettings::default(), &c, "server.test").is_err());
        // Nothing to trust at all is a config error, not a silent accept.
        let none = TlsSettings {
            disable_system_root: true,
            ..Default::default()
        };
        assert!(Verifier::new(&none, provider()).is_err());
    }
}
