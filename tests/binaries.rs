//! The real binaries, end to end: `sscard-kms dev` and `sscard-kms serve` as child processes
//! (stopped with SIGTERM, as a supervisor stops them), driven over mutual TLS, and
//! `kms-ceremony` on what they leave behind.
//!
//! No test sleeps: a server's port is read from its stdout (`listening on …`, printed once the
//! listener is bound), and a process's end is seen as the end of its stdout. Every child is
//! killed by [`Process`]'s `Drop` if a test fails midway; every directory is a `TempDir`.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hsm_sim::crypto::kcv;
use hsm_sim::crypto::tr31;
use sscard_kms::access::identity::Identity;
use sscard_kms::access::pki::DevPki;
use sscard_kms::access::tls::ClientTls;
use sscard_kms::proto::kms::v1 as pb;
use sscard_kms::proto::kms::v1::admin_service_client::AdminServiceClient;
use sscard_kms::proto::kms::v1::card_key_service_client::CardKeyServiceClient;
use sscard_kms::proto::kms::v1::delivered_key::Form;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::common::chain::{atr, published, station_kbpk, template};
use crate::common::harness::{OFFICER, OFFICER_2, REGISTRAR, STATION, card_identity, tr31_request};
use crate::common::{Output, ceremony};

/// How long a child may take to print a line or to exit before the test gives up (a bound for a
/// hung process, not a wait: every wait ends on the event itself).
const PATIENCE: Duration = Duration::from_secs(60);

/// DOMAIN.md §2's worked card key: `STK_SSSE` of a card whose ATR ends `86843202AD932A48`.
const WORKED_STK_SSSE_KCV: &str = "32CD7C";

// --------------------------------------------------------------------------- child processes

/// A running binary with its stdout read line by line and its stderr collected. Killed (SIGKILL)
/// and reaped on drop unless it was waited for.
pub(crate) struct Process {
    name: &'static str,
    child: Option<Child>,
    lines: Receiver<String>,
    stdout: Vec<String>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

/// How a process ended.
#[derive(Debug)]
pub(crate) struct Exited {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Process {
    /// Starts `bin` with `args`: no stdin, no colour in its log, no `SSCARD_KMS_*` overrides or
    /// `RUST_LOG` inherited from the test's environment.
    fn spawn(name: &'static str, bin: &str, args: &[&str]) -> Process {
        let mut child = Command::new(bin)
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .env_remove("SSCARD_KMS_LISTEN")
            .env_remove("SSCARD_KMS_DATA_DIR")
            .env_remove("SSCARD_KMS_HSM_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
        let (send, lines) = mpsc::channel();
        // The sender is dropped at end of file: the receiver then sees the process has ended.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        // stderr is drained continuously so that a chatty log never blocks the server.
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Process {
            name,
            child: Some(child),
            lines,
            stdout: Vec::new(),
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Reads stdout until a line containing `needle`, and returns it.
    pub(crate) fn line_containing(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{} ended without printing {needle:?}\nstdout:\n{}\nstderr:\n{}",
                    self.name,
                    self.stdout.join("\n"),
                    self.stderr()
                ),
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{} printed no {needle:?} within {PATIENCE:?}\nstdout:\n{}\nstderr:\n{}",
                    self.name,
                    self.stdout.join("\n"),
                    self.stderr()
                ),
            }
        }
    }

    /// The address of the `listening on …` line: `listening on 127.0.0.1:P` (`serve`) or
    /// `listening on   https://127.0.0.1:P (mutual TLS)` (`dev`'s banner).
    pub(crate) fn listening_on(&mut self) -> SocketAddr {
        let line = self.line_containing("listening on");
        let rest = line
            .split_once("listening on")
            .map(|(_, rest)| rest.trim())
            .unwrap_or_default();
        let addr = rest.strip_prefix("https://").unwrap_or(rest);
        let addr = addr.split_whitespace().next().unwrap_or_default();
        let addr: SocketAddr = addr
            .parse()
            .unwrap_or_else(|_| panic!("{}: no address in {line:?}", self.name));
        assert!(addr.ip().is_loopback(), "{line}");
        assert_ne!(addr.port(), 0, "{line}");
        addr
    }

    /// Sends SIGTERM (what a supervisor or Ctrl-C sends) and waits for the process to end.
    pub(crate) fn terminate(self) -> Exited {
        let kill = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(kill.success(), "kill -TERM {}", self.pid());
        self.wait()
    }

