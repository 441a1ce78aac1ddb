//! Load generator: drives a running sscard-kms (`dev`, or `serve` with a local or remote HSM) over
//! real mutual TLS and prints what it measured. Asserts nothing.
//!
//! ```sh
//! cargo run --release -- dev                                   # in one terminal
//! cargo run --release --example loadgen -- --data-dir ./kms-data --seconds 10
//! ```
//!
//! It takes the CA and the station's, registrar's and reviewer's certificates from a `dev` data
//! directory, registers the cards it needs (as the registrar of the station's city) and accepts
//! them (as the provincial reviewer: acceptance is the province's), then, in one run:
//!
//! 1. the **transport ceiling**: gRPC health checks with the same connections and concurrency;
//! 2. the **injections**: every key of a card per request, in the chosen form, cycling through
//!    a pool of registered cards (a card's keys may be released again to the same chip).
//!
//! With `--background-max-requests N`, the injection phase runs twice — the station alone, then
//! the same station while a second client keeps N maximum-size requests in flight (every TR-31
//! key of the template, as fast as it can, on connections of its own) — and prints both p99s:
//! the stall demonstration, `--connections 1 --concurrency 1 --rate 100
//! --background-max-requests 64` (`--rate`: the station sends at a steady rate). The last line
//! is then the station's with the large client.
//!
//! Its last line is always
//! `cards/s=<n> keys/s=<n> p50_ms=<x> p99_ms=<x> errors=<n> ceiling_rps=<n>`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use sscard_kms::card::identifiers::{CardNumber, SocialSecurityNumber};
use sscard_kms::card::template::{KeyOwner, Template};
use sscard_kms::proto::kms::v1 as pb;
use sscard_kms::proto::kms::v1::card_key_service_client::CardKeyServiceClient;
use sscard_kms::proto::kms::v1::registry_service_client::RegistryServiceClient;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The heap of the whole process (the `mimalloc` feature, on by default: see the workspace's
/// `Cargo.toml`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Form {
    /// TR-31 key blocks under the station's transport key.
    Tr31,
    /// Ready-made secure-messaging WRITE KEY commands (one card challenge per key).
    SecureMessaging,
}

#[derive(Debug, Parser)]
struct Args {
    /// The service.
    #[arg(long, default_value = "https://localhost:50051")]
    endpoint: String,
    /// A `dev` data directory: `pki/ca.pem`, `pki/station.{pem,key}`, `pki/registrar.{pem,key}`,
    /// `pki/reviewer.{pem,key}`.
    #[arg(long, default_value = "./kms-data")]
    data_dir: PathBuf,
    /// TCP (HTTP/2) connections.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Requests in flight on each connection.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds of each phase (health ceiling, injections).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Delivery form.
    #[arg(long, value_enum, default_value_t = Form::Tr31)]
    form: Form,
    /// Card template.
    #[arg(long, default_value = "ssc-2.0")]
    template: String,
    /// Cards in the pool the requests cycle through (at most 100,000).
    #[arg(long, default_value_t = 1000)]
    cards: usize,
    /// Run id (0..10): part of every card number and identifier. Runs with the same id and
    /// template reuse the same cards; the default is the same for every run.
    #[arg(long, default_value_t = 1)]
    run_id: u32,
    /// Maximum-size requests in flight from a second client during the injection phase.
    #[arg(long, default_value_t = 0)]
    background_max_requests: usize,
    /// Injections per second in all (spread over the connections × concurrency workers, each
    /// starting its requests at a steady interval); 0 = as fast as each worker can.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// The server's process id (Linux): print the CPU time it spent per injection (its user +
    /// system time from `/proc/PID/stat` before and after the injection phase), a figure that a
    /// machine loaded by other work changes far less than requests/s.
    #[arg(long)]
    server_pid: Option<u32>,
}

/// User + system CPU seconds of process `pid` so far, from `/proc/PID/stat` (fields 14 and 15,
/// in clock ticks of 1/100 s: Linux's fixed `USER_HZ`).
fn cpu_seconds(pid: u32) -> Result<f64, Box<dyn std::error::Error>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = stat.rsplit_once(')').ok_or("malformed /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64, Box<dyn std::error::Error>> {
        Ok(fields.get(i).ok_or("short /proc stat")?.parse::<f64>()?)
    };
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// One generated card: identity and ATR.
#[derive(Debug, Clone)]
struct DemoCard {
    identity: pb::CardIdentity,
}

/// The station's city (the dev station GZ-01 and registrar GZ-REG-01 are of Guangzhou).
const CITY: &str = "440100";

/// A base-36 digit, as card numbers use them.
fn b36(v: u32) -> char {
    char::from_digit(v % 36, 36).map_or('0', |c| c.to_ascii_uppercase())
}

