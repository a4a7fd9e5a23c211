#![no_main]
//! TPMS_ATTEST parsing never panics, and what parses re-encodes to the same bytes.
use libfuzzer_sys::fuzz_target;
use writ_attestation::tpm::attest::Attest;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = Attest::parse(data) {
        assert_eq!(a.encode(), data);
    }
});
