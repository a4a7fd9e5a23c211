//! Appraisal against reference profiles: every shared log with a SHA-256 bank captures to a
//! profile that affirms it; each rule has a failing case whose reason names the PCR or event; the
//! attacks of the measured-boot issue are refused. Quotes are made by a software AK (the quote
//! verifier is tested elsewhere) over the values each log replays to, then verified for real.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;

use p256::ecdsa::signature::hazmat::PrehashSigner;
use sha2::{Digest, Sha256};
use writ_attestation::appraisal::{
    Appraisal, LoadedProfile, Profile, Status, TpmIdentity, appraise, capture, values,
};
use writ_attestation::crypto::default_provider;
use writ_attestation::ear;
use writ_attestation::eventlog::simulated::{
    BootProfile, EFI_GLOBAL_VARIABLE, EFI_IMAGE_SECURITY_DATABASE, simulated_boot,
    simulated_boot_manager_digest, variable_data,
};
use writ_attestation::eventlog::{
    Detail, EFI_CERT_SHA256, EV_EFI_BOOT_SERVICES_APPLICATION, EV_EFI_VARIABLE_DRIVER_CONFIG,
    EV_NO_ACTION, EV_UNUSED, EventLog, LogBuilder, parse,
};
use writ_attestation::evidence::{CheckedAk, Nonce, TpmAttributes, VerifiedQuote, verify_quote};
use writ_attestation::tpm::HashAlg;
use writ_attestation::tpm::attest::{Attest, Attested, ClockInfo, ST_ATTEST_QUOTE, TPM_GENERATED};
use writ_attestation::tpm::pcr::{PcrSelection, PcrValues};
use writ_attestation::tpm::public::{self, EccCurve, KeyParams, Scheme, attr};
use writ_attestation::tpm::signature::Signature;

const FIRMWARE: u64 = 0x0002_0019_0023_0000;

/// A software AK quoting whatever values it is given, verified by the real verifier.
fn quote(selection: &str, values: &PcrValues) -> VerifiedQuote {
    let ak = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
    let point = ak.verifying_key().to_sec1_point(false);
    let ak_public = public::encode(
        HashAlg::Sha256,
        attr::FIXED_TPM
            | attr::FIXED_PARENT
            | attr::SENSITIVE_DATA_ORIGIN
            | attr::USER_WITH_AUTH
            | attr::RESTRICTED
            | attr::SIGN_ENCRYPT,
        &[],
        &KeyParams::Ecc {
            symmetric: 0x0010,
            scheme: Scheme::Ecdsa(HashAlg::Sha256),
            curve: EccCurve::P256,
            kdf: 0x0010,
            x: point.x().unwrap().to_vec(),
            y: point.y().unwrap().to_vec(),
        },
    );
    let checked = CheckedAk::from_tpmt(&ak_public).unwrap();
    let selection: PcrSelection = selection.parse().unwrap();
    let nonce = Nonce::new(&[0x5a; 32]).unwrap();
    let attest = Attest {
        magic: TPM_GENERATED,
        kind: ST_ATTEST_QUOTE,
        qualified_signer: checked.name().to_vec(),
        extra_data: nonce.as_bytes().to_vec(),
        clock_info: ClockInfo {
            clock: 5000,
            reset_count: 1,
            restart_count: 0,
            safe: true,
        },
        firmware_version: FIRMWARE,
        attested: Attested::Quote {
            selection: selection.clone(),
            pcr_digest: values.digest(&selection, HashAlg::Sha256).unwrap(),
        },
    }
    .encode();
    let digest: [u8; 32] = Sha256::digest(&attest).into();
    let sig: p256::ecdsa::Signature = ak.sign_prehash(&digest).unwrap();
    let bytes = sig.to_bytes();
    let sig = Signature::Ecdsa {
        hash: HashAlg::Sha256,
        r: bytes[..32].to_vec(),
        s: bytes[32..].to_vec(),
    }
    .to_tpmt();
    verify_quote(
        default_provider(),
        &checked,
        &attest,
        &sig,
        &nonce,
        &selection,
        values,
    )
    .unwrap()
}

/// The values `log` replays to for `selection` (reset values for PCRs it never extends).
fn replayed(log: &EventLog, selection: &str) -> PcrValues {
    let sel: PcrSelection = selection.parse().unwrap();
    let r = log.replay().unwrap();
    let mut out = PcrValues::new();
    for (bank, pcr) in sel.pcrs() {
        let v = r
            .get(bank, pcr)
            .map(<[u8]>::to_vec)
            .unwrap_or_else(|| log.reset_value(bank, u32::from(pcr)));
        out.insert(bank, pcr, v).unwrap();
    }
    out
}

const ALL: &str = "sha256:0,1,2,3,4,5,6,7";

struct Case {
    log: EventLog,
    quote: VerifiedQuote,
}

fn sim(profile: BootProfile) -> Case {
    let boot = simulated_boot(profile).unwrap();
    let log = parse(&boot.log).unwrap();
    let quote = quote(ALL, &replayed(&log, ALL));
    Case { log, quote }
}

/// A profile captured from the secure-boot simulation (PCRs 0-7), as JSON to edit.
fn captured(case: &Case) -> serde_json::Value {
    let p = capture(
        "sim",
        &case.log,
        &case.quote,
        HashAlg::Sha256,
        &[0, 1, 2, 3, 4, 5, 6, 7],
    )
    .unwrap();
    serde_json::to_value(p).unwrap()
}

fn load(v: &serde_json::Value) -> LoadedProfile {
    LoadedProfile::from_json(&serde_json::to_vec(v).unwrap()).unwrap()
}

fn run(case: &Case, profile: &serde_json::Value, tpm: Option<&TpmIdentity>) -> Appraisal {
    appraise(&load(profile), &case.log, &case.quote, tpm)
}

