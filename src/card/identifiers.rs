//! Validated identifiers of the card system (DOMAIN.md §7).
//!
//! | type | text | checked |
//! |---|---|---|
//! | [`SocialSecurityNumber`] 社会保障号码 | 18 characters (GB 11643-1999 citizen ID) | region prefix, real birth date, check character |
//! | [`CardNumber`] 卡号 | 9 characters `[0-9A-Z]{8}` + check character | check character |
//! | [`CardIdentifier`] 卡识别码 | 32 hex: region + `D156000005` + 16 hex | region known, fixed middle part |
//! | [`Atr`] | the card's answer-to-reset, 8 to 33 bytes in hex | length; ISO/IEC 7816-3 structure (TS, T0, interface bytes, historical bytes, TCK); gives the card factor F3 |
//!
//! Each type parses with [`FromStr`] (naming its default field in errors) or with `parse_field`
//! (naming the caller's field), prints its canonical form with `Display`, and has a
//! `masked()` form for logs and the audit trail. A social security number is personal data:
//! its `Debug` prints the masked form too, so that it cannot reach a log by accident.
//!
//! Errors never carry the refused text (it may be personal data), only the field name and a
//! typed [`IdentifierFault`].
//!
//! ```
//! use sscard_kms::card::identifiers::{Atr, CardIdentifier, CardNumber, SocialSecurityNumber};
//!
//! let ssn: SocialSecurityNumber = "11010519491231002x".parse()?;
//! assert_eq!(ssn.to_string(), "11010519491231002X");
//! assert_eq!(ssn.masked(), "110105********002X");
//! let card: CardNumber = "B7K334774".parse()?;
//! assert_eq!(card.masked(), "B*****774");
//! let id: CardIdentifier = "440300D1560000050050640776EF3192".parse()?;
//! assert_eq!(id.region().name_en, "Shenzhen");
//! let atr: Atr = "3B6D000080318065B086843202AD932A48".parse()?;
//! assert_eq!(atr.card_factor().to_hex(), "86843202AD932A48");
//! assert_eq!(atr.historical_bytes().len(), 13);
//! # Ok::<(), sscard_kms::Error>(())
//! ```

use core::fmt;
use core::str::FromStr;

use hsm_api::Factor;

use crate::card::region::{self, Region};
use crate::error::{Error, Result};

/// Why an identifier was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum IdentifierFault {
    /// Wrong number of characters (or bytes, for an ATR).
    #[error("wrong length")]
    Length,
    /// A character outside the allowed set.
    #[error("malformed")]
    Malformed,
    /// The check character does not match the rest.
    #[error("bad check character")]
    CheckCharacter,
    /// The birth date of a social security number is not a real date.
    #[error("birth date is not a real date")]
    BirthDate,
    /// A region code that is not in the table.
    #[error("unknown region")]
    UnknownRegion,
    /// A region code of a province where a city is required.
    #[error("region is not a city")]
    NotACity,
    /// A card identifier whose characters 7..16 are not `D156000005`.
    #[error("missing the D156000005 application provider part")]
    ProviderPart,
    /// An ATR shorter than the 8 bytes of the card factor.
    #[error("ATR shorter than 8 bytes")]
    AtrTooShort,
    /// An ATR longer than the 33 bytes ISO/IEC 7816-3 allows.
    #[error("ATR longer than 33 bytes")]
    AtrTooLong,
    /// An ATR whose initial character TS is neither `3B` (direct convention) nor `3F` (inverse).
    #[error("ATR initial character TS is neither 3B nor 3F")]
    AtrInitialCharacter,
    /// An ATR that ends inside the interface bytes its format byte T0 and its TDi bytes announce.
    #[error("ATR ends inside the interface bytes T0 and TDi announce")]
    AtrInterfaceBytes,
    /// An ATR whose length differs from what T0 announces: its historical bytes, and the check
    /// byte TCK when a protocol other than T=0 is indicated.
    #[error("ATR length differs from the historical bytes (and TCK) T0 announces")]
    AtrHistoricalBytes,
    /// An ATR whose check byte TCK does not make the XOR of T0..TCK zero.
    #[error("ATR check byte TCK does not match")]
    AtrChecksum,
}

impl IdentifierFault {
    /// Every fault, in declaration order.
    pub const ALL: &[IdentifierFault] = &[
        IdentifierFault::Length,
        IdentifierFault::Malformed,
        IdentifierFault::CheckCharacter,
        IdentifierFault::BirthDate,
        IdentifierFault::UnknownRegion,
        IdentifierFault::NotACity,
        IdentifierFault::ProviderPart,
        IdentifierFault::AtrTooShort,
        IdentifierFault::AtrTooLong,
        IdentifierFault::AtrInitialCharacter,
        IdentifierFault::AtrInterfaceBytes,
        IdentifierFault::AtrHistoricalBytes,
        IdentifierFault::AtrChecksum,
    ];

    /// The stable reason code (UPPER_SNAKE) a client branches on; the field is named beside it.
    pub const fn code(self) -> &'static str {
        match self {
            IdentifierFault::Length => "IDENTIFIER_LENGTH",
            IdentifierFault::Malformed => "IDENTIFIER_MALFORMED",
            IdentifierFault::CheckCharacter => "IDENTIFIER_CHECK_CHARACTER",
            IdentifierFault::BirthDate => "IDENTIFIER_BIRTH_DATE",
            IdentifierFault::UnknownRegion => "REGION_UNKNOWN",
            IdentifierFault::NotACity => "REGION_NOT_A_CITY",
            IdentifierFault::ProviderPart => "IDENTIFIER_PROVIDER_PART",
            IdentifierFault::AtrTooShort => "ATR_TOO_SHORT",
            IdentifierFault::AtrTooLong => "ATR_TOO_LONG",
            IdentifierFault::AtrInitialCharacter => "ATR_INITIAL_CHARACTER",
            IdentifierFault::AtrInterfaceBytes => "ATR_INTERFACE_BYTES",
            IdentifierFault::AtrHistoricalBytes => "ATR_HISTORICAL_BYTES",
            IdentifierFault::AtrChecksum => "ATR_CHECKSUM",
        }
    }
}

