//! Unit tests of the template parser, validation, write order and headers.

use hsm_api::Algorithm;

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
    let t = Template::parse(include_str!("../../../../templates/ssc-2.0.toml")).unwrap();
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
    let t = Template::parse(include_str!("../../../../templates/ssc-3.0.toml")).unwrap();
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
    let t = Template::parse(include_str!("../../../../templates/ssc-2.0.toml")).unwrap();
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
    let sm4_template = include_str!("../../../../templates/ssc-3.0.toml").replacen(
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

// ---- property tests: no input panics; each malformed input its own fault (256 cases each) ----

mod props {
    use proptest::prelude::*;

    use super::*;

    /// `src` with one of its lines deleted, replaced by `text`, or cut at a character.
    fn damage(src: &str, op: u8, at: prop::sample::Index, text: &str) -> String {
        let lines: Vec<&str> = src.lines().collect();
        let i = at.index(lines.len());
        match op {
            0 => lines
                .iter()
                .enumerate()
                .filter(|(n, _)| *n != i)
                .map(|(_, l)| format!("{l}\n"))
                .collect(),
            1 => lines
                .iter()
                .enumerate()
                .map(|(n, l)| format!("{}\n", if n == i { text } else { l }))
                .collect(),
            _ => src
                .chars()
                .take(at.index(src.chars().count() + 1))
                .collect(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn a_damaged_template_is_refused_at_a_line_never_with_a_panic(
            which in 0usize..3,
            op in 0u8..3,
            at in any::<prop::sample::Index>(),
            text in ".{0,48}",
        ) {
            let src = [BUILTIN[0].1, BUILTIN[1].1, MINI][which];
            let damaged = damage(src, op, at, &text);
            match Template::parse(&damaged) {
                // A comment, a blank line, an optional field: still a template.
                Ok(t) => prop_assert!(!t.keys().is_empty()),
                Err(Error::Template { line, .. }) => prop_assert!(
                    (1..=damaged.lines().count() + 1).contains(&line),
                    "line {line} of {}", damaged.lines().count()
                ),
                Err(other) => prop_assert!(false, "not a template refusal: {other:?}"),
            }
        }

        #[test]
        fn a_key_copied_under_any_name_is_a_duplicate_name_or_slot(
            name in "[A-Z][A-Z0-9_]{0,15}",
        ) {
            // RK_MF's block (from `[[key]]` on) again, under `name`, after the others.
            let rk = &MINI[MINI.rfind("[[key]]").unwrap()..];
            let src = format!("{MINI}\n{}", rk.replace("name = \"RK_MF\"", &format!("name = \"{name}\"")));
            let copy_line = MINI.lines().count() + 3;
            let (line, fault) = refusal(&src);
            match name.as_str() {
                "MK_MF" | "RK_MF" => prop_assert_eq!(
                    (line, fault),
                    (
                        copy_line,
                        TemplateFault::DuplicateKeyName {
                            name: name.clone(),
                            first_line: if name == "MK_MF" { 8 } else { 19 },
                        }
                    )
                ),
                // An issuer-only name with `psam_allowed`: refused for that first.
                n if n.starts_with("MK") || n.starts_with("STK") => prop_assert!(
                    matches!(
                        &fault,
                        TemplateFault::DuplicateSlot { .. } | TemplateFault::PsamRefused { .. }
                    ),
                    "{line}: {fault:?}"
                ),
                _ => prop_assert!(
                    matches!(&fault, TemplateFault::DuplicateSlot { other, .. } if other == "RK_MF"),
                    "{line}: {fault:?}"
                ),
            }
        }

        #[test]
        fn a_length_that_is_not_the_algorithms_is_named(length in 0u32..64) {
            let src = MINI.replacen("length = 16", &format!("length = {length}"), 1);
            match length {
                16 => prop_assert!(Template::parse(&src).is_ok()),
                _ => {
                    let (line, fault) = refusal(&src);
                    prop_assert_eq!(line, 13);
                    prop_assert!(
                        matches!(fault, TemplateFault::LengthMismatch { .. }),
                        "{fault:?}"
                    );
                }
            }
        }
    }
}
