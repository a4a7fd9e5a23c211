//! The policy bundle (docs/issuance.md): Cedar policies with the schema they are validated
//! against, and the issuance limits that go with them. A bundle is loaded whole by an admin; it
//! is checked completely first (a bundle that does not parse or validate leaves the one in force),
//! and its hash (SHA-256 of its RFC 8785 canonical JSON) goes into every writ and every decision
//! record made under it.
//!
//! What writ gives Cedar for a writ request:
//! * principal `Runtime::"<spiffe id>"` with attributes `spiffe_id`, `name`, `status` (the EAR
//!   status), `configuration`, `executables`, `hardware`, `instance_identity` (the AR4SI trust
//!   vector's values), `manufacturer` (the TPM vendor from the EK certificate, or "");
//! * action `Action::"<action>"` (the request's action name);
//! * resource `Resource::"<resource>"`;
//! * context `audience`, `req` (the request digest; "" when delegating), `depth` (0 for a root
//!   writ), `time` (seconds), `delegation` (whether this is one combination of a delegation
//!   writ's scope), `parent` (the parent writ's subject, "" for a root writ).
//!
//! For a signing request (docs/signing.md): the same principal, action `Action::"sign"`,
//! resource `SigningKey::"<key name>"`, context `payload_type`, `size`, `subjects` (a set of
//! `{name, digest}`; a raw digest is one subject named ""), `time`.
//!
//! A delegation writ is allowed only if policy allows every (action, resource, audience) of its
//! scope, each decided as above with `delegation` true.
//!
//! writ declares these entity types and the context type itself ([`WRIT_SCHEMA`]); the bundle's
//! schema declares the actions over them (an example: deploy/policy/example.json). A request
//! whose data does not fit the schema is refused (`policy_input`), never evaluated loosely.

use std::collections::BTreeMap;
use std::str::FromStr;

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The bundle format version.
pub const BUNDLE_VERSION: u32 = 1;

/// What writ declares itself, before the bundle's schema: the entities and the context it
/// supplies, exactly (no parents, no optional attributes), so that no policy can rely on data
/// writ never gives (a rule on a missing parent or attribute would silently never apply). A
/// bundle declares its actions over these; declaring these types again is an error.
pub const WRIT_SCHEMA: &str =
    "entity Runtime = { spiffe_id: String, name: String, status: String, \
configuration: Long, executables: Long, hardware: Long, instance_identity: Long, \
manufacturer: String };
entity Resource;
type WritContext = { audience: String, req: String, depth: Long, time: Long, delegation: Bool, \
parent: String };
entity SigningKey;
type SignContext = { payload_type: String, size: Long, \
subjects: Set<{ name: String, digest: String }>, time: Long };
";
/// Largest bundle accepted, bytes.
pub const MAX_BUNDLE: usize = 256 * 1024;

/// A policy bundle as an admin writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyBundle {
    /// The format version ([`BUNDLE_VERSION`]).
    pub writ_policy_bundle: u32,
    /// The Cedar schema of the actions (human-readable Cedar schema syntax), over writ's own
    /// declarations ([`WRIT_SCHEMA`]).
    pub schema: String,
    /// The Cedar policies. An `@id("...")` annotation names a policy in refusals.
    pub policies: String,
    /// The oldest appraisal a writ is issued on, seconds.
    #[serde(default = "default_appraisal_age")]
    pub max_appraisal_age_s: i64,
    /// A writ's lifetime when the request names none, seconds.
    #[serde(default = "default_lifetime")]
    pub writ_lifetime_s: i64,
    /// The longest lifetime a request may ask for, seconds.
    #[serde(default = "default_max_lifetime")]
    pub max_writ_lifetime_s: i64,
    /// Writs (and refusals) per runtime per minute.
    #[serde(default = "default_rate")]
    pub rate_per_minute: u32,
    /// The deepest lineage a delegation writ may allow (its `max_depth`); default
    /// [`DEFAULT_MAX_DELEGATION_DEPTH`]: delegation is off until a bundle turns it on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delegation_depth: Option<u32>,
    /// An X.509-SVID's lifetime, seconds (60 to 86,400; default
    /// [`DEFAULT_SVID_LIFETIME_S`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub svid_lifetime_s: Option<i64>,
    /// Reference profiles by name (docs/reference-profiles.md), loaded with the bundle in its
    /// transaction: each replaces the profile of that name (others stay as they are).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub profiles: BTreeMap<String, Value>,
    /// The signing service's limits (docs/signing.md); defaults when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<SigningLimits>,
}

