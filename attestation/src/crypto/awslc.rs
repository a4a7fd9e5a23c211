//! The aws-lc-rs provider: what the binaries use.

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};

use super::{CryptoProvider, SigAlg, SignatureValue, VerifyKey, pad, rsa_exponent};
use crate::error::EvidenceError;
use crate::tpm::HashAlg;
use crate::tpm::public::EccCurve;

/// aws-lc-rs signature verification.
#[derive(Debug, Clone, Copy, Default)]
pub struct AwsLc;

fn bad(why: &str) -> EvidenceError {
    EvidenceError::Signature(why.to_string())
}

impl CryptoProvider for AwsLc {
    fn name(&self) -> &'static str {
        "aws-lc-rs"
    }

    fn verify(
        &self,
        key: &VerifyKey<'_>,
        alg: SigAlg,
        message: &[u8],
        sig: &SignatureValue<'_>,
    ) -> Result<(), EvidenceError> {
        match (key, alg, sig) {
            (
                VerifyKey::Ecc { curve, x, y },
                SigAlg::Ecdsa(hash),
                SignatureValue::Ecdsa { r, s },
            ) => {
                let algorithm: &'static signature::EcdsaVerificationAlgorithm = match (curve, hash)
                {
                    (EccCurve::P256, HashAlg::Sha256) => &signature::ECDSA_P256_SHA256_FIXED,
                    (EccCurve::P384, HashAlg::Sha384) => &signature::ECDSA_P384_SHA384_FIXED,
                    _ => {
                        return Err(EvidenceError::UnsupportedAlgorithm(format!(
                            "ECDSA on {curve:?} with {}",
                            hash.name()
                        )));
                    }
                };
                let size = curve.size();
                let mut point = Vec::with_capacity(1 + 2 * size);
                point.push(0x04);
                point.extend_from_slice(&pad(x, size, "x")?);
                point.extend_from_slice(&pad(y, size, "y")?);
                let mut fixed = pad(r, size, "r")?;
                fixed.extend_from_slice(&pad(s, size, "s")?);
                UnparsedPublicKey::new(algorithm, &point)
                    .verify(message, &fixed)
                    .map_err(|_| bad("ECDSA verification failed"))
            }
            (
                VerifyKey::Rsa { modulus, exponent },
                SigAlg::RsaPkcs1(hash) | SigAlg::RsaPss(hash),
                SignatureValue::Rsa(s),
            ) => {
                let pss = matches!(alg, SigAlg::RsaPss(_));
                let algorithm: &'static signature::RsaParameters = match (pss, hash) {
                    (false, HashAlg::Sha256) => &signature::RSA_PKCS1_2048_8192_SHA256,
                    (false, HashAlg::Sha384) => &signature::RSA_PKCS1_2048_8192_SHA384,
                    (false, HashAlg::Sha512) => &signature::RSA_PKCS1_2048_8192_SHA512,
                    (true, HashAlg::Sha256) => &signature::RSA_PSS_2048_8192_SHA256,
                    (true, HashAlg::Sha384) => &signature::RSA_PSS_2048_8192_SHA384,
                    (true, HashAlg::Sha512) => &signature::RSA_PSS_2048_8192_SHA512,
                    (_, HashAlg::Sha1) => {
                        return Err(EvidenceError::HashTooWeak("SHA-1 signature".into()));
                    }
                };
                let e = rsa_exponent(*exponent).to_be_bytes();
                let first = e.iter().position(|b| *b != 0).unwrap_or(3);
                // aws-lc wants the modulus without leading zero bytes (DER-style encodings add one).
                let lead = modulus
                    .iter()
                    .position(|b| *b != 0)
                    .unwrap_or(modulus.len());
                let components = RsaPublicKeyComponents {
                    n: modulus.get(lead..).unwrap_or_default(),
                    e: e.get(first..).unwrap_or(&e),
                };
                components
                    .verify(algorithm, message, s)
                    .map_err(|_| bad("RSA verification failed"))
            }
            _ => Err(EvidenceError::SignatureScheme(
                "key, algorithm and signature do not match".into(),
            )),
        }
    }
}
