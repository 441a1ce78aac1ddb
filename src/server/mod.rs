//! The gRPC face of the service: mutual TLS, the caller's identity from its certificate, request
//! and response mapping, and the **one place** where errors become `tonic::Status`.
//!
//! `serve` takes a listener that is already bound and a shutdown future (mini-redis style), so
//! tests start it on `127.0.0.1:0` and never wait on time. Health (`""` and each service, see
//! [`HEALTH_SERVICE_NAMES`]) follows the HSM's readiness as [`crate::service::WatchedHsm`]
//! publishes it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hsm_api::Hsm;
use tokio::net::TcpListener;
use tonic::transport::ServerTlsConfig;
use tonic::{Request, Status};

use crate::access::identity::Identity;
use crate::error::{Error, Result};
use crate::proto::kms::v1 as pb;
use crate::service::Kms;

mod admission;
mod ceremonies;
pub mod codec;
mod convert;
mod instrument;
pub mod limits;
mod officers;
mod psam_lines;
mod registrars;
mod stations;
mod status;

pub use instrument::serve_metrics;
use status::status;
pub use status::{DOMAIN, RETRY_PUSHBACK, to_status};

pub mod config;

pub use admission::RateLimiter;
pub use config::Limits;

/// The file descriptor set of every proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sscard_descriptor");

/// Serves the API on `listener` until `shutdown` completes, with the default [`Limits`].
pub async fn serve<H: Hsm>(
    kms: Arc<Kms<H>>,
    listener: TcpListener,
    tls: ServerTlsConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    serve_with_limits(kms, listener, tls, Limits::default(), shutdown).await
}

/// Serves the API on `listener` until `shutdown` completes, admitting what `limits` allow:
/// the TLS handshake timeout (tonic's), open connections (a permit held by each connection),
/// the request rate of each caller identity, requests in flight per connection, request time,
/// and the size of every request ([`limits`]).
pub async fn serve_with_limits<H: Hsm>(
    kms: Arc<Kms<H>>,
    listener: TcpListener,
    tls: ServerTlsConfig,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    limits.validate()?;
    let metrics = instrument::MetricsLayer::new(Arc::clone(kms.metrics()));
    // Health of the server ("") and of each KMS service follows the HSM: NOT_SERVING unless it
    // is operational, updated whenever the HSM's readiness changes.
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let mut readiness = kms.hsm_readiness();
    let operational = readiness.borrow_and_update().is_operational();
    report_health(&health_reporter, operational).await;
    let health_updates = tokio::spawn(async move {
        while readiness.changed().await.is_ok() {
            let operational = readiness.borrow_and_update().is_operational();
            report_health(&health_reporter, operational).await;
        }
    });
    let api = Api {
        kms,
        limiter: Arc::new(RateLimiter::new(limits.requests_per_second, limits.burst)),
    };
    // Reflection in both protocol versions: grpcurl speaks `v1`; Python's grpcio-reflection,
    // Postman and many other tools still speak `v1alpha`.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let descriptors_refused = |_| Error::Tls {
        what: "reflection",
        reason: "cannot register descriptors",
    };
    let reflection_v1 = reflection().build_v1().map_err(descriptors_refused)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(descriptors_refused)?;
    let tls = tls.timeout(Duration::from_millis(limits.handshake_timeout_ms));
    let streams = limits.max_concurrent_streams;
    let max = limits::MAX_REQUEST_BYTES;
    let served = tonic::transport::Server::builder()
        .tls_config(tls)
        .map_err(|_| Error::Tls {
            what: "server",
            reason: "invalid TLS configuration",
        })?
        .timeout(Duration::from_millis(limits.request_timeout_ms))
        .max_concurrent_streams(streams)
        .concurrency_limit_per_connection(usize::try_from(streams).unwrap_or(usize::MAX))
        // Dead peers are found and their connections (and permits) freed.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(metrics)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            pb::card_key_service_server::CardKeyServiceServer::new(api.clone())
                .max_decoding_message_size(max),
        )
        .add_service(
            pb::psam_service_server::PsamServiceServer::new(api.clone())
                .max_decoding_message_size(max),
        )
        .add_service(
            pb::registry_service_server::RegistryServiceServer::new(api.clone())
                .max_decoding_message_size(max),
        )
        .add_service(
            pb::admin_service_server::AdminServiceServer::new(api).max_decoding_message_size(max),
        )
        // TCP_NODELAY on every accepted connection is set by the admission stream (tonic
        // ignores the builder's `tcp_nodelay` for an incoming stream of our own, and without it
        // every exchange of a small request can wait out the peer's delayed ACK, ~40 ms).
        .serve_with_incoming_shutdown(
            admission::LimitedIncoming::new(listener, limits.max_connections),
            shutdown,
        )
        .await;
    health_updates.abort();
    served.map_err(|e| {
        tracing::error!(error = %e, "server failed");
        Error::Tls {
            what: "server",
            reason: "transport failure",
        }
    })
}