    /// Kills the process with SIGKILL (no handler runs, nothing is flushed or closed) and reaps
    /// it.
    pub(crate) fn kill(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL is sent");
        child.wait().expect("the child is reaped")
    }

    /// Waits for the process to end on its own: reads stdout to its end (the child closes it
    /// when it exits), then reaps it.
    pub(crate) fn wait(mut self) -> Exited {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.stdout.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{} did not exit within {PATIENCE:?}\nstderr:\n{}",
                    self.name,
                    self.stderr()
                ),
            }
        }
        let mut child = self.child.take().expect("running");
        let status = child.wait().expect("the child is reaped");
        // The exit closed stderr too: its reader reaches end of file and has then read it all.
        if let Some(reader) = self.stderr_reader.take() {
            reader.join().expect("the stderr reader ends");
        }
        Exited {
            status,
            stdout: self.stdout.join("\n"),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `sscard-kms <args>`, started.
pub(crate) fn sscard_kms(args: &[&str]) -> Process {
    Process::spawn("sscard-kms", env!("CARGO_BIN_EXE_sscard-kms"), args)
}

/// `path` as a TOML string.
fn toml_path(path: &Path) -> String {
    toml::Value::String(path.to_str().expect("a UTF-8 temp path").to_owned()).to_string()
}

pub(crate) fn path_arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

// ---------------------------------------------------------------------------------- clients

/// A lazy mTLS channel to `addr` with the `<role>.pem/.key` pair of a PKI directory, the
/// server verified as `localhost` against the directory's `ca.pem`.
pub(crate) fn channel(addr: SocketAddr, pki: &Path, role: &str) -> Channel {
    let tls = ClientTls::from_files(
        &pki.join("ca.pem"),
        &pki.join(format!("{role}.pem")),
        &pki.join(format!("{role}.key")),
    )
    .unwrap();
    assert_eq!(tls.domain(), "localhost");
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls.config())
        .unwrap()
        .connect_lazy()
}

/// The role file name of a dev identity URI (`sscard://officer/…` → `officer`).
pub(crate) fn role(uri: &str) -> String {
    Identity::from_uri(uri).unwrap().role().to_string()
}

// ----------------------------------------------------------------------------- sscard-kms dev

/// Injects demo card 1 as the demo station (TR-31, every key); returns `(key name, KCV hex)`
/// of each key after checking the worked `STK_SSSE` by unwrapping its block.
pub(crate) async fn inject_demo_card(addr: SocketAddr, pki: &Path) -> Vec<(String, String)> {
    let keys = published();
    let demo = &keys.card[0];
    assert_eq!(demo.template, "ssc-2.0");
    let mut station = CardKeyServiceClient::new(channel(addr, pki, &role(STATION)));
    let response = station
        .inject_card_keys(tr31_request(card_identity(demo, &atr()), &demo.template))
        .await
        .unwrap()
        .into_inner();
    // Every key of ssc-2.0 but its 7 master keys, which leave only inside WRITE KEY commands.
    assert_eq!(response.keys.len(), 26, "the TR-31 keys of ssc-2.0");
    assert_eq!(response.keys.len() + 7, template("ssc-2.0").keys().len());
    assert!(response.keys.iter().all(|k| !k.key_name.starts_with("MK")));
    let stk = response
        .keys
        .iter()
        .find(|k| k.key_name == "STK_SSSE")
        .expect("STK_SSSE is delivered");
    let Some(Form::Tr31Block(block)) = &stk.form else {
        panic!("STK_SSSE: not a TR-31 block: {:?}", stk.form);
    };
    // The block really holds the worked key: unwrapped under the published station key.
    let (_, key) = tr31::unwrap(&station_kbpk(), block).unwrap();
    assert_eq!(
        kcv::compute_default(&key).unwrap().to_hex(),
        WORKED_STK_SSSE_KCV
    );
    response
        .keys
        .iter()
        .map(|k| {
            let kcv = k.kcv.as_ref().expect("a KCV");
            (k.key_name.clone(), hex::encode_upper(&kcv.value))
        })
        .collect()
}

