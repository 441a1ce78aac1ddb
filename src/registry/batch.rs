//! A batch: duplicates inside it, uniqueness against the store, the verdicts, and the batch
//! record — all of it, with the accepted cards, one store write.
//!
//! A batch is stored once under its id (the file's SHA-256 unless the submitter named it). The
//! record keeps the verdict of every row: the lines of the rows (as runs), each rejected row
//! with its reasons, and the reviewers' decisions. Submitting the same batch again finds the
//! record and answers it as stored: the same verdicts, nothing written again. The same id with
//! another file is refused.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::card::region::Region;
use crate::error::{Error, Refusal, Resource, Result};
use crate::state::audit::AuditEvent;
use crate::state::records::{Card, CardStatus, Personal};
use crate::state::store::{Table, Tx};

use super::file::{Encoding, Row};
use super::lifecycle;
use super::reasons::Reason;
use super::rules::RowCheck;
use super::uniqueness::{self, Generations};

/// The audit operation names of the review.
pub const SUBMIT_OPERATION: &str = "submit-applicant-batch";
/// See [`SUBMIT_OPERATION`].
pub const ACCEPT_ROW_OPERATION: &str = "accept-applicant-row";

/// Consecutive row lines: `first`, `first + 1`, … (`count` lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineRun {
    pub first: u64,
    pub count: u64,
}

/// The runs of ascending `lines`.
pub fn line_runs(lines: impl IntoIterator<Item = u64>) -> Vec<LineRun> {
    let mut runs: Vec<LineRun> = Vec::new();
    for line in lines {
        match runs.last_mut() {
            Some(run) if run.first + run.count == line => run.count += 1,
            _ => runs.push(LineRun {
                first: line,
                count: 1,
            }),
        }
    }
    runs
}

/// Every line of `runs`, in order.
pub fn lines_of(runs: &[LineRun]) -> impl Iterator<Item = u64> + '_ {
    runs.iter().flat_map(|r| r.first..r.first + r.count)
}

/// What a waivable rejected row would register, kept for a reviewer's decision. Its personal
/// data is kept as the card's would be (hashed, masked, sealed for the card it would become).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCard {
    pub card_identifier: String,
    pub personal: Personal,
    pub template_id: String,
    /// The card it replaces (batches stored before the `replaces` column: none).
    #[serde(default)]
    pub replaces: Option<String>,
}

impl fmt::Debug for PendingCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingCard")
            .field(
                "card_identifier",
                &crate::service::mask_card_identifier(&self.card_identifier),
            )
            .field("template_id", &self.template_id)
            .finish_non_exhaustive()
    }
}

/// A rejected row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub line: u64,
    /// Reason codes, `;`-joined, in report order.
    pub reasons: String,
    /// The card, when every reason is waivable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingCard>,
}

/// A provincial reviewer's acceptance of a rejected row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub line: u64,
    /// The reviewer's identity URI.
    pub reviewer: String,
    /// The reason codes waived.
    pub waived: String,
    pub note: String,
    pub decided_ms: u64,
}

/// The stored record of a batch (table `applicant_batches`, by id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBatch {
    pub id: String,
    /// SHA-256 of the file as submitted, upper-case hex.
    pub sha256: String,
    /// The submitting registrar's identity URI.
    pub submitter: String,
    /// The submitting city.
    pub region: String,
    /// `utf8` or `gbk`: how the file was read.
    pub encoding: String,
    pub created_ms: u64,
    pub rows: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// The line of every row.
    pub lines: Vec<LineRun>,
    /// The rejected rows, by line.
    pub rejections: Vec<Rejection>,
    pub decisions: Vec<Decision>,
}

impl StoredBatch {
    /// Every row's verdict in line order: its line and reasons (none: accepted).
    pub fn verdicts(&self) -> impl Iterator<Item = (u64, &str)> + '_ {
        let mut rejected = self.rejections.iter().peekable();
        lines_of(&self.lines).map(move |line| match rejected.next_if(|r| r.line == line) {
            Some(r) => (line, r.reasons.as_str()),
            None => (line, ""),
        })
    }
}

