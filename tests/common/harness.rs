//! The key service over real mutual TLS on 127.0.0.1, as the integration tests drive it.
//!
//! - The published test keys are seeded **once per test binary** into a scratch data directory
//!   (`dangerous_seed_test_keys`: both templates, their roots, ~1000 derived keys, the demo
//!   station, PSAM line and cards); every test then starts from its own copy of that database
//!   file, so tests never share state and the derivation is paid once.
//! - [`TestKms`] owns one data directory, its HSM, the service and the gRPC server: the listener
//!   is bound before `serve` is called and shutdown is a oneshot whose completion is awaited,
//!   so no test ever sleeps. A test can stop the server, close the store (every `Kms` clone
//!   dropped, checked through a `Weak`) and reopen the same directory.
//! - Clients are made per identity from the test PKI (`DevPki`), on `https://localhost:<port>`,
//!   connecting lazily: a refused handshake shows on the first RPC (DEPENDENCIES.md, TLS 1.3).
//! - Every log line of the binary is captured ([`logs`]) so that a test can search it.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hsm_api::Hsm;
use hsm_pkcs11::{Mode, Pkcs11Config, Pkcs11Hsm};
use hsm_sim::local::{LocalHsm, LocalHsmConfig};
use sscard_kms::access::identity::Identity;
use sscard_kms::access::pki::DevPki;
use sscard_kms::access::tls;
use sscard_kms::card::template::KeyOwner;
use sscard_kms::proto::kms::v1 as pb;
use sscard_kms::proto::kms::v1::admin_service_client::AdminServiceClient;
use sscard_kms::proto::kms::v1::card_key_service_client::CardKeyServiceClient;
use sscard_kms::proto::kms::v1::psam_service_client::PsamServiceClient;
use sscard_kms::proto::kms::v1::registry_service_client::RegistryServiceClient;
use sscard_kms::server;
use sscard_kms::service::Kms;
use sscard_kms::state::audit::AuditRecord;
use sscard_kms::state::postgres::test_cluster::TestCluster;
use sscard_kms::state::store::{DB_FILE, SEAL_GAP_ACTION, StoreLocation};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Response, Status};

/// The demo station of Guangzhou (registered with the published transport key).
pub const STATION: &str = "sscard://station/440100/GZ-01";
/// The demo PSAM production line (province level, registered).
pub const PSAM_LINE: &str = "sscard://psam-line/440000/PSAM-LINE-01";
/// The Guangzhou registrar.
pub const REGISTRAR: &str = "sscard://registrar/440100/GZ-REG-01";
/// The province's registrar (the provincial card centre): accepts cards and applicant rows.
pub const PROVINCIAL_REGISTRAR: &str = "sscard://registrar/440000/GD-REV-01";
/// A security officer (registered in every test service, as are [`OFFICER_2`] and [`AUDITOR`]).
pub const OFFICER: &str = "sscard://officer/officer-1";
/// A second security officer: dual control needs two.
pub const OFFICER_2: &str = "sscard://officer/officer-2";
/// An auditor.
pub const AUDITOR: &str = "sscard://auditor/auditor-1";

/// An in-process HSM on the published test LMK: operational at once, tokens of every
/// instance interchangeable.
pub fn local_hsm() -> Arc<LocalHsm> {
    Arc::new(
        LocalHsm::open(LocalHsmConfig {
            dangerous_test_lmk: true,
            ..Default::default()
        })
        .unwrap(),
    )
}

/// A PKCS#11 HSM on a throwaway SoftHSM2 token of its own (a new label each call, in this
/// process's one token directory), in release mode, on the published test LMK: operational at
/// once, tokens of every instance interchangeable.
pub fn softhsm_hsm() -> Arc<Pkcs11Hsm> {
    softhsm_hsm_in(Mode::Release)
}

/// As [`softhsm_hsm`], in `mode`.
pub fn softhsm_hsm_in(mode: Mode) -> Arc<Pkcs11Hsm> {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap()).path();
    let label = format!("test-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let token = hsm_pkcs11::softhsm::dangerous_token(dir, &label).unwrap();
    let config = Pkcs11Config {
        mode,
        dangerous_test_lmk: true,
        ..token.config()
    };
    Arc::new(Pkcs11Hsm::open(config, Some(token.pin())).unwrap())
}

