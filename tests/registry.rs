//! The province's review of applicant files (notice N4) over real mutual TLS: every legality
//! rule, duplicates inside a batch and against the store (the seeded demo cards and earlier
//! batches), UTF-8 and GBK files, cross-region refusals, malformed files that store nothing,
//! resubmission, and a provincial reviewer accepting a waivable row by hand.

use sha2::Digest as _;
use sscard_kms::proto::kms::v1 as pb;
use sscard_kms::state::store::Table;
use tonic::Code;

use crate::common::applicants::{
    Applicant, HEADER, applicant, csv, gbk, reasons_at, submit, submit_chunked,
};
use crate::common::chain::{atr, card_number_bad_check, published, ssn};
use crate::common::harness::{
    PROVINCIAL_REGISTRAR, REGISTRAR, STATION, TestKms, local_hsm, tr31_request,
};
use hsm_sim::local::LocalHsm;

const SHENZHEN_REGISTRAR: &str = "sscard://registrar/440300/SZ-REG-01";

fn count(kms: &TestKms<LocalHsm>, table: Table) -> usize {
    kms.kms()
        .store()
        .snapshot()
        .unwrap()
        .scan::<serde_json::Value>(table, "")
        .unwrap()
        .len()
}

fn card_status(kms: &TestKms<LocalHsm>, id: &str) -> Option<String> {
    kms.kms()
        .store()
        .snapshot()
        .unwrap()
        .get::<serde_json::Value>(Table::Cards, id)
        .unwrap()
        .map(|c| c["status"].as_str().unwrap().to_owned())
}

fn with(mut a: Applicant, change: impl FnOnce(&mut Applicant)) -> Applicant {
    change(&mut a);
    a
}

fn other_check(ssn: &str) -> String {
    let last = if ssn.ends_with('1') { '2' } else { '1' };
    format!("{}{last}", &ssn[..17])
}

