//! The one integration-test binary of hsm-sim.
//!
//! - `backup`: a root backed up in shares in one HSM and restored in another (in process and
//!   over the wire), the refusals at their own share.
//! - `batch`: `Hsm::batch` against the single operations it stands for, item for item, with
//!   bad items among good ones (the scenario is run over the wire by `remote` too).
//! - `issue`: transport keys issued as components and under the current key (also run by
//!   `remote` over the wire).
//! - `kat_vectors`: the published known-answer files of `tests/vectors/`, through the public API.
//! - `local`: `LocalHsm` through the `Hsm` trait: LMK life cycle, usage checks, the SSC chain,
//!   export, rotation, refusal in every state that is not operational.
//! - `offload`: an operation computing does not stop the runtime that called it.
//! - `remote`: the HSM as a separate process over gRPC with mutual TLS (the real `hsm-sim`
//!   binary, a PKI made with rcgen): the DOMAIN.md chain over the wire, restart and unseal,
//!   authorisation, error fidelity.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod backup;
mod batch;
mod issue;
mod kat_vectors;
mod local;
mod offload;
mod remote;
