//! The appliance's TLS: a CA certificate for the `ca` custody key (made once, kept in a file,
//! pinned by clients with its SHA-256 fingerprint) and a short-lived server certificate that
//! carries the appliance's SPIFFE ID (`spiffe://<td>/writ/appliance`) and the DNS names and IP
//! addresses it is reached at, serverAuth only, for a TLS key generated in memory at start and
//! renewed at half its life. The server certificate is signed by the `ca` key in custody.
//!
//! The CA certificate is self-signed (basicConstraints CA, pathLen 0, keyCertSign). It certifies
//! the appliance's own TLS certificates (serverAuth) and admins' client certificates (clientAuth
//! only, one URI SAN `spiffe://<td>/admin/<name>`); runtimes' and gateways' X.509-SVIDs come with
//! the certificates issue. Clients check the appliance's SPIFFE ID in the server certificate, and
//! the appliance authorizes a client certificate by its SPIFFE ID, never by chaining alone.

use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::EncodePrivateKey;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use writ_hsm::CustodyKey;
use writ_hsm::signer::CustodySigner;
use x509_cert::Certificate;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::der::asn1::{Ia5String, OctetString};
use x509_cert::der::oid::AssociatedOid;
use x509_cert::der::{Decode, DecodePem, Encode};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{SubjectPublicKeyInfo, SubjectPublicKeyInfoRef};
use x509_cert::time::Validity;

/// serverAuth (RFC 5280 4.2.1.12).
const SERVER_AUTH: x509_cert::der::asn1::ObjectIdentifier =
    x509_cert::der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
/// clientAuth (RFC 5280 4.2.1.12).
const CLIENT_AUTH: x509_cert::der::asn1::ObjectIdentifier =
    x509_cert::der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");

fn ext<T: AssociatedOid + Encode>(value: &T, critical: bool) -> Result<Extension, String> {
    Ok(Extension {
        extn_id: T::OID,
        critical,
        extn_value: OctetString::new(value.to_der().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?,
    })
}

/// Issuer, subject and extensions, as given.
struct Profile {
    issuer: Name,
    subject: Name,
    extensions: Vec<Extension>,
}

impl BuilderProfile for Profile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }
    fn get_subject(&self) -> Name {
        self.subject.clone()
    }
    fn build_extensions(
        &self,
        _spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        _tbs: &x509_cert::TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        Ok(self.extensions.clone())
    }
}

/// The shortest and longest server certificate lifetime accepted.
pub const LIFETIME: std::ops::RangeInclusive<u64> = 60..=30 * 86_400;

/// From 5 minutes ago (clients whose clock is a little behind) for `lifetime`, no later than
/// `not_after` (the CA's).
fn validity(
    lifetime: Duration,
    not_after: Option<std::time::SystemTime>,
) -> Result<Validity, String> {
    let now = std::time::SystemTime::now();
    let start = now
        .checked_sub(Duration::from_secs(300))
        .ok_or("clock before the epoch")?;
    let mut end = now.checked_add(lifetime).ok_or("lifetime out of range")?;
    if let Some(limit) = not_after {
        end = end.min(limit);
    }
    Ok(Validity::new(
        x509_cert::time::Time::try_from(start).map_err(|e| e.to_string())?,
        x509_cert::time::Time::try_from(end).map_err(|e| e.to_string())?,
    ))
}

/// A key identifier: SHA-1 of the subjectPublicKey bits (RFC 5280 4.2.1.2, method 1).
fn key_id(spki_der: &[u8]) -> Result<OctetString, String> {
    use sha1::Digest as _;
    let spki = x509_cert::spki::SubjectPublicKeyInfoOwned::from_der(spki_der)
        .map_err(|e| e.to_string())?;
    let bits = spki.subject_public_key.raw_bytes();
    OctetString::new(sha1::Sha1::digest(bits).to_vec()).map_err(|e| e.to_string())
}

fn serial() -> Result<SerialNumber, String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| format!("random: {e}"))?;
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // no leading zero byte to strip
    SerialNumber::new(&b).map_err(|e| e.to_string())
}

fn ca_name(trust_domain: &str) -> Result<Name, String> {
    Name::from_str(&format!("CN=writ CA {trust_domain},O=writ")).map_err(|e| e.to_string())
}

