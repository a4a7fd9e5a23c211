//! The appliance's HTTP server. Built so far: the decision log's read routes.
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/log/checkpoint` | the latest signed checkpoint (C2SP note, `text/plain`) |
//! | `GET /v1/log/keys` | the checkpoint keys the log trusts, with each rotated key's endorsement |
//! | `GET /v1/log/records/{index}` | `{"index","leaf_hash","record"}` (record in base64) |
//! | `GET /v1/log/proof/inclusion?index=I&tree_size=N` (or `hash=` leaf hash hex) | `{"index","tree_size","leaf_hash","proof":[hex]}` |
//! | `GET /v1/log/proof/consistency?first=M&second=N` | `{"first","second","proof":[hex]}` |
//! | `GET /v1/log/bundle?index=I` (or `hash=`)[`&from_size=N`] | the inclusion bundle of interfaces.md, against the latest checkpoint; with `from_size`, plus `consistency` {from, proof} from that tree size |
//! | `GET /v1/log/tile/...` | C2SP tlog-tiles hash tiles and entry bundles |
//!
//! Errors are `application/problem+json` with a stable `code`: out-of-range indices and sizes and
//! malformed parameters are 400, a store that cannot answer is 503, a store that contradicts
//! itself is 500.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::json;
use writ_attestation::log::merkle::Hash;
use writ_attestation::log::tiles::{TILE_HEIGHT, TILE_WIDTH, Tile, entry_bundle};

use crate::appliance::{
    ActivateRequest, Appliance, AttestRequest, EnrollRequest, MAX_ATTEST_BODY, NonceRequest,
    WritRequest,
};
use crate::decision_log::DecisionLog;
use crate::store::StoreError;

/// An error answer.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    code: &'static str,
    detail: String,
    /// About an identified subject (and so logged): not an unidentified refusal.
    identified: bool,
}

impl Problem {
    /// A problem with its status, stable code and detail (never a secret).
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            status,
            code,
            detail: detail.into(),
            identified: false,
        }
    }

    /// Marks the problem as a decision about an identified subject (logged), which the
    /// unidentified-refusal limit does not count.
    pub fn identified(mut self) -> Self {
        self.identified = true;
        self
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What failed.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            status: StatusCode::BAD_REQUEST,
            code,
            detail: detail.into(),
            identified: false,
        }
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::Range(_) => StatusCode::BAD_REQUEST,
            StoreError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        // Out-of-range answers are about the request; anything else stays in the service's
        // log (store errors can name hosts, files or rows).
        let detail = match &e {
            StoreError::Range(_) => e.to_string(),
            _ => {
                tracing::error!(code = e.code(), "store: {e}");
                "the appliance's store cannot answer now".to_string()
            }
        };
        Problem::new(status, e.code(), detail)
    }
}

/// The stable code of a problem answer, for the metrics layer.
#[derive(Debug, Clone, Copy)]
pub struct ProblemCode(pub &'static str);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({
            "type": format!("urn:writ:error:{}", self.code),
            "title": self.code,
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
        });
        let mut r = (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response();
        r.extensions_mut().insert(ProblemCode(self.code));
        if self.identified {
            r.extensions_mut().insert(Identified);
        }
        r
    }
}

/// Marks an answer about an identified subject (see [`Problem::identified`]).
#[derive(Debug, Clone, Copy)]
pub struct Identified;

/// Runs a blocking store call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Problem> {
    work(move || f().map_err(Problem::from)).await
}

fn hexes(proof: &[Hash]) -> Vec<String> {
    proof.iter().map(hex::encode).collect()
}

fn parse_hash(text: &str) -> Result<Hash, Problem> {
    let bytes =
        hex::decode(text).map_err(|_| Problem::bad_request("malformed", "hash is not hex"))?;
    bytes
        .try_into()
        .map_err(|_| Problem::bad_request("malformed", "hash is not 32 bytes"))
}

/// Largest request body accepted, bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// Deepest JSON nesting accepted in a request body.
pub const MAX_JSON_DEPTH: usize = 16;

/// Parses a JSON request body: bounded in size (axum's limit) and nesting depth
/// ([`MAX_JSON_DEPTH`], the strict parser's bound), no duplicate keys, and the type's own rules
/// (unknown fields refused).
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    let v = writ_attestation::writ::json::parse(body)
        .map_err(|r| Problem::bad_request("malformed", r.detail))?;
    serde_json::from_value(v).map_err(|e| Problem::bad_request("malformed", e.to_string()))
}

/// Runs blocking appliance work off the async workers.
async fn work<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("worker: {e}"),
        )
    })?
}

fn ok_json<T: serde::Serialize>(v: &T) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_string)
}

/// Every route of [`appliance_router`] (method, path template), as documented in
/// `docs/openapi.json` (a test holds the two together).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/livez"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/v1/ca.pem"),
    ("POST", "/v1/enroll"),
    ("POST", "/v1/enroll/activate"),
    ("POST", "/v1/attest/nonce"),
    ("POST", "/v1/attest"),
    ("POST", "/v1/admin/profiles"),
    ("POST", "/v1/admin/runtimes/{name}/profile"),
    ("POST", "/v1/admin/runtimes/{name}/rebaseline"),
    ("POST", "/v1/admin/policy"),
    ("POST", "/v1/admin/keys/rotate"),
    ("POST", "/v1/writs"),
    ("GET", "/v1/log/writs/{jti}"),
    ("GET", "/v1/bundle"),
    ("POST", "/v1/svid"),
    ("POST", "/v1/sign/{name}"),
    ("POST", "/v1/admin/ek-registrations"),
    ("POST", "/v1/admin/join-tokens"),
    ("GET", "/v1/admin/runtimes"),
    ("POST", "/v1/admin/runtimes/{name}/revoke"),
    ("POST", "/v1/admin/certificates"),
    ("POST", "/v1/admin/admins/{name}/revoke"),
    ("POST", "/v1/admin/gateways/{name}/revoke"),
    ("POST", "/v1/gateway/reports"),
    ("POST", "/v1/gateway/certificate"),
    ("GET", "/v1/log/checkpoint"),
    ("GET", "/v1/log/keys"),
    ("GET", "/v1/log/records/{index}"),
    ("GET", "/v1/log/proof/inclusion"),
    ("GET", "/v1/log/proof/consistency"),
    ("GET", "/v1/log/bundle"),
    ("GET", "/v1/log/tile/{path}"),
];

/// The OpenAPI document of these routes.
pub const OPENAPI: &str = include_str!("../docs/openapi.json");

/// The appliance's routes: enrollment and admin, with the decision log's read routes.
///
/// | route | answer |
/// |---|---|
/// | `POST /v1/enroll` | a credential challenge ([`crate::appliance::Challenge`]) |
/// | `POST /v1/enroll/activate` | the enrolled runtime's name and SPIFFE ID |
/// | `POST /v1/admin/ek-registrations` `{"ek_certificate_sha256","name"}` | 204 |
/// | `POST /v1/admin/join-tokens` `{"name","ttl_seconds"}` | the token, shown once |
/// | `GET /v1/admin/runtimes` | every runtime and its state |
/// | `POST /v1/admin/runtimes/{name}/revoke` | 204 |
/// | `POST /v1/attest/nonce` `{"name"}` | a nonce and the selection to quote ([`crate::appliance::NonceAnswer`]) |
/// | `POST /v1/attest` | the EAR token ([`crate::appliance::AttestAnswer`]) |
/// | `POST /v1/admin/profiles` `{"name","profile"}` | the profile's digest |
/// | `POST /v1/admin/runtimes/{name}/profile` `{"profile"}` | 204 |
/// | `POST /v1/admin/runtimes/{name}/rebaseline` | 204 |
/// | `POST /v1/admin/policy` (a policy bundle) | its hash |
/// | `POST /v1/admin/keys/rotate` `{"purpose","key"[,"overlap_s","skew_s"]}` | the rotation's schedule ([`crate::appliance::Rotated`]) |
/// | `POST /v1/writs` (`Authorization: DPoP <EAR>`, `DPoP: <proof>`) | an execution or delegation writ ([`crate::appliance::Issued`]) |
/// | `POST /v1/admin/certificates` `{"name","public_key","lifetime_s"[,"role":"gateway"]}` | an admin's (or a gateway's) client certificate (PEM) |
/// | `POST /v1/admin/admins/{name}/revoke` | 204: that admin's certificates no longer authenticate |
/// | `POST /v1/admin/gateways/{name}/revoke` | 204: that gateway's certificates no longer authenticate |
/// | `POST /v1/gateway/reports` `{"spool","entries":[{"seq","entry"}]}` (a gateway's client certificate) | `{"acknowledged": seq}`: its spool entries recorded as `gate` / `outcome` records |
/// | `POST /v1/gateway/certificate` `{"public_key"[,"lifetime_s"]}` (a gateway's client certificate) | its new certificate for the same identity |
/// | `POST /v1/svid` (`Authorization: DPoP <EAR>`) `{"csr"}` | an X.509-SVID for the holder key ([`crate::appliance::SvidIssued`]) |
/// | `POST /v1/sign/{name}` (`Authorization: DPoP <EAR>`) `{"digest"}` or `{"subjects"}` | a raw signature or a DSSE envelope by the named key ([`crate::appliance::SignedArtifact`]) |
/// | `GET /v1/bundle` | the trust bundle (interfaces.md): keys by purpose, the CA, accepted policy bundles, the log's key |
/// | `GET /v1/log/writs/{jti}` | `{"jti","leaf_hash","index"}`: the writ's `issue` record (for `writ audit lineage`) |
pub fn appliance_router(app: Arc<Appliance>) -> Router {
    appliance_router_limited(app, Arc::new(UnidentifiedLimit::new(60)))
}

/// [`appliance_router`] with its limit of unidentified refusals.
pub fn appliance_router_limited(app: Arc<Appliance>, limit: Arc<UnidentifiedLimit>) -> Router {
    let metrics = Arc::clone(app.metrics());
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/v1/ca.pem", get(ca_pem))
        .route("/v1/enroll", post(enroll_start))
        .route("/v1/enroll/activate", post(enroll_activate))
        .route("/v1/attest/nonce", post(attest_nonce))
        // An event log in base64 is larger than other bodies (the route's bound wins).
        .route(
            "/v1/attest",
            post(attest).layer(axum::extract::DefaultBodyLimit::max(MAX_ATTEST_BODY)),
        )
        .route("/v1/admin/profiles", post(admin_load_profile))
        .route(
            "/v1/admin/runtimes/{name}/profile",
            post(admin_assign_profile),
        )
        .route(
            "/v1/admin/runtimes/{name}/rebaseline",
            post(admin_rebaseline),
        )
        .route(
            "/v1/admin/policy",
            post(admin_load_policy).layer(axum::extract::DefaultBodyLimit::max(
                crate::policy::MAX_BUNDLE,
            )),
        )
        .route("/v1/admin/keys/rotate", post(admin_rotate_key))
        .route("/v1/writs", post(issue_writ))
        .route("/v1/log/writs/{jti}", get(writ_record))
        .route("/v1/bundle", get(trust_bundle))
        .route("/v1/svid", post(issue_svid))
        .route("/v1/sign/{name}", post(sign))
        .route("/v1/admin/ek-registrations", post(admin_register_ek))
        .route("/v1/admin/join-tokens", post(admin_join_token))
        .route("/v1/admin/runtimes", get(admin_runtimes))
        .route("/v1/admin/runtimes/{name}/revoke", post(admin_revoke))
        .route("/v1/admin/certificates", post(admin_certificate))
        .route(
            "/v1/admin/gateways/{name}/revoke",
            post(admin_revoke_gateway),
        )
        .route(
            "/v1/gateway/reports",
            post(gateway_report).layer(axum::extract::DefaultBodyLimit::max(
                crate::appliance::MAX_REPORT_BODY,
            )),
        )
        .route("/v1/gateway/certificate", post(gateway_certificate))
        .route("/v1/admin/admins/{name}/revoke", post(admin_revoke_admin))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(Arc::clone(&app))
        .merge(log_router(Arc::clone(app.log())))
        // The request bound inside the metrics layer, so that timeouts are counted (serve's
        // own bound stays as the backstop for any router).
        .layer(axum::middleware::from_fn(
            |req: axum::extract::Request, next: axum::middleware::Next| async move {
                match tokio::time::timeout(Limits::default().request, next.run(req)).await {
                    Ok(r) => r,
                    Err(_) => Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "timeout",
                        "the request was not completed in time",
                    )
                    .into_response(),
                }
            },
        ))
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let metrics = Arc::clone(&metrics);
                let limit = Arc::clone(&limit);
                async move {
                    let route = req
                        .extensions()
                        .get::<axum::extract::MatchedPath>()
                        .map_or("unmatched", |m| m.as_str())
                        .to_string();
                    let peer = req
                        .extensions()
                        .get::<Peer>()
                        .map(|p| limit.client(p.0, req.headers()));
                    let started = std::time::Instant::now();
                    // The log's read routes stay open to auditors behind a shared address.
                    let limited = route.starts_with("/v1/")
                        && !route.starts_with("/v1/log/")
                        && peer.is_some_and(|ip| limit.blocked(ip));
                    let resp = if limited {
                        Problem::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            "rate_limited",
                            "too many unidentified requests from this address; wait a minute",
                        )
                        .into_response()
                    } else {
                        next.run(req).await
                    };
                    let code = resp.extensions().get::<ProblemCode>().map_or("ok", |c| c.0);
                    if let Some(ip) = peer
                        && !limited
                        && resp.extensions().get::<Identified>().is_none()
                        && unidentified(resp.status(), code)
                    {
                        limit.count(ip);
                    }
                    metrics.request(&route, resp.status().as_u16(), code, started.elapsed());
                    if resp.status() == StatusCode::SERVICE_UNAVAILABLE
                        && dependency_of(code) != "none"
                    {
                        metrics.error(dependency_of(code), code);
                    }
                    resp
                }
            },
        ))
}

/// Which dependency a 503's code names.
fn dependency_of(code: &str) -> &'static str {
    match code {
        "checkpoint_signing" => "custody",
        "clock" => "clock",
        "rng" => "rng",
        "timeout" => "time",
        "not_yet_checkpointed" => "none",
        "checkpoint_stale" | "log_corrupt" | "store_stopped" => "log",
        _ => "store",
    }
}

async fn ca_pem(State(app): State<Arc<Appliance>>) -> Result<Response, Problem> {
    if !app.serves_tls() {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "tls_off",
            "this appliance serves plain HTTP on loopback: it has no CA certificate",
        ));
    }
    let pem = app.ca_certificate_pem().ok_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ca_certificate",
            "no CA certificate is published now (the ca key's schedule)",
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response())
}

async fn readyz(State(app): State<Arc<Appliance>>) -> Response {
    let checks = tokio::task::spawn_blocking(move || app.readiness())
        .await
        .unwrap_or_default();
    let ready = !checks.is_empty() && checks.iter().all(|(_, r)| r.is_ok());
    let body: serde_json::Map<String, serde_json::Value> = checks
        .into_iter()
        .map(|(name, r)| {
            (
                name.to_string(),
                match r {
                    Ok(()) => json!("ok"),
                    Err(code) => json!(code),
                },
            )
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(json!({"ready": ready, "checks": body}))).into_response()
}

async fn metrics_text(State(app): State<Arc<Appliance>>) -> Response {
    let log = app.log();
    let (size, _) = log.head();
    let failures = log.signing_failures();
    let text = app.metrics().render(&[
        (
            "writ_log_size",
            "Records in the decision log.",
            "gauge",
            size as f64,
        ),
        (
            "writ_checkpoint_signing_failures_total",
            "Checkpoint signatures the custody key failed to make.",
            "counter",
            failures as f64,
        ),
    ]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn enroll_start(
    State(app): State<Arc<Appliance>>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let req: EnrollRequest = json_body(&body)?;
    work(move || app.enroll_start(&req))
        .await
        .map(|c| ok_json(&c))
}

async fn enroll_activate(
    State(app): State<Arc<Appliance>>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let req: ActivateRequest = json_body(&body)?;
    work(move || app.enroll_activate(&req))
        .await
        .map(|c| ok_json(&c))
}

async fn attest_nonce(
    State(app): State<Arc<Appliance>>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let req: NonceRequest = json_body(&body)?;
    work(move || app.attest_nonce(&req))
        .await
        .map(|n| ok_json(&n))
}

async fn attest(
    State(app): State<Arc<Appliance>>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    work(move || {
        let req: AttestRequest = json_body(&body)?;
        app.attest(&req)
    })
    .await
    .map(|a| ok_json(&a))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadProfile {
    name: String,
    profile: serde_json::Value,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignProfile {
    profile: String,
}

async fn admin_load_profile(
    State(app): State<Arc<Appliance>>,
    Admin(admin): Admin,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    work(move || {
        let req: LoadProfile = json_body(&body).map_err(|p| app.admin_refused(&admin, p))?;
        app.load_profile(&admin, &req.name, &req.profile)
    })
    .await
    .map(|id| ok_json(&json!({ "digest": id })))
}

async fn admin_assign_profile(
    State(app): State<Arc<Appliance>>,
    Admin(admin): Admin,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    work(move || {
        let req: AssignProfile = json_body(&body).map_err(|p| app.admin_refused(&admin, p))?;
        app.assign_profile(&admin, &name, &req.profile)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn admin_load_policy(
    State(app): State<Arc<Appliance>>,
    Admin(admin): Admin,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    work(move || app.load_policy(&admin, &body))
        .await
        .map(|hash| ok_json(&json!({ "policy_bundle_hash": hash })))
}

/// The value of a header, if it is one valid string.
fn header_text(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    if all.next().is_some() {
        return None;
    }
    first.to_str().ok().map(str::to_string)
}

async fn issue_writ(
    State(app): State<Arc<Appliance>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let req: WritRequest = json_body(&body)?;
    let ear = header_text(&headers, "authorization")
        .and_then(|v| v.strip_prefix("DPoP ").map(str::to_string));
    let proof = header_text(&headers, "dpop");
    let htu = htu_of(&app, &headers, "/v1/writs")?;
    work(move || app.issue(ear.as_deref(), proof.as_deref(), &htu, &req))
        .await
        .map(|w| ok_json(&w))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateRequest {
    name: String,
    /// `admin` (default) or `gateway`.
    #[serde(default)]
    role: Option<String>,
    /// base64 of the DER SubjectPublicKeyInfo (P-256).
    public_key: String,
    #[serde(default = "default_admin_cert_lifetime")]
    lifetime_s: u64,
}

fn default_admin_cert_lifetime() -> u64 {
    7 * 86_400
}

async fn admin_certificate(
    State(app): State<Arc<Appliance>>,
    Admin(admin): Admin,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let name_and_key = json_body::<CertificateRequest>(&body).and_then(|req| {
        let spki = STANDARD
            .decode(req.public_key.as_bytes())
            .map_err(|_| Problem::bad_request("malformed", "public_key is not base64"))?;
        Ok((req, spki))
    });
    let (req, spki) = match name_and_key {
        Ok(x) => x,
        // The admin is identified: its malformed request is a record like its other refusals.
        Err(p) => return Err(work(move || Ok(app.admin_refused(&admin, p))).await?),
    };
    let role = match req.role.as_deref() {
        None | Some("admin") => crate::appliance::Role::Admin,
        Some("gateway") => crate::appliance::Role::Gateway,
        Some(_) => {
            let p = Problem::bad_request("malformed", "role is admin or gateway");
            return Err(work(move || Ok(app.admin_refused(&admin, p))).await?);
        }
    };
    let name = req.name.clone();
    let td = app.trust_domain().to_string();
    let pem =
        work(move || app.issue_client_certificate(&admin, role, &req.name, &spki, req.lifetime_s))
            .await?;
    Ok(axum::Json(json!({
        "certificate": pem,
        "spiffe_id": format!("spiffe://{td}/{}/{name}", role.path()),
    }))
    .into_response())
}

async fn admin_revoke_gateway(
    State(app): State<Arc<Appliance>>,
    Admin(admin): Admin,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    work(move || app.revoke_client(&admin, crate::appliance::Role::Gateway, &name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    /// The spool's random identity (a new spool starts its numbering again).
    spool: String,
    entries: Vec<crate::appliance::ReportEntry>,
}

async fn gateway_report(
    State(app): State<Arc<Appliance>>,
    Gateway(gateway): Gateway,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let report = match json_body::<Report>(&body) {
        Ok(r) => r,
        // The gateway is identified: its malformed report is a record like its other refusals.
        Err(p) => return Err(work(move || Ok(app.report_refused(&gateway, p))).await?),
    };
    let acked = work(move || app.report(&gateway, &report.spool, &report.entries)).await?;
    Ok(axum::Json(json!({"acknowledged": acked})).into_response())
}

async fn admin_rotate_key(
    State(app): State<Arc<Appliance>>,
    Admin(admin): Admin,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let req: crate::appliance::RotateRequest = match json_body(&body) {
        Ok(r) => r,
        Err(p) => return Err(work(move || Ok(app.admin_refused(&admin, p))).await?),
    };
    work(move || app.rotate_key(&admin, &req))
        .await
        .map(|r| ok_json(&r))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewalRequest {
    /// base64 of the new key's DER SubjectPublicKeyInfo (P-256).
    public_key: String,
    #[serde(default = "default_admin_cert_lifetime")]
    lifetime_s: u64,
}

/// A gateway renews its own certificate with the one it has.
async fn gateway_certificate(
    State(app): State<Arc<Appliance>>,
    Gateway(gateway): Gateway,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let parsed = json_body::<RenewalRequest>(&body).and_then(|r| {
        let spki = STANDARD
            .decode(r.public_key.as_bytes())
            .map_err(|_| Problem::bad_request("malformed", "public_key is not base64"))?;
        Ok((spki, r.lifetime_s))
    });
    let (spki, lifetime) = match parsed {
        Ok(x) => x,
        Err(p) => return Err(work(move || Ok(app.admin_refused(&gateway, p))).await?),
    };
    let id = gateway.clone();
    let pem = work(move || app.renew_gateway_certificate(&gateway, &spki, lifetime)).await?;
    Ok(axum::Json(json!({"certificate": pem, "spiffe_id": id})).into_response())
}

async fn admin_revoke_admin(
    State(app): State<Arc<Appliance>>,
    Admin(admin): Admin,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    work(move || app.revoke_admin(&admin, &name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The URL a DPoP proof for `path` must name: the scheme this appliance serves and the Host the
/// client used, which must be an origin this appliance is known by (a proof made for another
/// server never passes here by a Host header chosen to match it).
fn htu_of(app: &Appliance, headers: &axum::http::HeaderMap, path: &str) -> Result<String, Problem> {
    let scheme = if app.serves_tls() { "https" } else { "http" };
    let host = header_text(headers, "host").unwrap_or_default();
    let origin = format!("{scheme}://{}", host.to_ascii_lowercase());
    if !app.is_origin(&origin) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "htu_origin",
            format!("{origin} is not an address of this appliance (tls.names)"),
        ));
    }
    Ok(format!("{origin}{path}"))
}

async fn issue_svid(
    State(app): State<Arc<Appliance>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let req: crate::appliance::SvidRequest = json_body(&body)?;
    let ear = header_text(&headers, "authorization")
        .and_then(|v| v.strip_prefix("DPoP ").map(str::to_string));
    let proof = header_text(&headers, "dpop");
    let htu = htu_of(&app, &headers, "/v1/svid")?;
    work(move || app.issue_svid(ear.as_deref(), proof.as_deref(), &htu, &req))
        .await
        .map(|w| ok_json(&w))
}

async fn sign(
    State(app): State<Arc<Appliance>>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let req: crate::appliance::SignRequest = json_body(&body)?;
    let ear = header_text(&headers, "authorization")
        .and_then(|v| v.strip_prefix("DPoP ").map(str::to_string));
    let proof = header_text(&headers, "dpop");
    // The proof names the path as the client wrote it; a name that is no key's (any name
    // outside a-z 0-9 - _ . among them) is refused, and recorded, as key_unknown.
    let htu = htu_of(&app, &headers, &format!("/v1/sign/{name}"))?;
    work(move || app.sign(&name, ear.as_deref(), proof.as_deref(), &htu, &req))
        .await
        .map(|w| ok_json(&w))
}

async fn trust_bundle(State(app): State<Arc<Appliance>>) -> Result<Response, Problem> {
    let b = work(move || app.trust_bundle()).await?;
    Ok((
        [(
            header::CACHE_CONTROL,
            format!("max-age={}", crate::appliance::REFRESH_HINT_S),
        )],
        axum::Json(b),
    )
        .into_response())
}

async fn writ_record(
    State(app): State<Arc<Appliance>>,
    Path(jti): Path<String>,
) -> Result<Response, Problem> {
    if jti.is_empty()
        || jti.len() > 64
        || !jti
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Problem::bad_request("malformed", "a jti is base64url"));
    }
    let j = jti.clone();
    let (leaf, index) = work(move || {
        let leaf = app.writ_record(&j)?;
        let index = match &leaf {
            Some(l) => {
                let h = parse_hash(l.strip_prefix("sha256:").unwrap_or(l))?;
                app.log()
                    .index_of(&h)
                    .map_err(crate::appliance::store_problem)?
            }
            None => None,
        };
        Ok::<_, Problem>(leaf.zip(index))
    })
    .await?
    .ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no writ with this jti was issued here",
        )
    })?;
    Ok(axum::Json(json!({
        "jti": jti,
        "leaf_hash": leaf.strip_prefix("sha256:").unwrap_or(&leaf),
        "index": index,
    }))
    .into_response())
}

async fn admin_rebaseline(
    State(app): State<Arc<Appliance>>,
    Admin(admin): Admin,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    work(move || app.rebaseline(&admin, &name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterEk {
    ek_certificate_sha256: String,
    name: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewJoinToken {
    name: String,
    #[serde(default = "default_token_ttl")]
    ttl_seconds: i64,
}

fn default_token_ttl() -> i64 {
    3600
}

async fn admin_register_ek(
    State(app): State<Arc<Appliance>>,
    Admin(admin): Admin,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    work(move || {
        let req: RegisterEk = json_body(&body).map_err(|p| app.admin_refused(&admin, p))?;
        app.register_ek(&admin, &req.ek_certificate_sha256, &req.name)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn admin_join_token(
    State(app): State<Arc<Appliance>>,
    Admin(admin): Admin,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    work(move || {
        let req: NewJoinToken = json_body(&body).map_err(|p| app.admin_refused(&admin, p))?;
        app.issue_join_token(&admin, &req.name, req.ttl_seconds)
    })
    .await
    .map(|t| ok_json(&t))
}

async fn admin_runtimes(
    State(app): State<Arc<Appliance>>,
    Admin(admin): Admin,
) -> Result<Response, Problem> {
    work(move || app.runtimes(&admin))
        .await
        .map(|l| ok_json(&l))
}

async fn admin_revoke(
    State(app): State<Arc<Appliance>>,
    Admin(admin): Admin,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    work(move || app.revoke(&admin, &name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The decision log's routes.
pub fn log_router(log: Arc<DecisionLog>) -> Router {
    Router::new()
        .route("/v1/log/checkpoint", get(checkpoint))
        .route("/v1/log/keys", get(log_keys))
        .route("/v1/log/records/{index}", get(record))
        .route("/v1/log/proof/inclusion", get(inclusion))
        .route("/v1/log/proof/consistency", get(consistency))
        .route("/v1/log/bundle", get(bundle))
        .route("/v1/log/tile/{*path}", get(tile))
        .with_state(log)
}

async fn checkpoint(State(log): State<Arc<DecisionLog>>) -> Result<Response, Problem> {
    let cp = log.latest_checkpoint().ok_or(Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "checkpoint_stale",
        "no checkpoint published yet",
    ))?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        cp.note,
    )
        .into_response())
}

/// The checkpoint keys the log trusts, with the endorsement of each rotated key by the key that
/// signed when it was scheduled: an auditor that trusts an earlier key follows the rotation.
async fn log_keys(State(log): State<Arc<DecisionLog>>) -> Response {
    axum::Json(json!({"origin": log.origin(), "keys": log.listed_keys()})).into_response()
}

async fn record(
    State(log): State<Arc<DecisionLog>>,
    Path(index): Path<String>,
) -> Result<Response, Problem> {
    let index: u64 = index
        .parse()
        .map_err(|_| Problem::bad_request("malformed", "index is not a number"))?;
    let r = blocking(move || log.record(index)).await?;
    Ok(axum::Json(json!({
        "index": index,
        "leaf_hash": hex::encode(writ_attestation::log::merkle::leaf_hash(&r)),
        "record": STANDARD.encode(&r),
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
struct InclusionQuery {
    index: Option<u64>,
    hash: Option<String>,
    tree_size: Option<u64>,
    /// For `/v1/log/bundle`: a tree size the relying party saw; the bundle then carries the
    /// consistency proof from it.
    from_size: Option<u64>,
}

/// Resolves `index=` or `hash=` to an index.
async fn locate(log: &Arc<DecisionLog>, q: &InclusionQuery) -> Result<u64, Problem> {
    match (q.index, &q.hash) {
        (Some(i), None) => Ok(i),
        (None, Some(h)) => {
            let h = parse_hash(h)?;
            let l = Arc::clone(log);
            blocking(move || l.index_of(&h))
                .await?
                .ok_or_else(|| Problem::bad_request("not_found", "no record has this leaf hash"))
        }
        _ => Err(Problem::bad_request(
            "malformed",
            "give exactly one of index= and hash=",
        )),
    }
}

async fn inclusion(
    State(log): State<Arc<DecisionLog>>,
    Query(q): Query<InclusionQuery>,
) -> Result<Response, Problem> {
    let index = locate(&log, &q).await?;
    let size = q
        .tree_size
        .ok_or_else(|| Problem::bad_request("malformed", "tree_size is required"))?;
    if index >= size {
        return Err(Problem::bad_request(
            "out_of_range",
            format!("index {index} is not below tree_size {size}"),
        ));
    }
    let l = Arc::clone(&log);
    let (proof, record) =
        blocking(move || Ok((l.inclusion_proof(index, size)?, l.record(index)?))).await?;
    Ok(axum::Json(json!({
        "index": index,
        "tree_size": size,
        "leaf_hash": hex::encode(writ_attestation::log::merkle::leaf_hash(&record)),
        "proof": hexes(&proof),
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
struct ConsistencyQuery {
    first: u64,
    second: u64,
}

async fn consistency(
    State(log): State<Arc<DecisionLog>>,
    Query(q): Query<ConsistencyQuery>,
) -> Result<Response, Problem> {
    if q.first > q.second {
        return Err(Problem::bad_request(
            "out_of_range",
            format!("first {} is larger than second {}", q.first, q.second),
        ));
    }
    let (first, second) = (q.first, q.second);
    let proof = blocking(move || {
        if first == 0 {
            // Every tree extends the empty one: nothing to prove.
            log.root_at(second).map(|_| Vec::new())
        } else {
            log.consistency_proof(first, second)
        }
    })
    .await?;
    Ok(
        axum::Json(json!({"first": first, "second": second, "proof": hexes(&proof)}))
            .into_response(),
    )
}

async fn bundle(
    State(log): State<Arc<DecisionLog>>,
    Query(q): Query<InclusionQuery>,
) -> Result<Response, Problem> {
    let index = locate(&log, &q).await?;
    let cp = log.latest_checkpoint().ok_or(Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "checkpoint_stale",
        "no checkpoint published yet",
    ))?;
    if index >= cp.size {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_yet_checkpointed",
            format!(
                "record {index} is not yet covered by a checkpoint (size {}); retry within the checkpoint interval",
                cp.size
            ),
        ));
    }
    let size = cp.size;
    if let Some(from) = q.from_size
        && from > size
    {
        return Err(Problem::bad_request(
            "out_of_range",
            format!("from_size {from} is larger than the latest checkpoint's {size}"),
        ));
    }
    let l = Arc::clone(&log);
    let from = q.from_size;
    let (proof, record, consistency) = blocking(move || {
        let consistency = match from {
            Some(f) if f > 0 && f < size => Some(l.consistency_proof(f, size)?),
            Some(_) => Some(Vec::new()),
            None => None,
        };
        Ok((
            l.inclusion_proof(index, size)?,
            l.record(index)?,
            consistency,
        ))
    })
    .await?;
    let mut body = json!({
        "record": STANDARD.encode(&record),
        "index": index,
        "tree_size": size,
        "proof": hexes(&proof),
        "checkpoint": cp.note,
    });
    if let (Some(f), Some(c), Some(o)) = (from, consistency, body.as_object_mut()) {
        o.insert("consistency".into(), json!({"from": f, "proof": hexes(&c)}));
    }
    Ok(axum::Json(body).into_response())
}

async fn tile(
    State(log): State<Arc<DecisionLog>>,
    Path(path): Path<String>,
) -> Result<Response, Problem> {
    let t = Tile::parse(&format!("tile/{path}"))
        .map_err(|e| Problem::bad_request("malformed", e.to_string()))?;
    let start = t
        .index
        .checked_mul(TILE_WIDTH)
        .ok_or_else(|| Problem::bad_request("out_of_range", "tile index too large"))?;
    let body = match t.level {
        None => {
            let records = blocking(move || log.records(start, t.width)).await?;
            entry_bundle(&records).map_err(|e| {
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?
        }
        Some(l) => {
            let level = u32::from(l) * TILE_HEIGHT;
            let hashes = blocking(move || log.level_hashes(level, start, t.width)).await?;
            hashes.concat()
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            // Tiles never change once they exist.
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response())
}

/// Connection limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time a client has to send a request's headers (also the idle time allowed between
    /// requests on a kept-alive connection).
    pub header_read: Duration,
    /// Time a request has, headers to answer (a slow body counts).
    pub request: Duration,
    /// Longest life of one connection.
    pub connection: Duration,
    /// Connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// Connections open at once from one address (an IPv4 address or an IPv6 /64; trusted proxies
    /// excepted); more from it are closed at accept, so one host cannot take every slot.
    pub max_connections_per_address: usize,
}

/// The address a request came from (set by [`serve`] on every connection).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::IpAddr);

/// The connection's client certificate, if it presented one (it chains to the appliance's CA
/// and carries clientAuth: checked at the handshake). Set by [`serve`] on every connection.
#[derive(Debug, Clone, Default)]
pub struct PeerId(pub Option<ClientCert>);

/// What the appliance reads from a verified client certificate.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// Its one SPIFFE ID (none if it names no or several SPIFFE IDs: it names nobody).
    pub spiffe_id: Option<String>,
    /// Its serial number (hex).
    pub serial: String,
}

/// An admin, authenticated by a client certificate with an admin SPIFFE ID or by the admin
/// token ([`Appliance::admin`]); its SPIFFE ID.
#[derive(Debug)]
pub struct Admin(pub String);

/// A gateway, by its client certificate (`spiffe://<td>/gateway/<name>`, registered, not
/// revoked); anything else is refused (`gateway_forbidden`, `gateway_revoked`; 401 without a
/// certificate).
#[derive(Debug)]
pub struct Gateway(pub String);

