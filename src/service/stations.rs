//! Card personalisation stations: a card's keys as TR-31 blocks or secure-messaging WRITE KEY
//! commands, and blank-card initialisation.

use hsm_api::Algorithm;
use hsm_api::Factor;
use hsm_api::Kcv;
use hsm_api::MacFold;
use hsm_api::Protector as HsmProtector;
use hsm_api::{BatchDelivery, BatchItem, BatchOutput, Derivation, KeySource, WriteKeyDelivery};
use hsm_api::{Error as HsmError, Hsm};

use crate::access::authz::{self, Operation};
use crate::access::identity::Identity;
use crate::card::identifiers::Atr;
use crate::card::template::{KeyOwner, KeySpec, Protector, Template};
use crate::error::{Error, Refusal, Resource, Result};
use crate::metrics::ReleaseLabels;
use crate::registry::lifecycle::{self, Release};
use crate::registry::personal;
use crate::state::audit::AuditEvent;
use crate::state::records::{self, Card, EndpointKind, KeyRecord, Level};
use crate::state::store::{Snapshot, Table};

use super::{
    CardRequest, CheckedCard, Kms, PROVINCE, active_key, block_version, card_usage, check_owned,
    check_wrappable, is_master_key, mask_card_identifier, masked_subject, token,
};

/// How a station wants its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// TR-31 blocks of these keys (all keys of the template when empty).
    Tr31 { key_names: Vec<String> },
    /// Secure-messaging WRITE KEY commands, one per (key name, card challenge).
    SecureMessaging { challenges: Vec<(String, Vec<u8>)> },
}

/// One delivered key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub key_name: String,
    pub directory: String,
    pub key_id: u8,
    pub key_version: u8,
    pub algorithm: Algorithm,
    pub kcv: Kcv,
    pub level: Level,
    pub root_version: u32,
    pub form: DeliveredForm,
    /// PSAM keys only: where the key sits on the PSAM.
    pub psam: Option<PsamSlot>,
}

/// A key's place on a PSAM, as its PSAM profile gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PsamSlot {
    /// The usage byte, `(levels << 5) | type`.
    pub usage: u8,
    /// The PSAM's key id (not the card key id).
    pub key_id: u8,
    /// The PSAM's version of the key.
    pub key_version: u8,
}

/// The form a key was delivered in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveredForm {
    Tr31(String),
    WriteKeyApdu(Vec<u8>),
}

impl<H: Hsm> Kms<H> {
    // ------------------------------------------------------------------ stations

