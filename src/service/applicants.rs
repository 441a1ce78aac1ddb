//! The registry review (notice N4), as registrars call it: a city submits an applicant file,
//! the province's rules decide each row, a provincial reviewer may accept a waivable row by
//! hand. The review itself is [`crate::registry`]; this file authorises, reads the upload and
//! runs the one store write.

use std::sync::Arc;

use hsm_api::Hsm;
use sha2::Digest;

use crate::access::authz::{self, Operation};
use crate::access::identity::Identity;
use crate::card::region::Region;
use crate::error::{Error, Refusal, Resource, Result};
use crate::registry::batch::{self, Outcome, Protected, Review, StoredBatch};
use crate::registry::file::{self, Encoding};
use crate::registry::personal::{self, ClearPersonal};
use crate::registry::rules;
use crate::registry::uniqueness::Generations;
use crate::state::store::Table;

use super::Kms;
use super::personal::RegistryKeys;

/// Longest batch id a submitter may choose.
pub const MAX_BATCH_ID_LEN: usize = 64;
/// Longest reviewer's note kept (characters).
pub const MAX_NOTE_CHARS: usize = 200;

/// An applicant file being received, after its submitter was authorised. Bytes beyond
/// [`file::MAX_FILE_BYTES`] are not kept: the submission is then refused.
pub struct BatchUpload {
    caller: Identity,
    city: &'static Region,
    batch_id: Option<String>,
    encoding: Encoding,
    bytes: Vec<u8>,
    sha256: sha2::Sha256,
    fault: Option<Error>,
}

impl std::fmt::Debug for BatchUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchUpload")
            .field("caller", &self.caller.to_string())
            .field("bytes", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

impl BatchUpload {
    /// The submitter's options (from the first message): a batch id (empty: the file's
    /// SHA-256) and the file's encoding.
    pub fn set_options(&mut self, batch_id: &str, encoding: Encoding) {
        self.batch_id = (!batch_id.is_empty()).then(|| batch_id.to_owned());
        self.encoding = encoding;
    }

    /// Appends the next piece of the file.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.fault.is_some() {
            return;
        }
        if self.bytes.len() + chunk.len() > file::MAX_FILE_BYTES {
            self.bytes = Vec::new();
            self.fault = Some(Error::InvalidArgument {
                field: "data",
                reason: Refusal::FileTooLarge,
            });
            return;
        }
        self.sha256.update(chunk);
        self.bytes.extend_from_slice(chunk);
    }

    /// Whether the upload is refused already (too large): the sender may stop.
    pub fn is_refused(&self) -> bool {
        self.fault.is_some()
    }

    /// The transfer broke before the end of the file: nothing will be reviewed.
    pub fn interrupted(&mut self) {
        self.bytes = Vec::new();
        self.fault.get_or_insert(Error::InvalidArgument {
            field: "data",
            reason: Refusal::UploadInterrupted,
        });
    }
}

fn check_batch_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_BATCH_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            field: "batch_id",
            reason: Refusal::BatchIdMalformed,
        })
    }
}

impl<H: Hsm> Kms<H> {
    /// Template id → card generation of every template loaded.
    pub(super) fn generations(&self) -> Result<Generations> {
        Ok(self
            .templates
            .read()
            .map_err(|_| Error::Store)?
            .iter()
            .map(|(id, t)| (id.clone(), t.generation().to_owned()))
            .collect())
    }

    /// Starts receiving an applicant file from `caller`, a city registrar (the refusal is
    /// audited). Nothing is read before this.
    pub async fn begin_applicant_batch(&self, caller: &Identity) -> Result<BatchUpload> {
        self.audited(
            caller,
            Operation::SubmitApplicantBatch,
            "applicant batch",
            async {
                authz::authorize(caller, Operation::SubmitApplicantBatch)?;
                let city = authz::authorize_city(caller)?;
                Ok(BatchUpload {
                    caller: caller.clone(),
                    city,
                    batch_id: None,
                    encoding: Encoding::Detect,
                    bytes: Vec::new(),
                    sha256: sha2::Sha256::new(),
                    fault: None,
                })
            },
        )
        .await
    }

