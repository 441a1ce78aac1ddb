//! Block ciphers over a [`SecretKey`]: ECB and CBC encryption, CMAC.
//!
//! Every algorithm comes from RustCrypto (`des`, `aes`, `sm4`, `cbc`, `cmac`); this module only
//! dispatches on the key's [`Algorithm`] and checks lengths, so that a wrong-sized buffer is an
//! error, never a panic.

use cmac::{Cmac, Mac};
use des::cipher::{
    Array, BlockCipherDecrypt, BlockCipherEncrypt, BlockModeDecrypt, BlockModeEncrypt,
    BlockSizeUser, InnerIvInit, KeyInit, array::ArraySize,
};
use hsm_api::{Algorithm, Error, Result};

use crate::crypto::SecretKey;

/// A keyed block cipher. The key schedule zeroizes on drop (RustCrypto `zeroize` feature).
#[derive(Clone)]
pub(crate) enum BlockCipher {
    Des(des::Des),
    Tdes2(des::TdesEde2),
    Tdes3(des::TdesEde3),
    Aes128(aes::Aes128),
    Aes192(aes::Aes192),
    Aes256(aes::Aes256),
    Sm4(sm4::Sm4),
}

impl core::fmt::Debug for BlockCipher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BlockCipher")
            .field("alg", &self.algorithm())
            .finish_non_exhaustive()
    }
}

/// Runs `$body` with `$c` bound to the concrete cipher inside `$cipher`.
macro_rules! with_cipher {
    ($cipher:expr, $c:ident => $body:expr) => {
        match $cipher {
            BlockCipher::Des($c) => $body,
            BlockCipher::Tdes2($c) => $body,
            BlockCipher::Tdes3($c) => $body,
            BlockCipher::Aes128($c) => $body,
            BlockCipher::Aes192($c) => $body,
            BlockCipher::Aes256($c) => $body,
            BlockCipher::Sm4($c) => $body,
        }
    };
}

fn init<C: KeyInit>(key: &SecretKey) -> Result<C> {
    // The key's length was checked against its algorithm when the key was made; this cannot fail.
    C::new_from_slice(key.secret_bytes()).map_err(|_| Error::KeyLength {
        alg: key.algorithm(),
        expected: key.algorithm().key_len(),
        actual: key.len(),
    })
}

impl BlockCipher {
    pub(crate) fn new(key: &SecretKey) -> Result<BlockCipher> {
        Ok(match key.algorithm() {
            Algorithm::Des => BlockCipher::Des(init(key)?),
            Algorithm::Tdes2 => BlockCipher::Tdes2(init(key)?),
            Algorithm::Tdes3 => BlockCipher::Tdes3(init(key)?),
            Algorithm::Aes128 => BlockCipher::Aes128(init(key)?),
            Algorithm::Aes192 => BlockCipher::Aes192(init(key)?),
            Algorithm::Aes256 => BlockCipher::Aes256(init(key)?),
            Algorithm::Sm4 => BlockCipher::Sm4(init(key)?),
        })
    }

    pub(crate) fn algorithm(&self) -> Algorithm {
        match self {
            BlockCipher::Des(_) => Algorithm::Des,
            BlockCipher::Tdes2(_) => Algorithm::Tdes2,
            BlockCipher::Tdes3(_) => Algorithm::Tdes3,
            BlockCipher::Aes128(_) => Algorithm::Aes128,
            BlockCipher::Aes192(_) => Algorithm::Aes192,
            BlockCipher::Aes256(_) => Algorithm::Aes256,
            BlockCipher::Sm4(_) => Algorithm::Sm4,
        }
    }

    pub(crate) fn block_len(&self) -> usize {
        self.algorithm().block_len()
    }

    pub(crate) fn encrypt_ecb(&self, buf: &mut [u8]) -> Result<()> {
        with_cipher!(self, c => c.encrypt_blocks(as_blocks::<_>(c, buf)?));
        Ok(())
    }

    pub(crate) fn decrypt_ecb(&self, buf: &mut [u8]) -> Result<()> {
        with_cipher!(self, c => c.decrypt_blocks(as_blocks::<_>(c, buf)?));
        Ok(())
    }

    pub(crate) fn encrypt_cbc(&self, iv: &[u8], buf: &mut [u8]) -> Result<()> {
        with_cipher!(self, c => {
            let blocks = as_blocks(c, buf)?;
            let mut mode = cbc::Encryptor::inner_iv_slice_init(c.clone(), iv).map_err(|_| iv_error(iv, self))?;
            mode.encrypt_blocks(blocks);
        });
        Ok(())
    }

