//! The key service's operations, independent of gRPC: what each call checks, asks the HSM and
//! records. `crate::server` maps requests and errors; this module decides.
//!
//! Every operation: (1) authorises the caller ([`crate::access::authz`]) before anything else, (2)
//! validates its input, (3) reads the state it needs, (4) asks the HSM, (5) writes the state
//! change and its audit record in one atomic write, re-checking inside the write what a
//! concurrent request could have changed, and only then (6) answers. A refusal is audited too.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use hsm_api::Kcv;
use hsm_api::KeyBlockVersion;
use hsm_api::{Algorithm, Error as HsmError};
use hsm_api::{Exportability, HierarchyLevel, Hsm, KeySpec as HsmKeySpec, KeyToken, KeyUsage};

use crate::access::authz::Operation;
use crate::access::identity::Identity;
use crate::card::identifiers::{Atr, CardIdentifier, CardNumber, SocialSecurityNumber};
use crate::card::template::{KeyOwner, KeySpec, Template};
use crate::error::{Error, Refusal, Resource, Result};
use crate::metrics::Metrics;
use crate::state::audit::AuditEvent;
use crate::state::records::{self, Endpoint, EndpointKind, KeyRecord, Level, StoredTemplate};
use crate::state::store::{SealSkipped, Sealer, Snapshot, Store, StoreLocation, Table};

mod applicants;
mod auditors;
mod backup;
mod components;
mod custodians;
mod hsm_turns;
mod hsm_watch;
mod lmk;
mod officer_registry;
mod officers;
mod parts;
mod personal;
mod psam_lines;
mod registrars;
mod stations;
mod transport;

pub use applicants::{BatchUpload, MAX_BATCH_ID_LEN, MAX_NOTE_CHARS};
pub use auditors::MAX_EXPORT;
pub use backup::{BackupShareTaken, RootBackup, RootToRestore};
pub use components::{CeremonyState, CeremonyTarget, Custodian, KeyCeremony, Submitted};
pub use custodians::{Act, Approved, DEFAULT_APPROVAL_TTL_MS, DualControlRequest, RequestState};
pub use hsm_turns::on_connection;
pub use hsm_watch::{HsmReadiness, WatchedHsm};
pub use lmk::{LmkShareTaken, PreparedRotation, Rewrapped, ShareTaken, TokenPlace};
pub use officer_registry::certificate_der;
pub use officers::{ComponentInput, Status};
pub use psam_lines::PsamKeySet;
pub use stations::{Delivered, DeliveredForm, Delivery};
pub use transport::{ComponentTaken, TransportComponentTaken, TransportDelivery, TransportIssue};

/// The province this service runs for.
pub const PROVINCE: &str = "440000";

/// Where the audit key's token is kept in the `meta` table.
pub const AUDIT_KEY: &str = "audit_key_token";

/// A card as a station names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardRequest {
    pub card_identifier: String,
    pub card_number: String,
    pub social_security_number: String,
    pub atr: Vec<u8>,
}

/// A validated card request.
#[derive(Debug)]
struct CheckedCard {
    id: CardIdentifier,
    number: CardNumber,
    ssn: SocialSecurityNumber,
    atr: Option<Atr>,
}

impl CardRequest {
    fn check(&self, with_atr: bool) -> Result<CheckedCard> {
        Ok(CheckedCard {
            id: CardIdentifier::parse_field("card_identifier", &self.card_identifier)?,
            number: CardNumber::parse_field("card_number", &self.card_number)?,
            ssn: SocialSecurityNumber::parse_field(
                "social_security_number",
                &self.social_security_number,
            )?,
            atr: if with_atr {
                Some(Atr::from_bytes(&self.atr)?)
            } else {
                None
            },
        })
    }
}

/// How long a commit waits for the HSM's seal of the audit chain head.
const SEAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Seals the audit chain head with the HSM's audit key, from the store's writer thread.
pub struct HsmSealer<H: Hsm> {
    hsm: Arc<WatchedHsm<H>>,
    token: RwLock<Option<KeyToken>>,
    runtime: tokio::runtime::Handle,
}

impl<H: Hsm> HsmSealer<H> {
    fn key(&self) -> Option<KeyToken> {
        self.token.read().ok().and_then(|t| t.clone())
    }

