//! Writs signed inside the devices: the issuer's JWS signature made by a key in SoftHSM2 and in
//! swtpm verifies through the strict parser, with both providers.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;

use serde_json::json;
use writ_attestation::crypto::{AwsLc, CryptoProvider, RustCrypto};
use writ_attestation::jwk::EcJwk;
use writ_attestation::writ::jws::{self, HeaderShape, TYP_WRIT};
use writ_hsm::signer::JwsSigner;
use writ_hsm::{CustodyKey, OpenOptions, generate_key};

fn sign_and_verify(k: Arc<dyn CustodyKey>) {
    let header = json!({"alg": "ES256", "typ": TYP_WRIT, "kid": "issuer-1"});
    let payload = json!({"iss": "spiffe://writ.test/writ/appliance", "n": 1});
    let jwk = EcJwk::from_verifying_key(k.public_key().verifying_key());
    for i in 0..20 {
        let payload = json!({"iss": payload["iss"], "n": i});
        let t = jws::sign(&header, &payload, &JwsSigner(Arc::clone(&k))).unwrap();
        let u = jws::parse(&t, TYP_WRIT, HeaderShape::Kid).unwrap();
        for p in [&AwsLc as &dyn CryptoProvider, &RustCrypto] {
            let got = u.verify(p, &jwk).unwrap();
            assert_eq!(got["n"], i);
        }
        // Low-S, always.
        let sig = base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            t.rsplit('.').next().unwrap(),
        )
        .unwrap();
        let s = p256::ecdsa::Signature::from_slice(&sig).unwrap();
        assert!(s.normalize_s() == s);
    }
}

#[test]
fn a_writ_signed_in_softhsm2_verifies() {
    writ_testkit::isolated(
        module_path!(),
        "a_writ_signed_in_softhsm2_verifies",
        |hsm| {
            let k = generate_key(
                &hsm.key_uri("issuer").parse().unwrap(),
                &OpenOptions::default(),
            )
            .unwrap();
            sign_and_verify(k);
        },
    );
}

#[test]
fn a_writ_signed_in_swtpm_verifies() {
    let tpm = writ_testkit::Swtpm::start();
    let k = generate_key(
        &tpm.key_uri(0x8100_0201).parse().unwrap(),
        &OpenOptions::default(),
    )
    .unwrap();
    sign_and_verify(k);
}