pub use writ_client::x509::{fingerprint, pem, spiffe_ids};

/// The CA certificate of the `ca` key: read from `path` (its key must be the `ca` key's and it
/// must not expire within 30 days), or made once (self-signed in custody, 10 years) and written
/// there (0644, atomically, never over an existing file). Returns its DER.
pub fn ca_certificate(
    ca: &Arc<dyn CustodyKey>,
    trust_domain: &str,
    path: &Path,
) -> Result<Vec<u8>, String> {
    let key_spki = ca.public_key().spki_der().to_vec();
    if path
        .try_exists()
        .map_err(|e| format!("{}: {e}", path.display()))?
    {
        let pem = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let cert = Certificate::from_pem(pem.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let spki = cert
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|e| e.to_string())?;
        if spki != key_spki {
            return Err(format!(
                "{}: this CA certificate is for another key than the configured ca key",
                path.display()
            ));
        }
        let not_after = cert.tbs_certificate().validity().not_after.to_system_time();
        if not_after < std::time::SystemTime::now() + Duration::from_secs(86_400) {
            return Err(format!(
                "{}: this CA certificate expires within a day (or has): configure the ca key a rotation made (writ admin rotate-key --purpose ca, docs/keys.md)",
                path.display()
            ));
        }
        if not_after < std::time::SystemTime::now() + Duration::from_secs(30 * 86_400) {
            tracing::warn!(
                "{}: this CA certificate expires within 30 days: rotate the ca key (writ admin rotate-key --purpose ca)",
                path.display()
            );
        }
        return cert.to_der().map_err(|e| e.to_string());
    }
    let der = self_signed(ca, ca_name(trust_domain)?)?;
    let pem = pem(&der)?;
    crate::files::write_atomically(path, pem.as_bytes(), 0o644, crate::files::Existing::Keep)?;
    Ok(der)
}

/// A CA certificate for a rotated `ca` key (`writ admin rotate-key --purpose ca`), self-signed in
/// custody for 10 years, named apart from every other CA of the trust domain by its key
/// identifier (`CN=writ CA <td> <8 hex digits>`): certificates chain to it by name and key.
pub fn rotated_ca_certificate(
    ca: &Arc<dyn CustodyKey>,
    trust_domain: &str,
) -> Result<Vec<u8>, String> {
    let id = key_id(ca.public_key().spki_der())?;
    let short = hex::encode(id.as_bytes().get(..4).unwrap_or_default());
    let name = Name::from_str(&format!("CN=writ CA {trust_domain} {short},O=writ"))
        .map_err(|e| e.to_string())?;
    self_signed(ca, name)
}

/// Checks that `der` is a CA certificate of the key `spki` (its subject public key), signed by
/// that key: what a stored CA certificate must be before the appliance publishes it or chains
/// to it.
pub fn check_ca_certificate(der: &[u8], spki: &[u8]) -> Result<(), String> {
    use p256::ecdsa::signature::Verifier as _;
    use p256::pkcs8::DecodePublicKey as _;
    let cert = Certificate::from_der(der).map_err(|e| format!("not a certificate: {e}"))?;
    let tbs = cert.tbs_certificate();
    if tbs
        .subject_public_key_info()
        .to_der()
        .map_err(|e| e.to_string())?
        != spki
    {
        return Err("it certifies another key".into());
    }
    match tbs.get_extension::<BasicConstraints>() {
        Ok(Some((_, bc))) if bc.ca => {}
        _ => return Err("it is not a CA certificate (basicConstraints)".into()),
    }
    if tbs.validity().not_after.to_system_time() <= std::time::SystemTime::now() {
        return Err("it has expired".into());
    }
    let key = p256::ecdsa::VerifyingKey::from_public_key_der(spki)
        .map_err(|e| format!("its key: {e}"))?;
    let signature = p256::ecdsa::Signature::from_der(cert.signature().raw_bytes())
        .map_err(|e| format!("its signature: {e}"))?;
    key.verify(&tbs.to_der().map_err(|e| e.to_string())?, &signature)
        .map_err(|_| "it is not signed by its own key".to_string())
}