    pub(crate) fn decrypt_cbc(&self, iv: &[u8], buf: &mut [u8]) -> Result<()> {
        with_cipher!(self, c => {
            let blocks = as_blocks(c, buf)?;
            let mut mode = cbc::Decryptor::inner_iv_slice_init(c.clone(), iv).map_err(|_| iv_error(iv, self))?;
            mode.decrypt_blocks(blocks);
        });
        Ok(())
    }

    /// CMAC (NIST SP 800-38B) of `data`: a full block.
    pub(crate) fn cmac(&self, data: &[u8]) -> Vec<u8> {
        self.cmac_of_parts(&[data])
    }

    /// CMAC of the concatenation of `parts`, fed to the MAC one after another (no copy).
    pub(crate) fn cmac_of_parts(&self, parts: &[&[u8]]) -> Vec<u8> {
        with_cipher!(self, c => {
            let mut mac = <Cmac<_> as cmac::digest::common::InnerInit>::inner_init(c.clone());
            for part in parts {
                mac.update(part);
            }
            mac.finalize().into_bytes().to_vec()
        })
    }
}

fn iv_error(iv: &[u8], cipher: &BlockCipher) -> Error {
    Error::DataLength {
        field: "IV".into(),
        expected: if cipher.block_len() == 8 {
            "one 8-byte block".into()
        } else {
            "one 16-byte block".into()
        },
        actual: iv.len(),
    }
}

/// Views `buf` as whole blocks of `C`, or refuses it.
fn as_blocks<'a, C: BlockSizeUser>(
    _cipher: &C,
    buf: &'a mut [u8],
) -> Result<&'a mut [Array<u8, C::BlockSize>]>
where
    C::BlockSize: ArraySize,
{
    let actual = buf.len();
    let (blocks, rest) = Array::<u8, C::BlockSize>::slice_as_chunks_mut(buf);
    if !rest.is_empty() {
        return Err(Error::DataLength {
            field: "data".into(),
            expected: "a whole number of cipher blocks".into(),
            actual,
        });
    }
    Ok(blocks)
}

/// ECB-encrypts `data` (a whole number of blocks) under `key`.
pub fn encrypt_ecb(key: &SecretKey, data: &[u8]) -> Result<Vec<u8>> {
    let mut buf = data.to_vec();
    BlockCipher::new(key)?.encrypt_ecb(&mut buf)?;
    Ok(buf)
}

/// ECB-decrypts `data` (a whole number of blocks) under `key`.
pub fn decrypt_ecb(key: &SecretKey, data: &[u8]) -> Result<Vec<u8>> {
    let mut buf = data.to_vec();
    BlockCipher::new(key)?.decrypt_ecb(&mut buf)?;
    Ok(buf)
}

/// CBC-encrypts `data` (a whole number of blocks) under `key` with `iv`; no padding is added.
pub fn encrypt_cbc(key: &SecretKey, iv: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    let mut buf = data.to_vec();
    BlockCipher::new(key)?.encrypt_cbc(iv, &mut buf)?;
    Ok(buf)
}

/// CBC-decrypts `data` (a whole number of blocks) under `key` with `iv`.
pub fn decrypt_cbc(key: &SecretKey, iv: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    let mut buf = data.to_vec();
    BlockCipher::new(key)?.decrypt_cbc(iv, &mut buf)?;
    Ok(buf)
}

/// CMAC (NIST SP 800-38B, RFC 4493 for AES) of `data` under `key`: one full block.
pub fn cmac(key: &SecretKey, data: &[u8]) -> Result<Vec<u8>> {
    Ok(BlockCipher::new(key)?.cmac(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_sizes_are_errors_not_panics() {
        let key = SecretKey::new(Algorithm::Tdes2, &[0x11; 16]).unwrap();
        assert!(matches!(
            encrypt_ecb(&key, &[0; 7]),
            Err(Error::DataLength { .. })
        ));
        assert!(matches!(
            encrypt_cbc(&key, &[0; 16], &[0; 8]),
            Err(Error::DataLength { field, .. }) if field == "IV"
        ));
        let aes = SecretKey::new(Algorithm::Aes128, &[0x11; 16]).unwrap();
        assert!(matches!(
            decrypt_ecb(&aes, &[0; 8]),
            Err(Error::DataLength { .. })
        ));
    }

    #[test]
    fn cbc_round_trips() {
        for alg in Algorithm::ALL {
            let key = SecretKey::new(alg, &vec![0x5A; alg.key_len()]).unwrap();
            let iv = vec![0x33; alg.block_len()];
            let data: Vec<u8> = (0..alg.block_len() as u8 * 3).collect();
            let ct = encrypt_cbc(&key, &iv, &data).unwrap();
            assert_ne!(ct, data);
            assert_eq!(decrypt_cbc(&key, &iv, &ct).unwrap(), data, "{alg}");
        }
    }
}
