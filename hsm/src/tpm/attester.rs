//! The TPM operations of an attester: what `writ agent` does on a runtime.
//!
//! * read the EK certificates from NV (RSA 2048, ECC P-256 and P-384 where present);
//! * create an AK (restricted ECDSA P-256 signing key under the RSA EK) and load it;
//! * ActivateCredential for the appliance's MakeCredential challenge;
//! * TPM2_Quote over a PCR selection with a nonce;
//! * create a holder key (unrestricted P-256 signing key under an ECC storage key) and have the AK
//!   certify it (TPM2_Certify) over a nonce;
//! * read and extend PCRs; read the firmware event log.
//!
//! Structures cross this boundary in the TPM's own wire encoding (TPMT_PUBLIC, TPMS_ATTEST,
//! TPMT_SIGNATURE, ...) so the pure `attestation` crate can parse and verify them without a TPM
//! library.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, MutexGuard};

use tss_esapi::Context;
use tss_esapi::abstraction::{AsymmetricAlgorithmSelection, ak, ek, nv, pcr};
use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{
    AuthHandle, KeyHandle, NvIndexTpmHandle, PcrHandle, PersistentTpmHandle, SessionHandle,
    TpmHandle,
};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, SignatureSchemeAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Auth, Data, Digest, DigestValues, EccScheme, EncryptedSecret, HashScheme, IdObject,
    PcrSelectionList, PcrSelectionListBuilder, PcrSlot, Private, Public, SignatureScheme,
    SymmetricDefinition,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use zeroize::Zeroizing;

use super::{DeviceState, ObjectAuth, TpmDevice, create_srk, flush, retry_raw};
use crate::CustodyError;
use crate::uri::resolve_tcti;
pub use writ_attestation::tpm::HashAlg;
pub use writ_attestation::tpm::pcr::{PcrSelection, PcrValues};

/// NV indices of EK certificates (TCG EK Credential Profile 2.0, section 2.2.1.5).
const EK_CERT_RSA_2048: u32 = 0x01c0_0002;
const EK_CERT_ECC_P256: u32 = 0x01c0_000a;
const EK_CERT_ECC_P384: u32 = 0x01c0_0016;
/// Largest nonce (qualifyingData) the attester passes on: a TPM2B_DATA holds at most a digest's size.
pub const MAX_NONCE: usize = 64;
/// Largest firmware event log read; real logs are tens of KiB.
pub const MAX_EVENT_LOG: u64 = 16 * 1024 * 1024;
/// Where Linux exposes the firmware event log.
pub const DEFAULT_EVENT_LOG: &str = "/sys/kernel/security/tpm0/binary_bios_measurements";

/// The kind of an EK and its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EkKind {
    /// RSA 2048 (the low range template).
    Rsa2048,
    /// ECC NIST P-256.
    EccP256,
    /// ECC NIST P-384 (swtpm provisions this one, not P-256).
    EccP384,
}

/// An EK certificate as stored in the TPM's NV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EkCertificate {
    /// Which EK it certifies.
    pub kind: EkKind,
    /// The NV index it was read from.
    pub nv_index: u32,
    /// The certificate, DER.
    pub der: Vec<u8>,
}

/// A key created in the TPM, as blobs the agent can store and load again (only into this TPM).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBlob {
    /// TPMT_PUBLIC, marshalled.
    pub public: Vec<u8>,
    /// The TPM2B_PRIVATE buffer (wrapped by the parent; useless outside this TPM).
    pub private: Vec<u8>,
    /// The key's TPM name: nameAlg (0x000B) || SHA-256(TPMT_PUBLIC).
    pub name: Vec<u8>,
}

impl fmt::Debug for KeyBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBlob")
            .field("name", &hex::encode(&self.name))
            .finish_non_exhaustive()
    }
}

/// A signed TPM attestation (quote or certification): TPMS_ATTEST and TPMT_SIGNATURE, marshalled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedAttest {
    /// TPMS_ATTEST bytes, exactly as signed.
    pub attest: Vec<u8>,
    /// TPMT_SIGNATURE bytes.
    pub signature: Vec<u8>,
}

