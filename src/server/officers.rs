//! `AdminService`: security officers.

use hsm_api::Hsm;
use hsm_api::{Kcv, KcvMethod};
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use crate::error::Result;
use crate::proto::kms::v1 as pb;
use crate::state::records::EndpointKind;

use super::ceremonies::{
    act_of, pb_ceremony, pb_officer, pb_request, pb_transport_issue, target_of,
};
use super::convert::{components, level_of, pb_kcv, pb_key_record, required};
use super::{Api, status};

#[tonic::async_trait]
impl<H: Hsm> pb::admin_service_server::AdminService for Api<H> {
    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        let who = self.admit(&request)?;
        let s = self.kms.status(&who).await.map_err(status)?;
        Ok(Response::new(pb::ServiceStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            hsm_state: s.hsm_state,
            hsm_is_secure: s.hsm_is_secure,
            hsm_dangerous_test_lmk: s.hsm_dangerous_test_lmk,
            audit_records: s.audit_records,
            templates: s.templates,
        }))
    }

    async fn load_template(
        &self,
        request: Request<pb::LoadTemplateRequest>,
    ) -> Result<Response<pb::TemplateSummary>, Status> {
        let who = self.admit(&request)?;
        let req = request.into_inner();
        let t = self
            .kms
            .load_template(&who, &req.toml)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::TemplateSummary {
            id: t.id().to_owned(),
            version: t.version(),
            keys: u32::try_from(t.keys().len()).unwrap_or(u32::MAX),
        }))
    }

    async fn import_root_key(
        &self,
        request: Request<pb::ImportRootKeyRequest>,
    ) -> Result<Response<pb::KeyRecord>, Status> {
        let who = self.admit(&request)?;
        let req = request.into_inner();
        let level = level_of(req.level)?;
        let r = self
            .kms
            .import_root_key(
                &who,
                &req.template_id,
                &req.key_name,
                level,
                components(req.components),
                req.ministry_psam_permission,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb_key_record(r)))
    }

    async fn generate_root_key(
        &self,
        request: Request<pb::GenerateRootKeyRequest>,
    ) -> Result<Response<pb::KeyRecord>, Status> {
        let who = self.admit(&request)?;
        let req = request.into_inner();
        let r = self
            .kms
            .generate_root_key(&who, &req.template_id, &req.key_name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb_key_record(r)))
    }

    async fn derive_hierarchy(
        &self,
        request: Request<pb::DeriveHierarchyRequest>,
    ) -> Result<Response<pb::DeriveHierarchyResponse>, Status> {
        let who = self.admit(&request)?;
        let req = request.into_inner();
        let keys = self
            .kms
            .derive_hierarchy(&who, &req.template_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeriveHierarchyResponse {
            keys: keys.into_iter().map(pb_key_record).collect(),
        }))
    }

    async fn import_vendor_transport_key(
        &self,
        request: Request<pb::ImportVendorTransportKeyRequest>,
    ) -> Result<Response<pb::KeyRecord>, Status> {
        let who = self.admit(&request)?;
        let req = request.into_inner();
        let r = self
            .kms
            .import_vendor_transport_key(&who, &req.template_id, components(req.components))
            .await
            .map_err(status)?;
        Ok(Response::new(pb_key_record(r)))
    }

    async fn register_station(
        &self,
        request: Request<pb::RegisterEndpointRequest>,
    ) -> Result<Response<pb::EndpointRecord>, Status> {
        self.register_endpoint(EndpointKind::Station, request).await
    }

    async fn register_psam_line(
        &self,
        request: Request<pb::RegisterEndpointRequest>,
    ) -> Result<Response<pb::EndpointRecord>, Status> {
        self.register_endpoint(EndpointKind::PsamLine, request)
            .await
    }

    async fn unseal_hsm(
        &self,
        request: Request<pb::UnsealHsmRequest>,
    ) -> Result<Response<pb::UnsealHsmResponse>, Status> {
        self.unseal(request).await
    }

    async fn get_audit_checkpoint(
        &self,
        request: Request<pb::GetAuditCheckpointRequest>,
    ) -> Result<Response<pb::AuditCheckpoint>, Status> {
        let who = self.admit(&request)?;
        let c = self.kms.audit_checkpoint(&who).await.map_err(status)?;
        Ok(Response::new(pb::AuditCheckpoint {
            seq: c.seq,
            head: c.head,
            time_ms: c.time_ms,
            mac: c.mac,
        }))
    }

    async fn list_officers(
        &self,
        request: Request<pb::ListOfficersRequest>,
    ) -> Result<Response<pb::ListOfficersResponse>, Status> {
        let who = self.admit(&request)?;
        let list = self.kms.list_officers(&who).await.map_err(status)?;
        Ok(Response::new(pb::ListOfficersResponse {
            officers: list.into_iter().map(pb_officer).collect(),
        }))
    }

    async fn request_act(
        &self,
        request: Request<pb::RequestActRequest>,
    ) -> Result<Response<pb::DualControlRequest>, Status> {
        let who = self.admit(&request)?;
        let act = act_of(request.into_inner())?;
        let r = self.kms.request_act(&who, act).await.map_err(status)?;
        Ok(Response::new(pb_request(r)))
    }

    async fn approve_request(
        &self,
        request: Request<pb::RequestRef>,
    ) -> Result<Response<pb::ApproveRequestResponse>, Status> {
        let who = self.admit(&request)?;
        let id = request.into_inner().id;
        let a = self.kms.approve_request(&who, &id).await.map_err(status)?;
        Ok(Response::new(pb::ApproveRequestResponse {
            request: Some(pb_request(a.request)),
            key: a.key.map(pb_key_record),
            officer: a.officer.map(pb_officer),
            ceremony: a.ceremony.map(pb_ceremony),
            transport_issue: a.transport.map(pb_transport_issue),
        }))
    }

    async fn reject_request(
        &self,
        request: Request<pb::RequestRef>,
    ) -> Result<Response<pb::DualControlRequest>, Status> {
        let who = self.admit(&request)?;
        let id = request.into_inner().id;
        let r = self.kms.reject_request(&who, &id).await.map_err(status)?;
        Ok(Response::new(pb_request(r)))
    }

    async fn list_requests(
        &self,
        request: Request<pb::ListRequestsRequest>,
    ) -> Result<Response<pb::ListRequestsResponse>, Status> {
        let who = self.admit(&request)?;
        let list = self.kms.list_requests(&who).await.map_err(status)?;
        Ok(Response::new(pb::ListRequestsResponse {
            requests: list.into_iter().map(pb_request).collect(),
        }))
    }

    async fn start_key_ceremony(
        &self,
        request: Request<pb::StartKeyCeremonyRequest>,
    ) -> Result<Response<pb::KeyCeremony>, Status> {
        let who = self.admit(&request)?;
        let req = request.into_inner();
        let target = target_of(req.target)?;
        let n = u8::try_from(req.components).unwrap_or(u8::MAX);
        let c = self
            .kms
            .start_key_ceremony(&who, target, n)
            .await
            .map_err(status)?;
        Ok(Response::new(pb_ceremony(c)))
    }

    async fn submit_component(
        &self,
        request: Request<pb::SubmitComponentRequest>,
    ) -> Result<Response<pb::KeyCeremony>, Status> {
        let who = self.admit(&request)?;
        let req = request.into_inner();
        let component = components(req.component.into_iter().collect())
            .pop()
            .ok_or_else(|| required("component"))?;
        let s = self
            .kms
            .submit_component(&who, &req.ceremony_id, component)
            .await
            .map_err(status)?;
        Ok(Response::new(pb_ceremony(s.ceremony)))
    }

    async fn get_key_ceremony(
        &self,
        request: Request<pb::KeyCeremonyRef>,
    ) -> Result<Response<pb::KeyCeremony>, Status> {
        let who = self.admit(&request)?;
        let id = request.into_inner().id;
        let c = self.kms.key_ceremony(&who, &id).await.map_err(status)?;
        Ok(Response::new(pb_ceremony(c)))
    }

    async fn verify_audit_trail(
        &self,
        request: Request<pb::VerifyAuditTrailRequest>,
    ) -> Result<Response<pb::AuditVerification>, Status> {
        let who = self.admit(&request)?;
        let r = self.kms.verify_audit_trail(&who).await.map_err(status)?;
        let report = r.render();
        let verdict = report
            .lines()
            .last()
            .and_then(|l| l.split(':').next())
            .unwrap_or_default()
            .to_owned();
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        Ok(Response::new(pb::AuditVerification {
            records: count(r.records),
            seals: count(r.seals),
            macs_checked: count(r.macs_checked),
            unsealed_tail: count(r.unsealed_tail),
            seal_gaps: count(r.seal_gaps),
            verdict,
            report,
        }))
    }

    async fn export_audit_trail(
        &self,
        request: Request<pb::ExportAuditTrailRequest>,
    ) -> Result<Response<pb::ExportAuditTrailResponse>, Status> {
        let who = self.admit(&request)?;
        let req = request.into_inner();
        let records = self
            .kms
            .export_audit_trail(&who, req.from_seq, req.to_seq)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ExportAuditTrailResponse {
            records: records
                .into_iter()
                .map(|r| pb::AuditRecordLine {
                    seq: r.seq,
                    time_ms: r.time_ms,
                    actor: r.actor,
                    action: r.action,
                    subject: r.subject,
                    outcome: r.outcome,
                    prev: r.prev,
                    hash: r.hash,
                })
                .collect(),
        }))
    }

    async fn seal_hsm(
        &self,
        request: Request<pb::SealHsmRequest>,
    ) -> Result<Response<pb::SealHsmResponse>, Status> {
        let who = self.admit(&request)?;
        let state = self.kms.seal_hsm(&who).await.map_err(status)?;
        Ok(Response::new(pb::SealHsmResponse { hsm_state: state }))
    }

    async fn run_hsm_self_test(
        &self,
        request: Request<pb::RunHsmSelfTestRequest>,
    ) -> Result<Response<pb::RunHsmSelfTestResponse>, Status> {
        let who = self.admit(&request)?;
        let state = self.kms.run_hsm_self_test(&who).await.map_err(status)?;
        Ok(Response::new(pb::RunHsmSelfTestResponse {
            hsm_state: state,
        }))
    }

    async fn take_lmk_share(
        &self,
        request: Request<pb::TakeLmkShareRequest>,
    ) -> Result<Response<pb::TakeLmkShareResponse>, Status> {
        let who = self.admit(&request)?;
        let t = self.kms.take_lmk_share(&who).await.map_err(status)?;
        Ok(Response::new(pb::TakeLmkShareResponse {
            index: u32::from(t.index),
            shares: u32::from(t.shares),
            threshold: u32::from(t.threshold),
            share: t.issued.share.secret_text().to_owned(),
            check_value: t.issued.check_value.clone(),
            new_lmk_kcv: t.new_lmk_kcv,
        }))
    }

    async fn take_backup_share(
        &self,
        request: Request<pb::TakeBackupShareRequest>,
    ) -> Result<Response<pb::TakeBackupShareResponse>, Status> {
        let who = self.admit(&request)?;
        let id = request.into_inner().request_id;
        let t = self
            .kms
            .take_backup_share(&who, &id)
            .await
            .map_err(status)?;
        let kcv = hsm_api::KcvMethod::from_name(&t.backup.kcv_method)
            .zip(hex::decode(&t.backup.kcv).ok())
            .map(|(m, v)| super::convert::pb_kcv(&hsm_api::Kcv::from_parts(m, v)));
        Ok(Response::new(pb::TakeBackupShareResponse {
            index: u32::from(t.index),
            shares: u32::from(t.backup.shares),
            threshold: u32::from(t.backup.threshold),
            share: t.issued.share.secret_text().to_owned(),
            check_value: t.issued.check_value.clone(),
            backup: t.backup.backup,
            key_id: t.backup.key_id,
            kcv,
        }))
    }

    async fn submit_backup_share(
        &self,
        request: Request<pb::SubmitBackupShareRequest>,
    ) -> Result<Response<pb::KeyCeremony>, Status> {
        let who = self.admit(&request)?;
        let mut req = request.into_inner();
        // Moved into a zeroizing buffer first, so it is wiped on every path.
        let share = zeroize::Zeroizing::new(std::mem::take(&mut req.share));
        let s = self
            .kms
            .submit_backup_share(&who, &req.ceremony_id, share)
            .await
            .map_err(status)?;
        Ok(Response::new(pb_ceremony(s.ceremony)))
    }

    async fn commit_lmk_rotation(
        &self,
        request: Request<pb::CommitLmkRotationRequest>,
    ) -> Result<Response<pb::CommitLmkRotationResponse>, Status> {
        let who = self.admit(&request)?;
        let p = self.kms.commit_lmk_rotation(&who).await.map_err(status)?;
        Ok(Response::new(pb::CommitLmkRotationResponse {
            lmk_kcv: p.new_lmk_kcv,
            old_lmk_kcv: p.old_lmk_kcv,
            tokens: u32::try_from(p.tokens.len()).unwrap_or(u32::MAX),
            custodians: p.taken.into_iter().map(|t| t.identity).collect(),
        }))
    }

    async fn take_transport_component(
        &self,
        request: Request<pb::TransportIssueRef>,
    ) -> Result<Response<pb::TakeTransportComponentResponse>, Status> {
        let who = self.admit(&request)?;
        let id = request.into_inner().request_id;
        let t = self
            .kms
            .take_transport_component(&who, &id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::TakeTransportComponentResponse {
            index: u32::from(t.index),
            components: u32::from(t.components),
            component: t.issued.share.secret_text().to_owned(),
            component_kcv: t.issued.check_value.clone(),
            issue: Some(pb_transport_issue(t.issue)),
        }))
    }

    async fn get_transport_issue(
        &self,
        request: Request<pb::TransportIssueRef>,
    ) -> Result<Response<pb::TransportIssue>, Status> {
        let who = self.admit(&request)?;
        let id = request.into_inner().request_id;
        let t = self.kms.transport_issue(&who, &id).await.map_err(status)?;
        Ok(Response::new(pb_transport_issue(t)))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let who = self.admit(&request)?;
        let req = request.into_inner();
        let keys = self
            .kms
            .list_keys(&who, &req.template_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListKeysResponse {
            keys: keys.into_iter().map(pb_key_record).collect(),
        }))
    }
}

