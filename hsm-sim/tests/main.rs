//! The one integration-test binary of hsm-sim.
//!
//! - `kat_vectors`: the published known-answer files of `tests/vectors/`, through the public API.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod kat_vectors;
