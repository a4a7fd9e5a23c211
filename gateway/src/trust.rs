//! The trust bundle's bootstrap and refresh (`writ-gate bootstrap`, `writ-gate refresh`).
//!
//! Bootstrap pins the appliance's CA by the fingerprint of its certificate (as
//! `step ca bootstrap --fingerprint`): the certificate is fetched without trusting the
//! connection and kept only if its SHA-256 is the pinned one. From then on the appliance is
//! trusted through that CA alone, with the host name, serverAuth and the appliance's SPIFFE ID
//! (`spiffe://<td>/writ/appliance`, the certificate's only SPIFFE ID) required of its TLS
//! certificate: a runtime's or a gateway's certificate from the same CA never passes for it.
//!
//! A fetched bundle is installed only if it parses strictly, is of the trust domain of the bundle
//! it replaces (if any), is neither expired nor older than the configured bound, and its
//! `spiffe_sequence` is not below the one in the file nor below the highest this host's replay
//! store has seen (`bundle_rollback`); the store then records it, and the file is replaced
//! atomically (a reader sees the old bundle or the new one, never a part). A refresh that fails
//! leaves the bundle in place: when it expires, the gateway refuses everything.

use std::path::{Path, PathBuf};
use std::time::Duration;

use writ_attestation::writ::Refusal;
use writ_attestation::writ::bundle::TrustBundle;
use writ_client::{Client, Trust};
use writ_gateway::replay::SqliteReplay;

use crate::exec::GateConfig;

/// The shortest and longest wait between two refreshes, seconds.
const WAIT_S: std::ops::RangeInclusive<u64> = 5..=3600;

/// The appliance named by `server` (or the configuration's), trusted through the configuration's
/// CA file, pinned by `fingerprint` on first contact.
/// With `client_cert` (certificate, key), this gateway presents it (mutual TLS).
fn appliance(
    c: &GateConfig,
    server: Option<&str>,
    fingerprint: Option<&str>,
    client_cert: Option<(PathBuf, PathBuf)>,
) -> Result<Client, String> {
    let server = server
        .or(c.server.as_deref())
        .ok_or("no appliance: give --server or set server in the configuration")?;
    // Over plain http nothing would be verified (not the fingerprint, not the appliance's ID):
    // whoever answers on the port would choose the keys this gateway trusts.
    if !server.starts_with("https://") {
        return Err(format!(
            "{server}: the appliance must be https:// (its CA pinned by fingerprint)"
        ));
    }
    let ca = c.ca_file();
    if fingerprint.is_none() && !ca.exists() {
        return Err(format!(
            "{} does not exist: run writ-gate bootstrap --fingerprint sha256:<hex> first",
            ca.display()
        ));
    }
    Client::new(
        server,
        &Trust {
            fingerprint: fingerprint.map(str::to_string),
            ca_file: Some(ca),
            client_cert,
        },
    )
    .map_err(|e| e.to_string())
}

/// Fetches the appliance's bundle and installs it (see the module's documentation).
pub fn fetch_and_install(
    c: &GateConfig,
    server: Option<&str>,
    fingerprint: Option<&str>,
) -> Result<TrustBundle, Refusal> {
    let client =
        appliance(c, server, fingerprint, None).map_err(|e| Refusal::new("bundle_fetch", e))?;
    let v = client
        .call("GET", "/v1/bundle", None, None)
        .map_err(|e| Refusal::new("bundle_fetch", format!("GET /v1/bundle: {e}")))?;
    let bytes = serde_json::to_vec_pretty(&v).map_err(|e| Refusal::new("bundle", e.to_string()))?;
    install(c, &bytes, crate::now())
}

