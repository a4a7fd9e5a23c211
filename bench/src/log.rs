//! Decision log load generator: durable appends per second with group commit (N concurrent
//! writer threads, each waiting for its append to be durable before the next), the checkpoint
//! interval held under that load, and proof generation latency at a large tree.
//!
//! usage: cargo run --release -p writ-bench --bin log-bench -- [--seconds S] [--writers N]
//!        [--engine sqlite:PATH | --engine 'host=... dbname=...'] [--proof-leaves N]
//!
//! The checkpoint key is a SoftHSM2 key when `--pkcs11` is given (PKCS#11 URI), a software key
//! otherwise (signing is off the append path either way; its rate is in custody-bench).
#![forbid(unsafe_code)]
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod machine;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use writ::decision_log::{DecisionLog, LogConfig};
use writ::store::Engine;
use writ_hsm::{OpenOptions, generate_key, open_key};

#[derive(Debug, Parser)]
struct Args {
    /// Seconds of load per figure.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Concurrent writer threads (each appends one record and waits for it to be durable).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    writers: Vec<usize>,
    /// The store (default: a SQLite file in a temporary directory on this machine's disk).
    #[arg(long)]
    engine: Option<String>,
    /// The checkpoint key (default: a software key in the temporary directory).
    #[arg(long)]
    key: Option<String>,
    /// Tree size for the proof latency figure (0 to skip).
    #[arg(long, default_value_t = 1_000_000)]
    proof_leaves: u64,
}

/// A decision record of a realistic size (about 400 bytes of canonical JSON, digests only).
fn record(t: usize, n: u64) -> Vec<u8> {
    format!(
        "{{\"decision\":\"allow\",\"digests\":{{\"ear\":\"sha256:{:064x}\",\"evidence\":\"sha256:{:064x}\",\"writ\":\"sha256:{:064x}\"}},\"kind\":\"issue\",\"parent\":null,\"policy_bundle_hash\":\"sha256:{:064x}\",\"reasons\":[],\"subject\":\"spiffe://writ.example/runtime/bench-{t}\",\"time\":1795400000,\"v\":1}}",
        n, n + 1, n + 2, t
    )
    .into_bytes()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let args = Args::parse();
    let dir =
        tempfile::tempdir_in(std::env::var("WRIT_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
            .expect("temporary directory");
    let engine: Engine = match &args.engine {
        Some(e) => e.parse().expect("--engine"),
        None => Engine::Sqlite(dir.path().join("bench.db")),
    };
    let options = OpenOptions {
        allow_software_keys: true,
    };
    let key = match &args.key {
        Some(uri) => open_key(&uri.parse().expect("--key"), &options).expect("checkpoint key"),
        None => generate_key(
            &format!("soft:path={}", dir.path().join("cp.key").display())
                .parse()
                .unwrap(),
            &options,
        )
        .unwrap(),
    };
    let log = Arc::new(
        DecisionLog::open(engine.clone(), LogConfig::new("bench.writ/log"), key).expect("open"),
    );
    println!(
        "machine: {}; store {:?}; checkpoint interval 1 s; {:.0} s per figure",
        machine::describe(),
        engine,
        args.seconds
    );
    println!(
        "{:>8} {:>18} {:>12} {:>12} {:>22}",
        "writers", "durable appends/s", "p50 ms", "p99 ms", "max checkpoint gap ms"
    );
    let mut base = 0u64;
    for &writers in &args.writers {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        // Watch the published checkpoints: the longest gap between two under load.
        let watcher = {
            let log = Arc::clone(&log);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut last_size = log.latest_checkpoint().map_or(0, |c| c.size);
                let mut last_change = Instant::now();
                let mut max_gap = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let size = log.latest_checkpoint().map_or(0, |c| c.size);
                    if size != last_size {
                        max_gap = max_gap.max(last_change.elapsed());
                        last_change = Instant::now();
                        last_size = size;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                max_gap.max(last_change.elapsed())
            })
        };
        let start = Instant::now();
        let window = Duration::from_secs_f64(args.seconds);
        let handles: Vec<_> = (0..writers)
            .map(|t| {
                let log = Arc::clone(&log);
                let stop = Arc::clone(&stop);
                let count = Arc::clone(&count);
                std::thread::spawn(move || {
                    let mut lat = Vec::new();
                    let mut n = base;
                    while !stop.load(Ordering::Relaxed) {
                        let r = record(t, n);
                        let t0 = Instant::now();
                        log.append(&r).expect("append");
                        lat.push(t0.elapsed());
                        count.fetch_add(1, Ordering::Relaxed);
                        n += 1;
                    }
                    lat
                })
            })
            .collect();
        std::thread::sleep(window);
        stop.store(true, Ordering::Relaxed);
        let mut lat: Vec<Duration> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let elapsed = start.elapsed().as_secs_f64();
        let gap = watcher.join().unwrap();
        lat.sort();
        let n = count.load(Ordering::Relaxed);
        base += n;
        println!(
            "{:>8} {:>18.0} {:>12.2} {:>12.2} {:>22}",
            writers,
            n as f64 / elapsed,
            percentile(&lat, 0.5).as_secs_f64() * 1000.0,
            percentile(&lat, 0.99).as_secs_f64() * 1000.0,
            gap.as_millis()
        );
    }

    if args.proof_leaves > 0 {
        // Grow the tree to the target size in large batches, then time proofs.
        let (mut size, _) = log.head();
        let t0 = Instant::now();
        while size < args.proof_leaves {
            let n = (args.proof_leaves - size).min(8192);
            let batch: Vec<Vec<u8>> = (0..n).map(|i| record(0, size + i)).collect();
            log.append_many(batch).expect("append batch");
            size += n;
        }
        let cp = log.checkpoint_now().expect("checkpoint");
        println!(
            "\ntree grown to {} leaves in {:.1} s; proofs against the checkpoint at {}:",
            cp.size,
            t0.elapsed().as_secs_f64(),
            cp.size
        );
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut incl = Vec::new();
        let mut cons = Vec::new();
        for _ in 0..2000 {
            let i = next() % cp.size;
            let t = Instant::now();
            let p = log.inclusion_proof(i, cp.size).expect("inclusion");
            incl.push(t.elapsed());
            assert!(p.len() <= 64);
            let old = 1 + next() % (cp.size - 1);
            let t = Instant::now();
            log.consistency_proof(old, cp.size).expect("consistency");
            cons.push(t.elapsed());
        }
        incl.sort();
        cons.sort();
        println!(
            "  inclusion:   p50 {:.3} ms, p99 {:.3} ms",
            percentile(&incl, 0.5).as_secs_f64() * 1000.0,
            percentile(&incl, 0.99).as_secs_f64() * 1000.0
        );
        println!(
            "  consistency: p50 {:.3} ms, p99 {:.3} ms",
            percentile(&cons, 0.5).as_secs_f64() * 1000.0,
            percentile(&cons, 0.99).as_secs_f64() * 1000.0
        );
        let t = Instant::now();
        drop(log);
        let t1 = Instant::now();
        let uri = args
            .key
            .clone()
            .unwrap_or_else(|| format!("soft:path={}", dir.path().join("cp.key").display()));
        let key = open_key(&uri.parse().expect("key"), &options).expect("key");
        let log = DecisionLog::open(engine, LogConfig::new("bench.writ/log"), key).expect("reopen");
        println!(
            "  close {:.1} s; reopen with full read-back of {} leaves: {:.1} s",
            t1.duration_since(t).as_secs_f64(),
            log.head().0,
            t1.elapsed().as_secs_f64()
        );
    }
}
