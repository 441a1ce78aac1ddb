//! Legality: the rules one row must pass on its own (notice N4; DOMAIN.md §7).
//!
//! Every rule is checked and every failure recorded ([`Reasons`]). The identifiers are checked
//! by [`crate::card::identifiers`] (the one validator of the crate); this module maps its
//! faults to reason codes and adds what only a review knows: the submitting city, the birth
//! date column, the name's length on the card, the enumerations, the spec version.

use crate::card::identifiers::{
    BirthDate, CardIdentifier, CardNumber, IdentifierFault, SocialSecurityNumber,
};
use crate::card::region::Region;

use super::file::Row;
use super::reasons::{Reason, Reasons};

/// The card's cardholder-name field: 30 bytes of GBK.
pub const NAME_MAX_BYTES: usize = 30;

/// `sex`: GB/T 2261.1 codes 1 male, 2 female, 9 unstated.
pub const SEXES: [&str; 3] = ["1", "2", "9"];

/// Card specification versions as the file gives them, and the template each maps to.
pub const SPEC_VERSIONS: [(&str, &str); 2] = [("2.00", "ssc-2.0"), ("3.00", "ssc-3.0")];

/// The template of a spec version, if it is one of [`SPEC_VERSIONS`].
pub fn template_of(spec_version: &str) -> Option<&'static str> {
    SPEC_VERSIONS
        .iter()
        .find(|(v, _)| *v == spec_version)
        .map(|(_, t)| *t)
}

/// The bytes `name` takes on the card: its GB18030 encoding, which is GBK's for every GBK
/// character (a character outside GBK takes GB18030's four bytes).
pub fn name_bytes(name: &str) -> usize {
    if name.is_ascii() {
        return name.len();
    }
    let (bytes, _, _) = encoding_rs::GB18030.encode(name);
    bytes.len()
}

/// One row after the legality rules: its reasons so far and what of it parsed.
#[derive(Debug, Clone)]
pub struct RowCheck {
    pub line: u64,
    pub reasons: Reasons,
    /// The SSN, when it is valid.
    pub ssn: Option<SocialSecurityNumber>,
    /// The card number, when it is valid.
    pub number: Option<CardNumber>,
    /// The card identifier, when it is valid (its region may still be another city's).
    pub id: Option<CardIdentifier>,
    /// The template, when the spec version maps to one this service has.
    pub template_id: Option<&'static str>,
    /// The card a replacement replaces (`replaces`), when given and a valid identifier.
    pub replaces: Option<CardIdentifier>,
}

