//! The key operations on tokens: usage checks, the hot-key cache, and every operation that
//! makes, imports, exports, derives, writes or uses a key (see the usage table in [`super`]).

use std::sync::Arc;

use hsm_api::{
    Algorithm, Component, Dispersion, Error, Exportability, ExportedKey, Factor, Kcv,
    KeyBlockVersion, KeySpec, KeyToken, KeyUsage, MacFold, Result, WrappedKey, WriteKeyCommand,
    WriteKeyRequest,
};
use zeroize::Zeroizing;

use super::LocalHsm;
use crate::cache;
use crate::crypto::kcv::{self, KcvCheck};
use crate::crypto::key::decode_secret_hex;
use crate::crypto::tr31::{self, KeyBlockHeader, ModeOfUse, OptionalBlock};
use crate::crypto::{SecretKey, diversify, mac};
use crate::lmk::{self, Lmk, TokenKey};

/// Components a key may be formed from.
const COMPONENTS: core::ops::RangeInclusive<usize> = 2..=9;
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
    /// The key of `token` (from the cache or unwrapped under `lmk`), if its usage is one of
    /// `allowed`; otherwise [`Error::WrongUsage`] naming `operation`.
    pub(super) fn key_for(
        &self,
        lmk: &Lmk,
        token: &KeyToken,
        allowed: &[KeyUsage],
        operation: &'static str,
        caching: Caching,
    ) -> Result<Arc<TokenKey>> {
        let key = self.load(lmk, token, allowed, caching)?;
        check_usage(&key, allowed, operation)?;
        Ok(key)
    }

    /// The key of `token`, from the cache or unwrapped under `lmk` (its integrity checked, its
    /// usage not yet); with [`Caching::Keep`] it is cached if its usage is one of `allowed`.
    pub(super) fn load(
        &self,
        lmk: &Lmk,
        token: &KeyToken,
        allowed: &[KeyUsage],
        caching: Caching,
    ) -> Result<Arc<TokenKey>> {
        let digest = cache::digest(token);
        Ok(match self.cache.get(&digest)? {
            Some(hit) => hit,
            None => {
                let key = Arc::new(lmk.unwrap(token)?);
                if caching == Caching::Keep && allowed.contains(&key.usage) {
                    self.cache.insert(digest, Arc::clone(&key))?;
                }
                key
            }
        })
    }

    pub(super) fn generate_key_now(&self, spec: KeySpec) -> Result<WrappedKey> {
        self.with_lmk(|lmk| {
            check_algorithm(spec.usage, spec.algorithm)?;
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
            check_algorithm(spec.usage, spec.algorithm)?;
            if !COMPONENTS.contains(&components.len()) {
                return Err(Error::Count {
                    field: "components".into(),
                    expected: "2 to 9".into(),
                });
            }
            let mut sum = Zeroizing::new(vec![0u8; spec.algorithm.key_len()]);
            for (i, component) in components.iter().enumerate() {
                let bytes = decode_secret_hex(component.secret_hex(), "component")?;
                let part = SecretKey::new(spec.algorithm, &bytes)?;
                if !component.expected_kcv.matches(&part)? {
                    return Err(Error::ComponentKcv { index: i + 1 });
                }
                sum.iter_mut().zip(bytes.iter()).for_each(|(s, b)| *s ^= b);
            }
            let key = SecretKey::new(spec.algorithm, &sum)?;
            key.check_not_weak()?;
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
                &[KeyUsage::KeyBlockProtection],
                "unwrap a key block",
                Caching::Keep,
            )?;
            let (header, key) = tr31::unwrap(&kek.key, block)?;
            let exportability = check_import_header(&header, usage)?;
            check_algorithm(usage, key.algorithm())?;
            key.check_not_weak()?;
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
            let kek = self.key_for(lmk, kek, KEKS, WRAP, Caching::Keep)?;
            let key = self.key_for(lmk, key, EXPORTED, EXPORT, Caching::Skip)?;
            export_block(&kek, &key, version)
        })
    }

    pub(super) fn derive_key_now(
        &self,
        parent: &KeyToken,
        method: Dispersion,
        factors: &[Factor],
        child_usage: KeyUsage,
        child_exportability: Exportability,
    ) -> Result<WrappedKey> {
        self.with_lmk(|lmk| {
            let parent = self.key_for(lmk, parent, PARENTS, DERIVE, Caching::Keep)?;
            let child =
                derive_child_of(&parent, method, factors, child_usage, child_exportability)?;
            wrapped(lmk, &child.key, child.usage, child.exportability)
        })
    }

    pub(super) fn write_key_command_now(
        &self,
        request: &WriteKeyRequest,
    ) -> Result<WriteKeyCommand> {
        self.with_lmk(|lmk| {
            let key = self.key_for(lmk, &request.key, WRITTEN, WRITE, Caching::Skip)?;
            let protect =
                self.key_for(lmk, &request.protect, PROTECTORS, PROTECT, Caching::Keep)?;
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
            let key = self.key_for(lmk, token, &KeyUsage::ALL, "", Caching::Skip)?;
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
            &[KeyUsage::AuditMac],
            "compute or verify an audit MAC",
            Caching::Keep,
        )?;
        crate::crypto::cipher::cmac(&key.key, data)
    }
}

