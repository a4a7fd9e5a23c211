//! TPM access through tss-esapi 7.7: one serialised context per TPM, bounded retries, a salted
//! session for secrets, reconnection after the TPM goes away, custody keys and the attester's
//! operations.

pub mod attester;
mod key;
pub mod simboot;

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use tss_esapi::Context;
use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::SessionType;
use tss_esapi::constants::response_code::{Tss2ResponseCode, Tss2ResponseCodeKind};
use tss_esapi::handles::{KeyHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    EccPoint, PublicBuilder, PublicEccParametersBuilder, SymmetricDefinition,
    SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;

use crate::CustodyError;

pub use key::TpmKey;

/// How many times a command answered with TPM_RC_RETRY, TPM_RC_YIELDED or TPM_RC_TESTING is sent
/// again by us. tpm2-tss's ESYS already resubmits up to five times on its own; this bound sits on
/// top of it, with a growing pause (20, 40, 80, 160 ms), so a TPM in a long self-test gets time.
pub const MAX_ATTEMPTS: u32 = 5;
const FIRST_PAUSE: Duration = Duration::from_millis(20);

/// One TPM, reached through one TCTI, shared by every key and attester of this process that names
/// the same TCTI.
///
/// Access is serialised on purpose, by the mutex around the ESAPI context: a TPM executes one
/// command at a time; an ESAPI context keeps per-command state (sessions, the handles it has
/// translated) and is `Send` but not `Sync`; a direct TCTI such as swtpm's socket or `/dev/tpm0`
/// admits one connection; and swtpm has three transient object slots, which parallel users would
/// exhaust. Callers in async code cross into this with `spawn_blocking`.
pub struct TpmDevice {
    tcti: String,
    state: Mutex<DeviceState>,
}

/// Whether the object a command authorizes has an authValue.
///
/// With an empty authValue, commands use a password session: an HMAC session would be keyed by
/// nothing an attacker lacks, and on swtpm it costs about 1.7 ms a command against 0.3 ms. With an
/// authValue, the shared salted HMAC session is used (parameter encryption on), which keeps the
/// value off the TPM bus and binds the command's parameters to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ObjectAuth {
    Empty,
    Set,
}

/// The ESAPI context, the session that commands carrying secrets share, and whether the
/// connection is known to be broken.
///
/// The session is salted with an ECC storage primary of the owner hierarchy, so its session key
/// (and with it the parameter-encryption key) is unknown to anyone watching the bus; it is started
/// on first use, kept (continueSession), and replaced if the TPM forgets it (a reboot).
pub(crate) struct DeviceState {
    tcti: String,
    context: Context,
    session: Option<AuthSession>,
    /// Bumped on every reconnection: ESYS handles translated before it are meaningless after it.
    generation: u64,
    broken: bool,
    /// ESYS handles of persistent objects, translated once per connection and shared by every key
    /// naming the same handle. (tpm2-tss hands out one ESYS object per TPM handle without reference
    /// counting, so closing it for one user would close it for all; it is never closed.)
    persistent: HashMap<u32, tss_esapi::handles::ObjectHandle>,
}

impl std::fmt::Debug for DeviceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceState")
            .field("tcti", &self.tcti)
            .field("generation", &self.generation)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Deref for DeviceState {
    type Target = Context;
    fn deref(&self) -> &Context {
        &self.context
    }
}

impl DerefMut for DeviceState {
    fn deref_mut(&mut self) -> &mut Context {
        &mut self.context
    }
}

impl DeviceState {
    /// The connection generation (see [`TpmDevice`]): compare with the one a handle was made in.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Runs one command with the session `auth` calls for, with the bounded transient retry. A
    /// command sent under a session the TPM no longer knows is sent once more under a fresh one
    /// (TPM commands are atomic: one that failed had no effect). A lost connection marks the device
    /// broken; the next [`TpmDevice::lock`] reconnects.
    pub(crate) fn with_session<T>(
        &mut self,
        op: &'static str,
        auth: ObjectAuth,
        mut command: impl FnMut(&mut Context) -> tss_esapi::Result<T>,
    ) -> Result<T, CustodyError> {
        let session = match auth {
            ObjectAuth::Empty => AuthSession::Password,
            ObjectAuth::Set => self.session()?,
        };
        self.with_sessions(op, (session, None), &mut command)
    }

    /// As [`with_session`](Self::with_session) for commands with two authorizations: the first
    /// uses the shared salted session, the second (an object with an empty authValue) a password.
    pub(crate) fn with_salted_and_password<T>(
        &mut self,
        op: &'static str,
        mut command: impl FnMut(&mut Context) -> tss_esapi::Result<T>,
    ) -> Result<T, CustodyError> {
        let session = self.session()?;
        self.with_sessions(op, (session, Some(AuthSession::Password)), &mut command)
    }

