//! No clear key ever leaves the service: not in a response (success or refusal), not in the
//! audit trail, not in a log line, and not in the database file.

use hsm_api::Hsm as _;
use sscard_kms::card::template::{KeyLevel, KeyRoot};
use sscard_kms::proto::kms::v1 as pb;
use sscard_kms::proto::kms::v1::delivered_key::Form;
use tonic::Code;

use crate::common::chain::{atr, expected, published, published_secrets, template};
use crate::common::harness::{
    OFFICER, PSAM_LINE, STATION, TestKms, card_identity, logs, sm_request, tr31_request,
};

/// Every clear key of the demo cards' hierarchies: card keys of both demo cards, and every
/// national, provincial and city (Guangzhou) key, for both templates.
fn clear_keys() -> Vec<(String, String)> {
    let atr = atr();
    let mut out = Vec::new();
    for id in ["ssc-2.0", "ssc-3.0"] {
        for spec in template(id).keys() {
            for level in [
                KeyLevel::National,
                KeyLevel::Province,
                KeyLevel::City,
                KeyLevel::Card,
            ] {
                if spec.root == KeyRoot::Provincial && level == KeyLevel::National {
                    continue;
                }
                let key = expected(spec, level, "440100", &atr);
                out.push((format!("{id} {} {level}", spec.name), key.hex));
            }
        }
    }
    for (i, secret) in published_secrets().into_iter().enumerate() {
        out.push((format!("published test key or component #{i}"), secret));
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out.dedup_by(|a, b| a.1 == b.1);
    out
}

/// A response as text: its `Debug`, and the hex of every APDU in it.
fn response_text(debug: String, keys: &[pb::DeliveredKey]) -> String {
    let mut text = debug;
    for k in keys {
        if let Some(Form::WriteKeyApdu(apdu)) = &k.form {
            text.push('\n');
            text.push_str(&hex::encode_upper(apdu));
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_clear_key_in_responses_audit_logs_or_the_database() {
    let mut kms = TestKms::seeded().await;
    let keys = published();
    let atr = atr();
    let mut station = kms.client(STATION);
    let mut line = kms.client(PSAM_LINE);
    let mut officer = kms.client(OFFICER);
    let mut seen = Vec::new();

    for demo in &keys.card {
        let card = card_identity(demo, &atr);
        let t = template(&demo.template);
        let r = station
            .card
            .inject_card_keys(tr31_request(card.clone(), &demo.template))
            .await
            .unwrap()
            .into_inner();
        seen.push(response_text(format!("{r:?}"), &r.keys));
        let challenge = vec![0xC3; if demo.template == "ssc-3.0" { 16 } else { 8 }];
        let every_key: Vec<(&str, Vec<u8>)> = t
            .keys()
            .iter()
            .filter(|k| k.name != "MK_MF")
            .map(|k| (k.name.as_str(), challenge.clone()))
            .collect();
        let r = station
            .card
            .inject_card_keys(sm_request(card.clone(), &demo.template, &every_key))
            .await
            .unwrap()
            .into_inner();
        seen.push(response_text(format!("{r:?}"), &r.keys));
        let r = station
            .card
            .initialise_blank_card(pb::InitialiseBlankCardRequest {
                card: Some(card.clone()),
                template_id: demo.template.clone(),
                challenge,
            })
            .await
            .unwrap()
            .into_inner();
        seen.push(response_text(
            format!("{r:?}"),
            std::slice::from_ref(r.master_key.as_ref().unwrap()),
        ));
    }
    for (serial, region, template_id) in [
        ("LEAKPSAM1", "440100", "ssc-2.0"),
        ("LEAKPSAM2", "440000", "ssc-3.0"),
    ] {
        line.psam
            .register_psams(pb::RegisterPsamsRequest {
                serials: vec![serial.to_owned()],
                region: region.to_owned(),
                template_id: template_id.to_owned(),
                psam_profile: String::new(),
            })
            .await
            .unwrap();
        let r = line
            .psam
            .get_psam_key_set(pb::GetPsamKeySetRequest {
                serial: serial.to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        seen.push(format!("{r:?}"));
    }
    for id in ["ssc-2.0", "ssc-3.0"] {
        let r = officer
            .admin
            .list_keys(pb::ListKeysRequest {
                template_id: id.to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!r.keys.is_empty());
        seen.push(format!("{r:?}"));
    }
    let r = officer
        .admin
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(r.hsm_dangerous_test_lmk && !r.hsm_is_secure);
    seen.push(format!("{r:?}"));

    // Refusals, including the HSM sealed mid-service (logged as a skipped seal).
    let mut shenzhen = kms.client("sscard://station/440300/SZ-01");
    let gz = card_identity(&keys.card[0], &atr);
    let s = kms
        .refused(
            Code::PermissionDenied,
            "outside the caller's region",
            shenzhen
                .card
                .inject_card_keys(tr31_request(gz.clone(), "ssc-2.0")),
        )
        .await;
    seen.push(format!("{s:?}"));
    kms.hsm().seal().await.unwrap();
    let s = kms
        .refused(
            Code::FailedPrecondition,
            "the HSM is sealed",
            station.card.inject_card_keys(tr31_request(gz, "ssc-2.0")),
        )
        .await;
    seen.push(format!("{s:?}"));

    let trail = serde_json::to_string(&kms.audit_trail()).unwrap();
    kms.close().await;
    let db = kms.store_bytes();
    let db_text = String::from_utf8_lossy(&db);
    let logs = logs();
    assert!(
        logs.contains("audit seal skipped"),
        "the service's own log lines were captured"
    );
    // One structured line per request, with the outcome; personal data only masked.
    assert!(
        logs.lines().any(|l| l.contains("sscard_kms::request")
            && l.contains("operation=\"inject-card-keys\"")
            && l.contains("outcome=\"ok\"")
            && l.contains("micros=")),
        "a request line for each injection"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("sscard_kms::request") && l.contains("outcome=\"refused\"")),
        "a request line for each refusal"
    );
    for demo in &sscard_kms::dev::test_keys().unwrap().card {
        for (what, value) in [
            ("an SSN", &demo.social_security_number),
            ("a card number", &demo.card_number),
            ("a card identifier", &demo.card_identifier),
        ] {
            assert!(
                !logs.contains(value.as_str()),
                "{what} in clear in the logs"
            );
        }
    }

    let secrets = clear_keys();
    // The published roots are one key per algorithm for every key type, so the two hierarchies
    // hold 7 distinct keys each (national, provincial, city, card of the national chain;
    // provincial root, city, card of the provincial one), beside the published keys.
    assert!(secrets.len() >= 20, "{} distinct clear keys", secrets.len());
    let upper = |text: &str| text.to_ascii_uppercase();
    let seen: Vec<String> = seen.iter().map(|t| upper(t)).collect();
    let (trail, logs, db_text) = (upper(&trail), upper(&logs), upper(&db_text));
    // Every key here is 16 bytes: one pass over the file finds any of them in binary.
    let binary: std::collections::HashMap<[u8; 16], &str> = secrets
        .iter()
        .map(|(what, hex)| {
            let bytes: [u8; 16] = hex::decode(hex).unwrap().try_into().unwrap();
            (bytes, what.as_str())
        })
        .collect();
    for window in db.windows(16) {
        if let Some(what) = binary.get(window) {
            panic!("{what} in the database file");
        }
    }
    for (what, hex) in &secrets {
        for (i, text) in seen.iter().enumerate() {
            assert!(!text.contains(hex.as_str()), "{what} in response #{i}");
        }
        assert!(!trail.contains(hex.as_str()), "{what} in the audit trail");
        assert!(!logs.contains(hex.as_str()), "{what} in the logs");
        // The store holds LMK-wrapped tokens only.
        assert!(
            !db_text.contains(hex.as_str()),
            "{what} (hex) in the database file"
        );
    }
}

/// The generated messages that carry a custodian's secret print without it.
#[test]
fn secret_carrying_messages_have_a_redacting_debug() {
    use sscard_kms::proto::kms::v1 as pb;
    let secret = "0123456789ABCDEFFEDCBA9876543210";
    let component = pb::Component {
        hex: secret.to_owned(),
        kcv_hex: "08D7B4".to_owned(),
    };
    let unseal = pb::UnsealHsmRequest {
        share: format!("lmk1-01-{secret}"),
    };
    let import = pb::ImportRootKeyRequest {
        template_id: "ssc-2.0".to_owned(),
        key_name: "STK_SSSE".to_owned(),
        level: pb::KeyLevel::National as i32,
        components: vec![component.clone()],
        ministry_psam_permission: false,
    };
    let shown = format!("{component:?} {unseal:?} {import:?} {import:#?}");
    assert!(shown.contains("08D7B4"), "{shown}");
    assert!(!shown.contains(secret), "{shown}");

    use hsm_sim::remote::proto as hp;
    let hsm_messages = format!(
        "{:?} {:?} {:?}",
        hp::Component {
            hex: secret.to_owned(),
            expected_kcv: None
        },
        hp::UnsealRequest {
            share: format!("lmk1-01-{secret}")
        },
        hp::IssuedShare {
            share: format!("lmk1-01-{secret}"),
            check_value: "C280F501".to_owned()
        },
    );
    assert!(!hsm_messages.contains(secret), "{hsm_messages}");
    assert!(hsm_messages.contains("C280F501"));
}

/// The generated messages that carry a holder's personal data print it masked or not at all,
/// however deeply they are nested (a registration, an injection, a personal-data answer, a
/// chunk of an applicant file).
#[test]
fn personal_data_messages_have_a_redacting_debug() {
    use sscard_kms::proto::kms::v1 as pb;
    let (ssn, number, name) = ("440103199001011236", "GZ0000012", "张三");
    let card = pb::CardIdentity {
        card_identifier: "440100D1560000050050640776EF3192".to_owned(),
        card_number: number.to_owned(),
        social_security_number: ssn.to_owned(),
        atr: vec![0x3B; 12],
    };
    let register = pb::RegisterCardRequest {
        card: Some(card.clone()),
        ..Default::default()
    };
    let personal = pb::CardPersonalData {
        card_identifier: card.card_identifier.clone(),
        social_security_number: ssn.to_owned(),
        card_number: number.to_owned(),
        name: name.to_owned(),
    };
    let chunk = pb::ApplicantFileChunk {
        data: format!("{ssn},{number},{name}\n").into_bytes(),
        batch_id: "b1".to_owned(),
        encoding: 0,
    };
    let shown = format!("{card:?} {register:?} {register:#?} {personal:?} {chunk:?}");
    for clear in [ssn, number, name, "199001011236"] {
        assert!(!shown.contains(clear), "{clear} in {shown}");
    }
    assert!(
        shown.contains("440100D1560000050050640776EF3192"),
        "{shown}"
    );
    assert!(shown.contains("440103********1236"), "{shown}");
}
