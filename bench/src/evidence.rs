//! Quote verification rate per core with each crypto provider, beside the raw ECDSA P-256 verify
//! rate of the same library measured in the same run.
//!
//! usage: cargo run --release -p writ-bench --bin evidence-bench -- [--seconds S]
#![forbid(unsafe_code)]
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod machine;
mod tpmsim;

use std::hint::black_box;
use std::time::{Duration, Instant};

use clap::Parser;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use sha2::{Digest, Sha256};
use writ_attestation::appraisal::{LoadedProfile, Status, appraise, capture};
use writ_attestation::crypto::{AwsLc, CryptoProvider, RustCrypto};
use writ_attestation::evidence::{CheckedAk, Nonce, verify_quote};
use writ_attestation::tpm::HashAlg;
use writ_attestation::tpm::attest::{Attest, Attested, ClockInfo, ST_ATTEST_QUOTE, TPM_GENERATED};
use writ_attestation::tpm::pcr::{PcrSelection, PcrValues};

#[derive(Debug, Parser)]
struct Args {
    /// Seconds per figure.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
}

fn rate(window: Duration, mut op: impl FnMut()) -> f64 {
    for _ in 0..500 {
        op();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < window {
        for _ in 0..64 {
            op();
        }
        n += 64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// A TPMS_ATTEST quote over `pcrs` signed by the software AK as a TPM signs it: the message,
/// its TPMT_SIGNATURE, and the signature itself.
fn sign_quote(
    ak: &p256::ecdsa::SigningKey,
    checked: &CheckedAk,
    nonce: &Nonce,
    selection: &PcrSelection,
    pcrs: &PcrValues,
) -> (Vec<u8>, Vec<u8>, p256::ecdsa::Signature) {
    tpmsim::sign_attest(
        ak,
        &Attest {
            magic: TPM_GENERATED,
            kind: ST_ATTEST_QUOTE,
            qualified_signer: checked.name().to_vec(),
            extra_data: nonce.as_bytes().to_vec(),
            clock_info: ClockInfo {
                clock: 1,
                reset_count: 1,
                restart_count: 0,
                safe: true,
            },
            firmware_version: 1,
            attested: Attested::Quote {
                selection: selection.clone(),
                pcr_digest: pcrs.digest(selection, HashAlg::Sha256).unwrap(),
            },
        },
    )
}

fn main() {
    let args = Args::parse();
    let window = Duration::from_secs_f64(args.seconds);
    // A software AK and a quote over sha256:0-7 (the shape of a real one: a 32-byte nonce, a
    // 34-byte qualified signer name), signed as a TPM signs it.
    let ak = p256::ecdsa::SigningKey::from_slice(&[1u8; 32]).unwrap();
    let checked = CheckedAk::from_tpmt(&tpmsim::tpmt_ecc(tpmsim::AK, ak.verifying_key())).unwrap();
    let selection: PcrSelection = "sha256:0,1,2,3,4,5,6,7".parse().unwrap();
    let mut pcrs = PcrValues::new();
    for i in 0..8u8 {
        pcrs.insert(HashAlg::Sha256, i, vec![i; 32]).unwrap();
    }
    let nonce = Nonce::new(&[0x42; 32]).unwrap();
    let (attest, tpmt, sig) = sign_quote(&ak, &checked, &nonce, &selection, &pcrs);
    let bytes = sig.to_bytes();

    println!(
        "machine: {}; one thread; {:.1} s per figure",
        machine::describe(),
        args.seconds
    );
    println!(
        "{:<12} {:>22} {:>24} {:>8}",
        "provider", "quote verifications/s", "raw ECDSA P-256 verify/s", "ratio"
    );

    // Raw rates: the library alone, key parsed once, message hashed by the library.
    let raw_aws = {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
        let pk = ak.verifying_key().to_sec1_bytes();
        let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, pk.to_vec());
        let fixed = bytes.to_vec();
        rate(window, || key.verify(black_box(&attest), &fixed).unwrap())
    };
    let raw_rc = {
        let vk = *ak.verifying_key();
        rate(window, || {
            let d: [u8; 32] = Sha256::digest(black_box(&attest)).into();
            vk.verify_prehash(&d, &sig).unwrap()
        })
    };
    for (p, raw) in [
        (&AwsLc as &dyn CryptoProvider, raw_aws),
        (&RustCrypto, raw_rc),
    ] {
        let q = rate(window, || {
            black_box(
                verify_quote(p, &checked, &attest, &tpmt, &nonce, &selection, &pcrs).unwrap(),
            );
        });
        println!(
            "{:<12} {:>22.0} {:>24.0} {:>7.2}x",
            p.name(),
            q,
            raw,
            q / raw
        );
    }

    // Event log: parse, replay every bank, and appraise against a profile captured from the same
    // machine (PCR values, Secure Boot, dbx, ExitBootServices, boot applications), the event-data
    // digest checks of every fact included, for Keylime's 49 KB log. The quote it is appraised
    // with was verified once beforehand (its verification rate is the figure above).
    let log_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/vectors/eventlogs/keylime_binary_bios_measurements.bin");
    match std::fs::read(&log_path) {
        Ok(bytes) => {
            let log = writ_attestation::eventlog::parse(&bytes).unwrap();
            let replayed = log.replay().unwrap();
            let extended: Vec<u8> = (0u8..8)
                .filter(|p| replayed.get(HashAlg::Sha256, *p).is_some())
                .collect();
            let spec = format!(
                "sha256:{}",
                extended
                    .iter()
                    .map(u8::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let sel: PcrSelection = spec.parse().unwrap();
            let mut values = PcrValues::new();
            for p in &extended {
                let v = replayed.get(HashAlg::Sha256, *p).unwrap().to_vec();
                values.insert(HashAlg::Sha256, *p, v).unwrap();
            }
            let (attest, tpmt, _) = sign_quote(&ak, &checked, &nonce, &sel, &values);
            let quote =
                verify_quote(&AwsLc, &checked, &attest, &tpmt, &nonce, &sel, &values).unwrap();
            let profile = capture("keylime", &log, &quote, HashAlg::Sha256, &extended).unwrap();
            let profile_json = serde_json::to_vec(&profile).unwrap();
            let loaded = LoadedProfile::from_json(&profile_json).unwrap();
            assert_eq!(
                appraise(&loaded, &log, &quote, None).status,
                Status::Affirming
            );
            let facts = rate(window, || {
                let log = writ_attestation::eventlog::parse(black_box(&bytes)).unwrap();
                black_box(log.replay().unwrap());
                black_box((log.secure_boot().unwrap(), log.exit_boot_services()));
            });
            let appraised = rate(window, || {
                let log = writ_attestation::eventlog::parse(black_box(&bytes)).unwrap();
                let a = appraise(&loaded, &log, &quote, None);
                assert_eq!(a.status, Status::Affirming);
                black_box(a);
            });
            println!(
                "\nevent log ({} KB, {} events, profile over {spec}, rules: {}):",
                bytes.len() / 1024,
                log.events.len(),
                [
                    profile.secure_boot.map(|_| "secure_boot"),
                    profile.min_dbx_entries.map(|_| "min_dbx_entries"),
                    profile.exit_boot_services.map(|_| "exit_boot_services"),
                    profile
                        .boot_applications
                        .as_ref()
                        .map(|_| "boot_applications"),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ")
            );
            println!("  parse + replay + facts:    {facts:.0} per second");
            println!("  parse + replay + appraisal: {appraised:.0} per second");
        }
        Err(e) => println!("\nevent log benchmark skipped: {}: {e}", log_path.display()),
    }
}
