//! The writ and its proofs (interfaces.md): strict JWS compact ES256, the writ's claims in both
//! forms, request digests, DPoP holder proofs. Every refusal carries a stable code.
//!
//! Built so far: strict JSON, JWS parsing and signing, claims, request digests, DPoP. Not built
//! yet: the trust bundle, the one offline verification function and the replay store trait.

pub mod bundle;
pub mod claims;
pub mod dpop;
pub mod json;
pub mod jws;
pub mod request;
pub mod signed;
pub mod verify;

/// `sha256:` + hex of a compact writ: what `lin.parent` / `lin.root` and a decision record's
/// `digests.writ` name (interfaces.md).
pub fn token_digest(token: &str) -> String {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(token.as_bytes());
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A refusal: a stable lower_snake_case code naming the failed check, and a detail for people
/// (never a secret, an expected MAC or another holder's value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct Refusal {
    /// The stable code (problem+json, CLI output, decision records, metrics).
    pub code: &'static str,
    /// What failed, for people.
    pub detail: String,
}

impl Refusal {
    /// A refusal with `code`.
    pub fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Refusal {
            code,
            detail: detail.into(),
        }
    }
}
