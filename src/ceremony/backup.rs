//! The root backup and restore jobs of `kms-ceremony service` (issue 10, DOMAIN.md §12): ask
//! for a backup, take your one share of it, ask for a restore, submit your one share to it. A
//! share is printed once, straight to the custodian's terminal from a zeroizing buffer, and read
//! back without echo (or from standard input); the record lines carry its check value, the
//! backup's name and the key's KCV, never the share.

use std::fmt::Write as _;

use clap::Subcommand;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::ceremony::remote::{RootLevel, print_ceremony, refused, request};
use crate::error::{Error, Result};
use crate::proto::kms::v1 as pb;
use crate::proto::kms::v1::admin_service_client::AdminServiceClient;

/// The jobs of a root backup and its restore.
#[derive(Debug, Clone, Subcommand)]
pub enum BackupJob {
    /// Step 1 of a backup: ask to back up a national or provincial root in THRESHOLD-of-SHARES
    /// custodians' shares for escrow (2 <= threshold <= shares <= 16). Another officer
    /// approves (`requests-approve`): the HSM splits the key, and the approval's record line
    /// names the backup and everything a restore will need (key, version, KCV, threshold).
    RootsBackup {
        /// The key version, `template/key/level/region/version` as `keys-list` shows it.
        #[arg(long)]
        key_id: String,
        #[arg(long)]
        threshold: u32,
        #[arg(long)]
        shares: u32,
    },
    /// Step 2 of a backup: take your one share of the backup made by request REQUEST, from your
    /// own certificate. It is printed here once (the HSM forgets it as it answers): copy it onto
    /// the escrow paper with its check value, the backup's name and the key's KCV. One share
    /// per custodian.
    BackupTakeShare {
        /// The id of the approved `roots-backup` request.
        request: String,
    },
    /// Step 1 of a restore (in this service, or a fresh one on another HSM): ask to restore a
    /// root from its backup shares, naming what the backup's ceremony record says. Another
    /// officer approves; the approval opens the restore ceremony.
    RootsRestore {
        #[arg(long)]
        template: String,
        #[arg(long)]
        key: String,
        #[arg(long, value_enum)]
        level: RootLevel,
        /// The version backed up; the restored key keeps it.
        #[arg(long)]
        version: u32,
        /// The key's KCV (hex) from the record.
        #[arg(long)]
        kcv: String,
        /// The backup's name (16 hex digits), as every share carries it.
        #[arg(long)]
        backup: String,
        /// Shares the backup needs.
        #[arg(long)]
        threshold: u32,
        /// The backup's record says the national root had the Ministry's permission for PSAM
        /// use (DOMAIN.md §11): recorded with the restored key. Only for `--level national`.
        #[arg(long)]
        ministry_psam_permission: bool,
    },
    /// Step 2 of a restore: submit your one backup share to restore ceremony ID (read without
    /// echo, or from stdin). The HSM checks it at once (check value, backup, key); a refused
    /// share leaves the ceremony as it was. At the threshold the root is stored with its
    /// version and KCV, shown here for the record.
    BackupSubmitShare {
        /// The restore ceremony's id.
        id: String,
    },
}

impl BackupJob {
    /// Whether the job reads a backup share.
    pub(super) fn reads_share(&self) -> bool {
        matches!(self, BackupJob::BackupSubmitShare { .. })
    }
}

/// Runs `job`; `share` is the custodian's share for `backup-submit-share`.
pub(super) async fn call(
    admin: &mut AdminServiceClient<Channel>,
    job: &BackupJob,
    share: Option<Zeroizing<String>>,
    out: &mut String,
) -> Result<()> {
    match job {
        BackupJob::RootsBackup {
            key_id,
            threshold,
            shares,
        } => {
            let act = pb::request_act_request::Act::BackupRoot(pb::BackupRootAct {
                key_id: key_id.clone(),
                threshold: *threshold,
                shares: *shares,
            });
            request(admin, act, out).await?;
        }
        BackupJob::BackupTakeShare { request } => {
            let mut r = admin
                .take_backup_share(pb::TakeBackupShareRequest {
                    request_id: request.clone(),
                })
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            let share = Zeroizing::new(std::mem::take(&mut r.share));
            let kcv = r
                .kcv
                .as_ref()
                .map(|k| hex::encode_upper(&k.value))
                .unwrap_or_default();
            // Straight to the custodian's terminal: the share never enters the job's output
            // text (a plain String that is not wiped); only the record lines do.
            println!(
                "YOUR SHARE of backup {} of {} (KCV {kcv}), shown once — copy it onto the \
                 escrow paper and keep it alone:\n{}",
                r.backup,
                r.key_id,
                share.as_str()
            );
            let _ = writeln!(
                out,
                "share {} of {} (threshold {}) of backup {} of {} (KCV {kcv}); its check value: {}",
                r.index, r.shares, r.threshold, r.backup, r.key_id, r.check_value
            );
        }
        BackupJob::RootsRestore {
            template,
            key,
            level,
            version,
            kcv,
            backup,
            threshold,
            ministry_psam_permission,
        } => {
            let level = match level {
                RootLevel::National => pb::KeyLevel::National,
                RootLevel::Provincial => pb::KeyLevel::Provincial,
            };
            let act = pb::request_act_request::Act::RestoreRoot(pb::RestoreRootAct {
                template_id: template.clone(),
                key_name: key.clone(),
                level: level.into(),
                version: *version,
                kcv: kcv.clone(),
                backup: backup.clone(),
                threshold: *threshold,
                ministry_psam_permission: *ministry_psam_permission,
            });
            request(admin, act, out).await?;
        }
        BackupJob::BackupSubmitShare { id } => {
            let share = share.ok_or(Error::MissingInput("your backup share"))?;
            let c = admin
                .submit_backup_share(pb::SubmitBackupShareRequest {
                    ceremony_id: id.clone(),
                    share: share.to_string(),
                })
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            print_ceremony(out, &c);
        }
    }
    Ok(())
}
