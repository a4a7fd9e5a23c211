//! Issuance end to end: an attested swtpm runtime asks `writ serve` for execution writs with its
//! EAR token and DPoP proofs made by its holder key in the TPM; Cedar decides under a loaded
//! policy bundle; the writ is signed by the issuer key in SoftHSM2. Each refusal is checked in
//! the answer and in the log, and after every test no writ exists without its committed record.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::runtime::{HOLDER_AUTH, Runtime, assign, last, ok, profile_of, ready};
use common::stack::{Engine, Stack, TD};
use serde_json::{Value, json};
use writ_attestation::writ::claims::WritClaims;
use writ_attestation::writ::dpop::{self, ProofClaims};
use writ_hsm::tpm::attester::{Attester, HolderSigner, KeyBlob};

const AUDIENCE: &str = "spiffe://writ.test/gateway/tools";
const REQ: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

fn holder_jwk(holder: &KeyBlob) -> writ_attestation::jwk::EcJwk {
    let public = writ_attestation::tpm::public::Public::from_tpmt(&holder.public).unwrap();
    let writ_attestation::tpm::public::KeyParams::Ecc { x, y, .. } = public.params() else {
        panic!("an ECC key")
    };
    writ_attestation::jwk::EcJwk::from_coordinates(x, y).unwrap()
}

/// A DPoP proof by `rt`'s holder key for `POST <url>/v1/writs` with `ear`.
fn proof(rt: &Runtime, url: &str, ear: &str) -> String {
    proof_by(&rt.tpm, &rt.holder, url, ear)
}

/// A DPoP proof by the holder key `holder` in `tpm`.
fn proof_by(tpm: &Attester, holder: &KeyBlob, url: &str, ear: &str) -> String {
    proof_edited(tpm, holder, url, ear, |_| {})
}

/// A DPoP proof by `holder` whose claims `edit` changes before it is signed.
fn proof_edited(
    tpm: &Attester,
    holder: &KeyBlob,
    url: &str,
    ear: &str,
    edit: impl FnOnce(&mut ProofClaims),
) -> String {
    let key = tpm.load_holder_key(holder, Some(HOLDER_AUTH)).unwrap();
    let signer = HolderSigner {
        tpm,
        key,
        bound: None,
    };
    let mut jti = [0u8; 16];
    getrandom::fill(&mut jti).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut claims = ProofClaims {
        jti: URL_SAFE_NO_PAD.encode(jti),
        iat: now,
        htm: "POST".into(),
        htu: format!("{url}/v1/writs"),
        ath: dpop::ath(ear),
        nonce: None,
    };
    edit(&mut claims);
    dpop::create(&signer, &holder_jwk(holder), &claims).unwrap()
}

fn request(s: &Stack, ear: Option<&str>, proof: Option<&str>, body: &Value) -> (u16, Value) {
    let mut r = common::agent()
        .post(format!("{}/v1/writs", s.url()))
        .header("Content-Type", "application/json");
    if let Some(e) = ear {
        r = r.header("Authorization", format!("DPoP {e}"));
    }
    if let Some(p) = proof {
        r = r.header("DPoP", p);
    }
    let mut resp = r.send(body.to_string().as_bytes()).unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn body(resource: &str) -> Value {
    json!({"action": "exec", "resource": resource, "audience": AUDIENCE, "req": REQ})
}

fn bundle(extra: Value) -> Value {
    let mut b: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/policy/example.json"),
        )
        .unwrap()
        .replace("spiffe://writ.dev/gateway/tools", AUDIENCE),
    )
    .unwrap();
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

fn load_policy(s: &Stack, b: &Value) -> std::process::Output {
    let file = s
        .dir
        .path()
        .join(format!("policy-{}.json", writ_testkit::random_hex(4)));
    std::fs::write(&file, b.to_string()).unwrap();
    s.admin(&["load-policy", file.to_str().unwrap()])
}

/// Asserts a refusal with `code`, and that the log's last record is the issue denial of
/// `name` with that code.
fn refused(s: &Stack, answer: &(u16, Value), name: &str, code: &str) {
    assert_eq!(answer.1["code"], code, "{}", answer.1);
    let (kind, subject, decision, reasons) = last(s);
    assert_eq!(kind, "issue");
    assert_eq!(subject, format!("spiffe://{TD}/runtime/{name}"));
    assert_eq!(decision, "deny");
    assert_eq!(reasons, [code]);
    // A refusal's record never names a writ.
    let r = s.records().pop().unwrap();
    assert!(!r.digests.contains_key("writ"), "{:?}", r.digests);
}

/// No writ answered without its committed `issue` allow record, and no allow record without
/// its writ answered.
fn invariant(s: &Stack, answered: &BTreeSet<String>) {
    let recorded: BTreeSet<String> = s
        .records()
        .into_iter()
        .filter(|r| {
            serde_json::to_value(r.kind).unwrap() == "issue"
                && serde_json::to_value(r.decision).unwrap() == "allow"
        })
        .map(|r| r.digests["writ"].clone())
        .collect();
    let answered: BTreeSet<String> = answered
        .iter()
        .map(|w| {
            format!(
                "sha256:{}",
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(w.as_bytes()))
            )
        })
        .collect();
    assert_eq!(recorded, answered);
}

fn attest(s: &Stack, rt: &Runtime) -> String {
    let (st, v) = rt.attest(s);
    assert_eq!(st, 200, "{v}");
    v["ear"].as_str().unwrap().to_string()
}

#[test]
fn an_attested_runtime_gets_a_writ_for_what_policy_allows_and_nothing_else_on_sqlite() {
    issuance(Engine::Sqlite);
}

#[test]
fn an_attested_runtime_gets_a_writ_for_what_policy_allows_and_nothing_else_on_postgresql() {
    issuance(Engine::Postgres);
}

fn issuance(engine: Engine) {
    let s = Stack::on(engine, &[]);
    let rt = ready(&s, "agent-1");
    let ear = attest(&s, &rt);
    let url = s.url();
    let mut answered = BTreeSet::new();

    // No policy loaded yet: nothing is allowed (logged).
    let a = request(
        &s,
        Some(&ear),
        Some(&proof(&rt, &url, &ear)),
        &body("tools/build"),
    );
    assert_eq!(a.0, 503);
    refused(&s, &a, "agent-1", "no_policy");
    // A bundle that does not validate is refused and leaves none in force.
    let bad =
        bundle(json!({"policies": "permit(principal, action == Action::\"nope\", resource);"}));
    let out = load_policy(&s, &bad);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("policy_bundle"));
    // Nor does one that re-declares what writ supplies (here: resources with parents writ never
    // gives, so a forbid on them would never apply).
    let shadow = bundle(
        json!({"schema": "entity Folder;\nentity Resource in [Folder];\naction \"exec\" appliesTo { principal: Runtime, resource: Resource, context: WritContext };\n"}),
    );
    let out = load_policy(&s, &shadow);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("policy_bundle"));
    ok(&load_policy(&s, &bundle(json!({}))));
    // The policy record, then the trust bundle version it made.
    let kinds: Vec<String> = s
        .records()
        .iter()
        .rev()
        .take(2)
        .map(|r| {
            serde_json::to_value(r.kind)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["bundle", "policy"]);

    // Allowed: the writ verifies with the issuer key and carries the exact request.
    let (st, v) = request(
        &s,
        Some(&ear),
        Some(&proof(&rt, &url, &ear)),
        &body("tools/build"),
    );
    assert_eq!(st, 200, "{v}");
    let writ = v["writ"].as_str().unwrap().to_string();
    answered.insert(writ.clone());
    let shown = s.writ(&["keys", "show", "--key", &s.issuer_key, "--json"]);
    ok(&shown);
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    let issuer = writ_attestation::jwk::EcJwk::from_members(
        "EC",
        "P-256",
        shown["jwk"]["x"].as_str().unwrap(),
        shown["jwk"]["y"].as_str().unwrap(),
    )
    .unwrap();
    let payload = writ_attestation::writ::jws::parse(
        &writ,
        "writ+jwt",
        writ_attestation::writ::jws::HeaderShape::Kid,
    )
    .unwrap()
    .verify(writ_attestation::crypto::default_provider(), &issuer)
    .unwrap();
    let claims = writ_attestation::writ::claims::WritClaims::from_payload(payload).unwrap();
    assert_eq!(claims.sub, format!("spiffe://{TD}/runtime/agent-1"));
    assert_eq!(claims.aud, AUDIENCE);
    assert_eq!(claims.cnf.jkt, holder_jwk(&rt.holder).thumbprint());
    let act = claims.act.as_ref().unwrap();
    assert_eq!(
        (act.name.as_str(), act.resource.as_str(), act.req.as_str()),
        ("exec", "tools/build", REQ)
    );
    assert_eq!(claims.exp - claims.iat, 60);
    // Interop: PyJWT (an independent implementation) verifies the served writ with the issuer's
    // JWK and refuses it for another audience.
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway/tests/interop/pyjwt.py");
    let jwk = shown["jwk"].to_string();
    let iss = format!("spiffe://{TD}/writ/appliance");
    let py = |aud: &str| {
        std::process::Command::new("/usr/bin/python3")
            .arg(&script)
            .args(["verify-writ", &jwk, &writ, aud, &iss])
            .output()
            .unwrap()
    };
    let out = py(AUDIENCE);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let py_claims: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(py_claims["claims"]["jti"], claims.jti.as_str());
    assert!(!py("spiffe://writ.test/gateway/other").status.success());
    let records = s.records();
    let r = records.last().unwrap();
    assert_eq!(serde_json::to_value(r.kind).unwrap(), "issue");
    assert_eq!(
        r.policy_bundle_hash.as_deref(),
        Some(claims.att.policy.as_str())
    );
    assert_eq!(v["log_index"].as_u64().unwrap() as usize, records.len() - 1);

    // Policy: a forbid rule, named in the answer.
    let a = request(
        &s,
        Some(&ear),
        Some(&proof(&rt, &url, &ear)),
        &body("db/prod"),
    );
    refused(&s, &a, "agent-1", "policy");
    assert!(
        a.1["detail"]
            .as_str()
            .unwrap()
            .contains("no-production-database"),
        "{}",
        a.1
    );
    // No permit rule for another audience.
    let mut other = body("tools/build");
    other["audience"] = json!("spiffe://writ.test/gateway/elsewhere");
    let a = request(&s, Some(&ear), Some(&proof(&rt, &url, &ear)), &other);
    refused(&s, &a, "agent-1", "policy");
    assert!(
        a.1["detail"].as_str().unwrap().contains("no permit"),
        "{}",
        a.1
    );
    // A lifetime beyond the bundle's bound.
    let mut long = body("tools/build");
    long["lifetime_s"] = json!(3600);
    let a = request(&s, Some(&ear), Some(&proof(&rt, &url, &ear)), &long);
    refused(&s, &a, "agent-1", "lifetime");

    // Proofs: missing, garbage, replayed, by another key, for another URL.
    let a = request(&s, Some(&ear), None, &body("tools/build"));
    refused(&s, &a, "agent-1", "proof_missing");
    let a = request(&s, Some(&ear), Some("not.a.proof"), &body("tools/build"));
    refused(&s, &a, "agent-1", "proof");
    let p = proof(&rt, &url, &ear);
    let (st, v) = request(&s, Some(&ear), Some(&p), &body("tools/test"));
    assert_eq!(st, 200, "{v}");
    answered.insert(v["writ"].as_str().unwrap().to_string());
    let a = request(&s, Some(&ear), Some(&p), &body("tools/test"));
    refused(&s, &a, "agent-1", "replayed");
    let stranger = rt.tpm.create_holder_key(Some(HOLDER_AUTH)).unwrap();
    let a = request(
        &s,
        Some(&ear),
        Some(&proof_by(&rt.tpm, &stranger, &url, &ear)),
        &body("tools/build"),
    );
    refused(&s, &a, "agent-1", "proof_key");
    let a = request(
        &s,
        Some(&ear),
        Some(&proof(&rt, "https://elsewhere.example", &ear)),
        &body("tools/build"),
    );
    refused(&s, &a, "agent-1", "proof_binding");

    // A proof out of its time window, or for another EAR.
    let a = request(
        &s,
        Some(&ear),
        Some(&proof_edited(&rt.tpm, &rt.holder, &url, &ear, |c| {
            c.iat -= 3600
        })),
        &body("tools/build"),
    );
    refused(&s, &a, "agent-1", "proof_time");
    let a = request(
        &s,
        Some(&ear),
        Some(&proof_edited(&rt.tpm, &rt.holder, &url, &ear, |c| {
            c.ath = dpop::ath("another token")
        })),
        &body("tools/build"),
    );
    refused(&s, &a, "agent-1", "proof_binding");
    // A refused request spends its proof too.
    let p = proof(&rt, &url, &ear);
    let a = request(&s, Some(&ear), Some(&p), &body("db/prod"));
    refused(&s, &a, "agent-1", "policy");
    let a = request(&s, Some(&ear), Some(&p), &body("tools/build"));
    refused(&s, &a, "agent-1", "replayed");
    // A malformed request digest.
    let mut bad = body("tools/build");
    bad["req"] = json!("sha256:not-a-digest");
    let a = request(&s, Some(&ear), Some(&proof(&rt, &url, &ear)), &bad);
    refused(&s, &a, "agent-1", "malformed");
    // A Host this appliance is not known by: refused before anything else.
    {
        use std::io::{Read, Write};
        let addr = url.trim_start_matches("http://");
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        let b = body("tools/build").to_string();
        write!(
            c,
            "POST /v1/writs HTTP/1.1\r\nHost: evil.example\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
            b.len()
        )
        .unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("htu_origin"), "{answer}");
    }

    // No EAR, or a forged one: nobody is identified, nothing is logged.
    let size = s.records().len();
    let a = request(
        &s,
        None,
        Some(&proof(&rt, &url, &ear)),
        &body("tools/build"),
    );
    assert_eq!((a.0, a.1["code"].as_str()), (401, Some("ear_missing")));
    let mut forged = ear.clone();
    forged.push('A');
    let a = request(
        &s,
        Some(&forged),
        Some(&proof(&rt, &url, &forged)),
        &body("tools/build"),
    );
    assert_eq!(
        (a.0, a.1["code"].as_str()),
        (401, Some("ear_invalid")),
        "{}",
        a.1
    );
    assert_eq!(s.records().len(), size);

    // A later attestation supersedes the EAR; a contraindicated one stops issuance.
    let ear2 = attest(&s, &rt);
    let a = request(
        &s,
        Some(&ear),
        Some(&proof(&rt, &url, &ear)),
        &body("tools/build"),
    );
    refused(&s, &a, "agent-1", "ear_superseded");
    rt.tpm.extend_pcr(4, &[1u8; 32]).unwrap();
    let (st, _) = rt.attest(&s);
    assert_eq!(st, 403);
    let a = request(
        &s,
        Some(&ear2),
        Some(&proof(&rt, &url, &ear2)),
        &body("tools/build"),
    );
    refused(&s, &a, "agent-1", "contraindicated");
    invariant(&s, &answered);
}