impl axum::extract::FromRequestParts<Arc<Appliance>> for Gateway {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &Arc<Appliance>,
    ) -> Result<Self, Self::Rejection> {
        let Some(cert) = parts.extensions.get::<PeerId>().and_then(|p| p.0.clone()) else {
            return Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "gateway_unauthorized",
                "a gateway's client certificate is required",
            ));
        };
        let app = Arc::clone(app);
        work(move || app.registered_client(&cert, crate::appliance::Role::Gateway))
            .await
            .map(Gateway)
    }
}

impl axum::extract::FromRequestParts<Arc<Appliance>> for Admin {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &Arc<Appliance>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<PeerId>().and_then(|p| p.0.clone());
        let token = bearer(&parts.headers);
        match peer {
            // The token alone: checked here, no blocking work for callers without a credential.
            None => app.admin(token.as_deref()).map(Admin),
            // A certificate: its registration is read, and a refusal of an identified caller
            // (a runtime's certificate) is a record: blocking work.
            Some(cert) => {
                let app = Arc::clone(app);
                work(move || app.admin_by_certificate(&cert))
                    .await
                    .map(Admin)
            }
        }
    }
}

/// Refusals before anyone is identified (no or wrong credential, unknown enrollment, malformed
/// or oversize body) are not logged one by one; they are counted and, per source address,
/// limited: past `per_minute` in a minute, that address gets `429 rate_limited` on every `/v1`
/// route until the minute ends.
#[derive(Debug)]
pub struct UnidentifiedLimit {
    per_minute: u32,
    trusted_proxies: Vec<std::net::IpAddr>,
    seen: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (std::time::Instant, u32)>>,
    swept: std::sync::Mutex<std::time::Instant>,
}

