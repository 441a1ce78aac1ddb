//! The one error type of the `sscard-kms` crate.

/// Everything that can go wrong in the service and its tools.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A refusal or failure at the HSM boundary (bad key, bad block, unsupported operation…).
    #[error(transparent)]
    Hsm(#[from] hsm_sim::Error),
    /// A required input line (a key, a KBPK, a key block) was not given on standard input.
    #[error("expected {0} on standard input")]
    MissingInput(&'static str),
    /// A command-line value that does not fit the command (e.g. `--len` too long).
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        field: &'static str,
        reason: &'static str,
    },
    /// Reading standard input failed.
    #[error("reading standard input failed")]
    Stdin(#[source] std::io::Error),
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;