/// Marks every row of a group sharing an SSN, a card number, a card identifier or a card
/// replaced (compared in upper case; empty fields are not compared).
pub fn mark_duplicates(rows: &[Row], checks: &mut [RowCheck]) {
    fn key(text: &str) -> Option<Cow<'_, str>> {
        if text.is_empty() {
            None
        } else if text.bytes().any(|b| b.is_ascii_lowercase()) {
            Some(Cow::Owned(text.to_ascii_uppercase()))
        } else {
            Some(Cow::Borrowed(text))
        }
    }
    type Field = fn(&Row) -> &str;
    let fields: [(Field, Reason); 4] = [
        (|r| r.ssn.as_str(), Reason::DuplicateInBatchSsn),
        (
            |r| r.card_number.as_str(),
            Reason::DuplicateInBatchCardNumber,
        ),
        (
            |r| r.card_identifier.as_str(),
            Reason::DuplicateInBatchCardIdentifier,
        ),
        (|r| r.replaces.as_str(), Reason::DuplicateInBatchReplaces),
    ];
    for (field, reason) in fields {
        let mut counts: HashMap<Cow<'_, str>, u32> = HashMap::with_capacity(rows.len());
        for row in rows {
            if let Some(k) = key(field(row)) {
                *counts.entry(k).or_default() += 1;
            }
        }
        for (row, check) in rows.iter().zip(checks.iter_mut()) {
            if key(field(row)).is_some_and(|k| counts.get(&k).is_some_and(|&n| n > 1)) {
                check.reasons.insert(reason);
            }
        }
    }
}

/// A row's personal data as the HSM protected it: the index hashes of its SSN and card number
/// (when valid), and the stored form of the card (when every field of a card parsed).
#[derive(Debug, Clone, Default)]
pub struct Protected {
    pub ssn_index: Option<String>,
    pub card_number_index: Option<String>,
    pub personal: Option<Personal>,
}

/// Adds the store's uniqueness reasons to every row whose fields parsed (`protected`: one per
/// row, in order).
pub fn check_store(
    tx: &Tx<'_>,
    checks: &mut [RowCheck],
    protected: &[Protected],
    generations: &Generations,
) -> Result<()> {
    if protected.len() != checks.len() {
        return Err(Error::StoreCorrupt("protected rows"));
    }
    for (check, protected) in checks.iter_mut().zip(protected) {
        if let Some(id) = &check.id
            && uniqueness::identifier_taken(tx, id.as_str())?
        {
            check.reasons.insert(Reason::DuplicateCardIdentifier);
        }
        if let Some(number) = &protected.card_number_index
            && uniqueness::number_taken(tx, number)?
        {
            check.reasons.insert(Reason::DuplicateCardNumber);
        }
        let (Some(ssn), Some(template)) = (&protected.ssn_index, check.template_id) else {
            continue;
        };
        let Some(generation) = generations.get(template) else {
            continue;
        };
        // The card a replacement names leaves service with it: it is no duplicate.
        let mut replaced = None;
        if let Some(old) = &check.replaces {
            let card = tx.get::<Card>(Table::Cards, old.as_str())?;
            if card.is_some_and(|c| lifecycle::replaceable(&c, ssn, generation, generations)) {
                replaced = Some(old.as_str());
            } else {
                check.reasons.insert(Reason::ReplacesNotReplaceable);
            }
        }
        if let Some(live) = uniqueness::live_card(tx, ssn, generation, generations)?
            && Some(live.as_str()) != replaced
        {
            check.reasons.insert(Reason::DuplicateSsn);
        }
    }
    Ok(())
}

/// A reviewed batch, ready for its store write.
#[derive(Debug)]
pub struct Review {
    pub id: String,
    pub sha256: String,
    pub submitter: String,
    pub city: &'static Region,
    pub encoding: Encoding,
    /// One per row, in line order, with the legality and in-batch reasons.
    pub checks: Vec<RowCheck>,
    /// One per row, in line order: its personal data as the HSM protected it.
    pub protected: Vec<Protected>,
}

/// What a submission wrote (or found).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub batch: StoredBatch,
    /// True when the batch was stored before: nothing was written now.
    pub resubmitted: bool,
}

fn card_of(check: &RowCheck, protected: &Protected, region: &str, now_ms: u64) -> Option<Card> {
    Some(Card {
        card_identifier: check.id.as_ref()?.as_str().to_owned(),
        personal: protected.personal.clone()?,
        region: region.to_owned(),
        template_id: check.template_id?.to_owned(),
        status: CardStatus::Accepted,
        blacklist_reason: None,
        atr: None,
        issued_root_versions: Default::default(),
        releases: 0,
        replaces: check.replaces.as_ref().map(|r| r.as_str().to_owned()),
        created_ms: now_ms,
    })
}

