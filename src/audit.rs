//! `writ audit`: checks a decision log from outside. Exit 0 verified, 1 a finding (a bad
//! signature, a rollback, a fork, a rewritten entry, a failed proof), 2 usage or network error.
//!
//! The auditor remembers the last checkpoint it verified (a state file per log origin), so each run
//! proves the log only grew since; checkpoints seen by other observers (files) are checked the
//! same way, and against each other.

use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Subcommand};
use writ_attestation::crypto::default_provider;
use writ_attestation::log::audit::{check_entries, check_extension, parse_hashes, verify_bundle};
use writ_attestation::log::merkle::{Hash, leaf_hash, verify_inclusion};
use writ_attestation::log::note::{Checkpoint, NoteVerifier};
use writ_attestation::log::record::DecisionRecord;
use writ_attestation::log::tiles::{TILE_WIDTH, Tile, parse_entry_bundle};

/// Largest answer read from the log (a full entry tile: 256 entries of up to 65,535 bytes).
const MAX_ANSWER: u64 = 256 * 65_537 + 4096;
/// Longest wait for one answer.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Longest lineage followed.
const MAX_LINEAGE: usize = 64;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the log's latest checkpoint, and that it extends every checkpoint seen before
    /// (remembered, or given as files by other observers).
    Check(Check),
    /// Verify a record's inclusion and print it; with --lineage, follow its parents.
    Record(RecordArgs),
    /// Verify an inclusion bundle offline (what a gateway is shown), optionally for a writ.
    Bundle(BundleArgs),
    /// Print a writ's ancestry from the log: its `issue` record (found by jti, and checked to be
    /// that writ's), then each parent's, each verified against the latest checkpoint.
    Lineage(LineageArgs),
}

