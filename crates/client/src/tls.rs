//! Whom a client trusts over TLS: the cluster CA (read from a node's data dir or `--ca FILE`),
//! or, while a node joins, a CA pinned by the SHA-256 fingerprint of its certificate (as
//! `kubeadm join` pins a CA hash); and a node's own certificate, which it presents to its peers
//! (mutual TLS). rustls on the ring provider only: aws-lc-rs wants cmake, and no OpenSSL.
//!
//! A pinned join, step by step:
//! 1. the joining node connects and the server presents its chain: its own certificate, then
//!    the CA that issued it;
//! 2. [`PinnedCa`] looks for a certificate of that chain whose fingerprint is the pin; none is
//!    a refusal before a byte of the request (the admin key's signed call, the node's
//!    certificate request) is sent;
//! 3. the server's certificate is then verified against that CA alone (signature, validity,
//!    the name the client dialled), as against any trusted root.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// How a CA fingerprint is spelled: `sha256:` and the hex SHA-256 of the certificate's DER.
pub const FINGERPRINT_PREFIX: &str = "sha256:";

/// A certificate, key or pin that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// The crypto provider of every TLS connection chorus makes or accepts.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process's default provider, for HTTP clients built without a TLS
/// configuration of ours (S3, the alert webhook); a second call changes nothing.
pub fn install_default_provider() {
    // Err only when a provider is installed already (by an earlier call): nothing to do.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `sha256:<hex>` of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> String {
    format!("{FINGERPRINT_PREFIX}{}", hex::encode(Sha256::digest(der)))
}

/// Reads a pin (`sha256:` and 64 hex digits, either case).
pub fn parse_pin(pin: &str) -> Result<[u8; 32], TlsError> {
    let bad = || {
        TlsError(format!(
            "{pin:?} is not a CA pin: expected {FINGERPRINT_PREFIX} and 64 hex digits, as the first node prints at start-up"
        ))
    };
    let hex_digits = pin
        .trim()
        .strip_prefix(FINGERPRINT_PREFIX)
        .ok_or_else(bad)?;
    let bytes = hex::decode(hex_digits.to_ascii_lowercase()).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

/// Every certificate of a PEM text, in order (at least one).
pub fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("{what}: not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError(format!("{what}: holds no certificate")));
    }
    Ok(certs)
}

/// The private key of a PEM text (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError(format!("{what}: no private key: {e}")))
}

/// A certificate chain and its key, which a node presents to its peers.
#[derive(Clone)]
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Identity")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// From PEM texts: the certificate chain (the node's own first) and its key.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Identity, TlsError> {
        Ok(Identity {
            chain: certificates(chain_pem, "certificate")?,
            key: Arc::new(private_key(key_pem, "certificate key")?),
        })
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

/// How a client reaches a server: plain HTTP (only when asked for), TLS trusting the
/// system's roots, or TLS with a configuration of ours (the cluster CA, a pinned CA).
#[derive(Clone, Debug)]
pub enum Transport {
    InsecureHttp,
    SystemRoots,
    Tls(Arc<ClientConfig>),
}

impl Transport {
    /// TLS that trusts only the CA certificates in `ca_pem`, presenting `identity` if given.
    pub fn trusting(ca_pem: &[u8], identity: Option<&Identity>) -> Result<Transport, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in certificates(ca_pem, "CA")? {
            roots
                .add(cert)
                .map_err(|e| TlsError(format!("CA certificate: {e}")))?;
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .with_root_certificates(roots);
        let config = match identity {
            Some(id) => builder
                .with_client_auth_cert(id.chain.clone(), id.key())
                .map_err(|e| TlsError(format!("certificate and key: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        Ok(Transport::Tls(Arc::new(config)))
    }

    /// TLS that trusts a server whose chain holds the CA with this fingerprint (see the
    /// module doc).
    pub fn pinned(pin: &str) -> Result<Transport, TlsError> {
        let verifier = PinnedCa {
            pin: parse_pin(pin)?,
            provider: provider(),
        };
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Transport::Tls(Arc::new(config)))
    }

    /// The scheme of a server given as `host:port`.
    pub fn default_scheme(&self) -> &'static str {
        match self {
            Transport::InsecureHttp => "http",
            Transport::SystemRoots | Transport::Tls(_) => "https",
        }
    }

    /// `builder` with this transport's TLS configuration.
    pub fn configure(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        install_default_provider();
        match self {
            Transport::InsecureHttp | Transport::SystemRoots => builder,
            Transport::Tls(config) => builder.tls_backend_preconfigured((**config).clone()),
        }
    }
}

/// Trusts a server whose presented chain holds the pinned CA, and whose own certificate
/// that CA issued.
#[derive(Debug)]
struct PinnedCa {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = intermediates
            .iter()
            .find(|c| Sha256::digest(c.as_ref()).as_slice() == self.pin);
        let Some(ca) = pinned else {
            let presented: Vec<String> = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|c| fingerprint(c))
                .collect();
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(TlsError(format!(
                    "the server's certificate chain does not hold the pinned CA {}{} (it presented {})",
                    FINGERPRINT_PREFIX,
                    hex::encode(self.pin),
                    presented.join(", ")
                )))),
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Errors looked at at most when searching a chain (a chain is a handful deep).
const ERROR_CHAIN_MAX: usize = 32;

/// The certificate error somewhere in `error`'s chain, if the call failed because the server
/// was not trusted (an unknown issuer, a wrong name, a chain without the pinned CA).
pub(crate) fn untrusted(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    // An io::Error's `source` is its inner error's source, skipping the inner error itself,
    // so both ways down are followed.
    let mut pending: Vec<&(dyn std::error::Error + 'static)> = vec![error];
    let mut seen = 0;
    while let Some(e) = pending.pop() {
        seen += 1;
        if seen > ERROR_CHAIN_MAX {
            break;
        }
        if let Some(rustls::Error::InvalidCertificate(why)) = e.downcast_ref::<rustls::Error>() {
            return Some(match why {
                CertificateError::Other(other) => other.0.to_string(),
                CertificateError::UnknownIssuer => {
                    "the server's certificate is not from a trusted CA (give the cluster CA with --ca, or --data-dir of a node)".into()
                }
                other => format!("the server's certificate is not trusted: {other:?}"),
            });
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            pending.push(inner);
        }
        if let Some(source) = e.source() {
            pending.push(source);
        }
    }
    None
}

/// `error` and its sources, one after the other (a reqwest error says little by itself).
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_is_sha256_and_64_hex_digits() {
        let pin = format!("sha256:{}", "Ab".repeat(32));
        assert_eq!(parse_pin(&pin).unwrap(), [0xab; 32]);
        for bad in ["", "sha256:", "sha1:abcd", &"ab".repeat(32), "sha256:zz"] {
            let error = parse_pin(bad).unwrap_err().to_string();
            assert!(error.contains("is not a CA pin"), "{bad:?}: {error}");
        }
        assert!(parse_pin(&format!("sha256:{}", "ab".repeat(31))).is_err());
        assert_eq!(fingerprint(b"x").len(), FINGERPRINT_PREFIX.len() + 64);
    }
}
