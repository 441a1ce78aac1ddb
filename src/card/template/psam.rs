//! PSAM usage: the usage byte of a key a PSAM holds, its level and type. Which bytes are
//! allowed is a PSAM profile's decision ([`crate::card::profile::PsamProfile`]).

use super::key::KeyLevel;

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

/// A PSAM usage byte: `(levels << 5) | type`. Any byte decodes; a PSAM profile decides which
/// levels and types it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PsamUsage(u8);

impl PsamUsage {
    /// The usage byte as it is.
    pub const fn from_byte(byte: u8) -> PsamUsage {
        PsamUsage(byte)
    }

    /// The byte.
    pub const fn byte(self) -> u8 {
        self.0
    }

    /// Dispersion levels the PSAM performs itself (the high 3 bits).
    pub const fn levels(self) -> u8 {
        self.0 >> 5
    }

    /// The type code (the low 5 bits).
    pub const fn code(self) -> u8 {
        self.0 & 0x1F
    }

    /// The key type, if the code is one DOMAIN.md §4 names.
    pub fn kind(self) -> Option<PsamKeyType> {
        PsamKeyType::from_code(self.code())
    }

    /// The level of the key the PSAM holds: 0 → the card key, 1 → the city key, 2 → the
    /// provincial key, 3 or more → the national key (a profile accepts levels 0 to 3 only).
    pub const fn level(self) -> KeyLevel {
        match self.levels() {
            0 => KeyLevel::Card,
            1 => KeyLevel::City,
            2 => KeyLevel::Province,
            _ => KeyLevel::National,
        }
    }
}
