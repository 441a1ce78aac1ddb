//! The HSM as the service sees it: every call goes through [`WatchedHsm`], which publishes the
//! HSM's readiness from what the HSM itself answers, so that gRPC health follows the HSM's
//! state changes without polling.
//!
//! - A `status` answer is the state itself.
//! - After a call that changes the state (`init_lmk`, `unseal`, `unseal_reset`, `seal`,
//!   `tamper`, `self_test`, `commit_lmk_rotation`), its outcome is followed by one `status` call.
//! - A key operation that succeeds proves the HSM operational (it outputs nothing otherwise);
//!   one refused as sealed, uninitialised, self-test failed or unavailable says so.
//!
//! An HSM sealed behind the service's back (a remote HSM restarted by its operator) is seen at
//! the service's next HSM call, e.g. an officer's `GetStatus`.
//!
//! Every call is counted by operation and outcome (`sscard_hsm_calls_total`) and timed
//! (`sscard_hsm_call_duration_seconds`) once the service's [`Metrics`] are attached.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use hsm_api::{
    Accumulated, Accumulation, BatchItem, BatchOutput, Component, Dispersion, Error as HsmError,
    ExportedKey, Factor, Hsm, HsmState, HsmStatus, IssuedShare, Kcv, KeyBlockVersion, KeySpec,
    KeyToken, KeyUsage, LmkInit, LmkRotation, LmkShare, Result as HsmResult, UnsealProgress,
    WrappedKey, WriteKeyCommand, WriteKeyRequest,
};
use tokio::sync::watch;

use crate::metrics::{HsmCallLabels, HsmOpLabels, Metrics};

/// What the service last learnt of its HSM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HsmReadiness {
    /// Nothing answered yet.
    Unknown,
    /// In one of the HSM's own states.
    State(HsmState),
    /// The HSM could not be reached (a remote HSM down, TLS refused).
    Unavailable,
    /// The HSM's in-memory state is unusable after a failure.
    Broken,
}

impl HsmReadiness {
    /// True only when key operations are served.
    pub fn is_operational(self) -> bool {
        self == HsmReadiness::State(HsmState::Operational)
    }

    /// What an error says about the HSM's state, if anything.
    fn from_error(e: &HsmError) -> Option<HsmReadiness> {
        match e {
            HsmError::Sealed => Some(HsmReadiness::State(HsmState::Sealed)),
            HsmError::Uninitialised => Some(HsmReadiness::State(HsmState::Uninitialised)),
            HsmError::SelfTestFailed(_) => Some(HsmReadiness::State(HsmState::SelfTestFailed)),
            HsmError::Unavailable => Some(HsmReadiness::Unavailable),
            HsmError::StatePoisoned => Some(HsmReadiness::Broken),
            _ => None,
        }
    }
}

/// An [`Hsm`] that publishes its [`HsmReadiness`] on a watch channel.
pub struct WatchedHsm<H: Hsm> {
    inner: Arc<H>,
    readiness: watch::Sender<HsmReadiness>,
    metrics: OnceLock<Arc<Metrics>>,
}

impl<H: Hsm> std::fmt::Debug for WatchedHsm<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedHsm")
            .field("readiness", &*self.readiness.borrow())
            .finish_non_exhaustive()
    }
}

impl<H: Hsm> WatchedHsm<H> {
    /// Wraps `inner`; the readiness is [`HsmReadiness::Unknown`] until the HSM answers.
    pub fn new(inner: Arc<H>) -> WatchedHsm<H> {
        WatchedHsm {
            inner,
            readiness: watch::Sender::new(HsmReadiness::Unknown),
            metrics: OnceLock::new(),
        }
    }

    /// Records every later call in `metrics` (the first metrics attached stay).
    pub fn attach_metrics(&self, metrics: Arc<Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// `call`, timed and counted as `op`.
    async fn measured<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = HsmResult<T>>,
    ) -> HsmResult<T> {
        let started = Instant::now();
        let result = call.await;
        if let Some(metrics) = self.metrics.get() {
            metrics
                .hsm_seconds
                .get_or_create(&HsmOpLabels { op })
                .observe(started.elapsed().as_secs_f64());
            metrics
                .hsm_calls
                .get_or_create(&HsmCallLabels {
                    op,
                    outcome: if result.is_ok() { "ok" } else { "error" },
                })
                .inc();
        }
        result
    }

    /// The HSM underneath.
    pub fn inner(&self) -> &Arc<H> {
        &self.inner
    }

    /// The readiness now and its changes (a receiver is woken only when it changes).
    pub fn readiness(&self) -> watch::Receiver<HsmReadiness> {
        self.readiness.subscribe()
    }

    fn publish(&self, new: HsmReadiness) {
        self.readiness.send_if_modified(|now| {
            let changed = *now != new;
            if changed {
                tracing::info!(from = ?*now, to = ?new, "HSM readiness changed");
                *now = new;
            }
            changed
        });
    }

