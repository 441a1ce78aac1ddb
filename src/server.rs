//! The gRPC face of the service: mutual TLS, the caller's identity from its certificate, request
//! and response mapping, and the **one place** where errors become `tonic::Status`.
//!
//! `serve` takes a listener that is already bound and a shutdown future (mini-redis style), so
//! tests start it on `127.0.0.1:0` and never wait on time.

use std::future::Future;
use std::sync::Arc;

use hsm_api::{Algorithm, Hsm, Kcv, KcvMethod};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::ServerTlsConfig;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::identity::{self, Identity};
use crate::proto::kms::v1 as pb;
use crate::records::{self, CardStatus, EndpointKind, Level};
use crate::service::{self, CardRequest, ComponentInput, DeliveredForm, Delivery, Kms};

/// The file descriptor set of every proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sscard_descriptor");

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve<H: Hsm>(
    kms: Arc<Kms<H>>,
    listener: TcpListener,
    tls: ServerTlsConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let api = Api { kms };
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::card_key_service_server::CardKeyServiceServer<Api<H>>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|_| Error::Tls {
            what: "reflection",
            reason: "cannot register descriptors",
        })?;
    tonic::transport::Server::builder()
        .tls_config(tls)
        .map_err(|_| Error::Tls {
            what: "server",
            reason: "invalid TLS configuration",
        })?
        .add_service(health)
        .add_service(reflection)
        .add_service(pb::card_key_service_server::CardKeyServiceServer::new(
            api.clone(),
        ))
        .add_service(pb::psam_service_server::PsamServiceServer::new(api.clone()))
        .add_service(pb::registry_service_server::RegistryServiceServer::new(
            api.clone(),
        ))
        .add_service(pb::admin_service_server::AdminServiceServer::new(api))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "server failed");
            Error::Tls {
                what: "server",
                reason: "transport failure",
            }
        })
}

struct Api<H: Hsm> {
    kms: Arc<Kms<H>>,
}

impl<H: Hsm> Clone for Api<H> {
    fn clone(&self) -> Self {
        Api {
            kms: Arc::clone(&self.kms),
        }
    }
}

/// The caller, from the client certificate of this connection only.
fn caller<T>(request: &Request<T>) -> Result<Identity, Status> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let uris = identity::san_uris_from_der(leaf.as_ref()).map_err(|e| to_status(&e))?;
    Identity::from_san_uris(&uris).map_err(|e| to_status(&e))
}

/// The one mapping from errors to gRPC status. Internal failures get a generic message; their
/// detail goes to the log only.
pub fn to_status(e: &Error) -> Status {
    use tonic::Code;
    let (code, message) = match e {
        Error::InvalidArgument { .. }
        | Error::InvalidIdentifier { .. }
        | Error::Template { .. } => (Code::InvalidArgument, e.to_string()),
        Error::NotFound { .. } | Error::UnknownTemplate(_) => (Code::NotFound, e.to_string()),
        Error::AlreadyExists { .. } => (Code::AlreadyExists, e.to_string()),
        Error::FailedPrecondition { .. } => (Code::FailedPrecondition, e.to_string()),
        Error::PermissionDenied { .. } => (Code::PermissionDenied, e.to_string()),
        Error::Identity { .. } | Error::NoIdentity | Error::AmbiguousIdentity { .. } => {
            (Code::Unauthenticated, e.to_string())
        }
        Error::Hsm(h) => return hsm_status(h),
        Error::Certificate { .. } => (Code::Unauthenticated, e.to_string()),
        Error::MissingInput(_)
        | Error::AuditBroken
        | Error::Store
        | Error::StoreCorrupt(_)
        | Error::Tls { .. }
        | Error::Pki { .. }
        | Error::PkiFile { .. }
        | Error::CertGen(_)
        | Error::File { .. }
        | Error::Stdin(_) => {
            tracing::error!(error = %e, "internal error");
            (Code::Internal, "internal error".to_owned())
        }
    };
    Status::new(code, message)
}

fn hsm_status(e: &hsm_api::Error) -> Status {
    use hsm_api::Error as H;
    use tonic::Code;
    let code = match e {
        H::Sealed | H::Uninitialised | H::SelfTestFailed(_) | H::SelfTest(_) => {
            Code::FailedPrecondition
        }
        H::Unavailable => Code::Unavailable,
        // Input a caller gave: component KCVs, key lengths, challenges, bad hex, weak keys.
        H::KeyLength { .. }
        | H::WeakKey
        | H::Hex { .. }
        | H::DataLength { .. }
        | H::AtrTooShort(_)
        | H::RegionCode(_)
        | H::ComponentKcv { .. }
        | H::Count { .. }
        | H::UnknownAlgorithm(_)
        | H::Share(_)
        | H::LmkKcvMismatch => Code::InvalidArgument,
        H::AlreadyInitialised => Code::FailedPrecondition,
        // A request the keys involved do not allow (e.g. an SM4 key under a TDES transport key).
        H::Unsupported { .. }
        | H::KeyBlockKbpk { .. }
        | H::KeyBlockKbpkStrength { .. }
        | H::NotExportable
        | H::WrongUsage { .. } => Code::FailedPrecondition,
        _ => {
            tracing::error!(error = %e, "HSM error");
            return Status::internal("internal error");
        }
    };
    Status::new(code, e.to_string())
}