/// The verdicts of a report, comparable between two answers.
fn verdicts(r: &pb::ApplicantBatchReport) -> (u64, u64, u64, Vec<(u64, String)>) {
    (
        r.rows,
        r.accepted,
        r.rejected,
        r.rejected_rows
            .iter()
            .map(|x| (x.line, x.reasons.join(";")))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_every_reason_of_a_row_and_the_batch_stored_once() {
    let kms = TestKms::seeded().await;
    let mut city = kms.client(REGISTRAR);
    let gz = |n| applicant("440100", "GA", n);
    let demo = &published().card;

    // (row, expected reasons): lines 2, 3, … in this order.
    let mut rows: Vec<(Applicant, &str)> = (0..5).map(|n| (gz(n), "")).collect();
    rows.extend([
        (with(gz(10), |a| a.ssn.truncate(17)), "ssn-format"),
        (with(gz(11), |a| a.ssn = other_check(&a.ssn)), "ssn-check"),
        (
            with(gz(12), |a| {
                a.ssn = ssn(&format!("{}19900230{}", &a.ssn[..6], &a.ssn[14..17]));
                a.birth_date = "19900228".into();
            }),
            "ssn-birth-date;birth-date-mismatch",
        ),
        (
            with(gz(13), |a| a.ssn = ssn(&format!("99{}", &a.ssn[2..17]))),
            "ssn-region",
        ),
        (
            with(gz(14), |a| a.birth_date = "20010101".into()),
            "birth-date-mismatch",
        ),
        (with(gz(15), |a| a.name.clear()), "name-missing"),
        // 16 characters of GBK: 32 bytes, over the card's 30.
        (with(gz(16), |a| a.name = "欧阳".repeat(8)), "name-too-long"),
        (with(gz(17), |a| a.sex = "0".into()), "sex-invalid"),
        (
            with(gz(18), |a| a.card_number.truncate(8)),
            "card-number-format",
        ),
        (
            with(gz(19), |a| {
                a.card_number = card_number_bad_check(&a.card_number[..8]);
            }),
            "card-number-check",
        ),
        (
            with(gz(20), |a| {
                a.card_identifier = a.card_identifier.replace("D156000005", "D156000006");
            }),
            "card-identifier-format",
        ),
        (
            with(gz(21), |a| {
                a.card_identifier = a.card_identifier.replacen("440100", "440300", 1);
            }),
            "card-identifier-region",
        ),
        (
            with(gz(22), |a| a.region = "440300".into()),
            "region-mismatch",
        ),
        (
            with(gz(23), |a| a.spec_version = "1.00".into()),
            "spec-version-unknown",
        ),
        // Several rules at once: every reason, not only the first.
        (
            with(gz(24), |a| {
                a.ssn = other_check(&a.ssn);
                a.name.clear();
                a.sex = "3".into();
                a.card_number = card_number_bad_check(&a.card_number[..8]);
            }),
            "ssn-check;name-missing;sex-invalid;card-number-check",
        ),
    ]);
    // Groups inside the batch: every row of each group.
    let shared = gz(30);
    rows.push((shared.clone(), "duplicate-in-batch-ssn"));
    rows.push((
        with(gz(31), |a| {
            a.ssn.clone_from(&shared.ssn);
            a.birth_date.clone_from(&shared.birth_date);
        }),
        "duplicate-in-batch-ssn",
    ));
    let numbered = gz(32);
    rows.push((numbered.clone(), "duplicate-in-batch-card-number"));
    rows.push((
        with(gz(33), |a| a.card_number.clone_from(&numbered.card_number)),
        "duplicate-in-batch-card-number",
    ));
    let identified = gz(34);
    rows.push((identified.clone(), "duplicate-in-batch-card-identifier"));
    rows.push((
        with(gz(35), |a| {
            a.card_identifier = identified.card_identifier.to_ascii_lowercase();
        }),
        "duplicate-in-batch-card-identifier",
    ));
    // Against the store: the seeded demo cards (ssc-2.0 and ssc-3.0).
    rows.extend([
        (
            with(gz(40), |a| a.card_number.clone_from(&demo[0].card_number)),
            "duplicate-card-number",
        ),
        (
            with(gz(41), |a| {
                a.card_identifier.clone_from(&demo[0].card_identifier);
            }),
            "duplicate-card-identifier",
        ),
        // Demo card 1's person has a live ssc-3.0 card; demo card 0's an ssc-2.0 one, so a 3.0
        // card for that person is fine: one live card per person per card generation.
        (
            with(gz(43), |a| {
                a.ssn.clone_from(&demo[0].social_security_number);
                a.birth_date = a.ssn[6..14].to_owned();
                a.spec_version = "3.00".into();
            }),
            "",
        ),
        (
            with(gz(44), |a| {
                a.ssn.clone_from(&demo[1].social_security_number);
                a.birth_date = a.ssn[6..14].to_owned();
                a.spec_version = "3.00".into();
            }),
            "duplicate-ssn",
        ),
    ]);
    let applicants: Vec<Applicant> = rows.iter().map(|(a, _)| a.clone()).collect();
    let file = csv(&applicants);
    let cards_before = count(&kms, Table::Cards);
    let trail_before = kms.audit_trail().len();

    let report = submit(&mut city.registry, file.as_bytes())
        .await
        .unwrap()
        .into_inner();
    let sha = hex::encode_upper(sha2::Sha256::digest(file.as_bytes()));
    assert_eq!(report.batch_id, sha);
    assert_eq!(report.sha256, sha);
    assert_eq!(
        (report.region.as_str(), report.submitter.as_str()),
        ("440100", REGISTRAR)
    );
    assert_eq!(report.encoding, "utf8");
    assert!(!report.resubmitted);
    for (i, (_, expected)) in rows.iter().enumerate() {
        let line = i as u64 + 2;
        assert_eq!(reasons_at(&report, line), *expected, "line {line}");
    }
    let accepted = rows.iter().filter(|(_, e)| e.is_empty()).count() as u64;
    assert_eq!(report.rows, rows.len() as u64);
    assert_eq!(
        (report.accepted, report.rejected),
        (accepted, report.rows - accepted)
    );
    assert_eq!(
        report.lines,
        [pb::LineRun {
            first_line: 2,
            count: rows.len() as u64
        }]
    );

    // The accepted rows are accepted cards (the rules are the province's verdict): a station
    // gets their keys. The rejected rows left nothing.
    assert_eq!(count(&kms, Table::Cards), cards_before + accepted as usize);
    for (a, expected) in &rows {
        let status = card_status(&kms, &a.card_identifier.to_ascii_uppercase());
        if expected.is_empty() {
            assert_eq!(status.as_deref(), Some("accepted"), "{}", a.card_identifier);
        }
    }
    assert_eq!(card_status(&kms, &gz(23).card_identifier), None);
    let first = &rows[0].0;
    kms.client(STATION)
        .card
        .inject_card_keys(tr31_request(
            pb::CardIdentity {
                card_identifier: first.card_identifier.clone(),
                card_number: first.card_number.clone(),
                social_security_number: first.ssn.clone(),
                atr: atr(),
            },
            "ssc-2.0",
        ))
        .await
        .unwrap();

    // One audit record for the batch, naming its id and counts.
    let trail = kms.audit_trail();
    let record = trail[trail_before..]
        .iter()
        .find(|r| r.action == "submit-applicant-batch")
        .unwrap();
    assert_eq!(record.outcome, "ok");
    assert!(record.subject.contains(&sha), "{}", record.subject);
    assert!(
        record
            .subject
            .contains(&format!("{} rows, {accepted} accepted", rows.len())),
        "{}",
        record.subject
    );
    // No SSN reaches the audit trail.
    for (a, _) in &rows {
        assert!(trail.iter().all(|r| !r.subject.contains(&a.ssn)));
    }

    // Again (a dropped connection, a retry), in other chunks: the same verdicts, nothing
    // stored twice; one audit record says so.
    let cards = count(&kms, Table::Cards);
    let trail_len = kms.audit_trail().len();
    let again = submit_chunked(
        &mut city.registry,
        file.as_bytes(),
        "",
        pb::ApplicantFileEncoding::Utf8,
        4096,
    )
    .await
    .unwrap()
    .into_inner();
    assert!(again.resubmitted);
    assert_eq!(verdicts(&again), verdicts(&report));
    assert_eq!(again.lines, report.lines);
    assert_eq!(count(&kms, Table::Cards), cards);
    assert_eq!(count(&kms, Table::ApplicantBatches), 1);
    assert_eq!(kms.audit_trail().len(), trail_len + 1);

    // The same id for another file is refused.
    let other = csv(&[gz(50)]);
    kms.refused(
        Code::AlreadyExists,
        "an applicant batch with this id (of another file) already exists",
        submit_chunked(
            &mut city.registry,
            other.as_bytes(),
            &sha,
            pb::ApplicantFileEncoding::Unspecified,
            1000,
        ),
    )
    .await;
    // A batch id of the submitter's choosing.
    let named = submit_chunked(
        &mut city.registry,
        other.as_bytes(),
        "GZ-2024-06-01.a",
        pb::ApplicantFileEncoding::Unspecified,
        1000,
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        (named.batch_id.as_str(), named.accepted),
        ("GZ-2024-06-01.a", 1)
    );
    kms.refused(
        Code::InvalidArgument,
        "invalid batch_id",
        submit_chunked(
            &mut city.registry,
            other.as_bytes(),
            "no spaces",
            pb::ApplicantFileEncoding::Unspecified,
            1000,
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gbk_and_utf8_files_and_duplicates_across_batches() {
    let kms = TestKms::seeded().await;
    let mut city = kms.client(REGISTRAR);

    // Batch 1: UTF-8 with a byte-order mark.
    let first: Vec<Applicant> = (0..4).map(|n| applicant("440100", "GB", n)).collect();
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend_from_slice(csv(&first).as_bytes());
    let one = submit(&mut city.registry, &bytes)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (one.encoding.as_str(), one.accepted, one.rejected),
        ("utf8", 4, 0)
    );

    // Batch 2, exported in GBK, columns in another order: new applicants (one with a name of
    // exactly 30 GBK bytes, one of 32), and rows that repeat batch 1's number, identifier and
    // person.
    let new = |n| applicant("440100", "GC", n);
    let rows: Vec<(Applicant, &str)> = vec![
        (new(0), ""),
        (with(new(1), |a| a.name = "司马".repeat(7) + "光"), ""),
        (with(new(2), |a| a.name = "司马".repeat(8)), "name-too-long"),
        (
            with(new(3), |a| a.card_number.clone_from(&first[0].card_number)),
            "duplicate-card-number",
        ),
        (
            with(new(4), |a| {
                a.card_identifier.clone_from(&first[1].card_identifier);
            }),
            "duplicate-card-identifier",
        ),
        (
            with(new(5), |a| {
                a.ssn.clone_from(&first[2].ssn);
                a.birth_date.clone_from(&first[2].birth_date);
            }),
            "duplicate-ssn",
        ),
    ];
    let order = [6usize, 0, 1, 2, 3, 4, 5, 7];
    let names: Vec<&str> = HEADER.split(',').collect();
    let mut text = order.map(|i| names[i]).join(",") + "\r\n";
    for (a, _) in &rows {
        let f = a.fields();
        text.push_str(&order.map(|i| f[i]).join(","));
        text.push_str("\r\n");
    }
    let gbk_bytes = gbk(&text);
    assert!(std::str::from_utf8(&gbk_bytes).is_err(), "really GBK");
    let two = submit(&mut city.registry, &gbk_bytes)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(two.encoding, "gbk");
    for (i, (_, expected)) in rows.iter().enumerate() {
        assert_eq!(reasons_at(&two, i as u64 + 2), *expected, "line {}", i + 2);
    }
    assert_eq!((two.accepted, two.rejected), (2, 4));

    // Named explicitly, the same file is the same batch: stored verdicts, nothing again.
    let again = submit_chunked(
        &mut city.registry,
        &gbk_bytes,
        "",
        pb::ApplicantFileEncoding::Gb18030,
        333,
    )
    .await
    .unwrap()
    .into_inner();
    assert!(again.resubmitted);
    assert_eq!(verdicts(&again), verdicts(&two));
    // GBK bytes named UTF-8 cannot be read: line 2 holds the first Chinese name.
    kms.refused(
        Code::InvalidArgument,
        "line 2: not valid UTF-8",
        submit_chunked(
            &mut city.registry,
            &gbk(&csv(&[new(9)])),
            "",
            pb::ApplicantFileEncoding::Utf8,
            1000,
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_cannot_be_read_stores_nothing() {
    let kms = TestKms::seeded().await;
    let mut city = kms.client(REGISTRAR);
    let good: Vec<Applicant> = (0..3).map(|n| applicant("440100", "GD", n)).collect();
    let body = csv(&good);
    let seven_fields = {
        let mut t = body.clone();
        t.push_str("440103199001011236,张三,1,19900101,440100,GZ0000012,440100D1560000050050640776EF3199\n");
        t
    };
    let mut bad_bytes = body.clone().into_bytes();
    bad_bytes.extend_from_slice(b"440103199001011236,\xFF\xFE,1,19900101,440100,GD9999990,440100D156000005FFFF000000000000,2.00\n");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), "line 1: empty file"),
        (
            body.replacen("spec_version", "version", 1).into_bytes(),
            "line 1: unknown column \"version\" in the header",
        ),
        (
            body.replacen(",spec_version", "", 1).into_bytes(),
            "line 1: the header has no column \"spec_version\"",
        ),
        (
            seven_fields.into_bytes(),
            "line 5: 7 fields where the header has 8",
        ),
        (
            bad_bytes,
            "line 5: neither valid UTF-8 nor valid GB18030/GBK",
        ),
        (
            format!("{HEADER}\n").into_bytes(),
            "line 2: no applicant row",
        ),
    ];
    let cards = count(&kms, Table::Cards);
    for (file, message) in cases {
        let status = kms
            .refused(
                Code::InvalidArgument,
                message,
                submit(&mut city.registry, &file),
            )
            .await;
        assert!(status.message().starts_with("line "), "{status:?}");
    }
    // Nothing of any of them: no card, no batch (the refusals are audited).
    assert_eq!(count(&kms, Table::Cards), cards);
    assert_eq!(count(&kms, Table::ApplicantBatches), 0);
    for a in &good {
        assert_eq!(card_status(&kms, &a.card_identifier), None);
    }
    // The same rows in a readable file are then reviewed normally.
    let report = submit(&mut city.registry, body.as_bytes())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.accepted, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cities_submit_their_own_rows_and_only_the_province_accepts() {
    let kms = TestKms::seeded().await;
    let mut guangzhou = kms.client(REGISTRAR);
    // A Guangzhou registrar's file with Shenzhen rows: refused row by row, nothing stored.
    let sz = applicant("440300", "SZ", 1);
    let file = csv(&[applicant("440100", "GE", 1), sz.clone()]);
    let report = submit(&mut guangzhou.registry, file.as_bytes())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reasons_at(&report, 3),
        "card-identifier-region;region-mismatch"
    );
    assert_eq!(card_status(&kms, &sz.card_identifier), None);

    // Shenzhen may neither read Guangzhou's batch nor submit it as its own.
    let mut shenzhen = kms.client(SHENZHEN_REGISTRAR);
    kms.refused(
        Code::PermissionDenied,
        "outside the caller's region",
        shenzhen
            .registry
            .get_applicant_batch(pb::GetApplicantBatchRequest {
                batch_id: report.batch_id.clone(),
            }),
    )
    .await;
    kms.refused(
        Code::PermissionDenied,
        "the batch was submitted by another city",
        submit(&mut shenzhen.registry, file.as_bytes()),
    )
    .await;
    // The province reads every city's batch, but does not submit; a station does nothing here.
    let mut province = kms.client(PROVINCIAL_REGISTRAR);
    let read = province
        .registry
        .get_applicant_batch(pb::GetApplicantBatchRequest {
            batch_id: report.batch_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verdicts(&read), verdicts(&report));
    kms.refused(
        Code::NotFound,
        "applicant batch not found",
        province
            .registry
            .get_applicant_batch(pb::GetApplicantBatchRequest {
                batch_id: "no-such-batch".into(),
            }),
    )
    .await;
    kms.refused(
        Code::PermissionDenied,
        "applicant batches are submitted by a city registrar",
        submit(&mut province.registry, file.as_bytes()),
    )
    .await;
    kms.refused(
        Code::PermissionDenied,
        "role may not perform this operation",
        submit(&mut kms.client(STATION).registry, file.as_bytes()),
    )
    .await;
    // A city never accepts: neither a row by hand nor a card.
    kms.refused(
        Code::PermissionDenied,
        "only a provincial registrar may accept",
        guangzhou
            .registry
            .accept_applicant_row(pb::AcceptApplicantRowRequest {
                batch_id: report.batch_id.clone(),
                line: 3,
                note: String::new(),
            }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provincial_reviewer_accepts_a_waivable_row_by_hand() {
    let kms = TestKms::seeded().await;
    let mut city = kms.client(REGISTRAR);
    let mut province = kms.client(PROVINCIAL_REGISTRAR);
    let gz = |n| applicant("440100", "GF", n);
    let long_name = with(gz(1), |a| a.name = "欧阳".repeat(8));
    let mismatch = with(gz(2), |a| {
        a.birth_date = "19991231".into();
        a.sex = "0".into();
    });
    let bad_check = with(gz(3), |a| a.ssn = other_check(&a.ssn));
    let file = csv(&[gz(0), long_name.clone(), mismatch.clone(), bad_check]);
    let report = submit(&mut city.registry, file.as_bytes())
        .await
        .unwrap()
        .into_inner();
    let waivable: Vec<(u64, bool)> = report
        .rejected_rows
        .iter()
        .map(|r| (r.line, r.waivable))
        .collect();
    assert_eq!(waivable, [(3, true), (4, true), (5, false)]);
    assert_eq!(reasons_at(&report, 4), "birth-date-mismatch;sex-invalid");
    let accept = |line: u64| pb::AcceptApplicantRowRequest {
        batch_id: report.batch_id.clone(),
        line,
        note: "passport checked at the counter".into(),
    };

    let after = province
        .registry
        .accept_applicant_row(accept(3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((after.accepted, after.rejected), (2, 2));
    assert_eq!(reasons_at(&after, 3), "");
    assert_eq!(after.decisions.len(), 1);
    let d = &after.decisions[0];
    assert_eq!(
        (d.line, d.reviewer.as_str(), d.waived.as_slice()),
        (
            3,
            PROVINCIAL_REGISTRAR,
            ["name-too-long".to_owned()].as_slice()
        )
    );
    assert_eq!(
        card_status(&kms, &long_name.card_identifier).as_deref(),
        Some("accepted")
    );
    let trail = kms.audit_trail();
    let last = trail.last().unwrap();
    assert_eq!(
        (last.action.as_str(), last.actor.as_str()),
        ("accept-applicant-row", PROVINCIAL_REGISTRAR)
    );

    kms.refused(
        Code::FailedPrecondition,
        "the row is accepted already",
        province.registry.accept_applicant_row(accept(3)),
    )
    .await;
    kms.refused(
        Code::FailedPrecondition,
        "no reviewer may waive",
        province.registry.accept_applicant_row(accept(5)),
    )
    .await;
    kms.refused(
        Code::NotFound,
        "row of the batch not found",
        province.registry.accept_applicant_row(accept(99)),
    )
    .await;
    // Uniqueness is never waived: once another card holds the row's number, the row stays
    // rejected.
    let mut taken = gz(9);
    taken.card_number.clone_from(&mismatch.card_number);
    city.registry
        .register_card(pb::RegisterCardRequest {
            card: Some(pb::CardIdentity {
                card_identifier: taken.card_identifier.clone(),
                card_number: taken.card_number.clone(),
                social_security_number: taken.ssn.clone(),
                atr: Vec::new(),
            }),
            template_id: "ssc-2.0".into(),
            replaces_card_identifier: String::new(),
        })
        .await
        .unwrap();
    kms.refused(
        Code::AlreadyExists,
        "card number already exists",
        province.registry.accept_applicant_row(accept(4)),
    )
    .await;

    // The city's resubmission shows the decision.
    let again = submit(&mut city.registry, file.as_bytes())
        .await
        .unwrap()
        .into_inner();
    assert!(again.resubmitted);
    assert_eq!(verdicts(&again), verdicts(&after));
    assert_eq!(again.decisions, after.decisions);

    // The state survives a restart.
    let mut kms = kms;
    kms.close().await;
    kms.reopen(local_hsm()).await;
    let stored = kms
        .client(REGISTRAR)
        .registry
        .get_applicant_batch(pb::GetApplicantBatchRequest {
            batch_id: report.batch_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verdicts(&stored), verdicts(&after));
}
