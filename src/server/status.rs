//! The one place errors become gRPC statuses.
//!
//! Every refusal carries, beside its human message, a `google.rpc.ErrorInfo` in the standard
//! rich error model (the `grpc-status-details-bin` trailer, through `tonic-types`): domain
//! [`DOMAIN`], `reason` a stable UPPER_SNAKE code, and `metadata` naming the field, line or
//! component concerned (never a value: a value may be a secret or personal data). A client
//! branches on the reason, never on the message. Internal failures get the code `INTERNAL`, the
//! message "internal error" and no detail; their detail goes to the log only.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;

/// The `ErrorInfo.domain` of every reason code of this service.
pub const DOMAIN: &str = "sscard-kms";

/// The metadata key of gRPC's retry pushback (gRFC A6), in milliseconds.
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// What a refusal says to a client: the gRPC code, the human message, the reason code and the
/// metadata of its `ErrorInfo`.
struct Refused {
    code: Code,
    message: String,
    reason: String,
    metadata: HashMap<String, String>,
}

impl Refused {
    fn new(code: Code, message: String, reason: impl Into<String>) -> Refused {
        Refused {
            code,
            message,
            reason: reason.into(),
            metadata: HashMap::new(),
        }
    }

    fn with(mut self, key: &str, value: impl ToString) -> Refused {
        self.metadata.insert(key.to_owned(), value.to_string());
        self
    }

    fn into_status(self) -> Status {
        Status::with_error_details(
            self.code,
            self.message,
            ErrorDetails::with_error_info(self.reason, DOMAIN, self.metadata),
        )
    }
}

/// The one mapping from errors to gRPC status. Internal failures get a generic message and no
/// detail; their detail goes to the log only.
pub fn to_status(e: &Error) -> Status {
    let text = || e.to_string();
    let refused = match e {
        Error::InvalidArgument { field, reason } => {
            Refused::new(Code::InvalidArgument, text(), reason.code()).with("field", field)
        }
        Error::InvalidIdentifier { field, reason } => {
            Refused::new(Code::InvalidArgument, text(), reason.code()).with("field", field)
        }
        Error::Template { line, .. } => {
            Refused::new(Code::InvalidArgument, text(), "TEMPLATE_INVALID").with("line", line)
        }
        Error::ApplicantFile(fault) => {
            Refused::new(Code::InvalidArgument, text(), "APPLICANT_FILE_UNREADABLE")
                .with("line", fault.line)
        }
        Error::Profile { file, line, .. } => {
            Refused::new(Code::InvalidArgument, text(), "PROFILE_INVALID")
                .with("file", file)
                .with("line", line)
        }
        Error::NotFound { what } => {
            Refused::new(Code::NotFound, text(), format!("{}_NOT_FOUND", what.code()))
        }
        Error::OwnedElsewhere { key, owner } => {
            let owner = match owner {
                crate::card::template::KeyOwner::Province => "province",
                crate::card::template::KeyOwner::City(city) => city.code,
            };
            Refused::new(Code::FailedPrecondition, text(), "KEY_OWNED_ELSEWHERE")
                .with("key", key)
                .with("owner", owner)
        }
        Error::UnknownTemplate(_) => Refused::new(Code::NotFound, text(), "TEMPLATE_NOT_FOUND"),
        // One answer whether the card is unknown or its data differ (no existence oracle): the
        // detail is for the audit record only, never in the status.
        Error::NoMatchingCard { .. } => Refused::new(Code::NotFound, text(), "NO_MATCHING_CARD"),
        Error::ResourceExhausted { retry_after_ms, .. } => {
            let mut status = Refused::new(Code::ResourceExhausted, text(), "RATE_LIMITED")
                .with("retry_after_ms", retry_after_ms)
                .into_status();
            // gRPC's retry pushback (gRFC A6): clients that retry wait this long.
            if let Ok(value) = retry_after_ms.to_string().parse() {
                status.metadata_mut().insert(RETRY_PUSHBACK, value);
            }
            return status;
        }
        Error::AlreadyExists { what } => Refused::new(
            Code::AlreadyExists,
            text(),
            format!("{}_ALREADY_EXISTS", what.code()),
        ),
        Error::FailedPrecondition { reason } => {
            Refused::new(Code::FailedPrecondition, text(), reason.code())
        }
        Error::PermissionDenied { reason } => {
            Refused::new(Code::PermissionDenied, text(), reason.code())
        }
        Error::Identity { .. } => Refused::new(Code::Unauthenticated, text(), "IDENTITY_INVALID"),
        Error::NoClientCertificate => {
            Refused::new(Code::Unauthenticated, text(), "CLIENT_CERTIFICATE_REQUIRED")
        }
        Error::NoIdentity => Refused::new(Code::Unauthenticated, text(), "IDENTITY_MISSING"),
        Error::AmbiguousIdentity { .. } => {
            Refused::new(Code::Unauthenticated, text(), "IDENTITY_AMBIGUOUS")
        }
        Error::Certificate { .. } => {
            Refused::new(Code::Unauthenticated, text(), "CERTIFICATE_UNREADABLE")
        }
        Error::Hsm(h) => return hsm_status(h),
        Error::MissingInput(_)
        | Error::AuditBroken
        | Error::Store
        | Error::StoreCorrupt(_)
        | Error::Tls { .. }
        | Error::Pki { .. }
        | Error::PkiFile { .. }
        | Error::CertGen(_)
        | Error::File { .. }
        | Error::Stdin(_)
        | Error::Remote { .. }
        | Error::ListNotGenuine(_) => {
            tracing::error!(error = %e, "internal error");
            return internal();
        }
    };
    refused.into_status()
}

