//! What is kept: the store behind its domain-level interface, the records it holds, and the
//! hash-chained audit trail; the storage engines under the store (redb, PostgreSQL).

pub mod audit;
pub(crate) mod backend;
pub(crate) mod cache;
pub mod migrate;
pub mod postgres;
pub mod records;
pub(crate) mod redb_engine;
pub mod store;
