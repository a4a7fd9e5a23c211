//! JWS compact serialization, strictly: three canonical base64url segments (no padding, no
//! whitespace, no trailing bits), a header with exactly the members the token type allows
//! (`alg`, `typ` and `kid` for writs; `alg`, `typ` and `jwk` for DPoP proofs), `alg` ES256 only
//! (the algorithm is pinned by the key, never chosen by the header), a 64-byte r || s signature,
//! and a payload that is a strict JSON object, read only after the signature verified.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::{Refusal, json};
use crate::crypto::{CryptoProvider, SigAlg, SignatureValue, VerifyKey};
use crate::jwk::EcJwk;
use crate::tpm::HashAlg;
use crate::tpm::public::EccCurve;

/// Largest token accepted.
pub const MAX_TOKEN: usize = 16 * 1024;

/// `typ` of a writ.
pub const TYP_WRIT: &str = "writ+jwt";
/// `typ` of a DPoP proof.
pub const TYP_DPOP: &str = "dpop+jwt";

fn malformed(why: impl Into<String>) -> Refusal {
    Refusal::new("malformed", why)
}

/// Decodes one segment, refusing anything but canonical unpadded base64url.
pub fn b64(segment: &str, what: &str) -> Result<Vec<u8>, Refusal> {
    if !segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(malformed(format!("{what}: not unpadded base64url")));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|e| malformed(format!("{what}: {e}")))?;
    if URL_SAFE_NO_PAD.encode(&bytes) != segment {
        return Err(malformed(format!("{what}: non-canonical base64url")));
    }
    Ok(bytes)
}

/// A token whose structure and header are checked, its signature not yet.
#[derive(Debug, Clone)]
pub struct Unverified {
    header: Map<String, Value>,
    signing_input_len: usize,
    token: String,
    payload: Vec<u8>,
    signature: [u8; 64],
}

/// What the header must hold besides `alg` and `typ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderShape {
    /// `kid` (a writ: the key comes from the trust bundle).
    Kid,
    /// `jwk` (a DPoP proof: the key is in the header, bound by its thumbprint).
    Jwk,
}

/// Parses a token: structure, header, signature encoding. `typ` is the only accepted `typ`.
pub fn parse(token: &str, typ: &str, shape: HeaderShape) -> Result<Unverified, Refusal> {
    if token.len() > MAX_TOKEN {
        return Err(malformed(format!("a token of {} bytes", token.len())));
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts.as_slice() else {
        return Err(malformed(format!(
            "{} segments (JWS compact has 3)",
            parts.len()
        )));
    };
    let header = json::parse(&b64(h, "header")?)?;
    let Value::Object(header) = header else {
        return Err(malformed("the header is not an object"));
    };
    let allowed: [&str; 3] = match shape {
        HeaderShape::Kid => ["alg", "typ", "kid"],
        HeaderShape::Jwk => ["alg", "typ", "jwk"],
    };
    if let Some(k) = header.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(Refusal::new(
            "header",
            format!("header parameter {k:?} is not allowed"),
        ));
    }
    match header.get("alg").and_then(Value::as_str) {
        Some("ES256") => {}
        Some(other) => {
            return Err(Refusal::new(
                "algorithm",
                format!("alg {other:?} (only ES256)"),
            ));
        }
        None => return Err(Refusal::new("algorithm", "no alg")),
    }
    if header.get("typ").and_then(Value::as_str) != Some(typ) {
        return Err(Refusal::new("header", format!("typ is not {typ:?}")));
    }
    match shape {
        HeaderShape::Kid if !header.get("kid").is_some_and(Value::is_string) => {
            return Err(Refusal::new("header", "no kid"));
        }
        HeaderShape::Jwk if !header.get("jwk").is_some_and(Value::is_object) => {
            return Err(Refusal::new("header", "no jwk"));
        }
        _ => {}
    }
    let payload = b64(p, "payload")?;
    let sig = b64(s, "signature")?;
    let signature: [u8; 64] = sig.as_slice().try_into().map_err(|_| {
        Refusal::new(
            "signature",
            format!("a {}-byte signature (ES256 is 64 bytes r || s)", sig.len()),
        )
    })?;
    Ok(Unverified {
        header,
        signing_input_len: h.len() + 1 + p.len(),
        token: token.to_string(),
        payload,
        signature,
    })
}