fn status(e: Error) -> Status {
    to_status(&e)
}

fn card_request(card: Option<pb::CardIdentity>) -> Result<CardRequest, Status> {
    let c = card.ok_or_else(|| Status::invalid_argument("invalid card: required"))?;
    Ok(CardRequest {
        card_identifier: c.card_identifier,
        card_number: c.card_number,
        social_security_number: c.social_security_number,
        atr: c.atr,
    })
}

fn pb_algorithm(a: Algorithm) -> i32 {
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

fn pb_kcv(k: &Kcv) -> pb::KeyCheckValue {
    pb::KeyCheckValue {
        method: (match k.method() {
            KcvMethod::EncryptZeros => pb::KcvMethod::EncryptZeros,
            KcvMethod::Cmac => pb::KcvMethod::CmacZeros,
        }) as i32,
        value: k.value().to_vec(),
    }
}

fn pb_level(l: Level) -> i32 {
    (match l {
        Level::National => pb::KeyLevel::National,
        Level::Province => pb::KeyLevel::Provincial,
        Level::City => pb::KeyLevel::City,
        Level::Card => pb::KeyLevel::Card,
    }) as i32
}

fn pb_delivered(d: service::Delivered) -> pb::DeliveredKey {
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
        psam_usage: d.psam_usage.map(u32::from).unwrap_or(0),
    }
}

fn pb_card(c: records::Card) -> pb::CardRecord {
    pb::CardRecord {
        card_identifier: c.card_identifier,
        card_number_masked: crate::identifiers::CardNumber::parse_field(
            "card_number",
            &c.card_number,
        )
        .map(|n| n.masked())
        .unwrap_or_default(),
        social_security_number_masked: crate::identifiers::SocialSecurityNumber::parse_field(
            "social_security_number",
            &c.social_security_number,
        )
        .map(|n| n.masked())
        .unwrap_or_default(),
        region: c.region,
        template_id: c.template_id,
        status: (match c.status {
            CardStatus::Registered => pb::CardStatus::Registered,
            CardStatus::Accepted => pb::CardStatus::Accepted,
            CardStatus::Blacklisted => pb::CardStatus::Blacklisted,
        }) as i32,
        issued_root_versions: c.issued_root_versions.into_iter().collect(),
    }
}

fn pb_key_record(r: records::KeyRecord) -> pb::KeyRecord {
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
    }
}

fn components(list: Vec<pb::Component>) -> Vec<ComponentInput> {
    list.into_iter()
        .map(|c| ComponentInput {
            hex: Zeroizing::new(c.hex),
            kcv_hex: c.kcv_hex,
        })
        .collect()
}

#[tonic::async_trait]
impl<H: Hsm> pb::card_key_service_server::CardKeyService for Api<H> {
    async fn inject_card_keys(
        &self,
        request: Request<pb::InjectCardKeysRequest>,
    ) -> Result<Response<pb::InjectCardKeysResponse>, Status> {
        let who = caller(&request)?;
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
            _ => return Err(Status::invalid_argument("invalid delivery: required")),
        };
        let keys = self
            .kms
            .inject_card_keys(&who, card_request(req.card)?, &req.template_id, delivery)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::InjectCardKeysResponse {
            keys: keys.into_iter().map(pb_delivered).collect(),
        }))
    }

    async fn initialise_blank_card(
        &self,
        request: Request<pb::InitialiseBlankCardRequest>,
    ) -> Result<Response<pb::InitialiseBlankCardResponse>, Status> {
        let who = caller(&request)?;
        let req = request.into_inner();
        let key = self
            .kms
            .initialise_blank_card(
                &who,
                card_request(req.card)?,
                &req.template_id,
                req.challenge,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::InitialiseBlankCardResponse {
            master_key: Some(pb_delivered(key)),
        }))
    }
}

