//! Root backups: a hierarchy root split into custodians' shares for escrow
//! ([`hsm_api::Hsm::backup_key`]), and restored from them one custodian at a time, possibly in
//! another HSM under another LMK ([`hsm_api::Hsm::restore_share`]).
//!
//! The split is the LMK's own Shamir split ([`crate::lmk::split_secret`], `blahaj`, GF(2⁸),
//! 2 ≤ m ≤ n ≤ 16) over the key's bytes. A **share** is text its custodian copies onto paper:
//!
//! ```text
//! rb1-<backup>-<spec>-<alg>-<kcv>-<m>-<index>-<value>-<check>
//! rb1-3F9A0C11D2E4B577-E6D2N-TDES-D2B91C-2-01-<32 hex digits>-5AB0917C
//! ```
//!
//! - `backup`: the backup's name, 16 random hex digits, the same in every share of one backup
//!   (and on its ceremony record);
//! - `spec`: the key's TR-31 usage and role (as its token's header, [`crate::lmk`]) and `E`/`N`
//!   exportability; `alg`: its algorithm's name; `kcv`: its KCV by the default method — what a
//!   restore must rebuild;
//! - `m`: the threshold; `index`: the share's x coordinate (two digits); `value`: the share,
//!   as long as the key;
//! - `check`: the share's **check value**, the first 4 bytes of
//!   SHA-256(`sscard-kms/root-backup-share/v1` ‖ everything before `-<check>`), in hex: a
//!   mistyped share is refused as it is submitted. It is public, audited when the share is
//!   handed out, and says nothing of the key.
//!
//! White space is ignored and case does not matter. Fewer than `m` shares say nothing about the
//! key (every key is equally likely given m−1 points); the public fields say what the key is
//! for and its KCV, as the service's store does anyway.
//!
//! A **partial restore** keeps the shares taken in so far between two custodians: a TR-31
//! version D block under the LMK's token key ([`crate::lmk::Lmk::wrap_data`]) whose header no
//! token has — usage `0S` (proprietary), the key's algorithm, mode `N`, exportability `N`, and
//! one optional block `0B` with `<backup>.<spec>.<alg>.<kcv>.<m>` — and whose data is the
//! shares, `index ‖ value` each. The LMK's token unwrap refuses it (usage `0S` is no token's),
//! every key operation refuses it, `add_component` refuses it, and `restore_share` refuses
//! every other block: it is good only for the next share of that same backup.

use hsm_api::{
    Algorithm, Error, Exportability, IssuedShare, Kcv, KcvMethod, KeyBackup, KeyBlockVersion,
    KeySpec, KeyToken, KeyUsage, LmkShare, PartialRestore, Restoration, Restored, Result,
    WrappedKey,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::crypto::random::random_bytes;
use crate::crypto::tr31::{self, KeyBlockAlgorithm, KeyBlockHeader, ModeOfUse, OptionalBlock};
use crate::crypto::{SecretKey, kcv};
use crate::lmk::{self, Lmk};
use crate::policy;

/// Prefix of a share's text; the digit is the share format's version.
const SHARE_PREFIX: &str = "RB1";
/// Label hashed into a share's check value.
const SHARE_CHECK_LABEL: &[u8] = b"sscard-kms/root-backup-share/v1";
/// Bytes of SHA-256 kept as a share's check value.
const SHARE_CHECK_LEN: usize = 4;
/// Bytes of randomness in a backup's name.
const BACKUP_NAME_BYTES: usize = 8;
/// The key usage of a partial restore's header.
const RESTORE_USAGE: &str = "0S";
/// The optional block that binds a partial restore to its backup.
const RESTORE_BLOCK: &str = "0B";

/// A root's shares, not yet deposited, and what is public about them.
pub(crate) struct Split {
    pub(crate) shares: Vec<IssuedShare>,
    pub(crate) threshold: u8,
    pub(crate) backup: String,
    pub(crate) spec: KeySpec,
    pub(crate) kcv: Kcv,
}

impl core::fmt::Debug for Split {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Split")
            .field("backup", &self.backup)
            .field("spec", &self.spec)
            .field("kcv", &self.kcv)
            .finish_non_exhaustive()
    }
}

