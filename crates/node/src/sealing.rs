//! Sealing API keys: the registry keeps, per key, the signing key derived from its secret
//! (`model::signature::signing_key`), encrypted with ChaCha20-Poly1305 under the cluster's
//! key-encryption key (KEK). A leaked `raft.redb` or `snapshot.json` holds only sealed
//! values; opening one needs the KEK, which never enters the log.
//!
//! The KEK is derived from the cluster secret (`DATA_DIR/cluster.key`, 0600, which every
//! node has from its join): HMAC-SHA256(secret, "chorus key-encryption key v1"), a key of
//! its own rather than the secret that signs raft traffic. The proposer chooses the nonce
//! (random, 96 bits), so applying a `CreateKey` stays deterministic; the key's id is the
//! associated data, so a sealed value moved to another key does not open.

use model::{ApiKey, KeyId};
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};

/// What the KEK is derived with.
const KEK_LABEL: &[u8] = b"chorus key-encryption key v1";

/// The cluster's key-encryption key.
pub(crate) struct Kek(LessSafeKey);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    /// The KEK of the cluster whose secret is `cluster_secret_hex`.
    pub(crate) fn of_cluster(cluster_secret_hex: &str) -> Result<Kek, String> {
        let secret = hex::decode(cluster_secret_hex)
            .map_err(|e| format!("the cluster secret is not hex: {e}"))?;
        let key = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
            KEK_LABEL,
        );
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key.as_ref())
            .map_err(|_| "no key-encryption key".to_string())?;
        Ok(Kek(LessSafeKey::new(unbound)))
    }
}

/// `signing_key` sealed for `id`: hex of the nonce, the ciphertext and the tag.
pub(crate) fn seal(kek: &Kek, id: &KeyId, signing_key: &[u8; 32]) -> String {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let mut sealed = signing_key.to_vec();
    kek.0
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(id.0.as_bytes()),
            &mut sealed,
        )
        .expect("ChaCha20-Poly1305 seals 32 bytes");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    hex::encode(out)
}

/// The signing key sealed in `sealed` for `id`; `None` if it does not open (another
/// cluster's KEK, another key's value, or tampered).
fn open(kek: &Kek, id: &KeyId, sealed: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(sealed).ok()?;
    if bytes.len() < NONCE_LEN {
        return None;
    }
    let (nonce, rest) = bytes.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut in_out = rest.to_vec();
    let plain = kek
        .0
        .open_in_place(nonce, Aad::from(id.0.as_bytes()), &mut in_out)
        .ok()?;
    plain.try_into().ok()
}

impl crate::Node {
    /// The key that verifies `key`'s signatures: its sealed signing key opened, or for a
    /// key created before sealing, derived from its secret.
    pub fn signing_key(&self, key: &ApiKey) -> Option<[u8; 32]> {
        match &key.sealed {
            Some(sealed) => open(&self.inner.kek, &key.id, sealed),
            None => model::signature::signing_key(&key.secret),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_under_its_cluster_and_id_only() {
        let kek = Kek::of_cluster(&"ab".repeat(32)).unwrap();
        let id = KeyId("ck_1".into());
        let signing = [7u8; 32];
        let sealed = seal(&kek, &id, &signing);
        assert!(!sealed.contains(&hex::encode(signing)));
        assert_eq!(open(&kek, &id, &sealed), Some(signing));
        // Two seals of one key differ (fresh nonces).
        assert_ne!(seal(&kek, &id, &signing), sealed);
        assert_eq!(open(&kek, &KeyId("ck_2".into()), &sealed), None);
        let other = Kek::of_cluster(&"cd".repeat(32)).unwrap();
        assert_eq!(open(&other, &id, &sealed), None);
        let mut tampered = hex::decode(&sealed).unwrap();
        tampered[20] ^= 1;
        assert_eq!(open(&kek, &id, &hex::encode(tampered)), None);
        assert_eq!(open(&kek, &id, "zz"), None);
    }
}
