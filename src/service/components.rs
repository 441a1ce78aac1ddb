//! Split knowledge: a key formed from components, one per custodian, each from their own
//! certificate.
//!
//! An officer starts a **component ceremony** for a target (a root, a vendor transport key, a
//! station's or PSAM line's transport key) and the number of components (2..=9). Each custodian
//! then submits **one** component with the KCV they read from their paper; one identity never
//! submits two components of one ceremony. The key forms in the HSM only when the last component
//! arrives — every component checked against its KCV there — and the final KCV goes to the
//! record, which every custodian reads ([`Kms::key_ceremony`]). Replacing an existing station's
//! or line's transport key is itself a dual-control act: its ceremony opens only on the approval
//! of another officer.
//!
//! Each component goes into the HSM when its custodian submits it ([`Hsm::add_component`]): the
//! HSM checks it against the custodian's KCV there and XORs it into a **partial key**, a block
//! under the LMK good for nothing but the next component, which carries the spec of the key it
//! becomes and the count. The store keeps the partial key in the ceremony's record, written
//! with the submission's audit record in one write, so an open ceremony survives a restart; no
//! component is kept anywhere (never in the store, never in a log, never in memory after its
//! call). A component that does not match its KCV fails the ceremony, naming its custodian.

use std::sync::atomic::Ordering;

use hsm_api::{
    Accumulated, Accumulation, Algorithm, Component, Exportability, Hsm, KeySpec as HsmKeySpec,
    KeyToken, KeyUsage,
};
use hsm_api::{Kcv, KcvMethod};
use serde::{Deserialize, Serialize};

use crate::access::authz::Operation;
use crate::access::identity::{Identity, Role};
use crate::card::region::Region;
use crate::card::template::KeyRoot;
use crate::error::{Error, Refusal, Resource, Result};
use crate::state::audit::AuditEvent;
use crate::state::records::{self, Endpoint, EndpointKind, Level, NATIONAL};
use crate::state::store::{Table, Tx};

use super::backup::RootToRestore;
use super::officers::{ComponentInput, hierarchy_exportability, new_key_record, put_new_version};
use super::parts::{COMPONENTS, Part, PartStep};
use super::{Kms, PROVINCE, hierarchy_usage, is_master_key, kcv_hex};

/// What a component ceremony forms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "target")]
pub enum CeremonyTarget {
    /// A hierarchy root: a national root, or a provincial key received directly.
    Root {
        template_id: String,
        key_name: String,
        level: Level,
        /// The Ministry permitted this national root's keys in PSAMs (DOMAIN.md §11).
        #[serde(default)]
        psam_permitted: bool,
    },
    /// A template's blank-card vendor transport key.
    VendorTransport { template_id: String },
    /// A station's or PSAM line's transport key (a KBPK), `tdes` or `aes`.
    Endpoint {
        kind: EndpointKind,
        name: String,
        region: String,
        transport_family: String,
    },
    /// A root restored from its backup shares (`super::backup`), opened only by an approved
    /// [`Act::RestoreRoot`](super::custodians::Act); `components` is the threshold.
    Restore {
        #[serde(flatten)]
        root: RootToRestore,
    },
}

/// Where a component ceremony stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CeremonyState {
    Open,
    Complete,
    Failed,
}

impl CeremonyState {
    pub const fn name(self) -> &'static str {
        match self {
            CeremonyState::Open => "open",
            CeremonyState::Complete => "complete",
            CeremonyState::Failed => "failed",
        }
    }
}

/// One custodian's part, as recorded: who, and the KCV of their component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Custodian {
    pub identity: String,
    pub kcv: String,
    pub at_ms: u64,
}

