//! The trust bundle (interfaces.md, "The trust bundle"): what relying parties trust writ by.
//!
//! `GET /v1/bundle` answers a SPIFFE bundle (a JWKS whose keys carry `use`: the `ca` key's CA
//! certificate as `x509-svid` with its `x5c`, the `issuer` and `ear` keys as JWT keys with their
//! `kid`) plus a `writ` member (trust domain, issued-at, expires-at, the accepted policy bundle
//! hashes, the log's origin and checkpoint verifier key). What it publishes (everything but the
//! validity window) is a version: a change of any part (a key, the CA, a policy bundle loaded, the
//! log's key) makes a new version with the next `spiffe_sequence`, stored and recorded as a
//! `bundle` decision record in one transaction before it is served. Versions are published when
//! a policy bundle loads and whenever the bundle is asked for.
//!
//! The policy bundle hashes: the one in force and, while writs issued under it can still be
//! alive (its `max_writ_lifetime_s` after the next one loaded), the previous one.

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
    /// What the bundle publishes now (no validity window): its canonical JSON.
    fn bundle_content(&self) -> Result<Value, Problem> {
        let mut keys = Vec::new();
        if let Some(pem) = self.config.ca_certificate_pem.as_deref() {
            let der = super::x509_der(pem).map_err(|e| {
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "ca_certificate", e)
            })?;
            let ca = self.config.ca_key.as_ref().ok_or_else(|| {
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "ca_certificate",
                    "a CA certificate without its ca key",
                )
            })?;
            // The X.509 authority as SPIFFE bundles carry it: no kid or alg.
            let mut k = EcJwk::from_verifying_key(ca.public_key().verifying_key())
                .to_json(Some("x509-svid"));
            if let Some(o) = k.as_object_mut() {
                o.remove("kid");
                o.remove("alg");
                o.insert("x5c".into(), json!([STANDARD.encode(&der)]));
            }
            keys.push(k);
        }
        for (purpose, key) in [
            ("issuer", &self.config.issuer_key),
            ("ear", &self.config.ear_key),
        ] {
            if let Some(key) = key {
                keys.push(
                    EcJwk::from_verifying_key(key.public_key().verifying_key())
                        .to_json(Some(purpose)),
                );
            }
        }
        Ok(json!({
            "keys": keys,
            "trust_domain": self.config.trust_domain,
            "policy_bundles": self.accepted_policy_bundles()?,
            "log": {"origin": self.log.origin(), "verifier_key": self.log.verifier_key()},
        }))
    }

    /// The policy bundle in force and, while writs issued under it may still be alive, the one
    /// before it.
    fn accepted_policy_bundles(&self) -> Result<Vec<String>, Problem> {
        let rows = self.query(
            "SELECT hash, bundle, loaded_at FROM policy_bundles ORDER BY generation DESC LIMIT 2",
            &[],
        )?;
        let t = now()?;
        let mut out = Vec::new();
        let mut replaced_at = None;
        for r in &rows {
            let hash = r.first().and_then(Db::text).unwrap_or("").to_string();
            let loaded_at = r.get(2).and_then(Db::int).unwrap_or(0);
            match replaced_at {
                None => out.push(hash),
                Some(at) => {
                    let text = r.get(1).and_then(Db::text).unwrap_or("");
                    let lifetime = LoadedPolicy::from_json(text.as_bytes())
                        .map(|p| p.bundle.max_writ_lifetime_s)
                        .unwrap_or(0);
                    if t < at + lifetime {
                        out.push(hash);
                    }
                }
            }
            replaced_at = Some(loaded_at);
        }
        Ok(out)
    }

    /// Publishes the current content as a new version if it differs from the latest one: stored
    /// with the next sequence and recorded (`bundle`) in one transaction. Returns the latest
    /// version's sequence and content.
    pub(crate) fn publish_bundle(&self) -> Result<(i64, Value), Problem> {
        let content = self.bundle_content()?;
        // A bundle accepting no policy bundle is not one a relying party could use: none is
        // published.
        if content
            .get("policy_bundles")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_policy",
                "no policy bundle is loaded (writ admin load-policy): there is no trust bundle",
            ));
        }
        let canonical = writ_attestation::jcs::canonical(&content).map_err(|e| {
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "bundle", e.to_string())
        })?;
        let hash = digest(canonical.as_bytes());
        let _one = self.publishing.0.lock().map_err(|_| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "bundle",
                "bundle publication lock poisoned",
            )
        })?;
        let latest = || {
            self.query(
                "SELECT sequence, digest FROM trust_bundles ORDER BY sequence DESC LIMIT 1",
                &[],
            )
            .map(|rows| {
                rows.first().map(|r| {
                    (
                        r.first().and_then(Db::int).unwrap_or(0),
                        r.get(1).and_then(Db::text).unwrap_or("").to_string(),
                    )
                })
            })
        };
        if let Some((sequence, d)) = latest()?
            && d == hash
        {
            return Ok((sequence, content));
        }
        let effect = vec![Op {
            sql: "INSERT INTO trust_bundles (sequence, digest, content, published_at)
                  SELECT COALESCE(MAX(sequence), 0) + 1, $1, $2, $3 FROM trust_bundles",
            params: vec![hash.clone().into(), canonical.into(), now()?.into()],
            must_affect: None,
        }];
        match self.append_decision(
            Kind::Bundle,
            &self.appliance_id(),
            &[],
            &[("bundle", hash.clone())],
            content
                .get("policy_bundles")
                .and_then(|p| p.get(0))
                .and_then(Value::as_str),
            effect,
        )? {
            Ok(_) => {}
            // Another replica published it meanwhile: its version stands.
            Err(StoreError::Busy(_)) => {}
            Err(e) => return Err(super::store_problem(e)),
        }
        match latest()? {
            Some((sequence, d)) if d == hash => Ok((sequence, content)),
            _ => Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "bundle_changed",
                "the trust bundle changed while it was published; ask again",
            )),
        }
    }

    /// The trust bundle to serve: the latest version (published first if the content changed),
    /// valid from now for [`BUNDLE_LIFETIME_S`]. Without an issuer key or a policy bundle there
    /// is nothing a relying party could accept: 503.
    pub fn trust_bundle(&self) -> Result<Value, Problem> {
        if self.config.issuer_key.is_none() {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "issuer_signing",
                "no issuer key is configured (keys.issuer): there is no trust bundle",
            ));
        }
        let (sequence, content) = self.publish_bundle()?;
        let policies = content.get("policy_bundles").cloned().unwrap_or(json!([]));
        let t = now()?;
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
