//! Profiles: data that decides bytes the card templates do not.
//!
//! - [`cos`]: card-OS profiles (`profiles/cos/*.toml`, DOMAIN.md §10) — the WRITE KEY APDU, the
//!   key header layout, the type byte of each key role, the master key's id/version/follow-up
//!   level, the follow-up level of the other keys, the header's algorithm bytes, and which ATR
//!   bytes form the card factor.
//! - [`psam`]: PSAM profiles (`profiles/psam/*.toml`, DOMAIN.md §11) — the card keys a kind of
//!   PSAM holds, each with its PSAM key id, usage byte (so its level) and PSAM key version; the
//!   usage types and levels the profile accepts; whether maintenance keys may go.
//!
//! Every profile value is [`Marked`]: `published` with the public source it was seen in, or
//! `inferred` with what it was chosen from. Profiles are read with the same machinery as the
//! templates: errors name the line and a typed [`TemplateFault`](crate::card::template::TemplateFault).
//!
//! ```
//! use sscard_kms::card::profile::CosProfile;
//!
//! let t514 = CosProfile::builtin("t514").expect("shipped")?;
//! assert_eq!(t514.master(), (0x00, 0x00, 0xFF));
//! assert!(t514.values().iter().all(|(_, _, p)| !p.source().is_empty()));
//! # Ok::<(), sscard_kms::Error>(())
//! ```

pub mod cos;
pub mod psam;
#[cfg(test)]
mod tests;

pub use crate::card::source::{DataFile, Marked, Provenance};
pub use cos::{
    AlgorithmRule, BUILTIN_COS, CardFactorRule, CosProfile, FollowUpRule, HeaderField, P2,
    WriteKeyParams,
};
pub use psam::{BUILTIN_PSAM, PsamKey, PsamProfile, PsamProfileKey, Serves};
