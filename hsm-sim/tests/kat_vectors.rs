//! Published known-answer vectors, through the public API of `hsm-sim` only.
//!
//! Each file under `tests/vectors/` is `{"source": ..., "vectors": [...]}`, its `source` naming
//! the publication and where the values were copied from, and each vector naming its table or
//! example in `ref`. Every test asserts how many vectors it read, so an emptied or truncated
//! file fails instead of passing vacuously.
//!
//! | file | what |
//! |---|---|
//! | `des.json` | FIPS 81 ECB/CBC examples; SP 800-17 Appendix A, Tables B.1 and B.2 |
//! | `tdes.json` | SP 800-67 Appendix B.1; CAVP TECBMMT2/3, TCBCMMT2/3 (2-key and 3-key) |
//! | `aes.json` | FIPS 197 Appendix C; SP 800-38A F.1 (ECB) and F.2 (CBC) |
//! | `cmac.json` | RFC 4493 section 4; SP 800-38B Appendix D (AES-192/256, 3-key and 2-key TDEA) |
//! | `sm4.json` | GB/T 32907-2016 Appendix A examples 1 and 2 (1,000,000 encryptions) |
//!
//! `hkdf.json` (RFC 5869) is exercised by the unit tests of `src/kdf.rs`, whose raw-output
//! function is private to the crate.
//!
//! The DES tables use weak keys such as `0101010101010101`: `SecretKey::from_hex` accepts them
//! by design; weak keys are refused only where a key is imported or generated.

use std::error::Error as StdError;

use hsm_api::Algorithm;
use hsm_sim::crypto::SecretKey;
use hsm_sim::crypto::cipher::{cmac, decrypt_cbc, decrypt_ecb, encrypt_cbc, encrypt_ecb};
use serde::Deserialize;
use serde::de::DeserializeOwned;

type TestResult = Result<(), Box<dyn StdError>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VectorFile<V> {
    source: String,
    vectors: Vec<V>,
}

impl<V: DeserializeOwned> VectorFile<V> {
    /// Parses a vector file and checks that it names its source and holds `expected` vectors.
    fn parse(text: &str, expected: usize) -> Result<VectorFile<V>, Box<dyn StdError>> {
        let file: VectorFile<V> = serde_json::from_str(text)?;
        assert!(
            !file.source.trim().is_empty(),
            "vector file without a source"
        );
        assert_eq!(file.vectors.len(), expected, "vector count");
        Ok(file)
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Ecb,
    Cbc,
}

/// A block-cipher vector: `alg` is absent in `des.json` (always single DES).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CipherVector {
    #[serde(rename = "ref")]
    reference: String,
    alg: Option<String>,
    mode: Mode,
    key: String,
    iv: Option<String>,
    plaintext: String,
    ciphertext: String,
}

