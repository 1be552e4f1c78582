//! The cluster's certificate authority and this node's certificate: TLS for the API and for
//! every call between nodes (mutual TLS), issued with rcgen and served with rustls (ring).
//!
//! Files of the data dir (written as the other identity files, see [`at_rest`]: 0600,
//! temporary name, synced, renamed):
//! - `ca.pem`: the cluster CA's certificate, which clients and peers trust;
//! - `ca.key`: its key, with which any member signs the certificate of a node that joins
//!   through it (as secret as `cluster.key`, which every node holds too);
//! - `node.pem`: this node's certificate then the CA's (the chain it presents);
//! - `node.key`: this node's key, made here and never sent anywhere.
//!
//! The first node makes the CA and its own certificate. A joining node makes its key and a
//! certificate request (CSR); the member it joins through signs it, taking from it only the
//! public key and the names (never a CA flag or usages of the requester's choosing), and
//! answers the certificate with the CA's certificate and key. An operator may bring their own
//! certificates instead (`--tls-cert/--tls-key/--ca`): no CA key then, so joins through that
//! node bring theirs too.

use crate::at_rest;
use model::{ApiError, ErrorCode};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
pub const NODE_CERT_FILE: &str = "node.pem";
pub const NODE_KEY_FILE: &str = "node.key";

/// How long the certificates chorus issues are valid, in years from the start of this year.
const VALIDITY_YEARS: i32 = 10;
/// Names a certificate request may ask for at most.
const CSR_NAMES_MAX: usize = 16;
/// Largest certificate request a join may carry.
pub const CSR_BYTES_MAX: usize = 16 * 1024;

/// How a node serves its API and reaches its peers.
#[derive(Clone, Debug, Default)]
pub enum TlsSetup {
    /// TLS with the cluster CA: made by the first node, handed to those that join.
    #[default]
    ClusterCa,
    /// TLS with the operator's own files: this node's certificate chain and key, and the CA
    /// that every member's certificate comes from.
    Own {
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
    },
    /// Plain HTTP, only when asked for (`--insecure-http`).
    InsecureHttp,
}

/// The PEM texts of a node's TLS identity.
#[derive(Clone)]
pub(crate) struct Certs {
    pub(crate) ca_pem: String,
    /// This node's certificate, then the CA's.
    pub(crate) chain_pem: String,
    pub(crate) key_pem: String,
    /// The CA's key, if this node may sign certificates of joining nodes.
    pub(crate) ca_key_pem: Option<String>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs")
            .field("signs", &self.ca_key_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// What a member hands a joining node, besides its id and the cluster secret.
#[derive(Clone)]
pub struct Issued {
    pub certificate_pem: String,
    pub ca_pem: String,
    pub ca_key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

fn tls_error(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, format!("{what}: {e}"))
}

fn read(path: &Path) -> Result<String, ApiError> {
    std::fs::read_to_string(path).map_err(|e| tls_error(&path.display().to_string(), e))
}

fn write(path: &Path, text: &str) -> Result<(), ApiError> {
    at_rest::write_file(path, text.as_bytes())
        .map_err(|e| tls_error(&path.display().to_string(), e))
}

/// The year now, from the system clock.
fn this_year() -> i32 {
    let now = humantime::format_rfc3339(std::time::SystemTime::now()).to_string();
    now.get(..4).and_then(|y| y.parse().ok()).unwrap_or(2025)
}

/// Parameters every certificate chorus issues shares: validity and a random serial.
fn base_params(names: Vec<SanType>, common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let year = this_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + VALIDITY_YEARS, 1, 1);
    let mut serial = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut serial);
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.subject_alt_names = names;
    params
}

/// The names of a node's certificate: the host it advertises, and the loopback names the
/// CLI on its own machine uses.
fn node_names(advertise_addr: &str) -> Result<Vec<SanType>, ApiError> {
    let host = advertise_addr
        .rsplit_once(':')
        .map_or(advertise_addr, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let mut names = Vec::new();
    for name in [host, "localhost", "127.0.0.1"] {
        let san = match name.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.to_string()
                    .try_into()
                    .map_err(|e| tls_error(&format!("host {name:?}"), e))?,
            ),
        };
        if !names.contains(&san) {
            names.push(san);
        }
    }
    Ok(names)
}

/// A node certificate's parameters: an end entity for both ends of a connection.
fn leaf_params(names: Vec<SanType>) -> CertificateParams {
    let mut params = base_params(names, "chorus node");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params
}

