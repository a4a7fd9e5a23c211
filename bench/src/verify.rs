//! Full writ verifications per second per core, beside the raw ES256 verify rate of the same
//! signature function measured in the same run.
//!
//! A full verification is what `writ-gate` does for every request: strict JWS parsing, the
//! issuer key from the trust bundle, the writ's signature, claims, request binding, the DPoP
//! proof (parse, thumbprint, its signature, `ath`), the policy hash, and single use recorded in
//! the SQLite replay store (WAL, synchronous=FULL, group commit) on disk. Each verification
//! consumes a distinct writ and proof, made before the clock starts.
//!
//! usage: cargo run --release -p writ-bench --bin verify-bench -- [--seconds S] [--threads N,..]
#![forbid(unsafe_code)]
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod fixture;
mod machine;

use fixture::{AUD, Key, now};

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use clap::Parser;

use writ_attestation::crypto::{CryptoProvider, default_provider};
use writ_attestation::jwk::EcJwk;
use writ_attestation::writ::Refusal;
use writ_attestation::writ::bundle::TrustBundle;

use writ_attestation::writ::jws::verify_es256;
use writ_attestation::writ::request::{Request, digest, proof_target};
use writ_attestation::writ::verify::{Context, ReplayKey, ReplayStore, check, verify};
use writ_gateway::replay::SqliteReplay;

#[derive(Debug, Parser)]
struct Args {
    /// Seconds per figure.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Verifying threads, one figure each (each blocks on its own commit).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 16])]
    threads: Vec<usize>,
    /// Verifications in flight on an async runtime with one worker thread per core, one figure
    /// each (a worker verifies other requests while a commit is on its way to disk, as the
    /// proxy does).
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 256])]
    inflight: Vec<usize>,
}

struct Fixture {
    bundle: TrustBundle,
    req: String,
    htm: String,
    htu: String,
    issuer: EcJwk,
}

fn fixture(t: i64) -> Fixture {
    let argv = vec!["--env".to_string(), "prod".to_string()];
    let r = Request::Exec {
        tool: "deploy",
        argv: &argv,
    };
    let (htm, htu) = proof_target(&r).unwrap();
    Fixture {
        bundle: TrustBundle::parse(fixture::bundle(t).to_string().as_bytes()).unwrap(),
        req: digest(&r).unwrap(),
        htm,
        htu,
        issuer: Key::new(0).jwk,
    }
}

/// `n` distinct (writ, proof) pairs from `holders` holder keys in turn, as the appliance and
/// runtimes would make them; `from` keeps the `jti`s of successive calls apart.
fn pairs(f: &Fixture, holders: &[Key], from: usize, n: usize) -> Vec<(String, String)> {
    let issuer = Key::new(0);
    let t = now();
    let target = fixture::Target {
        req: f.req.clone(),
        htm: f.htm.clone(),
        htu: f.htu.clone(),
        action: "exec",
    };
    (from..from + n)
        .map(|i| fixture::pair(&issuer, &holders[i % holders.len()], &target, i, t))
        .collect()
}

/// Single use in memory, for the figure without the durable store.
#[derive(Default)]
struct MemoryReplay(Mutex<HashSet<ReplayKey>>);

impl ReplayStore for MemoryReplay {
    fn consume(&self, keys: &[ReplayKey], _: i64) -> Result<bool, Refusal> {
        let mut m = self.0.lock().unwrap();
        if keys.iter().any(|k| m.contains(k)) {
            return Ok(false);
        }
        m.extend(keys.iter().cloned());
        Ok(true)
    }
}

