//! Key check values, always with their method and length.

use core::fmt;

use crate::algorithm::Algorithm;

/// How a KCV is computed. A KCV is meaningless without its method and length, so [`Kcv`]
/// carries both.
///
/// | method | input | default length |
/// |---|---|---|
/// | [`KcvMethod::EncryptZeros`] (ANSI X9.24-1 legacy) | one block of zeros, ECB | DES/TDES 3, SM4 4, AES 3 |
/// | [`KcvMethod::Cmac`] (X9.24-1:2017 annex A) | CMAC of one block of zeros | 5 |
///
/// This is the data: computing a KCV needs the clear key, which only an HSM holds.
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

/// A key check value with the method that produced it: the short, public fingerprint
/// custodians compare against paper.
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
        crate::upper_hex(&self.value)
    }
}

impl fmt::Display for Kcv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
