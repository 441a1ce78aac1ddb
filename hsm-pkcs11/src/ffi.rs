//! The one raw PKCS#11 call of this crate, and the only module where `unsafe` is allowed.
//!
//! `cryptoki` 0.12 has no wrapper for `CKM_DES3_ECB_ENCRYPT_DATA` / `CKM_DES_ECB_ENCRYPT_DATA`
//! (the derivation by encryption the SSC dispersion chain needs in the token), and its
//! `MechanismType` cannot be built from a raw standard value (only vendor values). So this module
//! loads the same module library a second time (the dynamic loader hands back the same loaded
//! instance, so sessions and objects are shared) and calls its `C_DeriveKey` symbol directly with
//! a `CK_KEY_DERIVATION_STRING_DATA` parameter.
//!
//! # Review
//!
//! - The mechanism's parameter points into `data`, which is borrowed for the whole call; the
//!   template's attributes point into `template` (cryptoki's own conversion), also borrowed for
//!   the whole call. The module reads both and keeps neither.
//! - The returned handle is wrapped as an `ObjectHandle` only when the call returned `CKR_OK`.
//! - The session handle comes from a live `cryptoki::session::Session` borrowed for the call.
//! - Nothing here allocates for the module or frees what it allocated.
//!
//! The right long-term fix is a `Mechanism::Des3EcbEncryptData` wrapper in `cryptoki` itself
//! (upstream); this module goes away then.
#![allow(unsafe_code)]

use std::path::Path;

use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::{
    CK_ATTRIBUTE, CK_KEY_DERIVATION_STRING_DATA, CK_MECHANISM, CK_OBJECT_HANDLE, CK_ULONG, CKR_OK,
};
use hsm_api::{Error, Result};

/// The derivation mechanisms by encryption this module calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EncryptData {
    /// `CKM_DES_ECB_ENCRYPT_DATA`: single DES base key.
    DesEcb,
    /// `CKM_DES3_ECB_ENCRYPT_DATA`: double or triple length DES base key.
    Des3Ecb,
}

/// The module's `C_DeriveKey`, loaded once per backend.
pub(crate) struct RawDerive {
    library: cryptoki_sys::Pkcs11,
}

impl std::fmt::Debug for RawDerive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawDerive { .. }")
    }
}

impl RawDerive {
    /// Loads `module` (already loaded and initialised by `cryptoki`) for its `C_DeriveKey`.
    pub(crate) fn load(module: &Path) -> Result<RawDerive> {
        // SAFETY: loading a PKCS#11 module runs its initialisers; it is the same module
        // `cryptoki` has loaded already (so they have run), found at the same path.
        let library = unsafe { cryptoki_sys::Pkcs11::new(module) }
            .map_err(|_| Error::Storage("the PKCS#11 module could not be loaded".into()))?;
        if library.C_DeriveKey.is_err() {
            return Err(Error::Storage(
                "the PKCS#11 module has no C_DeriveKey".into(),
            ));
        }
        Ok(RawDerive { library })
    }

    /// `C_DeriveKey(session, mechanism(data), base, template)`: the key whose value is the
    /// encryption of `data` under `base` in ECB mode.
    pub(crate) fn encrypt_data(
        &self,
        session: &Session,
        mechanism: EncryptData,
        base: ObjectHandle,
        data: &[u8],
        template: &[Attribute],
    ) -> Result<ObjectHandle> {
        let mut params = CK_KEY_DERIVATION_STRING_DATA {
            // The module only reads the data (PKCS#11 declares the pointer non-const).
            pData: data.as_ptr().cast_mut(),
            ulLen: CK_ULONG::try_from(data.len()).map_err(|_| Error::Protocol)?,
        };
        let mut raw_mechanism = CK_MECHANISM {
            mechanism: match mechanism {
                EncryptData::DesEcb => cryptoki_sys::CKM_DES_ECB_ENCRYPT_DATA,
                EncryptData::Des3Ecb => cryptoki_sys::CKM_DES3_ECB_ENCRYPT_DATA,
            },
            pParameter: (&raw mut params).cast(),
            ulParameterLen: CK_ULONG::try_from(size_of::<CK_KEY_DERIVATION_STRING_DATA>())
                .map_err(|_| Error::Protocol)?,
        };
        let mut raw_template: Vec<CK_ATTRIBUTE> = template.iter().map(Into::into).collect();
        let count = CK_ULONG::try_from(raw_template.len()).map_err(|_| Error::Protocol)?;
        let mut handle: CK_OBJECT_HANDLE = 0;
        // SAFETY: see the module's review notes. Every pointer passed is valid for the call:
        // `raw_mechanism` and `params` are locals, `data` and `template` (which the attribute
        // pointers point into) are borrowed until the call returns, and `handle` is a local
        // the module writes one handle into. `C_DeriveKey` is present (checked in `load`).
        let rv = unsafe {
            self.library.C_DeriveKey(
                session.handle(),
                &raw mut raw_mechanism,
                base.handle(),
                raw_template.as_mut_ptr(),
                count,
                &raw mut handle,
            )
        };
        if rv != CKR_OK {
            tracing::debug!(rv, "C_DeriveKey (encrypt data) failed");
            return Err(Error::Storage(
                format!("the token refused a derivation (CKR 0x{rv:08X})").into(),
            ));
        }
        // SAFETY: the module returned this handle with CKR_OK for this session.
        Ok(unsafe { ObjectHandle::new_from_raw(handle) })
    }
}

/// Points SoftHSM2 at `config` (its `SOFTHSM2_CONF`) for this process, for a throwaway token:
/// only before the module is first initialised in this process, which reads it once. Test and
/// development only (`dangerous_`).
pub(crate) fn dangerous_set_softhsm_conf(config: &Path) {
    // SAFETY: mutating the environment is unsound if another thread reads it through libc at the
    // same moment (Rust's own readers take std's environment lock). It is called once per process,
    // under the context registry's lock, before the PKCS#11 module (the reader) is initialised;
    // it is only ever reached from tests and `sscard-kms dev --hsm softhsm`.
    unsafe { std::env::set_var("SOFTHSM2_CONF", config) };
}
