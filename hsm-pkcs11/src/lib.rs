//! # hsm-pkcs11 — the HSM boundary over a PKCS#11 token
//!
//! [`Pkcs11Hsm`] implements [`hsm_api::Hsm`] on a PKCS#11 token (through `cryptoki`), so that a
//! province can run sscard-kms with a certified hardware HSM instead of the simulator; it is
//! tested on SoftHSM2.
//!
//! - **Configuration** ([`Pkcs11Config`]): the module library, the token's label (the token is
//!   looked up by label, never by slot number), the [`Mode`]. The user PIN is a secret: it comes
//!   in as an [`hsm_api::LmkShare`] (from a file or a prompt, never argv or env). `init_lmk(m, n)`
//!   (n ≥ 2) replaces the token's initial PIN by a random one split m-of-n among custodians, in
//!   the simulator's share format (`hsm_sim::shares`); `unseal` then takes their shares.
//! - **Sealed = logged out.** `unseal` logs the user in with the PIN, `seal` and `tamper` log out
//!   (every session object — every key the backend had materialised — is gone with the session
//!   that made it, and the token refuses private objects until the next login).
//! - **The LMK** is two AES-256 keys inside the token, sensitive and never extractable: one wraps
//!   root keys (`CKM_AES_KEY_WRAP_PAD`), one MACs key tokens (`CKM_AES_CMAC`); a public data
//!   object records its KCV. Key tokens at rest: module `token` (ARCHITECTURE.md
//!   has the format).
//! - **What runs where**: [`capability`] — in the token whatever standard mechanisms allow;
//!   TR-31 blocks, the card's key field and SM4 with a key the token released for that one
//!   operation ([`Mode::Release`]), or refused with a reason ([`Mode::Strict`]).
//! - **LMK rotation** in the token (module `rotation`): a new pair beside the old, roots
//!   re-wrapped inside the token, the old pair destroyed at commit.
//! - [`softhsm`]: throwaway SoftHSM2 tokens for tests and `sscard-kms dev --hsm softhsm`.
//!
//! `unsafe` is denied in this crate except in one reviewed module (`ffi`), the raw
//! `C_DeriveKey` call `cryptoki` has no wrapper for.

use core::fmt;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use cryptoki::context::Pkcs11;
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use hsm_api::{
    ClearField, Component, Dispersion, Error, ExportedKey, Factor, Hsm, HsmState, HsmStatus,
    INDEX_HASH_LEN, IssuedShare, Kcv, KeyBackup, KeyBlockVersion, KeySpec, KeyToken, KeyUsage,
    LmkInit, LmkRotation, LmkShare, Restoration, Restored, Result, SealedField, UnsealProgress,
    WrappedKey, WriteKeyCommand, WriteKeyRequest,
};
use hsm_sim::handout::Handout;
use hsm_sim::shares::{ShareCollector, SplitSecret};
use zeroize::Zeroizing;

pub mod capability;
mod ffi;
mod keys;
mod registry;
mod rotation;
mod session;
pub mod softhsm;
mod token;

pub use capability::{Mode, Outside, Where};
pub use session::DANGEROUS_TEST_LMK_MAC_HEX;

use self::session::LmkObjects;

/// How a [`Pkcs11Hsm`] starts.
#[derive(Debug, Clone)]
pub struct Pkcs11Config {
    /// The PKCS#11 module library (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The label of the token (initialised, with a user PIN).
    pub token_label: String,
    /// What to do with what a standard token cannot do.
    pub mode: Mode,
    /// Create the LMK from the published test values if the token has none (tests and dev).
    pub dangerous_test_lmk: bool,
    /// SoftHSM2 only: the configuration file this process points the module at (a throwaway
    /// token's, [`softhsm`]); None for any other module.
    pub softhsm_conf: Option<PathBuf>,
    /// The self-test of the code that runs outside the token (`hsm_sim::selftest::run`).
    pub self_test: fn() -> Result<()>,
}

impl Pkcs11Config {
    /// A configuration for `module` and `token_label`, strict, with the standard self-test.
    pub fn new(module: PathBuf, token_label: String) -> Pkcs11Config {
        Pkcs11Config {
            module,
            token_label,
            mode: Mode::Strict,
            dangerous_test_lmk: false,
            softhsm_conf: None,
            self_test: hsm_sim::selftest::run,
        }
    }
}

