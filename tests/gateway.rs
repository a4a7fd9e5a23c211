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
    // A damaged bundle in place is not taken for none.
    std::fs::write(d.join("bundle.json"), "not a bundle").unwrap();
    let out = gate(&["refresh", "--config", conf_s]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not a trust bundle"), "{}", text(&out));

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

/// What the upstream received: request lines and bodies.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// An HTTP/1.1 upstream on loopback answering 201 "done" (Connection: close) and counting what
/// it received (method, target, body).
fn upstream() -> (String, Seen) {
    use std::io::{BufRead, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = std::sync::Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut r = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                continue;
            }
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h.trim_end().is_empty() {
                    break;
                }
                if let Some((n, v)) = h.split_once(':')
                    && n.trim().eq_ignore_ascii_case("content-length")
                {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).unwrap();
            s.lock().unwrap().push((line.trim_end().to_string(), body));
            let mut w = stream;
            let _ = w.write_all(
                b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndone",
            );
        }
    });
    (url, seen)
}

/// Sends a raw request to `addr`; the status, the headers (lower case) and the body.
fn send(addr: &str, head: &str, body: &[u8]) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(
        format!(
            "{head}\r\nHost: api.writ.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

#[test]
fn a_writ_issued_over_https_runs_once_through_exec_and_is_forwarded_once_through_the_proxy() {
    use std::io::BufRead;
    let s = Stack::tls();
    let fp = s.server.as_ref().unwrap().fingerprint.clone().unwrap();
    let aud = "spiffe://writ.test/gateway/tools";
    // The example policy (commands and HTTP requests), for this trust domain's gateway.
    let policy: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/policy/example.json"),
        )
        .unwrap()
        .replace("spiffe://writ.dev/gateway/tools", aud),
    )
    .unwrap();
    let pfile = s.dir.path().join("policy.json");
    std::fs::write(&pfile, policy.to_string()).unwrap();
    let out = s.admin(&["load-policy", pfile.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));

    let (a, log_file, state) = common::runtime::agent_enrolled(&s, "ci-1");
    common::runtime::assign(&s, "ci-1", &common::runtime::profile_of(&a));
    drop(a);
    let st = state.to_str().unwrap().to_string();
    let tcti = s.tpm.tcti();
    let agent = |args: &[&str]| {
        let mut all = vec!["agent", args[0], "--state", st.as_str()];
        if args[0] != "inclusion" {
            all.extend(["--tcti", tcti.as_str()]);
        }
        all.extend(&args[1..]);
        s.writ(&all)
    };
    let out = agent(&["attest", "--event-log", log_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));

    // The gateway: bootstrapped from the appliance, inclusion required, a tool and a proxy, and
    // its client certificate (issued by an admin) for reporting its spool.
    let (up, seen) = upstream();
    let gdir = tempfile::tempdir().unwrap();
    let g = gdir.path();
    let (gcert, gkey) = (g.join("gateway.pem"), g.join("gateway.key"));
    let out = s.admin(&[
        "issue-cert",
        "--gateway",
        "--name",
        "tools-1",
        "--key-out",
        gkey.to_str().unwrap(),
        "--cert-out",
        gcert.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::set_permissions(g, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let echo = std::fs::read("/usr/bin/echo").unwrap();
    let conf = gate_config(
        g,
        &s.url(),
        &format!(
            "require_inclusion = true\ncert = \"{}\"\nkey = \"{}\"\n\n[tools.greet]\npath = \"/usr/bin/echo\"\nsha256 = \"{}\"\ncwd = \"{}\"\nresource = \"tools/greet\"\n\n\
             [proxy]\nlisten = \"127.0.0.1:0\"\npublic_origin = \"https://api.writ.test\"\nupstream = \"{up}\"\n",
            gcert.display(),
            gkey.display(),
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&echo)),
            g.display()
        ),
    );
    let conf_s = conf.to_str().unwrap();
    let out = gate(&["bootstrap", "--config", conf_s, "--fingerprint", &fp]);
    assert!(out.status.success(), "{}", text(&out));

    // exec: a writ for `greet hello`, its proof made in the TPM.
    let w1 = g.join("w1.jws");
    let w1_s = w1.to_str().unwrap();
    let out = agent(&[
        "request",
        "--action",
        "exec",
        "--resource",
        "tools/greet",
        "--audience",
        aud,
        "--out",
        w1_s,
        "--tool",
        "greet",
        "--",
        "hello",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = agent(&["proof", "--writ", w1_s, "--tool", "greet", "--", "hello"]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::write(g.join("p1.jws"), &out.stdout).unwrap();
    let exec = |inclusion: Option<&str>| {
        let mut c = common::gate();
        c.args(["exec", "--config", conf_s, "--writ", w1_s, "--proof"])
            .arg(g.join("p1.jws"));
        if let Some(i) = inclusion {
            c.args(["--inclusion", i]);
        }
        c.args(["--tool", "greet", "--", "hello"]).output().unwrap()
    };
    let out = exec(None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("inclusion_missing"), "{}", text(&out));
    let i1 = g.join("i1.json");
    let out = agent(&["inclusion", "--writ", w1_s, "--out", i1.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = exec(Some(i1.to_str().unwrap()));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    let out = exec(Some(i1.to_str().unwrap()));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("replayed"), "{}", text(&out));

    // writ agent run: the writ, its proof and its inclusion bundle in one step, handed to the
    // gateway; its exit code is the gateway's.
    let gate_bin = common::gate_path();
    let run = |resource: &str, arg: &str| {
        agent(&[
            "run",
            "--audience",
            aud,
            "--resource",
            resource,
            "--gate-config",
            conf_s,
            "--gate",
            gate_bin.to_str().unwrap(),
            "--event-log",
            log_file.to_str().unwrap(),
            "--tool",
            "greet",
            "--",
            arg,
        ])
    };
    let out = run("tools/greet", "again");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "again\n");
    // A writ for another resource than the manifest names for the tool: the gateway refuses.
    let out = run("tools/other", "elsewhere");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("resource"), "{}", text(&out));

    // proxy: a writ for POST https://api.writ.test/v1/pay with a body.
    let mut proxy = common::gate()
        .args(["proxy", "--config", conf_s])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(proxy.stdout.take().unwrap()).lines();
    let addr = loop {
        let l = lines.next().unwrap().unwrap();
        if let Some(a) = l.strip_prefix("writ-gate proxy: listening on http://") {
            break a.to_string();
        }
    };
    let body = br#"{"amount":10}"#;
    let bfile = g.join("body.json");
    std::fs::write(&bfile, body).unwrap();
    let w2 = g.join("w2.jws");
    let w2_s = w2.to_str().unwrap();
    let http = [
        "--http",
        "POST",
        "--url",
        "https://api.writ.test/v1/pay",
        "--content-type",
        "application/json",
        "--body",
        bfile.to_str().unwrap(),
    ];
    let mut args = vec![
        "request",
        "--action",
        "http",
        "--resource",
        "api/pay",
        "--audience",
        aud,
        "--out",
        w2_s,
    ];
    args.extend(http);
    let out = agent(&args);
    assert!(out.status.success(), "{}", text(&out));
    let mut args = vec!["proof", "--writ", w2_s];
    args.extend(http);
    let out = agent(&args);
    assert!(out.status.success(), "{}", text(&out));
    let proof = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let writ2 = std::fs::read_to_string(&w2).unwrap().trim().to_string();
    let i2 = g.join("i2.json");
    let inclusion = |from: Option<&str>| {
        let mut args = vec![
            "inclusion",
            "--writ",
            w2_s,
            "--out",
            i2.to_str().unwrap(),
            "--header",
        ];
        if let Some(f) = from {
            args.extend(["--from-size", f]);
        }
        let out = agent(&args);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let call = |inc: &str| {
        send(
            &addr,
            &format!(
                "POST /v1/pay HTTP/1.1\r\nContent-Type: application/json\r\nAuthorization: DPoP {writ2}\r\nDPoP: {proof}\r\nWrit-Inclusion: {inc}"
            ),
            body,
        )
    };
    // Against a newer checkpoint than the gateway saw, without the proof from it: refused, with
    // the size to prove from.
    let (status, head, answer) = call(&inclusion(None));
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("inclusion_consistency"), "{answer}");
    let size = head
        .lines()
        .find_map(|l| l.strip_prefix("writ-checkpoint-size:"))
        .unwrap()
        .trim()
        .to_string();
    let printed = gate(&["checkpoint", "--config", conf_s]);
    let seen_cp: Value = serde_json::from_slice(&printed.stdout).unwrap();
    assert_eq!(seen_cp["size"].to_string(), size);
    assert!(seen.lock().unwrap().is_empty());
    // With the consistency proof from it: forwarded, once.
    let (status, _, answer) = call(&inclusion(Some(&size)));
    assert_eq!((status, answer.as_str()), (201, "done"));
    let (status, _, answer) = call(&inclusion(Some(&size)));
    assert_eq!(status, 401, "{answer}");
    {
        let got = seen.lock().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "POST /v1/pay HTTP/1.1");
        assert_eq!(got[0].1, body);
    }
    let _ = proxy.kill();
    let _ = proxy.wait();

    // The spool reported: the three decisions and their outcomes become gate and outcome records
    // under the gateway's identity, and leave the spool.
    let out = gate(&["report", "--config", conf_s]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("reported 6 spool entries"),
        "{}",
        text(&out)
    );
    let me = "spiffe://writ.test/gateway/tools-1";
    let records = s.records();
    let mine: Vec<_> = records.iter().filter(|r| r.subject == me).collect();
    let kinds: Vec<String> = mine
        .iter()
        .map(|r| format!("{:?} {:?}", r.kind, r.decision))
        .collect();
    assert_eq!(
        kinds,
        [
            "Gate Allow",
            "Outcome Allow",
            "Gate Allow",
            "Outcome Allow",
            "Gate Allow",
            "Outcome Allow"
        ],
        "{mine:?}"
    );
    // Each gate record names the writ its issue record names.
    let issued: Vec<&String> = records
        .iter()
        .filter(|r| format!("{:?}", r.kind) == "Issue")
        .filter_map(|r| r.digests.get("writ"))
        .collect();
    for r in mine.iter().filter(|r| format!("{:?}", r.kind) == "Gate") {
        assert!(issued.contains(&&r.digests["writ"]), "{r:?}");
    }
    let out = gate(&["spool", "--config", conf_s]);
    assert!(out.stdout.is_empty(), "{}", text(&out));
    let spool_insert = |entry: &str| {
        rusqlite::Connection::open(g.join("replay.db"))
            .unwrap()
            .execute("INSERT INTO spool (entry) VALUES ($1)", [entry])
            .unwrap();
    };
    let count_mine = || s.records().iter().filter(|r| r.subject == me).count();
    // A gate entry for a writ this appliance never issued: recorded as a deny.
    let fake = format!(
        r#"{{"kind":"gate","decision":"allow","time":1,"writ":{{"jti":"never-issued","sub":"x","aud":"{aud}","request":"sha256:{z}","digest":"sha256:{z}"}}}}"#,
        z = "0".repeat(64)
    );
    spool_insert(&fake);
    let out = gate(&["report", "--config", conf_s]);
    assert!(out.status.success(), "{}", text(&out));
    let last = s.records().pop().unwrap();
    assert_eq!(
        (last.subject.as_str(), last.reasons.as_slice()),
        (me, ["report_mismatch".to_string()].as_slice())
    );
    // Two reporters at once on one spool: each entry recorded once, nothing else fails.
    let before = count_mine();
    for i in 0..3 {
        spool_insert(&format!(
            r#"{{"kind":"outcome","jti":"j{i}","exit":0,"status":"exit status: 0"}}"#
        ));
    }
    let (a, b) = std::thread::scope(|sc| {
        let a = sc.spawn(|| gate(&["report", "--config", conf_s]));
        let b = sc.spawn(|| gate(&["report", "--config", conf_s]));
        (a.join().unwrap(), b.join().unwrap())
    });
    let _ = gate(&["report", "--config", conf_s]);
    assert_eq!(count_mine(), before + 3, "{}\n{}", text(&a), text(&b));
    // A spool made again (a reinstalled gateway) numbers from 1 under a new identity: its
    // entries are recorded, not taken for the old spool's.
    for f in ["replay.db", "replay.db-wal", "replay.db-shm"] {
        let _ = std::fs::remove_file(g.join(f));
    }
    let out = gate(&["report", "--config", conf_s]);
    assert!(
        text(&out).contains("reported 0 spool entries"),
        "{}",
        text(&out)
    );
    spool_insert(r#"{"kind":"outcome","jti":"again","exit":0,"status":"exit status: 0"}"#);
    let before = count_mine();
    let out = gate(&["report", "--config", conf_s]);
    assert!(
        text(&out).contains("reported 1 spool entries"),
        "{}",
        text(&out)
    );
    assert_eq!(count_mine(), before + 1);

    // A malformed entry: the report is refused, and the refusal recorded under the gateway.
    spool_insert(r#"{"kind":"issue","jti":"x"}"#);
    let out = gate(&["report", "--config", conf_s]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let last = s.records().pop().unwrap();
    assert_eq!(
        (last.subject.as_str(), last.reasons.as_slice()),
        (me, ["malformed".to_string()].as_slice())
    );
    rusqlite::Connection::open(g.join("replay.db"))
        .unwrap()
        .execute("DELETE FROM spool", [])
        .unwrap();

    // Nothing more to report; a revoked gateway reports nothing, and the refusal is logged.
    let out = gate(&["report", "--config", conf_s]);
    assert!(
        text(&out).contains("reported 0 spool entries"),
        "{}",
        text(&out)
    );
    // The gateway renews its own certificate with the one it has: a new key, the same
    // identity, recorded under it; the renewed pair reports.
    let before = std::fs::read(&gcert).unwrap();
    let old_key = std::fs::read(&gkey).unwrap();
    let out = gate(&["renew", "--config", conf_s, "--hours", "24"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(me), "{}", text(&out));
    assert_ne!(std::fs::read(&gcert).unwrap(), before);
    assert_ne!(std::fs::read(&gkey).unwrap(), old_key);
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&gkey).unwrap().permissions())
            & 0o777,
        0o600
    );
    let renewed = s.records().pop().unwrap();
    assert_eq!(
        (
            renewed.subject.as_str(),
            serde_json::to_value(renewed.decision).unwrap()
        ),
        (me, serde_json::json!("allow"))
    );
    let out = gate(&["report", "--config", conf_s]);
    assert!(
        text(&out).contains("reported 0 spool entries"),
        "{}",
        text(&out)
    );
    // A gateway's certificate never administers.
    let url = s.url();
    let out = s.writ(&[
        "admin",
        "--server",
        &url,
        "--fingerprint",
        &fp,
        "--cert",
        gcert.to_str().unwrap(),
        "--key",
        gkey.to_str().unwrap(),
        "runtimes",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("admin_forbidden"), "{}", text(&out));
    let out = s.admin(&["revoke-gateway", "tools-1"]);
    assert!(out.status.success(), "{}", text(&out));
    // Revoked: no renewal either (the renewed certificate was revoked with the identity).
    let out = gate(&["renew", "--config", conf_s]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("gateway_revoked"), "{}", text(&out));
    let out = gate(&["report", "--config", conf_s]);
    assert!(out.status.success(), "{}", text(&out));
    // (the spool was empty: nothing was sent); an entry to send is refused.
    let before = s.records().len();
    let store = rusqlite::Connection::open(g.join("replay.db")).unwrap();
    store
        .execute(
            "INSERT INTO spool (entry) VALUES ('{\"kind\":\"outcome\",\"jti\":\"x\",\"exit\":0}')",
            [],
        )
        .unwrap();
    let out = gate(&["report", "--config", conf_s]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("gateway_revoked"), "{}", text(&out));
    let after = s.records();
    assert_eq!(after.len(), before + 1);
    let last = after.last().unwrap();
    assert_eq!(
        (last.subject.as_str(), last.reasons.as_slice()),
        (me, ["gateway_revoked".to_string()].as_slice())
    );
}

/// The issuer and checkpoint keys rotate under a running gateway that refreshes its bundle: a
/// writ runs before the rotation, while the new keys wait, in the overlap (the checkpoint signed
/// by both keys) and after the old keys left (the gateway's bundle then lists the new keys
/// alone), with no restart of either side and no refusal.
#[test]
fn the_issuer_checkpoint_and_ca_keys_rotate_under_a_running_gateway() {
    // EARs of 10 s: the old CA leaves 10 s after the new one signs.
    let s = Stack::tls_with(&["--ear-ttl", "10"]);
    let fp = s.server.as_ref().unwrap().fingerprint.clone().unwrap();
    let aud = "spiffe://writ.test/gateway/tools";
    let mut policy: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/policy/example.json"),
        )
        .unwrap()
        .replace("spiffe://writ.dev/gateway/tools", aud),
    )
    .unwrap();
    policy["writ_lifetime_s"] = Value::from(3);
    policy["max_writ_lifetime_s"] = Value::from(3);
    let pfile = s.dir.path().join("policy.json");
    std::fs::write(&pfile, policy.to_string()).unwrap();
    let out = s.admin(&["load-policy", pfile.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let (a, log_file, state) = common::runtime::agent_enrolled(&s, "rot-g");
    common::runtime::assign(&s, "rot-g", &common::runtime::profile_of(&a));
    drop(a);

    let gdir = tempfile::tempdir().unwrap();
    let g = gdir.path();
    std::fs::set_permissions(g, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let echo = std::fs::read("/usr/bin/echo").unwrap();
    let conf = gate_config(
        g,
        &s.url(),
        &format!(
            "require_inclusion = true\n\n[tools.greet]\npath = \"/usr/bin/echo\"\nsha256 = \"{}\"\ncwd = \"{}\"\nresource = \"tools/greet\"\n",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&echo)),
            g.display()
        ),
    );
    let conf_s = conf.to_str().unwrap();
    let out = gate(&["bootstrap", "--config", conf_s, "--fingerprint", &fp]);
    assert!(out.status.success(), "{}", text(&out));
    let gate_bin = common::gate_path();
    let (st, tcti) = (state.to_str().unwrap().to_string(), s.tpm.tcti());
    let run = |arg: &str| {
        let out = s.writ(&[
            "agent",
            "run",
            "--state",
            &st,
            "--tcti",
            &tcti,
            "--audience",
            aud,
            "--resource",
            "tools/greet",
            "--gate-config",
            conf_s,
            "--gate",
            gate_bin.to_str().unwrap(),
            "--event-log",
            log_file.to_str().unwrap(),
            "--tool",
            "greet",
            "--",
            arg,
        ]);
        assert_eq!(out.status.code(), Some(0), "{arg}: {}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{arg}\n"));
    };
    let refresh = || {
        let out = gate(&["refresh", "--config", conf_s]);
        assert!(out.status.success(), "{}", text(&out));
        let b = bundle(g);
        let issuers = b["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["use"] == "issuer")
            .count();
        let log_keys = b["writ"]["log"]["verifier_keys"].as_array().unwrap().len();
        let cas = b["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["use"] == "x509-svid")
            .count();
        (issuers, log_keys, cas)
    };
    // The CA certificates the gateway and the agent keep.
    let kept = |file: &Path| {
        std::fs::read_to_string(file)
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count()
    };
    let (gate_ca, agent_ca) = (g.join("appliance-ca.pem"), state.join("ca.pem"));
    let wait_until = |t: i64| {
        while now() < t {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };

    run("before");
    let rotate = |purpose: &str, label: &str| {
        let uri = common::softhsm_key(&s.hsm, label, purpose);
        let out = s.admin(&[
            "rotate-key",
            "--purpose",
            purpose,
            "--key-uri",
            &uri,
            "--overlap-s",
            "3",
            "--skew-s",
            "0",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            r["signs_from"].as_i64().unwrap(),
            r["previous_retires_at"].as_i64().unwrap(),
        )
    };
    let (signs_from, _) = rotate("issuer", "issuer-2");
    let (cp_from, retires_at) = rotate("checkpoint", "checkpoint-2");
    let (ca_from, ca_retires_at) = rotate("ca", "ca-2");
    assert_eq!(refresh(), (2, 2, 2));
    run("waiting");
    // The gateway and the agent learnt the new CA over the TLS they trust.
    assert_eq!((kept(&gate_ca), kept(&agent_ca)), (2, 2));
    // The new CA signs the server certificate from ca_from: both go on working across the switch.
    wait_until(signs_from.max(cp_from).max(ca_from) + 2);
    run("overlap");
    // (The issuer and checkpoint keys may have left by now; the old CA stays for its SVIDs.)
    assert_eq!(refresh().2, 2);
    // The old keys leave (the CA last: its SVIDs live as long as their EAR).
    wait_until(retires_at.max(ca_retires_at) + 2);
    assert_eq!(refresh(), (1, 1, 1));
    run("after");
    assert_eq!((kept(&gate_ca), kept(&agent_ca)), (1, 1));
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
