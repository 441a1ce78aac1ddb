//! `hsm-sim`: the HSM simulator as a separate process, served over gRPC with mutual TLS.
//!
//! ```text
//! hsm-sim serve --listen 127.0.0.1:7100 --cert server.pem --key server.key \
//!               --client-ca ca.pem --state-dir DIR [--dangerous-test-lmk]
//! ```
//!
//! Prints one line `listening on <addr>` on stdout once the socket is bound (bind port 0 and
//! read it to learn the port); logs to stderr (`RUST_LOG`, default `info`); stops on SIGTERM or
//! Ctrl-C. The LMK lifecycle (init, unseal, seal, tamper, status) happens through the RPCs.
//! ⚠️ A simulator, not an HSM: never protect production keys with it.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use hsm_sim::local::{LocalHsm, LocalHsmConfig};
use hsm_sim::remote::{HsmServer, ServerTls};
use tokio::net::TcpListener;

/// The heap of the whole process (the `mimalloc` feature, on by default: see the workspace's
/// `Cargo.toml`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "hsm-sim",
    version,
    about = "HSM simulator for sscard-kms (not an HSM)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serves the HSM over gRPC with mutual TLS.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (see the `listening on` line).
    #[arg(long, default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    /// The server's certificate chain, PEM, leaf first.
    #[arg(long)]
    cert: PathBuf,
    /// The server's private key, PEM.
    #[arg(long)]
    key: PathBuf,
    /// CA certificate(s) that issue client certificates, PEM. Required: the HSM never serves a
    /// client without a certificate.
    #[arg(long)]
    client_ca: PathBuf,
    /// Directory of the HSM's persistent state (the LMK under its shares' protection).
    #[arg(long)]
    state_dir: PathBuf,
    /// Use the fixed, published test LMK instead of a secret one. Tests only.
    #[arg(long)]
    dangerous_test_lmk: bool,
    /// Keys kept unwrapped in the hot-key cache.
    #[arg(long, default_value_t = 1024)]
    cache_capacity: usize,
    /// Key operations computing at once, off the async workers (0 = one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %with_sources(err.as_ref()), "hsm-sim stopped");
            ExitCode::FAILURE
        }
    }
}

/// An error and its sources on one line (tonic's transport error alone says only "transport
/// error"; the reason, e.g. a key that does not match its certificate, is in its source).
fn with_sources(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let tls = ServerTls::from_pem_files(&args.cert, &args.key, &args.client_ca)?;
    if args.dangerous_test_lmk {
        tracing::warn!("DANGEROUS: running on the published test LMK; tests only");
    }
    let hsm = LocalHsm::open(LocalHsmConfig {
        state_dir: Some(args.state_dir.clone()),
        dangerous_test_lmk: args.dangerous_test_lmk,
        cache_capacity: args.cache_capacity,
        self_test: hsm_sim::selftest::run,
        workers: args.workers,
    })?;
    let server = HsmServer::new(Arc::new(hsm), &tls)?;
    let listener = TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {addr}")?;
        stdout.flush()?;
    }
    tracing::info!(%addr, state_dir = %args.state_dir.display(), "serving the HSM over mutual TLS");
    server.serve(listener, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("interrupted"),
        () = terminate => tracing::info!("terminated"),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
