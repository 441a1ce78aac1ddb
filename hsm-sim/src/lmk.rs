//! The simulator's local master key (LMK): key tokens under it, its Shamir shares, and the state
//! file that remembers it without holding it.
//!
//! - **The LMK** is an AES-256 key. Its KCV is the CMAC KCV, 5 bytes (X9.24-1:2017 annex A).
//! - **Tokens** ([`KeyToken`]) are TR-31 version D key blocks under a key-block protection key
//!   derived from the LMK with HKDF-SHA256 (salt `sscard-kms`, info
//!   `lmk/key-block-protection/v1`, AES-256), so the LMK itself never keys a cipher. The header
//!   binds the key's usage:
//!
//!   | [`KeyUsage`] | TR-31 usage | mode of use | role block `0R` |
//!   |---|---|---|---|
//!   | `KeyBlockProtection` | `K1` | `B` (wrap and unwrap) | — |
//!   | `CardDerivation(level)` | `E6` | `X` (derive only) | `D3`, `D2`, `D1` (national, province, city) |
//!   | `MasterKeyDerivation(level)` | `E6` | `X` | `M3`, `M2`, `M1` |
//!   | `CardKey` | `E5` | `N` | — |
//!   | `CardMasterKey` | `E5` | `N` | `MK` |
//!   | `VendorTransport` | `E5` | `N` | `VT` |
//!   | `AuditMac` | `M6` | `C` (generate and verify) | — |
//!   | `ListSigning(EcdsaP256)` | `S0` | `S` (sign only) | — |
//!   | `ListSigning(Sm2)` | `S0` | `S` | `G2` |
//!   | `RegistryIndex` | `M7` (HMAC) | `G` (generate only) | — |
//!   | `RegistryData` | `D0` (data encryption) | `B` (encrypt and decrypt) | — |
//!
//!   and its exportability (`E` or `N`). The **role block** is a proprietary optional block
//!   (X9.143 leaves IDs that begin with a digit to proprietary use) that tells a card master key,
//!   a vendor transport key and the two hierarchies apart, records a hierarchy key's level
//!   (the digit is the number of dispersions to the card), and names an SM2 list-signing key's
//!   scheme (`G2`, for GM/T SM2; a P-256 list-signing key has none, as before SM2 existed). It is set when the token is made —
//!   generated, formed, imported or derived — and covered by the token's MAC; it never appears
//!   in a block exported to a recipient. Unwrapping checks the MAC first (a flipped bit or a
//!   foreign LMK is [`Error::KeyBlockMac`]), then that the header, role block included, is
//!   exactly one of the rows above (tokens of earlier versions, whose `E6` keys had no role
//!   block, are refused).
//! - **Shares**: the LMK is split m-of-n (2 ≤ m ≤ n ≤ 16) with Shamir's scheme over GF(2⁸)
//!   (crate `blahaj`, the maintained fork of `sharks`), one polynomial per key byte with random
//!   coefficients drawn from the operating system. A share is text a custodian can copy,
//!   `lmk1-<index>-<64 hex digits>`, shown once. Its **check value** is the first 4 bytes of
//!   SHA-256(`sscard-kms/lmk-share/v1` ‖ index ‖ share), in hex: public, written down beside the
//!   share and kept in the state file, so that a mistyped share, a share of another LMK or of a
//!   rotated-out LMK is refused before it is used.
//! - **The state file** `hsm-state.json` holds the LMK's KCV, m, n and the share check values —
//!   never the LMK or a share — and is replaced atomically (temporary file, fsync, rename, fsync
//!   of the directory).

