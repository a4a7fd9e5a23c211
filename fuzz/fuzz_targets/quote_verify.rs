#![no_main]
//! Quote verification on arbitrary attestation and signature bytes never panics and never accepts:
//! the fuzzer does not hold the AK's private key.
use libfuzzer_sys::fuzz_target;
use writ_attestation::crypto::RustCrypto;
use writ_attestation::evidence::{CheckedAk, Nonce, verify_quote};
use writ_attestation::tpm::HashAlg;
use writ_attestation::tpm::pcr::{PcrSelection, PcrValues};
use writ_attestation::tpm::public::{self, EccCurve, KeyParams, Scheme, attr};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let at = usize::from(split).min(rest.len());
    let (attest, sig) = rest.split_at(at);
    let key = p256::ecdsa::SigningKey::from_slice(&[1u8; 32]).unwrap();
    let point = key.verifying_key().to_sec1_point(false);
    let params = KeyParams::Ecc {
        symmetric: 0x0010,
        scheme: Scheme::Ecdsa(HashAlg::Sha256),
        curve: EccCurve::P256,
        kdf: 0x0010,
        x: point.x().unwrap().to_vec(),
        y: point.y().unwrap().to_vec(),
    };
    let attrs = attr::FIXED_TPM | attr::FIXED_PARENT | attr::SENSITIVE_DATA_ORIGIN | attr::RESTRICTED | attr::SIGN_ENCRYPT;
    let ak = CheckedAk::from_tpmt(&public::encode(HashAlg::Sha256, attrs, &[], &params)).unwrap();
    let selection: PcrSelection = "sha256:0".parse().unwrap();
    let mut pcrs = PcrValues::new();
    pcrs.insert(HashAlg::Sha256, 0, vec![0; 32]).unwrap();
    let nonce = Nonce::new(b"fuzz").unwrap();
    assert!(verify_quote(&RustCrypto, &ak, attest, sig, &nonce, &selection, &pcrs).is_err());
});