#[test]
fn stale_appraisals_rates_revocation_and_a_missing_issuer_key_stop_issuance() {
    let mut s = Stack::new();
    let rt = ready(&s, "agent-2");
    let url = s.url();
    let mut answered = BTreeSet::new();
    ok(&load_policy(
        &s,
        &bundle(json!({"max_appraisal_age_s": 1, "rate_per_minute": 3})),
    ));
    // An appraisal older than the bundle's bound.
    let ear = attest(&s, &rt);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let a = request(
        &s,
        Some(&ear),
        Some(&proof(&rt, &url, &ear)),
        &body("tools/build"),
    );
    refused(&s, &a, "agent-2", "stale_appraisal");
    // The runtime's rate (3 a minute, the refusal above not counted: it came first).
    let ear = attest(&s, &rt);
    for _ in 0..3 {
        let (st, v) = request(
            &s,
            Some(&ear),
            Some(&proof(&rt, &url, &ear)),
            &body("tools/build"),
        );
        if st == 200 {
            answered.insert(v["writ"].as_str().unwrap().to_string());
        } else {
            assert_eq!(v["code"], "policy", "{v}");
        }
    }
    let a = request(
        &s,
        Some(&ear),
        Some(&proof(&rt, &url, &ear)),
        &body("tools/build"),
    );
    assert_eq!(a.0, 429);
    refused(&s, &a, "agent-2", "rate_limited");
    invariant(&s, &answered);

    // Without an issuer key nothing is issued (a logged refusal, 503).
    s.issuer_key.clear();
    s.kill_and_restart();
    ok(&load_policy(&s, &bundle(json!({}))));
    let ear = attest(&s, &rt);
    let a = request(
        &s,
        Some(&ear),
        Some(&proof(&rt, &s.url(), &ear)),
        &body("tools/build"),
    );
    assert_eq!(a.0, 503);
    refused(&s, &a, "agent-2", "issuer_signing");
    // A revoked runtime.
    ok(&s.admin(&["revoke", "agent-2"]));
    let a = request(
        &s,
        Some(&ear),
        Some(&proof(&rt, &s.url(), &ear)),
        &body("tools/build"),
    );
    refused(&s, &a, "agent-2", "revoked");
    invariant(&s, &answered);
}

/// `writ agent` enrolled as `name`, its profile assigned, attested, under the example policy: its
/// state folder.
fn attested_agent(s: &Stack, name: &str) -> std::path::PathBuf {
    let (a, log_file, state) = common::runtime::agent_enrolled(s, name);
    common::runtime::assign(s, name, &common::runtime::profile_of(&a));
    ok(&s.writ(&[
        "agent",
        "attest",
        "--state",
        state.to_str().unwrap(),
        "--tcti",
        &s.tpm.tcti(),
        "--event-log",
        log_file.to_str().unwrap(),
    ]));
    ok(&load_policy(s, &bundle(json!({}))));
    state
}

