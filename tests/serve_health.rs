//! `writ serve`'s own health: /openapi.json matches the real routes, /metrics counts requests
//! and decisions by code, /readyz names the dependency that fails, and a custody device that
//! disappears (the checkpoint key in a swtpm behind a proxy that goes down) fails closed (503)
//! and recovers without a restart when it comes back.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Served, agent};
use serde_json::{Value, json};
use writ_testkit::{Fault, FaultProxy, SoftHsm, Swtpm};

fn serve(key: &str, hsm: Option<&SoftHsm>, dir: &std::path::Path, extra: &[&str]) -> Served {
    let mut cmd = common::writ(hsm);
    cmd.args([
        "serve",
        "--store",
        &format!("sqlite:{}", dir.join("writ.db").display()),
        "--checkpoint-key",
        key,
        "--origin",
        "writ.test/log",
        "--listen",
        "127.0.0.1:0",
        "--trust-domain",
        "writ.test",
    ]);
    cmd.args(extra);
    common::serve(cmd)
}

/// (status, content type, body)
fn call(method: &str, url: &str, body: Option<&str>) -> (u16, String, String) {
    let mut resp = match method {
        "GET" => agent().get(url).call().unwrap(),
        _ => agent()
            .post(url)
            .header("Content-Type", "application/json")
            .send(body.unwrap_or("{}").as_bytes())
            .unwrap(),
    };
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (
        resp.status().as_u16(),
        ct,
        resp.body_mut().read_to_string().unwrap_or_default(),
    )
}

fn softhsm_key(hsm: &SoftHsm) -> String {
    common::softhsm_key(hsm, "checkpoint", "checkpoint")
}

#[test]
fn openapi_matches_the_routes_and_metrics_count_requests_and_decisions() {
    let hsm = SoftHsm::new();
    let dir = tempfile::tempdir().unwrap();
    let s = serve(&softhsm_key(&hsm), Some(&hsm), dir.path(), &[]);

    // The served document is the committed one, and it documents exactly the routes.
    let (st, _, doc) = call("GET", &format!("{}/openapi.json", s.url), None);
    assert_eq!(st, 200);
    assert_eq!(doc, writ::http::OPENAPI);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(|m| (m.to_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let routes: BTreeSet<(String, String)> = writ::http::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, routes);
    // Each route is served: never the router's own 404 (empty, no problem+json) or a 405.
    for (method, path) in &routes {
        let concrete = path
            .replace("{name}", "nobody")
            .replace("{index}", "0")
            .replace("{jti}", "AAAAAAAAAAAAAAAAAAAAAA")
            .replace("{path}", "0/x");
        let (st, ct, _) = call(method, &format!("{}{concrete}", s.url), None);
        assert_ne!(st, 405, "{method} {path}");
        assert!(
            st != 404 || ct.starts_with("application/problem+json"),
            "{method} {path}: the router does not know it"
        );
    }
    // An unknown route is the router's 404, so the check above can tell.
    let (st, ct, _) = call("GET", &format!("{}/v1/nothing", s.url), None);
    assert_eq!(st, 404);
    assert!(!ct.starts_with("application/problem+json"));

    // /livez, /readyz.
    assert_eq!(call("GET", &format!("{}/livez", s.url), None).0, 200);
    let (st, _, body) = call("GET", &format!("{}/readyz", s.url), None);
    assert_eq!(st, 200, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["ready"], true);
    for dep in ["custody", "store", "log", "clock"] {
        assert_eq!(r["checks"][dep], "ok", "{dep}");
    }

    // Metrics: an unidentified refusal counted by code; the exposition parses line by line.
    let (st, _, _) = call(
        "POST",
        &format!("{}/v1/enroll", s.url),
        Some(
            &json!({"ek_certificate": "AA==", "ak_public": "AA==", "join_token": "nope"})
                .to_string(),
        ),
    );
    assert_eq!(st, 401);
    let (st, ct, text) = call("GET", &format!("{}/metrics", s.url), None);
    assert_eq!(st, 200);
    assert!(ct.starts_with("text/plain"));
    assert!(
        text.contains(
            "writ_requests_total{route=\"/v1/enroll\",status=\"401\",code=\"enrollment_unauthorized\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("writ_request_seconds_count{route=\"/v1/enroll\"}"));
    assert!(text.contains("writ_log_size "));
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, v) = line.rsplit_once(' ').unwrap();
        v.parse::<f64>()
            .unwrap_or_else(|_| panic!("not a sample: {line}"));
    }
    // No identifier ever becomes a label: the revoke of "nobody" is under its template.
    assert!(!text.contains("nobody"), "{text}");
    assert!(text.contains("route=\"/v1/admin/runtimes/{name}/revoke\""));
}

