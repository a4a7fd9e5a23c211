//! Test harness for writ: real devices, one per test, in parallel.
//!
//! * [`Swtpm`]: a private swtpm process on its own loopback ports, with an EK certificate issued by a
//!   private local CA; killed and its state deleted on drop.
//! * [`SoftHsm`]: a private SoftHSM2 token directory and configuration with one initialised token.
//! * [`isolated`]: SoftHSM2 reads `SOFTHSM2_CONF` once, when the module is initialised in a process,
//!   so a private token directory needs a private process. `isolated` re-runs the calling test in a
//!   child process of the test binary with the environment pointing at a fresh [`SoftHsm`], and
//!   reports the child's verdict. No global lock: every test gets its own process and token.
//! * [`FaultProxy`]: a TCP proxy in front of a real swtpm that answers chosen TPM commands with a
//!   chosen response code (e.g. TPM_RC_RETRY) for a while, then forwards them.
//!
//! This crate contains no `unsafe` code.
#![forbid(unsafe_code)]
// A harness reports broken set-up by panicking: that is how a test fails.
#![allow(
    clippy::panic,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

mod proxy;
mod softhsm;
mod swtpm;

pub use proxy::{Fault, FaultProxy};
pub use softhsm::{SOFTHSM2_MODULE, SoftHsm, isolated};
pub use swtpm::Swtpm;

use std::path::PathBuf;

/// The repository root (where `deploy/` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A random lowercase hex string of `bytes` bytes.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("OS RNG");
    hex::encode(buf)
}

/// Finds two consecutive free loopback TCP ports (swtpm and the swtpm TCTI use P and P+1).
pub(crate) fn free_port_pair() -> u16 {
    use std::net::TcpListener;
    for _ in 0..200 {
        let a = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let p = a.local_addr().expect("local addr").port();
        if p == u16::MAX {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no two consecutive free loopback ports");
}
