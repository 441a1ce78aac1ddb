//! Known-answer self-tests of every algorithm the HSM uses.
//!
//! [`run`] is called at start-up and on demand; until it has passed, and after it has failed,
//! the HSM outputs nothing. Each check encrypts *and* decrypts (or recomputes) a published answer,
//! so a fault in either direction is caught. The answers are compiled in: a self-test that read
//! its answers from disk would test the disk.

use hsm_api::{Algorithm, Dispersion, Error, Factor, MacFold, Result};

use crate::crypto::cipher::{self, BlockCipher};
use crate::crypto::{SecretKey, diversify, kcv, kdf, mac, registry};

/// One known-answer check: a name for the report and a function that says whether it passed.
pub(crate) struct Check {
    pub(crate) name: &'static str,
    pub(crate) run: fn() -> Result<bool>,
}

/// The checks, one or more per algorithm.
pub(crate) const CHECKS: &[Check] = &[
    Check {
        name: "DES-ECB (FIPS 81)",
        run: des_ecb,
    },
    Check {
        name: "TDES-3key-ECB (SP 800-67)",
        run: tdes3_ecb,
    },
    Check {
        name: "AES-128-ECB (FIPS 197 C.1)",
        run: aes128_ecb,
    },
    Check {
        name: "AES-192-ECB (FIPS 197 C.2)",
        run: aes192_ecb,
    },
    Check {
        name: "AES-256-ECB (FIPS 197 C.3)",
        run: aes256_ecb,
    },
    Check {
        name: "AES-128-CBC (SP 800-38A F.2.1)",
        run: aes128_cbc,
    },
    Check {
        name: "SM4-ECB (GB/T 32907 A.1)",
        run: sm4_ecb,
    },
    Check {
        name: "AES-CMAC (RFC 4493 example 2)",
        run: aes_cmac,
    },
    Check {
        name: "HKDF-SHA256 (RFC 5869 A.1)",
        run: hkdf_sha256,
    },
    Check {
        name: "TDES-2key dispersion and KCV (SSC chain)",
        run: tdes_dispersion,
    },
    Check {
        name: "SM4 dispersion (SSC chain)",
        run: sm4_dispersion,
    },
    Check {
        name: "PBOC retail MAC (ISO 9797-1 alg. 3)",
        run: retail_mac,
    },
    Check {
        name: "SM4 secure-messaging MAC and key field (SSC 3.0 trace)",
        run: sm4_secure_messaging,
    },
    Check {
        name: "HMAC-SHA256 (RFC 4231 test case 2)",
        run: hmac_sha256,
    },
    Check {
        name: "AES-256-GCM (GCM specification test case 16)",
        run: aes256_gcm,
    },
];

fn hmac_sha256() -> Result<bool> {
    let mac = registry::hmac_sha256(b"Jefe", &[b"what do ya want for nothing?".as_slice()])?;
    Ok(mac.to_vec() == h("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")?)
}

fn aes256_gcm() -> Result<bool> {
    let key = h("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")?;
    let iv = h("cafebabefacedbaddecaf888")?;
    let aad = h("feedfacedeadbeeffeedfacedeadbeefabaddad2")?;
    let pt = h(concat!(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72",
        "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
    ))?;
    let ct = h(concat!(
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa",
        "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
        "76fc6ece0f4e1768cddf8853bb2d551b"
    ))?;
    Ok(registry::gcm_seal(&key, &iv, &aad, &pt)? == ct
        && registry::gcm_open(&key, &iv, &aad, &ct)? == pt)
}

/// Runs every check; the error names the first that failed.
pub fn run() -> Result<()> {
    run_checks(CHECKS)
}

/// The names of the checks [`run`] performs, for status reports.
pub fn check_names() -> impl Iterator<Item = &'static str> {
    CHECKS.iter().map(|c| c.name)
}

pub(crate) fn run_checks(checks: &[Check]) -> Result<()> {
    for check in checks {
        if !matches!((check.run)(), Ok(true)) {
            return Err(Error::SelfTest(check.name.into()));
        }
    }
    Ok(())
}

fn h(s: &str) -> Result<Vec<u8>> {
    hex::decode(s).map_err(|_| Error::SelfTest("malformed compiled-in answer".into()))
}

/// Encrypts `pt` to `ct` under `key` in ECB, and back.
fn ecb(alg: Algorithm, key: &str, pt: &str, ct: &str) -> Result<bool> {
    let key = SecretKey::from_hex(alg, key)?;
    let (pt, ct) = (h(pt)?, h(ct)?);
    Ok(cipher::encrypt_ecb(&key, &pt)? == ct && cipher::decrypt_ecb(&key, &ct)? == pt)
}

fn des_ecb() -> Result<bool> {
    ecb(
        Algorithm::Des,
        "0123456789ABCDEF",
        "4E6F772069732074",
        "3FA40E8A984D4815",
    )
}

fn tdes3_ecb() -> Result<bool> {
    ecb(
        Algorithm::Tdes3,
        "0123456789ABCDEF23456789ABCDEF01456789ABCDEF0123",
        "5468652071756663",
        "A826FD8CE53B855F",
    )
}

fn aes128_ecb() -> Result<bool> {
    ecb(
        Algorithm::Aes128,
        "000102030405060708090A0B0C0D0E0F",
        "00112233445566778899AABBCCDDEEFF",
        "69C4E0D86A7B0430D8CDB78070B4C55A",
    )
}

