//! Who is calling: the caller's identity, read from its client certificate and nothing else.
//!
//! # The identity scheme
//!
//! Every client certificate issued for the service carries **exactly one** subject-alternative-name
//! URI of the form
//!
//! ```text
//! sscard://<role>/<region>/<name>     station, psam-line, registrar
//! sscard://<role>/<name>              officer, auditor, service
//! ```
//!
//! - `role` is one of `station` (a card personalisation station, 制卡), `psam-line` (a PSAM production
//!   line), `registrar` (a city registrar), `officer` (a security officer / key custodian), `auditor`,
//!   `service` (another component of the KMS itself). Lower case, exactly as written here.
//! - `region` is a six-digit GB/T 2260 administrative code: `440100` is Guangzhou (a city), `440000`
//!   is the province (a station of the provincial card centre). It is **required** for `station`,
//!   `psam-line` and `registrar`, whose rights are limited to a region, and **absent** for `officer`,
//!   `auditor` and `service`, whose rights are not. Codes starting with `00` do not exist and are
//!   refused.
//! - `name` is 1 to 64 characters of `[A-Za-z0-9._-]`: the station, line or person within the role.
//!
//! Examples: `sscard://station/440100/GZ-01`, `sscard://psam-line/440000/PSAM-LINE-01`,
//! `sscard://officer/officer-1`.
//!
//! The parser fails closed: anything it does not recognise is refused, never guessed at — an
//! unknown role, a scheme in another case (`SSCARD://`), a missing or superfluous region, a
//! malformed region, an empty, over-long or non-ASCII name, an extra path segment (including a
//! trailing `/`), a query, a fragment, percent-encoding, a port or user-info. A certificate with no
//! `sscard://` URI has no identity ([`Error::NoIdentity`]); one with two or more is ambiguous
//! ([`Error::AmbiguousIdentity`]) and is refused as a whole. SAN URIs of other schemes are ignored.
//!
//! The certificate is the only source: nothing the client sends in a request (metadata, a field)
//! changes who it is. The `Display` of an [`Identity`] is its URI, which is what the audit trail
//! records as the actor.
//!
//! ```
//! use sscard_kms::access::identity::{Identity, Role};
//!
//! let id = Identity::from_uri("sscard://station/440100/GZ-01")?;
//! assert_eq!(id.role(), Role::Station);
//! assert_eq!(id.region(), Some("440100"));
//! assert_eq!(id.name(), "GZ-01");
//! assert_eq!(id.to_string(), "sscard://station/440100/GZ-01");
//!
//! assert!(Identity::from_uri("sscard://officer/440100/alice").is_err()); // officers have no region
//! assert!(Identity::from_uri("SSCARD://station/440100/GZ-01").is_err());
//! # Ok::<(), sscard_kms::Error>(())
//! ```

use core::fmt;
use core::str::FromStr;

use x509_parser::certificate::X509Certificate;

use crate::error::{Error, Result};

/// The URI scheme prefix of an identity, exactly as it must appear (lower case).
pub const SCHEME_PREFIX: &str = "sscard://";

/// Longest accepted name, in characters (all ASCII).
pub const MAX_NAME_LEN: usize = 64;

/// What a caller is, which decides what it may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A card personalisation station (制卡) of a city or of the provincial card centre.
    Station,
    /// A PSAM production line.
    PsamLine,
    /// A city registrar submitting applicant data.
    Registrar,
    /// A security officer (key custodian).
    Officer,
    /// An auditor: reads and verifies the audit trail.
    Auditor,
    /// Another component of the KMS itself.
    Service,
}

impl Role {
    /// Every role, in declaration order.
    pub const ALL: [Role; 6] = [
        Role::Station,
        Role::PsamLine,
        Role::Registrar,
        Role::Officer,
        Role::Auditor,
        Role::Service,
    ];

    /// The role's keyword in an identity URI (`station`, `psam-line`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Station => "station",
            Role::PsamLine => "psam-line",
            Role::Registrar => "registrar",
            Role::Officer => "officer",
            Role::Auditor => "auditor",
            Role::Service => "service",
        }
    }

    /// Whether identities of this role carry a region (and must).
    pub const fn has_region(self) -> bool {
        matches!(self, Role::Station | Role::PsamLine | Role::Registrar)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;

    /// Parses a role keyword, exactly (no case folding, no aliases).
    fn from_str(s: &str) -> Result<Self> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or(Error::Identity {
                reason: "unknown role",
            })
    }
}

