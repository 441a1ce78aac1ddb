//! The types that cross the trust boundary: arguments and results of [`Hsm`](crate::Hsm).
//!
//! Nothing here holds a clear key except [`Component`] and [`LmkShare`], which carry a custodian's
//! own secret *into* the HSM (they zeroize on drop and print nothing). Everything that comes *out*
//! is a [`KeyToken`] (a key block under the LMK), a TR-31 block under a transport key, a
//! secure-messaging command, a KCV, or a status.

use core::fmt;

use zeroize::Zeroizing;

use crate::algorithm::Algorithm;
use crate::kcv::Kcv;
use crate::methods::MacFold;

/// A key under the HSM's LMK: a TR-31 version D key block whose header binds the key's usage,
/// algorithm, mode of use and exportability. Opaque to everyone but the HSM; safe to store.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KeyToken(String);

impl KeyToken {
    /// A token read back from storage or the wire. Its integrity is checked when the HSM uses it.
    pub fn from_stored(block: String) -> KeyToken {
        KeyToken(block)
    }

    /// The key block text, for storage or the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The header (first 16 characters) is public; the rest is ciphertext and MAC.
        let header = self.0.get(..16).unwrap_or("");
        write!(f, "KeyToken({header}…)")
    }
}

/// A level of the card key hierarchy (DOMAIN.md §2), as a hierarchy key's token records it: how
/// many dispersions separate the key from a card's key. The HSM derives a card key only from a
/// parent and factors that reach exactly the card level, so a hierarchy key never comes out of a
/// derivation relabelled as a card key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HierarchyLevel {
    /// The Ministry's root of a key type: three dispersions (F1, F2, F3) above the card.
    National,
    /// A provincial key, or the province's own root: two dispersions (F2, F3) above the card.
    Province,
    /// A city key: one dispersion (F3) above the card.
    City,
}

impl HierarchyLevel {
    /// Every level, top first.
    pub const ALL: [HierarchyLevel; 3] = [
        HierarchyLevel::National,
        HierarchyLevel::Province,
        HierarchyLevel::City,
    ];

    /// Dispersions from a key of this level to a card's key: 3, 2 or 1.
    pub const fn dispersions_to_card(self) -> usize {
        match self {
            HierarchyLevel::National => 3,
            HierarchyLevel::Province => 2,
            HierarchyLevel::City => 1,
        }
    }

    /// The level `factors` dispersions below this one, if that is still above the card.
    pub const fn below(self, factors: usize) -> Option<HierarchyLevel> {
        match self.dispersions_to_card().checked_sub(factors) {
            Some(3) => Some(HierarchyLevel::National),
            Some(2) => Some(HierarchyLevel::Province),
            Some(1) => Some(HierarchyLevel::City),
            _ => None,
        }
    }

    /// `national`, `province` or `city`.
    pub const fn name(self) -> &'static str {
        match self {
            HierarchyLevel::National => "national",
            HierarchyLevel::Province => "province",
            HierarchyLevel::City => "city",
        }
    }
}

