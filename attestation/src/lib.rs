//! writ-attestation: the pure half of writ. No I/O, no TPM or PKCS#11 library, no async runtime:
//! the appliance, gateways and auditors embed the same code.
//!
//! Built so far: [`jwk`], P-256 public keys as JWKs and their RFC 7638 thumbprints (the `kid` of
//! published keys and the `cnf.jkt` of writs).
//!
//! Not built yet (see the README's status table): TPM structure parsing, EK chain validation,
//! MakeCredential, quote and certify verification, event-log replay and appraisal, EAR, the writ /
//! proof / bundle formats, request digests, offline writ verification, Merkle proofs and checkpoints.
//!
//! This crate contains no `unsafe` code.
#![forbid(unsafe_code)]

pub mod jwk;
