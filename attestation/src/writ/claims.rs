//! The writ's claims (interfaces.md, "The two forms of writ"), typed: unknown claims, missing
//! claims, strings where numbers belong, fractions and out-of-range numbers are refused
//! (`claims`). Exactly one of `act` (an execution writ) and `scope` (a delegation writ).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Refusal;

/// `cnf`: the holder key's RFC 7638 thumbprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cnf {
    /// base64url SHA-256 thumbprint.
    pub jkt: String,
}

/// `att`: the attestation the writ was issued on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Att {
    /// The EAR status (`affirming`).
    pub status: String,
    /// `sha256:` of the signed EAR.
    pub ear: String,
    /// `sha256:` of the evidence.
    pub evidence: String,
    /// The attestation's nonce, as `sha256:` of its bytes (the appliance keeps no nonce).
    pub nonce: String,
    /// The policy bundle hash the decision was made under.
    pub policy: String,
}

/// `lin`: lineage. A root writ has no parent, its own digest as root, depth 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lin {
    /// `sha256:` of the parent's compact writ.
    pub parent: Option<String>,
    /// `sha256:` of the root's compact writ (none for a root).
    pub root: Option<String>,
    /// Depth below the root.
    pub depth: u32,
}

/// `act`: one exact request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Act {
    /// The action's name (e.g. `exec`, `http`).
    pub name: String,
    /// The resource it acts on.
    pub resource: String,
    /// The request digest (`sha256:` of the canonical request object).
    pub req: String,
}

/// `scope`: what a delegation writ may hand down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Action names.
    pub actions: Vec<String>,
    /// Resource prefixes (matched by whole path segments).
    pub resources: Vec<String>,
    /// Audiences children may name.
    pub audiences: Vec<String>,
    /// How many generations may follow.
    pub max_depth: u32,
}

/// A writ's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WritClaims {
    /// Issuer (the appliance's SPIFFE ID).
    pub iss: String,
    /// Subject (the holder runtime's SPIFFE ID).
    pub sub: String,
    /// Audience (one gateway deployment; the appliance for delegation writs).
    pub aud: String,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expires.
    pub exp: i64,
    /// 128-bit random ID, base64url.
    pub jti: String,
    /// Holder key.
    pub cnf: Cnf,
    /// Attestation.
    pub att: Att,
    /// Lineage.
    pub lin: Lin,
    /// The exact request (execution writs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Act>,
    /// The scope (delegation writs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
}

/// The form of a writ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form<'a> {
    /// Runs one exact request.
    Execution(&'a Act),
    /// Hands down authority to children; runs nothing.
    Delegation(&'a Scope),
}

fn claims(why: impl Into<String>) -> Refusal {
    Refusal::new("claims", why)
}

/// Whether `s` is `sha256:` and 64 lowercase hex digits.
pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Most seconds a writ may live.
pub const MAX_LIFETIME: i64 = 24 * 3600;

impl WritClaims {
    /// Type-checks a verified payload and the rules every writ obeys.
    pub fn from_payload(payload: Map<String, Value>) -> Result<Self, Refusal> {
        let c: WritClaims =
            serde_json::from_value(Value::Object(payload)).map_err(|e| claims(e.to_string()))?;
        c.check()?;
        Ok(c)
    }

    /// The rules: one form; a 128-bit `jti`; digests well formed; `iat <= nbf < exp`, a bounded
    /// lifetime; lineage coherent.
    pub fn check(&self) -> Result<(), Refusal> {
        match (&self.act, &self.scope) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => return Err(claims("exactly one of act and scope")),
        }
        let jti = super::jws::b64(&self.jti, "jti").map_err(|e| claims(e.detail))?;
        if jti.len() != 16 {
            return Err(claims("jti is not 128 bits"));
        }
        if self.iss.is_empty() || self.sub.is_empty() || self.aud.is_empty() {
            return Err(claims("empty iss, sub or aud"));
        }
        if !(self.iat <= self.nbf && self.nbf < self.exp) || self.iat < 0 {
            return Err(claims("iat <= nbf < exp does not hold"));
        }
        if self.exp - self.iat > MAX_LIFETIME {
            return Err(claims(format!(
                "a lifetime of {} s (at most {MAX_LIFETIME})",
                self.exp - self.iat
            )));
        }
        for d in [&self.att.ear, &self.att.evidence, &self.att.policy] {
            if !is_digest(d) {
                return Err(claims(format!("att digest {d:?}")));
            }
        }
        if let Some(a) = &self.act
            && !is_digest(&a.req)
        {
            return Err(claims("act.req is not a sha256: digest"));
        }
        match (&self.lin.parent, &self.lin.root, self.lin.depth) {
            (None, None, 0) => {}
            (Some(p), Some(r), d) if d > 0 && is_digest(p) && is_digest(r) => {}
            _ => return Err(claims("lin is not a root (no parent, depth 0) or a child")),
        }
        Ok(())
    }

    /// The writ's form.
    pub fn form(&self) -> Form<'_> {
        match (&self.act, &self.scope) {
            (Some(a), _) => Form::Execution(a),
            (None, Some(s)) => Form::Delegation(s),
            // check() refuses the other case; an execution form is never invented.
            (None, None) => Form::Delegation(&EMPTY_SCOPE),
        }
    }

    /// The time window at `now` with `skew` seconds of tolerance.
    pub fn check_time(&self, now: i64, skew: i64) -> Result<(), Refusal> {
        if now >= self.exp.saturating_add(skew) {
            return Err(Refusal::new(
                "expired",
                format!("expired at {} (now {now})", self.exp),
            ));
        }
        if now.saturating_add(skew) < self.nbf || now.saturating_add(skew) < self.iat {
            return Err(Refusal::new(
                "not_yet_valid",
                format!("valid from {} (now {now})", self.nbf),
            ));
        }
        Ok(())
    }
}

