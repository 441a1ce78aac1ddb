//! Key check values computed under a clear key: [`compute`], [`compute_default`], and the check
//! of a KCV against a key ([`KcvCheck::matches`]). The values themselves ([`Kcv`], with their
//! [`KcvMethod`] and length) are plain data of `hsm_api`.
//!
//! The methods and their default lengths are in [`KcvMethod`]'s table: a method encrypts, or
//! CMACs, one block of zeros.

use hsm_api::{Error, Kcv, KcvMethod, Result};
use subtle::ConstantTimeEq;

use crate::crypto::SecretKey;
use crate::crypto::cipher::BlockCipher;

/// The check of a [`Kcv`] against a clear key. It needs the cipher, so it lives with the
/// simulator's crypto, not with the plain [`Kcv`] of `hsm_api`.
pub trait KcvCheck {
    /// Whether `key` has this check value (same method and length), compared in constant time.
    fn matches(&self, key: &SecretKey) -> Result<bool>;
}

impl KcvCheck for Kcv {
    fn matches(&self, key: &SecretKey) -> Result<bool> {
        let actual = compute(key, self.method(), self.value().len())?;
        Ok(actual.value().ct_eq(self.value()).into())
    }
}

/// The KCV of `key` by `method`, `len` bytes long (1 to one block).
pub fn compute(key: &SecretKey, method: KcvMethod, len: usize) -> Result<Kcv> {
    let block = key.algorithm().block_len();
    if len == 0 || len > block {
        return Err(Error::KcvLength { len, max: block });
    }
    let cipher = BlockCipher::new(key)?;
    let mut full = vec![0u8; block];
    match method {
        KcvMethod::EncryptZeros => cipher.encrypt_ecb(&mut full)?,
        KcvMethod::Cmac => full = cipher.cmac(&full),
    }
    full.truncate(len);
    Ok(Kcv::from_parts(method, full))
}

/// The KCV of `key` by its algorithm's default method and length.
pub fn compute_default(key: &SecretKey) -> Result<Kcv> {
    let method = KcvMethod::default_for(key.algorithm());
    compute(key, method, method.default_len(key.algorithm()))
}

#[cfg(test)]
mod tests {
    use hsm_api::Algorithm;

    use super::*;

    #[test]
    fn domain_chain_root_kcv() {
        // DOMAIN.md §2: the test national root has legacy KCV D2B91C.
        let key =
            SecretKey::from_hex(Algorithm::Tdes2, "11111111111111112222222222222222").unwrap();
        assert_eq!(compute_default(&key).unwrap().to_hex(), "D2B91C");
        assert!(
            Kcv::from_parts(KcvMethod::EncryptZeros, hex::decode("D2B91C").unwrap())
                .matches(&key)
                .unwrap()
        );
        assert!(
            !Kcv::from_parts(KcvMethod::EncryptZeros, hex::decode("D2B91D").unwrap())
                .matches(&key)
                .unwrap()
        );
    }

    #[test]
    fn length_is_bounded_by_the_block() {
        let key = SecretKey::new(Algorithm::Des, &[0x13; 8]).unwrap();
        assert_eq!(
            compute(&key, KcvMethod::EncryptZeros, 9),
            Err(Error::KcvLength { len: 9, max: 8 })
        );
        assert_eq!(
            compute(&key, KcvMethod::EncryptZeros, 0),
            Err(Error::KcvLength { len: 0, max: 8 })
        );
        assert_eq!(
            compute(&key, KcvMethod::EncryptZeros, 8)
                .unwrap()
                .value()
                .len(),
            8
        );
    }
}
