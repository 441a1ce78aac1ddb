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
#[path = "tests/identifiers.rs"]
mod tests;