use std::borrow::Cow;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use blahaj::{Share, Sharks};
use hsm_api::{
    Algorithm, Error, Exportability, HierarchyLevel, IssuedShare, Kcv, KcvMethod, KeyBlockVersion,
    KeyToken, KeyUsage, ListSignature, LmkShare, Result,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::crypto::cipher::BlockCipher;
use crate::crypto::tr31::{
    self, BindingKeys, KeyBlockAlgorithm, KeyBlockHeader, ModeOfUse, OptionalBlock,
};
use crate::crypto::{SecretKey, kcv, kdf};

/// The fixed, published test LMK: AES-256, the ASCII bytes of `SSCARD-KMS-TEST-LMK-DO-NOT-USE!!`.
/// Anyone can unwrap tokens made under it; only for tests and demonstrations.
pub const DANGEROUS_TEST_LMK_HEX: &str =
    "5353434152442D4B4D532D544553542D4C4D4B2D444F2D4E4F542D5553452121";

/// The LMK's algorithm.
pub(crate) const LMK_ALGORITHM: Algorithm = Algorithm::Aes256;
/// Length of the LMK's KCV (CMAC method).
const LMK_KCV_LEN: usize = 5;
/// HKDF salt of every key the HSM derives from its LMK.
const KDF_SALT: &[u8] = b"sscard-kms";
/// HKDF info of the tokens' key-block protection key.
const KBPK_INFO: &[u8] = b"lmk/key-block-protection/v1";
/// Prefix of a share's text; the digit is the share format's version.
const SHARE_PREFIX: &str = "lmk1";
/// Label hashed into a share's check value.
const SHARE_CHECK_LABEL: &[u8] = b"sscard-kms/lmk-share/v1";
/// Bytes of SHA-256 kept as a share's check value.
const SHARE_CHECK_LEN: usize = 4;
/// The most shares an LMK may be split into.
pub(crate) const MAX_SHARES: u8 = 16;
/// The state file's name inside the state directory.
pub const STATE_FILE: &str = "hsm-state.json";
/// The state file's format marker.
const STATE_FORMAT: &str = "sscard-kms hsm-sim state v1";

/// The ID of the proprietary optional block that carries a token's role (see the module docs).
pub(crate) const ROLE_BLOCK: &str = "0R";

/// The TR-31 key usage and mode of use of a token of `usage` (the table of the module docs);
/// also the header a key of that usage is exported with.
pub(crate) const fn tr31_usage(usage: KeyUsage) -> (&'static str, ModeOfUse) {
    match usage {
        KeyUsage::KeyBlockProtection => ("K1", ModeOfUse::EncryptDecrypt),
        KeyUsage::CardDerivation(_) | KeyUsage::MasterKeyDerivation(_) => {
            ("E6", ModeOfUse::DeriveKeys)
        }
        KeyUsage::CardKey | KeyUsage::CardMasterKey | KeyUsage::VendorTransport => {
            ("E5", ModeOfUse::NoRestriction)
        }
        KeyUsage::AuditMac => ("M6", ModeOfUse::GenerateVerify),
        KeyUsage::ListSigning(_) => ("S0", ModeOfUse::SignOnly),
        KeyUsage::RegistryIndex => ("M7", ModeOfUse::GenerateOnly),
        KeyUsage::RegistryData => ("D0", ModeOfUse::EncryptDecrypt),
    }
}

/// The data of a token's role block, if its usage has one.
pub(crate) const fn role(usage: KeyUsage) -> Option<&'static str> {
    match usage {
        KeyUsage::CardDerivation(HierarchyLevel::National) => Some("D3"),
        KeyUsage::CardDerivation(HierarchyLevel::Province) => Some("D2"),
        KeyUsage::CardDerivation(HierarchyLevel::City) => Some("D1"),
        KeyUsage::MasterKeyDerivation(HierarchyLevel::National) => Some("M3"),
        KeyUsage::MasterKeyDerivation(HierarchyLevel::Province) => Some("M2"),
        KeyUsage::MasterKeyDerivation(HierarchyLevel::City) => Some("M1"),
        KeyUsage::CardMasterKey => Some("MK"),
        KeyUsage::VendorTransport => Some("VT"),
        KeyUsage::ListSigning(ListSignature::Sm2) => Some("G2"),
        KeyUsage::KeyBlockProtection
        | KeyUsage::CardKey
        | KeyUsage::AuditMac
        | KeyUsage::ListSigning(ListSignature::EcdsaP256)
        | KeyUsage::RegistryIndex
        | KeyUsage::RegistryData => None,
    }
}

/// The TR-31 exportability field of `exportability`.
pub(crate) const fn tr31_exportability(exportability: Exportability) -> tr31::Exportability {
    match exportability {
        Exportability::Exportable => tr31::Exportability::Trusted,
        Exportability::NonExportable => tr31::Exportability::NonExportable,
    }
}

/// The header of a block of `version` carrying a key of `alg` for `usage`.
pub(crate) fn key_block_header(
    version: KeyBlockVersion,
    usage: KeyUsage,
    alg: Algorithm,
    exportability: tr31::Exportability,
) -> Result<KeyBlockHeader> {
    let (code, mode) = tr31_usage(usage);
    KeyBlockHeader::new(
        version,
        code,
        KeyBlockAlgorithm::of(alg),
        mode,
        exportability,
    )
}

