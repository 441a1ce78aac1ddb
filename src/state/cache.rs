//! The read cache of the tables that change rarely — the hierarchy's key records and the
//! stations' and PSAM lines' endpoint records — decoded once and shared by every snapshot of
//! one [`Store`](super::store::Store).
//!
//! A key release reads one city key record per key of the card (26 for `ssc-2.0`), each a
//! B-tree look-up and a JSON decode, and those records change only in ceremonies. The cache
//! keeps what a snapshot read, keyed by the look-up, under a **generation**:
//!
//! - the writer bumps the generation *after* the commit of any batch that wrote a cached table
//!   is visible to new snapshots (whether or not the commit succeeded: a bump is never wrong);
//! - a snapshot loads the generation *before* it opens its read transaction, so a snapshot of
//!   generation `g` sees every commit whose bump made the generation `g` or less;
//! - an entry is used and inserted only by a snapshot of the cache's current generation; a
//!   snapshot of a newer generation empties the cache first, one of an older generation reads
//!   past it.
//!
//! Hence a cached value is always what the snapshot itself would have read. The cache holds
//! what the store holds (LMK-wrapped tokens, KCVs), never a clear key.
//!
//! Only an engine that this process alone writes has a cache: the redb file (redb locks it).
//! On PostgreSQL another instance may commit at any time, and this process would not know, so
//! every read goes to the database.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::store::Table;

/// At most this many look-ups are kept; a full cache is emptied (the working set of a
/// province — templates × keys × cities × versions — is far smaller).
const CAPACITY: usize = 16_384;

/// What was looked up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Lookup {
    Get(Table, String),
    Scan(Table, String),
}

type Value = Arc<dyn Any + Send + Sync>;

/// The cache of one store (see the [module docs](self)).
pub(crate) struct ReadCache {
    generation: AtomicU64,
    entries: Mutex<Entries>,
}

struct Entries {
    generation: u64,
    values: HashMap<Lookup, Value>,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Table {
    /// Whether this table's reads are cached: it changes in ceremonies, not per request.
    pub(crate) const fn cached(self) -> bool {
        matches!(self, Table::Keys | Table::Endpoints)
    }
}

impl ReadCache {
    pub(crate) fn new() -> ReadCache {
        ReadCache {
            generation: AtomicU64::new(0),
            entries: Mutex::new(Entries {
                generation: 0,
                values: HashMap::new(),
            }),
        }
    }

    /// The generation a snapshot opened now reads at: load it *before* the read transaction.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Called by the writer once a batch that wrote a cached table has committed (or failed).
    pub(crate) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The value of `lookup` for a snapshot of `generation`: the cached one, or `read`'s,
    /// cached when the snapshot is of the current generation.
    pub(crate) fn get_or_read<T: Send + Sync + 'static>(
        &self,
        generation: u64,
        lookup: Lookup,
        read: impl FnOnce() -> crate::error::Result<T>,
    ) -> crate::error::Result<Arc<T>> {
        {
            let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            if generation > entries.generation {
                entries.values.clear();
                entries.generation = generation;
            }
            if generation == entries.generation
                && let Some(hit) = entries.values.get(&lookup)
                && let Ok(value) = Arc::clone(hit).downcast::<T>()
            {
                return Ok(value);
            }
        }
        // Read outside the lock: a miss does not hold up the hits of other requests.
        let value = Arc::new(read()?);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if generation == entries.generation {
            if entries.values.len() >= CAPACITY {
                entries.values.clear();
            }
            let shared: Value = Arc::clone(&value) as Value;
            entries.values.insert(lookup, shared);
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(key: &str) -> Lookup {
        Lookup::Get(Table::Keys, key.to_owned())
    }

    #[test]
    fn a_hit_is_served_without_reading_until_the_generation_moves() {
        let cache = ReadCache::new();
        let g = cache.generation();
        let first = cache.get_or_read(g, lookup("a"), || Ok(1u32)).unwrap();
        assert_eq!(*first, 1);
        let hit = cache
            .get_or_read(g, lookup("a"), || -> crate::error::Result<u32> {
                panic!("a cached value is read again")
            })
            .unwrap();
        assert_eq!(*hit, 1);
        cache.invalidate();
        let g2 = cache.generation();
        assert!(g2 > g);
        assert_eq!(*cache.get_or_read(g2, lookup("a"), || Ok(2u32)).unwrap(), 2);
    }

    #[test]
    fn an_older_snapshot_neither_uses_nor_fills_the_cache() {
        let cache = ReadCache::new();
        let old = cache.generation();
        cache.invalidate();
        let new = cache.generation();
        assert_eq!(
            *cache.get_or_read(new, lookup("a"), || Ok(2u32)).unwrap(),
            2
        );
        // A snapshot opened before the bump reads its own value, and leaves the new one.
        assert_eq!(
            *cache.get_or_read(old, lookup("a"), || Ok(1u32)).unwrap(),
            1
        );
        assert_eq!(
            *cache.get_or_read(old, lookup("b"), || Ok(7u32)).unwrap(),
            7
        );
        assert_eq!(
            *cache
                .get_or_read(new, lookup("a"), || -> crate::error::Result<u32> {
                    panic!("the current generation's value was lost")
                })
                .unwrap(),
            2
        );
        assert_eq!(
            *cache.get_or_read(new, lookup("b"), || Ok(8u32)).unwrap(),
            8
        );
    }

    #[test]
    fn a_failed_read_is_not_cached_and_another_type_is_read_afresh() {
        let cache = ReadCache::new();
        let g = cache.generation();
        assert!(
            cache
                .get_or_read(g, lookup("a"), || -> crate::error::Result<u32> {
                    Err(crate::error::Error::Store)
                })
                .is_err()
        );
        assert_eq!(*cache.get_or_read(g, lookup("a"), || Ok(3u32)).unwrap(), 3);
        assert_eq!(
            *cache
                .get_or_read(g, lookup("a"), || Ok("x".to_owned()))
                .unwrap(),
            "x"
        );
    }
}
