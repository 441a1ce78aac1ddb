//! Card-OS (COS) profiles: what the chip's operating system expects of a WRITE KEY
//! (DOMAIN.md §10). A card template names its profile; the profile, not the key lines, decides
//! the bytes.

use std::collections::BTreeMap;

use hsm_api::Factor;
use serde::Deserialize;
use toml::Spanned;

use crate::card::identifiers::Atr;
use crate::card::source::{
    At, DataFile, Field, MARKED, Marked, Provenance, RawMarked, builtin, check_id_version,
};
use crate::card::template::{CardAlgorithm, KeyRole, KeySpec, TemplateFault};
use crate::error::{Error, Result};

/// The shipped profile of the Datang T514 chip.
pub const T514: &str = include_str!("../../../profiles/cos/t514.toml");
/// The shipped profile of the Fudan FMCOS chip.
pub const FMCOS: &str = include_str!("../../../profiles/cos/fmcos.toml");
/// The shipped COS profiles by id.
pub const BUILTIN_COS: [(&str, &str); 2] = [("t514", T514), ("fmcos", FMCOS)];

/// The MAC that follows the encrypted field of a WRITE KEY.
const MAC_LEN: usize = 4;

/// One byte of the key header that precedes the key in WRITE KEY's encrypted field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderField {
    /// The key type byte of the key's role ([`CosProfile::type_byte`]).
    Type,
    /// The key id.
    KeyId,
    /// The key version.
    Version,
    /// The profile's use-right byte (T514: `EF`).
    UseRight,
    /// The profile's change-right byte.
    ChangeRight,
    /// The follow-up security state for the roles the profile names, the version otherwise
    /// (FMCOS).
    VersionOrState,
    /// The key's error counter.
    ErrorCounter,
    /// The algorithm byte of the key's algorithm.
    Algorithm,
    /// The follow-up security level.
    FollowUp,
    /// The key's length in bytes.
    Length,
}

impl HeaderField {
    const ALL: [HeaderField; 10] = [
        HeaderField::Type,
        HeaderField::KeyId,
        HeaderField::Version,
        HeaderField::UseRight,
        HeaderField::ChangeRight,
        HeaderField::VersionOrState,
        HeaderField::ErrorCounter,
        HeaderField::Algorithm,
        HeaderField::FollowUp,
        HeaderField::Length,
    ];

    /// The profile name.
    pub const fn name(self) -> &'static str {
        match self {
            HeaderField::Type => "type",
            HeaderField::KeyId => "key_id",
            HeaderField::Version => "version",
            HeaderField::UseRight => "use_right",
            HeaderField::ChangeRight => "change_right",
            HeaderField::VersionOrState => "version_or_state",
            HeaderField::ErrorCounter => "error_counter",
            HeaderField::Algorithm => "algorithm",
            HeaderField::FollowUp => "follow_up",
            HeaderField::Length => "length",
        }
    }

    fn from_name(name: &str) -> Option<HeaderField> {
        HeaderField::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// WRITE KEY's P2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum P2 {
    /// The same byte for every key (T514: `00`).
    Fixed(u8),
    /// The key id (FMCOS).
    KeyId,
}

/// How the follow-up security level of a key other than the master key is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FollowUpRule {
    /// The key's sequence number within its directory in both nibbles: `11`, `22`, … `FF`.
    SequenceBothNibbles,
    /// The same byte for every key.
    Fixed(u8),
}

/// Which bytes of the ATR form the card factor F3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CardFactorRule {
    /// The last 8 bytes of the ATR (check byte TCK included, when the ATR has one).
    Last8,
    /// The last 8 historical bytes (never TCK).
    HistoricalLast8,
}

