//! The key service's operations, independent of gRPC: what each call checks, asks the HSM and
//! records. `crate::server` maps requests and errors; this module decides.
//!
//! Every operation: (1) authorises the caller ([`crate::authz`]) before anything else, (2)
//! validates its input, (3) reads the state it needs, (4) asks the HSM, (5) writes the state
//! change and its audit record in one atomic write, re-checking inside the write what a
//! concurrent request could have changed, and only then (6) answers. A refusal is audited too.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use hsm_api::{
    Algorithm, Component, Error as HsmError, Exportability, Factor, Hsm, Kcv, KcvMethod,
    KeyBlockVersion, KeySpec as HsmKeySpec, KeyToken, KeyUsage, MacFold, WriteKeyRequest,
};
use zeroize::Zeroizing;

use crate::audit::AuditEvent;
use crate::authz::{self, Operation};
use crate::error::{Error, Result};
use crate::identifiers::{Atr, CardIdentifier, CardNumber, SocialSecurityNumber};
use crate::identity::Identity;
use crate::records::{
    self, Card, CardStatus, Endpoint, EndpointKind, KeyRecord, Level, NATIONAL, Psam,
    StoredTemplate,
};
use crate::region::{self, Region};
use crate::store::{Sealer, Snapshot, Store, Table};
use crate::template::{KeyRoot, KeySpec, Protector, Template};

/// The province this service runs for.
pub const PROVINCE: &str = "440000";

/// The APDU class and instruction of WRITE KEY with secure messaging (DOMAIN.md §5).
const WRITE_KEY_CLA: u8 = 0x84;
const WRITE_KEY_INS: u8 = 0xD4;

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

/// How a station wants its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// TR-31 blocks of these keys (all keys of the template when empty).
    Tr31 { key_names: Vec<String> },
    /// Secure-messaging WRITE KEY commands, one per (key name, card challenge).
    SecureMessaging { challenges: Vec<(String, Vec<u8>)> },
}

/// One delivered key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub key_name: String,
    pub directory: String,
    pub key_id: u8,
    pub key_version: u8,
    pub algorithm: Algorithm,
    pub kcv: Kcv,
    pub level: Level,
    pub root_version: u32,
    pub form: DeliveredForm,
    pub psam_usage: Option<u8>,
}

/// The form a key was delivered in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveredForm {
    Tr31(String),
    WriteKeyApdu(Vec<u8>),
}

/// A PSAM key set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsamKeySet {
    pub serial: String,
    pub keys: Vec<Delivered>,
    pub omitted: Vec<(String, &'static str)>,
}

/// A clear component as an officer typed it, with its KCV from paper (hex).
#[derive(Debug)]
pub struct ComponentInput {
    pub hex: Zeroizing<String>,
    pub kcv_hex: String,
}

/// Service status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub hsm_state: String,
    pub hsm_is_secure: bool,
    pub hsm_dangerous_test_lmk: bool,
    pub audit_records: u64,
    pub templates: Vec<String>,
}

/// How long a commit waits for the HSM's seal of the audit chain head.
const SEAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Seals the audit chain head with the HSM's audit key, from the store's writer thread.
pub struct HsmSealer<H: Hsm> {
    hsm: Arc<H>,
    token: OnceLock<KeyToken>,
    runtime: tokio::runtime::Handle,
}

impl<H: Hsm> std::fmt::Debug for HsmSealer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmSealer").finish_non_exhaustive()
    }
}

impl<H: Hsm> Sealer for HsmSealer<H> {
    fn seal(&self, message: &[u8]) -> Option<Vec<u8>> {
        let token = self.token.get()?;
        // The writer thread waits for the seal, so a slow or unreachable HSM must not hold every
        // commit: past the limit the seal is skipped and the next commit's seal covers these
        // records too (the chain itself is never skipped).
        let sealed = self.runtime.block_on(async {
            tokio::time::timeout(SEAL_TIMEOUT, self.hsm.mac(token, message)).await
        });
        match sealed {
            Ok(Ok(mac)) => Some(mac),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "audit seal skipped: the HSM cannot MAC now");
                None
            }
            Err(_) => {
                tracing::warn!("audit seal skipped: the HSM did not answer in time");
                None
            }
        }
    }
}

/// The key service.
pub struct Kms<H: Hsm> {
    hsm: Arc<H>,
    store: Store,
    templates: RwLock<HashMap<String, Arc<Template>>>,
    /// Seals the audit chain; holds the audit key's token once it exists.
    sealer: Arc<HsmSealer<H>>,
}

impl<H: Hsm> std::fmt::Debug for Kms<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kms")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

fn kcv_hex(kcv: &Kcv) -> (String, String) {
    (kcv.method().name().to_owned(), kcv.to_hex())
}

fn token(record_token: &str) -> KeyToken {
    KeyToken::from_stored(record_token.to_owned())
}

