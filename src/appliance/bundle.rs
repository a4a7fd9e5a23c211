//! The trust bundle (interfaces.md, "The trust bundle"): what relying parties trust writ by.
//!
//! `GET /v1/bundle` answers a SPIFFE bundle (a JWKS whose keys carry `use`: the `ca` key's CA
//! certificate as `x509-svid` with its `x5c`, the `issuer` and `ear` keys as JWT keys with their
//! `kid`) plus a `writ` member (trust domain, issued-at, expires-at, the accepted policy bundle
//! hashes, the log's origin and checkpoint verifier keys: `verifier_key`, the oldest published,
//! and `verifier_keys`, all of them, two during a rotation of the log's key). What it publishes (everything but the
//! validity window) is a version: a change of any part (a key, the CA, a policy bundle loaded, the
//! log's key) makes a new version with the next `spiffe_sequence`, stored and recorded as a
//! `bundle` decision record in one transaction before it is served. Versions are published on
//! events only: when `writ serve` starts and when a policy bundle loads. Asking for the bundle
//! publishes nothing: it serves the latest stored version (a cheap read).
//!
//! The policy bundle hashes of a version: the one in force and, with the time until which it is
//! accepted, the previous one (its `max_writ_lifetime_s` after the next one loaded: writs issued
//! under it can live that long). The deadline is part of the recorded version, so its end needs no
//! new version: the served list drops the hash when the deadline passes.

use std::sync::Mutex;

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use writ_attestation::jwk::EcJwk;
use writ_attestation::log::record::Kind;

use super::{Appliance, digest, now};
use crate::http::Problem;
use crate::policy::LoadedPolicy;
use crate::store::{Op, StoreError, Value as Db};

/// Seconds a served bundle is valid (relying parties refresh well before: the refresh hint).
pub const BUNDLE_LIFETIME_S: i64 = 3600;
/// Seconds after which relying parties should fetch the bundle again.
pub const REFRESH_HINT_S: i64 = 300;

/// Serializes publication of new versions in this process.
#[derive(Default)]
pub(crate) struct Publishing(Mutex<()>);

