//! Personal data at rest (issue 9): the store keeps no SSN, name or card number in clear.
//!
//! - **Look-ups and uniqueness** go through index hashes: `HMAC-SHA256` under the HSM's
//!   registry index key ([`hsm_api::Hsm::index_hashes`]), one domain per field ([`SSN`],
//!   [`CARD_NUMBER`]), upper-case hex. The `card_numbers` table is keyed by the card number's
//!   hash, `ssns` by `<SSN hash>/<generation>`.
//! - **The fields a city may read back** (SSN, card number, name) are sealed with AES-256-GCM
//!   under the HSM's registry data key ([`hsm_api::Hsm::seal_fields`]), each bound by its
//!   associated data ([`aad`]) to the card it belongs to: a sealed field copied into another
//!   record does not open. A pending row of a batch is bound to the card it would become, so
//!   that a reviewer's acceptance moves it unchanged.
//! - **Responses and logs** show the masked forms only (`440103********123X`, `B*****774`).
//!
//! Both keys are made in the HSM when the registry first needs them (or at the store's first
//! open with an operational HSM), never leave it, and are kept as LMK-wrapped tokens in `meta`
//! ([`key_tokens`] lists them, e.g. for an LMK rotation). A store written before this layout is
//! migrated ([`LAYOUT`]; `crate::service`'s `migrate_registry`).

use std::fmt;

use hsm_api::SealedField;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::state::records::Personal;
use crate::state::store::{Snapshot, Table, Tx};

/// The `meta` key of the registry index key's token.
pub const INDEX_KEY: &str = "registry_index_key_token";
/// The `meta` key of the registry data key's token.
pub const DATA_KEY: &str = "registry_data_key_token";
/// The `meta` key of the registry's layout version: [`LAYOUT_VERSION`] once no personal data
/// is in clear; absent in a store written before.
pub const LAYOUT: &str = "registry_layout";
/// The layout this binary writes.
pub const LAYOUT_VERSION: u32 = 2;

/// The index domain of SSNs.
pub const SSN: &str = "ssn";
/// The index domain of card numbers.
pub const CARD_NUMBER: &str = "card-number";

/// The field names in the binding.
pub const FIELD_SSN: &str = "ssn";
/// See [`FIELD_SSN`].
pub const FIELD_CARD_NUMBER: &str = "card-number";
/// See [`FIELD_SSN`].
pub const FIELD_NAME: &str = "name";

/// The associated data that binds a sealed field to its record: kind (`card`), key (the card
/// identifier) and field.
pub fn aad(card_identifier: &str, field: &str) -> Vec<u8> {
    format!("sscard-kms/registry/v1/card/{card_identifier}/{field}").into_bytes()
}

/// An index hash as the store keeps it.
pub fn index_hex(hash: &[u8]) -> String {
    hex::encode_upper(hash)
}

/// The registry's key tokens in the store (index, data), for an LMK rotation: every token of
/// the registry that must be re-wrapped, with its `meta` key.
pub fn key_tokens(snap: &Snapshot) -> Result<Vec<(&'static str, String)>> {
    let mut tokens = Vec::new();
    for name in [INDEX_KEY, DATA_KEY] {
        if let Some(token) = snap.get::<String>(Table::Meta, name)? {
            tokens.push((name, token));
        }
    }
    Ok(tokens)
}

/// Inside a write: stores the two tokens unless keys are there already; answers the pair kept
/// and whether it is the one given (new).
pub fn keep_keys(tx: &mut Tx<'_>, index: String, data: String) -> Result<((String, String), bool)> {
    let stored = (
        tx.get::<String>(Table::Meta, INDEX_KEY)?,
        tx.get::<String>(Table::Meta, DATA_KEY)?,
    );
    match stored {
        (Some(i), Some(d)) => Ok(((i, d), false)),
        (None, None) => {
            tx.put(Table::Meta, INDEX_KEY, &index)?;
            tx.put(Table::Meta, DATA_KEY, &data)?;
            Ok(((index, data), true))
        }
        _ => Err(Error::StoreCorrupt("one registry key without the other")),
    }
}

/// What is protected of one card: the clear values, on their way to the HSM. `Debug` shows the
/// card identifier only.
#[derive(Clone, Default)]
pub struct ClearPersonal {
    pub card_identifier: String,
    pub ssn: String,
    pub card_number: String,
    /// The holder's name, when known (batch rows).
    pub name: Option<String>,
}

impl fmt::Debug for ClearPersonal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClearPersonal")
            .field(
                "card_identifier",
                &crate::service::mask_card_identifier(&self.card_identifier),
            )
            .finish_non_exhaustive()
    }
}