/// A caller's identity: role, region (for regional roles) and name.
///
/// Only constructed through validation ([`Identity::new`], [`Identity::from_uri`],
/// [`Identity::from_san_uris`]), so every value satisfies the scheme of the [module
/// docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    role: Role,
    region: Option<String>,
    name: String,
    origin: Origin,
}

/// Where an [`Identity`] comes from, which decides whether the officer registry can vouch for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Parsed or built from text only: nothing proves it. Refused wherever the officer registry
    /// is consulted.
    Unverified,
    /// Read from a client certificate the TLS layer verified; the SHA-256 fingerprint of that
    /// certificate (DER), 64 upper-case hex digits.
    Certificate(String),
    /// Code of this process acting on its own (the `dev` seeding). Only
    /// [`Identity::dangerous_in_process`] makes one.
    InProcess,
}

impl Identity {
    /// Builds an identity from its parts, with the same checks as [`Identity::from_uri`].
    pub fn new(role: Role, region: Option<&str>, name: &str) -> Result<Self> {
        let region = match (role.has_region(), region) {
            (true, Some(region)) => {
                check_region(region)?;
                Some(region.to_owned())
            }
            (true, None) => {
                return Err(Error::Identity {
                    reason: "region missing for a regional role",
                });
            }
            (false, Some(_)) => {
                return Err(Error::Identity {
                    reason: "region given for a role that has none",
                });
            }
            (false, None) => None,
        };
        check_name(name)?;
        Ok(Identity {
            role,
            region,
            name: name.to_owned(),
            origin: Origin::Unverified,
        })
    }

    /// An identity for code of this process acting on its own, which the officer registry lets
    /// through without a certificate: only the `dev` seeding of the published test keys uses it.
    pub fn dangerous_in_process(role: Role, region: Option<&str>, name: &str) -> Result<Self> {
        let mut id = Identity::new(role, region, name)?;
        id.origin = Origin::InProcess;
        Ok(id)
    }

    /// The identity of a verified client certificate (DER): its SAN URI, with the certificate's
    /// fingerprint as its origin.
    pub fn from_certificate(der: &[u8]) -> Result<Self> {
        let mut id = Identity::from_san_uris(&san_uris_from_der(der)?)?;
        id.origin = Origin::Certificate(fingerprint(der));
        Ok(id)
    }

    /// Where this identity comes from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The certificate fingerprint, for an identity read from a certificate.
    pub fn fingerprint(&self) -> Option<&str> {
        match &self.origin {
            Origin::Certificate(fp) => Some(fp),
            _ => None,
        }
    }

    /// Parses one identity URI (`sscard://<role>/<region>/<name>` or `sscard://<role>/<name>`).
    pub fn from_uri(uri: &str) -> Result<Self> {
        let rest = uri.strip_prefix(SCHEME_PREFIX).ok_or(Error::Identity {
            reason: "not an sscard:// URI",
        })?;
        if rest.contains('?') {
            return Err(Error::Identity {
                reason: "query not allowed",
            });
        }
        if rest.contains('#') {
            return Err(Error::Identity {
                reason: "fragment not allowed",
            });
        }
        let mut segments = rest.split('/');
        // `split` always yields at least one item.
        let role: Role = segments.next().unwrap_or_default().parse()?;
        let region = if role.has_region() {
            Some(segments.next().ok_or(Error::Identity {
                reason: "region missing for a regional role",
            })?)
        } else {
            None
        };
        let name = segments.next().ok_or(Error::Identity {
            reason: "name missing",
        })?;
        if segments.next().is_some() {
            // Covers a region given to a role without one (`officer/440100/x`) and a trailing `/`.
            return Err(Error::Identity {
                reason: "unexpected path segment",
            });
        }
        Identity::new(role, region, name)
    }

    /// The identity carried by a certificate, given all its SAN URIs.
    ///
    /// Exactly one of them must be an `sscard://` URI (compared case-insensitively here, so that a
    /// second identity in another case makes the certificate ambiguous rather than slipping by);
    /// URIs of other schemes are ignored. None is [`Error::NoIdentity`], two or more is
    /// [`Error::AmbiguousIdentity`], and the one found must parse with [`Identity::from_uri`].
    pub fn from_san_uris(uris: &[String]) -> Result<Self> {
        let mut candidates = uris.iter().filter(|uri| looks_like_identity(uri));
        let first = candidates.next().ok_or(Error::NoIdentity)?;
        let others = candidates.count();
        if others > 0 {
            return Err(Error::AmbiguousIdentity { count: others + 1 });
        }
        Identity::from_uri(first)
    }

