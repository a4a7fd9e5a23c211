//! The gateway's library: the replay store behind `writ_attestation::writ::verify::ReplayStore`.
#![forbid(unsafe_code)]

pub mod replay;
