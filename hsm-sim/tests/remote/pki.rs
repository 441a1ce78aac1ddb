//! A test PKI made at test time with rcgen: the project CA, the HSM's server certificate,
//! client certificates with sscard identities, and a second CA nobody trusts.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Credential {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Every file a test needs.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The project CA: issues the server's and the clients' certificates.
    pub ca: PathBuf,
    /// The HSM's server certificate: `localhost` and `127.0.0.1`.
    pub server: Credential,
    /// `sscard://service/kms`: the only kind of caller the HSM admits.
    pub kms: Credential,
    /// `sscard://station/440100/GZ-01`: a valid certificate of the right CA, but not a service.
    pub station: Credential,
    /// `sscard://service/kms` issued by an unknown CA.
    pub foreign: Credential,
}

impl Pki {
    /// Generates the PKI into `dir`.
    pub fn generate(dir: &Path) -> Pki {
        let (ca_pem, ca) = authority("sscard test CA");
        let (_, foreign_ca) = authority("someone else's CA");
        std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();

        let mut server =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "hsm-sim");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        Pki {
            ca: dir.join("ca.pem"),
            server: issue(dir, "server", server, &ca),
            kms: issue(dir, "kms", client("sscard://service/kms"), &ca),
            station: issue(dir, "station", client("sscard://station/440100/GZ-01"), &ca),
            foreign: issue(dir, "foreign", client("sscard://service/kms"), &foreign_ca),
        }
    }
}

fn authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

fn client(uri: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, uri);
    params
        .subject_alt_names
        .push(SanType::URI(uri.try_into().unwrap()));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

fn issue(
    dir: &Path,
    name: &str,
    params: CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
) -> Credential {
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let credential = Credential {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&credential.cert, cert.pem()).unwrap();
    std::fs::write(&credential.key, key.serialize_pem()).unwrap();
    credential
}