/// The store write of a submission: the batch found (resubmission), or the uniqueness review,
/// the accepted cards, the batch record and its audit record.
pub fn write(tx: &mut Tx<'_>, review: Review, generations: &Generations) -> Result<Outcome> {
    if let Some(batch) = tx.get::<StoredBatch>(Table::ApplicantBatches, &review.id)? {
        if batch.sha256 != review.sha256 {
            return Err(Error::AlreadyExists {
                what: Resource::BatchIdOfAnotherFile,
            });
        }
        if batch.region != review.city.code {
            return Err(Error::PermissionDenied {
                reason: Refusal::BatchOfAnotherCity,
            });
        }
        tx.audit(AuditEvent::ok(
            review.submitter,
            SUBMIT_OPERATION,
            format!(
                "batch {} submitted again: verdicts as stored, nothing written",
                batch.id
            ),
        ));
        return Ok(Outcome {
            batch,
            resubmitted: true,
        });
    }
    let mut checks = review.checks;
    let protected = review.protected;
    check_store(tx, &mut checks, &protected, generations)?;

    let now = tx.now_ms();
    let region = review.city.code;
    let mut cards = Vec::new();
    let mut rejections = Vec::new();
    for (check, protected) in checks.iter().zip(&protected) {
        if check.reasons.is_empty() {
            if let Some(card) = card_of(check, protected, region, now) {
                cards.push(card);
                continue;
            }
            // Every field parsed is implied by no reason; never reached.
            return Err(Error::StoreCorrupt("applicant row"));
        }
        let pending = if check.reasons.waivable() {
            card_of(check, protected, region, now).map(|c| PendingCard {
                card_identifier: c.card_identifier,
                personal: c.personal,
                template_id: c.template_id,
                replaces: c.replaces,
            })
        } else {
            None
        };
        rejections.push(Rejection {
            line: check.line,
            reasons: check.reasons.to_codes(),
            pending,
        });
    }
    let batch = StoredBatch {
        id: review.id,
        sha256: review.sha256,
        submitter: review.submitter.clone(),
        region: region.to_owned(),
        encoding: review.encoding.name().to_owned(),
        created_ms: now,
        rows: checks.len() as u64,
        accepted: cards.len() as u64,
        rejected: rejections.len() as u64,
        lines: line_runs(checks.iter().map(|c| c.line)),
        rejections,
        decisions: Vec::new(),
    };
    // Everything is validated: from here on, only writes.
    for card in &cards {
        let generation = generations
            .get(&card.template_id)
            .ok_or(Error::StoreCorrupt("template generation"))?;
        if let Some(old) = &card.replaces {
            lifecycle::replace(tx, old, &card.personal.ssn_index, generation, generations)?;
        }
        uniqueness::put_card(tx, card, generation)?;
    }
    tx.put(Table::ApplicantBatches, &batch.id, &batch)?;
    tx.audit(AuditEvent::ok(
        review.submitter,
        SUBMIT_OPERATION,
        format!(
            "batch {} of {} (sha256 {}, {}): {} rows, {} accepted, {} rejected",
            batch.id,
            batch.region,
            batch.sha256,
            batch.encoding,
            batch.rows,
            batch.accepted,
            batch.rejected
        ),
    ));
    Ok(Outcome {
        batch,
        resubmitted: false,
    })
}

