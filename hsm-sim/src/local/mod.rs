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
//!   is the ceremony that holds the LMK anyway.
//! - `unseal` accepts one share at a time (format, check value, not repeated); at the threshold
//!   it rebuilds the LMK, compares its KCV, runs the self-test.
//! - `seal` and `tamper` drop the LMK, the hot-key cache, submitted shares and any prepared
//!   rotation at once, while no key operation runs (they take the state lock for writing, every
//!   key operation holds it for reading until it has finished).
//! - A failed self-test (at `open`, `unseal` or `self_test`) refuses every key operation until
//!   a later one passes.
//!
//! # Usage checks
//!
//! | operation | key | allowed usage |
//! |---|---|---|
//! | `import_key` | KEK | `KeyBlockProtection` |
//! | `export_key` | KEK | `KeyBlockProtection` |
//! | `export_key` | key | not `KeyBlockProtection`; `Exportable` |
//! | `derive_key` | parent | `CardDerivation`; child `CardDerivation` or `CardKey` |
//! | `write_key_command` | key | `CardKey` or `CardDerivation` |
//! | `write_key_command` | protect | `CardKey` |
//! | `mac`, `verify_mac` | key | `AuditMac` (AES) |
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
//! # Example
//!
//! ```
//! use hsm_api::{Algorithm, Exportability, Hsm, KeySpec, KeyUsage};
//! use hsm_sim::local::{LocalHsm, LocalHsmConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = tokio::runtime::Builder::new_current_thread().build()?;
//! runtime.block_on(async {
//!     // Memory only: no state directory.
//!     let hsm = LocalHsm::open(LocalHsmConfig::default())?;
//!     let init = hsm.init_lmk(2, 3).await?;
//!     let spec = KeySpec {
//!         algorithm: Algorithm::Tdes2,
//!         usage: KeyUsage::CardDerivation,
//!         exportability: Exportability::NonExportable,
//!     };
//!     let city = hsm.generate_key(spec).await?;
//!
//!     hsm.seal().await?;
//!     for issued in init.shares.into_iter().take(2) {
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
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hsm_api::{
    Algorithm, Component, Dispersion, Error, Exportability, ExportedKey, Factor, Hsm, HsmState,
    HsmStatus, Kcv, KeyBlockVersion, KeySpec, KeyToken, KeyUsage, LmkInit, LmkRotation, LmkShare,
    MacFold, Result, UnsealProgress, WrappedKey, WriteKeyCommand, WriteKeyRequest,
};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::cache::{self, HotKeyCache};
use crate::crypto::kcv::{self, KcvCheck};
use crate::crypto::key::decode_secret_hex;
use crate::crypto::tr31::{self, KeyBlockHeader, ModeOfUse, OptionalBlock};
use crate::crypto::{SecretKey, diversify, mac};
use crate::lmk::{self, Lmk, LmkRecord, ParsedShare, TokenKey};

pub use crate::lmk::{DANGEROUS_TEST_LMK_HEX, STATE_FILE};

/// Components a key may be formed from.
const COMPONENTS: core::ops::RangeInclusive<usize> = 2..=9;
/// Factors one derivation may apply.
const FACTORS: core::ops::RangeInclusive<usize> = 1..=8;
/// Random bytes one call may ask for.
const RANDOM_LEN: core::ops::RangeInclusive<usize> = 1..=4096;

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
}

impl Default for LocalHsmConfig {
    fn default() -> LocalHsmConfig {
        LocalHsmConfig {
            state_dir: None,
            dangerous_test_lmk: false,
            cache_capacity: 1024,
            self_test: crate::selftest::run,
        }
    }
}

/// The in-process HSM simulator. `Send + Sync`: share it behind an `Arc`.
pub struct LocalHsm {
    /// Where the state file is written; None when memory only or on the test LMK.
    persist_dir: Option<PathBuf>,
    self_test: fn() -> Result<()>,
    state: RwLock<State>,
    cache: HotKeyCache,
}

impl fmt::Debug for LocalHsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalHsm")
            .field("state_dir", &self.persist_dir)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// Everything that changes, behind one lock.
struct State {
    /// What is known of the LMK; None until one exists. The test LMK has a record without shares.
    record: Option<LmkRecord>,
    /// The loaded LMK; None while sealed.
    lmk: Option<Lmk>,
    /// The current LMK is the published test LMK.
    dangerous_test_lmk: bool,
    /// The check that failed at the last self-test, if it failed.
    self_test_failure: Option<String>,
    /// Shares accepted towards an unseal.
    submitted: Vec<ParsedShare>,
    /// A prepared, uncommitted LMK rotation.
    pending: Option<PendingRotation>,
    /// A tamper event has happened since start-up.
    tampered: bool,
}

