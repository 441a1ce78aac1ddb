//! Root backup and restore (DOMAIN.md §12's "key card" practice): a national or provincial root
//! escrowed as m-of-n shares, one per custodian, and restored from them — into this store, or a
//! fresh one on another HSM under another LMK, which is the point of escrow.
//!
//! **Backup.** One officer asks for [`Act::BackupRoot`](super::Act) (a key version, the split
//! m-of-n, 2 ≤ m ≤ n ≤ 16), another approves it; the approval asks the HSM to split the root
//! ([`Hsm::backup_key`]: the shares stay in the HSM, each until taken once) and keeps the
//! [`RootBackup`] — the backup's name, the key's KCV, the share set — in the `meta` table in the
//! approval's own audited write. Each custodian then takes one share from their own certificate
//! ([`Kms::take_backup_share`]: one identity, one share, audited with the identity, the share's
//! check value and the key's KCV, never the share), prints it and puts it in escrow. A seal or a
//! restart of the HSM drops the shares not yet taken: that backup is then incomplete (its record
//! says which were taken) and a new one is asked for.
//!
//! **Restore.** One officer asks for [`Act::RestoreRoot`](super::Act) naming the key (template,
//! key, level, version), its KCV, the backup's name and the threshold, as the backup's ceremony
//! record gives them; another approves, which opens a ceremony of target
//! [`CeremonyTarget::Restore`]. Each custodian submits one share from their own certificate
//! ([`Kms::submit_backup_share`]); the HSM checks it there ([`Hsm::restore_share`]: its check
//! value, the backup, spec and KCV the ceremony names, not a repeat) and keeps the shares so far
//! in a partial restore under its LMK, stored with the ceremony, so an open restore survives a
//! restart. A refused share is refused alone: the ceremony stands as it was. At the threshold the
//! HSM rebuilds the root and checks its KCV; the key record is written with the version and KCV
//! of the original in one audited write ([`put_restored`]).
//!
//! **A key version the store already holds** is never restored over ([`Refusal::RestoreKeyExists`],
//! at the request and again at the write): a matching one needs no restore, a different one
//! must not be replaced by a ceremony. The restored version is active unless the store holds a
//! later version of the key.

use hsm_api::{
    Algorithm, Hsm, IssuedShare, Kcv, KcvMethod, KeyToken, LmkShare, Restoration, Restored,
    WrappedKey,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::access::authz::Operation;
use crate::access::identity::Identity;
use crate::error::{Error, Refusal, Resource, Result};
use crate::state::audit::AuditEvent;
use crate::state::records::{self, KeyRecord, Level};
use crate::state::store::{Table, Tx};

use super::components::{CeremonyTarget, KeyCeremony, Submitted, check_submission, family_of};
use super::custodians::{Act, DualControlRequest, opened_by};
use super::lmk::ShareTaken;
use super::officers::new_key_record;
use super::parts::{BACKUP_SHARES, Part, PartStep};
use super::{Kms, kcv_hex};

/// Where a backup is kept in `meta`: this prefix and the id of the request that made it.
const BACKUP_PREFIX: &str = "root_backup/";
/// The most shares (and the highest threshold) of a backup: the HSM's Shamir split's.
const MAX_SHARES: u8 = 16;

/// The root a restore rebuilds, as the backup's ceremony record names it (in
/// [`Act::RestoreRoot`](super::Act) and [`CeremonyTarget::Restore`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootToRestore {
    pub template_id: String,
    pub key_name: String,
    pub level: Level,
    /// The version backed up: the restored record carries it.
    pub version: u32,
    /// The backed-up key's KCV (hex, its algorithm's default method).
    pub kcv: String,
    /// The backup's name, as every share carries it.
    pub backup: String,
    /// The original national root had the Ministry's permission for PSAM use.
    #[serde(default)]
    pub psam_permitted: bool,
}

/// A root backup as the store keeps it (`meta`, `root_backup/<request>`): never a share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootBackup {
    /// The approved request that made it (names it in [`Kms::take_backup_share`]).
    pub request: String,
    /// The backup's name as the HSM wrote it in every share.
    pub backup: String,
    /// The key version backed up (`template/key/level/region/version`) and its parts.
    pub key_id: String,
    pub template_id: String,
    pub key_name: String,
    pub level: Level,
    pub region: String,
    pub version: u32,
    pub algorithm: String,
    pub kcv_method: String,
    pub kcv: String,
    /// The HSM's set of the shares.
    pub share_set: String,
    pub shares: u8,
    pub threshold: u8,
    pub taken: Vec<ShareTaken>,
    pub made_ms: u64,
    /// The key is a national root with the Ministry's permission for PSAM use: its restore
    /// says so again.
    #[serde(default)]
    pub psam_permitted: bool,
}