/// What a key may be used for. Checked by the HSM on every use, from the token's header; the
/// HSM decides from it, not from the caller, whether a key may ever leave (see
/// [`KeyUsage::may_be_exported`]).
///
/// | usage | written to a card | protects a card slot | derives | leaves as TR-31 |
/// |---|---|---|---|---|
/// | `KeyBlockProtection` | no | no | no | never (it wraps blocks) |
/// | `CardDerivation(l)` | no | no | card keys, or `CardDerivation` below `l` | if made exportable |
/// | `MasterKeyDerivation(l)` | no | no | card master keys, or `MasterKeyDerivation` below `l` | never |
/// | `CardKey` | yes | no | no | yes |
/// | `CardMasterKey` | yes | yes | no | never |
/// | `VendorTransport` | no | yes (only a master key's write) | no | never |
/// | `AuditMac` | no | no | no | never |
/// | `ListSigning(scheme)` | no | no | no | never (only its public key leaves) |
/// | `RegistryIndex` | no | no | no | never (only HMACs leave) |
/// | `RegistryData` | no | no | no | never (only sealed fields and their opening leave) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyUsage {
    /// A key-block protection key (KEK) of a station or a PSAM line: wraps and unwraps TR-31
    /// blocks, nothing else. TR-31 usage `K1`, mode `B`.
    KeyBlockProtection,
    /// A national, provincial or city key of the hierarchy of ordinary card keys: the parent of
    /// derivations, and what a PSAM holds. TR-31 usage `E6`, mode `X` (derive only).
    CardDerivation(HierarchyLevel),
    /// A key of the hierarchy of card master keys: it derives only master keys (and the levels
    /// of its own hierarchy below it), and never leaves the HSM. TR-31 usage `E6`, mode `X`.
    MasterKeyDerivation(HierarchyLevel),
    /// A card's own key that is not a master key: written to a card under a master key,
    /// exported to stations; never protects another key. TR-31 usage `E5`, mode `N`.
    CardKey,
    /// A card's (or a directory's) master key: written to a card by secure messaging and the
    /// protector of the slots written under it. Only ever derived from a
    /// [`KeyUsage::MasterKeyDerivation`] key; never leaves as a TR-31 block.
    CardMasterKey,
    /// A blank card's vendor transport key: protects the write of the card's master key (and
    /// nothing else); never written, never exported.
    VendorTransport,
    /// The audit trail's MAC key. TR-31 usage `M6` (CMAC), mode `C`.
    AuditMac,
    /// The signing key of lists the service publishes (the blacklist for terminals): a 32-byte
    /// seed (generated as AES-256) from which the HSM derives the private key of the
    /// [`ListSignature`] scheme the token names (fixed when the key is made), which never leaves
    /// it; [`crate::Hsm::sign`] and [`crate::Hsm::public_key`] only. TR-31 usage `S0`, mode `S`.
    ListSigning(ListSignature),
    /// The registry's index key: HMAC-SHA256 of personal data (SSNs, card numbers) for
    /// uniqueness and look-ups without the clear value ([`crate::Hsm::index_hashes`] only).
    /// 32 bytes (generated as AES-256). TR-31 usage `M7` (HMAC), mode `G` (generate only).
    RegistryIndex,
    /// The registry's data key: AES-256-GCM over the personal fields a city may read back
    /// ([`crate::Hsm::seal_fields`], [`crate::Hsm::open_fields`] only), each bound to its
    /// record by associated data. TR-31 usage `D0` (data encryption), mode `B`.
    RegistryData,
}

/// The signature scheme of a [`KeyUsage::ListSigning`] key: part of the key (its token says
/// which), so a key signs with one scheme all its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListSignature {
    /// ECDSA over P-256 with SHA-256 (FIPS 186-5), deterministic nonces (RFC 6979).
    EcdsaP256,
    /// SM2DSA with SM3 (GB/T 32918.2, GM/T 0003.2), the signer's user id
    /// [`ListSignature::SM2_USER_ID`], deterministic nonces (RFC 6979 over SM3).
    Sm2,
}

impl ListSignature {
    /// Every scheme.
    pub const ALL: [ListSignature; 2] = [ListSignature::EcdsaP256, ListSignature::Sm2];

    /// The SM2 user id (distinguishing identifier) hashed into `Z_A`: GM/T 0009's default.
    pub const SM2_USER_ID: &'static str = "1234567812345678";