/// Usages a key may have to be the parent of a derivation, and the operation a refusal names.
pub(super) const PARENTS: &[KeyUsage] = &[KeyUsage::CardDerivation];
pub(super) const DERIVE: &str = "derive a key";
/// Usages a key may have to protect an exported key block, and the operation a refusal names.
pub(super) const KEKS: &[KeyUsage] = &[KeyUsage::KeyBlockProtection];
pub(super) const WRAP: &str = "wrap a key block";
/// Usages a key may have to be exported, and the operation a refusal names.
pub(super) const EXPORTED: &[KeyUsage] = &[
    KeyUsage::CardDerivation,
    KeyUsage::CardKey,
    KeyUsage::AuditMac,
];
pub(super) const EXPORT: &str = "be exported";
/// Usages a key may have to be written to a card, and the operation a refusal names.
pub(super) const WRITTEN: &[KeyUsage] = &[KeyUsage::CardKey, KeyUsage::CardDerivation];
pub(super) const WRITE: &str = "be written to a card";
/// Usages a key may have to protect a card slot, and the operation a refusal names.
pub(super) const PROTECTORS: &[KeyUsage] = &[KeyUsage::CardKey];
pub(super) const PROTECT: &str = "protect a key written to a card";

/// The child of `parent` (a key whose usage has been checked against [`PARENTS`]).
pub(super) fn derive_child_of(
    parent: &TokenKey,
    method: Dispersion,
    factors: &[Factor],
    child_usage: KeyUsage,
    child_exportability: Exportability,
) -> Result<TokenKey> {
    if !matches!(child_usage, KeyUsage::CardDerivation | KeyUsage::CardKey) {
        return Err(Error::WrongUsage {
            usage: child_usage.name().into(),
            operation: "hold a derived key".into(),
        });
    }
    if !FACTORS.contains(&factors.len()) {
        return Err(Error::Count {
            field: "factors".into(),
            expected: "1 to 8".into(),
        });
    }
    let child = diversify::diversify_chain(&parent.key, method, factors)?;
    child.check_not_weak()?;
    Ok(TokenKey {
        usage: child_usage,
        exportability: child_exportability,
        key: child,
    })
}

/// Refuses `key` unless its usage is one of `allowed` ([`Error::WrongUsage`] naming
/// `operation`).
pub(super) fn check_usage(
    key: &TokenKey,
    allowed: &[KeyUsage],
    operation: &'static str,
) -> Result<()> {
    if allowed.contains(&key.usage) {
        Ok(())
    } else {
        Err(Error::WrongUsage {
            usage: key.usage.name().into(),
            operation: operation.into(),
        })
    }
}

/// `key` (of a usage that may be exported) as a TR-31 block of `version` under `kek` (a
/// key-block protection key), if its token says it is exportable.
pub(super) fn export_block(
    kek: &TokenKey,
    key: &TokenKey,
    version: KeyBlockVersion,
) -> Result<ExportedKey> {
    if key.exportability != Exportability::Exportable {
        return Err(Error::NotExportable);
    }
    let header = lmk::key_block_header(
        version,
        key.usage,
        key.key.algorithm(),
        tr31::Exportability::NonExportable,
    )?
    .with_optional_block(OptionalBlock::key_check_value(&key.key)?);
    let block = tr31::wrap(&kek.key, &header, &key.key)?;
    Ok(ExportedKey {
        block,
        kcv: kcv::compute_default(&key.key)?,
    })
}

