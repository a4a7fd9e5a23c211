//! Custody keys in a TPM: P-256 signing keys persisted at an owner handle.
//!
//! A key is generated as a primary object of the owner hierarchy with a random `unique` field (so
//! two keys never derive to the same value), then made persistent with TPM2_EvictControl. It
//! survives TPM restarts and reboots; it is lost only when the owner hierarchy is cleared.

use std::sync::Arc;

use p256::ecdsa::Signature;
use tss_esapi::attributes::ObjectAttributes;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::structures::{
    Auth, Digest, EccParameter, EccPoint, EccScheme, HashScheme, HashcheckTicket, Public,
    SignatureScheme,
};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::utils::create_unrestricted_signing_ecc_public;
use zeroize::Zeroizing;

use super::{ObjectAuth, TpmDevice, retry, retry_raw};
use crate::CustodyError;
use crate::key::{Algorithm, Backend, CustodyKey, KeyFact, PublicKey, signature_from_scalars};
use crate::uri::TpmUri;

/// A P-256 signing key persisted in a TPM.
#[derive(Debug)]
pub struct TpmKey {
    uri: String,
    device: Arc<TpmDevice>,
    handle: KeyHandle,
    auth: ObjectAuth,
    public: PublicKey,
    facts: Vec<KeyFact>,
}

impl TpmKey {
    /// Opens the persistent key named by `uri`, refusing anything that is not a non-duplicable,
    /// TPM-generated, unrestricted P-256 ECDSA signing key.
    pub fn open(uri: &TpmUri) -> Result<Self, CustodyError> {
        let device = TpmDevice::open(&uri.tcti())?;
        let name = uri.to_string();
        let auth = read_auth(uri)?;
        let (handle, public) = {
            let mut ctx = device.lock()?;
            let persistent = persistent_handle(uri.handle)?;
            let object = match retry_raw("TR_FromTPMPublic", || {
                ctx.execute_without_session(|c| {
                    c.tr_from_tpm_public(TpmHandle::Persistent(persistent))
                })
            }) {
                Ok(o) => o,
                Err((e, _)) if is_missing_handle(&e) => {
                    return Err(CustodyError::KeyNotFound(name));
                }
                Err((e, _)) => return Err(CustodyError::tpm("TR_FromTPMPublic", e)),
            };
            let handle = KeyHandle::from(object);
            let (public, _, _) = retry("ReadPublic", || {
                ctx.execute_without_session(|c| c.read_public(handle))
            })?;
            if let Some(auth) = &auth {
                let value = Auth::try_from(auth.as_bytes().to_vec()).map_err(|_| {
                    CustodyError::SecretSource {
                        source_name: "auth-source".into(),
                        reason: "authValue longer than the TPM accepts".into(),
                    }
                })?;
                ctx.tr_set_auth(object, value)
                    .map_err(|e| CustodyError::tpm("TR_SetAuth", e))?;
            }
            (handle, public)
        };
        let (public_key, mut facts) = check_public(&public, &name)?;
        facts.push(KeyFact::new(
            "persistent handle",
            format!("{:#010x}", uri.handle),
        ));
        facts.push(KeyFact::new(
            "authValue",
            if auth.is_some() { "set" } else { "empty" },
        ));
        let auth = if auth.is_some() {
            ObjectAuth::Set
        } else {
            ObjectAuth::Empty
        };
        let key = TpmKey {
            uri: name,
            device,
            handle,
            auth,
            public: public_key,
            facts,
        };
        key.self_test()?;
        Ok(key)
    }

