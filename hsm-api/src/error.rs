//! The one error type of the boundary, shared by every implementation of the trait.

use std::borrow::Cow;

use crate::algorithm::Algorithm;

/// Everything that can go wrong at the HSM boundary, in an implementation or on the way to it.
///
/// Variants are typed so that callers (and tests) match on the reason, never on message text.
/// No variant carries key bytes: messages may reach logs.
///
/// Texts that name a field, an operation or a check are `Cow<'static, str>`: an implementation
/// builds them from literals (borrowed, no allocation), a remote client from the wire (owned),
/// and both compare equal by value.
///
/// Not `#[non_exhaustive]`: the simulator's wire mapping (`hsm_sim::remote`) matches every
/// variant, so that a new one cannot be forgotten there; every crate that matches on it is in
/// this workspace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    Hex { field: Cow<'static, str> },
    /// Data whose length does not fit the operation.
    #[error("{field} must be {expected}, got {actual} bytes")]
    DataLength {
        field: Cow<'static, str>,
        expected: Cow<'static, str>,
        actual: usize,
    },
    /// An operation the algorithm does not support (e.g. an SM4 dispersion of a TDES key).
    #[error("{op} is not defined for {alg}")]
    Unsupported {
        op: Cow<'static, str>,
        alg: Algorithm,
    },
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
    #[error("key block length is invalid (declared {declared}, received {actual} characters)")]
    KeyBlockLength { declared: usize, actual: usize },
    /// A key block version this implementation does not handle.
    #[error("key block version {0:?} not supported (B and D are)")]
    KeyBlockVersion(char),
    /// A header field with a value outside its allowed set.
    #[error("key block header field {field} is invalid")]
    KeyBlockHeader { field: Cow<'static, str> },
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
        expected: Cow<'static, str>,
    },
    /// The MAC over the block does not verify: tampered block or wrong KBPK.
    #[error("key block authentication failed")]
    KeyBlockMac,
    /// The decrypted key length field is inconsistent.
    #[error("key block key length is invalid")]
    KeyBlockKeyLength,
    /// A KC (check value of the wrapped key) or KP (check value of the KBPK) optional block that
    /// does not match the key it describes.
    #[error("key block optional block {id} does not match its key's check value")]
    KeyBlockCheckValue { id: Cow<'static, str> },
    /// A KBPK weaker than the key it would protect (ANSI X9.24-1: a key is protected only by a key
    /// of equal or greater strength).
    #[error("a {kbpk} KBPK may not protect a {key} key")]
    KeyBlockKbpkStrength { kbpk: Algorithm, key: Algorithm },
    /// A key block that would be longer than the 9999 characters its length field can say.
    #[error("key block would be {0} characters long; at most 9999 are allowed")]
    KeyBlockTooLong(usize),

    /// A known-answer self-test failed; the name says which.
    #[error("self-test failed: {0}")]
    SelfTest(Cow<'static, str>),
    /// The operating system's random source failed.
    #[error("random source failed")]
    Random,

    // ---- the HSM boundary ----
    /// No LMK exists yet: run `init` first.
    #[error("the HSM has no LMK yet")]
    Uninitialised,
    /// `init` on an HSM that already has an LMK.
    #[error("the HSM already has an LMK")]
    AlreadyInitialised,
    /// The LMK is not loaded: unseal first.
    #[error("the HSM is sealed")]
    Sealed,
    /// The self-test has not passed since start-up; the name says which check failed.
    #[error("the HSM self-test failed ({0}); no key operation is served")]
    SelfTestFailed(String),
    /// A share that is malformed, repeated, or not of this LMK.
    #[error("LMK share refused: {0}")]
    Share(Cow<'static, str>),
    /// The LMK rebuilt from the shares does not have the recorded KCV.
    #[error("the shares do not rebuild the LMK (KCV mismatch); unseal was reset")]
    LmkKcvMismatch,
    /// A key used for an operation its token's header does not allow.
    #[error("a {usage} key cannot be used to {operation}")]
    WrongUsage {
        usage: Cow<'static, str>,
        operation: Cow<'static, str>,
    },
    /// Export of a key whose token says it never leaves the HSM.
    #[error("the key is not exportable")]
    NotExportable,
    /// A component whose KCV differs from the one its custodian read from paper.
    #[error("component {index} does not match its KCV")]
    ComponentKcv { index: usize },
    /// A count out of range (components, shares, threshold, random length…).
    #[error("{field} must be {expected}")]
    Count {
        field: Cow<'static, str>,
        expected: Cow<'static, str>,
    },
    /// A secret part that is not (or no longer) held: already taken, an unknown set, or a set
    /// dropped at a seal or tamper event; or a commit while parts of the new LMK are untaken.
    #[error("that secret part is not available (already handed out, or unknown)")]
    PartNotAvailable,
    /// A rotation step out of order (commit without prepare, or a different KCV).
    #[error("no matching LMK rotation is prepared")]
    RotationNotPrepared,
    /// A panic left the HSM's in-memory state unusable (a poisoned lock); restart the HSM.
    #[error("the HSM's internal state is unusable after a failure; restart it")]
    StatePoisoned,
    /// The HSM's state file could not be read or written.
    #[error("HSM state storage failed: {0}")]
    Storage(Cow<'static, str>),
    /// The remote HSM could not be reached (process down, TLS refused): retry later.
    #[error("the HSM is unavailable")]
    Unavailable,
    /// The remote HSM answered with something this client does not understand.
    #[error("the HSM answered with a malformed response")]
    Protocol,
}

/// Result with the boundary's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;