fn ibm_attributes() -> TpmAttributes {
    TpmAttributes {
        manufacturer: Some("id:49424D00".into()),
        model: Some("swtpm".into()),
        version: Some("id:20191023".into()),
    }
}

fn ibm() -> TpmIdentity {
    TpmIdentity::enrolled(ibm_attributes(), true)
}

/// The reason with `code`, which must exist.
fn reason<'a>(a: &'a Appraisal, code: &str) -> &'a writ_attestation::appraisal::Reason {
    a.reasons
        .iter()
        .find(|r| r.code == code)
        .unwrap_or_else(|| panic!("no {code} reason in {:#?}", a.reasons))
}

fn event_index(log: &EventLog, pred: impl Fn(&writ_attestation::eventlog::Event) -> bool) -> usize {
    log.events.iter().position(pred).expect("the event")
}

/// Rebuilds a log from (possibly edited) events, SHA-256 bank only.
fn rebuild(events: &[writ_attestation::eventlog::Event]) -> EventLog {
    let mut b = LogBuilder::new(&[HashAlg::Sha256]).unwrap();
    for e in events {
        let d: Vec<(HashAlg, Vec<u8>)> = e
            .digests
            .iter()
            .map(|(a, d)| (HashAlg::from_id(*a).unwrap(), d.clone()))
            .collect();
        b.event(e.pcr, e.event_type, &d, &e.data).unwrap();
    }
    parse(&b.into_bytes()).unwrap()
}

#[test]
fn the_simulated_boot_captures_to_a_profile_that_affirms_it() {
    let case = sim(BootProfile::SecureBoot);
    let profile = captured(&case);
    assert_eq!(profile["secure_boot"], true);
    assert_eq!(profile["exit_boot_services"], true);
    assert_eq!(profile["min_dbx_entries"], 3);
    assert_eq!(
        profile["boot_applications"],
        serde_json::json!([hex::encode(simulated_boot_manager_digest())])
    );
    let a = run(&case, &profile, Some(&ibm()));
    assert_eq!(a.status, Status::Affirming, "{:#?}", a.reasons);
    assert!(a.reasons.is_empty());
    assert_eq!(a.vector.configuration, values::APPROVED_CONFIG);
    assert_eq!(a.vector.executables, values::APPROVED_BOOT);
    assert_eq!(a.vector.hardware, values::GENUINE_HARDWARE);
    // The EAR carries the status, the vector, the policy and the nonce.
    let claims = ear::claims(
        &a,
        ear::Context {
            iat: 1_700_000_000,
            nonce: Some(&[0x5a; 32]),
            build: "writ test",
        },
    );
    assert_eq!(claims["eat_profile"], ear::EAR_PROFILE);
    let sub = &claims["submods"]["tpm"];
    assert_eq!(sub["ear_status"], "affirming");
    assert_eq!(sub["ear_trustworthiness_vector"]["executables"], 3);
    assert_eq!(sub["ear_appraisal_policy_id"], a.policy_id.as_str());
    assert!(sub.get("writ_reasons").is_none());
    assert!(claims["eat_nonce"].is_string());
}

#[test]
fn without_an_ek_identity_hardware_makes_no_claim() {
    let case = sim(BootProfile::SecureBoot);
    let a = run(&case, &captured(&case), None);
    assert_eq!(a.vector.hardware, 0);
    assert_eq!(a.status, Status::Affirming);
}

#[test]
fn every_shared_log_with_a_sha256_bank_captures_and_affirms() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors/eventlogs");
    let mut affirmed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.contains("bogus") || name.contains("empty") {
            continue;
        }
        let log = parse(&std::fs::read(&path).unwrap()).unwrap();
        // Every event the log carries can be typed (or is honestly untyped).
        for e in &log.events {
            e.detail(log.uintn_size)
                .unwrap_or_else(|err| panic!("{name}: {err}"));
        }
        if !log.replay_banks().contains(&HashAlg::Sha256) {
            continue;
        }
        let extended: Vec<u8> = (0u8..8)
            .filter(|p| {
                log.events
                    .iter()
                    .any(|e| e.pcr == u32::from(*p) && e.event_type != EV_NO_ACTION)
            })
            .collect();
        let sel = format!(
            "sha256:{}",
            extended
                .iter()
                .map(u8::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        let case = Case {
            quote: quote(&sel, &replayed(&log, &sel)),
            log,
        };
        let p = capture(&name, &case.log, &case.quote, HashAlg::Sha256, &extended)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let json = serde_json::to_value(&p).unwrap();
        let a = run(&case, &json, None);
        assert_eq!(a.status, Status::Affirming, "{name}: {:#?}", a.reasons);
        // And a profile from another machine's values is contraindicated on this one.
        let mut other = json.clone();
        let first = *extended.first().unwrap();
        other["pcrs"][first.to_string()] = serde_json::json!([hex::encode([0x11u8; 32])]);
        let b = run(&case, &other, None);
        assert_eq!(b.status, Status::Contraindicated, "{name}");
        assert_eq!(reason(&b, "pcr_value").pcr, Some(first));
        affirmed += 1;
    }
    assert!(
        affirmed >= 3,
        "only {affirmed} shared logs had a SHA-256 bank"
    );
}