    fn set_key(&self, key: Option<KeyToken>) {
        if let Ok(mut t) = self.token.write() {
            *t = key;
        }
    }
}

impl<H: Hsm> std::fmt::Debug for HsmSealer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmSealer").finish_non_exhaustive()
    }
}

impl<H: Hsm> Sealer for HsmSealer<H> {
    fn seal(&self, message: &[u8]) -> Result<Vec<u8>, SealSkipped> {
        let token = self.key().ok_or(SealSkipped::NoAuditKey)?;
        // The writer thread waits for the seal, so a slow or unreachable HSM must not hold every
        // commit: past the limit the seal is skipped and the next commit's seal covers these
        // records too (the chain itself is never skipped).
        let sealed = self.runtime.block_on(async {
            tokio::time::timeout(SEAL_TIMEOUT, self.hsm.mac(&token, message)).await
        });
        match sealed {
            Ok(Ok(mac)) => Ok(mac),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "audit seal skipped: the HSM cannot MAC now");
                Err(SealSkipped::HsmRefused)
            }
            Err(_) => {
                tracing::warn!("audit seal skipped: the HSM did not answer in time");
                Err(SealSkipped::Timeout)
            }
        }
    }
}

/// The key service.
pub struct Kms<H: Hsm> {
    /// Every HSM call goes through the watch: its answers drive the gRPC health.
    hsm: Arc<WatchedHsm<H>>,
    store: Store,
    templates: RwLock<HashMap<String, Arc<Template>>>,
    /// Seals the audit chain; holds the audit key's token once it exists.
    sealer: Arc<HsmSealer<H>>,
    metrics: Arc<Metrics>,
    /// Ceremonies under way: unseal custodians, component submissions one at a time.
    ceremony: custodians::Ceremonies,
    /// Whose keys this deployment derives and releases (N9): the province's, or a city's.
    owner: KeyOwner,
    /// The scheme a new list-signing key is made in (SM2 unless configured otherwise).
    list_signature: std::sync::RwLock<hsm_api::ListSignature>,
    /// HSM batches in turn between callers, a bounded number at the HSM at once.
    hsm_turns: hsm_turns::HsmTurns,
}

impl<H: Hsm> std::fmt::Debug for Kms<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kms")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl<H: Hsm> Kms<H> {
    /// The scheme the blacklist's signing key is made in, if none exists yet (configuration
    /// `blacklist_signature`; default SM2). A key already made keeps its own scheme.
    pub fn set_list_signature(&self, scheme: hsm_api::ListSignature) {
        if let Ok(mut kept) = self.list_signature.write() {
            *kept = scheme;
        }
    }

    /// The scheme a new list-signing key is made in.
    pub fn list_signature(&self) -> hsm_api::ListSignature {
        self.list_signature
            .read()
            .map_or(hsm_api::ListSignature::Sm2, |s| *s)
    }

    /// Whose keys this deployment holds and releases.
    pub fn owner(&self) -> KeyOwner {
        self.owner
    }

    /// Refuses `spec` unless this deployment owns its root.
    fn check_owned(&self, spec: &KeySpec) -> Result<()> {
        check_owned(self.owner, spec)
    }

    /// The keys of a template this deployment does not release, with their owner (`owned by
    /// city 440300`), in write order.
    pub fn keys_owned_elsewhere(&self, template_id: &str) -> Result<Vec<(String, String)>> {
        let template = self.template(template_id)?;
        Ok(template
            .write_order()
            .filter(|k| k.owner() != self.owner)
            .map(|k| (k.name.clone(), format!("owned by {}", k.owner())))
            .collect())
    }
}

/// HSM batches in flight to a remote HSM, per core of this machine: a batch at a remote HSM
/// spends part of its time on the wire, so more than one per core keeps the HSM's workers busy.
pub const REMOTE_HSM_BATCHES_PER_CORE: usize = 4;

/// [`Kms::set_hsm_batches_at_once`] for a remote HSM: [`REMOTE_HSM_BATCHES_PER_CORE`] per core.
pub fn remote_hsm_batches() -> usize {
    REMOTE_HSM_BATCHES_PER_CORE * std::thread::available_parallelism().map_or(1, usize::from)
}

