//! Reading a key block: its structure, fields, optional blocks and hex, before any key is used.

use hsm_api::{Error, KeyBlockVersion, Result};

use super::header::{Exportability, KeyBlockAlgorithm, KeyBlockHeader, ModeOfUse, OptionalBlock};
use super::{FIXED_HEADER_LEN, MAX_OPTIONAL_BLOCKS};

/// The header of `block`, after checking the block's whole structure (lengths, fields, optional
/// blocks, hex) but not its MAC: for display, it proves nothing about who made the block.
pub fn parse_header(block: &str) -> Result<KeyBlockHeader> {
    Ok(parse(block)?.header)
}

/// A key block taken apart, not yet authenticated.
pub(super) struct Parsed<'a> {
    pub(super) header: KeyBlockHeader,
    /// The header exactly as received: the MAC covers these bytes.
    pub(super) header_text: &'a [u8],
    pub(super) encrypted: Vec<u8>,
    pub(super) mac: Vec<u8>,
}

pub(super) fn parse(block: &str) -> Result<Parsed<'_>> {
    let b = block.as_bytes();
    if !b.iter().copied().all(is_printable) {
        return Err(Error::KeyBlockEncoding);
    }
    let first = *b.first().ok_or(Error::KeyBlockTruncated)?;
    let version = KeyBlockVersion::from_char(char::from(first))?;
    let fixed: &[u8; FIXED_HEADER_LEN] = b
        .get(..FIXED_HEADER_LEN)
        .and_then(|f| f.try_into().ok())
        .ok_or(Error::KeyBlockTruncated)?;

    let declared = decimal(&fixed[1..5]).ok_or(Error::KeyBlockHeader {
        field: "length".into(),
    })?;
    if declared > b.len() {
        return Err(Error::KeyBlockTruncated);
    }
    if declared < b.len() || !declared.is_multiple_of(version.block_len()) {
        return Err(Error::KeyBlockLength {
            declared,
            actual: b.len(),
        });
    }

    let key_usage = &fixed[5..7];
    if !is_two_alphanumerics(key_usage) {
        return Err(Error::KeyBlockHeader {
            field: "key usage".into(),
        });
    }
    let algorithm = KeyBlockAlgorithm::from_code(char::from(fixed[7]))
        .filter(|a| a.allowed_in(version))
        .ok_or(Error::KeyBlockHeader {
            field: "algorithm".into(),
        })?;
    let mode_of_use = ModeOfUse::from_code(char::from(fixed[8])).ok_or(Error::KeyBlockHeader {
        field: "mode of use".into(),
    })?;
    let key_version = &fixed[9..11];
    if !is_two_alphanumerics(key_version) {
        return Err(Error::KeyBlockHeader {
            field: "key version".into(),
        });
    }
    let exportability =
        Exportability::from_code(char::from(fixed[11])).ok_or(Error::KeyBlockHeader {
            field: "exportability".into(),
        })?;
    let count = decimal(&fixed[12..14]).ok_or(Error::KeyBlockHeader {
        field: "number of optional blocks".into(),
    })?;
    if &fixed[14..16] != b"00" {
        return Err(Error::KeyBlockHeader {
            field: "reserved".into(),
        });
    }

    // The optional blocks, the key data and the MAC share what follows the fixed header.
    let mac_chars = 2 * version.mac_len();
    let mac_start = declared
        .checked_sub(mac_chars)
        .filter(|&m| m >= FIXED_HEADER_LEN)
        .ok_or(Error::KeyBlockTruncated)?;
    let (optional_blocks, header_len) = parse_optional_blocks(b, count, mac_start)?;
    for block in &optional_blocks {
        block.check_value_fits(algorithm)?;
    }
    if !header_len.is_multiple_of(version.block_len()) {
        // The padding block is missing or of the wrong length.
        return Err(Error::KeyBlockOptionalBlock {
            id: "PB".to_owned(),
        });
    }

    let body = b
        .get(header_len..mac_start)
        .ok_or(Error::KeyBlockTruncated)?;
    if body.len() < 2 * version.block_len() {
        return Err(Error::KeyBlockTruncated);
    }
    if !body.len().is_multiple_of(2 * version.block_len()) {
        return Err(Error::KeyBlockLength {
            declared,
            actual: b.len(),
        });
    }
    let encrypted = decode_upper_hex(body)?;
    let mac = decode_upper_hex(b.get(mac_start..).ok_or(Error::KeyBlockTruncated)?)?;

    let header = KeyBlockHeader {
        version,
        key_usage: ascii(key_usage),
        algorithm,
        mode_of_use,
        key_version: ascii(key_version),
        exportability,
        optional_blocks,
    };
    Ok(Parsed {
        header,
        header_text: b.get(..header_len).ok_or(Error::KeyBlockTruncated)?,
        encrypted,
        mac,
    })
}

