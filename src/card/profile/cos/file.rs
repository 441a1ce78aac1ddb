//! The COS profile file format: its schema, the raw structs serde fills, and the checks that
//! turn a parsed file into a [`CosProfile`].

use super::*;

// ---------------------------------------------------------------------------------------------
// The file format
// ---------------------------------------------------------------------------------------------

pub(super) const COS_FIELDS: &[(&str, Field)] = &[
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
pub(super) struct RawCos {
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

pub(super) fn build(at: &At<'_>, raw: RawCos) -> Result<CosProfile> {
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
