//! Security officers: unsealing the HSM, templates, roots, the hierarchy, vendor transport keys,
//! stations and PSAM lines with their transport keys, key records and status.

use std::sync::Arc;

use hsm_api::Algorithm;
use hsm_api::Factor;
use hsm_api::{Exportability, Hsm, KeySpec as HsmKeySpec};
use zeroize::Zeroizing;

use crate::access::authz::Operation;
use crate::access::identity::Identity;
use crate::card::region::Region;
use crate::card::template::{KeyRoot, KeySpec, Template};
use crate::error::{Error, Refusal, Resource, Result};
use crate::state::audit::{self, AuditCheckpoint, AuditEvent};
use crate::state::records::{
    self, Endpoint, EndpointKind, KeyRecord, Level, NATIONAL, StoredTemplate,
};
use crate::state::store::Table;

use super::components::CeremonyTarget;
use super::{
    Kms, PROVINCE, active_key, hierarchy_usage, hsm_state_name, is_master_key, kcv_hex, token,
};

/// A clear component as an officer typed it, with its KCV from paper (hex). Its `Debug` shows
/// the KCV only.
pub struct ComponentInput {
    pub hex: Zeroizing<String>,
    pub kcv_hex: String,
}

impl std::fmt::Debug for ComponentInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentInput")
            .field("kcv_hex", &self.kcv_hex)
            .finish_non_exhaustive()
    }
}

/// Service status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub hsm_state: String,
    pub hsm_is_secure: bool,
    pub hsm_dangerous_test_lmk: bool,
    pub audit_records: u64,
    pub templates: Vec<String>,
}

impl<H: Hsm> Kms<H> {
    /// One custodian's share towards unsealing the HSM; at the threshold the HSM is operational
    /// (and the audit key is created if this is the first time).
    ///
    /// Audited in step with the HSM: the submission is on record (durable) before the share
    /// reaches the HSM, so no unseal happens unrecorded; the HSM's answer, and at the threshold
    /// the new audit key, are one commit; then the chain head is sealed at once with the key.
    pub async fn unseal_hsm(
        &self,
        caller: &Identity,
        share: Zeroizing<String>,
    ) -> Result<hsm_api::UnsealProgress> {
        let actor = caller.to_string();
        let progress = self
            .audited(caller, Operation::Administer, "unseal-hsm", async {
                self.admit_officer(caller, Operation::Administer)?;
                // One share per custodian identity: the HSM's own count says whether an unseal
                // is under way (none: the custodians of an earlier one are forgotten).
                let before = self.hsm.status().await?.unseal.map_or(0, |p| p.submitted);
                {
                    let mut custodians = self
                        .ceremony
                        .unseal_custodians
                        .lock()
                        .map_err(|_| Error::Store)?;
                    if before == 0 {
                        custodians.clear();
                    }
                    if custodians.contains(&actor) {
                        return Err(Error::PermissionDenied {
                            reason: Refusal::SameCustodianTwice,
                        });
                    }
                }
                self.store
                    .audit(vec![AuditEvent::ok(
                        actor.clone(),
                        "unseal-hsm-submit",
                        "a custodian's share goes to the HSM",
                    )])
                    .await?;
                let progress = self.hsm.unseal(hsm_api::LmkShare::new(share)).await?;
                let mut custodians = self
                    .ceremony
                    .unseal_custodians
                    .lock()
                    .map_err(|_| Error::Store)?;
                if progress.unsealed {
                    custodians.clear();
                } else if progress.submitted > before {
                    custodians.push(actor.clone());
                }
                Ok(progress)
            })
            .await?;
        // The HSM's state has changed: what follows is recorded whatever happens next.
        let summary = |note: &str| {
            format!(
                "share accepted: {}/{}{}{note}",
                progress.submitted,
                progress.threshold,
                if progress.unsealed {
                    ", HSM operational"
                } else {
                    ""
                }
            )
        };
        let record = |note: &str| AuditEvent::ok(actor.clone(), "unseal-hsm", summary(note));
        if progress.unsealed && !self.load_audit_key()? {
            // The first time: the audit key is created and stored in the same commit as the
            // unseal's record, and seals it.
            if let Err(e) = self.create_audit_key(vec![record("")]).await {
                tracing::error!(error = %e, "the HSM is unsealed but the audit key was not created");
                self.store
                    .audit(vec![record(
                        "; the audit key could not be created (see the log)",
                    )])
                    .await?;
                return Err(e);
            }
        } else {
            self.store.audit(vec![record("")]).await?;
        }
        Ok(progress)
    }

