//! Card secure messaging (DOMAIN.md §5): the MACs a card checks on a WRITE KEY command and the
//! encrypted key field it decrypts.
//!
//! * **PBOC retail MAC** for DES-family card keys: ISO/IEC 9797-1 MAC algorithm 3 (RustCrypto
//!   `retail-mac`) under a double-length key, IV = the card's 8-byte challenge, padding method 2
//!   (`80 00..`, always added); the first 4 bytes are sent. A single-DES key gives plain DES
//!   CBC-MAC (algorithm 1) with the same padding.
//! * **SM4 MAC** for SM4 card keys: SM4-CBC with IV = the 16-byte challenge over the padded data;
//!   the last block is folded to 4 bytes, by XOR of its four 4-byte words ([`MacFold::Xor4`], the
//!   fold seen in a real SSC 3.0 trace) or by keeping its first 4 bytes ([`MacFold::First4`]).
//! * **Encrypted key field**: `ECB(K, Ld ‖ data ‖ 80 00..)` with `Ld` the one-byte length of
//!   `data`. Padding is always added [our choice, as for the MAC].
//!
//! The IV-as-challenge of the retail MAC is the CBC-MAC of the data with the challenge XORed
//! into its first block, which is how it is computed here.

use hsm_api::{Algorithm, Error, MacFold, Result};
use retail_mac::{KeyInit, Mac, RetailMac};
use zeroize::Zeroizing;

use crate::crypto::SecretKey;
use crate::crypto::cipher::BlockCipher;

/// Length of the MAC a card checks.
pub const CARD_MAC_LEN: usize = 4;

/// ISO/IEC 9797-1 padding method 2: `80` then zeros up to a whole block, always added.
pub fn pad_iso9797_m2(data: &[u8], block: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + block);
    out.extend_from_slice(data);
    out.push(0x80);
    while out.len() % block != 0 {
        out.push(0);
    }
    out
}

/// The 4-byte MAC of a secure-messaging command under the card key `key`, with the card's
/// challenge as IV. DES-family keys: PBOC retail MAC (`fold` is ignored); SM4: SM4-CBC MAC folded.
pub fn card_mac(key: &SecretKey, iv: &[u8], data: &[u8], fold: MacFold) -> Result<[u8; 4]> {
    let alg = key.algorithm();
    let block = alg.block_len();
    if iv.len() != block {
        return Err(Error::DataLength {
            field: "challenge (IV)".into(),
            expected: if block == 8 {
                "8 bytes".into()
            } else {
                "16 bytes".into()
            },
            actual: iv.len(),
        });
    }
    let mut padded = pad_iso9797_m2(data, block);
    let last = match alg {
        Algorithm::Tdes2 => {
            padded.iter_mut().zip(iv).for_each(|(d, v)| *d ^= v);
            let mut mac =
                RetailMac::<des::Des>::new_from_slice(key.secret_bytes()).map_err(|_| {
                    Error::KeyLength {
                        alg,
                        expected: 16,
                        actual: key.len(),
                    }
                })?;
            mac.update(&padded);
            mac.finalize().into_bytes().to_vec()
        }
        Algorithm::Des | Algorithm::Sm4 => {
            BlockCipher::new(key)?.encrypt_cbc(iv, &mut padded)?;
            padded.split_off(padded.len() - block)
        }
        other => {
            return Err(Error::Unsupported {
                op: "card secure-messaging MAC".into(),
                alg: other,
            });
        }
    };
    let mut out = [0u8; 4];
    match (alg, fold) {
        (Algorithm::Sm4, MacFold::Xor4) => {
            for word in last.chunks_exact(4) {
                out.iter_mut().zip(word).for_each(|(o, w)| *o ^= w);
            }
        }
        _ => out.copy_from_slice(&last[..4]),
    }
    Ok(out)
}

/// `ECB(key, Ld ‖ data ‖ 80 00..)`, the confidential field of a secure-messaging command.
/// `data` may hold key material; it is only ever read.
pub fn encrypt_key_field(key: &SecretKey, data: &[u8]) -> Result<Vec<u8>> {
    let ld = u8::try_from(data.len()).map_err(|_| Error::DataLength {
        field: "secure-messaging data".into(),
        expected: "at most 255 bytes".into(),
        actual: data.len(),
    })?;
    let mut buf = Zeroizing::new(Vec::with_capacity(data.len() + 17));
    buf.push(ld);
    buf.extend_from_slice(data);
    let mut padded = pad_iso9797_m2(&buf, key.algorithm().block_len());
    let cipher = BlockCipher::new(key)?;
    if let Err(e) = cipher.encrypt_ecb(&mut padded) {
        zeroize::Zeroize::zeroize(&mut padded);
        return Err(e);
    }
    Ok(padded)
}

