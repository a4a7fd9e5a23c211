//! TPM2_Quote verification.

use super::{CheckedAk, Nonce, verify_attest};
use crate::crypto::CryptoProvider;
use crate::error::EvidenceError;
use crate::tpm::attest::{Attested, ClockInfo, ST_ATTEST_QUOTE};
use crate::tpm::pcr::{PcrSelection, PcrValues};

/// A quote that verified: signed by the AK with its pinned scheme, made by a TPM (magic), of type
/// quote, over the expected nonce, covering exactly the required PCR selection, with a pcrDigest
/// that matches the PCR values kept here. Only this crate constructs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedQuote {
    ak_name: Vec<u8>,
    nonce: Nonce,
    clock: ClockInfo,
    firmware_version: u64,
    selection: PcrSelection,
    pcrs: PcrValues,
    pcr_digest: Vec<u8>,
}

impl VerifiedQuote {
    /// The name of the AK that signed it.
    pub fn ak_name(&self) -> &[u8] {
        &self.ak_name
    }
    /// The nonce it is bound to.
    pub fn nonce(&self) -> &Nonce {
        &self.nonce
    }
    /// The TPM's clock and reset/restart counters at the time of the quote.
    pub fn clock(&self) -> ClockInfo {
        self.clock
    }
    /// The TPM firmware version.
    pub fn firmware_version(&self) -> u64 {
        self.firmware_version
    }
    /// The quoted selection (as the TPM listed it).
    pub fn selection(&self) -> &PcrSelection {
        &self.selection
    }
    /// The quoted PCR values (exactly the selected ones).
    pub fn pcrs(&self) -> &PcrValues {
        &self.pcrs
    }
    /// The pcrDigest.
    pub fn pcr_digest(&self) -> &[u8] {
        &self.pcr_digest
    }
    /// How the TPM's counters moved since a previous quote of the same TPM.
    pub fn counters_since(&self, last: &ClockInfo) -> CounterChange {
        CounterChange::between(last, &self.clock)
    }
}

/// How a TPM's reset and restart counters (and clock) moved between two attestations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CounterChange {
    /// Same boot, clock moved forward (or stood).
    Unchanged,
    /// One reboot (resetCount + 1).
    Reboot,
    /// Resumed from hibernation (restartCount grew, same resetCount).
    Restart,
    /// Several reboots since the last attestation (resetCount grew by more than one).
    Jump {
        /// How many reboots.
        resets: u32,
    },
    /// A counter or the clock went backwards: the TPM was cleared, or the evidence is replayed
    /// from the past. Policy treats this as contraindicated.
    Rollback {
        /// Which value went backwards: `resetCount`, `restartCount` or `clock`.
        counter: &'static str,
    },
}

impl CounterChange {
    /// Compares a new clock reading with the last one seen.
    pub fn between(last: &ClockInfo, now: &ClockInfo) -> Self {
        use std::cmp::Ordering::*;
        match now.reset_count.cmp(&last.reset_count) {
            Less => CounterChange::Rollback {
                counter: "resetCount",
            },
            Greater => match now.reset_count - last.reset_count {
                1 => CounterChange::Reboot,
                resets => CounterChange::Jump { resets },
            },
            Equal => match now.restart_count.cmp(&last.restart_count) {
                Less => CounterChange::Rollback {
                    counter: "restartCount",
                },
                Greater => CounterChange::Restart,
                Equal if now.clock < last.clock => CounterChange::Rollback { counter: "clock" },
                Equal => CounterChange::Unchanged,
            },
        }
    }
}

/// Verifies a quote.
///
/// * `attest` and `signature`: TPMS_ATTEST and TPMT_SIGNATURE exactly as the TPM returned them
///   (what `tpm2_quote -m` and `-s` write);
/// * `nonce`: the nonce the verifier issued;
/// * `required`: the PCR selection policy requires; the quote must cover exactly it;
/// * `pcrs`: the PCR values the attester reported; the quote's pcrDigest must be their digest.
///
/// The signature is checked first, over the exact bytes, with the scheme the AK pins.
pub fn verify_quote(
    provider: &dyn CryptoProvider,
    ak: &CheckedAk,
    attest: &[u8],
    signature: &[u8],
    nonce: &Nonce,
    required: &PcrSelection,
    pcrs: &PcrValues,
) -> Result<VerifiedQuote, EvidenceError> {
    if required.is_empty() {
        return Err(EvidenceError::PcrSelection(
            "the required selection is empty".into(),
        ));
    }
    let (parsed, hash) = verify_attest(provider, ak, attest, signature, ST_ATTEST_QUOTE, nonce)?;
    let Attested::Quote {
        selection,
        pcr_digest,
    } = parsed.attested
    else {
        return Err(EvidenceError::AttestType {
            expected: ST_ATTEST_QUOTE,
            got: parsed.kind,
        });
    };
    if !selection.same_pcrs(required) {
        return Err(EvidenceError::PcrSelection(format!(
            "quoted {selection}, policy requires {required}"
        )));
    }
    let expected = pcrs.digest(&selection, hash)?;
    if expected != pcr_digest {
        return Err(EvidenceError::PcrDigest);
    }
    let mut quoted = PcrValues::new();
    for (bank, index) in selection.pcrs() {
        if let Some(v) = pcrs.get(bank, index) {
            quoted.insert(bank, index, v.to_vec())?;
        }
    }
    Ok(VerifiedQuote {
        ak_name: ak.name().to_vec(),
        nonce: nonce.clone(),
        clock: parsed.clock_info,
        firmware_version: parsed.firmware_version,
        selection,
        pcrs: quoted,
        pcr_digest,
    })
}
