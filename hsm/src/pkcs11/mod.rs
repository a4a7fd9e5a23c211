//! PKCS#11 custody through cryptoki: open and generate P-256 keys named by `pkcs11:` URIs.

mod pool;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use p256::ecdsa::Signature;
use p256::ecdsa::signature::hazmat::PrehashVerifier;

use crate::CustodyError;
use crate::key::{Algorithm, Backend, CustodyKey, KeyFact, PublicKey, signature_from_scalars};
use crate::uri::Pkcs11Uri;

pub use pool::PoolStats;
use pool::SessionPool;

/// DER of the named-curve OID for P-256 (1.2.840.10045.3.1.7), the value of `CKA_EC_PARAMS`.
const P256_EC_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// A P-256 private key on a PKCS#11 token, used through a pool of logged-in sessions.
#[derive(Debug)]
pub struct Pkcs11Key {
    uri: String,
    public: PublicKey,
    facts: Vec<KeyFact>,
    pool: SessionPool,
}

impl Pkcs11Key {
    /// Opens an existing key. Refuses keys that are extractable, not sensitive, not private, or not
    /// P-256 signing keys, and checks that the private key and the public key object belong together.
    pub fn open(uri: &Pkcs11Uri) -> Result<Self, CustodyError> {
        let module_path = uri.module()?;
        let module = load_module(&module_path)?;
        let slot = find_token(&module, &uri.token)?;
        let pin = AuthPin::from(uri.pin_source().read()?.as_str());
        let login_key = format!("{}#{}", module_path.display(), uri.token);
        let session = open_session(&module, slot, &pin, &uri.token, &login_key, false)?;
        let name = uri.to_string();
        let (private, public_obj, id) = find_key_pair(&session, uri, &name)?;
        let facts = check_private_key(&session, private, &name)?;
        let public = read_public_key(&session, public_obj, &name)?;
        // From here on the key is the object with this label *and* this id: a rebuild after a stale
        // session must find the same key, not another one that took its label.
        let expected = Expected {
            facts: facts.clone(),
            public: public.clone(),
            name: name.clone(),
            label: uri.object.as_bytes().to_vec(),
            id,
        };
        let pool = SessionPool::new(
            module,
            module_path,
            slot,
            pin,
            uri.token.clone(),
            login_key,
            private,
            expected,
        );
        pool.check_in(session, pool.generation());
        let key = Pkcs11Key {
            uri: name,
            public,
            facts,
            pool,
        };
        key.self_test()?;
        Ok(key)
    }

    /// Generates a new P-256 key pair on the token: private, sensitive, non-extractable, sign-only.
    /// Refuses if any object already carries that label (and id, if given). Returns the opened key.
    pub fn generate(uri: &Pkcs11Uri) -> Result<Self, CustodyError> {
        let module_path = uri.module()?;
        let module = load_module(&module_path)?;
        let slot = find_token(&module, &uri.token)?;
        let pin = AuthPin::from(uri.pin_source().read()?.as_str());
        let login_key = format!("{}#{}", module_path.display(), uri.token);
        let session = open_session(&module, slot, &pin, &uri.token, &login_key, true)?;
        let existing = session
            .find_objects(&[Attribute::Label(uri.object.as_bytes().to_vec())])
            .map_err(|e| CustodyError::pkcs11("C_FindObjects", e))?;
        if !existing.is_empty() {
            return Err(CustodyError::KeyExists(uri.to_string()));
        }
        let id = match &uri.id {
            Some(id) => id.clone(),
            None => {
                let mut id = vec![0u8; 16];
                getrandom::fill(&mut id).map_err(|e| CustodyError::Pkcs11 {
                    op: "key id generation",
                    reason: e.to_string(),
                })?;
                id
            }
        };
        let label = uri.object.as_bytes().to_vec();
        let public_template = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::EcParams(P256_EC_PARAMS.to_vec()),
            Attribute::Label(label.clone()),
            Attribute::Id(id.clone()),
        ];
        let private_template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Derive(false),
            Attribute::Label(label),
            Attribute::Id(id.clone()),
        ];
        session
            .generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &public_template,
                &private_template,
            )
            .map_err(|e| CustodyError::pkcs11("C_GenerateKeyPair", e))?;
        drop(session);
        let mut pinned = uri.clone();
        pinned.id = Some(id);
        Self::open(&pinned)
    }

    /// Session pool counters, for diagnostics and tests.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Signs a fixed probe and verifies it: catches a public key object that does not belong to the
    /// private key, and a token that cannot sign, before anyone relies on the key.
    fn self_test(&self) -> Result<(), CustodyError> {
        let probe = [0x5au8; 32];
        let sig = self.sign_digest(&probe)?;
        self.public
            .verifying_key()
            .verify_prehash(&probe, &sig)
            .map_err(|_| CustodyError::UnsafeKey {
                key: self.uri.clone(),
                reason: "the public key object does not match the private key".into(),
            })
    }
}

