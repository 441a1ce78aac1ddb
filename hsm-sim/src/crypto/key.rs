//! Clear keys, as they exist only inside the HSM boundary.
//!
//! [`SecretKey`] zeroizes its bytes on drop, prints no key material from `Debug`, has no
//! `Serialize`, compares in constant time, and hands its bytes out only through
//! [`SecretKey::secret_bytes`], which only code inside an HSM boundary calls: this crate, and the
//! PKCS#11 backend (`hsm-pkcs11`) to hand a formed or imported key to its token.

use core::fmt;

use hsm_api::{Algorithm, Error, Result};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// A clear key. Lives only inside the HSM boundary.
pub struct SecretKey {
    alg: Algorithm,
    bytes: Zeroizing<Vec<u8>>,
}

impl SecretKey {
    /// A key of `alg` from its bytes; the length must match the algorithm.
    ///
    /// Weak DES keys are *not* refused here (published known-answer tests use them);
    /// call [`SecretKey::check_not_weak`] wherever a key enters or is created.
    pub fn new(alg: Algorithm, bytes: &[u8]) -> Result<SecretKey> {
        if bytes.len() != alg.key_len() {
            return Err(Error::KeyLength {
                alg,
                expected: alg.key_len(),
                actual: bytes.len(),
            });
        }
        Ok(SecretKey {
            alg,
            bytes: Zeroizing::new(bytes.to_vec()),
        })
    }

    /// Takes ownership of `bytes` (no copy left behind), checking the length.
    pub fn from_vec(alg: Algorithm, bytes: Vec<u8>) -> Result<SecretKey> {
        SecretKey::from_zeroizing(alg, Zeroizing::new(bytes))
    }

    fn from_zeroizing(alg: Algorithm, bytes: Zeroizing<Vec<u8>>) -> Result<SecretKey> {
        if bytes.len() != alg.key_len() {
            return Err(Error::KeyLength {
                alg,
                expected: alg.key_len(),
                actual: bytes.len(),
            });
        }
        Ok(SecretKey { alg, bytes })
    }

    /// A key from hexadecimal text (white space ignored). The intermediate buffer is zeroized.
    pub fn from_hex(alg: Algorithm, text: &str) -> Result<SecretKey> {
        SecretKey::from_zeroizing(alg, decode_secret_hex(text, "key")?)
    }