impl CardFactorRule {
    /// The profile name.
    pub const fn name(self) -> &'static str {
        match self {
            CardFactorRule::Last8 => "last-8",
            CardFactorRule::HistoricalLast8 => "historical-last-8",
        }
    }

    fn from_name(name: &str) -> Option<CardFactorRule> {
        [CardFactorRule::Last8, CardFactorRule::HistoricalLast8]
            .into_iter()
            .find(|r| r.name() == name)
    }

    /// The card factor of `atr`, or why it has none (fewer than 8 historical bytes).
    pub fn card_factor(self, atr: &Atr) -> Result<Factor> {
        let bytes = match self {
            CardFactorRule::Last8 => atr.as_bytes(),
            CardFactorRule::HistoricalLast8 => atr.historical_bytes(),
        };
        let start = bytes
            .len()
            .checked_sub(Factor::LEN)
            .ok_or(Error::InvalidIdentifier {
                field: Atr::FIELD,
                reason: crate::card::identifiers::IdentifierFault::AtrTooShort,
            })?;
        Ok(Factor::from_bytes(&bytes[start..])?)
    }
}

/// The algorithm-specific bytes of a WRITE KEY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlgorithmRule {
    /// The header's algorithm byte (when the layout has one).
    pub header: Option<Marked<u8>>,
    /// Lc of the WRITE KEY of a key of this algorithm: encrypted field + MAC.
    pub lc: Marked<u8>,
}

/// A validated card-OS profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosProfile {
    id: String,
    version: u32,
    description: Option<String>,
    cla: Marked<u8>,
    ins: Marked<u8>,
    p1_master: Marked<u8>,
    p1_other: Marked<u8>,
    p2: Marked<P2>,
    layout: Marked<Vec<HeaderField>>,
    use_right: Option<Marked<u8>>,
    change_right: Option<Marked<u8>>,
    state_roles: Option<Marked<Vec<KeyRole>>>,
    algorithms: BTreeMap<&'static str, (CardAlgorithm, AlgorithmRule)>,
    types: Vec<(KeyRole, Marked<u8>)>,
    master_key_id: Marked<u8>,
    master_version: Marked<u8>,
    master_follow_up: Marked<u8>,
    follow_up: Marked<FollowUpRule>,
    zero_roles: Marked<Vec<KeyRole>>,
    number_zero_roles: Marked<bool>,
    card_factor: Marked<CardFactorRule>,
}

/// CLA, INS, P1 and P2 of one key's WRITE KEY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteKeyParams {
    pub cla: u8,
    pub ins: u8,
    pub p1: u8,
    pub p2: u8,
    /// Lc: the encrypted field and the MAC.
    pub lc: u8,
}

impl CosProfile {
    /// Parses and validates a profile.
    pub fn parse(src: &str) -> Result<CosProfile> {
        let at = At::new(DataFile::CosProfile, src);
        let raw: RawCos = at.parse(COS_FIELDS)?;
        build(&at, raw)
    }