/// Verifications per second with `inflight` tasks on a runtime of one worker thread per core,
/// each task verifying with [`check`] and consuming through the async store.
fn async_rate(
    f: &Arc<Fixture>,
    work: Arc<Vec<(String, String)>>,
    store: &Arc<SqliteReplay>,
    cores: usize,
    inflight: usize,
    window: Duration,
) -> (f64, usize, f64, f64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let cpu = cpu_seconds();
    let machine = machine_busy_seconds();
    let start = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..inflight)
            .map(|_| {
                let (work, store, next, done, f) = (
                    work.clone(),
                    store.clone(),
                    next.clone(),
                    done.clone(),
                    f.clone(),
                );
                tokio::spawn(async move {
                    loop {
                        if start.elapsed() >= window {
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((writ, proof)) = work.get(i) else {
                            break;
                        };
                        let checked = check(
                            default_provider(),
                            &f.bundle,
                            &Context {
                                token: writ,
                                proof: Some(proof),
                                request_digest: &f.req,
                                htm: &f.htm,
                                htu: &f.htu,
                                audience: AUD,
                                now: now(),
                                skew: 30,
                                nonce: None,
                                max_bundle_age: 86_400,
                            },
                        )
                        .unwrap();
                        checked.consume_async(&*store).await.unwrap();
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let n = done.load(Ordering::Relaxed);
    let wall = start.elapsed().as_secs_f64();
    let busy = (cpu_seconds() - cpu) / wall;
    let all = (machine_busy_seconds() - machine) / wall;
    (n as f64 / wall, n, busy, all)
}

/// This process's CPU time so far, seconds (from /proc/self/stat, 100 ticks a second).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

/// The machine's busy CPU time so far, seconds (all processes and kernel threads, from
/// /proc/stat: everything but idle and iowait, 100 ticks a second).
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle) / 100.0
}

/// Verifications per second with `threads` threads sharing `store`, over `work` (each pair
/// verified once; the run ends at `window` or when the pairs run out).
fn full_rate(
    f: &Fixture,
    work: &[(String, String)],
    store: &(dyn ReplayStore + Sync),
    threads: usize,
    window: Duration,
) -> (f64, usize, f64, f64) {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let provider = default_provider();
    let cpu = cpu_seconds();
    let machine = machine_busy_seconds();
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((writ, proof)) = work.get(i) else {
                        stop.store(true, Ordering::Relaxed);
                        break;
                    };
                    let r = verify(
                        provider,
                        &f.bundle,
                        &Context {
                            token: writ,
                            proof: Some(proof),
                            request_digest: &f.req,
                            htm: &f.htm,
                            htu: &f.htu,
                            audience: AUD,
                            now: now(),
                            skew: 30,
                            nonce: None,
                            max_bundle_age: 86_400,
                        },
                        store,
                    );
                    assert!(r.is_ok(), "{:?}", r.err());
                    done.fetch_add(1, Ordering::Relaxed);
                    if start.elapsed() >= window {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let n = done.load(Ordering::Relaxed);
    let wall = start.elapsed().as_secs_f64();
    let busy = (cpu_seconds() - cpu) / wall;
    let all = (machine_busy_seconds() - machine) / wall;
    (n as f64 / wall, n, busy, all)
}

fn main() {
    let args = Args::parse();
    let window = Duration::from_secs_f64(args.seconds);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("verify-bench on {}", machine::describe());
    let f = Arc::new(fixture(now()));
    let holders: Vec<Key> = (1..=64).map(Key::new).collect();
    let mut made = 0;
    // Made right before each figure (proofs are fresh for 30 s), enough for a generous rate.
    let mut batch = |threads: usize| {
        let n = (args.seconds * 20_000.0) as usize * threads.min(cores);
        let started = Instant::now();
        let v = pairs(&f, &holders, made, n);
        made += n;
        println!(
            "  (made {n} writs and proofs in {:.1} s, not timed)",
            started.elapsed().as_secs_f64()
        );
        v
    };
    let first = batch(1);
    // The raw ES256 verify rate through the same function the verification uses.
    let provider: &dyn CryptoProvider = default_provider();
    let (writ, _) = &first[0];
    let (input, sig) = writ.rsplit_once('.').unwrap();
    let sig = B64.decode(sig).unwrap();
    let raw = {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < window {
            for _ in 0..64 {
                verify_es256(provider, &f.issuer, input.as_bytes(), black_box(&sig)).unwrap();
            }
            n += 64;
        }
        n as f64 / start.elapsed().as_secs_f64()
    };
    let limit = raw / 2.0;
    println!(
        "raw ES256 verify ({}), 1 thread: {raw:.0}/s -> limit of two per verification {limit:.0}/s per core",
        provider.name()
    );

    let (mem, _, _, _) = full_rate(&f, &first, &MemoryReplay::default(), 1, window);
    println!(
        "full verification, single use in memory (no durability), 1 thread: {mem:.0}/s = {:.2}x the limit",
        mem / limit
    );
    let work = batch(cores);
    let (mem, _, busy, _) = full_rate(&f, &work, &MemoryReplay::default(), cores, window);
    println!(
        "full verification, single use in memory (no durability), {cores} threads: {mem:.0}/s, {:.0}/s per core = {:.2}x the limit; {busy:.2} cores busy",
        mem / cores as f64,
        mem / cores as f64 / limit
    );
    for &threads in &args.threads {
        let dir = tempfile::tempdir_in(".").unwrap();
        let store = SqliteReplay::open(&dir.path().join("replay.db")).unwrap();
        let work = batch(threads);
        let (rate, n, busy, all) = full_rate(&f, &work, &store, threads, window);
        let per_core = rate / threads.min(cores) as f64;
        println!(
            "full verification, SQLite replay store (group commit, fsync), {threads} thread(s): {rate:.0}/s ({n} verified), {per_core:.0}/s per core = {:.2}x the limit; {busy:.2} cores busy here, {all:.2} in the whole machine",
            per_core / limit,
        );
    }
    for &inflight in &args.inflight {
        let dir = tempfile::tempdir_in(".").unwrap();
        let store = Arc::new(SqliteReplay::open(&dir.path().join("replay.db")).unwrap());
        let work = Arc::new(batch(cores));
        let (rate, n, busy, all) = async_rate(&f, work, &store, cores, inflight, window);
        let per_core = rate / cores as f64;
        println!(
            "full verification, SQLite replay store (group commit, fsync), async, {cores} workers, {inflight} in flight: {rate:.0}/s ({n} verified), {per_core:.0}/s per core = {:.2}x the limit; {busy:.2} cores busy here, {all:.2} in the whole machine",
            per_core / limit,
        );
    }
}
