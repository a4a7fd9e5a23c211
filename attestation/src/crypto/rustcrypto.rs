//! The RustCrypto provider: p256, p384, rsa. Pure Rust.

use ecdsa::signature::hazmat::PrehashVerifier;

use super::{CryptoProvider, SigAlg, SignatureValue, VerifyKey, pad, rsa_exponent};
use crate::error::EvidenceError;
use crate::tpm::HashAlg;
use crate::tpm::public::EccCurve;

/// RustCrypto signature verification.
#[derive(Debug, Clone, Copy, Default)]
pub struct RustCrypto;

fn bad(why: &str) -> EvidenceError {
    EvidenceError::Signature(why.to_string())
}

impl CryptoProvider for RustCrypto {
    fn name(&self) -> &'static str {
        "rustcrypto"
    }

    fn verify(
        &self,
        key: &VerifyKey<'_>,
        alg: SigAlg,
        message: &[u8],
        signature: &SignatureValue<'_>,
    ) -> Result<(), EvidenceError> {
        match (key, alg, signature) {
            (
                VerifyKey::Ecc { curve, x, y },
                SigAlg::Ecdsa(hash),
                SignatureValue::Ecdsa { r, s },
            ) => {
                // The same pairings as the aws-lc provider: the providers must agree on what they
                // accept (verify_prehash would otherwise pad or truncate any digest).
                if !matches!(
                    (curve, hash),
                    (EccCurve::P256, HashAlg::Sha256) | (EccCurve::P384, HashAlg::Sha384)
                ) {
                    return Err(EvidenceError::UnsupportedAlgorithm(format!(
                        "ECDSA on {curve:?} with {}",
                        hash.name()
                    )));
                }
                let digest = hash.digest(message)?;
                let size = curve.size();
                let mut point = vec![0x04];
                point.extend_from_slice(&pad(x, size, "x")?);
                point.extend_from_slice(&pad(y, size, "y")?);
                let (r, s) = (pad(r, size, "r")?, pad(s, size, "s")?);
                match curve {
                    EccCurve::P256 => {
                        let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                            .map_err(|_| bad("public key is not a P-256 point"))?;
                        let sig = p256::ecdsa::Signature::from_scalars(
                            p256::FieldBytes::try_from(r.as_slice()).map_err(|_| bad("r"))?,
                            p256::FieldBytes::try_from(s.as_slice()).map_err(|_| bad("s"))?,
                        )
                        .map_err(|_| bad("r or s out of range"))?;
                        vk.verify_prehash(&digest, &sig)
                            .map_err(|_| bad("ECDSA P-256 verification failed"))
                    }
                    EccCurve::P384 => {
                        let vk = p384::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                            .map_err(|_| bad("public key is not a P-384 point"))?;
                        let sig = p384::ecdsa::Signature::from_scalars(
                            p384::FieldBytes::try_from(r.as_slice()).map_err(|_| bad("r"))?,
                            p384::FieldBytes::try_from(s.as_slice()).map_err(|_| bad("s"))?,
                        )
                        .map_err(|_| bad("r or s out of range"))?;
                        vk.verify_prehash(&digest, &sig)
                            .map_err(|_| bad("ECDSA P-384 verification failed"))
                    }
                }
            }
            (
                VerifyKey::Rsa { modulus, exponent },
                SigAlg::RsaPkcs1(hash) | SigAlg::RsaPss(hash),
                SignatureValue::Rsa(sig),
            ) => {
                use rsa::signature::Verifier as _;
                let n = rsa::BigUint::from_bytes_be(modulus);
                let e = rsa::BigUint::from(rsa_exponent(*exponent));
                let key =
                    rsa::RsaPublicKey::new(n, e).map_err(|_| bad("RSA public key invalid"))?;
                let pss = matches!(alg, SigAlg::RsaPss(_));
                macro_rules! check {
                    ($d:ty) => {
                        if pss {
                            let vk = rsa::pss::VerifyingKey::<$d>::new(key);
                            let sig = rsa::pss::Signature::try_from(*sig)
                                .map_err(|_| bad("RSA signature"))?;
                            vk.verify(message, &sig)
                                .map_err(|_| bad("RSASSA-PSS verification failed"))
                        } else {
                            let vk = rsa::pkcs1v15::VerifyingKey::<$d>::new(key);
                            let sig = rsa::pkcs1v15::Signature::try_from(*sig)
                                .map_err(|_| bad("RSA signature"))?;
                            vk.verify(message, &sig)
                                .map_err(|_| bad("RSASSA-PKCS1-v1_5 verification failed"))
                        }
                    };
                }
                match hash {
                    HashAlg::Sha256 => check!(sha2_010::Sha256),
                    HashAlg::Sha384 => check!(sha2_010::Sha384),
                    HashAlg::Sha512 => check!(sha2_010::Sha512),
                    HashAlg::Sha1 => Err(EvidenceError::HashTooWeak("SHA-1 signature".into())),
                }
            }
            _ => Err(EvidenceError::SignatureScheme(
                "key, algorithm and signature do not match".into(),
            )),
        }
    }
}
