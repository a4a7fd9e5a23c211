//! The gateway's library: the replay store behind `writ_attestation::writ::verify::ReplayStore`
//! (and the spool, and the last checkpoint seen), and log inclusion checks.
#![forbid(unsafe_code)]

pub mod act;
pub mod inclusion;
pub mod replay;
pub mod spool;
