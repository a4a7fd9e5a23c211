//! What the clients read of certificates: PEM, the pinned fingerprint, SPIFFE IDs.

use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

/// A certificate's DER as PEM.
pub fn pem(der: &[u8]) -> Result<String, String> {
    x509_cert::der::pem::encode_string("CERTIFICATE", x509_cert::der::pem::LineEnding::LF, der)
        .map_err(|e| e.to_string())
}

/// `sha256:<hex>` of a certificate's DER: what clients pin with `--fingerprint`.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// The SPIFFE IDs (URI subject alternative names with the `spiffe` scheme) a certificate
/// names.
pub fn spiffe_ids(cert_der: &[u8]) -> Result<Vec<String>, String> {
    let cert = Certificate::from_der(cert_der).map_err(|e| e.to_string())?;
    let san = match cert.tbs_certificate().get_extension::<SubjectAltName>() {
        Ok(Some((_, san))) => san,
        Ok(None) => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    Ok(san
        .0
        .iter()
        .filter_map(|n| match n {
            GeneralName::UniformResourceIdentifier(u) if u.as_str().starts_with("spiffe://") => {
                Some(u.as_str().to_string())
            }
            _ => None,
        })
        .collect())
}
