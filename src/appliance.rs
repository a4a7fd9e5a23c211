//! The appliance's runtime registry: enrollment (interfaces.md, "Identities and keys";
//! security.md, "Enrollment and attestation") and the admin operations around it.
//!
//! Enrollment has two steps. **Start**: the runtime sends its EK certificate, optionally its EK
//! public area (compared with the certificate, never used), its AK public area and an
//! authorization: a one-time join token, or nothing if an admin registered its EK certificate's
//! hash. The appliance identifies the runtime's name from that authorization, checks the EK
//! certificate chain against the configured manufacturer roots and the AK's attributes and
//! algorithms, and answers with a credential made in software for the EK's key (from the
//! certificate) and the AK's name. **Activate**: the runtime answers with the secret its TPM
//! released; the challenge is single use (a durable row, marked used in the same transaction
//! as the decision), bound to this enrollment and AK, short-lived; a wrong answer spends it and
//! reveals nothing. Only the SHA-256 of the secret is stored.
//!
//! Every decision about an identified runtime (start and activation, allowed or denied) is in
//! the decision log before the answer leaves, and each state change commits in the same
//! transaction as its record ([`DecisionLog::append_with`]). Requests refused before anyone is
//! identified (malformed, unknown token or EK, unknown enrollment, no admin credential) are not
//! logged one by one; they are answered with their code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use writ_attestation::EvidenceError;
use writ_attestation::crypto::default_provider;
use writ_attestation::evidence::{CheckedAk, EkTrustStore, make_credential};
use writ_attestation::log::record::{Decision, DecisionRecord, Kind, RECORD_VERSION};
use writ_attestation::tpm::public::Public;

use crate::decision_log::DecisionLog;
use crate::http::Problem;
use crate::metrics::Metrics;
use crate::store::{Op, StoreError, Value};

mod attest;
mod bundle;
mod gateway;
mod issue;
pub(crate) mod rotation;
mod sign;
mod svid;
pub use attest::{
    AttestAnswer, AttestRequest, Holder, MAX_ATTEST_BODY, MAX_EVENT_LOG, MAX_PENDING_NONCES,
    NonceAnswer, NonceRequest, Signed, required_selection,
};
pub use bundle::{BUNDLE_LIFETIME_S, REFRESH_HINT_S};
pub use gateway::{MAX_REPORT, MAX_REPORT_BODY, ReportEntry, Role};
#[cfg(test)]
pub(crate) use issue::RUNTIME_ROW;
pub use issue::{Issued, PROOF_SKEW, WritRequest, consent_nonce};
pub use rotation::{RotateRequest, Rotated};
pub use sign::{SignRequest, Signed as SignedArtifact};
pub use svid::{SvidIssued, SvidRequest};

/// How long a credential challenge can be answered, seconds.
pub const CHALLENGE_TTL: i64 = 300;
/// The longest a join token can live, seconds (7 days).
pub const MAX_JOIN_TOKEN_TTL: i64 = 7 * 86_400;
/// Unanswered, unexpired challenges one name may have.
pub const MAX_PENDING: i64 = 8;
/// Challenges are deleted this long after they expired.
const CHALLENGE_KEEP: i64 = 86_400;

/// What the appliance is configured with.
pub struct ApplianceConfig {
    /// The trust domain (`spiffe://<td>/...`).
    pub trust_domain: String,
    /// TPM manufacturer roots (and intermediates) that EK certificates must chain to.
    pub ek_roots: EkTrustStore,
    /// SHA-256 of the admin token, if admin operations by token are enabled.
    pub admin_token_sha256: Option<[u8; 32]>,
    /// The CA certificate (PEM) clients pin, when TLS is on.
    pub ca_certificate_pem: Option<String>,
    /// The `ear` key, which signs attestation results (none: attestation answers 503).
    pub ear_key: Option<Arc<dyn writ_hsm::CustodyKey>>,
    /// How long a nonce can be used, seconds.
    pub nonce_ttl: i64,
    /// How long an EAR token lives, seconds.
    pub ear_ttl: i64,
    /// The `issuer` key, which signs writs (none: issuance answers 503).
    pub issuer_key: Option<Arc<dyn writ_hsm::CustodyKey>>,
    /// The `ca` key, which signs certificates (none: plain HTTP, no certificates).
    pub ca_key: Option<Arc<dyn writ_hsm::CustodyKey>>,
    /// Keys published in the trust bundle beside the signing ones, by purpose (`issuer`, `ear`),
    /// that sign nothing: keys being rotated in or out. What they signed still verifies here (an
    /// EAR, a parent writ) while they are published.
    pub published_keys: Vec<(&'static str, Arc<dyn writ_hsm::CustodyKey>)>,
    /// The signing service's named keys (docs/signing.md), published in the trust bundle under
    /// `signing` with their names.
    pub signing_keys: Vec<SigningKey>,
    /// How keys named later (a rotation's) are opened.
    pub open_options: writ_hsm::OpenOptions,

    /// The origins (`scheme://host[:port]`) clients address this appliance at; a DPoP proof's
    /// `htu` must name one of them.
    pub origins: Vec<String>,
}

/// A named key of the signing service and the one form it signs.
#[derive(Debug)]
pub struct SigningKey {
    /// Its name (`/v1/sign/<name>`).
    pub name: String,
    /// What it signs.
    pub form: writ_attestation::writ::bundle::SigningForm,
    /// The key in custody.
    pub key: Arc<dyn writ_hsm::CustodyKey>,
}

impl std::fmt::Debug for ApplianceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplianceConfig")
            .field("trust_domain", &self.trust_domain)
            .field("admin_token", &self.admin_token_sha256.map(|_| "(set)"))
            .finish_non_exhaustive()
    }
}