/// A self-signed CA certificate (basicConstraints CA, pathLen 0, keyCertSign) named `name`, by
/// the key `ca` in custody, for 10 years.
fn self_signed(ca: &Arc<dyn CustodyKey>, name: Name) -> Result<Vec<u8>, String> {
    let key_spki = ca.public_key().spki_der().to_vec();
    let profile = Profile {
        issuer: name.clone(),
        subject: name,
        extensions: vec![
            ext(
                &BasicConstraints {
                    ca: true,
                    path_len_constraint: Some(0),
                },
                true,
            )?,
            ext(&KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign), true)?,
            ext(&SubjectKeyIdentifier(key_id(&key_spki)?), false)?,
        ],
    };
    let spki = SubjectPublicKeyInfo::from_der(&key_spki).map_err(|e| e.to_string())?;
    let cert = CertificateBuilder::new(
        profile,
        serial()?,
        validity(Duration::from_secs(10 * 365 * 86_400), None)?,
        spki,
    )
    .map_err(|e| e.to_string())?
    .build::<_, DerSignature>(&CustodySigner::new(Arc::clone(ca)))
    .map_err(|e| format!("the ca key could not sign the CA certificate: {e}"))?;
    cert.to_der().map_err(|e| e.to_string())
}

/// A leaf certificate signed by the `ca` key (whose CA certificate is `ca_der`): not a CA,
/// digitalSignature only, the one extended key usage `usage`, the subject alternative names
/// `sans`, for the public key `spki`; valid for `lifetime` and never past the CA.
fn leaf(
    ca: &Arc<dyn CustodyKey>,
    ca_der: &[u8],
    subject: &str,
    sans: Vec<GeneralName>,
    usage: x509_cert::der::asn1::ObjectIdentifier,
    spki: SubjectPublicKeyInfo<x509_cert::der::asn1::Any, x509_cert::der::asn1::BitString>,
    lifetime: Duration,
) -> Result<Certificate, String> {
    let ca_cert = Certificate::from_der(ca_der).map_err(|e| e.to_string())?;
    let ca_spki = ca_cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| e.to_string())?;
    let spki_der = spki.to_der().map_err(|e| e.to_string())?;
    let profile = Profile {
        issuer: ca_cert.tbs_certificate().subject().clone(),
        subject: Name::from_str(subject).map_err(|e| e.to_string())?,
        extensions: vec![
            ext(
                &BasicConstraints {
                    ca: false,
                    path_len_constraint: None,
                },
                true,
            )?,
            ext(&KeyUsage(KeyUsages::DigitalSignature.into()), true)?,
            ext(&ExtendedKeyUsage(vec![usage]), false)?,
            ext(&SubjectAltName(sans), false)?,
            ext(
                &AuthorityKeyIdentifier {
                    key_identifier: Some(key_id(&ca_spki)?),
                    authority_cert_issuer: None,
                    authority_cert_serial_number: None,
                },
                false,
            )?,
            ext(&SubjectKeyIdentifier(key_id(&spki_der)?), false)?,
        ],
    };
    let ca_not_after = ca_cert
        .tbs_certificate()
        .validity()
        .not_after
        .to_system_time();
    CertificateBuilder::new(
        profile,
        serial()?,
        validity(lifetime, Some(ca_not_after))?,
        spki,
    )
    .map_err(|e| e.to_string())?
    .build::<_, DerSignature>(&CustodySigner::new(Arc::clone(ca)))
    .map_err(|e| format!("the ca key could not sign the certificate: {e}"))
}

fn uri_san(uri: &str) -> Result<GeneralName, String> {
    Ok(GeneralName::UniformResourceIdentifier(
        Ia5String::new(uri).map_err(|e| e.to_string())?,
    ))
}