    /// Generates a new key and persists it at the URI's handle. Refuses if the handle is taken.
    pub fn generate(uri: &TpmUri) -> Result<Self, CustodyError> {
        let device = TpmDevice::open(&uri.tcti())?;
        let auth = read_auth(uri)?;
        let persistent = persistent_handle(uri.handle)?;
        {
            let mut ctx = device.lock()?;
            match ctx.execute_without_session(|c| {
                c.tr_from_tpm_public(TpmHandle::Persistent(persistent))
            }) {
                Ok(mut existing) => {
                    let _ = ctx.tr_close(&mut existing);
                    return Err(CustodyError::KeyExists(uri.to_string()));
                }
                Err(e) if is_missing_handle(&e) => {}
                Err(e) => return Err(CustodyError::tpm("TR_FromTPMPublic", e)),
            }
            let template = signing_template()?;
            let auth_value = match &auth {
                Some(a) => Some(Auth::try_from(a.as_bytes().to_vec()).map_err(|_| {
                    CustodyError::SecretSource {
                        source_name: "auth-source".into(),
                        reason: "authValue longer than the TPM accepts".into(),
                    }
                })?),
                None => None,
            };
            let created = retry("CreatePrimary", || {
                let auth_value = auth_value.clone();
                let template = template.clone();
                ctx.execute_with_nullauth_session(|c| {
                    c.create_primary(Hierarchy::Owner, template, auth_value, None, None, None)
                })
            })?;
            let transient = ObjectHandle::from(created.key_handle);
            let persisted = retry("EvictControl", || {
                ctx.execute_with_nullauth_session(|c| {
                    c.evict_control(
                        Provision::Owner,
                        transient,
                        Persistent::Persistent(persistent),
                    )
                })
            });
            // The transient copy is no longer needed either way; slots are scarce.
            let flushed = ctx.flush_context(transient);
            let mut persisted = persisted?;
            flushed.map_err(|e| CustodyError::tpm("FlushContext", e))?;
            let _ = ctx.tr_close(&mut persisted);
        }
        drop(device);
        Self::open(uri)
    }

    /// Signs a probe and verifies it with the public area the TPM reported.
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
        let digest = Digest::try_from(digest.to_vec()).map_err(|e| CustodyError::tpm("Sign", e))?;
        let scheme = SignatureScheme::EcDsa {
            hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
        };
        let ticket = null_ticket()?;
        let mut ctx = self.device.lock()?;
        let signature = ctx.with_session("Sign", self.auth, |c| {
            c.sign(self.handle, digest.clone(), scheme, ticket.clone())
        })?;
        drop(ctx);
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

fn persistent_handle(handle: u32) -> Result<PersistentTpmHandle, CustodyError> {
    PersistentTpmHandle::new(handle)
        .map_err(|_| CustodyError::InvalidUri(format!("{handle:#010x} is not a persistent handle")))
}

/// TPM_RC_HANDLE from TR_FromTPMPublic: nothing is defined at that handle.
pub(crate) fn is_missing_handle(e: &tss_esapi::Error) -> bool {
    matches!(e, tss_esapi::Error::Tss2Error(rc) if matches!(rc.kind(), Some(Tss2ResponseCodeKind::Handle)))
}

fn read_auth(uri: &TpmUri) -> Result<Option<Zeroizing<String>>, CustodyError> {
    uri.auth_source.as_ref().map(|s| s.read()).transpose()
}

/// The public template of custody keys: ECDSA P-256 with SHA-256, unrestricted, fixedTPM,
/// fixedParent, sensitiveDataOrigin, userWithAuth; a random `unique.x` so the primary is new.
fn signing_template() -> Result<Public, CustodyError> {
    let base = create_unrestricted_signing_ecc_public(
        EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
        EccCurve::NistP256,
    )
    .map_err(|e| CustodyError::tpm("template", e))?;
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(|e| CustodyError::Tpm {
        op: "template",
        reason: e.to_string(),
    })?;
    match base {
        Public::Ecc {
            object_attributes,
            name_hashing_algorithm,
            auth_policy,
            parameters,
            ..
        } => {
            let x = EccParameter::try_from(nonce.to_vec())
                .map_err(|e| CustodyError::tpm("template", e))?;
            let y =
                EccParameter::try_from(Vec::new()).map_err(|e| CustodyError::tpm("template", e))?;
            Ok(Public::Ecc {
                object_attributes,
                name_hashing_algorithm,
                auth_policy,
                parameters,
                unique: EccPoint::new(x, y),
            })
        }
        _ => Err(CustodyError::Tpm {
            op: "template",
            reason: "not an ECC template".into(),
        }),
    }
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
