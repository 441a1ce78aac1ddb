//! The binding keys of a key block: which KBPK a version takes, and the KBEK (encryption) and
//! KBAK (authentication) keys derived from it by the key derivation binding method (see the
//! derivation data in the module docs of [`super`]).

use hsm_api::{Algorithm, Error, KeyBlockVersion, Result};
use zeroize::Zeroizing;

use crate::crypto::SecretKey;
use crate::crypto::cipher::BlockCipher;

/// Refuses a KBPK of the wrong algorithm for `version`.
pub(super) fn check_kbpk(version: KeyBlockVersion, kbpk: &SecretKey) -> Result<()> {
    let alg = kbpk.algorithm();
    let ok = match version {
        KeyBlockVersion::B => matches!(alg, Algorithm::Tdes2 | Algorithm::Tdes3),
        KeyBlockVersion::D => alg.is_aes(),
    };
    if ok { Ok(()) } else { Err(kbpk_error(version)) }
}

pub(super) fn kbpk_error(version: KeyBlockVersion) -> Error {
    Error::KeyBlockKbpk {
        version: version.as_char(),
        expected: match version {
            KeyBlockVersion::B => "2- or 3-key TDES".into(),
            KeyBlockVersion::D => "AES".into(),
        },
    }
}

/// The KBEK and KBAK of one KBPK for one version: derived once per transport key (the HSM keeps
/// them with the unwrapped KBPK in its hot-key cache, and with the LMK), used for every block
/// under it. Both are kept as key schedules (`BlockCipher`: zeroized on drop, RustCrypto's
/// `zeroize` feature), so a block costs no key expansion. No `Debug` of the keys.
pub struct BindingKeys {
    version: KeyBlockVersion,
    kbek: BlockCipher,
    kbak: BlockCipher,
}

impl core::fmt::Debug for BindingKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BindingKeys")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl BindingKeys {
    /// The binding keys of `kbpk` for blocks of `version` ([`Error::KeyBlockKbpk`] for a KBPK
    /// of the wrong algorithm).
    pub fn derive(kbpk: &SecretKey, version: KeyBlockVersion) -> Result<BindingKeys> {
        let (kbek, kbak) = derive_keys(kbpk, version)?;
        Ok(BindingKeys {
            version,
            kbek: BlockCipher::new(&kbek)?,
            kbak: BlockCipher::new(&kbak)?,
        })
    }

    /// The version of the blocks these keys protect.
    pub fn version(&self) -> KeyBlockVersion {
        self.version
    }

    /// The KBEK's key schedule.
    pub(super) fn kbek(&self) -> &BlockCipher {
        &self.kbek
    }

    /// The KBAK's key schedule.
    pub(super) fn kbak(&self) -> &BlockCipher {
        &self.kbak
    }
}

/// KBEK and KBAK of `kbpk` for a block of `version` (see the module docs); each has the KBPK's
/// algorithm and length.
pub(super) fn derive_keys(
    kbpk: &SecretKey,
    version: KeyBlockVersion,
) -> Result<(SecretKey, SecretKey)> {
    check_kbpk(version, kbpk)?;
    let alg = kbpk.algorithm();
    // Algorithm indicator, derived key length in bits, number of CMAC calls.
    let (algorithm_indicator, bits, calls): (u16, u16, u8) = match alg {
        Algorithm::Tdes2 => (0x0000, 0x0080, 2),
        Algorithm::Tdes3 => (0x0001, 0x00C0, 3),
        Algorithm::Aes128 => (0x0002, 0x0080, 1),
        Algorithm::Aes192 => (0x0003, 0x00C0, 2),
        Algorithm::Aes256 => (0x0004, 0x0100, 2),
        Algorithm::Des | Algorithm::Sm4 => return Err(kbpk_error(version)),
    };
    let cipher = BlockCipher::new(kbpk)?;
    let derive = |usage: u16| -> Result<SecretKey> {
        let [u0, u1] = usage.to_be_bytes();
        let [a0, a1] = algorithm_indicator.to_be_bytes();
        let [l0, l1] = bits.to_be_bytes();
        let mut material = Zeroizing::new(Vec::with_capacity(usize::from(calls) * alg.block_len()));
        for counter in 1..=calls {
            let data = [counter, u0, u1, 0x00, a0, a1, l0, l1];
            material.extend_from_slice(&Zeroizing::new(cipher.cmac(&data)));
        }
        // AES-192 takes 24 of the 32 bytes; the rest is zeroized with the buffer.
        material.truncate(alg.key_len());
        SecretKey::new(alg, &material)
    };
    Ok((derive(0x0000)?, derive(0x0001)?))
}
