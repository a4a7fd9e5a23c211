//! `writ-gate proxy` through the binary, in front of a real upstream HTTP server in the test: a
//! request is forwarded once for a writ naming exactly it (without the writ and the proof, with
//! the upstream credentials), and every refusal reaches the caller with its code while the
//! upstream sees nothing.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bundle, http_writ, jwk, key, now};
use serde_json::Value;
use writ_attestation::writ::dpop::{self, ProofClaims};
use writ_attestation::writ::request::{Request, digest};

const ORIGIN: &str = "https://api.writ.test";

/// What the upstream received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// An HTTP/1.1 upstream on loopback that records each request and answers 201 "done".
fn upstream() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream.try_clone().unwrap());
                let mut w = stream;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or("").to_string();
                    let target = parts.next().unwrap_or("").to_string();
                    let mut headers = BTreeMap::new();
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).unwrap();
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        let (n, v) = h.split_once(':').unwrap();
                        headers.insert(n.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                    let len: usize = headers
                        .get("content-length")
                        .map(|v| v.parse().unwrap())
                        .unwrap_or(0);
                    let mut body = vec![0u8; len];
                    r.read_exact(&mut body).unwrap();
                    s.lock().unwrap().push(Seen {
                        method,
                        target,
                        headers,
                        body,
                    });
                    w.write_all(
                        b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\nX-Up: yes\r\nConnection: keep-alive\r\n\r\ndone",
                    )
                    .unwrap();
                }
            });
        }
    });
    (url, seen)
}

/// A running `writ-gate proxy`, killed when dropped.
struct Gate {
    child: Child,
    addr: String,
    metrics: Option<String>,
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gateway's configuration in `dir` for `upstream` (`extra` lines in [proxy]).
fn configure(dir: &Path, upstream: &str, extra: &str) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let creds = dir.join("upstream.creds");
    std::fs::write(
        &creds,
        "X-Api-Key: secret-upstream-key\nAuthorization: Bearer upstream-token\n",
    )
    .unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        dir.join("gate.toml"),
        format!(
            "audience = \"{aud}\"\nbundle = \"{d}/bundle.json\"\nreplay_db = \"{d}/replay.db\"\n\n\
             [proxy]\nlisten = \"127.0.0.1:0\"\npublic_origin = \"{ORIGIN}\"\nupstream = \"{upstream}\"\n\
             max_body_bytes = 256\nbody_timeout_s = 2\ncredentials = \"{c}\"\n{extra}",
            aud = common::AUD,
            d = dir.display(),
            c = creds.display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("bundle.json"), bundle(now()).to_string()).unwrap();
}

