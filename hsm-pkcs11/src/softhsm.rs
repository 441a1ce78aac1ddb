//! Throwaway SoftHSM2 tokens, for tests and `sscard-kms dev --hsm softhsm` (`dangerous_`: the
//! user PIN is kept in a file beside the token, readable by whoever reads the directory).
//!
//! SoftHSM2 reads its configuration (`SOFTHSM2_CONF`) once, when the module is first initialised
//! in a process: so a process has one token directory, [`dangerous_token`] writes its
//! configuration and points the process at it, and every token of the process lives there under
//! its own label (tests give each its own label; tokens are found by label, never by slot).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use hsm_api::{Error, LmkShare, Result};
use zeroize::Zeroizing;

use crate::session;

/// Where Debian's `softhsm2` package puts the module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The configuration file SoftHSM2 reads, in the token directory's parent.
const CONF_FILE: &str = "softhsm2.conf";

/// Serialises token creation: SoftHSM2 offers one uninitialised slot at a time.
static CREATING: Mutex<()> = Mutex::new(());

/// A throwaway token: where it is, and its user PIN (the one share that unseals it).
pub struct DangerousToken {
    pub module: PathBuf,
    pub conf: PathBuf,
    pub label: String,
    pin: Zeroizing<String>,
}

impl core::fmt::Debug for DangerousToken {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DangerousToken")
            .field("conf", &self.conf)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl DangerousToken {
    /// The user PIN, as the share that unseals the backend.
    pub fn pin(&self) -> LmkShare {
        LmkShare::new(self.pin.clone())
    }

    /// A configuration for this token (strict unless changed).
    pub fn config(&self) -> crate::Pkcs11Config {
        crate::Pkcs11Config {
            softhsm_conf: Some(self.conf.clone()),
            ..crate::Pkcs11Config::new(self.module.clone(), self.label.clone())
        }
    }
}

fn io(what: &str, e: &std::io::Error) -> Error {
    Error::Storage(format!("SoftHSM2 token directory: {what}: {e}").into())
}

fn random_pin() -> Result<Zeroizing<String>> {
    let bytes = Zeroizing::new(hsm_sim::crypto::random::random_bytes(16)?);
    Ok(hsm_sim::crypto::secret_hex(&bytes))
}

/// The token labelled `label` under `dir` (SoftHSM2's configuration in `dir/softhsm2.conf`, its
/// tokens in `dir/tokens`), created with a random SO PIN (forgotten) and a random user PIN (kept
/// in `dir/<label>.pin`) if it does not exist yet.
pub fn dangerous_token(dir: &Path, label: &str) -> Result<DangerousToken> {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).map_err(|e| io("create", &e))?;
    let conf = dir.join(CONF_FILE);
    if !conf.exists() {
        let text = format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        );
        std::fs::write(&conf, text).map_err(|e| io("write the configuration", &e))?;
    }
    let module = PathBuf::from(SOFTHSM_MODULE);
    let ctx = session::context(&module, Some(&conf))?;
    let pin_file = dir.join(format!("{label}.pin"));
    let _creating = CREATING.lock().map_err(|_| Error::StatePoisoned)?;
    if session::find_token(&ctx, label)?.is_some() {
        let pin = std::fs::read_to_string(&pin_file).map_err(|e| io("read the PIN", &e))?;
        return Ok(DangerousToken {
            module,
            conf,
            label: label.to_owned(),
            pin: Zeroizing::new(pin.trim().to_owned()),
        });
    }
    let free = ctx
        .get_slots_with_token()
        .map_err(|_| Error::Storage("PKCS#11: C_GetSlotList failed".into()))?
        .into_iter()
        .find(|slot| {
            ctx.get_token_info(*slot)
                .is_ok_and(|info| !info.token_initialized())
        })
        .ok_or_else(|| Error::Storage("SoftHSM2 offers no free slot".into()))?;
    let so_pin = random_pin()?;
    let so = AuthPin::new(so_pin.as_str().into());
    let fail = |what: &str, e: cryptoki::error::Error| {
        tracing::debug!(error = %e, "SoftHSM2: {what}");
        Error::Storage(format!("SoftHSM2: {what} failed").into())
    };
    ctx.init_token(free, &so, label)
        .map_err(|e| fail("C_InitToken", e))?;
    let pin = random_pin()?;
    // The slot of a new token may be renumbered: look it up again, by its label.
    let slot = session::find_token(&ctx, label)?
        .ok_or_else(|| Error::Storage("the new SoftHSM2 token is not found".into()))?;
    let so_session = session::open(&ctx, slot)?;
    so_session
        .login(UserType::So, Some(&so))
        .map_err(|e| fail("C_Login (SO)", e))?;
    so_session
        .init_pin(&AuthPin::new(pin.as_str().into()))
        .map_err(|e| fail("C_InitPIN", e))?;
    so_session.logout().map_err(|e| fail("C_Logout (SO)", e))?;
    drop(so_session);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode_private()
        .open(&pin_file)
        .map_err(|e| io("write the PIN", &e))?;
    file.write_all(pin.as_bytes())
        .map_err(|e| io("write the PIN", &e))?;
    Ok(DangerousToken {
        module,
        conf,
        label: label.to_owned(),
        pin,
    })
}

/// Owner-only permissions where the platform has them.
trait PrivateMode {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateMode for std::fs::OpenOptions {
    #[cfg(unix)]
    fn mode_private(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }

    #[cfg(not(unix))]
    fn mode_private(&mut self) -> &mut Self {
        self
    }
}
