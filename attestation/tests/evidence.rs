//! Quote and certify verification against an in-test evidence forge (a software AK), so each field
//! can be wrong on its own. Every test runs through both crypto providers.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use p256::ecdsa::signature::hazmat::PrehashSigner;
use sha2::{Digest, Sha256};
use writ_attestation::EvidenceError;
use writ_attestation::crypto::{AwsLc, CryptoProvider, RustCrypto};
use writ_attestation::evidence::{CheckedAk, CounterChange, Nonce, verify_certify, verify_quote};
use writ_attestation::tpm::HashAlg;
use writ_attestation::tpm::attest::{
    Attest, Attested, ClockInfo, ST_ATTEST_CERTIFY, ST_ATTEST_QUOTE, TPM_GENERATED,
};
use writ_attestation::tpm::pcr::{PcrSelection, PcrValues};
use writ_attestation::tpm::public::{self, EccCurve, KeyParams, Public, Scheme, attr};
use writ_attestation::tpm::signature::Signature;

const PROVIDERS: [&dyn CryptoProvider; 2] = [&RustCrypto, &AwsLc];

const AK_ATTRS: u32 = attr::FIXED_TPM
    | attr::FIXED_PARENT
    | attr::SENSITIVE_DATA_ORIGIN
    | attr::USER_WITH_AUTH
    | attr::RESTRICTED
    | attr::SIGN_ENCRYPT;
const HOLDER_ATTRS: u32 = attr::FIXED_TPM
    | attr::FIXED_PARENT
    | attr::SENSITIVE_DATA_ORIGIN
    | attr::USER_WITH_AUTH
    | attr::SIGN_ENCRYPT;

fn key(seed: u8) -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap()
}

fn ecc_params(k: &p256::ecdsa::SigningKey, scheme: Scheme) -> KeyParams {
    let point = k.verifying_key().to_sec1_point(false);
    KeyParams::Ecc {
        symmetric: 0x0010,
        scheme,
        curve: EccCurve::P256,
        kdf: 0x0010,
        x: point.x().unwrap().to_vec(),
        y: point.y().unwrap().to_vec(),
    }
}

fn ak_public(k: &p256::ecdsa::SigningKey, attrs: u32) -> Vec<u8> {
    public::encode(
        HashAlg::Sha256,
        attrs,
        &[],
        &ecc_params(k, Scheme::Ecdsa(HashAlg::Sha256)),
    )
}

/// A software AK and the evidence it signs.
struct Forge {
    ak: p256::ecdsa::SigningKey,
    ak_public: Vec<u8>,
    nonce: Nonce,
    selection: PcrSelection,
    pcrs: PcrValues,
}

impl Forge {
    fn new() -> Self {
        let ak = key(1);
        let ak_public = ak_public(&ak, AK_ATTRS);
        let selection: PcrSelection = "sha256:0,1,2,7".parse().unwrap();
        let mut pcrs = PcrValues::new();
        for i in [0u8, 1, 2, 7] {
            pcrs.insert(HashAlg::Sha256, i, vec![i; 32]).unwrap();
        }
        Forge {
            ak,
            ak_public,
            nonce: Nonce::new(&[0x42; 32]).unwrap(),
            selection,
            pcrs,
        }
    }

    fn checked_ak(&self) -> CheckedAk {
        CheckedAk::from_tpmt(&self.ak_public).unwrap()
    }

    fn quote_attest(&self) -> Attest {
        Attest {
            magic: TPM_GENERATED,
            kind: ST_ATTEST_QUOTE,
            qualified_signer: self.checked_ak().name().to_vec(),
            extra_data: self.nonce.as_bytes().to_vec(),
            clock_info: ClockInfo {
                clock: 1000,
                reset_count: 3,
                restart_count: 0,
                safe: true,
            },
            firmware_version: 0x2019_0001,
            attested: Attested::Quote {
                selection: self.selection.clone(),
                pcr_digest: self.pcrs.digest(&self.selection, HashAlg::Sha256).unwrap(),
            },
        }
    }

    fn certify_attest(&self, certified_public: &[u8]) -> Attest {
        let name = Public::from_tpmt(certified_public).unwrap().name().unwrap();
        Attest {
            kind: ST_ATTEST_CERTIFY,
            attested: Attested::Certify {
                name: name.clone(),
                qualified_name: name,
            },
            ..self.quote_attest()
        }
    }

    /// TPMT_SIGNATURE (ECDSA-SHA256) by `signer` over `message`.
    fn sign_with(signer: &p256::ecdsa::SigningKey, message: &[u8]) -> Vec<u8> {
        let digest: [u8; 32] = Sha256::digest(message).into();
        let sig: p256::ecdsa::Signature = signer.sign_prehash(&digest).unwrap();
        let bytes = sig.to_bytes();
        Signature::Ecdsa {
            hash: HashAlg::Sha256,
            r: bytes[..32].to_vec(),
            s: bytes[32..].to_vec(),
        }
        .to_tpmt()
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        Self::sign_with(&self.ak, message)
    }

