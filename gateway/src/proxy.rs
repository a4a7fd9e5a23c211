//! `writ-gate proxy`: an HTTP reverse proxy in front of a tool's API that forwards a request only
//! for a writ naming exactly that request.
//!
//! Per request, in order (each refusal answers problem+json with its code and forwards nothing):
//! method-override headers (`method_override`, 400); exactly one `Authorization: DPoP <writ>`
//! (`writ_missing`, 401) and at most one `DPoP` proof (`proof`, 400); the request target in
//! origin form (`request`, 400); the body, buffered up to `max_body_bytes` (`body_too_large`,
//! 413) within `body_timeout_s` (`body_timeout`, 408); the trust bundle (reloaded when its file
//! changes; a missing, unreadable, stale or rolled-back one refuses everything, 503); the one
//! offline verification of the writ for the request recomputed from the method, the configured
//! public origin with the path and query as sent, the `Content-Type` and the body's SHA-256, and
//! the holder's DPoP proof (with this gateway's `DPoP-Nonce` when `dpop_nonce` is on; a proof
//! without it gets 401 `use_dpop_nonce` and a fresh nonce); then single use of the writ and the
//! proof and the decision in the spool, one transaction of the replay store (503 when it cannot
//! record or the spool is full). Only then is the request forwarded, without the writ, the proof,
//! the inclusion header and hop-by-hop headers, with the upstream credentials of the gateway's
//! credentials file (which the runtime never sees) and `Writ-Subject` / `Writ-Jti` naming the
//! holder and the writ. The upstream's answer is relayed; its status and the time taken are
//! spooled as the outcome.
//!
//! Slow clients cost a task each, never a worker: headers must arrive within
//! `header_timeout_s`, bodies within `body_timeout_s`, and at most `max_connections` are open.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request as HttpRequest, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use writ_attestation::crypto::default_provider;
use writ_attestation::writ::Refusal;
use writ_attestation::writ::bundle::TrustBundle;
use writ_attestation::writ::request::{Request, digest, proof_target};
use writ_attestation::writ::verify::{Context, check};
use writ_gateway::replay::SqliteReplay;

use crate::exec::GateConfig;

/// `[proxy]` in the gateway's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Where to listen (`127.0.0.1:8443`; port 0 picks one, printed at start).
    pub listen: String,
    /// The origin clients call (`https://tools.example`), as writs and proofs name it.
    pub public_origin: String,
    /// The tool's API (`http://127.0.0.1:9000`).
    pub upstream: String,
    /// Largest request body, bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Seconds for a request's headers to arrive.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_s: u64,
    /// Seconds for a request's body to arrive.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_s: u64,
    /// Seconds for the upstream's answer (its headers).
    #[serde(default = "default_upstream_timeout")]
    pub upstream_timeout_s: u64,
    /// Connections open at once at most.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Require DPoP proofs to carry this gateway's nonce (RFC 9449 section 8).
    #[serde(default)]
    pub dpop_nonce: bool,
    /// A file of `Name: value` lines added to every forwarded request (upstream credentials):
    /// owned by root or the gateway's user, readable by nobody else.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// Where to serve /livez, /readyz and /metrics (not on the proxied listener).
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// The resources policy knows the API's paths as: a writ must name the resource of the
    /// longest route covering its path (by whole segments), and a path no route covers is
    /// refused. None: any resource (the request digest still names the exact request).
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// A path prefix and the resource it is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// `/v1/pay` (covers `/v1/pay` and below).
    pub prefix: String,
    /// `api/pay`.
    pub resource: String,
}

fn default_max_body() -> usize {
    1024 * 1024
}
fn default_header_timeout() -> u64 {
    10
}
fn default_body_timeout() -> u64 {
    10
}
fn default_upstream_timeout() -> u64 {
    30
}
fn default_max_connections() -> usize {
    1024
}

/// What authorized a request (and what the gateway itself tells the upstream): never passed on
/// from the client.
const CREDENTIAL_HEADERS: [&str; 5] = [
    "authorization",
    "dpop",
    "writ-inclusion",
    "writ-subject",
    "writ-jti",
];

/// Hop-by-hop headers (RFC 9110 section 7.6.1), in either direction.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers that would make the upstream run another method or path than the one verified.
const OVERRIDES: [&str; 5] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
];

