//! `sscard-kms store migrate --from redb DIR --to postgres://…`: copies a redb store (every
//! table, the whole audit chain and its seals, byte for byte) into an empty PostgreSQL store in
//! one transaction, then reads the copy back and checks it: the same rows, the same records and
//! seals, a chain that verifies and a head that names its last record.

use std::path::Path;

use crate::error::{Error, Refusal, Result};
use crate::state::audit::{self, AuditRecord, AuditSeal};
use crate::state::backend::{Engine, Read};
use crate::state::postgres::{Postgres, PostgresConfig};
use crate::state::redb_engine::Redb;
use crate::state::store::{Opened, Table, current_head, decode};

/// What was copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Rows of every table but the audit trail.
    pub rows: usize,
    /// Audit records.
    pub records: usize,
    /// Seals.
    pub seals: usize,
    /// Whether the source was not closed cleanly (read through a repaired copy).
    pub repaired_copy: bool,
}

/// A table's rows, as bytes.
type Rows = Vec<(String, Vec<u8>)>;

/// Everything of a store, as bytes.
#[derive(PartialEq, Eq)]
struct Contents {
    tables: Vec<(Table, Rows)>,
    records: Vec<Vec<u8>>,
    seals: Vec<Vec<u8>>,
}

fn contents(read: &dyn Read) -> Result<Contents> {
    let tables = Table::ALL
        .iter()
        .map(|&t| Ok((t, read.scan(t, "")?)))
        .collect::<Result<_>>()?;
    Ok(Contents {
        tables,
        records: read.audit_records()?,
        seals: read.seals()?,
    })
}

/// Copies the redb store in `from` into the empty PostgreSQL store `to` and verifies the copy.
/// The service must not be running on either. A target that holds anything is refused.
pub fn redb_to_postgres(from: &Path, to: &PostgresConfig) -> Result<Copied> {
    let (source, opened) = Redb::open_for_audit(from)?;
    let source_contents = contents(&*source)?;
    // The source's own chain must verify before it is copied.
    current_head(&*source)?;
    let records: Vec<AuditRecord> = source_contents
        .records
        .iter()
        .map(|r| decode(r))
        .collect::<Result<_>>()?;
    audit::verify_chain(&records).map_err(|_| Error::AuditBroken)?;
    let seals: Vec<AuditSeal> = source_contents
        .seals
        .iter()
        .map(|s| decode(s))
        .collect::<Result<_>>()?;

    let target = Postgres::open(to)?;
    let mut txn = target.begin_write()?;
    let empty = txn.last_audit()?.is_none()
        && Table::ALL.iter().try_fold(true, |empty, &t| {
            Ok::<_, Error>(empty && txn.scan(t, "")?.is_empty())
        })?;
    if !empty {
        return Err(Error::FailedPrecondition {
            reason: Refusal::StoreNotEmpty,
        });
    }
    let mut rows = 0;
    for (table, entries) in &source_contents.tables {
        for (key, value) in entries {
            txn.put(*table, key, value)?;
            rows += 1;
        }
    }
    for (record, bytes) in records.iter().zip(&source_contents.records) {
        txn.append_audit(record.seq, bytes)?;
    }
    for (seal, bytes) in seals.iter().zip(&source_contents.seals) {
        txn.put_seal(seal.seq, bytes)?;
    }
    txn.commit()?;

    // Read back, as the service will.
    let copy = target.begin_read()?;
    if contents(&*copy)? != source_contents {
        tracing::error!("the copy differs from the source");
        return Err(Error::StoreCorrupt("the copy differs from the source"));
    }
    current_head(&*copy)?;
    Ok(Copied {
        rows,
        records: records.len(),
        seals: seals.len(),
        repaired_copy: opened == Opened::RepairedCopy,
    })
}
