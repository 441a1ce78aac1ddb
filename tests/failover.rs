//! High availability on PostgreSQL: two `sscard-kms dev` processes (each with its own HSM on the
//! same test LMK, as an HSM pair has one LMK) on one database, injections through both, one
//! SIGKILLed mid-load. Every acknowledged release is on record, the other instance kept serving,
//! the one audit chain verifies end to end with every seal's MAC checked, and no card is
//! half-released. And a `dev` store on redb moved to PostgreSQL by `sscard-kms store migrate`,
//! verified there by `kms-ceremony audit verify --store`, serves the same keys. The database is
//! a throwaway cluster started by the test
//! (`state::postgres::test_cluster`); without PostgreSQL binaries the test says it is skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sscard_kms::ceremony::audit::{verdict, verify_with_test_lmk_at};
use sscard_kms::proto::kms::v1::card_key_service_client::CardKeyServiceClient;
use sscard_kms::service::mask_card_identifier;
use sscard_kms::state::postgres::test_cluster::cluster_or_skip;
use sscard_kms::state::records::Card;
use sscard_kms::state::store::{Store, StoreLocation, Table};
use tokio::sync::mpsc::UnboundedSender;

use crate::binaries::{channel, inject_demo_card, path_arg, role, sscard_kms};
use crate::common::ceremony;
use crate::common::chain::{atr, published};
use crate::common::harness::{STATION, card_identity, tr31_request};

/// Releases acknowledged by the instance that is killed before the kill.
const ACKED_BEFORE_KILL: usize = 60;
/// Releases the other instance must acknowledge after the kill.
const ACKED_AFTER_KILL: usize = 40;
/// Injections in flight at once on each instance.
const IN_FLIGHT: usize = 6;

