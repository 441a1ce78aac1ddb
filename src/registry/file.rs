//! Reading an applicant file: its encoding, its CSV, its header.
//!
//! The format (README "Applicant files"): CSV (RFC 4180 quoting, `,` separated), the first line
//! a header naming the columns `ssn`, `name`, `sex`, `birth_date`, `region`, `card_number`,
//! `card_identifier`, `spec_version` in any order (ASCII case and surrounding blanks ignored),
//! each exactly once, and optionally `replaces` (the card identifier of the card a replacement
//! replaces; empty for a first card), no other column; then one row per applicant with as many fields as the
//! header. Fields are trimmed of surrounding white space. Empty lines are skipped. Text is
//! UTF-8, with or without a byte-order mark, or GB18030 (which includes GBK), named by the
//! submitter or detected: a UTF-8 BOM or valid UTF-8 is UTF-8, anything else is tried as
//! GB18030.
//!
//! A file that cannot be read this way is refused whole with a [`FileFault`] naming the line
//! (the header is line 1): nothing of it is reviewed or stored. Decoding is `encoding_rs`'s,
//! CSV is the `csv` crate's.

use core::fmt;
use std::borrow::Cow;

/// At most this many bytes per file (256 MiB).
pub const MAX_FILE_BYTES: usize = 256 * 1024 * 1024;
/// At most this many rows per file.
pub const MAX_ROWS: usize = 2_000_000;

/// The columns, in the order [`Row`] keeps them.
pub const COLUMNS: [&str; 8] = [
    "ssn",
    "name",
    "sex",
    "birth_date",
    "region",
    "card_number",
    "card_identifier",
    "spec_version",
];

/// The columns a file may have besides [`COLUMNS`] (empty when absent).
pub const OPTIONAL_COLUMNS: [&str; 1] = ["replaces"];

/// The text encoding of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// Detect: a UTF-8 BOM or valid UTF-8 is UTF-8; anything else GB18030.
    #[default]
    Detect,
    /// UTF-8, with or without a byte-order mark.
    Utf8,
    /// GB18030, a superset of GBK (and of GB2312).
    Gb18030,
}

impl Encoding {
    /// The name shown to users: `detect`, `utf8` or `gbk`.
    pub const fn name(self) -> &'static str {
        match self {
            Encoding::Detect => "detect",
            Encoding::Utf8 => "utf8",
            Encoding::Gb18030 => "gbk",
        }
    }
}

impl core::str::FromStr for Encoding {
    type Err = crate::Error;
    /// `utf8`/`utf-8`, `gbk`/`gb18030`/`gb2312`, or `detect` (any ASCII case).
    fn from_str(s: &str) -> crate::Result<Encoding> {
        match s.to_ascii_lowercase().as_str() {
            "detect" | "auto" => Ok(Encoding::Detect),
            "utf8" | "utf-8" => Ok(Encoding::Utf8),
            "gbk" | "gb18030" | "gb2312" => Ok(Encoding::Gb18030),
            _ => Err(crate::Error::InvalidArgument {
                field: "encoding",
                reason: crate::error::Refusal::EncodingName,
            }),
        }
    }
}