fn invalid(field: &'static str, reason: IdentifierFault) -> Error {
    Error::InvalidIdentifier { field, reason }
}

// ---------------------------------------------------------------------------------------------
// Social security number
// ---------------------------------------------------------------------------------------------

/// A social security number (社会保障号码): the 18-character citizen ID of GB 11643-1999.
///
/// Stored in canonical form: a lower-case check character `x` is accepted and shown as `X`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocialSecurityNumber(String);

/// A calendar date, as the 8 birth-date digits of a social security number give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BirthDate {
    pub year: u16,
    pub month: u8,
    pub day: u8,
}

impl SocialSecurityNumber {
    /// Field name used by [`FromStr`].
    pub const FIELD: &'static str = "social_security_number";
    /// GB 11643-1999 weights of the first 17 characters.
    pub const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: &'static [u8; 11] = b"10X98765432";

    /// Parses and validates `text`, naming `field` in errors (the first of its
    /// [`faults`](SocialSecurityNumber::faults)).
    pub fn parse_field(field: &'static str, text: &str) -> Result<SocialSecurityNumber> {
        match SocialSecurityNumber::faults(text).first() {
            Some(&fault) => Err(invalid(field, fault)),
            None => Ok(SocialSecurityNumber(text.to_ascii_uppercase())),
        }
    }

    /// Every fault of `text`, not only the first, in this order: [`IdentifierFault::Length`]
    /// or [`IdentifierFault::Malformed`] alone (nothing else can be read then); otherwise any
    /// of [`IdentifierFault::CheckCharacter`], [`IdentifierFault::UnknownRegion`] (the first two
    /// digits are not a province-level GB/T 2260 code, [`region::is_province_level_prefix`])
    /// and [`IdentifierFault::BirthDate`]. Empty for a valid number. The batch review reports
    /// them all; [`SocialSecurityNumber::parse_field`] the first.
    pub fn faults(text: &str) -> Vec<IdentifierFault> {
        let b = text.as_bytes();
        if b.len() != 18 {
            return vec![IdentifierFault::Length];
        }
        if !b[..17].iter().all(u8::is_ascii_digit) || !matches!(b[17], b'0'..=b'9' | b'X' | b'x') {
            return vec![IdentifierFault::Malformed];
        }
        let mut faults = Vec::new();
        match SocialSecurityNumber::check_character(&text[..17]) {
            Ok(expected) if char::from(b[17].to_ascii_uppercase()) == expected => {}
            _ => faults.push(IdentifierFault::CheckCharacter),
        }
        if !region::is_province_level_prefix(&text[..2]) {
            faults.push(IdentifierFault::UnknownRegion);
        }
        if parse_date(&b[6..14]).is_none() {
            faults.push(IdentifierFault::BirthDate);
        }
        faults
    }

    /// The check character of the first 17 characters (which must be 17 ASCII digits).
    pub fn check_character(first17: &str) -> Result<char> {
        let b = first17.as_bytes();
        if b.len() != 17 {
            return Err(invalid(Self::FIELD, IdentifierFault::Length));
        }
        if !b.iter().all(u8::is_ascii_digit) {
            return Err(invalid(Self::FIELD, IdentifierFault::Malformed));
        }
        let sum: u32 = b
            .iter()
            .zip(Self::WEIGHTS)
            .map(|(d, w)| u32::from(d - b'0') * w)
            .sum();
        // `sum % 11` is below 11: the index is always in range.
        let idx = (sum % 11) as usize;
        Ok(char::from(Self::CHECK[idx]))
    }

    /// The canonical 18 characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 6-digit region of registration (a county-level GB/T 2260 code, e.g. `440103`).
    pub fn region_code(&self) -> &str {
        &self.0[..6]
    }

    /// The birth date.
    pub fn birth_date(&self) -> BirthDate {
        // Validated at parse time; the fallback is never taken.
        parse_date(&self.0.as_bytes()[6..14]).unwrap_or(BirthDate {
            year: 0,
            month: 0,
            day: 0,
        })
    }

    /// For logs and the audit trail: region and last 4 characters, the birth date hidden
    /// (`440103********123X`).
    pub fn masked(&self) -> String {
        format!("{}********{}", &self.0[..6], &self.0[14..])
    }
}

impl BirthDate {
    /// `YYYYMMDD`, exactly 8 digits, as a real Gregorian date (years 0001..=9999).
    pub fn parse(text: &str) -> Option<BirthDate> {
        parse_date(text.as_bytes())
    }
}

impl fmt::Display for BirthDate {
    /// `YYYYMMDD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}{:02}{:02}", self.year, self.month, self.day)
    }
}

/// `YYYYMMDD` as a real Gregorian date.
fn parse_date(digits: &[u8]) -> Option<BirthDate> {
    if digits.len() != 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let num = |r: core::ops::Range<usize>| {
        digits[r]
            .iter()
            .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'))
    };
    let year = num(0..4);
    let month = u8::try_from(num(4..6)).ok()?;
    let day = u8::try_from(num(6..8)).ok()?;
    let leap = (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if year == 0 || day == 0 || day > days {
        return None;
    }
    Some(BirthDate { year, month, day })
}

impl FromStr for SocialSecurityNumber {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        SocialSecurityNumber::parse_field(Self::FIELD, s)
    }
}

impl fmt::Display for SocialSecurityNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Prints the masked form: personal data must not reach logs through `{:?}`.
impl fmt::Debug for SocialSecurityNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SocialSecurityNumber({})", self.masked())
    }
}

// ---------------------------------------------------------------------------------------------
// Card number
// ---------------------------------------------------------------------------------------------

/// A card number (卡号): 8 characters of `[0-9A-Z]` and a check character.
///
/// Check character: values `0`–`9` → 0–9, `A`–`Z` → 10–35; weights 3 7 9 10 5 8 4 2 over all
/// eight characters (the first one included); r = 11 − (Σ mod 11); r = 10 → `X`, r = 11 → `0`.
/// The published examples `X00000019`, `B7K334774` and `188347080` all validate under this
/// rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CardNumber(String);