impl Split {
    /// The public answer, once the shares are deposited as `parts`.
    pub(crate) fn backup(&self, parts: hsm_api::SecretParts) -> KeyBackup {
        KeyBackup {
            parts,
            backup: self.backup.clone(),
            spec: self.spec,
            kcv: self.kcv.clone(),
        }
    }
}

/// The key of `token` (under `lmk`) split into `count` shares, any `threshold` of which rebuild
/// it ([`hsm_api::Hsm::backup_key`]).
pub(crate) fn split(lmk: &Lmk, token: &KeyToken, threshold: u8, count: u8) -> Result<Split> {
    let key = lmk.unwrap(token)?;
    split_key(&key.key, key.usage, key.exportability, threshold, count)
}

/// `key` (of `usage`, `exportability`) split into backup shares.
fn split_key(
    key: &SecretKey,
    usage: KeyUsage,
    exportability: Exportability,
    threshold: u8,
    count: u8,
) -> Result<Split> {
    if !policy::may_be_backed_up(usage) {
        return Err(policy::wrong_usage(
            usage,
            "be backed up (only a national or provincial root is)",
        ));
    }
    let spec = KeySpec {
        algorithm: key.algorithm(),
        usage,
        exportability,
    };
    let kcv = kcv::compute_default(key)?;
    let backup = hex::encode_upper(random_bytes(BACKUP_NAME_BYTES)?);
    let bound = Bound {
        backup: backup.clone(),
        spec,
        kcv: kcv.clone(),
        threshold,
    };
    let shares = lmk::split_secret(threshold, count, key.secret_bytes())?
        .iter()
        .map(|bytes| {
            let (&index, value) = bytes.split_first().ok_or(Error::Random)?;
            Ok(bound.issue(index, value))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Split {
        shares,
        threshold,
        backup,
        spec,
        kcv,
    })
}

/// What binds the shares of one backup together: in every share, and in a partial restore.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bound {
    backup: String,
    spec: KeySpec,
    kcv: Kcv,
    threshold: u8,
}

impl Bound {
    /// `<backup>-<spec>-<alg>-<kcv>-<m>`, upper case.
    fn text(&self, separator: char) -> String {
        format!(
            "{}{separator}{}{separator}{}{separator}{}{separator}{}",
            self.backup,
            spec_code(self.spec),
            self.spec.algorithm.name().to_ascii_uppercase(),
            self.kcv.to_hex(),
            self.threshold
        )
    }

    /// Reads [`Bound::text`] (upper case), or `None`.
    fn parse(text: &str, separator: char) -> Option<Bound> {
        let mut fields = text.split(separator);
        let (Some(backup), Some(spec), Some(alg), Some(kcv), Some(m), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return None;
        };
        if backup.len() != 2 * BACKUP_NAME_BYTES || !backup.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let algorithm = Algorithm::from_name(&alg.to_ascii_lowercase()).ok()?;
        let spec = spec_of(spec, algorithm)?;
        let kcv = Kcv::from_parts(KcvMethod::default_for(algorithm), hex::decode(kcv).ok()?);
        if m.is_empty() || m.len() > 2 || !m.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let threshold: u8 = m.parse().ok()?;
        lmk::check_share_counts(threshold, lmk::MAX_SHARES).ok()?;
        Some(Bound {
            backup: backup.to_owned(),
            spec,
            kcv,
            threshold,
        })
    }

    /// Share `index` of value `value`, its text built in a buffer zeroized on drop and never
    /// reallocated.
    fn issue(&self, index: u8, value: &[u8]) -> IssuedShare {
        let head = format!("{SHARE_PREFIX}-{}-{index:02}-", self.text('-'));
        let mut text = Zeroizing::new(String::with_capacity(
            head.len() + 2 * value.len() + 1 + 2 * SHARE_CHECK_LEN,
        ));
        text.push_str(&head);
        crate::crypto::key::push_secret_hex(&mut text, value);
        let check_value = check_value(&text);
        text.push('-');
        text.push_str(&check_value);
        IssuedShare {
            share: LmkShare::new(text),
            check_value,
        }
    }
}