/// Why a file was refused whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FileFaultKind {
    /// No header line.
    #[error("empty file: the first line must be the header")]
    Empty,
    /// A header and no row.
    #[error("no applicant row after the header")]
    NoRows,
    /// Not UTF-8 (the submitter said it is).
    #[error("not valid UTF-8")]
    NotUtf8,
    /// Not GB18030/GBK (the submitter said it is).
    #[error("not valid GB18030/GBK")]
    NotGb18030,
    /// Detection failed: neither encoding reads the file.
    #[error("neither valid UTF-8 nor valid GB18030/GBK")]
    UnknownEncoding,
    /// A required column is not in the header.
    #[error("the header has no column {0:?}")]
    MissingColumn(&'static str),
    /// A header column that is not one of [`COLUMNS`] (its name, at most 32 characters).
    #[error("unknown column {0:?} in the header")]
    UnknownColumn(String),
    /// A column named twice.
    #[error("column {0:?} appears twice in the header")]
    DuplicateColumn(&'static str),
    /// A row whose number of fields is not the header's.
    #[error("{found} fields where the header has {expected}")]
    FieldCount { found: usize, expected: usize },
    /// More than [`MAX_ROWS`] rows.
    #[error("more than 2,000,000 rows")]
    TooManyRows,
    /// The CSV reader refused the text.
    #[error("not readable as CSV")]
    Csv,
}

/// A file refused whole: the line (header = 1) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct FileFault {
    pub line: u64,
    pub kind: FileFaultKind,
}

fn fault(line: u64, kind: FileFaultKind) -> FileFault {
    FileFault { line, kind }
}

/// One applicant row, its fields trimmed and not yet checked.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Row {
    /// The line the row starts on (the header is line 1).
    pub line: u64,
    pub ssn: String,
    pub name: String,
    pub sex: String,
    pub birth_date: String,
    pub region: String,
    pub card_number: String,
    pub card_identifier: String,
    pub spec_version: String,
    /// The card this row's card replaces (`replaces` column), or empty.
    pub replaces: String,
}

/// Personal data: `Debug` shows the line and the card identifier only.
impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Row")
            .field("line", &self.line)
            .field(
                "card_identifier",
                &crate::service::mask_card_identifier(&self.card_identifier),
            )
            .finish_non_exhaustive()
    }
}

/// A file read: the encoding it was read in and its rows.
#[derive(Debug, Clone)]
pub struct ApplicantFile {
    /// [`Encoding::Utf8`] or [`Encoding::Gb18030`].
    pub encoding: Encoding,
    pub rows: Vec<Row>,
}

/// Decodes and parses `bytes`.
pub fn parse(bytes: &[u8], encoding: Encoding) -> Result<ApplicantFile, FileFault> {
    let (text, encoding) = decode(bytes, encoding)?;
    let rows = parse_text(&text)?;
    Ok(ApplicantFile { encoding, rows })
}

/// The line of byte `offset` of `bytes` (1-based).
fn line_of(bytes: &[u8], offset: usize) -> u64 {
    let end = offset.min(bytes.len());
    1 + bytes[..end].iter().filter(|&&b| b == b'\n').count() as u64
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The text of `bytes` and the encoding it was read in.
pub fn decode(bytes: &[u8], encoding: Encoding) -> Result<(Cow<'_, str>, Encoding), FileFault> {
    match encoding {
        Encoding::Utf8 => decode_utf8(bytes).map(|t| (t, Encoding::Utf8)),
        Encoding::Gb18030 => decode_gb18030(bytes).map(|t| (t, Encoding::Gb18030)),
        Encoding::Detect => {
            if bytes.starts_with(UTF8_BOM) {
                return decode_utf8(bytes).map(|t| (t, Encoding::Utf8));
            }
            match decode_utf8(bytes) {
                Ok(t) => Ok((t, Encoding::Utf8)),
                Err(utf8) => match decode_gb18030(bytes) {
                    Ok(t) => Ok((t, Encoding::Gb18030)),
                    // The later of the two failures is the likelier place of the damage.
                    Err(gb) => Err(fault(
                        utf8.line.max(gb.line),
                        FileFaultKind::UnknownEncoding,
                    )),
                },
            }
        }
    }
}

fn decode_utf8(bytes: &[u8]) -> Result<Cow<'_, str>, FileFault> {
    let body = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    match core::str::from_utf8(body) {
        Ok(text) => Ok(Cow::Borrowed(text)),
        Err(e) => {
            let offset = e.valid_up_to() + (bytes.len() - body.len());
            Err(fault(line_of(bytes, offset), FileFaultKind::NotUtf8))
        }
    }
}

