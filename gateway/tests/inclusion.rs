//! Log inclusion at the gateway, through `writ-gate verify --inclusion` against a log built here
//! (RFC 6962 trees, a P-256 checkpoint key published in the trust bundle): every malformed proof
//! is refused and nothing consumed; a checkpoint is accepted only if it is consistent with the
//! last one this host saw (a larger one with a consistency proof from it, never an older or a
//! forked one).
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;
use std::process::Output;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{AUD, bundle, jwk, key, now, writ};
use p256::ecdsa::signature::Signer;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use writ_attestation::log::merkle::{Hash, consistency_proof, inclusion_proof, leaf_hash, root};
use writ_attestation::log::note::{Checkpoint, NoteVerifier, signed_note};
use writ_attestation::log::record::DecisionRecord;
use writ_attestation::writ::dpop::{self, ProofClaims};
use writ_attestation::writ::request::{Request, digest};

const ORIGIN: &str = "writ.test/log";

struct Log {
    leaves: Vec<Vec<u8>>,
    key: p256::ecdsa::SigningKey,
    verifier: NoteVerifier,
}

fn note_key(seed: u8) -> (p256::ecdsa::SigningKey, NoteVerifier) {
    use p256::pkcs8::EncodePublicKey;
    let k = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap();
    let spki = k.verifying_key().to_public_key_der().unwrap();
    let v = NoteVerifier::from_spki(ORIGIN, spki.as_bytes()).unwrap();
    (k, v)
}

fn leaf(kind: &str, subject: &str, digests: Value) -> Vec<u8> {
    leaf_decided(kind, subject, digests, "allow")
}

fn leaf_decided(kind: &str, subject: &str, digests: Value, decision: &str) -> Vec<u8> {
    let reasons: Vec<&str> = if decision == "deny" {
        vec!["policy"]
    } else {
        vec![]
    };
    let r: DecisionRecord = serde_json::from_value(json!({
        "v": 1, "kind": kind, "time": now(), "subject": subject, "decision": decision,
        "reasons": reasons, "digests": digests, "policy_bundle_hash": null, "parent": null}))
    .unwrap();
    r.to_leaf().unwrap()
}

fn issued(token: &str) -> Vec<u8> {
    leaf(
        "issue",
        "spiffe://writ.test/runtime/a",
        json!({"writ": format!("sha256:{}", hex::encode(Sha256::digest(token.as_bytes())))}),
    )
}

fn filler(i: usize) -> Vec<u8> {
    leaf(
        "attest",
        &format!("spiffe://writ.test/runtime/r{i}"),
        json!({}),
    )
}

impl Log {
    fn hashes(&self, size: usize) -> Vec<Hash> {
        self.leaves[..size].iter().map(|l| leaf_hash(l)).collect()
    }

    fn checkpoint(&self, size: usize) -> String {
        let text = Checkpoint {
            origin: ORIGIN.into(),
            size: size as u64,
            root: root(&self.hashes(size)),
            extensions: vec![],
        }
        .text();
        let sig: p256::ecdsa::DerSignature = self.key.sign(text.as_bytes());
        signed_note(&text, &self.verifier, sig.as_bytes())
    }

    /// The inclusion bundle of leaf `index` under the tree of `size`, with the consistency proof
    /// from `from` if given.
    fn bundle(&self, index: usize, size: usize, from: Option<usize>) -> Value {
        let proof: Vec<String> = inclusion_proof(&self.hashes(size), index)
            .unwrap()
            .iter()
            .map(hex::encode)
            .collect();
        let mut b = json!({
            "record": STANDARD.encode(&self.leaves[index]),
            "index": index, "tree_size": size, "proof": proof,
            "checkpoint": self.checkpoint(size)});
        if let Some(f) = from {
            let c: Vec<String> = consistency_proof(&self.hashes(size), f)
                .unwrap()
                .iter()
                .map(hex::encode)
                .collect();
            b["consistency"] = json!({"from": f, "proof": c});
        }
        b
    }
}

fn req() -> String {
    digest(&Request::Exec {
        tool: "deploy",
        argv: &[],
    })
    .unwrap()
}

/// A writ (`jti`) for the tool `deploy` with no arguments and its proof, in `writ-<jti>.jws` and
/// `proof-<jti>.jws`; the writ.
fn credentials(dir: &Path, jti: u8) -> String {
    let t = now();
    let holder = key(9);
    let r = req();
    let w = writ(t, jti, &jwk(&holder).thumbprint(), &r);
    let p = dpop::create(
        &holder,
        &jwk(&holder),
        &ProofClaims {
            jti: format!("proof-{jti}"),
            iat: t,
            htm: "EXEC".into(),
            htu: format!("exec:{r}"),
            ath: dpop::ath(&w),
            nonce: None,
        },
    )
    .unwrap();
    std::fs::write(dir.join(format!("writ-{jti}.jws")), &w).unwrap();
    std::fs::write(dir.join(format!("proof-{jti}.jws")), p).unwrap();
    w
}

