//! `kms-ceremony hsm init`: creates the LMK of an in-process HSM (`serve` with
//! `[hsm] mode = "local"`), split into custodian shares, and hands **each share once to its own
//! custodian** — never all shares on one screen or in one output. The HSM itself answers the
//! creation with the LMK's KCV only; each share is taken from it once
//! ([`hsm_api::Hsm::take_secret_part`]) just before it is handed over.
//!
//! On a terminal, each custodian in turn is asked to be alone at the screen, is shown their
//! share, types its check value back (so it is written down), and the screen is cleared before
//! the next. For a scripted ceremony, `--share-dir DIR` writes each share to its own file
//! `DIR/<custodian>.share` (mode 0600, never overwriting) for that custodian to take. Standard
//! output carries only the ceremony record: who got which share's check value, and the LMK's
//! KCV. Nothing secret is stored in the state directory: the LMK's KCV, the threshold and the
//! shares' check values only. The next start of the service finds the HSM sealed until the
//! custodians unseal it, each from their own certificate.

use std::fmt::Write as _;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use hsm_api::Hsm;
use hsm_sim::local::{LocalHsm, LocalHsmConfig};

use crate::error::{Error, Refusal, Result};

/// Where each share goes: to its custodian only.
pub trait Handover {
    /// Gives `share` (with its `check` value) to `custodian`; the line for the ceremony record.
    fn hand_over(&mut self, custodian: &str, share: &str, check: &str) -> Result<String>;
}

/// One file per custodian in a directory.
#[derive(Debug)]
pub struct ShareFiles(pub PathBuf);

impl Handover for ShareFiles {
    fn hand_over(&mut self, custodian: &str, share: &str, check: &str) -> Result<String> {
        let path = self.0.join(format!("{custodian}.share"));
        write_private(&path, share)?;
        Ok(format!(
            "{custodian}: share in {} (check value {check})",
            path.display()
        ))
    }
}

/// The terminal: one custodian at a time, the screen cleared between them.
#[derive(Debug, Default)]
pub struct Terminal;

impl Handover for Terminal {
    fn hand_over(&mut self, custodian: &str, share: &str, check: &str) -> Result<String> {
        let mut err = std::io::stderr();
        let stdin = std::io::stdin();
        let mut line = String::new();
        let _ = write!(
            err,
            "\nCustodian {custodian}: make sure nobody else can see this screen, then press Enter. "
        );
        let _ = err.flush();
        stdin.lock().read_line(&mut line).map_err(Error::Stdin)?;
        let _ = writeln!(
            err,
            "\n  {custodian}, your LMK share (write it down; it is shown once):\n\n    {share}\n\n  check value {check}\n"
        );
        loop {
            let _ = write!(err, "Type the check value back to confirm: ");
            let _ = err.flush();
            line.clear();
            if stdin.lock().read_line(&mut line).map_err(Error::Stdin)? == 0 {
                return Err(Error::MissingInput("the share's check value"));
            }
            if line.trim().eq_ignore_ascii_case(check) {
                break;
            }
            let _ = writeln!(err, "That is not the check value shown; try again.");
        }
        // Clear the screen and its scroll-back before the next custodian.
        let _ = write!(err, "\x1b[2J\x1b[3J\x1b[H");
        let _ = err.flush();
        Ok(format!(
            "{custodian}: share handed over (check value {check})"
        ))
    }
}

/// The handover for this run: `--share-dir`, or the terminal; refused when neither (the
/// shares would otherwise go to one output).
pub fn handover(share_dir: Option<&Path>) -> Result<Box<dyn Handover>> {
    match share_dir {
        Some(dir) => Ok(Box::new(ShareFiles(dir.to_owned()))),
        None if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() => {
            Ok(Box::new(Terminal))
        }
        None => Err(Error::InvalidArgument {
            field: "share-dir",
            reason: Refusal::ShareHandover,
        }),
    }
}

/// Creates the LMK in `state_dir`, hands each share to its custodian, and returns the ceremony
/// record (check values and the LMK's KCV; no share).
pub fn init(
    state_dir: &Path,
    threshold: u8,
    custodians: &[String],
    handover: &mut dyn Handover,
) -> Result<String> {
    let shares = u8::try_from(custodians.len()).map_err(|_| Error::InvalidArgument {
        field: "custodian",
        reason: Refusal::ComponentCount,
    })?;
    for (i, c) in custodians.iter().enumerate() {
        crate::access::identity::Identity::new(crate::access::identity::Role::Officer, None, c)?;
        if custodians[..i].contains(c) {
            return Err(Error::PermissionDenied {
                reason: Refusal::SameCustodianTwice,
            });
        }
    }
    let hsm = LocalHsm::open(LocalHsmConfig {
        state_dir: Some(state_dir.to_owned()),
        ..Default::default()
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|_| Error::Store)?;
    let created = runtime.block_on(hsm.init_lmk(threshold, shares))?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "LMK created: {threshold} of {shares} custodians' shares unseal it."
    );
    // The HSM holds the shares; each is taken from it once, for its own custodian, and
    // dropped (zeroized) before the next is taken.
    let parts = created.parts.as_ref().ok_or(hsm_api::Error::Protocol)?;
    for (index, custodian) in (1..=parts.count).zip(custodians) {
        let issued = runtime.block_on(hsm.take_secret_part(&parts.set, index))?;
        let line =
            handover.hand_over(custodian, issued.share.secret_text(), &issued.check_value)?;
        drop(issued);
        let _ = writeln!(out, "{line}");
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

/// Writes a secret to a new file only its owner may read.
fn write_private(path: &Path, text: &str) -> Result<()> {
    let file_err = |source| Error::File {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut f = options.open(path).map_err(file_err)?;
    f.write_all(text.as_bytes()).map_err(file_err)?;
    f.write_all(b"\n").map_err(file_err)?;
    f.sync_all().map_err(file_err)
}
