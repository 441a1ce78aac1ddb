//! Key check values: the short, public fingerprint custodians compare against paper.
//!
//! A KCV is meaningless without its method and length, so [`Kcv`] carries both.
//!
//! | method | input | default length |
//! |---|---|---|
//! | [`KcvMethod::EncryptZeros`] (ANSI X9.24-1 legacy) | one block of zeros, ECB | DES/TDES 3, SM4 4, AES 3 |
//! | [`KcvMethod::Cmac`] (X9.24-1:2017 annex A) | CMAC of one block of zeros | 5 |

use core::fmt;

use subtle::ConstantTimeEq;

use crate::cipher::BlockCipher;
use crate::error::{Error, Result};
use crate::key::{Algorithm, SecretKey};

/// How a KCV is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KcvMethod {
    /// Encrypt one all-zero block (the legacy DES/TDES method; used for SM4 too).
    EncryptZeros,
    /// CMAC over one all-zero block (the AES method of X9.24-1:2017; also defined for TDES).
    Cmac,
}

impl KcvMethod {
    /// The method a key of `alg` is checked with unless someone asks otherwise.
    pub const fn default_for(alg: Algorithm) -> KcvMethod {
        if alg.is_aes() {
            KcvMethod::Cmac
        } else {
            KcvMethod::EncryptZeros
        }
    }

    /// The conventional length for this method and algorithm.
    pub const fn default_len(self, alg: Algorithm) -> usize {
        match (self, alg) {
            (KcvMethod::Cmac, _) => 5,
            (KcvMethod::EncryptZeros, Algorithm::Sm4) => 4,
            (KcvMethod::EncryptZeros, _) => 3,
        }
    }

    /// `legacy` or `cmac`.
    pub const fn name(self) -> &'static str {
        match self {
            KcvMethod::EncryptZeros => "legacy",
            KcvMethod::Cmac => "cmac",
        }
    }

    /// Parses `legacy` (alias `zeros`) or `cmac`.
    pub fn from_name(name: &str) -> Option<KcvMethod> {
        match name.to_ascii_lowercase().as_str() {
            "legacy" | "zeros" | "encrypt-zeros" => Some(KcvMethod::EncryptZeros),
            "cmac" => Some(KcvMethod::Cmac),
            _ => None,
        }
    }
}

/// A key check value with the method that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Kcv {
    method: KcvMethod,
    value: Vec<u8>,
}

impl Kcv {
    /// A KCV read from elsewhere (paper, a key block, a record), to compare against.
    pub fn from_parts(method: KcvMethod, value: Vec<u8>) -> Kcv {
        Kcv { method, value }
    }

    /// The method.
    pub fn method(&self) -> KcvMethod {
        self.method
    }

    /// The check bytes; their number is the KCV's length.
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// Upper-case hex of the check bytes.
    pub fn to_hex(&self) -> String {
        hex::encode_upper(&self.value)
    }

    /// Whether `key` has this check value (same method and length), compared in constant time.
    pub fn matches(&self, key: &SecretKey) -> Result<bool> {
        let actual = compute(key, self.method, self.value.len())?;
        Ok(actual.value.ct_eq(&self.value).into())
    }
}

impl fmt::Display for Kcv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
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
    Ok(Kcv {
        method,
        value: full,
    })
}

/// The KCV of `key` by its algorithm's default method and length.
pub fn compute_default(key: &SecretKey) -> Result<Kcv> {
    let method = KcvMethod::default_for(key.algorithm());
    compute(key, method, method.default_len(key.algorithm()))
}

#[cfg(test)]
mod tests {
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