/// A component ceremony (table `ceremonies`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCeremony {
    pub id: String,
    pub target: CeremonyTarget,
    pub description: String,
    /// The key's family (`tdes`, `aes`, `sm4`, `des`): what a custodian's tool checks a
    /// component's KCV with before sending it.
    pub key_family: String,
    pub components: u8,
    pub started_by: String,
    pub started_ms: u64,
    pub expires_ms: u64,
    /// The dual-control request whose approval opened it (a transport key's replacement).
    pub approved_request: Option<String>,
    pub custodians: Vec<Custodian>,
    pub state: CeremonyState,
    /// The key's algorithm, KCV method and KCV once formed.
    pub algorithm: Option<String>,
    pub kcv_method: Option<String>,
    pub kcv: Option<String>,
    /// Why it failed.
    pub failure: Option<String>,
    /// While open, after the first component: the HSM's partial key (the XOR of the components
    /// so far, under the LMK; not a key token, every other HSM operation refuses it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<String>,
}

/// What one submission did.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub ceremony: KeyCeremony,
}

impl<H: Hsm> Kms<H> {
    /// Starts a component ceremony of `components` custodians for `target`. A station's or PSAM
    /// line's transport key is refused here: its ceremony opens on an approval
    /// ([`Act::RegisterEndpoint`](super::custodians::Act), `ReplaceTransportKey`).
    pub async fn start_key_ceremony(
        &self,
        caller: &Identity,
        target: CeremonyTarget,
        components: u8,
    ) -> Result<KeyCeremony> {
        self.audited(caller, Operation::Administer, "component ceremony", async {
            self.admit_officer(caller, Operation::Administer)?;
            let description = self.check_target(&target)?;
            super::backup::not_a_restore(&target, Refusal::DualControlRequired)?;
            // A station's or line's transport key, its first one too, opens only on another
            // officer's approval: `Act::RegisterEndpoint` (or `IssueTransportKey`), and
            // `Act::ReplaceTransportKey` for a replacement.
            if let CeremonyTarget::Endpoint { .. } = &target {
                return Err(Error::FailedPrecondition {
                    reason: Refusal::DualControlRequired,
                });
            }
            let actor = caller.to_string();
            self.open_ceremony(target, description, components, actor, None)
                .await
        })
        .await
    }

    /// Records a new open ceremony (validated by the caller).
    pub(super) async fn open_ceremony(
        &self,
        target: CeremonyTarget,
        description: String,
        components: u8,
        actor: String,
        approved_request: Option<String>,
    ) -> Result<KeyCeremony> {
        if !(2..=9).contains(&components) {
            return Err(Error::InvalidArgument {
                field: "components",
                reason: Refusal::ComponentCount,
            });
        }
        let ttl = self.ceremony.approval_ttl_ms.load(Ordering::Relaxed);
        let family = self.target_family(&target)?;
        let ceremony = self
            .store
            .write(move |tx| {
                let c = new_ceremony(tx, target, description, family, components, actor, ttl)?;
                let mut c = c;
                c.approved_request = approved_request;
                tx.put(Table::Ceremonies, &c.id, &c)?;
                tx.audit(AuditEvent::ok(
                    c.started_by.clone(),
                    "start-key-ceremony",
                    format!(
                        "{}: {} from {} components{}",
                        c.id,
                        c.description,
                        c.components,
                        c.approved_request
                            .as_ref()
                            .map(|r| format!(" (request {r})"))
                            .unwrap_or_default()
                    ),
                ));
                Ok(c)
            })
            .await?;
        Ok(ceremony)
    }

    /// A component ceremony as recorded (custodians, their KCVs, the final KCV).
    pub async fn key_ceremony(&self, caller: &Identity, id: &str) -> Result<KeyCeremony> {
        let subject = format!("ceremony {id}");
        self.audited(caller, Operation::Administer, &subject, async {
            self.admit_officer(caller, Operation::Administer)?;
            self.store
                .snapshot()?
                .get(Table::Ceremonies, id)?
                .ok_or(Error::NotFound {
                    what: Resource::Ceremony,
                })
        })
        .await
    }

