//! Stations' and PSAM lines' transport keys issued by the HSM, under dual control.
//!
//! One officer asks for [`Act::IssueTransportKey`](super::Act), another approves it. The
//! approval has the HSM **generate** the new key-block protection key and stores the endpoint
//! — registered if new, its transport token replaced if not — with the issue's record, in one
//! audited write. The key reaches the station in one of two ways ([`TransportDelivery`]):
//!
//! - **components**: the HSM keeps `n` components (their XOR is the key) for hand-out; each of
//!   the station's custodians takes one from their own certificate
//!   ([`Kms::take_transport_component`]: one identity, one component, audited with the
//!   component's KCV, never the component) and loads it into the station's own HSM;
//! - **TR-31 under the current key**: the HSM hands the new key out at birth as a TR-31 block
//!   under the endpoint's current transport key (the narrow exception of SECURITY.md). The
//!   block is no secret to anyone but the holder of the current key: it is returned to the
//!   approver and kept in the issue's record ([`Kms::transport_issue`]), for the station's
//!   operator to load.
//!
//! [`Act::RevokeEndpoint`](super::Act) deletes a station's or line's record and transport key
//! (dual control as well): it gets no key from then on.
//!
//! A station's first transport key from components its custodians bring themselves is
//! [`Act::RegisterEndpoint`](super::Act): its approval opens the component ceremony that
//! `StartKeyCeremony` no longer opens alone.

use hsm_api::{Algorithm, Hsm, IssuedShare, KeyToken};
use serde::{Deserialize, Serialize};

use crate::access::authz::Operation;
use crate::access::identity::Identity;
use crate::error::{Error, Refusal, Result};
use crate::state::audit::AuditEvent;
use crate::state::records::{self, Endpoint, EndpointKind};
use crate::state::store::{Snapshot, Table, Tx};

use super::components::{CeremonyTarget, KeyCeremony, new_ceremony};
use super::custodians::{Act, Approved, DualControlRequest};
use super::{Kms, kcv_hex};

/// Where an issue's record is kept in the `meta` table: this prefix and the request's id.
const ISSUE_PREFIX: &str = "transport-issue/";

/// How an issued transport key reaches its station or line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "delivery")]
pub enum TransportDelivery {
    /// As `components` (2..=9) components, one for each of the station's custodians.
    Components { components: u8 },
    /// As a TR-31 block under the endpoint's current transport key.
    Tr31UnderCurrent,
}

/// A custodian who took a component of an issued transport key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentTaken {
    pub identity: String,
    pub index: u8,
    /// The component's KCV (hex).
    pub kcv: String,
    pub at_ms: u64,
}

/// A transport key the HSM issued (table `meta`, `transport-issue/<request>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportIssue {
    /// The approved request.
    pub request: String,
    pub kind: EndpointKind,
    pub name: String,
    pub region: String,
    pub algorithm: String,
    pub kcv_method: String,
    pub kcv: String,
    pub delivery: TransportDelivery,
    /// The HSM's set of the components (components only).
    pub part_set: Option<String>,
    /// Components made (0 for TR-31).
    pub components: u8,
    pub taken: Vec<ComponentTaken>,
    /// The TR-31 block under the previous key (TR-31 only), for the station's operator.
    pub block: Option<String>,
    /// The KCV of the key the block is under (TR-31 only).
    pub under_kcv: Option<String>,
    pub issued_ms: u64,
}

impl TransportIssue {
    /// One line for the ceremony record (KCVs only).
    pub fn summary(&self) -> String {
        let how = match self.delivery {
            TransportDelivery::Components { components } => format!(
                "as {components} components for the {}'s custodians ({} taken)",
                self.kind.name(),
                self.taken.len()
            ),
            TransportDelivery::Tr31UnderCurrent => format!(
                "as a TR-31 block under its previous key (KCV {})",
                self.under_kcv.as_deref().unwrap_or("")
            ),
        };
        format!(
            "transport key of {} {} in {} issued by the HSM: {} KCV {} {}, {how}",
            self.kind.name(),
            self.name,
            self.region,
            self.algorithm,
            self.kcv_method,
            self.kcv
        )
    }
}