    /// The caller's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The GB/T 2260 region code (six digits) for regional roles, `None` otherwise.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// The name within the role (and region).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for Identity {
    /// The identity URI, e.g. `sscard://station/440100/GZ-01`: the actor in the audit trail.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SCHEME_PREFIX)?;
        f.write_str(self.role.as_str())?;
        if let Some(region) = &self.region {
            write!(f, "/{region}")?;
        }
        write!(f, "/{}", self.name)
    }
}

impl FromStr for Identity {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Identity::from_uri(s)
    }
}

/// Whether a SAN URI claims to be an identity, in any letter case of the scheme.
fn looks_like_identity(uri: &str) -> bool {
    uri.get(..SCHEME_PREFIX.len())
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case(SCHEME_PREFIX))
}

fn check_region(region: &str) -> Result<()> {
    if region.len() != 6 || !region.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::Identity {
            reason: "region is not six digits",
        });
    }
    if region.starts_with("00") {
        return Err(Error::Identity {
            reason: "region is not a GB/T 2260 code",
        });
    }
    Ok(())
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::Identity {
            reason: "name is empty",
        });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::Identity {
            reason: "name is longer than 64 characters",
        });
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(Error::Identity {
            reason: "name has a character outside [A-Za-z0-9._-]",
        });
    }
    Ok(())
}

/// The SHA-256 fingerprint of a certificate (DER), as 64 upper-case hex digits: the name under
/// which the officer registry knows an officer's or auditor's certificate.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode_upper(sha2::Sha256::digest(der))
}

/// The URI subject alternative names of a DER-encoded X.509 certificate, in certificate order.
///
/// Other SAN types (DNS names, IP addresses…) are skipped. The certificate is refused as a whole
/// ([`Error::Certificate`]) if it does not parse, has trailing bytes, has more than one SAN
/// extension, or has a SAN entry that does not decode (e.g. a URI that is not valid text): a
/// certificate we cannot read completely does not get an identity.
///
/// This reads the certificate; it does not verify it. Call it only on a certificate the TLS layer
/// has already verified against the client CA (e.g. the first of `request.peer_certs()`).
pub fn san_uris_from_der(der: &[u8]) -> Result<Vec<String>> {
    // One parser for both crates: the HSM process admits its callers with the same function.
    hsm_sim::remote::identity::san_uris(der).ok_or(Error::Certificate {
        reason: "not a DER X.509 certificate, or an undecodable subject alternative name",
    })
}

