//! Card templates: every key a card carries, as versioned data (notice N8, N9, N11; DOMAIN.md §3).
//!
//! A template is a TOML file. The two shipped ones are [`SSC_2_0`] (`templates/ssc-2.0.toml`,
//! 3DES) and [`SSC_3_0`] (`templates/ssc-3.0.toml`, SM4); a city's local extension (N9) is a
//! third file that names its base with `extends` and is merged with [`Template::extend`].
//!
//! # Schema
//!
//! ```toml
//! id = "ssc-2.0"            # template id: a-z, 0-9, '.', '-'
//! version = 1               # template revision, >= 1
//! generation = "2.0"        # card specification generation
//! algorithm = "tdes"        # default key algorithm: tdes | des | sm4
//! dispersion = "pboc-tdes"  # hsm_api::Dispersion name (sm4-f-notf-v1 for 3.0)
//! description = "…"         # optional
//! # extends = "ssc-2.0"     # only in a city's extension: id of the base template
//! # region = "440300"       # with `extends` only: the city that owns the extension
//!
//! [[key]]
//! name = "MK_DF03"          # unique: A-Z, 0-9, _
//! directory = "DF03"        # MF, SSSE, DF01..DF05, … (A-Z, 0-9)
//! key_id = 0x00             # card key id
//! key_version = 0x01        # card key version; (directory, key_id, key_version) is unique
//! type = 0x39               # key type byte of the card OS
//! algorithm = "tdes"        # optional, defaults to the template's
//! length = 16               # bytes; des 8, tdes 16, sm4 16
//! error_counter = 0x33
//! psam_usage = 0x28         # optional: (levels << 5) | type (DOMAIN.md §4)
//! psam_allowed = false      # optional, default false
//! protected_by = "MK_SSSE"  # a key of the template, or "vendor-transport"
//! root = "provincial"       # "national" or "provincial"
//! follow_up = 0x00          # optional, default 0x00
//! dispersion = "pboc-des"   # optional: the key's own dispersion method
//! description = "…"         # optional
//! ```
//!
//! # Validation
//!
//! [`Template::parse`] refuses, naming the line (1-based) and a typed [`TemplateFault`]:
//! TOML syntax and type errors and missing fields ([`TemplateFault::Toml`]); unknown fields;
//! values out of their set (ids, names, algorithms, dispersion methods, roots); a template
//! without keys; duplicate key names; a duplicate `(directory, key_id, key_version)`; a length
//! that does not match the algorithm; a key algorithm that its dispersion method cannot produce
//! (an SM4 key in a `pboc-tdes` template, or a 3DES key in an `sm4-f-notf-v1` one, unless the
//! key names its own `dispersion`); a PSAM usage byte with levels outside 1..=3 or a type above 8,
//! or asking for the national level of a provincial-root key; `psam_allowed = true` without a
//! usage byte, for type 0 (master), or for an issuer-only key (see [`KeySpec::is_issuer_only`]);
//! `protected_by` naming no key of the template; a cycle of `protected_by`; more than one
//! vendor-transport key; `extends` without `region`, `region` without `extends`, or a region
//! that is not a known city.
//!
//! An extension may name keys of its base in `protected_by`: those are resolved, and everything
//! checked again, by [`Template::extend`], which also refuses an extension that redefines a base
//! key (by name or by slot), names another base, differs from it in generation, algorithm or
//! dispersion, or protects a key by the vendor transport key (an extension's keys go onto
//! initialised cards).
//!
//! # Card key header
//!
//! [`KeySpec::card_key_header`] gives the 8-byte header of a WRITE KEY in the T514 style of
//! DOMAIN.md §5:
//!
//! | byte | content | source |
//! |---|---|---|
//! | 0 | key type (`type`) | \[spec] position; value from the template |
//! | 1 | key id (`key_id`) | \[spec] |
//! | 2 | key version (`key_version`) | \[spec] |
//! | 3 | `EF` | \[spec] constant; its meaning (usage rights) is \[inferred] |
//! | 4 | error counter (`error_counter`) | \[spec] |
//! | 5 | algorithm: `00` 3DES, `01` DES, `02` SM4 | \[spec] for 00/01, \[choice] for 02 |
//! | 6 | follow-up security level (`follow_up`) | \[spec] position; values \[inferred] |
//! | 7 | key length in bytes | \[inferred]: DOMAIN.md says "length", we write the key's byte count |
//!
//! ```
//! use sscard_kms::template::{KeyLevel, Template};
//!
//! let t = Template::builtin("ssc-2.0")?;
//! let mk = t.key("MK_DF03").expect("in the template");
//! assert_eq!(mk.card_key_header(), [0x39, 0x00, 0x01, 0xEF, 0x33, 0x00, 0x00, 0x10]);
//! let rk = t.psam_keys().find(|p| p.key.name == "RK_DF03").expect("a PSAM key");
//! assert_eq!(rk.level(), KeyLevel::City);
//! # Ok::<(), sscard_kms::Error>(())
//! ```

use core::fmt;
use core::ops::Range;
use std::collections::HashMap;

use hsm_api::{Algorithm, Dispersion};
use serde::Deserialize;
use toml::Spanned;
use toml::de::DeTable;

use crate::error::{Error, Result};
use crate::region::Region;

/// The shipped 3DES template of card generation 2.0.
pub const SSC_2_0: &str = include_str!("../templates/ssc-2.0.toml");
/// The shipped SM4 template of card generation 3.0.
pub const SSC_3_0: &str = include_str!("../templates/ssc-3.0.toml");
/// The shipped templates by id.
pub const BUILTIN: [(&str, &str); 2] = [("ssc-2.0", SSC_2_0), ("ssc-3.0", SSC_3_0)];

/// The `protected_by` value of the first key written to a blank card.
pub const VENDOR_TRANSPORT: &str = "vendor-transport";
/// Byte 3 of every card key header.
pub const HEADER_MARKER: u8 = 0xEF;

const TEMPLATE_FIELDS: &[&str] = &[
    "id",
    "version",
    "generation",
    "algorithm",
    "dispersion",
    "description",
    "extends",
    "region",
    "key",
];
const KEY_FIELDS: &[&str] = &[
    "name",
    "directory",
    "key_id",
    "key_version",
    "type",
    "algorithm",
    "length",
    "error_counter",
    "psam_usage",
    "psam_allowed",
    "protected_by",
    "root",
    "follow_up",
    "dispersion",
    "description",
];

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a template was refused. Carried by [`Error::Template`] with the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateFault {
    /// TOML syntax, a value of the wrong type, a missing field: the TOML parser's message.
    #[error("{0}")]
    Toml(String),
    /// A field the schema does not have.
    #[error("unknown field `{0}`")]
    UnknownField(String),
    /// A value outside its allowed form.
    #[error("`{field}` must be {expected}")]
    InvalidValue {
        field: &'static str,
        expected: &'static str,
    },
    /// A name that is not one of the allowed names (algorithm, dispersion, root).
    #[error("unknown {field} {value:?}")]
    UnknownName { field: &'static str, value: String },
    /// A template with no `[[key]]`.
    #[error("the template has no keys")]
    NoKeys,
    /// Two keys with one name.
    #[error("duplicate key name {name:?} (first defined on line {first_line})")]
    DuplicateKeyName { name: String, first_line: usize },
    /// Two keys in one card slot.
    #[error(
        "key {name:?} uses {directory} id {key_id:#04x} version {key_version:#04x}, \
         already used by {other:?}"
    )]
    DuplicateSlot {
        name: String,
        directory: String,
        key_id: u8,
        key_version: u8,
        other: String,
    },
    /// A length that does not match the algorithm.
    #[error("a {algorithm} key is {expected} bytes, not {actual}")]
    LengthMismatch {
        algorithm: CardAlgorithm,
        expected: usize,
        actual: u32,
    },
    /// A key algorithm the dispersion method does not produce.
    #[error("a {algorithm} key cannot be derived by dispersion {dispersion}")]
    DispersionMismatch {
        algorithm: CardAlgorithm,
        dispersion: &'static str,
    },
    /// A PSAM usage byte whose levels are not 1..=3.
    #[error("psam_usage {byte:#04x} has {levels} levels; 1, 2 or 3 are allowed")]
    PsamUsageLevels { byte: u8, levels: u8 },
    /// A PSAM usage byte whose type is above 8.
    #[error("psam_usage {byte:#04x} has key type {kind}; 0 to 8 are defined")]
    PsamUsageType { byte: u8, kind: u8 },
    /// A PSAM usage byte asking for the national level of a key whose root is provincial.
    #[error("psam_usage {byte:#04x} asks for a national key, but the key's root is provincial")]
    PsamLevelAboveRoot { byte: u8 },
    /// `psam_allowed = true` for a key that may not go into a terminal PSAM.
    #[error("key {name:?} may not go into a PSAM: {why}")]
    PsamRefused { name: String, why: PsamRefusal },
    /// `protected_by` names no key of the template.
    #[error("protected_by names {0:?}, which is not a key of the template")]
    UnknownProtector(String),
    /// `protected_by` goes round in a cycle.
    #[error("protected_by forms a cycle: {}", .0.join(" -> "))]
    ProtectorCycle(Vec<String>),
    /// A second key protected by the vendor transport key.
    #[error("only one key may be protected by the vendor transport key; {first:?} already is")]
    SecondVendorTransport { first: String },
    /// An extension key protected by the vendor transport key.
    #[error(
        "an extension's keys go onto initialised cards: none is protected by {VENDOR_TRANSPORT:?}"
    )]
    VendorTransportInExtension,
    /// `extends` without `region`.
    #[error("`extends` needs `region`, the city that owns the extension")]
    ExtendsWithoutRegion,
    /// `region` without `extends`.
    #[error("`region` is only for an extension (with `extends`)")]
    RegionWithoutExtends,
    /// `region` is not a known city.
    #[error("region {0:?} is not a known city")]
    RegionNotCity(String),
    /// [`Template::extend`] with a template that has no `extends`, or was already merged.
    #[error("not an unmerged extension (no `extends`, or already merged)")]
    NotAnExtension,
    /// [`Template::extend`] with the wrong base.
    #[error("the extension extends {found:?}, not {expected:?}")]
    ExtendsMismatch { expected: String, found: String },
    /// [`Template::extend`] with a base that is itself an extension.
    #[error("a base template may not itself be an extension")]
    BaseIsExtension,
    /// An extension whose generation, algorithm or dispersion differs from its base's.
    #[error("`{field}` differs from the base template's")]
    HeaderMismatch { field: &'static str },
    /// An extension key with the name of a base key.
    #[error(
        "key {name:?} is already defined by the base template (its line {base_line}); \
         an extension only adds keys"
    )]
    RedefinesBaseKey { name: String, base_line: usize },
}

