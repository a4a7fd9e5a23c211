//! `writ agent`: the runtime's side. Built so far: `writ agent enroll` (EK certificate from NV,
//! an AK under the EK, credential activation) and `writ agent status`. Attestation is not built
//! yet (README).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use writ_hsm::tpm::attester::{Attester, EkKind, KeyBlob};

use crate::client::{Client, ClientError, Trust};

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Enroll this machine's TPM with the appliance: prove, once, that the AK lives in a genuine
    /// TPM. Progress on stderr; the identity is kept in the state folder.
    Enroll(Enroll),
    /// Show this runtime's identity (from the state folder).
    Status(Status),
}

#[derive(Debug, Args)]
pub struct Common {
    /// Where the agent keeps its AK (wrapped by the TPM, useless elsewhere) and identity.
    #[arg(long, default_value = "/var/lib/writ-agent")]
    state: PathBuf,
}

#[derive(Debug, Args)]
pub struct Enroll {
    #[command(flatten)]
    common: Common,
    /// The appliance, e.g. https://writ.example:8787 (plain http:// for a loopback appliance).
    #[arg(long)]
    server: String,
    /// `sha256:<hex>` of the appliance's CA certificate (`writ serve` prints it), pinned on first
    /// contact; the CA is then kept in the state folder.
    #[arg(long)]
    fingerprint: Option<String>,
    /// A file holding a one-time join token (else the EK certificate must have been registered
    /// by an admin).
    #[arg(long)]
    join_token: Option<PathBuf>,
    /// The TPM (TCTI), else `TPM2TOOLS_TCTI`, `TCTI` or /dev/tpmrm0.
    #[arg(long)]
    tcti: Option<String>,
}

#[derive(Debug, Args)]
pub struct Status {
    #[command(flatten)]
    common: Common,
}

fn step(what: &str) {
    eprintln!("writ agent: {what}");
}

/// Writes `bytes` to `path` (0600), whole or not at all.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    writ::files::write_atomically(path, bytes, 0o600, writ::files::Existing::Replace)
}

fn load_ak(path: &Path) -> Result<Option<KeyBlob>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let field = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .and_then(|s| STANDARD.decode(s).ok())
            .ok_or_else(|| format!("{}: no {k}", path.display()))
    };
    Ok(Some(KeyBlob {
        public: field("public")?,
        private: field("private")?,
        name: field("name")?,
    }))
}

fn refused(e: ClientError) -> String {
    match e {
        ClientError::Refused { code, detail, .. } => {
            let hint = match code.as_str() {
                "enrollment_unauthorized" => {
                    " (ask an admin for a join token, `writ admin join-token`, or to register this EK: `writ admin register-ek`)"
                }
                "ek_untrusted" => {
                    " (the appliance does not trust this TPM's manufacturer: its --ek-roots lacks the root)"
                }
                "reenrollment" => {
                    " (this name is enrolled with other keys, or this TPM under another name; an admin must revoke or rename)"
                }
                _ => "",
            };
            format!("the appliance refused: {code}: {detail}{hint}")
        }
        ClientError::Transport(e) => format!("cannot reach the appliance: {e}"),
    }
}

pub fn run(cmd: AgentCommand) -> Result<(), String> {
    match cmd {
        AgentCommand::Enroll(a) => enroll(&a),
        AgentCommand::Status(a) => {
            let p = a.common.state.join("identity.json");
            let text = std::fs::read_to_string(&p).map_err(|e| {
                format!(
                    "{}: {e} (not enrolled? run `writ agent enroll`)",
                    p.display()
                )
            })?;
            println!("{text}");
            Ok(())
        }
    }
}

