//! TLS configuration for the gRPC server and its clients, failing closed.
//!
//! The service speaks gRPC over **mutual** TLS only: every caller presents a certificate issued
//! by the client CA, and its [`Identity`](crate::access::identity::Identity) is read from that
//! certificate. tonic serves TLS *without* client authentication when `client_ca_root` is not set;
//! [`server_config`] therefore always sets it and refuses, before anything listens, a client CA
//! that is missing, empty, not PEM, holds anything but certificates, or holds a certificate that
//! is not a CA. Client authentication is never optional.
//!
//! Everything is checked when the configuration is built, so a bad file stops the server at
//! start-up with an error naming the file, not at the first handshake.
//!
//! # Private keys in memory
//!
//! `tonic::transport::Identity` (and so `ClientTlsConfig`) derives `Debug` over the private key
//! bytes: never keep one in a struct that derives `Debug`, never log a `ClientTlsConfig`. The
//! types here keep PEM text in [`Zeroizing`] buffers and build tonic's types on demand; tonic's
//! own copies are not wiped.
//!
//! ```no_run
//! use sscard_kms::access::tls::{ClientTls, ServerTlsFiles};
//!
//! let server = ServerTlsFiles {
//!     cert: "pki/server.pem".into(),
//!     key: "pki/server.key".into(),
//!     client_ca: "pki/ca.pem".into(),
//! }
//! .load()?; // -> tonic::transport::ServerTlsConfig, client CA set
//!
//! let client = ClientTls::from_files(
//!     "pki/ca.pem".as_ref(),
//!     "pki/station.pem".as_ref(),
//!     "pki/station.key".as_ref(),
//! )?
//! .config(); // -> tonic::transport::ClientTlsConfig for `localhost`
//! # Ok::<(), sscard_kms::Error>(())
//! ```

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{PemObject as _, SectionKind};
use tonic::transport::{Certificate, ClientTlsConfig, ServerTlsConfig};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The server name clients verify by default (the dev PKI's server certificate is for it).
pub const DEFAULT_SERVER_NAME: &str = "localhost";

/// Where the server's TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// Server certificate (PEM; the chain, leaf first).
    pub cert: PathBuf,
    /// Server private key (PEM: PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// CA(s) whose certificates clients must present (PEM, certificates only). Required.
    pub client_ca: PathBuf,
}

impl ServerTlsFiles {
    /// Reads and checks the three files; see [`server_config`].
    pub fn load(&self) -> Result<ServerTlsConfig> {
        let cert = read_file(&self.cert)?;
        let key = Zeroizing::new(read_file(&self.key)?);
        let client_ca = read_file(&self.client_ca)?;
        server_config(&cert, &key, &client_ca)
    }
}

/// A server configuration requiring client certificates issued by `client_ca_pem`.
///
/// Refused ([`Error::Tls`]) unless: the client CA holds one or more certificates and nothing else,
/// each one a CA; the server certificate file holds one or more certificates, the first valid now;
/// the key file holds exactly one private key.
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: &str,
) -> Result<ServerTlsConfig> {
    check_ca_bundle("client CA", client_ca_pem)?;
    check_chain("server certificate", cert_pem)?;
    check_key("server key", key_pem)?;
    Ok(ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem))
        .client_ca_root(Certificate::from_pem(client_ca_pem))
        .client_auth_optional(false))
}

/// A client's TLS material, checked: the CA it trusts for the server, its certificate and key.
///
/// Build tonic's [`ClientTlsConfig`] with [`ClientTls::config`] when connecting.
#[derive(Clone)]
pub struct ClientTls {
    ca_pem: String,
    cert_pem: String,
    key_pem: Zeroizing<String>,
    domain: String,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// From PEM text: the server's CA, the client certificate (chain) and its private key.
    ///
    /// Checked like the server side: the CA text holds CA certificates only, the certificate
    /// is valid now, the key text holds exactly one private key.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<ClientTls> {
        check_ca_bundle("server CA", ca_pem)?;
        check_chain("client certificate", cert_pem)?;
        check_key("client key", key_pem)?;
        Ok(ClientTls {
            ca_pem: ca_pem.to_owned(),
            cert_pem: cert_pem.to_owned(),
            key_pem: Zeroizing::new(key_pem.to_owned()),
            domain: DEFAULT_SERVER_NAME.to_owned(),
        })
    }

    /// From PEM files; see [`ClientTls::from_pem`].
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<ClientTls> {
        let ca = read_file(ca)?;
        let cert = read_file(cert)?;
        let key = Zeroizing::new(read_file(key)?);
        ClientTls::from_pem(&ca, &cert, &key)
    }

    /// Verify the server's certificate for `domain` instead of [`DEFAULT_SERVER_NAME`].
    pub fn with_domain(mut self, domain: impl Into<String>) -> ClientTls {
        self.domain = domain.into();
        self
    }

    /// The server name the server's certificate is verified against.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// tonic's configuration: trust only the given CA, present the client certificate.
    ///
    /// The result holds the private key and derives `Debug`: do not log it or keep it in a
    /// struct that derives `Debug`.
    pub fn config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                self.key_pem.as_bytes(),
            ))
            .domain_name(self.domain.clone())
    }
}