/// The usage a token's header says, or an error if it is not exactly one of the headers this
/// HSM writes (usage, mode of use, role block, and no other optional block).
fn token_usage(header: &KeyBlockHeader) -> Result<(KeyUsage, Exportability)> {
    if header.version != KeyBlockVersion::D {
        return Err(Error::KeyBlockHeader {
            field: "version".into(),
        });
    }
    // Parsed headers leave the padding block out: the role block is the only one allowed.
    if let Some(other) = header.optional_blocks.iter().find(|b| b.id != ROLE_BLOCK) {
        return Err(Error::KeyBlockOptionalBlock {
            id: other.id.clone(),
        });
    }
    let role_data = header.optional_block(ROLE_BLOCK).map(|b| b.data.as_str());
    let candidates: Vec<KeyUsage> = KeyUsage::ALL
        .into_iter()
        .filter(|&u| tr31_usage(u).0 == header.key_usage)
        .collect();
    if candidates.is_empty() {
        return Err(Error::KeyBlockHeader {
            field: "key usage".into(),
        });
    }
    let usage = candidates
        .into_iter()
        .find(|&u| role(u) == role_data)
        .ok_or(Error::KeyBlockOptionalBlock {
            id: ROLE_BLOCK.to_owned(),
        })?;
    if tr31_usage(usage).1 != header.mode_of_use {
        return Err(Error::KeyBlockHeader {
            field: "mode of use".into(),
        });
    }
    let exportability = match header.exportability {
        tr31::Exportability::Trusted => Exportability::Exportable,
        tr31::Exportability::NonExportable => Exportability::NonExportable,
        tr31::Exportability::Sensitive => {
            return Err(Error::KeyBlockHeader {
                field: "exportability".into(),
            });
        }
    };
    if exportability == Exportability::Exportable && !usage.may_be_exported() {
        return Err(Error::KeyBlockHeader {
            field: "exportability".into(),
        });
    }
    Ok((usage, exportability))
}

/// A token's key after its MAC and header have been checked.
pub(crate) struct TokenKey {
    pub(crate) usage: KeyUsage,
    pub(crate) exportability: Exportability,
    pub(crate) key: SecretKey,
    /// For a key-block protection key: its binding keys, derived at its first wrap and kept as
    /// long as the key is (in the hot-key cache: bounded, emptied on seal; zeroized on drop).
    /// Boxed, as `cipher` is: most keys (a card key, derived for one export) never use either,
    /// and an empty slot is then a pointer, not two key schedules to move.
    binding: OnceLock<Box<BindingKeys>>,
    /// For a parent key: its cipher's key schedule, made at its first derivation and kept as
    /// the binding keys are (zeroized on drop: RustCrypto's `zeroize` feature).
    cipher: OnceLock<Box<BlockCipher>>,
}

impl TokenKey {
    pub(crate) fn new(usage: KeyUsage, exportability: Exportability, key: SecretKey) -> TokenKey {
        TokenKey {
            usage,
            exportability,
            key,
            binding: OnceLock::new(),
            cipher: OnceLock::new(),
        }
    }

    /// This key's block cipher: keyed once, then kept (a city key derives every card's keys).
    pub(crate) fn cipher(&self) -> Result<&BlockCipher> {
        if let Some(kept) = self.cipher.get() {
            return Ok(kept);
        }
        let fresh = Box::new(BlockCipher::new(&self.key)?);
        // As for the binding keys: one made concurrently is dropped (and zeroized).
        Ok(self.cipher.get_or_init(|| fresh))
    }

    /// `work` with this key's binding keys for `version` (a KBPK's): derived once, then kept.
    pub(crate) fn with_binding<T>(
        &self,
        version: KeyBlockVersion,
        work: impl FnOnce(&BindingKeys) -> Result<T>,
    ) -> Result<T> {
        if let Some(kept) = self.binding.get().filter(|b| b.version() == version) {
            return work(kept);
        }
        let fresh = Box::new(BindingKeys::derive(&self.key, version)?);
        let result = work(&fresh);
        // The first derivation is kept; one computed concurrently is dropped (and zeroized).
        let _ = self.binding.set(fresh);
        result
    }
}

impl core::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TokenKey")
            .field("usage", &self.usage)
            .field("exportability", &self.exportability)
            .field("algorithm", &self.key.algorithm())
            .finish_non_exhaustive()
    }
}

/// A loaded LMK and the key-block protection key derived from it. Zeroized on drop (both are
/// [`SecretKey`]s).
pub(crate) struct Lmk {
    key: SecretKey,
    kbpk: SecretKey,
    /// The token key's binding keys (tokens are version D), derived once.
    binding: BindingKeys,
    kcv: Kcv,
}

impl core::fmt::Debug for Lmk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Lmk")
            .field("kcv", &self.kcv)
            .finish_non_exhaustive()
    }
}

impl Lmk {
    /// The LMK `key` (AES-256), with its token key and KCV.
    pub(crate) fn from_key(key: SecretKey) -> Result<Lmk> {
        if key.algorithm() != LMK_ALGORITHM {
            return Err(Error::KeyLength {
                alg: LMK_ALGORITHM,
                expected: LMK_ALGORITHM.key_len(),
                actual: key.len(),
            });
        }
        let kbpk = kdf::hkdf_sha256(&key, KDF_SALT, KBPK_INFO, Algorithm::Aes256)?;
        let kcv = lmk_kcv(&key)?;
        let binding = BindingKeys::derive(&kbpk, KeyBlockVersion::D)?;
        Ok(Lmk {
            key,
            kbpk,
            binding,
            kcv,
        })
    }

