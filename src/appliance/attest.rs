//! Attestation as a service (security.md, "Enrollment and attestation"; docs/attestation.md).
//!
//! **Nonce.** A runtime asks for a nonce by name: 32 bytes from the OS RNG, stored only as its
//! SHA-256, bound to the name, short-lived, written durably (through the decision log's writer)
//! before it is answered. At most [`MAX_PENDING_NONCES`] unused, unexpired nonces per runtime.
//! Handing out a nonce decides nothing and is not a record; the request is not authenticated
//! (runtimes have no credential before X.509-SVIDs), so a refusal here is an unidentified one.
//!
//! **Attest.** The runtime answers with a quote by its enrolled AK over the selection its
//! profile requires, the PCR values, its event log and a holder key certified by the AK over
//! the same nonce. In order: the runtime is known; the quote's signature verifies with its
//! stored AK (until then the request is unidentified: counted, not logged); then every refusal
//! is a decision about the runtime, in the log before the answer. The nonce must be the
//! runtime's own, unused and unexpired; it is spent in the transaction that records the
//! decision, so two concurrent uses give one success, and a nonce is never accepted twice,
//! across restarts too. Then the rest of the quote (nonce, selection, PCR digest), the
//! certification of the holder key, the event log (parsed, replayed, appraised against the
//! runtime's profile), the TPM's counters against the last verified quote. An appraisal (of
//! any status) replaces the runtime's current state; only an affirming or warning one gets an
//! EAR token, signed with the `ear` key and bound to the holder key's thumbprint.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use writ_attestation::EvidenceError;
use writ_attestation::appraisal::{
    Appraisal, Claim, LoadedProfile, Reason, Status, TpmIdentity, appraise, values,
};
use writ_attestation::crypto::default_provider;
use writ_attestation::evidence::{
    CheckedAk, CounterChange, Nonce, TpmAttributes, verify_certify, verify_quote,
};
use writ_attestation::log::record::Kind;
use writ_attestation::tpm::HashAlg;
use writ_attestation::tpm::attest::ClockInfo;
use writ_attestation::tpm::pcr::{PcrSelection, PcrValues};

use super::{
    Appliance, NAME_RULE, Rec, b64, digest, malformed, now, random, store_problem, valid_name,
};
use crate::http::Problem;
use crate::store::{Op, StoreError, Value};

/// Unused, unexpired nonces one runtime may hold.
pub const MAX_PENDING_NONCES: i64 = 16;
/// Nonces are deleted this long after they expired (until then a reuse is answered
/// `nonce_consumed`; afterwards `nonce_unknown`: refused either way).
const NONCE_KEEP: i64 = 3600;
/// Largest event log accepted in an attestation, bytes (before base64).
pub const MAX_EVENT_LOG: usize = 1024 * 1024;
/// Largest attestation request body, bytes: the event log in base64 and the rest.
pub const MAX_ATTEST_BODY: usize = MAX_EVENT_LOG / 3 * 4 + 64 * 1024;

/// A nonce request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NonceRequest {
    /// The runtime's name.
    pub name: String,
}

/// A nonce, and what the quote must cover.
#[derive(Debug, Serialize, Deserialize)]
pub struct NonceAnswer {
    /// 32 random bytes, base64.
    pub nonce: String,
    /// When it expires (seconds since the Unix epoch).
    pub expires_at: i64,
    /// The PCR selection the quote must cover exactly (tpm2-tools syntax, `sha256:0,2,4,7`).
    pub selection: String,
    /// The runtime's reference profile (its name).
    pub profile: String,
    /// Whether the holder key must be bound to the quoted PCR values (TPM2_PolicyPCR, then
    /// TPM2_PolicyAuthValue, userWithAuth clear).
    #[serde(default)]
    pub holder_pcr_policy: bool,
}

/// A TPM attestation (TPMS_ATTEST) and its signature (TPMT_SIGNATURE), base64.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    /// TPMS_ATTEST, exactly as signed.
    pub attest: String,
    /// TPMT_SIGNATURE.
    pub signature: String,
}

/// A holder key and its certification by the AK.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Holder {
    /// The key's TPMT_PUBLIC, base64.
    pub public: String,
    /// TPM2_Certify of the key by the AK over the nonce.
    pub certify: Signed,
}

/// An attestation.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestRequest {
    /// The runtime's name.
    pub name: String,
    /// The nonce, base64, as it was handed out.
    pub nonce: String,
    /// TPM2_Quote by the AK over the nonce.
    pub quote: Signed,
    /// The PCR values: bank name → PCR number → hex value.
    pub pcrs: BTreeMap<String, BTreeMap<String, String>>,
    /// The firmware event log (TCG crypto-agile), base64.
    pub event_log: String,
    /// The holder key.
    pub holder: Holder,
}

