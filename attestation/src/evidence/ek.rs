//! EK certificate chain validation against a configured store of TPM manufacturer roots and
//! intermediates.
//!
//! A narrow validator, not a WebPKI one: EK certificates carry a critical subjectAltName holding a
//! TCG directoryName, which general validators reject. Checked here: every certificate's validity
//! at the time given; basicConstraints (CA for issuers, not CA for the EK), keyUsage keyCertSign on
//! issuers and pathLenConstraint; no unknown critical extension; issuer name chaining; each
//! signature (RSA PKCS#1 v1.5 or ECDSA, SHA-256 or stronger; SHA-1 is refused). Chain building is
//! bounded in candidates and depth. The EK public key is taken from the certificate, nowhere else.

use std::collections::HashSet;

use x509_cert::Certificate;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};

use super::credential::EkPublicKey;
use crate::crypto::{CryptoProvider, SigAlg, SignatureValue, VerifyKey};
use crate::error::EvidenceError;
use crate::tpm::HashAlg;
use crate::tpm::public::EccCurve;

/// Longest chain from the EK certificate to an anchor, in certificates above the EK.
const MAX_DEPTH: usize = 5;
/// Most issuer candidates tried at one level (same subject name).
const MAX_CANDIDATES: usize = 8;
/// Largest certificate accepted.
const MAX_CERT: usize = 16 * 1024;

// Extensions allowed to be critical (all others marked critical are refused).
const OID_KEY_USAGE: &str = "2.5.29.15";
const OID_SAN: &str = "2.5.29.17";
const OID_BASIC_CONSTRAINTS: &str = "2.5.29.19";
const OID_CERT_POLICIES: &str = "2.5.29.32";
const OID_EKU: &str = "2.5.29.37";
const ALLOWED_CRITICAL: [&str; 5] = [
    OID_KEY_USAGE,
    OID_SAN,
    OID_BASIC_CONSTRAINTS,
    OID_CERT_POLICIES,
    OID_EKU,
];

/// A certificate of the trust store, parsed once.
#[derive(Debug, Clone)]
struct StoredCert {
    cert: Certificate,
    subject: Vec<u8>,
    fingerprint: [u8; 32],
}

/// Trust anchors (self-signed roots) and intermediates for EK chains.
#[derive(Debug, Clone, Default)]
pub struct EkTrustStore {
    anchors: Vec<StoredCert>,
    intermediates: Vec<StoredCert>,
}

/// An EK whose certificate chains to the trust store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedEk {
    key: EkPublicKey,
    certificate_sha256: [u8; 32],
    chain: Vec<String>,
    tpm: TpmAttributes,
}

/// The TPM attributes of an EK certificate's subjectAltName directoryName (TCG EK Credential
/// Profile: tcg-at-tpmManufacturer, tcg-at-tpmModel, tcg-at-tpmVersion), as written there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TpmAttributes {
    /// The manufacturer, e.g. `id:49424D00` (the TCG vendor ID of "IBM").
    pub manufacturer: Option<String>,
    /// The model, e.g. `swtpm`.
    pub model: Option<String>,
    /// The firmware version, e.g. `id:00020065`.
    pub version: Option<String>,
}

impl TpmAttributes {
    /// The manufacturer's four-character vendor ID (`id:49424D00` is `IBM`), if it is one.
    pub fn vendor(&self) -> Option<String> {
        let id = self.manufacturer.as_deref()?.strip_prefix("id:")?;
        if id.len() != 8 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let mut bytes: Vec<u8> = (0..4)
            .filter_map(|i| u8::from_str_radix(id.get(i * 2..i * 2 + 2)?, 16).ok())
            .collect();
        // Letters and digits first, padded at the end only (NUL or space): `id:0049424D` is not
        // "IBM".
        while bytes.last().is_some_and(|b| *b == 0 || *b == b' ') {
            bytes.pop();
        }
        (!bytes.is_empty() && bytes.iter().all(u8::is_ascii_alphanumeric))
            .then(|| String::from_utf8(bytes).ok())
            .flatten()
    }
}

impl TrustedEk {
    /// The EK public key, from the certificate.
    pub fn key(&self) -> &EkPublicKey {
        &self.key
    }
    /// SHA-256 of the EK certificate (what enrollment registers).
    pub fn certificate_sha256(&self) -> [u8; 32] {
        self.certificate_sha256
    }
    /// Subjects from the EK certificate up to the anchor, for explanations.
    pub fn chain(&self) -> &[String] {
        &self.chain
    }
    /// The TPM's manufacturer, model and version, as the certificate names them.
    pub fn tpm(&self) -> &TpmAttributes {
        &self.tpm
    }

