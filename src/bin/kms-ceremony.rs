//! `kms-ceremony`: the security officers' command line. Argument parsing only; the work is in
//! `sscard_kms::ceremony`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sscard_kms::ceremony::{audit, calc, hsm, input::Stdin, registry};

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
}

#[derive(Debug, Subcommand)]
enum HsmCommand {
    /// Create the LMK, split into custodian shares; prints each share once and the LMK's KCV.
    Init {
        /// The HSM state directory (`[hsm] state_dir`, default `<data_dir>/hsm`).
        #[arg(long)]
        state_dir: std::path::PathBuf,
        /// Shares needed to unseal (at least 2: dual control).
        #[arg(long)]
        threshold: u8,
        /// Shares issued, one per custodian.
        #[arg(long)]
        shares: u8,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify the hash chain and the seals of a stopped server's store, offline. Prints the
    /// counts and, last, INTACT or BROKEN with the first broken link (exit code 1).
    Verify {
        /// The store directory (`<data-dir>/store` for `sscard-kms dev`).
        #[arg(long)]
        data_dir: std::path::PathBuf,
        /// Also check every seal's MAC through an in-process HSM on the published test LMK
        /// (development stores only).
        #[arg(long)]
        dangerous_test_lmk: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Calc(cmd) => calc::run(cmd, &mut Stdin),
        Command::Registry(cmd) => registry::run(cmd),
        Command::Hsm(HsmCommand::Init {
            state_dir,
            threshold,
            shares,
        }) => match hsm::init(state_dir, *threshold, *shares) {
            // Printed straight from the zeroizing buffer: the shares are never copied.
            Ok(text) => {
                print!("{}", &*text);
                return ExitCode::SUCCESS;
            }
            Err(e) => Err(e),
        },
        Command::Audit(AuditCommand::Verify {
            data_dir,
            dangerous_test_lmk,
        }) => {
            let report = if *dangerous_test_lmk {
                audit::verify_with_test_lmk(data_dir)
            } else {
                audit::verify(data_dir, None)
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
