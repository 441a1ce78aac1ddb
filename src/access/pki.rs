//! A local PKI for `dev` mode and for tests: a CA, a server certificate for `localhost`, and
//! client certificates carrying [`Identity`] URIs.
//!
//! **Development only.** The CA key is an ordinary file next to the certificates it signs; a
//! production deployment gets its certificates from the province's PKI and points
//! [`ServerTlsFiles`](crate::access::tls::ServerTlsFiles) at them.
//!
//! - CA: ECDSA P-256, CN `sscard-kms dev CA`, may sign end-entity certificates only.
//! - Server: CN `localhost`, SAN DNS `localhost`, IP `127.0.0.1` and `::1`, EKU serverAuth.
//! - Clients: CN = the identity's name, one SAN URI = the identity (see [`crate::access::identity`]),
//!   EKU clientAuth.
//!
//! All certificates are valid from one day before they are made to five years after.
//!
//! [`DevPki::write_to`] lays a PKI out in a directory (created `0700`, private keys `0600`):
//!
//! | file | content |
//! |---|---|
//! | `ca.pem`, `ca.key` | the dev CA (the key lets a reloaded PKI issue more client certificates) |
//! | `server.pem`, `server.key` | the server certificate and key |
//! | `<role>.pem`, `<role>.key` | one client per role, identities in [`DEV_IDENTITY_URIS`] |
//! | `reviewer.pem`, `reviewer.key` | the provincial reviewer, [`DEV_REVIEWER_URI`] |
//!
//! [`DevPki::load_or_generate`] reuses such a directory, so restarting `dev` keeps the client
//! certificates valid. Two calls of [`DevPki::generate`] give two unrelated CAs, which is how tests
//! make a "foreign" client that the server must refuse.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use x509_parser::certificate::X509Certificate;
use zeroize::Zeroizing;

use crate::access::identity::{Identity, Role};
use crate::error::{Error, Result};

/// Common name of the dev CA.
pub const CA_COMMON_NAME: &str = "sscard-kms dev CA";

/// The client identities [`DevPki::write_to`] issues, one per role, in [`Role::ALL`] order.
pub const DEV_IDENTITY_URIS: [&str; 6] = [
    "sscard://station/440100/GZ-01",
    "sscard://psam-line/440000/PSAM-LINE-01",
    "sscard://registrar/440100/GZ-REG-01",
    "sscard://officer/officer-1",
    "sscard://auditor/auditor-1",
    "sscard://service/kms",
];

/// The dev PKI's provincial reviewer: a registrar of the province, who accepts cards and
/// applicant rows (acceptance is the province's verdict). Its pair is
/// [`REVIEWER_CERT_FILE`]/[`REVIEWER_KEY_FILE`]; a PKI directory written before it existed gets
/// it on its next [`DevPki::load_or_generate`].
pub const DEV_REVIEWER_URI: &str = "sscard://registrar/440000/GD-REV-01";
/// File of the reviewer's certificate in a PKI directory.
pub const REVIEWER_CERT_FILE: &str = "reviewer.pem";
/// File of the reviewer's private key in a PKI directory.
pub const REVIEWER_KEY_FILE: &str = "reviewer.key";

/// File of the dev CA certificate in a PKI directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File of the dev CA private key in a PKI directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// File of the server certificate in a PKI directory.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// File of the server private key in a PKI directory.
pub const SERVER_KEY_FILE: &str = "server.key";

const ONE_DAY: Duration = Duration::from_secs(24 * 60 * 60);
const VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 60 * 60);

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct CertPair {
    /// The certificate (PEM, one `CERTIFICATE` block).
    pub cert_pem: String,
    /// The private key (PEM, PKCS#8), wiped from memory on drop.
    pub key_pem: Zeroizing<String>,
}

impl CertPair {
    /// The certificate in DER, e.g. for [`san_uris_from_der`](crate::access::identity::san_uris_from_der).
    pub fn cert_der(&self) -> Result<Vec<u8>> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map(|der| der.to_vec())
            .map_err(|_| Error::Certificate {
                reason: "not a PEM certificate",
            })
    }
}

impl fmt::Debug for CertPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertPair")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"[REDACTED]")
            .finish()
    }
}

