//! The one boundary between [`Error`] and `tonic::Status`, both ways.
//!
//! **Server:** every error of the HSM becomes a status whose code summarises it (below), whose
//! message is the error's own `Display` text (which never holds key material), and whose binary
//! metadata entry [`ERROR_METADATA_KEY`] holds the serialized `sscard.hsm.v1.HsmError`. The
//! matches are exhaustive: a new variant of [`Error`] does not compile until it has a wire form.
//!
//! | code | errors |
//! |---|---|
//! | `INVALID_ARGUMENT` | malformed keys, data, key blocks (incl. a failing block MAC), shares, components, counts; a MAC that does not verify |
//! | `FAILED_PRECONDITION` | no LMK, sealed, self-test failed, wrong key usage, not exportable, no rotation prepared |
//! | `ALREADY_EXISTS` | an LMK exists already |
//! | `INTERNAL` | a known-answer test failed, the random source failed, state storage failed or is poisoned, a malformed answer |
//! | `UNAVAILABLE` | the HSM behind the server is itself unreachable |
//!
//! `PERMISSION_DENIED` is reserved for the authorisation of the caller's certificate.
//!
//! **Client:** a status with the metadata entry becomes exactly the error it encodes; one
//! without it (authorisation refused, TLS refused, connection refused, deadline, process gone)
//! becomes [`Error::Unavailable`]; anything else unexpected is [`Error::Protocol`].
//!
//! The texts some variants carry (names of fields, operations, checks) are borrowed literals on
//! the server and owned strings on the client: the rebuilt error compares equal to the server's
//! by value.

use hsm_api::Error;
use prost::Message;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use super::convert::{algorithm_from_wire, algorithm_to_wire, narrow, wide};
use super::proto::HsmError;
use super::proto::hsm_error::{self as wire, Kind};

/// The binary metadata entry of a failed call that carries the serialized `HsmError`.
pub const ERROR_METADATA_KEY: &str = "sscard-hsm-error-bin";

/// The status of a call the HSM refused.
pub(crate) fn to_status(err: &Error) -> Status {
    let detail = error_to_wire(err);
    let mut metadata = MetadataMap::new();
    metadata.insert_bin(
        ERROR_METADATA_KEY,
        MetadataValue::from_bytes(&detail.encode_to_vec()),
    );
    Status::with_metadata(code_of(err), err.to_string(), metadata)
}

/// The error a failed call stands for, on the client.
pub(crate) fn from_status(status: &Status) -> Error {
    if let Some(value) = status.metadata().get_bin(ERROR_METADATA_KEY) {
        return value
            .to_bytes()
            .ok()
            .and_then(|bytes| HsmError::decode(bytes).ok())
            .and_then(|detail| from_wire(detail.kind?))
            .unwrap_or(Error::Protocol);
    }
    match status.code() {
        // The server answers every HSM refusal with the metadata entry: a status without it
        // comes from the transport (connection or TLS refused, process gone, deadline), or from
        // the authorisation of our certificate, which retrying with a new certificate can cure.
        Code::Unavailable
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Aborted
        | Code::ResourceExhausted
        | Code::PermissionDenied
        | Code::Unauthenticated => Error::Unavailable,
        _ => Error::Protocol,
    }
}

/// The gRPC code summarising an error (see the module's table).
pub(crate) fn code_of(err: &Error) -> Code {
    match err {
        Error::KeyLength { .. }
        | Error::WeakKey
        | Error::UnknownAlgorithm(_)
        | Error::Hex { .. }
        | Error::DataLength { .. }
        | Error::Unsupported { .. }
        | Error::AtrTooShort(_)
        | Error::RegionCode(_)
        | Error::KcvLength { .. }
        | Error::Verification
        | Error::KeyBlockTruncated
        | Error::KeyBlockLength { .. }
        | Error::KeyBlockVersion(_)
        | Error::KeyBlockHeader { .. }
        | Error::KeyBlockOptionalBlock { .. }
        | Error::KeyBlockEncoding
        | Error::KeyBlockKbpk { .. }
        | Error::KeyBlockMac
        | Error::KeyBlockKeyLength
        | Error::KeyBlockCheckValue { .. }
        | Error::KeyBlockKbpkStrength { .. }
        | Error::KeyBlockTooLong(_)
        | Error::Share(_)
        | Error::LmkKcvMismatch
        | Error::ComponentKcv { .. }
        | Error::Count { .. } => Code::InvalidArgument,
        Error::Uninitialised
        | Error::Sealed
        | Error::SelfTestFailed(_)
        | Error::WrongUsage { .. }
        | Error::NotExportable
        | Error::RotationNotPrepared
        | Error::PartNotAvailable => Code::FailedPrecondition,
        Error::AlreadyInitialised => Code::AlreadyExists,
        Error::SelfTest(_)
        | Error::Random
        | Error::StatePoisoned
        | Error::Storage(_)
        | Error::Protocol => Code::Internal,
        Error::Unavailable => Code::Unavailable,
    }
}

