//! Durable state on redb: key records (LMK-wrapped tokens and KCVs only), templates, stations,
//! PSAM lines, PSAMs, cards, and the audit trail.
//!
//! Why redb and not sled: see ARCHITECTURE.md ("Decisions"). In short, a commit here is an
//! fsync, and an acknowledged change must survive a power cut.
//!
//! **One atomic write per state change.** Every change goes through [`Store::write`] with the
//! audit records that describe it; both land in the same redb transaction or neither does.
//! Writes are **group-committed**: a single writer thread takes every request waiting, applies
//! them in one transaction, seals the audit chain head with the HSM (see [`crate::state::audit`]),
//! commits (one fsync for the batch) and only then answers each request. A request's closure
//! must validate before it writes: it returns an error *before* its first `put`, so a refused
//! request leaves nothing behind in the batch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::error::{Error, Refusal, Result};
use crate::metrics::StoreMetrics;
use crate::state::audit::{self, AuditEvent, AuditRecord, AuditSeal, ChainHead};

/// Named tables of JSON values keyed by strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Meta,
    Templates,
    Keys,
    Endpoints,
    Psams,
    Cards,
    CardNumbers,
    SocialSecurityNumbers,
    /// The registry review's batches (`crate::registry::batch::StoredBatch`), by batch id.
    ApplicantBatches,
    /// `template/card factor (hex)` → the card identifier it is bound to
    /// (`crate::registry::lifecycle`).
    CardFactors,
}

impl Table {
    const fn def(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(match self {
            Table::Meta => "meta",
            Table::Templates => "templates",
            Table::Keys => "keys",
            Table::Endpoints => "endpoints",
            Table::Psams => "psams",
            Table::Cards => "cards",
            Table::CardNumbers => "card_numbers",
            Table::SocialSecurityNumbers => "ssns",
            Table::ApplicantBatches => "applicant_batches",
            Table::CardFactors => "card_factors",
        })
    }

    const ALL: [Table; 10] = [
        Table::Meta,
        Table::Templates,
        Table::Keys,
        Table::Endpoints,
        Table::Psams,
        Table::Cards,
        Table::CardNumbers,
        Table::SocialSecurityNumbers,
        Table::ApplicantBatches,
        Table::CardFactors,
    ];
}

const AUDIT: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("audit");
const SEALS: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("audit_seals");

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "kms.redb";

/// Why a commit's seal was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealSkipped {
    /// There is no audit key yet (the HSM has not been operational since the store was made).
    NoAuditKey,
    /// The HSM refused to MAC (sealed, self-test failed, unreachable).
    HsmRefused,
    /// The HSM did not answer within the seal's time limit.
    Timeout,
}

impl SealSkipped {
    /// The reason, as the gap record gives it.
    pub const fn reason(self) -> &'static str {
        match self {
            SealSkipped::NoAuditKey => "no audit key yet (the HSM has not been operational)",
            SealSkipped::HsmRefused => "the HSM refused to MAC (sealed or unavailable)",
            SealSkipped::Timeout => "the HSM did not answer in time",
        }
    }
}

/// Something that can MAC the audit chain head (the HSM, through its audit key).
pub trait Sealer: Send + Sync + 'static {
    /// The MAC of `message`, or why the HSM cannot seal right now (the chain stays intact, the
    /// gap is recorded in it, and the next seal covers these records too).
    fn seal(&self, message: &[u8]) -> Result<Vec<u8>, SealSkipped>;
}

/// A sealer that never seals (some tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSealer;

impl Sealer for NoSealer {
    fn seal(&self, _message: &[u8]) -> Result<Vec<u8>, SealSkipped> {
        Err(SealSkipped::NoAuditKey)
    }
}

/// The action of the record that marks a gap in the seals.
pub const SEAL_GAP_ACTION: &str = "audit-seal-gap";

