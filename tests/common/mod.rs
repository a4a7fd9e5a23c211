//! What the end-to-end tests of `writ serve` share: the `writ` binary with the device
//! environment, a running `writ serve` child (killed with SIGKILL when dropped), custody keys
//! made through `writ keys generate`, and an HTTP agent that reads error answers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use writ_testkit::SoftHsm;

pub mod runtime;
pub mod stack;

/// The `writ` binary, with SoftHSM2's configuration when there is a token, and quiet TSS logs.
pub fn writ(hsm: Option<&SoftHsm>) -> Command {
    // `writ serve` lives through a test: it must not hold another thread's TPM connection.
    let mut c = writ_testkit::daemon(env!("CARGO_BIN_EXE_writ"));
    if let Some(h) = hsm {
        c.env("SOFTHSM2_CONF", h.conf());
    }
    c.env("TSS2_LOG", "all+NONE");
    c
}

/// A key of `purpose` made in `hsm` under `object`; returns its URI.
pub fn softhsm_key(hsm: &SoftHsm, object: &str, purpose: &str) -> String {
    let uri = hsm.key_uri(object);
    let out = writ(Some(hsm))
        .args(["keys", "generate", "--key", &uri, "--purpose", purpose])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    uri
}

/// A running `writ serve`. Dropping it kills it (SIGKILL: no orderly shutdown).
pub struct Served {
    child: Child,
    /// `http://...` or `https://...`.
    pub url: String,
    /// The CA fingerprint it printed, with TLS.
    pub fingerprint: Option<String>,
    /// The checkpoint verifier key it printed.
    pub verifier_key: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` (a `writ serve` command) and reads what it prints before serving: its address,
/// with TLS its CA fingerprint, and its checkpoint verifier key. Its output is drained after.
pub fn serve(mut cmd: Command) -> Served {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its standard error, drained for as long as it runs; the last lines name why a start failed.
    let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    {
        let errors = std::sync::Arc::clone(&errors);
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let mut e = errors.lock().unwrap();
                if e.len() >= 20 {
                    e.remove(0);
                }
                e.push(line);
            }
        });
    }
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut url, mut fingerprint) = (None, None);
    let verifier_key = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| {
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "writ serve stopped before serving: {}",
                    errors.lock().unwrap().join("\n")
                )
            })
            .unwrap();
        if let Some(v) = line.strip_prefix("writ serve: listening on ") {
            url = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("writ serve: CA fingerprint ") {
            fingerprint = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("writ serve: checkpoint verifier key ") {
            break v.to_string();
        }
    };
    // Keep draining stdout so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Served {
        child,
        url: url.expect("writ serve printed its address"),
        fingerprint,
        verifier_key,
    }
}

/// An HTTP agent whose error statuses are answers to read, not errors. Over https it does not
/// verify the server: it is the tests' own probe of the appliance they started (the CLI's TLS
/// verification is what tests/tls.rs and tests/mtls.rs test).
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .unversioned_rustls_crypto_provider(std::sync::Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .disable_verification(true)
                .build(),
        )
        .build()
        .new_agent()
}

/// The `writ-gate` binary of this build (another package's: built here if it is missing).
pub fn gate() -> Command {
    Command::new(gate_path())
}

/// The path of [`gate`]'s binary.
pub fn gate_path() -> std::path::PathBuf {
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .to_path_buf();
    let bin = dir.join("writ-gate");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .args(["build", "-p", "writ-gateway", "--bin", "writ-gate"])
            .status()
            .unwrap();
        assert!(built.success(), "cargo build -p writ-gateway");
    }
    bin
}
