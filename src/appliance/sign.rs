//! The signing service (docs/signing.md): artifacts signed by named keys in custody, only for
//! attested runtimes that policy allows.
//!
//! `POST /v1/sign/<key name>` with `Authorization: DPoP <EAR>` (the runtime's current EAR),
//! `DPoP: <proof>` (RFC 9449, by the holder key, for this URL and the EAR, single use) and either
//! `{"digest": "sha256:<hex>"}` (a raw ECDSA P-256 signature over that SHA-256 digest, DER) or
//! `{"subjects": [{"name", "digest": {"sha256": <hex>}}]}` (a DSSE envelope over an in-toto
//! Statement v1 naming those subjects, whose predicate is what writ knows of the runtime that
//! asked: its SPIFFE ID, the EAR's status and digest, the evidence and nonce digests, the policy
//! bundle hash, the key, the time).
//!
//! In order: the EAR (until it verifies nobody is identified: counted, not logged); then, each
//! refusal a `sign` decision record before its answer: the runtime enrolled (`runtime_unknown`),
//! the proof (`proof_missing`, `proof`, `proof_key`, `proof_binding`, `proof_time`, `replayed`;
//! spent by every later decision), the runtime's standing (`revoked`, `contraindicated`,
//! `ear_superseded`, `no_policy`, `stale_appraisal`), the key (`key_unknown`), the request
//! (`sign_request`, `too_many_subjects`, `payload_too_large`), the runtime's signing rate
//! (`rate_limited`), Cedar (action `sign`, resource `SigningKey::"<name>"`: `policy`,
//! `policy_input`). On allow the key signs (`signing_unavailable` if the device fails: nothing
//! is answered), and the allow record (the key's, the artifact's or payload's and the
//! signature's digests) commits in one transaction that re-checks the runtime's enrollment, its
//! appraisal, the policy bundle and the proof's single use. Only then is the signature answered,
//! with its record's index: no signature leaves without its committed record.

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use writ_attestation::log::record::Kind;
use writ_attestation::writ::bundle::SigningForm;
use writ_attestation::writ::claims::is_digest;
use writ_attestation::writ::signed::{
    Envelope, EnvelopeSignature, PAYLOAD_TYPE, PREDICATE_TYPE, STATEMENT_TYPE, Subject, key_digest,
    pae,
};

use super::issue::{
    Denial, RUNTIME_ROW, Refused, commit_rechecks, evidence_digests, runtime_facts, spend, standing,
};
use super::{Appliance, digest, now, store_problem};
use crate::http::Problem;
use crate::policy::{Principal, SignContext, Verdict};
use crate::store::{StoreError, Value as Db};

/// The Cedar `payload_type` of a raw signature over a digest.
pub const DIGEST_PAYLOAD: &str = "digest";
/// Longest subject name, bytes.
const MAX_SUBJECT_NAME: usize = 1024;

/// A signing request (the body of `POST /v1/sign/<key name>`): exactly one of `digest` and
/// `subjects`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// A raw signature over this SHA-256 digest (`sha256:<hex>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// A DSSE envelope over an in-toto Statement with these subjects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subjects: Option<Vec<Subject>>,
}

/// What the service answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Signed {
    /// The key's name.
    pub key: String,
    /// The key's `kid` in the trust bundle (RFC 7638 thumbprint).
    pub kid: String,
    /// For a digest: the digest signed (`sha256:<hex>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// For a digest: base64 of the DER signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// For subjects: the DSSE envelope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope: Option<Envelope>,
    /// The index of its `sign` record in the decision log.
    pub log_index: u64,
}

/// What is to be signed, checked.
enum Payload {
    /// A SHA-256 digest (raw bytes) and its `sha256:` form.
    Digest([u8; 32], String),
    /// An in-toto Statement: its subjects, and each one's (name, `sha256:` digest).
    Statement {
        subjects: Vec<Subject>,
        named: Vec<(String, String)>,
    },
}

