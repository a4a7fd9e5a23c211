//! Issuance of execution writs under Cedar policy (docs/issuance.md).
//!
//! `POST /v1/writs` with `Authorization: DPoP <EAR>` (the runtime's current EAR token, bound to
//! its holder key) and `DPoP: <proof>` (RFC 9449, by the holder key in the runtime's TPM, over
//! this request and the EAR). In order: the EAR's signature by the `ear` key, its `sub` and
//! expiry (until then nobody is identified: counted, not logged); then, each refusal a decision
//! record before its answer: the runtime enrolled; the EAR is the one of its current appraisal,
//! which is affirming or warning and younger than the bundle's bound; the proof (holder key,
//! method and URL, `ath`, time, single use); the request's fields; a policy bundle in force; the
//! runtime's rate; Cedar's decision. On allow the claims are built and signed with the `issuer`
//! key, and the record commits in one transaction that re-checks that the runtime is still
//! enrolled with the same AK, its appraisal is the one decided on, the policy bundle is the one in
//! force, and the proof was not used meanwhile. Only then is the writ answered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use writ_attestation::crypto::default_provider;
use writ_attestation::jwk::EcJwk;
use writ_attestation::log::record::Kind;
use writ_attestation::writ::claims::{Act, Att, Cnf, Lin, WritClaims, is_digest};
use writ_attestation::writ::dpop;
use writ_attestation::writ::jws::{self, HeaderShape};

use super::{Appliance, digest, now, random, store_problem, valid_name};
use crate::http::Problem;
use crate::policy::{LoadedPolicy, Principal, RequestContext, Verdict};
use crate::store::{Op, StoreError, Value as Db};

/// Tolerated clock skew of a proof's `iat`, seconds.
pub const PROOF_SKEW: i64 = 60;
/// Largest action, resource or audience, bytes.
const MAX_FIELD: usize = 512;
/// Refused writ requests recorded per runtime per minute (beyond: 429, not recorded).
pub const MAX_REFUSALS_PER_MINUTE: u32 = 120;

/// A writ request (the body of `POST /v1/writs`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WritRequest {
    /// The action's name (e.g. `exec`).
    pub action: String,
    /// The resource it acts on.
    pub resource: String,
    /// The gateway deployment that will run it.
    pub audience: String,
    /// The request digest (`sha256:` of the canonical request object).
    pub req: String,
    /// The lifetime asked for, seconds (default and bound from the policy bundle).
    #[serde(default)]
    pub lifetime_s: Option<i64>,
}

/// An issued writ.
#[derive(Clone, Serialize, Deserialize)]
pub struct Issued {
    /// The writ (JWS compact, `writ+jwt`).
    pub writ: String,
    /// Its `jti`.
    pub jti: String,
    /// When it expires.
    pub expires_at: i64,
    /// The index of its `issue` record in the decision log.
    pub log_index: u64,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("jti", &self.jti)
            .field("expires_at", &self.expires_at)
            .field("log_index", &self.log_index)
            .finish_non_exhaustive()
    }
}

/// The policy bundle in force (generation and bundle), as this process last read it.
#[derive(Default)]
pub(crate) struct PolicyCache(RwLock<Option<(i64, Arc<LoadedPolicy>)>>);

/// Per-runtime decisions in the current minute.
#[derive(Default)]
pub(crate) struct Rates(Mutex<HashMap<String, (i64, u32)>>);

impl Rates {
    /// Counts one decision for `name` at `now`; false once `limit` were made this minute.
    fn admit(&self, name: &str, now: i64, limit: u32) -> bool {
        let Ok(mut map) = self.0.lock() else {
            return false;
        };
        let minute = now.div_euclid(60);
        if map.len() > 100_000 {
            map.retain(|_, (m, _)| *m == minute);
        }
        let entry = map.entry(name.to_string()).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        if entry.1 >= limit {
            return false;
        }
        entry.1 += 1;
        true
    }
}

fn unidentified(code: &'static str, detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, code, detail)
}

