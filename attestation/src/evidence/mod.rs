//! Verification of TPM evidence: AK checks, quotes and certifications. Each verification returns a
//! proof value that only this crate can construct; none returns a bool.

mod certify;
mod credential;
mod ek;
mod quote;

pub use certify::{CertifiedKey, verify_certify};
pub use credential::{CredentialChallenge, EkPublicKey, make_credential};
pub use ek::{EkTrustStore, TpmAttributes, TrustedEk};
pub use quote::{CounterChange, VerifiedQuote, verify_quote};

use crate::crypto::{CryptoProvider, SigAlg, SignatureValue, VerifyKey};
use crate::error::EvidenceError;
use crate::tpm::HashAlg;
use crate::tpm::attest::{Attest, TPM_GENERATED};
use crate::tpm::public::{EccCurve, KeyParams, Public, Scheme, attr};
use crate::tpm::signature::Signature;

/// A nonce (qualifyingData): 1 to 64 bytes. Verification always takes one; it is never optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nonce(Vec<u8>);

impl Nonce {
    /// Largest nonce: a TPM2B_DATA holds at most a SHA-512 digest.
    pub const MAX: usize = 64;

    /// From bytes; refuses empty and oversized nonces.
    pub fn new(bytes: &[u8]) -> Result<Self, EvidenceError> {
        if bytes.is_empty() || bytes.len() > Self::MAX {
            return Err(EvidenceError::NonceInvalid(format!(
                "{} bytes (1..=64 allowed)",
                bytes.len()
            )));
        }
        Ok(Nonce(bytes.to_vec()))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// An AK public area that passed every attribute and algorithm check: restricted, sign, not
/// decrypt, fixedTPM, fixedParent, sensitiveDataOrigin; ECDSA P-256/SHA-256 or P-384/SHA-384, or RSASSA /
/// RSAPSS with a modulus of at least 2048 bits; a pinned scheme with SHA-256 or better; a name
/// algorithm of SHA-256 or better.
///
/// This says what kind of key it is, not where it lives: that it is in a genuine TPM is proved by
/// the EK certificate chain and credential activation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedAk {
    public: Public,
    name: Vec<u8>,
    alg: SigAlg,
}

impl CheckedAk {
    /// Checks a TPMT_PUBLIC as an AK.
    pub fn from_tpmt(bytes: &[u8]) -> Result<Self, EvidenceError> {
        Self::check(Public::from_tpmt(bytes)?)
    }