    /// The keys of one card for a station.
    pub async fn inject_card_keys(
        &self,
        caller: &Identity,
        card: CardRequest,
        template_id: &str,
        delivery: Delivery,
    ) -> Result<Vec<Delivered>> {
        let subject = masked_subject(&card);
        self.audited(caller, Operation::InjectCardKeys, &subject, async {
            authz::authorize(caller, Operation::InjectCardKeys)?;
            let checked = card.check(true)?;
            let region = checked.id.region();
            authz::authorize_region(caller, region.code)?;
            let template = self.template(template_id)?;
            // The HSM's answer is awaited before the registry's checks, but a registry refusal
            // (unknown card, its status) is named even when the HSM cannot hash (sealed).
            let hashes = self.request_hashes(&checked).await;
            // One consistent view of the state for the whole request.
            let snap = self.store.snapshot()?;
            let station = Self::endpoint(&snap, EndpointKind::Station, caller)?;
            let record = Self::releasable_card(
                &snap,
                &checked,
                hashes.as_ref().ok(),
                template.id(),
                Release::Personalise,
            )?;
            hashes?;
            let atr = checked.atr.as_ref().ok_or(Error::InvalidArgument {
                field: "atr",
                reason: Refusal::Required,
            })?;
            // The card factor is the COS profile's choice of ATR bytes.
            let factor = template.card_factor(atr)?;

            let mut delivered = Vec::new();
            let mut versions = record.issued_root_versions.clone();
            match delivery {
                Delivery::Tr31 { key_names } => {
                    let kbpk = token(&station.transport_token);
                    let version =
                        block_version(Algorithm::from_name(&station.transport_algorithm)?)?;
                    let specs = select_keys(&template, &key_names, self.owner())?;
                    for spec in &specs {
                        check_wrappable(version, spec.hsm_algorithm())?;
                    }
                    // Every key of the set in one HSM call: derived and exported there.
                    let mut items = Vec::with_capacity(specs.len());
                    let mut root_versions = Vec::with_capacity(specs.len());
                    for spec in &specs {
                        let (derivation, root_version) = Self::card_derivation(
                            self.owner(),
                            &snap,
                            &template,
                            spec,
                            &record,
                            &factor,
                            &mut versions,
                        )?;
                        items.push(BatchItem {
                            key: KeySource::Derived(derivation),
                            delivery: BatchDelivery::Export {
                                kbpk: kbpk.clone(),
                                version,
                            },
                        });
                        root_versions.push(root_version);
                    }
                    let outputs = self.batch(caller, items).await?;
                    for ((spec, root_version), output) in
                        specs.iter().zip(root_versions).zip(outputs)
                    {
                        delivered.push(delivered_key(&template, spec, root_version, output?)?);
                    }
                }
                Delivery::SecureMessaging { challenges } => {
                    if challenges.is_empty() {
                        return Err(Error::InvalidArgument {
                            field: "challenges",
                            reason: Refusal::ChallengesRequired,
                        });
                    }
                    check_key_list(
                        &template,
                        "challenges",
                        challenges.iter().map(|(name, _)| name.as_str()),
                    )?;
                    let mut specs = Vec::with_capacity(challenges.len());
                    for (name, _) in &challenges {
                        specs.push(template.key(name).ok_or(Error::NotFound {
                            what: Resource::TemplateKey,
                        })?);
                    }
                    // Every command in one HSM call; a protector that is also written in this
                    // request is derived once, for both.
                    let mut items = Vec::with_capacity(specs.len());
                    let mut root_versions = Vec::with_capacity(specs.len());
                    for (spec, (_, challenge)) in specs.iter().zip(challenges) {
                        let (item, root_version) = Self::write_key_item(
                            self.owner(),
                            &snap,
                            &template,
                            spec,
                            &record,
                            &factor,
                            &mut versions,
                            challenge,
                            &specs,
                        )?;
                        items.push(item);
                        root_versions.push(root_version);
                    }
                    let outputs = self.batch(caller, items).await?;
                    for ((spec, root_version), output) in
                        specs.iter().zip(root_versions).zip(outputs)
                    {
                        delivered.push(delivered_key(&template, spec, root_version, output?)?);
                    }
                }
            }
            self.record_release(
                caller,
                Operation::InjectCardKeys,
                &record,
                atr,
                versions,
                &delivered,
            )
            .await?;
            Ok(delivered)
        })
        .await
    }

    /// The WRITE KEY that replaces a blank card's vendor transport key by its master key.
    pub async fn initialise_blank_card(
        &self,
        caller: &Identity,
        card: CardRequest,
        template_id: &str,
        challenge: Vec<u8>,
    ) -> Result<Delivered> {
        let subject = masked_subject(&card);
        self.audited(caller, Operation::InitialiseBlankCard, &subject, async {
            authz::authorize(caller, Operation::InitialiseBlankCard)?;
            let checked = card.check(true)?;
            authz::authorize_region(caller, checked.id.region().code)?;
            let template = self.template(template_id)?;
            // The HSM's answer is awaited before the registry's checks, but a registry refusal
            // (unknown card, its status) is named even when the HSM cannot hash (sealed).
            let hashes = self.request_hashes(&checked).await;
            let snap = self.store.snapshot()?;
            Self::endpoint(&snap, EndpointKind::Station, caller)?;
            let record = Self::releasable_card(
                &snap,
                &checked,
                hashes.as_ref().ok(),
                template.id(),
                Release::Initialise,
            )?;
            hashes?;
            let atr = checked.atr.as_ref().ok_or(Error::InvalidArgument {
                field: "atr",
                reason: Refusal::Required,
            })?;
            let spec = template
                .keys()
                .iter()
                .find(|k| k.protected_by == Protector::VendorTransport)
                .ok_or(Error::FailedPrecondition {
                    reason: Refusal::NoBlankCardKey,
                })?;
            let mut versions = record.issued_root_versions.clone();
            let (item, root_version) = Self::write_key_item(
                self.owner(),
                &snap,
                &template,
                spec,
                &record,
                &template.card_factor(atr)?,
                &mut versions,
                challenge,
                &[],
            )?;
            let output = self.batch(caller, vec![item]).await?.into_iter().next();
            let d = delivered_key(
                &template,
                spec,
                root_version,
                output.ok_or(HsmError::Protocol)??,
            )?;
            self.record_release(
                caller,
                Operation::InitialiseBlankCard,
                &record,
                atr,
                versions,
                std::slice::from_ref(&d),
            )
            .await?;
            Ok(d)
        })
        .await
    }