/// Refuses `spec` unless `owner`'s deployment owns its root.
fn check_owned(owner: KeyOwner, spec: &KeySpec) -> Result<()> {
    if spec.owner() == owner {
        Ok(())
    } else {
        Err(Error::OwnedElsewhere {
            key: spec.name.clone(),
            owner: spec.owner(),
        })
    }
}

fn kcv_hex(kcv: &Kcv) -> (String, String) {
    (kcv.method().name().to_owned(), kcv.to_hex())
}

/// At start-up: the HSM's error if `result` failed because the HSM is not operational (sealed,
/// uninitialised, self-test failed, unreachable) — the step is done later —, any other failure
/// as itself.
fn not_operational<T>(result: Result<T>) -> Result<Option<HsmError>> {
    match result {
        Ok(_) => Ok(None),
        Err(Error::Hsm(
            e @ (HsmError::Sealed
            | HsmError::Uninitialised
            | HsmError::SelfTestFailed(_)
            | HsmError::Unavailable),
        )) => Ok(Some(e)),
        Err(e) => Err(e),
    }
}

fn token(record_token: &str) -> KeyToken {
    KeyToken::from_stored(record_token.to_owned())
}

/// Refuses, before any HSM work, a key that the recipient's transport key cannot carry: TR-31
/// version B (a TDES transport key) carries DES and TDES keys only.
fn check_wrappable(version: KeyBlockVersion, alg: Algorithm) -> Result<()> {
    if version == KeyBlockVersion::B && !alg.is_des_family() {
        return Err(Error::FailedPrecondition {
            reason: Refusal::TransportKeyCannotCarry,
        });
    }
    Ok(())
}

/// The TR-31 version a transport key of `alg` wraps with.
fn block_version(alg: Algorithm) -> Result<KeyBlockVersion> {
    match alg {
        Algorithm::Tdes2 | Algorithm::Tdes3 => Ok(KeyBlockVersion::B),
        a if a.is_aes() => Ok(KeyBlockVersion::D),
        _ => Err(Error::StoreCorrupt("transport key algorithm")),
    }
}

impl<H: Hsm> Kms<H> {
    /// Opens the service on `store_dir` with `hsm` and loads the templates. The audit key is
    /// created on the first start with an operational HSM; until it exists (HSM sealed or not yet
    /// initialised) audit records are chained but not sealed.
    pub async fn open(hsm: Arc<H>, store_dir: &std::path::Path) -> Result<Arc<Kms<H>>> {
        Kms::open_as(hsm, store_dir, KeyOwner::Province).await
    }

    /// [`Kms::open`] for the deployment of `owner`: the province's, or a city's, which holds
    /// the roots of its city-owned keys (N9). Each deployment derives and releases only the
    /// keys it owns, and names the owner of the others.
    pub async fn open_as(
        hsm: Arc<H>,
        store_dir: &std::path::Path,
        owner: KeyOwner,
    ) -> Result<Arc<Kms<H>>> {
        Kms::open_at_as(hsm, &StoreLocation::Redb(store_dir.to_owned()), owner).await
    }

    /// Opens the province's service on the store at `location` (redb or PostgreSQL) with `hsm`;
    /// see [`Kms::open`].
    pub async fn open_at(hsm: Arc<H>, location: &StoreLocation) -> Result<Arc<Kms<H>>> {
        Kms::open_at_as(hsm, location, KeyOwner::Province).await
    }