/// The bucket shared by new addresses once the table is full.
const OVERFLOW: std::net::IpAddr = std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

/// The source a budget belongs to: an IPv4 address (IPv4-mapped IPv6 included), or an IPv6
/// /64 (one host's usual allocation).
fn source(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip.to_canonical() {
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            std::net::IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Addresses remembered at most (older windows are dropped first).
const MAX_TRACKED: usize = 100_000;

impl UnidentifiedLimit {
    /// A limit of `per_minute` unidentified refusals per address.
    pub fn new(per_minute: u32) -> Self {
        UnidentifiedLimit {
            per_minute,
            trusted_proxies: Vec::new(),
            seen: std::sync::Mutex::new(std::collections::HashMap::new()),
            swept: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }

    /// The same limit, counting a request that arrives from one of `proxies` against the address
    /// the proxy names: the last entry of `X-Forwarded-For` (the one the proxy appended; earlier
    /// entries are the client's to invent). Requests from anyone else are counted against their
    /// own address, whatever header they send.
    pub fn trusting(mut self, proxies: Vec<std::net::IpAddr>) -> Self {
        self.trusted_proxies = proxies.into_iter().map(|ip| ip.to_canonical()).collect();
        self
    }

    /// The address a request is counted against.
    fn client(&self, peer: std::net::IpAddr, headers: &axum::http::HeaderMap) -> std::net::IpAddr {
        if !self.trusted_proxies.contains(&peer.to_canonical()) {
            return peer;
        }
        headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|a| a.trim().parse::<std::net::IpAddr>().ok())
            .unwrap_or(peer)
    }

    fn blocked(&self, ip: std::net::IpAddr) -> bool {
        let ip = source(ip);
        let Ok(mut m) = self.seen.lock() else {
            return true;
        };
        match m.get(&ip) {
            Some((start, n)) if start.elapsed() < Duration::from_secs(60) => *n >= self.per_minute,
            Some(_) => {
                m.remove(&ip);
                false
            }
            None => false,
        }
    }

    fn count(&self, ip: std::net::IpAddr) {
        let mut ip = source(ip);
        let Ok(mut m) = self.seen.lock() else {
            return;
        };
        if m.len() >= MAX_TRACKED && !m.contains_key(&ip) {
            let Ok(mut swept) = self.swept.lock() else {
                return;
            };
            if swept.elapsed() >= Duration::from_secs(1) {
                m.retain(|_, (start, _)| start.elapsed() < Duration::from_secs(60));
                *swept = std::time::Instant::now();
            }
            // Still full: every new address shares one bucket (limited, never uncounted).
            if m.len() >= MAX_TRACKED {
                ip = OVERFLOW;
            }
        }
        let e = m.entry(ip).or_insert((std::time::Instant::now(), 0));
        if e.0.elapsed() >= Duration::from_secs(60) {
            *e = (std::time::Instant::now(), 0);
        }
        e.1 = e.1.saturating_add(1);
    }
}

/// Codes of refusals made before anyone was identified.
fn unidentified(status: StatusCode, code: &str) -> bool {
    status == StatusCode::PAYLOAD_TOO_LARGE
        || matches!(
            code,
            "enrollment_unauthorized"
                | "enrollment_unknown"
                | "admin_unauthorized"
                | "malformed"
                // Attestation before the quote's signature verified with the runtime's AK.
                | "runtime_unknown"
                | "signature"
                | "signature_scheme"
                | "hash_too_weak"
                | "unsupported_algorithm"
                // Issuance before the EAR token verified.
                | "ear_missing"
                | "ear_invalid"
                | "ear_expired"
                | "htu_origin"
        )
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read: Duration::from_secs(10),
            request: Duration::from_secs(30),
            connection: Duration::from_secs(300),
            max_connections: 4096,
            max_connections_per_address: 256,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes. Every connection is bounded: its
/// headers must arrive within `header_read` (idle keep-alive connections are closed after it
/// too), each request must be answered within `request` (else 503 `timeout`), the connection
/// lives at most `connection`, and at most `max_connections` are open at once. Idle or slow
/// sockets therefore cost a task each, never a worker, and cannot starve a real client.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_behind(listener, router, limits, tls, Arc::new([]), shutdown).await
}

/// [`serve`], with the addresses of trusted reverse proxies, which are exempt from the
/// per-address connection bound (their clients' addresses come from `X-Forwarded-For`, see
/// [`UnidentifiedLimit::trusting`]).
pub async fn serve_behind(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    trusted_proxies: Arc<[std::net::IpAddr]>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let per_address = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        std::net::IpAddr,
        usize,
    >::new()));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let request_limit = limits.request;
    let router = router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| async move {
            match tokio::time::timeout(request_limit, next.run(req)).await {
                Ok(r) => r,
                Err(_) => Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "timeout",
                    "the request was not completed in time",
                )
                .into_response(),
            }
        },
    ));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                // Out of descriptors and the like: wait a little rather than spin.
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            drop(stream);
            continue;
        };
        // One address's share: its connections counted while they live.
        let address_slot = if trusted_proxies.contains(&peer.ip().to_canonical()) {
            None
        } else {
            match AddressSlot::take(&per_address, peer.ip(), limits.max_connections_per_address) {
                Some(s) => Some(s),
                None => {
                    drop(stream);
                    continue;
                }
            }
        };
        let router = router.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read)
                .keep_alive(true);
            match acceptor {
                // The handshake is bounded like the headers: a silent client costs a task only.
                Some(acceptor) => {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(limits.header_read, acceptor.accept(stream)).await
                    else {
                        drop(slot);
                        return;
                    };
                    // A client certificate (verified against the CA at the handshake) names
                    // its holder by its SPIFFE ID; what it may do is decided per route.
                    let id = PeerId(
                        tls.get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| ClientCert {
                                spiffe_id: crate::tls::spiffe_ids(c.as_ref()).ok().and_then(
                                    |ids| match ids.as_slice() {
                                        [one] => Some(one.clone()),
                                        _ => None,
                                    },
                                ),
                                serial: crate::tls::certificate_serial(c.as_ref())
                                    .unwrap_or_default(),
                            }),
                    );
                    let service = hyper_util::service::TowerToHyperService::new(
                        router
                            .layer(axum::Extension(Peer(peer.ip())))
                            .layer(axum::Extension(id)),
                    );
                    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), service);
                    let _ = tokio::time::timeout(limits.connection, conn).await;
                }
                None => {
                    let service = hyper_util::service::TowerToHyperService::new(
                        router
                            .layer(axum::Extension(Peer(peer.ip())))
                            .layer(axum::Extension(PeerId(None))),
                    );
                    let conn =
                        builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    let _ = tokio::time::timeout(limits.connection, conn).await;
                }
            }
            drop(address_slot);
            drop(slot);
        });
    }
}

/// One connection counted against its source address (an IPv4 address or an IPv6 /64) until
/// dropped.
struct AddressSlot {
    table: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    source: std::net::IpAddr,
}

impl AddressSlot {
    fn take(
        table: &Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
        ip: std::net::IpAddr,
        max: usize,
    ) -> Option<Self> {
        let source = source(ip);
        let mut t = table.lock().ok()?;
        let n = t.entry(source).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: Arc::clone(table),
            source,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Ok(mut t) = self.table.lock()
            && let Some(n) = t.get_mut(&self.source)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.remove(&self.source);
            }
        }
    }
}
