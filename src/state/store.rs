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

use crate::error::{Error, Result};
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
        })
    }

    const ALL: [Table; 8] = [
        Table::Meta,
        Table::Templates,
        Table::Keys,
        Table::Endpoints,
        Table::Psams,
        Table::Cards,
        Table::CardNumbers,
        Table::SocialSecurityNumbers,
    ];
}

const AUDIT: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("audit");
const SEALS: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("audit_seals");

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "kms.redb";

/// Something that can MAC the audit chain head (the HSM, through its audit key).
pub trait Sealer: Send + Sync + 'static {
    /// The MAC of `message`, or `None` if the HSM cannot seal right now (the chain stays intact;
    /// the next seal covers these records too).
    fn seal(&self, message: &[u8]) -> Option<Vec<u8>>;
}

/// A sealer that never seals (stores opened for offline reading, some tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSealer;

impl Sealer for NoSealer {
    fn seal(&self, _message: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

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
}

/// A read-only snapshot.
pub struct Snapshot {
    txn: redb::ReadTransaction,
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
        let head = {
            let txn = db.begin_write().map_err(store_err)?;
            for table in Table::ALL {
                txn.open_table(table.def()).map_err(store_err)?;
            }
            txn.open_table(AUDIT).map_err(store_err)?;
            txn.open_table(SEALS).map_err(store_err)?;
            let head = {
                let meta = txn.open_table(Table::Meta.def()).map_err(store_err)?;
                let stored = meta.get(HEAD_KEY).map_err(store_err)?;
                match stored {
                    Some(v) => {
                        let h: StoredHead = decode(v.value())?;
                        let mut last_hash = [0u8; 32];
                        hex::decode_to_slice(&h.last_hash, &mut last_hash)
                            .map_err(|_| Error::StoreCorrupt("audit head"))?;
                        ChainHead {
                            next_seq: h.next_seq,
                            last_hash,
                        }
                    }
                    None => ChainHead::default(),
                }
            };
            txn.commit().map_err(store_err)?;
            head
        };
        let (jobs, rx) = std_mpsc::channel::<Job>();
        let writer_db = Arc::clone(&db);
        let metrics = StoreMetrics::default();
        let writer_metrics = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer(writer_db, rx, head, sealer, writer_metrics))
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

    /// Opens an existing store read-only, for offline tools (the server must not be running).
    pub fn open_read_only(dir: &Path) -> Result<Snapshot> {
        let db = redb::ReadOnlyDatabase::open(dir.join(DB_FILE)).map_err(store_err)?;
        let txn = db.begin_read().map_err(store_err)?;
        Ok(Snapshot { txn })
    }

    /// A consistent read-only view of the committed state.
    pub fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            txn: self.db.begin_read().map_err(store_err)?,
        })
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

/// The group-commit loop: one transaction and one fsync for every request waiting.
fn writer(
    db: Arc<redb::Database>,
    rx: std_mpsc::Receiver<Job>,
    mut head: ChainHead,
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
        let committed_head = head;
        let mut completions = Vec::with_capacity(batch.len());
        let result = (|| -> Result<()> {
            let txn = db.begin_write().map_err(store_err)?;
            let mut appended = Vec::new();
            let poisoned = {
                let mut tx = Tx {
                    txn: &txn,
                    poisoned: std::cell::Cell::new(false),
                    head: &mut head,
                    now_ms: now_ms(),
                    appended: &mut appended,
                };
                for job in batch {
                    completions.push(job(&mut tx));
                }
                tx.poisoned.get()
            };
            if poisoned {
                return Err(Error::Store);
            }
            if !appended.is_empty() {
                let mut audit_table = txn.open_table(AUDIT).map_err(store_err)?;
                for record in &appended {
                    let bytes =
                        serde_json::to_vec(record).map_err(|_| Error::StoreCorrupt("encode"))?;
                    audit_table
                        .insert(record.seq, bytes.as_slice())
                        .map_err(store_err)?;
                }
                drop(audit_table);
                let seq = head.next_seq - 1;
                let mac = sealer.seal(&audit::seal_message(seq, &head.last_hash));
                match &mac {
                    Some(_) => metrics.unsealed_records.set(0),
                    None => metrics.unsealed_records.inc_by(appended.len() as i64),
                };
                if let Some(mac) = mac {
                    let seal = AuditSeal {
                        seq,
                        head: hex::encode_upper(head.last_hash),
                        mac: hex::encode_upper(mac),
                    };
                    let bytes =
                        serde_json::to_vec(&seal).map_err(|_| Error::StoreCorrupt("encode"))?;
                    let mut seals = txn.open_table(SEALS).map_err(store_err)?;
                    seals.insert(seq, bytes.as_slice()).map_err(store_err)?;
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
            head = committed_head;
        }
        for complete in completions {
            complete(match &result {
                Ok(()) => Ok(()),
                Err(_) => Err(Error::Store),
            });
        }
    }
}
