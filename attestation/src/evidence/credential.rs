//! Software TPM2_MakeCredential (TPM 2.0 Part 1, "Credential Protection"; Part 3, MakeCredential).
//!
//! The appliance encrypts a secret to the EK (whose public key comes from the EK certificate) bound
//! to the AK's name. Only a TPM holding both that EK and a loaded object with that name can recover
//! it with TPM2_ActivateCredential: that is how the AK is proved to live beside the EK.
//!
//! * RSA EK: seed encrypted with RSA-OAEP (label "IDENTITY\0").
//! * ECC EK: seed from ECDH with an ephemeral key and KDFe (label "IDENTITY"); the ephemeral public
//!   point is the encrypted secret.
//! * Then symKey = KDFa(nameAlg, seed, "STORAGE", akName, "", symBits), encIdentity = AES-CFB (IV 0)
//!   of TPM2B(credential), hmacKey = KDFa(nameAlg, seed, "INTEGRITY", "", "", hashBits), and the
//!   credential blob is TPM2B(HMAC(hmacKey, encIdentity || akName)) || encIdentity.
//!
//! Randomness is injected by the caller (the crate does no I/O).

use hmac::{Hmac, Mac};

use crate::error::EvidenceError;
use crate::tpm::HashAlg;
use crate::tpm::public::EccCurve;
use crate::tpm::wire::Writer;

/// An EK public key, as taken from the EK certificate, with the TCG EK template parameters its
/// type implies (TCG EK Credential Profile: RSA 2048 and ECC P-256 use SHA-256 and AES-128, ECC
/// P-384 uses SHA-384 and AES-256).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EkPublicKey {
    /// RSA 2048.
    Rsa2048 {
        /// Modulus, big-endian.
        modulus: Vec<u8>,
        /// Public exponent.
        exponent: u32,
    },
    /// ECC NIST P-256 or P-384.
    Ecc {
        /// Curve.
        curve: EccCurve,
        /// Affine x, big-endian.
        x: Vec<u8>,
        /// Affine y, big-endian.
        y: Vec<u8>,
    },
}

impl EkPublicKey {
    /// A stable identifier of the key itself (not of any certificate's bytes, which an outsider
    /// can vary): SHA-256 over `rsa2048:` + modulus hex + `:` + exponent, or `ecc:` + curve + `:`
    /// + x hex + `:` + y hex, lowercase hex.
    pub fn key_id(&self) -> String {
        use sha2::Digest as _;
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let text = match self {
            EkPublicKey::Rsa2048 { modulus, exponent } => {
                format!("rsa2048:{}:{exponent}", hex(modulus))
            }
            EkPublicKey::Ecc { curve, x, y } => {
                format!("ecc:{curve:?}:{}:{}", hex(x), hex(y))
            }
        };
        hex(&sha2::Sha256::digest(text.as_bytes()))
    }

    fn profile(&self) -> (HashAlg, usize) {
        match self {
            EkPublicKey::Rsa2048 { .. }
            | EkPublicKey::Ecc {
                curve: EccCurve::P256,
                ..
            } => (HashAlg::Sha256, 16),
            EkPublicKey::Ecc {
                curve: EccCurve::P384,
                ..
            } => (HashAlg::Sha384, 32),
        }
    }
}

/// What the attester hands to TPM2_ActivateCredential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialChallenge {
    /// The TPM2B_ID_OBJECT buffer (credentialBlob), without its size prefix.
    pub id_object: Vec<u8>,
    /// The TPM2B_ENCRYPTED_SECRET buffer, without its size prefix.
    pub encrypted_secret: Vec<u8>,
}

/// Largest credential: a TPM2B_DIGEST.
const MAX_CREDENTIAL: usize = 64;

