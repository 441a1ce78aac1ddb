//! The key-ceremony command line (`kms-ceremony`): what security officers run.
//!
//! For now it has the offline `calc` family, the tools a custodian uses to check a component or
//! a derived key against paper. Secrets (keys, KBPKs) are read from standard input, never from
//! the command line: argv is visible to every user of the machine.
//!
//! `registry` is the registrars' client of the province's review of applicant files.

pub mod audit;
pub mod calc;
pub mod hsm;
pub mod input;
pub mod registry;
