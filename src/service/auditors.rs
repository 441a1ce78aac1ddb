//! Auditors (and officers): the audit trail verified **through the service's own HSM** — so a
//! production trail's seals are checked with the production audit key, not only a dev one's —
//! and a range of records exported for a SIEM.

use std::collections::HashSet;

use hsm_api::Hsm;

use crate::access::authz::Operation;
use crate::access::identity::Identity;
use crate::ceremony::audit::{Report, verify_records};
use crate::error::{Error, Refusal, Result};
use crate::state::audit::{self, AuditEvent, AuditRecord};

use super::Kms;

/// The most records one export returns.
pub const MAX_EXPORT: u64 = 10_000;

impl<H: Hsm> Kms<H> {
    /// Verifies the whole chain, its head and every seal's MAC with the HSM's audit key (as
    /// `kms-ceremony audit verify` does offline). The verification is recorded after the head it
    /// covers.
    pub async fn verify_audit_trail(&self, caller: &Identity) -> Result<Report> {
        self.audited(caller, Operation::AuditCheckpoint, "audit verify", async {
            self.admit_officer(caller, Operation::AuditCheckpoint)?;
            let key = self.sealer.key().ok_or(Error::FailedPrecondition {
                reason: Refusal::NoAuditKeyYet,
            })?;
            let snapshot = self.store.snapshot()?;
            let (records, seals) = snapshot.audit_trail()?;
            let head = snapshot.audit_head()?;
            drop(snapshot);
            // The HSM's answers first (it is asynchronous), then the synchronous walk.
            let mut good = HashSet::new();
            for seal in &seals {
                let Ok(h) = hex::decode(&seal.head) else {
                    continue;
                };
                let Ok(h) = <[u8; 32]>::try_from(h.as_slice()) else {
                    continue;
                };
                let message = audit::seal_message(seal.seq, &h);
                let mac = hex::decode(&seal.mac).unwrap_or_default();
                if self.hsm.verify_mac(&key, &message, &mac).await.is_ok() {
                    good.insert((message, mac));
                }
            }
            let check =
                |message: &[u8], mac: &[u8]| good.contains(&(message.to_vec(), mac.to_vec()));
            let report = verify_records(&records, &seals, head, Some(&check), None);
            self.store
                .audit(vec![AuditEvent::ok(
                    caller.to_string(),
                    "audit-verify",
                    format!(
                        "{} records, {} seals ({} MACs checked by the HSM): {}",
                        report.records,
                        report.seals,
                        report.macs_checked,
                        report.render().lines().last().unwrap_or_default()
                    ),
                )])
                .await?;
            Ok(report)
        })
        .await
    }

    /// Seals the HSM now (an officer alone may: it only ever closes); the state after.
    pub async fn seal_hsm(&self, caller: &Identity) -> Result<String> {
        self.audited(caller, Operation::Administer, "seal-hsm", async {
            self.admit_officer(caller, Operation::Administer)?;
            self.hsm.seal().await?;
            if let Ok(mut c) = self.ceremony.unseal_custodians.lock() {
                c.clear();
            }
            let state = super::hsm_state_name(self.hsm.status().await?.state).to_owned();
            self.store
                .audit(vec![AuditEvent::ok(
                    caller.to_string(),
                    "seal-hsm",
                    format!("HSM {state}"),
                )])
                .await?;
            Ok(state)
        })
        .await
    }

    /// Runs the HSM's known-answer self-test now; the state after.
    pub async fn run_hsm_self_test(&self, caller: &Identity) -> Result<String> {
        self.audited(caller, Operation::Administer, "hsm-self-test", async {
            self.admit_officer(caller, Operation::Administer)?;
            let outcome = self.hsm.self_test().await;
            let state = super::hsm_state_name(self.hsm.status().await?.state).to_owned();
            self.store
                .audit(vec![AuditEvent::ok(
                    caller.to_string(),
                    "hsm-self-test",
                    match &outcome {
                        Ok(()) => format!("passed; HSM {state}"),
                        Err(e) => format!("FAILED ({e}); HSM {state}"),
                    },
                )])
                .await?;
            outcome?;
            Ok(state)
        })
        .await
    }

    /// The records `from..=to` (sequence numbers; at most [`MAX_EXPORT`]), for a SIEM.
    pub async fn export_audit_trail(
        &self,
        caller: &Identity,
        from: u64,
        to: u64,
    ) -> Result<Vec<AuditRecord>> {
        let subject = format!("audit export {from}..={to}");
        self.audited(caller, Operation::AuditCheckpoint, &subject, async {
            self.admit_officer(caller, Operation::AuditCheckpoint)?;
            if from == 0 || to < from || to - from >= MAX_EXPORT {
                return Err(Error::InvalidArgument {
                    field: "from_seq",
                    reason: Refusal::ExportRange,
                });
            }
            let (records, _) = self.store.snapshot()?.audit_trail()?;
            let out: Vec<AuditRecord> = records
                .into_iter()
                .filter(|r| (from..=to).contains(&r.seq))
                .collect();
            self.store
                .audit(vec![AuditEvent::ok(
                    caller.to_string(),
                    "audit-export",
                    format!("records {from}..={to}: {} exported", out.len()),
                )])
                .await?;
            Ok(out)
        })
        .await
    }
}
