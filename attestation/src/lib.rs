//! writ-attestation: the pure half of writ. No I/O, no TPM or PKCS#11 library, no async runtime:
//! the appliance, gateways and auditors embed the same code.
//!
//! Built so far:
//! * [`tpm`]: TPM 2.0 wire structures parsed into types (TPMS_ATTEST, TPMT_PUBLIC, TPMT_SIGNATURE,
//!   TPML_PCR_SELECTION), object names;
//! * [`crypto`]: the signature provider trait, with aws-lc-rs and RustCrypto implementations;
//! * [`evidence`]: AK checks, quote and certify verification returning proof values, EK
//!   certificate chains, software MakeCredential;
//! * [`eventlog`]: the TCG PC Client firmware event log, typed events, replay and comparison
//!   with a quote;
//! * [`appraisal`]: reference-value profiles and appraisal of verified evidence, with a reason for
//!   every failed rule; [`ear`]: the result as EAR claims (draft-ietf-rats-ear);
//! * [`log`]: RFC 6962 Merkle proofs and C2SP signed checkpoints;
//! * [`jwk`]: P-256 public keys as JWKs and their RFC 7638 thumbprints.
//!
//! * [`writ`]: strict JWS, writ claims, request digests, DPoP proofs, lineage rules;
//! * [`jcs`]: RFC 8785 canonical JSON.
//!
//! Not built yet (see the README's status table): EAR signing (JWT), the trust bundle, the one
//! offline writ verification function.
//!
//! This crate contains no `unsafe` code.
#![forbid(unsafe_code)]

pub mod appraisal;
pub mod crypto;
pub mod ear;
mod error;
pub mod eventlog;
pub mod evidence;
pub mod jcs;
pub mod jwk;
pub mod log;
pub mod tpm;
pub mod writ;

pub use error::EvidenceError;
