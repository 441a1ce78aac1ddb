//! Randomness from the operating system, and fresh keys.

use hsm_api::{Algorithm, Error, Result};
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::SecretKey;

/// `len` bytes from the operating system's CSPRNG.
pub fn random_bytes(len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    getrandom::fill(&mut buf).map_err(|_| Error::Random)?;
    Ok(buf)
}

/// Bytes of the operating system's CSPRNG drawn ahead, per thread, for key-block padding.
const PADDING_POOL: usize = 1024;

/// A thread's padding bytes not handed out yet (`next..`); zeroized as they are handed out and
/// when the thread ends.
struct PaddingPool {
    bytes: Zeroizing<[u8; PADDING_POOL]>,
    next: usize,
}

std::thread_local! {
    static PADDING: core::cell::RefCell<PaddingPool> = core::cell::RefCell::new(PaddingPool {
        bytes: Zeroizing::new([0u8; PADDING_POOL]),
        next: PADDING_POOL,
    });
}

/// `len` bytes from the operating system's CSPRNG for the padding of a key block (TR-31 pads a
/// key to hide its length). The same CSPRNG output as [`random_bytes`], but drawn
/// 1 KiB at a time per thread: one system call for some 70 key blocks, not
/// one per block. Each byte is handed out once. Keys are never drawn from the pool
/// ([`generate_key`] asks the operating system for each).
pub fn padding_bytes(len: usize) -> Result<Zeroizing<Vec<u8>>> {
    if len > PADDING_POOL {
        return random_bytes(len).map(Zeroizing::new);
    }
    PADDING.with(|pool| {
        let mut pool = pool.borrow_mut();
        if PADDING_POOL - pool.next < len {
            // Marked empty first: a failed draw leaves nothing to hand out.
            pool.next = PADDING_POOL;
            getrandom::fill(&mut pool.bytes[..]).map_err(|_| Error::Random)?;
            pool.next = 0;
        }
        let range = pool.next..pool.next + len;
        let out = Zeroizing::new(pool.bytes[range.clone()].to_vec());
        pool.bytes[range].zeroize();
        pool.next += len;
        Ok(out)
    })
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
    fn padding_is_handed_out_once_and_refilled() {
        // More than a pool's worth, in pieces of a key block's padding sizes: no piece repeats
        // another, and each is as long as asked.
        let mut seen = std::collections::HashSet::new();
        for i in 0..400 {
            let len = [14, 6, 30, 22][i % 4];
            let piece = padding_bytes(len).unwrap();
            assert_eq!(piece.len(), len);
            assert!(
                seen.insert(piece.to_vec()),
                "a padding piece came out twice"
            );
        }
        assert_eq!(
            padding_bytes(PADDING_POOL + 1).unwrap().len(),
            PADDING_POOL + 1
        );
        assert_eq!(padding_bytes(0).unwrap().len(), 0);
    }

    #[test]
    fn keys_differ() {
        let a = generate_key(Algorithm::Aes256).unwrap();
        let b = generate_key(Algorithm::Aes256).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }
}
