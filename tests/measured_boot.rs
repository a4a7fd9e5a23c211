//! End to end on swtpm: a simulated measured boot, a quote verified by writ's verifier, and the
//! event log replayed against the quoted PCRs; a changed event or PCR is named.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use writ_attestation::crypto::AwsLc;
use writ_attestation::eventlog::parse;
use writ_attestation::evidence::{CheckedAk, Nonce, verify_quote};
use writ_attestation::tpm::pcr::PcrSelection;
use writ_hsm::tpm::attester::Attester;
use writ_hsm::tpm::simboot::{BootProfile, simulate_boot};
use writ_testkit::Swtpm;

const SPEC: &str = "sha256:0,1,2,3,4,5,6,7";

fn boot_and_quote(
    profile: BootProfile,
) -> (
    Swtpm,
    Attester,
    Vec<u8>,
    writ_attestation::evidence::VerifiedQuote,
) {
    let tpm = Swtpm::start();
    let attester = Attester::open(Some(&tpm.tcti())).unwrap();
    let log = simulate_boot(&attester, profile).unwrap();
    let ak_blob = attester.create_ak().unwrap();
    let ak = CheckedAk::from_tpmt(&ak_blob.public).unwrap();
    let loaded = attester.load_ak(&ak_blob).unwrap();
    let selection: PcrSelection = SPEC.parse().unwrap();
    let nonce = Nonce::new(&[0x33; 32]).unwrap();
    let quote = attester
        .quote(&loaded, nonce.as_bytes(), &selection)
        .unwrap();
    let values = attester.read_pcrs(&selection).unwrap();
    let verified = verify_quote(
        &AwsLc,
        &ak,
        &quote.attest,
        &quote.signature,
        &nonce,
        &selection,
        &values,
    )
    .unwrap();
    drop(loaded);
    (tpm, attester, log, verified)
}

#[test]
fn the_simulated_boot_replays_to_the_quoted_pcrs() {
    for profile in [BootProfile::SecureBoot, BootProfile::NoSecureBoot] {
        let (_tpm, _attester, log, quote) = boot_and_quote(profile);
        let parsed = parse(&log).unwrap();
        parsed
            .check_against(quote.selection(), quote.pcrs())
            .unwrap_or_else(|e| panic!("{profile:?}: {e}"));
        // Every PCR 0-7 was measured (ends with a separator), none is left at zero.
        for (_, pcr, v) in quote.pcrs().iter() {
            assert_ne!(v, &[0u8; 32][..], "PCR {pcr} measured");
        }
    }
}

#[test]
fn the_two_profiles_differ_in_pcr_7_only() {
    let (_t1, _a1, _l1, on) = boot_and_quote(BootProfile::SecureBoot);
    let (_t2, _a2, _l2, off) = boot_and_quote(BootProfile::NoSecureBoot);
    for (bank, pcr, v) in on.pcrs().iter() {
        let other = off.pcrs().get(bank, pcr).unwrap();
        assert_eq!(v == other, pcr != 7, "PCR {pcr}");
    }
}

#[test]
fn a_changed_event_digest_or_a_later_extend_is_named() {
    let (_tpm, attester, log, quote) = boot_and_quote(BootProfile::SecureBoot);
    // Flip a byte of the last event's digest (PCR 5, ExitBootServices): the replay no longer
    // reproduces the quoted PCR 5.
    let mut tampered = log.clone();
    let text = b"Exit Boot Services Returned with Success";
    let at = tampered.len() - text.len() - 4 - 32;
    tampered[at] ^= 1;
    let e = parse(&tampered)
        .unwrap()
        .check_against(quote.selection(), quote.pcrs())
        .unwrap_err();
    assert_eq!(e.code(), "pcr_replay");
    assert!(e.to_string().contains("sha256:5"), "{e}");
    // Something measured after the log was taken: the TPM's PCR 4 moves, the log does not.
    attester.extend_pcr(4, &[9u8; 32]).unwrap();
    let now = attester.read_pcrs(&SPEC.parse().unwrap()).unwrap();
    let e = parse(&log)
        .unwrap()
        .check_against(quote.selection(), &now)
        .unwrap_err();
    assert!(e.to_string().contains("sha256:4"), "{e}");
}

#[test]
fn tpm2_eventlog_reads_the_simulated_log_and_replays_it_alike() {
    let (_tpm, _attester, log, quote) = boot_and_quote(BootProfile::SecureBoot);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("log.bin"), &log).unwrap();
    let out = std::process::Command::new("tpm2_eventlog")
        .arg(dir.path().join("log.bin"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let pcrs = text.split("pcrs:").nth(1).expect("a pcrs section");
    for (_, pcr, v) in quote.pcrs().iter() {
        let want = format!("{pcr:<2} : 0x{}", hex::encode(v));
        assert!(
            pcrs.contains(&want),
            "tpm2_eventlog disagrees on PCR {pcr}:\n{pcrs}"
        );
    }
}

#[test]
fn appraisal_affirms_the_simulated_boot_and_names_a_later_measurement() {
    use writ_attestation::appraisal::{LoadedProfile, Status, appraise, capture};
    use writ_attestation::tpm::HashAlg;
    let (_tpm, attester, log, quote) = boot_and_quote(BootProfile::SecureBoot);
    let parsed = parse(&log).unwrap();
    let profile = capture(
        "swtpm",
        &parsed,
        &quote,
        HashAlg::Sha256,
        &[0, 1, 2, 3, 4, 5, 6, 7],
    )
    .unwrap();
    let loaded = LoadedProfile::from_json(&serde_json::to_vec(&profile).unwrap()).unwrap();
    let a = appraise(&loaded, &parsed, &quote, None);
    assert_eq!(a.status, Status::Affirming, "{:#?}", a.reasons);

    // Something measured into PCR 4 after the log was taken: a fresh quote is contraindicated,
    // and the reason names PCR 4 with the replayed and the quoted values.
    attester.extend_pcr(4, &[7u8; 32]).unwrap();
    let ak_blob = attester.create_ak().unwrap();
    let ak = CheckedAk::from_tpmt(&ak_blob.public).unwrap();
    let loaded_ak = attester.load_ak(&ak_blob).unwrap();
    let selection: PcrSelection = SPEC.parse().unwrap();
    let nonce = Nonce::new(&[0x44; 32]).unwrap();
    let q = attester
        .quote(&loaded_ak, nonce.as_bytes(), &selection)
        .unwrap();
    let values = attester.read_pcrs(&selection).unwrap();
    let later = verify_quote(
        &AwsLc,
        &ak,
        &q.attest,
        &q.signature,
        &nonce,
        &selection,
        &values,
    )
    .unwrap();
    let a = appraise(&loaded, &parsed, &later, None);
    assert_eq!(a.status, Status::Contraindicated);
    let r = a
        .reasons
        .iter()
        .find(|r| r.code == "pcr_replay")
        .unwrap_or_else(|| panic!("{:#?}", a.reasons));
    assert_eq!((r.pcr, r.bank), (Some(4), Some("sha256")));
    assert_eq!(
        r.found.as_deref(),
        Some(hex::encode(values.get(HashAlg::Sha256, 4).unwrap()).as_str())
    );
}
