//! The decision log on both engines (a SQLite file and a real PostgreSQL database): appends are
//! sequenced once and durable, checkpoints are signed, consistent and verify, proofs verify
//! against them, what is stored is read back and checked at start (an altered or truncated
//! record, a checkpoint by another key or origin stop it), one writer at a time, checkpoints
//! that cannot be signed stop appends, storage faults refuse appends and recover, and kill -9
//! during appends under load never loses an answered record, reuses an index or contradicts a
//! published checkpoint.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use writ::decision_log::{DecisionLog, LogConfig};
use writ::store::Engine;
use writ_attestation::crypto::default_provider;
use writ_attestation::log::merkle::{leaf_hash, verify_consistency, verify_inclusion};
use writ_attestation::log::note::{Checkpoint, NoteVerifier};
use writ_hsm::{CustodyError, CustodyKey, OpenOptions, generate_key};
use writ_testkit::Postgres;

const ORIGIN: &str = "writ.test/log";

/// A store of each engine: (name, engine, what keeps it alive).
struct Stores {
    _dir: tempfile::TempDir,
    list: Vec<(&'static str, Engine, Option<Postgres>)>,
}

fn stores() -> Stores {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::database();
    Stores {
        list: vec![
            ("sqlite", Engine::Sqlite(dir.path().join("writ.db")), None),
            ("postgres", Engine::Postgres(pg.url()), Some(pg)),
        ],
        _dir: dir,
    }
}

fn key(dir: &std::path::Path, name: &str) -> Arc<dyn CustodyKey> {
    let uri = format!("soft:path={}", dir.join(name).display());
    generate_key(
        &uri.parse().unwrap(),
        &OpenOptions {
            allow_software_keys: true,
        },
    )
    .unwrap()
}

fn config() -> LogConfig {
    let mut c = LogConfig::new(ORIGIN);
    c.checkpoint_interval = Duration::from_millis(100);
    c
}

fn verifier(k: &Arc<dyn CustodyKey>) -> NoteVerifier {
    NoteVerifier::from_spki(ORIGIN, k.public_key().spki_der()).unwrap()
}

fn record(i: u64) -> Vec<u8> {
    format!("{{\"v\":1,\"kind\":\"test\",\"n\":{i}}}").into_bytes()
}

#[test]
fn appends_are_sequenced_once_and_proofs_verify_against_signed_checkpoints() {
    let s = stores();
    let keys = tempfile::tempdir().unwrap();
    let k = key(keys.path(), "cp.key");
    for (name, engine, _) in &s.list {
        let log = Arc::new(DecisionLog::open(engine.clone(), config(), Arc::clone(&k)).unwrap());
        let first = log.checkpoint_now().unwrap();
        assert_eq!(first.size, 0, "{name}");
        // Four threads append 250 records each, concurrently: every index once.
        let mut handles = Vec::new();
        for t in 0..4u64 {
            let log = Arc::clone(&log);
            handles.push(std::thread::spawn(move || {
                (0..250u64)
                    .map(|i| {
                        let r = record(t * 1000 + i);
                        (log.append(&r).unwrap(), r)
                    })
                    .collect::<Vec<_>>()
            }));
        }
        let mut all: Vec<(u64, Vec<u8>)> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort();
        assert_eq!(
            all.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            (0..1000).collect::<Vec<_>>(),
            "{name}"
        );
        let cp = log.checkpoint_now().unwrap();
        assert_eq!(cp.size, 1000);
        let parsed =
            Checkpoint::verify(default_provider(), &cp.note, &verifier(&k), ORIGIN).unwrap();
        assert_eq!((parsed.size, parsed.root), (1000, cp.root));
        for (i, r) in all.iter().step_by(37) {
            assert_eq!(&log.record(*i).unwrap(), r);
            let proof = log.inclusion_proof(*i, cp.size).unwrap();
            verify_inclusion(&leaf_hash(r), *i, cp.size, &proof, &cp.root).unwrap();
            assert_eq!(log.index_of(&leaf_hash(r)).unwrap(), Some(*i));
        }
        // Another batch, another checkpoint: consistent with the first, by proof.
        log.append_many((1000..1100).map(record).collect()).unwrap();
        let cp2 = log.checkpoint_now().unwrap();
        assert_eq!(cp2.size, 1100);
        let proof = log.consistency_proof(cp.size, cp2.size).unwrap();
        verify_consistency(cp.size, cp2.size, &proof, &cp.root, &cp2.root).unwrap();
        assert_eq!(log.root_at(cp.size).unwrap(), cp.root);
        // Out of range is refused, not guessed.
        assert_eq!(log.record(1100).unwrap_err().code(), "out_of_range");
        assert_eq!(
            log.inclusion_proof(5, 1101).unwrap_err().code(),
            "out_of_range"
        );
        assert!(log.append(&[]).is_err());
        assert!(log.append(&vec![b'x'; 70_000]).is_err());
        // The checkpointer publishes by itself within its interval.
        log.append(&record(5000)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while log.latest_checkpoint().unwrap().size != 1101 {
            assert!(
                Instant::now() < deadline,
                "{name}: no checkpoint within 5 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        log.close();
        // Reopened: everything read back and verified, appends go on from where they were.
        let log = DecisionLog::open(engine.clone(), config(), Arc::clone(&k)).unwrap();
        assert_eq!(log.head().0, 1101, "{name}");
        assert_eq!(log.append(&record(6000)).unwrap(), 1101);
        let cps = log.checkpoints().unwrap();
        assert!(cps.windows(2).all(|w| w[0].size < w[1].size));
    }
}

#[test]
fn one_writer_at_a_time() {
    let s = stores();
    let keys = tempfile::tempdir().unwrap();
    let k = key(keys.path(), "cp.key");
    for (name, engine, _) in &s.list {
        let a = DecisionLog::open(engine.clone(), config(), Arc::clone(&k)).unwrap();
        let e = DecisionLog::open(engine.clone(), config(), Arc::clone(&k)).unwrap_err();
        assert_eq!(e.code(), "store_busy", "{name}: {e}");
        drop(a);
        DecisionLog::open(engine.clone(), config(), Arc::clone(&k)).unwrap();
    }
}

/// Runs SQL against a store behind the log's back (the tampering tests).
fn tamper(engine: &Engine, pg: Option<&Postgres>, sql: &str) {
    match (engine, pg) {
        (Engine::Sqlite(path), _) => {
            let c = rusqlite::Connection::open(path).unwrap();
            c.execute_batch(sql).unwrap();
        }
        (Engine::Postgres(_), Some(pg)) => {
            pg.psql(sql);
        }
        _ => unreachable!(),
    }
}

#[test]
fn what_is_stored_is_checked_at_start() {
    let keys = tempfile::tempdir().unwrap();
    let k = key(keys.path(), "cp.key");
    let other = key(keys.path(), "other.key");
    let cases: [(&str, &str, &str); 8] = [
        (
            "a record altered",
            "UPDATE log_leaves SET record = record || 'x' WHERE idx = 7",
            "leaf 7",
        ),
        (
            "a leaf hash altered",
            "UPDATE log_leaves SET leaf_hash = record WHERE idx = 3",
            "log corrupt",
        ),
        (
            "the last leaf truncated",
            "DELETE FROM log_leaves WHERE idx = 19",
            "truncated",
        ),
        (
            "a leaf missing in the middle",
            "DELETE FROM log_leaves WHERE idx = 4",
            "leaf 4 missing",
        ),
        (
            "a subtree on the right edge altered",
            "UPDATE log_nodes SET hash = (SELECT hash FROM log_nodes WHERE level = 1 AND idx = 0) WHERE level = 2 AND idx = 4",
            "right edge",
        ),
        (
            "a subtree deleted",
            "DELETE FROM log_nodes WHERE level = 1 AND idx = 3",
            "stored subtrees",
        ),
        (
            "a checkpoint's root column altered",
            "UPDATE log_checkpoints SET root = (SELECT leaf_hash FROM log_leaves WHERE idx = 0) WHERE size = 20",
            "its note says",
        ),
        (
            "the latest checkpoint's note altered",
            "UPDATE log_checkpoints SET note = replace(note, 'writ.test/log', 'writ.test/lag') WHERE size = 20",
            "log corrupt",
        ),
    ];
    for (what, sql, named) in cases {
        let s = stores();
        for (name, engine, pg) in &s.list {
            let log = DecisionLog::open(engine.clone(), config(), Arc::clone(&k)).unwrap();
            log.append_many((0..20).map(record).collect()).unwrap();
            log.checkpoint_now().unwrap();
            drop(log);
            tamper(engine, pg.as_ref(), sql);
            let e = DecisionLog::open(engine.clone(), config(), Arc::clone(&k)).unwrap_err();
            assert_eq!(e.code(), "log_corrupt", "{name}, {what}: {e}");
            assert!(e.to_string().contains(named), "{name}, {what}: {e}");
        }
    }
    // Checkpoints signed by another key, or for another origin, are not this log's.
    let s = stores();
    for (name, engine, _) in &s.list {
        let log = DecisionLog::open(engine.clone(), config(), Arc::clone(&k)).unwrap();
        log.append(&record(1)).unwrap();
        log.checkpoint_now().unwrap();
        drop(log);
        let e = DecisionLog::open(engine.clone(), config(), Arc::clone(&other)).unwrap_err();
        assert_eq!(e.code(), "log_corrupt", "{name}: {e}");
        assert!(e.to_string().contains("another key"), "{name}: {e}");
        let e = DecisionLog::open(
            engine.clone(),
            LogConfig::new("elsewhere/log"),
            Arc::clone(&k),
        )
        .unwrap_err();
        assert_eq!(e.code(), "log_corrupt", "{name}: {e}");
    }
}

/// A real software key behind a switch that makes signing fail (a fault shim, like the TPM proxy).
#[derive(Debug)]
struct Flaky {
    key: Arc<dyn CustodyKey>,
    down: AtomicBool,
}

impl CustodyKey for Flaky {
    fn sign_digest(&self, digest: &[u8; 32]) -> Result<p256::ecdsa::Signature, CustodyError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(CustodyError::InvalidInput(
                "the device is gone (test shim)".into(),
            ));
        }
        self.key.sign_digest(digest)
    }
    fn algorithm(&self) -> writ_hsm::Algorithm {
        self.key.algorithm()
    }
    fn public_key(&self) -> &writ_hsm::PublicKey {
        self.key.public_key()
    }
    fn backend(&self) -> writ_hsm::Backend {
        self.key.backend()
    }
    fn hardware_backed(&self) -> bool {
        self.key.hardware_backed()
    }
    fn uri(&self) -> &str {
        self.key.uri()
    }
    fn facts(&self) -> &[writ_hsm::KeyFact] {
        self.key.facts()
    }
}

#[test]
fn appends_stop_when_checkpoints_cannot_be_signed_and_resume_after() {
    let s = stores();
    let keys = tempfile::tempdir().unwrap();
    for (name, engine, _) in &s.list {
        let flaky = Arc::new(Flaky {
            key: key(keys.path(), &format!("{name}.key")),
            down: AtomicBool::new(false),
        });
        let mut c = config();
        c.max_checkpoint_age = Duration::from_millis(600);
        let log = DecisionLog::open(engine.clone(), c, flaky.clone()).unwrap();
        log.append(&record(1)).unwrap();
        flaky.down.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        let refused = loop {
            match log.append(&record(2)) {
                Err(e) => break e,
                Ok(_) => {
                    assert!(Instant::now() < deadline, "{name}: never refused");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        assert_eq!(refused.code(), "checkpoint_stale", "{name}: {refused}");
        assert!(log.checkpoint_now().is_err());
        flaky.down.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while log.append(&record(3)).is_err() {
            assert!(Instant::now() < deadline, "{name}: never recovered");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_lost_postgres_connection_refuses_appends_then_recovers() {
    let pg = Postgres::database();
    let keys = tempfile::tempdir().unwrap();
    let k = key(keys.path(), "cp.key");
    let log = DecisionLog::open(Engine::Postgres(pg.url()), config(), k).unwrap();
    log.append(&record(1)).unwrap();
    // Cut every connection of this database (the writer's among them).
    cut_connections(&pg);
    let e = log.append(&record(2)).unwrap_err();
    assert_eq!(e.code(), "store_unavailable", "{e}");
    // The writer reconnects and reloads the durable tree; the next append is sequenced after
    // what is there.
    let i = log.append(&record(3)).unwrap();
    assert!(i == 1 || i == 2, "{i}");
    let cp = log.checkpoint_now().unwrap();
    assert_eq!(cp.size, i + 1);
}

/// Cuts every connection of `pg`'s database but psql's own (the log writer's among them), and
/// waits until they are gone (pg_terminate_backend only signals; an append in between could still
/// go through a dying connection).
fn cut_connections(pg: &Postgres) {
    let pids = pg.psql(
        "SELECT string_agg(pid::text, ',') FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    );
    let pids = pids.trim();
    assert!(!pids.is_empty(), "the log holds a connection");
    pg.psql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid IN ({pids})"
    ));
    // pg_terminate_backend only signals: wait until those backends are gone (an append in
    // between could still go through the dying connection).
    let gone_by = Instant::now() + Duration::from_secs(10);
    while pg
        .psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid IN ({pids})"
        ))
        .trim()
        != "0"
    {
        assert!(Instant::now() < gone_by, "the backends were not terminated");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A small tmpfs for the SQLite file: a real ENOSPC.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(SmallDisk { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_disk_refuses_appends_and_the_log_recovers_when_space_returns() {
    let Some(disk) = SmallDisk::mount("2m") else {
        panic!("mounting a tmpfs needs root (CI runs as root)");
    };
    let keys = tempfile::tempdir().unwrap();
    let k = key(keys.path(), "cp.key");
    let path = disk.dir.path().join("writ.db");
    let ballast = disk.dir.path().join("ballast");
    let engine = Engine::Sqlite(path.clone());
    let log = DecisionLog::open(engine.clone(), config(), Arc::clone(&k)).unwrap();
    // Space held back, to give back later.
    std::fs::write(&ballast, vec![0u8; 512 * 1024]).unwrap();
    // Fill the disk with records until an append fails.
    let mut acked = Vec::new();
    let mut i = 0u64;
    let err = loop {
        let r = format!("{{\"n\":{i},\"pad\":\"{}\"}}", "p".repeat(2000)).into_bytes();
        match log.append(&r) {
            Ok(idx) => acked.push((idx, r)),
            Err(e) => break e,
        }
        i += 1;
        assert!(i < 10_000, "the disk never filled");
    };
    assert_eq!(err.code(), "store_unavailable", "{err}");
    assert!(err.to_string().contains("full"), "{err}");
    // Still refusing while the disk is full (no silent success): the same record again.
    let big = format!("{{\"again\":\"{}\"}}", "p".repeat(2000)).into_bytes();
    let e = log.append(&big).unwrap_err();
    assert_eq!(e.code(), "store_unavailable", "{e}");
    // Space returns: the same log, without a restart, appends again, after what is durable.
    std::fs::remove_file(&ballast).unwrap();
    let idx = log.append(&record(2)).unwrap();
    assert!(idx >= acked.len() as u64);
    let cp = log.checkpoint_now().unwrap();
    assert_eq!(cp.size, idx + 1);
    drop(log);
    // And everything answered is there after a restart, verified.
    let log = DecisionLog::open(engine.clone(), config(), Arc::clone(&k)).unwrap();
    for (idx, r) in &acked {
        assert_eq!(&log.record(*idx).unwrap(), r);
    }
}

/// The child of the crash test: appends from four threads as fast as it can and reports each
/// answered append and each published checkpoint on stdout, until it is killed.
fn crash_child(engine: Engine) -> ! {
    use std::io::Write;
    let key_path = std::env::var("WRIT_CRASH_KEY").unwrap();
    let k = writ_hsm::open_key(
        &format!("soft:path={key_path}").parse().unwrap(),
        &OpenOptions {
            allow_software_keys: true,
        },
    )
    .unwrap();
    let mut c = config();
    c.checkpoint_interval = Duration::from_millis(20);
    let log = Arc::new(DecisionLog::open(engine, c, k).unwrap());
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    for t in 0..4u64 {
        let log = Arc::clone(&log);
        let out = Arc::clone(&out);
        std::thread::spawn(move || {
            let mut n = 0u64;
            loop {
                let r = format!("{{\"t\":{t},\"n\":{n},\"pid\":{}}}", std::process::id());
                if let Ok(i) = log.append(r.as_bytes()) {
                    let mut o = out.lock().unwrap();
                    writeln!(o, "ack {i} {}", hex::encode(leaf_hash(r.as_bytes()))).unwrap();
                    o.flush().unwrap();
                }
                n += 1;
            }
        });
    }
    let mut last = 0;
    loop {
        if let Some(cp) = log.latest_checkpoint()
            && cp.size != last
        {
            last = cp.size;
            let mut o = out.lock().unwrap();
            writeln!(o, "cp {} {}", cp.size, hex::encode(cp.root)).unwrap();
            o.flush().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn kill_9_during_appends_loses_nothing_answered_and_contradicts_no_checkpoint() {
    if let Ok(e) = std::env::var("WRIT_CRASH_CHILD") {
        crash_child(e.parse().unwrap());
    }
    let s = stores();
    let keys = tempfile::tempdir().unwrap();
    let _ = key(keys.path(), "cp.key");
    let key_path = keys.path().join("cp.key");
    let k = writ_hsm::open_key(
        &format!("soft:path={}", key_path.display()).parse().unwrap(),
        &OpenOptions {
            allow_software_keys: true,
        },
    )
    .unwrap();
    for (name, engine, _) in &s.list {
        let engine_text = match engine {
            Engine::Sqlite(p) => format!("sqlite:{}", p.display()),
            Engine::Postgres(url) => url.clone(),
        };
        let mut acked: std::collections::BTreeMap<u64, String> = Default::default();
        let mut published: Vec<(u64, String)> = Vec::new();
        for round in 0..6u64 {
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "kill_9_during_appends_loses_nothing_answered_and_contradicts_no_checkpoint",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("WRIT_CRASH_CHILD", &engine_text)
                .env("WRIT_CRASH_KEY", &key_path)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            // Let it run for a varying number of answered appends, then kill -9 mid-stream.
            let target = 200 + round * 350;
            let mut lines = BufReader::new(stdout).lines();
            let mut seen = 0;
            let deadline = Instant::now() + Duration::from_secs(60);
            while seen < target {
                assert!(Instant::now() < deadline, "{name}: the child stalled");
                let Some(Ok(line)) = lines.next() else { break };
                let parts: Vec<&str> = line.split(' ').collect();
                match parts.as_slice() {
                    ["ack", i, h] => {
                        let i: u64 = i.parse().unwrap();
                        if let Some(old) = acked.insert(i, h.to_string()) {
                            panic!("{name}: index {i} answered twice ({old} then {h})");
                        }
                        seen += 1;
                    }
                    ["cp", size, root] => published.push((size.parse().unwrap(), root.to_string())),
                    _ => {}
                }
            }
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            // Drain what the child wrote before it died.
            for line in lines.map_while(Result::ok) {
                let parts: Vec<&str> = line.split(' ').collect();
                if let ["ack", i, h] = parts.as_slice()
                    && let Ok(i) = i.parse::<u64>()
                    && h.len() == 64
                    && let Some(old) = acked.insert(i, h.to_string())
                {
                    panic!("{name}: index {i} answered twice ({old} then {h})");
                }
            }
            // Reopen: consistent with everything answered and published. (PostgreSQL releases the
            // killed writer's session lock when its backend notices the connection closed, which
            // may take a moment if it was mid-statement: "store busy" until then.)
            let reopen_by = Instant::now() + Duration::from_secs(15);
            let log = loop {
                match DecisionLog::open(engine.clone(), config(), Arc::clone(&k)) {
                    Ok(log) => break log,
                    Err(e)
                        if e.to_string().contains("store busy") && Instant::now() < reopen_by =>
                    {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => panic!("{name} round {round}: reopen: {e}"),
                }
            };
            let (size, _) = log.head();
            for (i, h) in &acked {
                assert!(*i < size, "{name}: answered index {i} lost (size {size})");
                let r = log.record(*i).unwrap();
                assert_eq!(
                    &hex::encode(leaf_hash(&r)),
                    h,
                    "{name}: index {i} holds another record"
                );
            }
            for (cp_size, root) in &published {
                assert_eq!(
                    &hex::encode(log.root_at(*cp_size).unwrap()),
                    root,
                    "{name}: published checkpoint {cp_size} contradicted"
                );
            }
        }
        assert!(
            acked.len() >= 1000,
            "{name}: only {} appends answered",
            acked.len()
        );
    }
}

#[test]
fn checkpoints_are_signed_by_a_key_in_softhsm2() {
    writ_testkit::isolated(
        module_path!(),
        "checkpoints_are_signed_by_a_key_in_softhsm2",
        |hsm| {
            let uri = hsm.key_uri("writ-checkpoint");
            let k = generate_key(&uri.parse().unwrap(), &OpenOptions::default()).unwrap();
            assert!(k.hardware_backed());
            let dir = tempfile::tempdir().unwrap();
            let engine = Engine::Sqlite(dir.path().join("writ.db"));
            let log = DecisionLog::open(engine.clone(), config(), Arc::clone(&k)).unwrap();
            log.append_many((0..50).map(record).collect()).unwrap();
            let cp = log.checkpoint_now().unwrap();
            let parsed =
                Checkpoint::verify(default_provider(), &cp.note, &verifier(&k), ORIGIN).unwrap();
            assert_eq!((parsed.size, parsed.root), (50, log.root_at(50).unwrap()));
            drop(log);
            // Reopened with the key opened again from the token: the stored checkpoints verify.
            let again = writ_hsm::open_key(&uri.parse().unwrap(), &OpenOptions::default()).unwrap();
            let log = DecisionLog::open(engine, config(), again).unwrap();
            assert_eq!(log.head().0, 50);
        },
    );
}

#[test]
fn records_up_to_65535_bytes_are_accepted_and_no_larger() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let log = DecisionLog::open(
        Engine::Sqlite(dir.path().join("writ.db")),
        config(),
        key(keys.path(), "cp.key"),
    )
    .unwrap();
    assert_eq!(log.append(&vec![b'a'; 65_535]).unwrap(), 0);
    assert_eq!(
        log.append(&vec![b'a'; 65_536]).unwrap_err().code(),
        "out_of_range"
    );
    let bundle = writ_attestation::log::tiles::entry_bundle(&log.records(0, 1).unwrap()).unwrap();
    assert_eq!(bundle.len(), 65_537);
}

#[test]
fn a_store_restored_from_a_backup_behind_a_published_checkpoint_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let k = key(keys.path(), "cp.key");
    let db = dir.path().join("writ.db");
    let engine = Engine::Sqlite(db.clone());
    let log = DecisionLog::open(engine.clone(), config(), Arc::clone(&k)).unwrap();
    log.append_many((0..10).map(record).collect()).unwrap();
    log.checkpoint_now().unwrap();
    drop(log);
    let backup = dir.path().join("backup.db");
    std::fs::copy(&db, &backup).unwrap();
    let log = DecisionLog::open(engine.clone(), config(), Arc::clone(&k)).unwrap();
    log.append_many((10..20).map(record).collect()).unwrap();
    log.checkpoint_now().unwrap();
    drop(log);
    // The operator restores yesterday's backup: consistent in itself, behind what was published.
    std::fs::copy(&backup, &db).unwrap();
    let e = DecisionLog::open(engine.clone(), config(), Arc::clone(&k)).unwrap_err();
    assert_eq!(e.code(), "log_corrupt", "{e}");
    assert!(
        e.to_string()
            .contains("behind the last published checkpoint of size 20"),
        "{e}"
    );
}

#[test]
fn a_postgres_store_rolled_back_under_a_running_log_stops_it() {
    let pg = Postgres::database();
    let keys = tempfile::tempdir().unwrap();
    let k = key(keys.path(), "cp.key");
    let log = DecisionLog::open(Engine::Postgres(pg.url()), config(), k).unwrap();
    log.append_many((0..20).map(record).collect()).unwrap();
    log.checkpoint_now().unwrap();
    // Failover to a replica that is behind: the tail is gone, consistently across the tables,
    // and the log's connections drop.
    pg.psql(
        "DELETE FROM log_leaves WHERE idx >= 12; DELETE FROM log_nodes WHERE (idx + 1) * (1 << level::int) > 12; \
         DELETE FROM log_checkpoints WHERE size > 12",
    );
    cut_connections(&pg);
    // The first append after the failover finds the connection gone (refused), the next ones
    // the store behind the log (refused for good): never sequenced onto the shorter tree.
    assert!(log.append(&record(100)).is_err());
    let e = log.append(&record(101)).unwrap_err();
    assert_eq!(e.code(), "log_corrupt", "{e}");
    assert!(e.to_string().contains("rolled back or replaced"), "{e}");
    assert_eq!(log.append(&record(102)).unwrap_err().code(), "log_corrupt");
}

#[test]
fn a_checkpoint_the_stored_tree_cannot_prove_consistent_is_never_signed_over() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let db = dir.path().join("writ.db");
    let log = DecisionLog::open(
        Engine::Sqlite(db.clone()),
        config(),
        key(keys.path(), "cp.key"),
    )
    .unwrap();
    log.append_many((0..6).map(record).collect()).unwrap();
    let six = log.checkpoint_now().unwrap();
    assert_eq!(six.size, 6);
    // A stored subtree the proof from 6 to 8 needs is altered behind the log's back.
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "UPDATE log_nodes SET hash = (SELECT hash FROM log_nodes WHERE level = 1 AND idx = 0) WHERE level = 1 AND idx = 2",
    )
    .unwrap();
    log.append_many((6..8).map(record).collect()).unwrap();
    let e = log.checkpoint_now().unwrap_err();
    assert_eq!(e.code(), "log_corrupt", "{e}");
    assert!(e.to_string().contains("not an extension"), "{e}");
    assert_eq!(log.latest_checkpoint().unwrap().size, 6);
}

#[test]
fn a_state_change_commits_with_its_record_or_neither_does() {
    use writ::store::{Op, Value};
    let s = stores();
    let keys = tempfile::tempdir().unwrap();
    let k = key(keys.path(), "cp.key");
    for (name, engine, _) in &s.list {
        let log = Arc::new(DecisionLog::open(engine.clone(), config(), Arc::clone(&k)).unwrap());
        let token = |hash: &str| Op {
            sql: "INSERT INTO join_tokens (token_hash, name, expires_at) VALUES ($1, $2, $3)",
            params: vec![hash.into(), "rt".into(), Value::Int(i64::MAX)],
            must_affect: None,
        };
        let spend = |hash: &str| Op {
            sql: "UPDATE join_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL",
            params: vec![hash.into(), Value::Int(1)],
            must_affect: Some(("join_token", "the join token is spent")),
        };
        let first = log.append_with(vec![record(1)], vec![token("t1")]).unwrap();
        // Spending it once works; twice is a conflict, and the second record is not written.
        let i = log.append_with(vec![record(2)], vec![spend("t1")]).unwrap();
        assert_eq!(i, first + 1, "{name}");
        let e = log
            .append_with(vec![record(3)], vec![token("t2"), spend("t1")])
            .unwrap_err();
        assert_eq!(e.code(), "join_token", "{name}");
        // Neither the record nor the first statement of the conflicting change was kept.
        assert_eq!(log.head().0, first + 2, "{name}");
        let rows = log
            .query(
                "SELECT token_hash FROM join_tokens ORDER BY token_hash",
                &[],
            )
            .unwrap();
        assert_eq!(rows, vec![vec![Value::Text("t1".into())]], "{name}");
        // Concurrent spenders of one token: exactly one wins, in whichever batch.
        log.append_with(vec![record(4)], vec![token("t3")]).unwrap();
        let handles: Vec<_> = (0..8)
            .map(|n| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    log.append_with(
                        vec![record(100 + n)],
                        vec![Op {
                            sql: "UPDATE join_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL",
                            params: vec!["t3".into(), Value::Int(1)],
                            must_affect: Some(("join_token", "spent")),
                        }],
                    )
                    .is_ok()
                })
            })
            .collect();
        let won = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(won, 1, "{name}");
        log.close();
    }
}

/// The checkpoint keys' schedule (a rotation): every key whose time has come signs, a key that
/// left does not, the published keys are those relying parties are told of, a schedule without
/// a key that signs now is refused, and at start the stored schedule decides (the configured key
/// must be in its history; stored checkpoints by any key of it verify).
#[test]
fn checkpoints_are_signed_by_every_key_of_the_schedule_whose_time_has_come() {
    use writ::decision_log::LogKey;
    let s = stores();
    let keys = tempfile::tempdir().unwrap();
    let (a, b) = (key(keys.path(), "a.key"), key(keys.path(), "b.key"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let at =
        |k: &Arc<dyn CustodyKey>, open: bool, published: i64, from: i64, until: Option<i64>| {
            LogKey {
                key: open.then(|| Arc::clone(k)),
                spki: k.public_key().spki_der().to_vec(),
                published_at: published,
                signs_from: from,
                retires_at: until,
                endorsement: None,
            }
        };
    // `of`'s endorsement by `by`, as a rotation records it.
    let endorse = |by: &Arc<dyn CustodyKey>, of: &Arc<dyn CustodyKey>| {
        by.sign(&writ::decision_log::endorsement_message(
            ORIGIN,
            of.public_key().spki_der(),
        ))
        .unwrap()
        .to_der()
        .as_bytes()
        .to_vec()
    };
    let endorsement = endorse(&a, &b);
    let by_a = |mut k: LogKey| {
        k.endorsement = Some(endorsement.clone());
        k
    };
    let lines = |note: &str| note.split_once("\n\n").unwrap().1.lines().count();
    let (name, engine, _) = &s.list[0];
    let log = DecisionLog::open(engine.clone(), config(), Arc::clone(&a)).unwrap();
    let sign = |n: u64| {
        log.append(&record(n)).unwrap();
        log.checkpoint_now().unwrap().note
    };
    let (va, vb) = (verifier(&a), verifier(&b));
    let verifies = |note: &str, v: &NoteVerifier| {
        Checkpoint::verify(default_provider(), note, v, ORIGIN).is_ok()
    };
    // B published, not signing yet: A alone signs; both are published, A first.
    log.set_keys(vec![
        at(&a, true, 0, 0, None),
        by_a(at(&b, true, now, now + 3600, None)),
    ])
    .unwrap();
    let note = sign(1);
    assert_eq!(lines(&note), 1, "{name}");
    assert!(verifies(&note, &va) && !verifies(&note, &vb));
    assert_eq!(log.verifier_keys(), [va.to_string(), vb.to_string()]);
    assert_eq!(log.verifier_key(), va.to_string());
    // The overlap: both sign every checkpoint.
    log.set_keys(vec![
        at(&a, true, 0, 0, Some(now + 3600)),
        by_a(at(&b, true, now - 10, now - 1, None)),
    ])
    .unwrap();
    let note = sign(2);
    assert_eq!(lines(&note), 2);
    assert!(verifies(&note, &va) && verifies(&note, &vb));
    assert_eq!(log.signing_keys().len(), 2);
    // A left: B alone signs and is alone published.
    log.set_keys(vec![
        at(&a, false, 0, 0, Some(now - 1)),
        by_a(at(&b, true, now - 10, now - 5, None)),
    ])
    .unwrap();
    let note = sign(3);
    assert_eq!(lines(&note), 1);
    assert!(verifies(&note, &vb) && !verifies(&note, &va));
    assert_eq!(log.verifier_keys(), [vb.to_string()]);
    // No key would sign now: refused, and the schedule in force stays. B without A's
    // endorsement (a row someone wrote into the store) is not trusted, nor is B endorsed by
    // something else than a trusted key; nor a key whose time has come but is not open.
    let (c, vc) = {
        let c = key(keys.path(), "c.key");
        let v = verifier(&c);
        (c, v)
    };
    let by_c = {
        let mut k = at(&b, true, now - 10, now - 5, None);
        k.endorsement = Some(endorse(&c, &b));
        k
    };
    for none in [
        vec![
            at(&a, false, 0, 0, Some(now - 1)),
            by_a(at(&b, true, now, now + 3600, None)),
        ],
        vec![
            at(&a, false, 0, 0, Some(now - 1)),
            at(&b, true, now - 10, now - 5, None),
        ],
        vec![
            at(&a, false, 0, 0, Some(now - 1)),
            at(&c, true, now - 20, now - 20, Some(now + 3600)),
            by_c.clone(),
        ],
        vec![
            at(&a, false, 0, 0, None),
            by_a(at(&b, true, now - 10, now - 5, None)),
        ],
        vec![by_a(at(&b, false, 0, 0, None))],
        vec![],
    ] {
        assert_eq!(log.set_keys(none).unwrap_err().code(), "store_config");
    }
    assert!(verifies(&sign(4), &vb));
    // An unendorsed key beside the trusted ones: left out (neither signing nor published).
    log.set_keys(vec![
        at(&a, false, 0, 0, Some(now - 1)),
        by_a(at(&b, true, now - 10, now - 5, None)),
        at(&c, true, now - 3, now - 3, None),
    ])
    .unwrap();
    let note = sign(6);
    assert_eq!(lines(&note), 1);
    assert!(!verifies(&note, &vc));
    assert_eq!(log.verifier_keys(), [vb.to_string()]);
    // Without a stored schedule, the log opens with its configured key alone: A no longer
    // verifies the stored checkpoint B signed, so it does not open.
    log.close();
    drop(log);
    let err = DecisionLog::open(engine.clone(), config(), Arc::clone(&a)).unwrap_err();
    assert_eq!(err.code(), "log_corrupt", "{err}");
    // With the schedule stored (as a rotation records it): A configured (its history's first
    // key, retired), B opened by its URI and signing; the stored checkpoints verify.
    let uri_b = format!("soft:path={}", keys.path().join("b.key").display());
    tamper(
        engine,
        None,
        &format!(
            "INSERT INTO key_schedule (purpose, uri, spki, published_at, signs_from, retires_at)
             VALUES ('checkpoint', 'soft:path=/nonexistent', X'{}', 0, 0, {}),
                    ('checkpoint', '{uri_b}', X'{}', {}, {}, NULL)",
            hex::encode(a.public_key().spki_der()),
            now - 1,
            hex::encode(b.public_key().spki_der()),
            now - 10,
            now - 5
        ),
    );
    let opener = writ::decision_log::KeyOpener(Arc::new(|uri: &str| {
        writ_hsm::open_key(
            &uri.parse().map_err(|e| format!("{e}"))?,
            &OpenOptions {
                allow_software_keys: true,
            },
        )
        .map_err(|e| e.to_string())
    }));
    let with_opener = || {
        let mut c = config();
        c.key_opener = Some(opener.clone());
        c
    };
    // No way to open B here: refused.
    let err = DecisionLog::open(engine.clone(), config(), Arc::clone(&a)).unwrap_err();
    assert_eq!(err.code(), "store_config", "{err}");
    // Without B's endorsement (a row written into the store), A configured trusts no key that
    // signs now: refused.
    let err = DecisionLog::open(engine.clone(), with_opener(), Arc::clone(&a)).unwrap_err();
    assert!(err.to_string().contains("endorsed"), "{err}");
    tamper(
        engine,
        None,
        &format!(
            "UPDATE key_schedule SET endorsement = X'{}' WHERE uri = '{uri_b}'",
            hex::encode(&endorsement)
        ),
    );
    // A key the history does not know: refused.
    let d = key(keys.path(), "d.key");
    let err = DecisionLog::open(engine.clone(), with_opener(), Arc::clone(&d)).unwrap_err();
    assert!(err.to_string().contains("rotation history"), "{err}");
    let log = DecisionLog::open(engine.clone(), with_opener(), Arc::clone(&a)).unwrap();
    let note = {
        log.append(&record(5)).unwrap();
        log.checkpoint_now().unwrap().note
    };
    assert_eq!(lines(&note), 1);
    assert!(verifies(&note, &vb));
    assert_eq!(log.verifier_keys(), [vb.to_string()]);
    assert_eq!(log.key_history().len(), 2);
}
