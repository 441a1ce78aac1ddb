//! `sscard-kms dev`: a complete local KMS on the embedded default, for development and demos.
//!
//! ⚠️ Everything here is for development only: the HSM runs on the **published test LMK** and the
//! hierarchy is seeded from the **published test keys** of `dev/test-keys.toml`. The seeding
//! function is named `dangerous_*` because it handles those clear test keys outside the HSM
//! (to split them into components) — nothing else in the service does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hsm_api::Algorithm;
use hsm_api::Hsm;
use hsm_sim::crypto::SecretKey;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::access::identity::{Identity, Role};
use crate::card::template::{BUILTIN, KeyRoot};
use crate::error::{Error, Resource, Result};
use crate::service::{CardRequest, ComponentInput, Kms};
use crate::state::records::{EndpointKind, Level};
use crate::state::store::Table;

/// The published test keys, as shipped in the repository.
pub const TEST_KEYS_TOML: &str = include_str!("../dev/test-keys.toml");

/// `dev/test-keys.toml`.
#[derive(Debug, Deserialize)]
pub struct TestKeys {
    pub component_mask: String,
    /// One national root per template key name, per card algorithm.
    pub national_root: RootsByAlgorithm,
    /// One provincial root per template key name, per card algorithm.
    pub provincial_root: RootsByAlgorithm,
    /// The roots a city holds for the keys of its local extension (N9), per card algorithm:
    /// seeded only by that city's own deployment, never by the province's.
    #[serde(default)]
    pub city_root: RootsByAlgorithm,
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

/// Test roots per card algorithm, by template key name.
#[derive(Debug, Default, Deserialize)]
pub struct RootsByAlgorithm {
    pub tdes: std::collections::BTreeMap<String, String>,
    pub sm4: std::collections::BTreeMap<String, String>,
}

impl RootsByAlgorithm {
    /// The published root of key `name` of algorithm `alg`.
    pub fn root(&self, alg: Algorithm, name: &str) -> Result<&str> {
        let table = match alg {
            Algorithm::Sm4 => &self.sm4,
            _ => &self.tdes,
        };
        table.get(name).map(String::as_str).ok_or(Error::NotFound {
            what: Resource::PublishedTestRoot,
        })
    }

