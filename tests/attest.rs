//! Attestation end to end: a running `writ serve` (checkpoint and ear keys in SoftHSM2), swtpm
//! runtimes running the simulated measured boot, `writ admin` and `writ agent attest`; each
//! refusal checked in the answer and in the decision log. Crafted evidence is made with the
//! same TPM calls the agent makes (writ-hsm's attester).
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::runtime::{HOLDER_AUTH, Runtime, agent_enrolled, assign, last, ok, profile_of, ready};
use common::stack::{Engine, Stack, TD};
use serde_json::{Value, json};
use writ_attestation::tpm::pcr::PcrSelection;
use writ_hsm::tpm::attester::KeyBlob;
use writ_hsm::tpm::simboot::{BootProfile, simulate_boot};
use writ_testkit::Swtpm;

/// Asserts the answer was refused with `code` and that the log's last record is the attest
/// denial of `name` with `code` among its reasons.
fn refused_and_logged(s: &Stack, answer: &(u16, Value), name: &str, code: &str) {
    assert_eq!(answer.1["code"], code, "{}", answer.1);
    assert!(answer.0 == 403 || answer.0 == 409, "{}", answer.0);
    let (kind, subject, decision, reasons) = last(s);
    assert_eq!(kind, "attest");
    assert_eq!(subject, format!("spiffe://{TD}/runtime/{name}"));
    assert_eq!(decision, "deny");
    assert!(reasons.iter().any(|r| r == code), "{reasons:?}");
}

fn agent_attest(s: &Stack, state: &Path, log: &Path) -> std::process::Output {
    s.writ(&[
        "agent",
        "attest",
        "--state",
        state.to_str().unwrap(),
        "--tcti",
        &s.tpm.tcti(),
        "--event-log",
        log.to_str().unwrap(),
    ])
}

