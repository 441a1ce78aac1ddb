//! Caps on every repeated field and string of the KMS API, checked before a request reaches the
//! service (README "API limits" has the table; the proto comments name each cap). A request
//! over a cap is `INVALID_ARGUMENT` naming the field; it costs no store read, no HSM call and no
//! audit record (whose size a caller must not choose). The parsers behind the service refuse
//! finer (an identifier's exact length, an ATR of at most 33 bytes); these caps bound what any
//! caller can make the service carry, hash, log or store.

use crate::error::{Error, Refusal, Result};
use crate::proto::kms::v1 as pb;

/// The largest request message the server decodes (tonic's default is 4 MiB).
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// One cap: the largest length, and the reason a refusal gives.
#[derive(Debug, Clone, Copy)]
pub struct Cap {
    pub max: usize,
    pub reason: Refusal,
}

/// Identifiers, names, ids, regions, serials: bytes.
pub const NAME: Cap = Cap {
    max: 64,
    reason: Refusal::LongerThan64Bytes,
};
/// An ATR (ISO/IEC 7816-3 allows 33 bytes; the identifier parser refuses above that).
pub const ATR: Cap = Cap {
    max: 64,
    reason: Refusal::LongerThan64Bytes,
};
/// A card challenge (8 bytes for a DES-family key, 16 for SM4).
pub const CHALLENGE: Cap = Cap {
    max: 32,
    reason: Refusal::LongerThan32Bytes,
};
/// `key_names` and `challenges` of one injection (the service also caps them at the
/// template's key count and refuses repeats).
pub const KEYS_PER_REQUEST: Cap = Cap {
    max: 64,
    reason: Refusal::MoreThan64Entries,
};
/// PSAM serials of one registration.
pub const SERIALS: Cap = Cap {
    max: 10_000,
    reason: Refusal::MoreThan10000Entries,
};
/// Components of one key.
pub const COMPONENTS: Cap = Cap {
    max: 9,
    reason: Refusal::MoreThan9Entries,
};
/// A component's hex (a 32-byte key is 64 digits; white space is allowed).
pub const COMPONENT_HEX: Cap = Cap {
    max: 128,
    reason: Refusal::LongerThan128Bytes,
};
/// A KCV's hex.
pub const KCV_HEX: Cap = Cap {
    max: 32,
    reason: Refusal::LongerThan32Bytes,
};
/// A template's TOML text.
pub const TEMPLATE_TOML: Cap = Cap {
    max: 256 * 1024,
    reason: Refusal::LongerThan256KiB,
};
/// A custodian's LMK share text.
pub const SHARE: Cap = Cap {
    max: 512,
    reason: Refusal::LongerThan512Bytes,
};
/// An officer's certificate (PEM).
pub const CERTIFICATE: Cap = Cap {
    max: 8 * 1024,
    reason: Refusal::LongerThan8KiB,
};
/// A key record's id (`template/key/level/region/version`).
pub const KEY_ID: Cap = Cap {
    max: 128,
    reason: Refusal::LongerThan128Bytes,
};
/// A blacklisting reason.
pub const REASON: Cap = Cap {
    max: 800,
    reason: Refusal::LongerThan800Bytes,
};

fn check(field: &'static str, len: usize, cap: Cap) -> Result<()> {
    if len > cap.max {
        return Err(Error::InvalidArgument {
            field,
            reason: cap.reason,
        });
    }
    Ok(())
}

/// A request whose every field is within its cap.
pub(super) trait Bounded {
    /// Refuses the first field over its cap.
    fn check_limits(&self) -> Result<()>;
}

fn card(c: &Option<pb::CardIdentity>) -> Result<()> {
    if let Some(c) = c {
        check("card_identifier", c.card_identifier.len(), NAME)?;
        check("card_number", c.card_number.len(), NAME)?;
        check(
            "social_security_number",
            c.social_security_number.len(),
            NAME,
        )?;
        check("atr", c.atr.len(), ATR)?;
    }
    Ok(())
}

