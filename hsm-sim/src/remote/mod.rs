//! The HSM as a separate process: the [`Hsm`](hsm_api::Hsm) trait over gRPC with mutual TLS.
//!
//! ```text
//!  service process                                   hsm-sim process
//!  RemoteHsm ── tonic Channel ══ mTLS (TLS 1.3) ══▶ serve(): authorise ─▶ HsmService<H> ─▶ H: Hsm
//!  (client.rs)     client identity: SAN URI          (server.rs, identity.rs)            (LocalHsm)
//!                  sscard://service/<name>
//! ```
//!
//! * [`serve`] runs the `sscard.hsm.v1.Hsm` service (`proto/sscard/hsm/v1/hsm.proto`) over any
//!   `H: Hsm` on an already-bound listener until a shutdown future completes.
//! * [`RemoteHsm`] implements [`Hsm`](hsm_api::Hsm) over a lazily connecting channel: it
//!   recovers by itself when the process comes back.
//! * [`ServerTls`] / [`ClientTls`] load the PEM files; a server without a client CA cannot be
//!   built (tonic would silently serve TLS without client authentication).
//! * [`identity`] reads the SAN URIs of a peer certificate and holds the authorisation rule: only
//!   `sscard://service/<name>` may call the HSM.
//! * Errors: every [`hsm_api::Error`] the HSM returns travels as a serialized `HsmError` message
//!   in the metadata entry [`ERROR_METADATA_KEY`]; the client rebuilds the same variant with the
//!   same fields. Transport failures become [`hsm_api::Error::Unavailable`].
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use hsm_api::Hsm;
//! use hsm_sim::remote::{ClientTls, RemoteHsm};
//!
//! let tls = ClientTls::from_pem_files(
//!     Path::new("kms.pem"),
//!     Path::new("kms.key"),
//!     Path::new("ca.pem"),
//! )?;
//! let hsm = RemoteHsm::connect_lazy("https://127.0.0.1:7100", tls)?;
//! let status = hsm.status().await?;
//! println!("{:?}", status.state);
//! # Ok(())
//! # }
//! ```

mod client;
mod convert;
pub mod identity;
mod server;
mod status;
mod tls;

pub use client::{RemoteHsm, RemoteHsmOptions};
pub use server::{HsmServer, serve};
pub use status::ERROR_METADATA_KEY;
pub use tls::{ClientTls, ServerTls};

pub mod proto {
    //! Generated protobuf messages, client and server of `sscard.hsm.v1`
    //! (`proto/sscard/hsm/v1/hsm.proto`).
    #![allow(unreachable_pub, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("sscard.hsm.v1");

    // The messages that carry a custodian's secret: Debug without it (build.rs skips the
    // derived one).
    impl core::fmt::Debug for IssuedShare {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.debug_struct("IssuedShare")
                .field("check_value", &self.check_value)
                .finish_non_exhaustive()
        }
    }

    impl core::fmt::Debug for RestoreShareRequest {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            let into = match &self.into {
                Some(restore_share_request::Into::Begin(begin)) => {
                    Some(begin as &dyn core::fmt::Debug)
                }
                Some(restore_share_request::Into::Partial(partial)) => Some(partial as _),
                None => None,
            };
            f.debug_struct("RestoreShareRequest")
                .field("into", &into)
                .finish_non_exhaustive()
        }
    }

    impl core::fmt::Debug for UnsealRequest {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.debug_struct("UnsealRequest").finish_non_exhaustive()
        }
    }

    impl core::fmt::Debug for Component {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.debug_struct("Component")
                .field("expected_kcv", &self.expected_kcv)
                .finish_non_exhaustive()
        }
    }

    // The messages that carry personal data (clear, or sealed): Debug without it.
    impl core::fmt::Debug for IndexHashesRequest {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.debug_struct("IndexHashesRequest")
                .field("domain", &self.domain)
                .field("values", &self.values.len())
                .finish_non_exhaustive()
        }
    }

    impl core::fmt::Debug for RegistryField {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.debug_struct("RegistryField")
                .field("data_len", &self.data.len())
                .finish_non_exhaustive()
        }
    }
}

use std::path::PathBuf;

/// Largest message either side accepts or sends (tonic's default is 4 MiB): an LMK rotation
/// carries every token of the service in one call. Rotate larger sets in batches.
const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Why the remote HSM could not be set up or served: configuration files, addresses, sockets.
///
/// Separate from [`hsm_api::Error`], which is the (cloneable, comparable) vocabulary of HSM
/// operations; these are start-up failures of a process and carry I/O sources.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// A PEM file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A PEM input holds no certificate, or one that does not parse.
    #[error("{what}: no valid PEM certificate")]
    Certificate { what: String },
    /// A PEM input holds no private key, or one that does not parse.
    #[error("{what}: no valid PEM private key (PKCS#8, SEC1 or PKCS#1)")]
    PrivateKey { what: String },
    /// The endpoint is not a valid `https://host:port` URI.
    #[error("invalid HSM endpoint {0:?} (expected https://host:port)")]
    Endpoint(String),
    /// The TLS configuration was refused (e.g. a key that does not match its certificate), or
    /// the server failed while serving.
    #[error("TLS configuration or transport failed")]
    Transport(#[from] tonic::transport::Error),
}
