//! Durable state: key records (LMK-wrapped tokens and KCVs only), templates, stations, PSAM
//! lines, PSAMs, cards, and the audit trail — on an embedded redb file (the default) or on
//! PostgreSQL (several service instances on one database); see `state/backend.rs`.
//!
//! **One atomic write per state change.** Every change goes through [`Store::write`] with the
//! audit records that describe it; both land in the same engine transaction or neither does.
//! Writes are **group-committed**: a single writer thread takes every request waiting, applies
//! them in one transaction, seals the audit chain head with the HSM (see [`crate::state::audit`]),
//! commits (one fsync, or one synchronous PostgreSQL commit, for the batch) and only then answers
//! each request. A request's closure must validate before it writes: it returns an error
//! *before* its first `put`, so a refused request leaves nothing behind in the batch.
//!
//! The chain head is read inside each write transaction, which the engine serialises with every
//! other writer (redb: one writer per file; PostgreSQL: a row lock taken first), so two
//! instances on one database still make **one** chain, with no gap and no fork.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::metrics::StoreMetrics;
use crate::state::audit::{self, AuditEvent, AuditRecord, AuditSeal, ChainHead};
use crate::state::backend::{Engine, Read, Write};
use crate::state::cache::{Lookup, ReadCache};
use crate::state::postgres::{Postgres, PostgresConfig};
use crate::state::redb_engine::Redb;

pub use crate::state::redb_engine::DB_FILE;

/// Named tables of JSON values keyed by strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// Officers' and auditors' certificates, by fingerprint (`records::OfficerRecord`).
    Officers,
    /// Dual-control requests, by id (`service::DualControlRequest`).
    Requests,
    /// Component ceremonies, by id (`service::KeyCeremony`).
    Ceremonies,
    /// The blacklist's log: version (zero-padded) → `crate::registry::blacklist::Entry`.
    Blacklist,
}

impl Table {
    /// The table's name in every engine.
    pub const fn name(self) -> &'static str {
        match self {
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
            Table::Officers => "officers",
            Table::Requests => "requests",
            Table::Ceremonies => "ceremonies",
            Table::Blacklist => "blacklist",
        }
    }

    /// Every table.
    pub const ALL: [Table; 14] = [
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
        Table::Officers,
        Table::Requests,
        Table::Ceremonies,
        Table::Blacklist,
    ];
}

/// Where the store is.
#[derive(Debug, Clone)]
pub enum StoreLocation {
    /// The embedded redb file in this directory.
    Redb(PathBuf),
    /// A PostgreSQL database (its password is never shown by `Debug`).
    Postgres(Box<PostgresConfig>),
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Redb(dir) => write!(f, "{}", dir.join(DB_FILE).display()),
            StoreLocation::Postgres(pg) => pg.fmt(f),
        }
    }
}

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
/// writer thread finishes its batch and exits, and the database is closed, so the same
/// directory can be opened again at once.
#[derive(Clone)]
pub struct Store {
    writer: Arc<Writer>,
    engine: Arc<dyn Engine>,
    location: Arc<str>,
    metrics: StoreMetrics,
    /// Decoded reads of the tables that change in ceremonies only; None on an engine other
    /// processes write (`state::cache`).
    cache: Option<Arc<ReadCache>>,
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
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// A write transaction as a request's closure sees it.
pub struct Tx<'a> {
    txn: &'a mut dyn Write,
    /// Set when the engine failed inside a job: the whole batch is then abandoned.
    poisoned: std::cell::Cell<bool>,
    head: &'a mut ChainHead,
    now_ms: u64,
    appended: &'a mut Vec<AuditRecord>,
    /// Set by [`Tx::request_seal`]: seal the head even if this batch appends nothing.
    seal_requested: std::cell::Cell<bool>,
    /// Set by a write to a cached table ([`Table::cached`]): the read cache is invalidated
    /// after the commit.
    wrote_cached: &'a mut bool,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("now_ms", &self.now_ms)
            .finish_non_exhaustive()
    }
}

