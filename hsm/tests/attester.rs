//! The attester's TPM operations against a real swtpm. The checks here use independent oracles
//! (tss-esapi's own parsers, p256, tpm2-tools' software MakeCredential), not writ's verifier,
//! which is the `attestation` crate's business.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use sha2::{Digest, Sha256};
use tss_esapi::structures::{Attest, AttestInfo, Public, Signature as TpmSignature};
use tss_esapi::traits::UnMarshall;
use writ_hsm::CustodyError;
use writ_hsm::tpm::attester::{
    Attester, EkKind, HashAlg, KeyBlob, PcrSelection, SignedAttest, read_event_log,
};
use writ_testkit::Swtpm;

fn verifying_key(blob: &KeyBlob) -> p256::ecdsa::VerifyingKey {
    match Public::unmarshall(&blob.public).unwrap() {
        Public::Ecc { unique, .. } => {
            let mut sec1 = vec![4u8];
            sec1.extend_from_slice(&pad(unique.x().value()));
            sec1.extend_from_slice(&pad(unique.y().value()));
            p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).unwrap()
        }
        other => panic!("not ECC: {other:?}"),
    }
}

fn pad(v: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[32 - v.len()..].copy_from_slice(v);
    out
}

/// Parses and signature-checks a TPMS_ATTEST with the AK's public key.
fn check_signed(ak: &KeyBlob, signed: &SignedAttest) -> Attest {
    let sig = match TpmSignature::unmarshall(&signed.signature).unwrap() {
        TpmSignature::EcDsa(s) => p256::ecdsa::Signature::from_scalars(
            pad(s.signature_r().value()),
            pad(s.signature_s().value()),
        )
        .unwrap(),
        other => panic!("not ECDSA: {other:?}"),
    };
    let vk = verifying_key(ak);
    vk.verify(&signed.attest, &sig)
        .expect("AK signature over TPMS_ATTEST verifies");
    let mut tampered = signed.attest.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(
        vk.verify(&tampered, &sig).is_err(),
        "a changed attestation does not verify"
    );
    Attest::unmarshall(&signed.attest).unwrap()
}

#[test]
fn ek_certificates_are_read_and_match_the_ek() {
    let tpm = Swtpm::start();
    let attester = Attester::open(Some(&tpm.tcti())).unwrap();
    let certs = attester.ek_certificates().unwrap();
    let rsa = certs
        .iter()
        .find(|c| c.kind == EkKind::Rsa2048)
        .expect("RSA EK certificate");
    assert_eq!(rsa.nv_index, 0x01c0_0002);
    assert!(
        certs.iter().any(|c| c.kind == EkKind::EccP384),
        "swtpm provisions a P-384 EK cert too"
    );
    // The NV content is the certificate written at provisioning.
    assert_eq!(
        rsa.der,
        std::fs::read(tpm.ek_cert_file("ek-rsa2048.crt")).unwrap()
    );
    // And it certifies the EK that the default template produces.
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(&rsa.der).unwrap();
    let spki_bits = cert
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes()
        .to_vec();
    let ek = match Public::unmarshall(&attester.ek_public().unwrap()).unwrap() {
        Public::Rsa { unique, .. } => unique.value().to_vec(),
        other => panic!("EK not RSA: {other:?}"),
    };
    assert!(
        spki_bits.windows(ek.len()).any(|w| w == ek.as_slice()),
        "the certificate's RSA modulus is the EK's"
    );
}

