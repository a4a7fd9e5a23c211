//! The CLI's HTTP client for the appliance: JSON in, JSON out, problem+json errors read back
//! into their stable code.
//!
//! TLS trust is one pinned CA: `--fingerprint sha256:<hex>` of the appliance's CA certificate
//! (printed by `writ serve`), as `step ca bootstrap --fingerprint` does. On first contact the
//! client fetches `/v1/ca.pem` without trusting the connection, accepts it only if its SHA-256
//! is the pinned fingerprint, keeps it (the agent in its state folder), and from then on trusts
//! that CA alone, with hostname (or IP) verification and the serverAuth usage where the
//! certificate states one. The appliance's SPIFFE ID in the server certificate is not checked
//! on this side yet: today the `ca` key certifies only the appliance's own TLS certificates;
//! this check must exist before it certifies anything else (X.509-SVIDs). Plain `http://` is
//! for loopback appliances only (an authority with userinfo is refused), never through a proxy;
//! no redirects are followed.

use std::time::Duration;

use serde_json::Value;

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read.
const MAX_ANSWER: u64 = 16 * 1024 * 1024;

/// A failed request: the appliance's refusal (its code and detail), or a transport error.
#[derive(Debug)]
pub enum ClientError {
    /// The appliance answered with a problem.
    Refused {
        /// HTTP status.
        status: u16,
        /// The stable code.
        code: String,
        /// What failed.
        detail: String,
    },
    /// No usable answer.
    Transport(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Refused {
                status,
                code,
                detail,
            } => write!(f, "refused ({status} {code}): {detail}"),
            ClientError::Transport(e) => write!(f, "{e}"),
        }
    }
}

/// How the client trusts an `https://` appliance.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// `sha256:<hex>` of the CA certificate to pin.
    pub fingerprint: Option<String>,
    /// Where the pinned CA certificate is kept (read if present, written after bootstrap).
    pub ca_file: Option<std::path::PathBuf>,
}

/// The appliance at `base` (e.g. `https://writ.example:8787`, or `http://127.0.0.1:8787`).
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

fn transport(e: impl std::fmt::Display) -> ClientError {
    ClientError::Transport(e.to_string())
}

fn first_certificate_der(pem: &[u8]) -> Result<Vec<u8>, ClientError> {
    for item in ureq::tls::parse_pem(pem) {
        if let Ok(ureq::tls::PemItem::Certificate(c)) = item {
            return Ok(c.der().to_vec());
        }
    }
    Err(transport("no certificate in the CA PEM"))
}

fn tls_agent(roots: Option<Vec<u8>>, verify: bool, status_errors: bool) -> ureq::Agent {
    let mut tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .disable_verification(!verify);
    if let Some(der) = roots {
        tls = tls.root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(vec![
            ureq::tls::Certificate::from_der(&der).to_owned(),
        ])));
    }
    ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(status_errors)
        .proxy(None)
        .max_redirects(0)
        .https_only(true)
        .tls_config(tls.build())
        .build()
        .new_agent()
}