/// `kms-ceremony audit verify --dangerous-test-lmk` on a stopped dev store: INTACT, with every
/// seal's MAC checked by the test-LMK HSM. Returns the number of MACs checked.
fn audit_intact(store: &Path) -> usize {
    let out = ceremony(
        &[
            "audit",
            "verify",
            "--data-dir",
            path_arg(store),
            "--dangerous-test-lmk",
        ],
        "",
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.last_line(), "INTACT", "{out:?}");
    let macs: usize = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("seals "))
        .and_then(|l| l.split_once('(')?.1.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no seal count in {out:?}"));
    assert!(macs > 0, "{out:?}");
    macs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_the_demo_card_stops_on_sigterm_and_restarts_on_its_data() {
    let data = tempfile::tempdir().unwrap();
    let pki = data.path().join("pki");
    let listen = ["dev", "--listen", "127.0.0.1:0", "--data-dir"];
    let args: Vec<&str> = listen.into_iter().chain([path_arg(data.path())]).collect();

    let started = Instant::now();
    let mut dev = sscard_kms(&args);
    let addr = dev.listening_on();
    let seeded_in = started.elapsed();
    let data_line = dev.line_containing("data ");
    assert!(data_line.ends_with("(seeded now)"), "{data_line}");
    let first = inject_demo_card(addr, &pki).await;
    // An auditor anchors the trail outside the service while it runs.
    let checkpoint = data.path().join("checkpoint.json");
    let server = format!("https://{addr}");
    let pem = |name: &str| pki.join(name).to_str().unwrap().to_owned();
    let out = ceremony(
        &[
            "audit",
            "checkpoint",
            "--server",
            &server,
            "--ca",
            &pem("ca.pem"),
            "--cert",
            &pem("auditor.pem"),
            "--key",
            &pem("auditor.key"),
            "--out",
            path_arg(&checkpoint),
        ],
        "",
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.last_line().starts_with("checkpoint of record "),
        "{out:?}"
    );
    // A station may not take one.
    let out = ceremony(
        &[
            "audit",
            "checkpoint",
            "--server",
            &server,
            "--ca",
            &pem("ca.pem"),
            "--cert",
            &pem("station.pem"),
            "--key",
            &pem("station.key"),
            "--out",
            path_arg(&data.path().join("no.json")),
        ],
        "",
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("role may not perform this operation"),
        "{out:?}"
    );

    let exited = dev.terminate();
    assert!(exited.status.success(), "{exited:?}");
    let macs = audit_intact(&data.path().join("store"));
    let out = ceremony(
        &[
            "audit",
            "verify",
            "--data-dir",
            path_arg(&data.path().join("store")),
            "--dangerous-test-lmk",
            "--checkpoint",
            path_arg(&checkpoint),
        ],
        "",
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.last_line(), "INTACT", "{out:?}");
    assert!(out.stdout.contains(": its MAC checked"), "{out:?}");

    // Same data directory: the store is reused, not seeded again, and the same keys come back.
    let started = Instant::now();
    let mut dev = sscard_kms(&args);
    let addr = dev.listening_on();
    let restarted_in = started.elapsed();
    let data_line = dev.line_containing("data ");
    assert!(data_line.ends_with("(existing)"), "{data_line}");
    let again = inject_demo_card(addr, &pki).await;
    assert_eq!(again, first, "the same keys, the same KCVs");
    let exited = dev.terminate();
    assert!(exited.status.success(), "{exited:?}");
    assert!(audit_intact(&data.path().join("store")) > macs);
    eprintln!("dev: first start (seeding) {seeded_in:?}, restart {restarted_in:?}");
}

/// `dev --hsm softhsm`: the same flow on the PKCS#11 backend over a SoftHSM2 token it creates in
/// its data directory — the same demo card keys and KCVs as the simulator's `dev` — and a restart
/// finds its token (by label) and its store again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_on_softhsm_delivers_the_simulators_keys_and_restarts_on_its_token() {
    let sim_data = tempfile::tempdir().unwrap();
    let p11_data = tempfile::tempdir().unwrap();
    let listen = [
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--no-metrics",
        "--data-dir",
    ];
    let sim_args: Vec<&str> = listen
        .into_iter()
        .chain([path_arg(sim_data.path())])
        .collect();
    let p11_args: Vec<&str> = listen
        .into_iter()
        .chain([path_arg(p11_data.path()), "--hsm", "softhsm"])
        .collect();

    let mut sim = sscard_kms(&sim_args);
    let addr = sim.listening_on();
    let from_sim = inject_demo_card(addr, &sim_data.path().join("pki")).await;
    assert!(sim.terminate().status.success());

    let mut p11 = sscard_kms(&p11_args);
    let addr = p11.listening_on();
    let data_line = p11.line_containing("data ");
    assert!(data_line.ends_with("(seeded now)"), "{data_line}");
    let from_token = inject_demo_card(addr, &p11_data.path().join("pki")).await;
    assert_eq!(from_token, from_sim, "the simulator's keys and KCVs");
    assert!(p11.terminate().status.success());
    assert!(p11_data.path().join("softhsm/sscard-kms-dev.pin").exists());

    let mut p11 = sscard_kms(&p11_args);
    let addr = p11.listening_on();
    let data_line = p11.line_containing("data ");
    assert!(data_line.ends_with("(existing)"), "{data_line}");
    let again = inject_demo_card(addr, &p11_data.path().join("pki")).await;
    assert_eq!(again, from_sim);
    assert!(p11.terminate().status.success());
}