/// `INTERNAL`, "internal error", no detail.
fn internal() -> Status {
    Status::internal("internal error")
}

/// The HSM's errors, mapped by variant: what a caller's input or the HSM's state explains gets a
/// reason code; anything else (a corrupt token, storage, the remote protocol) is internal. The
/// match is exhaustive: a new HSM error variant needs a decision here.
fn hsm_status(e: &hsm_api::Error) -> Status {
    use hsm_api::Error as H;
    let text = e.to_string();
    let refused = match e {
        H::Sealed => Refused::new(Code::FailedPrecondition, text, "HSM_SEALED"),
        H::Uninitialised => Refused::new(Code::FailedPrecondition, text, "HSM_UNINITIALISED"),
        H::SelfTestFailed(_) | H::SelfTest(_) => {
            Refused::new(Code::FailedPrecondition, text, "HSM_SELF_TEST_FAILED")
        }
        H::AlreadyInitialised => {
            Refused::new(Code::FailedPrecondition, text, "HSM_ALREADY_INITIALISED")
        }
        H::Unavailable => Refused::new(Code::Unavailable, text, "HSM_UNAVAILABLE"),
        // Input a caller gave: components and their KCVs, key lengths, challenges, shares.
        H::KeyLength { .. } => Refused::new(Code::InvalidArgument, text, "KEY_LENGTH_INVALID"),
        H::WeakKey => Refused::new(Code::InvalidArgument, text, "WEAK_KEY"),
        H::Hex { field } => {
            Refused::new(Code::InvalidArgument, text, "NOT_HEX").with("field", field)
        }
        H::DataLength { field, .. } => {
            Refused::new(Code::InvalidArgument, text, "DATA_LENGTH_INVALID").with("field", field)
        }
        H::AtrTooShort(_) => Refused::new(Code::InvalidArgument, text, "ATR_TOO_SHORT"),
        H::RegionCode(_) => Refused::new(Code::InvalidArgument, text, "REGION_CODE_INVALID"),
        H::ComponentKcv { index } => {
            Refused::new(Code::InvalidArgument, text, "COMPONENT_KCV_MISMATCH")
                .with("component", index)
        }
        H::Count { field, .. } => {
            Refused::new(Code::InvalidArgument, text, "COUNT_OUT_OF_RANGE").with("field", field)
        }
        H::UnknownAlgorithm(_) => Refused::new(Code::InvalidArgument, text, "ALGORITHM_UNKNOWN"),
        H::Share(_) => Refused::new(Code::InvalidArgument, text, "LMK_SHARE_REFUSED"),
        H::LmkKcvMismatch => Refused::new(Code::InvalidArgument, text, "LMK_SHARES_MISMATCH"),
        // A secret part already taken, or never made, or dropped at a seal.
        H::PartNotAvailable => Refused::new(Code::FailedPrecondition, text, "PART_NOT_AVAILABLE"),
        // A request the keys involved do not allow (e.g. an SM4 key under a TDES transport key).
        H::Unsupported { .. } => {
            Refused::new(Code::FailedPrecondition, text, "OPERATION_UNSUPPORTED")
        }
        H::KeyBlockKbpk { .. } => {
            Refused::new(Code::FailedPrecondition, text, "KBPK_ALGORITHM_MISMATCH")
        }
        H::KeyBlockKbpkStrength { .. } => {
            Refused::new(Code::FailedPrecondition, text, "KBPK_TOO_WEAK")
        }
        H::NotExportable => Refused::new(Code::FailedPrecondition, text, "KEY_NOT_EXPORTABLE"),
        H::WrongUsage { .. } => Refused::new(Code::FailedPrecondition, text, "KEY_USAGE_MISMATCH"),
        H::KcvLength { .. }
        | H::Verification
        | H::KeyBlockTruncated
        | H::KeyBlockLength { .. }
        | H::KeyBlockVersion(_)
        | H::KeyBlockHeader { .. }
        | H::KeyBlockOptionalBlock { .. }
        | H::KeyBlockEncoding
        | H::KeyBlockMac
        | H::KeyBlockKeyLength
        | H::KeyBlockCheckValue { .. }
        | H::KeyBlockTooLong(_)
        | H::Random
        | H::RotationNotPrepared
        | H::StatePoisoned
        | H::Storage(_)
        | H::Protocol => {
            tracing::error!(error = %e, "HSM error");
            return internal();
        }
    };
    refused.into_status()
}