impl CardNumber {
    /// Field name used by [`FromStr`].
    pub const FIELD: &'static str = "card_number";
    /// Weights of the 8 body characters.
    pub const WEIGHTS: [u32; 8] = [3, 7, 9, 10, 5, 8, 4, 2];

    /// Parses and validates `text` (upper case only, as printed on the card).
    pub fn parse_field(field: &'static str, text: &str) -> Result<CardNumber> {
        let b = text.as_bytes();
        if b.len() != 9 {
            return Err(invalid(field, IdentifierFault::Length));
        }
        if !b
            .iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        {
            return Err(invalid(field, IdentifierFault::Malformed));
        }
        let expected = CardNumber::check_character(&text[..8])
            .map_err(|_| invalid(field, IdentifierFault::Malformed))?;
        if char::from(b[8]) != expected {
            return Err(invalid(field, IdentifierFault::CheckCharacter));
        }
        Ok(CardNumber(text.to_owned()))
    }

    /// The check character of an 8-character body of `[0-9A-Z]`.
    pub fn check_character(body: &str) -> Result<char> {
        let b = body.as_bytes();
        if b.len() != 8 {
            return Err(invalid(Self::FIELD, IdentifierFault::Length));
        }
        let mut sum = 0u32;
        for (&c, w) in b.iter().zip(Self::WEIGHTS) {
            let v = match c {
                b'0'..=b'9' => u32::from(c - b'0'),
                b'A'..=b'Z' => u32::from(c - b'A') + 10,
                _ => return Err(invalid(Self::FIELD, IdentifierFault::Malformed)),
            };
            sum += v * w;
        }
        Ok(match 11 - sum % 11 {
            10 => 'X',
            11 => '0',
            // 1..=9: a single decimal digit.
            r => char::from(b'0' + r as u8),
        })
    }

    /// The 9 characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// For logs and the audit trail: first and last three characters (`B*****774`).
    pub fn masked(&self) -> String {
        format!("{}*****{}", &self.0[..1], &self.0[6..])
    }
}

impl FromStr for CardNumber {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        CardNumber::parse_field(Self::FIELD, s)
    }
}

impl fmt::Display for CardNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Card identifier
// ---------------------------------------------------------------------------------------------

/// A card identifier (卡识别码): 32 hex characters, the 6-digit issuing region, the registered
/// application provider part `D156000005`, and 16 hex characters chosen by the issuer.
///
/// The region must be one the service knows ([`crate::card::region`]). Stored in upper case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CardIdentifier {
    text: String,
    region: &'static Region,
}

impl CardIdentifier {
    /// Field name used by [`FromStr`].
    pub const FIELD: &'static str = "card_identifier";
    /// Characters 7..16 of every card identifier.
    pub const PROVIDER: &'static str = "D156000005";

    /// Parses and validates `text` (hex digits of either case), naming `field` in errors (the
    /// first of its [`faults`](CardIdentifier::faults)).
    pub fn parse_field(field: &'static str, text: &str) -> Result<CardIdentifier> {
        if let Some(&fault) = CardIdentifier::faults(text).first() {
            return Err(invalid(field, fault));
        }
        let upper = text.to_ascii_uppercase();
        let region = Region::lookup_field(field, &upper[..6])?;
        Ok(CardIdentifier {
            text: upper,
            region,
        })
    }

    /// Every fault of `text`, not only the first: [`IdentifierFault::Length`] or
    /// [`IdentifierFault::Malformed`] (not hex) alone; otherwise the region part's fault, if
    /// any ([`IdentifierFault::Malformed`] for non-digits, [`IdentifierFault::UnknownRegion`]),
    /// then [`IdentifierFault::ProviderPart`]. Empty for a valid identifier.
    pub fn faults(text: &str) -> Vec<IdentifierFault> {
        let b = text.as_bytes();
        if b.len() != 32 {
            return vec![IdentifierFault::Length];
        }
        if !b.iter().all(u8::is_ascii_hexdigit) {
            return vec![IdentifierFault::Malformed];
        }
        let mut faults = Vec::new();
        if let Err(Error::InvalidIdentifier { reason, .. }) = Region::lookup(&text[..6]) {
            faults.push(reason);
        }
        if !text[6..16].eq_ignore_ascii_case(Self::PROVIDER) {
            faults.push(IdentifierFault::ProviderPart);
        }
        faults
    }

    /// The 32 upper-case hex characters.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The issuing region.
    pub fn region(&self) -> &'static Region {
        self.region
    }

    /// The last 16 hex characters, chosen by the issuer.
    pub fn serial(&self) -> &str {
        &self.text[16..]
    }

    /// For logs and the audit trail: region, provider part and the last 4 characters.
    pub fn masked(&self) -> String {
        format!("{}************{}", &self.text[..16], &self.text[28..])
    }
}

impl FromStr for CardIdentifier {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        CardIdentifier::parse_field(Self::FIELD, s)
    }
}

impl fmt::Display for CardIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

// ---------------------------------------------------------------------------------------------
// ATR
// ---------------------------------------------------------------------------------------------

/// A card's answer-to-reset: 8 to 33 bytes, structured as ISO/IEC 7816-3 §8 says. Its last 8
/// bytes are the card factor F3 by default (a COS profile may choose other bytes).
///
/// Checked: TS is `3B` or `3F`; the interface bytes that T0 and each TDi announce are all
/// there; the bytes after them are exactly T0's K historical bytes, followed by the check byte
/// TCK if and only if a protocol other than T=0 is indicated; TCK makes the XOR of T0..TCK zero.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Atr {
    bytes: Vec<u8>,
    /// Where the historical bytes are in `bytes`.
    historical: core::ops::Range<usize>,
    factor: Factor,
}

impl Atr {
    /// Field name used by [`FromStr`].
    pub const FIELD: &'static str = "atr";
    /// Fewest bytes: the card factor is the last 8.
    pub const MIN_LEN: usize = 8;
    /// Most bytes ISO/IEC 7816-3 allows in an ATR.
    pub const MAX_LEN: usize = 33;

