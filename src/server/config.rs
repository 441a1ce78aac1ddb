//! `sscard-kms serve --config kms.toml`: the configuration of a real deployment.
//!
//! ```toml
//! listen = "0.0.0.0:50051"
//! data_dir = "/var/lib/sscard-kms"
//! # deployment_city = "440300"   # a city's deployment (N9): holds and releases only the keys
//! #                              # whose root the city holds; absent: the province's
//! # blacklist_signature = "sm2-sm3"   # or "ecdsa-p256-sha256": the scheme of the blacklist's
//! #                              # signing key when it is made (default SM2; P-256 on PKCS#11)
//!
//! [tls]                       # the service's own certificate, and the CA of its clients
//! cert = "/etc/sscard-kms/server.pem"
//! key = "/etc/sscard-kms/server.key"
//! client_ca = "/etc/sscard-kms/clients-ca.pem"   # required: no client CA, no start
//!
//! [hsm]
//! mode = "remote"             # "remote": the hsm-sim (or a real HSM's) process; "local": in-process
//! endpoint = "https://hsm.internal:7100"
//! ca = "/etc/sscard-kms/hsm-ca.pem"
//! cert = "/etc/sscard-kms/kms-service.pem"       # a `sscard://service/<name>` certificate
//! key = "/etc/sscard-kms/kms-service.key"
//! # mode = "local" keeps the HSM state under `state_dir` (default <data_dir>/hsm); it starts
//! # sealed and is unsealed by the custodians' shares.
//! # mode = "pkcs11": module = "/usr/lib/softhsm/libsofthsm2.so", token_label = "sscard-kms",
//! # pin_file = "/etc/sscard-kms/token.pin" (optional: without it, sealed until UnsealHsm gets the
//! # PIN), operations = "strict" | "release" (ARCHITECTURE.md, the PKCS#11 capability table).
//!
//! [ceremony]                  # the officer registry and dual control
//! # The first officers' and auditors' certificates, enrolled once into an empty registry;
//! # every later change is a dual-control act (README "Ceremonies").
//! officers = ["/etc/sscard-kms/officers/alice.pem", "/etc/sscard-kms/officers/bob.pem"]
//! approval_ttl_s = 900        # a dual-control request dies unless approved by then
//!
//! store = "redb"              # default: the embedded file <data_dir>/store/kms.redb
//! # store = "postgres://kms@db.internal:5432/kms"   # several instances on one database (TLS)
//! # store_password_file = "/etc/sscard-kms/db-password"  # first line; never in the URL
//! # store_ca = "/etc/sscard-kms/db-ca.pem"          # the CA of the PostgreSQL server
//!
//! [limits]                    # optional; these are the defaults
//! handshake_timeout_ms = 10000   # a TLS handshake not done by then is closed
//! max_connections = 256          # open connections; one more is closed at once
//! requests_per_second = 100      # per caller identity, on average ...
//! burst = 200                    # ... and at once; beyond: RESOURCE_EXHAUSTED, retry pushback
//! max_concurrent_streams = 32    # requests in flight on one connection
//! request_timeout_ms = 30000     # a request not answered by then is cancelled
//! ```
//!
//! Environment overrides (for containers): `SSCARD_KMS_LISTEN`, `SSCARD_KMS_DATA_DIR`,
//! `SSCARD_KMS_HSM_ENDPOINT`, `SSCARD_KMS_STORE` (a URL without password).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Refusal, Result};
use crate::state::postgres::PostgresConfig;
use crate::state::store::StoreLocation;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where Prometheus metrics are served (plain HTTP, `GET /metrics`); none when absent.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// `"redb"` (default) or a `postgres://` URL without a password.
    #[serde(default = "default_store")]
    pub store: String,
    /// The PostgreSQL password's file (its first line).
    #[serde(default)]
    pub store_password_file: Option<PathBuf>,
    /// The CA bundle of the PostgreSQL server's certificate.
    #[serde(default)]
    pub store_ca: Option<PathBuf>,
    pub tls: TlsFiles,
    pub hsm: HsmConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub ceremony: CeremonyConfig,
    /// Set by `serve --dangerous-allow-test-lmk` only (never from the file): accept an HSM on
    /// the published test LMK.
    #[serde(skip)]
    pub dangerous_allow_test_lmk: bool,
    /// The city whose deployment this is (N9: it holds the roots of its city-owned keys and
    /// releases only those); absent for the province's deployment.
    #[serde(default)]
    pub deployment_city: Option<String>,
    /// The scheme of the blacklist's signing key when the service makes it: `"sm2-sm3"` or
    /// `"ecdsa-p256-sha256"`. Absent: SM2, except on a PKCS#11 HSM (which has no SM2), P-256.
    /// A key already made keeps its scheme.
    #[serde(default)]
    pub blacklist_signature: Option<String>,
}