#[test]
fn writ_agent_requests_a_writ_and_makes_its_proof_in_the_tpm() {
    let s = Stack::new();
    let state = attested_agent(&s, "ci-7");
    let st = state.to_str().unwrap();
    let tcti = s.tpm.tcti();
    let writ_file = s.dir.path().join("writ.jws");
    let out = s.writ(&[
        "agent",
        "request",
        "--state",
        st,
        "--tcti",
        &tcti,
        "--action",
        "exec",
        "--resource",
        "tools/build",
        "--audience",
        AUDIENCE,
        "--out",
        writ_file.to_str().unwrap(),
        "--tool",
        "build",
        "--",
        "make",
        "all",
    ]);
    ok(&out);
    let writ = std::fs::read_to_string(&writ_file)
        .unwrap()
        .trim()
        .to_string();
    let argv = vec!["make".to_string(), "all".to_string()];
    let req = writ_attestation::writ::request::Request::Exec {
        tool: "build",
        argv: &argv,
    };
    let digest = writ_attestation::writ::request::digest(&req).unwrap();
    let unverified = writ_attestation::writ::jws::parse(
        &writ,
        "writ+jwt",
        writ_attestation::writ::jws::HeaderShape::Kid,
    )
    .unwrap();
    let payload: Value = serde_json::from_slice(unverified.unverified_payload()).unwrap();
    assert_eq!(payload["act"]["req"], digest.as_str());
    // The proof for that writ and request, made in the TPM, verifies as a gateway checks it.
    let out = s.writ(&[
        "agent",
        "proof",
        "--state",
        st,
        "--tcti",
        &tcti,
        "--writ",
        writ_file.to_str().unwrap(),
        "--tool",
        "build",
        "--",
        "make",
        "all",
    ]);
    ok(&out);
    let proof = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let (htm, htu) = writ_attestation::writ::request::proof_target(&req).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    dpop::verify(
        writ_attestation::crypto::default_provider(),
        &proof,
        &dpop::Expected {
            jkt: payload["cnf"]["jkt"].as_str().unwrap(),
            htm: &htm,
            htu: &htu,
            token: &writ,
            now,
            skew: 60,
            nonce: None,
        },
    )
    .unwrap();
    // At a gateway: the one offline verification, with the trust bundle the appliance serves,
    // allows exactly this request once.
    let (status, text) = common::stack::get(&s.url(), "/v1/bundle");
    assert_eq!(status, 200, "{text}");
    let served = writ_attestation::writ::bundle::TrustBundle::parse(text.as_bytes()).unwrap();
    let store = MemoryReplay::default();
    let gate = |token: &str, proof: &str, req_digest: &str, htu: &str| {
        writ_attestation::writ::verify::verify(
            writ_attestation::crypto::default_provider(),
            &served,
            &writ_attestation::writ::verify::Context {
                token,
                proof: Some(proof),
                request_digest: req_digest,
                htm: "EXEC",
                htu,
                audience: AUDIENCE,
                now,
                skew: 60,
                nonce: None,
                max_bundle_age: 3600,
            },
            &store,
        )
    };
    gate(&writ, &proof, &digest, &htu).unwrap();
    assert_eq!(
        gate(&writ, &proof, &digest, &htu).unwrap_err().code,
        "replayed"
    );
    // The same writ for other arguments: refused.
    let other_argv = vec!["make".to_string(), "clean".to_string()];
    let other = writ_attestation::writ::request::Request::Exec {
        tool: "build",
        argv: &other_argv,
    };
    let other_digest = writ_attestation::writ::request::digest(&other).unwrap();
    let (_, other_htu) = writ_attestation::writ::request::proof_target(&other).unwrap();
    assert!(gate(&writ, &proof, &other_digest, &other_htu).is_err());

    // A request policy forbids: exit 1, the rule named.
    let out = s.writ(&[
        "agent",
        "request",
        "--state",
        st,
        "--tcti",
        &tcti,
        "--action",
        "exec",
        "--resource",
        "db/prod",
        "--audience",
        AUDIENCE,
        "--tool",
        "psql",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-production-database"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A delegation writ (--scope), then an execution writ under it (--parent): the agent makes
    // the parent holder's consent with its own holder key.
    let parent_file = s.dir.path().join("parent.jws");
    ok(&s.writ(&[
        "agent",
        "request",
        "--state",
        st,
        "--tcti",
        &tcti,
        "--scope",
        "--action",
        "exec",
        "--resource",
        "tools",
        "--audience",
        AUDIENCE,
        "--max-depth",
        "1",
        "--out",
        parent_file.to_str().unwrap(),
    ]));
    let parent = std::fs::read_to_string(&parent_file)
        .unwrap()
        .trim()
        .to_string();
    let child_file = s.dir.path().join("child.jws");
    let child = |resource: &str| {
        s.writ(&[
            "agent",
            "request",
            "--state",
            st,
            "--tcti",
            &tcti,
            "--action",
            "exec",
            "--resource",
            resource,
            "--audience",
            AUDIENCE,
            "--parent",
            parent_file.to_str().unwrap(),
            "--out",
            child_file.to_str().unwrap(),
            "--tool",
            "build",
            "--",
            "make",
            "all",
        ])
    };
    ok(&child("tools/build"));
    let child_writ = std::fs::read_to_string(&child_file).unwrap();
    let c = verified(&s, child_writ.trim());
    assert_eq!(c.lin.parent, Some(sha256(&parent)));
    assert_eq!(c.act.unwrap().req, digest);
    // At a gateway the child runs like any execution writ; its parent, a delegation writ
    // addressed to the appliance, runs nothing.
    let out = s.writ(&[
        "agent",
        "proof",
        "--state",
        st,
        "--tcti",
        &tcti,
        "--writ",
        child_file.to_str().unwrap(),
        "--tool",
        "build",
        "--",
        "make",
        "all",
    ]);
    ok(&out);
    let child_proof = String::from_utf8(out.stdout).unwrap().trim().to_string();
    gate(child_writ.trim(), &child_proof, &digest, &htu).unwrap();
    assert_eq!(
        gate(&parent, &child_proof, &digest, &htu).unwrap_err().code,
        "audience"
    );
    // Outside the parent's scope: refused (exit 1), the check named.
    let out = child("db/staging");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lineage"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A parent another runtime holds needs that holder's consent (writ agent consent) to the
    // exact request (writ agent request --dry-run prints it).
    let out = s.writ(&[
        "agent",
        "request",
        "--state",
        st,
        "--tcti",
        &tcti,
        "--action",
        "exec",
        "--resource",
        "tools/build",
        "--audience",
        AUDIENCE,
        "--parent",
        parent_file.to_str().unwrap(),
        "--dry-run",
        "--tool",
        "build",
        "--",
        "make",
        "all",
    ]);
    ok(&out);
    let request_file = s.dir.path().join("request.json");
    std::fs::write(&request_file, &out.stdout).unwrap();
    let asked: writ::appliance::WritRequest = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(asked.req.as_deref(), Some(digest.as_str()));
    assert!(asked.parent_proof.is_none());
    let out = s.writ(&[
        "agent",
        "consent",
        "--state",
        st,
        "--tcti",
        &tcti,
        "--parent",
        parent_file.to_str().unwrap(),
        "--for",
        "some-other-holder",
        "--request",
        request_file.to_str().unwrap(),
    ]);
    ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("an execution writ for exec on tools/build"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let consent = String::from_utf8(out.stdout).unwrap();
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(consent.trim().split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["nonce"],
        writ::appliance::consent_nonce("some-other-holder", &asked)
            .unwrap()
            .as_str()
    );
    assert_eq!(claims["ath"], dpop::ath(&parent).as_str());
}

#[test]
fn with_the_hsm_gone_nothing_is_issued() {
    let s = Stack::on(
        Engine::Sqlite,
        &[
            "--checkpoint-interval-ms",
            "500",
            "--max-checkpoint-age",
            "3",
        ],
    );
    let rt = ready(&s, "agent-9");
    let ear = attest(&s, &rt);
    let url = s.url();
    ok(&load_policy(&s, &bundle(json!({}))));
    let (st, v) = request(
        &s,
        Some(&ear),
        Some(&proof(&rt, &url, &ear)),
        &body("tools/build"),
    );
    assert_eq!(st, 200, "{v}");
    let answered: BTreeSet<String> = [v["writ"].as_str().unwrap().to_string()].into();
    // The token's files vanish: the issuer key cannot sign, checkpoints cannot be signed, so the
    // log refuses new records. Nothing is issued, whichever fails first.
    let tokens = s.hsm.dir().join("tokens");
    let moved = s.hsm.dir().join("tokens.gone");
    std::fs::rename(&tokens, &moved).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(4000));
    let (st, v) = request(
        &s,
        Some(&ear),
        Some(&proof(&rt, &url, &ear)),
        &body("tools/build"),
    );
    assert_eq!(st, 503, "{v}");
    assert!(v.get("writ").is_none(), "{v}");
    std::fs::rename(&moved, &tokens).unwrap();
    // The token comes back: issuance recovers without a restart.
    let mut answered = answered;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (st, v) = request(
            &s,
            Some(&ear),
            Some(&proof(&rt, &url, &ear)),
            &body("tools/build"),
        );
        if st == 200 {
            answered.insert(v["writ"].as_str().unwrap().to_string());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not recovered: {st} {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    invariant(&s, &answered);
}

/// A replay store in memory (the gateway's SQLite store is tested in its crate).
#[derive(Default)]
struct MemoryReplay(
    std::sync::Mutex<std::collections::HashSet<writ_attestation::writ::verify::ReplayKey>>,
);

impl writ_attestation::writ::verify::ReplayStore for MemoryReplay {
    fn consume(
        &self,
        keys: &[writ_attestation::writ::verify::ReplayKey],
        _keep_until: i64,
    ) -> Result<bool, writ_attestation::writ::Refusal> {
        let mut seen = self.0.lock().unwrap();
        if keys.iter().any(|k| seen.contains(k)) {
            return Ok(false);
        }
        seen.extend(keys.iter().cloned());
        Ok(true)
    }
}

/// The issuer key's public JWK as `writ keys show` prints it.
fn issuer_jwk(s: &Stack) -> writ_attestation::jwk::EcJwk {
    let shown = s.writ(&["keys", "show", "--key", &s.issuer_key, "--json"]);
    ok(&shown);
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    writ_attestation::jwk::EcJwk::from_members(
        "EC",
        "P-256",
        shown["jwk"]["x"].as_str().unwrap(),
        shown["jwk"]["y"].as_str().unwrap(),
    )
    .unwrap()
}

/// A served writ's claims, verified with the issuer key.
fn verified(s: &Stack, writ: &str) -> WritClaims {
    let payload = writ_attestation::writ::jws::parse(
        writ,
        "writ+jwt",
        writ_attestation::writ::jws::HeaderShape::Kid,
    )
    .unwrap()
    .verify(writ_attestation::crypto::default_provider(), &issuer_jwk(s))
    .unwrap();
    WritClaims::from_payload(payload).unwrap()
}

fn sha256(text: &str) -> String {
    format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()))
    )
}

/// The leaf hash (`sha256:`) of the `issue` record of `writ`.
fn record_of(s: &Stack, writ: &str) -> String {
    let want = sha256(writ);
    let r = s
        .records()
        .into_iter()
        .find(|r| r.digests.get("writ") == Some(&want))
        .expect("the writ's record");
    writ_attestation::log::record::leaf_ref(&r.to_leaf().unwrap())
}

fn scope(resources: &[&str], max_depth: u32) -> Value {
    json!({"scope": {
        "actions": ["exec"], "resources": resources, "audiences": [AUDIENCE], "max_depth": max_depth,
    }})
}

/// `body` under `parent`, with the parent holder's consent when given.
fn under(mut body: Value, parent: &str, consent: Option<String>) -> Value {
    body["parent"] = json!(parent);
    if let Some(c) = consent {
        body["parent_proof"] = json!(c);
    }
    body
}

/// The consent of `holder` (the runtime holding the parent `body` names) for the holder key
/// `for_jkt` to send `body`.
fn consent(holder: &Runtime, url: &str, body: &Value, for_jkt: &str) -> String {
    let asked: writ::appliance::WritRequest = serde_json::from_value(body.clone()).unwrap();
    let nonce = writ::appliance::consent_nonce(for_jkt, &asked).unwrap();
    let parent = body["parent"].as_str().unwrap();
    proof_edited(&holder.tpm, &holder.holder, url, parent, |c| {
        c.nonce = Some(nonce)
    })
}

/// `body` under `parent`, with the consent of `holder` for `for_jkt` to send it.
fn consented(holder: &Runtime, url: &str, body: Value, parent: &str, for_jkt: &str) -> Value {
    let b = under(body, parent, None);
    let c = consent(holder, url, &b, for_jkt);
    under(b, parent, Some(c))
}

#[test]
fn delegation_writs_narrow_and_their_lineage_reads_back_from_the_log() {
    let (s, other_tpm) = Stack::with_second_tpm(&[]);
    let a = ready(&s, "agent-a");
    let b = Runtime::enroll(&s, &other_tpm, "agent-b");
    assign(&s, "agent-b", &profile_of(&b.tpm));
    let ear_a = attest(&s, &a);
    let ear_b = attest(&s, &b);
    ok(&load_policy(&s, &bundle(json!({}))));
    let url = s.url();
    let jkt_a = holder_jwk(&a.holder).thumbprint();
    let appliance = format!("spiffe://{TD}/writ/appliance");
    let mut answered = BTreeSet::new();
    let ask = |rt: &Runtime, ear: &str, body: &Value| {
        request(&s, Some(ear), Some(&proof(rt, &url, ear)), body)
    };
    let mut issued = |r: (u16, Value)| {
        assert_eq!(r.0, 200, "{}", r.1);
        let w = r.1["writ"].as_str().unwrap().to_string();
        answered.insert(w.clone());
        w
    };

    // Policy decides every combination of a scope: delegating the production database is
    // forbidden by the rule that forbids it.
    let r = ask(&a, &ear_a, &scope(&["tools", "db/prod"], 2));
    refused(&s, &r, "agent-a", "policy");
    assert!(
        r.1["detail"]
            .as_str()
            .unwrap()
            .contains("no-production-database"),
        "{}",
        r.1
    );
    // Scopes beyond the policy's depth bound (2 in the example bundle), with an escaping or
    // non-canonical resource, or both forms at once: malformed.
    refused(
        &s,
        &ask(&a, &ear_a, &scope(&["tools"], 4)),
        "agent-a",
        "malformed",
    );
    refused(
        &s,
        &ask(&a, &ear_a, &scope(&["tools/../db"], 1)),
        "agent-a",
        "malformed",
    );
    refused(
        &s,
        &ask(&a, &ear_a, &scope(&["tools//build"], 1)),
        "agent-a",
        "malformed",
    );
    let mut both = body("tools/build");
    both["scope"] = scope(&["tools"], 1)["scope"].clone();
    refused(&s, &ask(&a, &ear_a, &both), "agent-a", "malformed");

    // A's delegation writ: addressed to the appliance (no gateway accepts it), a root.
    let d = issued(ask(&a, &ear_a, &scope(&["tools"], 1)));
    let dc = verified(&s, &d);
    assert_eq!(dc.aud, appliance);
    assert!(dc.act.is_none());
    let sc = dc.scope.as_ref().unwrap();
    assert_eq!(
        (&sc.actions, &sc.resources, &sc.audiences, sc.max_depth),
        (
            &vec!["exec".to_string()],
            &vec!["tools".to_string()],
            &vec![AUDIENCE.to_string()],
            1
        )
    );
    assert_eq!((dc.lin.parent.as_deref(), dc.lin.depth), (None, 0));

    // An execution writ under it, with A's consent as the parent's holder: its lineage names
    // the parent, and its record names the parent's record.
    let c = issued(ask(
        &a,
        &ear_a,
        &consented(&a, &url, body("tools/build"), &d, &jkt_a),
    ));
    let cc = verified(&s, &c);
    assert_eq!(cc.lin.parent, Some(sha256(&d)));
    assert_eq!(cc.lin.root, Some(sha256(&d)));
    assert_eq!(cc.lin.depth, 1);
    assert!(cc.exp <= dc.exp);
    let rec = s.records().pop().unwrap();
    assert_eq!(rec.parent, Some(record_of(&s, &d)));
    assert_eq!(rec.digests["parent"], sha256(&d));

    // Refusals under the parent, each logged (and each naming the parent's record).
    let r = ask(&a, &ear_a, &under(body("tools/build"), &d, None));
    refused(&s, &r, "agent-a", "parent_proof_missing");
    let stranger = a.tpm.create_holder_key(Some(HOLDER_AUTH)).unwrap();
    let asked = under(body("tools/build"), &d, None);
    let nonce =
        writ::appliance::consent_nonce(&jkt_a, &serde_json::from_value(asked.clone()).unwrap())
            .unwrap();
    let by_stranger = proof_edited(&a.tpm, &stranger, &url, &d, |c| c.nonce = Some(nonce));
    let r = ask(
        &a,
        &ear_a,
        &under(body("tools/build"), &d, Some(by_stranger)),
    );
    refused(&s, &r, "agent-a", "parent_proof");
    let for_other = consent(
        &a,
        &url,
        &under(body("tools/build"), &d, None),
        &holder_jwk(&b.holder).thumbprint(),
    );
    let r = ask(&a, &ear_a, &under(body("tools/build"), &d, Some(for_other)));
    refused(&s, &r, "agent-a", "parent_proof");
    // A consent for another request: refused.
    let for_build = consent(&a, &url, &under(body("tools/build"), &d, None), &jkt_a);
    let r = ask(&a, &ear_a, &under(body("tools/test"), &d, Some(for_build)));
    refused(&s, &r, "agent-a", "parent_proof");
    // Until the parent's holder consented, refusals do not name the parent's record.
    assert_eq!(s.records().pop().unwrap().parent, None);
    // Outside the parent's scope: a resource by prefix only, another audience, a lifetime past
    // the parent's. A consent used by a refusal is spent.
    let outside = consented(&a, &url, body("toolsmith/x"), &d, &jkt_a);
    let r = ask(&a, &ear_a, &outside);
    refused(&s, &r, "agent-a", "lineage");
    assert_eq!(s.records().pop().unwrap().parent, Some(record_of(&s, &d)));
    let r = ask(&a, &ear_a, &outside);
    refused(&s, &r, "agent-a", "replayed");
    let mut other_aud = body("tools/build");
    other_aud["audience"] = json!("spiffe://writ.test/gateway/other");
    let r = ask(&a, &ear_a, &consented(&a, &url, other_aud, &d, &jkt_a));
    refused(&s, &r, "agent-a", "lineage");
    let mut long = body("tools/build");
    long["lifetime_s"] = json!(200);
    let r = ask(&a, &ear_a, &consented(&a, &url, long, &d, &jkt_a));
    refused(&s, &r, "agent-a", "lineage");
    assert!(
        r.1["detail"].as_str().unwrap().contains("outlives"),
        "{}",
        r.1
    );
    // Depth: a delegation child at depth 1 is within max_depth 1; its own child is not.
    let d1 = issued(ask(
        &a,
        &ear_a,
        &consented(&a, &url, scope(&["tools/build"], 1), &d, &jkt_a),
    ));
    assert_eq!(verified(&s, &d1).lin.root, Some(sha256(&d)));
    let r = ask(
        &a,
        &ear_a,
        &consented(&a, &url, body("tools/build"), &d1, &jkt_a),
    );
    refused(&s, &r, "agent-a", "lineage");
    assert!(r.1["detail"].as_str().unwrap().contains("depth"), "{}", r.1);
    // Not a parent: an execution writ, or a writ whose signature was altered.
    let r = ask(
        &a,
        &ear_a,
        &consented(&a, &url, body("tools/build"), &c, &jkt_a),
    );
    refused(&s, &r, "agent-a", "parent_invalid");
    let mut forged = d.clone();
    let last_char = if forged.ends_with('A') { 'B' } else { 'A' };
    forged.pop();
    forged.push(last_char);
    let r = ask(
        &a,
        &ear_a,
        &consented(&a, &url, body("tools/build"), &forged, &jkt_a),
    );
    refused(&s, &r, "agent-a", "parent_invalid");

    // B delegates to A: A asks under B's writ with B's consent for A's holder key; A's own
    // proof in its place is not B's consent.
    let db = issued(ask(&b, &ear_b, &scope(&["tools"], 2)));
    let cb = issued(ask(
        &a,
        &ear_a,
        &consented(&b, &url, body("tools/test"), &db, &jkt_a),
    ));
    assert_eq!(
        verified(&s, &cb).sub,
        format!("spiffe://{TD}/runtime/agent-a")
    );
    let r = ask(
        &a,
        &ear_a,
        &consented(&a, &url, body("tools/test"), &db, &jkt_a),
    );
    refused(&s, &r, "agent-a", "parent_proof");

    // The lineage reads back from the log: `writ audit lineage <jti>`, each record verified
    // against the latest checkpoint, the first checked to be this writ's.
    let key = s.server.as_ref().unwrap().verifier_key.clone();
    let state = s.dir.path().join("audit.cp");
    let lineage = |jti: &str| {
        s.writ(&[
            "audit",
            "lineage",
            "--log",
            &url,
            "--key",
            &key,
            "--state",
            state.to_str().unwrap(),
            jti,
        ])
    };
    s.covered();
    let out = lineage(&verified(&s, &cb).jti);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!(
            "writ {} issued to spiffe://{TD}/runtime/agent-a",
            sha256(&cb)
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "parent: writ {} issued to spiffe://{TD}/runtime/agent-b",
            sha256(&db)
        )),
        "{text}"
    );
    assert!(
        text.contains("lineage: 2 record(s), root reached"),
        "{text}"
    );
    let out = lineage("AAAAAAAAAAAAAAAAAAAAAA");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A copy of the parent with its signature in high-S form (valid ECDSA, another digest):
    // not a writ this appliance issued.
    let high_s = {
        let (head, sig) = d.rsplit_once('.').unwrap();
        let sig =
            p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).unwrap()).unwrap();
        let (r, s_) = sig.split_scalars();
        let flipped =
            p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s_).to_bytes()).unwrap();
        format!("{head}.{}", URL_SAFE_NO_PAD.encode(flipped.to_bytes()))
    };
    let r = ask(
        &a,
        &ear_a,
        &consented(&a, &url, body("tools/build"), &high_s, &jkt_a),
    );
    refused(&s, &r, "agent-a", "parent_invalid");
    assert!(r.1["detail"].as_str().unwrap().contains("low-S"), "{}", r.1);

    // B's machine changes state (contraindicated): its consent no longer carries authority.
    b.tpm.extend_pcr(4, &[2u8; 32]).unwrap();
    let (st, _) = b.attest(&s);
    assert_eq!(st, 403);
    let r = ask(
        &a,
        &ear_a,
        &consented(&b, &url, body("tools/test"), &db, &jkt_a),
    );
    refused(&s, &r, "agent-a", "contraindicated_in_chain");

    // B revoked: nothing more under B's writ, even for A.
    ok(&s.admin(&["revoke", "agent-b"]));
    let r = ask(
        &a,
        &ear_a,
        &consented(&b, &url, body("tools/test"), &db, &jkt_a),
    );
    refused(&s, &r, "agent-a", "revoked_in_chain");

    // A new policy bundle: parents issued under the old one carry no authority any more.
    ok(&load_policy(&s, &bundle(json!({"rate_per_minute": 599}))));
    let r = ask(
        &a,
        &ear_a,
        &consented(&a, &url, body("tools/build"), &d, &jkt_a),
    );
    refused(&s, &r, "agent-a", "parent_policy");
    invariant(&s, &answered);
}

