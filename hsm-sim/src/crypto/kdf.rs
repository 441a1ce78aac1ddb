//! HKDF-SHA256 (RFC 5869) for the HSM's internal sub-keys, e.g. separating the LMK's
//! key-block-protection key from its audit-MAC key. Each use names itself in `info`.

use hkdf::Hkdf;
use hsm_api::{Algorithm, Error, Result};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::crypto::SecretKey;

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
        field: "HKDF output".into(),
        expected: "at most 8160 bytes".into(),
        actual: len,
    })?;
    Ok(okm)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One RFC 5869 test case as `tests/vectors/hkdf.json` holds it.
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct HkdfVector {
        #[serde(rename = "ref")]
        reference: String,
        hash: String,
        ikm: String,
        salt: String,
        info: String,
        length: usize,
        okm: String,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct HkdfFile {
        source: String,
        vectors: Vec<HkdfVector>,
    }

    #[test]
    fn rfc5869_appendix_a_sha256() {
        let file: HkdfFile =
            serde_json::from_str(include_str!("../../tests/vectors/hkdf.json")).unwrap();
        assert!(file.source.contains("RFC 5869"), "{}", file.source);
        // Test Cases 1-3 are the SHA-256 ones.
        assert_eq!(file.vectors.len(), 3);
        for v in &file.vectors {
            assert_eq!(v.hash, "SHA-256", "{}", v.reference);
            let ikm = hex::decode(&v.ikm).unwrap();
            let salt = hex::decode(&v.salt).unwrap();
            let info = hex::decode(&v.info).unwrap();
            let okm = hkdf_sha256_bytes(&ikm, &salt, &info, v.length).unwrap();
            assert_eq!(okm.len(), v.length, "{}", v.reference);
            assert_eq!(hex::encode(&*okm), v.okm.to_lowercase(), "{}", v.reference);
        }
        // Test Case 3 has a zero-length salt. RFC 5869 section 2.2: "if not provided, [salt] is
        // set to a string of HashLen zeros"; an empty HMAC key is zero-padded to the same block.
        let case3 = &file.vectors[2];
        assert!(
            case3.salt.is_empty() && case3.info.is_empty(),
            "{}",
            case3.reference
        );
        let ikm = hex::decode(&case3.ikm).unwrap();
        assert_eq!(
            *hkdf_sha256_bytes(&ikm, &[], &[], case3.length).unwrap(),
            *hkdf_sha256_bytes(&ikm, &[0u8; 32], &[], case3.length).unwrap()
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