    /// The card's record, if its keys may be released: registered with the same data and
    /// template, in personalisation (`registry::lifecycle`), (after a first release) the same
    /// ATR, and a card factor not bound to another card.
    fn releasable_card(
        snap: &Snapshot,
        checked: &CheckedCard,
        hashes: Option<&RequestHashes>,
        template_id: &str,
        release: Release,
    ) -> Result<Card> {
        // An unknown card and a card whose data differ get the same answer (no existence
        // oracle for a station probing identifiers); the audit record keeps which.
        let card: Card =
            snap.get(Table::Cards, checked.id.as_str())?
                .ok_or(Error::NoMatchingCard {
                    detail: "unknown card identifier",
                })?;
        check_releasable(&card, checked, hashes, template_id, release)?;
        if let Some(atr) = &checked.atr {
            let bound: Option<String> = snap.get(
                Table::CardFactors,
                &lifecycle::factor_key(&card.template_id, &atr.card_factor()),
            )?;
            lifecycle::check_factor(bound.as_deref(), &card.card_identifier)?;
        }
        Ok(card)
    }

    /// The root version a card uses for `spec`: the one recorded at its first release, or the
    /// active one.
    fn root_version(
        snap: &Snapshot,
        template: &Template,
        spec: &KeySpec,
        card: &Card,
        versions: &mut std::collections::BTreeMap<String, u32>,
    ) -> Result<u32> {
        if let Some(v) = versions.get(&spec.name) {
            return Ok(*v);
        }
        let active = active_key(snap, template.id(), &spec.name, Level::City, &card.region)?
            .ok_or(Error::FailedPrecondition {
                reason: Refusal::HierarchyNotDerived,
            })?;
        versions.insert(spec.name.clone(), active.version);
        Ok(active.version)
    }

    /// The derivation of the card key of `spec` (D(K_city, F3)), for the HSM, and its root
    /// version — a card master key for the template's master keys (the HSM decides its
    /// exportability: never as TR-31).
    fn card_derivation(
        owner: KeyOwner,
        snap: &Snapshot,
        template: &Template,
        spec: &KeySpec,
        card: &Card,
        factor: &Factor,
        versions: &mut std::collections::BTreeMap<String, u32>,
    ) -> Result<(Derivation, u32)> {
        check_owned(owner, spec)?;
        let version = Self::root_version(snap, template, spec, card, versions)?;
        // Read through the store's cache: key records change in ceremonies, not per card.
        let city = snap.get_shared::<KeyRecord>(
            Table::Keys,
            &records::key_id(
                template.id(),
                &spec.name,
                Level::City,
                &card.region,
                version,
            ),
        )?;
        let city = city.as_ref().as_ref().ok_or(Error::FailedPrecondition {
            reason: Refusal::KeyVersionNotHeld,
        })?;
        let derivation = Derivation {
            parent: token(&city.token),
            method: spec.dispersion,
            factors: vec![*factor],
            child_usage: card_usage(template, spec),
        };
        Ok((derivation, version))
    }

    /// The batch item of the WRITE KEY of `spec`, and its root version. Its protector is the
    /// vendor transport key, the item of `batch` (the keys written in the same request, by
    /// index) of the protector's name, or otherwise the protector derived for this item alone.
    #[allow(clippy::too_many_arguments)]
    fn write_key_item(
        owner: KeyOwner,
        snap: &Snapshot,
        template: &Template,
        spec: &KeySpec,
        card: &Card,
        factor: &Factor,
        versions: &mut std::collections::BTreeMap<String, u32>,
        challenge: Vec<u8>,
        batch: &[&KeySpec],
    ) -> Result<(BatchItem, u32)> {
        let (derivation, root_version) =
            Self::card_derivation(owner, snap, template, spec, card, factor, versions)?;
        let protect = match &spec.protected_by {
            Protector::VendorTransport => {
                let vendor = active_key(
                    snap,
                    template.id(),
                    records::VENDOR_TRANSPORT,
                    Level::Province,
                    PROVINCE,
                )?
                .ok_or(Error::FailedPrecondition {
                    reason: Refusal::VendorTransportKeyMissing,
                })?;
                HsmProtector::Key(KeySource::Token(token(&vendor.token)))
            }
            Protector::Key(name) => {
                let protector = template.key(name).ok_or(Error::NotFound {
                    what: Resource::ProtectingKey,
                })?;
                match batch.iter().position(|k| k.name == protector.name) {
                    Some(index) => HsmProtector::Item(index),
                    None => HsmProtector::Key(KeySource::Derived(
                        Self::card_derivation(
                            owner, snap, template, protector, card, factor, versions,
                        )?
                        .0,
                    )),
                }
            }
        };
        // Every byte of the command but the field and the MAC is the COS profile's.
        let params = template.write_key_params(spec);
        let item = BatchItem {
            key: KeySource::Derived(derivation),
            delivery: BatchDelivery::WriteKey(WriteKeyDelivery {
                protect,
                cla: params.cla,
                ins: params.ins,
                p1: params.p1,
                p2: params.p2,
                key_header: template.card_key_header(spec),
                challenge,
                fold: MacFold::Xor4,
            }),
        };
        Ok((item, root_version))
    }