#[test]
fn a_swtpm_runtime_enrolls_and_attests_with_writ_agent() {
    let s = Stack::new();
    // The runtime boots (simulated measured boot into the swtpm), keeps its event log, enrolls.
    let (a, log_file, state) = agent_enrolled(&s, "web-1");
    let log = std::fs::read(&log_file).unwrap();
    // Without a profile there is nothing to appraise against.
    let out = agent_attest(&s, &state, &log_file);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no_profile"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assign(&s, "web-1", &profile_of(&a));

    let out = agent_attest(&s, &state, &log_file);
    ok(&out);
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["status"], "affirming");
    assert_eq!(answer["counters"], "first");
    assert_eq!(answer["spiffe_id"], format!("spiffe://{TD}/runtime/web-1"));
    // The EAR token: ear+jwt signed by the ear key in the token, bound to the holder key.
    let last_json: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("last.json")).unwrap()).unwrap();
    let ear = last_json["ear"].as_str().unwrap();
    let parts: Vec<&str> = ear.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(header["typ"], "ear+jwt");
    assert_eq!(header["alg"], "ES256");
    let shown = s.writ(&["keys", "show", "--key", &s.ear_key, "--json"]);
    ok(&shown);
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(header["kid"], shown["kid"]);
    let jwk = writ_attestation::jwk::EcJwk::from_members(
        "EC",
        "P-256",
        shown["jwk"]["x"].as_str().unwrap(),
        shown["jwk"]["y"].as_str().unwrap(),
    )
    .unwrap();
    let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    writ_attestation::writ::jws::verify_es256(
        writ_attestation::crypto::default_provider(),
        &jwk,
        format!("{}.{}", parts[0], parts[1]).as_bytes(),
        &sig,
    )
    .unwrap();
    assert_eq!(claims["cnf"]["jkt"], answer["holder_jkt"]);
    assert_eq!(claims["iss"], format!("spiffe://{TD}/writ/appliance"));
    assert_eq!(
        claims["exp"].as_i64().unwrap(),
        claims["iat"].as_i64().unwrap() + 300
    );
    assert_eq!(claims["eat_profile"], "tag:ietf.org,2026:rats/ear#04");
    assert!(claims["eat_nonce"].as_str().is_some_and(|n| n.len() == 43));
    assert_eq!(claims["sub"], format!("spiffe://{TD}/runtime/web-1"));
    assert_eq!(claims["submods"]["tpm"]["ear_status"], "affirming");
    assert!(claims["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());
    // The decision is in the log, with the EAR's digest.
    let recs = s.records();
    let r = recs.last().unwrap();
    assert!(r.reasons.is_empty());
    assert!(r.digests.contains_key("ear") && r.digests.contains_key("holder"));
    assert_eq!(
        answer["log_index"].as_u64().unwrap() as usize,
        recs.len() - 1
    );
    // writ agent status: the identity, the last result and its age.
    let out = s.writ(&["agent", "status", "--state", state.to_str().unwrap()]);
    ok(&out);
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["last_attestation"]["status"], "affirming");
    assert!(st["last_attestation"]["age_s"].as_i64().unwrap() >= 0);
    assert!(st["last_attestation"].get("ear").is_none());

    // Again: the same boot, counters unchanged; the holder key was kept.
    let out = agent_attest(&s, &state, &log_file);
    ok(&out);
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["counters"], "unchanged");
    assert_eq!(again["holder_jkt"], answer["holder_jkt"]);
    // A reboot (and the same measured boot again) is noted, and still affirming.
    s.tpm.reboot();
    let log2 = simulate_boot(&a, BootProfile::SecureBoot).unwrap();
    assert_eq!(log2, log);
    let out = agent_attest(&s, &state, &log_file);
    ok(&out);
    let rebooted: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rebooted["counters"], "reboot");
    // A PCR extended after boot: the appraisal is contraindicated and becomes the state.
    a.extend_pcr(4, &[7u8; 32]).unwrap();
    let out = agent_attest(&s, &state, &log_file);
    assert_eq!(out.status.code(), Some(1));
    let last_json: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("last.json")).unwrap()).unwrap();
    assert_eq!(last_json["status"], "refused");
    // Extended outside the log: the log no longer explains the quoted PCR 4.
    assert_eq!(last_json["code"], "pcr_replay");
    let (kind, _, decision, reasons) = last(&s);
    assert_eq!((kind.as_str(), decision.as_str()), ("attest", "deny"));
    assert!(reasons.iter().any(|r| r == "pcr_replay"), "{reasons:?}");
    let list: Value = serde_json::from_slice(&s.admin(&["runtimes"]).stdout).unwrap();
    assert_eq!(list[0]["attestation"]["status"], "contraindicated");
}

#[test]
fn each_attestation_refusal_is_answered_and_logged_on_sqlite() {
    refusals(Engine::Sqlite);
}

#[test]
fn each_attestation_refusal_is_answered_and_logged_on_postgresql() {
    refusals(Engine::Postgres);
}