/// The HSM boundary over a PKCS#11 token. `Send + Sync`: share it behind an `Arc`.
pub struct Pkcs11Hsm {
    ctx: Pkcs11,
    slot: Slot,
    raw: ffi::RawDerive,
    mode: Mode,
    dangerous_test_lmk: bool,
    self_test: fn() -> Result<()>,
    state: RwLock<State>,
}

impl fmt::Debug for Pkcs11Hsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Hsm")
            .field("slot", &self.slot)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Everything that changes, behind one lock.
struct State {
    /// The session that holds the login (closing every session would log the user out).
    keeper: Option<Mutex<Session>>,
    /// The LMK's objects, once logged in and found (or created).
    lmk: Option<LmkObjects>,
    /// The PIN the user is logged in with (to change it when `init_lmk` splits it).
    pin: Option<Zeroizing<String>>,
    /// Shares of a split PIN submitted towards an unseal.
    collector: Option<ShareCollector>,
    /// A prepared, uncommitted LMK rotation: the next LMK's objects.
    pending: Option<LmkObjects>,
    /// The PIN's shares made at `init_lmk` and not yet taken, each handed out once.
    parts: Handout,
    self_test_failure: Option<String>,
    tampered: bool,
}

impl Pkcs11Hsm {
    /// Opens the token labelled `config.token_label` on `config.module`. With a `pin`, logs in at
    /// once (and, with `dangerous_test_lmk`, creates the test LMK if the token has none);
    /// otherwise it is sealed until [`Hsm::unseal`] gets the PIN.
    pub fn open(config: Pkcs11Config, pin: Option<LmkShare>) -> Result<Pkcs11Hsm> {
        let ctx = session::context(&config.module, config.softhsm_conf.as_deref())?;
        let slot = session::find_token(&ctx, &config.token_label)?.ok_or_else(|| {
            Error::Storage(format!("no token labelled {:?}", config.token_label).into())
        })?;
        let raw = ffi::RawDerive::load(&config.module)?;
        let self_test_failure = (config.self_test)().err().map(|e| failure_name(&e));
        let hsm = Pkcs11Hsm {
            ctx,
            slot,
            raw,
            mode: config.mode,
            dangerous_test_lmk: config.dangerous_test_lmk,
            self_test: config.self_test,
            state: RwLock::new(State {
                keeper: None,
                lmk: None,
                pin: None,
                collector: None,
                pending: None,
                parts: Handout::default(),
                self_test_failure,
                tampered: false,
            }),
        };
        if let Some(pin) = pin {
            hsm.login(pin.secret_text())?;
        }
        Ok(hsm)
    }

    /// The mode this backend runs in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, State>> {
        self.state.read().map_err(|_| Error::StatePoisoned)
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, State>> {
        self.state.write().map_err(|_| Error::StatePoisoned)
    }

    /// A new session on the token.
    fn session(&self) -> Result<Session> {
        session::open(&self.ctx, self.slot)
    }

    /// Logs in with `pin` and finds (or, on the test LMK, makes) the LMK.
    fn login(&self, pin: &str) -> Result<UnsealProgress> {
        let mut state = self.write()?;
        if state.keeper.is_none() {
            let keeper = self.session()?;
            session::login(&keeper, pin)?;
            state.keeper = Some(Mutex::new(keeper));
            state.pin = Some(Zeroizing::new(pin.to_owned()));
        }
        if state.lmk.is_none() {
            let keeper = self.session()?;
            state.lmk = match session::find_lmk(&keeper)? {
                Some(lmk) => Some(lmk),
                None if self.dangerous_test_lmk => Some(session::create_lmk(&keeper, true)?),
                None => None,
            };
        }
        let threshold = state
            .collector
            .as_ref()
            .map_or(1, ShareCollector::threshold);
        state.collector = None;
        let tested = (self.self_test)();
        state.self_test_failure = tested.as_ref().err().map(failure_name);
        tested?;
        Ok(UnsealProgress {
            submitted: threshold,
            threshold,
            unsealed: true,
        })
    }

    /// One share towards the PIN: the PIN itself, or (once `init_lmk` split it) one custodian's
    /// share of it; at the threshold, the PIN rebuilt logs in.
    fn unseal_now(&self, share: &LmkShare) -> Result<UnsealProgress> {
        {
            let state = self.read()?;
            if state.keeper.is_some() && state.lmk.is_some() {
                let threshold = state
                    .collector
                    .as_ref()
                    .map_or(1, ShareCollector::threshold);
                return Ok(UnsealProgress {
                    submitted: threshold,
                    threshold,
                    unsealed: true,
                });
            }
        }
        let Some(record) = session::pin_record(&self.session()?)? else {
            return self.login(share.secret_text());
        };
        let rebuilt = {
            let mut state = self.write()?;
            if state.collector.is_none() {
                state.collector = Some(ShareCollector::new(record)?);
            }
            let collector = state.collector.as_mut().ok_or(Error::Protocol)?;
            match collector.accept(share)? {
                Some(secret) => secret,
                None => {
                    return Ok(UnsealProgress {
                        submitted: collector.submitted(),
                        threshold: collector.threshold(),
                        unsealed: false,
                    });
                }
            }
        };
        self.login(&rebuilt.secret_hex())
    }