/// Why a key may not go into a terminal PSAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum PsamRefusal {
    /// No `psam_usage` byte: the PSAM level is unknown.
    #[error("it has no psam_usage byte")]
    NoUsageByte,
    /// Usage type 0, a master key.
    #[error("its psam_usage type is 0 (master)")]
    MasterType,
    /// A card master key, a maintenance/transport key or a provincial-root key (DOMAIN.md §4).
    #[error("it is an issuer-only key (MK*, STK*, or a provincial root)")]
    IssuerOnly,
}

// ---------------------------------------------------------------------------------------------
// Value types
// ---------------------------------------------------------------------------------------------

/// Algorithm of a card key: the three a social security card uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CardAlgorithm {
    /// Double-length 3DES, 16 bytes.
    Tdes,
    /// Single DES, 8 bytes.
    Des,
    /// SM4, 16 bytes.
    Sm4,
}

impl CardAlgorithm {
    /// All three.
    pub const ALL: [CardAlgorithm; 3] =
        [CardAlgorithm::Tdes, CardAlgorithm::Des, CardAlgorithm::Sm4];

    /// The template name: `tdes`, `des`, `sm4`.
    pub const fn name(self) -> &'static str {
        match self {
            CardAlgorithm::Tdes => "tdes",
            CardAlgorithm::Des => "des",
            CardAlgorithm::Sm4 => "sm4",
        }
    }

    /// Parses a template name (exactly as [`CardAlgorithm::name`] gives it).
    pub fn from_name(name: &str) -> Option<CardAlgorithm> {
        CardAlgorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The HSM algorithm of the key.
    pub const fn algorithm(self) -> Algorithm {
        match self {
            CardAlgorithm::Tdes => Algorithm::Tdes2,
            CardAlgorithm::Des => Algorithm::Des,
            CardAlgorithm::Sm4 => Algorithm::Sm4,
        }
    }

    /// Key length in bytes.
    pub const fn key_len(self) -> usize {
        self.algorithm().key_len()
    }

    /// The algorithm byte of the card key header: `00` 3DES, `01` DES \[spec], `02` SM4 \[choice].
    pub const fn header_byte(self) -> u8 {
        match self {
            CardAlgorithm::Tdes => 0x00,
            CardAlgorithm::Des => 0x01,
            CardAlgorithm::Sm4 => 0x02,
        }
    }

    /// True if `method` derives keys of this algorithm from a parent of this algorithm.
    pub fn derivable_by(self, method: Dispersion) -> bool {
        let alg = self.algorithm();
        matches!(method.child_algorithm(alg), Ok(child) if child == alg)
    }
}

impl fmt::Display for CardAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a key's derivation chain starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyRoot {
    /// The Ministry's root of the key type: national → province → city → card (N2).
    National,
    /// The province's own root, e.g. the card master key: province → city → card (N1).
    Provincial,
}

impl KeyRoot {
    /// The template name.
    pub const fn name(self) -> &'static str {
        match self {
            KeyRoot::National => "national",
            KeyRoot::Provincial => "provincial",
        }
    }

    /// The level of the root key.
    pub const fn top_level(self) -> KeyLevel {
        match self {
            KeyRoot::National => KeyLevel::National,
            KeyRoot::Provincial => KeyLevel::Province,
        }
    }
}

/// A level of the key hierarchy (DOMAIN.md §2).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum KeyLevel {
    /// The Ministry's root.
    National,
    /// `D(K_national, F1)`, or the province's own root.
    Province,
    /// `D(K_province, F2)`.
    City,
    /// `D(K_city, F3)`: the key on the card.
    Card,
}

impl KeyLevel {
    /// How many dispersions separate this level from the card key.
    pub const fn levels_above_card(self) -> u8 {
        match self {
            KeyLevel::National => 3,
            KeyLevel::Province => 2,
            KeyLevel::City => 1,
            KeyLevel::Card => 0,
        }
    }
}

impl fmt::Display for KeyLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyLevel::National => "national",
            KeyLevel::Province => "province",
            KeyLevel::City => "city",
            KeyLevel::Card => "card",
        })
    }
}

/// The key type of a PSAM usage byte (its low 5 bits; DOMAIN.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PsamKeyType {
    Master = 0,
    Maintenance = 1,
    Purchase = 2,
    PinUnblock = 3,
    PinReload = 4,
    UserCardMaintenance = 5,
    Mac = 6,
    Encryption = 7,
    MacEncryption = 8,
}

impl PsamKeyType {
    const ALL: [PsamKeyType; 9] = [
        PsamKeyType::Master,
        PsamKeyType::Maintenance,
        PsamKeyType::Purchase,
        PsamKeyType::PinUnblock,
        PsamKeyType::PinReload,
        PsamKeyType::UserCardMaintenance,
        PsamKeyType::Mac,
        PsamKeyType::Encryption,
        PsamKeyType::MacEncryption,
    ];

    /// The type of a code 0..=8.
    pub fn from_code(code: u8) -> Option<PsamKeyType> {
        PsamKeyType::ALL.into_iter().find(|t| t.code() == code)
    }

    /// The code.
    pub const fn code(self) -> u8 {
        self as u8
    }
}

/// A PSAM usage byte: `(levels << 5) | type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PsamUsage {
    levels: u8,
    kind: PsamKeyType,
}

impl PsamUsage {
    /// Decodes and checks a usage byte: levels 1..=3, type 0..=8.
    pub fn from_byte(byte: u8) -> Result<PsamUsage, TemplateFault> {
        let levels = byte >> 5;
        let code = byte & 0x1F;
        if !(1..=3).contains(&levels) {
            return Err(TemplateFault::PsamUsageLevels { byte, levels });
        }
        let kind = PsamKeyType::from_code(code)
            .ok_or(TemplateFault::PsamUsageType { byte, kind: code })?;
        Ok(PsamUsage { levels, kind })
    }

    /// The byte.
    pub const fn byte(self) -> u8 {
        (self.levels << 5) | self.kind.code()
    }

    /// Dispersion levels the PSAM performs itself (1..=3).
    pub const fn levels(self) -> u8 {
        self.levels
    }

    /// The key type.
    pub const fn kind(self) -> PsamKeyType {
        self.kind
    }

    /// The level of the key the PSAM holds: 1 → city key, 2 → provincial key, 3 → national key.
    pub const fn level(self) -> KeyLevel {
        match self.levels {
            1 => KeyLevel::City,
            2 => KeyLevel::Province,
            _ => KeyLevel::National,
        }
    }
}

/// The key protecting a slot for its secure-messaging write.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Protector {
    /// The card vendor's transport key of a blank card.
    VendorTransport,
    /// A key of the template (by name), usually the directory master key.
    Key(String),
}

