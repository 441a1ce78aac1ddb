//! The key operations on tokens: usage checks, the hot-key cache, and every operation that
//! makes, imports, exports, derives, writes or uses a key (see the usage table in [`super`]).

use std::sync::Arc;

use hsm_api::{
    Component, Dispersion, Error, Exportability, ExportedKey, Factor, Kcv, KeyBlockVersion,
    KeySpec, KeyToken, KeyUsage, MacFold, Result, WrappedKey, WriteKeyCommand, WriteKeyRequest,
};

use super::LocalHsm;
use crate::crypto::{SecretKey, diversify};
use crate::crypto::{kcv, tr31};
use crate::lmk::{Lmk, TokenKey};
use crate::policy::{self, check_new_key, child_of, wrong_usage};

/// Factors one derivation may apply.
const FACTORS: core::ops::RangeInclusive<usize> = 1..=8;
/// Random bytes one call may ask for.
const RANDOM_LEN: core::ops::RangeInclusive<usize> = 1..=4096;

/// Whether a key, once unwrapped, is kept in the hot-key cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Caching {
    /// A key that acts on other keys or data, likely used again.
    Keep,
    /// A key used once (the subject of the operation).
    Skip,
}

impl LocalHsm {
    /// The key of `token` (from the cache or unwrapped under `lmk`), if its usage passes
    /// `allowed`; otherwise [`Error::WrongUsage`] naming `operation`.
    pub(super) fn key_for(
        &self,
        lmk: &Lmk,
        token: &KeyToken,
        allowed: fn(KeyUsage) -> bool,
        operation: &'static str,
        caching: Caching,
    ) -> Result<Arc<TokenKey>> {
        let key = self.load(lmk, token, allowed, caching)?;
        check_usage(&key, allowed, operation)?;
        Ok(key)
    }

