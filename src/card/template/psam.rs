//! PSAM usage: the usage byte of a key a PSAM holds, its level and type, and why a key is not
//! released to a PSAM.

use crate::error::Result;

use super::key::{KeyLevel, KeySpec};
use super::schema::TemplateFault;

/// Why a key may not go into a terminal PSAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum PsamRefusal {
    /// No `psam_usage` byte: the PSAM level is unknown.
    #[error("it has no psam_usage byte")]
    NoUsageByte,
    /// Usage type 0, a master key.
    #[error("its psam_usage type is 0 (master)")]
    MasterType,
    /// A key of role master or maintenance, or a provincial-root key (DOMAIN.md §4).
    #[error("it is an issuer-only key (a master or maintenance key, or a provincial root)")]
    IssuerOnly,
}

/// The key type of a PSAM usage byte (its low 5 bits; DOMAIN.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PsamKeyType {
    Master = 0,
    Maintenance = 1,
    Purchase = 2,
    PinUnblock = 3,
    PinReload = 4,
    UserCardMaintenance = 5,
    Mac = 6,
    Encryption = 7,
    MacEncryption = 8,
}

impl PsamKeyType {
    const ALL: [PsamKeyType; 9] = [
        PsamKeyType::Master,
        PsamKeyType::Maintenance,
        PsamKeyType::Purchase,
        PsamKeyType::PinUnblock,
        PsamKeyType::PinReload,
        PsamKeyType::UserCardMaintenance,
        PsamKeyType::Mac,
        PsamKeyType::Encryption,
        PsamKeyType::MacEncryption,
    ];

    /// The type of a code 0..=8.
    pub fn from_code(code: u8) -> Option<PsamKeyType> {
        PsamKeyType::ALL.into_iter().find(|t| t.code() == code)
    }

    /// The code.
    pub const fn code(self) -> u8 {
        self as u8
    }
}

/// A PSAM usage byte: `(levels << 5) | type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PsamUsage {
    levels: u8,
    kind: PsamKeyType,
}

impl PsamUsage {
    /// Decodes and checks a usage byte: levels 1..=3, type 0..=8.
    pub fn from_byte(byte: u8) -> Result<PsamUsage, TemplateFault> {
        let levels = byte >> 5;
        let code = byte & 0x1F;
        if !(1..=3).contains(&levels) {
            return Err(TemplateFault::PsamUsageLevels { byte, levels });
        }
        let kind = PsamKeyType::from_code(code)
            .ok_or(TemplateFault::PsamUsageType { byte, kind: code })?;
        Ok(PsamUsage { levels, kind })
    }

    /// The byte.
    pub const fn byte(self) -> u8 {
        (self.levels << 5) | self.kind.code()
    }

    /// Dispersion levels the PSAM performs itself (1..=3).
    pub const fn levels(self) -> u8 {
        self.levels
    }

    /// The key type.
    pub const fn kind(self) -> PsamKeyType {
        self.kind
    }

    /// The level of the key the PSAM holds: 1 → city key, 2 → provincial key, 3 → national key.
    pub const fn level(self) -> KeyLevel {
        match self.levels {
            1 => KeyLevel::City,
            2 => KeyLevel::Province,
            _ => KeyLevel::National,
        }
    }
}

/// A key that goes into PSAMs, with its usage byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PsamKey<'a> {
    /// The card key.
    pub key: &'a KeySpec,
    /// Its usage byte.
    pub usage: PsamUsage,
}

impl PsamKey<'_> {
    /// The level at which the key is released to a PSAM production line.
    pub fn level(&self) -> KeyLevel {
        self.usage.level()
    }
}