    /// One custodian's component. At the last one the key forms in the HSM (each component
    /// checked against its KCV) and is stored with the ceremony's record, in one write.
    pub async fn submit_component(
        &self,
        caller: &Identity,
        id: &str,
        component: ComponentInput,
    ) -> Result<Submitted> {
        let subject = format!("ceremony {id}");
        self.audited(caller, Operation::Administer, &subject, async {
            self.admit_officer(caller, Operation::Administer)?;
            let actor = caller.to_string();
            let ceremony: KeyCeremony =
                self.store
                    .snapshot()?
                    .get(Table::Ceremonies, id)?
                    .ok_or(Error::NotFound {
                        what: Resource::Ceremony,
                    })?;
            super::backup::not_a_restore(&ceremony.target, Refusal::CeremonyKindMismatch)?;
            check_submission(&ceremony, &actor)?;
            let kcv_text = component.kcv_hex.trim().to_ascii_uppercase();
            let alg = self.ceremony_algorithm(&ceremony.target, &component)?;
            let part = to_component(alg, component)?;
            if super::custodians::now_ms() >= ceremony.expires_ms {
                self.fail_ceremony(id, "expired before its last component".to_owned())
                    .await?;
                return Err(Error::FailedPrecondition {
                    reason: Refusal::CeremonyNotOpen,
                });
            }
            // One submission at a time in this process: each continues the partial key the
            // previous one stored (the write below also checks it is still the stored one).
            let _turn = self.ceremony.submissions.lock().await;
            let _tokens = self.token_turn().await;
            let ceremony: KeyCeremony =
                self.store
                    .snapshot()?
                    .get(Table::Ceremonies, id)?
                    .ok_or(Error::NotFound {
                        what: Resource::Ceremony,
                    })?;
            check_submission(&ceremony, &actor)?;
            let into = match &ceremony.partial {
                None => Accumulation::Begin {
                    spec: self.target_spec(&ceremony.target, alg)?,
                    components: ceremony.components,
                },
                Some(token) => Accumulation::Continue(KeyToken::from_stored(token.clone())),
            };
            let step = match self.hsm.add_component(into, part).await {
                Ok(step) => step,
                Err(e) => {
                    let why = match &e {
                        hsm_api::Error::ComponentKcv { .. } => {
                            format!("the component of {actor} does not match its KCV")
                        }
                        other => format!("the HSM refused to form the key: {other}"),
                    };
                    self.fail_ceremony(id, why).await?;
                    return Err(e.into());
                }
            };
            let step = match step {
                Accumulated::Partial(partial) => PartStep::Partial(partial.token),
                Accumulated::Formed(formed) => PartStep::Formed(formed),
            };
            let part = Part {
                ceremony,
                actor,
                check: kcv_text,
                alg,
                step,
            };
            let ceremony = self.record_part(part, COMPONENTS).await?;
            Ok(Submitted { ceremony })
        })
        .await
    }

    /// Forms `target`'s key from every component at once and stores it (the caller has
    /// checked that this is code of this process).
    pub(super) async fn form_all_at_once(
        &self,
        caller: &Identity,
        target: CeremonyTarget,
        components: Vec<ComponentInput>,
    ) -> Result<()> {
        self.check_target(&target)?;
        let alg = match components.first() {
            Some(first) => self.ceremony_algorithm(&target, first)?,
            None => {
                return Err(Error::InvalidArgument {
                    field: "components",
                    reason: Refusal::ComponentCount,
                });
            }
        };
        let parts = components
            .into_iter()
            .map(|c| to_component(alg, c))
            .collect::<Result<Vec<_>>>()?;
        let formed = self.form_target(&target, alg, parts).await?;
        let region = self.target_region(&target)?;
        let actor = caller.to_string();
        self.store
            .write(move |tx| apply_target(tx, &target, region, alg, &formed, actor, ""))
            .await
    }

    /// Marks an open ceremony failed and forgets its partial key.
    pub(super) async fn fail_ceremony(&self, id: &str, why: String) -> Result<()> {
        let id = id.to_owned();
        self.store
            .write(move |tx| {
                let mut c = open(tx, &id)?;
                c.state = CeremonyState::Failed;
                c.failure = Some(why.clone());
                c.partial = None;
                tx.put(Table::Ceremonies, &c.id, &c)?;
                tx.audit(AuditEvent::ok(
                    "the service",
                    "fail-key-ceremony",
                    format!("{}: {}: {why}", c.id, c.description),
                ));
                Ok(())
            })
            .await
    }