impl Appliance {
    /// What the bundle publishes now (no validity window).
    fn bundle_content(&self) -> Result<(Value, i64), Problem> {
        let mut keys = Vec::new();
        // Every CA published (two during a rotation of the ca key), oldest first.
        let authorities = self.published_authorities(now()?);
        if self.serves_tls() && authorities.is_empty() {
            return Err(Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ca_certificate",
                "no CA certificate is published now",
            ));
        }
        for (jwk, der) in authorities {
            // The X.509 authority as SPIFFE bundles carry it: no kid or alg.
            let mut k = jwk.to_json(Some("x509-svid"));
            if let Some(o) = k.as_object_mut() {
                o.remove("kid");
                o.remove("alg");
                o.insert("x5c".into(), json!([STANDARD.encode(&der)]));
            }
            keys.push(k);
        }
        // Every key a relying party must accept, by purpose: the signing one and those published
        // beside it (rotation).
        for purpose in ["issuer", "ear"] {
            for jwk in self.verification_keys(purpose) {
                keys.push(jwk.to_json(Some(purpose)));
            }
        }
        // The signing service's keys, by name (several of one name during its rotation).
        let t = now()?;
        for k in &self.config.signing_keys {
            let published = self
                .scheduled_keys(&format!("signing:{}", k.name), t)
                .unwrap_or_else(|| {
                    vec![EcJwk::from_verifying_key(
                        k.key.public_key().verifying_key(),
                    )]
                });
            for key in published {
                let mut jwk = key.to_json(Some("signing"));
                if let Some(o) = jwk.as_object_mut() {
                    o.insert("name".into(), json!(k.name));
                    o.insert("form".into(), json!(k.form.as_str()));
                }
                keys.push(jwk);
            }
        }
        let (policies, generation) = self.policy_versions()?;
        let log_keys = self.log.verifier_keys();
        if log_keys.is_empty() {
            // Never a version relying parties could not verify a checkpoint with.
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "checkpoint_signing",
                "no checkpoint key is published now",
            ));
        }
        Ok((
            json!({
                "keys": keys,
                "trust_domain": self.config.trust_domain,
                "policies": policies,
                "log": {
                    "origin": self.log.origin(),
                    "verifier_key": log_keys.first(),
                    "verifier_keys": log_keys,
                },
            }),
            generation,
        ))
    }

    /// The policy bundle in force (`{"hash"}`) and the previous one with the time until which
    /// writs issued under it may live (`{"hash", "until"}`), and the generation in force.
    pub(crate) fn policy_versions(&self) -> Result<(Vec<Value>, i64), Problem> {
        let rows = self.query(
            "SELECT generation, hash, bundle, loaded_at FROM policy_bundles
             ORDER BY generation DESC LIMIT 2",
            &[],
        )?;
        let mut out = Vec::new();
        let mut generation = 0;
        let mut replaced_at: Option<i64> = None;
        for r in &rows {
            let hash = r.get(1).and_then(Db::text).unwrap_or("").to_string();
            let loaded_at = r.get(3).and_then(Db::int).unwrap_or(0);
            match replaced_at {
                None => {
                    generation = r.first().and_then(Db::int).unwrap_or(0);
                    out.push(json!({"hash": hash}));
                }
                Some(at) => {
                    // A previous bundle that no longer loads gets no grace (closed, not open).
                    let text = r.get(2).and_then(Db::text).unwrap_or("");
                    let lifetime = LoadedPolicy::from_json(text.as_bytes())
                        .map(|p| p.bundle.max_writ_lifetime_s)
                        .unwrap_or(0);
                    out.push(json!({"hash": hash, "until": at.saturating_add(lifetime)}));
                }
            }
            replaced_at = Some(loaded_at);
        }
        Ok((out, generation))
    }

    /// Publishes the current content as a new version if it differs from the latest one: stored
    /// with the next sequence and recorded (`bundle`) in one transaction that re-checks that the
    /// latest version and the policy bundle in force are still those it was computed from.
    /// Called at start and when a policy bundle loads.
    pub fn publish_bundle(&self) -> Result<i64, Problem> {
        let _one = self.publishing.0.lock().map_err(|_| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "bundle",
                "bundle publication lock poisoned",
            )
        })?;
        let (latest_sequence, latest_digest) = match self.latest_bundle()? {
            Some((sequence, d, _)) => (sequence, d),
            None => (0, String::new()),
        };
        let (content, generation) = self.bundle_content()?;
        // A bundle accepting no policy bundle is not one a relying party could use: none is
        // published.
        if content
            .get("policies")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            return Err(no_policy());
        }
        let canonical = writ_attestation::jcs::canonical(&content).map_err(|e| {
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "bundle", e.to_string())
        })?;
        let hash = digest(canonical.as_bytes());
        if hash == latest_digest {
            return Ok(latest_sequence);
        }
        let effect = vec![Op {
            sql: "INSERT INTO trust_bundles (sequence, digest, content, published_at)
                  SELECT CAST($1 AS BIGINT) + 1, $2, $3, $4
                  WHERE (SELECT COALESCE(MAX(sequence), 0) FROM trust_bundles) = $1
                    AND (SELECT COALESCE(MAX(generation), 0) FROM policy_bundles) = $5",
            params: vec![
                latest_sequence.into(),
                hash.clone().into(),
                canonical.into(),
                now()?.into(),
                generation.into(),
            ],
            must_affect: Some((
                "bundle_changed",
                "the trust bundle or the policy bundle changed while it was published",
            )),
        }];
        let current = content
            .get("policies")
            .and_then(|p| p.get(0))
            .and_then(|p| p.get("hash"))
            .and_then(Value::as_str);
        match self.append_decision(
            Kind::Bundle,
            &self.appliance_id(),
            &[],
            &[("bundle", hash)],
            current,
            effect,
        )? {
            Ok(_) => Ok(latest_sequence + 1),
            Err(StoreError::Conflict { code, detail }) => {
                Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, detail))
            }
            Err(e) => Err(super::store_problem(e)),
        }
    }

    /// Whether the latest published version lists a key of one of these kids (JWK
    /// thumbprints; the log's checkpoint verifier keys count by their key's thumbprint).
    pub(crate) fn latest_bundle_lists(&self, kids: &[String]) -> bool {
        let Some((_, _, content)) = self.latest_bundle().ok().flatten() else {
            return false;
        };
        let jwt = content
            .get("keys")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|k| match k.get("kid").and_then(Value::as_str) {
                Some(kid) => Some(kid.to_string()),
                // An X.509 authority carries no kid: its key's thumbprint.
                None => {
                    let m = |n: &str| k.get(n).and_then(Value::as_str).unwrap_or("");
                    EcJwk::from_members(m("kty"), m("crv"), m("x"), m("y"))
                        .ok()
                        .map(|j| j.thumbprint())
                }
            });
        let log = content
            .pointer("/log/verifier_keys")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|k| {
                let v = writ_attestation::log::note::NoteVerifier::parse(k.as_str()?).ok()?;
                let (x, y) = v.point();
                EcJwk::from_coordinates(x, y).ok().map(|j| j.thumbprint())
            });
        jwt.chain(log).any(|kid| kids.contains(&kid))
    }

    /// The latest published version: sequence, digest, content.
    fn latest_bundle(&self) -> Result<Option<(i64, String, Value)>, Problem> {
        let rows = self.query(
            "SELECT sequence, digest, content FROM trust_bundles ORDER BY sequence DESC LIMIT 1",
            &[],
        )?;
        Ok(rows.first().map(|r| {
            (
                r.first().and_then(Db::int).unwrap_or(0),
                r.get(1).and_then(Db::text).unwrap_or("").to_string(),
                serde_json::from_str(r.get(2).and_then(Db::text).unwrap_or(""))
                    .unwrap_or(Value::Null),
            )
        }))
    }

    /// The trust bundle to serve: the latest published version, valid from now for
    /// [`BUNDLE_LIFETIME_S`], its previous policy bundle listed only until its deadline. Without
    /// an issuer key or a published version (no policy bundle loaded yet) there is nothing a
    /// relying party could accept: 503.
    pub fn trust_bundle(&self) -> Result<Value, Problem> {
        if now().is_ok_and(|t| self.signing_key("issuer", t).is_none()) {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "issuer_signing",
                "no issuer key is configured (keys.issuer): there is no trust bundle",
            ));
        }
        let Some((sequence, _, content)) = self.latest_bundle()? else {
            return Err(no_policy());
        };
        let t = now()?;
        let policies: Vec<Value> = content
            .get("policies")
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .filter(|p| p.get("until").and_then(Value::as_i64).is_none_or(|u| t < u))
                    .filter_map(|p| p.get("hash").cloned())
                    .collect()
            })
            .unwrap_or_default();
        if policies.is_empty() {
            return Err(Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_corrupt",
                "the latest trust bundle version accepts no policy bundle",
            ));
        }
        Ok(json!({
            "keys": content.get("keys").cloned().unwrap_or(json!([])),
            "spiffe_sequence": sequence,
            "spiffe_refresh_hint": REFRESH_HINT_S,
            "writ": {
                "trust_domain": self.config.trust_domain,
                "issued_at": t,
                "expires_at": t + BUNDLE_LIFETIME_S,
                "policy_bundles": policies,
                "log": content.get("log").cloned().unwrap_or(json!({})),
            },
        }))
    }
}

fn no_policy() -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_policy",
        "no policy bundle is loaded (writ admin load-policy): there is no trust bundle",
    )
}