    /// [`Kms::open_at`] for the deployment of `owner` ([`Kms::open_as`]).
    pub async fn open_at_as(
        hsm: Arc<H>,
        location: &StoreLocation,
        owner: KeyOwner,
    ) -> Result<Arc<Kms<H>>> {
        let hsm = Arc::new(WatchedHsm::new(hsm));
        let sealer = Arc::new(HsmSealer {
            hsm: Arc::clone(&hsm),
            token: RwLock::new(None),
            runtime: tokio::runtime::Handle::current(),
        });
        let store = Store::open_at(location, Arc::clone(&sealer) as Arc<dyn Sealer>)?;
        let metrics = Metrics::new(store.metrics());
        hsm.attach_metrics(Arc::clone(&metrics));
        let kms = Kms {
            hsm,
            store,
            templates: RwLock::new(HashMap::new()),
            sealer,
            metrics,
            ceremony: custodians::Ceremonies::default(),
            owner,
            list_signature: std::sync::RwLock::new(hsm_api::ListSignature::Sm2),
            hsm_turns: hsm_turns::HsmTurns::for_this_machine(),
        };
        kms.reload_templates()?;
        if let Some(e) = not_operational(kms.ensure_audit_key().await)? {
            tracing::warn!(error = %e, "no audit key yet: the HSM is not operational");
        }
        // A rotation prepared before a restart: dropped or finished, by the HSM's LMK.
        kms.reconcile_lmk_rotation().await?;
        // Once per store, after the audit key (so that its commit is sealed): the card factors
        // of cards released before factors were bound.
        let bound = kms
            .store
            .snapshot()?
            .get::<bool>(Table::Meta, crate::registry::lifecycle::FACTORS_BOUND)?;
        if bound != Some(true) {
            kms.store
                .write(|tx| {
                    if let Some((bound, conflicts)) =
                        crate::registry::lifecycle::bind_released_factors(tx)?
                    {
                        tx.audit(AuditEvent::ok(
                            "system",
                            "bind-card-factors",
                            format!(
                                "card factors of released cards bound: {bound}, \
                                 held by another card: {conflicts}"
                            ),
                        ));
                    }
                    Ok(())
                })
                .await?;
        }
        // The registry's keys, made at the first open with an operational HSM, and a store
        // written before the personal data were protected migrated (or at the first registry
        // operation, if the HSM is not operational now).
        if let Some(e) = not_operational(kms.registry_keys().await)? {
            tracing::warn!(error = %e, "registry keys not checked: the HSM is not operational");
        }
        // The readiness from the HSM's own word, whatever the audit key needed.
        let _ = kms.hsm.status().await;
        Ok(Arc::new(kms))
    }

    /// Loads the audit key's token from the store, if it is there and not held yet; whether the
    /// service now holds one.
    fn load_audit_key(&self) -> Result<bool> {
        if self.sealer.key().is_some() {
            return Ok(true);
        }
        let stored: Option<String> = self.store.snapshot()?.get(Table::Meta, AUDIT_KEY)?;
        let held = stored.is_some();
        self.sealer.set_key(stored.map(KeyToken::from_stored));
        Ok(held)
    }

    /// Loads the audit key's token, or creates it in the HSM (which must be operational).
    async fn ensure_audit_key(&self) -> Result<()> {
        if self.load_audit_key()? {
            // Records of a time without the key (HSM sealed) are sealed now if it can.
            return self.store.seal_head().await;
        }
        self.create_audit_key(Vec::new()).await
    }

    /// Creates the audit key in the HSM and stores it with `events`, in one commit that is the
    /// first sealed by it.
    async fn create_audit_key(&self, events: Vec<AuditEvent>) -> Result<()> {
        let _tokens = self.token_turn().await;
        let key = self
            .hsm
            .generate_key(HsmKeySpec {
                algorithm: Algorithm::Aes256,
                usage: KeyUsage::AuditMac,
                exportability: Exportability::NonExportable,
            })
            .await?;
        let text = key.token.as_str().to_owned();
        let (method, kcv) = kcv_hex(&key.kcv);
        // Held before the commit that stores it, so that this very commit is sealed with it;
        // dropped again if the commit fails.
        self.sealer.set_key(Some(key.token));
        let written = self
            .store
            .write(move |tx| {
                if tx.get::<String>(Table::Meta, AUDIT_KEY)?.is_some() {
                    return Err(Error::AlreadyExists {
                        what: Resource::AuditKey,
                    });
                }
                tx.put(Table::Meta, AUDIT_KEY, &text)?;
                tx.audit(AuditEvent::ok(
                    "system",
                    "create-audit-key",
                    format!("audit key KCV {method} {kcv}"),
                ));
                for e in events {
                    tx.audit(e);
                }
                Ok(())
            })
            .await;
        if written.is_err() {
            self.sealer.set_key(None);
            self.load_audit_key()?;
        }
        written
    }

    /// The HSM this service uses, as it uses it: calls through it update the readiness.
    pub fn hsm(&self) -> &Arc<WatchedHsm<H>> {
        &self.hsm
    }

