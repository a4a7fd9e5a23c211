//! The decision log's verifiable parts: RFC 6962 Merkle proofs and C2SP signed checkpoints.

pub mod audit;
pub mod merkle;
pub mod note;
pub mod record;
pub mod tiles;