impl RootBackup {
    /// Shares still in the HSM.
    pub fn untaken(&self) -> u8 {
        self.shares
            .saturating_sub(u8::try_from(self.taken.len()).unwrap_or(u8::MAX))
    }

    /// One line for the ceremony record: everything a restore needs to be asked for.
    pub fn summary(&self) -> String {
        format!(
            "backup {} of {} (KCV {} {}) in {}-of-{} shares, {} to take (restore: template {}, \
             key {}, level {}, version {}, KCV {}, backup {}, threshold {}{})",
            self.backup,
            self.key_id,
            self.kcv_method,
            self.kcv,
            self.threshold,
            self.shares,
            self.untaken(),
            self.template_id,
            self.key_name,
            self.level,
            self.version,
            self.kcv,
            self.backup,
            self.threshold,
            if self.psam_permitted {
                ", with the Ministry's permission for PSAM use"
            } else {
                ""
            }
        )
    }
}

/// A custodian's backup share, as handed out once.
#[derive(Debug)]
pub struct BackupShareTaken {
    /// Which share (1-based).
    pub index: u8,
    /// The backup after this hand-out.
    pub backup: RootBackup,
    /// The share and its check value.
    pub issued: IssuedShare,
}

/// Refuses a split outside 2 ≤ `threshold` ≤ `shares` ≤ 16.
fn check_counts(threshold: u8, shares: u8) -> Result<()> {
    if threshold < 2 || threshold > shares || shares > MAX_SHARES {
        return Err(Error::InvalidArgument {
            field: "shares",
            reason: Refusal::BackupShareCount,
        });
    }
    Ok(())
}

/// The backup made by request `request`, kept in `tx`.
fn kept(tx: &Tx<'_>, request: &str) -> Result<RootBackup> {
    tx.get(Table::Meta, &format!("{BACKUP_PREFIX}{request}"))?
        .ok_or(Error::NotFound {
            what: Resource::RootBackup,
        })
}

/// Inside the approval's write: keeps the backup; the text of the ceremony record.
pub(super) fn keep_backup(tx: &mut Tx<'_>, mut b: RootBackup) -> Result<String> {
    b.made_ms = tx.now_ms();
    let text = b.summary();
    tx.put(Table::Meta, &format!("{BACKUP_PREFIX}{}", b.request), &b)?;
    Ok(text)
}

/// The public check value a backup share ends with (`…-<8 hex digits>`), for the record; empty
/// if the text does not end so (the HSM refuses it anyway).
fn check_value_of(share: &str) -> String {
    let tail = share.trim().rsplit('-').next().unwrap_or("").trim();
    if tail.len() == 8 && tail.bytes().all(|b| b.is_ascii_hexdigit()) {
        tail.to_ascii_uppercase()
    } else {
        String::new()
    }
}

/// What a refused share becomes: [`Refusal::BackupShareRefused`] for a share the HSM refused
/// as not of this backup; anything else as it is.
fn share_refusal(e: hsm_api::Error) -> Error {
    match e {
        hsm_api::Error::Share(_) => Error::InvalidArgument {
            field: "share",
            reason: Refusal::BackupShareRefused,
        },
        other => other.into(),
    }
}

impl<H: Hsm> Kms<H> {
    /// Checks an [`Act::BackupRoot`](super::Act) when it is asked for; its description.
    pub(super) fn check_backup_root(
        &self,
        key_id: &str,
        threshold: u8,
        shares: u8,
    ) -> Result<String> {
        check_counts(threshold, shares)?;
        let k = self.backed_up_key(key_id)?;
        Ok(format!(
            "back up the root {key_id} (KCV {} {}) in {threshold}-of-{shares} shares for escrow",
            k.kcv_method, k.kcv
        ))
    }

    /// The key record `key_id`, which must be a national or provincial root of its template.
    fn backed_up_key(&self, key_id: &str) -> Result<KeyRecord> {
        let k: KeyRecord =
            self.store
                .snapshot()?
                .get(Table::Keys, key_id)?
                .ok_or(Error::NotFound {
                    what: Resource::TemplateKey,
                })?;
        let not_a_root = Error::FailedPrecondition {
            reason: Refusal::BackupNotARoot,
        };
        if !matches!(k.level, Level::National | Level::Province) {
            return Err(not_a_root);
        }
        match self.root_region(&k.template_id, &k.key_name, k.level) {
            Ok(region) if region == k.region => Ok(k),
            _ => Err(not_a_root),
        }
    }

