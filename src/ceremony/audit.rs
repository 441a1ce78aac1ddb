//! `kms-ceremony audit verify` and `audit checkpoint`: the audit trail checked offline.
//!
//! `verify` walks the hash chain from the first record and reports the first broken link;
//! checks that each seal names a head that is in the chain and — when given a way to check MACs
//! (the HSM with the audit key) — that each seal's MAC verifies; checks that the store's own
//! head (`meta/audit_head`) is the chain's last record (records removed from the end are
//! caught even when the seals above them were removed too); reports the records after the last
//! seal as an **unsealed tail** (not vouched for by the HSM), saying whether a gap record in the
//! chain explains it; and, given an auditor's checkpoint, refuses a chain that does not reach
//! it with the same hash (a trail cut short at a seal and its head rewritten to match).
//!
//! The server must be stopped (redb allows one process at a time). A store left by a crash
//! (redb refuses to open it read-only until repaired) is verified through a repaired copy of
//! exactly that file, in a temporary directory; the original is not written to.
//!
//! `checkpoint` asks the running service (as an auditor or officer, over mutual TLS) for its
//! head MACed by the HSM, and writes it to a file for the auditor to keep.

use std::path::Path;

use crate::error::{Error, Refusal, Resource, Result};
use crate::state::audit::{self, AuditCheckpoint, AuditRecord, AuditSeal, ChainBreak, ChainHead};
use crate::state::store::{Opened, SEAL_GAP_ACTION, Store, StoreLocation};

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub records: usize,
    pub seals: usize,
    /// Seals whose MAC was checked (0 when no MAC checker was given).
    pub macs_checked: usize,
    /// Records after the last seal (not covered by an HSM MAC): a finding.
    pub unsealed_tail: usize,
    /// Gap records in the chain: times the seals were skipped (HSM sealed, slow, no key yet).
    pub seal_gaps: usize,
    /// Whether a gap record lies in the unsealed tail (the chain says why it is not sealed).
    pub tail_explained: bool,
    /// The last record the store's head names (`None`: no head, an empty store).
    pub head: Option<u64>,
    /// The record of the checkpoint verified against, and whether its MAC was checked.
    pub checkpoint: Option<(u64, bool)>,
    /// The store was not closed cleanly: a repaired copy of it was verified.
    pub repaired_copy: bool,
    /// The first problem, if any.
    pub broken: Option<ChainBreak>,
}

impl Report {
    /// The lines `kms-ceremony audit verify` prints; the verdict is the last: `INTACT`,
    /// `UNSEALED: …` (the chain holds, but its tail is not vouched for by the HSM) or
    /// `BROKEN: …`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.repaired_copy {
            out.push_str(
                "store not closed cleanly (a crash?): verified a repaired copy of exactly that \
                 file; the original was not written to\n",
            );
        }
        out.push_str(&format!(
            "records {}\nhead {}\nseals {} ({} MACs checked)\nseal gaps {}\nunsealed tail {}\n",
            self.records,
            self.head
                .map_or_else(|| "none".to_owned(), |h| h.to_string()),
            self.seals,
            self.macs_checked,
            self.seal_gaps,
            self.unsealed_tail
        ));
        if let Some((seq, mac_checked)) = self.checkpoint {
            out.push_str(&format!(
                "checkpoint of record {seq}: {}\n",
                if mac_checked {
                    "its MAC checked"
                } else {
                    "its MAC not checked (no HSM given)"
                }
            ));
        }
        match &self.broken {
            Some(b) => out.push_str(&format!("BROKEN: {b}\n")),
            None if self.unsealed_tail > 0 => out.push_str(&format!(
                "UNSEALED: the last {} records are not covered by an HSM seal ({})\n",
                self.unsealed_tail,
                if self.tail_explained {
                    "a gap record in the chain says why"
                } else {
                    "no gap record says why"
                }
            )),
            None => out.push_str("INTACT\n"),
        }
        out
    }
}

/// Checks a MAC over a message; `None` when MACs are not checked.
pub type MacCheck<'a> = Option<&'a dyn Fn(&[u8], &[u8]) -> bool>;