    /// A key operation's outcome: success proves the HSM operational.
    fn key_op<T>(&self, result: HsmResult<T>) -> HsmResult<T> {
        match &result {
            Ok(_) => self.publish(HsmReadiness::State(HsmState::Operational)),
            Err(e) => {
                if let Some(r) = HsmReadiness::from_error(e) {
                    self.publish(r);
                }
            }
        }
        result
    }

    /// A state-changing call's outcome, followed by the state it left.
    async fn state_op<T>(&self, result: HsmResult<T>) -> HsmResult<T> {
        let _ = self.status().await;
        result
    }
}

impl<H: Hsm> Hsm for WatchedHsm<H> {
    fn is_secure(&self) -> bool {
        self.inner.is_secure()
    }

    async fn status(&self) -> HsmResult<HsmStatus> {
        let result = self.measured("status", self.inner.status()).await;
        match &result {
            Ok(s) => self.publish(HsmReadiness::State(s.state)),
            Err(e) => self.publish(HsmReadiness::from_error(e).unwrap_or(HsmReadiness::Unknown)),
        }
        result
    }

    async fn init_lmk(&self, threshold: u8, shares: u8) -> HsmResult<LmkInit> {
        let r = self
            .measured("init_lmk", self.inner.init_lmk(threshold, shares))
            .await;
        self.state_op(r).await
    }

    async fn take_secret_part(&self, set: &str, index: u8) -> HsmResult<IssuedShare> {
        let r = self
            .measured("take_secret_part", self.inner.take_secret_part(set, index))
            .await;
        // Handing out a part proves nothing about the HSM's state; only a refusal may say it.
        if let Err(e) = &r
            && let Some(readiness) = HsmReadiness::from_error(e)
        {
            self.publish(readiness);
        }
        r
    }

    async fn unseal(&self, share: LmkShare) -> HsmResult<UnsealProgress> {
        let r = self.measured("unseal", self.inner.unseal(share)).await;
        self.state_op(r).await
    }

    async fn unseal_reset(&self) -> HsmResult<()> {
        let r = self
            .measured("unseal_reset", self.inner.unseal_reset())
            .await;
        self.state_op(r).await
    }

    async fn seal(&self) -> HsmResult<()> {
        let r = self.measured("seal", self.inner.seal()).await;
        self.state_op(r).await
    }

    async fn tamper(&self) -> HsmResult<()> {
        let r = self.measured("tamper", self.inner.tamper()).await;
        self.state_op(r).await
    }

    async fn self_test(&self) -> HsmResult<()> {
        let r = self.measured("self_test", self.inner.self_test()).await;
        self.state_op(r).await
    }

    async fn generate_key(&self, spec: KeySpec) -> HsmResult<WrappedKey> {
        let r = self
            .measured("generate_key", self.inner.generate_key(spec))
            .await;
        self.key_op(r)
    }

    async fn form_key(&self, spec: KeySpec, components: Vec<Component>) -> HsmResult<WrappedKey> {
        let r = self
            .measured("form_key", self.inner.form_key(spec, components))
            .await;
        self.key_op(r)
    }

    async fn add_component(
        &self,
        into: Accumulation,
        component: Component,
    ) -> HsmResult<Accumulated> {
        let r = self
            .measured("add_component", self.inner.add_component(into, component))
            .await;
        self.key_op(r)
    }

    async fn import_key(
        &self,
        kek: &KeyToken,
        block: &str,
        usage: KeyUsage,
    ) -> HsmResult<WrappedKey> {
        let r = self
            .measured("import_key", self.inner.import_key(kek, block, usage))
            .await;
        self.key_op(r)
    }

    async fn export_key(
        &self,
        kek: &KeyToken,
        key: &KeyToken,
        version: KeyBlockVersion,
    ) -> HsmResult<ExportedKey> {
        let r = self
            .measured("export_key", self.inner.export_key(kek, key, version))
            .await;
        self.key_op(r)
    }

    async fn derive_key(
        &self,
        parent: &KeyToken,
        method: Dispersion,
        factors: &[Factor],
        child_usage: KeyUsage,
    ) -> HsmResult<WrappedKey> {
        let r = self
            .measured(
                "derive_key",
                self.inner.derive_key(parent, method, factors, child_usage),
            )
            .await;
        self.key_op(r)
    }

    async fn write_key_command(&self, request: WriteKeyRequest) -> HsmResult<WriteKeyCommand> {
        let r = self
            .measured("write_key_command", self.inner.write_key_command(request))
            .await;
        self.key_op(r)
    }

    async fn batch(&self, items: Vec<BatchItem>) -> HsmResult<Vec<HsmResult<BatchOutput>>> {
        // The call as a whole says what the HSM is; an item's own refusal does not.
        let r = self.measured("batch", self.inner.batch(items)).await;
        self.key_op(r)
    }

