//! The card life cycle over mTLS (issue 9, README "Card life cycle"): every transition checked
//! and audited, key releases only in personalisation (a retried personalisation counted and
//! audited), a replacement taking its card out of service, and a card factor bound to one card.

use sscard_kms::proto::kms::v1 as pb;
use tonic::Code;

use crate::common::chain::{atr, card_number, ssn};
use crate::common::harness::{
    Clients, PROVINCIAL_REGISTRAR, REGISTRAR, STATION, TestKms, reason, tr31_request,
};

/// A chip of its own: the demo ATR ending in `n`.
fn chip(n: u32) -> Vec<u8> {
    let mut atr = atr();
    let len = atr.len();
    atr[len - 4..].copy_from_slice(&n.to_be_bytes());
    atr
}

/// A Guangzhou card of ssc-2.0 with a chip of its own.
fn card(serial: &str, number_body: &str, ssn17: &str, chip_n: u32) -> pb::CardIdentity {
    pb::CardIdentity {
        card_identifier: format!("440100D156000005{serial}"),
        card_number: card_number(number_body),
        social_security_number: ssn(ssn17),
        atr: chip(chip_n),
    }
}

fn register(card: &pb::CardIdentity, replaces: &str) -> pb::RegisterCardRequest {
    pb::RegisterCardRequest {
        card: Some(card.clone()),
        template_id: "ssc-2.0".to_owned(),
        replaces_card_identifier: replaces.to_owned(),
    }
}

fn card_ref(card: &pb::CardIdentity) -> pb::CardRef {
    pb::CardRef {
        card_identifier: card.card_identifier.clone(),
    }
}

fn change(card: &pb::CardIdentity, transition: pb::CardTransition) -> pb::ChangeCardStatusRequest {
    pb::ChangeCardStatusRequest {
        card_identifier: card.card_identifier.clone(),
        transition: transition as i32,
        reason: "asked at the counter".to_owned(),
    }
}

async fn status_of(registrar: &mut Clients, card: &pb::CardIdentity) -> (pb::CardStatus, u32) {
    let record = registrar
        .registry
        .get_card(card_ref(card))
        .await
        .unwrap()
        .into_inner();
    (record.status(), record.releases)
}

/// Registers `card` in Guangzhou and has the province accept it.
async fn accepted(kms: &TestKms<impl hsm_api::Hsm>, card: &pb::CardIdentity) {
    kms.client(REGISTRAR)
        .registry
        .register_card(register(card, ""))
        .await
        .unwrap();
    kms.client(PROVINCIAL_REGISTRAR)
        .registry
        .accept_card(card_ref(card))
        .await
        .unwrap();
}

/// The station's TR-31 request for `card`, which the service must refuse with `code` and the
/// reason code `expected` (and one `denied` audit record).
/// `call`, which the service must refuse with `code` and the reason code `expected` (and one
/// `denied` audit record).
async fn refused_because<T: std::fmt::Debug>(
    kms: &TestKms<impl hsm_api::Hsm>,
    code: Code,
    expected: &str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) {
    let status = kms.refused(code, "", call).await;
    assert_eq!(reason(&status), expected, "{status:?}");
}

async fn inject_refused(
    kms: &TestKms<impl hsm_api::Hsm>,
    card: &pb::CardIdentity,
    code: Code,
    expected: &str,
) {
    let mut station = kms.client(STATION);
    refused_because(
        kms,
        code,
        expected,
        station
            .card
            .inject_card_keys(tr31_request(card.clone(), "ssc-2.0")),
    )
    .await;
}