/// The request's shape: one form, well formed, within the policy's subject bound.
fn payload_of(req: &SignRequest, max_subjects: i64) -> Result<Payload, Denial> {
    let malformed = |why: String| ("sign_request", StatusCode::BAD_REQUEST, why);
    match (&req.digest, &req.subjects) {
        (Some(d), None) => {
            if !is_digest(d) {
                return Err(malformed(format!(
                    "digest {d:?} is not sha256:<64 lower-case hex>"
                )));
            }
            let raw = hex::decode(d.trim_start_matches("sha256:"))
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| malformed("digest is not 32 bytes of hex".into()))?;
            Ok(Payload::Digest(raw, d.clone()))
        }
        (None, Some(subjects)) => {
            if subjects.is_empty() {
                return Err(malformed("subjects is empty".into()));
            }
            if i64::try_from(subjects.len()).unwrap_or(i64::MAX) > max_subjects {
                return Err((
                    "too_many_subjects",
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "{} subjects (policy allows {max_subjects} per request)",
                        subjects.len()
                    ),
                ));
            }
            let mut named = Vec::with_capacity(subjects.len());
            for s in subjects {
                if s.name.is_empty()
                    || s.name.len() > MAX_SUBJECT_NAME
                    || s.name.chars().any(char::is_control)
                {
                    return Err(malformed(format!(
                        "a subject's name must be 1 to {MAX_SUBJECT_NAME} bytes without control characters"
                    )));
                }
                // sha256 only: every digest signed is one policy decided on (a second
                // algorithm could name another artifact than the sha256 policy saw).
                let Some(d) = s.sha256().filter(|_| s.digest.len() == 1) else {
                    return Err(malformed(format!(
                        "subject {:?}: digest must be exactly {{\"sha256\": <64 lower-case hex>}}",
                        s.name
                    )));
                };
                named.push((s.name.clone(), d));
            }
            Ok(Payload::Statement {
                subjects: subjects.clone(),
                named,
            })
        }
        _ => Err(malformed(
            "give exactly one of digest (a raw signature) and subjects (a DSSE envelope)".into(),
        )),
    }
}

/// RFC 3339 (UTC, seconds) of `t`.
fn rfc3339(t: i64) -> String {
    u64::try_from(t)
        .ok()
        .and_then(|s| {
            x509_cert::der::DateTime::from_unix_duration(std::time::Duration::from_secs(s)).ok()
        })
        .map(|d| d.to_string())
        .unwrap_or_default()
}

