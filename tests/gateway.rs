//! `writ-gate` against a running appliance: bootstrap pins the CA by fingerprint and installs the
//! trust bundle; refresh installs the same version again or a newer one, and refuses a lower
//! sequence, another trust domain, or a bundle too old, keeping the one in place.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::stack::Stack;
use serde_json::Value;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn load_example_policy(s: &Stack) {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/policy/example.json");
    let out = s.admin(&["load-policy", example.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
}

/// A gateway's folder and configuration (`extra` TOML lines appended); the configuration's path.
fn gate_config(dir: &Path, server: &str, extra: &str) -> PathBuf {
    let conf = dir.join("gate.toml");
    std::fs::write(
        &conf,
        format!(
            "audience = \"spiffe://writ.test/gateway/tools\"\n\
             server = \"{server}\"\n\
             bundle = \"{d}/bundle.json\"\n\
             replay_db = \"{d}/replay.db\"\n\
             {extra}",
            d = dir.display()
        ),
    )
    .unwrap();
    conf
}

fn gate(args: &[&str]) -> Output {
    common::gate().args(args).output().unwrap()
}

fn bundle(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("bundle.json")).unwrap()).unwrap()
}

#[test]
fn bootstrap_pins_the_ca_and_refresh_never_goes_back() {
    let s = Stack::tls();
    load_example_policy(&s);
    let fp = s.server.as_ref().unwrap().fingerprint.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let conf = gate_config(d, &s.url(), "");
    let conf_s = conf.to_str().unwrap();

    // Before bootstrap there is nothing to refresh with.
    let out = gate(&["refresh", "--config", conf_s]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("bootstrap"), "{}", text(&out));
    // Another fingerprint: nothing is trusted, nothing installed.
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let out = gate(&["bootstrap", "--config", conf_s, "--fingerprint", &wrong]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("refusing to trust it"),
        "{}",
        text(&out)
    );
    assert!(!d.join("bundle.json").exists());
    assert!(!d.join("appliance-ca.pem").exists());

    // The appliance's fingerprint: the CA is kept, the bundle installed.
    let out = gate(&["bootstrap", "--config", conf_s, "--fingerprint", &fp]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(d.join("appliance-ca.pem").exists());
    let first = bundle(d);
    let seq = first["spiffe_sequence"].as_u64().unwrap();
    assert_eq!(first["writ"]["trust_domain"], "writ.test");
    // The kept CA is checked against a fingerprint given again.
    let out = gate(&["bootstrap", "--config", conf_s, "--fingerprint", &wrong]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not the pinned"), "{}", text(&out));

    // The same version served again (another validity window) installs.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = gate(&["refresh", "--config", conf_s]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(bundle(d)["spiffe_sequence"].as_u64().unwrap(), seq);
    assert_ne!(bundle(d)["writ"]["issued_at"], first["writ"]["issued_at"]);

    // A new policy bundle is a new version: a higher sequence, installed.
    let policy: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/policy/example.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut next = policy.clone();
    next["max_writ_lifetime_s"] = Value::from(120);
    let file = d.join("policy2.json");
    std::fs::write(&file, next.to_string()).unwrap();
    let out = s.admin(&["load-policy", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = gate(&["refresh", "--config", conf_s]);
    assert!(out.status.success(), "{}", text(&out));
    let newer = bundle(d);
    assert_eq!(newer["spiffe_sequence"].as_u64().unwrap(), seq + 1);

    // The gateway has seen a higher sequence than the appliance serves (a rolled-back
    // appliance, or one impersonating it with an old state): refused, the bundle kept.
    let mut higher = newer.clone();
    higher["spiffe_sequence"] = Value::from(seq + 5);
    std::fs::write(d.join("bundle.json"), higher.to_string()).unwrap();
    let out = gate(&["refresh", "--config", conf_s]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("bundle_rollback"), "{}", text(&out));
    assert_eq!(bundle(d), higher);
    // Another trust domain in place: the appliance's bundle is not for this gateway.
    let mut other = newer.clone();
    other["writ"]["trust_domain"] = Value::from("other.test");
    std::fs::write(d.join("bundle.json"), other.to_string()).unwrap();
    let out = gate(&["refresh", "--config", conf_s]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("trust domain"), "{}", text(&out));

    // A bound of bundle age the served bundle cannot meet: refused (bundle_stale).
    let dir2 = tempfile::tempdir().unwrap();
    let conf2 = gate_config(dir2.path(), &s.url(), "max_bundle_age_s = -1\n");
    let out = gate(&[
        "bootstrap",
        "--config",
        conf2.to_str().unwrap(),
        "--fingerprint",
        &fp,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("bundle_stale"), "{}", text(&out));
    assert!(!dir2.path().join("bundle.json").exists());
}
