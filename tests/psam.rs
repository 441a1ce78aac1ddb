//! PSAM key sets per PSAM profile (DOMAIN.md §11): each PSAM gets the keys its profile lists,
//! under the profile's PSAM key id and version, at the level of the profile's usage byte. The
//! expected set is read from the profile files as plain TOML, each key unwrapped under the
//! published line key and compared with the independent chain.

use hsm_api::KeyBlockVersion;
use hsm_sim::crypto::kcv;
use hsm_sim::crypto::tr31;
use sscard_kms::card::template::{KeyLevel, KeyRole, KeyRoot};
use sscard_kms::proto::kms::v1 as pb;
use sscard_kms::proto::kms::v1::delivered_key::Form;
use tonic::Code;

use crate::common::chain::{atr, expected, psam_line_kbpk, psam_profile_data, template};
use crate::common::harness::{OFFICER, PSAM_LINE, TestBackend, TestKms};
use crate::rotation::{NEW_ROOT, components};

/// The level a usage byte's top three bits name: 1 city, 2 provincial, 3 national.
fn level_of_usage(usage: u8) -> (KeyLevel, pb::KeyLevel) {
    match usage >> 5 {
        1 => (KeyLevel::City, pb::KeyLevel::City),
        2 => (KeyLevel::Province, pb::KeyLevel::Provincial),
        3 => (KeyLevel::National, pb::KeyLevel::National),
        other => panic!("usage byte {usage:#04x}: {other} levels"),
    }
}

fn register(
    serial: &str,
    region: &str,
    template_id: &str,
    profile: &str,
) -> pb::RegisterPsamsRequest {
    pb::RegisterPsamsRequest {
        serials: vec![serial.to_owned()],
        region: region.to_owned(),
        template_id: template_id.to_owned(),
        psam_profile: profile.to_owned(),
    }
}

fn get(serial: &str) -> pb::GetPsamKeySetRequest {
    pb::GetPsamKeySetRequest {
        serial: serial.to_owned(),
    }
}

