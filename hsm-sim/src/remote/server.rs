//! The `sscard.hsm.v1.Hsm` gRPC service over any [`Hsm`], served over mutual TLS.
//!
//! Each RPC translates its request into one trait call and the answer back; nothing else.
//! Before any of it, the interceptor [`identity::authorise`](super::identity) admits only
//! `sscard://service/<name>` callers. Errors of the HSM leave through [`super::status`].

use core::fmt;
use std::future::Future;
use std::sync::Arc;

use hsm_api::{
    Accumulation, ClearField, Component, Error, Factor, Hsm, KeyToken, LmkShare, Restoration,
    SealedField, WriteKeyRequest,
};
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::{Router, TcpIncoming};
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::convert::{
    accumulated_to_wire, algorithm_from_wire, backup_to_wire, batch_item_from_wire,
    batch_result_to_wire, dispersion_from_wire, fold_from_wire, kcv_from_wire, kcv_to_wire, narrow,
    parts_to_wire, progress_to_wire, restored_to_wire, share_to_wire, spec_from_wire,
    status_to_wire, usage_from_wire, version_from_wire, wrapped_to_wire,
};
use super::identity::{self, ServiceCaller};
use super::proto;
use super::proto::hsm_server::Hsm as HsmRpc;
use super::status::to_status;
use super::{ServerTls, SetupError};

/// Serves `hsm` on the already-bound `listener` over mutual TLS until `shutdown` completes,
/// then lets calls in flight finish.
///
/// Refuses to start (before accepting anything) if the TLS configuration is unusable, e.g. a
/// private key that does not match its certificate.
pub async fn serve<H: Hsm>(
    hsm: Arc<H>,
    listener: TcpListener,
    tls: ServerTls,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SetupError> {
    HsmServer::new(hsm, &tls)?.serve(listener, shutdown).await
}

/// A configured HSM server: TLS checked and service built, not yet accepting connections.
/// [`serve`] in two steps, for a process that reports readiness only once its configuration
/// is known to be good.
pub struct HsmServer {
    router: Router,
}

impl HsmServer {
    /// Builds the server; fails if the TLS configuration is refused.
    pub fn new<H: Hsm>(hsm: Arc<H>, tls: &ServerTls) -> Result<HsmServer, SetupError> {
        let service = proto::hsm_server::HsmServer::new(HsmService { hsm })
            .max_decoding_message_size(super::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(super::MAX_MESSAGE_SIZE);
        let service = InterceptedService::new(service, identity::authorise);
        let router = Server::builder()
            .tls_config(tls.config())?
            .add_service(service);
        Ok(HsmServer { router })
    }

    /// Accepts connections on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), SetupError> {
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        self.router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        Ok(())
    }
}

impl fmt::Debug for HsmServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HsmServer { .. }")
    }
}

/// The generated service trait implemented over an [`Hsm`].
struct HsmService<H> {
    hsm: Arc<H>,
}

/// A request that is not valid `sscard.hsm.v1` (unspecified enum, missing message, number out
/// of range). Our own client never sends one.
fn malformed(what: &str) -> Status {
    Status::invalid_argument(format!("malformed request: {what}"))
}

/// The status of a refusal of the HSM, logged with the caller's name.
fn refused<T>(request: &Request<T>, method: &'static str) -> impl FnOnce(Error) -> Status + use<T> {
    let caller = caller_name(request);
    move |err| {
        tracing::info!(caller, method, error = %err, "HSM refused");
        to_status(&err)
    }
}

fn caller_name<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<ServiceCaller>()
        .map(|c| c.name.clone())
        .unwrap_or_default()
}

fn token(text: String) -> KeyToken {
    KeyToken::from_stored(text)
}

fn small(value: u32, what: &str) -> Result<u8, Status> {
    u8::try_from(value).map_err(|_| malformed(what))
}