    // ------------------------------------------------------------------ administration

    /// Loads a card template (or a newer revision of one). A new revision of a base is checked,
    /// in the same commit that stores it, against every stored city extension of that base:
    /// one that no longer extends it refuses the load (it would otherwise stop the next start),
    /// and the extensions' merged templates follow the new base at once.
    pub async fn load_template(&self, caller: &Identity, toml: &str) -> Result<Arc<Template>> {
        self.audited(caller, Operation::Administer, "load-template", async {
            self.admit_officer(caller, Operation::Administer)?;
            let parsed = Template::parse(toml)?;
            let effective = match parsed.extends() {
                Some(base) => Template::extend(&*self.template(base)?, &parsed)?,
                None => parsed.clone(),
            };
            let stored = StoredTemplate {
                id: parsed.id().to_owned(),
                version: parsed.version(),
                toml: toml.to_owned(),
            };
            let actor = caller.to_string();
            let subject = format!("template {} revision {}", stored.id, stored.version);
            let merged = self
                .store
                .write(move |tx| {
                    let old = tx.get::<StoredTemplate>(Table::Templates, &stored.id)?;
                    if old.is_some_and(|old| old.version >= stored.version) {
                        return Err(Error::FailedPrecondition {
                            reason: Refusal::TemplateRevisionNotNewer,
                        });
                    }
                    let merged = match parsed.extends() {
                        Some(_) => Vec::new(),
                        None => extensions_over(tx, &parsed)?,
                    };
                    tx.put(Table::Templates, &stored.id, &stored)?;
                    tx.audit(AuditEvent::ok(actor, "load-template", subject));
                    Ok(merged)
                })
                .await?;
            let effective = Arc::new(effective);
            let mut templates = self.templates.write().map_err(|_| Error::Store)?;
            templates.insert(effective.id().to_owned(), Arc::clone(&effective));
            for t in merged {
                templates.insert(t.id().to_owned(), Arc::new(t));
            }
            Ok(effective)
        })
        .await
    }

    /// A hierarchy root from every component in one call: only for code of this process (the
    /// `dev` seeding of the published test keys). Officers form a root in a component ceremony,
    /// one component per custodian ([`Kms::start_key_ceremony`]).
    pub async fn import_root_key(
        &self,
        caller: &Identity,
        template_id: &str,
        key_name: &str,
        level: Level,
        components: Vec<ComponentInput>,
        ministry_psam_permission: bool,
    ) -> Result<KeyRecord> {
        let target = CeremonyTarget::Root {
            template_id: template_id.to_owned(),
            key_name: key_name.to_owned(),
            level,
            psam_permitted: ministry_psam_permission,
        };
        self.form_in_process(caller, target, components).await?;
        let region = self.root_region(template_id, key_name, level)?;
        active_key(
            &self.store.snapshot()?,
            template_id,
            key_name,
            level,
            region,
        )?
        .ok_or(Error::Store)
    }

    /// Every component in one call, for code of this process: a ceremony whose custodians are
    /// all the caller.
    async fn form_in_process(
        &self,
        caller: &Identity,
        target: CeremonyTarget,
        components: Vec<ComponentInput>,
    ) -> Result<()> {
        let subject = self.check_target(&target).unwrap_or_default();
        self.audited(caller, Operation::Administer, &subject, async {
            self.admit_officer(caller, Operation::Administer)?;
            super::custodians::in_process_only(caller, Refusal::SplitKnowledgeRequired)?;
            let _tokens = self.token_turn().await;
            self.form_all_at_once(caller, target, components).await
        })
        .await
    }

