//! [`Hsm::batch`](hsm_api::Hsm::batch) in the simulator: every item through the checks of the
//! single operations (`keys.rs`), in one call and under one hold of the state lock.
//!
//! Each item's key is computed at most once, when first needed — by its own delivery or as the
//! protector of another item — and a derived key is never wrapped under the LMK: it lives for
//! the call only. Tokens that several items name (the recipient's KBPK, a shared parent, a
//! protector) are looked up once per batch.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use hsm_api::{
    BatchDelivery, BatchItem, BatchOutput, Derivation, KeySource, KeyToken, KeyUsage, Protector,
    Result, WriteKeyDelivery, check_batch_len, protector_item_error,
};

use super::LocalHsm;
use super::keys::{
    Caching, DERIVE, EXPORT, PROTECT, WRAP, WRITE, check_usage, derive_child_of, export_block,
    is_kek, is_parent, may_be_exported, may_be_written, may_protect, write_command,
};
use crate::lmk::{Lmk, TokenKey};

/// The keys of one batch: each item's, once computed, and the tokens looked up so far.
struct Keys<'a> {
    hsm: &'a LocalHsm,
    lmk: &'a Lmk,
    items: &'a [BatchItem],
    /// Item `i`'s key (or why there is none), once it has been needed.
    computed: Vec<Option<Result<Arc<TokenKey>>>>,
    /// Tokens already unwrapped in this batch, by text, with the usages they were checked for.
    tokens: HashMap<&'a str, Arc<TokenKey>>,
    /// The last two tokens looked up, compared by text before `tokens` is hashed: a card set
    /// names one KBPK between each of its parents, so the KBPK is found here every time.
    recent: [Option<(&'a str, Arc<TokenKey>)>; 2],
}

impl LocalHsm {
    pub(super) fn batch_now(&self, items: &[BatchItem]) -> Result<Vec<Result<BatchOutput>>> {
        self.with_lmk(|lmk| {
            check_batch_len(items.len())?;
            let mut keys = Keys {
                hsm: self,
                lmk,
                items,
                computed: vec![None; items.len()],
                tokens: HashMap::with_capacity(items.len() + 1),
                recent: [None, None],
            };
            Ok((0..items.len()).map(|i| keys.deliver(i)).collect())
        })
    }
}

impl<'a> Keys<'a> {
    /// Item `index` delivered: the checks and their order are those of `export_key_now` and
    /// `write_key_command_now`, after the key's derivation as `derive_key_now` does it.
    fn deliver(&mut self, index: usize) -> Result<BatchOutput> {
        let items = self.items;
        let item = &items[index];
        match &item.delivery {
            BatchDelivery::Export { kbpk, version } => {
                // As the service does with single calls: derive first, then export (KEK first).
                let derived = match item.key {
                    KeySource::Derived(_) => Some(self.item_key(index)?),
                    KeySource::Token(_) => None,
                };
                let kek = self.token(kbpk, is_kek, Caching::Keep)?;
                check_usage(&kek, is_kek, WRAP)?;
                let key = match derived {
                    Some(key) => key,
                    None => self.item_key(index)?,
                };
                check_usage(&key, may_be_exported, EXPORT)?;
                Ok(BatchOutput::Exported(export_block(&kek, &key, *version)?))
            }
            BatchDelivery::WriteKey(w) => {
                let key = self.item_key(index)?;
                let protect = self.protector(index, w)?;
                check_usage(&key, may_be_written, WRITE)?;
                check_usage(&protect, may_protect, PROTECT)?;
                Ok(BatchOutput::WriteKey(write_command(
                    &key,
                    &protect,
                    [w.cla, w.ins, w.p1, w.p2],
                    &w.key_header,
                    &w.challenge,
                    w.fold,
                )?))
            }
        }
    }

    /// The key protecting item `index`'s slot.
    fn protector(&mut self, index: usize, w: &'a WriteKeyDelivery) -> Result<Arc<TokenKey>> {
        match &w.protect {
            Protector::Item(j) if *j != index && *j < self.items.len() => self.item_key(*j),
            Protector::Item(_) => Err(protector_item_error()),
            Protector::Key(KeySource::Token(token)) => {
                self.token(token, may_protect, Caching::Keep)
            }
            Protector::Key(KeySource::Derived(d)) => self.derive(d),
        }
    }

    /// Item `index`'s key, computed on first use.
    fn item_key(&mut self, index: usize) -> Result<Arc<TokenKey>> {
        if let Some(done) = &self.computed[index] {
            return done.clone();
        }
        let items = self.items;
        let key = match &items[index].key {
            // The subject of an export or a write: used once, not cached.
            KeySource::Token(token) => self.token(token, |_| false, Caching::Skip),
            KeySource::Derived(d) => self.derive(d),
        };
        self.computed[index] = Some(key.clone());
        key
    }

    /// A derived key, with every check of `derive_key_now`.
    fn derive(&mut self, d: &'a Derivation) -> Result<Arc<TokenKey>> {
        let parent = self.token(&d.parent, is_parent, Caching::Keep)?;
        check_usage(&parent, is_parent, DERIVE)?;
        let child = derive_child_of(&parent, d.method, &d.factors, d.child_usage)?;
        Ok(Arc::new(child))
    }

    /// The key of `token`, unwrapped once per batch (its usage is checked where it is used).
    fn token(
        &mut self,
        token: &'a KeyToken,
        allowed: fn(KeyUsage) -> bool,
        caching: Caching,
    ) -> Result<Arc<TokenKey>> {
        let text = token.as_str();
        if let Some((_, key)) = self.recent.iter().flatten().find(|(t, _)| *t == text) {
            return Ok(Arc::clone(key));
        }
        let key = match self.tokens.entry(text) {
            Entry::Occupied(seen) => Arc::clone(seen.get()),
            Entry::Vacant(slot) => {
                let key = self.hsm.load(self.lmk, token, allowed, caching)?;
                Arc::clone(slot.insert(key))
            }
        };
        // The older of the two gives way.
        self.recent.swap(0, 1);
        self.recent[0] = Some((text, Arc::clone(&key)));
        Ok(key)
    }
}
