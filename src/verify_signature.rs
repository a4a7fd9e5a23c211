//! `writ verify-signature`: checks a signature or a DSSE envelope from the signing service
//! against the trust bundle, offline (docs/signing.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use writ_attestation::crypto::default_provider;
use writ_attestation::log::record::{Decision, DecisionRecord, Kind};
use writ_attestation::writ::Refusal;
use writ_attestation::writ::bundle::{BundleKey, Purpose, SigningForm, TrustBundle};
use writ_attestation::writ::signed;

#[derive(Debug, Args)]
pub struct VerifySignature {
    /// The trust bundle (GET /v1/bundle; a gateway's copy serves). Its keys are what a
    /// signature may be by; its age is not checked (signatures outlive bundles: keep the bundle
    /// of the time).
    #[arg(long)]
    bundle: PathBuf,
    /// A raw signature's SHA-256 digest (`sha256:<hex>` or hex).
    #[arg(long, conflicts_with_all = ["envelope", "file"], requires = "signature")]
    digest: Option<String>,
    /// The artifact: for a raw signature, its SHA-256 is what was signed (instead of
    /// --digest); with --envelope, its SHA-256 must be one of the Statement's subjects.
    #[arg(long)]
    file: Option<PathBuf>,
    /// A raw signature (DER, as `writ agent sign` and `openssl dgst -sign` write it).
    #[arg(long, conflicts_with = "envelope")]
    signature: Option<PathBuf>,
    /// A DSSE envelope (JSON) over an in-toto Statement.
    #[arg(long)]
    envelope: Option<PathBuf>,
    /// Accept only the signing key of this name.
    #[arg(long)]
    key: Option<String>,
    /// An inclusion bundle (`GET /v1/log/bundle?index=<log_index>`): the signature's `sign`
    /// record must be in the log under a checkpoint signed by the bundle's log key.
    #[arg(long)]
    inclusion: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("--{what} {}: {e}", path.display()))
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// What verified: the key, what its record must name, and what to print.
struct Verified {
    key: String,
    kid: String,
    /// (digest name in the record, value)
    names: (&'static str, String),
    shown: Value,
}

pub fn run(a: VerifySignature) -> ExitCode {
    match check(&a) {
        Ok(Ok(v)) => {
            if a.json {
                println!(
                    "{}",
                    json!({"verified": true, "key": v.key, "kid": v.kid, "detail": v.shown})
                );
            } else {
                println!(
                    "verified: signed by the signing key {:?} (kid {})",
                    v.key, v.kid
                );
                if let Some(o) = v.shown.as_object() {
                    for (k, val) in o {
                        println!("  {k}: {val}");
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Ok(Err(r)) => {
            if a.json {
                println!(
                    "{}",
                    json!({"verified": false, "code": r.code, "detail": r.detail})
                );
            } else {
                eprintln!("writ verify-signature: refused: {}: {}", r.code, r.detail);
            }
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("writ verify-signature: error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Inputs that cannot be read or parsed are errors (outer); a signature that does not hold is a
/// refusal (inner).
fn check(a: &VerifySignature) -> Result<Result<Verified, Refusal>, String> {
    let bundle = TrustBundle::parse(&read(&a.bundle, "bundle")?)
        .map_err(|r| format!("--bundle: {}", r.detail))?;
    // Each form only by keys of that form (a digest key signs any SHA-256, a PAE's among them).
    let form = if a.envelope.is_some() {
        SigningForm::Dsse
    } else {
        SigningForm::Digest
    };
    let keys: Vec<BundleKey> = bundle
        .keys
        .iter()
        .filter(|k| k.purpose == Purpose::Signing && k.form == Some(form))
        .filter(|k| {
            a.key
                .as_deref()
                .is_none_or(|n| k.name.as_deref() == Some(n))
        })
        .cloned()
        .collect();
    let verified = match (&a.envelope, &a.signature) {
        (Some(path), None) => {
            let bytes = read(path, "envelope")?;
            match signed::open_envelope(default_provider(), &bytes, &keys, a.key.as_deref()) {
                Err(r) => return Ok(Err(r)),
                Ok(o) => {
                    // What the predicate says of the signer must be this key of this appliance.
                    if o.predicate.get("key").and_then(Value::as_str) != Some(o.key_name.as_str())
                        || o.predicate.get("appliance").and_then(Value::as_str)
                            != Some(bundle.appliance_id().as_str())
                    {
                        return Ok(Err(Refusal::new(
                            "statement",
                            "the predicate's key or appliance is not the key that signed it or this trust bundle's appliance",
                        )));
                    }
                    if let Some(f) = &a.file {
                        let want = sha256(&read(f, "file")?);
                        if !o
                            .subjects
                            .iter()
                            .any(|s| s.sha256().as_deref() == Some(want.as_str()))
                        {
                            return Ok(Err(Refusal::new(
                                "subject",
                                format!(
                                    "{} ({want}) is not a subject of the statement",
                                    f.display()
                                ),
                            )));
                        }
                    }
                    Verified {
                        key: o.key_name.clone(),
                        kid: o.kid.clone(),
                        names: ("payload", sha256(&o.payload)),
                        shown: json!({
                            "subjects": o.subjects,
                            "runtime": o.predicate.get("runtime"),
                            "attestation": o.predicate.get("attestation"),
                            "policy_bundle": o.predicate.get("policy_bundle"),
                            "signed_at": o.predicate.get("signed_at"),
                        }),
                    }
                }
            }
        }
        (None, Some(sig_path)) => {
            let digest: [u8; 32] = match (&a.digest, &a.file) {
                (Some(d), None) => hex::decode(d.strip_prefix("sha256:").unwrap_or(d))
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or("--digest: 64 hex digits (optionally sha256:)")?,
                (None, Some(f)) => Sha256::digest(read(f, "file")?).into(),
                _ => return Err("give one of --digest and --file with --signature".into()),
            };
            let der = read(sig_path, "signature")?;
            if keys.is_empty() {
                return Ok(Err(no_key(a.key.as_deref())));
            }
            let Some(k) = keys
                .iter()
                .find(|k| signed::verify_digest(&k.jwk, &digest, &der).is_ok())
            else {
                return Ok(Err(Refusal::new(
                    "signature",
                    "the signature does not verify over this digest with any accepted signing key",
                )));
            };
            let d = format!("sha256:{}", hex::encode(digest));
            Verified {
                key: k.name.clone().unwrap_or_default(),
                kid: k.kid.clone(),
                names: ("artifact", d.clone()),
                shown: json!({"digest": d}),
            }
        }
        _ => {
            return Err("give --envelope FILE, or --signature FILE with --digest or --file".into());
        }
    };
    let Some(inclusion) = &a.inclusion else {
        return Ok(Ok(verified));
    };
    let inclusion = read(inclusion, "inclusion")?;
    Ok(included(&bundle, &inclusion, verified))
}

fn no_key(name: Option<&str>) -> Refusal {
    Refusal::new(
        "key_unknown",
        match name {
            Some(n) => format!("the trust bundle has no signing key named {n:?}"),
            None => "the trust bundle has no signing key".into(),
        },
    )
}

/// The signature's `sign` allow record is in the log: under a checkpoint signed by one of the
/// trust bundle's log keys, naming this key and this artifact or payload (not the signature's bytes:
/// nothing is keyed on them).
fn included(bundle: &TrustBundle, inclusion: &[u8], mut v: Verified) -> Result<Verified, Refusal> {
    let bad = |why: String| Refusal::new("inclusion", why);
    let keys = bundle
        .log_keys()
        .map_err(|e| bad(format!("the trust bundle's log key: {}", e.detail)))?;
    let proven = writ_attestation::log::audit::verify_bundle(
        default_provider(),
        inclusion,
        &keys,
        &bundle.log_origin,
    )
    .map_err(|e| bad(format!("the inclusion bundle: {e}")))?;
    let record = DecisionRecord::from_leaf(&proven.record)
        .map_err(|e| bad(format!("the included record: {e}")))?;
    let kid_digest = signed::key_digest(&v.kid);
    let (what, value) = &v.names;
    if record.kind != Kind::Sign
        || record.decision != Decision::Allow
        || record.digests.get(*what) != Some(value)
        || kid_digest.is_none()
        || record.digests.get("key") != kid_digest.as_ref()
    {
        return Err(bad(format!(
            "the included record is not this signature's (kind sign, allow, digests.{what}, digests.key)"
        )));
    }
    if let Some(o) = v.shown.as_object_mut() {
        o.insert(
            "log".into(),
            json!({"index": proven.index, "tree_size": proven.checkpoint.size, "subject": record.subject}),
        );
    }
    Ok(v)
}