/// A change the service must refuse with the reason code `expected` (audited).
async fn change_refused(
    kms: &TestKms<impl hsm_api::Hsm>,
    who: &str,
    request: pb::ChangeCardStatusRequest,
    code: Code,
    expected: &str,
) {
    let mut client = kms.client(who);
    refused_because(
        kms,
        code,
        expected,
        client.registry.change_card_status(request),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_lives_from_registration_to_replacement_and_every_step_is_checked() {
    use pb::CardStatus as S;
    use pb::CardTransition as T;
    let kms = TestKms::seeded().await;
    let mut registrar = kms.client(REGISTRAR);
    let mut province = kms.client(PROVINCIAL_REGISTRAR);
    let mut station = kms.client(STATION);
    let a = card("00000000000D0001", "GZ400001", "44010319880808123", 0xD001);

    // Registered: no key; the city may not reject (the province's verdict).
    registrar
        .registry
        .register_card(register(&a, ""))
        .await
        .unwrap();
    inject_refused(&kms, &a, Code::FailedPrecondition, "CARD_NOT_ACCEPTED").await;
    change_refused(
        &kms,
        REGISTRAR,
        change(&a, T::Reject),
        Code::PermissionDenied,
        "PROVINCE_ONLY",
    )
    .await;
    // Not yet personalised: nothing to activate.
    change_refused(
        &kms,
        REGISTRAR,
        change(&a, T::Activate),
        Code::FailedPrecondition,
        "CARD_TRANSITION_NOT_ALLOWED",
    )
    .await;
    province.registry.accept_card(card_ref(&a)).await.unwrap();
    assert_eq!(status_of(&mut registrar, &a).await, (S::Accepted, 0));

    // Initialised, personalised, personalised again (a retry: counted and audited).
    station
        .card
        .initialise_blank_card(pb::InitialiseBlankCardRequest {
            card: Some(a.clone()),
            template_id: "ssc-2.0".to_owned(),
            challenge: vec![7; 8],
        })
        .await
        .unwrap();
    assert_eq!(status_of(&mut registrar, &a).await, (S::Initialised, 1));
    station
        .card
        .inject_card_keys(tr31_request(a.clone(), "ssc-2.0"))
        .await
        .unwrap();
    assert_eq!(status_of(&mut registrar, &a).await, (S::Personalised, 2));
    station
        .card
        .inject_card_keys(tr31_request(a.clone(), "ssc-2.0"))
        .await
        .unwrap();
    assert_eq!(status_of(&mut registrar, &a).await, (S::Personalised, 3));
    let last = kms.audit_trail().pop().unwrap();
    assert_eq!(last.action, "inject-card-keys");
    assert!(
        last.subject
            .ends_with("; release 3 (retry); now personalised"),
        "{last:?}"
    );

    // Issued: in service, no key any more.
    let r = registrar
        .registry
        .change_card_status(change(&a, T::Activate))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status(), S::Active);
    let last = kms.audit_trail().pop().unwrap();
    assert_eq!(last.action, "change-card-status");
    assert!(
        last.subject.contains("(activate: asked at the counter)"),
        "{last:?}"
    );
    inject_refused(
        &kms,
        &a,
        Code::FailedPrecondition,
        "CARD_NOT_IN_PERSONALISATION",
    )
    .await;

    // Suspended and resumed; resuming an active card is not a change the table has.
    for (t, s) in [(T::Suspend, S::Suspended), (T::Resume, S::Active)] {
        let r = registrar
            .registry
            .change_card_status(change(&a, t))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), s);
    }
    change_refused(
        &kms,
        REGISTRAR,
        change(&a, T::Resume),
        Code::FailedPrecondition,
        "CARD_TRANSITION_NOT_ALLOWED",
    )
    .await;
    // Another city's registrar may not touch it.
    change_refused(
        &kms,
        "sscard://registrar/440300/SZ-REG-01",
        change(&a, T::Suspend),
        Code::PermissionDenied,
        "OUTSIDE_CALLER_REGION",
    )
    .await;
    // An unset transition is refused as unset (by the API layer, before the service).
    let mut unset = change(&a, T::Suspend);
    unset.transition = 0;
    let status = registrar
        .registry
        .change_card_status(unset)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(reason(&status), "FIELD_REQUIRED");
    assert_eq!(status_of(&mut registrar, &a).await.0, S::Active);

    // Lost: still the person's live card, so a new card of the person needs to name it.
    registrar
        .registry
        .change_card_status(change(&a, T::ReportLost))
        .await
        .unwrap();
    inject_refused(
        &kms,
        &a,
        Code::FailedPrecondition,
        "CARD_NOT_IN_PERSONALISATION",
    )
    .await;
    let b = card("00000000000D0002", "GZ400002", "44010319880808123", 0xD002);
    kms.refused(
        Code::AlreadyExists,
        "a live card for this social security number",
        registrar.registry.register_card(register(&b, "")),
    )
    .await;
    // Naming a card of another person is refused, and changes nothing.
    let other = card("00000000000D0003", "GZ400003", "44010319770707123", 0xD003);
    accepted(&kms, &other).await;
    refused_because(
        &kms,
        Code::FailedPrecondition,
        "REPLACED_CARD_NOT_REPLACEABLE",
        registrar
            .registry
            .register_card(register(&b, &other.card_identifier)),
    )
    .await;
    assert_eq!(status_of(&mut registrar, &other).await.0, S::Accepted);
    // The replacement names the lost card: it leaves service in the same write.
    let r = registrar
        .registry
        .register_card(register(&b, &a.card_identifier))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status(), S::Registered);
    assert_eq!(r.replaces_card_identifier, a.card_identifier);
    assert_eq!(status_of(&mut registrar, &a).await.0, S::Replaced);
    inject_refused(
        &kms,
        &a,
        Code::FailedPrecondition,
        "CARD_NOT_IN_PERSONALISATION",
    )
    .await;
    change_refused(
        &kms,
        REGISTRAR,
        change(&a, T::Cancel),
        Code::FailedPrecondition,
        "CARD_TRANSITION_NOT_ALLOWED",
    )
    .await;
    // A replaced card is replaced once.
    let c = card("00000000000D0004", "GZ400004", "44010319880808123", 0xD004);
    refused_because(
        &kms,
        Code::FailedPrecondition,
        "REPLACED_CARD_NOT_REPLACEABLE",
        registrar
            .registry
            .register_card(register(&c, &a.card_identifier)),
    )
    .await;

    // Cancelled: out of service for good.
    registrar
        .registry
        .change_card_status(change(&b, T::Cancel))
        .await
        .unwrap();
    assert_eq!(status_of(&mut registrar, &b).await.0, S::Cancelled);
    inject_refused(
        &kms,
        &b,
        Code::FailedPrecondition,
        "CARD_NOT_IN_PERSONALISATION",
    )
    .await;

    // Rejected by the province: no key, final.
    let d = card("00000000000D0005", "GZ400005", "44010319660606123", 0xD005);
    registrar
        .registry
        .register_card(register(&d, ""))
        .await
        .unwrap();
    let r = province
        .registry
        .change_card_status(change(&d, T::Reject))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status(), S::Rejected);
    inject_refused(&kms, &d, Code::FailedPrecondition, "CARD_REJECTED").await;
    refused_because(
        &kms,
        Code::FailedPrecondition,
        "CARD_TRANSITION_NOT_ALLOWED",
        province.registry.accept_card(card_ref(&d)),
    )
    .await;

    // Blacklisted: no key, and no change but the blacklist.
    registrar
        .registry
        .blacklist_card(pb::BlacklistCardRequest {
            card_identifier: other.card_identifier.clone(),
            reason: "fraud".to_owned(),
        })
        .await
        .unwrap();
    inject_refused(&kms, &other, Code::FailedPrecondition, "CARD_BLACKLISTED").await;
    change_refused(
        &kms,
        REGISTRAR,
        change(&other, T::Cancel),
        Code::FailedPrecondition,
        "CARD_BLACKLISTED",
    )
    .await;
}

