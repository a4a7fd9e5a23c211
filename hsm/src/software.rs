//! Software keys, for tests only: a P-256 private key in a PKCS#8 file (mode 0600) and in process
//! memory. Compiled only with the `software-keys` feature, opened only with
//! `OpenOptions::allow_software_keys`, and every open logs a warning.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use zeroize::Zeroizing;

use crate::CustodyError;
use crate::key::{Algorithm, Backend, CustodyKey, KeyFact, PublicKey};
use crate::uri::SoftUri;

/// A key in process memory. Not hardware-backed.
pub struct SoftwareKey {
    uri: String,
    signing_key: SigningKey,
    public: PublicKey,
    facts: Vec<KeyFact>,
}

impl std::fmt::Debug for SoftwareKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private scalar.
        f.debug_struct("SoftwareKey")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

const MAX_KEY_FILE: u64 = 4096;

impl SoftwareKey {
    /// Opens an existing key file.
    pub fn open(uri: &SoftUri) -> Result<Self, CustodyError> {
        use std::io::Read;
        let file_err = |reason: String| CustodyError::File {
            what: "software key",
            path: uri.path.clone(),
            reason,
        };
        let file = std::fs::File::open(&uri.path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CustodyError::KeyNotFound(uri.to_string()),
            _ => file_err(e.to_string()),
        })?;
        let mut der = Zeroizing::new(Vec::new());
        file.take(MAX_KEY_FILE)
            .read_to_end(&mut der)
            .map_err(|e| file_err(e.to_string()))?;
        let signing_key = SigningKey::from_pkcs8_der(&der)
            .map_err(|_| file_err("not a PKCS#8 P-256 private key".into()))?;
        Self::from_signing_key(uri, signing_key)
    }

    /// Creates a new key file; refuses to overwrite one.
    pub fn generate(uri: &SoftUri) -> Result<Self, CustodyError> {
        let file_err = |reason: String| CustodyError::File {
            what: "software key",
            path: uri.path.clone(),
            reason,
        };
        let signing_key = random_key()?;
        let der = signing_key
            .to_pkcs8_der()
            .map_err(|e| file_err(format!("PKCS#8 encoding: {e}")))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&uri.path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => CustodyError::KeyExists(uri.to_string()),
                _ => file_err(e.to_string()),
            })?;
        file.write_all(der.as_bytes())
            .map_err(|e| file_err(e.to_string()))?;
        file.sync_all().map_err(|e| file_err(e.to_string()))?;
        Self::from_signing_key(uri, signing_key)
    }

    fn from_signing_key(uri: &SoftUri, signing_key: SigningKey) -> Result<Self, CustodyError> {
        tracing::warn!(
            key = %uri,
            "SOFTWARE KEY IN USE: the private key is in process memory and a file, not in a TPM or HSM. \
             Tests only; never use this for a real deployment."
        );
        let public =
            PublicKey::from_verifying_key(*signing_key.verifying_key()).map_err(|reason| {
                CustodyError::UnsupportedKey {
                    key: uri.to_string(),
                    reason,
                }
            })?;
        Ok(SoftwareKey {
            uri: uri.to_string(),
            signing_key,
            public,
            facts: vec![KeyFact::new(
                "storage",
                "process memory and a 0600 PKCS#8 file (tests only)",
            )],
        })
    }
}

fn random_key() -> Result<SigningKey, CustodyError> {
    // A uniformly random 32-byte string is a valid scalar except with negligible probability; loop
    // rather than assume.
    for _ in 0..16 {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut())
            .map_err(|e| CustodyError::SoftwareKeysRefused(format!("OS RNG unavailable: {e}")))?;
        if let Ok(k) = SigningKey::from_slice(bytes.as_ref()) {
            return Ok(k);
        }
    }
    Err(CustodyError::SoftwareKeysRefused(
        "could not draw a valid P-256 scalar".into(),
    ))
}

impl CustodyKey for SoftwareKey {
    fn sign_digest(&self, digest: &[u8; 32]) -> Result<Signature, CustodyError> {
        let sig: Signature = self
            .signing_key
            .sign_prehash(digest)
            .map_err(|e| CustodyError::BadSignature(e.to_string()))?;
        Ok(sig.normalize_s())
    }

    fn algorithm(&self) -> Algorithm {
        Algorithm::EcdsaP256Sha256
    }

    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn backend(&self) -> Backend {
        Backend::Software
    }

    fn hardware_backed(&self) -> bool {
        false
    }

    fn uri(&self) -> &str {
        &self.uri
    }

    fn facts(&self) -> &[KeyFact] {
        &self.facts
    }
}
