//! The log's HTTP routes and `writ audit` against a served log: growth is verified and remembered;
//! a leaf altered in the store, a truncation re-signed by the operator, a fork (two checkpoints of
//! one size), a checkpoint by another key or for another origin are each detected (exit 1);
//! lineage and inclusion bundles verify; out-of-range requests are 400.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use writ::decision_log::{DecisionLog, LogConfig};
use writ::store::Engine;
use writ_attestation::log::merkle::leaf_hash;
use writ_attestation::log::note::NoteVerifier;
use writ_attestation::log::record::{Decision, DecisionRecord, Kind, leaf_ref};
use writ_attestation::log::tiles::parse_entry_bundle;
use writ_hsm::{CustodyKey, OpenOptions, generate_key};

const ORIGIN: &str = "audit.writ.test/log";

struct Served {
    log: Arc<DecisionLog>,
    url: String,
    _rt: tokio::runtime::Runtime,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn serve(log: Arc<DecisionLog>) -> Served {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let router = writ::http::log_router(Arc::clone(&log));
    rt.spawn(async move {
        writ::http::serve(
            listener,
            router,
            writ::http::Limits::default(),
            None,
            async {
                let _ = rx.await;
            },
        )
        .await
        .unwrap();
    });
    Served {
        log,
        url,
        _rt: rt,
        _stop: tx,
    }
}

fn key(dir: &Path, name: &str) -> Arc<dyn CustodyKey> {
    generate_key(
        &format!("soft:path={}", dir.join(name).display())
            .parse()
            .unwrap(),
        &OpenOptions {
            allow_software_keys: true,
        },
    )
    .unwrap()
}

fn vkey(k: &Arc<dyn CustodyKey>, origin: &str) -> String {
    NoteVerifier::from_spki(origin, k.public_key().spki_der())
        .unwrap()
        .to_string()
}

fn rec(n: u64, parent: Option<&[u8]>) -> Vec<u8> {
    DecisionRecord {
        v: 1,
        kind: Kind::Issue,
        time: 1_795_400_000 + i64::try_from(n).unwrap(),
        subject: format!("spiffe://writ.test/runtime/r{n}"),
        decision: Decision::Allow,
        reasons: vec![],
        digests: [("writ".to_string(), format!("sha256:{:064x}", n))].into(),
        policy_bundle_hash: None,
        parent: parent.map(leaf_ref),
    }
    .to_leaf()
    .unwrap()
}

fn open(path: &Path, k: &Arc<dyn CustodyKey>, origin: &str) -> Arc<DecisionLog> {
    Arc::new(
        DecisionLog::open(
            Engine::Sqlite(path.to_path_buf()),
            LogConfig::new(origin),
            Arc::clone(k),
        )
        .unwrap(),
    )
}

fn audit(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_writ"))
        .arg("audit")
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn check(url: &str, key: &str, state: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "check",
        "--log",
        url,
        "--key",
        key,
        "--state",
        state.to_str().unwrap(),
    ];
    args.extend(extra);
    audit(&args)
}

fn get(url: &str) -> (u16, Vec<u8>) {
    match ureq::get(url)
        .config()
        .http_status_as_error(false)
        .build()
        .call()
    {
        Ok(mut r) => {
            let status = r.status().as_u16();
            (status, r.body_mut().read_to_vec().unwrap())
        }
        Err(e) => panic!("GET {url}: {e}"),
    }
}

#[test]
fn growth_is_verified_and_remembered_and_every_entry_rebuilds_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(dir.path(), "cp.key");
    let s = serve(open(&dir.path().join("a.db"), &k, ORIGIN));
    s.log
        .append_many((0..300).map(|n| rec(n, None)).collect())
        .unwrap();
    s.log.checkpoint_now().unwrap();
    let state = dir.path().join("state");
    let vk = vkey(&k, ORIGIN);
    let o = check(&s.url, &vk, &state, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("no checkpoint remembered yet"));
    s.log
        .append_many((300..520).map(|n| rec(n, None)).collect())
        .unwrap();
    s.log.checkpoint_now().unwrap();
    let o = check(&s.url, &vk, &state, &["--full"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("consistent: remembered (size 300) -> latest (size 520)"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("all 520 entries rebuild"), "{}", text(&o));
}

#[test]
fn a_leaf_altered_in_the_store_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(dir.path(), "cp.key");
    let db = dir.path().join("a.db");
    let s = serve(open(&db, &k, ORIGIN));
    s.log
        .append_many((0..40).map(|n| rec(n, None)).collect())
        .unwrap();
    s.log.checkpoint_now().unwrap();
    let state = dir.path().join("state");
    let vk = vkey(&k, ORIGIN);
    assert_eq!(
        check(&s.url, &vk, &state, &["--full"]).status.code(),
        Some(0)
    );
    // The operator edits record 5 in the database behind the running log (keeping its hash).
    let c = rusqlite::Connection::open(&db).unwrap();
    let forged = rec(999, None);
    c.execute(
        "UPDATE log_leaves SET record = ?1 WHERE idx = 5",
        rusqlite::params![forged],
    )
    .unwrap();
    let o = check(&s.url, &vk, &state, &["--full"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("do not rebuild"), "{}", text(&o));
    let o = audit(&[
        "record",
        "--log",
        &s.url,
        "--key",
        &vk,
        "--state",
        state.to_str().unwrap(),
        "--index",
        "5",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("not what the checkpoint commits to"),
        "{}",
        text(&o)
    );
}

#[test]
fn truncation_re_signed_by_the_operator_and_forks_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(dir.path(), "cp.key");
    let vk = vkey(&k, ORIGIN);
    let a = serve(open(&dir.path().join("a.db"), &k, ORIGIN));
    a.log
        .append_many((0..20).map(|n| rec(n, None)).collect())
        .unwrap();
    let cp_a = a.log.checkpoint_now().unwrap();
    let state = dir.path().join("state");
    assert_eq!(check(&a.url, &vk, &state, &[]).status.code(), Some(0));
    // The operator, who holds the key, rebuilds the log without its last record and re-signs.
    let b = serve(open(&dir.path().join("b.db"), &k, ORIGIN));
    b.log
        .append_many((0..19).map(|n| rec(n, None)).collect())
        .unwrap();
    b.log.checkpoint_now().unwrap();
    let o = check(&b.url, &vk, &state, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("shrank from 20 to 19"), "{}", text(&o));
    // A fresh auditor shown another observer's checkpoint of 20 sees the same rollback.
    std::fs::write(dir.path().join("a20.cp"), &cp_a.note).unwrap();
    let o = check(
        &b.url,
        &vk,
        &dir.path().join("fresh0"),
        &["--checkpoint", dir.path().join("a20.cp").to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("shrank from 20 to 19"), "{}", text(&o));
    // ... and puts another record in its place: same size, another root.
    b.log.append(&rec(777, None)).unwrap();
    let cp_b = b.log.checkpoint_now().unwrap();
    let o = check(&b.url, &vk, &state, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("fork"), "{}", text(&o));
    // ... and grows past it: the consistency proof from 20 fails.
    b.log
        .append_many((30..35).map(|n| rec(n, None)).collect())
        .unwrap();
    b.log.checkpoint_now().unwrap();
    let o = check(&b.url, &vk, &state, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("not an extension"), "{}", text(&o));
    // Two observers' checkpoints of one size with different roots, shown to a fresh auditor.
    std::fs::write(dir.path().join("a.cp"), &cp_a.note).unwrap();
    std::fs::write(dir.path().join("b.cp"), &cp_b.note).unwrap();
    let fresh = dir.path().join("fresh-state");
    let o = check(
        &a.url,
        &vk,
        &fresh,
        &[
            "--checkpoint",
            dir.path().join("a.cp").to_str().unwrap(),
            "--checkpoint",
            dir.path().join("b.cp").to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("fork"), "{}", text(&o));
    // The honest log alone, with the honest observer's checkpoint, verifies.
    let o = check(
        &a.url,
        &vk,
        &fresh,
        &["--checkpoint", dir.path().join("a.cp").to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn a_checkpoint_by_another_key_or_for_another_origin_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(dir.path(), "cp.key");
    let other = key(dir.path(), "other.key");
    let a = serve(open(&dir.path().join("a.db"), &k, ORIGIN));
    a.log.append(&rec(1, None)).unwrap();
    a.log.checkpoint_now().unwrap();
    let state = dir.path().join("state");
    let o = check(&a.url, &vkey(&other, ORIGIN), &state, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = check(&a.url, &vkey(&k, "elsewhere.test/log"), &state, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // A log run by the same key under another origin is not this log either.
    let b = serve(open(&dir.path().join("b.db"), &k, "elsewhere.test/log"));
    b.log.append(&rec(1, None)).unwrap();
    b.log.checkpoint_now().unwrap();
    let o = check(&b.url, &vkey(&k, ORIGIN), &state, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // A remembered checkpoint that is not the log's is a finding, not silently replaced.
    std::fs::write(&state, "not a checkpoint\n").unwrap();
    let o = check(&a.url, &vkey(&k, ORIGIN), &state, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn lineage_and_inclusion_bundles_verify() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(dir.path(), "cp.key");
    let vk = vkey(&k, ORIGIN);
    let s = serve(open(&dir.path().join("a.db"), &k, ORIGIN));
    let r0 = rec(0, None);
    let r1 = rec(1, Some(&r0));
    let r2 = rec(2, Some(&r1));
    s.log
        .append_many(vec![rec(100, None), r0, rec(101, None), r1, r2])
        .unwrap();
    s.log.checkpoint_now().unwrap();
    let state = dir.path().join("state");
    let o = audit(&[
        "record",
        "--log",
        &s.url,
        "--key",
        &vk,
        "--state",
        state.to_str().unwrap(),
        "--index",
        "4",
        "--lineage",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("lineage: 3 record(s)"), "{}", text(&o));
    // The inclusion bundle a gateway would be shown.
    let (status, body) = get(&format!("{}/v1/log/bundle?index=3", s.url));
    assert_eq!(status, 200);
    let file = dir.path().join("bundle.json");
    std::fs::write(&file, &body).unwrap();
    let o = audit(&["bundle", "--key", &vk, file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The writ whose digest the record names.
    let writ_file = dir.path().join("writ.txt");
    std::fs::write(&writ_file, "a.b.c").unwrap();
    let o = audit(&[
        "bundle",
        "--key",
        &vk,
        file.to_str().unwrap(),
        "--writ",
        writ_file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // A bundle whose record was swapped fails.
    let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    use base64::Engine as _;
    v["record"] = base64::engine::general_purpose::STANDARD
        .encode(rec(555, None))
        .into();
    std::fs::write(&file, v.to_string()).unwrap();
    let o = audit(&["bundle", "--key", &vk, file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn routes_answer_tiles_and_refuse_out_of_range_with_400() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(dir.path(), "cp.key");
    let s = serve(open(&dir.path().join("a.db"), &k, ORIGIN));
    let records: Vec<Vec<u8>> = (0..300).map(|n| rec(n, None)).collect();
    s.log.append_many(records.clone()).unwrap();
    s.log.checkpoint_now().unwrap();
    let u = &s.url;
    // Tiles: level 0 holds leaf hashes; entry bundles hold the records.
    let (st, full) = get(&format!("{u}/v1/log/tile/0/000"));
    assert_eq!(st, 200);
    assert_eq!(full.len(), 256 * 32);
    assert_eq!(&full[32..64], &leaf_hash(&records[1]));
    let (st, part) = get(&format!("{u}/v1/log/tile/0/001.p/44"));
    assert_eq!(st, 200);
    assert_eq!(&part[..32], &leaf_hash(&records[256]));
    let (st, level1) = get(&format!("{u}/v1/log/tile/1/000.p/1"));
    assert_eq!(st, 200);
    assert_eq!(level1.len(), 32);
    assert_eq!(level1[..], s.log.root_at(256).unwrap()[..]);
    let (st, entries) = get(&format!("{u}/v1/log/tile/entries/001.p/44"));
    assert_eq!(st, 200);
    assert_eq!(
        parse_entry_bundle(&entries).unwrap(),
        records[256..300].to_vec()
    );
    // Out of range and malformed: 400 with a code.
    for path in [
        "/v1/log/records/300",
        "/v1/log/records/x",
        "/v1/log/proof/inclusion?index=5&tree_size=301",
        "/v1/log/proof/inclusion?index=300&tree_size=300",
        "/v1/log/proof/inclusion?tree_size=10",
        "/v1/log/proof/consistency?first=20&second=10",
        "/v1/log/proof/consistency?first=1&second=301",
        "/v1/log/tile/0/001",
        "/v1/log/tile/0/001.p/45",
        "/v1/log/tile/0/1",
        "/v1/log/tile/0/x000/001",
        "/v1/log/tile/entries/002.p/1",
    ] {
        let (st, body) = get(&format!("{u}{path}"));
        assert_eq!(st, 400, "{path}: {}", String::from_utf8_lossy(&body));
        let problem: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("{path}: {}", String::from_utf8_lossy(&body)));
        assert!(problem["code"].is_string(), "{path}");
    }
    let (st, _) = get(&format!("{u}/v1/log/proof/consistency?first=0&second=300"));
    assert_eq!(st, 200);
}

/// Without --state the auditor remembers per log origin (so a rotation of the log's key keeps
/// its memory); files an earlier auditor kept per key are read when there is none per origin,
/// every one of them, so a log rolled back below any of them is caught.
#[test]
fn the_remembered_checkpoint_is_kept_per_origin_and_earlier_per_key_files_are_read() {
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let k = key(dir.path(), "cp.key");
    let s = serve(open(&dir.path().join("a.db"), &k, ORIGIN));
    s.log
        .append_many((0..10).map(|n| rec(n, None)).collect())
        .unwrap();
    let small = s.log.checkpoint_now().unwrap();
    let vk = vkey(&k, ORIGIN);
    let home = dir.path().join("state-home");
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_writ"))
            .env("XDG_STATE_HOME", &home)
            .args(["audit", "check", "--log", &s.url, "--key", &vk])
            .output()
            .unwrap()
    };
    let name = |what: &str| {
        let id = hex::encode(sha2::Sha256::digest(what.as_bytes()));
        home.join("writ/audit")
            .join(format!("{}.checkpoint", &id[..16]))
    };
    let (per_origin, per_key) = (name(&format!("origin:{ORIGIN}")), name(&vk));
    let o = run();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(per_origin.exists() && !per_key.exists());
    // An earlier auditor's file per key, and none per origin: read, and the memory moves.
    std::fs::rename(&per_origin, &per_key).unwrap();
    s.log
        .append_many((10..20).map(|n| rec(n, None)).collect())
        .unwrap();
    s.log.checkpoint_now().unwrap();
    let o = run();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains(&format!(
            "consistent: remembered ({}) (size 10) -> latest (size 20)",
            per_key.display()
        )),
        "{}",
        text(&o)
    );
    assert!(per_origin.exists());
    let o = run();
    assert!(
        text(&o).contains("consistent: remembered (size 20) -> latest (size 20)"),
        "{}",
        text(&o)
    );
    // A per-key file larger than the log (the log rolled back below what that auditor saw),
    // with no file per origin: a finding, not a fresh start.
    std::fs::remove_file(&per_origin).unwrap();
    let mut bigger = small.note.clone();
    bigger = bigger.replacen("\n10\n", "\n30\n", 1);
    let forged = {
        // Re-signed by the log's key: a checkpoint of size 30 the log never reached.
        let text = bigger.split_once("\n\n").unwrap().0.to_string() + "\n";
        let sig = k.sign(text.as_bytes()).unwrap();
        writ_attestation::log::note::signed_note(
            &text,
            &NoteVerifier::parse(&vk).unwrap(),
            sig.to_der().as_bytes(),
        )
    };
    std::fs::write(&per_key, forged).unwrap();
    let o = run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

/// A log serving fixed answers (what a lying log could serve): `/v1/log/keys` and
/// `/v1/log/checkpoint`.
fn fixed_log(keys: String, checkpoint: String) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && c.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let line = String::from_utf8_lossy(&head).to_string();
            let (status, body) = if line.starts_with("GET /v1/log/keys ") {
                ("200 OK", keys.clone())
            } else if line.starts_with("GET /v1/log/checkpoint ") {
                ("200 OK", checkpoint.clone())
            } else {
                ("404 Not Found", String::new())
            };
            let _ = write!(
                c,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// `writ audit --follow-rotations` accepts a later log key only through an endorsement that
/// verifies under a key it trusts: the log's listing alone adds nothing.
#[test]
fn following_a_rotation_needs_an_endorsement_that_verifies() {
    use base64::Engine as _;
    use writ_attestation::log::note::{Checkpoint, endorsement_message, signed_note};
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        key(dir.path(), "a.key"),
        key(dir.path(), "b.key"),
        key(dir.path(), "c.key"),
    );
    let (va, vb) = (vkey(&a, ORIGIN), vkey(&b, ORIGIN));
    // A checkpoint B alone signed.
    let cp_text = Checkpoint {
        origin: ORIGIN.into(),
        size: 0,
        root: writ_attestation::log::merkle::empty_root(),
        extensions: vec![],
    }
    .text();
    let note = signed_note(
        &cp_text,
        &NoteVerifier::parse(&vb).unwrap(),
        b.sign(cp_text.as_bytes()).unwrap().to_der().as_bytes(),
    );
    let listing = |by: &Arc<dyn CustodyKey>| {
        let sig = by
            .sign(&endorsement_message(ORIGIN, b.public_key().spki_der()))
            .unwrap();
        serde_json::json!({"origin": ORIGIN, "keys": [
            {"verifier_key": va},
            {"verifier_key": vb, "endorsed_by": va,
             "endorsement": base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())}
        ]})
        .to_string()
    };
    let run = |url: &str, follow: bool| {
        let state = dir.path().join(format!("state-{}", rand_suffix()));
        let mut args = vec![
            "check",
            "--log",
            url,
            "--key",
            &va,
            "--state",
            state.to_str().unwrap(),
        ];
        if follow {
            args.push("--follow-rotations");
        }
        audit(&args)
    };
    // Endorsed by A: followed.
    let honest = fixed_log(listing(&a), note.clone());
    let o = run(&honest, true);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("followed: endorsed by key"));
    // Without following: no signature by A.
    let o = run(&honest, false);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // "Endorsed by A" but signed by C: a finding.
    let lying = fixed_log(listing(&c), note);
    let o = run(&lying, true);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("does not verify"), "{}", text(&o));
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
