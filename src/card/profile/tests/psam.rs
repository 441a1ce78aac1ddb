//! Unit tests of the PSAM profiles: the shipped values, the key sets they give each shipped
//! template, the rules no profile can lift, and refusals with their lines.

use super::{line_of, refusal_of};
use crate::card::profile::psam::{CITY, PROVINCE_WIDE, builtin_profiles_hold};
use crate::card::profile::{DataFile, PsamProfile, Serves};
use crate::card::template::{KeyLevel, Template, TemplateFault};

fn refusal(src: &str) -> (usize, TemplateFault) {
    refusal_of(DataFile::PsamProfile, PsamProfile::parse(src))
}

#[test]
fn the_shipped_profiles() {
    let pw = PsamProfile::builtin("province-wide").unwrap().unwrap();
    let city = PsamProfile::builtin("city").unwrap().unwrap();
    assert_eq!(pw.serves(), Serves::Province);
    assert_eq!(city.serves(), Serves::City);
    assert_eq!(PsamProfile::default_for(Serves::Province), pw.id());
    assert_eq!(PsamProfile::default_for(Serves::City), city.id());
    // The usage types and the levels are data; level 0 is one of the city's.
    assert_eq!(pw.usage_types(), [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(pw.levels(), [2, 3]);
    assert_eq!(city.levels(), [0, 1]);
    assert!(!pw.takes_maintenance_keys() && !city.takes_maintenance_keys());
    // Every value is marked with a source.
    for p in [&pw, &city] {
        for (path, _, provenance) in p.values() {
            assert!(!provenance.source().is_empty(), "{path}");
        }
    }
    // PSAM key ids are the PSAM's own: IRK is PSAM key 01, card key 02.
    let irk = &pw.keys()[0];
    assert_eq!(irk.card_key, "IRK_SSSE");
    assert_eq!(irk.psam_key_id.value, 0x01);
    assert_eq!(irk.usage.value.byte(), 0x67);
    assert_eq!(irk.usage.value.level(), KeyLevel::National);
}

#[test]
fn key_sets_of_the_shipped_templates() {
    for id in ["ssc-2.0", "ssc-3.0", "ssc-2.0-fmcos"] {
        let t = Template::builtin(id).unwrap();
        for (profile, level) in [
            ("province-wide", KeyLevel::Province),
            ("city", KeyLevel::City),
        ] {
            let p = PsamProfile::builtin(profile).unwrap().unwrap();
            let (keys, omitted) = p.key_set(&t);
            assert!(omitted.is_empty(), "{id}/{profile}: {omitted:?}");
            assert_eq!(keys.len(), p.keys().len());
            assert!(keys.iter().any(|k| k.level() == level), "{id}/{profile}");
            for k in &keys {
                assert!(!k.key.is_issuer_only(), "{}", k.key.name);
                assert!(builtin_profiles_hold(k.key));
            }
        }
        // The load and TAC keys, the master keys and the maintenance keys go into no PSAM.
        for name in [
            "DLK_DF04",
            "DLK2_DF04",
            "DTK_DF04",
            "MK_MF",
            "MK_DF04",
            "STK_SSSE",
        ] {
            assert!(!builtin_profiles_hold(t.key(name).unwrap()), "{id}: {name}");
        }
    }
}

#[test]
fn rules_no_profile_lifts() {
    let t = Template::builtin("ssc-2.0").unwrap();
    // A profile that lists a master key and a maintenance key does not get them.
    let extra = |name: &str, id: u8| {
        format!(
            "\n[[key]]\ncard_key = \"{name}\"\n\
             psam_key_id = {{ value = {id}, inferred = \"test\" }}\n\
             usage = {{ value = 0x45, inferred = \"test\" }}\n\
             psam_key_version = {{ value = 1, inferred = \"test\" }}\n"
        )
    };
    let src = format!(
        "{PROVINCE_WIDE}{}{}{}",
        extra("MK_DF04", 0x70),
        extra("STK_SSSE", 0x71),
        extra("NO_SUCH_KEY", 0x72)
    );
    let p = PsamProfile::parse(&src).unwrap();
    let (_, omitted) = p.key_set(&t);
    let why = |name: &str| {
        omitted
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, w)| w.as_str())
            .unwrap_or_else(|| panic!("{name} not omitted"))
    };
    assert_eq!(why("MK_DF04"), "a card master key never goes into a PSAM");
    assert_eq!(
        why("STK_SSSE"),
        "this PSAM profile takes no maintenance keys"
    );
    assert_eq!(why("NO_SUCH_KEY"), "not a key of the card template");
    // A profile that takes maintenance keys gets the STK.
    let takes = src.replacen(
        "maintenance_keys = { value = false",
        "maintenance_keys = { value = true",
        1,
    );
    let p = PsamProfile::parse(&takes).unwrap();
    let (keys, _) = p.key_set(&t);
    assert!(keys.iter().any(|k| k.key.name == "STK_SSSE"));
    assert!(!keys.iter().any(|k| k.key.name == "MK_DF04"));
}

#[test]
fn refusals_name_their_line() {
    let usage = line_of(CITY, "usage = { value = 0x27");
    // A level the profile does not accept (a provincial key in a city profile).
    let src = CITY.replacen("usage = { value = 0x27", "usage = { value = 0x47", 1);
    assert_eq!(
        refusal(&src),
        (
            usage,
            TemplateFault::PsamUsageLevels {
                byte: 0x47,
                levels: 2
            }
        )
    );
    // A type outside the profile's set.
    let src = CITY.replacen("usage = { value = 0x27", "usage = { value = 0x2C", 1);
    assert_eq!(
        refusal(&src),
        (
            usage,
            TemplateFault::PsamUsageType {
                byte: 0x2C,
                kind: 12
            }
        )
    );
    // Type 0 (master) may not be in the set; a province-wide profile has no city level.
    let types = line_of(CITY, "usage_types");
    let src = CITY.replacen("value = [1, 2, 3", "value = [0, 2, 3", 1);
    assert!(
        matches!(refusal(&src), (l, TemplateFault::InvalidValue { field: "usage_types", .. }) if l == types)
    );
    let levels = line_of(PROVINCE_WIDE, "levels");
    let src = PROVINCE_WIDE.replacen(
        "levels = { value = [2, 3]",
        "levels = { value = [1, 2, 3]",
        1,
    );
    assert!(
        matches!(refusal(&src), (l, TemplateFault::InvalidValue { field: "levels", .. }) if l == levels)
    );
    // Two keys with one PSAM key id; an unmarked value; an unknown field.
    let second = line_of(CITY, "psam_key_id = { value = 0x02");
    let src = CITY.replacen(
        "psam_key_id = { value = 0x02",
        "psam_key_id = { value = 0x01",
        1,
    );
    assert_eq!(
        refusal(&src),
        (
            second,
            TemplateFault::PsamKeyIdRepeated {
                psam_key_id: 0x01,
                other: "IRK_SSSE".to_owned()
            }
        )
    );
    let src = CITY.replacen(
        "psam_key_version = { value = 0x01, inferred = \"a PSAM usually holds one version of each key (DOMAIN.md §4)\" }",
        "psam_key_version = { value = 0x01 }",
        1,
    );
    assert_eq!(refusal(&src).1, TemplateFault::Unmarked);
    let src = CITY.replacen(
        "card_key = \"RK_SSSE\"",
        "card_key = \"RK_SSSE\"\nslot = 3",
        1,
    );
    assert_eq!(
        refusal(&src).1,
        TemplateFault::UnknownField("slot".to_owned())
    );
}
