//! The file format: the TOML schema of a template, its line-numbered errors, and the checks
//! that turn a parsed file into a [`Template`].

use core::ops::Range;

use hsm_api::Dispersion;
use serde::Deserialize;
use toml::Spanned;
use toml::de::DeTable;

use crate::card::region::Region;
use crate::error::{Error, Result};

use super::key::{CardAlgorithm, KeyLevel, KeyRoot, KeySpec, is_issuer_only};
use super::order::{Protector, link};
use super::psam::{PsamKeyType, PsamRefusal, PsamUsage};
use super::{HeaderLines, Template, VENDOR_TRANSPORT};

pub(super) const TEMPLATE_FIELDS: &[&str] = &[
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
pub(super) const KEY_FIELDS: &[&str] = &[
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
    extends: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    #[serde(default, rename = "key")]
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKey {
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
pub(super) fn line_at(src: &str, offset: usize) -> usize {
    let end = offset.min(src.len());
    src.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Builds errors that point into one source text.
pub(super) struct At<'a>(pub(super) &'a str);

impl At<'_> {
    pub(super) fn line(&self, span: &Range<usize>) -> usize {
        line_at(self.0, span.start)
    }

    pub(super) fn err(&self, span: &Range<usize>, fault: TemplateFault) -> Error {
        Error::Template {
            line: self.line(span),
            fault,
        }
    }

    pub(super) fn toml(&self, e: &toml::de::Error) -> Error {
        Error::Template {
            line: e.span().map_or(1, |s| self.line(&s)),
            fault: TemplateFault::Toml(e.message().to_owned()),
        }
    }
}

pub(super) fn template_err(line: usize, fault: TemplateFault) -> Error {
    Error::Template { line, fault }
}

/// Refuses fields the schema does not have, at the earliest such line.
pub(super) fn check_fields(at: &At<'_>, doc: &DeTable<'_>) -> Result<()> {
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

pub(super) fn valid_chars(s: &str, max: usize, ok: impl Fn(u8) -> bool) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(ok)
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
pub(super) fn build_key(
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
