#![no_main]
//! Strict JWS parsing (writs and DPoP proofs), strict JSON and claims typing never panic.
use libfuzzer_sys::fuzz_target;
use writ_attestation::writ::claims::WritClaims;
use writ_attestation::writ::jws::{HeaderShape, TYP_DPOP, TYP_WRIT, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(u) = parse(text, TYP_WRIT, HeaderShape::Kid) {
            let _ = u.kid();
            if let Ok(serde_json::Value::Object(m)) =
                writ_attestation::writ::json::parse(u.unverified_payload())
            {
                let _ = WritClaims::from_payload(m);
            }
        }
        if let Ok(u) = parse(text, TYP_DPOP, HeaderShape::Jwk) {
            let _ = u.jwk();
        }
    }
    let _ = writ_attestation::writ::json::parse(data);
});
