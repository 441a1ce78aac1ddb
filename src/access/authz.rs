//! Who may do what, where: the whole authorisation matrix in one place.
//!
//! Deny by default. A caller's role and region come from its certificate only
//! ([`crate::access::identity`]). Every RPC names its [`Operation`]; [`authorize`] is called first,
//! before any store or HSM work, and for operations on a card, a PSAM or an endpoint the target's
//! region is checked against the caller's with [`authorize_region`].
//!
//! | operation | station | psam-line | registrar | officer | auditor | service |
//! |---|---|---|---|---|---|---|
//! | inject card keys, initialise blank card | own region | – | – | – | – | – |
//! | register PSAMs, get a PSAM key set | – | own region | – | – | – | – |
//! | register / blacklist / get card, change a card's status (activate, suspend, resume, lost, cancel) | – | – | own region | – | – | – |
//! | export the signed blacklist | – | – | any region | – | – | – |
//! | accept or reject a card, accept a rejected applicant row by hand | – | – | province only | – | – | – |
//! | submit an applicant batch | – | – | a city, its own | – | – | – |
//! | read an applicant batch | – | – | own region | – | – | – |
//! | administration (templates, roots, hierarchy, endpoints, keys) | – | – | – | yes | – | – |
//! | service status | – | – | – | yes | yes | – |
//! | audit checkpoint | – | – | – | yes | yes | – |
//!
//! "Own region": a city caller acts on its city only; a province-level caller (the provincial
//! card centre, `440000`) on every city of its province. Acceptance is the province's verdict
//! (notice N4; separation of duties): [`authorize_province`] for accepting, [`authorize_city`]
//! for submitting, so that no city accepts the data it submits. Nobody gets a clear key: no
//! operation exists that would return one.

use crate::access::identity::{Identity, Role};
use crate::card::region::Region;
use crate::error::{Error, Refusal, Result};

/// Every operation of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    InjectCardKeys,
    InitialiseBlankCard,
    RegisterPsams,
    GetPsamKeySet,
    RegisterCard,
    AcceptCard,
    BlacklistCard,
    ChangeCardStatus,
    ExportBlacklist,
    GetCard,
    Administer,
    GetStatus,
    AuditCheckpoint,
    SubmitApplicantBatch,
    AcceptApplicantRow,
    GetApplicantBatch,
    /// A card holder's personal data in clear (a city registrar of the card's city).
    ReadCardPersonalData,
}

impl Operation {
    /// Every operation, for tests that walk the matrix.
    pub const ALL: [Operation; 17] = [
        Operation::InjectCardKeys,
        Operation::InitialiseBlankCard,
        Operation::RegisterPsams,
        Operation::GetPsamKeySet,
        Operation::RegisterCard,
        Operation::AcceptCard,
        Operation::BlacklistCard,
        Operation::ChangeCardStatus,
        Operation::ExportBlacklist,
        Operation::GetCard,
        Operation::Administer,
        Operation::GetStatus,
        Operation::AuditCheckpoint,
        Operation::SubmitApplicantBatch,
        Operation::AcceptApplicantRow,
        Operation::GetApplicantBatch,
        Operation::ReadCardPersonalData,
    ];

    /// The name used in audit records.
    pub const fn name(self) -> &'static str {
        match self {
            Operation::InjectCardKeys => "inject-card-keys",
            Operation::InitialiseBlankCard => "initialise-blank-card",
            Operation::RegisterPsams => "register-psams",
            Operation::GetPsamKeySet => "get-psam-key-set",
            Operation::RegisterCard => "register-card",
            Operation::AcceptCard => "accept-card",
            Operation::BlacklistCard => "blacklist-card",
            Operation::ChangeCardStatus => "change-card-status",
            Operation::ExportBlacklist => "export-blacklist",
            Operation::GetCard => "get-card",
            Operation::Administer => "administer",
            Operation::GetStatus => "get-status",
            Operation::AuditCheckpoint => "audit-checkpoint",
            Operation::SubmitApplicantBatch => "submit-applicant-batch",
            Operation::AcceptApplicantRow => "accept-applicant-row",
            Operation::GetApplicantBatch => "get-applicant-batch",
            Operation::ReadCardPersonalData => "read-card-personal-data",
        }
    }
}

/// The matrix: which roles may call `op` at all.
pub const fn allowed(role: Role, op: Operation) -> bool {
    use Operation as O;
    matches!(
        (role, op),
        (Role::Station, O::InjectCardKeys | O::InitialiseBlankCard)
            | (Role::PsamLine, O::RegisterPsams | O::GetPsamKeySet)
            | (
                Role::Registrar,
                O::RegisterCard
                    | O::AcceptCard
                    | O::BlacklistCard
                    | O::ChangeCardStatus
                    | O::ExportBlacklist
                    | O::GetCard
                    | O::SubmitApplicantBatch
                    | O::AcceptApplicantRow
                    | O::GetApplicantBatch
                    | O::ReadCardPersonalData
            )
            | (
                Role::Officer,
                O::Administer | O::GetStatus | O::AuditCheckpoint
            )
            | (Role::Auditor, O::GetStatus | O::AuditCheckpoint)
    )
}

