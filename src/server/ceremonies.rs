//! Between the ceremonies' service types (registry, dual control, component ceremonies) and
//! their protobuf messages.

use hsm_api::{Kcv, KcvMethod};
use tonic::Status;

use crate::proto::kms::v1 as pb;
use crate::service::{
    Act, CeremonyTarget, DualControlRequest, KeyCeremony, RootToRestore, TransportDelivery,
    TransportIssue, certificate_der,
};
use crate::state::records::{EndpointKind, OfficerRecord};

use super::convert::{level_of, pb_kcv, required};

pub(super) fn pb_officer(r: OfficerRecord) -> pb::OfficerRecord {
    pb::OfficerRecord {
        identity: r.identity,
        fingerprint: r.fingerprint,
        registered_ms: r.registered_ms,
        registered_by: r.registered_by,
        revoked: r.revoked_ms.is_some(),
        revoked_ms: r.revoked_ms.unwrap_or(0),
        revoked_by: r.revoked_by,
    }
}

pub(super) fn pb_request(r: DualControlRequest) -> pb::DualControlRequest {
    pb::DualControlRequest {
        id: r.id,
        description: r.description,
        requested_by: r.requested_by,
        requested_ms: r.requested_ms,
        expires_ms: r.expires_ms,
        state: r.state.name().to_owned(),
        decided_by: r.decided_by.unwrap_or_default(),
        decided_ms: r.decided_ms.unwrap_or(0),
        result: r.result.unwrap_or_default(),
    }
}

pub(super) fn pb_ceremony(c: KeyCeremony) -> pb::KeyCeremony {
    let kcv = c
        .kcv_method
        .as_deref()
        .and_then(KcvMethod::from_name)
        .zip(c.kcv.as_deref().and_then(|k| hex::decode(k).ok()))
        .map(|(m, v)| pb_kcv(&Kcv::from_parts(m, v)));
    pb::KeyCeremony {
        id: c.id,
        description: c.description,
        components: u32::from(c.components),
        started_by: c.started_by,
        started_ms: c.started_ms,
        expires_ms: c.expires_ms,
        approved_request: c.approved_request.unwrap_or_default(),
        custodians: c
            .custodians
            .into_iter()
            .map(|p| pb::CeremonyCustodian {
                identity: p.identity,
                component_kcv: p.kcv,
                at_ms: p.at_ms,
            })
            .collect(),
        state: c.state.name().to_owned(),
        kcv,
        failure: c.failure.unwrap_or_default(),
        key_family: c.key_family,
    }
}

pub(super) fn pb_transport_issue(t: TransportIssue) -> pb::TransportIssue {
    let kcv = KcvMethod::from_name(&t.kcv_method)
        .zip(hex::decode(&t.kcv).ok())
        .map(|(m, v)| pb_kcv(&Kcv::from_parts(m, v)));
    pb::TransportIssue {
        request_id: t.request,
        kind: match t.kind {
            EndpointKind::Station => pb::EndpointKind::Station,
            EndpointKind::PsamLine => pb::EndpointKind::PsamLine,
        }
        .into(),
        name: t.name,
        region: t.region,
        algorithm: t.algorithm,
        kcv,
        components: u32::from(t.components),
        custodians: t
            .taken
            .into_iter()
            .map(|p| pb::CeremonyCustodian {
                identity: p.identity,
                component_kcv: p.kcv,
                at_ms: p.at_ms,
            })
            .collect(),
        tr31_block: t.block.unwrap_or_default(),
        under_kcv: t.under_kcv.unwrap_or_default(),
        issued_ms: t.issued_ms,
    }
}

fn kind_of(kind: i32) -> Result<EndpointKind, Status> {
    match pb::EndpointKind::try_from(kind) {
        Ok(pb::EndpointKind::Station) => Ok(EndpointKind::Station),
        Ok(pb::EndpointKind::PsamLine) => Ok(EndpointKind::PsamLine),
        _ => Err(required("kind")),
    }
}