    /// Validates a target; its description.
    pub(super) fn check_target(&self, target: &CeremonyTarget) -> Result<String> {
        match target {
            CeremonyTarget::Root {
                template_id,
                key_name,
                level,
                psam_permitted,
            } => {
                self.root_region(template_id, key_name, *level)?;
                if *psam_permitted && *level != Level::National {
                    return Err(Error::InvalidArgument {
                        field: "ministry_psam_permission",
                        reason: Refusal::PsamPermissionOnlyNational,
                    });
                }
                Ok(format!(
                    "{template_id}/{key_name} {level} root{}",
                    if *psam_permitted {
                        ", with the Ministry's permission for PSAM use"
                    } else {
                        ""
                    }
                ))
            }
            CeremonyTarget::VendorTransport { template_id } => {
                self.template(template_id)?;
                Ok(format!("{template_id} vendor transport key"))
            }
            CeremonyTarget::Restore { root } => self.check_restore(root),
            CeremonyTarget::Endpoint {
                kind,
                name,
                region,
                transport_family,
            } => {
                let role = match kind {
                    EndpointKind::Station => Role::Station,
                    EndpointKind::PsamLine => Role::PsamLine,
                };
                Identity::new(role, Some(region), name)?;
                Region::lookup_field("region", region)?;
                if !matches!(transport_family.as_str(), "tdes" | "aes") {
                    return Err(Error::InvalidArgument {
                        field: "transport_algorithm",
                        reason: Refusal::TransportAlgorithm,
                    });
                }
                Ok(format!(
                    "transport key of {} {name} in {region}",
                    kind.name()
                ))
            }
        }
    }

    /// The family of a target's key.
    pub(super) fn target_family(&self, target: &CeremonyTarget) -> Result<String> {
        Ok(match (self.fixed_algorithm(target)?, target) {
            (Some(alg), _) => family_of(alg).to_owned(),
            (
                None,
                CeremonyTarget::Endpoint {
                    transport_family, ..
                },
            ) => transport_family.clone(),
            (None, _) => return Err(Error::Store),
        })
    }

    /// The algorithm a root's or a vendor transport key's template fixes (an endpoint's
    /// depends on its components' length: `None`).
    pub(super) fn fixed_algorithm(&self, target: &CeremonyTarget) -> Result<Option<Algorithm>> {
        Ok(match target {
            CeremonyTarget::Root {
                template_id,
                key_name,
                ..
            }
            | CeremonyTarget::Restore {
                root:
                    RootToRestore {
                        template_id,
                        key_name,
                        ..
                    },
            } => Some(
                self.template(template_id)?
                    .key(key_name)
                    .ok_or(Error::NotFound {
                        what: Resource::TemplateKey,
                    })?
                    .hsm_algorithm(),
            ),
            CeremonyTarget::VendorTransport { template_id } => {
                Some(self.template(template_id)?.algorithm().algorithm())
            }
            CeremonyTarget::Endpoint { .. } => None,
        })
    }

