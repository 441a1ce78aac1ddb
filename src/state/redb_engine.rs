//! The embedded engine: one redb file in the data directory (the default store).
//!
//! Why redb and not sled: see ARCHITECTURE.md ("Decisions"). In short, a commit here is an
//! fsync, and an acknowledged change must survive a power cut. redb allows one writer at a time
//! and locks the file against a second process, so the chain head read at the start of a write
//! transaction is the head it appends to.

use std::path::Path;
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::error::{Error, Refusal, Result};
use crate::state::backend::{Engine, Read, Write};
use crate::state::store::{Opened, Table};

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "kms.redb";

const AUDIT: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("audit");
const SEALS: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("audit_seals");

const fn def(table: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(table.name())
}

/// The audit table's definition (tests that damage a store on purpose).
#[cfg(test)]
pub(crate) const fn audit_def() -> TableDefinition<'static, u64, &'static [u8]> {
    AUDIT
}

/// The definition of `table` (tests that damage a store on purpose).
#[cfg(test)]
pub(crate) const fn table_def(
    table: Table,
) -> TableDefinition<'static, &'static str, &'static [u8]> {
    def(table)
}

pub(crate) fn store_err(e: impl Into<redb::Error>) -> Error {
    let e: redb::Error = e.into();
    tracing::error!(error = %e, "store failure");
    Error::Store
}

/// The engine on an open redb file.
pub(crate) struct Redb {
    db: Arc<redb::Database>,
}

impl Redb {
    /// Opens (or creates) `dir/kms.redb` with every table made, so readers never meet a
    /// missing one.
    pub(crate) fn open(dir: &Path) -> Result<Redb> {
        std::fs::create_dir_all(dir).map_err(|e| {
            tracing::error!(error = %e, dir = %dir.display(), "cannot create the data directory");
            Error::Store
        })?;
        let db = redb::Database::create(dir.join(DB_FILE)).map_err(store_err)?;
        let txn = db.begin_write().map_err(store_err)?;
        for table in Table::ALL {
            txn.open_table(def(table)).map_err(store_err)?;
        }
        txn.open_table(AUDIT).map_err(store_err)?;
        txn.open_table(SEALS).map_err(store_err)?;
        txn.commit().map_err(store_err)?;
        Ok(Redb { db: Arc::new(db) })
    }

    /// Opens an existing store for an offline reader, never writing to it (see
    /// [`crate::state::store::Store::open_for_audit`]).
    pub(crate) fn open_for_audit(dir: &Path) -> Result<(Box<dyn Read + Send + Sync>, Opened)> {
        let path = dir.join(DB_FILE);
        match redb::ReadOnlyDatabase::open(&path) {
            Ok(db) => Ok((
                Box::new(RedbRead {
                    txn: db.begin_read().map_err(store_err)?,
                    _copy: None,
                }),
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
                    Box::new(RedbRead {
                        txn,
                        _copy: Some((db, copy)),
                    }),
                    Opened::RepairedCopy,
                ))
            }
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(Error::FailedPrecondition {
                reason: Refusal::StoreInUse,
            }),
            Err(e) => Err(store_err(e)),
        }
    }
}

impl Engine for Redb {
    fn begin_write(&self) -> Result<Box<dyn Write>> {
        Ok(Box::new(RedbWrite {
            txn: self.db.begin_write().map_err(store_err)?,
        }))
    }

    fn begin_read(&self) -> Result<Box<dyn Read + Send + Sync>> {
        Ok(Box::new(RedbRead {
            txn: self.db.begin_read().map_err(store_err)?,
            _copy: None,
        }))
    }
}

/// A read transaction, perhaps on a repaired copy of a store that was not closed cleanly (open
/// and then deleted after the transaction: declared after `txn`, dropped after it).
struct RedbRead {
    txn: redb::ReadTransaction,
    _copy: Option<(redb::Database, tempfile::TempDir)>,
}

struct RedbWrite {
    txn: redb::WriteTransaction,
}

/// Opens a table of a read transaction; `None` if it does not exist (an older file).
fn read_table<K: redb::Key + 'static>(
    txn: &redb::ReadTransaction,
    def: TableDefinition<'static, K, &'static [u8]>,
) -> Result<Option<redb::ReadOnlyTable<K, &'static [u8]>>> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(store_err(e)),
    }
}

