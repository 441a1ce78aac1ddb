//! Who is calling: the caller's identity from its client certificate, the authorisation matrix,
//! the TLS configuration of server and clients, and the dev PKI.

pub mod authz;
pub mod identity;
pub mod pki;
pub mod tls;