impl Appliance {
    /// Signs for an attested runtime; see the module's documentation.
    pub fn sign(
        &self,
        key_name: &str,
        ear: Option<&str>,
        proof: Option<&str>,
        htu: &str,
        req: &SignRequest,
    ) -> Result<Signed, Problem> {
        let t = now()?;
        let caller = self.ear_caller(ear, t)?;
        let subject = caller.subject.clone();
        let name = caller.name.clone();
        let jkt = caller
            .claims
            .get("cnf")
            .and_then(|c| c.get("jkt"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();

        // Identified from here on.
        let policy = self.current_policy()?;
        let policy_hash = policy.as_ref().map(|(_, p)| p.hash.clone());
        let mut digests: Vec<(&str, String)> = vec![("ear", caller.ear_digest.clone())];
        // The key of that name that signs now (its rotation schedule's, or the configured one).
        let key = self
            .config
            .signing_keys
            .iter()
            .find(|k| k.name == key_name)
            .and_then(|k| {
                Some(super::SigningKey {
                    name: k.name.clone(),
                    form: k.form,
                    key: self.signing_key(&format!("signing:{}", k.name), t)?,
                })
            });
        let kid = key.as_ref().map(|k| {
            writ_attestation::jwk::EcJwk::from_verifying_key(k.key.public_key().verifying_key())
                .thumbprint()
        });
        if let Some(kid) = &kid {
            digests.push(("key", key_digest(kid).unwrap_or_default()));
        }
        let deny = |(code, status, detail): Denial,
                    digests: &[(&str, String)],
                    effect: Vec<crate::store::Op>| {
            self.refuse(
                &Refused {
                    kind: Kind::Sign,
                    name: &name,
                    subject: &subject,
                    policy: policy_hash.as_deref(),
                    parent: None,
                    t,
                },
                (code, status, detail),
                digests,
                effect,
            )
        };
        let rows = self.query(RUNTIME_ROW, &[name.clone().into()])?;
        let Some(row) = rows.first() else {
            return Err(deny(
                (
                    "runtime_unknown",
                    StatusCode::FORBIDDEN,
                    "the EAR's runtime is not enrolled".into(),
                ),
                &digests,
                Vec::new(),
            ));
        };
        // The holder's proof: fresh, for this request, single use.
        let verified = match self.holder_proof(caller.ear, &jkt, proof, htu, t) {
            Ok(v) => v,
            Err(d) => return Err(deny(d, &digests, Vec::new())),
        };
        digests.push((
            "proof",
            digest(format!("{}:{}", verified.jkt, verified.jti).as_bytes()),
        ));
        let proofs = [(verified.jkt.clone(), verified.jti.clone())];
        if self.proof_used(&verified.jkt, &verified.jti)? {
            return Err(deny(
                (
                    "replayed",
                    StatusCode::UNAUTHORIZED,
                    "this DPoP proof was already used".into(),
                ),
                &digests,
                Vec::new(),
            ));
        }
        let refused =
            |d: Denial, digests: &[(&str, String)]| deny(d, digests, spend(&proofs, t, false));
        if let Err(d) = standing(
            row,
            &caller.ear_digest,
            policy.as_ref().map(|(_, p)| p.as_ref()),
            t,
        ) {
            return Err(refused(d, &digests));
        }
        let Some((policy_generation, policy)) = policy else {
            return Err(refused(
                (
                    "no_policy",
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no policy bundle is loaded".into(),
                ),
                &digests,
            ));
        };
        let (Some(key), Some(kid)) = (key, kid) else {
            return Err(refused(
                (
                    "key_unknown",
                    StatusCode::NOT_FOUND,
                    format!("this appliance has no signing key named {key_name:?}"),
                ),
                &digests,
            ));
        };
        let limits = policy.bundle.signing();
        let payload = match payload_of(req, limits.max_subjects) {
            Ok(p) => p,
            Err(d) => return Err(refused(d, &digests)),
        };
        // One form per key: a key that signed raw digests would sign a DSSE PAE's digest too.
        let asked = match payload {
            Payload::Digest(..) => SigningForm::Digest,
            Payload::Statement { .. } => SigningForm::Dsse,
        };
        if asked != key.form {
            return Err(refused(
                (
                    "key_form",
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the key {key_name:?} signs {} only (this request asks for {})",
                        key.form.as_str(),
                        asked.as_str()
                    ),
                ),
                &digests,
            ));
        }
        // The appraisal behind the runtime's standing, whole (a broken one signs nothing).
        let appraisal =
            evidence_digests(row, &name).and_then(|e| runtime_facts(row, &name).map(|f| (e, f)));
        let ((evidence, nonce), (vector, manufacturer)) = match appraisal {
            Ok(a) => a,
            Err(p) => {
                return Err(refused(
                    (
                        p.code(),
                        p.status(),
                        "the runtime's stored appraisal is incomplete".into(),
                    ),
                    &digests,
                ));
            }
        };
        // What is signed: the digest itself, or the Statement (canonical JSON) under DSSE.
        let col = |i: usize| row.get(i).and_then(Db::text).unwrap_or("").to_string();
        let status = col(4);
        let statement = match &payload {
            Payload::Digest(_, d) => {
                digests.push(("artifact", d.clone()));
                None
            }
            Payload::Statement { subjects, .. } => {
                let statement = json!({
                    "_type": STATEMENT_TYPE,
                    "subject": subjects,
                    "predicateType": PREDICATE_TYPE,
                    "predicate": {
                        "runtime": subject,
                        "appliance": self.appliance_id(),
                        "key": key_name,
                        "attestation": {
                            "status": status,
                            "ear": caller.ear_digest,
                            "evidence": evidence,
                            "nonce": nonce,
                            "appraised_at": row.get(8).and_then(Db::int).unwrap_or(0),
                        },
                        "policy_bundle": policy.hash,
                        "signed_at": rfc3339(t),
                    },
                });
                let bytes = match writ_attestation::jcs::canonical(&statement) {
                    Ok(b) => b.into_bytes(),
                    Err(e) => {
                        return Err(refused(
                            (
                                "sign_request",
                                StatusCode::BAD_REQUEST,
                                format!("the statement cannot be encoded: {e}"),
                            ),
                            &digests,
                        ));
                    }
                };
                digests.push(("payload", digest(&bytes)));
                Some(bytes)
            }
        };
        let size = statement.as_ref().map_or(32, Vec::len);
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        if size > limits.max_payload_bytes {
            return Err(refused(
                (
                    "payload_too_large",
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "a payload of {size} bytes (policy allows {})",
                        limits.max_payload_bytes
                    ),
                ),
                &digests,
            ));
        }
        if !self.sign_rates.admit(&name, t, limits.rate_per_minute) {
            return Err(refused(
                (
                    "rate_limited",
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "more than {} signing requests this minute (policy)",
                        limits.rate_per_minute
                    ),
                ),
                &digests,
            ));
        }
        // Policy: action `sign` on the key, with what is to be signed.
        let (payload_type, subjects): (&str, Vec<(String, String)>) = match &payload {
            Payload::Digest(_, d) => (DIGEST_PAYLOAD, vec![(String::new(), d.clone())]),
            Payload::Statement { named, .. } => (PAYLOAD_TYPE, named.clone()),
        };
        match policy.decide_sign(
            &Principal {
                spiffe_id: &subject,
                name: &name,
                status: &status,
                vector: &vector,
                manufacturer: &manufacturer,
            },
            key_name,
            &SignContext {
                payload_type,
                size,
                subjects: &subjects,
                time: t,
            },
        ) {
            Verdict::Allow(_) => {}
            Verdict::Deny(rules) => {
                return Err(refused(
                    (
                        "policy",
                        StatusCode::FORBIDDEN,
                        if rules.is_empty() {
                            format!("no permit policy applies to signing with {key_name:?}")
                        } else {
                            format!("forbidden by policy {}", rules.join(", "))
                        },
                    ),
                    &digests,
                ));
            }
            Verdict::Error(e) => {
                return Err(refused(
                    (
                        "policy_input",
                        StatusCode::FORBIDDEN,
                        format!(
                            "the policy bundle does not decide signing (declare action \"sign\" on SigningKey with SignContext): {e}"
                        ),
                    ),
                    &digests,
                ));
            }
        }