/// A development CA with its server certificate; issues client certificates.
pub struct DevPki {
    ca_cert_pem: String,
    ca: Issuer<'static, KeyPair>,
    server: CertPair,
}

impl fmt::Debug for DevPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevPki")
            .field("ca", &CA_COMMON_NAME)
            .finish_non_exhaustive()
    }
}

impl DevPki {
    /// A new CA (fresh key) and server certificate. Nothing is written anywhere.
    pub fn generate() -> Result<DevPki> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = ca_params();
        set_validity(&mut ca_params)?;
        let ca_cert_pem = ca_params.self_signed(&ca_key)?.pem();
        let ca = Issuer::new(ca_params, ca_key);
        let server = issue_server(&ca)?;
        Ok(DevPki {
            ca_cert_pem,
            ca,
            server,
        })
    }

    /// The CA certificate (PEM): the client CA of the server and the trust anchor of clients.
    pub fn ca_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// The server certificate, for `localhost`, `127.0.0.1` and `::1`.
    pub fn server(&self) -> &CertPair {
        &self.server
    }

    /// A new client certificate (fresh key) for `identity`.
    pub fn client(&self, identity: &Identity) -> Result<CertPair> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        set_validity(&mut params)?;
        params.distinguished_name = common_name(identity.name());
        let uri = Ia5String::try_from(identity.to_string()).map_err(|_| Error::Pki {
            reason: "identity URI is not IA5 text",
        })?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.ca)?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }

    /// The identities of [`DEV_IDENTITY_URIS`], one per role.
    pub fn dev_identities() -> Result<Vec<Identity>> {
        DEV_IDENTITY_URIS
            .iter()
            .map(|uri| Identity::from_uri(uri))
            .collect()
    }

    /// Writes the PKI into `dir`, with a fresh client pair for each of [`DEV_IDENTITY_URIS`].
    ///
    /// `dir` is created with mode `0700` if it does not exist; an existing `dir` must not be
    /// accessible to group or others. Private keys are written `0600`. No file is overwritten: if
    /// one of them already exists, this fails (and may leave the files written before it).
    pub fn write_to(&self, dir: &Path) -> Result<()> {
        prepare_dir(dir)?;
        write_new(&dir.join(CA_CERT_FILE), self.ca_cert_pem.as_bytes(), false)?;
        let ca_key = Zeroizing::new(self.ca.key().serialize_pem());
        write_new(&dir.join(CA_KEY_FILE), ca_key.as_bytes(), true)?;
        write_new(
            &dir.join(SERVER_CERT_FILE),
            self.server.cert_pem.as_bytes(),
            false,
        )?;
        write_new(
            &dir.join(SERVER_KEY_FILE),
            self.server.key_pem.as_bytes(),
            true,
        )?;
        for identity in DevPki::dev_identities()? {
            let pair = self.client(&identity)?;
            let (cert, key) = role_files(identity.role());
            write_new(&dir.join(cert), pair.cert_pem.as_bytes(), false)?;
            write_new(&dir.join(key), pair.key_pem.as_bytes(), true)?;
        }
        self.write_reviewer(dir)
    }

    /// Writes the reviewer's pair ([`DEV_REVIEWER_URI`]) into `dir`.
    fn write_reviewer(&self, dir: &Path) -> Result<()> {
        let pair = self.client(&Identity::from_uri(DEV_REVIEWER_URI)?)?;
        write_new(
            &dir.join(REVIEWER_CERT_FILE),
            pair.cert_pem.as_bytes(),
            false,
        )?;
        write_new(&dir.join(REVIEWER_KEY_FILE), pair.key_pem.as_bytes(), true)
    }

    /// Loads a PKI written by [`DevPki::write_to`].
    ///
    /// Refused if a file is missing, a private key file or `dir` is accessible to group or
    /// others, a key does not belong to its certificate, a certificate is not signed by the CA,
    /// is expired, or a role certificate does not carry its role's identity.
    pub fn load(dir: &Path) -> Result<DevPki> {
        check_private(dir)?;
        let ca_cert_pem = read_file(&dir.join(CA_CERT_FILE))?;
        let ca_key = read_key(&dir.join(CA_KEY_FILE))?;
        let server = CertPair {
            cert_pem: read_file(&dir.join(SERVER_CERT_FILE))?,
            key_pem: read_key(&dir.join(SERVER_KEY_FILE))?,
        };

        let ca_der = pem_to_der(&dir.join(CA_CERT_FILE), &ca_cert_pem)?;
        let ca_cert = parse_der(&dir.join(CA_CERT_FILE), &ca_der)?;
        let ca_pair = KeyPair::from_pem(&ca_key).map_err(|_| Error::PkiFile {
            path: dir.join(CA_KEY_FILE),
            reason: "not a PKCS#8 private key",
        })?;
        check_key_matches(&dir.join(CA_KEY_FILE), &ca_pair, &ca_cert)?;
        check_issued(&dir.join(CA_CERT_FILE), &ca_cert, &ca_cert)?;

        let server_der = pem_to_der(&dir.join(SERVER_CERT_FILE), &server.cert_pem)?;
        let server_cert = parse_der(&dir.join(SERVER_CERT_FILE), &server_der)?;
        let server_pair = KeyPair::from_pem(&server.key_pem).map_err(|_| Error::PkiFile {
            path: dir.join(SERVER_KEY_FILE),
            reason: "not a PKCS#8 private key",
        })?;
        check_key_matches(&dir.join(SERVER_KEY_FILE), &server_pair, &server_cert)?;
        check_issued(&dir.join(SERVER_CERT_FILE), &server_cert, &ca_cert)?;

        for identity in DevPki::dev_identities()? {
            let (cert_file, key_file) = role_files(identity.role());
            let cert_path = dir.join(cert_file);
            let key_path = dir.join(key_file);
            let der = pem_to_der(&cert_path, &read_file(&cert_path)?)?;
            let cert = parse_der(&cert_path, &der)?;
            check_issued(&cert_path, &cert, &ca_cert)?;
            let found = crate::access::identity::san_uris_from_der(&der)
                .and_then(|uris| Identity::from_san_uris(&uris))
                .map_err(|_| Error::PkiFile {
                    path: cert_path.clone(),
                    reason: "no valid identity in the certificate",
                })?;
            if found.role() != identity.role() {
                return Err(Error::PkiFile {
                    path: cert_path,
                    reason: "certificate of another role",
                });
            }
            let key_pem = read_key(&key_path)?;
            let key = KeyPair::from_pem(&key_pem).map_err(|_| Error::PkiFile {
                path: key_path.clone(),
                reason: "not a PKCS#8 private key",
            })?;
            check_key_matches(&key_path, &key, &cert)?;
        }

        Ok(DevPki {
            ca_cert_pem,
            ca: Issuer::new(ca_params(), ca_pair),
            server,
        })
    }

    /// Loads the PKI in `dir` if there is one, or generates one and writes it there.
    ///
    /// "There is one" means all its files exist; if none of them does, a new PKI is written. A
    /// partial PKI is refused (never silently replaced): delete the directory to start over.
    pub fn load_or_generate(dir: &Path) -> Result<DevPki> {
        let files = pki_files();
        let mut present = Vec::new();
        let mut missing = Vec::new();
        for file in files {
            let path = dir.join(file);
            match fs::symlink_metadata(&path) {
                Ok(_) => present.push(path),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => missing.push(path),
                Err(source) => return Err(Error::File { path, source }),
            }
        }
        if present.is_empty() {
            let pki = DevPki::generate()?;
            pki.write_to(dir)?;
            return Ok(pki);
        }
        if let Some(path) = missing.into_iter().next() {
            return Err(Error::PkiFile {
                path,
                reason: "missing from a partial dev PKI (delete the directory to regenerate)",
            });
        }
        let pki = DevPki::load(dir)?;
        // A directory of before the reviewer: add its pair.
        let reviewer = [REVIEWER_CERT_FILE, REVIEWER_KEY_FILE].map(|f| dir.join(f));
        if reviewer.iter().all(|p| fs::symlink_metadata(p).is_err()) {
            pki.write_reviewer(dir)?;
        }
        Ok(pki)
    }
}