/// The tpm2-tss form of a selection (the selection type itself is `writ-attestation`'s, so the
/// attester and the verifier read `sha256:0,1,2,7` with one parser).
fn tss_selection(selection: &PcrSelection) -> Result<PcrSelectionList, CustodyError> {
    let mut builder = PcrSelectionListBuilder::new();
    for (bank, pcrs) in selection.banks() {
        let slots = pcrs
            .iter()
            .map(|i| {
                PcrSlot::try_from(1u32 << i).map_err(|e| CustodyError::tpm("PCR selection", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        builder = builder.with_selection(tss_hash(*bank), &slots);
    }
    builder
        .build()
        .map_err(|e| CustodyError::tpm("PCR selection", e))
}

fn tss_hash(bank: HashAlg) -> HashingAlgorithm {
    match bank {
        HashAlg::Sha1 => HashingAlgorithm::Sha1,
        HashAlg::Sha256 => HashingAlgorithm::Sha256,
        HashAlg::Sha384 => HashingAlgorithm::Sha384,
        // HashAlg is non-exhaustive; anything else is SHA-512 today.
        _ => HashingAlgorithm::Sha512,
    }
}

/// A key loaded in the TPM; flushed when dropped (swtpm has three transient slots). Usable only
/// with the [`Attester`] that loaded it, and only until the TPM connection is re-established
/// (transient objects do not survive that).
pub struct LoadedKey {
    device: Arc<TpmDevice>,
    handle: KeyHandle,
    auth: ObjectAuth,
    generation: u64,
    /// The key's TPM name, checked before every use: after a TPM reboot the transient handle may
    /// name another object, and password sessions would not notice.
    name: Vec<u8>,
}

impl fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedKey")
            .field("tpm", &self.device.tcti())
            .finish_non_exhaustive()
    }
}

impl Drop for LoadedKey {
    fn drop(&mut self) {
        if let Ok(mut st) = self.device.lock()
            && st.generation() == self.generation
            && still_loaded(&mut st, self.handle, &self.name)
        {
            flush(&mut st, self.handle.into());
        }
    }
}

/// The attester's view of one TPM.
#[derive(Debug)]
pub struct Attester {
    device: Arc<TpmDevice>,
}

impl Attester {
    /// Opens the TPM behind `tcti`, or behind `TPM2TOOLS_TCTI` / `TCTI` / `/dev/tpmrm0`.
    pub fn open(tcti: Option<&str>) -> Result<Self, CustodyError> {
        Ok(Attester {
            device: TpmDevice::open(&resolve_tcti(tcti))?,
        })
    }

    /// Locks the device and checks that `keys` were loaded by this attester in the current
    /// connection.
    fn lock_for(&self, keys: &[&LoadedKey]) -> Result<MutexGuard<'_, DeviceState>, CustodyError> {
        let mut st = self.device.lock()?;
        for key in keys {
            if !Arc::ptr_eq(&key.device, &self.device) {
                return Err(CustodyError::InvalidInput(
                    "the key was loaded into another TPM".into(),
                ));
            }
            if key.generation != st.generation() || !still_loaded(&mut st, key.handle, &key.name) {
                return Err(CustodyError::InvalidInput(
                    "the key is no longer loaded (the TPM connection was re-established or the TPM \
                     restarted); load it again"
                        .into(),
                ));
            }
        }
        Ok(st)
    }

    fn loaded(
        &self,
        st: &DeviceState,
        handle: KeyHandle,
        auth: ObjectAuth,
        name: &[u8],
    ) -> LoadedKey {
        LoadedKey {
            device: self.device.clone(),
            handle,
            auth,
            generation: st.generation(),
            name: name.to_vec(),
        }
    }

    /// Reads every EK certificate present in NV. Fails if there is none.
    pub fn ek_certificates(&self) -> Result<Vec<EkCertificate>, CustodyError> {
        let mut st = self.device.lock()?;
        let mut found = Vec::new();
        for (kind, index) in [
            (EkKind::Rsa2048, EK_CERT_RSA_2048),
            (EkKind::EccP256, EK_CERT_ECC_P256),
            (EkKind::EccP384, EK_CERT_ECC_P384),
        ] {
            if let Some(der) = read_nv(&mut st, index)? {
                found.push(EkCertificate {
                    kind,
                    nv_index: index,
                    der,
                });
            }
        }
        if found.is_empty() {
            return Err(CustodyError::Tpm {
                op: "NV_Read",
                reason: "no EK certificate in NV".into(),
            });
        }
        Ok(found)
    }

    /// The RSA 2048 EK's public area (TPMT_PUBLIC), created from the default template. The appliance
    /// never trusts this: it takes the EK key from the certificate. It is useful to compare.
    pub fn ek_public(&self) -> Result<Vec<u8>, CustodyError> {
        let mut st = self.device.lock()?;
        let ek = create_ek(&mut st)?;
        let public = st.retry("ReadPublic", |c| {
            c.execute_without_session(|c| c.read_public(ek))
        });
        flush(&mut st, ek.into());
        public?
            .0
            .marshall()
            .map_err(|e| CustodyError::tpm("marshal", e))
    }

    /// Creates an AK: a restricted ECDSA P-256 / SHA-256 signing key, fixedTPM and fixedParent,
    /// under the RSA 2048 EK, with an empty authValue (it signs only TPM-generated structures).
    pub fn create_ak(&self) -> Result<KeyBlob, CustodyError> {
        let mut st = self.device.lock()?;
        let ek = create_ek(&mut st)?;
        let created = st.retry("Create (AK)", |c| {
            ak::create_ak_2(
                c,
                ek,
                HashingAlgorithm::Sha256,
                AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
                SignatureSchemeAlgorithm::EcDsa,
                None,
                None,
            )
        });
        flush(&mut st, ek.into());
        let created = created?;
        blob(&created.out_public, &created.out_private)
    }

    /// Loads an AK made by [`create_ak`](Self::create_ak) (the EK is recreated as its parent and
    /// flushed again).
    pub fn load_ak(&self, ak_blob: &KeyBlob) -> Result<LoadedKey, CustodyError> {
        let (public, private) = unblob(ak_blob)?;
        let mut st = self.device.lock()?;
        let ek = create_ek(&mut st)?;
        let loaded = st.retry("Load (AK)", |c| {
            ak::load_ak(c, ek, None, private.clone(), public.clone())
        });
        flush(&mut st, ek.into());
        Ok(self.loaded(&st, loaded?, ObjectAuth::Empty, &ak_blob.name))
    }

    /// Answers a MakeCredential challenge for `ak_blob`: decrypts the credential with the EK, which
    /// the TPM does only if the AK named in the challenge is loaded beside it. `id_object` and
    /// `encrypted_secret` are the buffers of TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET (no size
    /// prefix).
    pub fn activate_credential(
        &self,
        ak_blob: &KeyBlob,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CustodyError> {
        let (public, private) = unblob(ak_blob)?;
        let id_object = IdObject::try_from(id_object.to_vec())
            .map_err(|_| CustodyError::InvalidInput("credential blob too large".into()))?;
        let secret = EncryptedSecret::try_from(encrypted_secret.to_vec())
            .map_err(|_| CustodyError::InvalidInput("encrypted secret too large".into()))?;
        let mut st = self.device.lock()?;
        let ek = create_ek(&mut st)?;
        let result = (|| {
            let ak = st.retry("Load (AK)", |c| {
                ak::load_ak(c, ek, None, private.clone(), public.clone())
            })?;
            let result = activate(&mut st, ak, ek, id_object, secret);
            flush(&mut st, ak.into());
            result
        })();
        flush(&mut st, ek.into());
        result
    }

    /// TPM2_Quote by `ak` over `selection`, with `nonce` as qualifyingData.
    pub fn quote(
        &self,
        ak: &LoadedKey,
        nonce: &[u8],
        selection: &PcrSelection,
    ) -> Result<SignedAttest, CustodyError> {
        let data = nonce_data(nonce)?;
        let list = tss_selection(selection)?;
        let mut st = self.lock_for(&[ak])?;
        let (attest, signature) = st.with_session("Quote", ak.auth, |c| {
            c.quote(ak.handle, data.clone(), SignatureScheme::Null, list.clone())
        })?;
        signed(attest.marshall(), signature.marshall())
    }

    /// Creates a holder key: an unrestricted ECDSA P-256 / SHA-256 signing key, fixedTPM and
    /// fixedParent, under the owner hierarchy's ECC storage key, with `auth` as its authValue (sent
    /// inside the salted session).
    pub fn create_holder_key(&self, auth: Option<&[u8]>) -> Result<KeyBlob, CustodyError> {
        let auth = auth.map(auth_value).transpose()?;
        let template = tss_esapi::utils::create_unrestricted_signing_ecc_public(
            EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
            EccCurve::NistP256,
        )
        .map_err(|e| CustodyError::tpm("template", e))?;
        self.create_under_srk("Create (holder key)", &template, auth)
    }

    /// Creates a key from `template` under the owner hierarchy's ECC storage key, with `auth`
    /// as its authValue (sent inside the salted session).
    fn create_under_srk(
        &self,
        op: &'static str,
        template: &Public,
        auth: Option<Auth>,
    ) -> Result<KeyBlob, CustodyError> {
        let mut st = self.device.lock()?;
        let srk = create_srk(&mut st)?;
        let created = st.with_session(op, ObjectAuth::Set, |c| {
            c.create(srk, template.clone(), auth.clone(), None, None, None)
        });
        flush(&mut st, srk.into());
        let created = created?;
        blob(&created.out_public, &created.out_private)
    }

    /// Creates a holder key bound to the values `selection` holds now: its authPolicy is
    /// TPM2_PolicyPCR over those values followed by TPM2_PolicyAuthValue
    /// ([`writ_attestation::tpm::policy::pcr_and_auth_value`]), and userWithAuth is clear, so it
    /// signs only in a policy session while the PCRs still hold these values, and only for a
    /// caller who knows `auth`. Otherwise as [`create_holder_key`](Self::create_holder_key)
    /// (TPM2_Certify, an admin-role command, still takes the authValue).
    pub fn create_holder_key_bound(
        &self,
        auth: &[u8],
        selection: &PcrSelection,
    ) -> Result<KeyBlob, CustodyError> {
        use tss_esapi::attributes::ObjectAttributesBuilder;
        use tss_esapi::interface_types::algorithm::PublicAlgorithm;
        use tss_esapi::structures::{
            EccPoint, KeyDerivationFunctionScheme, PublicBuilder, PublicEccParametersBuilder,
        };
        let values = self.read_pcrs(selection)?;
        let policy = writ_attestation::tpm::policy::pcr_and_auth_value(selection, &values)
            .map_err(|e| CustodyError::InvalidInput(e.to_string()))?;
        let auth = auth_value(auth)?;
        let template_error = |e: tss_esapi::Error| CustodyError::tpm("template", e);
        let attributes = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(false)
            .with_sign_encrypt(true)
            .build()
            .map_err(template_error)?;
        let template = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attributes)
            .with_auth_policy(Digest::try_from(policy).map_err(template_error)?)
            .with_ecc_parameters(
                PublicEccParametersBuilder::new()
                    .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)))
                    .with_curve(EccCurve::NistP256)
                    .with_is_signing_key(true)
                    .with_is_decryption_key(false)
                    .with_restricted(false)
                    .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                    .build()
                    .map_err(template_error)?,
            )
            .with_ecc_unique_identifier(EccPoint::default())
            .build()
            .map_err(template_error)?;
        self.create_under_srk("Create (PCR-bound holder key)", &template, Some(auth))
    }

    /// Signs a SHA-256 digest with a loaded key made by
    /// [`create_holder_key_bound`](Self::create_holder_key_bound), in a policy session that
    /// asserts the PCRs of `selection` (the TPM compares their current values with the key's
    /// policy) and the key's authValue. Once a PCR moved, the TPM refuses (TPM_RC_POLICY_FAIL).
    pub fn sign_digest_bound(
        &self,
        key: &LoadedKey,
        selection: &PcrSelection,
        digest: &[u8; 32],
    ) -> Result<p256::ecdsa::Signature, CustodyError> {
        let list = tss_selection(selection)?;
        let digest_value =
            Digest::try_from(digest.to_vec()).map_err(|e| CustodyError::tpm("Sign", e))?;
        let mut st = self.lock_for(&[key])?;
        let started = st.retry("StartAuthSession (policy)", |c| {
            c.start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
        })?;
        let session = started.ok_or_else(|| CustodyError::Tpm {
            op: "StartAuthSession (policy)",
            reason: "no session returned".into(),
        })?;
        let result = (|| {
            let policy = PolicySession::try_from(session)
                .map_err(|e| CustodyError::tpm("policy session", e))?;
            // PolicyPCR is sent without other sessions (swtpm refuses PCR commands with them).
            st.clear_sessions();
            st.retry("PolicyPCR", |c| {
                c.policy_pcr(policy, Digest::default(), list.clone())
            })?;
            st.retry("PolicyAuthValue", |c| c.policy_auth_value(policy))?;
            let scheme = SignatureScheme::EcDsa {
                hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
            };
            let ticket = super::key::null_ticket()?;
            let signature = st.retry("Sign (policy)", |c| {
                c.execute_with_session(Some(session), |c| {
                    c.sign(key.handle, digest_value.clone(), scheme, ticket.clone())
                })
            })?;
            match signature {
                tss_esapi::structures::Signature::EcDsa(sig) => crate::key::signature_from_scalars(
                    sig.signature_r().value(),
                    sig.signature_s().value(),
                ),
                other => Err(CustodyError::BadSignature(format!(
                    "TPM returned a {:?} signature, expected ECDSA",
                    other.algorithm()
                ))),
            }
        })();
        flush(&mut st, SessionHandle::from(session).into());
        result
    }

    /// Loads a holder key made by [`create_holder_key`](Self::create_holder_key).
    pub fn load_holder_key(
        &self,
        key: &KeyBlob,
        auth: Option<&[u8]>,
    ) -> Result<LoadedKey, CustodyError> {
        let (public, private) = unblob(key)?;
        let auth = auth.map(auth_value).transpose()?;
        let mut st = self.device.lock()?;
        let srk = create_srk(&mut st)?;
        let loaded = st.with_session("Load (holder key)", ObjectAuth::Empty, |c| {
            c.load(srk, private.clone(), public.clone())
        });
        flush(&mut st, srk.into());
        let handle = loaded?;
        // Set the authValue before the LoadedKey exists: its Drop takes the device lock, which is
        // held here.
        let object_auth = match auth {
            Some(auth) => {
                if let Err(e) = st.tr_set_auth(handle.into(), auth) {
                    flush(&mut st, handle.into());
                    return Err(CustodyError::tpm("TR_SetAuth", e));
                }
                ObjectAuth::Set
            }
            None => ObjectAuth::Empty,
        };
        Ok(self.loaded(&st, handle, object_auth, &key.name))
    }

    /// TPM2_Certify: `ak` attests that `key` is loaded in this TPM, over `nonce`. The key's
    /// authorization goes through the salted session when it has an authValue.
    pub fn certify(
        &self,
        ak: &LoadedKey,
        key: &LoadedKey,
        nonce: &[u8],
    ) -> Result<SignedAttest, CustodyError> {
        let data = nonce_data(nonce)?;
        let mut st = self.lock_for(&[ak, key])?;
        let mut command = |c: &mut Context| {
            c.certify(
                key.handle.into(),
                ak.handle,
                data.clone(),
                SignatureScheme::Null,
            )
        };
        let (attest, signature) = match key.auth {
            ObjectAuth::Set => st.with_salted_and_password("Certify", &mut command)?,
            ObjectAuth::Empty => st.retry("Certify", |c| {
                c.execute_with_sessions(
                    (
                        Some(AuthSession::Password),
                        Some(AuthSession::Password),
                        None,
                    ),
                    |c| command(c),
                )
            })?,
        };
        signed(attest.marshall(), signature.marshall())
    }

    /// Signs a SHA-256 digest with a loaded holder key (the agent's proof of possession).
    pub fn sign_digest(
        &self,
        key: &LoadedKey,
        digest: &[u8; 32],
    ) -> Result<p256::ecdsa::Signature, CustodyError> {
        let mut st = self.lock_for(&[key])?;
        super::key::sign_p256(&mut st, key.handle, key.auth, digest)
    }

    /// Makes a loaded key persistent at `handle` (owner hierarchy, empty owner auth).
    pub fn persist(&self, key: &LoadedKey, handle: u32) -> Result<(), CustodyError> {
        let persistent = PersistentTpmHandle::new(handle).map_err(|_| {
            CustodyError::InvalidInput(format!("{handle:#010x} is not a persistent handle"))
        })?;
        let mut st = self.lock_for(&[key])?;
        let mut object = st.with_session("EvictControl", ObjectAuth::Empty, |c| {
            c.evict_control(
                Provision::Owner,
                key.handle.into(),
                Persistent::Persistent(persistent),
            )
        })?;
        let _ = st.tr_close(&mut object);
        Ok(())
    }

    /// Reads the selected PCRs.
    pub fn read_pcrs(&self, selection: &PcrSelection) -> Result<PcrValues, CustodyError> {
        let list = tss_selection(selection)?;
        let mut st = self.device.lock()?;
        // PCR_Read is sent without sessions: swtpm refuses it with one (0x984).
        st.clear_sessions();
        let data = st.retry("PCR_Read", |c| pcr::read_all(c, list.clone()))?;
        let mut out = PcrValues::new();
        for (bank, pcrs) in selection.banks() {
            let values = data
                .pcr_bank(tss_hash(*bank))
                .ok_or_else(|| CustodyError::Tpm {
                    op: "PCR_Read",
                    reason: format!(
                        "bank {} not returned (not active in this TPM?)",
                        bank.name()
                    ),
                })?;
            for &index in pcrs {
                let slot = PcrSlot::try_from(1u32 << index)
                    .map_err(|e| CustodyError::tpm("PCR_Read", e))?;
                let value = values.get_digest(slot).ok_or_else(|| CustodyError::Tpm {
                    op: "PCR_Read",
                    reason: format!("PCR {}:{index} not returned", bank.name()),
                })?;
                out.insert(*bank, index, value.value().to_vec())
                    .map_err(|e| CustodyError::Tpm {
                        op: "PCR_Read",
                        reason: e.to_string(),
                    })?;
            }
        }
        Ok(out)
    }

    /// Extends PCR `index` of the SHA-256 bank with `digest` (measured-boot simulation, tests).
    pub fn extend_pcr(&self, index: u8, digest: &[u8; 32]) -> Result<(), CustodyError> {
        let handle = pcr_handle(index)?;
        let mut values = DigestValues::new();
        values.set(
            HashingAlgorithm::Sha256,
            Digest::try_from(digest.to_vec()).map_err(|e| CustodyError::tpm("PCR_Extend", e))?,
        );
        let mut st = self.device.lock()?;
        st.with_session("PCR_Extend", ObjectAuth::Empty, |c| {
            c.pcr_extend(handle, values.clone())
        })
    }
}