impl fmt::Display for Protector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protector::VendorTransport => f.write_str(VENDOR_TRANSPORT),
            Protector::Key(name) => f.write_str(name),
        }
    }
}

/// One key of a card template.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeySpec {
    /// Unique name in the template.
    pub name: String,
    /// The directory holding the key (`MF`, `SSSE`, `DF01`, …).
    pub directory: String,
    /// Card key id.
    pub key_id: u8,
    /// Card key version.
    pub key_version: u8,
    /// Key type byte of the card OS.
    pub key_type: u8,
    /// Algorithm.
    pub algorithm: CardAlgorithm,
    /// Length in bytes (matches the algorithm).
    pub length: u8,
    /// Error counter byte.
    pub error_counter: u8,
    /// The PSAM usage byte, if the template gives one.
    pub psam_usage: Option<PsamUsage>,
    /// May the key go into terminal PSAMs (then `psam_usage` is present).
    pub psam_allowed: bool,
    /// The key whose protection is used to write this one.
    pub protected_by: Protector,
    /// Where the key's derivation chain starts.
    pub root: KeyRoot,
    /// Follow-up security level byte of the header.
    pub follow_up: u8,
    /// The dispersion method deriving this key (the template's unless the key names its own).
    pub dispersion: Dispersion,
    /// Free text.
    pub description: Option<String>,
    line: usize,
    protected_by_line: usize,
}

impl KeySpec {
    /// The line of the key's `name` in its template file.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The HSM algorithm.
    pub fn hsm_algorithm(&self) -> Algorithm {
        self.algorithm.algorithm()
    }

    /// True for keys that never leave the issuer (DOMAIN.md §4): card master keys and
    /// maintenance/transport keys (names beginning `MK` or `STK`), and any key whose root is
    /// provincial.
    pub fn is_issuer_only(&self) -> bool {
        is_issuer_only(&self.name, self.root)
    }

    /// The 8-byte card key header (see the module documentation for the layout).
    pub fn card_key_header(&self) -> Vec<u8> {
        vec![
            self.key_type,
            self.key_id,
            self.key_version,
            HEADER_MARKER,
            self.error_counter,
            self.algorithm.header_byte(),
            self.follow_up,
            self.length,
        ]
    }
}

fn is_issuer_only(name: &str, root: KeyRoot) -> bool {
    root == KeyRoot::Provincial || name.starts_with("MK") || name.starts_with("STK")
}

/// A key that goes into PSAMs, with its usage byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PsamKey<'a> {
    /// The card key.
    pub key: &'a KeySpec,
    /// Its usage byte.
    pub usage: PsamUsage,
}

impl PsamKey<'_> {
    /// The level at which the key is released to a PSAM production line.
    pub fn level(&self) -> KeyLevel {
        self.usage.level()
    }
}

/// Lines of the header fields, for errors found by [`Template::extend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct HeaderLines {
    extends: usize,
    generation: usize,
    algorithm: usize,
    dispersion: usize,
}

/// A validated card template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    id: String,
    version: u32,
    generation: String,
    algorithm: CardAlgorithm,
    dispersion: Dispersion,
    description: Option<String>,
    extends: Option<String>,
    region: Option<&'static Region>,
    base_version: Option<u32>,
    keys: Vec<KeySpec>,
    order: Vec<usize>,
    lines: HeaderLines,
}

// ---------------------------------------------------------------------------------------------
// The file format
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    id: Spanned<String>,
    version: Spanned<u32>,
    generation: Spanned<String>,
    algorithm: Spanned<String>,
    dispersion: Spanned<String>,
    description: Option<String>,
    extends: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    #[serde(default, rename = "key")]
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: Spanned<String>,
    directory: Spanned<String>,
    key_id: Spanned<u8>,
    key_version: Spanned<u8>,
    #[serde(rename = "type")]
    key_type: Spanned<u8>,
    algorithm: Option<Spanned<String>>,
    length: Spanned<u32>,
    error_counter: Spanned<u8>,
    psam_usage: Option<Spanned<u8>>,
    psam_allowed: Option<Spanned<bool>>,
    protected_by: Spanned<String>,
    root: Spanned<String>,
    follow_up: Option<Spanned<u8>>,
    dispersion: Option<Spanned<String>>,
    description: Option<String>,
}

/// The 1-based line of byte `offset` of `src`.
fn line_at(src: &str, offset: usize) -> usize {
    let end = offset.min(src.len());
    src.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Builds errors that point into one source text.
struct At<'a>(&'a str);

impl At<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        line_at(self.0, span.start)
    }

    fn err(&self, span: &Range<usize>, fault: TemplateFault) -> Error {
        Error::Template {
            line: self.line(span),
            fault,
        }
    }

    fn toml(&self, e: &toml::de::Error) -> Error {
        Error::Template {
            line: e.span().map_or(1, |s| self.line(&s)),
            fault: TemplateFault::Toml(e.message().to_owned()),
        }
    }
}

fn template_err(line: usize, fault: TemplateFault) -> Error {
    Error::Template { line, fault }
}

/// Refuses fields the schema does not have, at the earliest such line.
fn check_fields(at: &At<'_>, doc: &DeTable<'_>) -> Result<()> {
    let mut unknown: Vec<(Range<usize>, String)> = Vec::new();
    for (k, v) in doc.iter() {
        let name: &str = k.get_ref();
        if !TEMPLATE_FIELDS.contains(&name) {
            unknown.push((k.span(), name.to_owned()));
        }
        if name != "key" {
            continue;
        }
        let Some(items) = v.get_ref().as_array() else {
            continue; // the typed pass reports the type error
        };
        for item in items.iter() {
            if let Some(table) = item.get_ref().as_table() {
                for (kk, _) in table.iter() {
                    let field: &str = kk.get_ref();
                    if !KEY_FIELDS.contains(&field) {
                        unknown.push((kk.span(), field.to_owned()));
                    }
                }
            }
        }
    }
    match unknown.into_iter().min_by_key(|(span, _)| span.start) {
        Some((span, name)) => Err(at.err(&span, TemplateFault::UnknownField(name))),
        None => Ok(()),
    }
}

fn valid_chars(s: &str, max: usize, ok: impl Fn(u8) -> bool) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(ok)
}

fn parse_algorithm(at: &At<'_>, v: &Spanned<String>) -> Result<CardAlgorithm> {
    CardAlgorithm::from_name(v.get_ref()).ok_or_else(|| {
        at.err(
            &v.span(),
            TemplateFault::UnknownName {
                field: "algorithm",
                value: v.get_ref().clone(),
            },
        )
    })
}

fn parse_dispersion(at: &At<'_>, v: &Spanned<String>) -> Result<Dispersion> {
    Dispersion::from_name(v.get_ref()).ok_or_else(|| {
        at.err(
            &v.span(),
            TemplateFault::UnknownName {
                field: "dispersion",
                value: v.get_ref().clone(),
            },
        )
    })
}

impl Template {
    /// Parses and validates a template (a base, or a city extension on its own: see
    /// [`Template::extend`]).
    pub fn parse(src: &str) -> Result<Template> {
        let at = At(src);
        let doc = DeTable::parse(src).map_err(|e| at.toml(&e))?;
        check_fields(&at, doc.get_ref())?;
        let raw =
            RawTemplate::deserialize(toml::de::Deserializer::from(doc)).map_err(|e| at.toml(&e))?;
        build(&at, raw)
    }

    /// A shipped template by id ([`BUILTIN`]).
    pub fn builtin(id: &str) -> Result<Template> {
        let (_, src) = BUILTIN
            .iter()
            .find(|(name, _)| *name == id)
            .ok_or_else(|| Error::UnknownTemplate(id.to_owned()))?;
        Template::parse(src)
    }

