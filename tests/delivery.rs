//! Card key delivery to the demo Guangzhou station, in both forms (DOMAIN.md §5), checked
//! against keys computed independently from the published test keys.

use hsm_api::Algorithm;
use hsm_api::KeyBlockVersion;
use hsm_sim::crypto::kcv;
use hsm_sim::crypto::tr31::{self, KeyBlockAlgorithm};
use sscard_kms::card::profile::BUILTIN_COS;
use sscard_kms::card::template::{BUILTIN, KeyLevel, KeySpec};
use sscard_kms::proto::kms::v1 as pb;
use sscard_kms::proto::kms::v1::delivered_key::Form;
use tonic::Code;

use crate::common::chain::{
    Expected, assert_t514_is_domain_md, atr, cos_data, expected, key_lines, published,
    station_kbpk, template, template_text, vendor_transport, write_key_apdu, write_key_bytes,
};
use crate::common::harness::{
    STATION, TestBackend, TestKms, card_identity, sm_request, tr31_request,
};

/// The card key DOMAIN.md §2 works out for the national test roots and the card factor
/// `86843202AD932A48` (the last 8 bytes of [`crate::common::chain::ATR_HEX`]).
const WORKED_CARD_KEY_TDES: &str = "863CB6B83CB1EFABE9C27E9737E47BD6";
const WORKED_CARD_KEY_SM4: &str = "86266A1936F6C58BCA347676C6E93436";

fn pb_algorithm(alg: Algorithm) -> i32 {
    (match alg {
        Algorithm::Tdes2 => pb::KeyAlgorithm::Tdes2,
        Algorithm::Sm4 => pb::KeyAlgorithm::Sm4,
        Algorithm::Des => pb::KeyAlgorithm::Des,
        other => panic!("not a card key algorithm: {other:?}"),
    }) as i32
}

/// The fields every delivered card key carries besides its form.
fn assert_card_key_fields(delivered: &pb::DeliveredKey, spec: &KeySpec) {
    assert_eq!(delivered.directory, spec.directory);
    assert_eq!(delivered.key_id, u32::from(spec.key_id));
    assert_eq!(delivered.key_version, u32::from(spec.key_version));
    assert_eq!(delivered.algorithm, pb_algorithm(spec.hsm_algorithm()));
    assert_eq!(delivered.level, pb::KeyLevel::Card as i32);
    assert_eq!(delivered.root_version, 1);
    assert_eq!(delivered.psam_usage, 0);
}

/// Whether `spec` is a master key of `template` (it protects a slot, or is written under the
/// vendor transport key): those leave only inside secure-messaging commands.
fn is_master(template: &sscard_kms::card::template::Template, spec: &KeySpec) -> bool {
    template.is_master_key(spec)
}

/// The KCV in the response is the legacy KCV of the expected key (3 bytes for 3DES, 4 for SM4).
fn assert_kcv(delivered: &pb::DeliveredKey, key: &hsm_sim::crypto::SecretKey) {
    let kcv = delivered.kcv.as_ref().expect("a KCV");
    assert_eq!(kcv.method, pb::KcvMethod::EncryptZeros as i32);
    let want = kcv::compute_default(key).unwrap();
    assert_eq!(kcv.value, want.value(), "KCV of {}", delivered.key_name);
}

