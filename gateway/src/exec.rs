//! `writ-gate exec`: runs one tool of the gateway's manifest for a writ, and nothing otherwise.
//!
//! In order: the manifest (the gateway's configuration: each tool's absolute path, the file's
//! SHA-256, a fixed environment and working folder) names the tool (`tool_unknown`); the file is a
//! regular file with that hash (`tool_hash`), and neither it nor any folder above it is writable
//! by anyone but root or this gateway's user (`tool_writable`; a root-owned sticky folder such as
//! /tmp is accepted: others can never rename or remove what is in it); the writ authorizes exactly this
//! command (the one verification, consuming the writ and its proof); the decision is appended to
//! the spool and fsynced (`spool`: a spool that cannot be written refuses); only then does the
//! tool run, with the manifest's environment alone, from its folder; its outcome (exit status,
//! duration) is appended to the spool too. Reporting the spool to `writ serve` is not built yet.

use std::collections::BTreeMap;
use std::io::Write;
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
    /// The replay store shared by this audience's gateways on this host.
    pub replay_db: PathBuf,
    /// The folder of the spool (decisions and outcomes, append-only, fsynced).
    pub spool: PathBuf,
    /// Tolerated clock skew, seconds.
    #[serde(default = "default_skew")]
    pub skew_s: i64,
    /// The oldest trust bundle accepted, seconds since it was issued.
    #[serde(default = "default_bundle_age")]
    pub max_bundle_age_s: i64,
    /// The tools, by name.
    #[serde(default)]
    pub tools: BTreeMap<String, Tool>,
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
        for (name, t) in &c.tools {
            if !t.path.is_absolute() || !t.cwd.is_absolute() {
                return Err(format!("tool {name}: path and cwd must be absolute"));
            }
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("tool {name}: sha256 is 64 hex digits"));
            }
        }
        Ok(c)
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

/// Whether `meta` is writable by anyone but root or `uid`.
fn writable_by_others(meta: &std::fs::Metadata, uid: u32) -> bool {
    let mode = meta.mode();
    let owner_ok = meta.uid() == 0 || meta.uid() == uid;
    // Group write is a write by others unless the group is root's.
    !owner_ok || mode & 0o002 != 0 || (mode & 0o020 != 0 && meta.gid() != 0)
}

/// Whether a folder above the tool lets others replace what is below it. A root-owned sticky
/// folder (like /tmp) does not: others may add entries but never rename or remove ours.
fn folder_open_to_others(meta: &std::fs::Metadata, uid: u32) -> bool {
    let sticky_root = meta.uid() == 0 && meta.mode() & 0o1000 != 0;
    writable_by_others(meta, uid) && !sticky_root
}

/// The manifest's checks of `tool`'s file: a regular file with its hash, and neither it nor a
/// folder above it writable by anyone but root or `uid`.
pub fn check_tool(tool: &Tool, uid: u32) -> Result<(), Refusal> {
    let meta = std::fs::symlink_metadata(&tool.path)
        .map_err(|e| Refusal::new("tool_hash", format!("{}: {e}", tool.path.display())))?;
    if !meta.file_type().is_file() {
        return Err(Refusal::new(
            "tool_hash",
            format!("{} is not a regular file", tool.path.display()),
        ));
    }
    if writable_by_others(&meta, uid) {
        return Err(Refusal::new(
            "tool_writable",
            format!(
                "{} is writable by others than root and this gateway's user",
                tool.path.display()
            ),
        ));
    }
    let mut dir = tool.path.parent();
    while let Some(d) = dir {
        let m = std::fs::metadata(d)
            .map_err(|e| Refusal::new("tool_writable", format!("{}: {e}", d.display())))?;
        if folder_open_to_others(&m, uid) {
            return Err(Refusal::new(
                "tool_writable",
                format!(
                    "{} (a folder above {}) is writable by others than root and this gateway's user",
                    d.display(),
                    tool.path.display()
                ),
            ));
        }
        dir = d.parent();
    }
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

/// Appends one JSON line to the spool's journal and makes it durable (the file and, when it was
/// created, its folder), before anything depends on it.
pub fn spool(dir: &Path, entry: &Value) -> Result<(), Refusal> {
    let fail = |e: std::io::Error| Refusal::new("spool", format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let path = dir.join("journal.jsonl");
    let created = !path.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(fail)?;
    let mut line = serde_json::to_vec(entry).map_err(|e| Refusal::new("spool", e.to_string()))?;
    line.push(b'\n');
    f.write_all(&line).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    if created {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(fail)?;
    }
    Ok(())
}
