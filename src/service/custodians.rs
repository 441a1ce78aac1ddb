//! Dual control of the key ceremonies (who may act at all is the officer registry's:
//! `officer_registry`).
//!
//! **Dual control.** A sensitive act ([`Act`]) is asked for by one officer
//! ([`Kms::request_act`]) and happens only when another approves it from their own certificate
//! within the time limit ([`Kms::approve_request`]): the requester cannot approve, an approval is
//! used once (the request's state and the act are one write), an expired request dies. The
//! act's audit record names both officers.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hsm_api::Hsm;
use serde::{Deserialize, Serialize};

use crate::access::authz::Operation;
use crate::access::identity::{Identity, Origin};
use crate::error::{Error, Refusal, Resource, Result};
use crate::state::audit::AuditEvent;
use crate::state::records::{
    self, Card, CardStatus, Endpoint, EndpointKind, KeyRecord, OfficerRecord,
};
use crate::state::store::{Table, Tx};

use super::Kms;
use super::components::{CeremonyTarget, KeyCeremony, new_ceremony};
use super::officers::put_new_version;

/// How long a dual-control request waits for its approval, unless configured otherwise.
pub const DEFAULT_APPROVAL_TTL_MS: u64 = 15 * 60 * 1000;

/// What the service holds in memory for the ceremonies under way.
#[derive(Debug)]
pub(super) struct Ceremonies {
    /// The time limit of a dual-control request, in milliseconds.
    pub(super) approval_ttl_ms: AtomicU64,
    /// The custodians whose shares the HSM holds towards the unseal in progress.
    pub(super) unseal_custodians: Mutex<Vec<String>>,
    /// Component submissions, one at a time (each continues the partial key the previous one
    /// stored with its ceremony).
    pub(super) submissions: tokio::sync::Mutex<()>,
    /// Held across a share's hand-out or the commit of an LMK rotation (one at a time).
    pub(super) lmk: tokio::sync::Mutex<()>,
    /// The LMK that new tokens are made under, held steady: shared by every operation that
    /// has the HSM make a token (or a partial key) from its HSM call to the write that stores
    /// it, exclusively by an LMK rotation from its view of the stored tokens to its prepared
    /// write, and from its commit's check to its swap. So no token is made under an LMK that is
    /// replaced before the token is stored and re-wrapped ([`Kms::token_turn`]).
    pub(super) tokens: tokio::sync::RwLock<()>,
}

impl Default for Ceremonies {
    fn default() -> Self {
        Ceremonies {
            approval_ttl_ms: AtomicU64::new(DEFAULT_APPROVAL_TTL_MS),
            unseal_custodians: Mutex::new(Vec::new()),
            submissions: tokio::sync::Mutex::new(()),
            lmk: tokio::sync::Mutex::new(()),
            tokens: tokio::sync::RwLock::new(()),
        }
    }
}

