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

/// Stored perfect subtrees of a log: `subtree(level, index)` is the root of the 2^level leaves
/// starting at `index << level`. A log's store implements it; proofs are then generated with
/// O(log² n) look-ups and no leaf list in memory.
pub trait SubtreeSource {
    /// The error a look-up can fail with.
    type Error: From<EvidenceError>;
    /// The root of the perfect subtree at `level`, `index`, which must exist.
    fn subtree(&mut self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// The root of leaves `start..end` (RFC 9162's MTH of that range), from stored subtrees: the
/// range is cut into the largest aligned perfect subtrees, folded right to left.
pub fn range_root<S: SubtreeSource>(src: &mut S, start: u64, end: u64) -> Result<Hash, S::Error> {
    if start >= end {
        return Ok(empty_root());
    }
    let mut parts: Vec<Hash> = Vec::new();
    let mut at = start;
    while at < end {
        // The largest power of two that is aligned at `at` and fits before `end`.
        let align = if at == 0 { 63 } else { at.trailing_zeros() };
        let mut level = align.min(63);
        while level > 0 && (1u64 << level) > end - at {
            level -= 1;
        }
        parts.push(src.subtree(level, at >> level)?);
        at += 1u64 << level;
    }
    let mut acc = parts
        .pop()
        .ok_or_else(|| EvidenceError::LogProof("empty range".into()))?;
    while let Some(left) = parts.pop() {
        acc = node_hash(&left, &acc);
    }
    Ok(acc)
}

fn split_u64(n: u64) -> u64 {
    let mut k = 1u64;
    while k.saturating_mul(2) < n {
        k = k.saturating_mul(2);
    }
    k
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves, from stored subtrees.
pub fn inclusion_proof_from<S: SubtreeSource>(
    src: &mut S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, S::Error> {
    if index >= size {
        return Err(
            EvidenceError::LogProof(format!("index {index} outside a tree of {size}")).into(),
        );
    }
    let mut out = Vec::new();
    let (mut start, mut end, mut i) = (0u64, size, index);
    // Walk down from the root, collecting siblings; the proof lists them bottom-up.
    while end - start > 1 {
        let k = split_u64(end - start);
        if i < k {
            out.push(range_root(src, start + k, end)?);
            end = start + k;
        } else {
            out.push(range_root(src, start, start + k)?);
            start += k;
            i -= k;
        }
    }
    out.reverse();
    Ok(out)
}

/// The consistency proof from the tree of `old_size` leaves to the tree of `size` leaves, from
/// stored subtrees (RFC 9162's PROOF).
pub fn consistency_proof_from<S: SubtreeSource>(
    src: &mut S,
    old_size: u64,
    size: u64,
) -> Result<Vec<Hash>, S::Error> {
    if old_size == 0 || old_size > size {
        return Err(EvidenceError::LogProof(format!(
            "no consistency proof from size {old_size} to {size}"
        ))
        .into());
    }
    let mut out = Vec::new();
    let (mut start, mut end, mut m, mut complete) = (0u64, size, old_size, true);
    loop {
        let n = end - start;
        if m == n {
            if !complete {
                out.push(range_root(src, start, end)?);
            }
            break;
        }
        let k = split_u64(n);
        if m <= k {
            out.push(range_root(src, start + k, end)?);
            end = start + k;
        } else {
            out.push(range_root(src, start, start + k)?);
            start += k;
            m -= k;
            complete = false;
        }
    }
    out.reverse();
    Ok(out)
}

/// A tree's right edge: its size and the perfect subtrees covering it, left to right. Builds the
/// root from leaf hashes one at a time in memory proportional to log(n) (auditors rebuilding a
/// whole log), and tells a log's store which subtrees each leaf completes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootBuilder {
    size: u64,
    frontier: Vec<(u32, Hash)>,
}

impl RootBuilder {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The right edge of a tree of `size` leaves from its perfect subtrees, left to right (one
    /// per set bit of `size`, levels decreasing).
    pub fn from_frontier(size: u64, frontier: Vec<(u32, Hash)>) -> Result<Self, EvidenceError> {
        let want: Vec<u32> = (0..64u32)
            .rev()
            .filter(|l| size & (1u64 << l) != 0)
            .collect();
        if frontier.iter().map(|(l, _)| *l).ne(want) {
            return Err(EvidenceError::LogProof(format!(
                "subtree levels do not make a tree of {size} leaves"
            )));
        }
        Ok(RootBuilder { size, frontier })
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.push_with(leaf, |_, _, _| {});
    }

    /// Appends a leaf hash; `completed(level, index, hash)` hears of each perfect subtree of
    /// level >= 1 the leaf completes.
    pub fn push_with(&mut self, leaf: Hash, mut completed: impl FnMut(u32, u64, Hash)) {
        let (mut h, mut level, mut i) = (leaf, 0u32, self.size);
        while i & 1 == 1 {
            match self.frontier.pop() {
                Some((_, left)) => h = node_hash(&left, &h),
                None => break,
            }
            level += 1;
            i >>= 1;
            completed(level, i, h);
        }
        self.frontier.push((level, h));
        self.size += 1;
    }

    /// Leaves pushed.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The perfect subtrees covering the tree, left to right.
    pub fn frontier(&self) -> &[(u32, Hash)] {
        &self.frontier
    }

    /// The root of what was pushed.
    pub fn root(&self) -> Hash {
        let mut it = self.frontier.iter().rev();
        let Some((_, last)) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, (_, left)| node_hash(left, &acc))
    }
}