/// A fresh TLS key (in memory) and its certificate for the appliance, signed by the `ca` key.
fn server_key(
    ca: &Arc<dyn CustodyKey>,
    ca_der: &[u8],
    trust_domain: &str,
    names: &[String],
    lifetime: Duration,
) -> Result<CertifiedKey, String> {
    let key = loop {
        let mut d = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(d.as_mut()).map_err(|e| format!("random: {e}"))?;
        if let Ok(k) = SigningKey::from_slice(d.as_ref()) {
            break k;
        }
    };
    let mut sans = vec![uri_san(&appliance_id(trust_domain))?];
    for n in names {
        sans.push(match n.parse::<IpAddr>() {
            Ok(ip) => GeneralName::IpAddress(
                OctetString::new(match ip {
                    IpAddr::V4(v) => v.octets().to_vec(),
                    IpAddr::V6(v) => v.octets().to_vec(),
                })
                .map_err(|e| e.to_string())?,
            ),
            Err(_) => GeneralName::DnsName(Ia5String::new(n).map_err(|e| format!("{n}: {e}"))?),
        });
    }
    let spki = SubjectPublicKeyInfo::from_key(key.verifying_key()).map_err(|e| e.to_string())?;
    let cert = leaf(
        ca,
        ca_der,
        "CN=writ appliance,O=writ",
        sans,
        SERVER_AUTH,
        spki,
        lifetime,
    )?;
    let pkcs8 = key.to_pkcs8_der().map_err(|e| e.to_string())?;
    // Borrowed, not copied: the only copy is the zeroizing PKCS#8 document.
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_bytes()));
    let signing = rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(&private)
        .map_err(|e| format!("TLS key: {e}"))?;
    Ok(CertifiedKey::new(
        vec![
            CertificateDer::from(cert.to_der().map_err(|e| e.to_string())?),
            CertificateDer::from(ca_der.to_vec()),
        ],
        signing,
    ))
}

/// The appliance's SPIFFE ID in `trust_domain`.
pub fn appliance_id(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/writ/appliance")
}

/// Longest client certificate lifetime.
pub const MAX_CLIENT_LIFETIME: Duration = Duration::from_secs(30 * 86_400);

/// A client certificate in the shape of an X.509-SVID: exactly one URI SAN, `spiffe_id`,
/// clientAuth only, not a CA, for the P-256 public key `spki_der`, signed by the `ca` key
/// (whose CA certificate is `ca_der`). Returns its DER.
pub fn client_certificate(
    ca: &Arc<dyn CustodyKey>,
    ca_der: &[u8],
    spiffe_id: &str,
    spki_der: &[u8],
    lifetime: Duration,
) -> Result<Vec<u8>, String> {
    use p256::pkcs8::DecodePublicKey;
    if !spiffe_id.starts_with("spiffe://") {
        return Err(format!("{spiffe_id:?} is not a SPIFFE ID"));
    }
    if lifetime > MAX_CLIENT_LIFETIME || lifetime.is_zero() {
        return Err(format!(
            "a client certificate lives 1 s to {} days",
            MAX_CLIENT_LIFETIME.as_secs() / 86_400
        ));
    }
    // A P-256 public key, and nothing else.
    p256::PublicKey::from_public_key_der(spki_der)
        .map_err(|e| format!("the public key is not P-256: {e}"))?;
    let spki = SubjectPublicKeyInfo::from_der(spki_der).map_err(|e| e.to_string())?;
    let cert = leaf(
        ca,
        ca_der,
        "O=writ",
        vec![uri_san(spiffe_id)?],
        CLIENT_AUTH,
        spki,
        lifetime,
    )?;
    cert.to_der().map_err(|e| e.to_string())
}

/// A certificate's serial number, in lowercase hex.
pub fn certificate_serial(cert_der: &[u8]) -> Result<String, String> {
    let cert = Certificate::from_der(cert_der).map_err(|e| e.to_string())?;
    Ok(hex::encode(
        cert.tbs_certificate().serial_number().as_bytes(),
    ))
}

/// A CA: its key in custody and its certificate (DER).
#[derive(Clone)]
pub struct Authority {
    /// The `ca` key.
    pub key: Arc<dyn CustodyKey>,
    /// Its CA certificate.
    pub der: Vec<u8>,
    /// A rotated-out CA's end (unix seconds): nothing it signs may outlive it.
    pub until: Option<i64>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("certificate", &fingerprint(&self.der))
            .finish_non_exhaustive()
    }
}

type ClientVerifier = Arc<dyn rustls::server::danger::ClientCertVerifier>;

/// The appliance's TLS: serves the current certificate and renews it; follows a rotation of the
/// `ca` key ([`ApplianceTls::follow`]).
pub struct ApplianceTls {
    trust_domain: String,
    names: Vec<String>,
    lifetime: Duration,
    /// The CA that signs the server certificate.
    signing: RwLock<Authority>,
    current: RwLock<Arc<CertifiedKey>>,
    /// One renewal or switch of CA at a time (a renewal by the old CA must not land after a
    /// switch to the new one).
    switching: std::sync::Mutex<()>,
    /// The CA certificates a client certificate may chain to (every one published), and the
    /// verifier over them.
    clients: RwLock<(Vec<Vec<u8>>, ClientVerifier)>,
}