/// Today's hole, closed: a station that submits a blacklisted card's ATR for another accepted
/// card would get the blacklisted card's keys (a card key is D(K_city, ATR factor)).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_factor_belongs_to_one_card() {
    let kms = TestKms::seeded().await;
    let mut registrar = kms.client(REGISTRAR);
    let mut station = kms.client(STATION);
    let stolen = card("00000000000E0001", "GZ500001", "44010319850505123", 0xE001);
    let cover = card("00000000000E0002", "GZ500002", "44010319860606123", 0xE002);
    accepted(&kms, &stolen).await;
    accepted(&kms, &cover).await;
    station
        .card
        .inject_card_keys(tr31_request(stolen.clone(), "ssc-2.0"))
        .await
        .unwrap();
    registrar
        .registry
        .blacklist_card(pb::BlacklistCardRequest {
            card_identifier: stolen.card_identifier.clone(),
            reason: "stolen".to_owned(),
        })
        .await
        .unwrap();

    // The blacklisted card's chip presented as the accepted card: refused and audited, before
    // any key is derived, and nothing is bound to the accepted card.
    let mut disguised = cover.clone();
    disguised.atr = stolen.atr.clone();
    refused_because(
        &kms,
        Code::FailedPrecondition,
        "CARD_FACTOR_BOUND_ELSEWHERE",
        station
            .card
            .inject_card_keys(tr31_request(disguised.clone(), "ssc-2.0")),
    )
    .await;
    refused_because(
        &kms,
        Code::FailedPrecondition,
        "CARD_FACTOR_BOUND_ELSEWHERE",
        station
            .card
            .initialise_blank_card(pb::InitialiseBlankCardRequest {
                card: Some(disguised),
                template_id: "ssc-2.0".to_owned(),
                challenge: vec![1; 8],
            }),
    )
    .await;
    let (status, releases) = status_of(&mut registrar, &cover).await;
    assert_eq!((status, releases), (pb::CardStatus::Accepted, 0));

    // Its own chip is served, and from then on only that chip.
    station
        .card
        .inject_card_keys(tr31_request(cover.clone(), "ssc-2.0"))
        .await
        .unwrap();
    let mut again = cover.clone();
    again.atr = stolen.atr.clone();
    // The card's own ATR is checked first: another chip for a released card.
    refused_because(
        &kms,
        Code::FailedPrecondition,
        "ATR_MISMATCH",
        station
            .card
            .inject_card_keys(tr31_request(again, "ssc-2.0")),
    )
    .await;
}