/// Holds the SQLite store's write lock (as another appliance's transaction on the same store
/// would), sends `body` as `rt`, and while the appliance waits to commit its decision, makes
/// `change` in that transaction and commits it. Returns the answer.
fn race(s: &Stack, rt: &Runtime, ear: &str, body: &Value, change: &str) -> (u16, Value) {
    let url = s.url();
    let p = proof(rt, &url, ear);
    let conn = rusqlite::Connection::open(s.dir.path().join("writ.db")).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    std::thread::scope(|scope| {
        let asked = scope.spawn(|| request(s, Some(ear), Some(&p), body));
        // The decision is made on what the store held before `change`; its commit waits for
        // this transaction.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        assert!(
            !asked.is_finished(),
            "the appliance answered without committing"
        );
        conn.execute_batch(change).unwrap();
        conn.execute_batch("COMMIT").unwrap();
        asked.join().unwrap()
    })
}

#[test]
fn changes_landing_between_the_decision_and_the_commit_refuse_the_writ() {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[attestation]\near_ttl_s = 10\n").unwrap();
    let (s, other_tpm) = Stack::with_second_tpm(&["--config", config.path().to_str().unwrap()]);
    let a = ready(&s, "agent-r");
    let b = Runtime::enroll(&s, &other_tpm, "agent-p");
    assign(&s, "agent-p", &profile_of(&b.tpm));
    let first_ear = attest(&s, &a);
    ok(&load_policy(&s, &bundle(json!({}))));
    let url = s.url();
    let mut answered = BTreeSet::new();

    // Unchanged: the commit goes through once the other transaction ends.
    let ear = attest(&s, &a);
    let (st, v) = race(&s, &a, &ear, &body("tools/build"), "SELECT 1");
    assert_eq!(st, 200, "{v}");
    answered.insert(v["writ"].as_str().unwrap().to_string());

    // A new policy bundle in force.
    let r = race(
        &s,
        &a,
        &ear,
        &body("tools/build"),
        "INSERT INTO policy_bundles (generation, hash, bundle, loaded_at)
         SELECT generation + 1, hash, bundle, loaded_at FROM policy_bundles
         ORDER BY generation DESC LIMIT 1",
    );
    assert_eq!(r.0, 409, "{}", r.1);
    refused(&s, &r, "agent-r", "policy_changed");

    // A new appraisal.
    let r = race(
        &s,
        &a,
        &ear,
        &body("tools/build"),
        "UPDATE attestations SET generation = generation + 1 WHERE name = 'agent-r'",
    );
    assert_eq!(r.0, 409, "{}", r.1);
    refused(&s, &r, "agent-r", "appraisal_changed");

    // A revocation in the parent chain: agent-p's delegation writ, agent-r asking under it.
    let ear_p = attest(&s, &b);
    let (st, v) = request(
        &s,
        Some(&ear_p),
        Some(&proof(&b, &url, &ear_p)),
        &scope(&["tools"], 1),
    );
    assert_eq!(st, 200, "{v}");
    let d = v["writ"].as_str().unwrap().to_string();
    answered.insert(d.clone());
    let jkt = holder_jwk(&a.holder).thumbprint();
    let ear = attest(&s, &a);
    let r = race(
        &s,
        &a,
        &ear,
        &consented(&b, &url, body("tools/build"), &d, &jkt),
        "UPDATE runtimes SET state = 'revoked' WHERE name = 'agent-p'",
    );
    assert_eq!(r.0, 409, "{}", r.1);
    refused(&s, &r, "agent-r", "revoked_in_chain");

    // The requester's own revocation.
    let r = race(
        &s,
        &a,
        &ear,
        &body("tools/build"),
        "UPDATE runtimes SET state = 'revoked' WHERE name = 'agent-r'",
    );
    assert_eq!(r.0, 409, "{}", r.1);
    refused(&s, &r, "agent-r", "revoked");
    invariant(&s, &answered);

    // An EAR past its lifetime (10 s here): unidentified, not logged.
    let size = s.records().len();
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(first_ear.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let exp = claims["exp"].as_i64().unwrap();
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        if now > exp {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let r = request(
        &s,
        Some(&first_ear),
        Some(&proof(&a, &url, &first_ear)),
        &body("tools/build"),
    );
    assert_eq!(
        (r.0, r.1["code"].as_str()),
        (401, Some("ear_expired")),
        "{}",
        r.1
    );
    assert_eq!(s.records().len(), size);
}

#[test]
fn a_policy_bundle_carries_reference_profiles() {
    let s = Stack::new();
    let rt = Runtime::enroll(&s, &s.tpm, "agent-p");
    // A bundle whose profile does not load (SHA-1 bank) is refused whole: no policy, no profile.
    let mut weak = profile_of(&rt.tpm);
    weak["bank"] = json!("sha1");
    let out = load_policy(&s, &bundle(json!({"profiles": {"bundled": weak}})));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("policy_bundle") && err.contains("profile bundled"),
        "{err}"
    );
    let out = s.admin(&[
        "assign-profile",
        "--runtime",
        "agent-p",
        "--profile",
        "bundled",
    ]);
    assert_eq!(out.status.code(), Some(1), "no profile was loaded");
    // With the profile loaded by the bundle, in its transaction: assigned, the runtime is
    // appraised against it and gets writs.
    ok(&load_policy(
        &s,
        &bundle(json!({"profiles": {"bundled": profile_of(&rt.tpm)}})),
    ));
    let r = s.records().into_iter().rev().nth(1).unwrap();
    assert_eq!(
        (
            serde_json::to_value(r.kind).unwrap(),
            serde_json::to_value(r.decision).unwrap()
        ),
        (json!("policy"), json!("allow"))
    );
    ok(&s.admin(&[
        "assign-profile",
        "--runtime",
        "agent-p",
        "--profile",
        "bundled",
    ]));
    let ear = attest(&s, &rt);
    let (st, v) = request(
        &s,
        Some(&ear),
        Some(&proof(&rt, &s.url(), &ear)),
        &body("tools/build"),
    );
    assert_eq!(st, 200, "{v}");
    invariant(
        &s,
        &BTreeSet::from([v["writ"].as_str().unwrap().to_string()]),
    );
}

#[test]
fn the_trust_bundle_publishes_each_version_in_the_log() {
    use writ_attestation::writ::bundle::{Purpose, TrustBundle};
    let s = Stack::new();
    let rt = ready(&s, "agent-b");
    let ear = attest(&s, &rt);
    let fetch = || {
        let (st, text) = common::stack::get(&s.url(), "/v1/bundle");
        (st, text)
    };
    let bundles = |s: &Stack| {
        s.records()
            .into_iter()
            .filter(|r| serde_json::to_value(r.kind).unwrap() == "bundle")
            .count()
    };
    // Nothing a relying party could accept before a policy bundle is loaded.
    let (st, text) = fetch();
    assert_eq!(st, 503, "{text}");
    assert!(text.contains("no_policy"), "{text}");
    ok(&load_policy(&s, &bundle(json!({}))));
    // The policy load published a version: its record follows the policy record.
    let (kind, subject, decision, _) = last(&s);
    assert_eq!(
        (kind.as_str(), subject.as_str(), decision.as_str()),
        (
            "bundle",
            format!("spiffe://{TD}/writ/appliance").as_str(),
            "allow"
        )
    );
    let (st, text) = fetch();
    assert_eq!(st, 200, "{text}");
    let b1 = TrustBundle::parse(text.as_bytes()).unwrap();
    assert_eq!(b1.trust_domain, TD);
    assert_eq!(b1.policy_bundles.len(), 1);
    assert_eq!(b1.log_verifier_key, s.server.as_ref().unwrap().verifier_key);
    let issuer = issuer_jwk(&s);
    let kid = issuer.thumbprint();
    assert_eq!(b1.key(&kid, Purpose::Issuer).unwrap(), &issuer);
    // The issuer key is not accepted as an EAR key, nor the reverse.
    assert_eq!(b1.key(&kid, Purpose::Ear).unwrap_err().code, "key_purpose");
    // Unchanged, it is the same version, and nothing more is recorded.
    let (_, again) = fetch();
    assert_eq!(
        TrustBundle::parse(again.as_bytes()).unwrap().sequence,
        b1.sequence
    );
    assert_eq!(bundles(&s), 1);

    // A served writ verifies with the bundle's issuer key, names the bundle's appliance, and
    // was issued under an accepted policy bundle.
    let (st, v) = request(
        &s,
        Some(&ear),
        Some(&proof(&rt, &s.url(), &ear)),
        &body("tools/build"),
    );
    assert_eq!(st, 200, "{v}");
    let writ = v["writ"].as_str().unwrap();
    let parsed = writ_attestation::writ::jws::parse(
        writ,
        "writ+jwt",
        writ_attestation::writ::jws::HeaderShape::Kid,
    )
    .unwrap();
    let key = b1.key(parsed.kid().unwrap(), Purpose::Issuer).unwrap();
    let claims = WritClaims::from_payload(
        parsed
            .verify(writ_attestation::crypto::default_provider(), key)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims.iss, b1.appliance_id());
    assert!(b1.policy_bundles.contains(&claims.att.policy));

    // A new policy bundle: a new version, accepting the new bundle and, while writs issued
    // under it may live, the previous one.
    ok(&load_policy(&s, &bundle(json!({"rate_per_minute": 599}))));
    let (_, text) = fetch();
    let b2 = TrustBundle::parse(text.as_bytes()).unwrap();
    assert_eq!(b2.sequence, b1.sequence + 1);
    assert_eq!(b2.policy_bundles.len(), 2);
    assert_eq!(b2.policy_bundles[1], b1.policy_bundles[0]);
    assert_eq!(bundles(&s), 2);
    // A relying party that saw version 2 refuses version 1 (a rollback).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert_eq!(
        b1.check(now, 3600, Some(b2.sequence)).unwrap_err().code,
        "bundle_rollback"
    );
    b2.check(now, 3600, Some(b2.sequence)).unwrap();
}