/// Installs `bytes` as the gateway's bundle if it may replace the one in place.
pub fn install(c: &GateConfig, bytes: &[u8], now: i64) -> Result<TrustBundle, Refusal> {
    let new = TrustBundle::parse(bytes)?;
    // The bundle in place, if any, must be one: a damaged file is not taken for no bundle (its
    // trust domain and sequence would go unchecked); remove it to bootstrap again.
    let current = match std::fs::read(&c.bundle) {
        Ok(b) => Some(TrustBundle::parse(&b).map_err(|r| {
            Refusal::new(
                "bundle",
                format!(
                    "the bundle in place ({}) is not a trust bundle ({}): remove it to bootstrap again",
                    c.bundle.display(),
                    r.detail
                ),
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(Refusal::new(
                "bundle",
                format!("{}: {e}", c.bundle.display()),
            ));
        }
    };
    if let Some(old) = &current
        && old.trust_domain != new.trust_domain
    {
        return Err(Refusal::new(
            "bundle",
            format!(
                "the appliance serves trust domain {:?}, the gateway's bundle is for {:?}",
                new.trust_domain, old.trust_domain
            ),
        ));
    }
    new.check(
        now,
        c.max_bundle_age_s,
        current.as_ref().map(|b| b.sequence),
    )?;
    let store = SqliteReplay::open(&c.replay_db)?;
    store.observe_bundle(
        &new.trust_domain,
        new.sequence,
        &crate::bundle_digest(bytes)?,
    )?;
    writ_client::files::write_atomically(
        &c.bundle,
        bytes,
        0o644,
        writ_client::files::Existing::Replace,
    )
    .map_err(|e| Refusal::new("bundle", e))?;
    Ok(new)
}

/// How long to wait before the next refresh after `b` was installed: its hint, but never
/// later than half of its remaining life, within [`WAIT_S`].
pub fn next_wait(b: &TrustBundle, now: i64) -> Duration {
    let half_life = u64::try_from(b.expires_at.saturating_sub(now) / 2).unwrap_or(0);
    Duration::from_secs(
        b.refresh_hint
            .min(half_life)
            .clamp(*WAIT_S.start(), *WAIT_S.end()),
    )
}

/// Refreshes once, or (`watch`) forever on the bundle's hint, retrying a failure after
/// [`WAIT_S`]'s minimum doubled up to a minute. Returns only on a single refresh's outcome.
pub fn refresh(config: &Path, c: &GateConfig, watch: bool) -> Result<TrustBundle, Refusal> {
    let mut backoff = *WAIT_S.start();
    loop {
        let outcome = fetch_and_install(c, None, None);
        if !watch {
            return outcome;
        }
        let wait = match &outcome {
            Ok(b) => {
                eprintln!(
                    "writ-gate refresh: {}: spiffe_sequence {}, expires at {}",
                    config.display(),
                    b.sequence,
                    b.expires_at
                );
                backoff = *WAIT_S.start();
                next_wait(b, crate::now())
            }
            Err(r) => {
                eprintln!("writ-gate refresh: refused: {}: {}", r.code, r.detail);
                let w = Duration::from_secs(backoff);
                backoff = (backoff * 2).min(60);
                w
            }
        };
        std::thread::sleep(wait);
    }
}

/// Entries sent in one report (the appliance's bound).
const REPORT_BATCH: u32 = 256;

/// Bytes of entries sent in one report at most (the appliance accepts 4 MiB).
const REPORT_BYTES: usize = 2 * 1024 * 1024;

/// Renews this gateway's client certificate with the one it has: a new P-256 key made here, a
/// certificate for the same identity from the appliance (over mutual TLS with the current one;
/// a revoked gateway gets none), then the key and the certificate replace the configured files
/// (each written beside its file, then renamed: key first). Returns the new certificate's
/// identity.
pub fn renew(c: &GateConfig, hours: u64) -> Result<String, String> {
    use base64::Engine as _;
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let (Some(cert), Some(key)) = (&c.cert, &c.key) else {
        return Err(
            "the configuration names no cert and key (writ admin issue-cert --gateway)".into(),
        );
    };
    let client = appliance(c, None, None, Some((cert.clone(), key.clone())))?;
    let new_key = loop {
        let mut d = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(d.as_mut()).map_err(|e| format!("random: {e}"))?;
        if let Ok(k) = p256::SecretKey::from_slice(d.as_ref()) {
            break k;
        }
    };
    let spki = new_key
        .public_key()
        .to_public_key_der()
        .map_err(|e| format!("the public key: {e}"))?;
    let answer = client
        .call(
            "POST",
            "/v1/gateway/certificate",
            Some(&serde_json::json!({
                "public_key": base64::engine::general_purpose::STANDARD.encode(spki.as_bytes()),
                "lifetime_s": hours.saturating_mul(3600),
            })),
            None,
        )
        .map_err(|e| e.to_string())?;
    let pem = answer
        .get("certificate")
        .and_then(serde_json::Value::as_str)
        .ok_or("the appliance's answer has no certificate")?;
    let key_pem = new_key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| format!("the key: {e}"))?;
    let beside = |p: &Path| {
        let mut s = p.as_os_str().to_owned();
        s.push(".new");
        PathBuf::from(s)
    };
    let (key_new, cert_new) = (beside(key), beside(cert));
    writ_client::files::write_atomically(
        &key_new,
        key_pem.as_bytes(),
        0o600,
        writ_client::files::Existing::Replace,
    )
    .map_err(|e| format!("{}: {e}", key_new.display()))?;
    writ_client::files::write_atomically(
        &cert_new,
        pem.as_bytes(),
        0o644,
        writ_client::files::Existing::Replace,
    )
    .map_err(|e| format!("{}: {e}", cert_new.display()))?;
    std::fs::rename(&key_new, key).map_err(|e| format!("{}: {e}", key.display()))?;
    std::fs::rename(&cert_new, cert).map_err(|e| format!("{}: {e}", cert.display()))?;
    Ok(answer
        .get("spiffe_id")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
        .to_string())
}

/// Reports the spool to the appliance until it is empty (once), or forever (`watch`, every 5 s);
/// the number of entries the appliance recorded.
pub fn report(c: &GateConfig, watch: bool) -> Result<u64, String> {
    use std::os::unix::fs::MetadataExt;
    let (Some(cert), Some(key)) = (&c.cert, &c.key) else {
        return Err(
            "the configuration names no cert and key (writ admin issue-cert --gateway)".into(),
        );
    };
    let meta = std::fs::metadata(key).map_err(|e| format!("key {}: {e}", key.display()))?;
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "key {}: readable by others than its owner (chmod 600)",
            key.display()
        ));
    }
    let client = appliance(c, None, None, Some((cert.clone(), key.clone())))?;
    let store = SqliteReplay::open_bounded(&c.replay_db, c.spool_max).map_err(|r| r.detail)?;
    let spool = SqliteReplay::spool_identity(&c.replay_db).map_err(|r| r.detail)?;
    let mut reported = 0u64;
    loop {
        let batch =
            SqliteReplay::spool_entries(&c.replay_db, 0, REPORT_BATCH).map_err(|r| r.detail)?;
        if batch.is_empty() {
            if !watch {
                return Ok(reported);
            }
            std::thread::sleep(Duration::from_secs(5));
            continue;
        }
        // At most REPORT_BYTES of entries (the appliance's bound is 4 MiB), at least one.
        let mut entries: Vec<serde_json::Value> = Vec::new();
        let mut bytes = 0usize;
        let mut last = 0;
        for (seq, entry) in &batch {
            let e = serde_json::json!({"seq": seq, "entry": entry});
            let n = e.to_string().len();
            if !entries.is_empty() && bytes + n > REPORT_BYTES {
                break;
            }
            bytes += n;
            last = *seq;
            entries.push(e);
        }
        let answer = client.call(
            "POST",
            "/v1/gateway/reports",
            Some(&serde_json::json!({"spool": spool, "entries": entries})),
            None,
        );
        let acked = match answer {
            Ok(v) => v
                .get("acknowledged")
                .and_then(serde_json::Value::as_i64)
                .ok_or("the appliance's answer names no acknowledged entry")?,
            Err(e) if watch => {
                eprintln!("writ-gate report: {e}");
                std::thread::sleep(Duration::from_secs(5));
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        // Never more than was sent: an answer beyond it must not drop unreported entries.
        let acked = acked.min(last);
        store.acknowledge(acked).map_err(|r| r.detail)?;
        reported += batch.iter().filter(|(seq, _)| *seq <= acked).count() as u64;
        if acked < last {
            let e = format!("the appliance recorded the spool up to entry {acked} of {last}");
            if !watch {
                return Err(e);
            }
            eprintln!("writ-gate report: {e}");
            std::thread::sleep(Duration::from_secs(5));
        }
    }
}