/// What a client might say about where the request came from or was addressed to: never passed
/// on (an upstream that trusts its proxy would route or authorize by them).
const FORWARDING: [&str; 6] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-prefix",
    "x-real-ip",
];

/// The upstream credentials: header lines, never printed.
struct Credentials(Vec<(HeaderName, HeaderValue)>);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Credentials")
            .field("headers", &names)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    fn load(path: Option<&Path>, uid: u32) -> Result<Self, String> {
        use std::os::unix::fs::MetadataExt;
        let Some(path) = path else {
            return Ok(Credentials(Vec::new()));
        };
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| format!("credentials {}: {e}", path.display()))?;
        if !meta.file_type().is_file()
            || (meta.uid() != 0 && meta.uid() != uid)
            || meta.mode() & 0o077 != 0
        {
            return Err(format!(
                "credentials {}: a regular file of root or this gateway's user, readable by nobody else (0600)",
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("credentials {}: {e}", path.display()))?;
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = line.split_once(':').ok_or_else(|| {
                format!(
                    "credentials {}: line {} is not Name: value",
                    path.display(),
                    i + 1
                )
            })?;
            let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                format!(
                    "credentials {}: line {}: a header name",
                    path.display(),
                    i + 1
                )
            })?;
            // Authorization may be set (the client's own is never passed on); the rest is the
            // gateway's to say.
            if (CREDENTIAL_HEADERS.contains(&name.as_str()) && name != hyper::header::AUTHORIZATION)
                || HOP_BY_HOP.contains(&name.as_str())
                || FORWARDING.contains(&name.as_str())
                || name == hyper::header::HOST
                || name == hyper::header::CONTENT_LENGTH
            {
                return Err(format!(
                    "credentials {}: line {}: {name} cannot be set",
                    path.display(),
                    i + 1
                ));
            }
            let mut value = HeaderValue::from_str(value.trim()).map_err(|_| {
                format!(
                    "credentials {}: line {}: a header value",
                    path.display(),
                    i + 1
                )
            })?;
            value.set_sensitive(true);
            out.push((name, value));
        }
        Ok(Credentials(out))
    }
}

/// The trust bundle, read again when its file changes. A bundle that fails to load is not
/// kept: every request refuses until the file is fixed.
struct BundleCache {
    path: PathBuf,
    loaded: Mutex<Option<(FileId, Arc<TrustBundle>)>>,
}

type FileId = (u64, u64, i64, i64, u64);

fn file_id(path: &Path) -> Result<FileId, Refusal> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)
        .map_err(|e| Refusal::new("bundle", format!("{}: {e}", path.display())))?;
    Ok((m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
}

impl BundleCache {
    async fn get(&self, store: &Arc<SqliteReplay>) -> Result<Arc<TrustBundle>, Refusal> {
        let id = file_id(&self.path)?;
        if let Ok(g) = self.loaded.lock()
            && let Some((seen, b)) = g.as_ref()
            && *seen == id
        {
            return Ok(Arc::clone(b));
        }
        let bytes = std::fs::read(&self.path)
            .map_err(|e| Refusal::new("bundle", format!("{}: {e}", self.path.display())))?;
        let bundle = TrustBundle::parse(&bytes)?;
        let d = crate::bundle_digest(&bytes)?;
        // A rolled-back bundle is refused before it is ever used.
        let s = Arc::clone(store);
        let (td, seq) = (bundle.trust_domain.clone(), bundle.sequence);
        tokio::task::spawn_blocking(move || s.observe_bundle(&td, seq, &d))
            .await
            .map_err(|e| Refusal::new("bundle", e.to_string()))??;
        let b = Arc::new(bundle);
        if let Ok(mut g) = self.loaded.lock() {
            *g = Some((id, Arc::clone(&b)));
        }
        Ok(b)
    }
}

/// Counters for /metrics, by decision and code.
#[derive(Debug, Default)]
struct Metrics(Mutex<BTreeMap<(&'static str, &'static str), u64>>);

impl Metrics {
    fn count(&self, decision: &'static str, code: &'static str) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry((decision, code)).or_insert(0) += 1;
        }
    }

    fn render(&self) -> String {
        let mut out = String::from(
            "# HELP writ_gate_requests_total Requests by decision and code.\n# TYPE writ_gate_requests_total counter\n",
        );
        if let Ok(m) = self.0.lock() {
            for ((d, c), n) in m.iter() {
                out.push_str(&format!(
                    "writ_gate_requests_total{{decision=\"{d}\",code=\"{c}\"}} {n}\n"
                ));
            }
        }
        out
    }
}