async fn psam_key_sets_follow_the_psam_profile_and_go_only_to_their_line<B: TestBackend>() {
    let kms = TestKms::<B>::seeded_on().await;
    let mut line = kms.client(PSAM_LINE);
    let kbpk = psam_line_kbpk();
    // Any valid ATR: the factors below the PSAM's level are never used.
    let atr = atr();

    // (serial, region, template, profile asked for, profile the PSAM gets)
    let psams = [
        ("GZPSAM20001", "440100", "ssc-2.0", "", "city"),
        ("GDPSAM20001", "440000", "ssc-2.0", "", "province-wide"),
        ("GZPSAM30001", "440100", "ssc-3.0", "city", "city"),
        (
            "GDPSAM30001",
            "440000",
            "ssc-3.0",
            "province-wide",
            "province-wide",
        ),
    ];
    for (serial, region, template_id, asked, _) in psams {
        let registered = line
            .psam
            .register_psams(register(serial, region, template_id, asked))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(registered.registered, 1);
    }

    for (serial, region, template_id, _, profile) in psams {
        let template = template(template_id);
        let (lines, maintenance) = psam_profile_data(profile);
        assert!(!maintenance, "no shipped profile takes STK keys");
        let set = line
            .psam
            .get_psam_key_set(get(serial))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(set.serial, serial);
        assert_eq!(set.psam_profile, profile);

        // Every key the profile lists, in its order; the shipped profiles list no key the
        // templates lack and none that may not go into a PSAM.
        let got: Vec<&str> = set.keys.iter().map(|k| k.key_name.as_str()).collect();
        let want: Vec<&str> = lines.iter().map(|l| l.card_key.as_str()).collect();
        assert_eq!(got, want, "{serial}");
        assert!(set.omitted.is_empty(), "{serial}: {:?}", set.omitted);

        let mut levels = Vec::new();
        for (delivered, file) in set.keys.iter().zip(&lines) {
            let spec = template.key(&delivered.key_name).unwrap();
            // Never a card master key, a provincial root or a maintenance key, whatever the name.
            assert!(
                spec.role != KeyRole::Master
                    && spec.role != KeyRole::Maintenance
                    && spec.root == KeyRoot::National,
                "{}",
                spec.name
            );
            // The PSAM's own key id and version, and the usage byte, are the profile's.
            assert_eq!(delivered.psam_usage, u32::from(file.usage), "{}", spec.name);
            assert_eq!(delivered.psam_key_id, u32::from(file.psam_key_id));
            assert_eq!(delivered.psam_key_version, u32::from(file.psam_key_version));
            // The card key's id and version stay the card's.
            assert_eq!(delivered.key_id, u32::from(spec.key_id));
            let (level, pb_level) = level_of_usage(file.usage);
            assert_eq!(delivered.level, pb_level as i32, "{}", spec.name);
            assert_eq!(delivered.root_version, 1);
            let Some(Form::Tr31Block(block)) = &delivered.form else {
                panic!("{}: not a TR-31 block", spec.name);
            };
            let (header, key) = tr31::unwrap(&kbpk, block).unwrap();
            assert_eq!(header.version, KeyBlockVersion::D);
            // City keys of the PSAM's city: [F1, F2]; provincial keys: [F1]; national: the root.
            let city = if region == "440000" { "440100" } else { region };
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
        // A city PSAM holds city keys only; a province-wide one provincial keys and the
        // national internal-authentication key, never a city key.
        if region == "440000" {
            assert!(levels.contains(&KeyLevel::Province) && levels.contains(&KeyLevel::National));
            assert!(!levels.contains(&KeyLevel::City));
        } else {
            assert!(levels.iter().all(|l| *l == KeyLevel::City), "{serial}");
        }
    }

    // The national-level key goes into PSAMs only with the Ministry's permission, recorded at
    // import: the dev roots had it; a new IRK root imported without it is not released.
    let mut officer = kms.client(OFFICER);
    let listed = officer
        .admin
        .list_keys(pb::ListKeysRequest {
            template_id: "ssc-2.0".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .keys;
    let national = |name: &str| {
        listed
            .iter()
            .find(|k| k.key_name == name && k.level == pb::KeyLevel::National as i32)
            .unwrap()
            .ministry_psam_permission
    };
    assert!(national("IRK_SSSE"));
    let record = officer
        .admin
        .import_root_key(pb::ImportRootKeyRequest {
            template_id: "ssc-2.0".to_owned(),
            key_name: "IRK_SSSE".to_owned(),
            level: pb::KeyLevel::National as i32,
            components: components(NEW_ROOT),
            ministry_psam_permission: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (record.version, record.ministry_psam_permission),
        (2, false)
    );
    let set = line
        .psam
        .get_psam_key_set(get("GDPSAM20001"))
        .await
        .unwrap()
        .into_inner();
    assert!(!set.keys.iter().any(|k| k.key_name == "IRK_SSSE"));
    let omitted: Vec<(&str, &str)> = set
        .omitted
        .iter()
        .map(|o| (o.key_name.as_str(), o.reason.as_str()))
        .collect();
    assert_eq!(
        omitted,
        [(
            "IRK_SSSE",
            "the national root was imported without the Ministry's permission for PSAM use"
        )]
    );
    // A city PSAM's city-level IRK is not a national key: still released.
    let set = line
        .psam
        .get_psam_key_set(get("GZPSAM20001"))
        .await
        .unwrap()
        .into_inner();
    assert!(set.keys.iter().any(|k| k.key_name == "IRK_SSSE"));

    // A serial is registered once.
    kms.refused(
        Code::AlreadyExists,
        "PSAM serial already exists",
        line.psam
            .register_psams(register("GZPSAM20001", "440100", "ssc-2.0", "")),
    )
    .await;
    // The profile must serve the PSAMs' kind of region.
    kms.refused(
        Code::InvalidArgument,
        "the PSAM profile serves another kind of region",
        line.psam
            .register_psams(register("GDPSAM20002", "440000", "ssc-2.0", "city")),
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

crate::on_every_backend!(psam_key_sets_follow_the_psam_profile_and_go_only_to_their_line,);