    async fn kcv(&self, key: &KeyToken) -> HsmResult<Kcv> {
        let r = self.measured("kcv", self.inner.kcv(key)).await;
        self.key_op(r)
    }

    async fn random(&self, len: usize) -> HsmResult<Vec<u8>> {
        let r = self.measured("random", self.inner.random(len)).await;
        self.key_op(r)
    }

    async fn mac(&self, key: &KeyToken, data: &[u8]) -> HsmResult<Vec<u8>> {
        let r = self.measured("mac", self.inner.mac(key, data)).await;
        self.key_op(r)
    }

    async fn verify_mac(&self, key: &KeyToken, data: &[u8], mac: &[u8]) -> HsmResult<()> {
        let r = self
            .measured("verify_mac", self.inner.verify_mac(key, data, mac))
            .await;
        self.key_op(r)
    }

    async fn sign(&self, key: &KeyToken, data: &[u8]) -> HsmResult<Vec<u8>> {
        let r = self.measured("sign", self.inner.sign(key, data)).await;
        self.key_op(r)
    }

    async fn public_key(&self, key: &KeyToken) -> HsmResult<Vec<u8>> {
        let r = self
            .measured("public_key", self.inner.public_key(key))
            .await;
        self.key_op(r)
    }

    async fn index_hashes(
        &self,
        key: &KeyToken,
        domain: &str,
        values: Vec<Vec<u8>>,
    ) -> HsmResult<Vec<[u8; hsm_api::INDEX_HASH_LEN]>> {
        let r = self
            .measured("index_hashes", self.inner.index_hashes(key, domain, values))
            .await;
        self.key_op(r)
    }

    async fn seal_fields(
        &self,
        key: &KeyToken,
        fields: Vec<hsm_api::ClearField>,
    ) -> HsmResult<Vec<hsm_api::SealedField>> {
        let r = self
            .measured("seal_fields", self.inner.seal_fields(key, fields))
            .await;
        self.key_op(r)
    }

    async fn open_fields(
        &self,
        key: &KeyToken,
        fields: Vec<hsm_api::SealedField>,
    ) -> HsmResult<Vec<hsm_api::ClearField>> {
        let r = self
            .measured("open_fields", self.inner.open_fields(key, fields))
            .await;
        self.key_op(r)
    }

    async fn prepare_lmk_rotation(
        &self,
        tokens: Vec<KeyToken>,
        threshold: u8,
        shares: u8,
    ) -> HsmResult<LmkRotation> {
        let r = self
            .measured(
                "prepare_lmk_rotation",
                self.inner.prepare_lmk_rotation(tokens, threshold, shares),
            )
            .await;
        self.key_op(r)
    }

    async fn rewrap_for_rotation(
        &self,
        new_lmk_kcv: &Kcv,
        tokens: Vec<KeyToken>,
    ) -> HsmResult<Vec<KeyToken>> {
        let r = self
            .measured(
                "rewrap_for_rotation",
                self.inner.rewrap_for_rotation(new_lmk_kcv, tokens),
            )
            .await;
        self.key_op(r)
    }

    async fn commit_lmk_rotation(&self, new_lmk_kcv: &Kcv) -> HsmResult<()> {
        let r = self
            .measured(
                "commit_lmk_rotation",
                self.inner.commit_lmk_rotation(new_lmk_kcv),
            )
            .await;
        self.state_op(r).await
    }

    async fn issue_transport_key_components(
        &self,
        algorithm: hsm_api::Algorithm,
        components: u8,
    ) -> HsmResult<hsm_api::IssuedComponents> {
        let r = self
            .measured(
                "issue_transport_key_components",
                self.inner
                    .issue_transport_key_components(algorithm, components),
            )
            .await;
        self.key_op(r)
    }

    async fn backup_key(
        &self,
        key: &KeyToken,
        threshold: u8,
        shares: u8,
    ) -> HsmResult<hsm_api::KeyBackup> {
        let r = self
            .measured("backup_key", self.inner.backup_key(key, threshold, shares))
            .await;
        self.key_op(r)
    }

    async fn issue_transport_key_under(
        &self,
        kek: &KeyToken,
        algorithm: hsm_api::Algorithm,
    ) -> HsmResult<hsm_api::IssuedUnderKek> {
        let r = self
            .measured(
                "issue_transport_key_under",
                self.inner.issue_transport_key_under(kek, algorithm),
            )
            .await;
        self.key_op(r)
    }

    async fn restore_share(
        &self,
        into: hsm_api::Restoration,
        share: LmkShare,
    ) -> HsmResult<hsm_api::Restored> {
        let r = self
            .measured("restore_share", self.inner.restore_share(into, share))
            .await;
        self.key_op(r)
    }
}