    /// The HSM's half of an approved backup (nothing stored): the root split, its shares held
    /// in the HSM.
    pub(super) async fn backup_root(
        &self,
        request: &str,
        key_id: &str,
        threshold: u8,
        shares: u8,
    ) -> Result<RootBackup> {
        check_counts(threshold, shares)?;
        let k = self.backed_up_key(key_id)?;
        let made = self
            .hsm
            .backup_key(&KeyToken::from_stored(k.token.clone()), threshold, shares)
            .await?;
        let (kcv_method, kcv) = kcv_hex(&made.kcv);
        if kcv != k.kcv || kcv_method != k.kcv_method {
            return Err(Error::StoreCorrupt("a backed-up key's KCV"));
        }
        Ok(RootBackup {
            request: request.to_owned(),
            backup: made.backup,
            key_id: key_id.to_owned(),
            template_id: k.template_id,
            key_name: k.key_name,
            level: k.level,
            region: k.region,
            version: k.version,
            algorithm: k.algorithm,
            kcv_method,
            kcv,
            share_set: made.parts.set,
            shares: made.parts.count,
            threshold: made.parts.threshold,
            taken: Vec::new(),
            made_ms: 0,
            psam_permitted: k.psam_permitted,
        })
    }

    /// The HSM's half of an approved request, if it is an [`Act::BackupRoot`](super::Act).
    pub(super) async fn backup_for(&self, r: &DualControlRequest) -> Result<Option<RootBackup>> {
        match &r.act {
            Act::BackupRoot {
                key_id,
                threshold,
                shares,
            } => Ok(Some(
                self.backup_root(&r.id, key_id, *threshold, *shares).await?,
            )),
            _ => Ok(None),
        }
    }

    /// A restored root's key family, for its custodians' tools (fixed by the template), if
    /// `act` is an [`Act::RestoreRoot`](super::Act).
    pub(super) fn restore_family(&self, act: &Act) -> Result<Option<String>> {
        match act {
            Act::RestoreRoot { root, .. } => {
                let target = CeremonyTarget::Restore { root: root.clone() };
                Ok(Some(family_of(self.target_algorithm(&target)?).to_owned()))
            }
            _ => Ok(None),
        }
    }

    /// The algorithm of a root's, a restored root's or a vendor transport key's key.
    pub(super) fn target_algorithm(&self, target: &CeremonyTarget) -> Result<Algorithm> {
        self.fixed_algorithm(target)?.ok_or(Error::Store)
    }

    /// Hands the caller — a registered officer who has not taken one — the next share of the
    /// backup made by `request`, once; audited with the identity, the share's check value and
    /// the key's KCV.
    pub async fn take_backup_share(
        &self,
        caller: &Identity,
        request: &str,
    ) -> Result<BackupShareTaken> {
        let subject = format!("root backup {request}");
        self.audited(caller, Operation::Administer, &subject, async {
            self.admit_officer(caller, Operation::Administer)?;
            let actor = caller.to_string();
            let _one_at_a_time = self.ceremony.lmk.lock().await;
            let key = format!("{BACKUP_PREFIX}{request}");
            let b: RootBackup =
                self.store
                    .snapshot()?
                    .get(Table::Meta, &key)?
                    .ok_or(Error::NotFound {
                        what: Resource::RootBackup,
                    })?;
            if b.taken.iter().any(|t| t.identity == actor) {
                return Err(Error::PermissionDenied {
                    reason: Refusal::SameCustodianTwice,
                });
            }
            if b.untaken() == 0 {
                return Err(Error::Hsm(hsm_api::Error::PartNotAvailable));
            }
            let index = u8::try_from(b.taken.len() + 1).unwrap_or(u8::MAX);
            let issued = self.hsm.take_secret_part(&b.share_set, index).await?;
            let check_value = issued.check_value.clone();
            let request = request.to_owned();
            let backup = self
                .store
                .write(move |tx| {
                    let mut b = kept(tx, &request)?;
                    b.taken.push(ShareTaken {
                        identity: actor.clone(),
                        index,
                        check_value: check_value.clone(),
                        at_ms: tx.now_ms(),
                    });
                    tx.put(Table::Meta, &key, &b)?;
                    tx.audit(AuditEvent::ok(
                        actor,
                        "take-backup-share",
                        format!(
                            "{request}: share {index} of {} of backup {} of {} (KCV {} {}) \
                             taken; share check value {check_value}",
                            b.shares, b.backup, b.key_id, b.kcv_method, b.kcv
                        ),
                    ));
                    Ok(b)
                })
                .await?;
            Ok(BackupShareTaken {
                index,
                backup,
                issued,
            })
        })
        .await
    }