/// The signing service's limits, from the policy bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningLimits {
    /// Largest payload signed (an envelope's Statement), bytes (256 to 65,536; default 16,384).
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: i64,
    /// Most subjects of one Statement (1 to 1,024; default 64).
    #[serde(default = "default_max_subjects")]
    pub max_subjects: i64,
    /// Signatures (and refused signing requests) per runtime per minute (default 600).
    #[serde(default = "default_rate")]
    pub rate_per_minute: u32,
}

impl Default for SigningLimits {
    fn default() -> Self {
        SigningLimits {
            max_payload_bytes: default_max_payload(),
            max_subjects: default_max_subjects(),
            rate_per_minute: default_rate(),
        }
    }
}

fn default_max_payload() -> i64 {
    16 * 1024
}
fn default_max_subjects() -> i64 {
    64
}

/// Most reference profiles in one bundle.
pub const MAX_BUNDLE_PROFILES: usize = 64;

/// An X.509-SVID's lifetime when the bundle names none, seconds.
pub const DEFAULT_SVID_LIFETIME_S: i64 = 3600;

/// The deepest lineage when the bundle names none: no delegation writs.
pub const DEFAULT_MAX_DELEGATION_DEPTH: u32 = 0;
/// The most a bundle may allow.
pub const MOST_DELEGATION_DEPTH: u32 = 16;

impl PolicyBundle {
    /// An X.509-SVID's lifetime, seconds.
    pub fn svid_lifetime_s(&self) -> i64 {
        self.svid_lifetime_s.unwrap_or(DEFAULT_SVID_LIFETIME_S)
    }

    /// The signing service's limits.
    pub fn signing(&self) -> SigningLimits {
        self.signing.unwrap_or_default()
    }

    /// The deepest lineage a delegation writ may allow.
    pub fn max_delegation_depth(&self) -> u32 {
        self.max_delegation_depth
            .unwrap_or(DEFAULT_MAX_DELEGATION_DEPTH)
    }
}

fn default_appraisal_age() -> i64 {
    300
}
fn default_lifetime() -> i64 {
    60
}
fn default_max_lifetime() -> i64 {
    300
}
fn default_rate() -> u32 {
    600
}

/// A bundle that parsed and validated.
#[derive(Debug, Clone)]
pub struct LoadedPolicy {
    /// The bundle.
    pub bundle: PolicyBundle,
    /// `sha256:<hex>` of its canonical JSON.
    pub hash: String,
    /// Its canonical JSON (what is stored).
    pub canonical: String,
    /// Its reference profiles: name, canonical JSON, digest (the profile's id).
    pub profiles: Vec<(String, String, String)>,
    schema: Schema,
    policies: PolicySet,
}

/// Why a bundle was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct BundleError(pub String);

/// What policy decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed, by these policies.
    Allow(Vec<String>),
    /// Denied: by these forbid policies, or (empty) because no permit policy applies.
    Deny(Vec<String>),
    /// The request's data does not fit the schema, or evaluation failed: refused.
    Error(String),
}

/// The principal's attributes.
#[derive(Debug, Clone)]
pub struct Principal<'a> {
    /// SPIFFE ID.
    pub spiffe_id: &'a str,
    /// Runtime name.
    pub name: &'a str,
    /// EAR status.
    pub status: &'a str,
    /// The AR4SI trust vector (`configuration`, `executables`, `hardware`,
    /// `instance-identity`).
    pub vector: &'a Value,
    /// TPM vendor, or "".
    pub manufacturer: &'a str,
}

