//! The one integration-test binary of sscard-kms (`cargo test --workspace` runs it).
//!
//! - `calc`: the officers' calculator, run as the real `kms-ceremony` binary with secrets on stdin.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod calc;
mod common;
