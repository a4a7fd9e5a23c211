//! `writ-gate`, the execution gateway. Links no TPM or PKCS#11 library and never will.
//!
//! Built so far: `writ-gate exec` (runs one tool of the gateway's manifest for a writ, after the
//! decision is durable in the spool), `writ-gate tools` (the manifest and its digest),
//! `writ-gate verify` (an authorization decision: it consumes the writ) and `writ-gate inspect`
//! (explains a writ without consuming it; never answers allow), `writ-gate bootstrap` and
//! `writ-gate refresh` (the trust bundle, from the appliance pinned by its CA's fingerprint),
//! `writ-gate proxy` (HTTP) and `writ-gate spool`. Not built yet: reporting the spool to
//! `writ serve`.
//! Exit codes: 0 allow, 1 deny, 2 error (also a refusal).
#![forbid(unsafe_code)]

mod exec;
mod proxy;
mod trust;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use writ_attestation::crypto::default_provider;
use writ_attestation::jcs::canonical;
use writ_attestation::writ::Refusal;
use writ_attestation::writ::bundle::TrustBundle;
use writ_attestation::writ::jws::{HeaderShape, TYP_WRIT, parse};
use writ_attestation::writ::request::{Request, digest, proof_target};
use writ_attestation::writ::verify::{Context, check};
use writ_gateway::replay::SqliteReplay;

/// Largest writ, proof or body file read.
const MAX_FILE: u64 = 16 * 1024 * 1024;