fn enroll(a: &Enroll) -> Result<(), String> {
    let token = a
        .join_token
        .as_ref()
        .map(|p| {
            std::fs::read_to_string(p)
                .map(|t| t.trim().to_string())
                .map_err(|e| format!("--join-token {}: {e}", p.display()))
        })
        .transpose()?;
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let state = &a.common.state;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state)
            .map_err(|e| format!("{}: {e}", state.display()))?;
        let mode = std::fs::metadata(state)
            .map_err(|e| format!("{}: {e}", state.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "{}: the state folder is open to others (chmod 700)",
                state.display()
            ));
        }
    }
    let client = Client::new(
        &a.server,
        &Trust {
            fingerprint: a.fingerprint.clone(),
            ca_file: Some(a.common.state.join("ca.pem")),
        },
    )
    .map_err(|e| e.to_string())?;
    step("opening the TPM");
    let tpm = Attester::open(a.tcti.as_deref()).map_err(|e| format!("TPM: {e}"))?;
    step("reading the EK certificate from NV");
    let certs = tpm.ek_certificates().map_err(|e| {
        format!(
            "{e}: this TPM has no EK certificate in NV. Hardware TPMs carry one from their vendor \
             (some only after a firmware update); for swtpm, provision it with `swtpm_setup \
             --create-ek-cert`. See docs/enrollment.md."
        )
    })?;
    let cert = certs.iter().find(|c| c.kind == EkKind::Rsa2048).ok_or(
        "this TPM has no RSA 2048 EK certificate in NV (index 0x01c00002), the EK writ's AK is \
             created under. Hardware TPMs carry one from their vendor (some only after a firmware \
             update); for swtpm, provision it with `swtpm_setup --create-ek-cert`. See \
             docs/enrollment.md.",
    )?;
    let ek_public = tpm.ek_public().map_err(|e| format!("EK: {e}"))?;
    let ak_path = a.common.state.join("ak.json");
    let ak = match load_ak(&ak_path)? {
        Some(ak) => {
            step("using the AK from an earlier enrollment");
            ak
        }
        None => {
            step("creating the AK (restricted ECDSA P-256 signing key under the EK)");
            let ak = tpm.create_ak().map_err(|e| format!("AK: {e}"))?;
            let doc = json!({
                "public": STANDARD.encode(&ak.public),
                "private": STANDARD.encode(&ak.private),
                "name": STANDARD.encode(&ak.name),
            });
            write_private(&ak_path, doc.to_string().as_bytes())?;
            ak
        }
    };
    step("asking the appliance for a credential challenge");
    let mut body = json!({
        "ek_certificate": STANDARD.encode(&cert.der),
        "ek_public": STANDARD.encode(&ek_public),
        "ak_public": STANDARD.encode(&ak.public),
    });
    if let (Some(t), Some(o)) = (&token, body.as_object_mut()) {
        o.insert("join_token".into(), json!(t));
    }
    let challenge = client
        .call("POST", "/v1/enroll", Some(&body), None)
        .map_err(refused)?;
    let field = |k: &str| -> Result<Vec<u8>, String> {
        challenge
            .get(k)
            .and_then(Value::as_str)
            .and_then(|s| STANDARD.decode(s).ok())
            .ok_or_else(|| format!("the appliance's challenge has no {k}"))
    };
    let enrollment = challenge
        .get("enrollment")
        .and_then(Value::as_str)
        .ok_or("the appliance's challenge has no enrollment")?
        .to_string();
    step(
        "activating the credential in the TPM (it releases the secret only to this AK beside this EK)",
    );
    let secret = tpm
        .activate_credential(&ak, &field("id_object")?, &field("encrypted_secret")?)
        .map_err(|e| format!("ActivateCredential: {e}"))?;
    step("answering the challenge");
    let enrolled = client
        .call(
            "POST",
            "/v1/enroll/activate",
            Some(&json!({"enrollment": enrollment, "secret": STANDARD.encode(secret.as_slice())})),
            None,
        )
        .map_err(refused)?;
    let identity = json!({
        "server": a.server,
        "name": enrolled.get("name"),
        "spiffe_id": enrolled.get("spiffe_id"),
        "ek_certificate_sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&cert.der)),
    });
    write_private(
        &a.common.state.join("identity.json"),
        format!("{identity:#}\n").as_bytes(),
    )?;
    step(&format!(
        "enrolled as {}",
        enrolled
            .get("spiffe_id")
            .and_then(Value::as_str)
            .unwrap_or("?")
    ));
    println!("{identity}");
    Ok(())
}