/// Verifies the trail in `data_dir`.
pub fn verify(data_dir: &Path, mac_check: MacCheck<'_>) -> Result<Report> {
    verify_against(data_dir, mac_check, None)
}

/// Verifies the trail in `data_dir`, and that it reaches `checkpoint` (if given).
pub fn verify_against(
    data_dir: &Path,
    mac_check: MacCheck<'_>,
    checkpoint: Option<&AuditCheckpoint>,
) -> Result<Report> {
    verify_at(
        &StoreLocation::Redb(data_dir.to_owned()),
        mac_check,
        checkpoint,
    )
}

/// Verifies the trail of the store at `location` (redb or PostgreSQL), and that it reaches
/// `checkpoint` (if given).
pub fn verify_at(
    location: &StoreLocation,
    mac_check: MacCheck<'_>,
    checkpoint: Option<&AuditCheckpoint>,
) -> Result<Report> {
    let (snapshot, opened) = Store::open_for_audit_at(location)?;
    let (records, seals) = snapshot.audit_trail()?;
    let head = snapshot.audit_head()?;
    let mut report = verify_records(&records, &seals, head, mac_check, checkpoint);
    report.repaired_copy = opened == Opened::RepairedCopy;
    Ok(report)
}

/// Verifies records, seals and the store's head already read.
pub fn verify_records(
    records: &[AuditRecord],
    seals: &[AuditSeal],
    head: Option<ChainHead>,
    mac_check: MacCheck<'_>,
    checkpoint: Option<&AuditCheckpoint>,
) -> Report {
    let mut report = Report {
        records: records.len(),
        seals: seals.len(),
        macs_checked: 0,
        unsealed_tail: 0,
        seal_gaps: records
            .iter()
            .filter(|r| r.action == SEAL_GAP_ACTION)
            .count(),
        tail_explained: false,
        head: head.map(|h| h.next_seq - 1).filter(|&s| s > 0),
        checkpoint: checkpoint.map(|c| (c.seq, false)),
        repaired_copy: false,
        broken: None,
    };
    let hashes = match audit::verify_chain(records) {
        Ok(h) => h,
        Err(b) => {
            report.broken = Some(b);
            return report;
        }
    };
    let chain_end = u64::try_from(hashes.len()).unwrap_or(u64::MAX);
    // The store's head must be the chain's last record.
    let head_matches = match head {
        None => chain_end == 0,
        Some(h) => {
            h.next_seq == chain_end + 1
                && h.last_hash == hashes.last().copied().unwrap_or(audit::GENESIS)
        }
    };
    if !head_matches {
        report.broken = Some(ChainBreak::Head {
            head: head.map_or(0, |h| h.next_seq.saturating_sub(1)),
            chain_end,
        });
        return report;
    }
    let mut last_sealed = 0u64;
    for seal in seals {
        let index = usize::try_from(seal.seq).unwrap_or(usize::MAX);
        let sealed_head = match index.checked_sub(1).and_then(|i| hashes.get(i)) {
            Some(h) if hex::encode_upper(h) == seal.head => *h,
            _ => {
                report.broken = Some(ChainBreak::SealHead { seq: seal.seq });
                return report;
            }
        };
        if let Some(check) = mac_check {
            let mac = hex::decode(&seal.mac).unwrap_or_default();
            if !check(&audit::seal_message(seal.seq, &sealed_head), &mac) {
                report.broken = Some(ChainBreak::SealMac { seq: seal.seq });
                return report;
            }
            report.macs_checked += 1;
        }
        last_sealed = last_sealed.max(seal.seq);
    }
    if let Some(c) = checkpoint {
        let Some(hash) = usize::try_from(c.seq)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| hashes.get(i))
        else {
            report.broken = Some(ChainBreak::Truncated {
                seq: c.seq,
                chain_end,
            });
            return report;
        };
        if hex::encode_upper(hash) != c.head {
            report.broken = Some(ChainBreak::CheckpointHead { seq: c.seq });
            return report;
        }
        if let Some(check) = mac_check {
            let mac = hex::decode(&c.mac).unwrap_or_default();
            if !check(&audit::checkpoint_message(c.seq, hash, c.time_ms), &mac) {
                report.broken = Some(ChainBreak::CheckpointMac { seq: c.seq });
                return report;
            }
            report.checkpoint = Some((c.seq, true));
        }
    }
    report.unsealed_tail = records
        .len()
        .saturating_sub(usize::try_from(last_sealed).unwrap_or(0));
    report.tail_explained = records
        .iter()
        .skip(usize::try_from(last_sealed).unwrap_or(usize::MAX))
        .any(|r| r.action == SEAL_GAP_ACTION);
    report
}

