//! Log inclusion at the gateway (interfaces.md, "Log inclusion at the gateway"): the writ's
//! `issue` record is in the decision log under a checkpoint signed by the log's key (from the
//! trust bundle), and that checkpoint is consistent with the last one this host's gateways saw
//! (kept in the replay store; [`SqliteReplay::observe_checkpoint`](crate::replay::SqliteReplay)).

use writ_attestation::crypto::CryptoProvider;
use writ_attestation::log::audit::{SeenRefusal, VerifiedInclusion, verify_bundle};
use writ_attestation::log::record::{Decision, DecisionRecord, Kind};
use writ_attestation::writ::Refusal;
use writ_attestation::writ::bundle::TrustBundle;

fn bad(why: impl Into<String>) -> Refusal {
    Refusal::new("inclusion", why)
}

/// Verifies an inclusion bundle for the compact writ `token`: the checkpoint is signed by the
/// trust bundle's log key for its origin, the record is at its index under the checkpoint's
/// root, and it is the `issue` allow whose `digests.writ` is the writ's SHA-256.
pub fn check_inclusion(
    provider: &dyn CryptoProvider,
    inclusion: &[u8],
    trust: &TrustBundle,
    token: &str,
) -> Result<VerifiedInclusion, Refusal> {
    let keys = trust
        .log_keys()
        .map_err(|e| bad(format!("the trust bundle's log key: {}", e.detail)))?;
    let v = verify_bundle(provider, inclusion, &keys, &trust.log_origin)
        .map_err(|e| bad(format!("the inclusion bundle: {e}")))?;
    let record = DecisionRecord::from_leaf(&v.record)
        .map_err(|e| bad(format!("the included record: {e}")))?;
    let want = writ_attestation::writ::token_digest(token);
    if record.kind != Kind::Issue
        || record.decision != Decision::Allow
        || record.digests.get("writ") != Some(&want)
    {
        return Err(bad(
            "the included record is not the issuance of this writ (kind issue, allow, digests.writ)",
        ));
    }
    Ok(v)
}

/// The refusal for a checkpoint not accepted after the one seen.
pub fn seen_refusal(r: SeenRefusal) -> Refusal {
    match r {
        SeenRefusal::Older { seen } => Refusal::new(
            "inclusion_stale",
            format!(
                "the inclusion bundle's checkpoint is older than the one this gateway saw (tree size {seen}): fetch it again"
            ),
        ),
        SeenRefusal::NeedsProof { seen } => Refusal::new(
            "inclusion_consistency",
            format!(
                "this gateway last saw tree size {seen}: the inclusion bundle must carry a consistency proof from it (GET /v1/log/bundle?...&from_size={seen}; writ agent inclusion --from-size {seen})"
            ),
        ),
        SeenRefusal::Inconsistent(why) => Refusal::new(
            "inclusion_fork",
            format!("the log's checkpoint is not an extension of the one this gateway saw: {why}"),
        ),
    }
}
