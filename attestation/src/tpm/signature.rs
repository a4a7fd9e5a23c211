//! TPMT_SIGNATURE for ECDSA, RSASSA and RSAPSS.

use super::wire::{Reader, Writer};
use super::{HashAlg, MAX_ECC, MAX_RSA, alg};
use crate::error::EvidenceError;

/// A parsed TPMT_SIGNATURE.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Signature {
    /// ECDSA: the hash and (r, s) as the TPM sent them (big-endian, possibly unpadded).
    Ecdsa {
        /// The hash the TPM used.
        hash: HashAlg,
        /// r.
        r: Vec<u8>,
        /// s.
        s: Vec<u8>,
    },
    /// RSASSA-PKCS1-v1_5.
    RsaSsa {
        /// The hash the TPM used.
        hash: HashAlg,
        /// The signature.
        sig: Vec<u8>,
    },
    /// RSASSA-PSS.
    RsaPss {
        /// The hash the TPM used.
        hash: HashAlg,
        /// The signature.
        sig: Vec<u8>,
    },
}

impl Signature {
    /// Parses a TPMT_SIGNATURE (the whole slice).
    pub fn from_tpmt(bytes: &[u8]) -> Result<Self, EvidenceError> {
        let mut r = Reader::new(bytes, "TPMT_SIGNATURE");
        let sig_alg = r.u16()?;
        let sig = match sig_alg {
            alg::ECDSA => {
                let hash = HashAlg::read(&mut r, "signature hash")?;
                let r_ = r.tpm2b(MAX_ECC, "signatureR")?.to_vec();
                let s = r.tpm2b(MAX_ECC, "signatureS")?.to_vec();
                Signature::Ecdsa { hash, r: r_, s }
            }
            alg::RSASSA => {
                let hash = HashAlg::read(&mut r, "signature hash")?;
                Signature::RsaSsa {
                    hash,
                    sig: r.tpm2b(MAX_RSA, "sig")?.to_vec(),
                }
            }
            alg::RSAPSS => {
                let hash = HashAlg::read(&mut r, "signature hash")?;
                Signature::RsaPss {
                    hash,
                    sig: r.tpm2b(MAX_RSA, "sig")?.to_vec(),
                }
            }
            other => {
                return Err(EvidenceError::UnsupportedAlgorithm(format!(
                    "signature algorithm {other:#06x}"
                )));
            }
        };
        r.finish()?;
        Ok(sig)
    }

    /// The hash the signature was made over.
    pub fn hash(&self) -> HashAlg {
        match self {
            Signature::Ecdsa { hash, .. }
            | Signature::RsaSsa { hash, .. }
            | Signature::RsaPss { hash, .. } => *hash,
        }
    }

    /// The marshalled TPMT_SIGNATURE.
    pub fn to_tpmt(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Signature::Ecdsa { hash, r, s } => {
                w.u16(alg::ECDSA);
                w.u16(hash.id());
                w.tpm2b(r);
                w.tpm2b(s);
            }
            Signature::RsaSsa { hash, sig } => {
                w.u16(alg::RSASSA);
                w.u16(hash.id());
                w.tpm2b(sig);
            }
            Signature::RsaPss { hash, sig } => {
                w.u16(alg::RSAPSS);
                w.u16(hash.id());
                w.tpm2b(sig);
            }
        }
        w.buf
    }
}