fn components(list: &[pb::Component]) -> Result<()> {
    check("components", list.len(), COMPONENTS)?;
    for c in list {
        check("components.hex", c.hex.len(), COMPONENT_HEX)?;
        check("components.kcv_hex", c.kcv_hex.len(), KCV_HEX)?;
    }
    Ok(())
}

impl Bounded for pb::InjectCardKeysRequest {
    fn check_limits(&self) -> Result<()> {
        card(&self.card)?;
        check("template_id", self.template_id.len(), NAME)?;
        check("key_names", self.key_names.len(), KEYS_PER_REQUEST)?;
        for n in &self.key_names {
            check("key_names", n.len(), NAME)?;
        }
        check("challenges", self.challenges.len(), KEYS_PER_REQUEST)?;
        for c in &self.challenges {
            check("challenges.key_name", c.key_name.len(), NAME)?;
            check("challenges.challenge", c.challenge.len(), CHALLENGE)?;
        }
        Ok(())
    }
}

impl Bounded for pb::InitialiseBlankCardRequest {
    fn check_limits(&self) -> Result<()> {
        card(&self.card)?;
        check("template_id", self.template_id.len(), NAME)?;
        check("challenge", self.challenge.len(), CHALLENGE)
    }
}

impl Bounded for pb::RegisterPsamsRequest {
    fn check_limits(&self) -> Result<()> {
        check("serials", self.serials.len(), SERIALS)?;
        for s in &self.serials {
            check("serials", s.len(), NAME)?;
        }
        check("region", self.region.len(), NAME)?;
        check("template_id", self.template_id.len(), NAME)?;
        check("psam_profile", self.psam_profile.len(), NAME)
    }
}

impl Bounded for pb::GetPsamKeySetRequest {
    fn check_limits(&self) -> Result<()> {
        check("serial", self.serial.len(), NAME)
    }
}

impl Bounded for pb::RegisterCardRequest {
    fn check_limits(&self) -> Result<()> {
        card(&self.card)?;
        check("template_id", self.template_id.len(), NAME)?;
        check(
            "replaces_card_identifier",
            self.replaces_card_identifier.len(),
            NAME,
        )
    }
}

impl Bounded for pb::ExportBlacklistRequest {
    fn check_limits(&self) -> Result<()> {
        Ok(())
    }
}

impl Bounded for pb::ChangeCardStatusRequest {
    fn check_limits(&self) -> Result<()> {
        check("card_identifier", self.card_identifier.len(), NAME)?;
        check("reason", self.reason.len(), REASON)
    }
}

impl Bounded for pb::CardRef {
    fn check_limits(&self) -> Result<()> {
        check("card_identifier", self.card_identifier.len(), NAME)
    }
}

impl Bounded for pb::BlacklistCardRequest {
    fn check_limits(&self) -> Result<()> {
        check("card_identifier", self.card_identifier.len(), NAME)?;
        check("reason", self.reason.len(), REASON)
    }
}

impl Bounded for pb::GetStatusRequest {
    fn check_limits(&self) -> Result<()> {
        Ok(())
    }
}

impl Bounded for pb::GetAuditCheckpointRequest {
    fn check_limits(&self) -> Result<()> {
        Ok(())
    }
}

impl Bounded for pb::LoadTemplateRequest {
    fn check_limits(&self) -> Result<()> {
        check("toml", self.toml.len(), TEMPLATE_TOML)
    }
}

impl Bounded for pb::ImportRootKeyRequest {
    fn check_limits(&self) -> Result<()> {
        check("template_id", self.template_id.len(), NAME)?;
        check("key_name", self.key_name.len(), NAME)?;
        components(&self.components)
    }
}

impl Bounded for pb::GenerateRootKeyRequest {
    fn check_limits(&self) -> Result<()> {
        check("template_id", self.template_id.len(), NAME)?;
        check("key_name", self.key_name.len(), NAME)
    }
}

