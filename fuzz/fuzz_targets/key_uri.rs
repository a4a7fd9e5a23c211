#![no_main]
//! Key URI parsing never panics, and a parsed URI's canonical form parses to the same URI.
use libfuzzer_sys::fuzz_target;
use writ_hsm::KeyUri;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(uri) = s.parse::<KeyUri>() {
            let again: KeyUri = uri.to_string().parse().expect("canonical form parses");
            assert_eq!(again, uri);
        }
    }
});