/// A holder key in the TPM as an ES256 JWS signer (DPoP proofs): the SHA-256 of the signing
/// input, signed by the key; in a policy session over `bound` for a key made by
/// [`Attester::create_holder_key_bound`].
#[derive(Debug)]
pub struct HolderSigner<'a> {
    /// The TPM the key is loaded in.
    pub tpm: &'a Attester,
    /// The loaded holder key.
    pub key: LoadedKey,
    /// The selection a PCR-bound key's policy asserts; `None` for a key without one.
    pub bound: Option<PcrSelection>,
}

impl writ_attestation::writ::jws::Es256Signer for HolderSigner<'_> {
    fn sign_es256(&self, message: &[u8]) -> Result<[u8; 64], writ_attestation::writ::Refusal> {
        use sha2::Digest as _;
        let digest: [u8; 32] = sha2::Sha256::digest(message).into();
        let sig = match &self.bound {
            None => self.tpm.sign_digest(&self.key, &digest),
            Some(sel) => self.tpm.sign_digest_bound(&self.key, sel, &digest),
        }
        .map_err(|e| writ_attestation::writ::Refusal::new("signing", format!("holder key: {e}")))?;
        sig.to_bytes().as_slice().try_into().map_err(|_| {
            writ_attestation::writ::Refusal::new("signing", "an ES256 signature of the wrong size")
        })
    }
}