fn decode_gb18030(bytes: &[u8]) -> Result<Cow<'_, str>, FileFault> {
    let mut decoder = encoding_rs::GB18030.new_decoder_without_bom_handling();
    let capacity = decoder
        .max_utf8_buffer_length_without_replacement(bytes.len())
        .unwrap_or(usize::MAX);
    let mut text = String::new();
    if text.try_reserve(capacity).is_err() {
        return Err(fault(1, FileFaultKind::NotGb18030));
    }
    let (result, read) = decoder.decode_to_string_without_replacement(bytes, &mut text, true);
    match result {
        encoding_rs::DecoderResult::InputEmpty => Ok(Cow::Owned(text)),
        encoding_rs::DecoderResult::Malformed(..) | encoding_rs::DecoderResult::OutputFull => {
            // `read` is just past the malformed sequence.
            Err(fault(
                line_of(bytes, read.saturating_sub(1)),
                FileFaultKind::NotGb18030,
            ))
        }
    }
}

/// Parses decoded text: the header, then the rows.
pub fn parse_text(text: &str) -> Result<Vec<Row>, FileFault> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut record = csv::StringRecord::new();
    // The reader's position of a record is where it started reading it, before the empty
    // lines it skipped: the record's own line is counted from its byte offset.
    let bytes = text.as_bytes();
    let mut cursor = (0usize, 1u64);
    let mut line_now = |r: &csv::StringRecord, fallback: u64| {
        let Some(start) = r.position().map(|p| p.byte() as usize) else {
            return fallback;
        };
        let start = start.min(bytes.len());
        let (from, mut line) = cursor;
        if start >= from {
            line += bytes[from..start].iter().filter(|&&b| b == b'\n').count() as u64;
        }
        cursor = (start, line);
        let mut i = start;
        while i < bytes.len() && matches!(bytes[i], b'\r' | b'\n') {
            line += u64::from(bytes[i] == b'\n');
            i += 1;
        }
        line
    };
    match reader.read_record(&mut record) {
        Ok(true) => {}
        Ok(false) => return Err(fault(1, FileFaultKind::Empty)),
        Err(e) => return Err(csv_fault(&e, 1)),
    }
    let header_line = line_now(&record, 1);
    let index = header_index(&record).map_err(|kind| fault(header_line, kind))?;
    let expected = record.len();
    let mut rows = Vec::new();
    let mut last_line = header_line;
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_fault(&e, last_line + 1)),
        }
        let line = line_now(&record, last_line + 1);
        last_line = line;
        if record.len() != expected {
            return Err(fault(
                line,
                FileFaultKind::FieldCount {
                    found: record.len(),
                    expected,
                },
            ));
        }
        if rows.len() == MAX_ROWS {
            return Err(fault(line, FileFaultKind::TooManyRows));
        }
        // An absent optional column's index is out of range: its field is empty.
        let field = |c: usize| record.get(index[c]).unwrap_or_default().to_owned();
        rows.push(Row {
            line,
            ssn: field(0),
            name: field(1),
            sex: field(2),
            birth_date: field(3),
            region: field(4),
            card_number: field(5),
            card_identifier: field(6),
            spec_version: field(7),
            replaces: field(8),
        });
    }
    if rows.is_empty() {
        return Err(fault(header_line + 1, FileFaultKind::NoRows));
    }
    Ok(rows)
}

fn csv_fault(e: &csv::Error, fallback: u64) -> FileFault {
    fault(
        e.position().map_or(fallback, csv::Position::line),
        FileFaultKind::Csv,
    )
}

