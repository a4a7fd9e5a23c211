//! Request digests (`act.req`, interfaces.md): `sha256:` + hex(SHA-256(RFC 8785 canonical JSON of
//! the request object)). One function for the agent and the gateway.
//!
//! * Command: `{"type":"exec","tool":<tool name>,"argv":[arguments after the tool name]}`. The
//!   tool is a name from the gateway's manifest, never a path: which file runs is the gateway's
//!   manifest's business (path, SHA-256 of the file, fixed environment).
//! * HTTP: `{"type":"http","method":<upper case>,"url":<origin + path + query>,
//!   "content_type":<value or "">,"body":"sha256:<hex>"}`. The URL's scheme and host are
//!   lower-cased and a default port dropped; path and query are kept byte for byte (as sent).

use serde_json::json;
use sha2::{Digest, Sha256};

use super::Refusal;
use crate::jcs;

/// A request to bind a writ to.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    /// A command.
    Exec {
        /// The tool's name in the gateway's manifest.
        tool: &'a str,
        /// The arguments after the tool name, as given.
        argv: &'a [String],
    },
    /// An HTTP request.
    Http {
        /// The method.
        method: &'a str,
        /// The absolute URL: the gateway's public origin, path and query.
        url: &'a str,
        /// The Content-Type header's value ("" if none).
        content_type: &'a str,
        /// The body after transfer decoding, before any content decoding.
        body: &'a [u8],
    },
}

fn refuse(why: impl Into<String>) -> Refusal {
    Refusal::new("request", why)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Lower-cases scheme and host and drops a default port; refuses fragments, userinfo and
/// anything that is not an absolute http(s) URL.
pub fn normalize_url(url: &str) -> Result<String, Refusal> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| refuse("the URL is not absolute"))?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => "443",
        "http" => "80",
        _ => return Err(refuse(format!("scheme {scheme:?}"))),
    };
    if url.contains('#') {
        return Err(refuse("a URL with a fragment"));
    }
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_query) = rest.split_at(split);
    if authority.is_empty() || authority.contains('@') {
        return Err(refuse("the URL's authority is empty or has userinfo"));
    }
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(refuse(
            "the URL has spaces, controls or non-ASCII bytes (percent-encode them)",
        ));
    }
    let authority = authority.to_ascii_lowercase();
    let authority = match authority.rsplit_once(':') {
        Some((host, port)) if port == default_port => host.to_string(),
        _ => authority,
    };
    let path_query = if path_query.is_empty() {
        "/"
    } else {
        path_query
    };
    let path_query = if path_query.starts_with('?') {
        format!("/{path_query}")
    } else {
        path_query.to_string()
    };
    Ok(format!("{scheme}://{authority}{path_query}"))
}

/// The canonical request object.
pub fn object(req: &Request<'_>) -> Result<serde_json::Value, Refusal> {
    Ok(match req {
        Request::Exec { tool, argv } => {
            if tool.is_empty() || tool.contains('/') {
                return Err(refuse("a tool is a manifest name, not a path"));
            }
            json!({"type": "exec", "tool": tool, "argv": argv})
        }
        Request::Http {
            method,
            url,
            content_type,
            body,
        } => {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(refuse(format!("method {method:?}")));
            }
            json!({
                "type": "http",
                "method": method.to_ascii_uppercase(),
                "url": normalize_url(url)?,
                "content_type": content_type,
                "body": format!("sha256:{}", hex(&Sha256::digest(body))),
            })
        }
    })
}

/// The request digest: `sha256:` + hex(SHA-256(canonical JSON)).
pub fn digest(req: &Request<'_>) -> Result<String, Refusal> {
    let canonical =
        jcs::canonical(&object(req)?).map_err(|e| refuse(format!("canonical JSON: {e}")))?;
    Ok(format!(
        "sha256:{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    ))
}

/// The DPoP proof target (`htm`, `htu`) of a request (interfaces.md, "Holder proof of
/// possession"): `EXEC` and `exec:` + the request digest for a command; the upper-case method and
/// the normalised URL without its query for HTTP. The agent and the gateway both call this.
pub fn proof_target(req: &Request<'_>) -> Result<(String, String), Refusal> {
    Ok(match req {
        Request::Exec { .. } => ("EXEC".to_string(), format!("exec:{}", digest(req)?)),
        Request::Http { method, url, .. } => {
            // Validated as `object` does, so a target exists only for a digestible request.
            object(req)?;
            let url = normalize_url(url)?;
            let target = url.split('?').next().unwrap_or_default().to_string();
            (method.to_ascii_uppercase(), target)
        }
    })
}
