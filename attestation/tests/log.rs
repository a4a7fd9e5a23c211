//! RFC 6962 known answers (shared/vectors/rfc6962) with every corruption listed there, and C2SP
//! signed checkpoints through both providers.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use p256::ecdsa::SigningKey;
use p256::ecdsa::signature::Signer;
use p256::pkcs8::EncodePublicKey;
use writ_attestation::crypto::{AwsLc, CryptoProvider, RustCrypto};
use writ_attestation::log::merkle::{
    Hash, consistency_proof, empty_root, inclusion_proof, leaf_hash, node_hash, root,
    verify_consistency, verify_inclusion,
};
use writ_attestation::log::note::{Checkpoint, NoteVerifier, signed_note};

fn vectors() -> serde_json::Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/vectors/rfc6962/vectors.json");
    serde_json::from_str(&std::fs::read_to_string(p).expect("shared/vectors beside the checkout"))
        .unwrap()
}

fn h(s: &serde_json::Value) -> Hash {
    hex::decode(s.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

fn hashes(v: &serde_json::Value) -> Vec<Hash> {
    v.as_array().unwrap().iter().map(h).collect()
}

fn leaves(v: &serde_json::Value) -> Vec<Hash> {
    let inputs: Vec<Vec<u8>> = v["leaf_inputs_hex"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| hex::decode(x.as_str().unwrap()).unwrap())
        .collect();
    let computed: Vec<Hash> = inputs.iter().map(|d| leaf_hash(d)).collect();
    assert_eq!(computed, hashes(&v["leaf_hashes_hex"]), "leaf hashes");
    computed
}

#[test]
fn roots_by_size() {
    let v = vectors();
    let l = leaves(&v);
    let roots = hashes(&v["roots_by_size_hex"]);
    assert_eq!(roots[0], empty_root());
    for (n, r) in roots.iter().enumerate() {
        assert_eq!(&root(&l[..n]), r, "root of size {n}");
    }
}

#[test]
fn inclusion_proofs_match_and_verify_and_every_corruption_fails() {
    let v = vectors();
    let l = leaves(&v);
    let roots = hashes(&v["roots_by_size_hex"]);
    let mut checked = 0;
    for case in v["inclusion"].as_array().unwrap() {
        let index = case["leaf_index"].as_u64().unwrap();
        let size = case["tree_size"].as_u64().unwrap();
        let proof = hashes(&case["proof_hex"]);
        assert_eq!(
            inclusion_proof(&l[..size as usize], index as usize).unwrap(),
            proof,
            "{index}/{size}"
        );
        let r = roots[size as usize];
        let leaf = l[index as usize];
        verify_inclusion(&leaf, index, size, &proof, &r).unwrap();
        let reject = |leaf: &Hash, i: u64, n: u64, p: &[Hash], r: &Hash, why: &str| {
            assert!(
                verify_inclusion(leaf, i, n, p, r).is_err(),
                "accepted with {why} at {index}/{size}"
            );
        };
        if index > 0 {
            reject(&leaf, index - 1, size, &proof, &r, "index-1");
        }
        reject(&leaf, index + 1, size, &proof, &r, "index+1");
        if index ^ 2 != index && index ^ 2 < size {
            reject(&leaf, index ^ 2, size, &proof, &r, "index^2");
        }
        reject(&leaf, index, size * 2, &proof, &r, "size*2");
        if size / 2 != size {
            reject(&leaf, index, size / 2, &proof, &r, "size/2");
        }
        reject(
            &l[(index as usize + 1) % l.len()],
            index,
            size,
            &proof,
            &r,
            "wrong leaf",
        );
        reject(&leaf, index, size, &proof, &empty_root(), "empty-tree root");
        reject(&leaf, index, size, &proof, &[0x5a; 32], "random root");
        for extra in [[0u8; 32], empty_root(), r] {
            let mut p = proof.clone();
            p.push(extra);
            reject(&leaf, index, size, &p, &r, "appended element");
            let mut p = proof.clone();
            p.insert(0, extra);
            reject(&leaf, index, size, &p, &r, "prepended element");
        }
        for i in 0..proof.len() {
            let mut p = proof.clone();
            p[i][0] ^= 1;
            reject(&leaf, index, size, &p, &r, "flipped element");
        }
        if !proof.is_empty() {
            let mut p = proof.clone();
            p.pop();
            reject(&leaf, index, size, &p, &r, "last element removed");
            let mut p = proof.clone();
            p.insert(1.min(p.len()), [7u8; 32]);
            reject(&leaf, index, size, &p, &r, "element inserted");
        }
        checked += 1;
    }
    assert_eq!(checked, 36);
}

#[test]
fn consistency_proofs_match_and_verify_and_every_corruption_fails() {
    let v = vectors();
    let l = leaves(&v);
    let roots = hashes(&v["roots_by_size_hex"]);
    let mut checked = 0;
    for case in v["consistency"].as_array().unwrap() {
        let (m, n) = (
            case["size1"].as_u64().unwrap(),
            case["size2"].as_u64().unwrap(),
        );
        let proof = hashes(&case["proof_hex"]);
        assert_eq!(
            consistency_proof(&l[..n as usize], m as usize).unwrap(),
            proof,
            "{m}->{n}"
        );
        let (r1, r2) = (roots[m as usize], roots[n as usize]);
        verify_consistency(m, n, &proof, &r1, &r2).unwrap();
        let reject = |m1: u64, n1: u64, p: &[Hash], a: &Hash, b: &Hash, why: &str| {
            assert!(
                verify_consistency(m1, n1, p, a, b).is_err(),
                "accepted with {why} at {m}->{n}"
            );
        };
        if m == n {
            reject(m, n, &proof, &r1, &[9u8; 32], "same size, other root");
            reject(m, n, &[r1], &r1, &r2, "non-empty proof between equal sizes");
            checked += 1;
            continue;
        }
        reject(m - 1, n, &proof, &r1, &r2, "size1-1");
        reject(m + 1, n, &proof, &r1, &r2, "size1+1");
        if m ^ 2 != m && m ^ 2 <= n {
            reject(m ^ 2, n, &proof, &r1, &r2, "size1^2");
        }
        reject(m, n * 2, &proof, &r1, &r2, "size2*2");
        if n / 2 >= m && n / 2 != n {
            reject(m, n / 2, &proof, &r1, &r2, "size2/2");
        }
        reject(m, n, &proof, &[1u8; 32], &r2, "wrong root1");
        reject(m, n, &proof, &r1, &[1u8; 32], "wrong root2");
        reject(m, n, &proof, &r2, &r1, "roots swapped");
        reject(m, n, &[], &r1, &r2, "empty proof");
        for extra in [[0u8; 32], r1, r2, proof[0]] {
            let mut p = proof.clone();
            p.push(extra);
            reject(m, n, &p, &r1, &r2, "appended element");
            let mut p = proof.clone();
            p.insert(0, extra);
            reject(m, n, &p, &r1, &r2, "prepended element");
        }
        let mut p = proof.clone();
        p.pop();
        reject(m, n, &p, &r1, &r2, "last element removed");
        for i in 0..proof.len() {
            let mut p = proof.clone();
            p[i][31] ^= 0x80;
            reject(m, n, &p, &r1, &r2, "flipped element");
        }
        reject(n, m, &proof, &r2, &r1, "size1 > size2");
        checked += 1;
    }
    assert_eq!(checked, 36);
}

#[test]
fn an_interior_node_is_not_a_leaf() {
    let v = vectors();
    let l = leaves(&v);
    // The tree of 2 leaves: its root is node(l0, l1). Presenting l0 || l1 as one 64-byte leaf of a
    // 1-leaf tree with that root must fail: leaves are prefixed 0x00, nodes 0x01.
    let mut concat = l[0].to_vec();
    concat.extend_from_slice(&l[1]);
    let node = node_hash(&l[0], &l[1]);
    assert!(verify_inclusion(&leaf_hash(&concat), 0, 1, &[], &node).is_err());
    assert_ne!(leaf_hash(&concat), node);
}

const PROVIDERS: [&dyn CryptoProvider; 2] = [&RustCrypto, &AwsLc];

fn key() -> (SigningKey, NoteVerifier) {
    let k = SigningKey::from_slice(&[4u8; 32]).unwrap();
    let spki = k.verifying_key().to_public_key_der().unwrap();
    (
        k.clone(),
        NoteVerifier::from_spki("writ.example/log", spki.as_bytes()).unwrap(),
    )
}

fn sign(k: &SigningKey, v: &NoteVerifier, text: &str) -> String {
    let sig: p256::ecdsa::DerSignature = k.sign(text.as_bytes());
    signed_note(text, v, sig.as_bytes())
}

fn checkpoint(size: u64) -> Checkpoint {
    Checkpoint {
        origin: "writ.example/log".into(),
        size,
        root: [size as u8; 32],
        extensions: vec![],
    }
}

#[test]
fn signed_checkpoints_verify_with_both_providers() {
    let (k, v) = key();
    let note = sign(&k, &v, &checkpoint(8).text());
    for p in PROVIDERS {
        assert_eq!(
            Checkpoint::verify(p, &note, &v, "writ.example/log").unwrap(),
            checkpoint(8)
        );
    }
    // The verifier key's text form round-trips and names the same key.
    assert_eq!(NoteVerifier::parse(&v.to_string()).unwrap(), v);
}

#[test]
fn checkpoint_refusals() {
    let (k, v) = key();
    let text = checkpoint(8).text();
    let note = sign(&k, &v, &text);
    for p in PROVIDERS {
        let code = |n: &str, origin: &str| {
            Checkpoint::verify(p, n, &v, origin)
                .unwrap_err()
                .code()
                .to_string()
        };
        assert_eq!(
            code(&note, "other.example/log"),
            "checkpoint",
            "another origin"
        );
        assert_eq!(
            code(&note.replacen("\n8\n", "\n9\n", 1), "writ.example/log"),
            "checkpoint",
            "size changed after signing"
        );
        // Signed by another key of the same name: the key ID differs, so no signature by `v`.
        let other_k = SigningKey::from_slice(&[5u8; 32]).unwrap();
        let other_v = NoteVerifier::from_spki(
            "writ.example/log",
            other_k
                .verifying_key()
                .to_public_key_der()
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            code(&sign(&other_k, &other_v, &text), "writ.example/log"),
            "checkpoint",
            "another key"
        );
        // Another key's line is ignored when ours is there too.
        let both = format!(
            "{}{}",
            sign(&k, &v, &text),
            sign(&other_k, &other_v, &text)
                .split_once("\n\n")
                .unwrap()
                .1
        );
        Checkpoint::verify(p, &both, &v, "writ.example/log").unwrap();
        // A line with our name and key ID whose signature is wrong rejects the note.
        let mut forged = sign(&k, &v, &text);
        let sig_at = forged.rfind(' ').unwrap() + 10;
        let c = forged.as_bytes()[sig_at];
        forged.replace_range(sig_at..sig_at + 1, if c == b'A' { "B" } else { "A" });
        assert_eq!(
            code(&forged, "writ.example/log"),
            "checkpoint",
            "bad signature by a known key"
        );
        assert_eq!(code(&text, "writ.example/log"), "checkpoint", "unsigned");
    }
    // Non-canonical sizes and malformed roots.
    for bad in [
        "o\n08\nAAAA\n",
        "o\n-1\n\n",
        "o\n1\nnot base64\n",
        "\n1\nAAAA\n",
        "o\n1\n",
    ] {
        assert!(Checkpoint::parse_text(bad).is_err(), "{bad:?}");
    }
    // A verifier key whose ID does not match its key.
    let s = v.to_string();
    let mut parts: Vec<&str> = s.split('+').collect();
    parts[1] = "00000000";
    assert!(NoteVerifier::parse(&parts.join("+")).is_err());
}

/// A checkpoint signed by the log's old and new key during a rotation: a relying party holding
/// either (or both) verifies it; every line by a key it trusts must verify.
#[test]
fn checkpoints_signed_by_two_keys_verify_under_either() {
    use writ_attestation::log::note::signed_note_by;
    let (a, va) = key();
    let b = SigningKey::from_slice(&[6u8; 32]).unwrap();
    let vb = NoteVerifier::from_spki(
        "writ.example/log",
        b.verifying_key().to_public_key_der().unwrap().as_bytes(),
    )
    .unwrap();
    let (c, vc) = {
        let c = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let spki = c.verifying_key().to_public_key_der().unwrap();
        let v = NoteVerifier::from_spki("writ.example/log", spki.as_bytes()).unwrap();
        (c, v)
    };
    let text = checkpoint(8).text();
    let sa: p256::ecdsa::DerSignature = a.sign(text.as_bytes());
    let sb: p256::ecdsa::DerSignature = b.sign(text.as_bytes());
    let both = signed_note_by(&text, &[(&va, sa.as_bytes()), (&vb, sb.as_bytes())]);
    assert_eq!(both.matches('\u{2014}').count(), 2);
    let sc: p256::ecdsa::DerSignature = c.sign(text.as_bytes());
    let by_c = signed_note_by(&text, &[(&vc, sc.as_bytes())]);
    for p in PROVIDERS {
        let verify = |note: &str, keys: &[NoteVerifier]| {
            Checkpoint::verify_by_any(p, note, keys, "writ.example/log")
        };
        for keys in [
            vec![va.clone()],
            vec![vb.clone()],
            vec![va.clone(), vb.clone()],
            vec![vc.clone(), vb.clone()],
        ] {
            assert_eq!(verify(&both, &keys).unwrap(), checkpoint(8));
        }
        // No key trusted signed it; no key at all.
        assert_eq!(
            verify(&by_c, &[va.clone(), vb.clone()]).unwrap_err().code(),
            "checkpoint"
        );
        assert_eq!(verify(&both, &[]).unwrap_err().code(), "checkpoint");
        assert_eq!(
            verify(&both, std::slice::from_ref(&vc)).unwrap_err().code(),
            "checkpoint"
        );
        // B's line altered: refused by whoever trusts B, even with A's good line beside it;
        // ignored by whoever trusts only A.
        let forged = {
            let (head, sigs) = both.split_once("\n\n").unwrap();
            let mut lines: Vec<String> = sigs.lines().map(str::to_string).collect();
            let bad = writ_attestation::log::note::signed_note_by(&text, &[(&vb, sa.as_bytes())]);
            lines[1] = bad.split_once("\n\n").unwrap().1.trim_end().to_string();
            format!("{head}\n\n{}\n", lines.join("\n"))
        };
        assert_eq!(
            verify(&forged, &[va.clone(), vb.clone()])
                .unwrap_err()
                .code(),
            "checkpoint"
        );
        assert_eq!(
            verify(&forged, std::slice::from_ref(&vb))
                .unwrap_err()
                .code(),
            "checkpoint"
        );
        verify(&forged, std::slice::from_ref(&va)).unwrap();
    }
}

/// A rotated log key's endorsement by the key signing at the rotation: it verifies for that
/// key, that origin and that new key only.
#[test]
fn endorsements_name_the_endorser_the_origin_and_the_new_key() {
    use writ_attestation::log::note::{endorsement_message, endorses};
    let (a, va) = key();
    let spki = |seed: u8| {
        SigningKey::from_slice(&[seed; 32])
            .unwrap()
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec()
    };
    let (b, c) = (spki(6), spki(7));
    let sig: p256::ecdsa::DerSignature = a.sign(&endorsement_message("writ.example/log", &b));
    let vc = NoteVerifier::from_spki("writ.example/log", &c).unwrap();
    let va_elsewhere = NoteVerifier::from_spki("other.example/log", va.spki()).unwrap();
    for p in PROVIDERS {
        assert!(endorses(p, &va, &b, sig.as_bytes()));
        // Another new key, another endorser, another log, a damaged signature.
        assert!(!endorses(p, &va, &c, sig.as_bytes()));
        assert!(!endorses(p, &vc, &b, sig.as_bytes()));
        assert!(!endorses(p, &va_elsewhere, &b, sig.as_bytes()));
        let mut bad = sig.as_bytes().to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(!endorses(p, &va, &b, &bad));
        assert!(!endorses(p, &va, &b, b"not der"));
    }
}

/// Subtrees computed from a leaf list, to check the store-facing generators against the
/// in-memory ones.
struct Leaves(Vec<writ_attestation::log::merkle::Hash>);

impl writ_attestation::log::merkle::SubtreeSource for Leaves {
    type Error = writ_attestation::EvidenceError;
    fn subtree(&mut self, level: u32, index: u64) -> Result<[u8; 32], Self::Error> {
        let start = (index << level) as usize;
        let end = start + (1usize << level);
        Ok(writ_attestation::log::merkle::root(&self.0[start..end]))
    }
}

#[test]
fn proofs_from_stored_subtrees_equal_proofs_from_leaves() {
    use writ_attestation::log::merkle::{
        consistency_proof, consistency_proof_from, inclusion_proof, inclusion_proof_from,
        leaf_hash, range_root, root,
    };
    let all: Vec<[u8; 32]> = (0..70u32).map(|i| leaf_hash(&i.to_le_bytes())).collect();
    let mut src = Leaves(all.clone());
    for n in 1..=all.len() {
        let leaves = &all[..n];
        assert_eq!(
            range_root(&mut src, 0, n as u64).unwrap(),
            root(leaves),
            "root {n}"
        );
        for i in 0..n {
            assert_eq!(
                inclusion_proof_from(&mut src, i as u64, n as u64).unwrap(),
                inclusion_proof(leaves, i).unwrap(),
                "inclusion {i} in {n}"
            );
        }
        for m in 1..=n {
            assert_eq!(
                consistency_proof_from(&mut src, m as u64, n as u64).unwrap(),
                consistency_proof(leaves, m).unwrap(),
                "consistency {m} -> {n}"
            );
        }
    }
    // The incremental builder agrees, and its right edge round-trips only for the right size.
    let mut b = writ_attestation::log::merkle::RootBuilder::new();
    for (n, h) in all.iter().enumerate() {
        b.push(*h);
        assert_eq!(b.root(), root(&all[..=n]));
        let again = writ_attestation::log::merkle::RootBuilder::from_frontier(
            b.size(),
            b.frontier().to_vec(),
        )
        .unwrap();
        assert_eq!(again, b);
        assert!(
            writ_attestation::log::merkle::RootBuilder::from_frontier(
                b.size() + 1,
                b.frontier().to_vec()
            )
            .is_err()
        );
    }
    assert!(inclusion_proof_from(&mut src, 5, 5).is_err());
    assert!(consistency_proof_from(&mut src, 0, 5).is_err());
    assert!(consistency_proof_from(&mut src, 6, 5).is_err());
}

#[test]
fn canonical_json_follows_rfc_8785() {
    use writ_attestation::jcs::{canonical, parse_canonical};
    // RFC 8785 section 3.2.3: members sorted by UTF-16 code units (the surrogate pair of U+1F600
    // sorts before U+FB33).
    let v: serde_json::Value = serde_json::from_str(
        r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#,
    )
    .unwrap();
    let c = canonical(&v).unwrap();
    let order: Vec<&str> = [
        "\\r",
        "1",
        "\u{80}",
        "\u{f6}",
        "\u{20ac}",
        "\u{1f600}",
        "\u{fb33}",
    ]
    .to_vec();
    let mut at = 0;
    for k in order {
        let pos = c[at..]
            .find(&format!("\"{k}\":"))
            .unwrap_or_else(|| panic!("{k} after {at} in {c}"));
        at += pos + 1;
    }
    // Minimal escapes, lowercase \u for other controls, no whitespace.
    let v = serde_json::json!({"b": "\"\\\u{8}\t\n\u{c}\r\u{f}\u{1f}/\u{7f}é", "a": [1, -2, null, true]});
    assert_eq!(
        canonical(&v).unwrap(),
        "{\"a\":[1,-2,null,true],\"b\":\"\\\"\\\\\\b\\t\\n\\f\\r\\u000f\\u001f/\u{7f}é\"}"
    );
    // Fractions and unsafe integers are refused; non-canonical input is refused.
    assert!(canonical(&serde_json::json!(1.5)).is_err());
    assert!(canonical(&serde_json::json!(9007199254740992u64)).is_err());
    assert!(canonical(&serde_json::json!(9007199254740991u64)).is_ok());
    assert!(parse_canonical(br#"{"a":1}"#).is_ok());
    for bad in [
        &br#"{"a": 1}"#[..],
        br#"{"b":1,"a":2}"#,
        br#"{"a":1,"a":1}"#,
        b"\"\\u0041\"",
    ] {
        assert!(
            parse_canonical(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn decision_records_round_trip_canonically_and_check_their_fields() {
    use writ_attestation::log::record::{Decision, DecisionRecord, Kind, leaf_ref};
    let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let r = DecisionRecord {
        v: 1,
        kind: Kind::Issue,
        time: 1_795_400_000,
        subject: "spiffe://writ.example/runtime/a".into(),
        decision: Decision::Allow,
        reasons: vec![],
        digests: [("writ".to_string(), d('a')), ("ear".to_string(), d('b'))].into(),
        policy_bundle_hash: Some(d('c')),
        parent: None,
    };
    let leaf = r.to_leaf().unwrap();
    let text = String::from_utf8(leaf.clone()).unwrap();
    assert!(
        text.starts_with("{\"decision\":\"allow\",\"digests\":{\"ear\":"),
        "{text}"
    );
    assert_eq!(DecisionRecord::from_leaf(&leaf).unwrap(), r);
    let child = DecisionRecord {
        parent: Some(leaf_ref(&leaf)),
        ..r.clone()
    };
    assert_eq!(
        child.parent_hash().unwrap(),
        writ_attestation::log::merkle::leaf_hash(&leaf)
    );
    // Each rule.
    let bad = [
        DecisionRecord { v: 2, ..r.clone() },
        DecisionRecord {
            decision: Decision::Deny,
            ..r.clone()
        },
        DecisionRecord {
            reasons: vec!["nonce_mismatch".into()],
            ..r.clone()
        },
        DecisionRecord {
            digests: [("writ".to_string(), "sha256:ABC".to_string())].into(),
            ..r.clone()
        },
        DecisionRecord {
            parent: Some("md5:00".into()),
            ..r.clone()
        },
        DecisionRecord {
            decision: Decision::Deny,
            reasons: vec!["Not A Code".into()],
            ..r.clone()
        },
        DecisionRecord {
            subject: String::new(),
            ..r.clone()
        },
    ];
    for b in bad {
        assert!(b.to_leaf().is_err(), "{b:?}");
    }
    // Unknown fields and non-canonical bytes are refused when read back.
    let extra = text.replacen("{", "{\"admin\":true,", 1);
    assert!(DecisionRecord::from_leaf(extra.as_bytes()).is_err());
    let spaced = text.replacen(",", ", ", 1);
    assert!(DecisionRecord::from_leaf(spaced.as_bytes()).is_err());
}
