//! The firmware event log: every shared log parses and replays to what tpm2-tools' tpm2_eventlog
//! computes (a differential test), the bogus and empty ones are refused, and replay mismatches and
//! malformed logs are named.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;

use writ_attestation::eventlog::{EV_NO_ACTION, Format, parse};
use writ_attestation::tpm::HashAlg;
use writ_attestation::tpm::pcr::{PcrSelection, PcrValues};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors/eventlogs")
}

fn good_logs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("shared/vectors beside the checkout")
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            !n.contains("bogus") && !n.contains("empty")
        })
        .collect();
    v.sort();
    v
}

/// The `pcrs:` section of `tpm2_eventlog` output: bank -> PCR -> value.
fn tpm2_tools_replay(path: &PathBuf) -> Option<Vec<(String, u8, Vec<u8>)>> {
    let out = std::process::Command::new("tpm2_eventlog")
        .arg(path)
        .output()
        .ok()?;
    if !out.status.success() {
        // tpm2_eventlog 5.4 crashes on some real logs (the option-ROM one: an EV_NO_ACTION event
        // on PCR 0xFFFFFFFF); those are compared against go-attestation's known values instead.
        eprintln!(
            "tpm2_eventlog failed on {} ({}); not compared",
            path.display(),
            out.status
        );
        return None;
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let mut in_pcrs = false;
    let mut bank = String::new();
    let mut values = Vec::new();
    for line in text.lines() {
        if line == "pcrs:" {
            in_pcrs = true;
            continue;
        }
        if !in_pcrs {
            continue;
        }
        let t = line.trim();
        if let Some(b) = t.strip_suffix(':') {
            bank = b.to_string();
        } else if let Some((idx, val)) = t.split_once(':') {
            let v = hex::decode(val.trim().trim_start_matches("0x")).unwrap();
            values.push((bank.clone(), idx.trim().parse().unwrap(), v));
        }
    }
    Some(values)
}

#[test]
fn every_shared_log_parses_and_replays_like_tpm2_eventlog() {
    let mut compared = 0;
    for path in good_logs() {
        let bytes = std::fs::read(&path).unwrap();
        let log = parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let replayed = log
            .replay()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let Some(expected) = tpm2_tools_replay(&path) else {
            continue;
        };
        // tpm2_eventlog 5.4 extends EV_NO_ACTION events (zero digests) into their PCR and ignores
        // StartupLocality; the PC Client spec says neither (see
        // tpm2_eventlog_extends_no_action_events below). Compare the PCRs no such event touches.
        let no_action_pcrs: Vec<u32> = log
            .events
            .iter()
            .filter(|e| e.event_type == EV_NO_ACTION)
            .map(|e| e.pcr)
            .collect();
        let expected: Vec<_> = expected
            .into_iter()
            .filter(|(_, pcr, _)| !no_action_pcrs.contains(&u32::from(*pcr)))
            .collect();
        for (bank, pcr, value) in &expected {
            let b = match bank.as_str() {
                "sha1" => HashAlg::Sha1,
                "sha256" => HashAlg::Sha256,
                "sha384" => HashAlg::Sha384,
                "sha512" => HashAlg::Sha512,
                _ => continue,
            };
            assert_eq!(
                replayed.get(b, *pcr),
                Some(value.as_slice()),
                "{} {bank}:{pcr}",
                path.display()
            );
        }
        // And nothing extra.
        let ours = replayed
            .iter()
            .filter(|(b, p, _)| {
                [
                    HashAlg::Sha1,
                    HashAlg::Sha256,
                    HashAlg::Sha384,
                    HashAlg::Sha512,
                ]
                .contains(b)
                    && !no_action_pcrs.contains(&u32::from(*p))
            })
            .count();
        assert_eq!(
            ours,
            expected
                .iter()
                .filter(|(b, _, _)| ["sha1", "sha256", "sha384", "sha512"].contains(&b.as_str()))
                .count(),
            "{}",
            path.display()
        );
        compared += 1;
    }
    assert!(compared >= 7, "compared {compared} logs with tpm2_eventlog");
}

#[test]
fn the_bogus_and_the_empty_log_are_refused_clearly() {
    for name in [
        "keylime_binary_bios_measurements-bogus.bin",
        "keylime_binary_bios_measurements-empty.bin",
    ] {
        let e = parse(&std::fs::read(dir().join(name)).unwrap()).unwrap_err();
        assert_eq!(e.code(), "event_log", "{name}: {e}");
    }
}

#[test]
fn crypto_agile_logs_declare_their_banks() {
    let log =
        parse(&std::fs::read(dir().join("keylime_binary_bios_measurements.bin")).unwrap()).unwrap();
    assert_eq!(log.format, Format::CryptoAgile);
    assert!(log.replay_banks().contains(&HashAlg::Sha256));
    assert!(log.events.iter().any(|e| e.event_type == EV_NO_ACTION) || !log.events.is_empty());
}

fn keylime() -> (writ_attestation::eventlog::EventLog, PcrValues) {
    let log =
        parse(&std::fs::read(dir().join("keylime_binary_bios_measurements.bin")).unwrap()).unwrap();
    let replayed = log.replay().unwrap();
    (log, replayed)
}

#[test]
fn replay_matches_a_quote_of_the_same_values() {
    let (log, replayed) = keylime();
    let selection: PcrSelection = "sha256:0,1,2,3,4,5,6,7".parse().unwrap();
    log.check_against(&selection, &replayed).unwrap();
}

#[test]
fn a_changed_quoted_pcr_is_named() {
    let (log, replayed) = keylime();
    let mut quoted = PcrValues::new();
    for (b, i, v) in replayed.iter() {
        let mut v = v.to_vec();
        if b == HashAlg::Sha256 && i == 7 {
            v[0] ^= 1;
        }
        quoted.insert(b, i, v).unwrap();
    }
    let selection: PcrSelection = "sha256:0,7".parse().unwrap();
    let e = log.check_against(&selection, &quoted).unwrap_err();
    assert_eq!(e.code(), "pcr_replay");
    assert!(e.to_string().contains("sha256:7"), "{e}");
}

#[test]
fn a_quoted_pcr_the_log_never_extends_must_hold_its_reset_value() {
    let (log, mut replayed) = keylime();
    // PCR 16 is never extended by firmware: zero is right, anything else is not.
    replayed.insert(HashAlg::Sha256, 16, vec![0; 32]).unwrap();
    let selection: PcrSelection = "sha256:16".parse().unwrap();
    log.check_against(&selection, &replayed).unwrap();
    let mut other = PcrValues::new();
    other.insert(HashAlg::Sha256, 16, vec![1; 32]).unwrap();
    assert_eq!(
        log.check_against(&selection, &other).unwrap_err().code(),
        "pcr_replay"
    );
}

#[test]
fn a_bank_the_log_lacks_is_named() {
    let (log, replayed) = keylime();
    let selection: PcrSelection = "sha384:0".parse().unwrap();
    let e = log.check_against(&selection, &replayed).unwrap_err();
    assert_eq!(e.code(), "event_log");
    assert!(e.to_string().contains("sha384"), "{e}");
}

#[test]
fn malformed_logs_are_refused() {
    let bytes = std::fs::read(dir().join("keylime_binary_bios_measurements.bin")).unwrap();
    // Truncated in the middle of an event.
    assert_eq!(
        parse(&bytes[..bytes.len() - 3]).unwrap_err().code(),
        "event_log"
    );
    // An EventSize of 0xFFFFFFFF in the first event.
    let mut huge = bytes.clone();
    huge[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = parse(&huge).unwrap_err();
    assert!(e.to_string().contains("EventSize"), "{e}");
    // A PCR index beyond 23 on an event that extends.
    let mut pcr = bytes.clone();
    let first_len = 32 + u32::from_le_bytes(bytes[28..32].try_into().unwrap()) as usize;
    pcr[first_len..first_len + 4].copy_from_slice(&40u32.to_le_bytes());
    pcr[first_len + 4..first_len + 8].copy_from_slice(&4u32.to_le_bytes());
    assert!(parse(&pcr).unwrap_err().to_string().contains("PCR 40"));
    // An event claiming more digests than the Spec ID event declares.
    let mut count = bytes.clone();
    count[first_len + 8..first_len + 12].copy_from_slice(&9u32.to_le_bytes());
    assert_eq!(parse(&count).unwrap_err().code(), "event_log");
}

/// The one place writ and tpm2_eventlog 5.4 differ, pinned down: on the Keylime log (StartupLocality
/// 3, an EV_NO_ACTION event on PCR 0), the spec's replay starts PCR 0 at 00..03 and skips
/// EV_NO_ACTION; tpm2_eventlog starts at zero and extends the EV_NO_ACTION events' zero digests.
#[test]
fn tpm2_eventlog_extends_no_action_events() {
    use sha1::Digest as _;
    let (log, replayed) = keylime();
    assert_eq!(log.startup_locality, 3);
    assert_eq!(
        hex::encode(replayed.get(HashAlg::Sha1, 0).unwrap()),
        "78f3e576d5da8873860e557535d181f4a37e2963"
    );
    let mut v = vec![0u8; 20];
    for e in log.events.iter().filter(|e| e.pcr == 0) {
        let d = &e
            .digests
            .iter()
            .find(|(a, _)| *a == HashAlg::Sha1.id())
            .unwrap()
            .1;
        let mut h = sha1::Sha1::new();
        h.update(&v);
        h.update(d);
        v = h.finalize().to_vec();
    }
    // What tpm2_eventlog 5.4 prints for sha1:0 on this log.
    assert_eq!(hex::encode(v), "ab3e9fd3b9b9911a2496db14911214f7fd0a115c");
}

#[test]
fn secure_boot_and_exit_boot_services_facts_come_from_verified_events() {
    let sb = parse(
        &std::fs::read(dir().join("keylime_binary_bios_measurements-secureboot.bin")).unwrap(),
    )
    .unwrap();
    assert_eq!(sb.secure_boot().unwrap(), Some(true));
    assert!(sb.exit_boot_services());
    let missing =
        parse(&std::fs::read(dir().join("go-attestation_ebs_event_missing_eventlog.bin")).unwrap())
            .unwrap();
    assert!(
        !missing.exit_boot_services(),
        "the log without ExitBootServices"
    );
    let no_sb = parse(
        &std::fs::read(
            dir().join("go-attestation_ubuntu_2104_shielded_vm_no_secure_boot_eventlog.bin"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(no_sb.secure_boot().unwrap(), Some(false));
}

#[test]
fn signature_databases_parse_with_their_header_size_honoured() {
    use writ_attestation::eventlog::{EfiVariable, SignatureList};
    let sb = parse(
        &std::fs::read(dir().join("keylime_binary_bios_measurements-secureboot.bin")).unwrap(),
    )
    .unwrap();
    let db = sb
        .events
        .iter()
        .filter_map(|e| e.driver_config().unwrap())
        .find(|v| v.name == "db")
        .expect("a db variable");
    let lists = db.signature_lists().unwrap();
    assert!(
        lists.iter().map(|l| l.signatures.len()).sum::<usize>() >= 2,
        "db holds certificates"
    );
    // A list with a 4-byte header: the header is skipped, one 20-byte signature follows.
    let mut list = vec![0xaa; 16];
    list.extend_from_slice(&(28u32 + 4 + 36).to_le_bytes());
    list.extend_from_slice(&4u32.to_le_bytes());
    list.extend_from_slice(&36u32.to_le_bytes());
    list.extend_from_slice(&[0xee; 4]);
    list.extend_from_slice(&[0x11; 16]);
    list.extend_from_slice(&[0x22; 20]);
    let parsed = SignatureList::parse_all(&list).unwrap();
    assert_eq!(parsed[0].signatures, vec![([0x11; 16], vec![0x22; 20])]);
    // A header that runs past the list is refused, not read as signatures.
    let mut bad = list.clone();
    bad[20..24].copy_from_slice(&1000u32.to_le_bytes());
    assert_eq!(
        SignatureList::parse_all(&bad).unwrap_err().code(),
        "event_log"
    );
    let _ = EfiVariable::parse(&[0u8; 8]).unwrap_err();
}

#[test]
fn a_variable_whose_data_does_not_match_its_digest_is_not_trusted() {
    let bytes =
        std::fs::read(dir().join("keylime_binary_bios_measurements-secureboot.bin")).unwrap();
    let log = parse(&bytes).unwrap();
    let e = log
        .events
        .iter()
        .find(|e| {
            e.driver_config()
                .ok()
                .flatten()
                .is_some_and(|v| v.name == "SecureBoot")
        })
        .unwrap();
    // Rewrite SecureBoot's value in the event data, leaving the digest: the fact is refused.
    let needle = &e.data;
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .unwrap()
        + needle.len()
        - 1;
    let mut forged = bytes.clone();
    forged[at] ^= 1;
    let e = parse(&forged).unwrap().secure_boot().unwrap_err();
    assert!(e.to_string().contains("does not hash"), "{e}");
}

#[test]
fn an_event_with_no_digest_writ_can_check_proves_nothing() {
    use writ_attestation::eventlog::{EV_EFI_VARIABLE_DRIVER_CONFIG, Event};
    let data = b"any data".to_vec();
    let sha256 = writ_attestation::tpm::HashAlg::Sha256;
    let mut e = Event {
        number: 1,
        pcr: 7,
        event_type: EV_EFI_VARIABLE_DRIVER_CONFIG,
        digests: vec![],
        data: data.clone(),
    };
    assert!(!e.data_matches_digests(), "no digest at all");
    e.digests = vec![(0x0012, vec![0; 32])]; // SM3_256 only: not computable here
    assert!(!e.data_matches_digests(), "only an unknown bank");
    e.digests.push((sha256.id(), sha256.digest(&data).unwrap()));
    assert!(
        e.data_matches_digests(),
        "the SHA-256 digest matches; the unknown one is skipped"
    );
    e.digests[1].1[0] ^= 1;
    assert!(!e.data_matches_digests());
}