/// The request's context.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    /// The writ's audience.
    pub audience: &'a str,
    /// The request digest.
    pub req: &'a str,
    /// Lineage depth.
    pub depth: i64,
    /// Now, seconds.
    pub time: i64,
    /// One combination of a delegation writ's scope.
    pub delegation: bool,
    /// The parent writ's subject ("" for a root writ).
    pub parent: &'a str,
}

/// A signing request's context.
#[derive(Debug, Clone, Copy)]
pub struct SignContext<'a> {
    /// The payload's type: `application/vnd.in-toto+json` for an envelope, `digest` for a raw
    /// signature.
    pub payload_type: &'a str,
    /// The payload's size, bytes (32 for a digest).
    pub size: i64,
    /// The subjects: (name, `sha256:<hex>` digest); a raw digest is one subject named "".
    pub subjects: &'a [(String, String)],
    /// Now, seconds.
    pub time: i64,
}

impl LoadedPolicy {
    /// Parses, checks and validates a bundle (its JSON bytes).
    pub fn from_json(bytes: &[u8]) -> Result<Self, BundleError> {
        if bytes.len() > MAX_BUNDLE {
            return Err(BundleError(format!(
                "the bundle is larger than {MAX_BUNDLE} bytes"
            )));
        }
        let value = writ_attestation::writ::json::parse(bytes)
            .map_err(|r| BundleError(format!("not JSON: {}", r.detail)))?;
        let bundle: PolicyBundle = serde_json::from_value(value)
            .map_err(|e| BundleError(format!("not a policy bundle: {e}")))?;
        Self::new(bundle)
    }

