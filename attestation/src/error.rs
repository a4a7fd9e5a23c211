//! The evidence verifier's errors. Each has a stable code naming the failed check (interfaces.md).

/// Why evidence was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// A structure does not parse (truncated, oversized, trailing bytes, bad enum value).
    #[error("malformed evidence: {0}")]
    Malformed(String),
    /// An algorithm, curve or scheme writ does not accept.
    #[error("unsupported algorithm: {0}")]
    UnsupportedAlgorithm(String),
    /// A hash weaker than SHA-256 where a binding hash is required.
    #[error("hash too weak: {0}")]
    HashTooWeak(String),
    /// The AK's attributes are not those of an attestation key.
    #[error("AK attributes refused: {0}")]
    AkAttributes(String),
    /// The AK's algorithm, size or scheme is not accepted.
    #[error("AK algorithm refused: {0}")]
    AkAlgorithm(String),
    /// The attestation's magic is not TPM_GENERATED_VALUE: the TPM did not make it.
    #[error("magic {0:#010x} is not TPM_GENERATED_VALUE")]
    Magic(u32),
    /// The attestation is of another type than expected.
    #[error("attestation type {got:#06x}, expected {expected:#06x}")]
    AttestType {
        /// The tag expected.
        expected: u16,
        /// The tag found.
        got: u16,
    },
    /// extraData is not the expected nonce.
    #[error("the attestation's extraData is not the expected nonce")]
    NonceMismatch,
    /// A nonce that cannot be used (empty or longer than 64 bytes).
    #[error("invalid nonce: {0}")]
    NonceInvalid(String),
    /// The quoted PCR selection differs from the required one.
    #[error("PCR selection mismatch: {0}")]
    PcrSelection(String),
    /// A PCR value is missing, repeated or of the wrong size.
    #[error("PCR value: {0}")]
    PcrValue(String),
    /// The quote's pcrDigest does not match the supplied PCR values.
    #[error("pcrDigest does not match the PCR values")]
    PcrDigest,
    /// The signature does not verify, or its r/s/size are out of range.
    #[error("signature invalid: {0}")]
    Signature(String),
    /// The signature's scheme or hash is not the one the key pins.
    #[error("signature scheme: {0}")]
    SignatureScheme(String),
    /// The certification names another object than the public area presented.
    #[error("the certified name does not match the presented public area")]
    CertifiedName,
    /// The EK certificate does not chain to the trust store (or a signature in the chain fails).
    #[error("EK certificate untrusted: {0}")]
    EkUntrusted(String),
    /// A certificate of the EK chain is outside its validity period.
    #[error("EK chain validity: {0}")]
    EkExpired(String),
    /// An issuer of the EK chain may not issue certificates (basicConstraints, keyUsage, pathLen).
    #[error("EK chain CA constraint: {0}")]
    EkCa(String),
    /// An EK public area presented with the certificate is not the certificate's key.
    #[error("the EK public area does not match the EK certificate")]
    EkMismatch,
    /// A Merkle inclusion or consistency proof does not verify.
    #[error("log proof: {0}")]
    LogProof(String),
    /// A checkpoint or signed note is malformed, unsigned by the expected key, or badly signed.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The event log does not parse or cannot be replayed.
    #[error("event log: {0}")]
    EventLog(String),
    /// A replayed PCR differs from the quoted one.
    #[error("PCR {bank}:{pcr} replays to {replayed} but the quote says {quoted}")]
    PcrReplay {
        /// The bank.
        bank: &'static str,
        /// The PCR.
        pcr: u8,
        /// The value the log replays to.
        replayed: String,
        /// The quoted value.
        quoted: String,
    },
    /// The certified key is not a TPM-bound signing key.
    #[error("certified key refused: {0}")]
    CertifiedKey(String),
    /// A reference-value profile is malformed or accepts nothing.
    #[error("reference profile: {0}")]
    Profile(String),
}

impl EvidenceError {
    /// The stable error code (problem+json, CLI output, decision records, metrics).
    pub fn code(&self) -> &'static str {
        match self {
            EvidenceError::Malformed(_) => "malformed",
            EvidenceError::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            EvidenceError::HashTooWeak(_) => "hash_too_weak",
            EvidenceError::AkAttributes(_) => "ak_attributes",
            EvidenceError::AkAlgorithm(_) => "ak_algorithm",
            EvidenceError::Magic(_) => "magic",
            EvidenceError::AttestType { .. } => "attest_type",
            EvidenceError::NonceMismatch => "nonce_mismatch",
            EvidenceError::NonceInvalid(_) => "nonce_invalid",
            EvidenceError::PcrSelection(_) => "pcr_selection",
            EvidenceError::PcrValue(_) => "pcr_value",
            EvidenceError::PcrDigest => "pcr_digest",
            EvidenceError::Signature(_) => "signature",
            EvidenceError::SignatureScheme(_) => "signature_scheme",
            EvidenceError::CertifiedName => "certified_name",
            EvidenceError::CertifiedKey(_) => "certified_key",
            EvidenceError::EkUntrusted(_) => "ek_untrusted",
            EvidenceError::EkExpired(_) => "ek_expired",
            EvidenceError::EkCa(_) => "ek_ca",
            EvidenceError::EkMismatch => "ek_mismatch",
            EvidenceError::LogProof(_) => "log_proof",
            EvidenceError::EventLog(_) => "event_log",
            EvidenceError::PcrReplay { .. } => "pcr_replay",
            EvidenceError::Checkpoint(_) => "checkpoint",
            EvidenceError::Profile(_) => "profile",
        }
    }
}
