//! Wrapping and unwrapping: the key block's MAC and encryption under the binding keys, and the
//! checks of strength and check values around them.

use hsm_api::{Algorithm, Error, Kcv, KeyBlockVersion, Result, push_upper_hex};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::binding::{BindingKeys, check_kbpk, kbpk_error};
use super::header::{CheckValues, KeyBlockAlgorithm, KeyBlockHeader};
use super::parse::parse;
use crate::crypto::SecretKey;
use crate::crypto::cipher::BlockCipher;
use crate::crypto::kcv::KcvCheck;
use crate::crypto::random::padding_bytes;

/// Wraps `key` under `kbpk` in a key block with `header`, padding the key with random bytes so
/// that its length is hidden (see the module docs).
pub fn wrap(kbpk: &SecretKey, header: &KeyBlockHeader, key: &SecretKey) -> Result<String> {
    check_kbpk(header.version, kbpk)?;
    wrap_bound(
        kbpk,
        &BindingKeys::derive(kbpk, header.version)?,
        header,
        key,
    )
}

/// [`wrap`] with the binding keys of `kbpk` already derived (once per transport key).
pub fn wrap_bound(
    kbpk: &SecretKey,
    binding: &BindingKeys,
    header: &KeyBlockHeader,
    key: &SecretKey,
) -> Result<String> {
    wrap_randomly_padded(kbpk, binding, header, key, None)
}

/// [`wrap_bound`] for the export path, which has just computed `key_kcv` of `key` itself (for
/// the header's `KC` block and for its answer: `policy::export_block_with`): a `KC` equal to it
/// is not computed a second time. Any other `KC` (or `KP`) is checked as [`wrap`] checks it.
/// Crate-private: the saving rests on `key_kcv` being computed from `key`, which only the
/// simulator's own export path promises.
pub(crate) fn wrap_bound_with_kcv(
    kbpk: &SecretKey,
    binding: &BindingKeys,
    header: &KeyBlockHeader,
    key: &SecretKey,
    key_kcv: &Kcv,
) -> Result<String> {
    wrap_randomly_padded(kbpk, binding, header, key, Some(key_kcv))
}

fn wrap_randomly_padded(
    kbpk: &SecretKey,
    binding: &BindingKeys,
    header: &KeyBlockHeader,
    key: &SecretKey,
    key_kcv: Option<&Kcv>,
) -> Result<String> {
    let block_len = header.version.block_len();
    let hidden = key.len().max(header.algorithm.hidden_key_len());
    let clear_len = (2 + hidden).div_ceil(block_len) * block_len;
    let padding = padding_bytes(clear_len - 2 - key.len())?;
    wrap_with_padding(kbpk, binding, header, key, &padding, key_kcv)
}

/// [`wrap`] with the padding given, for known-answer tests: the clear key data is the key's
/// length in bits (2 bytes) ‖ key ‖ `padding`, and must fill whole cipher blocks.
pub(super) fn wrap_with_padding(
    kbpk: &SecretKey,
    binding: &BindingKeys,
    header: &KeyBlockHeader,
    key: &SecretKey,
    padding: &[u8],
    key_kcv: Option<&Kcv>,
) -> Result<String> {
    let version = header.version;
    check_kbpk(version, kbpk)?;
    if binding.version() != version {
        return Err(kbpk_error(version));
    }
    let check_values = header.validated()?;
    if header.algorithm != KeyBlockAlgorithm::of(key.algorithm()) {
        return Err(Error::KeyBlockHeader {
            field: "algorithm".into(),
        });
    }
    check_strength(kbpk, key)?;
    check_check_values(&check_values, kbpk, key, key_kcv)?;

    let clear_len = 2 + key.len() + padding.len();
    if !clear_len.is_multiple_of(version.block_len()) {
        return Err(Error::DataLength {
            field: "key block padding".into(),
            expected: "enough bytes to fill the last cipher block".into(),
            actual: padding.len(),
        });
    }
    let bits = u16::try_from(key.len() * 8).map_err(|_| Error::KeyBlockKeyLength)?;
    let mut clear = Zeroizing::new(Vec::with_capacity(clear_len));
    clear.extend_from_slice(&bits.to_be_bytes());
    clear.extend_from_slice(key.secret_bytes());
    clear.extend_from_slice(padding);

    let header_text = header.encode(clear_len)?;
    seal(binding, &header_text, clear)
}