#[test]
fn quote_verifies_and_covers_the_pcrs_and_nonce() {
    let tpm = Swtpm::start();
    let attester = Attester::open(Some(&tpm.tcti())).unwrap();
    let ak_blob = attester.create_ak().unwrap();
    let ak = attester.load_ak(&ak_blob).unwrap();
    let selection: PcrSelection = "sha256:0,1,2,7,16".parse().unwrap();
    attester
        .extend_pcr(16, &Sha256::digest(b"writ test measurement").into())
        .unwrap();
    let nonce = [0x42u8; 32];
    let quote = attester.quote(&ak, &nonce, &selection).unwrap();
    let attest = check_signed(&ak_blob, &quote);
    assert_eq!(attest.extra_data().value(), &nonce);
    assert_eq!(attest.qualified_signer().value()[..2], [0x00, 0x0b]);
    let pcrs = attester.read_pcrs(&selection).unwrap();
    assert_eq!(pcrs.iter().count(), 5);
    assert_ne!(
        pcrs.get(HashAlg::Sha256, 16),
        Some(&[0u8; 32][..]),
        "PCR 16 was extended"
    );
    let mut h = Sha256::new();
    for (bank, index) in selection.pcrs() {
        h.update(pcrs.get(bank, index).unwrap());
    }
    match attest.attested() {
        AttestInfo::Quote { info } => {
            assert_eq!(
                info.pcr_digest().value(),
                h.finalize().as_slice(),
                "pcrDigest is over the read PCRs"
            );
        }
        other => panic!("not a quote: {other:?}"),
    }
}

#[test]
fn quote_changes_when_a_pcr_changes() {
    let tpm = Swtpm::start();
    let attester = Attester::open(Some(&tpm.tcti())).unwrap();
    let ak_blob = attester.create_ak().unwrap();
    let ak = attester.load_ak(&ak_blob).unwrap();
    let selection: PcrSelection = "sha256:16".parse().unwrap();
    let digest = |q: &SignedAttest| match check_signed(&ak_blob, q).attested() {
        AttestInfo::Quote { info } => info.pcr_digest().value().to_vec(),
        _ => panic!("not a quote"),
    };
    let before = digest(&attester.quote(&ak, b"n1", &selection).unwrap());
    attester.extend_pcr(16, &[7u8; 32]).unwrap();
    let after = digest(&attester.quote(&ak, b"n2", &selection).unwrap());
    assert_ne!(before, after);
}

#[test]
fn quote_refuses_empty_and_oversized_nonces() {
    let tpm = Swtpm::start();
    let attester = Attester::open(Some(&tpm.tcti())).unwrap();
    let ak = attester.load_ak(&attester.create_ak().unwrap()).unwrap();
    let selection: PcrSelection = "sha256:0".parse().unwrap();
    assert!(matches!(
        attester.quote(&ak, b"", &selection),
        Err(CustodyError::InvalidInput(_))
    ));
    assert!(matches!(
        attester.quote(&ak, &[0u8; 65], &selection),
        Err(CustodyError::InvalidInput(_))
    ));
}

/// Runs tpm2-tools' software MakeCredential (no TPM) for the EK certificate's key and `name`.
fn make_credential(tpm: &Swtpm, name: &[u8], secret: &[u8]) -> (Vec<u8>, Vec<u8>) {
    use x509_cert::der::{Decode, Encode, EncodePem};
    let dir = tempfile::tempdir().unwrap();
    let der = std::fs::read(tpm.ek_cert_file("ek-rsa2048.crt")).unwrap();
    let cert = x509_cert::Certificate::from_der(&der).unwrap();
    let spki = cert.tbs_certificate().subject_public_key_info();
    let pem = spki.to_pem(x509_cert::der::pem::LineEnding::LF).unwrap();
    let _ = spki.to_der().unwrap();
    std::fs::write(dir.path().join("ek.pem"), pem).unwrap();
    std::fs::write(dir.path().join("secret"), secret).unwrap();
    let out = Command::new("tpm2_makecredential")
        .args(["-T", "none", "-G", "rsa", "-u"])
        .arg(dir.path().join("ek.pem"))
        .arg("-s")
        .arg(dir.path().join("secret"))
        .arg("-n")
        .arg(hex::encode(name))
        .arg("-o")
        .arg(dir.path().join("cred"))
        .output()
        .expect("tpm2_makecredential");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // tpm2-tools credential file: magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
    let f = std::fs::read(dir.path().join("cred")).unwrap();
    assert_eq!(f[..4], [0xba, 0xdc, 0xc0, 0xde]);
    let n1 = u16::from_be_bytes([f[8], f[9]]) as usize;
    let id = f[10..10 + n1].to_vec();
    let rest = &f[10 + n1..];
    let n2 = u16::from_be_bytes([rest[0], rest[1]]) as usize;
    (id, rest[2..2 + n2].to_vec())
}