/// An error as the message that carries it (an item's refusal in a batch answer).
pub(crate) fn error_to_wire(err: &Error) -> HsmError {
    HsmError {
        kind: Some(to_wire(err)),
    }
}

/// The error a message carries; `None` if it carries none the client knows.
pub(crate) fn error_from_wire(err: HsmError) -> Option<Error> {
    from_wire(err.kind?)
}

fn unit() -> wire::Unit {
    wire::Unit {}
}

fn to_wire(err: &Error) -> Kind {
    match err {
        Error::KeyLength {
            alg,
            expected,
            actual,
        } => Kind::KeyLength(wire::KeyLength {
            alg: algorithm_to_wire(*alg).into(),
            expected: wide(*expected),
            actual: wide(*actual),
        }),
        Error::WeakKey => Kind::WeakKey(unit()),
        Error::UnknownAlgorithm(name) => Kind::UnknownAlgorithm(name.clone()),
        Error::Hex { field } => Kind::Hex(wire::Hex {
            field: field.to_string(),
        }),
        Error::DataLength {
            field,
            expected,
            actual,
        } => Kind::DataLength(wire::DataLength {
            field: field.to_string(),
            expected: expected.to_string(),
            actual: wide(*actual),
        }),
        Error::Unsupported { op, alg } => Kind::Unsupported(wire::Unsupported {
            op: op.to_string(),
            alg: algorithm_to_wire(*alg).into(),
        }),
        Error::AtrTooShort(len) => Kind::AtrTooShort(wide(*len)),
        Error::RegionCode(code) => Kind::RegionCode(code.clone()),
        Error::KcvLength { len, max } => Kind::KcvLength(wire::KcvLength {
            len: wide(*len),
            max: wide(*max),
        }),
        Error::Verification => Kind::Verification(unit()),
        Error::KeyBlockTruncated => Kind::KeyBlockTruncated(unit()),
        Error::KeyBlockLength { declared, actual } => Kind::KeyBlockLength(wire::KeyBlockLength {
            declared: wide(*declared),
            actual: wide(*actual),
        }),
        Error::KeyBlockVersion(c) => Kind::KeyBlockVersion(u32::from(*c)),
        Error::KeyBlockHeader { field } => Kind::KeyBlockHeader(field.to_string()),
        Error::KeyBlockOptionalBlock { id } => Kind::KeyBlockOptionalBlock(id.clone()),
        Error::KeyBlockEncoding => Kind::KeyBlockEncoding(unit()),
        Error::KeyBlockKbpk { version, expected } => Kind::KeyBlockKbpk(wire::KeyBlockKbpk {
            version: u32::from(*version),
            expected: expected.to_string(),
        }),
        Error::KeyBlockMac => Kind::KeyBlockMac(unit()),
        Error::KeyBlockKeyLength => Kind::KeyBlockKeyLength(unit()),
        Error::KeyBlockCheckValue { id } => Kind::KeyBlockCheckValue(id.to_string()),
        Error::KeyBlockKbpkStrength { kbpk, key } => {
            Kind::KeyBlockKbpkStrength(wire::KeyBlockKbpkStrength {
                kbpk: algorithm_to_wire(*kbpk).into(),
                key: algorithm_to_wire(*key).into(),
            })
        }
        Error::KeyBlockTooLong(len) => Kind::KeyBlockTooLong(wide(*len)),
        Error::SelfTest(check) => Kind::SelfTest(check.to_string()),
        Error::Random => Kind::Random(unit()),
        Error::Uninitialised => Kind::Uninitialised(unit()),
        Error::AlreadyInitialised => Kind::AlreadyInitialised(unit()),
        Error::Sealed => Kind::Sealed(unit()),
        Error::SelfTestFailed(check) => Kind::SelfTestFailed(check.clone()),
        Error::Share(why) => Kind::Share(why.to_string()),
        Error::LmkKcvMismatch => Kind::LmkKcvMismatch(unit()),
        Error::WrongUsage { usage, operation } => Kind::WrongUsage(wire::WrongUsage {
            usage: usage.to_string(),
            operation: operation.to_string(),
        }),
        Error::NotExportable => Kind::NotExportable(unit()),
        Error::ComponentKcv { index } => Kind::ComponentKcv(wide(*index)),
        Error::Count { field, expected } => Kind::Count(wire::Count {
            field: field.to_string(),
            expected: expected.to_string(),
        }),
        Error::RotationNotPrepared => Kind::RotationNotPrepared(unit()),
        Error::StatePoisoned => Kind::StatePoisoned(unit()),
        Error::PartNotAvailable => Kind::PartNotAvailable(unit()),
        Error::Storage(what) => Kind::Storage(what.to_string()),
        Error::Unavailable => Kind::Unavailable(unit()),
        Error::Protocol => Kind::Protocol(unit()),
    }
}