    /// Reviews a received file and stores the verdicts and the accepted cards in one write;
    /// a batch stored before is answered as stored. A file that cannot be read is refused
    /// ([`Error::ApplicantFile`], with its line) and nothing is stored.
    pub async fn submit_applicant_batch(&self, upload: BatchUpload) -> Result<Outcome> {
        let caller = upload.caller.clone();
        let subject = match &upload.batch_id {
            Some(id) => format!(
                "applicant batch {}",
                id.chars().take(64).collect::<String>()
            ),
            None => "applicant batch".to_owned(),
        };
        self.audited(&caller, Operation::SubmitApplicantBatch, &subject, async {
            if let Some(fault) = upload.fault {
                return Err(fault);
            }
            if let Some(id) = &upload.batch_id {
                check_batch_id(id)?;
            }
            let generations = Arc::new(self.generations()?);
            let known = Arc::clone(&generations);
            let BatchUpload {
                city,
                batch_id,
                encoding,
                bytes,
                sha256,
                ..
            } = upload;
            let submitter = caller.to_string();
            let keys = self.registry_keys().await?;
            // Decoding, parsing and the rules of each row: CPU work, off the async threads.
            let (mut review, clear) =
                tokio::task::spawn_blocking(move || -> Result<(Review, Vec<RowClear>)> {
                    let sha256 = hex::encode_upper(sha256.finalize());
                    let parsed = file::parse(&bytes, encoding)?;
                    drop(bytes);
                    let mut checks: Vec<_> = parsed
                        .rows
                        .iter()
                        .map(|row| rules::check_row(row, city, |t| known.contains_key(t)))
                        .collect();
                    batch::mark_duplicates(&parsed.rows, &mut checks);
                    let clear = parsed
                        .rows
                        .iter()
                        .zip(&checks)
                        .map(|(row, check)| RowClear::of(row, check))
                        .collect();
                    Ok((
                        Review {
                            id: batch_id.unwrap_or_else(|| sha256.clone()),
                            sha256,
                            submitter,
                            city,
                            encoding: parsed.encoding,
                            checks,
                            protected: Vec::new(),
                        },
                        clear,
                    ))
                })
                .await
                .map_err(|_| Error::Store)??;
            review.protected = self.protect_rows(&keys, clear).await?;
            self.store
                .write(move |tx| batch::write(tx, review, &generations))
                .await
        })
        .await
    }

    /// A provincial reviewer accepts row `line` of batch `batch_id` by hand: a row the rules
    /// rejected for waivable reasons only, still unique now.
    pub async fn accept_applicant_row(
        &self,
        caller: &Identity,
        batch_id: &str,
        line: u64,
        note: &str,
    ) -> Result<StoredBatch> {
        let subject = format!(
            "applicant batch {} line {line}",
            batch_id.chars().take(64).collect::<String>()
        );
        self.audited(caller, Operation::AcceptApplicantRow, &subject, async {
            authz::authorize(caller, Operation::AcceptApplicantRow)?;
            authz::authorize_province(caller)?;
            check_batch_id(batch_id)?;
            self.registry_keys().await?;
            let generations = self.generations()?;
            let id = batch_id.to_owned();
            let reviewer = caller.to_string();
            let note = note.chars().take(MAX_NOTE_CHARS).collect::<String>();
            self.store
                .write(move |tx| batch::accept_row(tx, &id, line, reviewer, note, &generations))
                .await
        })
        .await
    }

