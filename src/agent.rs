//! `writ agent`: the runtime's side: `writ agent enroll` (EK certificate from NV, an AK under
//! the EK, credential activation), `writ agent attest` (a quote over the nonce and the selection
//! the appliance names, the PCR values, the event log, and the holder key certified by the AK;
//! `--every` repeats it) and `writ agent status` (identity and the last result).
//!
//! The state folder (0700) holds `identity.json`, `ak.json` (the AK, wrapped by the TPM),
//! `holder.json` (the holder key, wrapped by the TPM; `holder-bound.json` for one bound to the
//! PCR values when the profile asks for it) with its authValue in `holder.auth`
//! (0600, random, read only by the agent), the pinned `ca.pem`, and `last.json`, the last
//! attestation's answer (the EAR token, or the refusal with its reasons).

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
    /// Show this runtime's identity and its last attestation (from the state folder).
    Status(Status),
    /// Attest: prove this machine's current state to the appliance and receive an EAR token
    /// bound to the TPM-held holder key. Exit 0 affirmed, 1 refused, 2 error.
    Attest(Attest),
    /// Ask for an execution writ for one exact request (the last attestation's EAR and a DPoP
    /// proof by the holder key in the TPM). Exit 0 issued, 1 refused, 2 error.
    Request(RequestArgs),
    /// Make the DPoP proof that goes with a writ and its request, with the holder key in the TPM.
    Proof(ProofArgs),
    /// Get an X.509-SVID for this runtime's holder key (the key stays in the TPM). Exit 0 issued,
    /// 1 refused, 2 error.
    Svid(SvidArgs),
    /// GET an https URL presenting this runtime's X.509-SVID (from `writ agent svid`) as the TLS
    /// client certificate, the handshake signed by the holder key inside the TPM: any mutual-TLS
    /// service that trusts writ's CA can then tell which attested runtime calls. Prints the body;
    /// exit 0 on a 2xx answer, 1 on another status, 2 on an error (a refused handshake included).
    Get(GetArgs),
    /// Have the appliance sign with one of its signing keys, as this attested runtime: a raw
    /// signature (DER) over a file's or a digest's SHA-256, or a DSSE envelope over an in-toto
    /// Statement naming the subjects' SHA-256 (writ adds its account of this runtime as the
    /// predicate). Prints the key, its kid and the log index. Exit 0 signed, 1 refused, 2 error.
    Sign(SignArgs),
    /// As the holder of a delegation writ, make the proof that lets another runtime's holder key
    /// (`--for`, its thumbprint from `writ agent status`) ask for one child writ under it.
    Consent(ConsentArgs),
    /// Fetch a writ's inclusion bundle (its `issue` record under the latest checkpoint), for a
    /// gateway that requires one; `--from-size` adds the consistency proof from the tree size
    /// the gateway last saw (`writ-gate checkpoint`).
    Inclusion(InclusionArgs),
    /// One step for agent frameworks: attest if the last appraisal is missing, refused or about
    /// to expire, ask for a writ for this exact command, make its proof in the TPM, fetch its
    /// inclusion bundle (with the consistency proof from the gateway's last checkpoint), and
    /// hand the command to `writ-gate exec` (through `sudo -u USER` with --sudo-user). The exit
    /// code is writ-gate's (0 ran, whatever the tool's own status, which writ-gate prints and
    /// spools; 1 refused; 2 error), or 1/2 if no writ was issued. With --sudo-user the run's files
    /// must be readable by that user: give --run-dir, a folder it can reach (the state folder is
    /// 0700).
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// The TPM (TCTI), else `TPM2TOOLS_TCTI`, `TCTI` or /dev/tpmrm0.
    #[arg(long)]
    tcti: Option<String>,
    /// The firmware event log (default /sys/kernel/security/tpm0/binary_bios_measurements).
    #[arg(long)]
    event_log: Option<PathBuf>,
    /// The gateway's audience.
    #[arg(long)]
    audience: String,
    /// The resource the tool is, as policy knows it (e.g. tools/build).
    #[arg(long)]
    resource: String,
    /// The gateway's configuration (as writ-gate reads it).
    #[arg(long, default_value = "/etc/writ-gate/gate.toml")]
    gate_config: PathBuf,
    /// The writ-gate binary.
    #[arg(long, default_value = "writ-gate")]
    gate: PathBuf,
    /// Run writ-gate as this user through `sudo -n -u USER` (the privilege boundary).
    #[arg(long)]
    sudo_user: Option<String>,
    /// Where the run's files go (default: the state folder); each run makes its own folder in it
    /// and removes it after.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Attest again when the EAR expires within this many seconds.
    #[arg(long, default_value_t = 30)]
    fresh_for: i64,
    /// The tool's name in the gateway's manifest.
    #[arg(long)]
    tool: String,
    /// The command's arguments after the tool name.
    #[arg(last = true)]
    argv: Vec<String>,
}

#[derive(Debug, Args)]
pub struct InclusionArgs {
    #[command(flatten)]
    common: Common,
    /// The writ (compact JWS).
    #[arg(long)]
    writ: PathBuf,
    /// The tree size the gateway last saw.
    #[arg(long)]
    from_size: Option<u64>,
    /// Where to write the bundle (JSON).
    #[arg(long)]
    out: PathBuf,
    /// Also print it as the `Writ-Inclusion` header's value (base64url).
    #[arg(long)]
    header: bool,
}