/// The holder key seen through RustCrypto's signing traits (what x509-cert's request builder
/// signs with): ECDSA P-256 over SHA-256, each signature made in the TPM.
#[derive(Debug)]
pub struct HolderKeypair<'a> {
    /// The loaded holder key.
    pub signer: HolderSigner<'a>,
    /// Its public key.
    pub public: p256::ecdsa::VerifyingKey,
}

impl signature::Keypair for HolderKeypair<'_> {
    type VerifyingKey = p256::ecdsa::VerifyingKey;

    fn verifying_key(&self) -> p256::ecdsa::VerifyingKey {
        self.public
    }
}

impl spki::SignatureAlgorithmIdentifier for HolderKeypair<'_> {
    type Params = spki::der::AnyRef<'static>;

    const SIGNATURE_ALGORITHM_IDENTIFIER: spki::AlgorithmIdentifier<spki::der::AnyRef<'static>> =
        spki::AlgorithmIdentifier {
            oid: ecdsa::ECDSA_SHA256_OID,
            parameters: None,
        };
}

impl signature::Signer<p256::ecdsa::Signature> for HolderKeypair<'_> {
    fn try_sign(&self, msg: &[u8]) -> Result<p256::ecdsa::Signature, signature::Error> {
        use writ_attestation::writ::jws::Es256Signer as _;
        let raw = self.signer.sign_es256(msg).map_err(|e| {
            tracing::error!(error = %e.detail, "holder key signature failed");
            signature::Error::new()
        })?;
        p256::ecdsa::Signature::from_slice(&raw).map_err(|_| signature::Error::new())
    }
}