    fn with_sessions<T>(
        &mut self,
        op: &'static str,
        sessions: (AuthSession, Option<AuthSession>),
        command: &mut impl FnMut(&mut Context) -> tss_esapi::Result<T>,
    ) -> Result<T, CustodyError> {
        let mut run = |ctx: &mut Context, first: AuthSession| {
            retry_raw(op, || {
                ctx.execute_with_sessions((Some(first), sessions.1, None), &mut *command)
            })
        };
        match run(&mut self.context, sessions.0) {
            Ok(v) => Ok(v),
            Err((e, _)) if session_is_stale(&e) && sessions.0 != AuthSession::Password => {
                tracing::debug!(op, error = %e, "TPM session gone; starting a new one");
                self.discard_session();
                let session = self.session()?;
                run(&mut self.context, session).map_err(|(e, n)| self.classify(op, e, n))
            }
            Err((e, attempts)) => Err(self.classify(op, e, attempts)),
        }
    }

    /// Like [`retry`], and marks the device broken if the connection was lost.
    pub(crate) fn retry<T>(
        &mut self,
        op: &'static str,
        mut command: impl FnMut(&mut Context) -> tss_esapi::Result<T>,
    ) -> Result<T, CustodyError> {
        retry_raw(op, || command(&mut self.context)).map_err(|(e, n)| self.classify(op, e, n))
    }

    pub(crate) fn mark_broken(&mut self) {
        self.broken = true;
        self.session = None;
        self.persistent.clear();
    }

    /// The ESYS handle of the persistent object at `handle`, translated on first use in this
    /// connection. `KeyNotFound` if nothing is there.
    pub(crate) fn persistent(
        &mut self,
        handle: tss_esapi::handles::PersistentTpmHandle,
        name: &str,
    ) -> Result<tss_esapi::handles::ObjectHandle, CustodyError> {
        let raw = u32::from(handle);
        if let Some(h) = self.persistent.get(&raw) {
            return Ok(*h);
        }
        let found = retry_raw("TR_FromTPMPublic", || {
            self.context.execute_without_session(|c| {
                c.tr_from_tpm_public(tss_esapi::handles::TpmHandle::Persistent(handle))
            })
        });
        match found {
            Ok(object) => {
                self.persistent.insert(raw, object);
                Ok(object)
            }
            Err((e, _)) if key::is_missing_handle(&e) => {
                Err(CustodyError::KeyNotFound(name.to_string()))
            }
            Err((e, attempts)) => Err(self.classify("TR_FromTPMPublic", e, attempts)),
        }
    }

    /// Records the ESYS handle of an object just made persistent.
    pub(crate) fn remember_persistent(
        &mut self,
        handle: u32,
        object: tss_esapi::handles::ObjectHandle,
    ) {
        self.persistent.insert(handle, object);
    }

    pub(crate) fn classify(
        &mut self,
        op: &'static str,
        e: tss_esapi::Error,
        attempts: u32,
    ) -> CustodyError {
        if connection_lost(&e) {
            self.mark_broken();
            return CustodyError::TpmUnavailable {
                tcti: self.tcti.clone(),
                reason: format!("{op}: {e}"),
            };
        }
        classify(op, e, attempts)
    }