impl Tx<'_> {
    fn poisoned<T>(&self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.poisoned.set(true);
        }
        result
    }

    /// The value at `key`, if any.
    pub fn get<T: DeserializeOwned>(&self, table: Table, key: &str) -> Result<Option<T>> {
        let value = self.poisoned(self.txn.get(table, key))?;
        value.map(|v| decode(&v)).transpose()
    }

    /// Writes `value` at `key`. Call only once the request has been validated: a closure that
    /// fails after a `put` would leave that write in the batch.
    pub fn put<T: Serialize>(&mut self, table: Table, key: &str, value: &T) -> Result<()> {
        let bytes = encode(value)?;
        *self.wrote_cached |= table.cached();
        let written = self.txn.put(table, key, &bytes);
        self.poisoned(written)
    }

    /// Every value whose key starts with `prefix`, in key order.
    pub fn scan<T: DeserializeOwned>(
        &self,
        table: Table,
        prefix: &str,
    ) -> Result<Vec<(String, T)>> {
        decode_all(self.poisoned(self.txn.scan(table, prefix))?)
    }

    /// Removes `key` (nothing if absent). As for [`Tx::put`], only once the request is valid.
    pub fn delete(&mut self, table: Table, key: &str) -> Result<()> {
        *self.wrote_cached |= table.cached();
        let deleted = self.txn.delete(table, key);
        self.poisoned(deleted)
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
    read: Box<dyn Read + Send + Sync>,
    /// The store's read cache and the generation this snapshot reads at.
    cache: Option<(Arc<ReadCache>, u64)>,
    /// Rows the engine returned to this snapshot's scans ([`Snapshot::rows_scanned`]).
    scanned: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Snapshot { .. }")
    }
}

