//! The officer registry: who may act as an officer or an auditor.
//!
//! An officer or auditor acts only from a certificate the registry holds, by its SHA-256
//! fingerprint, for the identity the certificate carries, and not revoked
//! ([`Kms::admit_officer`], called by every officer and auditor operation after the role
//! matrix). So a lost certificate is revoked without replacing the client CA. The first
//! officers and auditors are enrolled once, on an empty registry, from the deployment's
//! configuration ([`Kms::bootstrap_officers`]); every later change is a dual-control act
//! ([`Act::RegisterOfficer`], [`Act::RevokeOfficer`]: checked here when asked for, applied here
//! in the approval's write, `custodians`).

use hsm_api::Hsm;

use crate::access::authz::{self, Operation};
use crate::access::identity::{Identity, Origin, Role};
use crate::error::{Error, Refusal, Resource, Result};
use crate::state::audit::AuditEvent;
use crate::state::records::OfficerRecord;
use crate::state::store::{Table, Tx};

use super::Kms;
use super::custodians::{Act, DualControlRequest};

/// The actor of the records of the registry's bootstrap.
const BOOTSTRAP_ACTOR: &str = "bootstrap (the service's configuration)";

/// The registry's record for an officer's or auditor's certificate (DER), checked.
fn officer_from_certificate(der: &[u8]) -> Result<(Identity, String)> {
    let not_officer = Error::InvalidArgument {
        field: "certificate_pem",
        reason: Refusal::NotAnOfficerCertificate,
    };
    let id = Identity::from_certificate(der).map_err(|_| not_officer)?;
    if !matches!(id.role(), Role::Officer | Role::Auditor) {
        return Err(Error::InvalidArgument {
            field: "certificate_pem",
            reason: Refusal::NotAnOfficerCertificate,
        });
    }
    let fp = id.fingerprint().unwrap_or_default().to_owned();
    Ok((id, fp))
}

/// A certificate as PEM or DER bytes → DER.
pub fn certificate_der(pem_or_der: &[u8]) -> Result<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    match CertificateDer::from_pem_slice(pem_or_der) {
        Ok(der) => Ok(der.to_vec()),
        Err(_) if pem_or_der.first() == Some(&0x30) => Ok(pem_or_der.to_vec()),
        Err(_) => Err(Error::InvalidArgument {
            field: "certificate_pem",
            reason: Refusal::NotAnOfficerCertificate,
        }),
    }
}

impl<H: Hsm> Kms<H> {
    /// The role matrix, then — for officers and auditors — the registry: the caller's
    /// certificate must be registered for this identity and not revoked. An identity not read
    /// from a certificate is refused (fail closed), except code of this process.
    pub(super) fn admit_officer(&self, caller: &Identity, op: Operation) -> Result<()> {
        authz::authorize(caller, op)?;
        if !matches!(caller.role(), Role::Officer | Role::Auditor) {
            return Ok(());
        }
        let fp = match caller.origin() {
            Origin::InProcess => return Ok(()),
            Origin::Unverified => {
                return Err(Error::PermissionDenied {
                    reason: Refusal::OfficerNotRegistered,
                });
            }
            Origin::Certificate(fp) => fp,
        };
        let record: Option<OfficerRecord> = self.store.snapshot()?.get(Table::Officers, fp)?;
        match record {
            Some(r) if r.identity == caller.to_string() => match r.revoked_ms {
                None => Ok(()),
                Some(_) => Err(Error::PermissionDenied {
                    reason: Refusal::OfficerRevoked,
                }),
            },
            _ => Err(Error::PermissionDenied {
                reason: Refusal::OfficerNotRegistered,
            }),
        }
    }
    /// Enrols the first officers and auditors (certificates, PEM or DER) — only into an empty
    /// registry: once anyone is registered this does nothing and returns an empty list, so a
    /// deployment may keep its bootstrap list in its configuration. One write, one record.
    pub async fn bootstrap_officers(&self, certificates: &[Vec<u8>]) -> Result<Vec<OfficerRecord>> {
        let mut entries = Vec::new();
        for c in certificates {
            let (id, fingerprint) = officer_from_certificate(&certificate_der(c)?)?;
            entries.push((id.to_string(), fingerprint));
        }
        self.store
            .write(move |tx| {
                if !tx.scan::<OfficerRecord>(Table::Officers, "")?.is_empty() {
                    return Ok(Vec::new());
                }
                let now = tx.now_ms();
                let mut out = Vec::new();
                for (identity, fingerprint) in entries {
                    let r = OfficerRecord {
                        identity,
                        fingerprint,
                        registered_ms: now,
                        registered_by: vec![BOOTSTRAP_ACTOR.to_owned()],
                        revoked_ms: None,
                        revoked_by: Vec::new(),
                    };
                    tx.put(Table::Officers, &r.fingerprint, &r)?;
                    out.push(r);
                }
                let names: Vec<String> = out
                    .iter()
                    .map(|r| format!("{} ({})", r.identity, r.fingerprint))
                    .collect();
                tx.audit(AuditEvent::ok(
                    BOOTSTRAP_ACTOR,
                    "bootstrap-officers",
                    names.join(", "),
                ));
                Ok(out)
            })
            .await
    }