async fn tr31_blocks_unwrap_to_the_independent_chain_for_every_demo_card<B: TestBackend>() {
    let kms = TestKms::<B>::seeded_on().await;
    let mut station = kms.client(STATION);
    let kbpk = station_kbpk();
    let atr = atr();
    let keys = published();
    let worked = [
        ("ssc-2.0", WORKED_CARD_KEY_TDES, Algorithm::Tdes2),
        ("ssc-3.0", WORKED_CARD_KEY_SM4, Algorithm::Sm4),
        // The same 2.0 card on another chip: the same keys.
        ("ssc-2.0-fmcos", WORKED_CARD_KEY_TDES, Algorithm::Tdes2),
    ];
    assert_eq!(keys.card.len(), worked.len());
    for (demo, (template_id, worked_key, alg)) in keys.card.iter().zip(worked) {
        assert_eq!(demo.template, template_id);
        let template = template(template_id);
        assert_eq!(template.algorithm().algorithm(), alg);
        let response = station
            .card
            .inject_card_keys(tr31_request(card_identity(demo, &atr), template_id))
            .await
            .unwrap()
            .into_inner();

        // Every key of the template but its master keys, each after its protector.
        let names: Vec<&str> = response.keys.iter().map(|k| k.key_name.as_str()).collect();
        let order: Vec<&str> = template
            .write_order()
            .filter(|k| !is_master(&template, k))
            .map(|k| k.name.as_str())
            .collect();
        assert_eq!(names, order);
        let masters = template
            .keys()
            .iter()
            .filter(|k| is_master(&template, k))
            .count();
        assert!(masters > 0);
        assert_eq!(names.len() + masters, template.keys().len());

        let mut national = 0;
        let mut provincial = 0;
        for delivered in &response.keys {
            let spec = template.key(&delivered.key_name).unwrap();
            assert_card_key_fields(delivered, spec);
            let Some(Form::Tr31Block(block)) = &delivered.form else {
                panic!("{}: not a TR-31 block: {:?}", spec.name, delivered.form);
            };
            // AES transport key: version D; the block names the card key's algorithm.
            let (header, key) = tr31::unwrap(&kbpk, block).unwrap();
            assert_eq!(header.version, KeyBlockVersion::D, "{}", spec.name);
            assert_eq!(header.algorithm, KeyBlockAlgorithm::of(alg));
            // National-root keys: [F1 440000, F2 440100, F3 ATR] from the national test root;
            // provincial-root keys: [F2, F3] from the provincial test root.
            let want = expected(spec, KeyLevel::Card, "440100", &atr);
            assert!(key == want.key, "{}: not the expected card key", spec.name);
            assert_kcv(delivered, &want.key);
            match spec.root {
                sscard_kms::card::template::KeyRoot::National => {
                    // STK_SSSE's test root is DOMAIN.md §2's: its worked card key. Every other
                    // key type has its own root, so a key delivered under another name is caught.
                    if spec.name == "STK_SSSE" {
                        assert_eq!(want.hex, worked_key, "{}", spec.name);
                    } else {
                        assert_ne!(want.hex, worked_key, "{}", spec.name);
                    }
                    national += 1;
                }
                sscard_kms::card::template::KeyRoot::Provincial => provincial += 1,
                sscard_kms::card::template::KeyRoot::City(_) => {
                    panic!("{}: a shipped template has no city-owned key", spec.name)
                }
            }
        }
        // The provincial roots of these templates are the master keys': none leaves as TR-31.
        assert!(national > 0 && provincial == 0, "{national} {provincial}");

        // A master key asked for by name as a TR-31 block: the HSM refuses to export it.
        let mut asked = tr31_request(card_identity(demo, &atr), template_id);
        asked.key_names = vec!["MK_SSSE".to_owned()];
        kms.refused(
            Code::FailedPrecondition,
            "not exportable",
            station.card.inject_card_keys(asked),
        )
        .await;
    }
}

async fn every_write_key_of_every_shipped_template_matches_the_independent_apdu_byte_for_byte<
    B: TestBackend,
