//! The hot-key cache: tokens the HSM uses again and again (city keys as derivation parents,
//! station KEKs, card transport keys, the audit MAC key) kept unwrapped, so that a busy
//! derivation path does not re-verify and decrypt the same key block every time.
//!
//! - **Key**: the token's whole text (LMK-wrapped, not secret), compared in full on every
//!   look-up. A token that differs in one character (a forgery, a token of another LMK) is
//!   another key and is unwrapped — and refused — as usual; only a token that verified under
//!   the current LMK is ever inserted. (The map's hasher is std's keyed SipHash: a caller
//!   cannot aim tokens at one bucket. A SHA-256 digest of the text was the key before; it cost
//!   a hash per key of every batch and bought nothing the full comparison does not give.)
//! - **Value**: the unwrapped key with its usage and exportability, behind an `Arc` (the
//!   [`SecretKey`](crate::crypto::SecretKey) inside zeroizes when the last holder drops it).
//!   A cached key-block protection key also keeps its TR-31 binding keys (KBEK, KBAK) once its
//!   first export derived them, so a station's transport key costs that derivation once, not
//!   per block; they are zeroized and evicted with it.
//! - **Bounded, approximately LRU**: every hit stamps the entry with a global counter; when the
//!   cache is full, the least recently used sixteenth of the entries (at least one) is evicted in
//!   one pass, so eviction costs O(1) per insertion amortised and a hit needs only a read lock.
//! - **Emptied** by the HSM on seal, tamper and LMK-rotation commit, while it holds its state
//!   lock for writing, so no operation can put a key back behind it.
//!
//! Which keys are inserted is the HSM's choice (`local/keys.rs`): keys that act on other keys or
//! data; never the key being exported, written or derived, which is used once.

use core::fmt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use hsm_api::{Error, KeyToken, Result};

use crate::lmk::TokenKey;

struct Entry {
    key: Arc<TokenKey>,
    last_used: AtomicU64,
}

/// A bounded map from token digests to unwrapped keys. No `Debug` of its keys: it prints its
/// capacity only.
pub(crate) struct HotKeyCache {
    capacity: usize,
    clock: AtomicU64,
    entries: RwLock<HashMap<Box<str>, Entry>>,
}

impl fmt::Debug for HotKeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HotKeyCache")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl HotKeyCache {
    /// A cache of at most `capacity` keys; 0 disables it.
    pub(crate) fn new(capacity: usize) -> HotKeyCache {
        HotKeyCache {
            capacity,
            clock: AtomicU64::new(0),
            entries: RwLock::new(HashMap::new()),
        }
    }

    /// The key cached for `token`, if any; marks it as just used.
    pub(crate) fn get(&self, token: &KeyToken) -> Result<Option<Arc<TokenKey>>> {
        if self.capacity == 0 {
            return Ok(None);
        }
        let entries = self.entries.read().map_err(|_| Error::StatePoisoned)?;
        Ok(entries.get(token.as_str()).map(|entry| {
            entry.last_used.store(self.tick(), Ordering::Relaxed);
            Arc::clone(&entry.key)
        }))
    }

    /// Caches `key` as `token`'s (a token that verified under the current LMK), evicting the
    /// least recently used keys if the cache is full.
    pub(crate) fn insert(&self, token: &KeyToken, key: Arc<TokenKey>) -> Result<()> {
        if self.capacity == 0 {
            return Ok(());
        }
        let mut entries = self.entries.write().map_err(|_| Error::StatePoisoned)?;
        if entries.len() >= self.capacity && !entries.contains_key(token.as_str()) {
            evict_least_recent(&mut entries, (self.capacity / 16).max(1));
        }
        entries.insert(
            token.as_str().into(),
            Entry {
                key,
                last_used: AtomicU64::new(self.tick()),
            },
        );
        Ok(())
    }

    /// Drops every cached key.
    pub(crate) fn clear(&self) -> Result<()> {
        let mut entries = self.entries.write().map_err(|_| Error::StatePoisoned)?;
        // Replace rather than `clear()`: the old table's memory is released, not kept for reuse.
        *entries = HashMap::new();
        Ok(())
    }

    /// Number of cached keys.
    pub(crate) fn len(&self) -> Result<usize> {
        Ok(self.entries.read().map_err(|_| Error::StatePoisoned)?.len())
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }
}

/// Removes the `n` entries used least recently.
fn evict_least_recent(entries: &mut HashMap<Box<str>, Entry>, n: usize) {
    let mut ages: Vec<(u64, Box<str>)> = entries
        .iter()
        .map(|(t, e)| (e.last_used.load(Ordering::Relaxed), t.clone()))
        .collect();
    let n = n.min(ages.len());
    if n == 0 {
        return;
    }
    if n < ages.len() {
        ages.select_nth_unstable(n - 1);
    }
    for (_, token) in &ages[..n] {
        entries.remove(token);
    }
}

