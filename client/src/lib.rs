//! writ's HTTP client for the appliance (the CLI's and the gateway's): JSON in, JSON out, problem+json errors read back
//! into their stable code.
//!
//! TLS trust is a pinned CA: `--fingerprint sha256:<hex>` of the appliance's CA certificate
//! (printed by `writ serve`), as `step ca bootstrap --fingerprint` does. On first contact the
//! client fetches `/v1/ca.pem` without trusting the connection, accepts the certificate there
//! whose SHA-256 is the pinned fingerprint, keeps it (the agent in its state folder), and from
//! then on trusts the CAs it keeps alone, with hostname (or IP) verification, the serverAuth
//! usage, and the appliance's SPIFFE ID (`spiffe://<td>/writ/appliance`, the only SPIFFE ID of
//! the certificate): the same CA certifies admins' and runtimes' client certificates, and none of
//! those may pass for the appliance.
//!
//! A client that keeps its CAs in a file follows a rotation of the appliance's `ca` key: each
//! [`Client::new`] reads `/v1/ca.pem` over the TLS it already trusts and keeps the CA
//! certificates published there (those of the trust bundle: the new one is published before it
//! signs). A client that made no request while both CAs were published must bootstrap again
//! (remove the file) with the new CA's fingerprint; so must one pinned by `--fingerprint` of a
//! CA that has left the file.
//!
//! A client certificate and its key (an admin's, `writ admin issue-cert`) are
//! presented when configured. Plain `http://` is for loopback appliances only (an authority with
//! userinfo is refused), never through a proxy; no redirects are followed.
#![forbid(unsafe_code)]

use std::time::Duration;

pub mod files;
pub mod x509;

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
    /// A client certificate (PEM) and its private key (PKCS#8 PEM) to present.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
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

/// The certificates of a PEM text (other PEM items and explanatory text are skipped).
fn certificates_der(pem: &[u8]) -> Vec<Vec<u8>> {
    ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c.der().to_vec()),
            _ => None,
        })
        .collect()
}

/// Most CA certificates kept (the newest ones published).
const MAX_KEPT: usize = 8;

/// The CA certificates a client keeps.
#[derive(Debug, Clone, Default, PartialEq)]
struct Kept {
    cas: Vec<Vec<u8>>,
}

impl Kept {
    fn read(path: &std::path::Path) -> Result<Option<Kept>, ClientError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(transport(format!("{}: {e}", path.display()))),
        };
        let cas = certificates_der(&text);
        if cas.is_empty() {
            return Err(transport(format!(
                "{}: no CA certificate in it (remove it to bootstrap again)",
                path.display()
            )));
        }
        Ok(Some(Kept { cas }))
    }

    /// Whether `fp` is one of these CAs'.
    fn knows(&self, fp: &str) -> bool {
        let fp = fp.to_ascii_lowercase();
        self.cas.iter().any(|c| crate::x509::fingerprint(c) == fp)
    }

    fn write(&self, path: &std::path::Path) -> Result<(), ClientError> {
        let mut text = String::new();
        for der in &self.cas {
            text.push_str(&crate::x509::pem(der).map_err(transport)?);
        }
        crate::files::write_atomically(
            path,
            text.as_bytes(),
            0o644,
            crate::files::Existing::Replace,
        )
        .map_err(|e| {
            transport(format!(
                "{}: the appliance's CA certificates could not be kept: {e}",
                path.display()
            ))
        })
    }
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
    let Ok(uri) = base.parse::<ureq::http::Uri>() else {
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
            .proxy(None)
            .max_redirects(0)
            .build()
            .new_agent());
    }
    if !base.starts_with("https://") {
        return Err(transport(format!("{base}: not an http(s) URL")));
    }
    let kept = match &trust.ca_file {
        Some(p) => Kept::read(p)?,
        None => None,
    };
    let cas = match (kept, &trust.fingerprint) {
        (Some(k), Some(fp)) if !k.knows(fp) => {
            return Err(transport(format!(
                "the kept CA certificates ({}) are {:?}, not the pinned {fp}: pin one of them, or remove the file to bootstrap again",
                trust
                    .ca_file
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                k.cas
                    .iter()
                    .map(|c| crate::x509::fingerprint(c))
                    .collect::<Vec<_>>()
            )));
        }
        (Some(k), _) => k.cas,
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
            // During a rotation of its ca key the appliance serves both CA certificates.
            let served = certificates_der(&pem);
            let Some(der) = served
                .iter()
                .find(|d| crate::x509::fingerprint(d) == fp.to_ascii_lowercase())
            else {
                return Err(transport(format!(
                    "the appliance's CA certificates are {:?}, not the pinned {fp}: refusing to trust it",
                    served
                        .iter()
                        .map(|c| crate::x509::fingerprint(c))
                        .collect::<Vec<_>>()
                )));
            };
            if let Some(p) = &trust.ca_file {
                Kept {
                    cas: vec![der.clone()],
                }
                .write(p)?;
            }
            vec![der.clone()]
        }
    };
    verified_agent(&cas, trust, status_errors)
}

