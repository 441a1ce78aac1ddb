//! Signing the lists the service publishes (the blacklist terminals check): ECDSA over P-256
//! with SHA-256, deterministic nonces (RFC 6979), all RustCrypto `p256`.
//!
//! A [`hsm_api::KeyUsage::ListSigning`] token holds a 32-byte seed (generated like any AES-256
//! key, so it is wrapped, rotated and backed up like every token). The private scalar is the
//! first `SHA-256("sscard-kms/list-signing/p256/v1" ‖ seed ‖ counter)`, counter 0, 1, …, that is
//! a valid P-256 scalar (counter 0 but with probability 2⁻³²). It exists only here, for the
//! length of one call; only signatures and the public key leave.

use hsm_api::{Error, Result};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::SecretKey;

const DOMAIN: &[u8] = b"sscard-kms/list-signing/p256/v1";

/// The P-256 key of a list-signing seed. `Debug` shows nothing of it.
pub struct ListSigningKey(SigningKey);

impl core::fmt::Debug for ListSigningKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ListSigningKey").finish_non_exhaustive()
    }
}

impl ListSigningKey {
    /// The key of `seed` (32 bytes).
    pub fn from_seed(seed: &SecretKey) -> Result<ListSigningKey> {
        if seed.secret_bytes().len() != 32 {
            return Err(Error::KeyLength {
                alg: seed.algorithm(),
                expected: 32,
                actual: seed.secret_bytes().len(),
            });
        }
        for counter in 0u8..=u8::MAX {
            let mut hash = Sha256::new();
            hash.update(DOMAIN);
            hash.update(seed.secret_bytes());
            hash.update([counter]);
            let scalar = Zeroizing::new(<[u8; 32]>::from(hash.finalize()));
            if let Ok(key) = SigningKey::from_slice(scalar.as_slice()) {
                return Ok(ListSigningKey(key));
            }
        }
        // 256 hashes in a row outside [1, n): never, short of a broken SHA-256.
        Err(Error::WeakKey)
    }

    /// The signature of `data`: `r ‖ s`, 64 bytes big-endian.
    pub fn sign(&self, data: &[u8]) -> Vec<u8> {
        let signature: Signature = self.0.sign(data);
        signature.to_bytes().to_vec()
    }

    /// The public key, SEC1 uncompressed (65 bytes).
    pub fn public_key(&self) -> Vec<u8> {
        self.0
            .verifying_key()
            .to_sec1_point(false)
            .as_bytes()
            .to_vec()
    }
}

#[cfg(test)]
mod tests {
    use hsm_api::Algorithm;
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::{Signature, VerifyingKey};

    use super::*;

    fn seed(byte: u8) -> SecretKey {
        SecretKey::new(Algorithm::Aes256, &[byte; 32]).unwrap()
    }

    #[test]
    fn signatures_verify_under_the_public_key_and_nothing_else() {
        let key = ListSigningKey::from_seed(&seed(7)).unwrap();
        let public = key.public_key();
        assert_eq!(public.len(), 65);
        assert_eq!(public[0], 0x04);
        let verifying = VerifyingKey::from_sec1_bytes(&public).unwrap();
        let signature = key.sign(b"list v1");
        assert_eq!(signature.len(), 64);
        let parsed = Signature::from_slice(&signature).unwrap();
        assert!(verifying.verify(b"list v1", &parsed).is_ok());
        assert!(verifying.verify(b"list v2", &parsed).is_err());
        // Deterministic per seed; another seed is another key.
        assert_eq!(
            key.public_key(),
            ListSigningKey::from_seed(&seed(7)).unwrap().public_key()
        );
        assert_ne!(
            public,
            ListSigningKey::from_seed(&seed(8)).unwrap().public_key()
        );
        assert_eq!(format!("{key:?}"), "ListSigningKey { .. }");
    }
}
