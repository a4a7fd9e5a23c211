//! TPM access through tss-esapi 7.7: one serialised context per TPM, bounded retries, custody keys
//! and the attester's operations.

pub mod attester;
mod key;

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use tss_esapi::Context;
use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::handles::SessionHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::SymmetricDefinition;
use tss_esapi::tcti_ldr::TctiNameConf;

use crate::CustodyError;

pub use key::TpmKey;

/// How many times a command answered with TPM_RC_RETRY, TPM_RC_YIELDED or TPM_RC_TESTING is sent
/// again by us. (tpm2-tss's ESYS already resubmits a few times on its own; this bound sits on top
/// of it, with a growing pause, so a TPM in a long self-test gets about a second.)
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
/// With an empty authValue, commands use a password session: an unsalted HMAC session would be
/// keyed by nothing an observer of the TPM bus lacks, so it would protect nothing, and on swtpm it
/// costs about 1.7 ms a command against 0.3 ms. With an authValue, an HMAC session (parameter
/// encryption on) keeps the value off the bus and binds the command's parameters to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ObjectAuth {
    Empty,
    Set,
}

/// The ESAPI context and the HMAC session that signing commands reuse.
///
/// Starting a session costs two extra round trips (StartAuthSession, FlushContext), which is most
/// of the time of a TPM2_Sign on swtpm; one long-lived session (continueSession set) is started on
/// first use and replaced if the TPM forgets it (a reboot, a resource manager eviction).
pub(crate) struct DeviceState {
    context: Context,
    session: Option<AuthSession>,
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
    /// Runs one command under the shared HMAC session (parameter encryption on), with the bounded
    /// transient retry. If the command fails otherwise, the session may be the cause (the TPM was
    /// restarted under us): it is discarded and the command sent once more under a fresh one. TPM
    /// commands are atomic, so a failed command had no effect and sending it again is safe.
    pub(crate) fn with_session<T>(
        &mut self,
        op: &'static str,
        auth: ObjectAuth,
        mut command: impl FnMut(&mut Context) -> tss_esapi::Result<T>,
    ) -> Result<T, CustodyError> {
        if auth == ObjectAuth::Empty {
            return retry(op, || {
                self.context
                    .execute_with_session(Some(AuthSession::Password), &mut command)
            });
        }
        let session = self.session()?;
        match retry_raw(op, || {
            self.context
                .execute_with_session(Some(session), &mut command)
        }) {
            Ok(v) => Ok(v),
            Err((e, _)) if session_is_stale(&e) => {
                tracing::debug!(op, error = %e, "TPM session gone; starting a new one");
                self.discard_session();
                let session = self.session()?;
                retry(op, || {
                    self.context
                        .execute_with_session(Some(session), &mut command)
                })
            }
            Err((e, attempts)) => Err(classify(op, e, attempts)),
        }
    }

    fn session(&mut self) -> Result<AuthSession, CustodyError> {
        if let Some(s) = self.session {
            return Ok(s);
        }
        let session = retry("StartAuthSession", || {
            self.context.start_auth_session(
                None,
                None,
                None,
                SessionType::Hmac,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
        })?
        .ok_or_else(|| CustodyError::Tpm {
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
            let _ = self
                .context
                .flush_context(SessionHandle::from(session).into());
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

impl std::fmt::Debug for TpmDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmDevice")
            .field("tcti", &self.tcti)
            .finish_non_exhaustive()
    }
}

fn devices() -> &'static Mutex<HashMap<String, Weak<TpmDevice>>> {
    static DEVICES: OnceLock<Mutex<HashMap<String, Weak<TpmDevice>>>> = OnceLock::new();
    DEVICES.get_or_init(|| Mutex::new(HashMap::new()))
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
        let mut map = devices()
            .lock()
            .map_err(|_| unavailable("device registry poisoned".into()))?;
        if let Some(dev) = map.get(tcti).and_then(Weak::upgrade) {
            return Ok(dev);
        }
        let conf = TctiNameConf::from_str(tcti).map_err(|e| unavailable(e.to_string()))?;
        let context = Context::new(conf).map_err(|e| unavailable(e.to_string()))?;
        let state = DeviceState {
            context,
            session: None,
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

    /// Exclusive access to the context for one operation.
    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, DeviceState>, CustodyError> {
        self.state.lock().map_err(|_| CustodyError::Tpm {
            op: "lock",
            reason: "a previous TPM operation panicked; context poisoned".into(),
        })
    }
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
/// transient code, at most [`MAX_ATTEMPTS`] times.
pub(crate) fn retry<T>(
    op: &'static str,
    command: impl FnMut() -> tss_esapi::Result<T>,
) -> Result<T, CustodyError> {
    retry_raw(op, command).map_err(|(e, attempts)| classify(op, e, attempts))
}

/// As [`retry`], but hands back the TPM's own error (and the attempts made) so that callers can
/// tell particular response codes apart.
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
