//! LMK rotation as a dual-control ceremony.
//!
//! One officer asks for [`Act::RotateLmk`](super::Act), another approves it; the approval
//! re-wraps every token of the store ([`token_bearers`], the one list of them) under a new LMK
//! in the HSM (`prepare_lmk_rotation`, nothing current changes there) and keeps the prepared
//! rotation — the new LMK's KCV, its share set and every re-wrapped token beside the one it
//! replaces — in the store, in the approval's own audited write. Each custodian then takes one
//! share of the new LMK from their own certificate ([`Kms::take_lmk_share`]: one identity, one
//! share, audited with the identity and the share's check value, never the share). Once every
//! share is out, [`Kms::commit_lmk_rotation`] makes the new LMK current in the HSM and then
//! swaps the stored tokens (and the audit key the service holds) in one audited write.
//!
//! A restart between the two ([`Kms::reconcile_lmk_rotation`], at open) compares the HSM's
//! current LMK with the prepared one: on the old LMK the prepared rotation is dropped (the HSM
//! forgot its half), on the new one the swap is finished.

use hsm_api::{Hsm, IssuedShare, Kcv, KcvMethod, KeyToken};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::access::authz::Operation;
use crate::access::identity::Identity;
use crate::error::{Error, Refusal, Result};
use crate::state::audit::AuditEvent;
use crate::state::records::{Endpoint, KeyRecord};
use crate::state::store::{Snapshot, Table, Tx};

use super::{AUDIT_KEY, Kms};

/// Where the prepared rotation is kept in the `meta` table (`null` when none is).
pub(super) const PREPARED_ROTATION: &str = "lmk_rotation_prepared";

/// Where a token lives in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "table", content = "key")]
pub enum TokenPlace {
    /// `keys.token` (every key version, the vendor transport keys included).
    Key(String),
    /// `endpoints.transport_token` (stations' and PSAM lines' transport keys).
    Endpoint(String),
    /// A token kept as a string in `meta` (the audit key, the list-signing key).
    Meta(String),
}

/// The `meta` entries that hold a token.
const META_TOKENS: &[&str] = &[
    AUDIT_KEY,
    crate::registry::blacklist::SIGNING_KEY,
    crate::registry::personal::INDEX_KEY,
    crate::registry::personal::DATA_KEY,
];

/// A store view both a snapshot and a write can answer.
pub(super) trait Records {
    fn value<T: DeserializeOwned>(&self, table: Table, key: &str) -> Result<Option<T>>;
    fn values<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<(String, T)>>;
}

impl Records for Snapshot {
    fn value<T: DeserializeOwned>(&self, table: Table, key: &str) -> Result<Option<T>> {
        self.get(table, key)
    }
    fn values<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<(String, T)>> {
        self.scan(table, "")
    }
}

impl Records for Tx<'_> {
    fn value<T: DeserializeOwned>(&self, table: Table, key: &str) -> Result<Option<T>> {
        self.get(table, key)
    }
    fn values<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<(String, T)>> {
        self.scan(table, "")
    }
}

/// Every token of the store, where it lives: **the one list** of token-bearing records, so a
/// table that later holds a token is added here and nowhere else (PSAM, card, officer, request
/// and ceremony records hold none).
pub(super) fn token_bearers(r: &impl Records) -> Result<Vec<(TokenPlace, String)>> {
    let mut out = Vec::new();
    for (id, k) in r.values::<KeyRecord>(Table::Keys)? {
        out.push((TokenPlace::Key(id), k.token));
    }
    for (id, e) in r.values::<Endpoint>(Table::Endpoints)? {
        out.push((TokenPlace::Endpoint(id), e.transport_token));
    }
    for name in META_TOKENS {
        if let Some(t) = r.value::<String>(Table::Meta, name)? {
            out.push((TokenPlace::Meta((*name).to_owned()), t));
        }
    }
    Ok(out)
}