    /// Checks an [`Act::RestoreRoot`](super::Act) when it is asked for; its description.
    pub(super) fn check_restore_act(&self, root: &RootToRestore, threshold: u8) -> Result<String> {
        check_counts(threshold, MAX_SHARES)?;
        self.check_restore(root)
    }

    /// Validates a restore's target (the threshold is the act's); its description.
    pub(super) fn check_restore(&self, root: &RootToRestore) -> Result<String> {
        let RootToRestore {
            template_id,
            key_name,
            level,
            version,
            kcv,
            backup,
            psam_permitted,
        } = root;
        let (level, version) = (*level, *version);
        if *psam_permitted && level != Level::National {
            return Err(Error::InvalidArgument {
                field: "ministry_psam_permission",
                reason: Refusal::PsamPermissionOnlyNational,
            });
        }
        if !matches!(level, Level::National | Level::Province) {
            return Err(Error::FailedPrecondition {
                reason: Refusal::BackupNotARoot,
            });
        }
        let region = self.root_region(template_id, key_name, level)?;
        if version == 0 {
            return Err(Error::InvalidArgument {
                field: "version",
                reason: Refusal::Required,
            });
        }
        let hex_of = |field: &'static str, text: &str, len: Option<usize>| {
            let ok = !text.is_empty()
                && text.bytes().all(|b| b.is_ascii_hexdigit())
                && len.is_none_or(|l| text.len() == l)
                && text.len().is_multiple_of(2);
            if ok {
                Ok(())
            } else {
                Err(Error::InvalidArgument {
                    field,
                    reason: Refusal::NotHex,
                })
            }
        };
        hex_of("kcv", kcv, None)?;
        hex_of("backup", backup, Some(16))?;
        let id = records::key_id(template_id, key_name, level, region, version);
        if self
            .store
            .snapshot()?
            .get::<KeyRecord>(Table::Keys, &id)?
            .is_some()
        {
            return Err(Error::FailedPrecondition {
                reason: Refusal::RestoreKeyExists,
            });
        }
        Ok(format!(
            "restore {id} (KCV {kcv}) from the shares of backup {backup}"
        ))
    }

    /// One custodian's backup share towards the restore ceremony `id`. The HSM checks it and
    /// keeps it in the partial restore stored with the ceremony; a refused share leaves the
    /// ceremony as it was. At the threshold the root is rebuilt (its KCV checked) and stored
    /// with its version, in one write with the ceremony's completion.
    pub async fn submit_backup_share(
        &self,
        caller: &Identity,
        id: &str,
        share: Zeroizing<String>,
    ) -> Result<Submitted> {
        let subject = format!("ceremony {id}");
        self.audited(caller, Operation::Administer, &subject, async {
            self.admit_officer(caller, Operation::Administer)?;
            let actor = caller.to_string();
            let check_value = check_value_of(&share);
            let share = LmkShare::new(share);
            // One submission at a time in this process, as for components.
            let _turn = self.ceremony.submissions.lock().await;
            let _tokens = self.token_turn().await;
            let ceremony: KeyCeremony =
                self.store
                    .snapshot()?
                    .get(Table::Ceremonies, id)?
                    .ok_or(Error::NotFound {
                        what: Resource::Ceremony,
                    })?;
            let CeremonyTarget::Restore {
                root: RootToRestore { kcv, backup, .. },
            } = &ceremony.target
            else {
                return Err(Error::FailedPrecondition {
                    reason: Refusal::CeremonyKindMismatch,
                });
            };
            check_submission(&ceremony, &actor)?;
            if super::custodians::now_ms() >= ceremony.expires_ms {
                self.fail_ceremony(id, "expired before its last share".to_owned())
                    .await?;
                return Err(Error::FailedPrecondition {
                    reason: Refusal::CeremonyNotOpen,
                });
            }
            let alg = self.target_algorithm(&ceremony.target)?;
            let into = match &ceremony.partial {
                None => Restoration::Begin {
                    spec: self.target_spec(&ceremony.target, alg)?,
                    kcv: Kcv::from_parts(
                        KcvMethod::default_for(alg),
                        hex::decode(kcv).map_err(|_| Error::StoreCorrupt("restore KCV"))?,
                    ),
                    backup: backup.clone(),
                },
                Some(token) => Restoration::Continue(KeyToken::from_stored(token.clone())),
            };
            let step = match self.hsm.restore_share(into, share).await {
                Ok(step) => step,
                Err(hsm_api::Error::Verification) => {
                    self.fail_ceremony(
                        id,
                        format!(
                            "the shares rebuilt a key of another KCV than {kcv} (the last \
                             from {actor})"
                        ),
                    )
                    .await?;
                    return Err(Error::FailedPrecondition {
                        reason: Refusal::RestoreKcvMismatch,
                    });
                }
                Err(e) => return Err(share_refusal(e)),
            };
            let step = match step {
                Restored::Partial(partial) => {
                    if partial.threshold != ceremony.components {
                        return Err(Error::InvalidArgument {
                            field: "share",
                            reason: Refusal::BackupShareRefused,
                        });
                    }
                    PartStep::Partial(partial.token)
                }
                Restored::Formed(formed) => PartStep::Formed(formed),
            };
            let part = Part {
                ceremony,
                actor,
                check: check_value,
                alg,
                step,
            };
            let ceremony = self.record_part(part, BACKUP_SHARES).await?;
            Ok(Submitted { ceremony })
        })
        .await
    }
}

