//! The named methods a caller picks per request: how a child key is dispersed, how an SM4 card
//! MAC is folded, which TR-31 key-block version carries an exported key.

use crate::algorithm::Algorithm;
use crate::error::{Error, Result};

/// A dispersion method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dispersion {
    /// PBOC / SSC 3DES dispersion, double-length child without parity adjustment.
    PbocTdes,
    /// Single-length dispersion: the child is one encryption of the factor.
    PbocDes,
    /// SSC 3.0 SM4 dispersion: one SM4 encryption of `F ‖ ~F` (version 1 of this expansion).
    Sm4Complement,
    /// EMV "Option A" (EMV Book 2 A1.4.1): as `PbocTdes` with odd parity forced.
    EmvOptionA,
}

impl Dispersion {
    /// All methods.
    pub const ALL: [Dispersion; 4] = [
        Dispersion::PbocTdes,
        Dispersion::PbocDes,
        Dispersion::Sm4Complement,
        Dispersion::EmvOptionA,
    ];

    /// The stable name used in card templates and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Dispersion::PbocTdes => "pboc-tdes",
            Dispersion::PbocDes => "pboc-des",
            Dispersion::Sm4Complement => "sm4-f-notf-v1",
            Dispersion::EmvOptionA => "emv-option-a",
        }
    }

    /// Parses a name given by [`Dispersion::name`].
    pub fn from_name(name: &str) -> Option<Dispersion> {
        Dispersion::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The usual method for keys of `alg`, if there is one.
    pub const fn default_for(alg: Algorithm) -> Option<Dispersion> {
        match alg {
            Algorithm::Tdes2 | Algorithm::Tdes3 => Some(Dispersion::PbocTdes),
            Algorithm::Des => Some(Dispersion::PbocDes),
            Algorithm::Sm4 => Some(Dispersion::Sm4Complement),
            _ => None,
        }
    }

    /// The algorithm of a child of a parent of `parent`, or an error if the method does not
    /// apply to that parent.
    pub fn child_algorithm(self, parent: Algorithm) -> Result<Algorithm> {
        match (self, parent) {
            (
                Dispersion::PbocTdes | Dispersion::EmvOptionA,
                Algorithm::Tdes2 | Algorithm::Tdes3,
            ) => Ok(Algorithm::Tdes2),
            (Dispersion::PbocDes, Algorithm::Des | Algorithm::Tdes2 | Algorithm::Tdes3) => {
                Ok(Algorithm::Des)
            }
            (Dispersion::Sm4Complement, Algorithm::Sm4) => Ok(Algorithm::Sm4),
            (method, alg) => Err(Error::Unsupported {
                op: method.name().into(),
                alg,
            }),
        }
    }
}

/// How an SM4 MAC's last block is reduced to 4 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MacFold {
    /// XOR of the four 4-byte words of the last block.
    #[default]
    Xor4,
    /// The first 4 bytes of the last block.
    First4,
}

impl MacFold {
    /// `xor4` or `first4`.
    pub const fn name(self) -> &'static str {
        match self {
            MacFold::Xor4 => "xor4",
            MacFold::First4 => "first4",
        }
    }

    /// Parses [`MacFold::name`].
    pub fn from_name(name: &str) -> Option<MacFold> {
        match name {
            "xor4" => Some(MacFold::Xor4),
            "first4" => Some(MacFold::First4),
            _ => None,
        }
    }
}

/// The key block version: which key protects the block and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyBlockVersion {
    /// `B`: TDES key derivation binding method; the KBPK is a 2- or 3-key TDES key.
    B,
    /// `D`: AES key derivation binding method; the KBPK is an AES key.
    D,
}

impl KeyBlockVersion {
    /// The version character.
    pub const fn as_char(self) -> char {
        match self {
            KeyBlockVersion::B => 'B',
            KeyBlockVersion::D => 'D',
        }
    }

    /// Parses the version character; anything but `B` or `D` is [`Error::KeyBlockVersion`].
    pub fn from_char(c: char) -> Result<KeyBlockVersion> {
        match c {
            'B' => Ok(KeyBlockVersion::B),
            'D' => Ok(KeyBlockVersion::D),
            other => Err(Error::KeyBlockVersion(other)),
        }
    }

    /// Cipher block length of the version's KBPK algorithm, in bytes.
    pub const fn block_len(self) -> usize {
        match self {
            KeyBlockVersion::B => 8,
            KeyBlockVersion::D => 16,
        }
    }

    /// Length of the block's MAC, in bytes.
    pub const fn mac_len(self) -> usize {
        match self {
            KeyBlockVersion::B => 8,
            KeyBlockVersion::D => 16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in Dispersion::ALL {
            assert_eq!(Dispersion::from_name(d.name()), Some(d));
        }
    }
}
