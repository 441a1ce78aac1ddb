//! `sscard-kms dev`: a complete local KMS on the embedded default, for development and demos.
//!
//! ⚠️ Everything here is for development only: the HSM runs on the **published test LMK** and the
//! hierarchy is seeded from the **published test keys** of `dev/test-keys.toml`. The seeding
//! function is named `dangerous_*` because it handles those clear test keys outside the HSM
//! (to split them into components) — nothing else in the service does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hsm_sim::hsm::Hsm;
use hsm_sim::{Algorithm, SecretKey};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::identity::{Identity, Role};
use crate::records::{EndpointKind, Level};
use crate::service::{CardRequest, ComponentInput, Kms};
use crate::store::Table;
use crate::template::{BUILTIN, KeyRoot};

/// The published test keys, as shipped in the repository.
pub const TEST_KEYS_TOML: &str = include_str!("../dev/test-keys.toml");

/// `dev/test-keys.toml`.
#[derive(Debug, Deserialize)]
pub struct TestKeys {
    pub component_mask: String,
    pub national_root: ByAlgorithm,
    pub provincial_root: ByAlgorithm,
    pub vendor_transport: ByAlgorithm,
    pub station: EndpointKeys,
    pub psam_line: EndpointKeys,
    pub card: Vec<DemoCard>,
}

/// A test key per card algorithm.
#[derive(Debug, Deserialize)]
pub struct ByAlgorithm {
    pub tdes: String,
    pub sm4: String,
}

impl ByAlgorithm {
    fn for_algorithm(&self, alg: Algorithm) -> &str {
        match alg {
            Algorithm::Sm4 => &self.sm4,
            _ => &self.tdes,
        }
    }
}

/// A demo endpoint and its transport key.
#[derive(Debug, Deserialize)]
pub struct EndpointKeys {
    pub name: String,
    pub region: String,
    pub transport_aes: String,
}

/// A demo card.
#[derive(Debug, Deserialize)]
pub struct DemoCard {
    pub card_identifier: String,
    pub card_number: String,
    pub social_security_number: String,
    pub template: String,
}

/// The published test keys.
pub fn test_keys() -> Result<TestKeys> {
    toml::from_str(TEST_KEYS_TOML).map_err(|_| Error::StoreCorrupt("dev/test-keys.toml"))
}

/// Where `dev` keeps things under its data directory.
#[derive(Debug, Clone)]
pub struct DevPaths {
    pub pki: PathBuf,
    pub hsm: PathBuf,
    pub store: PathBuf,
}

impl DevPaths {
    pub fn new(data_dir: &Path) -> DevPaths {
        DevPaths {
            pki: data_dir.join("pki"),
            hsm: data_dir.join("hsm"),
            store: data_dir.join("store"),
        }
    }
}

const SEEDED: &str = "dev_seeded";

/// Two components of a published test key: `(key ⊕ mask, mask)`, each with its KCV.
fn dangerous_test_components(
    alg: Algorithm,
    key_hex: &str,
    mask_hex: &str,
) -> Result<Vec<ComponentInput>> {
    let key = hex::decode(key_hex).map_err(|_| Error::StoreCorrupt("test key"))?;
    let mask = hex::decode(mask_hex).map_err(|_| Error::StoreCorrupt("test key mask"))?;
    let first: Vec<u8> = key
        .iter()
        .zip(mask.iter().cycle())
        .map(|(k, m)| k ^ m)
        .collect();
    let mask = mask[..key.len().min(mask.len())].to_vec();
    [first, mask]
        .into_iter()
        .map(|bytes| {
            let hex = Zeroizing::new(hex::encode_upper(&bytes));
            let kcv = hsm_sim::kcv::compute_default(&SecretKey::from_hex(alg, &hex)?)?;
            Ok(ComponentInput {
                hex,
                kcv_hex: kcv.to_hex(),
            })
        })
        .collect()
}

/// Seeds a fresh dev store from the published test keys: both templates, their roots, the
/// derived hierarchy, vendor transport keys, the demo station and PSAM line, the demo cards.
/// Does nothing if the store was seeded before.
pub async fn dangerous_seed_test_keys<H: Hsm>(kms: &Arc<Kms<H>>) -> Result<bool> {
    if kms
        .store()
        .snapshot()?
        .get::<bool>(Table::Meta, SEEDED)?
        .unwrap_or(false)
    {
        return Ok(false);
    }
    let keys = test_keys()?;
    let officer = Identity::new(Role::Officer, None, "dev-setup")?;
    for (_, toml) in BUILTIN {
        let template = kms.load_template(&officer, toml).await?;
        let alg = template.algorithm().algorithm();
        for spec in template.keys() {
            let (level, root) = match spec.root {
                KeyRoot::National => (Level::National, &keys.national_root),
                KeyRoot::Provincial => (Level::Province, &keys.provincial_root),
            };
            let components = dangerous_test_components(
                spec.hsm_algorithm(),
                root.for_algorithm(spec.hsm_algorithm()),
                &keys.component_mask,
            )?;
            kms.import_root_key(&officer, template.id(), &spec.name, level, components)
                .await?;
        }
        kms.derive_hierarchy(&officer, template.id()).await?;
        let components = dangerous_test_components(
            alg,
            keys.vendor_transport.for_algorithm(alg),
            &keys.component_mask,
        )?;
        kms.import_vendor_transport_key(&officer, template.id(), components)
            .await?;
    }
    for (kind, e) in [
        (EndpointKind::Station, &keys.station),
        (EndpointKind::PsamLine, &keys.psam_line),
    ] {
        let components =
            dangerous_test_components(Algorithm::Aes128, &e.transport_aes, &keys.component_mask)?;
        kms.register_endpoint(&officer, kind, &e.name, &e.region, "aes", components)
            .await?;
    }
    for card in &keys.card {
        let region = &card.card_identifier[..6];
        let registrar = Identity::new(Role::Registrar, Some(region), "dev-setup")?;
        let request = CardRequest {
            card_identifier: card.card_identifier.clone(),
            card_number: card.card_number.clone(),
            social_security_number: card.social_security_number.clone(),
            atr: Vec::new(),
        };
        kms.register_card(&registrar, request, &card.template)
            .await?;
        kms.accept_card(&registrar, &card.card_identifier).await?;
    }
    kms.store()
        .write(|tx| {
            tx.put(Table::Meta, SEEDED, &true)?;
            tx.audit(crate::audit::AuditEvent::ok(
                "system",
                "dev-seed",
                "published test keys loaded (development only)",
            ));
            Ok(())
        })
        .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_test_keys_parse_and_split() {
        let keys = test_keys().unwrap();
        assert_eq!(keys.card.len(), 2);
        let parts = dangerous_test_components(
            Algorithm::Tdes2,
            &keys.national_root.tdes,
            &keys.component_mask,
        )
        .unwrap();
        assert_eq!(parts.len(), 2);
        let a = hex::decode(&*parts[0].hex).unwrap();
        let b = hex::decode(&*parts[1].hex).unwrap();
        let xor: Vec<u8> = a.iter().zip(&b).map(|(x, y)| x ^ y).collect();
        assert_eq!(hex::encode_upper(xor), keys.national_root.tdes);
        for card in &keys.card {
            crate::identifiers::CardIdentifier::parse_field(
                "card_identifier",
                &card.card_identifier,
            )
            .unwrap();
            crate::identifiers::CardNumber::parse_field("card_number", &card.card_number).unwrap();
            crate::identifiers::SocialSecurityNumber::parse_field(
                "ssn",
                &card.social_security_number,
            )
            .unwrap();
        }
    }
}
