//! Between the service's types and the protobuf messages.

use hsm_api::Algorithm;
use hsm_api::{Kcv, KcvMethod};
use tonic::Status;
use zeroize::Zeroizing;

use crate::error::{Error, Refusal, Result};
use crate::proto::kms::v1 as pb;
use crate::registry::lifecycle::Transition;
use crate::service::{self, CardRequest, ComponentInput, DeliveredForm};
use crate::state::records::{self, CardStatus, Level};

pub(super) fn card_request(card: Option<pb::CardIdentity>) -> Result<CardRequest, Status> {
    let c = card.ok_or_else(|| required("card"))?;
    Ok(CardRequest {
        card_identifier: c.card_identifier,
        card_number: c.card_number,
        social_security_number: c.social_security_number,
        atr: c.atr,
    })
}

pub(super) fn pb_algorithm(a: Algorithm) -> i32 {
    (match a {
        Algorithm::Des => pb::KeyAlgorithm::Des,
        Algorithm::Tdes2 => pb::KeyAlgorithm::Tdes2,
        Algorithm::Tdes3 => pb::KeyAlgorithm::Tdes3,
        Algorithm::Aes128 => pb::KeyAlgorithm::Aes128,
        Algorithm::Aes192 => pb::KeyAlgorithm::Aes192,
        Algorithm::Aes256 => pb::KeyAlgorithm::Aes256,
        Algorithm::Sm4 => pb::KeyAlgorithm::Sm4,
    }) as i32
}

pub(super) fn pb_kcv(k: &Kcv) -> pb::KeyCheckValue {
    pb::KeyCheckValue {
        method: (match k.method() {
            KcvMethod::EncryptZeros => pb::KcvMethod::EncryptZeros,
            KcvMethod::Cmac => pb::KcvMethod::CmacZeros,
        }) as i32,
        value: k.value().to_vec(),
    }
}

pub(super) fn pb_level(l: Level) -> i32 {
    (match l {
        Level::National => pb::KeyLevel::National,
        Level::Province => pb::KeyLevel::Provincial,
        Level::City => pb::KeyLevel::City,
        Level::Card => pb::KeyLevel::Card,
    }) as i32
}

pub(super) fn pb_delivered(d: service::Delivered) -> pb::DeliveredKey {
    pb::DeliveredKey {
        key_name: d.key_name,
        directory: d.directory,
        key_id: u32::from(d.key_id),
        key_version: u32::from(d.key_version),
        algorithm: pb_algorithm(d.algorithm),
        kcv: Some(pb_kcv(&d.kcv)),
        level: pb_level(d.level),
        root_version: d.root_version,
        form: Some(match d.form {
            DeliveredForm::Tr31(b) => pb::delivered_key::Form::Tr31Block(b),
            DeliveredForm::WriteKeyApdu(a) => pb::delivered_key::Form::WriteKeyApdu(a),
        }),
        psam_usage: d.psam.map_or(0, |p| u32::from(p.usage)),
        psam_key_id: d.psam.map_or(0, |p| u32::from(p.key_id)),
        psam_key_version: d.psam.map_or(0, |p| u32::from(p.key_version)),
    }
}

pub(super) fn pb_card(c: records::Card) -> pb::CardRecord {
    pb::CardRecord {
        card_identifier: c.card_identifier,
        card_number_masked: c.personal.card_number_masked,
        social_security_number_masked: c.personal.ssn_masked,
        region: c.region,
        template_id: c.template_id,
        status: (match c.status {
            CardStatus::Registered => pb::CardStatus::Registered,
            CardStatus::Accepted => pb::CardStatus::Accepted,
            CardStatus::Blacklisted => pb::CardStatus::Blacklisted,
            CardStatus::Rejected => pb::CardStatus::Rejected,
            CardStatus::Initialised => pb::CardStatus::Initialised,
            CardStatus::Personalised => pb::CardStatus::Personalised,
            CardStatus::Active => pb::CardStatus::Active,
            CardStatus::Suspended => pb::CardStatus::Suspended,
            CardStatus::Lost => pb::CardStatus::Lost,
            CardStatus::Cancelled => pb::CardStatus::Cancelled,
            CardStatus::Replaced => pb::CardStatus::Replaced,
        }) as i32,
        issued_root_versions: c.issued_root_versions.into_iter().collect(),
        releases: c.releases,
        replaces_card_identifier: c.replaces.unwrap_or_default(),
    }
}

