//! Personal data at rest (issue 9): cards registered one by one and in UTF-8 and GBK batches
//! over real mutual TLS, then the store's own bytes (the redb file, or on PostgreSQL every row
//! as text) searched for every SSN, name (UTF-8 and GBK bytes) and card number — none is there,
//! while the card identifiers are (the scan works). Responses and logs show masked forms; a
//! store written in the old layout is migrated (and a migration that stopped half-way is
//! finished by the next start).

use sscard_kms::proto::kms::v1 as pb;
use sscard_kms::registry::personal::{LAYOUT, LAYOUT_VERSION};
use sscard_kms::state::records::Card;
use sscard_kms::state::store::Table;

use crate::common::applicants::{Applicant, applicant, csv, gbk, reasons_at, submit};
use crate::common::chain::published;
use crate::common::harness::{PROVINCIAL_REGISTRAR, REGISTRAR, TestKms, local_hsm, logs, reason};

const SHENZHEN_REGISTRAR: &str = "sscard://registrar/440300/SZ-REG-01";
use hsm_sim::local::LocalHsm;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every clear value of `rows` that must not be in `bytes`, with what it is.
fn clear_values(rows: &[Applicant]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for a in rows {
        out.push((
            format!("SSN of {}", a.card_identifier),
            a.ssn.clone().into_bytes(),
        ));
        out.push((
            format!("card number of {}", a.card_identifier),
            a.card_number.clone().into_bytes(),
        ));
        out.push((
            format!("UTF-8 name of {}", a.card_identifier),
            a.name.clone().into_bytes(),
        ));
        out.push((format!("GBK name of {}", a.card_identifier), gbk(&a.name)));
    }
    out
}

