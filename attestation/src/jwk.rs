//! P-256 public keys as JSON Web Keys (RFC 7517/7518) and their RFC 7638 thumbprints.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::VerifyingKey;
use sha2::{Digest, Sha256};

/// An EC P-256 public JWK: just the members that define the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcJwk {
    x: [u8; 32],
    y: [u8; 32],
}

/// A JWK that is not a well-formed P-256 public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid P-256 JWK: {0}")]
pub struct JwkError(&'static str);

impl EcJwk {
    /// From a verifying key.
    pub fn from_verifying_key(key: &VerifyingKey) -> Self {
        let point = key.to_sec1_point(false);
        let mut x = [0u8; 32];
        let mut y = [0u8; 32];
        if let (Some(px), Some(py)) = (point.x(), point.y()) {
            x.copy_from_slice(px);
            y.copy_from_slice(py);
        }
        EcJwk { x, y }
    }

    /// From the JWK members; checks the point is on the curve.
    pub fn from_members(kty: &str, crv: &str, x: &str, y: &str) -> Result<Self, JwkError> {
        if kty != "EC" {
            return Err(JwkError("kty is not EC"));
        }
        if crv != "P-256" {
            return Err(JwkError("crv is not P-256"));
        }
        let x: [u8; 32] = decode32(x).ok_or(JwkError("x is not 32 bytes of base64url"))?;
        let y: [u8; 32] = decode32(y).ok_or(JwkError("y is not 32 bytes of base64url"))?;
        let jwk = EcJwk { x, y };
        jwk.verifying_key()?;
        Ok(jwk)
    }

    /// From affine coordinates, big-endian (a TPM's TPMS_ECC_POINT; a coordinate shorter than
    /// 32 bytes is left-padded with zeros); checks the point is on the curve.
    pub fn from_coordinates(x: &[u8], y: &[u8]) -> Result<Self, JwkError> {
        let pad = |v: &[u8]| -> Option<[u8; 32]> {
            let mut out = [0u8; 32];
            out.get_mut(32usize.checked_sub(v.len())?..)?
                .copy_from_slice(v);
            Some(out)
        };
        let jwk = EcJwk {
            x: pad(x).ok_or(JwkError("x is longer than 32 bytes"))?,
            y: pad(y).ok_or(JwkError("y is longer than 32 bytes"))?,
        };
        jwk.verifying_key()?;
        Ok(jwk)
    }

    /// The affine coordinates (big-endian, 32 bytes each).
    pub fn coordinates(&self) -> (&[u8; 32], &[u8; 32]) {
        (&self.x, &self.y)
    }

    /// The key, checked to be a point on P-256.
    pub fn verifying_key(&self) -> Result<VerifyingKey, JwkError> {
        let mut sec1 = Vec::with_capacity(65);
        sec1.push(0x04);
        sec1.extend_from_slice(&self.x);
        sec1.extend_from_slice(&self.y);
        VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| JwkError("not a point on P-256"))
    }

    /// The RFC 7638 thumbprint: base64url(SHA-256 of the required members in lexicographic order,
    /// no whitespace).
    pub fn thumbprint(&self) -> String {
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            URL_SAFE_NO_PAD.encode(self.x),
            URL_SAFE_NO_PAD.encode(self.y)
        );
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }

    /// The JWK as a JSON object, with `kid` (the thumbprint), `alg` ES256 and, if given, `use`.
    pub fn to_json(&self, key_use: Option<&str>) -> serde_json::Value {
        let mut v = serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(self.x),
            "y": URL_SAFE_NO_PAD.encode(self.y),
            "kid": self.thumbprint(),
            "alg": "ES256",
        });
        if let (Some(u), Some(obj)) = (key_use, v.as_object_mut()) {
            obj.insert("use".into(), serde_json::Value::String(u.to_string()));
        }
        v
    }
}

fn decode32(s: &str) -> Option<[u8; 32]> {
    URL_SAFE_NO_PAD.decode(s).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 9449 section 4.1 (the DPoP proof's jwk) and section 6.1 (the access token's cnf.jkt for
    // that same key).
    const RFC9449_X: &str = "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs";
    const RFC9449_Y: &str = "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA";
    const RFC9449_JKT: &str = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";

    #[test]
    fn thumbprint_matches_rfc9449_example() {
        let jwk = EcJwk::from_members("EC", "P-256", RFC9449_X, RFC9449_Y).unwrap();
        assert_eq!(jwk.thumbprint(), RFC9449_JKT);
    }

    #[test]
    fn round_trips_through_a_verifying_key() {
        let jwk = EcJwk::from_members("EC", "P-256", RFC9449_X, RFC9449_Y).unwrap();
        let vk = jwk.verifying_key().unwrap();
        assert_eq!(EcJwk::from_verifying_key(&vk), jwk);
        let json = jwk.to_json(Some("issuer"));
        assert_eq!(json["kid"], RFC9449_JKT);
        assert_eq!(json["use"], "issuer");
        assert_eq!(json["x"], RFC9449_X);
    }

    #[test]
    fn refuses_other_curves_types_and_points_off_the_curve() {
        assert!(EcJwk::from_members("RSA", "P-256", RFC9449_X, RFC9449_Y).is_err());
        assert!(EcJwk::from_members("EC", "P-384", RFC9449_X, RFC9449_Y).is_err());
        assert!(
            EcJwk::from_members("EC", "P-256", RFC9449_X, RFC9449_X).is_err(),
            "off the curve"
        );
        assert!(
            EcJwk::from_members("EC", "P-256", "AAAA", RFC9449_Y).is_err(),
            "short x"
        );
    }
}
