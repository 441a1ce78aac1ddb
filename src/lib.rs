//! sscard-kms: the province's key-management service for social security cards.
#![forbid(unsafe_code)]

pub mod audit;
pub mod authz;
pub mod ceremony;
pub mod config;
pub mod dev;
pub mod error;
pub mod identifiers;
pub mod identity;
pub mod pki;
pub mod records;
pub mod region;
pub mod server;
pub mod service;
pub mod store;
pub mod template;
pub mod tls;

pub use error::{Error, Result};

pub mod proto {
    //! Generated protobuf and gRPC code (`proto/`).
    #![allow(unreachable_pub, missing_debug_implementations, clippy::all)]
    pub mod kms {
        pub mod v1 {
            tonic::include_proto!("sscard.kms.v1");

            // The messages that carry a custodian's secret: Debug without it (build.rs skips
            // the derived one).
            impl core::fmt::Debug for Component {
                fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                    f.debug_struct("Component")
                        .field("kcv_hex", &self.kcv_hex)
                        .finish_non_exhaustive()
                }
            }

            impl core::fmt::Debug for UnsealHsmRequest {
                fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                    f.debug_struct("UnsealHsmRequest").finish_non_exhaustive()
                }
            }
        }
    }
}
