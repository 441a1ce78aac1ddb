//! The trait's types to and from their `sscard.hsm.v1` messages.
//!
//! Every `from_wire` returns `None` for a value outside the protocol (an unspecified or unknown
//! enum number, a missing message): the server answers it with `INVALID_ARGUMENT`, the client
//! with [`hsm_api::Error::Protocol`].

use hsm_api::{
    Algorithm, BatchDelivery, BatchItem, BatchOutput, Derivation, Dispersion, Error, Exportability,
    ExportedKey, Factor, HierarchyLevel, HsmState, HsmStatus, IssuedShare, Kcv, KcvMethod,
    KeyBlockVersion, KeySource, KeySpec, KeyToken, KeyUsage, ListSignature, LmkShare, MacFold,
    Protector, Result, SecretParts, UnsealProgress, WrappedKey, WriteKeyCommand, WriteKeyDelivery,
};
use zeroize::Zeroizing;

use super::proto;
use super::status::{error_from_wire, error_to_wire};

/// A `usize` on the wire (lossless on every platform Rust supports today).
pub(crate) fn wide(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// A wire `u64` back to `usize`.
pub(crate) fn narrow(n: u64) -> Option<usize> {
    usize::try_from(n).ok()
}

pub(crate) fn algorithm_to_wire(alg: Algorithm) -> proto::Algorithm {
    match alg {
        Algorithm::Des => proto::Algorithm::Des,
        Algorithm::Tdes2 => proto::Algorithm::Tdes2,
        Algorithm::Tdes3 => proto::Algorithm::Tdes3,
        Algorithm::Aes128 => proto::Algorithm::Aes128,
        Algorithm::Aes192 => proto::Algorithm::Aes192,
        Algorithm::Aes256 => proto::Algorithm::Aes256,
        Algorithm::Sm4 => proto::Algorithm::Sm4,
    }
}

pub(crate) fn algorithm_from_wire(value: i32) -> Option<Algorithm> {
    Some(match proto::Algorithm::try_from(value).ok()? {
        proto::Algorithm::Unspecified => return None,
        proto::Algorithm::Des => Algorithm::Des,
        proto::Algorithm::Tdes2 => Algorithm::Tdes2,
        proto::Algorithm::Tdes3 => Algorithm::Tdes3,
        proto::Algorithm::Aes128 => Algorithm::Aes128,
        proto::Algorithm::Aes192 => Algorithm::Aes192,
        proto::Algorithm::Aes256 => Algorithm::Aes256,
        proto::Algorithm::Sm4 => Algorithm::Sm4,
    })
}

/// A usage on the wire: the usage and, for the two derivation usages, the level beside it.
pub(crate) fn usage_to_wire(usage: KeyUsage) -> (proto::KeyUsage, proto::HierarchyLevel) {
    let level = match usage.level() {
        None => proto::HierarchyLevel::Unspecified,
        Some(HierarchyLevel::National) => proto::HierarchyLevel::National,
        Some(HierarchyLevel::Province) => proto::HierarchyLevel::Province,
        Some(HierarchyLevel::City) => proto::HierarchyLevel::City,
    };
    let usage = match usage {
        KeyUsage::KeyBlockProtection => proto::KeyUsage::KeyBlockProtection,
        KeyUsage::CardDerivation(_) => proto::KeyUsage::CardDerivation,
        KeyUsage::MasterKeyDerivation(_) => proto::KeyUsage::MasterKeyDerivation,
        KeyUsage::CardKey => proto::KeyUsage::CardKey,
        KeyUsage::CardMasterKey => proto::KeyUsage::CardMasterKey,
        KeyUsage::VendorTransport => proto::KeyUsage::VendorTransport,
        KeyUsage::AuditMac => proto::KeyUsage::AuditMac,
        KeyUsage::ListSigning(ListSignature::EcdsaP256) => proto::KeyUsage::ListSigning,
        KeyUsage::ListSigning(ListSignature::Sm2) => proto::KeyUsage::ListSigningSm2,
        KeyUsage::RegistryIndex => proto::KeyUsage::RegistryIndex,
        KeyUsage::RegistryData => proto::KeyUsage::RegistryData,
    };
    (usage, level)
}

/// A usage from the wire: a derivation usage needs a level, every other usage has none.
pub(crate) fn usage_from_wire(value: i32, level: i32) -> Option<KeyUsage> {
    let level = match proto::HierarchyLevel::try_from(level).ok()? {
        proto::HierarchyLevel::Unspecified => None,
        proto::HierarchyLevel::National => Some(HierarchyLevel::National),
        proto::HierarchyLevel::Province => Some(HierarchyLevel::Province),
        proto::HierarchyLevel::City => Some(HierarchyLevel::City),
    };
    Some(match (proto::KeyUsage::try_from(value).ok()?, level) {
        (proto::KeyUsage::CardDerivation, Some(level)) => KeyUsage::CardDerivation(level),
        (proto::KeyUsage::MasterKeyDerivation, Some(level)) => KeyUsage::MasterKeyDerivation(level),
        (_, Some(_)) => return None,
        (proto::KeyUsage::Unspecified, None) => return None,
        (proto::KeyUsage::CardDerivation | proto::KeyUsage::MasterKeyDerivation, None) => {
            return None;
        }
        (proto::KeyUsage::KeyBlockProtection, None) => KeyUsage::KeyBlockProtection,
        (proto::KeyUsage::CardKey, None) => KeyUsage::CardKey,
        (proto::KeyUsage::CardMasterKey, None) => KeyUsage::CardMasterKey,
        (proto::KeyUsage::VendorTransport, None) => KeyUsage::VendorTransport,
        (proto::KeyUsage::AuditMac, None) => KeyUsage::AuditMac,
        (proto::KeyUsage::ListSigning, None) => KeyUsage::ListSigning(ListSignature::EcdsaP256),
        (proto::KeyUsage::ListSigningSm2, None) => KeyUsage::ListSigning(ListSignature::Sm2),
        (proto::KeyUsage::RegistryIndex, None) => KeyUsage::RegistryIndex,
        (proto::KeyUsage::RegistryData, None) => KeyUsage::RegistryData,
    })
}

pub(crate) fn exportability_to_wire(value: Exportability) -> proto::Exportability {
    match value {
        Exportability::Exportable => proto::Exportability::Exportable,
        Exportability::NonExportable => proto::Exportability::NonExportable,
    }
}

pub(crate) fn exportability_from_wire(value: i32) -> Option<Exportability> {
    Some(match proto::Exportability::try_from(value).ok()? {
        proto::Exportability::Unspecified => return None,
        proto::Exportability::Exportable => Exportability::Exportable,
        proto::Exportability::NonExportable => Exportability::NonExportable,
    })
}

pub(crate) fn dispersion_to_wire(method: Dispersion) -> proto::Dispersion {
    match method {
        Dispersion::PbocTdes => proto::Dispersion::PbocTdes,
        Dispersion::PbocDes => proto::Dispersion::PbocDes,
        Dispersion::Sm4Complement => proto::Dispersion::Sm4Complement,
        Dispersion::EmvOptionA => proto::Dispersion::EmvOptionA,
    }
}

pub(crate) fn dispersion_from_wire(value: i32) -> Option<Dispersion> {
    Some(match proto::Dispersion::try_from(value).ok()? {
        proto::Dispersion::Unspecified => return None,
        proto::Dispersion::PbocTdes => Dispersion::PbocTdes,
        proto::Dispersion::PbocDes => Dispersion::PbocDes,
        proto::Dispersion::Sm4Complement => Dispersion::Sm4Complement,
        proto::Dispersion::EmvOptionA => Dispersion::EmvOptionA,
    })
}

pub(crate) fn version_to_wire(version: KeyBlockVersion) -> proto::KeyBlockVersion {
    match version {
        KeyBlockVersion::B => proto::KeyBlockVersion::B,
        KeyBlockVersion::D => proto::KeyBlockVersion::D,
    }
}

pub(crate) fn version_from_wire(value: i32) -> Option<KeyBlockVersion> {
    Some(match proto::KeyBlockVersion::try_from(value).ok()? {
        proto::KeyBlockVersion::Unspecified => return None,
        proto::KeyBlockVersion::B => KeyBlockVersion::B,
        proto::KeyBlockVersion::D => KeyBlockVersion::D,
    })
}

pub(crate) fn fold_to_wire(fold: MacFold) -> proto::MacFold {
    match fold {
        MacFold::Xor4 => proto::MacFold::Xor4,
        MacFold::First4 => proto::MacFold::First4,
    }
}

pub(crate) fn fold_from_wire(value: i32) -> Option<MacFold> {
    Some(match proto::MacFold::try_from(value).ok()? {
        proto::MacFold::Unspecified => return None,
        proto::MacFold::Xor4 => MacFold::Xor4,
        proto::MacFold::First4 => MacFold::First4,
    })
}

pub(crate) fn kcv_to_wire(kcv: &Kcv) -> proto::KeyCheckValue {
    let method = match kcv.method() {
        KcvMethod::EncryptZeros => proto::KcvMethod::EncryptZeros,
        KcvMethod::Cmac => proto::KcvMethod::Cmac,
    };
    proto::KeyCheckValue {
        method: method.into(),
        value: kcv.value().to_vec(),
    }
}

pub(crate) fn kcv_from_wire(kcv: Option<proto::KeyCheckValue>) -> Option<Kcv> {
    let kcv = kcv?;
    let method = match proto::KcvMethod::try_from(kcv.method).ok()? {
        proto::KcvMethod::Unspecified => return None,
        proto::KcvMethod::EncryptZeros => KcvMethod::EncryptZeros,
        proto::KcvMethod::Cmac => KcvMethod::Cmac,
    };
    Some(Kcv::from_parts(method, kcv.value))
}

pub(crate) fn spec_to_wire(spec: KeySpec) -> proto::KeySpec {
    let (usage, level) = usage_to_wire(spec.usage);
    proto::KeySpec {
        algorithm: algorithm_to_wire(spec.algorithm).into(),
        usage: usage.into(),
        exportability: exportability_to_wire(spec.exportability).into(),
        level: level.into(),
    }
}

pub(crate) fn spec_from_wire(spec: Option<proto::KeySpec>) -> Option<KeySpec> {
    let spec = spec?;
    Some(KeySpec {
        algorithm: algorithm_from_wire(spec.algorithm)?,
        usage: usage_from_wire(spec.usage, spec.level)?,
        exportability: exportability_from_wire(spec.exportability)?,
    })
}

pub(crate) fn wrapped_to_wire(key: &WrappedKey) -> proto::WrappedKey {
    proto::WrappedKey {
        token: key.token.as_str().to_owned(),
        kcv: Some(kcv_to_wire(&key.kcv)),
    }
}

pub(crate) fn wrapped_from_wire(key: proto::WrappedKey) -> Option<WrappedKey> {
    Some(WrappedKey {
        token: hsm_api::KeyToken::from_stored(key.token),
        kcv: kcv_from_wire(key.kcv)?,
    })
}

pub(crate) fn accumulated_to_wire(step: &hsm_api::Accumulated) -> proto::AddComponentResponse {
    use proto::add_component_response::Result as Wire;
    let result = match step {
        hsm_api::Accumulated::Partial(p) => Wire::Partial(proto::PartialKey {
            token: p.token.as_str().to_owned(),
            received: p.received.into(),
            components: p.components.into(),
        }),
        hsm_api::Accumulated::Formed(key) => Wire::Formed(wrapped_to_wire(key)),
    };
    proto::AddComponentResponse {
        result: Some(result),
    }
}

pub(crate) fn accumulated_from_wire(
    answer: proto::AddComponentResponse,
) -> Option<hsm_api::Accumulated> {
    use proto::add_component_response::Result as Wire;
    Some(match answer.result? {
        Wire::Partial(p) => hsm_api::Accumulated::Partial(hsm_api::PartialKey {
            token: hsm_api::KeyToken::from_stored(p.token),
            received: u8::try_from(p.received).ok()?,
            components: u8::try_from(p.components).ok()?,
        }),
        Wire::Formed(key) => hsm_api::Accumulated::Formed(wrapped_from_wire(key)?),
    })
}

pub(crate) fn backup_to_wire(backup: &hsm_api::KeyBackup) -> proto::KeyBackup {
    proto::KeyBackup {
        parts: Some(parts_to_wire(&backup.parts)),
        backup: backup.backup.clone(),
        spec: Some(spec_to_wire(backup.spec)),
        kcv: Some(kcv_to_wire(&backup.kcv)),
    }
}

pub(crate) fn backup_from_wire(backup: proto::KeyBackup) -> Option<hsm_api::KeyBackup> {
    Some(hsm_api::KeyBackup {
        parts: parts_from_wire(backup.parts).ok()??,
        backup: backup.backup,
        spec: spec_from_wire(backup.spec)?,
        kcv: kcv_from_wire(backup.kcv)?,
    })
}

pub(crate) fn restored_to_wire(step: &hsm_api::Restored) -> proto::RestoreShareResponse {
    use proto::restore_share_response::Result as Wire;
    let result = match step {
        hsm_api::Restored::Partial(p) => Wire::Partial(proto::PartialRestore {
            token: p.token.as_str().to_owned(),
            received: p.received.into(),
            threshold: p.threshold.into(),
        }),
        hsm_api::Restored::Formed(key) => Wire::Formed(wrapped_to_wire(key)),
    };
    proto::RestoreShareResponse {
        result: Some(result),
    }
}

pub(crate) fn restored_from_wire(answer: proto::RestoreShareResponse) -> Option<hsm_api::Restored> {
    use proto::restore_share_response::Result as Wire;
    Some(match answer.result? {
        Wire::Partial(p) => hsm_api::Restored::Partial(hsm_api::PartialRestore {
            token: hsm_api::KeyToken::from_stored(p.token),
            received: u8::try_from(p.received).ok()?,
            threshold: u8::try_from(p.threshold).ok()?,
        }),
        Wire::Formed(key) => hsm_api::Restored::Formed(wrapped_from_wire(key)?),
    })
}

/// A share on its way out to its custodian. The wire copy is not zeroized by prost.
pub(crate) fn share_to_wire(share: &IssuedShare) -> proto::IssuedShare {
    proto::IssuedShare {
        share: share.share.secret_text().to_owned(),
        check_value: share.check_value.clone(),
    }
}

/// A share received from the HSM; its text moves into a zeroizing buffer.
pub(crate) fn share_from_wire(share: proto::IssuedShare) -> IssuedShare {
    IssuedShare {
        share: LmkShare::new(Zeroizing::new(share.share)),
        check_value: share.check_value,
    }
}

/// The public description of a set of secret parts.
pub(crate) fn parts_to_wire(parts: &SecretParts) -> proto::SecretParts {
    proto::SecretParts {
        set: parts.set.clone(),
        count: parts.count.into(),
        threshold: parts.threshold.into(),
    }
}

/// A set of secret parts as the HSM named it (absent: none made); counts out of range are
/// [`Error::Protocol`].
pub(crate) fn parts_from_wire(parts: Option<proto::SecretParts>) -> Result<Option<SecretParts>> {
    parts
        .map(|p| {
            Ok(SecretParts {
                set: p.set,
                count: u8::try_from(p.count).map_err(|_| Error::Protocol)?,
                threshold: u8::try_from(p.threshold).map_err(|_| Error::Protocol)?,
            })
        })
        .transpose()
}

pub(crate) fn progress_to_wire(progress: UnsealProgress) -> proto::UnsealProgress {
    proto::UnsealProgress {
        submitted: progress.submitted.into(),
        threshold: progress.threshold.into(),
        unsealed: progress.unsealed,
    }
}

pub(crate) fn progress_from_wire(progress: proto::UnsealProgress) -> Option<UnsealProgress> {
    Some(UnsealProgress {
        submitted: u8::try_from(progress.submitted).ok()?,
        threshold: u8::try_from(progress.threshold).ok()?,
        unsealed: progress.unsealed,
    })
}

pub(crate) fn status_to_wire(status: &HsmStatus) -> proto::HsmStatus {
    let state = match status.state {
        HsmState::Uninitialised => proto::HsmState::Uninitialised,
        HsmState::Sealed => proto::HsmState::Sealed,
        HsmState::Operational => proto::HsmState::Operational,
        HsmState::SelfTestFailed => proto::HsmState::SelfTestFailed,
    };
    proto::HsmStatus {
        state: state.into(),
        secure: status.secure,
        dangerous_test_lmk: status.dangerous_test_lmk,
        lmk_kcv: status.lmk_kcv.as_ref().map(kcv_to_wire),
        unseal: status.unseal.map(progress_to_wire),
        self_test_failure: status.self_test_failure.clone(),
        self_test_passed: status.self_test_passed,
        cached_keys: wide(status.cached_keys),
        tampered: status.tampered,
    }
}

pub(crate) fn status_from_wire(status: proto::HsmStatus) -> Option<HsmStatus> {
    let state = match proto::HsmState::try_from(status.state).ok()? {
        proto::HsmState::Unspecified => return None,
        proto::HsmState::Uninitialised => HsmState::Uninitialised,
        proto::HsmState::Sealed => HsmState::Sealed,
        proto::HsmState::Operational => HsmState::Operational,
        proto::HsmState::SelfTestFailed => HsmState::SelfTestFailed,
    };
    let lmk_kcv = match status.lmk_kcv {
        Some(kcv) => Some(kcv_from_wire(Some(kcv))?),
        None => None,
    };
    let unseal = match status.unseal {
        Some(progress) => Some(progress_from_wire(progress)?),
        None => None,
    };
    Some(HsmStatus {
        state,
        secure: status.secure,
        dangerous_test_lmk: status.dangerous_test_lmk,
        lmk_kcv,
        unseal,
        self_test_failure: status.self_test_failure,
        self_test_passed: status.self_test_passed,
        cached_keys: narrow(status.cached_keys)?,
        tampered: status.tampered,
    })
}

// ------------------------------------------------------------------------------- batches

fn derivation_to_wire(d: &Derivation) -> proto::Derivation {
    let (usage, level) = usage_to_wire(d.child_usage);
    proto::Derivation {
        parent: d.parent.as_str().to_owned(),
        method: dispersion_to_wire(d.method).into(),
        factors: d.factors.iter().map(|f| f.as_bytes().to_vec()).collect(),
        child_usage: usage.into(),
        child_level: level.into(),
    }
}

fn derivation_from_wire(d: proto::Derivation) -> Option<Derivation> {
    Some(Derivation {
        parent: KeyToken::from_stored(d.parent),
        method: dispersion_from_wire(d.method)?,
        factors: d
            .factors
            .iter()
            .map(|f| Factor::from_bytes(f).ok())
            .collect::<Option<_>>()?,
        child_usage: usage_from_wire(d.child_usage, d.child_level)?,
    })
}

fn source_to_wire(source: &KeySource) -> proto::KeySource {
    use proto::key_source::Source;
    proto::KeySource {
        source: Some(match source {
            KeySource::Token(token) => Source::Token(token.as_str().to_owned()),
            KeySource::Derived(d) => Source::Derived(derivation_to_wire(d)),
        }),
    }
}

fn source_from_wire(source: Option<proto::KeySource>) -> Option<KeySource> {
    use proto::key_source::Source;
    Some(match source?.source? {
        Source::Token(token) => KeySource::Token(KeyToken::from_stored(token)),
        Source::Derived(d) => KeySource::Derived(derivation_from_wire(d)?),
    })
}

pub(crate) fn batch_item_to_wire(item: &BatchItem) -> proto::BatchItem {
    use proto::batch_item::Delivery;
    use proto::write_key_delivery::Protect;
    let delivery = match &item.delivery {
        BatchDelivery::Export { kbpk, version } => Delivery::Export(proto::ExportDelivery {
            kbpk: kbpk.as_str().to_owned(),
            version: version_to_wire(*version).into(),
        }),
        BatchDelivery::WriteKey(w) => Delivery::WriteKey(proto::WriteKeyDelivery {
            protect: Some(match &w.protect {
                // An index past u32 is out of range on the server as well.
                Protector::Item(j) => Protect::ProtectItem(u32::try_from(*j).unwrap_or(u32::MAX)),
                Protector::Key(source) => Protect::ProtectKey(source_to_wire(source)),
            }),
            cla: w.cla.into(),
            ins: w.ins.into(),
            p1: w.p1.into(),
            p2: w.p2.into(),
            key_header: w.key_header.clone(),
            challenge: w.challenge.clone(),
            fold: fold_to_wire(w.fold).into(),
        }),
    };
    proto::BatchItem {
        key: Some(source_to_wire(&item.key)),
        delivery: Some(delivery),
    }
}

pub(crate) fn batch_item_from_wire(item: proto::BatchItem) -> Option<BatchItem> {
    use proto::batch_item::Delivery;
    use proto::write_key_delivery::Protect;
    let byte = |v: u32| u8::try_from(v).ok();
    let delivery = match item.delivery? {
        Delivery::Export(e) => BatchDelivery::Export {
            kbpk: KeyToken::from_stored(e.kbpk),
            version: version_from_wire(e.version)?,
        },
        Delivery::WriteKey(w) => BatchDelivery::WriteKey(WriteKeyDelivery {
            protect: match w.protect? {
                Protect::ProtectItem(j) => Protector::Item(usize::try_from(j).ok()?),
                Protect::ProtectKey(source) => Protector::Key(source_from_wire(Some(source))?),
            },
            cla: byte(w.cla)?,
            ins: byte(w.ins)?,
            p1: byte(w.p1)?,
            p2: byte(w.p2)?,
            key_header: w.key_header,
            challenge: w.challenge,
            fold: fold_from_wire(w.fold)?,
        }),
    };
    Some(BatchItem {
        key: source_from_wire(item.key)?,
        delivery,
    })
}

pub(crate) fn batch_result_to_wire(result: &Result<BatchOutput>) -> proto::BatchResult {
    use proto::batch_result::Result as Wire;
    proto::BatchResult {
        result: Some(match result {
            Ok(BatchOutput::Exported(e)) => Wire::Exported(proto::ExportedKey {
                block: e.block.clone(),
                kcv: Some(kcv_to_wire(&e.kcv)),
            }),
            Ok(BatchOutput::WriteKey(c)) => Wire::WriteKey(proto::WriteKeyCommand {
                apdu: c.apdu.clone(),
                kcv: Some(kcv_to_wire(&c.kcv)),
            }),
            Err(err) => Wire::Error(error_to_wire(err)),
        }),
    }
}

/// An item's result from the wire; `None` if it is not one.
pub(crate) fn batch_result_from_wire(result: proto::BatchResult) -> Option<Result<BatchOutput>> {
    use proto::batch_result::Result as Wire;
    Some(match result.result? {
        Wire::Exported(e) => Ok(BatchOutput::Exported(ExportedKey {
            block: e.block,
            kcv: kcv_from_wire(e.kcv)?,
        })),
        Wire::WriteKey(c) => Ok(BatchOutput::WriteKey(WriteKeyCommand {
            apdu: c.apdu,
            kcv: kcv_from_wire(c.kcv)?,
        })),
        Wire::Error(e) => Err(error_from_wire(e)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip() {
        for alg in Algorithm::ALL {
            assert_eq!(
                algorithm_from_wire(algorithm_to_wire(alg).into()),
                Some(alg)
            );
        }
        for usage in KeyUsage::ALL {
            let (u, l) = usage_to_wire(usage);
            assert_eq!(usage_from_wire(u.into(), l.into()), Some(usage));
        }
        // A derivation usage without its level, or another usage with one, is refused.
        let city = proto::HierarchyLevel::City as i32;
        assert_eq!(
            usage_from_wire(proto::KeyUsage::CardDerivation as i32, 0),
            None
        );
        assert_eq!(usage_from_wire(proto::KeyUsage::CardKey as i32, city), None);
        for e in [Exportability::Exportable, Exportability::NonExportable] {
            assert_eq!(
                exportability_from_wire(exportability_to_wire(e).into()),
                Some(e)
            );
        }
        for d in Dispersion::ALL {
            assert_eq!(dispersion_from_wire(dispersion_to_wire(d).into()), Some(d));
        }
        for v in [KeyBlockVersion::B, KeyBlockVersion::D] {
            assert_eq!(version_from_wire(version_to_wire(v).into()), Some(v));
        }
        for f in [MacFold::Xor4, MacFold::First4] {
            assert_eq!(fold_from_wire(fold_to_wire(f).into()), Some(f));
        }
        // Unspecified and unknown numbers are refused, never defaulted.
        assert_eq!(algorithm_from_wire(0), None);
        assert_eq!(algorithm_from_wire(99), None);
        assert_eq!(usage_from_wire(0, 0), None);
        assert_eq!(kcv_from_wire(None), None);
        assert_eq!(
            kcv_from_wire(Some(proto::KeyCheckValue {
                method: 0,
                value: vec![1, 2, 3]
            })),
            None
        );
    }

    #[test]
    fn status_round_trips() {
        let status = HsmStatus {
            state: HsmState::Sealed,
            secure: false,
            dangerous_test_lmk: true,
            lmk_kcv: Some(Kcv::from_parts(KcvMethod::Cmac, vec![1, 2, 3, 4, 5])),
            unseal: Some(UnsealProgress {
                submitted: 1,
                threshold: 2,
                unsealed: false,
            }),
            self_test_failure: Some("x".to_owned()),
            self_test_passed: false,
            cached_keys: 7,
            tampered: true,
        };
        assert_eq!(status_from_wire(status_to_wire(&status)), Some(status));
    }
}
