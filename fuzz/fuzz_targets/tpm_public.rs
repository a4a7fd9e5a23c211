#![no_main]
//! TPMT_PUBLIC / TPM2B_PUBLIC parsing, names and AK checks never panic.
use libfuzzer_sys::fuzz_target;
use writ_attestation::evidence::CheckedAk;
use writ_attestation::tpm::public::Public;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Public::from_tpmt(data) {
        let _ = p.name();
        let _ = CheckedAk::check(p);
    }
    let _ = Public::from_tpm2b(data);
});
