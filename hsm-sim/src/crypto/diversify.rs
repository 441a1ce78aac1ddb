//! Key dispersion (分散): a child key from a parent key and an 8-byte [`Factor`] (DOMAIN.md §2).
//!
//! | method | parent | child |
//! |---|---|---|
//! | [`Dispersion::PbocTdes`] | TDES (2- or 3-key) | `TDES(K, F) ‖ TDES(K, ~F)`, 2-key TDES, no parity adjustment |
//! | [`Dispersion::PbocDes`] | DES or TDES | `E(K, F)`, a single-DES key |
//! | [`Dispersion::Sm4Complement`] | SM4 | `SM4(K, F ‖ ~F)` (one block) |
//! | [`Dispersion::EmvOptionA`] | TDES (2- or 3-key) | as `PbocTdes`, then odd parity forced on every byte |
//!
//! The SM4 method is the natural reading of the SSC 3.0 scheme, not confirmed by a public source;
//! it carries a version in its name (`sm4-f-notf-v1`) so that a card template can name another
//! expansion if one is ever published.
//!
//! A child key exists in clear only inside the HSM boundary, as a [`SecretKey`].

use hsm_api::{Dispersion, Factor, Result};
use zeroize::Zeroizing;

use crate::crypto::SecretKey;
use crate::crypto::cipher::BlockCipher;

/// The child of `parent` for `factor` by `method`.
pub fn diversify(parent: &SecretKey, method: Dispersion, factor: &Factor) -> Result<SecretKey> {
    diversify_with(&BlockCipher::new(parent)?, method, factor)
}

/// [`diversify`] under a parent already keyed as `cipher` (its key schedule kept by a caller
/// that derives many children of one parent).
pub(crate) fn diversify_with(
    cipher: &BlockCipher,
    method: Dispersion,
    factor: &Factor,
) -> Result<SecretKey> {
    let child_alg = method.child_algorithm(cipher.algorithm())?;
    let f = factor.as_bytes();
    let mut buf = Zeroizing::new(Vec::with_capacity(16));
    match method {
        Dispersion::PbocTdes | Dispersion::EmvOptionA | Dispersion::Sm4Complement => {
            buf.extend_from_slice(f);
            buf.extend_from_slice(&factor.complement());
        }
        Dispersion::PbocDes => buf.extend_from_slice(f),
    }
    // Two 8-byte blocks under TDES, or one 16-byte block under SM4: ECB either way.
    cipher.encrypt_ecb(&mut buf)?;
    if method == Dispersion::EmvOptionA {
        buf.iter_mut().for_each(|b| *b = with_odd_parity(*b));
    }
    SecretKey::new(child_alg, &buf)
}

/// Applies `factors` in order, top level first (e.g. F1, F2, F3 from a national root).
pub fn diversify_chain(
    root: &SecretKey,
    method: Dispersion,
    factors: &[Factor],
) -> Result<SecretKey> {
    match factors.split_first() {
        Some((first, rest)) => diversify_chain_with(&BlockCipher::new(root)?, method, first, rest),
        None => Ok(root.duplicate()),
    }
}

/// [`diversify_chain`] of `first` then `rest` from a root already keyed as `root`.
pub(crate) fn diversify_chain_with(
    root: &BlockCipher,
    method: Dispersion,
    first: &Factor,
    rest: &[Factor],
) -> Result<SecretKey> {
    let mut key = diversify_with(root, method, first)?;
    for factor in rest {
        key = diversify(&key, method, factor)?;
    }
    Ok(key)
}

/// `b` with its least significant bit set so that the byte has an odd number of ones.
pub fn with_odd_parity(b: u8) -> u8 {
    let high = b & 0xFE;
    if high.count_ones().is_multiple_of(2) {
        high | 1
    } else {
        high
    }
}

#[cfg(test)]
mod tests {
    use hsm_api::{Algorithm, Error};

    use super::*;
    use crate::crypto::kcv;

    fn tdes(hex: &str) -> SecretKey {
        SecretKey::from_hex(Algorithm::Tdes2, hex).unwrap()
    }

    fn factors() -> [Factor; 3] {
        [
            Factor::province("440000").unwrap(),
            Factor::city("440100").unwrap(),
            Factor::from_hex("86843202AD932A48").unwrap(),
        ]
    }

    #[derive(serde::Deserialize)]
    struct Vectors {
        chains: Vec<Chain>,
    }

    #[derive(serde::Deserialize)]
    struct Chain {
        name: String,
        method: String,
        alg: String,
        root: String,
        root_kcv: Option<String>,
        levels: Vec<Level>,
    }

    #[derive(serde::Deserialize)]
    struct Level {
        factor: String,
        key: String,
        kcv: Option<String>,
    }

    /// DOMAIN.md §2: every level of both worked chains, with the KCVs where published.
    #[test]
    fn published_chains() {
        let v: Vectors =
            serde_json::from_str(include_str!("../../tests/vectors/ssc.json")).unwrap();
        assert_eq!(v.chains.len(), 2);
        for chain in v.chains {
            let alg = Algorithm::from_name(&chain.alg).unwrap();
            let method = Dispersion::from_name(&chain.method).unwrap();
            let mut key = SecretKey::from_hex(alg, &chain.root).unwrap();
            if let Some(expected) = &chain.root_kcv {
                assert_eq!(&kcv::compute_default(&key).unwrap().to_hex(), expected);
            }
            let mut factors = Vec::new();
            for level in &chain.levels {
                let factor = Factor::from_hex(&level.factor).unwrap();
                key = diversify(&key, method, &factor).unwrap();
                factors.push(factor);
                assert_eq!(
                    key,
                    SecretKey::from_hex(alg, &level.key).unwrap(),
                    "{}",
                    chain.name
                );
                if let Some(expected) = &level.kcv {
                    assert_eq!(&kcv::compute_default(&key).unwrap().to_hex(), expected);
                }
            }
            let root = SecretKey::from_hex(alg, &chain.root).unwrap();
            assert_eq!(diversify_chain(&root, method, &factors).unwrap(), key);
        }
    }

    #[test]
    fn ssc_factors_give_the_published_factor_bytes() {
        let [f1, f2, f3] = factors();
        assert_eq!(f1.to_hex(), "3434303030307368");
        assert_eq!(f2.to_hex(), "3434303130307378");
        assert_eq!(f3.to_hex(), "86843202AD932A48");
    }

    #[test]
    fn option_a_is_pboc_with_odd_parity() {
        let root = tdes("11111111111111112222222222222222");
        let [f1, ..] = factors();
        let a = diversify(&root, Dispersion::EmvOptionA, &f1).unwrap();
        // A2344D4CF01A61CE BA2D134CDDF48122 with odd parity on every byte.
        assert_eq!(a, tdes("A2344C4CF11A61CEBA2C134CDCF48023"));
    }

    #[test]
    fn methods_refuse_foreign_parents() {
        let sm4 = SecretKey::new(Algorithm::Sm4, &[1; 16]).unwrap();
        let f = Factor::from_hex("0102030405060708").unwrap();
        assert_eq!(
            diversify(&sm4, Dispersion::PbocTdes, &f),
            Err(Error::Unsupported {
                op: "pboc-tdes".into(),
                alg: Algorithm::Sm4
            })
        );
        let aes = SecretKey::new(Algorithm::Aes128, &[1; 16]).unwrap();
        assert!(diversify(&aes, Dispersion::Sm4Complement, &f).is_err());
    }
}
