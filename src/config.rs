//! `writ serve`'s configuration: embedded defaults, then a TOML file (`--config`), then
//! environment variables (`WRIT_<SECTION>_<KEY>`, e.g. `WRIT_STORE`, `WRIT_KEYS_CHECKPOINT`,
//! `WRIT_LOG_ORIGIN`), then command-line flags. Unknown keys in the file, or unknown `WRIT_`
//! variables of the sections below, are refused rather than ignored. Example files:
//! `deploy/writ.example.toml` (documented) and `deploy/dev/writ.toml` (the dev stack).
//!
//! Secrets are never in the file or the environment: keys are URIs whose PINs and authValues
//! come from files (docs/keys.md), and the admin token is read from `admin.token_file`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// The whole configuration.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The trust domain of the SPIFFE IDs this appliance gives.
    pub trust_domain: String,
    /// Where to listen (plain HTTP is served on loopback only: off loopback, configure the ca
    /// key for TLS).
    pub listen: SocketAddr,
    /// The store: `sqlite:PATH` or a PostgreSQL connection string.
    pub store: String,
    /// Custody keys by purpose.
    pub keys: Keys,
    /// The decision log.
    pub log: Log,
    /// Enrollment.
    pub enrollment: Enrollment,
    /// Admin operations.
    pub admin: Admin,
    /// HTTP limits.
    pub http: Http,
    /// TLS (on when `keys.ca` is set).
    pub tls: Tls,
    /// Attestation.
    pub attestation: Attestation,
}

/// Attestation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Attestation {
    /// Seconds a nonce can be used.
    pub nonce_ttl_s: u64,
    /// Seconds an EAR token lives.
    pub ear_ttl_s: u64,
}

impl Default for Attestation {
    fn default() -> Self {
        Attestation {
            nonce_ttl_s: 60,
            ear_ttl_s: 300,
        }
    }
}

/// TLS: a server certificate signed by the `ca` key, for the appliance's SPIFFE ID and these
/// names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// Where the CA certificate of the `ca` key is kept (made on first start); default
    /// `<SQLite file>.ca.pem`, required with PostgreSQL.
    pub ca_certificate: Option<PathBuf>,
    /// DNS names and IP addresses clients reach the appliance at.
    pub names: Vec<String>,
    /// Seconds the server certificate lives (renewed at half).
    pub certificate_lifetime_s: u64,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            ca_certificate: None,
            names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            certificate_lifetime_s: 86_400,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The store string may hold a PostgreSQL password.
        f.debug_struct("Config")
            .field("trust_domain", &self.trust_domain)
            .field("listen", &self.listen)
            .field("store", &"(withheld)")
            .field("keys", &self.keys)
            .field("log", &self.log)
            .field("enrollment", &self.enrollment)
            .field("admin", &self.admin)
            .field("http", &self.http)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Custody keys by purpose (URIs: `pkcs11:`, `tpm:`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Keys {
    /// The `checkpoint` key: signs the log's checkpoints.
    pub checkpoint: Option<String>,
    /// The `ca` key: signs the appliance's TLS certificates (TLS is on when it is set).
    pub ca: Option<String>,
    /// The `ear` key: signs attestation results (without it, attestation answers 503).
    pub ear: Option<String>,
    /// The `issuer` key: signs writs (without it, issuance answers 503).
    pub issuer: Option<String>,
    /// Other `issuer` keys, published in the trust bundle but signing nothing: the next one
    /// before it signs, and previous ones until what they signed has expired (docs/keys.md,
    /// rotation).
    pub issuer_published: Vec<String>,
    /// Other `ear` keys, published but signing nothing (as `issuer_published`).
    pub ear_published: Vec<String>,
    /// The signing service's named keys (`[keys.signing.release] key = "pkcs11:...", form =
    /// "dsse"`), each published in the trust bundle under its name (docs/signing.md).
    pub signing: std::collections::BTreeMap<String, SigningKey>,
}

/// A named key of the signing service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKey {
    /// The key's URI (`pkcs11:`, `tpm:`).
    pub key: String,
    /// What it signs: `digest` (raw signatures over SHA-256 digests) or `dsse` (DSSE envelopes
    /// over in-toto Statements). One form per key: a key signing raw digests would sign a DSSE
    /// PAE's digest as readily as a file's.
    pub form: String,
}

/// The decision log.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// The log's origin (first line of its checkpoints); default `<trust_domain>/log`.
    pub origin: Option<String>,
    /// Milliseconds between checkpoints while the log grows.
    pub checkpoint_interval_ms: u64,
    /// Seconds without a signed checkpoint after which decisions are refused.
    pub max_checkpoint_age_s: u64,
}

/// Enrollment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Enrollment {
    /// TPM manufacturer roots and intermediates (PEM files or folders).
    pub ek_roots: Vec<PathBuf>,
}

/// Admin operations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// A file (0600) holding the admin token; without it admin operations are refused.
    pub token_file: Option<PathBuf>,
}