    fn session(&mut self) -> Result<AuthSession, CustodyError> {
        if let Some(s) = self.session {
            return Ok(s);
        }
        let salt_key = create_srk(self)?;
        let started = self.retry("StartAuthSession", |c| {
            c.start_auth_session(
                Some(salt_key),
                None,
                None,
                SessionType::Hmac,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
        });
        // The salt key is needed only to start the session.
        flush(self, salt_key.into());
        let session = started?.ok_or_else(|| CustodyError::Tpm {
            op: "StartAuthSession",
            reason: "no session returned".into(),
        })?;
        let (attributes, mask) = SessionAttributesBuilder::new()
            .with_continue_session(true)
            .with_decrypt(true)
            .with_encrypt(true)
            .build();
        if let Err(e) = self
            .context
            .tr_sess_set_attributes(session, attributes, mask)
        {
            flush(self, SessionHandle::from(session).into());
            return Err(CustodyError::tpm("TR_SessSetAttributes", e));
        }
        self.session = Some(session);
        Ok(session)
    }

    fn discard_session(&mut self) {
        if let Some(s) = self.session.take() {
            // Best effort: the TPM may already have forgotten it.
            let _ = self.context.flush_context(SessionHandle::from(s).into());
        }
    }
}

/// Flushes a transient object or session, logging (not failing) if the TPM refuses.
/// A failure here is logged, and marks the device broken if it came from the software stack rather
/// than the TPM (the next call then reconnects).
pub(crate) fn flush(st: &mut DeviceState, handle: tss_esapi::handles::ObjectHandle) {
    if let Err(e) = st.context.flush_context(handle) {
        tracing::warn!(error = %e, "could not flush a transient TPM object");
        if connection_lost(&e) {
            st.mark_broken();
        }
    }
}

/// An ECC P-256 storage primary (restricted decryption, AES-128-CFB) in the owner hierarchy: the
/// parent of generated keys and the salt key of sessions. Deterministic, so recreating it is cheap
/// and gives the same key.
pub(crate) fn create_srk(ctx: &mut DeviceState) -> Result<KeyHandle, CustodyError> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()
        .map_err(|e| CustodyError::tpm("template", e))?;
    let template = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()
            .map_err(|e| CustodyError::tpm("template", e))?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(|e| CustodyError::tpm("template", e))?;
    let created = ctx.with_session("CreatePrimary (SRK)", ObjectAuth::Empty, |c| {
        c.create_primary(Hierarchy::Owner, template.clone(), None, None, None, None)
    })?;
    Ok(created.key_handle)
}

fn devices() -> &'static Mutex<HashMap<String, Weak<TpmDevice>>> {
    static DEVICES: OnceLock<Mutex<HashMap<String, Weak<TpmDevice>>>> = OnceLock::new();
    DEVICES.get_or_init(|| Mutex::new(HashMap::new()))
}

impl std::fmt::Debug for TpmDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmDevice")
            .field("tcti", &self.tcti)
            .finish_non_exhaustive()
    }
}

impl TpmDevice {
    /// Opens the TPM behind `tcti` (a tpm2-tss TCTI configuration string such as
    /// `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`), or returns the handle this process
    /// already holds for it.
    pub fn open(tcti: &str) -> Result<Arc<TpmDevice>, CustodyError> {
        let unavailable = |reason: String| CustodyError::TpmUnavailable {
            tcti: tcti.to_string(),
            reason,
        };
        let registry = || {
            devices()
                .lock()
                .map_err(|_| unavailable("device registry poisoned".into()))
        };
        if let Some(dev) = registry()?.get(tcti).and_then(Weak::upgrade) {
            return Ok(dev);
        }
        // Connect without holding the registry: a TPM that is slow to answer must not stall every
        // other TPM this process uses.
        let context = connect(tcti)?;
        let mut map = registry()?;
        if let Some(dev) = map.get(tcti).and_then(Weak::upgrade) {
            // Someone connected meanwhile; theirs wins, ours is closed on drop.
            return Ok(dev);
        }
        let state = DeviceState {
            tcti: tcti.to_string(),
            context,
            session: None,
            generation: 0,
            broken: false,
            persistent: HashMap::new(),
        };
        let dev = Arc::new(TpmDevice {
            tcti: tcti.to_string(),
            state: Mutex::new(state),
        });
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(tcti.to_string(), Arc::downgrade(&dev));
        Ok(dev)
    }

    /// The TCTI this device was opened with.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// Exclusive access to the device for one operation. If the connection was lost, it is opened
    /// again first (and the generation bumped); if that fails, the TPM is reported unavailable and
    /// the next call tries again.
    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, DeviceState>, CustodyError> {
        let mut state = self.state.lock().map_err(|_| CustodyError::Tpm {
            op: "lock",
            reason: "a previous TPM operation panicked; context poisoned".into(),
        })?;
        if state.broken {
            state.context = connect(&self.tcti)?;
            state.session = None;
            state.persistent.clear();
            state.generation = state.generation.wrapping_add(1);
            state.broken = false;
            flush_leftovers(&mut state);
            tracing::warn!(tcti = %self.tcti, "reconnected to the TPM");
        }
        Ok(state)
    }
}

/// After a reconnection, flushes the sessions and transient objects the lost connection left
/// loaded (a TPM holds only a few: swtpm three sessions). Through the kernel's resource manager
/// this finds nothing (it flushes on close and shows each connection only its own handles);
/// through a direct TCTI the leftovers are this process's own.
fn flush_leftovers(state: &mut DeviceState) {
    use tss_esapi::constants::CapabilityType;
    use tss_esapi::structures::CapabilityData;
    // TPM2_HR_LOADED_SESSION (0x02000000) and TPM2_HR_TRANSIENT (0x80000000).
    for first in [0x0200_0000u32, 0x8000_0000] {
        let listed = state
            .context
            .execute_without_session(|c| c.get_capability(CapabilityType::Handles, first, 64));
        let Ok((CapabilityData::Handles(list), _)) = listed else {
            continue;
        };
        for handle in list.into_inner() {
            if let Ok(object) = state.context.tr_from_tpm_public(handle) {
                let _ = state.context.flush_context(object);
            }
        }
    }
}