fn start(dir: &Path) -> Gate {
    let mut child = Command::new(env!("CARGO_BIN_EXE_writ-gate"))
        .args(["proxy", "--config"])
        .arg(dir.join("gate.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut metrics = None;
    let addr = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("writ-gate proxy stopped"))
            .unwrap();
        if let Some(a) = line.strip_prefix("writ-gate proxy: listening on http://") {
            break a.to_string();
        }
        if let Some(a) = line.strip_prefix("writ-gate proxy: metrics on http://") {
            metrics = Some(a.to_string());
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Gate {
        child,
        addr,
        metrics,
    }
}

/// An answer: status, headers (lower-case names), body.
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Answer {
    fn code(&self) -> String {
        serde_json::from_str::<Value>(&self.body).map_or_else(
            |_| String::new(),
            |v| v["code"].as_str().unwrap_or("").to_string(),
        )
    }
}

/// Sends `head` (request line and headers, without the final blank line) and `body` raw.
fn send(addr: &str, head: &str, body: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let req = format!(
        "{head}\r\nHost: api.writ.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status: status.parse().unwrap(),
        headers,
        body: body.to_string(),
    }
}

/// A writ (`jti`) for `method` `path` with `body` (JSON), and its proof (`nonce` if given).
fn credentials(
    method: &str,
    path: &str,
    body: &[u8],
    jti: u8,
    nonce: Option<&str>,
) -> (String, String) {
    let t = now();
    let url = format!("{ORIGIN}{path}");
    let req = digest(&Request::Http {
        method,
        url: &url,
        content_type: "application/json",
        body,
    })
    .unwrap();
    let w = http_writ(t, jti, &jwk(&key(9)).thumbprint(), &req);
    let p = proof(
        9,
        &w,
        method,
        path,
        &format!("proof-{jti}-{}", nonce.unwrap_or("")),
        nonce,
    );
    (w, p)
}

/// A DPoP proof by `key(seed)` for the writ `w` and `method` `path` (the URL without its query).
fn proof(seed: u8, w: &str, method: &str, path: &str, jti: &str, nonce: Option<&str>) -> String {
    let holder = key(seed);
    let url = format!("{ORIGIN}{path}");
    dpop::create(
        &holder,
        &jwk(&holder),
        &ProofClaims {
            jti: jti.into(),
            iat: now(),
            htm: method.into(),
            htu: url.split('?').next().unwrap().to_string(),
            ath: dpop::ath(w),
            nonce: nonce.map(str::to_string),
        },
    )
    .unwrap()
}

/// `writ-gate proxy` with the configuration in `dir`, run to its end (it refuses to start).
fn proxy_output(dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_writ-gate"))
        .args(["proxy", "--config"])
        .arg(dir.join("gate.toml"))
        .output()
        .unwrap()
}

fn call(g: &Gate, method: &str, path: &str, body: &[u8], w: &str, p: &str, extra: &str) -> Answer {
    send(
        &g.addr,
        &format!(
            "{method} {path} HTTP/1.1\r\nContent-Type: application/json\r\nAuthorization: DPoP {w}\r\nDPoP: {p}{extra}"
        ),
        body,
    )
}

fn spool(dir: &Path) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_writ-gate"))
        .args(["spool", "--config"])
        .arg(dir.join("gate.toml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["entry"].clone())
        .collect()
}

const PAY: &[u8] = br#"{"amount":10}"#;

#[test]
fn a_request_is_forwarded_once_for_its_writ_and_every_refusal_forwards_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (up, seen) = upstream();
    configure(d, &up, "");
    let g = start(d);
    let count = || seen.lock().unwrap().len();

    // A method override alongside a valid writ: refused, and the writ is not spent.
    let (w, p) = credentials("POST", "/v1/pay?x=1", PAY, 1, None);
    let a = call(
        &g,
        "POST",
        "/v1/pay?x=1",
        PAY,
        &w,
        &p,
        "\r\nX-HTTP-Method-Override: DELETE",
    );
    assert_eq!(
        (a.status, a.code().as_str()),
        (400, "method_override"),
        "{}",
        a.body
    );
    assert_eq!(count(), 0);

    // The writ's request: forwarded once, without the writ or proof, with the credentials.
    let a = call(&g, "POST", "/v1/pay?x=1", PAY, &w, &p, "");
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body, "done");
    assert_eq!(a.headers.get("x-up").map(String::as_str), Some("yes"));
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.len(), 1);
        let r = &s[0];
        assert_eq!(
            (r.method.as_str(), r.target.as_str()),
            ("POST", "/v1/pay?x=1")
        );
        assert_eq!(r.body, PAY);
        assert_eq!(r.headers["x-api-key"], "secret-upstream-key");
        assert_eq!(r.headers["writ-subject"], "spiffe://writ.test/runtime/a");
        // The client's Authorization (the writ) never passes; the gateway's own does.
        assert_eq!(r.headers["authorization"], "Bearer upstream-token");
        assert!(!r.headers.contains_key("dpop"), "{:?}", r.headers);
    }
    // The same writ and proof again: replayed.
    let a = call(&g, "POST", "/v1/pay?x=1", PAY, &w, &p, "");
    assert_eq!(
        (a.status, a.code().as_str()),
        (401, "replayed"),
        "{}",
        a.body
    );
    assert!(a.headers["www-authenticate"].starts_with("DPoP"));
    assert_eq!(count(), 1);

    // Other method, URL, query or body than the writ names: refused.
    let (w, p) = credentials("POST", "/v1/pay?x=1", PAY, 2, None);
    for (method, path, body) in [
        ("PUT", "/v1/pay?x=1", PAY),
        ("POST", "/v1/refund?x=1", PAY),
        ("POST", "/v1/pay?x=2", PAY),
        ("POST", "/v1/pay?x=1", br#"{"amount":1000}"#.as_slice()),
    ] {
        let a = call(&g, method, path, body, &w, &p, "");
        assert_eq!(a.status, 401, "{method} {path}: {}", a.body);
        assert_eq!(a.code(), "binding_mismatch", "{method} {path}: {}", a.body);
    }
    // Another content type: another request.
    let a = send(
        &g.addr,
        &format!(
            "POST /v1/pay?x=1 HTTP/1.1\r\nContent-Type: text/plain\r\nAuthorization: DPoP {w}\r\nDPoP: {p}"
        ),
        PAY,
    );
    assert_eq!(a.code(), "binding_mismatch", "{}", a.body);
    // No writ, another scheme, garbage, alg none; no proof, a proof by another key.
    let a = send(
        &g.addr,
        "POST /v1/pay?x=1 HTTP/1.1\r\nContent-Type: application/json",
        PAY,
    );
    assert_eq!((a.status, a.code().as_str()), (401, "writ_missing"));
    let a = send(
        &g.addr,
        &format!(
            "POST /v1/pay?x=1 HTTP/1.1\r\nContent-Type: application/json\r\nAuthorization: Bearer {w}\r\nDPoP: {p}"
        ),
        PAY,
    );
    assert_eq!(a.code(), "writ_missing");
    let a = call(&g, "POST", "/v1/pay?x=1", PAY, "not.a.writ", &p, "");
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(!a.code().is_empty());
    let none = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = w.split('.').nth(1).unwrap();
        format!(
            "{}.{payload}.",
            b64.encode(br#"{"alg":"none","typ":"writ+jwt","kid":"issuer-1"}"#)
        )
    };
    let a = call(&g, "POST", "/v1/pay?x=1", PAY, &none, &p, "");
    assert_eq!(a.status, 401, "{}", a.body);
    let a = send(
        &g.addr,
        &format!(
            "POST /v1/pay?x=1 HTTP/1.1\r\nContent-Type: application/json\r\nAuthorization: DPoP {w}"
        ),
        PAY,
    );
    assert_eq!(
        (a.status, a.code().as_str()),
        (401, "proof_missing"),
        "{}",
        a.body
    );
    let other = proof(7, &w, "POST", "/v1/pay", "other", None);
    let a = call(&g, "POST", "/v1/pay?x=1", PAY, &w, &other, "");
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.code(), "proof_key", "{}", a.body);
    // Two proofs, an absolute request target: refused.
    let a = call(
        &g,
        "POST",
        "/v1/pay?x=1",
        PAY,
        &w,
        &p,
        &format!("\r\nDPoP: {p}"),
    );
    assert_eq!(
        (a.status, a.code().as_str()),
        (400, "duplicate_header"),
        "{}",
        a.body
    );
    let a = call(
        &g,
        "POST",
        "http://api.writ.test/v1/pay?x=1",
        PAY,
        &w,
        &p,
        "",
    );
    assert_eq!(
        (a.status, a.code().as_str()),
        (400, "request"),
        "{}",
        a.body
    );
    // A body over the bound.
    let big = vec![b'x'; 300];
    let a = call(&g, "POST", "/v1/pay?x=1", &big, &w, &p, "");
    assert_eq!(
        (a.status, a.code().as_str()),
        (413, "body_too_large"),
        "{}",
        a.body
    );
    // No trust bundle: everything refused; back in place, the writ (never spent) is forwarded.
    std::fs::rename(d.join("bundle.json"), d.join("bundle.away")).unwrap();
    let a = call(&g, "POST", "/v1/pay?x=1", PAY, &w, &p, "");
    assert_eq!((a.status, a.code().as_str()), (503, "bundle"), "{}", a.body);
    std::fs::rename(d.join("bundle.away"), d.join("bundle.json")).unwrap();
    assert_eq!(count(), 1);
    let a = call(&g, "POST", "/v1/pay?x=1", PAY, &w, &p, "");
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(count(), 2);

    // The spool: each forwarded request's decision, then its outcome (spooled in the
    // background after the answer).
    std::thread::sleep(Duration::from_millis(300));
    let s = spool(d);
    let kinds: Vec<(&str, Option<u64>)> = s
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["status"].as_u64()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("gate", None),
            ("outcome", Some(201)),
            ("gate", None),
            ("outcome", Some(201))
        ]
    );
    // The spool keeps the URL without its query, and the query's digest (queries may hold
    // secrets).
    assert_eq!(s[0]["request"]["url"], format!("{ORIGIN}/v1/pay"));
    assert!(
        s[0]["request"]["query"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
}

#[test]
fn what_is_forwarded_is_what_was_verified() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (up, seen) = upstream();
    configure(
        d,
        &up,
        "\n[[proxy.routes]]\nprefix = \"/v1/pay\"\nresource = \"api/pay\"\n\n\
         [[proxy.routes]]\nprefix = \"/v1/admin\"\nresource = \"api/admin\"\n",
    );
    let g = start(d);
    let count = || seen.lock().unwrap().len();
    // A lower-case method (another method to the upstream), URL overrides, two content types.
    let (w, p) = credentials("GET", "/v1/pay", b"", 1, None);
    let a = send(
        &g.addr,
        &format!(
            "get /v1/pay HTTP/1.1\r\nContent-Type: application/json\r\nAuthorization: DPoP {w}\r\nDPoP: {p}"
        ),
        b"",
    );
    assert_eq!(a.status, 400, "{}", a.body);
    for h in ["X-Original-URL: /v1/admin", "X-Rewrite-URL: /v1/admin"] {
        let a = call(&g, "GET", "/v1/pay", b"", &w, &p, &format!("\r\n{h}"));
        assert_eq!(
            (a.status, a.code().as_str()),
            (400, "method_override"),
            "{h}"
        );
    }
    // Paths an upstream would read as another path than the routes matched.
    for path in [
        "/v1/pay/../admin",
        "/v1/pay/./x",
        "//v1/admin",
        "/v1/%61dmin",
        "/v1/pay%2f..%2fadmin",
        "/v1/pay;x=1",
    ] {
        let (w, p) = credentials("GET", path, b"", 9, None);
        let a = call(&g, "GET", path, b"", &w, &p, "");
        assert_eq!(
            (a.status, a.code().as_str()),
            (400, "request"),
            "{path}: {}",
            a.body
        );
    }
    let a = call(
        &g,
        "GET",
        "/v1/pay",
        b"",
        &w,
        &p,
        "\r\nContent-Type: text/plain",
    );
    assert_eq!(
        (a.status, a.code().as_str()),
        (400, "duplicate_header"),
        "{}",
        a.body
    );
    assert_eq!(count(), 0);
    // Forwarded: the gateway's credentials replace the client's Authorization, and what a
    // client says about forwarding never passes.
    let a = call(
        &g,
        "GET",
        "/v1/pay",
        b"",
        &w,
        &p,
        "\r\nX-Forwarded-Host: admin.internal\r\nForwarded: for=1.2.3.4\r\nWrit-Subject: spiffe://writ.test/runtime/admin",
    );
    assert_eq!(a.status, 201, "{}", a.body);
    {
        let r = &seen.lock().unwrap()[0];
        assert_eq!(r.headers["authorization"], "Bearer upstream-token");
        assert_eq!(r.headers["writ-subject"], "spiffe://writ.test/runtime/a");
        assert!(
            !r.headers.contains_key("x-forwarded-host"),
            "{:?}",
            r.headers
        );
        assert!(!r.headers.contains_key("forwarded"), "{:?}", r.headers);
    }
    // The writ's resource is api/pay: a request under /v1/admin, even with its digest, is
    // refused; a path no route covers too.
    let (w, p) = credentials("GET", "/v1/admin/users", b"", 2, None);
    let a = call(&g, "GET", "/v1/admin/users", b"", &w, &p, "");
    assert_eq!(
        (a.status, a.code().as_str()),
        (401, "resource"),
        "{}",
        a.body
    );
    let (w, p) = credentials("GET", "/v1/other", b"", 3, None);
    let a = call(&g, "GET", "/v1/other", b"", &w, &p, "");
    assert_eq!(
        (a.status, a.code().as_str()),
        (401, "resource"),
        "{}",
        a.body
    );
    // A writ for a command (action exec) carries no HTTP request.
    let t = now();
    let url = format!("{ORIGIN}/v1/pay");
    let req = digest(&Request::Http {
        method: "GET",
        url: &url,
        content_type: "application/json",
        body: b"",
    })
    .unwrap();
    let holder = key(9);
    let w = common::writ(t, 4, &jwk(&holder).thumbprint(), &req);
    let p = proof(9, &w, "GET", "/v1/pay", "exec-action", None);
    let a = call(&g, "GET", "/v1/pay", b"", &w, &p, "");
    assert_eq!((a.status, a.code().as_str()), (401, "action"), "{}", a.body);
    assert_eq!(count(), 1);
}