    /// Merges a city's extension over its base (N9): the result has the base's keys and the
    /// extension's, the extension's id, version and region, and is validated as a whole.
    /// Errors name lines of the extension (or, for [`TemplateFault::BaseIsExtension`], of
    /// the base).
    pub fn extend(base: &Template, ext: &Template) -> Result<Template> {
        let Some(extends) = ext.extends.as_ref().filter(|_| ext.base_version.is_none()) else {
            return Err(template_err(1, TemplateFault::NotAnExtension));
        };
        if base.extends.is_some() {
            return Err(template_err(
                base.lines.extends,
                TemplateFault::BaseIsExtension,
            ));
        }
        if *extends != base.id {
            return Err(template_err(
                ext.lines.extends,
                TemplateFault::ExtendsMismatch {
                    expected: base.id.clone(),
                    found: extends.clone(),
                },
            ));
        }
        for (field, same, line) in [
            (
                "generation",
                ext.generation == base.generation,
                ext.lines.generation,
            ),
            (
                "algorithm",
                ext.algorithm == base.algorithm,
                ext.lines.algorithm,
            ),
            (
                "dispersion",
                ext.dispersion == base.dispersion,
                ext.lines.dispersion,
            ),
        ] {
            if !same {
                return Err(template_err(line, TemplateFault::HeaderMismatch { field }));
            }
        }
        for k in &ext.keys {
            if let Some(b) = base.key(&k.name) {
                return Err(template_err(
                    k.line,
                    TemplateFault::RedefinesBaseKey {
                        name: k.name.clone(),
                        base_line: b.line,
                    },
                ));
            }
            if let Some(b) = base.keys.iter().find(|b| same_slot(b, k)) {
                return Err(template_err(
                    k.line,
                    TemplateFault::DuplicateSlot {
                        name: k.name.clone(),
                        directory: k.directory.clone(),
                        key_id: k.key_id,
                        key_version: k.key_version,
                        other: b.name.clone(),
                    },
                ));
            }
        }
        let keys: Vec<KeySpec> = base.keys.iter().chain(&ext.keys).cloned().collect();
        let order = link(&keys, false)?;
        Ok(Template {
            id: ext.id.clone(),
            version: ext.version,
            generation: base.generation.clone(),
            algorithm: base.algorithm,
            dispersion: base.dispersion,
            description: ext.description.clone().or_else(|| base.description.clone()),
            extends: Some(base.id.clone()),
            region: ext.region,
            base_version: Some(base.version),
            keys,
            order,
            lines: ext.lines,
        })
    }

    /// Template id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Template revision.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Card specification generation.
    pub fn generation(&self) -> &str {
        &self.generation
    }

    /// Default key algorithm.
    pub fn algorithm(&self) -> CardAlgorithm {
        self.algorithm
    }

    /// Dispersion method of the template's keys (a key may name its own).
    pub fn dispersion(&self) -> Dispersion {
        self.dispersion
    }

    /// Free text.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The base template's id, for an extension.
    pub fn extends(&self) -> Option<&str> {
        self.extends.as_deref()
    }

    /// The city owning an extension.
    pub fn region(&self) -> Option<&'static Region> {
        self.region
    }

    /// For a merged extension, the revision of the base it was merged with.
    pub fn base_version(&self) -> Option<u32> {
        self.base_version
    }

    /// Keys in file order (for a merged extension: the base's, then the extension's).
    pub fn keys(&self) -> &[KeySpec] {
        &self.keys
    }

    /// The key named `name`.
    pub fn key(&self, name: &str) -> Option<&KeySpec> {
        self.keys.iter().find(|k| k.name == name)
    }

    /// Keys in the order they are written to a card: every key after its protector, otherwise
    /// in file order. (For an extension that is not merged yet, base protectors are absent.)
    pub fn write_order(&self) -> impl Iterator<Item = &KeySpec> + '_ {
        self.order.iter().filter_map(|&i| self.keys.get(i))
    }

    /// The keys allowed in terminal PSAMs, in file order, with their usage bytes.
    pub fn psam_keys(&self) -> impl Iterator<Item = PsamKey<'_>> + '_ {
        self.keys.iter().filter_map(|key| match key.psam_usage {
            Some(usage) if key.psam_allowed => Some(PsamKey { key, usage }),
            _ => None,
        })
    }

    /// The card key header of `key` ([`KeySpec::card_key_header`]).
    pub fn card_key_header(&self, key: &KeySpec) -> Vec<u8> {
        key.card_key_header()
    }
}

fn same_slot(a: &KeySpec, b: &KeySpec) -> bool {
    a.directory == b.directory && a.key_id == b.key_id && a.key_version == b.key_version
}

fn build(at: &At<'_>, raw: RawTemplate) -> Result<Template> {
    let id = raw.id.get_ref();
    if !valid_chars(id, 64, |b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'
    }) {
        return Err(at.err(
            &raw.id.span(),
            TemplateFault::InvalidValue {
                field: "id",
                expected: "1 to 64 of a-z, 0-9, '.', '-'",
            },
        ));
    }
    if *raw.version.get_ref() == 0 {
        return Err(at.err(
            &raw.version.span(),
            TemplateFault::InvalidValue {
                field: "version",
                expected: "at least 1",
            },
        ));
    }
    if raw.generation.get_ref().trim().is_empty() {
        return Err(at.err(
            &raw.generation.span(),
            TemplateFault::InvalidValue {
                field: "generation",
                expected: "a non-empty generation such as \"2.0\"",
            },
        ));
    }
    let algorithm = parse_algorithm(at, &raw.algorithm)?;
    let dispersion = parse_dispersion(at, &raw.dispersion)?;
    if !algorithm.derivable_by(dispersion) {
        return Err(at.err(
            &raw.dispersion.span(),
            TemplateFault::DispersionMismatch {
                algorithm,
                dispersion: dispersion.name(),
            },
        ));
    }
    let region = match (&raw.extends, &raw.region) {
        (None, None) => None,
        (Some(e), None) => return Err(at.err(&e.span(), TemplateFault::ExtendsWithoutRegion)),
        (None, Some(r)) => return Err(at.err(&r.span(), TemplateFault::RegionWithoutExtends)),
        (Some(e), Some(r)) => {
            if e.get_ref() == id {
                return Err(at.err(
                    &e.span(),
                    TemplateFault::InvalidValue {
                        field: "extends",
                        expected: "the id of another template",
                    },
                ));
            }
            match Region::lookup(r.get_ref()) {
                Ok(city) if city.is_city() => Some(city),
                _ => {
                    return Err(
                        at.err(&r.span(), TemplateFault::RegionNotCity(r.get_ref().clone()))
                    );
                }
            }
        }
    };
    let is_extension = raw.extends.is_some();
    if raw.keys.is_empty() {
        return Err(template_err(1, TemplateFault::NoKeys));
    }

    let mut keys: Vec<KeySpec> = Vec::with_capacity(raw.keys.len());
    let mut vendor_transport: Option<String> = None;
    for rk in raw.keys {
        let key = build_key(at, rk, algorithm, dispersion, &keys)?;
        if key.protected_by == Protector::VendorTransport {
            if is_extension {
                return Err(template_err(
                    key.protected_by_line,
                    TemplateFault::VendorTransportInExtension,
                ));
            }
            if let Some(first) = &vendor_transport {
                return Err(template_err(
                    key.protected_by_line,
                    TemplateFault::SecondVendorTransport {
                        first: first.clone(),
                    },
                ));
            }
            vendor_transport = Some(key.name.clone());
        }
        keys.push(key);
    }
    let order = link(&keys, is_extension)?;
    Ok(Template {
        id: id.clone(),
        version: *raw.version.get_ref(),
        generation: raw.generation.get_ref().clone(),
        algorithm,
        dispersion,
        description: raw.description,
        extends: raw.extends.as_ref().map(|e| e.get_ref().clone()),
        region,
        base_version: None,
        keys,
        order,
        lines: HeaderLines {
            extends: raw.extends.as_ref().map_or(1, |e| at.line(&e.span())),
            generation: at.line(&raw.generation.span()),
            algorithm: at.line(&raw.algorithm.span()),
            dispersion: at.line(&raw.dispersion.span()),
        },
    })
}

