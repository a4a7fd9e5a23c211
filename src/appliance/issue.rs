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

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use writ_attestation::crypto::default_provider;
use writ_attestation::jwk::EcJwk;
use writ_attestation::log::record::{Kind, leaf_ref};
use writ_attestation::writ::Refusal;
use writ_attestation::writ::claims::{
    Act, Att, Cnf, Form, Lin, Scope, WritClaims, check_child, covers, is_digest,
};
use writ_attestation::writ::dpop;
use writ_attestation::writ::jws::{self, HeaderShape};

use super::{Appliance, decision_leaf, digest, now, random, store_problem, valid_name};
use crate::http::Problem;
use crate::policy::{LoadedPolicy, MOST_DELEGATION_DEPTH, Principal, RequestContext, Verdict};
use crate::store::{Op, StoreError, Value as Db};

/// Tolerated clock skew of a proof's `iat`, seconds.
pub const PROOF_SKEW: i64 = 60;
/// Largest action, resource or audience, bytes.
const MAX_FIELD: usize = 512;
/// Refused writ requests recorded per runtime per minute (beyond: 429, not recorded).
pub const MAX_REFUSALS_PER_MINUTE: u32 = 120;

/// A writ request (the body of `POST /v1/writs`): an execution writ (`action`, `resource`,
/// `audience`, `req`) or a delegation writ (`scope`), optionally under a `parent` delegation writ
/// presented with `parent_proof`, a DPoP proof by the parent's holder key.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WritRequest {
    /// The action's name (e.g. `exec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The resource it acts on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The gateway deployment that will run it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The request digest (`sha256:` of the canonical request object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req: Option<String>,
    /// What a delegation writ may hand down (instead of the four above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// The parent delegation writ (JWS compact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// A DPoP proof by the parent's holder key: `POST`, this URL, `ath` of the parent writ, and
    /// `nonce` the requester's holder key thumbprint (the parent's holder consents to this
    /// holder, once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_proof: Option<String>,
    /// The lifetime asked for, seconds (default and bound from the policy bundle, and never past
    /// the parent's expiry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_s: Option<i64>,
}

impl std::fmt::Debug for WritRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The parent writ and its holder's proof are tokens: not shown.
        f.debug_struct("WritRequest")
            .field("action", &self.action)
            .field("resource", &self.resource)
            .field("audience", &self.audience)
            .field("req", &self.req)
            .field("scope", &self.scope)
            .field("parent", &self.parent.as_ref().map(|_| "(a writ)"))
            .field("lifetime_s", &self.lifetime_s)
            .finish_non_exhaustive()
    }
}

/// The form asked for, checked.
enum Asked<'a> {
    Execution {
        action: &'a str,
        resource: &'a str,
        audience: &'a str,
        req: &'a str,
    },
    Delegation(&'a Scope),
}