/// A sensitive act, under dual control.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "act")]
pub enum Act {
    /// Register an officer's or auditor's certificate.
    RegisterOfficer { certificate_der_hex: String },
    /// Revoke a registered certificate, by fingerprint.
    RevokeOfficer { fingerprint: String },
    /// Generate a province root (the first version, or the next one: a rotation).
    GenerateRoot {
        template_id: String,
        key_name: String,
    },
    /// Retire one key version (`template/key/level/region/version`): it serves no new card.
    RetireKey { key_id: String },
    /// Take a card off the blacklist: it goes back to `registered`, for its registrar to
    /// review and accept again.
    UnblacklistCard { card_identifier: String },
    /// Replace a registered station's or PSAM line's transport key: the approval opens its
    /// component ceremony.
    ReplaceTransportKey {
        kind: EndpointKind,
        name: String,
        transport_family: String,
        components: u8,
    },
    /// Rotate the LMK: the approval re-wraps every stored token under a new LMK split
    /// `threshold`-of-`shares` (`super::lmk`); each custodian then takes one share.
    RotateLmk { threshold: u8, shares: u8 },
    /// Issue a station's or PSAM line's transport key generated in the HSM (`super::transport`).
    IssueTransportKey {
        kind: EndpointKind,
        name: String,
        region: String,
        transport_family: String,
        delivery: super::transport::TransportDelivery,
    },
    /// Register a new station or PSAM line: the approval opens its component ceremony.
    RegisterEndpoint {
        kind: EndpointKind,
        name: String,
        region: String,
        transport_family: String,
        components: u8,
    },
    /// Revoke a station or PSAM line: its record and transport key are deleted.
    RevokeEndpoint { kind: EndpointKind, name: String },
    /// Back up a national or provincial root (`template/key/level/region/version`) in
    /// `threshold`-of-`shares` custodians' shares for escrow (`super::backup`): the approval
    /// splits it in the HSM; each custodian then takes one share.
    BackupRoot {
        key_id: String,
        threshold: u8,
        shares: u8,
    },
    /// Restore a root from `threshold` shares of its backup, with the version and KCV of the
    /// original: the approval opens its restore ceremony (`CeremonyTarget::Restore`).
    RestoreRoot {
        #[serde(flatten)]
        root: super::backup::RootToRestore,
        threshold: u8,
    },
}

/// The state of a dual-control request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestState {
    Pending,
    Approved,
    Rejected,
    Expired,
}

impl RequestState {
    pub const fn name(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Rejected => "rejected",
            RequestState::Expired => "expired",
        }
    }
}

/// A dual-control request (table `requests`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DualControlRequest {
    pub id: String,
    pub act: Act,
    /// What the act does, for the screen and the record.
    pub description: String,
    pub requested_by: String,
    pub requested_ms: u64,
    pub expires_ms: u64,
    pub state: RequestState,
    pub decided_by: Option<String>,
    pub decided_ms: Option<u64>,
    /// What the approval did (KCVs, fingerprints), for the ceremony record.
    pub result: Option<String>,
}

impl DualControlRequest {
    /// The state as of `now_ms`: a pending request past its limit is expired.
    pub fn state_at(&self, now_ms: u64) -> RequestState {
        if self.state == RequestState::Pending && now_ms >= self.expires_ms {
            RequestState::Expired
        } else {
            self.state
        }
    }
}

/// What an approval did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approved {
    pub request: DualControlRequest,
    pub key: Option<KeyRecord>,
    pub officer: Option<OfficerRecord>,
    /// The component ceremony the approval opened.
    pub ceremony: Option<KeyCeremony>,
    /// The transport key the approval had the HSM issue.
    pub transport: Option<super::transport::TransportIssue>,
}

/// Refuses `caller` unless it is code of this process (the one-call forms of sensitive acts,
/// kept for the `dev` seeding).
pub(super) fn in_process_only(caller: &Identity, reason: Refusal) -> Result<()> {
    if *caller.origin() == Origin::InProcess {
        Ok(())
    } else {
        Err(Error::FailedPrecondition { reason })
    }
}

impl<H: Hsm> Kms<H> {
    /// What the HSM says about itself (no caller: for the server's start-up checks).
    pub async fn hsm_status(&self) -> Result<hsm_api::HsmStatus> {
        Ok(self.hsm.status().await?)
    }

    /// Sets the time limit of dual-control requests made from now on.
    pub fn set_approval_ttl(&self, ttl: std::time::Duration) {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.ceremony.approval_ttl_ms.store(ms, Ordering::Relaxed);
    }

