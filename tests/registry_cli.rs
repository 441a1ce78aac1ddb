//! `kms-ceremony registry` as a registrar runs it: the real binary against the service over
//! mutual TLS, with the registrar's certificate files (`--ca/--cert/--key`) or a dev data
//! directory's PKI (`--data-dir`).

use std::path::{Path, PathBuf};

use sscard_kms::access::identity::Identity;
use sscard_kms::state::store::Table;

use crate::common::applicants::{Applicant, applicant, csv, gbk};
use crate::common::harness::{REGISTRAR, TestKms};
use crate::common::{Output, ceremony};
use hsm_sim::local::LocalHsm;

/// The registrar's PEM files under `dir`: `(ca, cert, key)`.
pub(crate) fn registrar_files(kms: &TestKms<LocalHsm>, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let pair = kms
        .pki()
        .client(&Identity::from_uri(REGISTRAR).unwrap())
        .unwrap();
    let paths = (dir.join("ca.pem"), dir.join("gz.pem"), dir.join("gz.key"));
    std::fs::write(&paths.0, kms.pki().ca_pem()).unwrap();
    std::fs::write(&paths.1, &pair.cert_pem).unwrap();
    std::fs::write(&paths.2, pair.key_pem.as_bytes()).unwrap();
    paths
}

pub(crate) fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// Runs `kms-ceremony` off the test's runtime (the server runs on it).
pub(crate) async fn run(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ceremony(&args, "")
    })
    .await
    .unwrap()
}

