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
/// The shortest KCV a component is checked against.
const MIN_COMPONENT_KCV: usize = 3;
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
            if !COMPONENTS.contains(&components.len()) {
                return Err(Error::Count {
                    field: "components".into(),
                    expected: "2 to 9".into(),
                });
            }
            let mut sum = Zeroizing::new(vec![0u8; spec.algorithm.key_len()]);
            for (i, component) in components.iter().enumerate() {
                // A 1- or 2-byte KCV would let a mistyped component pass one time in 256 or
                // 65536: custodians compare at least 3 bytes (ANSI X9.24-1).
                let kcv_len = component.expected_kcv.value().len();
                if kcv_len < MIN_COMPONENT_KCV {
                    return Err(Error::DataLength {
                        field: "component KCV".into(),
                        expected: "at least 3 bytes".into(),
                        actual: kcv_len,
                    });
                }
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
                |u| u == KeyUsage::KeyBlockProtection,
                "unwrap a key block",
                Caching::Keep,
            )?;
            if usage == KeyUsage::CardMasterKey {
                return Err(only_derived());
            }
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
            // By usage first: master keys, their hierarchy and vendor transport keys leave only
            // inside secure-messaging commands, whatever their token's exportability says.
            if !key.usage.may_be_exported() || key.exportability != Exportability::Exportable {
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
                |u| matches!(u, KeyUsage::CardKey | KeyUsage::CardMasterKey),
                "be written to a card",
                Caching::Skip,
            )?;
            let protect = self.key_for(
                lmk,
                &request.protect,
                |u| matches!(u, KeyUsage::CardMasterKey | KeyUsage::VendorTransport),
                "protect a key written to a card",
                Caching::Keep,
            )?;
            // A blank card's first write is its master key; a vendor key protects nothing else.
            if protect.usage == KeyUsage::VendorTransport && key.usage != KeyUsage::CardMasterKey {
                return Err(wrong_usage(
                    protect.usage,
                    "protect the write of anything but a card master key",
                ));
            }
            let mut data =
                Zeroizing::new(Vec::with_capacity(request.key_header.len() + key.key.len()));
            data.extend_from_slice(&request.key_header);
            data.extend_from_slice(key.key.secret_bytes());
            let apdu = secure_messaging_apdu(
                &protect.key,
                [request.cla, request.ins, request.p1, request.p2],
                &data,
                &request.challenge,
                request.fold,
            )?;
            Ok(WriteKeyCommand {
                apdu,
                kcv: kcv::compute_default(&key.key)?,
            })
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
    /// The P-256 signing key of a [`KeyUsage::ListSigning`] token ([`crate::crypto::sign`]).
    pub(super) fn list_signing_key(
        &self,
        lmk: &Lmk,
        token: &KeyToken,
    ) -> Result<crate::crypto::sign::ListSigningKey> {
        let key = self.key_for(
            lmk,
            token,
            |u| u == KeyUsage::ListSigning,
            "sign a published list",
            Caching::Skip,
        )?;
        crate::crypto::sign::ListSigningKey::from_seed(&key.key)
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

/// [`Error::WrongUsage`]: a key of `usage` cannot be used to `operation`.
fn wrong_usage(usage: KeyUsage, operation: &'static str) -> Error {
    Error::WrongUsage {
        usage: usage.name().into(),
        operation: operation.into(),
    }
}

/// A card master key comes only from a derivation in its hierarchy, never from a caller's
/// components, a random draw or a block: so its value is never one a caller chose or saw.
fn only_derived() -> Error {
    wrong_usage(
        KeyUsage::CardMasterKey,
        "be generated, formed or imported (it is only ever derived)",
    )
}

/// Refuses a new key (generated or formed) the HSM must not make: a card master key, an
/// exportable key of a usage that never leaves, or an algorithm its usage cannot use.
fn check_new_key(spec: KeySpec) -> Result<()> {
    if spec.usage == KeyUsage::CardMasterKey {
        return Err(only_derived());
    }
    if spec.exportability == Exportability::Exportable && !spec.usage.may_be_exported() {
        return Err(Error::NotExportable);
    }
    check_algorithm(spec.usage, spec.algorithm)
}

/// The exportability of a child of `child_usage` derived from a `parent` key with `factors`
/// factors, or [`Error::WrongUsage`] if that derivation is not allowed.
///
/// The child stays in its parent's hierarchy (card keys from card-derivation keys, master keys
/// from master-key derivation keys) and at the level the factors reach: a card-level child
/// needs exactly as many factors as the parent is above the card, so a hierarchy key is never
/// relabelled as a card key by deriving it with too few factors. The HSM decides exportability:
/// a hierarchy child is exportable only if its parent is; a card key is exportable (stations
/// get card keys); a card master key never is.
pub(super) fn child_of(
    parent: KeyUsage,
    parent_exportability: Exportability,
    factors: usize,
    child_usage: KeyUsage,
) -> Result<Exportability> {
    let Some(level) = parent.level() else {
        return Err(wrong_usage(parent, "derive a key"));
    };
    let reached = level.below(factors);
    let to_card = factors == level.dispersions_to_card();
    match (parent, child_usage) {
        (KeyUsage::CardDerivation(_), KeyUsage::CardKey) if to_card => {
            Ok(Exportability::Exportable)
        }
        (KeyUsage::MasterKeyDerivation(_), KeyUsage::CardMasterKey) if to_card => {
            Ok(Exportability::NonExportable)
        }
        (KeyUsage::CardDerivation(_), KeyUsage::CardDerivation(child))
            if reached == Some(child) =>
        {
            Ok(parent_exportability)
        }
        (KeyUsage::MasterKeyDerivation(_), KeyUsage::MasterKeyDerivation(child))
            if reached == Some(child) =>
        {
            Ok(Exportability::NonExportable)
        }
        (KeyUsage::CardDerivation(_), KeyUsage::CardKey | KeyUsage::CardDerivation(_))
        | (
            KeyUsage::MasterKeyDerivation(_),
            KeyUsage::CardMasterKey | KeyUsage::MasterKeyDerivation(_),
        ) => Err(wrong_usage(
            parent,
            "derive a key of that level with this number of factors",
        )),
        (KeyUsage::CardDerivation(_), _) => Err(wrong_usage(
            parent,
            "derive anything but card keys and card derivation keys below it",
        )),
        _ => Err(wrong_usage(
            parent,
            "derive anything but card master keys and master-key derivation keys below it",
        )),
    }
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
        // The 32-byte seed of the P-256 key.
        KeyUsage::ListSigning if alg != Algorithm::Aes256 => Err(Error::Unsupported {
            op: "list signing".into(),
            alg,
        }),
        _ => Ok(()),
    }
}