>() {
    let kms = TestKms::<B>::seeded_on().await;
    let mut station = kms.client(STATION);
    let atr = atr();
    let keys = published();
    // The shipped T514 profile says what DOMAIN.md §10 says.
    assert_t514_is_domain_md(&cos_data("t514"));
    let mut profiles = std::collections::BTreeSet::new();
    let mut templates = std::collections::BTreeSet::new();
    for demo in &keys.card {
        let template = template(&demo.template);
        let text = template_text(&demo.template);
        let (cos_id, lines) = key_lines(&[&text]);
        profiles.insert(cos_id.clone());
        templates.insert(demo.template.clone());
        let alg = template.algorithm().algorithm();
        // GET CHALLENGE gives 8 bytes on a 3DES card, 16 on an SM4 card.
        let challenge_len = if alg == Algorithm::Sm4 { 16 } else { 8 };
        let challenge = |seed: usize| -> Vec<u8> {
            (0..challenge_len)
                .map(|i| u8::try_from((seed * 31 + i) % 256).unwrap())
                .collect()
        };
        let card = card_identity(demo, &atr);
        // The fields and the command the files as written give each key.
        let check = |delivered: &pb::DeliveredKey, protect: &Expected, challenge: &[u8]| {
            let name = delivered.key_name.as_str();
            let spec = template.key(name).unwrap();
            let bytes = write_key_bytes(&[&text], name);
            assert_eq!(delivered.key_id, u32::from(bytes.key_id), "{name}");
            assert_eq!(
                delivered.key_version,
                u32::from(bytes.key_version),
                "{name}"
            );
            assert_card_key_fields(delivered, spec);
            let want = expected(spec, KeyLevel::Card, "440100", &atr);
            assert_kcv(delivered, &want.key);
            let apdu = write_key_apdu(protect, &[&text], name, &want, challenge);
            // P1/P2/Lc and the header, visible before the encrypted field.
            assert_eq!(&apdu[..4], bytes.command, "{name}");
            assert_eq!(apdu[4], bytes.lc, "{name}");
            // The station gets the command only, never a TR-31 block in this mode.
            assert_eq!(
                delivered.form,
                Some(Form::WriteKeyApdu(apdu)),
                "{} ({cos_id}): {name}",
                demo.template
            );
        };

        // Blank-card initialisation: the key under the vendor transport key (MK_MF).
        let first = lines
            .iter()
            .find(|k| k.protected_by == "vendor-transport")
            .expect("a key written to a blank card");
        let c0 = challenge(0);
        let initialised = station
            .card
            .initialise_blank_card(pb::InitialiseBlankCardRequest {
                card: Some(card.clone()),
                template_id: demo.template.clone(),
                challenge: c0.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .master_key
            .expect("the master key");
        assert_eq!(initialised.key_name, first.name);
        check(&initialised, &vendor_transport(alg), &c0);

        // Every other key of the template, each with its own challenge, in one request: each
        // under its protector (a directory's MK, or the parent's MK for a directory MK).
        let asked: Vec<(&str, Vec<u8>)> = lines
            .iter()
            .filter(|k| k.protected_by != "vendor-transport")
            .enumerate()
            .map(|(i, k)| (k.name.as_str(), challenge(i + 1)))
            .collect();
        assert_eq!(asked.len() + 1, template.keys().len());
        let response = station
            .card
            .inject_card_keys(sm_request(card.clone(), &demo.template, &asked))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.keys.len(), asked.len());
        for (delivered, (name, challenge)) in response.keys.iter().zip(&asked) {
            assert_eq!(delivered.key_name, *name);
            let line = lines.iter().find(|k| k.name == *name).unwrap();
            let protect = expected(
                template.key(&line.protected_by).unwrap(),
                KeyLevel::Card,
                "440100",
                &atr,
            );
            check(delivered, &protect, challenge);
        }

        // A challenge of the wrong size for the card's algorithm is the caller's error.
        let wrong = vec![0u8; 24 - challenge_len];
        kms.refused(
            Code::InvalidArgument,
            "challenge",
            station.card.inject_card_keys(sm_request(
                card.clone(),
                &demo.template,
                &[("STK_SSSE", wrong)],
            )),
        )
        .await;
    }
    // Every shipped template, under every shipped profile.
    let builtin: std::collections::BTreeSet<String> =
        BUILTIN.iter().map(|(id, _)| (*id).to_owned()).collect();
    assert_eq!(templates, builtin);
    let cos: std::collections::BTreeSet<String> =
        BUILTIN_COS.iter().map(|(id, _)| (*id).to_owned()).collect();
    assert_eq!(profiles, cos);
}

crate::on_every_backend!(
    tr31_blocks_unwrap_to_the_independent_chain_for_every_demo_card,
    every_write_key_of_every_shipped_template_matches_the_independent_apdu_byte_for_byte,
);