fn read_file(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| Error::File {
        path: path.to_owned(),
        source,
    })
}

/// The PEM sections of `pem`, each `(kind, DER)`; DER of private keys is wiped on drop.
fn sections(what: &'static str, pem: &str) -> Result<Vec<(SectionKind, Zeroizing<Vec<u8>>)>> {
    <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes())
        .map(|item| {
            item.map(|(kind, der)| (kind, Zeroizing::new(der)))
                .map_err(|_| Error::Tls {
                    what,
                    reason: "malformed PEM",
                })
        })
        .collect()
}

/// Parses one DER certificate completely (no trailing bytes).
fn parse_cert<'a>(
    what: &'static str,
    der: &'a [u8],
) -> Result<x509_parser::certificate::X509Certificate<'a>> {
    crate::access::identity::parse_certificate(der).ok_or(Error::Tls {
        what,
        reason: "a certificate does not parse",
    })
}

/// One or more CA certificates, and nothing else.
fn check_ca_bundle(what: &'static str, pem: &str) -> Result<()> {
    let sections = sections(what, pem)?;
    if sections.is_empty() {
        return Err(Error::Tls {
            what,
            reason: "no certificate (a client CA is required: no mutual TLS without it)",
        });
    }
    for (kind, der) in &sections {
        if *kind != SectionKind::Certificate {
            return Err(Error::Tls {
                what,
                reason: "holds something other than certificates",
            });
        }
        if !parse_cert(what, der)?.is_ca() {
            return Err(Error::Tls {
                what,
                reason: "holds a certificate that is not a CA",
            });
        }
    }
    Ok(())
}

/// An end-entity certificate (then its chain), valid now, and no other section.
fn check_chain(what: &'static str, pem: &str) -> Result<()> {
    let sections = sections(what, pem)?;
    let Some((_, leaf)) = sections.first() else {
        return Err(Error::Tls {
            what,
            reason: "no certificate",
        });
    };
    if sections
        .iter()
        .any(|(kind, _)| *kind != SectionKind::Certificate)
    {
        return Err(Error::Tls {
            what,
            reason: "holds something other than certificates",
        });
    }
    for (_, der) in &sections {
        parse_cert(what, der)?;
    }
    if !parse_cert(what, leaf)?.validity().is_valid() {
        return Err(Error::Tls {
            what,
            reason: "expired or not yet valid",
        });
    }
    Ok(())
}