fn refusals(engine: Engine) {
    let s = Stack::on(engine, &[]);
    let rt = ready(&s, "db-1");

    // Affirming first, then the same evidence again: the nonce is spent.
    let n = rt.nonce(&s);
    let body = rt.evidence(&n);
    let (st, v) = s.post("/v1/attest", &body, None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "affirming");
    let again = s.post("/v1/attest", &body, None);
    refused_and_logged(&s, &again, "db-1", "nonce_consumed");

    // Two concurrent uses of one nonce: exactly one succeeds.
    let n = rt.nonce(&s);
    let body = rt.evidence(&n);
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| s.post("/v1/attest", &body, None)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        answers.iter().filter(|(st, _)| *st == 200).count(),
        1,
        "{answers:?}"
    );
    assert!(
        answers
            .iter()
            .all(|(st, v)| *st == 200 || v["code"] == "nonce_consumed"),
        "{answers:?}"
    );

    // A nonce nobody handed out.
    let mut fake = rt.nonce(&s);
    fake["nonce"] = json!(STANDARD.encode([9u8; 32]));
    let a = s.post("/v1/attest", &rt.evidence(&fake), None);
    refused_and_logged(&s, &a, "db-1", "nonce_unknown");

    // A quote over a narrower selection than the profile requires.
    let n = rt.nonce(&s);
    let a = s.post(
        "/v1/attest",
        &rt.evidence_over(&n, Some("sha256:0,1,2,3")),
        None,
    );
    refused_and_logged(&s, &a, "db-1", "pcr_selection");
    // The spent nonce cannot be tried again with the right selection.
    let a = s.post("/v1/attest", &rt.evidence(&n), None);
    refused_and_logged(&s, &a, "db-1", "nonce_consumed");

    // Reported PCR values that are not what the TPM quoted.
    let n = rt.nonce(&s);
    let mut body = rt.evidence(&n);
    body["pcrs"]["sha256"]["0"] = json!(hex::encode([1u8; 32]));
    let a = s.post("/v1/attest", &body, None);
    refused_and_logged(&s, &a, "db-1", "pcr_digest");

    // A certification signed by another AK of the same TPM (not the enrolled one).
    let n = rt.nonce(&s);
    let mut body = rt.evidence(&n);
    let other_ak = rt.tpm.create_ak().unwrap();
    {
        let nonce = STANDARD.decode(n["nonce"].as_str().unwrap()).unwrap();
        let ak = rt.tpm.load_ak(&other_ak).unwrap();
        let holder = rt
            .tpm
            .load_holder_key(&rt.holder, Some(HOLDER_AUTH))
            .unwrap();
        let c = rt.tpm.certify(&ak, &holder, &nonce).unwrap();
        body["holder"]["certify"] = json!({"attest": STANDARD.encode(&c.attest), "signature": STANDARD.encode(&c.signature)});
    }
    let a = s.post("/v1/attest", &body, None);
    refused_and_logged(&s, &a, "db-1", "certify_signature");

    // A holder key other than the one certified.
    let n = rt.nonce(&s);
    let mut body = rt.evidence(&n);
    let other = rt.tpm.create_holder_key(None).unwrap();
    body["holder"]["public"] = json!(STANDARD.encode(&other.public));
    let a = s.post("/v1/attest", &body, None);
    refused_and_logged(&s, &a, "db-1", "certified_name");

    // An event log that does not explain the quote (another boot's log): contraindicated, and
    // the runtime's state.
    let n = rt.nonce(&s);
    let mut body = rt.evidence(&n);
    let other_boot =
        writ_attestation::eventlog::simulated::simulated_boot(BootProfile::NoSecureBoot).unwrap();
    body["event_log"] = json!(STANDARD.encode(&other_boot.log));
    let a = s.post("/v1/attest", &body, None);
    refused_and_logged(&s, &a, "db-1", "pcr_replay");
    let list: Value = serde_json::from_slice(&s.admin(&["runtimes"]).stdout).unwrap();
    assert_eq!(list[0]["attestation"]["status"], "contraindicated");
    // A log that does not parse at all.
    let n = rt.nonce(&s);
    let mut body = rt.evidence(&n);
    body["event_log"] = json!(STANDARD.encode(&rt.log[..rt.log.len() - 7]));
    let a = s.post("/v1/attest", &body, None);
    refused_and_logged(&s, &a, "db-1", "event_log");
    // Honest evidence restores it.
    let (st, v) = rt.attest(&s);
    assert_eq!(st, 200, "{v}");

    // A quote over another nonce than the one sent.
    let n = rt.nonce(&s);
    let other = rt.nonce(&s);
    let mut body = rt.evidence(&n);
    body["nonce"] = other["nonce"].clone();
    body["holder"] = rt.evidence(&other)["holder"].clone();
    let a = s.post("/v1/attest", &body, None);
    refused_and_logged(&s, &a, "db-1", "nonce_mismatch");
    // A certification over another nonce than the quote's.
    let n = rt.nonce(&s);
    let other = rt.nonce(&s);
    let mut body = rt.evidence(&n);
    body["holder"] = rt.evidence(&other)["holder"].clone();
    let a = s.post("/v1/attest", &body, None);
    refused_and_logged(&s, &a, "db-1", "certify_nonce");

    // Unknown runtimes and malformed bodies: refused before anyone is identified.
    let (st, v) = s.post("/v1/attest/nonce", &json!({"name": "nobody"}), None);
    assert_eq!(
        (st, v["code"].as_str()),
        (404, Some("runtime_unknown")),
        "{v}"
    );
    let n = rt.nonce(&s);
    let mut body = rt.evidence(&n);
    body["name"] = json!("nobody");
    let (st, v) = s.post("/v1/attest", &body, None);
    assert_eq!(
        (st, v["code"].as_str()),
        (404, Some("runtime_unknown")),
        "{v}"
    );
    let (st, v) = s.post("/v1/attest", &json!({"name": "db-1"}), None);
    assert_eq!((st, v["code"].as_str()), (400, Some("malformed")), "{v}");
    let (st, v) = s.post("/v1/attest/nonce", &json!({"name": "DB 1"}), None);
    assert_eq!((st, v["code"].as_str()), (400, Some("malformed")), "{v}");

    // A quote not signed by the runtime's AK is nobody's: refused, not logged.
    let size = s.records().len();
    let n = rt.nonce(&s);
    let mut body = rt.evidence(&n);
    let mut sig = STANDARD
        .decode(body["quote"]["signature"].as_str().unwrap())
        .unwrap();
    let at = sig.len() - 5;
    sig[at] ^= 1;
    body["quote"]["signature"] = json!(STANDARD.encode(&sig));
    let (st, v) = s.post("/v1/attest", &body, None);
    assert_eq!((st, v["code"].as_str()), (401, Some("signature")), "{v}");
    assert_eq!(s.records().len(), size);
    // Nor is one whose signature claims SHA-1 or an unknown scheme (refused before any
    // signature is checked), even over a nonce of the runtime's: no record, the nonce unspent.
    let n = rt.nonce(&s);
    let honest = rt.evidence(&n);
    for (alg, hash, code) in [
        (0x0018u16, 0x0004u16, "hash_too_weak"),
        (0x0099, 0x000b, "unsupported_algorithm"),
    ] {
        let mut body = honest.clone();
        let mut sig = STANDARD
            .decode(body["quote"]["signature"].as_str().unwrap())
            .unwrap();
        sig[0..2].copy_from_slice(&alg.to_be_bytes());
        sig[2..4].copy_from_slice(&hash.to_be_bytes());
        body["quote"]["signature"] = json!(STANDARD.encode(&sig));
        let (st, v) = s.post("/v1/attest", &body, None);
        assert_eq!(st, 401, "{v}");
        assert!(
            v["code"] == code || v["code"] == "signature_scheme" || v["code"] == "malformed",
            "{v}"
        );
        assert_eq!(s.records().len(), size);
    }
    let (st, v) = s.post("/v1/attest", &honest, None);
    assert_eq!(st, 200, "{v}");

    // Revocation takes effect for the next request: a nonce handed out before it is refused
    // (and logged), and no new nonce is handed out.
    let n = rt.nonce(&s);
    let body = rt.evidence(&n);
    ok(&s.admin(&["revoke", "db-1"]));
    let a = s.post("/v1/attest", &body, None);
    refused_and_logged(&s, &a, "db-1", "revoked");
    let (st, v) = s.post("/v1/attest/nonce", &json!({"name": "db-1"}), None);
    assert_eq!((st, v["code"].as_str()), (403, Some("revoked")), "{v}");
}