/// Makes a credential challenge for the AK named `ak_name`, readable only by the TPM holding `ek`.
/// `random` fills buffers with cryptographically secure random bytes (the OS RNG in the appliance).
pub fn make_credential(
    ek: &EkPublicKey,
    ak_name: &[u8],
    credential: &[u8],
    random: &mut dyn FnMut(&mut [u8]) -> Result<(), EvidenceError>,
) -> Result<CredentialChallenge, EvidenceError> {
    if credential.is_empty() || credential.len() > MAX_CREDENTIAL {
        return Err(EvidenceError::NonceInvalid(format!(
            "credential of {} bytes (1..=64 allowed)",
            credential.len()
        )));
    }
    if ak_name.len() < 2 {
        return Err(EvidenceError::Malformed("AK name too short".into()));
    }
    if let EkPublicKey::Rsa2048 { modulus, .. } = ek
        && (modulus.len() != 256 || modulus.first().is_none_or(|b| *b < 0x80))
    {
        return Err(EvidenceError::UnsupportedAlgorithm(format!(
            "RSA EK modulus of {} bytes (RSA 2048 required)",
            modulus.len()
        )));
    }
    let (name_alg, sym_bytes) = ek.profile();
    let (seed, encrypted_secret) = match ek {
        EkPublicKey::Rsa2048 { modulus, exponent } => {
            let mut seed = vec![0u8; name_alg.size()];
            random(&mut seed)?;
            let encrypted = rsa_oaep_identity(modulus, *exponent, &seed, random)?;
            (seed, encrypted)
        }
        EkPublicKey::Ecc { curve, x, y } => ecdh_seed(*curve, x, y, name_alg, random)?,
    };
    let sym_key = kdfa(name_alg, &seed, b"STORAGE", ak_name, &[], sym_bytes * 8)?;
    let mut plain = Writer::default();
    plain.tpm2b(credential);
    let mut enc_identity = plain.buf;
    aes_cfb_encrypt(&sym_key, &mut enc_identity)?;
    let hmac_key = kdfa(name_alg, &seed, b"INTEGRITY", &[], &[], name_alg.size() * 8)?;
    let outer = hmac_concat(name_alg, &hmac_key, &[&enc_identity, ak_name])?;
    let mut w = Writer::default();
    w.tpm2b(&outer);
    w.bytes(&enc_identity);
    Ok(CredentialChallenge {
        id_object: w.buf,
        encrypted_secret,
    })
}

type HmacSha256 = Hmac<sha2_010::Sha256>;
type HmacSha384 = Hmac<sha2_010::Sha384>;

fn hmac_concat(hash: HashAlg, key: &[u8], parts: &[&[u8]]) -> Result<Vec<u8>, EvidenceError> {
    let bad = || EvidenceError::Malformed("HMAC key".into());
    Ok(match hash {
        HashAlg::Sha256 => {
            let mut m = HmacSha256::new_from_slice(key).map_err(|_| bad())?;
            for p in parts {
                m.update(p);
            }
            m.finalize().into_bytes().to_vec()
        }
        HashAlg::Sha384 => {
            let mut m = HmacSha384::new_from_slice(key).map_err(|_| bad())?;
            for p in parts {
                m.update(p);
            }
            m.finalize().into_bytes().to_vec()
        }
        other => {
            return Err(EvidenceError::UnsupportedAlgorithm(format!(
                "KDF hash {}",
                other.name()
            )));
        }
    })
}

/// KDFa (SP 800-108 counter mode with HMAC), as TPM 2.0 Part 1 defines it: the label is followed
/// by a zero byte.
pub(crate) fn kdfa(
    hash: HashAlg,
    key: &[u8],
    label: &[u8],
    context_u: &[u8],
    context_v: &[u8],
    bits: usize,
) -> Result<Vec<u8>, EvidenceError> {
    let bytes = bits.div_ceil(8);
    let bits32 = u32::try_from(bits).map_err(|_| EvidenceError::Malformed("KDFa size".into()))?;
    let mut out = Vec::with_capacity(bytes + hash.size());
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let block = hmac_concat(
            hash,
            key,
            &[
                &counter.to_be_bytes(),
                label,
                &[0u8],
                context_u,
                context_v,
                &bits32.to_be_bytes(),
            ],
        )?;
        out.extend_from_slice(&block);
        counter = counter
            .checked_add(1)
            .ok_or_else(|| EvidenceError::Malformed("KDFa counter".into()))?;
    }
    out.truncate(bytes);
    Ok(out)
}