impl CustodyKey for Pkcs11Key {
    fn sign_digest(&self, digest: &[u8; 32]) -> Result<Signature, CustodyError> {
        raw_signature(&self.pool.sign(digest)?)
    }

    fn algorithm(&self) -> Algorithm {
        Algorithm::EcdsaP256Sha256
    }

    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn backend(&self) -> Backend {
        Backend::Pkcs11
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

/// The modules this process has loaded and initialised, by path.
///
/// A PKCS#11 module is initialised once per process: a second `C_Initialize` fails and a
/// `C_Finalize` by one user would close every other user's sessions. So every key that names the
/// same module shares one `Pkcs11` handle, kept for the life of the process.
fn modules() -> &'static Mutex<HashMap<PathBuf, Pkcs11>> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    MODULES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The shortest interval between two re-initialisations of one module.
pub const REINIT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

fn last_reinit() -> &'static Mutex<HashMap<PathBuf, std::time::Instant>> {
    static LAST: OnceLock<Mutex<HashMap<PathBuf, std::time::Instant>>> = OnceLock::new();
    LAST.get_or_init(|| Mutex::new(HashMap::new()))
}

/// `C_Finalize` and `C_Initialize` of a loaded module, at most once per [`REINIT_EVERY`]: every
/// session of every key of that module is closed (their pools reopen sessions), and the module's
/// view of its slots and tokens starts over. Returns whether it re-initialised now.
pub(crate) fn reinitialize_module(path: &Path) -> Result<bool, CustodyError> {
    let unavailable = |reason: String| CustodyError::ModuleUnavailable {
        path: path.to_path_buf(),
        reason,
    };
    {
        let mut last = last_reinit()
            .lock()
            .map_err(|_| unavailable("re-initialisation registry poisoned".into()))?;
        if last.get(path).is_some_and(|t| t.elapsed() < REINIT_EVERY) {
            return Ok(false);
        }
        last.insert(path.to_path_buf(), std::time::Instant::now());
    }
    let map = modules()
        .lock()
        .map_err(|_| unavailable("module registry poisoned".into()))?;
    let Some(module) = map.get(path) else {
        return Ok(false);
    };
    // A module that is not initialised any more finalises with an error: initialise anyway.
    let _ = module.clone().finalize();
    match module.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(true),
        Err(e) => Err(unavailable(format!("C_Initialize again: {e}"))),
    }
}

/// Loads and initialises a module, or returns the handle this process already holds for it.
pub fn load_module(path: &Path) -> Result<Pkcs11, CustodyError> {
    let unavailable = |reason: String| CustodyError::ModuleUnavailable {
        path: path.to_path_buf(),
        reason,
    };
    let mut map = modules()
        .lock()
        .map_err(|_| unavailable("module registry poisoned".into()))?;
    if let Some(m) = map.get(path) {
        return Ok(m.clone());
    }
    if !path.is_file() {
        return Err(unavailable("no such file".into()));
    }
    let module = Pkcs11::new(path).map_err(|e| unavailable(e.to_string()))?;
    match module.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(unavailable(format!("C_Initialize: {e}"))),
    }
    map.insert(path.to_path_buf(), module.clone());
    Ok(module)
}

/// Finds the slot whose token carries `label` (slot ids are not stable; labels are).
fn find_token(module: &Pkcs11, label: &str) -> Result<Slot, CustodyError> {
    let slots = module
        .get_slots_with_token()
        .map_err(|e| CustodyError::pkcs11("C_GetSlotList", e))?;
    let mut present = Vec::new();
    let mut matching = Vec::new();
    for slot in slots {
        let info = module
            .get_token_info(slot)
            .map_err(|e| CustodyError::pkcs11("C_GetTokenInfo", e))?;
        let token_label = info.label().trim_end();
        if token_label == label {
            matching.push(slot);
        } else if !token_label.is_empty() {
            present.push(format!("{token_label:?}"));
        }
    }
    match matching.as_slice() {
        [one] => Ok(*one),
        [] => Err(CustodyError::TokenNotFound {
            label: label.to_string(),
            present: if present.is_empty() {
                "none".into()
            } else {
                present.join(", ")
            },
        }),
        // Two tokens with one label: refuse rather than sign with whichever comes first.
        _ => Err(CustodyError::Pkcs11 {
            op: "token lookup",
            reason: format!(
                "{} tokens carry the label {label:?}; labels must be unique",
                matching.len()
            ),
        }),
    }
}

