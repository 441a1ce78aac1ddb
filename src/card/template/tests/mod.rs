//! Unit tests of the template parser, validation, write order and headers.

use hsm_api::Algorithm;

use super::*;

fn refusal(src: &str) -> (usize, TemplateFault) {
    match Template::parse(src) {
        Err(Error::Template { line, fault }) => (line, fault),
        other => panic!("expected a template error, got {other:?}"),
    }
}

/// A valid minimal template: header on lines 1-6, MK_MF on 7-16, RK on 18-29.
const MINI: &str = r#"id = "mini"
version = 1
generation = "2.0"
algorithm = "tdes"
dispersion = "pboc-tdes"
cos = "t514"
[[key]]
name = "MK_MF"
directory = "MF"
role = "master"
# the COS profile gives a master key its id and version
description = "the card's master key"
length = 16
error_counter = 0x33
protected_by = "vendor-transport"
root = "provincial"

[[key]]
name = "RK_MF"
directory = "MF"
key_id = 0x01
key_version = 0x01
role = "external-auth"
length = 16
error_counter = 0x55
# (PSAM usage: a PSAM profile's, profiles/psam/)
# (PSAM usage: a PSAM profile's, profiles/psam/)
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
role = "update"
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
    assert_eq!(t.version(), 2);
    assert_eq!(t.generation(), "2.0");
    assert_eq!(t.algorithm(), CardAlgorithm::Tdes);
    assert_eq!(t.dispersion(), Dispersion::PbocTdes);
    assert_eq!(t.extends(), None);
    assert_eq!(t.keys().len(), 33);
    for dir in ["MF", "SSSE", "DF01", "DF02", "DF03", "DF04", "DF05"] {
        let mk = t.key(&format!("MK_{dir}")).unwrap();
        assert_eq!(mk.directory, dir);
        assert_eq!(mk.role, KeyRole::Master);
        assert_eq!(mk.root, KeyRoot::Provincial);
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
    // T514: type 0D, id, version, EF, error counter, 3DES 00, follow-up 33 (the third key of
    // SSSE after its master key: STK and IRK take 1 and 2 and carry 00), length.
    assert_eq!(
        t.card_key_header(rk),
        [0x0D, 0x03, 0x01, 0xEF, 0x55, 0x00, 0x33, 16]
    );
}

#[test]
fn ssc_3_0_loads() {
    let t = Template::parse(include_str!("../../../../templates/ssc-3.0.toml")).unwrap();
    assert_eq!(t.id(), "ssc-3.0");
    assert_eq!(t.generation(), "3.0");
    assert_eq!(t.algorithm(), CardAlgorithm::Sm4);
    assert_eq!(t.dispersion(), Dispersion::Sm4Complement);
    assert_eq!(t.keys().len(), 34);
    for k in t.keys() {
        assert_eq!(k.algorithm, CardAlgorithm::Sm4);
        assert_eq!(k.hsm_algorithm(), Algorithm::Sm4);
        assert_eq!(k.dispersion, Dispersion::Sm4Complement);
    }
    let mk = t.key("MK_DF03").unwrap();
    // T514's master key: type 00, id 00, version 00, SM4's algorithm byte 03, follow-up FF.
    assert_eq!(
        t.card_key_header(mk),
        [0x00, 0x00, 0x00, 0xEF, 0x33, 0x03, 0xFF, 16]
    );
    // The 2.0 key set, and the PKI application's SM4 master key, written as a master key
    // (84 D4 01 00 24, DOMAIN.md §10).
    let two = Template::builtin("ssc-2.0").unwrap();
    let names = |t: &Template| t.keys().iter().map(|k| k.name.clone()).collect::<Vec<_>>();
    let mut expected = names(&two);
    expected.push("MK_PKI".to_owned());
    assert_eq!(names(&t), expected);
    let pki = t.key("MK_PKI").unwrap();
    assert_eq!((pki.role, pki.root), (KeyRole::Master, KeyRoot::Provincial));
    let params = t.write_key_params(pki);
    assert_eq!(
        [params.cla, params.ins, params.p1, params.p2, params.lc],
        [0x84, 0xD4, 0x01, 0x00, 0x24]
    );
    // The key ids public 3.0 reader code shows: RKSSSE 0A, PIN reload 06.
    assert_eq!(t.key("RK_SSSE").unwrap().key_id, 0x0A);
    assert_eq!(t.key("RPK_SSSE").unwrap().key_id, 0x06);
    assert_eq!(two.key("RK_SSSE").unwrap().key_id, 0x03);
}