/// Refuses ([`Refusal::LmkRotationStale`]) unless the store's tokens `now` are exactly the
/// ones the rotation re-wrapped (a key written since would stay under the old LMK).
fn unchanged(now: &[(TokenPlace, String)], tokens: &[Rewrapped]) -> Result<()> {
    let same = now.len() == tokens.len()
        && now
            .iter()
            .zip(tokens)
            .all(|((place, t), r)| *place == r.place && *t == r.old);
    if same {
        Ok(())
    } else {
        Err(Error::FailedPrecondition {
            reason: Refusal::LmkRotationStale,
        })
    }
}

/// Writes `token` at `place` in `tx` (the record must exist).
fn put_token(tx: &mut Tx<'_>, place: &TokenPlace, token: &str) -> Result<()> {
    let missing = Error::StoreCorrupt("a re-wrapped token's record");
    match place {
        TokenPlace::Key(id) => {
            let mut k: KeyRecord = tx.get(Table::Keys, id)?.ok_or(missing)?;
            k.token = token.to_owned();
            tx.put(Table::Keys, id, &k)
        }
        TokenPlace::Endpoint(id) => {
            let mut e: Endpoint = tx.get(Table::Endpoints, id)?.ok_or(missing)?;
            e.transport_token = token.to_owned();
            tx.put(Table::Endpoints, id, &e)
        }
        TokenPlace::Meta(name) => tx.put(Table::Meta, name, &token.to_owned()),
    }
}

/// One re-wrapped token: the one it replaces, and the new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewrapped {
    pub place: TokenPlace,
    pub old: String,
    pub new: String,
}

/// A custodian who took a share of the new LMK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareTaken {
    pub identity: String,
    pub index: u8,
    pub check_value: String,
    pub at_ms: u64,
}

/// A rotation the HSM has prepared and the store keeps until its commit (`meta`,
/// `lmk_rotation_prepared`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedRotation {
    /// The approved request.
    pub request: String,
    pub old_lmk_kcv: String,
    pub new_lmk_kcv_method: String,
    pub new_lmk_kcv: String,
    /// The HSM's set of the new LMK's shares; `None` when the backend issues none.
    pub share_set: Option<String>,
    pub shares: u8,
    pub threshold: u8,
    pub taken: Vec<ShareTaken>,
    pub tokens: Vec<Rewrapped>,
    pub prepared_ms: u64,
}

impl PreparedRotation {
    fn new_kcv(&self) -> Result<Kcv> {
        let method = KcvMethod::from_name(&self.new_lmk_kcv_method)
            .ok_or(Error::StoreCorrupt("prepared rotation KCV method"))?;
        let value = hex::decode(&self.new_lmk_kcv)
            .map_err(|_| Error::StoreCorrupt("prepared rotation KCV"))?;
        Ok(Kcv::from_parts(method, value))
    }

    /// Shares still in the HSM.
    fn untaken(&self) -> u8 {
        match self.share_set {
            Some(_) => self
                .shares
                .saturating_sub(u8::try_from(self.taken.len()).unwrap_or(u8::MAX)),
            None => 0,
        }
    }

    /// One line for the ceremony record.
    pub fn summary(&self) -> String {
        format!(
            "new LMK KCV {} {} prepared ({} tokens re-wrapped; {}-of-{} shares, {} to take); \
             the old LMK (KCV {}) stays current until the commit",
            self.new_lmk_kcv_method,
            self.new_lmk_kcv,
            self.tokens.len(),
            self.threshold,
            self.shares,
            self.untaken(),
            self.old_lmk_kcv,
        )
    }
}

/// The prepared rotation kept in `r`, if any.
pub(super) fn prepared(r: &impl Records) -> Result<Option<PreparedRotation>> {
    Ok(
        r.value::<Option<PreparedRotation>>(Table::Meta, PREPARED_ROTATION)?
            .flatten(),
    )
}

