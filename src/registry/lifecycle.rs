//! The card life cycle (notice N4, N5; DOMAIN.md §7): which status a card may move to from
//! which, who moves it, and when its keys may be released. The one place these rules live; the
//! registrar calls ([`crate::service`]) and the key releases to stations use it.
//!
//! ```text
//! registered ─accept─▶ accepted ─initialise─▶ initialised ─personalise─▶ personalised ─activate─▶ active
//!      └─reject─▶ rejected      └──────────personalise──────────────────▶ (retries stay)      │
//!                                                    active ◀─resume─ suspended ◀─suspend─────┤
//!                                                    lost ◀─report-lost─ active or suspended ─┘
//! cancel: any status before `cancelled` except rejected, replaced, blacklisted
//! replace: a replacement card naming a personalised, active, suspended or lost card
//! blacklist: any status (final; un-blacklisting is the ceremony's dual-control act)
//! ```
//!
//! Keys are released (initialisation, personalisation) only while the card is `accepted`,
//! `initialised` or — for a personalisation retried after a failure — `personalised`; each
//! release is counted in the card's record and audited. **A card factor belongs to one card**:
//! the factor of the ATR a card's keys are first released for is bound to that card in the
//! `card_factors` table, in the release's write; a station presenting a factor bound to another
//! card is refused ([`Refusal::CardFactorBoundElsewhere`], audited like every refusal). The
//! binding is per template: a card key is D(K_city of the template, factor), so a factor bound
//! in one template yields no key of another (and DOMAIN.md's worked chain uses one ATR for the
//! demo cards of both templates); within a template it is province-wide. A store of before the
//! binding gets it once at its next start ([`bind_released_factors`]).
//!
//! A card is *live* (it counts for "one live card per person per generation") unless it is
//! rejected, cancelled, replaced or blacklisted.

use hsm_api::Factor;

use crate::error::{Error, Refusal, Result};
use crate::registry::uniqueness::Generations;
use crate::state::records::{Card, CardStatus};
use crate::state::store::{Table, Tx};

/// A change of status a registrar asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The province accepts the data of a registered card.
    Accept,
    /// The province rejects the data of a registered card.
    Reject,
    /// The card is issued to its holder.
    Activate,
    /// Out of service for a while.
    Suspend,
    /// Back in service after a suspension.
    Resume,
    /// The holder reports the card lost.
    ReportLost,
    /// Out of service for good.
    Cancel,
    /// A replacement card names this one (done by registering the replacement).
    Replace,
    /// Blacklisted (notice N5).
    Blacklist,
}

impl Transition {
    /// The name in audit records and messages.
    pub const fn name(self) -> &'static str {
        match self {
            Transition::Accept => "accept",
            Transition::Reject => "reject",
            Transition::Activate => "activate",
            Transition::Suspend => "suspend",
            Transition::Resume => "resume",
            Transition::ReportLost => "report-lost",
            Transition::Cancel => "cancel",
            Transition::Replace => "replace",
            Transition::Blacklist => "blacklist",
        }
    }

    /// The status a card has after the transition.
    pub const fn target(self) -> CardStatus {
        match self {
            Transition::Accept => CardStatus::Accepted,
            Transition::Reject => CardStatus::Rejected,
            Transition::Activate | Transition::Resume => CardStatus::Active,
            Transition::Suspend => CardStatus::Suspended,
            Transition::ReportLost => CardStatus::Lost,
            Transition::Cancel => CardStatus::Cancelled,
            Transition::Replace => CardStatus::Replaced,
            Transition::Blacklist => CardStatus::Blacklisted,
        }
    }

    /// The province's verdicts (separation of duties: never the submitting city's).
    pub const fn province_only(self) -> bool {
        matches!(self, Transition::Accept | Transition::Reject)
    }

    /// Whether a card in `from` may take this transition.
    pub const fn allowed_from(self, from: CardStatus) -> bool {
        use CardStatus as S;
        match self {
            // Accepting twice answers the card as it is.
            Transition::Accept => matches!(from, S::Registered | S::Accepted),
            Transition::Reject => matches!(from, S::Registered),
            Transition::Activate => matches!(from, S::Personalised),
            Transition::Suspend => matches!(from, S::Active),
            Transition::Resume => matches!(from, S::Suspended),
            Transition::ReportLost => matches!(from, S::Active | S::Suspended),
            Transition::Cancel => !matches!(
                from,
                S::Rejected | S::Cancelled | S::Replaced | S::Blacklisted
            ),
            Transition::Replace => {
                matches!(from, S::Personalised | S::Active | S::Suspended | S::Lost)
            }
            // Blacklisting again keeps the card blacklisted with the new reason.
            Transition::Blacklist => true,
        }
    }
}