impl signature::Signer<p256::ecdsa::DerSignature> for HolderKeypair<'_> {
    fn try_sign(&self, msg: &[u8]) -> Result<p256::ecdsa::DerSignature, signature::Error> {
        let sig: p256::ecdsa::Signature = self.try_sign(msg)?;
        Ok(sig.to_der())
    }
}

/// Reads a firmware event log (default [`DEFAULT_EVENT_LOG`]), refusing logs over [`MAX_EVENT_LOG`].
pub fn read_event_log(path: Option<&Path>) -> Result<Vec<u8>, CustodyError> {
    use std::io::Read;
    let path = path.unwrap_or(Path::new(DEFAULT_EVENT_LOG));
    let err = |reason: String| CustodyError::File {
        what: "event log",
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut buf = Vec::new();
    file.take(MAX_EVENT_LOG + 1)
        .read_to_end(&mut buf)
        .map_err(|e| err(e.to_string()))?;
    if buf.len() as u64 > MAX_EVENT_LOG {
        return Err(err(format!("larger than {MAX_EVENT_LOG} bytes")));
    }
    Ok(buf)
}

fn pcr_handle(index: u8) -> Result<PcrHandle, CustodyError> {
    PcrHandle::try_from(u32::from(index))
        .map_err(|_| CustodyError::InvalidInput(format!("PCR {index} does not exist")))
}

fn nonce_data(nonce: &[u8]) -> Result<Data, CustodyError> {
    if nonce.is_empty() || nonce.len() > MAX_NONCE {
        return Err(CustodyError::InvalidInput(format!(
            "nonce must be 1..={MAX_NONCE} bytes"
        )));
    }
    Data::try_from(nonce.to_vec())
        .map_err(|_| CustodyError::InvalidInput("nonce too long for this TPM".into()))
}

fn auth_value(auth: &[u8]) -> Result<Auth, CustodyError> {
    Auth::try_from(auth.to_vec())
        .map_err(|_| CustodyError::InvalidInput("authValue too long".into()))
}

fn signed(
    attest: tss_esapi::Result<Vec<u8>>,
    signature: tss_esapi::Result<Vec<u8>>,
) -> Result<SignedAttest, CustodyError> {
    Ok(SignedAttest {
        attest: attest.map_err(|e| CustodyError::tpm("marshal", e))?,
        signature: signature.map_err(|e| CustodyError::tpm("marshal", e))?,
    })
}

fn blob(public: &Public, private: &Private) -> Result<KeyBlob, CustodyError> {
    use sha2::{Digest as _, Sha256};
    let public = public
        .marshall()
        .map_err(|e| CustodyError::tpm("marshal", e))?;
    let mut name = vec![0x00, 0x0b];
    name.extend_from_slice(&Sha256::digest(&public));
    Ok(KeyBlob {
        public,
        private: private.value().to_vec(),
        name,
    })
}

fn unblob(key: &KeyBlob) -> Result<(Public, Private), CustodyError> {
    let public = Public::unmarshall(&key.public)
        .map_err(|_| CustodyError::InvalidInput("key blob: public area does not parse".into()))?;
    let private = Private::try_from(key.private.clone())
        .map_err(|_| CustodyError::InvalidInput("key blob: private part too large".into()))?;
    Ok((public, private))
}

/// Whether `handle` still holds the object named `name` (ReadPublic, no session).
fn still_loaded(st: &mut DeviceState, handle: KeyHandle, name: &[u8]) -> bool {
    match st.execute_without_session(|c| c.read_public(handle)) {
        Ok((_, current, _)) => current.value() == name,
        Err(_) => false,
    }
}

fn create_ek(st: &mut DeviceState) -> Result<KeyHandle, CustodyError> {
    st.retry("CreatePrimary (EK)", |c| {
        ek::create_ek_object_2(
            c,
            AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
            None,
        )
    })
}

fn read_nv(st: &mut DeviceState, index: u32) -> Result<Option<Vec<u8>>, CustodyError> {
    let nv_index = NvIndexTpmHandle::new(index).map_err(|e| CustodyError::tpm("NV index", e))?;
    let found = retry_raw("TR_FromTPMPublic (NV)", || {
        st.execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(nv_index)))
    });
    let mut object = match found {
        Ok(o) => o,
        Err((e, _)) if super::key::is_missing_handle(&e) => return Ok(None),
        Err((e, n)) => return Err(st.classify("TR_FromTPMPublic (NV)", e, n)),
    };
    let auth = NvAuth::NvIndex(object.into());
    let data = st.with_session("NV_Read", ObjectAuth::Empty, |c| {
        nv::read_full(c, auth, nv_index)
    });
    let _ = st.tr_close(&mut object);
    data.map(Some)
}

