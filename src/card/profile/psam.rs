//! PSAM profiles: which card keys a kind of PSAM holds, at which level, under which PSAM key id
//! and version (DOMAIN.md §11). A PSAM is registered with its profile; its key set follows the
//! profile, not the card template's key lines.

use serde::Deserialize;
use toml::Spanned;

use crate::card::source::{
    At, DataFile, Field, MARKED, Marked, Provenance, RawMarked, builtin, check_id_version,
    is_key_name,
};
use crate::card::template::{
    KeyLevel, KeyRole, KeyRoot, KeySpec, PsamUsage, Template, TemplateFault,
};
use crate::error::Result;

/// The shipped profile of province-wide (全省通) PSAMs: provincial-level keys.
pub const PROVINCE_WIDE: &str = include_str!("../../../profiles/psam/province-wide.toml");
/// The shipped profile of city PSAMs: city-level keys.
pub const CITY: &str = include_str!("../../../profiles/psam/city.toml");
/// The shipped PSAM profiles by id.
pub const BUILTIN_PSAM: [(&str, &str); 2] = [("province-wide", PROVINCE_WIDE), ("city", CITY)];

/// True if a PSAM of any shipped profile holds `key`: its hierarchy keys may then leave the HSM
/// under a PSAM line's transport key.
pub fn builtin_profiles_hold(key: &KeySpec) -> bool {
    BUILTIN_PSAM
        .iter()
        .filter_map(|(_, src)| PsamProfile::parse(src).ok())
        .any(|p| p.holds(key))
}

/// What region a PSAM of a profile serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Serves {
    /// The whole province: registered for the province's code.
    Province,
    /// One city: registered for a city's code.
    City,
}

impl Serves {
    /// The profile name.
    pub const fn name(self) -> &'static str {
        match self {
            Serves::Province => "province",
            Serves::City => "city",
        }
    }
}

/// One card key a PSAM of the profile holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsamProfileKey {
    /// The card template's key name.
    pub card_key: String,
    /// The key's id on the PSAM (not the card key id).
    pub psam_key_id: Marked<u8>,
    /// The usage byte: `(levels << 5) | type`.
    pub usage: Marked<PsamUsage>,
    /// The PSAM's version of the key.
    pub psam_key_version: Marked<u8>,
    /// The line of `card_key`.
    pub line: usize,
}

/// A card key as a PSAM of a profile holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PsamKey<'a> {
    /// The card key.
    pub key: &'a KeySpec,
    /// What the profile says of it.
    pub entry: &'a PsamProfileKey,
}

impl PsamKey<'_> {
    /// The level at which the key is released to the PSAM.
    pub fn level(&self) -> KeyLevel {
        self.entry.usage.value.level()
    }
}

/// A validated PSAM profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsamProfile {
    id: String,
    version: u32,
    description: Option<String>,
    serves: Marked<Serves>,
    usage_types: Marked<Vec<u8>>,
    levels: Marked<Vec<u8>>,
    maintenance_keys: Marked<bool>,
    keys: Vec<PsamProfileKey>,
}

impl PsamProfile {
    /// Parses and validates a profile.
    pub fn parse(src: &str) -> Result<PsamProfile> {
        let at = At::new(DataFile::PsamProfile, src);
        let raw: RawPsam = at.parse(PSAM_FIELDS)?;
        build(&at, raw)
    }

    /// A shipped profile by id ([`BUILTIN_PSAM`]).
    pub fn builtin(id: &str) -> Option<Result<PsamProfile>> {
        builtin(&BUILTIN_PSAM, id, PsamProfile::parse)
    }

