//! `writ admin`: the appliance's admin operations, as an admin identified by a client
//! certificate (`--cert`, `--key`: `spiffe://<td>/admin/<name>`, from `writ admin issue-cert`)
//! or by the admin token (`--token-file`).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::{Client, ClientError, Trust};

#[derive(Debug, Args)]
pub struct Admin {
    /// The appliance, e.g. http://127.0.0.1:8787.
    #[arg(long)]
    server: String,
    /// A file holding the admin token (or give --cert and --key).
    #[arg(long, required_unless_present = "cert")]
    token_file: Option<PathBuf>,
    /// An admin's client certificate (PEM), presented over TLS instead of the token.
    #[arg(long, requires = "key", conflicts_with = "token_file")]
    cert: Option<PathBuf>,
    /// Its private key (PKCS#8 PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// `sha256:<hex>` of the appliance's CA certificate, for an https:// appliance.
    #[arg(long)]
    fingerprint: Option<String>,
    /// Where to keep the pinned CA certificate (read if present).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Register an EK certificate (by its SHA-256) for a runtime name: that TPM may then enroll
    /// under the name without a join token.
    RegisterEk {
        /// The EK certificate (DER or PEM), or give --sha256.
        #[arg(long, conflicts_with = "sha256")]
        ek_cert: Option<PathBuf>,
        /// The certificate's SHA-256 (hex).
        #[arg(long)]
        sha256: Option<String>,
        /// The runtime's name.
        #[arg(long)]
        name: String,
    },
    /// Issue a one-time join token for a runtime name (printed once, or written to --out).
    JoinToken {
        /// The runtime's name.
        #[arg(long)]
        name: String,
        /// Seconds it stays valid.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
        /// Write only the token to this file (0600, must not exist) for `writ agent enroll
        /// --join-token`, and print the rest.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List runtimes with their state.
    Runtimes,
    /// Revoke a runtime: every later request of it is refused.
    Revoke {
        /// The runtime's name.
        name: String,
    },
    /// Load (or replace) a reference profile under a name (docs/reference-profiles.md); a
    /// profile the appliance refuses leaves the old one in force.
    LoadProfile {
        /// The profile's name.
        #[arg(long)]
        name: String,
        /// The profile (JSON), e.g. from `writ reference capture`.
        file: PathBuf,
    },
    /// Forget a runtime's current appraisal and the TPM counters it is compared with (after a
    /// `counters_rollback` whose cause is known, e.g. a TPM cleared on purpose): its next
    /// attestation is its first.
    Rebaseline {
        /// The runtime's name.
        name: String,
    },
    /// Load a policy bundle (Cedar schema and policies, issuance limits; docs/issuance.md). It
    /// is validated first; a bundle refused leaves the one in force.
    LoadPolicy {
        /// The bundle (JSON).
        file: PathBuf,
    },
    /// Issue an admin's client certificate (spiffe://<td>/admin/<name>, clientAuth only,
    /// signed by the appliance's ca key; logged), or with --gateway a gateway's
    /// (spiffe://<td>/gateway/<name>, for writ-gate report): a P-256 key is made here and kept in
    /// --key-out (0600); only its public key is sent.
    IssueCert {
        /// The admin's (or gateway's) name.
        #[arg(long)]
        name: String,
        /// A gateway's certificate (any admin may issue one), not an admin's.
        #[arg(long)]
        gateway: bool,
        /// Where to write the new private key (PKCS#8 PEM, 0600, must not exist).
        #[arg(long)]
        key_out: PathBuf,
        /// Where to write the certificate (PEM).
        #[arg(long)]
        cert_out: PathBuf,
        /// Hours it is valid (at most 720).
        #[arg(long, default_value_t = 168)]
        hours: u64,
    },
    /// Revoke an admin: none of its client certificates authenticates any more.
    RevokeAdmin {
        /// The admin's name.
        name: String,
    },
    /// Rotate the issuer, ear, checkpoint, ca or a signing key without a restart (docs/keys.md): the new key
    /// (made first with `writ keys generate`) is published now and signs after --overlap-s; the
    /// current one stays published until what it can still sign has expired (a checkpoint key
    /// signs with the new one meanwhile). Prints the schedule.
    RotateKey {
        /// `issuer`, `ear`, `checkpoint`, `ca` (a new CA: the answer's `ca_fingerprint` is what
        /// new clients pin once it signs) or `signing` (with --name and --retain-s).
        #[arg(long)]
        purpose: String,
        /// For `signing`: the signing key's name.
        #[arg(long)]
        name: Option<String>,
        /// For `signing`: seconds the old key stays published after the new one signs (a
        /// signature does not expire; after that, verify with the trust bundle of its time).
        #[arg(long)]
        retain_s: Option<i64>,
        /// The new key's URI (pkcs11: or tpm:), as the appliance opens it.
        #[arg(long)]
        key_uri: String,
        /// Seconds the new key is published before it signs (default 3600: the trust bundle's
        /// lifetime, so every relying party holds it first).
        #[arg(long)]
        overlap_s: Option<i64>,
        /// Relying parties' clock skew, seconds (default 60).
        #[arg(long)]
        skew_s: Option<i64>,
    },
    /// Revoke a gateway: none of its client certificates reports any more.
    RevokeGateway {
        /// The gateway's name.
        name: String,
    },
    /// Assign a loaded profile to a runtime: its attestations are appraised against it.
    AssignProfile {
        /// The runtime's name.
        #[arg(long)]
        runtime: String,
        /// The profile's name.
        #[arg(long)]
        profile: String,
    },
}

fn der_of(bytes: &[u8]) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    match std::str::from_utf8(bytes) {
        Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => {
            let b64: String = text
                .lines()
                .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
                .skip(1)
                .take_while(|l| !l.starts_with("-----END"))
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| format!("--ek-cert: PEM: {e}"))
        }
        _ => Ok(bytes.to_vec()),
    }
}