/// Refuses a rotation while another is prepared.
/// Refuses ([`Refusal::ComponentCeremonyOpen`]) while a component ceremony is open with a
/// partial key in the HSM: a partial key is no token (the rotation cannot re-wrap it), so the
/// ceremony would fail at its next component under the new LMK.
fn no_partial_keys(r: &impl Records) -> Result<()> {
    let now = super::custodians::now_ms();
    let open = r
        .values::<super::KeyCeremony>(Table::Ceremonies)?
        .into_iter()
        .any(|(_, c)| {
            c.state == super::CeremonyState::Open && c.partial.is_some() && now < c.expires_ms
        });
    if open {
        Err(Error::FailedPrecondition {
            reason: Refusal::ComponentCeremonyOpen,
        })
    } else {
        Ok(())
    }
}

fn none_prepared(r: &impl Records) -> Result<()> {
    match prepared(r)? {
        Some(_) => Err(Error::FailedPrecondition {
            reason: Refusal::LmkRotationPrepared,
        }),
        None => Ok(()),
    }
}

fn not_prepared() -> Error {
    Error::FailedPrecondition {
        reason: Refusal::LmkRotationNotPrepared,
    }
}

/// A custodian's share of the new LMK, as handed out once.
#[derive(Debug)]
pub struct LmkShareTaken {
    /// Which share (1-based) of how many.
    pub index: u8,
    pub shares: u8,
    pub threshold: u8,
    /// The new LMK's KCV, to write down beside the share.
    pub new_lmk_kcv: String,
    /// The share and its check value.
    pub issued: IssuedShare,
}

impl<H: Hsm> Kms<H> {
    /// Checks an [`Act::RotateLmk`](super::Act) when it is asked for; its description.
    pub(super) fn check_rotate_lmk(&self, threshold: u8, shares: u8) -> Result<String> {
        if threshold < 2 || shares < threshold || shares > 9 {
            return Err(Error::InvalidArgument {
                field: "shares",
                reason: Refusal::ComponentCount,
            });
        }
        let snap = self.store.snapshot()?;
        none_prepared(&snap)?;
        no_partial_keys(&snap)?;
        Ok(format!(
            "rotate the LMK: re-wrap every stored token ({} now) under a new LMK split \
             {threshold}-of-{shares}",
            token_bearers(&snap)?.len()
        ))
    }

    /// The HSM's half of an approved rotation (nothing stored, nothing current changes): every
    /// stored token re-wrapped under a new LMK.
    pub(super) async fn prepare_rotation(
        &self,
        request: &str,
        threshold: u8,
        shares: u8,
    ) -> Result<PreparedRotation> {
        let snap = self.store.snapshot()?;
        none_prepared(&snap)?;
        no_partial_keys(&snap)?;
        let bearers = token_bearers(&snap)?;
        let old_lmk_kcv = self
            .hsm
            .status()
            .await?
            .lmk_kcv
            .map(|k| k.to_hex())
            .unwrap_or_default();
        // The first chunk with the prepare, the rest re-wrapped under the prepared LMK, at
        // most one HSM batch per call.
        let mut chunks = bearers.chunks(*hsm_api::BATCH_ITEMS.end()).map(|c| {
            c.iter()
                .map(|(_, t)| KeyToken::from_stored(t.clone()))
                .collect()
        });
        let mut rotation = self
            .hsm
            .prepare_lmk_rotation(chunks.next().unwrap_or_default(), threshold, shares)
            .await?;
        for chunk in chunks {
            let more = self
                .hsm
                .rewrap_for_rotation(&rotation.lmk_kcv, chunk)
                .await?;
            rotation.tokens.extend(more);
        }
        if rotation.tokens.len() != bearers.len() {
            return Err(Error::Hsm(hsm_api::Error::Protocol));
        }
        let parts = rotation.parts;
        Ok(PreparedRotation {
            request: request.to_owned(),
            old_lmk_kcv,
            new_lmk_kcv_method: rotation.lmk_kcv.method().name().to_owned(),
            new_lmk_kcv: rotation.lmk_kcv.to_hex(),
            share_set: parts.as_ref().map(|p| p.set.clone()),
            shares: parts.as_ref().map_or(shares, |p| p.count),
            threshold: parts.as_ref().map_or(threshold, |p| p.threshold),
            taken: Vec::new(),
            tokens: bearers
                .into_iter()
                .zip(rotation.tokens)
                .map(|((place, old), new)| Rewrapped {
                    place,
                    old,
                    new: new.as_str().to_owned(),
                })
                .collect(),
            prepared_ms: 0,
        })
    }
}