fn from_wire(kind: Kind) -> Option<Error> {
    Some(match kind {
        Kind::KeyLength(e) => Error::KeyLength {
            alg: algorithm_from_wire(e.alg)?,
            expected: narrow(e.expected)?,
            actual: narrow(e.actual)?,
        },
        Kind::WeakKey(_) => Error::WeakKey,
        Kind::UnknownAlgorithm(name) => Error::UnknownAlgorithm(name),
        Kind::Hex(e) => Error::Hex {
            field: e.field.into(),
        },
        Kind::DataLength(e) => Error::DataLength {
            field: e.field.into(),
            expected: e.expected.into(),
            actual: narrow(e.actual)?,
        },
        Kind::Unsupported(e) => Error::Unsupported {
            op: e.op.into(),
            alg: algorithm_from_wire(e.alg)?,
        },
        Kind::AtrTooShort(len) => Error::AtrTooShort(narrow(len)?),
        Kind::RegionCode(code) => Error::RegionCode(code),
        Kind::KcvLength(e) => Error::KcvLength {
            len: narrow(e.len)?,
            max: narrow(e.max)?,
        },
        Kind::Verification(_) => Error::Verification,
        Kind::KeyBlockTruncated(_) => Error::KeyBlockTruncated,
        Kind::KeyBlockLength(e) => Error::KeyBlockLength {
            declared: narrow(e.declared)?,
            actual: narrow(e.actual)?,
        },
        Kind::KeyBlockVersion(c) => Error::KeyBlockVersion(char::from_u32(c)?),
        Kind::KeyBlockHeader(field) => Error::KeyBlockHeader {
            field: field.into(),
        },
        Kind::KeyBlockOptionalBlock(id) => Error::KeyBlockOptionalBlock { id },
        Kind::KeyBlockEncoding(_) => Error::KeyBlockEncoding,
        Kind::KeyBlockKbpk(e) => Error::KeyBlockKbpk {
            version: char::from_u32(e.version)?,
            expected: e.expected.into(),
        },
        Kind::KeyBlockMac(_) => Error::KeyBlockMac,
        Kind::KeyBlockKeyLength(_) => Error::KeyBlockKeyLength,
        Kind::KeyBlockCheckValue(id) => Error::KeyBlockCheckValue { id: id.into() },
        Kind::KeyBlockKbpkStrength(e) => Error::KeyBlockKbpkStrength {
            kbpk: algorithm_from_wire(e.kbpk)?,
            key: algorithm_from_wire(e.key)?,
        },
        Kind::KeyBlockTooLong(len) => Error::KeyBlockTooLong(narrow(len)?),
        Kind::SelfTest(check) => Error::SelfTest(check.into()),
        Kind::Random(_) => Error::Random,
        Kind::Uninitialised(_) => Error::Uninitialised,
        Kind::AlreadyInitialised(_) => Error::AlreadyInitialised,
        Kind::Sealed(_) => Error::Sealed,
        Kind::SelfTestFailed(check) => Error::SelfTestFailed(check),
        Kind::Share(why) => Error::Share(why.into()),
        Kind::LmkKcvMismatch(_) => Error::LmkKcvMismatch,
        Kind::WrongUsage(e) => Error::WrongUsage {
            usage: e.usage.into(),
            operation: e.operation.into(),
        },
        Kind::NotExportable(_) => Error::NotExportable,
        Kind::ComponentKcv(index) => Error::ComponentKcv {
            index: narrow(index)?,
        },
        Kind::Count(e) => Error::Count {
            field: e.field.into(),
            expected: e.expected.into(),
        },
        Kind::RotationNotPrepared(_) => Error::RotationNotPrepared,
        Kind::StatePoisoned(_) => Error::StatePoisoned,
        Kind::PartNotAvailable(_) => Error::PartNotAvailable,
        Kind::Storage(what) => Error::Storage(what.into()),
        Kind::Unavailable(_) => Error::Unavailable,
        Kind::Protocol(_) => Error::Protocol,
    })
}