#[derive(Debug, Args)]
pub struct SvidArgs {
    #[command(flatten)]
    common: Common,
    /// The TPM (TCTI), else `TPM2TOOLS_TCTI`, `TCTI` or /dev/tpmrm0.
    #[arg(long)]
    tcti: Option<String>,
    /// Where to write the certificate (PEM).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    #[command(flatten)]
    common: Common,
    /// The TPM (TCTI), else `TPM2TOOLS_TCTI`, `TCTI` or /dev/tpmrm0.
    #[arg(long)]
    tcti: Option<String>,
    /// The signing key's name.
    #[arg(long)]
    key: String,
    /// A raw signature over this digest (`sha256:<hex>`).
    #[arg(long)]
    digest: Option<String>,
    /// A raw signature over this file's SHA-256.
    #[arg(long)]
    file: Option<PathBuf>,
    /// A DSSE envelope naming this file (its path as given, and its SHA-256). Repeatable.
    #[arg(long = "subject")]
    subjects: Vec<PathBuf>,
    /// Where to write the signature (DER) or the envelope (JSON).
    #[arg(long)]
    out: PathBuf,
    /// Also fetch the signature's inclusion bundle (its `sign` record under a checkpoint) into
    /// this file, for `writ verify-signature --inclusion`.
    #[arg(long)]
    inclusion: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    common: Common,
    /// The TPM (TCTI), else `TPM2TOOLS_TCTI`, `TCTI` or /dev/tpmrm0.
    #[arg(long)]
    tcti: Option<String>,
    /// The URL (https only).
    #[arg(long)]
    url: String,
    /// The runtime's SVID (PEM, from `writ agent svid`).
    #[arg(long)]
    svid: PathBuf,
    /// The CA certificates (PEM) the server's certificate must chain to.
    #[arg(long)]
    ca: PathBuf,
    /// Seconds for each read and write.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

#[derive(Debug, Args)]
pub struct ConsentArgs {
    #[command(flatten)]
    common: Common,
    /// The TPM (TCTI), else `TPM2TOOLS_TCTI`, `TCTI` or /dev/tpmrm0.
    #[arg(long)]
    tcti: Option<String>,
    /// The delegation writ this runtime holds.
    #[arg(long)]
    parent: PathBuf,
    /// The requester's holder key thumbprint (its `holder_jkt`).
    #[arg(long = "for")]
    holder: String,
    /// The request consented to, exactly as the requester will send it (`writ agent request
    /// ... --parent FILE --dry-run` prints it).
    #[arg(long)]
    request: PathBuf,
}

/// The request a writ is for: a command (`--tool NAME -- ARGS...`) or an HTTP request
/// (`--http METHOD --url URL [--content-type T] [--body FILE]`).
#[derive(Debug, Clone, Args)]
pub struct RequestSpec {
    /// The tool's name in the gateway's manifest.
    #[arg(long, conflicts_with = "http")]
    tool: Option<String>,
    /// The HTTP method.
    #[arg(long, requires = "url")]
    http: Option<String>,
    /// The absolute URL (the gateway's public origin, path and query).
    #[arg(long)]
    url: Option<String>,
    /// The Content-Type of the body.
    #[arg(long, default_value = "")]
    content_type: String,
    /// The body (default: empty).
    #[arg(long)]
    body: Option<PathBuf>,
    /// The command's arguments after the tool name.
    #[arg(last = true)]
    argv: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RequestArgs {
    #[command(flatten)]
    common: Common,
    /// The TPM (TCTI), else `TPM2TOOLS_TCTI`, `TCTI` or /dev/tpmrm0.
    #[arg(long)]
    tcti: Option<String>,
    /// The action's name (e.g. `exec`); with --scope, each action delegated (repeat).
    #[arg(long, required = true)]
    action: Vec<String>,
    /// The resource it acts on; with --scope, each resource prefix delegated (repeat).
    #[arg(long, required = true)]
    resource: Vec<String>,
    /// The gateway deployment that will run it (its SPIFFE ID or configured audience); with
    /// --scope, each audience delegated (repeat).
    #[arg(long, required = true)]
    audience: Vec<String>,
    /// Ask for a delegation writ for the scope given by --action, --resource and --audience,
    /// instead of an execution writ.
    #[arg(long)]
    scope: bool,
    /// With --scope: how deep the lineage below the root may go.
    #[arg(long, default_value_t = 1, requires = "scope")]
    max_depth: u32,
    /// Ask under this delegation writ (its holder consents: this runtime's own holder key if it
    /// holds it, else --parent-proof).
    #[arg(long)]
    parent: Option<PathBuf>,
    /// The parent holder's consent (writ agent consent --for <this holder>), when another
    /// runtime holds the parent.
    #[arg(long, requires = "parent")]
    parent_proof: Option<PathBuf>,
    /// The lifetime to ask for, seconds (default: the policy's, within the parent's).
    #[arg(long)]
    lifetime: Option<i64>,
    /// Print the request's body (without proofs) and stop: what the parent's holder consents
    /// to with `writ agent consent --request`.
    #[arg(long)]
    dry_run: bool,
    /// Write the writ to this file (0600) instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The issuance summary on standard error (for `writ agent run`).
    #[arg(skip)]
    quiet: bool,
    #[command(flatten)]
    spec: RequestSpec,
}

#[derive(Debug, Args)]
pub struct ProofArgs {
    #[command(flatten)]
    common: Common,
    /// The TPM (TCTI), else `TPM2TOOLS_TCTI`, `TCTI` or /dev/tpmrm0.
    #[arg(long)]
    tcti: Option<String>,
    /// The writ the proof goes with.
    #[arg(long)]
    writ: PathBuf,
    #[command(flatten)]
    spec: RequestSpec,
}

#[derive(Debug, Args)]
pub struct Attest {
    #[command(flatten)]
    common: Common,
    /// The TPM (TCTI), else `TPM2TOOLS_TCTI`, `TCTI` or /dev/tpmrm0.
    #[arg(long)]
    tcti: Option<String>,
    /// The firmware event log (default /sys/kernel/security/tpm0/binary_bios_measurements).
    #[arg(long)]
    event_log: Option<PathBuf>,
    /// Attest again this often (e.g. `60s`, `5m`) until stopped, keeping the runtime's state
    /// fresh; a failed round is reported and the next one still runs.
    #[arg(long, value_parser = parse_every)]
    every: Option<std::time::Duration>,
    /// The appraisal on standard error (for `writ agent run`).
    #[arg(skip)]
    quiet: bool,
}

/// `30`, `30s`, `5m`, `1h`: 1 s to 24 h.
fn parse_every(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected e.g. 60s, 5m, 1h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{s:?}: the unit is s, m or h")),
    };
    if !(1..=86_400).contains(&secs) {
        return Err(format!("{s:?}: from 1 s to 24 h"));
    }
    Ok(std::time::Duration::from_secs(secs))
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

/// A TPM-wrapped key blob kept in the state folder (the AK, a holder key), if there is one.
fn load_blob(path: &Path) -> Result<Option<KeyBlob>, String> {
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

/// Why the agent stopped: the appliance refused (exit 1), or something failed (exit 2).
#[derive(Debug)]
pub enum Failure {
    /// A refusal.
    Refused(String),
    /// An error.
    Error(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::Error(e)
    }
}

impl From<&str> for Failure {
    fn from(e: &str) -> Self {
        Failure::Error(e.to_string())
    }
}

impl Failure {
    /// The exit code: 1 refused, 2 error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Refused(_) => 1,
            Failure::Error(_) => 2,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(e) | Failure::Error(e) => f.write_str(e),
        }
    }
}

fn failure(e: ClientError) -> Failure {
    match e {
        ClientError::Refused { status, .. } if status != 503 && status < 500 => {
            Failure::Refused(refused(e))
        }
        other => Failure::Error(refused(other)),
    }
}

pub fn run(cmd: AgentCommand) -> Result<(), Failure> {
    match cmd {
        AgentCommand::Enroll(a) => Ok(enroll(&a)?),
        AgentCommand::Status(a) => Ok(status(&a.common.state)?),
        AgentCommand::Request(a) => request(&a),
        AgentCommand::Svid(a) => svid(&a),
        AgentCommand::Get(a) => get(&a),
        AgentCommand::Sign(a) => sign(&a),
        AgentCommand::Inclusion(a) => inclusion(&a),
        AgentCommand::Run(a) => run_command(&a),
        AgentCommand::Proof(a) => {
            let writ = std::fs::read_to_string(&a.writ)
                .map_err(|e| format!("{}: {e}", a.writ.display()))?;
            let proof = request_proof(a.tcti.as_deref(), &a.common.state, writ.trim(), &a.spec)?;
            println!("{proof}");
            Ok(())
        }
        AgentCommand::Consent(a) => {
            let parent = std::fs::read_to_string(&a.parent)
                .map_err(|e| format!("{}: {e}", a.parent.display()))?;
            let asked: writ::appliance::WritRequest = serde_json::from_slice(
                &std::fs::read(&a.request)
                    .map_err(|e| format!("--request {}: {e}", a.request.display()))?,
            )
            .map_err(|e| format!("--request {}: {e}", a.request.display()))?;
            if asked.parent.as_deref() != Some(parent.trim()) {
                return Err("the request is not under this parent writ".into());
            }
            let what = match (
                &asked.scope,
                &asked.action,
                &asked.resource,
                &asked.audience,
            ) {
                (Some(s), ..) => format!(
                    "a delegation writ for {} on {} for {} (max depth {})",
                    s.actions.join(","),
                    s.resources.join(","),
                    s.audiences.join(","),
                    s.max_depth
                ),
                (None, Some(a), Some(r), Some(u)) => format!(
                    "an execution writ for {a} on {r} for {u} (req {})",
                    asked.req.as_deref().unwrap_or("?")
                ),
                _ => return Err("the request asks for no writ".into()),
            };
            step(&format!(
                "consenting to holder {} asking for {what}, once",
                a.holder
            ));
            let nonce = writ::appliance::consent_nonce(&a.holder, &asked)?;
            let client = client_of(&a.common.state)?;
            let tpm = Attester::open(a.tcti.as_deref()).map_err(|e| format!("TPM: {e}"))?;
            let htu = format!("{}/v1/writs", client.base());
            let proof = holder_proof(
                &tpm,
                &a.common.state,
                "POST",
                &htu,
                parent.trim(),
                Some(&nonce),
            )?;
            println!("{proof}");
            Ok(())
        }
        AgentCommand::Attest(a) => match a.every {
            None => attest(&a),
            Some(every) => loop {
                if let Err(e) = attest(&a) {
                    eprintln!("writ agent: attestation failed: {e}");
                }
                std::thread::sleep(every);
            },
        },
    }
}

fn spec_body(spec: &RequestSpec) -> Result<Vec<u8>, String> {
    match &spec.body {
        Some(p) => std::fs::read(p).map_err(|e| format!("--body {}: {e}", p.display())),
        None => Ok(Vec::new()),
    }
}

impl RequestSpec {
    /// The request, as the shared digest function reads it.
    fn request<'a>(
        &'a self,
        body: &'a [u8],
    ) -> Result<writ_attestation::writ::request::Request<'a>, String> {
        use writ_attestation::writ::request::Request;
        match (&self.tool, &self.http, &self.url) {
            (Some(tool), None, None) => Ok(Request::Exec {
                tool,
                argv: &self.argv,
            }),
            (None, Some(method), Some(url)) if self.argv.is_empty() => Ok(Request::Http {
                method,
                url,
                content_type: &self.content_type,
                body,
            }),
            _ => Err("give --tool NAME -- ARGS..., or --http METHOD --url URL".into()),
        }
    }
}

