//! What is kept: the store behind its domain-level interface, the records it holds, and the
//! hash-chained audit trail.

pub mod audit;
pub mod records;
pub mod store;