    fn verify(
        &self,
        p: &dyn CryptoProvider,
        attest: &[u8],
        sig: &[u8],
    ) -> Result<(), EvidenceError> {
        verify_quote(
            p,
            &self.checked_ak(),
            attest,
            sig,
            &self.nonce,
            &self.selection,
            &self.pcrs,
        )
        .map(|_| ())
    }
}

fn expect_code(result: Result<(), EvidenceError>, code: &str) {
    match result {
        Err(e) => assert_eq!(e.code(), code, "wrong refusal: {e}"),
        Ok(()) => panic!("accepted; expected {code}"),
    }
}

#[test]
fn a_good_quote_verifies_with_both_providers() {
    let f = Forge::new();
    let attest = f.quote_attest().encode();
    let sig = f.sign(&attest);
    for p in PROVIDERS {
        let q = verify_quote(
            p,
            &f.checked_ak(),
            &attest,
            &sig,
            &f.nonce,
            &f.selection,
            &f.pcrs,
        )
        .unwrap();
        assert_eq!(q.nonce(), &f.nonce);
        assert_eq!(q.clock().reset_count, 3);
        assert_eq!(q.pcrs().get(HashAlg::Sha256, 7), Some(&[7u8; 32][..]));
        assert_eq!(q.ak_name(), f.checked_ak().name());
    }
}

#[test]
fn magic() {
    let f = Forge::new();
    let attest = Attest {
        magic: 0xff54_4348,
        ..f.quote_attest()
    }
    .encode();
    for p in PROVIDERS {
        expect_code(f.verify(p, &attest, &f.sign(&attest)), "magic");
    }
}

#[test]
fn attest_type_certify_presented_as_quote() {
    let f = Forge::new();
    let attest = f.certify_attest(&f.ak_public).encode();
    for p in PROVIDERS {
        expect_code(f.verify(p, &attest, &f.sign(&attest)), "attest_type");
    }
}

#[test]
fn nonce_foreign() {
    let f = Forge::new();
    let attest = Attest {
        extra_data: vec![0x43; 32],
        ..f.quote_attest()
    }
    .encode();
    for p in PROVIDERS {
        expect_code(f.verify(p, &attest, &f.sign(&attest)), "nonce_mismatch");
    }
}

#[test]
fn nonce_prefix_is_not_the_nonce() {
    let f = Forge::new();
    let attest = Attest {
        extra_data: vec![0x42; 31],
        ..f.quote_attest()
    }
    .encode();
    for p in PROVIDERS {
        expect_code(f.verify(p, &attest, &f.sign(&attest)), "nonce_mismatch");
    }
}

#[test]
fn pcr_selection_narrower_than_required() {
    let f = Forge::new();
    let narrow: PcrSelection = "sha256:0,1,2".parse().unwrap();
    let attest = Attest {
        attested: Attested::Quote {
            pcr_digest: f.pcrs.digest(&narrow, HashAlg::Sha256).unwrap(),
            selection: narrow,
        },
        ..f.quote_attest()
    }
    .encode();
    for p in PROVIDERS {
        expect_code(f.verify(p, &attest, &f.sign(&attest)), "pcr_selection");
    }
}

#[test]
fn pcr_selection_other_bank() {
    let f = Forge::new();
    let other: PcrSelection = "sha384:0,1,2,7".parse().unwrap();
    let attest = Attest {
        attested: Attested::Quote {
            selection: other,
            pcr_digest: vec![0; 32],
        },
        ..f.quote_attest()
    }
    .encode();
    for p in PROVIDERS {
        expect_code(f.verify(p, &attest, &f.sign(&attest)), "pcr_selection");
    }
}

#[test]
fn empty_required_selection_is_refused() {
    assert!(PcrSelection::new(vec![(HashAlg::Sha256, vec![])]).is_err());
    assert!("".parse::<PcrSelection>().is_err());
}

#[test]
fn pcr_value_changed() {
    let f = Forge::new();
    let attest = f.quote_attest().encode();
    let sig = f.sign(&attest);
    let mut changed = PcrValues::new();
    for (b, i, v) in f.pcrs.iter() {
        let mut v = v.to_vec();
        if i == 7 {
            v[0] ^= 1;
        }
        changed.insert(b, i, v).unwrap();
    }
    for p in PROVIDERS {
        let r = verify_quote(
            p,
            &f.checked_ak(),
            &attest,
            &sig,
            &f.nonce,
            &f.selection,
            &changed,
        );
        expect_code(r.map(|_| ()), "pcr_digest");
    }
}

