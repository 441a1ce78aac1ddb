//! The simulator's cryptography: everything that runs on clear keys.
//!
//! Every algorithm comes from RustCrypto (`des`, `aes`, `sm4`, `cbc`, `cmac`, `retail-mac`,
//! `hkdf`, `sha2`, `p256`, `hmac`, `aes-gcm`); nothing here implements a block cipher or a MAC.
//!
//! | module | what |
//! |---|---|
//! | [`SecretKey`] | a clear key: zeroized on drop, `Debug` without bytes, constant-time `==`, bytes only through `secret_bytes()` (HSM code only: this crate and `hsm-pkcs11`) |
//! | [`cipher`] | DES, TDES, AES, SM4 in ECB/CBC, and CMAC: dispatch and length checks |
//! | [`secret_hex`], [`push_secret_hex`] | secret bytes (shares, components, PINs) as hex, constant-time (`base16ct`) |
//! | [`kcv`] | computing key check values, and checking one against a key |
//! | [`diversify`] | the dispersion methods of [`hsm_api::Dispersion`], and chains of them |
//! | [`mac`] | card secure messaging: PBOC retail MAC, SM4 MAC with fold, the encrypted key field |
//! | [`tr31`] | TR-31 / ANSI X9.143 key blocks, versions B and D |
//! | [`kdf`] | HKDF-SHA256 |
//! | [`random`] | OS randomness and key generation (weak DES keys redrawn) |
//! | [`registry`] | the registry's personal data: HMAC-SHA256 index hashes, AES-256-GCM sealed fields |
//! | [`sign`] | ECDSA P-256 signatures of published lists, from a list-signing seed |

pub mod cipher;
pub mod diversify;
pub mod kcv;
pub mod kdf;
pub(crate) mod key;
pub mod mac;
pub mod random;
pub mod registry;
pub mod sign;
pub mod tr31;

pub use key::{SecretKey, push_secret_hex, secret_hex};