/// The WRITE KEY command of `key` (a usage that may be written) under `protect` (a card key).
pub(super) fn write_command(
    key: &TokenKey,
    protect: &TokenKey,
    command: [u8; 4],
    key_header: &[u8],
    challenge: &[u8],
    fold: MacFold,
) -> Result<WriteKeyCommand> {
    let mut data = Zeroizing::new(Vec::with_capacity(key_header.len() + key.key.len()));
    data.extend_from_slice(key_header);
    data.extend_from_slice(key.key.secret_bytes());
    let apdu = secure_messaging_apdu(&protect.key, command, &data, challenge, fold)?;
    Ok(WriteKeyCommand {
        apdu,
        kcv: kcv::compute_default(&key.key)?,
    })
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

/// Refuses a key of `alg` for `usage` where the HSM could never use it: key-block protection
/// needs TDES (version B) or AES (version D), the audit MAC needs AES.
fn check_algorithm(usage: KeyUsage, alg: Algorithm) -> Result<()> {
    match usage {
        KeyUsage::KeyBlockProtection
            if !(alg.is_aes() || matches!(alg, Algorithm::Tdes2 | Algorithm::Tdes3)) =>
        {
            Err(Error::Unsupported {
                op: "key-block protection".into(),
                alg,
            })
        }
        KeyUsage::AuditMac if !alg.is_aes() => Err(Error::Unsupported {
            op: "the audit MAC".into(),
            alg,
        }),
        _ => Ok(()),
    }
}

/// Checks that an imported block's header fits `usage` and returns the token's exportability.
///
/// TR-31 usages `K0`/`K1` import as key-block protection keys, `E6` as card derivation, `E5`
/// as card keys, `M6` as audit MAC keys. The mode of use must be the token's own (see
/// [`crate::lmk`]) or `N`: the token's mode is never broader than the block's. Exportability
/// `E` stays exportable; `N` and `S` (exportable under an untrusted key) become non-exportable.
pub(super) fn check_import_header(
    header: &KeyBlockHeader,
    usage: KeyUsage,
) -> Result<Exportability> {
    let declared = match header.key_usage.as_str() {
        "K0" | "K1" => KeyUsage::KeyBlockProtection,
        "E6" => KeyUsage::CardDerivation,
        "E5" => KeyUsage::CardKey,
        "M6" => KeyUsage::AuditMac,
        _ => {
            return Err(Error::KeyBlockHeader {
                field: "key usage".into(),
            });
        }
    };
    if declared != usage {
        return Err(Error::WrongUsage {
            usage: declared.name().into(),
            operation: match usage {
                KeyUsage::KeyBlockProtection => "become a key-block protection key".into(),
                KeyUsage::CardDerivation => "become a card derivation key".into(),
                KeyUsage::CardKey => "become a card key".into(),
                KeyUsage::AuditMac => "become an audit MAC key".into(),
            },
        });
    }
    let mode = header.mode_of_use;
    if mode != lmk::tr31_usage(usage).1 && mode != ModeOfUse::NoRestriction {
        return Err(Error::KeyBlockHeader {
            field: "mode of use".into(),
        });
    }
    Ok(match header.exportability {
        tr31::Exportability::Trusted => Exportability::Exportable,
        tr31::Exportability::NonExportable | tr31::Exportability::Sensitive => {
            Exportability::NonExportable
        }
    })
}

/// A secure-messaging command (DOMAIN.md §5): `CLA INS P1 P2 Lc ‖ field ‖ MAC` with
/// `field = ECB(protect, Ld ‖ data ‖ 80 00..)`, `Lc = |field| + 4` and
/// `MAC = card_mac(protect, challenge, CLA INS P1 P2 Lc ‖ field)`.
pub(super) fn secure_messaging_apdu(
    protect: &SecretKey,
    command: [u8; 4],
    data: &[u8],
    challenge: &[u8],
    fold: MacFold,
) -> Result<Vec<u8>> {
    let field = mac::encrypt_key_field(protect, data)?;
    let lc = u8::try_from(field.len() + mac::CARD_MAC_LEN).map_err(|_| Error::DataLength {
        field: "secure-messaging command data".into(),
        expected: "at most 255 bytes with its MAC".into(),
        actual: field.len() + mac::CARD_MAC_LEN,
    })?;
    let mut apdu = Vec::with_capacity(5 + field.len() + mac::CARD_MAC_LEN);
    apdu.extend_from_slice(&command);
    apdu.push(lc);
    apdu.extend_from_slice(&field);
    let tag = mac::card_mac(protect, challenge, &apdu, fold)?;
    apdu.extend_from_slice(&tag);
    Ok(apdu)
}
