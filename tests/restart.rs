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
    let report = sscard_kms::ceremony::audit::verify(kms.dir(), None).unwrap();
    assert_eq!(report.broken, None, "{}", report.render());
    assert_eq!(report.records, trail_after.len());
    assert!(report.seals > 0);
}
