//! TPMS_ATTEST with its quote and certify bodies.

use super::pcr::PcrSelection;
use super::wire::{Reader, Writer};
use super::{MAX_DIGEST, MAX_NAME};
use crate::error::EvidenceError;

/// TPM_GENERATED_VALUE: the magic of every TPM-made attestation.
pub const TPM_GENERATED: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_CERTIFY.
pub const ST_ATTEST_CERTIFY: u16 = 0x8017;
/// TPM_ST_ATTEST_QUOTE.
pub const ST_ATTEST_QUOTE: u16 = 0x8018;
/// Largest TPMS_ATTEST writ reads; real ones are a few hundred bytes.
pub const MAX_ATTEST: usize = 2048;

/// TPMS_CLOCK_INFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered since its last clear.
    pub clock: u64,
    /// TPM resets (reboots) since the last clear.
    pub reset_count: u32,
    /// TPM restarts (resume from hibernation) since the last reset.
    pub restart_count: u32,
    /// Whether the clock has never gone backwards.
    pub safe: bool,
}

/// The attested body of a TPMS_ATTEST.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Attested {
    /// TPMS_QUOTE_INFO.
    Quote {
        /// The PCRs quoted.
        selection: PcrSelection,
        /// The digest of their values.
        pcr_digest: Vec<u8>,
    },
    /// TPMS_CERTIFY_INFO.
    Certify {
        /// The certified object's name.
        name: Vec<u8>,
        /// Its qualified name.
        qualified_name: Vec<u8>,
    },
    /// Another attestation type (never accepted as a quote or a certification): its tag and its
    /// body, unparsed.
    Other {
        /// The attestation type tag.
        tag: u16,
        /// The type-specific body, as received.
        body: Vec<u8>,
    },
}

/// A parsed TPMS_ATTEST. Parsing checks structure only; the checks that make it evidence (magic,
/// type, nonce, signature) are the verifier's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    /// The magic (TPM_GENERATED_VALUE for genuine attestations).
    pub magic: u32,
    /// The attestation type tag.
    pub kind: u16,
    /// The qualified name of the signing key.
    pub qualified_signer: Vec<u8>,
    /// extraData: the caller's qualifyingData (the nonce).
    pub extra_data: Vec<u8>,
    /// The clock.
    pub clock_info: ClockInfo,
    /// The TPM firmware version.
    pub firmware_version: u64,
    /// The type-specific body.
    pub attested: Attested,
}

impl Attest {
    /// Parses a TPMS_ATTEST (the whole slice, at most [`MAX_ATTEST`] bytes).
    pub fn parse(bytes: &[u8]) -> Result<Self, EvidenceError> {
        if bytes.len() > MAX_ATTEST {
            return Err(EvidenceError::Malformed(format!(
                "TPMS_ATTEST of {} bytes",
                bytes.len()
            )));
        }
        let mut r = Reader::new(bytes, "TPMS_ATTEST");
        let magic = r.u32()?;
        let kind = r.u16()?;
        let qualified_signer = r.tpm2b(MAX_NAME, "qualifiedSigner")?.to_vec();
        let extra_data = r.tpm2b(MAX_DIGEST, "extraData")?.to_vec();
        let clock_info = ClockInfo {
            clock: r.u64()?,
            reset_count: r.u32()?,
            restart_count: r.u32()?,
            safe: match r.u8()? {
                0 => false,
                1 => true,
                other => {
                    return Err(EvidenceError::Malformed(format!(
                        "TPMS_CLOCK_INFO.safe = {other}"
                    )));
                }
            },
        };
        let firmware_version = r.u64()?;
        let attested = match kind {
            ST_ATTEST_QUOTE => {
                let selection = PcrSelection::read(&mut r)?;
                let pcr_digest = r.tpm2b(MAX_DIGEST, "pcrDigest")?.to_vec();
                Attested::Quote {
                    selection,
                    pcr_digest,
                }
            }
            ST_ATTEST_CERTIFY => {
                let name = r.tpm2b(MAX_NAME, "name")?.to_vec();
                let qualified_name = r.tpm2b(MAX_NAME, "qualifiedName")?.to_vec();
                Attested::Certify {
                    name,
                    qualified_name,
                }
            }
            // The body of other types is kept unparsed; the verifier refuses them by type.
            other => {
                let rest = bytes.len().saturating_sub(r.position());
                Attested::Other {
                    tag: other,
                    body: r.bytes(rest)?.to_vec(),
                }
            }
        };
        r.finish()?;
        Ok(Attest {
            magic,
            kind,
            qualified_signer,
            extra_data,
            clock_info,
            firmware_version,
            attested,
        })
    }

    /// The marshalled TPMS_ATTEST (tests, forges, round trips).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u32(self.magic);
        w.u16(self.kind);
        w.tpm2b(&self.qualified_signer);
        w.tpm2b(&self.extra_data);
        w.u64(self.clock_info.clock);
        w.u32(self.clock_info.reset_count);
        w.u32(self.clock_info.restart_count);
        w.u8(u8::from(self.clock_info.safe));
        w.u64(self.firmware_version);
        match &self.attested {
            Attested::Quote {
                selection,
                pcr_digest,
            } => {
                selection.write(&mut w);
                w.tpm2b(pcr_digest);
            }
            Attested::Certify {
                name,
                qualified_name,
            } => {
                w.tpm2b(name);
                w.tpm2b(qualified_name);
            }
            Attested::Other { body, .. } => w.bytes(body),
        }
        w.buf
    }
}
