//! `RegistryService`: city registrars.

use hsm_api::Hsm;
use tonic::{Request, Response, Status};

use crate::error::Result;
use crate::proto::kms::v1 as pb;

use super::convert::{card_request, pb_card};
use super::{Api, status};

#[tonic::async_trait]
impl<H: Hsm> pb::registry_service_server::RegistryService for Api<H> {
    async fn register_card(
        &self,
        request: Request<pb::RegisterCardRequest>,
    ) -> Result<Response<pb::CardRecord>, Status> {
        let who = self.admit(&request)?;
        let req = request.into_inner();
        let card = self
            .kms
            .register_card(&who, card_request(req.card)?, &req.template_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb_card(card)))
    }

    async fn accept_card(
        &self,
        request: Request<pb::CardRef>,
    ) -> Result<Response<pb::CardRecord>, Status> {
        let who = self.admit(&request)?;
        let req = request.into_inner();
        let card = self
            .kms
            .accept_card(&who, &req.card_identifier)
            .await
            .map_err(status)?;
        Ok(Response::new(pb_card(card)))
    }

    async fn blacklist_card(
        &self,
        request: Request<pb::BlacklistCardRequest>,
    ) -> Result<Response<pb::CardRecord>, Status> {
        let who = self.admit(&request)?;
        let req = request.into_inner();
        let card = self
            .kms
            .blacklist_card(&who, &req.card_identifier, &req.reason)
            .await
            .map_err(status)?;
        Ok(Response::new(pb_card(card)))
    }

    async fn get_card(
        &self,
        request: Request<pb::CardRef>,
    ) -> Result<Response<pb::CardRecord>, Status> {
        let who = self.admit(&request)?;
        let req = request.into_inner();
        let card = self
            .kms
            .get_card(&who, &req.card_identifier)
            .await
            .map_err(status)?;
        Ok(Response::new(pb_card(card)))
    }
}
