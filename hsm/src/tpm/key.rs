//! Custody keys in a TPM: P-256 signing keys persisted at an owner handle.
//!
//! A key is generated inside the TPM (TPM2_Create under the owner hierarchy's ECC storage key, so
//! its private part comes from the TPM's RNG and derives from nothing a caller knows), loaded, and
//! made persistent with TPM2_EvictControl. It survives TPM restarts and reboots and is lost only
//! when the owner hierarchy is cleared.
//!
//! Custody keys must have an authValue (`auth-source=` in the URI): with an empty one, any process
//! that can open the TPM device could sign with the key, the TPM analogue of a PKCS#11 key usable
//! without login. The authValue travels only inside the salted session (see `DeviceState`).

use std::sync::Arc;

use p256::ecdsa::Signature;
use tss_esapi::attributes::ObjectAttributes;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Provision;
use tss_esapi::structures::{
    Auth, Digest, EccScheme, HashScheme, HashcheckTicket, Public, SignatureScheme,
};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::utils::create_unrestricted_signing_ecc_public;
use zeroize::Zeroizing;

use super::{DeviceState, ObjectAuth, TpmDevice, create_srk, flush};
use crate::CustodyError;
use crate::key::{Algorithm, Backend, CustodyKey, KeyFact, PublicKey, signature_from_scalars};
use crate::uri::TpmUri;

/// A P-256 signing key persisted in a TPM.
pub struct TpmKey {
    uri: String,
    device: Arc<TpmDevice>,
    persistent: PersistentTpmHandle,
    auth: Zeroizing<Vec<u8>>,
    public: PublicKey,
    facts: Vec<KeyFact>,
}

impl std::fmt::Debug for TpmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The authValue is deliberately absent.
        f.debug_struct("TpmKey")
            .field("uri", &self.uri)
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl TpmKey {
    /// Opens the persistent key named by `uri`, refusing anything that is not a non-duplicable,
    /// TPM-generated, unrestricted P-256 ECDSA signing key, and any URI without an authValue.
    pub fn open(uri: &TpmUri) -> Result<Self, CustodyError> {
        let device = TpmDevice::open(&uri.tcti())?;
        let name = uri.to_string();
        let persistent = persistent_handle(uri.handle)?;
        let public = {
            let mut st = device.lock()?;
            let object = st.persistent(persistent, &name)?;
            st.retry("ReadPublic", |c| c.read_public(object.into()))?.0
        };
        // Attributes first: they are readable without the authValue and say the most.
        let (public_key, mut facts) = check_public(&public, &name)?;
        let auth = read_auth(uri, &name)?;
        facts.push(KeyFact::new(
            "persistent handle",
            format!("{:#010x}", uri.handle),
        ));
        facts.push(KeyFact::new("authValue", "set (from auth-source)"));
        let key = TpmKey {
            uri: name,
            device,
            persistent,
            auth,
            public: public_key,
            facts,
        };
        key.self_test()?;
        Ok(key)
    }

    /// Generates a new key inside the TPM and persists it at the URI's handle. Refuses if the
    /// handle is taken or the URI names no authValue.
    pub fn generate(uri: &TpmUri) -> Result<Self, CustodyError> {
        let name = uri.to_string();
        let auth = read_auth(uri, &name)?;
        let auth_value = tpm_auth(&auth)?;
        let device = TpmDevice::open(&uri.tcti())?;
        let persistent = persistent_handle(uri.handle)?;
        {
            let mut st = device.lock()?;
            match st.persistent(persistent, &name) {
                Ok(_) => return Err(CustodyError::KeyExists(name)),
                Err(CustodyError::KeyNotFound(_)) => {}
                Err(e) => return Err(e),
            }
            let template = create_unrestricted_signing_ecc_public(
                EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
                EccCurve::NistP256,
            )
            .map_err(|e| CustodyError::tpm("template", e))?;
            let srk = create_srk(&mut st)?;
            let made = (|| {
                // The salted session encrypts inSensitive, which carries the new authValue.
                let created = st.with_session("Create", ObjectAuth::Set, |c| {
                    c.create(
                        srk,
                        template.clone(),
                        Some(auth_value.clone()),
                        None,
                        None,
                        None,
                    )
                })?;
                let loaded = st.with_session("Load", ObjectAuth::Empty, |c| {
                    c.load(srk, created.out_private.clone(), created.out_public.clone())
                })?;
                let transient = ObjectHandle::from(loaded);
                let persisted = st.with_session("EvictControl", ObjectAuth::Empty, |c| {
                    c.evict_control(
                        Provision::Owner,
                        transient,
                        Persistent::Persistent(persistent),
                    )
                });
                flush(&mut st, transient);
                st.remember_persistent(uri.handle, persisted?);
                Ok::<(), CustodyError>(())
            })();
            flush(&mut st, srk.into());
            made?;
        }
        drop(device);
        Self::open(uri)
    }

    fn sign_once(&self, digest: &[u8; 32]) -> Result<Signature, CustodyError> {
        let mut st = self.device.lock()?;
        let object = st.persistent(self.persistent, &self.uri)?;
        // Set this key's authValue right before the command: another key of this process may name
        // the same handle (sharing its ESYS handle) with another auth-source.
        st.tr_set_auth(object, tpm_auth(&self.auth)?)
            .map_err(|e| CustodyError::tpm("TR_SetAuth", e))?;
        sign_p256(&mut st, KeyHandle::from(object), ObjectAuth::Set, digest)
    }

    /// Signs a probe and verifies it with the public area the TPM reported: proves the authValue
    /// is right and the key can sign before anyone relies on it.
    fn self_test(&self) -> Result<(), CustodyError> {
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        let probe = [0xa5u8; 32];
        let sig = self.sign_digest(&probe)?;
        self.public
            .verifying_key()
            .verify_prehash(&probe, &sig)
            .map_err(|_| CustodyError::BadSignature("self-test signature does not verify".into()))
    }
}

