//! `sscard-kms`: the key service. Argument parsing and signal handling only; the work is in the
//! library (`sscard_kms::dev::run`, `sscard_kms::server::run_configured`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sscard_kms::state::postgres::PostgresConfig;

/// The heap of the whole process (the `mimalloc` feature, on by default: see the workspace's
/// `Cargo.toml`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The province's key-management service for social security cards.
#[derive(Debug, Parser)]
#[command(name = "sscard-kms", version)]
struct Cli {
    /// Log format on stderr: `text` for people, `json` (one object per line) for a collector.
    /// The level comes from `RUST_LOG` (default `info`: one line per request).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DevHsmArg {
    Sim,
    Softhsm,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A complete local KMS for development: in-process HSM on the published test LMK, published
    /// test keys, a dev PKI, demo station, PSAM line and cards.
    Dev {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// Where the store, the HSM state and the dev PKI live.
        #[arg(long, default_value = "./kms-data")]
        data_dir: PathBuf,
        /// Where Prometheus metrics are served (plain HTTP, `GET /metrics`); port 0 picks a free
        /// one, printed at start.
        #[arg(long, default_value = "127.0.0.1:0")]
        metrics_listen: SocketAddr,
        /// Serve no metrics.
        #[arg(long)]
        no_metrics: bool,
        /// The HSM: `sim` (the in-process simulator) or `softhsm` (the PKCS#11 backend on a
        /// throwaway SoftHSM2 token in the data directory); both on the published test LMK.
        #[arg(long, value_enum, default_value_t = DevHsmArg::Sim)]
        hsm: DevHsmArg,
        /// The store: the embedded file under the data directory (default), or a
        /// `postgres://user@host:port/db` URL (no password in it).
        #[arg(long)]
        store: Option<String>,
        #[command(flatten)]
        postgres: PostgresArgs,
    },
    /// The store, offline.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Serve a real deployment from its configuration file (see `sscard_kms::server::config`).
    Serve {
        #[arg(long)]
        config: PathBuf,
        /// DANGEROUS, tests only: accept an HSM on the published test LMK (refused otherwise;
        /// every key under it is public).
        #[arg(long)]
        dangerous_allow_test_lmk: bool,
    },
}

/// How to reach a PostgreSQL store besides its URL.
#[derive(Debug, clap::Args)]
struct PostgresArgs {
    /// The file whose first line is the PostgreSQL password.
    #[arg(long)]
    store_password_file: Option<PathBuf>,
    /// The CA bundle of the PostgreSQL server's certificate (TLS unless `sslmode=disable`).
    #[arg(long)]
    store_ca: Option<PathBuf>,
}

impl PostgresArgs {
    fn config(&self, url: &str) -> sscard_kms::Result<PostgresConfig> {
        PostgresConfig::from_parts(
            url,
            self.store_password_file.as_deref(),
            self.store_ca.as_deref(),
        )
    }
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Copies a redb store (records and the whole audit chain) into an empty PostgreSQL store
    /// and verifies the copy. Neither may be in use.
    Migrate {
        /// `redb DIR`: the engine and the store directory (`<data_dir>/store`).
        #[arg(long, num_args = 2, value_names = ["ENGINE", "DIR"])]
        from: Vec<String>,
        /// The PostgreSQL URL (no password in it).
        #[arg(long)]
        to: String,
        #[command(flatten)]
        postgres: PostgresArgs,
    },
}

/// Completes on Ctrl-C or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled (once serving): a signal that comes while the service is still starting
/// — its address already printed — then stops it cleanly instead of killing it. Call it inside
/// the runtime.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::interrupt())
            .and_then(|interrupt| Ok((interrupt, signal(SignalKind::terminate())?)))
            .ok()
    };
    async move {
        #[cfg(unix)]
        if let Some((mut interrupt, mut terminate)) = signals {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sscard-kms: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = shutdown_signal();
        match cli.command {
            Command::Dev {
                listen,
                data_dir,
                metrics_listen,
                no_metrics,
                hsm,
                store,
                postgres,
            } => {
                let store = store
                    .filter(|s| s != "redb")
                    .map(|url| postgres.config(&url))
                    .transpose()?;
                let bind = |addr: SocketAddr| async move {
                    tokio::net::TcpListener::bind(addr).await.map_err(|source| {
                        sscard_kms::Error::File {
                            path: PathBuf::from(addr.to_string()),
                            source,
                        }
                    })
                };
                let listener = bind(listen).await?;
                let metrics = match no_metrics {
                    true => None,
                    false => Some(bind(metrics_listen).await?),
                };
                let hsm = match hsm {
                    DevHsmArg::Sim => sscard_kms::dev::DevHsm::Simulator,
                    DevHsmArg::Softhsm => sscard_kms::dev::DevHsm::SoftHsm,
                };
                sscard_kms::dev::run(listener, metrics, &data_dir, hsm, store, shutdown).await
            }
            Command::Store {
                command: StoreCommand::Migrate { from, to, postgres },
            } => {
                let [engine, dir] = from.as_slice() else {
                    unreachable!("clap takes two values");
                };
                if engine != "redb" {
                    eprintln!("sscard-kms: --from takes `redb DIR`");
                    return Err(sscard_kms::Error::InvalidArgument {
                        field: "--from",
                        reason: sscard_kms::error::Refusal::ConfigInvalid,
                    });
                }
                let target = postgres.config(&to)?;
                let copied = sscard_kms::state::migrate::redb_to_postgres(
                    std::path::Path::new(dir),
                    &target,
                )?;
                println!(
                    "copied {} rows, {} audit records and {} seals from {dir} to {target}{}",
                    copied.rows,
                    copied.records,
                    copied.seals,
                    if copied.repaired_copy {
                        " (the source was not closed cleanly: read through a repaired copy)"
                    } else {
                        ""
                    }
                );
                println!("VERIFIED");
                Ok(())
            }
            Command::Serve {
                config,
                dangerous_allow_test_lmk,
            } => {
                let mut config = sscard_kms::server::config::Config::load(&config)?;
                config.dangerous_allow_test_lmk = dangerous_allow_test_lmk;
                sscard_kms::server::run_configured(config, shutdown).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sscard-kms: {e}");
            ExitCode::FAILURE
        }
    }
}
