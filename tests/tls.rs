//! TLS end to end: `writ serve` with a `ca` key in SoftHSM2 speaks TLS only, with a server
//! certificate for the appliance's SPIFFE ID signed in the HSM under a CA certificate made once
//! and kept; `writ agent enroll` and `writ admin` pin that CA by fingerprint and refuse another;
//! openssl (an independent validator) accepts the chain for serverAuth; the service refuses to
//! start on a non-loopback address without TLS, with one key for two purposes, or with a kept
//! CA certificate of another key.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::Served;
use serde_json::Value;
use writ_testkit::{SoftHsm, Swtpm};

fn writ(hsm: &SoftHsm, args: &[&str]) -> Output {
    common::writ(Some(hsm)).args(args).output().unwrap()
}

/// The CA fingerprint a TLS appliance printed.
fn ca_fp(s: &Served) -> &str {
    s.fingerprint.as_deref().expect("TLS: a CA fingerprint")
}

fn key(hsm: &SoftHsm, purpose: &str) -> String {
    common::softhsm_key(hsm, &format!("writ-{purpose}"), purpose)
}

fn serve_args<'a>(dir: &'a Path, checkpoint: &'a str, ca: &'a str, tpm: &'a Swtpm) -> Vec<String> {
    vec![
        "serve".into(),
        "--store".into(),
        format!("sqlite:{}", dir.join("writ.db").display()),
        "--checkpoint-key".into(),
        checkpoint.into(),
        "--ca-key".into(),
        ca.into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--trust-domain".into(),
        "writ.test".into(),
        "--ek-roots".into(),
        tpm.ca_dir().join("issuercert.pem").display().to_string(),
        "--ek-roots".into(),
        tpm.ca_dir()
            .join("swtpm-localca-rootca-cert.pem")
            .display()
            .to_string(),
        "--admin-token-file".into(),
        dir.join("admin.token").display().to_string(),
    ]
}

fn start(hsm: &SoftHsm, args: &[String]) -> Served {
    let mut cmd = common::writ(Some(hsm));
    cmd.args(args);
    common::serve(cmd)
}