    /// Asks for `act`; another officer must approve it within the time limit.
    pub async fn request_act(&self, caller: &Identity, act: Act) -> Result<DualControlRequest> {
        self.audited(
            caller,
            Operation::Administer,
            "dual-control request",
            async {
                self.admit_officer(caller, Operation::Administer)?;
                let description = self.check_act(&act)?;
                let ttl = self.ceremony.approval_ttl_ms.load(Ordering::Relaxed);
                let actor = caller.to_string();
                self.store
                    .write(move |tx| {
                        let n = tx.scan::<DualControlRequest>(Table::Requests, "")?.len() + 1;
                        let now = tx.now_ms();
                        let request = DualControlRequest {
                            id: format!("R{n:06}"),
                            act,
                            description,
                            requested_by: actor.clone(),
                            requested_ms: now,
                            expires_ms: now.saturating_add(ttl),
                            state: RequestState::Pending,
                            decided_by: None,
                            decided_ms: None,
                            result: None,
                        };
                        tx.put(Table::Requests, &request.id, &request)?;
                        tx.audit(AuditEvent::ok(
                            actor,
                            "request-act",
                            format!(
                                "{}: {} (expires at {} ms)",
                                request.id, request.description, request.expires_ms
                            ),
                        ));
                        Ok(request)
                    })
                    .await
            },
        )
        .await
    }

    /// The requests, newest last (pending ones past their limit shown expired).
    pub async fn list_requests(&self, caller: &Identity) -> Result<Vec<DualControlRequest>> {
        self.audited(
            caller,
            Operation::Administer,
            "dual-control requests",
            async {
                self.admit_officer(caller, Operation::Administer)?;
                let now = now_ms();
                let all: Vec<(String, DualControlRequest)> =
                    self.store.snapshot()?.scan(Table::Requests, "")?;
                Ok(all
                    .into_iter()
                    .map(|(_, mut r)| {
                        r.state = r.state_at(now);
                        r
                    })
                    .collect())
            },
        )
        .await
    }

    /// Rejects a pending request (any officer, the requester too: withdrawing it).
    pub async fn reject_request(&self, caller: &Identity, id: &str) -> Result<DualControlRequest> {
        let subject = format!("request {id}");
        self.audited(caller, Operation::Administer, &subject, async {
            self.admit_officer(caller, Operation::Administer)?;
            let actor = caller.to_string();
            let id = id.to_owned();
            self.store
                .write(move |tx| {
                    let mut r = pending(tx, &id)?;
                    r.state = RequestState::Rejected;
                    r.decided_by = Some(actor.clone());
                    r.decided_ms = Some(tx.now_ms());
                    tx.put(Table::Requests, &r.id, &r)?;
                    tx.audit(AuditEvent::ok(
                        actor,
                        "reject-request",
                        format!(
                            "{}: {}; requested by {}",
                            r.id, r.description, r.requested_by
                        ),
                    ));
                    Ok(r)
                })
                .await
        })
        .await
    }

