//! A simulated UEFI measured boot played into a TPM, for swtpm (dev stack, demo and tests only).
//!
//! swtpm has no firmware, so nothing measures into it. The event sequence and its log are built
//! by `writ_attestation::eventlog::simulated` (modelled on the real logs in shared/vectors); this
//! extends the TPM's SHA-256 bank with the same digests, in order, so attestation runs the real
//! replay against a real TPM. It only extends PCRs 0-7; it proves nothing about any platform.

pub use writ_attestation::eventlog::simulated::BootProfile;
use writ_attestation::eventlog::simulated::simulated_boot;

use super::attester::Attester;
use crate::CustodyError;

/// Plays the simulated boot into the TPM and returns the event log. Run it on a freshly reset TPM
/// (PCRs 0-7 at zero), once per boot.
pub fn simulate_boot(attester: &Attester, profile: BootProfile) -> Result<Vec<u8>, CustodyError> {
    let boot = simulated_boot(profile).map_err(|e| CustodyError::InvalidInput(e.to_string()))?;
    for (pcr, digest) in &boot.extends {
        attester.extend_pcr(*pcr, digest)?;
    }
    Ok(boot.log)
}
