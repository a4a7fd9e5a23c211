//! The one error type of this crate.
//!
//! Every variant names the check or the device call that failed. No variant ever carries a PIN, an
//! authValue or key material: messages are safe to log and to show to an operator.

use std::path::PathBuf;

/// Errors of key custody and of the attester's TPM operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CustodyError {
    /// The key URI could not be parsed or names something unsupported.
    #[error("invalid key URI: {0}")]
    InvalidUri(String),

    /// The PKCS#11 module could not be loaded or initialised.
    #[error("PKCS#11 module {path} could not be loaded: {reason}")]
    ModuleUnavailable { path: PathBuf, reason: String },

    /// No PKCS#11 module path was given in the URI (`module-path`) or `WRIT_PKCS11_MODULE`.
    #[error(
        "no PKCS#11 module configured: set module-path in the pkcs11: URI or WRIT_PKCS11_MODULE"
    )]
    ModuleNotConfigured,

    /// No slot holds a token with the requested label.
    #[error("PKCS#11 token {label:?} not found (tokens present: {present})")]
    TokenNotFound { label: String, present: String },

    /// The token refused the PIN (CKR_PIN_INCORRECT). The PIN itself is never shown.
    #[error("PKCS#11 login to token {label:?} failed: wrong PIN")]
    WrongPin { label: String },

    /// The token refused login for another reason (locked PIN, bad length, ...).
    #[error("PKCS#11 login to token {label:?} failed: {reason}")]
    LoginFailed { label: String, reason: String },

    /// The PIN or authValue source could not be read.
    #[error("secret source {source_name} unusable: {reason}")]
    SecretSource { source_name: String, reason: String },

    /// No key object matches the URI.
    #[error("key {0} not found")]
    KeyNotFound(String),

    /// More than one key object matches the URI: refuse rather than guess.
    #[error("key {0} is ambiguous: several objects match; add id= or a more specific object=")]
    KeyAmbiguous(String),

    /// A key with that name already exists; generation never overwrites.
    #[error("key {0} already exists; refusing to overwrite it")]
    KeyExists(String),

    /// The key exists but its attributes make it unsafe for custody (extractable, not sensitive, ...).
    #[error("key {key} refused: {reason}")]
    UnsafeKey { key: String, reason: String },

    /// The key exists but is not a P-256 signing key, or its public part is malformed.
    #[error("key {key} unsupported: {reason}")]
    UnsupportedKey { key: String, reason: String },

    /// A PKCS#11 call failed.
    #[error("PKCS#11 {op} failed: {reason}")]
    Pkcs11 { op: &'static str, reason: String },

    /// The TCTI could not be opened (TPM absent, swtpm not running, bad TCTI string).
    #[error("TPM unavailable through TCTI {tcti:?}: {reason}")]
    TpmUnavailable { tcti: String, reason: String },

    /// A TPM command failed.
    #[error("TPM {op} failed: {reason}")]
    Tpm { op: &'static str, reason: String },

    /// The TPM kept answering RETRY / YIELDED / TESTING past the retry bound.
    #[error("TPM {op} still busy after {attempts} attempts ({reason})")]
    TpmBusy {
        op: &'static str,
        attempts: u32,
        reason: String,
    },

    /// The device returned a signature that does not parse, or the open-time probe signature does
    /// not verify under the key's public key. (Signatures are not verified one by one: that would
    /// halve the PKCS#11 rate; the probe at open and after every session rebuild checks the pair.)
    #[error("device returned an invalid signature: {0}")]
    BadSignature(String),

    /// Software keys were asked for without being compiled in or explicitly allowed.
    #[error("software keys refused: {0}")]
    SoftwareKeysRefused(String),

    /// A local file (event log, key file) could not be read or written.
    #[error("{what} {path}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },

    /// Input handed to the attester operations is malformed (bad nonce size, empty selection, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

impl CustodyError {
    pub(crate) fn tpm(op: &'static str, e: tss_esapi::Error) -> Self {
        CustodyError::Tpm {
            op,
            reason: e.to_string(),
        }
    }

    pub(crate) fn pkcs11(op: &'static str, e: cryptoki::error::Error) -> Self {
        CustodyError::Pkcs11 {
            op,
            reason: e.to_string(),
        }
    }
}