/// The holder key the last attestation certified, loaded in the TPM, and its JWK.
fn certified_holder<'a>(
    tpm: &'a Attester,
    state: &Path,
) -> Result<
    (
        writ_hsm::tpm::attester::HolderSigner<'a>,
        writ_attestation::jwk::EcJwk,
    ),
    String,
> {
    let last = read_json(
        &state.join("last.json"),
        " (attest first: writ agent attest)",
    )?;
    let jkt = last
        .get("holder_jkt")
        .and_then(Value::as_str)
        .ok_or("the last attestation was refused: attest again")?;
    let auth = std::fs::read(state.join("holder.auth")).map_err(|e| format!("holder.auth: {e}"))?;
    let bound: Option<writ_hsm::tpm::attester::PcrSelection> = last
        .get("holder_selection")
        .and_then(Value::as_str)
        .map(str::parse)
        .transpose()
        .map_err(|e| format!("last.json: {e}"))?;
    let file = if bound.is_some() {
        "holder-bound.json"
    } else {
        "holder.json"
    };
    let blob = load_blob(&state.join(file))?.ok_or("no holder key: attest first")?;
    let public = writ_attestation::tpm::public::Public::from_tpmt(&blob.public)
        .map_err(|e| format!("{file}: {e}"))?;
    let writ_attestation::tpm::public::KeyParams::Ecc { x, y, .. } = public.params() else {
        return Err(format!("{file}: not an ECC key"));
    };
    let jwk =
        writ_attestation::jwk::EcJwk::from_coordinates(x, y).map_err(|e| format!("{file}: {e}"))?;
    if jwk.thumbprint() != jkt {
        return Err(
            "the holder key is not the one the last attestation certified: attest again".into(),
        );
    }
    let key = tpm
        .load_holder_key(&blob, Some(&auth))
        .map_err(|e| format!("holder key: {e}"))?;
    Ok((
        writ_hsm::tpm::attester::HolderSigner { tpm, key, bound },
        jwk,
    ))
}

/// A DPoP proof by the holder key of the last attestation for (`htm`, `htu`) with `token`.
fn holder_proof(
    tpm: &Attester,
    state: &Path,
    htm: &str,
    htu: &str,
    token: &str,
    nonce: Option<&str>,
) -> Result<String, String> {
    let (signer, jwk) = certified_holder(tpm, state)?;
    let mut jti = [0u8; 16];
    getrandom::fill(&mut jti).map_err(|e| format!("random: {e}"))?;
    let claims = writ_attestation::writ::dpop::ProofClaims {
        jti: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(jti),
        iat: now_s(),
        htm: htm.to_string(),
        htu: htu.to_string(),
        ath: writ_attestation::writ::dpop::ath(token),
        nonce: nonce.map(str::to_string),
    };
    writ_attestation::writ::dpop::create(&signer, &jwk, &claims)
        .map_err(|e| format!("the proof: {}", e.detail))
}