#[test]
fn an_expired_nonce_is_refused_and_logged() {
    // This appliance's nonces live 1 s (expiry is counted in whole seconds: after 2.1 s any
    // nonce has expired).
    let s = Stack::on(Engine::Sqlite, &["--nonce-ttl", "1"]);
    let rt = ready(&s, "old-1");
    let n = rt.nonce(&s);
    let body = rt.evidence(&n);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let a = s.post("/v1/attest", &body, None);
    refused_and_logged(&s, &a, "old-1", "nonce_expired");
}

#[test]
fn a_nonce_outlives_a_kill_of_the_appliance_and_works_once() {
    for engine in [Engine::Sqlite, Engine::Postgres] {
        let mut s = Stack::on(engine, &[]);
        let rt = ready(&s, "job-1");
        // kill -9 between the nonce and its use: it works once, then never again.
        let n = rt.nonce(&s);
        let body = rt.evidence(&n);
        s.kill_and_restart();
        let (st, v) = s.post("/v1/attest", &body, None);
        assert_eq!(st, 200, "{v}");
        let a = s.post("/v1/attest", &body, None);
        refused_and_logged(&s, &a, "job-1", "nonce_consumed");
        // A nonce handed out before the kill and never used works once after it too.
        let n = rt.nonce(&s);
        s.kill_and_restart();
        let body = rt.evidence(&n);
        let (st, v) = s.post("/v1/attest", &body, None);
        assert_eq!(st, 200, "{v}");
        let a = s.post("/v1/attest", &body, None);
        refused_and_logged(&s, &a, "job-1", "nonce_consumed");
    }
}

