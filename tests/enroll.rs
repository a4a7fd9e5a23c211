//! Enrollment end to end: a running `writ serve` (checkpoint key in SoftHSM2, SQLite store), a
//! swtpm runtime, `writ admin` and `writ agent enroll`; and each refusal checked in the answer
//! and in the decision log. Requests with crafted fields are made with the same TPM calls the
//! agent makes (writ-hsm's attester).
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::stack::{Engine, Stack, TD, get, raw_post};
use serde_json::{Value, json};
use writ_hsm::tpm::attester::{Attester, EkKind, KeyBlob};
use writ_testkit::Swtpm;

/// The runtime's side, by hand: EK certificate and public area, an AK.
struct Runtime {
    tpm: Attester,
    ek_cert: Vec<u8>,
    ek_public: Vec<u8>,
    ak: KeyBlob,
}

impl Runtime {
    fn new(tpm: &Swtpm) -> Runtime {
        let a = Attester::open(Some(&tpm.tcti())).unwrap();
        let ek_cert = a
            .ek_certificates()
            .unwrap()
            .into_iter()
            .find(|c| c.kind == EkKind::Rsa2048)
            .unwrap()
            .der;
        let ek_public = a.ek_public().unwrap();
        let ak = a.create_ak().unwrap();
        Runtime {
            tpm: a,
            ek_cert,
            ek_public,
            ak,
        }
    }

    fn start_body(&self, token: Option<&Path>) -> Value {
        let mut b = json!({
            "ek_certificate": STANDARD.encode(&self.ek_cert),
            "ek_public": STANDARD.encode(&self.ek_public),
            "ak_public": STANDARD.encode(&self.ak.public),
        });
        if let Some(t) = token {
            b["join_token"] = json!(std::fs::read_to_string(t).unwrap());
        }
        b
    }

    fn activate(&self, challenge: &Value) -> Vec<u8> {
        let f = |k: &str| STANDARD.decode(challenge[k].as_str().unwrap()).unwrap();
        self.tpm
            .activate_credential(&self.ak, &f("id_object"), &f("encrypted_secret"))
            .unwrap()
            .to_vec()
    }
}

fn answer(challenge: &Value, secret: &[u8]) -> Value {
    json!({"enrollment": challenge["enrollment"], "secret": STANDARD.encode(secret)})
}