#[test]
fn the_fmcos_variant_is_ssc_2_0_key_for_key() {
    let t514 = Template::builtin("ssc-2.0").unwrap();
    let fmcos = Template::builtin("ssc-2.0-fmcos").unwrap();
    assert_eq!(t514.cos().id(), "t514");
    assert_eq!(fmcos.cos().id(), "fmcos");
    assert_eq!(
        (fmcos.generation(), fmcos.algorithm(), fmcos.dispersion()),
        (t514.generation(), t514.algorithm(), t514.dispersion())
    );
    assert_eq!(fmcos.keys().len(), t514.keys().len());
    for (a, b) in t514.keys().iter().zip(fmcos.keys()) {
        // Everything the key lines say is the same…
        assert_eq!(
            (
                &a.name,
                &a.directory,
                a.role,
                a.key_id,
                a.key_version,
                a.algorithm,
                a.error_counter,
                &a.protected_by,
                a.root,
            ),
            (
                &b.name,
                &b.directory,
                b.role,
                b.key_id,
                b.key_version,
                b.algorithm,
                b.error_counter,
                &b.protected_by,
                b.root,
            ),
            "{}",
            a.name
        );
        // …and what the chip decides is not.
        assert_eq!(t514.card_key_header(a).len(), 8);
        assert_eq!(fmcos.card_key_header(b).len(), 5);
        assert_eq!(fmcos.write_key_params(b).p2, b.key_id, "{}", b.name);
    }
    let write_order = |t: &Template| t.write_order().map(|k| k.name.clone()).collect::<Vec<_>>();
    assert_eq!(write_order(&fmcos), write_order(&t514));
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
role = "update"
length = 16
error_counter = 0x55
protected_by = "MK_DF01"
root = "national"

[[key]]
name = "MK_DF01"
directory = "DF01"
role = "master"
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
role = "internal-auth"
algorithm = "des"
length = 8
error_counter = 0xFF
protected_by = "MK_MF"
root = "national"
dispersion = "pboc-des"
"#,
    ))
    .unwrap();
    let k = t.key("DK_MF").unwrap();
    assert_eq!(k.algorithm, CardAlgorithm::Des);
    assert_eq!(k.dispersion, Dispersion::PbocDes);
    // T514: internal authentication 0E, id, version, EF, error counter, DES 01, follow-up 00
    // (IRK carries 00), length 8.
    assert_eq!(
        t.card_key_header(k),
        [0x0E, 0x07, 0x02, 0xEF, 0xFF, 0x01, 0x00, 0x08]
    );
    assert_eq!(k.line(), 32);
    // The master key: type 00, id 00, version 00, follow-up FF (the profile's, not the file's).
    let mk = t.key("MK_MF").unwrap();
    assert_eq!((mk.key_id, mk.key_version), (0x00, 0x00));
    assert_eq!(
        t.card_key_header(mk),
        [0x00, 0x00, 0x00, 0xEF, 0x33, 0x00, 0xFF, 0x10]
    );
    // P1 01 for the master key, 00 for the others; P2 00; Lc by algorithm.
    let p = t.write_key_params(mk);
    assert_eq!(
        (p.cla, p.ins, p.p1, p.p2, p.lc),
        (0x84, 0xD4, 0x01, 0x00, 0x24)
    );
    let p = t.write_key_params(k);
    assert_eq!(
        (p.cla, p.ins, p.p1, p.p2, p.lc),
        (0x84, 0xD4, 0x00, 0x00, 0x1C)
    );
}

