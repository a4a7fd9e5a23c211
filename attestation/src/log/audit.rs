//! What an auditor (or a gateway) checks about a log, with no I/O: a checkpoint against one seen
//! before (growth proven by a consistency proof; a smaller tree is a rollback, the same size with
//! another root a fork), an inclusion bundle (interfaces.md) against the log's verifier key, and a
//! tree rebuilt from all its entries against a checkpoint.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use crate::crypto::CryptoProvider;
use crate::error::EvidenceError;
use crate::log::merkle::{Hash, RootBuilder, leaf_hash, verify_consistency, verify_inclusion};
use crate::log::note::{Checkpoint, NoteVerifier};

/// Largest inclusion bundle accepted.
pub const MAX_BUNDLE: usize = 256 * 1024;

fn bad(why: impl Into<String>) -> EvidenceError {
    EvidenceError::LogProof(why.into())
}

/// Checks that `new` extends `old` (both already verified checkpoints of one log), given the
/// consistency proof from `old.size` to `new.size` (ignored when the sizes are equal).
pub fn check_extension(
    old: &Checkpoint,
    new: &Checkpoint,
    proof: &[Hash],
) -> Result<(), EvidenceError> {
    if old.origin != new.origin {
        return Err(bad(format!(
            "checkpoints of two logs ({:?} and {:?})",
            old.origin, new.origin
        )));
    }
    if new.size < old.size {
        return Err(bad(format!(
            "the log shrank from {} to {} leaves: truncated or rolled back",
            old.size, new.size
        )));
    }
    if new.size == old.size {
        return if new.root == old.root {
            Ok(())
        } else {
            Err(bad(format!(
                "fork: two checkpoints of size {} with different roots",
                new.size
            )))
        };
    }
    verify_consistency(old.size, new.size, proof, &old.root, &new.root).map_err(|e| {
        bad(format!(
            "the tree of {} leaves is not an extension of the one of {} (rewritten or forked): {e}",
            new.size, old.size
        ))
    })
}

/// An inclusion bundle (interfaces.md) as served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleJson {
    record: String,
    index: u64,
    tree_size: u64,
    proof: Vec<String>,
    checkpoint: String,
    #[serde(default)]
    consistency: Option<ConsistencyJson>,
}

/// An inclusion bundle's optional consistency proof, from the tree size a relying party last saw
/// (it asked for it) to the bundle's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistencyJson {
    from: u64,
    proof: Vec<String>,
}

/// A verified inclusion bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedInclusion {
    /// The record (leaf bytes).
    pub record: Vec<u8>,
    /// Its index.
    pub index: u64,
    /// The checkpoint it is included in.
    pub checkpoint: Checkpoint,
    /// The consistency proof it carries (from that tree size to the checkpoint's), if any:
    /// checked only against a checkpoint seen before ([`check_against_seen`]).
    pub consistency: Option<(u64, Vec<Hash>)>,
}

/// Verifies an inclusion bundle: the checkpoint is signed by one of `keys` (the log keys a
/// relying party trusts: [`Checkpoint::verify_by_any`]) for `origin`, its size is the bundle's
/// tree size, and the record's leaf is at `index` under its root.
pub fn verify_bundle(
    provider: &dyn CryptoProvider,
    bundle: &[u8],
    keys: &[NoteVerifier],
    origin: &str,
) -> Result<VerifiedInclusion, EvidenceError> {
    if bundle.len() > MAX_BUNDLE {
        return Err(bad(format!("inclusion bundle of {} bytes", bundle.len())));
    }
    let b: BundleJson = serde_json::from_slice(bundle)
        .map_err(|e| EvidenceError::Malformed(format!("inclusion bundle: {e}")))?;
    let cp = Checkpoint::verify_by_any(provider, &b.checkpoint, keys, origin)?;
    if cp.size != b.tree_size {
        return Err(bad(format!(
            "the bundle's tree_size {} is not its checkpoint's size {}",
            b.tree_size, cp.size
        )));
    }
    let record = STANDARD
        .decode(&b.record)
        .map_err(|e| EvidenceError::Malformed(format!("inclusion bundle record: {e}")))?;
    let proof = parse_hashes(&b.proof)?;
    verify_inclusion(&leaf_hash(&record), b.index, cp.size, &proof, &cp.root)?;
    let consistency = b
        .consistency
        .map(|c| Ok::<_, EvidenceError>((c.from, parse_hashes(&c.proof)?)))
        .transpose()?;
    Ok(VerifiedInclusion {
        record,
        index: b.index,
        checkpoint: cp,
        consistency,
    })
}

/// Why a verified checkpoint is not accepted after the one a relying party saw last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeenRefusal {
    /// Older than the one seen: fetch a fresh bundle.
    Older {
        /// The size seen.
        seen: u64,
    },
    /// Larger, without a consistency proof from the size seen.
    NeedsProof {
        /// The size seen: the proof must start there.
        seen: u64,
    },
    /// Not an extension of the one seen: a fork or a rewritten log.
    Inconsistent(String),
}

/// Checks a verified checkpoint `new` against the one seen last (`seen`, of the same log), given
/// the consistency proof its bundle carries: the same size must have the same root, a larger
/// tree must come with a proof from `seen`'s size, and a smaller one is refused (fetch again).
pub fn check_against_seen(
    seen: Option<&Checkpoint>,
    new: &Checkpoint,
    consistency: Option<&(u64, Vec<Hash>)>,
) -> Result<(), SeenRefusal> {
    let Some(seen) = seen else {
        return Ok(());
    };
    if new.size < seen.size {
        return Err(SeenRefusal::Older { seen: seen.size });
    }
    if new.size == seen.size {
        return check_extension(seen, new, &[])
            .map_err(|e| SeenRefusal::Inconsistent(e.to_string()));
    }
    match consistency {
        Some((from, proof)) if *from == seen.size => {
            check_extension(seen, new, proof).map_err(|e| SeenRefusal::Inconsistent(e.to_string()))
        }
        _ => Err(SeenRefusal::NeedsProof { seen: seen.size }),
    }
}

/// Hex proof elements.
pub fn parse_hashes(hexes: &[String]) -> Result<Vec<Hash>, EvidenceError> {
    if hexes.len() > 128 {
        return Err(bad("proof too long"));
    }
    hexes
        .iter()
        .map(|h| {
            let mut out = [0u8; 32];
            if h.len() != 64 {
                return Err(bad(format!("proof element {h:?}")));
            }
            for (i, o) in out.iter_mut().enumerate() {
                *o = h
                    .get(i * 2..i * 2 + 2)
                    .and_then(|b| u8::from_str_radix(b, 16).ok())
                    .ok_or_else(|| bad(format!("proof element {h:?}")))?;
            }
            Ok(out)
        })
        .collect()
}

/// Checks that every entry, pushed in order into `rebuilt`, rebuilds the checkpoint's root.
pub fn check_entries(cp: &Checkpoint, rebuilt: &RootBuilder) -> Result<(), EvidenceError> {
    if rebuilt.size() != cp.size {
        return Err(bad(format!(
            "{} entries for a checkpoint of {}",
            rebuilt.size(),
            cp.size
        )));
    }
    if rebuilt.root() != cp.root {
        return Err(bad(format!(
            "the {} entries served do not rebuild the checkpoint's root: an entry was altered",
            cp.size
        )));
    }
    Ok(())
}
