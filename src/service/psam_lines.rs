//! PSAM production lines: registering PSAMs with their PSAM profile, and their key sets as the
//! profile gives them (each key at the level of its usage byte, under its PSAM key id).

use hsm_api::Algorithm;
use hsm_api::Hsm;
use hsm_api::{BatchDelivery, BatchItem, BatchOutput, Error as HsmError, KeySource};

use crate::access::authz::{self, Operation};
use crate::access::identity::Identity;
use crate::card::profile::{PsamProfile, Serves};
use crate::card::region::{self, Region};
use crate::error::{Error, Refusal, Resource, Result};
use crate::metrics::ReleaseLabels;
use crate::state::audit::AuditEvent;
use crate::state::records::{EndpointKind, Level, NATIONAL, Psam};
use crate::state::store::Table;

use super::stations::PsamSlot;
use super::{Delivered, DeliveredForm, Kms, active_key, block_version, check_wrappable, token};

/// A PSAM key set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsamKeySet {
    pub serial: String,
    pub psam_profile: String,
    pub keys: Vec<Delivered>,
    pub omitted: Vec<(String, String)>,
}

/// The PSAM profile `id` (or, if empty, the default of the region) for PSAMs of `region`.
fn psam_profile(id: &str, region: &Region) -> Result<PsamProfile> {
    let serves = if region.is_city() {
        Serves::City
    } else {
        Serves::Province
    };
    let id = if id.is_empty() {
        PsamProfile::default_for(serves)
    } else {
        id
    };
    let profile = PsamProfile::builtin(id).ok_or(Error::NotFound {
        what: Resource::PsamProfile,
    })??;
    if profile.serves() != serves {
        return Err(Error::InvalidArgument {
            field: "psam_profile",
            reason: Refusal::PsamProfileRegion,
        });
    }
    Ok(profile)
}

impl<H: Hsm> Kms<H> {
    // ------------------------------------------------------------------ PSAM lines

