//! TPMT_PUBLIC / TPM2B_PUBLIC for RSA and ECC keys, and object names.

use super::wire::{Reader, Writer};
use super::{HashAlg, MAX_DIGEST, MAX_ECC, MAX_RSA, alg};
use crate::error::EvidenceError;

/// TPMA_OBJECT bits writ checks.
pub mod attr {
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const ST_CLEAR: u32 = 1 << 2;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    pub const NO_DA: u32 = 1 << 10;
    pub const ENCRYPTED_DUPLICATION: u32 = 1 << 11;
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
    pub const SIGN_ENCRYPT: u32 = 1 << 18;
}

/// ECC curves writ accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EccCurve {
    /// NIST P-256 (TPM_ECC_NIST_P256).
    P256,
    /// NIST P-384 (TPM_ECC_NIST_P384).
    P384,
}

impl EccCurve {
    /// From a TPM_ECC_CURVE.
    pub fn from_id(id: u16) -> Option<Self> {
        match id {
            0x0003 => Some(EccCurve::P256),
            0x0004 => Some(EccCurve::P384),
            _ => None,
        }
    }

    /// The TPM_ECC_CURVE.
    pub fn id(self) -> u16 {
        match self {
            EccCurve::P256 => 0x0003,
            EccCurve::P384 => 0x0004,
        }
    }

    /// Coordinate size in bytes.
    pub fn size(self) -> usize {
        match self {
            EccCurve::P256 => 32,
            EccCurve::P384 => 48,
        }
    }
}

/// A signing or decryption scheme with its hash, as a key's public area pins it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scheme {
    /// TPM_ALG_NULL: the key does not pin a scheme (the command chooses).
    Null,
    /// ECDSA with the hash.
    Ecdsa(HashAlg),
    /// RSASSA-PKCS1-v1_5 with the hash.
    RsaSsa(HashAlg),
    /// RSASSA-PSS with the hash.
    RsaPss(HashAlg),
    /// Any other scheme (ECDH, OAEP, ...), by its algorithm id.
    Other(u16),
}

/// The key-type-specific part of a public area.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyParams {
    /// An RSA key.
    Rsa {
        /// The symmetric algorithm for a storage key (TPM_ALG_NULL otherwise).
        symmetric: u16,
        /// The scheme the key pins.
        scheme: Scheme,
        /// Modulus size in bits.
        key_bits: u16,
        /// Public exponent (0 means 65537).
        exponent: u32,
        /// The modulus, big-endian.
        modulus: Vec<u8>,
    },
    /// An ECC key.
    Ecc {
        /// The symmetric algorithm for a storage key (TPM_ALG_NULL otherwise).
        symmetric: u16,
        /// The scheme the key pins.
        scheme: Scheme,
        /// The curve.
        curve: EccCurve,
        /// The KDF scheme id (TPM_ALG_NULL for signing keys).
        kdf: u16,
        /// Affine x, big-endian.
        x: Vec<u8>,
        /// Affine y, big-endian.
        y: Vec<u8>,
    },
}

/// A parsed TPMT_PUBLIC of an RSA or ECC key, with the exact bytes it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Public {
    name_alg: HashAlg,
    attributes: u32,
    auth_policy: Vec<u8>,
    params: KeyParams,
    raw: Vec<u8>,
}

impl Public {
    /// Parses a TPMT_PUBLIC (the whole slice).
    pub fn from_tpmt(bytes: &[u8]) -> Result<Self, EvidenceError> {
        let mut r = Reader::new(bytes, "TPMT_PUBLIC");
        let public = Self::read(&mut r, bytes)?;
        r.finish()?;
        Ok(public)
    }

    /// Parses a TPM2B_PUBLIC (a u16 size, then a TPMT_PUBLIC of exactly that size).
    pub fn from_tpm2b(bytes: &[u8]) -> Result<Self, EvidenceError> {
        let mut r = Reader::new(bytes, "TPM2B_PUBLIC");
        let inner = r.tpm2b(bytes.len(), "TPM2B_PUBLIC.size")?;
        r.finish()?;
        Self::from_tpmt(inner)
    }

    fn read(r: &mut Reader<'_>, raw: &[u8]) -> Result<Self, EvidenceError> {
        let kind = r.u16()?;
        let name_alg = HashAlg::read(r, "TPMT_PUBLIC.nameAlg")?;
        let attributes = r.u32()?;
        let auth_policy = r.tpm2b(MAX_DIGEST, "authPolicy")?.to_vec();
        let params = match kind {
            alg::RSA => {
                let symmetric = read_sym_def(r)?;
                let scheme = read_scheme(r)?;
                let key_bits = r.u16()?;
                let exponent = r.u32()?;
                let modulus = r.tpm2b(MAX_RSA, "unique.rsa")?.to_vec();
                KeyParams::Rsa {
                    symmetric,
                    scheme,
                    key_bits,
                    exponent,
                    modulus,
                }
            }
            alg::ECC => {
                let symmetric = read_sym_def(r)?;
                let scheme = read_scheme(r)?;
                let curve_id = r.u16()?;
                let curve = EccCurve::from_id(curve_id).ok_or_else(|| {
                    EvidenceError::UnsupportedAlgorithm(format!("ECC curve {curve_id:#06x}"))
                })?;
                let kdf = r.u16()?;
                if kdf != alg::NULL {
                    // TPMT_KDF_SCHEME details: the KDF's hash.
                    r.u16()?;
                }
                let x = r.tpm2b(MAX_ECC, "unique.ecc.x")?.to_vec();
                let y = r.tpm2b(MAX_ECC, "unique.ecc.y")?.to_vec();
                KeyParams::Ecc {
                    symmetric,
                    scheme,
                    curve,
                    kdf,
                    x,
                    y,
                }
            }
            other => {
                return Err(EvidenceError::UnsupportedAlgorithm(format!(
                    "public area of type {other:#06x} (only RSA and ECC keys)"
                )));
            }
        };
        Ok(Public {
            name_alg,
            attributes,
            auth_policy,
            params,
            raw: raw.to_vec(),
        })
    }