fn verify(dir: &Path, jti: u8, inclusion: Option<&Value>) -> Value {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_writ-gate"));
    cmd.current_dir(dir).args([
        "verify",
        "--writ",
        &format!("writ-{jti}.jws"),
        "--proof",
        &format!("proof-{jti}.jws"),
        "--bundle",
        "bundle.json",
        "--audience",
        AUD,
        "--replay-db",
        "replay.db",
        "--format",
        "json",
        "--require-inclusion",
        "--tool",
        "deploy",
    ]);
    if let Some(i) = inclusion {
        std::fs::write(dir.join("inc.json"), i.to_string()).unwrap();
        cmd.args(["--inclusion", "inc.json"]);
    }
    let o: Output = cmd.output().unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
        panic!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

/// A hex hash with its last bit flipped.
fn flip(node: &str) -> String {
    let mut bytes = hex::decode(node).unwrap();
    bytes[31] ^= 1;
    hex::encode(bytes)
}

fn code(v: &Value) -> &str {
    v["code"].as_str().unwrap_or("allow")
}

#[test]
fn inclusion_proofs_and_checkpoints_are_checked_before_anything_is_consumed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (w1, w2, w3) = (credentials(d, 1), credentials(d, 2), credentials(d, 3));
    let (k, verifier) = note_key(42);
    let mut log = Log {
        leaves: vec![filler(0), filler(1), filler(2), issued(&w1), issued(&w3)],
        key: k,
        verifier: verifier.clone(),
    };
    let mut trust = bundle(now());
    trust["writ"]["log"] = json!({"origin": ORIGIN, "verifier_key": verifier.to_string()});
    std::fs::write(d.join("bundle.json"), trust.to_string()).unwrap();

    // Required: none given.
    assert_eq!(code(&verify(d, 1, None)), "inclusion_missing");
    let good = log.bundle(3, 5, None);
    let refused = |b: &Value, why: &str| {
        let v = verify(d, 1, Some(b));
        assert_eq!(code(&v), "inclusion", "{why}: {v}");
    };
    // The index off by one, either way.
    for index in [2, 4] {
        let mut b = good.clone();
        b["index"] = json!(index);
        refused(&b, "index off by one");
    }
    // The tree size not the checkpoint's.
    let mut b = good.clone();
    b["tree_size"] = json!(6);
    refused(&b, "tree size");
    // A flipped bit in a node, an extra node, a missing node.
    let mut b = good.clone();
    b["proof"][0] = json!(flip(b["proof"][0].as_str().unwrap()));
    refused(&b, "flipped bit");
    let mut b = good.clone();
    b["proof"]
        .as_array_mut()
        .unwrap()
        .push(json!("00".repeat(32)));
    refused(&b, "extra node");
    let mut b = good.clone();
    b["proof"].as_array_mut().unwrap().pop();
    refused(&b, "missing node");
    // Another record (included, but not this writ's issuance).
    refused(&log.bundle(2, 5, None), "another record");
    refused(&log.bundle(4, 5, None), "another writ's record");
    // Records that name this writ but are not its issuance: a gateway's gate record of it, and
    // an issue denial carrying its digest.
    {
        let wd = json!({"writ": format!("sha256:{}", hex::encode(Sha256::digest(w1.as_bytes())))});
        let others = Log {
            leaves: vec![
                leaf("gate", "spiffe://writ.test/gateway/g", wd.clone()),
                leaf_decided("issue", "spiffe://writ.test/runtime/a", wd, "deny"),
            ],
            key: log.key.clone(),
            verifier: verifier.clone(),
        };
        refused(&others.bundle(0, 2, None), "a gate record of this writ");
        refused(
            &others.bundle(1, 2, None),
            "an issue denial naming this writ",
        );
    }
    // A checkpoint signed by another key.
    let (other_key, _) = note_key(43);
    let forged = Log {
        leaves: log.leaves.clone(),
        key: other_key,
        verifier: verifier.clone(),
    };
    refused(&forged.bundle(3, 5, None), "another key");
    // The record, flipped: not under the root.
    let mut b = good.clone();
    let mut rec = STANDARD.decode(b["record"].as_str().unwrap()).unwrap();
    let last = rec.len() - 2;
    rec[last] ^= 1;
    b["record"] = json!(STANDARD.encode(&rec));
    refused(&b, "altered record");

    // The right one: allowed (nothing above consumed the writ); the gateway now has seen size 5.
    assert_eq!(code(&verify(d, 1, Some(&good))), "allow");

    // The log grows to 9 with writ 2's issuance at 5.
    log.leaves.push(issued(&w2));
    for i in 6..9 {
        log.leaves.push(filler(i));
    }
    let v = verify(d, 2, Some(&log.bundle(5, 9, None)));
    assert_eq!(code(&v), "inclusion_consistency", "{v}");
    assert!(v["detail"].as_str().unwrap().contains("tree size 5"), "{v}");
    // A proof from another size than the one seen.
    let v = verify(d, 2, Some(&log.bundle(5, 9, Some(4))));
    assert_eq!(code(&v), "inclusion_consistency", "{v}");
    // A proof from 5 with a flipped bit: not an extension.
    let mut b = log.bundle(5, 9, Some(5));
    b["consistency"]["proof"][0] = json!(flip(b["consistency"]["proof"][0].as_str().unwrap()));
    let v = verify(d, 2, Some(&b));
    assert_eq!(code(&v), "inclusion_fork", "{v}");
    // A forked log (another leaf 1) that signed a tree of 6 holding writ 2: its own proof from 5
    // is valid inside the fork, but the gateway saw another tree of 5.
    let fork = Log {
        leaves: vec![
            filler(0),
            filler(100),
            filler(2),
            issued(&w1),
            issued(&w3),
            issued(&w2),
        ],
        key: log.key.clone(),
        verifier: verifier.clone(),
    };
    let v = verify(d, 2, Some(&fork.bundle(5, 6, Some(5))));
    assert_eq!(code(&v), "inclusion_fork", "{v}");
    // The same size as seen with another root.
    let fork5 = Log {
        leaves: fork.leaves[..5].to_vec(),
        key: log.key.clone(),
        verifier: verifier.clone(),
    };
    let v = verify(d, 3, Some(&fork5.bundle(4, 5, None)));
    assert_eq!(code(&v), "inclusion_fork", "{v}");
    // With the proof from 5: allowed; the gateway has seen 9.
    assert_eq!(
        code(&verify(d, 2, Some(&log.bundle(5, 9, Some(5))))),
        "allow"
    );
    // Writ 3's issuance under the tree of 5, older than the one seen: fetch again.
    let v = verify(d, 3, Some(&log.bundle(4, 5, None)));
    assert_eq!(code(&v), "inclusion_stale", "{v}");
    // Under the tree of 9 (the one seen): allowed.
    assert_eq!(code(&verify(d, 3, Some(&log.bundle(4, 9, None)))), "allow");
}