/// Exactly one private key (other sections, e.g. the certificate, are tolerated).
fn check_key(what: &'static str, pem: &str) -> Result<()> {
    let keys = sections(what, pem)?
        .iter()
        .filter(|(kind, _)| {
            matches!(
                kind,
                SectionKind::PrivateKey | SectionKind::EcPrivateKey | SectionKind::RsaPrivateKey
            )
        })
        .count();
    match keys {
        0 => Err(Error::Tls {
            what,
            reason: "no private key",
        }),
        1 => Ok(()),
        _ => Err(Error::Tls {
            what,
            reason: "more than one private key",
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::task::{Context, Poll};

    use tonic::codegen::{Service, http};
    use tonic::server::NamedService;
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    use tonic::{Code, Status};

    use super::*;
    use crate::access::identity::{Identity, san_uris_from_der};
    use crate::access::pki::DevPki;

    fn reason(result: Result<impl fmt::Debug>) -> (&'static str, &'static str) {
        match result {
            Err(Error::Tls { what, reason }) => (what, reason),
            other => panic!("expected a TLS refusal, got {other:?}"),
        }
    }

    fn server_with_ca(pki: &DevPki, client_ca: &str) -> Result<ServerTlsConfig> {
        server_config(&pki.server().cert_pem, &pki.server().key_pem, client_ca)
    }

    #[test]
    fn server_without_client_ca_is_refused() {
        let pki = DevPki::generate().unwrap();
        for ca in ["", "\n", "not pem at all"] {
            assert_eq!(
                reason(server_with_ca(&pki, ca)),
                (
                    "client CA",
                    "no certificate (a client CA is required: no mutual TLS without it)"
                ),
                "{ca:?}"
            );
        }
        assert_eq!(
            reason(server_with_ca(
                &pki,
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            )),
            ("client CA", "a certificate does not parse")
        );
        assert_eq!(
            reason(server_with_ca(
                &pki,
                "-----BEGIN CERTIFICATE-----\n%%%%\n-----END CERTIFICATE-----\n"
            )),
            ("client CA", "malformed PEM")
        );
        // A leaf where the CA should be.
        assert_eq!(
            reason(server_with_ca(&pki, &pki.server().cert_pem)),
            ("client CA", "holds a certificate that is not a CA")
        );
        // A key pasted into the CA file.
        let with_key = format!("{}{}", pki.ca_pem(), &*pki.server().key_pem);
        assert_eq!(
            reason(server_with_ca(&pki, &with_key)),
            ("client CA", "holds something other than certificates")
        );
        server_with_ca(&pki, pki.ca_pem()).unwrap();
        // Two CAs are fine.
        let other = DevPki::generate().unwrap();
        server_with_ca(&pki, &format!("{}{}", pki.ca_pem(), other.ca_pem())).unwrap();
    }

    #[test]
    fn server_files_are_checked() {
        let pki = DevPki::generate().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        pki.write_to(&tmp.path().join("pki")).unwrap();
        let dir = tmp.path().join("pki");
        let files = ServerTlsFiles {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_ca: dir.join("ca.pem"),
        };
        files.load().unwrap();

        let missing = ServerTlsFiles {
            client_ca: dir.join("no-such-ca.pem"),
            ..files.clone()
        };
        match missing.load() {
            Err(Error::File { path, .. }) => assert!(path.ends_with("no-such-ca.pem")),
            other => panic!("{other:?}"),
        }
        let empty = dir.join("empty.pem");
        fs::write(&empty, "").unwrap();
        let empty_ca = ServerTlsFiles {
            client_ca: empty.clone(),
            ..files.clone()
        };
        assert_eq!(reason(empty_ca.load()).0, "client CA");

        let swapped = ServerTlsFiles {
            cert: dir.join("server.key"),
            key: dir.join("server.pem"),
            ..files.clone()
        };
        assert_eq!(
            reason(swapped.load()),
            (
                "server certificate",
                "holds something other than certificates"
            )
        );
        let no_key = ServerTlsFiles {
            key: empty,
            ..files.clone()
        };
        assert_eq!(reason(no_key.load()), ("server key", "no private key"));
        let two_keys = dir.join("two.key");
        fs::write(
            &two_keys,
            format!("{}{}", &*pki.server().key_pem, &*pki.server().key_pem),
        )
        .unwrap();
        let two = ServerTlsFiles {
            key: two_keys,
            ..files
        };
        assert_eq!(
            reason(two.load()),
            ("server key", "more than one private key")
        );
    }

    #[test]
    fn client_material_is_checked() {
        let pki = DevPki::generate().unwrap();
        let id = Identity::from_uri("sscard://officer/officer-1").unwrap();
        let pair = pki.client(&id).unwrap();
        let tls = ClientTls::from_pem(pki.ca_pem(), &pair.cert_pem, &pair.key_pem).unwrap();
        assert_eq!(tls.domain(), "localhost");
        assert_eq!(
            tls.clone().with_domain("kms.example").domain(),
            "kms.example"
        );
        let shown = format!("{tls:?}");
        assert!(
            !shown.contains("PRIVATE KEY") && !shown.contains("CERTIFICATE"),
            "{shown}"
        );

        assert_eq!(
            reason(ClientTls::from_pem("", &pair.cert_pem, &pair.key_pem)).0,
            "server CA"
        );
        assert_eq!(
            reason(ClientTls::from_pem(pki.ca_pem(), &pair.cert_pem, "")),
            ("client key", "no private key")
        );
        assert_eq!(
            reason(ClientTls::from_pem(pki.ca_pem(), "", &pair.key_pem)),
            ("client certificate", "no certificate")
        );
    }

    /// A gRPC service answering every call with the caller's identity URI as the message of an
    /// `Unimplemented` status (or `PermissionDenied` and the refusal), read from the verified
    /// peer certificate exactly as the real server will.
    #[derive(Clone)]
    struct WhoAmI;

    impl NamedService for WhoAmI {
        const NAME: &'static str = "sscard.test.WhoAmI";
    }

    impl Service<http::Request<tonic::body::Body>> for WhoAmI {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
            let who = request
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.peer_certs())
                .ok_or(Error::NoIdentity)
                .and_then(|certs| {
                    let leaf = certs.first().ok_or(Error::NoIdentity)?;
                    Identity::from_san_uris(&san_uris_from_der(leaf)?)
                });
            let status = match who {
                Ok(identity) => Status::unimplemented(identity.to_string()),
                Err(err) => Status::permission_denied(err.to_string()),
            };
            std::future::ready(Ok(status.into_http()))
        }
    }

    async fn start(config: ServerTlsConfig) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let server = tonic::transport::Server::builder()
            .tls_config(config)
            .unwrap()
            .add_service(WhoAmI)
            .serve_with_incoming(incoming);
        tokio::spawn(server);
        addr
    }

    /// Calls `WhoAmI`: `Ok(uri)` if the server saw an identity, `Err` otherwise.
    async fn who_am_i(addr: SocketAddr, tls: ClientTlsConfig) -> Result<String, Status> {
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .map_err(|err| Status::unavailable(format!("{err:?}")))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|err| Status::unavailable(format!("{err:?}")))?;
        let path = http::uri::PathAndQuery::from_static("/sscard.test.WhoAmI/Ping");
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        match grpc.unary(tonic::Request::new(()), path, codec).await {
            Err(status) if status.code() == Code::Unimplemented => Ok(status.message().to_owned()),
            Err(status) => Err(status),
            Ok(_) => panic!("WhoAmI never answers Ok"),
        }
    }

    #[tokio::test]
    async fn mutual_tls_end_to_end() {
        let pki = DevPki::generate().unwrap();
        let foreign = DevPki::generate().unwrap();
        let addr = start(server_with_ca(&pki, pki.ca_pem()).unwrap()).await;

        // Every role is recognised from its certificate alone.
        for identity in DevPki::dev_identities().unwrap() {
            let pair = pki.client(&identity).unwrap();
            let tls = ClientTls::from_pem(pki.ca_pem(), &pair.cert_pem, &pair.key_pem).unwrap();
            assert_eq!(
                who_am_i(addr, tls.config()).await.unwrap(),
                identity.to_string()
            );
        }

        let station = Identity::from_uri("sscard://station/440100/GZ-01").unwrap();

        // A certificate from another CA is refused by the TLS layer.
        let stranger = foreign.client(&station).unwrap();
        let tls = ClientTls::from_pem(pki.ca_pem(), &stranger.cert_pem, &stranger.key_pem)
            .unwrap()
            .config();
        let refused = who_am_i(addr, tls).await.unwrap_err();
        assert_ne!(refused.code(), Code::Unimplemented, "{refused:?}");

        // No client certificate at all: refused.
        let anonymous = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pki.ca_pem()))
            .domain_name("localhost");
        let refused = who_am_i(addr, anonymous).await.unwrap_err();
        assert_ne!(refused.code(), Code::Unimplemented, "{refused:?}");

        // The client does not trust a server from another PKI.
        let pair = pki.client(&station).unwrap();
        let tls = ClientTls::from_pem(foreign.ca_pem(), &pair.cert_pem, &pair.key_pem)
            .unwrap()
            .config();
        assert!(who_am_i(addr, tls).await.is_err());

        // Nor a server certificate for another name.
        let tls = ClientTls::from_pem(pki.ca_pem(), &pair.cert_pem, &pair.key_pem)
            .unwrap()
            .with_domain("kms.example")
            .config();
        assert!(who_am_i(addr, tls).await.is_err());
    }
}
