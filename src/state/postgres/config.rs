//! Where the PostgreSQL store is, and how to reach it: the URL (never with a password), the
//! password (from a file), TLS through rustls on the project's one provider (ring).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::error::{Error, Refusal, Result};

/// A PostgreSQL store's connection settings. `Debug` and `Display` show the URL without any
/// password.
#[derive(Clone)]
pub struct PostgresConfig {
    pub(super) pg: tokio_postgres::Config,
    ca: Option<PathBuf>,
    tls: bool,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.to_string())
            .field("ca", &self.ca)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let user = self.pg.get_user().unwrap_or("");
        let host = match self.pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => String::new(),
        };
        let port = self.pg.get_ports().first().copied().unwrap_or(5432);
        let db = self.pg.get_dbname().unwrap_or("");
        write!(f, "postgres://{user}@{host}:{port}/{db}")
    }
}

fn refused(field: &'static str) -> Error {
    Error::InvalidArgument {
        field,
        reason: Refusal::ConfigInvalid,
    }
}

/// Whether `text` names a PostgreSQL store (`postgres://` or `postgresql://`).
pub fn is_postgres_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

impl PostgresConfig {
    /// Parses a `postgres://user@host:port/db[?sslmode=…]` URL. A password in the URL is
    /// refused (it would be in argv, a config file and logs): give it with
    /// [`PostgresConfig::with_password_file`]. TLS is required unless the URL says
    /// `sslmode=disable` (a local test cluster); `prefer`, which falls back to clear text, is
    /// never used.
    pub fn parse(url: &str) -> Result<PostgresConfig> {
        if !is_postgres_url(url) {
            return Err(refused("store"));
        }
        let mut pg = tokio_postgres::Config::from_str(url).map_err(|e| {
            tracing::error!(error = %e, "the store URL is refused");
            refused("store")
        })?;
        if pg.get_password().is_some() {
            tracing::error!("the store URL holds a password: give it in a password file");
            return Err(refused("store"));
        }
        let tls = pg.get_ssl_mode() != tokio_postgres::config::SslMode::Disable;
        if tls {
            pg.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("sscard-kms");
        }
        Ok(PostgresConfig { pg, ca: None, tls })
    }

    /// [`PostgresConfig::parse`], then the password file and the server's CA if given.
    pub fn from_parts(
        url: &str,
        password_file: Option<&Path>,
        ca: Option<&Path>,
    ) -> Result<PostgresConfig> {
        let mut pg = PostgresConfig::parse(url)?;
        if let Some(file) = password_file {
            pg = pg.with_password_file(file)?;
        }
        if let Some(ca) = ca {
            pg = pg.with_ca(ca);
        }
        Ok(pg)
    }

    /// Reads the password from the first line of `path`.
    pub fn with_password_file(mut self, path: &Path) -> Result<PostgresConfig> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| Error::File {
            path: path.to_owned(),
            source,
        })?);
        let password = text.lines().next().unwrap_or("");
        if password.is_empty() {
            return Err(refused("store password file"));
        }
        self.pg.password(password);
        Ok(self)
    }

    /// The CA bundle that signs the PostgreSQL server's certificate (required with TLS).
    pub fn with_ca(mut self, path: &Path) -> PostgresConfig {
        self.ca = Some(path.to_owned());
        self
    }

    /// The rustls connector, or `None` for `sslmode=disable`.
    pub(super) fn connector(&self) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>> {
        if !self.tls {
            return Ok(None);
        }
        let Some(ca) = &self.ca else {
            tracing::error!("a PostgreSQL store over TLS needs the CA of its server (store_ca)");
            return Err(refused("store_ca"));
        };
        use rustls_pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        let certs =
            rustls_pki_types::CertificateDer::pem_file_iter(ca).map_err(|_| refused("store_ca"))?;
        for cert in certs {
            roots
                .add(cert.map_err(|_| refused("store_ca"))?)
                .map_err(|_| refused("store_ca"))?;
        }
        if roots.is_empty() {
            return Err(refused("store_ca"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|_| refused("store_ca"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_the_url_is_refused_and_never_shown() {
        assert!(PostgresConfig::parse("postgres://kms:secret@db:5432/kms").is_err());
        assert!(PostgresConfig::parse("/var/lib/kms").is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret-Pw\n").unwrap();
        let c = PostgresConfig::parse("postgres://kms@db:6000/kms")
            .unwrap()
            .with_password_file(&file)
            .unwrap();
        assert_eq!(c.to_string(), "postgres://kms@db:6000/kms");
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        assert_eq!(c.pg.get_password(), Some(&b"s3cret-Pw"[..]));
    }

    #[test]
    fn tls_is_required_unless_disabled_and_needs_a_ca() {
        let c = PostgresConfig::parse("postgres://kms@db/kms").unwrap();
        assert!(c.tls);
        assert!(c.connector().is_err(), "no CA: refused");
        let c = PostgresConfig::parse("postgres://kms@db/kms?sslmode=prefer").unwrap();
        assert_eq!(
            c.pg.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        let c = PostgresConfig::parse("postgres://kms@db/kms?sslmode=disable").unwrap();
        assert!(c.connector().unwrap().is_none());
    }
}