    /// Records a release: the ATR, its card factor's binding and root versions on first
    /// release, the count and the card's new status, and the audit record — after re-checking,
    /// inside the write, that the card is still releasable (`registry::lifecycle`).
    async fn record_release(
        &self,
        caller: &Identity,
        op: Operation,
        card: &Card,
        atr: &Atr,
        versions: std::collections::BTreeMap<String, u32>,
        delivered: &[Delivered],
    ) -> Result<()> {
        let id = card.card_identifier.clone();
        let template_id = card.template_id.clone();
        let atr_hex = atr.to_hex();
        let factor = atr.card_factor();
        let release = if op == Operation::InitialiseBlankCard {
            Release::Initialise
        } else {
            Release::Personalise
        };
        let actor = caller.to_string();
        let subject = format!(
            "card {} keys {}",
            mask_card_identifier(&id),
            delivered
                .iter()
                .map(|d| format!("{}:v{}:{}", d.key_name, d.root_version, d.kcv))
                .collect::<Vec<_>>()
                .join(",")
        );
        self.store
            .write(move |tx| {
                let mut card: Card = tx.get(Table::Cards, &id)?.ok_or(Error::NotFound {
                    what: Resource::Card,
                })?;
                if card.template_id != template_id {
                    return Err(Error::FailedPrecondition {
                        reason: Refusal::CardChangedDuringRequest,
                    });
                }
                let n = lifecycle::record_release(tx, &mut card, release, &factor, atr_hex)?;
                for (k, v) in versions {
                    card.issued_root_versions.entry(k).or_insert(v);
                }
                tx.put(Table::Cards, &id, &card)?;
                let retry = if n > 1 { " (retry)" } else { "" };
                tx.audit(AuditEvent::ok(
                    actor,
                    op.name(),
                    format!("{subject}; release {n}{retry}; now {}", card.status.name()),
                ));
                Ok(())
            })
            .await?;
        // One increment per form, not per key (a label set is a map lookup and a `String`).
        let tr31 = delivered
            .iter()
            .filter(|d| matches!(d.form, DeliveredForm::Tr31(_)))
            .count();
        for (form, count) in [("tr31", tr31), ("secure-messaging", delivered.len() - tr31)] {
            if count > 0 {
                self.metrics
                    .keys_released
                    .get_or_create(&ReleaseLabels {
                        form,
                        template: card.template_id.clone(),
                    })
                    .inc_by(count as u64);
            }
        }
        Ok(())
    }
}

/// A delivered card key of `spec` from the HSM's answer.
fn delivered_key(
    template: &Template,
    spec: &KeySpec,
    root_version: u32,
    output: BatchOutput,
) -> Result<Delivered> {
    let (kcv, form) = match output {
        BatchOutput::Exported(e) => (e.kcv, DeliveredForm::Tr31(e.block)),
        BatchOutput::WriteKey(c) => {
            // The HSM sizes Lc from the field it encrypted (padded to the protecting key's
            // block): a card expects the profile's.
            if c.apdu.get(4) != Some(&template.write_key_params(spec).lc) {
                return Err(Error::FailedPrecondition {
                    reason: Refusal::WriteKeyLcMismatch,
                });
            }
            (c.kcv, DeliveredForm::WriteKeyApdu(c.apdu))
        }
    };
    Ok(Delivered {
        key_name: spec.name.clone(),
        directory: spec.directory.clone(),
        key_id: spec.key_id,
        key_version: spec.key_version,
        algorithm: spec.hsm_algorithm(),
        kcv,
        level: Level::Card,
        root_version,
        form,
        psam: None,
    })
}