/// How many releases are acknowledged before the kill.
const ACKED_BEFORE_KILL: usize = 60;
/// Injections in flight at once.
const IN_FLIGHT: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_release_and_the_crashed_store_verifies() {
    let data = tempfile::tempdir().unwrap();
    let pki = data.path().join("pki");
    let store = data.path().join("store");
    let listen = ["dev", "--listen", "127.0.0.1:0", "--data-dir"];
    let args: Vec<&str> = listen.into_iter().chain([path_arg(data.path())]).collect();
    let mut dev = sscard_kms(&args);
    let addr = dev.listening_on();

    // Injections in flight from one station connection, each acknowledged one counted.
    let keys = published();
    let demo = &keys.card[0];
    let mut request = tr31_request(card_identity(demo, &atr()), &demo.template);
    request.key_names = vec!["STK_SSSE".to_owned()];
    let station = CardKeyServiceClient::new(channel(addr, &pki, &role(STATION)));
    let (acks, mut acked) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (mut station, request, acks) = (station.clone(), request.clone(), acks.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = 0usize;
            // Until the server dies under us: every Ok is an acknowledged release.
            while station.inject_card_keys(request.clone()).await.is_ok() {
                mine += 1;
                let _ = acks.send(());
            }
            mine
        }));
    }
    drop(acks);
    for _ in 0..ACKED_BEFORE_KILL {
        acked.recv().await.expect("the injections run");
    }
    let status = dev.kill();
    assert!(!status.success(), "{status:?}");
    let mut acknowledged = 0;
    for t in tasks {
        acknowledged += t.await.unwrap();
    }
    assert!(acknowledged >= ACKED_BEFORE_KILL);

    // The crashed store, exactly as left: verified (through a repaired copy), every seal's MAC
    // checked.
    let out = ceremony(
        &[
            "audit",
            "verify",
            "--data-dir",
            path_arg(&store),
            "--dangerous-test-lmk",
        ],
        "",
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.last_line(), "INTACT", "{out:?}");
    assert!(
        out.stdout.starts_with("store not closed cleanly"),
        "{out:?}"
    );
    // Every acknowledged release is on record (a release committed but not answered may be
    // there too).
    let (records, _) = sscard_kms::state::store::Store::open_read_only(&store)
        .unwrap()
        .audit_trail()
        .unwrap();
    let released = records
        .iter()
        .filter(|r| r.action == "inject-card-keys" && r.outcome == "ok")
        .count();
    assert!(
        released >= acknowledged,
        "{released} releases on record, {acknowledged} acknowledged"
    );
    assert!(
        released <= acknowledged + IN_FLIGHT,
        "{released} {acknowledged}"
    );

    // The next start opens the same store (redb repairs it) and serves.
    let mut dev = sscard_kms(&args);
    let addr = dev.listening_on();
    let mut station = CardKeyServiceClient::new(channel(addr, &pki, &role(STATION)));
    station.inject_card_keys(request).await.unwrap();
    let exited = dev.terminate();
    assert!(exited.status.success(), "{exited:?}");
    eprintln!("SIGKILL under load: {acknowledged} acknowledged, {released} on record");
}

/// `GET /metrics` over a real TCP connection (HTTP/1.1, `Connection: close`): the body.
fn scrape(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("openmetrics-text"), "{head}");
    body.to_owned()
}

