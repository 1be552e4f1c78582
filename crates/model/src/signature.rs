//! Request signing: HMAC-SHA256 with a key derived from an API key's secret over a canonical
//! string.
//!
//! The client sends five headers; the server rebuilds the canonical string from the request it
//! received and compares signatures in constant time:
//!
//! ```text
//! signing key = HMAC-SHA256(hex_decode(secret), "chorus signing key v1")
//! canonical = METHOD "\n" HOST "\n" PATH "\n" QUERY "\n" TIMESTAMP "\n" NONCE "\n" hex(SHA256(BODY))
//! x-chorus-signature = hex(HMAC-SHA256(signing key, canonical))
//! ```
//!
//! HOST is the request's `Host` header as sent (`host:port`): a request signed for one node
//! does not verify at another name. The server needs only the signing key, never the
//! secret itself, so the registry stores that (sealed; see `node::sealing`).
//!
//! The server then rejects timestamps more than [`CLOCK_SKEW_MAX_S`] away from its clock and
//! nonces seen within that window (replays; see `model::Command::Signed`).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const HEADER_KEY: &str = "x-chorus-key";
pub const HEADER_TIMESTAMP: &str = "x-chorus-timestamp";
pub const HEADER_NONCE: &str = "x-chorus-nonce";
pub const HEADER_CONTENT_SHA256: &str = "x-chorus-content-sha256";
pub const HEADER_SIGNATURE: &str = "x-chorus-signature";

/// Largest accepted difference between the client's and the server's clocks.
pub const CLOCK_SKEW_MAX_S: u64 = 300;
/// Nonces are 16 to this many characters.
pub const NONCE_LEN_MAX: usize = 64;
/// What the signing key is derived with (see the module's doc).
pub const SIGNING_KEY_LABEL: &[u8] = b"chorus signing key v1";

/// The key requests are signed with, derived from a key's hex secret; `None` if the secret
/// is not hex.
pub fn signing_key(secret_hex: &str) -> Option<[u8; 32]> {
    let mut mac = mac(&hex::decode(secret_hex).ok()?)?;
    mac.update(SIGNING_KEY_LABEL);
    Some(mac.finalize().into_bytes().into())
}

/// The parts of a request that the signature covers.
#[derive(Clone, Copy, Debug)]
pub struct Canonical<'a> {
    pub method: &'a str,
    /// The `Host` header (`host:port`) the request is sent with.
    pub host: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub timestamp_s: u64,
    pub nonce: &'a str,
    pub body_sha256_hex: &'a str,
}

impl Canonical<'_> {
    fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.method,
            self.host,
            self.path,
            self.query,
            self.timestamp_s,
            self.nonce,
            self.body_sha256_hex
        )
    }

    /// The hex signature of this request by the key of `secret_hex`; `None` if the secret
    /// is not hex.
    pub fn sign(&self, secret_hex: &str) -> Option<String> {
        let mut mac = mac(&signing_key(secret_hex)?)?;
        mac.update(self.text().as_bytes());
        Some(hex::encode(mac.finalize().into_bytes()))
    }

    /// Whether `signature_hex` is this request's signature under `signing_key` (see
    /// [`signing_key`]), compared in constant time.
    pub fn verify(&self, signing_key: &[u8], signature_hex: &str) -> bool {
        let (Some(mut mac), Ok(signature)) = (mac(signing_key), hex::decode(signature_hex)) else {
            return false;
        };
        mac.update(self.text().as_bytes());
        mac.verify_slice(&signature).is_ok()
    }
}

fn mac(key: &[u8]) -> Option<Hmac<Sha256>> {
    Hmac::<Sha256>::new_from_slice(key).ok()
}

/// The signature header of a webhook post: `t=TIMESTAMP,v1=hex(HMAC-SHA256(secret,
/// "TIMESTAMP.BODY"))`, as Stripe signs its webhooks. The receiver recomputes it with the
/// secret it was given when the webhook was set, and refuses an old timestamp.
pub fn webhook_signature(secret: &[u8], timestamp_s: u64, body: &[u8]) -> String {
    let mac = mac(secret).map(|mut mac| {
        mac.update(format!("{timestamp_s}.").as_bytes());
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    });
    format!("t={timestamp_s},v1={}", mac.unwrap_or_default())
}

/// The secret alert webhook posts to `url` are signed with, derived from the cluster secret
/// (so every node, whichever leads, signs with the same one and none is stored); shown to
/// the operator once, when the webhook is set. `None` if the cluster secret is not hex.
pub fn webhook_secret(cluster_secret_hex: &str, url: &str) -> Option<String> {
    let mut mac = mac(&hex::decode(cluster_secret_hex).ok()?)?;
    mac.update(b"chorus alerts.webhook signing secret\n");
    mac.update(url.as_bytes());
    Some(hex::encode(mac.finalize().into_bytes()))
}

/// The header webhook posts carry their signature in.
pub const HEADER_WEBHOOK_SIGNATURE: &str = "x-chorus-webhook-signature";

/// Hex SHA-256 of a body.
pub fn body_sha256_hex(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// An incremental body hash, for bodies that are streamed.
#[derive(Debug, Default)]
pub struct BodyHasher(Sha256);

impl BodyHasher {
    pub fn update(&mut self, chunk: &[u8]) {
        self.0.update(chunk);
    }

    pub fn finish_hex(self) -> String {
        hex::encode(self.0.finalize())
    }
}
