//! `writ`: the appliance and its CLI. Built so far: `writ keys` (key custody). `writ serve`,
//! `writ admin`, `writ agent` and `writ audit` are not built yet (see the README).
#![forbid(unsafe_code)]

mod keys;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// writ: hardware-rooted authorization of autonomous execution.
#[derive(Debug, Parser)]
#[command(name = "writ", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate and inspect signing keys held in a PKCS#11 token or a TPM.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WRIT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,tss_esapi=off")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keys(cmd) => keys::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("writ: error: {e}");
            // 2 is "error", which every caller treats as a refusal (0 allow, 1 deny, 2 error).
            ExitCode::from(2)
        }
    }
}