fn openssl(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut c = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl installed");
    if let Some(s) = stdin {
        c.stdin.as_mut().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(c.stdin.take());
    c.wait_with_output().unwrap()
}

#[test]
fn agents_and_admins_pin_the_appliance_ca_and_openssl_validates_its_certificate() {
    let hsm = SoftHsm::new();
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    writ_testkit::write_secret(&d.join("admin.token"), "admin-token-0123456789");
    let (cp, ca) = (key(&hsm, "checkpoint"), key(&hsm, "ca"));
    let args = serve_args(d, &cp, &ca, &tpm);
    let s = start(&hsm, &args);
    assert!(s.url.starts_with("https://127.0.0.1:"), "{}", s.url);
    assert!(ca_fp(&s).starts_with("sha256:"));

    // An admin pins the CA by fingerprint and keeps it.
    let token_file = d.join("admin.token").to_str().unwrap().to_string();
    let admin = |extra: &[&str]| {
        let mut a = vec![
            "admin",
            "--server",
            &s.url,
            "--token-file",
            &token_file,
            "--fingerprint",
            ca_fp(&s),
        ];
        a.extend(extra);
        writ(&hsm, &a)
    };
    let token = d.join("rt.token");
    let out = admin(&[
        "join-token",
        "--name",
        "rt",
        "--out",
        token.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The agent enrolls over TLS, and keeps the CA it pinned.
    let state = d.join("agent");
    let enroll = |fp: &str, state: &Path| {
        writ(
            &hsm,
            &[
                "agent",
                "enroll",
                "--server",
                &s.url,
                "--fingerprint",
                fp,
                "--join-token",
                token.to_str().unwrap(),
                "--state",
                state.to_str().unwrap(),
                "--tcti",
                &tpm.tcti(),
            ],
        )
    };
    let out = enroll(ca_fp(&s), &state);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(id["spiffe_id"], "spiffe://writ.test/runtime/rt");
    assert!(state.join("ca.pem").exists());

    // Another fingerprint: refused before anything is sent.
    let other = format!("sha256:{}", "0".repeat(64));
    let token_file = token_file.clone();
    let out = enroll(&other, &d.join("agent2"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not the pinned"), "{err}");
    // https without any pin: refused.
    let out = writ(
        &hsm,
        &[
            "admin",
            "--server",
            &s.url,
            "--token-file",
            d.join("admin.token").to_str().unwrap(),
            "runtimes",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fingerprint"));

    // openssl: the served chain validates for serverAuth under the kept CA certificate, and the
    // leaf names the appliance's SPIFFE ID.
    let addr = s.url.trim_start_matches("https://");
    let shown = openssl(&["s_client", "-connect", addr, "-showcerts"], Some(""));
    let text = String::from_utf8_lossy(&shown.stdout).to_string();
    let leaf_start = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let leaf_end = text[leaf_start..]
        .find("-----END CERTIFICATE-----")
        .unwrap()
        + leaf_start
        + 25;
    std::fs::write(d.join("leaf.pem"), &text[leaf_start..leaf_end]).unwrap();
    let ca_file = d.join("writ.db.ca.pem");
    let v = openssl(
        &[
            "verify",
            "-x509_strict",
            "-CAfile",
            ca_file.to_str().unwrap(),
            "-purpose",
            "sslserver",
            d.join("leaf.pem").to_str().unwrap(),
        ],
        None,
    );
    assert!(
        v.status.success(),
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    let x = openssl(
        &[
            "x509",
            "-noout",
            "-ext",
            "subjectAltName,extendedKeyUsage,basicConstraints",
            "-in",
            d.join("leaf.pem").to_str().unwrap(),
        ],
        None,
    );
    let ext = String::from_utf8_lossy(&x.stdout);
    assert!(
        ext.contains("URI:spiffe://writ.test/writ/appliance"),
        "{ext}"
    );
    assert!(ext.contains("TLS Web Server Authentication"), "{ext}");
    assert!(!ext.contains("Client Authentication"), "{ext}");
    assert!(ext.contains("CA:FALSE"), "{ext}");
    // The fingerprint printed is the kept CA certificate's.
    let fp = openssl(
        &[
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            ca_file.to_str().unwrap(),
        ],
        None,
    );
    let fp = String::from_utf8_lossy(&fp.stdout)
        .to_lowercase()
        .replace(':', "");
    assert!(fp.contains(ca_fp(&s).trim_start_matches("sha256:")), "{fp}");

    // writ audit reads the log over TLS with the same pin (and refuses another).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let audit = |fp: &str| {
        writ(
            &hsm,
            &[
                "audit",
                "check",
                "--log",
                &s.url,
                "--fingerprint",
                fp,
                "--key",
                &s.verifier_key,
                "--state",
                d.join(format!("audit-{}.cp", &fp[7..15])).to_str().unwrap(),
                "--full",
            ],
        )
    };
    let out = audit(ca_fp(&s));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified"));
    let out = audit(&other);
    assert_eq!(out.status.code(), Some(2));

    // The kept CA file holds exactly the pinned certificate.
    let kept = std::fs::read_to_string(state.join("ca.pem")).unwrap();
    assert_eq!(kept.matches("BEGIN CERTIFICATE").count(), 1);
    assert_eq!(kept, std::fs::read_to_string(&ca_file).unwrap());

    // A restart keeps the CA: the same fingerprint, and what clients kept still works.
    drop(s);
    let s2 = start(&hsm, &args);
    let first = std::fs::read_to_string(&ca_file).unwrap();
    assert_eq!(ca_fp(&s2), fingerprint_of(&first));
    let runtimes = |url: &str, ca: &Path, fp: Option<&str>| {
        let mut a = vec![
            "admin".to_string(),
            "--server".into(),
            url.to_string(),
            "--token-file".into(),
            token_file.clone(),
            "--ca-file".into(),
            ca.display().to_string(),
        ];
        if let Some(fp) = fp {
            a.extend(["--fingerprint".to_string(), fp.to_string()]);
        }
        a.push("runtimes".into());
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        writ(&hsm, &a)
    };
    let out = runtimes(&s2.url, &state.join("ca.pem"), None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A kept CA that is not the one pinned: refused.
    let out = runtimes(&s2.url, &state.join("ca.pem"), Some(&other));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not the pinned"));
    drop(s2);

    // Another appliance (another ca key): the kept CA does not trust it, nor a name its
    // certificate does not carry.
    let dir2 = tempfile::tempdir().unwrap();
    writ_testkit::write_secret(&dir2.path().join("admin.token"), "admin-token-0123456789");
    let ca2 = {
        let uri = hsm.key_uri("writ-ca-other");
        let out = writ(
            &hsm,
            &["keys", "generate", "--key", &uri, "--purpose", "ca"],
        );
        assert!(out.status.success());
        uri
    };
    let cp2 = {
        let uri = hsm.key_uri("writ-checkpoint-other");
        let out = writ(
            &hsm,
            &["keys", "generate", "--key", &uri, "--purpose", "checkpoint"],
        );
        assert!(out.status.success());
        uri
    };
    let mut args2 = serve_args(dir2.path(), &cp2, &ca2, &tpm);
    args2.extend(["--tls-name".into(), "127.0.0.1".into()]);
    let s3 = start(&hsm, &args2);
    assert_ne!(ca_fp(&s3), s2_fp(&first));
    let out = runtimes(&s3.url, &state.join("ca.pem"), None);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Its own CA, but by a name not in its certificate.
    let own = dir2.path().join("writ.db.ca.pem");
    let by_name = s3.url.replace("127.0.0.1", "localhost");
    let out = runtimes(&by_name, &own, None);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = runtimes(&s3.url, &own, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fingerprint_of(pem: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(der)))
}

fn s2_fp(pem: &str) -> String {
    fingerprint_of(pem)
}

#[test]
fn the_service_refuses_to_start_without_tls_off_loopback_or_with_shared_or_foreign_keys() {
    let hsm = SoftHsm::new();
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    writ_testkit::write_secret(&d.join("admin.token"), "admin-token-0123456789");
    let cp = key(&hsm, "checkpoint");
    let ca = key(&hsm, "ca");
    let run = |args: &[String]| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        writ(&hsm, &a)
    };
    // Plain HTTP on a non-loopback address.
    let mut args = serve_args(d, &cp, &ca, &tpm);
    let i = args.iter().position(|a| a == "--ca-key").unwrap();
    args.drain(i..i + 2);
    let j = args.iter().position(|a| a == "127.0.0.1:0").unwrap();
    args[j] = "0.0.0.0:0".into();
    let out = run(&args);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback only"));
    // One key for two purposes.
    let args = serve_args(d, &cp, &cp, &tpm);
    let out = run(&args);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("one key, one purpose"));
    // A kept CA certificate of another key.
    let other = hsm.key_uri("writ-ca2");
    let out = writ(
        &hsm,
        &["keys", "generate", "--key", &other, "--purpose", "ca"],
    );
    assert!(out.status.success());
    let s = start(&hsm, &serve_args(d, &cp, &ca, &tpm));
    drop(s);
    let out = run(&serve_args(d, &cp, &other, &tpm));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