/// Verifies the trail in `data_dir` and, with `dangerous_test_lmk`, every seal's MAC (and the
/// checkpoint's) through an in-process HSM on the published test LMK (development data
/// directories only: a production trail's seals are checked through the production HSM).
pub fn verify_with_test_lmk(
    data_dir: &Path,
    checkpoint: Option<&AuditCheckpoint>,
) -> Result<Report> {
    verify_with_test_lmk_at(&StoreLocation::Redb(data_dir.to_owned()), checkpoint)
}

/// [`verify_with_test_lmk`] on the store at `location` (redb or PostgreSQL).
pub fn verify_with_test_lmk_at(
    location: &StoreLocation,
    checkpoint: Option<&AuditCheckpoint>,
) -> Result<Report> {
    use hsm_api::{Hsm, KeyToken};
    let (snapshot, _) = Store::open_for_audit_at(location)?;
    let token: String = snapshot
        .get(crate::state::store::Table::Meta, crate::service::AUDIT_KEY)?
        .ok_or(Error::NotFound {
            what: Resource::AuditKey,
        })?;
    drop(snapshot);
    let token = KeyToken::from_stored(token);
    let hsm = hsm_sim::local::LocalHsm::open(hsm_sim::local::LocalHsmConfig {
        dangerous_test_lmk: true,
        ..Default::default()
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|_| Error::Store)?;
    let check = |message: &[u8], mac: &[u8]| -> bool {
        runtime
            .block_on(hsm.verify_mac(&token, message, mac))
            .is_ok()
    };
    verify_at(location, Some(&check), checkpoint)
}

/// Exit status of `audit verify`: an error unless the trail is intact and wholly sealed.
pub fn verdict(report: &Report) -> Result<()> {
    match &report.broken {
        None if report.unsealed_tail == 0 => Ok(()),
        _ => Err(Error::AuditBroken),
    }
}

/// Reads an auditor's checkpoint file (JSON, as `audit checkpoint` writes it).
pub fn read_checkpoint(path: &Path) -> Result<AuditCheckpoint> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::File {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|_| Error::InvalidArgument {
        field: "checkpoint",
        reason: Refusal::CheckpointFile,
    })
}

/// Asks the service at `server` for a checkpoint of its audit chain (as the identity of `tls`:
/// an auditor or an officer) and writes it to `out`. Returns the line to print.
pub fn checkpoint(server: &str, tls: &crate::access::tls::ClientTls, out: &Path) -> Result<String> {
    use crate::proto::kms::v1 as pb;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|_| Error::Store)?;
    let unreachable = |e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, "audit checkpoint: the service did not answer");
        Error::Tls {
            what: "audit checkpoint",
            reason: "the service could not be reached or refused the call",
        }
    };
    let cp = runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(server.to_owned())
            .map_err(|e| unreachable(&e))?
            .tls_config(tls.config())
            .map_err(|e| unreachable(&e))?
            .connect()
            .await
            .map_err(|e| unreachable(&e))?;
        let mut admin = pb::admin_service_client::AdminServiceClient::new(channel);
        admin
            .get_audit_checkpoint(pb::GetAuditCheckpointRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| {
                eprintln!("kms-ceremony: the service refused: {}", s.message());
                unreachable(&s)
            })
    })?;
    let checkpoint = AuditCheckpoint {
        seq: cp.seq,
        head: cp.head,
        time_ms: cp.time_ms,
        mac: cp.mac,
    };
    let json =
        serde_json::to_string_pretty(&checkpoint).map_err(|_| Error::StoreCorrupt("encode"))?;
    std::fs::write(out, json + "\n").map_err(|source| Error::File {
        path: out.to_owned(),
        source,
    })?;
    Ok(format!(
        "checkpoint of record {} written to {}\n",
        checkpoint.seq,
        out.display()
    ))
}