/// The names health is reported for: the server as a whole ("") and each KMS service.
pub const HEALTH_SERVICE_NAMES: [&str; 5] = [
    "",
    pb::card_key_service_server::SERVICE_NAME,
    pb::psam_service_server::SERVICE_NAME,
    pb::registry_service_server::SERVICE_NAME,
    pb::admin_service_server::SERVICE_NAME,
];

async fn report_health(reporter: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for name in HEALTH_SERVICE_NAMES {
        reporter.set_service_status(name, status).await;
    }
}

struct Api<H: Hsm> {
    kms: Arc<Kms<H>>,
    limiter: Arc<RateLimiter>,
}

impl<H: Hsm> Clone for Api<H> {
    fn clone(&self) -> Self {
        Api {
            kms: Arc::clone(&self.kms),
            limiter: Arc::clone(&self.limiter),
        }
    }
}

impl<H: Hsm> Api<H> {
    /// The caller of `request` (from its certificate), if its identity is within its request
    /// rate and every field of the request within its cap.
    fn admit<T: limits::Bounded>(&self, request: &Request<T>) -> Result<Identity, Status> {
        let who = caller(request)?;
        let uri = who.to_string();
        self.limiter.admit(&uri, Instant::now()).map_err(|e| {
            tracing::warn!(caller = %uri, "request refused: over the identity's rate");
            to_status(&e)
        })?;
        request.get_ref().check_limits().map_err(|e| {
            tracing::warn!(caller = %uri, error = %e, "request refused: a field over its cap");
            to_status(&e)
        })?;
        Ok(who)
    }
}

/// The caller, from the client certificate of this connection only.
fn caller<T>(request: &Request<T>) -> Result<Identity, Status> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| to_status(&Error::NoClientCertificate))?;
    let leaf = certs
        .first()
        .ok_or_else(|| to_status(&Error::NoClientCertificate))?;
    Identity::from_certificate(leaf.as_ref()).map_err(|e| to_status(&e))
}

/// Serves the API on `listener` and, when given, the metrics on `metrics` until `shutdown`.
pub async fn serve_all<H: Hsm>(
    kms: Arc<Kms<H>>,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    tls: ServerTlsConfig,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = metrics.map(|listener| {
        tokio::spawn(serve_metrics(Arc::clone(&kms), listener, async {
            let _ = stopped.await;
        }))
    });
    let served = serve_with_limits(kms, listener, tls, limits, shutdown).await;
    drop(stop);
    if let Some(task) = metrics {
        match task.await {
            Ok(result) => result?,
            Err(_) => return Err(Error::Store),
        }
    }
    served
}

/// Binds the metrics listener of a configuration, if it names one, and says where it is.
async fn bind_metrics(addr: Option<std::net::SocketAddr>) -> Result<Option<TcpListener>> {
    let Some(addr) = addr else { return Ok(None) };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::File {
            path: std::path::PathBuf::from(addr.to_string()),
            source,
        })?;
    if let Ok(bound) = listener.local_addr() {
        println!("metrics on http://{bound}/metrics");
    }
    Ok(Some(listener))
}