#[test]
fn activate_credential_round_trip() {
    let tpm = Swtpm::start();
    let attester = Attester::open(Some(&tpm.tcti())).unwrap();
    let ak = attester.create_ak().unwrap();
    let secret = [0x5cu8; 32];
    let (id, enc) = make_credential(&tpm, &ak.name, &secret);
    let recovered = attester.activate_credential(&ak, &id, &enc).unwrap();
    assert_eq!(recovered.as_slice(), &secret);
}

#[test]
fn activate_credential_for_another_ak_fails() {
    let tpm = Swtpm::start();
    let attester = Attester::open(Some(&tpm.tcti())).unwrap();
    let ak = attester.create_ak().unwrap();
    let other = attester.create_ak().unwrap();
    assert_ne!(ak.name, other.name);
    let (id, enc) = make_credential(&tpm, &other.name, &[1u8; 32]);
    let err = attester
        .activate_credential(&ak, &id, &enc)
        .expect_err("credential bound to another AK");
    assert!(
        matches!(
            err,
            CustodyError::Tpm {
                op: "ActivateCredential",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn holder_key_is_certified_by_the_ak_and_signs() {
    let tpm = Swtpm::start();
    let attester = Attester::open(Some(&tpm.tcti())).unwrap();
    let ak_blob = attester.create_ak().unwrap();
    let ak = attester.load_ak(&ak_blob).unwrap();
    let holder_blob = attester.create_holder_key(Some(b"agent secret")).unwrap();
    let holder = attester
        .load_holder_key(&holder_blob, Some(b"agent secret"))
        .unwrap();
    let nonce = [9u8; 32];
    let cert = attester.certify(&ak, &holder, &nonce).unwrap();
    let attest = check_signed(&ak_blob, &cert);
    assert_eq!(attest.extra_data().value(), &nonce);
    match attest.attested() {
        AttestInfo::Certify { info } => {
            assert_eq!(info.name().value(), holder_blob.name.as_slice())
        }
        other => panic!("not a certification: {other:?}"),
    }
    let digest: [u8; 32] = Sha256::digest(b"dpop proof").into();
    let sig = attester.sign_digest(&holder, &digest).unwrap();
    verifying_key(&holder_blob)
        .verify_prehash(&digest, &sig)
        .unwrap();
}

#[test]
fn holder_key_with_wrong_auth_cannot_sign() {
    let tpm = Swtpm::start();
    let attester = Attester::open(Some(&tpm.tcti())).unwrap();
    let blob = attester.create_holder_key(Some(b"right")).unwrap();
    let holder = attester.load_holder_key(&blob, Some(b"wrong")).unwrap();
    let err = attester
        .sign_digest(&holder, &[1u8; 32])
        .expect_err("wrong authValue");
    assert!(matches!(err, CustodyError::Tpm { op: "Sign", .. }), "{err}");
}

#[test]
fn pcr_selection_syntax() {
    let s: PcrSelection = "sha256:7,0,1+sha1:0".parse().unwrap();
    assert_eq!(s.to_string(), "sha256:0,1,7+sha1:0");
    for bad in [
        "",
        "sha256",
        "sha256:",
        "md5:0",
        "sha256:32",
        "sha256:1,1",
        "sha256:0+sha256:1",
    ] {
        assert!(
            bad.parse::<PcrSelection>().is_err(),
            "{bad:?} must be refused"
        );
    }
}

#[test]
fn event_log_is_read_with_a_bound() {
    let dir = tempfile::tempdir().unwrap();
    let vectors = writ_testkit::repo_root()
        .join("../shared/vectors/eventlogs/keylime_binary_bios_measurements.bin");
    let path = if vectors.is_file() {
        vectors
    } else {
        let p = dir.path().join("log.bin");
        std::fs::write(&p, b"\x00\x00\x00\x00event log bytes").unwrap();
        p
    };
    assert_eq!(
        read_event_log(Some(&path)).unwrap(),
        std::fs::read(&path).unwrap()
    );
    let missing = read_event_log(Some(&dir.path().join("none"))).expect_err("missing file");
    assert!(
        matches!(
            missing,
            CustodyError::File {
                what: "event log",
                ..
            }
        ),
        "{missing}"
    );
    let big = dir.path().join("big");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(writ_hsm::tpm::attester::MAX_EVENT_LOG + 1)
        .unwrap();
    assert!(read_event_log(Some(&big)).is_err(), "oversized log refused");
}

#[test]
fn a_key_loaded_before_a_reboot_is_refused() {
    let tpm = Swtpm::start();
    let attester = Attester::open(Some(&tpm.tcti())).unwrap();
    let ak = attester.load_ak(&attester.create_ak().unwrap()).unwrap();
    let selection: PcrSelection = "sha256:0".parse().unwrap();
    attester.quote(&ak, b"before", &selection).unwrap();
    tpm.reboot();
    // Another key may now sit at the old transient handle; the attester must notice.
    let other = attester.load_ak(&attester.create_ak().unwrap()).unwrap();
    let err = attester
        .quote(&ak, b"after", &selection)
        .expect_err("stale key");
    assert!(matches!(err, CustodyError::InvalidInput(_)), "{err}");
    attester.quote(&other, b"fresh", &selection).unwrap();
}

#[test]
fn a_key_from_another_tpm_is_refused() {
    let (one, two) = (Swtpm::start(), Swtpm::start());
    let a1 = Attester::open(Some(&one.tcti())).unwrap();
    let a2 = Attester::open(Some(&two.tcti())).unwrap();
    let ak = a1.load_ak(&a1.create_ak().unwrap()).unwrap();
    let err = a2
        .quote(&ak, b"n", &"sha256:0".parse().unwrap())
        .expect_err("foreign key");
    assert!(err.to_string().contains("another TPM"), "{err}");
}

/// A long-lived child started while a TPM connection is open (another test thread starting
/// swtpm, PostgreSQL or `writ serve` while a command is in flight) must not keep that
/// connection: tpm2-tss opens its sockets without close-on-exec, and swtpm serves one connection
/// at a time, so a child holding one would leave every later connection unanswered and the test
/// hanging. writ_testkit::daemon starts children with nothing inherited but stdio.
#[test]
fn a_daemon_started_while_a_tpm_connection_is_open_does_not_hold_it() {
    let tpm = Swtpm::start();
    // A connection as tpm2-tss makes them: no close-on-exec.
    let in_flight =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    in_flight.set_cloexec(false).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", tpm.port()).parse().unwrap();
    in_flight.connect(&addr.into()).unwrap();
    let mut child = writ_testkit::daemon("sleep").arg("60").spawn().unwrap();
    drop(in_flight);
    let (tx, rx) = std::sync::mpsc::channel();
    let tcti = tpm.tcti();
    std::thread::spawn(move || {
        let ok = Attester::open(Some(&tcti))
            .and_then(|a| a.read_pcrs(&"sha256:0".parse().unwrap()))
            .is_ok();
        let _ = tx.send(ok);
    });
    let answered = rx.recv_timeout(std::time::Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(answered, Ok(true), "swtpm did not answer a new connection");
}