/// Across a rotation of the log's key the trust bundle lists both keys (`verifier_keys`) and the
/// log signs with both: a gateway accepts a checkpoint signed by any key its bundle lists, and
/// refuses one signed only by a key its bundle no longer lists, or carrying a bad signature by a
/// listed key.
#[test]
fn a_checkpoint_by_any_listed_log_key_is_accepted_and_by_no_listed_key_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let w: Vec<String> = (1..=5).map(|j| credentials(d, j)).collect();
    let mut leaves = vec![filler(0)];
    leaves.extend(w.iter().map(|t| issued(t)));
    let (ka, va) = note_key(42);
    let (kb, vb) = note_key(43);
    let by_a = Log {
        leaves: leaves.clone(),
        key: ka,
        verifier: va.clone(),
    };
    let by_b = Log {
        leaves,
        key: kb,
        verifier: vb.clone(),
    };
    // A bundle whose checkpoint carries A's line, then B's (as the log signs in the overlap).
    let both = |index: usize| {
        let mut b = by_a.bundle(index, 6, None);
        let b_line = by_b.checkpoint(6).split_once("\n\n").unwrap().1.to_string();
        let note = format!("{}{b_line}", b["checkpoint"].as_str().unwrap());
        b["checkpoint"] = json!(note);
        b
    };
    let sequence = std::cell::Cell::new(10);
    let trust_with = |keys: &[&NoteVerifier]| {
        let mut trust = bundle(now());
        // Each a new version.
        sequence.set(sequence.get() + 1);
        trust["spiffe_sequence"] = json!(sequence.get());
        trust["writ"]["log"] = json!({
            "origin": ORIGIN,
            "verifier_key": keys[0].to_string(),
            "verifier_keys": keys.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
        });
        std::fs::write(d.join("bundle.json"), trust.to_string()).unwrap();
    };
    // A gateway that knows only A takes the overlap's checkpoints.
    trust_with(&[&va]);
    assert_eq!(code(&verify(d, 1, Some(&both(1)))), "allow");
    // One that knows both takes B's alone.
    trust_with(&[&va, &vb]);
    assert_eq!(code(&verify(d, 2, Some(&by_b.bundle(2, 6, None)))), "allow");
    // Once A left its bundle: A's alone is refused (nothing consumed), the overlap's taken.
    trust_with(&[&vb]);
    let v = verify(d, 3, Some(&by_a.bundle(3, 6, None)));
    assert_eq!(code(&v), "inclusion", "{v}");
    assert_eq!(code(&verify(d, 3, Some(&both(3)))), "allow");
    // B's line altered beside A's good one: refused by a gateway that knows B.
    trust_with(&[&va, &vb]);
    let mut forged = both(4);
    let note = forged["checkpoint"].as_str().unwrap().to_string();
    let (head, b_line) = note.trim_end().rsplit_once('\n').unwrap();
    let (name, sig) = b_line.rsplit_once(' ').unwrap();
    let mut blob = STANDARD.decode(sig).unwrap();
    let last = blob.len() - 1;
    blob[last] ^= 1;
    forged["checkpoint"] = json!(format!("{head}\n{name} {}\n", STANDARD.encode(blob)));
    let v = verify(d, 4, Some(&forged));
    assert_eq!(code(&v), "inclusion", "{v}");
    assert_eq!(code(&verify(d, 4, Some(&both(4)))), "allow");
}
