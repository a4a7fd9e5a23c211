//! Interop both ways with PyJWT (Debian's python3-jwt), an independent JWT implementation:
//! writs made here verify there with the issuer's published JWK, and DPoP proofs made there
//! (by a key it generated, with its own JWK encoding) verify here through the one verification
//! function. Each direction also shows the other side refusing what it must.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::process::Command;

use common::{AUD, ISS, bundle, jwk, key, now, writ};
use serde_json::Value;
use writ_attestation::crypto::default_provider;
use writ_attestation::jwk::EcJwk;
use writ_attestation::writ::bundle::TrustBundle;
use writ_attestation::writ::request::{Request, digest, proof_target};
use writ_attestation::writ::verify::{Context, verify};
use writ_gateway::replay::SqliteReplay;

/// Debian's interpreter, where python3-jwt lives (not whatever `python3` is first on PATH).
const PYTHON: &str = "/usr/bin/python3";

fn pyjwt(args: &[&str]) -> (bool, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/pyjwt.py");
    let o = Command::new(PYTHON)
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{PYTHON}: {e} (install python3-jwt)"));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "PyJWT is missing (install python3-jwt): {stderr}"
    );
    // On failure the answer carries stderr too, for the assertion message; on success only
    // stdout, which the caller parses.
    let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
    if o.status.success() {
        (true, out)
    } else {
        (false, out + "\n" + &stderr)
    }
}

fn exec_req() -> (String, String, String) {
    let argv = vec!["--env".to_string(), "prod".to_string()];
    let r = Request::Exec {
        tool: "deploy",
        argv: &argv,
    };
    let (htm, htu) = proof_target(&r).unwrap();
    (digest(&r).unwrap(), htm, htu)
}

#[test]
fn writs_made_here_verify_with_pyjwt() {
    let t = now();
    let (req, _, _) = exec_req();
    let token = writ(t, 1, &jwk(&key(9)).thumbprint(), &req);
    let issuer = jwk(&key(1)).to_json(Some("issuer")).to_string();
    let (ok, out) = pyjwt(&["verify-writ", &issuer, &token, AUD, ISS]);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["header"]["typ"], "writ+jwt");
    assert_eq!(v["header"]["alg"], "ES256");
    assert_eq!(v["claims"]["act"]["req"], req.as_str());
    assert_eq!(v["claims"]["cnf"]["jkt"], jwk(&key(9)).thumbprint());
    // PyJWT really checks: another key, another audience, a flipped signature byte.
    let other = jwk(&key(2)).to_json(Some("issuer")).to_string();
    let (ok, out) = pyjwt(&["verify-writ", &other, &token, AUD, ISS]);
    assert!(!ok && out.contains("InvalidSignatureError"), "{out}");
    let (ok, out) = pyjwt(&["verify-writ", &issuer, &token, "spiffe://x/gateway/y", ISS]);
    assert!(!ok && out.contains("InvalidAudienceError"), "{out}");
    let (head, sig) = token.rsplit_once('.').unwrap();
    let flipped = format!(
        "{head}.{}{}",
        if sig.starts_with('A') { 'B' } else { 'A' },
        &sig[1..]
    );
    let (ok, out) = pyjwt(&["verify-writ", &issuer, &flipped, AUD, ISS]);
    assert!(!ok && out.contains("InvalidSignatureError"), "{out}");
}

#[test]
fn dpop_proofs_made_by_pyjwt_verify_here() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = pyjwt(&["holder-key"]);
    assert!(ok, "{out}");
    let holder: Value = serde_json::from_str(&out).unwrap();
    let pem = dir.path().join("holder.pem");
    std::fs::write(&pem, holder["pem"].as_str().unwrap()).unwrap();
    let j = &holder["jwk"];
    let s = |k: &str| j[k].as_str().unwrap();
    // The thumbprint (RFC 7638) agrees with PyJWT's side's, computed independently.
    let theirs = EcJwk::from_members(s("kty"), s("crv"), s("x"), s("y")).unwrap();
    assert_eq!(theirs.thumbprint(), holder["jkt"].as_str().unwrap());

    let t = now();
    let (req, htm, htu) = exec_req();
    let token = writ(t, 2, &theirs.thumbprint(), &req);
    let jwk_json = j.to_string();
    let (ok, proof) = pyjwt(&[
        "proof",
        pem.to_str().unwrap(),
        &jwk_json,
        &htm,
        &htu,
        &token,
    ]);
    assert!(ok, "{proof}");
    let (ok, stray) = pyjwt(&[
        "proof",
        pem.to_str().unwrap(),
        &jwk_json,
        "EXEC",
        "exec:sha256:0000000000000000000000000000000000000000000000000000000000000000",
        &token,
    ]);
    assert!(ok, "{stray}");

    let b = TrustBundle::parse(bundle(t).to_string().as_bytes()).unwrap();
    let store = SqliteReplay::open(&dir.path().join("r.db")).unwrap();
    let check = |proof: &str| {
        verify(
            default_provider(),
            &b,
            &Context {
                token: &token,
                proof: Some(proof),
                request_digest: &req,
                htm: &htm,
                htu: &htu,
                audience: AUD,
                now: now(),
                skew: 30,
                nonce: None,
                max_bundle_age: 86_400,
            },
            &store,
        )
    };
    // A PyJWT proof for another request is refused here (and consumes nothing).
    assert_eq!(check(&stray).unwrap_err().code, "proof_binding");
    let auth = check(&proof).unwrap();
    assert_eq!(auth.proof().jkt, theirs.thumbprint());
    assert_eq!(check(&proof).unwrap_err().code, "replayed");
}
