//! An adapter that lets RustCrypto consumers (the x509-cert builder, our JWS signer) sign with any
//! custody key: `Signer` + `Keypair` + `SignatureAlgorithmIdentifier`.
//!
//! Use `try_sign`: a device can fail, and `sign` would panic on failure.

use std::sync::Arc;

use p256::ecdsa::{DerSignature, Signature, VerifyingKey};
use signature::{Keypair, Signer};
use spki::der::AnyRef;
use spki::{AlgorithmIdentifier, SignatureAlgorithmIdentifier};

use crate::CustodyKey;

/// A custody key seen through RustCrypto's signing traits. ECDSA P-256 with SHA-256.
#[derive(Debug, Clone)]
pub struct CustodySigner {
    key: Arc<dyn CustodyKey>,
}

impl CustodySigner {
    /// Wraps a custody key.
    pub fn new(key: Arc<dyn CustodyKey>) -> Self {
        CustodySigner { key }
    }

    /// The wrapped key.
    pub fn key(&self) -> &Arc<dyn CustodyKey> {
        &self.key
    }
}

impl Keypair for CustodySigner {
    type VerifyingKey = VerifyingKey;

    fn verifying_key(&self) -> VerifyingKey {
        *self.key.public_key().verifying_key()
    }
}

impl SignatureAlgorithmIdentifier for CustodySigner {
    type Params = AnyRef<'static>;

    const SIGNATURE_ALGORITHM_IDENTIFIER: AlgorithmIdentifier<AnyRef<'static>> =
        AlgorithmIdentifier {
            oid: ecdsa::ECDSA_SHA256_OID,
            parameters: None,
        };
}

impl Signer<Signature> for CustodySigner {
    fn try_sign(&self, msg: &[u8]) -> Result<Signature, signature::Error> {
        self.key.sign(msg).map_err(|e| {
            tracing::error!(key = self.key.uri(), error = %e, "custody signature failed");
            signature::Error::new()
        })
    }
}

impl Signer<DerSignature> for CustodySigner {
    fn try_sign(&self, msg: &[u8]) -> Result<DerSignature, signature::Error> {
        let sig: Signature = self.try_sign(msg)?;
        Ok(sig.to_der())
    }
}

/// Signs JWS (ES256) with a custody key: the writ issuer's and DPoP signers go through this, so
/// the private key stays in the HSM or TPM. Output is r || s, low-S.
#[derive(Debug, Clone)]
pub struct JwsSigner(pub std::sync::Arc<dyn crate::CustodyKey>);

impl writ_attestation::writ::jws::Es256Signer for JwsSigner {
    fn sign_es256(&self, message: &[u8]) -> Result<[u8; 64], writ_attestation::writ::Refusal> {
        let sig = self.0.sign(message).map_err(|e| {
            writ_attestation::writ::Refusal::new("signing", format!("custody key: {e}"))
        })?;
        sig.to_bytes().as_slice().try_into().map_err(|_| {
            writ_attestation::writ::Refusal::new("signing", "an ES256 signature of the wrong size")
        })
    }
}
