//! The key operations on tokens: usage checks, the hot-key cache, and every operation that
//! makes, imports, exports, derives, writes or uses a key (see the usage table in [`super`]).

use std::sync::Arc;

use hsm_api::{
    Component, Dispersion, Error, Exportability, ExportedKey, Factor, Kcv, KeyBlockVersion,
    KeySpec, KeyToken, KeyUsage, Result, WrappedKey, WriteKeyCommand, WriteKeyRequest,
};

use super::LocalHsm;
use crate::cache;
use crate::crypto::kcv;
use crate::crypto::{SecretKey, diversify};
use crate::lmk::{Lmk, TokenKey};
use crate::policy::{self, check_new_key, child_of, wrong_usage};

/// Factors one derivation may apply.
const FACTORS: core::ops::RangeInclusive<usize> = 1..=8;
/// Random bytes one call may ask for.
const RANDOM_LEN: core::ops::RangeInclusive<usize> = 1..=4096;

/// Whether a key, once unwrapped, is kept in the hot-key cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caching {
    /// A key that acts on other keys or data, likely used again.
    Keep,
    /// A key used once (the subject of the operation).
    Skip,
}

impl LocalHsm {
    /// The key of `token` (from the cache or unwrapped under `lmk`), if its usage passes
    /// `allowed`; otherwise [`Error::WrongUsage`] naming `operation`.
    fn key_for(
        &self,
        lmk: &Lmk,
        token: &KeyToken,
        allowed: fn(KeyUsage) -> bool,
        operation: &'static str,
        caching: Caching,
    ) -> Result<Arc<TokenKey>> {
        let digest = cache::digest(token);
        let key = match self.cache.get(&digest)? {
            Some(hit) => hit,
            None => {
                let key = Arc::new(lmk.unwrap(token)?);
                if caching == Caching::Keep && allowed(key.usage) {
                    self.cache.insert(digest, Arc::clone(&key))?;
                }
                key
            }
        };
        if !allowed(key.usage) {
            return Err(wrong_usage(key.usage, operation));
        }
        Ok(key)
    }

    pub(super) fn generate_key_now(&self, spec: KeySpec) -> Result<WrappedKey> {
        self.with_lmk(|lmk| {
            check_new_key(spec)?;
            let key = crate::crypto::random::generate_key(spec.algorithm)?;
            wrapped(lmk, &key, spec.usage, spec.exportability)
        })
    }

    pub(super) fn form_key_now(
        &self,
        spec: KeySpec,
        components: &[Component],
    ) -> Result<WrappedKey> {
        self.with_lmk(|lmk| {
            check_new_key(spec)?;
            let key = policy::form_key(spec.algorithm, components)?;
            wrapped(lmk, &key, spec.usage, spec.exportability)
        })
    }

    pub(super) fn import_key_now(
        &self,
        kek: &KeyToken,
        block: &str,
        usage: KeyUsage,
    ) -> Result<WrappedKey> {
        self.with_lmk(|lmk| {
            let kek = self.key_for(
                lmk,
                kek,
                |u| u == KeyUsage::KeyBlockProtection,
                "unwrap a key block",
                Caching::Keep,
            )?;
            let (key, exportability) = policy::import_block(&kek.key, block, usage)?;
            wrapped(lmk, &key, usage, exportability)
        })
    }

    pub(super) fn export_key_now(
        &self,
        kek: &KeyToken,
        key: &KeyToken,
        version: KeyBlockVersion,
    ) -> Result<ExportedKey> {
        self.with_lmk(|lmk| {
            let kek = self.key_for(
                lmk,
                kek,
                |u| u == KeyUsage::KeyBlockProtection,
                "wrap a key block",
                Caching::Keep,
            )?;
            let key = self.key_for(
                lmk,
                key,
                |u| !matches!(u, KeyUsage::KeyBlockProtection | KeyUsage::AuditMac),
                "be exported",
                Caching::Skip,
            )?;
            policy::export_block(&kek.key, &key.key, key.usage, key.exportability, version)
        })
    }

    pub(super) fn derive_key_now(
        &self,
        parent: &KeyToken,
        method: Dispersion,
        factors: &[Factor],
        child_usage: KeyUsage,
    ) -> Result<WrappedKey> {
        self.with_lmk(|lmk| {
            let parent = self.key_for(
                lmk,
                parent,
                |u| u.level().is_some(),
                "derive a key",
                Caching::Keep,
            )?;
            if !FACTORS.contains(&factors.len()) {
                return Err(Error::Count {
                    field: "factors".into(),
                    expected: "1 to 8".into(),
                });
            }
            let exportability = child_of(
                parent.usage,
                parent.exportability,
                factors.len(),
                child_usage,
            )?;
            let child = diversify::diversify_chain(&parent.key, method, factors)?;
            child.check_not_weak()?;
            wrapped(lmk, &child, child_usage, exportability)
        })
    }

    pub(super) fn write_key_command_now(
        &self,
        request: &WriteKeyRequest,
    ) -> Result<WriteKeyCommand> {
        self.with_lmk(|lmk| {
            let key = self.key_for(
                lmk,
                &request.key,
                policy::may_be_written,
                "be written to a card",
                Caching::Skip,
            )?;
            let protect = self.key_for(
                lmk,
                &request.protect,
                policy::may_protect_a_write,
                "protect a key written to a card",
                Caching::Keep,
            )?;
            policy::write_key_command(&key.key, key.usage, &protect.key, protect.usage, request)
        })
    }

    pub(super) fn kcv_now(&self, token: &KeyToken) -> Result<Kcv> {
        self.with_lmk(|lmk| {
            let key = self.key_for(lmk, token, |_| true, "", Caching::Skip)?;
            kcv::compute_default(&key.key)
        })
    }

    pub(super) fn random_now(&self, len: usize) -> Result<Vec<u8>> {
        self.with_lmk(|_| {
            if !RANDOM_LEN.contains(&len) {
                return Err(Error::Count {
                    field: "random length".into(),
                    expected: "1 to 4096 bytes".into(),
                });
            }
            crate::crypto::random::random_bytes(len)
        })
    }

    pub(super) fn audit_mac(&self, lmk: &Lmk, token: &KeyToken, data: &[u8]) -> Result<Vec<u8>> {
        let key = self.key_for(
            lmk,
            token,
            |u| u == KeyUsage::AuditMac,
            "compute or verify an audit MAC",
            Caching::Keep,
        )?;
        crate::crypto::cipher::cmac(&key.key, data)
    }
}

/// A token and KCV for `key`.
fn wrapped(
    lmk: &Lmk,
    key: &SecretKey,
    usage: KeyUsage,
    exportability: Exportability,
) -> Result<WrappedKey> {
    Ok(WrappedKey {
        token: lmk.wrap(key, usage, exportability)?,
        kcv: kcv::compute_default(key)?,
    })
}
