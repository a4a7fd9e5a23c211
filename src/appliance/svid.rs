//! X.509-SVIDs for attested runtimes (interfaces.md, identities).
//!
//! `POST /v1/svid` with `Authorization: DPoP <EAR>` (the runtime's current EAR), `DPoP: <proof>`
//! (RFC 9449, by the holder key, for this URL and the EAR, single use) and `{"csr": <base64 of a
//! PKCS#10 request, DER>}`. The certified key is the runtime's holder key: the key its AK
//! certified (TPM2_Certify over the attestation's fresh nonce) and its EAR binds (`cnf.jkt`); the
//! request's signature by that key, in the TPM, proves possession of it, and the proof makes the
//! request fresh and single use. In order: the EAR (until it verifies nobody is identified:
//! counted, not logged); then, each refusal a `svid` decision record before its answer: the
//! runtime enrolled, the proof (`proof_missing`, `proof`, `proof_key`, `proof_binding`,
//! `proof_time`, `replayed`; spent by every later decision), the runtime's standing (current
//! appraisal usable and the EAR's, a policy bundle, fresh), the request (`svid_csr`: a PKCS#10
//! request whose signature verifies; `svid_key`: its key is the holder key), the runtime's SVID
//! rate, Cedar (action `svid`, resource the runtime's SPIFFE ID). On allow the `ca` key signs a
//! certificate that takes nothing from the request but its public key: exactly one URI SAN, the
//! runtime's own SPIFFE ID, clientAuth only, not a CA, for the bundle's `svid_lifetime_s` but no
//! longer than the EAR it was asked with (an SVID is as fresh as the attestation behind it),
//! never past the CA; the allow record (with the certificate's digest) commits in one transaction
//! that re-checks the runtime's enrollment, its appraisal (generation and EAR), the policy bundle
//! and the proof's single use. Only then is it answered.

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use writ_attestation::jwk::EcJwk;
use writ_attestation::log::record::Kind;

use super::issue::{RUNTIME_ROW, Refused, commit_rechecks, runtime_facts, spend, standing};
use super::{Appliance, digest, now, store_problem};
use crate::http::Problem;
use crate::policy::{Principal, RequestContext, Verdict};
use crate::store::{Op, StoreError, Value as Db};

/// ecdsa-with-SHA256 (RFC 5758).
const ECDSA_WITH_SHA256: x509_cert::der::oid::ObjectIdentifier =
    x509_cert::der::oid::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");

/// Largest certificate request accepted, bytes (DER).
const MAX_CSR: usize = 8 * 1024;

/// An SVID request.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SvidRequest {
    /// base64 of the PKCS#10 certificate request (DER), signed by the holder key.
    pub csr: String,
}

/// An issued SVID.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SvidIssued {
    /// The certificate (PEM).
    pub certificate: String,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// When it expires (seconds).
    pub expires_at: i64,
    /// The index of its `svid` record in the decision log.
    pub log_index: u64,
}

/// The public key of a PKCS#10 request whose signature (ECDSA P-256 with SHA-256) verifies: the
/// SubjectPublicKeyInfo (DER). A reason otherwise.
fn csr_key(der: &[u8]) -> Result<Vec<u8>, String> {
    use p256::ecdsa::signature::Verifier as _;
    use p256::pkcs8::DecodePublicKey;
    use x509_cert::der::{Decode, Encode};
    if der.len() > MAX_CSR {
        return Err(format!(
            "a request of {} bytes (at most {MAX_CSR})",
            der.len()
        ));
    }
    let req = x509_cert::request::CertReq::from_der(der)
        .map_err(|e| format!("not a PKCS#10 request (DER): {e}"))?;
    if req.algorithm.oid != ECDSA_WITH_SHA256 {
        return Err(format!(
            "signed with {} (ecdsa-with-SHA256 only)",
            req.algorithm.oid
        ));
    }
    let spki = req.info.public_key.to_der().map_err(|e| e.to_string())?;
    let key = p256::ecdsa::VerifyingKey::from_public_key_der(&spki)
        .map_err(|e| format!("its key is not P-256: {e}"))?;
    let info = req.info.to_der().map_err(|e| e.to_string())?;
    let sig = p256::ecdsa::DerSignature::from_bytes(req.signature.raw_bytes())
        .map_err(|e| format!("its signature: {e}"))?;
    key.verify(&info, &sig)
        .map_err(|_| "its signature does not verify with its key".to_string())?;
    Ok(spki)
}