    /// Runs `op` with the LMK if the HSM is operational, holding the state lock for reading so
    /// that a seal waits for it.
    fn with_lmk<T>(&self, op: impl FnOnce(&LmkObjects) -> Result<T>) -> Result<T> {
        let state = self.read()?;
        op(operational(&state)?)
    }

    fn status_now(&self) -> Result<HsmStatus> {
        let state = self.read()?;
        let lmk_kcv = match &state.lmk {
            Some(lmk) => Some(lmk.kcv.clone()),
            None => session::marker_kcv(&self.session()?)?,
        };
        let hsm_state = if state.self_test_failure.is_some() {
            HsmState::SelfTestFailed
        } else if lmk_kcv.is_none() {
            HsmState::Uninitialised
        } else if state.keeper.is_none() || state.lmk.is_none() {
            HsmState::Sealed
        } else {
            HsmState::Operational
        };
        Ok(HsmStatus {
            state: hsm_state,
            secure: false,
            dangerous_test_lmk: self.dangerous_test_lmk,
            lmk_kcv,
            unseal: (hsm_state == HsmState::Sealed).then_some(UnsealProgress {
                submitted: state
                    .collector
                    .as_ref()
                    .map_or(0, ShareCollector::submitted),
                threshold: state
                    .collector
                    .as_ref()
                    .map_or(1, ShareCollector::threshold),
                unsealed: false,
            }),
            self_test_failure: state.self_test_failure.clone(),
            self_test_passed: state.self_test_failure.is_none(),
            cached_keys: 0,
            tampered: state.tampered,
        })
    }

    /// Creates the LMK in the token (logged in with the token's initial PIN). `1` of `1` keeps
    /// that PIN; otherwise a fresh random PIN replaces it (`C_SetPIN`) and is split among the
    /// custodians, `threshold` of `shares` (the simulator's share format and rules).
    fn init_lmk_now(&self, threshold: u8, shares: u8) -> Result<LmkInit> {
        let mut state = self.write()?;
        let session = self.session()?;
        if state.lmk.is_some() || session::marker_kcv(&session)?.is_some() {
            return Err(Error::AlreadyInitialised);
        }
        if let Some(name) = &state.self_test_failure {
            return Err(Error::SelfTestFailed(name.clone()));
        }
        let Some(old_pin) = state.pin.clone().filter(|_| state.keeper.is_some()) else {
            return Err(Error::Sealed);
        };
        let parts = if (threshold, shares) == (1, 1) {
            None
        } else {
            let secret = SplitSecret::generate()?;
            let (issued, record) = secret.split(threshold, shares)?;
            // Held before the PIN changes, so that a changed PIN always has its shares.
            let parts = state.parts.deposit(threshold, issued)?;
            let new_pin = secret.secret_hex();
            if let Err(e) = session::set_pin(&session, &old_pin, &new_pin) {
                state.parts.discard(&parts.set);
                return Err(e);
            }
            session::store_pin_record(&session, &record)?;
            state.pin = Some(new_pin);
            Some(parts)
        };
        let lmk = session::create_lmk(&session, false)?;
        let lmk_kcv = lmk.kcv.clone();
        state.lmk = Some(lmk);
        Ok(LmkInit { parts, lmk_kcv })
    }

    fn seal_now(&self, tamper: bool) -> Result<()> {
        let mut state = self.write()?;
        if tamper {
            state.tampered = true;
        }
        state.lmk = None;
        state.pin = None;
        state.collector = None;
        state.pending = None;
        state.parts.clear();
        if let Some(keeper) = state.keeper.take() {
            let keeper = keeper.into_inner().map_err(|_| Error::StatePoisoned)?;
            // Logs the application out of the token (every session) before the session closes.
            if let Err(e) = keeper.logout() {
                tracing::warn!(error = %e, "PKCS#11 logout failed; closing the session");
            }
        }
        Ok(())
    }