/// Exit code: 0 done, 1 refused, 2 error.
pub fn run(a: Admin) -> std::process::ExitCode {
    match admin(a) {
        Ok(out) => {
            if !out.is_null() {
                println!("{out:#}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err((code, e)) => {
            eprintln!("writ admin: {e}");
            std::process::ExitCode::from(code)
        }
    }
}

fn admin(a: Admin) -> Result<Value, (u8, String)> {
    let err2 = |e: String| (2u8, e);
    let token = match &a.token_file {
        Some(f) => Some(zeroize::Zeroizing::new(
            std::fs::read_to_string(f)
                .map_err(|e| err2(format!("--token-file {}: {e}", f.display())))?
                .trim()
                .to_string(),
        )),
        None => None,
    };
    let client = Client::new(
        &a.server,
        &Trust {
            fingerprint: a.fingerprint.clone(),
            ca_file: a.ca_file.clone(),
            client_cert: a.cert.clone().zip(a.key.clone()),
        },
    )
    .map_err(|e| err2(e.to_string()))?;
    let call = |method: &str, path: &str, body: Option<Value>| {
        client
            .call(
                method,
                path,
                body.as_ref(),
                token.as_ref().map(|t| t.as_str()),
            )
            .map_err(|e| match e {
                // A refusal of this request is 1; the appliance unable to decide (503, 500, a
                // rate limit) is an error, 2.
                ClientError::Refused { status, .. } if status < 500 && status != 429 => {
                    (1u8, e.to_string())
                }
                _ => (2u8, e.to_string()),
            })
    };
    match a.command {
        AdminCommand::RegisterEk {
            ek_cert,
            sha256,
            name,
        } => {
            let hash = match (ek_cert, sha256) {
                (Some(p), None) => {
                    let bytes = std::fs::read(&p)
                        .map_err(|e| err2(format!("--ek-cert {}: {e}", p.display())))?;
                    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                        der_of(&bytes).map_err(err2)?,
                    ))
                }
                (None, Some(h)) => h.to_ascii_lowercase(),
                _ => return Err(err2("give --ek-cert FILE or --sha256 HEX".into())),
            };
            call(
                "POST",
                "/v1/admin/ek-registrations",
                Some(json!({"ek_certificate_sha256": hash, "name": name})),
            )
        }
        AdminCommand::JoinToken { name, ttl, out } => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            // The file first: a token issued (and logged) but not kept would be lost.
            let mut file = match &out {
                Some(path) => Some(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(path)
                        .map_err(|e| err2(format!("--out {}: {e}", path.display())))?,
                ),
                None => None,
            };
            let mut v = call(
                "POST",
                "/v1/admin/join-tokens",
                Some(json!({"name": name, "ttl_seconds": ttl})),
            );
            if let (Err(_), Some(path)) = (&v, &out) {
                drop(file.take());
                let _ = std::fs::remove_file(path);
            }
            let v = v.as_mut().map_err(|e| e.clone())?;
            if let (Some(f), Some(path)) = (file.as_mut(), &out) {
                let token = v
                    .get("token")
                    .and_then(Value::as_str)
                    .ok_or_else(|| err2("the appliance's answer has no token".into()))?
                    .to_string();
                f.write_all(token.as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| err2(format!("--out {}: {e}", path.display())))?;
                if let Some(o) = v.as_object_mut() {
                    o.remove("token");
                    o.insert("token_file".into(), json!(path.display().to_string()));
                }
            }
            Ok(v.clone())
        }
        AdminCommand::Runtimes => call("GET", "/v1/admin/runtimes", None),
        AdminCommand::RevokeAdmin { name } => {
            if !writ::appliance::valid_name(&name) {
                return Err(err2(format!(
                    "{name:?} is not an admin name (1 to 64 of a-z 0-9 - _ .)"
                )));
            }
            call("POST", &format!("/v1/admin/admins/{name}/revoke"), None)
        }
        AdminCommand::RotateKey {
            purpose,
            name,
            retain_s,
            key_uri,
            overlap_s,
            skew_s,
        } => {
            let body = serde_json::to_value(writ::appliance::RotateRequest {
                purpose,
                key: key_uri,
                overlap_s,
                skew_s,
                name,
                retain_s,
            })
            .map_err(|e| err2(e.to_string()))?;
            call("POST", "/v1/admin/keys/rotate", Some(body))
        }
        AdminCommand::RevokeGateway { name } => {
            if !writ::appliance::valid_name(&name) {
                return Err(err2(format!(
                    "{name:?} is not a gateway name (1 to 64 of a-z 0-9 - _ .)"
                )));
            }
            call("POST", &format!("/v1/admin/gateways/{name}/revoke"), None)
        }
        AdminCommand::IssueCert {
            name,
            gateway,
            key_out,
            cert_out,
            hours,
        } => {
            use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
            let key = loop {
                let mut d = zeroize::Zeroizing::new([0u8; 32]);
                getrandom::fill(d.as_mut()).map_err(|e| err2(format!("random: {e}")))?;
                if let Ok(k) = p256::SecretKey::from_slice(d.as_ref()) {
                    break k;
                }
            };
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| err2(format!("the key: {e}")))?;
            // The key first, never over an existing file: a certificate without its key is
            // useless, a key without a certificate harmless.
            writ::files::write_atomically(
                &key_out,
                pem.as_bytes(),
                0o600,
                writ::files::Existing::Keep,
            )
            .map_err(|e| err2(format!("--key-out {}: {e}", key_out.display())))?;
            let spki = key
                .public_key()
                .to_public_key_der()
                .map_err(|e| err2(format!("the public key: {e}")))?;
            use base64::Engine as _;
            let v = call(
                "POST",
                "/v1/admin/certificates",
                Some(json!({
                    "name": name,
                    "public_key": base64::engine::general_purpose::STANDARD.encode(spki.as_bytes()),
                    "lifetime_s": hours.saturating_mul(3600),
                    "role": if gateway { "gateway" } else { "admin" },
                })),
            )?;
            let cert = v
                .get("certificate")
                .and_then(Value::as_str)
                .ok_or_else(|| err2("the appliance's answer has no certificate".into()))?;
            writ::files::write_atomically(
                &cert_out,
                cert.as_bytes(),
                0o644,
                writ::files::Existing::Replace,
            )
            .map_err(|e| err2(format!("--cert-out {}: {e}", cert_out.display())))?;
            Ok(json!({
                "spiffe_id": v.get("spiffe_id"),
                "certificate": cert_out.display().to_string(),
                "key": key_out.display().to_string(),
            }))
        }
        AdminCommand::Revoke { name } => {
            if !writ::appliance::valid_name(&name) {
                return Err(err2(format!(
                    "{name:?} is not a runtime name (1 to 64 of a-z 0-9 - _ .)"
                )));
            }
            call("POST", &format!("/v1/admin/runtimes/{name}/revoke"), None)
        }
        AdminCommand::LoadProfile { name, file } => {
            let bytes =
                std::fs::read(&file).map_err(|e| err2(format!("{}: {e}", file.display())))?;
            // Strictly: a key given twice is refused here rather than silently merged.
            let profile: Value = writ_attestation::writ::json::parse(&bytes)
                .map_err(|e| err2(format!("{}: not JSON: {}", file.display(), e.detail)))?;
            call(
                "POST",
                "/v1/admin/profiles",
                Some(json!({"name": name, "profile": profile})),
            )
        }
        AdminCommand::LoadPolicy { file } => {
            let bytes =
                std::fs::read(&file).map_err(|e| err2(format!("{}: {e}", file.display())))?;
            let bundle: Value = writ_attestation::writ::json::parse(&bytes)
                .map_err(|e| err2(format!("{}: not JSON: {}", file.display(), e.detail)))?;
            call("POST", "/v1/admin/policy", Some(bundle))
        }
        AdminCommand::Rebaseline { name } => {
            if !writ::appliance::valid_name(&name) {
                return Err(err2(format!(
                    "{name:?} is not a runtime name (1 to 64 of a-z 0-9 - _ .)"
                )));
            }
            call(
                "POST",
                &format!("/v1/admin/runtimes/{name}/rebaseline"),
                None,
            )
        }
        AdminCommand::AssignProfile { runtime, profile } => {
            if !writ::appliance::valid_name(&runtime) {
                return Err(err2(format!(
                    "{runtime:?} is not a runtime name (1 to 64 of a-z 0-9 - _ .)"
                )));
            }
            call(
                "POST",
                &format!("/v1/admin/runtimes/{runtime}/profile"),
                Some(json!({ "profile": profile })),
            )
        }
    }
}
