//! TR-31 / ANSI X9.143 key blocks, versions B and D.
//!
//! A key block carries one key, encrypted and authenticated under a key block protection key
//! (KBPK), with the attributes that bind it to its use. It is printable ASCII:
//!
//! ```text
//! header (ASCII, MACed)                      encrypted key data (hex)          MAC (hex)
//! B 0096 P0 T E 00 N 02 00 KS18… PB..        CBC(KBEK, IV = MAC,               CMAC(KBAK, header ‖
//! | |    |  | | |  | |  |  optional blocks       bit length ‖ key ‖ padding)       clear key data)
//! | |    |  | | |  | |  reserved "00"
//! | |    |  | | |  | number of optional blocks
//! | |    |  | | |  exportability
//! | |    |  | | key version number
//! | |    |  | mode of use
//! | |    |  algorithm of the wrapped key
//! | |    key usage
//! | length of the whole block, 4 digits
//! version
//! ```
//!
//! | version | KBPK | KBEK / KBAK derivation | encryption | MAC |
//! |---|---|---|---|---|
//! | `B` | 2- or 3-key TDES | TDES CMAC in counter mode | TDES-CBC | TDES CMAC, 8 bytes |
//! | `D` | AES-128/192/256 | AES CMAC in counter mode (NIST SP 800-108) | AES-CBC | AES CMAC, 16 bytes |
//!
//! The KBEK (encryption) and KBAK (authentication) keys have the KBPK's algorithm and length.
//! Each is the concatenation of CMAC(KBPK, derivation data) for counter = 1, 2, … (as many
//! calls as the KBPK's length needs, the last truncated), where the 8-byte derivation data of
//! the key derivation binding method of TR-31:2018 and X9.143 is:
//!
//! | bytes | field | values |
//! |---|---|---|
//! | 0 | counter | `01`, `02`, `03` |
//! | 1–2 | key usage indicator | `0000` KBEK, `0001` KBAK |
//! | 3 | separator | `00` |
//! | 4–5 | algorithm indicator | `0000` 2-key TDES, `0001` 3-key TDES, `0002` AES-128, `0003` AES-192, `0004` AES-256 |
//! | 6–7 | length of the derived key in bits | `0080`, `00C0`, `0100` |
//!
//! Tests reproduce the published examples of TR-31:2018 annex A and X9.143 clause 8 exactly
//! (`tests/vectors/tr31.json`).
//!
//! # Choices of this implementation
//!
//! - **Algorithm codes**: `A` (AES), `D` (single DES), `T` (TDES, 16 or 24 bytes), and `4` for
//!   **SM4**, which X9.143 does not define: numeric codes are reserved for proprietary use and
//!   `4` is our choice. Other systems will not know it; a block carrying SM4 only travels
//!   between parties that agreed on it. The key's length must be one its algorithm has.
//! - **Which key goes in which version**: version B carries DES and TDES keys only; version D
//!   carries any of them (DES, TDES, AES, SM4).
//! - **Liberal on unwrap, strict on wrap**: [`unwrap`] accepts a single-length DES key under
//!   algorithm `T` (published blocks of other implementations do this, e.g. psec's known value
//!   `B0096M3TC00E0000…` in `tests/vectors/tr31.json`) and returns it as a DES key;
//!   [`wrap`] writes DES only under `D`.
//! - **Strength**: a key is wrapped or unwrapped only under a KBPK at least as strong
//!   (ANSI X9.24-1), in the order DES < 2-key TDES < 3-key TDES < AES-128 = SM4 < AES-192 <
//!   AES-256; otherwise [`Error::KeyBlockKbpkStrength`].
//! - **Key length hidden**: [`wrap`] pads the key to at least the longest key of its family
//!   (DES/TDES 24 bytes, AES 32 bytes, SM4 16 bytes) and then to a whole cipher block, with random
//!   bytes, so a 2-key and a 3-key TDES key give blocks of the same length.
//! - **Optional blocks**: `KS` (key set identifier, hex), `KC` (check value of the wrapped key)
//!   and `KP` (check value of the KBPK) are checked; other IDs are carried through as printable
//!   ASCII. An ID appears at most once. `KC`/`KP` data is `00` + legacy KCV (encrypt zeros, at
//!   most 3 bytes; 4 for an SM4 key) or `01` + CMAC KCV (at most 5 bytes, X9.24-1 annex A);
//!   [`OptionalBlock::key_check_value`] writes the key's KCV exactly as every other part of the
//!   service shows it ([`hsm_api::KcvMethod::default_len`]): `00` + 3 bytes for DES and TDES,
//!   `00` + 4 bytes for SM4 (DOMAIN.md §6: SM4 of zeros, shown as 4 bytes) and `01` + 5 bytes
//!   for AES. A `KC`
//!   or `KP` in a header given to [`wrap`] must match the key or KBPK; on [`unwrap`] they are
//!   checked once the MAC has verified ([`Error::KeyBlockCheckValue`]).
//! - **Padding block**: a `PB` given to [`wrap`] is dropped and, when the header is not a whole
//!   number of cipher blocks, a fresh one of `0`s is appended as the last optional block. The
//!   header returned by [`unwrap`] and [`parse_header`] leaves `PB` out, so it equals the one
//!   that was wrapped.
//! - **Strict encoding**: the block must be printable ASCII; key data, MAC, optional block
//!   lengths and check values must be upper-case hex.
//! - **Extended lengths**: an optional block longer than 255 characters is written as
//!   `00` `02` + 4 hex digits; on reading, a length of length of `01` or `02` is accepted.
//!
//! # Example
//!
//! ```
//! use hsm_api::{Algorithm, KeyBlockVersion};
//! use hsm_sim::crypto::random::generate_key;
//! use hsm_sim::crypto::tr31::{
//!     self, Exportability, KeyBlockAlgorithm, KeyBlockHeader, ModeOfUse, OptionalBlock,
//! };
//!
//! let kbpk = generate_key(Algorithm::Aes256)?;
//! let key = generate_key(Algorithm::Tdes2)?;
//! let header = KeyBlockHeader::new(
//!     KeyBlockVersion::D,
//!     "K0",
//!     KeyBlockAlgorithm::Tdes,
//!     ModeOfUse::EncryptDecrypt,
//!     Exportability::Trusted,
//! )?
//! .with_optional_block(OptionalBlock::key_check_value(&key)?);
//!
//! let block = tr31::wrap(&kbpk, &header, &key)?;
//! assert!(block.starts_with("D0128K0TB00E0200KC0C00"));
//! assert_eq!(tr31::parse_header(&block)?, header);
//!
//! let (read, unwrapped) = tr31::unwrap(&kbpk, &block)?;
//! assert_eq!(read, header);
//! assert!(unwrapped == key);
//! # Ok::<(), hsm_api::Error>(())
//! ```
//!
//! [`Error::KeyBlockKbpkStrength`]: hsm_api::Error::KeyBlockKbpkStrength
//! [`Error::KeyBlockCheckValue`]: hsm_api::Error::KeyBlockCheckValue