    /// The name in lists, configuration and messages: `ecdsa-p256-sha256` or `sm2-sm3`.
    pub const fn name(self) -> &'static str {
        match self {
            ListSignature::EcdsaP256 => "ecdsa-p256-sha256",
            ListSignature::Sm2 => "sm2-sm3",
        }
    }

    /// The scheme of a [`ListSignature::name`].
    pub fn from_name(name: &str) -> Option<ListSignature> {
        ListSignature::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl KeyUsage {
    /// Every usage, each hierarchy usage at every level.
    pub const ALL: [KeyUsage; 15] = [
        KeyUsage::KeyBlockProtection,
        KeyUsage::CardDerivation(HierarchyLevel::National),
        KeyUsage::CardDerivation(HierarchyLevel::Province),
        KeyUsage::CardDerivation(HierarchyLevel::City),
        KeyUsage::MasterKeyDerivation(HierarchyLevel::National),
        KeyUsage::MasterKeyDerivation(HierarchyLevel::Province),
        KeyUsage::MasterKeyDerivation(HierarchyLevel::City),
        KeyUsage::CardKey,
        KeyUsage::CardMasterKey,
        KeyUsage::VendorTransport,
        KeyUsage::AuditMac,
        KeyUsage::ListSigning(ListSignature::EcdsaP256),
        KeyUsage::ListSigning(ListSignature::Sm2),
        KeyUsage::RegistryIndex,
        KeyUsage::RegistryData,
    ];

    /// A short name for messages, as in [`crate::Error::WrongUsage`]: "a {name} key cannot be
    /// used to …".
    pub const fn name(self) -> &'static str {
        match self {
            KeyUsage::KeyBlockProtection => "key-block protection",
            KeyUsage::CardDerivation(HierarchyLevel::National) => "national card derivation",
            KeyUsage::CardDerivation(HierarchyLevel::Province) => "provincial card derivation",
            KeyUsage::CardDerivation(HierarchyLevel::City) => "city card derivation",
            KeyUsage::MasterKeyDerivation(HierarchyLevel::National) => {
                "national master-key derivation"
            }
            KeyUsage::MasterKeyDerivation(HierarchyLevel::Province) => {
                "provincial master-key derivation"
            }
            KeyUsage::MasterKeyDerivation(HierarchyLevel::City) => "city master-key derivation",
            KeyUsage::CardKey => "card",
            KeyUsage::CardMasterKey => "card master",
            KeyUsage::VendorTransport => "vendor transport",
            KeyUsage::AuditMac => "audit MAC",
            KeyUsage::ListSigning(ListSignature::EcdsaP256) => "P-256 list signing",
            KeyUsage::ListSigning(ListSignature::Sm2) => "SM2 list signing",
            KeyUsage::RegistryIndex => "registry index",
            KeyUsage::RegistryData => "registry data",
        }
    }

    /// Whether a key of this usage may ever leave the HSM as a TR-31 block: card keys and the
    /// card-derivation keys PSAMs hold. Key-block protection keys, master keys and their
    /// hierarchy, vendor transport keys and the audit key never do, whatever a caller asks.
    pub const fn may_be_exported(self) -> bool {
        matches!(self, KeyUsage::CardDerivation(_) | KeyUsage::CardKey)
    }

    /// The hierarchy level of a derivation key; `None` for every other usage.
    pub const fn level(self) -> Option<HierarchyLevel> {
        match self {
            KeyUsage::CardDerivation(level) | KeyUsage::MasterKeyDerivation(level) => Some(level),
            _ => None,
        }
    }
}

/// Whether a key may leave the HSM under a transport key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exportability {
    /// May be exported under a key-block protection key (TR-31 `E`).
    Exportable,
    /// Never leaves the HSM (TR-31 `N`).
    NonExportable,
}

/// What a new key is (for [`Hsm::generate_key`](crate::Hsm::generate_key) and
/// [`Hsm::form_key`](crate::Hsm::form_key)).
///
/// `exportability` may only narrow what the usage allows: [`Exportability::Exportable`] for a
/// usage that never leaves the HSM ([`KeyUsage::may_be_exported`] false) is refused with
/// [`crate::Error::NotExportable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeySpec {
    pub algorithm: Algorithm,
    pub usage: KeyUsage,
    pub exportability: Exportability,
}

/// A key as the HSM hands it out: its token and its KCV (default method and length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub token: KeyToken,
    pub kcv: Kcv,
}

/// Where a key formed one component at a time stands, for [`Hsm::add_component`](crate::Hsm::add_component).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accumulation {
    /// The first component of a key of `spec` to be formed from `components` (2..=9)
    /// components. The spec is checked here, as [`Hsm::form_key`](crate::Hsm::form_key) checks
    /// it, and travels in the partial key: it cannot be finished as anything else.
    Begin { spec: KeySpec, components: u8 },
    /// A further component, into the partial key the previous call returned.
    Continue(KeyToken),
}

/// What [`Hsm::add_component`](crate::Hsm::add_component) answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accumulated {
    /// Components are still missing: the partial key, for the next call.
    Partial(PartialKey),
    /// The last component arrived: the key.
    Formed(WrappedKey),
}

/// The XOR of the components received so far, under the LMK: a token of its own kind that the
/// HSM accepts only as [`Accumulation::Continue`] (never exported, never usable as a key),
/// carrying the spec of the key it will become and the count. Safe to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialKey {
    pub token: KeyToken,
    /// Components XORed in so far (each checked against its KCV).
    pub received: u8,
    /// Components the key is formed from.
    pub components: u8,
}

/// One clear key component typed by its custodian, with the KCV read from paper.
pub struct Component {
    hex: Zeroizing<String>,
    /// The KCV the custodian read from the component's paper form.
    pub expected_kcv: Kcv,
}

impl Component {
    /// A component from its hex text and the KCV written beside it.
    pub fn new(hex: Zeroizing<String>, expected_kcv: Kcv) -> Component {
        Component { hex, expected_kcv }
    }

    /// The component's hex text: the one way to reach it. Only an HSM implementation reads this.
    pub fn secret_hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Debug for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Component")
            .field("expected_kcv", &self.expected_kcv)
            .finish_non_exhaustive()
    }
}

