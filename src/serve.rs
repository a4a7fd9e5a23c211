//! `writ serve`: the appliance. Built so far: the decision log (store, sequencing, checkpoints)
//! and its read routes, enrollment and the admin operations, over plain HTTP on loopback only.
//! Attestation, issuance, TLS (and so any non-loopback address) and the configuration file are
//! not built yet (README).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use writ::appliance::{Appliance, ApplianceConfig};
use writ::decision_log::{DecisionLog, LogConfig};
use writ::http::{Limits, appliance_router, serve};
use writ::store::Engine;
use writ_attestation::evidence::EkTrustStore;
use writ_hsm::{OpenOptions, open_key};

#[derive(Debug, Args)]
pub struct Serve {
    /// The store: `sqlite:PATH` or a PostgreSQL connection string.
    #[arg(long)]
    store: String,
    /// The `checkpoint` key (pkcs11:, tpm: or, in tests, soft: URI).
    #[arg(long)]
    checkpoint_key: String,
    /// The log's origin (the first line of its checkpoints).
    #[arg(long)]
    origin: String,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Milliseconds between checkpoints while the log grows.
    #[arg(long, default_value_t = 1000)]
    checkpoint_interval_ms: u64,
    /// Seconds without a signed checkpoint after which decisions are refused (at least twice
    /// the checkpoint interval).
    #[arg(long, default_value_t = 30)]
    max_checkpoint_age: u64,
    /// Permit `soft:` keys (test builds only).
    #[arg(long)]
    allow_software_keys: bool,
    /// The trust domain of the SPIFFE IDs this appliance gives.
    #[arg(long, default_value = "writ.local")]
    trust_domain: String,
    /// TPM manufacturer root and intermediate certificates (PEM files, or folders of them) that
    /// EK certificates must chain to. Repeatable.
    #[arg(long = "ek-roots")]
    ek_roots: Vec<PathBuf>,
    /// Seconds a client has to send a request's headers (and the idle time allowed between
    /// requests on one connection).
    #[arg(long, default_value_t = 10)]
    header_read_timeout: u64,
    /// A file holding the admin token (admin operations need `Authorization: Bearer <token>`).
    /// Without it, admin operations are refused.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
}

/// Reads PEM certificates from files, or from every `.pem`/`.crt`/`.cer` file of folders.
fn ek_roots(paths: &[PathBuf]) -> Result<EkTrustStore, String> {
    let mut store = EkTrustStore::new();
    for path in paths {
        let files = if path.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("--ek-roots {}: {e}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .and_then(|x| x.to_str())
                        .is_some_and(|x| matches!(x, "pem" | "crt" | "cer"))
                })
                .collect();
            v.sort();
            v
        } else {
            vec![path.clone()]
        };
        let from_dir = path.is_dir();
        for f in files {
            let pem = std::fs::read_to_string(&f)
                .map_err(|e| format!("--ek-roots {}: {e}", f.display()))?;
            // In a folder, files that hold no certificate (keys, configuration) are skipped.
            if from_dir && !pem.contains("-----BEGIN CERTIFICATE-----") {
                continue;
            }
            store
                .add_pem(&pem)
                .map_err(|e| format!("--ek-roots {}: {e}", f.display()))?;
        }
    }
    Ok(store)
}

/// The admin token's digest, from a file that only its owner may read.
fn admin_token(path: &Path) -> Result<[u8; 32], String> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("--admin-token-file: {e}"))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "--admin-token-file {}: readable by others (chmod 600)",
            path.display()
        ));
    }
    let token = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| format!("--admin-token-file: {e}"))?,
    );
    let token = writ::appliance::normalize_token(&token);
    if token.len() < 16 {
        return Err("--admin-token-file: the token is shorter than 16 characters".into());
    }
    Ok(Sha256::digest(token.as_bytes()).into())
}

pub fn run(args: Serve) -> Result<(), String> {
    if !args.listen.ip().is_loopback() {
        return Err(format!(
            "--listen {}: TLS is not built yet, and plain HTTP is served on loopback only",
            args.listen
        ));
    }
    if !valid_trust_domain(&args.trust_domain) {
        return Err("--trust-domain: letters, digits, '-', '.' and '_' only".into());
    }
    let roots = ek_roots(&args.ek_roots)?;
    if roots.is_empty() {
        tracing::warn!("no --ek-roots: every enrollment will be refused (ek_untrusted)");
    }
    let admin = args
        .admin_token_file
        .as_deref()
        .map(admin_token)
        .transpose()?;
    let engine: Engine = args.store.parse().map_err(|e| format!("--store: {e}"))?;
    let key = open_key(
        &args
            .checkpoint_key
            .parse()
            .map_err(|e| format!("--checkpoint-key: {e}"))?,
        &OpenOptions {
            allow_software_keys: args.allow_software_keys,
        },
    )
    .map_err(|e| format!("--checkpoint-key: {e}"))?;
    let mut config = LogConfig::new(&args.origin);
    config.checkpoint_interval = Duration::from_millis(args.checkpoint_interval_ms.max(10));
    config.max_checkpoint_age = Duration::from_secs(args.max_checkpoint_age.max(1));
    let log =
        Arc::new(DecisionLog::open(engine, config, key).map_err(|e| format!("{}: {e}", e.code()))?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("--listen {}: {e}", args.listen))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("--listen: {e}"))?;
        println!("writ serve: listening on http://{addr}");
        eprintln!("writ serve: warning: plain HTTP (loopback only); TLS is not built yet");
        println!("writ serve: checkpoint verifier key {}", log.verifier_key());
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending::<()>().await,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        let app = Arc::new(Appliance::new(
            Arc::clone(&log),
            ApplianceConfig {
                trust_domain: args.trust_domain.clone(),
                ek_roots: roots,
                admin_token_sha256: admin,
            },
        ));
        let limits = Limits {
            header_read: Duration::from_secs(args.header_read_timeout.max(1)),
            ..Limits::default()
        };
        serve(listener, appliance_router(app), limits, shutdown)
            .await
            .map_err(|e| format!("server: {e}"))
    })?;
    log.close();
    Ok(())
}

fn valid_trust_domain(td: &str) -> bool {
    (1..=255).contains(&td.len())
        && td
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_'))
}