/// The answer to an attestation that was affirmed (or warned about).
#[derive(Debug, Serialize, Deserialize)]
pub struct AttestAnswer {
    /// The runtime's SPIFFE ID.
    pub spiffe_id: String,
    /// `affirming` or `warning`.
    pub status: String,
    /// The EAR token (`ear+jwt`), bound to the holder key (`cnf.jkt`).
    pub ear: String,
    /// When the token expires.
    pub expires_at: i64,
    /// The holder key's RFC 7638 thumbprint.
    pub holder_jkt: String,
    /// How the TPM's counters moved since the last attestation: `first`, `unchanged`,
    /// `reboot`, `reboots`, `restart`.
    pub counters: String,
    /// The TPM's reset and restart counts in this quote.
    pub reset_count: u32,
    /// The TPM's restart count in this quote.
    pub restart_count: u32,
    /// Every failed rule (a warning's reasons).
    pub reasons: Vec<serde_json::Value>,
    /// The decision's index in the log.
    pub log_index: u64,
}

/// What the appliance keeps of profiles it parsed (by digest).
#[derive(Default)]
pub(crate) struct ProfileCache(Mutex<HashMap<String, Arc<LoadedProfile>>>);

impl ProfileCache {
    fn cached(&self, digest: &str) -> Option<Arc<LoadedProfile>> {
        self.0.lock().ok()?.get(digest).cloned()
    }

    fn get(&self, digest: &str, text: &str) -> Result<Arc<LoadedProfile>, Problem> {
        if let Ok(map) = self.0.lock()
            && let Some(p) = map.get(digest)
        {
            return Ok(Arc::clone(p));
        }
        let p = Arc::new(LoadedProfile::from_json(text.as_bytes()).map_err(|e| {
            // Stored by a checked load: a profile that no longer parses is the store's fault.
            tracing::error!("stored profile {digest}: {e}");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "profile_corrupt",
                "the runtime's stored reference profile does not load",
            )
        })?);
        if let Ok(mut map) = self.0.lock() {
            if map.len() > 1024 {
                map.clear();
            }
            map.insert(digest.to_string(), Arc::clone(&p));
        }
        Ok(p)
    }
}

/// The selection a profile requires: the PCRs it reads, in its bank.
pub fn required_selection(profile: &LoadedProfile) -> Result<PcrSelection, EvidenceError> {
    PcrSelection::new(vec![(
        profile.bank(),
        profile.read_pcrs().into_iter().collect(),
    )])
}

struct Runtime {
    ak_public: Vec<u8>,
    tpm: String,
    state: String,
    /// The assigned profile: name, digest.
    profile: Option<(String, String)>,
    /// The nonce asked about: its runtime's name, expiry, use.
    nonce: Option<Vec<Value>>,
    /// The last attestation: generation, resetCount, restartCount, clock, rollback.
    last: Option<Vec<Value>>,
}

fn parse_pcrs(pcrs: &BTreeMap<String, BTreeMap<String, String>>) -> Result<PcrValues, Problem> {
    let mut out = PcrValues::new();
    for (bank, values) in pcrs {
        let alg = HashAlg::from_name(bank)
            .ok_or_else(|| malformed(format!("pcrs: unknown bank {bank:?}")))?;
        for (index, hex_value) in values {
            let canonical = index == "0" || (!index.starts_with('0') && !index.is_empty());
            let i: u8 = index
                .parse()
                .ok()
                .filter(|_| canonical && index.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| malformed(format!("pcrs: {index:?} is not a PCR number")))?;
            let v = hex::decode(hex_value)
                .map_err(|_| malformed(format!("pcrs: {bank}:{i} is not hex")))?;
            out.insert(alg, i, v)
                .map_err(|e| malformed(format!("pcrs: {e}")))?;
        }
    }
    Ok(out)
}

fn reason(code: &'static str, claim: Claim, rule: &str, message: String) -> Reason {
    Reason {
        code,
        claim,
        rule: rule.to_string(),
        pcr: None,
        bank: None,
        event: None,
        expected: None,
        found: None,
        message,
    }
}

/// The code under which a failed certification is refused.
fn certify_code(e: &EvidenceError) -> &'static str {
    match e {
        EvidenceError::Signature(_) | EvidenceError::SignatureScheme(_) => "certify_signature",
        EvidenceError::NonceMismatch => "certify_nonce",
        EvidenceError::CertifiedName => "certified_name",
        EvidenceError::CertifiedKey(_) => "certified_key",
        _ => "certify",
    }
}