/// The appliance: its log (and store), configuration and metrics.
pub struct Appliance {
    log: Arc<DecisionLog>,
    config: ApplianceConfig,
    metrics: Arc<Metrics>,
    profiles: attest::ProfileCache,
    policy: issue::PolicyCache,
    rates: issue::Rates,
    refusals: issue::Rates,
    /// SVID requests per runtime in the current minute (their own bucket: they do not use up
    /// the runtime's writ requests).
    svid_rates: issue::Rates,
    /// Signing requests per runtime in the current minute (their own bucket).
    sign_rates: issue::Rates,
    /// The issuer and ear keys' rotation schedule.
    schedule: rotation::Schedule,

    /// Publication of trust bundle versions, one at a time.
    publishing: bundle::Publishing,
}

impl std::fmt::Debug for Appliance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appliance")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Now, in seconds; a clock before 2020 or unreadable is a failure (nothing is decided on it).
fn now() -> Result<i64, Problem> {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .filter(|t| *t >= 1_577_836_800);
    t.ok_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "clock",
            "the appliance's clock is not usable",
        )
    })
}

/// The form of a bearer or join token that is compared: surrounding whitespace removed (files
/// end in newlines; editors add spaces).
pub fn normalize_token(t: &str) -> &str {
    t.trim()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `sha256:<hex>` of `bytes`, the form of every digest in records, writs and bundle hashes.
pub(crate) fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// Equality of two digests without an early exit.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random<const N: usize>() -> Result<[u8; N], Problem> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "rng",
            format!("the OS random number generator failed: {e}"),
        )
    })?;
    Ok(b)
}

fn malformed(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "malformed", detail)
}

fn b64(field: &str, v: &str) -> Result<Vec<u8>, Problem> {
    STANDARD
        .decode(v)
        .map_err(|_| malformed(format!("{field} is not base64")))
}

/// The admin name the token admin goes by (`spiffe://<td>/admin/token`): no certificate gets it.
const RESERVED_ADMIN: &str = "token";

const NAME_RULE: &str = "a name is 1 to 64 of a-z 0-9 - _ . (not only dots)";

/// A runtime name: 1 to 64 of `a-z`, `0-9`, `-`, `_`, `.`, not only dots (one SPIFFE path
/// segment).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.'))
        && !name.bytes().all(|b| b == b'.')
}

/// A problem for a store failure: 503 naming the store (or the conflict's own code, 403).
pub(crate) fn store_problem(e: StoreError) -> Problem {
    match e {
        StoreError::Conflict { code, detail } => Problem::new(StatusCode::FORBIDDEN, code, detail),
        other => {
            // The specifics (which may name hosts or rows) go to the service's log only.
            tracing::error!(code = other.code(), "store: {other}");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                other.code(),
                "the appliance's store cannot record or answer now",
            )
        }
    }
}

/// Enrollment, step one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The EK certificate, DER, base64.
    pub ek_certificate: String,
    /// The EK's public area (TPMT_PUBLIC, base64), if the runtime sends it: compared with the
    /// certificate's key, never used instead of it.
    #[serde(default)]
    pub ek_public: Option<String>,
    /// The AK's public area (TPMT_PUBLIC, base64).
    pub ak_public: String,
    /// A one-time join token, unless the EK certificate's hash was registered.
    #[serde(default)]
    pub join_token: Option<String>,
}

impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field(
                "join_token",
                &self.join_token.as_ref().map(|_| "(withheld)"),
            )
            .finish_non_exhaustive()
    }
}

/// The credential challenge.
#[derive(Debug, Serialize, Deserialize)]
pub struct Challenge {
    /// The enrollment's identifier, for step two.
    pub enrollment: String,
    /// The SPIFFE ID the runtime will get.
    pub spiffe_id: String,
    /// TPM2B_ID_OBJECT's buffer, base64.
    pub id_object: String,
    /// TPM2B_ENCRYPTED_SECRET's buffer, base64.
    pub encrypted_secret: String,
    /// When the challenge expires (seconds since the Unix epoch).
    pub expires_at: i64,
}

/// Enrollment, step two.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivateRequest {
    /// The enrollment's identifier.
    pub enrollment: String,
    /// The secret the TPM released, base64.
    pub secret: String,
}

impl std::fmt::Debug for ActivateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivateRequest")
            .field("enrollment", &self.enrollment)
            .finish_non_exhaustive()
    }
}

/// An enrolled runtime.
#[derive(Debug, Serialize, Deserialize)]
pub struct Enrolled {
    /// Its name.
    pub name: String,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
}

/// A runtime as the admin API lists it.
#[derive(Debug, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// Its name.
    pub name: String,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// `enrolled` or `revoked`.
    pub state: String,
    /// The TPM (manufacturer, model, firmware) from its EK certificate.
    pub tpm: serde_json::Value,
    /// SHA-256 of its EK certificate.
    pub ek_certificate_sha256: String,
    /// When it enrolled.
    pub enrolled_at: i64,
    /// When its state last changed.
    pub changed_at: i64,
    /// Its reference profile's name, if one is assigned.
    pub profile: Option<String>,
    /// Its current appraisal (`status`, `attested_at`, `profile` digest), if it attested.
    pub attestation: Option<serde_json::Value>,
}

/// A join token, as issued (the token itself is shown once and stored only as a digest).
#[derive(Serialize, Deserialize)]
pub struct JoinToken {
    /// The token.
    pub token: String,
    /// The runtime name it enrolls.
    pub name: String,
    /// When it expires.
    pub expires_at: i64,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("name", &self.name)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// One decision record.
struct Rec<'a> {
    kind: Kind,
    subject: &'a str,
    reason: Option<&'static str>,
    digests: &'a [(&'a str, String)],
}

