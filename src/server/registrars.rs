//! `RegistryService`: registrars (cities register and submit, the province accepts).

use hsm_api::Hsm;
use tonic::{Request, Response, Status, Streaming};

use crate::error::Result;
use crate::proto::kms::v1 as pb;
use crate::registry::file::Encoding;

use super::convert::{card_request, pb_batch_report, pb_card, transition_of};
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
            .register_card(
                &who,
                card_request(req.card)?,
                &req.template_id,
                Some(req.replaces_card_identifier.as_str()).filter(|r| !r.is_empty()),
            )
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

    async fn change_card_status(
        &self,
        request: Request<pb::ChangeCardStatusRequest>,
    ) -> Result<Response<pb::CardRecord>, Status> {
        let who = self.admit(&request)?;
        let req = request.into_inner();
        let transition = transition_of(req.transition)?;
        let card = self
            .kms
            .change_card_status(&who, &req.card_identifier, transition, &req.reason)
            .await
            .map_err(status)?;
        Ok(Response::new(pb_card(card)))
    }

    async fn export_blacklist(
        &self,
        request: Request<pb::ExportBlacklistRequest>,
    ) -> Result<Response<pb::SignedBlacklist>, Status> {
        let who = self.admit(&request)?;
        let req = request.into_inner();
        let (list, public_key) = self
            .kms
            .export_blacklist(&who, req.since_version)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SignedBlacklist {
            list: list.into_bytes(),
            public_key,
        }))
    }

    async fn submit_applicant_batch(
        &self,
        request: Request<Streaming<pb::ApplicantFileChunk>>,
    ) -> Result<Response<pb::ApplicantBatchReport>, Status> {
        let who = self.admit(&request)?;
        // Authorised before the first byte is read.
        let mut upload = self.kms.begin_applicant_batch(&who).await.map_err(status)?;
        let mut chunks = request.into_inner();
        let mut first = true;
        loop {
            match chunks.message().await {
                Ok(Some(chunk)) => {
                    if first {
                        let encoding = match pb::ApplicantFileEncoding::try_from(chunk.encoding) {
                            Ok(pb::ApplicantFileEncoding::Utf8) => Encoding::Utf8,
                            Ok(pb::ApplicantFileEncoding::Gb18030) => Encoding::Gb18030,
                            _ => Encoding::Detect,
                        };
                        upload.set_options(&chunk.batch_id, encoding);
                        first = false;
                    }
                    upload.push(&chunk.data);
                    if upload.is_refused() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    upload.interrupted();
                    break;
                }
            }
        }
        let outcome = self
            .kms
            .submit_applicant_batch(upload)
            .await
            .map_err(status)?;
        Ok(Response::new(pb_batch_report(
            outcome.batch,
            outcome.resubmitted,
        )))
    }

    async fn accept_applicant_row(
        &self,
        request: Request<pb::AcceptApplicantRowRequest>,
    ) -> Result<Response<pb::ApplicantBatchReport>, Status> {
        let who = self.admit(&request)?;
        let req = request.into_inner();
        let batch = self
            .kms
            .accept_applicant_row(&who, &req.batch_id, req.line, &req.note)
            .await
            .map_err(status)?;
        Ok(Response::new(pb_batch_report(batch, false)))
    }

    async fn get_applicant_batch(
        &self,
        request: Request<pb::GetApplicantBatchRequest>,
    ) -> Result<Response<pb::ApplicantBatchReport>, Status> {
        let who = self.admit(&request)?;
        let req = request.into_inner();
        let batch = self
            .kms
            .get_applicant_batch(&who, &req.batch_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb_batch_report(batch, false)))
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

    async fn read_card_personal_data(
        &self,
        request: Request<pb::CardRef>,
    ) -> Result<Response<pb::CardPersonalData>, Status> {
        let who = self.admit(&request)?;
        let req = request.into_inner();
        let clear = self
            .kms
            .read_card_personal_data(&who, &req.card_identifier)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CardPersonalData {
            card_identifier: clear.card_identifier.clone(),
            social_security_number: clear.ssn.clone(),
            card_number: clear.card_number.clone(),
            name: clear.name.clone().unwrap_or_default(),
        }))
    }
}
