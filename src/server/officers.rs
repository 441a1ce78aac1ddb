//! `AdminService`: security officers.

use hsm_api::Hsm;
use hsm_api::{Kcv, KcvMethod};
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use crate::error::Result;
use crate::proto::kms::v1 as pb;
use crate::state::records::EndpointKind;

use super::convert::{components, level_of, pb_kcv, pb_key_record};
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