type Completion = Box<dyn FnOnce(Result<()>) + Send>;
type Job = Box<dyn FnOnce(&mut Tx<'_>) -> Completion + Send>;

/// The store: cheap to clone, shared by every request. When the last clone is dropped the
/// writer thread finishes its batch and exits, and the database file is closed, so the same
/// directory can be opened again at once.
#[derive(Clone)]
pub struct Store {
    writer: Arc<Writer>,
    db: Arc<redb::Database>,
    path: PathBuf,
    metrics: StoreMetrics,
}

/// The writer thread's handle: dropping it closes the job queue and waits for the thread.
struct Writer {
    jobs: Option<std_mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A write transaction as a request's closure sees it.
pub struct Tx<'a> {
    txn: &'a redb::WriteTransaction,
    /// Set when redb failed inside a job: the whole batch is then abandoned.
    poisoned: std::cell::Cell<bool>,
    head: &'a mut ChainHead,
    now_ms: u64,
    appended: &'a mut Vec<AuditRecord>,
    /// Set by [`Tx::request_seal`]: seal the head even if this batch appends nothing.
    seal_requested: std::cell::Cell<bool>,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("now_ms", &self.now_ms)
            .finish_non_exhaustive()
    }
}

impl Tx<'_> {
    fn poison<E>(&self, e: E) -> Error
    where
        E: Into<redb::Error>,
    {
        self.poisoned.set(true);
        store_err(e)
    }

    /// The value at `key`, if any.
    pub fn get<T: DeserializeOwned>(&self, table: Table, key: &str) -> Result<Option<T>> {
        let t = self
            .txn
            .open_table(table.def())
            .map_err(|e| self.poison(e))?;
        let value = t.get(key).map_err(|e| self.poison(e))?;
        value.map(|v| decode(v.value())).transpose()
    }

    /// Writes `value` at `key`. Call only once the request has been validated: a closure that
    /// fails after a `put` would leave that write in the batch.
    pub fn put<T: Serialize>(&mut self, table: Table, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|_| Error::StoreCorrupt("encode"))?;
        let mut t = self
            .txn
            .open_table(table.def())
            .map_err(|e| self.poison(e))?;
        t.insert(key, bytes.as_slice())
            .map_err(|e| self.poison(e))?;
        Ok(())
    }

    /// Every value whose key starts with `prefix`, in key order.
    pub fn scan<T: DeserializeOwned>(
        &self,
        table: Table,
        prefix: &str,
    ) -> Result<Vec<(String, T)>> {
        let t = self
            .txn
            .open_table(table.def())
            .map_err(|e| self.poison(e))?;
        scan_table(&t, prefix).inspect_err(|_| self.poisoned.set(true))
    }

    /// Appends an audit record to the chain, in this transaction.
    pub fn audit(&mut self, event: AuditEvent) {
        let record = self.head.append(event, self.now_ms);
        self.appended.push(record);
    }

    /// The commit time of this transaction (Unix milliseconds).
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Asks for the chain head to be sealed at this commit if it is not sealed yet (e.g. once
    /// the audit key exists), even if the batch appends no record.
    pub fn request_seal(&self) {
        self.seal_requested.set(true);
    }
}

/// A read-only snapshot.
pub struct Snapshot {
    txn: redb::ReadTransaction,
    /// A repaired copy of a store that was not closed cleanly, open and then deleted after the
    /// snapshot (declared after `txn`: dropped after it; redb closes a dropped database).
    _copy: Option<(redb::Database, tempfile::TempDir)>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Snapshot { .. }")
    }
}

impl Snapshot {
    /// The value at `key`, if any.
    pub fn get<T: DeserializeOwned>(&self, table: Table, key: &str) -> Result<Option<T>> {
        let t = match self.txn.open_table(table.def()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(store_err(e)),
        };
        let value = t.get(key).map_err(store_err)?;
        value.map(|v| decode(v.value())).transpose()
    }

