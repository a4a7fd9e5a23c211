//! A private swtpm per test.

use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A running swtpm with its own state, ports and EK certificates. Killed and deleted on drop.
#[derive(Debug)]
pub struct Swtpm {
    dir: TempDir,
    child: Child,
    port: u16,
    template: PathBuf,
    _lease: crate::PortLease,
}

impl Swtpm {
    /// Starts a fresh TPM: a copy of a provisioned template state (EK certificates from the local
    /// CA, nothing else), listening on two fresh loopback ports.
    pub fn start() -> Swtpm {
        Swtpm::from_template(template_dir("swtpm-template-v1"))
    }

    /// A TPM other than the one [`start`](Self::start) copies: another EK, under another local
    /// CA (its own [`ca_dir`](Self::ca_dir)), for tests that need two distinct machines.
    pub fn start_second() -> Swtpm {
        Swtpm::from_template(template_dir("swtpm-template-v1-second"))
    }

    fn from_template(template: PathBuf) -> Swtpm {
        let dir = tempfile::Builder::new()
            .prefix("writ-swtpm-")
            .tempdir()
            .expect("tempdir");
        std::fs::copy(
            template.join("state/tpm2-00.permall"),
            dir.path().join("tpm2-00.permall"),
        )
        .expect("copy TPM state template");
        for attempt in 0..10 {
            let lease = crate::lease_port_pair();
            let port = lease.port;
            let mut child = spawn(port, dir.path());
            if wait_listening(&mut child, port) {
                crate::write_secret(&dir.path().join("key.auth"), &crate::random_hex(12));
                return Swtpm {
                    dir,
                    child,
                    port,
                    template,
                    _lease: lease,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("swtpm did not come up on port {port} (attempt {attempt}); retrying");
        }
        panic!("swtpm would not start");
    }

    /// The TCTI configuration string for this TPM.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// A file (mode 0600) holding a random authValue for custody keys in this TPM.
    pub fn auth_file(&self) -> PathBuf {
        self.dir.path().join("key.auth")
    }

    /// A `tpm:` URI for a custody key at `handle` in this TPM, with [`auth_file`](Self::auth_file)
    /// as its authValue.
    pub fn key_uri(&self, handle: u32) -> String {
        format!(
            "tpm:handle={handle:#010x}?tcti={}&auth-source=file:{}",
            self.tcti(),
            self.auth_file().display()
        )
    }

    /// The data port (the control port is one above).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The local CA that issued this TPM's EK certificate (root and intermediate PEM files).
    pub fn ca_dir(&self) -> PathBuf {
        self.template.join("ca")
    }

    /// The EK certificate files written at provisioning (`ek-rsa2048.crt`, `ek-secp384r1.crt`).
    pub fn ek_cert_file(&self, name: &str) -> PathBuf {
        self.template.join("state").join(name)
    }

    /// Runs a tpm2-tools command against this TPM in `dir`; it must succeed.
    pub fn tool(&self, dir: &Path, args: &[&str]) {
        let (program, rest) = args.split_first().expect("a program");
        let out = Command::new(program)
            .args(rest)
            .current_dir(dir)
            .env("TPM2TOOLS_TCTI", self.tcti())
            .env("TSS2_LOG", "all+NONE")
            .output()
            .expect("tpm2-tools installed");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// With tpm2-tools in `dir`: an RSA EK (`ek.ctx`, `ek.pub`) and an AK under it of `alg` and
    /// `scheme` (`ak.ctx`, `ak.pub`, `ak.name`), transient objects flushed after each step (no
    /// resource manager sits in front of swtpm, which has three slots).
    pub fn tool_ak(&self, dir: &Path, alg: &str, scheme: &str) {
        self.tool(
            dir,
            &["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"],
        );
        self.tool(dir, &["tpm2_flushcontext", "-t"]);
        self.tool(
            dir,
            &[
                "tpm2_createak",
                "-C",
                "ek.ctx",
                "-c",
                "ak.ctx",
                "-G",
                alg,
                "-g",
                "sha256",
                "-s",
                scheme,
                "-u",
                "ak.pub",
                "-n",
                "ak.name",
            ],
        );
        self.tool(dir, &["tpm2_flushcontext", "-t"]);
    }

    /// The TPM's persistent state as it is on disk now (tpm2-00.permall), after a clean
    /// shutdown of nothing: swtpm writes it on every NV change.
    pub fn snapshot(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("tpm2-00.permall")).expect("read TPM state")
    }

    /// Stops swtpm, puts `state` (from [`snapshot`](Self::snapshot)) back, and starts it again
    /// on the same ports: a TPM whose state was restored from the past (its counters go back).
    pub fn restore(&mut self, state: &[u8]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::write(self.dir.path().join("tpm2-00.permall"), state).expect("write TPM state");
        for attempt in 0..50 {
            let mut child = spawn(self.port, self.dir.path());
            if wait_listening(&mut child, self.port) {
                self.child = child;
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!(
                "swtpm did not come back on port {} (attempt {attempt})",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("swtpm would not restart");
    }

    /// Reboots the TPM: TPM2_Init through the control channel, then TPM2_Startup(CLEAR). PCRs reset,
    /// resetCount increments, persistent objects stay.
    pub fn reboot(&self) {
        let ctrl = format!("127.0.0.1:{}", self.port + 1);
        run(Command::new("swtpm_ioctl").args(["--tcp", &ctrl, "-i"]));
        run(Command::new("tpm2_startup")
            .args(["-c", "-T", &self.tcti()])
            .env("TSS2_LOG", "all+NONE"));
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(port: u16, state: &Path) -> Child {
    crate::daemon("swtpm")
        .args(["socket", "--tpm2"])
        .arg("--server")
        .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .args(["--flags", "not-need-init,startup-clear"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn swtpm (is the swtpm package installed?)")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run tool");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until swtpm listens on both its data port and its control port (one above). swtpm
/// binds the control port first, so a control port that answers says nothing about the data port:
/// a client connecting in between is refused (seen in CI as a TCTI I/O error on the first
/// command). A swtpm that exits (a port taken meanwhile) is reported as not started.
fn wait_listening(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let listening = |p: u16| TcpStream::connect(("127.0.0.1", p)).is_ok();
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if listening(port + 1) && listening(port) {
            return matches!(child.try_wait(), Ok(None));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A provisioned TPM state shared by every test of this user: provisioning takes about a second,
/// copying the state a millisecond. Made once, under a file lock, by whichever test comes first.
/// This user's directory for the harness's shared state (template TPM, port leases).
pub(crate) fn user_dir() -> PathBuf {
    std::env::temp_dir().join(format!("writ-testkit-{}", current_uid()))
}

fn template_dir(name: &str) -> PathBuf {
    let base = user_dir();
    let dir = base.join(name);
    if dir.join("state/tpm2-00.permall").is_file() {
        return dir;
    }
    std::fs::create_dir_all(&base).expect("create testkit dir");
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(&base).expect("testkit dir");
        assert_eq!(
            meta.uid(),
            current_uid(),
            "{} belongs to another user",
            base.display()
        );
        // Others may pass through (the test PostgreSQL cluster runs as `postgres` in a folder
        // of its own below) but not list it; what is secret below has its own modes.
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o711)).expect("chmod");
    }
    let lock = File::create(base.join(format!("{name}.lock"))).expect("lock file");
    lock.lock().expect("lock template");
    if !dir.join("state/tpm2-00.permall").is_file() {
        let staging = tempfile::Builder::new()
            .prefix("staging-")
            .tempdir_in(&base)
            .expect("staging");
        let script = crate::repo_root().join("deploy/dev/provision-swtpm.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(staging.path().join("state"))
            .arg(staging.path().join("ca"))
            .output()
            .expect("run provision-swtpm.sh");
        assert!(
            out.status.success(),
            "provision-swtpm.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let staged = staging.keep();
        std::fs::rename(&staged, &dir).expect("publish template");
    }
    dir
}

fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .expect("own uid")
}