/// Most entries in each list of a scope.
pub const MAX_SCOPE_ENTRIES: usize = 8;
/// Most (action, resource, audience) combinations of a scope, each decided by policy.
pub const MAX_SCOPE_COMBINATIONS: usize = 64;

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
    pub(crate) fn admit(&self, name: &str, now: i64, limit: u32) -> bool {
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
    pub(crate) fn current_policy(&self) -> Result<Option<(i64, Arc<LoadedPolicy>)>, Problem> {
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

    pub(crate) fn forget_policy(&self) {
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
        let mut effect = vec![Op {
            sql: "INSERT INTO policy_bundles (generation, hash, bundle, loaded_at)
                  SELECT COALESCE(MAX(generation), 0) + 1, $1, $2, $3 FROM policy_bundles",
            params: vec![
                loaded.hash.clone().into(),
                loaded.canonical.clone().into(),
                t.into(),
            ],
            must_affect: None,
        }];
        // A longer writ lifetime while a rotated issuer key may still sign (or a checkpoint key
        // whose checkpoints travel with writs): what it signs lives longer, so it leaves the trust
        // bundle that much later (docs/keys.md).
        let longer = self.current_policy()?.map_or(0, |(_, p)| {
            loaded
                .bundle
                .max_writ_lifetime_s
                .saturating_sub(p.bundle.max_writ_lifetime_s)
        });
        if longer > 0 {
            effect.push(Op {
                sql: "UPDATE key_schedule SET retires_at = retires_at + $1
                      WHERE purpose IN ('issuer', 'checkpoint') AND retires_at > $2",
                params: vec![longer.into(), t.into()],
                must_affect: None,
            });
        }
        // Its reference profiles, in the same transaction as the bundle and its record.
        for (name, text, id) in &loaded.profiles {
            effect.push(Op {
                sql: "INSERT INTO profiles (name, profile, digest, loaded_at)
                      VALUES ($1, $2, $3, $4)
                      ON CONFLICT (name) DO UPDATE SET profile = excluded.profile,
                          digest = excluded.digest, loaded_at = excluded.loaded_at",
                params: vec![
                    name.clone().into(),
                    text.clone().into(),
                    id.clone().into(),
                    t.into(),
                ],
                must_affect: None,
            });
        }
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
                // The trust bundle's accepted policy bundles changed: a new version now (else at
                // the next start or policy load; until then relying parties refuse writs under
                // the new bundle: closed, not open).
                if now().is_ok_and(|t| self.signing_key("issuer", t).is_some())
                    && let Err(e) = self.publish_bundle()
                {
                    tracing::warn!(
                        "trust bundle not published after a policy load: {}",
                        e.code()
                    );
                }
                Ok(loaded.hash)
            }
            Err(e) => Err(store_problem(e)),
        }
    }

    /// Issues a writ; see the module's documentation. `htu` is the URL the request was sent
    /// to (scheme, host and path), as the proofs must name it.
    pub fn issue(
        &self,
        ear: Option<&str>,
        proof: Option<&str>,
        htu: &str,
        req: &WritRequest,
    ) -> Result<Issued, Problem> {
        let t = now()?;
        let provider = default_provider();
        let EarCaller {
            ear,
            claims,
            subject,
            name,
            ear_digest,
        } = self.ear_caller(ear, t)?;

        // Identified from here on.
        let mut digests: Vec<(&str, String)> = vec![("ear", ear_digest.clone())];
        let policy = self.current_policy()?;
        let policy_hash = policy.as_ref().map(|(_, p)| p.hash.clone());
        // The leaf hash of the parent's `issue` record, once the parent is found in the log:
        // every later record about this request names it.
        let parent_leaf: RefCell<Option<String>> = RefCell::new(None);
        let record = |reasons: &[&'static str], digests: &[(&str, String)], effect: Vec<Op>| {
            let leaf = decision_leaf(
                Kind::Issue,
                &subject,
                reasons,
                digests,
                policy_hash.as_deref(),
                parent_leaf.borrow().clone(),
            )?;
            Ok::<_, Problem>(self.append_leaf(Kind::Issue, reasons.first().copied(), leaf, effect))
        };
        let deny = |code: &'static str,
                    status: StatusCode,
                    detail: String,
                    digests: &[(&str, String)],
                    effect: Vec<Op>| {
            self.refuse(
                &Refused {
                    kind: Kind::Issue,
                    name: &name,
                    subject: &subject,
                    policy: policy_hash.as_deref(),
                    parent: parent_leaf.borrow().clone(),
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
        // The holder proof: by the holder key the appraisal certified, for this request.
        let jkt = claims
            .get("cnf")
            .and_then(|c| c.get("jkt"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let verified = match self.holder_proof(ear, &jkt, proof, htu, t) {
            Ok(v) => v,
            Err((code, status, detail)) => {
                return Err(deny(code, status, detail, &digests, Vec::new()));
            }
        };
        digests.push((
            "proof",
            digest(format!("{}:{}", verified.jkt, verified.jti).as_bytes()),
        ));
        // A proof that verified for this request is used once, refused or not (expired ones
        // are purged with it); the parent's proof joins once it verifies.
        let mut proofs: Vec<(String, String)> = vec![(verified.jkt.clone(), verified.jti.clone())];
        if self.proof_used(&verified.jkt, &verified.jti)? {
            return Err(deny(
                "replayed",
                StatusCode::UNAUTHORIZED,
                "this DPoP proof was already used".into(),
                &digests,
                Vec::new(),
            ));
        }
        let col = |i: usize| row.get(i).and_then(Db::text).unwrap_or("").to_string();
        let status = col(4);
        if let Err((code, status, detail)) = standing(
            row,
            &ear_digest,
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
                NO_POLICY.into(),
                &digests,
                spend(&proofs, t, false),
            ));
        };
        // The request.
        let asked = match asked(req, policy.bundle.max_delegation_depth()) {
            Ok(a) => a,
            Err(detail) => {
                return Err(deny(
                    "malformed",
                    StatusCode::BAD_REQUEST,
                    detail,
                    &digests,
                    spend(&proofs, t, false),
                ));
            }
        };
        match &asked {
            Asked::Execution { req, .. } => digests.push(("req", (*req).to_string())),
            Asked::Delegation(scope) => digests.push((
                "scope",
                serde_json::to_value(scope)
                    .ok()
                    .and_then(|v| writ_attestation::jcs::canonical(&v).ok())
                    .map(|c| digest(c.as_bytes()))
                    .unwrap_or_default(),
            )),
        }
        if let Some(l) = req.lifetime_s
            && !(1..=policy.bundle.max_writ_lifetime_s).contains(&l)
        {
            return Err(deny(
                "lifetime",
                StatusCode::FORBIDDEN,
                format!(
                    "a lifetime of {l} s (policy allows 1 to {} s)",
                    policy.bundle.max_writ_lifetime_s
                ),
                &digests,
                spend(&proofs, t, false),
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
                spend(&proofs, t, false),
            ));
        }

        // The parent: ours, in force, under the policy in force, its holder consenting to this
        // request by this holder, in the log, and nobody in its chain revoked or contraindicated.
        let mut chain: Vec<String> = Vec::new();
        let parent = match &req.parent {
            None => None,
            Some(parent) => {
                let parent_digest = digest(parent.as_bytes());
                digests.push(("parent", parent_digest.clone()));
                let parent_claims = match self.verify_parent(parent, t, &policy.hash) {
                    Ok(c) => c,
                    Err((code, detail)) => {
                        return Err(deny(
                            code,
                            StatusCode::FORBIDDEN,
                            detail,
                            &digests,
                            spend(&proofs, t, false),
                        ));
                    }
                };
                let leaf = match self.lineage_of(&parent_digest)? {
                    Some((leaf, runtimes)) => {
                        chain = runtimes;
                        leaf
                    }
                    None => {
                        tracing::warn!(
                            parent = %parent_digest,
                            "a parent writ signed by the issuer key has no issue record"
                        );
                        return Err(deny(
                            "parent_unlogged",
                            StatusCode::FORBIDDEN,
                            "the parent writ has no issue record in the log".into(),
                            &digests,
                            spend(&proofs, t, false),
                        ));
                    }
                };
                let Some(parent_proof) = req.parent_proof.as_deref() else {
                    return Err(deny(
                        "parent_proof_missing",
                        StatusCode::UNAUTHORIZED,
                        "a parent writ comes with a DPoP proof by its holder (parent_proof)".into(),
                        &digests,
                        spend(&proofs, t, false),
                    ));
                };
                let consent = consent_nonce(&jkt, req)
                    .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "malformed", e))?;
                let pv = match dpop::verify(
                    provider,
                    parent_proof,
                    &dpop::Expected {
                        jkt: &parent_claims.cnf.jkt,
                        htm: "POST",
                        htu,
                        token: parent,
                        now: t,
                        skew: PROOF_SKEW,
                        nonce: Some(&consent),
                    },
                ) {
                    Ok(v) => v,
                    Err(r) => {
                        return Err(deny(
                            "parent_proof",
                            StatusCode::UNAUTHORIZED,
                            format!("the parent holder's proof: {}", r.detail),
                            &digests,
                            spend(&proofs, t, false),
                        ));
                    }
                };
                if (pv.jkt.as_str(), pv.jti.as_str())
                    == (verified.jkt.as_str(), verified.jti.as_str())
                    || self.proof_used(&pv.jkt, &pv.jti)?
                {
                    return Err(deny(
                        "replayed",
                        StatusCode::UNAUTHORIZED,
                        "the parent holder's proof was already used".into(),
                        &digests,
                        spend(&proofs, t, false),
                    ));
                }
                proofs.push((pv.jkt, pv.jti));
                // From here on, refusals name the parent's record: its holder consented.
                *parent_leaf.borrow_mut() = Some(leaf);
                if let Some((runtime, code, why)) = self.first_unusable(&chain)? {
                    return Err(deny(
                        code,
                        StatusCode::FORBIDDEN,
                        format!("{} in the parent chain {why}", self.runtime_id(&runtime)),
                        &digests,
                        spend(&proofs, t, false),
                    ));
                }
                Some((parent_digest, parent_claims))
            }
        };

        // The claims, and (under a parent) that they stay within it.
        let Some(issuer) = self.signing_key("issuer", t) else {
            return Err(deny(
                "issuer_signing",
                StatusCode::SERVICE_UNAVAILABLE,
                "no issuer key is configured (keys.issuer): nothing is issued".into(),
                &digests,
                spend(&proofs, t, false),
            ));
        };
        let (evidence, nonce_digest) = evidence_digests(row, &name)?;
        // Lifetime: as asked, else the policy's default, and never past the parent (asking
        // for more than the parent has left is refused by the lineage check below).
        let lifetime = match (&parent, req.lifetime_s) {
            (_, Some(l)) => l,
            (Some((_, p)), None) => policy.bundle.writ_lifetime_s.min(p.exp.saturating_sub(t)),
            (None, None) => policy.bundle.writ_lifetime_s,
        };
        let (act, scope, aud) = match &asked {
            Asked::Execution {
                action,
                resource,
                audience,
                req,
            } => (
                Some(Act {
                    name: (*action).to_string(),
                    resource: (*resource).to_string(),
                    req: (*req).to_string(),
                }),
                None,
                (*audience).to_string(),
            ),
            Asked::Delegation(scope) => (None, Some((*scope).clone()), self.appliance_id()),
        };
        let lin = match &parent {
            None => Lin {
                parent: None,
                root: None,
                depth: 0,
            },
            Some((d, p)) => Lin {
                parent: Some(d.clone()),
                root: Some(p.lin.root.clone().unwrap_or_else(|| d.clone())),
                depth: p.lin.depth.saturating_add(1),
            },
        };
        let writ_claims = WritClaims {
            iss: self.appliance_id(),
            sub: subject.clone(),
            aud,
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
            lin,
            act,
            scope,
        };
        if let Err(r) = writ_claims.check() {
            return Err(deny(
                "lifetime",
                StatusCode::FORBIDDEN,
                format!("the writ's claims do not hold: {}", r.detail),
                &digests,
                spend(&proofs, t, false),
            ));
        }
        let depth_bound = policy.bundle.max_delegation_depth();
        if let Some((d, p)) = &parent {
            let narrowed = check_child(p, d, &writ_claims).and_then(|()| {
                if writ_claims.lin.depth > depth_bound {
                    Err(Refusal::new(
                        "lineage",
                        format!(
                            "depth {} (policy allows up to {depth_bound})",
                            writ_claims.lin.depth
                        ),
                    ))
                } else {
                    Ok(())
                }
            });
            if let Err(r) = narrowed {
                return Err(deny(
                    "lineage",
                    StatusCode::FORBIDDEN,
                    format!("the parent does not allow this: {}", r.detail),
                    &digests,
                    spend(&proofs, t, false),
                ));
            }
        }
        // Policy: the request, or every combination of the scope.
        let (vector, manufacturer) = runtime_facts(row, &name)?;
        let principal = Principal {
            spiffe_id: &subject,
            name: &name,
            status: &status,
            vector: &vector,
            manufacturer: &manufacturer,
        };
        let parent_subject = parent.as_ref().map(|(_, p)| p.sub.as_str()).unwrap_or("");
        let depth = i64::from(writ_claims.lin.depth);
        let asks: Vec<(&str, &str, &str, &str)> = match &asked {
            Asked::Execution {
                action,
                resource,
                audience,
                req,
            } => vec![(action, resource, audience, req)],
            Asked::Delegation(scope) => {
                let mut all = Vec::new();
                for a in &scope.actions {
                    for r in &scope.resources {
                        for u in &scope.audiences {
                            all.push((a.as_str(), r.as_str(), u.as_str(), ""));
                        }
                    }
                }
                all
            }
        };
        for (action, resource, audience, digest_of_req) in asks {
            let verdict = policy.decide(
                &principal,
                action,
                resource,
                &RequestContext {
                    audience,
                    req: digest_of_req,
                    depth,
                    time: t,
                    delegation: matches!(asked, Asked::Delegation(_)),
                    parent: parent_subject,
                },
            );
            let what = match asked {
                Asked::Execution { .. } => String::new(),
                Asked::Delegation(_) => {
                    format!(" (delegating {action} on {resource} for {audience})")
                }
            };
            match verdict {
                Verdict::Allow(_) => {}
                Verdict::Deny(rules) => {
                    let detail = if rules.is_empty() {
                        format!("no permit policy applies to this request{what}")
                    } else {
                        format!("forbidden by policy {}{what}", rules.join(", "))
                    };
                    return Err(deny(
                        "policy",
                        StatusCode::FORBIDDEN,
                        detail,
                        &digests,
                        spend(&proofs, t, false),
                    ));
                }
                Verdict::Error(e) => {
                    return Err(deny(
                        "policy_input",
                        StatusCode::FORBIDDEN,
                        format!("the request does not fit the policy's schema{what}: {e}"),
                        &digests,
                        spend(&proofs, t, false),
                    ));
                }
            }
        }

        // The writ.
        let kid = EcJwk::from_verifying_key(issuer.public_key().verifying_key()).thumbprint();
        let payload = serde_json::to_value(&writ_claims).map_err(|e| {
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "claims", e.to_string())
        })?;
        let token = match jws::sign(
            &json!({"alg": "ES256", "typ": "writ+jwt", "kid": kid}),
            &payload,
            &writ_hsm::signer::JwsSigner(Arc::clone(&issuer)),
        ) {
            Ok(t) => t,
            Err(e) => {
                self.metrics.error("custody", "issuer_signing");
                tracing::error!("issuer key: {}", e.detail);
                return Err(
                    match record(&["issuer_signing"], &digests, spend(&proofs, t, false))? {
                        Ok(_) => Problem::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "issuer_signing",
                            "the writ could not be signed by the issuer key",
                        ),
                        Err(e) => store_problem(e),
                    },
                );
            }
        };
        // The writ's digest is recorded only with the allow: a refusal's record never names a
        // writ (inclusion of an `issue` record is what gateways may require).
        let writ_digest = digest(token.as_bytes());
        let mut allowed = digests.clone();
        allowed.push(("writ", writ_digest.clone()));
        allowed.push(("jti", digest(writ_claims.jti.as_bytes())));
        let leaf = decision_leaf(
            Kind::Issue,
            &subject,
            &[],
            &allowed,
            Some(&policy.hash),
            parent_leaf.borrow().clone(),
        )?;
        let mut effect = commit_rechecks(&name, row, &ear_digest, policy_generation);
        for runtime in &chain {
            effect.push(Op {
                sql: "UPDATE runtimes SET changed_at = changed_at
                      WHERE name = $1 AND state = 'enrolled'",
                params: vec![runtime.clone().into()],
                must_affect: Some((
                    "revoked_in_chain",
                    "a runtime in the parent chain was revoked meanwhile",
                )),
            });
            effect.push(Op {
                sql: "UPDATE attestations SET generation = generation
                      WHERE name = $1 AND status IN ('affirming', 'warning')",
                params: vec![runtime.clone().into()],
                must_affect: Some((
                    "contraindicated_in_chain",
                    "a runtime in the parent chain was appraised contraindicated meanwhile",
                )),
            });
        }
        effect.extend(spend(&proofs, t, true));
        effect.push(Op {
            sql: "INSERT INTO writs (jti, digest, runtime, parent, depth, delegation, expires_at, leaf_hash)
                  VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            params: vec![
                writ_claims.jti.clone().into(),
                writ_digest.into(),
                name.clone().into(),
                match &parent {
                    Some((d, _)) => d.clone().into(),
                    None => Db::Null,
                },
                i64::from(writ_claims.lin.depth).into(),
                i64::from(writ_claims.scope.is_some()).into(),
                writ_claims.exp.into(),
                leaf_ref(&leaf).into(),
            ],
            must_affect: None,
        });
        let index = match self.append_leaf(Kind::Issue, None, leaf, effect) {
            Ok(i) => i,
            Err(StoreError::Conflict { code, detail }) => {
                if code == "policy_changed" {
                    self.forget_policy();
                }
                // Refused, and logged; the writ made for it is never answered.
                return Err(match record(&[code], &digests, spend(&proofs, t, false))? {
                    Ok(_) => Problem::new(StatusCode::CONFLICT, code, detail).identified(),
                    Err(e) => store_problem(e),
                });
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

    /// The caller of a runtime route, by its EAR token: signed by the `ear` key, about a runtime
    /// of this trust domain, unexpired. Until then nobody is identified: the refusals are
    /// `401 ear_missing` / `ear_invalid` / `ear_expired`, counted, not logged.
    pub(crate) fn ear_caller<'a>(
        &self,
        ear: Option<&'a str>,
        t: i64,
    ) -> Result<EarCaller<'a>, Problem> {
        let ear = ear.ok_or_else(|| {
            unidentified(
                "ear_missing",
                "Authorization: DPoP <EAR token> is required (writ agent attest gets one)",
            )
        })?;
        if self.signing_key("ear", t).is_none() {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ear_signing",
                "no ear key is configured: EAR tokens cannot be checked",
            ));
        }
        // The ear key it names: the signing one, or one still published (rotation).
        let keys = self.verification_keys("ear");
        let claims = jws::parse(ear, "ear+jwt", HeaderShape::Kid)
            .and_then(|u| {
                let kid = u.kid().unwrap_or("");
                let key = keys.iter().find(|k| k.thumbprint() == kid).ok_or_else(|| {
                    Refusal::new("kid", "not signed by an ear key of this appliance")
                })?;
                u.verify(default_provider(), key)
            })
            .map_err(|r| unidentified("ear_invalid", format!("the EAR token: {}", r.detail)))?;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
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
        Ok(EarCaller {
            ear,
            ear_digest: digest(ear.as_bytes()),
            claims,
            subject,
            name,
        })
    }

    /// Records a refusal about an identified runtime (with `effect`: the proofs it spends) before
    /// it is answered, at most [`MAX_REFUSALS_PER_MINUTE`] a minute per runtime: a copied EAR
    /// must not let anyone write records under a runtime's name without end (past the bound:
    /// 429, counted, not recorded). If the effect conflicts (a proof spent meanwhile), the
    /// conflict's reason is recorded instead.
    pub(crate) fn refuse(
        &self,
        r: &Refused<'_>,
        (code, status, detail): Denial,
        digests: &[(&str, String)],
        effect: Vec<Op>,
    ) -> Problem {
        if !self.refusals.admit(r.name, r.t, MAX_REFUSALS_PER_MINUTE) {
            return Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many refused requests for this runtime this minute",
            );
        }
        let record = |code: &'static str, effect: Vec<Op>| {
            let leaf = decision_leaf(
                r.kind,
                r.subject,
                &[code],
                digests,
                r.policy,
                r.parent.clone(),
            )?;
            Ok::<_, Problem>(self.append_leaf(r.kind, Some(code), leaf, effect))
        };
        match record(code, effect) {
            Ok(Ok(_)) => Problem::new(status, code, detail).identified(),
            Ok(Err(StoreError::Conflict { code, detail })) => match record(code, Vec::new()) {
                Ok(Ok(_)) => Problem::new(status, code, detail).identified(),
                Ok(Err(e)) => store_problem(e),
                Err(p) => p,
            },
            Ok(Err(e)) => store_problem(e),
            Err(p) => p,
        }
    }

    /// The holder's DPoP proof for `POST htu` with the EAR `ear`, by the key `jkt` the EAR binds:
    /// present (`proof_missing`) and valid for this request (`proof`, `proof_key`,
    /// `proof_binding`, `proof_time`). Its verified form, or the refusal. (Whether it was used
    /// before is the caller's next check, once the proof is among its record's digests.)
    pub(crate) fn holder_proof(
        &self,
        ear: &str,
        jkt: &str,
        proof: Option<&str>,
        htu: &str,
        t: i64,
    ) -> Result<dpop::VerifiedProof, Denial> {
        let Some(proof) = proof else {
            return Err((
                "proof_missing",
                StatusCode::UNAUTHORIZED,
                "a DPoP proof by the holder key is required (header DPoP)".into(),
            ));
        };
        dpop::verify(
            default_provider(),
            proof,
            &dpop::Expected {
                jkt,
                htm: "POST",
                htu,
                token: ear,
                now: t,
                skew: PROOF_SKEW,
                nonce: None,
            },
        )
        .map_err(|r| {
            (
                proof_code(r.code),
                StatusCode::UNAUTHORIZED,
                format!("the DPoP proof: {}", r.detail),
            )
        })
    }

    /// Whether a DPoP proof (holder key, jti) was already used here.
    pub(crate) fn proof_used(&self, jkt: &str, jti: &str) -> Result<bool, Problem> {
        Ok(!self
            .query(
                "SELECT 1 FROM proof_jtis WHERE jkt = $1 AND jti = $2",
                &[jkt.to_string().into(), jti.to_string().into()],
            )?
            .is_empty())
    }

    /// A parent writ: signed by the issuer key, ours, a delegation writ addressed to this
    /// appliance, in force. A refusal's code and detail otherwise.
    fn verify_parent(
        &self,
        parent: &str,
        t: i64,
        policy_hash: &str,
    ) -> Result<WritClaims, (&'static str, String)> {
        let invalid = |d: String| ("parent_invalid", format!("the parent writ: {d}"));
        // The issuer key it names: the signing one, or one still published (rotation).
        let keys = self.verification_keys("issuer");
        let payload = jws::parse(parent, "writ+jwt", HeaderShape::Kid)
            .and_then(|u| {
                let kid = u.kid().unwrap_or("");
                let key = keys.iter().find(|k| k.thumbprint() == kid).ok_or_else(|| {
                    Refusal::new("kid", "not signed by an issuer key of this appliance")
                })?;
                u.verify(default_provider(), key)
            })
            .map_err(|r| invalid(r.detail))?;
        // This appliance signs low-S only: a high-S copy is another encoding of a writ (its
        // digest, which lineage follows, differs), never one that was issued.
        let high_s = parent
            .rsplit('.')
            .next()
            .and_then(|sig| URL_SAFE_NO_PAD.decode(sig).ok())
            .and_then(|b| p256::ecdsa::Signature::from_slice(&b).ok())
            .is_none_or(|sig| sig.normalize_s() != sig);
        if high_s {
            return Err(invalid(
                "its signature is not in the low-S form this appliance signs".into(),
            ));
        }
        let c = WritClaims::from_payload(payload).map_err(|r| invalid(r.detail))?;
        if c.iss != self.appliance_id() || c.aud != self.appliance_id() {
            return Err(invalid(
                "not a writ of this appliance addressed to it".into(),
            ));
        }
        if !matches!(c.form(), Form::Delegation(_)) {
            return Err(invalid(
                "an execution writ delegates nothing (ask for a delegation writ with scope)".into(),
            ));
        }
        if c.att.policy != policy_hash {
            return Err((
                "parent_policy",
                "the parent writ was issued under another policy bundle than the one in force: ask for a new one"
                    .into(),
            ));
        }
        c.check_time(t, 0)
            .map_err(|r| ("parent_expired", format!("the parent writ: {}", r.detail)))?;
        Ok(c)
    }

    /// A logged writ's lineage: the leaf hash of its `issue` record and the runtimes holding it
    /// and each of its ancestors. None if it has no record.
    fn lineage_of(&self, writ_digest: &str) -> Result<Option<(String, Vec<String>)>, Problem> {
        let mut at = writ_digest.to_string();
        let mut leaf = None;
        let mut runtimes: Vec<String> = Vec::new();
        for _ in 0..=MOST_DELEGATION_DEPTH {
            let rows = self.query(
                "SELECT runtime, parent, leaf_hash FROM writs WHERE digest = $1",
                &[at.clone().into()],
            )?;
            let Some(r) = rows.first() else {
                // The first link is what is asked; an ancestor missing is a broken store.
                return if leaf.is_none() {
                    Ok(None)
                } else {
                    Err(corrupt("a parent writ's lineage is missing from the store"))
                };
            };
            let text = |i: usize| r.get(i).and_then(Db::text).map(str::to_string);
            if leaf.is_none() {
                leaf = text(2);
            }
            if let Some(rt) = text(0)
                && !runtimes.contains(&rt)
            {
                runtimes.push(rt);
            }
            match text(1) {
                Some(p) => at = p,
                None => return Ok(leaf.map(|l| (l, runtimes))),
            }
        }
        Err(corrupt("a lineage longer than any policy allows"))
    }

    /// The first of `runtimes` that is not enrolled, or whose current appraisal is not
    /// affirming or warning: its name, the refusal's code and why.
    fn first_unusable(
        &self,
        runtimes: &[String],
    ) -> Result<Option<(String, &'static str, &'static str)>, Problem> {
        for r in runtimes {
            let rows = self.query(
                "SELECT r.state, a.status FROM runtimes r LEFT JOIN attestations a ON a.name = r.name
                 WHERE r.name = CAST($1 AS TEXT)",
                &[r.clone().into()],
            )?;
            let row = rows.first();
            let col = |i: usize| {
                row.and_then(|row| row.get(i))
                    .and_then(Db::text)
                    .unwrap_or("")
            };
            if col(0) != "enrolled" {
                return Ok(Some((r.clone(), "revoked_in_chain", "is revoked")));
            }
            if !matches!(col(1), "affirming" | "warning") {
                return Ok(Some((
                    r.clone(),
                    "contraindicated_in_chain",
                    "has no affirming or warning appraisal",
                )));
            }
        }
        Ok(None)
    }

    /// The `issue` record's leaf hash of the writ with `jti`, for auditors.
    pub fn writ_record(&self, jti: &str) -> Result<Option<String>, Problem> {
        let rows = self.query(
            "SELECT leaf_hash FROM writs WHERE jti = $1",
            &[jti.to_string().into()],
        )?;
        Ok(rows
            .first()
            .and_then(|r| r.first())
            .and_then(Db::text)
            .map(str::to_string))
    }
}