/// Refuses, before any HSM work, a key that the recipient's transport key cannot carry: TR-31
/// version B (a TDES transport key) carries DES and TDES keys only.
fn check_wrappable(version: KeyBlockVersion, alg: Algorithm) -> Result<()> {
    if version == KeyBlockVersion::B && !alg.is_des_family() {
        return Err(Error::FailedPrecondition {
            reason: "SM4 and AES keys travel only under an AES transport key (TR-31 version D)",
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
        let sealer = Arc::new(HsmSealer {
            hsm: Arc::clone(&hsm),
            token: OnceLock::new(),
            runtime: tokio::runtime::Handle::current(),
        });
        let store = Store::open(store_dir, Arc::clone(&sealer) as Arc<dyn Sealer>)?;
        let kms = Kms {
            hsm,
            store,
            templates: RwLock::new(HashMap::new()),
            sealer,
        };
        kms.reload_templates()?;
        match kms.ensure_audit_key().await {
            Ok(()) => {}
            Err(Error::Hsm(
                e @ (HsmError::Sealed
                | HsmError::Uninitialised
                | HsmError::SelfTestFailed(_)
                | HsmError::Unavailable),
            )) => {
                tracing::warn!(error = %e, "no audit key yet: the HSM is not operational");
            }
            Err(e) => return Err(e),
        }
        Ok(Arc::new(kms))
    }

    /// Loads the audit key's token, or creates it in the HSM (which must be operational).
    async fn ensure_audit_key(&self) -> Result<()> {
        if self.sealer.token.get().is_some() {
            return Ok(());
        }
        let existing: Option<String> = self.store.snapshot()?.get(Table::Meta, AUDIT_KEY)?;
        let token = match existing {
            Some(t) => KeyToken::from_stored(t),
            None => {
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
                self.store
                    .write(move |tx| {
                        if tx.get::<String>(Table::Meta, AUDIT_KEY)?.is_some() {
                            return Err(Error::AlreadyExists { what: "audit key" });
                        }
                        tx.put(Table::Meta, AUDIT_KEY, &text)?;
                        tx.audit(AuditEvent::ok(
                            "system",
                            "create-audit-key",
                            format!("audit key KCV {method} {kcv}"),
                        ));
                        Ok(())
                    })
                    .await?;
                key.token
            }
        };
        let _ = self.sealer.token.set(token);
        Ok(())
    }

    /// One custodian's share towards unsealing the HSM; at the threshold the HSM is operational
    /// (and the audit key is created if this is the first time).
    pub async fn unseal_hsm(
        &self,
        caller: &Identity,
        share: Zeroizing<String>,
    ) -> Result<hsm_api::UnsealProgress> {
        self.audited(caller, Operation::Administer, "unseal-hsm", async {
            authz::authorize(caller, Operation::Administer)?;
            let progress = self.hsm.unseal(hsm_api::LmkShare::new(share)).await?;
            if progress.unsealed {
                self.ensure_audit_key().await?;
            }
            self.store
                .audit(vec![AuditEvent::ok(
                    caller.to_string(),
                    "unseal-hsm",
                    format!(
                        "share accepted: {}/{}{}",
                        progress.submitted,
                        progress.threshold,
                        if progress.unsealed {
                            ", HSM operational"
                        } else {
                            ""
                        }
                    ),
                )])
                .await?;
            Ok(progress)
        })
        .await
    }

    /// The HSM this service uses.
    pub fn hsm(&self) -> &Arc<H> {
        &self.hsm
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The audit key's token (for verifying seals with the same HSM), once it exists.
    pub fn audit_key(&self) -> Option<&KeyToken> {
        self.sealer.token.get()
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
                what: "card template",
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
        let result = op.await;
        if let Err(e) = &result {
            let event = AuditEvent::denied(caller.to_string(), operation.name(), subject, e);
            if let Err(audit_err) = self.store.audit(vec![event]).await {
                tracing::error!(error = %audit_err, "could not audit a refusal");
            }
        }
        result
    }

    // ------------------------------------------------------------------ stations

    /// The keys of one card for a station.
    pub async fn inject_card_keys(
        &self,
        caller: &Identity,
        card: CardRequest,
        template_id: &str,
        delivery: Delivery,
    ) -> Result<Vec<Delivered>> {
        let subject = masked_subject(&card);
        self.audited(caller, Operation::InjectCardKeys, &subject, async {
            authz::authorize(caller, Operation::InjectCardKeys)?;
            let checked = card.check(true)?;
            let region = checked.id.region();
            authz::authorize_region(caller, region.code)?;
            let template = self.template(template_id)?;
            // One consistent view of the state for the whole request.
            let snap = self.store.snapshot()?;
            let station = Self::endpoint(&snap, EndpointKind::Station, caller)?;
            let record = Self::releasable_card(&snap, &checked, template.id())?;
            let atr = checked.atr.as_ref().ok_or(Error::InvalidArgument {
                field: "atr",
                reason: "required",
            })?;
            let factor = atr.card_factor();

            let mut delivered = Vec::new();
            let mut versions = record.issued_root_versions.clone();
            match delivery {
                Delivery::Tr31 { key_names } => {
                    let kbpk = token(&station.transport_token);
                    let version =
                        block_version(Algorithm::from_name(&station.transport_algorithm)?)?;
                    let specs = select_keys(&template, &key_names)?;
                    for spec in &specs {
                        check_wrappable(version, spec.hsm_algorithm())?;
                    }
                    for spec in specs {
                        let (card_key, root_version) = self
                            .card_key(&snap, &template, spec, &record, &factor, &mut versions)
                            .await?;
                        let exported = self.hsm.export_key(&kbpk, &card_key, version).await?;
                        delivered.push(Delivered {
                            key_name: spec.name.clone(),
                            directory: spec.directory.clone(),
                            key_id: spec.key_id,
                            key_version: spec.key_version,
                            algorithm: spec.hsm_algorithm(),
                            kcv: exported.kcv,
                            level: Level::Card,
                            root_version,
                            form: DeliveredForm::Tr31(exported.block),
                            psam_usage: None,
                        });
                    }
                }
                Delivery::SecureMessaging { challenges } => {
                    if challenges.is_empty() {
                        return Err(Error::InvalidArgument {
                            field: "challenges",
                            reason: "at least one key and card challenge is needed",
                        });
                    }
                    for (name, challenge) in challenges {
                        let spec = template.key(&name).ok_or(Error::NotFound {
                            what: "template key",
                        })?;
                        let d = self
                            .write_key(
                                &snap,
                                &template,
                                spec,
                                &record,
                                &factor,
                                &mut versions,
                                challenge,
                            )
                            .await?;
                        delivered.push(d);
                    }
                }
            }
            self.record_release(
                caller,
                Operation::InjectCardKeys,
                &record,
                atr,
                versions,
                &delivered,
            )
            .await?;
            Ok(delivered)
        })
        .await
    }

    /// The WRITE KEY that replaces a blank card's vendor transport key by its master key.
    pub async fn initialise_blank_card(
        &self,
        caller: &Identity,
        card: CardRequest,
        template_id: &str,
        challenge: Vec<u8>,
    ) -> Result<Delivered> {
        let subject = masked_subject(&card);
        self.audited(caller, Operation::InitialiseBlankCard, &subject, async {
            authz::authorize(caller, Operation::InitialiseBlankCard)?;
            let checked = card.check(true)?;
            authz::authorize_region(caller, checked.id.region().code)?;
            let template = self.template(template_id)?;
            let snap = self.store.snapshot()?;
            Self::endpoint(&snap, EndpointKind::Station, caller)?;
            let record = Self::releasable_card(&snap, &checked, template.id())?;
            let atr = checked.atr.as_ref().ok_or(Error::InvalidArgument {
                field: "atr",
                reason: "required",
            })?;
            let spec = template
                .keys()
                .iter()
                .find(|k| k.protected_by == Protector::VendorTransport)
                .ok_or(Error::FailedPrecondition {
                    reason: "the template has no key written under the vendor transport key",
                })?;
            let mut versions = record.issued_root_versions.clone();
            let d = self
                .write_key(
                    &snap,
                    &template,
                    spec,
                    &record,
                    &atr.card_factor(),
                    &mut versions,
                    challenge,
                )
                .await?;
            self.record_release(
                caller,
                Operation::InitialiseBlankCard,
                &record,
                atr,
                versions,
                std::slice::from_ref(&d),
            )
            .await?;
            Ok(d)
        })
        .await
    }

    /// The station or PSAM line record of `caller`, which must be registered in its region.
    fn endpoint(snap: &Snapshot, kind: EndpointKind, caller: &Identity) -> Result<Endpoint> {
        let e: Endpoint = snap
            .get(Table::Endpoints, &records::endpoint_id(kind, caller.name()))?
            .ok_or(Error::FailedPrecondition {
                reason: "the caller is not registered (no transport key)",
            })?;
        if Some(e.region.as_str()) != caller.region() {
            return Err(Error::PermissionDenied {
                reason: "the certificate's region differs from the registered one",
            });
        }
        Ok(e)
    }

    /// The card's record, if its keys may be released: registered with the same data and
    /// template, accepted, not blacklisted, and (after a first release) the same ATR.
    fn releasable_card(snap: &Snapshot, checked: &CheckedCard, template_id: &str) -> Result<Card> {
        let card: Card = snap
            .get(Table::Cards, checked.id.as_str())?
            .ok_or(Error::NotFound { what: "card" })?;
        check_releasable(&card, checked, template_id)?;
        Ok(card)
    }

    /// The root version a card uses for `spec`: the one recorded at its first release, or the
    /// active one.
    fn root_version(
        snap: &Snapshot,
        template: &Template,
        spec: &KeySpec,
        card: &Card,
        versions: &mut std::collections::BTreeMap<String, u32>,
    ) -> Result<u32> {
        if let Some(v) = versions.get(&spec.name) {
            return Ok(*v);
        }
        let active = active_key(snap, template.id(), &spec.name, Level::City, &card.region)?
            .ok_or(Error::FailedPrecondition {
                reason: "the key hierarchy of this template is not derived for the card's city",
            })?;
        versions.insert(spec.name.clone(), active.version);
        Ok(active.version)
    }

    /// Derives the card key of `spec` in the HSM: D(K_city, F3).
    async fn card_key(
        &self,
        snap: &Snapshot,
        template: &Template,
        spec: &KeySpec,
        card: &Card,
        factor: &Factor,
        versions: &mut std::collections::BTreeMap<String, u32>,
    ) -> Result<(KeyToken, u32)> {
        let version = Self::root_version(snap, template, spec, card, versions)?;
        let city: KeyRecord = snap
            .get(
                Table::Keys,
                &records::key_id(
                    template.id(),
                    &spec.name,
                    Level::City,
                    &card.region,
                    version,
                ),
            )?
            .ok_or(Error::FailedPrecondition {
                reason: "the card's key version is no longer held",
            })?;
        let child = self
            .hsm
            .derive_key(
                &token(&city.token),
                spec.dispersion,
                std::slice::from_ref(factor),
                KeyUsage::CardKey,
                Exportability::Exportable,
            )
            .await?;
        Ok((child.token, version))
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_key(
        &self,
        snap: &Snapshot,
        template: &Template,
        spec: &KeySpec,
        card: &Card,
        factor: &Factor,
        versions: &mut std::collections::BTreeMap<String, u32>,
        challenge: Vec<u8>,
    ) -> Result<Delivered> {
        let (key, root_version) = self
            .card_key(snap, template, spec, card, factor, versions)
            .await?;
        let protect = match &spec.protected_by {
            Protector::VendorTransport => {
                let vendor = active_key(
                    snap,
                    template.id(),
                    records::VENDOR_TRANSPORT,
                    Level::Province,
                    PROVINCE,
                )?
                .ok_or(Error::FailedPrecondition {
                    reason: "no vendor transport key is loaded for this template",
                })?;
                token(&vendor.token)
            }
            Protector::Key(name) => {
                let protector = template.key(name).ok_or(Error::NotFound {
                    what: "protecting key",
                })?;
                self.card_key(snap, template, protector, card, factor, versions)
                    .await?
                    .0
            }
        };
        let command = self
            .hsm
            .write_key_command(WriteKeyRequest {
                key,
                protect,
                cla: WRITE_KEY_CLA,
                ins: WRITE_KEY_INS,
                p1: spec.key_id,
                p2: 0x00,
                key_header: template.card_key_header(spec),
                challenge,
                fold: MacFold::Xor4,
            })
            .await?;
        Ok(Delivered {
            key_name: spec.name.clone(),
            directory: spec.directory.clone(),
            key_id: spec.key_id,
            key_version: spec.key_version,
            algorithm: spec.hsm_algorithm(),
            kcv: command.kcv,
            level: Level::Card,
            root_version,
            form: DeliveredForm::WriteKeyApdu(command.apdu),
            psam_usage: None,
        })
    }

    /// Records a release: the ATR and root versions on first release, and the audit record —
    /// after re-checking, inside the write, that the card is still releasable.
    async fn record_release(
        &self,
        caller: &Identity,
        op: Operation,
        card: &Card,
        atr: &Atr,
        versions: std::collections::BTreeMap<String, u32>,
        delivered: &[Delivered],
    ) -> Result<()> {
        let id = card.card_identifier.clone();
        let template_id = card.template_id.clone();
        let atr_hex = atr.to_hex();
        let actor = caller.to_string();
        let subject = format!(
            "card {} keys {}",
            mask_card_identifier(&id),
            delivered
                .iter()
                .map(|d| format!("{}:v{}:{}", d.key_name, d.root_version, d.kcv))
                .collect::<Vec<_>>()
                .join(",")
        );
        self.store
            .write(move |tx| {
                let mut card: Card = tx
                    .get(Table::Cards, &id)?
                    .ok_or(Error::NotFound { what: "card" })?;
                if card.status != CardStatus::Accepted || card.template_id != template_id {
                    return Err(Error::FailedPrecondition {
                        reason: "the card changed state during the request",
                    });
                }
                match &card.atr {
                    Some(a) if *a != atr_hex => {
                        return Err(Error::FailedPrecondition {
                            reason: "the ATR differs from the one this card's keys were released for",
                        });
                    }
                    _ => {}
                }
                card.atr = Some(atr_hex);
                for (k, v) in versions {
                    card.issued_root_versions.entry(k).or_insert(v);
                }
                tx.put(Table::Cards, &id, &card)?;
                tx.audit(AuditEvent::ok(actor, op.name(), subject));
                Ok(())
            })
            .await
    }

    // ------------------------------------------------------------------ PSAM lines

    /// Registers a batch of PSAMs for the calling line.
    pub async fn register_psams(
        &self,
        caller: &Identity,
        serials: Vec<String>,
        region: &str,
        template_id: &str,
    ) -> Result<u32> {
        let subject = format!("{} PSAMs for {region}", serials.len());
        self.audited(caller, Operation::RegisterPsams, &subject, async {
            authz::authorize(caller, Operation::RegisterPsams)?;
            let target = region::Region::lookup_field("region", region)?;
            authz::authorize_region(caller, target.code)?;
            self.template(template_id)?;
            Self::endpoint(&self.store.snapshot()?, EndpointKind::PsamLine, caller)?;
            if serials.is_empty() || serials.len() > 10_000 {
                return Err(Error::InvalidArgument {
                    field: "serials",
                    reason: "between 1 and 10000 serials per batch",
                });
            }
            for s in &serials {
                if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(Error::InvalidArgument {
                        field: "serials",
                        reason: "a serial is 1..=32 of [0-9A-Za-z]",
                    });
                }
            }
            let line = caller.name().to_owned();
            let region = target.code.to_owned();
            let template_id = template_id.to_owned();
            let actor = caller.to_string();
            let count = u32::try_from(serials.len()).unwrap_or(u32::MAX);
            self.store
                .write(move |tx| {
                    let mut seen = std::collections::HashSet::new();
                    for s in &serials {
                        if !seen.insert(s.as_str()) || tx.get::<Psam>(Table::Psams, s)?.is_some() {
                            return Err(Error::AlreadyExists {
                                what: "PSAM serial",
                            });
                        }
                    }
                    let now = tx.now_ms();
                    for s in &serials {
                        let psam = Psam {
                            serial: s.clone(),
                            line: line.clone(),
                            region: region.clone(),
                            template_id: template_id.clone(),
                            releases: 0,
                            created_ms: now,
                        };
                        tx.put(Table::Psams, s, &psam)?;
                    }
                    tx.audit(AuditEvent::ok(
                        actor,
                        Operation::RegisterPsams.name(),
                        format!(
                            "{} PSAMs for {region}, template {template_id}",
                            serials.len()
                        ),
                    ));
                    Ok(count)
                })
                .await
        })
        .await
    }

    /// The key set of one registered PSAM, each key at its usage byte's level.
    pub async fn psam_key_set(&self, caller: &Identity, serial: &str) -> Result<PsamKeySet> {
        let subject = format!("PSAM {serial}");
        self.audited(caller, Operation::GetPsamKeySet, &subject, async {
            authz::authorize(caller, Operation::GetPsamKeySet)?;
            let snap = self.store.snapshot()?;
            let psam: Psam = snap
                .get(Table::Psams, serial)?
                .ok_or(Error::NotFound { what: "PSAM" })?;
            if psam.line != caller.name() {
                return Err(Error::PermissionDenied {
                    reason: "the PSAM was registered by another line",
                });
            }
            authz::authorize_region(caller, &psam.region)?;
            let line = Self::endpoint(&snap, EndpointKind::PsamLine, caller)?;
            let template = self.template(&psam.template_id)?;
            let kbpk = token(&line.transport_token);
            let version = block_version(Algorithm::from_name(&line.transport_algorithm)?)?;
            let psam_region = Region::lookup_field("region", &psam.region)?;
            let mut keys = Vec::new();
            let mut omitted = Vec::new();
            for pk in template.psam_keys() {
                if !pk.key.psam_allowed || pk.key.is_issuer_only() {
                    continue;
                }
                let (level, region) = match pk.level() {
                    Level::City if psam_region.is_city() => (Level::City, psam_region.code),
                    Level::City => {
                        omitted.push((pk.key.name.clone(), "a city-level key needs a city PSAM"));
                        continue;
                    }
                    Level::Province => (Level::Province, psam_region.province().code),
                    Level::National => (Level::National, NATIONAL),
                    Level::Card => continue,
                };
                let Some(record) = active_key(&snap, template.id(), &pk.key.name, level, region)?
                else {
                    omitted.push((
                        pk.key.name.clone(),
                        if level == Level::National {
                            "the province does not hold this national key"
                        } else {
                            "the key hierarchy is not derived"
                        },
                    ));
                    continue;
                };
                check_wrappable(version, pk.key.hsm_algorithm())?;
                let exported = self
                    .hsm
                    .export_key(&kbpk, &token(&record.token), version)
                    .await?;
                keys.push(Delivered {
                    key_name: pk.key.name.clone(),
                    directory: pk.key.directory.clone(),
                    key_id: pk.key.key_id,
                    key_version: pk.key.key_version,
                    algorithm: pk.key.hsm_algorithm(),
                    kcv: exported.kcv,
                    level,
                    root_version: record.version,
                    form: DeliveredForm::Tr31(exported.block),
                    psam_usage: Some(pk.usage.byte()),
                });
            }
            let serial_owned = serial.to_owned();
            let actor = caller.to_string();
            let summary = keys
                .iter()
                .map(|d| format!("{}:{}:v{}:{}", d.key_name, d.level, d.root_version, d.kcv))
                .collect::<Vec<_>>()
                .join(",");
            self.store
                .write(move |tx| {
                    let mut psam: Psam = tx
                        .get(Table::Psams, &serial_owned)?
                        .ok_or(Error::NotFound { what: "PSAM" })?;
                    psam.releases += 1;
                    tx.put(Table::Psams, &serial_owned, &psam)?;
                    tx.audit(AuditEvent::ok(
                        actor,
                        Operation::GetPsamKeySet.name(),
                        format!("PSAM {serial_owned} keys {summary}"),
                    ));
                    Ok(())
                })
                .await?;
            Ok(PsamKeySet {
                serial: serial.to_owned(),
                keys,
                omitted,
            })
        })
        .await
    }

    // ------------------------------------------------------------------ registry

    /// Registers a card for review (notice N4): identifiers valid, unique.
    pub async fn register_card(
        &self,
        caller: &Identity,
        card: CardRequest,
        template_id: &str,
    ) -> Result<Card> {
        let subject = masked_subject(&card);
        self.audited(caller, Operation::RegisterCard, &subject, async {
            authz::authorize(caller, Operation::RegisterCard)?;
            let checked = card.check(false)?;
            let region = checked.id.region();
            authz::authorize_region(caller, region.code)?;
            if !region.is_city() {
                return Err(Error::InvalidArgument {
                    field: "card_identifier",
                    reason: "the issuing region must be a city",
                });
            }
            self.template(template_id)?;
            let record = Card {
                card_identifier: checked.id.as_str().to_owned(),
                card_number: checked.number.as_str().to_owned(),
                social_security_number: checked.ssn.as_str().to_owned(),
                region: region.code.to_owned(),
                template_id: template_id.to_owned(),
                status: CardStatus::Registered,
                blacklist_reason: None,
                atr: None,
                issued_root_versions: Default::default(),
                created_ms: 0,
            };
            let actor = caller.to_string();
            self.store
                .write(move |tx| {
                    let mut record = record;
                    if tx
                        .get::<Card>(Table::Cards, &record.card_identifier)?
                        .is_some()
                    {
                        return Err(Error::AlreadyExists {
                            what: "card identifier",
                        });
                    }
                    if tx
                        .get::<String>(Table::CardNumbers, &record.card_number)?
                        .is_some()
                    {
                        return Err(Error::AlreadyExists {
                            what: "card number",
                        });
                    }
                    if let Some(other) = tx.get::<String>(
                        Table::SocialSecurityNumbers,
                        &record.social_security_number,
                    )? {
                        let live = tx
                            .get::<Card>(Table::Cards, &other)?
                            .is_some_and(|c| c.status != CardStatus::Blacklisted);
                        if live {
                            return Err(Error::AlreadyExists {
                                what: "a live card for this social security number",
                            });
                        }
                    }
                    record.created_ms = tx.now_ms();
                    tx.put(Table::Cards, &record.card_identifier, &record)?;
                    tx.put(
                        Table::CardNumbers,
                        &record.card_number,
                        &record.card_identifier,
                    )?;
                    tx.put(
                        Table::SocialSecurityNumbers,
                        &record.social_security_number,
                        &record.card_identifier,
                    )?;
                    tx.audit(AuditEvent::ok(
                        actor,
                        Operation::RegisterCard.name(),
                        format!("card {}", mask_card_identifier(&record.card_identifier)),
                    ));
                    Ok(record)
                })
                .await
        })
        .await
    }

    /// Accepts a registered card after review.
    pub async fn accept_card(&self, caller: &Identity, card_identifier: &str) -> Result<Card> {
        self.change_card(
            caller,
            Operation::AcceptCard,
            card_identifier,
            |card| match card.status {
                CardStatus::Registered | CardStatus::Accepted => {
                    card.status = CardStatus::Accepted;
                    Ok(())
                }
                CardStatus::Blacklisted => Err(Error::FailedPrecondition {
                    reason: "the card is blacklisted",
                }),
            },
        )
        .await
    }

    /// Blacklists a card (notice N5): no key of it is ever released again.
    pub async fn blacklist_card(
        &self,
        caller: &Identity,
        card_identifier: &str,
        reason: &str,
    ) -> Result<Card> {
        let reason = reason.chars().take(200).collect::<String>();
        self.change_card(
            caller,
            Operation::BlacklistCard,
            card_identifier,
            move |card| {
                card.status = CardStatus::Blacklisted;
                card.blacklist_reason = Some(reason);
                Ok(())
            },
        )
        .await
    }

    /// A card's record, for its registrar.
    pub async fn get_card(&self, caller: &Identity, card_identifier: &str) -> Result<Card> {
        let subject = format!("card {}", mask_card_identifier(card_identifier));
        self.audited(caller, Operation::GetCard, &subject, async {
            authz::authorize(caller, Operation::GetCard)?;
            let id = CardIdentifier::parse_field("card_identifier", card_identifier)?;
            authz::authorize_region(caller, id.region().code)?;
            self.store
                .snapshot()?
                .get(Table::Cards, id.as_str())?
                .ok_or(Error::NotFound { what: "card" })
        })
        .await
    }

    async fn change_card(
        &self,
        caller: &Identity,
        op: Operation,
        card_identifier: &str,
        change: impl FnOnce(&mut Card) -> Result<()> + Send + 'static,
    ) -> Result<Card> {
        let subject = format!("card {}", mask_card_identifier(card_identifier));
        self.audited(caller, op, &subject, async {
            authz::authorize(caller, op)?;
            let id = CardIdentifier::parse_field("card_identifier", card_identifier)?;
            authz::authorize_region(caller, id.region().code)?;
            let key = id.as_str().to_owned();
            let actor = caller.to_string();
            self.store
                .write(move |tx| {
                    let mut card: Card = tx
                        .get(Table::Cards, &key)?
                        .ok_or(Error::NotFound { what: "card" })?;
                    change(&mut card)?;
                    tx.put(Table::Cards, &key, &card)?;
                    tx.audit(AuditEvent::ok(
                        actor,
                        op.name(),
                        format!("card {} now {:?}", mask_card_identifier(&key), card.status),
                    ));
                    Ok(card)
                })
                .await
        })
        .await
    }

    // ------------------------------------------------------------------ administration

    /// Loads a card template (or a newer revision of one).
    pub async fn load_template(&self, caller: &Identity, toml: &str) -> Result<Arc<Template>> {
        self.audited(caller, Operation::Administer, "load-template", async {
            authz::authorize(caller, Operation::Administer)?;
            let parsed = Template::parse(toml)?;
            let effective = match parsed.extends() {
                Some(base) => Template::extend(&*self.template(base)?, &parsed)?,
                None => parsed.clone(),
            };
            let stored = StoredTemplate {
                id: parsed.id().to_owned(),
                version: parsed.version(),
                toml: toml.to_owned(),
            };
            let actor = caller.to_string();
            let subject = format!("template {} revision {}", stored.id, stored.version);
            self.store
                .write(move |tx| {
                    let old = tx.get::<StoredTemplate>(Table::Templates, &stored.id)?;
                    if old.is_some_and(|old| old.version >= stored.version) {
                        return Err(Error::FailedPrecondition {
                            reason: "a template of this id and an equal or newer revision is loaded",
                        });
                    }
                    tx.put(Table::Templates, &stored.id, &stored)?;
                    tx.audit(AuditEvent::ok(actor, "load-template", subject));
                    Ok(())
                })
                .await?;
            let effective = Arc::new(effective);
            self.templates
                .write()
                .map_err(|_| Error::Store)?
                .insert(effective.id().to_owned(), Arc::clone(&effective));
            Ok(effective)
        })
        .await
    }

    /// A hierarchy root from components: a national root, or a provincial key received directly.
    pub async fn import_root_key(
        &self,
        caller: &Identity,
        template_id: &str,
        key_name: &str,
        level: Level,
        components: Vec<ComponentInput>,
    ) -> Result<KeyRecord> {
        let subject = format!("{template_id}/{key_name} {level} root");
        self.audited(caller, Operation::Administer, &subject, async {
            authz::authorize(caller, Operation::Administer)?;
            let template = self.template(template_id)?;
            let spec = template.key(key_name).ok_or(Error::NotFound {
                what: "template key",
            })?;
            let region = match (level, spec.root) {
                (Level::National, KeyRoot::National) => NATIONAL,
                (Level::Province, _) => PROVINCE,
                _ => {
                    return Err(Error::InvalidArgument {
                        field: "level",
                        reason: "national roots exist only for keys whose root is national",
                    });
                }
            };
            let alg = spec.hsm_algorithm();
            let components = to_components(alg, components)?;
            let wrapped = self
                .hsm
                .form_key(
                    HsmKeySpec {
                        algorithm: alg,
                        usage: KeyUsage::CardDerivation,
                        exportability: hierarchy_exportability(spec),
                    },
                    components,
                )
                .await?;
            self.store_new_version(caller, template.id(), key_name, level, region, alg, wrapped)
                .await
        })
        .await
    }

    /// The province's own root of a key (e.g. the card master key), generated in the HSM.
    pub async fn generate_root_key(
        &self,
        caller: &Identity,
        template_id: &str,
        key_name: &str,
    ) -> Result<KeyRecord> {
        let subject = format!("{template_id}/{key_name} provincial root");
        self.audited(caller, Operation::Administer, &subject, async {
            authz::authorize(caller, Operation::Administer)?;
            let template = self.template(template_id)?;
            let spec = template.key(key_name).ok_or(Error::NotFound {
                what: "template key",
            })?;
            if spec.root != KeyRoot::Provincial {
                return Err(Error::FailedPrecondition {
                    reason: "only keys with a provincial root are generated by the province",
                });
            }
            let alg = spec.hsm_algorithm();
            let wrapped = self
                .hsm
                .generate_key(HsmKeySpec {
                    algorithm: alg,
                    usage: KeyUsage::CardDerivation,
                    exportability: hierarchy_exportability(spec),
                })
                .await?;
            self.store_new_version(
                caller,
                template.id(),
                key_name,
                Level::Province,
                PROVINCE,
                alg,
                wrapped,
            )
            .await
        })
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn store_new_version(
        &self,
        caller: &Identity,
        template_id: &str,
        key_name: &str,
        level: Level,
        region: &str,
        alg: Algorithm,
        wrapped: hsm_api::WrappedKey,
    ) -> Result<KeyRecord> {
        let prefix = records::key_prefix(template_id, key_name, level, region);
        let (method, kcv) = kcv_hex(&wrapped.kcv);
        let mut record = KeyRecord {
            template_id: template_id.to_owned(),
            key_name: key_name.to_owned(),
            level,
            region: region.to_owned(),
            version: 0,
            algorithm: alg.name().to_owned(),
            token: wrapped.token.as_str().to_owned(),
            kcv_method: method,
            kcv,
            active: true,
            created_ms: 0,
        };
        let actor = caller.to_string();
        self.store
            .write(move |tx| {
                let existing: Vec<(String, KeyRecord)> = tx.scan(Table::Keys, &prefix)?;
                record.version = existing.iter().map(|(_, r)| r.version).max().unwrap_or(0) + 1;
                record.created_ms = tx.now_ms();
                for (id, mut old) in existing {
                    if old.active {
                        old.active = false;
                        tx.put(Table::Keys, &id, &old)?;
                    }
                }
                tx.put(Table::Keys, &record.id(), &record)?;
                tx.audit(AuditEvent::ok(
                    actor,
                    "store-root-key",
                    format!(
                        "{} v{} KCV {} {}",
                        record.id(),
                        record.version,
                        record.kcv_method,
                        record.kcv
                    ),
                ));
                Ok(record)
            })
            .await
    }

    /// Derives the provincial and city keys of every key of a template from its active roots.
    /// Keys already derived for a root version are left as they are.
    pub async fn derive_hierarchy(
        &self,
        caller: &Identity,
        template_id: &str,
    ) -> Result<Vec<KeyRecord>> {
        let subject = format!("template {template_id}");
        self.audited(caller, Operation::Administer, &subject, async {
            authz::authorize(caller, Operation::Administer)?;
            let template = self.template(template_id)?;
            let province = Region::lookup(PROVINCE)?;
            let f1 = Factor::province(PROVINCE)?;
            // Nothing is written until every key is derived: one view serves the whole walk.
            let snap = self.store.snapshot()?;
            let mut new = Vec::new();
            for spec in template.keys() {
                let national =
                    active_key(&snap, template.id(), &spec.name, Level::National, NATIONAL)?;
                let provincial =
                    active_key(&snap, template.id(), &spec.name, Level::Province, PROVINCE)?;
                // The provincial key of the newest national root, derived if not yet held.
                let provincial = match (national, provincial) {
                    (Some(n), p) if p.as_ref().is_none_or(|p| p.version < n.version) => {
                        let r = self
                            .derive_level(&n, spec, &f1, Level::Province, PROVINCE)
                            .await?;
                        new.push(r.clone());
                        r
                    }
                    (_, Some(p)) => p,
                    _ => continue,
                };
                for city in province.cities() {
                    let id = records::key_id(
                        template.id(),
                        &spec.name,
                        Level::City,
                        city.code,
                        provincial.version,
                    );
                    if snap.get::<KeyRecord>(Table::Keys, &id)?.is_some() {
                        continue;
                    }
                    let f2 = Factor::city(city.code)?;
                    new.push(
                        self.derive_level(&provincial, spec, &f2, Level::City, city.code)
                            .await?,
                    );
                }
            }
            let actor = caller.to_string();
            let records = new.clone();
            let summary = format!("template {}: {} keys derived", template.id(), new.len());
            self.store
                .write(move |tx| {
                    let now = tx.now_ms();
                    for mut r in records {
                        // The new version becomes the active one of its (key, level, region).
                        let prefix =
                            records::key_prefix(&r.template_id, &r.key_name, r.level, &r.region);
                        for (id, mut old) in tx.scan::<KeyRecord>(Table::Keys, &prefix)? {
                            if old.active && old.version < r.version {
                                old.active = false;
                                tx.put(Table::Keys, &id, &old)?;
                            }
                        }
                        r.created_ms = now;
                        tx.put(Table::Keys, &r.id(), &r)?;
                    }
                    tx.audit(AuditEvent::ok(actor, "derive-hierarchy", summary));
                    Ok(())
                })
                .await?;
            Ok(new)
        })
        .await
    }

    /// The key one level below `parent` for `spec`: D(parent, factor), recorded at `level` and
    /// `region` with the parent's root version.
    async fn derive_level(
        &self,
        parent: &KeyRecord,
        spec: &KeySpec,
        factor: &Factor,
        level: Level,
        region: &str,
    ) -> Result<KeyRecord> {
        let child = self
            .hsm
            .derive_key(
                &token(&parent.token),
                spec.dispersion,
                std::slice::from_ref(factor),
                KeyUsage::CardDerivation,
                hierarchy_exportability(spec),
            )
            .await?;
        let (method, kcv) = kcv_hex(&child.kcv);
        Ok(KeyRecord {
            template_id: parent.template_id.clone(),
            key_name: parent.key_name.clone(),
            level,
            region: region.to_owned(),
            version: parent.version,
            algorithm: parent.algorithm.clone(),
            token: child.token.as_str().to_owned(),
            kcv_method: method,
            kcv,
            active: true,
            created_ms: 0,
        })
    }

    /// A blank-card vendor transport key of a template, from components.
    pub async fn import_vendor_transport_key(
        &self,
        caller: &Identity,
        template_id: &str,
        components: Vec<ComponentInput>,
    ) -> Result<KeyRecord> {
        let subject = format!("{template_id} vendor transport key");
        self.audited(caller, Operation::Administer, &subject, async {
            authz::authorize(caller, Operation::Administer)?;
            let template = self.template(template_id)?;
            let alg = template.algorithm().algorithm();
            let components = to_components(alg, components)?;
            let wrapped = self
                .hsm
                .form_key(
                    HsmKeySpec {
                        algorithm: alg,
                        usage: KeyUsage::CardKey,
                        exportability: Exportability::NonExportable,
                    },
                    components,
                )
                .await?;
            self.store_new_version(
                caller,
                template.id(),
                records::VENDOR_TRANSPORT,
                Level::Province,
                PROVINCE,
                alg,
                wrapped,
            )
            .await
        })
        .await
    }

    /// Registers a station or a PSAM line with its transport key (a KBPK formed from components).
    pub async fn register_endpoint(
        &self,
        caller: &Identity,
        kind: EndpointKind,
        name: &str,
        region: &str,
        transport_family: &str,
        components: Vec<ComponentInput>,
    ) -> Result<Endpoint> {
        let subject = format!("{} {name} in {region}", kind.name());
        self.audited(caller, Operation::Administer, &subject, async {
            authz::authorize(caller, Operation::Administer)?;
            // The name must be one a certificate can carry.
            let role = match kind {
                EndpointKind::Station => crate::identity::Role::Station,
                EndpointKind::PsamLine => crate::identity::Role::PsamLine,
            };
            Identity::new(role, Some(region), name)?;
            let region = Region::lookup_field("region", region)?;
            if !matches!(transport_family, "tdes" | "aes") {
                return Err(Error::InvalidArgument {
                    field: "transport_algorithm",
                    reason: "tdes (TR-31 version B) or aes (version D)",
                });
            }
            let first_len = components
                .first()
                .map(|c| c.hex.chars().filter(|c| !c.is_whitespace()).count() / 2)
                .unwrap_or(0);
            let alg = Algorithm::from_family_and_len(transport_family, first_len)?;
            let components = to_components(alg, components)?;
            let wrapped = self
                .hsm
                .form_key(
                    HsmKeySpec {
                        algorithm: alg,
                        usage: KeyUsage::KeyBlockProtection,
                        exportability: Exportability::NonExportable,
                    },
                    components,
                )
                .await?;
            let (method, kcv) = kcv_hex(&wrapped.kcv);
            let endpoint = Endpoint {
                kind,
                name: name.to_owned(),
                region: region.code.to_owned(),
                transport_token: wrapped.token.as_str().to_owned(),
                transport_algorithm: alg.name().to_owned(),
                transport_kcv: kcv,
                transport_kcv_method: method,
                created_ms: 0,
            };
            let actor = caller.to_string();
            self.store
                .write(move |tx| {
                    let mut endpoint = endpoint;
                    endpoint.created_ms = tx.now_ms();
                    let id = records::endpoint_id(endpoint.kind, &endpoint.name);
                    let replaced = tx.get::<Endpoint>(Table::Endpoints, &id)?.is_some();
                    tx.put(Table::Endpoints, &id, &endpoint)?;
                    tx.audit(AuditEvent::ok(
                        actor,
                        "register-endpoint",
                        format!(
                            "{id} region {} transport {} KCV {} {}{}",
                            endpoint.region,
                            endpoint.transport_algorithm,
                            endpoint.transport_kcv_method,
                            endpoint.transport_kcv,
                            if replaced {
                                " (replaces the previous key)"
                            } else {
                                ""
                            }
                        ),
                    ));
                    Ok(endpoint)
                })
                .await
        })
        .await
    }

    /// The key records of a template (tokens and KCVs, never values).
    pub async fn list_keys(&self, caller: &Identity, template_id: &str) -> Result<Vec<KeyRecord>> {
        let subject = format!("template {template_id}");
        self.audited(caller, Operation::Administer, &subject, async {
            authz::authorize(caller, Operation::Administer)?;
            let keys: Vec<(String, KeyRecord)> = self
                .store
                .snapshot()?
                .scan(Table::Keys, &format!("{template_id}/"))?;
            Ok(keys.into_iter().map(|(_, r)| r).collect())
        })
        .await
    }

    /// What the service and its HSM say about themselves.
    pub async fn status(&self, caller: &Identity) -> Result<Status> {
        self.audited(caller, Operation::GetStatus, "service status", async {
            authz::authorize(caller, Operation::GetStatus)?;
            let hsm = self.hsm.status().await?;
            let mut templates: Vec<String> = self
                .templates
                .read()
                .map_err(|_| Error::Store)?
                .keys()
                .cloned()
                .collect();
            templates.sort();
            Ok(Status {
                hsm_state: match hsm.state {
                    hsm_api::HsmState::Uninitialised => "uninitialised",
                    hsm_api::HsmState::Sealed => "sealed",
                    hsm_api::HsmState::Operational => "operational",
                    hsm_api::HsmState::SelfTestFailed => "self-test-failed",
                }
                .to_owned(),
                hsm_is_secure: self.hsm.is_secure(),
                hsm_dangerous_test_lmk: hsm.dangerous_test_lmk,
                audit_records: self.store.snapshot()?.audit_len()?,
                templates,
            })
        })
        .await
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
    let all: Vec<(String, KeyRecord)> = snap.scan(
        Table::Keys,
        &records::key_prefix(template, key, level, region),
    )?;
    Ok(all.into_iter().map(|(_, r)| r).rfind(|r| r.active))
}

/// Hierarchy keys of issuer-only template keys (card MKs, STKs) never leave the HSM under a
/// transport key; the others may go to PSAM lines.
fn hierarchy_exportability(spec: &KeySpec) -> Exportability {
    if spec.psam_allowed && !spec.is_issuer_only() {
        Exportability::Exportable
    } else {
        Exportability::NonExportable
    }
}

fn to_components(alg: Algorithm, inputs: Vec<ComponentInput>) -> Result<Vec<Component>> {
    let method = KcvMethod::default_for(alg);
    inputs
        .into_iter()
        .map(|c| {
            let value = hex::decode(c.kcv_hex.trim()).map_err(|_| Error::InvalidArgument {
                field: "components.kcv_hex",
                reason: "not hex",
            })?;
            Ok(Component::new(c.hex, Kcv::from_parts(method, value)))
        })
        .collect()
}

fn select_keys<'t>(template: &'t Template, names: &[String]) -> Result<Vec<&'t KeySpec>> {
    if names.is_empty() {
        return Ok(template.write_order().collect());
    }
    names
        .iter()
        .map(|n| {
            template.key(n).ok_or(Error::NotFound {
                what: "template key",
            })
        })
        .collect()
}

fn check_releasable(card: &Card, checked: &CheckedCard, template_id: &str) -> Result<()> {
    if card.card_number != checked.number.as_str()
        || card.social_security_number != checked.ssn.as_str()
    {
        return Err(Error::FailedPrecondition {
            reason: "the card's data does not match the registry",
        });
    }
    if card.template_id != template_id {
        return Err(Error::FailedPrecondition {
            reason: "the card was registered with another template",
        });
    }
    match card.status {
        CardStatus::Blacklisted => Err(Error::FailedPrecondition {
            reason: "the card is blacklisted",
        }),
        CardStatus::Registered => Err(Error::FailedPrecondition {
            reason: "the card's data has not been reviewed and accepted",
        }),
        CardStatus::Accepted => Ok(()),
    }?;
    // After a first release, only the same chip (ATR) gets keys; checked again in the write.
    match (&card.atr, &checked.atr) {
        (Some(released), Some(atr)) if *released != atr.to_hex() => {
            Err(Error::FailedPrecondition {
                reason: "the ATR differs from the one this card's keys were released for",
            })
        }
        _ => Ok(()),
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
