//! The machinery every data file of the card system shares — card templates (`templates/`),
//! COS profiles (`profiles/cos/`) and PSAM profiles (`profiles/psam/`): errors that name the
//! 1-based line and a typed [`TemplateFault`], the check for fields a schema does not have, and
//! values marked with where they come from ([`Marked`]).
//!
//! A file is read in two passes: [`check_fields`] walks the parsed TOML against the schema's
//! field names and reports the earliest unknown field; then serde fills the file's raw structs
//! (their values [`Spanned`], so that every later refusal names its line through [`At`]).

use core::fmt;
use core::ops::Range;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::card::template::TemplateFault;
use crate::error::{Error, Result};

/// Which kind of data file a line number points into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataFile {
    /// A card template (`templates/*.toml`, or one loaded by an officer).
    Template,
    /// A card-OS profile (`profiles/cos/*.toml`).
    CosProfile,
    /// A PSAM profile (`profiles/psam/*.toml`).
    PsamProfile,
}

impl fmt::Display for DataFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DataFile::Template => "card template",
            DataFile::CosProfile => "COS profile",
            DataFile::PsamProfile => "PSAM profile",
        })
    }
}

/// The error of `file` at `line`: [`Error::Template`] for a template, [`Error::Profile`] for a
/// profile.
pub(crate) fn data_err(file: DataFile, line: usize, fault: TemplateFault) -> Error {
    match file {
        DataFile::Template => Error::Template { line, fault },
        file => Error::Profile { file, line, fault },
    }
}

/// The 1-based line of byte `offset` of `src`.
pub(crate) fn line_at(src: &str, offset: usize) -> usize {
    let end = offset.min(src.len());
    src.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Builds errors that point into one source text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct At<'a> {
    src: &'a str,
    file: DataFile,
}

impl<'a> At<'a> {
    pub(crate) fn new(file: DataFile, src: &'a str) -> At<'a> {
        At { src, file }
    }

    pub(crate) fn line(&self, span: &Range<usize>) -> usize {
        line_at(self.src, span.start)
    }

    pub(crate) fn err(&self, span: &Range<usize>, fault: TemplateFault) -> Error {
        data_err(self.file, self.line(span), fault)
    }

    pub(crate) fn err_line(&self, line: usize, fault: TemplateFault) -> Error {
        data_err(self.file, line, fault)
    }

    pub(crate) fn toml(&self, e: &toml::de::Error) -> Error {
        data_err(
            self.file,
            e.span().map_or(1, |s| self.line(&s)),
            TemplateFault::Toml(e.message().to_owned()),
        )
    }

    /// Parses the source: TOML syntax, then the schema's field names ([`check_fields`]), then
    /// the raw struct `T`.
    pub(crate) fn parse<T: DeserializeOwned>(&self, schema: &[(&str, Field)]) -> Result<T> {
        let doc = DeTable::parse(self.src).map_err(|e| self.toml(&e))?;
        check_fields(self, doc.get_ref(), schema)?;
        T::deserialize(toml::de::Deserializer::from(doc)).map_err(|e| self.toml(&e))
    }

    /// A marked value: exactly one of `published` and `inferred`, with a non-empty source.
    pub(crate) fn marked<T>(
        &self,
        raw: Spanned<RawMarked<T>>,
    ) -> Result<(Marked<T>, Range<usize>)> {
        let line = self.line(&raw.span());
        let raw = raw.into_inner();
        let provenance = match (raw.published, raw.inferred) {
            (Some(p), None) => Provenance::Published(self.source_text(p)?),
            (None, Some(i)) => Provenance::Inferred(self.source_text(i)?),
            (None, None) => return Err(self.err_line(line, TemplateFault::Unmarked)),
            (Some(_), Some(i)) => return Err(self.err(&i.span(), TemplateFault::TwoMarks)),
        };
        let span = raw.value.span();
        Ok((
            Marked {
                value: raw.value.into_inner(),
                provenance,
                line,
            },
            span,
        ))
    }

    fn source_text(&self, text: Spanned<String>) -> Result<String> {
        if text.get_ref().trim().is_empty() {
            return Err(self.err(
                &text.span(),
                TemplateFault::InvalidValue {
                    field: "published/inferred",
                    expected: "the source of the value, or why it is inferred",
                },
            ));
        }
        Ok(text.into_inner())
    }
}

// ---------------------------------------------------------------------------------------------
// The schema's field names
// ---------------------------------------------------------------------------------------------

/// What a field of a schema holds, for [`check_fields`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Field {
    /// A plain value (its content is checked by the typed pass).
    Value,
    /// A table, or an inline table, with these fields.
    Table(&'static [(&'static str, Field)]),
    /// An array of tables with these fields.
    Tables(&'static [(&'static str, Field)]),
    /// A table whose keys are names checked by the typed pass (key roles, algorithms), each
    /// holding this.
    Map(&'static Field),
}

