//! `writ`: the appliance and its CLI. Built so far: `writ keys` (key custody), `writ
//! verify-quote` (TPM quote verification, tpm2-tools formats), `writ eventlog`, `writ appraise`
//! and `writ reference capture` (measured boot), `writ serve` (enrollment, admin operations,
//! the decision log), `writ admin`, `writ agent enroll` and `writ audit`. Attestation, issuance
//! and TLS are not built yet (see the README).
#![forbid(unsafe_code)]

mod admin;
mod agent;
mod audit;
use writ_client as client;
mod dev;
mod holder_tls;
mod keys;
mod measured_boot;
mod serve;
mod verify_quote;
mod verify_signature;

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
    /// Verify a TPM2_Quote made by tpm2-tools (as tpm2_checkquote does). Exit 0 verified, 1
    /// rejected with the failed check named, 2 usage or input error.
    VerifyQuote(verify_quote::VerifyQuote),
    /// Verify a signature or a DSSE envelope from the signing service against the trust
    /// bundle (and, with --inclusion, its record in the log), offline. Exit 0 verified, 1
    /// refused with the failed check named, 2 usage or input error.
    VerifySignature(verify_signature::VerifySignature),
    /// Read firmware event logs: typed events, replay, comparison with PCR values.
    #[command(subcommand)]
    Eventlog(measured_boot::EventlogCommand),
    /// Appraise a verified quote and its event log against a reference profile; prints the EAR.
    /// Exit 0 affirming, 1 anything else (the reasons are named), 2 usage or input error.
    Appraise(measured_boot::Appraise),
    /// Reference-value profiles.
    #[command(subcommand)]
    Reference(measured_boot::ReferenceCommand),
    /// Audit a decision log: checkpoints, consistency, inclusion, lineage. Exit 0 verified, 1 a
    /// finding, 2 usage or network error.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Run the appliance (built so far: enrollment, admin operations, the decision log and its
    /// read routes; plain HTTP on loopback).
    Serve(serve::Serve),
    /// The appliance's admin operations. Exit 0 done, 1 refused, 2 error.
    Admin(admin::Admin),
    /// The runtime's agent (built so far: enrollment).
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Tools for the local dev stack (simulated measured boot for swtpm).
    #[command(subcommand)]
    Dev(dev::DevCommand),
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
        Command::Dev(cmd) => dev::run(cmd),
        Command::Agent(cmd) => {
            return match agent::run(cmd) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("writ agent: error: {e}");
                    ExitCode::from(e.exit_code())
                }
            };
        }
        Command::Admin(a) => return admin::run(a),
        Command::Serve(args) => {
            return match serve::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("writ serve: error: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Command::VerifyQuote(args) => return verify_quote::run(args),
        Command::VerifySignature(args) => return verify_signature::run(args),
        Command::Eventlog(cmd) => return measured_boot::eventlog(cmd),
        Command::Appraise(args) => return measured_boot::appraise_cmd(args),
        Command::Reference(cmd) => return measured_boot::reference(cmd),
        Command::Audit(cmd) => return audit::run(cmd),
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
