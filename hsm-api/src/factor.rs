//! Dispersion factors of the social security card key hierarchy (DOMAIN.md §2).

use core::fmt;

use crate::error::{Error, Result};

/// An 8-byte dispersion factor.
///
/// Every factor is exactly 8 bytes. The SSC factors are ASCII text, not BCD:
///
/// | level | factor | Guangdong / Guangzhou example |
/// |---|---|---|
/// | F1 province | first 2 digits of the region code + `"0000sh"` | `"440000sh"` |
/// | F2 city | the 6-digit city code + `"sx"` | `"440100sx"` |
/// | F3 card | the last 8 bytes of the card's ATR | `86843202AD932A48` |
///
/// Factors are public data: they are not secrets and may be logged.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Factor([u8; 8]);

impl Factor {
    /// Factor length in bytes.
    pub const LEN: usize = 8;

    /// A factor from exactly 8 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Factor> {
        let arr: [u8; 8] = bytes.try_into().map_err(|_| Error::DataLength {
            field: "factor".into(),
            expected: "8 bytes".into(),
            actual: bytes.len(),
        })?;
        Ok(Factor(arr))
    }

    /// A factor from 16 hex digits.
    pub fn from_hex(text: &str) -> Result<Factor> {
        let bytes = hex::decode(text.trim()).map_err(|_| Error::Hex {
            field: "factor".into(),
        })?;
        Factor::from_bytes(&bytes)
    }

    /// F1, the province factor, from any 6-digit region code of the province
    /// (`440000`, or a city such as `440100`): `"440000sh"`.
    pub fn province(region: &str) -> Result<Factor> {
        let digits = region_digits(region)?;
        let mut f = [0u8; 8];
        f[..2].copy_from_slice(&digits[..2]);
        f[2..6].copy_from_slice(b"0000");
        f[6..].copy_from_slice(b"sh");
        Ok(Factor(f))
    }

    /// F2, the city factor, from a 6-digit city code (`xxyy00`, `yy` ≠ `00`): `"440100sx"`.
    pub fn city(region: &str) -> Result<Factor> {
        let digits = region_digits(region)?;
        if &digits[4..] != b"00" || &digits[2..4] == b"00" {
            return Err(Error::RegionCode(region.to_owned()));
        }
        let mut f = [0u8; 8];
        f[..6].copy_from_slice(&digits);
        f[6..].copy_from_slice(b"sx");
        Ok(Factor(f))
    }

    /// F3, the card factor: the last 8 bytes of the card's answer-to-reset.
    /// An ATR shorter than 8 bytes is refused.
    pub fn from_atr(atr: &[u8]) -> Result<Factor> {
        if atr.len() < Factor::LEN {
            return Err(Error::AtrTooShort(atr.len()));
        }
        Factor::from_bytes(&atr[atr.len() - Factor::LEN..])
    }

    /// The factor's bytes.
    pub fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }

    /// The bitwise complement `~F`.
    pub fn complement(&self) -> [u8; 8] {
        self.0.map(|b| !b)
    }

    /// Upper-case hex.
    pub fn to_hex(&self) -> String {
        crate::upper_hex(&self.0)
    }
}

impl fmt::Debug for Factor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Factor({})", self.to_hex())
    }
}

impl fmt::Display for Factor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Checks that `region` is six ASCII digits and not all zero in its province part.
fn region_digits(region: &str) -> Result<[u8; 6]> {
    let bytes = region.as_bytes();
    if bytes.len() != 6 || !bytes.iter().all(u8::is_ascii_digit) || &bytes[..2] == b"00" {
        return Err(Error::RegionCode(region.to_owned()));
    }
    let mut out = [0u8; 6];
    out.copy_from_slice(bytes);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guangdong_factors() {
        assert_eq!(
            Factor::province("440000").unwrap().to_hex(),
            "3434303030307368"
        );
        assert_eq!(
            Factor::province("440100").unwrap().to_hex(),
            "3434303030307368"
        );
        assert_eq!(Factor::city("440100").unwrap().to_hex(), "3434303130307378");
        let atr = hex::decode("3B6D000080318065B08701AD86843202AD932A48").unwrap();
        assert_eq!(Factor::from_atr(&atr).unwrap().to_hex(), "86843202AD932A48");
    }

    #[test]
    fn bad_regions_and_atrs_are_refused() {
        for bad in ["44010", "4401000", "44A100", "000100", ""] {
            assert_eq!(
                Factor::province(bad),
                Err(Error::RegionCode(bad.to_owned()))
            );
        }
        // A province code, or a district code, is not a city.
        for bad in ["440000", "440103"] {
            assert_eq!(Factor::city(bad), Err(Error::RegionCode(bad.to_owned())));
        }
        assert_eq!(Factor::from_atr(&[0x3B; 7]), Err(Error::AtrTooShort(7)));
        assert!(Factor::from_atr(&[0x3B; 8]).is_ok());
        assert!(matches!(
            Factor::from_hex("3434"),
            Err(Error::DataLength { .. })
        ));
    }
}