impl ClearPersonal {
    /// The fields to seal, in the order [`personal`] reads them: SSN, card number, name.
    pub fn fields(&self) -> Vec<hsm_api::ClearField> {
        let mut fields = vec![
            hsm_api::ClearField {
                aad: aad(&self.card_identifier, FIELD_SSN),
                value: self.ssn.as_bytes().to_vec(),
            },
            hsm_api::ClearField {
                aad: aad(&self.card_identifier, FIELD_CARD_NUMBER),
                value: self.card_number.as_bytes().to_vec(),
            },
        ];
        if let Some(name) = &self.name {
            fields.push(hsm_api::ClearField {
                aad: aad(&self.card_identifier, FIELD_NAME),
                value: name.as_bytes().to_vec(),
            });
        }
        fields
    }
}

/// The stored form of `clear`, from its index hashes and its sealed [`ClearPersonal::fields`].
pub fn personal(
    clear: &ClearPersonal,
    ssn_index: String,
    card_number_index: String,
    sealed: &[SealedField],
) -> Result<Personal> {
    let hex_of = |i: usize| {
        sealed
            .get(i)
            .map(|f| hex::encode_upper(&f.sealed))
            .ok_or(Error::StoreCorrupt("sealed personal fields"))
    };
    Ok(Personal {
        ssn_index,
        card_number_index,
        ssn_masked: mask_ssn(&clear.ssn),
        card_number_masked: mask_card_number(&clear.card_number),
        sealed_ssn: hex_of(0)?,
        sealed_card_number: hex_of(1)?,
        sealed_name: if clear.name.is_some() {
            Some(hex_of(2)?)
        } else {
            None
        },
    })
}

/// The sealed fields of `personal` for `card_identifier`, in the order of
/// [`ClearPersonal::fields`].
pub fn sealed_fields(card_identifier: &str, personal: &Personal) -> Result<Vec<SealedField>> {
    let field = |name: &str, text: &str| -> Result<SealedField> {
        Ok(SealedField {
            aad: aad(card_identifier, name),
            sealed: hex::decode(text).map_err(|_| Error::StoreCorrupt("sealed personal field"))?,
        })
    };
    let mut fields = vec![
        field(FIELD_SSN, &personal.sealed_ssn)?,
        field(FIELD_CARD_NUMBER, &personal.sealed_card_number)?,
    ];
    if let Some(name) = &personal.sealed_name {
        fields.push(field(FIELD_NAME, name)?);
    }
    Ok(fields)
}

/// An SSN for responses and logs: region and last 4 characters (`440103********123X`); an SSN
/// of another length is all stars.
pub fn mask_ssn(ssn: &str) -> String {
    match crate::card::identifiers::SocialSecurityNumber::parse_field("ssn", ssn) {
        Ok(s) => s.masked(),
        Err(_) => "*".repeat(ssn.chars().count()),
    }
}

/// A card number for responses and logs: first and last three characters (`B*****774`).
pub fn mask_card_number(number: &str) -> String {
    match crate::card::identifiers::CardNumber::parse_field("card_number", number) {
        Ok(n) => n.masked(),
        Err(_) => "*".repeat(number.chars().count()),
    }
}

/// A card as stores before [`LAYOUT_VERSION`] wrote it: the personal fields in clear (read
/// only by the migration). Its `Debug` shows the masked forms only.
#[derive(Clone, Serialize, Deserialize)]
pub struct LegacyCard {
    pub card_identifier: String,
    pub card_number: String,
    pub social_security_number: String,
    /// Every other field, unchanged by the migration.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

impl core::fmt::Debug for LegacyCard {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LegacyCard")
            .field("card_identifier", &self.card_identifier)
            .field("card_number", &mask_card_number(&self.card_number))
            .field(
                "social_security_number",
                &mask_ssn(&self.social_security_number),
            )
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_bindings() {
        assert_eq!(mask_ssn("440103199001011236"), "440103********1236");
        assert_eq!(mask_ssn("123"), "***");
        assert_eq!(mask_card_number("GZ0000012"), "G*****012");
        assert_ne!(aad("A", FIELD_SSN), aad("B", FIELD_SSN));
        assert_ne!(aad("A", FIELD_SSN), aad("A", FIELD_NAME));
        let legacy = LegacyCard {
            card_identifier: "440100D1560000050050640776EF3192".into(),
            card_number: "GZ0000012".into(),
            social_security_number: "440103199001011236".into(),
            rest: serde_json::Map::new(),
        };
        let shown = format!("{legacy:?}");
        assert!(
            !shown.contains("GZ0000012") && !shown.contains("199001011236"),
            "{shown}"
        );
        assert!(shown.contains("440103********1236"), "{shown}");
        let clear = ClearPersonal {
            card_identifier: "440100D1560000050050640776EF3192".into(),
            ssn: "440103199001011236".into(),
            card_number: "GZ0000012".into(),
            name: Some("张三".into()),
        };
        assert!(!format!("{clear:?}").contains("440103199001011236"));
        assert_eq!(clear.fields().len(), 3);
    }
}