impl Appliance {
    /// Issues an X.509-SVID; see the module's documentation.
    pub fn issue_svid(
        &self,
        ear: Option<&str>,
        proof: Option<&str>,
        htu: &str,
        req: &SvidRequest,
    ) -> Result<SvidIssued, Problem> {
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
        let csr = STANDARD.decode(req.csr.as_bytes()).ok();
        if let Some(c) = &csr {
            digests.push(("csr", digest(c)));
        }
        let deny = |code: &'static str,
                    status: StatusCode,
                    detail: String,
                    digests: &[(&str, String)],
                    effect: Vec<Op>| {
            self.refuse(
                &Refused {
                    kind: Kind::Svid,
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
                "runtime_unknown",
                StatusCode::FORBIDDEN,
                "the EAR's runtime is not enrolled".into(),
                &digests,
                Vec::new(),
            ));
        };
        // The holder's proof: fresh, for this request, single use.
        let verified = match self.holder_proof(caller.ear, &jkt, proof, htu, t) {
            Ok(v) => v,
            Err((code, status, detail)) => {
                return Err(deny(code, status, detail, &digests, Vec::new()));
            }
        };
        digests.push((
            "proof",
            digest(format!("{}:{}", verified.jkt, verified.jti).as_bytes()),
        ));
        let proofs = [(verified.jkt.clone(), verified.jti.clone())];
        if self.proof_used(&verified.jkt, &verified.jti)? {
            return Err(deny(
                "replayed",
                StatusCode::UNAUTHORIZED,
                "this DPoP proof was already used".into(),
                &digests,
                Vec::new(),
            ));
        }
        if let Err((code, status, detail)) = standing(
            row,
            &caller.ear_digest,
            policy.as_ref().map(|(_, p)| p.as_ref()),
            t,
        ) {
            return Err(deny(
                code,
                status,
                detail,
                &digests,
                spend(&proofs, t, false),
            ));
        }
        let Some((policy_generation, policy)) = policy else {
            return Err(deny(
                "no_policy",
                StatusCode::SERVICE_UNAVAILABLE,
                "no policy bundle is loaded".into(),
                &digests,
                spend(&proofs, t, false),
            ));
        };
        // The request: well formed, signed by its key, and that key the holder key.
        let Some(csr) = csr else {
            return Err(deny(
                "svid_csr",
                StatusCode::BAD_REQUEST,
                "csr is not base64".into(),
                &digests,
                spend(&proofs, t, false),
            ));
        };
        let spki = match csr_key(&csr) {
            Ok(k) => k,
            Err(why) => {
                return Err(deny(
                    "svid_csr",
                    StatusCode::BAD_REQUEST,
                    format!("the certificate request: {why}"),
                    &digests,
                    spend(&proofs, t, false),
                ));
            }
        };
        let requested = {
            use p256::pkcs8::DecodePublicKey;
            p256::ecdsa::VerifyingKey::from_public_key_der(&spki)
                .map(|k| EcJwk::from_verifying_key(&k).thumbprint())
                .unwrap_or_default()
        };
        if requested != jkt {
            return Err(deny(
                "svid_key",
                StatusCode::FORBIDDEN,
                "the request's key is not the holder key the AK certified (the EAR's cnf.jkt)"
                    .into(),
                &digests,
                spend(&proofs, t, false),
            ));
        }
        if !self
            .svid_rates
            .admit(&name, t, policy.bundle.rate_per_minute)
        {
            return Err(deny(
                "rate_limited",
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "more than {} requests this minute (policy)",
                    policy.bundle.rate_per_minute
                ),
                &digests,
                spend(&proofs, t, false),
            ));
        }
        // Policy: action `svid` on the runtime's own SPIFFE ID.
        let col = |i: usize| row.get(i).and_then(Db::text).unwrap_or("").to_string();
        let (vector, manufacturer) = runtime_facts(row, &name)?;
        let status = col(4);
        match policy.decide(
            &Principal {
                spiffe_id: &subject,
                name: &name,
                status: &status,
                vector: &vector,
                manufacturer: &manufacturer,
            },
            "svid",
            &subject,
            &RequestContext {
                audience: "",
                req: "",
                depth: 0,
                time: t,
                delegation: false,
                parent: "",
            },
        ) {
            Verdict::Allow(_) => {}
            Verdict::Deny(rules) => {
                return Err(deny(
                    "policy",
                    StatusCode::FORBIDDEN,
                    if rules.is_empty() {
                        "no permit policy applies to an SVID for this runtime".into()
                    } else {
                        format!("forbidden by policy {}", rules.join(", "))
                    },
                    &digests,
                    spend(&proofs, t, false),
                ));
            }
            Verdict::Error(e) => {
                return Err(deny(
                    "policy_input",
                    StatusCode::FORBIDDEN,
                    format!(
                        "the policy bundle does not decide SVIDs (declare action \"svid\"): {e}"
                    ),
                    &digests,
                    spend(&proofs, t, false),
                ));
            }
        }