    /// Every root, for tests that search outputs for them.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        self.tdes
            .values()
            .chain(self.sm4.values())
            .map(String::as_str)
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

/// Which HSM `dev` runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevHsm {
    /// The in-process simulator on the test LMK.
    #[default]
    Simulator,
    /// A throwaway SoftHSM2 token in the data directory (`<data>/softhsm`), on the PKCS#11
    /// backend in release mode, with the test LMK (so every output that does not depend on
    /// randomness is the simulator's).
    SoftHsm,
}

/// The label of `dev`'s SoftHSM2 token.
const DEV_TOKEN_LABEL: &str = "sscard-kms-dev";

/// Runs `sscard-kms dev` until `shutdown`: an HSM on the test LMK (`hsm`), the store (under
/// `data_dir`, or on the PostgreSQL database `store` names) and the dev PKI under `data_dir`, the
/// published test keys seeded once, the API on `listener` and the metrics on `metrics`.
pub async fn run(
    listener: tokio::net::TcpListener,
    metrics: Option<tokio::net::TcpListener>,
    data_dir: &Path,
    hsm: DevHsm,
    store: Option<crate::state::postgres::PostgresConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let paths = DevPaths::new(data_dir);
    let location = match store {
        Some(pg) => crate::state::store::StoreLocation::Postgres(Box::new(pg)),
        None => crate::state::store::StoreLocation::Redb(paths.store.clone()),
    };
    std::fs::create_dir_all(data_dir).map_err(|source| Error::File {
        path: data_dir.to_owned(),
        source,
    })?;
    match hsm {
        DevHsm::Simulator => {
            let hsm = Arc::new(hsm_sim::local::LocalHsm::open(
                hsm_sim::local::LocalHsmConfig {
                    dangerous_test_lmk: true,
                    ..Default::default()
                },
            )?);
            run_on(
                hsm,
                hsm_api::ListSignature::Sm2,
                listener,
                metrics,
                data_dir,
                &paths,
                &location,
                shutdown,
            )
            .await
        }
        DevHsm::SoftHsm => {
            let token =
                hsm_pkcs11::softhsm::dangerous_token(&data_dir.join("softhsm"), DEV_TOKEN_LABEL)?;
            let config = hsm_pkcs11::Pkcs11Config {
                mode: hsm_pkcs11::Mode::Release,
                dangerous_test_lmk: true,
                ..token.config()
            };
            let hsm = Arc::new(hsm_pkcs11::Pkcs11Hsm::open(config, Some(token.pin()))?);
            // A PKCS#11 token has no SM2: the blacklist is signed with P-256 there.
            run_on(
                hsm,
                hsm_api::ListSignature::EcdsaP256,
                listener,
                metrics,
                data_dir,
                &paths,
                &location,
                shutdown,
            )
            .await
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_on<H: Hsm>(
    hsm: Arc<H>,
    list_signature: hsm_api::ListSignature,
    listener: tokio::net::TcpListener,
    metrics: Option<tokio::net::TcpListener>,
    data_dir: &Path,
    paths: &DevPaths,
    location: &crate::state::store::StoreLocation,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let pki = crate::access::pki::DevPki::load_or_generate(&paths.pki)?;
    let kms = Kms::open_at(hsm, location).await?;
    kms.set_list_signature(list_signature);
    let seeded = dangerous_seed_test_keys(&kms).await?;
    // The dev PKI's officer and auditor are the registry's first members (once).
    let mut officers = Vec::new();
    for role in ["officer", "auditor"] {
        let path = paths.pki.join(format!("{role}.pem"));
        officers.push(std::fs::read(&path).map_err(|source| Error::File { path, source })?);
    }
    kms.bootstrap_officers(&officers).await?;
    let tls = crate::access::tls::server_config(
        &pki.server().cert_pem,
        &pki.server().key_pem,
        pki.ca_pem(),
    )?;
    let addr = listener.local_addr().map_err(|source| Error::File {
        path: data_dir.to_owned(),
        source,
    })?;
    let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
    println!(
        "{}",
        banner(addr, metrics_addr, data_dir, paths, location, seeded)
    );
    crate::server::serve_all(kms, listener, metrics, tls, dev_limits(), shutdown).await
}

/// `serve`'s limits, except the per-identity rate: `dev` is where the load generator measures the
/// service, and it sends everything as one station.
fn dev_limits() -> crate::server::Limits {
    crate::server::Limits {
        requests_per_second: 1_000_000,
        burst: 1_000_000,
        ..Default::default()
    }
}

fn banner(
    addr: std::net::SocketAddr,
    metrics: Option<std::net::SocketAddr>,
    data_dir: &Path,
    paths: &DevPaths,
    location: &crate::state::store::StoreLocation,
    seeded: bool,
) -> String {
    // The server certificate names `localhost`: clients connect by that name, on our port.
    let server = format!("https://localhost:{}", addr.port());
    let metrics = metrics.map_or_else(|| "off".to_owned(), |m| format!("http://{m}/metrics"));
    format!(
        "sscard-kms dev — DEVELOPMENT ONLY: the HSM runs on the published test LMK and the keys are\n\
         the published test keys of dev/test-keys.toml. Never personalise a real card with it.\n\
         \n\
         listening on   https://{addr} (mutual TLS)\n\
         metrics        {metrics}\n\
         data           {data}{seeded}\n\
         store          {location}\n\
         PKI            {pki}/ca.pem, server.pem, and <role>.pem/.key for station, psam-line,\n\
         \x20              registrar, officer, auditor\n\
         demo           station GZ-01 (440100), PSAM line PSAM-LINE-01 (440000), cards\n\
         \x20              440100D1560000050050640776EF3192 (ssc-2.0), …3193 (ssc-3.0),\n\
         \x20              …3194 (ssc-2.0-fmcos), accepted\n\
         \n\
         next: inject the demo card's keys as the Guangzhou station:\n\
         \x20   cargo run --example inject_card -- --data-dir {data} --server {server}\n\
         load test (one run: health ceiling, then injections):\n\
         \x20   cargo run --release --example loadgen -- --data-dir {data} --endpoint {server}\n\
         stop with Ctrl-C; then check the audit trail offline:\n\
         \x20   cargo run --bin kms-ceremony -- audit verify {store} --dangerous-test-lmk",
        data = data_dir.display(),
        seeded = if seeded {
            " (seeded now)"
        } else {
            " (existing)"
        },
        pki = paths.pki.display(),
        store = match location {
            crate::state::store::StoreLocation::Redb(dir) =>
                format!("--data-dir {}", dir.display()),
            crate::state::store::StoreLocation::Postgres(pg) => {
                format!("--store '{pg}' [--store-password-file F --store-ca CA]")
            }
        },
    )
}

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
            let kcv = hsm_sim::crypto::kcv::compute_default(&SecretKey::from_hex(alg, &hex)?)?;
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
    let officer = Identity::dangerous_in_process(Role::Officer, None, "dev-setup")?;
    for (_, toml) in BUILTIN {
        let template = kms.load_template(&officer, toml).await?;
        let alg = template.algorithm().algorithm();
        for spec in template.keys() {
            let (level, root) = match spec.root {
                KeyRoot::National => (Level::National, &keys.national_root),
                KeyRoot::Provincial => (Level::Province, &keys.provincial_root),
                // A city's own root is held by that city's deployment, never by the province.
                KeyRoot::City(_) => continue,
            };
            let components = dangerous_test_components(
                spec.hsm_algorithm(),
                root.root(spec.hsm_algorithm(), &spec.name)?,
                &keys.component_mask,
            )?;
            // The published test roots stand for the Ministry's, handed over for PSAM use.
            let psam_permission = level == Level::National;
            kms.import_root_key(
                &officer,
                template.id(),
                &spec.name,
                level,
                components,
                psam_permission,
            )
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
    // Each demo card is registered by its city's registrar and accepted by the province's
    // (acceptance is the province's verdict, never the city's).
    let reviewer = Identity::new(Role::Registrar, Some(crate::service::PROVINCE), "dev-setup")?;
    for card in &keys.card {
        let region = &card.card_identifier[..6];
        let registrar = Identity::new(Role::Registrar, Some(region), "dev-setup")?;
        let request = CardRequest {
            card_identifier: card.card_identifier.clone(),
            card_number: card.card_number.clone(),
            social_security_number: card.social_security_number.clone(),
            atr: Vec::new(),
        };
        kms.register_card(&registrar, request, &card.template, None)
            .await?;
        kms.accept_card(&reviewer, &card.card_identifier).await?;
    }
    kms.store()
        .write(|tx| {
            tx.put(Table::Meta, SEEDED, &true)?;
            tx.audit(crate::state::audit::AuditEvent::ok(
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
        assert_eq!(keys.card.len(), 3);
        let root = keys
            .national_root
            .root(Algorithm::Tdes2, "STK_SSSE")
            .unwrap();
        assert_eq!(
            root, "11111111111111112222222222222222",
            "DOMAIN.md §2's test root"
        );
        let parts =
            dangerous_test_components(Algorithm::Tdes2, root, &keys.component_mask).unwrap();
        assert_eq!(parts.len(), 2);
        let a = hex::decode(&*parts[0].hex).unwrap();
        let b = hex::decode(&*parts[1].hex).unwrap();
        let xor: Vec<u8> = a.iter().zip(&b).map(|(x, y)| x ^ y).collect();
        assert_eq!(hex::encode_upper(xor), root);
        // Every key of both templates has its own root, distinct as a DES key (parity ignored).
        for (_, toml) in BUILTIN {
            let t = crate::card::template::Template::parse(toml).unwrap();
            let mut seen = std::collections::HashSet::new();
            for spec in t.keys() {
                let roots = match spec.root {
                    KeyRoot::National => &keys.national_root,
                    KeyRoot::Provincial => &keys.provincial_root,
                    KeyRoot::City(_) => &keys.city_root,
                };
                let hex = roots.root(spec.hsm_algorithm(), &spec.name).unwrap();
                let without_parity: Vec<u8> =
                    hex::decode(hex).unwrap().iter().map(|b| b & 0xFE).collect();
                assert!(seen.insert(without_parity), "{} shares a root", spec.name);
            }
        }
        for card in &keys.card {
            crate::card::identifiers::CardIdentifier::parse_field(
                "card_identifier",
                &card.card_identifier,
            )
            .unwrap();
            crate::card::identifiers::CardNumber::parse_field("card_number", &card.card_number)
                .unwrap();
            crate::card::identifiers::SocialSecurityNumber::parse_field(
                "ssn",
                &card.social_security_number,
            )
            .unwrap();
        }
    }
}