/// Card `n` of run `run` for template number `tag`: every field unique per (run, tag, n).
fn card(run: u32, tag: u32, n: u32) -> Result<DemoCard, Box<dyn std::error::Error>> {
    // SSN: Guangzhou (Yuexiu district), a birth date and a 3-digit sequence unique per
    // (run, tag, n) for up to 100,000 cards of 8 templates in 10 runs.
    let idx = (run % 10 * 8 + tag % 8) * 100_000 + n % 100_000;
    let day = idx / 1000;
    let (year, rest) = (1960 + day / 336, day % 336);
    let (month, dom) = (1 + rest / 28, 1 + rest % 28);
    let first17 = format!("440103{year:04}{month:02}{dom:02}{:03}", idx % 1000);
    let ssn = format!(
        "{first17}{}",
        SocialSecurityNumber::check_character(&first17)?
    );
    // Card number: 8 characters of [0-9A-Z] and its check character; unique per (run, n).
    let body = format!("{}{}{:06}", b36(run), b36(tag), n % 1_000_000);
    let number = format!("{body}{}", CardNumber::check_character(&body)?);
    let identifier = format!("{CITY}D156000005{run:04X}{tag:04X}{n:08X}");
    // ATR: a fixed prefix, then 8 bytes (the card factor) unique per card.
    let mut atr = hex::decode("3B6D000080318065B0")?;
    atr.extend_from_slice(&(run as u16).to_be_bytes());
    atr.extend_from_slice(&(tag as u16).to_be_bytes());
    atr.extend_from_slice(&n.to_be_bytes());
    Ok(DemoCard {
        identity: pb::CardIdentity {
            card_identifier: identifier,
            card_number: number,
            social_security_number: ssn,
            atr,
        },
    })
}

async fn channel(
    endpoint: &str,
    pki: &std::path::Path,
    role: &str,
) -> Result<Channel, Box<dyn std::error::Error>> {
    let tls = sscard_kms::access::tls::ClientTls::from_files(
        &pki.join("ca.pem"),
        &pki.join(format!("{role}.pem")),
        &pki.join(format!("{role}.key")),
    )?;
    Ok(
        tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
            .tls_config(tls.config())?
            .tcp_nodelay(true)
            .connect()
            .await?,
    )
}

/// Latencies of one phase, in microseconds.
#[derive(Debug, Default)]
struct Phase {
    latencies_us: Vec<u32>,
    errors: u64,
    elapsed: Duration,
}

impl Phase {
    fn rps(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 * p).ceil() as usize)
            .clamp(1, self.latencies_us.len())
            - 1;
        f64::from(self.latencies_us[i]) / 1000.0
    }
}

/// Runs `op` from `workers` tasks until `seconds` pass or `op` says there is no more work
/// (`None`); `op(i)` gets a fresh index per request and says whether it succeeded.
async fn run_phase<F, Fut>(workers: usize, seconds: u64, op: F) -> Phase
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<bool>> + Send,
{
    run_paced(workers, seconds, None, op).await
}

/// [`run_phase`], each worker starting a request every `interval` if given (a request that
/// takes longer delays the next one; latency is measured from each request's own start).
async fn run_paced<F, Fut>(workers: usize, seconds: u64, interval: Option<Duration>, op: F) -> Phase
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<bool>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (op, next, errors) = (Arc::clone(&op), Arc::clone(&next), Arc::clone(&errors));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut next_start = Instant::now();
            while Instant::now() < deadline {
                if let Some(interval) = interval {
                    tokio::time::sleep_until(next_start.into()).await;
                    next_start += interval;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let Some(ok) = op(i).await else { break };
                if ok {
                    lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    if errors.load(Ordering::Relaxed) > 1000 {
                        break;
                    }
                }
            }
            lat
        }));
    }
    let mut phase = Phase::default();
    for t in tasks {
        if let Ok(lat) = t.await {
            phase.latencies_us.extend(lat);
        }
    }
    phase.elapsed = start.elapsed();
    phase.errors = errors.load(Ordering::Relaxed);
    phase.latencies_us.sort_unstable();
    phase
}

/// A station's injections: every key of a card per request, cycling through `cards`.
#[derive(Debug, Clone)]
struct Station {
    channels: Vec<Channel>,
    cards: Arc<Vec<DemoCard>>,
    template_id: String,
    form: Form,
    key_names: Arc<Vec<String>>,
    tr31_keys: usize,
    challenge_len: usize,
}

