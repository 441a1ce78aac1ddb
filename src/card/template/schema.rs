//! The file format: the TOML schema of a template, its line-numbered errors, and the checks
//! that turn a parsed file into a [`Template`].

use std::collections::HashMap;
use std::sync::Arc;

use hsm_api::Dispersion;
use serde::Deserialize;
use toml::Spanned;

use crate::card::profile::{CosProfile, FollowUpRule};
use crate::card::region::Region;
use crate::card::source::{At, Field, is_key_name, valid_chars};
use crate::error::{Error, Result};

use super::key::{CardAlgorithm, KeyRole, KeyRoot, KeySpec};
use super::order::{Protector, link};
use super::{HeaderLines, Template, VENDOR_TRANSPORT};

/// The fields of a template file (for the unknown-field check).
pub(super) const TEMPLATE_FIELDS: &[(&str, Field)] = &[
    ("id", Field::Value),
    ("version", Field::Value),
    ("generation", Field::Value),
    ("cos", Field::Value),
    ("algorithm", Field::Value),
    ("dispersion", Field::Value),
    ("description", Field::Value),
    ("extends", Field::Value),
    ("region", Field::Value),
    ("issuer_only_delivery", Field::Value),
    ("key", Field::Tables(KEY_FIELDS)),
];
const KEY_FIELDS: &[(&str, Field)] = &[
    ("name", Field::Value),
    ("directory", Field::Value),
    ("role", Field::Value),
    ("key_id", Field::Value),
    ("key_version", Field::Value),
    ("version_of", Field::Value),
    ("algorithm", Field::Value),
    ("length", Field::Value),
    ("error_counter", Field::Value),
    ("protected_by", Field::Value),
    ("root", Field::Value),
    ("dispersion", Field::Value),
    ("description", Field::Value),
];

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a template or a profile was refused. Carried with the line by [`Error::Template`] (a
/// template) or [`Error::Profile`] (a profile).
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
    /// Two keys in one card slot: directory, type byte (under the COS profile), id, version.
    #[error(
        "key {name:?} uses {directory} type {key_type:#04x} id {key_id:#04x} version \
         {key_version:#04x}, already used by {other:?}"
    )]
    DuplicateSlot {
        name: String,
        directory: String,
        key_type: u8,
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
    /// A PSAM usage byte whose level the PSAM profile does not accept.
    #[error("usage {byte:#04x} has {levels} levels, which this PSAM profile does not accept")]
    PsamUsageLevels { byte: u8, levels: u8 },
    /// A PSAM usage byte whose type the PSAM profile does not accept.
    #[error("usage {byte:#04x} has key type {kind}, which this PSAM profile does not accept")]
    PsamUsageType { byte: u8, kind: u8 },
    /// Two keys of a PSAM profile with one PSAM key id.
    #[error("psam_key_id {psam_key_id:#04x} is {other:?}'s already")]
    PsamKeyIdRepeated { psam_key_id: u8, other: String },
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
    /// A profile value without `published = "…"` or `inferred = "…"`.
    #[error("every value needs `published = \"source\"` or `inferred = \"why\"`")]
    Unmarked,
    /// A profile value marked both published and inferred.
    #[error("a value is published or inferred, not both")]
    TwoMarks,
    /// A profile byte the header layout needs but the profile lacks, or gives but the layout
    /// does not use.
    #[error(
        "the header layout {} `{field}`, so its value must be {}",
        if *in_layout { "has" } else { "has no" },
        if *in_layout { "given" } else { "left out" }
    )]
    LayoutField {
        field: &'static str,
        in_layout: bool,
    },
    /// A profile's Lc that is not the encrypted field plus the MAC of its layout.
    #[error(
        "Lc of a {algorithm} key must be {expected:#04x} (encrypted field + MAC), not {actual:#04x}"
    )]
    LcMismatch {
        algorithm: CardAlgorithm,
        expected: usize,
        actual: u8,
    },
    /// A COS profile without the type byte of a key role.
    #[error("no type byte for key role {role:?}")]
    MissingRoleType { role: &'static str },
    /// A template's `cos` that names no shipped COS profile.
    #[error("no COS profile {0:?}")]
    UnknownCos(String),
    /// A key of an algorithm its COS profile does not write.
    #[error("COS profile {cos:?} has no WRITE KEY for {algorithm} keys")]
    AlgorithmNotInProfile {
        algorithm: CardAlgorithm,
        cos: String,
    },
    /// A master key's `key_id` or `key_version`: the COS profile decides them.
    #[error("`{field}` of a master key is decided by the COS profile: leave it out")]
    DecidedByProfile { field: &'static str },
    /// A key other than a master key without `key_id` or `key_version`.
    #[error("`{field}` is required for every key but a master key")]
    MissingKeyField { field: &'static str },
    /// A master key whose root is the Ministry's.
    #[error("a master key's root is the province's own (N1) or its city's, not national")]
    MasterKeyRoot,
    /// `version_of` naming no earlier key of the template.
    #[error("version_of names {0:?}, which is not an earlier key of the template")]
    VersionOfUnknown(String),
    /// `version_of` on a master key, or naming a key that is itself a later version.
    #[error("version_of must name the first version of a key other than a master key")]
    VersionOfNotFirst,
    /// A version of a key whose directory, role, algorithm or root differs from the first's.
    #[error("`{field}` differs from {first:?}'s: the versions of a key share it")]
    VersionOfMismatch { field: &'static str, first: String },
    /// A version of a key repeating the key version or key id of another version.
    #[error(
        "`{field}` is {other:?}'s already: each version of a key has its own key version and \
         key id (DOMAIN.md §10)"
    )]
    VersionRepeated { field: &'static str, other: String },
    /// A directory with more keys than the follow-up level's nibble can number.
    #[error("directory {directory} has more than 15 keys numbered for the follow-up level")]
    FollowUpOverflow { directory: String },
    /// `root = "city"` outside a city's extension.
    #[error("`root = \"city\"` is for keys of a city's extension (with `region`)")]
    CityRootOutsideExtension,
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
// ---------------------------------------------------------------------------------------------
// The file format
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTemplate {
    id: Spanned<String>,
    version: Spanned<u32>,
    generation: Spanned<String>,
    algorithm: Spanned<String>,
    dispersion: Spanned<String>,
    description: Option<String>,
    cos: Spanned<String>,
    extends: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    issuer_only_delivery: Option<Spanned<String>>,
    #[serde(default, rename = "key")]
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKey {
    name: Spanned<String>,
    directory: Spanned<String>,
    role: Spanned<String>,
    key_id: Option<Spanned<u8>>,
    key_version: Option<Spanned<u8>>,
    version_of: Option<Spanned<String>>,
    algorithm: Option<Spanned<String>>,
    length: Spanned<u32>,
    error_counter: Spanned<u8>,
    protected_by: Spanned<String>,
    root: Spanned<String>,
    dispersion: Option<Spanned<String>>,
    description: Option<String>,
}

pub(super) fn template_err(line: usize, fault: TemplateFault) -> Error {
    Error::Template { line, fault }
}

pub(super) fn parse_algorithm(at: &At<'_>, v: &Spanned<String>) -> Result<CardAlgorithm> {
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

pub(super) fn parse_dispersion(at: &At<'_>, v: &Spanned<String>) -> Result<Dispersion> {
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

pub(super) fn build(at: &At<'_>, raw: RawTemplate) -> Result<Template> {
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
    let issuer_only_secure_messaging = match &raw.issuer_only_delivery {
        None => false,
        Some(v) => match v.get_ref().as_str() {
            "any" => false,
            "secure-messaging" => true,
            _ => {
                return Err(at.err(
                    &v.span(),
                    TemplateFault::InvalidValue {
                        field: "issuer_only_delivery",
                        expected: "\"any\" or \"secure-messaging\"",
                    },
                ));
            }
        },
    };
    let cos = match CosProfile::builtin(raw.cos.get_ref()) {
        Some(profile) => Arc::new(profile?),
        None => {
            return Err(at.err(
                &raw.cos.span(),
                TemplateFault::UnknownCos(raw.cos.get_ref().clone()),
            ));
        }
    };
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

    let defaults = KeyDefaults {
        algorithm,
        dispersion,
        city: region,
    };
    let mut keys: Vec<KeySpec> = Vec::with_capacity(raw.keys.len());
    let mut vendor_transport: Option<String> = None;
    for rk in raw.keys {
        let key = build_key(at, rk, &defaults, &keys)?;
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
    apply_cos(&cos, &mut keys, 0)?;
    let order = link(&keys, is_extension)?;
    Ok(Template {
        id: id.clone(),
        version: *raw.version.get_ref(),
        generation: raw.generation.get_ref().clone(),
        cos,
        algorithm,
        dispersion,
        description: raw.description,
        extends: raw.extends.as_ref().map(|e| e.get_ref().clone()),
        region,
        base_version: None,
        issuer_only_secure_messaging,
        keys,
        order,
        lines: HeaderLines {
            extends: raw.extends.as_ref().map_or(1, |e| at.line(&e.span())),
            generation: at.line(&raw.generation.span()),
            cos: at.line(&raw.cos.span()),
            algorithm: at.line(&raw.algorithm.span()),
            dispersion: at.line(&raw.dispersion.span()),
        },
    })
}

/// What a key takes from its template's header.
pub(super) struct KeyDefaults {
    algorithm: CardAlgorithm,
    dispersion: Dispersion,
    /// The city of an extension (the owner of its `root = "city"` keys).
    city: Option<&'static Region>,
}

/// Gives every key what its COS profile decides — its role's type byte; a master key's id,
/// version and follow-up level; the other keys' follow-up levels from their places in their
/// directories — and refuses two keys in one card slot (directory, type byte, key id, version).
/// Keys before `first_checked` were checked already (the base of a merged extension).
pub(super) fn apply_cos(
    cos: &CosProfile,
    keys: &mut [KeySpec],
    first_checked: usize,
) -> Result<()> {
    let mut sequence: HashMap<String, u8> = HashMap::new();
    for i in 0..keys.len() {
        let (earlier, rest) = keys.split_at_mut(i);
        let key = &mut rest[0];
        if cos.algorithm(key.algorithm).is_none() {
            return Err(template_err(
                key.algorithm_line,
                TemplateFault::AlgorithmNotInProfile {
                    algorithm: key.algorithm,
                    cos: cos.id().to_owned(),
                },
            ));
        }
        key.key_type = cos.type_byte(key.role);
        if key.role == KeyRole::Master {
            (key.key_id, key.key_version, key.follow_up) = cos.master();
        } else {
            let zero = cos.zero_roles().contains(&key.role);
            let number = sequence.entry(key.directory.clone()).or_insert(0);
            if !zero || cos.numbers_zero_roles() {
                *number += 1;
            }
            key.follow_up = match cos.follow_up_rule() {
                _ if zero => 0x00,
                FollowUpRule::Fixed(b) => b,
                FollowUpRule::SequenceBothNibbles if *number > 0x0F => {
                    return Err(template_err(
                        key.line,
                        TemplateFault::FollowUpOverflow {
                            directory: key.directory.clone(),
                        },
                    ));
                }
                FollowUpRule::SequenceBothNibbles => *number * 0x11,
            };
        }
        if i < first_checked {
            continue;
        }
        if let Some(other) = earlier.iter().find(|k| {
            k.directory == key.directory
                && k.key_type == key.key_type
                && k.key_id == key.key_id
                && k.key_version == key.key_version
        }) {
            return Err(template_err(
                key.key_id_line,
                TemplateFault::DuplicateSlot {
                    name: key.name.clone(),
                    directory: key.directory.clone(),
                    key_type: key.key_type,
                    key_id: key.key_id,
                    key_version: key.key_version,
                    other: other.name.clone(),
                },
            ));
        }
    }
    Ok(())
}

/// Validates one key against the template header and the keys before it.
pub(super) fn build_key(
    at: &At<'_>,
    rk: RawKey,
    defaults: &KeyDefaults,
    earlier: &[KeySpec],
) -> Result<KeySpec> {
    let name = rk.name.get_ref();
    let name_span = rk.name.span();
    if !is_key_name(name) {
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
    let role = KeyRole::from_name(rk.role.get_ref()).ok_or_else(|| {
        at.err(
            &rk.role.span(),
            TemplateFault::UnknownName {
                field: "role",
                value: rk.role.get_ref().clone(),
            },
        )
    })?;
    // A master key's id and version are the COS profile's; every other key names its own.
    let mut id_and_version = [(&rk.key_id, "key_id"), (&rk.key_version, "key_version")]
        .into_iter()
        .map(|(v, field)| match (role, v) {
            (KeyRole::Master, Some(v)) => {
                Err(at.err(&v.span(), TemplateFault::DecidedByProfile { field }))
            }
            (KeyRole::Master, None) => Ok(0),
            (_, Some(v)) => Ok(*v.get_ref()),
            (_, None) => Err(at.err(&name_span, TemplateFault::MissingKeyField { field })),
        });
    let key_id = id_and_version.next().unwrap_or(Ok(0))?;
    let key_version = id_and_version.next().unwrap_or(Ok(0))?;

    let algorithm = match &rk.algorithm {
        Some(a) => parse_algorithm(at, a)?,
        None => defaults.algorithm,
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
        None => defaults.dispersion,
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
        "city" => match defaults.city {
            Some(city) => KeyRoot::City(city),
            None => {
                return Err(at.err(&rk.root.span(), TemplateFault::CityRootOutsideExtension));
            }
        },
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
    if role == KeyRole::Master && root == KeyRoot::National {
        return Err(at.err(&rk.root.span(), TemplateFault::MasterKeyRoot));
    }

    let version_of = match &rk.version_of {
        None => None,
        Some(v) => Some(check_version_of(
            at,
            v,
            (role, directory, algorithm, root),
            (key_id, key_version),
            earlier,
        )?),
    };

    let protected_by = match rk.protected_by.get_ref().as_str() {
        VENDOR_TRANSPORT => Protector::VendorTransport,
        other => Protector::Key(other.to_owned()),
    };
    let line = at.line(&name_span);

    Ok(KeySpec {
        name: name.clone(),
        directory: directory.clone(),
        role,
        key_id,
        key_version,
        version_of,
        // Set by `apply_cos`.
        key_type: 0,
        algorithm,
        length: length_u8,
        error_counter: *rk.error_counter.get_ref(),
        protected_by,
        root,
        follow_up: 0,
        dispersion,
        description: rk.description,
        line,
        key_id_line: rk.key_id.as_ref().map_or(line, |k| at.line(&k.span())),
        algorithm_line: rk.algorithm.as_ref().map_or(line, |a| at.line(&a.span())),
        protected_by_line: at.line(&rk.protected_by.span()),
    })
}

/// Checks `version_of = "FIRST"`: FIRST is an earlier key, the first version of a key that is
/// not a master key; this version shares its directory, role, algorithm and root, and has a key
/// version and a key id of its own among the versions (DOMAIN.md §10: DLK/DPK groups). Gives
/// FIRST's name.
fn check_version_of(
    at: &At<'_>,
    v: &Spanned<String>,
    (role, directory, algorithm, root): (KeyRole, &str, CardAlgorithm, KeyRoot),
    (key_id, key_version): (u8, u8),
    earlier: &[KeySpec],
) -> Result<String> {
    let span = v.span();
    let first = earlier
        .iter()
        .find(|k| k.name == *v.get_ref())
        .ok_or_else(|| at.err(&span, TemplateFault::VersionOfUnknown(v.get_ref().clone())))?;
    if role == KeyRole::Master || first.version_of.is_some() {
        return Err(at.err(&span, TemplateFault::VersionOfNotFirst));
    }
    let mismatch = [
        ("directory", first.directory != directory),
        ("role", first.role != role),
        ("algorithm", first.algorithm != algorithm),
        ("root", first.root != root),
    ];
    if let Some((field, _)) = mismatch.into_iter().find(|(_, differs)| *differs) {
        return Err(at.err(
            &span,
            TemplateFault::VersionOfMismatch {
                field,
                first: first.name.clone(),
            },
        ));
    }
    let versions = earlier
        .iter()
        .filter(|k| k.name == first.name || k.version_of.as_deref() == Some(&first.name));
    for other in versions {
        let repeated = if other.key_version == key_version {
            Some("key_version")
        } else if other.key_id == key_id {
            Some("key_id")
        } else {
            None
        };
        if let Some(field) = repeated {
            return Err(at.err(
                &span,
                TemplateFault::VersionRepeated {
                    field,
                    other: other.name.clone(),
                },
            ));
        }
    }
    Ok(first.name.clone())
}