        // The signature, by the key in its device.
        let signed = match (&payload, &statement) {
            (Payload::Digest(d, _), _) => key.key.sign_digest(d),
            (_, Some(bytes)) => key.key.sign(&pae(PAYLOAD_TYPE, bytes)),
            (Payload::Statement { .. }, None) => {
                return Err(Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "a statement without its bytes",
                ));
            }
        };
        let der = match signed {
            Ok(s) => s.to_der().as_bytes().to_vec(),
            Err(e) => {
                self.metrics.error("custody", "signing_unavailable");
                tracing::error!(key = %key_name, "signing service: {e}");
                return Err(refused(
                    (
                        "signing_unavailable",
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("the signing key {key_name:?} could not sign (its device failed)"),
                    ),
                    &digests,
                ));
            }
        };
        let mut allowed = digests.clone();
        allowed.push(("signature", digest(&der)));
        let mut effect = commit_rechecks(&name, row, &caller.ear_digest, policy_generation);
        effect.extend(spend(&proofs, t, true));
        let index = match self.append_decision(
            Kind::Sign,
            &subject,
            &[],
            &allowed,
            Some(&policy.hash),
            effect,
        )? {
            Ok(i) => i,
            Err(StoreError::Conflict { code, detail }) => {
                if code == "policy_changed" {
                    self.forget_policy();
                }
                // Refused, and logged; the signature made for it is never answered.
                return Err(refused(
                    (code, StatusCode::CONFLICT, detail.to_string()),
                    &digests,
                ));
            }
            // The log could not take the record: the signature is dropped, never answered.
            Err(e) => return Err(store_problem(e)),
        };
        let sig = STANDARD.encode(&der);
        Ok(match (payload, statement) {
            (Payload::Digest(_, d), _) => Signed {
                key: key_name.to_string(),
                kid,
                digest: Some(d),
                signature: Some(sig),
                envelope: None,
                log_index: index,
            },
            (_, statement) => Signed {
                key: key_name.to_string(),
                kid: kid.clone(),
                digest: None,
                signature: None,
                envelope: Some(Envelope {
                    payload: STANDARD.encode(statement.unwrap_or_default()),
                    payload_type: PAYLOAD_TYPE.to_string(),
                    signatures: vec![EnvelopeSignature { keyid: kid, sig }],
                }),
                log_index: index,
            },
        })
    }
}
