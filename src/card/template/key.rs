//! One key of a card: its algorithm, root, level, and the spec a template line gives it (with
//! the card key header it is written with).

use core::fmt;

use hsm_api::Algorithm;
use hsm_api::Dispersion;

use super::HEADER_MARKER;
use super::order::Protector;
use super::psam::PsamUsage;

// ---------------------------------------------------------------------------------------------
// Value types
// ---------------------------------------------------------------------------------------------

/// Algorithm of a card key: the three a social security card uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CardAlgorithm {
    /// Double-length 3DES, 16 bytes.
    Tdes,
    /// Single DES, 8 bytes.
    Des,
    /// SM4, 16 bytes.
    Sm4,
}

impl CardAlgorithm {
    /// All three.
    pub const ALL: [CardAlgorithm; 3] =
        [CardAlgorithm::Tdes, CardAlgorithm::Des, CardAlgorithm::Sm4];

    /// The template name: `tdes`, `des`, `sm4`.
    pub const fn name(self) -> &'static str {
        match self {
            CardAlgorithm::Tdes => "tdes",
            CardAlgorithm::Des => "des",
            CardAlgorithm::Sm4 => "sm4",
        }
    }

    /// Parses a template name (exactly as [`CardAlgorithm::name`] gives it).
    pub fn from_name(name: &str) -> Option<CardAlgorithm> {
        CardAlgorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The HSM algorithm of the key.
    pub const fn algorithm(self) -> Algorithm {
        match self {
            CardAlgorithm::Tdes => Algorithm::Tdes2,
            CardAlgorithm::Des => Algorithm::Des,
            CardAlgorithm::Sm4 => Algorithm::Sm4,
        }
    }

    /// Key length in bytes.
    pub const fn key_len(self) -> usize {
        self.algorithm().key_len()
    }

    /// The algorithm byte of the card key header: `00` 3DES, `01` DES \[spec], `02` SM4 \[choice].
    pub const fn header_byte(self) -> u8 {
        match self {
            CardAlgorithm::Tdes => 0x00,
            CardAlgorithm::Des => 0x01,
            CardAlgorithm::Sm4 => 0x02,
        }
    }

    /// True if `method` derives keys of this algorithm from a parent of this algorithm.
    pub fn derivable_by(self, method: Dispersion) -> bool {
        let alg = self.algorithm();
        matches!(method.child_algorithm(alg), Ok(child) if child == alg)
    }
}

impl fmt::Display for CardAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a key's derivation chain starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyRoot {
    /// The Ministry's root of the key type: national → province → city → card (N2).
    National,
    /// The province's own root, e.g. the card master key: province → city → card (N1).
    Provincial,
}

impl KeyRoot {
    /// The template name.
    pub const fn name(self) -> &'static str {
        match self {
            KeyRoot::National => "national",
            KeyRoot::Provincial => "provincial",
        }
    }

    /// The level of the root key.
    pub const fn top_level(self) -> KeyLevel {
        match self {
            KeyRoot::National => KeyLevel::National,
            KeyRoot::Provincial => KeyLevel::Province,
        }
    }
}

/// A level of the key hierarchy (DOMAIN.md §2).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum KeyLevel {
    /// The Ministry's root.
    National,
    /// `D(K_national, F1)`, or the province's own root.
    Province,
    /// `D(K_province, F2)`.
    City,
    /// `D(K_city, F3)`: the key on the card.
    Card,
}

impl KeyLevel {
    /// How many dispersions separate this level from the card key.
    pub const fn levels_above_card(self) -> u8 {
        match self {
            KeyLevel::National => 3,
            KeyLevel::Province => 2,
            KeyLevel::City => 1,
            KeyLevel::Card => 0,
        }
    }
}

impl fmt::Display for KeyLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyLevel::National => "national",
            KeyLevel::Province => "province",
            KeyLevel::City => "city",
            KeyLevel::Card => "card",
        })
    }
}

/// The key type of a PSAM usage byte (its low 5 bits; DOMAIN.md §4).
/// One key of a card template.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeySpec {
    /// Unique name in the template.
    pub name: String,
    /// The directory holding the key (`MF`, `SSSE`, `DF01`, …).
    pub directory: String,
    /// Card key id.
    pub key_id: u8,
    /// Card key version.
    pub key_version: u8,
    /// Key type byte of the card OS.
    pub key_type: u8,
    /// Algorithm.
    pub algorithm: CardAlgorithm,
    /// Length in bytes (matches the algorithm).
    pub length: u8,
    /// Error counter byte.
    pub error_counter: u8,
    /// The PSAM usage byte, if the template gives one.
    pub psam_usage: Option<PsamUsage>,
    /// May the key go into terminal PSAMs (then `psam_usage` is present).
    pub psam_allowed: bool,
    /// The key whose protection is used to write this one.
    pub protected_by: Protector,
    /// Where the key's derivation chain starts.
    pub root: KeyRoot,
    /// Follow-up security level byte of the header.
    pub follow_up: u8,
    /// The dispersion method deriving this key (the template's unless the key names its own).
    pub dispersion: Dispersion,
    /// Free text.
    pub description: Option<String>,
    pub(super) line: usize,
    pub(super) protected_by_line: usize,
}

impl KeySpec {
    /// The line of the key's `name` in its template file.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The HSM algorithm.
    pub fn hsm_algorithm(&self) -> Algorithm {
        self.algorithm.algorithm()
    }

    /// True for keys that never leave the issuer (DOMAIN.md §4): card master keys and
    /// maintenance/transport keys (names beginning `MK` or `STK`), and any key whose root is
    /// provincial.
    pub fn is_issuer_only(&self) -> bool {
        is_issuer_only(&self.name, self.root)
    }

    /// The 8-byte card key header (see the module documentation for the layout).
    pub fn card_key_header(&self) -> Vec<u8> {
        vec![
            self.key_type,
            self.key_id,
            self.key_version,
            HEADER_MARKER,
            self.error_counter,
            self.algorithm.header_byte(),
            self.follow_up,
            self.length,
        ]
    }
}

pub(super) fn is_issuer_only(name: &str, root: KeyRoot) -> bool {
    root == KeyRoot::Provincial || name.starts_with("MK") || name.starts_with("STK")
}