    /// A fresh random LMK.
    pub(crate) fn generate() -> Result<Lmk> {
        Lmk::from_key(crate::crypto::random::generate_key(LMK_ALGORITHM)?)
    }

    /// The published test LMK ([`DANGEROUS_TEST_LMK_HEX`]).
    pub(crate) fn dangerous_test() -> Result<Lmk> {
        Lmk::from_key(SecretKey::from_hex(LMK_ALGORITHM, DANGEROUS_TEST_LMK_HEX)?)
    }

    /// The LMK's key (for `crate::shares`, which splits other secrets the same way).
    pub(crate) fn key(&self) -> &SecretKey {
        &self.key
    }

    /// The LMK's KCV (CMAC, 5 bytes).
    pub(crate) fn kcv(&self) -> &Kcv {
        &self.kcv
    }

    /// Whether `kcv` is this LMK's KCV (same method and value), in constant time.
    pub(crate) fn has_kcv(&self, kcv: &Kcv) -> bool {
        kcv.method() == self.kcv.method() && bool::from(kcv.value().ct_eq(self.kcv.value()))
    }

    /// A token for `key`: a version D block under the LMK with the header of `usage` (role
    /// block included).
    pub(crate) fn wrap(
        &self,
        key: &SecretKey,
        usage: KeyUsage,
        exportability: Exportability,
    ) -> Result<KeyToken> {
        let mut header = key_block_header(
            KeyBlockVersion::D,
            usage,
            key.algorithm(),
            tr31_exportability(exportability),
        )?;
        if let Some(role) = role(usage) {
            header = header.with_optional_block(OptionalBlock::new(ROLE_BLOCK, role)?);
        }
        Ok(KeyToken::from_stored(self.wrap_block(&header, key)?))
    }

    /// The key of `token`, its MAC verified and its header checked.
    pub(crate) fn unwrap(&self, token: &KeyToken) -> Result<TokenKey> {
        let (header, key) = self.unwrap_block(token.as_str())?;
        let (usage, exportability) = token_usage(&header)?;
        Ok(TokenKey::new(usage, exportability, key))
    }

    /// A version D block of `key` with `header` under the LMK's token key: a token's, or a
    /// partial key's ([`crate::partial`], whose header no token has).
    pub(crate) fn wrap_block(&self, header: &KeyBlockHeader, key: &SecretKey) -> Result<String> {
        tr31::wrap_bound(&self.kbpk, &self.binding, header, key)
    }

    /// The header and key of a block under the LMK's token key, its MAC verified; what the
    /// header may say is the caller's to check.
    pub(crate) fn unwrap_block(&self, block: &str) -> Result<(KeyBlockHeader, SecretKey)> {
        tr31::unwrap_bound(&self.kbpk, Some(&self.binding), block)
    }

    /// A block of `data` (not a key) with `header` under the LMK's token key: a partial
    /// restore's ([`crate::backup`]), whose header no token has.
    pub(crate) fn wrap_data(&self, header: &KeyBlockHeader, data: &[u8]) -> Result<String> {
        tr31::wrap_data_bound(&self.binding, header, data)
    }

    /// The header and data of a block of [`Lmk::wrap_data`], its MAC verified.
    pub(crate) fn unwrap_data(&self, block: &str) -> Result<(KeyBlockHeader, Zeroizing<Vec<u8>>)> {
        tr31::unwrap_data_bound(&self.kbpk, &self.binding, block)
    }

    /// `token` (checked under this LMK) wrapped again under `new`, with the same header.
    pub(crate) fn rewrap(&self, token: &KeyToken, new: &Lmk) -> Result<KeyToken> {
        let (header, key) = tr31::unwrap_bound(&self.kbpk, Some(&self.binding), token.as_str())?;
        token_usage(&header)?;
        Ok(KeyToken::from_stored(tr31::wrap_bound(
            &new.kbpk,
            &new.binding,
            &header,
            &key,
        )?))
    }

    /// Splits the LMK into `count` shares, any `threshold` of which rebuild it.
    pub(crate) fn split(&self, threshold: u8, count: u8) -> Result<(Vec<IssuedShare>, LmkRecord)> {
        let shares = split_secret(threshold, count, self.key.secret_bytes())?;
        let mut issued = Vec::with_capacity(shares.len());
        let mut check_values = Vec::with_capacity(shares.len());
        for bytes in &shares {
            let (&index, value) = bytes.split_first().ok_or(Error::Random)?;
            let check_value = share_check_value(index, value);
            issued.push(IssuedShare {
                share: LmkShare::new(share_text(index, value)),
                check_value: check_value.clone(),
            });
            check_values.push(check_value);
        }
        let record = LmkRecord {
            kcv: self.kcv.clone(),
            threshold,
            check_values,
        };
        Ok((issued, record))
    }
}

