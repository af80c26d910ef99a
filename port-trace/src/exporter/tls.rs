//! The rustls server configuration for `--web.config.file`'s `tls_server_config`: a
//! certificate chain and its key from PEM, the TLS versions, and optionally the CAs that client
//! certificates must chain to.

use std::sync::Arc;

use rustls::{
    RootCertStore, ServerConfig, SupportedProtocolVersion,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{VerifierBuilderError, WebPkiClientVerifier},
};

/// PEM text and where it came from (a file name, or "cert" for inline PEM), for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pem {
    pub origin: String,
    pub text: Vec<u8>,
}

/// Which client certificates are asked for (exporter-toolkit's `client_auth_type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// `NoClientCert`.
    None,
    /// `VerifyClientCertIfGiven`: a certificate is optional, but one given must chain to `ca`.
    VerifyIfGiven { ca: Pem },
    /// `RequireAndVerifyClientCert`.
    Require { ca: Pem },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    Tls12,
    Tls13,
}

impl Version {
    fn rustls(self) -> &'static SupportedProtocolVersion {
        match self {
            Self::Tls12 => &rustls::version::TLS12,
            Self::Tls13 => &rustls::version::TLS13,
        }
    }
}

/// Everything the server configuration is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub cert: Pem,
    pub key: Pem,
    pub client_auth: ClientAuth,
    pub min_version: Version,
    pub max_version: Version,
    /// `prefer_server_cipher_suites`: the server's order of cipher suites wins.
    pub prefer_server_order: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{origin}: not a PEM {what}")]
    Pem {
        origin: String,
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0}: no certificate in it")]
    NoCertificate(String),
    #[error("min_version is above max_version")]
    Versions,
    #[error("client CA {origin}")]
    ClientCa {
        origin: String,
        #[source]
        source: rustls::Error,
    },
    #[error("client CAs")]
    Verifier(#[source] VerifierBuilderError),
    #[error("certificate {cert} with key {key}")]
    Key {
        cert: String,
        key: String,
        #[source]
        source: rustls::Error,
    },
}

fn certificates(pem: &Pem) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(&pem.text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            origin: pem.origin.clone(),
            what: "certificate",
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(pem.origin.clone()));
    }
    Ok(certs)
}

/// The server configuration, or the first thing wrong with `s`.
pub fn server_config(s: &Settings) -> Result<Arc<ServerConfig>, TlsError> {
    if s.min_version > s.max_version {
        return Err(TlsError::Versions);
    }
    let versions: Vec<_> = [Version::Tls12, Version::Tls13]
        .into_iter()
        .filter(|v| (s.min_version..=s.max_version).contains(v))
        .map(Version::rustls)
        .collect();
    let chain = certificates(&s.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&s.key.text).map_err(|source| TlsError::Pem {
        origin: s.key.origin.clone(),
        what: "private key",
        source,
    })?;
    let builder = ServerConfig::builder_with_protocol_versions(&versions);
    let builder = match &s.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::VerifyIfGiven { ca } | ClientAuth::Require { ca } => {
            let mut roots = RootCertStore::empty();
            for c in certificates(ca)? {
                roots.add(c).map_err(|source| TlsError::ClientCa {
                    origin: ca.origin.clone(),
                    source,
                })?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots));
            let verifier = match s.client_auth {
                ClientAuth::VerifyIfGiven { .. } => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            builder.with_client_cert_verifier(verifier.build().map_err(TlsError::Verifier)?)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Key {
            cert: s.cert.origin.clone(),
            key: s.key.origin.clone(),
            source,
        })?;
    config.ignore_client_order = s.prefer_server_order;
    // HTTP/1.1 only: the server speaks nothing else.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