/// `writ agent svid`: a PKCS#10 request signed by the holder key in the TPM, sent with the EAR;
/// the X.509-SVID written to `out` (the key stays in the TPM).
fn svid(a: &SvidArgs) -> Result<(), Failure> {
    use x509_cert::builder::{Builder, RequestBuilder};
    use x509_cert::der::Encode;
    let state = &a.common.state;
    let (_, ear) = current_ear(state)?;
    let client = client_of(state)?;
    let tpm = Attester::open(a.tcti.as_deref()).map_err(|e| format!("TPM: {e}"))?;
    let (signer, jwk) = certified_holder(&tpm, state)?;
    let public = jwk
        .verifying_key()
        .map_err(|e| format!("the holder key: {e}"))?;
    let keypair = writ_hsm::tpm::attester::HolderKeypair { signer, public };
    // The appliance takes nothing from the request but its key: the subject is a label.
    let subject: x509_cert::name::Name = "O=writ runtime"
        .parse()
        .map_err(|e| format!("subject: {e}"))?;
    let csr = RequestBuilder::new(subject)
        .and_then(|b| b.build::<_, p256::ecdsa::DerSignature>(&keypair))
        .map_err(|e| format!("the certificate request: {e}"))?
        .to_der()
        .map_err(|e| format!("the certificate request: {e}"))?;
    let htu = format!("{}/v1/svid", client.base());
    let proof = holder_proof(&tpm, state, "POST", &htu, &ear, None)?;
    let issued = client
        .call_with(
            "POST",
            "/v1/svid",
            Some(&json!({"csr": base64::engine::general_purpose::STANDARD.encode(&csr)})),
            Some(&format!("DPoP {ear}")),
            Some(&proof),
        )
        .map_err(failure)?;
    let pem = issued
        .get("certificate")
        .and_then(Value::as_str)
        .ok_or("the appliance's answer has no certificate")?;
    writ::files::write_atomically(
        &a.out,
        pem.as_bytes(),
        0o644,
        writ::files::Existing::Replace,
    )
    .map_err(|e| format!("--out {}: {e}", a.out.display()))?;
    step(&format!(
        "X.509-SVID for {} written to {} (expires at {}, log index {}); its key is the holder key in the TPM",
        issued
            .get("spiffe_id")
            .and_then(Value::as_str)
            .unwrap_or("?"),
        a.out.display(),
        issued
            .get("expires_at")
            .and_then(Value::as_i64)
            .unwrap_or(0),
        issued.get("log_index").and_then(Value::as_u64).unwrap_or(0),
    ));
    Ok(())
}

/// Every certificate (DER) of a PEM file.
fn pem_certificates(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for line in text.lines().map(str::trim) {
        match (line, &mut body) {
            ("-----BEGIN CERTIFICATE-----", None) => body = Some(String::new()),
            ("-----END CERTIFICATE-----", Some(b)) => {
                out.push(
                    base64::engine::general_purpose::STANDARD
                        .decode(b.as_bytes())
                        .map_err(|_| format!("{}: a certificate is not base64", path.display()))?,
                );
                body = None;
            }
            (l, Some(b)) => b.push_str(l),
            _ => {}
        }
    }
    if out.is_empty() {
        return Err(format!("{}: no certificate (PEM)", path.display()));
    }
    Ok(out)
}

/// `writ agent get` (see [`AgentCommand::Get`]).
fn get(a: &GetArgs) -> Result<(), Failure> {
    let svid = pem_certificates(&a.svid)?
        .into_iter()
        .next()
        .ok_or("--svid: no certificate")?;
    // The SVID must be for the holder key the last attestation certified (the TPM would sign,
    // and the server refuse, otherwise: said here, plainly).
    let tpm = Attester::open(a.tcti.as_deref()).map_err(|e| format!("TPM: {e}"))?;
    let (signer, jwk) = certified_holder(&tpm, &a.common.state)?;
    let spki_key = {
        use x509_cert::der::{Decode, Encode};
        let cert = x509_cert::Certificate::from_der(&svid).map_err(|e| format!("--svid: {e}"))?;
        let spki = cert
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|e| format!("--svid: {e}"))?;
        use p256::pkcs8::DecodePublicKey;
        p256::ecdsa::VerifyingKey::from_public_key_der(&spki)
            .map(|k| writ_attestation::jwk::EcJwk::from_verifying_key(&k))
            .map_err(|e| format!("--svid: its key: {e}"))?
    };
    if spki_key != jwk {
        return Err(
            "--svid is not for the holder key of the last attestation: run writ agent svid again"
                .into(),
        );
    }
    let writ_hsm::tpm::attester::HolderSigner { key, bound, .. } = signer;
    let answer = crate::holder_tls::get(
        &a.url,
        &pem_certificates(&a.ca)?,
        svid,
        tpm,
        key,
        bound,
        std::time::Duration::from_secs(a.timeout),
    )?;
    std::io::Write::write_all(&mut std::io::stdout(), &answer.body)
        .map_err(|e| format!("stdout: {e}"))?;
    let ok = answer
        .status
        .split_whitespace()
        .nth(1)
        .is_some_and(|c| c.starts_with('2'));
    if ok {
        Ok(())
    } else {
        Err(Failure::Refused(format!(
            "the server answered {}",
            answer.status
        )))
    }
}

/// The oldest trust bundle the agent uses (seconds since it was issued), as gateways' default.
const MAX_BUNDLE_AGE_S: i64 = 86_400;