/// Rotating DPoP nonces: a keyed hash of the 5-minute window; the current and the previous one
/// are accepted.
struct Nonces {
    key: [u8; 32],
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nonces").finish_non_exhaustive()
    }
}

const NONCE_WINDOW_S: i64 = 300;

impl Nonces {
    fn new() -> Result<Self, String> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| format!("random: {e}"))?;
        Ok(Nonces { key })
    }

    fn at(&self, now: i64) -> String {
        let window = now.div_euclid(NONCE_WINDOW_S);
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(window.to_be_bytes());
        B64.encode(h.finalize())
    }
}

struct Proxy {
    config: ProxyConfig,
    gate: GateConfig,
    origin: String,
    /// The upstream's base (`http://host:port[/prefix]`, no trailing `/`).
    upstream: String,
    store: Arc<SqliteReplay>,
    bundle: BundleCache,
    credentials: Credentials,
    nonces: Option<Nonces>,
    metrics: Metrics,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

type Body = BoxBody<Bytes, hyper::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// The HTTP status of a refusal.
fn status_of(code: &str) -> StatusCode {
    match code {
        "method_override" | "request" | "duplicate_header" => StatusCode::BAD_REQUEST,
        "body_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "body_timeout" => StatusCode::REQUEST_TIMEOUT,
        "replay_store" | "spool_full" | "bundle" | "bundle_stale" | "bundle_rollback" | "clock" => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        "upstream" => StatusCode::BAD_GATEWAY,
        _ => StatusCode::UNAUTHORIZED,
    }
}

impl Proxy {
    fn problem(&self, r: &Refusal, now: i64) -> Response<Body> {
        let status = status_of(r.code);
        self.metrics.count("deny", r.code);
        let body = json!({"type": "about:blank", "title": status.canonical_reason(),
                          "status": status.as_u16(), "code": r.code, "detail": r.detail});
        let mut resp = Response::new(full(body.to_string()));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            let error = if r.code == "use_dpop_nonce" {
                "use_dpop_nonce"
            } else {
                "invalid_token"
            };
            if let Ok(v) = HeaderValue::from_str(&format!(
                "DPoP algs=\"ES256\", error=\"{error}\", error_description=\"{}\"",
                r.code
            )) {
                h.insert(hyper::header::WWW_AUTHENTICATE, v);
            }
        }
        self.nonce_header(h, now);
        // Where the consistency proof must start: the last checkpoint this host saw.
        if r.code == "inclusion_consistency"
            && let Ok(Some((size, _))) =
                SqliteReplay::checkpoint_seen(&self.gate.replay_db, &self.origin_of_log())
            && let Ok(v) = HeaderValue::from_str(&size.to_string())
        {
            h.insert("writ-checkpoint-size", v);
        }
        resp
    }

