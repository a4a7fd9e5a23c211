//! TPM2_Certify verification: ties a key (a holder key, a CSR key) to the attested TPM.

use super::{CheckedAk, Nonce, verify_attest};
use crate::crypto::CryptoProvider;
use crate::error::EvidenceError;
use crate::tpm::HashAlg;
use crate::tpm::attest::{Attested, ClockInfo, ST_ATTEST_CERTIFY};
use crate::tpm::public::{EccCurve, KeyParams, Public, Scheme, attr};

/// A key the AK certified, over the expected nonce, that is a TPM-bound ES256 signing key: ECC
/// P-256 with ECDSA-SHA256 (or no pinned scheme), fixedTPM, fixedParent, sensitiveDataOrigin, sign,
/// not decrypt, not restricted. Only this crate constructs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifiedKey {
    public: Public,
    name: Vec<u8>,
    ak_name: Vec<u8>,
    nonce: Nonce,
    clock: ClockInfo,
}

impl CertifiedKey {
    /// The certified key's public area.
    pub fn public(&self) -> &Public {
        &self.public
    }
    /// Its TPM name.
    pub fn name(&self) -> &[u8] {
        &self.name
    }
    /// The AK that certified it.
    pub fn ak_name(&self) -> &[u8] {
        &self.ak_name
    }
    /// The nonce the certification is bound to.
    pub fn nonce(&self) -> &Nonce {
        &self.nonce
    }
    /// The TPM's clock at certification.
    pub fn clock(&self) -> ClockInfo {
        self.clock
    }
    /// The certified key as a JWK (its RFC 7638 thumbprint is what `cnf.jkt` names).
    pub fn jwk(&self) -> Result<crate::jwk::EcJwk, EvidenceError> {
        match self.public.params() {
            KeyParams::Ecc { x, y, .. } => crate::jwk::EcJwk::from_coordinates(x, y)
                .map_err(|e| EvidenceError::CertifiedKey(e.to_string())),
            KeyParams::Rsa { .. } => Err(EvidenceError::CertifiedKey("not an ECC key".into())),
        }
    }
}

/// Verifies a TPM2_Certify of `certified` (its TPMT_PUBLIC) by `ak` over `nonce`.
pub fn verify_certify(
    provider: &dyn CryptoProvider,
    ak: &CheckedAk,
    attest: &[u8],
    signature: &[u8],
    nonce: &Nonce,
    certified: &[u8],
) -> Result<CertifiedKey, EvidenceError> {
    let (parsed, _) = verify_attest(provider, ak, attest, signature, ST_ATTEST_CERTIFY, nonce)?;
    let Attested::Certify { name, .. } = parsed.attested else {
        return Err(EvidenceError::AttestType {
            expected: ST_ATTEST_CERTIFY,
            got: parsed.kind,
        });
    };
    let public = Public::from_tpmt(certified)?;
    if public.name()? != name {
        return Err(EvidenceError::CertifiedName);
    }
    let required = [
        (attr::FIXED_TPM, "fixedTPM"),
        (attr::FIXED_PARENT, "fixedParent"),
        (attr::SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
        (attr::SIGN_ENCRYPT, "sign"),
    ];
    let missing: Vec<&str> = required
        .iter()
        .filter(|(b, _)| !public.has(*b))
        .map(|(_, n)| *n)
        .collect();
    if !missing.is_empty() {
        return Err(EvidenceError::CertifiedKey(format!(
            "not set: {}",
            missing.join(", ")
        )));
    }
    if public.has(attr::DECRYPT) {
        return Err(EvidenceError::CertifiedKey("decrypt is set".into()));
    }
    if public.has(attr::RESTRICTED) {
        return Err(EvidenceError::CertifiedKey(
            "restricted (not a general signing key)".into(),
        ));
    }
    // Holder and CSR keys are ES256 keys: ECC P-256, ECDSA with SHA-256 (or a scheme the command
    // chooses). Policy on the key (e.g. a PolicyPCR the profile asks for) is the caller's to check
    // from `public().auth_policy()`.
    match public.params() {
        KeyParams::Ecc {
            curve: EccCurve::P256,
            scheme: Scheme::Ecdsa(HashAlg::Sha256) | Scheme::Null,
            ..
        } => {}
        other => {
            return Err(EvidenceError::CertifiedKey(format!(
                "not an ECC P-256 ECDSA-SHA256 key ({:?})",
                match other {
                    KeyParams::Rsa { .. } => "RSA",
                    KeyParams::Ecc { .. } => "other ECC curve or scheme",
                }
            )));
        }
    }
    Ok(CertifiedKey {
        public,
        name,
        ak_name: ak.name().to_vec(),
        nonce: nonce.clone(),
        clock: parsed.clock_info,
    })
}