    /// The province's own root of a key (e.g. the card master key), generated in the HSM, in
    /// one call: only for code of this process (the `dev` seeding). Officers generate a root
    /// under dual control ([`Act::GenerateRoot`](super::custodians::Act)).
    pub async fn generate_root_key(
        &self,
        caller: &Identity,
        template_id: &str,
        key_name: &str,
    ) -> Result<KeyRecord> {
        let subject = format!("{template_id}/{key_name} provincial root");
        self.audited(caller, Operation::Administer, &subject, async {
            self.admit_officer(caller, Operation::Administer)?;
            super::custodians::in_process_only(caller, Refusal::DualControlRequired)?;
            let _tokens = self.token_turn().await;
            let record = self.generated_root(template_id, key_name).await?;
            let actor = caller.to_string();
            self.store
                .write(move |tx| put_new_version(tx, record, actor, ""))
                .await
        })
        .await
    }

    /// Checks that `key_name` of `template_id` is a key whose root the province generates.
    pub(super) fn check_generated_root(
        &self,
        template_id: &str,
        key_name: &str,
    ) -> Result<(Arc<Template>, KeySpec)> {
        let template = self.template(template_id)?;
        let spec = template
            .key(key_name)
            .ok_or(Error::NotFound {
                what: Resource::TemplateKey,
            })?
            .clone();
        self.check_owned(&spec)?;
        if spec.root != KeyRoot::Provincial {
            return Err(Error::FailedPrecondition {
                reason: Refusal::RootNotProvincial,
            });
        }
        Ok((template, spec))
    }

    /// A new provincial root generated in the HSM, as a record not yet stored.
    pub(super) async fn generated_root(
        &self,
        template_id: &str,
        key_name: &str,
    ) -> Result<KeyRecord> {
        let (template, spec) = self.check_generated_root(template_id, key_name)?;
        let alg = spec.hsm_algorithm();
        let master = is_master_key(&template, &spec);
        let wrapped = self
            .hsm
            .generate_key(HsmKeySpec {
                algorithm: alg,
                usage: hierarchy_usage(master, Level::Province)?,
                exportability: hierarchy_exportability(&spec, master),
            })
            .await?;
        Ok(new_key_record(
            template.id(),
            key_name,
            Level::Province,
            PROVINCE,
            alg,
            &wrapped,
        ))
    }

