//! The CLI's HTTP client for the appliance: JSON in, JSON out, problem+json errors read back
//! into their stable code. Plain HTTP only until TLS is built (loopback appliances).

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

/// The appliance at `base` (e.g. `http://127.0.0.1:8787`).
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client for the appliance at `base`.
    pub fn new(base: &str) -> Result<Self, ClientError> {
        if !base.starts_with("http://") {
            return Err(ClientError::Transport(format!(
                "{base}: only http:// is supported until TLS is built (loopback appliances)"
            )));
        }
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            agent: ureq::Agent::config_builder()
                .timeout_global(Some(TIMEOUT))
                .http_status_as_error(false)
                .build()
                .new_agent(),
        })
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
        let url = format!("{}{path}", self.base);
        let transport = |e: ureq::Error| ClientError::Transport(format!("{method} {url}: {e}"));
        let auth = bearer.map(|t| format!("Bearer {t}"));
        let resp = match (method, body) {
            ("GET", _) => {
                let mut r = self.agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call().map_err(transport)?
            }
            (_, b) => {
                let mut r = self
                    .agent
                    .post(&url)
                    .header("Content-Type", "application/json");
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
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