/// Opens a session and logs the user in. Login is per application and token, so a second session's
/// `CKR_USER_ALREADY_LOGGED_IN` means it is already done.
fn open_session(
    module: &Pkcs11,
    slot: Slot,
    pin: &AuthPin,
    token: &str,
    login_key: &str,
    read_write: bool,
) -> Result<Session, CustodyError> {
    let session = if read_write {
        module.open_rw_session(slot)
    } else {
        module.open_ro_session(slot)
    }
    .map_err(|e| CustodyError::pkcs11("C_OpenSession", e))?;
    login(&session, pin, token, login_key)?;
    Ok(session)
}

/// SHA-256 of the PIN that logged this process in, per module and token label. PKCS#11 login is per
/// application: once one key logged in, a later login answers CKR_USER_ALREADY_LOGGED_IN whatever
/// PIN it carries. Comparing against the PIN that worked keeps a misconfigured key from opening.
fn logged_in() -> &'static Mutex<HashMap<String, [u8; 32]>> {
    static LOGGED_IN: OnceLock<Mutex<HashMap<String, [u8; 32]>>> = OnceLock::new();
    LOGGED_IN.get_or_init(|| Mutex::new(HashMap::new()))
}

fn pin_digest(pin: &AuthPin) -> [u8; 32] {
    use secrecy::ExposeSecret;
    use sha2::{Digest, Sha256};
    Sha256::digest(pin.expose_secret().as_bytes()).into()
}

fn login(
    session: &Session,
    pin: &AuthPin,
    token: &str,
    login_key: &str,
) -> Result<(), CustodyError> {
    let poisoned = || CustodyError::LoginFailed {
        label: token.to_string(),
        reason: "login registry poisoned".into(),
    };
    // Held across C_Login, so that a concurrent opener cannot see "already logged in" before the
    // PIN that logged in is recorded.
    let mut registry = logged_in().lock().map_err(|_| poisoned())?;
    match session.login(UserType::User, Some(pin)) {
        Ok(()) => {
            registry.insert(login_key.to_string(), pin_digest(pin));
            Ok(())
        }
        Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => match registry.get(login_key) {
            Some(digest) if *digest == pin_digest(pin) => Ok(()),
            Some(_) => Err(CustodyError::WrongPin {
                label: token.to_string(),
            }),
            // Logged in by something in this process other than writ: the PIN cannot be checked,
            // so it is not accepted.
            None => Err(CustodyError::LoginFailed {
                label: token.to_string(),
                reason: "the token is already logged in by another part of this process; \
                         the PIN cannot be verified"
                    .into(),
            }),
        },
        Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => Err(CustodyError::WrongPin {
            label: token.to_string(),
        }),
        Err(CkError::Pkcs11(rv, _)) => Err(CustodyError::LoginFailed {
            label: token.to_string(),
            reason: rv.to_string(),
        }),
        Err(e) => Err(CustodyError::LoginFailed {
            label: token.to_string(),
            reason: e.to_string(),
        }),
    }
}

fn private_template(label: &[u8], id: Option<&[u8]>) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Label(label.to_vec()),
    ];
    if let Some(id) = id {
        t.push(Attribute::Id(id.to_vec()));
    }
    t
}

/// CKM_ECDSA's raw r || s (64 bytes for P-256) as a low-S signature.
fn raw_signature(raw: &[u8]) -> Result<Signature, CustodyError> {
    match (raw.get(..32), raw.get(32..)) {
        (Some(r), Some(s)) if raw.len() == 64 => signature_from_scalars(r, s),
        _ => Err(CustodyError::BadSignature(format!(
            "CKM_ECDSA returned {} bytes, expected 64",
            raw.len()
        ))),
    }
}