const NO_POLICY: &str = "no policy bundle is loaded (writ admin load-policy): nothing is allowed";

/// A runtime with its current appraisal: state, AK, TPM attributes, generation, status, result,
/// holder key, EAR digest, time.
/// (`CAST`: SQLite would otherwise plan the join again for every name bound, propagating the
/// parameter's value through `a.name = r.name`.)
pub(crate) const RUNTIME_ROW: &str =
    "SELECT r.state, r.ak_public, r.tpm, a.generation, a.status, a.result, a.holder_jkt,
            a.ear_digest, a.attested_at
     FROM runtimes r LEFT JOIN attestations a ON a.name = r.name
     WHERE r.name = CAST($1 AS TEXT)";

/// A runtime's standing for a request, from its [`RUNTIME_ROW`]: enrolled (`revoked`), its
/// current appraisal affirming or warning (`contraindicated`) and the one the EAR presented states
/// (`ear_superseded`), a policy bundle in force (`no_policy`), the appraisal younger than the
/// bundle's bound (`stale_appraisal`). The refusal's code, status and detail otherwise.
pub(crate) fn standing(
    row: &[Db],
    ear_digest: &str,
    policy: Option<&LoadedPolicy>,
    t: i64,
) -> Result<(), (&'static str, StatusCode, String)> {
    let col = |i: usize| row.get(i).and_then(Db::text).unwrap_or("");
    if col(0) != "enrolled" {
        return Err((
            "revoked",
            StatusCode::FORBIDDEN,
            "this runtime is revoked".into(),
        ));
    }
    let status = col(4);
    // The current appraisal first (a contraindicated one has no EAR), then that the EAR
    // presented is the current appraisal's.
    let attested = !matches!(row.get(3), None | Some(Db::Null));
    if attested && !(status == "affirming" || status == "warning") {
        return Err((
            "contraindicated",
            StatusCode::FORBIDDEN,
            format!("the runtime's current appraisal is {status}"),
        ));
    }
    if !attested || col(7) != ear_digest {
        return Err((
            "ear_superseded",
            StatusCode::FORBIDDEN,
            "this EAR is not the runtime's current appraisal (a later attestation replaced it); use the latest".into(),
        ));
    }
    let Some(policy) = policy else {
        return Err((
            "no_policy",
            StatusCode::SERVICE_UNAVAILABLE,
            NO_POLICY.into(),
        ));
    };
    let age = t.saturating_sub(row.get(8).and_then(Db::int).unwrap_or(0));
    if age > policy.bundle.max_appraisal_age_s {
        return Err((
            "stale_appraisal",
            StatusCode::FORBIDDEN,
            format!(
                "the runtime's appraisal is {age} s old (policy accepts {} s); attest again",
                policy.bundle.max_appraisal_age_s
            ),
        ));
    }
    Ok(())
}

