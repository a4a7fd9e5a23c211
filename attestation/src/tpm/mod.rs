//! TPM 2.0 wire structures (TPM 2.0 Library, Part 2), parsed once at the edge into types.

pub mod attest;
pub mod pcr;
pub mod policy;
pub mod public;
pub mod signature;
pub mod tools;
pub(crate) mod wire;

use sha2::Digest as _;

use crate::error::EvidenceError;

/// TPM_ALG_ID values writ reads.
pub mod alg {
    pub const RSA: u16 = 0x0001;
    pub const SHA1: u16 = 0x0004;
    pub const HMAC: u16 = 0x0005;
    pub const AES: u16 = 0x0006;
    pub const KEYEDHASH: u16 = 0x0008;
    pub const XOR: u16 = 0x000A;
    pub const SHA256: u16 = 0x000B;
    pub const SHA384: u16 = 0x000C;
    pub const SHA512: u16 = 0x000D;
    pub const NULL: u16 = 0x0010;
    pub const RSASSA: u16 = 0x0014;
    pub const RSAES: u16 = 0x0015;
    pub const RSAPSS: u16 = 0x0016;
    pub const OAEP: u16 = 0x0017;
    pub const ECDSA: u16 = 0x0018;
    pub const ECDH: u16 = 0x0019;
    pub const ECDAA: u16 = 0x001A;
    pub const SM2: u16 = 0x001B;
    pub const ECSCHNORR: u16 = 0x001C;
    pub const ECMQV: u16 = 0x001D;
    pub const KDF1_SP800_56A: u16 = 0x0020;
    pub const KDF2: u16 = 0x0021;
    pub const KDF1_SP800_108: u16 = 0x0022;
    pub const ECC: u16 = 0x0023;
    pub const SYMCIPHER: u16 = 0x0025;
    pub const CFB: u16 = 0x0043;
}

/// Hash algorithms of PCR banks, names and signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum HashAlg {
    /// SHA-1: only as a PCR bank; never for names or signatures.
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlg {
    /// From a TPM_ALG_ID.
    pub fn from_id(id: u16) -> Option<Self> {
        match id {
            alg::SHA1 => Some(HashAlg::Sha1),
            alg::SHA256 => Some(HashAlg::Sha256),
            alg::SHA384 => Some(HashAlg::Sha384),
            alg::SHA512 => Some(HashAlg::Sha512),
            _ => None,
        }
    }

    /// The TPM_ALG_ID.
    pub fn id(self) -> u16 {
        match self {
            HashAlg::Sha1 => alg::SHA1,
            HashAlg::Sha256 => alg::SHA256,
            HashAlg::Sha384 => alg::SHA384,
            HashAlg::Sha512 => alg::SHA512,
        }
    }

    /// Digest size in bytes.
    pub fn size(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// From its tpm2-tools name (`sha1`, `sha256`, `sha384`, `sha512`).
    pub fn from_name(name: &str) -> Option<Self> {
        [
            HashAlg::Sha1,
            HashAlg::Sha256,
            HashAlg::Sha384,
            HashAlg::Sha512,
        ]
        .into_iter()
        .find(|h| h.name() == name)
    }

    /// The tpm2-tools name.
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
        }
    }

    /// Whether it is strong enough to bind names and signatures (SHA-256 or better).
    pub fn is_strong(self) -> bool {
        !matches!(self, HashAlg::Sha1)
    }

    /// Hashes `data`. SHA-1 is refused: writ never needs it as a hash function, only as a bank name.
    pub fn digest(self, data: &[u8]) -> Result<Vec<u8>, EvidenceError> {
        match self {
            HashAlg::Sha1 => Err(EvidenceError::HashTooWeak("SHA-1".into())),
            HashAlg::Sha256 => Ok(sha2::Sha256::digest(data).to_vec()),
            HashAlg::Sha384 => Ok(sha2::Sha384::digest(data).to_vec()),
            HashAlg::Sha512 => Ok(sha2::Sha512::digest(data).to_vec()),
        }
    }

    pub(crate) fn read(r: &mut wire::Reader<'_>, field: &str) -> Result<Self, EvidenceError> {
        let id = r.u16()?;
        HashAlg::from_id(id).ok_or_else(|| {
            EvidenceError::UnsupportedAlgorithm(format!("{field}: hash algorithm {id:#06x}"))
        })
    }
}

/// Largest digest (SHA-512).
pub(crate) const MAX_DIGEST: usize = 64;
/// Largest TPM2B_NAME: a 2-byte algorithm and a SHA-512 digest, or a 4-byte handle.
pub(crate) const MAX_NAME: usize = 2 + MAX_DIGEST;
/// Largest RSA modulus or signature writ reads (4096 bits).
pub(crate) const MAX_RSA: usize = 512;
/// Largest ECC coordinate (P-521).
pub(crate) const MAX_ECC: usize = 66;