    /// Approves a request from another officer: the act happens now, in the same write that
    /// marks the request approved; its record names the requester and the approver.
    pub async fn approve_request(&self, caller: &Identity, id: &str) -> Result<Approved> {
        let subject = format!("request {id}");
        self.audited(caller, Operation::Administer, &subject, async {
            self.admit_officer(caller, Operation::Administer)?;
            let actor = caller.to_string();
            let request: DualControlRequest = self
                .store
                .snapshot()?
                .get(Table::Requests, id)?
                .ok_or(Error::NotFound {
                    what: Resource::Request,
                })?;
            if request.requested_by == actor {
                return Err(Error::PermissionDenied {
                    reason: Refusal::RequesterCannotApprove,
                });
            }
            match request.state_at(now_ms()) {
                RequestState::Pending => {}
                RequestState::Expired if request.state == RequestState::Pending => {
                    self.expire(&request.id).await?;
                    return Err(Error::FailedPrecondition {
                        reason: Refusal::RequestExpired,
                    });
                }
                _ => {
                    return Err(Error::FailedPrecondition {
                        reason: Refusal::RequestNotPending,
                    });
                }
            }
            // The LMK held steady from the HSM's part to the write: shared for a new root or
            // transport key, exclusive for a rotation's prepare (after its turn below).
            let _tokens = match &request.act {
                Act::GenerateRoot { .. } | Act::IssueTransportKey { .. } => {
                    Some(self.token_turn().await)
                }
                _ => None,
            };
            // The HSM's part first (nothing stored); the write re-checks the request.
            let key = match &request.act {
                Act::GenerateRoot {
                    template_id,
                    key_name,
                } => Some(self.generated_root(template_id, key_name).await?),
                _ => None,
            };
            // One rotation at a time from its prepare in the HSM to the write that keeps it: a
            // second approval waits, then finds the first one prepared (before the HSM, whose
            // prepared LMK it would otherwise replace under the store's feet).
            let _rotation_turn = match &request.act {
                Act::RotateLmk { .. } => Some((
                    self.ceremony.lmk.lock().await,
                    self.ceremony.tokens.write().await,
                )),
                _ => None,
            };
            let rotation = match &request.act {
                Act::RotateLmk { threshold, shares } => Some(
                    self.prepare_rotation(&request.id, *threshold, *shares)
                        .await?,
                ),
                _ => None,
            };
            let mut issued = self.issue_in_hsm(&request.act).await?;
            let backup = self.backup_for(&request).await?;
            let restore_family = self.restore_family(&request.act)?;
            let id = request.id.clone();
            let ttl = self.ceremony.approval_ttl_ms.load(Ordering::Relaxed);
            let approved = self
                .store
                .write(move |tx| {
                    let mut r = pending(tx, &id)?;
                    if tx.now_ms() >= r.expires_ms {
                        return Err(Error::FailedPrecondition {
                            reason: Refusal::RequestExpired,
                        });
                    }
                    let both = format!("requested by {}, approved by {}", r.requested_by, actor);
                    let note = format!(" ({}: {both})", r.id);
                    let mut out = Approved {
                        request: r.clone(),
                        key: None,
                        officer: None,
                        ceremony: None,
                        transport: None,
                    };
                    let result = match (&r.act, key) {
                        (Act::GenerateRoot { .. }, Some(record)) => {
                            let k = put_new_version(tx, record, actor.clone(), &note)?;
                            let text =
                                format!("{} v{} KCV {} {}", k.id(), k.version, k.kcv_method, k.kcv);
                            out.key = Some(k);
                            text
                        }
                        (Act::RegisterOfficer { .. } | Act::RevokeOfficer { .. }, _) => {
                            let o = super::officer_registry::apply(tx, &r, &actor)?;
                            let done = if o.revoked_ms.is_some() {
                                "revoked"
                            } else {
                                "registered"
                            };
                            let text = format!("{done} {} ({})", o.identity, o.fingerprint);
                            out.officer = Some(o);
                            text
                        }
                        (Act::RetireKey { key_id }, _) => {
                            let mut k: KeyRecord =
                                tx.get(Table::Keys, key_id)?.ok_or(Error::NotFound {
                                    what: Resource::TemplateKey,
                                })?;
                            k.active = false;
                            tx.put(Table::Keys, key_id, &k)?;
                            let text = format!("retired {key_id} (KCV {} {})", k.kcv_method, k.kcv);
                            out.key = Some(k);
                            text
                        }
                        (
                            Act::ReplaceTransportKey {
                                kind,
                                name,
                                transport_family,
                                components,
                            },
                            _,
                        ) => {
                            let e: Endpoint = tx
                                .get(Table::Endpoints, &records::endpoint_id(*kind, name))?
                                .ok_or(Error::FailedPrecondition {
                                    reason: Refusal::CallerNotRegistered,
                                })?;
                            let target = CeremonyTarget::Endpoint {
                                kind: *kind,
                                name: name.clone(),
                                region: e.region.clone(),
                                transport_family: transport_family.clone(),
                            };
                            let description =
                                format!("new transport key of {} {name}", kind.name());
                            let family = transport_family.clone();
                            let c =
                                opened_by(tx, &r, target, description, family, *components, ttl)?;
                            let text = format!(
                                "component ceremony {} opened for {} custodians",
                                c.id, c.components
                            );
                            out.ceremony = Some(c);
                            text
                        }
                        (Act::UnblacklistCard { card_identifier }, _) => {
                            unblacklist_in(tx, card_identifier)?
                        }
                        (Act::RotateLmk { .. }, _) => match rotation {
                            Some(p) => super::lmk::keep_prepared(tx, p)?,
                            None => return Err(Error::Store),
                        },
                        (
                            Act::IssueTransportKey { .. }
                            | Act::RegisterEndpoint { .. }
                            | Act::RevokeEndpoint { .. },
                            _,
                        ) => {
                            let approval = (actor.clone(), note.as_str(), ttl);
                            super::transport::apply(tx, &r, issued.take(), approval, &mut out)?
                        }
                        (Act::BackupRoot { .. }, _) => {
                            super::backup::keep_backup(tx, backup.ok_or(Error::Store)?)?
                        }
                        (Act::RestoreRoot { root, threshold }, _) => {
                            let family = restore_family.ok_or(Error::Store)?;
                            let (text, c) =
                                super::backup::open_restore(tx, &r, root, *threshold, family, ttl)?;
                            out.ceremony = Some(c);
                            text
                        }
                        (Act::GenerateRoot { .. }, None) => return Err(Error::Store),
                    };
                    r.state = RequestState::Approved;
                    r.decided_by = Some(actor.clone());
                    r.decided_ms = Some(tx.now_ms());
                    r.result = Some(result.clone());
                    tx.put(Table::Requests, &r.id, &r)?;
                    tx.audit(AuditEvent::ok(
                        actor,
                        "approve-request",
                        format!("{}: {}; {both}; {result}", r.id, r.description),
                    ));
                    out.request = r;
                    Ok(out)
                })
                .await?;
            Ok(approved)
        })
        .await
    }