#[tonic::async_trait]
impl<H: Hsm> HsmRpc for HsmService<H> {
    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::HsmStatus>, Status> {
        let status = self
            .hsm
            .status()
            .await
            .map_err(refused(&request, "status"))?;
        Ok(Response::new(status_to_wire(&status)))
    }

    async fn init_lmk(
        &self,
        request: Request<proto::InitLmkRequest>,
    ) -> Result<Response<proto::LmkInit>, Status> {
        let on_err = refused(&request, "init_lmk");
        tracing::info!(caller = caller_name(&request), "init_lmk");
        let req = request.into_inner();
        let threshold = small(req.threshold, "threshold")?;
        let shares = small(req.shares, "shares")?;
        let init = self.hsm.init_lmk(threshold, shares).await.map_err(on_err)?;
        Ok(Response::new(proto::LmkInit {
            lmk_kcv: Some(kcv_to_wire(&init.lmk_kcv)),
            parts: init.parts.as_ref().map(parts_to_wire),
            ..Default::default()
        }))
    }

    async fn take_secret_part(
        &self,
        request: Request<proto::TakeSecretPartRequest>,
    ) -> Result<Response<proto::IssuedShare>, Status> {
        let on_err = refused(&request, "take_secret_part");
        let req = request.get_ref();
        tracing::info!(
            caller = caller_name(&request),
            set = %req.set,
            index = req.index,
            "take_secret_part"
        );
        let index = small(req.index, "index")?;
        let part = self
            .hsm
            .take_secret_part(&req.set, index)
            .await
            .map_err(on_err)?;
        Ok(Response::new(share_to_wire(&part)))
    }

    async fn unseal(
        &self,
        request: Request<proto::UnsealRequest>,
    ) -> Result<Response<proto::UnsealProgress>, Status> {
        let on_err = refused(&request, "unseal");
        let mut req = request.into_inner();
        let share = LmkShare::new(Zeroizing::new(std::mem::take(&mut req.share)));
        let progress = self.hsm.unseal(share).await.map_err(on_err)?;
        Ok(Response::new(progress_to_wire(progress)))
    }

    async fn unseal_reset(
        &self,
        request: Request<proto::UnsealResetRequest>,
    ) -> Result<Response<proto::Done>, Status> {
        let on_err = refused(&request, "unseal_reset");
        self.hsm.unseal_reset().await.map_err(on_err)?;
        Ok(Response::new(proto::Done {}))
    }

    async fn seal(
        &self,
        request: Request<proto::SealRequest>,
    ) -> Result<Response<proto::Done>, Status> {
        let on_err = refused(&request, "seal");
        tracing::info!(caller = caller_name(&request), "seal");
        self.hsm.seal().await.map_err(on_err)?;
        Ok(Response::new(proto::Done {}))
    }

    async fn tamper(
        &self,
        request: Request<proto::TamperRequest>,
    ) -> Result<Response<proto::Done>, Status> {
        let on_err = refused(&request, "tamper");
        tracing::warn!(caller = caller_name(&request), "tamper");
        self.hsm.tamper().await.map_err(on_err)?;
        Ok(Response::new(proto::Done {}))
    }

    async fn self_test(
        &self,
        request: Request<proto::SelfTestRequest>,
    ) -> Result<Response<proto::Done>, Status> {
        let on_err = refused(&request, "self_test");
        self.hsm.self_test().await.map_err(on_err)?;
        Ok(Response::new(proto::Done {}))
    }

    async fn generate_key(
        &self,
        request: Request<proto::GenerateKeyRequest>,
    ) -> Result<Response<proto::WrappedKey>, Status> {
        let on_err = refused(&request, "generate_key");
        let spec = spec_from_wire(request.into_inner().spec).ok_or_else(|| malformed("spec"))?;
        let key = self.hsm.generate_key(spec).await.map_err(on_err)?;
        Ok(Response::new(wrapped_to_wire(&key)))
    }