/// All file names of a dev PKI directory.
fn pki_files() -> Vec<String> {
    let mut files = vec![
        CA_CERT_FILE.to_owned(),
        CA_KEY_FILE.to_owned(),
        SERVER_CERT_FILE.to_owned(),
        SERVER_KEY_FILE.to_owned(),
    ];
    for role in Role::ALL {
        let (cert, key) = role_files(role);
        files.push(cert);
        files.push(key);
    }
    files
}

/// `<role>.pem`, `<role>.key`.
fn role_files(role: Role) -> (String, String) {
    (format!("{role}.pem"), format!("{role}.key"))
}

/// The CA's parameters, except validity: the same on generation and on reload (an [`Issuer`]
/// takes its name, key identifier method and key usages from them).
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn issue_server(ca: &Issuer<'_, KeyPair>) -> Result<CertPair> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])?;
    set_validity(&mut params)?;
    params.distinguished_name = common_name("localhost");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, ca)?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Valid from one day ago to five years from now.
fn set_validity(params: &mut CertificateParams) -> Result<()> {
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| Error::Pki {
            reason: "system clock is before 1970",
        })?;
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_before = now - ONE_DAY;
    params.not_after = now + VALIDITY;
    Ok(())
}

#[cfg(unix)]
fn prepare_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => check_private(dir),
        Err(source) => Err(Error::File {
            path: dir.to_owned(),
            source,
        }),
    }
}