    /// The registry (officers and auditors may read it).
    pub async fn list_officers(&self, caller: &Identity) -> Result<Vec<OfficerRecord>> {
        self.audited(caller, Operation::GetStatus, "officer registry", async {
            self.admit_officer(caller, Operation::GetStatus)?;
            let all: Vec<(String, OfficerRecord)> =
                self.store.snapshot()?.scan(Table::Officers, "")?;
            Ok(all.into_iter().map(|(_, r)| r).collect())
        })
        .await
    }

    /// Validates an officer act when it is asked for; its description.
    pub(super) fn check_officer_act(&self, act: &Act) -> Result<String> {
        match act {
            Act::RegisterOfficer {
                certificate_der_hex,
            } => {
                let der = hex::decode(certificate_der_hex).map_err(|_| Error::InvalidArgument {
                    field: "certificate_pem",
                    reason: Refusal::NotAnOfficerCertificate,
                })?;
                let (id, fp) = officer_from_certificate(&der)?;
                if self
                    .store
                    .snapshot()?
                    .get::<OfficerRecord>(Table::Officers, &fp)?
                    .is_some()
                {
                    return Err(Error::AlreadyExists {
                        what: Resource::Officer,
                    });
                }
                Ok(format!("register {id} (certificate {fp})"))
            }
            Act::RevokeOfficer { fingerprint } => {
                let o: OfficerRecord = self
                    .store
                    .snapshot()?
                    .get(Table::Officers, fingerprint)?
                    .ok_or(Error::NotFound {
                        what: Resource::Officer,
                    })?;
                Ok(format!("revoke {} (certificate {fingerprint})", o.identity))
            }
            _ => Err(Error::Store),
        }
    }
}

/// The officer act of `r`, approved by `approver`, in the approval's write: the officer's
/// record as it now is (a revocation of a revoked officer changes nothing).
pub(super) fn apply(
    tx: &mut Tx<'_>,
    r: &DualControlRequest,
    approver: &str,
) -> Result<OfficerRecord> {
    match &r.act {
        Act::RegisterOfficer {
            certificate_der_hex,
        } => {
            let der = hex::decode(certificate_der_hex)
                .map_err(|_| Error::StoreCorrupt("request certificate"))?;
            let (identity, fingerprint) = officer_from_certificate(&der)?;
            if tx
                .get::<OfficerRecord>(Table::Officers, &fingerprint)?
                .is_some()
            {
                return Err(Error::AlreadyExists {
                    what: Resource::Officer,
                });
            }
            let o = OfficerRecord {
                identity: identity.to_string(),
                fingerprint,
                registered_ms: tx.now_ms(),
                registered_by: vec![r.requested_by.clone(), approver.to_owned()],
                revoked_ms: None,
                revoked_by: Vec::new(),
            };
            tx.put(Table::Officers, &o.fingerprint, &o)?;
            Ok(o)
        }
        Act::RevokeOfficer { fingerprint } => {
            let mut o: OfficerRecord =
                tx.get(Table::Officers, fingerprint)?
                    .ok_or(Error::NotFound {
                        what: Resource::Officer,
                    })?;
            if o.revoked_ms.is_none() {
                o.revoked_ms = Some(tx.now_ms());
                o.revoked_by = vec![r.requested_by.clone(), approver.to_owned()];
                tx.put(Table::Officers, &o.fingerprint, &o)?;
            }
            Ok(o)
        }
        _ => Err(Error::Store),
    }
}
