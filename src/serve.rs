//! `writ serve`: the appliance. Built so far: the decision log (store, sequencing, checkpoints)
//! and its read routes, enrollment and the admin operations, health and metrics, over TLS with
//! the `ca` key (plain HTTP on loopback only without it), configured from defaults, a TOML file,
//! the environment and flags. Attestation and issuance are not built yet (README).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use writ::appliance::{Appliance, ApplianceConfig};
use writ::config::Config;
use writ::decision_log::{DecisionLog, LogConfig};
use writ::http::{Limits, UnidentifiedLimit, appliance_router_limited, serve_behind};
use writ::store::Engine;
use writ_attestation::evidence::EkTrustStore;
use writ_hsm::{OpenOptions, open_key};

#[derive(Debug, Args)]
pub struct Serve {
    /// A TOML configuration file (deploy/writ.example.toml documents every key). Settings
    /// come from the embedded defaults, then this file, then `WRIT_*` variables, then flags.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The store: `sqlite:PATH` or a PostgreSQL connection string.
    #[arg(long)]
    store: Option<String>,
    /// The `checkpoint` key (pkcs11:, tpm: or, in tests, soft: URI).
    #[arg(long)]
    checkpoint_key: Option<String>,
    /// The log's origin (the first line of its checkpoints); default `<trust domain>/log`.
    #[arg(long)]
    origin: Option<String>,
    /// Where to listen (default 127.0.0.1:8787).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Milliseconds between checkpoints while the log grows (default 1000).
    #[arg(long)]
    checkpoint_interval_ms: Option<u64>,
    /// Seconds without a signed checkpoint after which decisions are refused (default 30; at
    /// least twice the checkpoint interval).
    #[arg(long)]
    max_checkpoint_age: Option<u64>,
    /// Permit `soft:` keys (test builds only).
    #[arg(long)]
    allow_software_keys: bool,
    /// The trust domain of the SPIFFE IDs this appliance gives (default writ.local).
    #[arg(long)]
    trust_domain: Option<String>,
    /// TPM manufacturer root and intermediate certificates (PEM files, or folders of them) that
    /// EK certificates must chain to. Repeatable; replaces the configured list.
    #[arg(long = "ek-roots")]
    ek_roots: Vec<PathBuf>,
    /// Seconds a client has to send a request's headers (and the idle time allowed between
    /// requests on one connection; default 10).
    #[arg(long)]
    header_read_timeout: Option<u64>,
    /// Unidentified refusals one address may cause per minute before it gets 429 (default 60).
    #[arg(long)]
    unidentified_per_minute: Option<u32>,
    /// The `ca` key (pkcs11: or tpm: URI): with it, TLS only, with a server certificate it
    /// signs; without it, plain HTTP on loopback only.
    #[arg(long)]
    ca_key: Option<String>,
    /// The `ear` key (pkcs11: or tpm: URI): signs attestation results; without it,
    /// attestations are answered 503.
    #[arg(long)]
    ear_key: Option<String>,
    /// The `issuer` key (pkcs11: or tpm: URI): signs writs; without it, issuance answers 503.
    #[arg(long)]
    issuer_key: Option<String>,
    /// Another `issuer` key to publish in the trust bundle without signing with it (a key being
    /// rotated in or out; docs/keys.md). Repeatable; replaces keys.issuer_published.
    #[arg(long = "publish-issuer-key")]
    publish_issuer_keys: Vec<String>,
    /// Another `ear` key to publish without signing with it. Repeatable; replaces
    /// keys.ear_published.
    #[arg(long = "publish-ear-key")]
    publish_ear_keys: Vec<String>,
    /// A named key of the signing service, `NAME=FORM:URI`, FORM `digest` (raw signatures over
    /// SHA-256 digests) or `dsse` (DSSE envelopes), URI pkcs11: or tpm:: `POST /v1/sign/NAME`
    /// signs with it (docs/signing.md). Repeatable; replaces keys.signing.
    #[arg(long = "signing-key")]
    signing_keys: Vec<String>,
    /// Seconds a nonce handed out for an attestation can be used (default 60).
    #[arg(long)]
    nonce_ttl: Option<u64>,
    /// Seconds an attestation result (EAR) is valid (default 300).
    #[arg(long)]
    ear_ttl: Option<u64>,
    /// A DNS name or IP address clients reach the appliance at (in its TLS certificate).
    /// Repeatable; replaces the configured list (default localhost, 127.0.0.1, ::1).
    #[arg(long = "tls-name")]
    tls_names: Vec<String>,
    /// A file holding the admin token (admin operations need `Authorization: Bearer <token>`).
    /// Without it, admin operations are refused.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
}

