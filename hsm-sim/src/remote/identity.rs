//! Who is calling: the SAN URIs of a peer's certificate, and the HSM's authorisation rule.
//!
//! Identities of sscard-kms are URIs in the certificate's subject alternative names, issued by
//! the project's CA: `sscard://service/<name>` for services (the KMS itself),
//! `sscard://station/<region>/<id>` for personalisation stations, and so on. TLS has already
//! checked that the certificate chains to the configured CA; this module only reads names.
//!
//! **The HSM's rule:** a caller is admitted if and only if its leaf certificate names exactly one
//! `sscard:` identity and that identity is `sscard://service/<name>`, with `<name>` of 1 to 64
//! characters from `A-Z a-z 0-9 . _ -`. Stations, operators and anything unparsable are refused
//! with `PERMISSION_DENIED` before the HSM is touched. A certificate that claims two `sscard:`
//! identities is refused too: one certificate, one role.

use tonic::{Request, Status};

/// The scheme of sscard-kms identity URIs.
pub const SCHEME: &str = "sscard";
/// The prefix of a service identity.
pub const SERVICE_PREFIX: &str = "sscard://service/";

/// The longest service name admitted.
const MAX_NAME_LEN: usize = 64;

/// The URIs among the subject alternative names of a DER certificate, in certificate order.
///
/// `None` when the bytes are not exactly one X.509 certificate, or its SAN extension is
/// malformed or repeated. A certificate without SAN URIs gives an empty list.
pub fn san_uris(cert_der: &[u8]) -> Option<Vec<String>> {
    let (rest, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let Some(san) = cert.subject_alternative_name().ok()? else {
        return Some(Vec::new());
    };
    let mut uris = Vec::new();
    for name in &san.value.general_names {
        match name {
            x509_parser::extensions::GeneralName::URI(uri) => uris.push((*uri).to_owned()),
            // An entry that does not decode could hide an identity: refuse the certificate.
            x509_parser::extensions::GeneralName::Invalid(..) => return None,
            _ => {}
        }
    }
    Some(uris)
}

/// The SAN URIs of the leaf certificate a request's peer presented in the TLS handshake.
///
/// `None` when there is no TLS peer certificate (plain connection, or a transport that does not
/// record it) or it does not parse.
pub fn peer_san_uris<T>(request: &Request<T>) -> Option<Vec<String>> {
    let certs = request.peer_certs()?;
    let leaf = certs.first()?;
    san_uris(leaf.as_ref())
}

/// The `sscard:` identities among `uris` (scheme compared without regard to case).
pub fn sscard_identities(uris: &[String]) -> impl Iterator<Item = &str> {
    uris.iter().map(String::as_str).filter(|uri| {
        uri.split_once(':')
            .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case(SCHEME))
    })
}

/// The service name if `uris` name exactly one `sscard:` identity and it is a service
/// (see the module's rule); otherwise `None`.
pub fn service_name(uris: &[String]) -> Option<&str> {
    let mut identities = sscard_identities(uris);
    let only = identities.next()?;
    if identities.next().is_some() {
        return None;
    }
    let name = only.strip_prefix(SERVICE_PREFIX)?;
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    valid.then_some(name)
}

/// The admitted caller, put into the request's extensions by the HSM server's authorisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCaller {
    /// `<name>` of `sscard://service/<name>`.
    pub name: String,
}

/// The HSM server's interceptor: admits a service, refuses anything else.
pub(crate) fn authorise(mut request: Request<()>) -> Result<Request<()>, Status> {
    let uris = peer_san_uris(&request).unwrap_or_default();
    match service_name(&uris) {
        Some(name) => {
            let caller = ServiceCaller {
                name: name.to_owned(),
            };
            request.extensions_mut().insert(caller);
            Ok(request)
        }
        None => {
            tracing::warn!(peer_uris = ?uris, "refused a caller that is not a service");
            Err(Status::permission_denied(
                "only sscard://service/ identities may use the HSM",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(uris: &[&str]) -> Vec<String> {
        uris.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn only_one_service_identity_is_admitted() {
        assert_eq!(service_name(&names(&["sscard://service/kms"])), Some("kms"));
        assert_eq!(
            service_name(&names(&[
                "https://example.org/",
                "sscard://service/kms-2.a_b"
            ])),
            Some("kms-2.a_b")
        );
        for refused in [
            &[][..],
            &["sscard://station/440100/GZ-01"][..],
            &["sscard://service/"][..],
            &["sscard://service/kms/extra"][..],
            &["sscard://service/k m s"][..],
            &["SSCARD://service/kms"][..],
            &["sscard://service/kms", "sscard://station/440100/GZ-01"][..],
            &["sscard://service/kms", "SSCARD://operator/alice"][..],
            &["https://service/kms"][..],
        ] {
            assert_eq!(service_name(&names(refused)), None, "{refused:?}");
        }
        let long = format!("{SERVICE_PREFIX}{}", "a".repeat(MAX_NAME_LEN + 1));
        assert_eq!(service_name(&[long]), None);
    }

    #[test]
    fn junk_is_not_a_certificate() {
        assert_eq!(san_uris(b""), None);
        assert_eq!(san_uris(&[0x30, 0x03, 0x02, 0x01, 0x00]), None);
    }
}
