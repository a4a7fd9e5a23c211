//! Test harness for writ: real devices, one per test, in parallel.
//!
//! * [`Swtpm`]: a private swtpm process on its own loopback ports, with an EK certificate issued by a
//!   private local CA; killed and its state deleted on drop.
//! * [`SoftHsm`]: a private SoftHSM2 token directory and configuration with one initialised token.
//! * [`isolated`]: SoftHSM2 reads `SOFTHSM2_CONF` once, when the module is initialised in a process,
//!   so a private token directory needs a private process. `isolated` re-runs the calling test in a
//!   child process of the test binary with the environment pointing at a fresh [`SoftHsm`], and
//!   reports the child's verdict. No global lock: every test gets its own process and token.
//! * [`Postgres`]: a fresh database in a per-user PostgreSQL cluster (or in `WRIT_TEST_PG`).
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

mod postgres;
mod proxy;
mod softhsm;
mod swtpm;

pub use postgres::Postgres;
pub use proxy::{Fault, FaultProxy};
pub use softhsm::{SOFTHSM2_MODULE, SoftHsm, in_private_softhsm, isolated};
pub use swtpm::Swtpm;

use std::path::PathBuf;

/// Closes every inherited descriptor above stderr, then execs its arguments.
const CLOSE_AND_EXEC: &str = r#"opendir(my $d, "/proc/self/fd") or die "/proc/self/fd: $!\n"; my @fds = grep { /^\d+$/ && $_ > 2 } readdir($d); closedir($d); require POSIX; POSIX::close($_) for @fds; exec { $ARGV[0] } @ARGV or die "exec $ARGV[0]: $!\n";"#;

/// A command for a long-lived child (a server, a daemon) that inherits no file descriptor but
/// stdin, stdout and stderr.
///
/// A test process holds sockets that C libraries opened without close-on-exec (tpm2-tss's TPM
/// connections). A daemon started meanwhile by another test thread would inherit one and keep
/// that TPM connection open after the test closed it; swtpm serves one connection at a time, so
/// it would never accept the next one, and a test would hang. The child therefore starts as perl
/// (Debian's perl-base is essential), which closes every descriptor above stderr and execs
/// `program`.
pub fn daemon(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut c = std::process::Command::new("perl");
    c.arg("-e").arg(CLOSE_AND_EXEC).arg(program);
    c
}

/// The repository root (where `deploy/` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Writes a secret file readable by its owner only (writ refuses secret files others can read).
pub fn write_secret(path: &std::path::Path, contents: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("create secret file");
    f.write_all(contents.as_bytes()).expect("write secret file");
}

/// A random lowercase hex string of `bytes` bytes.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("OS RNG");
    hex::encode(buf)
}

/// Two consecutive loopback TCP ports (swtpm and the swtpm TCTI use P and P+1), leased to one
/// user of this harness for as long as the lease lives.
///
/// The ports are free when chosen but not bound until swtpm (or the proxy) binds them, so two tests
/// could pick the same pair in between. A lease holds a lock file per port in a per-user directory;
/// every test process of this harness skips ports another one holds.
#[derive(Debug)]
pub struct PortLease {
    pub port: u16,
    _locks: [std::fs::File; 2],
}

pub fn lease_port_pair() -> PortLease {
    use std::net::TcpListener;
    let dir = swtpm::user_dir().join("ports");
    std::fs::create_dir_all(&dir).expect("port lock dir");
    let lock = |p: u16| -> Option<std::fs::File> {
        let f = std::fs::File::create(dir.join(p.to_string())).expect("port lock file");
        f.try_lock().ok().map(|()| f)
    };
    // Below Linux's ephemeral range (32768-60999), so no outgoing connection of this machine
    // takes a leased port as its source port before swtpm or the proxy binds it.
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    let mut seed = [0u8; 2];
    getrandom::fill(&mut seed).expect("OS RNG");
    let start = u16::from_be_bytes(seed) % SPAN;
    for i in 0..SPAN / 2 {
        let p = FIRST + (start + 2 * i) % SPAN;
        let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
        if !free(p) || !free(p + 1) {
            continue;
        }
        if let (Some(l0), Some(l1)) = (lock(p), lock(p + 1)) {
            return PortLease {
                port: p,
                _locks: [l0, l1],
            };
        }
    }
    panic!("no two consecutive free loopback ports");
}