impl Station {
    /// Injections from `workers` tasks for `seconds`, each starting one every `interval` if given.
    async fn run(&self, workers: usize, seconds: u64, interval: Option<Duration>) -> Phase {
        let station = self.clone();
        run_paced(workers, seconds, interval, move |i| {
            let s = station.clone();
            async move {
                let mut client =
                    CardKeyServiceClient::new(s.channels[i % s.channels.len()].clone());
                let card = s.cards[i % s.cards.len()].identity.clone();
                let request = match s.form {
                    Form::Tr31 => pb::InjectCardKeysRequest {
                        card: Some(card),
                        template_id: s.template_id.clone(),
                        delivery: pb::DeliveryForm::Tr31 as i32,
                        key_names: Vec::new(),
                        challenges: Vec::new(),
                    },
                    Form::SecureMessaging => pb::InjectCardKeysRequest {
                        card: Some(card),
                        template_id: s.template_id.clone(),
                        delivery: pb::DeliveryForm::SecureMessaging as i32,
                        key_names: Vec::new(),
                        challenges: s
                            .key_names
                            .iter()
                            .enumerate()
                            .map(|(k, name)| pb::KeyChallenge {
                                key_name: name.clone(),
                                challenge: vec![(i ^ k) as u8; s.challenge_len],
                            })
                            .collect(),
                    },
                };
                match client.inject_card_keys(request).await {
                    Ok(r) => Some(
                        r.get_ref().keys.len()
                            == match s.form {
                                Form::Tr31 => s.tr31_keys,
                                Form::SecureMessaging => s.key_names.len(),
                            },
                    ),
                    Err(status) => {
                        if i < 4 {
                            eprintln!("inject: {:?} {}", status.code(), status.message());
                        }
                        Some(false)
                    }
                }
            }
        })
        .await
    }
}