/// Applies `transition` to `card`, or refuses it: a blacklisted card moves nowhere but the
/// blacklist ([`Refusal::CardBlacklisted`]); any other move not in the table is
/// [`Refusal::CardTransitionNotAllowed`].
pub fn apply(card: &mut Card, transition: Transition) -> Result<()> {
    if card.status == CardStatus::Blacklisted && transition != Transition::Blacklist {
        return Err(Error::FailedPrecondition {
            reason: Refusal::CardBlacklisted,
        });
    }
    if !transition.allowed_from(card.status) {
        return Err(Error::FailedPrecondition {
            reason: Refusal::CardTransitionNotAllowed,
        });
    }
    card.status = transition.target();
    Ok(())
}

/// Whether the card counts for "one live card per person per card generation".
pub const fn live(card: &Card) -> bool {
    !matches!(
        card.status,
        CardStatus::Rejected
            | CardStatus::Cancelled
            | CardStatus::Replaced
            | CardStatus::Blacklisted
    )
}

/// A release of a card's keys to a station.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The blank card's vendor transport key replaced by its master key.
    Initialise,
    /// The card's keys (TR-31 blocks or secure-messaging commands).
    Personalise,
}

/// Refuses a release for a card whose status does not allow it: not yet accepted, rejected,
/// blacklisted, or past personalisation (active and after). A personalised card may be
/// released again, initialisation included: the retry of a failed personalisation.
pub fn check_release(card: &Card, _release: Release) -> Result<()> {
    use CardStatus as S;
    let reason = match card.status {
        S::Accepted | S::Initialised | S::Personalised => return Ok(()),
        S::Registered => Refusal::CardNotAccepted,
        S::Rejected => Refusal::CardRejected,
        S::Blacklisted => Refusal::CardBlacklisted,
        S::Active | S::Suspended | S::Lost | S::Cancelled | S::Replaced => {
            Refusal::CardNotInPersonalisation
        }
    };
    Err(Error::FailedPrecondition { reason })
}

/// The `card_factors` key of a card factor in a template: `template/FACTORHEX`.
pub fn factor_key(template_id: &str, factor: &Factor) -> String {
    format!("{template_id}/{}", factor.to_hex())
}

/// Refuses a factor bound to another card than `card_identifier` (`bound`: the
/// `card_factors` entry of the factor, if any).
pub fn check_factor(bound: Option<&str>, card_identifier: &str) -> Result<()> {
    match bound {
        Some(other) if other != card_identifier => Err(Error::FailedPrecondition {
            reason: Refusal::CardFactorBoundElsewhere,
        }),
        _ => Ok(()),
    }
}