#[test]
fn a_pcr_outside_the_accepted_set_names_pcr_expected_and_found() {
    let case = sim(BootProfile::SecureBoot);
    let mut p = captured(&case);
    let good = p["pcrs"]["0"][0].as_str().unwrap().to_string();
    p["pcrs"]["0"] = serde_json::json!([hex::encode([0x22u8; 32])]);
    let a = run(&case, &p, None);
    assert_eq!(a.status, Status::Contraindicated);
    let r = reason(&a, "pcr_value");
    assert_eq!((r.pcr, r.bank), (Some(0), Some("sha256")));
    assert_eq!(r.found.as_deref(), Some(good.as_str()));
    assert_eq!(
        r.expected.as_deref(),
        Some(hex::encode([0x22u8; 32]).as_str())
    );
    assert_eq!(a.vector.configuration, values::UNSUPPORTABLE_CONFIG);
    // A set: adding the machine's value back accepts it (fleets with several firmware versions).
    p["pcrs"]["0"] = serde_json::json!([hex::encode([0x22u8; 32]), good]);
    assert_eq!(run(&case, &p, None).status, Status::Affirming);
    // PCR 4 feeds executables.
    let mut p = captured(&case);
    p["pcrs"]["4"] = serde_json::json!([hex::encode([0x33u8; 32])]);
    let a = run(&case, &p, None);
    assert_eq!(a.vector.executables, values::CONTRAINDICATED_RUNTIME);
    assert_eq!(reason(&a, "pcr_value").pcr, Some(4));
}

#[test]
fn secure_boot_off_where_on_is_required_names_the_event() {
    let on = sim(BootProfile::SecureBoot);
    let off = sim(BootProfile::NoSecureBoot);
    let mut p = captured(&on);
    // Accept the off machine's PCR 7 so that only the Secure Boot rule speaks.
    let pcr7 = hex::encode(off.quote.pcrs().get(HashAlg::Sha256, 7).unwrap());
    p["pcrs"]["7"] = serde_json::json!([p["pcrs"]["7"][0].clone(), pcr7]);
    assert_eq!(run(&on, &p, None).status, Status::Affirming);
    let a = run(&off, &p, None);
    assert_eq!(a.status, Status::Contraindicated);
    let r = reason(&a, "secure_boot");
    let ev = event_index(&off.log, |e| {
        e.pcr == 7
            && e.data.windows(20).any(|w| {
                w == "SecureBoot"
                    .encode_utf16()
                    .flat_map(u16::to_le_bytes)
                    .collect::<Vec<_>>()
            })
    });
    assert_eq!(r.event, Some(off.log.events[ev].number));
    assert_eq!(r.pcr, Some(7));
    assert_eq!(r.found.as_deref(), Some("false"));
    assert!(r.message.contains("Secure Boot is off"), "{}", r.message);
}

#[test]
fn secure_boot_data_edited_under_its_digest_is_caught() {
    // The attacker flips SecureBoot 0 -> 1 in the event data and keeps the digest: replay still
    // matches the quote, but the data no longer hashes to the digest.
    let off = sim(BootProfile::NoSecureBoot);
    let mut events = off.log.events.clone();
    let i = event_index(&off.log, |e| {
        e.event_type == EV_EFI_VARIABLE_DRIVER_CONFIG && e.data.len() == 16 + 16 + 20 + 1
    });
    *events[i].data.last_mut().unwrap() = 1;
    let log = rebuild(&events);
    let case = Case {
        quote: quote(ALL, &replayed(&log, ALL)),
        log,
    };
    let mut p = captured(&sim(BootProfile::SecureBoot));
    p["pcrs"]["7"] = serde_json::json!([hex::encode(
        case.quote.pcrs().get(HashAlg::Sha256, 7).unwrap()
    )]);
    let a = run(&case, &p, None);
    assert_eq!(a.status, Status::Contraindicated, "{:#?}", a.reasons);
    assert_eq!(reason(&a, "event_data").event, Some(events[i].number));
    assert_eq!(a.vector.configuration, values::CRYPTO_FAILED);
}

#[test]
fn an_unknown_boot_application_names_its_event() {
    let case = sim(BootProfile::SecureBoot);
    let mut p = captured(&case);
    p["boot_applications"] = serde_json::json!([hex::encode([0x44u8; 32])]);
    let a = run(&case, &p, None);
    let r = reason(&a, "boot_application");
    let i = event_index(&case.log, |e| {
        e.event_type == EV_EFI_BOOT_SERVICES_APPLICATION
    });
    assert_eq!(r.event, Some(case.log.events[i].number));
    assert_eq!(
        r.found.as_deref(),
        Some(hex::encode(simulated_boot_manager_digest()).as_str())
    );
    assert_eq!(a.vector.executables, values::CONTRAINDICATED_RUNTIME);
    assert_eq!(a.status, Status::Contraindicated);
}

#[test]
fn a_boot_application_relabelled_as_ev_unused_with_attacker_events_is_refused() {
    // The attacker relabels the real (unapproved) boot loader as EV_UNUSED, so a type-based
    // check would skip it, and adds an EV_NO_ACTION "application" with an approved digest
    // (not extended, so replay still matches the quote).
    let case = sim(BootProfile::SecureBoot);
    let mut events = case.log.events.clone();
    let i = event_index(&case.log, |e| {
        e.event_type == EV_EFI_BOOT_SERVICES_APPLICATION
    });
    let evil = [0x66u8; 32];
    events[i].digests = vec![(HashAlg::Sha256.id(), evil.to_vec())];
    events[i].event_type = EV_UNUSED;
    let mut fake = events[i].clone();
    fake.event_type = EV_NO_ACTION;
    fake.digests = vec![(
        HashAlg::Sha256.id(),
        simulated_boot_manager_digest().to_vec(),
    )];
    events.insert(i, fake);
    let log = rebuild(&events);
    let case2 = Case {
        quote: quote(ALL, &replayed(&log, ALL)),
        log,
    };
    // A profile that accepts this PCR 4 value, so that only the event rules can catch it.
    let mut p = captured(&case);
    p["pcrs"]["4"] = serde_json::json!([hex::encode(
        case2.quote.pcrs().get(HashAlg::Sha256, 4).unwrap()
    )]);
    let a = run(&case2, &p, None);
    assert_eq!(a.status, Status::Contraindicated);
    let relabelled = case2.log.events[i + 1].number;
    assert_eq!(reason(&a, "event_type").event, Some(relabelled));
    let r = reason(&a, "boot_application");
    assert_eq!(r.event, Some(relabelled));
    assert_eq!(r.found.as_deref(), Some(hex::encode(evil).as_str()));
}

