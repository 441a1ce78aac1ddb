//! The simulator's state and its life cycle: start-up, LMK creation, unseal, seal and tamper,
//! the self-test gate, LMK rotation (see the state diagram in [`super`]).

use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hsm_api::{
    Error, HsmState, HsmStatus, Kcv, KeyBackup, KeyToken, LmkInit, LmkRotation, LmkShare, Result,
    UnsealProgress,
};

use super::{LocalHsm, LocalHsmConfig};
use crate::backup::Split;
use crate::cache::HotKeyCache;
use crate::handout::Handout;
use crate::lmk::{self, Lmk, LmkRecord, ParsedShare};

/// Everything that changes, behind one lock.
pub(super) struct State {
    /// What is known of the LMK; None until one exists. The test LMK has a record without shares.
    pub(super) record: Option<LmkRecord>,
    /// The loaded LMK; None while sealed.
    lmk: Option<Lmk>,
    /// The current LMK is the published test LMK.
    dangerous_test_lmk: bool,
    /// The check that failed at the last self-test, if it failed.
    self_test_failure: Option<String>,
    /// Shares accepted towards an unseal.
    pub(super) submitted: Vec<ParsedShare>,
    /// A prepared, uncommitted LMK rotation.
    pending: Option<PendingRotation>,
    /// A tamper event has happened since start-up.
    tampered: bool,
    /// Shares made here and not yet taken, each handed out once.
    pub(super) parts: Handout,
}

struct PendingRotation {
    lmk: Lmk,
    record: LmkRecord,
    /// The set of the new LMK's shares (commit waits until it is all taken).
    parts: String,
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
        self.parts.clear();
    }
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
            (record, None, config.state_dir.map(Arc::from))
        };
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        Ok(LocalHsm {
            persist_dir,
            self_test: config.self_test,
            workers: Arc::new(tokio::sync::Semaphore::new(workers)),
            state: Arc::new(RwLock::new(State {
                record,
                lmk,
                dangerous_test_lmk: config.dangerous_test_lmk,
                self_test_failure,
                submitted: Vec::new(),
                pending: None,
                tampered: false,
                parts: Handout::default(),
            })),
            cache: Arc::new(HotKeyCache::new(config.cache_capacity)),
        })
    }

    pub(super) fn read(&self) -> Result<RwLockReadGuard<'_, State>> {
        self.state.read().map_err(|_| Error::StatePoisoned)
    }

    pub(super) fn write(&self) -> Result<RwLockWriteGuard<'_, State>> {
        self.state.write().map_err(|_| Error::StatePoisoned)
    }

    fn persist_dir(&self) -> Option<&Path> {
        self.persist_dir.as_deref()
    }

    /// Runs `op` with the LMK and the parts held for hand-out if the HSM is operational,
    /// holding the state lock for writing: parts deposited there cannot outlive a seal that
    /// came between.
    pub(super) fn with_lmk_and_parts<T>(
        &self,
        op: impl FnOnce(&Lmk, &mut Handout) -> Result<T>,
    ) -> Result<T> {
        let mut state = self.write()?;
        // Its checks (self-test, initialised, sealed) first.
        state.lmk()?;
        let State { lmk, parts, .. } = &mut *state;
        op(lmk.as_ref().ok_or(Error::Sealed)?, parts)
    }

    /// Runs `op` with the LMK if the HSM is operational, holding the state lock for reading so
    /// that a seal waits for it.
    pub(super) fn with_lmk<T>(&self, op: impl FnOnce(&Lmk) -> Result<T>) -> Result<T> {
        let state = self.read()?;
        op(state.lmk()?)
    }

    pub(super) fn status_now(&self) -> Result<HsmStatus> {
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

    pub(super) fn init_lmk_now(&self, threshold: u8, shares: u8) -> Result<LmkInit> {
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
        // Held before the LMK is recorded, so that a recorded LMK always has its shares.
        let parts = state.parts.deposit(threshold, shares)?;
        if let Some(dir) = self.persist_dir()
            && let Err(e) = lmk::store_record(dir, &record)
        {
            state.parts.discard(&parts.set);
            return Err(e);
        }
        let lmk_kcv = lmk.kcv().clone();
        state.record = Some(record);
        state.lmk = Some(lmk);
        state.submitted.clear();
        Ok(LmkInit {
            parts: Some(parts),
            lmk_kcv,
        })
    }

    pub(super) fn unseal_now(&self, share: &LmkShare) -> Result<UnsealProgress> {
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

    pub(super) fn seal_now(&self, tamper: bool) -> Result<()> {
        let mut state = self.write()?;
        state.zeroize_secrets();
        if tamper {
            state.tampered = true;
        }
        self.cache.clear()
    }

    pub(super) fn self_test_now(&self) -> Result<()> {
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

    pub(super) fn prepare_lmk_rotation_now(
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
        let parts = state.parts.deposit(threshold, issued)?;
        if let Some(old) = state.pending.replace(PendingRotation {
            lmk: new,
            record,
            parts: parts.set.clone(),
        }) {
            state.parts.discard(&old.parts);
        }
        Ok(LmkRotation {
            parts: Some(parts),
            lmk_kcv,
            tokens: rewrapped,
        })
    }

    /// More tokens re-wrapped under the prepared LMK named by `new_lmk_kcv`, under one read
    /// lock (a seal or a commit waits; key operations go on).
    pub(super) fn rewrap_for_rotation_now(
        &self,
        new_lmk_kcv: &Kcv,
        tokens: &[KeyToken],
    ) -> Result<Vec<KeyToken>> {
        let state = self.read()?;
        let lmk = state.lmk()?;
        let pending = state
            .pending
            .as_ref()
            .filter(|p| p.lmk.has_kcv(new_lmk_kcv))
            .ok_or(Error::RotationNotPrepared)?;
        tokens
            .iter()
            .map(|token| lmk.rewrap(token, &pending.lmk))
            .collect()
    }

    pub(super) fn commit_lmk_rotation_now(&self, new_lmk_kcv: &Kcv) -> Result<()> {
        let mut state = self.write()?;
        state.lmk()?;
        let Some(pending) = state.pending.take_if(|p| p.lmk.has_kcv(new_lmk_kcv)) else {
            return Err(Error::RotationNotPrepared);
        };
        if state.parts.holds(&pending.parts) {
            // Not every custodian has their share of the new LMK yet.
            state.pending = Some(pending);
            return Err(Error::PartNotAvailable);
        }
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

impl LocalHsm {
    /// Keeps the shares of a root backup made under the current LMK until each is taken
    /// (refused if the HSM was sealed meanwhile).
    pub(super) fn deposit_backup(&self, mut split: Split) -> Result<KeyBackup> {
        let mut state = self.write()?;
        state.lmk()?;
        let shares = core::mem::take(&mut split.shares);
        let parts = state.parts.deposit(split.threshold, shares)?;
        Ok(split.backup(parts))
    }
}

/// The name of the check a self-test error reports.
fn failure_name(error: &Error) -> String {
    match error {
        Error::SelfTest(name) => name.to_string(),
        other => other.to_string(),
    }
}