/// Injects until the server fails under it or `stop` is set; each acknowledged release is sent
/// on `acks` and counted.
fn load(
    station: &CardKeyServiceClient<tonic::transport::Channel>,
    request: &sscard_kms::proto::kms::v1::InjectCardKeysRequest,
    acks: &UnboundedSender<()>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..IN_FLIGHT)
        .map(|_| {
            let (mut station, request, acks, stop) = (
                station.clone(),
                request.clone(),
                acks.clone(),
                Arc::clone(stop),
            );
            tokio::spawn(async move {
                let mut mine = 0usize;
                while !stop.load(Ordering::SeqCst)
                    && station.inject_card_keys(request.clone()).await.is_ok()
                {
                    mine += 1;
                    let _ = acks.send(());
                }
                mine
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgres_one_killed_under_load_lose_nothing_and_keep_one_chain() {
    let Some(cluster) = cluster_or_skip("the failover test") else {
        return;
    };
    let (name, config) = cluster.new_database();
    let url = cluster.url(&name);
    let (password, ca) = (cluster.password_file(), cluster.ca_file());
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let args = |dir: &std::path::Path| -> Vec<String> {
        [
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--no-metrics",
            "--data-dir",
            path_arg(dir),
            "--store",
            &url,
            "--store-password-file",
            path_arg(&password),
            "--store-ca",
            path_arg(&ca),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let spawn = |dir: &std::path::Path| {
        let args = args(dir);
        sscard_kms(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // The first instance seeds the database; the second finds it seeded.
    let mut first = spawn(dirs[0].path());
    let first_addr = first.listening_on();
    assert!(first.line_containing("data ").ends_with("(seeded now)"));
    assert!(
        first
            .line_containing("store ")
            .contains(&format!("/{name}"))
    );
    let mut second = spawn(dirs[1].path());
    let second_addr = second.listening_on();
    assert!(second.line_containing("data ").ends_with("(existing)"));

    let keys = published();
    let demo = &keys.card[0];
    let mut request = tr31_request(card_identity(demo, &atr()), &demo.template);
    request.key_names = vec!["STK_SSSE".to_owned()];
    let station = |addr, dir: &std::path::Path| {
        CardKeyServiceClient::new(channel(addr, &dir.join("pki"), &role(STATION)))
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (first_acks, mut first_acked) = tokio::sync::mpsc::unbounded_channel();
    let (second_acks, mut second_acked) = tokio::sync::mpsc::unbounded_channel();
    let killed_tasks = load(
        &station(first_addr, dirs[0].path()),
        &request,
        &first_acks,
        &stop,
    );
    let survivor_tasks = load(
        &station(second_addr, dirs[1].path()),
        &request,
        &second_acks,
        &stop,
    );
    drop((first_acks, second_acks));
    for _ in 0..ACKED_BEFORE_KILL {
        first_acked.recv().await.expect("the first instance serves");
    }
    second_acked
        .recv()
        .await
        .expect("the second instance serves");
    let status = first.kill();
    assert!(!status.success(), "{status:?}");
    let mut acknowledged = 0;
    for t in killed_tasks {
        acknowledged += t.await.unwrap();
    }
    assert!(acknowledged >= ACKED_BEFORE_KILL);
    // The survivor goes on: its acknowledgements after the kill (drain those from before).
    while second_acked.try_recv().is_ok() {}
    for _ in 0..ACKED_AFTER_KILL {
        second_acked
            .recv()
            .await
            .expect("the second instance keeps serving after the first is killed");
    }
    stop.store(true, Ordering::SeqCst);
    let mut survived = 0;
    for t in survivor_tasks {
        survived += t.await.unwrap();
    }
    assert!(survived > ACKED_AFTER_KILL);
    let exited = second.terminate();
    assert!(exited.status.success(), "{exited:?}");

    // One chain, end to end: every record linked, the head the last record, every seal's MAC
    // checked by a test-LMK HSM, nothing unsealed.
    let location = StoreLocation::Postgres(Box::new(config));
    // (On a thread of its own: the check runs its own runtime for the HSM.)
    let checked = location.clone();
    let report = std::thread::spawn(move || verify_with_test_lmk_at(&checked, None))
        .join()
        .unwrap()
        .unwrap();
    assert!(report.broken.is_none(), "{report:?}");
    assert_eq!(report.unsealed_tail, 0, "{report:?}");
    assert!(report.macs_checked > 0, "{report:?}");
    verdict(&report).unwrap();

    // Every acknowledged release on record (a release committed as the first died, but not
    // answered, may be there too), and the card released whole: its ATR and root versions with
    // the releases; the other demo card untouched.
    let (snapshot, _) = Store::open_for_audit_at(&location).unwrap();
    let (records, _) = snapshot.audit_trail().unwrap();
    let masked = mask_card_identifier(&demo.card_identifier);
    let releases: Vec<_> = records
        .iter()
        .filter(|r| r.action == "inject-card-keys" && r.outcome == "ok")
        .collect();
    let total = acknowledged + survived;
    assert!(
        releases.len() >= total,
        "{} releases on record, {total} acknowledged",
        releases.len()
    );
    assert!(
        releases.len() <= total + IN_FLIGHT,
        "{} {total}",
        releases.len()
    );
    assert!(releases.iter().all(|r| r.subject.contains(&masked)));
    let card: Card = snapshot
        .get(Table::Cards, &demo.card_identifier)
        .unwrap()
        .unwrap();
    assert_eq!(card.atr.as_deref(), Some(hex::encode_upper(atr()).as_str()));
    assert!(!card.issued_root_versions.is_empty(), "{card:?}");
    let other = &keys.card[1];
    let untouched: Card = snapshot
        .get(Table::Cards, &other.card_identifier)
        .unwrap()
        .unwrap();
    assert_eq!(untouched.atr, None);
    let other_masked = mask_card_identifier(&other.card_identifier);
    assert_ne!(other_masked, masked);
    assert!(!releases.iter().any(|r| r.subject.contains(&other_masked)));
    drop(snapshot);

    // The killed instance starts again on the same database and serves.
    let mut again = spawn(dirs[0].path());
    let addr = again.listening_on();
    station(addr, dirs[0].path())
        .inject_card_keys(request)
        .await
        .unwrap();
    let exited = again.terminate();
    assert!(exited.status.success(), "{exited:?}");
    eprintln!(
        "failover: {acknowledged} acknowledged by the killed instance, {survived} by the survivor, \
         {} releases on record, {} records",
        releases.len(),
        records.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redb_dev_store_moves_to_postgres_verified_and_serves_the_same_keys() {
    let Some(cluster) = cluster_or_skip("store migrate") else {
        return;
    };
    let (name, _) = cluster.new_database();
    let url = cluster.url(&name);
    let (password, ca) = (cluster.password_file(), cluster.ca_file());
    let pg = [
        "--store-password-file",
        path_arg(&password),
        "--store-ca",
        path_arg(&ca),
    ];
    let data = tempfile::tempdir().unwrap();
    let pki = data.path().join("pki");
    let store = data.path().join("store");
    let dev = [
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--no-metrics",
        "--data-dir",
    ];
    let on_redb: Vec<&str> = dev.into_iter().chain([path_arg(data.path())]).collect();
    let mut kms = sscard_kms(&on_redb);
    let addr = kms.listening_on();
    let before = inject_demo_card(addr, &pki).await;
    assert!(kms.terminate().status.success());

    let migrate: Vec<&str> = ["store", "migrate", "--from", "redb", path_arg(&store)]
        .into_iter()
        .chain(["--to", url.as_str()])
        .chain(pg)
        .collect();
    let copied = sscard_kms(&migrate).wait();
    assert!(copied.status.success(), "{copied:?}");
    assert!(copied.stdout.ends_with("VERIFIED"), "{copied:?}");
    assert!(copied.stdout.contains(&format!("/{name}")), "{copied:?}");
    // The trail on PostgreSQL verifies with every seal's MAC.
    let verify: Vec<&str> = ["audit", "verify", "--store", url.as_str()]
        .into_iter()
        .chain(pg)
        .chain(["--dangerous-test-lmk"])
        .collect();
    let out = ceremony(&verify, "");
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.last_line(), "INTACT", "{out:?}");

    // `dev` on the copy: not seeded again, the same keys.
    let on_pg: Vec<&str> = on_redb
        .iter()
        .copied()
        .chain(["--store", url.as_str()])
        .chain(pg)
        .collect();
    let mut kms = sscard_kms(&on_pg);
    let addr = kms.listening_on();
    assert!(kms.line_containing("data ").ends_with("(existing)"));
    assert_eq!(inject_demo_card(addr, &pki).await, before);
    assert!(kms.terminate().status.success());

    // Never into a store that holds something.
    let again = sscard_kms(&migrate).wait();
    assert!(!again.status.success(), "{again:?}");
    assert!(again.stderr.contains("not empty"), "{again:?}");
}