    /// Every value whose key starts with `prefix`, in key order.
    pub fn scan<T: DeserializeOwned>(
        &self,
        table: Table,
        prefix: &str,
    ) -> Result<Vec<(String, T)>> {
        let t = match self.txn.open_table(table.def()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(store_err(e)),
        };
        scan_table(&t, prefix)
    }

    /// The audit trail in order, and its seals.
    pub fn audit_trail(&self) -> Result<(Vec<AuditRecord>, Vec<AuditSeal>)> {
        let records = read_u64_table(&self.txn, AUDIT)?;
        let seals = read_u64_table(&self.txn, SEALS)?;
        Ok((records, seals))
    }

    /// The chain head the store names (`meta/audit_head`): the last record's sequence number
    /// and hash; `None` for a store that has never recorded anything.
    pub fn audit_head(&self) -> Result<Option<ChainHead>> {
        let t = match self.txn.open_table(Table::Meta.def()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(store_err(e)),
        };
        let value = t.get(HEAD_KEY).map_err(store_err)?;
        value.map(|v| decode_head(v.value())).transpose()
    }

    /// The number of audit records.
    pub fn audit_len(&self) -> Result<u64> {
        match self.txn.open_table(AUDIT) {
            Ok(t) => t.len().map_err(store_err),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(store_err(e)),
        }
    }
}

fn read_u64_table<T: DeserializeOwned>(
    txn: &redb::ReadTransaction,
    def: TableDefinition<'static, u64, &'static [u8]>,
) -> Result<Vec<T>> {
    let t = match txn.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(store_err(e)),
    };
    let mut out = Vec::new();
    for entry in t.iter().map_err(store_err)? {
        let (_, v) = entry.map_err(store_err)?;
        out.push(decode(v.value())?);
    }
    Ok(out)
}

fn scan_table<T: DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Vec<(String, T)>> {
    let mut out = Vec::new();
    for entry in t.range(prefix..).map_err(store_err)? {
        let (k, v) = entry.map_err(store_err)?;
        let key = k.value();
        if !key.starts_with(prefix) {
            break;
        }
        out.push((key.to_owned(), decode(v.value())?));
    }
    Ok(out)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|_| Error::StoreCorrupt("decode"))
}

fn store_err(e: impl Into<redb::Error>) -> Error {
    let e: redb::Error = e.into();
    tracing::error!(error = %e, "store failure");
    Error::Store
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

const HEAD_KEY: &str = "audit_head";

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredHead {
    next_seq: u64,
    last_hash: String,
}

fn decode_head(bytes: &[u8]) -> Result<ChainHead> {
    let h: StoredHead = decode(bytes)?;
    let mut last_hash = [0u8; 32];
    hex::decode_to_slice(&h.last_hash, &mut last_hash)
        .map_err(|_| Error::StoreCorrupt("audit head"))?;
    Ok(ChainHead {
        next_seq: h.next_seq,
        last_hash,
    })
}

/// The last key of a `u64`-keyed table, if any.
fn last_u64_key(t: &impl ReadableTable<u64, &'static [u8]>) -> Result<Option<u64>> {
    match t.last().map_err(store_err)? {
        Some((k, _)) => Ok(Some(k.value())),
        None => Ok(None),
    }
}

/// How an offline reader got its snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// The file was closed cleanly and read as it is.
    Clean,
    /// The file was not closed cleanly (the server crashed or was killed): a copy of exactly
    /// that file was repaired by redb (back to its last committed transaction) in a temporary
    /// directory and read there; the original is untouched.
    RepairedCopy,
}