/// Inside the approval's write: keeps the prepared rotation (refused if another is kept or a
/// token changed since the HSM re-wrapped them). The text of the ceremony record.
pub(super) fn keep_prepared(tx: &mut Tx<'_>, mut p: PreparedRotation) -> Result<String> {
    none_prepared(tx)?;
    no_partial_keys(tx)?;
    unchanged(&token_bearers(tx)?, &p.tokens)?;
    p.prepared_ms = tx.now_ms();
    let text = p.summary();
    tx.put(Table::Meta, PREPARED_ROTATION, &Some(p))?;
    Ok(text)
}

impl<H: Hsm> Kms<H> {
    /// The prepared rotation, if any (for status screens).
    pub fn prepared_lmk_rotation(&self) -> Result<Option<PreparedRotation>> {
        prepared(&self.store.snapshot()?)
    }

    /// Hands the caller — a registered officer who has not taken one — the next share of the
    /// prepared LMK, once; audited with the identity and the share's check value.
    pub async fn take_lmk_share(&self, caller: &Identity) -> Result<LmkShareTaken> {
        self.audited(caller, Operation::Administer, "LMK rotation", async {
            self.admit_officer(caller, Operation::Administer)?;
            let actor = caller.to_string();
            let _one_at_a_time = self.ceremony.lmk.lock().await;
            let p = prepared(&self.store.snapshot()?)?.ok_or_else(not_prepared)?;
            if p.taken.iter().any(|t| t.identity == actor) {
                return Err(Error::PermissionDenied {
                    reason: Refusal::SameCustodianTwice,
                });
            }
            let (Some(set), true) = (p.share_set.clone(), p.untaken() > 0) else {
                return Err(Error::Hsm(hsm_api::Error::PartNotAvailable));
            };
            let index = u8::try_from(p.taken.len() + 1).unwrap_or(u8::MAX);
            let issued = self.hsm.take_secret_part(&set, index).await?;
            let check_value = issued.check_value.clone();
            let kcv = p.new_lmk_kcv.clone();
            let taker = actor.clone();
            let p = self
                .store
                .write(move |tx| {
                    let mut p = prepared(tx)?.ok_or_else(not_prepared)?;
                    p.taken.push(ShareTaken {
                        identity: taker.clone(),
                        index,
                        check_value: check_value.clone(),
                        at_ms: tx.now_ms(),
                    });
                    tx.put(Table::Meta, PREPARED_ROTATION, &Some(p.clone()))?;
                    tx.audit(AuditEvent::ok(
                        taker,
                        "take-lmk-share",
                        format!(
                            "share {index} of {} of the new LMK (KCV {kcv}) taken; share check \
                             value {check_value}",
                            p.shares
                        ),
                    ));
                    Ok(p)
                })
                .await?;
            Ok(LmkShareTaken {
                index,
                shares: p.shares,
                threshold: p.threshold,
                new_lmk_kcv: p.new_lmk_kcv,
                issued,
            })
        })
        .await
    }

    /// Makes the prepared LMK current: once every share is taken, the HSM commits, then the
    /// stored tokens and the audit key the service holds are swapped in one audited write.
    pub async fn commit_lmk_rotation(&self, caller: &Identity) -> Result<PreparedRotation> {
        self.audited(caller, Operation::Administer, "LMK rotation", async {
            self.admit_officer(caller, Operation::Administer)?;
            let _one_at_a_time = self.ceremony.lmk.lock().await;
            // No token or partial key is made from the check below until the swap: one made
            // before it is in the check (stale), one after it is made under the new LMK.
            let _no_new_tokens = self.ceremony.tokens.write().await;
            let snap = self.store.snapshot()?;
            let p = prepared(&snap)?.ok_or_else(not_prepared)?;
            if p.untaken() > 0 {
                return Err(Error::Hsm(hsm_api::Error::PartNotAvailable));
            }
            unchanged(&token_bearers(&snap)?, &p.tokens)?;
            // A ceremony begun since the prepare holds a partial key under the old LMK.
            no_partial_keys(&snap)?;
            self.hsm.commit_lmk_rotation(&p.new_kcv()?).await?;
            self.finish_swap(caller.to_string(), "commit-lmk-rotation")
                .await
        })
        .await
    }