impl Appliance {
    /// The runtime `name`, with (in one read) the nonce whose SHA-256 is `nonce_hash`, if any,
    /// and its last attestation's counters.
    fn runtime(&self, name: &str, nonce_hash: &[u8]) -> Result<Option<Runtime>, Problem> {
        let rows = self.query(
            "SELECT r.ak_public, r.tpm, r.state, p.name, p.digest,
                    n.name, n.expires_at, n.used_at, n.nonce_hash,
                    a.generation, a.reset_count, a.restart_count, a.clock, a.rollback
             FROM runtimes r
             LEFT JOIN profiles p ON p.name = r.profile
             LEFT JOIN nonces n ON n.nonce_hash = $2
             LEFT JOIN attestations a ON a.name = r.name
             WHERE r.name = $1",
            &[name.into(), nonce_hash.into()],
        )?;
        Ok(rows.first().map(|r| {
            let present = |i: usize| !matches!(r.get(i), None | Some(Value::Null));
            let cols = |from: usize, to: usize| r.get(from..to).map(<[Value]>::to_vec);
            let text = |i: usize| r.get(i).and_then(Value::text).map(str::to_string);
            Runtime {
                ak_public: r
                    .first()
                    .and_then(Value::blob)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default(),
                tpm: text(1).unwrap_or_default(),
                state: text(2).unwrap_or_default(),
                profile: text(3).zip(text(4)),
                nonce: if present(8) { cols(5, 8) } else { None },
                last: if present(9) { cols(9, 14) } else { None },
            }
        }))
    }

