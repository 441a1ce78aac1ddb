//! Applicant files as a city would export them: real-looking rows (Chinese names, citizen IDs
//! of Guangdong districts with their GB 11643 check characters, card numbers with theirs),
//! written as CSV in UTF-8 or GBK, and sent to `SubmitApplicantBatch` in chunks.

use sscard_kms::proto::kms::v1 as pb;
use sscard_kms::proto::kms::v1::registry_service_client::RegistryServiceClient;
use tonic::transport::Channel;
use tonic::{Response, Status};

use crate::common::chain::{card_number, ssn};

/// The header in the order.
pub const HEADER: &str = "ssn,name,sex,birth_date,region,card_number,card_identifier,spec_version";

/// Common names, some with a compound surname.
const NAMES: [&str; 12] = [
    "陈伟",
    "李娜",
    "王芳",
    "张敏",
    "刘洋",
    "黄静",
    "欧阳晓明",
    "梁嘉欣",
    "何志强",
    "吴雅婷",
    "司马光明",
    "郑秀英",
];

/// One row of an applicant file, its fields as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applicant {
    pub ssn: String,
    pub name: String,
    pub sex: String,
    pub birth_date: String,
    pub region: String,
    pub card_number: String,
    pub card_identifier: String,
    pub spec_version: String,
}

/// A valid applicant of `city` (a Guangdong city code), unique per `(tag, n)`: `tag` is two
/// capital letters that start the card number and tell test batches apart.
pub fn applicant(city: &str, tag: &str, n: u32) -> Applicant {
    // A district of the city (…03); a birth date and a sequence that are unique per (tag, n)
    // for n < 10,000 (the sequence's parity is the sex, GB 11643: odd male, even female).
    let district = format!("{}03", &city[..4]);
    let b = tag.as_bytes();
    let seed = u32::from(b[0] - b'A') * 26 + u32::from(b[1] - b'A');
    let m = seed * 10_000 + n % 10_000;
    let d = m / 900;
    let (year, rest) = (1950 + d / 336, d % 336);
    let (month, day) = (1 + rest / 28, 1 + rest % 28);
    let sequence = 100 + m % 900;
    let birth = format!("{year:04}{month:02}{day:02}");
    let first17 = format!("{district}{birth}{sequence:03}");
    let sex = if sequence % 2 == 1 { "1" } else { "2" };
    let tag_hex: String = tag.bytes().map(|b| format!("{b:02X}")).collect();
    Applicant {
        ssn: ssn(&first17),
        name: NAMES[n as usize % NAMES.len()].to_owned(),
        sex: sex.to_owned(),
        birth_date: birth,
        region: city.to_owned(),
        card_number: card_number(&format!("{tag}{n:06}")),
        card_identifier: format!("{city}D156000005{tag_hex}{n:012X}"),
        spec_version: "2.00".to_owned(),
    }
}

impl Applicant {
    /// The fields in [`HEADER`] order.
    pub fn fields(&self) -> [&str; 8] {
        [
            &self.ssn,
            &self.name,
            &self.sex,
            &self.birth_date,
            &self.region,
            &self.card_number,
            &self.card_identifier,
            &self.spec_version,
        ]
    }
}

/// A CSV file: [`HEADER`], then one line per applicant (fields quoted where CSV needs it).
pub fn csv(rows: &[Applicant]) -> String {
    let mut out = format!("{HEADER}\n");
    for row in rows {
        let fields: Vec<String> = row
            .fields()
            .iter()
            .map(|f| {
                if f.contains([',', '"', '\n']) {
                    format!("\"{}\"", f.replace('"', "\"\""))
                } else {
                    (*f).to_owned()
                }
            })
            .collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// `text` in GBK (GB18030).
pub fn gbk(text: &str) -> Vec<u8> {
    let (bytes, _, unmappable) = encoding_rs::GB18030.encode(text);
    assert!(!unmappable);
    bytes.into_owned()
}

/// Sends `file` in chunks of `chunk` bytes (the options in the first).
pub async fn submit_chunked(
    client: &mut RegistryServiceClient<Channel>,
    file: &[u8],
    batch_id: &str,
    encoding: pb::ApplicantFileEncoding,
    chunk: usize,
) -> Result<Response<pb::ApplicantBatchReport>, Status> {
    let mut messages: Vec<pb::ApplicantFileChunk> = file
        .chunks(chunk)
        .map(|data| pb::ApplicantFileChunk {
            data: data.to_vec(),
            batch_id: String::new(),
            encoding: 0,
        })
        .collect();
    if messages.is_empty() {
        messages.push(pb::ApplicantFileChunk::default());
    }
    messages[0].batch_id = batch_id.to_owned();
    messages[0].encoding = encoding as i32;
    client
        .submit_applicant_batch(tokio_stream::iter(messages))
        .await
}

/// Sends `file` in 1000-byte chunks, encoding detected, id = its SHA-256.
pub async fn submit(
    client: &mut RegistryServiceClient<Channel>,
    file: &[u8],
) -> Result<Response<pb::ApplicantBatchReport>, Status> {
    submit_chunked(
        client,
        file,
        "",
        pb::ApplicantFileEncoding::Unspecified,
        1000,
    )
    .await
}

/// The reasons of the rejected row at `line`, `;`-joined ("" if the row was accepted).
pub fn reasons_at(report: &pb::ApplicantBatchReport, line: u64) -> String {
    report
        .rejected_rows
        .iter()
        .find(|r| r.line == line)
        .map(|r| r.reasons.join(";"))
        .unwrap_or_default()
}
