//! `CardKeyService`: card personalisation stations.

use hsm_api::Hsm;
use tonic::{Request, Response, Status};

use crate::error::Result;
use crate::proto::kms::v1 as pb;
use crate::service::{Delivery, on_connection};

use super::convert::{card_request, pb_delivered, required};
use super::{Api, status};

#[tonic::async_trait]
impl<H: Hsm> pb::card_key_service_server::CardKeyService for Api<H> {
    async fn inject_card_keys(
        &self,
        request: Request<pb::InjectCardKeysRequest>,
    ) -> Result<Response<pb::InjectCardKeysResponse>, Status> {
        let who = self.admit(&request)?;
        let connection = request.remote_addr();
        let req = request.into_inner();
        let delivery = match pb::DeliveryForm::try_from(req.delivery) {
            Ok(pb::DeliveryForm::Tr31) => Delivery::Tr31 {
                key_names: req.key_names,
            },
            Ok(pb::DeliveryForm::SecureMessaging) => Delivery::SecureMessaging {
                challenges: req
                    .challenges
                    .into_iter()
                    .map(|c| (c.key_name, c.challenge))
                    .collect(),
            },
            _ => return Err(required("delivery")),
        };
        let keys = on_connection(
            connection,
            self.kms
                .inject_card_keys(&who, card_request(req.card)?, &req.template_id, delivery),
        )
        .await
        .map_err(status)?;
        let omitted = self
            .kms
            .keys_owned_elsewhere(&req.template_id)
            .map_err(status)?;
        Ok(Response::new(pb::InjectCardKeysResponse {
            keys: keys.into_iter().map(pb_delivered).collect(),
            omitted: omitted
                .into_iter()
                .map(|(key_name, reason)| pb::OmittedKey { key_name, reason })
                .collect(),
        }))
    }

    async fn initialise_blank_card(
        &self,
        request: Request<pb::InitialiseBlankCardRequest>,
    ) -> Result<Response<pb::InitialiseBlankCardResponse>, Status> {
        let who = self.admit(&request)?;
        let connection = request.remote_addr();
        let req = request.into_inner();
        let key = on_connection(
            connection,
            self.kms.initialise_blank_card(
                &who,
                card_request(req.card)?,
                &req.template_id,
                req.challenge,
            ),
        )
        .await
        .map_err(status)?;
        Ok(Response::new(pb::InitialiseBlankCardResponse {
            master_key: Some(pb_delivered(key)),
        }))
    }
}