    async fn form_key(
        &self,
        request: Request<proto::FormKeyRequest>,
    ) -> Result<Response<proto::WrappedKey>, Status> {
        let on_err = refused(&request, "form_key");
        let req = request.into_inner();
        let spec = spec_from_wire(req.spec).ok_or_else(|| malformed("spec"))?;
        let mut components = Vec::with_capacity(req.components.len());
        for mut wire in req.components {
            // Move the text into a zeroizing buffer first, so it is wiped on every path.
            let hex = Zeroizing::new(std::mem::take(&mut wire.hex));
            let expected_kcv =
                kcv_from_wire(wire.expected_kcv).ok_or_else(|| malformed("expected_kcv"))?;
            components.push(Component::new(hex, expected_kcv));
        }
        let key = self.hsm.form_key(spec, components).await.map_err(on_err)?;
        Ok(Response::new(wrapped_to_wire(&key)))
    }

    async fn add_component(
        &self,
        request: Request<proto::AddComponentRequest>,
    ) -> Result<Response<proto::AddComponentResponse>, Status> {
        let on_err = refused(&request, "add_component");
        let req = request.into_inner();
        let mut wire = req.component.ok_or_else(|| malformed("component"))?;
        // Move the text into a zeroizing buffer first, so it is wiped on every path.
        let hex = Zeroizing::new(std::mem::take(&mut wire.hex));
        let expected_kcv =
            kcv_from_wire(wire.expected_kcv).ok_or_else(|| malformed("expected_kcv"))?;
        let component = Component::new(hex, expected_kcv);
        let into = match req.into.ok_or_else(|| malformed("into"))? {
            proto::add_component_request::Into::Begin(begin) => Accumulation::Begin {
                spec: spec_from_wire(begin.spec).ok_or_else(|| malformed("begin.spec"))?,
                components: u8::try_from(begin.components)
                    .map_err(|_| malformed("begin.components"))?,
            },
            proto::add_component_request::Into::Partial(partial) => {
                Accumulation::Continue(KeyToken::from_stored(partial))
            }
        };
        let answer = self
            .hsm
            .add_component(into, component)
            .await
            .map_err(on_err)?;
        Ok(Response::new(accumulated_to_wire(&answer)))
    }

    async fn import_key(
        &self,
        request: Request<proto::ImportKeyRequest>,
    ) -> Result<Response<proto::WrappedKey>, Status> {
        let on_err = refused(&request, "import_key");
        let req = request.into_inner();
        let usage = usage_from_wire(req.usage, req.level).ok_or_else(|| malformed("usage"))?;
        let key = self
            .hsm
            .import_key(&token(req.kek), &req.block, usage)
            .await
            .map_err(on_err)?;
        Ok(Response::new(wrapped_to_wire(&key)))
    }

    async fn export_key(
        &self,
        request: Request<proto::ExportKeyRequest>,
    ) -> Result<Response<proto::ExportedKey>, Status> {
        let on_err = refused(&request, "export_key");
        let req = request.into_inner();
        let version = version_from_wire(req.version).ok_or_else(|| malformed("version"))?;
        let exported = self
            .hsm
            .export_key(&token(req.kek), &token(req.key), version)
            .await
            .map_err(on_err)?;
        Ok(Response::new(proto::ExportedKey {
            block: exported.block,
            kcv: Some(kcv_to_wire(&exported.kcv)),
        }))
    }