/// Stores a restored root (its key `formed`, of `alg`, in `region`) with the version and KCV of
/// the original, with its audit record; refused if the store holds that version already.
/// Active unless a later version is held (the earlier ones are then retired from new cards, as
/// a new version retires them).
pub(super) fn put_restored(
    tx: &mut Tx<'_>,
    root: &RootToRestore,
    region: Option<&'static str>,
    alg: Algorithm,
    formed: &WrappedKey,
    actor: String,
    note: &str,
) -> Result<KeyRecord> {
    let region = region.ok_or(Error::Store)?;
    let mut record = new_key_record(
        &root.template_id,
        &root.key_name,
        root.level,
        region,
        alg,
        formed,
    );
    record.version = root.version;
    record.psam_permitted = root.psam_permitted;
    if !record.kcv.eq_ignore_ascii_case(&root.kcv) {
        return Err(Error::FailedPrecondition {
            reason: Refusal::RestoreKcvMismatch,
        });
    }
    if tx.get::<KeyRecord>(Table::Keys, &record.id())?.is_some() {
        return Err(Error::FailedPrecondition {
            reason: Refusal::RestoreKeyExists,
        });
    }
    let prefix = records::key_prefix(
        &record.template_id,
        &record.key_name,
        record.level,
        &record.region,
    );
    let existing: Vec<(String, KeyRecord)> = tx.scan(Table::Keys, &prefix)?;
    record.active = existing.iter().all(|(_, r)| r.version < record.version);
    record.created_ms = tx.now_ms();
    if record.active {
        for (id, mut old) in existing {
            if old.active {
                old.active = false;
                tx.put(Table::Keys, &id, &old)?;
            }
        }
    }
    tx.put(Table::Keys, &record.id(), &record)?;
    tx.audit(AuditEvent::ok(
        actor,
        "restore-root-key",
        format!(
            "{} v{} KCV {} {} restored{}{note}",
            record.id(),
            record.version,
            record.kcv_method,
            record.kcv,
            if record.active {
                ""
            } else {
                " (inactive: a later version is held)"
            }
        ),
    ));
    Ok(record)
}

/// Inside the approval of an [`Act::RestoreRoot`](super::Act) `r`: opens its restore
/// ceremony (`family`: the key's, for the custodians' tools); the text of the ceremony record
/// and the ceremony.
pub(super) fn open_restore(
    tx: &mut Tx<'_>,
    r: &DualControlRequest,
    root: &RootToRestore,
    threshold: u8,
    family: String,
    ttl: u64,
) -> Result<(String, KeyCeremony)> {
    let mut root = root.clone();
    root.kcv = root.kcv.to_ascii_uppercase();
    root.backup = root.backup.to_ascii_uppercase();
    let target = CeremonyTarget::Restore { root };
    let description = r.description.clone();
    let c = opened_by(tx, r, target, description, family, threshold, ttl)?;
    let text = format!(
        "restore ceremony {} opened for {} custodians' backup shares",
        c.id, c.components
    );
    Ok((text, c))
}

/// Refuses (`reason`) a restore target: one not opened by an approved restore, or a
/// component for a ceremony that takes backup shares.
pub(super) fn not_a_restore(target: &CeremonyTarget, reason: Refusal) -> Result<()> {
    match target {
        CeremonyTarget::Restore { .. } => Err(Error::FailedPrecondition { reason }),
        _ => Ok(()),
    }
}