    fn self_test_now(&self) -> Result<()> {
        let tested = (self.self_test)();
        let mut state = self.write()?;
        state.self_test_failure = tested.as_ref().err().map(failure_name);
        tested
    }
}

impl Hsm for Pkcs11Hsm {
    fn is_secure(&self) -> bool {
        // A hardware token may be; this backend cannot tell a certified device from SoftHSM.
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
        if let Some(collector) = self.write()?.collector.as_mut() {
            collector.reset();
        }
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
        self.with_lmk(|lmk| self.generate_key_now(lmk, spec))
    }

    async fn form_key(&self, spec: KeySpec, components: Vec<Component>) -> Result<WrappedKey> {
        self.with_lmk(|lmk| self.form_key_now(lmk, spec, &components))
    }

    async fn add_component(
        &self,
        into: hsm_api::Accumulation,
        component: Component,
    ) -> Result<hsm_api::Accumulated> {
        self.with_lmk(|lmk| self.add_component_now(lmk, into, &component))
    }

    async fn import_key(&self, kek: &KeyToken, block: &str, usage: KeyUsage) -> Result<WrappedKey> {
        self.with_lmk(|lmk| self.import_key_now(lmk, kek, block, usage))
    }

    async fn export_key(
        &self,
        kek: &KeyToken,
        key: &KeyToken,
        version: KeyBlockVersion,
    ) -> Result<ExportedKey> {
        self.with_lmk(|lmk| self.export_key_now(lmk, kek, key, version))
    }

    async fn derive_key(
        &self,
        parent: &KeyToken,
        method: Dispersion,
        factors: &[Factor],
        child_usage: KeyUsage,
    ) -> Result<WrappedKey> {
        self.with_lmk(|lmk| self.derive_key_now(lmk, parent, method, factors, child_usage))
    }

    async fn write_key_command(&self, request: WriteKeyRequest) -> Result<WriteKeyCommand> {
        self.with_lmk(|lmk| self.write_key_command_now(lmk, &request))
    }

    async fn kcv(&self, key: &KeyToken) -> Result<Kcv> {
        self.with_lmk(|lmk| self.kcv_now(lmk, key))
    }

    async fn sign(&self, key: &KeyToken, data: &[u8]) -> Result<Vec<u8>> {
        self.with_lmk(|lmk| Ok(self.list_signing_key_now(lmk, key)?.sign(data)))
    }

    async fn public_key(&self, key: &KeyToken) -> Result<Vec<u8>> {
        self.with_lmk(|lmk| Ok(self.list_signing_key_now(lmk, key)?.public_key()))
    }

    async fn index_hashes(
        &self,
        key: &KeyToken,
        domain: &str,
        values: Vec<Vec<u8>>,
    ) -> Result<Vec<[u8; INDEX_HASH_LEN]>> {
        self.with_lmk(|lmk| self.index_hashes_now(lmk, key, domain, &values))
    }

    async fn seal_fields(
        &self,
        key: &KeyToken,
        fields: Vec<ClearField>,
    ) -> Result<Vec<SealedField>> {
        self.with_lmk(|lmk| self.seal_fields_now(lmk, key, &fields))
    }

    async fn open_fields(
        &self,
        key: &KeyToken,
        fields: Vec<SealedField>,
    ) -> Result<Vec<ClearField>> {
        self.with_lmk(|lmk| self.open_fields_now(lmk, key, &fields))
    }

    async fn random(&self, len: usize) -> Result<Vec<u8>> {
        self.with_lmk(|_| self.random_now(len))
    }

    async fn mac(&self, key: &KeyToken, data: &[u8]) -> Result<Vec<u8>> {
        self.with_lmk(|lmk| self.audit_mac(lmk, key, data))
    }

    async fn verify_mac(&self, key: &KeyToken, data: &[u8], mac: &[u8]) -> Result<()> {
        self.with_lmk(|lmk| {
            let expected = self.audit_mac(lmk, key, data)?;
            if bool::from(subtle::ConstantTimeEq::ct_eq(expected.as_slice(), mac)) {
                Ok(())
            } else {
                Err(Error::Verification)
            }
        })
    }