/// What the HSM made at an approval, before the write that keeps it.
#[derive(Debug)]
pub(super) struct Issued {
    key: hsm_api::WrappedKey,
    algorithm: Algorithm,
    part_set: Option<String>,
    components: u8,
    block: Option<String>,
    /// The token the block is under, and its KCV (TR-31 only).
    under: Option<(String, String)>,
}

/// A custodian's component, as handed out once.
#[derive(Debug)]
pub struct TransportComponentTaken {
    pub index: u8,
    pub components: u8,
    /// The issued key's record.
    pub issue: TransportIssue,
    /// The component (hex text, as a ceremony's component input takes it) and its KCV.
    pub issued: IssuedShare,
}

/// The algorithm a new transport key of `family` is generated in when it is handed out as
/// components: 2-key TDES (TR-31 version B) or AES-128 (version D), the station keys' own.
fn components_algorithm(family: &str) -> Result<Algorithm> {
    match family {
        "tdes" => Ok(Algorithm::Tdes2),
        "aes" => Ok(Algorithm::Aes128),
        _ => Err(Error::InvalidArgument {
            field: "transport_algorithm",
            reason: Refusal::TransportAlgorithm,
        }),
    }
}

fn family(alg: Algorithm) -> &'static str {
    super::components::family_of(alg)
}

fn issue_key(request: &str) -> String {
    format!("{ISSUE_PREFIX}{request}")
}

/// The endpoint `kind`/`name` as stored, if any; refuses one registered in another region.
fn registered(endpoint: Option<Endpoint>, region: &str) -> Result<Option<Endpoint>> {
    match endpoint {
        Some(e) if e.region != region => Err(Error::InvalidArgument {
            field: "region",
            reason: Refusal::EndpointRegionDiffers,
        }),
        other => Ok(other),
    }
}

fn endpoint_in(snap: &Snapshot, kind: EndpointKind, name: &str) -> Result<Option<Endpoint>> {
    snap.get(Table::Endpoints, &records::endpoint_id(kind, name))
}

impl<H: Hsm> Kms<H> {
    /// Checks an [`Act::IssueTransportKey`] or [`Act::RegisterEndpoint`] when it is asked for;
    /// its description.
    pub(super) fn check_transport_act(&self, act: &Act) -> Result<String> {
        match act {
            Act::IssueTransportKey {
                kind,
                name,
                region,
                transport_family,
                delivery,
            } => self.check_issue_transport_key(*kind, name, region, transport_family, *delivery),
            Act::RegisterEndpoint {
                kind,
                name,
                region,
                transport_family,
                components,
            } => self.check_register_endpoint(
                CeremonyTarget::Endpoint {
                    kind: *kind,
                    name: name.clone(),
                    region: region.clone(),
                    transport_family: transport_family.clone(),
                },
                *components,
            ),
            Act::RevokeEndpoint { kind, name } => {
                let e = endpoint_in(&self.store.snapshot()?, *kind, name)?.ok_or(
                    Error::FailedPrecondition {
                        reason: Refusal::CallerNotRegistered,
                    },
                )?;
                Ok(format!(
                    "revoke {} {name} in {} (transport key KCV {} {}): it gets no key from then on",
                    kind.name(),
                    e.region,
                    e.transport_kcv_method,
                    e.transport_kcv
                ))
            }
            _ => Err(Error::Store),
        }
    }