#[test]
fn follow_up_levels_number_the_keys_of_each_directory() {
    // MF: MK_MF (FF), RK_MF 11, then an update key 22, a maintenance key (00, but it takes
    // number 3), and an internal-authentication key (00, number 4), then a PIN-unblock key 55.
    let extra = |name: &str, id: u8, role: &str| {
        EXTRA
            .replace("UK_MF", name)
            .replace("key_id = 0x02", &format!("key_id = {id:#04x}"))
            .replace("role = \"update\"", &format!("role = \"{role}\""))
    };
    let src = [
        MINI.to_owned(),
        extra("UK_MF", 0x02, "update"),
        extra("SK_MF", 0x03, "maintenance"),
        extra("IK_MF", 0x04, "internal-auth"),
        extra("PK_MF", 0x05, "pin-unblock"),
    ]
    .join("\n");
    let t = Template::parse(&src).unwrap();
    let levels: Vec<(&str, u8, u8)> = t
        .keys()
        .iter()
        .map(|k| (k.name.as_str(), k.key_type, k.follow_up))
        .collect();
    assert_eq!(
        levels,
        [
            ("MK_MF", 0x00, 0xFF),
            ("RK_MF", 0x0D, 0x11),
            ("UK_MF", 0x0D, 0x22),
            ("SK_MF", 0x07, 0x00),
            ("IK_MF", 0x0E, 0x00),
            ("PK_MF", 0x0D, 0x55),
        ]
    );
    // Sixteen numbered keys in one directory do not fit a nibble.
    let many: Vec<String> = (0..15)
        .map(|i| extra(&format!("XK{i:02}_MF"), 0x10 + i, "external-auth"))
        .collect();
    let src = format!("{MINI}\n{}", many.join("\n"));
    let (_, fault) = refusal(&src);
    assert_eq!(
        fault,
        TemplateFault::FollowUpOverflow {
            directory: "MF".to_owned()
        }
    );
}

#[test]
fn roles_and_the_profile_decide_what_the_key_lines_do_not() {
    // An unknown role, at its line.
    assert_eq!(
        refusal(&mini_with("role = \"external-auth\"", "role = \"read\"")),
        (
            23,
            TemplateFault::UnknownName {
                field: "role",
                value: "read".to_owned()
            }
        )
    );
    // A master key's id and version are the profile's: giving one is refused.
    assert_eq!(
        refusal(&mini_with(
            "# the COS profile gives a master key its id and version",
            "key_version = 0x01"
        )),
        (
            11,
            TemplateFault::DecidedByProfile {
                field: "key_version"
            }
        )
    );
    // Every other key names its own.
    assert_eq!(
        refusal(&mini_with("key_id = 0x01\n", "")),
        (19, TemplateFault::MissingKeyField { field: "key_id" })
    );
    // A master key's root is never the Ministry's.
    assert_eq!(
        refusal(&mini_with("root = \"provincial\"", "root = \"national\"")),
        (16, TemplateFault::MasterKeyRoot)
    );
    // `root = "city"` belongs to a city's extension.
    assert_eq!(
        refusal(&mini_with("root = \"national\"", "root = \"city\"")),
        (29, TemplateFault::CityRootOutsideExtension)
    );
    // A profile that does not exist.
    assert_eq!(
        refusal(&mini_with("cos = \"t514\"", "cos = \"t515\"")),
        (6, TemplateFault::UnknownCos("t515".to_owned()))
    );
    // The same lines under another profile give other bytes: FMCOS types, its 5-byte header,
    // P1 01 and P2 = the key id.
    let t = Template::parse(&mini_with("cos = \"t514\"", "cos = \"fmcos\"")).unwrap();
    assert_eq!(t.cos().id(), "fmcos");
    let rk = t.key("RK_MF").unwrap();
    assert_eq!(rk.key_type, 0x39);
    // External authentication sets a state: its version/state byte is its follow-up level.
    assert_eq!(t.card_key_header(rk), [0x39, 0xF0, 0xF0, 0x11, 0x55]);
    let p = t.write_key_params(rk);
    assert_eq!(
        (p.cla, p.ins, p.p1, p.p2, p.lc),
        (0x84, 0xD4, 0x01, 0x01, 0x1C)
    );
    // Behaviour follows roles, never names: a key named like a maintenance key is what its
    // role says.
    let t = Template::parse(&mini_with("name = \"RK_MF\"", "name = \"STK_MF\"")).unwrap();
    let stk = t.key("STK_MF").unwrap();
    assert_eq!(stk.role, KeyRole::ExternalAuth);
    assert!(!stk.is_issuer_only());
}