#[cfg(not(unix))]
fn prepare_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|source| Error::File {
        path: dir.to_owned(),
        source,
    })
}

/// Refuses a file or directory that group or others can access.
#[cfg(unix)]
fn check_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = fs::metadata(path).map_err(|source| Error::File {
        path: path.to_owned(),
        source,
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::PkiFile {
            path: path.to_owned(),
            reason: "accessible to group or others (chmod go-rwx)",
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<()> {
    Ok(())
}

/// Creates `path` (never overwriting), `0600` if `private`, `0644` otherwise.
fn write_new(path: &Path, contents: &[u8], private: bool) -> Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let io = |source| Error::File {
        path: path.to_owned(),
        source,
    };
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

fn read_file(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| Error::File {
        path: path.to_owned(),
        source,
    })
}

fn read_key(path: &Path) -> Result<Zeroizing<String>> {
    check_private(path)?;
    read_file(path).map(Zeroizing::new)
}

fn pem_to_der(path: &Path, pem: &str) -> Result<Vec<u8>> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|der| der.to_vec())
        .map_err(|_| Error::PkiFile {
            path: path.to_owned(),
            reason: "not a PEM certificate",
        })
}

fn parse_der<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>> {
    crate::access::identity::parse_certificate(der).ok_or_else(|| Error::PkiFile {
        path: path.to_owned(),
        reason: "not an X.509 certificate",
    })
}

fn check_key_matches(path: &Path, key: &KeyPair, cert: &X509Certificate<'_>) -> Result<()> {
    if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
        return Err(Error::PkiFile {
            path: path.to_owned(),
            reason: "private key does not belong to its certificate",
        });
    }
    Ok(())
}