/// A backend the parameterised tests run on: a fresh test-LMK instance, and its own seeded
/// fixture (tokens at rest differ between backends).
pub trait TestBackend: Hsm + Sized {
    /// A fresh instance on the published test LMK, operational.
    fn test_hsm() -> Arc<Self>;
    /// This backend's fixture, seeded once per binary.
    fn fixture_cell() -> &'static OnceLock<Fixture>;
}

impl TestBackend for LocalHsm {
    fn test_hsm() -> Arc<LocalHsm> {
        local_hsm()
    }

    fn fixture_cell() -> &'static OnceLock<Fixture> {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        &FIXTURE
    }
}

impl TestBackend for Pkcs11Hsm {
    fn test_hsm() -> Arc<Pkcs11Hsm> {
        softhsm_hsm()
    }

    fn fixture_cell() -> &'static OnceLock<Fixture> {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        &FIXTURE
    }
}

/// Runs a test body `name::<B>()` once per backend, as `name::local` and `name::softhsm`.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local() {
                super::$name::<hsm_sim::local::LocalHsm>().await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn softhsm() {
                super::$name::<hsm_pkcs11::Pkcs11Hsm>().await
            }
        }
    )+};
}

// ------------------------------------------------------------------------------- the fixture

/// A seeded store of one backend.
pub struct Fixture {
    /// The seeded `kms.redb`, closed cleanly.
    db: Vec<u8>,
    seeding: Duration,
}

/// Seeds once per backend, on a thread of its own (a test's runtime must not block on another
/// runtime).
fn fixture<B: TestBackend>() -> &'static Fixture {
    B::fixture_cell().get_or_init(|| std::thread::spawn(seed::<B>).join().unwrap())
}

fn seed<B: TestBackend>() -> Fixture {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let kms = Kms::open(B::test_hsm(), dir.path()).await.unwrap();
        let started = Instant::now();
        assert!(
            sscard_kms::dev::dangerous_seed_test_keys(&kms)
                .await
                .unwrap(),
            "a fresh store is seeded"
        );
        let seeding = started.elapsed();
        close_store(kms);
        let db = std::fs::read(dir.path().join(DB_FILE)).unwrap();
        Fixture { db, seeding }
    })
}

/// How long seeding the published test keys took (once per binary).
pub fn seeding_time() -> Duration {
    fixture::<LocalHsm>().seeding
}

/// Drops the last handle of a service and checks it was the last: the store's writer thread
/// has then finished and the database file is closed.
fn close_store<H: Hsm>(kms: Arc<Kms<H>>) {
    let weak = Arc::downgrade(&kms);
    drop(kms);
    assert!(
        weak.upgrade().is_none(),
        "a Kms handle outlived the server: the store would stay open"
    );
}

// ------------------------------------------------------------------------------- the store

/// Whether this run's services are on PostgreSQL (`SSCARD_TEST_STORE=postgres`, as `.ci/run`'s
/// second pass sets it) instead of redb: the same tests, on the other engine.
pub fn on_postgres() -> bool {
    std::env::var("SSCARD_TEST_STORE").is_ok_and(|s| s == "postgres")
}

/// The test cluster of a PostgreSQL run (`.ci/run` makes its binaries present).
fn cluster() -> &'static TestCluster {
    TestCluster::shared().unwrap_or_else(|why| panic!("SSCARD_TEST_STORE=postgres: {why}"))
}

/// `true` (after saying so) when the test edits or copies the redb file itself and this run is
/// on PostgreSQL, where `src/state/tests/store.rs` damages the database instead.
pub fn redb_only(test: &str) -> bool {
    if on_postgres() {
        eprintln!("SKIPPED {test} on PostgreSQL: it works on the redb file itself");
    }
    on_postgres()
}

