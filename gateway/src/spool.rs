//! What the gateway spools of an allowed request: one `gate` entry shape for `exec` and
//! `proxy`, which the appliance turns into a `gate` decision record when the spool is reported.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use writ_attestation::writ::claims::WritClaims;
use writ_attestation::writ::request::Request;

/// The `gate` entry of an allowed request at `now`: what the request was (a command's tool and
/// argument count; an HTTP request's method and URL without its query, which may hold secrets,
/// and the query's SHA-256), and the writ (`jti`, `sub`, `aud`, the request digest `req`, and
/// the digest of the compact writ `token`, as its `issue` record names it).
pub fn gate_entry(
    now: i64,
    request: &Request<'_>,
    claims: &WritClaims,
    req: &str,
    token: &str,
) -> Value {
    let summary = match request {
        Request::Exec { tool, argv } => json!({"type": "exec", "tool": tool, "argc": argv.len()}),
        Request::Http { method, url, .. } => {
            let (path, query) = match url.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (*url, None),
            };
            json!({"type": "http", "method": method, "url": path,
                   "query": query.map(|q| format!("sha256:{}", hex::encode(Sha256::digest(q.as_bytes()))))})
        }
    };
    json!({"kind": "gate", "time": now, "decision": "allow", "request": summary,
           "writ": {"jti": claims.jti, "sub": claims.sub, "aud": claims.aud, "request": req,
                    "digest": writ_attestation::writ::token_digest(token)}})
}