    /// Derives the provincial and city keys of every key of a template from its active roots.
    /// Keys already derived for a root version are left as they are.
    pub async fn derive_hierarchy(
        &self,
        caller: &Identity,
        template_id: &str,
    ) -> Result<Vec<KeyRecord>> {
        let subject = format!("template {template_id}");
        self.audited(caller, Operation::Administer, &subject, async {
            self.admit_officer(caller, Operation::Administer)?;
            let template = self.template(template_id)?;
            let province = Region::lookup(PROVINCE)?;
            let f1 = Factor::province(PROVINCE)?;
            let _tokens = self.token_turn().await;
            // Nothing is written until every key is derived: one view serves the whole walk.
            let snap = self.store.snapshot()?;
            let mut new = Vec::new();
            for spec in template.keys() {
                let master = is_master_key(&template, spec);
                let national =
                    active_key(&snap, template.id(), &spec.name, Level::National, NATIONAL)?;
                let provincial =
                    active_key(&snap, template.id(), &spec.name, Level::Province, PROVINCE)?;
                // The provincial key of the newest national root, derived if not yet held.
                let provincial = match (national, provincial) {
                    (Some(n), p) if p.as_ref().is_none_or(|p| p.version < n.version) => {
                        let r = self
                            .derive_level(&n, spec, master, &f1, Level::Province, PROVINCE)
                            .await?;
                        new.push(r.clone());
                        r
                    }
                    (_, Some(p)) => p,
                    _ => continue,
                };
                for city in province.cities() {
                    let id = records::key_id(
                        template.id(),
                        &spec.name,
                        Level::City,
                        city.code,
                        provincial.version,
                    );
                    if snap.get::<KeyRecord>(Table::Keys, &id)?.is_some() {
                        continue;
                    }
                    let f2 = Factor::city(city.code)?;
                    new.push(
                        self.derive_level(&provincial, spec, master, &f2, Level::City, city.code)
                            .await?,
                    );
                }
            }
            let actor = caller.to_string();
            let records = new.clone();
            let summary = format!("template {}: {} keys derived", template.id(), new.len());
            self.store
                .write(move |tx| {
                    let now = tx.now_ms();
                    for mut r in records {
                        // The new version becomes the active one of its (key, level, region).
                        let prefix =
                            records::key_prefix(&r.template_id, &r.key_name, r.level, &r.region);
                        for (id, mut old) in tx.scan::<KeyRecord>(Table::Keys, &prefix)? {
                            if old.active && old.version < r.version {
                                old.active = false;
                                tx.put(Table::Keys, &id, &old)?;
                            }
                        }
                        r.created_ms = now;
                        tx.put(Table::Keys, &r.id(), &r)?;
                    }
                    tx.audit(AuditEvent::ok(actor, "derive-hierarchy", summary));
                    Ok(())
                })
                .await?;
            Ok(new)
        })
        .await
    }

    /// The key one level below `parent` for `spec`: D(parent, factor), recorded at `level` and
    /// `region` with the parent's root version. Its exportability is the HSM's: the parent's.
    async fn derive_level(
        &self,
        parent: &KeyRecord,
        spec: &KeySpec,
        master: bool,
        factor: &Factor,
        level: Level,
        region: &str,
    ) -> Result<KeyRecord> {
        let child = self
            .hsm
            .derive_key(
                &token(&parent.token),
                spec.dispersion,
                std::slice::from_ref(factor),
                hierarchy_usage(master, level)?,
            )
            .await?;
        let (method, kcv) = kcv_hex(&child.kcv);
        Ok(KeyRecord {
            template_id: parent.template_id.clone(),
            key_name: parent.key_name.clone(),
            level,
            region: region.to_owned(),
            version: parent.version,
            algorithm: parent.algorithm.clone(),
            token: child.token.as_str().to_owned(),
            kcv_method: method,
            kcv,
            active: true,
            created_ms: 0,
            psam_permitted: false,
        })
    }

    /// A blank-card vendor transport key of a template, from every component in one call:
    /// only for code of this process (as [`Kms::import_root_key`]).
    pub async fn import_vendor_transport_key(
        &self,
        caller: &Identity,
        template_id: &str,
        components: Vec<ComponentInput>,
    ) -> Result<KeyRecord> {
        let target = CeremonyTarget::VendorTransport {
            template_id: template_id.to_owned(),
        };
        self.form_in_process(caller, target, components).await?;
        active_key(
            &self.store.snapshot()?,
            template_id,
            records::VENDOR_TRANSPORT,
            Level::Province,
            PROVINCE,
        )?
        .ok_or(Error::Store)
    }

    /// Registers a station or a PSAM line with its transport key from every component in one
    /// call: only for code of this process (as [`Kms::import_root_key`]).
    pub async fn register_endpoint(
        &self,
        caller: &Identity,
        kind: EndpointKind,
        name: &str,
        region: &str,
        transport_family: &str,
        components: Vec<ComponentInput>,
    ) -> Result<Endpoint> {
        let target = CeremonyTarget::Endpoint {
            kind,
            name: name.to_owned(),
            region: region.to_owned(),
            transport_family: transport_family.to_owned(),
        };
        self.form_in_process(caller, target, components).await?;
        self.store
            .snapshot()?
            .get(Table::Endpoints, &records::endpoint_id(kind, name))?
            .ok_or(Error::Store)
    }

