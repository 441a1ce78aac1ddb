//! What the store keeps, as serde records. No record holds a clear key: keys are LMK-wrapped
//! tokens (`hsm_api::KeyToken` text) with their KCVs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::card::template::KeyLevel as Level;

/// The region code that stands for "national" in key records.
pub const NATIONAL: &str = "000000";

/// A key of the hierarchy (national root, provincial or city key) of one template key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub template_id: String,
    pub key_name: String,
    pub level: Level,
    /// `000000` (national), the province code, or a city code.
    pub region: String,
    /// The root version this key descends from; a new root gives a new version of every level.
    pub version: u32,
    /// `hsm_api::Algorithm::name()`.
    pub algorithm: String,
    /// LMK-wrapped token.
    pub token: String,
    /// KCV method name and hex value.
    pub kcv_method: String,
    pub kcv: String,
    /// Whether new cards get this version.
    pub active: bool,
    pub created_ms: u64,
    /// A national root imported with the Ministry's permission for PSAM use (DOMAIN.md §11):
    /// only then does a PSAM get the national-level key. False for every other record.
    #[serde(default)]
    pub psam_permitted: bool,
}

impl KeyRecord {
    /// The record's key in the `keys` table; versions sort numerically.
    pub fn id(&self) -> String {
        key_id(
            &self.template_id,
            &self.key_name,
            self.level,
            &self.region,
            self.version,
        )
    }
}

/// `template/key/level/region/version` with the version zero-padded.
pub fn key_id(template: &str, key: &str, level: Level, region: &str, version: u32) -> String {
    format!("{}{version:08}", key_prefix(template, key, level, region))
}

/// The prefix of every version of one key.
pub fn key_prefix(template: &str, key: &str, level: Level, region: &str) -> String {
    format!("{template}/{key}/{level}/{region}/")
}

/// A blank-card vendor transport key of a template (table `keys`, id `template/#vendor-transport/...`).
pub const VENDOR_TRANSPORT: &str = "#vendor-transport";

/// Kinds of endpoints that receive keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointKind {
    Station,
    PsamLine,
}

impl EndpointKind {
    pub const fn name(self) -> &'static str {
        match self {
            EndpointKind::Station => "station",
            EndpointKind::PsamLine => "psam-line",
        }
    }
}

/// A personalisation station or PSAM production line, with its transport key (KBPK).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub kind: EndpointKind,
    pub name: String,
    pub region: String,
    /// LMK-wrapped KBPK token.
    pub transport_token: String,
    pub transport_algorithm: String,
    pub transport_kcv: String,
    pub transport_kcv_method: String,
    pub created_ms: u64,
}

/// The record key of an endpoint.
pub fn endpoint_id(kind: EndpointKind, name: &str) -> String {
    format!("{}/{name}", kind.name())
}

/// A registered PSAM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Psam {
    pub serial: String,
    /// The line that registered it (only that line gets its keys).
    pub line: String,
    pub region: String,
    pub template_id: String,
    /// Its PSAM profile (`profiles/psam/`); empty in records written before profiles, which
    /// take the default of their region.
    #[serde(default)]
    pub psam_profile: String,
    /// How many times its key set was released.
    pub releases: u32,
    pub created_ms: u64,
}

/// Where a card is in its life (`crate::registry::lifecycle` has the transitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CardStatus {
    /// Registered one by one, awaiting the province's review.
    Registered,
    /// The province accepted its data: keys may be released.
    Accepted,
    /// The province rejected its data (final).
    Rejected,
    /// The blank card's vendor transport key was replaced by its master key.
    Initialised,
    /// Its keys were released (a release retried for a failed personalisation stays here).
    Personalised,
    /// Issued to the holder and in service.
    Active,
    /// Out of service for a while (the holder or the city asked); may be resumed.
    Suspended,
    /// Reported lost; a replacement names it.
    Lost,
    /// Out of service for good.
    Cancelled,
    /// A replacement card took its place (final).
    Replaced,
    /// No key is ever released again; published to terminals (notice N5).
    Blacklisted,
}

impl CardStatus {
    /// The lower-case name, as stored and in audit records.
    pub const fn name(self) -> &'static str {
        match self {
            CardStatus::Registered => "registered",
            CardStatus::Accepted => "accepted",
            CardStatus::Rejected => "rejected",
            CardStatus::Initialised => "initialised",
            CardStatus::Personalised => "personalised",
            CardStatus::Active => "active",
            CardStatus::Suspended => "suspended",
            CardStatus::Lost => "lost",
            CardStatus::Cancelled => "cancelled",
            CardStatus::Replaced => "replaced",
            CardStatus::Blacklisted => "blacklisted",
        }
    }
}

/// A card holder's personal data as the store keeps it: never in clear (issue 9). Index hashes
/// for uniqueness and look-ups, masked forms for responses and logs, and the fields a city may
/// read back sealed by the HSM (`crate::registry::personal`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Personal {
    /// Upper-case hex HMAC-SHA256 of the SSN (index domain `ssn`): the `ssns` entries' key.
    pub ssn_index: String,
    /// Upper-case hex HMAC-SHA256 of the card number (domain `card-number`): the
    /// `card_numbers` entries' key.
    pub card_number_index: String,
    /// `440103********123X`.
    pub ssn_masked: String,
    /// `B*****774`.
    pub card_number_masked: String,
    /// The SSN sealed under the registry data key (hex `nonce ‖ ciphertext ‖ tag`), bound to
    /// this card (`crate::registry::personal::aad`).
    pub sealed_ssn: String,
    /// The card number, sealed likewise.
    pub sealed_card_number: String,
    /// The holder's name (UTF-8), sealed likewise; none for a card registered one by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_name: Option<String>,
}

/// A registered card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Card {
    pub card_identifier: String,
    /// The holder's SSN, card number and name: hashed, masked and sealed, never clear.
    pub personal: Personal,
    /// The issuing city (from the card identifier).
    pub region: String,
    pub template_id: String,
    pub status: CardStatus,
    pub blacklist_reason: Option<String>,
    /// The ATR the card's keys were first released for; later releases must use the same.
    pub atr: Option<String>,
    /// Root version per template key at first release (rotation never silently changes them).
    pub issued_root_versions: BTreeMap<String, u32>,
    pub created_ms: u64,
    /// How many times keys were released for it (initialisation and personalisation; more
    /// than one personalisation is a retry). Absent in stores of before the life cycle: 0.
    #[serde(default)]
    pub releases: u32,
    /// The card this one replaces (it left service when this one was registered).
    #[serde(default)]
    pub replaces: Option<String>,
}

/// A stored template: its TOML text (the data) and revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTemplate {
    pub id: String,
    pub version: u32,
    pub toml: String,
}

/// A security officer's or auditor's certificate in the officer registry (table `officers`,
/// keyed by its fingerprint). Only a registered, unrevoked certificate acts as its identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfficerRecord {
    /// The identity URI the certificate carries (`sscard://officer/…`, `sscard://auditor/…`).
    pub identity: String,
    /// SHA-256 of the certificate (DER), upper-case hex.
    pub fingerprint: String,
    pub registered_ms: u64,
    /// Who registered it (the requester and approver, or the bootstrap).
    pub registered_by: Vec<String>,
    /// Set once revoked: the certificate is refused from then on.
    pub revoked_ms: Option<u64>,
    pub revoked_by: Vec<String>,
}