impl std::fmt::Debug for ApplianceTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplianceTls")
            .field("ca", &fingerprint(&self.ca_der()))
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

fn poisoned<T>(_: T) -> String {
    "the TLS state's lock is poisoned".into()
}

impl ApplianceTls {
    /// Makes the first server certificate.
    pub fn new(
        ca: Arc<dyn CustodyKey>,
        ca_der: Vec<u8>,
        trust_domain: &str,
        names: Vec<String>,
        lifetime: Duration,
    ) -> Result<Arc<Self>, String> {
        if names.is_empty() {
            return Err("tls.names: at least one DNS name or IP address clients use".into());
        }
        for n in &names {
            rustls::pki_types::ServerName::try_from(n.as_str())
                .map_err(|_| format!("tls.names: {n:?} is not a DNS name or an IP address"))?;
            if n.contains('*') {
                return Err(format!("tls.names: {n:?}: no wildcards"));
            }
        }
        if !LIFETIME.contains(&lifetime.as_secs()) {
            return Err(format!(
                "tls.certificate_lifetime_s: {} (from {} to {})",
                lifetime.as_secs(),
                LIFETIME.start(),
                LIFETIME.end()
            ));
        }
        let first = server_key(&ca, &ca_der, trust_domain, &names, lifetime)?;
        let verifier = client_verifier(std::slice::from_ref(&ca_der))?;
        Ok(Arc::new(ApplianceTls {
            trust_domain: trust_domain.to_string(),
            names,
            lifetime,
            signing: RwLock::new(Authority {
                key: ca,
                der: ca_der.clone(),
                until: None,
            }),
            switching: std::sync::Mutex::new(()),
            current: RwLock::new(Arc::new(first)),
            clients: RwLock::new((vec![ca_der], verifier)),
        }))
    }

    /// The certificate of the CA signing the server certificate, DER.
    pub fn ca_der(&self) -> Vec<u8> {
        self.signing
            .read()
            .map(|a| a.der.clone())
            .unwrap_or_default()
    }

    /// A new key and certificate in place of the current one (the old one keeps serving if the
    /// `ca` key cannot sign now).
    pub fn renew(&self) -> Result<(), String> {
        let _one = self.switching.lock().map_err(poisoned)?;
        let ca = self.signing.read().map_err(poisoned)?.clone();
        let next = server_key(
            &ca.key,
            &ca.der,
            &self.trust_domain,
            &self.names,
            self.lifetime,
        )?;
        *self.current.write().map_err(poisoned)? = Arc::new(next);
        Ok(())
    }

    /// Follows the `ca` key's schedule: client certificates chain to any CA of `published` (and
    /// `signing`'s); when `signing` is another CA than the one that signed the server
    /// certificate, a new server certificate signed by it serves from now on (if it cannot be
    /// made, the old one keeps serving and the next call tries again). Returns whether the server
    /// certificate changed.
    pub fn follow(&self, signing: Authority, mut published: Vec<Vec<u8>>) -> Result<bool, String> {
        if !published.contains(&signing.der) {
            published.push(signing.der.clone());
        }
        let same = self
            .clients
            .read()
            .map(|c| c.0 == published)
            .map_err(poisoned)?;
        if !same {
            let verifier = client_verifier(&published)?;
            *self.clients.write().map_err(poisoned)? = (published, verifier);
        }
        let _one = self.switching.lock().map_err(poisoned)?;
        if self.signing.read().map_err(poisoned)?.der == signing.der {
            return Ok(false);
        }
        let next = server_key(
            &signing.key,
            &signing.der,
            &self.trust_domain,
            &self.names,
            self.lifetime,
        )?;
        *self.signing.write().map_err(poisoned)? = signing;
        *self.current.write().map_err(poisoned)? = Arc::new(next);
        Ok(true)
    }

    /// How often to renew: half the lifetime.
    pub fn renew_every(&self) -> Duration {
        self.lifetime / 2
    }

