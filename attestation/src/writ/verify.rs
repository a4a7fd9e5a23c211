//! The one offline verification of a writ, shared by every caller (gateway, `writ-gate verify`,
//! tests). It cannot be half-used: the only way to an [`Authorized`] value is through
//! [`check`], which runs every check in order, and then consuming its [`Checked`], which records
//! single use last ([`verify`] does both).
//!
//! Order: strict JWS parsing; the `kid`'s key from the trust bundle, of purpose `issuer` (the
//! algorithm is the key's, ES256); the signature; the payload type-checks; `iss` is the
//! bundle's appliance; `aud`; `nbf`/`iat`/`exp` with bounded skew; the form (only execution writs
//! run); the request binding (`act.req` equals the digest the caller recomputed from what it is
//! about to run); the holder proof (required; by the `cnf.jkt` key, for this writ and request);
//! the EAR status and the accepted policy bundle hash; then single use of the writ's `jti` and
//! the proof's (`jkt`, `jti`), recorded atomically, both or neither.
//!
//! [`check`] runs everything but single use and returns a [`Checked`], which authorizes nothing
//! until it is consumed through a [`ReplayStore`] or an [`AsyncReplayStore`]; [`verify`] is the
//! two in one call.

use std::future::Future;
use std::pin::Pin;

use super::Refusal;
use super::bundle::{Purpose, TrustBundle};
use super::claims::{Form, WritClaims};
use super::dpop::{self, Expected, VerifiedProof};
use super::jws::{HeaderShape, TYP_WRIT, parse};
use crate::crypto::CryptoProvider;

/// A single-use key (interfaces.md, "Single use"). Another holder's proof `jti` can never
/// collide with these: proofs are keyed by (`jkt`, `jti`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReplayKey {
    /// A writ's `jti`.
    Writ {
        /// The writ's `jti`.
        jti: String,
    },
    /// A proof's (`jkt`, `jti`).
    Proof {
        /// The holder key's thumbprint.
        jkt: String,
        /// The proof's `jti`.
        jti: String,
    },
}

/// Where single use is recorded. `consume` inserts every key if none is present, atomically,
/// and keeps them until `keep_until` (seconds); it answers `Ok(false)` if any was present (a
/// replay), and an error if it cannot record (the caller refuses).
pub trait ReplayStore {
    /// Insert-if-absent of all `keys`, atomically.
    fn consume(&self, keys: &[ReplayKey], keep_until: i64) -> Result<bool, Refusal>;
}

/// A replay store for callers on an async runtime (the proxy): the same contract as
/// [`ReplayStore`], answered by a future, so that the caller's thread verifies other requests
/// while a commit is on its way to disk.
pub trait AsyncReplayStore: Send + Sync {
    /// Insert-if-absent of all `keys`, atomically.
    fn consume_async<'a>(
        &'a self,
        keys: &'a [ReplayKey],
        keep_until: i64,
    ) -> Pin<Box<dyn Future<Output = Result<bool, Refusal>> + Send + 'a>>;
}

/// What the caller is about to run, and its context.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The writ (compact JWS).
    pub token: &'a str,
    /// The DPoP proof (`None` is a refusal: the proof is always required).
    pub proof: Option<&'a str>,
    /// The request digest recomputed from what will run.
    pub request_digest: &'a str,
    /// The proof's expected `htm` (`EXEC` for commands) and `htu` (`exec:` + digest for
    /// commands; the URL without query for HTTP).
    pub htm: &'a str,
    /// See `htm`.
    pub htu: &'a str,
    /// This gateway's audience.
    pub audience: &'a str,
    /// Now, seconds since the Unix epoch.
    pub now: i64,
    /// Tolerated clock skew, seconds.
    pub skew: i64,
    /// The DPoP nonce this gateway requires, if any.
    pub nonce: Option<&'a str>,
    /// The oldest trust bundle accepted, seconds since it was issued (a bundle past it, or past
    /// its expiry, refuses everything).
    pub max_bundle_age: i64,
}

/// A writ that passed every check and was consumed. Only consuming a [`Checked`] makes one.
#[derive(Debug, Clone)]
pub struct Authorized {
    claims: WritClaims,
    proof: VerifiedProof,
}

impl Authorized {
    /// The writ's claims.
    pub fn claims(&self) -> &WritClaims {
        &self.claims
    }
    /// The holder proof that came with it.
    pub fn proof(&self) -> &VerifiedProof {
        &self.proof
    }
}

/// A writ that passed every check but single use. It authorizes nothing: only consuming it
/// ([`Checked::consume`], [`Checked::consume_async`]) gives an [`Authorized`]. Only [`check`]
/// makes one.
#[derive(Debug)]
pub struct Checked {
    claims: WritClaims,
    proof: VerifiedProof,
    keys: [ReplayKey; 2],
    keep_until: i64,
}