/// The configuration: defaults, file, environment, flags.
fn configure(args: &Serve) -> Result<Config, String> {
    let mut c = match &args.config {
        Some(p) => Config::from_toml(
            &std::fs::read_to_string(p).map_err(|e| format!("--config {}: {e}", p.display()))?,
        )
        .map_err(|e| format!("--config {}: {e}", p.display()))?,
        None => Config::default(),
    };
    // Non-UTF-8 variables are not ours (ours are refused if misspelt).
    c.apply_env(
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
    )?;
    if let Some(v) = &args.store {
        c.store = v.clone();
    }
    if let Some(v) = &args.checkpoint_key {
        c.keys.checkpoint = Some(v.clone());
    }
    if let Some(v) = &args.ca_key {
        c.keys.ca = Some(v.clone());
    }
    if let Some(v) = &args.ear_key {
        c.keys.ear = Some(v.clone());
    }
    if let Some(v) = &args.issuer_key {
        c.keys.issuer = Some(v.clone());
    }
    if !args.publish_issuer_keys.is_empty() {
        c.keys.issuer_published = args.publish_issuer_keys.clone();
    }
    if !args.publish_ear_keys.is_empty() {
        c.keys.ear_published = args.publish_ear_keys.clone();
    }
    if !args.signing_keys.is_empty() {
        c.keys.signing = args
            .signing_keys
            .iter()
            .map(|kv| {
                kv.split_once('=')
                    .and_then(|(n, fu)| {
                        let (form, uri) = fu.split_once(':')?;
                        Some((
                            n.to_string(),
                            writ::config::SigningKey {
                                key: uri.to_string(),
                                form: form.to_string(),
                            },
                        ))
                    })
                    .ok_or_else(|| format!("--signing-key {kv:?}: NAME=FORM:URI"))
            })
            .collect::<Result<_, _>>()?;
        if c.keys.signing.len() != args.signing_keys.len() {
            return Err("--signing-key: a name given twice".into());
        }
    }
    if let Some(v) = args.ear_ttl {
        c.attestation.ear_ttl_s = v;
    }
    if let Some(v) = args.nonce_ttl {
        c.attestation.nonce_ttl_s = v;
    }
    if !args.tls_names.is_empty() {
        c.tls.names = args.tls_names.clone();
    }
    if let Some(v) = &args.origin {
        c.log.origin = Some(v.clone());
    }
    if let Some(v) = args.listen {
        c.listen = v;
    }
    if let Some(v) = args.checkpoint_interval_ms {
        c.log.checkpoint_interval_ms = v;
    }
    if let Some(v) = args.max_checkpoint_age {
        c.log.max_checkpoint_age_s = v;
    }
    if let Some(v) = &args.trust_domain {
        c.trust_domain = v.clone();
    }
    if !args.ek_roots.is_empty() {
        c.enrollment.ek_roots = args.ek_roots.clone();
    }
    if let Some(v) = args.header_read_timeout {
        c.http.header_read_timeout_s = v;
    }
    if let Some(v) = args.unidentified_per_minute {
        c.http.unidentified_per_minute = v;
    }
    if let Some(v) = &args.admin_token_file {
        c.admin.token_file = Some(v.clone());
    }
    c.check()?;
    Ok(c)
}