/// Parses exactly one DER certificate: `None` if it does not parse or has trailing bytes.
pub(crate) fn parse_certificate(der: &[u8]) -> Option<X509Certificate<'_>> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Some(cert),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(uri: &str) -> &'static str {
        match Identity::from_uri(uri) {
            Err(Error::Identity { reason }) => reason,
            other => panic!("{uri:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn parses_every_role() {
        let cases = [
            (
                "sscard://station/440100/GZ-01",
                Role::Station,
                Some("440100"),
                "GZ-01",
            ),
            (
                "sscard://station/440000/CARD-CENTRE.1",
                Role::Station,
                Some("440000"),
                "CARD-CENTRE.1",
            ),
            (
                "sscard://psam-line/440000/PSAM-LINE-01",
                Role::PsamLine,
                Some("440000"),
                "PSAM-LINE-01",
            ),
            (
                "sscard://registrar/440300/SZ_REG_01",
                Role::Registrar,
                Some("440300"),
                "SZ_REG_01",
            ),
            (
                "sscard://officer/officer-1",
                Role::Officer,
                None,
                "officer-1",
            ),
            (
                "sscard://auditor/auditor-1",
                Role::Auditor,
                None,
                "auditor-1",
            ),
            ("sscard://service/kms", Role::Service, None, "kms"),
        ];
        for (uri, role, region, name) in cases {
            let id = Identity::from_uri(uri).unwrap();
            assert_eq!(id.role(), role, "{uri}");
            assert_eq!(id.region(), region, "{uri}");
            assert_eq!(id.name(), name, "{uri}");
            assert_eq!(id.to_string(), uri, "Display gives back the URI");
            assert_eq!(uri.parse::<Identity>().unwrap(), id);
        }
    }

    #[test]
    fn an_identity_knows_where_it_comes_from() {
        let officer = Identity::from_uri("sscard://officer/officer-1").unwrap();
        assert_eq!(*officer.origin(), Origin::Unverified);
        assert_eq!(officer.fingerprint(), None);
        let seeding = Identity::dangerous_in_process(Role::Officer, None, "dev-setup").unwrap();
        assert_eq!(*seeding.origin(), Origin::InProcess);
        let pki = crate::access::pki::DevPki::generate().unwrap();
        let der = pki.client(&officer).unwrap().cert_der().unwrap();
        let from_cert = Identity::from_certificate(&der).unwrap();
        assert_eq!(from_cert.to_string(), officer.to_string());
        let fp = from_cert.fingerprint().unwrap();
        assert_eq!(fp.len(), 64);
        assert_eq!(fp, fingerprint(&der));
        // Another certificate for the same identity is another fingerprint.
        let again = pki.client(&officer).unwrap().cert_der().unwrap();
        assert_ne!(fingerprint(&again), fp);
    }

    #[test]
    fn name_limits() {
        let longest = "a".repeat(64);
        let id = Identity::from_uri(&format!("sscard://officer/{longest}")).unwrap();
        assert_eq!(id.name(), longest);
        assert_eq!(
            Identity::from_uri("sscard://officer/x").unwrap().name(),
            "x"
        );
        assert_eq!(
            refused(&format!("sscard://officer/{}", "a".repeat(65))),
            "name is longer than 64 characters"
        );
        assert_eq!(refused("sscard://officer/"), "name is empty");
        assert_eq!(refused("sscard://station/440100/"), "name is empty");
        for bad in [
            "sscard://officer/alice%20b",
            "sscard://officer/alice b",
            "sscard://officer/alice+b",
            "sscard://officer/al:ice",
            "sscard://officer/al@ice",
            "sscard://officer/al\\ice",
            "sscard://officer/alicé",
            "sscard://officer/alice\0",
            "sscard://officer/alice\n",
            "sscard://station/440100/广州-01",
        ] {
            assert_eq!(
                refused(bad),
                "name has a character outside [A-Za-z0-9._-]",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn unknown_or_miscased_roles_are_refused() {
        for bad in [
            "sscard://admin/alice",
            "sscard://root/alice",
            "sscard://Station/440100/GZ-01",
            "sscard://STATION/440100/GZ-01",
            "sscard://psam_line/440000/L1",
            "sscard://psamline/440000/L1",
            "sscard://stations/440100/GZ-01",
            "sscard:///440100/GZ-01",
            "sscard://",
            "sscard://station:443/440100/GZ-01",
            "sscard://user@station/440100/GZ-01",
            "sscard:// station/440100/GZ-01",
        ] {
            assert_eq!(refused(bad), "unknown role", "{bad:?}");
        }
    }

    #[test]
    fn other_schemes_and_shapes_are_refused() {
        for bad in [
            "SSCARD://station/440100/GZ-01",
            "Sscard://station/440100/GZ-01",
            "sscard:/station/440100/GZ-01",
            "sscard:station/440100/GZ-01",
            "https://station/440100/GZ-01",
            " sscard://station/440100/GZ-01",
            "",
        ] {
            assert_eq!(refused(bad), "not an sscard:// URI", "{bad:?}");
        }
        assert_eq!(
            refused("sscard://station/440100/GZ-01?x=1"),
            "query not allowed"
        );
        assert_eq!(
            refused("sscard://station/440100/GZ-01?"),
            "query not allowed"
        );
        assert_eq!(refused("sscard://officer/a#b"), "fragment not allowed");
        for bad in [
            "sscard://station/440100/GZ-01/",
            "sscard://station/440100/GZ-01/extra",
            "sscard://station/440100/440100/GZ-01",
            "sscard://officer/a/",
            "sscard://officer/a//",
        ] {
            assert_eq!(refused(bad), "unexpected path segment", "{bad:?}");
        }
    }

    #[test]
    fn region_rules() {
        // Regional roles need one.
        assert_eq!(refused("sscard://station/GZ-01"), "name missing");
        assert_eq!(
            refused("sscard://station"),
            "region missing for a regional role"
        );
        assert_eq!(refused("sscard://registrar/440100"), "name missing");
        assert_eq!(refused("sscard://officer"), "name missing");
        // Non-regional roles must not have one.
        for bad in [
            "sscard://officer/440100/alice",
            "sscard://auditor/440000/bob",
            "sscard://service/440000/kms",
        ] {
            assert_eq!(refused(bad), "unexpected path segment", "{bad:?}");
        }
        for bad in [
            "44010",
            "4401000",
            "44010a",
            "４４０１００",
            "+44010",
            "44 010",
            "",
            "0x4401",
        ] {
            assert_eq!(
                refused(&format!("sscard://station/{bad}/GZ-01")),
                "region is not six digits",
                "{bad:?}"
            );
        }
        for bad in ["000000", "001234"] {
            assert_eq!(
                refused(&format!("sscard://psam-line/{bad}/L1")),
                "region is not a GB/T 2260 code"
            );
        }
    }

    #[test]
    fn new_checks_like_from_uri() {
        let id = Identity::new(Role::Registrar, Some("440100"), "GZ-REG-01").unwrap();
        assert_eq!(id.to_string(), "sscard://registrar/440100/GZ-REG-01");
        assert!(matches!(
            Identity::new(Role::Station, None, "GZ-01"),
            Err(Error::Identity {
                reason: "region missing for a regional role"
            })
        ));
        assert!(matches!(
            Identity::new(Role::Auditor, Some("440000"), "a"),
            Err(Error::Identity {
                reason: "region given for a role that has none"
            })
        ));
        // A name cannot smuggle a path segment in.
        assert!(Identity::new(Role::Officer, None, "a/b").is_err());
        assert!(Identity::new(Role::Station, Some("440100/x"), "a").is_err());
    }

    #[test]
    fn roles_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
            assert_eq!(role.to_string(), role.as_str());
        }
        assert!("Officer".parse::<Role>().is_err());
        assert!("".parse::<Role>().is_err());
    }

    #[test]
    fn exactly_one_identity_per_certificate() {
        let uris = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

        let id = Identity::from_san_uris(&uris(&[
            "https://example.org/x",
            "sscard://station/440100/GZ-01",
            "urn:uuid:1f5b6a8e-0000-4000-8000-000000000000",
        ]))
        .unwrap();
        assert_eq!(id.to_string(), "sscard://station/440100/GZ-01");

        assert!(matches!(
            Identity::from_san_uris(&[]),
            Err(Error::NoIdentity)
        ));
        assert!(matches!(
            Identity::from_san_uris(&uris(&["https://example.org/", "spiffe://a/b"])),
            Err(Error::NoIdentity)
        ));
        assert!(matches!(
            Identity::from_san_uris(&uris(&[
                "sscard://officer/officer-1",
                "sscard://auditor/auditor-1",
            ])),
            Err(Error::AmbiguousIdentity { count: 2 })
        ));
        // The same identity twice is still two.
        assert!(matches!(
            Identity::from_san_uris(&uris(&[
                "sscard://officer/officer-1",
                "sscard://officer/officer-1",
                "sscard://officer/officer-1",
            ])),
            Err(Error::AmbiguousIdentity { count: 3 })
        ));
        // A second claim in another case counts, and makes the certificate ambiguous…
        assert!(matches!(
            Identity::from_san_uris(&uris(&[
                "sscard://station/440100/GZ-01",
                "SSCARD://station/440000/GZ-01",
            ])),
            Err(Error::AmbiguousIdentity { count: 2 })
        ));
        // …and a single mis-cased one is refused, not ignored.
        assert!(matches!(
            Identity::from_san_uris(&uris(&["SSCARD://station/440100/GZ-01"])),
            Err(Error::Identity {
                reason: "not an sscard:// URI"
            })
        ));
        // A malformed sole identity is refused.
        assert!(matches!(
            Identity::from_san_uris(&uris(&["sscard://admin/root"])),
            Err(Error::Identity {
                reason: "unknown role"
            })
        ));
        // Multi-byte text right at the scheme boundary does not panic.
        assert!(matches!(
            Identity::from_san_uris(&uris(&["sscard:/é", "ééééé"])),
            Err(Error::NoIdentity)
        ));
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(
            san_uris_from_der(b""),
            Err(Error::Certificate { .. })
        ));
        assert!(matches!(
            san_uris_from_der(b"-----BEGIN CERTIFICATE-----"),
            Err(Error::Certificate { .. })
        ));
        // A real certificate with one byte appended is refused as a whole.
        let pki = crate::access::pki::DevPki::generate().unwrap();
        let mut der = pki.server().cert_der().unwrap();
        assert!(san_uris_from_der(&der).unwrap().is_empty());
        der.push(0);
        assert!(matches!(
            san_uris_from_der(&der),
            Err(Error::Certificate { .. })
        ));
    }
}