/// The check value of a share's text before `-<check>`.
fn check_value(text: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(SHARE_CHECK_LABEL);
    hash.update(text.as_bytes());
    hex::encode_upper(&hash.finalize()[..SHARE_CHECK_LEN])
}

/// `E6D2N`: a spec's TR-31 usage, role (`--` for none) and exportability.
fn spec_code(spec: KeySpec) -> String {
    let (code, _) = lmk::tr31_usage(spec.usage);
    let role = lmk::role(spec.usage).unwrap_or("--");
    let exportability = match spec.exportability {
        Exportability::Exportable => 'E',
        Exportability::NonExportable => 'N',
    };
    format!("{code}{role}{exportability}")
}

/// The spec of a [`spec_code`] for a key of `algorithm`, if it is one a backup may have.
fn spec_of(code: &str, algorithm: Algorithm) -> Option<KeySpec> {
    let (usage, exportability) = (code.get(..4)?, code.get(4..)?);
    let usage = KeyUsage::ALL.into_iter().find(|&u| {
        let (c, _) = lmk::tr31_usage(u);
        format!("{c}{}", lmk::role(u).unwrap_or("--")) == usage
    })?;
    let exportability = match exportability {
        "E" => Exportability::Exportable,
        "N" => Exportability::NonExportable,
        _ => return None,
    };
    let spec = KeySpec {
        algorithm,
        usage,
        exportability,
    };
    (policy::may_be_backed_up(usage) && policy::check_new_key(spec).is_ok()).then_some(spec)
}

/// A share as submitted, its check value verified.
struct ParsedShare {
    bound: Bound,
    /// `index ‖ value`, as `blahaj` reads a share.
    bytes: Zeroizing<Vec<u8>>,
}

impl ParsedShare {
    fn index(&self) -> u8 {
        self.bytes.first().copied().unwrap_or(0)
    }

    /// Reads a share's text (white space anywhere, any case).
    fn parse(text: &str) -> Result<ParsedShare> {
        let malformed = || Error::Share("not a root backup share (rb1-…)".into());
        let compact: Zeroizing<String> = Zeroizing::new(
            text.chars()
                .filter(|c| !c.is_whitespace())
                .map(|c| c.to_ascii_uppercase())
                .collect(),
        );
        let (body, check) = compact.rsplit_once('-').ok_or_else(malformed)?;
        let expected = check_value(body);
        if !bool::from(expected.as_bytes().ct_eq(check.as_bytes())) {
            return Err(Error::Share(
                "the share does not match its check value (mistyped?)".into(),
            ));
        }
        let (head, value) = body.rsplit_once('-').ok_or_else(malformed)?;
        let (head, index) = head.rsplit_once('-').ok_or_else(malformed)?;
        let bound = head
            .strip_prefix(SHARE_PREFIX)
            .and_then(|h| h.strip_prefix('-'))
            .and_then(|h| Bound::parse(h, '-'))
            .ok_or_else(malformed)?;
        if index.len() != 2 || !index.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed());
        }
        let index: u8 = index.parse().map_err(|_| malformed())?;
        if index == 0 || index > lmk::MAX_SHARES {
            return Err(malformed());
        }
        let value = crate::crypto::key::decode_secret_hex(value, "backup share")
            .map_err(|_| malformed())?;
        if value.len() != bound.spec.algorithm.key_len() {
            return Err(malformed());
        }
        let mut bytes = Zeroizing::new(Vec::with_capacity(1 + value.len()));
        bytes.push(index);
        bytes.extend_from_slice(&value);
        Ok(ParsedShare { bound, bytes })
    }
}

