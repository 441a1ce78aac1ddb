//! The storage engines under the store: what an engine must do, and nothing more.
//!
//! [`crate::state::store`] keeps everything that is the store's meaning — the record encoding
//! (JSON), the audit chain (hashing, the head and its checks, seals and gaps), group commit —
//! once, over this small interface. An engine only keeps bytes: values by `(table, key)`, audit
//! records and seals by sequence number, in transactions. A new [`Table`] therefore works on every
//! engine with no code of its own.
//!
//! Two engines: [`crate::state::redb_engine`] (the embedded file, the default) and
//! [`crate::state::postgres`] (several service instances on one database).

use crate::error::Result;
use crate::state::store::Table;

/// Reads, in a write transaction or a read-only snapshot.
pub(crate) trait Read {
    /// The value at `key` in `table`.
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>>;
    /// Every `(key, value)` of `table` whose key starts with `prefix`, in key (byte) order.
    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.scan_from(table, prefix, prefix)
    }
    /// As [`Read::scan`], from the first key ≥ `start` on: a range read that visits only the
    /// keys it returns (the increments of the blacklist since a version).
    fn scan_from(&self, table: Table, prefix: &str, start: &str) -> Result<Vec<(String, Vec<u8>)>>;
    /// Every audit record, in sequence order.
    fn audit_records(&self) -> Result<Vec<Vec<u8>>>;
    /// Every seal, in sequence order.
    fn seals(&self) -> Result<Vec<Vec<u8>>>;
    /// The number of audit records.
    fn audit_len(&self) -> Result<u64>;
    /// The last audit record and its sequence number.
    fn last_audit(&self) -> Result<Option<(u64, Vec<u8>)>>;
    /// The sequence number of the last seal.
    fn last_seal(&self) -> Result<Option<u64>>;
}

/// A write transaction: nothing is visible to others until [`Write::commit`], and a transaction
/// dropped without it leaves nothing. Beginning one serialises with every other writer of the
/// same store, on every instance: the chain head read in it is the head it appends to.
pub(crate) trait Write: Read {
    /// Writes `value` at `key` in `table`.
    fn put(&mut self, table: Table, key: &str, value: &[u8]) -> Result<()>;
    /// Removes `key` from `table` (nothing if absent).
    fn delete(&mut self, table: Table, key: &str) -> Result<()>;
    /// Appends the audit record `seq` (refused if `seq` exists: the chain never forks).
    fn append_audit(&mut self, seq: u64, record: &[u8]) -> Result<()>;
    /// Stores the seal of the head at `seq`.
    fn put_seal(&mut self, seq: u64, seal: &[u8]) -> Result<()>;
    /// Makes the transaction durable (an fsync, or PostgreSQL's synchronous commit).
    fn commit(self: Box<Self>) -> Result<()>;
}

/// A storage engine.
pub(crate) trait Engine: Send + Sync + 'static {
    /// Begins a write transaction (see [`Write`]).
    fn begin_write(&self) -> Result<Box<dyn Write>>;
    /// A consistent read-only view of the committed state.
    fn begin_read(&self) -> Result<Box<dyn Read + Send + Sync>>;
}
