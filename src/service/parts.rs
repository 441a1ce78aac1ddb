//! The write that records one custodian's part of a ceremony — a component, or a backup share —
//! shared by component ceremonies (`components.rs`) and restores (`backup.rs`): the partial the
//! HSM returned kept for the next custodian, or, at the last part, the key stored by its target
//! and the ceremony complete. One audited write either way, refused if another submission went
//! in since the HSM took this part.

use hsm_api::{Algorithm, Hsm, KeyToken, WrappedKey};

use crate::error::Result;
use crate::state::audit::AuditEvent;
use crate::state::store::Table;

use super::components::{CeremonyState, KeyCeremony, apply_target, with_custodian};
use super::{Kms, kcv_hex};

/// How a ceremony's parts are named on its record.
#[derive(Debug, Clone, Copy)]
pub(super) struct PartNames {
    /// The audit action of one submission.
    pub(super) action: &'static str,
    /// One part, and what its custodian checks it by.
    pub(super) part: &'static str,
    pub(super) check: &'static str,
    /// The custodians' parts, and how the key came from them.
    pub(super) parts: &'static str,
    pub(super) formed: &'static str,
}

/// The parts of a component ceremony.
pub(super) const COMPONENTS: PartNames = PartNames {
    action: "submit-component",
    part: "component",
    check: "KCV",
    parts: "components",
    formed: "formed from the components",
};

/// The parts of a restore from backup shares.
pub(super) const BACKUP_SHARES: PartNames = PartNames {
    action: "submit-backup-share",
    part: "share",
    check: "check value",
    parts: "backup shares",
    formed: "restored from the backup shares",
};

/// What the HSM answered to one part.
#[derive(Debug)]
pub(super) enum PartStep {
    /// Parts are still missing: the partial (under the LMK) for the next one.
    Partial(KeyToken),
    /// The last part: the key.
    Formed(WrappedKey),
}

/// One custodian's part of a ceremony, as the HSM took it.
#[derive(Debug)]
pub(super) struct Part {
    /// The ceremony as it stood when the HSM took the part.
    pub(super) ceremony: KeyCeremony,
    /// Who brought it, and its KCV or check value as recorded.
    pub(super) actor: String,
    pub(super) check: String,
    pub(super) alg: Algorithm,
    pub(super) step: PartStep,
}

impl<H: Hsm> Kms<H> {
    /// Records `part` in one audited write; the ceremony as it then stands.
    pub(super) async fn record_part(&self, part: Part, names: PartNames) -> Result<KeyCeremony> {
        let Part {
            ceremony,
            actor,
            check,
            alg,
            step,
        } = part;
        let id = ceremony.id.clone();
        let before = ceremony.partial.clone();
        let formed = match step {
            PartStep::Partial(partial) => {
                return self
                    .store
                    .write(move |tx| {
                        let mut c = with_custodian(tx, &id, &before, &actor, &check)?;
                        c.partial = Some(partial.as_str().to_owned());
                        c.algorithm = Some(alg.name().to_owned());
                        tx.put(Table::Ceremonies, &c.id, &c)?;
                        tx.audit(AuditEvent::ok(
                            actor,
                            names.action,
                            format!(
                                "{}: {} {} of {}, {} {check} (checked in the HSM)",
                                c.id,
                                names.part,
                                c.custodians.len(),
                                c.components,
                                names.check
                            ),
                        ));
                        Ok(c)
                    })
                    .await;
            }
            PartStep::Formed(formed) => formed,
        };
        let region = self.target_region(&ceremony.target)?;
        self.store
            .write(move |tx| {
                let mut c = with_custodian(tx, &id, &before, &actor, &check)?;
                let names_of: Vec<&str> =
                    c.custodians.iter().map(|c| c.identity.as_str()).collect();
                let note = format!(" ({}: {} of {})", c.id, names.parts, names_of.join(", "));
                let (method, kcv) = kcv_hex(&formed.kcv);
                apply_target(tx, &c.target, region, alg, &formed, actor.clone(), &note)?;
                c.state = CeremonyState::Complete;
                c.partial = None;
                c.algorithm = Some(alg.name().to_owned());
                c.kcv_method = Some(method.clone());
                c.kcv = Some(kcv.clone());
                tx.put(Table::Ceremonies, &c.id, &c)?;
                tx.audit(AuditEvent::ok(
                    actor,
                    "complete-key-ceremony",
                    format!(
                        "{}: {} {} of {}; final KCV {method} {kcv}",
                        c.id,
                        c.description,
                        names.formed,
                        names_of.join(", ")
                    ),
                ));
                Ok(c)
            })
            .await
    }
}