    /// A shipped profile by id ([`BUILTIN_COS`]).
    pub fn builtin(id: &str) -> Option<Result<CosProfile>> {
        builtin(&BUILTIN_COS, id, CosProfile::parse)
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

    /// The type byte of a key role.
    pub fn type_byte(&self, role: KeyRole) -> u8 {
        self.types
            .iter()
            .find(|(r, _)| *r == role)
            .map_or(0, |(_, m)| m.value)
    }

    /// The master key's id, version and follow-up level.
    pub fn master(&self) -> (u8, u8, u8) {
        (
            self.master_key_id.value,
            self.master_version.value,
            self.master_follow_up.value,
        )
    }

    /// The header layout.
    pub fn layout(&self) -> &[HeaderField] {
        &self.layout.value
    }

    /// How the follow-up level of keys other than the master key is set.
    pub fn follow_up_rule(&self) -> FollowUpRule {
        self.follow_up.value
    }

    /// Roles whose keys carry follow-up level `00`.
    pub fn zero_roles(&self) -> &[KeyRole] {
        &self.zero_roles.value
    }

    /// Whether keys of the zero roles take a sequence number (the next key gets the one after).
    pub fn numbers_zero_roles(&self) -> bool {
        self.number_zero_roles.value
    }

    /// Which ATR bytes form the card factor.
    pub fn card_factor_rule(&self) -> CardFactorRule {
        self.card_factor.value
    }

    /// The card factor F3 of `atr` under this profile.
    pub fn card_factor(&self, atr: &Atr) -> Result<Factor> {
        self.card_factor.value.card_factor(atr)
    }

    /// The rule of `algorithm`, if the profile writes keys of it.
    pub fn algorithm(&self, algorithm: CardAlgorithm) -> Option<&AlgorithmRule> {
        self.algorithms.get(algorithm.name()).map(|(_, r)| r)
    }

    /// CLA, INS, P1, P2 and Lc of the WRITE KEY of `key`.
    pub fn write_key_params(&self, key: &KeySpec) -> WriteKeyParams {
        WriteKeyParams {
            cla: self.cla.value,
            ins: self.ins.value,
            p1: if key.role == KeyRole::Master {
                self.p1_master.value
            } else {
                self.p1_other.value
            },
            p2: match self.p2.value {
                P2::Fixed(b) => b,
                P2::KeyId => key.key_id,
            },
            lc: self.algorithm(key.algorithm).map_or(0, |a| a.lc.value),
        }
    }

    /// The key header of `key` in this profile's layout.
    pub fn card_key_header(&self, key: &KeySpec) -> Vec<u8> {
        let state_role = self
            .state_roles
            .as_ref()
            .is_some_and(|r| r.value.contains(&key.role));
        self.layout
            .value
            .iter()
            .map(|field| match field {
                HeaderField::Type => key.key_type,
                HeaderField::KeyId => key.key_id,
                HeaderField::Version => key.key_version,
                HeaderField::UseRight => self.use_right.as_ref().map_or(0, |m| m.value),
                HeaderField::ChangeRight => self.change_right.as_ref().map_or(0, |m| m.value),
                HeaderField::VersionOrState if state_role => key.follow_up,
                HeaderField::VersionOrState => key.key_version,
                HeaderField::ErrorCounter => key.error_counter,
                HeaderField::Algorithm => self
                    .algorithm(key.algorithm)
                    .and_then(|a| a.header.as_ref())
                    .map_or(0, |m| m.value),
                HeaderField::FollowUp => key.follow_up,
                HeaderField::Length => key.length,
            })
            .collect()
    }

    /// Every value of the profile with its provenance, as `(path, value, provenance)`, in file
    /// order of the sections.
    pub fn values(&self) -> Vec<(String, String, &Provenance)> {
        let byte = |m: &Marked<u8>| format!("{:02X}", m.value);
        let mut out = vec![
            (
                "write_key.cla".to_owned(),
                byte(&self.cla),
                &self.cla.provenance,
            ),
            (
                "write_key.ins".to_owned(),
                byte(&self.ins),
                &self.ins.provenance,
            ),
            (
                "write_key.p1_master".to_owned(),
                byte(&self.p1_master),
                &self.p1_master.provenance,
            ),
            (
                "write_key.p1_other".to_owned(),
                byte(&self.p1_other),
                &self.p1_other.provenance,
            ),
            (
                "write_key.p2".to_owned(),
                match self.p2.value {
                    P2::Fixed(b) => format!("{b:02X}"),
                    P2::KeyId => "key-id".to_owned(),
                },
                &self.p2.provenance,
            ),
            (
                "header.layout".to_owned(),
                self.layout
                    .value
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
                    .join(" | "),
                &self.layout.provenance,
            ),
        ];
        for (name, m) in [
            ("use_right", &self.use_right),
            ("change_right", &self.change_right),
        ] {
            if let Some(m) = m {
                out.push((format!("header.{name}"), byte(m), &m.provenance));
            }
        }
        if let Some(m) = &self.state_roles {
            out.push((
                "header.state_roles".to_owned(),
                roles_text(&m.value),
                &m.provenance,
            ));
        }
        for (name, (_, rule)) in &self.algorithms {
            if let Some(h) = &rule.header {
                out.push((format!("algorithm.{name}.header"), byte(h), &h.provenance));
            }
            out.push((
                format!("algorithm.{name}.lc"),
                byte(&rule.lc),
                &rule.lc.provenance,
            ));
        }
        for (role, m) in &self.types {
            out.push((format!("type.{}", role.name()), byte(m), &m.provenance));
        }
        out.extend([
            (
                "master.key_id".to_owned(),
                byte(&self.master_key_id),
                &self.master_key_id.provenance,
            ),
            (
                "master.version".to_owned(),
                byte(&self.master_version),
                &self.master_version.provenance,
            ),
            (
                "master.follow_up".to_owned(),
                byte(&self.master_follow_up),
                &self.master_follow_up.provenance,
            ),
            (
                "follow_up.rule".to_owned(),
                match self.follow_up.value {
                    FollowUpRule::SequenceBothNibbles => "sequence-both-nibbles".to_owned(),
                    FollowUpRule::Fixed(b) => format!("{b:02X}"),
                },
                &self.follow_up.provenance,
            ),
            (
                "follow_up.zero_roles".to_owned(),
                roles_text(&self.zero_roles.value),
                &self.zero_roles.provenance,
            ),
            (
                "follow_up.number_zero_roles".to_owned(),
                self.number_zero_roles.value.to_string(),
                &self.number_zero_roles.provenance,
            ),
            (
                "atr.card_factor".to_owned(),
                self.card_factor.value.name().to_owned(),
                &self.card_factor.provenance,
            ),
        ]);
        out
    }
}

fn roles_text(roles: &[KeyRole]) -> String {
    roles
        .iter()
        .map(|r| r.name())
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// The file format
// ---------------------------------------------------------------------------------------------

const COS_FIELDS: &[(&str, Field)] = &[
    ("id", Field::Value),
    ("version", Field::Value),
    ("description", Field::Value),
    (
        "write_key",
        Field::Table(&[
            ("cla", MARKED),
            ("ins", MARKED),
            ("p1_master", MARKED),
            ("p1_other", MARKED),
            ("p2", MARKED),
        ]),
    ),
    (
        "header",
        Field::Table(&[
            ("layout", MARKED),
            ("use_right", MARKED),
            ("change_right", MARKED),
            ("state_roles", MARKED),
        ]),
    ),
    (
        "algorithm",
        Field::Map(&Field::Table(&[("header", MARKED), ("lc", MARKED)])),
    ),
    ("type", Field::Map(&MARKED)),
    (
        "master",
        Field::Table(&[
            ("key_id", MARKED),
            ("version", MARKED),
            ("follow_up", MARKED),
        ]),
    ),
    (
        "follow_up",
        Field::Table(&[
            ("rule", MARKED),
            ("zero_roles", MARKED),
            ("number_zero_roles", MARKED),
        ]),
    ),
    ("atr", Field::Table(&[("card_factor", MARKED)])),
];

type M<T> = Spanned<RawMarked<T>>;

/// A byte, or a name (`p2 = "key-id"`, `rule = "sequence-both-nibbles"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ByteOrName {
    Byte(u8),
    Name(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCos {
    id: Spanned<String>,
    version: Spanned<u32>,
    description: Option<String>,
    write_key: RawWriteKey,
    header: RawHeader,
    algorithm: Spanned<BTreeMap<String, Spanned<RawAlgorithm>>>,
    #[serde(rename = "type")]
    types: Spanned<BTreeMap<String, M<u8>>>,
    master: RawMaster,
    follow_up: RawFollowUp,
    atr: RawAtr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWriteKey {
    cla: M<u8>,
    ins: M<u8>,
    p1_master: M<u8>,
    p1_other: M<u8>,
    p2: M<ByteOrName>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    layout: M<Vec<String>>,
    use_right: Option<M<u8>>,
    change_right: Option<M<u8>>,
    state_roles: Option<M<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlgorithm {
    header: Option<M<u8>>,
    lc: M<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMaster {
    key_id: M<u8>,
    version: M<u8>,
    follow_up: M<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFollowUp {
    rule: M<ByteOrName>,
    zero_roles: M<Vec<String>>,
    number_zero_roles: M<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAtr {
    card_factor: M<String>,
}

fn byte(at: &At<'_>, raw: M<u8>) -> Result<Marked<u8>> {
    Ok(at.marked(raw)?.0)
}

fn roles(at: &At<'_>, raw: M<Vec<String>>, field: &'static str) -> Result<Marked<Vec<KeyRole>>> {
    let (m, span) = at.marked(raw)?;
    let mut out = Vec::new();
    for name in &m.value {
        let role = KeyRole::from_name(name).ok_or_else(|| {
            at.err(
                &span,
                TemplateFault::UnknownName {
                    field,
                    value: name.clone(),
                },
            )
        })?;
        out.push(role);
    }
    Ok(m.with(out))
}

fn build(at: &At<'_>, raw: RawCos) -> Result<CosProfile> {
    check_id_version(at, &raw.id, &raw.version)?;
    let id = raw.id.get_ref();
    let w = raw.write_key;
    let (p2, p2_span) = at.marked(w.p2)?;
    let p2 = match &p2.value {
        ByteOrName::Byte(b) => p2.with(P2::Fixed(*b)),
        ByteOrName::Name(n) if n == "key-id" => p2.with(P2::KeyId),
        ByteOrName::Name(_) => {
            return Err(at.err(
                &p2_span,
                TemplateFault::InvalidValue {
                    field: "write_key.p2",
                    expected: "a byte, or \"key-id\"",
                },
            ));
        }
    };

    // The header layout and the bytes it needs.
    let h = raw.header;
    let (layout_raw, layout_span) = at.marked(h.layout)?;
    let mut layout = Vec::new();
    for name in &layout_raw.value {
        let field = HeaderField::from_name(name).ok_or_else(|| {
            at.err(
                &layout_span,
                TemplateFault::UnknownName {
                    field: "header field",
                    value: name.clone(),
                },
            )
        })?;
        if layout.contains(&field) {
            return Err(at.err(
                &layout_span,
                TemplateFault::InvalidValue {
                    field: "header.layout",
                    expected: "each header field at most once",
                },
            ));
        }
        layout.push(field);
    }
    if layout.is_empty() {
        return Err(at.err(
            &layout_span,
            TemplateFault::InvalidValue {
                field: "header.layout",
                expected: "at least one header field",
            },
        ));
    }
    let layout = layout_raw.with(layout);
    let header_line = layout.line;
    let needs = |f: HeaderField| layout.value.contains(&f);
    let use_right = h.use_right.map(|m| byte(at, m)).transpose()?;
    let change_right = h.change_right.map(|m| byte(at, m)).transpose()?;
    let state_roles = h
        .state_roles
        .map(|m| roles(at, m, "key role"))
        .transpose()?;
    for (field, present, line) in [
        (
            HeaderField::UseRight,
            use_right.is_some(),
            use_right.as_ref().map(|m| m.line),
        ),
        (
            HeaderField::ChangeRight,
            change_right.is_some(),
            change_right.as_ref().map(|m| m.line),
        ),
        (
            HeaderField::VersionOrState,
            state_roles.is_some(),
            state_roles.as_ref().map(|m| m.line),
        ),
    ] {
        if needs(field) != present {
            return Err(at.err_line(
                line.unwrap_or(header_line),
                TemplateFault::LayoutField {
                    field: field.name(),
                    in_layout: needs(field),
                },
            ));
        }
    }

    // Per algorithm: the header byte (if the layout has one) and Lc, which must be what the
    // layout gives: Ld ‖ header ‖ key, padded to the block, then the MAC.
    let mut algorithms = BTreeMap::new();
    let algorithm_span = raw.algorithm.span();
    for (name, rule) in raw.algorithm.into_inner() {
        let span = rule.span();
        let alg = CardAlgorithm::from_name(&name).ok_or_else(|| {
            at.err(
                &span,
                TemplateFault::UnknownName {
                    field: "algorithm",
                    value: name.clone(),
                },
            )
        })?;
        let rule = rule.into_inner();
        let header = rule.header.map(|m| byte(at, m)).transpose()?;
        if needs(HeaderField::Algorithm) != header.is_some() {
            return Err(at.err(
                &span,
                TemplateFault::LayoutField {
                    field: "algorithm",
                    in_layout: needs(HeaderField::Algorithm),
                },
            ));
        }
        let lc = byte(at, rule.lc)?;
        let block = alg.algorithm().block_len();
        let field = (1 + layout.value.len() + alg.key_len()).div_ceil(block) * block;
        let expected = field + MAC_LEN;
        if usize::from(lc.value) != expected {
            return Err(at.err_line(
                lc.line,
                TemplateFault::LcMismatch {
                    algorithm: alg,
                    expected,
                    actual: lc.value,
                },
            ));
        }
        algorithms.insert(alg.name(), (alg, AlgorithmRule { header, lc }));
    }
    if algorithms.is_empty() {
        return Err(at.err(
            &algorithm_span,
            TemplateFault::InvalidValue {
                field: "algorithm",
                expected: "at least one algorithm",
            },
        ));
    }

    // A type byte for every role.
    let types_span = raw.types.span();
    let mut types = Vec::new();
    for (name, m) in raw.types.into_inner() {
        let span = m.span();
        let role = KeyRole::from_name(&name).ok_or_else(|| {
            at.err(
                &span,
                TemplateFault::UnknownName {
                    field: "key role",
                    value: name.clone(),
                },
            )
        })?;
        types.push((role, byte(at, m)?));
    }
    types.sort_by_key(|(r, _)| KeyRole::ALL.iter().position(|x| x == r));
    if let Some(missing) = KeyRole::ALL
        .into_iter()
        .find(|r| !types.iter().any(|(t, _)| t == r))
    {
        return Err(at.err(
            &types_span,
            TemplateFault::MissingRoleType {
                role: missing.name(),
            },
        ));
    }

    let (rule, rule_span) = at.marked(raw.follow_up.rule)?;
    let follow_up = match &rule.value {
        ByteOrName::Byte(b) => rule.with(FollowUpRule::Fixed(*b)),
        ByteOrName::Name(n) if n == "sequence-both-nibbles" => {
            rule.with(FollowUpRule::SequenceBothNibbles)
        }
        ByteOrName::Name(_) => {
            return Err(at.err(
                &rule_span,
                TemplateFault::InvalidValue {
                    field: "follow_up.rule",
                    expected: "\"sequence-both-nibbles\", or a byte",
                },
            ));
        }
    };
    let (factor, factor_span) = at.marked(raw.atr.card_factor)?;
    let card_factor = match CardFactorRule::from_name(&factor.value) {
        Some(r) => factor.with(r),
        None => {
            return Err(at.err(
                &factor_span,
                TemplateFault::UnknownName {
                    field: "atr.card_factor",
                    value: factor.value.clone(),
                },
            ));
        }
    };

    Ok(CosProfile {
        id: id.clone(),
        version: *raw.version.get_ref(),
        description: raw.description,
        cla: byte(at, w.cla)?,
        ins: byte(at, w.ins)?,
        p1_master: byte(at, w.p1_master)?,
        p1_other: byte(at, w.p1_other)?,
        p2,
        layout,
        use_right,
        change_right,
        state_roles,
        algorithms,
        types,
        master_key_id: byte(at, raw.master.key_id)?,
        master_version: byte(at, raw.master.version)?,
        master_follow_up: byte(at, raw.master.follow_up)?,
        follow_up,
        zero_roles: roles(at, raw.follow_up.zero_roles, "key role")?,
        number_zero_roles: at.marked(raw.follow_up.number_zero_roles)?.0,
        card_factor,
    })
}
