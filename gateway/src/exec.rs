//! `writ-gate exec`: runs one tool of the gateway's manifest for a writ, and nothing otherwise.
//!
//! In order: the manifest (the gateway's configuration: each tool's absolute path, the file's
//! SHA-256, a fixed environment and working folder) names the tool (`tool_unknown`); the file is a
//! regular file with that hash (`tool_hash`), and neither it, its working folder nor any folder
//! above them is a symbolic link or writable by anyone but root or this gateway's user
//! (`tool_writable`; a root-owned sticky folder such as /tmp is accepted: others can never rename
//! or remove what is in it); the same holds for the configuration, the trust bundle and the
//! replay store's folder (`config`); the writ authorizes exactly this command (the one
//! verification), and consuming the writ and its proof and spooling the decision are one
//! transaction of the replay store (a store that cannot be written or a full spool refuses, and
//! then nothing is consumed); the tool's file is checked again; only then does it run, with the
//! manifest's environment alone, from its folder; its outcome (exit status, duration) is spooled
//! too. Refusals are printed, not spooled: until
//! the writ verifies nobody is identified (interfaces.md: such refusals are counted, not recorded
//! one by one). Reporting the spool to `writ serve` is not built yet.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};
use writ_attestation::writ::Refusal;

/// The gateway's configuration (`writ-gate exec --config FILE`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// This gateway's audience (a writ must name it).
    pub audience: String,
    /// The trust bundle (as served at /v1/bundle).
    pub bundle: PathBuf,
    /// The replay store shared by this audience's gateways on this host, which is also the
    /// spool (decisions and outcomes, durable before anything runs).
    pub replay_db: PathBuf,
    /// Refuse a writ without its inclusion bundle (`inclusion_missing`).
    #[serde(default)]
    pub require_inclusion: bool,
    /// The most entries the spool holds; then every request is refused (`spool_full`).
    #[serde(default = "default_spool_max")]
    pub spool_max: u64,
    /// Tolerated clock skew, seconds.
    #[serde(default = "default_skew")]
    pub skew_s: i64,
    /// The oldest trust bundle accepted, seconds since it was issued.
    #[serde(default = "default_bundle_age")]
    pub max_bundle_age_s: i64,
    /// The appliance (`https://host:port`) the bundle is fetched from by `writ-gate bootstrap`
    /// and `writ-gate refresh`.
    #[serde(default)]
    pub server: Option<String>,
    /// The appliance's CA certificate, pinned by bootstrap (default: `appliance-ca.pem` beside
    /// the bundle).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The tools, by name.
    #[serde(default)]
    pub tools: BTreeMap<String, Tool>,
    /// This gateway's client certificate (`spiffe://<td>/gateway/<name>`, from `writ admin
    /// issue-cert --gateway`), for `writ-gate report`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its private key (PKCS#8 PEM, readable by this gateway's user alone).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// `writ-gate proxy`'s settings.
    #[serde(default)]
    pub proxy: Option<crate::proxy::ProxyConfig>,
}

fn default_spool_max() -> u64 {
    writ_gateway::replay::MAX_SPOOL
}

fn default_skew() -> i64 {
    30
}
fn default_bundle_age() -> i64 {
    86_400
}

/// One tool of the manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    /// Its absolute path.
    pub path: PathBuf,
    /// The file's SHA-256 (hex).
    pub sha256: String,
    /// Its whole environment (nothing else is passed).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The folder it runs in.
    #[serde(default = "root")]
    pub cwd: PathBuf,
    /// The resource policy knows this tool as (e.g. `tools/build`): a writ for it must name
    /// it. Unset: any resource (the writ's request digest still names this tool).
    #[serde(default)]
    pub resource: Option<String>,
}

fn root() -> PathBuf {
    PathBuf::from("/")
}

impl GateConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--config {}: {e}", path.display()))?;
        let c: GateConfig =
            toml::from_str(&text).map_err(|e| format!("--config {}: {e}", path.display()))?;
        let ca = c.ca_file();
        for (what, p) in [
            ("bundle", &c.bundle),
            ("replay_db", &c.replay_db),
            ("ca", &ca),
        ] {
            if !plain_absolute(p) {
                return Err(format!(
                    "{what} {}: an absolute path without . or .. (the caller's folder must not choose it)",
                    p.display()
                ));
            }
        }
        for (name, t) in &c.tools {
            if !plain_absolute(&t.path) || !plain_absolute(&t.cwd) {
                return Err(format!(
                    "tool {name}: path and cwd are absolute paths without . or .."
                ));
            }
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("tool {name}: sha256 is 64 hex digits"));
            }
            if let Some((k, _)) = t
                .env
                .iter()
                .find(|(k, v)| k.is_empty() || k.contains(['=', '\0']) || v.contains('\0'))
            {
                return Err(format!("tool {name}: environment variable {k:?}"));
            }
        }
        Ok(c)
    }

    /// The pinned CA certificate's file.
    pub fn ca_file(&self) -> PathBuf {
        self.ca.clone().unwrap_or_else(|| {
            self.bundle
                .parent()
                .unwrap_or_else(|| Path::new("/"))
                .join("appliance-ca.pem")
        })
    }

    /// What the gateway trusts besides the tools, checked like them: the configuration file, the
    /// trust bundle, the replay store's and the spool's folders (none writable by others than
    /// root or `uid`, no symbolic link on the way).
    pub fn check_trust_files(&self, config: &Path, uid: u32) -> Result<(), Refusal> {
        let config = std::fs::canonicalize(config)
            .map_err(|e| Refusal::new("config", format!("{}: {e}", config.display())))?;
        for file in [config.as_path(), self.bundle.as_path()] {
            guarded(file, uid, "config")?;
        }
        let ca = self.ca_file();
        if ca.exists() {
            guarded(&ca, uid, "config")?;
        }
        for folder in [self.replay_db.parent()].into_iter().flatten() {
            if folder.exists() {
                guarded(folder, uid, "config")?;
            } else if let Some(p) = folder.parent() {
                guarded(p, uid, "config")?;
            }
        }
        Ok(())
    }

    /// The manifest's digest (SHA-256 of its RFC 8785 form), for policy authors.
    pub fn manifest(&self) -> Result<(Value, String), String> {
        let tools: serde_json::Map<String, Value> = self
            .tools
            .iter()
            .map(|(n, t)| {
                (
                    n.clone(),
                    json!({
                        "path": t.path.display().to_string(),
                        "sha256": t.sha256.to_ascii_lowercase(),
                        "env": t.env,
                        "cwd": t.cwd.display().to_string(),
                        "resource": t.resource,
                    }),
                )
            })
            .collect();
        let v = json!({"audience": self.audience, "tools": tools});
        let c = writ_attestation::jcs::canonical(&v).map_err(|e| e.to_string())?;
        use sha2::Digest as _;
        Ok((
            v,
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(c.as_bytes()))),
        ))
    }
}