/// A PKCS#10 request signed by `rt`'s holder key in its TPM, asking for everything an SVID must
/// not carry: another runtime's ID and a DNS name, a CA flag, serverAuth.
fn greedy_csr(rt: &Runtime) -> Vec<u8> {
    use x509_cert::builder::{Builder, RequestBuilder};
    use x509_cert::der::Encode;
    use x509_cert::der::asn1::{Ia5String, ObjectIdentifier};
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, SubjectAltName};
    let key = rt
        .tpm
        .load_holder_key(&rt.holder, Some(HOLDER_AUTH))
        .unwrap();
    let keypair = writ_hsm::tpm::attester::HolderKeypair {
        signer: HolderSigner {
            tpm: &rt.tpm,
            key,
            bound: None,
        },
        public: holder_jwk(&rt.holder).verifying_key().unwrap(),
    };
    let mut b = RequestBuilder::new("CN=root,O=everything".parse().unwrap()).unwrap();
    b.add_extension(&SubjectAltName(vec![
        GeneralName::UniformResourceIdentifier(
            Ia5String::new(&format!("spiffe://{TD}/runtime/someone-else")).unwrap(),
        ),
        GeneralName::DnsName(Ia5String::new("evil.example").unwrap()),
    ]))
    .unwrap();
    b.add_extension(&BasicConstraints {
        ca: true,
        path_len_constraint: None,
    })
    .unwrap();
    b.add_extension(&ExtendedKeyUsage(vec![ObjectIdentifier::new_unwrap(
        "1.3.6.1.5.5.7.3.1",
    )]))
    .unwrap();
    b.build::<_, p256::ecdsa::DerSignature>(&keypair)
        .unwrap()
        .to_der()
        .unwrap()
}

/// `POST /v1/svid` with `ear` and, with `rt`, a fresh DPoP proof by its holder key.
fn ask_svid(s: &Stack, rt: Option<&Runtime>, ear: Option<&str>, csr: &[u8]) -> (u16, Value) {
    let proof = rt.zip(ear).map(|(rt, ear)| {
        proof_edited(&rt.tpm, &rt.holder, &s.url(), ear, |c| {
            c.htu = format!("{}/v1/svid", s.url())
        })
    });
    ask_svid_with(s, ear, proof.as_deref(), csr)
}

fn ask_svid_with(s: &Stack, ear: Option<&str>, proof: Option<&str>, csr: &[u8]) -> (u16, Value) {
    let mut r = common::agent()
        .post(format!("{}/v1/svid", s.url()))
        .header("Content-Type", "application/json");
    if let Some(e) = ear {
        r = r.header("Authorization", format!("DPoP {e}"));
    }
    if let Some(p) = proof {
        r = r.header("DPoP", p);
    }
    let body = json!({"csr": base64::engine::general_purpose::STANDARD.encode(csr)});
    let mut resp = r.send(body.to_string().as_bytes()).unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[test]
fn an_attested_runtime_gets_an_svid_for_its_holder_key_and_nothing_else() {
    use x509_cert::der::{DecodePem, Encode};
    use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, SubjectAltName};
    let s = Stack::tls();
    assert!(s.url().starts_with("https://"));
    let rt = ready(&s, "svc-1");
    let ear = attest(&s, &rt);
    ok(&load_policy(&s, &bundle(json!({}))));
    let id = format!("spiffe://{TD}/runtime/svc-1");

    // The request asks for more; the SVID carries what writ gives: the runtime's own ID alone,
    // clientAuth only, not a CA, the policy's lifetime, for the holder key.
    let (st, v) = ask_svid(&s, Some(&rt), Some(&ear), &greedy_csr(&rt));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["spiffe_id"], id.as_str());
    let pem = v["certificate"].as_str().unwrap();
    let cert = x509_cert::Certificate::from_pem(pem.as_bytes()).unwrap();
    let tbs = cert.tbs_certificate();
    let (_, san) = tbs.get_extension::<SubjectAltName>().unwrap().unwrap();
    assert_eq!(san.0.len(), 1, "{san:?}");
    assert_eq!(
        writ::tls::spiffe_ids(&cert.to_der().unwrap()).unwrap(),
        std::slice::from_ref(&id)
    );
    let (_, bc) = tbs.get_extension::<BasicConstraints>().unwrap().unwrap();
    assert!(!bc.ca);
    let (_, eku) = tbs.get_extension::<ExtendedKeyUsage>().unwrap().unwrap();
    assert_eq!(
        eku.0,
        [x509_cert::der::asn1::ObjectIdentifier::new_unwrap(
            "1.3.6.1.5.5.7.3.2"
        )]
    );
    let spki = tbs.subject_public_key_info().to_der().unwrap();
    let key = {
        use p256::pkcs8::DecodePublicKey;
        p256::ecdsa::VerifyingKey::from_public_key_der(&spki).unwrap()
    };
    assert_eq!(
        writ_attestation::jwk::EcJwk::from_verifying_key(&key).thumbprint(),
        holder_jwk(&rt.holder).thumbprint()
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expires = v["expires_at"].as_i64().unwrap();
    assert!((250..=310).contains(&(expires - now)), "{expires} - {now}");
    let rec = s.records().pop().unwrap();
    assert_eq!(serde_json::to_value(rec.kind).unwrap(), "svid");
    assert_eq!(rec.subject, id);
    assert_eq!(
        rec.digests["svid"],
        format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                cert.to_der().unwrap()
            ))
        )
    );
    // openssl, an independent validator: a client certificate of the appliance's CA, never a
    // server's.
    let file = s.dir.path().join("svid.pem");
    std::fs::write(&file, pem).unwrap();
    let ca = s.dir.path().join("writ.db.ca.pem");
    let verify = |purpose: &str| {
        std::process::Command::new("openssl")
            .args([
                "verify",
                "-CAfile",
                ca.to_str().unwrap(),
                "-purpose",
                purpose,
            ])
            .arg(&file)
            .output()
            .unwrap()
    };
    assert!(verify("sslclient").status.success());
    assert!(!verify("sslserver").status.success());

    // Refusals, each a `svid` record: a request by a key other than the holder key, one that is
    // not a request, no EAR (unidentified, not logged).
    let other = {
        use x509_cert::builder::{Builder, RequestBuilder};
        let mut d = [7u8; 32];
        getrandom::fill(&mut d).unwrap();
        let k = p256::ecdsa::SigningKey::from_slice(&d).unwrap();
        RequestBuilder::new("O=x".parse().unwrap())
            .unwrap()
            .build::<_, p256::ecdsa::DerSignature>(&k)
            .unwrap()
            .to_der()
            .unwrap()
    };
    let refused_svid = |a: &(u16, Value), code: &str| {
        assert_eq!(a.1["code"], code, "{}", a.1);
        let r = s.records().pop().unwrap();
        assert_eq!(serde_json::to_value(r.kind).unwrap(), "svid");
        assert_eq!(r.reasons, [code]);
        assert!(!r.digests.contains_key("svid"));
    };
    refused_svid(&ask_svid(&s, Some(&rt), Some(&ear), &other), "svid_key");
    let mut tampered = greedy_csr(&rt);
    let n = tampered.len();
    tampered[n - 3] ^= 1;
    refused_svid(&ask_svid(&s, Some(&rt), Some(&ear), &tampered), "svid_csr");
    refused_svid(
        &ask_svid(&s, Some(&rt), Some(&ear), b"not a request"),
        "svid_csr",
    );
    // A proof replayed, or none: refused, logged.
    let csr = greedy_csr(&rt);
    let p = proof_edited(&rt.tpm, &rt.holder, &s.url(), &ear, |c| {
        c.htu = format!("{}/v1/svid", s.url())
    });
    let (st, _) = ask_svid_with(&s, Some(&ear), Some(&p), &csr);
    assert_eq!(st, 200);
    refused_svid(&ask_svid_with(&s, Some(&ear), Some(&p), &csr), "replayed");
    refused_svid(&ask_svid_with(&s, Some(&ear), None, &csr), "proof_missing");
    // A proof for the writ route does not serve here.
    let for_writs = proof(&rt, &s.url(), &ear);
    refused_svid(
        &ask_svid_with(&s, Some(&ear), Some(&for_writs), &csr),
        "proof_binding",
    );
    let size = s.records().len();
    let a = ask_svid(&s, None, None, &greedy_csr(&rt));
    assert_eq!((a.0, a.1["code"].as_str()), (401, Some("ear_missing")));
    assert_eq!(s.records().len(), size);
    // Policy decides: a bundle that permits no SVID.
    let no_svids = bundle(
        json!({"policies": "@id(\"tools-only\")\npermit(principal, action == Action::\"exec\", resource);\n"}),
    );
    ok(&load_policy(&s, &no_svids));
    refused_svid(
        &ask_svid(&s, Some(&rt), Some(&ear), &greedy_csr(&rt)),
        "policy",
    );
    // A contraindicated runtime gets none.
    ok(&load_policy(&s, &bundle(json!({}))));
    rt.tpm.extend_pcr(4, &[3u8; 32]).unwrap();
    let (st, _) = rt.attest(&s);
    assert_eq!(st, 403);
    refused_svid(
        &ask_svid(&s, Some(&rt), Some(&ear), &greedy_csr(&rt)),
        "contraindicated",
    );
}

#[test]
fn writ_agent_gets_an_svid_whose_key_stays_in_the_tpm() {
    let s = Stack::tls();
    let (a, log_file, state) = common::runtime::agent_enrolled(&s, "ci-9");
    let st = state.to_str().unwrap();
    let tcti = s.tpm.tcti();
    assign(&s, "ci-9", &profile_of(&a));
    ok(&s.writ(&[
        "agent",
        "attest",
        "--state",
        st,
        "--tcti",
        &tcti,
        "--event-log",
        log_file.to_str().unwrap(),
    ]));
    ok(&load_policy(&s, &bundle(json!({}))));
    let out_file = s.dir.path().join("ci-9.svid.pem");
    let out = s.writ(&[
        "agent",
        "svid",
        "--state",
        st,
        "--tcti",
        &tcti,
        "--out",
        out_file.to_str().unwrap(),
    ]);
    ok(&out);
    let pem = std::fs::read(&out_file).unwrap();
    let der = {
        use x509_cert::der::{DecodePem, Encode};
        x509_cert::Certificate::from_pem(&pem)
            .unwrap()
            .to_der()
            .unwrap()
    };
    assert_eq!(
        writ::tls::spiffe_ids(&der).unwrap(),
        [format!("spiffe://{TD}/runtime/ci-9")]
    );
    let (_, _, decision, _) = last(&s);
    assert_eq!(decision, "allow");

    // A standard TLS server (openssl s_server) that requires a client certificate of writ's CA
    // accepts the SVID from a standard TLS client (rustls, `writ agent get`) whose handshake
    // signature the TPM makes with the holder key.
    let dir = s.dir.path();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "web-ca.key",
    ]);
    run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "web-ca.key",
        "-subj",
        "/CN=web test CA",
        "-days",
        "1",
        "-addext",
        "basicConstraints=critical,CA:true",
        "-addext",
        "keyUsage=critical,keyCertSign",
        "-out",
        "web-ca.pem",
    ]);
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "web.key",
    ]);
    run(&[
        "req",
        "-new",
        "-key",
        "web.key",
        "-subj",
        "/CN=localhost",
        "-out",
        "web.csr",
    ]);
    std::fs::write(
        dir.join("web.ext"),
        "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:false\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "web.csr",
        "-CA",
        "web-ca.pem",
        "-CAkey",
        "web-ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "web.ext",
        "-out",
        "web.pem",
    ]);
    let (_, ca_pem) = common::stack::get(&s.url(), "/v1/ca.pem");
    std::fs::write(dir.join("writ-ca.pem"), ca_pem).unwrap();
    let s_server = |client_ca: Option<&str>| {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut args: Vec<String> = [
            "s_server",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-cert",
            "web.pem",
            "-key",
            "web.key",
            "-www",
            "-quiet",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        if let Some(ca) = client_ca {
            args.extend(["-CAfile", ca, "-Verify", "1", "-verify_return_error"].map(String::from));
        }
        let child = std::process::Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "s_server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        (port, ChildGuard(child))
    };
    let get = |port: u16| {
        s.writ(&[
            "agent",
            "get",
            "--state",
            st,
            "--tcti",
            &tcti,
            "--url",
            &format!("https://localhost:{port}/"),
            "--svid",
            out_file.to_str().unwrap(),
            "--ca",
            dir.join("web-ca.pem").to_str().unwrap(),
        ])
    };
    let (port, _server) = s_server(Some("writ-ca.pem"));
    let out = get(port);
    ok(&out);
    let page = String::from_utf8_lossy(&out.stdout);
    // s_server -www shows the client certificate it verified: the SVID, with its SPIFFE ID.
    assert!(page.contains("Client certificate"), "{page}");
    assert!(
        page.contains(&format!("URI:spiffe://{TD}/runtime/ci-9")),
        "{page}"
    );
    // A server that trusts another CA for its clients refuses the handshake.
    let (port, _other) = s_server(Some("web-ca.pem"));
    let out = get(port);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("TLS"), "{err}");
    // A server that never asks for the client certificate: the SVID would not be presented, and
    // that is an error, not a quiet success.
    let (port, _plain) = s_server(None);
    let out = get(port);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not presented"), "{err}");
}