#[test]
fn a_custody_device_that_disappears_fails_closed_and_recovers_without_a_restart() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    // The checkpoint key lives in the swtpm; the appliance reaches it through a proxy.
    let direct = tpm.key_uri(0x8100_0111);
    let out = common::writ(None)
        .args([
            "keys",
            "generate",
            "--key",
            &direct,
            "--purpose",
            "checkpoint",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let proxy = FaultProxy::start(
        &tpm,
        Fault {
            command_code: 0,
            rc: 0,
            count: 0,
        },
    );
    let via_proxy = direct.replace(&tpm.tcti(), &proxy.tcti());
    let token_file = dir.path().join("admin.token");
    writ_testkit::write_secret(&token_file, "admin-token-0123456789");
    let s = serve(
        &via_proxy,
        None,
        dir.path(),
        &[
            "--checkpoint-interval-ms",
            "200",
            "--max-checkpoint-age",
            "2",
            "--admin-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    let ready = || {
        let (st, _, body) = call("GET", &format!("{}/readyz", s.url), None);
        (st, serde_json::from_str::<Value>(&body).unwrap())
    };
    assert_eq!(ready().0, 200, "{}", ready().1);

    proxy.set_down(true);
    proxy.cut_connections();
    // Readiness reports the checkpointer's last signature (nothing is signed for the asking):
    // within a few intervals it names custody.
    let deadline = Instant::now() + Duration::from_secs(5);
    let r = loop {
        let (st, r) = ready();
        if st == 503 && r["checks"]["custody"] != "ok" {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "still ready with the device gone: {r}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(r["checks"]["store"], "ok", "{r}");
    // Once no checkpoint could be signed for longer than the bound, decisions are refused with
    // a 503 that names the dependency, before anything is looked at.
    std::thread::sleep(Duration::from_millis(2600));
    let (_, r) = ready();
    assert_eq!(r["checks"]["log"], "checkpoint_stale", "{r}");
    let issue = || {
        let mut resp = agent()
            .post(format!("{}/v1/admin/join-tokens", s.url))
            .header("Authorization", "Bearer admin-token-0123456789")
            .header("Content-Type", "application/json")
            .send(br#"{"name":"x"}"#.as_slice())
            .unwrap();
        let st = resp.status().as_u16();
        let body: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        (st, body)
    };
    let (st, body) = issue();
    assert_eq!(
        (st, body["code"].as_str()),
        (503, Some("checkpoint_stale")),
        "{body}"
    );
    let (_, _, metrics) = call("GET", &format!("{}/metrics", s.url), None);
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("writ_checkpoint_signing_failures_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(failures >= 1.0, "{metrics}");

    // The device comes back: ready again, without a restart.
    proxy.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (st, r) = ready();
        if st == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not ready again: {r}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (st, body) = issue();
    assert_eq!(st, 200, "{body}");
    // That decision (and the refused one before it) are counted by kind, decision and code.
    let (_, _, metrics) = call("GET", &format!("{}/metrics", s.url), None);
    assert!(
        metrics.contains("writ_decisions_total{kind=\"admin\",decision=\"allow\",code=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("writ_dependency_errors_total{dependency=\"log\",code=\"checkpoint_stale\"}"),
        "{metrics}"
    );
}

#[test]
fn unidentified_refusals_are_counted_and_limited_per_address() {
    let hsm = SoftHsm::new();
    let dir = tempfile::tempdir().unwrap();
    let s = serve(
        &softhsm_key(&hsm),
        Some(&hsm),
        dir.path(),
        &["--unidentified-per-minute", "5"],
    );
    let bad =
        json!({"ek_certificate": "AA==", "ak_public": "AA==", "join_token": "nope"}).to_string();
    for _ in 0..5 {
        let (st, _, _) = call("POST", &format!("{}/v1/enroll", s.url), Some(&bad));
        assert_eq!(st, 401);
    }
    // The sixth, and the other /v1 routes from this address, wait out the minute; the log's
    // read routes stay open (auditors may share an address with a misbehaving client).
    let (st, _, body) = call("POST", &format!("{}/v1/enroll", s.url), Some(&bad));
    assert_eq!(st, 429, "{body}");
    assert!(body.contains("rate_limited"), "{body}");
    // X-Forwarded-For from a client that is not a trusted proxy changes nothing.
    let (st, _) = call_from(&s.url, "203.0.113.9", &bad);
    assert_eq!(st, 429);
    let (st, _, _) = call(
        "POST",
        &format!("{}/v1/enroll/activate", s.url),
        Some(r#"{"enrollment":"x","secret":"AA=="}"#),
    );
    assert_eq!(st, 429);
    let (st, _, _) = call("GET", &format!("{}/v1/log/checkpoint", s.url), None);
    assert_eq!(st, 200);
    // Health and metrics are not limited; the refusals are counted there.
    assert_eq!(call("GET", &format!("{}/livez", s.url), None).0, 200);
    let (_, _, text) = call("GET", &format!("{}/metrics", s.url), None);
    assert!(
        text.contains("writ_requests_total{route=\"/v1/enroll\",status=\"401\",code=\"enrollment_unauthorized\"} 5"),
        "{text}"
    );
    assert!(text.contains("code=\"rate_limited\""), "{text}");
}

/// `POST /v1/enroll` with `body` and `X-Forwarded-For: xff`: (status, body).
fn call_from(url: &str, xff: &str, body: &str) -> (u16, String) {
    let mut resp = agent()
        .post(format!("{url}/v1/enroll"))
        .header("Content-Type", "application/json")
        .header("X-Forwarded-For", xff)
        .send(body.as_bytes())
        .unwrap();
    (
        resp.status().as_u16(),
        resp.body_mut().read_to_string().unwrap_or_default(),
    )
}

#[test]
fn behind_a_trusted_proxy_each_client_address_has_its_own_budget() {
    let hsm = SoftHsm::new();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = common::writ(Some(&hsm));
    cmd.env("WRIT_HTTP_TRUSTED_PROXIES", "127.0.0.1").args([
        "serve",
        "--store",
        &format!("sqlite:{}", dir.path().join("writ.db").display()),
        "--checkpoint-key",
        &softhsm_key(&hsm),
        "--listen",
        "127.0.0.1:0",
        "--trust-domain",
        "writ.test",
        "--unidentified-per-minute",
        "3",
    ]);
    let s = common::serve(cmd);
    let bad =
        json!({"ek_certificate": "AA==", "ak_public": "AA==", "join_token": "nope"}).to_string();
    for _ in 0..3 {
        assert_eq!(call_from(&s.url, "203.0.113.7", &bad).0, 401);
    }
    assert_eq!(call_from(&s.url, "203.0.113.7", &bad).0, 429);
    // Another client behind the same proxy has its own budget.
    assert_eq!(call_from(&s.url, "203.0.113.8", &bad).0, 401);
    // The entry the proxy appended (the last) counts; what the client put before it does not.
    assert_eq!(call_from(&s.url, "198.51.100.1, 203.0.113.7", &bad).0, 429);
    assert_eq!(call_from(&s.url, "203.0.113.7, 198.51.100.1", &bad).0, 401);
}