#[test]
fn a_nonce_of_another_runtime_is_refused() {
    let (s, other_tpm) = Stack::with_second_tpm(&[]);
    let a = ready(&s, "a-1");
    let b = Runtime::enroll(&s, &other_tpm, "b-1");
    assign(&s, "b-1", &profile_of(&b.tpm));
    // b's evidence over a nonce handed out for a.
    let n = a.nonce(&s);
    let mut body = b.evidence(&n);
    body["name"] = json!("b-1");
    let r = s.post("/v1/attest", &body, None);
    refused_and_logged(&s, &r, "b-1", "nonce_foreign");
    // a can still use it.
    let (st, v) = s.post("/v1/attest", &a.evidence(&n), None);
    assert_eq!(st, 200, "{v}");
    // Unused nonces per runtime are bounded.
    let mut last = (0, Value::Null);
    for _ in 0..=writ::appliance::MAX_PENDING_NONCES {
        last = s.post("/v1/attest/nonce", &json!({"name": "b-1"}), None);
    }
    assert_eq!(last.0, 429, "{}", last.1);
    assert_eq!(last.1["code"], "too_many_nonces");
}

#[test]
fn tpm_counters_going_backwards_are_contraindicated() {
    let mut s = Stack::new();
    let rt = ready(&s, "edge-1");
    let (st, v) = rt.attest(&s);
    assert_eq!(st, 200, "{v}");
    // The TPM's state now, then two reboots, each measured and attested.
    let snapshot = s.tpm.snapshot();
    for _ in 0..2 {
        s.tpm.reboot();
        simulate_boot(&rt.tpm, BootProfile::SecureBoot).unwrap();
        let (st, v) = rt.attest(&s);
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["counters"], "reboot");
    }
    // The TPM's state restored from before them: its resetCount goes back.
    s.tpm.restore(&snapshot);
    // The attester's connection died with the old swtpm: the first call says so, the next
    // one reconnects.
    let _ = rt.tpm.read_pcrs(&"sha256:0".parse().unwrap());
    simulate_boot(&rt.tpm, BootProfile::SecureBoot).unwrap();
    let r = rt.attest(&s);
    refused_and_logged(&s, &r, "edge-1", "counters_rollback");
    let list: Value = serde_json::from_slice(&s.admin(&["runtimes"]).stdout).unwrap();
    assert_eq!(list[0]["attestation"]["status"], "contraindicated");
    // The restored TPM's next quote compares with nothing it could have lowered: it stays
    // contraindicated, after another reboot too.
    let r = rt.attest(&s);
    refused_and_logged(&s, &r, "edge-1", "counters_rollback");
    s.tpm.reboot();
    simulate_boot(&rt.tpm, BootProfile::SecureBoot).unwrap();
    let r = rt.attest(&s);
    refused_and_logged(&s, &r, "edge-1", "counters_rollback");
    // Until an admin re-baselines it (logged): then its next attestation is its first.
    ok(&s.admin(&["rebaseline", "edge-1"]));
    let (kind, _, decision, _) = last(&s);
    assert_eq!((kind.as_str(), decision.as_str()), ("admin", "allow"));
    let (st, v) = rt.attest(&s);
    assert_eq!((st, v["counters"].as_str()), (200, Some("first")), "{v}");
}