    /// The key of `token`, from the cache or unwrapped under `lmk` (its integrity checked, its
    /// usage not yet); with [`Caching::Keep`] it is cached if its usage passes `allowed`.
    pub(super) fn load(
        &self,
        lmk: &Lmk,
        token: &KeyToken,
        allowed: fn(KeyUsage) -> bool,
        caching: Caching,
    ) -> Result<Arc<TokenKey>> {
        Ok(match self.cache.get(token)? {
            Some(hit) => hit,
            None => {
                let key = Arc::new(lmk.unwrap(token)?);
                if caching == Caching::Keep && allowed(key.usage) {
                    self.cache.insert(token, Arc::clone(&key))?;
                }
                key
            }
        })
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
            let kek = self.key_for(lmk, kek, is_kek, "unwrap a key block", Caching::Keep)?;
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
            let kek = self.key_for(lmk, kek, is_kek, WRAP, Caching::Keep)?;
            let key = self.key_for(lmk, key, may_be_exported, EXPORT, Caching::Skip)?;
            export_block(&kek, &key, version)
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
            let parent = self.key_for(lmk, parent, is_parent, DERIVE, Caching::Keep)?;
            let child = derive_child_of(&parent, method, factors, child_usage)?;
            wrapped(lmk, &child.key, child.usage, child.exportability)
        })
    }

    pub(super) fn write_key_command_now(
        &self,
        request: &WriteKeyRequest,
    ) -> Result<WriteKeyCommand> {
        self.with_lmk(|lmk| {
            let key = self.key_for(lmk, &request.key, may_be_written, WRITE, Caching::Skip)?;
            let protect =
                self.key_for(lmk, &request.protect, may_protect, PROTECT, Caching::Keep)?;
            write_command(
                &key,
                &protect,
                [request.cla, request.ins, request.p1, request.p2],
                &request.key_header,
                &request.challenge,
                request.fold,
            )
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

impl LocalHsm {
    /// [`hsm_api::Hsm::issue_transport_key_components`]: the key and its components made
    /// and deposited for hand-out under one hold of the state lock.
    pub(super) fn issue_components_now(
        &self,
        alg: hsm_api::Algorithm,
        count: u8,
    ) -> Result<hsm_api::IssuedComponents> {
        self.with_lmk_and_parts(|lmk, parts| {
            policy::check_transport_key(alg)?;
            let key = crate::crypto::random::generate_key(alg)?;
            let components = policy::split_into_components(&key, count)?;
            let key = wrapped(
                lmk,
                &key,
                KeyUsage::KeyBlockProtection,
                Exportability::NonExportable,
            )?;
            Ok(hsm_api::IssuedComponents {
                key,
                parts: parts.deposit(count, components)?,
            })
        })
    }

    /// [`hsm_api::Hsm::issue_transport_key_under`]: a key made here, out once under `kek`
    /// ([`policy::export_new_transport_key`]).
    pub(super) fn issue_under_now(
        &self,
        kek: &KeyToken,
        alg: hsm_api::Algorithm,
    ) -> Result<hsm_api::IssuedUnderKek> {
        self.with_lmk(|lmk| {
            let kek = self.key_for(lmk, kek, is_kek, WRAP, Caching::Keep)?;
            policy::check_transport_key(alg)?;
            let key = crate::crypto::random::generate_key(alg)?;
            let version = policy::kbpk_version(kek.key.algorithm())?;
            let block =
                policy::export_new_transport_key(kek.key.algorithm(), &key, |header, clear| {
                    kek.with_binding(version, |binding| {
                        tr31::wrap_bound(&kek.key, binding, header, clear)
                    })
                })?;
            Ok(hsm_api::IssuedUnderKek {
                key: wrapped(
                    lmk,
                    &key,
                    KeyUsage::KeyBlockProtection,
                    Exportability::NonExportable,
                )?,
                block,
            })
        })
    }
}

/// The usage rules of each operation ([`policy`]: one definition for every backend), and the
/// operations a refusal names.
pub(super) use policy::{
    is_kek, is_parent, may_be_asked_for_export as may_be_exported, may_be_written,
    may_protect_a_write as may_protect,
};
pub(super) const WRAP: &str = "wrap a key block";
pub(super) const EXPORT: &str = "be exported";
pub(super) const DERIVE: &str = "derive a key";
pub(super) const WRITE: &str = "be written to a card";
pub(super) const PROTECT: &str = "protect a key written to a card";

/// Refuses `key` unless its usage passes `allowed` ([`Error::WrongUsage`] naming `operation`).
pub(super) fn check_usage(
    key: &TokenKey,
    allowed: fn(KeyUsage) -> bool,
    operation: &'static str,
) -> Result<()> {
    if allowed(key.usage) {
        Ok(())
    } else {
        Err(wrong_usage(key.usage, operation))
    }
}

/// The child of `parent` (a key whose usage passed [`is_parent`]), not yet wrapped under the
/// LMK: the factor count, the child's usage and level ([`child_of`], which decides its
/// exportability), the dispersion and the weak-key check.
pub(super) fn derive_child_of(
    parent: &TokenKey,
    method: Dispersion,
    factors: &[Factor],
    child_usage: KeyUsage,
) -> Result<TokenKey> {
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
    // The parent's kept key schedule (`TokenKey::cipher`): a city key derives every card's.
    let (first, rest) = factors.split_first().ok_or(Error::Count {
        field: "factors".into(),
        expected: "1 to 8".into(),
    })?;
    let child = diversify::diversify_chain_with(parent.cipher()?, method, first, rest)?;
    child.check_not_weak()?;
    Ok(TokenKey::new(child_usage, exportability, child))
}

/// `key` (of a usage that passed [`may_be_exported`]) as a TR-31 block of `version` under `kek`
/// (a key-block protection key), if its usage may leave and its token says it is exportable
/// ([`policy::export_block_with`]). The KEK's binding keys are derived at its first export and
/// kept with it.
pub(super) fn export_block(
    kek: &TokenKey,
    key: &TokenKey,
    version: KeyBlockVersion,
) -> Result<ExportedKey> {
    policy::export_block_with(
        &key.key,
        key.usage,
        key.exportability,
        version,
        |header, clear, kcv| {
            kek.with_binding(version, |binding| {
                tr31::wrap_bound_with_kcv(&kek.key, binding, header, clear, kcv)
            })
        },
    )
}

/// The WRITE KEY command of `key` (a usage that passed [`may_be_written`]) under `protect` (one
/// that passed [`may_protect`]): [`policy::write_key_apdu`].
pub(super) fn write_command(
    key: &TokenKey,
    protect: &TokenKey,
    command: [u8; 4],
    key_header: &[u8],
    challenge: &[u8],
    fold: MacFold,
) -> Result<WriteKeyCommand> {
    policy::write_key_apdu(
        &key.key,
        key.usage,
        &protect.key,
        protect.usage,
        command,
        key_header,
        challenge,
        fold,
    )
}

impl LocalHsm {
    /// The signing key of a [`KeyUsage::ListSigning`] token, in the scheme its token names
    /// ([`crate::crypto::sign`]).
    pub(super) fn list_signing_key(
        &self,
        lmk: &Lmk,
        token: &KeyToken,
    ) -> Result<crate::crypto::sign::ListSigningKey> {
        let key = self.key_for(
            lmk,
            token,
            |u| matches!(u, KeyUsage::ListSigning(_)),
            "sign a published list",
            Caching::Skip,
        )?;
        let KeyUsage::ListSigning(scheme) = key.usage else {
            return Err(wrong_usage(key.usage, "sign a published list"));
        };
        crate::crypto::sign::ListSigningKey::from_seed(&key.key, scheme)
    }

    /// The key of a registry token (index or data key, as `allowed` says), kept in the hot-key
    /// cache: a batch review uses it for every row.
    pub(super) fn registry_key(
        &self,
        lmk: &Lmk,
        token: &KeyToken,
        allowed: fn(KeyUsage) -> bool,
    ) -> Result<Arc<TokenKey>> {
        self.key_for(
            lmk,
            token,
            allowed,
            "protect the registry's personal data",
            Caching::Keep,
        )
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