/// Reads `count` optional blocks starting after the fixed header and ending before `end`.
/// Returns them (without `PB`) and where the header ends.
fn parse_optional_blocks(
    b: &[u8],
    count: usize,
    end: usize,
) -> Result<(Vec<OptionalBlock>, usize)> {
    let mut blocks = Vec::with_capacity(count.min(MAX_OPTIONAL_BLOCKS));
    let mut seen: Vec<String> = Vec::with_capacity(count.min(MAX_OPTIONAL_BLOCKS));
    let mut pos = FIXED_HEADER_LEN;
    for _ in 0..count {
        let id_bytes = b.get(pos..end.min(pos + 2)).unwrap_or_default();
        let id = ascii(id_bytes);
        let malformed = || Error::KeyBlockOptionalBlock { id: id.clone() };
        if !is_two_alphanumerics(id_bytes) {
            return Err(malformed());
        }
        let short = field(b, pos + 2, 2, end)
            .and_then(hexadecimal)
            .ok_or_else(malformed)?;
        let (data_start, total) = if short == 0 {
            // Extended form: "00", length of the length in bytes, then the length.
            let len_len = field(b, pos + 4, 2, end)
                .and_then(hexadecimal)
                .filter(|n| (1..=2).contains(n))
                .ok_or_else(malformed)?;
            let total = field(b, pos + 6, 2 * len_len, end)
                .and_then(hexadecimal)
                .ok_or_else(malformed)?;
            (pos + 6 + 2 * len_len, total)
        } else {
            (pos + 4, short)
        };
        let data_len = total.checked_sub(data_start - pos).ok_or_else(malformed)?;
        let data = field(b, data_start, data_len, end).ok_or_else(malformed)?;
        pos = data_start + data_len;

        if seen.contains(&id) {
            return Err(malformed());
        }
        let block = OptionalBlock {
            id: id.clone(),
            data: ascii(data),
        };
        seen.push(id);
        if block.id != "PB" {
            block.validate()?;
            blocks.push(block);
        }
    }
    Ok((blocks, pos))
}

pub(super) const fn is_printable(c: u8) -> bool {
    matches!(c, 0x20..=0x7E)
}

pub(super) const fn is_upper_hex(c: u8) -> bool {
    matches!(c, b'0'..=b'9' | b'A'..=b'F')
}

pub(super) fn is_two_alphanumerics(s: &[u8]) -> bool {
    s.len() == 2 && s.iter().all(u8::is_ascii_alphanumeric)
}

/// `len` bytes of `b` from `from`, if they end at or before `end`.
fn field(b: &[u8], from: usize, len: usize, end: usize) -> Option<&[u8]> {
    let to = from.checked_add(len)?;
    if to > end {
        return None;
    }
    b.get(from..to)
}

/// The value of ASCII decimal digits (at most 4 of them here).
fn decimal(digits: &[u8]) -> Option<usize> {
    digits.iter().try_fold(0usize, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + usize::from(c - b'0'))
    })
}

/// The value of upper-case hex digits (at most 4 of them here).
fn hexadecimal(digits: &[u8]) -> Option<usize> {
    digits.iter().try_fold(0usize, |acc, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        Some(acc * 16 + usize::from(d))
    })
}

/// Upper-case hex to bytes; anything else is [`Error::KeyBlockEncoding`].
pub(super) fn decode_upper_hex(text: &[u8]) -> Result<Vec<u8>> {
    if !text.iter().copied().all(is_upper_hex) {
        return Err(Error::KeyBlockEncoding);
    }
    hex::decode(text).map_err(|_| Error::KeyBlockEncoding)
}

/// Printable ASCII (already checked) as a `String`.
fn ascii(bytes: &[u8]) -> String {
    bytes.iter().copied().map(char::from).collect()
}
