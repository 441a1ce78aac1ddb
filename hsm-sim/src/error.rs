//! The one error type of the crate.
//!
//! Variants are typed so that callers (and tests) match on the reason, never on message text.
//! No variant carries key bytes: messages may reach logs.

use crate::key::Algorithm;

/// Everything that can go wrong in `hsm-sim`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key of the wrong length for its algorithm.
    #[error("a {alg} key must be {expected} bytes, got {actual}")]
    KeyLength {
        alg: Algorithm,
        expected: usize,
        actual: usize,
    },
    /// A weak or semi-weak DES key, or a multi-key TDES key whose parts repeat.
    #[error("weak DES key refused")]
    WeakKey,
    /// An unknown algorithm name.
    #[error("unknown algorithm {0:?}")]
    UnknownAlgorithm(String),
    /// Input that is not valid hexadecimal.
    #[error("{field} is not valid hex (even number of 0-9, A-F)")]
    Hex { field: &'static str },
    /// Data whose length does not fit the operation.
    #[error("{field} must be {expected}, got {actual} bytes")]
    DataLength {
        field: &'static str,
        expected: &'static str,
        actual: usize,
    },
    /// An operation the algorithm does not support (e.g. an SM4 dispersion of a TDES key).
    #[error("{op} is not defined for {alg}")]
    Unsupported { op: &'static str, alg: Algorithm },
    /// An ATR too short to give the 8-byte card factor.
    #[error("ATR has {0} bytes; the card factor needs at least 8")]
    AtrTooShort(usize),
    /// A region code that is not six digits of a province or a city.
    #[error("region code {0:?} is not a 6-digit GB/T 2260 code of the expected level")]
    RegionCode(String),
    /// A KCV length out of the method's range.
    #[error("KCV length {len} out of range 1..={max}")]
    KcvLength { len: usize, max: usize },
    /// A MAC or KCV that does not verify.
    #[error("verification failed")]
    Verification,

    // ---- TR-31 / X9.143 key blocks ----
    /// The block is shorter than its fixed header or than its declared length.
    #[error("key block truncated")]
    KeyBlockTruncated,
    /// The declared length does not match the block, or is not a multiple of the block size.
    #[error("key block length {declared} does not match the {actual} characters received")]
    KeyBlockLength { declared: usize, actual: usize },
    /// A key block version this implementation does not handle.
    #[error("key block version {0:?} not supported (B and D are)")]
    KeyBlockVersion(char),
    /// A header field with a value outside its allowed set.
    #[error("key block header field {field} is invalid")]
    KeyBlockHeader { field: &'static str },
    /// A malformed optional block.
    #[error("key block optional block {id:?} is malformed")]
    KeyBlockOptionalBlock { id: String },
    /// Characters that are not allowed in a key block.
    #[error("key block contains a character outside printable ASCII or hex where hex is required")]
    KeyBlockEncoding,
    /// The key block protection key is not of the algorithm its version needs.
    #[error("key block version {version} needs a {expected} KBPK")]
    KeyBlockKbpk {
        version: char,
        expected: &'static str,
    },
    /// The MAC over the block does not verify: tampered block or wrong KBPK.
    #[error("key block authentication failed")]
    KeyBlockMac,
    /// The decrypted key length field is inconsistent.
    #[error("key block key length is invalid")]
    KeyBlockKeyLength,

    /// A known-answer self-test failed; the name says which.
    #[error("self-test failed: {0}")]
    SelfTest(&'static str),
    /// The operating system's random source failed.
    #[error("random source failed")]
    Random,
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;