    /// Checks a parsed public area as an AK.
    pub fn check(public: Public) -> Result<Self, EvidenceError> {
        let required = [
            (attr::RESTRICTED, "restricted"),
            (attr::SIGN_ENCRYPT, "sign"),
            (attr::FIXED_TPM, "fixedTPM"),
            (attr::FIXED_PARENT, "fixedParent"),
            (attr::SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
        ];
        let missing: Vec<&str> = required
            .iter()
            .filter(|(bit, _)| !public.has(*bit))
            .map(|(_, n)| *n)
            .collect();
        if !missing.is_empty() {
            return Err(EvidenceError::AkAttributes(format!(
                "not set: {}",
                missing.join(", ")
            )));
        }
        if public.has(attr::DECRYPT) {
            return Err(EvidenceError::AkAttributes("decrypt is set".into()));
        }
        if !public.name_alg().is_strong() {
            return Err(EvidenceError::AkAlgorithm(format!(
                "name algorithm {}",
                public.name_alg().name()
            )));
        }
        let alg = match public.params() {
            KeyParams::Ecc {
                scheme: Scheme::Ecdsa(hash),
                curve,
                ..
            } => {
                check_hash(*hash)?;
                // The pairings TPMs use; both providers implement exactly these.
                match (curve, hash) {
                    (EccCurve::P256, HashAlg::Sha256) | (EccCurve::P384, HashAlg::Sha384) => {
                        SigAlg::Ecdsa(*hash)
                    }
                    _ => {
                        return Err(EvidenceError::AkAlgorithm(format!(
                            "ECDSA on {curve:?} with {} (P-256 with SHA-256 or P-384 with SHA-384)",
                            hash.name()
                        )));
                    }
                }
            }
            KeyParams::Rsa {
                scheme,
                key_bits,
                modulus,
                exponent,
                ..
            } => {
                // The providers must agree: a full-length modulus (top bit set) and the exponent
                // TPMs use (0 meaning 65537).
                if !matches!(*exponent, 0 | 65_537) {
                    return Err(EvidenceError::AkAlgorithm(format!(
                        "RSA exponent {exponent} (65537 required)"
                    )));
                }
                if modulus.first().is_none_or(|b| *b < 0x80) {
                    return Err(EvidenceError::AkAlgorithm(
                        "RSA modulus shorter than its stated size".into(),
                    ));
                }
                if *key_bits < 2048 || modulus.len() * 8 != usize::from(*key_bits) {
                    return Err(EvidenceError::AkAlgorithm(format!(
                        "RSA {key_bits} bits with a {}-byte modulus (2048 bits or more required)",
                        modulus.len()
                    )));
                }
                match scheme {
                    Scheme::RsaSsa(hash) => {
                        check_hash(*hash)?;
                        SigAlg::RsaPkcs1(*hash)
                    }
                    Scheme::RsaPss(hash) => {
                        check_hash(*hash)?;
                        SigAlg::RsaPss(*hash)
                    }
                    other => {
                        return Err(EvidenceError::AkAlgorithm(format!(
                            "RSA AK scheme {other:?} (RSASSA or RSAPSS required)"
                        )));
                    }
                }
            }
            KeyParams::Ecc { scheme, .. } => {
                return Err(EvidenceError::AkAlgorithm(format!(
                    "ECC AK scheme {scheme:?} (ECDSA required)"
                )));
            }
        };
        let name = public.name()?;
        Ok(CheckedAk { public, name, alg })
    }

    /// The AK's TPM name.
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// The AK's public area.
    pub fn public(&self) -> &Public {
        &self.public
    }

    /// The signature algorithm the AK pins.
    pub fn sig_alg(&self) -> SigAlg {
        self.alg
    }

    /// Verifies a TPMT_SIGNATURE by this AK over `message`: the scheme and hash must be the ones
    /// the AK pins, r and s (or the RSA signature) well-formed, and the signature valid.
    pub(crate) fn verify_signature(
        &self,
        provider: &dyn CryptoProvider,
        message: &[u8],
        signature: &[u8],
    ) -> Result<HashAlg, EvidenceError> {
        let sig = Signature::from_tpmt(signature)?;
        let (got, value) = match &sig {
            Signature::Ecdsa { hash, r, s } => {
                (SigAlg::Ecdsa(*hash), SignatureValue::Ecdsa { r, s })
            }
            Signature::RsaSsa { hash, sig } => (SigAlg::RsaPkcs1(*hash), SignatureValue::Rsa(sig)),
            Signature::RsaPss { hash, sig } => (SigAlg::RsaPss(*hash), SignatureValue::Rsa(sig)),
        };
        if !sig.hash().is_strong() {
            return Err(EvidenceError::HashTooWeak(format!(
                "signature hash {}",
                sig.hash().name()
            )));
        }
        if got != self.alg {
            return Err(EvidenceError::SignatureScheme(format!(
                "signature is {got:?}, the AK pins {:?}",
                self.alg
            )));
        }
        let key = match self.public.params() {
            KeyParams::Ecc { curve, x, y, .. } => VerifyKey::Ecc {
                curve: *curve,
                x,
                y,
            },
            KeyParams::Rsa {
                modulus, exponent, ..
            } => VerifyKey::Rsa {
                modulus,
                exponent: *exponent,
            },
        };
        provider.verify(&key, self.alg, message, &value)?;
        Ok(sig.hash())
    }
}

fn check_hash(hash: HashAlg) -> Result<(), EvidenceError> {
    if hash.is_strong() {
        Ok(())
    } else {
        Err(EvidenceError::HashTooWeak(format!(
            "AK scheme hash {}",
            hash.name()
        )))
    }
}

/// Checks the parts every signed attestation shares: signature (first, over the exact bytes),
/// structure, magic, type and nonce.
fn verify_attest(
    provider: &dyn CryptoProvider,
    ak: &CheckedAk,
    attest: &[u8],
    signature: &[u8],
    expected_type: u16,
    nonce: &Nonce,
) -> Result<(Attest, HashAlg), EvidenceError> {
    let hash = ak.verify_signature(provider, attest, signature)?;
    let parsed = Attest::parse(attest)?;
    if parsed.magic != TPM_GENERATED {
        return Err(EvidenceError::Magic(parsed.magic));
    }
    if parsed.kind != expected_type {
        return Err(EvidenceError::AttestType {
            expected: expected_type,
            got: parsed.kind,
        });
    }
    if parsed.extra_data != nonce.as_bytes() {
        return Err(EvidenceError::NonceMismatch);
    }
    Ok((parsed, hash))
}