    /// Registers a batch of PSAMs for the calling line.
    pub async fn register_psams(
        &self,
        caller: &Identity,
        serials: Vec<String>,
        region: &str,
        template_id: &str,
        psam_profile_id: &str,
    ) -> Result<u32> {
        let subject = format!("{} PSAMs for {region}", serials.len());
        self.audited(caller, Operation::RegisterPsams, &subject, async {
            authz::authorize(caller, Operation::RegisterPsams)?;
            let target = region::Region::lookup_field("region", region)?;
            authz::authorize_region(caller, target.code)?;
            self.template(template_id)?;
            let profile = psam_profile(psam_profile_id, target)?.id().to_owned();
            Self::endpoint(&self.store.snapshot()?, EndpointKind::PsamLine, caller)?;
            if serials.is_empty() || serials.len() > 10_000 {
                return Err(Error::InvalidArgument {
                    field: "serials",
                    reason: Refusal::SerialCount,
                });
            }
            for s in &serials {
                if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(Error::InvalidArgument {
                        field: "serials",
                        reason: Refusal::SerialMalformed,
                    });
                }
            }
            let line = caller.name().to_owned();
            let region = target.code.to_owned();
            let template_id = template_id.to_owned();
            let actor = caller.to_string();
            let count = u32::try_from(serials.len()).unwrap_or(u32::MAX);
            self.store
                .write(move |tx| {
                    let mut seen = std::collections::HashSet::new();
                    for s in &serials {
                        if !seen.insert(s.as_str()) || tx.get::<Psam>(Table::Psams, s)?.is_some() {
                            return Err(Error::AlreadyExists {
                                what: Resource::PsamSerial,
                            });
                        }
                    }
                    let now = tx.now_ms();
                    for s in &serials {
                        let psam = Psam {
                            serial: s.clone(),
                            line: line.clone(),
                            region: region.clone(),
                            template_id: template_id.clone(),
                            psam_profile: profile.clone(),
                            releases: 0,
                            created_ms: now,
                        };
                        tx.put(Table::Psams, s, &psam)?;
                    }
                    tx.audit(AuditEvent::ok(
                        actor,
                        Operation::RegisterPsams.name(),
                        format!(
                            "{} PSAMs for {region}, template {template_id}, PSAM profile {profile}",
                            serials.len()
                        ),
                    ));
                    Ok(count)
                })
                .await
        })
        .await
    }

    /// The key set of one registered PSAM, each key at its usage byte's level.
    pub async fn psam_key_set(&self, caller: &Identity, serial: &str) -> Result<PsamKeySet> {
        let subject = format!("PSAM {serial}");
        self.audited(caller, Operation::GetPsamKeySet, &subject, async {
            authz::authorize(caller, Operation::GetPsamKeySet)?;
            let snap = self.store.snapshot()?;
            let psam: Psam = snap.get(Table::Psams, serial)?.ok_or(Error::NotFound {
                what: Resource::Psam,
            })?;
            if psam.line != caller.name() {
                return Err(Error::PermissionDenied {
                    reason: Refusal::PsamOfAnotherLine,
                });
            }
            authz::authorize_region(caller, &psam.region)?;
            let line = Self::endpoint(&snap, EndpointKind::PsamLine, caller)?;
            let template = self.template(&psam.template_id)?;
            let kbpk = token(&line.transport_token);
            let version = block_version(Algorithm::from_name(&line.transport_algorithm)?)?;
            let psam_region = Region::lookup_field("region", &psam.region)?;
            let profile = psam_profile(&psam.psam_profile, psam_region)?;
            let (held, refused) = profile.key_set(&template);
            let mut items = Vec::new();
            let mut released = Vec::new();
            let mut omitted = refused;
            for pk in held {
                let (level, region) = match pk.level() {
                    Level::City => (Level::City, psam_region.code),
                    Level::Province => (Level::Province, psam_region.province().code),
                    Level::National => (Level::National, NATIONAL),
                    Level::Card => {
                        omitted.push((
                            pk.key.name.clone(),
                            "a level-0 key is a card's own key: no PSAM gets it from the province"
                                .to_owned(),
                        ));
                        continue;
                    }
                };
                let Some(record) = active_key(&snap, template.id(), &pk.key.name, level, region)?
                else {
                    omitted.push((
                        pk.key.name.clone(),
                        if level == Level::National {
                            "the province does not hold this national key"
                        } else {
                            "the key hierarchy is not derived"
                        }
                        .to_owned(),
                    ));
                    continue;
                };
                // A national-level key goes into a PSAM only with the Ministry's permission,
                // recorded when its root was imported (DOMAIN.md §11).
                if level == Level::National && !record.psam_permitted {
                    omitted.push((
                        pk.key.name.clone(),
                        "the national root was imported without the Ministry's permission for \
                         PSAM use"
                            .to_owned(),
                    ));
                    continue;
                }
                check_wrappable(version, pk.key.hsm_algorithm())?;
                items.push(BatchItem {
                    key: KeySource::Token(token(&record.token)),
                    delivery: BatchDelivery::Export {
                        kbpk: kbpk.clone(),
                        version,
                    },
                });
                released.push((pk, level, record.version));
            }
            // The whole set in one HSM call.
            let outputs = self.batch(caller, items).await?;
            let mut keys = Vec::with_capacity(released.len());
            for ((pk, level, root_version), output) in released.into_iter().zip(outputs) {
                let BatchOutput::Exported(exported) = output? else {
                    return Err(HsmError::Protocol.into());
                };
                keys.push(Delivered {
                    key_name: pk.key.name.clone(),
                    directory: pk.key.directory.clone(),
                    key_id: pk.key.key_id,
                    key_version: pk.key.key_version,
                    algorithm: pk.key.hsm_algorithm(),
                    kcv: exported.kcv,
                    level,
                    root_version,
                    form: DeliveredForm::Tr31(exported.block),
                    psam: Some(PsamSlot {
                        usage: pk.entry.usage.value.byte(),
                        key_id: pk.entry.psam_key_id.value,
                        key_version: pk.entry.psam_key_version.value,
                    }),
                });
            }
            let serial_owned = serial.to_owned();
            let actor = caller.to_string();
            let summary = keys
                .iter()
                .map(|d| format!("{}:{}:v{}:{}", d.key_name, d.level, d.root_version, d.kcv))
                .collect::<Vec<_>>()
                .join(",");
            self.store
                .write(move |tx| {
                    let mut psam: Psam =
                        tx.get(Table::Psams, &serial_owned)?
                            .ok_or(Error::NotFound {
                                what: Resource::Psam,
                            })?;
                    psam.releases += 1;
                    tx.put(Table::Psams, &serial_owned, &psam)?;
                    tx.audit(AuditEvent::ok(
                        actor,
                        Operation::GetPsamKeySet.name(),
                        format!("PSAM {serial_owned} keys {summary}"),
                    ));
                    Ok(())
                })
                .await?;
            self.metrics
                .keys_released
                .get_or_create(&ReleaseLabels {
                    form: "tr31-psam",
                    template: template.id().to_owned(),
                })
                .inc_by(keys.len() as u64);
            Ok(PsamKeySet {
                serial: serial.to_owned(),
                psam_profile: profile.id().to_owned(),
                keys,
                omitted,
            })
        })
        .await
    }
}
