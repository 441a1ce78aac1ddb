//! What crosses the boundary for the registry's personal data at rest (issue 9): index hashes
//! (HMAC-SHA256 under a [`crate::KeyUsage::RegistryIndex`] key) and sealed fields (AES-256-GCM
//! under a [`crate::KeyUsage::RegistryData`] key). Both keys are generated in the HSM and never
//! leave it; the service sees only hashes and ciphertexts.

use core::fmt;

use zeroize::Zeroize;

use crate::{Error, Result};

/// How many values or fields one call may carry (the caller splits a larger set).
pub const REGISTRY_VALUES: usize = 65_536;
/// The longest value or field one call may carry, in bytes.
pub const REGISTRY_VALUE_LEN: usize = 1024;
/// The length of an index hash (HMAC-SHA256).
pub const INDEX_HASH_LEN: usize = 32;
/// The bytes a sealed field adds to its value: a 12-byte nonce before, a 16-byte tag after.
pub const SEAL_OVERHEAD: usize = 28;

/// A field of personal data in the clear, with the associated data that binds it to its record
/// (the record's kind, key and field name: a sealed field moved to another record does not
/// open). The value zeroizes on drop; `Debug` shows the binding, never the value.
#[derive(Clone, PartialEq, Eq)]
pub struct ClearField {
    /// The binding (authenticated, not secret).
    pub aad: Vec<u8>,
    /// The personal data.
    pub value: Vec<u8>,
}

impl Drop for ClearField {
    fn drop(&mut self) {
        self.value.zeroize();
    }
}

impl fmt::Debug for ClearField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClearField")
            .field("aad", &String::from_utf8_lossy(&self.aad))
            .finish_non_exhaustive()
    }
}

/// A sealed field: `nonce (12) ‖ ciphertext ‖ tag (16)`, with the binding it was sealed under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedField {
    /// The binding, as given when sealed.
    pub aad: Vec<u8>,
    /// `nonce ‖ ciphertext ‖ tag`.
    pub sealed: Vec<u8>,
}

/// Refuses an index domain that is not 1 to 32 of `a-z`, `0-9`, `-` (the domain separates the
/// hashes of one field from another's: `ssn`, `card-number`, …).
pub fn check_index_domain(domain: &str) -> Result<()> {
    let ok = (1..=32).contains(&domain.len())
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::Count {
            field: "index domain".into(),
            expected: "1 to 32 of a-z, 0-9, -".into(),
        })
    }
}

/// Refuses a call of more than [`REGISTRY_VALUES`] items or an item (value, binding or sealed
/// field) longer than [`REGISTRY_VALUE_LEN`] (+ [`SEAL_OVERHEAD`]).
pub fn check_registry_items<'a>(items: impl ExactSizeIterator<Item = &'a [u8]>) -> Result<()> {
    if items.len() > REGISTRY_VALUES {
        return Err(Error::Count {
            field: "registry values".into(),
            expected: "at most 65536".into(),
        });
    }
    for item in items {
        if item.len() > REGISTRY_VALUE_LEN + SEAL_OVERHEAD {
            return Err(Error::Count {
                field: "registry value length".into(),
                expected: "at most 1024 bytes".into(),
            });
        }
    }
    Ok(())
}
