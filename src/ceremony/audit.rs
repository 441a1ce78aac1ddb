//! `kms-ceremony audit verify`: checks the audit trail of a data directory offline.
//!
//! Walks the hash chain from the first record and reports the first broken link; checks that each
//! seal names a head that is in the chain, and — when given a way to check MACs (the HSM with the
//! audit key) — that each seal's MAC verifies. The server must be stopped (redb allows one
//! process at a time).

use std::path::Path;

use crate::error::{Error, Resource, Result};
use crate::state::audit::{self, AuditSeal, ChainBreak};
use crate::state::store::Store;

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub records: usize,
    pub seals: usize,
    /// Seals whose MAC was checked (0 when no MAC checker was given).
    pub macs_checked: usize,
    /// Records after the last seal (not yet covered by an HSM MAC).
    pub unsealed_tail: usize,
    /// The first problem, if any.
    pub broken: Option<ChainBreak>,
}

impl Report {
    /// The lines `kms-ceremony audit verify` prints; the verdict is the last.
    pub fn render(&self) -> String {
        let mut out = format!(
            "records {}\nseals {} ({} MACs checked)\nunsealed tail {}\n",
            self.records, self.seals, self.macs_checked, self.unsealed_tail
        );
        match &self.broken {
            None => out.push_str("INTACT\n"),
            Some(b) => out.push_str(&format!("BROKEN: {b}\n")),
        }
        out
    }
}

/// Checks a MAC over a seal message; `None` when MACs are not checked.
pub type MacCheck<'a> = Option<&'a dyn Fn(&[u8], &[u8]) -> bool>;

/// Verifies the trail in `data_dir`.
pub fn verify(data_dir: &Path, mac_check: MacCheck<'_>) -> Result<Report> {
    let snapshot = Store::open_read_only(data_dir)?;
    let (records, seals) = snapshot.audit_trail()?;
    Ok(verify_records(&records, &seals, mac_check))
}

/// Verifies records and seals already read.
pub fn verify_records(
    records: &[audit::AuditRecord],
    seals: &[AuditSeal],
    mac_check: MacCheck<'_>,
) -> Report {
    let mut report = Report {
        records: records.len(),
        seals: seals.len(),
        macs_checked: 0,
        unsealed_tail: 0,
        broken: None,
    };
    let hashes = match audit::verify_chain(records) {
        Ok(h) => h,
        Err(b) => {
            report.broken = Some(b);
            return report;
        }
    };
    let mut last_sealed = 0u64;
    for seal in seals {
        let index = usize::try_from(seal.seq).unwrap_or(usize::MAX);
        let head = match index.checked_sub(1).and_then(|i| hashes.get(i)) {
            Some(h) if hex::encode_upper(h) == seal.head => *h,
            _ => {
                report.broken = Some(ChainBreak::SealHead { seq: seal.seq });
                return report;
            }
        };
        if let Some(check) = mac_check {
            let mac = hex::decode(&seal.mac).unwrap_or_default();
            if !check(&audit::seal_message(seal.seq, &head), &mac) {
                report.broken = Some(ChainBreak::SealMac { seq: seal.seq });
                return report;
            }
            report.macs_checked += 1;
        }
        last_sealed = last_sealed.max(seal.seq);
    }
    report.unsealed_tail = records
        .len()
        .saturating_sub(usize::try_from(last_sealed).unwrap_or(0));
    report
}

/// Verifies the trail in `data_dir` and, with `dangerous_test_lmk`, every seal's MAC through an
/// in-process HSM on the published test LMK (development data directories only: a production
/// trail's seals are checked through the production HSM).
pub fn verify_with_test_lmk(data_dir: &Path) -> Result<Report> {
    use hsm_api::{Hsm, KeyToken};
    let snapshot = Store::open_read_only(data_dir)?;
    let token: String = snapshot
        .get(crate::state::store::Table::Meta, crate::service::AUDIT_KEY)?
        .ok_or(Error::NotFound {
            what: Resource::AuditKey,
        })?;
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
    let (records, seals) = snapshot.audit_trail()?;
    Ok(verify_records(&records, &seals, Some(&check)))
}

/// Exit status of `audit verify`: an error when the trail is broken.
pub fn verdict(report: &Report) -> Result<()> {
    match &report.broken {
        None => Ok(()),
        Some(_) => Err(Error::AuditBroken),
    }
}