fn replayed() -> Refusal {
    Refusal::new("replayed", "this writ or this proof was already used")
}

impl Checked {
    /// The writ's claims (verified; nothing is authorized until it is consumed).
    pub fn claims(&self) -> &WritClaims {
        &self.claims
    }

    /// Records single use (both keys or neither) and, if both were fresh, authorizes.
    pub fn consume(self, store: &dyn ReplayStore) -> Result<Authorized, Refusal> {
        if !store.consume(&self.keys, self.keep_until)? {
            return Err(replayed());
        }
        Ok(Authorized {
            claims: self.claims,
            proof: self.proof,
        })
    }

    /// [`Checked::consume`] through an async store.
    pub async fn consume_async(self, store: &dyn AsyncReplayStore) -> Result<Authorized, Refusal> {
        if !store.consume_async(&self.keys, self.keep_until).await? {
            return Err(replayed());
        }
        Ok(Authorized {
            claims: self.claims,
            proof: self.proof,
        })
    }
}

/// Verifies a writ for one exact request and consumes it.
pub fn verify(
    provider: &dyn CryptoProvider,
    bundle: &TrustBundle,
    ctx: &Context<'_>,
    store: &dyn ReplayStore,
) -> Result<Authorized, Refusal> {
    check(provider, bundle, ctx)?.consume(store)
}

/// The largest clock skew a caller may tolerate, seconds.
pub const MAX_SKEW: i64 = 300;

/// Every check of [`verify`] in its order, except single use, which the caller records next
/// through [`Checked`].
pub fn check(
    provider: &dyn CryptoProvider,
    bundle: &TrustBundle,
    ctx: &Context<'_>,
) -> Result<Checked, Refusal> {
    if !(0..=MAX_SKEW).contains(&ctx.skew) {
        return Err(Refusal::new(
            "skew",
            format!("a clock skew of {} s (0 to {MAX_SKEW})", ctx.skew),
        ));
    }
    // A stale or expired bundle refuses everything, whoever calls.
    bundle.check(ctx.now, ctx.max_bundle_age, None)?;
    let unverified = parse(ctx.token, TYP_WRIT, HeaderShape::Kid)?;
    let kid = unverified
        .kid()
        .ok_or_else(|| Refusal::new("header", "no kid"))?;
    let key = bundle.key(kid, Purpose::Issuer)?;
    let payload = unverified.verify(provider, key)?;
    let claims = WritClaims::from_payload(payload)?;
    if claims.iss != bundle.appliance_id() {
        return Err(Refusal::new(
            "issuer",
            format!("iss {:?} is not this trust domain's appliance", claims.iss),
        ));
    }
    if claims.aud != ctx.audience {
        return Err(Refusal::new(
            "audience",
            format!("the writ is for {:?}, not this gateway", claims.aud),
        ));
    }
    claims.check_time(ctx.now, ctx.skew)?;
    let Form::Execution(act) = claims.form() else {
        return Err(Refusal::new(
            "form",
            "a delegation writ runs nothing (present it to the appliance as a parent)",
        ));
    };
    if act.req != ctx.request_digest {
        return Err(Refusal::new(
            "binding_mismatch",
            "the request is not the one the writ authorizes",
        ));
    }
    let proof = ctx
        .proof
        .ok_or_else(|| Refusal::new("proof_missing", "no holder proof"))?;
    let proof = dpop::verify(
        provider,
        proof,
        &Expected {
            jkt: &claims.cnf.jkt,
            htm: ctx.htm,
            htu: ctx.htu,
            token: ctx.token,
            now: ctx.now,
            skew: ctx.skew,
            nonce: ctx.nonce,
        },
    )?;
    if claims.att.status != crate::appraisal::Status::Affirming.as_str() {
        return Err(Refusal::new(
            "attestation",
            format!("issued on an EAR status of {:?}", claims.att.status),
        ));
    }
    if !bundle.policy_bundles.contains(&claims.att.policy) {
        return Err(Refusal::new(
            "policy",
            "the writ's policy bundle hash is not accepted by the trust bundle",
        ));
    }
    // Single use, recorded last by `Checked`: both keys or neither, kept past expiry plus skew.
    let keys = [
        ReplayKey::Writ {
            jti: claims.jti.clone(),
        },
        ReplayKey::Proof {
            jkt: proof.jkt.clone(),
            jti: proof.jti.clone(),
        },
    ];
    let keep_until = claims
        .exp
        .saturating_add(ctx.skew)
        .max(ctx.now.saturating_add(ctx.skew.saturating_mul(2)));
    Ok(Checked {
        claims,
        proof,
        keys,
        keep_until,
    })
}