    /// The name algorithm.
    pub fn name_alg(&self) -> HashAlg {
        self.name_alg
    }

    /// TPMA_OBJECT.
    pub fn attributes(&self) -> u32 {
        self.attributes
    }

    /// Whether every bit of `mask` is set.
    pub fn has(&self, mask: u32) -> bool {
        self.attributes & mask == mask
    }

    /// The authPolicy digest (empty if none).
    pub fn auth_policy(&self) -> &[u8] {
        &self.auth_policy
    }

    /// The key's parameters and public value.
    pub fn params(&self) -> &KeyParams {
        &self.params
    }

    /// The marshalled TPMT_PUBLIC, exactly as parsed.
    pub fn tpmt_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// The object's name: nameAlg || H_nameAlg(TPMT_PUBLIC). SHA-1 name algorithms are refused.
    pub fn name(&self) -> Result<Vec<u8>, EvidenceError> {
        if !self.name_alg.is_strong() {
            return Err(EvidenceError::HashTooWeak(format!(
                "name algorithm {}",
                self.name_alg.name()
            )));
        }
        let mut name = self.name_alg.id().to_be_bytes().to_vec();
        name.extend_from_slice(&self.name_alg.digest(&self.raw)?);
        Ok(name)
    }
}

/// Builds a TPMT_PUBLIC from parts (tests, forges, round trips).
pub fn encode(
    name_alg: HashAlg,
    attributes: u32,
    auth_policy: &[u8],
    params: &KeyParams,
) -> Vec<u8> {
    let mut w = Writer::default();
    let write_scheme = |w: &mut Writer, s: &Scheme| match s {
        Scheme::Null => w.u16(alg::NULL),
        Scheme::Ecdsa(h) => {
            w.u16(alg::ECDSA);
            w.u16(h.id());
        }
        Scheme::RsaSsa(h) => {
            w.u16(alg::RSASSA);
            w.u16(h.id());
        }
        Scheme::RsaPss(h) => {
            w.u16(alg::RSAPSS);
            w.u16(h.id());
        }
        Scheme::Other(id) => {
            w.u16(*id);
            w.u16(alg::SHA256);
        }
    };
    let write_sym = |w: &mut Writer, sym: u16| {
        w.u16(sym);
        if sym != alg::NULL {
            w.u16(128);
            w.u16(alg::CFB);
        }
    };
    match params {
        KeyParams::Rsa {
            symmetric,
            scheme,
            key_bits,
            exponent,
            modulus,
        } => {
            w.u16(alg::RSA);
            w.u16(name_alg.id());
            w.u32(attributes);
            w.tpm2b(auth_policy);
            write_sym(&mut w, *symmetric);
            write_scheme(&mut w, scheme);
            w.u16(*key_bits);
            w.u32(*exponent);
            w.tpm2b(modulus);
        }
        KeyParams::Ecc {
            symmetric,
            scheme,
            curve,
            kdf,
            x,
            y,
        } => {
            w.u16(alg::ECC);
            w.u16(name_alg.id());
            w.u32(attributes);
            w.tpm2b(auth_policy);
            write_sym(&mut w, *symmetric);
            write_scheme(&mut w, scheme);
            w.u16(curve.id());
            w.u16(*kdf);
            if *kdf != alg::NULL {
                w.u16(alg::SHA256);
            }
            w.tpm2b(x);
            w.tpm2b(y);
        }
    }
    w.buf
}

/// TPMT_SYM_DEF_OBJECT: the algorithm, and key bits and mode unless it is NULL.
fn read_sym_def(r: &mut Reader<'_>) -> Result<u16, EvidenceError> {
    let algorithm = r.u16()?;
    if algorithm != alg::NULL {
        r.u16()?; // keyBits
        r.u16()?; // mode
    }
    Ok(algorithm)
}

/// TPMT_RSA_SCHEME / TPMT_ECC_SCHEME: the scheme and its details.
fn read_scheme(r: &mut Reader<'_>) -> Result<Scheme, EvidenceError> {
    let id = r.u16()?;
    Ok(match id {
        alg::NULL => Scheme::Null,
        // RSAES carries no details.
        alg::RSAES => Scheme::Other(id),
        alg::ECDSA => Scheme::Ecdsa(HashAlg::read(r, "scheme hash")?),
        alg::RSASSA => Scheme::RsaSsa(HashAlg::read(r, "scheme hash")?),
        alg::RSAPSS => Scheme::RsaPss(HashAlg::read(r, "scheme hash")?),
        alg::ECDAA => {
            r.u16()?; // hash
            r.u16()?; // count
            Scheme::Other(id)
        }
        alg::ECDH | alg::ECMQV | alg::SM2 | alg::ECSCHNORR | alg::OAEP => {
            r.u16()?; // hash
            Scheme::Other(id)
        }
        other => {
            return Err(EvidenceError::UnsupportedAlgorithm(format!(
                "scheme {other:#06x}"
            )));
        }
    })
}
