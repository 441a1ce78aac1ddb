//! [`LocalHsm`]: the in-process simulator of the [`Hsm`] trait.
//!
//! ⚠️ A simulator, not an HSM: the LMK and every unwrapped key live in ordinary process memory.
//!
//! # States
//!
//! ```text
//!                 init_lmk                      seal / tamper
//! Uninitialised ───────────▶ Operational ◀────────────────────▶ Sealed
//!  (no state file)              ▲   │          unseal (m shares)   ▲
//!                               │   │ self-test fails              │ open with a state file
//!               self-test passes│   ▼                              │
//!                          SelfTestFailed ─────────────────────────┘
//! ```
//!
//! - `open` runs the self-test and reads the state file: none → `Uninitialised`; one → `Sealed`.
//!   With `dangerous_test_lmk` it is `Operational` at once on the published test LMK, writes no
//!   state file and refuses `init_lmk`.
//! - `init_lmk` creates the LMK, writes the state file, and is `Operational` at once: its caller
//!   is the ceremony that holds the LMK anyway. Its shares stay in memory
//!   ([`crate::handout`]) until each is taken once with `take_secret_part`.
//! - `unseal` accepts one share at a time (format, check value, not repeated); at the threshold
//!   it rebuilds the LMK, compares its KCV, runs the self-test.
//! - `seal` and `tamper` drop the LMK, the hot-key cache, submitted shares, shares not yet taken and any
//!   prepared rotation at once, while no key operation runs (they take the state lock for writing, every
//!   key operation holds it for reading until it has finished).
//! - A failed self-test (at `open`, `unseal` or `self_test`) refuses every key operation until
//!   a later one passes.
//!
//! # Usage checks
//!
//! | operation | key | allowed usage |
//! |---|---|---|
//! | `generate_key`, `form_key`, `add_component` | new | any but `CardMasterKey`; exportable only where the usage may leave |
//! | `add_component` | partial | a partial key ([`crate::partial`]), never a token |
//! | `backup_key` | key | `CardDerivation` or `MasterKeyDerivation`, national or provincial (a root) |
//! | `restore_share` | partial | a partial restore (`crate::backup`), never a token; the key rebuilt has the spec and KCV it was begun with |
//! | `import_key` | KEK | `KeyBlockProtection` |
//! | `import_key` | new | any but `CardMasterKey`; `E` kept only where the usage may leave |
//! | `export_key` | KEK | `KeyBlockProtection` |
//! | `export_key` | key | `CardDerivation` or `CardKey`, `Exportable`; master keys, their hierarchy and vendor transport keys are `NotExportable` |
//! | `derive_key` | parent | `CardDerivation(l)` → `CardKey` or `CardDerivation` below `l`; `MasterKeyDerivation(l)` → `CardMasterKey` or `MasterKeyDerivation` below `l`; the factors reach the child's level exactly |
//! | `write_key_command` | key | `CardKey` or `CardMasterKey` (never a hierarchy key) |
//! | `write_key_command` | protect | `CardMasterKey`; `VendorTransport` for a master key's write only |
//! | `mac`, `verify_mac` | key | `AuditMac` (AES) |
//! | `batch` | every item | as `derive_key` for a derived key, then as `export_key` or `write_key_command` |
//! | `sign`, `public_key` | key | `ListSigning(scheme)` (an AES-256-length seed; the P-256 or SM2 private key the token's scheme names is derived inside, per call, and never leaves) |
//! | `index_hashes` | key | `RegistryIndex` (HMAC-SHA256, 32 bytes) |
//! | `seal_fields`, `open_fields` | key | `RegistryData` (AES-256-GCM) |
//!
//! **Exportability is the HSM's decision.** A derived key's exportability follows from its
//! parent and its usage (a hierarchy child is exportable only if its parent is, a card key is,
//! a card master key never); a new key's spec may only narrow what its usage allows
//! ([`KeyUsage::may_be_exported`]). So no sequence of calls brings a non-exportable hierarchy
//! key, a master key or a vendor transport key out of the HSM, in a block or in a card write —
//! except a master key inside the secure-messaging command that writes it to a card.
//!
//! Key-block protection keys must be TDES (2- or 3-key, TR-31 version B) or AES (version D);
//! audit MAC keys AES. Weak DES keys are refused wherever a key is made or enters.
//!
//! # The hot-key cache
//!
//! Keys that act on other keys or data — derivation parents, KEKs, protection keys of card
//! writes, MAC keys — are kept unwrapped after their first use ([`crate::cache`]); a key that is
//! being derived, written, exported or checked is not inserted (it is typically used once).
//!
//! # Where things are
//!
//! This file holds the configuration, [`LocalHsm`] and its [`Hsm`] implementation (async calls
//! over synchronous methods). The life cycle — start-up, LMK, unseal, seal, self-test,
//! rotation — is in `state.rs`; the key operations on tokens are in `keys.rs`; `batch.rs` runs
//! a batch's items through the same functions.
//!
//! # Example
//!
//! ```
//! use hsm_api::{Algorithm, Exportability, HierarchyLevel, Hsm, KeySpec, KeyUsage};
//! use hsm_sim::local::{LocalHsm, LocalHsmConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = tokio::runtime::Builder::new_current_thread().build()?;
//! runtime.block_on(async {
//!     // Memory only: no state directory.
//!     let hsm = LocalHsm::open(LocalHsmConfig::default())?;
//!     let init = hsm.init_lmk(2, 3).await?;
//!     // Each custodian takes their own share, once; the HSM keeps no copy after.
//!     let parts = init.parts.ok_or(hsm_api::Error::PartNotAvailable)?;
//!     let mut shares = Vec::new();
//!     for index in 1..=parts.count {
//!         shares.push(hsm.take_secret_part(&parts.set, index).await?);
//!     }
//!     assert!(hsm.take_secret_part(&parts.set, 1).await.is_err());
//!     let spec = KeySpec {
//!         algorithm: Algorithm::Tdes2,
//!         usage: KeyUsage::CardDerivation(HierarchyLevel::City),
//!         exportability: Exportability::NonExportable,
//!     };
//!     let city = hsm.generate_key(spec).await?;
//!
//!     hsm.seal().await?;
//!     for issued in shares.into_iter().take(2) {
//!         hsm.unseal(issued.share).await?;
//!     }
//!     assert_eq!(hsm.kcv(&city.token).await?, city.kcv);
//!     Ok::<_, hsm_api::Error>(())
//! })?;
//! # Ok(())
//! # }
//! ```