    /// Checks an [`Act::IssueTransportKey`] when it is asked for; its description.
    fn check_issue_transport_key(
        &self,
        kind: EndpointKind,
        name: &str,
        region: &str,
        transport_family: &str,
        delivery: TransportDelivery,
    ) -> Result<String> {
        self.check_target(&CeremonyTarget::Endpoint {
            kind,
            name: name.to_owned(),
            region: region.to_owned(),
            transport_family: transport_family.to_owned(),
        })?;
        let current = registered(endpoint_in(&self.store.snapshot()?, kind, name)?, region)?;
        let what = match (&current, delivery) {
            (_, TransportDelivery::Components { components }) => {
                if !(2..=9).contains(&components) {
                    return Err(Error::InvalidArgument {
                        field: "components",
                        reason: Refusal::ComponentCount,
                    });
                }
                format!("as {components} components for its custodians")
            }
            (None, TransportDelivery::Tr31UnderCurrent) => {
                return Err(Error::FailedPrecondition {
                    reason: Refusal::CallerNotRegistered,
                });
            }
            (Some(e), TransportDelivery::Tr31UnderCurrent) => {
                same_family(e, transport_family)?;
                format!(
                    "as a TR-31 block under its current key (KCV {} {})",
                    e.transport_kcv_method, e.transport_kcv
                )
            }
        };
        Ok(format!(
            "{} a {transport_family} transport key of {} {name} in {region} generated in the \
             HSM, {what}",
            if current.is_some() {
                "replace by"
            } else {
                "register with"
            },
            kind.name(),
        ))
    }

    /// The HSM's half of an approved [`Act::IssueTransportKey`] (nothing stored).
    pub(super) async fn issue_in_hsm(&self, act: &Act) -> Result<Option<Issued>> {
        let Act::IssueTransportKey {
            kind,
            name,
            region,
            transport_family,
            delivery,
        } = act
        else {
            return Ok(None);
        };
        let current = registered(endpoint_in(&self.store.snapshot()?, *kind, name)?, region)?;
        Ok(Some(match delivery {
            TransportDelivery::Components { components } => {
                let alg = components_algorithm(transport_family)?;
                let issued = self
                    .hsm
                    .issue_transport_key_components(alg, *components)
                    .await?;
                Issued {
                    key: issued.key,
                    algorithm: alg,
                    part_set: Some(issued.parts.set),
                    components: issued.parts.count,
                    block: None,
                    under: None,
                }
            }
            TransportDelivery::Tr31UnderCurrent => {
                let e = current.ok_or(Error::FailedPrecondition {
                    reason: Refusal::CallerNotRegistered,
                })?;
                same_family(&e, transport_family)?;
                // The same algorithm as the current key: a block is never under a weaker key.
                let alg = Algorithm::from_name(&e.transport_algorithm)
                    .map_err(|_| Error::StoreCorrupt("an endpoint's transport algorithm"))?;
                let issued = self
                    .hsm
                    .issue_transport_key_under(
                        &KeyToken::from_stored(e.transport_token.clone()),
                        alg,
                    )
                    .await?;
                Issued {
                    key: issued.key,
                    algorithm: alg,
                    part_set: None,
                    components: 0,
                    block: Some(issued.block),
                    under: Some((e.transport_token, e.transport_kcv)),
                }
            }
        }))
    }

    /// An issue's record, by its request (officers: the ceremony record, the TR-31 block).
    pub async fn transport_issue(
        &self,
        caller: &Identity,
        request: &str,
    ) -> Result<TransportIssue> {
        let subject = format!("transport key of request {request}");
        self.audited(caller, Operation::Administer, &subject, async {
            self.admit_officer(caller, Operation::Administer)?;
            issue_of(&self.store.snapshot()?, request)
        })
        .await
    }

