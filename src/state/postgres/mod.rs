//! The PostgreSQL engine: several service instances on one database (its primary, with
//! PostgreSQL's own streaming replication for high availability).
//!
//! - **One chain.** Every write transaction, of every instance, first takes the single row of
//!   `kms_writer_lock` `FOR UPDATE` (READ COMMITTED): writers are serialised, each reads the
//!   chain head and the data as the last commit left them, and appends to that head. The audit
//!   table's primary key refuses a second record of one sequence number besides.
//! - **Group commit** as on redb: the writer thread's batch is one PostgreSQL transaction; puts
//!   and records are buffered in the transaction (read back by its own gets and scans) and sent
//!   in one statement each at commit.
//! - **Durable when acknowledged**: a session with `synchronous_commit = off` is set back to `on`
//!   (with `synchronous_standby_names` set on the server, a commit also waits for a standby).
//! - Snapshots are `REPEATABLE READ READ ONLY` transactions on pooled connections.
//! - The client is async (`tokio-postgres`); the store's interface is not: the engine runs its
//!   own small runtime, and a call waits for its future there (in `block_in_place` on a
//!   multi-threaded runtime).
//! - The schema is versioned (`schema.rs`, `migrations/postgres/`) and migrated at open; a newer
//!   one is refused.

mod config;
mod schema;
pub mod test_cluster;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio_postgres::types::ToSql;

pub use config::{PostgresConfig, is_postgres_url};
pub use schema::SCHEMA_VERSION;

use crate::error::{Error, Result};
use crate::state::backend::{Engine, Read, Write};
use crate::state::store::Table;

/// Read connections of one instance at most: each snapshot holds one while it lives, and the
/// database's `max_connections` must allow every instance this many and its writer's.
const MAX_READERS: usize = 32;

/// How long a snapshot waits for a read connection before it fails (a request that would hold
/// two snapshots with every connection taken fails instead of waiting for ever).
const READER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn pg_err(e: tokio_postgres::Error) -> Error {
    match e.as_db_error() {
        Some(db) => tracing::error!(
            code = db.code().code(),
            message = db.message(),
            "PostgreSQL store failure"
        ),
        None => tracing::error!(error = %e, "PostgreSQL store failure"),
    }
    Error::Store
}

/// The engine's own runtime, shut down without waiting when the engine is dropped (which may
/// happen inside another runtime).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A connection and its prepared statements.
struct Client {
    client: tokio_postgres::Client,
    statements: Mutex<HashMap<&'static str, tokio_postgres::Statement>>,
}

impl Client {
    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    async fn batch_execute(&self, sql: &str) -> Result<()> {
        self.client.batch_execute(sql).await.map_err(pg_err)
    }

    /// `sql`, prepared once per connection.
    async fn query(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let cached = self
            .statements
            .lock()
            .map_err(|_| Error::Store)?
            .get(sql)
            .cloned();
        let statement = match cached {
            Some(s) => s,
            None => {
                let s = self.client.prepare(sql).await.map_err(pg_err)?;
                self.statements
                    .lock()
                    .map_err(|_| Error::Store)?
                    .insert(sql, s.clone());
                s
            }
        };
        self.client.query(&statement, params).await.map_err(pg_err)
    }
}

struct Inner {
    config: PostgresConfig,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    handle: tokio::runtime::Handle,
    idle: Mutex<Vec<Arc<Client>>>,
    readers: Arc<tokio::sync::Semaphore>,
}

/// The engine on one database.
pub(crate) struct Postgres {
    inner: Arc<Inner>,
    writer: Mutex<Option<Arc<Client>>>,
    runtime: Arc<Runtime>,
}

/// Runs `future` on the engine's runtime and waits for it, from any thread.
fn block<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    future: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    let (send, recv) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = send.send(future.await);
    });
    let wait = move || recv.recv().map_err(|_| Error::Store);
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)?
        }
        _ => wait()?,
    }
}

impl Inner {
    async fn connect(self: Arc<Self>) -> Result<Arc<Client>> {
        let client = match &self.tls {
            Some(tls) => {
                let (client, connection) =
                    self.config.pg.connect(tls.clone()).await.map_err(pg_err)?;
                tokio::spawn(connection);
                client
            }
            None => {
                let (client, connection) = self
                    .config
                    .pg
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(pg_err)?;
                tokio::spawn(connection);
                client
            }
        };
        let sync: String = client
            .query_one("SELECT current_setting('synchronous_commit')", &[])
            .await
            .map_err(pg_err)?
            .get(0);
        if sync == "off" {
            client
                .batch_execute("SET synchronous_commit TO on")
                .await
                .map_err(pg_err)?;
        }
        Ok(Arc::new(Client {
            client,
            statements: Mutex::new(HashMap::new()),
        }))
    }
}