    /// The decision log's origin, from the trust bundle last loaded.
    fn origin_of_log(&self) -> String {
        self.bundle
            .loaded
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|(_, b)| b.log_origin.clone()))
            .unwrap_or_default()
    }

    fn nonce_header(&self, h: &mut HeaderMap, now: i64) {
        if let Some(n) = &self.nonces
            && let Ok(v) = HeaderValue::from_str(&n.at(now))
        {
            h.insert("dpop-nonce", v);
        }
    }

    async fn handle(self: Arc<Self>, req: HttpRequest<Incoming>) -> Response<Body> {
        let now = match crate::clock() {
            Ok(t) => t,
            Err(r) => return self.problem(&r, crate::now()),
        };
        match self.decide_and_forward(req, now).await {
            Ok(r) => r,
            Err(r) => self.problem(&r, now),
        }
    }

    async fn decide_and_forward(
        &self,
        req: HttpRequest<Incoming>,
        now: i64,
    ) -> Result<Response<Body>, Refusal> {
        let started = Instant::now();
        let (parts, body) = req.into_parts();
        for h in OVERRIDES {
            if parts.headers.contains_key(h) {
                return Err(Refusal::new(
                    "method_override",
                    format!("{h}: the method and path are the request line's, never a header's"),
                ));
            }
        }
        // The method as verified is the method forwarded: upper case only (`get` is another
        // method to hyper and to the upstream, while the digest would name GET).
        if parts
            .method
            .as_str()
            .bytes()
            .any(|b| b.is_ascii_lowercase())
        {
            return Err(Refusal::new("request", "the method must be upper case"));
        }
        let token = one_header(&parts.headers, "authorization")?
            .and_then(|v| v.strip_prefix("DPoP "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Refusal::new("writ_missing", "Authorization: DPoP <writ> is required"))?
            .to_string();
        let proof = one_header(&parts.headers, "dpop")?.map(str::to_string);
        let inclusion = one_header(&parts.headers, "writ-inclusion")?
            .map(|v| {
                B64.decode(v.trim())
                    .map_err(|_| Refusal::new("inclusion", "Writ-Inclusion is not base64url"))
            })
            .transpose()?;
        let content_type = one_header(&parts.headers, "content-type")?
            .unwrap_or("")
            .to_string();
        if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            return Err(Refusal::new(
                "request",
                "the request target must be a path (origin form), not an absolute URL",
            ));
        }
        // The path in normal form only: what the routes matched is what the upstream serves.
        let path = parts.uri.path();
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let odd_segment = segments.iter().enumerate().any(|(i, seg)| {
            *seg == "." || *seg == ".." || (seg.is_empty() && i + 1 != segments.len())
        });
        if odd_segment || path.contains(['\\', ';']) || needless_escape(path) {
            return Err(Refusal::new(
                "request",
                "the path is not in normal form (empty, . or .. segments, ;, \\, or a percent-escape of an unreserved character, / \\ ; or NUL)",
            ));
        }
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let url = format!("{}{path_and_query}", self.origin);
        if let Some(len) = parts
            .headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            && len > self.config.max_body_bytes
        {
            return Err(too_large(self.config.max_body_bytes));
        }
        let collected = tokio::time::timeout(
            Duration::from_secs(self.config.body_timeout_s),
            Limited::new(body, self.config.max_body_bytes).collect(),
        )
        .await
        .map_err(|_| Refusal::new("body_timeout", "the body did not arrive in time"))?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large(self.config.max_body_bytes)
            } else {
                Refusal::new("request", format!("the body: {e}"))
            }
        })?;
        let body = collected.to_bytes();
        let bundle = self.bundle.get(&self.store).await?;
        let method = parts.method.as_str().to_string();
        let request = Request::Http {
            method: &method,
            url: &url,
            content_type: &content_type,
            body: &body,
        };
        let req_digest = digest(&request)?;
        let (htm, htu) = proof_target(&request)?;
        let mut ctx = Context {
            token: &token,
            proof: proof.as_deref(),
            request_digest: &req_digest,
            htm: &htm,
            htu: &htu,
            audience: &self.gate.audience,
            now,
            skew: self.gate.skew_s,
            nonce: None,
            max_bundle_age: self.gate.max_bundle_age_s,
        };
        let checked = match &self.nonces {
            None => check(default_provider(), &bundle, &ctx),
            Some(n) => {
                let current = n.at(now);
                ctx.nonce = Some(&current);
                match check(default_provider(), &bundle, &ctx) {
                    Err(r) if r.code == "proof_nonce" => {
                        let previous = n.at(now - NONCE_WINDOW_S);
                        ctx.nonce = Some(&previous);
                        check(default_provider(), &bundle, &ctx).map_err(|r| {
                            if r.code == "proof_nonce" {
                                Refusal::new(
                                    "use_dpop_nonce",
                                    "the proof must carry this gateway's DPoP-Nonce",
                                )
                            } else {
                                r
                            }
                        })
                    }
                    other => other,
                }
            }
        }?;
        // The writ's issuance in the log, under a checkpoint consistent with the last seen.
        match &inclusion {
            Some(bytes) => {
                let v = writ_gateway::inclusion::check_inclusion(
                    default_provider(),
                    bytes,
                    &bundle,
                    &token,
                )?;
                self.store
                    .observe_checkpoint_async(&v.checkpoint, v.consistency)
                    .await?;
            }
            None if self.gate.require_inclusion => {
                return Err(Refusal::new(
                    "inclusion_missing",
                    "this gateway requires the writ's inclusion bundle (Writ-Inclusion)",
                ));
            }
            None => {}
        }
        // The action and, where routes are configured, the resource the path is.
        let resource = if self.config.routes.is_empty() {
            None
        } else {
            let routes = self
                .config
                .routes
                .iter()
                .map(|r| (r.prefix.as_str(), r.resource.as_str()));
            Some(
                writ_gateway::act::route(routes, parts.uri.path()).ok_or_else(|| {
                    Refusal::new("resource", "no route of this gateway serves this path")
                })?,
            )
        };
        writ_gateway::act::check_act(checked.claims(), "http", resource)?;
        let (jti, sub) = (checked.claims().jti.clone(), checked.claims().sub.clone());
        let entry =
            writ_gateway::spool::gate_entry(now, &request, checked.claims(), &req_digest, &token);
        let recording = self.store.recording(&entry);
        checked.consume_async(&recording).await?;
        self.metrics.count("allow", "");

        // Forward: the verified request, without what authorized it, with the credentials.
        let upstream_uri = format!("{}{path_and_query}", self.upstream);
        let mut out = HttpRequest::builder()
            .method(parts.method.clone())
            .uri(&upstream_uri)
            .body(Full::new(body))
            .map_err(|e| Refusal::new("upstream", e.to_string()))?;
        let h = out.headers_mut();
        for (name, value) in &parts.headers {
            let n = name.as_str();
            if !CREDENTIAL_HEADERS.contains(&n)
                && !HOP_BY_HOP.contains(&n)
                && !FORWARDING.contains(&n)
                && name != hyper::header::HOST
                && name != hyper::header::CONTENT_LENGTH
            {
                h.append(name.clone(), value.clone());
            }
        }
        for (name, value) in &self.credentials.0 {
            h.insert(name.clone(), value.clone());
        }
        if let (Ok(s), Ok(j)) = (HeaderValue::from_str(&sub), HeaderValue::from_str(&jti)) {
            h.insert("writ-subject", s);
            h.insert("writ-jti", j);
        }
        let answer = tokio::time::timeout(
            Duration::from_secs(self.config.upstream_timeout_s),
            self.client.request(out),
        )
        .await;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (status, result) = match answer {
            Ok(Ok(resp)) => (Some(resp.status().as_u16()), Ok(resp)),
            Ok(Err(e)) => (
                None,
                Err(Refusal::new("upstream", format!("the upstream: {e}"))),
            ),
            Err(_) => (
                None,
                Err(Refusal::new(
                    "upstream",
                    "the upstream did not answer in time",
                )),
            ),
        };
        // The outcome is spooled in the background: the decision already is durable.
        let outcome = json!({"kind": "outcome", "time": crate::now(), "jti": jti,
            "status": status, "duration_ms": duration_ms,
            "error": result.as_ref().err().map(|r| r.detail.clone())});
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            if let Err(r) = store.record_async(&outcome).await {
                eprintln!("writ-gate proxy: an outcome was not spooled: {}", r.detail);
            }
        });
        let resp = result?;
        let (mut parts, body) = resp.into_parts();
        for name in HOP_BY_HOP {
            parts.headers.remove(name);
        }
        self.nonce_header(&mut parts.headers, now);
        Ok(Response::from_parts(parts, body.boxed()))
    }
}