    /// Hands the caller — a registered officer, one of the station's custodians, who has not
    /// taken one — the next component of the transport key `request` issued, once; audited
    /// with the identity and the component's KCV.
    pub async fn take_transport_component(
        &self,
        caller: &Identity,
        request: &str,
    ) -> Result<TransportComponentTaken> {
        let subject = format!("transport key of request {request}");
        self.audited(caller, Operation::Administer, &subject, async {
            self.admit_officer(caller, Operation::Administer)?;
            let actor = caller.to_string();
            // One hand-out at a time (shared with the LMK shares' hand-out).
            let _one_at_a_time = self.ceremony.lmk.lock().await;
            let issue = issue_of(&self.store.snapshot()?, request)?;
            let Some(set) = issue.part_set.clone() else {
                return Err(Error::FailedPrecondition {
                    reason: Refusal::TransportComponentsNotIssued,
                });
            };
            if issue.taken.iter().any(|t| t.identity == actor) {
                return Err(Error::PermissionDenied {
                    reason: Refusal::SameCustodianTwice,
                });
            }
            if issue.taken.len() >= usize::from(issue.components) {
                return Err(Error::Hsm(hsm_api::Error::PartNotAvailable));
            }
            let index = u8::try_from(issue.taken.len() + 1).unwrap_or(u8::MAX);
            let issued = self.hsm.take_secret_part(&set, index).await?;
            let kcv = issued.check_value.clone();
            let request = request.to_owned();
            let issue = self
                .store
                .write(move |tx| {
                    let mut issue = issue_of(tx, &request)?;
                    issue.taken.push(ComponentTaken {
                        identity: actor.clone(),
                        index,
                        kcv: kcv.clone(),
                        at_ms: tx.now_ms(),
                    });
                    tx.put(Table::Meta, &issue_key(&request), &issue)?;
                    tx.audit(AuditEvent::ok(
                        actor,
                        "take-transport-component",
                        format!(
                            "{request}: component {index} of {} of the transport key of {} {} \
                             (KCV {} {}) taken; component KCV {kcv}",
                            issue.components,
                            issue.kind.name(),
                            issue.name,
                            issue.kcv_method,
                            issue.kcv
                        ),
                    ));
                    Ok(issue)
                })
                .await?;
            Ok(TransportComponentTaken {
                index,
                components: issue.components,
                issue,
                issued,
            })
        })
        .await
    }
}

/// The issued key's record in `r`.
fn issue_of(r: &impl super::lmk::Records, request: &str) -> Result<TransportIssue> {
    r.value::<TransportIssue>(Table::Meta, &issue_key(request))?
        .ok_or(Error::FailedPrecondition {
            reason: Refusal::TransportComponentsNotIssued,
        })
}

/// Refuses a TR-31 delivery of another family than the endpoint's current key.
fn same_family(e: &Endpoint, transport_family: &str) -> Result<()> {
    let current = Algorithm::from_name(&e.transport_algorithm)
        .map_err(|_| Error::StoreCorrupt("an endpoint's transport algorithm"))?;
    if family(current) == transport_family {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            field: "transport_algorithm",
            reason: Refusal::TransportAlgorithm,
        })
    }
}

/// Inside the approval's write of an [`Act::IssueTransportKey`] (what the HSM `issued`) or an
/// [`Act::RegisterEndpoint`]; `approval` is the approver, the record's note and the time limit
/// of a ceremony. The text of the ceremony record; what was made goes into `out`.
pub(super) fn apply(
    tx: &mut Tx<'_>,
    r: &DualControlRequest,
    issued: Option<Issued>,
    approval: (String, &str, u64),
    out: &mut Approved,
) -> Result<String> {
    let (actor, note, ttl) = approval;
    match &r.act {
        Act::IssueTransportKey { .. } => {
            let (text, issue) = keep_issued(tx, r, issued.ok_or(Error::Store)?, actor, note)?;
            out.transport = Some(issue);
            Ok(text)
        }
        Act::RevokeEndpoint { kind, name } => {
            let id = records::endpoint_id(*kind, name);
            let e: Endpoint = tx
                .get(Table::Endpoints, &id)?
                .ok_or(Error::FailedPrecondition {
                    reason: Refusal::CallerNotRegistered,
                })?;
            tx.delete(Table::Endpoints, &id)?;
            Ok(format!(
                "revoked {id} in {} (its transport key KCV {} {} deleted)",
                e.region, e.transport_kcv_method, e.transport_kcv
            ))
        }
        _ => {
            let (text, c) = open_registration(tx, r, ttl)?;
            out.ceremony = Some(c);
            Ok(text)
        }
    }
}