/// The store of a test in `dir`: its redb file there, or (PostgreSQL run) a new database that
/// holds a copy of it if there is one (`store migrate`'s copy, verified).
fn test_store(dir: &std::path::Path) -> (StoreLocation, Option<String>) {
    if !on_postgres() {
        return (StoreLocation::Redb(dir.to_owned()), None);
    }
    let (name, config) = cluster().new_database();
    if dir.join(DB_FILE).exists() {
        sscard_kms::state::migrate::redb_to_postgres(dir, &config).unwrap();
        std::fs::remove_file(dir.join(DB_FILE)).unwrap();
    }
    (StoreLocation::Postgres(Box::new(config)), Some(name))
}

// ---------------------------------------------------------------------------------- the logs

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures every log line of the service, the HSM and tonic from now on (once per binary).
fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "sscard_kms=trace,hsm_sim=trace,hsm_pkcs11=trace,tonic=debug,info",
            ))
            .with_ansi(false)
            .with_writer(|| LogSink)
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// Everything logged so far by any test of this binary.
pub fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

// ---------------------------------------------------------------------------------- clients

/// gRPC clients of every service, sharing one channel of one identity.
#[derive(Debug, Clone)]
pub struct Clients {
    pub card: CardKeyServiceClient<Channel>,
    pub psam: PsamServiceClient<Channel>,
    pub registry: RegistryServiceClient<Channel>,
    pub admin: AdminServiceClient<Channel>,
    pub health: tonic_health::pb::health_client::HealthClient<Channel>,
}

impl Clients {
    fn new(channel: Channel) -> Clients {
        Clients {
            card: CardKeyServiceClient::new(channel.clone()),
            psam: PsamServiceClient::new(channel.clone()),
            registry: RegistryServiceClient::new(channel.clone()),
            admin: AdminServiceClient::new(channel.clone()),
            health: tonic_health::pb::health_client::HealthClient::new(channel),
        }
    }
}

// ---------------------------------------------------------------------------------- the kms

struct RunningServer {
    port: u16,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<sscard_kms::Result<()>>,
}

/// One data directory, its HSM, the service on it and the gRPC server in front of it.
pub struct TestKms<H: Hsm> {
    dir: tempfile::TempDir,
    location: StoreLocation,
    database: Option<String>,
    pki: DevPki,
    /// One certificate per identity, made on first use: an officer's fingerprint stays the one
    /// the registry holds.
    certs: Mutex<std::collections::HashMap<String, sscard_kms::access::pki::CertPair>>,
    hsm: Arc<H>,
    kms: Option<Arc<Kms<H>>>,
    server: Option<RunningServer>,
    limits: server::Limits,
    /// Whose deployment this is (the province's unless opened with `empty_as`).
    owner: KeyOwner,
}

impl<H: Hsm> std::fmt::Debug for TestKms<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKms")
            .field("dir", &self.dir.path())
            .field("store", &self.location.to_string())
            .field("port", &self.server.as_ref().map(|s| s.port))
            .finish_non_exhaustive()
    }
}

impl TestKms<LocalHsm> {
    /// A copy of the seeded data directory on an in-process test-LMK HSM, serving.
    pub async fn seeded() -> TestKms<LocalHsm> {
        TestKms::from_fixture(local_hsm()).await
    }

    /// A copy of the seeded data directory, served with `limits`.
    pub async fn seeded_with_limits(limits: server::Limits) -> TestKms<LocalHsm> {
        TestKms::from_fixture_with_limits(local_hsm(), limits).await
    }
}

impl<B: TestBackend> TestKms<B> {
    /// A copy of backend `B`'s seeded data directory on a fresh `B` on the test LMK, serving.
    pub async fn seeded_on() -> TestKms<B> {
        TestKms::seeded_with(B::test_hsm()).await
    }

    /// A copy of backend `B`'s seeded data directory on `hsm` (a `B` on the test LMK), serving.
    pub async fn seeded_with(hsm: Arc<B>) -> TestKms<B> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), &fixture::<B>().db).unwrap();
        TestKms::open_in(dir, hsm, server::Limits::default()).await
    }
}