    /// Checks that an EK public area an attester sent is this certificate's key. writ never uses
    /// the sent area for anything (the key comes from the certificate); a mismatch means the
    /// request is inconsistent and is refused.
    pub fn check_public(&self, public: &crate::tpm::public::Public) -> Result<(), EvidenceError> {
        use crate::tpm::public::KeyParams;
        let strip = |v: &[u8]| {
            v.iter()
                .skip_while(|b| **b == 0)
                .copied()
                .collect::<Vec<u8>>()
        };
        let same = match (&self.key, public.params()) {
            (
                EkPublicKey::Rsa2048 { modulus, exponent },
                KeyParams::Rsa {
                    modulus: m,
                    exponent: e,
                    ..
                },
            ) => {
                let norm = |x: u32| if x == 0 { 65_537 } else { x };
                strip(modulus) == strip(m) && norm(*exponent) == norm(*e)
            }
            (
                EkPublicKey::Ecc { curve, x, y },
                KeyParams::Ecc {
                    curve: c,
                    x: px,
                    y: py,
                    ..
                },
            ) => curve == c && strip(x) == strip(px) && strip(y) == strip(py),
            _ => false,
        };
        if same {
            Ok(())
        } else {
            Err(EvidenceError::EkMismatch)
        }
    }
}

const OID_TPM_MANUFACTURER: &str = "2.23.133.2.1";
const OID_TPM_MODEL: &str = "2.23.133.2.2";
const OID_TPM_VERSION: &str = "2.23.133.2.3";

/// Reads the TCG attributes from the subjectAltName's directoryName (absent ones stay `None`).
fn tpm_attributes(ek: &Certificate) -> TpmAttributes {
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    let mut out = TpmAttributes::default();
    let Ok(Some((_, san))) = ek.tbs_certificate().get_extension::<SubjectAltName>() else {
        return out;
    };
    for name in &san.0 {
        let GeneralName::DirectoryName(dn) = name else {
            continue;
        };
        for atv in dn.iter() {
            let Ok(text) = std::str::from_utf8(atv.value.value()) else {
                continue;
            };
            let slot = match atv.oid.to_string().as_str() {
                OID_TPM_MANUFACTURER => &mut out.manufacturer,
                OID_TPM_MODEL => &mut out.model,
                OID_TPM_VERSION => &mut out.version,
                _ => continue,
            };
            *slot = Some(text.to_string());
        }
    }
    out
}