/// Inside the approval's write of an [`Act::IssueTransportKey`]: the endpoint registered (or
/// its token replaced) and the issue's record kept. The text of the ceremony record.
fn keep_issued(
    tx: &mut Tx<'_>,
    r: &DualControlRequest,
    issued: Issued,
    actor: String,
    note: &str,
) -> Result<(String, TransportIssue)> {
    let Act::IssueTransportKey {
        kind,
        name,
        region,
        delivery,
        ..
    } = &r.act
    else {
        return Err(Error::Store);
    };
    let id = records::endpoint_id(*kind, name);
    let current = registered(tx.get::<Endpoint>(Table::Endpoints, &id)?, region)?;
    // Delivered under the current key: that key must still be the stored one.
    if let Some((under, _)) = &issued.under
        && current.as_ref().map(|e| &e.transport_token) != Some(under)
    {
        return Err(Error::FailedPrecondition {
            reason: Refusal::TransportKeyChanged,
        });
    }
    let (method, kcv) = kcv_hex(&issued.key.kcv);
    let endpoint = Endpoint {
        kind: *kind,
        name: name.clone(),
        region: region.clone(),
        transport_token: issued.key.token.as_str().to_owned(),
        transport_algorithm: issued.algorithm.name().to_owned(),
        transport_kcv: kcv.clone(),
        transport_kcv_method: method.clone(),
        created_ms: tx.now_ms(),
    };
    super::officers::put_endpoint(tx, endpoint, actor, note)?;
    let issue = TransportIssue {
        request: r.id.clone(),
        kind: *kind,
        name: name.clone(),
        region: region.clone(),
        algorithm: issued.algorithm.name().to_owned(),
        kcv_method: method,
        kcv,
        delivery: *delivery,
        part_set: issued.part_set,
        components: issued.components,
        taken: Vec::new(),
        block: issued.block,
        under_kcv: issued.under.map(|(_, kcv)| kcv),
        issued_ms: tx.now_ms(),
    };
    tx.put(Table::Meta, &issue_key(&r.id), &issue)?;
    Ok((issue.summary(), issue))
}

/// Inside the approval's write of an [`Act::RegisterEndpoint`]: the component ceremony of the
/// new station's or line's transport key, opened for its custodians.
fn open_registration(
    tx: &mut Tx<'_>,
    r: &DualControlRequest,
    ttl: u64,
) -> Result<(String, KeyCeremony)> {
    let Act::RegisterEndpoint {
        kind,
        name,
        region,
        transport_family,
        components,
    } = &r.act
    else {
        return Err(Error::Store);
    };
    if tx
        .get::<Endpoint>(Table::Endpoints, &records::endpoint_id(*kind, name))?
        .is_some()
    {
        return Err(Error::FailedPrecondition {
            reason: Refusal::EndpointRegistered,
        });
    }
    let target = CeremonyTarget::Endpoint {
        kind: *kind,
        name: name.clone(),
        region: region.clone(),
        transport_family: transport_family.clone(),
    };
    let mut c = new_ceremony(
        tx,
        target,
        format!("transport key of {} {name} in {region}", kind.name()),
        transport_family.clone(),
        *components,
        r.requested_by.clone(),
        ttl,
    )?;
    c.approved_request = Some(r.id.clone());
    tx.put(Table::Ceremonies, &c.id, &c)?;
    Ok((
        format!(
            "component ceremony {} opened for {} custodians",
            c.id, c.components
        ),
        c,
    ))
}

impl<H: Hsm> Kms<H> {
    /// Checks an [`Act::RegisterEndpoint`] when it is asked for; its description.
    fn check_register_endpoint(&self, target: CeremonyTarget, components: u8) -> Result<String> {
        let description = self.check_target(&target)?;
        let CeremonyTarget::Endpoint { kind, name, .. } = &target else {
            return Err(Error::Store);
        };
        if endpoint_in(&self.store.snapshot()?, *kind, name)?.is_some() {
            return Err(Error::FailedPrecondition {
                reason: Refusal::EndpointRegistered,
            });
        }
        if !(2..=9).contains(&components) {
            return Err(Error::InvalidArgument {
                field: "components",
                reason: Refusal::ComponentCount,
            });
        }
        Ok(format!(
            "register the {description} from {components} components its custodians bring"
        ))
    }
}