#[test]
fn psam_usage_bytes() {
    // Any byte decodes; a PSAM profile decides which levels and types it accepts.
    for (byte, levels, kind, level) in [
        (0x28, 1, Some(PsamKeyType::MacEncryption), KeyLevel::City),
        (
            0x48,
            2,
            Some(PsamKeyType::MacEncryption),
            KeyLevel::Province,
        ),
        (0x67, 3, Some(PsamKeyType::Encryption), KeyLevel::National),
        (0x42, 2, Some(PsamKeyType::Purchase), KeyLevel::Province),
        (0x08, 0, Some(PsamKeyType::MacEncryption), KeyLevel::Card),
        (0x2C, 1, None, KeyLevel::City),
    ] {
        let u = PsamUsage::from_byte(byte);
        assert_eq!((u.levels(), u.kind(), u.level()), (levels, kind, level));
        assert_eq!(u.byte(), byte);
        assert_eq!(u.level().levels_above_card(), levels);
    }
}

// ---- refusals, each with its line ----

#[test]
fn syntax_and_type_errors_have_lines() {
    let (line, fault) = refusal(&mini_with(
        "length = 16\nerror_counter = 0x33",
        "length = 16\nerror_counter = \"x",
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
    let src = mini_with("role = \"master\"", "role = \"master\"\nzz = 1");
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
    // Two keys of one type byte (T514: 0D for external authentication and update keys) with
    // one id and version, reported at the later key's id.
    assert_eq!(
        refusal(&mini_plus(&EXTRA.replace("key_id = 0x02", "key_id = 0x01"))),
        (
            34,
            TemplateFault::DuplicateSlot {
                name: "UK_MF".to_owned(),
                directory: "MF".to_owned(),
                key_type: 0x0D,
                key_id: 1,
                key_version: 1,
                other: "RK_MF".to_owned()
            }
        )
    );
    // The same id under another type byte is another slot (T514's maintenance type is 07)…
    let maintenance = EXTRA
        .replace("key_id = 0x02", "key_id = 0x01")
        .replace("role = \"update\"", "role = \"maintenance\"");
    assert!(Template::parse(&mini_plus(&maintenance)).is_ok());
    // …and a master key's id 00 is free for a key of another type.
    assert!(Template::parse(&mini_with("key_id = 0x01", "key_id = 0x00")).is_ok());
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
        "length = 16\nerror_counter = 0x55",
        "length = 8\nerror_counter = 0x55",
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
role = "internal-auth"
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
role = "internal-auth"
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
fn psam_fields_belong_to_psam_profiles() {
    // Usage bytes moved to the PSAM profiles: a key line that gives one is refused at it.
    let src = mini_with(
        "# (PSAM usage: a PSAM profile's, profiles/psam/)\n# (PSAM",
        "psam_usage = 0x28\n# (PSAM",
    );
    assert_eq!(
        refusal(&src),
        (26, TemplateFault::UnknownField("psam_usage".to_owned()))
    );
}

#[test]
fn root_refusals() {
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
cos = "t514"
[[key]]
name = "MK_DF06"
directory = "DF06"
role = "master"
# the COS profile gives a master key its id and version
description = "Shenzhen's own directory"
length = 16
error_counter = 0x33
protected_by = "MK_SSSE"
root = "provincial"

[[key]]
name = "RK_DF06"
directory = "DF06"
key_id = 0x01
key_version = 0x01
role = "external-auth"
length = 16
error_counter = 0x55
# (PSAM usage: a PSAM profile's, profiles/psam/)
# (PSAM usage: a PSAM profile's, profiles/psam/)
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
    assert_eq!(t.base_version(), Some(2));
    assert_eq!(t.extends(), Some("ssc-2.0"));
    assert_eq!(t.region().unwrap().code, "440300");
    assert_eq!(t.keys().len(), 35);
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
        (24, TemplateFault::DuplicateSlot { other, .. }) if other == "RK_DF03"
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
    let src = SHENZHEN.replace("cos = \"t514\"", "cos = \"fmcos\"");
    assert_eq!(
        extend_refusal(&base, &src),
        (9, TemplateFault::HeaderMismatch { field: "cos" })
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

#[test]
fn a_secure_messaging_only_policy_keeps_maintenance_keys_out_of_tr31() {
    let open = Template::builtin("ssc-2.0").unwrap();
    let stk = open.key("STK_SSSE").unwrap();
    let other = open
        .keys()
        .iter()
        .find(|k| k.role != KeyRole::Maintenance && !open.is_master_key(k))
        .unwrap();
    let mk = open.key("MK_SSSE").unwrap();
    assert!(open.may_leave_as_tr31(stk) && open.may_leave_as_tr31(other));
    assert!(!open.may_leave_as_tr31(mk), "a master key never does");

    let src = BUILTIN[0].1.replacen(
        "\n[[key]]",
        "\nissuer_only_delivery = \"secure-messaging\"\n\n[[key]]",
        1,
    );
    let strict = Template::parse(&src).unwrap();
    assert!(!strict.may_leave_as_tr31(strict.key("STK_SSSE").unwrap()));
    assert!(strict.may_leave_as_tr31(strict.key(&other.name).unwrap()));
    // The default TR-31 set is what may leave: no maintenance key in it.
    let leaving: Vec<&str> = strict
        .write_order()
        .filter(|k| strict.may_leave_as_tr31(k))
        .map(|k| k.name.as_str())
        .collect();
    assert!(
        !leaving.is_empty() && !leaving.iter().any(|n| n.starts_with("STK")),
        "{leaving:?}"
    );

    let bad = BUILTIN[0].1.replacen(
        "\n[[key]]",
        "\nissuer_only_delivery = \"tr31\"\n\n[[key]]",
        1,
    );
    match Template::parse(&bad) {
        Err(Error::Template { line, .. }) => {
            let at = bad
                .lines()
                .position(|l| l.starts_with("issuer_only_delivery"))
                .unwrap()
                + 1;
            assert_eq!(line, at);
        }
        other => panic!("{other:?}"),
    }
}

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
                // Any other name, `MK…` and `STK…` too: behaviour never follows a name.
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

// ---- the full key set and multi-version keys ----

#[test]
fn the_full_key_set_of_domain_md_10() {
    for id in ["ssc-2.0", "ssc-2.0-fmcos", "ssc-3.0"] {
        let t = Template::builtin(id).unwrap();
        let role = |name: &str| t.key(name).unwrap_or_else(|| panic!("{id}: {name}")).role;
        assert_eq!(role("BK_SSSE"), KeyRole::Block);
        for df in ["DF01", "DF02", "DF03", "DF04", "DF05"] {
            let lk = t.key(&format!("LK_{df}")).unwrap();
            assert_eq!((lk.role, lk.directory.as_str()), (KeyRole::Lock, df));
        }
        assert_eq!(t.key("DSK_DF04").unwrap().directory, "DF04");
        // Two versions of the load and purchase keys, each version its own key id.
        for (first, second) in [("DPK_DF04", "DPK2_DF04"), ("DLK_DF04", "DLK2_DF04")] {
            let (a, b) = (t.key(first).unwrap(), t.key(second).unwrap());
            assert_eq!(a.group(), first);
            assert_eq!(b.group(), first);
            assert_eq!(b.version_of.as_deref(), Some(first));
            assert_eq!((a.role, &a.directory), (b.role, &b.directory));
            assert_eq!((a.key_version, b.key_version), (0x01, 0x02));
            assert_ne!(a.key_id, b.key_id);
        }
    }
    // On T514, BK and LK are of "every other key"'s type 0D; on FMCOS of its maintenance class.
    let t514 = Template::builtin("ssc-2.0").unwrap();
    let fmcos = Template::builtin("ssc-2.0-fmcos").unwrap();
    assert_eq!(t514.key("BK_SSSE").unwrap().key_type, 0x0D);
    assert_eq!(fmcos.key("LK_DF03").unwrap().key_type, 0x36);
}

/// `MINI` plus a second version of RK_MF with `fields` (key_id, key_version, …).
fn second_version(fields: &str) -> String {
    mini_plus(&format!(
        r#"[[key]]
name = "RK2_MF"
directory = "MF"
role = "external-auth"
{fields}
length = 16
error_counter = 0x55
protected_by = "MK_MF"
root = "national"
"#
    ))
}

#[test]
fn versions_of_a_key() {
    let t = Template::parse(&second_version(
        "key_id = 0x02\nkey_version = 0x02\nversion_of = \"RK_MF\"",
    ))
    .unwrap();
    assert_eq!(t.key("RK2_MF").unwrap().group(), "RK_MF");
    assert_eq!(t.key("RK_MF").unwrap().group(), "RK_MF");
    // version_of is on line 37 of each variant below.
    let cases: [(&str, TemplateFault); 5] = [
        (
            "key_id = 0x02\nkey_version = 0x02\nversion_of = \"NOPE\"",
            TemplateFault::VersionOfUnknown("NOPE".to_owned()),
        ),
        (
            "key_id = 0x02\nkey_version = 0x02\nversion_of = \"MK_MF\"",
            TemplateFault::VersionOfMismatch {
                field: "role",
                first: "MK_MF".to_owned(),
            },
        ),
        (
            "key_id = 0x02\nkey_version = 0x01\nversion_of = \"RK_MF\"",
            TemplateFault::VersionRepeated {
                field: "key_version",
                other: "RK_MF".to_owned(),
            },
        ),
        (
            "key_id = 0x01\nkey_version = 0x02\nversion_of = \"RK_MF\"",
            TemplateFault::VersionRepeated {
                field: "key_id",
                other: "RK_MF".to_owned(),
            },
        ),
        (
            "key_id = 0x02\nkey_version = 0x02\nversion_of = \"RK_MF\"\ndirectory_note = 1",
            TemplateFault::UnknownField("directory_note".to_owned()),
        ),
    ];
    for (fields, fault) in cases {
        let (line, got) = refusal(&second_version(fields));
        assert_eq!(got, fault, "{fields}");
        if !matches!(fault, TemplateFault::UnknownField(_)) {
            assert_eq!(line, 37, "{fields}");
        }
    }
    // A third version naming the second, not the first, is refused.
    let third = format!(
        "{}\n[[key]]\nname = \"RK3_MF\"\ndirectory = \"MF\"\nrole = \"external-auth\"\n\
         key_id = 0x03\nkey_version = 0x03\nversion_of = \"RK2_MF\"\nlength = 16\n\
         error_counter = 0x55\nprotected_by = \"MK_MF\"\nroot = \"national\"\n",
        second_version("key_id = 0x02\nkey_version = 0x02\nversion_of = \"RK_MF\"")
    );
    assert_eq!(refusal(&third).1, TemplateFault::VersionOfNotFirst);
}