    /// The region code a root of `level` is recorded in, after the template's checks.
    pub(super) fn root_region(
        &self,
        template_id: &str,
        key_name: &str,
        level: Level,
    ) -> Result<&'static str> {
        let template = self.template(template_id)?;
        let spec = template.key(key_name).ok_or(Error::NotFound {
            what: Resource::TemplateKey,
        })?;
        self.check_owned(spec)?;
        match (level, spec.root) {
            (Level::National, KeyRoot::National) => Ok(NATIONAL),
            // A city's deployment holds the roots of its city-owned keys.
            (Level::City, KeyRoot::City(city)) => Ok(city.code),
            (Level::City | Level::Card, _) | (Level::Province, KeyRoot::City(_)) => {
                Err(Error::InvalidArgument {
                    field: "level",
                    reason: Refusal::RootLevel,
                })
            }
            (Level::Province, _) => Ok(PROVINCE),
            _ => Err(Error::InvalidArgument {
                field: "level",
                reason: Refusal::NationalRootNotAllowed,
            }),
        }
    }

    /// Where a target's key is kept: a root's region ([`Kms::root_region`]), `None` for the
    /// others.
    pub(super) fn target_region(&self, target: &CeremonyTarget) -> Result<Option<&'static str>> {
        match target {
            CeremonyTarget::Root {
                template_id,
                key_name,
                level,
                ..
            }
            | CeremonyTarget::Restore {
                root:
                    RootToRestore {
                        template_id,
                        key_name,
                        level,
                        ..
                    },
            } => Ok(Some(self.root_region(template_id, key_name, *level)?)),
            _ => Ok(None),
        }
    }

    /// The algorithm of a ceremony's key (an endpoint's from its family and the component's
    /// length).
    fn ceremony_algorithm(
        &self,
        target: &CeremonyTarget,
        component: &ComponentInput,
    ) -> Result<Algorithm> {
        match (self.fixed_algorithm(target)?, target) {
            (Some(alg), _) => Ok(alg),
            (
                None,
                CeremonyTarget::Endpoint {
                    transport_family, ..
                },
            ) => {
                let len = component.hex.chars().filter(|c| !c.is_whitespace()).count() / 2;
                Ok(Algorithm::from_family_and_len(transport_family, len)?)
            }
            (None, _) => Err(Error::Store),
        }
    }

    /// Forms the target's key in the HSM from every component.
    async fn form_target(
        &self,
        target: &CeremonyTarget,
        alg: Algorithm,
        parts: Vec<Component>,
    ) -> Result<hsm_api::WrappedKey> {
        let spec = self.target_spec(target, alg)?;
        Ok(self.hsm.form_key(spec, parts).await?)
    }

    /// What the HSM forms for `target`: its usage and exportability, with `alg`.
    pub(super) fn target_spec(
        &self,
        target: &CeremonyTarget,
        alg: Algorithm,
    ) -> Result<HsmKeySpec> {
        let (usage, exportability) = match target {
            CeremonyTarget::Root {
                template_id,
                key_name,
                level,
                ..
            }
            | CeremonyTarget::Restore {
                root:
                    RootToRestore {
                        template_id,
                        key_name,
                        level,
                        ..
                    },
            } => {
                let template = self.template(template_id)?;
                let spec = template.key(key_name).ok_or(Error::NotFound {
                    what: Resource::TemplateKey,
                })?;
                let master = is_master_key(&template, spec);
                (
                    hierarchy_usage(master, *level)?,
                    hierarchy_exportability(spec, master),
                )
            }
            CeremonyTarget::VendorTransport { .. } => {
                (KeyUsage::VendorTransport, Exportability::NonExportable)
            }
            CeremonyTarget::Endpoint { .. } => {
                (KeyUsage::KeyBlockProtection, Exportability::NonExportable)
            }
        };
        Ok(HsmKeySpec {
            algorithm: alg,
            usage,
            exportability,
        })
    }
}

/// Refuses a submission by `actor` to `c` unless it is open and `actor` has not submitted a
/// component (or share) to it.
pub(super) fn check_submission(c: &KeyCeremony, actor: &str) -> Result<()> {
    if c.state != CeremonyState::Open {
        return Err(Error::FailedPrecondition {
            reason: Refusal::CeremonyNotOpen,
        });
    }
    if c.custodians.iter().any(|c| c.identity == actor) {
        return Err(Error::PermissionDenied {
            reason: Refusal::SameCustodianTwice,
        });
    }
    Ok(())
}

/// The open ceremony `id` with `actor`'s component (KCV `kcv`) on record, if it still stands
/// where it stood when the HSM took the component ([`unchanged`]).
pub(super) fn with_custodian(
    tx: &Tx<'_>,
    id: &str,
    before: &Option<String>,
    actor: &str,
    kcv: &str,
) -> Result<KeyCeremony> {
    let mut c = open(tx, id)?;
    unchanged(&c, before, actor)?;
    c.custodians.push(Custodian {
        identity: actor.to_owned(),
        kcv: kcv.to_owned(),
        at_ms: tx.now_ms(),
    });
    Ok(c)
}

/// At the write of a submission: `c` (open) still stands where it stood when the HSM took the
/// component (the partial key `before`), so no other submission — another process's on the
/// same store — went in between.
fn unchanged(c: &KeyCeremony, before: &Option<String>, actor: &str) -> Result<()> {
    check_submission(c, actor)?;
    if c.partial != *before {
        return Err(Error::FailedPrecondition {
            reason: Refusal::CeremonyNotOpen,
        });
    }
    Ok(())
}