impl Appliance {
    /// The policy bundle in force, read from the store on first use (and after a change).
    fn current_policy(&self) -> Result<Option<(i64, Arc<LoadedPolicy>)>, Problem> {
        if let Ok(c) = self.policy.0.read()
            && let Some(p) = c.as_ref()
        {
            return Ok(Some((p.0, Arc::clone(&p.1))));
        }
        let rows = self.query(
            "SELECT generation, bundle FROM policy_bundles ORDER BY generation DESC LIMIT 1",
            &[],
        )?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let generation = r.first().and_then(Db::int).unwrap_or(0);
        let text = r.get(1).and_then(Db::text).unwrap_or("");
        let loaded = Arc::new(LoadedPolicy::from_json(text.as_bytes()).map_err(|e| {
            tracing::error!("stored policy bundle {generation}: {e}");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "policy_corrupt",
                "the stored policy bundle does not load",
            )
        })?);
        if let Ok(mut c) = self.policy.0.write() {
            *c = Some((generation, Arc::clone(&loaded)));
        }
        Ok(Some((generation, loaded)))
    }

    fn forget_policy(&self) {
        if let Ok(mut c) = self.policy.0.write() {
            *c = None;
        }
    }

    /// Loads a policy bundle (its JSON bytes): checked and validated first; a bundle refused
    /// leaves the one in force. Returns its hash.
    pub fn load_policy(&self, admin: &str, bytes: &[u8]) -> Result<String, Problem> {
        let loaded = LoadedPolicy::from_json(bytes).map_err(|e| {
            self.admin_refused(
                admin,
                Problem::new(StatusCode::BAD_REQUEST, "policy_bundle", e.0),
            )
        })?;
        let t = now()?;
        let effect = vec![Op {
            sql: "INSERT INTO policy_bundles (generation, hash, bundle, loaded_at)
                  SELECT COALESCE(MAX(generation), 0) + 1, $1, $2, $3 FROM policy_bundles",
            params: vec![
                loaded.hash.clone().into(),
                loaded.canonical.clone().into(),
                t.into(),
            ],
            must_affect: None,
        }];
        match self.append_decision(
            Kind::Policy,
            admin,
            &[],
            &[("policy_bundle", loaded.hash.clone())],
            Some(&loaded.hash),
            effect,
        )? {
            Ok(_) => {
                // Read back on next use (the generation is the store's).
                self.forget_policy();
                Ok(loaded.hash)
            }
            Err(e) => Err(store_problem(e)),
        }
    }

    /// Issues an execution writ; see the module's documentation. `htu` is the URL the request
    /// was sent to (scheme, host and path), as the proof must name it.
    pub fn issue(
        &self,
        ear: Option<&str>,
        proof: Option<&str>,
        htu: &str,
        req: &WritRequest,
    ) -> Result<Issued, Problem> {
        let t = now()?;
        let provider = default_provider();
        // The EAR: ours, unexpired, about a runtime. Until it verifies nobody is identified.
        let ear = ear.ok_or_else(|| {
            unidentified(
                "ear_missing",
                "Authorization: DPoP <EAR token> is required (writ agent attest gets one)",
            )
        })?;
        let ear_key = self.config.ear_key.as_ref().ok_or_else(|| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ear_signing",
                "no ear key is configured: EAR tokens cannot be checked",
            )
        })?;
        let ear_jwk = EcJwk::from_verifying_key(ear_key.public_key().verifying_key());
        let claims = jws::parse(ear, "ear+jwt", HeaderShape::Kid)
            .and_then(|u| u.verify(provider, &ear_jwk))
            .map_err(|r| unidentified("ear_invalid", format!("the EAR token: {}", r.detail)))?;
        let text = |k: &str| claims.get(k).and_then(Value::as_str).unwrap_or("");
        let subject = text("sub").to_string();
        let Some(name) = subject
            .strip_prefix(&format!("spiffe://{}/runtime/", self.config.trust_domain))
            .filter(|n| valid_name(n))
            .map(str::to_string)
        else {
            return Err(unidentified(
                "ear_invalid",
                "the EAR names no runtime of this trust domain",
            ));
        };
        if claims.get("exp").and_then(Value::as_i64).unwrap_or(0) <= t {
            return Err(unidentified(
                "ear_expired",
                "the EAR token has expired; attest again",
            ));
        }
        let ear_digest = digest(ear.as_bytes());

        // Identified from here on.
        let mut digests: Vec<(&str, String)> = vec![("ear", ear_digest.clone())];
        let policy = self.current_policy()?;
        let policy_hash = policy.as_ref().map(|(_, p)| p.hash.clone());
        let deny = |code: &'static str,
                    status: StatusCode,
                    detail: String,
                    digests: &[(&str, String)],
                    effect: Vec<Op>| {
            // Refusals about one runtime are recorded at a bounded rate: a copied EAR must not
            // let anyone write records under its name without end. Past the bound: 429, counted,
            // not recorded.
            if !self.refusals.admit(&name, t, MAX_REFUSALS_PER_MINUTE) {
                return Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many refused writ requests for this runtime this minute",
                );
            }
            match self.append_decision(
                Kind::Issue,
                &subject,
                &[code],
                digests,
                policy_hash.as_deref(),
                effect,
            ) {
                Ok(Ok(_)) => Problem::new(status, code, detail).identified(),
                Ok(Err(StoreError::Conflict { code, detail })) => {
                    match self.append_decision(
                        Kind::Issue,
                        &subject,
                        &[code],
                        digests,
                        policy_hash.as_deref(),
                        Vec::new(),
                    ) {
                        Ok(Ok(_)) => Problem::new(status, code, detail).identified(),
                        Ok(Err(e)) => store_problem(e),
                        Err(p) => p,
                    }
                }
                Ok(Err(e)) => store_problem(e),
                Err(p) => p,
            }
        };
        let rows = self.query(
            "SELECT r.state, r.ak_public, r.tpm, a.generation, a.status, a.result, a.holder_jkt,
                    a.ear_digest, a.attested_at
             FROM runtimes r LEFT JOIN attestations a ON a.name = r.name
             WHERE r.name = $1",
            &[name.clone().into()],
        )?;
        let Some(row) = rows.first() else {
            return Err(deny(
                "runtime_unknown",
                StatusCode::FORBIDDEN,
                "the EAR's runtime is not enrolled".into(),
                &digests,
                Vec::new(),
            ));
        };
        // The holder proof: by the holder key the appraisal certified, for this request.
        let jkt = claims
            .get("cnf")
            .and_then(|c| c.get("jkt"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let Some(proof) = proof else {
            return Err(deny(
                "proof_missing",
                StatusCode::UNAUTHORIZED,
                "a DPoP proof by the holder key is required (header DPoP)".into(),
                &digests,
                Vec::new(),
            ));
        };
        let verified = match dpop::verify(
            provider,
            proof,
            &dpop::Expected {
                jkt: &jkt,
                htm: "POST",
                htu,
                token: ear,
                now: t,
                skew: PROOF_SKEW,
                nonce: None,
            },
        ) {
            Ok(v) => v,
            Err(r) => {
                let code = match r.code {
                    "proof_key" => "proof_key",
                    "proof_binding" => "proof_binding",
                    "proof_time" => "proof_time",
                    _ => "proof",
                };
                return Err(deny(
                    code,
                    StatusCode::UNAUTHORIZED,
                    format!("the DPoP proof: {}", r.detail),
                    &digests,
                    Vec::new(),
                ));
            }
        };
        digests.push((
            "proof",
            digest(format!("{}:{}", verified.jkt, verified.jti).as_bytes()),
        ));
        // A proof that verified for this request is used once, refused or not (expired ones
        // are purged with it).
        let spend_proof = |must: bool| Op {
            sql: "INSERT INTO proof_jtis (jkt, jti, keep_until) VALUES ($1, $2, $3)
                  ON CONFLICT (jkt, jti) DO NOTHING",
            params: vec![
                verified.jkt.clone().into(),
                verified.jti.clone().into(),
                t.saturating_add(2 * PROOF_SKEW + 60).into(),
            ],
            must_affect: must.then_some(("replayed", "this DPoP proof was already used")),
        };
        let spent = || {
            vec![
                Op {
                    sql: "DELETE FROM proof_jtis WHERE keep_until < $1",
                    params: vec![t.into()],
                    must_affect: None,
                },
                spend_proof(false),
            ]
        };
        let used = self.query(
            "SELECT 1 FROM proof_jtis WHERE jkt = $1 AND jti = $2",
            &[verified.jkt.clone().into(), verified.jti.clone().into()],
        )?;
        if !used.is_empty() {
            return Err(deny(
                "replayed",
                StatusCode::UNAUTHORIZED,
                "this DPoP proof was already used".into(),
                &digests,
                Vec::new(),
            ));
        }
        let col = |i: usize| row.get(i).and_then(Db::text).unwrap_or("").to_string();
        let int = |i: usize| row.get(i).and_then(Db::int).unwrap_or(0);
        let ak_public = row
            .get(1)
            .and_then(Db::blob)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        if col(0) != "enrolled" {
            return Err(deny(
                "revoked",
                StatusCode::FORBIDDEN,
                "this runtime is revoked".into(),
                &digests,
                spent(),
            ));
        }
        let generation = int(3);
        let status = col(4);
        // The current appraisal first (a contraindicated one has no EAR), then that the EAR
        // presented is the current appraisal's.
        let attested = !matches!(row.get(3), None | Some(Db::Null));
        let usable = status == "affirming" || status == "warning";
        if attested && !usable {
            return Err(deny(
                "contraindicated",
                StatusCode::FORBIDDEN,
                format!("the runtime's current appraisal is {status}"),
                &digests,
                spent(),
            ));
        }
        if matches!(row.get(3), None | Some(Db::Null)) || col(7) != ear_digest {
            return Err(deny(
                "ear_superseded",
                StatusCode::FORBIDDEN,
                "this EAR is not the runtime's current appraisal (a later attestation replaced it); use the latest".into(),
                &digests,
                spent(),
            ));
        }
        let Some((policy_generation, policy)) = policy else {
            return Err(deny(
                "no_policy",
                StatusCode::SERVICE_UNAVAILABLE,
                "no policy bundle is loaded (writ admin load-policy): nothing is allowed".into(),
                &digests,
                spent(),
            ));
        };
        let age = t.saturating_sub(int(8));
        if age > policy.bundle.max_appraisal_age_s {
            return Err(deny(
                "stale_appraisal",
                StatusCode::FORBIDDEN,
                format!(
                    "the runtime's appraisal is {age} s old (policy accepts {} s); attest again",
                    policy.bundle.max_appraisal_age_s
                ),
                &digests,
                spent(),
            ));
        }
        // The request.
        let field_ok =
            |v: &str| !v.is_empty() && v.len() <= MAX_FIELD && !v.chars().any(char::is_control);
        if !field_ok(&req.action) || !field_ok(&req.resource) || !field_ok(&req.audience) {
            return Err(deny(
                "malformed",
                StatusCode::BAD_REQUEST,
                format!(
                    "action, resource and audience are 1 to {MAX_FIELD} bytes without control characters"
                ),
                &digests,
                spent(),
            ));
        }
        if !is_digest(&req.req) {
            return Err(deny(
                "malformed",
                StatusCode::BAD_REQUEST,
                "req is the request digest, sha256:<64 hex> (writ agent request computes it)"
                    .into(),
                &digests,
                spent(),
            ));
        }
        digests.push(("req", req.req.clone()));
        let lifetime = req.lifetime_s.unwrap_or(policy.bundle.writ_lifetime_s);
        if !(1..=policy.bundle.max_writ_lifetime_s).contains(&lifetime) {
            return Err(deny(
                "lifetime",
                StatusCode::FORBIDDEN,
                format!(
                    "a lifetime of {lifetime} s (policy allows 1 to {} s)",
                    policy.bundle.max_writ_lifetime_s
                ),
                &digests,
                spent(),
            ));
        }
        if !self.rates.admit(&name, t, policy.bundle.rate_per_minute) {
            return Err(deny(
                "rate_limited",
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "more than {} writ requests this minute (policy)",
                    policy.bundle.rate_per_minute
                ),
                &digests,
                spent(),
            ));
        }
        // Policy.
        let result: Value = serde_json::from_str(&col(5)).unwrap_or(Value::Null);
        let (Some(vector), Some(evidence_map)) = (
            result.get("vector").cloned(),
            result.get("evidence").cloned(),
        ) else {
            tracing::error!(runtime = %name, "stored appraisal without vector or evidence");
            return Err(Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_corrupt",
                "the runtime's stored appraisal is incomplete",
            ));
        };
        let tpm: Value = serde_json::from_str(&col(2)).unwrap_or(Value::Null);
        let manufacturer = writ_attestation::evidence::TpmAttributes {
            manufacturer: tpm
                .get("manufacturer")
                .and_then(Value::as_str)
                .map(str::to_string),
            model: None,
            version: None,
        }
        .vendor()
        .unwrap_or_default();
        let verdict = policy.decide(
            &Principal {
                spiffe_id: &subject,
                name: &name,
                status: &status,
                vector: &vector,
                manufacturer: &manufacturer,
            },
            &req.action,
            &req.resource,
            &RequestContext {
                audience: &req.audience,
                req: &req.req,
                depth: 0,
                time: t,
            },
        );
        match verdict {
            Verdict::Allow(_) => {}
            Verdict::Deny(rules) => {
                let detail = if rules.is_empty() {
                    "no permit policy applies to this request".to_string()
                } else {
                    format!("forbidden by policy {}", rules.join(", "))
                };
                return Err(deny(
                    "policy",
                    StatusCode::FORBIDDEN,
                    detail,
                    &digests,
                    spent(),
                ));
            }
            Verdict::Error(e) => {
                return Err(deny(
                    "policy_input",
                    StatusCode::FORBIDDEN,
                    format!("the request does not fit the policy's schema: {e}"),
                    &digests,
                    spent(),
                ));
            }
        }

        // The writ.
        let Some(issuer) = self.config.issuer_key.as_ref() else {
            return Err(deny(
                "issuer_signing",
                StatusCode::SERVICE_UNAVAILABLE,
                "no issuer key is configured (keys.issuer): nothing is issued".into(),
                &digests,
                spent(),
            ));
        };
        let evidence = writ_attestation::jcs::canonical(&evidence_map)
            .map(|c| digest(c.as_bytes()))
            .map_err(|e| {
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_corrupt",
                    e.to_string(),
                )
            })?;
        let nonce_digest = evidence_map
            .get("nonce")
            .and_then(Value::as_str)
            .filter(|n| is_digest(n))
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_corrupt",
                    "the runtime's stored appraisal has no nonce digest",
                )
            })?
            .to_string();
        let writ_claims = WritClaims {
            iss: self.appliance_id(),
            sub: subject.clone(),
            aud: req.audience.clone(),
            iat: t,
            nbf: t,
            exp: t.saturating_add(lifetime),
            jti: URL_SAFE_NO_PAD.encode(random::<16>()?),
            cnf: Cnf { jkt: jkt.clone() },
            att: Att {
                status: status.clone(),
                ear: ear_digest.clone(),
                evidence,
                nonce: nonce_digest,
                policy: policy.hash.clone(),
            },
            lin: Lin {
                parent: None,
                root: None,
                depth: 0,
            },
            act: Some(Act {
                name: req.action.clone(),
                resource: req.resource.clone(),
                req: req.req.clone(),
            }),
            scope: None,
        };
        writ_claims.check().map_err(|r| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "claims",
                format!("the writ's claims do not hold: {}", r.detail),
            )
        })?;
        let kid = EcJwk::from_verifying_key(issuer.public_key().verifying_key()).thumbprint();
        let payload = serde_json::to_value(&writ_claims).map_err(|e| {
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "claims", e.to_string())
        })?;
        let token = match jws::sign(
            &json!({"alg": "ES256", "typ": "writ+jwt", "kid": kid}),
            &payload,
            &writ_hsm::signer::JwsSigner(Arc::clone(issuer)),
        ) {
            Ok(t) => t,
            Err(e) => {
                self.metrics.error("custody", "issuer_signing");
                return Err(
                    match self.append_decision(
                        Kind::Issue,
                        &subject,
                        &["issuer_signing"],
                        &digests,
                        Some(&policy.hash),
                        spent(),
                    ) {
                        Ok(Ok(_)) => {
                            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "issuer_signing", {
                                tracing::error!("issuer key: {}", e.detail);
                                "the writ could not be signed by the issuer key"
                            })
                        }
                        Ok(Err(e)) => store_problem(e),
                        Err(p) => p,
                    },
                );
            }
        };
        // The writ's digest is recorded only with the allow: a refusal's record never names a
        // writ (inclusion of an `issue` record is what gateways may require).
        let mut allowed = digests.clone();
        allowed.push(("writ", digest(token.as_bytes())));
        let effect = vec![
            Op {
                sql: "UPDATE runtimes SET changed_at = changed_at
                      WHERE name = $1 AND state = 'enrolled' AND ak_public = $2",
                params: vec![name.clone().into(), ak_public.into()],
                must_affect: Some(("revoked", "this runtime was revoked meanwhile")),
            },
            Op {
                sql: "UPDATE attestations SET generation = generation
                      WHERE name = $1 AND generation = $2",
                params: vec![name.clone().into(), generation.into()],
                must_affect: Some((
                    "appraisal_changed",
                    "the runtime's appraisal changed meanwhile; ask again",
                )),
            },
            Op {
                sql: "UPDATE policy_bundles SET generation = generation
                      WHERE generation = $1
                        AND generation = (SELECT MAX(generation) FROM policy_bundles)",
                params: vec![policy_generation.into()],
                must_affect: Some((
                    "policy_changed",
                    "the policy bundle changed meanwhile; ask again",
                )),
            },
            Op {
                sql: "DELETE FROM proof_jtis WHERE keep_until < $1",
                params: vec![t.into()],
                must_affect: None,
            },
            spend_proof(true),
        ];
        let index = match self.append_decision(
            Kind::Issue,
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
                // Refused, and logged; the writ made for it is never answered.
                return Err(
                    match self.append_decision(
                        Kind::Issue,
                        &subject,
                        &[code],
                        &digests,
                        Some(&policy.hash),
                        spent(),
                    )? {
                        Ok(_) => Problem::new(StatusCode::CONFLICT, code, detail).identified(),
                        Err(e) => store_problem(e),
                    },
                );
            }
            Err(e) => return Err(store_problem(e)),
        };
        Ok(Issued {
            writ: token,
            jti: writ_claims.jti,
            expires_at: writ_claims.exp,
            log_index: index,
        })
    }
}
