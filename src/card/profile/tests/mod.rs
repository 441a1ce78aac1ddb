//! Unit tests of the COS profiles: the shipped values, and refusals with their lines.

use super::*;
use crate::card::identifiers::Atr;
use crate::card::profile::cos::T514;
use crate::card::template::{CardAlgorithm, KeyRole, TemplateFault};
use crate::error::Error;

/// The line and fault of a refusal of a `file` profile.
fn refusal_of<T: std::fmt::Debug>(
    file: DataFile,
    parsed: Result<T, Error>,
) -> (usize, TemplateFault) {
    match parsed {
        Err(Error::Profile {
            file: f,
            line,
            fault,
        }) if f == file => (line, fault),
        other => panic!("expected a {file} error, got {other:?}"),
    }
}

fn refusal(src: &str) -> (usize, TemplateFault) {
    refusal_of(DataFile::CosProfile, CosProfile::parse(src))
}

/// `T514` with `from` replaced by `to` (exactly once).
fn t514_with(from: &str, to: &str) -> String {
    assert_eq!(T514.matches(from).count(), 1, "{from}");
    T514.replacen(from, to, 1)
}

/// The 1-based line of `T514` that starts with `prefix`.
fn line_of(src: &str, prefix: &str) -> usize {
    src.lines()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starts with {prefix:?}"))
        + 1
}

#[test]
fn t514_has_domain_md_s_values() {
    let p = CosProfile::builtin("t514").unwrap().unwrap();
    assert_eq!(p.id(), "t514");
    assert_eq!(p.master(), (0x00, 0x00, 0xFF));
    assert_eq!(
        p.layout(),
        [
            HeaderField::Type,
            HeaderField::KeyId,
            HeaderField::Version,
            HeaderField::UseRight,
            HeaderField::ErrorCounter,
            HeaderField::Algorithm,
            HeaderField::FollowUp,
            HeaderField::Length,
        ]
    );
    for (role, byte) in [
        (KeyRole::Master, 0x00),
        (KeyRole::Pin, 0x01),
        (KeyRole::Maintenance, 0x07),
        (KeyRole::Load, 0x08),
        (KeyRole::Purchase, 0x09),
        (KeyRole::Tac, 0x0A),
        (KeyRole::InternalAuth, 0x0E),
        (KeyRole::ExternalAuth, 0x0D),
        (KeyRole::PinUnblock, 0x0D),
        (KeyRole::PinReload, 0x0D),
        (KeyRole::Update, 0x0D),
        (KeyRole::Block, 0x0D),
        (KeyRole::Lock, 0x0D),
    ] {
        assert_eq!(p.type_byte(role), byte, "{role}");
    }
    assert_eq!(p.follow_up_rule(), FollowUpRule::SequenceBothNibbles);
    assert_eq!(
        p.zero_roles(),
        [KeyRole::Maintenance, KeyRole::InternalAuth]
    );
    assert_eq!(p.card_factor_rule(), CardFactorRule::Last8);
    for (alg, header, lc) in [
        (CardAlgorithm::Tdes, 0x00, 0x24),
        (CardAlgorithm::Des, 0x01, 0x1C),
        (CardAlgorithm::Sm4, 0x03, 0x24),
    ] {
        let rule = p.algorithm(alg).unwrap();
        assert_eq!(rule.header.as_ref().unwrap().value, header, "{alg}");
        assert_eq!(rule.lc.value, lc, "{alg}");
    }
    // What DOMAIN.md §10 states is marked published; SM4's header byte is not stated.
    let values = p.values();
    let mark = |path: &str| {
        values
            .iter()
            .find(|(p, _, _)| p == path)
            .unwrap_or_else(|| panic!("{path}"))
            .2
            .mark()
    };
    for path in [
        "write_key.cla",
        "write_key.p1_master",
        "write_key.p1_other",
        "write_key.p2",
        "header.layout",
        "header.use_right",
        "algorithm.tdes.lc",
        "algorithm.sm4.lc",
        "type.master",
        "type.internal-auth",
        "master.version",
        "master.follow_up",
        "follow_up.rule",
        "follow_up.zero_roles",
        "atr.card_factor",
    ] {
        assert_eq!(mark(path), "published", "{path}");
    }
    assert_eq!(mark("algorithm.sm4.header"), "inferred");
    assert_eq!(mark("algorithm.des.lc"), "inferred");
}

#[test]
fn fmcos_differs_where_domain_md_says() {
    let p = CosProfile::builtin("fmcos").unwrap().unwrap();
    assert_eq!(
        p.layout(),
        [
            HeaderField::Type,
            HeaderField::UseRight,
            HeaderField::ChangeRight,
            HeaderField::VersionOrState,
            HeaderField::ErrorCounter,
        ]
    );
    for (role, byte) in [
        (KeyRole::Master, 0x39),
        (KeyRole::ExternalAuth, 0x39),
        (KeyRole::Maintenance, 0x36),
        (KeyRole::InternalAuth, 0x30),
        (KeyRole::PinUnblock, 0x37),
        (KeyRole::PinReload, 0x38),
        (KeyRole::Purchase, 0x3E),
        (KeyRole::Load, 0x3F),
        (KeyRole::Tac, 0x34),
    ] {
        assert_eq!(p.type_byte(role), byte, "{role}");
    }
    // No algorithm byte in the header; Lc from the 5-byte header.
    let tdes = p.algorithm(CardAlgorithm::Tdes).unwrap();
    assert!(tdes.header.is_none());
    assert_eq!(tdes.lc.value, 0x1C);
    assert_eq!(p.algorithm(CardAlgorithm::Sm4).unwrap().lc.value, 0x24);
}