    /// Parses hex (either case; white space between digits is ignored), naming `field`.
    pub fn parse_field(field: &'static str, text: &str) -> Result<Atr> {
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let bytes =
            hex::decode(&compact).map_err(|_| invalid(field, IdentifierFault::Malformed))?;
        Atr::from_bytes_field(field, &bytes)
    }

    /// An ATR from its bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Atr> {
        Atr::from_bytes_field(Self::FIELD, bytes)
    }

    fn from_bytes_field(field: &'static str, bytes: &[u8]) -> Result<Atr> {
        if bytes.len() > Self::MAX_LEN {
            return Err(invalid(field, IdentifierFault::AtrTooLong));
        }
        let factor =
            Factor::from_atr(bytes).map_err(|_| invalid(field, IdentifierFault::AtrTooShort))?;
        let historical = atr_structure(bytes).map_err(|fault| invalid(field, fault))?;
        Ok(Atr {
            bytes: bytes.to_vec(),
            historical,
            factor,
        })
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The historical bytes (T0's K bytes after the interface bytes).
    pub fn historical_bytes(&self) -> &[u8] {
        &self.bytes[self.historical.clone()]
    }

    /// The default card factor F3: the last 8 bytes ([`Factor::from_atr`]). The factor a card
    /// is personalised with is its COS profile's (`CosProfile::card_factor`).
    pub fn card_factor(&self) -> Factor {
        self.factor
    }

    /// Upper-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode_upper(&self.bytes)
    }

    /// For logs and the audit trail: the first and last 2 bytes, the rest as `*`
    /// (`3B6D****…****2A48`, as long as the hex).
    pub fn masked(&self) -> String {
        let hex = self.to_hex();
        let n = hex.len();
        format!("{}{}{}", &hex[..4], "*".repeat(n - 8), &hex[n - 4..])
    }
}

/// Walks an ATR as ISO/IEC 7816-3 §8.2 lays it out; the range of its historical bytes.
fn atr_structure(bytes: &[u8]) -> core::result::Result<core::ops::Range<usize>, IdentifierFault> {
    let (Some(&ts), Some(&t0)) = (bytes.first(), bytes.get(1)) else {
        return Err(IdentifierFault::AtrInterfaceBytes);
    };
    if ts != 0x3B && ts != 0x3F {
        return Err(IdentifierFault::AtrInitialCharacter);
    }
    let historical_len = usize::from(t0 & 0x0F);
    // Y1 in T0's high nibble; each TDi holds Y(i+1) and a protocol T in its low nibble.
    let mut y = t0 >> 4;
    let mut pos = 2;
    let mut other_than_t0 = false;
    loop {
        // TAi, TBi, TCi (bits 5..7 of the nibble's owner: 0x1, 0x2, 0x4), then TDi (0x8).
        pos += (y & 0x07).count_ones() as usize;
        if y & 0x08 == 0 {
            break;
        }
        let td = *bytes.get(pos).ok_or(IdentifierFault::AtrInterfaceBytes)?;
        pos += 1;
        if td & 0x0F != 0 {
            other_than_t0 = true;
        }
        y = td >> 4;
    }
    if pos > bytes.len() {
        return Err(IdentifierFault::AtrInterfaceBytes);
    }
    let historical = pos..pos + historical_len;
    let expected = historical.end + usize::from(other_than_t0);
    if bytes.len() != expected {
        return Err(IdentifierFault::AtrHistoricalBytes);
    }
    if other_than_t0 && bytes[1..].iter().fold(0u8, |acc, b| acc ^ b) != 0 {
        return Err(IdentifierFault::AtrChecksum);
    }
    Ok(historical)
}

impl FromStr for Atr {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Atr::parse_field(Self::FIELD, s)
    }
}