    /// A turn to have the HSM make a token (or a partial key) and store it: hold the guard
    /// from before the HSM call to after the write. It waits while an LMK rotation views the
    /// stored tokens for its prepare or commits ([`super::custodians::Ceremonies::tokens`]).
    pub(super) async fn token_turn(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.ceremony.tokens.read().await
    }

    /// After the HSM's commit: the stored tokens and the held audit key become the new ones,
    /// in one write with its record.
    async fn finish_swap(&self, actor: String, action: &'static str) -> Result<PreparedRotation> {
        let p = prepared(&self.store.snapshot()?)?.ok_or_else(not_prepared)?;
        // The audit key first, so that this very commit is sealed under the new LMK.
        if let Some(r) = p
            .tokens
            .iter()
            .find(|r| r.place == TokenPlace::Meta(AUDIT_KEY.to_owned()))
        {
            self.sealer
                .set_key(Some(KeyToken::from_stored(r.new.clone())));
        }
        self.store
            .write(move |tx| {
                let p = prepared(tx)?.ok_or_else(not_prepared)?;
                for r in &p.tokens {
                    put_token(tx, &r.place, &r.new)?;
                }
                tx.put(Table::Meta, PREPARED_ROTATION, &None::<PreparedRotation>)?;
                let holders: Vec<&str> = p.taken.iter().map(|t| t.identity.as_str()).collect();
                tx.audit(AuditEvent::ok(
                    actor,
                    action,
                    format!(
                        "{}: the LMK is now KCV {} {} (was {}); {} stored tokens swapped; \
                         shares held by {}",
                        p.request,
                        p.new_lmk_kcv_method,
                        p.new_lmk_kcv,
                        p.old_lmk_kcv,
                        p.tokens.len(),
                        holders.join(", ")
                    ),
                ));
                Ok(p)
            })
            .await
    }

    /// At open: a rotation kept in the store against the HSM's current LMK. On the old LMK
    /// the HSM has forgotten its half (a restart, a seal): the prepared rotation is dropped,
    /// audited. On the new LMK the commit happened before the swap: the swap is finished. An
    /// HSM that cannot say (sealed) leaves it for the next open.
    pub(super) async fn reconcile_lmk_rotation(&self) -> Result<()> {
        let Some(p) = prepared(&self.store.snapshot()?)? else {
            return Ok(());
        };
        let current = match self.hsm.status().await {
            Ok(s) => s.lmk_kcv.map(|k| k.to_hex()),
            Err(_) => None,
        };
        match current {
            Some(kcv) if kcv == p.new_lmk_kcv => {
                self.finish_swap("the service".to_owned(), "lmk-rotation-finished")
                    .await?;
            }
            Some(kcv) if kcv == p.old_lmk_kcv => {
                self.store
                    .write(move |tx| {
                        let p = prepared(tx)?.ok_or_else(not_prepared)?;
                        tx.put(Table::Meta, PREPARED_ROTATION, &None::<PreparedRotation>)?;
                        tx.audit(AuditEvent::ok(
                            "the service",
                            "lmk-rotation-dropped",
                            format!(
                                "{}: the HSM is on the old LMK (KCV {}); the prepared rotation \
                                 to KCV {} is dropped (shares taken: {})",
                                p.request,
                                p.old_lmk_kcv,
                                p.new_lmk_kcv,
                                p.taken.len()
                            ),
                        ));
                        Ok(())
                    })
                    .await?;
            }
            _ => {
                tracing::warn!("a prepared LMK rotation waits for an operational HSM");
            }
        }
        Ok(())
    }
}