/// A refusal's code, status and detail, before it is recorded.
pub(crate) type Denial = (&'static str, StatusCode, String);

/// Who a refusal is about, and under what: its record's kind, the runtime (name and SPIFFE ID),
/// the policy bundle in force, the parent's record (a writ under a parent), now.
pub(crate) struct Refused<'a> {
    pub kind: Kind,
    pub name: &'a str,
    pub subject: &'a str,
    pub policy: Option<&'a str>,
    pub parent: Option<String>,
    pub t: i64,
}

/// What Cedar knows of a runtime from its [`RUNTIME_ROW`] besides its name and status: the AR4SI
/// vector of its current appraisal and its TPM's vendor (from the enrolled EK certificate, or
/// ""). An appraisal without a vector is a broken store: refused, never decided with defaults.
pub(crate) fn runtime_facts(row: &[Db], name: &str) -> Result<(Value, String), Problem> {
    let json = |i: usize| -> Value {
        row.get(i)
            .and_then(Db::text)
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or(Value::Null)
    };
    let Some(vector) = json(5).get("vector").cloned() else {
        tracing::error!(runtime = %name, "stored appraisal without its vector");
        return Err(corrupt("the runtime's stored appraisal is incomplete"));
    };
    let manufacturer = writ_attestation::evidence::TpmAttributes {
        manufacturer: json(2)
            .get("manufacturer")
            .and_then(Value::as_str)
            .map(str::to_string),
        model: None,
        version: None,
    }
    .vendor()
    .unwrap_or_default();
    Ok((vector, manufacturer))
}

