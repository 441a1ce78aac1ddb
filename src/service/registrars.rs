//! Registrars: registering (and replacing), accepting or rejecting (the province), moving along
//! the life cycle, blacklisting and reading cards one by one. Applicant batches are in
//! `applicants.rs`; the life-cycle rules in `registry::lifecycle`.

use hsm_api::Hsm;

use crate::access::authz::{self, Operation};
use crate::access::identity::Identity;
use crate::card::identifiers::CardIdentifier;
use crate::error::{Error, Refusal, Resource, Result};
use crate::registry::lifecycle::{self, Transition};
use crate::registry::uniqueness;
use crate::state::audit::AuditEvent;
use crate::state::records::{Card, CardStatus};
use crate::state::store::Table;

use super::{CardRequest, Kms, mask_card_identifier, masked_subject};

impl<H: Hsm> Kms<H> {
    // ------------------------------------------------------------------ registry

    /// Registers a card for review (notice N4): identifiers valid, unique. A replacement names
    /// the card it replaces (`replaces`), which leaves service in the same write.
    pub async fn register_card(
        &self,
        caller: &Identity,
        card: CardRequest,
        template_id: &str,
        replaces: Option<&str>,
    ) -> Result<Card> {
        let subject = masked_subject(&card);
        self.audited(caller, Operation::RegisterCard, &subject, async {
            authz::authorize(caller, Operation::RegisterCard)?;
            let checked = card.check(false)?;
            let region = checked.id.region();
            authz::authorize_region(caller, region.code)?;
            if !region.is_city() {
                return Err(Error::InvalidArgument {
                    field: "card_identifier",
                    reason: Refusal::IssuingRegionNotACity,
                });
            }
            let generation = self.template(template_id)?.generation().to_owned();
            let generations = self.generations()?;
            let replaces = match replaces {
                Some(old) => {
                    let old = CardIdentifier::parse_field("replaces_card_identifier", old)?;
                    authz::authorize_region(caller, old.region().code)?;
                    Some(old.as_str().to_owned())
                }
                None => None,
            };
            let record = Card {
                card_identifier: checked.id.as_str().to_owned(),
                card_number: checked.number.as_str().to_owned(),
                social_security_number: checked.ssn.as_str().to_owned(),
                region: region.code.to_owned(),
                template_id: template_id.to_owned(),
                status: CardStatus::Registered,
                blacklist_reason: None,
                atr: None,
                issued_root_versions: Default::default(),
                releases: 0,
                replaces: replaces.clone(),
                created_ms: 0,
            };
            let actor = caller.to_string();
            self.store
                .write(move |tx| {
                    let mut record = record;
                    if let Some(old) = &replaces {
                        lifecycle::replace(
                            tx,
                            old,
                            &record.social_security_number,
                            &generation,
                            &generations,
                        )?;
                    }
                    uniqueness::check_unique(tx, &record, &generation, &generations)?;
                    record.created_ms = tx.now_ms();
                    uniqueness::put_card(tx, &record, &generation)?;
                    let replacing = replaces
                        .as_deref()
                        .map(|old| format!(" replacing card {}", mask_card_identifier(old)))
                        .unwrap_or_default();
                    tx.audit(AuditEvent::ok(
                        actor,
                        Operation::RegisterCard.name(),
                        format!(
                            "card {}{replacing}",
                            mask_card_identifier(&record.card_identifier)
                        ),
                    ));
                    Ok(record)
                })
                .await
        })
        .await
    }

    /// Accepts a registered card after review: the province's verdict, so a provincial
    /// registrar only (a city never accepts the data it registered).
    pub async fn accept_card(&self, caller: &Identity, card_identifier: &str) -> Result<Card> {
        self.change_card(
            caller,
            Operation::AcceptCard,
            card_identifier,
            true,
            String::new(),
            |card| lifecycle::apply(card, Transition::Accept),
        )
        .await
    }

    /// Moves a card along its life cycle (reject: the province only).
    pub async fn change_card_status(
        &self,
        caller: &Identity,
        card_identifier: &str,
        transition: Transition,
        reason: &str,
    ) -> Result<Card> {
        let reason = reason.chars().take(200).collect::<String>();
        self.change_card(
            caller,
            Operation::ChangeCardStatus,
            card_identifier,
            transition.province_only(),
            format!(" ({}: {reason})", transition.name()),
            move |card| lifecycle::apply(card, transition),
        )
        .await
    }

    /// Blacklists a card (notice N5): no key of it is ever released again.
    pub async fn blacklist_card(
        &self,
        caller: &Identity,
        card_identifier: &str,
        reason: &str,
    ) -> Result<Card> {
        let reason = reason.chars().take(200).collect::<String>();
        self.change_card(
            caller,
            Operation::BlacklistCard,
            card_identifier,
            false,
            String::new(),
            move |card| {
                lifecycle::apply(card, Transition::Blacklist)?;
                card.blacklist_reason = Some(reason);
                Ok(())
            },
        )
        .await
    }

    /// A card's record, for its registrar.
    pub async fn get_card(&self, caller: &Identity, card_identifier: &str) -> Result<Card> {
        let subject = format!("card {}", mask_card_identifier(card_identifier));
        self.audited(caller, Operation::GetCard, &subject, async {
            authz::authorize(caller, Operation::GetCard)?;
            let id = CardIdentifier::parse_field("card_identifier", card_identifier)?;
            authz::authorize_region(caller, id.region().code)?;
            self.store
                .snapshot()?
                .get(Table::Cards, id.as_str())?
                .ok_or(Error::NotFound {
                    what: Resource::Card,
                })
        })
        .await
    }

    async fn change_card(
        &self,
        caller: &Identity,
        op: Operation,
        card_identifier: &str,
        province_only: bool,
        why: String,
        change: impl FnOnce(&mut Card) -> Result<()> + Send + 'static,
    ) -> Result<Card> {
        let subject = format!("card {}", mask_card_identifier(card_identifier));
        self.audited(caller, op, &subject, async {
            authz::authorize(caller, op)?;
            if province_only {
                authz::authorize_province(caller)?;
            }
            let id = CardIdentifier::parse_field("card_identifier", card_identifier)?;
            authz::authorize_region(caller, id.region().code)?;
            let key = id.as_str().to_owned();
            let actor = caller.to_string();
            self.store
                .write(move |tx| {
                    let mut card: Card = tx.get(Table::Cards, &key)?.ok_or(Error::NotFound {
                        what: Resource::Card,
                    })?;
                    change(&mut card)?;
                    tx.put(Table::Cards, &key, &card)?;
                    tx.audit(AuditEvent::ok(
                        actor,
                        op.name(),
                        format!(
                            "card {} now {:?}{why}",
                            mask_card_identifier(&key),
                            card.status
                        ),
                    ));
                    Ok(card)
                })
                .await
        })
        .await
    }
}