#[test]
fn a_profile_can_bind_the_holder_key_to_the_attested_pcrs() {
    let s = Stack::new();
    let mut rt = Runtime::enroll(&s, &s.tpm, "gpu-1");
    let mut profile = profile_of(&rt.tpm);
    profile["holder_pcr_policy"] = json!(true);
    assign(&s, "gpu-1", &profile);
    // The nonce answer says so.
    let n = rt.nonce(&s);
    assert_eq!(n["holder_pcr_policy"], true);
    // A holder key without the policy is refused, and logged.
    let a = s.post("/v1/attest", &rt.evidence(&n), None);
    refused_and_logged(&s, &a, "gpu-1", "holder_policy");
    // One bound to the current values of the selection is accepted.
    let sel: PcrSelection = n["selection"].as_str().unwrap().parse().unwrap();
    rt.holder = rt.tpm.create_holder_key_bound(HOLDER_AUTH, &sel).unwrap();
    let (st, v) = rt.attest(&s);
    assert_eq!(st, 200, "{v}");
    // It signs while the machine stays in the attested state...
    let digest = [3u8; 32];
    let holder = rt
        .tpm
        .load_holder_key(&rt.holder, Some(HOLDER_AUTH))
        .unwrap();
    let sig = rt.tpm.sign_digest_bound(&holder, &sel, &digest).unwrap();
    let public = writ_attestation::tpm::public::Public::from_tpmt(&rt.holder.public).unwrap();
    let writ_attestation::tpm::public::KeyParams::Ecc { x, y, .. } = public.params() else {
        panic!("an ECC key")
    };
    let jwk = writ_attestation::jwk::EcJwk::from_coordinates(x, y).unwrap();
    assert_eq!(jwk.thumbprint(), v["holder_jkt"].as_str().unwrap());
    {
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        jwk.verifying_key()
            .unwrap()
            .verify_prehash(&digest, &sig)
            .unwrap();
    }
    // ...and the authValue alone does not make it sign (userWithAuth is clear).
    assert!(rt.tpm.sign_digest(&holder, &digest).is_err());
    // A key with the right policy but userWithAuth set (its authValue alone would make it
    // sign, whatever the PCRs hold) is refused too. Made with tpm2-tools under the attester's
    // storage key.
    drop(holder); // swtpm has three object slots
    {
        let values = rt.tpm.read_pcrs(&sel).unwrap();
        let policy = writ_attestation::tpm::policy::pcr_and_auth_value(&sel, &values).unwrap();
        let loose = tool_key(
            &s.tpm,
            "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign",
            Some(&policy),
        );
        let n = rt.nonce(&s);
        let mut body = rt.evidence(&n);
        let nonce = STANDARD.decode(n["nonce"].as_str().unwrap()).unwrap();
        let ak = rt.tpm.load_ak(&rt.ak).unwrap();
        let key = rt.tpm.load_holder_key(&loose, None).unwrap();
        let c = rt.tpm.certify(&ak, &key, &nonce).unwrap();
        body["holder"] = json!({
            "public": STANDARD.encode(&loose.public),
            "certify": {"attest": STANDARD.encode(&c.attest), "signature": STANDARD.encode(&c.signature)},
        });
        drop((ak, key));
        let a = s.post("/v1/attest", &body, None);
        refused_and_logged(&s, &a, "gpu-1", "holder_policy");
    }
    let holder = rt
        .tpm
        .load_holder_key(&rt.holder, Some(HOLDER_AUTH))
        .unwrap();
    // Once a PCR of the selection moves, the TPM refuses to sign with it.
    rt.tpm.extend_pcr(7, &[9u8; 32]).unwrap();
    let e = rt
        .tpm
        .sign_digest_bound(&holder, &sel, &digest)
        .unwrap_err();
    assert!(e.to_string().to_lowercase().contains("policy"), "{e}");
    // And a key bound to values other than the quoted ones is refused by the appliance: the
    // machine is now in another state, the old bound key does not match its quote.
    drop(holder);
    let n = rt.nonce(&s);
    let a = s.post("/v1/attest", &rt.evidence(&n), None);
    refused_and_logged(&s, &a, "gpu-1", "holder_policy");
}