#[test]
fn a_truncated_log_does_not_explain_the_quote() {
    let case = sim(BootProfile::SecureBoot);
    let n = case.log.events.len();
    let log = rebuild(&case.log.events[..n - 2]);
    let cut = Case {
        log,
        quote: case.quote,
    };
    let p = captured(&sim(BootProfile::SecureBoot));
    let a = run(&cut, &p, None);
    assert_eq!(a.status, Status::Contraindicated);
    let r = reason(&a, "pcr_replay");
    assert_eq!(r.pcr, Some(5));
    assert_eq!(a.vector.configuration, values::CRYPTO_FAILED);
    // The facts of PCR 5 are not read from a log that does not explain it.
    assert_eq!(reason(&a, "fact_unverified").rule, "exit_boot_services");
    // A byte-truncated log does not parse at all.
    let bytes = simulated_boot(BootProfile::SecureBoot).unwrap().log;
    let e = parse(&bytes[..bytes.len() - 3]).unwrap_err();
    assert_eq!(e.code(), "event_log");
}

#[test]
fn a_log_that_never_extends_a_quoted_pcr_is_named() {
    let case = sim(BootProfile::SecureBoot);
    // Drop every PCR 6 event: the quote (from the full boot) holds a measured PCR 6.
    let events: Vec<_> = case
        .log
        .events
        .iter()
        .filter(|e| e.pcr != 6)
        .cloned()
        .collect();
    let c2 = Case {
        log: rebuild(&events),
        quote: case.quote,
    };
    let p = captured(&sim(BootProfile::SecureBoot));
    let a = run(&c2, &p, None);
    assert_eq!(reason(&a, "pcr_replay").pcr, Some(6));
    assert_eq!(reason(&a, "pcr_unmeasured").pcr, Some(6));
    assert_eq!(a.status, Status::Contraindicated);
}

#[test]
fn all_zero_pcrs_and_a_log_that_measures_nothing_are_never_affirming() {
    // Nothing measured at all: zero PCRs, a log of only the Spec ID event.
    let log = parse(&LogBuilder::new(&[HashAlg::Sha256]).unwrap().into_bytes()).unwrap();
    let case = Case {
        quote: quote(ALL, &replayed(&log, ALL)),
        log,
    };
    let p = captured(&sim(BootProfile::SecureBoot));
    let a = run(&case, &p, None);
    assert_eq!(a.status, Status::Contraindicated);
    assert!(
        a.reasons
            .iter()
            .filter(|r| r.code == "pcr_unmeasured")
            .count()
            >= 8
    );
    // And a profile cannot make zero a reference value.
    let mut z = p.clone();
    z["pcrs"]["3"] = serde_json::json!([hex::encode([0u8; 32])]);
    let e = LoadedProfile::from_json(&serde_json::to_vec(&z).unwrap()).unwrap_err();
    assert_eq!(e.code(), "profile");
}

#[test]
fn a_pcr_the_quote_does_not_cover_is_not_assumed() {
    let case = sim(BootProfile::SecureBoot);
    let sel = "sha256:0,1,2,3,4,5,6";
    let c2 = Case {
        quote: quote(sel, &replayed(&case.log, sel)),
        log: case.log.clone(),
    };
    let a = run(&c2, &captured(&case), None);
    assert_ne!(a.status, Status::Affirming);
    assert_eq!(reason(&a, "pcr_not_quoted").pcr, Some(7));
    assert_eq!(reason(&a, "fact_unverified").rule, "secure_boot");
}

#[test]
fn a_sha1_only_log_where_sha256_is_required_is_named() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors/eventlogs");
    // Build a legacy SHA-1-only view of the simulated boot: the quote covers sha256 from the TPM,
    // but the log only has SHA-1 digests.
    let _ = dir;
    let case = sim(BootProfile::SecureBoot);
    let mut sha1_events = case.log.events.clone();
    for e in &mut sha1_events {
        e.digests = vec![(HashAlg::Sha1.id(), sha1::Sha1::digest(&e.data).to_vec())];
    }
    let mut legacy = Vec::new();
    for e in &sha1_events {
        legacy.extend_from_slice(&e.pcr.to_le_bytes());
        legacy.extend_from_slice(&e.event_type.to_le_bytes());
        legacy.extend_from_slice(&e.digests[0].1);
        legacy.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
        legacy.extend_from_slice(&e.data);
    }
    let log = parse(&legacy).unwrap();
    let profile = captured(&case);
    let c2 = Case {
        log,
        quote: case.quote,
    };
    let a = run(&c2, &profile, None);
    assert_eq!(a.status, Status::Warning.max(a.status));
    assert_ne!(a.status, Status::Affirming);
    let r = reason(&a, "bank_missing");
    assert_eq!(r.expected.as_deref(), Some("sha256"));
    assert_eq!(r.found.as_deref(), Some("sha1"));
    // A profile in the SHA-1 bank is refused outright.
    let mut p = profile;
    p["bank"] = "sha1".into();
    let e = LoadedProfile::from_json(&serde_json::to_vec(&p).unwrap()).unwrap_err();
    assert_eq!(e.code(), "hash_too_weak");
}

