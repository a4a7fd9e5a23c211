//! Evidence made by a real swtpm (through writ-hsm's attester operations) verified by the pure
//! verifier, with both crypto providers.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use writ_attestation::crypto::{AwsLc, CryptoProvider, RustCrypto};
use writ_attestation::evidence::{CheckedAk, Nonce, verify_certify, verify_quote};
use writ_attestation::tpm::HashAlg;
use writ_attestation::tpm::pcr::{PcrSelection, PcrValues};
use writ_hsm::tpm::attester::Attester;
use writ_testkit::Swtpm;

const PROVIDERS: [&dyn CryptoProvider; 2] = [&RustCrypto, &AwsLc];

fn pcr_values(attester: &Attester, selection: &str) -> PcrValues {
    attester.read_pcrs(&selection.parse().unwrap()).unwrap()
}

#[test]
fn swtpm_quotes_verify_and_bind_nonce_selection_and_values() {
    let tpm = Swtpm::start();
    let attester = Attester::open(Some(&tpm.tcti())).unwrap();
    let ak_blob = attester.create_ak().unwrap();
    let ak = CheckedAk::from_tpmt(&ak_blob.public).expect("a tss-esapi AK passes the AK checks");
    assert_eq!(ak.name(), ak_blob.name.as_slice(), "names computed alike");
    let loaded = attester.load_ak(&ak_blob).unwrap();
    attester.extend_pcr(16, &[3u8; 32]).unwrap();
    let spec = "sha256:0,1,2,3,7,16";
    let nonce = Nonce::new(&[0x5a; 32]).unwrap();
    let quote = attester
        .quote(&loaded, nonce.as_bytes(), &spec.parse().unwrap())
        .unwrap();
    let required: PcrSelection = spec.parse().unwrap();
    let values = pcr_values(&attester, spec);
    for p in PROVIDERS {
        let v = verify_quote(
            p,
            &ak,
            &quote.attest,
            &quote.signature,
            &nonce,
            &required,
            &values,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", p.name()));
        assert_eq!(
            v.pcrs().get(HashAlg::Sha256, 16),
            values.get(HashAlg::Sha256, 16)
        );
        assert!(v.clock().safe);
        // Another nonce, another selection, a changed value: each refused.
        let other = Nonce::new(&[0x5b; 32]).unwrap();
        let e = verify_quote(
            p,
            &ak,
            &quote.attest,
            &quote.signature,
            &other,
            &required,
            &values,
        )
        .unwrap_err();
        assert_eq!(e.code(), "nonce_mismatch");
        let wider: PcrSelection = "sha256:0,1,2,3,7,16,23".parse().unwrap();
        let e = verify_quote(
            p,
            &ak,
            &quote.attest,
            &quote.signature,
            &nonce,
            &wider,
            &values,
        )
        .unwrap_err();
        assert_eq!(e.code(), "pcr_selection");
    }
    // The PCR moves on; the old quote no longer matches the new values.
    attester.extend_pcr(16, &[4u8; 32]).unwrap();
    let moved = pcr_values(&attester, spec);
    let e = verify_quote(
        &AwsLc,
        &ak,
        &quote.attest,
        &quote.signature,
        &nonce,
        &required,
        &moved,
    )
    .unwrap_err();
    assert_eq!(e.code(), "pcr_digest");
}

#[test]
fn swtpm_reboot_shows_in_the_counters() {
    let tpm = Swtpm::start();
    let attester = Attester::open(Some(&tpm.tcti())).unwrap();
    let ak_blob = attester.create_ak().unwrap();
    let ak = CheckedAk::from_tpmt(&ak_blob.public).unwrap();
    let spec = "sha256:0";
    let required: PcrSelection = spec.parse().unwrap();
    let quote_now = || {
        let loaded = attester.load_ak(&ak_blob).unwrap();
        let nonce = Nonce::new(b"counter check").unwrap();
        let q = attester
            .quote(
                &loaded,
                nonce.as_bytes(),
                &required.to_string().parse().unwrap(),
            )
            .unwrap();
        verify_quote(
            &AwsLc,
            &ak,
            &q.attest,
            &q.signature,
            &nonce,
            &required,
            &pcr_values(&attester, spec),
        )
        .unwrap()
    };
    let first = quote_now();
    let second = quote_now();
    assert_eq!(
        second.counters_since(&first.clock()),
        writ_attestation::evidence::CounterChange::Unchanged
    );
    tpm.reboot();
    let third = quote_now();
    assert_eq!(
        third.counters_since(&second.clock()),
        writ_attestation::evidence::CounterChange::Reboot
    );
    assert_eq!(
        second.counters_since(&third.clock()),
        writ_attestation::evidence::CounterChange::Rollback {
            counter: "resetCount"
        }
    );
}

#[test]
fn swtpm_certification_of_a_holder_key_verifies() {
    let tpm = Swtpm::start();
    let attester = Attester::open(Some(&tpm.tcti())).unwrap();
    let ak_blob = attester.create_ak().unwrap();
    let ak = CheckedAk::from_tpmt(&ak_blob.public).unwrap();
    let loaded_ak = attester.load_ak(&ak_blob).unwrap();
    let holder_blob = attester.create_holder_key(Some(b"holder auth")).unwrap();
    let holder = attester
        .load_holder_key(&holder_blob, Some(b"holder auth"))
        .unwrap();
    let nonce = Nonce::new(&[7u8; 32]).unwrap();
    let cert = attester
        .certify(&loaded_ak, &holder, nonce.as_bytes())
        .unwrap();
    for p in PROVIDERS {
        let c = verify_certify(
            p,
            &ak,
            &cert.attest,
            &cert.signature,
            &nonce,
            &holder_blob.public,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", p.name()));
        assert_eq!(c.name(), holder_blob.name.as_slice());
        // The AK's own public area is not what was certified.
        let e = verify_certify(
            p,
            &ak,
            &cert.attest,
            &cert.signature,
            &nonce,
            &ak_blob.public,
        )
        .unwrap_err();
        assert_eq!(e.code(), "certified_name");
    }
    // A certification of the AK by itself is refused: restricted keys are not holder keys.
    let self_cert = attester
        .certify(&loaded_ak, &loaded_ak, nonce.as_bytes())
        .unwrap();
    let e = verify_certify(
        &AwsLc,
        &ak,
        &self_cert.attest,
        &self_cert.signature,
        &nonce,
        &ak_blob.public,
    )
    .unwrap_err();
    assert_eq!(e.code(), "certified_key");
}

#[test]
fn swtpm_ek_certificates_chain_to_the_local_ca_and_the_key_activates() {
    use writ_attestation::evidence::{EkPublicKey, EkTrustStore, make_credential};
    let tpm = Swtpm::start();
    let attester = Attester::open(Some(&tpm.tcti())).unwrap();
    let mut store = EkTrustStore::new();
    for f in ["swtpm-localca-rootca-cert.pem", "issuercert.pem"] {
        store
            .add_pem(&std::fs::read_to_string(tpm.ca_dir().join(f)).unwrap())
            .unwrap();
    }
    assert_eq!(store.len(), (1, 1));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let certs = attester.ek_certificates().unwrap();
    for c in &certs {
        for p in PROVIDERS {
            let trusted = store
                .verify(p, &c.der, now)
                .unwrap_or_else(|e| panic!("{:?} via {}: {e}", c.kind, p.name()));
            assert_eq!(trusted.chain().len(), 3);
        }
    }
    // The RSA EK: the key from the certificate is the TPM's EK, and a credential to it activates.
    let rsa = certs
        .iter()
        .find(|c| c.kind == writ_hsm::tpm::attester::EkKind::Rsa2048)
        .unwrap();
    let trusted = store.verify(&AwsLc, &rsa.der, now).unwrap();
    let EkPublicKey::Rsa2048 { modulus, .. } = trusted.key() else {
        panic!("RSA EK")
    };
    let ek_public =
        writ_attestation::tpm::public::Public::from_tpmt(&attester.ek_public().unwrap()).unwrap();
    let writ_attestation::tpm::public::KeyParams::Rsa {
        modulus: tpm_modulus,
        ..
    } = ek_public.params()
    else {
        panic!()
    };
    assert_eq!(modulus, tpm_modulus);
    trusted
        .check_public(&ek_public)
        .expect("the TPM's EK is the certificate's");
    // An EK public area that is not the certificate's (here: the AK's) is refused.
    let ak_public =
        writ_attestation::tpm::public::Public::from_tpmt(&attester.create_ak().unwrap().public)
            .unwrap();
    assert_eq!(
        trusted.check_public(&ak_public).unwrap_err().code(),
        "ek_mismatch"
    );
    let ak = attester.create_ak().unwrap();
    let challenge = make_credential(trusted.key(), &ak.name, &[9u8; 32], &mut |b| {
        getrandom::fill(b).map_err(|e| writ_attestation::EvidenceError::Malformed(e.to_string()))
    })
    .unwrap();
    let secret = attester
        .activate_credential(&ak, &challenge.id_object, &challenge.encrypted_secret)
        .unwrap();
    assert_eq!(secret.as_slice(), &[9u8; 32]);
    // Another TPM's store (the manufacturer roots) does not trust it.
    let mut manufacturers = EkTrustStore::new();
    let roots = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/vectors/tpm-manufacturer-roots");
    for entry in std::fs::read_dir(roots).unwrap() {
        let _ = manufacturers.add_pem(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    assert_eq!(
        manufacturers
            .verify(&AwsLc, &rsa.der, now)
            .unwrap_err()
            .code(),
        "ek_untrusted"
    );
}