        // The certificate: nothing from the request but its key.
        let Some(crate::tls::Authority {
            key: ca,
            der: ca_der,
            until,
        }) = self.signing_authority(t)
        else {
            let p = self.no_authority();
            return Err(deny(
                p.code(),
                StatusCode::SERVICE_UNAVAILABLE,
                p.detail().to_string(),
                &digests,
                spend(&proofs, t, false),
            ));
        };
        // No longer than the EAR it was asked with: an SVID is as fresh as its attestation.
        let ear_exp = caller
            .claims
            .get("exp")
            .and_then(Value::as_i64)
            .unwrap_or(t);
        // Nor than the CA that signs it (a rotated-out one).
        let lifetime = policy
            .bundle
            .svid_lifetime_s()
            .min(ear_exp.saturating_sub(t))
            .min(until.map_or(i64::MAX, |u| u.saturating_sub(t)))
            .max(1);
        let der = match crate::tls::client_certificate(
            &ca,
            &ca_der,
            &subject,
            &spki,
            std::time::Duration::from_secs(u64::try_from(lifetime).unwrap_or(0)),
        ) {
            Ok(d) => d,
            Err(e) => {
                self.metrics.error("custody", "ca_signing");
                tracing::error!("SVID: {e}");
                return Err(deny(
                    "ca_signing",
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the certificate could not be signed by the ca key".into(),
                    &digests,
                    spend(&proofs, t, false),
                ));
            }
        };
        let expires_at = {
            use x509_cert::der::Decode;
            x509_cert::Certificate::from_der(&der)
                .ok()
                .and_then(|c| {
                    c.tbs_certificate()
                        .validity()
                        .not_after
                        .to_system_time()
                        .duration_since(std::time::UNIX_EPOCH)
                        .ok()
                })
                .and_then(|d| i64::try_from(d.as_secs()).ok())
                .unwrap_or(t)
        };
        let mut allowed = digests.clone();
        allowed.push(("svid", digest(&der)));
        let mut effect = commit_rechecks(&name, row, &caller.ear_digest, policy_generation);
        effect.extend(spend(&proofs, t, true));
        let index = match self.append_decision(
            Kind::Svid,
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
                // Refused, and logged; the certificate made for it is never answered.
                return Err(deny(
                    code,
                    StatusCode::CONFLICT,
                    detail.to_string(),
                    &digests,
                    spend(&proofs, t, false),
                ));
            }
            Err(e) => return Err(store_problem(e)),
        };
        Ok(SvidIssued {
            certificate: crate::tls::pem(&der)
                .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "certificate", e))?,
            spiffe_id: subject,
            expires_at,
            log_index: index,
        })
    }
}