/// Checks that an imported block's header fits `usage` and returns the token's exportability.
///
/// TR-31 usages `K0`/`K1` import as key-block protection keys, `E6` as card or master-key
/// derivation keys (at the level `usage` names: a foreign block does not say it), `E5` as card
/// keys or vendor transport keys, `M6` as audit MAC keys. The mode of use must be the token's
/// own (see [`crate::lmk`]) or `N`: the token's mode is never broader than the block's.
/// Exportability `E` stays exportable where the usage may leave at all; `N` and `S` (exportable
/// under an untrusted key) become non-exportable.
pub(super) fn check_import_header(
    header: &KeyBlockHeader,
    usage: KeyUsage,
) -> Result<Exportability> {
    let codes: &[&str] = match usage {
        KeyUsage::KeyBlockProtection => &["K0", "K1"],
        KeyUsage::CardDerivation(_) | KeyUsage::MasterKeyDerivation(_) => &["E6"],
        KeyUsage::CardKey | KeyUsage::VendorTransport => &["E5"],
        KeyUsage::AuditMac => &["M6"],
        KeyUsage::CardMasterKey => return Err(only_derived()),
        // A signing seed is generated here and never crosses the boundary either way.
        KeyUsage::ListSigning => {
            return Err(Error::WrongUsage {
                usage: "list signing".into(),
                operation: "be imported".into(),
            });
        }
    };
    if !codes.contains(&header.key_usage.as_str()) {
        if !["K0", "K1", "E5", "E6", "M6"].contains(&header.key_usage.as_str()) {
            return Err(Error::KeyBlockHeader {
                field: "key usage".into(),
            });
        }
        return Err(Error::WrongUsage {
            usage: format!("TR-31 {}", header.key_usage).into(),
            operation: match usage {
                KeyUsage::KeyBlockProtection => "become a key-block protection key".into(),
                KeyUsage::CardDerivation(_) => "become a card derivation key".into(),
                KeyUsage::MasterKeyDerivation(_) => "become a master-key derivation key".into(),
                KeyUsage::CardKey => "become a card key".into(),
                KeyUsage::VendorTransport => "become a vendor transport key".into(),
                KeyUsage::AuditMac => "become an audit MAC key".into(),
                KeyUsage::CardMasterKey => "become a card master key".into(),
                KeyUsage::ListSigning => "become a list signing key".into(),
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
        tr31::Exportability::Trusted if usage.may_be_exported() => Exportability::Exportable,
        tr31::Exportability::Trusted
        | tr31::Exportability::NonExportable
        | tr31::Exportability::Sensitive => Exportability::NonExportable,
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
