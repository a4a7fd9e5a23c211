//! `writ verify-quote` on quotes made by tpm2-tools against a real swtpm: the interop check with
//! the files tpm2_quote writes (-m, -s, -o) and the AK tpm2_createak writes (-u).
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::{Command, Output};

use writ_testkit::Swtpm;

fn verify(dir: &Path, nonce: &str, pcr_list: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_writ"))
        .current_dir(dir)
        .args([
            "verify-quote",
            "--ak",
            "ak.pub",
            "--message",
            "quote.msg",
            "--signature",
            "quote.sig",
        ])
        .args([
            "--pcrs",
            "quote.pcrs",
            "--nonce",
            nonce,
            "--pcr-list",
            pcr_list,
        ])
        .output()
        .unwrap()
}

fn quote_with(alg: &str, scheme: &str) -> (Swtpm, tempfile::TempDir) {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // No resource manager in front of swtpm: tpm2-tools leave objects loaded, and swtpm has three
    // slots, so flush transients between steps.
    tpm.tool_ak(d, alg, scheme);
    tpm.tool(
        d,
        &[
            "tpm2_pcrextend",
            "16:sha256=0000000000000000000000000000000000000000000000000000000000000001",
        ],
    );
    tpm.tool(
        d,
        &[
            "tpm2_quote",
            "-c",
            "ak.ctx",
            "-l",
            "sha256:0,1,2,7,16",
            "-q",
            "a1b2c3d4e5f60718",
            "-m",
            "quote.msg",
            "-s",
            "quote.sig",
            "-o",
            "quote.pcrs",
            "-g",
            "sha256",
        ],
    );
    (tpm, dir)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn tpm2_tools_ecdsa_quote_verifies_and_each_wrong_input_is_named() {
    let (_tpm, dir) = quote_with("ecc", "ecdsa");
    let d = dir.path();
    let ok = verify(d, "a1b2c3d4e5f60718", "sha256:0,1,2,7,16");
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}{}",
        stdout(&ok),
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout(&ok).starts_with("verified"));

    let other_nonce = verify(d, "a1b2c3d4e5f60719", "sha256:0,1,2,7,16");
    assert_eq!(other_nonce.status.code(), Some(1));
    assert!(
        stdout(&other_nonce).contains("nonce_mismatch"),
        "{}",
        stdout(&other_nonce)
    );

    let narrower = verify(d, "a1b2c3d4e5f60718", "sha256:0,1,2,7");
    assert_eq!(narrower.status.code(), Some(1));
    assert!(stdout(&narrower).contains("pcr_selection"));

    let mut msg = std::fs::read(d.join("quote.msg")).unwrap();
    let last = msg.len() - 1;
    msg[last] ^= 1;
    std::fs::write(d.join("quote.msg"), msg).unwrap();
    let tampered = verify(d, "a1b2c3d4e5f60718", "sha256:0,1,2,7,16");
    assert_eq!(tampered.status.code(), Some(1));
    assert!(stdout(&tampered).contains("signature"));

    std::fs::remove_file(d.join("quote.sig")).unwrap();
    assert_eq!(
        verify(d, "a1b2c3d4e5f60718", "sha256:0,1,2,7,16")
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn tpm2_tools_rsassa_quote_verifies() {
    let (_tpm, dir) = quote_with("rsa", "rsassa");
    let ok = verify(dir.path(), "a1b2c3d4e5f60718", "sha256:0,1,2,7,16");
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}{}",
        stdout(&ok),
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn a_changed_pcr_value_is_named() {
    let (_tpm, dir) = quote_with("ecc", "ecdsa");
    let d = dir.path();
    // Flip one byte of the first PCR value in the file (after the selection list and counts).
    let mut pcrs = std::fs::read(d.join("quote.pcrs")).unwrap();
    pcrs[132 + 4 + 4 + 2] ^= 0xff;
    std::fs::write(d.join("quote.pcrs"), pcrs).unwrap();
    let out = verify(d, "a1b2c3d4e5f60718", "sha256:0,1,2,7,16");
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("pcr_digest"), "{}", stdout(&out));
}

#[test]
fn a_pem_ak_is_refused_as_input() {
    let (_tpm, dir) = quote_with("ecc", "ecdsa");
    std::fs::write(
        dir.path().join("ak.pub"),
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let out = verify(dir.path(), "a1b2c3d4e5f60718", "sha256:0,1,2,7,16");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PEM"));
}

/// tpm2_certify of a signing key by the AK verifies with writ's certify verifier.
#[test]
fn tpm2_tools_certification_verifies() {
    use writ_attestation::crypto::AwsLc;
    use writ_attestation::evidence::{CheckedAk, Nonce, verify_certify};
    use writ_attestation::tpm::public::Public;
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let steps: &[&[&str]] = &[
        &["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"],
        &["tpm2_flushcontext", "-t"],
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
        &["tpm2_flushcontext", "-t"],
        &[
            "tpm2_createprimary",
            "-C",
            "o",
            "-G",
            "ecc",
            "-c",
            "primary.ctx",
        ],
        &["tpm2_flushcontext", "-t"],
        &[
            "tpm2_create",
            "-C",
            "primary.ctx",
            "-G",
            "ecc",
            "-u",
            "key.pub",
            "-r",
            "key.priv",
            "-a",
            "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign",
        ],
        &["tpm2_flushcontext", "-t"],
        &[
            "tpm2_load",
            "-C",
            "primary.ctx",
            "-u",
            "key.pub",
            "-r",
            "key.priv",
            "-c",
            "key.ctx",
        ],
        &["tpm2_flushcontext", "-t"],
        &[
            "tpm2_certify",
            "-c",
            "key.ctx",
            "-C",
            "ak.ctx",
            "-g",
            "sha256",
            "-o",
            "attest.out",
            "-s",
            "sig.out",
        ],
    ];
    for s in steps {
        tpm.tool(d, s);
    }
    let ak =
        CheckedAk::check(Public::from_tpm2b(&std::fs::read(d.join("ak.pub")).unwrap()).unwrap())
            .unwrap();
    let key = Public::from_tpm2b(&std::fs::read(d.join("key.pub")).unwrap()).unwrap();
    let attest = std::fs::read(d.join("attest.out")).unwrap();
    let sig = std::fs::read(d.join("sig.out")).unwrap();
    // tpm2_certify (tpm2-tools 5.4) takes no qualifying data option; it always sends 00ff55aa.
    let fixed = Nonce::new(&[0x00, 0xff, 0x55, 0xaa]).unwrap();
    let certified = verify_certify(&AwsLc, &ak, &attest, &sig, &fixed, key.tpmt_bytes()).unwrap();
    assert_eq!(certified.name(), key.name().unwrap().as_slice());
    let attested = writ_attestation::tpm::attest::Attest::parse(&attest).unwrap();
    let nonce = Nonce::new(&[0x0b, 0xad, 0xc0, 0xde]).unwrap();
    assert_eq!(
        verify_certify(&AwsLc, &ak, &attest, &sig, &nonce, key.tpmt_bytes())
            .unwrap_err()
            .code(),
        "nonce_mismatch"
    );
    // A flipped bit in the attestation fails at the signature, before anything else is trusted.
    let mut tampered = attest.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert_eq!(
        verify_certify(&AwsLc, &ak, &tampered, &sig, &nonce, key.tpmt_bytes())
            .unwrap_err()
            .code(),
        "signature"
    );
    match attested.attested {
        writ_attestation::tpm::attest::Attested::Certify { name, .. } => {
            assert_eq!(name, key.name().unwrap())
        }
        other => panic!("{other:?}"),
    }
}
