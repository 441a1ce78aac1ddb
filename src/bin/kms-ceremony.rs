//! `kms-ceremony`: the security officers' command line. Argument parsing only; the work is in
//! `sscard_kms::ceremony`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sscard_kms::ceremony::{calc, input::Stdin};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Calc(cmd) => calc::run(cmd, &mut Stdin),
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
