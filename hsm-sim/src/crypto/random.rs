//! Randomness from the operating system, and fresh keys.

use hsm_api::{Algorithm, Error, Result};
use zeroize::Zeroizing;

use crate::crypto::SecretKey;

/// `len` bytes from the operating system's CSPRNG.
pub fn random_bytes(len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    getrandom::fill(&mut buf).map_err(|_| Error::Random)?;
    Ok(buf)
}

/// A fresh random key of `alg`; weak DES keys are drawn again.
pub fn generate_key(alg: Algorithm) -> Result<SecretKey> {
    loop {
        let mut buf = Zeroizing::new(vec![0u8; alg.key_len()]);
        getrandom::fill(&mut buf).map_err(|_| Error::Random)?;
        let key = SecretKey::new(alg, &buf)?;
        if key.check_not_weak().is_ok() {
            return Ok(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ() {
        let a = generate_key(Algorithm::Aes256).unwrap();
        let b = generate_key(Algorithm::Aes256).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }
}
