//! Signature verification through a small provider trait, as in rustls: aws-lc-rs (fast; what the
//! binaries use) and RustCrypto (pure Rust, for embedding). Both accept low-S and high-S ECDSA.

#[cfg(feature = "aws-lc")]
mod awslc;
#[cfg(feature = "rustcrypto")]
mod rustcrypto;

#[cfg(feature = "aws-lc")]
pub use awslc::AwsLc;
#[cfg(feature = "rustcrypto")]
pub use rustcrypto::RustCrypto;

use crate::error::EvidenceError;
use crate::tpm::HashAlg;
use crate::tpm::public::EccCurve;

/// A public key to verify with, borrowed from a parsed public area.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum VerifyKey<'a> {
    /// An ECC point (affine coordinates, big-endian, possibly unpadded).
    Ecc {
        /// Curve.
        curve: EccCurve,
        /// x.
        x: &'a [u8],
        /// y.
        y: &'a [u8],
    },
    /// An RSA public key.
    Rsa {
        /// Modulus, big-endian.
        modulus: &'a [u8],
        /// Public exponent (0 means 65537, as in TPMS_RSA_PARMS).
        exponent: u32,
    },
}

/// A signature value.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum SignatureValue<'a> {
    /// ECDSA (r, s), big-endian, possibly unpadded.
    Ecdsa {
        /// r.
        r: &'a [u8],
        /// s.
        s: &'a [u8],
    },
    /// RSA signature bytes.
    Rsa(&'a [u8]),
}

/// Signature algorithms: the scheme with its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SigAlg {
    /// ECDSA over the hash of the message.
    Ecdsa(HashAlg),
    /// RSASSA-PKCS1-v1_5.
    RsaPkcs1(HashAlg),
    /// RSASSA-PSS (salt length equal to the hash length, as TPMs make them).
    RsaPss(HashAlg),
}

/// Verifies signatures over whole messages (the provider hashes). Every implementation accepts
/// exactly: ECDSA on P-256 with SHA-256 and on P-384 with SHA-384; RSASSA-PKCS1-v1_5 and RSASSA-PSS
/// (salt length = hash length) with SHA-256/384/512 and moduli of 2048 to 8192 bits.
pub trait CryptoProvider: std::fmt::Debug + Send + Sync {
    /// A short name for reports.
    fn name(&self) -> &'static str;

    /// Verifies `signature` over `message` under `key` with `alg`. Any failure, including a
    /// malformed key or signature, is an `EvidenceError::Signature` or `UnsupportedAlgorithm`.
    fn verify(
        &self,
        key: &VerifyKey<'_>,
        alg: SigAlg,
        message: &[u8],
        signature: &SignatureValue<'_>,
    ) -> Result<(), EvidenceError>;
}

/// The provider the binaries use: aws-lc-rs when compiled in, else RustCrypto.
#[cfg(any(feature = "aws-lc", feature = "rustcrypto"))]
pub fn default_provider() -> &'static dyn CryptoProvider {
    #[cfg(feature = "aws-lc")]
    {
        &AwsLc
    }
    #[cfg(not(feature = "aws-lc"))]
    {
        &RustCrypto
    }
}

/// Left-pads a big-endian integer to `size` bytes (TPMs send r, s and coordinates unpadded).
/// Refuses empty values and values longer than `size` once leading zeros are dropped.
pub(crate) fn pad(value: &[u8], size: usize, what: &str) -> Result<Vec<u8>, EvidenceError> {
    if value.is_empty() {
        return Err(EvidenceError::Signature(format!("{what} is empty")));
    }
    let first = value.iter().position(|b| *b != 0).unwrap_or(value.len());
    let trimmed = value.get(first..).unwrap_or_default();
    if trimmed.len() > size {
        return Err(EvidenceError::Signature(format!(
            "{what} is longer than {size} bytes"
        )));
    }
    let mut out = vec![0u8; size - trimmed.len()];
    out.extend_from_slice(trimmed);
    Ok(out)
}

/// The RSA exponent as TPMS_RSA_PARMS means it (0 is the default, 65537).
pub(crate) fn rsa_exponent(exponent: u32) -> u32 {
    if exponent == 0 { 65_537 } else { exponent }
}

/// Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER } (short-form lengths only: r and s of
/// P-256/P-384 always fit).
pub(crate) fn der_ecdsa(sig: &[u8]) -> Result<(&[u8], &[u8]), EvidenceError> {
    let bad = || EvidenceError::Malformed("ECDSA signature encoding".into());
    let (&tag, rest) = sig.split_first().ok_or_else(bad)?;
    let (&len, body) = rest.split_first().ok_or_else(bad)?;
    if tag != 0x30 || usize::from(len) != body.len() || len >= 0x80 {
        return Err(bad());
    }
    let (r, used) = der_integer(body)?;
    let (s, used_s) = der_integer(body.get(used..).ok_or_else(bad)?)?;
    if used + used_s != body.len() {
        return Err(bad());
    }
    Ok((r, s))
}

/// One short-form DER INTEGER: its content bytes and the bytes it used.
fn der_integer(b: &[u8]) -> Result<(&[u8], usize), EvidenceError> {
    let bad = || EvidenceError::Malformed("ECDSA signature encoding".into());
    match b {
        [0x02, n, v @ ..] if *n > 0 && *n < 0x80 && usize::from(*n) <= v.len() => Ok((
            v.get(..usize::from(*n)).ok_or_else(bad)?,
            2 + usize::from(*n),
        )),
        _ => Err(bad()),
    }
}