#[cfg(test)]
mod tests {
    use hsm_api::{Algorithm, Exportability, KeyUsage};

    use super::*;
    use crate::crypto::SecretKey;

    fn entry(byte: u8) -> (KeyToken, Arc<TokenKey>) {
        let token = KeyToken::from_stored(format!("token-{byte}"));
        let key = TokenKey::new(
            KeyUsage::CardDerivation(hsm_api::HierarchyLevel::City),
            Exportability::NonExportable,
            SecretKey::new(Algorithm::Tdes2, &[byte; 16]).unwrap(),
        );
        (token, Arc::new(key))
    }

    #[test]
    fn bounded_and_least_recently_used_goes_first() {
        let cache = HotKeyCache::new(4);
        let keys: Vec<_> = (0..6).map(entry).collect();
        for (t, k) in &keys[..4] {
            cache.insert(t, Arc::clone(k)).unwrap();
        }
        assert_eq!(cache.len().unwrap(), 4);
        // Use key 0 again: key 1 is now the least recently used.
        assert!(cache.get(&keys[0].0).unwrap().is_some());
        cache.insert(&keys[4].0, Arc::clone(&keys[4].1)).unwrap();
        assert_eq!(cache.len().unwrap(), 4);
        assert!(cache.get(&keys[1].0).unwrap().is_none());
        assert!(cache.get(&keys[0].0).unwrap().is_some());
        let hit = cache.get(&keys[4].0).unwrap().unwrap();
        assert!(hit.key == keys[4].1.key);
        cache.clear().unwrap();
        assert_eq!(cache.len().unwrap(), 0);
        assert!(cache.get(&keys[0].0).unwrap().is_none());
    }

    #[test]
    fn a_large_cache_evicts_a_sixteenth_at_once() {
        let cache = HotKeyCache::new(32);
        for i in 0..33u8 {
            let (t, k) = entry(i);
            cache.insert(&t, k).unwrap();
        }
        assert_eq!(cache.len().unwrap(), 31);
        assert!(cache.get(&entry(0).0).unwrap().is_none());
        assert!(cache.get(&entry(1).0).unwrap().is_none());
        assert!(cache.get(&entry(2).0).unwrap().is_some());
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let cache = HotKeyCache::new(0);
        let (t, k) = entry(1);
        cache.insert(&t, k).unwrap();
        assert_eq!(cache.len().unwrap(), 0);
        assert!(cache.get(&t).unwrap().is_none());
    }

    #[test]
    fn debug_shows_no_key() {
        let cache = HotKeyCache::new(4);
        let (t, k) = entry(0xA7);
        cache.insert(&t, k).unwrap();
        let shown = format!("{cache:?}");
        assert!(
            !shown.contains("167") && !shown.to_lowercase().contains("a7"),
            "{shown}"
        );
    }

    #[test]
    fn a_cached_kbpk_derives_its_binding_keys_once() {
        use hsm_api::KeyBlockVersion;

        use crate::crypto::tr31::{self, KeyBlockHeader};

        let kbpk = TokenKey::new(
            KeyUsage::KeyBlockProtection,
            Exportability::NonExportable,
            SecretKey::new(Algorithm::Aes256, &[0x3C; 32]).unwrap(),
        );
        let address = |b: &tr31::BindingKeys| Ok(core::ptr::from_ref(b) as usize);
        // The first use derives them (for that call), the next ones use the kept keys.
        kbpk.with_binding(KeyBlockVersion::D, address).unwrap();
        let kept = kbpk.with_binding(KeyBlockVersion::D, address).unwrap();
        assert_eq!(
            kbpk.with_binding(KeyBlockVersion::D, address).unwrap(),
            kept
        );
        // The wrong version for the KBPK is refused, and changes nothing kept.
        assert!(matches!(
            kbpk.with_binding(KeyBlockVersion::B, address),
            Err(Error::KeyBlockKbpk { .. })
        ));
        assert_eq!(
            kbpk.with_binding(KeyBlockVersion::D, address).unwrap(),
            kept
        );
        // A block made with the kept keys is the block `wrap` makes: it unwraps under the KBPK.
        let key = SecretKey::new(Algorithm::Tdes2, &[0x5E; 16]).unwrap();
        let header: KeyBlockHeader = crate::lmk::key_block_header(
            KeyBlockVersion::D,
            KeyUsage::CardKey,
            Algorithm::Tdes2,
            tr31::Exportability::NonExportable,
        )
        .unwrap();
        let block = kbpk
            .with_binding(KeyBlockVersion::D, |b| {
                tr31::wrap_bound(&kbpk.key, b, &header, &key)
            })
            .unwrap();
        let (_, unwrapped) = tr31::unwrap(&kbpk.key, &block).unwrap();
        assert!(unwrapped == key);
    }
}
