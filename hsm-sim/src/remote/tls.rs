//! PEM files into the TLS configurations of the HSM server and its clients.
//!
//! Both sides are mutually authenticated, always: a [`ServerTls`] cannot exist without the CA
//! that issues client certificates, because tonic serves TLS *without* client authentication
//! when `client_ca_root` is missing. Inputs are parsed here, at start-up, so that a bad file is a
//! start-up error rather than a failure of the first handshake.
//!
//! Neither type derives `Debug`: `tonic::transport::Identity` does, and prints the private key.

use core::fmt;
use std::path::Path;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use zeroize::Zeroizing;

use super::SetupError;

/// How long a client may take to complete its TLS handshake before the server drops it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's identity and the CA its clients' certificates must chain to.
pub struct ServerTls {
    identity: Identity,
    client_ca: Certificate,
}

impl ServerTls {
    /// From PEM text: the server's certificate chain (leaf first), its private key, and the CA
    /// certificate(s) that issue client certificates. All three are required.
    pub fn from_pem(
        cert_chain: &[u8],
        key: &[u8],
        client_ca: &[u8],
    ) -> Result<ServerTls, SetupError> {
        check_certificates(cert_chain, "server certificate")?;
        check_private_key(key, "server private key")?;
        check_certificates(client_ca, "client CA")?;
        Ok(ServerTls {
            identity: Identity::from_pem(cert_chain, key),
            client_ca: Certificate::from_pem(client_ca),
        })
    }

    /// From PEM files (see [`ServerTls::from_pem`]).
    pub fn from_pem_files(
        cert_chain: &Path,
        key: &Path,
        client_ca: &Path,
    ) -> Result<ServerTls, SetupError> {
        let cert_pem = read(cert_chain)?;
        let key_pem = read(key)?;
        let ca_pem = read(client_ca)?;
        check_certificates(&cert_pem, &describe("server certificate", cert_chain))?;
        check_private_key(&key_pem, &describe("server private key", key))?;
        check_certificates(&ca_pem, &describe("client CA", client_ca))?;
        Ok(ServerTls {
            identity: Identity::from_pem(&*cert_pem, &*key_pem),
            client_ca: Certificate::from_pem(&*ca_pem),
        })
    }

    /// The tonic configuration: client certificates required, chained to the client CA.
    pub(crate) fn config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.client_ca.clone())
            .client_auth_optional(false)
            .timeout(HANDSHAKE_TIMEOUT)
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerTls { .. }")
    }
}

/// A client's identity, the CA that issued the HSM's server certificate, and optionally the
/// name to check that certificate against (when the endpoint's host is not in it).
#[derive(Clone)]
pub struct ClientTls {
    identity: Identity,
    server_ca: Certificate,
    domain_name: Option<String>,
}

impl ClientTls {
    /// From PEM text: the client's certificate chain (leaf first), its private key, and the CA
    /// certificate(s) the server's certificate must chain to.
    pub fn from_pem(
        cert_chain: &[u8],
        key: &[u8],
        server_ca: &[u8],
    ) -> Result<ClientTls, SetupError> {
        check_certificates(cert_chain, "client certificate")?;
        check_private_key(key, "client private key")?;
        check_certificates(server_ca, "server CA")?;
        Ok(ClientTls {
            identity: Identity::from_pem(cert_chain, key),
            server_ca: Certificate::from_pem(server_ca),
            domain_name: None,
        })
    }

    /// From PEM files (see [`ClientTls::from_pem`]).
    pub fn from_pem_files(
        cert_chain: &Path,
        key: &Path,
        server_ca: &Path,
    ) -> Result<ClientTls, SetupError> {
        let cert_pem = read(cert_chain)?;
        let key_pem = read(key)?;
        let ca_pem = read(server_ca)?;
        check_certificates(&cert_pem, &describe("client certificate", cert_chain))?;
        check_private_key(&key_pem, &describe("client private key", key))?;
        check_certificates(&ca_pem, &describe("server CA", server_ca))?;
        Ok(ClientTls {
            identity: Identity::from_pem(&*cert_pem, &*key_pem),
            server_ca: Certificate::from_pem(&*ca_pem),
            domain_name: None,
        })
    }

    /// Checks the server's certificate against `name` instead of the endpoint's host.
    pub fn with_domain_name(mut self, name: impl Into<String>) -> ClientTls {
        self.domain_name = Some(name.into());
        self
    }

    /// The tonic configuration: this identity, and only the given CA as trust anchor.
    pub(crate) fn config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .identity(self.identity.clone())
            .ca_certificate(self.server_ca.clone());
        match &self.domain_name {
            Some(name) => config.domain_name(name.clone()),
            None => config,
        }
    }
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("domain_name", &self.domain_name)
            .finish_non_exhaustive()
    }
}

/// Reads a whole file into a buffer that is wiped when dropped (it may be a private key).
fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, SetupError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| SetupError::Read {
            path: path.to_owned(),
            source,
        })
}

fn describe(what: &str, path: &Path) -> String {
    format!("{what} {}", path.display())
}

/// At least one PEM certificate, and every one of them a parsable X.509 certificate.
fn check_certificates(pem: &[u8], what: &str) -> Result<(), SetupError> {
    let refused = || SetupError::Certificate {
        what: what.to_owned(),
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| refused())?;
    if certs.is_empty() {
        return Err(refused());
    }
    for cert in &certs {
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|_| refused())?;
    }
    Ok(())
}

/// A PEM private key that rustls can use.
fn check_private_key(pem: &[u8], what: &str) -> Result<(), SetupError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map(drop)
        .map_err(|_| SetupError::PrivateKey {
            what: what.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_needs_a_client_ca() {
        // Syntactically a server with no client CA cannot be written; an empty or junk CA is
        // refused too.
        let junk = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        for ca in [&b""[..], &b"not pem"[..], &junk[..]] {
            assert!(matches!(
                check_certificates(ca, "client CA"),
                Err(SetupError::Certificate { .. })
            ));
        }
        assert!(matches!(
            check_private_key(b"", "key"),
            Err(SetupError::PrivateKey { .. })
        ));
    }
}