use core::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use hsm_api::{
    Accumulated, Accumulation, BatchItem, BatchOutput, ClearField, Component, Dispersion, Error,
    ExportedKey, Factor, Hsm, HsmStatus, INDEX_HASH_LEN, IssuedShare, Kcv, KeyBackup,
    KeyBlockVersion, KeySpec, KeyToken, KeyUsage, LmkInit, LmkRotation, LmkShare, Restoration,
    Restored, Result, SealedField, UnsealProgress, WrappedKey, WriteKeyCommand, WriteKeyRequest,
};
use subtle::ConstantTimeEq;

use self::state::State;
use crate::cache::HotKeyCache;

mod batch;
mod keys;
mod state;

pub use crate::lmk::{DANGEROUS_TEST_LMK_HEX, STATE_FILE};

/// How a [`LocalHsm`] starts.
#[derive(Debug, Clone)]
pub struct LocalHsmConfig {
    /// Where the HSM keeps its state file (`hsm-state.json`: LMK KCV, threshold, share count,
    /// share check values — never the LMK). None = memory only.
    pub state_dir: Option<PathBuf>,
    /// Start on the fixed, published test LMK (operational at once, reported in status).
    pub dangerous_test_lmk: bool,
    /// Hot-key cache capacity (keys).
    pub cache_capacity: usize,
    /// The self-test to run at start-up, unseal and on demand; `crate::selftest::run` normally,
    /// a failing fn in tests.
    pub self_test: fn() -> Result<()>,
    /// How many key operations may compute at once (on tokio's blocking pool, never on the
    /// async workers); further calls wait their turn without holding a worker. 0 = the
    /// machine's available parallelism.
    pub workers: usize,
}

