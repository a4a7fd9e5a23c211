//! `writ dev`: tools for the local dev stack only.

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use writ_hsm::CustodyError;
use writ_hsm::tpm::attester::Attester;
use writ_hsm::tpm::simboot::{BootProfile, simulate_boot};

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Play a simulated UEFI measured boot into a swtpm (which has no firmware) and write the
    /// matching event log. Run once per TPM boot; it only extends PCRs 0-7.
    SimulateBoot {
        /// TCTI of the TPM (default: TPM2TOOLS_TCTI, TCTI, /dev/tpmrm0).
        #[arg(long)]
        tcti: Option<String>,
        /// Which platform state to simulate.
        #[arg(long, value_enum, default_value_t = Profile::SecureBoot)]
        profile: Profile,
        /// Where to write the event log.
        #[arg(long)]
        log: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Profile {
    /// Secure Boot on.
    SecureBoot,
    /// Secure Boot off.
    NoSecureBoot,
}

pub fn run(cmd: DevCommand) -> Result<(), CustodyError> {
    match cmd {
        DevCommand::SimulateBoot { tcti, profile, log } => {
            let attester = Attester::open(tcti.as_deref())?;
            let profile = match profile {
                Profile::SecureBoot => BootProfile::SecureBoot,
                Profile::NoSecureBoot => BootProfile::NoSecureBoot,
            };
            let bytes = simulate_boot(&attester, profile)?;
            std::fs::write(&log, &bytes).map_err(|e| CustodyError::File {
                what: "event log",
                path: log.clone(),
                reason: e.to_string(),
            })?;
            println!(
                "simulated boot ({profile:?}): PCRs 0-7 extended, event log written to {}",
                log.display()
            );
            Ok(())
        }
    }
}
