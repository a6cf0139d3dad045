//! The server's self-signed certificate and its QUIC/TLS configuration.

use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// A certificate for `localhost` and `127.0.0.1`, with its key.
pub(crate) struct Identity {
    pub(crate) cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

fn other(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

impl Identity {
    pub(crate) fn self_signed() -> io::Result<Identity> {
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .map_err(|e| other("generating the test certificate", e))?;
        Ok(Identity {
            cert_der: ck.cert.der().to_vec(),
            key_der: ck.signing_key.serialize_der(),
        })
    }

    /// TLS 1.3 with ALPN `h3`; idle timeout like Xray's server (quic-go's 30 s default), no
    /// keep-alive of our own, so client keep-alive is what keeps a connection up.
    pub(crate) fn quinn_config(
        &self,
        idle_timeout: Duration,
        max_streams: u32,
    ) -> io::Result<quinn::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| other("TLS versions", e))?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(self.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            )
            .map_err(|e| other("TLS certificate", e))?;
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let crypto = QuicServerConfig::try_from(tls).map_err(|e| other("QUIC TLS config", e))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        let idle =
            quinn::IdleTimeout::try_from(idle_timeout).map_err(|e| other("idle timeout", e))?;
        transport.max_idle_timeout(Some(idle));
        transport.max_concurrent_bidi_streams(max_streams.into());
        config.transport_config(Arc::new(transport));
        Ok(config)
    }
}