fn register_request(a: &Applicant) -> pb::RegisterCardRequest {
    pb::RegisterCardRequest {
        card: Some(pb::CardIdentity {
            card_identifier: a.card_identifier.clone(),
            card_number: a.card_number.clone(),
            social_security_number: a.ssn.clone(),
            atr: Vec::new(),
        }),
        template_id: "ssc-2.0".into(),
        replaces_card_identifier: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_clear_ssn_name_or_card_number_in_the_store() {
    let kms = TestKms::seeded().await;
    let mut city = kms.client(REGISTRAR);

    // A UTF-8 batch (one row waivable: kept pending for a reviewer, with its name) and a GBK
    // batch; names with compound surnames among them.
    let mut utf8: Vec<Applicant> = (0..12).map(|n| applicant("440100", "PD", n)).collect();
    utf8[3].sex = "3".into();
    let report = submit(&mut city.registry, csv(&utf8).as_bytes())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((report.accepted, report.rejected), (11, 1));
    assert_eq!(reasons_at(&report, 5), "sex-invalid");
    let gbk_rows: Vec<Applicant> = (0..12).map(|n| applicant("440100", "PG", n)).collect();
    let report = submit(&mut city.registry, &gbk(&csv(&gbk_rows)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((report.accepted, report.rejected), (12, 0));
    // One by one, and a card blacklisted (its audit record and the published list).
    let single = applicant("440100", "PS", 1);
    let record = city
        .registry
        .register_card(register_request(&single))
        .await
        .unwrap()
        .into_inner();
    // Masked in the response.
    assert_eq!(
        record.social_security_number_masked,
        format!("{}********{}", &single.ssn[..6], &single.ssn[14..])
    );
    assert_eq!(
        record.card_number_masked,
        format!(
            "{}*****{}",
            &single.card_number[..1],
            &single.card_number[6..]
        )
    );
    city.registry
        .blacklist_card(pb::BlacklistCardRequest {
            card_identifier: utf8[0].card_identifier.clone(),
            reason: "lost".into(),
        })
        .await
        .unwrap();
    let got = city
        .registry
        .get_card(pb::CardRef {
            card_identifier: gbk_rows[2].card_identifier.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.social_security_number_masked,
        format!(
            "{}********{}",
            &gbk_rows[2].ssn[..6],
            &gbk_rows[2].ssn[14..]
        )
    );

    // The full read-back: the city's own registrar, through the HSM, audited.
    for a in [&utf8[1], &gbk_rows[6]] {
        let clear = city
            .registry
            .read_card_personal_data(pb::CardRef {
                card_identifier: a.card_identifier.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (clear.social_security_number, clear.card_number, clear.name),
            (a.ssn.clone(), a.card_number.clone(), a.name.clone())
        );
    }
    let clear = city
        .registry
        .read_card_personal_data(pb::CardRef {
            card_identifier: single.card_identifier.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (clear.social_security_number, clear.name),
        (single.ssn.clone(), String::new())
    );
    let read = kms
        .audit_trail()
        .iter()
        .filter(|r| r.action == "read-card-personal-data" && r.outcome == "ok")
        .count();
    assert!(read >= 3, "every read-back is audited");
    for (who, code) in [
        (PROVINCIAL_REGISTRAR, "PERSONAL_DATA_OWN_CITY_ONLY"),
        (SHENZHEN_REGISTRAR, "PERSONAL_DATA_OWN_CITY_ONLY"),
    ] {
        let refused = kms
            .client(who)
            .registry
            .read_card_personal_data(pb::CardRef {
                card_identifier: utf8[1].card_identifier.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert_eq!(reason(&refused), code);
    }

    // Uniqueness through the index hashes: the same SSN and card number again, in a later
    // batch, refused as before.
    let mut again = applicant("440100", "PH", 1);
    again.ssn.clone_from(&gbk_rows[4].ssn);
    again.birth_date.clone_from(&gbk_rows[4].birth_date);
    again.card_number.clone_from(&utf8[5].card_number);
    let report = submit(&mut city.registry, csv(&[again]).as_bytes())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reasons_at(&report, 2),
        "duplicate-ssn;duplicate-card-number"
    );

    let mut all = utf8.clone();
    all.extend(gbk_rows.iter().cloned());
    all.push(single.clone());
    let store = kms.store_bytes();
    for (what, value) in clear_values(&all) {
        assert!(!contains(&store, &value), "{what} is in the store in clear");
    }
    let demo = &published().card;
    for card in demo {
        assert!(!contains(&store, card.social_security_number.as_bytes()));
        assert!(!contains(&store, card.card_number.as_bytes()));
    }
    // The control: the card identifiers (not personal) are there, so the scan sees the rows.
    for a in &all {
        assert!(
            contains(&store, a.card_identifier.as_bytes()),
            "the scan does not see {}",
            a.card_identifier
        );
    }
    // The logs of the whole binary: masked only.
    let logs = logs();
    for (what, value) in clear_values(&all) {
        assert!(!contains(logs.as_bytes(), &value), "{what} is in the logs");
    }

    // The stored card: hashes and sealed fields, its masked forms.
    let stored: Card = kms
        .kms()
        .store()
        .snapshot()
        .unwrap()
        .get(Table::Cards, &utf8[1].card_identifier)
        .unwrap()
        .unwrap();
    assert_eq!(stored.personal.ssn_index.len(), 64);
    assert!(stored.personal.sealed_name.is_some());
    assert_eq!(
        stored.personal.card_number_masked,
        format!(
            "{}*****{}",
            &utf8[1].card_number[..1],
            &utf8[1].card_number[6..]
        )
    );
}

/// A card as the store kept it before issue 9, and its index entries (clear keys).
fn legacy_card(a: &Applicant) -> serde_json::Value {
    serde_json::json!({
        "card_identifier": a.card_identifier,
        "card_number": a.card_number,
        "social_security_number": a.ssn,
        "region": a.region,
        "template_id": "ssc-2.0",
        "status": "accepted",
        "blacklist_reason": null,
        "atr": null,
        "issued_root_versions": {},
        "created_ms": 1,
        "releases": 0,
        "replaces": null
    })
}

async fn write_legacy(kms: &TestKms<LocalHsm>, rows: &[Applicant], generation_keys: bool) {
    let rows = rows.to_vec();
    kms.kms()
        .store()
        .write(move |tx| {
            for a in &rows {
                tx.put(Table::Cards, &a.card_identifier, &legacy_card(a))?;
                tx.put(Table::CardNumbers, &a.card_number, &a.card_identifier)?;
                let key = if generation_keys {
                    format!("{}/2.0", a.ssn)
                } else {
                    a.ssn.clone()
                };
                tx.put(Table::SocialSecurityNumbers, &key, &a.card_identifier)?;
            }
            tx.delete(Table::Meta, LAYOUT)?;
            Ok(())
        })
        .await
        .unwrap();
}

/// Every key and value of every table the registry writes, as text.
fn registry_text(kms: &TestKms<LocalHsm>) -> String {
    let snap = kms.kms().store().snapshot().unwrap();
    let mut text = String::new();
    for table in [
        Table::Cards,
        Table::CardNumbers,
        Table::SocialSecurityNumbers,
        Table::ApplicantBatches,
        Table::Blacklist,
    ] {
        for (k, v) in snap.scan::<serde_json::Value>(table, "").unwrap() {
            text.push_str(&format!("{k} {v}\n"));
        }
    }
    for r in kms.audit_trail() {
        text.push_str(&format!("{} {} {}\n", r.actor, r.action, r.subject));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_the_old_layout_is_migrated_and_a_stopped_migration_finished() {
    let mut kms = TestKms::seeded().await;
    let old: Vec<Applicant> = (0..5).map(|n| applicant("440100", "MG", n)).collect();
    write_legacy(&kms, &old[..3], true).await;
    write_legacy(&kms, &old[3..], false).await;
    assert_eq!(
        kms.kms()
            .store()
            .snapshot()
            .unwrap()
            .get::<u32>(Table::Meta, LAYOUT)
            .unwrap(),
        None
    );
    kms.close().await;
    kms.reopen(local_hsm()).await;

    let snap = kms.kms().store().snapshot().unwrap();
    assert_eq!(
        snap.get::<u32>(Table::Meta, LAYOUT).unwrap(),
        Some(LAYOUT_VERSION)
    );
    for a in &old {
        let card: Card = snap.get(Table::Cards, &a.card_identifier).unwrap().unwrap();
        assert_eq!(card.status.name(), "accepted");
        assert_eq!(
            snap.get::<String>(Table::CardNumbers, &card.personal.card_number_index)
                .unwrap()
                .as_deref(),
            Some(a.card_identifier.as_str())
        );
    }
    let text = registry_text(&kms);
    for (what, value) in clear_values(&old) {
        assert!(!contains(text.as_bytes(), &value), "{what} left in clear");
    }
    let migrated = kms
        .audit_trail()
        .iter()
        .filter(|r| r.action == "migrate-registry-personal-data")
        .count();
    assert!(migrated >= 3, "chunks and the layout are audited");

    // Uniqueness against the migrated cards: their SSNs and card numbers are still taken.
    let mut city = kms.client(REGISTRAR);
    let mut dup = applicant("440100", "MH", 1);
    dup.ssn.clone_from(&old[4].ssn);
    dup.birth_date.clone_from(&old[4].birth_date);
    dup.card_number.clone_from(&old[0].card_number);
    let report = submit(&mut city.registry, csv(&[dup]).as_bytes())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reasons_at(&report, 2),
        "duplicate-ssn;duplicate-card-number"
    );
    let got = city
        .registry
        .get_card(pb::CardRef {
            card_identifier: old[2].card_identifier.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.card_number_masked,
        format!(
            "{}*****{}",
            &old[2].card_number[..1],
            &old[2].card_number[6..]
        )
    );

    // A migration that stopped half-way: one card (and its index entries) still in the old
    // layout, no layout mark. The next start finishes it and leaves the others as they are.
    let before: Card = snap
        .get(Table::Cards, &old[0].card_identifier)
        .unwrap()
        .unwrap();
    drop(snap);
    let late = applicant("440100", "MG", 9);
    write_legacy(&kms, std::slice::from_ref(&late), true).await;
    kms.close().await;
    kms.reopen(local_hsm()).await;
    let snap = kms.kms().store().snapshot().unwrap();
    assert_eq!(
        snap.get::<u32>(Table::Meta, LAYOUT).unwrap(),
        Some(LAYOUT_VERSION)
    );
    let after: Card = snap
        .get(Table::Cards, &old[0].card_identifier)
        .unwrap()
        .unwrap();
    assert_eq!(before, after, "a migrated card is not migrated again");
    let card: Card = snap
        .get(Table::Cards, &late.card_identifier)
        .unwrap()
        .unwrap();
    assert_eq!(card.personal.ssn_index.len(), 64);
    let text = registry_text(&kms);
    for (what, value) in clear_values(&[late]) {
        assert!(!contains(text.as_bytes(), &value), "{what} left in clear");
    }
    // A provincial reviewer still reads the cards.
    kms.client(PROVINCIAL_REGISTRAR)
        .registry
        .get_card(pb::CardRef {
            card_identifier: old[1].card_identifier.clone(),
        })
        .await
        .unwrap();
}
