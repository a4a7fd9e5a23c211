//! What the gateway's tests share: a software issuer and holder (p256), a trust bundle and writ
//! claims as the appliance would make them.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use p256::ecdsa::signature::hazmat::PrehashSigner;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use writ_attestation::jwk::EcJwk;
use writ_attestation::writ::Refusal;
use writ_attestation::writ::dpop::{self, ProofClaims};
use writ_attestation::writ::jws::{self, Es256Signer};

pub struct Key(pub p256::ecdsa::SigningKey);

impl Es256Signer for Key {
    fn sign_es256(&self, m: &[u8]) -> Result<[u8; 64], Refusal> {
        let d: [u8; 32] = Sha256::digest(m).into();
        let s: p256::ecdsa::Signature = self.0.sign_prehash(&d).unwrap();
        Ok(s.to_bytes().as_slice().try_into().unwrap())
    }
}

pub fn key(seed: u8) -> Key {
    Key(p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap())
}

pub fn jwk(k: &Key) -> EcJwk {
    EcJwk::from_verifying_key(k.0.verifying_key())
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub const AUD: &str = "spiffe://writ.test/gateway/g";
pub const ISS: &str = "spiffe://writ.test/writ/appliance";
pub const ISSUER_KID: &str = "issuer-1";

/// `sha256:` and 64 times `c`.
pub fn d(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

/// A trust bundle with `key(1)` as the issuer, accepting policy `d('c')`, issued at `t - 10`.
pub fn bundle(t: i64) -> Value {
    let mut issuer = jwk(&key(1)).to_json(Some("issuer"));
    issuer["kid"] = json!(ISSUER_KID);
    json!({
        "keys": [issuer],
        "spiffe_sequence": 1,
        "spiffe_refresh_hint": 300,
        "writ": {"trust_domain": "writ.test", "issued_at": t - 10, "expires_at": t + 3600,
                 "policy_bundles": [d('c')],
                 "log": {"origin": "writ.test/log", "verifier_key": "writ.test/log+00000000+AA"}}
    })
}

/// An execution writ for the command `req`, held by the key with thumbprint `jkt`, signed by
/// `key(1)`.
pub fn writ(t: i64, jti: u8, jkt: &str, req: &str) -> String {
    writ_as(t, jti, jkt, req, "exec", "tools/deploy")
}

/// An execution writ for the HTTP request `req` (action `http`, resource `api/pay`).
pub fn http_writ(t: i64, jti: u8, jkt: &str, req: &str) -> String {
    writ_as(t, jti, jkt, req, "http", "api/pay")
}

/// An execution writ for `req` with action `name` on `resource`.
pub fn writ_as(t: i64, jti: u8, jkt: &str, req: &str, name: &str, resource: &str) -> String {
    let claims = json!({
        "iss": ISS, "sub": "spiffe://writ.test/runtime/a", "aud": AUD,
        "iat": t - 5, "nbf": t - 5, "exp": t + 120, "jti": B64.encode([jti; 16]),
        "cnf": {"jkt": jkt},
        "att": {"status": "affirming", "ear": d('a'), "evidence": d('b'), "nonce": B64.encode([1u8; 32]), "policy": d('c')},
        "lin": {"parent": null, "root": null, "depth": 0},
        "act": {"name": name, "resource": resource, "req": req},
    });
    jws::sign(
        &json!({"alg":"ES256","typ":"writ+jwt","kid":ISSUER_KID}),
        &claims,
        &key(1),
    )
    .unwrap()
}

/// Writes a bundle, a writ for `req` and a proof into `dir`.
pub fn setup(dir: &Path, req: &str, htm: &str, htu: &str, jti: u8) {
    let t = now();
    std::fs::write(dir.join("bundle.json"), bundle(t).to_string()).unwrap();
    let holder = key(9);
    let writ = if htm == "EXEC" {
        writ(t, jti, &jwk(&holder).thumbprint(), req)
    } else {
        http_writ(t, jti, &jwk(&holder).thumbprint(), req)
    };
    std::fs::write(dir.join("writ.jws"), &writ).unwrap();
    let proof = dpop::create(
        &holder,
        &jwk(&holder),
        &ProofClaims {
            jti: format!("proof-{jti}"),
            iat: t,
            htm: htm.into(),
            htu: htu.into(),
            ath: dpop::ath(&writ),
            nonce: None,
        },
    )
    .unwrap();
    std::fs::write(dir.join("proof.jws"), proof).unwrap();
}
