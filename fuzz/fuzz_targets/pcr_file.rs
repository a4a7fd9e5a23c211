#![no_main]
//! The tpm2-tools PCR file parser and PCR selection syntax never panic.
use libfuzzer_sys::fuzz_target;
use writ_attestation::tpm::pcr::PcrSelection;
use writ_attestation::tpm::tools::read_pcr_file;

fuzz_target!(|data: &[u8]| {
    let _ = read_pcr_file(data);
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(sel) = s.parse::<PcrSelection>() {
            assert_eq!(sel.to_string().parse::<PcrSelection>().ok(), Some(sel));
        }
    }
});
