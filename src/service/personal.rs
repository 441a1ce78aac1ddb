//! The registry's personal data through the HSM (`crate::registry::personal` has the layout):
//! the registry keys (made in the HSM once, kept as tokens in `meta`), index hashes and sealed
//! fields in calls of many values each, and the migration of a store written before the
//! layout, one atomic, audited write per chunk (a re-run finishes it).

use hsm_api::{
    Algorithm, Exportability, Hsm, KeySpec as HsmKeySpec, KeyToken, KeyUsage, REGISTRY_VALUES,
};

use crate::error::{Error, Result};
use crate::registry::batch::StoredBatch;
use crate::registry::personal::{
    self, CARD_NUMBER, ClearPersonal, DATA_KEY, INDEX_KEY, LAYOUT, LAYOUT_VERSION, LegacyCard, SSN,
};
use crate::state::audit::AuditEvent;
use crate::state::records::{Card, Personal};
use crate::state::store::Table;

use super::{Kms, kcv_hex, token};

/// The registry's two keys (tokens).
#[derive(Debug, Clone)]
pub(crate) struct RegistryKeys {
    pub(crate) index: KeyToken,
    pub(crate) data: KeyToken,
}

/// Cards (or pending rows) per migration write.
const MIGRATION_CHUNK: usize = 2048;

/// The audit operation of the migration.
pub(crate) const MIGRATE_OPERATION: &str = "migrate-registry-personal-data";

impl<H: Hsm> Kms<H> {
    /// The registry keys, made in the HSM at first need; and the registry in the current layout
    /// (a store written before is migrated first). Every operation that reads or writes a card
    /// or a batch calls this before it does.
    pub(crate) async fn registry_keys(&self) -> Result<RegistryKeys> {
        let snap = self.store.snapshot()?;
        let keys = match (
            snap.get::<String>(Table::Meta, INDEX_KEY)?,
            snap.get::<String>(Table::Meta, DATA_KEY)?,
        ) {
            (Some(index), Some(data)) => RegistryKeys {
                index: token(&index),
                data: token(&data),
            },
            _ => self.create_registry_keys().await?,
        };
        if snap.get::<u32>(Table::Meta, LAYOUT)? != Some(LAYOUT_VERSION) {
            self.migrate_registry(&keys).await?;
        }
        Ok(keys)
    }

    /// Generates the index and data keys in the HSM (non-exportable) and keeps them, audited
    /// with their KCVs; a pair another request kept first wins.
    async fn create_registry_keys(&self) -> Result<RegistryKeys> {
        let _tokens = self.token_turn().await;
        let mut made = Vec::new();
        for usage in [KeyUsage::RegistryIndex, KeyUsage::RegistryData] {
            made.push(
                self.hsm
                    .generate_key(HsmKeySpec {
                        algorithm: Algorithm::Aes256,
                        usage,
                        exportability: Exportability::NonExportable,
                    })
                    .await?,
            );
        }
        let (index, data) = (
            made[0].token.as_str().to_owned(),
            made[1].token.as_str().to_owned(),
        );
        let (im, ik) = kcv_hex(&made[0].kcv);
        let (dm, dk) = kcv_hex(&made[1].kcv);
        let (index, data) = self
            .store
            .write(move |tx| {
                let (kept, new) = personal::keep_keys(tx, index, data)?;
                if new {
                    tx.audit(AuditEvent::ok(
                        "system",
                        "create-registry-keys",
                        format!(
                            "registry index key KCV {im} {ik}, registry data key KCV {dm} {dk}"
                        ),
                    ));
                }
                Ok(kept)
            })
            .await?;
        Ok(RegistryKeys {
            index: token(&index),
            data: token(&data),
        })
    }