/// Refuses `caller` for `op` unless the matrix allows it.
pub fn authorize(caller: &Identity, op: Operation) -> Result<()> {
    if allowed(caller.role(), op) {
        Ok(())
    } else {
        Err(Error::PermissionDenied {
            reason: Refusal::RoleNotAllowed,
        })
    }
}

/// Refuses `caller` unless its region covers `target` (a city or province code): the same city,
/// or the caller is the province of `target`.
pub fn authorize_region(caller: &Identity, target: &str) -> Result<()> {
    let Some(own) = caller.region() else {
        return Err(Error::PermissionDenied {
            reason: Refusal::CallerHasNoRegion,
        });
    };
    if covers(own, target) {
        Ok(())
    } else {
        Err(Error::PermissionDenied {
            reason: Refusal::OutsideCallerRegion,
        })
    }
}

/// Refuses `caller` unless its region is a province (the provincial card centre): the
/// province's verdicts (accepting a card or a row) are never a city's.
pub fn authorize_province(caller: &Identity) -> Result<&'static Region> {
    match caller.region().map(Region::lookup) {
        Some(Ok(region)) if !region.is_city() => Ok(region),
        _ => Err(Error::PermissionDenied {
            reason: Refusal::ProvinceOnly,
        }),
    }
}

/// Refuses `caller` unless its region is a city, which it returns: applicant data is
/// submitted by the city that collected it.
pub fn authorize_city(caller: &Identity) -> Result<&'static Region> {
    match caller.region().map(Region::lookup) {
        Some(Ok(region)) if region.is_city() => Ok(region),
        _ => Err(Error::PermissionDenied {
            reason: Refusal::CityRegistrarOnly,
        }),
    }
}

/// Whether region `own` covers region `target`.
pub fn covers(own: &str, target: &str) -> bool {
    if own == target {
        return true;
    }
    match (Region::lookup(own), Region::lookup(target)) {
        (Ok(own), Ok(target)) => !own.is_city() && target.province().code == own.code,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(role: Role, region: Option<&str>) -> Identity {
        Identity::new(role, region, "t-1").unwrap()
    }

    /// Every cell of the matrix, written out: a change to `allowed` must change this table.
    #[test]
    fn the_matrix_cell_by_cell() {
        use Operation as O;
        let expected: &[(Role, &[Operation])] = &[
            (Role::Station, &[O::InjectCardKeys, O::InitialiseBlankCard]),
            (Role::PsamLine, &[O::RegisterPsams, O::GetPsamKeySet]),
            (
                Role::Registrar,
                &[
                    O::RegisterCard,
                    O::AcceptCard,
                    O::BlacklistCard,
                    O::ChangeCardStatus,
                    O::ExportBlacklist,
                    O::GetCard,
                    O::SubmitApplicantBatch,
                    O::AcceptApplicantRow,
                    O::GetApplicantBatch,
                    O::ReadCardPersonalData,
                ],
            ),
            (
                Role::Officer,
                &[O::Administer, O::GetStatus, O::AuditCheckpoint],
            ),
            (Role::Auditor, &[O::GetStatus, O::AuditCheckpoint]),
            (Role::Service, &[]),
        ];
        for (role, ops) in expected {
            for op in Operation::ALL {
                assert_eq!(allowed(*role, op), ops.contains(&op), "{role:?} × {op:?}");
                let region = matches!(role, Role::Station | Role::PsamLine | Role::Registrar)
                    .then_some("440100");
                let outcome = authorize(&id(*role, region), op);
                assert_eq!(outcome.is_ok(), ops.contains(&op), "{role:?} × {op:?}");
            }
        }
    }

    #[test]
    fn acceptance_is_the_provinces_submission_a_citys() {
        let city = id(Role::Registrar, Some("440100"));
        let province = id(Role::Registrar, Some("440000"));
        assert!(matches!(
            authorize_province(&city),
            Err(Error::PermissionDenied { .. })
        ));
        assert_eq!(authorize_province(&province).unwrap().code, "440000");
        assert_eq!(authorize_city(&city).unwrap().code, "440100");
        assert!(authorize_city(&province).is_err());
        assert!(authorize_city(&id(Role::Officer, None)).is_err());
        assert!(authorize_province(&id(Role::Officer, None)).is_err());
    }

    #[test]
    fn regions() {
        let gz = id(Role::Station, Some("440100"));
        let province = id(Role::Station, Some("440000"));
        assert!(authorize_region(&gz, "440100").is_ok());
        assert!(matches!(
            authorize_region(&gz, "440300"),
            Err(Error::PermissionDenied { .. })
        ));
        assert!(
            authorize_region(&gz, "440000").is_err(),
            "a city does not cover its province"
        );
        assert!(authorize_region(&province, "440300").is_ok());
        assert!(authorize_region(&province, "440000").is_ok());
        assert!(
            authorize_region(&province, "450100").is_err(),
            "another province"
        );
        let officer = id(Role::Officer, None);
        assert!(authorize_region(&officer, "440100").is_err());
    }
}