fn report(name: &str, phase: &Phase, per_request: usize) {
    println!(
        "{name:<12} {:>9.0} req/s {:>10.0} keys/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p999 {:>7.2} ms  errors {}",
        phase.rps(),
        phase.rps() * per_request as f64,
        phase.percentile_ms(0.50),
        phase.percentile_ms(0.99),
        phase.percentile_ms(0.999),
        phase.errors,
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let pki = args.data_dir.join("pki");
    let template = Template::builtin(&args.template)?;
    let key_count = template.keys().len();
    let challenge_len = if template.algorithm().to_string() == "sm4" {
        16
    } else {
        8
    };
    let run = args.run_id;
    // The template's place among the built-in ones keeps each template's cards apart.
    let tag = sscard_kms::card::template::BUILTIN
        .iter()
        .position(|(id, _)| *id == args.template)
        .unwrap_or(35) as u32;
    let workers = args.connections * args.concurrency;

    let mut stations = Vec::new();
    for _ in 0..args.connections {
        stations.push(channel(&args.endpoint, &pki, "station").await?);
    }
    let registrar = channel(&args.endpoint, &pki, "registrar").await?;
    let reviewer = channel(&args.endpoint, &pki, "reviewer").await?;

    // A pool of cards, registered and accepted first (or already, by an earlier run with the
    // same run id); requests cycle through it. A card's keys may be released again to the same
    // chip (same ATR), as a station does when a personalisation is retried.
    let cards: Arc<Vec<DemoCard>> = Arc::new(
        (0..args.cards)
            .map(|n| card(run, tag, n as u32))
            .collect::<Result<_, _>>()?,
    );
    let registration = {
        let cards = Arc::clone(&cards);
        let template_id = args.template.clone();
        // Within the service's default of 32 streams per connection.
        run_phase(32, 600, move |i| {
            let card = cards.get(i).cloned();
            let template_id = template_id.clone();
            let mut client = RegistryServiceClient::new(registrar.clone());
            let mut province = RegistryServiceClient::new(reviewer.clone());
            async move {
                let card = card?.identity;
                let registered = client
                    .register_card(pb::RegisterCardRequest {
                        card: Some(card.clone()),
                        template_id,
                        replaces_card_identifier: String::new(),
                    })
                    .await;
                let fresh = match registered {
                    Ok(_) => true,
                    Err(s) if s.code() == tonic::Code::AlreadyExists => false,
                    Err(s) => {
                        eprintln!("register: {:?} {}", s.code(), s.message());
                        return Some(false);
                    }
                };
                if !fresh {
                    return Some(true);
                }
                let accepted = province
                    .accept_card(pb::CardRef {
                        card_identifier: card.card_identifier,
                    })
                    .await;
                Some(accepted.is_ok())
            }
        })
        .await
    };
    println!(
        "setup        {} cards of {} registered and accepted in {:.1} s (run id {run}), {} errors",
        registration.latencies_us.len(),
        args.template,
        registration.elapsed.as_secs_f64(),
        registration.errors,
    );
    if registration.errors > 0 {
        return Err("card registration failed (is this a dev data directory?)".into());
    }

    // 1. The transport ceiling: health checks, same connections and concurrency.
    let ceiling = {
        let stations = stations.clone();
        run_phase(workers, args.seconds, move |i| {
            let mut client = HealthClient::new(stations[i % stations.len()].clone());
            async move {
                Some(
                    client
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .is_ok(),
                )
            }
        })
        .await
    };
    report("health", &ceiling, 0);

    // 2. Injections: every key of a card per request.
    let key_names: Arc<Vec<String>> =
        Arc::new(template.write_order().map(|k| k.name.clone()).collect());
    // What a TR-31 injection of every key delivers, as the service selects it: not the master
    // keys (they leave only inside WRITE KEY commands), nor keys a template's policy keeps for
    // secure messaging, nor keys owned elsewhere (the dev deployment is the province's).
    let tr31_keys = template
        .write_order()
        .filter(|k| template.may_leave_as_tr31(k) && k.owner() == KeyOwner::Province)
        .count();
    let station = Station {
        channels: stations.clone(),
        cards: Arc::clone(&cards),
        template_id: args.template.clone(),
        form: args.form,
        key_names,
        tr31_keys,
        challenge_len,
    };
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(workers as f64 / args.rate));
    // Keys a request delivers: every key in WRITE KEY commands, all but the master keys as TR-31.
    let per_request = match args.form {
        Form::Tr31 => tr31_keys,
        Form::SecureMessaging => key_count,
    };
    let cpu_before = args.server_pid.map(cpu_seconds).transpose()?;
    // Injections answered during the phase, and their keys (the background's too).
    let mut served = (0usize, 0usize);
    let injections = if args.background_max_requests > 0 {
        // The stall demonstration, in one run: the station alone, then the same station while
        // a second client keeps maximum-size requests in flight on connections of its own.
        let alone = station.run(workers, args.seconds, interval).await;
        report("alone", &alone, per_request);
        served.0 += alone.latencies_us.len();
        served.1 += alone.latencies_us.len() * per_request;
        // Connections of at most 32 requests in flight each (the service's default stream limit).
        let mut big = Vec::new();
        for _ in 0..args.background_max_requests.div_ceil(32) {
            big.push(channel(&args.endpoint, &pki, "station").await?);
        }
        let background = Station {
            channels: big,
            // Other cards than the station's, every TR-31 key of the template per request.
            cards: Arc::new(cards.iter().rev().cloned().collect()),
            form: Form::Tr31,
            ..station.clone()
        };
        let seconds = args.seconds;
        let max = args.background_max_requests;
        let background = tokio::spawn(async move { background.run(max, seconds, None).await });
        let stalled = station.run(workers, args.seconds, interval).await;
        report("with large", &stalled, per_request);
        if let Ok(big) = background.await {
            report("large (bg)", &big, tr31_keys);
            served.0 += big.latencies_us.len();
            served.1 += big.latencies_us.len() * tr31_keys;
        }
        served.0 += stalled.latencies_us.len();
        served.1 += stalled.latencies_us.len() * per_request;
        println!(
            "stall: station p99 alone {:.2} ms, with {} large requests in flight {:.2} ms \
             (p50 {:.2} -> {:.2} ms, {:.0} -> {:.0} req/s)",
            alone.percentile_ms(0.99),
            args.background_max_requests,
            stalled.percentile_ms(0.99),
            alone.percentile_ms(0.50),
            stalled.percentile_ms(0.50),
            alone.rps(),
            stalled.rps(),
        );
        stalled
    } else {
        let phase = station.run(workers, args.seconds, interval).await;
        served = (
            phase.latencies_us.len(),
            phase.latencies_us.len() * per_request,
        );
        phase
    };
    report("injections", &injections, per_request);
    if let (Some(pid), Some(before)) = (args.server_pid, cpu_before) {
        let spent = cpu_seconds(pid)? - before;
        let (requests, keys) = (served.0.max(1) as f64, served.1.max(1) as f64);
        println!(
            "server cpu   {spent:.2} s for {} injections ({} keys) = {:.3} ms per injection, {:.1} us per key",
            served.0,
            served.1,
            spent * 1000.0 / requests,
            spent * 1e6 / keys,
        );
    }

    let cards_per_s = injections.rps();
    let ratio = if ceiling.rps() > 0.0 {
        cards_per_s / ceiling.rps()
    } else {
        0.0
    };
    println!(
        "form {:?}, template {} ({key_count} keys, {per_request} per request), {} connections x {} in flight; injections/health ceiling = {ratio:.3}",
        args.form, args.template, args.connections, args.concurrency
    );
    println!(
        "cards/s={:.0} keys/s={:.0} p50_ms={:.2} p99_ms={:.2} errors={} ceiling_rps={:.0}",
        cards_per_s,
        cards_per_s * per_request as f64,
        injections.percentile_ms(0.50),
        injections.percentile_ms(0.99),
        injections.errors,
        ceiling.rps(),
    );
    Ok(())
}