    /// A batch's record: for the city that submitted it, or the province.
    pub async fn get_applicant_batch(
        &self,
        caller: &Identity,
        batch_id: &str,
    ) -> Result<StoredBatch> {
        let subject = format!(
            "applicant batch {}",
            batch_id.chars().take(64).collect::<String>()
        );
        self.audited(caller, Operation::GetApplicantBatch, &subject, async {
            authz::authorize(caller, Operation::GetApplicantBatch)?;
            check_batch_id(batch_id)?;
            self.registry_keys().await?;
            let batch: StoredBatch = self
                .store
                .snapshot()?
                .get(Table::ApplicantBatches, batch_id)?
                .ok_or(Error::NotFound {
                    what: Resource::ApplicantBatch,
                })?;
            authz::authorize_region(caller, &batch.region)?;
            Ok(batch)
        })
        .await
    }
}

/// A row's valid personal fields, clear, on their way to the HSM. `Debug` shows nothing.
struct RowClear {
    ssn: Option<String>,
    card_number: Option<String>,
    /// The whole card, when every field of one parsed.
    card: Option<ClearPersonal>,
}

impl RowClear {
    fn of(row: &file::Row, check: &rules::RowCheck) -> RowClear {
        let ssn = check.ssn.as_ref().map(|s| s.as_str().to_owned());
        let card_number = check.number.as_ref().map(|n| n.as_str().to_owned());
        let card = match (&check.id, &ssn, &card_number) {
            (Some(id), Some(ssn), Some(number)) => Some(ClearPersonal {
                card_identifier: id.as_str().to_owned(),
                ssn: ssn.clone(),
                card_number: number.clone(),
                name: Some(row.name.clone()),
            }),
            _ => None,
        };
        RowClear {
            ssn,
            card_number,
            card,
        }
    }
}

impl std::fmt::Debug for RowClear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowClear").finish_non_exhaustive()
    }
}

impl<H: Hsm> Kms<H> {
    /// The index hashes and sealed cards of a batch's rows, in a few HSM calls.
    async fn protect_rows(
        &self,
        keys: &RegistryKeys,
        rows: Vec<RowClear>,
    ) -> Result<Vec<Protected>> {
        let ssn_rows: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].ssn.is_some()).collect();
        let number_rows: Vec<usize> = (0..rows.len())
            .filter(|&i| rows[i].card_number.is_some())
            .collect();
        let ssns = self
            .index_hashes(
                keys,
                personal::SSN,
                ssn_rows
                    .iter()
                    .filter_map(|&i| rows[i].ssn.as_ref().map(|s| s.as_bytes().to_vec()))
                    .collect(),
            )
            .await?;
        let numbers = self
            .index_hashes(
                keys,
                personal::CARD_NUMBER,
                number_rows
                    .iter()
                    .filter_map(|&i| rows[i].card_number.as_ref().map(|s| s.as_bytes().to_vec()))
                    .collect(),
            )
            .await?;
        let mut protected = vec![Protected::default(); rows.len()];
        for (i, hash) in ssn_rows.into_iter().zip(ssns) {
            protected[i].ssn_index = Some(hash);
        }
        for (i, hash) in number_rows.into_iter().zip(numbers) {
            protected[i].card_number_index = Some(hash);
        }
        // A card's row has a valid SSN and card number: their hashes are above.
        let card_rows: Vec<usize> = (0..rows.len())
            .filter(|&i| rows[i].card.is_some())
            .collect();
        let mut cards = Vec::with_capacity(card_rows.len());
        let (mut card_ssns, mut card_numbers) = (Vec::new(), Vec::new());
        for &i in &card_rows {
            let (Some(card), Some(ssn), Some(number)) = (
                rows[i].card.clone(),
                protected[i].ssn_index.clone(),
                protected[i].card_number_index.clone(),
            ) else {
                return Err(Error::StoreCorrupt("applicant row"));
            };
            cards.push(card);
            card_ssns.push(ssn);
            card_numbers.push(number);
        }
        let sealed = self
            .seal_personal(keys, &cards, card_ssns, card_numbers)
            .await?;
        for (i, personal) in card_rows.into_iter().zip(sealed) {
            protected[i].personal = Some(personal);
        }
        Ok(protected)
    }
}