    /// The profile `name` as loaded with `digest`: parsed once, then from the cache.
    fn loaded_profile(&self, name: &str, digest: &str) -> Result<Arc<LoadedProfile>, Problem> {
        if let Some(p) = self.profiles.cached(digest) {
            return Ok(p);
        }
        let rows = self.query(
            "SELECT profile FROM profiles WHERE name = $1 AND digest = $2",
            &[name.into(), digest.into()],
        )?;
        let text = rows
            .first()
            .and_then(|r| r.first())
            .and_then(Value::text)
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::CONFLICT,
                    "profile",
                    "the runtime's profile was replaced meanwhile; ask again",
                )
            })?;
        self.profiles.get(digest, text)
    }

    /// Hands out a nonce for `req.name`.
    pub fn attest_nonce(&self, req: &NonceRequest) -> Result<NonceAnswer, Problem> {
        if !valid_name(&req.name) {
            return Err(malformed(NAME_RULE));
        }
        let t = now()?;
        let Some(rt) = self.runtime(&req.name, &[])? else {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                "runtime_unknown",
                "no such enrolled runtime",
            ));
        };
        if rt.state != "enrolled" {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "revoked",
                "this runtime is revoked",
            ));
        }
        let Some((profile_name, profile_digest)) = &rt.profile else {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "no_profile",
                "no reference profile is assigned to this runtime (writ admin assign-profile)",
            ));
        };
        let profile = self.loaded_profile(profile_name, profile_digest)?;
        let selection = required_selection(&profile).map_err(|e| {
            Problem::new(
                StatusCode::CONFLICT,
                "profile",
                format!("the runtime's profile requires no PCR selection: {e}"),
            )
        })?;
        let nonce = random::<32>()?;
        let expires_at = t.saturating_add(self.config.nonce_ttl);
        let effect = vec![
            Op {
                sql: "DELETE FROM nonces WHERE expires_at < $1",
                params: vec![t.saturating_sub(NONCE_KEEP).into()],
                must_affect: None,
            },
            Op {
                sql: "INSERT INTO nonces (nonce_hash, name, expires_at)
                      SELECT $1, $2, $3
                      WHERE (SELECT COUNT(*) FROM nonces
                             WHERE name = $2 AND used_at IS NULL AND expires_at > $4) < $5",
                params: vec![
                    Sha256::digest(nonce).to_vec().into(),
                    req.name.clone().into(),
                    expires_at.into(),
                    t.into(),
                    MAX_PENDING_NONCES.into(),
                ],
                must_affect: Some((
                    "too_many_nonces",
                    "this runtime holds too many unused nonces; use one or wait for them to expire",
                )),
            },
        ];
        match self.log.write_state(effect) {
            Ok(()) => {}
            Err(StoreError::Conflict { code, detail }) => {
                return Err(Problem::new(StatusCode::TOO_MANY_REQUESTS, code, detail));
            }
            Err(e) => return Err(store_problem(e)),
        }
        Ok(NonceAnswer {
            nonce: STANDARD.encode(nonce),
            expires_at,
            selection: selection.to_string(),
            profile: profile_name.clone(),
            holder_pcr_policy: profile.profile().holder_pcr_policy == Some(true),
        })
    }

    /// Verifies an attestation; see the module's documentation.
    pub fn attest(&self, req: &AttestRequest) -> Result<AttestAnswer, Problem> {
        if !valid_name(&req.name) {
            return Err(malformed(NAME_RULE));
        }
        let nonce_bytes = b64("nonce", &req.nonce)?;
        let quote_attest = b64("quote.attest", &req.quote.attest)?;
        let quote_sig = b64("quote.signature", &req.quote.signature)?;
        let holder_public = b64("holder.public", &req.holder.public)?;
        let certify_attest = b64("holder.certify.attest", &req.holder.certify.attest)?;
        let certify_sig = b64("holder.certify.signature", &req.holder.certify.signature)?;
        let log_bytes = b64("event_log", &req.event_log)?;
        if log_bytes.len() > MAX_EVENT_LOG {
            return Err(malformed(format!(
                "the event log is larger than {MAX_EVENT_LOG} bytes"
            )));
        }
        let pcrs = parse_pcrs(&req.pcrs)?;
        let nonce = Nonce::new(&nonce_bytes).map_err(|e| malformed(format!("nonce: {e}")))?;
        let t = now()?;
        let nonce_hash = Sha256::digest(&nonce_bytes).to_vec();
        let Some(rt) = self.runtime(&req.name, &nonce_hash)? else {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                "runtime_unknown",
                "no such enrolled runtime",
            ));
        };
        let ak = CheckedAk::from_tpmt(&rt.ak_public).map_err(|e| {
            tracing::error!(runtime = %req.name, "stored AK: {e}");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_corrupt",
                "the runtime's stored AK does not load",
            )
        })?;
        let subject = self.runtime_id(&req.name);
        let mut digests: Vec<(&str, String)> = vec![
            ("nonce", digest(&nonce_bytes)),
            ("quote", digest(&quote_attest)),
            // Hashed once: the stored result repeats these.
            ("event_log", digest(&log_bytes)),
            ("ak", digest(&rt.ak_public)),
        ];

        // The profile decides the selection; without one nothing can be appraised.
        let profile = match &rt.profile {
            Some((name, d)) => Some(self.loaded_profile(name, d)?),
            None => None,
        };
        let required = profile
            .as_deref()
            .map(required_selection)
            .transpose()
            .map_err(|e| {
                Problem::new(
                    StatusCode::CONFLICT,
                    "profile",
                    format!("the runtime's profile requires no PCR selection: {e}"),
                )
            })?;
        let provider = default_provider();
        // The quote first: until its signature verifies with the runtime's AK, nobody is
        // identified (any name can be claimed) and the refusal is not a record.
        // Without a profile there is no selection to require; the signature still decides who
        // is asking (the selection check then fails, and `no_profile` is the refusal).
        let placeholder;
        let selection = match &required {
            Some(sel) => sel,
            None => {
                placeholder = PcrSelection::new(vec![(HashAlg::Sha256, vec![0])])
                    .map_err(|e| malformed(e.to_string()))?;
                &placeholder
            }
        };
        let quote = verify_quote(
            provider,
            &ak,
            &quote_attest,
            &quote_sig,
            &nonce,
            selection,
            &pcrs,
        );
        // Only these failures can follow a verified signature (verify_quote checks the
        // signature first); anything else, whatever it is, is a quote nobody is known to have
        // signed.
        if let Err(e) = &quote
            && !matches!(
                e,
                EvidenceError::Magic(_)
                    | EvidenceError::AttestType { .. }
                    | EvidenceError::NonceMismatch
                    | EvidenceError::PcrSelection(_)
                    | EvidenceError::PcrValue(_)
                    | EvidenceError::PcrDigest
            )
        {
            return Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                e.code(),
                format!("the quote is not signed by this runtime's AK: {e}"),
            ));
        }

        // Identified from here on: every refusal is logged before it is answered.
        let deny =
            |code: &'static str, status: StatusCode, detail: String, effect: Vec<Op>| match self
                .append_decision(Kind::Attest, &subject, &[code], &digests, None, effect)
            {
                Ok(Ok(_)) => Problem::new(status, code, detail).identified(),
                Ok(Err(StoreError::Conflict { code, detail })) => self.deny(
                    Rec {
                        kind: Kind::Attest,
                        subject: &subject,
                        reason: Some(code),
                        digests: &digests,
                    },
                    StatusCode::FORBIDDEN,
                    detail,
                ),
                Ok(Err(e)) => store_problem(e),
                Err(p) => p,
            };
        let spend = Op {
            sql: "UPDATE nonces SET used_at = $3
                  WHERE nonce_hash = $1 AND name = $2 AND used_at IS NULL AND expires_at > $3",
            params: vec![nonce_hash.clone().into(), req.name.clone().into(), t.into()],
            must_affect: Some(("nonce_consumed", "this nonce was already used")),
        };
        match &rt.nonce {
            None => {
                return Err(deny(
                    "nonce_unknown",
                    StatusCode::FORBIDDEN,
                    "this nonce was not handed out (or expired long ago); ask for a new one".into(),
                    Vec::new(),
                ));
            }
            Some(r) if r.first().and_then(Value::text) != Some(req.name.as_str()) => {
                return Err(deny(
                    "nonce_foreign",
                    StatusCode::FORBIDDEN,
                    "this nonce was handed out for another runtime".into(),
                    Vec::new(),
                ));
            }
            Some(r) if !matches!(r.get(2), Some(Value::Null)) => {
                return Err(deny(
                    "nonce_consumed",
                    StatusCode::FORBIDDEN,
                    "this nonce was already used; ask for a new one".into(),
                    Vec::new(),
                ));
            }
            Some(r) if r.get(1).and_then(Value::int).unwrap_or(0) <= t => {
                return Err(deny(
                    "nonce_expired",
                    StatusCode::FORBIDDEN,
                    "this nonce has expired; ask for a new one".into(),
                    Vec::new(),
                ));
            }
            Some(_) => {}
        }
        // From here on every decision spends the nonce with its record.
        if rt.state != "enrolled" {
            return Err(deny(
                "revoked",
                StatusCode::FORBIDDEN,
                "this runtime is revoked".into(),
                vec![spend],
            ));
        }
        let Some(profile) = profile else {
            return Err(deny(
                "no_profile",
                StatusCode::CONFLICT,
                "no reference profile is assigned to this runtime".into(),
                vec![spend],
            ));
        };
        let quote = match quote {
            Ok(q) => q,
            Err(e) => {
                return Err(deny(
                    e.code(),
                    StatusCode::FORBIDDEN,
                    format!("the quote does not verify: {e}"),
                    vec![spend],
                ));
            }
        };
        let holder = match verify_certify(
            provider,
            &ak,
            &certify_attest,
            &certify_sig,
            &nonce,
            &holder_public,
        )
        .and_then(|c| c.jwk().map(|j| (c, j)))
        {
            Ok(h) => h,
            Err(e) => {
                return Err(deny(
                    certify_code(&e),
                    StatusCode::FORBIDDEN,
                    format!("the holder key's certification does not verify: {e}"),
                    vec![spend],
                ));
            }
        };
        // The profile may ask for a holder key that works only while the quoted PCRs hold
        // their values.
        if profile.profile().holder_pcr_policy == Some(true) {
            let public = holder.0.public();
            let bound =
                writ_attestation::tpm::policy::pcr_and_auth_value(quote.selection(), quote.pcrs())
                    .is_ok_and(|expected| public.auth_policy() == expected.as_slice())
                    && !public.has(writ_attestation::tpm::public::attr::USER_WITH_AUTH);
            if !bound {
                return Err(deny(
                    "holder_policy",
                    StatusCode::FORBIDDEN,
                    "the profile requires a holder key bound to the attested PCR values \
                     (authPolicy PolicyPCR over the quoted selection and values, then \
                     PolicyAuthValue; userWithAuth clear); this one is not"
                        .into(),
                    vec![spend],
                ));
            }
        }
        let jkt = holder.1.thumbprint();
        digests.push(("holder", digest(holder.0.public().tpmt_bytes())));

        // The appraisal: the log against the quote and the profile; the instance is the
        // enrolled one (the AK was bound to its EK by credential activation).
        let identity = TpmIdentity::enrolled(tpm_attributes(&rt.tpm), false);
        let mut appraisal = match writ_attestation::eventlog::parse(&log_bytes) {
            Ok(log) => appraise(&profile, &log, &quote, Some(&identity)),
            Err(e) => Appraisal::unreadable(
                profile.id(),
                values::CRYPTO_FAILED,
                reason(
                    "event_log",
                    Claim::Configuration,
                    "event_log",
                    format!("the event log does not parse: {e}"),
                ),
            ),
        };
        appraisal.set_instance_identity(values::TRUSTWORTHY_INSTANCE);

        // The counters against the last verified quote of this runtime.
        let clock = quote.clock();
        let (generation, change, before, flagged) = match &rt.last {
            None => (0, None, None, None),
            Some(r) => {
                let int = |i: usize| r.get(i).and_then(Value::int).unwrap_or(0);
                let before = ClockInfo {
                    clock: u64::try_from(int(3)).unwrap_or(0),
                    reset_count: u32::try_from(int(1)).unwrap_or(0),
                    restart_count: u32::try_from(int(2)).unwrap_or(0),
                    safe: true,
                };
                (
                    int(0),
                    Some(quote.counters_since(&before)),
                    Some(before),
                    r.get(4).and_then(Value::text).map(str::to_string),
                )
            }
        };
        // Once the counters went backwards, the runtime stays contraindicated until an admin
        // re-baselines it: the restored TPM's next quote would otherwise compare with its own
        // (lower) counters and look unchanged.
        if let Some(counter) = &flagged {
            appraisal.fail(
                values::UNTRUSTWORTHY_INSTANCE,
                reason(
                    "counters_rollback",
                    Claim::InstanceIdentity,
                    "counters",
                    format!(
                        "an earlier attestation saw the TPM's {counter} go backwards; it stays contraindicated until an admin re-baselines it (writ admin rebaseline)"
                    ),
                ),
            );
        }
        let counters = match change {
            None => "first".to_string(),
            Some(CounterChange::Unchanged) => "unchanged".into(),
            Some(CounterChange::Reboot) => "reboot".into(),
            Some(CounterChange::Jump { .. }) => "reboots".into(),
            Some(CounterChange::Restart) => "restart".into(),
            Some(CounterChange::Rollback { counter }) => {
                appraisal.fail(
                    values::UNTRUSTWORTHY_INSTANCE,
                    reason(
                        "counters_rollback",
                        Claim::InstanceIdentity,
                        "counters",
                        format!(
                            "the TPM's {counter} went backwards since the last attestation (a cleared or restored TPM, or replayed evidence)"
                        ),
                    ),
                );
                format!("rollback:{counter}")
            }
            Some(_) => "changed".into(),
        };
        let rollback = match (&flagged, change) {
            (Some(c), _) => Some(c.clone()),
            (None, Some(CounterChange::Rollback { counter })) => Some(counter.to_string()),
            _ => None,
        };
        // What is kept to compare the next quote with: this one's counters, or, after a
        // rollback, the highest seen.
        let kept = match (&rollback, before) {
            (Some(_), Some(b)) => b,
            _ => clock,
        };

        // The EAR, for an affirming or warning result only; signed before the record, released
        // after it.
        let affirmed = matches!(appraisal.status, Status::Affirming | Status::Warning);
        let expires_at = t.saturating_add(self.config.ear_ttl);
        let ear = if affirmed {
            match self.sign_ear(&appraisal, &subject, &nonce_bytes, &jkt, t, expires_at) {
                Ok(token) => {
                    digests.push(("ear", digest(token.as_bytes())));
                    Some(token)
                }
                // Nothing is issued; the refusal is a decision, and it spends the nonce. The
                // runtime's state stays as it was.
                Err(p) => {
                    return Err(
                        match self.append_decision(
                            Kind::Attest,
                            &subject,
                            &["ear_signing"],
                            &digests,
                            None,
                            vec![spend],
                        ) {
                            Ok(Ok(_)) => p,
                            Ok(Err(e)) => store_problem(e),
                            Err(p2) => p2,
                        },
                    );
                }
            }
        } else {
            None
        };
        let reasons_json: Vec<serde_json::Value> = appraisal
            .reasons
            .iter()
            .map(|r| serde_json::to_value(r).unwrap_or(serde_json::Value::Null))
            .collect();
        let result = json!({
            "status": appraisal.status.as_str(),
            "vector": appraisal.vector,
            "reasons": reasons_json,
            "counters": counters,
            "evidence": digests.iter().take(3).map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        })
        .to_string();
        let effect = vec![
            spend.clone(),
            Op {
                // The runtime is still enrolled with this AK when the result is stored.
                sql: "UPDATE runtimes SET changed_at = changed_at
                      WHERE name = $1 AND state = 'enrolled' AND ak_public = $2",
                params: vec![req.name.clone().into(), rt.ak_public.clone().into()],
                must_affect: Some(("revoked", "this runtime was revoked meanwhile")),
            },
            Op {
                // Replaces the state it was appraised against, never a newer one; except that
                // a contraindicated result always replaces the state (with a newer generation),
                // leaving the counters of the newer attestation.
                sql: "INSERT INTO attestations
                      (name, generation, status, result, profile, reset_count, restart_count,
                       clock, holder_jkt, ear_digest, attested_at, rollback)
                      VALUES ($1, $12, $3, $4, $5, $6, $7, $8, $9, $10, $11, $13)
                      ON CONFLICT (name) DO UPDATE SET
                          generation = CASE WHEN attestations.generation >= excluded.generation
                                            THEN attestations.generation + 1
                                            ELSE excluded.generation END,
                          status = excluded.status, result = excluded.result,
                          profile = excluded.profile,
                          reset_count = CASE WHEN attestations.generation = $2
                                             THEN excluded.reset_count
                                             ELSE attestations.reset_count END,
                          restart_count = CASE WHEN attestations.generation = $2
                                               THEN excluded.restart_count
                                               ELSE attestations.restart_count END,
                          clock = CASE WHEN attestations.generation = $2
                                       THEN excluded.clock ELSE attestations.clock END,
                          holder_jkt = excluded.holder_jkt, ear_digest = excluded.ear_digest,
                          attested_at = excluded.attested_at,
                          rollback = COALESCE(excluded.rollback, attestations.rollback)
                      WHERE attestations.generation = $2 OR excluded.status = 'contraindicated'",
                params: vec![
                    req.name.clone().into(),
                    generation.into(),
                    appraisal.status.as_str().into(),
                    result.into(),
                    profile.id().into(),
                    i64::from(kept.reset_count).into(),
                    i64::from(kept.restart_count).into(),
                    i64::try_from(kept.clock).unwrap_or(i64::MAX).into(),
                    jkt.clone().into(),
                    ear.as_deref()
                        .map(|e| digest(e.as_bytes()))
                        .unwrap_or_default()
                        .into(),
                    t.into(),
                    generation.saturating_add(1).into(),
                    rollback.clone().map_or(Value::Null, Value::from),
                ],
                must_affect: Some((
                    "attestation_raced",
                    "another attestation of this runtime was recorded meanwhile",
                )),
            },
        ];
        let codes: Vec<&'static str> = if affirmed {
            Vec::new()
        } else if appraisal.reasons.is_empty() {
            vec!["appraisal"]
        } else {
            appraisal.reasons.iter().map(|r| r.code).collect()
        };
        let index =
            match self.append_decision(Kind::Attest, &subject, &codes, &digests, None, effect)? {
                Ok(i) => i,
                // Revoked or overtaken meanwhile: refused, and the nonce is spent with the refusal
                // (if another use spent it first, that is the refusal).
                Err(StoreError::Conflict { code, detail }) => {
                    return Err(
                        match self.append_decision(
                            Kind::Attest,
                            &subject,
                            &[code],
                            &digests,
                            None,
                            vec![spend],
                        )? {
                            Ok(_) => Problem::new(StatusCode::FORBIDDEN, code, detail).identified(),
                            Err(StoreError::Conflict { code, detail }) => self.deny(
                                Rec {
                                    kind: Kind::Attest,
                                    subject: &subject,
                                    reason: Some(code),
                                    digests: &digests,
                                },
                                StatusCode::FORBIDDEN,
                                detail,
                            ),
                            Err(e) => store_problem(e),
                        },
                    );
                }
                Err(e) => return Err(store_problem(e)),
            };
        match ear {
            Some(ear) => Ok(AttestAnswer {
                spiffe_id: subject,
                status: appraisal.status.as_str().to_string(),
                ear,
                expires_at,
                holder_jkt: jkt,
                counters,
                reset_count: clock.reset_count,
                restart_count: clock.restart_count,
                reasons: reasons_json,
                log_index: index,
            }),
            None => {
                let first = codes.first().copied().unwrap_or("appraisal");
                let list: Vec<String> = appraisal.reasons.iter().map(|r| r.to_string()).collect();
                Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    first,
                    format!(
                        "appraisal {}: {}; this is now the runtime's state",
                        appraisal.status.as_str(),
                        list.join("; ")
                    ),
                )
                .identified())
            }
        }
    }

    fn sign_ear(
        &self,
        appraisal: &Appraisal,
        subject: &str,
        nonce: &[u8],
        jkt: &str,
        iat: i64,
        exp: i64,
    ) -> Result<String, Problem> {
        let unavailable =
            |detail: String| Problem::new(StatusCode::SERVICE_UNAVAILABLE, "ear_signing", detail);
        let key = self
            .signing_key("ear", iat)
            .ok_or_else(|| unavailable("no ear key is configured (keys.ear)".into()))?;
        let build = format!("writ {}", env!("CARGO_PKG_VERSION"));
        let mut claims = writ_attestation::ear::claims(
            appraisal,
            writ_attestation::ear::Context {
                iat: u64::try_from(iat).unwrap_or(0),
                nonce: Some(nonce),
                build: &build,
            },
        );
        if let Some(map) = claims.as_object_mut() {
            map.insert("iss".into(), json!(self.appliance_id()));
            map.insert("sub".into(), json!(subject));
            map.insert("exp".into(), json!(exp));
            map.insert("cnf".into(), json!({ "jkt": jkt }));
        }
        let kid =
            writ_attestation::jwk::EcJwk::from_verifying_key(key.public_key().verifying_key())
                .thumbprint();
        let header = json!({"alg": "ES256", "typ": "ear+jwt", "kid": kid});
        writ_attestation::writ::jws::sign(
            &header,
            &claims,
            &writ_hsm::signer::JwsSigner(Arc::clone(&key)),
        )
        .map_err(|e| {
            self.metrics.error("custody", "ear_signing");
            unavailable(format!("the EAR could not be signed: {}", e.detail))
        })
    }

    /// Loads (or replaces) a reference profile under `name`; it is checked first and a bad
    /// one leaves the old one in force.
    pub fn load_profile(
        &self,
        admin: &str,
        name: &str,
        profile: &serde_json::Value,
    ) -> Result<String, Problem> {
        if !valid_name(name) {
            return Err(self.admin_refused(admin, malformed(NAME_RULE)));
        }
        let text = writ_attestation::jcs::canonical(profile)
            .map_err(|e| self.admin_refused(admin, malformed(format!("profile: {e}"))))?;
        let loaded = LoadedProfile::from_json(text.as_bytes()).map_err(|e| {
            self.admin_refused(
                admin,
                Problem::new(StatusCode::BAD_REQUEST, "profile", e.to_string()),
            )
        })?;
        let id = loaded.id().to_string();
        self.admin_record(
            admin,
            &[
                ("profile", id.clone()),
                ("profile_name", digest(name.as_bytes())),
            ],
            vec![Op {
                sql: "INSERT INTO profiles (name, profile, digest, loaded_at)
                      VALUES ($1, $2, $3, $4)
                      ON CONFLICT (name) DO UPDATE SET profile = excluded.profile,
                          digest = excluded.digest, loaded_at = excluded.loaded_at",
                params: vec![name.into(), text.into(), id.clone().into(), now()?.into()],
                must_affect: None,
            }],
        )?;
        Ok(id)
    }

    /// Forgets the runtime's current appraisal and the TPM counters it was compared with (after
    /// a counter rollback, once an admin knows why: a TPM cleared on purpose). Its next
    /// attestation is its first.
    pub fn rebaseline(&self, admin: &str, name: &str) -> Result<(), Problem> {
        if !valid_name(name) {
            return Err(self.admin_refused(admin, malformed(NAME_RULE)));
        }
        self.admin_record(
            admin,
            &[("rebaselined", digest(self.runtime_id(name).as_bytes()))],
            vec![Op {
                sql: "DELETE FROM attestations WHERE name = $1",
                params: vec![name.into()],
                must_affect: Some((
                    "runtime_unknown",
                    "this runtime has no attestation to forget",
                )),
            }],
        )?;
        Ok(())
    }

    /// Assigns the profile `profile` to the runtime `name`.
    pub fn assign_profile(&self, admin: &str, name: &str, profile: &str) -> Result<(), Problem> {
        if !valid_name(name) || !valid_name(profile) {
            return Err(self.admin_refused(admin, malformed(NAME_RULE)));
        }
        self.admin_record(
            admin,
            &[
                ("runtime", digest(self.runtime_id(name).as_bytes())),
                ("profile_name", digest(profile.as_bytes())),
            ],
            vec![Op {
                sql: "UPDATE runtimes SET profile = $2
                      WHERE name = $1 AND EXISTS (SELECT 1 FROM profiles WHERE name = $2)",
                params: vec![name.into(), profile.into()],
                must_affect: Some(("runtime_unknown", "no such runtime, or no such profile")),
            }],
        )?;
        Ok(())
    }
}

/// The TPM attributes enrollment stored (from the verified EK certificate).
fn tpm_attributes(stored: &str) -> TpmAttributes {
    let v: serde_json::Value = serde_json::from_str(stored).unwrap_or(serde_json::Value::Null);
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    TpmAttributes {
        manufacturer: field("manufacturer"),
        model: field("model"),
        version: field("version"),
    }
}
