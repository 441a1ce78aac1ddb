//! The registry's personal data at rest (issue 9): index hashes and sealed fields. RustCrypto
//! only: `hmac` over `sha2` (HMAC-SHA256) and `aes-gcm` (AES-256-GCM).
//!
//! - **Index hash** of `value` in `domain`: `HMAC-SHA256(key, domain ‖ 0x00 ‖ value)` under a
//!   [`hsm_api::KeyUsage::RegistryIndex`] key (32 bytes). The domain (`ssn`, `card-number`, …,
//!   checked by [`hsm_api::check_index_domain`], so it holds no 0x00) keeps one field's hashes
//!   apart from another's.
//! - **Sealed field**: `nonce ‖ AES-256-GCM(key, nonce, aad, value) ‖ tag` under a
//!   [`hsm_api::KeyUsage::RegistryData`] key, a fresh random 96-bit nonce per field (NIST SP
//!   800-38D §8.2.2: at most 2³² fields per key), the caller's binding as associated data.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use hsm_api::{
    ClearField, Error, INDEX_HASH_LEN, Result, SEAL_OVERHEAD, SealedField, check_index_domain,
    check_registry_items,
};
use sha2::Sha256;

use super::SecretKey;
use super::random::random_bytes;

const NONCE_LEN: usize = 12;

/// HMAC-SHA256 of `parts` (concatenated) under `key`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Result<[u8; INDEX_HASH_LEN]> {
    let mut mac =
        <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key).map_err(|_| Error::DataLength {
            field: "HMAC key".into(),
            expected: "non-empty".into(),
            actual: 0,
        })?;
    for part in parts {
        mac.update(part);
    }
    Ok(mac.finalize().into_bytes().into())
}

fn gcm(key: &[u8]) -> Result<Aes256Gcm> {
    Aes256Gcm::new_from_slice(key).map_err(|_| Error::KeyLength {
        alg: hsm_api::Algorithm::Aes256,
        expected: 32,
        actual: key.len(),
    })
}

/// AES-256-GCM of `value` with `nonce` and `aad`: `ciphertext ‖ tag`.
pub(crate) fn gcm_seal(key: &[u8], nonce: &[u8], aad: &[u8], value: &[u8]) -> Result<Vec<u8>> {
    let nonce = Nonce::try_from(nonce).map_err(|_| Error::Verification)?;
    gcm(key)?
        .encrypt(&nonce, Payload { msg: value, aad })
        .map_err(|_| Error::Verification)
}

/// The value of `ciphertext ‖ tag` sealed with `nonce` and `aad`, or [`Error::Verification`].
pub(crate) fn gcm_open(key: &[u8], nonce: &[u8], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
    let nonce = Nonce::try_from(nonce).map_err(|_| Error::Verification)?;
    gcm(key)?
        .decrypt(&nonce, Payload { msg: sealed, aad })
        .map_err(|_| Error::Verification)
}

/// The index hashes of `values` in `domain` under `key`, in order.
pub fn index_hashes(
    key: &SecretKey,
    domain: &str,
    values: &[Vec<u8>],
) -> Result<Vec<[u8; INDEX_HASH_LEN]>> {
    check_index_domain(domain)?;
    check_registry_items(values.iter().map(Vec::as_slice))?;
    values
        .iter()
        .map(|v| {
            hmac_sha256(
                key.secret_bytes(),
                &[domain.as_bytes(), &[0u8], v.as_slice()],
            )
        })
        .collect()
}

/// Seals `fields` under `key`, each with a fresh random nonce.
pub fn seal_fields(key: &SecretKey, fields: &[ClearField]) -> Result<Vec<SealedField>> {
    check_fields(
        fields
            .iter()
            .map(|f| (f.aad.as_slice(), f.value.as_slice())),
    )?;
    let cipher = gcm(key.secret_bytes())?;
    let nonces = random_bytes(NONCE_LEN * fields.len().max(1))?;
    fields
        .iter()
        .zip(nonces.chunks(NONCE_LEN))
        .map(|(field, nonce)| {
            let n = Nonce::try_from(nonce).map_err(|_| Error::Random)?;
            let sealed = cipher
                .encrypt(
                    &n,
                    Payload {
                        msg: &field.value,
                        aad: &field.aad,
                    },
                )
                .map_err(|_| Error::Verification)?;
            let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
            out.extend_from_slice(nonce);
            out.extend_from_slice(&sealed);
            Ok(SealedField {
                aad: field.aad.clone(),
                sealed: out,
            })
        })
        .collect()
}

/// Opens `fields` sealed by [`seal_fields`] under `key`; any that does not open fails the call.
pub fn open_fields(key: &SecretKey, fields: &[SealedField]) -> Result<Vec<ClearField>> {
    check_fields(
        fields
            .iter()
            .map(|f| (f.aad.as_slice(), f.sealed.as_slice())),
    )?;
    let cipher = gcm(key.secret_bytes())?;
    fields
        .iter()
        .map(|field| {
            let (nonce, body) = split_sealed(field)?;
            let n = Nonce::try_from(nonce).map_err(|_| Error::Verification)?;
            let value = cipher
                .decrypt(
                    &n,
                    Payload {
                        msg: body,
                        aad: &field.aad,
                    },
                )
                .map_err(|_| Error::Verification)?;
            Ok(ClearField {
                aad: field.aad.clone(),
                value,
            })
        })
        .collect()
}

/// A sealed field's nonce and `ciphertext ‖ tag`; one too short to hold them does not open.
pub fn split_sealed(field: &SealedField) -> Result<(&[u8], &[u8])> {
    if field.sealed.len() < SEAL_OVERHEAD {
        return Err(Error::Verification);
    }
    Ok(field.sealed.split_at(NONCE_LEN))
}

/// The limits of one call: count, and the length of every binding and value.
pub fn check_fields<'a>(fields: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>) -> Result<()> {
    let pairs: Vec<(&[u8], &[u8])> = fields.collect();
    check_registry_items(pairs.iter().map(|p| p.0))?;
    check_registry_items(pairs.iter().map(|p| p.1))
}

#[cfg(test)]
mod tests;
