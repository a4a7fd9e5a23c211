//! The execution gateway's figures, all in one run on this machine:
//! - the p50/p99 of one 64-byte append + fdatasync in the gateway's folder (the floor of a
//!   durable single-use record);
//! - `writ-gate exec` runs per second and their p50/p99, process start included, beside
//!   starting the same tool directly;
//! - `writ-gate proxy`: p50/p99 of requests through the proxy and straight to the upstream (a
//!   keep-alive HTTP/1.1 server in this process), at each concurrency, the added latency, and
//!   the proxied rate against the limit of its signature verifications (two ES256 verifications
//!   per request, at the rate measured here on one core, times the cores).
//!
//! Every request verifies and consumes a distinct writ and proof made before the clock starts;
//! the decision is durable (replay store, group commit) before the upstream is called.
//!
//! usage: cargo build --release -p writ-gateway && cargo run --release -p writ-bench --bin
//! gate-bench -- [--seconds S] [--concurrency 1,16] [--gate PATH]
#![forbid(unsafe_code)]
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod fixture;
mod machine;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use fixture::{AUD, Key, Target, now, pair};
use sha2::{Digest, Sha256};
use writ_attestation::crypto::default_provider;
use writ_attestation::writ::jws::{Es256Signer, verify_es256};
use writ_attestation::writ::request::{Request, digest, proof_target};

#[derive(Debug, Parser)]
struct Args {
    /// Seconds per figure.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Client connections to the proxy, one figure each.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16])]
    concurrency: Vec<usize>,
    /// The writ-gate binary (default: beside this one).
    #[arg(long)]
    gate: Option<PathBuf>,
}

const ORIGIN: &str = "https://api.bench.test";

fn percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort_unstable();
    let at = |q: f64| {
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i].as_secs_f64() * 1e3
    };
    (at(0.50), at(0.99))
}

fn fsync_latency(dir: &Path, n: usize) -> (f64, f64) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("fsync.probe"))
        .unwrap();
    let lat = (0..n)
        .map(|_| {
            let t = Instant::now();
            f.write_all(&[b'x'; 64]).unwrap();
            f.sync_data().unwrap();
            t.elapsed()
        })
        .collect();
    percentiles(lat)
}

/// ES256 verifications per second on one thread (aws-lc-rs, the gateway's provider).
fn es256_rate(window: Duration) -> f64 {
    let k = Key::new(3);
    let msg = b"bench message".to_vec();
    let sig = k.sign_es256(&msg).unwrap();
    let p = default_provider();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < window {
        for _ in 0..64 {
            verify_es256(p, &k.jwk, &msg, &sig).unwrap();
        }
        n += 64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// A keep-alive HTTP/1.1 upstream answering 200 "ok" to everything.
fn upstream() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let _ = s.set_nodelay(true);
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                while let Some(len) = read_head(&mut r) {
                    let mut body = vec![0u8; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    if w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Reads a message head; its Content-Length (None at the end of the stream).
fn read_head(r: &mut impl BufRead) -> Option<usize> {
    let mut len = 0;
    let mut first = true;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() && !first {
            return Some(len);
        }
        first = false;
        if let Some((n, v)) = l.split_once(':')
            && n.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().ok()?;
        }
    }
}

/// Reads an answer; its status.
fn answer(r: &mut BufReader<TcpStream>) -> u16 {
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let code = status
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    let len = read_head(r).unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    if code != 200 {
        panic!("{status}: {}", String::from_utf8_lossy(&body));
    }
    code
}

/// `conns` keep-alive clients sending `GET /bench` to `addr` for `window`, each request with
/// the next pair of `work` if given; the rate and the latencies.
fn drive(
    addr: &str,
    conns: usize,
    window: Duration,
    work: Option<&[(String, String)]>,
    next: &AtomicUsize,
) -> (f64, Vec<Duration>) {
    let lat = Mutex::new(Vec::new());
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..conns {
            s.spawn(|| {
                let stream = TcpStream::connect(addr).unwrap();
                stream.set_nodelay(true).unwrap();
                let mut r = BufReader::new(stream.try_clone().unwrap());
                let mut w = stream;
                let mut mine = Vec::new();
                while start.elapsed() < window {
                    let auth = match work {
                        Some(work) => {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some((writ, proof)) = work.get(i) else {
                                break;
                            };
                            format!("Authorization: DPoP {writ}\r\nDPoP: {proof}\r\n")
                        }
                        None => String::new(),
                    };
                    let t = Instant::now();
                    w.write_all(
                        format!("GET /bench HTTP/1.1\r\nHost: api.bench.test\r\n{auth}\r\n")
                            .as_bytes(),
                    )
                    .unwrap();
                    answer(&mut r);
                    mine.push(t.elapsed());
                }
                lat.lock().unwrap().extend(mine);
            });
        }
    });
    let lat = lat.into_inner().unwrap();
    (lat.len() as f64 / start.elapsed().as_secs_f64(), lat)
}

fn gate_binary(a: &Args) -> PathBuf {
    let bin = a.gate.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .join("writ-gate")
    });
    if !bin.exists() {
        panic!(
            "{} is missing: cargo build --release -p writ-gateway first (or --gate PATH)",
            bin.display()
        );
    }
    bin
}