/// The appliance's trust bundle, kept in the state folder (`bundle.json`): fetched over the pinned
/// TLS when the kept one is older than its refresh hint (or about to expire), and installed only if
/// it parses strictly, is of the kept one's trust domain, is neither expired nor older than
/// [`MAX_BUNDLE_AGE_S`], and its `spiffe_sequence` is not below the kept one's (`bundle_rollback`).
/// A failed refresh keeps using the kept bundle while it is valid. `force`: fetch now (a writ by a
/// key the kept bundle does not know: the appliance may have rotated its issuer key since).
fn trust_bundle(
    state: &Path,
    client: &Client,
    force: bool,
) -> Result<writ_attestation::writ::bundle::TrustBundle, String> {
    use writ_attestation::writ::bundle::TrustBundle;
    let path = state.join("bundle.json");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| format!("clock: {e}"))?
        .as_secs();
    let now = i64::try_from(now).map_err(|e| format!("clock: {e}"))?;
    let kept = match std::fs::read(&path) {
        Ok(b) => Some(TrustBundle::parse(&b).map_err(|r| {
            format!(
                "{}: {} (remove it to fetch the bundle again)",
                path.display(),
                r.detail
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let age = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| m.elapsed().ok())
        .map_or(i64::MAX, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let usable = |b: &TrustBundle| b.check(now, MAX_BUNDLE_AGE_S, None).is_ok();
    if let Some(b) = &kept
        && !force
        && age < i64::try_from(b.refresh_hint).unwrap_or(0)
        && b.expires_at.saturating_sub(now) > 60
        && usable(b)
    {
        return Ok(b.clone());
    }
    let fetched = client
        .call("GET", "/v1/bundle", None, None)
        .map_err(|e| format!("GET /v1/bundle: {e}"))
        .and_then(|v| serde_json::to_vec_pretty(&v).map_err(|e| e.to_string()));
    let bytes = match (fetched, &kept) {
        (Ok(b), _) => b,
        (Err(_), Some(b)) if usable(b) => return Ok(b.clone()),
        (Err(e), _) => return Err(e),
    };
    let new = TrustBundle::parse(&bytes)
        .map_err(|r| format!("the appliance's trust bundle: {}", r.detail))?;
    if let Some(old) = &kept
        && old.trust_domain != new.trust_domain
    {
        return Err(format!(
            "the appliance serves trust domain {:?}, the kept bundle is for {:?}",
            new.trust_domain, old.trust_domain
        ));
    }
    new.check(now, MAX_BUNDLE_AGE_S, kept.as_ref().map(|b| b.sequence))
        .map_err(|r| format!("the appliance's trust bundle ({}): {}", r.code, r.detail))?;
    writ::files::write_atomically(&path, &bytes, 0o644, writ::files::Existing::Replace)?;
    Ok(new)
}

/// Checks that `writ` is signed by an issuer key of the appliance's trust bundle: the agent hands
/// on nothing a gateway would refuse for its signer.
fn check_issued(state: &Path, client: &Client, writ: &str) -> Result<(), String> {
    use writ_attestation::writ::bundle::Purpose;
    use writ_attestation::writ::jws::{HeaderShape, parse};
    let token = parse(writ, "writ+jwt", HeaderShape::Kid)
        .map_err(|r| format!("the appliance's writ: {}", r.detail))?;
    let kid = token.kid().unwrap_or_default();
    let mut bundle = trust_bundle(state, client, false)?;
    if bundle.key(kid, Purpose::Issuer).is_err() {
        // Perhaps a key published since the kept bundle: once more, fetched now.
        bundle = trust_bundle(state, client, true)?;
    }
    let key = bundle
        .key(kid, Purpose::Issuer)
        .map_err(|r| format!("the appliance's writ ({}): {}", r.code, r.detail))?;
    token
        .verify(writ_attestation::crypto::default_provider(), key)
        .map(|_| ())
        .map_err(|r| {
            format!(
                "the appliance's writ ({}): {} (not by the issuer key {kid:?} of its trust bundle)",
                r.code, r.detail
            )
        })
}

/// The appliance this runtime enrolled with, trusted through the pinned CA certificate.
fn client_of(state: &Path) -> Result<Client, String> {
    let identity = read_json(
        &state.join("identity.json"),
        " (not enrolled? run `writ agent enroll`)",
    )?;
    let server = identity
        .get("server")
        .and_then(Value::as_str)
        .ok_or("identity.json has no server")?
        .to_string();
    Client::new(
        &server,
        &Trust {
            fingerprint: None,
            ca_file: Some(state.join("ca.pem")),
            client_cert: None,
        },
    )
    .map_err(|e| e.to_string())
}

/// The holder's DPoP proof, made in the TPM, for the writ `token` and the request `spec` names.
fn request_proof(
    tcti: Option<&str>,
    state: &Path,
    token: &str,
    spec: &RequestSpec,
) -> Result<String, Failure> {
    let body = spec_body(spec)?;
    let req = spec.request(&body)?;
    let (htm, htu) = writ_attestation::writ::request::proof_target(&req)
        .map_err(|e| format!("the request: {}", e.detail))?;
    let tpm = Attester::open(tcti).map_err(|e| format!("TPM: {e}"))?;
    Ok(holder_proof(&tpm, state, &htm, &htu, token, None)?)
}

/// `writ agent run` (see [`AgentCommand::Run`]).
fn run_command(a: &RunArgs) -> Result<(), Failure> {
    let state = &a.common.state;
    let gate = |args: &[&std::ffi::OsStr]| {
        let mut c = match &a.sudo_user {
            Some(u) => {
                let mut c = std::process::Command::new("sudo");
                c.args(["-n", "-u", u.as_str()]).arg(&a.gate);
                c
            }
            None => std::process::Command::new(&a.gate),
        };
        c.args(args);
        c
    };
    // 1. A current appraisal, or a new one.
    let last = read_json(&state.join("last.json"), "").ok();
    let fresh = last.as_ref().is_some_and(|l| {
        l.get("ear").and_then(Value::as_str).is_some()
            && l.get("expires_at").and_then(Value::as_i64).unwrap_or(0) > now_s() + a.fresh_for
    });
    if !fresh {
        eprintln!("writ agent run: attesting (no current appraisal)");
        attest(&Attest {
            common: Common {
                state: state.clone(),
            },
            tcti: a.tcti.clone(),
            event_log: a.event_log.clone(),
            every: None,
            quiet: true,
        })?;
    }
    // 2. The writ, its proof, its inclusion bundle, in a private folder.
    let dir = RunDir(tempfile_dir(a.run_dir.as_deref().unwrap_or(state))?);
    let dir = &dir.0;
    let (writ, proof, included) = (
        dir.join("writ.jws"),
        dir.join("proof.jws"),
        dir.join("inclusion.json"),
    );
    let spec = RequestSpec {
        tool: Some(a.tool.clone()),
        http: None,
        url: None,
        content_type: String::new(),
        body: None,
        argv: a.argv.clone(),
    };
    request(&RequestArgs {
        common: Common {
            state: state.clone(),
        },
        tcti: a.tcti.clone(),
        action: vec!["exec".into()],
        resource: vec![a.resource.clone()],
        audience: vec![a.audience.clone()],
        scope: false,
        max_depth: 1,
        parent: None,
        parent_proof: None,
        lifetime: None,
        dry_run: false,
        out: Some(writ.clone()),
        quiet: true,
        spec: spec.clone(),
    })?;
    let token = std::fs::read_to_string(&writ).map_err(|e| format!("{}: {e}", writ.display()))?;
    let p = request_proof(a.tcti.as_deref(), state, token.trim(), &spec)?;
    writ::files::write_atomically(&proof, p.as_bytes(), 0o600, writ::files::Existing::Replace)
        .map_err(Failure::Error)?;
    // The gateway's last checkpoint: the consistency proof starts there.
    let seen = gate(&[
        "checkpoint".as_ref(),
        "--config".as_ref(),
        a.gate_config.as_os_str(),
    ])
    .output()
    .map_err(|e| format!("{}: {e}", a.gate.display()))?;
    let from_size = serde_json::from_slice::<Value>(&seen.stdout)
        .ok()
        .and_then(|v| v.get("size").and_then(Value::as_u64));
    inclusion(&InclusionArgs {
        common: Common {
            state: state.clone(),
        },
        writ: writ.clone(),
        from_size,
        out: included.clone(),
        header: false,
    })?;
    // Under another user, the gateway must read them (see tempfile_dir).
    if a.sudo_user.is_some() {
        use std::os::unix::fs::PermissionsExt;
        for f in [&writ, &proof, &included] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644))
                .map_err(|e| format!("{}: {e}", f.display()))?;
        }
    }
    // 3. The gateway decides and runs (its exit code is ours).
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "exec".as_ref(),
        "--config".as_ref(),
        a.gate_config.as_os_str(),
        "--writ".as_ref(),
        writ.as_os_str(),
        "--proof".as_ref(),
        proof.as_os_str(),
        "--inclusion".as_ref(),
        included.as_os_str(),
        "--tool".as_ref(),
        a.tool.as_ref(),
        "--".as_ref(),
    ];
    args.extend(a.argv.iter().map(std::ffi::OsStr::new));
    let status = gate(&args)
        .status()
        .map_err(|e| format!("{}: {e}", a.gate.display()))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(1) => Err(Failure::Refused("the gateway refused the command".into())),
        _ => Err(Failure::Error(format!("writ-gate exec: {status}"))),
    }
}