/// Whether `path` percent-escapes what it need not or must not (RFC 3986 unreserved
/// characters, `/`, `\\`, `;`, NUL): an upstream decoding them would serve another path than the
/// routes matched.
fn needless_escape(path: &str) -> bool {
    let b = path.as_bytes();
    b.iter().enumerate().any(|(i, c)| {
        *c == b'%'
            && b.get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .is_none_or(|d| d.is_ascii_alphanumeric() || b"-._~/\\;\0".contains(&d))
    })
}

fn too_large(max: usize) -> Refusal {
    Refusal::new(
        "body_too_large",
        format!("the body is larger than {max} bytes"),
    )
}

/// The one value of header `name`, if any; two are a refusal.
fn one_header<'a>(h: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Refusal> {
    let mut values = h.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Refusal::new(
            "duplicate_header",
            format!("{name} is sent more than once"),
        ));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| Refusal::new("request", format!("{name} is not ASCII")))
}

/// The origin a configuration names: `scheme://host[:port]`, lower case, no path.
fn origin(s: &str) -> Result<String, String> {
    let u: hyper::Uri = s.parse().map_err(|e| format!("public_origin {s:?}: {e}"))?;
    let (Some(scheme), Some(authority)) = (u.scheme_str(), u.authority()) else {
        return Err(format!("public_origin {s:?}: scheme://host[:port]"));
    };
    if u.path() != "/" && !u.path().is_empty() || u.query().is_some() {
        return Err(format!("public_origin {s:?}: no path or query"));
    }
    Ok(format!(
        "{}://{}",
        scheme.to_ascii_lowercase(),
        authority.as_str().to_ascii_lowercase()
    ))
}

