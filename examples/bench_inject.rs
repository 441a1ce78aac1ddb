//! Throughput of card key injection through the whole stack: mutual TLS, authorisation, the
//! store's group commit (one fsync per batch), the audit chain with HSM seals, and the in-process
//! HSM's derivations and exports. Prints figures; asserts nothing.
//!
//! ```sh
//! cargo run --release --example bench_inject -- --requests 2000 --concurrency 64
//! # the HSM as a separate `hsm-sim` process over mutual TLS (test LMK):
//! cargo build --release -p hsm-sim
//! cargo run --release --example bench_inject -- --remote-hsm target/release/hsm-sim
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use sscard_kms::access::identity::{Identity, Role};
use sscard_kms::proto::kms::v1 as pb;
use sscard_kms::proto::kms::v1::card_key_service_client::CardKeyServiceClient;

/// The heap of the whole process (the `mimalloc` feature, on by default: see the workspace's
/// `Cargo.toml`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
struct Args {
    /// Injection requests to send in all.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Keys per request (the first N of the template in write order; 0 = all that leave as
    /// TR-31).
    #[arg(long, default_value_t = 0)]
    keys: usize,
    /// Run the HSM as this `hsm-sim` binary, a separate process reached over mutual TLS on
    /// 127.0.0.1 (on the published test LMK), instead of in-process.
    #[arg(long)]
    remote_hsm: Option<std::path::PathBuf>,
    /// Measure the HSM alone instead: cipher blocks/s (TDES, AES-256, SM4) and in-process
    /// `Hsm::batch` keys/s (17 TR-31 D exports of TDES card keys per batch, as an ssc-2.0
    /// TR-31 set), from 1 and 2 tasks.
    #[arg(long)]
    hsm_only: bool,
    /// HSM batches at once (`Kms::set_hsm_batches_at_once`); 0 = as `serve` sets it (the
    /// machine's parallelism in-process, `REMOTE_HSM_BATCHES_PER_CORE` per core for a remote HSM).
    #[arg(long, default_value_t = 0)]
    hsm_batches: usize,
}

