//! The one error type of the `sscard-kms` crate.

/// Everything that can go wrong in the service and its tools.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A refusal or failure at the HSM boundary (bad key, bad block, unsupported operation…).
    #[error(transparent)]
    Hsm(#[from] hsm_api::Error),
    /// A required input line (a key, a KBPK, a key block) was not given on standard input.
    #[error("expected {0} on standard input")]
    MissingInput(&'static str),
    /// A command-line value that does not fit the command (e.g. `--len` too long).
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        field: &'static str,
        reason: &'static str,
    },
    /// The caller's role or region does not allow the operation.
    #[error("permission denied: {reason}")]
    PermissionDenied { reason: &'static str },
    /// A card, template, key, PSAM or endpoint that does not exist.
    #[error("{what} not found")]
    NotFound { what: &'static str },
    /// No registered card matches the identifiers a station gave: the card is unknown, or its
    /// data differ from the registry's. Both answers are the same to the caller (no existence
    /// oracle); `detail` says which, for the audit record only.
    #[error("no registered card matches these identifiers")]
    NoMatchingCard { detail: &'static str },
    /// A limit of the service was reached (a caller's request rate); retry after the delay.
    #[error("{what}: retry after {retry_after_ms} ms")]
    ResourceExhausted {
        what: &'static str,
        retry_after_ms: u64,
    },
    /// Something that exists already (a card number, an SSN with a live card, a PSAM serial…).
    #[error("{what} already exists")]
    AlreadyExists { what: &'static str },
    /// The request is well-formed but the state does not allow it (not reviewed, blacklisted,
    /// hierarchy not derived, station not registered…).
    #[error("{reason}")]
    FailedPrecondition { reason: &'static str },
    /// The audit trail does not verify (details in the report).
    #[error("the audit trail is broken")]
    AuditBroken,
    /// The store failed (I/O, redb); details are in the log.
    #[error("storage failure")]
    Store,
    /// A stored value could not be decoded or encoded.
    #[error("stored data is corrupt ({0})")]
    StoreCorrupt(&'static str),
    /// A caller's identity URI does not follow the `sscard://` scheme (see `identity`).
    #[error("identity refused: {reason}")]
    Identity { reason: &'static str },
    /// The client certificate carries no `sscard://` identity (an unauthenticated caller).
    #[error("no sscard:// identity in the client certificate")]
    NoIdentity,
    /// The client certificate carries more than one `sscard://` identity.
    #[error("{count} sscard:// identities in one certificate")]
    AmbiguousIdentity { count: usize },
    /// A certificate could not be read (DER, extensions).
    #[error("certificate refused: {reason}")]
    Certificate { reason: &'static str },
    /// The TLS configuration is incomplete or wrong; the server or client must not start.
    #[error("TLS {what}: {reason}")]
    Tls {
        what: &'static str,
        reason: &'static str,
    },
    /// The dev PKI cannot be used as it is.
    #[error("dev PKI: {reason}")]
    Pki { reason: &'static str },
    /// A file of the dev PKI is missing or unusable.
    #[error("dev PKI file {path}: {reason}")]
    PkiFile {
        path: std::path::PathBuf,
        reason: &'static str,
    },
    /// Generating a key pair or a certificate failed.
    #[error("certificate generation failed")]
    CertGen(#[from] rcgen::Error),
    /// Reading or writing a file (certificates, keys) failed.
    #[error("cannot read or write {path}")]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An identifier (social security number, card number, card identifier, ATR, region code)
    /// that does not validate. Never carries the refused text: it may be personal data.
    #[error("invalid {field}: {reason}")]
    InvalidIdentifier {
        field: &'static str,
        reason: crate::card::identifiers::IdentifierFault,
    },
    /// A card template refused, with the 1-based line of the refusal and the reason.
    #[error("card template line {line}: {fault}")]
    Template {
        line: usize,
        fault: crate::card::template::TemplateFault,
    },
    /// A COS or PSAM profile refused, with the 1-based line of the refusal and the reason.
    #[error("{file} line {line}: {fault}")]
    Profile {
        file: crate::card::profile::DataFile,
        line: usize,
        fault: crate::card::template::TemplateFault,
    },
    /// No shipped card template has this id.
    #[error("no card template {0:?}")]
    UnknownTemplate(String),
    /// Reading standard input failed.
    #[error("reading standard input failed")]
    Stdin(#[source] std::io::Error),
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;
