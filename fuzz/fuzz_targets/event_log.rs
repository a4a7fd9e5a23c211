#![no_main]
//! Event log parsing and replay never panic and stay within their bounds.
use libfuzzer_sys::fuzz_target;
use writ_attestation::eventlog::parse;

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = parse(data) {
        let _ = log.replay();
    }
});