/// Runs the proxy until the process is stopped.
pub fn run(
    gate: GateConfig,
    listen: Option<String>,
    upstream: Option<String>,
) -> Result<(), String> {
    let mut config = gate
        .proxy
        .clone()
        .ok_or("the configuration has no [proxy] section")?;
    if let Some(l) = listen {
        config.listen = l;
    }
    if let Some(u) = upstream {
        config.upstream = u;
    }
    let up: hyper::Uri = config
        .upstream
        .parse()
        .map_err(|e| format!("upstream {:?}: {e}", config.upstream))?;
    if up.scheme_str() != Some("http") || up.authority().is_none() {
        return Err(format!(
            "upstream {:?}: http://host:port (an https upstream is not built yet)",
            config.upstream
        ));
    }
    let origin = origin(&config.public_origin)?;
    let uid = crate::own_uid()?;
    let credentials = Credentials::load(config.credentials.as_deref(), uid)?;
    let store = Arc::new(
        SqliteReplay::open_bounded(&gate.replay_db, gate.spool_max).map_err(|r| r.detail)?,
    );
    let nonces = if config.dpop_nonce {
        Some(Nonces::new()?)
    } else {
        None
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|e| format!("listen {}: {e}", config.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let metrics_listener = match &config.metrics_listen {
            Some(m) => Some(
                tokio::net::TcpListener::bind(m)
                    .await
                    .map_err(|e| format!("metrics_listen {m}: {e}"))?,
            ),
            None => None,
        };
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build_http();
        let proxy = Arc::new(Proxy {
            bundle: BundleCache {
                path: gate.bundle.clone(),
                loaded: Mutex::new(None),
            },
            config,
            gate,
            origin,
            upstream: up.to_string().trim_end_matches('/').to_string(),
            store,
            credentials,
            nonces,
            metrics: Metrics::default(),
            client,
        });
        if let Some(l) = metrics_listener {
            let p = Arc::clone(&proxy);
            let a = l.local_addr().map_err(|e| e.to_string())?;
            println!("writ-gate proxy: metrics on http://{a}");
            tokio::spawn(serve_metrics(l, p));
        }
        println!("writ-gate proxy: listening on http://{addr}");
        serve(listener, proxy).await;
        Ok(())
    })
}

async fn serve(listener: tokio::net::TcpListener, proxy: Arc<Proxy>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(proxy.config.max_connections));
    let header_timeout = Duration::from_secs(proxy.config.header_timeout_s);
    loop {
        let (stream, _peer): (tokio::net::TcpStream, SocketAddr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("writ-gate proxy: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let p = Arc::clone(&proxy);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let p = Arc::clone(&p);
                async move { Ok::<_, std::convert::Infallible>(p.handle(req).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = conn.await;
            drop(slot);
        });
    }
}

async fn serve_metrics(listener: tokio::net::TcpListener, proxy: Arc<Proxy>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let p = Arc::clone(&proxy);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: HttpRequest<Incoming>| {
                    let p = Arc::clone(&p);
                    async move {
                        let (status, body) =
                            match req.uri().path() {
                                "/livez" => (StatusCode::OK, "ok\n".to_string()),
                                "/readyz" => match p.bundle.get(&p.store).await.and_then(|b| {
                                    b.check(crate::now(), p.gate.max_bundle_age_s, None)
                                }) {
                                    Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                                    Err(r) => (
                                        StatusCode::SERVICE_UNAVAILABLE,
                                        format!("{}: {}\n", r.code, r.detail),
                                    ),
                                },
                                "/metrics" => (StatusCode::OK, p.metrics.render()),
                                _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
                            };
                        let mut r = Response::new(full(body));
                        *r.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = conn.await;
        });
    }
}
