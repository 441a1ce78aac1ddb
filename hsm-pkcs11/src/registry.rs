//! The registry's personal data in the token: index hashes with `CKM_SHA256_HMAC` (the key
//! unwrapped as a generic secret that may only sign) and sealed fields with `CKM_AES_GCM` (an AES
//! key that may only encrypt and decrypt), both sensitive, non-extractable session objects. The
//! formats are the simulator's ([`hsm_sim::crypto::registry`]): a token of either backend seals
//! and hashes alike, so the store's contents do not depend on the backend's mechanisms.

use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use hsm_api::{
    ClearField, Error, INDEX_HASH_LEN, KeyToken, Result, SealedField, check_index_domain,
    check_registry_items,
};
use hsm_sim::crypto::registry::{check_fields, split_sealed};
use hsm_sim::policy;

use crate::Pkcs11Hsm;
use crate::session::{LmkObjects, refused};

const NONCE_LEN: usize = 12;
const TAG_BITS: u64 = 128;

/// An HMAC key: signs (HMAC) only.
fn hmac_template() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
    ]
}

/// A data key: AES, encrypts and decrypts only.
fn data_template() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
    ]
}

impl Pkcs11Hsm {
    fn registry_key(
        &self,
        session: &Session,
        lmk: &LmkObjects,
        token: &KeyToken,
        allowed: fn(hsm_api::KeyUsage) -> bool,
        template: &[Attribute],
    ) -> Result<ObjectHandle> {
        let key = self.key_for(
            session,
            lmk,
            token,
            allowed,
            "protect the registry's personal data",
        )?;
        self.unwrap_root(session, lmk, &key, template)
    }

    pub(crate) fn index_hashes_now(
        &self,
        lmk: &LmkObjects,
        token: &KeyToken,
        domain: &str,
        values: &[Vec<u8>],
    ) -> Result<Vec<[u8; INDEX_HASH_LEN]>> {
        check_index_domain(domain)?;
        check_registry_items(values.iter().map(Vec::as_slice))?;
        let session = self.session()?;
        let handle = self.registry_key(
            &session,
            lmk,
            token,
            policy::is_registry_index,
            &hmac_template(),
        )?;
        let mut data = Vec::with_capacity(domain.len() + 1 + 64);
        values
            .iter()
            .map(|value| {
                data.clear();
                data.extend_from_slice(domain.as_bytes());
                data.push(0);
                data.extend_from_slice(value);
                let mac = session
                    .sign(&Mechanism::Sha256Hmac, handle, &data)
                    .map_err(|e| refused("C_Sign (CKM_SHA256_HMAC)", &e))?;
                <[u8; INDEX_HASH_LEN]>::try_from(mac.as_slice()).map_err(|_| Error::Protocol)
            })
            .collect()
    }

    pub(crate) fn seal_fields_now(
        &self,
        lmk: &LmkObjects,
        token: &KeyToken,
        fields: &[ClearField],
    ) -> Result<Vec<SealedField>> {
        check_fields(
            fields
                .iter()
                .map(|f| (f.aad.as_slice(), f.value.as_slice())),
        )?;
        let session = self.session()?;
        let handle = self.registry_key(
            &session,
            lmk,
            token,
            policy::is_registry_data,
            &data_template(),
        )?;
        fields
            .iter()
            .map(|field| {
                let mut nonce = session
                    .generate_random_vec(NONCE_LEN as u32)
                    .map_err(|_| Error::Random)?;
                let mut sealed = nonce.clone();
                let params = GcmParams::new(&mut nonce, &field.aad, TAG_BITS.into())
                    .map_err(|e| refused("CK_GCM_PARAMS", &e))?;
                let body = session
                    .encrypt(&Mechanism::AesGcm(params), handle, &field.value)
                    .map_err(|e| refused("C_Encrypt (CKM_AES_GCM)", &e))?;
                sealed.extend_from_slice(&body);
                Ok(SealedField {
                    aad: field.aad.clone(),
                    sealed,
                })
            })
            .collect()
    }

    pub(crate) fn open_fields_now(
        &self,
        lmk: &LmkObjects,
        token: &KeyToken,
        fields: &[SealedField],
    ) -> Result<Vec<ClearField>> {
        check_fields(
            fields
                .iter()
                .map(|f| (f.aad.as_slice(), f.sealed.as_slice())),
        )?;
        let session = self.session()?;
        let handle = self.registry_key(
            &session,
            lmk,
            token,
            policy::is_registry_data,
            &data_template(),
        )?;
        fields
            .iter()
            .map(|field| {
                let (nonce, body) = split_sealed(field)?;
                let mut nonce = nonce.to_vec();
                let params = GcmParams::new(&mut nonce, &field.aad, TAG_BITS.into())
                    .map_err(|e| refused("CK_GCM_PARAMS", &e))?;
                // Any failure to open is the field's: another key, binding or an altered byte.
                let value = session
                    .decrypt(&Mechanism::AesGcm(params), handle, body)
                    .map_err(|_| Error::Verification)?;
                Ok(ClearField {
                    aad: field.aad.clone(),
                    value,
                })
            })
            .collect()
    }
}
