//! The custody boundary: one object-safe trait for a signing key held by a custodian.

use std::fmt;

use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::EncodePublicKey;
use sha2::{Digest, Sha256};

use crate::CustodyError;

/// A signing key whose private half lives with a custodian (a PKCS#11 token, a TPM, or, for tests
/// only, process memory).
///
/// # Who hashes
/// [`sign`](CustodyKey::sign) takes the whole message and the custodian computes SHA-256 over it in
/// software, then has the device sign the 32-byte digest (PKCS#11 `CKM_ECDSA`; TPM2_Sign with a null
/// hashcheck ticket, which only unrestricted keys accept). [`sign_digest`](CustodyKey::sign_digest)
/// takes a SHA-256 digest the caller computed. Both produce ES256 signatures (ECDSA P-256 over
/// SHA-256) that are **low-S normalised**, whatever the device emitted.
///
/// # What it never does
/// No method exports private key material, and none can: the trait has no such operation.
pub trait CustodyKey: fmt::Debug + Send + Sync {
    /// Signs `message` (hashed with SHA-256 by the custodian, see the trait docs).
    fn sign(&self, message: &[u8]) -> Result<Signature, CustodyError> {
        let digest: [u8; 32] = Sha256::digest(message).into();
        self.sign_digest(&digest)
    }

    /// Signs a SHA-256 digest computed by the caller.
    fn sign_digest(&self, digest: &[u8; 32]) -> Result<Signature, CustodyError>;

    /// The signature algorithm this key produces.
    fn algorithm(&self) -> Algorithm;

    /// The public key, as SPKI DER and as a verifying key.
    fn public_key(&self) -> &PublicKey;

    /// Which custodian holds the private key.
    fn backend(&self) -> Backend;

    /// Whether the private key is held by hardware (or a device standing in for it, such as swtpm or
    /// SoftHSM2, which speak the same interfaces). Software keys answer `false`.
    fn hardware_backed(&self) -> bool;

    /// The name of this key: its canonical URI (no secrets in it).
    fn uri(&self) -> &str;

    /// The attributes that make this key safe to use, as read from the device when the key was
    /// opened (e.g. `CKA_SENSITIVE = true`, `fixedTPM = true`).
    fn facts(&self) -> &[KeyFact];
}

/// The signature algorithms custody keys produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// ECDSA over P-256 with SHA-256; JWS `ES256`.
    EcdsaP256Sha256,
}

impl Algorithm {
    /// The JWS algorithm name (RFC 7518).
    pub fn jws_name(self) -> &'static str {
        match self {
            Algorithm::EcdsaP256Sha256 => "ES256",
        }
    }
}

/// Which custodian holds a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// A PKCS#11 token (an HSM, or SoftHSM2).
    Pkcs11,
    /// A TPM 2.0 (a device, or swtpm).
    Tpm,
    /// Process memory and a key file. Tests only.
    Software,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Pkcs11 => "pkcs11",
            Backend::Tpm => "tpm",
            Backend::Software => "software",
        })
    }
}

/// One attribute of a key as read from its custodian.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFact {
    /// The attribute's name as the device calls it (`CKA_EXTRACTABLE`, `fixedTPM`, ...).
    pub name: &'static str,
    /// Its value, as text.
    pub value: String,
}

impl KeyFact {
    pub(crate) fn new(name: &'static str, value: impl fmt::Display) -> Self {
        KeyFact {
            name,
            value: value.to_string(),
        }
    }
}

/// A P-256 public key held in both forms callers need.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    verifying_key: VerifyingKey,
    spki_der: Vec<u8>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("spki_der", &hex::encode(&self.spki_der))
            .finish()
    }
}

impl PublicKey {
    /// From an uncompressed or compressed SEC1 point.
    pub fn from_sec1(point: &[u8]) -> Result<Self, String> {
        let verifying_key =
            VerifyingKey::from_sec1_bytes(point).map_err(|_| "not a P-256 point".to_string())?;
        Self::from_verifying_key(verifying_key)
    }

    /// From affine coordinates as a TPM reports them (big-endian, possibly shorter than 32 bytes).
    pub fn from_affine(x: &[u8], y: &[u8]) -> Result<Self, String> {
        let xs = left_pad_32(x).ok_or("x coordinate longer than 32 bytes")?;
        let ys = left_pad_32(y).ok_or("y coordinate longer than 32 bytes")?;
        let mut point = Vec::with_capacity(65);
        point.push(0x04);
        point.extend_from_slice(&xs);
        point.extend_from_slice(&ys);
        Self::from_sec1(&point)
    }

    /// From a verifying key.
    pub fn from_verifying_key(verifying_key: VerifyingKey) -> Result<Self, String> {
        let spki_der = verifying_key
            .to_public_key_der()
            .map_err(|e| format!("SPKI encoding failed: {e}"))?
            .into_vec();
        Ok(PublicKey {
            verifying_key,
            spki_der,
        })
    }

    /// The SubjectPublicKeyInfo, DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The key for ECDSA verification.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.verifying_key
    }
}

/// Left-pads a big-endian integer to 32 bytes; `None` if it is longer.
pub(crate) fn left_pad_32(bytes: &[u8]) -> Option<[u8; 32]> {
    // Devices may emit leading zero bytes in a longer buffer; strip them first.
    let first_nonzero = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    let trimmed = bytes.get(first_nonzero..)?;
    if trimmed.len() > 32 {
        return None;
    }
    let mut out = [0u8; 32];
    out.get_mut(32 - trimmed.len()..)?.copy_from_slice(trimmed);
    Some(out)
}

/// Turns a device's raw (r, s) into a low-S signature. Rejects out-of-range values.
pub(crate) fn signature_from_scalars(r: &[u8], s: &[u8]) -> Result<Signature, CustodyError> {
    let r = left_pad_32(r).ok_or_else(|| CustodyError::BadSignature("r too long".into()))?;
    let s = left_pad_32(s).ok_or_else(|| CustodyError::BadSignature("s too long".into()))?;
    let sig = Signature::from_scalars(r, s)
        .map_err(|_| CustodyError::BadSignature("r or s out of range".into()))?;
    Ok(sig.normalize_s())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_pad_handles_short_long_and_zero_prefixed() {
        let mut one = [0u8; 32];
        one[31] = 1;
        assert_eq!(left_pad_32(&[1]), Some(one));
        let mut long = vec![0u8; 33];
        long[1] = 7;
        assert_eq!(left_pad_32(&long).map(|a| a[0]), Some(7));
        assert!(left_pad_32(&[1u8; 33]).is_none());
    }

    #[test]
    fn signatures_are_normalised_to_low_s() {
        // s = n - 1 is high-S; its low-S form is 1.
        let n_minus_1 =
            hex::decode("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632550")
                .unwrap();
        let sig = signature_from_scalars(&[5], &n_minus_1).unwrap();
        let bytes = sig.to_bytes();
        assert_eq!(bytes[63], 1);
        assert!(bytes[32..63].iter().all(|b| *b == 0));
    }

    #[test]
    fn zero_scalars_are_refused() {
        assert!(signature_from_scalars(&[0], &[1]).is_err());
    }
}