impl Appliance {
    /// An appliance over `log` (whose store holds the state tables).
    pub fn new(log: Arc<DecisionLog>, config: ApplianceConfig) -> Self {
        Appliance {
            log,
            config,
            metrics: Arc::new(Metrics::default()),
            profiles: attest::ProfileCache::default(),
            policy: issue::PolicyCache::default(),
            rates: issue::Rates::default(),
            refusals: issue::Rates::default(),
            svid_rates: issue::Rates::default(),
            sign_rates: issue::Rates::default(),
            schedule: rotation::Schedule::default(),

            publishing: bundle::Publishing::default(),
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Readiness: each dependency and whether it answers (custody: the checkpointer's last
    /// signature, at most three intervals old; store: a query; log: its writer runs, its last
    /// transaction succeeded and checkpoints are fresh; clock: readable). Nothing is signed or
    /// written for the asking.
    pub fn readiness(&self) -> Vec<(&'static str, Result<(), String>)> {
        vec![
            (
                "custody",
                self.log.custody().map_err(|e| e.code().to_string()),
            ),
            (
                "store",
                self.log
                    .query("SELECT 1", &[])
                    .map(|_| ())
                    .map_err(|e| e.code().to_string()),
            ),
            ("log", self.log.health().map_err(|e| e.code().to_string())),
            ("clock", now().map(|_| ()).map_err(|p| p.code().to_string())),
        ]
    }

    /// Appends `rec` with `effect`; counts the decision once it is durable.
    fn logged(&self, rec: &Rec<'_>, effect: Vec<Op>) -> Result<Result<u64, StoreError>, Problem> {
        self.append_decision(
            rec.kind,
            rec.subject,
            rec.reason.as_slice(),
            rec.digests,
            None,
            effect,
        )
    }

    /// Appends one decision record (deny with `reasons`, each once, or allow if there are
    /// none; under `policy` when a policy bundle decided) with `effect`, the state change it
    /// commits with; counts the decision once it is durable. Every decision of the appliance
    /// is recorded through here, or through [`Appliance::append_leaf`] when its record names a
    /// parent (a writ under a parent).
    fn append_decision(
        &self,
        kind: Kind,
        subject: &str,
        reasons: &[&'static str],
        digests: &[(&str, String)],
        policy: Option<&str>,
        effect: Vec<Op>,
    ) -> Result<Result<u64, StoreError>, Problem> {
        let leaf = decision_leaf(kind, subject, reasons, digests, policy, None)?;
        Ok(self.append_leaf(kind, reasons.first().copied(), leaf, effect))
    }

    /// Appends one decision record made by [`decision_leaf`] with `effect`; counts the
    /// decision (denied with `reason`, or allowed) once it is durable.
    fn append_leaf(
        &self,
        kind: Kind,
        reason: Option<&str>,
        leaf: Vec<u8>,
        effect: Vec<Op>,
    ) -> Result<u64, StoreError> {
        let r = self.log.append_with(vec![leaf], effect);
        if r.is_ok() {
            let kind = serde_json::to_value(kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            match reason {
                Some(code) => self.metrics.decision(&kind, "deny", code),
                None => self.metrics.decision(&kind, "allow", "ok"),
            }
        }
        r
    }

    /// The decision log.
    pub fn log(&self) -> &Arc<DecisionLog> {
        &self.log
    }

    /// The CA certificate (PEM), when TLS is on.
    pub fn ca_certificate_pem(&self) -> Option<String> {
        self.config.ca_certificate_pem.as_ref()?;
        let t = now().ok()?;
        let pems: Vec<String> = self
            .published_authorities(t)
            .iter()
            .filter_map(|(_, der)| crate::tls::pem(der).ok())
            .collect();
        (!pems.is_empty()).then(|| pems.concat())
    }

    /// Why no certificate can be made now: plain HTTP, or no CA of the `ca` key's schedule signs.
    pub(crate) fn no_authority(&self) -> Problem {
        if self.serves_tls() {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ca_signing",
                "no CA of the ca key's schedule signs now",
            )
        } else {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "tls_off",
                "this appliance has no ca key (plain HTTP): it issues no certificates",
            )
        }
    }

    /// Whether this appliance serves TLS (it has a `ca` key).
    pub fn serves_tls(&self) -> bool {
        self.config.ca_certificate_pem.is_some()
    }

    /// Whether `origin` (`scheme://host[:port]`) is one this appliance is addressed at.
    pub fn is_origin(&self, origin: &str) -> bool {
        self.config.origins.iter().any(|o| o == origin)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.config.trust_domain
    }

    fn runtime_id(&self, name: &str) -> String {
        format!("spiffe://{}/runtime/{name}", self.config.trust_domain)
    }

    /// The public keys of `purpose` that tokens of this appliance may be signed with: the
    /// signing key first, then the published ones.
    pub(crate) fn verification_keys(&self, purpose: &str) -> Vec<writ_attestation::jwk::EcJwk> {
        // After a rotation, its schedule says which keys are published (no clock: none).
        let Ok(t) = now() else {
            return Vec::new();
        };
        if let Some(keys) = self.scheduled_keys(purpose, t) {
            return keys;
        }
        let signing = match purpose {
            "issuer" => self.config.issuer_key.as_ref(),
            "ear" => self.config.ear_key.as_ref(),
            _ => None,
        };
        signing
            .into_iter()
            .chain(
                self.config
                    .published_keys
                    .iter()
                    .filter(|(p, _)| *p == purpose)
                    .map(|(_, k)| k),
            )
            .map(|k| {
                writ_attestation::jwk::EcJwk::from_verifying_key(k.public_key().verifying_key())
            })
            .collect()
    }

    fn appliance_id(&self) -> String {
        format!("spiffe://{}/writ/appliance", self.config.trust_domain)
    }

    fn admin_id(&self) -> String {
        format!("spiffe://{}/admin/token", self.config.trust_domain)
    }

    fn query(&self, sql: &'static str, params: &[Value]) -> Result<Vec<Vec<Value>>, Problem> {
        self.log.query(sql, params).map_err(store_problem)
    }

    /// Logs a denial about an identified subject, then returns it as the answer (or a 503 if it
    /// could not be logged: nothing is answered about a decision the log does not hold).
    fn deny(&self, rec: Rec<'_>, status: StatusCode, detail: impl Into<String>) -> Problem {
        let code = rec.reason.unwrap_or("denied");
        match self.logged(&rec, Vec::new()) {
            Ok(Ok(_)) => Problem::new(status, code, detail).identified(),
            Ok(Err(e)) => store_problem(e),
            Err(p) => p,
        }
    }

    /// Appends an allow record with its state change; a conflict is logged as a denial.
    fn commit(
        &self,
        rec: Rec<'_>,
        effect: Vec<Op>,
        conflict_status: StatusCode,
    ) -> Result<u64, Problem> {
        match self.logged(&rec, effect)? {
            Ok(i) => Ok(i),
            Err(StoreError::Conflict { code, detail }) => Err(self.deny(
                Rec {
                    reason: Some(code),
                    ..rec
                },
                conflict_status,
                detail,
            )),
            Err(e) => Err(store_problem(e)),
        }
    }

    /// Enrollment, step one.
    pub fn enroll_start(&self, req: &EnrollRequest) -> Result<Challenge, Problem> {
        let ek_der = b64("ek_certificate", &req.ek_certificate)?;
        let ak_bytes = b64("ak_public", &req.ak_public)?;
        let ek_public = req
            .ek_public
            .as_deref()
            .map(|v| b64("ek_public", v))
            .transpose()?;
        let ek_hash = sha256_hex(&ek_der);
        let t = now()?;

        // Who is this? Decided by the authorization alone; unknown means unidentified.
        let (name, token_hash) = match &req.join_token {
            Some(token) => {
                let token_hash = sha256_hex(token.as_bytes());
                let rows = self.query(
                    "SELECT name, expires_at, used_at FROM join_tokens WHERE token_hash = $1",
                    &[token_hash.clone().into()],
                )?;
                let Some(row) = rows.first() else {
                    return Err(Problem::new(
                        StatusCode::UNAUTHORIZED,
                        "enrollment_unauthorized",
                        "no such join token",
                    ));
                };
                let name = row.first().and_then(Value::text).unwrap_or("").to_string();
                let subject = self.runtime_id(&name);
                let digests = [("ek_certificate", format!("sha256:{ek_hash}"))];
                if !matches!(row.get(2), Some(Value::Null)) {
                    return Err(self.deny(
                        Rec {
                            kind: Kind::Enroll,
                            subject: &subject,
                            reason: Some("join_token_used"),
                            digests: &digests,
                        },
                        StatusCode::FORBIDDEN,
                        "the join token was already used",
                    ));
                }
                if row.get(1).and_then(Value::int).unwrap_or(0) <= t {
                    return Err(self.deny(
                        Rec {
                            kind: Kind::Enroll,
                            subject: &subject,
                            reason: Some("join_token_expired"),
                            digests: &digests,
                        },
                        StatusCode::FORBIDDEN,
                        "the join token has expired",
                    ));
                }
                (name, Some(token_hash))
            }
            None => {
                let rows = self.query(
                    "SELECT name FROM ek_registrations WHERE ek_hash = $1",
                    &[ek_hash.clone().into()],
                )?;
                match rows.first().and_then(|r| r.first()).and_then(Value::text) {
                    Some(n) => (n.to_string(), None),
                    None => {
                        return Err(Problem::new(
                            StatusCode::UNAUTHORIZED,
                            "enrollment_unauthorized",
                            "this EK certificate is not registered and no join token was given",
                        ));
                    }
                }
            }
        };
        let subject = self.runtime_id(&name);
        let mut digests = vec![("ek_certificate", format!("sha256:{ek_hash}"))];
        let refuse = |digests: &[(&str, String)], e: EvidenceError| {
            self.deny(
                Rec {
                    kind: Kind::Enroll,
                    subject: &subject,
                    reason: Some(e.code()),
                    digests,
                },
                StatusCode::FORBIDDEN,
                e.to_string(),
            )
        };

        // The EK: its key comes from the certificate, which must chain to a manufacturer root.
        let ek = self
            .config
            .ek_roots
            .verify(default_provider(), &ek_der, u64::try_from(t).unwrap_or(0))
            .map_err(|e| refuse(&digests, e))?;
        if let Some(p) = &ek_public {
            let public = Public::from_tpmt(p).map_err(|e| refuse(&digests, e))?;
            ek.check_public(&public).map_err(|e| refuse(&digests, e))?;
        }
        // The AK: attributes and algorithms before anything is done with it.
        let ak = CheckedAk::from_tpmt(&ak_bytes).map_err(|e| refuse(&digests, e))?;
        digests.push(("ak", digest(&ak_bytes)));

        // An enrolled name keeps its keys; an EK belongs to one name. The EK is known by its key
        // (from the verified certificate), never by the certificate's bytes, which an outsider
        // can vary.
        let ek_key = ek.key().key_id();
        digests.push(("ek_key", format!("sha256:{ek_key}")));
        let existing = self.query(
            "SELECT ek_key, ak_name, state FROM runtimes WHERE name = $1 OR ek_key = $2",
            &[name.clone().into(), ek_key.clone().into()],
        )?;
        for row in &existing {
            let same_keys = row.first().and_then(Value::text) == Some(ek_key.as_str())
                && row.get(1).and_then(Value::blob) == Some(ak.name());
            let revoked = row.get(2).and_then(Value::text) == Some("revoked");
            if revoked || !same_keys || existing.len() > 1 {
                return Err(self.deny(
                    Rec {
                        kind: Kind::Enroll,
                        subject: &subject,
                        reason: Some("reenrollment"),
                        digests: &digests,
                    },
                    StatusCode::CONFLICT,
                    "this name is enrolled with other keys or revoked, or this EK is enrolled under another name",
                ));
            }
        }

        // Pending challenges per name are bounded: EK certificates are public, so anyone can
        // start an enrollment for a registered EK; each start is a record and a row.
        let pending = self.query(
            "SELECT COUNT(*) FROM enrollments WHERE name = $1 AND used_at IS NULL AND expires_at > $2",
            &[name.clone().into(), t.into()],
        )?;
        let pending = pending
            .first()
            .and_then(|r| r.first())
            .and_then(Value::int)
            .unwrap_or(i64::MAX);
        if pending >= MAX_PENDING {
            return Err(self.deny(
                Rec {
                    kind: Kind::Enroll,
                    subject: &subject,
                    reason: Some("too_many_challenges"),
                    digests: &digests,
                },
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{pending} challenges for this name are unanswered; answer one or wait for them to expire"
                ),
            ));
        }

        // The challenge, made in software for the certificate's key and the AK's name.
        let secret = zeroize::Zeroizing::new(random::<32>()?);
        let id = hex::encode(random::<16>()?);
        let credential = make_credential(ek.key(), ak.name(), secret.as_ref(), &mut |b| {
            getrandom::fill(b).map_err(|e| EvidenceError::Malformed(format!("random: {e}")))
        })
        .map_err(|e| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "credential",
                format!("the credential could not be made: {e}"),
            )
        })?;
        let expires_at = t.saturating_add(CHALLENGE_TTL);
        let tpm = serde_json::json!({
            "manufacturer": ek.tpm().manufacturer,
            "model": ek.tpm().model,
            "version": ek.tpm().version,
        })
        .to_string();
        digests.push(("enrollment", digest(id.as_bytes())));
        let mut effect = Vec::new();
        if let Some(h) = &token_hash {
            effect.push(Op {
                sql: "UPDATE join_tokens SET used_at = $2
                      WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
                params: vec![h.clone().into(), t.into()],
                must_affect: Some(("join_token_used", "the join token was already used")),
            });
        }
        effect.push(Op {
            sql: "DELETE FROM enrollments WHERE expires_at < $1",
            params: vec![t.saturating_sub(CHALLENGE_KEEP).into()],
            must_affect: None,
        });
        effect.push(Op {
            // The bound on pending challenges holds inside the transaction too (the check above
            // reads outside it).
            sql: "INSERT INTO enrollments
                  (id, name, ek_key, ak_name, ak_public, tpm, secret_hash, expires_at, ek_certificate)
                  SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9
                  WHERE (SELECT COUNT(*) FROM enrollments
                         WHERE name = $2 AND used_at IS NULL AND expires_at > $10) < $11",
            params: vec![
                id.clone().into(),
                name.clone().into(),
                ek_key.clone().into(),
                ak.name().into(),
                ak_bytes.clone().into(),
                tpm.into(),
                Sha256::digest(secret.as_ref()).to_vec().into(),
                expires_at.into(),
                ek_hash.clone().into(),
                t.into(),
                MAX_PENDING.into(),
            ],
            must_affect: Some((
                "too_many_challenges",
                "too many challenges for this name are unanswered",
            )),
        });
        self.commit(
            Rec {
                kind: Kind::Enroll,
                subject: &subject,
                reason: None,
                digests: &digests,
            },
            effect,
            StatusCode::FORBIDDEN,
        )?;
        Ok(Challenge {
            enrollment: id,
            spiffe_id: subject.clone(),
            id_object: STANDARD.encode(&credential.id_object),
            encrypted_secret: STANDARD.encode(&credential.encrypted_secret),
            expires_at,
        })
    }

