//! PSAM key sets for the demo PSAM line (DOMAIN.md §4): each key at the level its usage byte
//! states, unwrapped under the published line key and compared with the independent chain.

use hsm_api::KeyBlockVersion;
use hsm_sim::crypto::kcv;
use hsm_sim::crypto::tr31;
use sscard_kms::card::template::KeyLevel;
use sscard_kms::proto::kms::v1 as pb;
use sscard_kms::proto::kms::v1::delivered_key::Form;
use tonic::Code;

use crate::common::chain::{atr, expected, psam_line_kbpk, template};
use crate::common::harness::{PSAM_LINE, TestBackend, TestKms};

/// The level a usage byte's top three bits name: 1 city, 2 provincial, 3 national.
fn level_of_usage(usage: u8) -> (KeyLevel, pb::KeyLevel) {
    match usage >> 5 {
        1 => (KeyLevel::City, pb::KeyLevel::City),
        2 => (KeyLevel::Province, pb::KeyLevel::Provincial),
        3 => (KeyLevel::National, pb::KeyLevel::National),
        other => panic!("usage byte {usage:#04x}: {other} levels"),
    }
}

fn register(serial: &str, region: &str, template_id: &str) -> pb::RegisterPsamsRequest {
    pb::RegisterPsamsRequest {
        serials: vec![serial.to_owned()],
        region: region.to_owned(),
        template_id: template_id.to_owned(),
    }
}

fn get(serial: &str) -> pb::GetPsamKeySetRequest {
    pb::GetPsamKeySetRequest {
        serial: serial.to_owned(),
    }
}

async fn psam_key_sets_hold_each_key_at_its_usage_level_and_only_for_their_line<B: TestBackend>() {
    let kms = TestKms::<B>::seeded_on().await;
    let mut line = kms.client(PSAM_LINE);
    let kbpk = psam_line_kbpk();
    // Any valid ATR: the factors below the PSAM's level are never used.
    let atr = atr();

    let psams = [
        ("GZPSAM20001", "440100", "ssc-2.0"),
        ("GDPSAM20001", "440000", "ssc-2.0"),
        ("GZPSAM30001", "440100", "ssc-3.0"),
        ("GDPSAM30001", "440000", "ssc-3.0"),
    ];
    for (serial, region, template_id) in psams {
        let registered = line
            .psam
            .register_psams(register(serial, region, template_id))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(registered.registered, 1);
    }

    for (serial, region, template_id) in psams {
        let template = template(template_id);
        let city_psam = region != "440000";
        let set = line
            .psam
            .get_psam_key_set(get(serial))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(set.serial, serial);

        // What the template allows in PSAMs; a provincial PSAM cannot take city keys.
        let allowed: Vec<_> = template
            .psam_keys()
            .filter(|k| !k.key.is_issuer_only())
            .collect();
        let want_keys: Vec<&str> = allowed
            .iter()
            .filter(|k| city_psam || k.usage.byte() >> 5 != 1)
            .map(|k| k.key.name.as_str())
            .collect();
        let want_omitted: Vec<&str> = allowed
            .iter()
            .filter(|k| !city_psam && k.usage.byte() >> 5 == 1)
            .map(|k| k.key.name.as_str())
            .collect();
        let got_keys: Vec<&str> = set.keys.iter().map(|k| k.key_name.as_str()).collect();
        let got_omitted: Vec<&str> = set.omitted.iter().map(|k| k.key_name.as_str()).collect();
        assert_eq!(got_keys, want_keys, "{serial}");
        assert_eq!(got_omitted, want_omitted, "{serial}");
        if city_psam {
            assert!(set.omitted.is_empty());
        } else {
            assert!(!set.omitted.is_empty(), "the template has city-level keys");
            for o in &set.omitted {
                assert_eq!(o.reason, "a city-level key needs a city PSAM", "{o:?}");
            }
        }

        // No issuer-only key (MK*, STK*, provincial roots), nor any key not allowed in PSAMs,
        // is ever sent or even named.
        for name in got_keys.iter().chain(&got_omitted) {
            let spec = template.key(name).unwrap();
            assert!(
                !name.starts_with("MK") && !name.starts_with("STK"),
                "{name}"
            );
            assert!(spec.psam_allowed && !spec.is_issuer_only(), "{name}");
        }

        let mut levels = Vec::new();
        for delivered in &set.keys {
            let spec = template.key(&delivered.key_name).unwrap();
            let usage = u8::try_from(delivered.psam_usage).unwrap();
            assert_eq!(Some(usage), spec.psam_usage.map(|u| u.byte()));
            let (level, pb_level) = level_of_usage(usage);
            assert_eq!(delivered.level, pb_level as i32, "{}", spec.name);
            assert_eq!(delivered.root_version, 1);
            let Some(Form::Tr31Block(block)) = &delivered.form else {
                panic!("{}: not a TR-31 block", spec.name);
            };
            let (header, key) = tr31::unwrap(&kbpk, block).unwrap();
            assert_eq!(header.version, KeyBlockVersion::D);
            // City keys of the PSAM's city: [F1, F2]; provincial keys: [F1]; national: the root.
            let city = if city_psam { region } else { "440100" };
            let want = expected(spec, level, city, &atr);
            assert!(
                key == want.key,
                "{serial} {}: not the {level} key",
                spec.name
            );
            let kcv = delivered.kcv.as_ref().unwrap();
            assert_eq!(kcv.value, kcv::compute_default(&want.key).unwrap().value());
            levels.push(level);
        }
        if city_psam {
            for level in [KeyLevel::City, KeyLevel::Province, KeyLevel::National] {
                assert!(levels.contains(&level), "{serial}: no {level} key");
            }
        } else {
            assert!(!levels.contains(&KeyLevel::City));
        }
    }

    // A serial is registered once.
    kms.refused(
        Code::AlreadyExists,
        "PSAM serial already exists",
        line.psam
            .register_psams(register("GZPSAM20001", "440100", "ssc-2.0")),
    )
    .await;
    // Another line's PSAM: refused even to a line of the same region.
    let mut other = kms.client("sscard://psam-line/440000/PSAM-LINE-02");
    kms.refused(
        Code::PermissionDenied,
        "the PSAM was registered by another line",
        other.psam.get_psam_key_set(get("GZPSAM20001")),
    )
    .await;
    // A serial nobody registered.
    kms.refused(
        Code::NotFound,
        "PSAM not found",
        line.psam.get_psam_key_set(get("NOSUCHPSAM")),
    )
    .await;
}

crate::on_every_backend!(psam_key_sets_hold_each_key_at_its_usage_level_and_only_for_their_line,);