/// What a rebuilt pool must find again: the same attributes and the same public key.
#[derive(Debug)]
pub(crate) struct Expected {
    facts: Vec<KeyFact>,
    public: PublicKey,
    name: String,
    /// The key's label and the id it had when first opened.
    label: Vec<u8>,
    id: Vec<u8>,
}

impl Expected {
    /// Re-reads `key` in `session` and refuses it unless it is the key first opened.
    /// The private key's search template: its label and pinned id.
    pub(crate) fn private_template(&self) -> Vec<Attribute> {
        private_template(&self.label, Some(&self.id))
    }

    pub(crate) fn check(&self, session: &Session, key: ObjectHandle) -> Result<(), CustodyError> {
        let facts = check_private_key(session, key, &self.name)?;
        let public_obj = find_public(session, &self.label, &self.id, &self.name)?;
        let public = read_public_key(session, public_obj, &self.name)?;
        // The public object could have been copied from the old key: prove the private key matches
        // by a probe signature, as at open.
        let probe = [0x5au8; 32];
        let proven = session
            .sign(&Mechanism::Ecdsa, key, &probe)
            .ok()
            .and_then(|raw| raw_signature(&raw).ok())
            .is_some_and(|sig| {
                self.public
                    .verifying_key()
                    .verify_prehash(&probe, &sig)
                    .is_ok()
            });
        if facts != self.facts || public != self.public || !proven {
            return Err(CustodyError::UnsafeKey {
                key: self.name.clone(),
                reason:
                    "after reopening the session the token holds a different key under this name"
                        .into(),
            });
        }
        Ok(())
    }
}

fn key_id(session: &Session, key: ObjectHandle, name: &str) -> Result<Vec<u8>, CustodyError> {
    match session
        .get_attributes(key, &[AttributeType::Id])
        .map_err(|e| CustodyError::pkcs11("C_GetAttributeValue", e))?
        .into_iter()
        .next()
    {
        Some(Attribute::Id(id)) => Ok(id),
        _ => Err(CustodyError::UnsupportedKey {
            key: name.to_string(),
            reason: "private key has no CKA_ID".into(),
        }),
    }
}

/// Finds exactly one private key, its public key object, and its id.
fn find_key_pair(
    session: &Session,
    uri: &Pkcs11Uri,
    name: &str,
) -> Result<(ObjectHandle, ObjectHandle, Vec<u8>), CustodyError> {
    let label = uri.object.as_bytes();
    let private = find_one(session, &private_template(label, uri.id.as_deref()), name)?;
    let id = key_id(session, private, name)?;
    let public = find_public(session, label, &id, name)?;
    Ok((private, public, id))
}