impl Store {
    /// Opens (or creates) the store in `dir`, starting the group-commit writer. `sealer` MACs
    /// the audit chain head after every commit.
    pub fn open(dir: &Path, sealer: Arc<dyn Sealer>) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| {
            tracing::error!(error = %e, dir = %dir.display(), "cannot create the data directory");
            Error::Store
        })?;
        let path = dir.join(DB_FILE);
        let db = Arc::new(redb::Database::create(&path).map_err(store_err)?);
        // Create every table so readers never meet a missing one, and read the chain head.
        let (head, sealed_to) = {
            let txn = db.begin_write().map_err(store_err)?;
            for table in Table::ALL {
                txn.open_table(table.def()).map_err(store_err)?;
            }
            let (head, sealed_to) = {
                let audit = txn.open_table(AUDIT).map_err(store_err)?;
                let seals = txn.open_table(SEALS).map_err(store_err)?;
                let meta = txn.open_table(Table::Meta.def()).map_err(store_err)?;
                let stored = meta.get(HEAD_KEY).map_err(store_err)?;
                let head = stored.map(|v| decode_head(v.value())).transpose()?;
                let last = audit.last().map_err(store_err)?;
                let last = last
                    .map(|(k, v)| decode::<AuditRecord>(v.value()).map(|r| (k.value(), r)))
                    .transpose()?;
                (check_head(head, last)?, last_u64_key(&seals)?.unwrap_or(0))
            };
            txn.commit().map_err(store_err)?;
            (head, sealed_to)
        };
        let (jobs, rx) = std_mpsc::channel::<Job>();
        let writer_db = Arc::clone(&db);
        let metrics = StoreMetrics::default();
        let writer_metrics = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer(writer_db, rx, head, sealed_to, sealer, writer_metrics))
            .map_err(|_| Error::Store)?;
        Ok(Store {
            writer: Arc::new(Writer {
                jobs: Some(jobs),
                thread: Some(thread),
            }),
            db,
            path,
            metrics,
        })
    }

    /// The writer's figures: requests per commit, commit time, records not yet sealed.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    /// Opens an existing store read-only, for offline tools (the server must not be running);
    /// a store that was not closed cleanly is read through a repaired copy
    /// ([`Store::open_for_audit`]).
    pub fn open_read_only(dir: &Path) -> Result<Snapshot> {
        Ok(Store::open_for_audit(dir)?.0)
    }

    /// Opens an existing store for an offline reader (`kms-ceremony audit verify`), never
    /// writing to it. A cleanly closed file is read as it is. A file that was not closed cleanly
    /// (redb refuses to open it read-only: it needs a repair) is copied, exactly as it is, to a
    /// temporary directory, repaired there by redb and read there; the original is untouched and
    /// the snapshot says so. A store that a running server holds is refused with what to do.
    pub fn open_for_audit(dir: &Path) -> Result<(Snapshot, Opened)> {
        let path = dir.join(DB_FILE);
        match redb::ReadOnlyDatabase::open(&path) {
            Ok(db) => Ok((
                Snapshot {
                    txn: db.begin_read().map_err(store_err)?,
                    _copy: None,
                },
                Opened::Clean,
            )),
            Err(redb::DatabaseError::RepairAborted) => {
                let copy = tempfile::tempdir().map_err(|e| {
                    tracing::error!(error = %e, "cannot make a temporary directory");
                    Error::Store
                })?;
                let copied = copy.path().join(DB_FILE);
                std::fs::copy(&path, &copied).map_err(|source| Error::File {
                    path: path.clone(),
                    source,
                })?;
                let db = redb::Database::create(&copied).map_err(store_err)?;
                let txn = db.begin_read().map_err(store_err)?;
                Ok((
                    Snapshot {
                        txn,
                        _copy: Some((db, copy)),
                    },
                    Opened::RepairedCopy,
                ))
            }
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(Error::FailedPrecondition {
                reason: Refusal::StoreInUse,
            }),
            Err(e) => Err(store_err(e)),
        }
    }

    /// A consistent read-only view of the committed state.
    pub fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            txn: self.db.begin_read().map_err(store_err)?,
            _copy: None,
        })
    }

    /// Seals the chain head now if it is not sealed yet (e.g. once the audit key exists), with
    /// no new record; returns once committed.
    pub async fn seal_head(&self) -> Result<()> {
        self.write(|tx| {
            tx.request_seal();
            Ok(())
        })
        .await
    }

    /// Applies `f` and its audit records atomically; returns once they are durable.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        let (done, rx) = oneshot::channel::<Result<T>>();
        let job: Job = Box::new(move |tx: &mut Tx<'_>| -> Completion {
            match f(tx) {
                Ok(value) => Box::new(move |committed: Result<()>| {
                    let _ = done.send(committed.map(|()| value));
                }),
                Err(e) => Box::new(move |_committed: Result<()>| {
                    let _ = done.send(Err(e));
                }),
            }
        });
        let jobs = self.writer.jobs.as_ref().ok_or(Error::Store)?;
        jobs.send(job).map_err(|_| Error::Store)?;
        rx.await.map_err(|_| Error::Store)?
    }

    /// Appends audit records alone (refusals change no other state).
    pub async fn audit(&self, events: Vec<AuditEvent>) -> Result<()> {
        self.write(move |tx| {
            for e in events {
                tx.audit(e);
            }
            Ok(())
        })
        .await
    }
}