/// MACs and encrypts `clear` (whole cipher blocks, encrypted in place) under `kbpk` behind
/// `header_text`, which is taken as it is.
pub(super) fn seal(
    binding: &BindingKeys,
    header_text: &str,
    mut clear: Zeroizing<Vec<u8>>,
) -> Result<String> {
    let version = binding.version();
    let mac = block_mac(binding.kbak(), version, header_text.as_bytes(), &clear);
    binding.kbek().encrypt_cbc(&mac, &mut clear)?;
    let mut block = String::with_capacity(header_text.len() + 2 * (clear.len() + mac.len()));
    block.push_str(header_text);
    push_upper_hex(&mut block, &clear);
    push_upper_hex(&mut block, &mac);
    Ok(block)
}

/// Checks, decrypts and authenticates `block` under `kbpk`, and returns its header (without
/// `PB`) and key. The MAC is verified in constant time before anything in the decrypted data
/// is looked at.
pub fn unwrap(kbpk: &SecretKey, block: &str) -> Result<(KeyBlockHeader, SecretKey)> {
    unwrap_bound(kbpk, None, block)
}

/// [`unwrap`] with the binding keys of `kbpk` already derived (used if they are of the block's
/// version; derived for this block otherwise).
pub fn unwrap_bound(
    kbpk: &SecretKey,
    binding: Option<&BindingKeys>,
    block: &str,
) -> Result<(KeyBlockHeader, SecretKey)> {
    let (header, clear) = open_bound(kbpk, binding, block)?;
    let key = extract_key(header.algorithm, &clear)?;
    check_strength(kbpk, &key)?;
    check_check_values(&header.check_values()?, kbpk, &key, None)?;
    Ok((header, key))
}

/// Parses `block`, decrypts it and verifies its MAC (in constant time, before anything in the
/// decrypted data is looked at): its header and clear key data.
fn open_bound(
    kbpk: &SecretKey,
    binding: Option<&BindingKeys>,
    block: &str,
) -> Result<(KeyBlockHeader, Zeroizing<Vec<u8>>)> {
    let parsed = parse(block)?;
    let version = parsed.header.version;
    let derived;
    let binding = match binding {
        Some(b) if b.version() == version => b,
        _ => {
            derived = BindingKeys::derive(kbpk, version)?;
            &derived
        }
    };

    let mut clear = Zeroizing::new(parsed.encrypted);
    binding.kbek().decrypt_cbc(&parsed.mac, &mut clear)?;
    let expected = block_mac(binding.kbak(), version, parsed.header_text, &clear);
    if !bool::from(expected.as_slice().ct_eq(parsed.mac.as_slice())) {
        return Err(Error::KeyBlockMac);
    }
    Ok((parsed.header, clear))
}

/// A block of the HSM's own (not a key: e.g. the backup shares of a restore kept between two
/// custodians) under `kbpk`: `data` in place of the key, as the key would be (its length in
/// bits, random padding to a whole cipher block), MACed and encrypted behind `header`, whose
/// usage the caller chooses so that no key operation reads it.
pub fn wrap_data_bound(
    binding: &BindingKeys,
    header: &KeyBlockHeader,
    data: &[u8],
) -> Result<String> {
    if binding.version() != header.version {
        return Err(kbpk_error(header.version));
    }
    header.validate()?;
    let block_len = header.version.block_len();
    let clear_len = (2 + data.len()).div_ceil(block_len) * block_len;
    let bits = u16::try_from(data.len() * 8).map_err(|_| Error::KeyBlockKeyLength)?;
    let mut clear = Zeroizing::new(Vec::with_capacity(clear_len));
    clear.extend_from_slice(&bits.to_be_bytes());
    clear.extend_from_slice(data);
    clear.extend_from_slice(&padding_bytes(clear_len - 2 - data.len())?);
    let header_text = header.encode(clear_len)?;
    seal(binding, &header_text, clear)
}