/// A marked value: `{ value = …, published = "source" }` or `{ value = …, inferred = "why" }`.
pub(crate) const MARKED: Field = Field::Table(&[
    ("value", Field::Value),
    ("published", Field::Value),
    ("inferred", Field::Value),
]);

/// Refuses fields the schema does not have, at the earliest such line.
pub(crate) fn check_fields(at: &At<'_>, doc: &DeTable<'_>, schema: &[(&str, Field)]) -> Result<()> {
    let mut unknown: Vec<(Range<usize>, String)> = Vec::new();
    walk_table(doc, schema, &mut unknown);
    match unknown.into_iter().min_by_key(|(span, _)| span.start) {
        Some((span, name)) => Err(at.err(&span, TemplateFault::UnknownField(name))),
        None => Ok(()),
    }
}

fn walk_table(
    table: &DeTable<'_>,
    schema: &[(&str, Field)],
    unknown: &mut Vec<(Range<usize>, String)>,
) {
    for (k, v) in table.iter() {
        let name: &str = k.get_ref();
        match schema.iter().find(|(n, _)| *n == name) {
            Some((_, field)) => walk_value(v.get_ref(), *field, unknown),
            None => unknown.push((k.span(), name.to_owned())),
        }
    }
}

fn walk_value(value: &DeValue<'_>, field: Field, unknown: &mut Vec<(Range<usize>, String)>) {
    // A value of the wrong type is left to the typed pass, which reports it.
    match field {
        Field::Value => {}
        Field::Table(schema) => {
            if let Some(t) = value.as_table() {
                walk_table(t, schema, unknown);
            }
        }
        Field::Tables(schema) => {
            if let Some(items) = value.as_array() {
                for item in items.iter() {
                    if let Some(t) = item.get_ref().as_table() {
                        walk_table(t, schema, unknown);
                    }
                }
            }
        }
        Field::Map(inner) => {
            if let Some(t) = value.as_table() {
                for (_, v) in t.iter() {
                    walk_value(v.get_ref(), *inner, unknown);
                }
            }
        }
    }
}

/// A profile's `id` (1 to 32 of a-z, 0-9, '-') and `version` (at least 1).
pub(crate) fn check_id_version(
    at: &At<'_>,
    id: &Spanned<String>,
    version: &Spanned<u32>,
) -> Result<()> {
    if !valid_chars(id.get_ref(), 32, |b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
    }) {
        return Err(at.err(
            &id.span(),
            TemplateFault::InvalidValue {
                field: "id",
                expected: "1 to 32 of a-z, 0-9, '-'",
            },
        ));
    }
    if *version.get_ref() == 0 {
        return Err(at.err(
            &version.span(),
            TemplateFault::InvalidValue {
                field: "version",
                expected: "at least 1",
            },
        ));
    }
    Ok(())
}

/// A card key name: 1 to 32 of A-Z, 0-9, `_`.
pub(crate) fn is_key_name(s: &str) -> bool {
    valid_chars(s, 32, |b| {
        b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'
    })
}

/// The shipped data file `id` of `table`, parsed.
pub(crate) fn builtin<T>(
    table: &[(&str, &str)],
    id: &str,
    parse: fn(&str) -> Result<T>,
) -> Option<Result<T>> {
    table
        .iter()
        .find(|(name, _)| *name == id)
        .map(|(_, src)| parse(src))
}

/// `valid_chars(s, max, ok)`: 1 to `max` bytes, each `ok`.
pub(crate) fn valid_chars(s: &str, max: usize, ok: impl Fn(u8) -> bool) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(ok)
}

// ---------------------------------------------------------------------------------------------
// Marked values
// ---------------------------------------------------------------------------------------------

/// Where a value of a profile comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Provenance {
    /// Seen in a public source, which the text names.
    Published(String),
    /// Chosen where the public sources are silent; the text says from what.
    Inferred(String),
}

impl Provenance {
    /// `published` or `inferred`.
    pub fn mark(&self) -> &'static str {
        match self {
            Provenance::Published(_) => "published",
            Provenance::Inferred(_) => "inferred",
        }
    }

    /// The source, or the reason for the inference.
    pub fn source(&self) -> &str {
        match self {
            Provenance::Published(s) | Provenance::Inferred(s) => s,
        }
    }

    /// True if the value was published.
    pub fn is_published(&self) -> bool {
        matches!(self, Provenance::Published(_))
    }
}

/// A value of a data file with its provenance and its line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Marked<T> {
    /// The value.
    pub value: T,
    /// Published or inferred, with the source.
    pub provenance: Provenance,
    /// The 1-based line of the value in its file.
    pub line: usize,
}

impl<T> Marked<T> {
    /// The same provenance and line with another value (a parsed form of the raw one).
    pub(crate) fn with<U>(&self, value: U) -> Marked<U> {
        Marked {
            value,
            provenance: self.provenance.clone(),
            line: self.line,
        }
    }
}

/// A marked value as the file has it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMarked<T> {
    value: Spanned<T>,
    published: Option<Spanned<String>>,
    inferred: Option<Spanned<String>>,
}
