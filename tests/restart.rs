//! A restart on the same data directory: cards, blacklist, released ATRs and root versions,
//! and the audit chain all carry over; the published keys are not seeded again.

use sscard_kms::proto::kms::v1 as pb;
use tonic::Code;

use crate::common::chain::{atr, published};
use crate::common::harness::{
    REGISTRAR, STATION, TestKms, card_identity, local_hsm, seeding_time, tr31_request,
};

/// `(key name, KCV, root version)` of every delivered key.
fn summary(response: &pb::InjectCardKeysResponse) -> Vec<(String, Vec<u8>, u32)> {
    response
        .keys
        .iter()
        .map(|k| {
            (
                k.key_name.clone(),
                k.kcv.as_ref().unwrap().value.clone(),
                k.root_version,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_cards_blacklist_keys_and_the_audit_chain() {
    let mut kms = TestKms::seeded().await;
    eprintln!(
        "seeding the published test keys (once per test binary) took {:?}",
        seeding_time()
    );
    let keys = published();
    let (released, lost) = (&keys.card[0], &keys.card[1]);
    let atr = atr();

    let mut station = kms.client(STATION);
    let mut registrar = kms.client(REGISTRAR);
    let first = station
        .card
        .inject_card_keys(tr31_request(
            card_identity(released, &atr),
            &released.template,
        ))
        .await
        .unwrap()
        .into_inner();
    registrar
        .registry
        .blacklist_card(pb::BlacklistCardRequest {
            card_identifier: lost.card_identifier.clone(),
            reason: "reported lost".to_owned(),
        })
        .await
        .unwrap();
    let lost_request = || tr31_request(card_identity(lost, &atr), &lost.template);
    kms.refused(
        Code::FailedPrecondition,
        "the card is blacklisted",
        station.card.inject_card_keys(lost_request()),
    )
    .await;
    let trail_before = kms.audit_trail();

    // Stop, drop everything, reopen the same directory on a new HSM instance (same test LMK).
    kms.close().await;
    kms.reopen(local_hsm()).await;
    assert!(
        !sscard_kms::dev::dangerous_seed_test_keys(kms.kms())
            .await
            .unwrap(),
        "a seeded store is not seeded again"
    );

    let mut station = kms.client(STATION);
    let mut registrar = kms.client(REGISTRAR);
    kms.refused(
        Code::FailedPrecondition,
        "the card is blacklisted",
        station.card.inject_card_keys(lost_request()),
    )
    .await;
    let record = registrar
        .registry
        .get_card(pb::CardRef {
            card_identifier: lost.card_identifier.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.status, pb::CardStatus::Blacklisted as i32);

    let again = station
        .card
        .inject_card_keys(tr31_request(
            card_identity(released, &atr),
            &released.template,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        summary(&again),
        summary(&first),
        "the same keys, KCVs, versions"
    );
    // The released card's ATR survived too: another chip is still refused.
    let mut other_chip = card_identity(released, &atr);
    *other_chip.atr.last_mut().unwrap() ^= 0x80;
    kms.refused(
        Code::FailedPrecondition,
        "the ATR differs from the one this card's keys were released for",
        station
            .card
            .inject_card_keys(tr31_request(other_chip, &released.template)),
    )
    .await;

    // The chain continued where it stopped.
    let trail_after = kms.audit_trail();
    assert!(trail_after.len() > trail_before.len());
    assert_eq!(trail_after[..trail_before.len()], trail_before[..]);
    let first_new = &trail_after[trail_before.len()];
    assert_eq!(first_new.seq, trail_before.last().unwrap().seq + 1);
    assert_eq!(first_new.prev, trail_before.last().unwrap().hash);

    kms.close().await;
    let report = sscard_kms::ceremony::audit::verify_at(kms.location(), None, None).unwrap();
    assert_eq!(report.broken, None, "{}", report.render());
    assert_eq!(report.records, trail_after.len());
    assert!(report.seals > 0);
}

/// Shenzhen's extension of ssc-2.0 (N9): a key of its own in DF06.
pub(crate) const SHENZHEN: &str = r#"id = "ssc-2.0-440300"
version = 1
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
length = 16
error_counter = 0x33
protected_by = "MK_SSSE"
root = "provincial"
"#;

/// A key in the slot of Shenzhen's MK_DF06, under another name.
const DF06_KEY: &str = r#"
[[key]]
name = "MK_DF06_BASE"
directory = "DF06"
role = "master"
length = 16
error_counter = 0x33
protected_by = "MK_SSSE"
root = "provincial"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_revision_that_breaks_a_stored_extension_is_refused_when_it_is_loaded() {
    let mut kms = TestKms::seeded().await;
    let mut officer = kms.client(crate::common::harness::OFFICER);
    let load = |toml: String| pb::LoadTemplateRequest { toml };
    officer
        .admin
        .load_template(load(SHENZHEN.to_owned()))
        .await
        .unwrap();
    let base = sscard_kms::card::template::SSC_2_0;
    assert_eq!(base.matches("\nversion = 2\n").count(), 1);
    // Revision 2 of the base takes the slot the extension uses: refused now.
    let clashing = base.replace("\nversion = 2\n", "\nversion = 3\n") + DF06_KEY;
    let refused = kms
        .refused(
            Code::FailedPrecondition,
            "a loaded city extension does not extend this revision",
            officer.admin.load_template(load(clashing)),
        )
        .await;
    assert_eq!(
        crate::common::harness::reason(&refused),
        "EXTENSION_OF_OTHER_REVISION"
    );
    assert_eq!(
        crate::common::readme::tested("EXTENSION_OF_OTHER_REVISION"),
        "mTLS (restart)"
    );
    // A revision that fits is loaded.
    let fitting = base.replace("\nversion = 2\n", "\nversion = 3\n");
    let summary = officer
        .admin
        .load_template(load(fitting))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.version, 3);
    // And the next start opens the store (it would not, had the clashing revision been kept).
    kms.close().await;
    kms.reopen(local_hsm()).await;
    let mut officer = kms.client(crate::common::harness::OFFICER);
    let status = officer
        .admin
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        status.templates.contains(&"ssc-2.0-440300".to_owned()),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_left_by_a_crash_is_verified_through_a_repaired_copy() {
    if crate::common::harness::redb_only("a crashed redb file through a repaired copy") {
        return;
    }
    let kms = TestKms::seeded().await;
    let mut station = kms.client(STATION);
    let demo = &published().card[0];
    station
        .card
        .inject_card_keys(tr31_request(card_identity(demo, &atr()), &demo.template))
        .await
        .unwrap();
    // The file as a crash leaves it: copied while the service holds it open.
    let crashed = tempfile::tempdir().unwrap();
    let file = crashed.path().join(sscard_kms::state::store::DB_FILE);
    std::fs::copy(kms.dir().join(sscard_kms::state::store::DB_FILE), &file).unwrap();
    let before = std::fs::read(&file).unwrap();
    let report = sscard_kms::ceremony::audit::verify(crashed.path(), None).unwrap();
    assert!(report.repaired_copy, "{}", report.render());
    assert!(report.render().ends_with("INTACT\n"), "{}", report.render());
    assert!(report.render().starts_with("store not closed cleanly"));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the original is not written to"
    );
    // The store a running server holds: refused, saying what to do.
    let err = sscard_kms::ceremony::audit::verify(kms.dir(), None).unwrap_err();
    assert!(err.to_string().contains("stop the server first"), "{err}");
}

/// Issue 10: an open component ceremony survives a restart of the service. Each component goes
/// into the HSM when its custodian submits it (checked there against their KCV, the first one
/// too) and only the HSM's partial key is stored with the ceremony, so a custodian may bring
/// their component after the service was stopped and started again on the same directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_component_ceremony_survives_a_restart() {
    use hsm_api::Algorithm;
    use hsm_sim::crypto::{SecretKey, kcv};

    use crate::common::harness::{OFFICER, OFFICER_2, error_info};

    let mut kms = TestKms::seeded().await;
    let part = |hex: &str| {
        let key = SecretKey::from_hex(Algorithm::Aes128, hex).unwrap();
        pb::Component {
            hex: hex.to_owned(),
            kcv_hex: kcv::compute_default(&key).unwrap().to_hex(),
        }
    };
    // A station's first transport key opens on an approval (officer-1 asks, officer-2 approves).
    let start = |name: &str| {
        pb::start_key_ceremony_request::Target::Endpoint(pb::EndpointTarget {
            kind: pb::EndpointKind::Station.into(),
            name: name.to_owned(),
            region: "440100".to_owned(),
            transport_algorithm: "aes".to_owned(),
        })
    };
    let submit = |id: &str, component| pb::SubmitComponentRequest {
        ceremony_id: id.to_owned(),
        component: Some(component),
    };
    let (k1, k2) = (
        "000102030405060708090A0B0C0D0E0F",
        "F0E1D2C3B4A5968778695A4B3C2D1E0F",
    );

    // A wrong KCV is refused by the HSM at the first component already (nothing waits for the
    // last one to be checked): the ceremony fails, naming the custodian.
    let mut a = kms.client(OFFICER).admin;
    let failed = kms.open_ceremony(start("GZ-70"), 2).await;
    let mut wrong = part(k1);
    wrong.kcv_hex = "ABCDEF".to_owned();
    let status = a
        .submit_component(submit(&failed.id, wrong))
        .await
        .unwrap_err();
    assert_eq!(
        error_info(&status).unwrap().reason,
        "COMPONENT_KCV_MISMATCH"
    );
    let failed = a
        .get_key_ceremony(pb::KeyCeremonyRef { id: failed.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.state, "failed");
    assert!(failed.failure.contains(OFFICER), "{}", failed.failure);

    // The first custodian's component, then a restart on a new HSM instance (same LMK).
    let c = kms.open_ceremony(start("GZ-71"), 2).await;
    let one = a
        .submit_component(submit(&c.id, part(k1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((one.state.as_str(), one.custodians.len()), ("open", 1));
    kms.close().await;
    kms.reopen(local_hsm()).await;

    let mut a = kms.client(OFFICER).admin;
    let mut b = kms.client(OFFICER_2).admin;
    let open = a
        .get_key_ceremony(pb::KeyCeremonyRef { id: c.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((open.state.as_str(), open.custodians.len()), ("open", 1));
    // Still one component per identity, across the restart.
    let status = a
        .submit_component(submit(&c.id, part(k2)))
        .await
        .unwrap_err();
    assert_eq!(error_info(&status).unwrap().reason, "SAME_CUSTODIAN_TWICE");
    let done = b
        .submit_component(submit(&c.id, part(k2)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.state, "complete", "{done:?}");
    let xor: Vec<u8> = hex::decode(k1)
        .unwrap()
        .iter()
        .zip(hex::decode(k2).unwrap())
        .map(|(x, y)| x ^ y)
        .collect();
    let expected = kcv::compute_default(&SecretKey::new(Algorithm::Aes128, &xor).unwrap()).unwrap();
    assert_eq!(
        done.kcv.unwrap().value,
        expected.value(),
        "K1 xor K2, formed across the restart"
    );
    let custodians: Vec<&str> = done
        .custodians
        .iter()
        .map(|p| p.identity.as_str())
        .collect();
    assert_eq!(custodians, [OFFICER, OFFICER_2]);
}