/// A run's folder, removed whatever the run's outcome.
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh folder (0755) under the state folder, for one run's files (0600, or 0644 when the
/// gateway runs as another user and must read them: a writ is useless without the holder key in
/// the TPM, and its proof is single use and bound to the exact command). Removed after the run.
fn tempfile_dir(state: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).map_err(|e| format!("random: {e}"))?;
    let dir = state.join(format!("run-{}", hex::encode(r)));
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// `writ agent inclusion`: the writ's record located by its `jti`, then its inclusion bundle,
/// waiting (up to 15 s) for a checkpoint to cover it.
fn inclusion(a: &InclusionArgs) -> Result<(), Failure> {
    let writ =
        std::fs::read_to_string(&a.writ).map_err(|e| format!("{}: {e}", a.writ.display()))?;
    let u = writ_attestation::writ::jws::parse(
        writ.trim(),
        "writ+jwt",
        writ_attestation::writ::jws::HeaderShape::Kid,
    )
    .map_err(|e| format!("--writ: {}", e.detail))?;
    let claims: Value =
        serde_json::from_slice(u.unverified_payload()).map_err(|e| format!("--writ: {e}"))?;
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .filter(|j| {
            j.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .ok_or("--writ: no jti")?;
    let client = client_of(&a.common.state)?;
    let refused = |e: crate::client::ClientError| match e {
        crate::client::ClientError::Refused { .. } => Failure::Refused(e.to_string()),
        crate::client::ClientError::Transport(_) => Failure::Error(e.to_string()),
    };
    let located = client
        .call("GET", &format!("/v1/log/writs/{jti}"), None, None)
        .map_err(refused)?;
    let index = located
        .get("index")
        .and_then(Value::as_u64)
        .ok_or("the appliance did not locate the writ's record")?;
    let bundle = log_bundle(&client, index, a.from_size).map_err(refused)?;
    let text = bundle.to_string();
    std::fs::write(&a.out, &text).map_err(|e| format!("{}: {e}", a.out.display()))?;
    eprintln!(
        "inclusion bundle of writ {jti}: record {index} under tree size {}",
        bundle.get("tree_size").and_then(Value::as_u64).unwrap_or(0)
    );
    if a.header {
        use base64::Engine as _;
        println!(
            "{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text.as_bytes())
        );
    }
    Ok(())
}

/// The inclusion bundle of record `index` (with the consistency proof from `from_size`), once a
/// checkpoint covers it (waiting up to 15 s for one).
fn log_bundle(
    client: &Client,
    index: u64,
    from_size: Option<u64>,
) -> Result<Value, crate::client::ClientError> {
    let mut path = format!("/v1/log/bundle?index={index}");
    if let Some(f) = from_size {
        path.push_str(&format!("&from_size={f}"));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        match client.call("GET", &path, None, None) {
            Ok(b) => return Ok(b),
            Err(crate::client::ClientError::Refused { code, .. })
                if code == "not_yet_checkpointed" && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            Err(e) => return Err(e),
        }
    }
}

/// `writ agent sign` (see [`AgentCommand::Sign`]).
fn sign(a: &SignArgs) -> Result<(), Failure> {
    use sha2::Digest as _;
    let state = &a.common.state;
    let file_digest = |f: &Path| -> Result<String, String> {
        let mut h = sha2::Sha256::new();
        let mut r = std::fs::File::open(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = std::io::Read::read(&mut r, &mut buf)
                .map_err(|e| format!("{}: {e}", f.display()))?;
            let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
                break;
            };
            h.update(chunk);
        }
        Ok(hex::encode(h.finalize()))
    };
    let body = match (&a.digest, &a.file, a.subjects.is_empty()) {
        (Some(d), None, true) => json!({"digest": d}),
        (None, Some(f), true) => json!({"digest": format!("sha256:{}", file_digest(f)?)}),
        (None, None, false) => {
            let mut subjects = Vec::new();
            for f in &a.subjects {
                let name = f
                    .to_str()
                    .ok_or_else(|| format!("{}: not a UTF-8 name", f.display()))?;
                subjects.push(json!({"name": name, "digest": {"sha256": file_digest(f)?}}));
            }
            json!({"subjects": subjects})
        }
        _ => {
            return Err(
                "give --digest sha256:HEX or --file FILE (a raw signature), or --subject FILE... (a DSSE envelope)"
                    .into(),
            );
        }
    };
    if !writ_attestation::writ::bundle::valid_key_name(&a.key) {
        return Err(format!("--key {:?}: a key name is 1 to 64 of a-z 0-9 - _ .", a.key).into());
    }
    let (_, ear) = current_ear(state)?;
    let client = client_of(state)?;
    let tpm = Attester::open(a.tcti.as_deref()).map_err(|e| format!("TPM: {e}"))?;
    let path = format!("/v1/sign/{}", a.key);
    let htu = format!("{}{path}", client.base());
    let proof = holder_proof(&tpm, state, "POST", &htu, &ear, None)?;
    let signed = client
        .call_with(
            "POST",
            &path,
            Some(&body),
            Some(&format!("DPoP {ear}")),
            Some(&proof),
        )
        .map_err(failure)?;
    let out: Vec<u8> = match (signed.get("signature"), signed.get("envelope")) {
        (Some(Value::String(sig)), None) => base64::engine::general_purpose::STANDARD
            .decode(sig.as_bytes())
            .map_err(|_| "the appliance's signature is not base64")?,
        (None, Some(env)) => format!("{env}\n").into_bytes(),
        _ => return Err("the appliance's answer has neither a signature nor an envelope".into()),
    };
    writ::files::write_atomically(&a.out, &out, 0o644, writ::files::Existing::Replace)
        .map_err(|e| format!("--out {}: {e}", a.out.display()))?;
    let index = signed
        .get("log_index")
        .and_then(Value::as_u64)
        .ok_or("the appliance's answer has no log index")?;
    if let Some(p) = &a.inclusion {
        let bundle = log_bundle(&client, index, None).map_err(failure)?;
        writ::files::write_atomically(
            p,
            format!("{bundle}\n").as_bytes(),
            0o644,
            writ::files::Existing::Replace,
        )
        .map_err(|e| format!("--inclusion {}: {e}", p.display()))?;
    }
    step(&format!(
        "signed by {:?}: written to {} (log index {index})",
        a.key,
        a.out.display()
    ));
    println!(
        "{}",
        json!({"key": a.key, "kid": signed.get("kid"), "log_index": index, "out": a.out})
    );
    Ok(())
}

/// The holder key thumbprint (`cnf.jkt`) a writ names, read without verifying it (only to
/// choose which key proves for it; the appliance verifies).
fn writ_holder(writ: &str) -> Result<String, String> {
    let u = writ_attestation::writ::jws::parse(
        writ,
        "writ+jwt",
        writ_attestation::writ::jws::HeaderShape::Kid,
    )
    .map_err(|e| format!("the parent writ: {}", e.detail))?;
    let v: Value = serde_json::from_slice(u.unverified_payload())
        .map_err(|e| format!("the parent writ: {e}"))?;
    v.get("cnf")
        .and_then(|c| c.get("jkt"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| "the parent writ names no holder key".to_string())
}

/// The last attestation (`last.json`) and its EAR, refused if it was refused or has expired.
fn current_ear(state: &Path) -> Result<(Value, String), String> {
    let last = read_json(
        &state.join("last.json"),
        " (attest first: writ agent attest)",
    )?;
    let ear = last
        .get("ear")
        .and_then(Value::as_str)
        .ok_or("the last attestation was refused: attest again")?
        .to_string();
    if last.get("expires_at").and_then(Value::as_i64).unwrap_or(0) <= now_s() {
        return Err("the last attestation's EAR has expired: attest again (or run writ agent attest --every)".into());
    }
    Ok((last, ear))
}

fn request(a: &RequestArgs) -> Result<(), Failure> {
    let state = &a.common.state;
    let (last, ear) = current_ear(state)?;
    let own = last
        .get("holder_jkt")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let client = client_of(state)?;
    let tpm = Attester::open(a.tcti.as_deref()).map_err(|e| format!("TPM: {e}"))?;
    let htu = format!("{}/v1/writs", client.base());
    let one = |v: &[String], what: &str| match v {
        [x] => Ok(x.clone()),
        _ => Err(format!(
            "an execution writ names one --{what} (several only with --scope)"
        )),
    };
    let (mut ask, shown_what) = if a.scope {
        if a.spec.tool.is_some() || a.spec.http.is_some() {
            return Err(
                "a delegation writ (--scope) is for no one request: drop --tool/--http".into(),
            );
        }
        (
            json!({"scope": {
                "actions": a.action, "resources": a.resource, "audiences": a.audience,
                "max_depth": a.max_depth,
            }}),
            format!(
                "delegation of {} on {}",
                a.action.join(","),
                a.resource.join(",")
            ),
        )
    } else {
        let body = spec_body(&a.spec)?;
        let req = a.spec.request(&body)?;
        let digest = writ_attestation::writ::request::digest(&req)
            .map_err(|e| format!("the request: {}", e.detail))?;
        let (action, resource) = (one(&a.action, "action")?, one(&a.resource, "resource")?);
        (
            json!({
                "action": action, "resource": resource,
                "audience": one(&a.audience, "audience")?, "req": digest,
            }),
            format!("{action} {resource} (req {digest})"),
        )
    };
    let Some(o) = ask.as_object_mut() else {
        return Err("the request is not an object".into());
    };
    if let Some(l) = a.lifetime {
        o.insert("lifetime_s".into(), json!(l));
    }
    if let Some(p) = &a.parent {
        let parent = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let parent = parent.trim().to_string();
        o.insert("parent".into(), json!(parent));
        if a.dry_run {
            println!("{ask}");
            return Ok(());
        }
        let consent = match &a.parent_proof {
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| format!("{}: {e}", f.display()))?
                .trim()
                .to_string(),
            None if writ_holder(&parent)? == own => {
                let asked: writ::appliance::WritRequest =
                    serde_json::from_value(ask.clone()).map_err(|e| format!("the request: {e}"))?;
                let nonce = writ::appliance::consent_nonce(&own, &asked)?;
                holder_proof(&tpm, state, "POST", &htu, &parent, Some(&nonce))?
            }
            None => {
                return Err(format!(
                    "another runtime holds the parent writ: give it this request (--dry-run prints it) for `writ agent consent --parent <writ> --for {own} --request <file>`, and pass its answer as --parent-proof"
                )
                .into());
            }
        };
        if let Some(o) = ask.as_object_mut() {
            o.insert("parent_proof".into(), json!(consent));
        }
    } else if a.dry_run {
        println!("{ask}");
        return Ok(());
    }
    let proof = holder_proof(&tpm, state, "POST", &htu, &ear, None)?;
    let issued = client
        .call_with(
            "POST",
            "/v1/writs",
            Some(&ask),
            Some(&format!("DPoP {ear}")),
            Some(&proof),
        )
        .map_err(failure)?;
    let writ = issued
        .get("writ")
        .and_then(Value::as_str)
        .ok_or("the appliance's answer has no writ")?;
    check_issued(state, &client, writ)?;
    match &a.out {
        Some(p) => {
            write_private(p, format!("{writ}\n").as_bytes())?;
            step(&format!(
                "writ for {shown_what} written to {} (log index {})",
                p.display(),
                issued.get("log_index").and_then(Value::as_u64).unwrap_or(0)
            ));
            let mut shown = issued.clone();
            if let Some(o) = shown.as_object_mut() {
                o.remove("writ");
                if let Some(d) = ask.get("req") {
                    o.insert("req".into(), d.clone());
                }
            }
            // `writ agent run` keeps standard output for the tool's.
            if a.quiet {
                eprintln!("{shown}");
            } else {
                println!("{shown}");
            }
        }
        None => println!("{writ}"),
    }
    Ok(())
}

fn read_json(path: &Path, hint: &str) -> Result<Value, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}{hint}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0)
}