#[test]
fn writ_agent_makes_a_bound_holder_key_when_the_profile_asks() {
    let s = Stack::new();
    let (a, log_file, state) = agent_enrolled(&s, "ci-1");
    let mut profile = profile_of(&a);
    profile["holder_pcr_policy"] = json!(true);
    assign(&s, "ci-1", &profile);
    let out = agent_attest(&s, &state, &log_file);
    ok(&out);
    assert!(state.join("holder-bound.json").is_file());
    let first: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The same state: the same key.
    let out = agent_attest(&s, &state, &log_file);
    ok(&out);
    let second: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(first["holder_jkt"], second["holder_jkt"]);
}

#[test]
fn relabelled_events_and_keys_not_bound_to_the_tpm_are_refused() {
    let s = Stack::new();
    let rt = ready(&s, "svc-1");

    // Relabelling an event (its type is not in its digest) never improves the result. The
    // SecureBoot variable's event relabelled from EV_EFI_VARIABLE_DRIVER_CONFIG to
    // EV_EFI_VARIABLE_AUTHORITY: the fact is read by its content, the result stays affirming.
    let relabel = |log: &[u8], pcr: u8, from: u32, to: u32| -> Vec<u8> {
        let mut log = log.to_vec();
        let mut pattern = vec![pcr, 0, 0, 0];
        pattern.extend_from_slice(&from.to_le_bytes());
        let at = log
            .windows(8)
            .position(|w| w == pattern.as_slice())
            .expect("the event");
        log[at + 4..at + 8].copy_from_slice(&to.to_le_bytes());
        log
    };
    let n = rt.nonce(&s);
    let mut body = rt.evidence(&n);
    body["event_log"] = json!(STANDARD.encode(relabel(&rt.log, 7, 0x8000_0001, 0x8000_00e0)));
    let (st, v) = s.post("/v1/attest", &body, None);
    assert_eq!((st, v["status"].as_str()), (200, Some("affirming")), "{v}");
    // A profile that names the allowed boot applications (not this one) and no PCR 4 value:
    // the boot manager's image is refused, and relabelled as an EV_EFI_ACTION it is still an
    // image, still refused.
    let mut profile = profile_of(&rt.tpm);
    profile["pcrs"].as_object_mut().unwrap().remove("4");
    profile["boot_applications"] = json!([hex::encode([0x42u8; 32])]);
    assign(&s, "svc-1", &profile);
    let n = rt.nonce(&s);
    let a = s.post("/v1/attest", &rt.evidence(&n), None);
    refused_and_logged(&s, &a, "svc-1", "boot_application");
    let n = rt.nonce(&s);
    let mut body = rt.evidence(&n);
    body["event_log"] = json!(STANDARD.encode(relabel(&rt.log, 4, 0x8000_0003, 0x8000_0007)));
    let a = s.post("/v1/attest", &body, None);
    refused_and_logged(&s, &a, "svc-1", "boot_application");
    assign(&s, "svc-1", &profile_of(&rt.tpm));

    // A duplicable key (fixedTPM and fixedParent clear), made with tpm2-tools under the same
    // storage key the attester uses, certified by the enrolled AK: not a holder key.
    let duplicable = tool_key(&s.tpm, "sign|userwithauth|sensitivedataorigin", None);
    let n = rt.nonce(&s);
    let mut body = rt.evidence(&n);
    {
        let nonce = STANDARD.decode(n["nonce"].as_str().unwrap()).unwrap();
        let ak = rt.tpm.load_ak(&rt.ak).unwrap();
        let key = rt.tpm.load_holder_key(&duplicable, None).unwrap();
        let c = rt.tpm.certify(&ak, &key, &nonce).unwrap();
        body["holder"] = json!({
            "public": STANDARD.encode(&duplicable.public),
            "certify": {"attest": STANDARD.encode(&c.attest), "signature": STANDARD.encode(&c.signature)},
        });
    }
    let a = s.post("/v1/attest", &body, None);
    refused_and_logged(&s, &a, "svc-1", "certified_key");
    assert!(
        a.1["detail"].as_str().unwrap().contains("fixedTPM"),
        "{}",
        a.1
    );
}