mod binding;
mod header;
mod parse;
mod wrapping;

pub use binding::BindingKeys;
pub use header::{Exportability, KeyBlockAlgorithm, KeyBlockHeader, ModeOfUse, OptionalBlock};
pub use parse::parse_header;
pub(crate) use wrapping::wrap_bound_with_kcv;
pub use wrapping::{unwrap, unwrap_bound, unwrap_data_bound, wrap, wrap_bound, wrap_data_bound};

/// Length of the fixed part of the header.
const FIXED_HEADER_LEN: usize = 16;
/// The largest length the 4-digit length field can say.
const MAX_BLOCK_LEN: usize = 9999;
/// The largest count the 2-digit number of optional blocks can say.
const MAX_OPTIONAL_BLOCKS: usize = 99;
/// The longest optional block (ID and length included) whose length fits two hex digits.
const MAX_SHORT_OPTIONAL_BLOCK: usize = 0xFF;
/// Longest legacy (encrypt-zeros) check value in a `KC`/`KP` block of a DES or TDES key, in
/// bytes (X9.143); an SM4 key's, under our proprietary code `4`, is 4 bytes, the SM4 KCV length
/// of the whole service.
const MAX_LEGACY_KCV: usize = 3;
/// Longest legacy check value of an SM4 key in a `KC` block.
const MAX_LEGACY_KCV_SM4: usize = 4;
/// Longest CMAC check value in a `KC`/`KP` block, in bytes.
const MAX_CMAC_KCV: usize = 5;

#[cfg(test)]
mod tests;