/// The chain head to continue from: the stored `meta/audit_head`, which must name the last
/// record. A store with records but no head, or a head that is not the last record, is refused:
/// continuing would restart or fork the chain over what is there.
fn check_head(head: Option<ChainHead>, last: Option<(u64, AuditRecord)>) -> Result<ChainHead> {
    match (head, last) {
        (None, None) => Ok(ChainHead::default()),
        (None, Some(_)) => Err(Error::StoreCorrupt(
            "audit records exist but meta/audit_head is missing",
        )),
        (Some(h), None) if h == ChainHead::default() => Ok(h),
        (Some(_), None) => Err(Error::StoreCorrupt(
            "meta/audit_head names records the audit table does not hold",
        )),
        (Some(h), Some((seq, record))) => {
            if h.next_seq != seq + 1 || hex::encode_upper(h.last_hash) != record.hash {
                return Err(Error::StoreCorrupt(
                    "meta/audit_head is not the last audit record",
                ));
            }
            Ok(h)
        }
    }
}

/// The group-commit loop: one transaction and one fsync for every request waiting.
///
/// `sealed_to` is the last sealed record. When a commit's seal is skipped and the chain was
/// sealed up to then, a gap record ([`SEAL_GAP_ACTION`]) is appended in the same commit, so the
/// chain itself says from where and why it is not sealed; the next seal closes the gap.
fn writer(
    db: Arc<redb::Database>,
    rx: std_mpsc::Receiver<Job>,
    mut head: ChainHead,
    mut sealed_to: u64,
    sealer: Arc<dyn Sealer>,
    metrics: StoreMetrics,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let started = std::time::Instant::now();
        metrics.commit_requests.observe(batch.len() as f64);
        let committed = (head, sealed_to);
        let mut completions = Vec::with_capacity(batch.len());
        let result = (|| -> Result<()> {
            let txn = db.begin_write().map_err(store_err)?;
            let mut appended = Vec::new();
            let now = now_ms();
            let (poisoned, seal_requested) = {
                let mut tx = Tx {
                    txn: &txn,
                    poisoned: std::cell::Cell::new(false),
                    head: &mut head,
                    now_ms: now,
                    appended: &mut appended,
                    seal_requested: std::cell::Cell::new(false),
                };
                for job in batch {
                    completions.push(job(&mut tx));
                }
                (tx.poisoned.get(), tx.seal_requested.get())
            };
            if poisoned {
                return Err(Error::Store);
            }
            let unsealed = head.next_seq - 1 > sealed_to;
            if !appended.is_empty() || (seal_requested && unsealed) {
                let seq = head.next_seq - 1;
                let seal = match sealer.seal(&audit::seal_message(seq, &head.last_hash)) {
                    Ok(mac) => {
                        sealed_to = seq;
                        metrics.unsealed_records.set(0);
                        Some(AuditSeal {
                            seq,
                            head: hex::encode_upper(head.last_hash),
                            mac: hex::encode_upper(mac),
                        })
                    }
                    Err(skipped) => {
                        // Once per gap: the chain was sealed up to the previous commit.
                        if committed.1 + 1 >= committed.0.next_seq {
                            let first_unsealed = committed.1 + 1;
                            appended.push(head.append(
                                AuditEvent {
                                    actor: "system".to_owned(),
                                    action: SEAL_GAP_ACTION.to_owned(),
                                    subject: format!(
                                        "records from {first_unsealed} on are not sealed by the HSM"
                                    ),
                                    outcome: format!("seal skipped: {}", skipped.reason()),
                                },
                                now,
                            ));
                        }
                        tracing::warn!(reason = skipped.reason(), "audit seal skipped");
                        let unsealed = head.next_seq - 1 - sealed_to;
                        metrics
                            .unsealed_records
                            .set(i64::try_from(unsealed).unwrap_or(i64::MAX));
                        None
                    }
                };
                let mut audit_table = txn.open_table(AUDIT).map_err(store_err)?;
                for record in &appended {
                    let bytes =
                        serde_json::to_vec(record).map_err(|_| Error::StoreCorrupt("encode"))?;
                    audit_table
                        .insert(record.seq, bytes.as_slice())
                        .map_err(store_err)?;
                }
                drop(audit_table);
                if let Some(seal) = seal {
                    let bytes =
                        serde_json::to_vec(&seal).map_err(|_| Error::StoreCorrupt("encode"))?;
                    let mut seals = txn.open_table(SEALS).map_err(store_err)?;
                    seals
                        .insert(seal.seq, bytes.as_slice())
                        .map_err(store_err)?;
                }
                let stored = StoredHead {
                    next_seq: head.next_seq,
                    last_hash: hex::encode_upper(head.last_hash),
                };
                let bytes =
                    serde_json::to_vec(&stored).map_err(|_| Error::StoreCorrupt("encode"))?;
                let mut meta = txn.open_table(Table::Meta.def()).map_err(store_err)?;
                meta.insert(HEAD_KEY, bytes.as_slice()).map_err(store_err)?;
            }
            txn.commit().map_err(store_err)?;
            Ok(())
        })();
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            // Nothing of the batch is durable: the chain head goes back to where it was.
            (head, sealed_to) = committed;
        }
        for complete in completions {
            complete(match &result {
                Ok(()) => Ok(()),
                Err(_) => Err(Error::Store),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit_def() -> TableDefinition<'static, u64, &'static [u8]> {
        AUDIT
    }

    #[tokio::test]
    async fn a_store_whose_head_is_missing_or_not_the_last_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Arc::new(NoSealer)).unwrap();
        store
            .audit(vec![AuditEvent::ok("system", "test", "one")])
            .await
            .unwrap();
        drop(store);
        // The head deleted, the records left: refused, and nothing is written.
        {
            let db = redb::Database::open(dir.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(Table::Meta.def())
                .unwrap()
                .remove(HEAD_KEY)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(dir.path(), Arc::new(NoSealer)).unwrap_err();
        assert!(
            matches!(err, Error::StoreCorrupt(m) if m.contains("audit_head is missing")),
            "{err:?}"
        );
        // Records removed under a head that names them: refused too.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Arc::new(NoSealer)).unwrap();
        for i in 0..3 {
            store
                .audit(vec![AuditEvent::ok("system", "test", format!("#{i}"))])
                .await
                .unwrap();
        }
        drop(store);
        {
            let db = redb::Database::open(dir.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(audit_def()).unwrap().remove(5).unwrap();
            txn.open_table(audit_def()).unwrap().remove(4).unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(dir.path(), Arc::new(NoSealer)).unwrap_err();
        assert!(
            matches!(err, Error::StoreCorrupt(m) if m.contains("not the last audit record")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_skipped_seal_is_recorded_once_per_gap() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Arc::new(NoSealer)).unwrap();
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
        assert_eq!(gaps.len(), 1, "{records:?}");
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
