//! sscard-kms: the province's key-management service for social security cards.
#![forbid(unsafe_code)]

pub mod ceremony;
pub mod error;

pub use error::{Error, Result};

pub mod proto {
    //! Generated protobuf and gRPC code (`proto/`).
    #![allow(unreachable_pub, missing_debug_implementations, clippy::all)]
    pub mod kms {
        pub mod v1 {
            tonic::include_proto!("sscard.kms.v1");
        }
    }
}
