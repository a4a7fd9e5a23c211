//! Writs and proofs as the appliance and runtimes make them, with software keys, for the
//! benchmarks of the gateway's verification (verify-bench, gate-bench).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};
use writ_attestation::jwk::EcJwk;
use writ_attestation::writ::Refusal;
use writ_attestation::writ::dpop::{self, ProofClaims};
use writ_attestation::writ::jws::{self, Es256Signer};

/// The gateway audience of every writ made here.
pub const AUD: &str = "spiffe://bench.test/gateway/g";

/// A software ES256 signer (aws-lc-rs, fixed-size r || s), so that making the inputs is quick.
pub struct Key {
    pair: aws_lc_rs::signature::EcdsaKeyPair,
    /// Its public key.
    pub jwk: EcJwk,
}

impl Key {
    /// The key of `seed` (0 is the issuer's).
    pub fn new(seed: u64) -> Key {
        let mut d = [7u8; 32];
        d[..8].copy_from_slice(&seed.to_be_bytes());
        let sk = p256::ecdsa::SigningKey::from_slice(&d).unwrap();
        let public = sk.verifying_key().to_sec1_point(false);
        let pair = aws_lc_rs::signature::EcdsaKeyPair::from_private_key_and_public_key(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &d,
            public.as_bytes(),
        )
        .unwrap();
        Key {
            pair,
            jwk: EcJwk::from_verifying_key(sk.verifying_key()),
        }
    }
}

impl Es256Signer for Key {
    fn sign_es256(&self, m: &[u8]) -> Result<[u8; 64], Refusal> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let s = self.pair.sign(&rng, m).unwrap();
        Ok(s.as_ref().try_into().unwrap())
    }
}

/// Now, seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn policy() -> String {
    format!("sha256:{}", "c".repeat(64))
}

/// The trust bundle publishing `Key::new(0)` as the issuer, issued at `t - 10`, for a day.
pub fn bundle(t: i64) -> Value {
    let mut k = Key::new(0).jwk.to_json(Some("issuer"));
    k["kid"] = json!("issuer-1");
    json!({
        "keys": [k], "spiffe_sequence": 1, "spiffe_refresh_hint": 300,
        "writ": {"trust_domain": "bench.test", "issued_at": t - 10, "expires_at": t + 86_400,
                 "policy_bundles": [policy()],
                 "log": {"origin": "bench.test/log", "verifier_key": "bench.test/log+00000000+AA"}}
    })
}

/// What a pair is for: the request digest and the proof's `htm` and `htu`.
#[derive(Debug, Clone)]
pub struct Target {
    /// `act.req`.
    pub req: String,
    /// The proof's `htm`.
    pub htm: String,
    /// The proof's `htu`.
    pub htu: String,
    /// The action (`exec` or `http`).
    pub action: &'static str,
}

/// The `i`th (writ, proof) pair for `target`, held by `holder`, made at `t`: a distinct `jti`
/// per `i` (writ and proof).
pub fn pair(issuer: &Key, holder: &Key, target: &Target, i: usize, t: i64) -> (String, String) {
    let claims = json!({
        "iss": "spiffe://bench.test/writ/appliance", "sub": "spiffe://bench.test/runtime/a",
        "aud": AUD, "iat": t - 5, "nbf": t - 5, "exp": t + 3600,
        "jti": B64.encode((i as u128).to_be_bytes()),
        "cnf": {"jkt": holder.jwk.thumbprint()},
        "att": {"status": "affirming", "ear": format!("sha256:{}", "a".repeat(64)),
                "evidence": format!("sha256:{}", "b".repeat(64)),
                "nonce": B64.encode([1u8; 32]), "policy": policy()},
        "lin": {"parent": null, "root": null, "depth": 0},
        "act": {"name": target.action, "resource": "tools/deploy", "req": target.req},
    });
    let writ = jws::sign(
        &json!({"alg":"ES256","typ":"writ+jwt","kid":"issuer-1"}),
        &claims,
        issuer,
    )
    .unwrap();
    let proof = dpop::create(
        holder,
        &holder.jwk,
        &ProofClaims {
            jti: format!("p{i}"),
            iat: t,
            htm: target.htm.clone(),
            htu: target.htu.clone(),
            ath: dpop::ath(&writ),
            nonce: None,
        },
    )
    .unwrap();
    (writ, proof)
}