/// The officer registry's bootstrap and the time limit of dual control.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CeremonyConfig {
    /// Certificates (PEM files) of the first officers and auditors, enrolled into an empty
    /// registry at start; ignored once anyone is registered.
    pub officers: Vec<PathBuf>,
    /// Seconds a dual-control request or a component ceremony waits (1..=86400).
    pub approval_ttl_s: u64,
}

impl Default for CeremonyConfig {
    fn default() -> Self {
        CeremonyConfig {
            officers: Vec::new(),
            approval_ttl_s: crate::service::DEFAULT_APPROVAL_TTL_MS / 1000,
        }
    }
}

fn default_store() -> String {
    "redb".to_owned()
}

/// What the server admits: connections, handshake time, request rate per identity, requests in
/// flight per connection, request time. Every value must be at least 1; the bounds below keep a
/// typo from disabling a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// A TLS handshake not complete by then is closed (100..=60000).
    pub handshake_timeout_ms: u64,
    /// Open connections at once (1..=65536); one more is accepted and closed at once.
    pub max_connections: usize,
    /// Requests per second of one caller identity, on average (1..=1000000).
    pub requests_per_second: u32,
    /// Requests of one caller identity at once (1..=1000000).
    pub burst: u32,
    /// Requests in flight on one connection (HTTP/2 streams, 1..=1024).
    pub max_concurrent_streams: u32,
    /// A request not answered by then is cancelled (100..=600000).
    pub request_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout_ms: 10_000,
            max_connections: 256,
            requests_per_second: 100,
            burst: 200,
            max_concurrent_streams: 32,
            request_timeout_ms: 30_000,
        }
    }
}

impl Limits {
    /// Refuses a value outside its bounds, naming it.
    pub fn validate(&self) -> Result<()> {
        let bounded = |field: &'static str, value: u64, low: u64, high: u64, reason| {
            if (low..=high).contains(&value) {
                Ok(())
            } else {
                Err(Error::InvalidArgument { field, reason })
            }
        };
        bounded(
            "limits.handshake_timeout_ms",
            self.handshake_timeout_ms,
            100,
            60_000,
            Refusal::Between100And60000,
        )?;
        bounded(
            "limits.max_connections",
            u64::try_from(self.max_connections).unwrap_or(u64::MAX),
            1,
            65_536,
            Refusal::Between1And65536,
        )?;
        bounded(
            "limits.requests_per_second",
            u64::from(self.requests_per_second),
            1,
            1_000_000,
            Refusal::Between1And1000000,
        )?;
        bounded(
            "limits.burst",
            u64::from(self.burst),
            1,
            1_000_000,
            Refusal::Between1And1000000,
        )?;
        bounded(
            "limits.max_concurrent_streams",
            u64::from(self.max_concurrent_streams),
            1,
            1024,
            Refusal::Between1And1024,
        )?;
        bounded(
            "limits.request_timeout_ms",
            self.request_timeout_ms,
            100,
            600_000,
            Refusal::Between100And600000,
        )
    }
}

