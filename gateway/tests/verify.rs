//! `writ-gate verify` and `inspect` end to end through the binary, with the SQLite replay store:
//! allow once, then replayed; every missing or wrong input denies; several processes racing on
//! one writ allow exactly one; an unwritable store denies; inspect never allows.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;
use std::process::Output;

use common::{AUD, setup};
use serde_json::json;
use writ_attestation::writ::request::{Request, digest};

fn gate(dir: &Path, extra: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_writ-gate"))
        .current_dir(dir)
        .args(extra)
        .output()
        .unwrap()
}

fn verify_args<'a>(replay: &'a str, tail: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "verify",
        "--writ",
        "writ.jws",
        "--proof",
        "proof.jws",
        "--bundle",
        "bundle.json",
        "--audience",
        AUD,
        "--replay-db",
        replay,
        "--format",
        "json",
    ];
    v.extend(tail);
    v
}

fn decision(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
        panic!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn exec_req(args: &[&str]) -> String {
    let argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    digest(&Request::Exec {
        tool: "deploy",
        argv: &argv,
    })
    .unwrap()
}

#[test]
fn a_command_is_allowed_once_and_then_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let req = exec_req(&["--env", "prod"]);
    setup(dir.path(), &req, "EXEC", &format!("exec:{req}"), 1);
    let args = verify_args("replay.db", &["--tool", "deploy", "--", "--env", "prod"]);
    let o = gate(dir.path(), &args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(decision(&o)["decision"], "allow");
    let o = gate(dir.path(), &args);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(decision(&o)["code"], "replayed");
}

#[test]
fn wrong_or_missing_inputs_deny() {
    let dir = tempfile::tempdir().unwrap();
    let req = exec_req(&["--env", "prod"]);
    setup(dir.path(), &req, "EXEC", &format!("exec:{req}"), 2);
    let p = dir.path();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            verify_args("r.db", &["--tool", "deploy", "--", "--env", "staging"]),
            "binding_mismatch",
        ),
        (
            verify_args("r.db", &["--tool", "deploy", "--", "prod", "--env"]),
            "binding_mismatch",
        ),
        (
            verify_args("r.db", &["--tool", "other", "--", "--env", "prod"]),
            "binding_mismatch",
        ),
        (
            vec![
                "verify",
                "--writ",
                "writ.jws",
                "--bundle",
                "bundle.json",
                "--audience",
                AUD,
                "--replay-db",
                "r.db",
                "--format",
                "json",
                "--tool",
                "deploy",
                "--",
                "--env",
                "prod",
            ],
            "proof_missing",
        ),
        (
            vec![
                "verify",
                "--writ",
                "writ.jws",
                "--proof",
                "proof.jws",
                "--bundle",
                "bundle.json",
                "--audience",
                "spiffe://writ.test/gateway/other",
                "--replay-db",
                "r.db",
                "--format",
                "json",
                "--tool",
                "deploy",
                "--",
                "--env",
                "prod",
            ],
            "audience",
        ),
    ];
    for (args, want) in cases {
        let o = gate(p, &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert_eq!(decision(&o)["code"], want, "{args:?}");
    }
    // A proof for the writ swapped with another writ's.
    std::fs::write(p.join("other.jws"), "eyJhbGciOiJFUzI1NiJ9.e30.AAAA").unwrap();
    let o = gate(
        p,
        &[
            "verify",
            "--writ",
            "other.jws",
            "--proof",
            "proof.jws",
            "--bundle",
            "bundle.json",
            "--audience",
            AUD,
            "--replay-db",
            "r.db",
            "--format",
            "json",
            "--tool",
            "deploy",
            "--",
            "--env",
            "prod",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    // Missing files and no request are errors (exit 2), which refuse too.
    let o = gate(
        p,
        &[
            "verify",
            "--writ",
            "nope.jws",
            "--bundle",
            "bundle.json",
            "--audience",
            AUD,
            "--replay-db",
            "r.db",
            "--tool",
            "deploy",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    let o = gate(
        p,
        &[
            "verify",
            "--writ",
            "writ.jws",
            "--proof",
            "proof.jws",
            "--bundle",
            "bundle.json",
            "--audience",
            AUD,
            "--replay-db",
            "r.db",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    // After all those refusals, nothing was consumed: the right request is allowed.
    let o = gate(
        p,
        &verify_args("r.db", &["--tool", "deploy", "--", "--env", "prod"]),
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn an_http_request_is_bound_by_method_url_type_and_body() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("body.json"), br#"{"amount":10}"#).unwrap();
    let req = digest(&Request::Http {
        method: "POST",
        url: "https://api.writ.test/v1/pay?x=1",
        content_type: "application/json",
        body: br#"{"amount":10}"#,
    })
    .unwrap();
    setup(p, &req, "POST", "https://api.writ.test/v1/pay", 3);
    let base = |url: &'static str, body: &'static str| {
        verify_args(
            "r.db",
            &[
                "--http",
                "POST",
                url,
                "--body",
                body,
                "--content-type",
                "application/json",
            ],
        )
    };
    std::fs::write(p.join("body2.json"), br#"{"amount":1000}"#).unwrap();
    let o = gate(p, &base("https://api.writ.test/v1/pay?x=1", "body2.json"));
    assert_eq!(decision(&o)["code"], "binding_mismatch");
    let o = gate(p, &base("https://api.writ.test/v1/pay?x=2", "body.json"));
    assert_eq!(decision(&o)["code"], "binding_mismatch");
    let o = gate(
        p,
        &base("https://API.writ.test:443/v1/pay?x=1", "body.json"),
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn processes_racing_on_one_writ_allow_exactly_one() {
    let dir = tempfile::tempdir().unwrap();
    let req = exec_req(&["--env", "prod"]);
    setup(dir.path(), &req, "EXEC", &format!("exec:{req}"), 4);
    let args: Vec<String> = verify_args("race.db", &["--tool", "deploy", "--", "--env", "prod"])
        .into_iter()
        .map(String::from)
        .collect();
    let children: Vec<_> = (0..8)
        .map(|_| {
            std::process::Command::new(env!("CARGO_BIN_EXE_writ-gate"))
                .current_dir(dir.path())
                .args(&args)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let codes: Vec<i32> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap().status.code().unwrap())
        .collect();
    assert_eq!(codes.iter().filter(|c| **c == 0).count(), 1, "{codes:?}");
    assert!(codes.iter().all(|c| *c == 0 || *c == 1), "{codes:?}");
}

#[test]
fn an_unwritable_replay_store_denies() {
    let dir = tempfile::tempdir().unwrap();
    let req = exec_req(&["--env", "prod"]);
    setup(dir.path(), &req, "EXEC", &format!("exec:{req}"), 5);
    // The store's path is a directory: nothing can be recorded, so nothing is allowed.
    std::fs::create_dir(dir.path().join("store-dir")).unwrap();
    let o = gate(
        dir.path(),
        &verify_args("store-dir", &["--tool", "deploy", "--", "--env", "prod"]),
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(decision(&o)["code"], "replay_store");
}

#[test]
fn inspect_explains_and_never_allows() {
    let dir = tempfile::tempdir().unwrap();
    let req = exec_req(&[]);
    setup(dir.path(), &req, "EXEC", &format!("exec:{req}"), 6);
    let o = gate(dir.path(), &["inspect", "--writ", "writ.jws"]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("not an authorization"), "{out}");
    assert!(!out.contains("\"allow\""), "{out}");
    std::fs::write(dir.path().join("junk"), "nope").unwrap();
    assert_eq!(
        gate(dir.path(), &["inspect", "--writ", "junk"])
            .status
            .code(),
        Some(2)
    );
    // Inspecting consumed nothing.
    let o = gate(dir.path(), &verify_args("r.db", &["--tool", "deploy"]));
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

fn edit_bundle(dir: &Path, pretty: bool, edit: impl Fn(&mut serde_json::Value)) {
    let p = dir.join("bundle.json");
    let mut b: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(&mut b);
    let text = if pretty {
        serde_json::to_string_pretty(&b).unwrap()
    } else {
        b.to_string()
    };
    std::fs::write(p, text).unwrap();
}

#[test]
fn bundle_rollback_a_lower_sequence_or_another_bundle_under_the_same_sequence_denies() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let req = exec_req(&["--env", "prod"]);
    setup(p, &req, "EXEC", &format!("exec:{req}"), 7);
    let args = verify_args("r.db", &["--tool", "deploy", "--", "--env", "prod"]);
    edit_bundle(p, false, |b| b["spiffe_sequence"] = json!(5));
    let o = gate(p, &args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // The same bundle reformatted is the same bundle: it gets as far as the replay check.
    edit_bundle(p, true, |_| {});
    assert_eq!(decision(&gate(p, &args))["code"], "replayed");
    // A fresh writ, so that only the bundle can refuse.
    setup(p, &req, "EXEC", &format!("exec:{req}"), 8);
    edit_bundle(p, false, |b| b["spiffe_sequence"] = json!(4));
    let o = gate(p, &args);
    assert_eq!(decision(&o)["code"], "bundle_rollback", "{o:?}");
    edit_bundle(p, false, |b| {
        b["spiffe_sequence"] = json!(5);
        b["spiffe_refresh_hint"] = json!(60);
    });
    let o = gate(p, &args);
    assert_eq!(decision(&o)["code"], "bundle_rollback", "{o:?}");
    // A higher sequence moves the mark, and the refused ones consumed nothing.
    edit_bundle(p, false, |b| b["spiffe_sequence"] = json!(6));
    let o = gate(p, &args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    edit_bundle(p, false, |b| b["spiffe_sequence"] = json!(5));
    assert_eq!(decision(&gate(p, &args))["code"], "bundle_rollback");
}