/// The digests of the evidence behind a runtime's current appraisal (its [`RUNTIME_ROW`]): the
/// evidence (SHA-256 of its canonical JSON) and the attestation's nonce. An appraisal without
/// them is a broken store: refused.
pub(crate) fn evidence_digests(row: &[Db], name: &str) -> Result<(String, String), Problem> {
    let result: Value = row
        .get(5)
        .and_then(Db::text)
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null);
    let Some(evidence_map) = result.get("evidence") else {
        tracing::error!(runtime = %name, "stored appraisal without its evidence");
        return Err(corrupt("the runtime's stored appraisal is incomplete"));
    };
    let evidence = writ_attestation::jcs::canonical(evidence_map)
        .map(|c| digest(c.as_bytes()))
        .map_err(|e| corrupt(&e.to_string()))?;
    let nonce = evidence_map
        .get("nonce")
        .and_then(Value::as_str)
        .filter(|n| is_digest(n))
        .ok_or_else(|| corrupt("the runtime's stored appraisal has no nonce digest"))?
        .to_string();
    Ok((evidence, nonce))
}

/// The re-checks a decision about runtime `name` (its [`RUNTIME_ROW`], read when the decision was
/// made) commits with: the runtime is still enrolled with the same AK (`revoked`), its appraisal
/// is still the one decided on, same generation and same EAR (`appraisal_changed`), and the
/// policy bundle decided under is still the one in force (`policy_changed`).
pub(crate) fn commit_rechecks(
    name: &str,
    row: &[Db],
    ear_digest: &str,
    policy_generation: i64,
) -> Vec<Op> {
    let ak_public = row
        .get(1)
        .and_then(Db::blob)
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    let generation = row.get(3).and_then(Db::int).unwrap_or(0);
    vec![
        Op {
            sql: "UPDATE runtimes SET changed_at = changed_at
                  WHERE name = $1 AND state = 'enrolled' AND ak_public = $2",
            params: vec![name.to_string().into(), ak_public.into()],
            must_affect: Some(("revoked", "this runtime was revoked meanwhile")),
        },
        Op {
            sql: "UPDATE attestations SET generation = generation
                  WHERE name = $1 AND generation = $2 AND ear_digest = $3",
            params: vec![
                name.to_string().into(),
                generation.into(),
                ear_digest.to_string().into(),
            ],
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
    ]
}

/// A runtime identified by its EAR token.
pub(crate) struct EarCaller<'a> {
    /// The token.
    pub ear: &'a str,
    /// Its verified claims.
    pub claims: serde_json::Map<String, Value>,
    /// The runtime's SPIFFE ID.
    pub subject: String,
    /// The runtime's name.
    pub name: String,
    /// `sha256:` of the token.
    pub ear_digest: String,
}