/// The LMK's KCV: CMAC method, 5 bytes.
fn lmk_kcv(key: &SecretKey) -> Result<Kcv> {
    kcv::compute(key, KcvMethod::Cmac, LMK_KCV_LEN)
}

/// Refuses share counts outside 2 ≤ `threshold` ≤ `count` ≤ 16.
pub(crate) fn check_share_counts(threshold: u8, count: u8) -> Result<()> {
    if threshold < 2 || threshold > count || count > MAX_SHARES {
        return Err(Error::Count {
            field: "LMK shares".into(),
            expected: "2 <= threshold <= shares <= 16".into(),
        });
    }
    Ok(())
}

/// What the HSM remembers of its LMK without holding it: KCV, threshold, one check value per
/// share (index 1 first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LmkRecord {
    pub(crate) kcv: Kcv,
    pub(crate) threshold: u8,
    pub(crate) check_values: Vec<String>,
}

impl LmkRecord {
    /// Number of shares issued.
    pub(crate) fn shares(&self) -> u8 {
        // At most 16 by construction.
        u8::try_from(self.check_values.len()).unwrap_or(u8::MAX)
    }

    /// Parses `share` and checks it against this record: format, index, check value.
    pub(crate) fn accept(&self, share: &LmkShare) -> Result<ParsedShare> {
        let parsed = ParsedShare::parse(share.secret_text())?;
        let known = self
            .check_values
            .get(usize::from(parsed.index) - 1)
            .ok_or(Error::Share("share index out of range for this LMK".into()))?;
        if !bool::from(known.as_bytes().ct_eq(parsed.check_value.as_bytes())) {
            return Err(Error::Share(
                "not a share of this LMK (mistyped, or of another LMK)".into(),
            ));
        }
        Ok(parsed)
    }
}

/// A share accepted at unseal.
pub(crate) struct ParsedShare {
    /// The share's x coordinate, 1..=16.
    pub(crate) index: u8,
    /// `index ‖ value`, as `blahaj` reads a share.
    bytes: Zeroizing<Vec<u8>>,
    check_value: String,
}

impl core::fmt::Debug for ParsedShare {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ParsedShare")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl ParsedShare {
    /// Reads `lmk1-<index>-<64 hex digits>`; white space anywhere and lower-case hex are accepted.
    fn parse(text: &str) -> Result<ParsedShare> {
        const MALFORMED: Error = Error::Share(Cow::Borrowed(
            "not of the form lmk1-<index>-<64 hex digits>",
        ));
        let compact: Zeroizing<String> =
            Zeroizing::new(text.chars().filter(|c| !c.is_whitespace()).collect());
        let mut parts = compact.split('-');
        let (Some(prefix), Some(index), Some(value), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(MALFORMED);
        };
        if !prefix.eq_ignore_ascii_case(SHARE_PREFIX) {
            return Err(MALFORMED);
        }
        if index.is_empty() || index.len() > 2 || !index.bytes().all(|b| b.is_ascii_digit()) {
            return Err(MALFORMED);
        }
        let index: u8 = index.parse().map_err(|_| MALFORMED)?;
        if index == 0 || index > MAX_SHARES {
            return Err(Error::Share("share index out of range 1..=16".into()));
        }
        if value.len() != 2 * LMK_ALGORITHM.key_len() {
            return Err(MALFORMED);
        }
        let mut bytes = Zeroizing::new(Vec::with_capacity(1 + LMK_ALGORITHM.key_len()));
        bytes.push(index);
        let decoded =
            crate::crypto::key::decode_secret_hex(value, "LMK share").map_err(|_| MALFORMED)?;
        bytes.extend_from_slice(&decoded);
        let check_value = share_check_value(index, &decoded);
        Ok(ParsedShare {
            index,
            bytes,
            check_value,
        })
    }
}

/// Rebuilds the LMK from `shares` (at least `threshold` of distinct indices, checked by the
/// caller).
pub(crate) fn combine(threshold: u8, shares: &[ParsedShare]) -> Result<Lmk> {
    let parts: Vec<&[u8]> = shares.iter().map(|s| s.bytes.as_slice()).collect();
    let secret = recover_secret(threshold, &parts)?;
    Lmk::from_key(SecretKey::new(LMK_ALGORITHM, &secret)?)
}