fn untrusted(why: String) -> EvidenceError {
    EvidenceError::EkUntrusted(why)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

impl EkTrustStore {
    /// An empty store (trusts nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of anchors and intermediates.
    pub fn len(&self) -> (usize, usize) {
        (self.anchors.len(), self.intermediates.len())
    }

    /// Whether the store trusts nothing.
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// Adds a DER certificate: a self-issued one (subject = issuer) becomes an anchor; any other is
    /// an intermediate, usable only if it chains to an anchor.
    pub fn add_der(&mut self, der: &[u8]) -> Result<(), EvidenceError> {
        let cert = parse(der)?;
        let subject = name_der(&cert, false)?;
        let stored = StoredCert {
            subject: subject.clone(),
            fingerprint: sha256(der),
            cert,
        };
        if self
            .anchors
            .iter()
            .chain(&self.intermediates)
            .any(|c| c.fingerprint == stored.fingerprint)
        {
            return Ok(());
        }
        // A self-issued certificate is a trust anchor by configuration (RFC 5280: an anchor's own
        // signature is not what makes it trusted, and some manufacturer roots self-sign with
        // algorithms writ would refuse below an anchor).
        if name_der(&stored.cert, true)? == subject {
            self.anchors.push(stored);
        } else {
            self.intermediates.push(stored);
        }
        Ok(())
    }

    /// Adds every certificate of a PEM bundle; returns how many.
    pub fn add_pem(&mut self, pem: &str) -> Result<usize, EvidenceError> {
        let certs = Certificate::load_pem_chain(pem.as_bytes())
            .map_err(|e| EvidenceError::Malformed(format!("PEM certificate: {e}")))?;
        let mut n = 0;
        for c in certs {
            let der = c
                .to_der()
                .map_err(|e| EvidenceError::Malformed(format!("certificate: {e}")))?;
            self.add_der(&der)?;
            n += 1;
        }
        Ok(n)
    }

    /// Validates an EK certificate (DER) at `now` (seconds since the Unix epoch) and returns its
    /// key.
    pub fn verify(
        &self,
        provider: &dyn CryptoProvider,
        ek_der: &[u8],
        now: u64,
    ) -> Result<TrustedEk, EvidenceError> {
        let ek = parse(ek_der)?;
        check_validity(&ek, now, "EK certificate")?;
        check_critical(&ek, "EK certificate")?;
        if let Some((_, bc)) = ek
            .tbs_certificate()
            .get_extension::<BasicConstraints>()
            .map_err(|e| EvidenceError::Malformed(format!("EK basicConstraints: {e}")))?
            && bc.ca
        {
            return Err(untrusted("the EK certificate is a CA certificate".into()));
        }
        let key = ek_key(&ek)?;
        let mut chain = vec![ek.tbs_certificate().subject().to_string()];
        let mut visited = HashSet::new();
        self.build(provider, &ek, now, 0, &mut chain, &mut visited)?;
        Ok(TrustedEk {
            key,
            certificate_sha256: sha256(ek_der),
            chain,
            tpm: tpm_attributes(&ek),
        })
    }

    /// Depth-first search for an anchor above `child`.
    fn build(
        &self,
        provider: &dyn CryptoProvider,
        child: &Certificate,
        now: u64,
        depth: usize,
        chain: &mut Vec<String>,
        visited: &mut HashSet<[u8; 32]>,
    ) -> Result<(), EvidenceError> {
        if depth >= MAX_DEPTH {
            return Err(untrusted(format!(
                "no anchor within {MAX_DEPTH} certificates"
            )));
        }
        let issuer = name_der(child, true)?;
        let mut last_error = untrusted(format!(
            "no certificate in the trust store is named {} (the issuer of {})",
            child.tbs_certificate().issuer(),
            child.tbs_certificate().subject()
        ));
        let candidates = self
            .anchors
            .iter()
            .map(|c| (c, true))
            .chain(self.intermediates.iter().map(|c| (c, false)))
            .filter(|(c, _)| c.subject == issuer)
            .take(MAX_CANDIDATES);
        for (ca, is_anchor) in candidates {
            if !visited.insert(ca.fingerprint) {
                continue;
            }
            let step = check_issuer(provider, child, &ca.cert, now, depth);
            match step {
                Ok(()) if is_anchor => {
                    chain.push(ca.cert.tbs_certificate().subject().to_string());
                    return Ok(());
                }
                Ok(()) => {
                    chain.push(ca.cert.tbs_certificate().subject().to_string());
                    match self.build(provider, &ca.cert, now, depth + 1, chain, visited) {
                        Ok(()) => return Ok(()),
                        Err(e) => {
                            chain.pop();
                            last_error = e;
                        }
                    }
                }
                Err(e) => last_error = e,
            }
            visited.remove(&ca.fingerprint);
        }
        Err(last_error)
    }
}

/// Checks that `ca` may issue `child` (`below` CA certificates sit between them and the EK) and
/// that `child`'s signature is `ca`'s.
fn check_issuer(
    provider: &dyn CryptoProvider,
    child: &Certificate,
    ca: &Certificate,
    now: u64,
    below: usize,
) -> Result<(), EvidenceError> {
    let name = ca.tbs_certificate().subject().to_string();
    check_validity(ca, now, &name)?;
    check_critical(ca, &name)?;
    let tbs = ca.tbs_certificate();
    match tbs.get_extension::<BasicConstraints>() {
        Ok(Some((_, bc))) if bc.ca => {
            if let Some(limit) = bc.path_len_constraint
                && below > usize::from(limit)
            {
                return Err(EvidenceError::EkCa(format!(
                    "{name}: pathLenConstraint {limit} exceeded ({below} CA certificates below it)"
                )));
            }
        }
        Ok(_) => {
            return Err(EvidenceError::EkCa(format!(
                "{name} is not a CA (basicConstraints)"
            )));
        }
        Err(e) => {
            return Err(EvidenceError::Malformed(format!(
                "{name} basicConstraints: {e}"
            )));
        }
    }
    match tbs.get_extension::<KeyUsage>() {
        Ok(Some((_, ku))) if !ku.key_cert_sign() => {
            return Err(EvidenceError::EkCa(format!(
                "{name}: keyUsage lacks keyCertSign"
            )));
        }
        Ok(_) => {}
        Err(e) => return Err(EvidenceError::Malformed(format!("{name} keyUsage: {e}"))),
    }
    verify_signed_by(provider, child, ca)
}

fn parse(der: &[u8]) -> Result<Certificate, EvidenceError> {
    if der.len() > MAX_CERT {
        return Err(EvidenceError::Malformed(format!(
            "certificate of {} bytes",
            der.len()
        )));
    }
    Certificate::from_der(der).map_err(|e| EvidenceError::Malformed(format!("certificate: {e}")))
}

fn name_der(cert: &Certificate, issuer: bool) -> Result<Vec<u8>, EvidenceError> {
    let tbs = cert.tbs_certificate();
    let name = if issuer { tbs.issuer() } else { tbs.subject() };
    name.to_der()
        .map_err(|e| EvidenceError::Malformed(format!("name: {e}")))
}

fn check_validity(cert: &Certificate, now: u64, what: &str) -> Result<(), EvidenceError> {
    let v = cert.tbs_certificate().validity();
    let not_before = v.not_before.to_unix_duration().as_secs();
    let not_after = v.not_after.to_unix_duration().as_secs();
    if now < not_before {
        return Err(EvidenceError::EkExpired(format!(
            "{what} is not valid before {}",
            v.not_before
        )));
    }
    if now > not_after {
        return Err(EvidenceError::EkExpired(format!(
            "{what} expired at {}",
            v.not_after
        )));
    }
    Ok(())
}

fn check_critical(cert: &Certificate, what: &str) -> Result<(), EvidenceError> {
    for ext in cert.tbs_certificate().extensions().into_iter().flatten() {
        let oid = ext.extn_id.to_string();
        if ext.critical && !ALLOWED_CRITICAL.contains(&oid.as_str()) {
            return Err(EvidenceError::EkUntrusted(format!(
                "{what}: unknown critical extension {oid}"
            )));
        }
    }
    Ok(())
}

/// A public key from a certificate, owned, in the provider's terms.
enum OwnedKey {
    Rsa {
        modulus: Vec<u8>,
        exponent: u32,
    },
    Ecc {
        curve: EccCurve,
        x: Vec<u8>,
        y: Vec<u8>,
    },
}

impl OwnedKey {
    fn as_verify_key(&self) -> VerifyKey<'_> {
        match self {
            OwnedKey::Rsa { modulus, exponent } => VerifyKey::Rsa {
                modulus,
                exponent: *exponent,
            },
            OwnedKey::Ecc { curve, x, y } => VerifyKey::Ecc {
                curve: *curve,
                x,
                y,
            },
        }
    }
}

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";