    /// The key records of a template (tokens and KCVs, never values).
    pub async fn list_keys(&self, caller: &Identity, template_id: &str) -> Result<Vec<KeyRecord>> {
        let subject = format!("template {template_id}");
        self.audited(caller, Operation::Administer, &subject, async {
            self.admit_officer(caller, Operation::Administer)?;
            let keys: Vec<(String, KeyRecord)> = self
                .store
                .snapshot()?
                .scan(Table::Keys, &format!("{template_id}/"))?;
            Ok(keys.into_iter().map(|(_, r)| r).collect())
        })
        .await
    }

    /// The audit chain's head now, MACed by the HSM's audit key: an anchor for an auditor to
    /// keep outside the store. Taking it is recorded (after the head it covers).
    pub async fn audit_checkpoint(&self, caller: &Identity) -> Result<AuditCheckpoint> {
        self.audited(
            caller,
            Operation::AuditCheckpoint,
            "audit checkpoint",
            async {
                self.admit_officer(caller, Operation::AuditCheckpoint)?;
                let key = self.sealer.key().ok_or(Error::FailedPrecondition {
                    reason: Refusal::NoAuditKeyYet,
                })?;
                let head = self
                    .store
                    .snapshot()?
                    .audit_head()?
                    .filter(|h| h.next_seq > 1)
                    .ok_or(Error::FailedPrecondition {
                        reason: Refusal::AuditTrailEmpty,
                    })?;
                let seq = head.next_seq - 1;
                let time_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    .unwrap_or(0);
                let mac = self
                    .hsm
                    .mac(
                        &key,
                        &audit::checkpoint_message(seq, &head.last_hash, time_ms),
                    )
                    .await?;
                let checkpoint = AuditCheckpoint {
                    seq,
                    head: hex::encode_upper(head.last_hash),
                    time_ms,
                    mac: hex::encode_upper(mac),
                };
                self.store
                    .audit(vec![AuditEvent::ok(
                        caller.to_string(),
                        Operation::AuditCheckpoint.name(),
                        format!("checkpoint of record {seq}"),
                    )])
                    .await?;
                Ok(checkpoint)
            },
        )
        .await
    }

    /// What the service and its HSM say about themselves.
    pub async fn status(&self, caller: &Identity) -> Result<Status> {
        self.audited(caller, Operation::GetStatus, "service status", async {
            self.admit_officer(caller, Operation::GetStatus)?;
            let hsm = self.hsm.status().await?;
            let mut templates: Vec<String> = self
                .templates
                .read()
                .map_err(|_| Error::Store)?
                .keys()
                .cloned()
                .collect();
            templates.sort();
            Ok(Status {
                hsm_state: hsm_state_name(hsm.state).to_owned(),
                hsm_is_secure: self.hsm.is_secure(),
                hsm_dangerous_test_lmk: hsm.dangerous_test_lmk,
                audit_records: self.store.snapshot()?.audit_len()?,
                templates,
            })
        })
        .await
    }
}

/// The record of a new root version (its version and time are set when it is stored).
pub(super) fn new_key_record(
    template_id: &str,
    key_name: &str,
    level: Level,
    region: &str,
    alg: Algorithm,
    wrapped: &hsm_api::WrappedKey,
) -> KeyRecord {
    let (method, kcv) = kcv_hex(&wrapped.kcv);
    KeyRecord {
        template_id: template_id.to_owned(),
        key_name: key_name.to_owned(),
        level,
        region: region.to_owned(),
        version: 0,
        algorithm: alg.name().to_owned(),
        token: wrapped.token.as_str().to_owned(),
        kcv_method: method,
        kcv,
        active: true,
        created_ms: 0,
        psam_permitted: false,
    }
}