    /// A key from hexadecimal text whose algorithm is a family (`des`, `tdes`, `aes`, `sm4`) and
    /// the decoded length: e.g. 24 bytes of `tdes` is a 3-key TDES key.
    pub fn from_hex_family(family: &str, text: &str) -> Result<SecretKey> {
        let bytes = decode_secret_hex(text, "key")?;
        let alg = Algorithm::from_family_and_len(family, bytes.len())?;
        SecretKey::from_zeroizing(alg, bytes)
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Key length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a key has at least 8 bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The one weak-key check of the HSM, called wherever a key is formed, imported, derived or
    /// generated: refuses
    ///
    /// - an all-zero key of any algorithm (two equal components XOR to one);
    /// - for DES and TDES, with every 8-byte part compared **modulo its parity bits** (the
    ///   cipher ignores them): a weak or semi-weak DES key as a part, and a TDES key whose
    ///   parts collapse it to a weaker cipher — 2-key K1 ≈ K2 (single DES), 3-key K1 ≈ K2 or
    ///   K2 ≈ K3 (single DES by the outer pair).
    ///
    /// `des::weak_key_test` compares the odd-parity forms only, so `0000000000000000` or a TDES
    /// key whose halves differ in parity bits alone pass it; this check does not rely on it.
    pub fn check_not_weak(&self) -> Result<()> {
        if self.bytes.iter().all(|&b| b == 0) {
            return Err(Error::WeakKey);
        }
        if !self.alg.is_des_family() {
            return Ok(());
        }
        let parts: Vec<[u8; 8]> = self
            .bytes
            .chunks_exact(8)
            .map(|part| {
                let mut p = [0u8; 8];
                p.iter_mut()
                    .zip(part)
                    .for_each(|(d, s)| *d = odd_parity(*s));
                p
            })
            .collect();
        if parts.iter().any(|p| WEAK_DES_KEYS.contains(p)) {
            return Err(Error::WeakKey);
        }
        let collapses = match parts.as_slice() {
            [k1, k2] => k1 == k2,
            [k1, k2, k3] => k1 == k2 || k2 == k3,
            _ => false,
        };
        if collapses {
            return Err(Error::WeakKey);
        }
        Ok(())
    }

    /// The one way to reach a key's bytes, for code inside an HSM boundary only (this crate, and
    /// `hsm-pkcs11` handing a key to its token); the service never holds a `SecretKey`.
    pub fn secret_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A copy of the key, which zeroizes on drop as the original does.
    pub fn duplicate(&self) -> SecretKey {
        SecretKey {
            alg: self.alg,
            bytes: Zeroizing::new(self.bytes.to_vec()),
        }
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("alg", &self.alg)
            .field("len", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

impl ConstantTimeEq for SecretKey {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        let same_alg = subtle::Choice::from(u8::from(self.alg == other.alg));
        // `ct_eq` on slices of different lengths is false without looking at the bytes.
        same_alg & self.bytes.as_slice().ct_eq(other.bytes.as_slice())
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for SecretKey {}

/// The weak and semi-weak DES keys (FIPS 74, NIST SP 800-67 §3.3.2) in their odd-parity form.
const WEAK_DES_KEYS: [[u8; 8]; 16] = [
    // Weak.
    [0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01],
    [0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE],
    [0xE0, 0xE0, 0xE0, 0xE0, 0xF1, 0xF1, 0xF1, 0xF1],
    [0x1F, 0x1F, 0x1F, 0x1F, 0x0E, 0x0E, 0x0E, 0x0E],
    // Semi-weak, in pairs.
    [0x01, 0x1F, 0x01, 0x1F, 0x01, 0x0E, 0x01, 0x0E],
    [0x1F, 0x01, 0x1F, 0x01, 0x0E, 0x01, 0x0E, 0x01],
    [0x01, 0xE0, 0x01, 0xE0, 0x01, 0xF1, 0x01, 0xF1],
    [0xE0, 0x01, 0xE0, 0x01, 0xF1, 0x01, 0xF1, 0x01],
    [0x01, 0xFE, 0x01, 0xFE, 0x01, 0xFE, 0x01, 0xFE],
    [0xFE, 0x01, 0xFE, 0x01, 0xFE, 0x01, 0xFE, 0x01],
    [0x1F, 0xE0, 0x1F, 0xE0, 0x0E, 0xF1, 0x0E, 0xF1],
    [0xE0, 0x1F, 0xE0, 0x1F, 0xF1, 0x0E, 0xF1, 0x0E],
    [0x1F, 0xFE, 0x1F, 0xFE, 0x0E, 0xFE, 0x0E, 0xFE],
    [0xFE, 0x1F, 0xFE, 0x1F, 0xFE, 0x0E, 0xFE, 0x0E],
    [0xE0, 0xFE, 0xE0, 0xFE, 0xF1, 0xFE, 0xF1, 0xFE],
    [0xFE, 0xE0, 0xFE, 0xE0, 0xFE, 0xF1, 0xFE, 0xF1],
];

/// `b` with its least significant (parity) bit set so that it has an odd number of ones.
const fn odd_parity(b: u8) -> u8 {
    let high = b & 0xFE;
    if high.count_ones().is_multiple_of(2) {
        high | 1
    } else {
        high
    }
}

/// Decodes hex that may be secret (either case): white space is ignored, nothing is left behind
/// on error. The digits are decoded by `base16ct`, without a branch or a table lookup on their
/// values; only where the white space was can show in timing.
pub(crate) fn decode_secret_hex(text: &str, field: &'static str) -> Result<Zeroizing<Vec<u8>>> {
    let compact: Zeroizing<Vec<u8>> =
        Zeroizing::new(text.bytes().filter(|b| !b.is_ascii_whitespace()).collect());
    let mut bytes = Zeroizing::new(vec![0u8; compact.len() / 2]);
    match base16ct::mixed::decode(&*compact, &mut bytes) {
        Ok(_) => Ok(bytes),
        Err(_) => Err(Error::Hex {
            field: field.into(),
        }),
    }
}

/// Appends `bytes` to `text` as upper-case hex, without a branch or a table lookup on their
/// values (`base16ct`) and through a stack buffer that is wiped. `text` must already have room
/// for them: a secret's text is never reallocated (which would leave a copy behind).
pub fn push_secret_hex(text: &mut String, bytes: &[u8]) {
    let mut buf = Zeroizing::new([0u8; 64]);
    for chunk in bytes.chunks(buf.len() / 2) {
        // The buffer holds two digits per byte of the chunk: `encode_str` cannot fail.
        if let Ok(digits) = base16ct::upper::encode_str(chunk, &mut buf[..]) {
            text.push_str(digits);
        }
    }
}

/// `bytes` as upper-case hex in a buffer wiped on drop ([`push_secret_hex`]).
pub fn secret_hex(bytes: &[u8]) -> Zeroizing<String> {
    let mut text = Zeroizing::new(String::with_capacity(2 * bytes.len()));
    push_secret_hex(&mut text, bytes);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_no_key_bytes() {
        let key =
            SecretKey::from_hex(Algorithm::Tdes2, "0123456789ABCDEFFEDCBA9876543210").unwrap();
        let shown = format!("{key:?} {key:#?}");
        assert!(shown.contains("Tdes2"));
        for needle in [
            "0123",
            "01 23",
            "[1, 35",
            "1, 35, 69",
            "EFFE",
            "efcd",
            "fedc",
        ] {
            assert!(
                !shown.to_lowercase().contains(&needle.to_lowercase()),
                "{shown}"
            );
        }
    }

    #[test]
    fn length_is_checked() {
        let err = SecretKey::new(Algorithm::Sm4, &[0u8; 8]).unwrap_err();
        assert_eq!(
            err,
            Error::KeyLength {
                alg: Algorithm::Sm4,
                expected: 16,
                actual: 8
            }
        );
    }

    #[test]
    fn equality_is_by_value_and_algorithm() {
        let a = SecretKey::new(Algorithm::Aes128, &[7u8; 16]).unwrap();
        let b = SecretKey::new(Algorithm::Aes128, &[7u8; 16]).unwrap();
        let c = SecretKey::new(Algorithm::Sm4, &[7u8; 16]).unwrap();
        let d = SecretKey::new(Algorithm::Aes128, &[8u8; 16]).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    /// Issue 12: every weak form, compared modulo parity, for every algorithm — each of these
    /// passed the check based on `des::weak_key_test` alone (or was not checked at all).
    #[test]
    fn weak_keys_are_refused_modulo_parity_for_every_algorithm() {
        let weak = |alg: Algorithm, hex: &str| {
            let key = SecretKey::from_hex(alg, hex).unwrap();
            assert_eq!(key.check_not_weak(), Err(Error::WeakKey), "{alg} {hex}");
        };
        // All zeros, of every algorithm: what two equal components give.
        for alg in Algorithm::ALL {
            weak(alg, &"00".repeat(alg.key_len()));
        }
        // Weak and semi-weak DES keys with their parity bits cleared or flipped.
        weak(Algorithm::Des, "0000000000000000");
        weak(Algorithm::Des, "FFFFFFFFFFFFFFFF");
        weak(Algorithm::Des, "E1E1E1E1F0F0F0F0");
        weak(Algorithm::Des, "001E001E000E000E");
        // A semi-weak DES key as one part of a TDES key.
        weak(Algorithm::Tdes2, "01FE01FE01FE01FE0123456789ABCDEF");
        // TDES whose parts are equal but for parity bits.
        weak(Algorithm::Tdes2, "0123456789ABCDEF0022446688AACCEE");
        weak(
            Algorithm::Tdes3,
            "0123456789ABCDEF0022446688AACCEEFEDCBA9876543210",
        );
        weak(
            Algorithm::Tdes3,
            "FEDCBA98765432100123456789ABCDEF0022446688AACCEE",
        );
        // Not weak: distinct parts, a 3-key TDES key with K1 = K3 (keying option 2), AES.
        for (alg, hex) in [
            (Algorithm::Tdes2, "0123456789ABCDEFFEDCBA9876543210"),
            (Algorithm::Tdes2, "11111111111111112222222222222222"),
            (
                Algorithm::Tdes3,
                "0123456789ABCDEFFEDCBA98765432100123456789ABCDEF",
            ),
            (Algorithm::Aes128, "000102030405060708090A0B0C0D0E0F"),
            (Algorithm::Sm4, "0123456789ABCDEFFEDCBA9876543210"),
        ] {
            let key = SecretKey::from_hex(alg, hex).unwrap();
            assert_eq!(key.check_not_weak(), Ok(()), "{alg} {hex}");
        }
    }

    #[test]
    fn weak_des_keys_are_refused() {
        let weak = SecretKey::from_hex(Algorithm::Des, "0101010101010101").unwrap();
        assert_eq!(weak.check_not_weak(), Err(Error::WeakKey));
        let repeated =
            SecretKey::from_hex(Algorithm::Tdes2, "0123456789ABCDEF0123456789ABCDEF").unwrap();
        assert_eq!(repeated.check_not_weak(), Err(Error::WeakKey));
        let fine =
            SecretKey::from_hex(Algorithm::Tdes2, "0123456789ABCDEFFEDCBA9876543210").unwrap();
        assert_eq!(fine.check_not_weak(), Ok(()));
    }

    #[test]
    fn family_and_length_pick_the_algorithm() {
        let k = SecretKey::from_hex_family("tdes", &"11".repeat(24)).unwrap();
        assert_eq!(k.algorithm(), Algorithm::Tdes3);
        let k = SecretKey::from_hex_family("aes", &"11".repeat(32)).unwrap();
        assert_eq!(k.algorithm(), Algorithm::Aes256);
        assert_eq!(
            SecretKey::from_hex_family("tdes", "123").unwrap_err(),
            Error::Hex {
                field: "key".into()
            }
        );
        assert!(matches!(
            SecretKey::from_hex_family("sm4", &"11".repeat(24)),
            Err(Error::KeyLength {
                alg: Algorithm::Sm4,
                expected: 16,
                actual: 24
            })
        ));
        assert_eq!(
            SecretKey::from_hex_family("rsa", "1111").unwrap_err(),
            Error::UnknownAlgorithm("rsa".to_owned())
        );
    }

    #[test]
    fn bad_hex_names_the_field() {
        assert_eq!(
            SecretKey::from_hex(Algorithm::Des, "01234567890ABCDEZ").unwrap_err(),
            Error::Hex {
                field: "key".into()
            }
        );
    }

    #[test]
    fn secret_hex_is_the_hex_of_every_byte_value_and_decodes_back_in_either_case() {
        // All 256 values, and more than one 32-byte chunk of the encoder's buffer.
        let bytes: Vec<u8> = (0..=255u8).chain(0..=40).collect();
        let text = secret_hex(&bytes);
        assert_eq!(*text, hex::encode_upper(&bytes));
        assert_eq!(*decode_secret_hex(&text, "x").unwrap(), bytes);
        let lower = text.to_ascii_lowercase();
        assert_eq!(*decode_secret_hex(&lower, "x").unwrap(), bytes);
        let spaced = "0a B1\n c2\td3 ";
        assert_eq!(
            *decode_secret_hex(spaced, "x").unwrap(),
            [0x0A, 0xB1, 0xC2, 0xD3]
        );
        assert!(decode_secret_hex("", "x").unwrap().is_empty());
    }

    #[test]
    fn secret_hex_refuses_odd_lengths_and_non_hex_digits() {
        let refused = Error::Hex {
            field: "share".into(),
        };
        for bad in ["0", "ABC", "0G", "G0", "0x12", "-1", "AB\u{e9}"] {
            assert_eq!(
                decode_secret_hex(bad, "share").unwrap_err(),
                refused,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn push_secret_hex_never_reallocates_a_text_with_room() {
        let mut text = String::with_capacity(4 + 2 * 100);
        text.push_str("ab1-");
        let (ptr, capacity) = (text.as_ptr(), text.capacity());
        push_secret_hex(&mut text, &[0x5A; 100]);
        assert_eq!((text.as_ptr(), text.capacity()), (ptr, capacity));
        assert_eq!(&text[4..], "5A".repeat(100));
    }
}