#[test]
fn a_swtpm_runtime_enrolls_with_writ_agent_and_the_log_holds_each_step() {
    let s = Stack::new();
    let token = s.join_token("build-1", "600");
    let state = s.dir.path().join("agent");
    let out = s.writ(&[
        "agent",
        "enroll",
        "--server",
        &s.url(),
        "--join-token",
        token.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--tcti",
        &s.tpm.tcti(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(id["spiffe_id"], format!("spiffe://{TD}/runtime/build-1"));
    // The log: the admin's token issuance, the challenge, the enrollment, all allowed.
    let recs = s.records();
    let kinds: Vec<String> = recs
        .iter()
        .map(|r| {
            serde_json::to_value(r.kind)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["admin", "enroll", "enroll"]);
    assert!(recs.iter().all(|r| r.reasons.is_empty()));
    assert_eq!(recs[2].subject, format!("spiffe://{TD}/runtime/build-1"));
    assert!(recs[1].digests.contains_key("ek_certificate"));
    assert!(recs[2].digests.contains_key("ek_key"));
    // The admin sees it.
    let out = s.admin(&["runtimes"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], "build-1");
    assert_eq!(list[0]["state"], "enrolled");
    // Enrolling again from the same state (same EK, same AK) with a fresh token is accepted.
    let token = s.join_token("build-1", "600");
    let out = s.writ(&[
        "agent",
        "enroll",
        "--server",
        &s.url(),
        "--join-token",
        token.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--tcti",
        &s.tpm.tcti(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A registered EK enrolls without a token.
    let rt = Runtime::new(&s.tpm);
    let pem = s.dir.path().join("ek.der");
    std::fs::write(&pem, &rt.ek_cert).unwrap();
    // This EK is enrolled as build-1 already: registering it under another name works, but
    // enrolling it under that name is refused (one EK, one name).
    let out = s.admin(&[
        "register-ek",
        "--ek-cert",
        pem.to_str().unwrap(),
        "--name",
        "other",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (st, p) = s.post("/v1/enroll", &rt.start_body(None), None);
    assert_eq!((st, p["code"].as_str()), (409, Some("reenrollment")), "{p}");
    assert_eq!(
        s.last(),
        (
            format!("spiffe://{TD}/runtime/other"),
            "deny".into(),
            vec!["reenrollment".into()]
        )
    );
}

#[test]
fn each_enrollment_refusal_is_answered_and_logged_on_sqlite() {
    refusals(Engine::Sqlite);
}

#[test]
fn each_enrollment_refusal_is_answered_and_logged_on_postgres() {
    refusals(Engine::Postgres);
}

fn refusals(engine: Engine) {
    let mut s = Stack::on(engine, &[]);
    let rt = Runtime::new(&s.tpm);
    let subject = format!("spiffe://{TD}/runtime/rt");
    let deny = |s: &Stack, code: &str| {
        assert_eq!(
            s.last(),
            (subject.clone(), "deny".to_string(), vec![code.to_string()]),
            "{code}"
        );
    };

    // Unidentified: no token, unknown token: answered, not logged.
    let before = s.records().len();
    let (st, p) = s.post("/v1/enroll", &rt.start_body(None), None);
    assert_eq!(
        (st, p["code"].as_str()),
        (401, Some("enrollment_unauthorized"))
    );
    let mut b = rt.start_body(None);
    b["join_token"] = json!("not-a-token");
    let (st, _) = s.post("/v1/enroll", &b, None);
    assert_eq!(st, 401);
    assert_eq!(s.records().len(), before);

    // The EK public area differing from the certificate.
    let token = s.join_token("rt", "600");
    let mut b = rt.start_body(Some(&token));
    let mut ek_public = rt.ek_public.clone();
    let n = ek_public.len();
    ek_public[n - 1] ^= 1;
    b["ek_public"] = json!(STANDARD.encode(&ek_public));
    let (st, p) = s.post("/v1/enroll", &b, None);
    assert_eq!((st, p["code"].as_str()), (403, Some("ek_mismatch")), "{p}");
    deny(&s, "ek_mismatch");

    // Each AK attribute that matters (objectAttributes, bytes 4..8 of TPMT_PUBLIC after type
    // and nameAlg): fixedTPM, fixedParent, sensitiveDataOrigin, restricted, sign cleared, or
    // decrypt set.
    let mut b = rt.start_body(Some(&token));
    for (mask, set) in [
        (0x0000_0002u32, false),
        (0x0000_0010, false),
        (0x0000_0020, false),
        (0x0001_0000, false),
        (0x0004_0000, false),
        (0x0002_0000, true),
    ] {
        let mut ak = rt.ak.public.clone();
        let mut attrs = u32::from_be_bytes(ak[4..8].try_into().unwrap());
        attrs = if set { attrs | mask } else { attrs & !mask };
        ak[4..8].copy_from_slice(&attrs.to_be_bytes());
        b["ak_public"] = json!(STANDARD.encode(&ak));
        let (st, p) = s.post("/v1/enroll", &b, None);
        assert_eq!(
            (st, p["code"].as_str()),
            (403, Some("ak_attributes")),
            "{mask:#x}: {p}"
        );
        deny(&s, "ak_attributes");
    }
    // A weak AK name algorithm (SHA-1).
    let mut ak = rt.ak.public.clone();
    ak[2..4].copy_from_slice(&[0x00, 0x04]);
    b["ak_public"] = json!(STANDARD.encode(&ak));
    let (st, p) = s.post("/v1/enroll", &b, None);
    assert_eq!(st, 403, "{p}");
    let code = p["code"].as_str().unwrap().to_string();
    assert!(
        ["hash_too_weak", "ak_algorithm"].contains(&code.as_str()),
        "{p}"
    );
    deny(&s, &code);

    // A wrong activation answer spends the challenge: the right one afterwards is refused.
    let (st, challenge) = s.post("/v1/enroll", &rt.start_body(Some(&token)), None);
    assert_eq!(st, 200, "{challenge}");
    let secret = rt.activate(&challenge);
    let mut wrong = secret.clone();
    wrong[0] ^= 1;
    let (st, p) = s.post("/v1/enroll/activate", &answer(&challenge, &wrong), None);
    assert_eq!((st, p["code"].as_str()), (403, Some("activation")), "{p}");
    assert!(!p.to_string().contains(&STANDARD.encode(&secret)));
    deny(&s, "activation");
    let (st, p) = s.post("/v1/enroll/activate", &answer(&challenge, &secret), None);
    assert_eq!(
        (st, p["code"].as_str()),
        (403, Some("challenge_used")),
        "{p}"
    );
    deny(&s, "challenge_used");

    // The join token was spent by that start: reusing it is refused and logged.
    let (st, p) = s.post("/v1/enroll", &rt.start_body(Some(&token)), None);
    assert_eq!(
        (st, p["code"].as_str()),
        (403, Some("join_token_used")),
        "{p}"
    );
    deny(&s, "join_token_used");
    // An expired token.
    let short = s.join_token("rt", "1");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (st, p) = s.post("/v1/enroll", &rt.start_body(Some(&short)), None);
    assert_eq!(
        (st, p["code"].as_str()),
        (403, Some("join_token_expired")),
        "{p}"
    );
    deny(&s, "join_token_expired");

    // kill -9 between challenge and answer: after the restart the answer works once.
    let token = s.join_token("rt", "600");
    let (st, challenge) = s.post("/v1/enroll", &rt.start_body(Some(&token)), None);
    assert_eq!(st, 200);
    let secret = rt.activate(&challenge);
    s.kill_and_restart();
    let (st, p) = s.post("/v1/enroll/activate", &answer(&challenge, &secret), None);
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["spiffe_id"], subject);
    // The activation secret replayed.
    let (st, p) = s.post("/v1/enroll/activate", &answer(&challenge, &secret), None);
    assert_eq!(
        (st, p["code"].as_str()),
        (403, Some("challenge_used")),
        "{p}"
    );
    deny(&s, "challenge_used");

    // Re-enrollment of the name with other keys (a new AK in the same TPM).
    let other = Runtime::new(&s.tpm);
    let token = s.join_token("rt", "600");
    let (st, p) = s.post("/v1/enroll", &other.start_body(Some(&token)), None);
    assert_eq!((st, p["code"].as_str()), (409, Some("reenrollment")), "{p}");
    deny(&s, "reenrollment");

    // Admin calls without, or with a wrong, credential: refused, not logged (unidentified).
    let before = s.records().len();
    let (st, p) = s.post("/v1/admin/join-tokens", &json!({"name": "x"}), None);
    assert_eq!((st, p["code"].as_str()), (401, Some("admin_unauthorized")));
    let (st, _) = s.post(
        "/v1/admin/join-tokens",
        &json!({"name": "x"}),
        Some("admin-token-0123456788"),
    );
    assert_eq!(st, 401);
    assert_eq!(s.records().len(), before);

    // Revocation is an admin decision in the log; a revoked runtime cannot re-enroll.
    let out = s.admin(&["revoke", "rt"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = s.records().pop().unwrap();
    assert_eq!(r.subject, format!("spiffe://{TD}/admin/token"));
    assert!(r.digests.contains_key("revoked"));
    let token = s.join_token("rt", "600");
    let (st, p) = s.post("/v1/enroll", &rt.start_body(Some(&token)), None);
    assert_eq!((st, p["code"].as_str()), (409, Some("reenrollment")), "{p}");
    let out = s.admin(&["revoke", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn an_untrusted_ek_root_is_refused_and_logged() {
    // The appliance trusts the shared manufacturer roots, not this swtpm's local CA.
    let tpm = Swtpm::start();
    let manufacturer = writ_testkit::repo_root().join("../shared/vectors/tpm-manufacturer-roots");
    let s = Stack::with_roots(tpm, vec![manufacturer]);
    let rt = Runtime::new(&s.tpm);
    let token = s.join_token("rt", "600");
    let (st, p) = s.post("/v1/enroll", &rt.start_body(Some(&token)), None);
    assert_eq!((st, p["code"].as_str()), (403, Some("ek_untrusted")), "{p}");
    assert_eq!(
        s.last(),
        (
            format!("spiffe://{TD}/runtime/rt"),
            "deny".into(),
            vec!["ek_untrusted".into()]
        )
    );
}

#[test]
fn oversize_and_deeply_nested_bodies_are_refused() {
    let s = Stack::new();
    let big = vec![b' '; 70 * 1024];
    let (st, _) = raw_post(&s.url(), "/v1/enroll", &big, None);
    assert_eq!(st, 413);
    let nested = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let (st, p) = raw_post(&s.url(), "/v1/enroll", nested.as_bytes(), None);
    assert_eq!((st, p["code"].as_str()), (400, Some("malformed")), "{p}");
    let dup = br#"{"ek_certificate":"AA==","ek_certificate":"AA==","ak_public":"AA=="}"#;
    let (st, _) = raw_post(&s.url(), "/v1/enroll", dup, None);
    assert_eq!(st, 400);
    // The server is still fine.
    let (st, _) = get(&s.url(), "/v1/log/checkpoint");
    assert_eq!(st, 200);
}

#[test]
fn a_registered_ek_enrolls_and_concurrent_uses_of_one_authorization_succeed_once() {
    let s = Stack::new();
    let rt = Runtime::new(&s.tpm);
    let cert = s.dir.path().join("ek.der");
    std::fs::write(&cert, &rt.ek_cert).unwrap();
    let out = s.admin(&[
        "register-ek",
        "--ek-cert",
        cert.to_str().unwrap(),
        "--name",
        "reg",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Registering it twice is refused, and logged as the admin's refusal.
    let out = s.admin(&[
        "register-ek",
        "--ek-cert",
        cert.to_str().unwrap(),
        "--name",
        "reg",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(s.last().2, vec!["ek_registered".to_string()]);

    // One join token, eight concurrent starts: exactly one challenge (before this TPM's EK is
    // enrolled under any name).
    let token = s.join_token("racer", "600");
    let body = Runtime::new(&s.tpm).start_body(Some(&token));
    let url = s.url();
    let codes: Vec<u16> = (0..8)
        .map(|_| {
            let (url, body) = (url.clone(), body.to_string());
            std::thread::spawn(move || raw_post(&url, "/v1/enroll", body.as_bytes(), None).0)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "{codes:?}");
    assert!(codes.iter().all(|c| *c == 200 || *c == 403), "{codes:?}");

    // Two challenges for one new name with two AKs (same TPM): the first answer enrolls, the
    // second is re-enrollment with other keys, refused at activation and its challenge spent.
    let other = Runtime::new(&s.tpm);
    let (st, c1) = s.post("/v1/enroll", &rt.start_body(None), None);
    assert_eq!(st, 200, "{c1}");
    let (st, c2) = s.post("/v1/enroll", &other.start_body(None), None);
    assert_eq!(st, 200, "{c2}");
    let s1 = rt.activate(&c1);
    let s2 = other.activate(&c2);
    let (st, p) = s.post("/v1/enroll/activate", &answer(&c1, &s1), None);
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["spiffe_id"], format!("spiffe://{TD}/runtime/reg"));
    let (st, p) = s.post("/v1/enroll/activate", &answer(&c2, &s2), None);
    assert_eq!((st, p["code"].as_str()), (409, Some("reenrollment")), "{p}");
    assert_eq!(s.last().2, vec!["reenrollment".to_string()]);
    let (st, p) = s.post("/v1/enroll/activate", &answer(&c2, &s2), None);
    assert_eq!(
        (st, p["code"].as_str()),
        (403, Some("challenge_used")),
        "{p}"
    );
}

#[test]
fn an_ek_certificate_re_encoded_outside_its_signature_is_refused() {
    let s = Stack::new();
    let rt = Runtime::new(&s.tpm);
    // The outer signatureAlgorithm (sha256WithRSAEncryption, NULL parameters) follows the
    // signed part; give it other parameters of the same length: the signature still verifies
    // over the unchanged TBS, the certificate's bytes (and hash) differ.
    let alg = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00,
    ];
    let mut der = rt.ek_cert.clone();
    let at = der
        .windows(alg.len())
        .rposition(|w| w == alg)
        .expect("an RSA-SHA256 signed EK certificate");
    der[at + alg.len() - 2] = 0x04;
    let token = s.join_token("rt", "600");
    let mut b = rt.start_body(Some(&token));
    b["ek_certificate"] = json!(STANDARD.encode(&der));
    let (st, p) = s.post("/v1/enroll", &b, None);
    assert_eq!((st, p["code"].as_str()), (403, Some("malformed")), "{p}");
    assert_eq!(s.last().2, vec!["malformed".to_string()]);
}

#[test]
fn idle_and_slow_connections_do_not_starve_a_real_client() {
    use std::io::Write;
    let s = Stack::on(Engine::Sqlite, &["--header-read-timeout", "5"]);
    let addr: std::net::SocketAddr = s.url().trim_start_matches("http://").parse().unwrap();
    // From another host (another loopback address): 500 sockets that say nothing, and 50 that
    // send half a request line and stop.
    let from_other_host = || {
        let c = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        c.bind(
            &"127.0.0.2:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        c.connect(&addr.into()).unwrap();
        std::net::TcpStream::from(c)
    };
    let mut idle: Vec<std::net::TcpStream> = (0..500).map(|_| from_other_host()).collect();
    for _ in 0..50 {
        let mut c = from_other_host();
        c.write_all(b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        idle.push(c);
    }
    // That host holds at most 256 connections (http.max_connections_per_address): the others
    // were closed at accept, long before the header-read bound.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let closed_at_accept = idle
        .iter()
        .filter(|c| {
            use std::io::Read;
            let mut c: &std::net::TcpStream = c;
            c.set_nonblocking(true).unwrap();
            let mut b = [0u8; 16];
            let closed = match c.read(&mut b) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            c.set_nonblocking(false).unwrap();
            closed
        })
        .count();
    assert_eq!(closed_at_accept, idle.len() - 256);
    let token = s.join_token("busy", "600");
    let started = std::time::Instant::now();
    let state = s.dir.path().join("agent");
    let out = s.writ(&[
        "agent",
        "enroll",
        "--server",
        &s.url(),
        "--join-token",
        token.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--tcti",
        &s.tpm.tcti(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // The header-read bound closes them: each read ends (EOF or reset) within a few seconds.
    std::thread::sleep(std::time::Duration::from_secs(6));
    let closed = idle
        .iter_mut()
        .map(|c| {
            use std::io::Read;
            c.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            let mut b = [0u8; 1024];
            loop {
                match c.read(&mut b) {
                    Ok(0) => return true,
                    Ok(_) => continue, // a 408 answer first, then the close
                    Err(e) => {
                        return e.kind() != std::io::ErrorKind::WouldBlock
                            && e.kind() != std::io::ErrorKind::TimedOut;
                    }
                }
            }
        })
        .filter(|closed| *closed)
        .count();
    assert_eq!(closed, idle.len());
}

#[test]
fn a_tpm_without_an_ek_certificate_gets_a_message_that_says_what_to_do() {
    let s = Stack::new();
    let dir = tempfile::tempdir().unwrap();
    let enroll = |state: &str| {
        let token = s.join_token("bare", "600");
        s.writ(&[
            "agent",
            "enroll",
            "--server",
            &s.url(),
            "--join-token",
            token.to_str().unwrap(),
            "--state",
            s.dir.path().join(state).to_str().unwrap(),
            "--tcti",
            &s.tpm.tcti(),
        ])
    };
    // Without the RSA EK certificate (swtpm's platform hierarchy has an empty auth), then
    // without any.
    s.tpm
        .tool(dir.path(), &["tpm2_nvundefine", "-C", "p", "0x1c00002"]);
    let out = enroll("a");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no RSA 2048 EK certificate"), "{err}");
    assert!(err.contains("swtpm_setup --create-ek-cert"), "{err}");
    s.tpm
        .tool(dir.path(), &["tpm2_nvundefine", "-C", "p", "0x1c00016"]);
    let out = enroll("b");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no EK certificate in NV"), "{err}");
    assert!(err.contains("docs/enrollment.md"), "{err}");
    // Nothing was asked of the appliance: its last records are the admin's token issuances.
    let last = s.records().pop().unwrap();
    assert_eq!(serde_json::to_value(last.kind).unwrap(), "admin");
}

#[test]
fn unanswered_challenges_per_name_are_bounded() {
    let s = Stack::new();
    let rt = Runtime::new(&s.tpm);
    let cert = s.dir.path().join("ek.der");
    std::fs::write(&cert, &rt.ek_cert).unwrap();
    let out = s.admin(&[
        "register-ek",
        "--ek-cert",
        cert.to_str().unwrap(),
        "--name",
        "pub",
    ]);
    assert!(out.status.success());
    // EK certificates are public: anyone may start, but only so many challenges wait.
    for _ in 0..writ::appliance::MAX_PENDING {
        let (st, p) = s.post("/v1/enroll", &rt.start_body(None), None);
        assert_eq!(st, 200, "{p}");
    }
    let (st, p) = s.post("/v1/enroll", &rt.start_body(None), None);
    assert_eq!(
        (st, p["code"].as_str()),
        (429, Some("too_many_challenges")),
        "{p}"
    );
    assert_eq!(s.last().2, vec!["too_many_challenges".to_string()]);
}
