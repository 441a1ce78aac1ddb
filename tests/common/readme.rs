//! README's table of reason codes (section "Errors a program can act on"), read as the tests
//! hold it against the service: one row per code, its gRPC status and where it is tested.

/// One row of the table.
#[derive(Debug, Clone)]
pub struct CodeRow {
    /// The reason code, e.g. `CARD_BLACKLISTED`.
    pub code: String,
    /// The gRPC status name, e.g. `FAILED_PRECONDITION`.
    pub status: String,
    /// `mTLS` (provoked over the API in `reason_codes`), `mTLS (remote_hsm)` or `unit`.
    pub tested: String,
}

/// Every row of the table, in README order.
pub fn reason_codes() -> Vec<CodeRow> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Errors a program can act on"))
        .expect("README has the section \"Errors a program can act on\"");
    let rows: Vec<CodeRow> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            CodeRow {
                code: cells[0].trim_matches('`').to_owned(),
                status: cells[1].trim_matches('`').to_owned(),
                tested: cells[cells.len() - 1].to_owned(),
            }
        })
        .collect();
    assert!(rows.len() > 10, "the reason-code table is empty");
    rows
}

/// Where README says `code` is tested.
pub fn tested(code: &str) -> String {
    reason_codes()
        .into_iter()
        .find(|row| row.code == code)
        .unwrap_or_else(|| panic!("{code} is not in README's table"))
        .tested
}

/// The codes README marks tested `where` (`mTLS (ceremonies)`, …), with their gRPC status.
pub fn codes_marked(r#where: &str) -> std::collections::BTreeMap<String, String> {
    reason_codes()
        .into_iter()
        .filter(|row| row.tested == r#where)
        .map(|row| (row.code, row.status))
        .collect()
}
