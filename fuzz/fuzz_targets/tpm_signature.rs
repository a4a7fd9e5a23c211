#![no_main]
//! TPMT_SIGNATURE parsing never panics, and what parses re-encodes to the same bytes.
use libfuzzer_sys::fuzz_target;
use writ_attestation::tpm::signature::Signature;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Signature::from_tpmt(data) {
        assert_eq!(s.to_tpmt(), data);
    }
});
