//! `kms-ceremony`: the security officers' command line. Argument parsing only; the work is in
//! `sscard_kms::ceremony`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sscard_kms::ceremony::{audit, calc, hsm, input::Stdin, registry, remote};
use sscard_kms::state::postgres::PostgresConfig;
use sscard_kms::state::store::StoreLocation;

/// Key-ceremony tools for sscard-kms. Secrets are read from standard input, never from arguments.
#[derive(Debug, Parser)]
#[command(name = "kms-ceremony", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Offline calculators: KCVs, derivations, MACs, TR-31 blocks, SSC factors.
    #[command(subcommand)]
    Calc(calc::Calc),
    /// The audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The in-process HSM of a `serve` deployment with `[hsm] mode = "local"`.
    #[command(subcommand)]
    Hsm(HsmCommand),
    /// The registry review: submit applicant files (city registrars), accept rows by hand
    /// (provincial registrars), show a batch.
    #[command(subcommand)]
    Registry(registry::Registry),
    /// Ceremonies against the running service, as the officer (or auditor) of `--cert`:
    /// unseal, the officer registry, dual-control requests, component ceremonies, keys.
    /// Secrets come from the terminal without echo, or from stdin.
    Service {
        #[command(flatten)]
        conn: remote::Connection,
        #[command(subcommand)]
        job: remote::Job,
    },
}

#[derive(Debug, Subcommand)]
enum HsmCommand {
    /// Create the LMK, split into one share per custodian, and hand each share to its own
    /// custodian only: on a terminal one custodian at a time (shown once, its check value typed
    /// back, the screen cleared), or with `--share-dir` one file per custodian. Prints the
    /// ceremony record: each custodian's check value and the LMK's KCV, never a share.
    Init {
        /// The HSM state directory (`[hsm] state_dir`, default `<data_dir>/hsm`).
        #[arg(long)]
        state_dir: std::path::PathBuf,
        /// Shares needed to unseal (at least 2: dual control).
        #[arg(long)]
        threshold: u8,
        /// A custodian's name (their officer name), once per custodian: one share each.
        #[arg(long = "custodian", required = true)]
        custodians: Vec<String>,
        /// Write each share to `<DIR>/<custodian>.share` (0600) instead of the terminal.
        #[arg(long)]
        share_dir: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify the hash chain, the store's head and the seals of a stopped server's store,
    /// offline (a store left by a crash is verified through a repaired copy). Prints the
    /// counts and, last, INTACT, UNSEALED (records after the last HSM seal) or BROKEN with the
    /// first problem; exit code 1 unless INTACT.
    Verify {
        /// The store directory (`<data-dir>/store` for `sscard-kms dev`).
        #[arg(long, required_unless_present = "store", conflicts_with = "store")]
        data_dir: Option<std::path::PathBuf>,
        /// A PostgreSQL store instead: its `postgres://user@host:port/db` URL (no password in
        /// it). The service may be running on it: one snapshot of its last commit is verified.
        #[arg(long)]
        store: Option<String>,
        /// The file whose first line is the PostgreSQL password.
        #[arg(long, requires = "store")]
        store_password_file: Option<std::path::PathBuf>,
        /// The CA bundle of the PostgreSQL server's certificate.
        #[arg(long, requires = "store")]
        store_ca: Option<std::path::PathBuf>,
        /// Also check every seal's MAC through an in-process HSM on the published test LMK
        /// (development stores only).
        #[arg(long)]
        dangerous_test_lmk: bool,
        /// A checkpoint file from `audit checkpoint`: the chain must still reach it.
        #[arg(long)]
        checkpoint: Option<std::path::PathBuf>,
    },
    /// Ask the running service for a checkpoint of its audit chain (the head, MACed by the
    /// HSM), as an auditor or officer over mutual TLS, and write it to a file to keep outside
    /// the service.
    Checkpoint {
        /// The service, e.g. `https://kms.internal:50051`.
        #[arg(long)]
        server: String,
        /// The CA of the service's certificate (PEM).
        #[arg(long)]
        ca: std::path::PathBuf,
        /// The auditor's (or officer's) certificate and key (PEM).
        #[arg(long)]
        cert: std::path::PathBuf,
        #[arg(long)]
        key: std::path::PathBuf,
        /// The name the service's certificate is for (default `localhost`).
        #[arg(long)]
        domain: Option<String>,
        /// Where to write the checkpoint (JSON).
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

/// The store `audit verify` reads: a redb directory, or a PostgreSQL database.
fn store_location(
    data_dir: Option<&std::path::Path>,
    url: Option<&str>,
    password_file: Option<&std::path::Path>,
    ca: Option<&std::path::Path>,
) -> sscard_kms::Result<StoreLocation> {
    match (data_dir, url) {
        (Some(dir), _) => Ok(StoreLocation::Redb(dir.to_owned())),
        (None, Some(url)) => Ok(StoreLocation::Postgres(Box::new(
            PostgresConfig::from_parts(url, password_file, ca)?,
        ))),
        (None, None) => unreachable!("clap requires one"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Calc(cmd) => calc::run(cmd, &mut Stdin),
        Command::Registry(cmd) => registry::run(cmd),
        Command::Service { conn, job } => remote::run(conn, job, &mut Stdin),
        Command::Hsm(HsmCommand::Init {
            state_dir,
            threshold,
            custodians,
            share_dir,
        }) => hsm::handover(share_dir.as_deref())
            .and_then(|mut h| hsm::init(state_dir, *threshold, custodians, h.as_mut())),
        Command::Audit(AuditCommand::Checkpoint {
            server,
            ca,
            cert,
            key,
            domain,
            out,
        }) => sscard_kms::access::tls::ClientTls::from_files(ca, cert, key)
            .map(|tls| match domain {
                Some(d) => tls.with_domain(d.clone()),
                None => tls,
            })
            .and_then(|tls| audit::checkpoint(server, &tls, out)),
        Command::Audit(AuditCommand::Verify {
            data_dir,
            store,
            store_password_file,
            store_ca,
            dangerous_test_lmk,
            checkpoint,
        }) => {
            let location = match store_location(
                data_dir.as_deref(),
                store.as_deref(),
                store_password_file.as_deref(),
                store_ca.as_deref(),
            ) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("kms-ceremony: {e}");
                    return ExitCode::from(2);
                }
            };
            let checkpoint = match checkpoint.as_deref().map(audit::read_checkpoint) {
                Some(Ok(c)) => Some(c),
                Some(Err(e)) => {
                    eprintln!("kms-ceremony: {e}");
                    return ExitCode::from(2);
                }
                None => None,
            };
            let report = if *dangerous_test_lmk {
                audit::verify_with_test_lmk_at(&location, checkpoint.as_ref())
            } else {
                audit::verify_at(&location, None, checkpoint.as_ref())
            };
            match report {
                Ok(report) => {
                    print!("{}", report.render());
                    return if audit::verdict(&report).is_ok() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    };
                }
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("kms-ceremony: {err}");
            ExitCode::from(2)
        }
    }
}