    /// The HSM's readiness as the service last learnt it, and its changes.
    pub fn hsm_readiness(&self) -> tokio::sync::watch::Receiver<HsmReadiness> {
        self.hsm.readiness()
    }

    /// This instance's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Every metric in the Prometheus text format, the HSM's state read now.
    pub async fn scrape(&self) -> String {
        match self.hsm.status().await {
            Ok(status) => self.metrics.set_hsm_state(hsm_state_name(status.state)),
            // Unreachable (a remote HSM down): no state is current.
            Err(_) => self.metrics.set_hsm_state(""),
        }
        self.metrics.encode()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The audit key's token (for verifying seals with the same HSM), once it exists.
    pub fn audit_key(&self) -> Option<KeyToken> {
        self.sealer.key()
    }

    fn reload_templates(&self) -> Result<()> {
        let stored: Vec<(String, StoredTemplate)> =
            self.store.snapshot()?.scan(Table::Templates, "")?;
        let mut parsed: HashMap<String, Arc<Template>> = HashMap::new();
        // Bases first, then extensions over them.
        let (bases, exts): (Vec<_>, Vec<_>) = stored
            .into_iter()
            .map(|(_, t)| Template::parse(&t.toml))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .partition(|t| t.extends().is_none());
        for t in bases {
            parsed.insert(t.id().to_owned(), Arc::new(t));
        }
        for ext in exts {
            let base_id = ext.extends().unwrap_or_default().to_owned();
            let base = parsed
                .get(&base_id)
                .ok_or(Error::UnknownTemplate(base_id))?;
            let merged = Template::extend(base, &ext)?;
            parsed.insert(merged.id().to_owned(), Arc::new(merged));
        }
        *self.templates.write().map_err(|_| Error::Store)? = parsed;
        Ok(())
    }

    fn template(&self, id: &str) -> Result<Arc<Template>> {
        self.templates
            .read()
            .map_err(|_| Error::Store)?
            .get(id)
            .cloned()
            .ok_or(Error::NotFound {
                what: Resource::CardTemplate,
            })
    }

    /// Runs `op`; a refusal or failure is appended to the audit trail before it is returned.
    async fn audited<T>(
        &self,
        caller: &Identity,
        operation: Operation,
        subject: &str,
        op: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let started = std::time::Instant::now();
        let result = op.await;
        // One structured line per request (target `sscard_kms::request`): the operation, the
        // caller, the masked subject, the outcome and the time taken. Subjects are masked by
        // their callers, and bounded like a refusal record (a caller chooses their size); errors
        // carry no key material.
        let subject = crate::state::audit::bounded(subject);
        let subject = subject.as_str();
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        match &result {
            Ok(_) => tracing::info!(
                target: "sscard_kms::request",
                operation = operation.name(),
                caller = %caller,
                subject,
                outcome = "ok",
                micros,
            ),
            Err(e) => {
                tracing::info!(
                    target: "sscard_kms::request",
                    operation = operation.name(),
                    caller = %caller,
                    subject,
                    outcome = "refused",
                    reason = %e,
                    micros,
                );
                let event = AuditEvent::denied(
                    caller.to_string(),
                    operation.name(),
                    subject,
                    audit_reason(e),
                );
                if let Err(audit_err) = self.store.audit(vec![event]).await {
                    tracing::error!(error = %audit_err, "could not audit a refusal");
                }
            }
        }
        result
    }

    /// How many HSM batches may be at the HSM at once (the machine's available parallelism
    /// unless set); more wait their turn, callers in turn (`service::hsm_turns`).
    pub fn hsm_batches_at_once(&self) -> usize {
        self.hsm_turns.capacity()
    }

    /// Sets [`Kms::hsm_batches_at_once`] (at least 1): the in-process HSM's worker count, or
    /// more for a remote HSM, whose round trip a single batch at a time would leave idle.
    pub fn set_hsm_batches_at_once(&self, batches: usize) {
        self.hsm_turns.set_capacity(batches);
    }

    /// One HSM call for every key of a request: one result per item, in order (recorded in the
    /// HSM metrics as op `batch`, by [`WatchedHsm`]).
    async fn batch(
        &self,
        caller: &Identity,
        items: Vec<hsm_api::BatchItem>,
    ) -> Result<Vec<hsm_api::Result<hsm_api::BatchOutput>>> {
        let count = items.len();
        if count == 0 {
            return Ok(Vec::new());
        }
        // In turn with other callers' batches (`hsm_turns`), never behind all of them.
        let waited = std::time::Instant::now();
        let turn = self
            .hsm_turns
            .turn(hsm_turns::Caller::current(caller.to_string()))
            .await
            .ok_or(HsmError::Unavailable)?;
        self.metrics
            .hsm_turn_wait_seconds
            .observe(waited.elapsed().as_secs_f64());
        let outputs = self.hsm.batch(items).await;
        drop(turn);
        let outputs = outputs?;
        if outputs.len() != count {
            return Err(HsmError::Protocol.into());
        }
        Ok(outputs)
    }

    /// The station or PSAM line record of `caller`, which must be registered in its region.
    fn endpoint(snap: &Snapshot, kind: EndpointKind, caller: &Identity) -> Result<Endpoint> {
        // Through the store's cache: a station's record changes in ceremonies only.
        let e = snap
            .get_shared::<Endpoint>(Table::Endpoints, &records::endpoint_id(kind, caller.name()))?;
        let e = Option::clone(&e).ok_or(Error::FailedPrecondition {
            reason: Refusal::CallerNotRegistered,
        })?;
        if Some(e.region.as_str()) != caller.region() {
            return Err(Error::PermissionDenied {
                reason: Refusal::EndpointRegionMismatch,
            });
        }
        Ok(e)
    }
}

/// What the audit trail records of a refusal: the caller's reason, and the detail a caller is
/// not told (which identifier did not match).
fn audit_reason(e: &Error) -> String {
    match e {
        Error::NoMatchingCard { detail } => format!("{e} ({detail})"),
        _ => e.to_string(),
    }
}

/// The active version of a key of the hierarchy, if any.
fn active_key(
    snap: &Snapshot,
    template: &str,
    key: &str,
    level: Level,
    region: &str,
) -> Result<Option<KeyRecord>> {
    // Through the store's cache: every first release of a card asks this for every key.
    let all = snap.scan_shared::<KeyRecord>(
        Table::Keys,
        &records::key_prefix(template, key, level, region),
    )?;
    Ok(all.iter().map(|(_, r)| r).rfind(|r| r.active).cloned())
}

/// Whether `spec` is a master key of its card ([`Template::is_master_key`]): its card key is a
/// [`KeyUsage::CardMasterKey`], never a TR-31 block.
fn is_master_key(template: &Template, spec: &KeySpec) -> bool {
    template.is_master_key(spec)
}

/// The HSM usage of `spec`'s hierarchy key at `level` (national, province or city).
fn hierarchy_usage(master: bool, level: Level) -> Result<KeyUsage> {
    let level = match level {
        Level::National => HierarchyLevel::National,
        Level::Province => HierarchyLevel::Province,
        Level::City => HierarchyLevel::City,
        Level::Card => {
            // A card key is not a hierarchy key.
            return Err(Error::InvalidArgument {
                field: "level",
                reason: Refusal::RootLevel,
            });
        }
    };
    Ok(if master {
        KeyUsage::MasterKeyDerivation(level)
    } else {
        KeyUsage::CardDerivation(level)
    })
}

/// The HSM usage of `spec`'s card key.
fn card_usage(template: &Template, spec: &KeySpec) -> KeyUsage {
    if is_master_key(template, spec) {
        KeyUsage::CardMasterKey
    } else {
        KeyUsage::CardKey
    }
}

/// A card identifier with its serial part masked, for audit and logs.
pub fn mask_card_identifier(id: &str) -> String {
    CardIdentifier::parse_field("card_identifier", id)
        .map(|c| c.masked())
        .unwrap_or_else(|_| "(malformed)".to_owned())
}

fn masked_subject(card: &CardRequest) -> String {
    format!("card {}", mask_card_identifier(&card.card_identifier))
}

/// The name of an HSM state, as status calls and metrics report it.
fn hsm_state_name(state: hsm_api::HsmState) -> &'static str {
    use hsm_api::HsmState;
    match state {
        HsmState::Uninitialised => "uninitialised",
        HsmState::Sealed => "sealed",
        HsmState::Operational => "operational",
        HsmState::SelfTestFailed => "self-test-failed",
    }
}