fn get_in(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<Vec<u8>>> {
    Ok(t.get(key).map_err(store_err)?.map(|v| v.value().to_vec()))
}

fn scan_in(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
    start: &str,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for entry in t.range(prefix.max(start)..).map_err(store_err)? {
        let (k, v) = entry.map_err(store_err)?;
        let key = k.value();
        if !key.starts_with(prefix) {
            break;
        }
        out.push((key.to_owned(), v.value().to_vec()));
    }
    Ok(out)
}

fn all_in(t: &impl ReadableTable<u64, &'static [u8]>) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for entry in t.iter().map_err(store_err)? {
        let (_, v) = entry.map_err(store_err)?;
        out.push(v.value().to_vec());
    }
    Ok(out)
}

fn last_in(t: &impl ReadableTable<u64, &'static [u8]>) -> Result<Option<(u64, Vec<u8>)>> {
    Ok(t.last()
        .map_err(store_err)?
        .map(|(k, v)| (k.value(), v.value().to_vec())))
}

impl Read for RedbRead {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>> {
        match read_table(&self.txn, def(table))? {
            Some(t) => get_in(&t, key),
            None => Ok(None),
        }
    }

    fn scan_from(&self, table: Table, prefix: &str, start: &str) -> Result<Vec<(String, Vec<u8>)>> {
        match read_table(&self.txn, def(table))? {
            Some(t) => scan_in(&t, prefix, start),
            None => Ok(Vec::new()),
        }
    }

    fn audit_records(&self) -> Result<Vec<Vec<u8>>> {
        read_table(&self.txn, AUDIT)?.map_or(Ok(Vec::new()), |t| all_in(&t))
    }

    fn seals(&self) -> Result<Vec<Vec<u8>>> {
        read_table(&self.txn, SEALS)?.map_or(Ok(Vec::new()), |t| all_in(&t))
    }

    fn audit_len(&self) -> Result<u64> {
        read_table(&self.txn, AUDIT)?.map_or(Ok(0), |t| t.len().map_err(store_err))
    }

    fn last_audit(&self) -> Result<Option<(u64, Vec<u8>)>> {
        read_table(&self.txn, AUDIT)?.map_or(Ok(None), |t| last_in(&t))
    }

    fn last_seal(&self) -> Result<Option<u64>> {
        Ok(read_table(&self.txn, SEALS)?
            .map(|t| last_in(&t))
            .transpose()?
            .flatten()
            .map(|(seq, _)| seq))
    }
}

impl Read for RedbWrite {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>> {
        get_in(&self.txn.open_table(def(table)).map_err(store_err)?, key)
    }

    fn scan_from(&self, table: Table, prefix: &str, start: &str) -> Result<Vec<(String, Vec<u8>)>> {
        scan_in(
            &self.txn.open_table(def(table)).map_err(store_err)?,
            prefix,
            start,
        )
    }

    fn audit_records(&self) -> Result<Vec<Vec<u8>>> {
        all_in(&self.txn.open_table(AUDIT).map_err(store_err)?)
    }

    fn seals(&self) -> Result<Vec<Vec<u8>>> {
        all_in(&self.txn.open_table(SEALS).map_err(store_err)?)
    }

    fn audit_len(&self) -> Result<u64> {
        self.txn
            .open_table(AUDIT)
            .map_err(store_err)?
            .len()
            .map_err(store_err)
    }

    fn last_audit(&self) -> Result<Option<(u64, Vec<u8>)>> {
        last_in(&self.txn.open_table(AUDIT).map_err(store_err)?)
    }

    fn last_seal(&self) -> Result<Option<u64>> {
        Ok(last_in(&self.txn.open_table(SEALS).map_err(store_err)?)?.map(|(seq, _)| seq))
    }
}

impl Write for RedbWrite {
    fn put(&mut self, table: Table, key: &str, value: &[u8]) -> Result<()> {
        self.txn
            .open_table(def(table))
            .map_err(store_err)?
            .insert(key, value)
            .map_err(store_err)?;
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &str) -> Result<()> {
        self.txn
            .open_table(def(table))
            .map_err(store_err)?
            .remove(key)
            .map_err(store_err)?;
        Ok(())
    }

    fn append_audit(&mut self, seq: u64, record: &[u8]) -> Result<()> {
        let mut t = self.txn.open_table(AUDIT).map_err(store_err)?;
        if t.insert(seq, record).map_err(store_err)?.is_some() {
            return Err(Error::StoreCorrupt("audit record appended twice"));
        }
        Ok(())
    }

    fn put_seal(&mut self, seq: u64, seal: &[u8]) -> Result<()> {
        self.txn
            .open_table(SEALS)
            .map_err(store_err)?
            .insert(seq, seal)
            .map_err(store_err)?;
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<()> {
        self.txn.commit().map_err(store_err)
    }
}
