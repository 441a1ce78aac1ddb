//! A throwaway PostgreSQL cluster for tests and benchmarks (never for a deployment): `initdb`
//! in a temporary directory (as the `postgres` user when run as root: `initdb` refuses root),
//! listening on 127.0.0.1 and a free port, with TLS (a dev PKI's server certificate) and
//! SCRAM passwords only — the path a deployment takes.
//!
//! The server runs under a small shell that holds a pipe from this process: when the process
//! ends, however it ends, the pipe closes and the shell stops the server and deletes the
//! directory. Readiness is the server's own "ready to accept connections" line, not a poll.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use super::PostgresConfig;
use crate::access::pki::DevPki;

/// The superuser of the test cluster.
const SUPERUSER: &str = "kms";
/// Its password (a throwaway cluster's; given to clients through a file, as in deployment).
const PASSWORD: &str = "test-cluster-password";

/// A running test cluster.
#[derive(Debug)]
pub struct TestCluster {
    dir: PathBuf,
    port: u16,
    _server: Mutex<Child>,
    next_db: AtomicUsize,
}

/// Where the PostgreSQL server binaries are: `$SSCARD_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` holding `initdb`.
pub fn binaries() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SSCARD_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn run(command: &mut Command) -> Result<(), String> {
    let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program` as the cluster's owner: the `postgres` user when this process is root.
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl TestCluster {
    /// The cluster of this process, started at the first call; `Err` says why there is none
    /// (no PostgreSQL binaries, or they failed).
    pub fn shared() -> Result<&'static TestCluster, String> {
        static CLUSTER: OnceLock<Result<TestCluster, String>> = OnceLock::new();
        CLUSTER
            .get_or_init(|| match binaries() {
                Some(bin) => TestCluster::start(&bin),
                None => Err("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin, \
                             or set SSCARD_PG_BIN); .ci/run installs postgresql-15"
                    .to_owned()),
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    fn start(bin: &Path) -> Result<TestCluster, String> {
        let dir = std::env::temp_dir().join(format!(
            "sscard-pg-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let pki = DevPki::generate().map_err(|e| e.to_string())?;
        let write = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))
        };
        write("ca.pem", pki.ca_pem())?;
        write("server.crt", &pki.server().cert_pem)?;
        write("server.key", &pki.server().key_pem)?;
        write("password", &format!("{PASSWORD}\n"))?;
        if is_root() {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir))?;
        }
        run(Command::new("chmod")
            .arg("0600")
            .arg(dir.join("server.key")))?;
        let data = dir.join("data");
        run(as_owner(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--no-locale",
                "--auth=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", dir.join("password").display())))?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        // The shell stops the server when this process's end of the pipe closes.
        let script = format!(
            "\"$0\" -D \"$1\" -p {port} -k \"$2\" -c listen_addresses=127.0.0.1 -c ssl=on \
             -c ssl_cert_file=\"$2/server.crt\" -c ssl_key_file=\"$2/server.key\" \
             -c max_connections=200 -c fsync=on -c synchronous_commit=on & pid=$!; \
             read _; kill -INT $pid; wait $pid; rm -rf \"$2\""
        );
        let mut server = as_owner(Path::new("/bin/sh"))
            .arg("-c")
            .arg(script)
            .arg(bin.join("postgres"))
            .arg(&data)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("postgres: {e}"))?;
        let stderr = server.stderr.take().ok_or("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        loop {
            match lines.next() {
                Some(Ok(line)) => {
                    let ready = line.contains("ready to accept connections");
                    seen.push(line);
                    if ready {
                        break;
                    }
                }
                _ => return Err(format!("postgres did not start:\n{}", seen.join("\n"))),
            }
        }
        // Keep draining its log so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Ok(TestCluster {
            dir,
            port,
            _server: Mutex::new(server),
            next_db: AtomicUsize::new(0),
        })
    }

    /// The port the cluster listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The file holding the password.
    pub fn password_file(&self) -> PathBuf {
        self.dir.join("password")
    }

    /// The CA of the server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The URL of `database` (TLS, no password in it).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@localhost:{}/{database}?hostaddr=127.0.0.1&sslmode=require",
            self.port
        )
    }

    /// The store settings of `database`: URL, password file, CA.
    pub fn config(&self, database: &str) -> PostgresConfig {
        PostgresConfig::from_parts(
            &self.url(database),
            Some(&self.password_file()),
            Some(&self.ca_file()),
        )
        .unwrap_or_else(|e| panic!("the test cluster's settings: {e}"))
    }

    /// Runs SQL as the superuser through `psql` on the server's socket.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let bin = binaries().ok_or("no binaries")?;
        let mut child = as_owner(&bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                database,
            ])
            .env("PGPASSWORD", PASSWORD)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        child
            .stdin
            .take()
            .ok_or("no stdin")?
            .write_all(sql.as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A new, empty database of its own (`kms_test_<n>`), and its store settings.
    pub fn new_database(&self) -> (String, PostgresConfig) {
        let n = self.next_db.fetch_add(1, Ordering::SeqCst);
        let name = format!("kms_test_{}_{n}", std::process::id());
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let config = self.config(&name);
        (name, config)
    }
}

/// The shared cluster, or `None` after printing why PostgreSQL tests are skipped (a panic
/// instead when `SSCARD_REQUIRE_POSTGRES` is set, as `.ci/run` sets it).
pub fn cluster_or_skip(test: &str) -> Option<&'static TestCluster> {
    match TestCluster::shared() {
        Ok(c) => Some(c),
        Err(why) if std::env::var_os("SSCARD_REQUIRE_POSTGRES").is_some() => {
            panic!("{test} on PostgreSQL: {why} (SSCARD_REQUIRE_POSTGRES is set)")
        }
        Err(why) => {
            eprintln!("SKIPPED {test} on PostgreSQL: {why}");
            None
        }
    }
}