fn spki_key(cert: &Certificate) -> Result<OwnedKey, EvidenceError> {
    let spki = cert.tbs_certificate().subject_public_key_info();
    let bits = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| EvidenceError::Malformed("public key bit string".into()))?;
    match spki.algorithm.oid.to_string().as_str() {
        OID_RSA => {
            use rsa::pkcs1::DecodeRsaPublicKey;
            use rsa::traits::PublicKeyParts;
            let key = rsa::RsaPublicKey::from_pkcs1_der(bits)
                .map_err(|e| EvidenceError::Malformed(format!("RSA public key: {e}")))?;
            let e = key.e().to_bytes_be();
            if e.len() > 4 {
                return Err(EvidenceError::UnsupportedAlgorithm(
                    "RSA exponent wider than 32 bits".into(),
                ));
            }
            let exponent = e.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
            Ok(OwnedKey::Rsa {
                modulus: key.n().to_bytes_be(),
                exponent,
            })
        }
        OID_EC => {
            let curve_oid = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<x509_cert::der::asn1::ObjectIdentifier>().ok())
                .map(|o| o.to_string());
            let curve = match curve_oid.as_deref() {
                Some(OID_P256) => EccCurve::P256,
                Some(OID_P384) => EccCurve::P384,
                other => {
                    return Err(EvidenceError::UnsupportedAlgorithm(format!(
                        "EC curve {other:?}"
                    )));
                }
            };
            let size = curve.size();
            match bits.split_first() {
                Some((0x04, xy)) if xy.len() == 2 * size => {
                    let (x, y) = xy.split_at(size);
                    Ok(OwnedKey::Ecc {
                        curve,
                        x: x.to_vec(),
                        y: y.to_vec(),
                    })
                }
                _ => Err(EvidenceError::Malformed(
                    "EC public key is not an uncompressed point".into(),
                )),
            }
        }
        other => Err(EvidenceError::UnsupportedAlgorithm(format!(
            "public key algorithm {other}"
        ))),
    }
}