impl<H: Hsm> TestKms<H> {
    /// A copy of the simulator's seeded data directory, opened on `hsm` (whose tokens are the
    /// simulator's: a `LocalHsm` or a remote one on the test LMK), serving.
    pub async fn from_fixture(hsm: Arc<H>) -> TestKms<H> {
        TestKms::from_fixture_with_limits(hsm, server::Limits::default()).await
    }

    /// A copy of the simulator's seeded data directory, opened on `hsm`, served with `limits`.
    pub async fn from_fixture_with_limits(hsm: Arc<H>, limits: server::Limits) -> TestKms<H> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), &fixture::<LocalHsm>().db).unwrap();
        TestKms::open_in(dir, hsm, limits).await
    }

    /// An empty data directory (nothing seeded, no audit key yet), opened on `hsm`, serving.
    pub async fn empty(hsm: Arc<H>) -> TestKms<H> {
        TestKms::empty_as(hsm, KeyOwner::Province).await
    }

    /// An empty data directory for the deployment of `owner` (a city's: N9), serving.
    pub async fn empty_as(hsm: Arc<H>, owner: KeyOwner) -> TestKms<H> {
        let dir = tempfile::tempdir().unwrap();
        TestKms::open_as(dir, hsm, server::Limits::default(), owner).await
    }

    async fn open_in(dir: tempfile::TempDir, hsm: Arc<H>, limits: server::Limits) -> TestKms<H> {
        TestKms::open_as(dir, hsm, limits, KeyOwner::Province).await
    }

    async fn open_as(
        dir: tempfile::TempDir,
        hsm: Arc<H>,
        limits: server::Limits,
        owner: KeyOwner,
    ) -> TestKms<H> {
        capture_logs();
        let (location, database) = test_store(dir.path());
        let kms = Kms::open_at_as(Arc::clone(&hsm), &location, owner)
            .await
            .unwrap();
        let mut this = TestKms {
            dir,
            location,
            database,
            pki: DevPki::generate().unwrap(),
            certs: Mutex::new(std::collections::HashMap::new()),
            hsm,
            kms: Some(kms),
            server: None,
            limits,
            owner,
        };
        let officers: Vec<Vec<u8>> = [OFFICER, OFFICER_2, AUDITOR]
            .into_iter()
            .map(|uri| this.cert(uri).cert_pem.into_bytes())
            .collect();
        this.kms().bootstrap_officers(&officers).await.unwrap();
        this.start_server().await;
        this
    }

    /// Opens a component ceremony of `components` for `target`: officer-1 starts it; a
    /// station's or PSAM line's first transport key is a dual-control act instead
    /// (`RegisterEndpointAct`), which officer-1 asks for and officer-2 approves.
    pub async fn open_ceremony(
        &self,
        target: pb::start_key_ceremony_request::Target,
        components: u32,
    ) -> pb::KeyCeremony {
        let mut first = self.client(OFFICER).admin;
        let pb::start_key_ceremony_request::Target::Endpoint(e) = target else {
            return first
                .start_key_ceremony(pb::StartKeyCeremonyRequest {
                    components,
                    target: Some(target),
                })
                .await
                .unwrap()
                .into_inner();
        };
        let r = first
            .request_act(pb::RequestActRequest {
                act: Some(pb::request_act_request::Act::RegisterEndpoint(
                    pb::RegisterEndpointAct {
                        kind: e.kind,
                        name: e.name,
                        region: e.region,
                        transport_algorithm: e.transport_algorithm,
                        components,
                    },
                )),
            })
            .await
            .unwrap()
            .into_inner();
        self.client(OFFICER_2)
            .admin
            .approve_request(pb::RequestRef { id: r.id })
            .await
            .unwrap()
            .into_inner()
            .ceremony
            .unwrap()
    }

    /// Forms a key in a component ceremony: officer-1 starts it, and each component comes from
    /// its own custodian (officer-1, then officer-2); the completed ceremony.
    pub async fn ceremony(
        &self,
        target: pb::start_key_ceremony_request::Target,
        components: Vec<pb::Component>,
    ) -> pb::KeyCeremony {
        assert_eq!(components.len(), 2, "two registered custodians");
        let c = self.open_ceremony(target, 2).await;
        let mut done = None;
        for (uri, component) in [OFFICER, OFFICER_2].into_iter().zip(components) {
            let submitted = self
                .client(uri)
                .admin
                .submit_component(pb::SubmitComponentRequest {
                    ceremony_id: c.id.clone(),
                    component: Some(component),
                })
                .await
                .unwrap()
                .into_inner();
            done = Some(submitted);
        }
        let done = done.unwrap();
        assert_eq!(done.state, "complete", "{done:?}");
        done
    }

    /// The certificate of `identity_uri` (the same one every time).
    pub fn cert(&self, identity_uri: &str) -> sscard_kms::access::pki::CertPair {
        let mut certs = self.certs.lock().unwrap();
        certs
            .entry(identity_uri.to_owned())
            .or_insert_with(|| {
                let identity = Identity::from_uri(identity_uri).unwrap();
                self.pki.client(&identity).unwrap()
            })
            .clone()
    }

    /// The data directory (the store's on redb).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Where the store is (redb in [`TestKms::dir`], or a PostgreSQL database).
    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    /// Everything the store holds: the redb file's bytes, or every row of the database (as
    /// text: the values are JSON).
    pub fn store_bytes(&self) -> Vec<u8> {
        match &self.database {
            None => std::fs::read(self.dir().join(DB_FILE)).unwrap(),
            Some(name) => cluster()
                .psql(
                    name,
                    "SELECT tbl || ' ' || key || ' ' || convert_from(value, 'UTF8') FROM kms_kv \
                     UNION ALL SELECT convert_from(record, 'UTF8') FROM kms_audit \
                     UNION ALL SELECT convert_from(seal, 'UTF8') FROM kms_audit_seals",
                )
                .unwrap()
                .into_bytes(),
        }
    }

    /// The test PKI: its CA is the server's client CA and the clients' trust anchor.
    pub fn pki(&self) -> &DevPki {
        &self.pki
    }

    /// The HSM the service uses.
    pub fn hsm(&self) -> &Arc<H> {
        &self.hsm
    }

    /// The open service.
    pub fn kms(&self) -> &Arc<Kms<H>> {
        self.kms.as_ref().expect("the service is open")
    }

    /// Starts serving on a fresh listener on 127.0.0.1 (bound before `serve` runs).
    pub async fn start_server(&mut self) {
        assert!(self.server.is_none(), "already serving");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server_pair = self.pki.server();
        let tls = tls::server_config(
            &server_pair.cert_pem,
            &server_pair.key_pem,
            self.pki.ca_pem(),
        )
        .unwrap();
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve_with_limits(
            Arc::clone(self.kms()),
            listener,
            tls,
            self.limits,
            async move {
                let _ = stop.await;
            },
        ));
        self.server = Some(RunningServer {
            port,
            shutdown,
            task,
        });
    }

    /// Stops the server and waits until it has finished (its connections closed).
    pub async fn stop_server(&mut self) {
        let server = self.server.take().expect("serving");
        server.shutdown.send(()).unwrap();
        server.task.await.unwrap().unwrap();
    }

    /// Stops the server and closes the store: afterwards the data directory may be opened
    /// again, by this process or an offline tool.
    pub async fn close(&mut self) {
        if self.server.is_some() {
            self.stop_server().await;
        }
        close_store(self.kms.take().expect("the service is open"));
    }

    /// Opens the (closed) data directory again on `hsm` and serves it.
    pub async fn reopen(&mut self, hsm: Arc<H>) {
        assert!(self.kms.is_none(), "close first");
        self.hsm = hsm;
        self.kms = Some(
            Kms::open_at_as(Arc::clone(&self.hsm), &self.location, self.owner)
                .await
                .unwrap(),
        );
        self.start_server().await;
    }

    /// The server's address as clients dial it.
    pub fn url(&self) -> String {
        let port = self.server.as_ref().expect("serving").port;
        format!("https://localhost:{port}")
    }

    /// Clients with a certificate of our CA for `identity_uri`.
    pub fn client(&self, identity_uri: &str) -> Clients {
        Clients::new(self.channel(identity_uri))
    }

    /// A lazy channel with a certificate of our CA for `identity_uri`.
    pub fn channel(&self, identity_uri: &str) -> Channel {
        let pair = self.cert(identity_uri);
        let tls =
            tls::ClientTls::from_pem(self.pki.ca_pem(), &pair.cert_pem, &pair.key_pem).unwrap();
        Endpoint::from_shared(self.url())
            .unwrap()
            .tls_config(tls.config())
            .unwrap()
            .connect_lazy()
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.server.as_ref().expect("serving").port
    }

    /// Clients with any TLS configuration (a foreign certificate, none at all).
    pub fn client_with(&self, tls: ClientTlsConfig) -> Clients {
        let channel = Endpoint::from_shared(self.url())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_lazy();
        Clients::new(channel)
    }

    /// The audit trail as committed now.
    pub fn audit_trail(&self) -> Vec<AuditRecord> {
        self.kms()
            .store()
            .snapshot()
            .unwrap()
            .audit_trail()
            .unwrap()
            .0
    }

    /// Awaits `call`, which the service must refuse with `code` and a message containing
    /// `needle`; the refusal must be the one new record of the audit trail, `denied: …` (with,
    /// if the HSM could not seal, the gap record that says so).
    pub async fn refused<T: std::fmt::Debug>(
        &self,
        code: Code,
        needle: &str,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Status {
        let before = self.audit_trail().len();
        let status = call.await.expect_err("the call is refused");
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(needle),
            "{needle:?} not in {:?}",
            status.message()
        );
        // One record per refusal; besides it, a gap record if the HSM could not seal.
        let trail = self.audit_trail();
        let new: Vec<&AuditRecord> = trail[before..]
            .iter()
            .filter(|r| r.action != SEAL_GAP_ACTION)
            .collect();
        assert_eq!(new.len(), 1, "one audit record per refusal: {new:?}");
        let last = new[0];
        assert!(last.outcome.starts_with("denied"), "{last:?}");
        status
    }
}