/// Identity and the last attestation, with its age.
fn status(state: &Path) -> Result<(), String> {
    let identity = read_json(
        &state.join("identity.json"),
        " (not enrolled? run `writ agent enroll`)",
    )?;
    let mut out = json!({ "identity": identity });
    match read_json(&state.join("last.json"), "") {
        Ok(mut last) => {
            if let Some(at) = last.get("at").and_then(Value::as_i64)
                && let Some(o) = last.as_object_mut()
            {
                o.insert("age_s".into(), json!(now_s().saturating_sub(at)));
                if let Some(exp) = o.get("expires_at").and_then(Value::as_i64) {
                    o.insert("ear_valid".into(), json!(exp > now_s()));
                }
                // The token itself stays in the file.
                o.remove("ear");
            }
            if let Some(o) = out.as_object_mut() {
                o.insert("last_attestation".into(), last);
            }
        }
        Err(_) => {
            if let Some(o) = out.as_object_mut() {
                o.insert("last_attestation".into(), Value::Null);
            }
        }
    }
    println!("{out:#}");
    Ok(())
}

/// The holder key and its authValue: made once and kept; when the appliance's profile asks for
/// a key bound to the PCR values (`bound`), one bound to `selection`'s current values, made again
/// whenever they moved (after a reboot into another state the old key can no longer sign).
fn holder_key(
    tpm: &Attester,
    state: &Path,
    bound: Option<&writ_hsm::tpm::attester::PcrSelection>,
) -> Result<(KeyBlob, zeroize::Zeroizing<Vec<u8>>), String> {
    let auth_path = state.join("holder.auth");
    let key_path = state.join(if bound.is_some() {
        "holder-bound.json"
    } else {
        "holder.json"
    });
    let auth = match std::fs::read(&auth_path) {
        Ok(a) => zeroize::Zeroizing::new(a),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // 32 random bytes: an authValue is at most the size of the key's nameAlg digest.
            let mut raw = zeroize::Zeroizing::new(vec![0u8; 32]);
            getrandom::fill(raw.as_mut_slice()).map_err(|e| format!("random: {e}"))?;
            write_private(&auth_path, raw.as_slice())?;
            raw
        }
        Err(e) => {
            return Err(format!(
                "{}: {e} (the holder key's authValue)",
                auth_path.display()
            ));
        }
    };
    if let Some(blob) = load_blob(&key_path)? {
        let current = match bound {
            None => true,
            Some(sel) => {
                let values = tpm.read_pcrs(sel).map_err(|e| format!("PCR read: {e}"))?;
                let expected = writ_attestation::tpm::policy::pcr_and_auth_value(sel, &values)
                    .map_err(|e| format!("policy: {e}"))?;
                writ_attestation::tpm::public::Public::from_tpmt(&blob.public)
                    .is_ok_and(|p| p.auth_policy() == expected.as_slice())
            }
        };
        if current {
            return Ok((blob, auth));
        }
        step("the PCRs moved since the holder key was made: making a new one bound to them");
    }
    let blob = match bound {
        None => {
            step("creating the holder key (ECDSA P-256 signing key, fixed to this TPM)");
            tpm.create_holder_key(Some(auth.as_slice()))
        }
        Some(sel) => {
            step(&format!(
                "creating the holder key bound to the current values of {sel} (PolicyPCR)"
            ));
            tpm.create_holder_key_bound(auth.as_slice(), sel)
        }
    }
    .map_err(|e| format!("holder key: {e}"))?;
    let doc = json!({
        "public": STANDARD.encode(&blob.public),
        "private": STANDARD.encode(&blob.private),
        "name": STANDARD.encode(&blob.name),
    });
    write_private(&key_path, doc.to_string().as_bytes())?;
    Ok((blob, auth))
}

