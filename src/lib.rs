//! sscard-kms: the province's key-management service for social security cards.
//!
//! One folder per concern of the domain (ARCHITECTURE.md has the map):
//!
//! - [`card`]: what a card is — templates, identifiers, regions;
//! - [`access`]: who is calling — identity from the certificate, the authorisation matrix, TLS,
//!   the dev PKI;
//! - [`state`]: what is kept — the store, its records, the audit chain;
//! - [`registry`]: the province's review of the applicant files cities submit;
//! - [`service`]: what each caller may do, one file per caller, over a small shared core;
//! - [`server`]: gRPC — requests in, the one error → `Status` mapping, configuration;
//! - [`ceremony`]: the security officers' and auditors' command-line tools;
//! - [`dev`]: the development KMS on published test keys.
#![forbid(unsafe_code)]

pub mod access;
pub mod card;
pub mod ceremony;
pub mod dev;
pub mod error;
pub mod metrics;
pub mod registry;
pub mod server;
pub mod service;
pub mod state;

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

            impl core::fmt::Debug for TakeLmkShareResponse {
                fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                    f.debug_struct("TakeLmkShareResponse")
                        .field("index", &self.index)
                        .field("shares", &self.shares)
                        .field("threshold", &self.threshold)
                        .field("check_value", &self.check_value)
                        .field("new_lmk_kcv", &self.new_lmk_kcv)
                        .finish_non_exhaustive()
                }
            }

            // The messages that carry a holder's personal data: Debug with the masked forms the
            // store keeps (`registry::personal`), never the clear SSN, card number or name.
            impl core::fmt::Debug for CardIdentity {
                fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                    use crate::registry::personal::{mask_card_number, mask_ssn};
                    f.debug_struct("CardIdentity")
                        .field("card_identifier", &self.card_identifier)
                        .field("card_number", &mask_card_number(&self.card_number))
                        .field(
                            "social_security_number",
                            &mask_ssn(&self.social_security_number),
                        )
                        .field("atr_len", &self.atr.len())
                        .finish()
                }
            }

            impl core::fmt::Debug for CardPersonalData {
                fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                    f.debug_struct("CardPersonalData")
                        .field("card_identifier", &self.card_identifier)
                        .finish_non_exhaustive()
                }
            }

            impl core::fmt::Debug for TakeBackupShareResponse {
                fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                    f.debug_struct("TakeBackupShareResponse")
                        .field("index", &self.index)
                        .field("shares", &self.shares)
                        .field("threshold", &self.threshold)
                        .field("check_value", &self.check_value)
                        .field("backup", &self.backup)
                        .field("key_id", &self.key_id)
                        .field("kcv", &self.kcv)
                        .finish_non_exhaustive()
                }
            }

            impl core::fmt::Debug for ApplicantFileChunk {
                fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                    f.debug_struct("ApplicantFileChunk")
                        .field("data_len", &self.data.len())
                        .field("batch_id", &self.batch_id)
                        .field("encoding", &self.encoding)
                        .finish()
                }
            }
            impl core::fmt::Debug for TakeTransportComponentResponse {
                fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                    f.debug_struct("TakeTransportComponentResponse")
                        .field("index", &self.index)
                        .field("components", &self.components)
                        .field("component_kcv", &self.component_kcv)
                        .field("issue", &self.issue)
                        .finish_non_exhaustive()
                }
            }

            impl core::fmt::Debug for SubmitBackupShareRequest {
                fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                    f.debug_struct("SubmitBackupShareRequest")
                        .field("ceremony_id", &self.ceremony_id)
                        .finish_non_exhaustive()
                }
            }
        }
    }
}