    /// Checks and validates a bundle.
    pub fn new(bundle: PolicyBundle) -> Result<Self, BundleError> {
        if bundle.writ_policy_bundle != BUNDLE_VERSION {
            return Err(BundleError(format!(
                "writ_policy_bundle {} (this writ reads {BUNDLE_VERSION})",
                bundle.writ_policy_bundle
            )));
        }
        let range = |what: &str, v: i64, lo: i64, hi: i64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(BundleError(format!("{what} = {v}: from {lo} to {hi}")))
            }
        };
        range("max_appraisal_age_s", bundle.max_appraisal_age_s, 1, 86_400)?;
        range("max_writ_lifetime_s", bundle.max_writ_lifetime_s, 1, 86_400)?;
        range(
            "writ_lifetime_s",
            bundle.writ_lifetime_s,
            1,
            bundle.max_writ_lifetime_s,
        )?;
        range("svid_lifetime_s", bundle.svid_lifetime_s(), 60, 86_400)?;
        range(
            "max_delegation_depth",
            i64::from(bundle.max_delegation_depth()),
            0,
            i64::from(MOST_DELEGATION_DEPTH),
        )?;
        range(
            "rate_per_minute",
            i64::from(bundle.rate_per_minute),
            1,
            1_000_000,
        )?;
        let signing = bundle.signing();
        range(
            "signing.max_payload_bytes",
            signing.max_payload_bytes,
            256,
            65_536,
        )?;
        range("signing.max_subjects", signing.max_subjects, 1, 1024)?;
        range(
            "signing.rate_per_minute",
            i64::from(signing.rate_per_minute),
            1,
            1_000_000,
        )?;
        let (schema, _warnings) =
            Schema::from_cedarschema_str(&format!("{WRIT_SCHEMA}{}", bundle.schema))
                .map_err(|e| BundleError(format!("schema: {e}")))?;
        let policies = PolicySet::from_str(&bundle.policies)
            .map_err(|e| BundleError(format!("policies: {e}")))?;
        if policies.policies().next().is_none() {
            return Err(BundleError(
                "no policies: nothing would ever be allowed".into(),
            ));
        }
        let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::default());
        if !result.validation_passed() {
            let errors: Vec<String> = result
                .validation_errors()
                .map(|e| e.to_string())
                .take(8)
                .collect();
            return Err(BundleError(format!(
                "the policies do not validate against the schema: {}",
                errors.join("; ")
            )));
        }
        if bundle.profiles.len() > MAX_BUNDLE_PROFILES {
            return Err(BundleError(format!(
                "{} profiles (at most {MAX_BUNDLE_PROFILES})",
                bundle.profiles.len()
            )));
        }
        let mut profiles = Vec::new();
        for (name, profile) in &bundle.profiles {
            if !crate::appliance::valid_name(name) {
                return Err(BundleError(format!(
                    "profile name {name:?}: 1 to 64 of a-z 0-9 - _ ."
                )));
            }
            let text = writ_attestation::jcs::canonical(profile)
                .map_err(|e| BundleError(format!("profile {name}: {e}")))?;
            let loaded = writ_attestation::appraisal::LoadedProfile::from_json(text.as_bytes())
                .map_err(|e| BundleError(format!("profile {name}: {e}")))?;
            profiles.push((name.clone(), text, loaded.id().to_string()));
        }
        let canonical = writ_attestation::jcs::canonical(
            &serde_json::to_value(&bundle).map_err(|e| BundleError(e.to_string()))?,
        )
        .map_err(|e| BundleError(e.to_string()))?;
        let hash = crate::appliance::digest(canonical.as_bytes());
        Ok(LoadedPolicy {
            bundle,
            hash,
            canonical,
            profiles,
            schema,
            policies,
        })
    }

    /// The name of a policy in refusals: its `@id` annotation, else Cedar's id.
    fn name_of(&self, id: &cedar_policy::PolicyId) -> String {
        self.policies
            .policy(id)
            .and_then(|p| p.annotation("id").map(str::to_string))
            .unwrap_or_else(|| id.to_string())
    }

    /// Decides a writ request.
    pub fn decide(
        &self,
        principal: &Principal<'_>,
        action: &str,
        resource: &str,
        ctx: &RequestContext<'_>,
    ) -> Verdict {
        let text = |t: &str| RestrictedExpression::new_string(t.to_string());
        self.decide_on(
            principal,
            action,
            ("Resource", resource),
            vec![
                ("audience".into(), text(ctx.audience)),
                ("req".into(), text(ctx.req)),
                ("depth".into(), RestrictedExpression::new_long(ctx.depth)),
                ("time".into(), RestrictedExpression::new_long(ctx.time)),
                (
                    "delegation".into(),
                    RestrictedExpression::new_bool(ctx.delegation),
                ),
                ("parent".into(), text(ctx.parent)),
            ],
        )
    }

    /// Decides a signing request: action `sign` on `SigningKey::"<key name>"`.
    pub fn decide_sign(
        &self,
        principal: &Principal<'_>,
        key: &str,
        ctx: &SignContext<'_>,
    ) -> Verdict {
        let text = |t: &str| RestrictedExpression::new_string(t.to_string());
        let subjects = ctx.subjects.iter().map(|(name, digest)| {
            RestrictedExpression::new_record([
                ("name".to_string(), text(name)),
                ("digest".to_string(), text(digest)),
            ])
        });
        let subjects = match subjects.collect::<Result<Vec<_>, _>>() {
            Ok(s) => RestrictedExpression::new_set(s),
            Err(e) => return Verdict::Error(e.to_string()),
        };
        self.decide_on(
            principal,
            "sign",
            ("SigningKey", key),
            vec![
                ("payload_type".into(), text(ctx.payload_type)),
                ("size".into(), RestrictedExpression::new_long(ctx.size)),
                ("subjects".into(), subjects),
                ("time".into(), RestrictedExpression::new_long(ctx.time)),
            ],
        )
    }

    fn decide_on(
        &self,
        principal: &Principal<'_>,
        action: &str,
        (resource_type, resource): (&str, &str),
        context: Vec<(String, RestrictedExpression)>,
    ) -> Verdict {
        // Built with Cedar's typed constructors (no JSON round trip), checked against the schema
        // as the entities and the request are made.
        let uid = |t: &str, id: &str| {
            EntityTypeName::from_str(t)
                .map(|t| EntityUid::from_type_name_and_id(t, EntityId::new(id)))
                .map_err(|e| e.to_string())
        };
        let built = (|| {
            let p = uid("Runtime", principal.spiffe_id)?;
            let a = uid("Action", action)?;
            let r = uid(resource_type, resource)?;
            let v = |k: &str| {
                RestrictedExpression::new_long(
                    principal.vector.get(k).and_then(Value::as_i64).unwrap_or(0),
                )
            };
            let text = |t: &str| RestrictedExpression::new_string(t.to_string());
            let runtime = Entity::new(
                p.clone(),
                HashMap::from([
                    ("spiffe_id".to_string(), text(principal.spiffe_id)),
                    ("name".to_string(), text(principal.name)),
                    ("status".to_string(), text(principal.status)),
                    ("configuration".to_string(), v("configuration")),
                    ("executables".to_string(), v("executables")),
                    ("hardware".to_string(), v("hardware")),
                    ("instance_identity".to_string(), v("instance-identity")),
                    ("manufacturer".to_string(), text(principal.manufacturer)),
                ]),
                HashSet::new(),
            )
            .map_err(|e| e.to_string())?;
            let entities = Entities::from_entities(
                [runtime, Entity::new_no_attrs(r.clone(), HashSet::new())],
                Some(&self.schema),
            )
            .map_err(|e| e.to_string())?;
            let context = Context::from_pairs(context).map_err(|e| e.to_string())?;
            let request =
                Request::new(p, a, r, context, Some(&self.schema)).map_err(|e| e.to_string())?;
            Ok::<_, String>((request, entities))
        })();
        let (request, entities) = match built {
            Ok(x) => x,
            Err(e) => return Verdict::Error(e),
        };
        let response = Authorizer::new().is_authorized(&request, &self.policies, &entities);
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        if !errors.is_empty() {
            // A policy that errs is skipped by Cedar; writ refuses instead of deciding without it.
            return Verdict::Error(errors.join("; "));
        }
        let mut rules: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| self.name_of(id))
            .collect();
        rules.sort();
        match response.decision() {
            Decision::Allow => Verdict::Allow(rules),
            Decision::Deny => Verdict::Deny(rules),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn example() -> LoadedPolicy {
        LoadedPolicy::from_json(include_bytes!("../deploy/policy/example.json")).unwrap()
    }

    fn runtime<'a>(status: &'a str, vector: &'a Value) -> Principal<'a> {
        Principal {
            spiffe_id: "spiffe://writ.dev/runtime/a",
            name: "a",
            status,
            vector,
            manufacturer: "",
        }
    }

    #[test]
    fn the_example_bundle_decides_signing_by_key_name_and_status() {
        let p = example();
        let vector =
            json!({"configuration": 2, "executables": 2, "hardware": 2, "instance-identity": 2});
        let subjects = [(String::new(), "sha256:".to_string() + &"ab".repeat(32))];
        let ctx = SignContext {
            payload_type: "digest",
            size: 32,
            subjects: &subjects,
            time: 1_800_000_000,
        };
        assert_eq!(
            p.decide_sign(&runtime("affirming", &vector), "release", &ctx),
            Verdict::Allow(vec!["affirmed-runtimes-sign-releases".into()])
        );
        // Another key, another status: no permit applies.
        assert_eq!(
            p.decide_sign(&runtime("affirming", &vector), "nightly", &ctx),
            Verdict::Deny(vec![])
        );
        assert_eq!(
            p.decide_sign(&runtime("warning", &vector), "release", &ctx),
            Verdict::Deny(vec![])
        );
        // A writ resource of the same name is not a signing key.
        let wctx = RequestContext {
            audience: "spiffe://writ.dev/gateway/tools",
            req: "",
            depth: 0,
            time: 1_800_000_000,
            delegation: false,
            parent: "",
        };
        assert!(matches!(
            p.decide(&runtime("affirming", &vector), "sign", "release", &wctx),
            Verdict::Error(_)
        ));
    }

    #[test]
    fn signing_limits_are_bounded() {
        let mut b = example().bundle;
        b.signing = Some(SigningLimits {
            max_payload_bytes: 100,
            ..SigningLimits::default()
        });
        assert!(LoadedPolicy::new(b.clone()).is_err());
        b.signing = Some(SigningLimits {
            max_subjects: 0,
            ..SigningLimits::default()
        });
        assert!(LoadedPolicy::new(b).is_err());
    }
}