#[derive(Debug, Args)]
pub struct LineageArgs {
    #[command(flatten)]
    log: LogArgs,
    /// The writ's `jti` (base64url: it may begin with `-`).
    #[arg(allow_hyphen_values = true)]
    jti: String,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// The log's base URL (e.g. https://writ.example:8787, or http:// on loopback).
    #[arg(long)]
    log: String,
    /// `sha256:<hex>` of the appliance's CA certificate, for an https:// log.
    #[arg(long)]
    fingerprint: Option<String>,
    /// Where the pinned CA certificate is kept (read if present, written on first contact).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// The checkpoint verifier key, `<origin>+<key id>+<base64>` (writ keys show --log-origin).
    /// Repeat it across a rotation of the log's key (the trust bundle's writ.log.verifier_keys):
    /// a checkpoint signed by any of them is accepted.
    #[arg(long, required = true)]
    key: Vec<String>,
    /// Also accept the log's later checkpoint keys that a given key endorsed, transitively (a
    /// rotation of the log's key: `GET /v1/log/keys`, each endorsement verified here).
    #[arg(long)]
    follow_rotations: bool,
    /// Where the last verified checkpoint is remembered (default: per log origin, under
    /// $XDG_STATE_HOME/writ/audit or ~/.local/state/writ/audit).
    #[arg(long)]
    state: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct Check {
    #[command(flatten)]
    log: LogArgs,
    /// Checkpoints seen elsewhere (signed notes), to check against the log and each other.
    #[arg(long)]
    checkpoint: Vec<PathBuf>,
    /// Also fetch every entry and rebuild the tree (detects any altered record).
    #[arg(long)]
    full: bool,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    log: LogArgs,
    /// The record's index.
    #[arg(long)]
    index: u64,
    /// Follow `parent` links to the root of the lineage.
    #[arg(long)]
    lineage: bool,
}

#[derive(Debug, Args)]
pub struct BundleArgs {
    /// The checkpoint verifier key (repeatable: any of them).
    #[arg(long, required = true)]
    key: Vec<String>,
    /// The inclusion bundle (JSON).
    file: PathBuf,
    /// The compact writ the bundle's record must have issued.
    #[arg(long)]
    writ: Option<PathBuf>,
}

/// A refusal (1) or an error (2).
enum Fail {
    Finding(String),
    Error(String),
}

fn finding(e: impl std::fmt::Display) -> Fail {
    Fail::Finding(e.to_string())
}

fn error(e: impl std::fmt::Display) -> Fail {
    Fail::Error(e.to_string())
}

/// The agent for this run's log (set once by `run`, from `--log`, `--fingerprint`,
/// `--ca-file`); a plain one for commands that read no log.
static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();

fn agent() -> ureq::Agent {
    AGENT
        .get_or_init(|| {
            ureq::Agent::config_builder()
                .timeout_global(Some(TIMEOUT))
                .proxy(None)
                .max_redirects(0)
                .build()
                .new_agent()
        })
        .clone()
}

fn trust(log: &LogArgs) -> Result<(), Fail> {
    let trust = crate::client::Trust {
        fingerprint: log.fingerprint.clone(),
        ca_file: log.ca_file.clone(),
        client_cert: None,
    };
    let base = log.log.trim_end_matches('/');
    // A kept CA file follows the appliance's CAs (a rotation of its ca key) first.
    if base.starts_with("https://") && trust.ca_file.is_some() {
        crate::client::Client::new(base, &trust).map_err(|e| Fail::Error(e.to_string()))?;
    }
    let a = crate::client::agent_for(base, &trust, true).map_err(|e| Fail::Error(e.to_string()))?;
    AGENT
        .set(a)
        .map_err(|_| Fail::Error("the log's agent was set twice".into()))
}

fn get(url: &str) -> Result<Vec<u8>, Fail> {
    let mut resp = agent()
        .get(url)
        .call()
        .map_err(|e| error(format!("GET {url}: {e}")))?;
    resp.body_mut()
        .with_config()
        .limit(MAX_ANSWER)
        .read_to_vec()
        .map_err(|e| error(format!("GET {url}: {e}")))
}

fn get_json(url: &str) -> Result<serde_json::Value, Fail> {
    serde_json::from_slice(&get(url)?).map_err(|e| error(format!("GET {url}: {e}")))
}

/// The `--key`s: at least one, all of one log (one origin, the keys' name).
fn keys_of(texts: &[String]) -> Result<Vec<NoteVerifier>, Fail> {
    let keys = texts
        .iter()
        .map(|t| NoteVerifier::parse(t.trim()).map_err(|e| error(format!("--key: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(first) = keys.first() else {
        return Err(error("--key: at least one"));
    };
    if keys.iter().any(|k| k.name() != first.name()) {
        return Err(error(
            "--key: the keys name different logs (origins); audit one log at a time",
        ));
    }
    Ok(keys)
}

/// The given keys and every later checkpoint key the log lists as endorsed by one of them
/// (transitively), each endorsement verified here: the log's word alone adds no key.
fn follow_rotations(
    base: &str,
    keys: &[NoteVerifier],
    report: &mut Vec<String>,
) -> Result<Vec<NoteVerifier>, Fail> {
    let listed = get_json(&format!("{base}/v1/log/keys"))?;
    let entries = listed
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut trusted = keys.to_vec();
    let origin = keys
        .first()
        .map(|k| k.name().to_string())
        .unwrap_or_default();
    loop {
        let mut grew = false;
        for e in &entries {
            let text = |k: &str| e.get(k).and_then(serde_json::Value::as_str);
            let (Some(key), Some(by), Some(sig)) = (
                text("verifier_key"),
                text("endorsed_by"),
                text("endorsement"),
            ) else {
                continue;
            };
            let Ok(key) = NoteVerifier::parse(key) else {
                continue;
            };
            if trusted.contains(&key) {
                continue;
            }
            let Some(endorser) = NoteVerifier::parse(by).ok().filter(|b| trusted.contains(b))
            else {
                continue;
            };
            let sig = STANDARD
                .decode(sig)
                .map_err(|_| finding("GET /v1/log/keys: an endorsement is not base64"))?;
            if key.name() != origin
                || !writ_attestation::log::note::endorses(
                    default_provider(),
                    &endorser,
                    key.spki(),
                    &sig,
                )
            {
                return Err(finding(format!(
                    "GET /v1/log/keys: the endorsement of key {} by {} does not verify",
                    hex::encode(key.id()),
                    hex::encode(endorser.id())
                )));
            }
            report.push(format!(
                "checkpoint key {} followed: endorsed by key {}",
                hex::encode(key.id()),
                hex::encode(endorser.id())
            ));
            trusted.push(key);
            grew = true;
        }
        if !grew {
            return Ok(trusted);
        }
    }
}

/// Hint for a checkpoint none of the keys signed.
const ROTATION_HINT: &str = "if the log's checkpoint key was rotated, pass its new key too (--key, repeatable; the trust bundle's writ.log.verifier_keys)";

/// Where the remembered checkpoint is: `--state`, or one file per log origin (so a rotation of
/// the log's key keeps the auditor's memory). Before that, auditors kept one file per key: such
/// a file, when there is none per origin, is read (and the next write goes to the new place).
fn state_paths(args: &LogArgs, keys: &[NoteVerifier]) -> Result<(PathBuf, Vec<PathBuf>), Fail> {
    if let Some(p) = &args.state {
        return Ok((p.clone(), Vec::new()));
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .ok_or_else(|| error("no --state and no HOME"))?
        .join("writ/audit");
    use sha2::Digest as _;
    let file = |what: &str| {
        let id = hex::encode(sha2::Sha256::digest(what.as_bytes()));
        base.join(format!("{}.checkpoint", id.get(..16).unwrap_or(&id)))
    };
    let origin = keys.first().map(|k| k.name()).unwrap_or_default();
    let per_key = keys.iter().map(|k| file(&k.to_string())).collect();
    Ok((file(&format!("origin:{origin}")), per_key))
}

/// Fetches and verifies the latest checkpoint, and checks it against the remembered one and the
/// given ones; remembers it. Returns it.
fn verified_latest(
    args: &LogArgs,
    keys: &[NoteVerifier],
    others: &[PathBuf],
    report: &mut Vec<String>,
) -> Result<Checkpoint, Fail> {
    let base = args.log.trim_end_matches('/');
    let followed;
    let keys = if args.follow_rotations {
        followed = follow_rotations(base, keys, report)?;
        followed.as_slice()
    } else {
        keys
    };
    let origin = keys
        .first()
        .map(|k| k.name().to_string())
        .unwrap_or_default();
    let note = String::from_utf8(get(&format!("{base}/v1/log/checkpoint"))?)
        .map_err(|_| finding("the checkpoint is not UTF-8"))?;
    let latest = Checkpoint::verify_by_any(default_provider(), &note, keys, &origin)
        .map_err(|e| finding(format!("the log's checkpoint: {e} ({ROTATION_HINT})")))?;
    report.push(format!(
        "checkpoint verified: {origin}, size {}, root {}",
        latest.size,
        hex::encode(latest.root)
    ));
    let (state, earlier) = state_paths(args, keys)?;
    let mut seen: Vec<(String, Checkpoint)> = Vec::new();
    // The file per origin; when there is none yet, every file an earlier auditor kept per key
    // (each verified and checked like the rest: the log must extend all of them).
    let state_exists = match std::fs::metadata(&state) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(error(format!("{}: {e}", state.display()))),
    };
    let candidates = if state_exists {
        vec![state.clone()]
    } else {
        earlier
    };
    for from in &candidates {
        let text = match std::fs::read_to_string(from) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(error(format!("{}: {e}", from.display()))),
        };
        let cp = Checkpoint::verify_by_any(default_provider(), &text, keys, &origin).map_err(|e| {
            finding(format!(
                "the remembered checkpoint {}: {e} (a checkpoint remembered from before a rotation of the log's key needs the previous key too: --key, repeatable)",
                from.display()
            ))
        })?;
        let name = if *from == state {
            "remembered".to_string()
        } else {
            format!("remembered ({})", from.display())
        };
        seen.push((name, cp));
    }
    if seen.is_empty() {
        report.push(format!(
            "no checkpoint remembered yet: this one is ({})",
            state.display()
        ));
    }
    for f in others {
        let text =
            std::fs::read_to_string(f).map_err(|e| error(format!("{}: {e}", f.display())))?;
        let cp = Checkpoint::verify_by_any(default_provider(), &text, keys, &origin)
            .map_err(|e| finding(format!("checkpoint {}: {e}", f.display())))?;
        seen.push((f.display().to_string(), cp));
    }
    // Everything shown must be extended by the latest (a larger one means the log rolled back);
    // then every pair is consistent too, except two of one size with different roots.
    for (name, a) in &seen {
        let proof = if a.size < latest.size && a.size > 0 {
            consistency(base, a.size, latest.size)?
        } else {
            Vec::new()
        };
        check_extension(a, &latest, &proof)
            .map_err(|e| finding(format!("{name} -> the log's latest: {e}")))?;
        report.push(format!(
            "consistent: {name} (size {}) -> latest (size {})",
            a.size, latest.size
        ));
    }
    for (i, (name_a, a)) in seen.iter().enumerate() {
        for (name_b, b) in seen.iter().skip(i + 1) {
            if a.size == b.size && a.root != b.root {
                return Err(finding(format!(
                    "fork: {name_a} and {name_b} are both of size {} with different roots",
                    a.size
                )));
            }
        }
    }
    let remembered = seen
        .iter()
        .filter(|(n, _)| n.starts_with("remembered"))
        .map(|(_, c)| c.size)
        .max();
    if !state_exists || remembered.is_none_or(|r| r < latest.size) {
        writ::files::write_atomically(
            &state,
            note.as_bytes(),
            0o644,
            writ::files::Existing::Replace,
        )
        .map_err(error)?;
    }
    Ok(latest)
}

fn consistency(base: &str, first: u64, second: u64) -> Result<Vec<Hash>, Fail> {
    let url = format!("{base}/v1/log/proof/consistency?first={first}&second={second}");
    // Both sizes are covered by the log's own signed checkpoints: refusing the proof is a finding.
    let v = match agent().get(&url).call() {
        Ok(mut r) => r
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .map_err(|e| error(format!("GET {url}: {e}")))
            .and_then(|b| {
                serde_json::from_slice::<serde_json::Value>(&b)
                    .map_err(|e| error(format!("GET {url}: {e}")))
            })?,
        Err(ureq::Error::StatusCode(code)) => {
            return Err(finding(format!(
                "the log refused a consistency proof from {first} to {second} (HTTP {code}), which its signed checkpoints commit it to"
            )));
        }
        Err(e) => return Err(error(format!("GET {url}: {e}"))),
    };
    proof_of(&v)
}

fn proof_of(v: &serde_json::Value) -> Result<Vec<Hash>, Fail> {
    let hexes: Vec<String> = v
        .get("proof")
        .and_then(|p| p.as_array())
        .ok_or_else(|| finding("an answer without a proof"))?
        .iter()
        .map(|h| h.as_str().unwrap_or_default().to_string())
        .collect();
    parse_hashes(&hexes).map_err(finding)
}

fn check(args: Check) -> Result<Vec<String>, Fail> {
    let keys = keys_of(&args.log.key)?;
    let mut report = Vec::new();
    let latest = verified_latest(&args.log, &keys, &args.checkpoint, &mut report)?;
    if args.full {
        let base = args.log.log.trim_end_matches('/');
        let mut rebuilt = writ_attestation::log::merkle::RootBuilder::new();
        let mut malformed = 0u64;
        let mut index = 0u64;
        while index < latest.size {
            let width = (latest.size - index).min(TILE_WIDTH);
            let tile = Tile {
                level: None,
                index: index / TILE_WIDTH,
                width,
            };
            let bytes = get(&format!("{base}/v1/log/{}", tile.path()))?;
            let entries = parse_entry_bundle(&bytes).map_err(finding)?;
            if entries.len() as u64 != width {
                return Err(finding(format!(
                    "entry bundle {} holds {} entries, not {width}",
                    tile.path(),
                    entries.len()
                )));
            }
            for e in &entries {
                rebuilt.push(leaf_hash(e));
                if DecisionRecord::from_leaf(e).is_err() {
                    malformed += 1;
                }
            }
            index += width;
        }
        check_entries(&latest, &rebuilt).map_err(finding)?;
        report.push(format!(
            "all {} entries rebuild the checkpoint's root",
            latest.size
        ));
        if malformed > 0 {
            report.push(format!(
                "note: {malformed} entries are not decision records (tests or foreign data)"
            ));
        }
    }
    Ok(report)
}

fn record(args: RecordArgs) -> Result<Vec<String>, Fail> {
    let keys = keys_of(&args.log.key)?;
    let mut report = Vec::new();
    let latest = verified_latest(&args.log, &keys, &[], &mut report)?;
    walk(
        &args.log,
        &latest,
        report,
        args.index,
        None,
        args.lineage,
        None,
    )
}

fn lineage(args: LineageArgs) -> Result<Vec<String>, Fail> {
    let base = args.log.log.trim_end_matches('/').to_string();
    if args.jti.is_empty()
        || !args
            .jti
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(error("a jti is base64url"));
    }
    let found = get_json(&format!("{base}/v1/log/writs/{}", args.jti))?;
    let leaf = found
        .get("leaf_hash")
        .and_then(|h| h.as_str())
        .ok_or_else(|| error("the log's answer has no leaf_hash"))?;
    // The index is the log's word; walk checks the record there against the checkpoint and
    // that it is this writ's.
    let index = found
        .get("index")
        .and_then(|i| i.as_u64())
        .ok_or_else(|| finding(format!("writ {}: its record is not in the log", args.jti)))?;
    let keys = keys_of(&args.log.key)?;
    let mut report = vec![format!(
        "writ {}: record {index} (leaf hash {leaf})",
        args.jti
    )];
    let latest = verified_latest(&args.log, &keys, &[], &mut report)?;
    let want = parse_hashes(&[leaf.to_string()])
        .ok()
        .and_then(|h| h.first().copied())
        .ok_or_else(|| error("the log's leaf_hash is not a hash"))?;
    walk(
        &args.log,
        &latest,
        report,
        index,
        Some(want),
        true,
        Some(&args.jti),
    )
}

/// Verifies the record at `index` against the latest checkpoint and prints it; with `lineage`,
/// follows `parent` links to the root. With `jti`, every record must be an `issue` allow record
/// and the first must be that writ's (its `digests.jti`).
fn walk(
    log: &LogArgs,
    latest: &Checkpoint,
    mut report: Vec<String>,
    index: u64,
    expected: Option<Hash>,
    lineage: bool,
    jti: Option<&str>,
) -> Result<Vec<String>, Fail> {
    let base = log.log.trim_end_matches('/').to_string();
    let mut index = index;
    let mut expected = expected;
    let mut visited = std::collections::HashSet::new();
    for depth in 0..MAX_LINEAGE {
        if index >= latest.size {
            return Err(error(format!(
                "record {index} is not covered by the latest checkpoint (size {}) yet: try again after the next checkpoint",
                latest.size
            )));
        }
        let v = get_json(&format!("{base}/v1/log/records/{index}"))?;
        let bytes = STANDARD
            .decode(v.get("record").and_then(|r| r.as_str()).unwrap_or_default())
            .map_err(|e| finding(format!("record {index}: {e}")))?;
        let p = get_json(&format!(
            "{base}/v1/log/proof/inclusion?index={index}&tree_size={}",
            latest.size
        ))?;
        let proof = proof_of(&p)?;
        verify_inclusion(&leaf_hash(&bytes), index, latest.size, &proof, &latest.root).map_err(
            |e| {
                finding(format!(
                    "record {index} is not what the checkpoint commits to: {e}"
                ))
            },
        )?;
        if let Some(want) = expected
            && leaf_hash(&bytes) != want
        {
            return Err(finding(format!(
                "the log answered record {index} for a record whose leaf hash is {}",
                hex::encode(want)
            )));
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        report.push(format!(
            "record {index} (included in size {}): {text}",
            latest.size
        ));
        let rec = DecisionRecord::from_leaf(&bytes)
            .map_err(|e| finding(format!("record {index}: {e}")))?;
        if let Some(jti) = jti {
            if rec.kind != writ_attestation::log::record::Kind::Issue
                || rec.decision != writ_attestation::log::record::Decision::Allow
            {
                return Err(finding(format!(
                    "record {index} is not the issue record of a writ"
                )));
            }
            if depth == 0 {
                use sha2::Digest as _;
                let want = format!(
                    "sha256:{}",
                    hex::encode(sha2::Sha256::digest(jti.as_bytes()))
                );
                if rec.digests.get("jti") != Some(&want) {
                    return Err(finding(format!(
                        "record {index} is not the issue record of writ {jti}"
                    )));
                }
            }
            report.push(format!(
                "  {}: writ {} issued to {} at {}{}",
                if depth == 0 { "writ" } else { "parent" },
                rec.digests.get("writ").map(String::as_str).unwrap_or("?"),
                rec.subject,
                rec.time,
                if rec.digests.contains_key("scope") {
                    " (delegation)"
                } else {
                    ""
                },
            ));
        }
        if !lineage || !visited.insert(index) {
            break;
        }
        let Some(parent) = rec.parent_hash() else {
            if rec.parent.is_some() {
                return Err(finding(format!(
                    "record {index} names a parent that is not a leaf hash"
                )));
            }
            report.push(format!("lineage: {} record(s), root reached", depth + 1));
            break;
        };
        expected = Some(parent);
        let q = get_json(&format!(
            "{base}/v1/log/proof/inclusion?hash={}&tree_size={}",
            hex::encode(parent),
            latest.size
        ))?;
        let next = q
            .get("index")
            .and_then(|i| i.as_u64())
            .ok_or_else(|| finding(format!("the parent of record {index} is not in the log")))?;
        if next >= index {
            return Err(finding(format!(
                "record {index} names a parent at {next}, which is not earlier"
            )));
        }
        index = next;
    }
    Ok(report)
}

fn bundle(args: BundleArgs) -> Result<Vec<String>, Fail> {
    let keys = keys_of(&args.key)?;
    let origin = keys.first().map(|k| k.name()).unwrap_or_default();
    let bytes =
        std::fs::read(&args.file).map_err(|e| error(format!("{}: {e}", args.file.display())))?;
    let v = verify_bundle(default_provider(), &bytes, &keys, origin).map_err(finding)?;
    let mut report = vec![format!(
        "record {} is included in the checkpoint of size {} ({origin})",
        v.index, v.checkpoint.size,
    )];
    if let Some(w) = &args.writ {
        let compact =
            std::fs::read_to_string(w).map_err(|e| error(format!("{}: {e}", w.display())))?;
        let want = writ_attestation::writ::token_digest(compact.trim());
        let rec = DecisionRecord::from_leaf(&v.record).map_err(finding)?;
        if rec.kind != writ_attestation::log::record::Kind::Issue
            || rec.decision != writ_attestation::log::record::Decision::Allow
            || rec.digests.get("writ") != Some(&want)
        {
            return Err(finding(
                "the bundle's record is not the issue record of this writ",
            ));
        }
        report.push(format!("it is the issue record of the writ ({want})"));
    }
    report.push(String::from_utf8_lossy(&v.record).into_owned());
    Ok(report)
}

pub fn run(cmd: AuditCommand) -> ExitCode {
    let result = match cmd {
        AuditCommand::Check(a) => trust(&a.log).and_then(|()| check(a)),
        AuditCommand::Record(a) => trust(&a.log).and_then(|()| record(a)),
        AuditCommand::Bundle(a) => bundle(a),
        AuditCommand::Lineage(a) => trust(&a.log).and_then(|()| lineage(a)),
    };
    match result {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            println!("verified");
            ExitCode::SUCCESS
        }
        Err(Fail::Finding(f)) => {
            println!("REFUSED: {f}");
            ExitCode::from(1)
        }
        Err(Fail::Error(e)) => {
            eprintln!("writ audit: error: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Lineage {
        #[command(flatten)]
        args: super::LineageArgs,
    }

    #[test]
    fn a_jti_beginning_with_a_hyphen_is_a_jti() {
        let l = Lineage::try_parse_from([
            "lineage",
            "--log",
            "http://127.0.0.1:1",
            "--key",
            "k",
            "-s3K3IQLeBN-hIH0GHikcw",
        ])
        .unwrap();
        assert_eq!(l.args.jti, "-s3K3IQLeBN-hIH0GHikcw");
    }
}