    async fn prepare_lmk_rotation(
        &self,
        tokens: Vec<KeyToken>,
        _threshold: u8,
        _shares: u8,
    ) -> Result<LmkRotation> {
        // Re-wrapping runs under the read lock, so key operations go on meanwhile.
        let (old_kcv, next, rotation) = self.with_lmk(|lmk| {
            let (next, rotation) = self.prepare_lmk_rotation_now(lmk, &tokens)?;
            Ok((lmk.kcv.clone(), next, rotation))
        })?;
        let mut state = self.write()?;
        // A seal, or another rotation, may have happened since.
        if state.lmk.as_ref().map(|l| &l.kcv) != Some(&old_kcv) {
            return Err(Error::RotationNotPrepared);
        }
        state.pending = Some(next);
        Ok(rotation)
    }

    async fn rewrap_for_rotation(
        &self,
        new_lmk_kcv: &Kcv,
        tokens: Vec<KeyToken>,
    ) -> Result<Vec<KeyToken>> {
        hsm_api::check_batch_len(tokens.len())?;
        let state = self.read()?;
        let lmk = operational(&state)?;
        let next = state
            .pending
            .as_ref()
            .filter(|p| &p.kcv == new_lmk_kcv)
            .ok_or(Error::RotationNotPrepared)?;
        self.rewrap_more_now(lmk, next, &tokens)
    }

    async fn commit_lmk_rotation(&self, new_lmk_kcv: &Kcv) -> Result<()> {
        let mut state = self.write()?;
        let old = state.lmk.clone().ok_or(Error::Sealed)?;
        let Some(next) = state.pending.take_if(|p| &p.kcv == new_lmk_kcv) else {
            return Err(Error::RotationNotPrepared);
        };
        self.commit_lmk_rotation_now(&old, &next, new_lmk_kcv)?;
        state.lmk = Some(next);
        Ok(())
    }

    async fn issue_transport_key_components(
        &self,
        algorithm: hsm_api::Algorithm,
        components: u8,
    ) -> Result<hsm_api::IssuedComponents> {
        let (key, parts, lmk_kcv) = self.with_lmk(|lmk| {
            let (key, parts) = self.issue_components_now(lmk, algorithm, components)?;
            Ok((key, parts, lmk.kcv.clone()))
        })?;
        let mut state = self.write()?;
        // A seal (which drops the parts held) may have happened since: keep none after it.
        if state.keeper.is_none() || state.lmk.as_ref().map(|l| &l.kcv) != Some(&lmk_kcv) {
            return Err(Error::Sealed);
        }
        Ok(hsm_api::IssuedComponents {
            key,
            parts: state.parts.deposit(components, parts)?,
        })
    }

    async fn issue_transport_key_under(
        &self,
        kek: &KeyToken,
        algorithm: hsm_api::Algorithm,
    ) -> Result<hsm_api::IssuedUnderKek> {
        self.with_lmk(|lmk| self.issue_under_now(lmk, kek, algorithm))
    }

    /// Refused in every mode (see [`capability`]): the token keeps its roots as non-extractable
    /// objects wrapped by its own LMK; splitting one would release it in clear to this process.
    async fn backup_key(&self, key: &KeyToken, _threshold: u8, _shares: u8) -> Result<KeyBackup> {
        let (stored, _, _) = token::parse(key.as_str())?;
        Err(backup_refused(stored.alg))
    }

    /// Refused in every mode, as [`Hsm::backup_key`]: a root restored here would be rebuilt in
    /// clear in this process.
    async fn restore_share(&self, into: Restoration, share: LmkShare) -> Result<Restored> {
        drop(share);
        match into {
            Restoration::Begin { spec, .. } => Err(backup_refused(spec.algorithm)),
            Restoration::Continue(_) => Err(Error::WrongUsage {
                usage: "PKCS#11 backend".into(),
                operation: "take a backup share (it makes no partial restore)".into(),
            }),
        }
    }
}

/// The current LMK if the token is operational (logged in, self-test passed).
fn operational(state: &State) -> Result<&LmkObjects> {
    if let Some(name) = &state.self_test_failure {
        return Err(Error::SelfTestFailed(name.clone()));
    }
    if state.keeper.is_none() {
        return Err(Error::Sealed);
    }
    state.lmk.as_ref().ok_or(Error::Uninitialised)
}

/// Why a root backup or restore is refused on this backend.
fn backup_refused(alg: hsm_api::Algorithm) -> Error {
    Error::Unsupported {
        op: "a root backup or restore on a PKCS#11 token (its roots never leave it in clear)"
            .into(),
        alg,
    }
}

/// The name of the check a self-test error reports.
fn failure_name(error: &Error) -> String {
    match error {
        Error::SelfTest(name) => name.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;

// `Pkcs11Hsm` is shared across the tasks of a server.
const _: fn() = || {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<Pkcs11Hsm>();
};