#[test]
fn extra_no_action_events_change_nothing_and_a_second_spec_id_is_refused() {
    let off = sim(BootProfile::NoSecureBoot);
    // An EV_NO_ACTION event on PCR 7 claiming SecureBoot = 1, with a matching digest: not
    // extended, so not a measurement, so not a fact.
    let mut events = off.log.events.clone();
    let data = variable_data(&EFI_GLOBAL_VARIABLE, "SecureBoot", &[1]);
    let mut fake = events[0].clone();
    fake.pcr = 7;
    fake.event_type = EV_NO_ACTION;
    fake.digests = vec![(HashAlg::Sha256.id(), Sha256::digest(&data).to_vec())];
    fake.data = data;
    events.insert(0, fake);
    let log = rebuild(&events);
    let case = Case {
        quote: quote(ALL, &replayed(&log, ALL)),
        log,
    };
    assert_eq!(
        case.quote.pcrs().get(HashAlg::Sha256, 7),
        off.quote.pcrs().get(HashAlg::Sha256, 7)
    );
    let mut p = captured(&sim(BootProfile::SecureBoot));
    p["pcrs"]["7"] = serde_json::json!([hex::encode(
        off.quote.pcrs().get(HashAlg::Sha256, 7).unwrap()
    )]);
    let a = run(&case, &p, None);
    assert_eq!(reason(&a, "secure_boot").found.as_deref(), Some("false"));
    // A second Spec ID event (which would redeclare the banks) is refused by the parser.
    let mut b = LogBuilder::new(&[HashAlg::Sha256]).unwrap();
    let spec = parse(&LogBuilder::new(&[HashAlg::Sha256]).unwrap().into_bytes()).unwrap();
    let _ = spec;
    let mut data = b"Spec ID Event03\0".to_vec();
    data.extend_from_slice(&[0; 12]);
    b.event(0, EV_NO_ACTION, &[(HashAlg::Sha256, vec![0; 32])], &data)
        .unwrap();
    let e = parse(&b.into_bytes()).unwrap_err();
    assert!(e.to_string().contains("second Spec ID"), "{e}");
}

/// A boot whose dbx is one signature list with a SignatureHeader of `header` bytes and `n`
/// SHA-256 entries.
fn boot_with_dbx(header: &[u8], n: usize) -> Case {
    let boot = simulated_boot(BootProfile::SecureBoot).unwrap();
    let log = parse(&boot.log).unwrap();
    let mut events = log.events.clone();
    let i = event_index(&log, |e| {
        e.event_type == EV_EFI_VARIABLE_DRIVER_CONFIG
            && e.data.starts_with(&EFI_IMAGE_SECURITY_DATABASE)
            && e.data[32..38] == [b'd', 0, b'b', 0, b'x', 0]
    });
    let entries: Vec<Vec<u8>> = (0..n).map(|k| vec![k as u8; 32]).collect();
    let list =
        writ_attestation::eventlog::simulated::signature_list(&EFI_CERT_SHA256, header, &entries);
    let data = variable_data(&EFI_IMAGE_SECURITY_DATABASE, "dbx", &list);
    events[i].digests = vec![(HashAlg::Sha256.id(), Sha256::digest(&data).to_vec())];
    events[i].data = data;
    let log = rebuild(&events);
    Case {
        quote: quote(ALL, &replayed(&log, ALL)),
        log,
    }
}

