//! The province's review of applicant data (notice N4): legality and uniqueness of the rows a
//! city registrar submits, before any card key is released.
//!
//! A city submits a file ([`file`](mod@file): CSV, UTF-8 or GB18030/GBK). Each row is checked on its own
//! ([`rules`], on [`crate::card::identifiers`]), against the other rows of the file and against
//! the store ([`batch`], [`uniqueness`]). Each row gets a verdict with **every** reason that
//! applies ([`reasons`]: the fixed vocabulary). The accepted rows become accepted cards and the
//! batch record keeps every verdict, all in one store write with its audit record; the same
//! batch submitted again finds that record and changes nothing. [`report`] writes the verdicts
//! as `line,verdict,reasons`.
//!
//! Acceptance is the province's: the rules, or a provincial reviewer accepting by hand a row
//! whose reasons are all waivable ([`batch::accept_row`]). The submitting city never accepts.
//!
//! ```
//! use sscard_kms::card::region::Region;
//! use sscard_kms::registry::{file, rules};
//!
//! let text = "ssn,name,sex,birth_date,region,card_number,card_identifier,spec_version\n\
//!             440103199001011236,张三,1,19900101,440100,GZ0000012,440100D1560000050050640776EF3192,2.00\n\
//!             440103199001011237,,3,19900101,440300,GZ0000013,440300D1560000050050640776EF3192,2.00\n";
//! let parsed = file::parse(text.as_bytes(), file::Encoding::Detect)?;
//! let guangzhou = Region::lookup("440100")?;
//! let checks: Vec<_> = parsed
//!     .rows
//!     .iter()
//!     .map(|row| rules::check_row(row, guangzhou, |t| t == "ssc-2.0"))
//!     .collect();
//! assert!(checks[0].reasons.is_empty());
//! assert_eq!(
//!     checks[1].reasons.to_codes(),
//!     "ssn-check;name-missing;sex-invalid;card-number-check;card-identifier-region;region-mismatch"
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod batch;
pub mod blacklist;
pub mod file;
pub mod lifecycle;
pub mod personal;
pub mod reasons;
pub mod report;
pub mod rules;
pub mod uniqueness;