#[cfg(test)]
mod tests {
    use hsm_api::Algorithm;

    use super::*;

    /// One instance of every variant (the exhaustive matches above keep this list honest:
    /// a new variant must be added there, and should be added here).
    fn every_error() -> Vec<Error> {
        vec![
            Error::KeyLength {
                alg: Algorithm::Tdes3,
                expected: 24,
                actual: 23,
            },
            Error::WeakKey,
            Error::UnknownAlgorithm("rc4".to_owned()),
            Error::Hex {
                field: "factor".into(),
            },
            Error::DataLength {
                field: "challenge".into(),
                expected: "8 or 16 bytes".into(),
                actual: 3,
            },
            Error::Unsupported {
                op: "sm4-f-notf-v1".into(),
                alg: Algorithm::Tdes2,
            },
            Error::AtrTooShort(7),
            Error::RegionCode("44010".to_owned()),
            Error::KcvLength { len: 9, max: 8 },
            Error::Verification,
            Error::KeyBlockTruncated,
            Error::KeyBlockLength {
                declared: 80,
                actual: 72,
            },
            Error::KeyBlockVersion('Z'),
            Error::KeyBlockHeader {
                field: "mode of use".into(),
            },
            Error::KeyBlockOptionalBlock {
                id: "KS".to_owned(),
            },
            Error::KeyBlockEncoding,
            Error::KeyBlockKbpk {
                version: 'D',
                expected: "AES".into(),
            },
            Error::KeyBlockMac,
            Error::KeyBlockKeyLength,
            Error::KeyBlockCheckValue { id: "KC".into() },
            Error::KeyBlockKbpkStrength {
                kbpk: Algorithm::Tdes2,
                key: Algorithm::Aes256,
            },
            Error::KeyBlockTooLong(10_000),
            Error::SelfTest("SM4 dispersion (SSC chain)".into()),
            Error::Random,
            Error::Uninitialised,
            Error::AlreadyInitialised,
            Error::Sealed,
            Error::SelfTestFailed("TDES ECB".to_owned()),
            Error::Share("not of this LMK".into()),
            Error::LmkKcvMismatch,
            Error::WrongUsage {
                usage: "key-block protection".into(),
                operation: "derive a key".into(),
            },
            Error::NotExportable,
            Error::ComponentKcv { index: 2 },
            Error::Count {
                field: "threshold".into(),
                expected: "1..=shares".into(),
            },
            Error::RotationNotPrepared,
            Error::StatePoisoned,
            Error::PartNotAvailable,
            Error::Storage("state file unreadable".into()),
            Error::Unavailable,
            Error::Protocol,
        ]
    }

    #[test]
    fn every_error_survives_the_status() {
        for err in every_error() {
            let status = to_status(&err);
            assert_eq!(status.code(), code_of(&err));
            assert_eq!(status.message(), err.to_string());
            assert_eq!(from_status(&status), err, "{err:?}");
        }
    }

    #[test]
    fn statuses_without_detail_are_transport_or_protocol() {
        for code in [
            Code::Unavailable,
            Code::Unknown,
            Code::DeadlineExceeded,
            Code::PermissionDenied,
        ] {
            assert_eq!(from_status(&Status::new(code, "x")), Error::Unavailable);
        }
        for code in [Code::Internal, Code::Unimplemented, Code::InvalidArgument] {
            assert_eq!(from_status(&Status::new(code, "x")), Error::Protocol);
        }
        // A detail that does not decode is a protocol error, never a guess.
        let mut metadata = MetadataMap::new();
        metadata.insert_bin(ERROR_METADATA_KEY, MetadataValue::from_bytes(&[0xFF, 0x01]));
        let status = Status::with_metadata(Code::InvalidArgument, "x", metadata);
        assert_eq!(from_status(&status), Error::Protocol);
        let empty = HsmError { kind: None }.encode_to_vec();
        let mut metadata = MetadataMap::new();
        metadata.insert_bin(ERROR_METADATA_KEY, MetadataValue::from_bytes(&empty));
        let status = Status::with_metadata(Code::InvalidArgument, "x", metadata);
        assert_eq!(from_status(&status), Error::Protocol);
    }
}