/// Inverse of [`encrypt_key_field`]: checks `Ld` and the padding, returns `data`.
/// Test-only: the station's card does this, never the HSM, and the result may be a clear key.
#[cfg(test)]
pub(crate) fn decrypt_key_field(key: &SecretKey, field: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(field.to_vec());
    BlockCipher::new(key)?.decrypt_ecb(&mut buf)?;
    let ld = usize::from(*buf.first().ok_or(Error::Verification)?);
    let rest = buf.get(1 + ld..).ok_or(Error::Verification)?;
    match rest.split_first() {
        Some((0x80, zeros)) if zeros.iter().all(|&b| b == 0) => {
            Ok(Zeroizing::new(buf[1..1 + ld].to_vec()))
        }
        _ => Err(Error::Verification),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[derive(serde::Deserialize)]
    struct Vectors {
        card_macs: Vec<MacVector>,
        key_fields: Vec<FieldVector>,
    }

    #[derive(serde::Deserialize)]
    struct MacVector {
        name: String,
        alg: String,
        key: String,
        iv: String,
        data: String,
        fold: String,
        mac: String,
    }

    #[derive(serde::Deserialize)]
    struct FieldVector {
        name: String,
        alg: String,
        key: String,
        data: String,
        field: String,
    }

    fn vectors() -> Vectors {
        serde_json::from_str(include_str!("../../tests/vectors/ssc.json")).unwrap()
    }

    #[test]
    fn published_card_macs() {
        let v = vectors();
        assert_eq!(v.card_macs.len(), 3);
        for t in v.card_macs {
            let key = SecretKey::from_hex(Algorithm::from_name(&t.alg).unwrap(), &t.key).unwrap();
            let fold = MacFold::from_name(&t.fold).unwrap();
            let mac = card_mac(&key, &h(&t.iv), &h(&t.data), fold).unwrap();
            assert_eq!(hex::encode_upper(mac), t.mac, "{}", t.name);
            // A changed challenge or data byte changes the MAC.
            let mut data = h(&t.data);
            data[0] ^= 1;
            assert_ne!(
                hex::encode_upper(card_mac(&key, &h(&t.iv), &data, fold).unwrap()),
                t.mac
            );
        }
    }

    #[test]
    fn published_key_fields() {
        let v = vectors();
        assert_eq!(v.key_fields.len(), 1);
        for t in v.key_fields {
            let key = SecretKey::from_hex(Algorithm::from_name(&t.alg).unwrap(), &t.key).unwrap();
            assert_eq!(
                encrypt_key_field(&key, &h(&t.data)).unwrap(),
                h(&t.field),
                "{}",
                t.name
            );
            assert_eq!(
                *decrypt_key_field(&key, &h(&t.field)).unwrap(),
                h(&t.data),
                "{}",
                t.name
            );
        }
    }

    #[test]
    fn challenge_enters_as_the_cbc_iv() {
        let key =
            SecretKey::from_hex(Algorithm::Tdes2, "0123456789ABCDEFFEDCBA9876543210").unwrap();
        let data = b"Now is the time for all ";
        let zero_iv = card_mac(&key, &[0; 8], data, MacFold::Xor4).unwrap();
        let mut shifted = data.to_vec();
        shifted[..8].iter_mut().for_each(|b| *b ^= 0x5A);
        let with_iv = card_mac(&key, &[0x5A; 8], &shifted, MacFold::Xor4).unwrap();
        assert_eq!(zero_iv, with_iv);
    }

    #[test]
    fn field_tamper_and_sizes() {
        let key = SecretKey::new(Algorithm::Tdes2, &[0x21; 16]).unwrap();
        let mut field = encrypt_key_field(&key, &[1, 2, 3]).unwrap();
        assert_eq!(field.len(), 8);
        field[0] ^= 1;
        assert_eq!(decrypt_key_field(&key, &field), Err(Error::Verification));
        assert!(matches!(
            card_mac(&key, &[0; 16], b"x", MacFold::Xor4),
            Err(Error::DataLength { .. })
        ));
        let aes = SecretKey::new(Algorithm::Aes128, &[0x21; 16]).unwrap();
        assert!(matches!(
            card_mac(&aes, &[0; 16], b"x", MacFold::Xor4),
            Err(Error::Unsupported { .. })
        ));
    }

    #[test]
    fn padding_always_adds_a_byte() {
        assert_eq!(
            pad_iso9797_m2(&[0; 8], 8),
            [&[0u8; 8][..], &[0x80, 0, 0, 0, 0, 0, 0, 0]].concat()
        );
        assert_eq!(pad_iso9797_m2(&[1, 2, 3], 8), [1, 2, 3, 0x80, 0, 0, 0, 0]);
    }
}
