//! An appraisal as EAT Attestation Result claims (draft-ietf-rats-ear-04, JSON serialization):
//! `eat_profile`, `iat`, `ear_verifier_id`, `eat_nonce`, and one submodule (`tpm`) carrying
//! `ear_status`, `ear_trustworthiness_vector`, `ear_appraisal_policy_id` and, as an unregistered
//! extension, `writ_reasons` (every failed rule, see [`crate::appraisal::Reason`]).
//!
//! Signing the claims as a JWT with the `ear` key is the appliance's job; this is the claims set.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::appraisal::Appraisal;

/// The EAR profile this serialization follows.
pub const EAR_PROFILE: &str = "tag:ietf.org,2026:rats/ear#04";
/// The submodule name of the TPM appraisal.
pub const SUBMOD: &str = "tpm";

/// What the appraisal does not know: when, for which nonce, by which build.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Seconds since the Unix epoch.
    pub iat: u64,
    /// The nonce the evidence answered (the quote's qualifying data).
    pub nonce: Option<&'a [u8]>,
    /// The verifier's build (e.g. `writ 0.1.0`).
    pub build: &'a str,
}

/// The EAR claims set of an appraisal.
pub fn claims(a: &Appraisal, ctx: Context<'_>) -> Value {
    let mut submod = json!({
        "ear_status": a.status.as_str(),
        "ear_trustworthiness_vector": a.vector,
        "ear_appraisal_policy_id": a.policy_id,
    });
    if !a.reasons.is_empty()
        && let Some(map) = submod.as_object_mut()
    {
        map.insert("writ_reasons".into(), json!(a.reasons));
    }
    let mut out = json!({
        "eat_profile": EAR_PROFILE,
        "iat": ctx.iat,
        "ear_verifier_id": {"developer": "writ", "build": ctx.build},
        "submods": { SUBMOD: submod },
    });
    if let Some(n) = ctx.nonce
        && let Some(map) = out.as_object_mut()
    {
        map.insert(
            "eat_nonce".into(),
            Value::String(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n)),
        );
    }
    out
}