fn main() {
    let a = Args::parse();
    let window = Duration::from_secs_f64(a.seconds);
    let gate = gate_binary(&a);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "gate-bench on {} ({} s per figure)",
        machine::describe(),
        a.seconds
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();

    let (f50, f99) = fsync_latency(d, 500);
    println!("fdatasync of a 64-byte append: p50 {f50:.3} ms, p99 {f99:.3} ms");
    let es = es256_rate(Duration::from_secs(1));
    println!("ES256 verifications on one core: {es:.0}/s");

    let t = now();
    std::fs::write(d.join("bundle.json"), fixture::bundle(t).to_string()).unwrap();
    let tool = "/usr/bin/true";
    let sha = hex::encode(Sha256::digest(std::fs::read(tool).unwrap()));
    let up = upstream();
    std::fs::write(
        d.join("gate.toml"),
        format!(
            "audience = \"{AUD}\"\nbundle = \"{p}/bundle.json\"\nreplay_db = \"{p}/replay.db\"\n\
             spool_max = 100000000\n\n[tools.true]\npath = \"{tool}\"\nsha256 = \"{sha}\"\ncwd = \"{p}\"\n\n\
             [proxy]\nlisten = \"127.0.0.1:0\"\npublic_origin = \"{ORIGIN}\"\nupstream = \"http://{up}\"\n\
             max_connections = 4096\n",
            p = d.display()
        ),
    )
    .unwrap();
    let issuer = Key::new(0);
    let holders: Vec<Key> = (1..=16).map(Key::new).collect();

    // exec: the tool alone, then through writ-gate exec.
    let start = Instant::now();
    let mut direct = Vec::new();
    while start.elapsed() < window {
        let t0 = Instant::now();
        assert!(Command::new(tool).status().unwrap().success());
        direct.push(t0.elapsed());
    }
    let direct_rate = direct.len() as f64 / start.elapsed().as_secs_f64();
    let (d50, d99) = percentiles(direct);
    let argv: Vec<String> = Vec::new();
    let r = Request::Exec {
        tool: "true",
        argv: &argv,
    };
    let (htm, htu) = proof_target(&r).unwrap();
    let target = Target {
        req: digest(&r).unwrap(),
        htm,
        htu,
        action: "exec",
    };
    let n_exec = ((direct_rate * a.seconds) as usize).max(100);
    let exec_work: Vec<(String, String)> = (0..n_exec)
        .map(|i| pair(&issuer, &holders[i % holders.len()], &target, i, t))
        .collect();
    let start = Instant::now();
    let mut runs = Vec::new();
    for (writ, proof) in &exec_work {
        if start.elapsed() >= window {
            break;
        }
        std::fs::write(d.join("w.jws"), writ).unwrap();
        std::fs::write(d.join("p.jws"), proof).unwrap();
        let t0 = Instant::now();
        let out = Command::new(&gate)
            .arg("exec")
            .arg("--config")
            .arg(d.join("gate.toml"))
            .arg("--writ")
            .arg(d.join("w.jws"))
            .arg("--proof")
            .arg(d.join("p.jws"))
            .args(["--tool", "true", "--"])
            .stderr(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        runs.push(t0.elapsed());
    }
    let exec_rate = runs.len() as f64 / start.elapsed().as_secs_f64();
    let (e50, e99) = percentiles(runs);
    println!(
        "exec: {exec_rate:.0} runs/s through writ-gate exec (p50 {e50:.2} ms, p99 {e99:.2} ms); \
         the tool alone {direct_rate:.0}/s (p50 {d50:.2} ms, p99 {d99:.2} ms)"
    );

    // proxy.
    let mut child = Command::new(&gate)
        .arg("proxy")
        .arg("--config")
        .arg(d.join("gate.toml"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let l = lines.next().unwrap().unwrap();
        if let Some(a) = l.strip_prefix("writ-gate proxy: listening on http://") {
            break a.to_string();
        }
    };
    let r = Request::Http {
        method: "GET",
        url: &format!("{ORIGIN}/bench"),
        content_type: "",
        body: b"",
    };
    let (htm, htu) = proof_target(&r).unwrap();
    let target = Target {
        req: digest(&r).unwrap(),
        htm,
        htu,
        action: "http",
    };
    // Enough pairs for 10,000 requests a second (made before the clock starts).
    let n_proxy = (10_000.0 * a.seconds * a.concurrency.len() as f64) as usize;
    let made = Instant::now();
    let work: Vec<(String, String)> = (0..n_proxy)
        .map(|i| {
            pair(
                &issuer,
                &holders[i % holders.len()],
                &target,
                1_000_000 + i,
                t,
            )
        })
        .collect();
    eprintln!(
        "({n_proxy} writs made in {:.1} s)",
        made.elapsed().as_secs_f64()
    );
    let next = AtomicUsize::new(0);
    let limit = es / 2.0 * cores as f64;
    for &c in &a.concurrency {
        let (direct_rate, direct) = drive(&up, c, window, None, &next);
        let (rate, proxied) = drive(&addr, c, window, Some(&work), &next);
        let (d50, d99) = percentiles(direct);
        let (p50, p99) = percentiles(proxied);
        println!(
            "proxy, {c} connection(s): {rate:.0} req/s, p50 {p50:.3} ms, p99 {p99:.3} ms; \
             direct {direct_rate:.0} req/s, p50 {d50:.3} ms, p99 {d99:.3} ms; \
             added p50 {:.3} ms, added p99 {:.3} ms = {:.2}x the fdatasync p99; \
             {:.2}x the verification limit ({limit:.0}/s)",
            p50 - d50,
            p99 - d99,
            (p99 - d99) / f99,
            rate / limit
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}
