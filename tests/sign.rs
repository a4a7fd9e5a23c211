//! The signing service end to end: an attested swtpm runtime asks `writ serve` to sign with
//! named keys in a SoftHSM2 token; raw signatures verify with `openssl dgst`, DSSE envelopes with
//! securesystemslib (PyPI, an independent DSSE implementation), both with `writ verify-signature`
//! and its log inclusion. Each refusal is checked in the answer and in the log, and after each
//! test no signature exists without its committed `sign` record.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::runtime::{Runtime, ok, ready};
use common::stack::{Engine, Stack, TD};
use serde_json::{Value, json};
use sha2::Digest as _;

/// The token the signing keys live in (apart from the appliance's other keys, so that it alone
/// can fail).
const KEY_TOKEN: &str = "signing-keys";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A stack with the signing keys `release` (DSSE), `artifacts` (raw digests) and `nightly`
/// (DSSE, which the example policy does not allow) in their own token.
fn stack(engine: Engine) -> Stack {
    let mut s = Stack::on(engine, &["--checkpoint-interval-ms", "300"]);
    s.hsm.add_token(KEY_TOKEN);
    for (name, form) in [
        ("release", "dsse"),
        ("artifacts", "digest"),
        ("nightly", "dsse"),
    ] {
        let uri = key_uri(&s, name);
        ok(&s.writ(&["keys", "generate", "--key", &uri, "--purpose", "signing"]));
        s.extra
            .extend(["--signing-key".to_string(), format!("{name}={form}:{uri}")]);
    }
    s.kill_and_restart();
    s
}

fn key_uri(s: &Stack, name: &str) -> String {
    s.hsm.key_uri(name).replace(
        &format!("token={}", s.hsm.label()),
        &format!("token={KEY_TOKEN}"),
    )
}

/// The example policy bundle with `extra` members (it lets affirmed runtimes sign with
/// `release` and `artifacts`, not `nightly`).
fn policy(s: &Stack, extra: Value) {
    let mut b: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/policy/example.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    let file = s
        .dir
        .path()
        .join(format!("policy-{}.json", writ_testkit::random_hex(4)));
    std::fs::write(&file, b.to_string()).unwrap();
    ok(&s.admin(&["load-policy", file.to_str().unwrap()]));
}

fn attest(s: &Stack, rt: &Runtime) -> String {
    let (st, v) = rt.attest(s);
    assert_eq!(st, 200, "{v}");
    v["ear"].as_str().unwrap().to_string()
}