/// Refuses, before any HSM work, a list of key names longer than the template or naming a key
/// twice: each key of a card is delivered at most once per request.
fn check_key_list<'a>(
    template: &Template,
    field: &'static str,
    names: impl ExactSizeIterator<Item = &'a str>,
) -> Result<()> {
    if names.len() > template.keys().len() {
        return Err(Error::InvalidArgument {
            field,
            reason: Refusal::MoreEntriesThanKeys,
        });
    }
    let mut seen = std::collections::HashSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(Error::InvalidArgument {
                field,
                reason: Refusal::KeyNamedTwice,
            });
        }
    }
    Ok(())
}

/// The keys asked for as TR-31 blocks; none named means every key that may leave as a block
/// and that this deployment owns (all but the master keys, which leave only inside
/// secure-messaging commands: the HSM refuses to export them; the others' owners are named in
/// the response).
fn select_keys<'t>(
    template: &'t Template,
    names: &[String],
    owner: KeyOwner,
) -> Result<Vec<&'t KeySpec>> {
    if names.is_empty() {
        return Ok(template
            .write_order()
            .filter(|k| template.may_leave_as_tr31(k) && k.owner() == owner)
            .collect());
    }
    check_key_list(template, "key_names", names.iter().map(String::as_str))?;
    names
        .iter()
        .map(|n| {
            let spec = template.key(n).ok_or(Error::NotFound {
                what: Resource::TemplateKey,
            })?;
            // A master key goes on to the HSM, which refuses it whatever a template says; an
            // issuer-only key under a secure-messaging-only policy is refused here.
            if !is_master_key(template, spec) && !template.may_leave_as_tr31(spec) {
                return Err(Error::FailedPrecondition {
                    reason: Refusal::SecureMessagingOnly,
                });
            }
            Ok(spec)
        })
        .collect()
}

/// The index hashes of a request's card number and SSN, compared with the registry's.
struct RequestHashes {
    card_number: String,
    ssn: String,
}

impl<H: Hsm> Kms<H> {
    /// The index hashes of `checked`'s card number and SSN (two HSM calls, at once).
    async fn request_hashes(&self, checked: &CheckedCard) -> Result<RequestHashes> {
        let keys = self.registry_keys().await?;
        let (number, ssn) = tokio::join!(
            self.index_hashes(
                &keys,
                personal::CARD_NUMBER,
                vec![checked.number.as_str().as_bytes().to_vec()],
            ),
            self.index_hashes(
                &keys,
                personal::SSN,
                vec![checked.ssn.as_str().as_bytes().to_vec()]
            ),
        );
        let (mut number, mut ssn) = (number?, ssn?);
        Ok(RequestHashes {
            card_number: number.pop().ok_or(HsmError::Protocol)?,
            ssn: ssn.pop().ok_or(HsmError::Protocol)?,
        })
    }
}

fn check_releasable(
    card: &Card,
    checked: &CheckedCard,
    hashes: Option<&RequestHashes>,
    template_id: &str,
    release: Release,
) -> Result<()> {
    // Without the hashes (the HSM could not make them) the data are not compared: the caller
    // refuses with the HSM's error unless a check below refuses first.
    if let Some(hashes) = hashes
        && card.personal.card_number_index != hashes.card_number
    {
        return Err(Error::NoMatchingCard {
            detail: "the card number differs from the registry's",
        });
    }
    if let Some(hashes) = hashes
        && card.personal.ssn_index != hashes.ssn
    {
        return Err(Error::NoMatchingCard {
            detail: "the social security number differs from the registry's",
        });
    }
    if card.template_id != template_id {
        return Err(Error::FailedPrecondition {
            reason: Refusal::CardTemplateMismatch,
        });
    }
    lifecycle::check_release(card, release)?;
    // After a first release, only the same chip (ATR) gets keys; checked again in the write.
    match (&card.atr, &checked.atr) {
        (Some(released), Some(atr)) if *released != atr.to_hex() => {
            Err(Error::FailedPrecondition {
                reason: Refusal::AtrMismatch,
            })
        }
        _ => Ok(()),
    }
}
