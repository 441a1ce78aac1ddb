//! The reason codes of the review: a fixed, documented vocabulary.
//!
//! A rejected row carries every code that applies, in the order of [`Reason::ALL`]. The codes
//! are what the report (`line,verdict,reasons`), the API and the store show; they never change
//! meaning. New codes may be added at the end.
//!
//! | code | the row … |
//! |---|---|
//! | `ssn-format` | `ssn` is not 17 digits and a digit or `X` (GB 11643-1999) |
//! | `ssn-check` | `ssn`'s check character does not match its first 17 digits |
//! | `ssn-birth-date` | `ssn`'s digits 7–14 are not a real date |
//! | `ssn-region` | `ssn`'s first two digits are not a province-level GB/T 2260 code |
//! | `birth-date-mismatch` | `birth_date` is not a real `YYYYMMDD` date, or differs from the SSN's |
//! | `name-missing` | `name` is empty |
//! | `name-too-long` | `name` takes more than the card's 30 bytes in GBK (GB18030) |
//! | `sex-invalid` | `sex` is not `1` (male), `2` (female) or `9` (unstated) |
//! | `card-number-format` | `card_number` is not 8 of `[0-9A-Z]` and a check character |
//! | `card-number-check` | `card_number`'s check character does not match |
//! | `card-identifier-format` | `card_identifier` is not 32 hex with `D156000005` at 7–16 |
//! | `card-identifier-region` | `card_identifier`'s first 6 digits are not the submitting city |
//! | `region-mismatch` | `region` is not the submitting city's code |
//! | `spec-version-unknown` | `spec_version` maps to no card template this service has |
//! | `duplicate-in-batch-ssn` | another row of the file has the same `ssn` |
//! | `duplicate-in-batch-card-number` | another row of the file has the same `card_number` |
//! | `duplicate-in-batch-card-identifier` | another row of the file has the same `card_identifier` |
//! | `duplicate-ssn` | the person has a live card of this card generation already |
//! | `duplicate-card-number` | the card number is registered already (province-wide) |
//! | `duplicate-card-identifier` | the card identifier is registered already (province-wide) |
//! | `replaces-format` | `replaces` is not a card identifier (32 hex with `D156000005` at 7–16) |
//! | `replaces-not-replaceable` | `replaces` names no card of the submitting city that is this person's of this card generation and personalised, active, suspended or lost |
//! | `duplicate-in-batch-replaces` | another row of the file replaces the same card |
//!
//! A provincial reviewer may accept a rejected row by hand when every reason is
//! [waivable](Reason::waivable): the personal-data reasons (`birth-date-mismatch`,
//! `name-missing`, `name-too-long`, `sex-invalid`), which the reviewer can settle from the
//! applicant's papers. Identifiers, spec version, region and uniqueness are never waived: a card
//! with those faults cannot exist.

use core::fmt;

/// One reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Reason {
    SsnFormat,
    SsnCheck,
    SsnBirthDate,
    SsnRegion,
    BirthDateMismatch,
    NameMissing,
    NameTooLong,
    SexInvalid,
    CardNumberFormat,
    CardNumberCheck,
    CardIdentifierFormat,
    CardIdentifierRegion,
    RegionMismatch,
    SpecVersionUnknown,
    DuplicateInBatchSsn,
    DuplicateInBatchCardNumber,
    DuplicateInBatchCardIdentifier,
    DuplicateSsn,
    DuplicateCardNumber,
    DuplicateCardIdentifier,
    ReplacesFormat,
    ReplacesNotReplaceable,
    DuplicateInBatchReplaces,
}

impl Reason {
    /// Every reason, in report order.
    pub const ALL: [Reason; 23] = [
        Reason::SsnFormat,
        Reason::SsnCheck,
        Reason::SsnBirthDate,
        Reason::SsnRegion,
        Reason::BirthDateMismatch,
        Reason::NameMissing,
        Reason::NameTooLong,
        Reason::SexInvalid,
        Reason::CardNumberFormat,
        Reason::CardNumberCheck,
        Reason::CardIdentifierFormat,
        Reason::CardIdentifierRegion,
        Reason::RegionMismatch,
        Reason::SpecVersionUnknown,
        Reason::DuplicateInBatchSsn,
        Reason::DuplicateInBatchCardNumber,
        Reason::DuplicateInBatchCardIdentifier,
        Reason::DuplicateSsn,
        Reason::DuplicateCardNumber,
        Reason::DuplicateCardIdentifier,
        Reason::ReplacesFormat,
        Reason::ReplacesNotReplaceable,
        Reason::DuplicateInBatchReplaces,
    ];

