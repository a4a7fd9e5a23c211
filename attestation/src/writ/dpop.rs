//! RFC 9449 DPoP proofs, as the holder proof of a writ: `typ` `dpop+jwt`, ES256, the public `jwk`
//! in the header (its thumbprint must be the writ's `cnf.jkt`), claims `jti`, `iat`, `htm`,
//! `htu`, `ath` (base64url SHA-256 of the writ) and `nonce` when the server sent one. For a
//! command, `htm` is `EXEC` and `htu` is `exec:` + the request digest.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Refusal;
use super::jws::{Es256Signer, HeaderShape, TYP_DPOP, parse, sign};
use crate::crypto::CryptoProvider;
use crate::jwk::EcJwk;

/// A proof's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofClaims {
    /// Unique per proof.
    pub jti: String,
    /// Issued at.
    pub iat: i64,
    /// The HTTP method, or `EXEC`.
    pub htm: String,
    /// The URL without query and fragment, or `exec:` + the request digest.
    pub htu: String,
    /// base64url SHA-256 of the writ.
    pub ath: String,
    /// The server's DPoP-Nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// `ath` of a token.
pub fn ath(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// Makes a proof with `signer`, whose public key is `jwk`.
pub fn create(
    signer: &dyn Es256Signer,
    jwk: &EcJwk,
    claims: &ProofClaims,
) -> Result<String, Refusal> {
    let mut header = json!({"alg": "ES256", "typ": TYP_DPOP});
    let (x, y) = jwk.coordinates();
    let public = json!({"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)});
    if let Some(h) = header.as_object_mut() {
        h.insert("jwk".into(), public);
    }
    let payload =
        serde_json::to_value(claims).map_err(|e| Refusal::new("malformed", e.to_string()))?;
    sign(&header, &payload, signer)
}

/// What a proof must match.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The writ's `cnf.jkt`.
    pub jkt: &'a str,
    /// The method (or `EXEC`).
    pub htm: &'a str,
    /// The URL (or `exec:` + request digest).
    pub htu: &'a str,
    /// The writ the proof accompanies.
    pub token: &'a str,
    /// Now, in seconds.
    pub now: i64,
    /// Tolerated clock skew, in seconds.
    pub skew: i64,
    /// The nonce the server requires, if any.
    pub nonce: Option<&'a str>,
}

/// A verified proof: what single use is keyed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    /// The holder key's thumbprint.
    pub jkt: String,
    /// The proof's `jti`.
    pub jti: String,
}

/// Verifies a proof: strict JWS with a `jwk` header whose thumbprint is `jkt`, the signature by
/// that key, then every claim.
pub fn verify(
    provider: &dyn CryptoProvider,
    proof: &str,
    want: &Expected<'_>,
) -> Result<VerifiedProof, Refusal> {
    let as_proof = |r: Refusal| Refusal::new("proof", format!("{}: {}", r.code, r.detail));
    let unverified = parse(proof, TYP_DPOP, HeaderShape::Jwk).map_err(as_proof)?;
    let jwk = unverified.jwk().map_err(as_proof)?;
    if jwk.thumbprint() != want.jkt {
        return Err(Refusal::new(
            "proof_key",
            "the proof's key is not the writ's holder key (cnf.jkt)",
        ));
    }
    let payload = unverified.verify(provider, &jwk).map_err(as_proof)?;
    let c: ProofClaims = serde_json::from_value(Value::Object(payload))
        .map_err(|e| Refusal::new("proof", format!("claims: {e}")))?;
    if c.jti.is_empty() || c.jti.len() > 256 {
        return Err(Refusal::new("proof", "jti"));
    }
    if c.htm != want.htm || c.htu != want.htu {
        return Err(Refusal::new(
            "proof_binding",
            "the proof is for another method or target",
        ));
    }
    if c.ath != ath(want.token) {
        return Err(Refusal::new(
            "proof_binding",
            "the proof is for another writ (ath)",
        ));
    }
    // abs_diff: a hostile iat near i64::MIN must not wrap into a small difference.
    if c.iat.abs_diff(want.now) > want.skew.unsigned_abs() {
        return Err(Refusal::new(
            "proof_time",
            format!(
                "proof iat {} is more than {} s from now ({})",
                c.iat, want.skew, want.now
            ),
        ));
    }
    if let Some(n) = want.nonce
        && c.nonce.as_deref() != Some(n)
    {
        return Err(Refusal::new(
            "proof_nonce",
            "the proof does not carry the server's nonce",
        ));
    }
    Ok(VerifiedProof {
        jkt: want.jkt.to_string(),
        jti: c.jti,
    })
}
