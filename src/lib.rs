//! The appliance's library half: the store, the decision log, the runtime registry and enrollment (used by the `writ` binary, its
//! tests and benchmarks).
#![forbid(unsafe_code)]

pub mod appliance;
pub mod config;
pub mod decision_log;
pub use writ_client::files;
pub mod http;
pub mod metrics;
pub mod policy;
pub mod store;
pub mod tls;