    /// The code, as the report and the API show it.
    pub const fn code(self) -> &'static str {
        match self {
            Reason::SsnFormat => "ssn-format",
            Reason::SsnCheck => "ssn-check",
            Reason::SsnBirthDate => "ssn-birth-date",
            Reason::SsnRegion => "ssn-region",
            Reason::BirthDateMismatch => "birth-date-mismatch",
            Reason::NameMissing => "name-missing",
            Reason::NameTooLong => "name-too-long",
            Reason::SexInvalid => "sex-invalid",
            Reason::CardNumberFormat => "card-number-format",
            Reason::CardNumberCheck => "card-number-check",
            Reason::CardIdentifierFormat => "card-identifier-format",
            Reason::CardIdentifierRegion => "card-identifier-region",
            Reason::RegionMismatch => "region-mismatch",
            Reason::SpecVersionUnknown => "spec-version-unknown",
            Reason::DuplicateInBatchSsn => "duplicate-in-batch-ssn",
            Reason::DuplicateInBatchCardNumber => "duplicate-in-batch-card-number",
            Reason::DuplicateInBatchCardIdentifier => "duplicate-in-batch-card-identifier",
            Reason::DuplicateSsn => "duplicate-ssn",
            Reason::DuplicateCardNumber => "duplicate-card-number",
            Reason::DuplicateCardIdentifier => "duplicate-card-identifier",
            Reason::ReplacesFormat => "replaces-format",
            Reason::ReplacesNotReplaceable => "replaces-not-replaceable",
            Reason::DuplicateInBatchReplaces => "duplicate-in-batch-replaces",
        }
    }

    /// The reason of `code`, if it is one of the vocabulary.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// May a provincial reviewer accept a row with this reason by hand?
    pub const fn waivable(self) -> bool {
        matches!(
            self,
            Reason::BirthDateMismatch
                | Reason::NameMissing
                | Reason::NameTooLong
                | Reason::SexInvalid
        )
    }

    const fn bit(self) -> u32 {
        1 << self as u32
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A set of reasons; iterates in report order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Reasons(u32);

impl Reasons {
    /// No reason: the row is accepted.
    pub const NONE: Reasons = Reasons(0);

    /// Adds `reason`.
    pub fn insert(&mut self, reason: Reason) {
        self.0 |= reason.bit();
    }

    /// Whether `reason` is in the set.
    pub fn contains(self, reason: Reason) -> bool {
        self.0 & reason.bit() != 0
    }

    /// True when there is no reason (an accepted row).
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// How many reasons.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The reasons in report order.
    pub fn iter(self) -> impl Iterator<Item = Reason> {
        Reason::ALL.into_iter().filter(move |r| self.contains(*r))
    }

    /// A non-empty set whose every reason a reviewer may waive.
    pub fn waivable(self) -> bool {
        !self.is_empty() && self.iter().all(Reason::waivable)
    }

    /// The codes joined by `;` (the report's `reasons` column); empty for no reason.
    pub fn to_codes(self) -> String {
        self.iter().map(Reason::code).collect::<Vec<_>>().join(";")
    }

    /// The set of a `;`-joined list of codes; `None` if one is not of the vocabulary.
    pub fn from_codes(codes: &str) -> Option<Reasons> {
        codes
            .split(';')
            .filter(|c| !c.is_empty())
            .map(Reason::from_code)
            .collect()
    }
}

impl FromIterator<Reason> for Reasons {
    fn from_iter<I: IntoIterator<Item = Reason>>(iter: I) -> Reasons {
        let mut set = Reasons::NONE;
        for r in iter {
            set.insert(r);
        }
        set
    }
}

impl fmt::Display for Reasons {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_codes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vocabulary_is_the_issues() {
        let codes: Vec<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
        for required in [
            "ssn-format",
            "ssn-check",
            "ssn-birth-date",
            "ssn-region",
            "birth-date-mismatch",
            "name-missing",
            "name-too-long",
            "sex-invalid",
            "card-number-format",
            "card-number-check",
            "card-identifier-format",
            "card-identifier-region",
            "spec-version-unknown",
            "duplicate-in-batch-ssn",
            "duplicate-in-batch-card-number",
            "duplicate-in-batch-card-identifier",
            "duplicate-ssn",
            "duplicate-card-number",
            "duplicate-card-identifier",
        ] {
            assert!(codes.contains(&required), "{required}");
        }
        let unique: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), Reason::ALL.len());
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r.code()), Some(r));
        }
        assert!(Reason::ALL.len() <= 32, "a Reasons set is a u32");
    }

    #[test]
    fn sets_keep_report_order_and_round_trip() {
        let set: Reasons = [Reason::DuplicateSsn, Reason::SsnCheck, Reason::SsnCheck]
            .into_iter()
            .collect();
        assert_eq!(set.len(), 2);
        assert_eq!(set.to_codes(), "ssn-check;duplicate-ssn");
        assert_eq!(Reasons::from_codes("ssn-check;duplicate-ssn"), Some(set));
        assert_eq!(Reasons::from_codes(""), Some(Reasons::NONE));
        assert_eq!(Reasons::from_codes("ssn-check;no-such-code"), None);
        assert!(!set.waivable());
        let waivable: Reasons = [Reason::NameTooLong, Reason::BirthDateMismatch]
            .into_iter()
            .collect();
        assert!(waivable.waivable());
        assert!(!Reasons::NONE.waivable());
    }
}
