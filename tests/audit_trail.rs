//! The audit trail after real traffic: offline verification (hash chain, and every seal's MAC
//! through the HSM's audit key), then edits made directly in the redb file — an edited record,
//! the same record re-hashed, the whole tail re-hashed with the seal heads and the store's head
//! — each caught. A trail cut short: caught by the store's head, by the unsealed tail, and —
//! when the cut is at a seal and the head rewritten to match — by an auditor's checkpoint.
//! Seals skipped while the HSM is sealed: one gap record in the chain, closed by the next seal.

use std::path::Path;
use std::sync::Arc;

use hsm_api::{Hsm, KeyToken};
use hsm_sim::local::LocalHsm;
use redb::{ReadableTable as _, TableDefinition};
use sscard_kms::card::template::KeyLevel;
use sscard_kms::ceremony::audit::{Report, verify, verify_against, verify_at};
use sscard_kms::proto::kms::v1 as pb;
use sscard_kms::state::audit::{AuditCheckpoint, AuditRecord, AuditSeal, ChainBreak, record_hash};
use sscard_kms::state::store::DB_FILE;
use tonic::Code;

use crate::common::chain::{atr, contains_hex, expected, published, published_secrets, template};
use crate::common::harness::{
    PSAM_LINE, STATION, TestKms, card_identity, sm_request, tr31_request,
};

const AUDIT: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("audit");
const SEALS: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("audit_seals");
const META: TableDefinition<'static, &'static str, &'static [u8]> = TableDefinition::new("meta");

/// `verify` with every seal's MAC checked by the HSM under the audit key. The checker blocks on
/// the test's runtime, so it runs on a blocking thread.
async fn verify_with_macs(dir: &Path, hsm: &Arc<LocalHsm>, audit_key: &KeyToken) -> Report {
    let (dir, hsm, key) = (dir.to_owned(), Arc::clone(hsm), audit_key.clone());
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let check = |message: &[u8], mac: &[u8]| -> bool {
            runtime.block_on(hsm.verify_mac(&key, message, mac)).is_ok()
        };
        verify(&dir, Some(&check)).unwrap()
    })
    .await
    .unwrap()
}