/// An agent that trusts the CAs `cas` alone (and the appliance's SPIFFE ID).
fn verified_agent(
    cas: &[Vec<u8>],
    trust: &Trust,
    status_errors: bool,
) -> Result<ureq::Agent, ClientError> {
    use ureq::unversioned::transport::Connector as _;
    let config = verified_tls(cas, trust.client_cert.as_ref())?;
    Ok(ureq::Agent::with_parts(
        ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(status_errors)
            .proxy(None)
            .max_redirects(0)
            .https_only(true)
            .build(),
        ().chain(ureq::unversioned::transport::TcpConnector::default())
            .chain(ApplianceTls { config }),
        ureq::unversioned::resolver::DefaultResolver::default(),
    ))
}

/// The rustls configuration that trusts the CAs `cas` alone and requires the appliance's SPIFFE
/// ID, presenting `client_cert` (certificate PEM, key PEM) if given.
fn verified_tls(
    cas: &[Vec<u8>],
    client_cert: Option<&(std::path::PathBuf, std::path::PathBuf)>,
) -> Result<std::sync::Arc<rustls::ClientConfig>, ClientError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for der in cas {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| transport(format!("a kept CA certificate: {e}")))?;
    }
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        std::sync::Arc::clone(&provider),
    )
    .build()
    .map_err(|e| transport(format!("TLS verifier: {e}")))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| transport(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(ApplianceVerifier { webpki }));
    let config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| transport(format!("--cert {}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| transport(format!("--key {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| transport(format!("--cert/--key: {e}")))?
        }
    };
    Ok(std::sync::Arc::new(config))
}

/// The server certificate chains to the pinned CA, names the host, and carries serverAuth
/// (webpki), and its one SPIFFE ID is an appliance's.
#[derive(Debug)]
struct ApplianceVerifier {
    webpki: std::sync::Arc<rustls::client::WebPkiServerVerifier>,
}

/// Whether `id` is an appliance's SPIFFE ID (`spiffe://<trust domain>/writ/appliance`).
fn is_appliance_id(id: &str) -> bool {
    id.strip_prefix("spiffe://")
        .and_then(|rest| rest.strip_suffix("/writ/appliance"))
        .is_some_and(|td| !td.is_empty() && !td.contains('/'))
}

impl rustls::client::danger::ServerCertVerifier for ApplianceVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        match crate::x509::spiffe_ids(end_entity.as_ref())
            .map_err(|e| rustls::Error::General(format!("server certificate: {e}")))?
            .as_slice()
        {
            [one] if is_appliance_id(one) => Ok(verified),
            ids => Err(rustls::Error::General(format!(
                "the server certificate names {ids:?}, not the appliance's SPIFFE ID (spiffe://<td>/writ/appliance): refusing it"
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// ureq's TLS step with [`verified_tls`]'s configuration (ureq's own takes only root
/// certificates, no check of the peer's identity beyond its name).
#[derive(Debug)]
struct ApplianceTls {
    config: std::sync::Arc<rustls::ClientConfig>,
}

impl<In: ureq::unversioned::transport::Transport> ureq::unversioned::transport::Connector<In>
    for ApplianceTls
{
    type Out = ureq::unversioned::transport::Either<In, TlsTransport>;

    fn connect(
        &self,
        details: &ureq::unversioned::transport::ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        use ureq::unversioned::transport::{Either, LazyBuffers, TransportAdapter};
        let Some(transport) = chained else {
            return Err(ureq::Error::Io(std::io::Error::other(
                "no connection to wrap in TLS",
            )));
        };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let host = details
            .uri
            .authority()
            .map(|a| a.host().trim_start_matches('[').trim_end_matches(']'))
            .ok_or_else(|| ureq::Error::Io(std::io::Error::other("no host to verify")))?;
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| ureq::Error::Io(std::io::Error::other(format!("{host}: {e}"))))?;
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::clone(&self.config), name)?;
        let mut sock = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        sock.set_timeout(details.timeout);
        conn.complete_io(&mut sock)?;
        Ok(Some(Either::B(TlsTransport {
            buffers: LazyBuffers::new(
                details.config.input_buffer_size(),
                details.config.output_buffer_size(),
            ),
            stream: rustls::StreamOwned { conn, sock },
        })))
    }
}

/// A TLS connection for ureq.
pub(crate) struct TlsTransport {
    buffers: ureq::unversioned::transport::LazyBuffers,
    stream: rustls::StreamOwned<
        rustls::ClientConnection,
        ureq::unversioned::transport::TransportAdapter,
    >,
}

impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTransport").finish_non_exhaustive()
    }
}