#[test]
fn dbx_with_a_signature_header_is_counted_by_its_entries() {
    // A non-zero SignatureHeaderSize: the header is skipped, not misread as entries.
    let case = boot_with_dbx(&[0xaa; 16], 5);
    let mut p = serde_json::to_value(
        capture(
            "dbx",
            &case.log,
            &case.quote,
            HashAlg::Sha256,
            &[0, 1, 2, 3, 4, 5, 6, 7],
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(p["min_dbx_entries"], 5);
    assert_eq!(run(&case, &p, None).status, Status::Affirming);
    p["min_dbx_entries"] = 6.into();
    let a = run(&case, &p, None);
    let r = reason(&a, "dbx");
    assert_eq!(r.found.as_deref(), Some("5"));
    assert_eq!(r.expected.as_deref(), Some(">= 6"));
    assert!(r.event.is_some());
    // The header claims more bytes than the list has: the event is refused, not guessed at.
    let bad = boot_with_dbx(&[0xaa; 16], 2);
    let mut events = bad.log.events.clone();
    let i = event_index(&bad.log, |e| {
        e.data.len() > 40 && e.data[32..38] == [b'd', 0, b'b', 0, b'x', 0]
    });
    // SignatureHeaderSize is at offset 16 + 4 of the list, after the 52-byte variable header.
    let at = 16 + 8 + 8 + 6 + 16 + 4;
    events[i].data[at..at + 4].copy_from_slice(&1000u32.to_le_bytes());
    events[i].digests = vec![(
        HashAlg::Sha256.id(),
        Sha256::digest(&events[i].data).to_vec(),
    )];
    let log = rebuild(&events);
    let c2 = Case {
        quote: quote(ALL, &replayed(&log, ALL)),
        log,
    };
    let mut p2 = captured(&sim(BootProfile::SecureBoot));
    p2["pcrs"]["7"] = serde_json::json!([hex::encode(
        c2.quote.pcrs().get(HashAlg::Sha256, 7).unwrap()
    )]);
    let a = run(&c2, &p2, None);
    let r = reason(&a, "event_data");
    assert!(r.message.contains("SignatureHeaderSize"), "{}", r.message);
}

#[test]
fn a_missing_exit_boot_services_is_named() {
    let case = sim(BootProfile::SecureBoot);
    let events: Vec<_> = case
        .log
        .events
        .iter()
        .filter(|e| !(e.pcr == 5 && e.data.starts_with(b"Exit Boot Services")))
        .cloned()
        .collect();
    let log = rebuild(&events);
    let c2 = Case {
        quote: quote(ALL, &replayed(&log, ALL)),
        log,
    };
    let mut p = captured(&case);
    p["pcrs"]["5"] = serde_json::json!([hex::encode(
        c2.quote.pcrs().get(HashAlg::Sha256, 5).unwrap()
    )]);
    let a = run(&c2, &p, None);
    let r = reason(&a, "exit_boot_services");
    assert_eq!(r.pcr, Some(5));
    assert_ne!(a.status, Status::Affirming);
}

#[test]
fn tpm_manufacturer_and_firmware_rules() {
    let case = sim(BootProfile::SecureBoot);
    let mut p = captured(&case);
    p["tpm_manufacturers"] = serde_json::json!(["IBM"]);
    p["min_tpm_firmware"] = FIRMWARE.into();
    assert_eq!(run(&case, &p, Some(&ibm())).status, Status::Affirming);
    p["tpm_manufacturers"] = serde_json::json!(["id:49424D00"]);
    assert_eq!(run(&case, &p, Some(&ibm())).status, Status::Affirming);
    // Another manufacturer.
    p["tpm_manufacturers"] = serde_json::json!(["INTC", "STM"]);
    let a = run(&case, &p, Some(&ibm()));
    let r = reason(&a, "tpm_manufacturer");
    assert_eq!(r.found.as_deref(), Some("id:49424D00 (IBM)"));
    assert_eq!(a.vector.hardware, values::UNRECOGNIZED_HARDWARE);
    assert_eq!(a.status, Status::Contraindicated);
    // No EK identity at all while the profile names manufacturers.
    let a = run(&case, &p, None);
    assert_eq!(
        reason(&a, "tpm_manufacturer").found.as_deref(),
        Some("unknown")
    );
    // Firmware below the minimum: warning tier (known vulnerabilities).
    let mut p = captured(&case);
    p["min_tpm_firmware"] = (FIRMWARE + 1).into();
    let a = run(&case, &p, Some(&ibm()));
    assert_eq!(
        reason(&a, "tpm_firmware").found.as_deref(),
        Some(format!("{FIRMWARE:#x}").as_str())
    );
    assert_eq!(a.vector.hardware, values::UNSAFE_HARDWARE);
    assert_eq!(a.status, Status::Warning);
    // An AK not known to be in the endorsement hierarchy: the TPM may have obfuscated
    // firmwareVersion, so the rule cannot pass, whatever the quote says.
    let mut p = captured(&case);
    p["min_tpm_firmware"] = 1.into();
    let a = run(
        &case,
        &p,
        Some(&TpmIdentity::enrolled(ibm_attributes(), false)),
    );
    assert_eq!(reason(&a, "tpm_firmware").found.as_deref(), Some("unknown"));
    assert_ne!(a.status, Status::Affirming);
    let a = run(&case, &p, None);
    assert_eq!(reason(&a, "tpm_firmware").found.as_deref(), Some("unknown"));
}

#[test]
fn vendor_ids_decode_only_when_well_formed() {
    let v = |id: &str| {
        TpmAttributes {
            manufacturer: Some(id.into()),
            ..TpmAttributes::default()
        }
        .vendor()
    };
    assert_eq!(v("id:49424D00").as_deref(), Some("IBM"));
    assert_eq!(v("id:49465800").as_deref(), Some("IFX"));
    assert_eq!(v("id:0049424D"), None);
    assert_eq!(v("id:00001014"), None);
    assert_eq!(v("id:4942"), None);
    assert_eq!(v("49424D00"), None);
}

/// A PCR 4 profile rule set where PCR 4's value itself is not pinned: the facts are the only
/// defence (the documented fleet set-up).
fn unpinned(case: &Case, pcr: &str) -> serde_json::Value {
    let mut p = captured(case);
    p["pcrs"].as_object_mut().unwrap().remove(pcr);
    p
}

fn requote(log: EventLog) -> Case {
    Case {
        quote: quote(ALL, &replayed(&log, ALL)),
        log,
    }
}

#[test]
fn an_image_relabelled_as_an_efi_action_is_still_an_image() {
    // The digest of an image is the hash of a byte stream; the attacker logs that stream as the
    // data of an EV_EFI_ACTION, so the data hashes to the digest. Only the defined action
    // strings are actions.
    let case = sim(BootProfile::SecureBoot);
    let p = unpinned(&case, "4");
    assert_eq!(run(&case, &p, None).status, Status::Affirming);
    let mut log = case.log.clone();
    let i = event_index(&log, |e| e.event_type == EV_EFI_BOOT_SERVICES_APPLICATION);
    let stream = b"an unapproved boot loader's authenticode stream".to_vec();
    log.events[i].event_type = writ_attestation::eventlog::EV_EFI_ACTION;
    log.events[i].digests = vec![(HashAlg::Sha256.id(), Sha256::digest(&stream).to_vec())];
    log.events[i].data = stream;
    let c2 = requote(log);
    let a = run(&c2, &p, None);
    assert_eq!(a.status, Status::Contraindicated, "{:#?}", a.reasons);
    assert_eq!(
        reason(&a, "boot_application").event,
        Some(c2.log.events[i].number)
    );
    // Same with the separator's type: a separator is four bytes, not whatever hashes.
    let mut log = c2.log.clone();
    log.events[i].event_type = writ_attestation::eventlog::EV_SEPARATOR;
    let c3 = requote(log);
    assert_eq!(
        reason(&run(&c3, &p, None), "boot_application").event,
        Some(c3.log.events[i].number)
    );
}

#[test]
fn an_event_of_an_undefined_type_on_a_read_pcr_is_refused() {
    let case = sim(BootProfile::SecureBoot);
    let mut log = case.log.clone();
    let i = event_index(&log, |e| e.event_type == EV_EFI_BOOT_SERVICES_APPLICATION);
    log.events[i].event_type = 0x0000_1234;
    let c2 = requote(log);
    let a = run(&c2, &unpinned(&case, "4"), None);
    let r = reason(&a, "event_type");
    assert_eq!(r.event, Some(c2.log.events[i].number));
    assert_eq!(r.found.as_deref(), Some("0x00001234"));
}

#[test]
fn secure_boot_is_read_before_the_separator_only() {
    // Root on a machine with Secure Boot off extends PCR 7 after boot with a SecureBoot = 1
    // variable and logs it. PCR 7 is not pinned; the fact must still say off.
    let off = sim(BootProfile::NoSecureBoot);
    let mut log = off.log.clone();
    let data = variable_data(&EFI_GLOBAL_VARIABLE, "SecureBoot", &[1]);
    let mut fake = log.events[0].clone();
    fake.pcr = 7;
    fake.event_type = EV_EFI_VARIABLE_DRIVER_CONFIG;
    fake.digests = vec![(HashAlg::Sha256.id(), Sha256::digest(&data).to_vec())];
    fake.data = data;
    fake.number = log.events.len() + 1;
    log.events.push(fake);
    let c2 = requote(log);
    let p = unpinned(&sim(BootProfile::SecureBoot), "7");
    let a = run(&c2, &p, None);
    assert_eq!(reason(&a, "secure_boot").found.as_deref(), Some("false"));
    assert_eq!(a.status, Status::Contraindicated);
}

#[test]
fn secure_boot_measured_twice_or_garbled_is_not_a_fact() {
    let on = sim(BootProfile::SecureBoot);
    let p = unpinned(&on, "7");
    // Twice before the separator (a SecureBoot = 0 then a SecureBoot = 1).
    let mut log = on.log.clone();
    let i = event_index(&log, variable_named_sb);
    let mut first = log.events[i].clone();
    let data = variable_data(&EFI_GLOBAL_VARIABLE, "SecureBoot", &[0]);
    first.digests = vec![(HashAlg::Sha256.id(), Sha256::digest(&data).to_vec())];
    first.data = data;
    log.events.insert(i, first);
    let c2 = requote(log);
    let a = run(&c2, &p, None);
    assert!(
        reason(&a, "secure_boot")
            .message
            .contains("measured 2 times")
    );
    assert_eq!(a.status, Status::Contraindicated);
    // Garbled data under the real digest: not "not measured" (a warning), but unverifiable
    // evidence (contraindicated).
    let off = sim(BootProfile::NoSecureBoot);
    let mut log = off.log.clone();
    let i = event_index(&log, variable_named_sb);
    log.events[i].data = b"garbage".to_vec();
    let c3 = requote(log);
    let a = run(&c3, &p, None);
    assert_eq!(
        reason(&a, "event_data").event,
        Some(c3.log.events[i].number)
    );
    assert_eq!(a.status, Status::Contraindicated);
}

fn variable_named_sb(e: &writ_attestation::eventlog::Event) -> bool {
    e.pcr == 7
        && writ_attestation::eventlog::EfiVariable::parse(&e.data)
            .is_ok_and(|v| v.name == "SecureBoot")
}

#[test]
fn dbx_is_read_before_the_separator_and_a_bad_one_sticks() {
    let case = sim(BootProfile::SecureBoot);
    let mut p = unpinned(&case, "7");
    p["min_dbx_entries"] = 4.into();
    // A large dbx appended after boot does not count.
    let mut log = case.log.clone();
    let entries: Vec<Vec<u8>> = (0..50u8).map(|k| vec![k; 32]).collect();
    let list =
        writ_attestation::eventlog::simulated::signature_list(&EFI_CERT_SHA256, &[], &entries);
    let data = variable_data(&EFI_IMAGE_SECURITY_DATABASE, "dbx", &list);
    let mut fake = log.events[0].clone();
    fake.pcr = 7;
    fake.event_type = EV_EFI_VARIABLE_DRIVER_CONFIG;
    fake.digests = vec![(HashAlg::Sha256.id(), Sha256::digest(&data).to_vec())];
    fake.data = data;
    log.events.push(fake);
    let c2 = requote(log);
    let a = run(&c2, &p, None);
    assert_eq!(reason(&a, "dbx").found.as_deref(), Some("3"));
    // A dbx whose data does not match its digest fails as such.
    let mut log = case.log.clone();
    let i = event_index(&log, |e| {
        e.pcr == 7
            && writ_attestation::eventlog::EfiVariable::parse(&e.data)
                .is_ok_and(|v| v.name == "dbx")
    });
    let last = log.events[i].data.len() - 1;
    log.events[i].data[last] ^= 1;
    let c3 = requote(log);
    let a = run(&c3, &p, None);
    assert_eq!(
        reason(&a, "event_data").event,
        Some(c3.log.events[i].number)
    );
    assert_eq!(a.vector.configuration, values::CRYPTO_FAILED);
}

#[test]
fn a_digest_wrong_in_an_unquoted_bank_still_makes_the_data_unverifiable() {
    // go-attestation's log has SHA-1, SHA-256 and SHA-384 banks. The quote covers SHA-256 only;
    // the attacker's SecureBoot event keeps honest SHA-256/384 digests but a SHA-1 digest that
    // does not match its data (so the data could be anything that collides in SHA-1).
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/vectors/eventlogs/go-attestation_sb_cert_eventlog.bin");
    let log = parse(&std::fs::read(path).unwrap()).unwrap();
    let sel = "sha256:7";
    let case = Case {
        quote: quote(sel, &replayed(&log, sel)),
        log: log.clone(),
    };
    let p =
        serde_json::to_value(capture("go", &case.log, &case.quote, HashAlg::Sha256, &[7]).unwrap())
            .unwrap();
    let a = run(&case, &p, None);
    assert!(a.reasons.is_empty(), "{:#?}", a.reasons);
    assert_eq!(a.vector.configuration, values::APPROVED_CONFIG);
    let mut bad = log.clone();
    let i = event_index(&bad, variable_named_sb);
    for (alg, d) in &mut bad.events[i].digests {
        if *alg == HashAlg::Sha1.id() {
            d[0] ^= 1;
        }
    }
    let c2 = Case {
        quote: quote(sel, &replayed(&bad, sel)),
        log: bad,
    };
    let a = run(&c2, &p, None);
    assert_eq!(
        reason(&a, "event_data").event,
        Some(c2.log.events[i].number)
    );
    assert_eq!(a.vector.configuration, values::CRYPTO_FAILED);
    assert_eq!(a.status, Status::Contraindicated);
}

#[test]
fn a_profile_that_reads_nothing_about_a_claim_does_not_affirm_it() {
    let case = sim(BootProfile::SecureBoot);
    let full = captured(&case);
    let p = serde_json::json!({
        "writ_reference_profile": 1,
        "name": "pcr0 only",
        "bank": "sha256",
        "pcrs": {"0": full["pcrs"]["0"].clone()},
    });
    let a = run(&case, &p, None);
    assert!(a.reasons.is_empty());
    assert_eq!(a.vector.configuration, values::APPROVED_CONFIG);
    assert_eq!(a.vector.executables, 0);
    assert_eq!(a.status, Status::None);
}

#[test]
fn profiles_that_accept_nothing_or_are_malformed_are_refused() {
    let case = sim(BootProfile::SecureBoot);
    let good = captured(&case);
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "empty pcrs",
            Box::new(|p| p["pcrs"] = serde_json::json!({})),
        ),
        (
            "empty set",
            Box::new(|p| p["pcrs"]["0"] = serde_json::json!([])),
        ),
        (
            "short value",
            Box::new(|p| p["pcrs"]["0"] = serde_json::json!(["abcd"])),
        ),
        (
            "PCR 24",
            Box::new(|p| p["pcrs"]["24"] = serde_json::json!([hex::encode([1u8; 32])])),
        ),
        ("unknown field", Box::new(|p| p["secureboot"] = true.into())),
        (
            "version",
            Box::new(|p| p["writ_reference_profile"] = 2.into()),
        ),
        ("bank", Box::new(|p| p["bank"] = "md5".into())),
        (
            "empty manufacturers",
            Box::new(|p| p["tpm_manufacturers"] = serde_json::json!([])),
        ),
        (
            "empty boot apps",
            Box::new(|p| p["boot_applications"] = serde_json::json!([])),
        ),
    ];
    for (what, edit) in cases {
        let mut p = good.clone();
        edit(&mut p);
        let r = LoadedProfile::from_json(&serde_json::to_vec(&p).unwrap());
        assert!(r.is_err(), "{what} accepted");
    }
    assert!(LoadedProfile::from_json(b"not json").is_err());
    // Keys are canonical PCR numbers, never given twice (the text a reviewer reads is what runs).
    let text = serde_json::to_string(&good).unwrap();
    let v0 = good["pcrs"]["0"].to_string();
    for bad in [
        text.replacen("\"0\":", "\"00\":", 1),
        text.replacen("\"1\":", "\"+1\":", 1),
        text.replacen("\"1\":", &format!("\"0\":{v0},\"1\":"), 1),
    ] {
        assert_ne!(bad, text);
        assert!(LoadedProfile::from_json(bad.as_bytes()).is_err(), "{bad}");
    }
    // The profile round-trips and its ID is the file's digest.
    let bytes = serde_json::to_vec_pretty(&good).unwrap();
    let loaded = LoadedProfile::from_json(&bytes).unwrap();
    assert_eq!(
        loaded.id(),
        format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
    );
    let back: Profile = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(&back, loaded.profile());
}

