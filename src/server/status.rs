//! The one place errors become gRPC statuses. Internal failures get a generic message; their
//! detail goes to the log only.

use tonic::Status;

use crate::error::Error;

/// The metadata key of gRPC's retry pushback (gRFC A6), in milliseconds.
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// The one mapping from errors to gRPC status. Internal failures get a generic message; their
/// detail goes to the log only.
pub fn to_status(e: &Error) -> Status {
    use tonic::Code;
    let (code, message) = match e {
        Error::InvalidArgument { .. }
        | Error::InvalidIdentifier { .. }
        | Error::Template { .. }
        | Error::Profile { .. } => (Code::InvalidArgument, e.to_string()),
        Error::NotFound { .. } | Error::UnknownTemplate(_) | Error::NoMatchingCard { .. } => {
            (Code::NotFound, e.to_string())
        }
        Error::ResourceExhausted { retry_after_ms, .. } => {
            let mut status = Status::new(Code::ResourceExhausted, e.to_string());
            // gRPC's retry pushback (gRFC A6): clients that retry wait this long.
            if let Ok(value) = retry_after_ms.to_string().parse() {
                status.metadata_mut().insert(RETRY_PUSHBACK, value);
            }
            return status;
        }
        Error::AlreadyExists { .. } => (Code::AlreadyExists, e.to_string()),
        Error::FailedPrecondition { .. } => (Code::FailedPrecondition, e.to_string()),
        Error::PermissionDenied { .. } => (Code::PermissionDenied, e.to_string()),
        Error::Identity { .. } | Error::NoIdentity | Error::AmbiguousIdentity { .. } => {
            (Code::Unauthenticated, e.to_string())
        }
        Error::Hsm(h) => return hsm_status(h),
        Error::Certificate { .. } => (Code::Unauthenticated, e.to_string()),
        Error::MissingInput(_)
        | Error::AuditBroken
        | Error::Store
        | Error::StoreCorrupt(_)
        | Error::Tls { .. }
        | Error::Pki { .. }
        | Error::PkiFile { .. }
        | Error::CertGen(_)
        | Error::File { .. }
        | Error::Stdin(_) => {
            tracing::error!(error = %e, "internal error");
            (Code::Internal, "internal error".to_owned())
        }
    };
    Status::new(code, message)
}

pub(super) fn hsm_status(e: &hsm_api::Error) -> Status {
    use hsm_api::Error as H;
    use tonic::Code;
    let code = match e {
        H::Sealed | H::Uninitialised | H::SelfTestFailed(_) | H::SelfTest(_) => {
            Code::FailedPrecondition
        }
        H::Unavailable => Code::Unavailable,
        // Input a caller gave: component KCVs, key lengths, challenges, bad hex, weak keys.
        H::KeyLength { .. }
        | H::WeakKey
        | H::Hex { .. }
        | H::DataLength { .. }
        | H::AtrTooShort(_)
        | H::RegionCode(_)
        | H::ComponentKcv { .. }
        | H::Count { .. }
        | H::UnknownAlgorithm(_)
        | H::Share(_)
        | H::LmkKcvMismatch => Code::InvalidArgument,
        H::AlreadyInitialised => Code::FailedPrecondition,
        // A request the keys involved do not allow (e.g. an SM4 key under a TDES transport key).
        H::Unsupported { .. }
        | H::KeyBlockKbpk { .. }
        | H::KeyBlockKbpkStrength { .. }
        | H::NotExportable
        | H::WrongUsage { .. } => Code::FailedPrecondition,
        _ => {
            tracing::error!(error = %e, "HSM error");
            return Status::internal("internal error");
        }
    };
    Status::new(code, e.to_string())
}

pub(super) fn status(e: Error) -> Status {
    to_status(&e)
}