/// Validates one key against the template header and the keys before it.
fn build_key(
    at: &At<'_>,
    rk: RawKey,
    default_alg: CardAlgorithm,
    default_dispersion: Dispersion,
    earlier: &[KeySpec],
) -> Result<KeySpec> {
    let name = rk.name.get_ref();
    let name_span = rk.name.span();
    if !valid_chars(name, 32, |b| {
        b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'
    }) {
        return Err(at.err(
            &name_span,
            TemplateFault::InvalidValue {
                field: "name",
                expected: "1 to 32 of A-Z, 0-9, _",
            },
        ));
    }
    if let Some(first) = earlier.iter().find(|k| k.name == *name) {
        return Err(at.err(
            &name_span,
            TemplateFault::DuplicateKeyName {
                name: name.clone(),
                first_line: first.line,
            },
        ));
    }
    let directory = rk.directory.get_ref();
    if !valid_chars(directory, 16, |b| {
        b.is_ascii_uppercase() || b.is_ascii_digit()
    }) {
        return Err(at.err(
            &rk.directory.span(),
            TemplateFault::InvalidValue {
                field: "directory",
                expected: "1 to 16 of A-Z, 0-9 (MF, SSSE, DF01, …)",
            },
        ));
    }
    let (key_id, key_version) = (*rk.key_id.get_ref(), *rk.key_version.get_ref());
    if let Some(other) = earlier
        .iter()
        .find(|k| k.directory == *directory && k.key_id == key_id && k.key_version == key_version)
    {
        return Err(at.err(
            &rk.key_id.span(),
            TemplateFault::DuplicateSlot {
                name: name.clone(),
                directory: directory.clone(),
                key_id,
                key_version,
                other: other.name.clone(),
            },
        ));
    }

    let algorithm = match &rk.algorithm {
        Some(a) => parse_algorithm(at, a)?,
        None => default_alg,
    };
    let length = *rk.length.get_ref();
    let length_u8 = u8::try_from(length)
        .ok()
        .filter(|&l| usize::from(l) == algorithm.key_len());
    let Some(length_u8) = length_u8 else {
        return Err(at.err(
            &rk.length.span(),
            TemplateFault::LengthMismatch {
                algorithm,
                expected: algorithm.key_len(),
                actual: length,
            },
        ));
    };
    let dispersion = match &rk.dispersion {
        Some(d) => parse_dispersion(at, d)?,
        None => default_dispersion,
    };
    if !algorithm.derivable_by(dispersion) {
        // Point at the key's own dispersion if it named one, else at what made it differ.
        let span = rk
            .dispersion
            .as_ref()
            .or(rk.algorithm.as_ref())
            .map_or(name_span.clone(), Spanned::span);
        return Err(at.err(
            &span,
            TemplateFault::DispersionMismatch {
                algorithm,
                dispersion: dispersion.name(),
            },
        ));
    }

    let root = match rk.root.get_ref().as_str() {
        "national" => KeyRoot::National,
        "provincial" => KeyRoot::Provincial,
        other => {
            return Err(at.err(
                &rk.root.span(),
                TemplateFault::UnknownName {
                    field: "root",
                    value: other.to_owned(),
                },
            ));
        }
    };

    let psam_usage = match &rk.psam_usage {
        Some(u) => {
            let usage = PsamUsage::from_byte(*u.get_ref()).map_err(|f| at.err(&u.span(), f))?;
            if root == KeyRoot::Provincial && usage.level() == KeyLevel::National {
                return Err(at.err(
                    &u.span(),
                    TemplateFault::PsamLevelAboveRoot { byte: usage.byte() },
                ));
            }
            Some(usage)
        }
        None => None,
    };
    let psam_allowed = rk.psam_allowed.as_ref().is_some_and(|a| *a.get_ref());
    if let (true, Some(allowed)) = (psam_allowed, &rk.psam_allowed) {
        let why = match psam_usage {
            None => Some(PsamRefusal::NoUsageByte),
            Some(u) if u.kind() == PsamKeyType::Master => Some(PsamRefusal::MasterType),
            Some(_) if is_issuer_only(name, root) => Some(PsamRefusal::IssuerOnly),
            Some(_) => None,
        };
        if let Some(why) = why {
            return Err(at.err(
                &allowed.span(),
                TemplateFault::PsamRefused {
                    name: name.clone(),
                    why,
                },
            ));
        }
    }

    let protected_by = match rk.protected_by.get_ref().as_str() {
        VENDOR_TRANSPORT => Protector::VendorTransport,
        other => Protector::Key(other.to_owned()),
    };

    Ok(KeySpec {
        name: name.clone(),
        directory: directory.clone(),
        key_id,
        key_version,
        key_type: *rk.key_type.get_ref(),
        algorithm,
        length: length_u8,
        error_counter: *rk.error_counter.get_ref(),
        psam_usage,
        psam_allowed,
        protected_by,
        root,
        follow_up: rk.follow_up.as_ref().map_or(0, |f| *f.get_ref()),
        dispersion,
        description: rk.description,
        line: at.line(&name_span),
        protected_by_line: at.line(&rk.protected_by.span()),
    })
}