struct PendingRotation {
    lmk: Lmk,
    record: LmkRecord,
}

impl State {
    /// The LMK, if key operations are served; otherwise why not.
    fn lmk(&self) -> Result<&Lmk> {
        if let Some(name) = &self.self_test_failure {
            return Err(Error::SelfTestFailed(name.clone()));
        }
        if self.record.is_none() {
            return Err(Error::Uninitialised);
        }
        self.lmk.as_ref().ok_or(Error::Sealed)
    }

    fn hsm_state(&self) -> HsmState {
        if self.self_test_failure.is_some() {
            HsmState::SelfTestFailed
        } else if self.record.is_none() {
            HsmState::Uninitialised
        } else if self.lmk.is_none() {
            HsmState::Sealed
        } else {
            HsmState::Operational
        }
    }

    fn progress(&self, record: &LmkRecord) -> UnsealProgress {
        UnsealProgress {
            submitted: u8::try_from(self.submitted.len()).unwrap_or(u8::MAX),
            threshold: record.threshold,
            unsealed: self.lmk.is_some(),
        }
    }

    /// Drops the LMK and everything that could rebuild or stand for it.
    fn zeroize_secrets(&mut self) {
        self.lmk = None;
        self.submitted.clear();
        self.pending = None;
    }
}

/// Whether a key, once unwrapped, is kept in the hot-key cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caching {
    /// A key that acts on other keys or data, likely used again.
    Keep,
    /// A key used once (the subject of the operation).
    Skip,
}