/// The value of the sample `name{labels}` in a scrape (labels in the order they are encoded).
fn sample(body: &str, name_and_labels: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_metrics_that_count_requests_keys_and_commits() {
    let data = tempfile::tempdir().unwrap();
    let pki = data.path().join("pki");
    let mut dev = sscard_kms(&[
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--data-dir",
        path_arg(data.path()),
    ]);
    let addr = dev.listening_on();
    let line = dev.line_containing("metrics ");
    let metrics: SocketAddr = line
        .split_once("http://")
        .and_then(|(_, rest)| rest.strip_suffix("/metrics"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in {line:?}"));
    assert!(metrics.ip().is_loopback());
    let next = dev.line_containing("--example inject_card");
    assert!(
        next.contains(&format!("--server https://localhost:{}", addr.port())),
        "dev prints the client command for its own address: {next}"
    );

    let before = scrape(metrics);
    assert_eq!(
        sample(&before, "sscard_hsm_state{state=\"operational\"}"),
        Some(1.0),
        "{before}"
    );
    inject_demo_card(addr, &pki).await;
    inject_demo_card(addr, &pki).await;
    // A refusal: the registrar may not inject.
    let mut registrar = CardKeyServiceClient::new(channel(addr, &pki, &role(REGISTRAR)));
    let demo = &published().card[0];
    let refused = registrar
        .inject_card_keys(tr31_request(card_identity(demo, &atr()), &demo.template))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    let after = scrape(metrics);
    let injections =
        "sscard_requests_total{service=\"sscard.kms.v1.CardKeyService\",method=\"InjectCardKeys\",";
    assert_eq!(
        sample(&after, &format!("{injections}code=\"Ok\"}}")),
        Some(2.0),
        "{after}"
    );
    assert_eq!(
        sample(&after, &format!("{injections}code=\"PermissionDenied\"}}")),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "sscard_keys_released_total{form=\"tr31\",template=\"ssc-2.0\"}"
        ),
        // Two injections of the 26 keys that leave as TR-31 (all but the 7 master keys).
        Some(52.0),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "sscard_request_duration_seconds_count{service=\"sscard.kms.v1.CardKeyService\",method=\"InjectCardKeys\"}"
        ),
        Some(3.0),
        "{after}"
    );
    let commits = sample(&after, "sscard_store_commit_requests_count").unwrap_or(0.0);
    assert!(
        commits >= 3.0,
        "every release and refusal is committed: {after}"
    );
    assert_eq!(sample(&after, "sscard_audit_unsealed_records"), Some(0.0));
    // One HSM call per card set (the refusal never reached the HSM), each timed.
    let batches = "sscard_hsm_calls_total{op=\"batch\",outcome=\"ok\"}";
    let timed = "sscard_hsm_call_duration_seconds_count{op=\"batch\"}";
    let grew =
        |name: &str| sample(&after, name).unwrap_or(0.0) - sample(&before, name).unwrap_or(0.0);
    assert_eq!(grew(batches), 2.0, "{after}");
    assert_eq!(grew(timed), 2.0, "{after}");
    // Each batch took its turn at the HSM (callers in turn, `service::hsm_turns`).
    assert_eq!(grew("sscard_hsm_turn_wait_seconds_count"), 2.0, "{after}");
    assert!(
        sample(
            &after,
            "sscard_hsm_calls_total{op=\"status\",outcome=\"ok\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "every operation is counted, status too: {after}"
    );
    let exited = dev.terminate();
    assert!(exited.status.success(), "{exited:?}");
}

// ------------------------------------------------------------ sscard-kms serve, local HSM

/// A `serve` deployment laid out in a temporary directory: PKI, HSM state, data, `kms.toml`.
pub(crate) struct Deployment {
    dir: tempfile::TempDir,
}

impl Deployment {
    /// A fresh PKI under `pki/` and a `kms.toml` with its CA as the client CA.
    pub(crate) fn new() -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::generate().unwrap();
        pki.write_to(&dir.path().join("pki")).unwrap();
        // A second officer: dual control and one share per custodian need two.
        let second = pki
            .client(&sscard_kms::access::identity::Identity::from_uri(OFFICER_2).unwrap())
            .unwrap();
        std::fs::write(dir.path().join("pki/officer-2.pem"), &second.cert_pem).unwrap();
        std::fs::write(
            dir.path().join("pki/officer-2.key"),
            second.key_pem.as_bytes(),
        )
        .unwrap();
        let this = Deployment { dir };
        this.write_config(Some(&this.pki().join("ca.pem")));
        this
    }

    fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    pub(crate) fn state_dir(&self) -> PathBuf {
        self.dir.path().join("hsm-state")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("kms.toml")
    }

    /// Writes `kms.toml` with `client_ca` as the client CA file (None: no `client_ca` line).
    fn write_config(&self, client_ca: Option<&Path>) {
        let pki = self.pki();
        let client_ca = client_ca
            .map(|ca| format!("client_ca = {}\n", toml_path(ca)))
            .unwrap_or_default();
        let text = format!(
            "listen = \"127.0.0.1:0\"\n\
             data_dir = {data}\n\
             \n\
             [tls]\n\
             cert = {cert}\n\
             key = {key}\n\
             {client_ca}\
             \n\
             [hsm]\n\
             mode = \"local\"\n\
             state_dir = {state}\n\
             \n\
             [ceremony]\n\
             officers = [{officer}, {officer_2}]\n",
            data = toml_path(&self.dir.path().join("data")),
            cert = toml_path(&pki.join("server.pem")),
            key = toml_path(&pki.join("server.key")),
            state = toml_path(&self.state_dir()),
            officer = toml_path(&pki.join("officer.pem")),
            officer_2 = toml_path(&pki.join("officer-2.pem")),
        );
        std::fs::write(self.config(), text).unwrap();
    }

    pub(crate) fn serve(&self) -> Process {
        sscard_kms(&["serve", "--config", path_arg(&self.config())])
    }

    pub(crate) fn admin(&self, addr: SocketAddr, uri: &str) -> AdminServiceClient<Channel> {
        let file = if uri == OFFICER_2 {
            "officer-2".to_owned()
        } else {
            role(uri)
        };
        AdminServiceClient::new(channel(addr, &self.pki(), &file))
    }
}

/// `kms-ceremony hsm init --state-dir <dir> --threshold T --custodian custodian-1 … --share-dir
/// <dir>-shares` for N custodians: each share in its own file.
pub(crate) fn hsm_init(state_dir: &Path, threshold: &str, shares: &str) -> Output {
    let share_dir = state_dir.with_extension("shares");
    std::fs::create_dir_all(&share_dir).unwrap();
    let names: Vec<String> = (1..=shares.parse::<u8>().unwrap())
        .map(|i| format!("custodian-{i}"))
        .collect();
    let mut args = vec![
        "hsm",
        "init",
        "--state-dir",
        path_arg(state_dir),
        "--threshold",
        threshold,
        "--share-dir",
        path_arg(&share_dir),
    ];
    for n in &names {
        args.extend(["--custodian", n.as_str()]);
    }
    ceremony(&args, "")
}

/// The shares a successful `hsm init` handed over, one file per custodian (the record names
/// each file and check value, never a share), after checking that the last line is the LMK's
/// KCV (5 bytes, upper-case hex).
pub(crate) fn issued_shares(out: &Output) -> Vec<String> {
    assert_eq!(out.code, 0, "{out:?}");
    let kcv = out.last_line();
    assert_eq!(kcv.len(), 10, "the LMK KCV: {kcv:?}");
    assert!(
        kcv.chars()
            .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c)),
        "{kcv:?}"
    );
    let shares: Vec<String> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once(": share in ")?.1.split(" (check value").next())
        .map(|path| std::fs::read_to_string(path).unwrap().trim().to_owned())
        .collect();
    for share in &shares {
        assert!(
            !out.stdout.contains(share.as_str()),
            "a share on the record"
        );
    }
    shares
}

