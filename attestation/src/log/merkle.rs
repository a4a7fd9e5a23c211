//! RFC 6962 / RFC 9162 Merkle trees over SHA-256: hashing, proof generation over leaf hashes, and
//! proof verification (RFC 9162 sections 2.1.3.2 and 2.1.4.2).

use sha2::{Digest, Sha256};

use crate::error::EvidenceError;

/// A SHA-256 tree hash.
pub type Hash = [u8; 32];

/// Longest proof accepted: a tree of 2^64 leaves has proofs of at most 64 hashes (consistency
/// proofs up to twice that).
const MAX_PROOF: usize = 128;

/// The hash of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// A leaf's hash: SHA-256(0x00 || data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// An interior node's hash: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two strictly smaller than `n` (n >= 2).
fn split(n: usize) -> usize {
    let mut k = 1usize;
    while k.saturating_mul(2) < n {
        k = k.saturating_mul(2);
    }
    k
}

/// The root of the tree over `leaves` (leaf hashes), RFC 9162's MTH.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => empty_root(),
        [one] => *one,
        _ => {
            let (l, r) = leaves.split_at(split(leaves.len()));
            node_hash(&root(l), &root(r))
        }
    }
}

/// The inclusion proof of leaf `index` in the tree over `leaves` (RFC 9162's PATH).
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Result<Vec<Hash>, EvidenceError> {
    if index >= leaves.len() {
        return Err(EvidenceError::LogProof(format!(
            "index {index} outside a tree of {}",
            leaves.len()
        )));
    }
    let mut proof = Vec::new();
    path(leaves, index, &mut proof);
    Ok(proof)
}

fn path(leaves: &[Hash], index: usize, out: &mut Vec<Hash>) {
    if leaves.len() <= 1 {
        return;
    }
    let k = split(leaves.len());
    let (l, r) = leaves.split_at(k);
    if index < k {
        path(l, index, out);
        out.push(root(r));
    } else {
        path(r, index - k, out);
        out.push(root(l));
    }
}

/// The consistency proof between the first `old_size` leaves and all of `leaves` (RFC 9162's
/// PROOF).
pub fn consistency_proof(leaves: &[Hash], old_size: usize) -> Result<Vec<Hash>, EvidenceError> {
    if old_size == 0 || old_size > leaves.len() {
        return Err(EvidenceError::LogProof(format!(
            "no consistency proof from size {old_size} to {}",
            leaves.len()
        )));
    }
    let mut proof = Vec::new();
    subproof(old_size, leaves, true, &mut proof);
    Ok(proof)
}

fn subproof(m: usize, leaves: &[Hash], complete: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            out.push(root(leaves));
        }
        return;
    }
    let k = split(n);
    let (l, r) = leaves.split_at(k);
    if m <= k {
        subproof(m, l, complete, out);
        out.push(root(r));
    } else {
        subproof(m - k, r, false, out);
        out.push(root(l));
    }
}

/// Verifies that `leaf` is at `index` in the tree of `size` leaves whose root is `root`.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), EvidenceError> {
    let fail = |why: &str| Err(EvidenceError::LogProof(format!("inclusion: {why}")));
    if index >= size {
        return fail("index outside the tree");
    }
    if proof.len() > MAX_PROOF {
        return fail("proof too long");
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return fail("proof longer than the path");
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return fail("proof shorter than the path");
    }
    if &r != root {
        return fail("the path does not lead to the root");
    }
    Ok(())
}

/// Verifies that the tree of `size1` leaves with root `root1` is a prefix of the tree of `size2`
/// leaves with root `root2`.
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    proof: &[Hash],
    root1: &Hash,
    root2: &Hash,
) -> Result<(), EvidenceError> {
    let fail = |why: &str| Err(EvidenceError::LogProof(format!("consistency: {why}")));
    if size1 > size2 {
        return fail("the old tree is larger than the new one");
    }
    if proof.len() > MAX_PROOF {
        return fail("proof too long");
    }
    if size1 == size2 {
        if !proof.is_empty() {
            return fail("a proof between equal sizes must be empty");
        }
        return if root1 == root2 {
            Ok(())
        } else {
            fail("same size, different roots")
        };
    }
    if size1 == 0 {
        // Every tree extends the empty tree: nothing to prove, but the old root must be the empty
        // tree's.
        if !proof.is_empty() {
            return fail("a proof from the empty tree must be empty");
        }
        return if *root1 == empty_root() {
            Ok(())
        } else {
            fail("size 0 with a non-empty root")
        };
    }
    if proof.is_empty() {
        return fail("empty proof between different sizes");
    }
    let mut path: Vec<Hash> = proof.to_vec();
    if size1.is_power_of_two() {
        path.insert(0, *root1);
    }
    let Some((first, rest)) = path.split_first() else {
        return fail("empty proof");
    };
    let (mut f_n, mut s_n) = (size1 - 1, size2 - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut f_r, mut s_r) = (*first, *first);
    for c in rest {
        if s_n == 0 {
            return fail("proof longer than needed");
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            s_r = node_hash(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return fail("proof shorter than needed");
    }
    if &f_r != root1 {
        return fail("the proof does not reproduce the old root");
    }
    if &s_r != root2 {
        return fail("the proof does not reproduce the new root");
    }
    Ok(())
}
