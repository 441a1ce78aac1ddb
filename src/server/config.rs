//! `sscard-kms serve --config kms.toml`: the configuration of a real deployment.
//!
//! ```toml
//! listen = "0.0.0.0:50051"
//! data_dir = "/var/lib/sscard-kms"
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
//! ```
//!
//! Environment overrides (for containers): `SSCARD_KMS_LISTEN`, `SSCARD_KMS_DATA_DIR`,
//! `SSCARD_KMS_HSM_ENDPOINT`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Refusal, Result};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where Prometheus metrics are served (plain HTTP, `GET /metrics`); none when absent.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub tls: TlsFiles,
    pub hsm: HsmConfig,
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
        toml::from_str(text).map_err(|e| {
            tracing::error!(error = %e, "configuration refused");
            Error::InvalidArgument {
                field: "config",
                reason: Refusal::ConfigInvalid,
            }
        })
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
        if let Some(dir) = var("SSCARD_KMS_DATA_DIR") {
            self.data_dir = PathBuf::from(dir);
        }
        if let Some(endpoint) = var("SSCARD_KMS_HSM_ENDPOINT") {
            match &mut self.hsm {
                HsmConfig::Remote { endpoint: e, .. } => *e = endpoint,
                HsmConfig::Local { .. } => {
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
    fn a_missing_client_ca_or_unknown_field_is_refused() {
        let no_ca = EXAMPLE.replace("client_ca = \"ca.pem\"\n", "");
        assert!(Config::parse(&no_ca).is_err());
        let extra = EXAMPLE.replace("[tls]", "insecure = true\n[tls]");
        assert!(Config::parse(&extra).is_err());
    }
}