impl Postgres {
    /// Connects, migrates the schema (refusing a newer one) and opens the writer's connection.
    pub(crate) fn open(config: &PostgresConfig) -> Result<Postgres> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("store-postgres")
            .enable_all()
            .build()
            .map_err(|_| Error::Store)?;
        let inner = Arc::new(Inner {
            config: config.clone(),
            tls: config.connector()?,
            handle: rt.handle().clone(),
            idle: Mutex::new(Vec::new()),
            readers: Arc::new(tokio::sync::Semaphore::new(MAX_READERS)),
        });
        let runtime = Arc::new(Runtime(Some(rt)));
        let client = block(&inner.handle, Arc::clone(&inner).connect())?;
        let migrating = Arc::clone(&client);
        block(&inner.handle, async move {
            schema::migrate(&migrating.client).await
        })?;
        Ok(Postgres {
            inner,
            writer: Mutex::new(Some(client)),
            runtime,
        })
    }

    fn writer_client(&self) -> Result<Arc<Client>> {
        let mut slot = self.writer.lock().map_err(|_| Error::Store)?;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(client));
        }
        // The database restarted or failed over: a new connection.
        let client = block(&self.inner.handle, Arc::clone(&self.inner).connect())?;
        *slot = Some(Arc::clone(&client));
        Ok(client)
    }
}

impl Engine for Postgres {
    fn begin_write(&self) -> Result<Box<dyn Write>> {
        let client = self.writer_client()?;
        let begin = Arc::clone(&client);
        let begun = block(&self.inner.handle, async move {
            begin
                .batch_execute(
                    "BEGIN ISOLATION LEVEL READ COMMITTED; \
                     SELECT id FROM kms_writer_lock WHERE id = 1 FOR UPDATE",
                )
                .await
        });
        if begun.is_err() {
            // A connection that cannot begin (left in a failed transaction, or half-closed) is
            // not used again: the next batch connects anew.
            *self.writer.lock().map_err(|_| Error::Store)? = None;
        }
        begun?;
        Ok(Box::new(PgWrite {
            conn: Conn {
                client: Some(client),
                handle: self.inner.handle.clone(),
            },
            puts: BTreeMap::new(),
            records: Vec::new(),
            seals: Vec::new(),
        }))
    }

    fn begin_read(&self) -> Result<Box<dyn Read + Send + Sync>> {
        let inner = Arc::clone(&self.inner);
        let (client, permit) = block(&self.inner.handle, async move {
            let waiting = Arc::clone(&inner.readers).acquire_owned();
            let permit = match tokio::time::timeout(READER_WAIT, waiting).await {
                Ok(Ok(permit)) => permit,
                _ => {
                    tracing::error!(
                        readers = MAX_READERS,
                        "every PostgreSQL read connection stayed in use"
                    );
                    return Err(Error::Store);
                }
            };
            let idle = inner.idle.lock().map_err(|_| Error::Store)?.pop();
            let client = match idle.filter(|c| !c.is_closed()) {
                Some(client) => client,
                None => Arc::clone(&inner).connect().await?,
            };
            client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?;
            Ok((client, permit))
        })?;
        Ok(Box::new(PgRead {
            conn: Conn {
                client: Some(client),
                handle: self.inner.handle.clone(),
            },
            inner: Arc::clone(&self.inner),
            _permit: permit,
            _runtime: Arc::clone(&self.runtime),
        }))
    }
}

type Param = Box<dyn ToSql + Send + Sync>;

/// A connection inside a transaction.
struct Conn {
    client: Option<Arc<Client>>,
    handle: tokio::runtime::Handle,
}

impl Conn {
    fn client(&self) -> Result<Arc<Client>> {
        self.client.clone().ok_or(Error::Store)
    }

    fn query(&self, sql: &'static str, params: Vec<Param>) -> Result<Vec<tokio_postgres::Row>> {
        let client = self.client()?;
        block(&self.handle, async move {
            let refs: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            client.query(sql, &refs).await
        })
    }

    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>> {
        let rows = self.query(
            "SELECT value FROM kms_kv WHERE tbl = $1 AND key = $2",
            vec![Box::new(table.name()), Box::new(key.to_owned())],
        )?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    fn scan(&self, table: Table, prefix: &str, start: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let low = prefix.max(start).to_owned();
        let rows = match prefix_end(prefix) {
            Some(end) => self.query(
                "SELECT key, value FROM kms_kv WHERE tbl = $1 AND key >= $2 AND key < $3 \
                 ORDER BY key",
                vec![Box::new(table.name()), Box::new(low), Box::new(end)],
            )?,
            None => self.query(
                "SELECT key, value FROM kms_kv WHERE tbl = $1 AND key >= $2 ORDER BY key",
                vec![Box::new(table.name()), Box::new(low)],
            )?,
        };
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
            .filter(|(k, _)| k.starts_with(prefix))
            .collect())
    }