fn corrupt(detail: &str) -> Problem {
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "store_corrupt",
        detail.to_string(),
    )
}

/// The `nonce` of a parent holder's consent: the requester's holder key thumbprint and the
/// `sha256:` of the request's canonical JSON without `parent_proof`, joined by `.`. The parent's
/// holder consents to this holder asking for exactly this, once.
pub fn consent_nonce(requester_jkt: &str, req: &WritRequest) -> Result<String, String> {
    let asked = WritRequest {
        parent_proof: None,
        ..req.clone()
    };
    let v = serde_json::to_value(&asked).map_err(|e| e.to_string())?;
    let c = writ_attestation::jcs::canonical(&v).map_err(|e| e.to_string())?;
    Ok(format!("{requester_jkt}.{}", digest(c.as_bytes())))
}

/// Whether `r` is a resource path: segments separated by single `/`, none empty, `.` or `..`,
/// no leading or trailing `/` (so that policy, which compares strings, and lineage, which
/// compares segments, read it alike).
fn canonical_resource(r: &str) -> bool {
    r.split('/')
        .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// The code of a refused holder proof.
pub(crate) fn proof_code(code: &str) -> &'static str {
    match code {
        "proof_key" => "proof_key",
        "proof_binding" => "proof_binding",
        "proof_time" => "proof_time",
        _ => "proof",
    }
}

