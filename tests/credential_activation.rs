//! writ's software TPM2_MakeCredential, accepted by real TPM2_ActivateCredential on swtpm: through
//! tpm2-tools (RSA and ECC P-256 EKs) and through writ-hsm's attester (the RSA EK whose public key
//! is taken from its certificate). A credential made for another AK name must fail.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::Command;

use writ_attestation::EvidenceError;
use writ_attestation::evidence::{EkPublicKey, make_credential};
use writ_attestation::tpm::public::{KeyParams, Public};
use writ_testkit::Swtpm;

fn os_random(buf: &mut [u8]) -> Result<(), EvidenceError> {
    getrandom::fill(buf).map_err(|e| EvidenceError::Malformed(e.to_string()))
}

fn tool(tpm: &Swtpm, dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .env("TPM2TOOLS_TCTI", tpm.tcti())
        .env("TSS2_LOG", "all+NONE")
        .output()
        .expect("tpm2-tools installed")
}

fn ok(out: std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ek_from_tpm2b(path: &Path) -> EkPublicKey {
    let public = Public::from_tpm2b(&std::fs::read(path).unwrap()).unwrap();
    match public.params() {
        KeyParams::Rsa {
            modulus, exponent, ..
        } => EkPublicKey::Rsa2048 {
            modulus: modulus.clone(),
            exponent: *exponent,
        },
        KeyParams::Ecc { curve, x, y, .. } => EkPublicKey::Ecc {
            curve: *curve,
            x: x.clone(),
            y: y.clone(),
        },
        other => panic!("{other:?}"),
    }
}

/// tpm2-tools' credential file: magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
fn credential_file(id_object: &[u8], secret: &[u8]) -> Vec<u8> {
    let mut f = vec![0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 1];
    f.extend_from_slice(&(id_object.len() as u16).to_be_bytes());
    f.extend_from_slice(id_object);
    f.extend_from_slice(&(secret.len() as u16).to_be_bytes());
    f.extend_from_slice(secret);
    f
}

/// tpm2_activatecredential with the EK's policy (PolicySecret on the endorsement hierarchy)
/// satisfied in a policy session, as the TCG EK template requires.
fn activate(tpm: &Swtpm, d: &Path, cred: &str, out: &str) -> std::process::Output {
    let ek = Public::from_tpm2b(&std::fs::read(d.join("ek.pub")).unwrap()).unwrap();
    let args = [
        "tpm2_activatecredential",
        "-c",
        "ak.ctx",
        "-C",
        "ek.ctx",
        "-i",
        cred,
        "-o",
        out,
    ];
    let result = if ek.has(writ_attestation::tpm::public::attr::USER_WITH_AUTH) {
        // High-range EK templates (the P-384 one) set userWithAuth with an empty authValue.
        tool(tpm, d, &args)
    } else {
        // Low-range templates: PolicySecret on the endorsement hierarchy, in a session of the
        // EK's name algorithm.
        let hash = ek.name_alg().name();
        ok(
            tool(
                tpm,
                d,
                &[
                    "tpm2_startauthsession",
                    "--policy-session",
                    "-g",
                    hash,
                    "-S",
                    "session.ctx",
                ],
            ),
            "session",
        );
        ok(
            tool(
                tpm,
                d,
                &["tpm2_policysecret", "-S", "session.ctx", "-c", "e"],
            ),
            "policysecret",
        );
        let mut with_policy = args.to_vec();
        with_policy.extend(["-P", "session:session.ctx"]);
        let r = tool(tpm, d, &with_policy);
        let _ = tool(tpm, d, &["tpm2_flushcontext", "session.ctx"]);
        r
    };
    let _ = tool(tpm, d, &["tpm2_flushcontext", "-t"]);
    result
}

fn round_trip_with_tpm2_tools(ek_alg: &str) {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        tool(
            &tpm,
            d,
            &[
                "tpm2_createek",
                "-c",
                "ek.ctx",
                "-G",
                ek_alg,
                "-u",
                "ek.pub",
            ],
        ),
        "createek",
    );
    ok(tool(&tpm, d, &["tpm2_flushcontext", "-t"]), "flush");
    ok(
        tool(
            &tpm,
            d,
            &[
                "tpm2_createak",
                "-C",
                "ek.ctx",
                "-c",
                "ak.ctx",
                "-G",
                "ecc",
                "-g",
                "sha256",
                "-s",
                "ecdsa",
                "-u",
                "ak.pub",
                "-n",
                "ak.name",
            ],
        ),
        "createak",
    );
    ok(tool(&tpm, d, &["tpm2_flushcontext", "-t"]), "flush");
    let ek = ek_from_tpm2b(&d.join("ek.pub"));
    let ak_name = std::fs::read(d.join("ak.name")).unwrap();
    assert_eq!(
        Public::from_tpm2b(&std::fs::read(d.join("ak.pub")).unwrap())
            .unwrap()
            .name()
            .unwrap(),
        ak_name
    );

    let secret = [0x6bu8; 32];
    let c = make_credential(&ek, &ak_name, &secret, &mut os_random).unwrap();
    std::fs::write(
        d.join("cred.bin"),
        credential_file(&c.id_object, &c.encrypted_secret),
    )
    .unwrap();
    ok(activate(&tpm, d, "cred.bin", "out.bin"), "activate");
    assert_eq!(std::fs::read(d.join("out.bin")).unwrap(), secret);

    // The same EK, a credential bound to another name: the TPM refuses it.
    let mut other_name = ak_name.clone();
    let last = other_name.len() - 1;
    other_name[last] ^= 1;
    let c = make_credential(&ek, &other_name, &secret, &mut os_random).unwrap();
    std::fs::write(
        d.join("cred2.bin"),
        credential_file(&c.id_object, &c.encrypted_secret),
    )
    .unwrap();
    let out = activate(&tpm, d, "cred2.bin", "out2.bin");
    assert!(
        !out.status.success(),
        "activation of a credential for another name must fail"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("integrity"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rsa_ek_credential_activates_with_tpm2_tools() {
    round_trip_with_tpm2_tools("rsa");
}

#[test]
fn ecc_p256_ek_credential_activates_with_tpm2_tools() {
    round_trip_with_tpm2_tools("ecc");
}

#[test]
fn credential_to_the_certified_rsa_ek_activates_through_the_attester() {
    use rsa::pkcs8::DecodePublicKey;
    use rsa::traits::PublicKeyParts;
    use x509_cert::der::{Decode, Encode};
    let tpm = Swtpm::start();
    let attester = writ_hsm::tpm::attester::Attester::open(Some(&tpm.tcti())).unwrap();
    let certs = attester.ek_certificates().unwrap();
    let der = &certs
        .iter()
        .find(|c| c.kind == writ_hsm::tpm::attester::EkKind::Rsa2048)
        .unwrap()
        .der;
    let cert = x509_cert::Certificate::from_der(der).unwrap();
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .unwrap();
    let key = rsa::RsaPublicKey::from_public_key_der(&spki).unwrap();
    let ek = EkPublicKey::Rsa2048 {
        modulus: key.n().to_bytes_be(),
        exponent: u32::try_from(
            key.e()
                .to_bytes_be()
                .iter()
                .fold(0u64, |a, b| (a << 8) | u64::from(*b)),
        )
        .unwrap(),
    };
    let ak = attester.create_ak().unwrap();
    let secret = [0x17u8; 32];
    let c = make_credential(&ek, &ak.name, &secret, &mut os_random).unwrap();
    let got = attester
        .activate_credential(&ak, &c.id_object, &c.encrypted_secret)
        .unwrap();
    assert_eq!(got.as_slice(), &secret);
    let other = attester.create_ak().unwrap();
    let c = make_credential(&ek, &other.name, &secret, &mut os_random).unwrap();
    assert!(
        attester
            .activate_credential(&ak, &c.id_object, &c.encrypted_secret)
            .is_err()
    );
}

#[test]
fn ecc_p384_ek_credential_activates_with_tpm2_tools() {
    round_trip_with_tpm2_tools("ecc384");
}

#[test]
fn challenges_need_a_real_name_and_an_rsa_2048_ek() {
    let ek = EkPublicKey::Rsa2048 {
        modulus: vec![0xc1; 128],
        exponent: 65_537,
    };
    assert_eq!(
        make_credential(&ek, &[0, 11, 1], &[1; 32], &mut os_random)
            .unwrap_err()
            .code(),
        "unsupported_algorithm"
    );
    let ek = EkPublicKey::Rsa2048 {
        modulus: vec![0xc1; 256],
        exponent: 65_537,
    };
    assert_eq!(
        make_credential(&ek, &[0], &[1; 32], &mut os_random)
            .unwrap_err()
            .code(),
        "malformed"
    );
}
