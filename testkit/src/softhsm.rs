//! A private SoftHSM2 token directory per test, and the child-process runner that makes it private.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// Where Debian's softhsm2 package puts the PKCS#11 module.
pub const SOFTHSM2_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

const ENV_CHILD: &str = "WRIT_TESTKIT_CHILD";
const ENV_DIR: &str = "WRIT_TESTKIT_SOFTHSM_DIR";
const ENV_LABEL: &str = "WRIT_TESTKIT_SOFTHSM_LABEL";

/// A SoftHSM2 configuration and token directory with one initialised token.
#[derive(Debug)]
pub struct SoftHsm {
    dir: PathBuf,
    label: String,
    _owned: Option<TempDir>,
}

impl SoftHsm {
    /// Creates a fresh token directory with one token (random label, PINs in files).
    pub fn new() -> SoftHsm {
        let owned = tempfile::Builder::new()
            .prefix("writ-softhsm-")
            .tempdir()
            .expect("tempdir");
        let dir = owned.path().to_path_buf();
        let label = format!("writ-test-{}", crate::random_hex(4));
        std::fs::create_dir(dir.join("tokens")).expect("tokens dir");
        std::fs::write(
            dir.join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                dir.join("tokens").display()
            ),
        )
        .expect("write softhsm2.conf");
        let pin = crate::random_hex(8);
        let so_pin = crate::random_hex(8);
        crate::write_secret(&dir.join("user.pin"), &pin);
        crate::write_secret(&dir.join("so.pin"), &so_pin);
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
            .args([
                "--init-token",
                "--free",
                "--label",
                &label,
                "--so-pin",
                &so_pin,
                "--pin",
                &pin,
            ])
            .output()
            .expect("run softhsm2-util (is the softhsm2 package installed?)");
        assert!(
            out.status.success(),
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SoftHsm {
            dir,
            label,
            _owned: Some(owned),
        }
    }

    /// The configuration file to put in `SOFTHSM2_CONF`.
    pub fn conf(&self) -> PathBuf {
        self.dir.join("softhsm2.conf")
    }

    /// The token's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// A file holding the user PIN.
    pub fn pin_file(&self) -> PathBuf {
        self.dir.join("user.pin")
    }

    /// The user PIN itself (tests that need to misuse it).
    pub fn pin(&self) -> String {
        std::fs::read_to_string(self.pin_file()).expect("read pin")
    }

    /// The token directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A `pkcs11:` URI for `object` on this token, with module path and PIN file.
    pub fn key_uri(&self, object: &str) -> String {
        format!(
            "pkcs11:token={};object={object}?module-path={SOFTHSM2_MODULE}&pin-source=file:{}",
            self.label,
            self.pin_file().display()
        )
    }

    /// Adds another initialised token to this directory and returns its label.
    pub fn add_token(&self, label: &str) {
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", self.conf())
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                "0000",
                "--pin",
                &self.pin(),
            ])
            .output()
            .expect("run softhsm2-util");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Default for SoftHsm {
    fn default() -> Self {
        Self::new()
    }
}

/// For a program (a benchmark, not a test): runs `body` in a child process of the current
/// executable, started with the same arguments, whose `SOFTHSM2_CONF` names a fresh private token
/// directory, so that the program can open the token's keys in its own process (SoftHSM2 reads
/// `SOFTHSM2_CONF` once per process). The parent exits with the child's status.
pub fn in_private_softhsm(body: impl FnOnce(&SoftHsm)) {
    const PROGRAM: &str = "program";
    if std::env::var(ENV_CHILD).as_deref() == Ok(PROGRAM) {
        let dir = PathBuf::from(std::env::var(ENV_DIR).expect("child without token dir"));
        let label = std::env::var(ENV_LABEL).expect("child without token label");
        body(&SoftHsm {
            dir,
            label,
            _owned: None,
        });
        return;
    }
    let hsm = SoftHsm::new();
    let status = Command::new(std::env::current_exe().expect("current executable"))
        .args(std::env::args_os().skip(1))
        .env(ENV_CHILD, PROGRAM)
        .env(ENV_DIR, hsm.dir())
        .env(ENV_LABEL, hsm.label())
        .env("SOFTHSM2_CONF", hsm.conf())
        .status()
        .expect("re-run in a child process");
    drop(hsm);
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
}

/// Runs `body` in a child process of the current test binary whose `SOFTHSM2_CONF` names a fresh,
/// private token directory, and fails the calling test if the child fails.
///
/// `module_path` is the caller's `module_path!()` and `test` its test function's name; together
/// they name the test for the child (`--exact`). In the child, `body` runs with the [`SoftHsm`].
pub fn isolated(module_path: &str, test: &str, body: impl FnOnce(&SoftHsm)) {
    // libtest names tests by their path without the crate's own name.
    let name = match module_path.split_once("::") {
        Some((_, rest)) => format!("{rest}::{test}"),
        None => test.to_string(),
    };
    if std::env::var(ENV_CHILD).as_deref() == Ok(name.as_str()) {
        let dir = PathBuf::from(std::env::var(ENV_DIR).expect("child without token dir"));
        let label = std::env::var(ENV_LABEL).expect("child without token label");
        let hsm = SoftHsm {
            dir,
            label,
            _owned: None,
        };
        body(&hsm);
        // Proof for the parent that the body ran (a wrong --exact name would run nothing and pass).
        std::fs::write(hsm.dir().join("child-ran"), b"ok").expect("write marker");
        return;
    }
    let hsm = SoftHsm::new();
    let exe = std::env::current_exe().expect("current test binary");
    // The child's own libtest summary is kept out of the parent's output unless it failed.
    let out = Command::new(exe)
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(ENV_CHILD, &name)
        .env(ENV_DIR, hsm.dir())
        .env(ENV_LABEL, hsm.label())
        .env("SOFTHSM2_CONF", hsm.conf())
        .output()
        .expect("re-run test in a child process");
    if !out.status.success() {
        // Indented, so the child's own "test result:" line is not mistaken for the parent's.
        let indent = |b: &[u8]| {
            String::from_utf8_lossy(b)
                .lines()
                .map(|l| format!("  | {l}\n"))
                .collect::<String>()
        };
        eprintln!("--- child stdout ---\n{}", indent(&out.stdout));
        eprintln!("--- child stderr ---\n{}", indent(&out.stderr));
    }
    assert!(
        out.status.success(),
        "test {name} failed in its SoftHSM2 child process ({})",
        out.status
    );
    assert!(
        hsm.dir().join("child-ran").is_file(),
        "the child process ran no test named {name}: check the module path given to isolated()"
    );
}
