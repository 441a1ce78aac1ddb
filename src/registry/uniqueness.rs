//! Uniqueness against the store: one live card per person per card generation; card numbers
//! and card identifiers unique province-wide. The one implementation, used by the batch review
//! and by the one-by-one `RegisterCard`.
//!
//! Indexes (all in the same redb transaction as the card): `cards` by card identifier,
//! `card_numbers` (card number's index hash → card identifier) and `ssns` (`<SSN's index
//! hash>/<generation>` → card identifier, the generation being the template's `generation`,
//! e.g. `2.0`). No key holds a clear SSN or card number: the hashes are the HSM's
//! ([`crate::registry::personal`]). Entries keyed by the bare SSN hash (stores written before
//! the per-generation key, and un-blacklisting) are read too.
//! A card is live unless rejected, cancelled, replaced or blacklisted ([`crate::registry::lifecycle::live`]).

use std::collections::HashMap;

use serde::de::IgnoredAny;

use crate::error::{Error, Resource, Result};
use crate::registry::lifecycle::live;
use crate::state::records::Card;
use crate::state::store::{Table, Tx};

/// Template id → card generation, for every template the service has.
pub type Generations = HashMap<String, String>;

/// The `ssns` key of a person's card of one generation (`ssn_index`: the SSN's index hash).
pub fn person_key(ssn_index: &str, generation: &str) -> String {
    format!("{ssn_index}/{generation}")
}

/// The live card of the person whose SSN's index hash is `ssn`, in `generation`, if any.
pub fn live_card(
    tx: &Tx<'_>,
    ssn: &str,
    generation: &str,
    generations: &Generations,
) -> Result<Option<String>> {
    if let Some(id) =
        tx.get::<String>(Table::SocialSecurityNumbers, &person_key(ssn, generation))?
        && tx.get::<Card>(Table::Cards, &id)?.is_some_and(|c| live(&c))
    {
        return Ok(Some(id));
    }
    // A store of before the per-generation key: the SSN's latest card, of any generation.
    if let Some(id) = tx.get::<String>(Table::SocialSecurityNumbers, ssn)?
        && let Some(card) = tx.get::<Card>(Table::Cards, &id)?
        && live(&card)
        && generations
            .get(&card.template_id)
            .is_some_and(|g| g == generation)
    {
        return Ok(Some(id));
    }
    Ok(None)
}

/// Whether a card with this identifier exists.
pub fn identifier_taken(tx: &Tx<'_>, card_identifier: &str) -> Result<bool> {
    Ok(tx
        .get::<IgnoredAny>(Table::Cards, card_identifier)?
        .is_some())
}

/// Whether a card with this number (its index hash) exists.
pub fn number_taken(tx: &Tx<'_>, card_number_index: &str) -> Result<bool> {
    Ok(tx
        .get::<IgnoredAny>(Table::CardNumbers, card_number_index)?
        .is_some())
}

/// Refuses `card` unless it is unique (identifier, number, a live card of the person in
/// `generation`), with the first conflict as [`Error::AlreadyExists`].
pub fn check_unique(
    tx: &Tx<'_>,
    card: &Card,
    generation: &str,
    generations: &Generations,
) -> Result<()> {
    if identifier_taken(tx, &card.card_identifier)? {
        return Err(Error::AlreadyExists {
            what: Resource::CardIdentifier,
        });
    }
    if number_taken(tx, &card.personal.card_number_index)? {
        return Err(Error::AlreadyExists {
            what: Resource::CardNumber,
        });
    }
    if live_card(tx, &card.personal.ssn_index, generation, generations)?.is_some() {
        return Err(Error::AlreadyExists {
            what: Resource::LiveCardForSsn,
        });
    }
    Ok(())
}

/// Writes `card` and its indexes (after [`check_unique`]).
pub fn put_card(tx: &mut Tx<'_>, card: &Card, generation: &str) -> Result<()> {
    tx.put(Table::Cards, &card.card_identifier, card)?;
    tx.put(
        Table::CardNumbers,
        &card.personal.card_number_index,
        &card.card_identifier,
    )?;
    tx.put(
        Table::SocialSecurityNumbers,
        &person_key(&card.personal.ssn_index, generation),
        &card.card_identifier,
    )
}