fn connect(tcti: &str) -> Result<Context, CustodyError> {
    let unavailable = |reason: String| CustodyError::TpmUnavailable {
        tcti: tcti.to_string(),
        reason,
    };
    let conf = TctiNameConf::from_str(tcti).map_err(|e| unavailable(e.to_string()))?;
    Context::new(conf).map_err(|e| unavailable(e.to_string()))
}

/// The raw TSS2_RC of an error. tss-esapi 7.7 keeps it private but prints it in the response
/// code's `Display` ("Response code value: 0x..."); the layer (TCTI, ESYS, TPM) is only in there.
fn raw_rc(e: &tss_esapi::Error) -> Option<u32> {
    let text = match e {
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatZero(rc)) => rc.to_string(),
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatOne(rc)) => rc.to_string(),
        _ => return None,
    };
    let hex = text.rsplit("0x").next()?;
    u32::from_str_radix(hex.trim(), 16).ok()
}

/// TSS2 layers whose codes are the TPM's own answers (tss2_common.h): the TPM itself (0) and the
/// resource manager passing TPM codes through (11, 12).
const TPM_LAYERS: [u32; 3] = [0, 11, 12];

/// True when the error did not come from the TPM but from the software stack between us and it
/// (TCTI, SAPI, ESAPI, marshalling): the device or socket went away, a response was malformed or
/// failed its HMAC, or ESYS is left in an error state (after which it answers BAD_SEQUENCE to
/// everything). In every such case the context cannot be trusted: reconnect.
fn connection_lost(e: &tss_esapi::Error) -> bool {
    raw_rc(e).is_some_and(|rc| !TPM_LAYERS.contains(&((rc >> 16) & 0xff)))
}

/// True when the TPM no longer knows our session (TPM_RC_REFERENCE_S0..S6), e.g. after a reboot
/// under us. Authorization failures are deliberately not included: sending a command again with a
/// wrong authValue would only count twice towards dictionary-attack lockout.
fn session_is_stale(e: &tss_esapi::Error) -> bool {
    use Tss2ResponseCodeKind as K;
    matches!(
        e,
        tss_esapi::Error::Tss2Error(rc) if matches!(
            rc.kind(),
            Some(K::ReferenceS0 | K::ReferenceS1 | K::ReferenceS2 | K::ReferenceS3 | K::ReferenceS4 | K::ReferenceS5 | K::ReferenceS6)
        )
    )
}

fn classify(op: &'static str, e: tss_esapi::Error, attempts: u32) -> CustodyError {
    if is_transient(&e) {
        CustodyError::TpmBusy {
            op,
            attempts,
            reason: e.to_string(),
        }
    } else {
        CustodyError::tpm(op, e)
    }
}

/// True for the answers that mean "not now, send it again": TPM_RC_RETRY, TPM_RC_YIELDED,
/// TPM_RC_TESTING.
pub(crate) fn is_transient(e: &tss_esapi::Error) -> bool {
    match e {
        tss_esapi::Error::Tss2Error(rc) => matches!(
            rc.kind(),
            Some(
                Tss2ResponseCodeKind::Retry
                    | Tss2ResponseCodeKind::Yielded
                    | Tss2ResponseCodeKind::Testing
            )
        ),
        tss_esapi::Error::WrapperError(_) => false,
    }
}

/// Runs one TPM command, sending it again (after a growing pause) while the TPM answers with a
/// transient code, at most [`MAX_ATTEMPTS`] times. Hands back the TPM's own error and the number
/// of attempts, so callers can tell particular response codes apart.
pub(crate) fn retry_raw<T>(
    op: &'static str,
    mut command: impl FnMut() -> tss_esapi::Result<T>,
) -> Result<T, (tss_esapi::Error, u32)> {
    let mut pause = FIRST_PAUSE;
    let mut attempt = 1;
    loop {
        match command() {
            Ok(v) => return Ok(v),
            Err(e) if is_transient(&e) && attempt < MAX_ATTEMPTS => {
                tracing::debug!(op, attempt, error = %e, "TPM busy; sending the command again");
                std::thread::sleep(pause);
                pause = pause.saturating_mul(2);
                attempt += 1;
            }
            Err(e) => return Err((e, attempt)),
        }
    }
}