/// The `replaces` column of an applicant file: a replacement row takes the card it names out of
/// service when accepted; every other use of the column is rejected with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applicant_file_replaces_cards_it_names() {
    use crate::common::applicants::{applicant, csv, reasons_at, submit};
    let kms = TestKms::seeded().await;
    let mut registrar = kms.client(REGISTRAR);
    let mut station = kms.client(STATION);
    let first = applicant("440100", "RP", 1);
    let other = applicant("440100", "RP", 2);
    let report = submit(
        &mut registrar.registry,
        csv(&[first.clone(), other.clone()]).as_bytes(),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(report.accepted, 2);
    let first_card = pb::CardIdentity {
        card_identifier: first.card_identifier.clone(),
        card_number: first.card_number.clone(),
        social_security_number: first.ssn.clone(),
        atr: chip(0xF001),
    };
    station
        .card
        .inject_card_keys(tr31_request(first_card.clone(), "ssc-2.0"))
        .await
        .unwrap();

    // Line 2: the holder's new card replacing the personalised one. Lines 3 and 4: two rows
    // replacing one card. Line 5: not an identifier. Line 6: a card of another person.
    let mut renewed = applicant("440100", "RQ", 1);
    renewed.ssn = first.ssn.clone();
    renewed.birth_date = first.birth_date.clone();
    renewed.sex = first.sex.clone();
    let mut again = applicant("440100", "RQ", 2);
    again.ssn = first.ssn.clone();
    again.birth_date = first.birth_date.clone();
    again.sex = first.sex.clone();
    let rows = [
        (renewed.clone(), first.card_identifier.as_str()),
        (
            applicant("440100", "RQ", 3),
            "440100D156000005000000000000F00F",
        ),
        (
            applicant("440100", "RQ", 4),
            "440100D156000005000000000000F00F",
        ),
        (applicant("440100", "RQ", 5), "440100D15600000"),
        (applicant("440100", "RQ", 6), other.card_identifier.as_str()),
    ];
    let people: Vec<_> = rows.iter().map(|(a, _)| a.clone()).collect();
    let mut text = String::new();
    for (i, line) in csv(&people).lines().enumerate() {
        let extra = if i == 0 { "replaces" } else { rows[i - 1].1 };
        text.push_str(&format!("{line},{extra}\n"));
    }
    let report = submit(&mut registrar.registry, text.as_bytes())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reasons_at(&report, 2), "");
    for line in [3, 4] {
        assert_eq!(
            reasons_at(&report, line),
            "replaces-not-replaceable;duplicate-in-batch-replaces"
        );
    }
    assert_eq!(reasons_at(&report, 5), "replaces-format");
    assert_eq!(reasons_at(&report, 6), "replaces-not-replaceable");
    assert_eq!(report.accepted, 1);
    // The new card is the person's live card now: another one without `replaces` is a
    // duplicate, and the replaced card cannot be replaced twice.
    let mut text = String::new();
    for (i, line) in csv(&[again]).lines().enumerate() {
        let extra = if i == 0 {
            "replaces"
        } else {
            first.card_identifier.as_str()
        };
        text.push_str(&format!("{line},{extra}\n"));
    }
    let report = submit(&mut registrar.registry, text.as_bytes())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reasons_at(&report, 2),
        "duplicate-ssn;replaces-not-replaceable"
    );

    let replaced = registrar
        .registry
        .get_card(card_ref(&first_card))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replaced.status(), pb::CardStatus::Replaced);
    let renewed_record = registrar
        .registry
        .get_card(pb::CardRef {
            card_identifier: renewed.card_identifier.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renewed_record.status(), pb::CardStatus::Accepted);
    assert_eq!(
        renewed_record.replaces_card_identifier,
        first.card_identifier
    );
    inject_refused(
        &kms,
        &first_card,
        Code::FailedPrecondition,
        "CARD_NOT_IN_PERSONALISATION",
    )
    .await;
    // The other person's card is untouched.
    let untouched = registrar
        .registry
        .get_card(pb::CardRef {
            card_identifier: other.card_identifier.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(untouched.status(), pb::CardStatus::Accepted);
}

/// `kms-ceremony registry card-status` as a registrar runs it: the real binary over mTLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_ceremony_moves_a_card_along_its_life() {
    use crate::registry_cli::{registrar_files, run, s};
    let kms = TestKms::seeded().await;
    let a = card("00000000000D0101", "GZ410001", "44010319870707123", 0xD101);
    accepted(&kms, &a).await;
    kms.client(STATION)
        .card
        .inject_card_keys(tr31_request(a.clone(), "ssc-2.0"))
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = registrar_files(&kms, tmp.path());
    let status = |transition: &str| {
        run(vec![
            "registry".into(),
            "card-status".into(),
            a.card_identifier.clone(),
            transition.into(),
            "--reason".into(),
            "issued at the counter".into(),
            "--endpoint".into(),
            kms.url(),
            "--ca".into(),
            s(&ca),
            "--cert".into(),
            s(&cert),
            "--key".into(),
            s(&key),
        ])
    };
    let out = status("activate").await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, format!("card {} active\n", a.card_identifier));
    let out = status("resume").await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("the card's status does not allow this change"),
        "{out:?}"
    );
    let out = status("report-lost").await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.ends_with(" lost\n"), "{out:?}");
}