#[test]
fn pcr_value_missing() {
    let f = Forge::new();
    let attest = f.quote_attest().encode();
    let sig = f.sign(&attest);
    let mut partial = PcrValues::new();
    partial.insert(HashAlg::Sha256, 0, vec![0; 32]).unwrap();
    for p in PROVIDERS {
        let r = verify_quote(
            p,
            &f.checked_ak(),
            &attest,
            &sig,
            &f.nonce,
            &f.selection,
            &partial,
        );
        expect_code(r.map(|_| ()), "pcr_value");
    }
}

#[test]
fn pcr_value_of_the_wrong_size_is_refused() {
    let mut v = PcrValues::new();
    assert_eq!(
        v.insert(HashAlg::Sha256, 0, vec![0; 20])
            .unwrap_err()
            .code(),
        "pcr_value"
    );
    v.insert(HashAlg::Sha256, 0, vec![0; 32]).unwrap();
    assert_eq!(
        v.insert(HashAlg::Sha256, 0, vec![0; 32])
            .unwrap_err()
            .code(),
        "pcr_value"
    );
}

#[test]
fn signature_wrong_signer() {
    let f = Forge::new();
    let attest = f.quote_attest().encode();
    let sig = Forge::sign_with(&key(2), &attest);
    for p in PROVIDERS {
        expect_code(f.verify(p, &attest, &sig), "signature");
    }
}

#[test]
fn signature_bit_flip() {
    let f = Forge::new();
    let attest = f.quote_attest().encode();
    let mut sig = f.sign(&attest);
    let last = sig.len() - 1;
    sig[last] ^= 0x01;
    for p in PROVIDERS {
        expect_code(f.verify(p, &attest, &sig), "signature");
    }
}

#[test]
fn attest_bit_flip_after_signing() {
    let f = Forge::new();
    let attest = f.quote_attest().encode();
    let sig = f.sign(&attest);
    let mut tampered = attest.clone();
    tampered[20] ^= 0x01;
    for p in PROVIDERS {
        expect_code(f.verify(p, &tampered, &sig), "signature");
    }
}

#[test]
fn signature_zero_length_r() {
    let f = Forge::new();
    let attest = f.quote_attest().encode();
    let sig = Signature::Ecdsa {
        hash: HashAlg::Sha256,
        r: vec![],
        s: vec![1; 32],
    }
    .to_tpmt();
    for p in PROVIDERS {
        expect_code(f.verify(p, &attest, &sig), "signature");
    }
}

#[test]
fn signature_oversize_r() {
    let f = Forge::new();
    let attest = f.quote_attest().encode();
    // 33 significant bytes: longer than a P-256 scalar.
    let sig = Signature::Ecdsa {
        hash: HashAlg::Sha256,
        r: vec![1; 33],
        s: vec![1; 32],
    }
    .to_tpmt();
    for p in PROVIDERS {
        expect_code(f.verify(p, &attest, &sig), "signature");
    }
    // Above the TPM2B_ECC_PARAMETER maximum: refused while parsing.
    let sig = Signature::Ecdsa {
        hash: HashAlg::Sha256,
        r: vec![1; 67],
        s: vec![1; 32],
    }
    .to_tpmt();
    for p in PROVIDERS {
        expect_code(f.verify(p, &attest, &sig), "malformed");
    }
}

#[test]
fn signature_r_zero_value() {
    let f = Forge::new();
    let attest = f.quote_attest().encode();
    let sig = Signature::Ecdsa {
        hash: HashAlg::Sha256,
        r: vec![0; 32],
        s: vec![1; 32],
    }
    .to_tpmt();
    for p in PROVIDERS {
        expect_code(f.verify(p, &attest, &sig), "signature");
    }
}

#[test]
fn signature_leading_zeros_are_accepted() {
    // TPMs may send r or s with leading zeros or unpadded; both are the same integer.
    let f = Forge::new();
    let attest = f.quote_attest().encode();
    let sig = Signature::from_tpmt(&f.sign(&attest)).unwrap();
    let Signature::Ecdsa { r, s, .. } = sig else {
        panic!()
    };
    let mut padded_r = vec![0u8; 2];
    padded_r.extend_from_slice(&r);
    let sig = Signature::Ecdsa {
        hash: HashAlg::Sha256,
        r: padded_r,
        s,
    }
    .to_tpmt();
    for p in PROVIDERS {
        f.verify(p, &attest, &sig).unwrap();
    }
}