impl<H: Hsm> Api<H> {
    async fn unseal(
        &self,
        request: Request<pb::UnsealHsmRequest>,
    ) -> Result<Response<pb::UnsealHsmResponse>, Status> {
        let who = self.admit(&request)?;
        let share = Zeroizing::new(request.into_inner().share);
        let p = self.kms.unseal_hsm(&who, share).await.map_err(status)?;
        Ok(Response::new(pb::UnsealHsmResponse {
            submitted: u32::from(p.submitted),
            threshold: u32::from(p.threshold),
            unsealed: p.unsealed,
        }))
    }

    async fn register_endpoint(
        &self,
        kind: EndpointKind,
        request: Request<pb::RegisterEndpointRequest>,
    ) -> Result<Response<pb::EndpointRecord>, Status> {
        let who = self.admit(&request)?;
        let req = request.into_inner();
        let e = self
            .kms
            .register_endpoint(
                &who,
                kind,
                &req.name,
                &req.region,
                &req.transport_algorithm,
                components(req.components),
            )
            .await
            .map_err(status)?;
        let kcv = KcvMethod::from_name(&e.transport_kcv_method)
            .zip(hex::decode(&e.transport_kcv).ok())
            .map(|(m, v)| pb_kcv(&Kcv::from_parts(m, v)));
        Ok(Response::new(pb::EndpointRecord {
            name: e.name,
            region: e.region,
            transport_kcv: kcv,
        }))
    }
}
