#![no_main]
//! Event log parsing, typed event data, facts and replay never panic and stay within their bounds.
use libfuzzer_sys::fuzz_target;
use writ_attestation::eventlog::parse;

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = parse(data) {
        for e in &log.events {
            let _ = e.detail(log.uintn_size);
        }
        let _ = log.secure_boot();
        let _ = log.exit_boot_services();
        let _ = log.replay();
    }
});