/// HTTP limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Seconds a client has to send a request's headers (and idle time between requests).
    pub header_read_timeout_s: u64,
    /// Refusals before anyone is identified that one address may cause per minute; past it,
    /// 429 until the minute ends.
    pub unidentified_per_minute: u32,
    /// Connections open at once from one address (an IPv4 address, an IPv6 /64).
    pub max_connections_per_address: u64,
    /// Reverse proxies in front of the appliance: their connections are not bounded per
    /// address, and requests through them are counted against the last `X-Forwarded-For`
    /// address. Empty: the header is never read.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            trust_domain: "writ.local".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            store: "sqlite:/var/lib/writ/writ.db".into(),
            keys: Keys::default(),
            log: Log::default(),
            enrollment: Enrollment::default(),
            admin: Admin::default(),
            http: Http::default(),
            tls: Tls::default(),
            attestation: Attestation::default(),
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            origin: None,
            checkpoint_interval_ms: 1000,
            max_checkpoint_age_s: 30,
        }
    }
}

impl Default for Http {
    fn default() -> Self {
        Http {
            header_read_timeout_s: 10,
            unidentified_per_minute: 60,
            max_connections_per_address: 256,
            trusted_proxies: Vec::new(),
        }
    }
}

/// A comma-separated list, without empty entries.
fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn bad(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

impl Config {
    /// Parses a TOML file's text over the defaults.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| bad("config", e))
    }

    /// Applies `WRIT_*` variables from `vars` (the process environment, or a test's). Variables
    /// of other writ tools (`WRIT_LOG` for log levels, `WRIT_DEV_*`, `WRIT_TEST_*`, ...) are
    /// not this configuration's and are left alone.
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), String> {
        for (k, v) in vars {
            let Some(key) = k.strip_prefix("WRIT_") else {
                continue;
            };
            let num = |what: &str| v.parse::<u64>().map_err(|e| bad(what, e));
            match key {
                "TRUST_DOMAIN" => self.trust_domain = v.clone(),
                "LISTEN" => self.listen = v.parse().map_err(|e| bad(&k, e))?,
                "STORE" => self.store = v.clone(),
                "KEYS_CHECKPOINT" => self.keys.checkpoint = Some(v.clone()),
                "KEYS_CA" => self.keys.ca = Some(v.clone()),
                "KEYS_EAR" => self.keys.ear = Some(v.clone()),
                "KEYS_ISSUER" => self.keys.issuer = Some(v.clone()),
                "KEYS_ISSUER_PUBLISHED" => self.keys.issuer_published = list(&v),
                "KEYS_EAR_PUBLISHED" => self.keys.ear_published = list(&v),
                "ATTESTATION_NONCE_TTL_S" => self.attestation.nonce_ttl_s = num(&k)?,
                "ATTESTATION_EAR_TTL_S" => self.attestation.ear_ttl_s = num(&k)?,
                "TLS_CA_CERTIFICATE" => self.tls.ca_certificate = Some(PathBuf::from(&v)),
                "TLS_NAMES" => {
                    self.tls.names = v
                        .split(',')
                        .map(str::trim)
                        .filter(|n| !n.is_empty())
                        .map(str::to_string)
                        .collect();
                }
                "TLS_CERTIFICATE_LIFETIME_S" => self.tls.certificate_lifetime_s = num(&k)?,
                "LOG_ORIGIN" => self.log.origin = Some(v.clone()),
                "LOG_CHECKPOINT_INTERVAL_MS" => self.log.checkpoint_interval_ms = num(&k)?,
                "LOG_MAX_CHECKPOINT_AGE_S" => self.log.max_checkpoint_age_s = num(&k)?,
                "ENROLLMENT_EK_ROOTS" => {
                    self.enrollment.ek_roots = v
                        .split(':')
                        .filter(|p| !p.is_empty())
                        .map(PathBuf::from)
                        .collect();
                }
                "ADMIN_TOKEN_FILE" => self.admin.token_file = Some(PathBuf::from(&v)),
                "HTTP_HEADER_READ_TIMEOUT_S" => self.http.header_read_timeout_s = num(&k)?,
                "HTTP_UNIDENTIFIED_PER_MINUTE" => {
                    self.http.unidentified_per_minute =
                        u32::try_from(num(&k)?).map_err(|e| bad(&k, e))?;
                }
                "HTTP_MAX_CONNECTIONS_PER_ADDRESS" => {
                    self.http.max_connections_per_address = num(&k)?;
                }
                "HTTP_TRUSTED_PROXIES" => {
                    self.http.trusted_proxies = v
                        .split(',')
                        .map(str::trim)
                        .filter(|a| !a.is_empty())
                        .map(|a| a.parse().map_err(|e| bad(&k, e)))
                        .collect::<Result<_, _>>()?;
                }
                other => {
                    // Other writ tools' variables are left alone; any other WRIT_ name is a
                    // misspelt setting (a silent default trust domain would be worse than a
                    // refusal).
                    let theirs = other == "LOG"
                        || other.starts_with("TEST")
                        || ["AGENT_", "PKCS11_", "DEV_", "BENCH_", "CRASH_"]
                            .iter()
                            .any(|p| other.starts_with(p));
                    if !theirs {
                        return Err(format!("{k}: not a writ serve setting"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Refuses values outside their ranges (rather than clamping them silently).
    pub fn check(&self) -> Result<(), String> {
        let range = |what: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{what} = {v}: from {lo} to {hi}"))
            }
        };
        range(
            "log.checkpoint_interval_ms",
            self.log.checkpoint_interval_ms,
            10,
            60_000,
        )?;
        range(
            "log.max_checkpoint_age_s",
            self.log.max_checkpoint_age_s,
            1,
            3600,
        )?;
        if self.log.max_checkpoint_age_s.saturating_mul(1000)
            < self.log.checkpoint_interval_ms.saturating_mul(2)
        {
            return Err(
                "log.max_checkpoint_age_s must be at least twice the checkpoint interval".into(),
            );
        }
        range(
            "http.header_read_timeout_s",
            self.http.header_read_timeout_s,
            1,
            300,
        )?;
        range(
            "tls.certificate_lifetime_s",
            self.tls.certificate_lifetime_s,
            *crate::tls::LIFETIME.start(),
            *crate::tls::LIFETIME.end(),
        )?;
        range(
            "attestation.nonce_ttl_s",
            self.attestation.nonce_ttl_s,
            1,
            600,
        )?;
        range(
            "attestation.ear_ttl_s",
            self.attestation.ear_ttl_s,
            10,
            3600,
        )?;
        range(
            "http.unidentified_per_minute",
            u64::from(self.http.unidentified_per_minute),
            1,
            1_000_000,
        )?;
        range(
            "http.max_connections_per_address",
            self.http.max_connections_per_address,
            1,
            4096,
        )?;
        Ok(())
    }

    /// The log's origin.
    pub fn origin(&self) -> String {
        self.log
            .origin
            .clone()
            .unwrap_or_else(|| format!("{}/log", self.trust_domain))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_then_file_then_environment() {
        let c = Config::from_toml(
            r#"
            trust_domain = "writ.example"
            store = "sqlite:/tmp/w.db"
            [keys]
            checkpoint = "pkcs11:token=t;object=c"
            [enrollment]
            ek_roots = ["/etc/writ/roots"]
            "#,
        )
        .unwrap();
        assert_eq!(c.trust_domain, "writ.example");
        assert_eq!(c.listen, Config::default().listen);
        assert_eq!(c.origin(), "writ.example/log");
        assert_eq!(c.log.checkpoint_interval_ms, 1000);
        let mut c = c;
        c.apply_env([
            ("WRIT_LISTEN".to_string(), "127.0.0.1:9000".to_string()),
            ("WRIT_LOG_ORIGIN".to_string(), "o/log".to_string()),
            ("WRIT_LOG".to_string(), "debug".to_string()),
            ("WRIT_DEV_DIR".to_string(), "/x".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ])
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.origin(), "o/log");
    }

    #[test]
    fn the_example_files_parse_and_say_the_defaults() {
        let example = Config::from_toml(include_str!("../deploy/writ.example.toml")).unwrap();
        // Every value the example shows uncommented is the embedded default.
        assert_eq!(example, Config::default());
        let dev = Config::from_toml(include_str!("../deploy/dev/writ.toml")).unwrap();
        assert_eq!(dev.trust_domain, "writ.dev");
        assert_eq!(dev.origin(), "writ.dev/log");
    }

    #[test]
    fn unknown_keys_and_variables_are_refused() {
        assert!(Config::from_toml("trust_domian = \"x\"").is_err());
        assert!(Config::from_toml("[keys]\nissuer_key = \"x\"").is_err());
        assert!(Config::from_toml("listen = \"not an address\"").is_err());
        let mut c = Config::default();
        assert!(
            c.apply_env([("WRIT_KEYS_CHECKPIONT".to_string(), "x".to_string())])
                .is_err()
        );
        assert!(
            c.apply_env([(
                "WRIT_LOG_CHECKPOINT_INTERVAL_MS".to_string(),
                "soon".to_string()
            )])
            .is_err()
        );
        // A misspelt top-level setting is refused, not ignored; other tools' variables are not.
        assert!(
            c.apply_env([("WRIT_TRUST_DOMIAN".to_string(), "x".to_string())])
                .is_err()
        );
        c.apply_env([
            ("WRIT_PKCS11_MODULE".to_string(), "x".to_string()),
            ("WRIT_DEV_DIR".to_string(), "x".to_string()),
            ("WRIT_TEST_PG".to_string(), "x".to_string()),
            ("WRIT_AGENT_STATE".to_string(), "x".to_string()),
        ])
        .unwrap();
        // Out-of-range values are refused, not clamped.
        let mut c = Config::default();
        c.log.max_checkpoint_age_s = u64::MAX;
        assert!(c.check().is_err());
        assert!(Config::default().check().is_ok());
    }
}