impl ureq::unversioned::transport::Transport for TlsTransport {
    fn buffers(&mut self) -> &mut dyn ureq::unversioned::transport::Buffers {
        &mut self.buffers
    }

    fn transmit_output(
        &mut self,
        amount: usize,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<(), ureq::Error> {
        use std::io::Write;
        use ureq::unversioned::transport::Buffers;
        self.stream.get_mut().set_timeout(timeout);
        let output =
            self.buffers.output().get(..amount).ok_or_else(|| {
                ureq::Error::Io(std::io::Error::other("output beyond its buffer"))
            })?;
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(
        &mut self,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<bool, ureq::Error> {
        use std::io::Read;
        use ureq::unversioned::transport::Buffers;
        self.stream.get_mut().set_timeout(timeout);
        let n = self.stream.read(self.buffers.input_append_buf())?;
        self.buffers.input_appended(n);
        Ok(n > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

impl Client {
    /// A client for the appliance at `base`, trusting it as `trust` says.
    pub fn new(base: &str, trust: &Trust) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        let agent = agent_for(&base, trust, false)?;
        let client = Client { base, agent };
        match (&trust.ca_file, client.base.starts_with("https://")) {
            (Some(path), true) => client.follow_authorities(trust, path),
            _ => Ok(client),
        }
    }

    /// Keeps the CA certificates the appliance publishes (`GET /v1/ca.pem`, the trust bundle's
    /// `x509-svid` certificates), read over this client's verified TLS, in `path` (see the
    /// crate's documentation), and trusts them from now on. Nothing changes when they cannot be
    /// read or none is a CA certificate: the request that follows fails on its own if the
    /// appliance is not trusted.
    fn follow_authorities(
        self,
        trust: &Trust,
        path: &std::path::Path,
    ) -> Result<Self, ClientError> {
        let Some(pem) = self.get_text("/v1/ca.pem") else {
            return Ok(self);
        };
        // The newest CAs published (at most MAX_KEPT).
        let served: Vec<Vec<u8>> = certificates_der(&pem)
            .into_iter()
            .filter(|der| is_ca(der))
            .collect();
        let listed = served
            .get(served.len().saturating_sub(MAX_KEPT)..)
            .unwrap_or_default()
            .to_vec();
        let Some(kept) = Kept::read(path)? else {
            return Ok(self);
        };
        let same = listed.len() == kept.cas.len() && listed.iter().all(|c| kept.cas.contains(c));
        // A list sharing no CA with those that authenticated this connection is not followed:
        // the next connection would not verify with it.
        if same || !listed.iter().any(|c| kept.cas.contains(c)) {
            return Ok(self);
        }
        Kept {
            cas: listed.clone(),
        }
        .write(path)?;
        Ok(Client {
            agent: verified_agent(&listed, trust, false)?,
            base: self.base,
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
        let auth = bearer.map(|t| format!("Bearer {t}"));
        self.call_with(method, path, body, auth.as_deref(), None)
    }

    /// The body of a successful `GET path` (at most 64 KiB), if any.
    fn get_text(&self, path: &str) -> Option<Vec<u8>> {
        let mut resp = self.agent.get(format!("{}{path}", self.base)).call().ok()?;
        if resp.status().as_u16() != 200 {
            return None;
        }
        resp.body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_vec()
            .ok()
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

/// Whether `der` is a CA certificate (basicConstraints CA).
fn is_ca(der: &[u8]) -> bool {
    use x509_cert::der::Decode as _;
    x509_cert::Certificate::from_der(der).is_ok_and(|c| {
        matches!(
            c.tbs_certificate()
                .get_extension::<x509_cert::ext::pkix::BasicConstraints>(),
            Ok(Some((_, bc))) if bc.ca
        )
    })
}

#[cfg(test)]
mod tests {
    /// A self-signed certificate's DER (a CA or not), for the kept-file tests.
    fn certificate(ca: bool) -> Vec<u8> {
        use x509_cert::builder::{Builder, CertificateBuilder, profile::BuilderProfile};
        use x509_cert::der::Encode as _;
        struct P(bool);
        impl BuilderProfile for P {
            fn get_issuer(&self, s: &x509_cert::name::Name) -> x509_cert::name::Name {
                s.clone()
            }
            fn get_subject(&self) -> x509_cert::name::Name {
                "CN=test".parse().unwrap()
            }
            fn build_extensions(
                &self,
                _: x509_cert::spki::SubjectPublicKeyInfoRef<'_>,
                _: x509_cert::spki::SubjectPublicKeyInfoRef<'_>,
                _: &x509_cert::TbsCertificate,
            ) -> x509_cert::builder::Result<Vec<x509_cert::ext::Extension>> {
                let bc = x509_cert::ext::pkix::BasicConstraints {
                    ca: self.0,
                    path_len_constraint: None,
                };
                Ok(vec![x509_cert::ext::Extension {
                    extn_id: x509_cert::der::oid::db::rfc5280::ID_CE_BASIC_CONSTRAINTS,
                    critical: true,
                    extn_value: x509_cert::der::asn1::OctetString::new(bc.to_der().unwrap())
                        .unwrap(),
                }])
            }
        }
        let mut d = [0u8; 32];
        getrandom::fill(&mut d).unwrap();
        d[0] = 1;
        let key = p256::ecdsa::SigningKey::from_slice(&d).unwrap();
        let spki =
            x509_cert::spki::SubjectPublicKeyInfoOwned::from_key(key.verifying_key()).unwrap();
        CertificateBuilder::new(
            P(ca),
            x509_cert::serial_number::SerialNumber::new(&[1]).unwrap(),
            x509_cert::time::Validity::from_now(std::time::Duration::from_secs(60)).unwrap(),
            spki,
        )
        .unwrap()
        .build::<_, p256::ecdsa::DerSignature>(&key)
        .unwrap()
        .to_der()
        .unwrap()
    }

    #[test]
    fn a_kept_file_reads_back_its_cas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let (a, b) = (certificate(true), certificate(true));
        let kept = super::Kept {
            cas: vec![a.clone(), b.clone()],
        };
        kept.write(&path).unwrap();
        let read = super::Kept::read(&path).unwrap().unwrap();
        assert_eq!(read, kept);
        assert!(read.knows(&crate::x509::fingerprint(&a).to_ascii_uppercase()));
        assert!(read.knows(&crate::x509::fingerprint(&b)));
        assert!(!read.knows(&crate::x509::fingerprint(&certificate(true))));
        // Nothing kept, and a file without a certificate (not taken for no file).
        assert_eq!(super::Kept::read(&dir.path().join("none")).unwrap(), None);
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(super::Kept::read(&path).is_err());
    }

    #[test]
    fn only_ca_certificates_are_followed() {
        assert!(super::is_ca(&certificate(true)));
        assert!(!super::is_ca(&certificate(false)));
        assert!(!super::is_ca(b"not a certificate"));
    }

    #[test]
    fn only_an_appliance_id_is_the_appliance() {
        assert!(super::is_appliance_id("spiffe://writ.test/writ/appliance"));
        for bad in [
            "spiffe://writ.test/runtime/appliance",
            "spiffe://writ.test/admin/writ/appliance",
            "spiffe:///writ/appliance",
            "spiffe://writ.test/writ/appliance/x",
            "https://writ.test/writ/appliance",
            "spiffe://a/b/writ/appliance",
        ] {
            assert!(!super::is_appliance_id(bad), "{bad}");
        }
    }

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
