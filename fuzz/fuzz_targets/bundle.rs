#![no_main]
//! Trust bundle parsing never panics.
use libfuzzer_sys::fuzz_target;
use writ_attestation::writ::bundle::TrustBundle;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = TrustBundle::parse(data) {
        let _ = b.check(0, 0, Some(1));
        let _ = b.appliance_id();
    }
});