/// `cert` (at `path`) is signed by `issuer` and valid now.
fn check_issued(
    path: &Path,
    cert: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
) -> Result<()> {
    if cert.issuer() != issuer.subject()
        || cert.verify_signature(Some(issuer.public_key())).is_err()
    {
        return Err(Error::PkiFile {
            path: path.to_owned(),
            reason: "not issued by the dev CA in ca.pem",
        });
    }
    if !cert.validity().is_valid() {
        return Err(Error::PkiFile {
            path: path.to_owned(),
            reason: "expired or not yet valid (delete the directory to regenerate)",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::identity::san_uris_from_der;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn every_role_certificate_round_trips() {
        let pki = DevPki::generate().unwrap();
        let ca_der = CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).unwrap();
        for identity in DevPki::dev_identities().unwrap() {
            let pair = pki.client(&identity).unwrap();
            let der = pair.cert_der().unwrap();
            let uris = san_uris_from_der(&der).unwrap();
            assert_eq!(uris, vec![identity.to_string()]);
            assert_eq!(Identity::from_san_uris(&uris).unwrap(), identity);

            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            let cn = cert.subject().iter_common_name().next().unwrap();
            assert_eq!(cn.as_str().unwrap(), identity.name());
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.client_auth && !eku.server_auth);
            assert!(!cert.is_ca());
            let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
            cert.verify_signature(Some(ca.public_key())).unwrap();
        }
        assert_eq!(
            DevPki::dev_identities()
                .unwrap()
                .iter()
                .map(Identity::role)
                .collect::<Vec<_>>(),
            Role::ALL
        );
    }

    #[test]
    fn server_certificate_names_localhost() {
        let pki = DevPki::generate().unwrap();
        let der = pki.server().cert_der().unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        let names = format!("{:?}", san.general_names);
        assert!(names.contains("DNSName(\"localhost\")"), "{names}");
        assert!(names.contains("IPAddress([127, 0, 0, 1])"), "{names}");
        assert!(
            names.contains("IPAddress([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])"),
            "{names}"
        );
        // No identity in the server certificate.
        assert!(matches!(
            Identity::from_san_uris(&san_uris_from_der(&der).unwrap()),
            Err(Error::NoIdentity)
        ));
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(cert.validity().is_valid());
    }

    #[test]
    fn debug_prints_no_key() {
        let pki = DevPki::generate().unwrap();
        let pair = pki.server();
        let body: String = pair
            .key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        for shown in [format!("{pair:?}"), format!("{pki:?}")] {
            assert!(!shown.contains("PRIVATE KEY"), "{shown}");
            assert!(!shown.contains(&body[..16]), "{shown}");
            assert!(!shown.contains(&body[body.len() - 16..]), "{shown}");
        }
        assert!(format!("{pair:?}").contains("[REDACTED]"));
    }

    #[test]
    fn two_generations_are_unrelated() {
        let a = DevPki::generate().unwrap();
        let b = DevPki::generate().unwrap();
        assert_ne!(a.ca_pem(), b.ca_pem());
        let a_ca = CertificateDer::from_pem_slice(a.ca_pem().as_bytes()).unwrap();
        let (_, a_ca) = x509_parser::parse_x509_certificate(&a_ca).unwrap();
        let b_server = b.server().cert_der().unwrap();
        let (_, b_server) = x509_parser::parse_x509_certificate(&b_server).unwrap();
        assert!(b_server.verify_signature(Some(a_ca.public_key())).is_err());
    }

    #[test]
    fn write_load_and_reuse() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let first = DevPki::load_or_generate(&dir).unwrap();
        for file in pki_files() {
            assert!(dir.join(&file).is_file(), "{file}");
        }
        #[cfg(unix)]
        {
            assert_eq!(mode(&dir), 0o700);
            for file in pki_files() {
                let expected = if file.ends_with(".key") { 0o600 } else { 0o644 };
                assert_eq!(mode(&dir.join(&file)), expected, "{file}");
            }
        }
        let station = fs::read_to_string(dir.join("station.pem")).unwrap();

        // A restart reuses everything.
        let again = DevPki::load_or_generate(&dir).unwrap();
        assert_eq!(again.ca_pem(), first.ca_pem());
        assert_eq!(again.server().cert_pem, first.server().cert_pem);
        assert_eq!(
            *again.server().key_pem,
            fs::read_to_string(dir.join(SERVER_KEY_FILE)).unwrap()
        );
        assert_eq!(
            fs::read_to_string(dir.join("station.pem")).unwrap(),
            station
        );

        // The reloaded CA still issues certificates that chain to ca.pem.
        let id = Identity::from_uri("sscard://station/440300/SZ-01").unwrap();
        let pair = again.client(&id).unwrap();
        let ca_der = CertificateDer::from_pem_slice(first.ca_pem().as_bytes()).unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let der = pair.cert_der().unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        cert.verify_signature(Some(ca.public_key())).unwrap();
        assert_eq!(cert.issuer(), ca.subject());

        // Writing over an existing PKI is refused.
        assert!(matches!(first.write_to(&dir), Err(Error::File { .. })));

        // The provincial reviewer's pair; a directory of before it gets it on the next load.
        let reviewer_der = |dir: &Path| {
            let pem = fs::read_to_string(dir.join(REVIEWER_CERT_FILE)).unwrap();
            CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
        };
        let uris = san_uris_from_der(&reviewer_der(&dir)).unwrap();
        assert_eq!(uris, [DEV_REVIEWER_URI]);
        assert_eq!(mode(&dir.join(REVIEWER_KEY_FILE)), 0o600);
        fs::remove_file(dir.join(REVIEWER_CERT_FILE)).unwrap();
        fs::remove_file(dir.join(REVIEWER_KEY_FILE)).unwrap();
        DevPki::load_or_generate(&dir).unwrap();
        let der = reviewer_der(&dir);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        cert.verify_signature(Some(ca.public_key())).unwrap();
    }

    #[test]
    fn partial_or_tampered_pki_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        DevPki::load_or_generate(&dir).unwrap();

        // A missing file.
        let officer_key = fs::read(dir.join("officer.key")).unwrap();
        fs::remove_file(dir.join("officer.key")).unwrap();
        match DevPki::load_or_generate(&dir) {
            Err(Error::PkiFile { path, .. }) => assert!(path.ends_with("officer.key")),
            other => panic!("{other:?}"),
        }
        write_new(&dir.join("officer.key"), &officer_key, true).unwrap();
        DevPki::load_or_generate(&dir).unwrap();

        // A server certificate from another CA.
        let other = DevPki::generate().unwrap();
        let server_pem = fs::read(dir.join(SERVER_CERT_FILE)).unwrap();
        let server_key = fs::read(dir.join(SERVER_KEY_FILE)).unwrap();
        fs::remove_file(dir.join(SERVER_CERT_FILE)).unwrap();
        fs::remove_file(dir.join(SERVER_KEY_FILE)).unwrap();
        write_new(
            &dir.join(SERVER_CERT_FILE),
            other.server().cert_pem.as_bytes(),
            false,
        )
        .unwrap();
        write_new(
            &dir.join(SERVER_KEY_FILE),
            other.server().key_pem.as_bytes(),
            true,
        )
        .unwrap();
        match DevPki::load(&dir) {
            Err(Error::PkiFile { path, reason }) => {
                assert!(path.ends_with(SERVER_CERT_FILE));
                assert_eq!(reason, "not issued by the dev CA in ca.pem");
            }
            other => panic!("{other:?}"),
        }

        // The right certificate with the wrong key.
        fs::remove_file(dir.join(SERVER_CERT_FILE)).unwrap();
        write_new(&dir.join(SERVER_CERT_FILE), &server_pem, false).unwrap();
        match DevPki::load(&dir) {
            Err(Error::PkiFile { path, reason }) => {
                assert!(path.ends_with(SERVER_KEY_FILE));
                assert_eq!(reason, "private key does not belong to its certificate");
            }
            other => panic!("{other:?}"),
        }
        fs::remove_file(dir.join(SERVER_KEY_FILE)).unwrap();
        write_new(&dir.join(SERVER_KEY_FILE), &server_key, true).unwrap();

        // A station file holding the auditor certificate.
        let station_pem = fs::read(dir.join("station.pem")).unwrap();
        let station_key = fs::read(dir.join("station.key")).unwrap();
        fs::remove_file(dir.join("station.pem")).unwrap();
        fs::remove_file(dir.join("station.key")).unwrap();
        fs::copy(dir.join("auditor.pem"), dir.join("station.pem")).unwrap();
        fs::copy(dir.join("auditor.key"), dir.join("station.key")).unwrap();
        match DevPki::load(&dir) {
            Err(Error::PkiFile { path, reason }) => {
                assert!(path.ends_with("station.pem"));
                assert_eq!(reason, "certificate of another role");
            }
            other => panic!("{other:?}"),
        }
        fs::remove_file(dir.join("station.pem")).unwrap();
        fs::remove_file(dir.join("station.key")).unwrap();
        write_new(&dir.join("station.pem"), &station_pem, false).unwrap();
        write_new(&dir.join("station.key"), &station_key, true).unwrap();
        DevPki::load(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn loose_permissions_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        DevPki::load_or_generate(&dir).unwrap();

        let key = dir.join(CA_KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
        match DevPki::load_or_generate(&dir) {
            Err(Error::PkiFile { path, .. }) => assert_eq!(path, key),
            other => panic!("{other:?}"),
        }
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        match DevPki::load_or_generate(&dir) {
            Err(Error::PkiFile { path, .. }) => assert_eq!(path, dir),
            other => panic!("{other:?}"),
        }
        // Nor will a PKI be written into a directory others can read.
        let open = tmp.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            DevPki::generate().unwrap().write_to(&open),
            Err(Error::PkiFile { .. })
        ));
        assert_eq!(fs::read_dir(&open).unwrap().count(), 0);
    }
}