/// Spending DPoP proofs (holder key, jti): kept until they could no longer be accepted anyway,
/// after purging those past that. With `must`, a proof already spent is a conflict (`replayed`).
pub(crate) fn spend(proofs: &[(String, String)], t: i64, must: bool) -> Vec<Op> {
    let mut ops = vec![Op {
        sql: "DELETE FROM proof_jtis WHERE keep_until < $1",
        params: vec![t.into()],
        must_affect: None,
    }];
    for (jkt, jti) in proofs {
        ops.push(Op {
            sql: "INSERT INTO proof_jtis (jkt, jti, keep_until) VALUES ($1, $2, $3)
                  ON CONFLICT (jkt, jti) DO NOTHING",
            params: vec![
                jkt.clone().into(),
                jti.clone().into(),
                t.saturating_add(2 * PROOF_SKEW + 60).into(),
            ],
            must_affect: must.then_some(("replayed", "this DPoP proof was already used")),
        });
    }
    ops
}

/// The form a request asks for, with its fields checked.
fn asked(req: &WritRequest, max_depth: u32) -> Result<Asked<'_>, String> {
    let field_ok =
        |v: &str| !v.is_empty() && v.len() <= MAX_FIELD && !v.chars().any(char::is_control);
    let fields = format!(
        "action, resource and audience are 1 to {MAX_FIELD} bytes without control characters"
    );
    match (
        &req.action,
        &req.resource,
        &req.audience,
        &req.req,
        &req.scope,
    ) {
        (Some(action), Some(resource), Some(audience), Some(r), None) => {
            if !field_ok(action) || !field_ok(resource) || !field_ok(audience) {
                return Err(fields);
            }
            if !canonical_resource(resource) {
                return Err(format!(
                    "resource {resource:?} is not a path of whole segments (no empty, . or .. segments, no leading or trailing /)"
                ));
            }
            if !is_digest(r) {
                return Err(
                    "req is the request digest, sha256:<64 hex> (writ agent request computes it)"
                        .into(),
                );
            }
            Ok(Asked::Execution {
                action,
                resource,
                audience,
                req: r,
            })
        }
        (None, None, None, None, Some(scope)) => {
            let lists = [&scope.actions, &scope.resources, &scope.audiences];
            if lists
                .iter()
                .any(|l| l.is_empty() || l.len() > MAX_SCOPE_ENTRIES)
            {
                return Err(format!(
                    "a scope names 1 to {MAX_SCOPE_ENTRIES} actions, resources and audiences"
                ));
            }
            if lists.iter().any(|l| l.iter().any(|v| !field_ok(v))) {
                return Err(format!("scope entries: {fields}"));
            }
            if lists
                .iter()
                .any(|l| l.iter().enumerate().any(|(i, v)| l.iter().take(i).any(|x| x == v)))
            {
                return Err("a scope names each entry once".into());
            }
            if let Some(r) = scope
                .resources
                .iter()
                .find(|r| !canonical_resource(r) || !covers(r, r))
            {
                return Err(format!(
                    "scope resource {r:?} is not a path of whole segments (no empty, . or .. segments, no leading or trailing /)"
                ));
            }
            let combinations =
                scope.actions.len() * scope.resources.len() * scope.audiences.len();
            if combinations > MAX_SCOPE_COMBINATIONS {
                return Err(format!(
                    "a scope of {combinations} (action, resource, audience) combinations (at most {MAX_SCOPE_COMBINATIONS})"
                ));
            }
            if !(1..=max_depth).contains(&scope.max_depth) {
                return Err(if max_depth == 0 {
                    "policy allows no delegation writs (max_delegation_depth 0)".into()
                } else {
                    format!("scope max_depth is 1 to {max_depth} (policy)")
                });
            }
            Ok(Asked::Delegation(scope))
        }
        _ => Err(
            "ask for an execution writ (action, resource, audience, req) or a delegation writ (scope), not both or parts"
                .into(),
        ),
    }
}
