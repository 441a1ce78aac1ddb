//! # hsm-sim — ⚠️ this is a simulator, not an HSM
//!
//! A software stand-in for the payment-style hardware security module (HSM) that holds the keys
//! of sscard-kms. It keeps clear keys in ordinary process memory, has no tamper-responsive
//! hardware and no certification: it exists so that the service can be built and tested against
//! the same boundary a real HSM would give it. Never use it to protect production keys.
//!
//! The boundary itself — the `Hsm` trait, the types that cross it and the one error — is the
//! `hsm_api` crate; this crate implements it twice ([`local::LocalHsm`] in-process,
//! [`remote::RemoteHsm`] over mutual TLS). Only this crate ever touches clear key bytes
//! ([`crypto::SecretKey`]); everything above it sees key blocks and key check values.
#![forbid(unsafe_code)]

pub(crate) mod backup;
pub mod cache;
pub mod crypto;
pub mod handout;
pub mod lmk;
pub mod local;
pub mod partial;
pub mod policy;
pub mod remote;
pub mod selftest;
pub mod shares;