    /// Enrollment, step two.
    pub fn enroll_activate(&self, req: &ActivateRequest) -> Result<Enrolled, Problem> {
        let secret = zeroize::Zeroizing::new(b64("secret", &req.secret)?);
        let t = now()?;
        let rows = self.query(
            "SELECT name, ek_key, ak_name, ak_public, tpm, secret_hash, expires_at, used_at,
                    ek_certificate
             FROM enrollments WHERE id = $1",
            &[req.enrollment.clone().into()],
        )?;
        let Some(row) = rows.first() else {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                "enrollment_unknown",
                "no such enrollment",
            ));
        };
        let text = |i: usize| row.get(i).and_then(Value::text).unwrap_or("").to_string();
        let blob = |i: usize| row.get(i).and_then(Value::blob).unwrap_or(&[]).to_vec();
        let name = text(0);
        let ek_key = text(1);
        let subject = self.runtime_id(&name);
        let digests = [
            ("ek_key", format!("sha256:{ek_key}")),
            ("ak", digest(&blob(3))),
            ("enrollment", digest(req.enrollment.as_bytes())),
        ];
        let rec = |reason| Rec {
            kind: Kind::Enroll,
            subject: &subject,
            reason,
            digests: &digests,
        };
        if !matches!(row.get(7), Some(Value::Null)) {
            return Err(self.deny(
                rec(Some("challenge_used")),
                StatusCode::FORBIDDEN,
                "this challenge was already answered",
            ));
        }
        if row.get(6).and_then(Value::int).unwrap_or(0) <= t {
            return Err(self.deny(
                rec(Some("challenge_expired")),
                StatusCode::FORBIDDEN,
                "this challenge has expired; start again",
            ));
        }
        let take = Op {
            sql: "UPDATE enrollments SET used_at = $2
                  WHERE id = $1 AND used_at IS NULL AND expires_at > $2",
            params: vec![req.enrollment.clone().into(), t.into()],
            must_affect: Some(("challenge_used", "this challenge was already answered")),
        };
        if !same(&Sha256::digest(secret.as_slice()), &blob(5)) {
            // Spent, and logged, in one transaction; the answer says nothing more.
            return Err(match self.logged(&rec(Some("activation")), vec![take])? {
                Ok(_) => Problem::new(
                    StatusCode::FORBIDDEN,
                    "activation",
                    "the answer to the credential challenge is wrong; start again",
                )
                .identified(),
                Err(StoreError::Conflict { code, detail }) => {
                    self.deny(rec(Some(code)), StatusCode::FORBIDDEN, detail)
                }
                Err(e) => store_problem(e),
            });
        }
        let insert = Op {
            // Insert, or re-enroll the same keys; never another runtime's name or EK.
            sql: "INSERT INTO runtimes
                  (name, ek_key, ak_name, ak_public, tpm, state, enrolled_at, changed_at,
                   ek_certificate)
                  SELECT $1, $2, $3, $4, $5, 'enrolled', $6, $6, $7
                  WHERE NOT EXISTS (SELECT 1 FROM runtimes WHERE ek_key = $2 AND name <> $1)
                  ON CONFLICT (name) DO UPDATE SET enrolled_at = excluded.enrolled_at,
                      changed_at = excluded.changed_at, ek_certificate = excluded.ek_certificate
                  WHERE runtimes.ek_key = excluded.ek_key
                    AND runtimes.ak_name = excluded.ak_name
                    AND runtimes.state = 'enrolled'",
            params: vec![
                name.clone().into(),
                ek_key.clone().into(),
                blob(2).into(),
                blob(3).into(),
                text(4).into(),
                t.into(),
                text(8).into(),
            ],
            must_affect: Some((
                "reenrollment",
                "this name is enrolled with other keys or revoked, or this EK is enrolled under another name",
            )),
        };
        match self.logged(&rec(None), vec![take.clone(), insert])? {
            Ok(_) => {}
            // Refused: the challenge is spent with the refusal, in one transaction.
            Err(StoreError::Conflict { code, detail }) => {
                let status = if code == "reenrollment" {
                    StatusCode::CONFLICT
                } else {
                    StatusCode::FORBIDDEN
                };
                return Err(match self.logged(&rec(Some(code)), vec![take])? {
                    Ok(_) => Problem::new(status, code, detail).identified(),
                    Err(StoreError::Conflict { code, detail }) => {
                        self.deny(rec(Some(code)), StatusCode::FORBIDDEN, detail)
                    }
                    Err(e) => store_problem(e),
                });
            }
            Err(e) => return Err(store_problem(e)),
        }
        Ok(Enrolled {
            name,
            spiffe_id: subject,
        })
    }

    /// Logs an identified admin's refused request (malformed input) and returns the refusal.
    pub fn admin_refused(&self, admin: &str, p: Problem) -> Problem {
        self.refused_as(Kind::Admin, admin, p)
    }

    /// `p`, refusing identified `subject`, recorded as a `kind` decision first.
    fn refused_as(&self, kind: Kind, subject: &str, p: Problem) -> Problem {
        self.deny(
            Rec {
                kind,
                subject,
                reason: Some(p.code()),
                digests: &[],
            },
            p.status(),
            p.detail().to_string(),
        )
    }

    /// Checks an admin credential (`Authorization: Bearer <token>`), in constant time over its
    /// digest. Returns the admin's SPIFFE ID.
    pub fn admin(&self, bearer: Option<&str>) -> Result<String, Problem> {
        let unauthorized = || {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "admin_unauthorized",
                "an admin credential is required",
            )
        };
        let (Some(expected), Some(given)) = (self.config.admin_token_sha256, bearer) else {
            return Err(unauthorized());
        };
        if same(
            &Sha256::digest(normalize_token(given).as_bytes()),
            &expected,
        ) {
            Ok(self.admin_id())
        } else {
            Err(unauthorized())
        }
    }

    /// The admin presenting a client certificate: its one SPIFFE ID is an admin's
    /// (`spiffe://<td>/admin/<name>`) and the certificate is one this appliance issued and has
    /// not revoked (its serial registered for that ID). Any other certificate is refused, token or
    /// not: one naming no single SPIFFE ID unrecorded (it names nobody), one of another identity
    /// (a runtime's, a gateway's) or a revoked or unregistered admin's certificate logged under
    /// its identity (at most [`issue::MAX_REFUSALS_PER_MINUTE`] a minute per identity; beyond
    /// that, 429 unrecorded): a runtime's credential never administers.
    pub fn admin_by_certificate(&self, cert: &crate::http::ClientCert) -> Result<String, Problem> {
        self.registered_client(cert, Role::Admin)
    }

    /// [`Appliance::admin_by_certificate`] for `role`: the certificate's one SPIFFE ID is of that
    /// role and registered, not revoked; refusals `<role>_forbidden`, `<role>_revoked`, logged
    /// (kind admin for admins, gate for gateways) under the identity presented.
    pub(crate) fn registered_client(
        &self,
        cert: &crate::http::ClientCert,
        role: Role,
    ) -> Result<String, Problem> {
        let Some(id) = cert.spiffe_id.as_deref() else {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                role.forbidden(),
                "this client certificate names no single SPIFFE ID",
            ));
        };
        let refuse = |code: &'static str, detail: &str| {
            match now() {
                Ok(t) if self.refusals.admit(id, t, issue::MAX_REFUSALS_PER_MINUTE) => {}
                Ok(_) => {
                    return Problem::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limited",
                        "too many refused admin requests for this identity this minute",
                    );
                }
                Err(p) => return p,
            }
            self.deny(
                Rec {
                    kind: role.kind(),
                    subject: id,
                    reason: Some(code),
                    digests: &[],
                },
                StatusCode::FORBIDDEN,
                detail.to_string(),
            )
        };
        let of_role = id
            .strip_prefix(&format!(
                "spiffe://{}/{}/",
                self.config.trust_domain,
                role.path()
            ))
            .is_some_and(|n| valid_name(n) && (role != Role::Admin || n != RESERVED_ADMIN));
        if !of_role {
            return Err(refuse(
                role.forbidden(),
                match role {
                    Role::Admin => {
                        "this client certificate's SPIFFE ID is not an admin's: it cannot administer"
                    }
                    Role::Gateway => {
                        "this client certificate's SPIFFE ID is not a gateway's: it cannot report"
                    }
                },
            ));
        }
        let rows = self.query(
            "SELECT spiffe_id, revoked_at FROM admin_certificates WHERE serial = $1",
            &[cert.serial.clone().into()],
        )?;
        let registered = rows.first().is_some_and(|r| {
            r.first().and_then(Value::text) == Some(id)
                && matches!(r.get(1), None | Some(Value::Null))
        });
        if !registered {
            return Err(refuse(
                role.revoked(),
                "this certificate is revoked, or was not issued by this appliance",
            ));
        }
        Ok(id.to_string())
    }

    /// Issues an admin's client certificate (clientAuth only, the one URI SAN
    /// `spiffe://<td>/admin/<name>`) for the P-256 public key `spki_der` (DER), signed by the `ca`
    /// key, for `lifetime_s`; registered (serial, name, expiry) and logged. Only the token admin
    /// issues them (an admin certificate cannot make more of itself). Returns the certificate
    /// (PEM).
    pub fn issue_admin_certificate(
        &self,
        admin: &str,
        name: &str,
        spki_der: &[u8],
        lifetime_s: u64,
    ) -> Result<String, Problem> {
        self.issue_client_certificate(admin, Role::Admin, name, spki_der, lifetime_s)
    }

    /// A gateway's new certificate, asked for with its current one (registered, not revoked:
    /// `gateway` is its SPIFFE ID, as [`crate::http::Gateway`] found it): the same identity, for
    /// `spki_der`, registered and logged like an admin's issuance (subject the gateway). A
    /// revoked gateway has no certificate to ask with: renewal never outlives a revocation.
    pub fn renew_gateway_certificate(
        &self,
        gateway: &str,
        spki_der: &[u8],
        lifetime_s: u64,
    ) -> Result<String, Problem> {
        let prefix = format!(
            "spiffe://{}/{}/",
            self.config.trust_domain,
            Role::Gateway.path()
        );
        let name = gateway.strip_prefix(&prefix).unwrap_or("");
        self.issue_client_certificate(gateway, Role::Gateway, name, spki_der, lifetime_s)
    }

    /// [`Appliance::issue_admin_certificate`] for `role`: admins' certificates by the token admin
    /// only; gateways' (`spiffe://<td>/gateway/<name>`) by any admin.
    pub fn issue_client_certificate(
        &self,
        admin: &str,
        role: Role,
        name: &str,
        spki_der: &[u8],
        lifetime_s: u64,
    ) -> Result<String, Problem> {
        if role == Role::Admin && admin != self.admin_id() {
            return Err(self.admin_refused(
                admin,
                Problem::new(
                    StatusCode::FORBIDDEN,
                    "admin_forbidden",
                    "admin certificates are issued by the token admin only",
                ),
            ));
        }
        if !valid_name(name) || name == RESERVED_ADMIN {
            return Err(self.admin_refused(
                admin,
                malformed(format!("{NAME_RULE}; \"{RESERVED_ADMIN}\" is reserved")),
            ));
        }
        let lifetime = std::time::Duration::from_secs(lifetime_s);
        if lifetime.is_zero() || lifetime > crate::tls::MAX_CLIENT_LIFETIME {
            return Err(self.admin_refused(
                admin,
                malformed(format!(
                    "lifetime_s is 1 to {}",
                    crate::tls::MAX_CLIENT_LIFETIME.as_secs()
                )),
            ));
        }
        {
            use p256::pkcs8::DecodePublicKey;
            if p256::PublicKey::from_public_key_der(spki_der).is_err() {
                return Err(self.admin_refused(
                    admin,
                    malformed("public_key is not a P-256 SubjectPublicKeyInfo (DER)"),
                ));
            }
        }
        let Some(crate::tls::Authority {
            key: ca,
            der: ca_der,
            until,
        }) = self.client_authority(now()?)
        else {
            return Err(self.admin_refused(admin, self.no_authority()));
        };
        // Nothing a rotated-out CA signs outlives its end.
        let lifetime = match until {
            Some(u) => lifetime.min(std::time::Duration::from_secs(
                u64::try_from(u.saturating_sub(now()?)).unwrap_or(0).max(1),
            )),
            None => lifetime,
        };
        let lifetime_s = lifetime.as_secs();
        let id = format!(
            "spiffe://{}/{}/{name}",
            self.config.trust_domain,
            role.path()
        );
        // What is checked above is all a request can get wrong: anything else is the ca key's.
        let der =
            crate::tls::client_certificate(&ca, &ca_der, &id, spki_der, lifetime).map_err(|e| {
                self.metrics.error("custody", "ca_signing");
                tracing::error!("client certificate: {e}");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ca_signing",
                    "the certificate could not be made or signed by the ca key",
                )
            })?;
        let serial = crate::tls::certificate_serial(&der)
            .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "certificate", e))?;
        let t = now()?;
        self.admin_record(
            admin,
            &[
                (role.certificate_digest(), digest(&der)),
                (role.id_digest(), digest(id.as_bytes())),
            ],
            vec![Op {
                sql:
                    "INSERT INTO admin_certificates (serial, spiffe_id, name, not_after, issued_at)
                      VALUES ($1, $2, $3, $4, $5)",
                params: vec![
                    serial.into(),
                    id.clone().into(),
                    name.into(),
                    t.saturating_add(i64::try_from(lifetime_s).unwrap_or(i64::MAX))
                        .into(),
                    t.into(),
                ],
                must_affect: None,
            }],
        )?;
        crate::tls::pem(&der)
            .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "certificate", e))
    }

    /// Revokes an admin: none of the certificates issued for `spiffe://<td>/admin/<name>`
    /// authenticates any more.
    pub fn revoke_admin(&self, admin: &str, name: &str) -> Result<(), Problem> {
        self.revoke_client(admin, Role::Admin, name)
    }

    /// Revokes the certificates of `role`'s `name` (an admin's or a gateway's).
    pub fn revoke_client(&self, admin: &str, role: Role, name: &str) -> Result<(), Problem> {
        if !valid_name(name) {
            return Err(self.admin_refused(admin, malformed(NAME_RULE)));
        }
        let id = format!(
            "spiffe://{}/{}/{name}",
            self.config.trust_domain,
            role.path()
        );
        self.admin_record(
            admin,
            &[(role.revoked(), digest(id.as_bytes()))],
            vec![Op {
                sql: "UPDATE admin_certificates SET revoked_at = $2
                      WHERE spiffe_id = $1 AND revoked_at IS NULL",
                params: vec![id.into(), now()?.into()],
                must_affect: Some((
                    role.unknown(),
                    "no certificate of this identity is in force",
                )),
            }],
        )?;
        Ok(())
    }

    fn admin_record(
        &self,
        admin: &str,
        digests: &[(&str, String)],
        effect: Vec<Op>,
    ) -> Result<u64, Problem> {
        self.commit(
            Rec {
                kind: Kind::Admin,
                subject: admin,
                reason: None,
                digests,
            },
            effect,
            StatusCode::CONFLICT,
        )
    }

    /// Registers an EK certificate hash for `name`.
    pub fn register_ek(&self, admin: &str, ek_sha256: &str, name: &str) -> Result<(), Problem> {
        let ok_hash = ek_sha256.len() == 64
            && ek_sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !ok_hash {
            return Err(self.admin_refused(
                admin,
                malformed("ek_certificate_sha256 is 64 lowercase hex digits"),
            ));
        }
        if !valid_name(name) {
            return Err(self.admin_refused(admin, malformed(NAME_RULE)));
        }
        self.admin_record(
            admin,
            &[("registered_ek", format!("sha256:{ek_sha256}"))],
            vec![Op {
                sql: "INSERT INTO ek_registrations (ek_hash, name, registered_at)
                      VALUES ($1, $2, $3) ON CONFLICT (ek_hash) DO NOTHING",
                params: vec![ek_sha256.into(), name.into(), now()?.into()],
                must_affect: Some(("ek_registered", "this EK certificate is already registered")),
            }],
        )?;
        Ok(())
    }

    /// Issues a one-time join token for `name`, valid for `ttl` seconds.
    pub fn issue_join_token(
        &self,
        admin: &str,
        name: &str,
        ttl: i64,
    ) -> Result<JoinToken, Problem> {
        if !valid_name(name) {
            return Err(self.admin_refused(admin, malformed(NAME_RULE)));
        }
        if !(1..=MAX_JOIN_TOKEN_TTL).contains(&ttl) {
            return Err(self.admin_refused(
                admin,
                malformed(format!("a join token lives 1 to {MAX_JOIN_TOKEN_TTL} s")),
            ));
        }
        let token = URL_SAFE_NO_PAD.encode(random::<32>()?);
        let hash = sha256_hex(token.as_bytes());
        let expires_at = now()?.saturating_add(ttl);
        self.admin_record(
            admin,
            &[("join_token", format!("sha256:{hash}"))],
            vec![Op {
                sql: "INSERT INTO join_tokens (token_hash, name, expires_at) VALUES ($1, $2, $3)",
                params: vec![hash.into(), name.into(), expires_at.into()],
                must_affect: None,
            }],
        )?;
        Ok(JoinToken {
            token,
            name: name.to_string(),
            expires_at,
        })
    }

    /// Revokes a runtime: every later request of it is refused.
    pub fn revoke(&self, admin: &str, name: &str) -> Result<(), Problem> {
        if !valid_name(name) {
            return Err(self.admin_refused(admin, malformed(NAME_RULE)));
        }
        let id = self.runtime_id(name);
        self.admin_record(
            admin,
            &[("revoked", digest(id.as_bytes()))],
            vec![Op {
                sql: "UPDATE runtimes SET state = 'revoked', changed_at = $2
                      WHERE name = $1 AND state <> 'revoked'",
                params: vec![name.into(), now()?.into()],
                must_affect: Some(("runtime_unknown", "no such enrolled runtime")),
            }],
        )?;
        Ok(())
    }

    /// Every runtime with its state (the listing is itself logged).
    pub fn runtimes(&self, admin: &str) -> Result<Vec<RuntimeInfo>, Problem> {
        let rows = self.query(
            "SELECT r.name, r.state, r.tpm, r.ek_certificate, r.enrolled_at, r.changed_at,
                    r.profile, a.status, a.attested_at, a.profile
             FROM runtimes r LEFT JOIN attestations a ON a.name = r.name
             ORDER BY r.name",
            &[],
        )?;
        let list: Vec<RuntimeInfo> = rows
            .iter()
            .map(|r| {
                let text = |i: usize| r.get(i).and_then(Value::text).unwrap_or("").to_string();
                let int = |i: usize| r.get(i).and_then(Value::int).unwrap_or(0);
                RuntimeInfo {
                    spiffe_id: self.runtime_id(&text(0)),
                    name: text(0),
                    state: text(1),
                    tpm: serde_json::from_str(&text(2)).unwrap_or(serde_json::Value::Null),
                    ek_certificate_sha256: text(3),
                    enrolled_at: int(4),
                    changed_at: int(5),
                    profile: r.get(6).and_then(Value::text).map(str::to_string),
                    attestation: r.get(7).and_then(Value::text).map(|status| {
                        serde_json::json!({
                            "status": status,
                            "attested_at": int(8),
                            "profile": text(9),
                        })
                    }),
                }
            })
            .collect();
        let listing = serde_json::to_vec(&list).unwrap_or_default();
        self.admin_record(admin, &[("runtimes_listed", digest(&listing))], Vec::new())?;
        Ok(list)
    }
}