    /// Marks a pending request expired (it is dead).
    async fn expire(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.store
            .write(move |tx| {
                let mut r = pending(tx, &id)?;
                r.state = RequestState::Expired;
                tx.put(Table::Requests, &r.id, &r)?;
                tx.audit(AuditEvent::ok(
                    "the service",
                    "request-expired",
                    format!(
                        "{}: {}; requested by {}",
                        r.id, r.description, r.requested_by
                    ),
                ));
                Ok(())
            })
            .await
    }

    /// Validates an act when it is asked for; its description.
    fn check_act(&self, act: &Act) -> Result<String> {
        match act {
            Act::RegisterOfficer { .. } | Act::RevokeOfficer { .. } => self.check_officer_act(act),
            Act::GenerateRoot {
                template_id,
                key_name,
            } => {
                self.check_generated_root(template_id, key_name)?;
                Ok(format!(
                    "generate the provincial root {template_id}/{key_name}"
                ))
            }
            Act::ReplaceTransportKey {
                kind,
                name,
                transport_family,
                components,
            } => {
                let e: Endpoint = self
                    .store
                    .snapshot()?
                    .get(Table::Endpoints, &records::endpoint_id(*kind, name))?
                    .ok_or(Error::FailedPrecondition {
                        reason: Refusal::CallerNotRegistered,
                    })?;
                self.check_target(&CeremonyTarget::Endpoint {
                    kind: *kind,
                    name: name.clone(),
                    region: e.region.clone(),
                    transport_family: transport_family.clone(),
                })?;
                if !(2..=9).contains(components) {
                    return Err(Error::InvalidArgument {
                        field: "components",
                        reason: Refusal::ComponentCount,
                    });
                }
                Ok(format!(
                    "replace the transport key of {} {name} (KCV {} {}) from {components} components",
                    kind.name(),
                    e.transport_kcv_method,
                    e.transport_kcv
                ))
            }
            Act::UnblacklistCard { card_identifier } => {
                blacklisted(self.store.snapshot()?.get(Table::Cards, card_identifier)?)?;
                Ok(format!(
                    "take card {} off the blacklist (back to registered)",
                    super::mask_card_identifier(card_identifier)
                ))
            }
            Act::RotateLmk { threshold, shares } => self.check_rotate_lmk(*threshold, *shares),
            Act::IssueTransportKey { .. }
            | Act::RegisterEndpoint { .. }
            | Act::RevokeEndpoint { .. } => self.check_transport_act(act),
            Act::BackupRoot {
                key_id,
                threshold,
                shares,
            } => self.check_backup_root(key_id, *threshold, *shares),
            Act::RestoreRoot { root, threshold } => self.check_restore_act(root, *threshold),
            Act::RetireKey { key_id } => {
                let k: KeyRecord =
                    self.store
                        .snapshot()?
                        .get(Table::Keys, key_id)?
                        .ok_or(Error::NotFound {
                            what: Resource::TemplateKey,
                        })?;
                Ok(format!("retire {key_id} (KCV {} {})", k.kcv_method, k.kcv))
            }
        }
    }
}

