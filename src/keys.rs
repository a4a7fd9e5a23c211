//! `writ keys generate` and `writ keys show`.

use std::fmt::Write as _;
use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};
use p256::pkcs8::EncodePublicKey;
use writ_attestation::jwk::EcJwk;
use writ_attestation::log::note::NoteVerifier;
use writ_hsm::{CustodyError, CustodyKey, KeyUri, OpenOptions};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate a new P-256 signing key in a PKCS#11 token or a TPM. Never overwrites a key.
    Generate {
        #[command(flatten)]
        key: KeyArgs,
        /// What the key will sign. One key serves one purpose.
        #[arg(long, value_enum)]
        purpose: Purpose,
    },
    /// Show a key's public half (PEM and JWK), its backend and the attributes that make it safe.
    Show {
        #[command(flatten)]
        key: KeyArgs,
        /// The purpose the key serves, to set the JWK's `use`.
        #[arg(long, value_enum)]
        purpose: Option<Purpose>,
    },
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The key: `pkcs11:token=T;object=O?module-path=M&pin-source=file:P` (RFC 7512) or
    /// `tpm:handle=0x81000101?tcti=T&auth-source=file:P`. See docs/keys.md.
    #[arg(long)]
    key: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Permit `soft:` keys (tests only; needs a build with the software-keys feature).
    #[arg(long)]
    allow_software_keys: bool,
    /// For a checkpoint key: the log's origin, which names the key in signed notes. The C2SP note
    /// verifier key (`<origin>+<key id>+<key>`) is then printed too.
    #[arg(long)]
    log_origin: Option<String>,
}

/// Key purposes (docs: interfaces.md, "Identities and keys").
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Purpose {
    /// Signs writs.
    Issuer,
    /// Signs attestation results (EAR).
    Ear,
    /// Signs X.509-SVIDs and the appliance's TLS certificate.
    Ca,
    /// Signs log checkpoints.
    Checkpoint,
    /// A named key of the signing service.
    Signing,
}

impl Purpose {
    fn name(self) -> &'static str {
        match self {
            Purpose::Issuer => "issuer",
            Purpose::Ear => "ear",
            Purpose::Ca => "ca",
            Purpose::Checkpoint => "checkpoint",
            Purpose::Signing => "signing",
        }
    }

    /// The JWK `use` under which the trust bundle publishes this purpose's keys. Checkpoint keys are
    /// published in the bundle's `writ.log` member, not as a JWK.
    fn jwk_use(self) -> Option<&'static str> {
        match self {
            Purpose::Issuer => Some("issuer"),
            Purpose::Ear => Some("ear"),
            Purpose::Ca => Some("x509-svid"),
            Purpose::Checkpoint => None,
            Purpose::Signing => Some("signing"),
        }
    }
}

pub fn run(cmd: KeysCommand) -> Result<(), CustodyError> {
    let (args, purpose, generate) = match cmd {
        KeysCommand::Generate { key, purpose } => (key, Some(purpose), true),
        KeysCommand::Show { key, purpose } => (key, purpose, false),
    };
    let uri: KeyUri = args.key.parse()?;
    let options = OpenOptions {
        allow_software_keys: args.allow_software_keys,
    };
    let key = if generate {
        writ_hsm::generate_key(&uri, &options)?
    } else {
        writ_hsm::open_key(&uri, &options)?
    };
    let verifier = match (&args.log_origin, purpose) {
        (Some(origin), Some(Purpose::Checkpoint) | None) => Some(
            NoteVerifier::from_spki(origin, key.public_key().spki_der())
                .map_err(|e| CustodyError::InvalidUri(format!("--log-origin: {e}")))?
                .to_string(),
        ),
        (Some(_), Some(_)) => {
            return Err(CustodyError::InvalidUri(
                "--log-origin is for checkpoint keys only".into(),
            ));
        }
        (None, _) => None,
    };
    let mut out = if args.json {
        render_json(&key, purpose, generate, verifier.as_deref())?
    } else {
        render_text(&key, purpose, generate)?
    };
    if let (Some(v), false) = (&verifier, args.json) {
        out.push_str(&format!(
            "checkpoint note verifier key (C2SP signed-note, ECDSA):\n{v}\n"
        ));
    }
    print!("{out}");
    Ok(())
}

fn public_pem(key: &Arc<dyn CustodyKey>) -> Result<String, CustodyError> {
    key.public_key()
        .verifying_key()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .map_err(|e| CustodyError::UnsupportedKey {
            key: key.uri().to_string(),
            reason: e.to_string(),
        })
}

fn render_text(
    key: &Arc<dyn CustodyKey>,
    purpose: Option<Purpose>,
    generated: bool,
) -> Result<String, CustodyError> {
    let jwk = EcJwk::from_verifying_key(key.public_key().verifying_key());
    let mut s = String::new();
    let _ = writeln!(s, "{}", if generated { "generated key" } else { "key" });
    let _ = writeln!(s, "  uri:        {}", key.uri());
    if let Some(p) = purpose {
        let _ = writeln!(s, "  purpose:    {}", p.name());
    }
    let _ = writeln!(
        s,
        "  backend:    {} ({})",
        key.backend(),
        if key.hardware_backed() {
            "hardware-backed"
        } else {
            "SOFTWARE, tests only"
        }
    );
    let _ = writeln!(
        s,
        "  algorithm:  {} (ECDSA P-256 with SHA-256)",
        key.algorithm().jws_name()
    );
    let _ = writeln!(
        s,
        "  kid:        {} (RFC 7638 thumbprint)",
        jwk.thumbprint()
    );
    let _ = writeln!(s, "  attributes:");
    for f in key.facts() {
        let _ = writeln!(s, "    {} = {}", f.name, f.value);
    }
    let _ = writeln!(s, "public key (PEM):");
    s.push_str(&public_pem(key)?);
    let _ = writeln!(s, "public key (JWK):");
    let _ = writeln!(s, "{}", jwk.to_json(purpose.and_then(Purpose::jwk_use)));
    Ok(s)
}

fn render_json(
    key: &Arc<dyn CustodyKey>,
    purpose: Option<Purpose>,
    generated: bool,
    note_verifier: Option<&str>,
) -> Result<String, CustodyError> {
    let jwk = EcJwk::from_verifying_key(key.public_key().verifying_key());
    let facts: serde_json::Map<String, serde_json::Value> = key
        .facts()
        .iter()
        .map(|f| {
            (
                f.name.to_string(),
                serde_json::Value::String(f.value.clone()),
            )
        })
        .collect();
    let v = serde_json::json!({
        "generated": generated,
        "uri": key.uri(),
        "purpose": purpose.map(Purpose::name),
        "backend": key.backend().to_string(),
        "hardware_backed": key.hardware_backed(),
        "algorithm": key.algorithm().jws_name(),
        "kid": jwk.thumbprint(),
        "attributes": facts,
        "public_key_pem": public_pem(key)?,
        "jwk": jwk.to_json(purpose.and_then(Purpose::jwk_use)),
        "note_verifier": note_verifier,
    });
    Ok(format!("{v:#}\n"))
}