fn ek_key(cert: &Certificate) -> Result<EkPublicKey, EvidenceError> {
    match spki_key(cert)? {
        OwnedKey::Rsa { modulus, exponent } if modulus.len() == 256 => {
            Ok(EkPublicKey::Rsa2048 { modulus, exponent })
        }
        OwnedKey::Rsa { modulus, .. } => Err(EvidenceError::UnsupportedAlgorithm(format!(
            "RSA EK of {} bits (RSA 2048 supported)",
            modulus.len() * 8
        ))),
        OwnedKey::Ecc { curve, x, y } => Ok(EkPublicKey::Ecc { curve, x, y }),
    }
}

/// Verifies `child`'s signature with `issuer`'s key.
fn verify_signed_by(
    provider: &dyn CryptoProvider,
    child: &Certificate,
    issuer: &Certificate,
) -> Result<(), EvidenceError> {
    // RFC 5280 4.1.1.2: the outer signatureAlgorithm (outside the signature) must equal the
    // signed one, parameters included; otherwise the same signed certificate has many
    // encodings, and anything keyed on its bytes can be dodged.
    if child.signature_algorithm() != child.tbs_certificate().signature() {
        return Err(EvidenceError::Malformed(
            "the certificate's outer signatureAlgorithm differs from the signed one".into(),
        ));
    }
    let alg = match child.signature_algorithm().oid.to_string().as_str() {
        "1.2.840.113549.1.1.11" => SigAlg::RsaPkcs1(HashAlg::Sha256),
        "1.2.840.113549.1.1.12" => SigAlg::RsaPkcs1(HashAlg::Sha384),
        "1.2.840.113549.1.1.13" => SigAlg::RsaPkcs1(HashAlg::Sha512),
        "1.2.840.10045.4.3.2" => SigAlg::Ecdsa(HashAlg::Sha256),
        "1.2.840.10045.4.3.3" => SigAlg::Ecdsa(HashAlg::Sha384),
        "1.2.840.113549.1.1.5" | "1.2.840.10045.4.1" => {
            return Err(EvidenceError::HashTooWeak(
                "certificate signed with SHA-1".into(),
            ));
        }
        other => {
            return Err(EvidenceError::UnsupportedAlgorithm(format!(
                "certificate signature algorithm {other}"
            )));
        }
    };
    let key = spki_key(issuer)?;
    let tbs = child
        .tbs_certificate()
        .to_der()
        .map_err(|e| EvidenceError::Malformed(format!("certificate: {e}")))?;
    let sig = child
        .signature()
        .as_bytes()
        .ok_or_else(|| EvidenceError::Malformed("signature bit string".into()))?;
    let bad = |e: EvidenceError| {
        untrusted(format!(
            "signature of {} by {}: {e}",
            child.tbs_certificate().subject(),
            issuer.tbs_certificate().subject()
        ))
    };
    match (&key, alg) {
        (OwnedKey::Ecc { curve, .. }, SigAlg::Ecdsa(hash)) => {
            // The provider pairs P-256 with SHA-256 and P-384 with SHA-384 only.
            if !matches!(
                (curve, hash),
                (EccCurve::P256, HashAlg::Sha256) | (EccCurve::P384, HashAlg::Sha384)
            ) {
                return Err(EvidenceError::UnsupportedAlgorithm(format!(
                    "ECDSA {curve:?} with {}",
                    hash.name()
                )));
            }
            let (r, s) = crate::crypto::der_ecdsa(sig)?;
            provider
                .verify(
                    &key.as_verify_key(),
                    alg,
                    &tbs,
                    &SignatureValue::Ecdsa { r, s },
                )
                .map_err(bad)
        }
        (OwnedKey::Rsa { .. }, SigAlg::RsaPkcs1(_)) => provider
            .verify(&key.as_verify_key(), alg, &tbs, &SignatureValue::Rsa(sig))
            .map_err(bad),
        _ => Err(untrusted(
            "the issuer's key type does not match the signature algorithm".into(),
        )),
    }
}