    /// The shipped profile for PSAMs of a region: `province-wide` for the province, `city` for
    /// a city.
    pub fn default_for(serves: Serves) -> &'static str {
        match serves {
            Serves::Province => "province-wide",
            Serves::City => "city",
        }
    }

    /// Profile id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Profile revision.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Free text.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// What region its PSAMs serve.
    pub fn serves(&self) -> Serves {
        self.serves.value
    }

    /// The usage types (the low 5 bits of a usage byte) the profile accepts.
    pub fn usage_types(&self) -> &[u8] {
        &self.usage_types.value
    }

    /// The levels (a usage byte's high 3 bits) the profile accepts; 0 is a card-level key.
    pub fn levels(&self) -> &[u8] {
        &self.levels.value
    }

    /// Whether maintenance (STK-based MAC) keys may go into its PSAMs.
    pub fn takes_maintenance_keys(&self) -> bool {
        self.maintenance_keys.value
    }

    /// The card keys its PSAMs hold, in file order.
    pub fn keys(&self) -> &[PsamProfileKey] {
        &self.keys
    }

    /// The key set of a PSAM of this profile for cards of `template`: the keys it holds, and
    /// the profile's keys it does not get with the reason. Card master keys and keys with a
    /// provincial root never go into a PSAM, whatever a profile says; maintenance keys only if
    /// the profile takes them; a key whose root a city holds is that city's to release.
    pub fn key_set<'a>(
        &'a self,
        template: &'a Template,
    ) -> (Vec<PsamKey<'a>>, Vec<(String, String)>) {
        let mut keys = Vec::new();
        let mut omitted = Vec::new();
        for entry in &self.keys {
            let name = entry.card_key.clone();
            let Some(key) = template.key(&entry.card_key) else {
                omitted.push((name, "not a key of the card template".to_owned()));
                continue;
            };
            match self.refusal(key, entry) {
                Some(why) => omitted.push((name, why)),
                None => keys.push(PsamKey { key, entry }),
            }
        }
        (keys, omitted)
    }

    /// True if a PSAM of this profile holds `key` (a key of that name, and the rules allow it).
    pub fn holds(&self, key: &KeySpec) -> bool {
        self.keys
            .iter()
            .any(|e| e.card_key == key.name && self.refusal(key, e).is_none())
    }

    /// Why `key` does not go into a PSAM of this profile as `entry` says, if it does not.
    fn refusal(&self, key: &KeySpec, entry: &PsamProfileKey) -> Option<String> {
        let level = entry.usage.value.level();
        match key.root {
            _ if key.role == KeyRole::Master => {
                Some("a card master key never goes into a PSAM".to_owned())
            }
            KeyRoot::Provincial => {
                Some("a key of the province's own root never goes into a PSAM".to_owned())
            }
            KeyRoot::City(city) => Some(format!("owned by city {}", city.code)),
            KeyRoot::National
                if key.role == KeyRole::Maintenance && !self.maintenance_keys.value =>
            {
                Some("this PSAM profile takes no maintenance keys".to_owned())
            }
            KeyRoot::National if level < key.root.top_level() => {
                Some("the usage level is above the key's root".to_owned())
            }
            KeyRoot::National => None,
        }
    }

    /// Every value of the profile with its provenance, as `(path, value, provenance)`.
    pub fn values(&self) -> Vec<(String, String, &Provenance)> {
        let list = |v: &[u8]| v.iter().map(u8::to_string).collect::<Vec<_>>().join(",");
        let mut out = vec![
            (
                "serves".to_owned(),
                self.serves.value.name().to_owned(),
                &self.serves.provenance,
            ),
            (
                "usage_types".to_owned(),
                list(&self.usage_types.value),
                &self.usage_types.provenance,
            ),
            (
                "levels".to_owned(),
                list(&self.levels.value),
                &self.levels.provenance,
            ),
            (
                "maintenance_keys".to_owned(),
                self.maintenance_keys.value.to_string(),
                &self.maintenance_keys.provenance,
            ),
        ];
        for k in &self.keys {
            let path = |field: &str| format!("key.{}.{field}", k.card_key);
            out.push((
                path("psam_key_id"),
                format!("{:02X}", k.psam_key_id.value),
                &k.psam_key_id.provenance,
            ));
            out.push((
                path("usage"),
                format!("{:02X}", k.usage.value.byte()),
                &k.usage.provenance,
            ));
            out.push((
                path("psam_key_version"),
                format!("{:02X}", k.psam_key_version.value),
                &k.psam_key_version.provenance,
            ));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The file format
// ---------------------------------------------------------------------------------------------

const PSAM_FIELDS: &[(&str, Field)] = &[
    ("id", Field::Value),
    ("version", Field::Value),
    ("description", Field::Value),
    ("serves", MARKED),
    ("usage_types", MARKED),
    ("levels", MARKED),
    ("maintenance_keys", MARKED),
    (
        "key",
        Field::Tables(&[
            ("card_key", Field::Value),
            ("psam_key_id", MARKED),
            ("usage", MARKED),
            ("psam_key_version", MARKED),
        ]),
    ),
];

#[derive(Deserialize)]
struct RawPsam {
    id: Spanned<String>,
    version: Spanned<u32>,
    description: Option<String>,
    serves: Spanned<RawMarked<String>>,
    usage_types: Spanned<RawMarked<Vec<u8>>>,
    levels: Spanned<RawMarked<Vec<u8>>>,
    maintenance_keys: Spanned<RawMarked<bool>>,
    #[serde(default, rename = "key")]
    keys: Vec<RawPsamKey>,
}

#[derive(Deserialize)]
struct RawPsamKey {
    card_key: Spanned<String>,
    psam_key_id: Spanned<RawMarked<u8>>,
    usage: Spanned<RawMarked<u8>>,
    psam_key_version: Spanned<RawMarked<u8>>,
}

fn build(at: &At<'_>, raw: RawPsam) -> Result<PsamProfile> {
    check_id_version(at, &raw.id, &raw.version)?;
    let (serves, span) = at.marked(raw.serves)?;
    let serves = match serves.value.as_str() {
        "province" => serves.with(Serves::Province),
        "city" => serves.with(Serves::City),
        _ => {
            return Err(at.err(
                &span,
                TemplateFault::InvalidValue {
                    field: "serves",
                    expected: "\"province\" or \"city\"",
                },
            ));
        }
    };
    let (usage_types, span) = at.marked(raw.usage_types)?;
    if usage_types.value.is_empty() || usage_types.value.iter().any(|&t| t == 0 || t > 0x1F) {
        // Type 0 is a master key: card master keys never go into a PSAM (DOMAIN.md §4).
        return Err(at.err(
            &span,
            TemplateFault::InvalidValue {
                field: "usage_types",
                expected: "a non-empty list of types 1 to 31 (0, master, never goes into a PSAM)",
            },
        ));
    }
    let (levels, span) = at.marked(raw.levels)?;
    let city_level = |l: &u8| *l < 2;
    if levels.value.is_empty()
        || levels.value.iter().any(|&l| l > 3)
        || (serves.value == Serves::Province && levels.value.iter().any(city_level))
    {
        return Err(at.err(
            &span,
            TemplateFault::InvalidValue {
                field: "levels",
                expected: "a non-empty list of levels 0 to 3; 2 and 3 only for a province-wide \
                           profile (a city or card key works in one city only)",
            },
        ));
    }
    let (maintenance_keys, _) = at.marked(raw.maintenance_keys)?;

    let mut keys: Vec<PsamProfileKey> = Vec::with_capacity(raw.keys.len());
    for rk in raw.keys {
        let name_span = rk.card_key.span();
        let line = at.line(&name_span);
        let card_key = rk.card_key.into_inner();
        if !is_key_name(&card_key) {
            return Err(at.err(
                &name_span,
                TemplateFault::InvalidValue {
                    field: "card_key",
                    expected: "a card key name: 1 to 32 of A-Z, 0-9, _",
                },
            ));
        }
        let (psam_key_id, id_span) = at.marked(rk.psam_key_id)?;
        let (usage, usage_span) = at.marked(rk.usage)?;
        let (psam_key_version, _) = at.marked(rk.psam_key_version)?;
        let byte = usage.value;
        let decoded = PsamUsage::from_byte(byte);
        if !levels.value.contains(&decoded.levels()) {
            return Err(at.err(
                &usage_span,
                TemplateFault::PsamUsageLevels {
                    byte,
                    levels: decoded.levels(),
                },
            ));
        }
        if !usage_types.value.contains(&decoded.code()) {
            return Err(at.err(
                &usage_span,
                TemplateFault::PsamUsageType {
                    byte,
                    kind: decoded.code(),
                },
            ));
        }
        if let Some(first) = keys.iter().find(|k| k.card_key == card_key) {
            return Err(at.err(
                &name_span,
                TemplateFault::DuplicateKeyName {
                    name: card_key,
                    first_line: first.line,
                },
            ));
        }
        if let Some(other) = keys
            .iter()
            .find(|k| k.psam_key_id.value == psam_key_id.value)
        {
            return Err(at.err(
                &id_span,
                TemplateFault::PsamKeyIdRepeated {
                    psam_key_id: psam_key_id.value,
                    other: other.card_key.clone(),
                },
            ));
        }
        keys.push(PsamProfileKey {
            card_key,
            usage: usage.with(decoded),
            psam_key_id,
            psam_key_version,
            line,
        });
    }
    if keys.is_empty() {
        return Err(at.err_line(1, TemplateFault::NoKeys));
    }
    Ok(PsamProfile {
        id: raw.id.into_inner(),
        version: raw.version.into_inner(),
        description: raw.description,
        serves,
        usage_types,
        levels,
        maintenance_keys,
        keys,
    })
}
