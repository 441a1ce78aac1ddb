//! One key of a card: its role, algorithm, root, level, and the spec a template line gives it
//! (with the type byte and follow-up level its COS profile gives it).

use core::fmt;

use hsm_api::Algorithm;
use hsm_api::Dispersion;

use crate::card::region::Region;

use super::order::Protector;

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
    /// A city's own root for a key of its local extension (N9, DOMAIN.md §12): the city holds
    /// it in its own HSM, city → card. The province places the key but never holds it.
    City(&'static Region),
}

impl KeyRoot {
    /// The template name.
    pub const fn name(self) -> &'static str {
        match self {
            KeyRoot::National => "national",
            KeyRoot::Provincial => "provincial",
            KeyRoot::City(_) => "city",
        }
    }

    /// The level of the root key.
    pub const fn top_level(self) -> KeyLevel {
        match self {
            KeyRoot::National => KeyLevel::National,
            KeyRoot::Provincial => KeyLevel::Province,
            KeyRoot::City(_) => KeyLevel::City,
        }
    }

    /// Who holds the root: the province (national and provincial roots) or a city.
    pub const fn owner(self) -> KeyOwner {
        match self {
            KeyRoot::National | KeyRoot::Provincial => KeyOwner::Province,
            KeyRoot::City(city) => KeyOwner::City(city),
        }
    }
}

/// Who holds a key's root, and so who derives and releases the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyOwner {
    /// The province's key centre.
    Province,
    /// A city, for the keys of its local extension.
    City(&'static Region),
}

impl fmt::Display for KeyOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyOwner::Province => f.write_str("the province"),
            KeyOwner::City(city) => write!(f, "city {}", city.code),
        }
    }
}

/// What a key is for on the card. Behaviour follows the role, never the key's name: the COS
/// profile gives each role its type byte, master keys never go into a PSAM, and a PSAM profile
/// decides whether maintenance keys may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyRole {
    /// A directory's master (control) key, `MK*`.
    Master,
    /// A maintenance/transport key, `STK*`: the MACs of application updates.
    Maintenance,
    /// Internal authentication, `IRK`: the card proves itself.
    InternalAuth,
    /// External authentication (and read keys such as `RKSSSE`): the terminal proves itself.
    ExternalAuth,
    /// A key guarding record updates at terminals (`UK*`).
    Update,
    /// The PIN, written as a key.
    Pin,
    /// PIN unblock, `PUK`.
    PinUnblock,
    /// PIN reload, `RPK`.
    PinReload,
    /// E-purse load, `DLK`.
    Load,
    /// E-purse purchase, `DPK`.
    Purchase,
    /// E-purse transaction authentication code, `DTK`.
    Tac,
    /// Card block, `BK`.
    Block,
    /// Application lock, `LK`.
    Lock,
}

impl KeyRole {
    /// Every role.
    pub const ALL: [KeyRole; 13] = [
        KeyRole::Master,
        KeyRole::Maintenance,
        KeyRole::InternalAuth,
        KeyRole::ExternalAuth,
        KeyRole::Update,
        KeyRole::Pin,
        KeyRole::PinUnblock,
        KeyRole::PinReload,
        KeyRole::Load,
        KeyRole::Purchase,
        KeyRole::Tac,
        KeyRole::Block,
        KeyRole::Lock,
    ];

    /// The name in templates and profiles.
    pub const fn name(self) -> &'static str {
        match self {
            KeyRole::Master => "master",
            KeyRole::Maintenance => "maintenance",
            KeyRole::InternalAuth => "internal-auth",
            KeyRole::ExternalAuth => "external-auth",
            KeyRole::Update => "update",
            KeyRole::Pin => "pin",
            KeyRole::PinUnblock => "pin-unblock",
            KeyRole::PinReload => "pin-reload",
            KeyRole::Load => "load",
            KeyRole::Purchase => "purchase",
            KeyRole::Tac => "tac",
            KeyRole::Block => "block",
            KeyRole::Lock => "lock",
        }
    }

    /// Parses [`KeyRole::name`].
    pub fn from_name(name: &str) -> Option<KeyRole> {
        KeyRole::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl fmt::Display for KeyRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
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

/// One key of a card template.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeySpec {
    /// Unique name in the template.
    pub name: String,
    /// The directory holding the key (`MF`, `SSSE`, `DF01`, …).
    pub directory: String,
    /// What the key is for.
    pub role: KeyRole,
    /// Card key id (a master key's comes from the COS profile).
    pub key_id: u8,
    /// Card key version (a master key's comes from the COS profile).
    pub key_version: u8,
    /// For a later version of a multi-version key (DLK/DPK groups, DOMAIN.md §10): the name of
    /// its first version, with which it shares directory, role, algorithm and root; each version
    /// has its own key id.
    pub version_of: Option<String>,
    /// Key type byte: the COS profile's byte for the key's role.
    pub key_type: u8,
    /// Algorithm.
    pub algorithm: CardAlgorithm,
    /// Length in bytes (matches the algorithm).
    pub length: u8,
    /// Error counter byte.
    pub error_counter: u8,
    /// The key whose protection is used to write this one.
    pub protected_by: Protector,
    /// Where the key's derivation chain starts.
    pub root: KeyRoot,
    /// Follow-up security level: the COS profile's, from the key's place in its directory.
    pub follow_up: u8,
    /// The dispersion method deriving this key (the template's unless the key names its own).
    pub dispersion: Dispersion,
    /// Free text.
    pub description: Option<String>,
    pub(super) line: usize,
    /// The line of `key_id` (of the name, for a master key, which has none).
    pub(super) key_id_line: usize,
    pub(super) algorithm_line: usize,
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

    /// True for keys that never leave the issuer (DOMAIN.md §4, §11), by role and root: card
    /// master keys, maintenance keys, and any key whose root is provincial.
    pub fn is_issuer_only(&self) -> bool {
        is_issuer_only(self.role, self.root)
    }

    /// The key's version group: the name of its first version (its own name for a key of one
    /// version, or the first of several).
    pub fn group(&self) -> &str {
        self.version_of.as_deref().unwrap_or(&self.name)
    }

    /// Who holds the key's root.
    pub fn owner(&self) -> KeyOwner {
        self.root.owner()
    }
}

pub(super) fn is_issuer_only(role: KeyRole, root: KeyRoot) -> bool {
    root == KeyRoot::Provincial || matches!(role, KeyRole::Master | KeyRole::Maintenance)
}