/// For each of [`COLUMNS`] then [`OPTIONAL_COLUMNS`], its field index in the header
/// (`usize::MAX` for an optional column the header lacks).
fn header_index(header: &csv::StringRecord) -> Result<[usize; 9], FileFaultKind> {
    let names = |c: usize| {
        COLUMNS
            .get(c)
            .or_else(|| OPTIONAL_COLUMNS.get(c - COLUMNS.len()))
            .copied()
            .unwrap_or_default()
    };
    let mut index = [usize::MAX; 9];
    for (i, name) in header.iter().enumerate() {
        let name = if i == 0 {
            // A BOM the decoder kept (GB18030 text never has one; a UTF-8 file read as such
            // loses it): tolerate it on the first name.
            name.trim_start_matches('\u{feff}')
        } else {
            name
        };
        let Some(c) = (0..index.len()).find(|&c| names(c).eq_ignore_ascii_case(name)) else {
            return Err(FileFaultKind::UnknownColumn(
                name.chars().take(32).collect(),
            ));
        };
        if index[c] != usize::MAX {
            return Err(FileFaultKind::DuplicateColumn(names(c)));
        }
        index[c] = i;
    }
    for (c, i) in index.iter().enumerate().take(COLUMNS.len()) {
        if *i == usize::MAX {
            return Err(FileFaultKind::MissingColumn(COLUMNS[c]));
        }
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        "ssn,name,sex,birth_date,region,card_number,card_identifier,spec_version\n";

    fn gbk(text: &str) -> Vec<u8> {
        let (bytes, _, unmappable) = encoding_rs::GB18030.encode(text);
        assert!(!unmappable);
        bytes.into_owned()
    }

    #[test]
    fn columns_by_name_in_any_order() {
        let text = "Card_Identifier , spec_version,ssn,name,sex,birth_date,region,card_number\n\
                    440100D1560000050050640776EF3192,2.00, 440103199001011236 ,张三,1,19900101,440100,GZ0000012\n";
        let file = parse(text.as_bytes(), Encoding::Detect).unwrap();
        assert_eq!(file.encoding, Encoding::Utf8);
        let row = &file.rows[0];
        assert_eq!(row.line, 2);
        assert_eq!(row.ssn, "440103199001011236");
        assert_eq!(row.name, "张三");
        assert_eq!(row.card_identifier, "440100D1560000050050640776EF3192");
        assert_eq!(row.spec_version, "2.00");
        assert_eq!(row.card_number, "GZ0000012");
        assert!(!format!("{row:?}").contains("440103199001011236"));
    }

    #[test]
    fn encodings_utf8_bom_gbk_detected_and_named() {
        let text = format!(
            "{HEADER}440103199001011236,李四,2,19900101,440100,GZ0000012,440100D1560000050050640776EF3192,2.00\n"
        );
        let mut bom = UTF8_BOM.to_vec();
        bom.extend_from_slice(text.as_bytes());
        let file = parse(&bom, Encoding::Detect).unwrap();
        assert_eq!(
            (file.encoding, file.rows[0].name.as_str()),
            (Encoding::Utf8, "李四")
        );
        let file = parse(&bom, Encoding::Utf8).unwrap();
        assert_eq!(file.rows[0].ssn, "440103199001011236");

        let bytes = gbk(&text);
        assert!(core::str::from_utf8(&bytes).is_err());
        let file = parse(&bytes, Encoding::Detect).unwrap();
        assert_eq!(
            (file.encoding, file.rows[0].name.as_str()),
            (Encoding::Gb18030, "李四")
        );
        let file = parse(&bytes, Encoding::Gb18030).unwrap();
        assert_eq!(file.rows[0].name, "李四");
        // Named wrongly: GBK bytes as UTF-8 fail on the row's line.
        assert_eq!(
            parse(&bytes, Encoding::Utf8).unwrap_err(),
            fault(2, FileFaultKind::NotUtf8)
        );
    }

    #[test]
    fn bad_bytes_name_their_line() {
        let mut bytes = HEADER.as_bytes().to_vec();
        bytes.extend_from_slice(b"440103199001011236,A,1,19900101,440100,GZ0000012,440100D1560000050050640776EF3192,2.00\n");
        bytes.extend_from_slice(b"440103199001011236,\xFF\xFF,1,19900101,440100,GZ0000012,440100D1560000050050640776EF3192,2.00\n");
        assert_eq!(
            parse(&bytes, Encoding::Utf8).unwrap_err(),
            fault(3, FileFaultKind::NotUtf8)
        );
        assert_eq!(
            parse(&bytes, Encoding::Gb18030).unwrap_err(),
            fault(3, FileFaultKind::NotGb18030)
        );
        assert_eq!(
            parse(&bytes, Encoding::Detect).unwrap_err(),
            fault(3, FileFaultKind::UnknownEncoding)
        );
    }

    #[test]
    fn header_faults() {
        let cases = [
            ("", fault(1, FileFaultKind::Empty)),
            (
                "ssn,name,sex,birth_date,region,card_number,card_identifier\n1,2,3,4,5,6,7\n",
                fault(1, FileFaultKind::MissingColumn("spec_version")),
            ),
            (
                "ssn,name,sex,birth_date,region,card_number,card_identifier,spec_version,ssn\n",
                fault(1, FileFaultKind::DuplicateColumn("ssn")),
            ),
            (
                "ssn,name,sex,birth_date,region,card_number,card_identifier,spec_version,phone\n",
                fault(1, FileFaultKind::UnknownColumn("phone".into())),
            ),
            (HEADER, fault(2, FileFaultKind::NoRows)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_text(text).unwrap_err(), expected, "{text:?}");
        }
    }

    #[test]
    fn rows_keep_their_file_lines() {
        let text =
            format!("{HEADER}\n1,a,1,2,3,4,5,6\n\n\"7\n8\",b,1,2,3,4,5,6\n9,c,1,2,3,4,5,6\n");
        let rows = parse_text(&text).unwrap();
        let lines: Vec<u64> = rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, [3, 5, 7]);
        assert_eq!(rows[1].ssn, "7\n8");
        let short = format!("{HEADER}1,a,1,2,3,4,5,6\n1,a,1,2,3,4,5\n");
        assert_eq!(
            parse_text(&short).unwrap_err(),
            fault(
                3,
                FileFaultKind::FieldCount {
                    found: 7,
                    expected: 8
                }
            )
        );
        assert_eq!(
            parse_text(&short).unwrap_err().to_string(),
            "line 3: 7 fields where the header has 8"
        );
    }

    mod props {
        use proptest::prelude::*;

        use super::super::*;
        use super::HEADER;

        /// Every fault and every row names a line of the file (0 only for the file as a whole).
        fn check(
            text_lines: usize,
            parsed: Result<ApplicantFile, FileFault>,
        ) -> Result<(), TestCaseError> {
            let last = u64::try_from(text_lines).unwrap() + 1;
            match parsed {
                Ok(file) => {
                    for row in &file.rows {
                        prop_assert!((2..=last).contains(&row.line), "row at line {}", row.line);
                    }
                }
                Err(fault) => prop_assert!(fault.line <= last, "fault at line {}", fault.line),
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn arbitrary_bytes_are_a_file_or_a_fault_never_a_panic(
                bytes in proptest::collection::vec(any::<u8>(), 0..600),
                encoding in 0u8..3,
            ) {
                let encoding = [Encoding::Detect, Encoding::Utf8, Encoding::Gb18030][usize::from(encoding)];
                let lines = bytes.split(|b| *b == b'\n').count();
                check(lines, parse(&bytes, encoding))?;
            }

            #[test]
            fn a_header_and_arbitrary_rows_are_rows_or_a_fault_at_a_line(
                rows in proptest::collection::vec("[0-9A-Za-z,\"张三 ]{0,90}", 0..12),
            ) {
                let text = format!("{HEADER}{}", rows.join("\n"));
                check(text.lines().count(), parse(text.as_bytes(), Encoding::Utf8))?;
            }
        }
    }
}
