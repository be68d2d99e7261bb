//! Sealing what must reach the other instances but never sit in Redis in clear (a key added
//! through the admin API): ChaCha20-Poly1305 under a key derived (HKDF-SHA256) from the
//! `cluster.secret` every instance shares. Redis holds only the ciphertext; whoever can write to
//! Redis but does not know the secret can neither read a sealed key nor forge one. The same
//! secret signs every event the instances publish (HMAC-SHA256 under another derived key), so
//! such a writer cannot forge an operator's action or a key's finding either.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

const SALT: &[u8] = b"gemini-proxy cluster seal v1";

/// Seals and opens with the cluster's shared secret.
pub struct Sealer {
    key: LessSafeKey,
    signing: hmac::Key,
    /// Names the secret without revealing it: equal on instances that share one.
    fingerprint: String,
    rng: SystemRandom,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SealError {
    #[error("not sealed by this cluster (another `cluster.secret`, or altered)")]
    Foreign,
    #[error("cannot draw a nonce")]
    Random,
}

impl Sealer {
    pub fn new(secret: &str) -> Sealer {
        let prk = Salt::new(HKDF_SHA256, SALT).extract(secret.as_bytes());
        let okm = prk
            .expand(&[b"seal"], &CHACHA20_POLY1305)
            .expect("one key length");
        let key = LessSafeKey::new(UnboundKey::from(okm));
        let signing = hmac::Key::from(
            prk.expand(&[b"events"], hmac::HMAC_SHA256)
                .expect("one key length"),
        );
        let mut id = [0u8; 32];
        prk.expand(&[b"fingerprint"], HKDF_SHA256)
            .and_then(|o| o.fill(&mut id))
            .expect("one digest length");
        Sealer {
            key,
            signing,
            fingerprint: hex::encode(&id[..8]),
            rng: SystemRandom::new(),
        }
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// `plain` sealed for `context` (what it is about, e.g. a key id): opens only with the same.
    pub fn seal(&self, context: &str, plain: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut out = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut out,
            )
            .map_err(|_| SealError::Random)?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&out);
        Ok(hex::encode(sealed))
    }

    /// The signature of `text` (hex).
    pub fn sign(&self, text: &str) -> String {
        hex::encode(hmac::sign(&self.signing, text.as_bytes()).as_ref())
    }

    /// Whether `mac` is this cluster's signature of `text` (compared in constant time).
    pub fn verify(&self, text: &str, mac: &str) -> bool {
        hex::decode(mac).is_ok_and(|m| hmac::verify(&self.signing, text.as_bytes(), &m).is_ok())
    }

    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let raw = hex::decode(sealed).map_err(|_| SealError::Foreign)?;
        if raw.len() < NONCE_LEN {
            return Err(SealError::Foreign);
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Foreign)?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut body)
            .map_err(|_| SealError::Foreign)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "cluster-secret-a-0123456789abcdef0123";
    const B: &str = "cluster-secret-b-0123456789abcdef0123";

    #[test]
    fn what_one_instance_seals_another_with_the_secret_opens() {
        let (one, two) = (Sealer::new(A), Sealer::new(A));
        let sealed = one.seal("key:k1", b"AIzaSecretKey").unwrap();
        assert!(!sealed.contains("AIza") && !sealed.contains(&hex::encode("AIza")));
        assert_eq!(two.open("key:k1", &sealed).unwrap(), b"AIzaSecretKey");
        assert_eq!(one.fingerprint(), two.fingerprint());
        // A fresh nonce each time: the same key sealed twice looks different.
        assert_ne!(sealed, one.seal("key:k1", b"AIzaSecretKey").unwrap());
    }

    #[test]
    fn another_secret_another_context_or_an_altered_seal_does_not_open() {
        let one = Sealer::new(A);
        let sealed = one.seal("key:k1", b"AIzaSecretKey").unwrap();
        let other = Sealer::new(B);
        assert_ne!(one.fingerprint(), other.fingerprint());
        assert_eq!(other.open("key:k1", &sealed), Err(SealError::Foreign));
        // Moved to another key id, it does not open.
        assert_eq!(one.open("key:k2", &sealed), Err(SealError::Foreign));
        let mut flipped = sealed.into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(one.open("key:k1", &flipped), Err(SealError::Foreign));
        for junk in ["", "zz", "00", &"ab".repeat(11), "not hex at all"] {
            assert_eq!(one.open("key:k1", junk), Err(SealError::Foreign), "{junk}");
        }
    }

    #[test]
    fn only_the_same_secret_signs_what_verifies() {
        let (one, two, other) = (Sealer::new(A), Sealer::new(A), Sealer::new(B));
        let mac = one.sign("event");
        assert!(two.verify("event", &mac));
        assert!(!two.verify("event ", &mac));
        assert!(!other.verify("event", &mac));
        assert!(!two.verify("event", &mac[..mac.len() - 2]));
        assert!(!two.verify("event", "not hex"));
        // Signing and sealing keys differ: a seal's tag is no signature.
        assert_ne!(mac, one.seal("event", b"").unwrap());
    }

    #[test]
    fn the_fingerprint_does_not_reveal_the_secret() {
        let f = Sealer::new(A).fingerprint().to_string();
        assert_eq!(f.len(), 16);
        assert!(!A.contains(&f) && !hex::encode(A).contains(&f));
    }
}