/// KDFe (SP 800-56A single-step, hash-based), as TPM 2.0 Part 1 defines it for ECDH seeds.
fn kdfe(
    hash: HashAlg,
    z: &[u8],
    label: &[u8],
    party_u: &[u8],
    party_v: &[u8],
    bits: usize,
) -> Result<Vec<u8>, EvidenceError> {
    use sha2::Digest as _;
    let bytes = bits.div_ceil(8);
    let mut out = Vec::with_capacity(bytes + hash.size());
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let mut data =
            Vec::with_capacity(4 + z.len() + label.len() + 1 + party_u.len() + party_v.len());
        data.extend_from_slice(&counter.to_be_bytes());
        data.extend_from_slice(z);
        data.extend_from_slice(label);
        data.push(0);
        data.extend_from_slice(party_u);
        data.extend_from_slice(party_v);
        let block = match hash {
            HashAlg::Sha256 => sha2::Sha256::digest(&data).to_vec(),
            HashAlg::Sha384 => sha2::Sha384::digest(&data).to_vec(),
            other => {
                return Err(EvidenceError::UnsupportedAlgorithm(format!(
                    "KDFe hash {}",
                    other.name()
                )));
            }
        };
        out.extend_from_slice(&block);
        counter = counter
            .checked_add(1)
            .ok_or_else(|| EvidenceError::Malformed("KDFe counter".into()))?;
    }
    out.truncate(bytes);
    Ok(out)
}

fn aes_cfb_encrypt(key: &[u8], data: &mut [u8]) -> Result<(), EvidenceError> {
    use cfb_mode::cipher::{AsyncStreamCipher, KeyIvInit};
    let iv = [0u8; 16];
    let bad = || EvidenceError::Malformed("AES key size".into());
    match key.len() {
        16 => cfb_mode::Encryptor::<aes::Aes128>::new_from_slices(key, &iv)
            .map_err(|_| bad())?
            .encrypt(data),
        32 => cfb_mode::Encryptor::<aes::Aes256>::new_from_slices(key, &iv)
            .map_err(|_| bad())?
            .encrypt(data),
        _ => return Err(bad()),
    }
    Ok(())
}

/// The caller's random source, seen as a rand_core 0.6 RNG (what rsa 0.9's OAEP takes). A failing
/// source makes the next `try_fill_bytes` fail; `fill_bytes` cannot fail, so it records the error
/// and zero-fills, and the caller checks the record before using the result.
struct InjectedRng<'a> {
    random: &'a mut dyn FnMut(&mut [u8]) -> Result<(), EvidenceError>,
    failed: Option<EvidenceError>,
}

impl rand_core_06::RngCore for InjectedRng<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        if let Err(e) = (self.random)(dest) {
            dest.fill(0);
            self.failed.get_or_insert(e);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core_06::Error> {
        self.fill_bytes(dest);
        if self.failed.is_some() {
            return Err(rand_core_06::Error::from(core::num::NonZeroU32::MIN));
        }
        Ok(())
    }
}

impl rand_core_06::CryptoRng for InjectedRng<'_> {}

fn rsa_oaep_identity(
    modulus: &[u8],
    exponent: u32,
    seed: &[u8],
    random: &mut dyn FnMut(&mut [u8]) -> Result<(), EvidenceError>,
) -> Result<Vec<u8>, EvidenceError> {
    let e = if exponent == 0 { 65_537 } else { exponent };
    let key = rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(modulus), rsa::BigUint::from(e))
        .map_err(|_| EvidenceError::Malformed("EK RSA public key".into()))?;
    let mut rng = InjectedRng {
        random,
        failed: None,
    };
    let padding = rsa::Oaep::new_with_label::<sha2_010::Sha256, _>("IDENTITY\0");
    let encrypted = key
        .encrypt(&mut rng, padding, seed)
        .map_err(|e| EvidenceError::Malformed(format!("RSA-OAEP: {e}")))?;
    match rng.failed {
        Some(e) => Err(e),
        None => Ok(encrypted),
    }
}