/// Resolves `protected_by`, refuses cycles, and returns the write order (indices into `keys`):
/// every key after its protector, otherwise in file order. With `allow_external`, names that
/// are not in `keys` are taken as keys of a base template (an unmerged extension).
fn link(keys: &[KeySpec], allow_external: bool) -> Result<Vec<usize>> {
    let index: HashMap<&str, usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.name.as_str(), i))
        .collect();
    let mut parent: Vec<Option<usize>> = vec![None; keys.len()];
    for (i, k) in keys.iter().enumerate() {
        if let Protector::Key(p) = &k.protected_by {
            match index.get(p.as_str()) {
                Some(&j) => parent[i] = Some(j),
                None if allow_external => {}
                None => {
                    return Err(template_err(
                        k.protected_by_line,
                        TemplateFault::UnknownProtector(p.clone()),
                    ));
                }
            }
        }
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; keys.len()];
    let mut order = Vec::with_capacity(keys.len());
    for start in 0..keys.len() {
        // Walk up the protector chain to a key already placed (or a root), then place the
        // chain top-down. Each key has one protector, so a repeated key on the path is a cycle.
        let mut path = Vec::new();
        let mut cur = Some(start);
        while let Some(c) = cur {
            match mark[c] {
                Mark::Done => break,
                Mark::OnPath => {
                    let from = path.iter().position(|&x| x == c).unwrap_or(0);
                    let cycle = &path[from..];
                    // Report at the cycle member that comes first in the file.
                    let first = cycle.iter().copied().min().unwrap_or(c);
                    let pos = cycle.iter().position(|&x| x == first).unwrap_or(0);
                    let mut names: Vec<String> = cycle[pos..]
                        .iter()
                        .chain(&cycle[..pos])
                        .map(|&x| keys[x].name.clone())
                        .collect();
                    names.push(keys[first].name.clone());
                    return Err(template_err(
                        keys[first].protected_by_line,
                        TemplateFault::ProtectorCycle(names),
                    ));
                }
                Mark::New => {
                    mark[c] = Mark::OnPath;
                    path.push(c);
                    cur = parent[c];
                }
            }
        }
        for &c in path.iter().rev() {
            mark[c] = Mark::Done;
            order.push(c);
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(src: &str) -> (usize, TemplateFault) {
        match Template::parse(src) {
            Err(Error::Template { line, fault }) => (line, fault),
            other => panic!("expected a template error, got {other:?}"),
        }
    }

    /// A valid minimal template: header on lines 1-5, MK_MF on 7-16, RK on 18-29.
    const MINI: &str = r#"id = "mini"
version = 1
generation = "2.0"
algorithm = "tdes"
dispersion = "pboc-tdes"

[[key]]
name = "MK_MF"
directory = "MF"
key_id = 0x00
key_version = 0x01
type = 0x39
length = 16
error_counter = 0x33
protected_by = "vendor-transport"
root = "provincial"

[[key]]
name = "RK_MF"
directory = "MF"
key_id = 0x01
key_version = 0x01
type = 0x39
length = 16
error_counter = 0x55
psam_usage = 0x28
psam_allowed = true
protected_by = "MK_MF"
root = "national"
"#;

    /// `MINI` with `from` replaced by `to` (exactly once).
    fn mini_with(from: &str, to: &str) -> String {
        assert_eq!(MINI.matches(from).count(), 1, "{from}");
        MINI.replacen(from, to, 1)
    }

    /// `MINI` plus one more key (starting at line 31).
    fn mini_plus(key: &str) -> String {
        format!("{MINI}\n{key}")
    }

    const EXTRA: &str = r#"[[key]]
name = "UK_MF"
directory = "MF"
key_id = 0x02
key_version = 0x01
type = 0x36
length = 16
error_counter = 0x55
protected_by = "MK_MF"
root = "national"
"#;

    // ---- the shipped templates ----

    #[test]
    fn ssc_2_0_loads() {
        let t = Template::parse(include_str!("../templates/ssc-2.0.toml")).unwrap();
        assert_eq!(t.id(), "ssc-2.0");
        assert_eq!(t.version(), 1);
        assert_eq!(t.generation(), "2.0");
        assert_eq!(t.algorithm(), CardAlgorithm::Tdes);
        assert_eq!(t.dispersion(), Dispersion::PbocTdes);
        assert_eq!(t.extends(), None);
        assert_eq!(t.keys().len(), 24);
        assert_eq!(t.psam_keys().count(), 9);
        for dir in ["MF", "SSSE", "DF01", "DF02", "DF03", "DF04", "DF05"] {
            let mk = t.key(&format!("MK_{dir}")).unwrap();
            assert_eq!(mk.directory, dir);
            assert_eq!(mk.root, KeyRoot::Provincial);
            assert!(!mk.psam_allowed);
            assert!(mk.is_issuer_only());
        }
        for k in t.keys() {
            assert_eq!(k.algorithm, CardAlgorithm::Tdes);
            assert_eq!(k.length, 16);
            assert_eq!(k.dispersion, Dispersion::PbocTdes);
        }
        let mk = t.key("MK_MF").unwrap();
        assert_eq!(mk.protected_by, Protector::VendorTransport);
        assert_eq!(t.write_order().next().unwrap().name, "MK_MF");

        let rk = t.key("RK_SSSE").unwrap();
        assert_eq!(rk.directory, "SSSE");
        assert_eq!(rk.protected_by, Protector::Key("MK_SSSE".to_owned()));
        assert_eq!(rk.psam_usage.unwrap().byte(), 0x48);
        assert_eq!(
            rk.card_key_header(),
            [0x39, 0x03, 0x01, 0xEF, 0x55, 0x00, 0x01, 16]
        );
        // PSAM delivery at every level.
        let levels: Vec<(&str, KeyLevel)> = t
            .psam_keys()
            .map(|p| (p.key.name.as_str(), p.level()))
            .collect();
        assert!(levels.contains(&("RK_DF03", KeyLevel::City)));
        assert!(levels.contains(&("RK_SSSE", KeyLevel::Province)));
        assert!(levels.contains(&("IRK_SSSE", KeyLevel::National)));
        // Issuer-only keys never reach PSAMs; the load and TAC keys stay with the issuer.
        for p in t.psam_keys() {
            assert!(!p.key.is_issuer_only(), "{}", p.key.name);
            assert_ne!(p.usage.kind(), PsamKeyType::Master);
        }
        assert!(!t.key("DLK_DF04").unwrap().psam_allowed);
        assert!(!t.key("DTK_DF04").unwrap().psam_allowed);
        assert_eq!(
            t.key("DPK_DF04").unwrap().psam_usage.unwrap().kind(),
            PsamKeyType::Purchase
        );
    }

    #[test]
    fn ssc_3_0_loads() {
        let t = Template::parse(include_str!("../templates/ssc-3.0.toml")).unwrap();
        assert_eq!(t.id(), "ssc-3.0");
        assert_eq!(t.generation(), "3.0");
        assert_eq!(t.algorithm(), CardAlgorithm::Sm4);
        assert_eq!(t.dispersion(), Dispersion::Sm4Complement);
        assert_eq!(t.keys().len(), 24);
        assert_eq!(t.psam_keys().count(), 9);
        for k in t.keys() {
            assert_eq!(k.algorithm, CardAlgorithm::Sm4);
            assert_eq!(k.hsm_algorithm(), Algorithm::Sm4);
            assert_eq!(k.dispersion, Dispersion::Sm4Complement);
        }
        let mk = t.key("MK_DF03").unwrap();
        assert_eq!(
            t.card_key_header(mk),
            [0x39, 0x00, 0x01, 0xEF, 0x33, 0x02, 0x00, 16]
        );
        // Same key set as 2.0.
        let two = Template::builtin("ssc-2.0").unwrap();
        let names = |t: &Template| t.keys().iter().map(|k| k.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&t), names(&two));
    }

    #[test]
    fn builtin_by_id() {
        assert_eq!(Template::builtin("ssc-3.0").unwrap().id(), "ssc-3.0");
        assert!(matches!(
            Template::builtin("ssc-9.9"),
            Err(Error::UnknownTemplate(id)) if id == "ssc-9.9"
        ));
    }

    #[test]
    fn write_order_puts_protectors_first() {
        let t = Template::parse(include_str!("../templates/ssc-2.0.toml")).unwrap();
        let order: Vec<&str> = t.write_order().map(|k| k.name.as_str()).collect();
        assert_eq!(order.len(), t.keys().len());
        for k in t.keys() {
            if let Protector::Key(p) = &k.protected_by {
                let pos = |n: &str| order.iter().position(|x| *x == n).unwrap();
                assert!(pos(p) < pos(&k.name), "{p} before {}", k.name);
            }
        }
        // A protector defined after the key it protects is still written first.
        let src = mini_plus(
            r#"[[key]]
name = "UK_DF01"
directory = "DF01"
key_id = 0x01
key_version = 0x01
type = 0x36
length = 16
error_counter = 0x55
protected_by = "MK_DF01"
root = "national"

[[key]]
name = "MK_DF01"
directory = "DF01"
key_id = 0x00
key_version = 0x01
type = 0x39
length = 16
error_counter = 0x33
protected_by = "MK_MF"
root = "provincial"
"#,
        );
        let t = Template::parse(&src).unwrap();
        let order: Vec<&str> = t.write_order().map(|k| k.name.as_str()).collect();
        assert_eq!(order, ["MK_MF", "RK_MF", "MK_DF01", "UK_DF01"]);
        let file: Vec<&str> = t.keys().iter().map(|k| k.name.as_str()).collect();
        assert_eq!(file, ["MK_MF", "RK_MF", "UK_DF01", "MK_DF01"]);
    }

    #[test]
    fn key_header_layout() {
        let t = Template::parse(&mini_plus(
            r#"[[key]]
name = "DK_MF"
directory = "MF"
key_id = 0x07
key_version = 0x02
type = 0x30
algorithm = "des"
length = 8
error_counter = 0xFF
protected_by = "MK_MF"
root = "national"
follow_up = 0x0A
dispersion = "pboc-des"
"#,
        ))
        .unwrap();
        let k = t.key("DK_MF").unwrap();
        assert_eq!(k.algorithm, CardAlgorithm::Des);
        assert_eq!(k.dispersion, Dispersion::PbocDes);
        assert_eq!(
            k.card_key_header(),
            [0x30, 0x07, 0x02, 0xEF, 0xFF, 0x01, 0x0A, 0x08]
        );
        assert_eq!(k.line(), 32);
    }

    #[test]
    fn psam_usage_bytes() {
        for (byte, levels, kind, level) in [
            (0x28, 1, PsamKeyType::MacEncryption, KeyLevel::City),
            (0x48, 2, PsamKeyType::MacEncryption, KeyLevel::Province),
            (0x67, 3, PsamKeyType::Encryption, KeyLevel::National),
            (0x42, 2, PsamKeyType::Purchase, KeyLevel::Province),
            (0x20, 1, PsamKeyType::Master, KeyLevel::City),
        ] {
            let u = PsamUsage::from_byte(byte).unwrap();
            assert_eq!((u.levels(), u.kind(), u.level()), (levels, kind, level));
            assert_eq!(u.byte(), byte);
            assert_eq!(u.level().levels_above_card(), levels);
        }
        assert_eq!(
            PsamUsage::from_byte(0x08),
            Err(TemplateFault::PsamUsageLevels {
                byte: 0x08,
                levels: 0
            })
        );
        assert_eq!(
            PsamUsage::from_byte(0x88),
            Err(TemplateFault::PsamUsageLevels {
                byte: 0x88,
                levels: 4
            })
        );
        assert_eq!(
            PsamUsage::from_byte(0x29),
            Err(TemplateFault::PsamUsageType {
                byte: 0x29,
                kind: 9
            })
        );
    }

    // ---- refusals, each with its line ----

    #[test]
    fn syntax_and_type_errors_have_lines() {
        let (line, fault) = refusal(&mini_with(
            "type = 0x39\nlength = 16\nerror_counter = 0x33",
            "type = 0x39\nlength = 16\nerror_counter = \"x",
        ));
        assert_eq!(line, 14);
        assert!(matches!(fault, TemplateFault::Toml(_)), "{fault}");
        let (line, fault) = refusal(&mini_with("key_id = 0x01", "key_id = 0x100"));
        assert_eq!(line, 21);
        assert!(matches!(fault, TemplateFault::Toml(_)), "{fault}");
        // A missing field: reported in its table.
        let (line, fault) = refusal(&mini_with("root = \"national\"\n", ""));
        assert!(
            matches!(&fault, TemplateFault::Toml(m) if m.contains("root")),
            "{fault}"
        );
        assert!((18..=29).contains(&line), "{line}");
    }

    #[test]
    fn unknown_fields() {
        assert_eq!(
            refusal(&mini_with(
                "version = 1\n",
                "version = 1\ncolour = \"red\"\n"
            )),
            (3, TemplateFault::UnknownField("colour".to_owned()))
        );
        assert_eq!(
            refusal(&mini_with("key_id = 0x01", "key_id = 0x01\nkey_ID = 0x01")),
            (22, TemplateFault::UnknownField("key_ID".to_owned()))
        );
        // The earliest of several.
        let src = mini_with("key_id = 0x00", "key_id = 0x00\nzz = 1");
        let src = src.replacen("key_id = 0x01", "key_id = 0x01\naa = 1", 1);
        assert_eq!(
            refusal(&src),
            (11, TemplateFault::UnknownField("zz".to_owned()))
        );
    }

    #[test]
    fn header_refusals() {
        assert_eq!(
            refusal(&mini_with("id = \"mini\"", "id = \"Mini Template\"")),
            (
                1,
                TemplateFault::InvalidValue {
                    field: "id",
                    expected: "1 to 64 of a-z, 0-9, '.', '-'"
                }
            )
        );
        assert!(matches!(
            refusal(&mini_with("version = 1", "version = 0")),
            (
                2,
                TemplateFault::InvalidValue {
                    field: "version",
                    ..
                }
            )
        ));
        assert_eq!(
            refusal(&mini_with("algorithm = \"tdes\"", "algorithm = \"aes\"")),
            (
                4,
                TemplateFault::UnknownName {
                    field: "algorithm",
                    value: "aes".to_owned()
                }
            )
        );
        assert_eq!(
            refusal(&mini_with(
                "dispersion = \"pboc-tdes\"",
                "dispersion = \"xor\""
            )),
            (
                5,
                TemplateFault::UnknownName {
                    field: "dispersion",
                    value: "xor".to_owned()
                }
            )
        );
        assert_eq!(
            refusal(&mini_with(
                "dispersion = \"pboc-tdes\"",
                "dispersion = \"sm4-f-notf-v1\""
            )),
            (
                5,
                TemplateFault::DispersionMismatch {
                    algorithm: CardAlgorithm::Tdes,
                    dispersion: "sm4-f-notf-v1"
                }
            )
        );
        let no_keys = MINI.split("[[key]]").next().unwrap();
        assert_eq!(refusal(no_keys), (1, TemplateFault::NoKeys));
    }

    #[test]
    fn duplicate_names_and_slots() {
        assert_eq!(
            refusal(&mini_with("name = \"RK_MF\"", "name = \"MK_MF\"")),
            (
                19,
                TemplateFault::DuplicateKeyName {
                    name: "MK_MF".to_owned(),
                    first_line: 8
                }
            )
        );
        assert_eq!(
            refusal(&mini_with("key_id = 0x01", "key_id = 0x00")),
            (
                21,
                TemplateFault::DuplicateSlot {
                    name: "RK_MF".to_owned(),
                    directory: "MF".to_owned(),
                    key_id: 0,
                    key_version: 1,
                    other: "MK_MF".to_owned()
                }
            )
        );
        // Same id, another version: a different slot.
        let ok = mini_with(
            "key_id = 0x01\nkey_version = 0x01",
            "key_id = 0x00\nkey_version = 0x02",
        );
        assert!(Template::parse(&ok).is_ok());
        assert!(matches!(
            refusal(&mini_with("name = \"RK_MF\"", "name = \"rk-mf\"")),
            (19, TemplateFault::InvalidValue { field: "name", .. })
        ));
        assert!(matches!(
            refusal(&mini_with(
                "directory = \"MF\"\nkey_id = 0x01",
                "directory = \"df 01\"\nkey_id = 0x01"
            )),
            (
                20,
                TemplateFault::InvalidValue {
                    field: "directory",
                    ..
                }
            )
        ));
    }

    #[test]
    fn length_must_match_the_algorithm() {
        let src = mini_with(
            "type = 0x39\nlength = 16\nerror_counter = 0x55",
            "type = 0x39\nlength = 8\nerror_counter = 0x55",
        );
        assert_eq!(
            refusal(&src),
            (
                24,
                TemplateFault::LengthMismatch {
                    algorithm: CardAlgorithm::Tdes,
                    expected: 16,
                    actual: 8
                }
            )
        );
        let src = mini_plus(
            r#"[[key]]
name = "DK_MF"
directory = "MF"
key_id = 0x07
key_version = 0x01
type = 0x30
algorithm = "des"
length = 16
error_counter = 0xFF
protected_by = "MK_MF"
root = "national"
dispersion = "pboc-des"
"#,
        );
        assert_eq!(
            refusal(&src),
            (
                38,
                TemplateFault::LengthMismatch {
                    algorithm: CardAlgorithm::Des,
                    expected: 8,
                    actual: 16
                }
            )
        );
    }

    #[test]
    fn key_algorithm_must_fit_the_dispersion() {
        let sm4_key = r#"[[key]]
name = "SK_MF"
directory = "MF"
key_id = 0x07
key_version = 0x01
type = 0x30
algorithm = "sm4"
length = 16
error_counter = 0xFF
protected_by = "MK_MF"
root = "national"
"#;
        // An SM4 key in a pboc-tdes template: refused at its algorithm line…
        assert_eq!(
            refusal(&mini_plus(sm4_key)),
            (
                37,
                TemplateFault::DispersionMismatch {
                    algorithm: CardAlgorithm::Sm4,
                    dispersion: "pboc-tdes"
                }
            )
        );
        // …unless the key names its own dispersion.
        let own = mini_plus(&format!("{sm4_key}dispersion = \"sm4-f-notf-v1\"\n"));
        let t = Template::parse(&own).unwrap();
        assert_eq!(
            t.key("SK_MF").unwrap().dispersion,
            Dispersion::Sm4Complement
        );
        // A key naming a dispersion that does not fit it: refused at that line.
        let wrong = mini_plus(&format!("{sm4_key}dispersion = \"pboc-des\"\n"));
        assert_eq!(
            refusal(&wrong),
            (
                42,
                TemplateFault::DispersionMismatch {
                    algorithm: CardAlgorithm::Sm4,
                    dispersion: "pboc-des"
                }
            )
        );
        // And the other way round: a 3DES key in an SM4 template.
        let sm4_template = include_str!("../templates/ssc-3.0.toml").replacen(
            "name = \"STK_DF05\"",
            "name = \"STK_DF05\"\nalgorithm = \"tdes\"",
            1,
        );
        let (line, fault) = refusal(&sm4_template);
        assert_eq!(
            fault,
            TemplateFault::DispersionMismatch {
                algorithm: CardAlgorithm::Tdes,
                dispersion: "sm4-f-notf-v1"
            }
        );
        assert!(
            sm4_template
                .lines()
                .nth(line - 1)
                .unwrap()
                .starts_with("algorithm = \"tdes\"")
        );
    }

    #[test]
    fn psam_refusals() {
        // Levels out of 1..=3, type above 8.
        assert_eq!(
            refusal(&mini_with("psam_usage = 0x28", "psam_usage = 0x08")),
            (
                26,
                TemplateFault::PsamUsageLevels {
                    byte: 0x08,
                    levels: 0
                }
            )
        );
        assert_eq!(
            refusal(&mini_with("psam_usage = 0x28", "psam_usage = 0x89")),
            (
                26,
                TemplateFault::PsamUsageLevels {
                    byte: 0x89,
                    levels: 4
                }
            )
        );
        assert_eq!(
            refusal(&mini_with("psam_usage = 0x28", "psam_usage = 0x2C")),
            (
                26,
                TemplateFault::PsamUsageType {
                    byte: 0x2C,
                    kind: 12
                }
            )
        );
        // Type 0 (master) may not go into a PSAM.
        assert_eq!(
            refusal(&mini_with("psam_usage = 0x28", "psam_usage = 0x20")),
            (
                27,
                TemplateFault::PsamRefused {
                    name: "RK_MF".to_owned(),
                    why: PsamRefusal::MasterType
                }
            )
        );
        // Allowed without a usage byte.
        assert_eq!(
            refusal(&mini_with("psam_usage = 0x28\n", "")),
            (
                26,
                TemplateFault::PsamRefused {
                    name: "RK_MF".to_owned(),
                    why: PsamRefusal::NoUsageByte
                }
            )
        );
        // An MK / STK-like key, or a provincial root, is issuer-only.
        for (from, to, line) in [
            ("name = \"RK_MF\"", "name = \"STK_MF\"", 27),
            ("name = \"RK_MF\"", "name = \"MKX_MF\"", 27),
        ] {
            let (l, fault) = refusal(&mini_with(from, to));
            assert_eq!(l, line);
            assert!(
                matches!(
                    fault,
                    TemplateFault::PsamRefused {
                        why: PsamRefusal::IssuerOnly,
                        ..
                    }
                ),
                "{fault}"
            );
        }
        let src = mini_with("root = \"national\"", "root = \"provincial\"");
        assert!(matches!(
            refusal(&src),
            (
                27,
                TemplateFault::PsamRefused {
                    why: PsamRefusal::IssuerOnly,
                    ..
                }
            )
        ));
        // A provincial root has no national level.
        let src = mini_with(
            "psam_usage = 0x28\npsam_allowed = true\n",
            "psam_usage = 0x67\n",
        )
        .replacen("root = \"national\"", "root = \"provincial\"", 1);
        assert_eq!(
            refusal(&src),
            (26, TemplateFault::PsamLevelAboveRoot { byte: 0x67 })
        );
        // A usage byte alone (not allowed) is fine, even on an MK.
        let src = mini_with(
            "protected_by = \"vendor-transport\"",
            "protected_by = \"vendor-transport\"\npsam_usage = 0x41",
        );
        let t = Template::parse(&src).unwrap();
        assert_eq!(t.psam_keys().count(), 1);
        assert_eq!(
            refusal(&mini_with("root = \"national\"", "root = \"ministry\"")),
            (
                29,
                TemplateFault::UnknownName {
                    field: "root",
                    value: "ministry".to_owned()
                }
            )
        );
    }

    #[test]
    fn protector_refusals() {
        assert_eq!(
            refusal(&mini_with(
                "protected_by = \"MK_MF\"",
                "protected_by = \"MK_DF09\""
            )),
            (28, TemplateFault::UnknownProtector("MK_DF09".to_owned()))
        );
        // A key protecting itself.
        assert_eq!(
            refusal(&mini_with(
                "protected_by = \"MK_MF\"",
                "protected_by = \"RK_MF\""
            )),
            (
                28,
                TemplateFault::ProtectorCycle(vec!["RK_MF".to_owned(), "RK_MF".to_owned()])
            )
        );
        // A longer cycle: RK_MF → UK_MF → RK_MF, reported at the first in the file.
        let src = mini_plus(&EXTRA.replace("protected_by = \"MK_MF\"", "protected_by = \"RK_MF\""))
            .replacen("protected_by = \"MK_MF\"", "protected_by = \"UK_MF\"", 1);
        assert_eq!(
            refusal(&src),
            (
                28,
                TemplateFault::ProtectorCycle(vec![
                    "RK_MF".to_owned(),
                    "UK_MF".to_owned(),
                    "RK_MF".to_owned()
                ])
            )
        );
        // Two vendor-transport keys.
        let src = mini_plus(&EXTRA.replace(
            "protected_by = \"MK_MF\"",
            "protected_by = \"vendor-transport\"",
        ));
        assert_eq!(
            refusal(&src),
            (
                39,
                TemplateFault::SecondVendorTransport {
                    first: "MK_MF".to_owned()
                }
            )
        );
    }

    // ---- city extensions (N9) ----

    const SHENZHEN: &str = r#"# Shenzhen's local extension
id = "ssc-2.0-440300"
version = 3
generation = "2.0"
algorithm = "tdes"
dispersion = "pboc-tdes"
extends = "ssc-2.0"
region = "440300"

[[key]]
name = "MK_DF06"
directory = "DF06"
key_id = 0x00
key_version = 0x01
type = 0x39
length = 16
error_counter = 0x33
protected_by = "MK_SSSE"
root = "provincial"

[[key]]
name = "RK_DF06"
directory = "DF06"
key_id = 0x01
key_version = 0x01
type = 0x39
length = 16
error_counter = 0x55
psam_usage = 0x28
psam_allowed = true
protected_by = "MK_DF06"
root = "national"
"#;

    fn base() -> Template {
        Template::builtin("ssc-2.0").unwrap()
    }

    fn extend_refusal(base: &Template, ext_src: &str) -> (usize, TemplateFault) {
        let ext = Template::parse(ext_src).unwrap();
        match Template::extend(base, &ext) {
            Err(Error::Template { line, fault }) => (line, fault),
            other => panic!("expected a template error, got {other:?}"),
        }
    }

    #[test]
    fn extension_merges_over_its_base() {
        let ext = Template::parse(SHENZHEN).unwrap();
        assert_eq!(ext.extends(), Some("ssc-2.0"));
        assert_eq!(ext.region().unwrap().name_en, "Shenzhen");
        assert_eq!(ext.base_version(), None);
        let base = base();
        let t = Template::extend(&base, &ext).unwrap();
        assert_eq!(t.id(), "ssc-2.0-440300");
        assert_eq!(t.version(), 3);
        assert_eq!(t.base_version(), Some(1));
        assert_eq!(t.extends(), Some("ssc-2.0"));
        assert_eq!(t.region().unwrap().code, "440300");
        assert_eq!(t.keys().len(), 26);
        assert_eq!(t.psam_keys().count(), 10);
        let order: Vec<&str> = t.write_order().map(|k| k.name.as_str()).collect();
        let pos = |n: &str| order.iter().position(|x| *x == n).unwrap();
        assert!(pos("MK_SSSE") < pos("MK_DF06") && pos("MK_DF06") < pos("RK_DF06"));
        // A merged template is not extended again.
        assert_eq!(
            Template::extend(&base, &t).unwrap_err().to_string(),
            "card template line 1: not an unmerged extension (no `extends`, or already merged)"
        );
    }

    #[test]
    fn extension_header_refusals() {
        let src = SHENZHEN.replace("region = \"440300\"\n", "");
        assert_eq!(refusal(&src), (7, TemplateFault::ExtendsWithoutRegion));
        let src = MINI.replacen("version = 1\n", "version = 1\nregion = \"440300\"\n", 1);
        assert_eq!(refusal(&src), (3, TemplateFault::RegionWithoutExtends));
        for bad in ["440000", "441000", "44030"] {
            let src = SHENZHEN.replace("region = \"440300\"", &format!("region = \"{bad}\""));
            assert_eq!(
                refusal(&src),
                (8, TemplateFault::RegionNotCity(bad.to_owned()))
            );
        }
        // Standalone, an extension may not put a key under the vendor transport key.
        let src = SHENZHEN.replace(
            "protected_by = \"MK_SSSE\"",
            "protected_by = \"vendor-transport\"",
        );
        assert_eq!(
            refusal(&src),
            (18, TemplateFault::VendorTransportInExtension)
        );
    }

    #[test]
    fn extension_merge_refusals() {
        let base = base();
        // Redefining a base key, by name or by slot.
        let src = SHENZHEN.replace("name = \"RK_DF06\"", "name = \"RK_SSSE\"");
        assert_eq!(
            extend_refusal(&base, &src),
            (
                22,
                TemplateFault::RedefinesBaseKey {
                    name: "RK_SSSE".to_owned(),
                    base_line: base.key("RK_SSSE").unwrap().line()
                }
            )
        );
        let src = SHENZHEN.replace(
            "directory = \"DF06\"\nkey_id = 0x01",
            "directory = \"DF03\"\nkey_id = 0x02",
        );
        assert!(matches!(
            extend_refusal(&base, &src),
            (22, TemplateFault::DuplicateSlot { other, .. }) if other == "RK_DF03"
        ));
        // Another base, or another header.
        let src = SHENZHEN.replace("extends = \"ssc-2.0\"", "extends = \"ssc-3.0\"");
        assert_eq!(
            extend_refusal(&base, &src),
            (
                7,
                TemplateFault::ExtendsMismatch {
                    expected: "ssc-2.0".to_owned(),
                    found: "ssc-3.0".to_owned()
                }
            )
        );
        let src = SHENZHEN.replace("generation = \"2.0\"", "generation = \"2.1\"");
        assert_eq!(
            extend_refusal(&base, &src),
            (
                4,
                TemplateFault::HeaderMismatch {
                    field: "generation"
                }
            )
        );
        let src = SHENZHEN
            .replace("algorithm = \"tdes\"", "algorithm = \"sm4\"")
            .replace(
                "dispersion = \"pboc-tdes\"",
                "dispersion = \"sm4-f-notf-v1\"",
            );
        assert_eq!(
            extend_refusal(&base, &src),
            (5, TemplateFault::HeaderMismatch { field: "algorithm" })
        );
        // A protector in neither the extension nor the base.
        let src = SHENZHEN.replace("protected_by = \"MK_SSSE\"", "protected_by = \"MK_DF09\"");
        assert_eq!(
            extend_refusal(&base, &src),
            (18, TemplateFault::UnknownProtector("MK_DF09".to_owned()))
        );
        // The base must be a base.
        let merged = Template::extend(&base, &Template::parse(SHENZHEN).unwrap()).unwrap();
        let other = SHENZHEN
            .replace("extends = \"ssc-2.0\"", "extends = \"ssc-2.0-440300\"")
            .replace("id = \"ssc-2.0-440300\"", "id = \"ssc-2.0-440300-b\"")
            .replace("DF06", "DF07");
        assert_eq!(
            extend_refusal(&merged, &other),
            (7, TemplateFault::BaseIsExtension)
        );
        // Not an extension at all.
        assert!(matches!(
            Template::extend(&base, &Template::parse(MINI).unwrap()),
            Err(Error::Template {
                line: 1,
                fault: TemplateFault::NotAnExtension
            })
        ));
    }

    #[test]
    fn error_messages_name_line_and_reason() {
        let err = Template::parse(&mini_with("name = \"RK_MF\"", "name = \"MK_MF\"")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "card template line 19: duplicate key name \"MK_MF\" (first defined on line 8)"
        );
    }
}