#[test]
fn a_gateway_that_requires_inclusion_refuses_a_writ_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (up, seen) = upstream();
    configure(d, &up, "");
    let conf = std::fs::read_to_string(d.join("gate.toml"))
        .unwrap()
        .replace("\n[proxy]", "require_inclusion = true\n\n[proxy]");
    std::fs::write(d.join("gate.toml"), conf).unwrap();
    let g = start(d);
    let (w, p) = credentials("POST", "/v1/pay", PAY, 1, None);
    let a = call(&g, "POST", "/v1/pay", PAY, &w, &p, "");
    assert_eq!(
        (a.status, a.code().as_str()),
        (401, "inclusion_missing"),
        "{}",
        a.body
    );
    let a = call(&g, "POST", "/v1/pay", PAY, &w, &p, "\r\nWrit-Inclusion: !!");
    assert_eq!(a.code(), "inclusion", "{}", a.body);
    assert_eq!(seen.lock().unwrap().len(), 0);
}

#[test]
fn with_dpop_nonces_a_proof_without_the_gateway_nonce_gets_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (up, seen) = upstream();
    configure(d, &up, "dpop_nonce = true\n");
    let g = start(d);
    let (w, p) = credentials("POST", "/v1/pay", PAY, 1, None);
    let a = call(&g, "POST", "/v1/pay", PAY, &w, &p, "");
    assert_eq!(
        (a.status, a.code().as_str()),
        (401, "use_dpop_nonce"),
        "{}",
        a.body
    );
    assert!(a.headers["www-authenticate"].contains("use_dpop_nonce"));
    let nonce = a.headers["dpop-nonce"].clone();
    assert_eq!(seen.lock().unwrap().len(), 0);
    // A wrong nonce is refused the same way.
    let (w2, p2) = credentials("POST", "/v1/pay", PAY, 1, Some("not-the-nonce"));
    let a = call(&g, "POST", "/v1/pay", PAY, &w2, &p2, "");
    assert_eq!(a.code(), "use_dpop_nonce", "{}", a.body);
    // With the gateway's nonce, the same writ (never spent) goes through.
    let p3 = proof(9, &w, "POST", "/v1/pay", "with-nonce", Some(&nonce));
    let a = call(&g, "POST", "/v1/pay", PAY, &w, &p3, "");
    assert_eq!(a.status, 201, "{}", a.body);
    assert!(a.headers.contains_key("dpop-nonce"));
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn two_proxies_racing_on_one_writ_forward_it_once_and_slow_clients_starve_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (up, seen) = upstream();
    configure(d, &up, "");
    let (g1, g2) = (start(d), start(d));
    // A client that sends half its headers and stalls holds a connection, not the proxy.
    let mut stalled = TcpStream::connect(&g1.addr).unwrap();
    stalled
        .write_all(b"POST /v1/pay HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let (w, p) = credentials("POST", "/v1/pay", PAY, 1, None);
    let answers: Vec<u16> = std::thread::scope(|s| {
        let a = s.spawn(|| call(&g1, "POST", "/v1/pay", PAY, &w, &p, "").status);
        let b = s.spawn(|| call(&g2, "POST", "/v1/pay", PAY, &w, &p, "").status);
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    let mut sorted = answers.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [201, 401], "{answers:?}");
    assert_eq!(seen.lock().unwrap().len(), 1);
    drop(stalled);
}

#[test]
fn credentials_others_can_read_stop_the_proxy_and_metrics_count_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (up, _seen) = upstream();
    configure(d, &up, "metrics_listen = \"127.0.0.1:0\"\n");
    std::fs::set_permissions(
        d.join("upstream.creds"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = proxy_output(d);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("credentials"), "{err}");
    assert!(!err.contains("secret-upstream-key"), "{err}");
    std::fs::set_permissions(
        d.join("upstream.creds"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let g = start(d);
    let m = g.metrics.clone().unwrap();
    let get = |path: &str| {
        let mut s = TcpStream::connect(&m).unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(get("/livez").starts_with("HTTP/1.1 200"));
    assert!(get("/readyz").starts_with("HTTP/1.1 200"));
    let (w, p) = credentials("POST", "/v1/pay", PAY, 1, None);
    assert_eq!(call(&g, "POST", "/v1/pay", PAY, &w, &p, "").status, 201);
    assert_eq!(call(&g, "POST", "/v1/pay", PAY, &w, &p, "").status, 401);
    let metrics = get("/metrics");
    assert!(
        metrics.contains("writ_gate_requests_total{decision=\"allow\",code=\"\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("writ_gate_requests_total{decision=\"deny\",code=\"replayed\"} 1"),
        "{metrics}"
    );
    // Without a usable trust bundle the proxy is not ready.
    std::fs::remove_file(d.join("bundle.json")).unwrap();
    assert!(get("/readyz").starts_with("HTTP/1.1 503"));
}

#[test]
fn a_stale_or_rolled_back_bundle_refuses_everything() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (up, seen) = upstream();
    configure(d, &up, "");
    let g = start(d);
    let mut b = bundle(now());
    b["spiffe_sequence"] = serde_json::json!(5);
    std::fs::write(d.join("bundle.json"), b.to_string()).unwrap();
    let (w, p) = credentials("POST", "/v1/pay", PAY, 1, None);
    // A lower sequence than one this host saw: refused.
    let mut low = b.clone();
    low["spiffe_sequence"] = serde_json::json!(4);
    let (w0, p0) = credentials("POST", "/v1/pay", PAY, 2, None);
    assert_eq!(call(&g, "POST", "/v1/pay", PAY, &w0, &p0, "").status, 201);
    std::fs::write(d.join("bundle.json"), low.to_string()).unwrap();
    let a = call(&g, "POST", "/v1/pay", PAY, &w, &p, "");
    assert_eq!(
        (a.status, a.code().as_str()),
        (503, "bundle_rollback"),
        "{}",
        a.body
    );
    // Expired: refused.
    let mut old = b.clone();
    old["writ"]["issued_at"] = serde_json::json!(now() - 7200);
    old["writ"]["expires_at"] = serde_json::json!(now() - 3600);
    std::fs::write(d.join("bundle.json"), old.to_string()).unwrap();
    let a = call(&g, "POST", "/v1/pay", PAY, &w, &p, "");
    assert_eq!(
        (a.status, a.code().as_str()),
        (503, "bundle_stale"),
        "{}",
        a.body
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    // Back to the current bundle: the unspent writ goes through.
    std::fs::write(d.join("bundle.json"), b.to_string()).unwrap();
    assert_eq!(call(&g, "POST", "/v1/pay", PAY, &w, &p, "").status, 201);
}

#[test]
fn a_proxy_whose_store_cannot_be_opened_does_not_start() {
    // (A store failing under a running proxy refuses its batch: gateway/tests/replay.rs,
    // a_failed_write_aborts_the_batch_and_records_nothing_of_it.)
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (up, _seen) = upstream();
    configure(d, &up, "");
    std::fs::write(d.join("not-a-folder"), b"").unwrap();
    let conf = std::fs::read_to_string(d.join("gate.toml"))
        .unwrap()
        .replace(
            &format!("{}/replay.db", d.display()),
            &format!("{}/not-a-folder/replay.db", d.display()),
        );
    std::fs::write(d.join("gate.toml"), conf).unwrap();
    let out = proxy_output(d);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "it listened: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
