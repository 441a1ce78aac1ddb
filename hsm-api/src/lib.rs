//! # hsm-api — the HSM trust boundary of sscard-kms
//!
//! The [`Hsm`] trait and every type that crosses it: key tokens, key specifications, custodians'
//! components and LMK shares, key check values, dispersion factors, the named methods a request
//! picks, statuses, and the one [`Error`]. This is the boundary a second backend — a PKCS#11
//! token, a payment HSM's host protocol — implements without depending on the simulator
//! (`hsm-sim`); the key service is written against it and nothing else.
//!
//! This crate does no I/O and holds no cipher: it is plain data and one trait. Clear keys exist
//! only inside an implementation. Here, only [`Component`] and [`LmkShare`] carry a custodian's
//! own secret *into* the HSM, and only [`IssuedShare`] carries one *out*, one part per answer
//! ([`Hsm::take_secret_part`]) (they zeroize on drop, print nothing from `Debug`, and hand their
//! text out through one greppable accessor each, [`Component::secret_hex`] and
//! [`LmkShare::secret_text`]). Everything that comes *out* is a [`KeyToken`] (a key block under
//! the HSM's LMK), a TR-31 block under a transport key, a secure-messaging command, a [`Kcv`], or
//! a status.
//!
//! ```
//! use hsm_api::{Algorithm, Exportability, HierarchyLevel, KeySpec, KeyUsage, Kcv, KcvMethod};
//!
//! // What the service asks for: a key it will only ever see as a token and a KCV.
//! let spec = KeySpec {
//!     algorithm: Algorithm::Tdes2,
//!     usage: KeyUsage::CardDerivation(HierarchyLevel::National),
//!     exportability: Exportability::NonExportable,
//! };
//! assert_eq!(spec.algorithm.key_len(), 16);
//! // A KCV always carries its method and length.
//! let kcv = Kcv::from_parts(KcvMethod::default_for(spec.algorithm), vec![0xD2, 0xB9, 0x1C]);
//! assert_eq!(kcv.to_hex(), "D2B91C");
//! ```
#![forbid(unsafe_code)]

use std::future::Future;

mod algorithm;
mod batch;
mod error;
mod factor;
mod kcv;
mod methods;
mod registry;
mod text;
mod types;

pub use algorithm::Algorithm;
pub use batch::{
    BATCH_ITEMS, BatchDelivery, BatchItem, BatchOutput, Derivation, KeySource, Protector,
    WriteKeyDelivery, protector_item_error,
};
pub use error::{Error, Result};
pub use factor::Factor;
pub use kcv::{Kcv, KcvMethod};
pub use methods::{Dispersion, KeyBlockVersion, MacFold};
pub use registry::{
    ClearField, INDEX_HASH_LEN, REGISTRY_VALUE_LEN, REGISTRY_VALUES, SEAL_OVERHEAD, SealedField,
    check_index_domain, check_registry_items,
};
pub use text::{push_upper_hex, upper_hex};
pub use types::{
    Accumulated, Accumulation, Component, Exportability, ExportedKey, HierarchyLevel, HsmState,
    HsmStatus, IssuedComponents, IssuedShare, IssuedUnderKek, KeyBackup, KeySpec, KeyToken,
    KeyUsage, ListSignature, LmkInit, LmkRotation, LmkShare, PartialKey, PartialRestore,
    Restoration, Restored, SecretParts, UnsealProgress, WrappedKey, WriteKeyCommand,
    WriteKeyRequest,
};