impl Default for LocalHsmConfig {
    fn default() -> LocalHsmConfig {
        LocalHsmConfig {
            state_dir: None,
            dangerous_test_lmk: false,
            cache_capacity: 1024,
            self_test: crate::selftest::run,
            workers: 0,
        }
    }
}

/// The in-process HSM simulator. `Send + Sync`: share it behind an `Arc`.
///
/// Its key operations run on tokio's blocking pool, at most [`LocalHsmConfig::workers`] at a
/// time, so that a large batch never holds an async worker: the caller's other requests, and
/// health checks ([`Hsm::status`] stays inline: it only reads the state), go on meanwhile. The
/// MAC of a short message (at most 1 KiB: the audit chain's seal at every store commit) is
/// computed inline too, so a commit never queues behind the batches for a worker.
pub struct LocalHsm {
    /// Where the state file is written; None when memory only or on the test LMK.
    persist_dir: Option<Arc<Path>>,
    self_test: fn() -> Result<()>,
    state: Arc<RwLock<State>>,
    cache: Arc<HotKeyCache>,
    /// Permits for the key operations computing at once.
    workers: Arc<tokio::sync::Semaphore>,
}

impl fmt::Debug for LocalHsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalHsm")
            .field("state_dir", &self.persist_dir)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl Hsm for LocalHsm {
    fn is_secure(&self) -> bool {
        false
    }

    async fn status(&self) -> Result<HsmStatus> {
        self.status_now()
    }

    async fn init_lmk(&self, threshold: u8, shares: u8) -> Result<LmkInit> {
        self.init_lmk_now(threshold, shares)
    }

    async fn take_secret_part(&self, set: &str, index: u8) -> Result<IssuedShare> {
        self.write()?.parts.take(set, index)
    }

    async fn unseal(&self, share: LmkShare) -> Result<UnsealProgress> {
        self.unseal_now(&share)
    }

    async fn unseal_reset(&self) -> Result<()> {
        self.write()?.submitted.clear();
        Ok(())
    }

    async fn seal(&self) -> Result<()> {
        self.seal_now(false)
    }

    async fn tamper(&self) -> Result<()> {
        self.seal_now(true)
    }

    async fn self_test(&self) -> Result<()> {
        self.off_runtime(|hsm| hsm.self_test_now()).await
    }

    async fn generate_key(&self, spec: KeySpec) -> Result<WrappedKey> {
        self.off_runtime(move |hsm| hsm.generate_key_now(spec))
            .await
    }

    async fn form_key(&self, spec: KeySpec, components: Vec<Component>) -> Result<WrappedKey> {
        self.off_runtime(move |hsm| hsm.form_key_now(spec, &components))
            .await
    }

    async fn add_component(&self, into: Accumulation, component: Component) -> Result<Accumulated> {
        self.off_runtime(move |hsm| hsm.with_lmk(|lmk| crate::partial::add(lmk, into, &component)))
            .await
    }

    async fn import_key(&self, kek: &KeyToken, block: &str, usage: KeyUsage) -> Result<WrappedKey> {
        let (kek, block) = (kek.clone(), block.to_owned());
        self.off_runtime(move |hsm| hsm.import_key_now(&kek, &block, usage))
            .await
    }

    async fn export_key(
        &self,
        kek: &KeyToken,
        key: &KeyToken,
        version: KeyBlockVersion,
    ) -> Result<ExportedKey> {
        let (kek, key) = (kek.clone(), key.clone());
        self.off_runtime(move |hsm| hsm.export_key_now(&kek, &key, version))
            .await
    }

    async fn derive_key(
        &self,
        parent: &KeyToken,
        method: Dispersion,
        factors: &[Factor],
        child_usage: KeyUsage,
    ) -> Result<WrappedKey> {
        let (parent, factors) = (parent.clone(), factors.to_vec());
        self.off_runtime(move |hsm| hsm.derive_key_now(&parent, method, &factors, child_usage))
            .await
    }

    async fn write_key_command(&self, request: WriteKeyRequest) -> Result<WriteKeyCommand> {
        self.off_runtime(move |hsm| hsm.write_key_command_now(&request))
            .await
    }

    async fn batch(&self, items: Vec<BatchItem>) -> Result<Vec<Result<BatchOutput>>> {
        self.off_runtime(move |hsm| hsm.batch_now(&items)).await
    }

    async fn kcv(&self, key: &KeyToken) -> Result<Kcv> {
        let key = key.clone();
        self.off_runtime(move |hsm| hsm.kcv_now(&key)).await
    }

    async fn random(&self, len: usize) -> Result<Vec<u8>> {
        self.random_now(len)
    }

    async fn mac(&self, key: &KeyToken, data: &[u8]) -> Result<Vec<u8>> {
        // A short message (the audit chain's seal, at every store commit) is a few AES blocks
        // under a cached key: computed inline, it never waits behind the batches for a worker.
        if data.len() <= INLINE_MAC_BYTES {
            return self.with_lmk(|lmk| self.audit_mac(lmk, key, data));
        }
        let (key, data) = (key.clone(), data.to_vec());
        self.off_runtime(move |hsm| hsm.with_lmk(|lmk| hsm.audit_mac(lmk, &key, &data)))
            .await
    }

    async fn verify_mac(&self, key: &KeyToken, data: &[u8], mac: &[u8]) -> Result<()> {
        if data.len() <= INLINE_MAC_BYTES {
            return self.verify_mac_now(key, data, mac);
        }
        let (key, data, mac) = (key.clone(), data.to_vec(), mac.to_vec());
        self.off_runtime(move |hsm| hsm.verify_mac_now(&key, &data, &mac))
            .await
    }

    async fn sign(&self, key: &KeyToken, data: &[u8]) -> Result<Vec<u8>> {
        self.with_lmk(|lmk| Ok(self.list_signing_key(lmk, key)?.sign(data)))
    }

    async fn public_key(&self, key: &KeyToken) -> Result<Vec<u8>> {
        self.with_lmk(|lmk| Ok(self.list_signing_key(lmk, key)?.public_key()))
    }

    async fn index_hashes(
        &self,
        key: &KeyToken,
        domain: &str,
        values: Vec<Vec<u8>>,
    ) -> Result<Vec<[u8; INDEX_HASH_LEN]>> {
        let hashes = |hsm: &LocalHsm, key: &KeyToken, domain: &str, values: &[Vec<u8>]| {
            hsm.with_lmk(|lmk| {
                let k = hsm.registry_key(lmk, key, crate::policy::is_registry_index)?;
                crate::crypto::registry::index_hashes(&k.key, domain, values)
            })
        };
        // A request's own look-up (one card number, one SSN: two HMACs under a cached key) is
        // computed inline, as the audit seal is, so it never waits behind the batches for a
        // worker; a registry review's thousands of rows go to a worker.
        if values.len() <= INLINE_INDEX_VALUES
            && values.iter().map(Vec::len).sum::<usize>() <= INLINE_MAC_BYTES
        {
            return hashes(self, key, domain, &values);
        }
        let (key, domain) = (key.clone(), domain.to_owned());
        self.off_runtime(move |hsm| hashes(hsm, &key, &domain, &values))
            .await
    }

    async fn seal_fields(
        &self,
        key: &KeyToken,
        fields: Vec<ClearField>,
    ) -> Result<Vec<SealedField>> {
        let key = key.clone();
        self.off_runtime(move |hsm| {
            hsm.with_lmk(|lmk| {
                let k = hsm.registry_key(lmk, &key, crate::policy::is_registry_data)?;
                crate::crypto::registry::seal_fields(&k.key, &fields)
            })
        })
        .await
    }

    async fn open_fields(
        &self,
        key: &KeyToken,
        fields: Vec<SealedField>,
    ) -> Result<Vec<ClearField>> {
        let key = key.clone();
        self.off_runtime(move |hsm| {
            hsm.with_lmk(|lmk| {
                let k = hsm.registry_key(lmk, &key, crate::policy::is_registry_data)?;
                crate::crypto::registry::open_fields(&k.key, &fields)
            })
        })
        .await
    }

    async fn prepare_lmk_rotation(
        &self,
        tokens: Vec<KeyToken>,
        threshold: u8,
        shares: u8,
    ) -> Result<LmkRotation> {
        self.off_runtime(move |hsm| hsm.prepare_lmk_rotation_now(&tokens, threshold, shares))
            .await
    }

    async fn rewrap_for_rotation(
        &self,
        new_lmk_kcv: &Kcv,
        tokens: Vec<KeyToken>,
    ) -> Result<Vec<KeyToken>> {
        hsm_api::check_batch_len(tokens.len())?;
        let kcv = new_lmk_kcv.clone();
        self.off_runtime(move |hsm| hsm.rewrap_for_rotation_now(&kcv, &tokens))
            .await
    }

    async fn commit_lmk_rotation(&self, new_lmk_kcv: &Kcv) -> Result<()> {
        self.commit_lmk_rotation_now(new_lmk_kcv)
    }

    async fn issue_transport_key_components(
        &self,
        algorithm: hsm_api::Algorithm,
        components: u8,
    ) -> Result<hsm_api::IssuedComponents> {
        self.off_runtime(move |hsm| hsm.issue_components_now(algorithm, components))
            .await
    }

    async fn issue_transport_key_under(
        &self,
        kek: &KeyToken,
        algorithm: hsm_api::Algorithm,
    ) -> Result<hsm_api::IssuedUnderKek> {
        let kek = kek.clone();
        self.off_runtime(move |hsm| hsm.issue_under_now(&kek, algorithm))
            .await
    }

    async fn backup_key(&self, key: &KeyToken, threshold: u8, shares: u8) -> Result<KeyBackup> {
        let key = key.clone();
        let split = self
            .off_runtime(move |hsm| {
                hsm.with_lmk(|lmk| crate::backup::split(lmk, &key, threshold, shares))
            })
            .await?;
        self.deposit_backup(split)
    }

    async fn restore_share(&self, into: Restoration, share: LmkShare) -> Result<Restored> {
        self.off_runtime(move |hsm| hsm.with_lmk(|lmk| crate::backup::restore(lmk, into, &share)))
            .await
    }
}