/// Rewrites records `seqs` of the (closed) store with `edit`, directly in the redb file.
fn edit_records(
    dir: &Path,
    seqs: std::ops::RangeInclusive<u64>,
    mut edit: impl FnMut(&mut AuditRecord),
) {
    let db = redb::Database::open(dir.join(DB_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(AUDIT).unwrap();
        for seq in seqs {
            let mut record: AuditRecord =
                serde_json::from_slice(table.get(seq).unwrap().unwrap().value()).unwrap();
            edit(&mut record);
            let bytes = serde_json::to_vec(&record).unwrap();
            table.insert(seq, bytes.as_slice()).unwrap();
        }
    }
    txn.commit().unwrap();
}

/// Rewrites every seal from `from` on with `edit`.
fn edit_seals(dir: &Path, from: u64, mut edit: impl FnMut(&mut AuditSeal)) {
    let db = redb::Database::open(dir.join(DB_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(SEALS).unwrap();
        let seqs: Vec<u64> = table
            .range(from..)
            .unwrap()
            .map(|entry| entry.unwrap().0.value())
            .collect();
        for seq in seqs {
            let mut seal: AuditSeal =
                serde_json::from_slice(table.get(seq).unwrap().unwrap().value()).unwrap();
            edit(&mut seal);
            let bytes = serde_json::to_vec(&seal).unwrap();
            table.insert(seq, bytes.as_slice()).unwrap();
        }
    }
    txn.commit().unwrap();
}

/// Rewrites the store's head (`meta/audit_head`) to name record `seq` with hash `hash`.
fn set_head(dir: &Path, seq: u64, hash: &str) {
    let db = redb::Database::open(dir.join(DB_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn.open_table(META).unwrap();
        let head = serde_json::json!({ "next_seq": seq + 1, "last_hash": hash }).to_string();
        meta.insert("audit_head", head.as_bytes()).unwrap();
    }
    txn.commit().unwrap();
}

/// Removes every record and seal from `from` on, as an attacker cutting the trail short.
fn cut(dir: &Path, from: u64) {
    let db = redb::Database::open(dir.join(DB_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    for def in [AUDIT, SEALS] {
        let mut table = txn.open_table(def).unwrap();
        let seqs: Vec<u64> = table
            .range(from..)
            .unwrap()
            .map(|entry| entry.unwrap().0.value())
            .collect();
        for seq in seqs {
            table.remove(seq).unwrap();
        }
    }
    txn.commit().unwrap();
}

fn read_trail(dir: &Path) -> (Vec<AuditRecord>, Vec<AuditSeal>) {
    sscard_kms::state::store::Store::open_read_only(dir)
        .unwrap()
        .audit_trail()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trail_verifies_offline_and_every_edit_is_caught() {
    if crate::common::harness::redb_only("edits of the trail in the redb file") {
        return;
    }
    let mut kms = TestKms::seeded().await;
    let keys = published();
    let atr = atr();
    let mut station = kms.client(STATION);
    let mut line = kms.client(PSAM_LINE);

    // Some traffic: both delivery forms, a PSAM key set, refusals.
    let mut delivered_hex = Vec::new();
    for demo in &keys.card {
        let card = card_identity(demo, &atr);
        station
            .card
            .inject_card_keys(tr31_request(card.clone(), &demo.template))
            .await
            .unwrap();
        let challenge = vec![0x5A; if demo.template == "ssc-3.0" { 16 } else { 8 }];
        station
            .card
            .inject_card_keys(sm_request(card, &demo.template, &[("STK_SSSE", challenge)]))
            .await
            .unwrap();
        let t = template(&demo.template);
        delivered_hex.extend(
            t.keys()
                .iter()
                .map(|spec| expected(spec, KeyLevel::Card, "440100", &atr).hex),
        );
    }
    line.psam
        .register_psams(pb::RegisterPsamsRequest {
            serials: vec!["AUDITPSAM1".to_owned()],
            region: "440100".to_owned(),
            template_id: "ssc-2.0".to_owned(),
            psam_profile: String::new(),
        })
        .await
        .unwrap();
    let set = line
        .psam
        .get_psam_key_set(pb::GetPsamKeySetRequest {
            serial: "AUDITPSAM1".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let t = template("ssc-2.0");
    for k in &set.keys {
        let level = match k.psam_usage >> 5 {
            1 => KeyLevel::City,
            2 => KeyLevel::Province,
            _ => KeyLevel::National,
        };
        delivered_hex.push(expected(t.key(&k.key_name).unwrap(), level, "440100", &atr).hex);
    }
    let mut shenzhen = kms.client("sscard://station/440300/SZ-01");
    kms.refused(
        Code::PermissionDenied,
        "outside the caller's region",
        shenzhen
            .card
            .inject_card_keys(tr31_request(card_identity(&keys.card[0], &atr), "ssc-2.0")),
    )
    .await;

    // Offline, with the server stopped and the store closed.
    let hsm = Arc::clone(kms.hsm());
    let audit_key = kms.kms().audit_key().expect("the audit key exists").clone();
    kms.close().await;
    let dir = kms.dir().to_owned();
    let (records, seals) = read_trail(&dir);
    let report = verify(&dir, None).unwrap();
    assert_eq!(report.broken, None, "{}", report.render());
    assert_eq!(report.records, records.len());
    assert!(report.seals > 1);
    assert_eq!(report.unsealed_tail, 0, "every commit was sealed");
    let report = verify_with_macs(&dir, &hsm, &audit_key).await;
    assert_eq!(report.broken, None, "{}", report.render());
    assert_eq!(
        report.macs_checked,
        seals.len(),
        "every seal's MAC verifies"
    );

    // No record holds a published key, a component, or any key that was delivered.
    let json = serde_json::to_string(&records).unwrap();
    for secret in published_secrets().iter().chain(&delivered_hex) {
        assert!(
            !contains_hex(&json, secret),
            "a clear key in the audit trail"
        );
    }

    // Record N, in the middle of the chain and covered by a later seal: the station's first
    // release.
    let n = records
        .iter()
        .find(|r| r.action == "inject-card-keys" && r.outcome == "ok")
        .unwrap()
        .seq;
    assert!(n < records.len() as u64);
    let first_seal_from_n = seals.iter().map(|s| s.seq).find(|&s| s >= n).unwrap();

    // 1. The subject edited: the record no longer matches its hash.
    edit_records(&dir, n..=n, |r| {
        r.subject = "card 440100D156000005************9999".to_owned()
    });
    assert_eq!(
        verify(&dir, None).unwrap().broken,
        Some(ChainBreak::Content { seq: n })
    );

    // 2. The edited record re-hashed: the next record no longer links to it.
    edit_records(&dir, n..=n, |r| r.hash = hex::encode_upper(record_hash(r)));
    assert_eq!(
        verify(&dir, None).unwrap().broken,
        Some(ChainBreak::Link { seq: n + 1 })
    );

    // 3. The whole tail re-linked and re-hashed, and the seals' heads moved along: the chain
    //    alone now looks intact — only the HSM's MAC over the seal gives the forgery away.
    let last = records.last().unwrap().seq;
    let mut prev = records[usize::try_from(n).unwrap() - 2].hash.clone();
    let mut new_hashes = std::collections::HashMap::new();
    edit_records(&dir, n..=last, |r| {
        r.prev = prev.clone();
        r.hash = hex::encode_upper(record_hash(r));
        prev = r.hash.clone();
        new_hashes.insert(r.seq, r.hash.clone());
    });
    edit_seals(&dir, n, |s| s.head = new_hashes[&s.seq].clone());
    // The store's own head still names the old last record.
    assert_eq!(
        verify(&dir, None).unwrap().broken,
        Some(ChainBreak::Head {
            head: last,
            chain_end: last
        })
    );
    set_head(&dir, last, &new_hashes[&last]);
    assert_eq!(verify(&dir, None).unwrap().broken, None);
    let report = verify_with_macs(&dir, &hsm, &audit_key).await;
    assert_eq!(
        report.broken,
        Some(ChainBreak::SealMac {
            seq: first_seal_from_n
        }),
        "{}",
        report.render()
    );
}

/// A checkpoint from the service, as an auditor takes it.
async fn checkpoint(kms: &TestKms<LocalHsm>) -> AuditCheckpoint {
    let mut auditor = kms.client("sscard://auditor/auditor-1");
    let c = auditor
        .admin
        .get_audit_checkpoint(pb::GetAuditCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    AuditCheckpoint {
        seq: c.seq,
        head: c.head,
        time_ms: c.time_ms,
        mac: c.mac,
    }
}

/// `verify_against` with every MAC checked by the HSM.
async fn verify_checkpoint(
    dir: &Path,
    hsm: &Arc<LocalHsm>,
    audit_key: &KeyToken,
    checkpoint: &AuditCheckpoint,
) -> Report {
    let (dir, hsm, key, cp) = (
        dir.to_owned(),
        Arc::clone(hsm),
        audit_key.clone(),
        checkpoint.clone(),
    );
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let check = |message: &[u8], mac: &[u8]| -> bool {
            runtime.block_on(hsm.verify_mac(&key, message, mac)).is_ok()
        };
        verify_against(&dir, Some(&check), Some(&cp)).unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trail_cut_short_is_caught_by_the_head_the_tail_or_a_checkpoint() {
    if crate::common::harness::redb_only("a trail cut in the redb file") {
        return;
    }
    let mut kms = TestKms::seeded().await;
    let keys = published();
    let mut station = kms.client(STATION);
    let inject = tr31_request(card_identity(&keys.card[0], &atr()), &keys.card[0].template);
    // One commit (and one seal) per request: the requests are sequential.
    for _ in 0..3 {
        station.card.inject_card_keys(inject.clone()).await.unwrap();
    }
    let cp = checkpoint(&kms).await;
    for _ in 0..3 {
        station.card.inject_card_keys(inject.clone()).await.unwrap();
    }
    // A checkpoint is only taken by auditors and officers, and that is audited.
    let refused = station
        .admin
        .get_audit_checkpoint(pb::GetAuditCheckpointRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let hsm = Arc::clone(kms.hsm());
    let audit_key = kms.kms().audit_key().expect("the audit key exists");
    kms.close().await;
    let dir = kms.dir().to_owned();
    let (records, seals) = read_trail(&dir);
    let last = records.last().unwrap().seq;
    assert_eq!(seals.last().unwrap().seq, last, "every commit sealed");
    assert!(cp.seq < last - 3, "{} {last}", cp.seq);
    let taken = records
        .iter()
        .find(|r| r.action == "audit-checkpoint")
        .unwrap();
    assert_eq!(taken.seq, cp.seq + 1);
    assert_eq!(taken.subject, format!("checkpoint of record {}", cp.seq));

    // Intact, and it reaches the checkpoint, whose MAC the HSM confirms.
    let report = verify_checkpoint(&dir, &hsm, &audit_key, &cp).await;
    assert_eq!(report.broken, None, "{}", report.render());
    assert_eq!(report.checkpoint, Some((cp.seq, true)));
    assert!(report.render().ends_with("INTACT\n"), "{}", report.render());

    // 1. The last record and its seal removed: the store's head still names it.
    cut(&dir, last);
    let report = verify(&dir, None).unwrap();
    assert_eq!(
        report.broken,
        Some(ChainBreak::Head {
            head: last,
            chain_end: last - 1
        }),
        "{}",
        report.render()
    );

    // 2. The head rewritten to match: the chain and its seals now end at a seal — only an
    //    anchor outside the store can tell. Cut back to before the checkpoint's record.
    cut(&dir, cp.seq);
    let end = &records[usize::try_from(cp.seq).unwrap() - 2];
    set_head(&dir, end.seq, &end.hash);
    let report = verify(&dir, None).unwrap();
    assert_eq!(report.broken, None, "undetectable from the store alone");
    let report = verify_checkpoint(&dir, &hsm, &audit_key, &cp).await;
    assert_eq!(
        report.broken,
        Some(ChainBreak::Truncated {
            seq: cp.seq,
            chain_end: cp.seq - 1
        }),
        "{}",
        report.render()
    );

    // 3. A forged checkpoint (another head, its MAC not the HSM's) is refused too.
    let mut forged = cp.clone();
    forged.seq = end.seq;
    forged.head = end.hash.clone();
    let report = verify_checkpoint(&dir, &hsm, &audit_key, &forged).await;
    assert_eq!(
        report.broken,
        Some(ChainBreak::CheckpointMac { seq: end.seq }),
        "{}",
        report.render()
    );

    // 4. Seals removed above a record, records and head kept: an unsealed tail, not INTACT.
    let tail_from = end.seq - 2;
    {
        let db = redb::Database::open(dir.join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(SEALS).unwrap();
            for seq in tail_from..=end.seq {
                table.remove(seq).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let report = verify(&dir, None).unwrap();
    assert_eq!(report.broken, None);
    assert_eq!(report.unsealed_tail, 3);
    assert!(
        report.render().ends_with(
            "UNSEALED: the last 3 records are not covered by an HSM seal (no gap record says why)\n"
        ),
        "{}",
        report.render()
    );
    assert!(sscard_kms::ceremony::audit::verdict(&report).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seals_skipped_while_the_hsm_is_sealed_leave_one_gap_record() {
    let mut kms = TestKms::seeded().await;
    let keys = published();
    let mut station = kms.client(STATION);
    let inject = tr31_request(card_identity(&keys.card[0], &atr()), &keys.card[0].template);
    let before = kms.audit_trail().len();
    kms.hsm().seal().await.unwrap();
    for _ in 0..3 {
        let refused = station
            .card
            .inject_card_keys(inject.clone())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    }
    let trail = kms.audit_trail();
    let new = &trail[before..];
    assert_eq!(new.len(), 4, "three refusals and one gap record: {new:?}");
    let gap = &new[1];
    assert_eq!(gap.action, "audit-seal-gap");
    assert_eq!(gap.actor, "system");
    assert_eq!(
        gap.subject,
        format!("records from {} on are not sealed by the HSM", new[0].seq)
    );
    assert_eq!(
        gap.outcome,
        "seal skipped: the HSM refused to MAC (sealed or unavailable)"
    );
    kms.close().await;
    let report = verify_at(kms.location(), None, None).unwrap();
    assert_eq!(report.broken, None);
    assert_eq!(report.unsealed_tail, 4);
    assert_eq!(report.seal_gaps, 1);
    assert!(report.tail_explained, "{}", report.render());

    // Open again on an operational HSM (the same test LMK): the open seals the tail at once.
    kms.reopen(crate::common::harness::local_hsm()).await;
    kms.close().await;
    let report = verify_at(kms.location(), None, None).unwrap();
    assert_eq!(report.broken, None);
    assert_eq!(report.unsealed_tail, 0, "{}", report.render());
    assert_eq!(report.seal_gaps, 1);
}