impl Snapshot {
    fn of(read: Box<dyn Read + Send + Sync>) -> Snapshot {
        Snapshot {
            read,
            cache: None,
            scanned: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Every value whose key starts with `prefix` and is ≥ `start`, in key order: a range read
    /// in the engine (it reads from `start`, not the whole prefix).
    pub fn scan_from<T: DeserializeOwned>(
        &self,
        table: Table,
        prefix: &str,
        start: &str,
    ) -> Result<Vec<(String, T)>> {
        let rows = self.read.scan_from(table, prefix, start)?;
        self.count_scanned(rows.len());
        decode_all(rows)
    }

    /// How many rows the engine has returned to this snapshot's scans: what a range read
    /// costs (a test shows that an increment reads only itself).
    pub fn rows_scanned(&self) -> u64 {
        self.scanned.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_scanned(&self, rows: usize) {
        self.scanned.fetch_add(
            u64::try_from(rows).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The value at `key`, if any.
    pub fn get<T: DeserializeOwned>(&self, table: Table, key: &str) -> Result<Option<T>> {
        self.read.get(table, key)?.map(|v| decode(&v)).transpose()
    }

    /// Every value whose key starts with `prefix`, in key order.
    pub fn scan<T: DeserializeOwned>(
        &self,
        table: Table,
        prefix: &str,
    ) -> Result<Vec<(String, T)>> {
        let rows = self.read.scan(table, prefix)?;
        self.count_scanned(rows.len());
        decode_all(rows)
    }

    /// The value at `key`, shared: for a cached table (keys, endpoints) decoded once for
    /// every snapshot of the same generation (`state::cache`), otherwise read as [`get`].
    ///
    /// [`get`]: Snapshot::get
    pub fn get_shared<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Arc<Option<T>>> {
        match &self.cache {
            Some((cache, generation)) if table.cached() => {
                cache.get_or_read(*generation, Lookup::Get(table, key.to_owned()), || {
                    self.get(table, key)
                })
            }
            _ => self.get(table, key).map(Arc::new),
        }
    }

    /// Every value whose key starts with `prefix`, shared as [`get_shared`] shares one value.
    ///
    /// [`get_shared`]: Snapshot::get_shared
    pub fn scan_shared<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        table: Table,
        prefix: &str,
    ) -> Result<Arc<Vec<(String, T)>>> {
        match &self.cache {
            Some((cache, generation)) if table.cached() => {
                cache.get_or_read(*generation, Lookup::Scan(table, prefix.to_owned()), || {
                    self.scan(table, prefix)
                })
            }
            _ => self.scan(table, prefix).map(Arc::new),
        }
    }

    /// The audit trail in order, and its seals.
    pub fn audit_trail(&self) -> Result<(Vec<AuditRecord>, Vec<AuditSeal>)> {
        let records = self.read.audit_records()?;
        let seals = self.read.seals()?;
        Ok((
            records.iter().map(|r| decode(r)).collect::<Result<_>>()?,
            seals.iter().map(|s| decode(s)).collect::<Result<_>>()?,
        ))
    }

    /// The chain head the store names (`meta/audit_head`): the last record's sequence number
    /// and hash; `None` for a store that has never recorded anything.
    pub fn audit_head(&self) -> Result<Option<ChainHead>> {
        read_head(&*self.read)
    }

    /// The number of audit records.
    pub fn audit_len(&self) -> Result<u64> {
        self.read.audit_len()
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|_| Error::StoreCorrupt("encode"))
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|_| Error::StoreCorrupt("decode"))
}

fn decode_all<T: DeserializeOwned>(rows: Vec<(String, Vec<u8>)>) -> Result<Vec<(String, T)>> {
    rows.into_iter()
        .map(|(k, v)| Ok((k, decode(&v)?)))
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The key of the chain head in [`Table::Meta`].
pub(crate) const HEAD_KEY: &str = "audit_head";

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredHead {
    next_seq: u64,
    last_hash: String,
}

fn read_head(read: &dyn Read) -> Result<Option<ChainHead>> {
    let Some(bytes) = read.get(Table::Meta, HEAD_KEY)? else {
        return Ok(None);
    };
    let h: StoredHead = decode(&bytes)?;
    let mut last_hash = [0u8; 32];
    hex::decode_to_slice(&h.last_hash, &mut last_hash)
        .map_err(|_| Error::StoreCorrupt("audit head"))?;
    Ok(Some(ChainHead {
        next_seq: h.next_seq,
        last_hash,
    }))
}

/// The chain head to continue from, read and checked in a write transaction.
pub(crate) fn current_head(read: &dyn Read) -> Result<ChainHead> {
    let last = read
        .last_audit()?
        .map(|(seq, bytes)| decode::<AuditRecord>(&bytes).map(|r| (seq, r)))
        .transpose()?;
    check_head(read_head(read)?, last)
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
    /// Opens (or creates) the redb store in `dir`, starting the group-commit writer. `sealer`
    /// MACs the audit chain head after every commit.
    pub fn open(dir: &Path, sealer: Arc<dyn Sealer>) -> Result<Store> {
        Store::open_at(&StoreLocation::Redb(dir.to_owned()), sealer)
    }

    /// Opens (or creates) the store at `location`, starting the group-commit writer. On
    /// PostgreSQL this applies the schema migrations first, and refuses a schema newer than this
    /// binary.
    pub fn open_at(location: &StoreLocation, sealer: Arc<dyn Sealer>) -> Result<Store> {
        let engine: Arc<dyn Engine> = match location {
            StoreLocation::Redb(dir) => Arc::new(Redb::open(dir)?),
            StoreLocation::Postgres(config) => Arc::new(Postgres::open(config)?),
        };
        // A head that is not the last record is refused before anything is served.
        current_head(&*engine.begin_write()?)?;
        let (jobs, rx) = std_mpsc::channel::<Job>();
        let writer_engine = Arc::clone(&engine);
        let metrics = StoreMetrics::default();
        let writer_metrics = metrics.clone();
        // Only this process writes a redb file (redb locks it): its reads may be cached.
        let cache = match location {
            StoreLocation::Redb(_) => Some(Arc::new(ReadCache::new())),
            StoreLocation::Postgres(_) => None,
        };
        let writer_cache = cache.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                writer(
                    &*writer_engine,
                    rx,
                    &*sealer,
                    &writer_metrics,
                    writer_cache.as_deref(),
                )
            })
            .map_err(|_| Error::Store)?;
        Ok(Store {
            writer: Arc::new(Writer {
                jobs: Some(jobs),
                thread: Some(thread),
            }),
            engine,
            location: location.to_string().into(),
            metrics,
            cache,
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
        let (read, opened) = Redb::open_for_audit(dir)?;
        Ok((Snapshot::of(read), opened))
    }

    /// Opens the store at `location` for an offline reader: redb as [`Store::open_for_audit`];
    /// PostgreSQL (where the service may well be running on other instances) as one snapshot
    /// of its last commit, after the schema check.
    pub fn open_for_audit_at(location: &StoreLocation) -> Result<(Snapshot, Opened)> {
        match location {
            StoreLocation::Redb(dir) => Store::open_for_audit(dir),
            StoreLocation::Postgres(config) => Ok((
                Snapshot::of(Postgres::open(config)?.begin_read()?),
                Opened::Clean,
            )),
        }
    }

    /// A consistent read-only view of the committed state.
    pub fn snapshot(&self) -> Result<Snapshot> {
        // The generation first, then the read transaction (`state::cache`).
        let cache = self.cache.as_ref().map(|c| (Arc::clone(c), c.generation()));
        let mut snap = Snapshot::of(self.engine.begin_read()?);
        snap.cache = cache;
        Ok(snap)
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

/// The group-commit loop: one transaction and one commit for every request waiting.
fn writer(
    engine: &dyn Engine,
    rx: std_mpsc::Receiver<Job>,
    sealer: &dyn Sealer,
    metrics: &StoreMetrics,
    cache: Option<&ReadCache>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let started = std::time::Instant::now();
        metrics.commit_requests.observe(batch.len() as f64);
        let mut completions = Vec::with_capacity(batch.len());
        let mut wrote_cached = false;
        let result = commit_batch(
            engine,
            batch,
            &mut completions,
            sealer,
            metrics,
            &mut wrote_cached,
        );
        // After the commit is visible and before any writer hears of it (`state::cache`).
        if wrote_cached && let Some(cache) = cache {
            cache.invalidate();
        }
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        for complete in completions {
            complete(match &result {
                Ok(()) => Ok(()),
                Err(_) => Err(Error::Store),
            });
        }
    }
}

/// One batch in one transaction: the chain head as the transaction reads it (every writer of
/// the store, on every instance, is serialised by beginning one), the jobs, their records and
/// the seal, then the commit.
///
/// When the seal is skipped and the chain was sealed up to the last commit, a gap record
/// ([`SEAL_GAP_ACTION`]) is appended in the same commit, so the chain itself says from where and
/// why it is not sealed; the next seal closes the gap.
fn commit_batch(
    engine: &dyn Engine,
    batch: Vec<Job>,
    completions: &mut Vec<Completion>,
    sealer: &dyn Sealer,
    metrics: &StoreMetrics,
    wrote_cached: &mut bool,
) -> Result<()> {
    let mut txn = engine.begin_write()?;
    let mut head = current_head(&*txn)?;
    let sealed_to = txn.last_seal()?.unwrap_or(0);
    let was_sealed = sealed_to + 1 >= head.next_seq;
    let mut appended = Vec::new();
    let now = now_ms();
    let (poisoned, seal_requested) = {
        let mut tx = Tx {
            txn: &mut *txn,
            poisoned: std::cell::Cell::new(false),
            head: &mut head,
            now_ms: now,
            appended: &mut appended,
            seal_requested: std::cell::Cell::new(false),
            wrote_cached,
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
    if appended.is_empty() && !(seal_requested && unsealed) {
        return txn.commit();
    }
    let seq = head.next_seq - 1;
    let seal = match sealer.seal(&audit::seal_message(seq, &head.last_hash)) {
        Ok(mac) => {
            metrics.unsealed_records.set(0);
            Some(AuditSeal {
                seq,
                head: hex::encode_upper(head.last_hash),
                mac: hex::encode_upper(mac),
            })
        }
        Err(skipped) => {
            if was_sealed {
                let first_unsealed = sealed_to + 1;
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
    for record in &appended {
        txn.append_audit(record.seq, &encode(record)?)?;
    }
    if let Some(seal) = seal {
        txn.put_seal(seal.seq, &encode(&seal)?)?;
    }
    let stored = StoredHead {
        next_seq: head.next_seq,
        last_hash: hex::encode_upper(head.last_hash),
    };
    txn.put(Table::Meta, HEAD_KEY, &encode(&stored)?)?;
    txn.commit()
}

#[cfg(test)]
#[path = "tests/store.rs"]
mod tests;