#[tonic::async_trait]
impl<H: Hsm> pb::psam_service_server::PsamService for Api<H> {
    async fn register_psams(
        &self,
        request: Request<pb::RegisterPsamsRequest>,
    ) -> Result<Response<pb::RegisterPsamsResponse>, Status> {
        let who = caller(&request)?;
        let req = request.into_inner();
        let registered = self
            .kms
            .register_psams(&who, req.serials, &req.region, &req.template_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RegisterPsamsResponse { registered }))
    }

    async fn get_psam_key_set(
        &self,
        request: Request<pb::GetPsamKeySetRequest>,
    ) -> Result<Response<pb::GetPsamKeySetResponse>, Status> {
        let who = caller(&request)?;
        let req = request.into_inner();
        let set = self
            .kms
            .psam_key_set(&who, &req.serial)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetPsamKeySetResponse {
            serial: set.serial,
            keys: set.keys.into_iter().map(pb_delivered).collect(),
            omitted: set
                .omitted
                .into_iter()
                .map(|(key_name, reason)| pb::OmittedKey {
                    key_name,
                    reason: reason.to_owned(),
                })
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl<H: Hsm> pb::registry_service_server::RegistryService for Api<H> {
    async fn register_card(
        &self,
        request: Request<pb::RegisterCardRequest>,
    ) -> Result<Response<pb::CardRecord>, Status> {
        let who = caller(&request)?;
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
        let who = caller(&request)?;
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
        let who = caller(&request)?;
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
        let who = caller(&request)?;
        let req = request.into_inner();
        let card = self
            .kms
            .get_card(&who, &req.card_identifier)
            .await
            .map_err(status)?;
        Ok(Response::new(pb_card(card)))
    }
}

fn level_of(level: i32) -> Result<Level, Status> {
    match pb::KeyLevel::try_from(level) {
        Ok(pb::KeyLevel::National) => Ok(Level::National),
        Ok(pb::KeyLevel::Provincial) => Ok(Level::Province),
        _ => Err(Status::invalid_argument(
            "invalid level: national or provincial",
        )),
    }
}

#[tonic::async_trait]
impl<H: Hsm> pb::admin_service_server::AdminService for Api<H> {
    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        let who = caller(&request)?;
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
        let who = caller(&request)?;
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
        let who = caller(&request)?;
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
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb_key_record(r)))
    }

    async fn generate_root_key(
        &self,
        request: Request<pb::GenerateRootKeyRequest>,
    ) -> Result<Response<pb::KeyRecord>, Status> {
        let who = caller(&request)?;
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
        let who = caller(&request)?;
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
        let who = caller(&request)?;
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

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let who = caller(&request)?;
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
        let who = caller(&request)?;
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
        let who = caller(&request)?;
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

/// Runs a configured deployment until `shutdown`: TLS from files (a client CA is required), the
/// HSM in-process or remote, the store under the data directory.
pub async fn run_configured(
    config: crate::config::Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    use crate::config::HsmConfig;
    let tls = crate::tls::ServerTlsFiles {
        cert: config.tls.cert.clone(),
        key: config.tls.key.clone(),
        client_ca: config.tls.client_ca.clone(),
    }
    .load()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::File {
            path: std::path::PathBuf::from(config.listen.to_string()),
            source,
        })?;
    let store_dir = config.data_dir.join("store");
    let addr = listener.local_addr().map_err(|source| Error::File {
        path: config.data_dir.clone(),
        source,
    })?;
    tracing::info!(listen = %addr, data = %config.data_dir.display(), "starting");
    // One line on stdout once the store and the HSM are open and the port is bound, for
    // supervisors and tests (`listen = "127.0.0.1:0"` works).
    let ready = || println!("listening on {addr}");
    match config.hsm {
        HsmConfig::Local { state_dir } => {
            let hsm = Arc::new(hsm_sim::local::LocalHsm::open(
                hsm_sim::local::LocalHsmConfig {
                    state_dir: Some(state_dir.unwrap_or_else(|| config.data_dir.join("hsm"))),
                    ..Default::default()
                },
            )?);
            let kms = Kms::open(hsm, &store_dir).await?;
            ready();
            serve(kms, listener, tls, shutdown).await
        }
        HsmConfig::Remote {
            endpoint,
            ca,
            cert,
            key,
        } => {
            let client_tls =
                hsm_sim::remote::ClientTls::from_pem_files(&cert, &key, &ca).map_err(|e| {
                    tracing::error!(error = %e, "HSM client TLS refused");
                    Error::Tls {
                        what: "HSM client",
                        reason: "cannot load the HSM client certificate, key or CA",
                    }
                })?;
            let hsm = Arc::new(
                hsm_sim::remote::RemoteHsm::connect_lazy(&endpoint, client_tls).map_err(|e| {
                    tracing::error!(error = %e, "HSM endpoint refused");
                    Error::Tls {
                        what: "HSM client",
                        reason: "invalid HSM endpoint",
                    }
                })?,
            );
            let kms = Kms::open(hsm, &store_dir).await?;
            ready();
            serve(kms, listener, tls, shutdown).await
        }
    }
}