/// Runs a configured deployment until `shutdown`: TLS from files (a client CA is required), the
/// HSM in-process or remote, the store under the data directory or on PostgreSQL.
pub async fn run_configured(
    config: crate::server::config::Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    use crate::server::config::HsmConfig;
    let tls = crate::access::tls::ServerTlsFiles {
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
    let store = config.store_location()?;
    let addr = listener.local_addr().map_err(|source| Error::File {
        path: config.data_dir.clone(),
        source,
    })?;
    tracing::info!(listen = %addr, data = %config.data_dir.display(), store = %store, "starting");
    let metrics = bind_metrics(config.metrics_listen).await?;
    // One line on stdout once the store and the HSM are open and the port is bound, for
    // supervisors and tests (`listen = "127.0.0.1:0"` works).
    let ready = || println!("listening on {addr}");
    let owner = config.owner()?;
    let list_signature = config.list_signature()?;
    match config.hsm {
        HsmConfig::Local { state_dir } => {
            let hsm = Arc::new(hsm_sim::local::LocalHsm::open(
                hsm_sim::local::LocalHsmConfig {
                    state_dir: Some(state_dir.unwrap_or_else(|| config.data_dir.join("hsm"))),
                    ..Default::default()
                },
            )?);
            let kms = Kms::open_at_as(hsm, &store, owner).await?;
            kms.set_list_signature(list_signature);
            prepare_ceremonies(&kms, &config.ceremony, config.dangerous_allow_test_lmk).await?;
            ready();
            serve_all(kms, listener, metrics, tls, config.limits, shutdown).await
        }
        HsmConfig::Pkcs11 {
            module,
            token_label,
            pin_file,
            operations,
        } => {
            let pin = match pin_file {
                Some(path) => {
                    let text = zeroize::Zeroizing::new(std::fs::read_to_string(&path).map_err(
                        |source| Error::File {
                            path: path.clone(),
                            source,
                        },
                    )?);
                    Some(hsm_api::LmkShare::new(zeroize::Zeroizing::new(
                        text.trim_end_matches(['\n', '\r']).to_owned(),
                    )))
                }
                None => None,
            };
            let p11_config = hsm_pkcs11::Pkcs11Config {
                mode: match operations {
                    crate::server::config::Pkcs11Operations::Strict => hsm_pkcs11::Mode::Strict,
                    crate::server::config::Pkcs11Operations::Release => hsm_pkcs11::Mode::Release,
                },
                ..hsm_pkcs11::Pkcs11Config::new(module, token_label)
            };
            let hsm = Arc::new(hsm_pkcs11::Pkcs11Hsm::open(p11_config, pin)?);
            let kms = Kms::open_at_as(hsm, &store, owner).await?;
            kms.set_list_signature(list_signature);
            ready();
            serve_all(kms, listener, metrics, tls, config.limits, shutdown).await
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
            let kms = Kms::open_at_as(hsm, &store, owner).await?;
            kms.set_list_signature(list_signature);
            kms.set_hsm_batches_at_once(crate::service::remote_hsm_batches());
            prepare_ceremonies(&kms, &config.ceremony, config.dangerous_allow_test_lmk).await?;
            ready();
            serve_all(kms, listener, metrics, tls, config.limits, shutdown).await
        }
    }
}

/// Before `serve` listens: refuses an HSM on the published test LMK (unless
/// `--dangerous-allow-test-lmk`), enrols the bootstrap officers into an empty registry and sets
/// the time limit of dual control.
pub async fn prepare_ceremonies<H: Hsm>(
    kms: &Kms<H>,
    ceremony: &crate::server::config::CeremonyConfig,
    dangerous_allow_test_lmk: bool,
) -> Result<()> {
    if !(1..=86_400).contains(&ceremony.approval_ttl_s) {
        return Err(Error::InvalidArgument {
            field: "ceremony.approval_ttl_s",
            reason: crate::error::Refusal::Between1And86400,
        });
    }
    match kms.hsm_status().await {
        Ok(s) if s.dangerous_test_lmk && !dangerous_allow_test_lmk => {
            tracing::error!(
                "the HSM runs on the published test LMK: refused (serve --dangerous-allow-test-lmk \
                 accepts it, for tests only)"
            );
            return Err(Error::FailedPrecondition {
                reason: crate::error::Refusal::PublishedTestLmk,
            });
        }
        Ok(s) if s.dangerous_test_lmk => {
            tracing::warn!("DANGEROUS: serving on an HSM with the published test LMK");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "the HSM's LMK could not be checked at start"),
    }
    kms.set_approval_ttl(Duration::from_secs(ceremony.approval_ttl_s));
    let mut certs = Vec::new();
    for path in &ceremony.officers {
        certs.push(std::fs::read(path).map_err(|source| Error::File {
            path: path.clone(),
            source,
        })?);
    }
    let enrolled = kms.bootstrap_officers(&certs).await?;
    if !enrolled.is_empty() {
        tracing::info!(count = enrolled.len(), "officer registry bootstrapped");
    }
    Ok(())
}