static EMPTY_SCOPE: Scope = Scope {
    actions: Vec::new(),
    resources: Vec::new(),
    audiences: Vec::new(),
    max_depth: 0,
};

/// Whether `resource` is within `prefix`, by whole `/`-separated segments (`db/prod` covers
/// `db/prod` and `db/prod/x`, never `db/production`).
pub fn covers(prefix: &str, resource: &str) -> bool {
    let p: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
    let r: Vec<&str> = resource.split('/').filter(|s| !s.is_empty()).collect();
    !p.is_empty()
        && !resource.split('/').any(|s| s == ".." || s == ".")
        && r.len() >= p.len()
        && p.iter().zip(&r).all(|(a, b)| a == b)
}

/// The narrowing rules a child obeys against its parent (delegation) writ, whose compact form
/// hashes to `parent_digest`: the child's actions, resources and audience within the parent's
/// scope, its lifetime within the parent's, its depth one more and within `max_depth`, its
/// lineage naming the parent and the parent's root. Enforced at issuance.
pub fn check_child(
    parent: &WritClaims,
    parent_digest: &str,
    child: &WritClaims,
) -> Result<(), Refusal> {
    let narrow = |why: String| Refusal::new("lineage", why);
    let Form::Delegation(scope) = parent.form() else {
        return Err(narrow("the parent is not a delegation writ".into()));
    };
    let depth = parent.lin.depth + 1;
    if child.lin.depth != depth || depth > scope.max_depth {
        return Err(narrow(format!(
            "depth {} (parent {} allows up to {})",
            child.lin.depth, parent.lin.depth, scope.max_depth
        )));
    }
    if child.lin.parent.as_deref() != Some(parent_digest) {
        return Err(narrow("lin.parent is not the parent writ".into()));
    }
    let root = parent.lin.root.as_deref().unwrap_or(parent_digest);
    if child.lin.root.as_deref() != Some(root) {
        return Err(narrow("lin.root is not the parent's root".into()));
    }
    if child.exp > parent.exp || child.nbf < parent.nbf {
        return Err(narrow("the child outlives its parent".into()));
    }
    match child.form() {
        Form::Execution(a) => {
            if !scope.audiences.contains(&child.aud) {
                return Err(narrow(format!(
                    "audience {:?} is not in the parent's scope",
                    child.aud
                )));
            }
            if !scope.actions.contains(&a.name) {
                return Err(narrow(format!(
                    "action {:?} is not in the parent's scope",
                    a.name
                )));
            }
            if !scope.resources.iter().any(|p| covers(p, &a.resource)) {
                return Err(narrow(format!(
                    "resource {:?} is outside the parent's scope",
                    a.resource
                )));
            }
        }
        Form::Delegation(s) => {
            // A delegation writ is addressed to the appliance, like its parent.
            if child.aud != parent.aud {
                return Err(narrow(format!(
                    "a delegation writ's audience {:?} is not its parent's",
                    child.aud
                )));
            }
            if let Some(x) = s.actions.iter().find(|x| !scope.actions.contains(x)) {
                return Err(narrow(format!("action {x:?} is not in the parent's scope")));
            }
            if let Some(x) = s
                .resources
                .iter()
                .find(|x| !scope.resources.iter().any(|p| covers(p, x)))
            {
                return Err(narrow(format!(
                    "resource {x:?} is outside the parent's scope"
                )));
            }
            if let Some(x) = s.audiences.iter().find(|x| !scope.audiences.contains(x)) {
                return Err(narrow(format!(
                    "audience {x:?} is not in the parent's scope"
                )));
            }
            if s.max_depth > scope.max_depth {
                return Err(narrow("max_depth wider than the parent's".into()));
            }
        }
    }
    Ok(())
}
