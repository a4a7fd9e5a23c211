//! Decision records, the decision log's leaves (interfaces.md): RFC 8785 canonical JSON
//! `{"v":1,"kind",...,"time","subject","decision","reasons","digests","policy_bundle_hash",
//! "parent"}`. Digests only: no evidence, secrets or tokens. `parent` is the `sha256:` leaf hash
//! of the record this one descends from (a child writ's issue record names its parent's), so an
//! auditor can follow lineage through the log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::EvidenceError;
use crate::jcs;
use crate::log::merkle::{Hash, leaf_hash};

/// The record format version.
pub const RECORD_VERSION: u32 = 1;
/// Largest record accepted (a tile entry holds at most 65,535 bytes).
pub const MAX_RECORD: usize = 65_535;

/// What was decided about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A runtime enrolled.
    Enroll,
    /// A runtime attested.
    Attest,
    /// A writ was issued (or refused).
    Issue,
    /// An X.509-SVID was issued.
    Svid,
    /// The signing service signed.
    Sign,
    /// An administrative action.
    Admin,
    /// A trust bundle version.
    Bundle,
    /// A policy bundle was loaded.
    Policy,
    /// A gateway decision.
    Gate,
    /// An execution's outcome.
    Outcome,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
}

/// A decision record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRecord {
    /// The format version ([`RECORD_VERSION`]).
    pub v: u32,
    /// What was decided about.
    pub kind: Kind,
    /// When (seconds since the Unix epoch).
    pub time: i64,
    /// Who: a SPIFFE ID, or the key name for the signing service.
    pub subject: String,
    /// The decision.
    pub decision: Decision,
    /// Error codes of the checks that failed (empty for an allow).
    pub reasons: Vec<String>,
    /// Named digests (`writ`, `ear`, `evidence`, `request`, ...), each `sha256:<hex>`.
    pub digests: BTreeMap<String, String>,
    /// The policy bundle the decision was made under.
    pub policy_bundle_hash: Option<String>,
    /// The `sha256:` leaf hash of the parent record.
    pub parent: Option<String>,
}

fn bad(why: impl Into<String>) -> EvidenceError {
    EvidenceError::Malformed(format!("decision record: {}", why.into()))
}

fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

fn is_code(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

impl DecisionRecord {
    /// Checks the record's own rules: version, digests as `sha256:<lowercase hex>`, reasons as
    /// error codes, a deny with at least one reason and an allow with none.
    pub fn check(&self) -> Result<(), EvidenceError> {
        if self.v != RECORD_VERSION {
            return Err(bad(format!("version {}", self.v)));
        }
        if self.subject.is_empty() {
            return Err(bad("empty subject"));
        }
        if let Some((k, v)) = self
            .digests
            .iter()
            .find(|(k, v)| !is_code(k) || !is_digest(v))
        {
            return Err(bad(format!("digest {k:?} = {v:?}")));
        }
        for d in [&self.policy_bundle_hash, &self.parent]
            .into_iter()
            .flatten()
        {
            if !is_digest(d) {
                return Err(bad(format!("{d:?} is not a sha256: digest")));
            }
        }
        if let Some(r) = self.reasons.iter().find(|r| !is_code(r)) {
            return Err(bad(format!("reason {r:?} is not an error code")));
        }
        match (self.decision, self.reasons.is_empty()) {
            (Decision::Deny, true) => Err(bad("a deny names at least one reason")),
            (Decision::Allow, false) => Err(bad("an allow carries no reasons")),
            _ => Ok(()),
        }
    }

    /// The leaf bytes: canonical JSON.
    pub fn to_leaf(&self) -> Result<Vec<u8>, EvidenceError> {
        self.check()?;
        let v = serde_json::to_value(self).map_err(|e| bad(e.to_string()))?;
        let bytes = jcs::canonical(&v)?.into_bytes();
        if bytes.len() > MAX_RECORD {
            return Err(bad(format!("{} bytes", bytes.len())));
        }
        Ok(bytes)
    }

    /// Parses leaf bytes, which must be canonical and pass [`DecisionRecord::check`].
    pub fn from_leaf(bytes: &[u8]) -> Result<Self, EvidenceError> {
        if bytes.len() > MAX_RECORD {
            return Err(bad(format!("{} bytes", bytes.len())));
        }
        let v = jcs::parse_canonical(bytes)?;
        let r: DecisionRecord = serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
        r.check()?;
        Ok(r)
    }

    /// The parent's leaf hash.
    pub fn parent_hash(&self) -> Option<Hash> {
        let hex = self.parent.as_deref()?.strip_prefix("sha256:")?;
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
        }
        Some(out)
    }
}

/// `sha256:` + hex of a leaf hash, as `parent` names it.
pub fn leaf_ref(leaf: &[u8]) -> String {
    let h = leaf_hash(leaf);
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}