fn attest(a: &Attest) -> Result<(), Failure> {
    let state = &a.common.state;
    let identity = read_json(
        &state.join("identity.json"),
        " (not enrolled? run `writ agent enroll`)",
    )?;
    let text = |k: &str| -> Result<String, String> {
        identity
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("identity.json has no {k}"))
    };
    let (server, name) = (text("server")?, text("name")?);
    let ak =
        load_blob(&state.join("ak.json"))?.ok_or("no AK in the state folder (enroll first)")?;
    let client = Client::new(
        &server,
        &Trust {
            fingerprint: None,
            ca_file: Some(state.join("ca.pem")),
            client_cert: None,
        },
    )
    .map_err(|e| e.to_string())?;
    let tpm = Attester::open(a.tcti.as_deref()).map_err(|e| format!("TPM: {e}"))?;
    step("asking the appliance for a nonce");
    let n = client
        .call(
            "POST",
            "/v1/attest/nonce",
            Some(&json!({ "name": name })),
            None,
        )
        .map_err(failure)?;
    let nonce_b64 = n
        .get("nonce")
        .and_then(Value::as_str)
        .ok_or("the appliance's answer has no nonce")?
        .to_string();
    let nonce = STANDARD
        .decode(&nonce_b64)
        .map_err(|_| "the appliance's nonce is not base64".to_string())?;
    let selection: writ_hsm::tpm::attester::PcrSelection = n
        .get("selection")
        .and_then(Value::as_str)
        .ok_or("the appliance's answer has no selection")?
        .parse()
        .map_err(|e| format!("the appliance's selection: {e}"))?;
    let bound = n
        .get("holder_pcr_policy")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (holder, holder_auth) = holder_key(&tpm, state, bound.then_some(&selection))?;
    let holder_selection = bound.then(|| selection.to_string());
    step(&format!("quoting {selection}"));
    let loaded_ak = tpm.load_ak(&ak).map_err(|e| format!("AK: {e}"))?;
    let quote = tpm
        .quote(&loaded_ak, &nonce, &selection)
        .map_err(|e| format!("quote: {e}"))?;
    let pcrs = tpm
        .read_pcrs(&selection)
        .map_err(|e| format!("PCR read: {e}"))?;
    let log = writ_hsm::tpm::attester::read_event_log(a.event_log.as_deref())
        .map_err(|e| format!("{e}"))?;
    let loaded_holder = tpm
        .load_holder_key(&holder, Some(holder_auth.as_slice()))
        .map_err(|e| format!("holder key: {e}"))?;
    let certify = tpm
        .certify(&loaded_ak, &loaded_holder, &nonce)
        .map_err(|e| format!("certify: {e}"))?;
    let mut values = serde_json::Map::new();
    for (bank, index, v) in pcrs.iter() {
        let entry = values
            .entry(bank.name().to_string())
            .or_insert_with(|| json!({}));
        if let Some(o) = entry.as_object_mut() {
            o.insert(index.to_string(), json!(hex::encode(v)));
        }
    }
    let body = json!({
        "name": name,
        "nonce": nonce_b64,
        "quote": {"attest": STANDARD.encode(&quote.attest), "signature": STANDARD.encode(&quote.signature)},
        "pcrs": values,
        "event_log": STANDARD.encode(&log),
        "holder": {
            "public": STANDARD.encode(&holder.public),
            "certify": {"attest": STANDARD.encode(&certify.attest), "signature": STANDARD.encode(&certify.signature)},
        },
    });
    step("sending the evidence");
    let answer = client.call("POST", "/v1/attest", Some(&body), None);
    let last_path = state.join("last.json");
    match answer {
        Ok(mut v) => {
            if let Some(o) = v.as_object_mut() {
                o.insert("at".into(), json!(now_s()));
                if let Some(sel) = &holder_selection {
                    o.insert("holder_selection".into(), json!(sel));
                }
            }
            write_private(&last_path, format!("{v:#}\n").as_bytes())?;
            step(&format!(
                "{}: EAR token kept in {} (counters: {})",
                v.get("status").and_then(Value::as_str).unwrap_or("?"),
                last_path.display(),
                v.get("counters").and_then(Value::as_str).unwrap_or("?")
            ));
            let mut shown = v.clone();
            if let Some(o) = shown.as_object_mut() {
                o.remove("ear");
            }
            if a.quiet {
                eprintln!("{shown}");
            } else {
                println!("{shown}");
            }
            Ok(())
        }
        Err(ClientError::Refused {
            status,
            code,
            detail,
        }) => {
            let doc = json!({"at": now_s(), "status": "refused", "code": code, "detail": detail});
            write_private(&last_path, format!("{doc:#}\n").as_bytes())?;
            Err(failure(ClientError::Refused {
                status,
                code,
                detail,
            }))
        }
        Err(e) => Err(failure(e)),
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
            client_cert: None,
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
    let ak = match load_blob(&ak_path)? {
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