pub(super) fn pb_key_record(r: records::KeyRecord) -> pb::KeyRecord {
    let kcv = KcvMethod::from_name(&r.kcv_method)
        .zip(hex::decode(&r.kcv).ok())
        .map(|(m, v)| pb_kcv(&Kcv::from_parts(m, v)));
    pb::KeyRecord {
        template_id: r.template_id,
        key_name: r.key_name,
        level: pb_level(r.level),
        region: r.region,
        version: r.version,
        algorithm: Algorithm::from_name(&r.algorithm)
            .map(pb_algorithm)
            .unwrap_or_default(),
        kcv,
        active: r.active,
        ministry_psam_permission: r.psam_permitted,
    }
}

pub(super) fn components(list: Vec<pb::Component>) -> Vec<ComponentInput> {
    list.into_iter()
        .map(|c| ComponentInput {
            hex: Zeroizing::new(c.hex),
            kcv_hex: c.kcv_hex,
        })
        .collect()
}

pub(super) fn transition_of(transition: i32) -> Result<Transition, Status> {
    use pb::CardTransition as T;
    match T::try_from(transition) {
        Ok(T::Reject) => Ok(Transition::Reject),
        Ok(T::Activate) => Ok(Transition::Activate),
        Ok(T::Suspend) => Ok(Transition::Suspend),
        Ok(T::Resume) => Ok(Transition::Resume),
        Ok(T::ReportLost) => Ok(Transition::ReportLost),
        Ok(T::Cancel) => Ok(Transition::Cancel),
        // 0 and values this version does not know are "unset".
        Ok(T::Unspecified) | Err(_) => Err(required("transition")),
    }
}

pub(super) fn level_of(level: i32) -> Result<Level, Status> {
    match pb::KeyLevel::try_from(level) {
        Ok(pb::KeyLevel::National) => Ok(Level::National),
        Ok(pb::KeyLevel::Provincial) => Ok(Level::Province),
        // The root of a city-owned key, at that city's deployment (N9).
        Ok(pb::KeyLevel::City) => Ok(Level::City),
        // 0 is "unset", not a level.
        Ok(pb::KeyLevel::Unspecified) => Err(required("level")),
        _ => Err(super::to_status(&Error::InvalidArgument {
            field: "level",
            reason: Refusal::RootLevel,
        })),
    }
}

fn codes(joined: &str) -> Vec<String> {
    joined
        .split(';')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

pub(super) fn pb_batch_report(
    b: crate::registry::batch::StoredBatch,
    resubmitted: bool,
) -> pb::ApplicantBatchReport {
    use crate::registry::reasons::Reasons;
    pb::ApplicantBatchReport {
        batch_id: b.id,
        sha256: b.sha256,
        region: b.region,
        submitter: b.submitter,
        encoding: b.encoding,
        rows: b.rows,
        accepted: b.accepted,
        rejected: b.rejected,
        resubmitted,
        lines: b
            .lines
            .into_iter()
            .map(|r| pb::LineRun {
                first_line: r.first,
                count: r.count,
            })
            .collect(),
        rejected_rows: b
            .rejections
            .into_iter()
            .map(|r| pb::RejectedRow {
                line: r.line,
                waivable: Reasons::from_codes(&r.reasons).is_some_and(Reasons::waivable),
                reasons: codes(&r.reasons),
            })
            .collect(),
        decisions: b
            .decisions
            .into_iter()
            .map(|d| pb::RowDecision {
                line: d.line,
                reviewer: d.reviewer,
                waived: codes(&d.waived),
                note: d.note,
                decided_ms: d.decided_ms,
            })
            .collect(),
        created_ms: b.created_ms,
    }
}

/// A required field left empty or at its enum's `*_UNSPECIFIED` zero value.
pub(super) fn required(field: &'static str) -> Status {
    super::to_status(&Error::InvalidArgument {
        field,
        reason: Refusal::Required,
    })
}