/// The first node: a new cluster CA and this node's certificate from it, written to the
/// data dir.
pub(crate) fn found(data_dir: &Path, advertise_addr: &str) -> Result<Certs, ApiError> {
    let ca_key = KeyPair::generate().map_err(|e| tls_error("CA key", e))?;
    let mut ca = base_params(Vec::new(), "chorus cluster CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| tls_error("CA", e))?;
    let issuer = Issuer::new(ca, &ca_key);
    let key = KeyPair::generate().map_err(|e| tls_error("node key", e))?;
    let cert = leaf_params(node_names(advertise_addr)?)
        .signed_by(&key, &issuer)
        .map_err(|e| tls_error("node certificate", e))?;
    let certs = Certs {
        ca_pem: ca_cert.pem(),
        chain_pem: format!("{}{}", cert.pem(), ca_cert.pem()),
        key_pem: key.serialize_pem(),
        ca_key_pem: Some(ca_key.serialize_pem()),
    };
    save(data_dir, &certs)?;
    Ok(certs)
}

/// Writes a node's TLS files; the certificate last, which marks them complete.
pub(crate) fn save(data_dir: &Path, certs: &Certs) -> Result<(), ApiError> {
    if let Some(ca_key) = &certs.ca_key_pem {
        write(&data_dir.join(CA_KEY_FILE), ca_key)?;
    }
    write(&data_dir.join(CA_CERT_FILE), &certs.ca_pem)?;
    write(&data_dir.join(NODE_KEY_FILE), &certs.key_pem)?;
    write(&data_dir.join(NODE_CERT_FILE), &certs.chain_pem)
}

/// The TLS files a node wrote before, if it has them.
pub(crate) fn load(data_dir: &Path) -> Result<Option<Certs>, ApiError> {
    let cert = data_dir.join(NODE_CERT_FILE);
    if !cert.exists() {
        return Ok(None);
    }
    for file in [CA_KEY_FILE, NODE_KEY_FILE, CA_CERT_FILE, NODE_CERT_FILE] {
        let path = data_dir.join(file);
        at_rest::tighten(&path).map_err(|e| tls_error(&path.display().to_string(), e))?;
    }
    let ca_key = data_dir.join(CA_KEY_FILE);
    Ok(Some(Certs {
        ca_pem: read(&data_dir.join(CA_CERT_FILE))?,
        chain_pem: read(&cert)?,
        key_pem: read(&data_dir.join(NODE_KEY_FILE))?,
        ca_key_pem: ca_key.exists().then(|| read(&ca_key)).transpose()?,
    }))
}

/// The operator's own certificate, key and CA (`--tls-cert/--tls-key/--ca`).
pub(crate) fn own(cert: &Path, key: &Path, ca: &Path) -> Result<Certs, ApiError> {
    let certs = Certs {
        ca_pem: read(ca)?,
        chain_pem: read(cert)?,
        key_pem: read(key)?,
        ca_key_pem: None,
    };
    // Refuse unusable files at start rather than at the first handshake.
    server_config(&certs)?;
    Ok(certs)
}

/// A joining node's key and its certificate request (PEM texts).
pub(crate) fn request(advertise_addr: &str) -> Result<(String, String), ApiError> {
    let key = KeyPair::generate().map_err(|e| tls_error("node key", e))?;
    // Names only: validity, serial and usages are the issuer's to choose (and rcgen refuses
    // to put them in a request).
    let mut params = CertificateParams::default();
    params.subject_alt_names = node_names(advertise_addr)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "chorus node");
    let csr = params
        .serialize_request(&key)
        .map_err(|e| tls_error("certificate request", e))?
        .pem()
        .map_err(|e| tls_error("certificate request", e))?;
    Ok((key.serialize_pem(), csr))
}

/// Signs a joining node's certificate request with the cluster CA. Only its public key and
/// names are taken; what the certificate may do is ours to say.
pub(crate) fn issue(certs: &Certs, csr_pem: &str) -> Result<Issued, ApiError> {
    let Some(ca_key_pem) = &certs.ca_key_pem else {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "this node has no cluster CA key (its certificates are the operator's own): the joining node brings its own with --tls-cert, --tls-key and --ca",
        ));
    };
    let invalid = |e: &dyn std::fmt::Display| {
        ApiError::new(
            ErrorCode::InvalidInput,
            format!("the certificate request: {e}"),
        )
    };
    if csr_pem.len() > CSR_BYTES_MAX {
        return Err(invalid(&format!("over {CSR_BYTES_MAX} bytes")));
    }
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| invalid(&e))?;
    let names = csr.params.subject_alt_names.clone();
    if names.is_empty() || names.len() > CSR_NAMES_MAX {
        return Err(invalid(&format!(
            "asks for {} names; 1 to {CSR_NAMES_MAX} DNS names or IP addresses are taken",
            names.len()
        )));
    }
    if let Some(other) = names
        .iter()
        .find(|n| !matches!(n, SanType::DnsName(_) | SanType::IpAddress(_)))
    {
        return Err(invalid(&format!(
            "asks for the name {other:?}; only DNS names and IP addresses are taken"
        )));
    }
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(|e| tls_error(CA_KEY_FILE, e))?;
    let issuer =
        Issuer::from_ca_cert_pem(&certs.ca_pem, &ca_key).map_err(|e| tls_error(CA_CERT_FILE, e))?;
    let cert = leaf_params(names)
        .signed_by(&csr.public_key, &issuer)
        .map_err(|e| tls_error("node certificate", e))?;
    Ok(Issued {
        certificate_pem: format!("{}{}", cert.pem(), certs.ca_pem),
        ca_pem: certs.ca_pem.clone(),
        ca_key_pem: ca_key_pem.clone(),
    })
}

