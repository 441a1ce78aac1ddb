//! The HSM's rules and its clear-key assembly, shared by every backend that keeps keys under the
//! same boundary: [`crate::local::LocalHsm`] and the PKCS#11 backend (`hsm-pkcs11`), which runs
//! these pieces with a key its token released for that one operation (TR-31 blocks, the card's
//! encrypted key field, SM4).
//!
//! - **Usage rules** (pure, no key): [`check_new_key`], [`child_of`], [`check_algorithm`],
//!   [`check_import_header`], [`wrong_usage`], [`only_derived`] — the table of
//!   [`crate::local`]'s module docs.
//! - **Assembly** (clear keys, [`SecretKey`]): [`form_key`] (components XORed and checked; one
//!   at a time: [`xor_component`] and [`finish_key`], the partial sum under the LMK in between,
//!   [`crate::partial`]),
//!   [`import_block`] and [`export_block`] (TR-31 under a KEK), [`write_key_command`] (the
//!   secure-messaging command a card checks), [`secure_messaging_apdu`].

use hsm_api::{
    Algorithm, Component, Error, Exportability, ExportedKey, HierarchyLevel, Kcv, KeyBlockVersion,
    KeySpec, KeyUsage, MacFold, Result, WriteKeyCommand, WriteKeyRequest,
};
use zeroize::Zeroizing;

use crate::crypto::kcv::{self, KcvCheck};
use crate::crypto::key::decode_secret_hex;
use crate::crypto::tr31::{self, KeyBlockHeader, ModeOfUse, OptionalBlock};
use crate::crypto::{SecretKey, mac};
use crate::lmk;

/// Components a key may be formed from.
const COMPONENTS: core::ops::RangeInclusive<usize> = 2..=9;
/// The shortest KCV a component is checked against.
const MIN_COMPONENT_KCV: usize = 3;

/// [`Error::WrongUsage`]: a key of `usage` cannot be used to `operation`.
pub fn wrong_usage(usage: KeyUsage, operation: &'static str) -> Error {
    Error::WrongUsage {
        usage: usage.name().into(),
        operation: operation.into(),
    }
}

/// A card master key comes only from a derivation in its hierarchy, never from a caller's
/// components, a random draw or a block: so its value is never one a caller chose or saw.
pub fn only_derived() -> Error {
    wrong_usage(
        KeyUsage::CardMasterKey,
        "be generated, formed or imported (it is only ever derived)",
    )
}