/// Checks `row` submitted by `city`; `has_template` says whether a template is loaded.
pub fn check_row(row: &Row, city: &Region, has_template: impl Fn(&str) -> bool) -> RowCheck {
    let mut reasons = Reasons::NONE;

    // Social security number: every fault.
    let ssn_faults = SocialSecurityNumber::faults(&row.ssn);
    for f in &ssn_faults {
        reasons.insert(match f {
            IdentifierFault::CheckCharacter => Reason::SsnCheck,
            IdentifierFault::BirthDate => Reason::SsnBirthDate,
            IdentifierFault::UnknownRegion => Reason::SsnRegion,
            _ => Reason::SsnFormat,
        });
    }
    let ssn = if ssn_faults.is_empty() {
        SocialSecurityNumber::parse_field("ssn", &row.ssn).ok()
    } else {
        None
    };

    // The birth date column: a real date, the SSN's when the SSN's digits can be read.
    let ssn_date = row
        .ssn
        .get(6..14)
        .filter(|d| row.ssn.len() == 18 && d.bytes().all(|b| b.is_ascii_digit()));
    match BirthDate::parse(&row.birth_date) {
        None => reasons.insert(Reason::BirthDateMismatch),
        Some(_) if ssn_date.is_some_and(|d| d != row.birth_date) => {
            reasons.insert(Reason::BirthDateMismatch);
        }
        Some(_) => {}
    }

    // Name and sex.
    if row.name.is_empty() {
        reasons.insert(Reason::NameMissing);
    } else if name_bytes(&row.name) > NAME_MAX_BYTES {
        reasons.insert(Reason::NameTooLong);
    }
    if !SEXES.contains(&row.sex.as_str()) {
        reasons.insert(Reason::SexInvalid);
    }

    // The submitting city.
    if row.region != city.code {
        reasons.insert(Reason::RegionMismatch);
    }

    // Card number.
    let number = match CardNumber::parse_field("card_number", &row.card_number) {
        Ok(n) => Some(n),
        Err(crate::Error::InvalidIdentifier {
            reason: IdentifierFault::CheckCharacter,
            ..
        }) => {
            reasons.insert(Reason::CardNumberCheck);
            None
        }
        Err(_) => {
            reasons.insert(Reason::CardNumberFormat);
            None
        }
    };

    // Card identifier: its form, and its region the submitting city's.
    let id_faults = CardIdentifier::faults(&row.card_identifier);
    if id_faults.iter().any(|f| {
        matches!(
            f,
            IdentifierFault::Length | IdentifierFault::Malformed | IdentifierFault::ProviderPart
        )
    }) {
        reasons.insert(Reason::CardIdentifierFormat);
    }
    let region_part = row
        .card_identifier
        .get(..6)
        .filter(|r| r.bytes().all(|b| b.is_ascii_digit()));
    if id_faults.contains(&IdentifierFault::UnknownRegion)
        || region_part.is_some_and(|r| r != city.code)
    {
        reasons.insert(Reason::CardIdentifierRegion);
    }
    let id = if id_faults.is_empty() {
        CardIdentifier::parse_field("card_identifier", &row.card_identifier).ok()
    } else {
        None
    };

    // Spec version → template.
    let template_id = template_of(&row.spec_version).filter(|t| has_template(t));
    if template_id.is_none() {
        reasons.insert(Reason::SpecVersionUnknown);
    }

    // The card replaced, if any: an identifier (the store decides whether it is replaceable).
    let replaces = if row.replaces.is_empty() {
        None
    } else {
        let parsed = CardIdentifier::parse_field("replaces", &row.replaces).ok();
        match &parsed {
            None => reasons.insert(Reason::ReplacesFormat),
            // A city replaces its own cards only.
            Some(old) if old.region().code != city.code => {
                reasons.insert(Reason::ReplacesNotReplaceable)
            }
            Some(_) => {}
        }
        parsed
    };

    RowCheck {
        line: row.line,
        reasons,
        ssn,
        number,
        id,
        template_id,
        replaces,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card::region::Region;

    fn ssn(first17: &str) -> String {
        format!(
            "{first17}{}",
            SocialSecurityNumber::check_character(first17).unwrap()
        )
    }

    fn card_number(body: &str) -> String {
        format!("{body}{}", CardNumber::check_character(body).unwrap())
    }

    fn good() -> Row {
        Row {
            line: 2,
            ssn: ssn("44010319900101123"),
            name: "陈小明".into(),
            sex: "1".into(),
            birth_date: "19900101".into(),
            region: "440100".into(),
            card_number: card_number("GZ000001"),
            card_identifier: "440100D156000005000000000000A001".into(),
            spec_version: "2.00".into(),
            replaces: String::new(),
        }
    }

    fn check(row: &Row) -> RowCheck {
        let gz = Region::lookup("440100").unwrap();
        check_row(row, gz, |t| t == "ssc-2.0" || t == "ssc-3.0")
    }

    fn codes(row: &Row) -> String {
        check(row).reasons.to_codes()
    }

    #[test]
    fn a_good_row_passes_with_everything_parsed() {
        let c = check(&good());
        assert!(c.reasons.is_empty(), "{}", c.reasons);
        assert!(c.ssn.is_some() && c.number.is_some() && c.id.is_some());
        assert_eq!(c.template_id, Some("ssc-2.0"));
        let mut three = good();
        three.spec_version = "3.00".into();
        assert_eq!(check(&three).template_id, Some("ssc-3.0"));
        // Other provinces' citizens, and a lower-case x, are fine.
        let mut beijing = good();
        beijing.ssn = "11010519491231002x".into();
        beijing.birth_date = "19491231".into();
        assert_eq!(codes(&beijing), "");
    }

    #[test]
    fn each_rule_on_its_own() {
        let mut r = good();
        type Change = fn(&mut Row);
        let cases: Vec<(Change, &str)> = vec![
            (|r| r.ssn = "4401031990010112".into(), "ssn-format"),
            (
                |r| {
                    r.ssn
                        .replace_range(17.., if r.ssn.ends_with('1') { "2" } else { "1" })
                },
                "ssn-check",
            ),
            (
                |r| {
                    r.ssn = ssn("44010319900230123");
                    r.birth_date = "19900230".into()
                },
                "ssn-birth-date;birth-date-mismatch",
            ),
            (|r| r.ssn = ssn("99010319900101123"), "ssn-region"),
            (|r| r.birth_date = "19900102".into(), "birth-date-mismatch"),
            (
                |r| r.birth_date = "1990-01-01".into(),
                "birth-date-mismatch",
            ),
            (|r| r.name = String::new(), "name-missing"),
            // 16 Chinese characters: 32 bytes of GBK. 15 fit exactly.
            (|r| r.name = "欧".repeat(16), "name-too-long"),
            (|r| r.name = "欧".repeat(15), ""),
            (|r| r.name = "A".repeat(31), "name-too-long"),
            (|r| r.sex = "0".into(), "sex-invalid"),
            (|r| r.sex = "M".into(), "sex-invalid"),
            (|r| r.sex = "9".into(), ""),
            (|r| r.region = "440300".into(), "region-mismatch"),
            (|r| r.card_number = "GZ00001".into(), "card-number-format"),
            (|r| r.card_number = "gz0000012".into(), "card-number-format"),
            (
                |r| {
                    let good = r.card_number.clone();
                    let last = if good.ends_with('1') { "2" } else { "1" };
                    r.card_number = format!("{}{last}", &good[..8])
                },
                "card-number-check",
            ),
            (
                |r| r.card_identifier = "440100D15600000500000000000A001".into(),
                "card-identifier-format",
            ),
            (
                |r| r.card_identifier = "440100D156000006000000000000A001".into(),
                "card-identifier-format",
            ),
            (
                |r| r.card_identifier = "440300D156000005000000000000A001".into(),
                "card-identifier-region",
            ),
            (
                |r| r.card_identifier = "441000D156000005000000000000A001".into(),
                "card-identifier-region",
            ),
            (|r| r.spec_version = "1.00".into(), "spec-version-unknown"),
            (|r| r.spec_version = "2.0".into(), "spec-version-unknown"),
        ];
        for (i, (change, expected)) in cases.iter().enumerate() {
            r.clone_from(&good());
            change(&mut r);
            assert_eq!(codes(&r), *expected, "case {i}");
        }
        // A spec version whose template is not loaded here is unknown too.
        let gz = Region::lookup("440100").unwrap();
        let only_two = check_row(
            &{
                let mut r = good();
                r.spec_version = "3.00".into();
                r
            },
            gz,
            |t| t == "ssc-2.0",
        );
        assert_eq!(only_two.reasons.to_codes(), "spec-version-unknown");
    }

    #[test]
    fn every_reason_of_a_bad_row_not_only_the_first() {
        let row = Row {
            line: 9,
            ssn: {
                let mut s = ssn("99010319900230123");
                s.replace_range(17.., if s.ends_with('1') { "2" } else { "1" });
                s
            },
            name: String::new(),
            sex: "3".into(),
            birth_date: "19900231".into(),
            region: "440300".into(),
            card_number: "GZ0000011".into(),
            card_identifier: "440300D156000006000000000000A001".into(),
            spec_version: "9.99".into(),
            replaces: "440100D15600000500000000000000".into(),
        };
        let c = check(&row);
        assert_eq!(
            c.reasons.to_codes(),
            "ssn-check;ssn-birth-date;ssn-region;birth-date-mismatch;name-missing;sex-invalid;\
             card-number-check;card-identifier-format;card-identifier-region;region-mismatch;\
             spec-version-unknown;replaces-format"
        );
        assert!(c.ssn.is_none() && c.number.is_none() && c.id.is_none() && c.template_id.is_none());
    }

    #[test]
    fn a_city_replaces_its_own_cards_only() {
        let mut row = good();
        row.replaces = "440100D156000005000000000000A000".into();
        let c = check(&row);
        assert!(c.reasons.is_empty());
        assert_eq!(c.replaces.unwrap().as_str(), row.replaces);
        row.replaces = "440300D156000005000000000000A000".into();
        assert_eq!(check(&row).reasons.to_codes(), "replaces-not-replaceable");
    }

    #[test]
    fn names_count_gbk_bytes() {
        assert_eq!(name_bytes("ZHANG SAN"), 9);
        assert_eq!(name_bytes("张三"), 4);
        assert_eq!(name_bytes("买买提·艾力"), 12); // six characters, the middle dot too: 2 bytes each
        // 𠀀 (U+20000) is outside GBK: GB18030's 4 bytes.
        assert_eq!(name_bytes("𠀀"), 4);
    }
}