/// Reads PEM certificates from files, or from every `.pem`/`.crt`/`.cer` file of folders.
fn ek_roots(paths: &[PathBuf]) -> Result<EkTrustStore, String> {
    let mut store = EkTrustStore::new();
    for path in paths {
        let files = if path.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("--ek-roots {}: {e}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .and_then(|x| x.to_str())
                        .is_some_and(|x| matches!(x, "pem" | "crt" | "cer"))
                })
                .collect();
            v.sort();
            v
        } else {
            vec![path.clone()]
        };
        let from_dir = path.is_dir();
        for f in files {
            let pem = std::fs::read_to_string(&f)
                .map_err(|e| format!("--ek-roots {}: {e}", f.display()))?;
            // In a folder, files that hold no certificate (keys, configuration) are skipped.
            if from_dir && !pem.contains("-----BEGIN CERTIFICATE-----") {
                continue;
            }
            store
                .add_pem(&pem)
                .map_err(|e| format!("--ek-roots {}: {e}", f.display()))?;
        }
    }
    Ok(store)
}

/// The admin token's digest, from a file that only its owner may read.
fn admin_token(path: &Path) -> Result<[u8; 32], String> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("--admin-token-file: {e}"))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "--admin-token-file {}: readable by others (chmod 600)",
            path.display()
        ));
    }
    let token = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| format!("--admin-token-file: {e}"))?,
    );
    let token = writ::appliance::normalize_token(&token);
    if token.len() < 16 {
        return Err("--admin-token-file: the token is shorter than 16 characters".into());
    }
    Ok(Sha256::digest(token.as_bytes()).into())
}

/// The origins clients may address this appliance at (what DPoP proofs name in `htu`): with
/// TLS, `https://` and each name of its certificate; without, `http://` and the loopback names;
/// with the port it listens on (and without it, for the scheme's default port), and the address
/// it listens on.
fn public_origins(tls: bool, names: &[String], addr: SocketAddr) -> Vec<String> {
    let scheme = if tls { "https" } else { "http" };
    let default_port = if tls { 443 } else { 80 };
    let mut hosts: Vec<String> = if tls {
        names.to_vec()
    } else {
        vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
    };
    hosts.push(addr.ip().to_string());
    let mut out = Vec::new();
    for h in hosts {
        let host = if h.contains(':') { format!("[{h}]") } else { h };
        out.push(format!("{scheme}://{host}:{}", addr.port()));
        if addr.port() == default_port {
            out.push(format!("{scheme}://{host}"));
        }
    }
    out.sort();
    out.dedup();
    out
}