impl Bounded for pb::DeriveHierarchyRequest {
    fn check_limits(&self) -> Result<()> {
        check("template_id", self.template_id.len(), NAME)
    }
}

impl Bounded for pb::ImportVendorTransportKeyRequest {
    fn check_limits(&self) -> Result<()> {
        check("template_id", self.template_id.len(), NAME)?;
        components(&self.components)
    }
}

impl Bounded for pb::RegisterEndpointRequest {
    fn check_limits(&self) -> Result<()> {
        check("name", self.name.len(), NAME)?;
        check("region", self.region.len(), NAME)?;
        check("transport_algorithm", self.transport_algorithm.len(), NAME)?;
        components(&self.components)
    }
}

impl Bounded for pb::ListKeysRequest {
    fn check_limits(&self) -> Result<()> {
        check("template_id", self.template_id.len(), NAME)
    }
}

impl Bounded for pb::UnsealHsmRequest {
    fn check_limits(&self) -> Result<()> {
        check("share", self.share.len(), SHARE)
    }
}

impl Bounded for pb::AcceptApplicantRowRequest {
    fn check_limits(&self) -> Result<()> {
        check("batch_id", self.batch_id.len(), NAME)?;
        check("note", self.note.len(), REASON)
    }
}

impl Bounded for pb::GetApplicantBatchRequest {
    fn check_limits(&self) -> Result<()> {
        check("batch_id", self.batch_id.len(), NAME)
    }
}

/// An applicant file's chunks: each within [`MAX_REQUEST_BYTES`] (the decoder's limit), the
/// whole file within its own cap (`registry::file::MAX_FILE_BYTES`, counted as it arrives), the
/// batch id checked by the service.
impl Bounded for tonic::Streaming<pb::ApplicantFileChunk> {
    fn check_limits(&self) -> Result<()> {
        Ok(())
    }
}

impl Bounded for pb::ListOfficersRequest {
    fn check_limits(&self) -> Result<()> {
        Ok(())
    }
}

impl Bounded for pb::VerifyAuditTrailRequest {
    fn check_limits(&self) -> Result<()> {
        Ok(())
    }
}

impl Bounded for pb::ExportAuditTrailRequest {
    fn check_limits(&self) -> Result<()> {
        Ok(())
    }
}

impl Bounded for pb::SealHsmRequest {
    fn check_limits(&self) -> Result<()> {
        Ok(())
    }
}

impl Bounded for pb::RunHsmSelfTestRequest {
    fn check_limits(&self) -> Result<()> {
        Ok(())
    }
}

impl Bounded for pb::TakeLmkShareRequest {
    fn check_limits(&self) -> Result<()> {
        Ok(())
    }
}

impl Bounded for pb::TakeBackupShareRequest {
    fn check_limits(&self) -> Result<()> {
        check("request_id", self.request_id.len(), NAME)
    }
}

impl Bounded for pb::SubmitBackupShareRequest {
    fn check_limits(&self) -> Result<()> {
        check("ceremony_id", self.ceremony_id.len(), NAME)?;
        check("share", self.share.len(), SHARE)
    }
}

impl Bounded for pb::CommitLmkRotationRequest {
    fn check_limits(&self) -> Result<()> {
        Ok(())
    }
}

impl Bounded for pb::ListRequestsRequest {
    fn check_limits(&self) -> Result<()> {
        Ok(())
    }
}

impl Bounded for pb::RequestRef {
    fn check_limits(&self) -> Result<()> {
        check("id", self.id.len(), NAME)
    }
}

impl Bounded for pb::TransportIssueRef {
    fn check_limits(&self) -> Result<()> {
        check("request_id", self.request_id.len(), NAME)
    }
}

impl Bounded for pb::KeyCeremonyRef {
    fn check_limits(&self) -> Result<()> {
        check("id", self.id.len(), NAME)
    }
}

