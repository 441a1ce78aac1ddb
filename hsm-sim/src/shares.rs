//! Custodians' m-of-n shares of a 32-byte secret other than the simulator's LMK — the PKCS#11
//! backend's user PIN — in exactly the LMK shares' format, check values and rules
//! ([`crate::lmk`]: `lmk1-<index>-<64 hex digits>`, 2 ≤ m ≤ n ≤ 16, Shamir over GF(2⁸) with
//! `blahaj`). One implementation of the splitting for both backends.

use hsm_api::{Error, IssuedShare, Kcv, LmkShare, Result};
use zeroize::Zeroizing;

use crate::lmk::{self, Lmk, LmkRecord, ParsedShare};

/// A random 32-byte secret that custodians hold in shares.
pub struct SplitSecret {
    inner: Lmk,
}

impl core::fmt::Debug for SplitSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SplitSecret")
            .field("kcv", self.inner.kcv())
            .finish_non_exhaustive()
    }
}

impl SplitSecret {
    /// A fresh random secret.
    pub fn generate() -> Result<SplitSecret> {
        Ok(SplitSecret {
            inner: Lmk::generate()?,
        })
    }

    /// The secret as 64 upper-case hex digits (e.g. the PIN a token is set to).
    pub fn secret_hex(&self) -> Zeroizing<String> {
        crate::crypto::key::secret_hex(self.inner.key().secret_bytes())
    }

    /// Its check value (CMAC, 5 bytes): public.
    pub fn kcv(&self) -> &Kcv {
        self.inner.kcv()
    }

    /// `count` shares, any `threshold` of which rebuild the secret, and the public record that
    /// checks them.
    pub fn split(&self, threshold: u8, count: u8) -> Result<(Vec<IssuedShare>, ShareRecord)> {
        let (issued, record) = self.inner.split(threshold, count)?;
        Ok((
            issued,
            ShareRecord {
                kcv: record.kcv,
                threshold: record.threshold,
                check_values: record.check_values,
            },
        ))
    }
}

/// What is public about a split secret: its check value, the threshold, one check value per
/// share (index 1 first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareRecord {
    pub kcv: Kcv,
    pub threshold: u8,
    pub check_values: Vec<String>,
}

/// Shares submitted towards rebuilding a secret.
#[derive(Debug)]
pub struct ShareCollector {
    record: LmkRecord,
    submitted: Vec<ParsedShare>,
}

impl ShareCollector {
    /// A collector for the secret `record` describes.
    pub fn new(record: ShareRecord) -> Result<ShareCollector> {
        lmk::check_share_counts(
            record.threshold,
            u8::try_from(record.check_values.len()).unwrap_or(u8::MAX),
        )?;
        Ok(ShareCollector {
            record: LmkRecord {
                kcv: record.kcv,
                threshold: record.threshold,
                check_values: record.check_values,
            },
            submitted: Vec::new(),
        })
    }

    /// Shares accepted so far.
    pub fn submitted(&self) -> u8 {
        u8::try_from(self.submitted.len()).unwrap_or(u8::MAX)
    }

    /// Shares needed.
    pub fn threshold(&self) -> u8 {
        self.record.threshold
    }

    /// Forgets the shares submitted so far.
    pub fn reset(&mut self) {
        self.submitted.clear();
    }

    /// Accepts one share (format, check value, not repeated: else [`Error::Share`], not
    /// counted); at the threshold rebuilds the secret, checks its KCV and forgets the shares.
    pub fn accept(&mut self, share: &LmkShare) -> Result<Option<SplitSecret>> {
        let parsed = self.record.accept(share)?;
        if self.submitted.iter().any(|s| s.index == parsed.index) {
            return Err(Error::Share("this share was already submitted".into()));
        }
        self.submitted.push(parsed);
        if self.submitted.len() < usize::from(self.record.threshold) {
            return Ok(None);
        }
        let submitted = core::mem::take(&mut self.submitted);
        let inner = lmk::combine(self.record.threshold, &submitted)?;
        if !inner.has_kcv(&self.record.kcv) {
            return Err(Error::LmkKcvMismatch);
        }
        Ok(Some(SplitSecret { inner }))
    }
}