pub(crate) async fn service_status(admin: &mut AdminServiceClient<Channel>) -> pb::ServiceStatus {
    admin
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

pub(crate) async fn unseal(
    admin: &mut AdminServiceClient<Channel>,
    share: &str,
) -> Result<pb::UnsealHsmResponse, tonic::Status> {
    admin
        .unseal_hsm(pb::UnsealHsmRequest {
            share: share.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_a_local_hsm_starts_sealed_and_is_unsealed_by_two_custodians() {
    let deployment = Deployment::new();
    let shares = issued_shares(&hsm_init(&deployment.state_dir(), "2", "3"));
    assert_eq!(shares.len(), 3, "{shares:?}");
    for (i, share) in shares.iter().enumerate() {
        assert!(share.starts_with(&format!("lmk1-0{}-", i + 1)), "{share}");
    }
    // A well-formed share of another LMK.
    let other_state = tempfile::tempdir().unwrap();
    let foreign = issued_shares(&hsm_init(&other_state.path().join("hsm"), "2", "3"));

    let mut kms = deployment.serve();
    let addr = kms.listening_on();
    let mut officer = deployment.admin(addr, OFFICER);
    let status = service_status(&mut officer).await;
    assert_eq!(status.hsm_state, "sealed");
    assert!(!status.hsm_is_secure, "the simulator says it is not an HSM");
    assert!(!status.hsm_dangerous_test_lmk);

    // Only an officer unseals; a refused caller's share does not count (else share 1 would be
    // refused below as already submitted).
    for uri in [REGISTRAR, STATION] {
        let mut admin = deployment.admin(addr, uri);
        let refused = unseal(&mut admin, &shares[0]).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{uri}: {refused:?}");
    }

    let progress = unseal(&mut officer, &shares[0]).await.unwrap();
    assert_eq!((progress.submitted, progress.threshold), (1, 2));
    assert!(!progress.unsealed);
    assert_eq!(service_status(&mut officer).await.hsm_state, "sealed");

    // The HSM refuses bad shares (and they do not count for their custodian).
    let mut officer_2 = deployment.admin(addr, OFFICER_2);
    for garbage in ["not-a-share", "lmk1-02-00", foreign[1].as_str()] {
        let refused = unseal(&mut officer_2, garbage).await.unwrap_err();
        assert_eq!(
            refused.code(),
            Code::InvalidArgument,
            "{garbage}: {refused:?}"
        );
    }
    let repeated = unseal(&mut officer_2, &shares[0]).await.unwrap_err();
    assert_eq!(repeated.code(), Code::InvalidArgument, "{repeated:?}");
    // One share per custodian: officer-1 cannot bring a second.
    let twice = unseal(&mut officer, &shares[1]).await.unwrap_err();
    assert_eq!(twice.code(), Code::PermissionDenied, "{twice:?}");

    let progress = unseal(&mut officer_2, &shares[1]).await.unwrap();
    assert_eq!((progress.submitted, progress.threshold), (2, 2));
    assert!(progress.unsealed);
    assert_eq!(service_status(&mut officer).await.hsm_state, "operational");

    let toml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/ssc-2.0.toml"),
    )
    .unwrap();
    let summary = officer
        .load_template(pb::LoadTemplateRequest { toml })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.id, "ssc-2.0");
    assert_eq!(summary.keys, 33);
    assert_eq!(service_status(&mut officer).await.templates, ["ssc-2.0"]);

    drop((officer, officer_2));
    let exited = kms.terminate();
    assert!(exited.status.success(), "{exited:?}");
    unseals_on_record(&deployment.dir.path().join("data/store"));

    // The LMK is never stored: a restart is sealed again; the template is still there; the
    // other two custodians unseal it (the same LMK, rebuilt from another pair of shares).
    let mut kms = deployment.serve();
    let addr = kms.listening_on();
    let mut officer = deployment.admin(addr, OFFICER);
    let status = service_status(&mut officer).await;
    assert_eq!(status.hsm_state, "sealed");
    assert_eq!(status.templates, ["ssc-2.0"]);
    assert!(!unseal(&mut officer, &shares[2]).await.unwrap().unsealed);
    let mut officer_2 = deployment.admin(addr, OFFICER_2);
    assert!(unseal(&mut officer_2, &shares[0]).await.unwrap().unsealed);
    assert_eq!(service_status(&mut officer).await.hsm_state, "operational");
    drop((officer, officer_2));
    let exited = kms.terminate();
    assert!(exited.status.success(), "{exited:?}");
}

/// The trail of a `serve` store after unsealing: every share went to the HSM only once its
/// submission was on record; the operational unseal and the new audit key are one commit, the
/// first sealed; the records from before the key are in one gap; the trail verifies INTACT.
fn unseals_on_record(store: &Path) {
    let (records, seals) = sscard_kms::state::store::Store::open_read_only(store)
        .unwrap()
        .audit_trail()
        .unwrap();
    let actions: Vec<&str> = records.iter().map(|r| r.action.as_str()).collect();
    for (i, r) in records.iter().enumerate() {
        // (A custodian's second share is refused before anything goes to the HSM.)
        let answered = r.action == "unseal-hsm" && r.outcome == "ok"
            || r.action == "administer"
                && r.subject == "unseal-hsm"
                && r.actor.contains("officer")
                && !r.outcome.contains("already submitted");
        if answered {
            // The same commit may first store the new audit key.
            let before = actions[..i]
                .iter()
                .rev()
                .find(|a| **a != "create-audit-key");
            assert_eq!(before, Some(&"unseal-hsm-submit"), "{actions:?}");
        }
    }
    let key = records
        .iter()
        .position(|r| r.action == "create-audit-key")
        .unwrap();
    let unsealed = &records[key + 1];
    assert_eq!(unsealed.action, "unseal-hsm");
    assert!(
        unsealed.subject.ends_with("HSM operational"),
        "{unsealed:?}"
    );
    assert_eq!(unsealed.time_ms, records[key].time_ms, "one commit");
    assert_eq!(
        seals.first().unwrap().seq,
        unsealed.seq,
        "the first seal is that commit's"
    );
    let gaps: Vec<_> = records
        .iter()
        .filter(|r| r.action == "audit-seal-gap")
        .collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(
        gaps[0].subject,
        "records from 1 on are not sealed by the HSM"
    );
    let out = ceremony(&["audit", "verify", "--data-dir", path_arg(store)], "");
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.last_line(), "INTACT", "{out:?}");
}

// ------------------------------------------------------------------------- fail closed

/// `serve` must refuse to start: non-zero exit, never a `listening on` line, and `needle` in
/// its stderr.
fn refuses_to_start(deployment: &Deployment, needle: &str) {
    let exited = deployment.serve().wait();
    assert!(!exited.status.success(), "{exited:?}");
    assert!(!exited.stdout.contains("listening on"), "{exited:?}");
    assert!(exited.stderr.contains(needle), "{needle:?} in {exited:?}");
}

#[test]
fn serve_refuses_to_start_without_a_proper_client_ca() {
    let deployment = Deployment::new();
    let init = hsm_init(&deployment.state_dir(), "2", "2");
    assert_eq!(init.code, 0, "{init:?}");
    let pki = deployment.pki();

    deployment.write_config(None);
    refuses_to_start(&deployment, "missing field `client_ca`");

    deployment.write_config(Some(&pki.join("station.pem")));
    refuses_to_start(
        &deployment,
        "client CA: holds a certificate that is not a CA",
    );

    deployment.write_config(Some(&pki.join("server.key")));
    refuses_to_start(
        &deployment,
        "client CA: holds something other than certificates",
    );

    let empty = deployment.dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    deployment.write_config(Some(&empty));
    refuses_to_start(&deployment, "client CA: no certificate");

    // The same deployment with its CA starts (so the refusals above were the CA's).
    deployment.write_config(Some(&pki.join("ca.pem")));
    let mut kms = deployment.serve();
    kms.listening_on();
    let exited = kms.terminate();
    assert!(exited.status.success(), "{exited:?}");
}

#[test]
fn hsm_init_refuses_a_second_lmk_and_a_threshold_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hsm");
    assert_eq!(issued_shares(&hsm_init(&state, "2", "3")).len(), 3);
    let state_file: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();

    let again = hsm_init(&state, "2", "3");
    assert_eq!(again.code, 2, "{again:?}");
    assert!(again.stderr.contains("already has an LMK"), "{again:?}");
    assert!(!again.stdout.contains("share"), "{again:?}");
    for (path, bytes) in &state_file {
        assert_eq!(&std::fs::read(path).unwrap(), bytes, "{}", path.display());
    }

    // No dual control: refused, and nothing is created.
    let single = dir.path().join("single");
    let one = hsm_init(&single, "1", "3");
    assert_eq!(one.code, 2, "{one:?}");
    assert!(one.stderr.contains("2 <= threshold"), "{one:?}");
    assert!(one.stdout.is_empty(), "{one:?}");
    assert!(
        !single.exists() || std::fs::read_dir(&single).unwrap().next().is_none(),
        "a refused init leaves no state"
    );
}