impl fmt::Display for Atr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(r: Result<impl fmt::Debug>) -> (&'static str, IdentifierFault) {
        match r {
            Err(Error::InvalidIdentifier { field, reason }) => (field, reason),
            other => panic!("expected InvalidIdentifier, got {other:?}"),
        }
    }

    // ---- social security number ----

    #[test]
    fn ssn_published_and_constructed_examples() {
        // GB 11643-1999's own examples.
        for ok in ["11010519491231002X", "440524188001010014"] {
            let ssn: SocialSecurityNumber = ok.parse().unwrap();
            assert_eq!(ssn.as_str(), ok);
        }
        // Constructed by the rule (check characters computed independently).
        let ssn: SocialSecurityNumber = "440103199003071232".parse().unwrap();
        assert_eq!(ssn.region_code(), "440103");
        assert_eq!(
            ssn.birth_date(),
            BirthDate {
                year: 1990,
                month: 3,
                day: 7
            }
        );
        assert_eq!(ssn.masked(), "440103********1232");
        // 29 February of a leap year.
        assert!("440300200002294562".parse::<SocialSecurityNumber>().is_ok());
        assert_eq!(
            SocialSecurityNumber::check_character("11010519491231002").unwrap(),
            'X'
        );
        assert_eq!(
            SocialSecurityNumber::check_character("44190019991231000").unwrap(),
            '5'
        );
    }

    #[test]
    fn ssn_lower_case_x_is_canonicalised() {
        let ssn: SocialSecurityNumber = "11010519491231002x".parse().unwrap();
        assert_eq!(ssn.to_string(), "11010519491231002X");
        assert_eq!(ssn, "11010519491231002X".parse().unwrap());
    }

    #[test]
    fn ssn_refusals() {
        let cases: Vec<(String, IdentifierFault)> = [
            ("11010519491231002", IdentifierFault::Length),
            ("11010519491231002X1", IdentifierFault::Length),
            ("1101051949123100 X", IdentifierFault::Malformed),
            ("11010519491231002Y", IdentifierFault::Malformed),
            ("X10105194912310021", IdentifierFault::Malformed),
            ("110105194912310021", IdentifierFault::CheckCharacter),
            ("440524188001010015", IdentifierFault::CheckCharacter),
        ]
        .into_iter()
        .map(|(t, r)| (t.to_owned(), r))
        .chain([
            // Check character right, date wrong: 1900 is not a leap year; month 13; day 0;
            // 31 April.
            (with_check("44030019000229123"), IdentifierFault::BirthDate),
            (with_check("44030019901301123"), IdentifierFault::BirthDate),
            (with_check("44030019900400123"), IdentifierFault::BirthDate),
            (with_check("44030019900431123"), IdentifierFault::BirthDate),
            (
                with_check("00030019900101123"),
                IdentifierFault::UnknownRegion,
            ),
        ])
        .collect();
        for (text, reason) in cases {
            assert_eq!(
                fault(text.parse::<SocialSecurityNumber>()),
                ("social_security_number", reason),
                "{text}"
            );
        }
        assert_eq!(
            fault(SocialSecurityNumber::parse_field("applicant_ssn", "1")),
            ("applicant_ssn", IdentifierFault::Length)
        );
    }

    fn with_check(first17: &str) -> String {
        format!(
            "{first17}{}",
            SocialSecurityNumber::check_character(first17).unwrap()
        )
    }

    #[test]
    fn ssn_faults_lists_every_fault() {
        use IdentifierFault as F;
        assert!(SocialSecurityNumber::faults("11010519491231002X").is_empty());
        assert_eq!(SocialSecurityNumber::faults("1101"), [F::Length]);
        assert_eq!(
            SocialSecurityNumber::faults("11010519491231002Y"),
            [F::Malformed]
        );
        // Wrong check character and 30 February: both.
        let bad_date = with_check("44010319900230123");
        let mut both = bad_date.clone();
        both.replace_range(17.., if bad_date.ends_with('1') { "2" } else { "1" });
        assert_eq!(
            SocialSecurityNumber::faults(&both),
            [F::CheckCharacter, F::BirthDate]
        );
        // Not a province-level prefix (99): unknown region, and parse refuses it too.
        let foreign = with_check("99010319900101123");
        assert_eq!(SocialSecurityNumber::faults(&foreign), [F::UnknownRegion]);
        assert_eq!(
            fault(foreign.parse::<SocialSecurityNumber>()).1,
            F::UnknownRegion
        );
        // Other provinces, Hong Kong and Taiwan residents' permits are citizens' numbers.
        for first17 in [
            "11010519491231002",
            "81000019900101123",
            "83000019900101123",
        ] {
            assert!(with_check(first17).parse::<SocialSecurityNumber>().is_ok());
        }
    }

    #[test]
    fn birth_dates() {
        let d = BirthDate::parse("20000229").unwrap();
        assert_eq!((d.year, d.month, d.day), (2000, 2, 29));
        assert_eq!(d.to_string(), "20000229");
        for bad in [
            "19000229",
            "2000022",
            "200002290",
            "2000-2-2",
            "00000101",
            "",
        ] {
            assert!(BirthDate::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn ssn_never_shows_in_debug_or_errors() {
        let ssn: SocialSecurityNumber = "11010519491231002X".parse().unwrap();
        let shown = format!("{ssn:?}");
        assert!(!shown.contains("19491231"), "{shown}");
        assert!(shown.contains("110105********002X"));
        let err = "110105194912310021"
            .parse::<SocialSecurityNumber>()
            .unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains("19491231"), "{text}");
        assert!(text.contains("social_security_number"), "{text}");
    }

    // ---- card number ----

    #[test]
    fn card_number_published_examples() {
        for ok in ["X00000019", "B7K334774", "188347080"] {
            let n: CardNumber = ok.parse().unwrap();
            assert_eq!(n.to_string(), ok);
            assert_eq!(
                CardNumber::check_character(&ok[..8]).unwrap(),
                char::from(ok.as_bytes()[8])
            );
        }
        assert_eq!(
            CardNumber::from_str("B7K334774").unwrap().masked(),
            "B*****774"
        );
    }

    #[test]
    fn card_number_constructed_check_characters() {
        // Σ for GD000008 = 16·3 + 13·7 + 8·2 = 155, 155 mod 11 = 1, r = 10 → X.
        assert_eq!(CardNumber::check_character("GD000008").unwrap(), 'X');
        assert!("GD000008X".parse::<CardNumber>().is_ok());
        // Σ = 0 → r = 11 → 0.
        assert_eq!(CardNumber::check_character("00000000").unwrap(), '0');
        assert!("000000000".parse::<CardNumber>().is_ok());
        // Σ for GD000002 = 48 + 91 + 4 = 143 = 13·11 → r = 11 → 0.
        assert_eq!(CardNumber::check_character("GD000002").unwrap(), '0');
        // Σ = 2 → r = 9.
        assert_eq!(CardNumber::check_character("00000001").unwrap(), '9');
        // Letters count 10..35: A·3 = 30, 30 mod 11 = 8, r = 3.
        assert_eq!(CardNumber::check_character("A0000000").unwrap(), '3');
    }

    #[test]
    fn card_number_refusals() {
        let cases = [
            ("X0000001", IdentifierFault::Length),
            ("X000000190", IdentifierFault::Length),
            ("x00000019", IdentifierFault::Malformed),
            ("X0000-019", IdentifierFault::Malformed),
            ("X00000018", IdentifierFault::CheckCharacter),
            ("B7K334775", IdentifierFault::CheckCharacter),
            ("188347081", IdentifierFault::CheckCharacter),
            ("GD0000080", IdentifierFault::CheckCharacter),
        ];
        for (text, reason) in cases {
            assert_eq!(
                fault(text.parse::<CardNumber>()),
                ("card_number", reason),
                "{text}"
            );
        }
    }

    // ---- card identifier ----

    #[test]
    fn card_identifier_example() {
        let id: CardIdentifier = "440300D1560000050050640776EF3192".parse().unwrap();
        assert_eq!(id.region().code, "440300");
        assert_eq!(id.region().name_en, "Shenzhen");
        assert_eq!(id.serial(), "0050640776EF3192");
        assert_eq!(id.masked(), "440300D156000005************3192");
        let lower: CardIdentifier = "440300d1560000050050640776ef3192".parse().unwrap();
        assert_eq!(lower, id);
        assert_eq!(lower.to_string(), "440300D1560000050050640776EF3192");
    }

    #[test]
    fn card_identifier_refusals() {
        let cases = [
            ("440300D1560000050050640776EF319", IdentifierFault::Length),
            ("440300D1560000050050640776EF31920", IdentifierFault::Length),
            (
                "440300D1560000050050640776EF319G",
                IdentifierFault::Malformed,
            ),
            (
                "441000D1560000050050640776EF3192",
                IdentifierFault::UnknownRegion,
            ),
            (
                "110000D1560000050050640776EF3192",
                IdentifierFault::UnknownRegion,
            ),
            (
                "4403AAD1560000050050640776EF3192",
                IdentifierFault::Malformed,
            ),
            (
                "440300D1560000060050640776EF3192",
                IdentifierFault::ProviderPart,
            ),
        ];
        for (text, reason) in cases {
            assert_eq!(
                fault(text.parse::<CardIdentifier>()),
                ("card_identifier", reason),
                "{text}"
            );
        }
    }

    #[test]
    fn card_identifier_faults_lists_every_fault() {
        use IdentifierFault as F;
        assert!(CardIdentifier::faults("440300d1560000050050640776ef3192").is_empty());
        assert_eq!(CardIdentifier::faults("4403"), [F::Length]);
        assert_eq!(
            CardIdentifier::faults("441000D1560000060050640776EF3192"),
            [F::UnknownRegion, F::ProviderPart]
        );
        assert_eq!(
            CardIdentifier::faults("4403AAD1560000050050640776EF3192"),
            [F::Malformed]
        );
    }

    // ---- ATR ----

    /// The ATR of the tests: `3B 6D 00 00` (TS, T0 with TB1 and TC1 and 13 historical bytes,
    /// TB1, TC1) and 13 historical bytes, the last 8 DOMAIN.md §2's card factor.
    const ATR: &str = "3B6D000080318065B086843202AD932A48";

    /// A 33-byte ATR: TD1 and TD2 announce T=1 with every interface byte, 15 historical bytes,
    /// and its TCK.
    fn longest_atr() -> Vec<u8> {
        let mut atr = vec![
            0x3B, 0xFF, 0x11, 0x22, 0x33, 0xF1, 0x44, 0x55, 0x66, 0xF1, 0x77, 0x88, 0x99, 0x71,
            0xAA, 0xBB, 0xCC,
        ];
        atr.extend(0x01..=0x0F);
        let tck = atr[1..].iter().fold(0, |acc, b| acc ^ b);
        atr.push(tck);
        atr
    }

    #[test]
    fn atr_gives_the_card_factor() {
        let atr: Atr = ATR.parse().unwrap();
        assert_eq!(atr.card_factor().to_hex(), "86843202AD932A48");
        assert_eq!(atr.as_bytes().len(), 17);
        assert_eq!(
            hex::encode_upper(atr.historical_bytes()),
            "80318065B086843202AD932A48"
        );
        assert_eq!(atr.masked(), format!("3B6D{}2A48", "*".repeat(26)));
        let spaced: Atr = "3b 6d 00 00 80 31 80 65 b0 86 84 32 02 ad 93 2a 48"
            .parse()
            .unwrap();
        assert_eq!(spaced, atr);
        assert_eq!(spaced.to_string(), ATR);
        // Exactly 8 and exactly 33 bytes are accepted: T0 = 06 (no interface bytes, 6
        // historical bytes), and the longest ATR above.
        let eight = Atr::from_bytes(&[0x3B, 0x06, 1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!(
            eight.card_factor(),
            Factor::from_bytes(&[0x3B, 0x06, 1, 2, 3, 4, 5, 6]).unwrap()
        );
        let longest = Atr::from_bytes(&longest_atr()).unwrap();
        assert_eq!(longest.as_bytes().len(), 33);
        assert_eq!(
            longest.historical_bytes(),
            (0x01..=0x0F).collect::<Vec<u8>>()
        );
        // The inverse convention's TS.
        assert!(Atr::from_bytes(&[0x3F, 0x06, 1, 2, 3, 4, 5, 6]).is_ok());
    }

    #[test]
    fn atr_refusals() {
        assert_eq!(
            fault("3B6D0000803180".parse::<Atr>()).1,
            IdentifierFault::AtrTooShort
        );
        assert_eq!(
            fault(Atr::from_bytes(&[0x3B; 7])),
            ("atr", IdentifierFault::AtrTooShort)
        );
        assert_eq!(
            fault(Atr::from_bytes(&[0x3B; 34])),
            ("atr", IdentifierFault::AtrTooLong)
        );
        assert_eq!(
            fault(Atr::parse_field("card_atr", "3B6D00008031806")),
            ("card_atr", IdentifierFault::Malformed)
        );
        assert_eq!(
            fault("3B6D000080318065B08701ZZ".parse::<Atr>()),
            ("atr", IdentifierFault::Malformed)
        );
    }

    #[test]
    fn malformed_atrs_are_refused_with_the_reason() {
        let good = hex::decode(ATR).unwrap();
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut atr = good.clone();
            f(&mut atr);
            fault(Atr::from_bytes(&atr))
        };
        // TS neither 3B nor 3F.
        assert_eq!(
            with(&|a| a[0] = 0x3A),
            ("atr", IdentifierFault::AtrInitialCharacter)
        );
        // The ATR the tests used before: T0 announces 13 historical bytes, 16 follow.
        assert_eq!(
            fault("3B6D000080318065B08701AD86843202AD932A48".parse::<Atr>()),
            ("atr", IdentifierFault::AtrHistoricalBytes)
        );
        // One historical byte missing, one too many.
        assert_eq!(
            with(&|a| {
                a.remove(4);
            }),
            ("atr", IdentifierFault::AtrHistoricalBytes)
        );
        assert_eq!(
            with(&|a| a.push(0x00)),
            ("atr", IdentifierFault::AtrHistoricalBytes)
        );
        // T0 announces a TD1 that leads past the end.
        assert_eq!(
            fault(Atr::from_bytes(&[0x3B, 0xF0, 1, 2, 3, 0xF1, 4, 5])),
            ("atr", IdentifierFault::AtrInterfaceBytes)
        );
        // T=1 indicated: TCK is required and must check.
        let mut longest = longest_atr();
        *longest.last_mut().unwrap() ^= 0x01;
        assert_eq!(
            fault(Atr::from_bytes(&longest)),
            ("atr", IdentifierFault::AtrChecksum)
        );
        let mut no_tck = longest_atr();
        no_tck.pop();
        assert_eq!(
            fault(Atr::from_bytes(&no_tck)),
            ("atr", IdentifierFault::AtrHistoricalBytes)
        );
        // Only T=0 indicated (TD1 = 00... here T0 = 0x86: TD1 with T=0, 6 historical bytes): no
        // TCK allowed.
        assert!(Atr::from_bytes(&[0x3B, 0x86, 0x00, 1, 2, 3, 4, 5, 6]).is_ok());
        assert_eq!(
            fault(Atr::from_bytes(&[0x3B, 0x86, 0x00, 1, 2, 3, 4, 5, 6, 0x80])),
            ("atr", IdentifierFault::AtrHistoricalBytes)
        );
    }
}

/// Property tests: every input, no panic; each malformed input its own fault. 256 cases each.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    fn fault<T: fmt::Debug>(r: Result<T>) -> (&'static str, IdentifierFault) {
        match r {
            Err(Error::InvalidIdentifier { field, reason }) => (field, reason),
            other => panic!("expected InvalidIdentifier, got {other:?}"),
        }
    }

    /// A well-formed ATR by ISO/IEC 7816-3, built from its parts: TS, T0, up to three more
    /// groups of interface bytes (each TDi announcing the next group and a protocol), the
    /// historical bytes, and TCK when a protocol other than T=0 is indicated. With its
    /// historical bytes and whether it has a TCK.
    fn well_formed_atr() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, bool)> {
        (
            any::<bool>(),
            0u8..8,
            proptest::collection::vec((0u8..8, 0u8..16), 0..3),
            proptest::collection::vec(any::<u8>(), 0..=15),
            any::<u8>(),
        )
            .prop_map(|(inverse, first, groups, historical, filler)| {
                let k = u8::try_from(historical.len()).unwrap_or(0);
                let td_bit = |more: bool| if more { 0x08 } else { 0x00 };
                let mut bytes = vec![
                    if inverse { 0x3F } else { 0x3B },
                    ((first | td_bit(!groups.is_empty())) << 4) | k,
                ];
                let mut presence = first;
                let mut other_than_t0 = false;
                for (i, &(next, protocol)) in groups.iter().enumerate() {
                    bytes.extend(std::iter::repeat_n(filler, presence.count_ones() as usize));
                    bytes.push(((next | td_bit(i + 1 < groups.len())) << 4) | protocol);
                    other_than_t0 |= protocol != 0;
                    presence = next;
                }
                bytes.extend(std::iter::repeat_n(filler, presence.count_ones() as usize));
                bytes.extend_from_slice(&historical);
                if other_than_t0 {
                    let tck = bytes[1..].iter().fold(0, |acc, b| acc ^ b);
                    bytes.push(tck);
                }
                (bytes, historical, other_than_t0)
            })
    }

    /// 17 digits of a valid SSN body: a region not starting `00`, a real date, a sequence.
    fn ssn_body() -> impl Strategy<Value = String> {
        // The region starts with a province-level prefix (an unknown one is a fault).
        (
            proptest::sample::select(crate::card::region::PROVINCE_LEVEL_PREFIXES.to_vec()),
            0u32..=9999,
            1900u16..=2099,
            1u8..=12,
            1u8..=28,
            0u32..=999,
        )
            .prop_map(|(r1, r2, y, m, d, seq)| format!("{r1}{r2:04}{y:04}{m:02}{d:02}{seq:03}"))
    }

    fn valid_ssn() -> impl Strategy<Value = String> {
        ssn_body().prop_map(|b| {
            let c = SocialSecurityNumber::check_character(&b).unwrap();
            format!("{b}{c}")
        })
    }

    fn valid_card_number() -> impl Strategy<Value = String> {
        "[0-9A-Z]{8}".prop_map(|b| {
            let c = CardNumber::check_character(&b).unwrap();
            format!("{b}{c}")
        })
    }

    fn known_region() -> impl Strategy<Value = &'static str> {
        let codes: Vec<&'static str> = crate::card::region::all().map(|r| r.code).collect();
        proptest::sample::select(codes)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn no_text_makes_a_parser_panic(text in ".{0,64}") {
            for r in [
                SocialSecurityNumber::parse_field("f", &text).map(|_| ()),
                CardNumber::parse_field("f", &text).map(|_| ()),
                CardIdentifier::parse_field("f", &text).map(|_| ()),
                Atr::parse_field("f", &text).map(|_| ()),
            ] {
                if let Err(e) = r {
                    prop_assert!(matches!(e, Error::InvalidIdentifier { field: "f", .. }), "{e:?}");
                }
            }
        }

        #[test]
        fn ssns_by_the_rule_parse_and_each_fault_is_named(
            ssn in valid_ssn(),
            at in 0usize..17,
            other in 0u8..=9,
            len in (0usize..40).prop_filter("not 18", |l| *l != 18),
            junk in "[^0-9]",
        ) {
            let parsed = SocialSecurityNumber::parse_field("ssn", &ssn).unwrap();
            prop_assert_eq!(parsed.as_str(), ssn.as_str());
            // One digit of the body changed: the check character no longer matches (no weight
            // is a multiple of 11, and a digit moves by at most 9).
            let mut bytes = ssn.clone().into_bytes();
            let digit = b'0' + other;
            if bytes[at] != digit {
                bytes[at] = digit;
                let changed = String::from_utf8(bytes).unwrap();
                prop_assert_eq!(
                    fault(SocialSecurityNumber::parse_field("ssn", &changed)),
                    ("ssn", IdentifierFault::CheckCharacter)
                );
            }
            let resized: String = ssn.chars().cycle().take(len).collect();
            prop_assert_eq!(
                fault(SocialSecurityNumber::parse_field("ssn", &resized)),
                ("ssn", IdentifierFault::Length)
            );
            // A non-digit in place of a digit, keeping 18 bytes when it is ASCII.
            let mut with_junk: String = ssn.chars().take(at).collect();
            with_junk.push_str(&junk);
            with_junk.extend(ssn.chars().skip(at + 1));
            let expected = if with_junk.len() == 18 {
                IdentifierFault::Malformed
            } else {
                IdentifierFault::Length
            };
            prop_assert_eq!(
                fault(SocialSecurityNumber::parse_field("ssn", &with_junk)),
                ("ssn", expected)
            );
        }

        #[test]
        fn card_numbers_by_the_rule_parse_and_each_fault_is_named(
            number in valid_card_number(),
            check in "[0-9X]",
            lower in "[a-z]",
            at in 0usize..9,
        ) {
            prop_assert!(CardNumber::parse_field("n", &number).is_ok());
            if !number.ends_with(check.as_str()) {
                let wrong = format!("{}{check}", &number[..8]);
                prop_assert_eq!(
                    fault(CardNumber::parse_field("n", &wrong)),
                    ("n", IdentifierFault::CheckCharacter)
                );
            }
            let mut lowered = number.clone();
            lowered.replace_range(at..=at, &lower);
            prop_assert_eq!(
                fault(CardNumber::parse_field("n", &lowered)),
                ("n", IdentifierFault::Malformed)
            );
            prop_assert_eq!(
                fault(CardNumber::parse_field("n", &number[..8])),
                ("n", IdentifierFault::Length)
            );
        }

        #[test]
        fn card_identifiers_of_known_regions_parse_and_each_fault_is_named(
            region in known_region(),
            serial in "[0-9a-fA-F]{16}",
            provider in "[0-9A-F]{10}",
            junk in "[g-zG-Z]",
            at in 0usize..32,
        ) {
            let text = format!("{region}{}{serial}", CardIdentifier::PROVIDER);
            let id = CardIdentifier::parse_field("id", &text).unwrap();
            prop_assert_eq!(id.region().code, region);
            prop_assert_eq!(id.serial(), serial.to_ascii_uppercase());
            if provider != CardIdentifier::PROVIDER {
                let other = format!("{region}{provider}{serial}");
                prop_assert_eq!(
                    fault(CardIdentifier::parse_field("id", &other)),
                    ("id", IdentifierFault::ProviderPart)
                );
            }
            let unknown = format!("000000{}{serial}", CardIdentifier::PROVIDER);
            prop_assert_eq!(
                fault(CardIdentifier::parse_field("id", &unknown)),
                ("id", IdentifierFault::UnknownRegion)
            );
            let mut bad = text.clone();
            bad.replace_range(at..=at, &junk);
            prop_assert_eq!(
                fault(CardIdentifier::parse_field("id", &bad)),
                ("id", IdentifierFault::Malformed)
            );
            prop_assert_eq!(
                fault(CardIdentifier::parse_field("id", &text[1..])),
                ("id", IdentifierFault::Length)
            );
        }

        #[test]
        fn well_formed_atrs_parse_their_factor_is_the_last_8_and_each_mutation_its_fault(
            atr in well_formed_atr(),
        ) {
            let (bytes, historical, has_tck) = atr;
            prop_assume!((8..=33).contains(&bytes.len()));
            let parsed = Atr::from_bytes(&bytes).unwrap();
            prop_assert_eq!(
                parsed.card_factor().to_hex(),
                hex::encode_upper(&bytes[bytes.len() - 8..])
            );
            prop_assert_eq!(parsed.historical_bytes(), &historical[..]);
            // Its hex, in either case and spaced, parses to the same ATR.
            let spaced = hex::encode(&bytes)
                .as_bytes()
                .chunks(2)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join(" ");
            prop_assert_eq!(Atr::parse_field("atr", &spaced).unwrap(), parsed);
            // An odd number of hex digits is malformed.
            let odd = format!("{}0", hex::encode(&bytes));
            prop_assert_eq!(
                fault(Atr::parse_field("atr", &odd)),
                ("atr", IdentifierFault::Malformed)
            );
            // Another initial character; a byte more than T0 announces; a wrong TCK.
            let mut other_ts = bytes.clone();
            other_ts[0] = 0x3C;
            prop_assert_eq!(
                fault(Atr::from_bytes(&other_ts)),
                ("atr", IdentifierFault::AtrInitialCharacter)
            );
            if bytes.len() < 33 {
                let mut longer = bytes.clone();
                longer.push(0x00);
                prop_assert_eq!(
                    fault(Atr::from_bytes(&longer)),
                    ("atr", IdentifierFault::AtrHistoricalBytes)
                );
            }
            if has_tck {
                let mut wrong = bytes.clone();
                if let Some(tck) = wrong.last_mut() {
                    *tck ^= 0x01;
                }
                prop_assert_eq!(
                    fault(Atr::from_bytes(&wrong)),
                    ("atr", IdentifierFault::AtrChecksum)
                );
            }
        }

        #[test]
        fn any_bytes_are_an_atr_or_refused_with_a_named_fault(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let parsed = Atr::from_bytes(&bytes);
            match bytes.len() {
                0..=7 => prop_assert_eq!(fault(parsed), ("atr", IdentifierFault::AtrTooShort)),
                8..=33 => match parsed {
                    Ok(atr) => {
                        prop_assert!(bytes[0] == 0x3B || bytes[0] == 0x3F);
                        prop_assert_eq!(atr.as_bytes(), &bytes[..]);
                        prop_assert_eq!(
                            atr.card_factor().to_hex(),
                            hex::encode_upper(&bytes[bytes.len() - 8..])
                        );
                    }
                    Err(e) => {
                        let (field, reason) = fault::<()>(Err(e));
                        prop_assert_eq!(field, "atr");
                        prop_assert!(matches!(
                            reason,
                            IdentifierFault::AtrInitialCharacter
                                | IdentifierFault::AtrInterfaceBytes
                                | IdentifierFault::AtrHistoricalBytes
                                | IdentifierFault::AtrChecksum
                        ), "{reason:?}");
                        if bytes[0] != 0x3B && bytes[0] != 0x3F {
                            prop_assert_eq!(reason, IdentifierFault::AtrInitialCharacter);
                        }
                    }
                },
                _ => prop_assert_eq!(fault(parsed), ("atr", IdentifierFault::AtrTooLong)),
            }
        }
    }
}
