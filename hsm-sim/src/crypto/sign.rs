//! Signing the lists the service publishes (the blacklist terminals check), in the scheme the
//! key's token names ([`ListSignature`]): ECDSA over P-256 with SHA-256 (RustCrypto `p256`), or
//! SM2DSA with SM3 (GB/T 32918.2; RustCrypto `sm2`, user id [`ListSignature::SM2_USER_ID`]);
//! deterministic nonces (RFC 6979) in both.
//!
//! A [`hsm_api::KeyUsage::ListSigning`] token holds a 32-byte seed (generated like any AES-256
//! key, so it is wrapped, rotated and backed up like every token). The private scalar is the
//! first `SHA-256(label ‖ seed ‖ counter)`, counter 0, 1, …, that is a valid scalar of the
//! curve, with label `sscard-kms/list-signing/p256/v1` or `sscard-kms/list-signing/sm2/v1`
//! (counter 0 but with probability about 2⁻³²). It exists only here, for the length of one
//! call; only signatures and the public key leave.

use hsm_api::{Error, ListSignature, Result};
use p256::ecdsa::signature::Signer;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::SecretKey;

/// The signing key of a list-signing seed, of its scheme. `Debug` shows only the scheme.
pub enum ListSigningKey {
    EcdsaP256(p256::ecdsa::SigningKey),
    Sm2(Sm2Key),
}

/// An SM2 signing key on the heap, overwritten when dropped (`sm2::dsa::SigningKey` does not
/// zeroize itself, unlike `p256`'s).
pub struct Sm2Key(Box<sm2::dsa::SigningKey>);

impl core::fmt::Debug for Sm2Key {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Sm2Key(..)")
    }
}

impl Drop for Sm2Key {
    fn drop(&mut self) {
        let mut one = [0u8; 32];
        one[31] = 1;
        if let Ok(wiped) = sm2::dsa::SigningKey::from_slice(ListSignature::SM2_USER_ID, &one) {
            // Assigning in place writes over the secret scalar's bytes in the box.
            *self.0 = wiped;
        }
    }
}

impl core::fmt::Debug for ListSigningKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ListSigningKey")
            .field("scheme", &self.scheme().name())
            .finish_non_exhaustive()
    }
}

impl ListSigningKey {
    /// The key of `seed` (32 bytes) in `scheme`.
    pub fn from_seed(seed: &SecretKey, scheme: ListSignature) -> Result<ListSigningKey> {
        if seed.secret_bytes().len() != 32 {
            return Err(Error::KeyLength {
                alg: seed.algorithm(),
                expected: 32,
                actual: seed.secret_bytes().len(),
            });
        }
        let label: &[u8] = match scheme {
            ListSignature::EcdsaP256 => b"sscard-kms/list-signing/p256/v1",
            ListSignature::Sm2 => b"sscard-kms/list-signing/sm2/v1",
        };
        for counter in 0u8..=u8::MAX {
            let mut hash = Sha256::new();
            hash.update(label);
            hash.update(seed.secret_bytes());
            hash.update([counter]);
            let scalar = Zeroizing::new(<[u8; 32]>::from(hash.finalize()));
            let key = match scheme {
                ListSignature::EcdsaP256 => p256::ecdsa::SigningKey::from_slice(scalar.as_slice())
                    .ok()
                    .map(ListSigningKey::EcdsaP256),
                ListSignature::Sm2 => {
                    sm2::dsa::SigningKey::from_slice(ListSignature::SM2_USER_ID, scalar.as_slice())
                        .ok()
                        .map(|k| ListSigningKey::Sm2(Sm2Key(Box::new(k))))
                }
            };
            if let Some(key) = key {
                return Ok(key);
            }
        }
        // 256 hashes in a row outside the scalar range: never, short of a broken SHA-256.
        Err(Error::WeakKey)
    }

    /// The key's scheme.
    pub fn scheme(&self) -> ListSignature {
        match self {
            ListSigningKey::EcdsaP256(_) => ListSignature::EcdsaP256,
            ListSigningKey::Sm2(_) => ListSignature::Sm2,
        }
    }

    /// The signature of `data`: `r ‖ s`, 64 bytes big-endian.
    pub fn sign(&self, data: &[u8]) -> Vec<u8> {
        match self {
            ListSigningKey::EcdsaP256(key) => {
                let signature: p256::ecdsa::Signature = key.sign(data);
                signature.to_bytes().to_vec()
            }
            ListSigningKey::Sm2(key) => {
                let signature: sm2::dsa::Signature = key.0.sign(data);
                signature.to_bytes().to_vec()
            }
        }
    }

    /// The public key, SEC1 uncompressed (65 bytes).
    pub fn public_key(&self) -> Vec<u8> {
        match self {
            ListSigningKey::EcdsaP256(key) => {
                key.verifying_key().to_sec1_point(false).as_bytes().to_vec()
            }
            ListSigningKey::Sm2(key) => key.0.verifying_key().to_sec1_bytes().to_vec(),
        }
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
        let key = ListSigningKey::from_seed(&seed(7), ListSignature::EcdsaP256).unwrap();
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
            ListSigningKey::from_seed(&seed(7), ListSignature::EcdsaP256)
                .unwrap()
                .public_key()
        );
        assert_ne!(
            public,
            ListSigningKey::from_seed(&seed(8), ListSignature::EcdsaP256)
                .unwrap()
                .public_key()
        );
        assert_eq!(
            format!("{key:?}"),
            "ListSigningKey { scheme: \"ecdsa-p256-sha256\", .. }"
        );
    }

    #[test]
    fn sm2_signatures_verify_under_the_sm2_public_key_and_user_id_only() {
        use sm2::dsa::signature::Verifier as _;
        let key = ListSigningKey::from_seed(&seed(7), ListSignature::Sm2).unwrap();
        assert_eq!(key.scheme(), ListSignature::Sm2);
        let public = key.public_key();
        assert_eq!(public.len(), 65);
        assert_eq!(public[0], 0x04);
        // Another scheme of the same seed is another key.
        let p256 = ListSigningKey::from_seed(&seed(7), ListSignature::EcdsaP256).unwrap();
        assert_ne!(public, p256.public_key());
        let signature = key.sign(b"list v1");
        assert_eq!(signature.len(), 64);
        let parsed = sm2::dsa::Signature::from_slice(&signature).unwrap();
        let verifying =
            sm2::dsa::VerifyingKey::from_sec1_bytes(ListSignature::SM2_USER_ID, &public).unwrap();
        assert!(verifying.verify(b"list v1", &parsed).is_ok());
        assert!(verifying.verify(b"list v2", &parsed).is_err());
        // The user id is hashed into Z_A: another id does not verify.
        let other_id =
            sm2::dsa::VerifyingKey::from_sec1_bytes("ALICE123@YAHOO.COM", &public).unwrap();
        assert!(other_id.verify(b"list v1", &parsed).is_err());
        // Deterministic per seed.
        assert_eq!(key.sign(b"list v1"), signature);
        assert_eq!(
            public,
            ListSigningKey::from_seed(&seed(7), ListSignature::Sm2)
                .unwrap()
                .public_key()
        );
        assert!(format!("{key:?}").contains("sm2-sm3"));
    }
}