    fn column(&self, sql: &'static str) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .query(sql, Vec::new())?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn audit_len(&self) -> Result<u64> {
        let rows = self.query("SELECT count(*) FROM kms_audit", Vec::new())?;
        let n: i64 = rows.first().map_or(0, |r| r.get(0));
        u64::try_from(n).map_err(|_| Error::StoreCorrupt("audit length"))
    }

    fn last_audit(&self) -> Result<Option<(u64, Vec<u8>)>> {
        let rows = self.query(
            "SELECT seq, record FROM kms_audit ORDER BY seq DESC LIMIT 1",
            Vec::new(),
        )?;
        rows.first()
            .map(|r| Ok((seq_of(r.get(0))?, r.get(1))))
            .transpose()
    }

    fn last_seal(&self) -> Result<Option<u64>> {
        let rows = self.query("SELECT max(seq) FROM kms_audit_seals", Vec::new())?;
        rows.first()
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .map(seq_of)
            .transpose()
    }

    /// Ends the transaction with `sql` (`COMMIT` or `ROLLBACK`); a connection that fails to is
    /// closed by dropping it.
    fn finish(&mut self, sql: &'static str) -> Result<Option<Arc<Client>>> {
        let client = self.client.take().ok_or(Error::Store)?;
        let ending = Arc::clone(&client);
        block(&self.handle, async move { ending.batch_execute(sql).await })?;
        Ok(Some(client))
    }
}

fn seq_of(seq: i64) -> Result<u64> {
    u64::try_from(seq).map_err(|_| Error::StoreCorrupt("audit sequence number"))
}

fn seq_param(seq: u64) -> Result<i64> {
    i64::try_from(seq).map_err(|_| Error::StoreCorrupt("audit sequence number"))
}

/// The least string greater than every string that starts with `prefix` (`None`: no bound).
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// A snapshot; it keeps the engine's runtime alive (the engine may be gone: an offline reader).
struct PgRead {
    conn: Conn,
    inner: Arc<Inner>,
    _permit: tokio::sync::OwnedSemaphorePermit,
    _runtime: Arc<Runtime>,
}

impl Drop for PgRead {
    fn drop(&mut self) {
        // Back to the pool once rolled back; never waited for (a drop may be on a runtime).
        if let Some(client) = self.conn.client.take() {
            let inner = Arc::clone(&self.inner);
            self.inner.handle.spawn(async move {
                if client.batch_execute("ROLLBACK").await.is_ok()
                    && let Ok(mut idle) = inner.idle.lock()
                {
                    idle.push(client);
                }
            });
        }
    }
}

impl Read for PgRead {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>> {
        self.conn.get(table, key)
    }

    fn scan_from(&self, table: Table, prefix: &str, start: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.conn.scan(table, prefix, start)
    }

    fn audit_records(&self) -> Result<Vec<Vec<u8>>> {
        self.conn
            .column("SELECT record FROM kms_audit ORDER BY seq")
    }

    fn seals(&self) -> Result<Vec<Vec<u8>>> {
        self.conn
            .column("SELECT seal FROM kms_audit_seals ORDER BY seq")
    }

    fn audit_len(&self) -> Result<u64> {
        self.conn.audit_len()
    }

    fn last_audit(&self) -> Result<Option<(u64, Vec<u8>)>> {
        self.conn.last_audit()
    }

    fn last_seal(&self) -> Result<Option<u64>> {
        self.conn.last_seal()
    }
}

/// A write transaction holding the writers' lock. Puts (and deletes: `None`), records and
/// seals wait in memory until the commit (gets and scans of the transaction see them).
struct PgWrite {
    conn: Conn,
    puts: BTreeMap<(&'static str, String), Option<Vec<u8>>>,
    records: Vec<(i64, Vec<u8>)>,
    seals: Vec<(i64, Vec<u8>)>,
}

impl Drop for PgWrite {
    fn drop(&mut self) {
        if self.conn.client.is_some() {
            let _ = self.conn.finish("ROLLBACK");
        }
    }
}

impl Read for PgWrite {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.puts.get(&(table.name(), key.to_owned())) {
            return Ok(v.clone());
        }
        self.conn.get(table, key)
    }

