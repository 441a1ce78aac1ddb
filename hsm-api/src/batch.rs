//! A batch: every key of one card set (or one PSAM set) in one call of [`Hsm::batch`].
//!
//! A request lists one [`BatchItem`] per key delivered: where the key comes from
//! ([`KeySource`]: a token, or a derivation from a parent token with dispersion factors) and how
//! it leaves ([`BatchDelivery`]: a TR-31 block under a recipient's key-block protection key, or
//! a secure-messaging WRITE KEY command whose protecting key is another item's key, a token, or
//! a derivation of its own). The answer has one result per item, in the same order: the block or
//! the APDU with the key's KCV, or the error that item met.
//!
//! Each item goes through exactly the checks of the single operations it stands for
//! ([`Hsm::derive_key`], then [`Hsm::export_key`] or [`Hsm::write_key_command`]): usage of every
//! token, exportability, factor counts, weak keys, challenge lengths. A derived key that is only
//! exported or written is never wrapped under the LMK: it exists in the HSM for the duration of
//! the call.
//!
//! [`Hsm::batch`]: crate::Hsm::batch
//! [`Hsm::derive_key`]: crate::Hsm::derive_key
//! [`Hsm::export_key`]: crate::Hsm::export_key
//! [`Hsm::write_key_command`]: crate::Hsm::write_key_command

use core::ops::RangeInclusive;

use crate::Hsm;
use crate::error::{Error, Result};
use crate::factor::Factor;
use crate::methods::{Dispersion, KeyBlockVersion, MacFold};
use crate::types::{ExportedKey, KeyToken, KeyUsage, WriteKeyCommand, WriteKeyRequest};

/// How many items one batch may hold. A 24-key card set with its protectors is far below it.
pub const BATCH_ITEMS: RangeInclusive<usize> = 1..=256;

/// A child key by dispersion, as [`Hsm::derive_key`](crate::Hsm::derive_key) takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derivation {
    /// The parent's token ([`KeyUsage::CardDerivation`] or [`KeyUsage::MasterKeyDerivation`]).
    pub parent: KeyToken,
    pub method: Dispersion,
    /// Factors applied in order (top level first), 1 to 8.
    pub factors: Vec<Factor>,
    /// Usage of the child, as [`Hsm::derive_key`](crate::Hsm::derive_key) allows it below the
    /// parent's level. Its exportability is the HSM's decision, as for a single derivation.
    pub child_usage: KeyUsage,
}

/// Where an item's key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A key the service holds as a token (a PSAM's hierarchy key, a vendor transport key).
    Token(KeyToken),
    /// A key derived in the HSM for this call (a card key).
    Derived(Derivation),
}

/// The key that protects a card slot for a WRITE KEY command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protector {
    /// The key of another item of the same batch, by its index (its own delivery does not
    /// matter: the key is computed once and used for both).
    Item(usize),
    /// A key of its own: a token (a blank card's vendor transport key), or a derivation for a
    /// protector that the batch does not deliver.
    Key(KeySource),
}

/// A WRITE KEY command to build, as [`WriteKeyRequest`](crate::WriteKeyRequest) without the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteKeyDelivery {
    /// A [`KeyUsage::CardMasterKey`], or a [`KeyUsage::VendorTransport`] key when the key
    /// written is a master key.
    pub protect: Protector,
    pub cla: u8,
    pub ins: u8,
    pub p1: u8,
    pub p2: u8,
    /// The card key header that precedes the key in the encrypted field.
    pub key_header: Vec<u8>,
    /// The card's challenge: 8 bytes for DES-family protection keys, 16 for SM4.
    pub challenge: Vec<u8>,
    pub fold: MacFold,
}

/// How an item's key leaves the HSM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchDelivery {
    /// A TR-31 block of `version` under the recipient's key-block protection key, as
    /// [`Hsm::export_key`](crate::Hsm::export_key).
    Export {
        kbpk: KeyToken,
        version: KeyBlockVersion,
    },
    /// A secure-messaging command, as [`Hsm::write_key_command`](crate::Hsm::write_key_command).
    WriteKey(WriteKeyDelivery),
}

/// One key of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchItem {
    pub key: KeySource,
    pub delivery: BatchDelivery,
}

/// What one item gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutput {
    Exported(ExportedKey),
    WriteKey(WriteKeyCommand),
}

// ------------------------------------------------------------------ the default implementation

/// The token of `source`: itself, or the derived child's (for [`Hsm::batch`]'s default).
///
/// [`Hsm::batch`]: crate::Hsm::batch
pub(crate) async fn token_of<H: Hsm + ?Sized>(hsm: &H, source: &KeySource) -> Result<KeyToken> {
    match source {
        KeySource::Token(token) => Ok(token.clone()),
        KeySource::Derived(d) => Ok(hsm
            .derive_key(&d.parent, d.method, &d.factors, d.child_usage)
            .await?
            .token),
    }
}

/// The error of a protector reference that does not name another item of the batch.
pub fn protector_item_error() -> Error {
    Error::Count {
        field: "a protector item".into(),
        expected: "the index of another item of the batch".into(),
    }
}

/// Item `index` of a batch delivered by the single operations, its key and the other items'
/// already in `keys` (for [`Hsm::batch`]'s default).
///
/// [`Hsm::batch`]: crate::Hsm::batch
pub(crate) async fn deliver<H: Hsm + ?Sized>(
    hsm: &H,
    keys: &[Result<KeyToken>],
    index: usize,
    item: BatchItem,
) -> Result<BatchOutput> {
    let key = keys.get(index).ok_or_else(protector_item_error)?.clone()?;
    match item.delivery {
        BatchDelivery::Export { kbpk, version } => Ok(BatchOutput::Exported(
            hsm.export_key(&kbpk, &key, version).await?,
        )),
        BatchDelivery::WriteKey(w) => {
            let protect = match &w.protect {
                Protector::Item(j) if *j != index => {
                    keys.get(*j).ok_or_else(protector_item_error)?.clone()?
                }
                Protector::Item(_) => return Err(protector_item_error()),
                Protector::Key(source) => token_of(hsm, source).await?,
            };
            let command = hsm
                .write_key_command(WriteKeyRequest {
                    key,
                    protect,
                    cla: w.cla,
                    ins: w.ins,
                    p1: w.p1,
                    p2: w.p2,
                    key_header: w.key_header,
                    challenge: w.challenge,
                    fold: w.fold,
                })
                .await?;
            Ok(BatchOutput::WriteKey(command))
        }
    }
}