    /// The rustls server configuration (TLS 1.3 and 1.2, aws-lc-rs, HTTP/1.1).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, String> {
        let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(Arc::new(Clients(Arc::clone(self))))
        .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        // No resumption: a resumed session would carry a client certificate's identity without
        // verifying it again (its expiry, and later revocation), so every connection handshakes
        // in full.
        c.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        c.send_tls13_tickets = 0;
        Ok(Arc::new(c))
    }

    fn clients(&self) -> Result<ClientVerifier, rustls::Error> {
        self.clients
            .read()
            .map(|c| Arc::clone(&c.1))
            .map_err(|_| rustls::Error::General("the TLS state's lock is poisoned".into()))
    }
}

/// Client certificates are optional; one that is presented must chain to one of `cas` and carry
/// clientAuth (what it may do is decided by its SPIFFE ID, per route).
fn client_verifier(cas: &[Vec<u8>]) -> Result<ClientVerifier, String> {
    let mut roots = rustls::RootCertStore::empty();
    for der in cas {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| format!("CA certificate: {e}"))?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| format!("client certificate verifier: {e}"))
}

/// The client certificate verifier over the CAs [`ApplianceTls`] follows now. It names no CA in
/// its request (the CAs change with a rotation; clients present the certificate they hold).
#[derive(Debug)]
struct Clients(Arc<ApplianceTls>);

impl rustls::server::danger::ClientCertVerifier for Clients {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.0
            .clients()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.clients()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.clients()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0
            .clients()
            .map(|c| c.supported_verify_schemes())
            .unwrap_or_default()
    }
}

impl ResolvesServerCert for ApplianceTls {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| Arc::clone(&c))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        loop {
            let mut d = [0u8; 32];
            getrandom::fill(&mut d).unwrap();
            if let Ok(k) = SigningKey::from_slice(&d) {
                return k;
            }
        }
    }

    fn spki(k: &SigningKey) -> Vec<u8> {
        SubjectPublicKeyInfo::from_key(k.verifying_key())
            .unwrap()
            .to_der()
            .unwrap()
    }

    /// A certificate for `subject`'s key with basicConstraints CA `ca`, signed by `signer`, valid
    /// for `lifetime` from 5 minutes ago (or already expired when `expired`).
    fn cert(subject: &SigningKey, signer: &SigningKey, ca: bool, expired: bool) -> Vec<u8> {
        let name = Name::from_str("CN=test CA,O=writ").unwrap();
        let profile = Profile {
            issuer: name.clone(),
            subject: name,
            extensions: vec![
                ext(
                    &BasicConstraints {
                        ca,
                        path_len_constraint: None,
                    },
                    true,
                )
                .unwrap(),
            ],
        };
        let now = std::time::SystemTime::now();
        let validity = if expired {
            Validity::new(
                x509_cert::time::Time::try_from(now - Duration::from_secs(7200)).unwrap(),
                x509_cert::time::Time::try_from(now - Duration::from_secs(3600)).unwrap(),
            )
        } else {
            validity(Duration::from_secs(3600), None).unwrap()
        };
        CertificateBuilder::new(
            profile,
            serial().unwrap(),
            validity,
            SubjectPublicKeyInfo::from_key(subject.verifying_key()).unwrap(),
        )
        .unwrap()
        .build::<_, DerSignature>(signer)
        .unwrap()
        .to_der()
        .unwrap()
    }

    #[test]
    fn a_stored_ca_certificate_must_be_its_keys_own_ca_certificate() {
        let (a, b) = (key(), key());
        assert_eq!(
            check_ca_certificate(&cert(&a, &a, true, false), &spki(&a)),
            Ok(())
        );
        let refused = |der: Vec<u8>, spki: Vec<u8>, why: &str| {
            let e = check_ca_certificate(&der, &spki).unwrap_err();
            assert!(e.contains(why), "{e}");
        };
        refused(cert(&a, &a, true, false), spki(&b), "another key");
        refused(cert(&a, &a, false, false), spki(&a), "not a CA certificate");
        refused(
            cert(&a, &b, true, false),
            spki(&a),
            "not signed by its own key",
        );
        refused(cert(&a, &a, true, true), spki(&a), "expired");
        refused(b"not a certificate".to_vec(), spki(&a), "not a certificate");
    }
}