    fn scan_from(&self, table: Table, prefix: &str, start: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let mut rows: BTreeMap<String, Vec<u8>> =
            self.conn.scan(table, prefix, start)?.into_iter().collect();
        for ((t, k), v) in self
            .puts
            .range((table.name(), prefix.max(start).to_owned())..)
        {
            if *t != table.name() || !k.starts_with(prefix) {
                break;
            }
            match v {
                Some(v) => rows.insert(k.clone(), v.clone()),
                None => rows.remove(k),
            };
        }
        Ok(rows.into_iter().collect())
    }

    fn audit_records(&self) -> Result<Vec<Vec<u8>>> {
        let mut all = self
            .conn
            .column("SELECT record FROM kms_audit ORDER BY seq")?;
        all.extend(self.records.iter().map(|(_, r)| r.clone()));
        Ok(all)
    }

    fn seals(&self) -> Result<Vec<Vec<u8>>> {
        let mut all = self
            .conn
            .column("SELECT seal FROM kms_audit_seals ORDER BY seq")?;
        all.extend(self.seals.iter().map(|(_, s)| s.clone()));
        Ok(all)
    }

    fn audit_len(&self) -> Result<u64> {
        Ok(self.conn.audit_len()? + self.records.len() as u64)
    }

    fn last_audit(&self) -> Result<Option<(u64, Vec<u8>)>> {
        match self.records.last() {
            Some((seq, r)) => Ok(Some((seq_of(*seq)?, r.clone()))),
            None => self.conn.last_audit(),
        }
    }

    fn last_seal(&self) -> Result<Option<u64>> {
        match self.seals.last() {
            Some((seq, _)) => Ok(Some(seq_of(*seq)?)),
            None => self.conn.last_seal(),
        }
    }
}

impl Write for PgWrite {
    fn put(&mut self, table: Table, key: &str, value: &[u8]) -> Result<()> {
        self.puts
            .insert((table.name(), key.to_owned()), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &str) -> Result<()> {
        self.puts.insert((table.name(), key.to_owned()), None);
        Ok(())
    }

    fn append_audit(&mut self, seq: u64, record: &[u8]) -> Result<()> {
        self.records.push((seq_param(seq)?, record.to_vec()));
        Ok(())
    }

    fn put_seal(&mut self, seq: u64, seal: &[u8]) -> Result<()> {
        self.seals.push((seq_param(seq)?, seal.to_vec()));
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<()> {
        let puts = std::mem::take(&mut self.puts);
        let mut tables = Vec::with_capacity(puts.len());
        let mut keys = Vec::with_capacity(puts.len());
        let mut values = Vec::with_capacity(puts.len());
        let (mut gone_tables, mut gone_keys) = (Vec::new(), Vec::new());
        for ((t, k), v) in puts {
            match v {
                Some(v) => {
                    tables.push(t.to_owned());
                    keys.push(k);
                    values.push(v);
                }
                None => {
                    gone_tables.push(t.to_owned());
                    gone_keys.push(k);
                }
            }
        }
        if !gone_tables.is_empty() {
            self.conn.query(
                "DELETE FROM kms_kv WHERE (tbl, key) IN \
                 (SELECT * FROM unnest($1::text[], $2::text[]))",
                vec![Box::new(gone_tables), Box::new(gone_keys)],
            )?;
        }
        let (seqs, records): (Vec<i64>, Vec<Vec<u8>>) =
            std::mem::take(&mut self.records).into_iter().unzip();
        let (seal_seqs, seals): (Vec<i64>, Vec<Vec<u8>>) =
            std::mem::take(&mut self.seals).into_iter().unzip();
        if !tables.is_empty() {
            self.conn.query(
                "INSERT INTO kms_kv (tbl, key, value) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) \
                 ON CONFLICT (tbl, key) DO UPDATE SET value = EXCLUDED.value",
                vec![Box::new(tables), Box::new(keys), Box::new(values)],
            )?;
        }
        if !seqs.is_empty() {
            self.conn.query(
                "INSERT INTO kms_audit (seq, record) SELECT * FROM unnest($1::bigint[], $2::bytea[])",
                vec![Box::new(seqs), Box::new(records)],
            )?;
        }
        if !seal_seqs.is_empty() {
            self.conn.query(
                "INSERT INTO kms_audit_seals (seq, seal) \
                 SELECT * FROM unnest($1::bigint[], $2::bytea[]) \
                 ON CONFLICT (seq) DO UPDATE SET seal = EXCLUDED.seal",
                vec![Box::new(seal_seqs), Box::new(seals)],
            )?;
        }
        self.conn.finish("COMMIT").map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_bounds() {
        assert_eq!(prefix_end("ab"), Some("ac".to_owned()));
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("a\u{10FFFF}"), Some("b".to_owned()));
        assert_eq!(prefix_end("\u{D7FF}"), Some("\u{E000}".to_owned()));
    }
}