/// A TDES vector, with the key bundle as published (`key3 == key1` for two-key TDEA).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TdesVector {
    #[serde(rename = "ref")]
    reference: String,
    alg: String,
    mode: Mode,
    key1: String,
    key2: String,
    key3: String,
    iv: Option<String>,
    plaintext: String,
    ciphertext: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CmacVector {
    #[serde(rename = "ref")]
    reference: String,
    alg: String,
    key: String,
    message: String,
    tlen_bits: usize,
    tag: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sm4Vector {
    #[serde(rename = "ref")]
    reference: String,
    key: String,
    plaintext: String,
    iterations: u32,
    ciphertext: String,
}

/// Encrypts and decrypts one vector in its mode, in both directions.
fn check_cipher(
    reference: &str,
    key: &SecretKey,
    mode: Mode,
    iv: Option<&str>,
    plaintext: &str,
    ciphertext: &str,
) -> TestResult {
    let plaintext = hex::decode(plaintext)?;
    let ciphertext = hex::decode(ciphertext)?;
    let (encrypted, decrypted) = match (mode, iv) {
        (Mode::Ecb, None) => (
            encrypt_ecb(key, &plaintext)?,
            decrypt_ecb(key, &ciphertext)?,
        ),
        (Mode::Cbc, Some(iv)) => {
            let iv = hex::decode(iv)?;
            (
                encrypt_cbc(key, &iv, &plaintext)?,
                decrypt_cbc(key, &iv, &ciphertext)?,
            )
        }
        (mode, iv) => panic!("{reference}: mode {mode:?} with IV {iv:?}"),
    };
    assert_eq!(
        hex::encode(encrypted),
        hex::encode(&ciphertext),
        "{reference}: encryption"
    );
    assert_eq!(
        hex::encode(decrypted),
        hex::encode(&plaintext),
        "{reference}: decryption"
    );
    Ok(())
}

fn check_cipher_file(text: &str, expected: usize, default_alg: Algorithm) -> TestResult {
    let file = VectorFile::<CipherVector>::parse(text, expected)?;
    for v in &file.vectors {
        let alg = match &v.alg {
            Some(name) => Algorithm::from_name(name)?,
            None => default_alg,
        };
        let key = SecretKey::from_hex(alg, &v.key)?;
        check_cipher(
            &v.reference,
            &key,
            v.mode,
            v.iv.as_deref(),
            &v.plaintext,
            &v.ciphertext,
        )?;
    }
    Ok(())
}

#[test]
fn des_fips81_and_sp800_17() -> TestResult {
    // 2 FIPS 81 examples + SP 800-17 Appendix A + 64 (Table B.1) + 56 (Table B.2).
    check_cipher_file(include_str!("vectors/des.json"), 123, Algorithm::Des)
}

#[test]
fn tdes_sp800_67_and_cavp_mmt() -> TestResult {
    // SP 800-67 B.1 + 4 CAVP files of 10 [ENCRYPT] and 10 [DECRYPT] records each.
    let file = VectorFile::<TdesVector>::parse(include_str!("vectors/tdes.json"), 81)?;
    let mut two_key = 0;
    for v in &file.vectors {
        let alg = Algorithm::from_name(&v.alg)?;
        let key_hex = match alg {
            Algorithm::Tdes2 => {
                assert_eq!(v.key3, v.key1, "{}: two-key TDEA has K3 = K1", v.reference);
                two_key += 1;
                format!("{}{}", v.key1, v.key2)
            }
            Algorithm::Tdes3 => format!("{}{}{}", v.key1, v.key2, v.key3),
            other => panic!("{}: {other} in tdes.json", v.reference),
        };
        let key = SecretKey::from_hex(alg, &key_hex)?;
        check_cipher(
            &v.reference,
            &key,
            v.mode,
            v.iv.as_deref(),
            &v.plaintext,
            &v.ciphertext,
        )?;
    }
    assert_eq!(two_key, 40, "two-key TDEA vectors (TECBMMT2 and TCBCMMT2)");
    Ok(())
}

#[test]
fn aes_fips197_and_sp800_38a() -> TestResult {
    // FIPS 197 C.1-C.3 + SP 800-38A F.1 (3 key sizes) + F.2 (3 key sizes).
    check_cipher_file(include_str!("vectors/aes.json"), 9, Algorithm::Aes128)
}

#[test]
fn cmac_rfc4493_and_sp800_38b() -> TestResult {
    // RFC 4493 examples 1-4 + SP 800-38B examples 5-20.
    let file = VectorFile::<CmacVector>::parse(include_str!("vectors/cmac.json"), 20)?;
    for v in &file.vectors {
        let alg = Algorithm::from_name(&v.alg)?;
        let key = SecretKey::from_hex(alg, &v.key)?;
        assert_eq!(v.tlen_bits % 8, 0, "{}: Tlen in whole bytes", v.reference);
        assert!(
            v.tlen_bits / 8 <= alg.block_len(),
            "{}: Tlen at most one block",
            v.reference
        );
        let mut tag = cmac(&key, &hex::decode(&v.message)?)?;
        assert_eq!(tag.len(), alg.block_len(), "{}: full CMAC", v.reference);
        tag.truncate(v.tlen_bits / 8);
        assert_eq!(hex::encode(tag), v.tag.to_lowercase(), "{}", v.reference);
    }
    Ok(())
}

#[test]
fn sm4_gbt32907_appendix_a() -> TestResult {
    let file = VectorFile::<Sm4Vector>::parse(include_str!("vectors/sm4.json"), 2)?;
    assert!(
        file.vectors.iter().any(|v| v.iterations == 1_000_000),
        "example 2 (1,000,000 encryptions) is present"
    );
    for v in &file.vectors {
        let key = SecretKey::from_hex(Algorithm::Sm4, &v.key)?;
        let plaintext = hex::decode(&v.plaintext)?;
        let ciphertext = hex::decode(&v.ciphertext)?;
        // The public API has no in-place block operation, so each step allocates one block.
        let mut block = plaintext.clone();
        for _ in 0..v.iterations {
            block = encrypt_ecb(&key, &block)?;
        }
        assert_eq!(
            hex::encode(&block),
            hex::encode(&ciphertext),
            "{}: encryption",
            v.reference
        );
        for _ in 0..v.iterations {
            block = decrypt_ecb(&key, &block)?;
        }
        assert_eq!(
            hex::encode(&block),
            hex::encode(&plaintext),
            "{}: decryption",
            v.reference
        );
    }
    Ok(())
}