/// Stores `record` as the next, active, version of its key in `tx`, with its audit record
/// (`note` appended to the subject: who took part in the ceremony).
pub(super) fn put_new_version(
    tx: &mut crate::state::store::Tx<'_>,
    mut record: KeyRecord,
    actor: String,
    note: &str,
) -> Result<KeyRecord> {
    let prefix = records::key_prefix(
        &record.template_id,
        &record.key_name,
        record.level,
        &record.region,
    );
    let existing: Vec<(String, KeyRecord)> = tx.scan(Table::Keys, &prefix)?;
    record.version = existing.iter().map(|(_, r)| r.version).max().unwrap_or(0) + 1;
    record.created_ms = tx.now_ms();
    for (id, mut old) in existing {
        if old.active {
            old.active = false;
            tx.put(Table::Keys, &id, &old)?;
        }
    }
    tx.put(Table::Keys, &record.id(), &record)?;
    tx.audit(AuditEvent::ok(
        actor,
        "store-root-key",
        format!(
            "{} v{} KCV {} {}{}{note}",
            record.id(),
            record.version,
            record.kcv_method,
            record.kcv,
            if record.psam_permitted {
                ", with the Ministry's permission for PSAM use"
            } else {
                ""
            }
        ),
    ));
    Ok(record)
}

/// Every stored city extension of `base`, merged over it; refuses if one no longer extends it.
fn extensions_over(tx: &crate::state::store::Tx<'_>, base: &Template) -> Result<Vec<Template>> {
    let mut merged = Vec::new();
    for (_, stored) in tx.scan::<StoredTemplate>(Table::Templates, "")? {
        let ext = Template::parse(&stored.toml)?;
        if ext.extends() != Some(base.id()) {
            continue;
        }
        match Template::extend(base, &ext) {
            Ok(t) => merged.push(t),
            Err(e) => {
                tracing::warn!(
                    extension = ext.id(),
                    error = %e,
                    "a new base revision refused: a stored extension does not extend it"
                );
                return Err(Error::FailedPrecondition {
                    reason: Refusal::ExtensionOfOtherRevision,
                });
            }
        }
    }
    Ok(merged)
}

/// Hierarchy keys leave the HSM under a PSAM line's transport key only if a shipped PSAM
/// profile holds them (never a card master key or a provincial-root key; a maintenance key only
/// where a profile takes maintenance keys); all others are non-exportable. (A master key's
/// hierarchy never does in any case: the HSM refuses an exportable one.)
pub(super) fn hierarchy_exportability(spec: &KeySpec, master: bool) -> Exportability {
    if !master && crate::card::profile::psam::builtin_profiles_hold(spec) {
        Exportability::Exportable
    } else {
        Exportability::NonExportable
    }
}

/// Stores a station's or line's endpoint with its new transport key, with its audit record.
pub(super) fn put_endpoint(
    tx: &mut crate::state::store::Tx<'_>,
    endpoint: Endpoint,
    actor: String,
    note: &str,
) -> Result<()> {
    let id = records::endpoint_id(endpoint.kind, &endpoint.name);
    let replaced = tx.get::<Endpoint>(Table::Endpoints, &id)?.is_some();
    tx.put(Table::Endpoints, &id, &endpoint)?;
    tx.audit(AuditEvent::ok(
        actor,
        "register-endpoint",
        format!(
            "{id} region {} transport {} KCV {} {}{}{note}",
            endpoint.region,
            endpoint.transport_algorithm,
            endpoint.transport_kcv_method,
            endpoint.transport_kcv,
            if replaced {
                " (replaces the previous key)"
            } else {
                ""
            }
        ),
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use zeroize::Zeroizing;

    use super::ComponentInput;

    #[test]
    fn a_component_prints_its_kcv_and_never_its_value() {
        let c = ComponentInput {
            hex: Zeroizing::new("0123456789ABCDEFFEDCBA9876543210".to_owned()),
            kcv_hex: "D2B91C".to_owned(),
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("D2B91C"), "{shown}");
        assert!(!shown.contains("0123456789ABCDEF"), "{shown}");
    }
}