#[test]
fn typed_events_of_the_simulated_boot() {
    let case = sim(BootProfile::SecureBoot);
    let details: Vec<Detail> = case
        .log
        .events
        .iter()
        .map(|e| e.detail(case.log.uintn_size).unwrap())
        .collect();
    let image = details
        .iter()
        .find_map(|d| match d {
            Detail::Image { device_path, .. } => Some(device_path.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        image.starts_with("PciRoot(0x0)/Pci(0x1,0x1)/HD(1,GPT,"),
        "{image}"
    );
    assert!(image.ends_with("\\EFI\\BOOT\\BOOTX64.EFI"), "{image}");
    assert!(details.iter().any(|d| matches!(d, Detail::Gpt { partitions, .. } if partitions.len() == 1 && partitions[0].name == "EFI System Partition")));
    assert!(details.iter().any(
        |d| matches!(d, Detail::Variable { name, enabled: Some(true), .. } if name == "SecureBoot")
    ));
    assert!(details.iter().any(|d| matches!(d, Detail::Variable { name, signature_lists, .. } if name == "dbx" && signature_lists.len() == 1 && signature_lists[0].entries == 3 && signature_lists[0].signature_type == "sha256")));
    assert!(details.iter().any(|d| matches!(d, Detail::Variable { name, description: Some(desc), .. } if name == "Boot0001" && desc == "writ simulated disk")));
    assert!(
        details
            .iter()
            .any(|d| matches!(d, Detail::Text { text } if text == "writ simulated firmware 1.0"))
    );
    assert!(details.iter().any(|d| matches!(
        d,
        Detail::FirmwareBlob {
            base: 0xfff0_0000,
            ..
        }
    )));
    assert!(
        details
            .iter()
            .any(|d| matches!(d, Detail::Separator { value: 0 }))
    );
}

#[test]
fn malformed_typed_data_is_an_error_not_a_guess() {
    let case = sim(BootProfile::SecureBoot);
    let i = event_index(&case.log, |e| {
        e.event_type == EV_EFI_BOOT_SERVICES_APPLICATION
    });
    let mut e = case.log.events[i].clone();
    // A device path node (the End node) claiming more bytes than there are.
    let len = e.data.len();
    e.data[len - 1] = 0xff;
    assert!(e.detail(8).is_err());
    // A device path that never ends within the node bound.
    let mut e = case.log.events[i].clone();
    let mut path = Vec::new();
    for _ in 0..100 {
        path.extend_from_slice(&[0x01, 0x01, 6, 0, 1, 1]);
    }
    e.data.truncate(24);
    e.data.extend_from_slice(&(path.len() as u64).to_le_bytes());
    e.data.extend_from_slice(&path);
    let err = e.detail(8).unwrap_err();
    assert!(err.to_string().contains("64 nodes"), "{err}");
}