/// Kills a child process when dropped.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn issuer_and_ear_keys_rotate_without_an_outage() {
    use writ_attestation::writ::bundle::TrustBundle;
    let mut s = Stack::new();
    let rt = ready(&s, "rot-1");
    let ear_1 = attest(&s, &rt);
    ok(&load_policy(&s, &bundle(json!({"writ_lifetime_s": 300}))));
    let issue = |s: &Stack, ear: &str| {
        let (st, v) = request(
            s,
            Some(ear),
            Some(&proof(&rt, &s.url(), ear)),
            &body("tools/build"),
        );
        assert_eq!(st, 200, "{v}");
        v["writ"].as_str().unwrap().to_string()
    };
    let kid = |writ: &str| {
        writ_attestation::writ::jws::parse(
            writ,
            "writ+jwt",
            writ_attestation::writ::jws::HeaderShape::Kid,
        )
        .unwrap()
        .kid()
        .unwrap()
        .to_string()
    };
    // What a gateway holding `bundle` decides about `writ` (checked, not consumed).
    let at_gateway = |bundle: &TrustBundle, writ: &str| {
        let htu = format!("exec:{REQ}");
        let p = proof_edited(&rt.tpm, &rt.holder, "", writ, |c| {
            c.htm = "EXEC".into();
            c.htu = htu.clone();
        });
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        writ_attestation::writ::verify::check(
            writ_attestation::crypto::default_provider(),
            bundle,
            &writ_attestation::writ::verify::Context {
                token: writ,
                proof: Some(&p),
                request_digest: REQ,
                htm: "EXEC",
                htu: &htu,
                audience: AUDIENCE,
                now,
                skew: 60,
                nonce: None,
                max_bundle_age: 3600,
            },
        )
        .map(|_| ())
        .map_err(|r| r.code)
    };

    // Key A signs.
    let w1 = issue(&s, &ear_1);
    let b0 = trust_bundle(&s);
    at_gateway(&b0, &w1).unwrap();
    let key_a = s.issuer_key.clone();
    let ear_key_1 = s.ear_key.clone();

    // 1. Key B is published beside A before it signs anything.
    let key_b = common::softhsm_key(&s.hsm, "issuer-b", "issuer");
    s.extra = vec!["--publish-issuer-key".into(), key_b.clone()];
    s.kill_and_restart();
    let b1 = trust_bundle(&s);
    assert_eq!(b1.sequence, b0.sequence + 1);
    let issuers = |b: &TrustBundle| {
        b.keys
            .iter()
            .filter(|k| k.purpose == writ_attestation::writ::bundle::Purpose::Issuer)
            .count()
    };
    assert_eq!(issuers(&b1), 2);
    let w2 = issue(&s, &ear_1);
    assert_eq!(kid(&w2), kid(&w1));
    at_gateway(&b1, &w1).unwrap();

    // 2. B signs; A stays published until what it signed has expired. The ear key rotates the
    // same way at the same time: EARs signed by the old one still serve while it is published.
    let ear_key_2 = common::softhsm_key(&s.hsm, "ear-2", "ear");
    s.issuer_key = key_b.clone();
    s.ear_key = ear_key_2.clone();
    s.extra = vec![
        "--publish-issuer-key".into(),
        key_a.clone(),
        "--publish-ear-key".into(),
        ear_key_1.clone(),
    ];
    s.kill_and_restart();
    let b2 = trust_bundle(&s);
    assert_eq!(b2.sequence, b1.sequence + 1);
    let w3 = issue(&s, &ear_1);
    assert_ne!(kid(&w3), kid(&w1));
    for w in [&w1, &w2, &w3] {
        at_gateway(&b2, w).unwrap();
    }
    // A gateway that has not refreshed since before B was published refuses B's writs.
    assert_eq!(at_gateway(&b0, &w3).unwrap_err(), "key_unknown");
    let ear_2 = attest(&s, &rt);

    // 3. A leaves the bundle, and with it everything A signed; the old ear key too.
    s.extra = Vec::new();
    s.kill_and_restart();
    let b3 = trust_bundle(&s);
    assert_eq!(b3.sequence, b2.sequence + 1);
    assert_eq!(issuers(&b3), 1);
    assert_eq!(at_gateway(&b3, &w1).unwrap_err(), "key_unknown");
    assert_eq!(at_gateway(&b3, &w2).unwrap_err(), "key_unknown");
    at_gateway(&b3, &w3).unwrap();
    let a = request(
        &s,
        Some(&ear_1),
        Some(&proof(&rt, &s.url(), &ear_1)),
        &body("tools/build"),
    );
    assert_eq!(
        (a.0, a.1["code"].as_str()),
        (401, Some("ear_invalid")),
        "{}",
        a.1
    );
    at_gateway(&b3, &issue(&s, &ear_2)).unwrap();
    // The appliance refuses to start with a published key that is also another purpose's (the
    // ca key included).
    let refused_start = |keys: &[&str]| {
        let mut args = vec![
            "serve",
            "--store",
            &s.store,
            "--checkpoint-key",
            &s.key,
            "--listen",
            "127.0.0.1:0",
            "--trust-domain",
            TD,
            "--issuer-key",
            &key_b,
        ];
        args.extend(keys);
        let out = s.writ(&args);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let ca = common::softhsm_key(&s.hsm, "ca-x", "ca");
    let err = refused_start(&["--ca-key", &ca, "--publish-issuer-key", &ca]);
    assert!(err.contains("also the ca key"), "{err}");
    let err = refused_start(&["--publish-ear-key", &key_b]);
    assert!(err.contains("one key, one purpose"), "{err}");
}

