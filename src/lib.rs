//! The appliance's library half: the store and the decision log (used by the `writ` binary, its
//! tests and benchmarks).
#![forbid(unsafe_code)]

pub mod decision_log;
pub mod http;
pub mod store;
