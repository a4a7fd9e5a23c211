//! What the benchmarks' simulated TPMs make in software, in the TPM's wire encoding: ECC P-256
//! public areas, names, and attestations signed as a TPM signs them. (Each benchmark binary uses
//! part of it.)
#![allow(dead_code)]

use p256::ecdsa::signature::hazmat::PrehashSigner;
use sha2::{Digest, Sha256};
use writ_attestation::tpm::HashAlg;
use writ_attestation::tpm::attest::Attest;
use writ_attestation::tpm::public::{self, EccCurve, KeyParams, Scheme, attr};
use writ_attestation::tpm::signature::Signature;

/// An AK's attributes: restricted signing, fixed to its TPM.
pub const AK: u32 = attr::FIXED_TPM
    | attr::FIXED_PARENT
    | attr::SENSITIVE_DATA_ORIGIN
    | attr::USER_WITH_AUTH
    | attr::RESTRICTED
    | attr::SIGN_ENCRYPT;

/// A holder key's attributes: unrestricted signing, fixed to its TPM.
pub const HOLDER: u32 = attr::FIXED_TPM
    | attr::FIXED_PARENT
    | attr::SENSITIVE_DATA_ORIGIN
    | attr::USER_WITH_AUTH
    | attr::SIGN_ENCRYPT;

/// The TPMT_PUBLIC of an ECDSA P-256 / SHA-256 key with `attributes`.
pub fn tpmt_ecc(attributes: u32, key: &p256::ecdsa::VerifyingKey) -> Vec<u8> {
    let point = key.to_sec1_point(false);
    public::encode(
        HashAlg::Sha256,
        attributes,
        &[],
        &KeyParams::Ecc {
            symmetric: 0x0010,
            scheme: Scheme::Ecdsa(HashAlg::Sha256),
            curve: EccCurve::P256,
            kdf: 0x0010,
            x: point.x().map(|x| x.to_vec()).unwrap_or_default(),
            y: point.y().map(|y| y.to_vec()).unwrap_or_default(),
        },
    )
}

/// The TPM name of a TPMT_PUBLIC: nameAlg SHA-256 || SHA-256(TPMT_PUBLIC).
pub fn name_of(tpmt: &[u8]) -> Vec<u8> {
    let mut n = vec![0x00, 0x0b];
    n.extend_from_slice(&Sha256::digest(tpmt));
    n
}

/// `attest` signed by `ak` as a TPM signs it: (TPMS_ATTEST, TPMT_SIGNATURE, the signature).
pub fn sign_attest(
    ak: &p256::ecdsa::SigningKey,
    attest: &Attest,
) -> (Vec<u8>, Vec<u8>, p256::ecdsa::Signature) {
    let bytes = attest.encode();
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    let sig: p256::ecdsa::Signature = ak
        .sign_prehash(&digest)
        .expect("ECDSA signing with a valid key");
    let rs = sig.to_bytes();
    let tpmt = Signature::Ecdsa {
        hash: HashAlg::Sha256,
        r: rs[..32].to_vec(),
        s: rs[32..].to_vec(),
    }
    .to_tpmt();
    (bytes, tpmt, sig)
}