/// The one Shamir split of the HSM (the LMK's shares, a root's backup shares): `count` shares of
/// `secret`, any `threshold` of which rebuild it, each `index ‖ value` (the value as long as
/// the secret) in a buffer zeroized on drop. Counts as [`check_share_counts`].
pub(crate) fn split_secret(
    threshold: u8,
    count: u8,
    secret: &[u8],
) -> Result<Vec<Zeroizing<Vec<u8>>>> {
    check_share_counts(threshold, count)?;
    let mut rng = OsRandom::default();
    // `dealer_rng` draws every coefficient before returning; the polynomials live in the
    // iterator (zeroized on drop) until `collect` has evaluated the shares.
    let shares: Vec<Share> = Sharks(threshold)
        .dealer_rng(secret, &mut rng)
        .take(usize::from(count))
        .collect();
    if rng.failed {
        return Err(Error::Random);
    }
    Ok(shares
        .iter()
        .map(|share| Zeroizing::new(Vec::from(share)))
        .collect())
}

/// The secret of [`split_secret`] from `shares` (`index ‖ value` each; at least `threshold` of
/// distinct indices, checked by the caller).
pub(crate) fn recover_secret(threshold: u8, shares: &[&[u8]]) -> Result<Zeroizing<Vec<u8>>> {
    let shares: Vec<Share> = shares
        .iter()
        .map(|s| Share::try_from(*s))
        .collect::<core::result::Result<_, _>>()
        .map_err(|_| Error::Share("malformed share".into()))?;
    Ok(Zeroizing::new(Sharks(threshold).recover(&shares).map_err(
        |_| Error::Share("not enough distinct shares".into()),
    )?))
}

/// The text of share `index` with value `value`: `lmk1-03-…`, built in a buffer that is
/// zeroized on drop and never reallocated.
fn share_text(index: u8, value: &[u8]) -> zeroize::Zeroizing<String> {
    let mut text = Zeroizing::new(String::with_capacity(
        SHARE_PREFIX.len() + 4 + 2 * value.len(),
    ));
    text.push_str(SHARE_PREFIX);
    text.push('-');
    text.push(char::from(b'0' + index / 10));
    text.push(char::from(b'0' + index % 10));
    text.push('-');
    crate::crypto::key::push_secret_hex(&mut text, value);
    text
}

/// The public check value of share `index` with value `value`: 8 hex digits.
fn share_check_value(index: u8, value: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(SHARE_CHECK_LABEL);
    hash.update([index]);
    hash.update(value);
    let digest = hash.finalize();
    hex::encode_upper(&digest[..SHARE_CHECK_LEN])
}

/// An RNG for `blahaj` that reads the operating system's CSPRNG on every call (no state to
/// zeroize). `rand`'s traits cannot fail here, so a failure is remembered and the result
/// discarded by the caller.
#[derive(Debug, Default)]
struct OsRandom {
    failed: bool,
}

impl rand::TryRng for OsRandom {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> core::result::Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.fill(&mut b);
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> core::result::Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> core::result::Result<(), Self::Error> {
        self.fill(dst);
        Ok(())
    }
}

impl rand::TryCryptoRng for OsRandom {}

impl OsRandom {
    fn fill(&mut self, dst: &mut [u8]) {
        if getrandom::fill(dst).is_err() {
            self.failed = true;
        }
    }
}

/// The state file's content. Public data only.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    format: String,
    /// Upper-case hex, CMAC method.
    lmk_kcv: String,
    lmk_kcv_method: String,
    threshold: u8,
    shares: u8,
    share_check_values: Vec<String>,
}

/// Reads the state file of `dir`; `None` if there is none (a new HSM).
pub(crate) fn load_record(dir: &Path) -> Result<Option<LmkRecord>> {
    let path = dir.join(STATE_FILE);
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(_) => return Err(Error::Storage("cannot read the state file".into())),
    };
    let file: StateFile = serde_json::from_slice(&text)
        .map_err(|_| Error::Storage("the state file is not valid".into()))?;
    let invalid = Error::Storage("the state file is not valid".into());
    if file.format != STATE_FORMAT || file.lmk_kcv_method != KcvMethod::Cmac.name() {
        return Err(invalid);
    }
    let kcv = hex::decode(&file.lmk_kcv).map_err(|_| invalid.clone())?;
    if kcv.len() != LMK_KCV_LEN
        || check_share_counts(file.threshold, file.shares).is_err()
        || file.share_check_values.len() != usize::from(file.shares)
        || !file
            .share_check_values
            .iter()
            .all(|c| c.len() == 2 * SHARE_CHECK_LEN && c.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(invalid);
    }
    Ok(Some(LmkRecord {
        kcv: Kcv::from_parts(KcvMethod::Cmac, kcv),
        threshold: file.threshold,
        check_values: file
            .share_check_values
            .iter()
            .map(|c| c.to_ascii_uppercase())
            .collect(),
    }))
}