#[test]
fn every_shipped_value_is_marked_with_a_source() {
    for (id, src) in BUILTIN_COS {
        let p = CosProfile::parse(src).unwrap();
        assert_eq!(p.id(), id);
        let values = p.values();
        assert!(values.len() > 20, "{id}");
        for (path, _, provenance) in values {
            assert!(!provenance.source().trim().is_empty(), "{id} {path}");
        }
    }
}

#[test]
fn card_factor_rules() {
    let atr: Atr = "3B6D000080318065B086843202AD932A48".parse().unwrap();
    assert_eq!(
        CardFactorRule::Last8.card_factor(&atr).unwrap().to_hex(),
        "86843202AD932A48"
    );
    assert_eq!(
        CardFactorRule::HistoricalLast8
            .card_factor(&atr)
            .unwrap()
            .to_hex(),
        "86843202AD932A48"
    );
    // With a TCK the two differ: the last 8 bytes include it, the historical bytes do not.
    let mut t1 = vec![0x3B, 0x8A, 0x01];
    t1.extend(1..=10u8);
    let tck = t1[1..].iter().fold(0, |a, b| a ^ b);
    t1.push(tck);
    let atr = Atr::from_bytes(&t1).unwrap();
    assert_eq!(
        CardFactorRule::HistoricalLast8
            .card_factor(&atr)
            .unwrap()
            .as_bytes(),
        &[3, 4, 5, 6, 7, 8, 9, 10]
    );
    assert_eq!(
        CardFactorRule::Last8.card_factor(&atr).unwrap().as_bytes(),
        &[4, 5, 6, 7, 8, 9, 10, tck]
    );
    // Fewer than 8 historical bytes: no factor of that rule.
    let short = Atr::from_bytes(&[0x3B, 0x06, 1, 2, 3, 4, 5, 6]).unwrap();
    assert!(matches!(
        CardFactorRule::HistoricalLast8.card_factor(&short),
        Err(Error::InvalidIdentifier { field: "atr", .. })
    ));
}

#[test]
fn refusals_name_the_line() {
    // A value without a mark, and one with both.
    let src = t514_with(
        "cla = { value = 0x84, published = \"chip.cpp (DOMAIN.md §10): 84 = encrypted field + MAC; 80/04 lack one of them\" }",
        "cla = { value = 0x84 }",
    );
    assert_eq!(
        refusal(&src),
        (line_of(&src, "cla ="), TemplateFault::Unmarked)
    );
    let src = t514_with(
        "ins = { value = 0xD4, published = \"chip.cpp (DOMAIN.md §10): WRITE KEY\" }",
        "ins = { value = 0xD4, published = \"a\", inferred = \"b\" }",
    );
    assert_eq!(
        refusal(&src),
        (line_of(&src, "ins ="), TemplateFault::TwoMarks)
    );
    // An unknown field, in a section and in a marked value.
    let src = t514_with("[write_key]\n", "[write_key]\ncolour = 1\n");
    assert_eq!(
        refusal(&src),
        (
            line_of(&src, "colour"),
            TemplateFault::UnknownField("colour".to_owned())
        )
    );
    let src = t514_with(
        "p2 = { value = 0x00, published",
        "p2 = { value = 0x00, source = \"x\", published",
    );
    assert_eq!(
        refusal(&src),
        (
            line_of(&src, "p2 ="),
            TemplateFault::UnknownField("source".to_owned())
        )
    );
    // Lc that is not the field and the MAC of the layout.
    let src = t514_with(
        "lc = { value = 0x24, published = \"chip.cpp",
        "lc = { value = 0x20, published = \"chip.cpp",
    );
    assert_eq!(
        refusal(&src),
        (
            line_of(&src, "lc = { value = 0x20"),
            TemplateFault::LcMismatch {
                algorithm: CardAlgorithm::Tdes,
                expected: 0x24,
                actual: 0x20
            }
        )
    );
    // A role without a type byte, and an unknown role.
    let src = t514_with("\nlock = { value = 0x0D", "\n# lock = { value = 0x0D");
    assert_eq!(
        refusal(&src).1,
        TemplateFault::MissingRoleType { role: "lock" }
    );
    let src = t514_with("\nlock = { value = 0x0D", "\npadlock = { value = 0x0D");
    assert_eq!(
        refusal(&src),
        (
            line_of(&src, "padlock"),
            TemplateFault::UnknownName {
                field: "key role",
                value: "padlock".to_owned()
            }
        )
    );
    // The layout names use_right: its byte is required.
    let src = t514_with("use_right = { value = 0xEF", "# use_right = { value = 0xEF");
    assert_eq!(
        refusal(&src),
        (
            line_of(&src, "layout ="),
            TemplateFault::LayoutField {
                field: "use_right",
                in_layout: true
            }
        )
    );
    // Unknown names in values.
    let src = t514_with("\"last-8\"", "\"first-8\"");
    assert_eq!(
        refusal(&src),
        (
            line_of(&src, "card_factor ="),
            TemplateFault::UnknownName {
                field: "atr.card_factor",
                value: "first-8".to_owned()
            }
        )
    );
    let src = t514_with("p2 = { value = 0x00", "p2 = { value = \"key-index\"");
    assert!(matches!(
        refusal(&src),
        (
            l,
            TemplateFault::InvalidValue {
                field: "write_key.p2",
                ..
            }
        ) if l == line_of(&src, "p2 =")
    ));
    // The error names the file kind and the line.
    let err = CosProfile::parse(&t514_with("version = 1", "version = 0")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "COS profile line {}: `version` must be at least 1",
            line_of(T514, "version")
        )
    );
}

mod props;
mod psam;
