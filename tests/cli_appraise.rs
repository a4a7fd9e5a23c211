//! The measured-boot CLI end to end on swtpm: `writ dev simulate-boot` plays a boot into the TPM,
//! tpm2-tools make the AK and the quote, `writ reference capture` builds a profile from that
//! known-good machine, `writ appraise` affirms it and prints the EAR; a changed PCR or a machine
//! with Secure Boot off is contraindicated with the reason named. `writ eventlog dump/replay` on
//! the same log.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::{Command, Output};

use writ_testkit::Swtpm;

const PCRS: &str = "sha256:0,1,2,3,4,5,6,7";
const NONCE: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";

fn writ(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_writ"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A TPM booted with the simulated firmware (`secure` or not), an AK, and a quote over PCRs 0-7
/// in `dir` (ak.pub, quote.msg, quote.sig, quote.pcrs, boot.log).
fn booted(secure: bool) -> (Swtpm, tempfile::TempDir) {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let profile = if secure {
        "secure-boot"
    } else {
        "no-secure-boot"
    };
    let out = writ(
        d,
        &[
            "dev",
            "simulate-boot",
            "--tcti",
            &tpm.tcti(),
            "--profile",
            profile,
            "--log",
            "boot.log",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    tpm.tool_ak(d, "ecc", "ecdsa");
    quote(&tpm, d);
    (tpm, dir)
}

fn quote(tpm: &Swtpm, d: &Path) {
    tpm.tool(
        d,
        &[
            "tpm2_quote",
            "-c",
            "ak.ctx",
            "-l",
            PCRS,
            "-q",
            NONCE,
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
    tpm.tool(d, &["tpm2_flushcontext", "-t"]);
}

const QUOTE_ARGS: [&str; 12] = [
    "--ak",
    "ak.pub",
    "--message",
    "quote.msg",
    "--signature",
    "quote.sig",
    "--pcrs",
    "quote.pcrs",
    "--nonce",
    NONCE,
    "--pcr-list",
    PCRS,
];

fn capture(d: &Path, out: &str) {
    let mut args = vec!["reference", "capture", "--log", "boot.log", "--out", out];
    args.extend(QUOTE_ARGS);
    let o = writ(d, &args);
    assert!(o.status.success(), "{}", text(&o));
}

fn appraise(d: &Path, profile: &str, extra: &[&str]) -> Output {
    let mut args = vec!["appraise", "--profile", profile, "--log", "boot.log"];
    args.extend(QUOTE_ARGS);
    args.extend(extra);
    writ(d, &args)
}

#[test]
fn a_captured_profile_affirms_its_machine_and_a_changed_pcr_is_named() {
    let (tpm, dir) = booted(true);
    let d = dir.path();
    capture(d, "profile.json");
    let profile: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("profile.json")).unwrap()).unwrap();
    assert_eq!(profile["secure_boot"], true);
    assert_eq!(profile["pcrs"].as_object().unwrap().len(), 8);

    let o = appraise(d, "profile.json", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let ear: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ear["submods"]["tpm"]["ear_status"], "affirming");
    assert_eq!(
        ear["submods"]["tpm"]["ear_trustworthiness_vector"]["executables"],
        3
    );

    // Offline, no TPM identity is established: hardware makes no claim, and a manufacturer
    // rule fails as unknown.
    assert_eq!(
        ear["submods"]["tpm"]["ear_trustworthiness_vector"]["hardware"],
        0
    );
    let mut other = profile.clone();
    other["tpm_manufacturers"] = serde_json::json!(["IBM"]);
    std::fs::write(d.join("ibm.json"), other.to_string()).unwrap();
    let o = appraise(d, "ibm.json", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("tpm_manufacturer"), "{}", text(&o));

    // Something is measured into PCR 4 after boot: the new quote no longer matches the log, and
    // the reason names the PCR with both values.
    tpm.tool(
        d,
        &[
            "tpm2_pcrextend",
            "4:sha256=1111111111111111111111111111111111111111111111111111111111111111",
        ],
    );
    quote(&tpm, d);
    let o = appraise(d, "profile.json", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let ear: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ear["submods"]["tpm"]["ear_status"], "contraindicated");
    let reasons = ear["submods"]["tpm"]["writ_reasons"].as_array().unwrap();
    assert!(
        reasons
            .iter()
            .any(|r| r["code"] == "pcr_replay" && r["pcr"] == 4),
        "{reasons:#?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r["code"] == "pcr_value" && r["pcr"] == 4 && r["found"].is_string()),
        "{reasons:#?}"
    );
    // `writ eventlog replay` says the same against the PCR file.
    let o = writ(
        d,
        &[
            "eventlog",
            "replay",
            "boot.log",
            "--pcrs",
            "quote.pcrs",
            "--pcr-list",
            PCRS,
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("sha256:4"), "{}", text(&o));
}

#[test]
fn secure_boot_off_is_contraindicated_with_the_event_named() {
    let (_on_tpm, on) = booted(true);
    capture(on.path(), "profile.json");
    let (_off_tpm, off) = booted(false);
    let d = off.path();
    std::fs::copy(on.path().join("profile.json"), d.join("profile.json")).unwrap();
    let o = appraise(d, "profile.json", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let ear: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let reasons = ear["submods"]["tpm"]["writ_reasons"].as_array().unwrap();
    let sb = reasons
        .iter()
        .find(|r| r["code"] == "secure_boot")
        .unwrap_or_else(|| panic!("{reasons:#?}"));
    assert!(sb["event"].is_u64());
    assert_eq!(sb["found"], "false");
    assert!(
        reasons
            .iter()
            .any(|r| r["code"] == "pcr_value" && r["pcr"] == 7)
    );
    // The text on stderr names the rule too.
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("secure_boot (secure_boot): Secure Boot is off")
    );
}

#[test]
fn eventlog_dump_and_input_errors() {
    let (_tpm, dir) = booted(true);
    let d = dir.path();
    let o = writ(d, &["eventlog", "dump", "boot.log", "--format", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let events = doc["events"].as_array().unwrap();
    assert!(events.iter().any(|e| {
        e["type_name"] == "EV_EFI_BOOT_SERVICES_APPLICATION"
            && e["detail"]["device_path"]
                .as_str()
                .unwrap()
                .ends_with("BOOTX64.EFI")
    }));
    assert_eq!(doc["pcrs"]["sha256"].as_object().unwrap().len(), 8);
    let o = writ(d, &["eventlog", "dump", "boot.log"]);
    assert!(text(&o).contains("EV_EFI_GPT_EVENT"), "{}", text(&o));
    // The replay matches the quote's PCR file.
    let o = writ(
        d,
        &[
            "eventlog",
            "replay",
            "boot.log",
            "--pcrs",
            "quote.pcrs",
            "--pcr-list",
            PCRS,
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // A file that is not a log is an input error, named.
    std::fs::write(d.join("junk.log"), [0xffu8; 64]).unwrap();
    let o = writ(d, &["eventlog", "dump", "junk.log"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("event_log"), "{}", text(&o));
    // A profile that accepts nothing is an input error, not an appraisal.
    std::fs::write(
        d.join("empty.json"),
        r#"{"writ_reference_profile":1,"name":"x","bank":"sha256","pcrs":{}}"#,
    )
    .unwrap();
    let o = appraise(d, "empty.json", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("empty reference set"), "{}", text(&o));
    // A quote for another nonce is rejected before anything is appraised.
    capture(d, "profile.json");
    let mut args = vec!["appraise", "--profile", "profile.json", "--log", "boot.log"];
    let mut q = QUOTE_ARGS;
    q[9] = "00112233445566778899aabbccddeeff";
    args.extend(q);
    let o = writ(d, &args);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("nonce_mismatch"), "{}", text(&o));
}
