//! `writ serve`: the appliance. Built so far: the decision log (store, sequencing, checkpoints)
//! and its read routes over plain HTTP on a loopback or configured address. Enrollment,
//! attestation, issuance, TLS and the configuration file are not built yet (README).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use writ::decision_log::{DecisionLog, LogConfig};
use writ::http::{log_router, serve};
use writ::store::Engine;
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
    /// Permit `soft:` keys (test builds only).
    #[arg(long)]
    allow_software_keys: bool,
}

pub fn run(args: Serve) -> Result<(), String> {
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
        serve(listener, log_router(Arc::clone(&log)), shutdown)
            .await
            .map_err(|e| format!("server: {e}"))
    })?;
    log.close();
    Ok(())
}
