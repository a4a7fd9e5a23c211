#![no_main]
//! Signed-note and checkpoint parsing never panic; a note the fuzzer wrote is never accepted as
//! signed by a key it does not hold; Merkle proof verification on arbitrary input never panics.
use libfuzzer_sys::fuzz_target;
use p256::pkcs8::EncodePublicKey;
use writ_attestation::crypto::RustCrypto;
use writ_attestation::log::merkle::{verify_consistency, verify_inclusion};
use writ_attestation::log::note::{Checkpoint, NoteVerifier, verify_note};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = Checkpoint::parse_text(s);
        let _ = NoteVerifier::parse(s);
        let k = p256::ecdsa::SigningKey::from_slice(&[4u8; 32]).unwrap();
        let spki = k.verifying_key().to_public_key_der().unwrap();
        let v = NoteVerifier::from_spki("fuzz.example/log", spki.as_bytes()).unwrap();
        assert!(verify_note(&RustCrypto, s, &v).is_err());
    }
    if data.len() >= 80 {
        let leaf: [u8; 32] = data[..32].try_into().unwrap();
        let root: [u8; 32] = data[32..64].try_into().unwrap();
        let n = u64::from(data[64]) + 1;
        let i = u64::from(data[65]);
        let proof: Vec<[u8; 32]> = data[80..].chunks_exact(32).map(|c| c.try_into().unwrap()).collect();
        let _ = verify_inclusion(&leaf, i, n, &proof, &root);
        let _ = verify_consistency(i, n, &proof, &leaf, &root);
    }
});