impl Unverified {
    /// The header's `kid`, if it has one.
    pub fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }

    /// The header's `jwk`, checked to be a P-256 public key with nothing else in it.
    pub fn jwk(&self) -> Result<EcJwk, Refusal> {
        let Some(Value::Object(j)) = self.header.get("jwk") else {
            return Err(Refusal::new("header", "no jwk"));
        };
        if let Some(k) = j
            .keys()
            .find(|k| !["kty", "crv", "x", "y"].contains(&k.as_str()))
        {
            return Err(Refusal::new(
                "header",
                format!("jwk member {k:?} (a public P-256 key has kty, crv, x, y)"),
            ));
        }
        let m = |k: &str| j.get(k).and_then(Value::as_str).unwrap_or_default();
        EcJwk::from_members(m("kty"), m("crv"), m("x"), m("y"))
            .map_err(|e| Refusal::new("header", e.to_string()))
    }

    /// The payload bytes, unverified (for `writ-gate inspect`, which never answers allow).
    pub fn unverified_payload(&self) -> &[u8] {
        &self.payload
    }

    /// Verifies the ES256 signature under `key`, then parses the payload, which must be a strict
    /// JSON object.
    pub fn verify(
        &self,
        provider: &dyn CryptoProvider,
        key: &EcJwk,
    ) -> Result<Map<String, Value>, Refusal> {
        let signing_input = self
            .token
            .get(..self.signing_input_len)
            .ok_or_else(|| malformed("signing input"))?;
        verify_es256(provider, key, signing_input.as_bytes(), &self.signature)?;
        match json::parse(&self.payload)? {
            Value::Object(m) => Ok(m),
            _ => Err(malformed("the payload is not an object")),
        }
    }
}

/// The ES256 check every writ and proof goes through: `signature` must be exactly 64 bytes
/// (r || s); low-S and high-S are both accepted.
pub fn verify_es256(
    provider: &dyn CryptoProvider,
    key: &EcJwk,
    message: &[u8],
    signature: &[u8],
) -> Result<(), Refusal> {
    if signature.len() != 64 {
        return Err(Refusal::new(
            "signature",
            format!(
                "a {}-byte signature (ES256 is 64 bytes r || s)",
                signature.len()
            ),
        ));
    }
    let (x, y) = key.coordinates();
    let (r, s) = signature.split_at(32);
    provider
        .verify(
            &VerifyKey::Ecc {
                curve: EccCurve::P256,
                x,
                y,
            },
            SigAlg::Ecdsa(HashAlg::Sha256),
            message,
            &SignatureValue::Ecdsa { r, s },
        )
        .map_err(|e| Refusal::new("signature", e.to_string()))
}

/// Signs ES256 over a JWS signing input; writ's signers emit low-S r || s.
pub trait Es256Signer {
    /// The signature (r || s, 32 bytes each) over `message` (hashed with SHA-256 by the signer).
    fn sign_es256(&self, message: &[u8]) -> Result<[u8; 64], Refusal>;
}

/// Builds and signs a compact JWS: the header and payload are serialized as canonical JSON.
pub fn sign(header: &Value, payload: &Value, signer: &dyn Es256Signer) -> Result<String, Refusal> {
    let enc = |v: &Value, what: &str| {
        crate::jcs::canonical(v)
            .map(|t| URL_SAFE_NO_PAD.encode(t.as_bytes()))
            .map_err(|e| malformed(format!("{what}: {e}")))
    };
    let input = format!("{}.{}", enc(header, "header")?, enc(payload, "payload")?);
    let sig = signer.sign_es256(input.as_bytes())?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}
