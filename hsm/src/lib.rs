//! writ-hsm: everything in writ that touches hardware.
//!
//! * Key custody: one object-safe trait, [`CustodyKey`], with backends for PKCS#11 tokens
//!   ([`pkcs11::Pkcs11Key`], through cryptoki) and TPMs ([`tpm::TpmKey`], through tss-esapi), and a
//!   software backend for tests only (feature `software-keys`, plus an explicit run-time flag).
//! * [`signer::CustodySigner`]: plugs any custody key into RustCrypto's `Signer` traits, so the
//!   x509-cert builder signs in the HSM or TPM.
//! * [`tpm::attester`]: the TPM operations a runtime's agent performs (EK certificates, AK creation,
//!   credential activation, quotes, certification of a holder key, PCR reads).
//!
//! This crate contains no `unsafe` code; the FFI lives in tss-esapi and cryptoki.
#![forbid(unsafe_code)]

mod error;
mod key;
pub mod pkcs11;
pub mod signer;
#[cfg(feature = "software-keys")]
pub mod software;
pub mod tpm;
pub mod uri;

use std::sync::Arc;

pub use error::CustodyError;
pub use key::{Algorithm, Backend, CustodyKey, KeyFact, PublicKey};
pub use uri::KeyUri;

/// Run-time choices for opening keys.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Permit `soft:` keys. They also need the `software-keys` cargo feature. Tests only.
    pub allow_software_keys: bool,
}

/// Opens the existing key named by `uri`.
pub fn open_key(uri: &KeyUri, options: &OpenOptions) -> Result<Arc<dyn CustodyKey>, CustodyError> {
    match uri {
        KeyUri::Pkcs11(u) => Ok(Arc::new(pkcs11::Pkcs11Key::open(u)?)),
        KeyUri::Tpm(u) => Ok(Arc::new(tpm::TpmKey::open(u)?)),
        KeyUri::Software(u) => open_software(u, options, false),
    }
}

/// Generates a new key at `uri`; never overwrites an existing one.
pub fn generate_key(
    uri: &KeyUri,
    options: &OpenOptions,
) -> Result<Arc<dyn CustodyKey>, CustodyError> {
    match uri {
        KeyUri::Pkcs11(u) => Ok(Arc::new(pkcs11::Pkcs11Key::generate(u)?)),
        KeyUri::Tpm(u) => Ok(Arc::new(tpm::TpmKey::generate(u)?)),
        KeyUri::Software(u) => open_software(u, options, true),
    }
}

#[cfg(feature = "software-keys")]
fn open_software(
    uri: &uri::SoftUri,
    options: &OpenOptions,
    generate: bool,
) -> Result<Arc<dyn CustodyKey>, CustodyError> {
    if !options.allow_software_keys {
        return Err(CustodyError::SoftwareKeysRefused(
            "soft: keys need allow_software_keys (CLI: --allow-software-keys); they are for tests only"
                .into(),
        ));
    }
    let key = if generate {
        software::SoftwareKey::generate(uri)?
    } else {
        software::SoftwareKey::open(uri)?
    };
    Ok(Arc::new(key))
}

#[cfg(not(feature = "software-keys"))]
fn open_software(
    _uri: &uri::SoftUri,
    _options: &OpenOptions,
    _generate: bool,
) -> Result<Arc<dyn CustodyKey>, CustodyError> {
    Err(CustodyError::SoftwareKeysRefused(
        "this build has no software key backend (cargo feature software-keys); use pkcs11: or tpm:"
            .into(),
    ))
}