/// Records a release inside its store write, after re-checking everything there: the card's
/// status still allows it (else [`Refusal::CardChangedDuringRequest`]), the same ATR as at the
/// first release, the factor free or the card's own; then binds the factor, counts the release
/// and moves the card on (`accepted` → `initialised` or `personalised`). Answers the release's
/// number (1 for the first).
pub fn record_release(
    tx: &mut Tx<'_>,
    card: &mut Card,
    release: Release,
    factor: &Factor,
    atr_hex: String,
) -> Result<u32> {
    if check_release(card, release).is_err() {
        return Err(Error::FailedPrecondition {
            reason: Refusal::CardChangedDuringRequest,
        });
    }
    if card.atr.as_ref().is_some_and(|a| *a != atr_hex) {
        return Err(Error::FailedPrecondition {
            reason: Refusal::AtrMismatch,
        });
    }
    let key = factor_key(&card.template_id, factor);
    let bound: Option<String> = tx.get(Table::CardFactors, &key)?;
    check_factor(bound.as_deref(), &card.card_identifier)?;
    if bound.is_none() {
        tx.put(Table::CardFactors, &key, &card.card_identifier)?;
    }
    card.atr = Some(atr_hex);
    card.releases = card.releases.saturating_add(1);
    card.status = match (release, card.status) {
        (Release::Initialise, CardStatus::Accepted) => CardStatus::Initialised,
        (Release::Initialise, s) => s,
        (Release::Personalise, _) => CardStatus::Personalised,
    };
    Ok(card.releases)
}

/// The `meta` flag set once [`bind_released_factors`] has run on a store.
pub const FACTORS_BOUND: &str = "card_factors_bound";

/// Once per store (stores of before the binding): binds the factor of every card whose keys
/// were released (its recorded ATR) to that card, so that a card blacklisted before the binding
/// existed cannot have its chip served as another card. Where two cards of a template were
/// released for one factor, the first in card-identifier order keeps it (the other is refused
/// from then on; the audit record says how many). Answers `(bound, conflicts)`, or `None` when
/// it had run before.
pub fn bind_released_factors(tx: &mut Tx<'_>) -> Result<Option<(u64, u64)>> {
    if tx.get::<bool>(Table::Meta, FACTORS_BOUND)?.unwrap_or(false) {
        return Ok(None);
    }
    /// What the binding reads of a card: the same in every layout of the registry.
    #[derive(serde::Deserialize)]
    struct Released {
        template_id: String,
        atr: Option<String>,
    }
    let (mut bound, mut conflicts) = (0, 0);
    for (id, card) in tx.scan::<Released>(Table::Cards, "")? {
        let Some(factor) = card
            .atr
            .as_deref()
            .and_then(|a| hex::decode(a).ok())
            .and_then(|a| Factor::from_atr(&a).ok())
        else {
            continue;
        };
        let key = factor_key(&card.template_id, &factor);
        match tx.get::<String>(Table::CardFactors, &key)? {
            Some(other) if other != id => conflicts += 1,
            Some(_) => {}
            None => {
                tx.put(Table::CardFactors, &key, &id)?;
                bound += 1;
            }
        }
    }
    tx.put(Table::Meta, FACTORS_BOUND, &true)?;
    Ok(Some((bound, conflicts)))
}

/// Whether `old` may be replaced by a card of the person whose SSN's index hash is `ssn`, in
/// card generation `generation`: the same person, the same generation, and a status
/// [`Transition::Replace`] allows (personalised, active, suspended, lost).
pub fn replaceable(old: &Card, ssn: &str, generation: &str, generations: &Generations) -> bool {
    old.personal.ssn_index == ssn
        && generations
            .get(&old.template_id)
            .is_some_and(|g| g == generation)
        && Transition::Replace.allowed_from(old.status)
}

/// Inside a replacement's write: the card `old` leaves service (`replaced`), or the write is
/// refused with [`Refusal::ReplacedCardNotReplaceable`] (also for a card the store lacks).
pub fn replace(
    tx: &mut Tx<'_>,
    old: &str,
    ssn: &str,
    generation: &str,
    generations: &Generations,
) -> Result<()> {
    let card = tx.get::<Card>(Table::Cards, old)?;
    let Some(mut card) = card.filter(|c| replaceable(c, ssn, generation, generations)) else {
        return Err(Error::FailedPrecondition {
            reason: Refusal::ReplacedCardNotReplaceable,
        });
    };
    apply(&mut card, Transition::Replace)?;
    tx.put(Table::Cards, old, &card)
}

#[cfg(test)]
#[path = "tests/lifecycle.rs"]
mod tests;