pub(super) fn act_of(req: pb::RequestActRequest) -> Result<Act, Status> {
    use pb::request_act_request::Act as A;
    Ok(match req.act.ok_or_else(|| required("act"))? {
        A::RegisterOfficer(a) => Act::RegisterOfficer {
            certificate_der_hex: hex::encode(
                certificate_der(a.certificate_pem.as_bytes()).map_err(|e| super::to_status(&e))?,
            ),
        },
        A::RevokeOfficer(a) => Act::RevokeOfficer {
            fingerprint: a.fingerprint.trim().to_ascii_uppercase(),
        },
        A::GenerateRoot(a) => Act::GenerateRoot {
            template_id: a.template_id,
            key_name: a.key_name,
        },
        A::RetireKey(a) => Act::RetireKey { key_id: a.key_id },
        A::UnblacklistCard(a) => Act::UnblacklistCard {
            card_identifier: a.card_identifier,
        },
        A::ReplaceTransportKey(a) => Act::ReplaceTransportKey {
            kind: kind_of(a.kind)?,
            name: a.name,
            transport_family: a.transport_algorithm,
            components: u8::try_from(a.components).unwrap_or(u8::MAX),
        },
        A::RotateLmk(a) => Act::RotateLmk {
            threshold: u8::try_from(a.threshold).unwrap_or(u8::MAX),
            shares: u8::try_from(a.shares).unwrap_or(u8::MAX),
        },
        A::IssueTransportKey(a) => {
            use pb::issue_transport_key_act::Delivery as D;
            Act::IssueTransportKey {
                kind: kind_of(a.kind)?,
                name: a.name,
                region: a.region,
                transport_family: a.transport_algorithm,
                delivery: match a.delivery.ok_or_else(|| required("delivery"))? {
                    D::Components(n) => TransportDelivery::Components {
                        components: u8::try_from(n).unwrap_or(u8::MAX),
                    },
                    D::UnderCurrentKey(true) => TransportDelivery::Tr31UnderCurrent,
                    D::UnderCurrentKey(false) => return Err(required("delivery")),
                },
            }
        }
        A::RevokeEndpoint(a) => Act::RevokeEndpoint {
            kind: kind_of(a.kind)?,
            name: a.name,
        },
        A::RegisterEndpoint(a) => Act::RegisterEndpoint {
            kind: kind_of(a.kind)?,
            name: a.name,
            region: a.region,
            transport_family: a.transport_algorithm,
            components: u8::try_from(a.components).unwrap_or(u8::MAX),
        },

        A::BackupRoot(a) => Act::BackupRoot {
            key_id: a.key_id,
            threshold: u8::try_from(a.threshold).unwrap_or(u8::MAX),
            shares: u8::try_from(a.shares).unwrap_or(u8::MAX),
        },
        A::RestoreRoot(a) => Act::RestoreRoot {
            root: RootToRestore {
                template_id: a.template_id,
                key_name: a.key_name,
                level: level_of(a.level)?,
                version: a.version,
                kcv: a.kcv.trim().to_ascii_uppercase(),
                backup: a.backup.trim().to_ascii_uppercase(),
                psam_permitted: a.ministry_psam_permission,
            },
            threshold: u8::try_from(a.threshold).unwrap_or(u8::MAX),
        },
    })
}

pub(super) fn target_of(
    target: Option<pb::start_key_ceremony_request::Target>,
) -> Result<CeremonyTarget, Status> {
    use pb::start_key_ceremony_request::Target as T;
    Ok(match target.ok_or_else(|| required("target"))? {
        T::Root(t) => CeremonyTarget::Root {
            template_id: t.template_id,
            key_name: t.key_name,
            level: level_of(t.level)?,
            psam_permitted: t.ministry_psam_permission,
        },
        T::VendorTransport(t) => CeremonyTarget::VendorTransport {
            template_id: t.template_id,
        },
        T::Endpoint(t) => CeremonyTarget::Endpoint {
            kind: kind_of(t.kind)?,
            name: t.name,
            region: t.region,
            transport_family: t.transport_algorithm,
        },
    })
}
