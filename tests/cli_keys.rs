//! `writ keys generate` and `writ keys show` as a user runs them: separate processes against a real
//! SoftHSM2 token and a real swtpm, so persistence is across processes.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::{Command, Output};

use writ_testkit::{SoftHsm, Swtpm};

fn writ(args: &[&str], softhsm: Option<&SoftHsm>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_writ"));
    cmd.args(args).env("TSS2_LOG", "all+NONE");
    if let Some(hsm) = softhsm {
        cmd.env("SOFTHSM2_CONF", hsm.conf());
    }
    cmd.output().expect("run writ")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "writ failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

#[test]
fn pkcs11_generate_then_show_in_another_process() {
    let hsm = SoftHsm::new();
    let uri = hsm.key_uri("issuer");
    let generated = json(&writ(
        &[
            "keys",
            "generate",
            "--key",
            &uri,
            "--purpose",
            "issuer",
            "--json",
        ],
        Some(&hsm),
    ));
    assert_eq!(generated["backend"], "pkcs11");
    assert_eq!(generated["hardware_backed"], true);
    assert_eq!(generated["jwk"]["use"], "issuer");
    assert_eq!(generated["attributes"]["CKA_EXTRACTABLE"], "false");
    assert_eq!(generated["attributes"]["CKA_SENSITIVE"], "true");
    let shown = json(&writ(
        &["keys", "show", "--key", &uri, "--json"],
        Some(&hsm),
    ));
    assert_eq!(shown["kid"], generated["kid"]);
    assert_eq!(shown["public_key_pem"], generated["public_key_pem"]);
    // Text output names the same things for a person.
    let text = writ(&["keys", "show", "--key", &uri], Some(&hsm));
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("BEGIN PUBLIC KEY")
            && text.contains("hardware-backed")
            && text.contains("CKA_SENSITIVE = true"),
        "{text}"
    );
}

#[test]
fn tpm_generate_then_show_in_another_process() {
    let tpm = Swtpm::start();
    let uri = tpm.key_uri(0x8100_0101);
    let generated = json(&writ(
        &[
            "keys",
            "generate",
            "--key",
            &uri,
            "--purpose",
            "checkpoint",
            "--log-origin",
            "writ.test/log",
            "--json",
        ],
        None,
    ));
    let verifier = generated["note_verifier"]
        .as_str()
        .expect("a checkpoint key with an origin prints its verifier key");
    let parsed = writ_attestation::log::note::NoteVerifier::parse(verifier)
        .expect("the printed verifier key parses");
    assert_eq!(parsed.name(), "writ.test/log");
    assert_eq!(generated["backend"], "tpm");
    assert_eq!(generated["attributes"]["fixedTPM"], "true");
    assert!(
        generated["jwk"].get("use").is_none(),
        "checkpoint keys are not published as JWKs"
    );
    tpm.reboot();
    let shown = json(&writ(&["keys", "show", "--key", &uri, "--json"], None));
    assert_eq!(shown["kid"], generated["kid"]);
}

#[test]
fn generate_never_overwrites() {
    let hsm = SoftHsm::new();
    let uri = hsm.key_uri("ca");
    json(&writ(
        &[
            "keys",
            "generate",
            "--key",
            &uri,
            "--purpose",
            "ca",
            "--json",
        ],
        Some(&hsm),
    ));
    let again = writ(
        &["keys", "generate", "--key", &uri, "--purpose", "ca"],
        Some(&hsm),
    );
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn wrong_pin_exits_2_without_showing_the_pin() {
    let hsm = SoftHsm::new();
    let uri = format!(
        "pkcs11:token={};object=x?module-path={}&pin-source=env:WRIT_TEST_PIN",
        hsm.label(),
        writ_testkit::SOFTHSM2_MODULE
    );
    let out = Command::new(env!("CARGO_BIN_EXE_writ"))
        .args(["keys", "show", "--key", &uri])
        .env("SOFTHSM2_CONF", hsm.conf())
        .env("WRIT_TEST_PIN", "31337999")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wrong PIN"), "{stderr}");
    assert!(
        !stderr.contains("31337999") && !String::from_utf8_lossy(&out.stdout).contains("31337999")
    );
}

#[test]
fn software_keys_are_refused_without_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let uri = format!("soft:path={}", dir.path().join("k").display());
    let out = writ(
        &["keys", "generate", "--key", &uri, "--purpose", "issuer"],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("software keys refused"));
    assert!(!dir.path().join("k").exists());
}

#[test]
fn pin_in_the_uri_is_refused() {
    let out = writ(
        &[
            "keys",
            "show",
            "--key",
            "pkcs11:token=t;object=o?pin-value=1234",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pin-value is refused"));
}

#[test]
fn tcti_comes_from_the_environment_when_the_uri_has_none() {
    let tpm = Swtpm::start();
    let out = Command::new(env!("CARGO_BIN_EXE_writ"))
        .args([
            "keys",
            "generate",
            "--key",
            &format!(
                "tpm:handle=0x81000102?auth-source=file:{}",
                tpm.auth_file().display()
            ),
            "--purpose",
            "issuer",
            "--json",
        ])
        .env("TPM2TOOLS_TCTI", tpm.tcti())
        .env("TSS2_LOG", "all+NONE")
        .output()
        .unwrap();
    let v = json(&out);
    assert_eq!(v["backend"], "tpm");
    // The same key through an explicit TCTI in the URI.
    let shown = json(&writ(
        &["keys", "show", "--key", &tpm.key_uri(0x8100_0102), "--json"],
        None,
    ));
    assert_eq!(shown["kid"], v["kid"]);
}

#[test]
fn tpm_key_without_auth_value_is_refused() {
    let tpm = Swtpm::start();
    let out = writ(
        &[
            "keys",
            "generate",
            "--key",
            &format!("tpm:handle=0x81000103?tcti={}", tpm.tcti()),
            "--purpose",
            "ca",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no authValue configured"));
}