/// A new open ceremony record with the next id.
pub(super) fn new_ceremony(
    tx: &Tx<'_>,
    target: CeremonyTarget,
    description: String,
    key_family: String,
    components: u8,
    actor: String,
    ttl: u64,
) -> Result<KeyCeremony> {
    let n = tx.scan::<KeyCeremony>(Table::Ceremonies, "")?.len() + 1;
    let now = tx.now_ms();
    Ok(KeyCeremony {
        id: format!("C{n:06}"),
        target,
        description,
        key_family,
        components,
        started_by: actor,
        started_ms: now,
        expires_ms: now.saturating_add(ttl),
        approved_request: None,
        custodians: Vec::new(),
        state: CeremonyState::Open,
        algorithm: None,
        kcv_method: None,
        kcv: None,
        failure: None,
        partial: None,
    })
}

/// The open ceremony `id`.
fn open(tx: &Tx<'_>, id: &str) -> Result<KeyCeremony> {
    let c: KeyCeremony = tx.get(Table::Ceremonies, id)?.ok_or(Error::NotFound {
        what: Resource::Ceremony,
    })?;
    if c.state != CeremonyState::Open {
        return Err(Error::FailedPrecondition {
            reason: Refusal::CeremonyNotOpen,
        });
    }
    Ok(c)
}

/// Stores the formed key where its target says, with its audit record.
#[allow(clippy::too_many_arguments)]
pub(super) fn apply_target(
    tx: &mut Tx<'_>,
    target: &CeremonyTarget,
    region: Option<&'static str>,
    alg: Algorithm,
    formed: &hsm_api::WrappedKey,
    actor: String,
    note: &str,
) -> Result<()> {
    match target {
        CeremonyTarget::Root {
            template_id,
            key_name,
            level,
            psam_permitted,
        } => {
            // Where the root is kept: [`Kms::root_region`], checked when the ceremony started.
            let region = region.ok_or(Error::Store)?;
            let mut r = new_key_record(template_id, key_name, *level, region, alg, formed);
            r.psam_permitted = *psam_permitted;
            put_new_version(tx, r, actor, note)?;
        }
        CeremonyTarget::Restore { root } => {
            super::backup::put_restored(tx, root, region, alg, formed, actor, note)?;
        }
        CeremonyTarget::VendorTransport { template_id } => {
            let r = new_key_record(
                template_id,
                records::VENDOR_TRANSPORT,
                Level::Province,
                PROVINCE,
                alg,
                formed,
            );
            put_new_version(tx, r, actor, note)?;
        }
        CeremonyTarget::Endpoint {
            kind, name, region, ..
        } => {
            let (method, kcv) = kcv_hex(&formed.kcv);
            let endpoint = Endpoint {
                kind: *kind,
                name: name.clone(),
                region: region.clone(),
                transport_token: formed.token.as_str().to_owned(),
                transport_algorithm: alg.name().to_owned(),
                transport_kcv: kcv,
                transport_kcv_method: method,
                created_ms: tx.now_ms(),
            };
            super::officers::put_endpoint(tx, endpoint, actor, note)?;
        }
    }
    Ok(())
}

/// The family name of an algorithm, as `Algorithm::from_family_and_len` takes it.
pub(super) fn family_of(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::Des => "des",
        Algorithm::Tdes2 | Algorithm::Tdes3 => "tdes",
        Algorithm::Sm4 => "sm4",
        _ => "aes",
    }
}

/// A custodian's component for the HSM, with its KCV (hex) from paper.
pub(super) fn to_component(alg: Algorithm, c: ComponentInput) -> Result<Component> {
    let value = hex::decode(c.kcv_hex.trim()).map_err(|_| Error::InvalidArgument {
        field: "components.kcv_hex",
        reason: Refusal::NotHex,
    })?;
    Ok(Component::new(
        c.hex,
        Kcv::from_parts(KcvMethod::default_for(alg), value),
    ))
}