impl LocalHsm {
    /// Starts the simulator: runs the self-test, loads the state file if there is one (→
    /// `Sealed`), or the test LMK (→ `Operational`). A failing self-test does not stop it from
    /// starting: it reports the failure and refuses key operations.
    pub fn open(config: LocalHsmConfig) -> Result<LocalHsm> {
        let self_test_failure = (config.self_test)().err().map(|e| failure_name(&e));
        let (record, lmk, persist_dir) = if config.dangerous_test_lmk {
            let lmk = Lmk::dangerous_test()?;
            let record = LmkRecord {
                kcv: lmk.kcv().clone(),
                threshold: 0,
                check_values: Vec::new(),
            };
            (Some(record), Some(lmk), None)
        } else {
            let record = match &config.state_dir {
                Some(dir) => lmk::load_record(dir)?,
                None => None,
            };
            (record, None, config.state_dir)
        };
        Ok(LocalHsm {
            persist_dir,
            self_test: config.self_test,
            state: RwLock::new(State {
                record,
                lmk,
                dangerous_test_lmk: config.dangerous_test_lmk,
                self_test_failure,
                submitted: Vec::new(),
                pending: None,
                tampered: false,
            }),
            cache: HotKeyCache::new(config.cache_capacity),
        })
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, State>> {
        self.state.read().map_err(|_| Error::StatePoisoned)
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, State>> {
        self.state.write().map_err(|_| Error::StatePoisoned)
    }

    fn persist_dir(&self) -> Option<&Path> {
        self.persist_dir.as_deref()
    }

    /// Runs `op` with the LMK if the HSM is operational, holding the state lock for reading so
    /// that a seal waits for it.
    fn with_lmk<T>(&self, op: impl FnOnce(&Lmk) -> Result<T>) -> Result<T> {
        let state = self.read()?;
        op(state.lmk()?)
    }

    /// The key of `token` (from the cache or unwrapped under `lmk`), if its usage is one of
    /// `allowed`; otherwise [`Error::WrongUsage`] naming `operation`.
    fn key_for(
        &self,
        lmk: &Lmk,
        token: &KeyToken,
        allowed: &[KeyUsage],
        operation: &'static str,
        caching: Caching,
    ) -> Result<Arc<TokenKey>> {
        let digest = cache::digest(token);
        let key = match self.cache.get(&digest)? {
            Some(hit) => hit,
            None => {
                let key = Arc::new(lmk.unwrap(token)?);
                if caching == Caching::Keep && allowed.contains(&key.usage) {
                    self.cache.insert(digest, Arc::clone(&key))?;
                }
                key
            }
        };
        if !allowed.contains(&key.usage) {
            return Err(Error::WrongUsage {
                usage: key.usage.name().into(),
                operation: operation.into(),
            });
        }
        Ok(key)
    }

    fn status_now(&self) -> Result<HsmStatus> {
        let state = self.read()?;
        let unseal = match &state.record {
            Some(record) if state.lmk.is_none() && !record.check_values.is_empty() => {
                Some(state.progress(record))
            }
            _ => None,
        };
        Ok(HsmStatus {
            state: state.hsm_state(),
            secure: false,
            dangerous_test_lmk: state.dangerous_test_lmk,
            lmk_kcv: state.record.as_ref().map(|r| r.kcv.clone()),
            unseal,
            self_test_failure: state.self_test_failure.clone(),
            self_test_passed: state.self_test_failure.is_none(),
            cached_keys: self.cache.len()?,
            tampered: state.tampered,
        })
    }

    fn init_lmk_now(&self, threshold: u8, shares: u8) -> Result<LmkInit> {
        let mut state = self.write()?;
        if state.record.is_some() {
            return Err(Error::AlreadyInitialised);
        }
        if let Some(name) = &state.self_test_failure {
            return Err(Error::SelfTestFailed(name.clone()));
        }
        lmk::check_share_counts(threshold, shares)?;
        if let Some(dir) = self.persist_dir()
            && lmk::load_record(dir)?.is_some()
        {
            return Err(Error::AlreadyInitialised);
        }
        let lmk = Lmk::generate()?;
        let (shares, record) = lmk.split(threshold, shares)?;
        if let Some(dir) = self.persist_dir() {
            lmk::store_record(dir, &record)?;
        }
        let lmk_kcv = lmk.kcv().clone();
        state.record = Some(record);
        state.lmk = Some(lmk);
        state.submitted.clear();
        Ok(LmkInit { shares, lmk_kcv })
    }

    fn unseal_now(&self, share: &LmkShare) -> Result<UnsealProgress> {
        let mut state = self.write()?;
        let record = state.record.clone().ok_or(Error::Uninitialised)?;
        if state.lmk.is_some() {
            return Ok(state.progress(&record));
        }
        if record.check_values.is_empty() {
            return Err(Error::Share(
                "the dangerous test LMK has no shares: restart the HSM to load it again".into(),
            ));
        }
        let parsed = record.accept(share)?;
        if state.submitted.iter().any(|s| s.index == parsed.index) {
            return Err(Error::Share("this share was already submitted".into()));
        }
        state.submitted.push(parsed);
        if state.submitted.len() < usize::from(record.threshold) {
            return Ok(state.progress(&record));
        }
        let submitted = core::mem::take(&mut state.submitted);
        // Reported once unsealed: the shares that rebuilt the LMK (the list itself is gone).
        let accepted = u8::try_from(submitted.len()).unwrap_or(u8::MAX);
        let lmk = lmk::combine(record.threshold, &submitted)?;
        drop(submitted);
        if !lmk.has_kcv(&record.kcv) {
            return Err(Error::LmkKcvMismatch);
        }
        let tested = (self.self_test)();
        state.lmk = Some(lmk);
        match tested {
            Ok(()) => {
                state.self_test_failure = None;
                Ok(UnsealProgress {
                    submitted: accepted,
                    ..state.progress(&record)
                })
            }
            Err(e) => {
                state.self_test_failure = Some(failure_name(&e));
                Err(e)
            }
        }
    }

    fn seal_now(&self, tamper: bool) -> Result<()> {
        let mut state = self.write()?;
        state.zeroize_secrets();
        if tamper {
            state.tampered = true;
        }
        self.cache.clear()
    }

    fn self_test_now(&self) -> Result<()> {
        let tested = (self.self_test)();
        let mut state = self.write()?;
        match tested {
            Ok(()) => {
                state.self_test_failure = None;
                Ok(())
            }
            Err(e) => {
                state.self_test_failure = Some(failure_name(&e));
                Err(e)
            }
        }
    }

    fn generate_key_now(&self, spec: KeySpec) -> Result<WrappedKey> {
        self.with_lmk(|lmk| {
            check_algorithm(spec.usage, spec.algorithm)?;
            let key = crate::crypto::random::generate_key(spec.algorithm)?;
            wrapped(lmk, &key, spec.usage, spec.exportability)
        })
    }

    fn form_key_now(&self, spec: KeySpec, components: &[Component]) -> Result<WrappedKey> {
        self.with_lmk(|lmk| {
            check_algorithm(spec.usage, spec.algorithm)?;
            if !COMPONENTS.contains(&components.len()) {
                return Err(Error::Count {
                    field: "components".into(),
                    expected: "2 to 9".into(),
                });
            }
            let mut sum = Zeroizing::new(vec![0u8; spec.algorithm.key_len()]);
            for (i, component) in components.iter().enumerate() {
                let bytes = decode_secret_hex(component.secret_hex(), "component")?;
                let part = SecretKey::new(spec.algorithm, &bytes)?;
                if !component.expected_kcv.matches(&part)? {
                    return Err(Error::ComponentKcv { index: i + 1 });
                }
                sum.iter_mut().zip(bytes.iter()).for_each(|(s, b)| *s ^= b);
            }
            let key = SecretKey::new(spec.algorithm, &sum)?;
            key.check_not_weak()?;
            wrapped(lmk, &key, spec.usage, spec.exportability)
        })
    }

    fn import_key_now(&self, kek: &KeyToken, block: &str, usage: KeyUsage) -> Result<WrappedKey> {
        self.with_lmk(|lmk| {
            let kek = self.key_for(
                lmk,
                kek,
                &[KeyUsage::KeyBlockProtection],
                "unwrap a key block",
                Caching::Keep,
            )?;
            let (header, key) = tr31::unwrap(&kek.key, block)?;
            let exportability = check_import_header(&header, usage)?;
            check_algorithm(usage, key.algorithm())?;
            key.check_not_weak()?;
            wrapped(lmk, &key, usage, exportability)
        })
    }

    fn export_key_now(
        &self,
        kek: &KeyToken,
        key: &KeyToken,
        version: KeyBlockVersion,
    ) -> Result<ExportedKey> {
        self.with_lmk(|lmk| {
            let kek = self.key_for(
                lmk,
                kek,
                &[KeyUsage::KeyBlockProtection],
                "wrap a key block",
                Caching::Keep,
            )?;
            let key = self.key_for(
                lmk,
                key,
                &[
                    KeyUsage::CardDerivation,
                    KeyUsage::CardKey,
                    KeyUsage::AuditMac,
                ],
                "be exported",
                Caching::Skip,
            )?;
            if key.exportability != Exportability::Exportable {
                return Err(Error::NotExportable);
            }
            let header = lmk::key_block_header(
                version,
                key.usage,
                key.key.algorithm(),
                tr31::Exportability::NonExportable,
            )?
            .with_optional_block(OptionalBlock::key_check_value(&key.key)?);
            let block = tr31::wrap(&kek.key, &header, &key.key)?;
            Ok(ExportedKey {
                block,
                kcv: kcv::compute_default(&key.key)?,
            })
        })
    }

    fn derive_key_now(
        &self,
        parent: &KeyToken,
        method: Dispersion,
        factors: &[Factor],
        child_usage: KeyUsage,
        child_exportability: Exportability,
    ) -> Result<WrappedKey> {
        self.with_lmk(|lmk| {
            let parent = self.key_for(
                lmk,
                parent,
                &[KeyUsage::CardDerivation],
                "derive a key",
                Caching::Keep,
            )?;
            if !matches!(child_usage, KeyUsage::CardDerivation | KeyUsage::CardKey) {
                return Err(Error::WrongUsage {
                    usage: child_usage.name().into(),
                    operation: "hold a derived key".into(),
                });
            }
            if !FACTORS.contains(&factors.len()) {
                return Err(Error::Count {
                    field: "factors".into(),
                    expected: "1 to 8".into(),
                });
            }
            let child = diversify::diversify_chain(&parent.key, method, factors)?;
            child.check_not_weak()?;
            wrapped(lmk, &child, child_usage, child_exportability)
        })
    }

    fn write_key_command_now(&self, request: &WriteKeyRequest) -> Result<WriteKeyCommand> {
        self.with_lmk(|lmk| {
            let key = self.key_for(
                lmk,
                &request.key,
                &[KeyUsage::CardKey, KeyUsage::CardDerivation],
                "be written to a card",
                Caching::Skip,
            )?;
            let protect = self.key_for(
                lmk,
                &request.protect,
                &[KeyUsage::CardKey],
                "protect a key written to a card",
                Caching::Keep,
            )?;
            let mut data =
                Zeroizing::new(Vec::with_capacity(request.key_header.len() + key.key.len()));
            data.extend_from_slice(&request.key_header);
            data.extend_from_slice(key.key.secret_bytes());
            let apdu = secure_messaging_apdu(
                &protect.key,
                [request.cla, request.ins, request.p1, request.p2],
                &data,
                &request.challenge,
                request.fold,
            )?;
            Ok(WriteKeyCommand {
                apdu,
                kcv: kcv::compute_default(&key.key)?,
            })
        })
    }

    fn kcv_now(&self, token: &KeyToken) -> Result<Kcv> {
        self.with_lmk(|lmk| {
            let key = self.key_for(lmk, token, &KeyUsage::ALL, "", Caching::Skip)?;
            kcv::compute_default(&key.key)
        })
    }

    fn random_now(&self, len: usize) -> Result<Vec<u8>> {
        self.with_lmk(|_| {
            if !RANDOM_LEN.contains(&len) {
                return Err(Error::Count {
                    field: "random length".into(),
                    expected: "1 to 4096 bytes".into(),
                });
            }
            crate::crypto::random::random_bytes(len)
        })
    }

    fn audit_mac(&self, lmk: &Lmk, token: &KeyToken, data: &[u8]) -> Result<Vec<u8>> {
        let key = self.key_for(
            lmk,
            token,
            &[KeyUsage::AuditMac],
            "compute or verify an audit MAC",
            Caching::Keep,
        )?;
        crate::crypto::cipher::cmac(&key.key, data)
    }

    fn prepare_lmk_rotation_now(
        &self,
        tokens: &[KeyToken],
        threshold: u8,
        shares: u8,
    ) -> Result<LmkRotation> {
        // The re-wrapping runs under the read lock, so key operations go on meanwhile.
        let (new, issued, record, rewrapped, old_kcv) = self.with_lmk(|lmk| {
            lmk::check_share_counts(threshold, shares)?;
            let new = Lmk::generate()?;
            let rewrapped = tokens
                .iter()
                .map(|token| lmk.rewrap(token, &new))
                .collect::<Result<Vec<_>>>()?;
            let (issued, record) = new.split(threshold, shares)?;
            Ok((new, issued, record, rewrapped, lmk.kcv().clone()))
        })?;
        let mut state = self.write()?;
        // A seal, or another rotation, may have happened since.
        if !state.lmk()?.has_kcv(&old_kcv) {
            return Err(Error::RotationNotPrepared);
        }
        let lmk_kcv = new.kcv().clone();
        state.pending = Some(PendingRotation { lmk: new, record });
        Ok(LmkRotation {
            shares: issued,
            lmk_kcv,
            tokens: rewrapped,
        })
    }

    fn commit_lmk_rotation_now(&self, new_lmk_kcv: &Kcv) -> Result<()> {
        let mut state = self.write()?;
        state.lmk()?;
        let Some(pending) = state.pending.take_if(|p| p.lmk.has_kcv(new_lmk_kcv)) else {
            return Err(Error::RotationNotPrepared);
        };
        if let Some(dir) = self.persist_dir()
            && let Err(e) = lmk::store_record(dir, &pending.record)
        {
            // Nothing changed: the rotation can be committed again.
            state.pending = Some(pending);
            return Err(e);
        }
        state.lmk = Some(pending.lmk);
        state.record = Some(pending.record);
        state.dangerous_test_lmk = false;
        state.submitted.clear();
        self.cache.clear()
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
        self.self_test_now()
    }

    async fn generate_key(&self, spec: KeySpec) -> Result<WrappedKey> {
        self.generate_key_now(spec)
    }

    async fn form_key(&self, spec: KeySpec, components: Vec<Component>) -> Result<WrappedKey> {
        self.form_key_now(spec, &components)
    }

    async fn import_key(&self, kek: &KeyToken, block: &str, usage: KeyUsage) -> Result<WrappedKey> {
        self.import_key_now(kek, block, usage)
    }

    async fn export_key(
        &self,
        kek: &KeyToken,
        key: &KeyToken,
        version: KeyBlockVersion,
    ) -> Result<ExportedKey> {
        self.export_key_now(kek, key, version)
    }

    async fn derive_key(
        &self,
        parent: &KeyToken,
        method: Dispersion,
        factors: &[Factor],
        child_usage: KeyUsage,
        child_exportability: Exportability,
    ) -> Result<WrappedKey> {
        self.derive_key_now(parent, method, factors, child_usage, child_exportability)
    }

    async fn write_key_command(&self, request: WriteKeyRequest) -> Result<WriteKeyCommand> {
        self.write_key_command_now(&request)
    }

    async fn kcv(&self, key: &KeyToken) -> Result<Kcv> {
        self.kcv_now(key)
    }

    async fn random(&self, len: usize) -> Result<Vec<u8>> {
        self.random_now(len)
    }

    async fn mac(&self, key: &KeyToken, data: &[u8]) -> Result<Vec<u8>> {
        self.with_lmk(|lmk| self.audit_mac(lmk, key, data))
    }

    async fn verify_mac(&self, key: &KeyToken, data: &[u8], mac: &[u8]) -> Result<()> {
        self.with_lmk(|lmk| {
            let expected = self.audit_mac(lmk, key, data)?;
            if bool::from(expected.as_slice().ct_eq(mac)) {
                Ok(())
            } else {
                Err(Error::Verification)
            }
        })
    }

    async fn prepare_lmk_rotation(
        &self,
        tokens: Vec<KeyToken>,
        threshold: u8,
        shares: u8,
    ) -> Result<LmkRotation> {
        self.prepare_lmk_rotation_now(&tokens, threshold, shares)
    }

    async fn commit_lmk_rotation(&self, new_lmk_kcv: &Kcv) -> Result<()> {
        self.commit_lmk_rotation_now(new_lmk_kcv)
    }
}

/// The name of the check a self-test error reports.
fn failure_name(error: &Error) -> String {
    match error {
        Error::SelfTest(name) => name.to_string(),
        other => other.to_string(),
    }
}

/// A token and KCV for `key`.
fn wrapped(
    lmk: &Lmk,
    key: &SecretKey,
    usage: KeyUsage,
    exportability: Exportability,
) -> Result<WrappedKey> {
    Ok(WrappedKey {
        token: lmk.wrap(key, usage, exportability)?,
        kcv: kcv::compute_default(key)?,
    })
}

/// Refuses a key of `alg` for `usage` where the HSM could never use it: key-block protection
/// needs TDES (version B) or AES (version D), the audit MAC needs AES.
fn check_algorithm(usage: KeyUsage, alg: Algorithm) -> Result<()> {
    match usage {
        KeyUsage::KeyBlockProtection
            if !(alg.is_aes() || matches!(alg, Algorithm::Tdes2 | Algorithm::Tdes3)) =>
        {
            Err(Error::Unsupported {
                op: "key-block protection".into(),
                alg,
            })
        }
        KeyUsage::AuditMac if !alg.is_aes() => Err(Error::Unsupported {
            op: "the audit MAC".into(),
            alg,
        }),
        _ => Ok(()),
    }
}

/// Checks that an imported block's header fits `usage` and returns the token's exportability.
///
/// TR-31 usages `K0`/`K1` import as key-block protection keys, `E6` as card derivation, `E5`
/// as card keys, `M6` as audit MAC keys. The mode of use must be the token's own (see
/// [`crate::lmk`]) or `N`: the token's mode is never broader than the block's. Exportability
/// `E` stays exportable; `N` and `S` (exportable under an untrusted key) become non-exportable.
fn check_import_header(header: &KeyBlockHeader, usage: KeyUsage) -> Result<Exportability> {
    let declared = match header.key_usage.as_str() {
        "K0" | "K1" => KeyUsage::KeyBlockProtection,
        "E6" => KeyUsage::CardDerivation,
        "E5" => KeyUsage::CardKey,
        "M6" => KeyUsage::AuditMac,
        _ => {
            return Err(Error::KeyBlockHeader {
                field: "key usage".into(),
            });
        }
    };
    if declared != usage {
        return Err(Error::WrongUsage {
            usage: declared.name().into(),
            operation: match usage {
                KeyUsage::KeyBlockProtection => "become a key-block protection key".into(),
                KeyUsage::CardDerivation => "become a card derivation key".into(),
                KeyUsage::CardKey => "become a card key".into(),
                KeyUsage::AuditMac => "become an audit MAC key".into(),
            },
        });
    }
    let mode = header.mode_of_use;
    if mode != lmk::tr31_usage(usage).1 && mode != ModeOfUse::NoRestriction {
        return Err(Error::KeyBlockHeader {
            field: "mode of use".into(),
        });
    }
    Ok(match header.exportability {
        tr31::Exportability::Trusted => Exportability::Exportable,
        tr31::Exportability::NonExportable | tr31::Exportability::Sensitive => {
            Exportability::NonExportable
        }
    })
}

/// A secure-messaging command (DOMAIN.md §5): `CLA INS P1 P2 Lc ‖ field ‖ MAC` with
/// `field = ECB(protect, Ld ‖ data ‖ 80 00..)`, `Lc = |field| + 4` and
/// `MAC = card_mac(protect, challenge, CLA INS P1 P2 Lc ‖ field)`.
fn secure_messaging_apdu(
    protect: &SecretKey,
    command: [u8; 4],
    data: &[u8],
    challenge: &[u8],
    fold: MacFold,
) -> Result<Vec<u8>> {
    let field = mac::encrypt_key_field(protect, data)?;
    let lc = u8::try_from(field.len() + mac::CARD_MAC_LEN).map_err(|_| Error::DataLength {
        field: "secure-messaging command data".into(),
        expected: "at most 255 bytes with its MAC".into(),
        actual: field.len() + mac::CARD_MAC_LEN,
    })?;
    let mut apdu = Vec::with_capacity(5 + field.len() + mac::CARD_MAC_LEN);
    apdu.extend_from_slice(&command);
    apdu.push(lc);
    apdu.extend_from_slice(&field);
    let tag = mac::card_mac(protect, challenge, &apdu, fold)?;
    apdu.extend_from_slice(&tag);
    Ok(apdu)
}

// `LocalHsm` is shared across the tasks of a server.
const _: fn() = || {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<LocalHsm>();
};

#[cfg(test)]
mod tests {
    use hsm_api::KcvMethod;

    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn block_on<F: core::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    fn component(alg: Algorithm, hex: &str) -> Component {
        let key = SecretKey::from_hex(alg, hex).unwrap();
        Component::new(
            Zeroizing::new(hex.to_owned()),
            kcv::compute_default(&key).unwrap(),
        )
    }

    fn spec(algorithm: Algorithm, usage: KeyUsage) -> KeySpec {
        KeySpec {
            algorithm,
            usage,
            exportability: Exportability::Exportable,
        }
    }

    /// DOMAIN.md §5, the SSC 3.0 trace: the command built from the trace's key, challenge and
    /// data is byte for byte the one the card received.
    #[test]
    fn secure_messaging_reproduces_the_published_trace() {
        let key = SecretKey::from_hex(Algorithm::Sm4, "4D59306C7397E06DE3CD82A14A926FBA").unwrap();
        let apdu = secure_messaging_apdu(
            &key,
            [0x84, 0x5E, 0x01, 0x00],
            &h("72923074"),
            &h("84B7B9199A29A245B2ADE3E80BE4EAF3"),
            MacFold::Xor4,
        )
        .unwrap();
        assert_eq!(
            hex::encode_upper(apdu),
            "845E01001491A41964F0736EB6F6003DD1934FFE11E48CEFB3"
        );
    }

    /// The whole path through tokens: an SM4 protect key formed from two components whose XOR
    /// is the trace key; the card decrypts the field to `Ld ‖ header ‖ key`; the MAC is the SM4
    /// card MAC of the command's first bytes.
    #[test]
    fn write_key_command_for_an_sm4_card() {
        let hsm = LocalHsm::open(LocalHsmConfig {
            dangerous_test_lmk: true,
            ..LocalHsmConfig::default()
        })
        .unwrap();
        let protect = block_on(hsm.form_key(
            spec(Algorithm::Sm4, KeyUsage::CardKey),
            vec![
                component(Algorithm::Sm4, "0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F"),
                component(Algorithm::Sm4, "42563F637C98EF62ECC28DAE459D60B5"),
            ],
        ))
        .unwrap();
        assert_eq!(
            protect.kcv,
            kcv::compute_default(
                &SecretKey::from_hex(Algorithm::Sm4, "4D59306C7397E06DE3CD82A14A926FBA").unwrap()
            )
            .unwrap()
        );
        let card_key_hex = "00112233445566778899AABBCCDDEEFF";
        let key = block_on(hsm.form_key(
            spec(Algorithm::Sm4, KeyUsage::CardKey),
            vec![
                component(Algorithm::Sm4, "0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F"),
                component(Algorithm::Sm4, "0F1E2D3C4B5A69788796A5B4C3D2E1F0"),
            ],
        ))
        .unwrap();
        let challenge = h("84B7B9199A29A245B2ADE3E80BE4EAF3");
        let header = h("F001EF0F0110");
        let command = block_on(hsm.write_key_command(WriteKeyRequest {
            key: key.token.clone(),
            protect: protect.token.clone(),
            cla: 0x84,
            ins: 0xD4,
            p1: 0x01,
            p2: 0x00,
            key_header: header.clone(),
            challenge: challenge.clone(),
            fold: MacFold::Xor4,
        }))
        .unwrap();
        let apdu = command.apdu;
        let protect_key =
            SecretKey::from_hex(Algorithm::Sm4, "4D59306C7397E06DE3CD82A14A926FBA").unwrap();
        // 1 + 6 + 16 bytes, padded to two blocks: Lc = 32 + 4.
        assert_eq!(&apdu[..5], &[0x84, 0xD4, 0x01, 0x00, 36]);
        assert_eq!(apdu.len(), 5 + 36);
        let field = &apdu[5..37];
        let clear = mac::decrypt_key_field(&protect_key, field).unwrap();
        assert_eq!(
            hex::encode_upper(&*clear),
            format!("F001EF0F0110{card_key_hex}")
        );
        let tag = mac::card_mac(&protect_key, &challenge, &apdu[..37], MacFold::Xor4).unwrap();
        assert_eq!(&apdu[37..], &tag);
        assert_eq!(command.kcv, key.kcv);
    }

    /// A TDES protect key: the MAC is the PBOC retail MAC of the same bytes.
    #[test]
    fn write_key_command_for_a_tdes_card() {
        let hsm = LocalHsm::open(LocalHsmConfig {
            dangerous_test_lmk: true,
            ..LocalHsmConfig::default()
        })
        .unwrap();
        let protect_hex = "0123456789ABCDEFFEDCBA9876543210";
        let protect = block_on(hsm.form_key(
            spec(Algorithm::Tdes2, KeyUsage::CardKey),
            vec![
                component(Algorithm::Tdes2, "11111111111111111111111111111111"),
                component(Algorithm::Tdes2, "1032547698BADCFEEFCDAB8967452301"),
            ],
        ))
        .unwrap();
        let key = block_on(hsm.generate_key(spec(Algorithm::Tdes2, KeyUsage::CardKey))).unwrap();
        let challenge = h("1122334455667788");
        let command = block_on(hsm.write_key_command(WriteKeyRequest {
            key: key.token.clone(),
            protect: protect.token,
            cla: 0x84,
            ins: 0xD4,
            p1: 0x01,
            p2: 0x00,
            key_header: h("F0020101FF000010"),
            challenge: challenge.clone(),
            fold: MacFold::Xor4,
        }))
        .unwrap();
        let protect_key = SecretKey::from_hex(Algorithm::Tdes2, protect_hex).unwrap();
        let apdu = command.apdu;
        let n = apdu.len();
        // Ld ‖ 8-byte header ‖ 16-byte key ‖ 80 00.. = 32 bytes; Lc = 36.
        assert_eq!(apdu[4], 36);
        assert_eq!(n, 5 + 36);
        let clear = mac::decrypt_key_field(&protect_key, &apdu[5..n - 4]).unwrap();
        assert_eq!(&clear[..8], &h("F0020101FF000010")[..]);
        let written = SecretKey::new(Algorithm::Tdes2, &clear[8..]).unwrap();
        assert_eq!(kcv::compute_default(&written).unwrap(), key.kcv);
        let tag = mac::card_mac(&protect_key, &challenge, &apdu[..n - 4], MacFold::Xor4).unwrap();
        assert_eq!(&apdu[n - 4..], &tag);
    }

    #[test]
    fn a_command_too_long_for_lc_is_refused() {
        let key = SecretKey::new(Algorithm::Tdes2, &[0x5A; 16]).unwrap();
        assert!(matches!(
            secure_messaging_apdu(&key, [0x84, 0xD4, 0, 0], &[0; 250], &[0; 8], MacFold::Xor4),
            Err(Error::DataLength { .. })
        ));
    }

    #[test]
    fn import_headers_map_to_usages() {
        let header = |usage: &str, mode: ModeOfUse, exp: tr31::Exportability| KeyBlockHeader {
            version: KeyBlockVersion::D,
            key_usage: usage.to_owned(),
            algorithm: tr31::KeyBlockAlgorithm::Tdes,
            mode_of_use: mode,
            key_version: "00".to_owned(),
            exportability: exp,
            optional_blocks: Vec::new(),
        };
        use tr31::Exportability as X;
        assert_eq!(
            check_import_header(
                &header("E6", ModeOfUse::DeriveKeys, X::Trusted),
                KeyUsage::CardDerivation
            ),
            Ok(Exportability::Exportable)
        );
        assert_eq!(
            check_import_header(
                &header("K0", ModeOfUse::NoRestriction, X::Sensitive),
                KeyUsage::KeyBlockProtection
            ),
            Ok(Exportability::NonExportable)
        );
        assert_eq!(
            check_import_header(
                &header("E5", ModeOfUse::NoRestriction, X::Trusted),
                KeyUsage::CardDerivation
            ),
            Err(Error::WrongUsage {
                usage: "card".into(),
                operation: "become a card derivation key".into()
            })
        );
        assert_eq!(
            check_import_header(
                &header("K1", ModeOfUse::EncryptOnly, X::Trusted),
                KeyUsage::KeyBlockProtection
            ),
            Err(Error::KeyBlockHeader {
                field: "mode of use".into()
            })
        );
        assert_eq!(
            check_import_header(
                &header("P0", ModeOfUse::EncryptDecrypt, X::Trusted),
                KeyUsage::CardKey
            ),
            Err(Error::KeyBlockHeader {
                field: "key usage".into()
            })
        );
    }

    /// Shamir below the threshold, through the HSM: m−1 shares leave it sealed; interpolating
    /// them anyway gives a key with another KCV (see `lmk::tests` for what Shamir guarantees).
    #[test]
    fn fewer_than_m_shares_rebuild_nothing() {
        let hsm = LocalHsm::open(LocalHsmConfig::default()).unwrap();
        let init = block_on(hsm.init_lmk(3, 4)).unwrap();
        block_on(hsm.seal()).unwrap();
        let record = hsm.read().unwrap().record.clone().unwrap();
        let parsed: Vec<ParsedShare> = init.shares[..2]
            .iter()
            .map(|s| record.accept(&s.share).unwrap())
            .collect();
        let partial = lmk::combine(2, &parsed).unwrap();
        assert!(!partial.has_kcv(&init.lmk_kcv));
        assert_eq!(init.lmk_kcv.method(), KcvMethod::Cmac);
        for issued in init.shares.into_iter().take(2) {
            let progress = block_on(hsm.unseal(issued.share)).unwrap();
            assert!(!progress.unsealed);
        }
        assert_eq!(block_on(hsm.status()).unwrap().state, HsmState::Sealed);
    }
}
