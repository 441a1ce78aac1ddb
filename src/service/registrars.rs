//! Registrars: registering (and replacing), accepting or rejecting (the province), moving along
//! the life cycle, blacklisting and reading cards one by one. Applicant batches are in
//! `applicants.rs`; the life-cycle rules in `registry::lifecycle`.

use hsm_api::{Algorithm, Exportability, Hsm, KeySpec, KeyToken, KeyUsage, ListSignature};

use crate::access::authz::{self, Operation};
use crate::access::identity::Identity;
use crate::card::identifiers::CardIdentifier;
use crate::error::{Error, Refusal, Resource, Result};
use crate::registry::blacklist;
use crate::registry::lifecycle::{self, Transition};
use crate::registry::personal::ClearPersonal;
use crate::registry::uniqueness;
use crate::state::audit::AuditEvent;
use crate::state::records::{Card, CardStatus};
use crate::state::store::{Table, Tx};

use super::{CardRequest, Kms, PROVINCE, mask_card_identifier, masked_subject};

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
            let keys = self.registry_keys().await?;
            let clear = ClearPersonal {
                card_identifier: checked.id.as_str().to_owned(),
                ssn: checked.ssn.as_str().to_owned(),
                card_number: checked.number.as_str().to_owned(),
                name: None,
            };
            let personal = self
                .protect(&keys, std::slice::from_ref(&clear))
                .await?
                .pop()
                .ok_or(Error::StoreCorrupt("protected card"))?;
            let record = Card {
                card_identifier: checked.id.as_str().to_owned(),
                personal,
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
                            &record.personal.ssn_index,
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
            |_, card| lifecycle::apply(card, Transition::Accept),
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
            move |_, card| lifecycle::apply(card, transition),
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
            move |tx, card| {
                let newly = card.status != CardStatus::Blacklisted;
                lifecycle::apply(card, Transition::Blacklist)?;
                card.blacklist_reason = Some(reason);
                // The published list's next version (a card blacklisted again keeps its own).
                if newly {
                    blacklist::append(tx, &card.card_identifier)?;
                }
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
            self.registry_keys().await?;
            self.store
                .snapshot()?
                .get(Table::Cards, id.as_str())?
                .ok_or(Error::NotFound {
                    what: Resource::Card,
                })
        })
        .await
    }

    /// A card holder's SSN, card number and name in clear, opened by the HSM: for a registrar
    /// of the card's own city only; audited (the record names the card, masked).
    pub async fn read_card_personal_data(
        &self,
        caller: &Identity,
        card_identifier: &str,
    ) -> Result<ClearPersonal> {
        let subject = format!(
            "personal data of card {}",
            mask_card_identifier(card_identifier)
        );
        self.audited(caller, Operation::ReadCardPersonalData, &subject, async {
            authz::authorize(caller, Operation::ReadCardPersonalData)?;
            let id = CardIdentifier::parse_field("card_identifier", card_identifier)?;
            // The card's own city only: never the province, never another city.
            if caller.region() != Some(id.region().code) {
                return Err(Error::PermissionDenied {
                    reason: Refusal::PersonalDataOwnCityOnly,
                });
            }
            let keys = self.registry_keys().await?;
            let card: Card = self
                .store
                .snapshot()?
                .get(Table::Cards, id.as_str())?
                .ok_or(Error::NotFound {
                    what: Resource::Card,
                })?;
            let clear = self.open_personal(&keys, &card).await?;
            let actor = caller.to_string();
            let masked = mask_card_identifier(id.as_str());
            self.store
                .write(move |tx| {
                    tx.audit(AuditEvent::ok(
                        actor,
                        Operation::ReadCardPersonalData.name(),
                        format!("personal data of card {masked} read in clear"),
                    ));
                    Ok(())
                })
                .await?;
            Ok(clear)
        })
        .await
    }

    /// The blacklist as terminals load it, signed by the HSM: in full (`since` 0) or the
    /// increments since version `since`; with the signing key's public key (SEC1). The key is
    /// made in the HSM at the first export.
    pub async fn export_blacklist(
        &self,
        caller: &Identity,
        since: u64,
    ) -> Result<(String, Vec<u8>)> {
        let subject = format!("blacklist since version {since}");
        self.audited(caller, Operation::ExportBlacklist, &subject, async {
            authz::authorize(caller, Operation::ExportBlacklist)?;
            let (key, scheme) = self.list_signing_key().await?;
            let snap = self.store.snapshot()?;
            let document = blacklist::document(&snap, PROVINCE, since, scheme)?;
            let signature = self.hsm.sign(&key, document.as_bytes()).await?;
            let public_key = self.hsm.public_key(&key).await?;
            let actor = caller.to_string();
            let head = document
                .lines()
                .find(|l| l.starts_with("to "))
                .unwrap_or_default()
                .to_owned();
            self.store
                .write(move |tx| {
                    tx.audit(AuditEvent::ok(
                        actor,
                        Operation::ExportBlacklist.name(),
                        format!(
                            "blacklist since version {since}, {head}, signed {}",
                            scheme.name()
                        ),
                    ));
                    Ok(())
                })
                .await?;
            Ok((blacklist::signed(&document, &signature), public_key))
        })
        .await
    }

    /// The list-signing key's token and scheme: the stored one (whatever scheme it was made
    /// in), or a new one from the HSM in this deployment's scheme ([`Kms::list_signature`]).
    async fn list_signing_key(&self) -> Result<(KeyToken, ListSignature)> {
        if let Some((text, scheme)) = blacklist::signing_key(&self.store.snapshot()?)? {
            return Ok((super::token(&text), scheme));
        }
        let scheme = self.list_signature();
        let _tokens = self.token_turn().await;
        let made = self
            .hsm
            .generate_key(KeySpec {
                algorithm: Algorithm::Aes256,
                usage: KeyUsage::ListSigning(scheme),
                exportability: Exportability::NonExportable,
            })
            .await?;
        let token = made.token.as_str().to_owned();
        let (method, kcv) = super::kcv_hex(&made.kcv);
        let (kept, kept_scheme) = self
            .store
            .write(move |tx| {
                let kept = blacklist::keep_signing_key(tx, token.clone(), scheme)?;
                if kept.0 == token {
                    tx.audit(AuditEvent::ok(
                        "system",
                        "create-list-signing-key",
                        format!("list signing key {} KCV {method} {kcv}", scheme.name()),
                    ));
                }
                Ok(kept)
            })
            .await?;
        Ok((super::token(&kept), kept_scheme))
    }

    async fn change_card(
        &self,
        caller: &Identity,
        op: Operation,
        card_identifier: &str,
        province_only: bool,
        why: String,
        change: impl FnOnce(&mut Tx<'_>, &mut Card) -> Result<()> + Send + 'static,
    ) -> Result<Card> {
        let subject = format!("card {}", mask_card_identifier(card_identifier));
        self.audited(caller, op, &subject, async {
            authz::authorize(caller, op)?;
            if province_only {
                authz::authorize_province(caller)?;
            }
            let id = CardIdentifier::parse_field("card_identifier", card_identifier)?;
            authz::authorize_region(caller, id.region().code)?;
            self.registry_keys().await?;
            let key = id.as_str().to_owned();
            let actor = caller.to_string();
            self.store
                .write(move |tx| {
                    let mut card: Card = tx.get(Table::Cards, &key)?.ok_or(Error::NotFound {
                        what: Resource::Card,
                    })?;
                    change(tx, &mut card)?;
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