pub fn run(args: Serve) -> Result<(), String> {
    let c = configure(&args)?;
    if c.keys.ca.is_none() && !c.listen.ip().is_loopback() {
        return Err(format!(
            "listen {}: plain HTTP is served on loopback only; configure the ca key (keys.ca, --ca-key) for TLS",
            c.listen
        ));
    }
    if !valid_trust_domain(&c.trust_domain) {
        return Err("trust domain: letters, digits, '-', '.' and '_' only".into());
    }
    let roots = ek_roots(&c.enrollment.ek_roots)?;
    if roots.is_empty() {
        tracing::warn!("no EK roots: every enrollment will be refused (ek_untrusted)");
    }
    let admin = c.admin.token_file.as_deref().map(admin_token).transpose()?;
    let engine: Engine = c.store.parse().map_err(|e| format!("store: {e}"))?;
    let key_uri = c.keys.checkpoint.as_deref().ok_or(
        "no checkpoint key: give --checkpoint-key, keys.checkpoint in the config file, or WRIT_KEYS_CHECKPOINT",
    )?;
    let key = open_key(
        &key_uri
            .parse()
            .map_err(|e| format!("checkpoint key: {e}"))?,
        &OpenOptions {
            allow_software_keys: args.allow_software_keys,
        },
    )
    .map_err(|e| format!("checkpoint key: {e}"))?;
    let ear = c
        .keys
        .ear
        .as_deref()
        .map(|uri| {
            open_key(
                &uri.parse().map_err(|e| format!("ear key: {e}"))?,
                &OpenOptions {
                    allow_software_keys: args.allow_software_keys,
                },
            )
            .map_err(|e| format!("ear key: {e}"))
        })
        .transpose()?;
    if ear.is_none() {
        tracing::warn!("no ear key: every attestation will be answered 503 (ear_signing)");
    }
    let issuer = c
        .keys
        .issuer
        .as_deref()
        .map(|uri| {
            open_key(
                &uri.parse().map_err(|e| format!("issuer key: {e}"))?,
                &OpenOptions {
                    allow_software_keys: args.allow_software_keys,
                },
            )
            .map_err(|e| format!("issuer key: {e}"))
        })
        .transpose()?;
    if let Some(i) = &issuer {
        let spki = i.public_key().spki_der();
        if spki == key.public_key().spki_der()
            || ear
                .as_ref()
                .is_some_and(|e| e.public_key().spki_der() == spki)
        {
            return Err(
                "the issuer key is also the checkpoint or ear key: one key, one purpose".into(),
            );
        }
    }
    // Keys published beside the signing ones (rotation): each of one purpose only.
    let mut published: Vec<(&'static str, Arc<dyn writ_hsm::CustodyKey>)> = Vec::new();
    for (purpose, uris) in [
        ("issuer", &c.keys.issuer_published),
        ("ear", &c.keys.ear_published),
    ] {
        for uri in uris {
            let k = open_key(
                &uri.parse()
                    .map_err(|e| format!("published {purpose} key: {e}"))?,
                &OpenOptions {
                    allow_software_keys: args.allow_software_keys,
                },
            )
            .map_err(|e| format!("published {purpose} key {uri}: {e}"))?;
            published.push((purpose, k));
        }
    }
    if let Some(e) = &ear
        && e.public_key().spki_der() == key.public_key().spki_der()
    {
        return Err("the ear key and the checkpoint key are one key: one key, one purpose".into());
    }
    // TLS: the ca key, its CA certificate (made once), a server certificate for the appliance.
    let (tls, ca_key) = match &c.keys.ca {
        None => (None, None),
        Some(uri) => {
            let ca = open_key(
                &uri.parse().map_err(|e| format!("ca key: {e}"))?,
                &OpenOptions {
                    allow_software_keys: args.allow_software_keys,
                },
            )
            .map_err(|e| format!("ca key: {e}"))?;
            if ca.public_key().spki_der() == key.public_key().spki_der() {
                return Err(
                    "the ca key and the checkpoint key are one key: one key, one purpose".into(),
                );
            }
            if ear
                .as_ref()
                .is_some_and(|e| e.public_key().spki_der() == ca.public_key().spki_der())
                || issuer
                    .as_ref()
                    .is_some_and(|i| i.public_key().spki_der() == ca.public_key().spki_der())
            {
                return Err(
                    "the ca key is also the ear or issuer key: one key, one purpose".into(),
                );
            }
            let path = match (&c.tls.ca_certificate, &engine) {
                (Some(p), _) => p.clone(),
                (None, Engine::Sqlite(db)) => {
                    let mut p = db.clone().into_os_string();
                    p.push(".ca.pem");
                    PathBuf::from(p)
                }
                (None, Engine::Postgres(_)) => {
                    return Err("tls.ca_certificate is required with a PostgreSQL store".into());
                }
            };
            let ca_der = writ::tls::ca_certificate(&ca, &c.trust_domain, &path)?;
            let tls = writ::tls::ApplianceTls::new(
                Arc::clone(&ca),
                ca_der,
                &c.trust_domain,
                c.tls.names.clone(),
                Duration::from_secs(c.tls.certificate_lifetime_s),
            )?;
            (Some(tls), Some(ca))
        }
    };
    // The signing service's named keys.
    let mut signing: Vec<writ::appliance::SigningKey> = Vec::new();
    for (name, k) in &c.keys.signing {
        let uri = &k.key;
        if !writ::appliance::valid_name(name) {
            return Err(format!(
                "signing key name {name:?}: 1 to 64 of a-z 0-9 - _ . (not only dots)"
            ));
        }
        let form =
            writ_attestation::writ::bundle::SigningForm::parse(&k.form).ok_or_else(|| {
                format!(
                    "signing key {name}: form {:?} (digest or dsse: one form per key)",
                    k.form
                )
            })?;
        let k = open_key(
            &uri.parse()
                .map_err(|e| format!("signing key {name}: {e}"))?,
            &OpenOptions {
                allow_software_keys: args.allow_software_keys,
            },
        )
        .map_err(|e| format!("signing key {name} ({uri}): {e}"))?;
        signing.push(writ::appliance::SigningKey {
            name: name.clone(),
            form,
            key: k,
        });
    }
    // Keys published beside the signing ones: none is another purpose's key (the ca key too).
    {
        let mut seen: Vec<(&str, Vec<u8>)> =
            vec![("checkpoint", key.public_key().spki_der().to_vec())];
        for (p, k) in [("ear", &ear), ("issuer", &issuer), ("ca", &ca_key)] {
            if let Some(k) = k {
                seen.push((p, k.public_key().spki_der().to_vec()));
            }
        }
        for (p, k) in &published {
            let spki = k.public_key().spki_der().to_vec();
            if let Some((other, _)) = seen.iter().find(|(_, s)| *s == spki) {
                if other == p {
                    return Err(format!(
                        "a published {p} key is listed twice, or is the signing one"
                    ));
                }
                return Err(format!(
                    "a published {p} key is also the {other} key: one key, one purpose"
                ));
            }
            seen.push((p, spki));
        }
        for writ::appliance::SigningKey { name, key: k, .. } in &signing {
            let spki = k.public_key().spki_der().to_vec();
            if let Some((other, _)) = seen.iter().find(|(_, s)| *s == spki) {
                return Err(format!(
                    "the signing key {name} is also {}: one key, one purpose (and one name)",
                    if *other == "signing" {
                        "another signing key".to_string()
                    } else {
                        format!("the {other} key")
                    }
                ));
            }
            seen.push(("signing", spki));
        }
    }
    let mut config = LogConfig::new(&c.origin());
    config.checkpoint_interval = Duration::from_millis(c.log.checkpoint_interval_ms);
    config.max_checkpoint_age = Duration::from_secs(c.log.max_checkpoint_age_s);
    // A rotation's checkpoint keys open with the same custody checks as every key.
    let allow_software_keys = args.allow_software_keys;
    config.key_opener = Some(writ::decision_log::KeyOpener(Arc::new(move |uri: &str| {
        let uri = uri.parse().map_err(|e| format!("{e}"))?;
        writ_hsm::open_key(
            &uri,
            &OpenOptions {
                allow_software_keys,
            },
        )
        .map_err(|e| e.to_string())
    })));
    let log =
        Arc::new(DecisionLog::open(engine, config, key).map_err(|e| format!("{}: {e}", e.code()))?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(c.listen)
            .await
            .map_err(|e| format!("listen {}: {e}", c.listen))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("--listen: {e}"))?;
        let server_config = match &tls {
            Some(t) => {
                println!("writ serve: listening on https://{addr}");
                // Renew the server certificate at half its life; a failure keeps the old one.
                // After a failure, retry soon (the old certificate serves meanwhile, and clients
                // refuse it once it expires: closed, not open).
                let renewing = Arc::clone(t);
                tokio::spawn(async move {
                    let mut wait = renewing.renew_every();
                    loop {
                        tokio::time::sleep(wait).await;
                        let t = Arc::clone(&renewing);
                        let retry = (renewing.renew_every() / 5).min(Duration::from_secs(60));
                        wait = match tokio::task::spawn_blocking(move || t.renew()).await {
                            Ok(Ok(())) => {
                                tracing::info!("TLS certificate renewed");
                                renewing.renew_every()
                            }
                            Ok(Err(e)) => {
                                tracing::error!("TLS certificate not renewed: {e}");
                                retry
                            }
                            Err(e) => {
                                tracing::error!("TLS renewal: {e}");
                                retry
                            }
                        };
                    }
                });
                Some(t.server_config()?)
            }
            None => {
                println!("writ serve: listening on http://{addr}");
                eprintln!(
                    "writ serve: warning: plain HTTP (loopback only); configure the ca key for TLS"
                );
                None
            }
        };
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending::<()>().await,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        let app = Arc::new(Appliance::new(
            Arc::clone(&log),
            ApplianceConfig {
                trust_domain: c.trust_domain.clone(),
                ek_roots: roots,
                admin_token_sha256: admin,
                ca_certificate_pem: tls
                    .as_ref()
                    .map(|t| writ::tls::pem(&t.ca_der()))
                    .transpose()?,
                ear_key: ear,
                issuer_key: issuer,
                ca_key,
                published_keys: published,
                signing_keys: signing,
                nonce_ttl: i64::try_from(c.attestation.nonce_ttl_s).unwrap_or(60),
                ear_ttl: i64::try_from(c.attestation.ear_ttl_s).unwrap_or(300),
                origins: public_origins(tls.is_some(), &c.tls.names, addr),
                open_options: OpenOptions {
                    allow_software_keys: args.allow_software_keys,
                },
            },
        ));
        // The issuer and ear keys' rotation history, checked against the configuration.
        {
            let loading = Arc::clone(&app);
            match tokio::task::spawn_blocking(move || loading.load_schedule(true)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("{}: {}", e.code(), e.detail())),
                Err(e) => return Err(format!("the key schedule: {e}")),
            }
        }
        // The CA the schedule says signs now (a restart after a rotation of the ca key).
                if let Some(t) = &tls {
            let (signing, published) = app.certificate_authorities().ok_or(
                "the ca key's rotation history (key_schedule) names no CA that signs now, or its certificate",
            )?;
            t.follow(signing, published)?;
            println!(
                "writ serve: CA fingerprint {}",
                writ::tls::fingerprint(&t.ca_der())
            );
        }
        println!("writ serve: checkpoint verifier key {}", log.verifier_key());
        // The trust bundle as this appliance now is (its keys, CA, the policy bundle in force):
        // a new version if anything changed since the last one (a restart with other keys).
        // (Blocking work, off the async threads: the PostgreSQL client runs its own runtime.)
        // If it cannot be published, the appliance does not start: relying parties would go on
        // trusting keys this appliance no longer has (or not yet trust the one it signs with).
        if c.keys.issuer.is_some() {
            let publishing = Arc::clone(&app);
            match tokio::task::spawn_blocking(move || publishing.publish_bundle()).await {
                Ok(Ok(sequence)) => tracing::info!(sequence, "trust bundle published"),
                Ok(Err(e)) if e.code() == "no_policy" => {}
                Ok(Err(e)) => {
                    return Err(format!(
                        "the trust bundle could not be published ({}): {}",
                        e.code(),
                        e.detail()
                    ));
                }
                Err(e) => return Err(format!("the trust bundle could not be published: {e}")),
            }
        }
        // Every second: rotations other replicas recorded, keys leaving the trust bundle, and
        // the CA that signs the server certificate.
        {
            let ticking = Arc::clone(&app);
            let following = tls.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    let t = Arc::clone(&ticking);
                    let tls = following.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        t.tick();
                        if let Some(tls) = tls
                            && let Some((signing, published)) = t.certificate_authorities()
                        {
                            match tls.follow(signing, published) {
                                Ok(true) => tracing::info!(
                                    "TLS certificate renewed: the rotated ca key signs from now on"
                                ),
                                Ok(false) => {}
                                Err(e) => tracing::error!("TLS: the ca key's schedule: {e}"),
                            }
                        }
                    })
                    .await;
                }
            });
        }
        let limits = Limits {
            header_read: Duration::from_secs(c.http.header_read_timeout_s),
            max_connections_per_address: usize::try_from(c.http.max_connections_per_address)
                .unwrap_or(256),
            ..Limits::default()
        };
        let router = appliance_router_limited(
            app,
            Arc::new(
                UnidentifiedLimit::new(c.http.unidentified_per_minute)
                    .trusting(c.http.trusted_proxies.clone()),
            ),
        );
        let trusted: Arc<[std::net::IpAddr]> = c
            .http
            .trusted_proxies
            .iter()
            .map(|ip| ip.to_canonical())
            .collect();
        serve_behind(listener, router, limits, server_config, trusted, shutdown)
            .await
            .map_err(|e| format!("server: {e}"))
    })?;
    log.close();
    Ok(())
}

fn valid_trust_domain(td: &str) -> bool {
    (1..=255).contains(&td.len())
        && td
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_'))
}