/// The operations of the HSM. Every key operation is refused unless the HSM is operational
/// (unsealed and self-tested); every use of a token checks its integrity and its usage.
pub trait Hsm: Send + Sync + 'static {
    /// False for every simulator: it is not a secure device.
    fn is_secure(&self) -> bool;

    /// State, LMK KCV, unseal progress, self-test result.
    fn status(&self) -> impl Future<Output = Result<HsmStatus>> + Send;

    /// Creates the LMK and splits it into `threshold`-of-`shares` custodian shares, kept in the
    /// HSM as [`SecretParts`] until each is taken once ([`Hsm::take_secret_part`]): the answer
    /// carries the LMK's KCV and the set's name, never a share. Refused if an LMK exists.
    fn init_lmk(&self, threshold: u8, shares: u8) -> impl Future<Output = Result<LmkInit>> + Send;

    /// Hands out part `index` (1-based) of the [`SecretParts`] named `set`, exactly once: the
    /// HSM forgets the part as it answers, so the answer is the only copy. A part already
    /// taken, an unknown set (or one dropped by a seal or tamper event) is
    /// [`Error::PartNotAvailable`].
    ///
    /// Why this shape rather than sealing each share to its custodian's key: the HSM would
    /// have to know every custodian's key and the ceremony tool would still have to show the
    /// share in clear to someone; handing parts out one at a time keeps the HSM ignorant of
    /// identities (the service, which knows them, decides who may take which part and audits
    /// it) and makes "all shares in one answer" impossible at the boundary itself.
    fn take_secret_part(
        &self,
        set: &str,
        index: u8,
    ) -> impl Future<Output = Result<IssuedShare>> + Send;

    /// Accepts one custodian share; at the threshold rebuilds the LMK, checks it against its KCV,
    /// runs the self-test and becomes operational. A malformed, repeated or foreign share is
    /// [`crate::Error::Share`] and does not count; on an HSM that is already unsealed the share
    /// is ignored and the progress says `unsealed`.
    fn unseal(&self, share: LmkShare) -> impl Future<Output = Result<UnsealProgress>> + Send;

    /// Forgets the shares submitted so far.
    fn unseal_reset(&self) -> impl Future<Output = Result<()>> + Send;

    /// Zeroizes the LMK and the hot-key cache; the HSM is sealed.
    fn seal(&self) -> impl Future<Output = Result<()>> + Send;

    /// A simulated tamper event: as `seal`, at once, and recorded in the status.
    fn tamper(&self) -> impl Future<Output = Result<()>> + Send;

    /// Runs the known-answer self-test now; on failure every key operation is refused.
    fn self_test(&self) -> impl Future<Output = Result<()>> + Send;

    /// A fresh random key. `spec.exportability` may only narrow what the usage allows (see
    /// [`KeySpec`]); a [`KeyUsage::CardMasterKey`] is never generated (only derived).
    fn generate_key(&self, spec: KeySpec) -> impl Future<Output = Result<WrappedKey>> + Send;

    /// A key formed as the XOR of 2..=9 clear components, each checked against its KCV (of at
    /// least 3 bytes). As for [`Hsm::generate_key`], the spec's exportability only narrows, and
    /// no [`KeyUsage::CardMasterKey`] is formed. A weak result is [`Error::WeakKey`].
    fn form_key(
        &self,
        spec: KeySpec,
        components: Vec<Component>,
    ) -> impl Future<Output = Result<WrappedKey>> + Send;

    /// One component of a key formed one custodian at a time (split knowledge without every
    /// component waiting outside the HSM): the component is checked against its KCV (of at
    /// least 3 bytes) now and XORed into the partial key; at the last one the key forms, with
    /// the checks of [`Hsm::form_key`] (the spec's, the weak-key check). A wrong component is
    /// [`Error::ComponentKcv`] naming its place (1 for the first) and leaves the partial key as
    /// it was; a partial key of another LMK, or altered, is refused.
    fn add_component(
        &self,
        into: Accumulation,
        component: Component,
    ) -> impl Future<Output = Result<Accumulated>> + Send;

    /// Imports a TR-31 block (B or D) under `kek`. The block header's usage must map to
    /// `usage` (`K0`/`K1` key-block protection, `E6` card or master-key derivation at the level
    /// `usage` names, `E5` card key or vendor transport key, `M6` audit MAC); the new token
    /// carries it, with the block's exportability (`E` exportable; `N` and `S` non-exportable)
    /// narrowed to what the usage allows. No [`KeyUsage::CardMasterKey`] is imported.
    fn import_key(
        &self,
        kek: &KeyToken,
        block: &str,
        usage: KeyUsage,
    ) -> impl Future<Output = Result<WrappedKey>> + Send;

    /// Exports `key` under `kek` as a TR-31 block of `version`. Only keys whose usage may leave
    /// ([`KeyUsage::may_be_exported`]) and whose token is exportable; a card master key, its
    /// hierarchy and a vendor transport key are [`Error::NotExportable`] whatever their token
    /// says: they leave only inside secure-messaging commands ([`Hsm::write_key_command`]).
    fn export_key(
        &self,
        kek: &KeyToken,
        key: &KeyToken,
        version: KeyBlockVersion,
    ) -> impl Future<Output = Result<ExportedKey>> + Send;

    /// The child of `parent` by `method` with `factors` applied in order (top level first).
    ///
    /// The parent is a [`KeyUsage::CardDerivation`] or [`KeyUsage::MasterKeyDerivation`] key.
    /// The child stays in its parent's hierarchy: a card-derivation parent gives
    /// [`KeyUsage::CardKey`] or `CardDerivation` children, a master-key parent only
    /// [`KeyUsage::CardMasterKey`] or `MasterKeyDerivation` children. The factors must reach the
    /// child's level exactly: a card-level child needs as many factors as the parent's level is
    /// above the card, a hierarchy child the level that many dispersions below the parent.
    /// Anything else is [`Error::WrongUsage`].
    ///
    /// The HSM decides the child's exportability, never the caller: a hierarchy child is
    /// exportable only if its parent is, a card key is exportable, a card master key never.
    fn derive_key(
        &self,
        parent: &KeyToken,
        method: Dispersion,
        factors: &[Factor],
        child_usage: KeyUsage,
    ) -> impl Future<Output = Result<WrappedKey>> + Send;

    /// A secure-messaging command that writes `request.key` into a card. The key written is a
    /// [`KeyUsage::CardKey`] or [`KeyUsage::CardMasterKey`], never a hierarchy key; the
    /// protector is a [`KeyUsage::CardMasterKey`], or a [`KeyUsage::VendorTransport`] key when
    /// the key written is a master key. Anything else is [`Error::WrongUsage`].
    fn write_key_command(
        &self,
        request: WriteKeyRequest,
    ) -> impl Future<Output = Result<WriteKeyCommand>> + Send;

    /// Every key of one card set or PSAM set in one call: one result per item, in order (see
    /// [`BatchItem`]). Each item is checked exactly as the single operations it stands for, and
    /// its refusal is its own result; the call as a whole fails only when nothing can be done
    /// (sealed, self-test failed, unreachable, a count outside [`BATCH_ITEMS`]).
    ///
    /// The default implementation performs the single operations one after the other
    /// ([`Hsm::derive_key`], then [`Hsm::export_key`] or [`Hsm::write_key_command`]), and is the
    /// reference for what a batch answers; an implementation overrides it to do the work in one
    /// call (one round trip for a remote HSM) without wrapping the derived keys under the LMK.
    fn batch(
        &self,
        items: Vec<BatchItem>,
    ) -> impl Future<Output = Result<Vec<Result<BatchOutput>>>> + Send {
        async move {
            check_batch_len(items.len())?;
            let mut keys: Vec<Result<KeyToken>> = Vec::with_capacity(items.len());
            for item in &items {
                keys.push(batch::token_of(self, &item.key).await);
            }
            let mut results = Vec::with_capacity(items.len());
            for (index, item) in items.into_iter().enumerate() {
                results.push(batch::deliver(self, &keys, index, item).await);
            }
            Ok(results)
        }
    }

    /// The KCV of a token's key.
    fn kcv(&self, key: &KeyToken) -> impl Future<Output = Result<Kcv>> + Send;

    /// `len` random bytes (at most 4096).
    fn random(&self, len: usize) -> impl Future<Output = Result<Vec<u8>>> + Send;

    /// The CMAC of `data` under an [`KeyUsage::AuditMac`] key.
    fn mac(&self, key: &KeyToken, data: &[u8]) -> impl Future<Output = Result<Vec<u8>>> + Send;

    /// Checks a MAC made by [`Hsm::mac`], in constant time.
    fn verify_mac(
        &self,
        key: &KeyToken,
        data: &[u8],
        mac: &[u8],
    ) -> impl Future<Output = Result<()>> + Send;

    /// The signature of `data` under a [`KeyUsage::ListSigning`] key, in the key's
    /// [`ListSignature`] scheme (ECDSA P-256 / SHA-256, or SM2DSA / SM3): 64 bytes, `r ‖ s`
    /// big-endian (deterministic, RFC 6979).
    fn sign(&self, key: &KeyToken, data: &[u8]) -> impl Future<Output = Result<Vec<u8>>> + Send;

    /// The public key of a [`KeyUsage::ListSigning`] key: the SEC1 uncompressed point of its
    /// curve (P-256 or the SM2 curve), 65 bytes (`04 ‖ x ‖ y`), for anyone who checks
    /// [`Hsm::sign`]'s signatures.
    fn public_key(&self, key: &KeyToken) -> impl Future<Output = Result<Vec<u8>>> + Send;

    /// The index hashes of `values` under a [`KeyUsage::RegistryIndex`] key, one per value in
    /// order: `HMAC-SHA256(key, domain ‖ 0x00 ‖ value)`. The `domain` (see
    /// [`check_index_domain`]) separates one field's hashes from another's. At most
    /// [`REGISTRY_VALUES`] values of at most [`REGISTRY_VALUE_LEN`] bytes per call.
    fn index_hashes(
        &self,
        key: &KeyToken,
        domain: &str,
        values: Vec<Vec<u8>>,
    ) -> impl Future<Output = Result<Vec<[u8; INDEX_HASH_LEN]>>> + Send;

    /// Seals `fields` under a [`KeyUsage::RegistryData`] key, one result per field in order:
    /// AES-256-GCM with a fresh random 96-bit nonce and the field's `aad` as associated data.
    /// Limits as [`Hsm::index_hashes`].
    fn seal_fields(
        &self,
        key: &KeyToken,
        fields: Vec<ClearField>,
    ) -> impl Future<Output = Result<Vec<SealedField>>> + Send;

    /// Opens fields sealed by [`Hsm::seal_fields`] under the same key, one per field in order.
    /// A field that does not open (another key, another binding, altered) fails the whole call
    /// with [`Error::Verification`].
    fn open_fields(
        &self,
        key: &KeyToken,
        fields: Vec<SealedField>,
    ) -> impl Future<Output = Result<Vec<ClearField>>> + Send;

    /// Re-wraps `tokens` under a new LMK (split `threshold`-of-`shares`, the shares kept as
    /// [`SecretParts`] for [`Hsm::take_secret_part`]); the old LMK stays current until
    /// [`Hsm::commit_lmk_rotation`]. A new prepare replaces an uncommitted one (and drops its
    /// parts).
    fn prepare_lmk_rotation(
        &self,
        tokens: Vec<KeyToken>,
        threshold: u8,
        shares: u8,
    ) -> impl Future<Output = Result<LmkRotation>> + Send;

    /// Re-wraps more `tokens` under the LMK that [`Hsm::prepare_lmk_rotation`] prepared (named
    /// by its KCV), in the same order: a store with more tokens than one call should carry
    /// prepares with the first [`BATCH_ITEMS`] and re-wraps the rest in calls of at most as
    /// many. The old LMK stays current. No rotation prepared with that KCV (none, another,
    /// already committed, dropped by a seal) is [`Error::RotationNotPrepared`]; a count outside
    /// [`BATCH_ITEMS`] is [`Error::Count`].
    fn rewrap_for_rotation(
        &self,
        new_lmk_kcv: &Kcv,
        tokens: Vec<KeyToken>,
    ) -> impl Future<Output = Result<Vec<KeyToken>>> + Send;

    /// Makes the prepared LMK current (named by its KCV) and wipes the hot-key cache. Refused
    /// ([`Error::PartNotAvailable`]) while a share of the new LMK has not been taken: an LMK
    /// nobody holds could never be unsealed.
    fn commit_lmk_rotation(&self, new_lmk_kcv: &Kcv) -> impl Future<Output = Result<()>> + Send;

    /// A new station or PSAM-line transport key ([`KeyUsage::KeyBlockProtection`], TDES or AES
    /// `algorithm`, non-exportable) made here and split into `components` (2..=9) random
    /// components whose XOR is the key: the answer carries the key's token and KCV, the
    /// components stay in the HSM as [`SecretParts`] until each is taken once
    /// ([`Hsm::take_secret_part`]), so no answer carries two of them. The recipient's own
    /// custodians form the key from them in the recipient's HSM.
    fn issue_transport_key_components(
        &self,
        algorithm: Algorithm,
        components: u8,
    ) -> impl Future<Output = Result<IssuedComponents>> + Send;

    /// A new transport key ([`KeyUsage::KeyBlockProtection`], `algorithm`, non-exportable) made
    /// here and handed out at birth as a TR-31 block under `kek`, the recipient's current
    /// transport key, of the same family (TDES under TDES as version `B`, AES under AES as
    /// version `D`); anything else is [`Error::WrongUsage`] or [`Error::Unsupported`].
    ///
    /// The one, narrow exception to "a key-block protection key never leaves": only the key
    /// generated in this very call leaves, once, under a key of its own kind. A stored
    /// key-block protection key still never does ([`Hsm::export_key`] refuses it).
    fn issue_transport_key_under(
        &self,
        kek: &KeyToken,
        algorithm: Algorithm,
    ) -> impl Future<Output = Result<IssuedUnderKek>> + Send;
    /// Splits the key of `key` into `shares` backup shares, any `threshold` of which rebuild it
    /// (2 ≤ m ≤ n ≤ 16; Shamir, as the LMK's shares), for escrow with custodians: the shares
    /// are kept as [`SecretParts`] and each is taken once with [`Hsm::take_secret_part`]. Only a
    /// hierarchy root may be backed up — a card- or master-key derivation key of the national or
    /// provincial level; anything else is [`Error::WrongUsage`].
    fn backup_key(
        &self,
        key: &KeyToken,
        threshold: u8,
        shares: u8,
    ) -> impl Future<Output = Result<KeyBackup>> + Send;

    /// One backup share of a root restored one custodian at a time, possibly under another LMK
    /// than the backup's (escrow is for losing the first HSM): the share is checked now —
    /// format, check value, the backup, spec and KCV begun with, the threshold, not a repeat —
    /// and kept in the partial restore; at the threshold the key is rebuilt, its KCV compared
    /// with the backup's and its token returned. A refused share is [`Error::Share`] and
    /// leaves the partial restore as it was; a rebuilt key of another KCV is
    /// [`Error::Verification`].
    fn restore_share(
        &self,
        into: Restoration,
        share: LmkShare,
    ) -> impl Future<Output = Result<Restored>> + Send;
}

/// Refuses a batch of a length outside [`BATCH_ITEMS`] ([`Error::Count`]).
pub fn check_batch_len(len: usize) -> Result<()> {
    if BATCH_ITEMS.contains(&len) {
        Ok(())
    } else {
        Err(Error::Count {
            field: "batch items".into(),
            expected: "1 to 256".into(),
        })
    }
}