fn count(kms: &TestKms<LocalHsm>, table: Table) -> usize {
    kms.kms()
        .store()
        .snapshot()
        .unwrap()
        .scan::<serde_json::Value>(table, "")
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_submit_reports_counts_and_verdicts_and_refuses_unreadable_files() {
    let kms = TestKms::seeded().await;
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = registrar_files(&kms, tmp.path());
    let connection = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        v.extend([
            "--endpoint".into(),
            kms.url(),
            "--ca".into(),
            s(&ca),
            "--cert".into(),
            s(&cert),
            "--key".into(),
            s(&key),
        ]);
        v
    };

    // A UTF-8 file: two good rows and one with a wrong SSN check character and no name.
    let gz = |n| applicant("440100", "GH", n);
    let mut bad = gz(2);
    let last = if bad.ssn.ends_with('1') { '2' } else { '1' };
    bad.ssn = format!("{}{last}", &bad.ssn[..17]);
    bad.name.clear();
    let rows: Vec<Applicant> = vec![gz(0), gz(1), bad];
    let file = tmp.path().join("gz-2024-06.csv");
    std::fs::write(&file, csv(&rows)).unwrap();
    let report = tmp.path().join("verdicts.csv");
    let out = run(connection(&[
        "registry",
        "submit",
        &s(&file),
        "--report",
        &s(&report),
    ]))
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    for line in [
        "rows 3",
        "accepted 2",
        "rejected 1",
        "  ssn-check 1",
        "  name-missing 1",
        "encoding utf8",
        "region 440100",
    ] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "{line:?} in {}",
            out.stdout
        );
    }
    assert!(!out.stdout.contains("resubmitted"));
    assert_eq!(
        std::fs::read_to_string(&report).unwrap(),
        "line,verdict,reasons\n2,accepted,\n3,accepted,\n4,rejected,ssn-check;name-missing\n"
    );

    // The same file again: the stored verdicts, nothing stored twice.
    let cards = count(&kms, Table::Cards);
    let out = run(connection(&["registry", "submit", &s(&file)])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("resubmitted"), "{}", out.stdout);
    assert!(out.stdout.lines().any(|l| l == "accepted 2"));
    assert_eq!(count(&kms, Table::Cards), cards);

    // GBK, named so, with a batch id.
    let gbk_file = tmp.path().join("gz-2024-07-gbk.csv");
    std::fs::write(&gbk_file, gbk(&csv(&[gz(3), gz(4)]))).unwrap();
    let out = run(connection(&[
        "registry",
        "submit",
        &s(&gbk_file),
        "--encoding",
        "gbk",
        "--batch-id",
        "GZ-2024-07",
    ]))
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    for line in ["batch GZ-2024-07", "encoding gbk", "accepted 2"] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "{line:?} in {}",
            out.stdout
        );
    }

    // Unreadable: exit 2 with `line N: reason`, nothing stored.
    let batches = count(&kms, Table::ApplicantBatches);
    let cards = count(&kms, Table::Cards);
    let broken = tmp.path().join("broken.csv");
    let mut text = csv(&[gz(5), gz(6)]);
    text.push_str("440103199001011236,张三,1,19900101,440100,GZ0000012\n");
    std::fs::write(&broken, text).unwrap();
    let out = run(connection(&["registry", "submit", &s(&broken)])).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("line 4: 6 fields where the header has 8"),
        "{}",
        out.stderr
    );
    let out = run(connection(&[
        "registry",
        "submit",
        &s(&gbk_file),
        "--encoding",
        "utf8",
    ]))
    .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("line 2: not valid UTF-8"),
        "{}",
        out.stderr
    );
    assert_eq!(count(&kms, Table::ApplicantBatches), batches);
    assert_eq!(count(&kms, Table::Cards), cards);
    // No progress bar when stdout is not a terminal: nothing but the counts on stdout.
    assert!(!out.stdout.contains("sending"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_data_directory_serves_the_city_and_the_provincial_reviewer() {
    let kms = TestKms::seeded().await;
    let tmp = tempfile::tempdir().unwrap();
    // A dev data directory laid out as `sscard-kms dev` does, with this server's CA.
    kms.pki().write_to(&tmp.path().join("pki")).unwrap();
    let data_dir = s(tmp.path());
    let gz = |n| applicant("440100", "GI", n);
    let mut long_name = gz(1);
    long_name.name = "欧阳".repeat(8);
    let file = tmp.path().join("applicants.csv");
    std::fs::write(&file, csv(&[gz(0), long_name.clone()])).unwrap();
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        v.extend([
            "--endpoint".into(),
            kms.url(),
            "--data-dir".into(),
            data_dir.clone(),
        ]);
        v
    };
    let out = run(args(&["registry", "submit", &s(&file)])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("waivable 1"), "{}", out.stdout);
    let batch = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("batch "))
        .unwrap()
        .to_owned();

    // The province's reviewer (reviewer.pem) accepts the row by hand.
    let out = run(args(&[
        "registry",
        "accept-row",
        "--batch-id",
        &batch,
        "--line",
        "3",
        "--note",
        "name as in the passport",
    ]))
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.starts_with("line 3 accepted\n"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.lines().any(|l| l == "accepted 2"));
    let card = kms
        .kms()
        .store()
        .snapshot()
        .unwrap()
        .get::<serde_json::Value>(Table::Cards, &long_name.card_identifier)
        .unwrap()
        .unwrap();
    assert_eq!(card["status"], "accepted");

    // The city reads the batch with the decision, and writes the report.
    let report = tmp.path().join("report.csv");
    let out = run(args(&[
        "registry",
        "show",
        "--batch-id",
        &batch,
        "--report",
        &s(&report),
    ]))
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("accepted by hand 1"), "{}", out.stdout);
    assert_eq!(
        std::fs::read_to_string(&report).unwrap(),
        "line,verdict,reasons\n2,accepted,\n3,accepted,\n"
    );
    // The city's own certificate cannot accept (the reviewer's pair is replaced by it here).
    let pki = tmp.path().join("pki");
    std::fs::copy(pki.join("registrar.pem"), pki.join("reviewer.pem")).unwrap();
    std::fs::copy(pki.join("registrar.key"), pki.join("reviewer.key")).unwrap();
    let out = run(args(&[
        "registry",
        "accept-row",
        "--batch-id",
        &batch,
        "--line",
        "2",
    ]))
    .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("only a provincial registrar may accept"),
        "{}",
        out.stderr
    );

    // The city reads its card holder's personal data in clear (sealed in the store).
    let out = run(args(&[
        "registry",
        "personal-data",
        &long_name.card_identifier,
    ]))
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout,
        format!(
            "card {}\nsocial security number {}\ncard number {}\nname {}\n",
            long_name.card_identifier, long_name.ssn, long_name.card_number, long_name.name
        )
    );
    assert!(
        kms.audit_trail()
            .iter()
            .any(|r| r.action == "read-card-personal-data"
                && r.actor == crate::common::harness::REGISTRAR
                && r.subject.ends_with("read in clear")),
        "the read is audited"
    );
}