/// One custodian's share of the LMK (m-of-n), as text shown once at `init` and typed at `unseal`;
/// also a root backup share typed at a restore ([`crate::Hsm::restore_share`]).
pub struct LmkShare {
    text: Zeroizing<String>,
}

impl LmkShare {
    /// A share from the text its custodian holds.
    pub fn new(text: Zeroizing<String>) -> LmkShare {
        LmkShare { text }
    }

    /// The share text: shown once to its custodian, then never again.
    pub fn secret_text(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for LmkShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LmkShare { .. }")
    }
}

/// One secret part as handed out (an LMK share at `init` or rotation, a root-backup share),
/// with a check value the custodian writes down beside it.
#[derive(Debug)]
pub struct IssuedShare {
    pub share: LmkShare,
    /// A short public check value of this share (not of the LMK).
    pub check_value: String,
}

/// A set of secret parts (custodians' shares) that the HSM has made and keeps, each until it is
/// taken once with [`crate::Hsm::take_secret_part`]: no answer of the HSM ever carries more than
/// one custodian's part.
///
/// This is the one mechanism for every secret that leaves the HSM in custodians' parts: the
/// shares of a new LMK ([`crate::Hsm::init_lmk`], [`crate::Hsm::prepare_lmk_rotation`]) and of
/// a root backup. The HSM hands part *i* out once and forgets it at once (it records nothing
/// about who took it: that is the caller's audit record); a second request for *i*, an unknown
/// set, or a set dropped at a seal or a tamper event is [`crate::Error::PartNotAvailable`]. The
/// set disappears when its last part is taken. Nothing here is secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretParts {
    /// Names the set in [`crate::Hsm::take_secret_part`] (random, public).
    pub set: String,
    /// Parts made, numbered `1..=count`.
    pub count: u8,
    /// Parts needed to rebuild the secret.
    pub threshold: u8,
}

/// The result of creating an LMK.
#[derive(Debug)]
pub struct LmkInit {
    /// The LMK's shares, each taken once with [`crate::Hsm::take_secret_part`]; `None` when the
    /// backend issues no shares (a PKCS#11 token kept on its one PIN, `1` of `1`).
    pub parts: Option<SecretParts>,
    /// The LMK's KCV, for the ceremony record.
    pub lmk_kcv: Kcv,
}

/// Progress of an unseal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsealProgress {
    /// Shares accepted so far.
    pub submitted: u8,
    /// Shares needed.
    pub threshold: u8,
    /// True when the LMK has been rebuilt, checked, and the HSM is operational.
    pub unsealed: bool,
}

/// The HSM's state, as a status call reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HsmState {
    /// No LMK has been created yet.
    Uninitialised,
    /// An LMK exists but is not loaded; shares are needed.
    Sealed,
    /// Loaded and self-tested: key operations are served.
    Operational,
    /// The self-test failed; every key operation is refused.
    SelfTestFailed,
}

/// What the HSM says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HsmStatus {
    pub state: HsmState,
    /// False for the simulator: it is not a secure device.
    pub secure: bool,
    /// True when running on the fixed, published test LMK (`--dangerous-test-lmk`).
    pub dangerous_test_lmk: bool,
    /// KCV of the current LMK, once one exists.
    pub lmk_kcv: Option<Kcv>,
    /// Unseal progress while sealed.
    pub unseal: Option<UnsealProgress>,
    /// The self-test check that failed, if one did.
    pub self_test_failure: Option<String>,
    /// Whether the last self-test at or after start-up passed.
    pub self_test_passed: bool,
    /// Keys in the hot-key cache.
    pub cached_keys: usize,
    /// True once a (simulated) tamper event has zeroized the LMK since start-up.
    pub tampered: bool,
}

/// A secure-messaging WRITE KEY (or similar) command to build for a card (DOMAIN.md §5).
#[derive(Debug, Clone)]
pub struct WriteKeyRequest {
    /// The key to write into the card: a [`KeyUsage::CardKey`] or [`KeyUsage::CardMasterKey`]
    /// (never a hierarchy key).
    pub key: KeyToken,
    /// The key that protects the slot now: a [`KeyUsage::CardMasterKey`] (the directory MK), or
    /// the [`KeyUsage::VendorTransport`] key of a blank card, which protects only the write of a
    /// master key.
    pub protect: KeyToken,
    /// APDU class, instruction and parameters, e.g. `84 D4 P1 00`.
    pub cla: u8,
    pub ins: u8,
    pub p1: u8,
    pub p2: u8,
    /// The card key header that precedes the key in the encrypted field (T514 style).
    pub key_header: Vec<u8>,
    /// The card's challenge: 8 bytes for DES-family protection keys, 16 for SM4.
    pub challenge: Vec<u8>,
    /// How an SM4 MAC is folded to 4 bytes.
    pub fold: MacFold,
}

