//! The review report: one CSV line per row, `line,verdict,reasons`.
//!
//! `line` is the row's line in the submitted file (the header is line 1), `verdict` is
//! `accepted` or `rejected`, `reasons` the `;`-joined [reason codes](super::reasons) of a
//! rejected row (empty for an accepted one). Rows in line order; UTF-8, `\n` line ends.

use std::io::Write;

use crate::error::{Error, Refusal, Result};

/// The header line's columns.
pub const HEADER: [&str; 3] = ["line", "verdict", "reasons"];

/// Writes the report of `verdicts` (each row's line and `;`-joined reason codes, empty when
/// accepted) to `out`.
pub fn write_csv<'a, W: Write>(
    out: W,
    verdicts: impl IntoIterator<Item = (u64, &'a str)>,
) -> Result<()> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(out);
    let failed = |_| Error::InvalidArgument {
        field: "report",
        reason: Refusal::ReportUnwritable,
    };
    writer.write_record(HEADER).map_err(failed)?;
    let mut line_text = String::new();
    for (line, reasons) in verdicts {
        line_text.clear();
        line_text.push_str(&line.to_string());
        let verdict = if reasons.is_empty() {
            "accepted"
        } else {
            "rejected"
        };
        writer
            .write_record([line_text.as_str(), verdict, reasons])
            .map_err(failed)?;
    }
    writer.flush().map_err(|_| Error::InvalidArgument {
        field: "report",
        reason: Refusal::ReportUnwritable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_format() {
        let mut out = Vec::new();
        write_csv(&mut out, [(2, ""), (3, "ssn-check;duplicate-ssn"), (5, "")]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "line,verdict,reasons\n2,accepted,\n3,rejected,ssn-check;duplicate-ssn\n5,accepted,\n"
        );
    }
}