fn activate(
    st: &mut DeviceState,
    ak: KeyHandle,
    ek: KeyHandle,
    id_object: IdObject,
    secret: EncryptedSecret,
) -> Result<Zeroizing<Vec<u8>>, CustodyError> {
    let (attrs, mask) = SessionAttributesBuilder::new().build();
    let start = |st: &mut DeviceState, kind| {
        st.retry("StartAuthSession", |c| {
            c.start_auth_session(
                None,
                None,
                None,
                kind,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
        })?
        .ok_or_else(|| CustodyError::Tpm {
            op: "StartAuthSession",
            reason: "no session returned".into(),
        })
    };
    let hmac = start(st, SessionType::Hmac)?;
    let policy = match start(st, SessionType::Policy) {
        Ok(p) => p,
        Err(e) => {
            flush(st, SessionHandle::from(hmac).into());
            return Err(e);
        }
    };
    let result = (|| {
        st.tr_sess_set_attributes(hmac, attrs, mask)
            .map_err(|e| CustodyError::tpm("TR_SessSetAttributes", e))?;
        st.tr_sess_set_attributes(policy, attrs, mask)
            .map_err(|e| CustodyError::tpm("TR_SessSetAttributes", e))?;
        let policy_session =
            PolicySession::try_from(policy).map_err(|e| CustodyError::tpm("PolicySession", e))?;
        // The EK's authPolicy is PolicySecret(TPM_RH_ENDORSEMENT): satisfy it in the policy session.
        st.retry("PolicySecret", |c| {
            c.execute_with_session(Some(hmac), |c| {
                c.policy_secret(
                    policy_session,
                    AuthHandle::Endorsement,
                    Default::default(),
                    Default::default(),
                    Default::default(),
                    None,
                )
            })
        })?;
        // Not retried: the policy session's state is consumed by the attempt.
        let cred = st.execute_with_sessions((Some(hmac), Some(policy), None), |c| {
            c.activate_credential(ak, ek, id_object, secret)
        });
        match cred {
            Ok(d) => Ok(Zeroizing::new(d.value().to_vec())),
            Err(e) => Err(st.classify("ActivateCredential", e, 1)),
        }
    })();
    flush(st, SessionHandle::from(hmac).into());
    flush(st, SessionHandle::from(policy).into());
    result
}