impl CustodyKey for TpmKey {
    fn sign_digest(&self, digest: &[u8; 32]) -> Result<Signature, CustodyError> {
        match self.sign_once(digest) {
            // The connection was lost and the device marked broken: the next lock reconnects and
            // translates the handle again. One more try.
            Err(CustodyError::TpmUnavailable { .. }) => {
                tracing::warn!(key = %self.uri, "TPM connection lost; reconnecting and signing again");
                self.sign_once(digest)
            }
            other => other,
        }
    }

    fn algorithm(&self) -> Algorithm {
        Algorithm::EcdsaP256Sha256
    }

    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn backend(&self) -> Backend {
        Backend::Tpm
    }

    fn hardware_backed(&self) -> bool {
        true
    }

    fn uri(&self) -> &str {
        &self.uri
    }

    fn facts(&self) -> &[KeyFact] {
        &self.facts
    }
}

/// TPM2_Sign of a SHA-256 digest with an unrestricted ECDSA P-256 key (null hashcheck ticket),
/// returned low-S. Custody keys and the attester's holder keys both sign through this.
pub(crate) fn sign_p256(
    st: &mut DeviceState,
    key: KeyHandle,
    auth: ObjectAuth,
    digest: &[u8; 32],
) -> Result<Signature, CustodyError> {
    let digest = Digest::try_from(digest.to_vec()).map_err(|e| CustodyError::tpm("Sign", e))?;
    let scheme = SignatureScheme::EcDsa {
        hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
    };
    let ticket = null_ticket()?;
    let signature = st.with_session("Sign", auth, |c| {
        c.sign(key, digest.clone(), scheme, ticket.clone())
    })?;
    match signature {
        tss_esapi::structures::Signature::EcDsa(sig) => {
            signature_from_scalars(sig.signature_r().value(), sig.signature_s().value())
        }
        other => Err(CustodyError::BadSignature(format!(
            "TPM returned a {:?} signature, expected ECDSA",
            other.algorithm()
        ))),
    }
}

fn persistent_handle(handle: u32) -> Result<PersistentTpmHandle, CustodyError> {
    PersistentTpmHandle::new(handle)
        .map_err(|_| CustodyError::InvalidUri(format!("{handle:#010x} is not a persistent handle")))
}

/// TPM_RC_HANDLE from TR_FromTPMPublic: nothing is defined at that handle.
pub(crate) fn is_missing_handle(e: &tss_esapi::Error) -> bool {
    matches!(e, tss_esapi::Error::Tss2Error(rc) if matches!(rc.kind(), Some(Tss2ResponseCodeKind::Handle)))
}