    /// The upper-case hex index hashes of `values` in `domain`, in order (as many HSM calls as
    /// [`REGISTRY_VALUES`] needs).
    pub(crate) async fn index_hashes(
        &self,
        keys: &RegistryKeys,
        domain: &str,
        values: Vec<Vec<u8>>,
    ) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(values.len());
        let mut values = values.into_iter().peekable();
        while values.peek().is_some() {
            let chunk: Vec<Vec<u8>> = values.by_ref().take(REGISTRY_VALUES).collect();
            let hashes = self.hsm.index_hashes(&keys.index, domain, chunk).await?;
            out.extend(hashes.iter().map(|h| personal::index_hex(h)));
        }
        Ok(out)
    }

    /// The stored forms of `clear`, in order: index hashes and sealed fields from the HSM.
    pub(crate) async fn protect(
        &self,
        keys: &RegistryKeys,
        clear: &[ClearPersonal],
    ) -> Result<Vec<Personal>> {
        let ssns = self
            .index_hashes(
                keys,
                SSN,
                clear.iter().map(|c| c.ssn.as_bytes().to_vec()).collect(),
            )
            .await?;
        let numbers = self
            .index_hashes(
                keys,
                CARD_NUMBER,
                clear
                    .iter()
                    .map(|c| c.card_number.as_bytes().to_vec())
                    .collect(),
            )
            .await?;
        self.seal_personal(keys, clear, ssns, numbers).await
    }

    /// The stored forms of `clear` whose index hashes are `ssns` and `numbers` (one each per
    /// card, in order): its fields sealed by the HSM, whole cards per call.
    pub(crate) async fn seal_personal(
        &self,
        keys: &RegistryKeys,
        clear: &[ClearPersonal],
        ssns: Vec<String>,
        numbers: Vec<String>,
    ) -> Result<Vec<Personal>> {
        if ssns.len() != clear.len() || numbers.len() != clear.len() {
            return Err(Error::StoreCorrupt("index hashes"));
        }
        let mut out = Vec::with_capacity(clear.len());
        let mut hashes = ssns.into_iter().zip(numbers);
        // At most 3 fields a card.
        for chunk in clear.chunks(REGISTRY_VALUES / 3) {
            let fields: Vec<_> = chunk.iter().flat_map(ClearPersonal::fields).collect();
            let sealed = self.hsm.seal_fields(&keys.data, fields).await?;
            let mut at = 0;
            for c in chunk {
                let n = if c.name.is_some() { 3 } else { 2 };
                let fields = sealed
                    .get(at..at + n)
                    .ok_or(Error::StoreCorrupt("sealed personal fields"))?;
                let (ssn, number) = hashes.next().ok_or(Error::StoreCorrupt("index hashes"))?;
                out.push(personal::personal(c, ssn, number, fields)?);
                at += n;
            }
        }
        Ok(out)
    }

    /// The clear SSN, card number and name (if kept) of `card`, opened by the HSM.
    pub(crate) async fn open_personal(
        &self,
        keys: &RegistryKeys,
        card: &Card,
    ) -> Result<ClearPersonal> {
        let fields = personal::sealed_fields(&card.card_identifier, &card.personal)?;
        let opened = self.hsm.open_fields(&keys.data, fields).await?;
        let text = |i: usize| -> Result<String> {
            let field = opened
                .get(i)
                .ok_or(Error::StoreCorrupt("opened personal fields"))?;
            String::from_utf8(field.value.clone())
                .map_err(|_| Error::StoreCorrupt("opened personal field"))
        };
        Ok(ClearPersonal {
            card_identifier: card.card_identifier.clone(),
            ssn: text(0)?,
            card_number: text(1)?,
            name: if opened.len() > 2 {
                Some(text(2)?)
            } else {
                None
            },
        })
    }

    /// Migrates a store written before [`LAYOUT_VERSION`]: every card and every pending batch
    /// row sealed and hashed, every index entry keyed by a clear value re-keyed by its hash,
    /// chunk by chunk (each one atomic write with its audit record; a chunk already migrated is
    /// skipped, so a run that stopped half-way is finished by the next), then the layout mark.
    pub(crate) async fn migrate_registry(&self, keys: &RegistryKeys) -> Result<()> {
        let snap = self.store.snapshot()?;
        if snap.get::<u32>(Table::Meta, LAYOUT)? == Some(LAYOUT_VERSION) {
            return Ok(());
        }
        // Cards.
        let legacy: Vec<LegacyCard> = snap
            .scan::<serde_json::Value>(Table::Cards, "")?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_value::<LegacyCard>(v).ok())
            .collect();
        for chunk in legacy.chunks(MIGRATION_CHUNK) {
            let clear: Vec<ClearPersonal> = chunk
                .iter()
                .map(|c| ClearPersonal {
                    card_identifier: c.card_identifier.clone(),
                    ssn: c.social_security_number.clone(),
                    card_number: c.card_number.clone(),
                    name: None,
                })
                .collect();
            let protected = self.protect(keys, &clear).await?;
            let chunk = chunk.to_vec();
            self.store
                .write(move |tx| {
                    let mut moved = 0u64;
                    for (old, personal) in chunk.into_iter().zip(protected) {
                        // Skipped if a run before this one migrated it.
                        let Some(still) =
                            tx.get::<serde_json::Value>(Table::Cards, &old.card_identifier)?
                        else {
                            continue;
                        };
                        if serde_json::from_value::<LegacyCard>(still).is_err() {
                            continue;
                        }
                        let mut fields = old.rest;
                        fields.insert("card_identifier".into(), old.card_identifier.clone().into());
                        fields.insert(
                            "personal".into(),
                            serde_json::to_value(&personal)
                                .map_err(|_| Error::StoreCorrupt("encode"))?,
                        );
                        let card: Card = serde_json::from_value(serde_json::Value::Object(fields))
                            .map_err(|_| Error::StoreCorrupt("legacy card"))?;
                        tx.put(Table::Cards, &card.card_identifier, &card)?;
                        moved += 1;
                    }
                    tx.audit(AuditEvent::ok(
                        "system",
                        MIGRATE_OPERATION,
                        format!("{moved} cards: personal data sealed, index hashes computed"),
                    ));
                    Ok(())
                })
                .await?;
        }
        // Pending rows of batches, one batch per write.
        for (id, batch) in snap.scan::<serde_json::Value>(Table::ApplicantBatches, "")? {
            self.migrate_batch(keys, id, batch).await?;
        }
        self.migrate_indexes(keys).await
    }

    /// The pending rows of one batch record written before the layout, sealed and hashed.
    async fn migrate_batch(
        &self,
        keys: &RegistryKeys,
        id: String,
        mut batch: serde_json::Value,
    ) -> Result<()> {
        let Some(rejections) = batch.get_mut("rejections").and_then(|r| r.as_array_mut()) else {
            return Ok(());
        };
        let mut at = Vec::new();
        let mut clear = Vec::new();
        for (i, r) in rejections.iter().enumerate() {
            if let Some(p) = r.get("pending")
                && let (Some(id), Some(number), Some(ssn)) = (
                    p.get("card_identifier").and_then(|v| v.as_str()),
                    p.get("card_number").and_then(|v| v.as_str()),
                    p.get("social_security_number").and_then(|v| v.as_str()),
                )
            {
                at.push(i);
                clear.push(ClearPersonal {
                    card_identifier: id.to_owned(),
                    ssn: ssn.to_owned(),
                    card_number: number.to_owned(),
                    name: None,
                });
            }
        }
        if clear.is_empty() {
            return Ok(());
        }
        let protected = self.protect(keys, &clear).await?;
        for (i, personal) in at.into_iter().zip(protected) {
            if let Some(p) = rejections[i]
                .get_mut("pending")
                .and_then(|p| p.as_object_mut())
            {
                p.remove("card_number");
                p.remove("social_security_number");
                p.insert(
                    "personal".into(),
                    serde_json::to_value(&personal).map_err(|_| Error::StoreCorrupt("encode"))?,
                );
            }
        }
        let migrated: StoredBatch =
            serde_json::from_value(batch).map_err(|_| Error::StoreCorrupt("legacy batch"))?;
        let rows = clear.len();
        self.store
            .write(move |tx| {
                // Skipped if a run before this one migrated it.
                let still = tx.get::<serde_json::Value>(Table::ApplicantBatches, &id)?;
                let legacy =
                    still.is_some_and(|b| b.to_string().contains("\"social_security_number\""));
                if legacy {
                    tx.put(Table::ApplicantBatches, &id, &migrated)?;
                    tx.audit(AuditEvent::ok(
                        "system",
                        MIGRATE_OPERATION,
                        format!("batch {id}: {rows} pending rows sealed, index hashes computed"),
                    ));
                }
                Ok(())
            })
            .await
    }

    /// Every `card_numbers` and `ssns` entry keyed by a clear value, re-keyed by its hash (chunk
    /// by chunk); then the layout mark, audited.
    async fn migrate_indexes(&self, keys: &RegistryKeys) -> Result<()> {
        let snap = self.store.snapshot()?;
        let clear_keyed = |table: Table| -> Result<Vec<(String, String)>> {
            Ok(snap
                .scan::<String>(table, "")?
                .into_iter()
                .filter(|(k, _)| !is_index_key(k))
                .collect())
        };
        let numbers = clear_keyed(Table::CardNumbers)?;
        let ssns = clear_keyed(Table::SocialSecurityNumbers)?;
        for (table, domain, entries) in [
            (Table::CardNumbers, CARD_NUMBER, numbers),
            (Table::SocialSecurityNumbers, SSN, ssns),
        ] {
            for chunk in entries.chunks(MIGRATION_CHUNK) {
                // `<ssn>/<generation>` or a bare SSN; a card number is bare.
                let split: Vec<(String, String)> = chunk
                    .iter()
                    .map(|(k, _)| match k.split_once('/') {
                        Some((v, rest)) => (v.to_owned(), format!("/{rest}")),
                        None => (k.clone(), String::new()),
                    })
                    .collect();
                let hashes = self
                    .index_hashes(
                        keys,
                        domain,
                        split.iter().map(|(v, _)| v.as_bytes().to_vec()).collect(),
                    )
                    .await?;
                let moves: Vec<(String, String, String)> = chunk
                    .iter()
                    .zip(split)
                    .zip(hashes)
                    .map(|(((old, card), (_, suffix)), hash)| {
                        (old.clone(), format!("{hash}{suffix}"), card.clone())
                    })
                    .collect();
                self.store
                    .write(move |tx| {
                        let mut moved = 0u64;
                        for (old, new, card) in moves {
                            if tx.get::<String>(table, &old)?.is_none() {
                                continue;
                            }
                            tx.delete(table, &old)?;
                            tx.put(table, &new, &card)?;
                            moved += 1;
                        }
                        tx.audit(AuditEvent::ok(
                            "system",
                            MIGRATE_OPERATION,
                            format!("{moved} {} entries re-keyed by index hash", table.name()),
                        ));
                        Ok(())
                    })
                    .await?;
            }
        }
        self.store
            .write(|tx| {
                if tx.get::<u32>(Table::Meta, LAYOUT)? != Some(LAYOUT_VERSION) {
                    tx.put(Table::Meta, LAYOUT, &LAYOUT_VERSION)?;
                    tx.audit(AuditEvent::ok(
                        "system",
                        MIGRATE_OPERATION,
                        format!("registry layout {LAYOUT_VERSION}: no personal data in clear"),
                    ));
                }
                Ok(())
            })
            .await
    }
}

/// Whether an index table's key is an index hash (64 upper-case hex digits, then `/…` or
/// nothing) rather than a clear value.
fn is_index_key(key: &str) -> bool {
    let hash = key.split_once('/').map_or(key, |(h, _)| h);
    hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
}