/// The HSM alone: the cipher bound and what the in-process batch reaches.
async fn hsm_only() -> Result<(), Box<dyn std::error::Error>> {
    use hsm_api::{
        Algorithm, BatchDelivery, BatchItem, Derivation, Dispersion, Exportability, Factor,
        HierarchyLevel, Hsm, KeyBlockVersion, KeySource, KeySpec, KeyUsage,
    };
    let second = Duration::from_secs(2);
    for alg in [Algorithm::Tdes2, Algorithm::Aes256, Algorithm::Sm4] {
        let key = hsm_sim::crypto::random::generate_key(alg)?;
        let data = vec![0x5Au8; 16 * 1024];
        let (start, mut blocks) = (Instant::now(), 0usize);
        while start.elapsed() < second {
            std::hint::black_box(hsm_sim::crypto::cipher::encrypt_ecb(&key, &data)?);
            blocks += data.len() / alg.block_len();
        }
        println!(
            "cipher {alg:?}: {:.2} M blocks/s (one core, ECB over 16 KiB)",
            blocks as f64 / start.elapsed().as_secs_f64() / 1e6
        );
    }
    let hsm = Arc::new(hsm_sim::local::LocalHsm::open(
        hsm_sim::local::LocalHsmConfig {
            dangerous_test_lmk: true,
            ..Default::default()
        },
    )?);
    let spec = |algorithm, usage| KeySpec {
        algorithm,
        usage,
        exportability: Exportability::NonExportable,
    };
    let kbpk = hsm
        .generate_key(spec(Algorithm::Aes256, KeyUsage::KeyBlockProtection))
        .await?
        .token;
    let mut cities = Vec::new();
    for _ in 0..17 {
        let city = KeyUsage::CardDerivation(HierarchyLevel::City);
        cities.push(hsm.generate_key(spec(Algorithm::Tdes2, city)).await?.token);
    }
    let set = move |card: u32| -> Result<Vec<BatchItem>, hsm_api::Error> {
        let mut factor = [0x86, 0x84, 0x32, 0x02, 0, 0, 0, 0];
        factor[4..].copy_from_slice(&card.to_be_bytes());
        let factor = Factor::from_bytes(&factor)?;
        Ok(cities
            .iter()
            .map(|city| BatchItem {
                key: KeySource::Derived(Derivation {
                    parent: city.clone(),
                    method: Dispersion::PbocTdes,
                    factors: vec![factor],
                    child_usage: KeyUsage::CardKey,
                }),
                delivery: BatchDelivery::Export {
                    kbpk: kbpk.clone(),
                    version: KeyBlockVersion::D,
                },
            })
            .collect())
    };
    let set = Arc::new(set);
    for tasks in [1usize, 2] {
        let start = Instant::now();
        let mut running = Vec::new();
        for t in 0..tasks {
            let (hsm, set) = (Arc::clone(&hsm), Arc::clone(&set));
            running.push(tokio::spawn(async move {
                let mut keys = 0usize;
                let mut card = t as u32 * 1_000_000;
                while start.elapsed() < second {
                    let out = hsm.batch(set(card)?).await?;
                    keys += out.iter().filter(|r| r.is_ok()).count();
                    card += 1;
                }
                Ok::<usize, hsm_api::Error>(keys)
            }));
        }
        let mut keys = 0;
        for r in running {
            keys += r.await??;
        }
        println!(
            "in-process Hsm::batch, {tasks} task(s): {:.0} keys/s (TDES card keys, TR-31 D under AES-256)",
            keys as f64 / start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// A running `hsm-sim serve`, killed when dropped.
struct HsmProcess(std::process::Child);

impl Drop for HsmProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `binary` on the test LMK with a PKI of its own in `dir`, and connects to it.
fn remote_hsm(
    binary: &std::path::Path,
    dir: &std::path::Path,
) -> Result<(HsmProcess, hsm_sim::remote::RemoteHsm), Box<dyn std::error::Error>> {
    use std::io::BufRead;
    let pki = sscard_kms::access::pki::DevPki::generate()?;
    let pki_dir = dir.join("hsm-pki");
    pki.write_to(&pki_dir)?;
    let mut child = std::process::Command::new(binary)
        .args(["serve", "--listen", "127.0.0.1:0", "--dangerous-test-lmk"])
        .arg("--cert")
        .arg(pki_dir.join("server.pem"))
        .arg("--key")
        .arg(pki_dir.join("server.key"))
        .arg("--client-ca")
        .arg(pki_dir.join("ca.pem"))
        .arg("--state-dir")
        .arg(dir.join("hsm-state"))
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let process = HsmProcess(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or("hsm-sim did not say where it listens")?
        .parse()?;
    let service = pki.client(&Identity::from_uri("sscard://service/kms")?)?;
    let tls = hsm_sim::remote::ClientTls::from_pem(
        service.cert_pem.as_bytes(),
        service.key_pem.as_bytes(),
        pki.ca_pem().as_bytes(),
    )?;
    let hsm = hsm_sim::remote::RemoteHsm::connect_lazy(
        &format!("https://localhost:{}", addr.port()),
        tls,
    )?;
    Ok((process, hsm))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    if args.hsm_only {
        return hsm_only().await;
    }
    let dir = tempfile::tempdir()?;
    match &args.remote_hsm {
        Some(binary) => {
            let (_process, hsm) = remote_hsm(binary, dir.path())?;
            println!(
                "HSM: {} over mutual TLS (a separate process)",
                binary.display()
            );
            run(&args, dir.path(), Arc::new(hsm), true).await
        }
        None => {
            let hsm = hsm_sim::local::LocalHsm::open(hsm_sim::local::LocalHsmConfig {
                dangerous_test_lmk: true,
                ..Default::default()
            })?;
            println!("HSM: in-process");
            run(&args, dir.path(), Arc::new(hsm), false).await
        }
    }
}

async fn run<H: hsm_api::Hsm + 'static>(
    args: &Args,
    dir: &std::path::Path,
    hsm: Arc<H>,
    remote: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let pki = sscard_kms::access::pki::DevPki::generate()?;
    let kms = sscard_kms::service::Kms::open(hsm, dir).await?;
    if args.hsm_batches > 0 {
        kms.set_hsm_batches_at_once(args.hsm_batches);
    } else if remote {
        kms.set_hsm_batches_at_once(sscard_kms::service::remote_hsm_batches());
    }
    println!("HSM batches at once: {}", kms.hsm_batches_at_once());
    let seed_start = Instant::now();
    sscard_kms::dev::dangerous_seed_test_keys(&kms).await?;
    println!(
        "seeding (2 templates, ~1000 derived keys): {:?}",
        seed_start.elapsed()
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let tls = sscard_kms::access::tls::server_config(
        &pki.server().cert_pem,
        &pki.server().key_pem,
        pki.ca_pem(),
    )?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // One station identity sends everything: its request rate is not what is measured here.
    let limits = sscard_kms::server::Limits {
        requests_per_second: 1_000_000,
        burst: 1_000_000,
        ..Default::default()
    };
    let server = tokio::spawn(sscard_kms::server::serve_with_limits(
        kms,
        listener,
        tls,
        limits,
        async {
            let _ = stopped.await;
        },
    ));

    let station = pki.client(&Identity::new(Role::Station, Some("440100"), "GZ-01")?)?;
    let client_tls = sscard_kms::access::tls::ClientTls::from_pem(
        pki.ca_pem(),
        &station.cert_pem,
        &station.key_pem,
    )?;
    // Two connections: more does not help on two cores (DEPENDENCIES.md).
    let mut channels = Vec::new();
    for _ in 0..2 {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("https://localhost:{port}"))?
                .tls_config(client_tls.config())?
                .connect()
                .await?,
        );
    }
    let keys = sscard_kms::dev::test_keys()?;
    let demo = &keys.card[0];
    let key_names: Vec<String> = if args.keys == 0 {
        Vec::new()
    } else {
        sscard_kms::card::template::Template::builtin(&demo.template)?
            .write_order()
            .take(args.keys)
            .map(|k| k.name.clone())
            .collect()
    };
    let request = pb::InjectCardKeysRequest {
        card: Some(pb::CardIdentity {
            card_identifier: demo.card_identifier.clone(),
            card_number: demo.card_number.clone(),
            social_security_number: demo.social_security_number.clone(),
            atr: hex::decode("3B6D000080318065B086843202AD932A48")?,
        }),
        template_id: demo.template.clone(),
        delivery: pb::DeliveryForm::Tr31 as i32,
        key_names,
        challenges: Vec::new(),
    };

    let semaphore = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.requests);
    for i in 0..args.requests {
        let permit = Arc::clone(&semaphore).acquire_owned().await?;
        let mut client = CardKeyServiceClient::new(channels[i % channels.len()].clone());
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let result = client.inject_card_keys(request).await;
            drop(permit);
            result.map(|r| (t.elapsed(), r.into_inner().keys.len()))
        }));
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(args.requests);
    let mut delivered = 0usize;
    for t in tasks {
        let (latency, n) = t.await??;
        latencies.push(latency);
        delivered += n;
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "{} injections ({} keys) in {:.2?} at concurrency {}: {:.0} cards/s, {:.0} keys/s; latency p50 {:.2?} p99 {:.2?} max {:.2?}",
        args.requests,
        delivered,
        elapsed,
        args.concurrency,
        args.requests as f64 / elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or_default(),
    );
    let _ = stop.send(());
    server.await??;
    Ok(())
}
