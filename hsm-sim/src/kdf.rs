//! HKDF-SHA256 (RFC 5869) for the HSM's internal sub-keys, e.g. separating the LMK's
//! key-block-protection key from its audit-MAC key. Each use names itself in `info`.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::key::{Algorithm, SecretKey};

/// Derives a key of `alg` from input keying material `ikm` with HKDF-SHA256.
pub fn hkdf_sha256(ikm: &SecretKey, salt: &[u8], info: &[u8], alg: Algorithm) -> Result<SecretKey> {
    let okm = hkdf_sha256_bytes(ikm.secret_bytes(), salt, info, alg.key_len())?;
    SecretKey::from_vec(alg, okm.to_vec())
}

/// Raw HKDF-SHA256 output of `len` bytes (at most 255 × 32). Crate-private: the result may be key
/// material.
pub(crate) fn hkdf_sha256_bytes(
    ikm: &[u8],
    salt: &[u8],
    info: &[u8],
    len: usize,
) -> Result<Zeroizing<Vec<u8>>> {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut okm = Zeroizing::new(vec![0u8; len]);
    hk.expand(info, &mut okm).map_err(|_| Error::DataLength {
        field: "HKDF output",
        expected: "at most 8160 bytes",
        actual: len,
    })?;
    Ok(okm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5869_case_1() {
        let ikm = [0x0b; 22];
        let salt = hex::decode("000102030405060708090a0b0c").unwrap();
        let info = hex::decode("f0f1f2f3f4f5f6f7f8f9").unwrap();
        let okm = hkdf_sha256_bytes(&ikm, &salt, &info, 42).unwrap();
        assert_eq!(
            hex::encode(&*okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }

    #[test]
    fn too_long_output_is_an_error() {
        assert!(matches!(
            hkdf_sha256_bytes(&[1; 32], b"", b"", 255 * 32 + 1),
            Err(Error::DataLength { .. })
        ));
    }
}