/// The service's TLS files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// Where the HSM is.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum HsmConfig {
    /// In-process simulator with its state under `state_dir`.
    Local { state_dir: Option<PathBuf> },
    /// The HSM process over mutual TLS.
    Remote {
        endpoint: String,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
    /// A PKCS#11 token (`hsm-pkcs11`), found by its label. The user PIN is read from `pin_file`
    /// (owner-only, like the TLS key) if given; otherwise the HSM starts sealed and the PIN is
    /// the one share `UnsealHsm` takes (or the custodians' shares, once `init_lmk` split it). `operations` is `strict` (default: what a standard token
    /// cannot do is refused) or `release` (it runs with the key the token releases for that one
    /// operation): ARCHITECTURE.md's capability table.
    Pkcs11 {
        module: PathBuf,
        token_label: String,
        pin_file: Option<PathBuf>,
        #[serde(default)]
        operations: Pkcs11Operations,
    },
}

/// What a PKCS#11 backend does with what a standard token cannot do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pkcs11Operations {
    /// Refused, with a reason.
    #[default]
    Strict,
    /// Run with the key the token released for that one operation.
    Release,
}

impl Config {
    /// Reads `path`, then applies the environment overrides.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::File {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(&text)?;
        config.apply_env(|k| std::env::var(k).ok())?;
        Ok(config)
    }

    /// Parses the TOML text.
    pub fn parse(text: &str) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| {
            tracing::error!(error = %e, "configuration refused");
            Error::InvalidArgument {
                field: "config",
                reason: Refusal::ConfigInvalid,
            }
        })?;
        config.limits.validate()?;
        config.owner()?;
        config.list_signature()?;
        config.store_location()?;
        Ok(config)
    }

    /// Whose keys this deployment holds and releases: the province's, or a city's
    /// (`deployment_city`, a city's GB/T 2260 code).
    pub fn owner(&self) -> Result<crate::card::template::KeyOwner> {
        use crate::card::identifiers::IdentifierFault;
        use crate::card::template::KeyOwner;
        match &self.deployment_city {
            None => Ok(KeyOwner::Province),
            Some(code) => match crate::card::region::Region::lookup_field("deployment_city", code)?
            {
                city if city.is_city() => Ok(KeyOwner::City(city)),
                _ => Err(Error::InvalidIdentifier {
                    field: "deployment_city",
                    reason: IdentifierFault::NotACity,
                }),
            },
        }
    }

    /// The scheme a new list-signing key is made in (`blacklist_signature`).
    pub fn list_signature(&self) -> Result<hsm_api::ListSignature> {
        match &self.blacklist_signature {
            Some(name) => hsm_api::ListSignature::from_name(name).ok_or(Error::InvalidArgument {
                field: "blacklist_signature",
                reason: Refusal::ConfigInvalid,
            }),
            None if matches!(self.hsm, HsmConfig::Pkcs11 { .. }) => {
                Ok(hsm_api::ListSignature::EcdsaP256)
            }
            None => Ok(hsm_api::ListSignature::Sm2),
        }
    }

    /// Where the store is: `<data_dir>/store` on redb, or the PostgreSQL database.
    pub fn store_location(&self) -> Result<StoreLocation> {
        if self.store == "redb" {
            if self.store_password_file.is_some() || self.store_ca.is_some() {
                return Err(Error::InvalidArgument {
                    field: "store",
                    reason: Refusal::ConfigInvalid,
                });
            }
            return Ok(StoreLocation::Redb(self.data_dir.join("store")));
        }
        Ok(StoreLocation::Postgres(Box::new(
            PostgresConfig::from_parts(
                &self.store,
                self.store_password_file.as_deref(),
                self.store_ca.as_deref(),
            )?,
        )))
    }

    /// Applies `SSCARD_KMS_*` overrides read through `var`.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<()> {
        if let Some(listen) = var("SSCARD_KMS_LISTEN") {
            self.listen = listen.parse().map_err(|_| Error::InvalidArgument {
                field: "SSCARD_KMS_LISTEN",
                reason: Refusal::NotASocketAddress,
            })?;
        }
        if let Some(listen) = var("SSCARD_KMS_METRICS_LISTEN") {
            self.metrics_listen = Some(listen.parse().map_err(|_| Error::InvalidArgument {
                field: "SSCARD_KMS_METRICS_LISTEN",
                reason: Refusal::NotASocketAddress,
            })?);
        }
        if let Some(store) = var("SSCARD_KMS_STORE") {
            self.store = store;
        }
        if let Some(dir) = var("SSCARD_KMS_DATA_DIR") {
            self.data_dir = PathBuf::from(dir);
        }
        if let Some(endpoint) = var("SSCARD_KMS_HSM_ENDPOINT") {
            match &mut self.hsm {
                HsmConfig::Remote { endpoint: e, .. } => *e = endpoint,
                HsmConfig::Local { .. } | HsmConfig::Pkcs11 { .. } => {
                    return Err(Error::InvalidArgument {
                        field: "SSCARD_KMS_HSM_ENDPOINT",
                        reason: Refusal::EndpointForLocalHsm,
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
listen = "127.0.0.1:50051"
data_dir = "/var/lib/sscard-kms"
[tls]
cert = "s.pem"
key = "s.key"
client_ca = "ca.pem"
[hsm]
mode = "remote"
endpoint = "https://hsm:7100"
ca = "hsm-ca.pem"
cert = "svc.pem"
key = "svc.key"
"#;

    #[test]
    fn the_blacklist_scheme_is_sm2_unless_configured_or_on_pkcs11() {
        use hsm_api::ListSignature;
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.list_signature().unwrap(), ListSignature::Sm2);
        let c = Config::parse(&format!(
            "blacklist_signature = \"ecdsa-p256-sha256\"\n{EXAMPLE}"
        ))
        .unwrap();
        assert_eq!(c.list_signature().unwrap(), ListSignature::EcdsaP256);
        assert!(Config::parse(&format!("blacklist_signature = \"sm2\"\n{EXAMPLE}")).is_err());
        let pkcs11 = EXAMPLE.replace(
            "mode = \"remote\"\nendpoint = \"https://hsm:7100\"\nca = \"hsm-ca.pem\"\ncert = \"svc.pem\"\nkey = \"svc.key\"",
            "mode = \"pkcs11\"\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken_label = \"t\"",
        );
        let c = Config::parse(&pkcs11).unwrap();
        assert!(matches!(c.hsm, HsmConfig::Pkcs11 { .. }));
        assert_eq!(c.list_signature().unwrap(), ListSignature::EcdsaP256);
    }

    #[test]
    fn a_deployment_is_the_provinces_or_a_citys() {
        use crate::card::template::KeyOwner;
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.owner().unwrap(), KeyOwner::Province);
        let c = Config::parse(&format!("deployment_city = \"440300\"\n{EXAMPLE}")).unwrap();
        assert!(matches!(c.owner().unwrap(), KeyOwner::City(city) if city.code == "440300"));
        for refused in ["440000", "999999", "abc"] {
            assert!(
                Config::parse(&format!("deployment_city = \"{refused}\"\n{EXAMPLE}")).is_err(),
                "{refused}"
            );
        }
    }

    #[test]
    fn parses_and_overrides() {
        let mut c = Config::parse(EXAMPLE).unwrap();
        assert!(matches!(c.hsm, HsmConfig::Remote { .. }));
        c.apply_env(|k| match k {
            "SSCARD_KMS_LISTEN" => Some("127.0.0.1:6000".into()),
            "SSCARD_KMS_HSM_ENDPOINT" => Some("https://other:7100".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.listen.port(), 6000);
        assert!(
            matches!(&c.hsm, HsmConfig::Remote { endpoint, .. } if endpoint == "https://other:7100")
        );
    }

    #[test]
    fn limits_default_when_absent_and_are_bounded() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.limits, Limits::default());
        let c = Config::parse(&format!("{EXAMPLE}[limits]\nburst = 5\n")).unwrap();
        assert_eq!(c.limits.burst, 5);
        assert_eq!(c.limits.requests_per_second, 100);
        for (line, field) in [
            ("handshake_timeout_ms = 0", "limits.handshake_timeout_ms"),
            ("max_connections = 0", "limits.max_connections"),
            ("requests_per_second = 0", "limits.requests_per_second"),
            ("burst = 0", "limits.burst"),
            (
                "max_concurrent_streams = 5000",
                "limits.max_concurrent_streams",
            ),
            ("request_timeout_ms = 10", "limits.request_timeout_ms"),
        ] {
            let err = Config::parse(&format!("{EXAMPLE}[limits]\n{line}\n")).unwrap_err();
            assert!(
                matches!(err, Error::InvalidArgument { field: f, .. } if f == field),
                "{line}: {err:?}"
            );
        }
        assert!(Config::parse(&format!("{EXAMPLE}[limits]\nunlimited = true\n")).is_err());
    }

    #[test]
    fn the_store_is_redb_by_default_or_a_postgres_url_without_password() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert!(
            matches!(c.store_location().unwrap(), StoreLocation::Redb(d) if d.ends_with("store"))
        );
        let pg =
            format!("store = \"postgres://kms@db:5432/kms\"\nstore_ca = \"ca.pem\"\n{EXAMPLE}");
        let c = Config::parse(&pg).unwrap();
        let StoreLocation::Postgres(p) = c.store_location().unwrap() else {
            panic!("postgres");
        };
        assert_eq!(p.to_string(), "postgres://kms@db:5432/kms");
        for bad in ["postgres://kms:pw@db/kms", "sqlite://x", "./dir"] {
            let text = format!("store = \"{bad}\"\n{EXAMPLE}");
            assert!(Config::parse(&text).is_err(), "{bad}");
        }
        let mut c = Config::parse(EXAMPLE).unwrap();
        c.apply_env(|k| (k == "SSCARD_KMS_STORE").then(|| "postgres://kms@h/k".to_owned()))
            .unwrap();
        assert!(matches!(
            c.store_location().unwrap(),
            StoreLocation::Postgres(_)
        ));
    }

    #[test]
    fn a_missing_client_ca_or_unknown_field_is_refused() {
        let no_ca = EXAMPLE.replace("client_ca = \"ca.pem\"\n", "");
        assert!(Config::parse(&no_ca).is_err());
        let extra = EXAMPLE.replace("[tls]", "insecure = true\n[tls]");
        assert!(Config::parse(&extra).is_err());
    }
}

/// Property tests: no text makes the parser panic; each limit out of its bounds is named.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    const BASE: &str = "listen = \"127.0.0.1:50051\"\ndata_dir = \"/d\"\n[tls]\ncert = \"c\"\n\
                        key = \"k\"\nclient_ca = \"ca\"\n[hsm]\nmode = \"local\"\n";

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_text_is_a_config_or_an_invalid_argument(text in "(?s).{0,200}") {
            for t in [text.clone(), format!("{BASE}{text}")] {
                match Config::parse(&t) {
                    Ok(c) => prop_assert!(c.limits.validate().is_ok()),
                    Err(e) => prop_assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}"),
                }
            }
        }

        #[test]
        fn each_limit_is_refused_outside_its_bounds_by_name(
            which in 0usize..6,
            value in any::<u32>(),
        ) {
            let (field, low, high) = [
                ("handshake_timeout_ms", 100u64, 60_000u64),
                ("max_connections", 1, 65_536),
                ("requests_per_second", 1, 1_000_000),
                ("burst", 1, 1_000_000),
                ("max_concurrent_streams", 1, 1024),
                ("request_timeout_ms", 100, 600_000),
            ][which];
            let value = u64::from(value);
            let parsed = Config::parse(&format!("{BASE}[limits]\n{field} = {value}\n"));
            if (low..=high).contains(&value) {
                prop_assert!(parsed.is_ok(), "{field} = {value}: {parsed:?}");
            } else {
                let expected = format!("limits.{field}");
                prop_assert!(
                    matches!(&parsed, Err(Error::InvalidArgument { field: f, .. }) if *f == expected),
                    "{field} = {value}: {parsed:?}"
                );
            }
        }
    }
}