#[test]
fn writ_admin_rotate_key_rotates_without_a_restart() {
    use writ_attestation::writ::bundle::{Purpose, TrustBundle};
    let mut s = Stack::new();
    let rt = ready(&s, "rot-2");
    let ear_1 = attest(&s, &rt);
    ok(&load_policy(
        &s,
        &bundle(json!({"writ_lifetime_s": 3, "max_writ_lifetime_s": 3})),
    ));
    let issue = |s: &Stack, ear: &str| {
        let (st, v) = request(
            s,
            Some(ear),
            Some(&proof(&rt, &s.url(), ear)),
            &body("tools/build"),
        );
        assert_eq!(st, 200, "{v}");
        v["writ"].as_str().unwrap().to_string()
    };
    let kid = |token: &str, typ: &str| {
        writ_attestation::writ::jws::parse(
            token,
            typ,
            writ_attestation::writ::jws::HeaderShape::Kid,
        )
        .unwrap()
        .kid()
        .unwrap()
        .to_string()
    };
    let issuers = |b: &TrustBundle| -> Vec<String> {
        b.keys
            .iter()
            .filter(|k| k.purpose == Purpose::Issuer)
            .map(|k| k.kid.clone())
            .collect()
    };
    let at_gateway = |bundle: &TrustBundle, writ: &str| {
        let htu = format!("exec:{REQ}");
        let p = proof_edited(&rt.tpm, &rt.holder, "", writ, |c| {
            c.htm = "EXEC".into();
            c.htu = htu.clone();
        });
        writ_attestation::writ::verify::check(
            writ_attestation::crypto::default_provider(),
            bundle,
            &writ_attestation::writ::verify::Context {
                token: writ,
                proof: Some(&p),
                request_digest: REQ,
                htm: "EXEC",
                htu: &htu,
                audience: AUDIENCE,
                now: now_s(),
                skew: 0,
                nonce: None,
                max_bundle_age: 3600,
            },
        )
        .map(|_| ())
        .map_err(|r| r.code)
    };

    let w1 = issue(&s, &ear_1);
    let b0 = trust_bundle(&s);
    let kid_a = kid(&w1, "writ+jwt");
    assert_eq!(issuers(&b0), std::slice::from_ref(&kid_a));

    // Refused: another purpose's key, a purpose whose rotation is not built.
    let rotate = |s: &Stack, purpose: &str, uri: &str| {
        s.admin(&[
            "rotate-key",
            "--purpose",
            purpose,
            "--key-uri",
            uri,
            "--overlap-s",
            "2",
            "--skew-s",
            "0",
        ])
    };
    let out = rotate(&s, "issuer", &s.ear_key);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("key_in_use"));
    let out = rotate(&s, "issuer", &s.key);
    assert!(String::from_utf8_lossy(&out.stderr).contains("key_in_use"));
    let out = rotate(&s, "checkpoint", &s.key);
    assert!(!out.status.success());
    // A request names which key, never another library, token or TPM to open.
    let elsewhere = s
        .hsm
        .key_uri("issuer-x")
        .replace(&format!("token={}", s.hsm.label()), "token=another");
    for uri in [
        elsewhere,
        s.hsm
            .key_uri("issuer-x")
            .replace("libsofthsm2.so", "../../tmp/evil.so"),
        "tpm:handle=0x81000101?tcti=swtpm:host=198.51.100.1,port=2321&auth-source=file:/etc/hostname"
            .to_string(),
    ] {
        let out = rotate(&s, "issuer", &uri);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("the device of the key it replaces"), "{err}");
    }

    // One command: B is published now and signs two seconds later, with no restart.
    let key_b = common::softhsm_key(&s.hsm, "issuer-r", "issuer");
    let out = rotate(&s, "issuer", &key_b);
    ok(&out);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (signs_from, retires_at) = (
        r["signs_from"].as_i64().unwrap(),
        r["previous_retires_at"].as_i64().unwrap(),
    );
    assert_eq!(retires_at, signs_from + 3);
    assert_eq!(r["previous_kid"], kid_a.as_str());
    let kid_b = r["kid"].as_str().unwrap().to_string();
    // Recorded: the admin's decision naming the new key, then the bundle version publishing it.
    let records = s.records();
    let n = records.len();
    assert_eq!(serde_json::to_value(records[n - 1].kind).unwrap(), "bundle");
    assert_eq!(serde_json::to_value(records[n - 2].kind).unwrap(), "admin");
    assert!(records[n - 2].digests.contains_key("rotated_issuer_key"));
    let b1 = trust_bundle(&s);
    assert_eq!(b1.sequence, b0.sequence + 1);
    assert_eq!(issuers(&b1), [kid_a.clone(), kid_b.clone()]);
    // A second rotation while B waits to sign: refused.
    let key_c = common::softhsm_key(&s.hsm, "issuer-c", "issuer");
    let out = rotate(&s, "issuer", &key_c);
    assert!(String::from_utf8_lossy(&out.stderr).contains("rotation_in_progress"));
    // Before B signs, A does; after, B does. Gateways with the bundle from before B was
    // published refuse B's writs; with the bundle of the overlap they take both.
    let w2 = issue(&s, &ear_1);
    assert_eq!(kid(&w2, "writ+jwt"), kid_a);
    at_gateway(&b1, &w2).unwrap();
    wait_until(signs_from);
    let w3 = issue(&s, &ear_1);
    assert_eq!(kid(&w3, "writ+jwt"), kid_b);
    at_gateway(&b1, &w3).unwrap();
    assert_eq!(at_gateway(&b0, &w3), Err("key_unknown"));
    // A policy bundle with a longer writ lifetime while A may have signed under it: A leaves
    // that much later (two seconds more).
    ok(&load_policy(
        &s,
        &bundle(json!({"writ_lifetime_s": 3, "max_writ_lifetime_s": 5})),
    ));
    let b1 = trust_bundle(&s);
    assert_eq!(issuers(&b1), [kid_a.clone(), kid_b.clone()]);
    wait_until(retires_at + 1);
    assert_eq!(trust_bundle(&s).sequence, b1.sequence);
    let retires_at = retires_at + 2;
    // A leaves the bundle when what it signed has expired (checked every second): never after.
    wait_until(retires_at + 2);
    let b2 = trust_bundle(&s);
    assert_eq!(b2.sequence, b1.sequence + 1);
    assert_eq!(issuers(&b2), std::slice::from_ref(&kid_b));
    assert_eq!(at_gateway(&b2, &w2), Err("key_unknown"));

    // The ear key the same way: EARs signed by the previous one still serve while it is
    // published; attestations after the overlap are signed by the new one.
    let ear_b = common::softhsm_key(&s.hsm, "ear-r", "ear");
    ok(&rotate(&s, "ear", &ear_b));
    wait_until(now_s() + 3);
    let w4 = issue(&s, &ear_1);
    assert_eq!(kid(&w4, "writ+jwt"), kid_b);
    let ear_2 = attest(&s, &rt);
    assert_ne!(kid(&ear_2, "ear+jwt"), kid(&ear_1, "ear+jwt"));
    issue(&s, &ear_2);

    // The schedule outlives a restart: the configured key (A) is in the history, B still signs.
    s.kill_and_restart();
    let w5 = issue(&s, &ear_2);
    assert_eq!(kid(&w5, "writ+jwt"), kid_b);
    assert_eq!(issuers(&trust_bundle(&s)), std::slice::from_ref(&kid_b));
    // A configured key the history does not know refuses the start.
    drop(s.server.take());
    let out = s.writ(&[
        "serve",
        "--store",
        &s.store,
        "--checkpoint-key",
        &s.key,
        "--issuer-key",
        &key_c,
        "--ear-key",
        &s.ear_key,
        "--listen",
        "127.0.0.1:0",
        "--trust-domain",
        TD,
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rotation history"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A scheduled key configured for another purpose (here B as the ca key) refuses the start.
    let out = s.writ(&[
        "serve",
        "--store",
        &s.store,
        "--checkpoint-key",
        &s.key,
        "--issuer-key",
        &s.issuer_key,
        "--ear-key",
        &s.ear_key,
        "--ca-key",
        &key_b,
        "--listen",
        "127.0.0.1:0",
        "--trust-domain",
        TD,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("also the ca key"), "{err}");
}

/// The checkpoint key rotates without a restart: the new key is published first, both sign
/// every checkpoint from its `signs_from` until the old one leaves, the old one leaves when the
/// writs whose inclusion bundles carry checkpoints it signed alone have expired; the log stays
/// verifiable across it (inclusion bundles by the bundles of each time, the auditor's memory).
#[test]
fn the_checkpoint_key_rotates_with_both_keys_signing_during_the_overlap() {
    use writ_attestation::log::note::Checkpoint;
    use writ_attestation::writ::bundle::TrustBundle;
    let mut s = Stack::new();
    let rt = ready(&s, "rot-cp");
    let ear = attest(&s, &rt);
    ok(&load_policy(
        &s,
        &bundle(json!({"writ_lifetime_s": 3, "max_writ_lifetime_s": 3})),
    ));
    let issue = |s: &Stack| {
        let (st, v) = request(
            s,
            Some(&ear),
            Some(&proof(&rt, &s.url(), &ear)),
            &body("tools/build"),
        );
        assert_eq!(st, 200, "{v}");
        v["writ"].as_str().unwrap().to_string()
    };
    // The writ's inclusion bundle, against the latest checkpoint.
    let inclusion = |s: &Stack, writ: &str| {
        let want = sha256(writ);
        s.covered();
        let index = s
            .records()
            .iter()
            .position(|r| r.digests.get("writ") == Some(&want))
            .unwrap();
        let (st, text) = common::stack::get(&s.url(), &format!("/v1/log/bundle?index={index}"));
        assert_eq!(st, 200, "{text}");
        text
    };
    // What a gateway checks: the checkpoint signed by a log key of its bundle.
    let included = |b: &TrustBundle, inclusion: &str| {
        writ_attestation::log::audit::verify_bundle(
            writ_attestation::crypto::default_provider(),
            inclusion.as_bytes(),
            &b.log_keys().unwrap(),
            &b.log_origin,
        )
        .map(|_| ())
    };
    let signatures = |inclusion: &str| {
        let v: Value = serde_json::from_str(inclusion).unwrap();
        let note = v["checkpoint"].as_str().unwrap().to_string();
        note.split("\n\n").nth(1).unwrap().lines().count()
    };
    let state = s.dir.path().join("audit.cp");
    let audit = |s: &Stack, keys: &[&str]| {
        let url = s.url();
        let mut args = vec!["audit", "check", "--log", &url];
        for k in keys {
            args.extend(["--key", k]);
        }
        args.extend(["--state", state.to_str().unwrap()]);
        s.writ(&args)
    };

    let b0 = trust_bundle(&s);
    let key_a = b0.log_verifier_key.clone();
    assert_eq!(b0.log_verifier_keys, std::slice::from_ref(&key_a));
    let w1 = issue(&s);
    let i1 = inclusion(&s, &w1);
    assert_eq!(signatures(&i1), 1);
    included(&b0, &i1).unwrap();
    ok(&audit(&s, &[&key_a]));

    // Refused: a key of another purpose, a key of another device.
    let rotate = |s: &Stack, uri: &str| {
        s.admin(&[
            "rotate-key",
            "--purpose",
            "checkpoint",
            "--key-uri",
            uri,
            "--overlap-s",
            "4",
            "--skew-s",
            "0",
        ])
    };
    for other in [&s.issuer_key, &s.ear_key] {
        let out = rotate(&s, other);
        assert!(String::from_utf8_lossy(&out.stderr).contains("key_in_use"));
    }
    let out = rotate(
        &s,
        &s.hsm
            .key_uri("cp-x")
            .replace(&format!("token={}", s.hsm.label()), "token=another"),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("the device of the key it replaces"));

    // B is published now, signs from four seconds on; A signs alone until then.
    let key_b_uri = common::softhsm_key(&s.hsm, "checkpoint-r", "checkpoint");
    let out = rotate(&s, &key_b_uri);
    ok(&out);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (signs_from, retires_at) = (
        r["signs_from"].as_i64().unwrap(),
        r["previous_retires_at"].as_i64().unwrap(),
    );
    assert_eq!(retires_at, signs_from + 3);
    let records = s.records();
    let n = records.len();
    assert_eq!(serde_json::to_value(records[n - 1].kind).unwrap(), "bundle");
    assert!(
        records[n - 2]
            .digests
            .contains_key("rotated_checkpoint_key")
    );
    // A policy bundle with a longer writ lifetime while A signs alone: A's checkpoints travel
    // with writs that live that much longer, so A leaves three seconds later.
    ok(&load_policy(
        &s,
        &bundle(json!({"writ_lifetime_s": 3, "max_writ_lifetime_s": 6})),
    ));
    let retires_at = retires_at + 3;
    let b1 = trust_bundle(&s);
    assert_eq!(b1.sequence, b0.sequence + 2);
    assert_eq!(b1.log_verifier_key, key_a);
    assert_eq!(b1.log_verifier_keys.len(), 2);
    let key_b = b1.log_verifier_keys[1].clone();
    assert_ne!(key_b, key_a);
    // B is the log's now: no other purpose may take it.
    let out = s.admin(&["rotate-key", "--purpose", "issuer", "--key-uri", &key_b_uri]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("key_in_use"));
    // A bundle of B alone, as a relying party holds it after A left.
    let only_b = {
        let mut b = b1.clone();
        b.log_verifier_key = key_b.clone();
        b.log_verifier_keys = vec![key_b.clone()];
        b
    };
    let w2 = issue(&s);
    let i2 = inclusion(&s, &w2);
    assert_eq!(signatures(&i2), 1, "B does not sign before its time");
    included(&b0, &i2).unwrap();
    assert!(included(&only_b, &i2).is_err());

    // The overlap: every checkpoint signed by both, verified by a bundle of either key.
    wait_until(signs_from + 1);
    let w3 = issue(&s);
    let i3 = inclusion(&s, &w3);
    assert_eq!(signatures(&i3), 2);
    included(&b0, &i3).unwrap();
    included(&only_b, &i3).unwrap();
    included(&b1, &i3).unwrap();
    // The auditor that pinned A follows the log through the overlap, and remembers a checkpoint
    // both signed.
    ok(&audit(&s, &[&key_a]));

    // A restart during the overlap: both still sign.
    s.kill_and_restart();
    let w4 = issue(&s);
    let i4 = inclusion(&s, &w4);
    assert_eq!(signatures(&i4), 2);

    // A leaves the bundle when what it signed alone has expired (checked every second); from
    // then on only B signs, and a checkpoint A signed alone is refused by the new bundle.
    // Not at the first departure time: the policy bundle moved it.
    wait_until(retires_at - 2);
    assert_eq!(trust_bundle(&s).log_verifier_keys.len(), 2);
    wait_until(retires_at + 2);
    let b2 = trust_bundle(&s);
    assert_eq!(b2.sequence, b1.sequence + 1);
    assert_eq!(b2.log_verifier_keys, std::slice::from_ref(&key_b));
    assert_eq!(b2.log_verifier_key, key_b);
    let w5 = issue(&s);
    let i5 = inclusion(&s, &w5);
    assert_eq!(signatures(&i5), 1);
    included(&b2, &i5).unwrap();
    assert!(included(&b0, &i5).is_err());
    assert!(included(&b2, &i1).is_err());
    included(&b2, &i3).unwrap();
    // The auditor with A alone now finds no signature it knows (and is told why); with B alone
    // it goes on from the checkpoint it remembered (signed by both): the log only grew.
    let out = audit(&s, &[&key_a]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("REFUSED") && text.contains("pass its new key too"),
        "{text}"
    );
    // An auditor that trusts A alone follows the rotation through B's endorsement by A.
    let url = s.url();
    let out = s.writ(&[
        "audit",
        "check",
        "--log",
        &url,
        "--key",
        &key_a,
        "--follow-rotations",
        "--state",
        s.dir.path().join("audit-follow.cp").to_str().unwrap(),
    ]);
    ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("followed: endorsed by key"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = audit(&s, &[&key_b]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("consistent: remembered"));
    // The inclusion bundle of the overlap, verified offline by the auditor with B alone.
    let f = s.dir.path().join("i3.json");
    std::fs::write(&f, &i3).unwrap();
    ok(&s.writ(&["audit", "bundle", "--key", &key_b, f.to_str().unwrap()]));
    let f1 = s.dir.path().join("i1.json");
    std::fs::write(&f1, &i1).unwrap();
    let out = s.writ(&["audit", "bundle", "--key", &key_b, f1.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));

    // The schedule outlives a restart: the configured key (A, retired) is in the history; B
    // signs, and the stored checkpoints (signed by A, both, B) verify at start.
    s.kill_and_restart();
    let w6 = issue(&s);
    let i6 = inclusion(&s, &w6);
    assert_eq!(signatures(&i6), 1);
    included(&b2, &i6).unwrap();
    let note: String = common::stack::get(&s.url(), "/v1/log/checkpoint").1;
    let b_verifier = writ_attestation::log::note::NoteVerifier::parse(&key_b).unwrap();
    Checkpoint::verify(
        writ_attestation::crypto::default_provider(),
        &note,
        &b_verifier,
        "writ.test/log",
    )
    .unwrap();
    // A checkpoint key the history does not know refuses the start.
    drop(s.server.take());
    let stranger = common::softhsm_key(&s.hsm, "checkpoint-x", "checkpoint");
    let out = s.writ(&[
        "serve",
        "--store",
        &s.store,
        "--checkpoint-key",
        &stranger,
        "--origin",
        "writ.test/log",
        "--issuer-key",
        &s.issuer_key,
        "--ear-key",
        &s.ear_key,
        "--listen",
        "127.0.0.1:0",
        "--trust-domain",
        TD,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rotation history"), "{err}");
}

/// The trust bundle the appliance serves now.
fn trust_bundle(s: &Stack) -> writ_attestation::writ::bundle::TrustBundle {
    let (st, text) = common::stack::get(&s.url(), "/v1/bundle");
    assert_eq!(st, 200, "{text}");
    writ_attestation::writ::bundle::TrustBundle::parse(text.as_bytes()).unwrap()
}

/// Sleeps until the unix time `t`.
fn wait_until(t: i64) {
    while now_s() < t {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `openssl verify -purpose sslclient` of the certificate `pem` against the CA certificates
/// `cas` (DER) alone.
fn chains_to(dir: &std::path::Path, pem: &str, cas: &[&[u8]]) -> bool {
    let (cert, ca) = (dir.join("chain.pem"), dir.join("chain-ca.pem"));
    std::fs::write(&cert, pem).unwrap();
    let text: String = cas.iter().map(|c| writ::tls::pem(c).unwrap()).collect();
    std::fs::write(&ca, text).unwrap();
    std::process::Command::new("openssl")
        .args(["verify", "-purpose", "sslclient", "-CAfile"])
        .arg(&ca)
        .arg(&cert)
        .output()
        .unwrap()
        .status
        .success()
}

/// The CA certificates (DER) of a kept CA file.
fn kept_cas(path: &std::path::Path) -> Vec<Vec<u8>> {
    kept_cas_of(&std::fs::read_to_string(path).unwrap())
}

/// The certificates (DER) of a PEM text, explanatory lines skipped.
fn kept_cas_of(pem: &str) -> Vec<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap().to_vec())
        .collect()
}

#[test]
fn the_ca_key_rotates_under_running_clients() {
    use base64::engine::general_purpose::STANDARD;
    let mut s = Stack::tls_with(&["--ear-ttl", "10"]);
    let d = s.dir.path().to_path_buf();
    let rt = ready(&s, "rot-ca");
    ok(&load_policy(&s, &bundle(json!({}))));
    let fp_a = s.server.as_ref().unwrap().fingerprint.clone().unwrap();
    let token = d.join("admin.token");
    // An admin that keeps its CAs in a file, pinned by fingerprint.
    let admin_with = |s: &Stack, fp: &str, file: Option<&std::path::Path>, args: &[&str]| {
        let url = s.url();
        let mut a = vec![
            "admin",
            "--server",
            &url,
            "--token-file",
            token.to_str().unwrap(),
            "--fingerprint",
            fp,
        ];
        if let Some(f) = file {
            a.extend(["--ca-file", f.to_str().unwrap()]);
        }
        a.extend(args);
        s.writ(&a)
    };
    let (kept, stale) = (d.join("kept-ca.pem"), d.join("stale-ca.pem"));
    ok(&admin_with(&s, &fp_a, Some(&kept), &["runtimes"]));
    ok(&admin_with(&s, &fp_a, Some(&stale), &["runtimes"]));
    let ca_a = kept_cas(&kept);
    assert_eq!(ca_a.len(), 1);
    assert_eq!(writ::tls::fingerprint(&ca_a[0]), fp_a);
    let svid = |s: &Stack| {
        let ear = attest(s, &rt);
        let (st, v) = ask_svid(s, Some(&rt), Some(&ear), &greedy_csr(&rt));
        assert_eq!(st, 200, "{v}");
        v["certificate"].as_str().unwrap().to_string()
    };
    let bundle_cas = |s: &Stack| -> Vec<Vec<u8>> {
        let (st, text) = common::stack::get(&s.url(), "/v1/bundle");
        assert_eq!(st, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["use"] == "x509-svid")
            .map(|k| STANDARD.decode(k["x5c"][0].as_str().unwrap()).unwrap())
            .collect()
    };
    let before = svid(&s);
    assert!(chains_to(&d, &before, &[&ca_a[0]]));
    // An admin certificate of A, revoked: it does not hold A back, and it is refused by its
    // revocation while A is trusted, at the handshake once A has gone.
    // An admin certificate for `name` (an hour), issued with the token: its certificate and key.
    let issue_cert = |s: &Stack, name: &str| {
        let (cert, key) = (d.join(format!("{name}.pem")), d.join(format!("{name}.key")));
        ok(&admin_with(
            s,
            &fp_a,
            Some(&kept),
            &[
                "issue-cert",
                "--name",
                name,
                "--key-out",
                key.to_str().unwrap(),
                "--cert-out",
                cert.to_str().unwrap(),
                "--hours",
                "1",
            ],
        ));
        (cert, key)
    };
    let (early_cert, early_key) = issue_cert(&s, "early");
    ok(&admin_with(
        &s,
        &fp_a,
        Some(&kept),
        &["revoke-admin", "early"],
    ));
    let with_cert = |s: &Stack, cert: &std::path::Path, key: &std::path::Path| {
        let url = s.url();
        s.writ(&[
            "admin",
            "--server",
            &url,
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--ca-file",
            kept.to_str().unwrap(),
            "runtimes",
        ])
    };

    // Refused: another purpose's key; a key on another device.
    let rotate = |s: &Stack, uri: &str| {
        s.admin(&[
            "rotate-key",
            "--purpose",
            "ca",
            "--key-uri",
            uri,
            "--overlap-s",
            "4",
            "--skew-s",
            "0",
        ])
    };
    let out = rotate(&s, &s.issuer_key);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("key_in_use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let elsewhere = s
        .hsm
        .key_uri("ca-x")
        .replace(&format!("token={}", s.hsm.label()), "token=another");
    let out = rotate(&s, &elsewhere);
    assert!(String::from_utf8_lossy(&out.stderr).contains("the device of the key it replaces"));

    // One command: B and its CA certificate are published now; B signs 4 s later.
    let key_b = common::softhsm_key(&s.hsm, "ca-r", "ca");
    let out = rotate(&s, &key_b);
    ok(&out);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (signs_from, retires_at) = (
        r["signs_from"].as_i64().unwrap(),
        r["previous_retires_at"].as_i64().unwrap(),
    );
    // No admin or gateway certificate outstanding: A leaves when its last SVID (no longer than
    // its EAR) has expired.
    assert_eq!(retires_at, signs_from + 10);
    assert_eq!(r["previous_clients_until"].as_i64(), Some(retires_at));
    let fp_b = r["ca_fingerprint"].as_str().unwrap().to_string();
    assert_ne!(fp_b, fp_a);
    let records = s.records();
    let n = records.len();
    assert_eq!(serde_json::to_value(records[n - 1].kind).unwrap(), "bundle");
    assert!(records[n - 2].digests.contains_key("rotated_ca_key"));
    let listed = bundle_cas(&s);
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0], ca_a[0]);
    let ca_b = listed[1].clone();
    assert_eq!(writ::tls::fingerprint(&ca_b), fp_b);
    // A second rotation waits for this one.
    let out = rotate(&s, &common::softhsm_key(&s.hsm, "ca-s", "ca"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rotation_in_progress"));

    // During the overlap: A still signs the server certificate and SVIDs; a client that keeps
    // its CAs learns B from the bundle; one pinning B alone cannot connect yet.
    let during = svid(&s);
    assert!(chains_to(&d, &during, &[&ca_a[0]]));
    assert!(!chains_to(&d, &during, &[&ca_b]));
    ok(&admin_with(&s, &fp_a, Some(&kept), &["runtimes"]));
    assert_eq!(kept_cas(&kept), [ca_a[0].clone(), ca_b.clone()]);
    assert!(!admin_with(&s, &fp_b, None, &["runtimes"]).status.success());
    assert_eq!(
        with_cert(&s, &early_cert, &early_key).status.code(),
        Some(1)
    );
    // An admin certificate issued once every replica trusts B comes from B (only the appliance
    // verifies it, and it trusts every published CA) and authenticates.
    wait_until(signs_from - 4 + 2);
    let (cert, key) = issue_cert(&s, "bob");
    let bob_pem = std::fs::read_to_string(&cert).unwrap();
    assert!(chains_to(&d, &bob_pem, &[&ca_b]));
    ok(&with_cert(&s, &cert, &key));

    // From signs_from (and the next tick): B signs the server certificate and SVIDs.
    wait_until(signs_from + 2);
    ok(&admin_with(&s, &fp_b, None, &["runtimes"]));
    let after = svid(&s);
    assert!(chains_to(&d, &after, &[&ca_b]));
    assert!(!chains_to(&d, &after, &[&ca_a[0]]));
    ok(&admin_with(&s, &fp_a, Some(&kept), &["runtimes"]));
    ok(&with_cert(&s, &cert, &key));
    // A client that kept A alone and made no request during the overlap: refused, naming why.
    let out = admin_with(&s, &fp_a, Some(&stale), &["runtimes"]);
    assert!(!out.status.success());
    assert_eq!(kept_cas(&stale), &ca_a[..1]);

    // A leaves the bundle when its SVIDs have expired; clients follow. A's fingerprint no
    // longer names the kept file: pinning it is refused, naming the fix.
    wait_until(retires_at + 2);
    assert_eq!(bundle_cas(&s), std::slice::from_ref(&ca_b));
    ok(&with_cert(&s, &cert, &key));
    assert_eq!(kept_cas(&kept), std::slice::from_ref(&ca_b));
    let out = admin_with(&s, &fp_a, Some(&kept), &["runtimes"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("remove the file to bootstrap again"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&admin_with(&s, &fp_b, Some(&kept), &["runtimes"]));
    // A's (revoked) certificate no longer reaches the appliance: refused at the handshake.
    assert_eq!(
        with_cert(&s, &early_cert, &early_key).status.code(),
        Some(2)
    );
    // Bootstrapping with A's fingerprint no longer works: A is not served.
    let out = admin_with(&s, &fp_a, Some(&d.join("new-ca.pem")), &["runtimes"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not the pinned"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A kept file pinned to neither: refused before anything is sent.
    let out = admin_with(
        &s,
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        Some(&kept),
        &["runtimes"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("pin one of them"));

    // A restart with A still configured: the schedule's CA signs, and the printed fingerprint
    // is B's.
    s.kill_and_restart();
    assert_eq!(
        s.server.as_ref().unwrap().fingerprint.as_deref(),
        Some(fp_b.as_str())
    );
    ok(&admin_with(&s, &fp_b, Some(&kept), &["runtimes"]));
    assert!(chains_to(&d, &svid(&s), &[&ca_b]));
    let (st, pem) = common::stack::get(&s.url(), "/v1/ca.pem");
    assert_eq!(st, 200);
    assert_eq!(kept_cas_of(&pem), std::slice::from_ref(&ca_b));
}

#[test]
fn writ_agent_keeps_the_trust_bundle_refuses_a_lower_sequence_and_checks_the_writs_signer() {
    let s = Stack::new();
    let state = attested_agent(&s, "ci-b");
    let st = state.to_str().unwrap();
    let tcti = s.tpm.tcti();
    let request = || {
        s.writ(&[
            "agent",
            "request",
            "--state",
            st,
            "--tcti",
            &tcti,
            "--action",
            "exec",
            "--resource",
            "tools/build",
            "--audience",
            AUDIENCE,
            "--tool",
            "build",
            "--",
            "make",
        ])
    };
    ok(&request());
    let kept_file = state.join("bundle.json");
    let kept: Value = serde_json::from_slice(&std::fs::read(&kept_file).unwrap()).unwrap();
    let served = trust_bundle(&s);
    assert_eq!(kept["spiffe_sequence"].as_u64(), Some(served.sequence));
    let set_old = |path: &std::path::Path| {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3000))
            .unwrap();
    };

    // A kept bundle whose issuer key under the writ's kid is another key: the appliance's writ
    // does not verify with it and is not handed on.
    let other = {
        let k = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        writ_attestation::jwk::EcJwk::from_verifying_key(k.verifying_key())
    };
    let with_issuer = |keep_kid: bool| {
        let mut forged = kept.clone();
        for k in forged["keys"].as_array_mut().unwrap() {
            if k["use"] == "issuer" {
                let kid = k["kid"].clone();
                *k = other.to_json(Some("issuer"));
                if keep_kid {
                    k["kid"] = kid;
                }
            }
        }
        forged
    };
    std::fs::write(&kept_file, with_issuer(true).to_string()).unwrap();
    let out = request();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("signature"), "{err}");
    // A kept bundle (fresh) that does not know the writ's key: fetched once more, and the writ
    // verifies with the appliance's.
    std::fs::write(&kept_file, with_issuer(false).to_string()).unwrap();
    ok(&request());
    let refreshed: Value = serde_json::from_slice(&std::fs::read(&kept_file).unwrap()).unwrap();
    assert_eq!(refreshed["keys"], kept["keys"]);

    // A kept bundle of a later sequence than the appliance serves (a rollback, as the agent
    // sees it), due for refresh: refused, and kept.
    let mut later = kept.clone();
    later["spiffe_sequence"] = json!(served.sequence + 100);
    std::fs::write(&kept_file, later.to_string()).unwrap();
    set_old(&kept_file);
    let out = request();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bundle_rollback"), "{err}");
    let still: Value = serde_json::from_slice(&std::fs::read(&kept_file).unwrap()).unwrap();
    assert_eq!(still["spiffe_sequence"], later["spiffe_sequence"]);

    // Due for refresh with a true kept bundle: refreshed, and the writ verifies.
    std::fs::write(&kept_file, kept.to_string()).unwrap();
    set_old(&kept_file);
    ok(&request());
}