    async fn derive_key(
        &self,
        request: Request<proto::DeriveKeyRequest>,
    ) -> Result<Response<proto::WrappedKey>, Status> {
        let on_err = refused(&request, "derive_key");
        let req = request.into_inner();
        let method = dispersion_from_wire(req.method).ok_or_else(|| malformed("method"))?;
        let usage = usage_from_wire(req.child_usage, req.child_level)
            .ok_or_else(|| malformed("child_usage"))?;
        let factors = req
            .factors
            .iter()
            .map(|f| Factor::from_bytes(f))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| to_status(&err))?;
        let key = self
            .hsm
            .derive_key(&token(req.parent), method, &factors, usage)
            .await
            .map_err(on_err)?;
        Ok(Response::new(wrapped_to_wire(&key)))
    }

    async fn write_key_command(
        &self,
        request: Request<proto::WriteKeyRequest>,
    ) -> Result<Response<proto::WriteKeyCommand>, Status> {
        let on_err = refused(&request, "write_key_command");
        let req = request.into_inner();
        let request = WriteKeyRequest {
            key: token(req.key),
            protect: token(req.protect),
            cla: small(req.cla, "cla")?,
            ins: small(req.ins, "ins")?,
            p1: small(req.p1, "p1")?,
            p2: small(req.p2, "p2")?,
            key_header: req.key_header,
            challenge: req.challenge,
            fold: fold_from_wire(req.fold).ok_or_else(|| malformed("fold"))?,
        };
        let command = self.hsm.write_key_command(request).await.map_err(on_err)?;
        Ok(Response::new(proto::WriteKeyCommand {
            apdu: command.apdu,
            kcv: Some(kcv_to_wire(&command.kcv)),
        }))
    }

    async fn batch(
        &self,
        request: Request<proto::BatchRequest>,
    ) -> Result<Response<proto::BatchResponse>, Status> {
        let on_err = refused(&request, "batch");
        let items = request
            .into_inner()
            .items
            .into_iter()
            .map(batch_item_from_wire)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| malformed("batch item"))?;
        let results = self.hsm.batch(items).await.map_err(on_err)?;
        Ok(Response::new(proto::BatchResponse {
            results: results.iter().map(batch_result_to_wire).collect(),
        }))
    }

    async fn kcv(
        &self,
        request: Request<proto::KcvRequest>,
    ) -> Result<Response<proto::KeyCheckValue>, Status> {
        let on_err = refused(&request, "kcv");
        let key = token(request.into_inner().key);
        let kcv = self.hsm.kcv(&key).await.map_err(on_err)?;
        Ok(Response::new(kcv_to_wire(&kcv)))
    }

    async fn random(
        &self,
        request: Request<proto::RandomRequest>,
    ) -> Result<Response<proto::RandomResponse>, Status> {
        let on_err = refused(&request, "random");
        let len = narrow(request.into_inner().len).ok_or_else(|| malformed("len"))?;
        let bytes = self.hsm.random(len).await.map_err(on_err)?;
        Ok(Response::new(proto::RandomResponse { bytes }))
    }

    async fn mac(
        &self,
        request: Request<proto::MacRequest>,
    ) -> Result<Response<proto::MacResponse>, Status> {
        let on_err = refused(&request, "mac");
        let req = request.into_inner();
        let mac = self
            .hsm
            .mac(&token(req.key), &req.data)
            .await
            .map_err(on_err)?;
        Ok(Response::new(proto::MacResponse { mac }))
    }

    async fn verify_mac(
        &self,
        request: Request<proto::VerifyMacRequest>,
    ) -> Result<Response<proto::Done>, Status> {
        let on_err = refused(&request, "verify_mac");
        let req = request.into_inner();
        self.hsm
            .verify_mac(&token(req.key), &req.data, &req.mac)
            .await
            .map_err(on_err)?;
        Ok(Response::new(proto::Done {}))
    }

    async fn sign(
        &self,
        request: Request<proto::SignRequest>,
    ) -> Result<Response<proto::SignResponse>, Status> {
        let on_err = refused(&request, "sign");
        let req = request.into_inner();
        let signature = self
            .hsm
            .sign(&token(req.key), &req.data)
            .await
            .map_err(on_err)?;
        Ok(Response::new(proto::SignResponse { signature }))
    }

    async fn public_key(
        &self,
        request: Request<proto::PublicKeyRequest>,
    ) -> Result<Response<proto::PublicKeyResponse>, Status> {
        let on_err = refused(&request, "public_key");
        let req = request.into_inner();
        let public_key = self.hsm.public_key(&token(req.key)).await.map_err(on_err)?;
        Ok(Response::new(proto::PublicKeyResponse { public_key }))
    }

    async fn index_hashes(
        &self,
        request: Request<proto::IndexHashesRequest>,
    ) -> Result<Response<proto::IndexHashesResponse>, Status> {
        let on_err = refused(&request, "index_hashes");
        let req = request.into_inner();
        let hashes = self
            .hsm
            .index_hashes(&token(req.key), &req.domain, req.values)
            .await
            .map_err(on_err)?;
        Ok(Response::new(proto::IndexHashesResponse {
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn seal_fields(
        &self,
        request: Request<proto::SealFieldsRequest>,
    ) -> Result<Response<proto::FieldsResponse>, Status> {
        let on_err = refused(&request, "seal_fields");
        let req = request.into_inner();
        let fields = req
            .fields
            .into_iter()
            .map(|f| ClearField {
                aad: f.aad,
                value: f.data,
            })
            .collect();
        let sealed = self
            .hsm
            .seal_fields(&token(req.key), fields)
            .await
            .map_err(on_err)?;
        Ok(Response::new(proto::FieldsResponse {
            fields: sealed
                .into_iter()
                .map(|f| proto::RegistryField {
                    aad: f.aad,
                    data: f.sealed,
                })
                .collect(),
        }))
    }

    async fn open_fields(
        &self,
        request: Request<proto::OpenFieldsRequest>,
    ) -> Result<Response<proto::FieldsResponse>, Status> {
        let on_err = refused(&request, "open_fields");
        let req = request.into_inner();
        let fields = req
            .fields
            .into_iter()
            .map(|f| SealedField {
                aad: f.aad,
                sealed: f.data,
            })
            .collect();
        let opened = self
            .hsm
            .open_fields(&token(req.key), fields)
            .await
            .map_err(on_err)?;
        Ok(Response::new(proto::FieldsResponse {
            fields: opened
                .iter()
                .map(|f| proto::RegistryField {
                    aad: f.aad.clone(),
                    data: f.value.clone(),
                })
                .collect(),
        }))
    }

    async fn prepare_lmk_rotation(
        &self,
        request: Request<proto::PrepareLmkRotationRequest>,
    ) -> Result<Response<proto::LmkRotation>, Status> {
        let on_err = refused(&request, "prepare_lmk_rotation");
        tracing::info!(caller = caller_name(&request), "prepare_lmk_rotation");
        let req = request.into_inner();
        let threshold = small(req.threshold, "threshold")?;
        let shares = small(req.shares, "shares")?;
        let tokens = req.tokens.into_iter().map(token).collect();
        let rotation = self
            .hsm
            .prepare_lmk_rotation(tokens, threshold, shares)
            .await
            .map_err(on_err)?;
        Ok(Response::new(proto::LmkRotation {
            parts: rotation.parts.as_ref().map(parts_to_wire),
            lmk_kcv: Some(kcv_to_wire(&rotation.lmk_kcv)),
            tokens: rotation
                .tokens
                .iter()
                .map(|t| t.as_str().to_owned())
                .collect(),
            ..Default::default()
        }))
    }

    async fn rewrap_for_rotation(
        &self,
        request: Request<proto::RewrapForRotationRequest>,
    ) -> Result<Response<proto::RewrappedTokens>, Status> {
        let on_err = refused(&request, "rewrap_for_rotation");
        tracing::info!(caller = caller_name(&request), "rewrap_for_rotation");
        let req = request.into_inner();
        let kcv = kcv_from_wire(req.new_lmk_kcv).ok_or_else(|| malformed("new_lmk_kcv"))?;
        let tokens = req.tokens.into_iter().map(token).collect();
        let tokens = self
            .hsm
            .rewrap_for_rotation(&kcv, tokens)
            .await
            .map_err(on_err)?;
        Ok(Response::new(proto::RewrappedTokens {
            tokens: tokens.iter().map(|t| t.as_str().to_owned()).collect(),
        }))
    }

    async fn commit_lmk_rotation(
        &self,
        request: Request<proto::CommitLmkRotationRequest>,
    ) -> Result<Response<proto::Done>, Status> {
        let on_err = refused(&request, "commit_lmk_rotation");
        tracing::info!(caller = caller_name(&request), "commit_lmk_rotation");
        let kcv = kcv_from_wire(request.into_inner().new_lmk_kcv)
            .ok_or_else(|| malformed("new_lmk_kcv"))?;
        self.hsm.commit_lmk_rotation(&kcv).await.map_err(on_err)?;
        Ok(Response::new(proto::Done {}))
    }

    async fn issue_transport_key_components(
        &self,
        request: Request<proto::IssueTransportKeyComponentsRequest>,
    ) -> Result<Response<proto::IssuedComponents>, Status> {
        let on_err = refused(&request, "issue_transport_key_components");
        let req = request.into_inner();
        let alg = algorithm_from_wire(req.algorithm).ok_or_else(|| malformed("algorithm"))?;
        let count = small(req.components, "components")?;
        let issued = self
            .hsm
            .issue_transport_key_components(alg, count)
            .await
            .map_err(on_err)?;
        Ok(Response::new(proto::IssuedComponents {
            key: Some(wrapped_to_wire(&issued.key)),
            parts: Some(parts_to_wire(&issued.parts)),
        }))
    }

    async fn issue_transport_key_under(
        &self,
        request: Request<proto::IssueTransportKeyUnderRequest>,
    ) -> Result<Response<proto::IssuedUnderKek>, Status> {
        let on_err = refused(&request, "issue_transport_key_under");
        let req = request.into_inner();
        let alg = algorithm_from_wire(req.algorithm).ok_or_else(|| malformed("algorithm"))?;
        let issued = self
            .hsm
            .issue_transport_key_under(&token(req.kek), alg)
            .await
            .map_err(on_err)?;
        Ok(Response::new(proto::IssuedUnderKek {
            key: Some(wrapped_to_wire(&issued.key)),
            block: issued.block,
        }))
    }

    async fn backup_key(
        &self,
        request: Request<proto::BackupKeyRequest>,
    ) -> Result<Response<proto::KeyBackup>, Status> {
        let on_err = refused(&request, "backup_key");
        tracing::info!(caller = caller_name(&request), "backup_key");
        let req = request.into_inner();
        let threshold = u8::try_from(req.threshold).map_err(|_| malformed("threshold"))?;
        let shares = u8::try_from(req.shares).map_err(|_| malformed("shares"))?;
        let backup = self
            .hsm
            .backup_key(&KeyToken::from_stored(req.key), threshold, shares)
            .await
            .map_err(on_err)?;
        Ok(Response::new(backup_to_wire(&backup)))
    }

    async fn restore_share(
        &self,
        request: Request<proto::RestoreShareRequest>,
    ) -> Result<Response<proto::RestoreShareResponse>, Status> {
        let on_err = refused(&request, "restore_share");
        let mut req = request.into_inner();
        // Move the text into a zeroizing buffer first, so it is wiped on every path.
        let share = LmkShare::new(Zeroizing::new(std::mem::take(&mut req.share)));
        let into = match req.into.ok_or_else(|| malformed("into"))? {
            proto::restore_share_request::Into::Begin(begin) => Restoration::Begin {
                spec: spec_from_wire(begin.spec).ok_or_else(|| malformed("begin.spec"))?,
                kcv: kcv_from_wire(begin.kcv).ok_or_else(|| malformed("begin.kcv"))?,
                backup: begin.backup,
            },
            proto::restore_share_request::Into::Partial(partial) => {
                Restoration::Continue(KeyToken::from_stored(partial))
            }
        };
        let answer = self.hsm.restore_share(into, share).await.map_err(on_err)?;
        Ok(Response::new(restored_to_wire(&answer)))
    }
}