/// A store of before the binding: the factors of cards already released are bound once, at the
/// next start, so a card blacklisted before then is covered too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn factors_of_cards_released_before_the_binding_are_bound_once() {
    use sscard_kms::registry::lifecycle;
    use sscard_kms::state::records::{Card, CardStatus};
    use sscard_kms::state::store::{NoSealer, Store, Table};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), std::sync::Arc::new(NoSealer)).unwrap();
    let released = |id: &str, chip_n: u32, status| Card {
        card_identifier: id.to_owned(),
        personal: sscard_kms::state::records::Personal {
            ssn_index: format!("{:064X}", 1),
            card_number_index: format!("{chip_n:064X}"),
            ssn_masked: "440103********1231".to_owned(),
            card_number_masked: "G*****011".to_owned(),
            sealed_ssn: String::new(),
            sealed_card_number: String::new(),
            sealed_name: None,
        },
        region: "440100".to_owned(),
        template_id: "ssc-2.0".to_owned(),
        status,
        blacklist_reason: None,
        atr: Some(hex::encode_upper(chip(chip_n))),
        issued_root_versions: Default::default(),
        created_ms: 0,
        releases: 0,
        replaces: None,
    };
    let a = released(
        "440100D156000005000000000000C001",
        0xC001,
        CardStatus::Blacklisted,
    );
    // Two cards released for one chip before the binding: the first keeps it.
    let b = released(
        "440100D156000005000000000000C002",
        0xC002,
        CardStatus::Accepted,
    );
    let c = released(
        "440100D156000005000000000000C003",
        0xC002,
        CardStatus::Accepted,
    );
    let cards = [a.clone(), b.clone(), c];
    let first = store
        .write(move |tx| {
            for card in &cards {
                tx.put(Table::Cards, &card.card_identifier, card)?;
            }
            lifecycle::bind_released_factors(tx)
        })
        .await
        .unwrap();
    assert_eq!(first, Some((2, 1)));
    let again = store.write(lifecycle::bind_released_factors).await.unwrap();
    assert_eq!(again, None, "once per store");
    let snap = store.snapshot().unwrap();
    let bound = |card: &Card| -> Option<String> {
        let factor =
            hsm_api::Factor::from_atr(&hex::decode(card.atr.as_ref().unwrap()).unwrap()).unwrap();
        snap.get(
            Table::CardFactors,
            &lifecycle::factor_key(&card.template_id, &factor),
        )
        .unwrap()
    };
    assert_eq!(bound(&a), Some(a.card_identifier.clone()));
    assert_eq!(bound(&b), Some(b.card_identifier.clone()));
}