/// Whether `base` (an `http://` URL) names this machine: its authority has no userinfo and its
/// host is `localhost` or a loopback address.
pub fn loopback(base: &str) -> bool {
    let Ok(uri) = base.parse::<axum::http::Uri>() else {
        return false;
    };
    let Some(authority) = uri.authority() else {
        return false;
    };
    if authority.as_str().contains('@') {
        return false;
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Keeps the pinned CA certificate (only the verified one).
fn keep(path: &std::path::Path, der: &[u8]) -> Result<(), ClientError> {
    let pem = writ::tls::pem(der).map_err(transport)?;
    writ::files::write_atomically(path, pem.as_bytes(), 0o644, writ::files::Existing::Replace)
        .map_err(transport)
}

/// An agent for the appliance at `base` (no trailing slash), trusting it as `trust` says;
/// `status_errors`: whether HTTP error statuses are errors (else answers to read).
pub fn agent_for(
    base: &str,
    trust: &Trust,
    status_errors: bool,
) -> Result<ureq::Agent, ClientError> {
    if base.starts_with("http://") {
        if !loopback(base) {
            return Err(transport(format!(
                "{base}: plain http is for loopback appliances only; use https:// with --fingerprint"
            )));
        }
        return Ok(ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(status_errors)
            .build()
            .new_agent());
    }
    if !base.starts_with("https://") {
        return Err(transport(format!("{base}: not an http(s) URL")));
    }
    let kept = match &trust.ca_file {
        Some(p) if p.exists() => Some(
            std::fs::read(p)
                .map_err(|e| transport(format!("{}: {e}", p.display())))
                .and_then(|pem| first_certificate_der(&pem))?,
        ),
        _ => None,
    };
    let ca = match (kept, &trust.fingerprint) {
        (Some(der), Some(fp)) if writ::tls::fingerprint(&der) != fp.to_ascii_lowercase() => {
            return Err(transport(format!(
                "the kept CA certificate is {}, not the pinned {fp}",
                writ::tls::fingerprint(&der)
            )));
        }
        (Some(der), _) => der,
        (None, None) => {
            return Err(transport(
                "an https appliance needs --fingerprint sha256:<hex> of its CA certificate (writ serve prints it)",
            ));
        }
        (None, Some(fp)) => {
            // Bootstrap: nothing is trusted on this connection but the fingerprint check.
            let url = format!("{base}/v1/ca.pem");
            let mut resp = tls_agent(None, false, true)
                .get(&url)
                .call()
                .map_err(|e| transport(format!("GET {url}: {e}")))?;
            let pem = resp
                .body_mut()
                .with_config()
                .limit(64 * 1024)
                .read_to_vec()
                .map_err(|e| transport(format!("GET {url}: {e}")))?;
            let der = first_certificate_der(&pem)?;
            let got = writ::tls::fingerprint(&der);
            if got != fp.to_ascii_lowercase() {
                return Err(transport(format!(
                    "the appliance's CA certificate is {got}, not the pinned {fp}: refusing to trust it"
                )));
            }
            if let Some(p) = &trust.ca_file {
                keep(p, &der)?;
            }
            der
        }
    };
    Ok(tls_agent(Some(ca), true, status_errors))
}

impl Client {
    /// A client for the appliance at `base`, trusting it as `trust` says.
    pub fn new(base: &str, trust: &Trust) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        let agent = agent_for(&base, trust, false)?;
        Ok(Client { base, agent })
    }
    /// `method path` with an optional JSON body and bearer token; the JSON answer (`null` for
    /// an empty one).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        bearer: Option<&str>,
    ) -> Result<Value, ClientError> {
        let auth = bearer.map(|t| format!("Bearer {t}"));
        self.call_with(method, path, body, auth.as_deref(), None)
    }

    /// The base URL (scheme, host, port).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// As [`call`](Self::call), with an `Authorization` header value and a DPoP proof.
    pub fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        auth: Option<&str>,
        dpop: Option<&str>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let transport = |e: ureq::Error| ClientError::Transport(format!("{method} {url}: {e}"));
        let resp = match (method, body) {
            ("GET", _) => {
                let mut r = self.agent.get(&url);
                if let Some(a) = auth {
                    r = r.header("Authorization", a);
                }
                r.call().map_err(transport)?
            }
            (_, b) => {
                let mut r = self
                    .agent
                    .post(&url)
                    .header("Content-Type", "application/json");
                if let Some(a) = auth {
                    r = r.header("Authorization", a);
                }
                if let Some(p) = dpop {
                    r = r.header("DPoP", p);
                }
                let text = b.map(Value::to_string).unwrap_or_default();
                r.send(text.as_bytes()).map_err(transport)?
            }
        };
        let status = resp.status().as_u16();
        let mut resp = resp;
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .map_err(transport)?;
        let v: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                ClientError::Transport(format!("{method} {url}: HTTP {status}, not JSON: {e}"))
            })?
        };
        if (200..300).contains(&status) {
            return Ok(v);
        }
        let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Err(ClientError::Refused {
            status,
            code: if field("code").is_empty() {
                format!("http_{status}")
            } else {
                field("code")
            },
            detail: field("detail"),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_means_this_machine_and_nothing_else() {
        for ok in [
            "http://127.0.0.1:8787",
            "http://localhost:1",
            "http://[::1]:8787",
            "http://127.1.2.3",
        ] {
            assert!(super::loopback(ok), "{ok}");
        }
        for bad in [
            "http://localhost:x@evil.com:8787",
            "http://127.0.0.1:8787@evil.com",
            "http://[::1]@evil.com",
            "http://[::1]:1@evil.com",
            "http://127.0.0.1.evil.com",
            "http://localhost.evil.com",
            "http://10.0.0.1",
            "http://evil.com",
            "not a url",
        ] {
            assert!(!super::loopback(bad), "{bad}");
        }
    }
}