/// A ready-made command: the station relays it to the card and never sees the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteKeyCommand {
    /// The whole APDU: `CLA INS P1 P2 Lc ‖ encrypted field ‖ MAC`.
    pub apdu: Vec<u8>,
    /// KCV of the key written, for the station's record.
    pub kcv: Kcv,
}

/// A key exported under a transport key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedKey {
    /// The TR-31 block under the recipient's KBPK.
    pub block: String,
    /// The key's KCV.
    pub kcv: Kcv,
}

/// The result of re-wrapping tokens under a new LMK; nothing changes until it is committed.
#[derive(Debug)]
pub struct LmkRotation {
    /// The new LMK's shares, each taken once with [`crate::Hsm::take_secret_part`]; `None` when
    /// the backend's rotation issues no shares (PKCS#11: the PIN's shares do not change).
    pub parts: Option<SecretParts>,
    /// The new LMK's KCV.
    pub lmk_kcv: Kcv,
    /// The input tokens re-wrapped under the new LMK, in the same order.
    pub tokens: Vec<KeyToken>,
}

/// A station's or PSAM line's new transport key (a [`KeyUsage::KeyBlockProtection`] key)
/// generated in the HSM and handed out as custodians' components
/// ([`crate::Hsm::issue_transport_key_components`]).
#[derive(Debug)]
pub struct IssuedComponents {
    /// The new key's token (non-exportable) and KCV.
    pub key: WrappedKey,
    /// Its components, kept in the HSM until each is taken once with
    /// [`crate::Hsm::take_secret_part`]: part *i*'s [`IssuedShare::share`] is the component's
    /// hex text (as a custodian types it into a component ceremony), its
    /// [`IssuedShare::check_value`] the component's own KCV (hex, the default method). Their
    /// XOR is the key. `threshold` equals `count`: every component is needed.
    pub parts: SecretParts,
}

/// A new transport key generated in the HSM and delivered at birth under the recipient's
/// current one ([`crate::Hsm::issue_transport_key_under`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedUnderKek {
    /// The new key's token (non-exportable) and KCV.
    pub key: WrappedKey,
    /// The new key as a TR-31 block (usage `K1`, mode `B`, exportability `N`, with its KCV
    /// block) under the current key: version `B` under a TDES key, `D` under an AES key.
    pub block: String,
}

/// A root backed up in custodians' shares ([`crate::Hsm::backup_key`]): what is public about it.
/// The shares themselves wait in the HSM as [`SecretParts`], each taken once with
/// [`crate::Hsm::take_secret_part`]; every share carries the backup's name, the key's spec and
/// KCV, the threshold and a check value, so a restore can refuse a wrong or foreign share as it
/// arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBackup {
    /// The shares, each taken once.
    pub parts: SecretParts,
    /// The backup's name (random, public): written in every share and on the ceremony record.
    pub backup: String,
    /// The key's spec, as its token says.
    pub spec: KeySpec,
    /// The key's KCV (default method): a restore must rebuild exactly this key.
    pub kcv: Kcv,
}

/// Where a root restored from its backup shares stands, for
/// [`crate::Hsm::restore_share`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restoration {
    /// The first share of the backup named `backup` of a key of `spec` whose KCV is `kcv` (as
    /// the backup's ceremony record says). The three travel in the partial restore: no share of
    /// another backup, key or spec is ever taken in.
    Begin {
        spec: KeySpec,
        kcv: Kcv,
        backup: String,
    },
    /// A further share, into the partial restore the previous call returned.
    Continue(KeyToken),
}

/// What [`crate::Hsm::restore_share`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// Shares are still missing: the partial restore (the shares so far under the LMK), for
    /// the next call.
    Partial(PartialRestore),
    /// The threshold was reached: the key rebuilt, its KCV checked, as a token under this HSM's
    /// LMK.
    Formed(WrappedKey),
}

/// The backup shares received so far, under the LMK: a block of its own kind that the HSM
/// accepts only as [`Restoration::Continue`] (never a key), bound to the backup, spec and KCV it
/// was begun with. Safe to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialRestore {
    pub token: KeyToken,
    /// Shares taken in so far (each checked).
    pub received: u8,
    /// Shares the key is rebuilt from.
    pub threshold: u8,
}