pub(super) fn status(e: Error) -> Status {
    to_status(&e)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use hsm_api::{Algorithm, Error as H};
    use tonic::Code;
    use tonic_types::StatusExt;

    use super::{DOMAIN, to_status};
    use crate::card::identifiers::IdentifierFault;
    use crate::card::profile::DataFile;
    use crate::card::template::TemplateFault;
    use crate::error::{Error, Refusal, Resource};

    /// README's reason-code table: code → (gRPC status name, where tested).
    fn readme_table() -> BTreeMap<String, (String, String)> {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("\n## ")
            .find(|s| s.starts_with("Errors a program can act on"))
            .expect("README has the reason-code section");
        section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
                (
                    cells[0].trim_matches('`').to_owned(),
                    (
                        cells[1].trim_matches('`').to_owned(),
                        cells[cells.len() - 1].to_owned(),
                    ),
                )
            })
            .collect()
    }

    /// `PermissionDenied` → `PERMISSION_DENIED`.
    fn status_name(code: Code) -> String {
        let mut out = String::new();
        for (i, c) in format!("{code:?}").chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_uppercase());
        }
        out
    }

    /// The reason and metadata `e` reaches a client with; its gRPC code must be README's.
    fn sent(e: Error) -> (String, std::collections::HashMap<String, String>) {
        let status = to_status(&e);
        let info = status
            .get_details_error_info()
            .unwrap_or_else(|| panic!("no ErrorInfo for {e:?}"));
        assert_eq!(info.domain, DOMAIN);
        let table = readme_table();
        let (grpc, _) = table
            .get(&info.reason)
            .unwrap_or_else(|| panic!("{} is not in README's table", info.reason));
        assert_eq!(*grpc, status_name(status.code()), "{}", info.reason);
        (info.reason, info.metadata)
    }

    /// The errors behind the codes README marks `unit`: reachable only from inside.
    fn internal_only() -> Vec<Error> {
        let pd = |reason| Error::PermissionDenied { reason };
        let fp = |reason| Error::FailedPrecondition { reason };
        let ia = |reason| Error::InvalidArgument {
            field: "config",
            reason,
        };
        vec![
            pd(Refusal::CallerHasNoRegion),
            fp(Refusal::AuditTrailEmpty),
            fp(Refusal::StoreInUse),
            fp(Refusal::StoreNotEmpty),
            fp(Refusal::StoreSchemaNewer),
            ia(Refusal::Between1And1024),
            ia(Refusal::CheckpointFile),
            fp(Refusal::CardChangedDuringRequest),
            fp(Refusal::TransportKeyChanged),
            fp(Refusal::KeyVersionNotHeld),
            fp(Refusal::NoBlankCardKey),
            fp(Refusal::WriteKeyLcMismatch),
            fp(Refusal::PublishedTestLmk),
            ia(Refusal::ShareHandover),
            Error::Hsm(H::Count {
                field: "components".into(),
                expected: "2 to 9".into(),
            }),
            Error::Hsm(H::SelfTestFailed("sm4-ecb".to_owned())),
            Error::Hsm(H::AlreadyInitialised),
            Error::Hsm(H::Unsupported {
                op: "sm4 dispersion".into(),
                alg: Algorithm::Tdes2,
            }),
            Error::Hsm(H::KeyBlockKbpk {
                version: 'D',
                expected: "AES".into(),
            }),
            Error::Hsm(H::KeyBlockKbpkStrength {
                kbpk: Algorithm::Tdes2,
                key: Algorithm::Aes256,
            }),
            Error::Hsm(H::NotExportable),
            Error::Hsm(H::WrongUsage {
                usage: "E5".into(),
                operation: "wrap".into(),
            }),
            Error::InvalidIdentifier {
                field: "region",
                reason: IdentifierFault::NotACity,
            },
            Error::Hsm(H::LmkKcvMismatch),
            Error::Hsm(H::RegionCode("4401".to_owned())),
            Error::Hsm(H::UnknownAlgorithm("rc4".to_owned())),
            ia(Refusal::ConfigInvalid),
            Error::Profile {
                file: DataFile::CosProfile,
                line: 3,
                fault: TemplateFault::NoKeys,
            },
            ia(Refusal::NotASocketAddress),
            ia(Refusal::EndpointForLocalHsm),
            ia(Refusal::DispersionMethod),
            ia(Refusal::NoDispersionForAlgorithm),
            ia(Refusal::FileTooLarge),
            ia(Refusal::UploadInterrupted),
            ia(Refusal::EncodingName),
            ia(Refusal::ConnectionOptions),
            ia(Refusal::NotAUrl),
            ia(Refusal::ReportUnwritable),
            Error::NotFound {
                what: Resource::ProtectingKey,
            },
            Error::NotFound {
                what: Resource::AuditKey,
            },
            Error::NotFound {
                what: Resource::PublishedTestRoot,
            },
            Error::AlreadyExists {
                what: Resource::AuditKey,
            },
            Error::NoClientCertificate,
            Error::NoIdentity,
            Error::AmbiguousIdentity { count: 2 },
            Error::Identity {
                reason: "unknown role",
            },
            Error::Certificate {
                reason: "not a DER X.509 certificate",
            },
        ]
    }

    #[test]
    fn codes_reachable_only_from_inside_map_to_readme_rows_marked_unit() {
        let sent: BTreeSet<String> = internal_only().into_iter().map(|e| sent(e).0).collect();
        let unit: BTreeSet<String> = readme_table()
            .into_iter()
            .filter(|(_, (_, tested))| tested == "unit")
            .map(|(code, _)| code)
            .collect();
        assert_eq!(sent, unit);
    }

    #[test]
    fn every_typed_reason_has_a_readme_row() {
        let table = readme_table();
        for r in Refusal::ALL {
            assert!(table.contains_key(r.code()), "{} not in README", r.code());
            assert!(
                r.code()
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'_')
            );
        }
        for f in IdentifierFault::ALL {
            assert!(table.contains_key(f.code()), "{} not in README", f.code());
        }
        for what in Resource::ALL {
            let found = format!("{}_NOT_FOUND", what.code());
            let exists = format!("{}_ALREADY_EXISTS", what.code());
            assert!(
                table.contains_key(&found) || table.contains_key(&exists),
                "{what:?} not in README"
            );
        }
        // Reasons share a code only within a family of caps or ranges: the message names the
        // number, the code the kind.
        let mut by_code: BTreeMap<&str, usize> = BTreeMap::new();
        for r in Refusal::ALL {
            *by_code.entry(r.code()).or_default() += 1;
        }
        let families = ["FIELD_TOO_LONG", "TOO_MANY_ENTRIES", "CONFIG_OUT_OF_RANGE"];
        for (code, n) in by_code {
            assert!(
                n == 1 || families.contains(&code),
                "{n} reasons share {code}"
            );
        }
    }

    #[test]
    fn metadata_names_the_field_or_component_and_no_value() {
        let (reason, metadata) = sent(Error::InvalidArgument {
            field: "serials",
            reason: Refusal::SerialMalformed,
        });
        assert_eq!(reason, "SERIAL_MALFORMED");
        assert_eq!(metadata.get("field").map(String::as_str), Some("serials"));
        let (reason, metadata) = sent(Error::Hsm(H::ComponentKcv { index: 2 }));
        assert_eq!(reason, "COMPONENT_KCV_MISMATCH");
        assert_eq!(metadata.get("component").map(String::as_str), Some("2"));
        let (_, metadata) = sent(Error::Hsm(H::UnknownAlgorithm("secret-ish".to_owned())));
        assert!(metadata.is_empty());
        // Which of unknown and mismatching a card was stays in the audit record.
        let mismatch = Error::NoMatchingCard {
            detail: "the card number differs from the registry's",
        };
        assert!(!to_status(&mismatch).message().contains("differs"));
        let (reason, metadata) = sent(mismatch);
        assert_eq!(reason, "NO_MATCHING_CARD");
        assert!(metadata.is_empty());
        // A rate refusal says when to retry, in the details and as gRPC's pushback.
        let rate = Error::ResourceExhausted {
            what: "request rate of this identity exceeded",
            retry_after_ms: 250,
        };
        let status = to_status(&rate);
        assert_eq!(
            status
                .metadata()
                .get(super::RETRY_PUSHBACK)
                .map(|v| v.to_str().unwrap()),
            Some("250")
        );
        let (reason, metadata) = sent(rate);
        assert_eq!(reason, "RATE_LIMITED");
        assert_eq!(
            metadata.get("retry_after_ms").map(String::as_str),
            Some("250")
        );
    }

    #[test]
    fn internal_failures_are_internal_with_no_details() {
        for e in [
            Error::Store,
            Error::StoreCorrupt("key record"),
            Error::AuditBroken,
            Error::Hsm(H::KeyBlockMac),
            Error::Hsm(H::StatePoisoned),
            Error::Hsm(H::Storage("disk full at /var/lib/hsm".into())),
        ] {
            let status = to_status(&e);
            assert_eq!(status.code(), Code::Internal, "{e:?}");
            assert_eq!(status.message(), "internal error");
            assert!(status.details().is_empty(), "{e:?} carries details");
            assert!(status.get_details_error_info().is_none());
        }
    }
}
