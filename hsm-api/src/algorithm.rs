//! Block-cipher algorithms, by name and by key length.

use core::fmt;

use crate::error::{Error, Result};

/// Block-cipher algorithm of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Single DES, 8-byte key.
    Des,
    /// Double-length triple DES (EDE2, K3 = K1), 16-byte key.
    Tdes2,
    /// Triple-length triple DES (EDE3), 24-byte key.
    Tdes3,
    Aes128,
    Aes192,
    Aes256,
    /// SM4 (GB/T 32907), 16-byte key.
    Sm4,
}

impl Algorithm {
    /// All algorithms, for tables and self-tests.
    pub const ALL: [Algorithm; 7] = [
        Algorithm::Des,
        Algorithm::Tdes2,
        Algorithm::Tdes3,
        Algorithm::Aes128,
        Algorithm::Aes192,
        Algorithm::Aes256,
        Algorithm::Sm4,
    ];

    /// Key length in bytes.
    pub const fn key_len(self) -> usize {
        match self {
            Algorithm::Des => 8,
            Algorithm::Tdes2 | Algorithm::Aes128 | Algorithm::Sm4 => 16,
            Algorithm::Tdes3 | Algorithm::Aes192 => 24,
            Algorithm::Aes256 => 32,
        }
    }

    /// Cipher block length in bytes.
    pub const fn block_len(self) -> usize {
        match self {
            Algorithm::Des | Algorithm::Tdes2 | Algorithm::Tdes3 => 8,
            Algorithm::Aes128 | Algorithm::Aes192 | Algorithm::Aes256 | Algorithm::Sm4 => 16,
        }
    }

    /// True for the DES family, whose keys are checked for weakness.
    pub const fn is_des_family(self) -> bool {
        matches!(self, Algorithm::Des | Algorithm::Tdes2 | Algorithm::Tdes3)
    }

    /// True for AES of any key length.
    pub const fn is_aes(self) -> bool {
        matches!(
            self,
            Algorithm::Aes128 | Algorithm::Aes192 | Algorithm::Aes256
        )
    }

    /// The canonical lower-case name, as used on the command line and in files.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::Des => "des",
            Algorithm::Tdes2 => "tdes",
            Algorithm::Tdes3 => "tdes3",
            Algorithm::Aes128 => "aes128",
            Algorithm::Aes192 => "aes192",
            Algorithm::Aes256 => "aes256",
            Algorithm::Sm4 => "sm4",
        }
    }

    /// The algorithm of a family name and a key length, e.g. `("aes", 32)` → AES-256.
    /// `tdes` takes 16 or 24 bytes; `des` only 8.
    pub fn from_family_and_len(family: &str, len: usize) -> Result<Algorithm> {
        let alg = match (family.to_ascii_lowercase().as_str(), len) {
            ("des", 8) => Algorithm::Des,
            ("tdes" | "3des" | "tdes2", 16) => Algorithm::Tdes2,
            ("tdes" | "3des" | "tdes3", 24) => Algorithm::Tdes3,
            ("aes", 16) | ("aes128", 16) => Algorithm::Aes128,
            ("aes", 24) | ("aes192", 24) => Algorithm::Aes192,
            ("aes", 32) | ("aes256", 32) => Algorithm::Aes256,
            ("sm4", 16) => Algorithm::Sm4,
            (f @ ("des" | "tdes" | "3des" | "tdes2" | "tdes3" | "aes" | "sm4"), _) => {
                let expected = match f {
                    "des" => 8,
                    "tdes3" => 24,
                    "aes" if len > 16 => 32,
                    _ => 16,
                };
                return Err(Error::KeyLength {
                    alg: Algorithm::from_name(f)?,
                    expected,
                    actual: len,
                });
            }
            (other, _) => return Err(Error::UnknownAlgorithm(other.to_owned())),
        };
        Ok(alg)
    }

    /// Parses a canonical name (see [`Algorithm::name`]); `3des` and `aes` are accepted as
    /// `tdes` and `aes128`.
    pub fn from_name(name: &str) -> Result<Algorithm> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "des" => Algorithm::Des,
            "tdes" | "3des" | "tdes2" => Algorithm::Tdes2,
            "tdes3" => Algorithm::Tdes3,
            "aes" | "aes128" => Algorithm::Aes128,
            "aes192" => Algorithm::Aes192,
            "aes256" => Algorithm::Aes256,
            "sm4" => Algorithm::Sm4,
            other => return Err(Error::UnknownAlgorithm(other.to_owned())),
        })
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::Des => "DES",
            Algorithm::Tdes2 => "TDES-2key",
            Algorithm::Tdes3 => "TDES-3key",
            Algorithm::Aes128 => "AES-128",
            Algorithm::Aes192 => "AES-192",
            Algorithm::Aes256 => "AES-256",
            Algorithm::Sm4 => "SM4",
        })
    }
}
