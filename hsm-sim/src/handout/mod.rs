//! Secret parts handed out once — the one mechanism by which a secret leaves an HSM in
//! custodians' parts (the shares of a new LMK, of a rotated LMK, of a root backup; later the
//! components of a generated transport key), shared by the simulator and the PKCS#11 backend.
//!
//! The HSM deposits the parts it has just made and answers with a public [`SecretParts`] (a
//! random set name, the count, the threshold). [`Handout::take`] then gives part *i* out and
//! forgets it in the same step, so the answer is the only copy and no answer carries two
//! parts; a second take of *i* is [`Error::PartNotAvailable`]. Nothing is recorded about who
//! took a part (the HSM does not know identities; the service does, and audits it). A seal or a
//! tamper event drops every part still held ([`Handout::clear`]).

use std::collections::HashMap;

use hsm_api::{Error, Hsm, IssuedShare, Result, SecretParts};

use crate::crypto::random::random_bytes;

/// Bytes of randomness in a set's name.
const SET_NAME_BYTES: usize = 12;

/// The parts not yet taken, by set. Kept inside the HSM's state lock.
#[derive(Default)]
pub struct Handout {
    sets: HashMap<String, Vec<Option<IssuedShare>>>,
}

impl core::fmt::Debug for Handout {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Handout")
            .field("sets", &self.sets.len())
            .finish_non_exhaustive()
    }
}

impl Handout {
    /// Keeps `parts` (part 1 first) until each is taken; the public description of the set.
    pub fn deposit(&mut self, threshold: u8, parts: Vec<IssuedShare>) -> Result<SecretParts> {
        let count = u8::try_from(parts.len()).map_err(|_| Error::Count {
            field: "secret parts".into(),
            expected: "at most 255".into(),
        })?;
        let set = hex::encode_upper(random_bytes(SET_NAME_BYTES)?);
        self.sets
            .insert(set.clone(), parts.into_iter().map(Some).collect());
        Ok(SecretParts {
            set,
            count,
            threshold,
        })
    }

    /// Part `index` (1-based) of `set`, once; the set is dropped with its last part.
    pub fn take(&mut self, set: &str, index: u8) -> Result<IssuedShare> {
        let parts = self.sets.get_mut(set).ok_or(Error::PartNotAvailable)?;
        let part = usize::from(index)
            .checked_sub(1)
            .and_then(|i| parts.get_mut(i))
            .and_then(Option::take)
            .ok_or(Error::PartNotAvailable)?;
        if parts.iter().all(Option::is_none) {
            self.sets.remove(set);
        }
        Ok(part)
    }

    /// True while some part of `set` has not been taken.
    pub fn holds(&self, set: &str) -> bool {
        self.sets.contains_key(set)
    }

    /// Drops `set` and the parts of it still held.
    pub fn discard(&mut self, set: &str) {
        self.sets.remove(set);
    }

    /// Drops every part still held (seal, tamper).
    pub fn clear(&mut self) {
        self.sets.clear();
    }
}

/// **Test-only**: every part of `parts` taken by one caller, part 1 first — exactly what a
/// ceremony must never do (each custodian takes their own). For tests that need the shares of
/// an LMK they just made; `None` (no shares made) is an empty list.
pub async fn dangerous_take_every_part<H: Hsm>(
    hsm: &H,
    parts: Option<&SecretParts>,
) -> Result<Vec<IssuedShare>> {
    let mut taken = Vec::new();
    if let Some(parts) = parts {
        for index in 1..=parts.count {
            taken.push(hsm.take_secret_part(&parts.set, index).await?);
        }
    }
    Ok(taken)
}

/// **Test-only**: what [`dangerous_init`] gives — an LMK's KCV and every one of its shares.
#[derive(Debug)]
pub struct DangerousInit {
    pub lmk_kcv: hsm_api::Kcv,
    /// The set the shares were taken from (gone now).
    pub parts: Option<SecretParts>,
    pub shares: Vec<IssuedShare>,
}

/// **Test-only**: `init_lmk(threshold, shares)`, then every share taken by this one caller
/// ([`dangerous_take_every_part`]).
pub async fn dangerous_init<H: Hsm>(hsm: &H, threshold: u8, shares: u8) -> Result<DangerousInit> {
    let init = hsm.init_lmk(threshold, shares).await?;
    Ok(DangerousInit {
        shares: dangerous_take_every_part(hsm, init.parts.as_ref()).await?,
        lmk_kcv: init.lmk_kcv,
        parts: init.parts,
    })
}

#[cfg(test)]
mod tests;
