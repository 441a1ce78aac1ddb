//! `PsamService`: PSAM production lines.

use hsm_api::Hsm;
use tonic::{Request, Response, Status};

use crate::error::Result;
use crate::proto::kms::v1 as pb;
use crate::service::on_connection;

use super::convert::pb_delivered;
use super::{Api, status};

#[tonic::async_trait]
impl<H: Hsm> pb::psam_service_server::PsamService for Api<H> {
    async fn register_psams(
        &self,
        request: Request<pb::RegisterPsamsRequest>,
    ) -> Result<Response<pb::RegisterPsamsResponse>, Status> {
        let who = self.admit(&request)?;
        let req = request.into_inner();
        let registered = self
            .kms
            .register_psams(
                &who,
                req.serials,
                &req.region,
                &req.template_id,
                &req.psam_profile,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RegisterPsamsResponse { registered }))
    }

    async fn get_psam_key_set(
        &self,
        request: Request<pb::GetPsamKeySetRequest>,
    ) -> Result<Response<pb::GetPsamKeySetResponse>, Status> {
        let who = self.admit(&request)?;
        let connection = request.remote_addr();
        let req = request.into_inner();
        let set = on_connection(connection, self.kms.psam_key_set(&who, &req.serial))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetPsamKeySetResponse {
            serial: set.serial,
            psam_profile: set.psam_profile,
            keys: set.keys.into_iter().map(pb_delivered).collect(),
            omitted: set
                .omitted
                .into_iter()
                .map(|(key_name, reason)| pb::OmittedKey { key_name, reason })
                .collect(),
        }))
    }
}