#[derive(Debug, Parser)]
#[command(name = "writ-gate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decide whether a writ authorizes one exact request (consumes it). Exit 0 allow, 1 deny,
    /// 2 error.
    Verify(Box<VerifyArgs>),
    /// Run one tool of the manifest for a writ: the tool's file checked, the writ verified and
    /// consumed for exactly this command, the decision durable in the spool, then the tool run
    /// with the manifest's environment alone. Exit 0 allowed (the tool ran; its own status is
    /// printed and spooled), 1 denied (nothing ran), 2 error (nothing ran).
    Exec(ExecArgs),
    /// Fetch the trust bundle from the appliance for the first time, pinning its CA certificate
    /// by fingerprint (kept beside the bundle, or where the configuration's `ca` says).
    Bootstrap {
        /// The gateway's configuration (TOML).
        #[arg(long)]
        config: PathBuf,
        /// The appliance (`https://host:port`); default: the configuration's `server`.
        #[arg(long)]
        server: Option<String>,
        /// `sha256:<hex>` of the appliance's CA certificate (`writ serve` prints it).
        #[arg(long)]
        fingerprint: String,
    },
    /// Fetch the trust bundle again (after bootstrap); with --watch, forever, on the bundle's
    /// refresh hint. A bundle of a lower sequence, another trust domain, or too old is refused
    /// and the one in place kept.
    Refresh {
        /// The gateway's configuration (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Keep refreshing on the bundle's hint.
        #[arg(long)]
        watch: bool,
    },
    /// An HTTP reverse proxy for a tool's API (the configuration's [proxy] section): a request is
    /// forwarded only with a writ for exactly that request and its holder's DPoP proof.
    Proxy {
        /// The gateway's configuration (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Where to listen (default: the configuration's proxy.listen).
        #[arg(long)]
        listen: Option<String>,
        /// The tool's API, http://host:port (default: the configuration's proxy.upstream).
        #[arg(long)]
        upstream: Option<String>,
    },
    /// Print the last checkpoint of the decision log this host's gateways saw (its size is what
    /// an inclusion bundle's consistency proof must start from).
    Checkpoint {
        /// The gateway's configuration (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Renew this gateway's client certificate (cert and key in the configuration) with the one
    /// it has: a new key made here, a certificate for the same identity from the appliance. Run
    /// it before the certificate expires (a systemd timer, cron); a revoked gateway gets none.
    Renew {
        /// The gateway's configuration (TOML: server, cert, key).
        #[arg(long)]
        config: PathBuf,
        /// The new certificate's lifetime, hours.
        #[arg(long, default_value_t = 168)]
        hours: u64,
    },
    /// Report the spool to the appliance (its decisions and outcomes become gate and outcome
    /// records in the log) over mutual TLS with this gateway's certificate; the entries
    /// recorded leave the spool. With --watch, every few seconds, forever.
    Report {
        /// The gateway's configuration (TOML: server, cert, key).
        #[arg(long)]
        config: PathBuf,
        /// Keep reporting.
        #[arg(long)]
        watch: bool,
    },
    /// Print the spool (decisions and outcomes) as JSON lines, oldest first.
    Spool {
        /// The gateway's configuration (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Only the entries after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
    /// Print the tool manifest and its digest (for policy authors).
    Tools {
        /// The gateway's configuration (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Explain a writ without verifying or consuming it. Never answers allow (exit 1, or 2 if
    /// the input is not a writ).
    Inspect {
        /// The writ (compact JWS).
        #[arg(long)]
        writ: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// The writ (compact JWS).
    #[arg(long)]
    writ: PathBuf,
    /// The DPoP proof (compact JWS). Without one, the answer is deny.
    #[arg(long)]
    proof: Option<PathBuf>,
    /// The trust bundle (JSON, as served at /v1/bundle).
    #[arg(long)]
    bundle: PathBuf,
    /// This gateway's audience.
    #[arg(long)]
    audience: String,
    /// The replay store shared by this audience's gateways on this host.
    #[arg(long)]
    replay_db: PathBuf,
    /// The writ's inclusion bundle (GET /v1/log/bundle; `writ agent inclusion`).
    #[arg(long)]
    inclusion: Option<PathBuf>,
    /// Refuse a writ without an inclusion bundle.
    #[arg(long)]
    require_inclusion: bool,
    /// The resource this gateway serves the request as: the writ must name it.
    #[arg(long)]
    resource: Option<String>,
    /// Tolerated clock skew, seconds.
    #[arg(long, default_value_t = 30)]
    skew: i64,
    /// The oldest trust bundle accepted, seconds since it was issued.
    #[arg(long, default_value_t = 86_400)]
    max_bundle_age: i64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// A command: the tool's manifest name (its arguments follow `--`).
    #[arg(long, conflicts_with = "http")]
    tool: Option<String>,
    /// An HTTP request: METHOD URL.
    #[arg(long, num_args = 2, value_names = ["METHOD", "URL"])]
    http: Option<Vec<String>>,
    /// The HTTP body.
    #[arg(long, requires = "http")]
    body: Option<PathBuf>,
    /// The HTTP Content-Type.
    #[arg(long, requires = "http", default_value = "")]
    content_type: String,
    /// The command's arguments, after `--`.
    #[arg(last = true)]
    args: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
struct ExecArgs {
    /// The gateway's configuration (TOML: audience, bundle, replay_db, spool, tools).
    #[arg(long)]
    config: PathBuf,
    /// The writ (compact JWS).
    #[arg(long)]
    writ: PathBuf,
    /// The DPoP proof (compact JWS) for this command.
    #[arg(long)]
    proof: Option<PathBuf>,
    /// The writ's inclusion bundle (required when the configuration says require_inclusion).
    #[arg(long)]
    inclusion: Option<PathBuf>,
    /// The tool's name in the manifest.
    #[arg(long)]
    tool: String,
    /// The tool's arguments, after `--`.
    #[arg(last = true)]
    args: Vec<std::ffi::OsString>,
}

/// This process's user (the owner of /proc/self).
fn own_uid() -> Result<u32, String> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .map_err(|e| format!("/proc/self: {e}"))
}

fn run_exec(a: &ExecArgs) -> ExitCode {
    let error = |e: String| {
        eprintln!("writ-gate exec: error: {e}");
        ExitCode::from(2)
    };
    let c = match exec::GateConfig::load(&a.config) {
        Ok(c) => c,
        Err(e) => return error(e),
    };
    let uid = match own_uid() {
        Ok(u) => u,
        Err(e) => return error(e),
    };
    // Refusals are printed, not spooled: nobody is identified before the writ verifies, and an
    // unidentified caller must not be able to fill the spool.
    let deny = |r: Refusal| {
        println!("deny: {}: {}", r.code, r.detail);
        ExitCode::from(1)
    };
    if let Err(r) = c.check_trust_files(&a.config, uid) {
        return deny(r);
    }
    let Some(tool) = c.tools.get(&a.tool) else {
        return deny(Refusal::new(
            "tool_unknown",
            format!("{:?} is not a tool of this gateway's manifest", a.tool),
        ));
    };
    if let Err(r) = exec::check_tool(tool, uid) {
        return deny(r);
    }
    let verify = VerifyArgs {
        writ: a.writ.clone(),
        proof: a.proof.clone(),
        bundle: c.bundle.clone(),
        audience: c.audience.clone(),
        replay_db: c.replay_db.clone(),
        skew: c.skew_s,
        max_bundle_age: c.max_bundle_age_s,
        inclusion: a.inclusion.clone(),
        require_inclusion: c.require_inclusion,
        resource: tool.resource.clone(),
        format: Format::Text,
        tool: Some(a.tool.clone()),
        http: None,
        body: None,
        content_type: String::new(),
        args: a.args.clone(),
    };
    // The decision is spooled in the transaction that consumes the writ: durable before
    // anything runs, and a store that cannot record it consumes nothing.
    let store = match SqliteReplay::open_bounded(&c.replay_db, c.spool_max) {
        Ok(s) => s,
        Err(r) => return deny(r),
    };
    let allowed = match decide(&verify, &store, true) {
        Outcome::Allow(d) => d,
        Outcome::Deny(r) => return deny(r),
        Outcome::Error(e) => return error(e),
    };
    let jti = allowed.get("jti").cloned().unwrap_or(Value::Null);
    let record_outcome = |entry: &Value| {
        if let Err(r) = store.record(entry) {
            eprintln!("writ-gate exec: the outcome was not spooled: {}", r.detail);
        }
    };
    // The file once more, right before it runs (the verification and the spool took time).
    if let Err(r) = exec::check_tool(tool, uid) {
        record_outcome(
            &json!({"kind": "outcome", "time": now(), "tool": a.tool, "jti": jti,
                               "exit": null, "status": format!("not run: {}", r.detail)}),
        );
        return deny(r);
    }
    let started = std::time::Instant::now();
    let status = std::process::Command::new(&tool.path)
        .args(&a.args)
        .env_clear()
        .envs(&tool.env)
        .current_dir(&tool.cwd)
        .status();
    let (code, detail) = match &status {
        Ok(s) => (s.code(), s.to_string()),
        Err(e) => (None, format!("the tool could not be started: {e}")),
    };
    let outcome = json!({"kind": "outcome", "time": now(), "tool": a.tool, "jti": jti,
                         "exit": code, "status": detail,
                         "duration_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)});
    record_outcome(&outcome);
    eprintln!("allow: ran {} ({detail})", a.tool);
    match status {
        Ok(_) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(2),
    }
}

/// Runs bootstrap or refresh: exit 0 with the installed bundle's sequence, 1 refused, 2 error.
fn trust_command(
    what: &str,
    config: &std::path::Path,
    run: impl FnOnce(&exec::GateConfig) -> Result<TrustBundle, Refusal>,
) -> ExitCode {
    let c = match exec::GateConfig::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("writ-gate {what}: error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&c) {
        Ok(b) => {
            println!(
                "trust bundle of {} installed in {}: spiffe_sequence {}, expires at {}",
                b.trust_domain,
                c.bundle.display(),
                b.sequence,
                b.expires_at
            );
            ExitCode::SUCCESS
        }
        Err(r) => {
            println!("refused: {}: {}", r.code, r.detail);
            ExitCode::from(1)
        }
    }
}

fn tools(config: &std::path::Path) -> ExitCode {
    match exec::GateConfig::load(config).and_then(|c| c.manifest()) {
        Ok((m, d)) => {
            println!("{:#}", json!({"manifest": m, "digest": d}));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("writ-gate tools: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let mut buf = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{what}: {e}"))?;
    if buf.len() as u64 > MAX_FILE {
        return Err(format!("{what}: larger than {MAX_FILE} bytes"));
    }
    Ok(buf)
}

fn text(path: &PathBuf, what: &str) -> Result<String, String> {
    let b = read(path, what)?;
    let s = String::from_utf8(b).map_err(|_| format!("{what}: not UTF-8"))?;
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The system clock, seconds since the Unix epoch, if it can be read and is after 1970 (every
/// decision refuses without it: `clock`).
fn clock() -> Result<i64, Refusal> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .filter(|t| *t > 0)
        .ok_or_else(|| {
            Refusal::new(
                "clock",
                "the system clock is unavailable or before 1970: nothing can be decided",
            )
        })
}

/// The digest of a trust bundle's version (its RFC 8785 form without what the appliance changes
/// within one version: the validity window, and the previous policy bundle hash it drops when
/// its deadline passes), so that neither reformatting the file nor fetching the same version
/// again is taken for another bundle under the same sequence.
fn bundle_digest(bytes: &[u8]) -> Result<String, Refusal> {
    use sha2::{Digest, Sha256};
    let mut v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Refusal::new("bundle", format!("the trust bundle: {e}")))?;
    if let Some(w) = v.get_mut("writ").and_then(Value::as_object_mut) {
        for k in ["issued_at", "expires_at", "policy_bundles"] {
            w.remove(k);
        }
    }
    let c = canonical(&v).map_err(|e| Refusal::new("bundle", format!("the trust bundle: {e}")))?;
    Ok(hex::encode(Sha256::digest(c.as_bytes())))
}

enum Outcome {
    Allow(serde_json::Value),
    Deny(Refusal),
    Error(String),
}

/// The one decision of `verify` and `exec`: every check, then single use in `store`. With
/// `spool`, the allow is spooled in the transaction that consumes the writ.
fn decide(a: &VerifyArgs, store: &SqliteReplay, spool: bool) -> Outcome {
    let inputs = (|| -> Result<_, String> {
        let token = text(&a.writ, "--writ")?;
        let proof = a.proof.as_ref().map(|p| text(p, "--proof")).transpose()?;
        let bundle = read(&a.bundle, "--bundle")?;
        Ok((token, proof, bundle))
    })();
    let (token, proof, bundle) = match inputs {
        Ok(v) => v,
        Err(e) => return Outcome::Error(e),
    };
    let bundle_bytes = bundle;
    let bundle = match TrustBundle::parse(&bundle_bytes) {
        Ok(b) => b,
        Err(r) => return Outcome::Deny(r),
    };
    let now = match clock() {
        Ok(t) => t,
        Err(r) => return Outcome::Deny(r),
    };
    // The request, recomputed from what would run; arguments must be UTF-8 (else exit 2).
    let argv: Vec<String>;
    let body: Vec<u8>;
    let request = match (&a.tool, &a.http) {
        (Some(tool), None) => {
            let Ok(v) = a.args.iter().map(|s| s.clone().into_string()).collect() else {
                return Outcome::Error("an argument is not UTF-8".into());
            };
            argv = v;
            Request::Exec { tool, argv: &argv }
        }
        (None, Some(h)) => {
            let (Some(method), Some(url)) = (h.first(), h.get(1)) else {
                return Outcome::Error("--http METHOD URL".into());
            };
            if !a.args.is_empty() {
                return Outcome::Error("arguments after -- are for --tool".into());
            }
            body = match a.body.as_ref().map(|b| read(b, "--body")).transpose() {
                Ok(b) => b.unwrap_or_default(),
                Err(e) => return Outcome::Error(e),
            };
            Request::Http {
                method,
                url,
                content_type: &a.content_type,
                body: &body,
            }
        }
        _ => return Outcome::Error("give --tool NAME -- ARGS... or --http METHOD URL".into()),
    };
    let (req, (htm, htu)) = match digest(&request).and_then(|d| Ok((d, proof_target(&request)?))) {
        Ok(v) => v,
        Err(r) => return Outcome::Deny(r),
    };
    let checked = check(
        default_provider(),
        &bundle,
        &Context {
            token: &token,
            proof: proof.as_deref(),
            request_digest: &req,
            htm: &htm,
            htu: &htu,
            audience: &a.audience,
            now,
            skew: a.skew,
            nonce: None,
            max_bundle_age: a.max_bundle_age,
        },
    );
    // Rollback, once the writ checked out under this bundle and before it is consumed: the
    // store remembers the highest sequence (and that bundle's digest) seen on this host. The mark
    // is as trustworthy as the bundle files given to writ-gate.
    let action = match &request {
        Request::Exec { .. } => "exec",
        Request::Http { .. } => "http",
    };
    let observed = checked.and_then(|c| {
        writ_gateway::act::check_act(c.claims(), action, a.resource.as_deref())?;
        let d = bundle_digest(&bundle_bytes)?;
        store.observe_bundle(&bundle.trust_domain, bundle.sequence, &d)?;
        // The writ's issuance in the log, under a checkpoint consistent with the last seen.
        match &a.inclusion {
            Some(path) => {
                let bytes = read(path, "--inclusion").map_err(|e| Refusal::new("inclusion", e))?;
                let v = writ_gateway::inclusion::check_inclusion(
                    default_provider(),
                    &bytes,
                    &bundle,
                    &token,
                )?;
                store.observe_checkpoint(&v.checkpoint, v.consistency)?;
            }
            None if a.require_inclusion => {
                return Err(Refusal::new(
                    "inclusion_missing",
                    "this gateway requires the writ's inclusion bundle (--inclusion)",
                ));
            }
            None => {}
        }
        Ok(c)
    });
    let consumed = observed.and_then(|c| match spool {
        false => c.consume(store),
        true => {
            let entry = writ_gateway::spool::gate_entry(now, &request, c.claims(), &req, &token);
            let recording = store.recording(&entry);
            c.consume(&recording)
        }
    });
    match consumed {
        Ok(auth) => Outcome::Allow(json!({
            "jti": auth.claims().jti,
            "sub": auth.claims().sub,
            "aud": auth.claims().aud,
            "request": req,
        })),
        Err(r) => Outcome::Deny(r),
    }
}

/// Prints the last checkpoint seen (`{"origin", "size", "root"}`, or `null`).
fn print_checkpoint(config: &std::path::Path) -> ExitCode {
    let seen = exec::GateConfig::load(config).and_then(|c| {
        let b = read(&c.bundle, "the trust bundle")?;
        let b = TrustBundle::parse(&b).map_err(|r| r.detail)?;
        if !c.replay_db.exists() {
            return Ok(Value::Null);
        }
        let seen =
            SqliteReplay::checkpoint_seen(&c.replay_db, &b.log_origin).map_err(|r| r.detail)?;
        Ok(seen.map_or(
            Value::Null,
            |(size, root)| json!({"origin": b.log_origin, "size": size, "root": hex::encode(root)}),
        ))
    });
    match seen {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("writ-gate checkpoint: error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Prints the spool's entries after `after` as JSON lines (`{"seq", "entry"}`).
fn print_spool(config: &std::path::Path, after: i64) -> ExitCode {
    let c = match exec::GateConfig::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("writ-gate spool: error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut after = after;
    loop {
        match SqliteReplay::spool_entries(&c.replay_db, after, 1000) {
            Ok(rows) if rows.is_empty() => return ExitCode::SUCCESS,
            Ok(rows) => {
                for (seq, entry) in rows {
                    println!("{}", json!({"seq": seq, "entry": entry}));
                    after = seq;
                }
            }
            Err(r) => {
                eprintln!("writ-gate spool: error: {}", r.detail);
                return ExitCode::from(2);
            }
        }
    }
}

fn inspect(writ: &PathBuf) -> ExitCode {
    let token = match text(writ, "--writ") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("writ-gate inspect: error: {e}");
            return ExitCode::from(2);
        }
    };
    match parse(&token, TYP_WRIT, HeaderShape::Kid) {
        Ok(u) => {
            let payload: serde_json::Value =
                serde_json::from_slice(u.unverified_payload()).unwrap_or(serde_json::Value::Null);
            println!(
                "{:#}",
                json!({
                    "verified": false,
                    "note": "inspection only: nothing was verified or consumed; this is not an authorization",
                    "kid": u.kid(),
                    "claims": payload,
                })
            );
            ExitCode::from(1)
        }
        Err(r) => {
            println!("not a writ: {}: {}", r.code, r.detail);
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Inspect { writ } => inspect(&writ),
        Command::Exec(a) => run_exec(&a),
        Command::Tools { config } => tools(&config),
        Command::Spool { config, after } => print_spool(&config, after),
        Command::Checkpoint { config } => print_checkpoint(&config),
        Command::Renew { config, hours } => {
            match exec::GateConfig::load(&config).and_then(|c| trust::renew(&c, hours)) {
                Ok(id) => {
                    println!("renewed the certificate of {id}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("writ-gate renew: error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Report { config, watch } => {
            match exec::GateConfig::load(&config).and_then(|c| trust::report(&c, watch)) {
                Ok(n) => {
                    println!("reported {n} spool entries");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("writ-gate report: error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Proxy {
            config,
            listen,
            upstream,
        } => {
            let run = exec::GateConfig::load(&config).and_then(|c| {
                let uid = own_uid()?;
                c.check_trust_files(&config, uid)
                    .map_err(|r| format!("{}: {}", r.code, r.detail))?;
                proxy::run(c, listen, upstream)
            });
            match run {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("writ-gate proxy: error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Bootstrap {
            config,
            server,
            fingerprint,
        } => trust_command("bootstrap", &config, |c| {
            trust::fetch_and_install(c, server.as_deref(), Some(&fingerprint))
        }),
        Command::Refresh { config, watch } => {
            trust_command("refresh", &config, |c| trust::refresh(&config, c, watch))
        }
        Command::Verify(a) => {
            let outcome = match SqliteReplay::open(&a.replay_db) {
                Ok(store) => decide(&a, &store, false),
                Err(r) => Outcome::Deny(r),
            };
            let (code, doc) = match &outcome {
                Outcome::Allow(d) => (0, json!({"decision": "allow", "writ": d})),
                Outcome::Deny(r) => (
                    1,
                    json!({"decision": "deny", "code": r.code, "detail": r.detail}),
                ),
                Outcome::Error(e) => (
                    2,
                    json!({"decision": "error", "code": "input", "detail": e}),
                ),
            };
            match a.format {
                Format::Json => println!("{doc}"),
                Format::Text => match &outcome {
                    Outcome::Allow(d) => println!(
                        "allow: writ {} for {}",
                        d.get("jti").and_then(|v| v.as_str()).unwrap_or_default(),
                        d.get("sub").and_then(|v| v.as_str()).unwrap_or_default()
                    ),
                    Outcome::Deny(r) => println!("deny: {}: {}", r.code, r.detail),
                    Outcome::Error(e) => eprintln!("writ-gate verify: error: {e}"),
                },
            }
            ExitCode::from(code)
        }
    }
}