/// An absolute path with no `.` or `..` component.
fn plain_absolute(p: &Path) -> bool {
    use std::path::Component;
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// Whether `meta` is writable by anyone but its owner, or owned by anyone but root or `uid`.
/// (With POSIX ACLs the group bits are the ACL mask: any group write is refused.)
fn writable_by_others(meta: &std::fs::Metadata, uid: u32) -> bool {
    let owner_ok = meta.uid() == 0 || meta.uid() == uid;
    !owner_ok || meta.mode() & 0o022 != 0
}

/// `path` and every folder above it: no symbolic link, nothing writable by others than root or
/// `uid` (a root-owned sticky folder such as /tmp excepted above the last part). Refused with
/// `code` otherwise.
fn guarded(path: &Path, uid: u32, code: &'static str) -> Result<(), Refusal> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| Refusal::new(code, format!("{}: {e}", path.display())))?;
    if meta.file_type().is_symlink() {
        return Err(Refusal::new(
            code,
            format!("{} is a symbolic link", path.display()),
        ));
    }
    if writable_by_others(&meta, uid) {
        return Err(Refusal::new(
            code,
            format!(
                "{} is writable by others than root and this gateway's user",
                path.display()
            ),
        ));
    }
    let mut dir = path.parent();
    while let Some(d) = dir {
        let m = std::fs::symlink_metadata(d)
            .map_err(|e| Refusal::new(code, format!("{}: {e}", d.display())))?;
        if m.file_type().is_symlink() {
            return Err(Refusal::new(
                code,
                format!(
                    "{} (above {}) is a symbolic link",
                    d.display(),
                    path.display()
                ),
            ));
        }
        if folder_open_to_others(&m, uid) {
            return Err(Refusal::new(
                code,
                format!(
                    "{} (a folder above {}) is writable by others than root and this gateway's user",
                    d.display(),
                    path.display()
                ),
            ));
        }
        dir = d.parent();
    }
    Ok(())
}

/// Whether a folder above the tool lets others replace what is below it. A root-owned sticky
/// folder (like /tmp) does not: others may add entries but never rename or remove ours.
fn folder_open_to_others(meta: &std::fs::Metadata, uid: u32) -> bool {
    let sticky_root = meta.uid() == 0 && meta.mode() & 0o1000 != 0;
    writable_by_others(meta, uid) && !sticky_root
}

/// The manifest's checks of `tool`'s file: a regular file with its hash, no symbolic link on
/// its path, and neither it nor a folder above it writable by others than root or `uid`; its
/// working folder likewise.
pub fn check_tool(tool: &Tool, uid: u32) -> Result<(), Refusal> {
    let meta = std::fs::symlink_metadata(&tool.path)
        .map_err(|e| Refusal::new("tool_hash", format!("{}: {e}", tool.path.display())))?;
    if !meta.file_type().is_file() {
        return Err(Refusal::new(
            "tool_hash",
            format!("{} is not a regular file", tool.path.display()),
        ));
    }
    guarded(&tool.path, uid, "tool_writable")?;
    if !tool.cwd.is_dir() {
        return Err(Refusal::new(
            "tool_writable",
            format!("{} (its folder) is not a folder", tool.cwd.display()),
        ));
    }
    guarded(&tool.cwd, uid, "tool_writable")?;
    let bytes = std::fs::read(&tool.path)
        .map_err(|e| Refusal::new("tool_hash", format!("{}: {e}", tool.path.display())))?;
    use sha2::Digest as _;
    let got = hex::encode(sha2::Sha256::digest(&bytes));
    if !got.eq_ignore_ascii_case(&tool.sha256) {
        return Err(Refusal::new(
            "tool_hash",
            format!(
                "{} has SHA-256 {got}, not the manifest's",
                tool.path.display()
            ),
        ));
    }
    Ok(())
}
