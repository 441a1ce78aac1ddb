//! `kms-ceremony hsm init`: creates the LMK of an in-process HSM (`serve` with
//! `[hsm] mode = "local"`), split into custodian shares.
//!
//! Each share is printed once, with its check value, for its custodian to write down; the LMK's
//! KCV is printed for the ceremony record. Nothing secret is stored: the state directory keeps the
//! LMK's KCV, the threshold and the shares' check values only. The next start of the service finds
//! the HSM sealed until the custodians unseal it.

use std::fmt::Write as _;
use std::path::Path;

use hsm_api::Hsm;
use hsm_sim::local::{LocalHsm, LocalHsmConfig};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Creates the LMK in `state_dir` and returns the text to show (shares included, once).
pub fn init(state_dir: &Path, threshold: u8, shares: u8) -> Result<Zeroizing<String>> {
    let hsm = LocalHsm::open(LocalHsmConfig {
        state_dir: Some(state_dir.to_owned()),
        ..Default::default()
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|_| Error::Store)?;
    let created = runtime.block_on(hsm.init_lmk(threshold, shares))?;
    let mut out = Zeroizing::new(String::new());
    let _ = writeln!(
        out,
        "LMK created: {threshold} of {shares} shares unseal it. Give each custodian their share ONLY."
    );
    for (i, issued) in created.shares.iter().enumerate() {
        let _ = writeln!(
            out,
            "custodian {}: share {}  (check value {})",
            i + 1,
            issued.share.secret_text(),
            issued.check_value
        );
    }
    let _ = writeln!(
        out,
        "LMK KCV ({}, {} bytes)",
        created.lmk_kcv.method().name(),
        created.lmk_kcv.value().len()
    );
    let _ = writeln!(out, "{}", created.lmk_kcv);
    Ok(out)
}