/// `POST /v1/sign/<key>` with the EAR and proof given.
fn ask(s: &Stack, key: &str, ear: Option<&str>, proof: Option<&str>, body: &Value) -> (u16, Value) {
    let mut r = common::agent()
        .post(format!("{}/v1/sign/{key}", s.url()))
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

/// As `rt`, with its EAR and a fresh proof.
fn sign(s: &Stack, rt: &Runtime, ear: &str, key: &str, body: &Value) -> (u16, Value) {
    let proof = rt.dpop(&format!("{}/v1/sign/{key}", s.url()), ear);
    ask(s, key, Some(ear), Some(&proof), body)
}

fn digest_body(bytes: &[u8]) -> Value {
    json!({"digest": format!("sha256:{}", sha256_hex(bytes))})
}

/// The DER signature of an answer (raw form) or of its envelope.
fn signature_of(answer: &Value) -> Vec<u8> {
    let sig = answer["signature"]
        .as_str()
        .or_else(|| answer["envelope"]["signatures"][0]["sig"].as_str())
        .expect("a signature");
    STANDARD.decode(sig).unwrap()
}

/// A refusal with `code`: no signature in the answer, and the log's last record is the `sign`
/// denial of `name` with that code.
fn refused(s: &Stack, answer: &(u16, Value), name: &str, code: &str) {
    assert_eq!(answer.1["code"], code, "{}", answer.1);
    assert!(answer.1.get("signature").is_none() && answer.1.get("envelope").is_none());
    let r = s.records().pop().unwrap();
    assert_eq!(serde_json::to_value(r.kind).unwrap(), "sign");
    assert_eq!(r.subject, format!("spiffe://{TD}/runtime/{name}"));
    assert_eq!(serde_json::to_value(r.decision).unwrap(), "deny");
    assert_eq!(r.reasons, [code]);
    assert!(!r.digests.contains_key("signature"), "{:?}", r.digests);
}

/// No signature answered without its committed `sign` allow record, and no allow record without
/// its signature answered.
fn invariant(s: &Stack, answered: &BTreeSet<Vec<u8>>) {
    let recorded: BTreeSet<String> = s
        .records()
        .into_iter()
        .filter(|r| {
            serde_json::to_value(r.kind).unwrap() == "sign"
                && serde_json::to_value(r.decision).unwrap() == "allow"
        })
        .map(|r| r.digests["signature"].clone())
        .collect();
    let answered: BTreeSet<String> = answered
        .iter()
        .map(|d| format!("sha256:{}", sha256_hex(d)))
        .collect();
    assert_eq!(recorded, answered);
}

/// The trust bundle, written to a file; and the signing key `name`'s public key as PEM (what a
/// relying party takes from the bundle) with its kid.
fn published(s: &Stack, name: &str) -> (PathBuf, PathBuf, String) {
    let (st, text) = common::stack::get(&s.url(), "/v1/bundle");
    assert_eq!(st, 200, "{text}");
    let bundle = writ_attestation::writ::bundle::TrustBundle::parse(text.as_bytes()).unwrap();
    let k = bundle
        .keys
        .iter()
        .find(|k| k.name.as_deref() == Some(name))
        .expect("the key in the bundle");
    assert_eq!(k.purpose, writ_attestation::writ::bundle::Purpose::Signing);
    let file = s.dir.path().join("bundle.json");
    std::fs::write(&file, &text).unwrap();
    use p256::pkcs8::EncodePublicKey;
    let pem = k
        .jwk
        .verifying_key()
        .unwrap()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .unwrap();
    let pem_file = s.dir.path().join(format!("{name}.pub.pem"));
    std::fs::write(&pem_file, pem).unwrap();
    (file, pem_file, k.kid.clone())
}

fn openssl_verifies(public: &Path, signature: &Path, file: &Path) -> bool {
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(public)
        .arg("-signature")
        .arg(signature)
        .arg(file)
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    out.status.success() && text.contains("Verified OK")
}

/// securesystemslib's DSSE verification: the payload type and payload, or None if refused.
fn dsse_verifies(envelope: &Path, public: &Path, kid: &str) -> Option<(String, Value)> {
    let python = std::env::var("WRIT_TEST_DSSE_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/writ/py/bin/python",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/dsse.py");
    let out = std::process::Command::new(&python)
        .arg(script)
        .arg(envelope)
        .arg(public)
        .arg(kid)
        .output()
        .unwrap_or_else(|e| {
            panic!("{python}: {e} (deploy/dev/install-deps.sh makes the securesystemslib venv)")
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "securesystemslib is missing (deploy/dev/install-deps.sh): {stderr}"
    );
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let (ty, payload) = text.split_once('\n').unwrap();
    Some((ty.to_string(), serde_json::from_str(payload).unwrap()))
}

/// `writ verify-signature` with `args`: its exit code and output.
fn verify_signature(s: &Stack, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["verify-signature", "--json"];
    all.extend(args);
    let out = s.writ(&all);
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v)
}

#[test]
fn signatures_and_envelopes_verify_with_independent_tools_and_their_records() {
    let s = stack(Engine::Sqlite);
    policy(&s, json!({}));
    let rt = ready(&s, "builder");
    let ear = attest(&s, &rt);
    let mut answered = BTreeSet::new();
    let (bundle, release_pem, release_kid) = published(&s, "release");
    let (_, artifacts_pem, artifacts_kid) = published(&s, "artifacts");
    let (_, nightly_pem, _) = published(&s, "nightly");
    let dir = s.dir.path();

    // A raw signature over a file's digest, by the key of that form.
    let artifact = dir.join("app.tar");
    std::fs::write(&artifact, b"the release artifact\n").unwrap();
    let (st, v) = sign(
        &s,
        &rt,
        &ear,
        "artifacts",
        &digest_body(b"the release artifact\n"),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["key"], "artifacts");
    assert_eq!(v["kid"], artifacts_kid.as_str());
    let der = signature_of(&v);
    answered.insert(der.clone());
    let sig_file = dir.join("app.tar.sig");
    std::fs::write(&sig_file, &der).unwrap();
    // openssl, with the key the bundle publishes: this file verifies; another file, another key
    // do not.
    assert!(openssl_verifies(&artifacts_pem, &sig_file, &artifact));
    let other = dir.join("other.tar");
    std::fs::write(&other, b"another artifact\n").unwrap();
    assert!(!openssl_verifies(&artifacts_pem, &sig_file, &other));
    assert!(!openssl_verifies(&release_pem, &sig_file, &artifact));
    // writ verify-signature, by digest or by file.
    let b = bundle.to_str().unwrap();
    let sf = sig_file.to_str().unwrap();
    let art = artifact.to_str().unwrap();
    let (code, out) = verify_signature(&s, &["--bundle", b, "--file", art, "--signature", sf]);
    assert_eq!((code, &out["key"]), (0, &json!("artifacts")), "{out}");
    let digest = format!("sha256:{}", sha256_hex(b"the release artifact\n"));
    let (code, _) = verify_signature(&s, &["--bundle", b, "--digest", &digest, "--signature", sf]);
    assert_eq!(code, 0);
    let oth = other.to_str().unwrap();
    let (code, out) = verify_signature(&s, &["--bundle", b, "--file", oth, "--signature", sf]);
    assert_eq!((code, &out["code"]), (1, &json!("signature")), "{out}");
    // Only keys of the digest form are asked: a DSSE key's name, or no such key, is refused.
    for key in ["release", "absent"] {
        let (code, out) = verify_signature(
            &s,
            &[
                "--bundle",
                b,
                "--digest",
                &digest,
                "--signature",
                sf,
                "--key",
                key,
            ],
        );
        assert_eq!((code, &out["code"]), (1, &json!("key_unknown")), "{out}");
    }
    // Each key signs its one form only, and says so.
    let a = sign(&s, &rt, &ear, "release", &digest_body(b"x"));
    refused(&s, &a, "builder", "key_form");
    let a = sign(
        &s,
        &rt,
        &ear,
        "artifacts",
        &json!({"subjects": [{"name": "a", "digest": {"sha256": sha256_hex(b"a")}}]}),
    );
    refused(&s, &a, "builder", "key_form");
    // Its record: a sign allow naming the key, the artifact and the signature.
    let raw_index = v["log_index"].as_u64().unwrap();
    let r = s.records()[usize::try_from(raw_index).unwrap()].clone();
    assert_eq!(serde_json::to_value(r.kind).unwrap(), "sign");
    assert_eq!(r.subject, format!("spiffe://{TD}/runtime/builder"));
    assert_eq!(r.digests["artifact"], digest);
    assert_eq!(
        r.digests["signature"],
        format!("sha256:{}", sha256_hex(&der))
    );

    // A DSSE envelope over an in-toto Statement naming two subjects.
    let sbom = dir.join("app.sbom.json");
    std::fs::write(&sbom, b"{\"sbom\":true}\n").unwrap();
    let subjects = json!([
        {"name": "app.tar", "digest": {"sha256": sha256_hex(b"the release artifact\n")}},
        {"name": "app.sbom.json", "digest": {"sha256": sha256_hex(b"{\"sbom\":true}\n")}},
    ]);
    let (st, v) = sign(&s, &rt, &ear, "release", &json!({"subjects": subjects}));
    assert_eq!(st, 200, "{v}");
    answered.insert(signature_of(&v));
    let envelope = dir.join("app.intoto.json");
    std::fs::write(&envelope, v["envelope"].to_string()).unwrap();
    // securesystemslib verifies it with the published key; the payload is the Statement with
    // writ's account of the runtime.
    let (ty, statement) = dsse_verifies(&envelope, &release_pem, &release_kid).expect("verified");
    assert_eq!(ty, "application/vnd.in-toto+json");
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(statement["subject"], subjects);
    assert_eq!(
        statement["predicateType"],
        "https://writ.dev/signing-request/v1"
    );
    let p = &statement["predicate"];
    assert_eq!(p["runtime"], format!("spiffe://{TD}/runtime/builder"));
    assert_eq!(p["key"], "release");
    assert_eq!(p["attestation"]["status"], "affirming");
    assert_eq!(
        p["attestation"]["ear"],
        format!("sha256:{}", sha256_hex(ear.as_bytes()))
    );
    assert!(
        p["attestation"]["evidence"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(p["policy_bundle"].as_str().unwrap().starts_with("sha256:"));
    assert!(p["signed_at"].as_str().unwrap().ends_with('Z'));
    // Another key does not verify it (securesystemslib, writ).
    assert!(dsse_verifies(&envelope, &nightly_pem, &release_kid).is_none());
    let e = envelope.to_str().unwrap();
    let (code, out) = verify_signature(&s, &["--bundle", b, "--envelope", e]);
    assert_eq!((code, &out["key"]), (0, &json!("release")), "{out}");
    assert_eq!(out["detail"]["subjects"], subjects);
    // A changed payload: neither verifies.
    let mut forged = v["envelope"].clone();
    let mut st_forged = statement.clone();
    st_forged["subject"][0]["digest"]["sha256"] = json!("00".repeat(32));
    forged["payload"] = json!(STANDARD.encode(st_forged.to_string()));
    let forged_file = dir.join("forged.intoto.json");
    std::fs::write(&forged_file, forged.to_string()).unwrap();
    assert!(dsse_verifies(&forged_file, &release_pem, &release_kid).is_none());
    let (code, out) = verify_signature(
        &s,
        &["--bundle", b, "--envelope", forged_file.to_str().unwrap()],
    );
    assert_eq!((code, &out["code"]), (1, &json!("signature")), "{out}");
    // Another payload type: refused by writ before any signature is checked.
    let mut typed = v["envelope"].clone();
    typed["payloadType"] = json!("application/json");
    let typed_file = dir.join("typed.json");
    std::fs::write(&typed_file, typed.to_string()).unwrap();
    let (code, out) = verify_signature(
        &s,
        &["--bundle", b, "--envelope", typed_file.to_str().unwrap()],
    );
    assert_eq!((code, &out["code"]), (1, &json!("payload_type")), "{out}");
    let r = s.records().pop().unwrap();
    assert_eq!(
        r.digests["payload"],
        format!(
            "sha256:{}",
            sha256_hex(
                &STANDARD
                    .decode(v["envelope"]["payload"].as_str().unwrap())
                    .unwrap()
            )
        )
    );

    // The envelope names the artifact: --file must be one of its subjects.
    let (code, out) = verify_signature(&s, &["--bundle", b, "--envelope", e, "--file", art]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = verify_signature(&s, &["--bundle", b, "--envelope", e, "--file", oth]);
    assert_eq!((code, &out["code"]), (1, &json!("subject")), "{out}");
    // A statement the runtime wrote itself, its PAE's SHA-256 signed by the digest key (which
    // policy allows it): a valid ECDSA signature over the PAE, but by a key of the digest form,
    // so no verifier reading the bundle takes it for an envelope of writ's.
    let mut own = statement.clone();
    own["predicate"]["runtime"] = json!(format!("spiffe://{TD}/runtime/someone-else"));
    let own_payload = own.to_string();
    let pae =
        writ_attestation::writ::signed::pae("application/vnd.in-toto+json", own_payload.as_bytes());
    let (st, raw) = sign(&s, &rt, &ear, "artifacts", &digest_body(&pae));
    assert_eq!(st, 200, "{raw}");
    answered.insert(signature_of(&raw));
    let smuggled = json!({
        "payload": STANDARD.encode(&own_payload),
        "payloadType": "application/vnd.in-toto+json",
        "signatures": [{"keyid": artifacts_kid, "sig": raw["signature"]}],
    });
    let smuggled_file = dir.join("smuggled.intoto.json");
    std::fs::write(&smuggled_file, smuggled.to_string()).unwrap();
    let (code, out) = verify_signature(
        &s,
        &["--bundle", b, "--envelope", smuggled_file.to_str().unwrap()],
    );
    assert_eq!((code, &out["code"]), (1, &json!("key_unknown")), "{out}");
    // Subjects name sha256 digests only (policy decides on those, and only those are signed).
    let a = sign(
        &s,
        &rt,
        &ear,
        "release",
        &json!({"subjects": [{"name": "a", "digest": {"sha256": sha256_hex(b"a"), "sha512": "ab".repeat(64)}}]}),
    );
    refused(&s, &a, "builder", "sign_request");

    // Log inclusion: each signature's record under a signed checkpoint; another's refused.
    s.covered();
    let env_index = v["log_index"].as_u64().unwrap();
    let inclusion = |index: u64| {
        let (st, text) = common::stack::get(&s.url(), &format!("/v1/log/bundle?index={index}"));
        assert_eq!(st, 200, "{text}");
        let f = dir.join(format!("inclusion-{index}.json"));
        std::fs::write(&f, text).unwrap();
        f
    };
    let raw_inc = inclusion(raw_index);
    let env_inc = inclusion(env_index);
    let (code, out) = verify_signature(
        &s,
        &[
            "--bundle",
            b,
            "--envelope",
            e,
            "--inclusion",
            env_inc.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["detail"]["log"]["index"], env_index);
    let (code, out) = verify_signature(
        &s,
        &[
            "--bundle",
            b,
            "--envelope",
            e,
            "--inclusion",
            raw_inc.to_str().unwrap(),
        ],
    );
    assert_eq!((code, &out["code"]), (1, &json!("inclusion")), "{out}");
    let (code, out) = verify_signature(
        &s,
        &[
            "--bundle",
            b,
            "--digest",
            &digest,
            "--signature",
            sf,
            "--inclusion",
            raw_inc.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    invariant(&s, &answered);
}

#[test]
fn every_refusal_is_recorded_and_signs_nothing() {
    let s = stack(Engine::Sqlite);
    policy(
        &s,
        json!({"signing": {"max_payload_bytes": 1024, "max_subjects": 2, "rate_per_minute": 600}}),
    );
    let rt = ready(&s, "signer");
    let ear = attest(&s, &rt);
    let url = s.url();
    let body = digest_body(b"x");
    let mut answered = BTreeSet::new();
    let (st, v) = sign(&s, &rt, &ear, "artifacts", &body);
    assert_eq!(st, 200, "{v}");
    answered.insert(signature_of(&v));

    // Unidentified: no EAR, a forged one. Answered, not recorded.
    let size = s.records().len();
    let a = ask(&s, "artifacts", None, None, &body);
    assert_eq!((a.0, a.1["code"].as_str()), (401, Some("ear_missing")));
    let a = ask(&s, "artifacts", Some("e30.e30.sig"), None, &body);
    assert_eq!((a.0, a.1["code"].as_str()), (401, Some("ear_invalid")));
    assert_eq!(s.records().len(), size);
    // The proof: missing, for another URL, replayed.
    let a = ask(&s, "artifacts", Some(&ear), None, &body);
    assert_eq!(a.0, 401);
    refused(&s, &a, "signer", "proof_missing");
    let elsewhere = rt.dpop(&format!("{url}/v1/sign/nightly"), &ear);
    let a = ask(&s, "artifacts", Some(&ear), Some(&elsewhere), &body);
    refused(&s, &a, "signer", "proof_binding");
    let proof = rt.dpop(&format!("{url}/v1/sign/artifacts"), &ear);
    let (st, v) = ask(&s, "artifacts", Some(&ear), Some(&proof), &body);
    assert_eq!(st, 200, "{v}");
    answered.insert(signature_of(&v));
    let a = ask(&s, "artifacts", Some(&ear), Some(&proof), &body);
    refused(&s, &a, "signer", "replayed");
    // A key policy does not allow; a key that does not exist.
    let a = sign(
        &s,
        &rt,
        &ear,
        "nightly",
        &json!({"subjects": [{"name": "a", "digest": {"sha256": sha256_hex(b"a")}}]}),
    );
    assert_eq!(a.0, 403);
    refused(&s, &a, "signer", "policy");
    let a = sign(&s, &rt, &ear, "absent", &body);
    assert_eq!(a.0, 404);
    refused(&s, &a, "signer", "key_unknown");
    // Requests: both forms at once, a digest that is not one, too many subjects, a payload
    // over the policy's bound.
    let subject = |n: &str| json!({"name": n, "digest": {"sha256": sha256_hex(n.as_bytes())}});
    let a = sign(
        &s,
        &rt,
        &ear,
        "release",
        &json!({"digest": body["digest"], "subjects": [subject("a")]}),
    );
    refused(&s, &a, "signer", "sign_request");
    let a = sign(&s, &rt, &ear, "release", &json!({"digest": "sha256:00"}));
    refused(&s, &a, "signer", "sign_request");
    let a = sign(
        &s,
        &rt,
        &ear,
        "release",
        &json!({"subjects": [subject("a"), subject("b"), subject("c")]}),
    );
    assert_eq!(a.0, 413);
    refused(&s, &a, "signer", "too_many_subjects");
    let long = "n".repeat(1000);
    let a = sign(
        &s,
        &rt,
        &ear,
        "release",
        &json!({"subjects": [subject(&long)]}),
    );
    assert_eq!(a.0, 413);
    refused(&s, &a, "signer", "payload_too_large");
    // Within bounds, the same shape is signed.
    let (st, v) = sign(
        &s,
        &rt,
        &ear,
        "release",
        &json!({"subjects": [subject("a"), subject("b")]}),
    );
    assert_eq!(st, 200, "{v}");
    answered.insert(signature_of(&v));

    // The runtime's signing rate (policy: 2 a minute; this minute's earlier signatures count).
    policy(&s, json!({"signing": {"rate_per_minute": 2}}));
    let mut limited = None;
    for _ in 0..3 {
        let a = sign(&s, &rt, &ear, "artifacts", &body);
        if a.0 == 200 {
            answered.insert(signature_of(&a.1));
        } else {
            limited = Some(a);
            break;
        }
    }
    let a = limited.expect("rate limited within three requests");
    assert_eq!(a.0, 429);
    refused(&s, &a, "signer", "rate_limited");
    // A policy bundle that does not declare signing decides nothing: refused, not guessed.
    policy(
        &s,
        json!({
            "schema": "action \"svid\" appliesTo { principal: Runtime, resource: Resource, context: WritContext };",
            "policies": "permit(principal, action == Action::\"svid\", resource);",
        }),
    );
    let a = sign(&s, &rt, &ear, "artifacts", &body);
    refused(&s, &a, "signer", "policy_input");
    policy(&s, json!({}));

    // A superseded EAR; a contraindicated runtime.
    let ear2 = attest(&s, &rt);
    let a = sign(&s, &rt, &ear, "artifacts", &body);
    refused(&s, &a, "signer", "ear_superseded");
    // A stale appraisal (the policy accepts 1 s).
    policy(&s, json!({"max_appraisal_age_s": 1}));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let a = sign(&s, &rt, &ear2, "artifacts", &body);
    refused(&s, &a, "signer", "stale_appraisal");
    policy(&s, json!({}));
    let ear3 = attest(&s, &rt);
    let (st, v) = sign(&s, &rt, &ear3, "artifacts", &body);
    assert_eq!(st, 200, "{v}");
    answered.insert(signature_of(&v));
    rt.tpm.extend_pcr(4, &[1u8; 32]).unwrap();
    let (st, _) = rt.attest(&s);
    assert_eq!(st, 403);
    let a = sign(&s, &rt, &ear3, "artifacts", &body);
    assert_eq!(a.0, 403);
    refused(&s, &a, "signer", "contraindicated");
    // A revoked runtime.
    ok(&s.admin(&["revoke", "signer"]));
    let a = sign(&s, &rt, &ear3, "artifacts", &body);
    refused(&s, &a, "signer", "revoked");
    invariant(&s, &answered);

    // The appliance does not start with a signing key that is another purpose's key, a key
    // under two names, or a key without its one form.
    let refused_start = |extra: &[String]| {
        let mut args: Vec<String> = [
            "serve",
            "--store",
            &format!("sqlite:{}", s.dir.path().join("other.db").display()),
            "--checkpoint-key",
            &s.key,
            "--issuer-key",
            &s.issuer_key,
            "--listen",
            "127.0.0.1:0",
            "--trust-domain",
            TD,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = s.writ(&args);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let flag = |v: String| vec!["--signing-key".to_string(), v];
    let err = refused_start(&flag(format!("x=digest:{}", s.issuer_key)));
    assert!(err.contains("also the issuer key"), "{err}");
    let err = refused_start(&flag(format!("x=dsse:{}", s.key)));
    assert!(err.contains("also the checkpoint key"), "{err}");
    let release = key_uri(&s, "release");
    let mut twice = flag(format!("a=dsse:{release}"));
    twice.extend(flag(format!("b=digest:{release}")));
    let err = refused_start(&twice);
    assert!(err.contains("another signing key"), "{err}");
    let err = refused_start(&flag(format!("a=both:{release}")));
    assert!(err.contains("digest or dsse"), "{err}");
}

/// Which subfolder of the token directory holds the token `label`.
fn token_folder(s: &Stack, label: &str) -> PathBuf {
    std::fs::read_dir(s.hsm.dir().join("tokens"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            std::fs::read(p.join("token.object"))
                .map(|b| b.windows(label.len()).any(|w| w == label.as_bytes()))
                .unwrap_or(false)
        })
        .expect("the token's folder")
}

#[test]
fn with_the_hsm_or_the_log_unavailable_nothing_is_signed() {
    let s = stack(Engine::Sqlite);
    policy(&s, json!({}));
    let rt = ready(&s, "faulty");
    let ear = attest(&s, &rt);
    let body = digest_body(b"y");
    let mut answered = BTreeSet::new();
    let (st, v) = sign(&s, &rt, &ear, "artifacts", &body);
    assert_eq!(st, 200, "{v}");
    answered.insert(signature_of(&v));

    // The signing keys' token goes away (the appliance's own keys stay): 503, recorded, no
    // signature; it comes back and signing resumes without a restart.
    let folder = token_folder(&s, KEY_TOKEN);
    let moved = folder.with_extension("gone");
    std::fs::rename(&folder, &moved).unwrap();
    let a = sign(&s, &rt, &ear, "artifacts", &body);
    assert_eq!(a.0, 503, "{}", a.1);
    refused(&s, &a, "faulty", "signing_unavailable");
    std::fs::rename(&moved, &folder).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (st, v) = sign(&s, &rt, &ear, "artifacts", &body);
        if st == 200 {
            answered.insert(signature_of(&v));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not recovered: {st} {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    invariant(&s, &answered);

    // The log refuses new records (a trigger on its leaves, from another connection to the
    // same database): 503, and the signature made meanwhile is never answered.
    let db = rusqlite::Connection::open(s.dir.path().join("writ.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    db.execute_batch(
        "CREATE TRIGGER log_down BEFORE INSERT ON log_leaves BEGIN SELECT RAISE(ABORT, 'log down'); END;",
    )
    .unwrap();
    let size = s.records().len();
    let a = sign(&s, &rt, &ear, "artifacts", &body);
    assert_eq!(a.0, 503, "{}", a.1);
    assert!(a.1.get("signature").is_none(), "{}", a.1);
    assert_eq!(s.records().len(), size);
    db.execute_batch("DROP TRIGGER log_down;").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (st, v) = sign(&s, &rt, &ear, "artifacts", &body);
        if st == 200 {
            answered.insert(signature_of(&v));
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

#[test]
fn writ_agent_signs_and_writ_verify_signature_checks_it_with_its_record() {
    let s = stack(Engine::Sqlite);
    let (a, log_file, state) = common::runtime::agent_enrolled(&s, "ci-9");
    let st = state.to_str().unwrap();
    let tcti = s.tpm.tcti();
    common::runtime::assign(&s, "ci-9", &common::runtime::profile_of(&a));
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
    policy(&s, json!({}));
    let dir = s.dir.path();
    let artifact = dir.join("model.bin");
    std::fs::write(&artifact, vec![7u8; 100_000]).unwrap();
    let (bundle, release_pem, release_kid) = published(&s, "release");
    let (_, artifacts_pem, artifacts_kid) = published(&s, "artifacts");
    let b = bundle.to_str().unwrap();
    // A raw signature over the file, and its inclusion bundle.
    let sig = dir.join("model.bin.sig");
    let inc = dir.join("model.bin.inclusion.json");
    let out = s.writ(&[
        "agent",
        "sign",
        "--state",
        st,
        "--tcti",
        &tcti,
        "--key",
        "artifacts",
        "--file",
        artifact.to_str().unwrap(),
        "--out",
        sig.to_str().unwrap(),
        "--inclusion",
        inc.to_str().unwrap(),
    ]);
    ok(&out);
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["kid"], artifacts_kid.as_str());
    assert!(openssl_verifies(&artifacts_pem, &sig, &artifact));
    let (code, v) = verify_signature(
        &s,
        &[
            "--bundle",
            b,
            "--file",
            artifact.to_str().unwrap(),
            "--signature",
            sig.to_str().unwrap(),
            "--inclusion",
            inc.to_str().unwrap(),
            "--key",
            "artifacts",
        ],
    );
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        v["detail"]["log"]["subject"],
        format!("spiffe://{TD}/runtime/ci-9")
    );
    // An envelope naming the file; verified by securesystemslib and by writ with its record.
    let env = dir.join("model.intoto.json");
    let env_inc = dir.join("model.intoto.inclusion.json");
    ok(&s.writ(&[
        "agent",
        "sign",
        "--state",
        st,
        "--tcti",
        &tcti,
        "--key",
        "release",
        "--subject",
        artifact.to_str().unwrap(),
        "--out",
        env.to_str().unwrap(),
        "--inclusion",
        env_inc.to_str().unwrap(),
    ]));
    let (_, statement) = dsse_verifies(&env, &release_pem, &release_kid).expect("verified");
    assert_eq!(
        statement["subject"][0]["digest"]["sha256"],
        sha256_hex(&vec![7u8; 100_000])
    );
    let (code, v) = verify_signature(
        &s,
        &[
            "--bundle",
            b,
            "--envelope",
            env.to_str().unwrap(),
            "--inclusion",
            env_inc.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{v}");
    // Refused by policy: exit 1, nothing written.
    let nothing = dir.join("nightly.sig");
    let out = s.writ(&[
        "agent",
        "sign",
        "--state",
        st,
        "--tcti",
        &tcti,
        "--key",
        "nightly",
        "--subject",
        artifact.to_str().unwrap(),
        "--out",
        nothing.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("policy"));
    assert!(!nothing.exists());
}

#[test]
fn a_signing_key_rotates_by_name_and_its_old_signatures_verify_with_the_bundle_of_their_time() {
    let mut s = stack(Engine::Sqlite);
    policy(&s, json!({}));
    let rt = ready(&s, "rotator");
    let dir = s.dir.path().to_path_buf();
    let bundle_now = |s: &Stack, label: &str| {
        let (st, text) = common::stack::get(&s.url(), "/v1/bundle");
        assert_eq!(st, 200, "{text}");
        let file = dir.join(format!("bundle-{label}.json"));
        std::fs::write(&file, &text).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let kids: Vec<String> = v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["name"] == "artifacts")
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect();
        (file, kids)
    };
    // A signature by `artifacts` now: its file and kid.
    let signed = |s: &Stack, label: &str| {
        let ear = attest(s, &rt);
        let (st, v) = sign(s, &rt, &ear, "artifacts", &digest_body(label.as_bytes()));
        assert_eq!(st, 200, "{v}");
        let file = dir.join(format!("{label}.sig"));
        std::fs::write(&file, signature_of(&v)).unwrap();
        (file, v["kid"].as_str().unwrap().to_string())
    };
    let verify = |s: &Stack, bundle: &Path, sig: &Path, label: &str| {
        let digest = format!("sha256:{}", sha256_hex(label.as_bytes()));
        verify_signature(
            s,
            &[
                "--bundle",
                bundle.to_str().unwrap(),
                "--digest",
                &digest,
                "--signature",
                sig.to_str().unwrap(),
            ],
        )
    };
    let (b0, kids0) = bundle_now(&s, "0");
    assert_eq!(kids0.len(), 1);
    let (sig_a, kid_a) = signed(&s, "before");
    assert_eq!(kid_a, kids0[0]);

    // Refused: no name, an unknown name, no retention, a retention for another purpose.
    let key_b = key_uri(&s, "artifacts-2");
    ok(&s.writ(&["keys", "generate", "--key", &key_b, "--purpose", "signing"]));
    let rotate = |s: &Stack, extra: &[&str]| {
        let mut a = vec![
            "rotate-key",
            "--key-uri",
            &key_b,
            "--overlap-s",
            "2",
            "--skew-s",
            "0",
        ];
        a.extend(extra);
        s.admin(&a)
    };
    for (extra, why) in [
        (vec!["--purpose", "signing", "--retain-s", "3"], "name"),
        (
            vec![
                "--purpose",
                "signing",
                "--name",
                "absent",
                "--retain-s",
                "3",
            ],
            "name",
        ),
        (
            vec!["--purpose", "signing", "--name", "artifacts"],
            "retain_s",
        ),
        (
            vec![
                "--purpose",
                "signing",
                "--name",
                "artifacts",
                "--retain-s=-1",
            ],
            "retain_s",
        ),
        (
            vec![
                "--purpose",
                "signing",
                "--name",
                "artifacts",
                "--retain-s",
                "315360001",
            ],
            "retain_s",
        ),
        (vec!["--purpose", "issuer", "--name", "artifacts"], "name"),
        (vec!["--purpose", "issuer", "--retain-s", "3"], "retain_s"),
    ] {
        let out = rotate(&s, &extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(why),
            "{extra:?}: {err}"
        );
    }
    // B rotates `release` in (each name has its own schedule); then it is in use for any other.
    let out = rotate(
        &s,
        &[
            "--purpose",
            "signing",
            "--name",
            "release",
            "--retain-s",
            "3",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = rotate(
        &s,
        &[
            "--purpose",
            "signing",
            "--name",
            "artifacts",
            "--retain-s",
            "3",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("key_in_use"));

    // A fresh key for `artifacts`: published now, signing 2 s later; A stays 3 s after that.
    let key_c = key_uri(&s, "artifacts-3");
    ok(&s.writ(&["keys", "generate", "--key", &key_c, "--purpose", "signing"]));
    let out = s.admin(&[
        "rotate-key",
        "--purpose",
        "signing",
        "--name",
        "artifacts",
        "--key-uri",
        &key_c,
        "--overlap-s",
        "2",
        "--skew-s",
        "0",
        "--retain-s",
        "3",
    ]);
    ok(&out);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (signs_from, retires_at) = (
        r["signs_from"].as_i64().unwrap(),
        r["previous_retires_at"].as_i64().unwrap(),
    );
    assert_eq!(retires_at, signs_from + 3);
    let kid_c = r["kid"].as_str().unwrap().to_string();
    let records = s.records();
    assert!(
        records[records.len() - 2]
            .digests
            .contains_key("rotated_signing_key")
    );
    let (b1, kids1) = bundle_now(&s, "1");
    assert_eq!(kids1, [kid_a.clone(), kid_c.clone()]);

    // During the overlap A signs; from signs_from, C. Each verifies with a bundle listing it.
    let (sig_overlap, kid) = signed(&s, "overlap");
    assert_eq!(kid, kid_a);
    assert_eq!(verify(&s, &b0, &sig_overlap, "overlap").0, 0);
    while now_s() < signs_from {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (sig_c, kid) = signed(&s, "after");
    assert_eq!(kid, kid_c);
    let (code, out) = verify(&s, &b1, &sig_c, "after");
    assert_eq!(
        (code, out["kid"].as_str()),
        (0, Some(kid_c.as_str())),
        "{out}"
    );
    assert_eq!(verify(&s, &b0, &sig_c, "after").0, 1);
    let (code, out) = verify(&s, &b1, &sig_a, "before");
    assert_eq!(
        (code, out["kid"].as_str()),
        (0, Some(kid_a.as_str())),
        "{out}"
    );

    // A leaves the bundle after its retention: its signatures verify with the bundle of their
    // time, not with the current one.
    while now_s() < retires_at + 2 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (b2, kids2) = bundle_now(&s, "2");
    assert_eq!(kids2, std::slice::from_ref(&kid_c));
    assert_eq!(verify(&s, &b2, &sig_a, "before").0, 1);
    assert_eq!(verify(&s, &b1, &sig_a, "before").0, 0);
    assert_eq!(verify(&s, &b2, &sig_c, "after").0, 0);
    // A restart with A still configured: C signs.
    s.kill_and_restart();
    let (_, kid) = signed(&s, "restarted");
    assert_eq!(kid, kid_c);
    // The name keeps its form: configured as dsse now, the start is refused.
    let digest_flag = s
        .extra
        .iter()
        .position(|a| a.starts_with("artifacts=digest:"))
        .unwrap();
    let before = s.extra[digest_flag].clone();
    s.extra[digest_flag] = before.replacen("artifacts=digest:", "artifacts=dsse:", 1);
    drop(s.server.take());
    let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.start()))
        .expect_err("a start with another form");
    let why = refused
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(why.contains("one form per key"), "{why}");
    s.extra[digest_flag] = before;
    s.start();
    let (_, kid) = signed(&s, "again");
    assert_eq!(kid, kid_c);
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