impl Bounded for pb::RequestActRequest {
    fn check_limits(&self) -> Result<()> {
        use pb::request_act_request::Act;
        match &self.act {
            Some(Act::RegisterOfficer(a)) => {
                check("certificate_pem", a.certificate_pem.len(), CERTIFICATE)
            }
            Some(Act::RevokeOfficer(a)) => check("fingerprint", a.fingerprint.len(), NAME),
            Some(Act::GenerateRoot(a)) => {
                check("template_id", a.template_id.len(), NAME)?;
                check("key_name", a.key_name.len(), NAME)
            }
            Some(Act::RetireKey(a)) => check("key_id", a.key_id.len(), KEY_ID),
            Some(Act::UnblacklistCard(a)) => {
                check("card_identifier", a.card_identifier.len(), NAME)
            }
            Some(Act::ReplaceTransportKey(a)) => {
                check("name", a.name.len(), NAME)?;
                check("transport_algorithm", a.transport_algorithm.len(), NAME)
            }
            Some(Act::IssueTransportKey(a)) => {
                check("name", a.name.len(), NAME)?;
                check("region", a.region.len(), NAME)?;
                check("transport_algorithm", a.transport_algorithm.len(), NAME)
            }
            Some(Act::RegisterEndpoint(a)) => {
                check("name", a.name.len(), NAME)?;
                check("region", a.region.len(), NAME)?;
                check("transport_algorithm", a.transport_algorithm.len(), NAME)
            }
            Some(Act::RevokeEndpoint(a)) => check("name", a.name.len(), NAME),
            Some(Act::BackupRoot(a)) => check("key_id", a.key_id.len(), KEY_ID),
            Some(Act::RestoreRoot(a)) => {
                check("template_id", a.template_id.len(), NAME)?;
                check("key_name", a.key_name.len(), NAME)?;
                check("kcv", a.kcv.len(), NAME)?;
                check("backup", a.backup.len(), NAME)
            }
            Some(Act::RotateLmk(_)) | None => Ok(()),
        }
    }
}

impl Bounded for pb::StartKeyCeremonyRequest {
    fn check_limits(&self) -> Result<()> {
        use pb::start_key_ceremony_request::Target;
        match &self.target {
            Some(Target::Root(t)) => {
                check("template_id", t.template_id.len(), NAME)?;
                check("key_name", t.key_name.len(), NAME)
            }
            Some(Target::VendorTransport(t)) => check("template_id", t.template_id.len(), NAME),
            Some(Target::Endpoint(t)) => {
                check("name", t.name.len(), NAME)?;
                check("region", t.region.len(), NAME)?;
                check("transport_algorithm", t.transport_algorithm.len(), NAME)
            }
            None => Ok(()),
        }
    }
}

impl Bounded for pb::SubmitComponentRequest {
    fn check_limits(&self) -> Result<()> {
        check("ceremony_id", self.ceremony_id.len(), NAME)?;
        components(self.component.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cap_names_its_field() {
        let mut r = pb::InjectCardKeysRequest {
            key_names: vec!["K".repeat(65)],
            ..Default::default()
        };
        assert_eq!(
            r.check_limits().unwrap_err().to_string(),
            "invalid key_names: longer than 64 bytes"
        );
        r.key_names = vec!["K".to_owned(); 65];
        assert_eq!(
            r.check_limits().unwrap_err().to_string(),
            "invalid key_names: more than 64 entries"
        );
        r.key_names = vec!["K".to_owned(); 64];
        assert!(r.check_limits().is_ok());
        let b = pb::BlacklistCardRequest {
            card_identifier: String::new(),
            reason: "r".repeat(801),
        };
        assert_eq!(
            b.check_limits().unwrap_err().to_string(),
            "invalid reason: longer than 800 bytes"
        );
        let u = pb::UnsealHsmRequest {
            share: "s".repeat(513),
        };
        assert!(u.check_limits().is_err());
    }
}