fn aes192_ecb() -> Result<bool> {
    ecb(
        Algorithm::Aes192,
        "000102030405060708090A0B0C0D0E0F1011121314151617",
        "00112233445566778899AABBCCDDEEFF",
        "DDA97CA4864CDFE06EAF70A0EC0D7191",
    )
}

fn aes256_ecb() -> Result<bool> {
    ecb(
        Algorithm::Aes256,
        "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
        "00112233445566778899AABBCCDDEEFF",
        "8EA2B7CA516745BFEAFC49904B496089",
    )
}

fn aes128_cbc() -> Result<bool> {
    let key = SecretKey::from_hex(Algorithm::Aes128, "2B7E151628AED2A6ABF7158809CF4F3C")?;
    let iv = h("000102030405060708090A0B0C0D0E0F")?;
    let pt = h("6BC1BEE22E409F96E93D7E117393172AAE2D8A571E03AC9C9EB76FAC45AF8E51")?;
    let ct = h("7649ABAC8119B246CEE98E9B12E9197D5086CB9B507219EE95DB113A917678B2")?;
    Ok(cipher::encrypt_cbc(&key, &iv, &pt)? == ct && cipher::decrypt_cbc(&key, &iv, &ct)? == pt)
}

fn sm4_ecb() -> Result<bool> {
    ecb(
        Algorithm::Sm4,
        "0123456789ABCDEFFEDCBA9876543210",
        "0123456789ABCDEFFEDCBA9876543210",
        "681EDF34D206965E86B3E94F536E4246",
    )
}

fn aes_cmac() -> Result<bool> {
    let key = SecretKey::from_hex(Algorithm::Aes128, "2B7E151628AED2A6ABF7158809CF4F3C")?;
    let tag = BlockCipher::new(&key)?.cmac(&h("6BC1BEE22E409F96E93D7E117393172A")?);
    Ok(tag == h("070A16B46B4D4144F79BDD9DD04A287C")?)
}

fn hkdf_sha256() -> Result<bool> {
    let okm = kdf::hkdf_sha256_bytes(
        &[0x0b; 22],
        &h("000102030405060708090A0B0C")?,
        &h("F0F1F2F3F4F5F6F7F8F9")?,
        42,
    )?;
    Ok(*okm
        == h(
            "3CB25F25FAACD57A90434F64D0362F2A2D2D0A90CF1A5A4C5DB02D56ECC4C5BF34007208D5B887185865",
        )?)
}

fn tdes_dispersion() -> Result<bool> {
    let root = SecretKey::from_hex(Algorithm::Tdes2, "11111111111111112222222222222222")?;
    let factors = [
        Factor::from_hex("3434303030307368")?,
        Factor::from_hex("3434303130307378")?,
        Factor::from_hex("86843202AD932A48")?,
    ];
    let card = diversify::diversify_chain(&root, Dispersion::PbocTdes, &factors)?;
    let expected = SecretKey::from_hex(Algorithm::Tdes2, "863CB6B83CB1EFABE9C27E9737E47BD6")?;
    Ok(card == expected && kcv::compute_default(&card)?.to_hex() == "32CD7C")
}

fn sm4_dispersion() -> Result<bool> {
    let root = SecretKey::from_hex(Algorithm::Sm4, "0123456789ABCDEFFEDCBA9876543210")?;
    let province = diversify::diversify(
        &root,
        Dispersion::Sm4Complement,
        &Factor::from_hex("3434303030307368")?,
    )?;
    Ok(province == SecretKey::from_hex(Algorithm::Sm4, "04400C4F07B373EC52C1696A98252A16")?)
}

fn retail_mac() -> Result<bool> {
    let key = SecretKey::from_hex(Algorithm::Tdes2, "0123456789ABCDEFFEDCBA9876543210")?;
    let mac = mac::card_mac(
        &key,
        &[0; 8],
        &h("8424000008FFFF1234567890123456")?,
        MacFold::First4,
    )?;
    Ok(mac[..] == h("E07B8DF1")?[..])
}

fn sm4_secure_messaging() -> Result<bool> {
    let key = SecretKey::from_hex(Algorithm::Sm4, "4D59306C7397E06DE3CD82A14A926FBA")?;
    let field = mac::encrypt_key_field(&key, &h("72923074")?)?;
    let mut data = h("845E010014")?;
    data.extend_from_slice(&field);
    let tag = mac::card_mac(
        &key,
        &h("84B7B9199A29A245B2ADE3E80BE4EAF3")?,
        &data,
        MacFold::Xor4,
    )?;
    Ok(field == h("91A41964F0736EB6F6003DD1934FFE11")? && tag[..] == h("E48CEFB3")?[..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_checks_pass() {
        assert_eq!(run(), Ok(()));
        assert_eq!(check_names().count(), CHECKS.len());
    }

    #[test]
    fn a_failing_check_is_named() {
        fn wrong() -> Result<bool> {
            ecb(
                Algorithm::Des,
                "0123456789ABCDEF",
                "4E6F772069732074",
                "3FA40E8A984D4816",
            )
        }
        fn erroring() -> Result<bool> {
            Err(Error::Random)
        }
        let checks = [
            Check {
                name: "good",
                run: des_ecb,
            },
            Check {
                name: "bad answer",
                run: wrong,
            },
        ];
        assert_eq!(
            run_checks(&checks),
            Err(Error::SelfTest("bad answer".into()))
        );
        let checks = [Check {
            name: "error",
            run: erroring,
        }];
        assert_eq!(run_checks(&checks), Err(Error::SelfTest("error".into())));
    }
}