#[test]
fn forged_quotes_are_rate_limited_and_an_appliance_without_an_ear_key_issues_nothing() {
    let s = Stack::on(Engine::Sqlite, &["--unidentified-per-minute", "3"]);
    let rt = ready(&s, "lim-1");
    let n = rt.nonce(&s);
    let mut forged = rt.evidence(&n);
    let mut sig = STANDARD
        .decode(forged["quote"]["signature"].as_str().unwrap())
        .unwrap();
    let at = sig.len() - 3;
    sig[at] ^= 0x40;
    forged["quote"]["signature"] = json!(STANDARD.encode(&sig));
    let codes: Vec<u16> = (0..4)
        .map(|_| s.post("/v1/attest", &forged, None).0)
        .collect();
    assert_eq!(codes, [401, 401, 401, 429]);
    drop(s);

    // Without an ear key nothing is issued: the refusal is logged and spends the nonce; the
    // runtime's state is untouched.
    let mut s = Stack::new();
    let rt = ready(&s, "noear-1");
    s.ear_key.clear();
    s.kill_and_restart();
    let n = rt.nonce(&s);
    let body = rt.evidence(&n);
    let (st, v) = s.post("/v1/attest", &body, None);
    assert_eq!((st, v["code"].as_str()), (503, Some("ear_signing")), "{v}");
    let (kind, _, decision, reasons) = last(&s);
    assert_eq!((kind.as_str(), decision.as_str()), ("attest", "deny"));
    assert_eq!(reasons, ["ear_signing"]);
    let a = s.post("/v1/attest", &body, None);
    refused_and_logged(&s, &a, "noear-1", "nonce_consumed");
    let list: Value = serde_json::from_slice(&s.admin(&["runtimes"]).stdout).unwrap();
    assert!(list[0]["attestation"].is_null(), "{list}");
}

/// A P-256 signing key with `attributes` (tpm2-tools syntax) and `policy` as its authPolicy,
/// made with tpm2-tools under the storage key the attester uses (its template is deterministic),
/// so the attester can load it.
fn tool_key(tpm: &Swtpm, attributes: &str, policy: Option<&[u8]>) -> KeyBlob {
    let dir = tempfile::tempdir().unwrap();
    tpm.tool(
        dir.path(),
        &[
            "tpm2_createprimary",
            "-C",
            "o",
            "-g",
            "sha256",
            "-G",
            "ecc256:aes128cfb",
            "-a",
            "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt",
            "-c",
            "srk.ctx",
        ],
    );
    tpm.tool(dir.path(), &["tpm2_flushcontext", "-t"]);
    let mut args = vec![
        "tpm2_create",
        "-C",
        "srk.ctx",
        "-g",
        "sha256",
        "-G",
        "ecc256:ecdsa-sha256",
        "-a",
        attributes,
        "-u",
        "k.pub",
        "-r",
        "k.priv",
    ];
    if let Some(p) = policy {
        std::fs::write(dir.path().join("policy.bin"), p).unwrap();
        args.extend(["-L", "policy.bin"]);
    }
    tpm.tool(dir.path(), &args);
    tpm.tool(dir.path(), &["tpm2_flushcontext", "-t"]);
    // tpm2-tools writes TPM2B_PUBLIC and TPM2B_PRIVATE: the buffers follow a 2-byte size.
    let public = std::fs::read(dir.path().join("k.pub")).unwrap()[2..].to_vec();
    let private = std::fs::read(dir.path().join("k.priv")).unwrap()[2..].to_vec();
    let mut name = vec![0x00, 0x0b];
    name.extend_from_slice(&<sha2::Sha256 as sha2::Digest>::digest(&public));
    KeyBlob {
        public,
        private,
        name,
    }
}
