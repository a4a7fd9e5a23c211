//! `writ agent get`: an HTTPS request with the runtime's X.509-SVID as its TLS client certificate,
//! the handshake signed by the holder key inside the TPM (a rustls signing key over the TPM; the
//! private key never leaves it). What lets a runtime call any mutual-TLS service that trusts writ's
//! CA (docs/svid.md).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use writ_hsm::tpm::attester::{Attester, LoadedKey, PcrSelection};

/// The holder key in the TPM, as rustls signs with it: ECDSA P-256 with SHA-256 only.
struct TpmKey {
    tpm: Attester,
    key: LoadedKey,
    bound: Option<PcrSelection>,
    /// Whether the handshake was signed (the SVID presented and proven).
    signed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for TpmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TpmKey(holder key in the TPM)")
    }
}

#[derive(Debug)]
struct TpmSigningKey(Arc<TpmKey>);

#[derive(Debug)]
struct TpmSigner(Arc<TpmKey>);

impl SigningKey for TpmSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(TpmSigner(Arc::clone(&self.0))) as Box<dyn Signer>)
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        rustls::SignatureAlgorithm::ECDSA
    }
}

impl Signer for TpmSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        use sha2::Digest as _;
        let digest: [u8; 32] = sha2::Sha256::digest(message).into();
        let k = &self.0;
        let sig = match &k.bound {
            None => k.tpm.sign_digest(&k.key, &digest),
            Some(sel) => k.tpm.sign_digest_bound(&k.key, sel, &digest),
        }
        .map_err(|e| rustls::Error::General(format!("the holder key in the TPM: {e}")))?;
        k.signed.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(sig.to_der().as_bytes().to_vec())
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

/// Always the SVID (the server's acceptable issuers are its business: it verifies the chain).
#[derive(Debug)]
struct Svid(Arc<CertifiedKey>);

impl ResolvesClientCert for Svid {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// What the request answered: the status line and the body.
pub struct Answer {
    pub status: String,
    pub body: Vec<u8>,
}

/// GET `url` (https only) presenting `svid` (DER) with the holder key `key` in `tpm`; the server
/// is verified against `roots` (DER certificates) for the URL's host name.
pub fn get(
    url: &str,
    roots: &[Vec<u8>],
    svid: Vec<u8>,
    tpm: Attester,
    key: LoadedKey,
    bound: Option<PcrSelection>,
    timeout: Duration,
) -> Result<Answer, String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or("--url: https:// only (the SVID is a TLS client certificate)")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("/")),
        None => (rest, "/"),
    };
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (h, rest) = v6.split_once(']').ok_or("--url: [IPv6]:PORT")?;
            (h, rest.strip_prefix(':'))
        }
        None => match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let port: u16 = port
        .map(str::parse)
        .transpose()
        .map_err(|_| "--url: a port of 1 to 65535")?
        .unwrap_or(443);
    if host.is_empty() || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err("--url: https://HOST[:PORT]/PATH".into());
    }
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store
            .add(CertificateDer::from(r.clone()))
            .map_err(|e| format!("--ca: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let holder = Arc::new(TpmKey {
        tpm,
        key,
        bound,
        signed: std::sync::atomic::AtomicBool::new(false),
    });
    let certified = Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(svid)],
        Arc::new(TpmSigningKey(Arc::clone(&holder))),
    ));
    // TLS 1.3 only: the client certificate (the runtime's SPIFFE ID) travels encrypted.
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(store)
        .with_client_cert_resolver(Arc::new(Svid(certified)));
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("--url: {e}"))?;
    let conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| format!("TLS: {e}"))?;
    let sock = TcpStream::connect((host, port)).map_err(|e| format!("{host}:{port}: {e}"))?;
    sock.set_read_timeout(Some(timeout))
        .and_then(|()| sock.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("{host}:{port}: {e}"))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: writ-agent\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes())
        .map_err(|e| format!("TLS: {e}"))?;
    const LIMIT: u64 = 16 * 1024 * 1024;
    let mut raw = Vec::new();
    let read = Read::by_ref(&mut tls).take(LIMIT + 1).read_to_end(&mut raw);
    // Ended without close_notify: complete only if the answer said its length and has it all
    // (a connection cut short is not an answer).
    let cut = match read {
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => true,
        Err(e) => return Err(format!("TLS: {e}")),
    };
    if !holder.signed.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(
            "the server did not ask for the client certificate: the SVID was not presented".into(),
        );
    }
    if u64::try_from(raw.len()).unwrap_or(u64::MAX) > LIMIT {
        return Err("the answer is larger than 16 MiB".into());
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the server's answer is not HTTP")?;
    let head = String::from_utf8_lossy(raw.get(..split).unwrap_or_default()).to_string();
    let body = raw.get(split + 4..).unwrap_or_default().to_vec();
    let length = head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    if head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:"))
    {
        return Err("a chunked or encoded answer (not supported)".into());
    }
    match length {
        Some(n) if n != body.len() => {
            return Err(format!(
                "the answer's body is {} bytes, its Content-Length {n}",
                body.len()
            ));
        }
        None if cut => {
            return Err("the connection ended without close_notify and without a length".into());
        }
        _ => {}
    }
    Ok(Answer {
        status: head.lines().next().unwrap_or("").to_string(),
        body,
    })
}