/// The fingerprint of the CA (`sha256:<hex>` of its DER), which `--ca-pin` takes.
pub(crate) fn ca_fingerprint(certs: &Certs) -> Result<String, ApiError> {
    let ca = client::tls::certificates(certs.ca_pem.as_bytes(), CA_CERT_FILE)
        .map_err(|e| tls_error(CA_CERT_FILE, e))?;
    Ok(client::tls::fingerprint(&ca[0]))
}

/// How this node's API serves TLS: its chain and key; a client certificate is optional (CLI
/// users sign with API keys) but verified against the CA when presented, and the raft and
/// peer routes require one.
pub(crate) fn server_config(certs: &Certs) -> Result<Arc<rustls::ServerConfig>, ApiError> {
    let provider = client::tls::provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in client::tls::certificates(certs.ca_pem.as_bytes(), CA_CERT_FILE)
        .map_err(|e| tls_error("CA", e))?
    {
        roots.add(cert).map_err(|e| tls_error("CA", e))?;
    }
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| tls_error("client verifier", e))?;
    let identity = identity(certs)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("TLS", e))?
        .with_client_cert_verifier(clients)
        .with_single_cert(identity.chain().to_vec(), identity.key())
        .map_err(|e| tls_error("certificate and key", e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn identity(certs: &Certs) -> Result<client::tls::Identity, ApiError> {
    client::tls::Identity::from_pem(certs.chain_pem.as_bytes(), certs.key_pem.as_bytes())
        .map_err(|e| tls_error("node certificate", e))
}

/// How this node reaches its peers: mutual TLS, trusting the cluster CA only.
pub(crate) fn peer_transport(certs: &Certs) -> Result<client::Transport, ApiError> {
    client::Transport::trusting(certs.ca_pem.as_bytes(), Some(&identity(certs)?))
        .map_err(|e| tls_error("peer TLS", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joining_node_gets_a_leaf_certificate_of_the_cluster_ca_whatever_it_asks() {
        let dir = tempfile::tempdir().unwrap();
        let first = found(dir.path(), "127.0.0.1:7700").unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().ca_pem, first.ca_pem);
        // A request that asks to be a CA gets a leaf all the same.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["10.0.0.2".to_string()]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let issued = issue(&first, &csr).unwrap();
        let joined = Certs {
            ca_pem: issued.ca_pem.clone(),
            chain_pem: issued.certificate_pem.clone(),
            key_pem: key.serialize_pem(),
            ca_key_pem: None,
        };
        server_config(&joined).unwrap();
        let chain = client::tls::certificates(issued.certificate_pem.as_bytes(), "chain").unwrap();
        // The leaf verifies under the cluster CA, but a certificate it signed does not: it is
        // no CA, whatever its request asked.
        use rustls::client::danger::ServerCertVerifier;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(chain[1].clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            client::tls::provider(),
        )
        .build()
        .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        let joined_name = rustls::pki_types::ServerName::try_from("10.0.0.2").unwrap();
        verifier
            .verify_server_cert(&chain[0], &[], &joined_name, &[], now)
            .unwrap();
        let forged_key = KeyPair::generate().unwrap();
        let forged = leaf_params(node_names("127.0.0.1:1").unwrap())
            .signed_by(
                &forged_key,
                &Issuer::from_ca_cert_der(&chain[0], &key).unwrap(),
            )
            .unwrap();
        let loopback = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let refused = verifier.verify_server_cert(forged.der(), &chain[..1], &loopback, &[], now);
        assert!(refused.is_err(), "a node certificate issued another");
        assert_eq!(
            client::tls::fingerprint(&chain[1]),
            ca_fingerprint(&first).unwrap()
        );
        // Without the CA key nothing is signed; a garbled request is the requester's error.
        let error = issue(&joined, &csr).unwrap_err();
        assert_eq!(error.code, ErrorCode::Conflict);
        let error = issue(&first, "garbage").unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidInput);
    }
}