/// ECDH with an ephemeral key on the EK's curve; returns the seed and the TPMS_ECC_POINT of the
/// ephemeral public key (the encrypted secret).
fn ecdh_seed(
    curve: EccCurve,
    x: &[u8],
    y: &[u8],
    name_alg: HashAlg,
    random: &mut dyn FnMut(&mut [u8]) -> Result<(), EvidenceError>,
) -> Result<(Vec<u8>, Vec<u8>), EvidenceError> {
    let size = curve.size();
    let mut point = vec![0x04];
    point.extend_from_slice(&crate::crypto::pad(x, size, "EK x")?);
    point.extend_from_slice(&crate::crypto::pad(y, size, "EK y")?);
    let bad_point = |_| EvidenceError::Malformed("EK public key is not on its curve".into());
    macro_rules! exchange {
        ($curve:ident) => {{
            let ek = $curve::PublicKey::from_sec1_bytes(&point).map_err(bad_point)?;
            // Draw the ephemeral scalar from the injected source; retry the negligible misses.
            let mut secret = None;
            for _ in 0..16 {
                let mut bytes = vec![0u8; size];
                random(&mut bytes)?;
                if let Ok(s) = $curve::SecretKey::from_slice(&bytes) {
                    secret = Some(s);
                    break;
                }
            }
            let secret =
                secret.ok_or_else(|| EvidenceError::Malformed("no ephemeral scalar".into()))?;
            let shared = $curve::ecdh::diffie_hellman(secret.to_nonzero_scalar(), ek.as_affine());
            let ephemeral = {
                use $curve::elliptic_curve::sec1::ToSec1Point;
                secret.public_key().to_sec1_point(false)
            };
            let (ex, ey) = match (ephemeral.x(), ephemeral.y()) {
                (Some(ex), Some(ey)) => (ex.to_vec(), ey.to_vec()),
                _ => return Err(EvidenceError::Malformed("ephemeral point".into())),
            };
            let ek_x = crate::crypto::pad(x, size, "EK x")?;
            let seed = kdfe(
                name_alg,
                shared.raw_secret_bytes(),
                b"IDENTITY",
                &ex,
                &ek_x,
                name_alg.size() * 8,
            )?;
            let mut w = Writer::default();
            w.tpm2b(&ex);
            w.tpm2b(&ey);
            (seed, w.buf)
        }};
    }
    Ok(match curve {
        EccCurve::P256 => exchange!(p256),
        EccCurve::P384 => exchange!(p384),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdfa_matches_the_tpm_reference_shape() {
        // Length and determinism; the byte-exact check is the swtpm / tpm2-tools activation test.
        let a = kdfa(HashAlg::Sha256, b"key", b"STORAGE", b"ctx", &[], 128).unwrap();
        let b = kdfa(HashAlg::Sha256, b"key", b"STORAGE", b"ctx", &[], 128).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 16);
        assert_eq!(
            kdfa(HashAlg::Sha256, b"key", b"STORAGE", b"ctx", &[], 520)
                .unwrap()
                .len(),
            65
        );
        assert_ne!(
            a,
            kdfa(HashAlg::Sha256, b"key", b"INTEGRITY", b"ctx", &[], 128).unwrap()
        );
    }

    #[test]
    fn credentials_are_bounded() {
        let ek = EkPublicKey::Ecc {
            curve: EccCurve::P256,
            x: vec![1; 32],
            y: vec![1; 32],
        };
        let mut rng = |b: &mut [u8]| {
            b.fill(7);
            Ok(())
        };
        assert!(make_credential(&ek, &[0, 11, 1], &[], &mut rng).is_err());
        assert!(make_credential(&ek, &[0, 11, 1], &[0; 65], &mut rng).is_err());
        // (1, 1) is not on P-256.
        assert_eq!(
            make_credential(&ek, &[0, 11, 1], &[1; 32], &mut rng)
                .unwrap_err()
                .code(),
            "malformed"
        );
    }

    #[test]
    fn a_failing_random_source_fails_the_challenge() {
        let k = rsa::RsaPrivateKey::new(&mut rand_core_06::OsRng, 2048).unwrap();
        use rsa::traits::PublicKeyParts;
        let ek = EkPublicKey::Rsa2048 {
            modulus: k.n().to_bytes_be(),
            exponent: 65_537,
        };
        let mut calls = 0;
        let mut rng = |b: &mut [u8]| {
            calls += 1;
            if calls > 1 {
                return Err(EvidenceError::Malformed("RNG down".into()));
            }
            b.fill(3);
            Ok(())
        };
        assert!(make_credential(&ek, &[0, 11, 1, 2], &[1; 32], &mut rng).is_err());
    }
}