/// The card, which must exist and be blacklisted.
fn blacklisted(card: Option<Card>) -> Result<Card> {
    let card = card.ok_or(Error::NotFound {
        what: Resource::Card,
    })?;
    if card.status != CardStatus::Blacklisted {
        return Err(Error::FailedPrecondition {
            reason: Refusal::CardNotBlacklisted,
        });
    }
    Ok(card)
}

/// Takes a blacklisted card back to `registered` in `tx`, unless another live card of the same
/// holder exists; the holder's index points at it again. What was done, for the record.
fn unblacklist_in(tx: &mut Tx<'_>, card_identifier: &str) -> Result<String> {
    let mut card = blacklisted(tx.get(Table::Cards, card_identifier)?)?;
    let ssn = card.personal.ssn_index.clone();
    if let Some(other) = tx.get::<String>(Table::SocialSecurityNumbers, &ssn)? {
        let live = other != card.card_identifier
            && tx
                .get::<Card>(Table::Cards, &other)?
                .is_some_and(|c| c.status != CardStatus::Blacklisted);
        if live {
            return Err(Error::AlreadyExists {
                what: Resource::LiveCardForSsn,
            });
        }
    }
    card.status = CardStatus::Registered;
    card.blacklist_reason = None;
    tx.put(Table::Cards, card_identifier, &card)?;
    tx.put(Table::SocialSecurityNumbers, &ssn, &card.card_identifier)?;
    Ok(format!(
        "card {} off the blacklist, registered (to be reviewed again)",
        super::mask_card_identifier(card_identifier)
    ))
}

/// A new open ceremony for `target`, opened by the approval of `r` (its requester starts it),
/// stored in `tx`.
pub(super) fn opened_by(
    tx: &mut Tx<'_>,
    r: &DualControlRequest,
    target: CeremonyTarget,
    description: String,
    family: String,
    components: u8,
    ttl: u64,
) -> Result<KeyCeremony> {
    let by = r.requested_by.clone();
    let mut c = new_ceremony(tx, target, description, family, components, by, ttl)?;
    c.approved_request = Some(r.id.clone());
    tx.put(Table::Ceremonies, &c.id, &c)?;
    Ok(c)
}

/// The request `id`, which must be pending (not decided, not expired at this commit).
fn pending(tx: &Tx<'_>, id: &str) -> Result<DualControlRequest> {
    let r: DualControlRequest = tx.get(Table::Requests, id)?.ok_or(Error::NotFound {
        what: Resource::Request,
    })?;
    if r.state != RequestState::Pending {
        return Err(Error::FailedPrecondition {
            reason: Refusal::RequestNotPending,
        });
    }
    Ok(r)
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