fn read_auth(uri: &TpmUri, name: &str) -> Result<Zeroizing<Vec<u8>>, CustodyError> {
    let source = uri
        .auth_source
        .as_ref()
        .ok_or_else(|| CustodyError::UnsafeKey {
            key: name.to_string(),
            reason: "no authValue configured (auth-source=file:... or env:VAR): a TPM custody key \
                 with an empty authValue can be used by any process that opens the TPM"
                .into(),
        })?;
    let secret = source.read()?;
    if secret.is_empty() {
        return Err(CustodyError::SecretSource {
            source_name: source.to_string(),
            reason: "the authValue is empty".into(),
        });
    }
    Ok(Zeroizing::new(secret.as_bytes().to_vec()))
}

fn tpm_auth(secret: &[u8]) -> Result<Auth, CustodyError> {
    Auth::try_from(secret.to_vec()).map_err(|_| CustodyError::SecretSource {
        source_name: "auth-source".into(),
        reason: "authValue longer than the TPM accepts (at most the name digest size, 32 bytes)"
            .into(),
    })
}

pub(crate) fn null_ticket() -> Result<HashcheckTicket, CustodyError> {
    HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    })
    .map_err(|e| CustodyError::tpm("HashcheckTicket", e))
}

/// Checks the public area of a custody key and returns its public key and the facts that make it
/// safe.
fn check_public(public: &Public, name: &str) -> Result<(PublicKey, Vec<KeyFact>), CustodyError> {
    let unsafe_key = |reason: &str| CustodyError::UnsafeKey {
        key: name.to_string(),
        reason: reason.to_string(),
    };
    let unsupported = |reason: String| CustodyError::UnsupportedKey {
        key: name.to_string(),
        reason,
    };
    let Public::Ecc {
        object_attributes,
        parameters,
        unique,
        ..
    } = public
    else {
        return Err(unsupported("not an ECC key".into()));
    };
    let a: ObjectAttributes = *object_attributes;
    if parameters.ecc_curve() != EccCurve::NistP256 {
        return Err(unsupported(format!(
            "curve {:?}, expected NIST P-256",
            parameters.ecc_curve()
        )));
    }
    match parameters.ecc_scheme() {
        EccScheme::EcDsa(h) if h.hashing_algorithm() == HashingAlgorithm::Sha256 => {}
        EccScheme::Null => {}
        other => {
            return Err(unsupported(format!(
                "scheme {other:?}, expected ECDSA-SHA256"
            )));
        }
    }
    if !a.sign_encrypt() || a.decrypt() {
        return Err(unsupported(
            "not a sign-only key (sign set, decrypt clear)".into(),
        ));
    }
    if a.restricted() {
        return Err(unsupported(
            "restricted keys sign only TPM-generated data".into(),
        ));
    }
    if !a.fixed_tpm() || !a.fixed_parent() {
        return Err(unsafe_key(
            "not fixedTPM/fixedParent: the key can be duplicated out of this TPM",
        ));
    }
    if !public.auth_policy().value().is_empty() {
        return Err(unsafe_key(
            "authPolicy is set: a policy session could use the key without its authValue",
        ));
    }
    if a.no_da() {
        return Err(unsafe_key(
            "noDA is set: the authValue could be guessed without dictionary-attack lockout",
        ));
    }
    if !a.sensitive_data_origin() {
        return Err(unsafe_key(
            "not sensitiveDataOrigin: the private key was imported, not generated in the TPM",
        ));
    }
    let public_key = PublicKey::from_affine(unique.x().value(), unique.y().value())
        .map_err(|e| unsupported(format!("public point: {e}")))?;
    let facts = vec![
        KeyFact::new("type", "ECC NIST P-256, ECDSA-SHA256"),
        KeyFact::new("fixedTPM", a.fixed_tpm()),
        KeyFact::new("fixedParent", a.fixed_parent()),
        KeyFact::new("sensitiveDataOrigin", a.sensitive_data_origin()),
        KeyFact::new("userWithAuth", a.user_with_auth()),
        KeyFact::new("restricted", a.restricted()),
    ];
    Ok((public_key, facts))
}
