//! `kms-ceremony registry …`: the registrars' client of the registry review.
//!
//! - `submit FILE`: a city registrar sends an applicant file (`SubmitApplicantBatch`, in 512 KiB
//!   chunks, with a progress bar when stdout is a terminal) and prints the counts; `--report`
//!   writes `line,verdict,reasons`. Exit 0 once the batch is reviewed, rejections included; 2
//!   with `line N: reason` when the file cannot be read (then nothing is stored) or on any
//!   other refusal.
//! - `accept-row`: a provincial reviewer accepts a rejected row by hand.
//! - `show`: a stored batch's counts (and `--report`).
//! - `blacklist-export`, `blacklist-verify`: the signed blacklist for terminals
//!   ([`super::blacklist`]).
//! - `card-status CARD TRANSITION`: a registrar moves a card along its life cycle (README
//!   "Card life cycle"; `reject` as the provincial reviewer).
//!
//! Connection: `--endpoint` and either `--ca/--cert/--key` or `--data-dir DIR` (a `dev` data
//! directory: `DIR/pki/ca.pem` and the registrar's pair, or for `accept-row` the provincial
//! reviewer's).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use tonic::transport::{Channel, Endpoint};

use crate::access::pki;
use crate::access::tls::ClientTls;
use crate::error::{Error, Refusal, Result};
use crate::proto::kms::v1 as pb;
use crate::proto::kms::v1::registry_service_client::RegistryServiceClient;
use crate::registry::reasons::Reason;
use crate::registry::{batch, file, report};

/// Bytes per streamed message (the server decodes messages of at most 1 MiB).
pub const CHUNK_BYTES: usize = 512 * 1024;
/// The largest answer accepted (a batch of 2,000,000 rejected rows).
const MAX_ANSWER_BYTES: usize = 512 * 1024 * 1024;

/// How to reach the service.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The service.
    #[arg(long, default_value = "https://localhost:50051")]
    pub endpoint: String,
    /// A `dev` data directory: use its PKI (`<dir>/pki/`).
    #[arg(long, conflicts_with_all = ["ca", "cert", "key"])]
    pub data_dir: Option<PathBuf>,
    /// The CA certificate that signed the server's certificate (PEM).
    #[arg(long, requires_all = ["cert", "key"])]
    pub ca: Option<PathBuf>,
    /// This registrar's certificate (PEM).
    #[arg(long, requires_all = ["ca", "key"])]
    pub cert: Option<PathBuf>,
    /// This registrar's private key (PEM).
    #[arg(long, requires_all = ["ca", "cert"])]
    pub key: Option<PathBuf>,
}

/// The file's encoding, as the submitter names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EncodingArg {
    /// UTF-8, with or without a byte-order mark.
    Utf8,
    /// GB18030 / GBK.
    Gbk,
}

/// A change `card-status` asks for (README "Card life cycle").
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransitionArg {
    /// The province rejects a registered card's data (uses the reviewer's pair with --data-dir).
    Reject,
    Activate,
    Suspend,
    Resume,
    ReportLost,
    Cancel,
}