/// The public key object with the private key's label and id, so a stray public object with the
/// same label but another id cannot be paired with it.
fn find_public(
    session: &Session,
    label: &[u8],
    id: &[u8],
    name: &str,
) -> Result<ObjectHandle, CustodyError> {
    let template = [
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::Label(label.to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    find_one(session, &template, name).map_err(|e| match e {
        CustodyError::KeyNotFound(k) => CustodyError::UnsupportedKey {
            key: k,
            reason: "no public key object with the private key's label and id".into(),
        },
        other => other,
    })
}

pub(crate) fn find_one(
    session: &Session,
    template: &[Attribute],
    name: &str,
) -> Result<ObjectHandle, CustodyError> {
    let found = session
        .find_objects(template)
        .map_err(|e| CustodyError::pkcs11("C_FindObjects", e))?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(CustodyError::KeyNotFound(name.to_string())),
        _ => Err(CustodyError::KeyAmbiguous(name.to_string())),
    }
}

/// Reads the private key's attributes and refuses anything unsafe or unsupported.
fn check_private_key(
    session: &Session,
    key: ObjectHandle,
    name: &str,
) -> Result<Vec<KeyFact>, CustodyError> {
    let wanted = [
        AttributeType::KeyType,
        AttributeType::EcParams,
        AttributeType::Sensitive,
        AttributeType::Extractable,
        AttributeType::Private,
        AttributeType::Sign,
        AttributeType::AlwaysSensitive,
        AttributeType::NeverExtractable,
        AttributeType::Token,
    ];
    let attrs = session
        .get_attributes(key, &wanted)
        .map_err(|e| CustodyError::pkcs11("C_GetAttributeValue", e))?;
    let mut key_type = None;
    let mut ec_params = None;
    let (mut sensitive, mut extractable, mut private, mut sign) = (None, None, None, None);
    let (mut always_sensitive, mut never_extractable, mut token) = (None, None, None);
    for a in attrs {
        match a {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::EcParams(p) => ec_params = Some(p),
            Attribute::Sensitive(v) => sensitive = Some(v),
            Attribute::Extractable(v) => extractable = Some(v),
            Attribute::Private(v) => private = Some(v),
            Attribute::Sign(v) => sign = Some(v),
            Attribute::AlwaysSensitive(v) => always_sensitive = Some(v),
            Attribute::NeverExtractable(v) => never_extractable = Some(v),
            Attribute::Token(v) => token = Some(v),
            _ => {}
        }
    }
    let unsafe_key = |reason: &str| CustodyError::UnsafeKey {
        key: name.to_string(),
        reason: reason.to_string(),
    };
    let unsupported = |reason: &str| CustodyError::UnsupportedKey {
        key: name.to_string(),
        reason: reason.to_string(),
    };
    if key_type != Some(KeyType::EC) {
        return Err(unsupported("not an EC key (CKA_KEY_TYPE)"));
    }
    if ec_params.as_deref() != Some(&P256_EC_PARAMS[..]) {
        return Err(unsupported("not a P-256 key (CKA_EC_PARAMS)"));
    }
    // Unknown (unreadable) counts as unsafe: fail closed.
    if extractable != Some(false) {
        return Err(unsafe_key(
            "CKA_EXTRACTABLE is true: the private key can leave the token",
        ));
    }
    if sensitive != Some(true) {
        return Err(unsafe_key(
            "CKA_SENSITIVE is false: the private key value can be read",
        ));
    }
    if private != Some(true) {
        return Err(unsafe_key(
            "CKA_PRIVATE is false: the key is usable without logging in",
        ));
    }
    if sign != Some(true) {
        return Err(unsupported("CKA_SIGN is false"));
    }
    // A key that was ever readable or exportable (imported, or made sensitive later) may exist
    // outside the token: CKA_ALWAYS_SENSITIVE and CKA_NEVER_EXTRACTABLE say it never was.
    if always_sensitive != Some(true) {
        return Err(unsafe_key(
            "CKA_ALWAYS_SENSITIVE is false: the private key was readable at some point",
        ));
    }
    if never_extractable != Some(true) {
        return Err(unsafe_key(
            "CKA_NEVER_EXTRACTABLE is false: the private key was exportable at some point",
        ));
    }
    let show = |v: Option<bool>| v.map_or("unknown".to_string(), |b| b.to_string());
    Ok(vec![
        KeyFact::new("CKA_KEY_TYPE", "CKK_EC (P-256)"),
        KeyFact::new("CKA_SENSITIVE", show(sensitive)),
        KeyFact::new("CKA_EXTRACTABLE", show(extractable)),
        KeyFact::new("CKA_PRIVATE", show(private)),
        KeyFact::new("CKA_ALWAYS_SENSITIVE", show(always_sensitive)),
        KeyFact::new("CKA_NEVER_EXTRACTABLE", show(never_extractable)),
        KeyFact::new("CKA_TOKEN", show(token)),
        KeyFact::new("CKA_SIGN", show(sign)),
    ])
}

/// Reads `CKA_EC_POINT` (a DER OCTET STRING around the SEC1 point; some tokens give the bare point).
fn read_public_key(
    session: &Session,
    public: ObjectHandle,
    name: &str,
) -> Result<PublicKey, CustodyError> {
    let attrs = session
        .get_attributes(public, &[AttributeType::EcPoint])
        .map_err(|e| CustodyError::pkcs11("C_GetAttributeValue", e))?;
    let point = attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(p) => Some(p),
            _ => None,
        })
        .ok_or_else(|| CustodyError::UnsupportedKey {
            key: name.to_string(),
            reason: "public key object has no CKA_EC_POINT".into(),
        })?;
    // DER OCTET STRING (04 41 || 65-byte uncompressed point) as PKCS#11 specifies; some tokens
    // return the bare point.
    let sec1 = match point.as_slice() {
        [0x04, 0x41, rest @ ..] if rest.len() == 0x41 => rest,
        bare => bare,
    };
    PublicKey::from_sec1(sec1).map_err(|reason| CustodyError::UnsupportedKey {
        key: name.to_string(),
        reason: format!("CKA_EC_POINT: {reason}"),
    })
}
