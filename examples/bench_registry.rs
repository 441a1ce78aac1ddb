//! The registry review at scale: `--batches` applicant files of `--rows` rows each (default one
//! of 1,000,000) sent by a city registrar through `SubmitApplicantBatch` over mutual TLS to an
//! in-process server on a fresh store, then the store's size and card look-ups at that size.
//! Prints figures; asserts nothing.
//!
//! ```sh
//! cargo run --release --example bench_registry -- --rows 1000000
//! # 10 M cards: ten files of a million distinct applicants, each reviewed end to end (the
//! # store is filled through the review itself, its one write per batch)
//! cargo run --release --example bench_registry -- --rows 1000000 --batches 10
//! ```
//!
//! Figures: rows reviewed per second end to end (first byte sent → answer received: streaming,
//! decoding, CSV, the legality rules, duplicates in the batch, the uniqueness look-ups, the one
//! store write of every card with its indexes and the batch record, its fsync), the same batch
//! resubmitted, store bytes per card (growth of the database file), and look-up latency
//! (the look-up a station's injection does — a fresh store snapshot and the card's record,
//! decoded — and `GetCard` over mutual TLS) with the cards of the first batch in the store and
//! again with those of every batch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use sscard_kms::access::identity::{Identity, Role};
use sscard_kms::card::identifiers::{CardNumber, SocialSecurityNumber};
use sscard_kms::proto::kms::v1 as pb;
use sscard_kms::proto::kms::v1::registry_service_client::RegistryServiceClient;
use sscard_kms::registry::{batch, file, rules};
use sscard_kms::state::records::Card;
use sscard_kms::state::store::{DB_FILE, Table};

#[derive(Debug, Parser)]
struct Args {
    /// Rows of each applicant file (at most 2,000,000).
    #[arg(long, default_value_t = 1_000_000)]
    rows: u32,
    /// Applicant files, each of `rows` distinct applicants (batch b has rows b·rows …).
    #[arg(long, default_value_t = 1)]
    batches: u32,
    /// Card look-ups to time after the batch.
    #[arg(long, default_value_t = 20_000)]
    lookups: u32,
}

const NAMES: [&str; 8] = [
    "陈伟",
    "李娜",
    "王芳",
    "欧阳晓明",
    "梁嘉欣",
    "何志强",
    "吴雅婷",
    "司马光明",
];