/// One share into `into` under `lmk` ([`hsm_api::Hsm::restore_share`]): the next partial
/// restore, or at the threshold the key, a token under `lmk`.
pub(crate) fn restore(lmk: &Lmk, into: Restoration, share: &LmkShare) -> Result<Restored> {
    let share = ParsedShare::parse(share.secret_text())?;
    let (bound, mut received) = match into {
        Restoration::Begin { spec, kcv, backup } => {
            let bound = Bound {
                backup: backup.to_ascii_uppercase(),
                spec,
                kcv,
                threshold: share.bound.threshold,
            };
            (bound, Zeroizing::new(Vec::new()))
        }
        Restoration::Continue(partial) => opened(lmk, &partial)?,
    };
    if share.bound != bound {
        return Err(Error::Share(
            "not a share of this backup (another backup, key or threshold)".into(),
        ));
    }
    let width = 1 + bound.spec.algorithm.key_len();
    if received
        .chunks(width)
        .any(|s| s.first() == Some(&share.index()))
    {
        return Err(Error::Share("this share was already submitted".into()));
    }
    received.extend_from_slice(&share.bytes);
    let count = u8::try_from(received.len() / width).unwrap_or(u8::MAX);
    if count < bound.threshold {
        let token = KeyToken::from_stored(lmk.wrap_data(&header_of(&bound)?, &received)?);
        return Ok(Restored::Partial(PartialRestore {
            token,
            received: count,
            threshold: bound.threshold,
        }));
    }
    let parts: Vec<&[u8]> = received.chunks(width).collect();
    let secret = lmk::recover_secret(bound.threshold, &parts)?;
    let key = SecretKey::new(bound.spec.algorithm, &secret)?;
    let kcv = kcv::compute_default(&key)?;
    if !bool::from(kcv.value().ct_eq(bound.kcv.value())) || kcv.method() != bound.kcv.method() {
        return Err(Error::Verification);
    }
    key.check_not_weak()?;
    Ok(Restored::Formed(WrappedKey {
        token: lmk.wrap(&key, bound.spec.usage, bound.spec.exportability)?,
        kcv,
    }))
}

/// The header of a partial restore of `bound`.
fn header_of(bound: &Bound) -> Result<KeyBlockHeader> {
    Ok(KeyBlockHeader::new(
        KeyBlockVersion::D,
        RESTORE_USAGE,
        KeyBlockAlgorithm::of(bound.spec.algorithm),
        ModeOfUse::NoRestriction,
        tr31::Exportability::NonExportable,
    )?
    .with_optional_block(OptionalBlock::new(RESTORE_BLOCK, &bound.text('.'))?))
}

/// What a partial restore binds and the shares it holds (its MAC verified); anything but a
/// block [`header_of`] heads is refused.
fn opened(lmk: &Lmk, partial: &KeyToken) -> Result<(Bound, Zeroizing<Vec<u8>>)> {
    let (header, data) = lmk.unwrap_data(partial.as_str())?;
    let not_partial = || Error::WrongUsage {
        usage: format!("TR-31 {}", header.key_usage).into(),
        operation: "take a backup share (only a partial restore does)".into(),
    };
    if header.key_usage != RESTORE_USAGE
        || header.version != KeyBlockVersion::D
        || header.mode_of_use != ModeOfUse::NoRestriction
        || header.exportability != tr31::Exportability::NonExportable
        || header.optional_blocks.len() != 1
    {
        return Err(not_partial());
    }
    let bound = header
        .optional_block(RESTORE_BLOCK)
        .and_then(|b| Bound::parse(&b.data, '.'))
        .filter(|b| KeyBlockAlgorithm::of(b.spec.algorithm) == header.algorithm)
        .ok_or_else(|| Error::KeyBlockOptionalBlock {
            id: RESTORE_BLOCK.to_owned(),
        })?;
    let width = 1 + bound.spec.algorithm.key_len();
    let count = data.len() / width;
    if data.is_empty() || !data.len().is_multiple_of(width) || count >= usize::from(bound.threshold)
    {
        return Err(Error::KeyBlockKeyLength);
    }
    Ok((bound, data))
}

#[cfg(test)]
mod tests;