/// `kms-ceremony registry …`.
#[derive(Debug, Subcommand)]
pub enum Registry {
    /// Submit an applicant file for the province's review (as a city registrar).
    Submit {
        /// The applicant file (CSV; README "Applicant files").
        file: PathBuf,
        /// Write the verdicts here as CSV: line,verdict,reasons.
        #[arg(long)]
        report: Option<PathBuf>,
        /// The file's encoding; detected when not given.
        #[arg(long, value_enum)]
        encoding: Option<EncodingArg>,
        /// The batch id (default: the file's SHA-256).
        #[arg(long)]
        batch_id: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Accept by hand a row rejected for waivable reasons only (as a provincial registrar).
    AcceptRow {
        /// The batch id.
        #[arg(long)]
        batch_id: String,
        /// The row's line in the file (the header is line 1).
        #[arg(long)]
        line: u64,
        /// Why (kept with the decision).
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Export the signed blacklist for terminals (in full, or the increments since a version).
    BlacklistExport {
        /// The version the terminals hold: only the entries after it (default 0: the full list).
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Where to write the list.
        #[arg(long)]
        out: PathBuf,
        /// Where to write the signing key's public key (hex, SEC1): what terminals hold.
        #[arg(long)]
        public_key_out: Option<PathBuf>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Check a blacklist file: exit 0 when genuine, 2 when tampered or out of order.
    BlacklistVerify {
        /// The list (as `blacklist-export` wrote it).
        file: PathBuf,
        /// The signing key's public key (hex, SEC1; `blacklist-export --public-key-out`).
        #[arg(long)]
        public_key: PathBuf,
    },
    /// Move a card along its life cycle.
    CardStatus {
        /// The card identifier (卡识别码).
        card: String,
        /// The change.
        #[arg(value_enum)]
        transition: TransitionArg,
        /// Why (kept in the audit record).
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show a card holder's personal data in clear (SSN, card number, name): only for a
    /// registrar of the card's own city; every read is audited.
    PersonalData {
        /// The card identifier (卡识别码).
        card: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show a stored batch's counts.
    Show {
        /// The batch id.
        #[arg(long)]
        batch_id: String,
        /// Write the verdicts here as CSV: line,verdict,reasons.
        #[arg(long)]
        report: Option<PathBuf>,
        #[command(flatten)]
        connection: Connection,
    },
}

pub(super) fn remote(status: tonic::Status) -> Error {
    Error::Remote {
        code: status.code(),
        message: status.message().to_owned(),
    }
}

pub(super) fn file_error(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::File {
        path: path.to_owned(),
        source,
    }
}

pub(super) async fn connect(
    c: &Connection,
    reviewer: bool,
) -> Result<RegistryServiceClient<Channel>> {
    let (ca, cert, key) = match (&c.data_dir, &c.ca, &c.cert, &c.key) {
        (Some(dir), ..) => {
            let pki_dir = dir.join("pki");
            let (cert, key) = if reviewer {
                (pki::REVIEWER_CERT_FILE, pki::REVIEWER_KEY_FILE)
            } else {
                ("registrar.pem", "registrar.key")
            };
            (
                pki_dir.join(pki::CA_CERT_FILE),
                pki_dir.join(cert),
                pki_dir.join(key),
            )
        }
        (None, Some(ca), Some(cert), Some(key)) => (ca.clone(), cert.clone(), key.clone()),
        _ => {
            return Err(Error::InvalidArgument {
                field: "connection",
                reason: Refusal::ConnectionOptions,
            });
        }
    };
    let tls = ClientTls::from_files(&ca, &cert, &key)?;
    let unreachable = |_| Error::Remote {
        code: tonic::Code::Unavailable,
        message: format!("cannot connect to {}", c.endpoint),
    };
    let channel = Endpoint::from_shared(c.endpoint.clone())
        .map_err(|_| Error::InvalidArgument {
            field: "endpoint",
            reason: Refusal::NotAUrl,
        })?
        .tls_config(tls.config())
        .map_err(unreachable)?
        .connect()
        .await
        .map_err(unreachable)?;
    Ok(RegistryServiceClient::new(channel)
        .max_decoding_message_size(MAX_ANSWER_BYTES)
        .max_encoding_message_size(2 * CHUNK_BYTES))
}

/// Every row's verdict of a report, in line order: its line and `;`-joined reason codes.
pub fn verdicts(report: &pb::ApplicantBatchReport) -> Vec<(u64, String)> {
    let runs: Vec<batch::LineRun> = report
        .lines
        .iter()
        .map(|r| batch::LineRun {
            first: r.first_line,
            count: r.count,
        })
        .collect();
    let mut rejected = report.rejected_rows.iter().peekable();
    batch::lines_of(&runs)
        .map(|line| match rejected.next_if(|r| r.line == line) {
            Some(r) => (line, r.reasons.join(";")),
            None => (line, String::new()),
        })
        .collect()
}

fn write_report(path: &Path, report: &pb::ApplicantBatchReport) -> Result<()> {
    let out = std::fs::File::create(path).map_err(file_error(path))?;
    let rows = verdicts(report);
    report::write_csv(
        std::io::BufWriter::new(out),
        rows.iter().map(|(l, r)| (*l, r.as_str())),
    )
}

/// The lines `submit` and `show` print: the batch, the counts, the reasons counted.
pub fn render(report: &pb::ApplicantBatchReport) -> String {
    let mut out = format!(
        "batch {}\nsha256 {}\nregion {}\nencoding {}\nrows {}\naccepted {}\nrejected {}\n",
        report.batch_id,
        report.sha256,
        report.region,
        report.encoding,
        report.rows,
        report.accepted,
        report.rejected
    );
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for row in &report.rejected_rows {
        for r in &row.reasons {
            *counts.entry(r.clone()).or_default() += 1;
        }
    }
    // Vocabulary order first, then any code this client does not know.
    for reason in Reason::ALL {
        if let Some(n) = counts.remove(reason.code()) {
            out.push_str(&format!("  {} {n}\n", reason.code()));
        }
    }
    for (code, n) in counts {
        out.push_str(&format!("  {code} {n}\n"));
    }
    let waivable = report.rejected_rows.iter().filter(|r| r.waivable).count();
    if waivable > 0 {
        out.push_str(&format!(
            "waivable {waivable} (a provincial reviewer may accept them: registry accept-row)\n"
        ));
    }
    if !report.decisions.is_empty() {
        out.push_str(&format!("accepted by hand {}\n", report.decisions.len()));
    }
    if report.resubmitted {
        out.push_str("resubmitted: the verdicts stored for this batch; nothing stored again\n");
    }
    out
}

fn progress_bar(len: u64) -> indicatif::ProgressBar {
    if !std::io::stdout().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} {msg:<10} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("sending");
    bar
}

async fn submit(
    path: &Path,
    report_path: Option<&Path>,
    encoding: Option<EncodingArg>,
    batch_id: Option<&str>,
    connection: &Connection,
) -> Result<String> {
    let bytes = std::fs::read(path).map_err(file_error(path))?;
    if bytes.len() > file::MAX_FILE_BYTES {
        return Err(Error::InvalidArgument {
            field: "file",
            reason: Refusal::FileTooLarge,
        });
    }
    let mut client = connect(connection, false).await?;
    let bar = progress_bar(bytes.len() as u64);
    let encoding = match encoding {
        None => pb::ApplicantFileEncoding::Unspecified,
        Some(EncodingArg::Utf8) => pb::ApplicantFileEncoding::Utf8,
        Some(EncodingArg::Gbk) => pb::ApplicantFileEncoding::Gb18030,
    } as i32;
    let batch_id = batch_id.unwrap_or_default().to_owned();
    let total = bytes.len();
    let sending = bar.clone();
    // An empty file still sends one (empty) message with the options.
    let starts: Vec<usize> = (0..total.max(1)).step_by(CHUNK_BYTES).collect();
    let chunks = tokio_stream::iter(starts.into_iter().map(move |start| {
        let end = (start + CHUNK_BYTES).min(total);
        let data = bytes.get(start..end).unwrap_or_default().to_vec();
        sending.inc(data.len() as u64);
        if end == total {
            sending.set_message("reviewing");
            sending.enable_steady_tick(std::time::Duration::from_millis(120));
        }
        pb::ApplicantFileChunk {
            data,
            batch_id: if start == 0 {
                batch_id.clone()
            } else {
                String::new()
            },
            encoding: if start == 0 { encoding } else { 0 },
        }
    }));
    let answer = client.submit_applicant_batch(chunks).await;
    bar.finish_and_clear();
    let report = answer.map_err(remote)?.into_inner();
    let mut out = render(&report);
    if let Some(p) = report_path {
        write_report(p, &report)?;
        out.push_str(&format!("report {}\n", p.display()));
    }
    Ok(out)
}

/// Runs a `registry` command; the text to print on success.
pub fn run(cmd: &Registry) -> Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|_| Error::Store)?;
    runtime.block_on(async {
        match cmd {
            Registry::Submit {
                file,
                report,
                encoding,
                batch_id,
                connection,
            } => {
                submit(
                    file,
                    report.as_deref(),
                    *encoding,
                    batch_id.as_deref(),
                    connection,
                )
                .await
            }
            Registry::AcceptRow {
                batch_id,
                line,
                note,
                connection,
            } => {
                let mut client = connect(connection, true).await?;
                let report = client
                    .accept_applicant_row(pb::AcceptApplicantRowRequest {
                        batch_id: batch_id.clone(),
                        line: *line,
                        note: note.clone(),
                    })
                    .await
                    .map_err(remote)?
                    .into_inner();
                Ok(format!("line {line} accepted\n{}", render(&report)))
            }
            Registry::BlacklistExport {
                since,
                out,
                public_key_out,
                connection,
            } => super::blacklist::export(*since, out, public_key_out.as_deref(), connection).await,
            Registry::CardStatus {
                card,
                transition,
                reason,
                connection,
            } => {
                let wire = match transition {
                    TransitionArg::Reject => pb::CardTransition::Reject,
                    TransitionArg::Activate => pb::CardTransition::Activate,
                    TransitionArg::Suspend => pb::CardTransition::Suspend,
                    TransitionArg::Resume => pb::CardTransition::Resume,
                    TransitionArg::ReportLost => pb::CardTransition::ReportLost,
                    TransitionArg::Cancel => pb::CardTransition::Cancel,
                };
                let mut client = connect(connection, *transition == TransitionArg::Reject).await?;
                let record = client
                    .change_card_status(pb::ChangeCardStatusRequest {
                        card_identifier: card.clone(),
                        transition: wire as i32,
                        reason: reason.clone(),
                    })
                    .await
                    .map_err(remote)?
                    .into_inner();
                Ok(format!(
                    "card {} {}
",
                    record.card_identifier,
                    record
                        .status()
                        .as_str_name()
                        .trim_start_matches("CARD_STATUS_")
                        .to_ascii_lowercase()
                ))
            }
            Registry::PersonalData { card, connection } => {
                let mut client = connect(connection, false).await?;
                let data = client
                    .read_card_personal_data(pb::CardRef {
                        card_identifier: card.clone(),
                    })
                    .await
                    .map_err(remote)?
                    .into_inner();
                Ok(format!(
                    "card {}\nsocial security number {}\ncard number {}\nname {}\n",
                    data.card_identifier, data.social_security_number, data.card_number, data.name
                ))
            }
            Registry::BlacklistVerify { file, public_key } => {
                super::blacklist::verify(file, public_key)
            }
            Registry::Show {
                batch_id,
                report: report_path,
                connection,
            } => {
                let mut client = connect(connection, false).await?;
                let report = client
                    .get_applicant_batch(pb::GetApplicantBatchRequest {
                        batch_id: batch_id.clone(),
                    })
                    .await
                    .map_err(remote)?
                    .into_inner();
                let mut out = render(&report);
                if let Some(p) = report_path {
                    write_report(p, &report)?;
                    out.push_str(&format!("report {}\n", p.display()));
                }
                Ok(out)
            }
        }
    })
}
