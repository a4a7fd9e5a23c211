//! Custody load generator: signatures per second per backend with 1 and 2 workers, SoftHSM2's raw
//! rate through cryptoki for comparison, and TPM2_Quote latency. Real devices: a private SoftHSM2
//! token and a private swtpm, made for the run and deleted after.
//!
//! usage: cargo run --release -p writ-bench --bin custody-bench -- [--seconds S] [--quotes N]
#![forbid(unsafe_code)]
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod machine;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use writ_hsm::tpm::attester::{Attester, PcrSelection};
use writ_hsm::{CustodyKey, KeyUri, OpenOptions};
use writ_testkit::{SOFTHSM2_MODULE, SoftHsm, Swtpm};

#[derive(Debug, Parser)]
struct Args {
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Quotes for the latency measurement.
    #[arg(long, default_value_t = 300)]
    quotes: usize,
    #[arg(long, hide = true)]
    child: bool,
}

const ENV_DIR: &str = "WRIT_BENCH_SOFTHSM_DIR";
const ENV_LABEL: &str = "WRIT_BENCH_SOFTHSM_LABEL";

fn main() {
    let args = Args::parse();
    if !args.child {
        // SoftHSM2 reads SOFTHSM2_CONF once per process: run the measurements in a child whose
        // environment names a private token.
        let hsm = SoftHsm::new();
        let status = Command::new(std::env::current_exe().unwrap())
            .args(std::env::args().skip(1))
            .arg("--child")
            .env("SOFTHSM2_CONF", hsm.conf())
            .env(ENV_DIR, hsm.dir())
            .env(ENV_LABEL, hsm.label())
            .env("TSS2_LOG", "all+NONE")
            .status()
            .unwrap();
        std::process::exit(status.code().unwrap_or(2));
    }
    let dir = std::env::var(ENV_DIR).unwrap();
    let label = std::env::var(ENV_LABEL).unwrap();
    let pin = std::fs::read_to_string(format!("{dir}/user.pin")).unwrap();
    let window = Duration::from_secs_f64(args.seconds);
    println!("machine: {}", machine::describe());
    println!("window: {:.1} s per figure\n", args.seconds);
    println!(
        "{:<44} {:>12} {:>12}",
        "signatures per second", "1 worker", "2 workers"
    );

    let pkcs11_uri = format!(
        "pkcs11:token={label};object=bench?module-path={SOFTHSM2_MODULE}&pin-source=file:{dir}/user.pin"
    );
    let pkcs11: Arc<dyn CustodyKey> =
        writ_hsm::generate_key(&pkcs11_uri.parse().unwrap(), &OpenOptions::default()).unwrap();

    let raw1 = raw_softhsm(&label, &pin, 1, window);
    let raw2 = raw_softhsm(&label, &pin, 2, window);
    row("SoftHSM2 raw (cryptoki, CKM_ECDSA)", raw1, raw2);
    let digest = [0x11u8; 32];
    let w1 = throughput(1, window, || {
        pkcs11.sign_digest(&digest).unwrap();
    });
    let w2 = throughput(2, window, || {
        pkcs11.sign_digest(&digest).unwrap();
    });
    row("writ PKCS#11 (sign_digest, session pool)", w1, w2);
    let msg = [0x22u8; 256];
    let m1 = throughput(1, window, || {
        pkcs11.sign(&msg).unwrap();
    });
    row("writ PKCS#11 (sign, 256-byte message)", m1, f64::NAN);

    let tpm = Swtpm::start();
    let tpm_uri: KeyUri = tpm.key_uri(0x8100_0101).parse().unwrap();
    let tpm_key = writ_hsm::generate_key(&tpm_uri, &OpenOptions::default()).unwrap();
    let t1 = throughput(1, window, || {
        tpm_key.sign_digest(&digest).unwrap();
    });
    let t2 = throughput(2, window, || {
        tpm_key.sign_digest(&digest).unwrap();
    });
    row(
        "writ TPM on swtpm (sign_digest, salted HMAC session)",
        t1,
        t2,
    );

    let soft_dir = tempfile::tempdir().unwrap();
    let soft_uri: KeyUri = format!("soft:path={}", soft_dir.path().join("k").display())
        .parse()
        .unwrap();
    let soft = writ_hsm::generate_key(
        &soft_uri,
        &OpenOptions {
            allow_software_keys: true,
        },
    )
    .unwrap();
    let s1 = throughput(1, window, || {
        soft.sign_digest(&digest).unwrap();
    });
    let s2 = throughput(2, window, || {
        soft.sign_digest(&digest).unwrap();
    });
    row("writ software (p256, tests only)", s1, s2);

    println!(
        "\nwrit PKCS#11 / SoftHSM2 raw, 1 worker: {:.0}%  (goal: at least 80%)",
        100.0 * w1 / raw1
    );
    println!(
        "writ PKCS#11 / SoftHSM2 raw, 2 workers: {:.0}%",
        100.0 * w2 / raw2
    );

    drop(tpm_key);
    let attester = Attester::open(Some(&tpm.tcti())).unwrap();
    let ak = attester.load_ak(&attester.create_ak().unwrap()).unwrap();
    let selection: PcrSelection = "sha256:0,1,2,3,4,5,6,7".parse().unwrap();
    let mut lat = Vec::with_capacity(args.quotes);
    for i in 0..args.quotes {
        let nonce = (i as u64).to_be_bytes();
        let t = Instant::now();
        attester.quote(&ak, &nonce, &selection).unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e3;
    println!(
        "\nTPM2_Quote on swtpm (sha256:0-7, ECDSA P-256 AK), {} quotes: p50 {:.2} ms, p99 {:.2} ms",
        args.quotes,
        pct(0.5),
        pct(0.99)
    );
}

fn row(name: &str, one: f64, two: f64) {
    let fmt = |v: f64| {
        if v.is_nan() {
            "-".to_string()
        } else {
            format!("{v:.0}")
        }
    };
    println!("{name:<44} {:>12} {:>12}", fmt(one), fmt(two));
}

/// Runs `op` on `workers` threads for `window`; returns operations per second.
fn throughput(workers: usize, window: Duration, op: impl Fn() + Sync) -> f64 {
    // Warm up (session pool growth, caches).
    for _ in 0..200 {
        op();
    }
    let start = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u64;
                    while start.elapsed() < window {
                        for _ in 0..32 {
                            op();
                        }
                        n += 32;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    total as f64 / start.elapsed().as_secs_f64()
}

/// SoftHSM2's own rate: one session per thread, CKM_ECDSA over a 32-byte digest, nothing else.
fn raw_softhsm(label: &str, pin: &str, workers: usize, window: Duration) -> f64 {
    let module = writ_hsm::pkcs11::load_module(SOFTHSM2_MODULE.as_ref()).unwrap();
    let slot = module
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| module.get_token_info(*s).unwrap().label().trim_end() == label)
        .unwrap();
    let sessions: Vec<_> = (0..workers)
        .map(|_| {
            let s = module.open_ro_session(slot).unwrap();
            let _ = s.login(UserType::User, Some(&pin.into()));
            s
        })
        .collect();
    let key = sessions[0]
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(b"bench".to_vec()),
        ])
        .unwrap()[0];
    let digest = [0x11u8; 32];
    let start = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = sessions
            .into_iter()
            .map(|session| {
                s.spawn(move || {
                    for _ in 0..200 {
                        session.sign(&Mechanism::Ecdsa, key, &digest).unwrap();
                    }
                    let mut n = 0u64;
                    let t = Instant::now();
                    while t.elapsed() < window {
                        for _ in 0..32 {
                            session.sign(&Mechanism::Ecdsa, key, &digest).unwrap();
                        }
                        n += 32;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    total as f64 / start.elapsed().as_secs_f64()
}
