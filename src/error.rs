//! The one error type of the `sscard-kms` crate, and the typed reasons its refusals carry.
//!
//! Every refusal has a stable, machine-readable reason code (UPPER_SNAKE) beside its human
//! message: [`Refusal::code`], [`Resource`] (`…_NOT_FOUND`, `…_ALREADY_EXISTS`),
//! [`crate::card::identifiers::IdentifierFault::code`], and the HSM's errors by variant. The codes
//! reach gRPC clients as a `google.rpc.ErrorInfo` in the status details
//! (`crate::server::to_status`); README lists them. Codes never change meaning: a new reason gets
//! a new code.

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
        reason: Refusal,
    },
    /// The caller's role or region does not allow the operation.
    #[error("permission denied: {reason}")]
    PermissionDenied { reason: Refusal },
    /// A card, template, key, PSAM or endpoint that does not exist.
    #[error("{what} not found")]
    NotFound { what: Resource },
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
    AlreadyExists { what: Resource },
    /// The request is well-formed but the state does not allow it (not reviewed, blacklisted,
    /// hierarchy not derived, station not registered…).
    #[error("{reason}")]
    FailedPrecondition { reason: Refusal },
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
    /// The connection has no client certificate (mutual TLS normally refuses it first).
    #[error("a client certificate is required")]
    NoClientCertificate,
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
    /// A key whose root another deployment holds (N9): a city-owned key at the province, or a
    /// province key at a city's deployment. Key names and owners are not secret.
    #[error("key {key} is owned by {owner}: that deployment derives and releases it")]
    OwnedElsewhere {
        key: String,
        owner: crate::card::template::KeyOwner,
    },
    /// No shipped card template has this id.
    #[error("no card template {0:?}")]
    UnknownTemplate(String),
    /// An applicant file that cannot be read (encoding, header, a row's fields), with the line:
    /// refused whole, nothing of it reviewed or stored.
    #[error(transparent)]
    ApplicantFile(#[from] crate::registry::file::FileFault),
    /// The service refused a call of a command-line client (the status's code and message).
    #[error("{message}")]
    Remote { code: tonic::Code, message: String },
    /// A published list that is not genuine (`kms-ceremony registry blacklist-verify`).
    #[error("the list is not genuine: {0}")]
    ListNotGenuine(#[from] crate::registry::blacklist::Fault),
    /// Reading standard input failed.
    #[error("reading standard input failed")]
    Stdin(#[source] std::io::Error),
}

/// Declares [`Refusal`]: each reason with its code and its human message, in one place.
macro_rules! refusals {
    ($($(#[doc = $doc:literal])+ $variant:ident => $code:literal, $message:literal;)+) => {
        /// Why a request was refused: the reason of [`Error::InvalidArgument`],
        /// [`Error::PermissionDenied`] and [`Error::FailedPrecondition`]. Each has a stable
        /// machine-readable [`code`](Refusal::code) and a human message (its `Display`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Refusal {
            $($(#[doc = $doc])+ $variant,)+
        }

        impl Refusal {
            /// Every reason, in declaration order.
            pub const ALL: &[Refusal] = &[$(Refusal::$variant),+];

            /// The stable reason code (UPPER_SNAKE) a client branches on.
            pub const fn code(self) -> &'static str {
                match self {
                    $(Refusal::$variant => $code,)+
                }
            }

            /// The human message.
            pub const fn message(self) -> &'static str {
                match self {
                    $(Refusal::$variant => $message,)+
                }
            }
        }
    };
}

refusals! {
    // ---- permission denied
    /// The role-operation matrix does not allow the call.
    RoleNotAllowed => "ROLE_NOT_ALLOWED", "role may not perform this operation";
    /// A regional check on a caller whose role has no region.
    CallerHasNoRegion => "CALLER_HAS_NO_REGION", "caller has no region";
    /// The card, PSAM or region named is outside the caller's region.
    OutsideCallerRegion => "OUTSIDE_CALLER_REGION", "target is outside the caller's region";
    /// The station or PSAM line was registered for another region than its certificate names.
    EndpointRegionMismatch => "ENDPOINT_REGION_MISMATCH",
        "the certificate's region differs from the registered one";
    /// A PSAM line asking for a PSAM another line registered.
    PsamOfAnotherLine => "PSAM_OF_ANOTHER_LINE", "the PSAM was registered by another line";
    /// An officer's or auditor's certificate that the officer registry does not hold.
    OfficerNotRegistered => "OFFICER_NOT_REGISTERED",
        "this officer or auditor certificate is not registered";
    /// An officer's or auditor's certificate that was revoked.
    OfficerRevoked => "OFFICER_REVOKED", "this officer or auditor certificate is revoked";
    /// A custodian submitting a second component or share to the same ceremony.
    SameCustodianTwice => "SAME_CUSTODIAN_TWICE",
        "this custodian has already submitted to this ceremony";
    /// An LMK rotation asked for while another is prepared and not committed.
    LmkRotationPrepared => "LMK_ROTATION_PREPARED",
        "an LMK rotation is prepared already: commit it first";
    /// A share taken or a commit asked for with no LMK rotation prepared.
    LmkRotationNotPrepared => "LMK_ROTATION_NOT_PREPARED", "no LMK rotation is prepared";
    /// An LMK rotation asked for while a component ceremony holds a partial key in the HSM.
    ComponentCeremonyOpen => "COMPONENT_CEREMONY_OPEN",
        "a component ceremony is open: complete it or let it fail before rotating the LMK";
    /// A stored token changed between the HSM's re-wrapping and the write that keeps it.
    LmkRotationStale => "LMK_ROTATION_STALE",
        "the stored keys changed while the LMK rotation was prepared: ask for it again";
    /// The officer who made a dual-control request approving it.
    RequesterCannotApprove => "REQUESTER_CANNOT_APPROVE",
        "the requester cannot approve their own request";

    // ---- failed precondition
    /// A dual-control request that was already approved or rejected, or has expired.
    RequestNotPending => "REQUEST_NOT_PENDING",
        "the request was already approved, rejected or has expired";
    /// A dual-control request approved after its time limit: it is dead.
    RequestExpired => "REQUEST_EXPIRED", "the request expired before its approval";
    /// Un-blacklisting a card that is not blacklisted.
    CardNotBlacklisted => "CARD_NOT_BLACKLISTED", "the card is not blacklisted";
    /// A component ceremony that is complete, failed or expired.
    CeremonyNotOpen => "CEREMONY_NOT_OPEN",
        "the component ceremony is complete, failed or expired";
    /// A sensitive act called directly: it needs one officer's request and another's approval.
    DualControlRequired => "DUAL_CONTROL_REQUIRED",
        "this act needs a request by one officer and the approval of another";
    /// Every component of a key in one call: each custodian submits their own.
    SplitKnowledgeRequired => "SPLIT_KNOWLEDGE_REQUIRED",
        "components come one per custodian, each from their own certificate";
    /// The station or PSAM line has no record (and no transport key) in the service.
    CallerNotRegistered => "CALLER_NOT_REGISTERED",
        "the caller is not registered (no transport key)";
    /// The card is registered but not yet reviewed and accepted.
    CardNotAccepted => "CARD_NOT_ACCEPTED", "the card's data has not been reviewed and accepted";
    /// The card is blacklisted: no key is ever released again.
    CardBlacklisted => "CARD_BLACKLISTED", "the card is blacklisted";
    /// The province rejected the card's data.
    CardRejected => "CARD_REJECTED", "the province rejected the card's data";
    /// The card is past personalisation (active, suspended, lost, cancelled, replaced), or an
    /// initialisation was asked for a card already personalised.
    CardNotInPersonalisation => "CARD_NOT_IN_PERSONALISATION",
        "the card's status allows no key release (it is past personalisation)";
    /// The chip's card factor is bound to another card (its keys were released for that card).
    CardFactorBoundElsewhere => "CARD_FACTOR_BOUND_ELSEWHERE",
        "the chip's card factor is bound to another card";
    /// The card's status does not allow the change asked for (README "Card life cycle").
    CardTransitionNotAllowed => "CARD_TRANSITION_NOT_ALLOWED",
        "the card's status does not allow this change";
    /// The card a replacement names is not the same person's card of the same generation in
    /// (or just out of) service.
    ReplacedCardNotReplaceable => "REPLACED_CARD_NOT_REPLACEABLE",
        "the card named as replaced is not this person's card of this generation in service or lost";
    /// The card was registered with another template than the request names.
    CardTemplateMismatch => "CARD_TEMPLATE_MISMATCH",
        "the card was registered with another template";
    /// The card's keys were first released for another chip (ATR).
    AtrMismatch => "ATR_MISMATCH",
        "the ATR differs from the one this card's keys were released for";
    /// A concurrent request changed the card between the checks and the release.
    CardChangedDuringRequest => "CARD_CHANGED_DURING_REQUEST",
        "the card changed state during the request";
    /// The key hierarchy has not been derived for the card's city.
    HierarchyNotDerived => "HIERARCHY_NOT_DERIVED",
        "the key hierarchy of this template is not derived for the card's city";
    /// The root version the card was issued under is no longer held.
    KeyVersionNotHeld => "KEY_VERSION_NOT_HELD", "the card's key version is no longer held";
    /// No blank-card vendor transport key has been loaded for the template.
    VendorTransportKeyMissing => "VENDOR_TRANSPORT_KEY_MISSING",
        "no vendor transport key is loaded for this template";
    /// The template writes no key under the vendor transport key (no blank-card step).
    NoBlankCardKey => "NO_BLANK_CARD_KEY",
        "the template has no key written under the vendor transport key";
    /// A TDES transport key (TR-31 version B) cannot carry an SM4 or AES key.
    TransportKeyCannotCarry => "TRANSPORT_KEY_CANNOT_CARRY",
        "SM4 and AES keys travel only under an AES transport key (TR-31 version D)";
    /// A template of the same id and an equal or newer revision is loaded already.
    TemplateRevisionNotNewer => "TEMPLATE_REVISION_NOT_NEWER",
        "a template of this id and an equal or newer revision is loaded";
    /// A WRITE KEY whose Lc (sized by the HSM from the protecting key's block) is not the COS
    /// profile's: the template's protector and the profile disagree.
    WriteKeyLcMismatch => "WRITE_KEY_LC_MISMATCH",
        "the WRITE KEY's Lc is not the COS profile's (the protecting key pads to another block \
         size)";
    /// An issuer-only key asked for as TR-31 from a template whose policy
    /// (`issuer_only_delivery = "secure-messaging"`) sends it only inside WRITE KEY commands.
    SecureMessagingOnly => "SECURE_MESSAGING_ONLY",
        "the template sends this issuer-only key only inside secure-messaging WRITE KEY commands";
    /// Only keys whose root is provincial may be generated by the province.
    RootNotProvincial => "ROOT_NOT_PROVINCIAL",
        "only keys with a provincial root are generated by the province";
    /// A base template revision that a loaded city extension does not extend.
    ExtensionOfOtherRevision => "EXTENSION_OF_OTHER_REVISION",
        "a loaded city extension does not extend this revision (the log names it and why): load \
         a revision of the extension that fits both first";
    /// An audit checkpoint asked for before the HSM was ever operational (no audit key).
    NoAuditKeyYet => "NO_AUDIT_KEY_YET", "no audit key yet: the HSM has not been operational";
    /// An audit checkpoint of a trail with no record.
    AuditTrailEmpty => "AUDIT_TRAIL_EMPTY", "the audit trail is empty";
    /// An offline tool on a store a server holds open (command line only).
    StoreInUse => "STORE_IN_USE",
        "the store is open in another process: stop the server first, or verify a copy of its \
         kms.redb";
    /// `store migrate` into a PostgreSQL store that holds something already (command line only).
    StoreNotEmpty => "STORE_NOT_EMPTY",
        "the target store is not empty: migrate into a new database";
    /// A PostgreSQL store whose schema is newer than this binary (command line only).
    StoreSchemaNewer => "STORE_SCHEMA_NEWER",
        "the store's schema is newer than this binary: upgrade sscard-kms";

    // ---- invalid argument
    /// The Ministry's permission for PSAM use, asked for a root that is not national.
    PsamPermissionOnlyNational => "PSAM_PERMISSION_ONLY_NATIONAL",
        "the Ministry's permission for PSAM use is for national roots only";
    /// A PSAM profile for another kind of region than the PSAMs': `province-wide` for a city's
    /// PSAMs, `city` for the province's.
    PsamProfileRegion => "PSAM_PROFILE_REGION_MISMATCH",
        "the PSAM profile serves another kind of region (province-wide: the province; city: a \
         city)";
    /// A request that does not decode as its method's message.
    MessageUndecodable => "MESSAGE_UNDECODABLE",
        "not a valid protobuf encoding of this method's message";
    /// A string or bytes field over its cap of 32 bytes (README "API limits").
    LongerThan32Bytes => "FIELD_TOO_LONG", "longer than 32 bytes";
    /// A string or bytes field over its cap of 64 bytes.
    LongerThan64Bytes => "FIELD_TOO_LONG", "longer than 64 bytes";
    /// A string field over its cap of 128 bytes.
    LongerThan128Bytes => "FIELD_TOO_LONG", "longer than 128 bytes";
    /// A string field over its cap of 512 bytes.
    LongerThan512Bytes => "FIELD_TOO_LONG", "longer than 512 bytes";
    /// A string field over its cap of 800 bytes.
    LongerThan800Bytes => "FIELD_TOO_LONG", "longer than 800 bytes";
    /// A string field over its cap of 256 KiB.
    LongerThan256KiB => "FIELD_TOO_LONG", "longer than 256 KiB";
    /// Over the cap of a certificate.
    LongerThan8KiB => "FIELD_TOO_LONG", "longer than 8 KiB";
    /// A repeated field over its cap of 9 entries.
    MoreThan9Entries => "TOO_MANY_ENTRIES", "more than 9 entries";
    /// A repeated field over its cap of 64 entries.
    MoreThan64Entries => "TOO_MANY_ENTRIES", "more than 64 entries";
    /// A repeated field over its cap of 10000 entries.
    MoreThan10000Entries => "TOO_MANY_ENTRIES", "more than 10000 entries";
    /// More keys named (or challenged) than the template has.
    MoreEntriesThanKeys => "MORE_ENTRIES_THAN_KEYS", "more entries than the template has keys";
    /// A key named twice in one request.
    KeyNamedTwice => "KEY_NAMED_TWICE", "a key is named more than once";
    /// A required field is empty or unset (for an enum: its `*_UNSPECIFIED` zero value).
    Required => "FIELD_REQUIRED", "required";
    /// A root level other than national or provincial.
    RootLevel => "ROOT_LEVEL_INVALID", "national or provincial";
    /// A national root for a key whose chain starts at the province.
    NationalRootNotAllowed => "NATIONAL_ROOT_NOT_ALLOWED",
        "national roots exist only for keys whose root is national";
    /// A transport key family other than `tdes` or `aes`.
    TransportAlgorithm => "TRANSPORT_ALGORITHM_INVALID",
        "tdes (TR-31 version B) or aes (version D)";
    /// A value that must be hexadecimal is not.
    NotHex => "NOT_HEX", "not hex";
    /// A PSAM batch of no serial or more than 10000.
    SerialCount => "SERIAL_COUNT_OUT_OF_RANGE", "between 1 and 10000 serials per batch";
    /// A PSAM serial that is not 1..=32 of `[0-9A-Za-z]`.
    SerialMalformed => "SERIAL_MALFORMED", "a serial is 1..=32 of [0-9A-Za-z]";
    /// Secure-messaging delivery with no key to write.
    ChallengesRequired => "CHALLENGES_REQUIRED", "at least one key and card challenge is needed";
    /// A card whose issuing region is the province, not a city.
    IssuingRegionNotACity => "ISSUING_REGION_NOT_A_CITY", "the issuing region must be a city";
    /// A `serve` configuration file that does not parse (command line only).
    ConfigInvalid => "CONFIG_INVALID",
        "not a valid sscard-kms configuration (details in the log)";
    /// A listen address that is not `host:port` (command line only).
    NotASocketAddress => "NOT_A_SOCKET_ADDRESS", "not a socket address";
    /// A `[limits]` value of the `serve` configuration out of its range (command line only).
    Between100And60000 => "CONFIG_OUT_OF_RANGE", "between 100 and 60000";
    /// A `[limits]` value out of its range (command line only).
    Between1And65536 => "CONFIG_OUT_OF_RANGE", "between 1 and 65536";
    /// A `[limits]` value out of its range (command line only).
    Between1And1000000 => "CONFIG_OUT_OF_RANGE", "between 1 and 1000000";
    /// A `[limits]` value out of its range (command line only).
    Between1And1024 => "CONFIG_OUT_OF_RANGE", "between 1 and 1024";
    /// A `[limits]` value out of its range (command line only).
    Between100And600000 => "CONFIG_OUT_OF_RANGE", "between 100 and 600000";
    /// An HSM endpoint given for a configuration whose HSM is local (command line only).
    EndpointForLocalHsm => "ENDPOINT_FOR_LOCAL_HSM", "set, but the configured HSM is local";
    /// An unknown dispersion method name (`kms-ceremony calc` only).
    DispersionMethod => "DISPERSION_METHOD_INVALID",
        "expected pboc-tdes, pboc-des, sm4-f-notf-v1 or emv-option-a";
    /// A file that is not an audit checkpoint (`kms-ceremony audit verify --checkpoint` only).
    CheckpointFile => "AUDIT_CHECKPOINT_INVALID", "not an audit checkpoint file";
    /// `serve` on an HSM with the published test LMK, without `--dangerous-allow-test-lmk`.
    PublishedTestLmk => "PUBLISHED_TEST_LMK",
        "the HSM runs on the published test LMK (serve --dangerous-allow-test-lmk for tests only)";
    /// Out of range (`[ceremony] approval_ttl_s`).
    Between1And86400 => "CONFIG_OUT_OF_RANGE", "between 1 and 86400";
    /// `kms-ceremony hsm init` with neither a terminal nor `--share-dir`.
    ShareHandover => "SHARE_HANDOVER_REQUIRED",
        "no terminal to show each custodian their share alone: give --share-dir";
    /// An audit export range that is empty, starts at 0 or spans more than 10000 records.
    ExportRange => "EXPORT_RANGE_INVALID",
        "from 1, to at least from, and at most 10000 records";
    /// A certificate to register that is not an officer's or auditor's.
    NotAnOfficerCertificate => "NOT_AN_OFFICER_CERTIFICATE",
        "not the certificate of an officer or auditor";
    /// A component ceremony of fewer than 2 or more than 9 components.
    ComponentCount => "COMPONENT_COUNT_OUT_OF_RANGE", "between 2 and 9 components";
    /// An algorithm that has no dispersion (`kms-ceremony calc` only).
    NoDispersionForAlgorithm => "NO_DISPERSION_FOR_ALGORITHM",
        "no dispersion is defined for this algorithm";

    // ---- the registry review (applicant batches)
    /// Accepting (a card, a row) is the province's verdict.
    ProvinceOnly => "PROVINCE_ONLY",
        "only a provincial registrar may accept: acceptance is the province's verdict";
    /// Applicant data is submitted by the city that collected it.
    CityRegistrarOnly => "CITY_REGISTRAR_ONLY",
        "applicant batches are submitted by a city registrar";
    /// A card's personal data in clear is its own city's (`ReadCardPersonalData`).
    PersonalDataOwnCityOnly => "PERSONAL_DATA_OWN_CITY_ONLY",
        "a card's personal data is read in clear by a registrar of the card's own city only";
    /// The batch (same id and file) is another city's.
    BatchOfAnotherCity => "BATCH_OF_ANOTHER_CITY", "the batch was submitted by another city";
    /// A reviewer named a row that is accepted.
    RowAcceptedAlready => "ROW_ACCEPTED_ALREADY", "the row is accepted already";
    /// A reviewer named a row with a reason no reviewer may waive.
    RowNotWaivable => "ROW_NOT_WAIVABLE",
        "the row has a reason no reviewer may waive (identifiers, spec version, region or \
         uniqueness)";
    /// A batch id of the wrong form.
    BatchIdMalformed => "BATCH_ID_MALFORMED",
        "1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-'";
    /// An applicant file over 256 MiB.
    FileTooLarge => "FILE_TOO_LARGE", "the file is larger than 256 MiB";
    /// The stream of an applicant file broke off.
    UploadInterrupted => "UPLOAD_INTERRUPTED",
        "the upload was interrupted before the end of the file";
    /// A file encoding the command line does not know.
    EncodingName => "ENCODING_INVALID", "utf8 or gbk";
    /// A client command without a way to connect.
    ConnectionOptions => "CONNECTION_OPTIONS", "give --data-dir DIR, or --ca, --cert and --key";
    /// A client command's endpoint that is not a URL.
    NotAUrl => "NOT_A_URL", "not a URL";
    /// A report file that cannot be written.
    ReportUnwritable => "REPORT_UNWRITABLE", "cannot write the report";

    // ---- transport keys issued by the HSM
    /// An issued transport key asked for in another region than its station's registered one.
    EndpointRegionDiffers => "ENDPOINT_REGION_DIFFERS",
        "the station or PSAM line is registered in another region";
    /// A component taken of a request that issued none (not approved, TR-31, another act).
    TransportComponentsNotIssued => "TRANSPORT_COMPONENTS_NOT_ISSUED",
        "that request issued no transport-key components (is it approved, and as components?)";
    /// A first registration asked for a station or PSAM line that is registered already.
    EndpointRegistered => "ENDPOINT_ALREADY_REGISTERED",
        "the station or PSAM line is registered already: replace its transport key instead";
    /// The station's transport key changed between the HSM's issue of a new one under it and
    /// the write that keeps it (another replacement went in between).
    TransportKeyChanged => "TRANSPORT_KEY_CHANGED",
        "the station's transport key changed while a new one was issued under it: ask again";
    // ---- root backup and restore (issue 10)
    /// A backup asked for of a key that is not a national or provincial root of its template.
    BackupNotARoot => "BACKUP_NOT_A_ROOT",
        "only a national or provincial root is backed up (city and card keys are derived again)";
    /// A backup split or a restore threshold outside 2 <= threshold <= shares <= 16.
    BackupShareCount => "BACKUP_SHARE_COUNT_OUT_OF_RANGE",
        "2 <= threshold <= shares <= 16";
    /// A backup share that is malformed, mistyped (its check value), of another backup, key or
    /// threshold, or already submitted to this restore.
    BackupShareRefused => "BACKUP_SHARE_REFUSED",
        "not a share of this backup (mistyped, of another backup, or already submitted)";
    /// The shares rebuilt a key whose KCV is not the backup's: the restore failed.
    RestoreKcvMismatch => "RESTORE_KCV_MISMATCH",
        "the shares do not rebuild the backed-up key (KCV mismatch): the restore failed";
    /// A restore of a key version the store already holds.
    RestoreKeyExists => "RESTORE_KEY_EXISTS",
        "the store already holds this key version: it is not restored over";
    /// A component to a restore ceremony, or a backup share to a component ceremony.
    CeremonyKindMismatch => "CEREMONY_KIND_MISMATCH",
        "this ceremony takes the other kind of part (components, or backup shares)";
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// What a [`Error::NotFound`] or [`Error::AlreadyExists`] names. The reason code is the
/// resource's [`code`](Resource::code) followed by `_NOT_FOUND` or `_ALREADY_EXISTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// A card of the registry (by its card identifier).
    Card,
    /// A card's identifier (卡识别码), as registered.
    CardIdentifier,
    /// A card number (卡号), as registered.
    CardNumber,
    /// A live (not blacklisted) card for the same social security number.
    LiveCardForSsn,
    /// A loaded card template.
    CardTemplate,
    /// A key name of the template.
    TemplateKey,
    /// The key a template names as another key's protector.
    ProtectingKey,
    /// A registered PSAM.
    Psam,
    /// A PSAM serial, as registered.
    PsamSerial,
    /// A shipped PSAM profile.
    PsamProfile,
    /// The service's audit key.
    AuditKey,
    /// A published test root of `dev/test-keys.toml`.
    PublishedTestRoot,
    /// An applicant batch of the registry review, by id.
    ApplicantBatch,
    /// A row of an applicant batch, by its line.
    ApplicantRow,
    /// A batch id already used for another file (the same code as a batch).
    BatchIdOfAnotherFile,
    /// An officer's or auditor's certificate in the officer registry.
    Officer,
    /// A dual-control request.
    Request,
    /// A component ceremony.
    Ceremony,
    /// A root backup, by the request that made it.
    RootBackup,
}

impl Resource {
    /// Every resource, in declaration order.
    pub const ALL: &[Resource] = &[
        Resource::Card,
        Resource::CardIdentifier,
        Resource::CardNumber,
        Resource::LiveCardForSsn,
        Resource::CardTemplate,
        Resource::TemplateKey,
        Resource::ProtectingKey,
        Resource::Psam,
        Resource::PsamSerial,
        Resource::PsamProfile,
        Resource::AuditKey,
        Resource::PublishedTestRoot,
        Resource::ApplicantBatch,
        Resource::ApplicantRow,
        Resource::BatchIdOfAnotherFile,
        Resource::Officer,
        Resource::Request,
        Resource::Ceremony,
        Resource::RootBackup,
    ];

    /// The stem of the reason code.
    pub const fn code(self) -> &'static str {
        match self {
            Resource::Card => "CARD",
            Resource::CardIdentifier => "CARD_IDENTIFIER",
            Resource::CardNumber => "CARD_NUMBER",
            Resource::LiveCardForSsn => "LIVE_CARD_FOR_SSN",
            Resource::CardTemplate => "TEMPLATE",
            Resource::TemplateKey => "TEMPLATE_KEY",
            Resource::ProtectingKey => "PROTECTING_KEY",
            Resource::Psam => "PSAM",
            Resource::PsamSerial => "PSAM_SERIAL",
            Resource::PsamProfile => "PSAM_PROFILE",
            Resource::AuditKey => "AUDIT_KEY",
            Resource::PublishedTestRoot => "PUBLISHED_TEST_ROOT",
            Resource::ApplicantBatch => "APPLICANT_BATCH",
            Resource::ApplicantRow => "APPLICANT_ROW",
            Resource::BatchIdOfAnotherFile => "APPLICANT_BATCH",
            Resource::Officer => "OFFICER",
            Resource::Request => "REQUEST",
            Resource::Ceremony => "CEREMONY",
            Resource::RootBackup => "ROOT_BACKUP",
        }
    }

    /// The human name.
    pub const fn name(self) -> &'static str {
        match self {
            Resource::Card => "card",
            Resource::CardIdentifier => "card identifier",
            Resource::CardNumber => "card number",
            Resource::LiveCardForSsn => "a live card for this social security number",
            Resource::CardTemplate => "card template",
            Resource::TemplateKey => "template key",
            Resource::ProtectingKey => "protecting key",
            Resource::Psam => "PSAM",
            Resource::PsamSerial => "PSAM serial",
            Resource::PsamProfile => "PSAM profile",
            Resource::AuditKey => "audit key",
            Resource::PublishedTestRoot => "published test root of a template key",
            Resource::ApplicantBatch => "applicant batch",
            Resource::ApplicantRow => "row of the batch",
            Resource::BatchIdOfAnotherFile => "an applicant batch with this id (of another file)",
            Resource::Officer => "officer certificate",
            Resource::Request => "dual-control request",
            Resource::Ceremony => "component ceremony",
            Resource::RootBackup => "root backup",
        }
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;