/// Replaces the state file of `dir` with `record`, atomically: a temporary file is written and
/// synced, renamed over the old one, and the directory synced.
pub(crate) fn store_record(dir: &Path, record: &LmkRecord) -> Result<()> {
    let file = StateFile {
        format: STATE_FORMAT.to_owned(),
        lmk_kcv: record.kcv.to_hex(),
        lmk_kcv_method: record.kcv.method().name().to_owned(),
        threshold: record.threshold,
        shares: record.shares(),
        share_check_values: record.check_values.clone(),
    };
    let mut json = serde_json::to_vec_pretty(&file)
        .map_err(|_| Error::Storage("cannot encode the state".into()))?;
    json.push(b'\n');
    fs::create_dir_all(dir)
        .map_err(|_| Error::Storage("cannot create the state directory".into()))?;
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|_| Error::Storage("cannot create the temporary state file".into()))?;
    out.write_all(&json)
        .and_then(|()| out.sync_all())
        .map_err(|_| Error::Storage("cannot write the temporary state file".into()))?;
    drop(out);
    fs::rename(&tmp, dir.join(STATE_FILE))
        .map_err(|_| Error::Storage("cannot replace the state file".into()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|_| Error::Storage("cannot sync the state directory".into()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(issued: &[IssuedShare]) -> Vec<ParsedShare> {
        issued
            .iter()
            .map(|s| ParsedShare::parse(s.share.secret_text()).unwrap())
            .collect()
    }

    #[test]
    fn test_lmk_is_the_published_ascii() {
        assert_eq!(
            hex::decode(DANGEROUS_TEST_LMK_HEX).unwrap(),
            b"SSCARD-KMS-TEST-LMK-DO-NOT-USE!!"
        );
        assert!(Lmk::dangerous_test().is_ok());
    }

    #[test]
    fn shares_rebuild_the_lmk_and_fewer_reveal_nothing() {
        let lmk = Lmk::generate().unwrap();
        let (issued, record) = lmk.split(3, 5).unwrap();
        assert_eq!(issued.len(), 5);
        assert_eq!(record.shares(), 5);
        assert_eq!(&record.kcv, lmk.kcv());
        for (i, share) in issued.iter().enumerate() {
            let text = share.share.secret_text();
            assert!(text.starts_with(&format!("lmk1-{:02}-", i + 1)), "{i}");
            assert_eq!(text.len(), 4 + 4 + 64);
            assert_eq!(share.check_value, record.check_values[i]);
            assert_eq!(record.accept(&share.share).unwrap().index as usize, i + 1);
        }
        let shares = parsed(&issued);
        // Any 3 of the 5 rebuild it.
        for pick in [[0, 1, 2], [0, 2, 4], [4, 3, 1]] {
            let chosen: Vec<ParsedShare> = pick
                .iter()
                .map(|&i| ParsedShare::parse(issued[i].share.secret_text()).unwrap())
                .collect();
            assert!(combine(3, &chosen).unwrap().has_kcv(lmk.kcv()));
        }
        // Two shares are refused by the threshold…
        assert!(matches!(combine(3, &shares[..2]), Err(Error::Share(_))));
        // …and interpolating them anyway (as a 2-of-n scheme would) gives an unrelated key.
        // Shamir's guarantee: with fewer than m shares, every value of the secret is equally
        // likely (the m−1 points fit one polynomial of degree m−1 for each possible secret), so
        // the shares carry no information about the LMK at all — not merely "not enough".
        let wrong = combine(2, &shares[..2]).unwrap();
        assert!(!wrong.has_kcv(lmk.kcv()));
        // The same index twice is not two shares.
        let twice = [
            ParsedShare::parse(issued[0].share.secret_text()).unwrap(),
            ParsedShare::parse(issued[0].share.secret_text()).unwrap(),
            ParsedShare::parse(issued[1].share.secret_text()).unwrap(),
        ];
        assert!(matches!(combine(3, &twice), Err(Error::Share(_))));
    }

    #[test]
    fn share_counts_are_bounded() {
        let lmk = Lmk::generate().unwrap();
        for (m, n) in [(1, 3), (0, 0), (4, 3), (2, 17), (17, 17)] {
            assert!(
                matches!(lmk.split(m, n), Err(Error::Count { .. })),
                "{m} {n}"
            );
        }
        assert!(lmk.split(2, 2).is_ok());
        assert!(lmk.split(16, 16).is_ok());
    }

    #[test]
    fn malformed_and_foreign_shares_are_refused() {
        let lmk = Lmk::generate().unwrap();
        let (issued, record) = lmk.split(2, 3).unwrap();
        let (other, _) = Lmk::generate().unwrap().split(2, 3).unwrap();
        let good = issued[1].share.secret_text().to_owned();
        let share = |s: &str| LmkShare::new(Zeroizing::new(s.to_owned()));
        // White space and lower case are accepted.
        let spaced = format!(" {} ", good.to_lowercase().replacen('-', " - ", 2));
        assert_eq!(record.accept(&share(&spaced)).unwrap().index, 2);
        let mut flipped = good.clone();
        let last = if flipped.ends_with('0') { "1" } else { "0" };
        flipped.replace_range(flipped.len() - 1.., last);
        for bad in [
            "",
            "garbage",
            "lmk1-02",
            "lmk2-02-00",
            &good[..good.len() - 2],
            &format!("{good}00"),
            &good.replacen("lmk1-02", "lmk1-00", 1),
            &good.replacen("lmk1-02", "lmk1-x2", 1),
            &good.replacen("lmk1-02", "lmk1-17", 1),
            &good.replacen("lmk1-02", "lmk1-03", 1),
            &good.replacen("lmk1-02", "lmk1-04", 1),
            &flipped,
            other[1].share.secret_text(),
        ] {
            assert!(
                matches!(record.accept(&share(bad)), Err(Error::Share(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn tokens_bind_their_usage() {
        let lmk = Lmk::dangerous_test().unwrap();
        let key = crate::crypto::random::generate_key(Algorithm::Tdes2).unwrap();
        for usage in KeyUsage::ALL {
            for exportability in [Exportability::Exportable, Exportability::NonExportable] {
                let token = lmk.wrap(&key, usage, exportability).unwrap();
                let (code, mode) = tr31_usage(usage);
                assert_eq!(&token.as_str()[5..7], code);
                assert_eq!(token.as_str().as_bytes()[8], mode.code() as u8);
                let header = tr31::parse_header(token.as_str()).unwrap();
                assert_eq!(
                    header.optional_block(ROLE_BLOCK).map(|b| b.data.as_str()),
                    role(usage)
                );
                if exportability == Exportability::Exportable && !usage.may_be_exported() {
                    // A token that says a never-exportable key is exportable is refused.
                    assert_eq!(
                        lmk.unwrap(&token).unwrap_err(),
                        Error::KeyBlockHeader {
                            field: "exportability".into()
                        },
                        "{usage:?}"
                    );
                    continue;
                }
                let back = lmk.unwrap(&token).unwrap();
                assert_eq!(back.usage, usage);
                assert_eq!(back.exportability, exportability);
                assert!(back.key == key);
            }
        }
        // An `E6` token without its role block (the format before levels were recorded), or
        // with a role of the wrong usage code, is refused.
        let bare = KeyBlockHeader::new(
            KeyBlockVersion::D,
            "E6",
            KeyBlockAlgorithm::Tdes,
            ModeOfUse::DeriveKeys,
            tr31::Exportability::NonExportable,
        )
        .unwrap();
        for header in [
            bare.clone(),
            bare.with_optional_block(OptionalBlock::new(ROLE_BLOCK, "MK").unwrap()),
        ] {
            let token = KeyToken::from_stored(tr31::wrap(&lmk.kbpk, &header, &key).unwrap());
            assert_eq!(
                lmk.unwrap(&token).unwrap_err(),
                Error::KeyBlockOptionalBlock {
                    id: ROLE_BLOCK.to_owned()
                }
            );
        }
        // A header this HSM never writes, even under its own KBPK, is refused.
        let odd = KeyBlockHeader::new(
            KeyBlockVersion::D,
            "E6",
            KeyBlockAlgorithm::Tdes,
            ModeOfUse::NoRestriction,
            tr31::Exportability::Trusted,
        )
        .unwrap()
        .with_optional_block(OptionalBlock::new(ROLE_BLOCK, "D1").unwrap());
        let token = KeyToken::from_stored(tr31::wrap(&lmk.kbpk, &odd, &key).unwrap());
        assert_eq!(
            lmk.unwrap(&token).unwrap_err(),
            Error::KeyBlockHeader {
                field: "mode of use".into()
            }
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let lmk = Lmk::dangerous_test().unwrap();
        let (issued, _) = lmk.split(2, 2).unwrap();
        let shown = format!("{lmk:?} {issued:?} {:?}", parsed(&issued));
        assert!(!shown.contains("535343"), "{shown}");
        for share in &issued {
            let text = share.share.secret_text();
            assert!(!shown.contains(&text[8..20]), "{shown}");
        }
        // The test LMK's bytes as a decimal list, as a derived Debug of a Vec<u8> would print.
        assert!(!shown.contains("83, 83, 67"), "{shown}");
    }
}
