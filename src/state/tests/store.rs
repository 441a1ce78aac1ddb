//! The store's guarantees, each on every engine (redb, and PostgreSQL when its binaries are
//! present: a throwaway cluster, see `state::postgres::test_cluster`).

use super::*;
use crate::state::postgres::test_cluster::{TestCluster, cluster_or_skip};
use crate::state::redb_engine::{audit_def, table_def};

/// One store under test, on one engine.
struct Under {
    name: &'static str,
    location: StoreLocation,
    _dir: Option<tempfile::TempDir>,
    db: Option<(&'static TestCluster, String)>,
}

impl Under {
    fn open(&self) -> Result<Store> {
        Store::open_at(&self.location, Arc::new(NoSealer))
    }

    /// Runs SQL on a PostgreSQL store, or edits a redb one with `redb_edit`.
    fn damage(&self, sql: &str, redb_edit: impl FnOnce(&redb::WriteTransaction)) {
        match (&self.location, &self.db) {
            (StoreLocation::Redb(dir), _) => {
                let db = redb::Database::open(dir.join(DB_FILE)).unwrap();
                let txn = db.begin_write().unwrap();
                redb_edit(&txn);
                txn.commit().unwrap();
            }
            (StoreLocation::Postgres(_), Some((cluster, name))) => {
                cluster.psql(name, sql).unwrap();
            }
            _ => unreachable!(),
        }
    }
}

/// A new, empty store on each engine there is.
fn every_engine(test: &str) -> Vec<Under> {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec![Under {
        name: "redb",
        location: StoreLocation::Redb(dir.path().to_owned()),
        _dir: Some(dir),
        db: None,
    }];
    if let Some(cluster) = cluster_or_skip(test) {
        let (name, config) = cluster.new_database();
        all.push(Under {
            name: "postgres",
            location: StoreLocation::Postgres(Box::new(config)),
            _dir: None,
            db: Some((cluster, name)),
        });
    }
    all
}

#[tokio::test]
async fn a_store_whose_head_is_missing_or_not_the_last_record_is_refused() {
    for under in every_engine("head checks") {
        let store = under.open().unwrap();
        store
            .audit(vec![AuditEvent::ok("system", "test", "one")])
            .await
            .unwrap();
        drop(store);
        // The head deleted, the records left: refused, and nothing is written.
        under.damage(
            "DELETE FROM kms_kv WHERE tbl = 'meta' AND key = 'audit_head'",
            |txn| {
                txn.open_table(table_def(Table::Meta))
                    .unwrap()
                    .remove(HEAD_KEY)
                    .unwrap();
            },
        );
        let err = under.open().unwrap_err();
        assert!(
            matches!(err, Error::StoreCorrupt(m) if m.contains("audit_head is missing")),
            "{}: {err:?}",
            under.name
        );
    }
    for under in every_engine("head checks") {
        // Records removed under a head that names them: refused too.
        let store = under.open().unwrap();
        for i in 0..3 {
            store
                .audit(vec![AuditEvent::ok("system", "test", format!("#{i}"))])
                .await
                .unwrap();
        }
        drop(store);
        under.damage("DELETE FROM kms_audit WHERE seq >= 4", |txn| {
            txn.open_table(audit_def()).unwrap().remove(5).unwrap();
            txn.open_table(audit_def()).unwrap().remove(4).unwrap();
        });
        let err = under.open().unwrap_err();
        assert!(
            matches!(err, Error::StoreCorrupt(m) if m.contains("not the last audit record")),
            "{}: {err:?}",
            under.name
        );
    }
}

#[tokio::test]
async fn a_skipped_seal_is_recorded_once_per_gap() {
    for under in every_engine("seal gaps") {
        let store = under.open().unwrap();
        for i in 0..3 {
            store
                .audit(vec![AuditEvent::ok("system", "test", format!("#{i}"))])
                .await
                .unwrap();
        }
        let (records, seals) = store.snapshot().unwrap().audit_trail().unwrap();
        assert!(seals.is_empty());
        let gaps: Vec<&AuditRecord> = records
            .iter()
            .filter(|r| r.action == SEAL_GAP_ACTION)
            .collect();
        assert_eq!(gaps.len(), 1, "{}: {records:?}", under.name);
        assert_eq!(gaps[0].seq, 2, "right after the first unsealed record");
        assert_eq!(
            gaps[0].subject,
            "records from 1 on are not sealed by the HSM"
        );
        assert_eq!(
            gaps[0].outcome,
            "seal skipped: no audit key yet (the HSM has not been operational)"
        );
        assert_eq!(records.len(), 4);
    }
}

/// A sealer that MACs with a fixed tag (the bytes do not matter here, only that seals exist).
struct TagSealer;

impl Sealer for TagSealer {
    fn seal(&self, message: &[u8]) -> Result<Vec<u8>, SealSkipped> {
        Ok(message[..4].to_vec())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_read_back_in_key_order_and_a_refused_request_leaves_nothing() {
    for under in every_engine("reads and writes") {
        let store = Store::open_at(&under.location, Arc::new(TagSealer)).unwrap();
        store
            .write(|tx| {
                for key in ["b/2", "a/1", "b/1", "c", "b\u{10FFFF}"] {
                    tx.put(Table::Cards, key, &key.to_owned())?;
                }
                // The transaction reads its own writes, merged with what is stored.
                let b: Vec<(String, String)> = tx.scan(Table::Cards, "b")?;
                assert_eq!(b.len(), 3);
                assert_eq!(tx.get::<String>(Table::Cards, "c")?.as_deref(), Some("c"));
                tx.audit(AuditEvent::ok("system", "test", "five"));
                Ok(())
            })
            .await
            .unwrap();
        let refused = store
            .write(|tx| {
                if tx.get::<String>(Table::Cards, "a/1")?.is_some() {
                    return Err(Error::Store);
                }
                tx.put(Table::Cards, "never", &"x".to_owned())
            })
            .await;
        assert!(refused.is_err());
        let snapshot = store.snapshot().unwrap();
        let b: Vec<(String, String)> = snapshot.scan(Table::Cards, "b/").unwrap();
        let keys: Vec<&str> = b.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b/1", "b/2"], "{}", under.name);
        let all: Vec<(String, String)> = snapshot.scan(Table::Cards, "").unwrap();
        assert_eq!(all.len(), 5, "{}", under.name);
        assert_eq!(snapshot.get::<String>(Table::Cards, "never").unwrap(), None);
        assert_eq!(snapshot.get::<String>(Table::Keys, "c").unwrap(), None);
        let (records, seals) = snapshot.audit_trail().unwrap();
        assert_eq!((records.len(), seals.len()), (1, 1), "{}", under.name);
        assert_eq!(snapshot.audit_head().unwrap().unwrap().next_seq, 2);
    }
}

/// Cached reads (`state::cache`) are what the snapshot would read: a write to a cached table
/// is seen by the next snapshot, a snapshot opened before it keeps its own view, a refused
/// request's write changes nothing; on PostgreSQL a second instance's write is seen at once.
#[tokio::test]
async fn cached_reads_follow_every_commit() {
    for under in every_engine("cached reads") {
        let store = under.open().unwrap();
        let put = |store: &Store, value: &'static str| {
            let store = store.clone();
            async move {
                store
                    .write(move |tx| {
                        tx.put(Table::Keys, "k/1", &value.to_owned())?;
                        tx.put(Table::Endpoints, "e", &value.to_owned())
                    })
                    .await
            }
        };
        put(&store, "one").await.unwrap();
        let before = store.snapshot().unwrap();
        let shared = |snap: &Snapshot| {
            let get = snap.get_shared::<String>(Table::Keys, "k/1").unwrap();
            let scan = snap.scan_shared::<String>(Table::Keys, "k/").unwrap();
            let endpoint = snap.get_shared::<String>(Table::Endpoints, "e").unwrap();
            (
                Option::clone(&get),
                scan.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
                Option::clone(&endpoint),
            )
        };
        let one = (
            Some("one".to_owned()),
            vec!["one".to_owned()],
            Some("one".to_owned()),
        );
        assert_eq!(shared(&before), one, "{}", under.name);
        put(&store, "two").await.unwrap();
        let two = (
            Some("two".to_owned()),
            vec!["two".to_owned()],
            Some("two".to_owned()),
        );
        assert_eq!(shared(&store.snapshot().unwrap()), two, "{}", under.name);
        assert_eq!(
            shared(&before),
            one,
            "{}: the older snapshot's view",
            under.name
        );
        assert_eq!(shared(&store.snapshot().unwrap()), two, "{}", under.name);
        let refused = store
            .write(|tx| {
                tx.put(Table::Keys, "k/1", &"three".to_owned())?;
                Err::<(), _>(Error::Store)
            })
            .await;
        assert!(refused.is_err());
        // The refused job's put stayed in its batch (as `Tx::put` says): what is read is
        // what was committed, either way.
        let after = store.snapshot().unwrap();
        let committed: Option<String> = after.get(Table::Keys, "k/1").unwrap();
        assert_eq!(
            Option::clone(&after.get_shared::<String>(Table::Keys, "k/1").unwrap()),
            committed,
            "{}",
            under.name
        );
        if let StoreLocation::Postgres(_) = under.location {
            let other = under.open().unwrap();
            put(&other, "four").await.unwrap();
            let four = (
                Some("four".to_owned()),
                vec!["four".to_owned()],
                Some("four".to_owned()),
            );
            assert_eq!(
                shared(&store.snapshot().unwrap()),
                four,
                "another instance's write"
            );
        }
    }
}

/// Two instances on one PostgreSQL database, writing at once from many tasks each: one chain,
/// every record in it once, no gap and no fork, every head sealed by the instance that wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_database_make_one_chain() {
    let Some(cluster) = cluster_or_skip("two instances") else {
        return;
    };
    let (_, config) = cluster.new_database();
    let location = StoreLocation::Postgres(Box::new(config));
    let a = Store::open_at(&location, Arc::new(TagSealer)).unwrap();
    let b = Store::open_at(&location, Arc::new(TagSealer)).unwrap();
    const PER_TASK: usize = 25;
    const TASKS: usize = 8;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = if t % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                let key = format!("{t}/{i}");
                store
                    .write(move |tx| {
                        // A read-modify-write of one shared counter: serialised writers never
                        // lose an update.
                        let n: u64 = tx.get(Table::Meta, "counter")?.unwrap_or(0);
                        tx.put(Table::Meta, "counter", &(n + 1))?;
                        tx.put(Table::Cards, &key, &key)?;
                        tx.audit(AuditEvent::ok("system", "test", key.clone()));
                        Ok(())
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let snapshot = a.snapshot().unwrap();
    let (records, seals) = snapshot.audit_trail().unwrap();
    assert_eq!(records.len(), TASKS * PER_TASK);
    let hashes = audit::verify_chain(&records).unwrap();
    let mut subjects: Vec<&str> = records.iter().map(|r| r.subject.as_str()).collect();
    subjects.sort_unstable();
    subjects.dedup();
    assert_eq!(subjects.len(), TASKS * PER_TASK, "every record once");
    let counter: u64 = snapshot.get(Table::Meta, "counter").unwrap().unwrap();
    assert_eq!(counter, (TASKS * PER_TASK) as u64, "no lost update");
    let head = snapshot.audit_head().unwrap().unwrap();
    assert_eq!(head.next_seq, records.len() as u64 + 1);
    assert_eq!(head.last_hash, *hashes.last().unwrap());
    for seal in &seals {
        let hash = hashes[usize::try_from(seal.seq).unwrap() - 1];
        assert_eq!(seal.head, hex::encode_upper(hash), "seal {}", seal.seq);
    }
    assert_eq!(
        seals.last().unwrap().seq,
        records.len() as u64,
        "the head is sealed"
    );
    // Group commit: fewer transactions than requests.
    assert!(seals.len() < records.len(), "{} commits", seals.len());
    eprintln!(
        "two instances: {} records in {} commits",
        records.len(),
        seals.len()
    );
}

#[tokio::test]
async fn a_postgres_schema_newer_than_the_binary_is_refused() {
    let Some(cluster) = cluster_or_skip("schema versions") else {
        return;
    };
    let (name, config) = cluster.new_database();
    let location = StoreLocation::Postgres(Box::new(config));
    drop(Store::open_at(&location, Arc::new(NoSealer)).unwrap());
    let version = cluster
        .psql(&name, "SELECT max(version) FROM kms_schema")
        .unwrap();
    assert_eq!(version, crate::state::postgres::SCHEMA_VERSION.to_string());
    // Opening again migrates nothing.
    drop(Store::open_at(&location, Arc::new(NoSealer)).unwrap());
    cluster
        .psql(&name, "INSERT INTO kms_schema (version) VALUES (999)")
        .unwrap();
    let err = Store::open_at(&location, Arc::new(NoSealer)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::FailedPrecondition {
                reason: crate::error::Refusal::StoreSchemaNewer
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_redb_store_migrates_to_postgres_verified_and_only_into_an_empty_one() {
    let Some(cluster) = cluster_or_skip("store migrate") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Arc::new(TagSealer)).unwrap();
    for i in 0..20 {
        store
            .write(move |tx| {
                tx.put(Table::Keys, &format!("k{i:02}"), &i)?;
                tx.audit(AuditEvent::ok("system", "test", format!("#{i}")));
                Ok(())
            })
            .await
            .unwrap();
    }
    let source = store.snapshot().unwrap().audit_trail().unwrap();
    drop(store);
    let (_, config) = cluster.new_database();
    let copied = crate::state::migrate::redb_to_postgres(dir.path(), &config).unwrap();
    assert_eq!(copied.records, 20);
    assert_eq!(copied.seals, source.1.len());
    assert!(!copied.repaired_copy);
    // The copy serves: the chain continues where it was.
    let location = StoreLocation::Postgres(Box::new(config.clone()));
    let pg = Store::open_at(&location, Arc::new(TagSealer)).unwrap();
    assert_eq!(pg.snapshot().unwrap().audit_trail().unwrap(), source);
    pg.audit(vec![AuditEvent::ok("system", "test", "after")])
        .await
        .unwrap();
    let (records, _) = pg.snapshot().unwrap().audit_trail().unwrap();
    assert_eq!(records.len(), 21);
    audit::verify_chain(&records).unwrap();
    drop(pg);
    // Never over a store that holds something.
    let again = crate::state::migrate::redb_to_postgres(dir.path(), &config).unwrap_err();
    assert!(
        matches!(
            again,
            Error::FailedPrecondition {
                reason: crate::error::Refusal::StoreNotEmpty
            }
        ),
        "{again:?}"
    );
}