/// Refuses a new key (generated or formed) the HSM must not make: a card master key, an
/// exportable key of a usage that never leaves, or an algorithm its usage cannot use.
pub fn check_new_key(spec: KeySpec) -> Result<()> {
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
pub fn child_of(
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
pub fn check_algorithm(usage: KeyUsage, alg: Algorithm) -> Result<()> {
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
        // The 32-byte seed of the P-256 or SM2 key.
        KeyUsage::ListSigning(_) if alg != Algorithm::Aes256 => Err(Error::Unsupported {
            op: "list signing".into(),
            alg,
        }),
        // HMAC-SHA256 with a 32-byte key; AES-256-GCM.
        KeyUsage::RegistryIndex | KeyUsage::RegistryData if alg != Algorithm::Aes256 => {
            Err(Error::Unsupported {
                op: "the registry's personal data".into(),
                alg,
            })
        }
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
pub fn check_import_header(header: &KeyBlockHeader, usage: KeyUsage) -> Result<Exportability> {
    let codes: &[&str] = match usage {
        KeyUsage::KeyBlockProtection => &["K0", "K1"],
        KeyUsage::CardDerivation(_) | KeyUsage::MasterKeyDerivation(_) => &["E6"],
        KeyUsage::CardKey | KeyUsage::VendorTransport => &["E5"],
        KeyUsage::AuditMac => &["M6"],
        KeyUsage::CardMasterKey => return Err(only_derived()),
        // A signing seed and the registry's keys are generated here and never cross the
        // boundary either way.
        KeyUsage::ListSigning(_) | KeyUsage::RegistryIndex | KeyUsage::RegistryData => {
            return Err(Error::WrongUsage {
                usage: usage.name().into(),
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
                KeyUsage::ListSigning(_) => "become a list signing key".into(),
                KeyUsage::RegistryIndex | KeyUsage::RegistryData => "be imported".into(),
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
pub fn secure_messaging_apdu(
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

/// The key formed as the XOR of `components` (2..=9), each checked against its KCV (of at least
/// 3 bytes); a weak result is [`Error::WeakKey`]. The usage rules are the caller's
/// ([`check_new_key`]). The same steps as a key formed one component at a time
/// ([`xor_component`], then [`finish_key`]).
pub fn form_key(alg: Algorithm, components: &[Component]) -> Result<SecretKey> {
    check_component_count(components.len())?;
    let mut sum = Zeroizing::new(vec![0u8; alg.key_len()]);
    for (i, component) in components.iter().enumerate() {
        xor_component(alg, &mut sum, component, i + 1)?;
    }
    finish_key(alg, &sum)
}

/// Refuses a key formed from fewer than 2 or more than 9 components.
pub fn check_component_count(count: usize) -> Result<()> {
    if COMPONENTS.contains(&count) {
        Ok(())
    } else {
        Err(Error::Count {
            field: "components".into(),
            expected: "2 to 9".into(),
        })
    }
}

/// Checks `component` (the `index`th, from 1) against its KCV (of at least 3 bytes) and XORs it
/// into `sum` (a key of `alg`'s length); on any refusal `sum` is unchanged.
pub fn xor_component(
    alg: Algorithm,
    sum: &mut [u8],
    component: &Component,
    index: usize,
) -> Result<()> {
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
    let part = SecretKey::new(alg, &bytes)?;
    if !component.expected_kcv.matches(&part)? {
        return Err(Error::ComponentKcv { index });
    }
    if sum.len() != bytes.len() {
        return Err(Error::KeyLength {
            alg,
            expected: sum.len(),
            actual: bytes.len(),
        });
    }
    sum.iter_mut().zip(bytes.iter()).for_each(|(s, b)| *s ^= b);
    Ok(())
}

/// The key of the XOR of every component, `sum`: [`Error::WeakKey`] if weak.
pub fn finish_key(alg: Algorithm, sum: &[u8]) -> Result<SecretKey> {
    let key = SecretKey::new(alg, sum)?;
    key.check_not_weak()?;
    Ok(key)
}

/// The key of a TR-31 `block` under the clear `kek`, checked for `usage` (header, algorithm,
/// weak keys), with the exportability its token gets. No card master key is imported.
pub fn import_block(
    kek: &SecretKey,
    block: &str,
    usage: KeyUsage,
) -> Result<(SecretKey, Exportability)> {
    if usage == KeyUsage::CardMasterKey {
        return Err(only_derived());
    }
    let (header, key) = tr31::unwrap(kek, block)?;
    let exportability = check_import_header(&header, usage)?;
    check_algorithm(usage, key.algorithm())?;
    key.check_not_weak()?;
    Ok((key, exportability))
}

/// `key` (of `usage` and `exportability`) as a TR-31 block of `version` under the clear `kek`,
/// non-exportable for its recipient and with its KCV block. Only usages that may leave, and only
/// exportable keys: anything else is [`Error::NotExportable`].
pub fn export_block(
    kek: &SecretKey,
    key: &SecretKey,
    usage: KeyUsage,
    exportability: Exportability,
    version: KeyBlockVersion,
) -> Result<ExportedKey> {
    export_block_with(key, usage, exportability, version, |header, clear, _kcv| {
        tr31::wrap(kek, header, clear)
    })
}

/// [`export_block`] with the wrapping itself left to `wrap` (a backend that keeps a KEK's
/// binding keys derives them once): the checks, the header and the one KCV are here. `wrap`
/// gets the header, the key and that KCV — the header's `KC`, computed here from `key`, so that
/// the simulator's wrap need not compute it again (`tr31::wrap_bound_with_kcv`).
pub fn export_block_with(
    key: &SecretKey,
    usage: KeyUsage,
    exportability: Exportability,
    version: KeyBlockVersion,
    wrap: impl FnOnce(&KeyBlockHeader, &SecretKey, &Kcv) -> Result<String>,
) -> Result<ExportedKey> {
    // By usage first: master keys, their hierarchy and vendor transport keys leave only
    // inside secure-messaging commands, whatever their token's exportability says.
    if !usage.may_be_exported() || exportability != Exportability::Exportable {
        return Err(Error::NotExportable);
    }
    // One check value for the block's `KC` and the answer.
    let kcv = kcv::compute_default(key)?;
    let header = lmk::key_block_header(
        version,
        usage,
        key.algorithm(),
        tr31::Exportability::NonExportable,
    )?
    .with_optional_block(OptionalBlock::key_check_value_of(&kcv)?);
    let block = wrap(&header, key, &kcv)?;
    Ok(ExportedKey { block, kcv })
}

/// The secure-messaging command of `request` writing the clear `key` (of `key_usage`) under the
/// clear `protect` (of `protect_usage`): [`write_key_apdu`].
pub fn write_key_command(
    key: &SecretKey,
    key_usage: KeyUsage,
    protect: &SecretKey,
    protect_usage: KeyUsage,
    request: &WriteKeyRequest,
) -> Result<WriteKeyCommand> {
    write_key_apdu(
        key,
        key_usage,
        protect,
        protect_usage,
        [request.cla, request.ins, request.p1, request.p2],
        &request.key_header,
        &request.challenge,
        request.fold,
    )
}

/// The secure-messaging command `command` (CLA INS P1 P2) writing the clear `key` (of
/// `key_usage`) with `key_header` under the clear `protect` (of `protect_usage`); the usages
/// were checked by the caller to be a card key or card master key, and a card master key or
/// vendor transport key. A vendor transport key protects only the write of a card master key.
#[allow(clippy::too_many_arguments)]
pub fn write_key_apdu(
    key: &SecretKey,
    key_usage: KeyUsage,
    protect: &SecretKey,
    protect_usage: KeyUsage,
    command: [u8; 4],
    key_header: &[u8],
    challenge: &[u8],
    fold: MacFold,
) -> Result<WriteKeyCommand> {
    // A blank card's first write is its master key; a vendor key protects nothing else.
    if protect_usage == KeyUsage::VendorTransport && key_usage != KeyUsage::CardMasterKey {
        return Err(wrong_usage(
            protect_usage,
            "protect the write of anything but a card master key",
        ));
    }
    let mut data = Zeroizing::new(Vec::with_capacity(key_header.len() + key.len()));
    data.extend_from_slice(key_header);
    data.extend_from_slice(key.secret_bytes());
    let apdu = secure_messaging_apdu(protect, command, &data, challenge, fold)?;
    Ok(WriteKeyCommand {
        apdu,
        kcv: kcv::compute_default(key)?,
    })
}

/// Whether a key of `usage` may wrap a key block (a key-block protection key, KEK).
pub const fn is_kek(usage: KeyUsage) -> bool {
    matches!(usage, KeyUsage::KeyBlockProtection)
}

/// Whether a key of `usage` may be asked to be exported at all (whether it may leave is decided
/// after, by usage and token: [`export_block`]).
pub const fn may_be_asked_for_export(usage: KeyUsage) -> bool {
    !matches!(usage, KeyUsage::KeyBlockProtection | KeyUsage::AuditMac)
}

/// Whether a key of `usage` may be the parent of a derivation (a hierarchy key).
pub const fn is_parent(usage: KeyUsage) -> bool {
    usage.level().is_some()
}

/// Whether a key of `usage` may compute the registry's index hashes (HMAC-SHA256).
pub const fn is_registry_index(usage: KeyUsage) -> bool {
    matches!(usage, KeyUsage::RegistryIndex)
}

/// Whether a key of `usage` may seal and open the registry's personal fields (AES-256-GCM).
pub const fn is_registry_data(usage: KeyUsage) -> bool {
    matches!(usage, KeyUsage::RegistryData)
}

/// Whether a key of `usage` may be the key a card write writes.
pub const fn may_be_written(usage: KeyUsage) -> bool {
    matches!(usage, KeyUsage::CardKey | KeyUsage::CardMasterKey)
}

/// Whether a key of `usage` may protect a card write.
pub const fn may_protect_a_write(usage: KeyUsage) -> bool {
    matches!(usage, KeyUsage::CardMasterKey | KeyUsage::VendorTransport)
}

/// Refuses a new transport key of `alg` the HSM must not make: a key-block protection key is
/// TDES (2- or 3-key) or AES ([`check_algorithm`]), and never exportable.
pub fn check_transport_key(alg: Algorithm) -> Result<()> {
    check_new_key(KeySpec {
        algorithm: alg,
        usage: KeyUsage::KeyBlockProtection,
        exportability: Exportability::NonExportable,
    })
}

/// `key` split into `count` (2..=9) components for its recipient's custodians: `count - 1`
/// fresh random values of the key's length and the last one their XOR with the key, each as
/// its hex text with its own KCV (default method) as check value — what a custodian types
/// into a component ceremony ([`form_key`] of them gives `key` back).
pub fn split_into_components(key: &SecretKey, count: u8) -> Result<Vec<hsm_api::IssuedShare>> {
    check_component_count(usize::from(count))?;
    let alg = key.algorithm();
    let mut last = Zeroizing::new(key.secret_bytes().to_vec());
    let mut parts = Vec::with_capacity(usize::from(count));
    for _ in 1..count {
        let part = crate::crypto::random::generate_key(alg)?;
        last.iter_mut()
            .zip(part.secret_bytes())
            .for_each(|(l, p)| *l ^= p);
        parts.push(issued_component(&part)?);
    }
    parts.push(issued_component(&SecretKey::new(alg, &last)?)?);
    Ok(parts)
}

/// One component as handed out: its hex text and its KCV.
fn issued_component(part: &SecretKey) -> Result<hsm_api::IssuedShare> {
    Ok(hsm_api::IssuedShare {
        share: hsm_api::LmkShare::new(crate::crypto::key::secret_hex(part.secret_bytes())),
        check_value: kcv::compute_default(part)?.to_hex(),
    })
}

/// The key-block version a transport key of `alg` wraps blocks in: `B` for TDES, `D` for AES.
pub fn kbpk_version(alg: Algorithm) -> Result<KeyBlockVersion> {
    match alg {
        Algorithm::Tdes2 | Algorithm::Tdes3 => Ok(KeyBlockVersion::B),
        a if a.is_aes() => Ok(KeyBlockVersion::D),
        a => Err(Error::Unsupported {
            op: "key-block protection".into(),
            alg: a,
        }),
    }
}

/// The new transport key `new`, generated in the same call, as a TR-31 block under the
/// recipient's current transport key of algorithm `kek_alg`, wrapped by `wrap` — **the one
/// exception** to "a key-block protection key never leaves" ([`export_block_with`] refuses
/// every stored one): only a key made in that call, only under a key of its own family (TDES
/// under TDES as version `B`, AES under AES as `D`), with the `K1` header, mode `B`,
/// non-exportable for its recipient, and its KCV block.
pub fn export_new_transport_key(
    kek_alg: Algorithm,
    new: &SecretKey,
    wrap: impl FnOnce(&KeyBlockHeader, &SecretKey) -> Result<String>,
) -> Result<String> {
    check_transport_key(new.algorithm())?;
    let version = kbpk_version(kek_alg)?;
    if kbpk_version(new.algorithm())? != version {
        return Err(wrong_usage(
            KeyUsage::KeyBlockProtection,
            "carry a new transport key of another family",
        ));
    }
    let kcv = kcv::compute_default(new)?;
    let header = lmk::key_block_header(
        version,
        KeyUsage::KeyBlockProtection,
        new.algorithm(),
        tr31::Exportability::NonExportable,
    )?
    .with_optional_block(OptionalBlock::key_check_value_of(&kcv)?);
    wrap(&header, new)
}

/// Whether a key of `usage` may be backed up in custodians' shares
/// ([`hsm_api::Hsm::backup_key`]): the roots of the hierarchies, national and provincial card-
/// and master-key derivation keys, which nothing above them in this HSM can re-derive. City keys
/// are derived from these again; card keys and card master keys are derived per card; the LMK
/// has its own shares; transport, audit, list-signing and registry keys are re-issued, not
/// escrowed (SECURITY.md).
pub const fn may_be_backed_up(usage: KeyUsage) -> bool {
    matches!(
        usage,
        KeyUsage::CardDerivation(HierarchyLevel::National | HierarchyLevel::Province)
            | KeyUsage::MasterKeyDerivation(HierarchyLevel::National | HierarchyLevel::Province)
    )
}