/// The store write of a provincial reviewer's acceptance of row `line` of batch `id`.
pub fn accept_row(
    tx: &mut Tx<'_>,
    id: &str,
    line: u64,
    reviewer: String,
    note: String,
    generations: &Generations,
) -> Result<StoredBatch> {
    let mut batch: StoredBatch = tx
        .get(Table::ApplicantBatches, id)?
        .ok_or(Error::NotFound {
            what: Resource::ApplicantBatch,
        })?;
    let Some(index) = batch.rejections.iter().position(|r| r.line == line) else {
        return Err(if lines_of(&batch.lines).any(|l| l == line) {
            Error::FailedPrecondition {
                reason: Refusal::RowAcceptedAlready,
            }
        } else {
            Error::NotFound {
                what: Resource::ApplicantRow,
            }
        });
    };
    let rejection = batch.rejections[index].clone();
    let pending = rejection.pending.ok_or(Error::FailedPrecondition {
        reason: Refusal::RowNotWaivable,
    })?;
    let now = tx.now_ms();
    let card = Card {
        card_identifier: pending.card_identifier,
        personal: pending.personal,
        region: batch.region.clone(),
        template_id: pending.template_id,
        status: CardStatus::Accepted,
        blacklist_reason: None,
        atr: None,
        issued_root_versions: Default::default(),
        releases: 0,
        replaces: pending.replaces,
        created_ms: now,
    };
    let generation = generations
        .get(&card.template_id)
        .ok_or(Error::NotFound {
            what: Resource::CardTemplate,
        })?
        .clone();
    // The store may have changed since the batch: uniqueness is never waived (a card replaced
    // leaves service first, in this write, if it still may).
    if let Some(old) = &card.replaces {
        lifecycle::replace(tx, old, &card.personal.ssn_index, &generation, generations)?;
    }
    uniqueness::check_unique(tx, &card, &generation, generations)?;
    batch.rejections.remove(index);
    batch.accepted += 1;
    batch.rejected -= 1;
    batch.decisions.push(Decision {
        line,
        reviewer: reviewer.clone(),
        waived: rejection.reasons.clone(),
        note,
        decided_ms: now,
    });
    uniqueness::put_card(tx, &card, &generation)?;
    tx.put(Table::ApplicantBatches, &batch.id, &batch)?;
    tx.audit(AuditEvent::ok(
        reviewer,
        ACCEPT_ROW_OPERATION,
        format!(
            "batch {} line {line}: card {} accepted by hand, waived {}",
            batch.id,
            crate::service::mask_card_identifier(&card.card_identifier),
            rejection.reasons
        ),
    ));
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::reasons::Reasons;
    use crate::registry::rules::check_row;

    #[test]
    fn runs_of_lines() {
        assert_eq!(
            line_runs([2, 3, 4, 6, 7, 10]),
            [
                LineRun { first: 2, count: 3 },
                LineRun { first: 6, count: 2 },
                LineRun {
                    first: 10,
                    count: 1
                }
            ]
        );
        let runs = line_runs([2, 3, 4, 6, 7, 10]);
        assert_eq!(lines_of(&runs).collect::<Vec<_>>(), [2, 3, 4, 6, 7, 10]);
        assert!(line_runs([]).is_empty());
    }

    #[test]
    fn every_row_of_a_duplicate_group_is_marked() {
        let row = |line: u64, ssn: &str, number: &str, id: &str| Row {
            line,
            ssn: ssn.into(),
            card_number: number.into(),
            card_identifier: id.into(),
            ..Row::default()
        };
        let rows = vec![
            row(2, "11010519491231002X", "A", "ID1"),
            row(3, "11010519491231002x", "B", "ID2"),
            row(4, "440103199001011236", "B", "id3"),
            row(5, "440103199001011237", "C", "ID3"),
            row(6, "", "", ""),
            row(7, "", "", ""),
            row(8, "440524188001010014", "D", "ID4"),
        ];
        let gz = Region::lookup("440100").unwrap();
        let mut checks: Vec<RowCheck> = rows
            .iter()
            .map(|r| {
                let mut c = check_row(r, gz, |_| true);
                c.reasons = Reasons::NONE;
                c
            })
            .collect();
        mark_duplicates(&rows, &mut checks);
        let codes: Vec<String> = checks.iter().map(|c| c.reasons.to_codes()).collect();
        assert_eq!(
            codes,
            [
                "duplicate-in-batch-ssn",
                "duplicate-in-batch-ssn;duplicate-in-batch-card-number",
                "duplicate-in-batch-card-number;duplicate-in-batch-card-identifier",
                "duplicate-in-batch-card-identifier",
                "",
                "",
                ""
            ]
        );
    }

    #[test]
    fn verdicts_merge_lines_and_rejections() {
        let batch = StoredBatch {
            id: "b".into(),
            sha256: "00".into(),
            submitter: "sscard://registrar/440100/GZ-REG-01".into(),
            region: "440100".into(),
            encoding: "utf8".into(),
            created_ms: 0,
            rows: 4,
            accepted: 2,
            rejected: 2,
            lines: line_runs([2, 3, 5, 6]),
            rejections: vec![
                Rejection {
                    line: 3,
                    reasons: "ssn-check".into(),
                    pending: None,
                },
                Rejection {
                    line: 6,
                    reasons: "name-missing".into(),
                    pending: None,
                },
            ],
            decisions: Vec::new(),
        };
        let v: Vec<(u64, &str)> = batch.verdicts().collect();
        assert_eq!(v, [(2, ""), (3, "ssn-check"), (5, ""), (6, "name-missing")]);
    }
}