/// Messages up to this length are MACed on the caller's thread (see [`Hsm::mac`] above), and
/// index hashes of values of up to this length in all (see [`Hsm::index_hashes`]).
const INLINE_MAC_BYTES: usize = 1024;

/// At most this many values are index-hashed on the caller's thread.
const INLINE_INDEX_VALUES: usize = 4;

impl LocalHsm {
    /// Checks `mac` against the audit MAC of `data`, in constant time.
    fn verify_mac_now(&self, key: &KeyToken, data: &[u8], mac: &[u8]) -> Result<()> {
        self.with_lmk(|lmk| {
            let expected = self.audit_mac(lmk, key, data)?;
            if bool::from(expected.as_slice().ct_eq(mac)) {
                Ok(())
            } else {
                Err(Error::Verification)
            }
        })
    }

    /// A second handle on the same HSM (state, cache, permits), for a blocking task.
    fn share(&self) -> LocalHsm {
        LocalHsm {
            persist_dir: self.persist_dir.clone(),
            self_test: self.self_test,
            state: Arc::clone(&self.state),
            cache: Arc::clone(&self.cache),
            workers: Arc::clone(&self.workers),
        }
    }

    /// Runs `work` on tokio's blocking pool once a worker permit is free, so that the CPU work
    /// of a key operation never holds an async worker (outside a tokio runtime, inline). A
    /// panic in `work` is the caller's, as it would be inline.
    async fn off_runtime<T: Send + 'static>(
        &self,
        work: impl FnOnce(&LocalHsm) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return work(self);
        };
        let permit = Arc::clone(&self.workers)
            .acquire_owned()
            .await
            .map_err(|_| Error::Unavailable)?;
        let hsm = self.share();
        let joined = runtime
            .spawn_blocking(move || {
                let _permit = permit;
                work(&hsm)
            })
            .await;
        match joined {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down.
            Err(_) => Err(Error::Unavailable),
        }
    }
}

// `LocalHsm` is shared across the tasks of a server.
const _: fn() = || {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<LocalHsm>();
};

#[cfg(test)]
mod tests;
