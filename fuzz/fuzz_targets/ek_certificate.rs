#![no_main]
//! EK certificate parsing and chain validation on arbitrary bytes never panic and never trust:
//! the store's only anchor is a real-looking root the fuzzer holds no key for.
use libfuzzer_sys::fuzz_target;
use writ_attestation::crypto::RustCrypto;
use writ_attestation::evidence::EkTrustStore;

fuzz_target!(|data: &[u8]| {
    let mut store = EkTrustStore::new();
    let _ = store.add_der(data);
    let empty = EkTrustStore::new();
    assert!(empty.verify(&RustCrypto, data, 1_800_000_000).is_err());
    // A certificate is never its own anchor: a CA is not an EK, and a non-CA cannot issue.
    assert!(store.verify(&RustCrypto, data, 1_800_000_000).is_err());
});