#[test]
fn high_s_signatures_are_accepted() {
    let f = Forge::new();
    let attest = f.quote_attest().encode();
    let Signature::Ecdsa { r, s, .. } = Signature::from_tpmt(&f.sign(&attest)).unwrap() else {
        panic!()
    };
    // s' = n - s.
    let n =
        hex::decode("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551").unwrap();
    let mut high = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(n[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(d < 0);
        high[i] = (d + 256 * borrow) as u8;
    }
    let sig = Signature::Ecdsa {
        hash: HashAlg::Sha256,
        r,
        s: high.to_vec(),
    }
    .to_tpmt();
    for p in PROVIDERS {
        f.verify(p, &attest, &sig)
            .unwrap_or_else(|e| panic!("{}: {e}", p.name()));
    }
}

#[test]
fn signature_scheme_not_the_one_the_ak_pins() {
    let f = Forge::new();
    let attest = f.quote_attest().encode();
    let sig = Signature::RsaSsa {
        hash: HashAlg::Sha256,
        sig: vec![1; 256],
    }
    .to_tpmt();
    for p in PROVIDERS {
        expect_code(f.verify(p, &attest, &sig), "signature_scheme");
    }
    let Signature::Ecdsa { r, s, .. } = Signature::from_tpmt(&f.sign(&attest)).unwrap() else {
        panic!()
    };
    let sig = Signature::Ecdsa {
        hash: HashAlg::Sha384,
        r,
        s,
    }
    .to_tpmt();
    for p in PROVIDERS {
        expect_code(f.verify(p, &attest, &sig), "signature_scheme");
    }
}

#[test]
fn sha1_signature_where_sha256_is_required() {
    let f = Forge::new();
    let attest = f.quote_attest().encode();
    let Signature::Ecdsa { r, s, .. } = Signature::from_tpmt(&f.sign(&attest)).unwrap() else {
        panic!()
    };
    let sig = Signature::Ecdsa {
        hash: HashAlg::Sha1,
        r,
        s,
    }
    .to_tpmt();
    for p in PROVIDERS {
        expect_code(f.verify(p, &attest, &sig), "hash_too_weak");
    }
}

#[test]
fn trailing_bytes_and_truncation_are_malformed() {
    let f = Forge::new();
    let mut attest = f.quote_attest().encode();
    attest.push(0);
    let sig = f.sign(&attest);
    for p in PROVIDERS {
        expect_code(f.verify(p, &attest, &sig), "malformed");
    }
    let attest = f.quote_attest().encode();
    let short = &attest[..attest.len() - 1];
    let sig = f.sign(short);
    for p in PROVIDERS {
        expect_code(f.verify(p, short, &sig), "malformed");
    }
}

#[test]
fn ak_with_each_bad_attribute() {
    let k = key(1);
    for (bit, name) in [
        (attr::RESTRICTED, "restricted"),
        (attr::SIGN_ENCRYPT, "sign"),
        (attr::FIXED_TPM, "fixedTPM"),
        (attr::FIXED_PARENT, "fixedParent"),
        (attr::SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
    ] {
        let e = CheckedAk::from_tpmt(&ak_public(&k, AK_ATTRS & !bit)).unwrap_err();
        assert_eq!(e.code(), "ak_attributes", "{name}: {e}");
        assert!(e.to_string().contains(name), "{e}");
    }
    let e = CheckedAk::from_tpmt(&ak_public(&k, AK_ATTRS | attr::DECRYPT)).unwrap_err();
    assert_eq!(e.code(), "ak_attributes");
}

#[test]
fn ak_weak_or_unpinned_algorithms() {
    let k = key(1);
    let unpinned = public::encode(
        HashAlg::Sha256,
        AK_ATTRS,
        &[],
        &ecc_params(&k, Scheme::Null),
    );
    assert_eq!(
        CheckedAk::from_tpmt(&unpinned).unwrap_err().code(),
        "ak_algorithm"
    );
    let sha1 = public::encode(
        HashAlg::Sha256,
        AK_ATTRS,
        &[],
        &ecc_params(&k, Scheme::Ecdsa(HashAlg::Sha1)),
    );
    assert_eq!(
        CheckedAk::from_tpmt(&sha1).unwrap_err().code(),
        "hash_too_weak"
    );
    let sha1_name = public::encode(
        HashAlg::Sha1,
        AK_ATTRS,
        &[],
        &ecc_params(&k, Scheme::Ecdsa(HashAlg::Sha256)),
    );
    assert_eq!(
        CheckedAk::from_tpmt(&sha1_name).unwrap_err().code(),
        "ak_algorithm"
    );
    let mismatched = public::encode(
        HashAlg::Sha256,
        AK_ATTRS,
        &[],
        &ecc_params(&k, Scheme::Ecdsa(HashAlg::Sha384)),
    );
    assert_eq!(
        CheckedAk::from_tpmt(&mismatched).unwrap_err().code(),
        "ak_algorithm"
    );
    let short_rsa = KeyParams::Rsa {
        symmetric: 0x0010,
        scheme: Scheme::RsaSsa(HashAlg::Sha256),
        key_bits: 1024,
        exponent: 0,
        modulus: vec![0xc5; 128],
    };
    let short = public::encode(HashAlg::Sha256, AK_ATTRS, &[], &short_rsa);
    assert_eq!(
        CheckedAk::from_tpmt(&short).unwrap_err().code(),
        "ak_algorithm"
    );
    // A BN curve (TPM_ECC_BN_P256, 0x0010) is not accepted at all.
    let mut bn = ak_public(&k, AK_ATTRS);
    let curve_at = bn.len() - 2 - 32 - 2 - 32 - 2 - 2;
    bn[curve_at..curve_at + 2].copy_from_slice(&0x0010u16.to_be_bytes());
    assert_eq!(
        CheckedAk::from_tpmt(&bn).unwrap_err().code(),
        "unsupported_algorithm"
    );
}

#[test]
fn nonces_are_bounded() {
    assert_eq!(Nonce::new(&[]).unwrap_err().code(), "nonce_invalid");
    assert_eq!(Nonce::new(&[0; 65]).unwrap_err().code(), "nonce_invalid");
    Nonce::new(&[0; 64]).unwrap();
}

#[test]
fn counters() {
    let base = ClockInfo {
        clock: 1000,
        reset_count: 3,
        restart_count: 1,
        safe: true,
    };
    let at = |clock, reset_count, restart_count| ClockInfo {
        clock,
        reset_count,
        restart_count,
        safe: true,
    };
    assert_eq!(
        CounterChange::between(&base, &at(2000, 3, 1)),
        CounterChange::Unchanged
    );
    assert_eq!(
        CounterChange::between(&base, &at(5, 4, 0)),
        CounterChange::Reboot
    );
    assert_eq!(
        CounterChange::between(&base, &at(5, 7, 0)),
        CounterChange::Jump { resets: 4 }
    );
    assert_eq!(
        CounterChange::between(&base, &at(2000, 3, 2)),
        CounterChange::Restart
    );
    assert_eq!(
        CounterChange::between(&base, &at(2000, 2, 9)),
        CounterChange::Rollback {
            counter: "resetCount"
        }
    );
    assert_eq!(
        CounterChange::between(&base, &at(2000, 3, 0)),
        CounterChange::Rollback {
            counter: "restartCount"
        }
    );
    assert_eq!(
        CounterChange::between(&base, &at(999, 3, 1)),
        CounterChange::Rollback { counter: "clock" }
    );
}

fn holder_public(attrs: u32) -> Vec<u8> {
    public::encode(
        HashAlg::Sha256,
        attrs,
        &[],
        &ecc_params(&key(9), Scheme::Ecdsa(HashAlg::Sha256)),
    )
}

#[test]
fn a_good_certification_verifies() {
    let f = Forge::new();
    let holder = holder_public(HOLDER_ATTRS);
    let attest = f.certify_attest(&holder).encode();
    let sig = f.sign(&attest);
    for p in PROVIDERS {
        let c = verify_certify(p, &f.checked_ak(), &attest, &sig, &f.nonce, &holder).unwrap();
        assert_eq!(
            c.name(),
            Public::from_tpmt(&holder).unwrap().name().unwrap()
        );
        assert_eq!(c.ak_name(), f.checked_ak().name());
    }
}

#[test]
fn certified_name_must_match_the_presented_key() {
    let f = Forge::new();
    let holder = holder_public(HOLDER_ATTRS);
    let other = public::encode(
        HashAlg::Sha256,
        HOLDER_ATTRS,
        &[],
        &ecc_params(&key(10), Scheme::Ecdsa(HashAlg::Sha256)),
    );
    let attest = f.certify_attest(&holder).encode();
    let sig = f.sign(&attest);
    for p in PROVIDERS {
        let r = verify_certify(p, &f.checked_ak(), &attest, &sig, &f.nonce, &other);
        expect_code(r.map(|_| ()), "certified_name");
    }
}

#[test]
fn certified_key_must_be_a_tpm_bound_signing_key() {
    let f = Forge::new();
    for (attrs, why) in [
        (HOLDER_ATTRS & !attr::FIXED_TPM, "fixedTPM"),
        (HOLDER_ATTRS & !attr::FIXED_PARENT, "fixedParent"),
        (
            HOLDER_ATTRS & !attr::SENSITIVE_DATA_ORIGIN,
            "sensitiveDataOrigin",
        ),
        (HOLDER_ATTRS & !attr::SIGN_ENCRYPT, "sign"),
        (HOLDER_ATTRS | attr::DECRYPT, "decrypt"),
        (HOLDER_ATTRS | attr::RESTRICTED, "restricted"),
    ] {
        let holder = holder_public(attrs);
        let attest = f.certify_attest(&holder).encode();
        let sig = f.sign(&attest);
        for p in PROVIDERS {
            let e =
                verify_certify(p, &f.checked_ak(), &attest, &sig, &f.nonce, &holder).unwrap_err();
            assert_eq!(e.code(), "certified_key", "{why}: {e}");
            assert!(e.to_string().contains(why), "{e}");
        }
    }
}

#[test]
fn quote_presented_as_certification() {
    let f = Forge::new();
    let holder = holder_public(HOLDER_ATTRS);
    let attest = f.quote_attest().encode();
    let sig = f.sign(&attest);
    for p in PROVIDERS {
        let r = verify_certify(p, &f.checked_ak(), &attest, &sig, &f.nonce, &holder);
        expect_code(r.map(|_| ()), "attest_type");
    }
}

#[test]
fn certification_with_a_foreign_nonce() {
    let f = Forge::new();
    let holder = holder_public(HOLDER_ATTRS);
    let attest = Attest {
        extra_data: vec![1; 32],
        ..f.certify_attest(&holder)
    }
    .encode();
    let sig = f.sign(&attest);
    for p in PROVIDERS {
        let r = verify_certify(p, &f.checked_ak(), &attest, &sig, &f.nonce, &holder);
        expect_code(r.map(|_| ()), "nonce_mismatch");
    }
}

#[test]
fn wire_types_round_trip() {
    let f = Forge::new();
    let q = f.quote_attest();
    assert_eq!(Attest::parse(&q.encode()).unwrap(), q);
    let c = f.certify_attest(&f.ak_public);
    assert_eq!(Attest::parse(&c.encode()).unwrap(), c);
    let p = Public::from_tpmt(&f.ak_public).unwrap();
    assert_eq!(
        public::encode(p.name_alg(), p.attributes(), p.auth_policy(), p.params()),
        f.ak_public
    );
    let mut tpm2b = (f.ak_public.len() as u16).to_be_bytes().to_vec();
    tpm2b.extend_from_slice(&f.ak_public);
    assert_eq!(Public::from_tpm2b(&tpm2b).unwrap(), p);
    let sig = f.sign(b"x");
    assert_eq!(Signature::from_tpmt(&sig).unwrap().to_tpmt(), sig);
    let rsa = Signature::RsaPss {
        hash: HashAlg::Sha256,
        sig: vec![7; 256],
    };
    assert_eq!(Signature::from_tpmt(&rsa.to_tpmt()).unwrap(), rsa);
    let sel: PcrSelection = "sha256:0,1,2,7+sha1:0,23".parse().unwrap();
    assert_eq!(sel.to_string(), "sha256:0,1,2,7+sha1:0,23");
}

mod rsa_ak {
    use super::*;
    use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
    use rsa::traits::PublicKeyParts;

    fn rsa_key() -> rsa::RsaPrivateKey {
        rsa::RsaPrivateKey::new(&mut rand_core_06::OsRng, 2048).unwrap()
    }

    fn rsa_ak(k: &rsa::RsaPrivateKey, scheme: Scheme) -> CheckedAk {
        let params = KeyParams::Rsa {
            symmetric: 0x0010,
            scheme,
            key_bits: 2048,
            exponent: 0,
            modulus: k.n().to_bytes_be(),
        };
        CheckedAk::from_tpmt(&public::encode(HashAlg::Sha256, AK_ATTRS, &[], &params)).unwrap()
    }

    #[test]
    fn rsassa_and_rsapss_quotes_verify_with_both_providers() {
        let f = Forge::new();
        let k = rsa_key();
        let attest = f.quote_attest().encode();
        let pkcs1 = rsa::pkcs1v15::SigningKey::<sha2_010::Sha256>::new(k.clone())
            .sign(&attest)
            .to_vec();
        let pss = rsa::pss::SigningKey::<sha2_010::Sha256>::new(k.clone())
            .sign_with_rng(&mut rand_core_06::OsRng, &attest)
            .to_vec();
        let ssa_ak = rsa_ak(&k, Scheme::RsaSsa(HashAlg::Sha256));
        let pss_ak = rsa_ak(&k, Scheme::RsaPss(HashAlg::Sha256));
        let ssa_sig = Signature::RsaSsa {
            hash: HashAlg::Sha256,
            sig: pkcs1,
        }
        .to_tpmt();
        let pss_sig = Signature::RsaPss {
            hash: HashAlg::Sha256,
            sig: pss,
        }
        .to_tpmt();
        for p in PROVIDERS {
            verify_quote(
                p,
                &ssa_ak,
                &attest,
                &ssa_sig,
                &f.nonce,
                &f.selection,
                &f.pcrs,
            )
            .unwrap_or_else(|e| panic!("{} RSASSA: {e}", p.name()));
            verify_quote(
                p,
                &pss_ak,
                &attest,
                &pss_sig,
                &f.nonce,
                &f.selection,
                &f.pcrs,
            )
            .unwrap_or_else(|e| panic!("{} RSAPSS: {e}", p.name()));
            // Each AK refuses the other scheme.
            let e = verify_quote(
                p,
                &ssa_ak,
                &attest,
                &pss_sig,
                &f.nonce,
                &f.selection,
                &f.pcrs,
            )
            .unwrap_err();
            assert_eq!(e.code(), "signature_scheme");
            let mut flipped = attest.clone();
            flipped[10] ^= 1;
            let e = verify_quote(
                p,
                &ssa_ak,
                &flipped,
                &ssa_sig,
                &f.nonce,
                &f.selection,
                &f.pcrs,
            )
            .unwrap_err();
            assert_eq!(e.code(), "signature");
        }
    }
}

/// The tpm2-tools quote files from Keylime's test data parse (their AK is not published, so this
/// is a parsing test only).
#[test]
fn keylime_tpm2_tools_quote_vectors_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/vectors/tpm2-tools-quote");
    let attest =
        std::fs::read(dir.join("keylime_quote.out")).expect("shared/vectors beside the checkout");
    let parsed = Attest::parse(&attest).unwrap();
    assert_eq!(parsed.magic, TPM_GENERATED);
    assert_eq!(parsed.kind, ST_ATTEST_QUOTE);
    let Attested::Quote {
        selection,
        pcr_digest,
    } = &parsed.attested
    else {
        panic!()
    };
    assert_eq!(pcr_digest.len(), 32);
    assert!(
        selection
            .banks()
            .iter()
            .any(|(b, p)| *b == HashAlg::Sha256 && !p.is_empty())
    );
    assert_eq!(parsed.encode(), attest, "re-encodes byte for byte");
    let sig =
        Signature::from_tpmt(&std::fs::read(dir.join("keylime_quotesig.out")).unwrap()).unwrap();
    assert!(
        matches!(sig, Signature::RsaSsa { hash: HashAlg::Sha256, ref sig } if sig.len() == 256)
    );
}

#[test]
fn keylime_tpm2_tools_pcr_file_parses_and_matches_its_quote() {
    use writ_attestation::tpm::tools::read_pcr_file;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/vectors/tpm2-tools-quote");
    let (selection, values) =
        read_pcr_file(&std::fs::read(dir.join("keylime_quotepcr.out")).unwrap()).unwrap();
    let attest = Attest::parse(&std::fs::read(dir.join("keylime_quote.out")).unwrap()).unwrap();
    let Attested::Quote {
        selection: quoted,
        pcr_digest,
    } = attest.attested
    else {
        panic!()
    };
    assert!(selection.same_pcrs(&quoted), "{selection} vs {quoted}");
    assert_eq!(
        values.digest(&quoted, HashAlg::Sha256).unwrap(),
        pcr_digest,
        "the PCR file reproduces the quote's digest"
    );
    // Truncated or padded files are refused.
    let bytes = std::fs::read(dir.join("keylime_quotepcr.out")).unwrap();
    assert!(read_pcr_file(&bytes[..bytes.len() - 1]).is_err());
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(read_pcr_file(&longer).is_err());
}

/// Found by the tpm_attest fuzz target: a bank with sizeofSelect 0 (or 4) must re-encode as it came.
#[test]
fn pcr_selection_keeps_its_wire_size() {
    let f = Forge::new();
    let mut attest = f.quote_attest().encode();
    // The quote body starts after the fixed header; rewrite its selection to one SHA-1 bank with
    // sizeofSelect 0 and no digest change (the parse is what is tested here).
    let body = attest.len() - (4 + 2 + 1 + 3 + 2 + 32);
    attest.truncate(body);
    attest.extend_from_slice(&[0, 0, 0, 1, 0x00, 0x04, 0x00, 0x00, 0x00]);
    let parsed = Attest::parse(&attest).unwrap();
    assert_eq!(parsed.encode(), attest);
    let four: PcrSelection = "sha256:0,25".parse().unwrap();
    let a = Attest {
        attested: Attested::Quote {
            selection: four,
            pcr_digest: vec![0; 32],
        },
        ..f.quote_attest()
    };
    assert_eq!(Attest::parse(&a.encode()).unwrap(), a);
}

#[test]
fn empty_required_selection_is_refused_by_verify_quote() {
    // A selection with no bank at all can be had from the wire (TPML_PCR_SELECTION count 0).
    let f = Forge::new();
    let mut empty_quote = f.quote_attest();
    let mut wire = Attest {
        attested: Attested::Quote {
            selection: f.selection.clone(),
            pcr_digest: vec![],
        },
        ..f.quote_attest()
    }
    .encode();
    let sel_at = wire.len() - 2 - 10;
    wire.truncate(sel_at);
    wire.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let Attested::Quote {
        selection: empty, ..
    } = Attest::parse(&wire).unwrap().attested
    else {
        panic!()
    };
    assert!(empty.is_empty());
    // A quote over nothing, with the digest of nothing: only the empty-selection check refuses it.
    empty_quote.attested = Attested::Quote {
        selection: empty.clone(),
        pcr_digest: Sha256::digest(b"").to_vec(),
    };
    let attest = empty_quote.encode();
    let sig = f.sign(&attest);
    for p in PROVIDERS {
        let e =
            verify_quote(p, &f.checked_ak(), &attest, &sig, &f.nonce, &empty, &f.pcrs).unwrap_err();
        assert_eq!(e.code(), "pcr_selection");
    }
}

#[test]
fn providers_refuse_mismatched_curve_and_hash_pairs() {
    use writ_attestation::crypto::{SigAlg, SignatureValue, VerifyKey};
    let k = key(1);
    let point = k.verifying_key().to_sec1_point(false);
    let vk = VerifyKey::Ecc {
        curve: EccCurve::P256,
        x: point.x().unwrap(),
        y: point.y().unwrap(),
    };
    let digest: [u8; 32] = Sha256::digest(b"m").into();
    let sig: p256::ecdsa::Signature = k.sign_prehash(&digest).unwrap();
    let b = sig.to_bytes();
    for p in PROVIDERS {
        let sv = SignatureValue::Ecdsa {
            r: &b[..32],
            s: &b[32..],
        };
        assert!(
            p.verify(&vk, SigAlg::Ecdsa(HashAlg::Sha256), b"m", &sv)
                .is_ok(),
            "{}",
            p.name()
        );
        for h in [HashAlg::Sha384, HashAlg::Sha512] {
            let e = p.verify(&vk, SigAlg::Ecdsa(h), b"m", &sv).unwrap_err();
            assert_eq!(e.code(), "unsupported_algorithm", "{} with {h:?}", p.name());
        }
    }
}

fn rsa_params(key_bits: u16, modulus: Vec<u8>, exponent: u32, scheme: Scheme) -> Vec<u8> {
    public::encode(
        HashAlg::Sha256,
        AK_ATTRS,
        &[],
        &KeyParams::Rsa {
            symmetric: 0x0010,
            scheme,
            key_bits,
            exponent,
            modulus,
        },
    )
}

#[test]
fn rsa_ak_shape_is_checked() {
    let good = vec![0xc5u8; 256];
    CheckedAk::from_tpmt(&rsa_params(
        2048,
        good.clone(),
        0,
        Scheme::RsaSsa(HashAlg::Sha256),
    ))
    .unwrap();
    let cases = [
        (
            rsa_params(2048, good.clone(), 3, Scheme::RsaSsa(HashAlg::Sha256)),
            "ak_algorithm",
            "exponent 3",
        ),
        (
            rsa_params(
                2048,
                {
                    let mut m = good.clone();
                    m[0] = 0x45;
                    m
                },
                0,
                Scheme::RsaSsa(HashAlg::Sha256),
            ),
            "ak_algorithm",
            "short modulus",
        ),
        (
            rsa_params(3072, good.clone(), 0, Scheme::RsaSsa(HashAlg::Sha256)),
            "ak_algorithm",
            "size mismatch",
        ),
        (
            rsa_params(2048, good.clone(), 0, Scheme::RsaSsa(HashAlg::Sha1)),
            "hash_too_weak",
            "SHA-1 scheme",
        ),
        (
            rsa_params(2048, good, 0, Scheme::Null),
            "ak_algorithm",
            "no scheme",
        ),
    ];
    for (bytes, code, why) in cases {
        assert_eq!(
            CheckedAk::from_tpmt(&bytes).unwrap_err().code(),
            code,
            "{why}"
        );
    }
}

#[test]
fn certified_keys_must_be_p256_ecdsa() {
    let f = Forge::new();
    let rsa_holder = public::encode(
        HashAlg::Sha256,
        HOLDER_ATTRS,
        &[],
        &KeyParams::Rsa {
            symmetric: 0x0010,
            scheme: Scheme::RsaSsa(HashAlg::Sha256),
            key_bits: 2048,
            exponent: 0,
            modulus: vec![0xc5; 256],
        },
    );
    let ecdh_holder = public::encode(
        HashAlg::Sha256,
        HOLDER_ATTRS,
        &[],
        &ecc_params(&key(9), Scheme::Other(0x0019)),
    );
    for holder in [rsa_holder, ecdh_holder] {
        let attest = f.certify_attest(&holder).encode();
        let sig = f.sign(&attest);
        for p in PROVIDERS {
            let e =
                verify_certify(p, &f.checked_ak(), &attest, &sig, &f.nonce, &holder).unwrap_err();
            assert_eq!(e.code(), "certified_key", "{e}");
        }
    }
}

#[test]
fn other_attestation_types_keep_their_body_and_are_refused() {
    let f = Forge::new();
    let mut wire = Attest {
        kind: 0x8014,
        attested: Attested::Other {
            tag: 0x8014,
            body: vec![1, 2, 3],
        },
        ..f.quote_attest()
    }
    .encode();
    let parsed = Attest::parse(&wire).unwrap();
    assert_eq!(parsed.encode(), wire);
    let sig = f.sign(&wire);
    for p in PROVIDERS {
        expect_code(f.verify(p, &wire, &sig), "attest_type");
    }
    wire.truncate(wire.len() - 3);
    assert!(
        Attest::parse(&wire).is_ok(),
        "an empty body is still a body"
    );
}