/// The header and data of a block of [`wrap_data_bound`], its MAC verified; what the header
/// says is the caller's to check.
pub fn unwrap_data_bound(
    kbpk: &SecretKey,
    binding: &BindingKeys,
    block: &str,
) -> Result<(KeyBlockHeader, Zeroizing<Vec<u8>>)> {
    let (header, clear) = open_bound(kbpk, Some(binding), block)?;
    let bits = clear
        .get(..2)
        .and_then(|l| <[u8; 2]>::try_from(l).ok())
        .map(u16::from_be_bytes)
        .ok_or(Error::KeyBlockKeyLength)?;
    if !bits.is_multiple_of(8) {
        return Err(Error::KeyBlockKeyLength);
    }
    let data = clear
        .get(2..2 + usize::from(bits / 8))
        .ok_or(Error::KeyBlockKeyLength)?;
    Ok((header, Zeroizing::new(data.to_vec())))
}

/// CMAC under the KBAK of header ‖ clear key data, `mac_len` bytes of it.
fn block_mac(kbak: &BlockCipher, version: KeyBlockVersion, header: &[u8], clear: &[u8]) -> Vec<u8> {
    let mut mac = kbak.cmac_of_parts(&[header, clear]);
    mac.truncate(version.mac_len());
    mac
}

/// The key in authenticated clear key data: 2-byte length in bits ‖ key ‖ padding.
fn extract_key(algorithm: KeyBlockAlgorithm, clear: &[u8]) -> Result<SecretKey> {
    let bits = clear
        .get(..2)
        .and_then(|l| <[u8; 2]>::try_from(l).ok())
        .map(u16::from_be_bytes)
        .ok_or(Error::KeyBlockKeyLength)?;
    if !bits.is_multiple_of(8) {
        return Err(Error::KeyBlockKeyLength);
    }
    let len = usize::from(bits / 8);
    let bytes = clear.get(2..2 + len).ok_or(Error::KeyBlockKeyLength)?;
    // Liberal on unwrap: single DES under `T` too (see `unwrap_key_algorithm`).
    let alg = algorithm
        .unwrap_key_algorithm(len)
        .ok_or(Error::KeyBlockKeyLength)?;
    SecretKey::new(alg, bytes)
}

/// Security strength in bits (NIST SP 800-57 part 1; SM4 as AES-128).
pub(super) const fn strength(alg: Algorithm) -> u16 {
    match alg {
        Algorithm::Des => 56,
        Algorithm::Tdes2 => 80,
        Algorithm::Tdes3 => 112,
        Algorithm::Aes128 | Algorithm::Sm4 => 128,
        Algorithm::Aes192 => 192,
        Algorithm::Aes256 => 256,
    }
}

/// Refuses a KBPK weaker than the key it protects.
fn check_strength(kbpk: &SecretKey, key: &SecretKey) -> Result<()> {
    if strength(key.algorithm()) > strength(kbpk.algorithm()) {
        return Err(Error::KeyBlockKbpkStrength {
            kbpk: kbpk.algorithm(),
            key: key.algorithm(),
        });
    }
    Ok(())
}

/// Checks any `KC` against `key` and any `KP` against `kbpk`; a `KC` equal to `key_kcv` (the
/// caller's own computation of `key`'s check value) is taken as checked.
fn check_check_values(
    check_values: &CheckValues,
    kbpk: &SecretKey,
    key: &SecretKey,
    key_kcv: Option<&Kcv>,
) -> Result<()> {
    for (is_kc, value) in &check_values.values {
        let (id, checked) = if *is_kc { ("KC", key) } else { ("KP", kbpk) };
        if *is_kc && key_kcv == Some(value) {
            continue;
        }
        if !value.matches(checked)? {
            return Err(Error::KeyBlockCheckValue { id: id.into() });
        }
    }
    Ok(())
}