/// The `google.rpc.ErrorInfo` of this service's domain in a status's details, if there is one.
pub fn error_info(status: &Status) -> Option<tonic_types::ErrorInfo> {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .filter(|info| info.domain == sscard_kms::server::DOMAIN)
}

/// The reason code of a refusal: the status must carry an `ErrorInfo` of this service's domain.
pub fn reason(status: &Status) -> String {
    error_info(status)
        .unwrap_or_else(|| panic!("no sscard-kms ErrorInfo in {status:?}"))
        .reason
}

// --------------------------------------------------------------------------------- requests

/// The card as a station names it.
pub fn card_identity(card: &sscard_kms::dev::DemoCard, atr: &[u8]) -> pb::CardIdentity {
    pb::CardIdentity {
        card_identifier: card.card_identifier.clone(),
        card_number: card.card_number.clone(),
        social_security_number: card.social_security_number.clone(),
        atr: atr.to_vec(),
    }
}

/// Every key of `template` as TR-31 blocks.
pub fn tr31_request(card: pb::CardIdentity, template: &str) -> pb::InjectCardKeysRequest {
    pb::InjectCardKeysRequest {
        card: Some(card),
        template_id: template.to_owned(),
        delivery: pb::DeliveryForm::Tr31 as i32,
        key_names: Vec::new(),
        challenges: Vec::new(),
    }
}

/// WRITE KEY commands for `(key name, card challenge)`.
pub fn sm_request(
    card: pb::CardIdentity,
    template: &str,
    challenges: &[(&str, Vec<u8>)],
) -> pb::InjectCardKeysRequest {
    pb::InjectCardKeysRequest {
        card: Some(card),
        template_id: template.to_owned(),
        delivery: pb::DeliveryForm::SecureMessaging as i32,
        key_names: Vec::new(),
        challenges: challenges
            .iter()
            .map(|(name, challenge)| pb::KeyChallenge {
                key_name: (*name).to_owned(),
                challenge: challenge.clone(),
            })
            .collect(),
    }
}
