//! The key-ceremony command line (`kms-ceremony`): what security officers run.
//!
//! The offline `calc` family (the tools a custodian uses to check a component or a derived key
//! against paper), `hsm init` (each share to its own custodian), `audit`, and `service …`
//! ([`remote`]): the ceremonies against the running service, each officer from their own
//! certificate, with the root backup and restore jobs in [`backup`], the transport keys' in
//! [`transport`] and the LMK's (unseal, seal, rotation) in `lmk`. Secrets (keys, components, shares) are read from the terminal without echo or
//! from standard input, never from the command line or the environment: argv is visible to
//! every user of the machine.
//!
//! `registry` is the registrars' client of the province's review of applicant files and of the
//! signed blacklist (`blacklist`).

pub mod audit;
pub mod backup;
pub mod blacklist;
pub mod calc;
pub mod hsm;
pub mod input;
mod lmk;
pub mod registry;
pub mod remote;
pub mod transport;
