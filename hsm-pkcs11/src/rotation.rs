//! LMK rotation on the token: a new LMK pair generated beside the current one (labelled
//! `… (next)`), every given token re-wrapped under it inside the token (root unwrapped under the
//! old LMK as a sensitive object, wrapped under the new, MAC made by the new), and, at commit, the
//! old pair destroyed, the new one relabelled and the marker's KCV replaced. The user PIN and its
//! custodians' shares do not change: the LMK is not split on this backend, so a rotation issues
//! no shares. A crash between the steps of a commit leaves the next pair and the old pair side by
//! side; the status then fails closed (the marker's KCV is checked against the pair in use).

use cryptoki::session::Session;
use hsm_api::{Error, Kcv, KeyToken, LmkRotation, Result};

use crate::Pkcs11Hsm;
use crate::session::{self, LMK_MAC_LABEL, LMK_MARKER_LABEL, LMK_WRAP_LABEL, LmkObjects};
use crate::token::StoredKey;

/// Labels of a prepared, uncommitted LMK.
const NEXT_WRAP_LABEL: &str = "sscard-kms LMK wrap (next)";
const NEXT_MAC_LABEL: &str = "sscard-kms LMK mac (next)";

impl Pkcs11Hsm {
    /// `key`'s root re-wrapped under `new`, its token MACed by `new`.
    fn rewrap(
        &self,
        session: &Session,
        old: &LmkObjects,
        new: &LmkObjects,
        token: &KeyToken,
    ) -> Result<KeyToken> {
        let key = self.verified(session, old, token)?;
        let root = self.unwrap_extractable(session, old, &key)?;
        let wrapped = session
            .wrap_key(
                &cryptoki::mechanism::Mechanism::AesKeyWrapPad,
                new.wrap,
                root,
            )
            .map_err(|e| session::refused("C_WrapKey (rotation)", &e))?;
        self.seal_token(session, new, &StoredKey { wrapped, ..key })
    }

    pub(crate) fn prepare_lmk_rotation_now(
        &self,
        lmk: &LmkObjects,
        tokens: &[KeyToken],
    ) -> Result<(LmkObjects, LmkRotation)> {
        let session = self.session()?;
        for label in [NEXT_WRAP_LABEL, NEXT_MAC_LABEL] {
            for object in session::find_labelled(&session, label)? {
                session::destroy(&session, object)?;
            }
        }
        let new = session::generate_lmk_keys(&session, false, NEXT_WRAP_LABEL, NEXT_MAC_LABEL)?;
        let tokens = tokens
            .iter()
            .map(|token| self.rewrap(&session, lmk, &new, token))
            .collect::<Result<Vec<_>>>()?;
        let rotation = LmkRotation {
            parts: None,
            lmk_kcv: new.kcv.clone(),
            tokens,
        };
        Ok((new, rotation))
    }

    /// More tokens re-wrapped under the prepared pair `next`.
    pub(crate) fn rewrap_more_now(
        &self,
        lmk: &LmkObjects,
        next: &LmkObjects,
        tokens: &[KeyToken],
    ) -> Result<Vec<KeyToken>> {
        let session = self.session()?;
        tokens
            .iter()
            .map(|token| self.rewrap(&session, lmk, next, token))
            .collect()
    }

    pub(crate) fn commit_lmk_rotation_now(
        &self,
        old: &LmkObjects,
        new: &LmkObjects,
        new_lmk_kcv: &Kcv,
    ) -> Result<()> {
        if &new.kcv != new_lmk_kcv {
            return Err(Error::RotationNotPrepared);
        }
        let session = self.session()?;
        for object in session::find_labelled(&session, LMK_MARKER_LABEL)? {
            session::destroy(&session, object)?;
        }
        session::destroy(&session, old.wrap)?;
        session::destroy(&session, old.mac)?;
        session::relabel(&session, new.wrap, LMK_WRAP_LABEL)?;
        session::relabel(&session, new.mac, LMK_MAC_LABEL)?;
        session::create_marker(&session, &new.kcv)
    }
}