/// Row `n` of Guangzhou: unique SSN, card number and identifier; valid check characters.
fn row(n: u32, out: &mut String) -> Result<(), sscard_kms::Error> {
    let d = n / 900;
    let (year, rest) = (1950 + d / 336, d % 336);
    let (month, day) = (1 + rest / 28, 1 + rest % 28);
    let sequence = 100 + n % 900;
    let birth = format!("{year:04}{month:02}{day:02}");
    let first17 = format!("440103{birth}{sequence:03}");
    let ssn = format!(
        "{first17}{}",
        SocialSecurityNumber::check_character(&first17)?
    );
    let body = format!("{n:08}");
    let number = format!("{body}{}", CardNumber::check_character(&body)?);
    let sex = if sequence % 2 == 1 { 1 } else { 2 };
    let name = NAMES[n as usize % NAMES.len()];
    out.push_str(&format!(
        "{ssn},{name},{sex},{birth},440100,{number},440100D156000005{n:016X},2.00\n"
    ));
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let pki = sscard_kms::access::pki::DevPki::generate()?;
    let hsm = Arc::new(hsm_sim::local::LocalHsm::open(
        hsm_sim::local::LocalHsmConfig {
            dangerous_test_lmk: true,
            ..Default::default()
        },
    )?);
    let kms = sscard_kms::service::Kms::open(hsm, dir.path()).await?;
    let officer = Identity::dangerous_in_process(Role::Officer, None, "bench")?;
    for (_, toml) in sscard_kms::card::template::BUILTIN {
        kms.load_template(&officer, toml).await?;
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let tls = sscard_kms::access::tls::server_config(
        &pki.server().cert_pem,
        &pki.server().key_pem,
        pki.ca_pem(),
    )?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // One registrar sends the batch and then every look-up: no rate limit, and time for a
    // million rows (the default request time is 30 s).
    let limits = sscard_kms::server::config::Limits {
        requests_per_second: 1_000_000,
        burst: 1_000_000,
        request_timeout_ms: 600_000,
        ..Default::default()
    };
    let server = tokio::spawn(sscard_kms::server::serve_with_limits(
        Arc::clone(&kms),
        listener,
        tls,
        limits,
        async {
            let _ = stopped.await;
        },
    ));
    let registrar = pki.client(&Identity::new(
        Role::Registrar,
        Some("440100"),
        "GZ-REG-01",
    )?)?;
    let client_tls = sscard_kms::access::tls::ClientTls::from_pem(
        pki.ca_pem(),
        &registrar.cert_pem,
        &registrar.key_pem,
    )?;
    let channel = tonic::transport::Endpoint::from_shared(format!("https://localhost:{port}"))?
        .tls_config(client_tls.config())?
        .connect()
        .await?;
    let mut client = RegistryServiceClient::new(channel).max_decoding_message_size(512 << 20);

    let db = dir.path().join(DB_FILE);
    let db_before = std::fs::metadata(&db)?.len();
    let mut accepted_total = 0u64;
    let mut review_s = 0f64;
    for b in 0..args.batches {
        // The file: applicants b·rows … (b+1)·rows − 1.
        let started = Instant::now();
        let mut text = String::from(
            "ssn,name,sex,birth_date,region,card_number,card_identifier,spec_version\n",
        );
        for n in b * args.rows..(b + 1) * args.rows {
            row(n, &mut text)?;
        }
        let bytes = text.into_bytes();
        if b == 0 {
            println!(
                "file          {} rows, {:.1} MiB UTF-8, generated in {:.1} s",
                args.rows,
                bytes.len() as f64 / 1048576.0,
                started.elapsed().as_secs_f64()
            );
        }

        // End to end.
        let started = Instant::now();
        let report = client
            .submit_applicant_batch(tokio_stream::iter(chunks(&bytes)))
            .await?
            .into_inner();
        let elapsed = started.elapsed();
        review_s += elapsed.as_secs_f64();
        accepted_total += report.accepted;
        let per_s = f64::from(args.rows) / elapsed.as_secs_f64();
        println!(
            "review        batch {}/{}: {} rows in {:.2} s end to end: {:.0} rows/s = {:.2} M \
             rows/min ({} accepted, {} rejected; {} cards in the store)",
            b + 1,
            args.batches,
            report.rows,
            elapsed.as_secs_f64(),
            per_s,
            per_s * 60.0 / 1e6,
            report.accepted,
            report.rejected,
            accepted_total
        );

        if b == 0 {
            first_batch_extras(&mut client, &bytes).await?;
        }
        if b == 0 || b + 1 == args.batches {
            // Store size.
            let db_after = std::fs::metadata(&db)?.len();
            println!(
                "store         {:.1} MiB for {} cards: {:.0} bytes per card (database file \
                 growth: card record, card-number and person indexes, the batch records)",
                (db_after - db_before) as f64 / 1048576.0,
                accepted_total,
                (db_after - db_before) as f64 / accepted_total.max(1) as f64
            );
            lookups(
                &kms,
                &mut client,
                b + 1,
                args.rows,
                args.lookups,
                accepted_total,
            )
            .await?;
        }
    }
    if args.batches > 1 {
        let rows = f64::from(args.rows) * f64::from(args.batches);
        println!(
            "review        all {} batches: {:.0} rows in {:.1} s: {:.0} rows/s on average",
            args.batches,
            rows,
            review_s,
            rows / review_s
        );
    }
    if let Some(rss) = peak_rss_mib() {
        println!("memory        peak RSS {rss:.0} MiB (client and server in one process)");
    }
    drop(client);
    drop(stop);
    server.await??;
    Ok(())
}

/// The messages of a file: 512 KiB chunks.
fn chunks(bytes: &[u8]) -> Vec<pb::ApplicantFileChunk> {
    bytes
        .chunks(512 << 10)
        .map(|c| pb::ApplicantFileChunk {
            data: c.to_vec(),
            batch_id: String::new(),
            encoding: 0,
        })
        .collect()
}

type Client = RegistryServiceClient<tonic::transport::Channel>;

/// The first batch resubmitted, and what part of the review is parsing and the rules.
async fn first_batch_extras(
    client: &mut Client,
    bytes: &[u8],
) -> Result<(), Box<dyn std::error::Error>> {
    // The same batch again: found, answered as stored.
    let started = Instant::now();
    let again = client
        .submit_applicant_batch(tokio_stream::iter(chunks(bytes)))
        .await?
        .into_inner();
    println!(
        "resubmission  {:.2} s (resubmitted = {}, nothing written)",
        started.elapsed().as_secs_f64(),
        again.resubmitted
    );

    // What part of that is parsing and the rules (one thread, in process).
    let started = Instant::now();
    let parsed = file::parse(bytes, file::Encoding::Detect)?;
    let parse_s = started.elapsed().as_secs_f64();
    let city = sscard_kms::card::region::Region::lookup("440100")?;
    let started = Instant::now();
    let mut checks: Vec<_> = parsed
        .rows
        .iter()
        .map(|r| rules::check_row(r, city, |t| t == "ssc-2.0" || t == "ssc-3.0"))
        .collect();
    let rules_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    batch::mark_duplicates(&parsed.rows, &mut checks);
    let dup_s = started.elapsed().as_secs_f64();
    println!(
        "  of which   decoding + CSV {parse_s:.2} s, legality rules {rules_s:.2} s, \
         duplicates in the batch {dup_s:.2} s (in-process, one thread)"
    );
    Ok(())
}

/// Look-ups of random cards of the first `batches` batches: the station's (a fresh snapshot,
/// the card's record decoded) and `GetCard` over mTLS.
async fn lookups(
    kms: &sscard_kms::service::Kms<hsm_sim::local::LocalHsm>,
    client: &mut Client,
    batches: u32,
    rows: u32,
    lookups: u32,
    cards: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut seed = 0x2545_F491_4F6C_DD1Du64 ^ u64::from(batches);
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let total = u64::from(rows) * u64::from(batches);
    let ids: Vec<String> = (0..lookups)
        .map(|_| format!("440100D156000005{:016X}", next() % total))
        .collect();
    let mut store_times = Vec::with_capacity(ids.len());
    for id in &ids {
        let t = Instant::now();
        let card: Option<Card> = kms.store().snapshot()?.get(Table::Cards, id)?;
        store_times.push(t.elapsed());
        if card.is_none() {
            return Err("a card of the batch is missing".into());
        }
    }
    store_times.sort();
    let mut rpc_times = Vec::with_capacity(ids.len());
    for id in &ids {
        let t = Instant::now();
        client
            .get_card(pb::CardRef {
                card_identifier: id.clone(),
            })
            .await?;
        rpc_times.push(t.elapsed());
    }
    rpc_times.sort();
    println!(
        "look-up       at {cards} cards, {lookups} random cards: the station's (snapshot + card \
         record) p50 {:.1} µs p99 {:.1} µs; GetCard over mTLS (one connection, one at a time) \
         p50 {:.0} µs p99 {:.0} µs",
        percentile(&store_times, 0.5).as_secs_f64() * 1e6,
        percentile(&store_times, 0.99).as_secs_f64() * 1e6,
        percentile(&rpc_times, 0.5).as_secs_f64() * 1e6,
        percentile(&rpc_times, 0.99).as_secs_f64() * 1e6,
    );
    Ok(())
}