/// The leaf bytes of one decision record: denied with `reasons` (each once), or allowed if there
/// are none; under `policy` when a policy bundle decided; descending from the record whose leaf
/// hash is `parent` (`sha256:`), for a child writ.
fn decision_leaf(
    kind: Kind,
    subject: &str,
    reasons: &[&'static str],
    digests: &[(&str, String)],
    policy: Option<&str>,
    parent: Option<String>,
) -> Result<Vec<u8>, Problem> {
    let mut codes: Vec<String> = Vec::new();
    for r in reasons {
        if !codes.iter().any(|c| c == r) {
            codes.push(r.to_string());
        }
    }
    let record = DecisionRecord {
        v: RECORD_VERSION,
        kind,
        time: now()?,
        subject: subject.to_string(),
        decision: if reasons.is_empty() {
            Decision::Allow
        } else {
            Decision::Deny
        },
        reasons: codes,
        digests: digests
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        policy_bundle_hash: policy.map(str::to_string),
        parent,
    };
    record.to_leaf().map_err(|e| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "record",
            format!("a decision record could not be made: {e}"),
        )
    })
}

/// The DER of the first certificate in a PEM text.
fn x509_der(pem: &str) -> Result<Vec<u8>, String> {
    use x509_cert::der::{DecodePem, Encode};
    x509_cert::Certificate::from_pem(pem.as_bytes())
        .and_then(|c| c.to_der())
        .map_err(|e| format!("the CA certificate: {e}"))
}
