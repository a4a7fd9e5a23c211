//! `writ eventlog`, `writ appraise` and `writ reference`: the measured-boot tools. Exit codes:
//! 0 success (affirming, matching), 1 a verdict against (rejected, mismatching, not affirming),
//! 2 usage or input error.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use writ_attestation::EvidenceError;
use writ_attestation::appraisal::{LoadedProfile, Status, appraise, capture};
use writ_attestation::ear;
use writ_attestation::eventlog::{EventLog, MAX_LOG, parse};
use writ_attestation::tpm::HashAlg;
use writ_attestation::tpm::pcr::{PcrSelection, PcrValues};
use writ_attestation::tpm::tools::read_pcr_file;

use crate::verify_quote::{QuoteArgs, QuoteFailure, read, read_bounded};

#[derive(Debug, Subcommand)]
pub enum EventlogCommand {
    /// Print a log's events, typed, and the PCR values it replays to.
    Dump {
        /// The event log (binary_bios_measurements format).
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Replay a log and compare it with PCR values (`tpm2_quote -o` / `tpm2_pcrread -o` format).
    /// Without --pcrs, print the replayed values.
    Replay {
        /// The event log.
        file: PathBuf,
        /// PCR values to compare with.
        #[arg(long, requires = "pcr_list")]
        pcrs: Option<PathBuf>,
        /// The selection the PCR file holds, e.g. `sha256:0,1,2,3,4,5,6,7`.
        #[arg(long)]
        pcr_list: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// JSON.
    Json,
}

/// `writ appraise`.
#[derive(Debug, Args)]
pub struct Appraise {
    /// The reference-value profile (JSON, see docs/reference-profiles.md).
    #[arg(long)]
    profile: PathBuf,
    /// The event log.
    #[arg(long)]
    log: PathBuf,
    #[command(flatten)]
    quote: QuoteArgs,
}

#[derive(Debug, Subcommand)]
pub enum ReferenceCommand {
    /// Build a profile from a known-good machine's event log and verified quote, for review.
    Capture(Capture),
}

#[derive(Debug, Args)]
pub struct Capture {
    /// The event log.
    #[arg(long)]
    log: PathBuf,
    #[command(flatten)]
    quote: QuoteArgs,
    /// The PCRs whose values the profile pins (they must be in the quote), e.g. `0,1,2,3,4,5,6,7`.
    #[arg(long, default_value = "0,1,2,3,4,5,6,7")]
    capture_pcrs: String,
    /// The bank.
    #[arg(long, default_value = "sha256")]
    bank: String,
    /// The profile's name.
    #[arg(long, default_value = "captured")]
    name: String,
    /// Write the profile here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Writes to standard output; a closed pipe (`| head`) is not an error worth a panic.
fn emit(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

fn input_error(cmd: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("writ {cmd}: error: {e}");
    ExitCode::from(2)
}

fn read_log(path: &PathBuf) -> Result<Vec<u8>, String> {
    read_bounded(path, "event log", MAX_LOG as u64)
}

fn bank_name(id: u16) -> String {
    HashAlg::from_id(id)
        .map(|h| h.name().to_string())
        .unwrap_or_else(|| format!("{id:#06x}"))
}

fn replayed_json(values: &PcrValues) -> Value {
    let mut banks: BTreeMap<&str, BTreeMap<u8, String>> = BTreeMap::new();
    for (bank, pcr, v) in values.iter() {
        banks
            .entry(bank.name())
            .or_default()
            .insert(pcr, hex::encode(v));
    }
    json!(banks)
}

fn dump_json(log: &EventLog, replayed: &PcrValues) -> Value {
    let events: Vec<Value> = log
        .events
        .iter()
        .map(|e| {
            let digests: BTreeMap<String, String> = e
                .digests
                .iter()
                .map(|(a, d)| (bank_name(*a), hex::encode(d)))
                .collect();
            let mut v = json!({
                "number": e.number,
                "pcr": e.pcr,
                "type": e.event_type,
                "type_name": e.type_name(),
                "digests": digests,
                "data_len": e.data.len(),
                "data_matches_digests": e.data_matches_digests(),
            });
            if let Some(map) = v.as_object_mut() {
                match e.detail(log.uintn_size) {
                    Ok(d) => map.insert("detail".into(), json!(d)),
                    Err(err) => map.insert("detail_error".into(), json!(err.to_string())),
                };
            }
            v
        })
        .collect();
    json!({
        "format": format!("{:?}", log.format),
        "banks": log.banks.iter().map(|(a, _)| bank_name(*a)).collect::<Vec<_>>(),
        "startup_locality": log.startup_locality,
        "events": events,
        "pcrs": replayed_json(replayed),
    })
}

fn detail_text(d: &Value) -> String {
    let Some(map) = d.as_object() else {
        return String::new();
    };
    map.iter()
        .filter(|(k, _)| k.as_str() != "kind")
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s:?}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn eventlog(cmd: EventlogCommand) -> ExitCode {
    match cmd {
        EventlogCommand::Dump { file, format } => {
            let bytes = match read_log(&file) {
                Ok(b) => b,
                Err(e) => return input_error("eventlog dump", e),
            };
            let log = match parse(&bytes) {
                Ok(l) => l,
                Err(e) => return input_error("eventlog dump", format!("{}: {e}", e.code())),
            };
            let replayed = match log.replay() {
                Ok(r) => r,
                Err(e) => return input_error("eventlog dump", format!("{}: {e}", e.code())),
            };
            let doc = dump_json(&log, &replayed);
            let mut out = String::new();
            match format {
                Format::Json => out = format!("{doc:#}\n"),
                Format::Text => {
                    out += &format!(
                        "{} log, banks {}, startup locality {}, {} events\n",
                        doc.get("format")
                            .and_then(Value::as_str)
                            .unwrap_or_default(),
                        log.banks
                            .iter()
                            .map(|(a, _)| bank_name(*a))
                            .collect::<Vec<_>>()
                            .join(","),
                        log.startup_locality,
                        log.events.len()
                    );
                    let events = doc.get("events").and_then(Value::as_array);
                    for e in events.into_iter().flatten() {
                        let digest = e["digests"]
                            .as_object()
                            .and_then(|m| m.iter().next())
                            .map(|(b, d)| {
                                format!(
                                    "{b}:{}",
                                    d.as_str().unwrap_or_default().get(..16).unwrap_or_default()
                                )
                            })
                            .unwrap_or_default();
                        let detail = if let Some(err) = e.get("detail_error") {
                            format!("(undecodable: {})", err.as_str().unwrap_or_default())
                        } else {
                            detail_text(&e["detail"])
                        };
                        out += &format!(
                            "#{:<4} PCR {:<2} {:<34} {digest}… {detail}\n",
                            e["number"],
                            e["pcr"],
                            e["type_name"].as_str().unwrap_or_default(),
                        );
                    }
                    out += "replayed:\n";
                    for (bank, pcr, v) in replayed.iter() {
                        out += &format!("  {}:{pcr:<2} {}\n", bank.name(), hex::encode(v));
                    }
                }
            }
            emit(&out);
            ExitCode::SUCCESS
        }
        EventlogCommand::Replay {
            file,
            pcrs,
            pcr_list,
        } => {
            let parsed = read_log(&file)
                .and_then(|b| parse(&b).map_err(|e| format!("event log: {}: {e}", e.code())));
            let log = match parsed {
                Ok(l) => l,
                Err(e) => return input_error("eventlog replay", e),
            };
            let (Some(pcrs), Some(list)) = (pcrs, pcr_list) else {
                return match log.replay() {
                    Ok(r) => {
                        for (bank, pcr, v) in r.iter() {
                            println!("{}:{pcr} {}", bank.name(), hex::encode(v));
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => input_error("eventlog replay", format!("{}: {e}", e.code())),
                };
            };
            let inputs = (|| -> Result<(PcrSelection, PcrValues), String> {
                let selection: PcrSelection =
                    list.parse().map_err(|e| format!("--pcr-list: {e}"))?;
                let file = read(&pcrs, "--pcrs")?;
                let (_, values) = read_pcr_file(&file).map_err(|e| format!("--pcrs: {e}"))?;
                Ok((selection, values))
            })();
            let (selection, values) = match inputs {
                Ok(v) => v,
                Err(e) => return input_error("eventlog replay", e),
            };
            match log.check_against(&selection, &values) {
                Ok(()) => {
                    println!("match: the log replays to every PCR of {selection}");
                    ExitCode::SUCCESS
                }
                Err(e @ EvidenceError::PcrReplay { .. }) | Err(e @ EvidenceError::EventLog(_)) => {
                    println!("mismatch: {}: {e}", e.code());
                    ExitCode::from(1)
                }
                Err(e) => input_error("eventlog replay", format!("{}: {e}", e.code())),
            }
        }
    }
}

pub fn appraise_cmd(args: Appraise) -> ExitCode {
    const CMD: &str = "appraise";
    let profile = match read_bounded(
        &args.profile,
        "--profile",
        writ_attestation::appraisal::MAX_PROFILE as u64,
    )
    .and_then(|b| LoadedProfile::from_json(&b).map_err(|e| format!("--profile: {e}")))
    {
        Ok(p) => p,
        Err(e) => return input_error(CMD, e),
    };
    let bytes = match read_log(&args.log) {
        Ok(b) => b,
        Err(e) => return input_error(CMD, e),
    };
    let quote = match args.quote.verify() {
        Ok(q) => q,
        Err(QuoteFailure::Input(e)) => return input_error(CMD, e),
        Err(QuoteFailure::Rejected(e)) => {
            println!("rejected: {}: {e}", e.code());
            return ExitCode::from(1);
        }
    };
    // A log that does not parse explains nothing: the evidence is refused, with the reason.
    let log = match parse(&bytes) {
        Ok(l) => l,
        Err(e) => {
            println!("rejected: {}: {e}", e.code());
            return ExitCode::from(1);
        }
    };
    // Offline, nothing proves that the AK lives in a TPM with a given EK certificate (that is
    // enrollment's credential activation): no TPM identity, so `hardware` makes no claim.
    let appraisal = appraise(&profile, &log, &quote, None);
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let build = format!("writ {}", env!("CARGO_PKG_VERSION"));
    let claims = ear::claims(
        &appraisal,
        ear::Context {
            iat,
            nonce: Some(quote.nonce().as_bytes()),
            build: &build,
        },
    );
    println!("{claims:#}");
    eprintln!(
        "writ appraise: {} (profile {:?}, {})",
        appraisal.status.as_str(),
        profile.profile().name,
        profile.id()
    );
    for r in &appraisal.reasons {
        eprintln!("  {r}");
    }
    if appraisal.status == Status::Affirming {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn parse_pcr_list(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let (a, b): (u8, u8) = (
                a.parse().map_err(|_| format!("PCR {a:?}"))?,
                b.parse().map_err(|_| format!("PCR {b:?}"))?,
            );
            if a > b || b > 23 {
                return Err(format!("PCR range {part}"));
            }
            out.extend(a..=b);
        } else {
            let p: u8 = part.parse().map_err(|_| format!("PCR {part:?}"))?;
            if p > 23 {
                return Err(format!("PCR {p}"));
            }
            out.push(p);
        }
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err("no PCRs".into());
    }
    Ok(out)
}

pub fn reference(cmd: ReferenceCommand) -> ExitCode {
    const CMD: &str = "reference capture";
    let ReferenceCommand::Capture(args) = cmd;
    let pcrs = match parse_pcr_list(&args.capture_pcrs) {
        Ok(p) => p,
        Err(e) => return input_error(CMD, format!("--capture-pcrs: {e}")),
    };
    let Some(bank) = HashAlg::from_name(&args.bank) else {
        return input_error(CMD, format!("--bank: unknown bank {:?}", args.bank));
    };
    let bytes = match read_log(&args.log) {
        Ok(b) => b,
        Err(e) => return input_error(CMD, e),
    };
    let quote = match args.quote.verify() {
        Ok(q) => q,
        Err(QuoteFailure::Input(e)) => return input_error(CMD, e),
        Err(QuoteFailure::Rejected(e)) => {
            println!("rejected: {}: {e}", e.code());
            return ExitCode::from(1);
        }
    };
    let profile = parse(&bytes).and_then(|log| capture(&args.name, &log, &quote, bank, &pcrs));
    let profile = match profile {
        Ok(p) => p,
        Err(e) => {
            println!("rejected: {}: {e}", e.code());
            return ExitCode::from(1);
        }
    };
    if profile.secure_boot == Some(false) {
        eprintln!(
            "writ reference capture: warning: this machine booted with Secure Boot off; the profile requires it off"
        );
    }
    if profile.min_dbx_entries.is_none() && pcrs.contains(&7) {
        eprintln!(
            "writ reference capture: warning: no dbx was measured; the profile has no dbx rule"
        );
    }
    let text = match serde_json::to_string_pretty(&profile) {
        Ok(t) => t + "\n",
        Err(e) => return input_error(CMD, e),
    };
    match &args.out {
        None => print!("{text}"),
        Some(path) => {
            if let Err(e) = std::fs::write(path, &text) {
                return input_error(CMD, format!("{}: {e}", path.display()));
            }
            eprintln!(
                "writ reference capture: profile written to {}; review it before use",
                path.display()
            );
        }
    }
    ExitCode::SUCCESS
}
