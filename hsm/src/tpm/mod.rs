//! TPM access through tss-esapi 7.7: one serialised context per TPM, bounded retries, custody keys
//! and the attester's operations.

pub mod attester;
mod key;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::Context;

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
    context: Mutex<Context>,
}

impl std::fmt::Debug for TpmDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmDevice").field("tcti", &self.tcti).finish_non_exhaustive()
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
        let unavailable =
            |reason: String| CustodyError::TpmUnavailable { tcti: tcti.to_string(), reason };
        let mut map = devices().lock().map_err(|_| unavailable("device registry poisoned".into()))?;
        if let Some(dev) = map.get(tcti).and_then(Weak::upgrade) {
            return Ok(dev);
        }
        let conf = TctiNameConf::from_str(tcti).map_err(|e| unavailable(e.to_string()))?;
        let context = Context::new(conf).map_err(|e| unavailable(e.to_string()))?;
        let dev = Arc::new(TpmDevice { tcti: tcti.to_string(), context: Mutex::new(context) });
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(tcti.to_string(), Arc::downgrade(&dev));
        Ok(dev)
    }

    /// The TCTI this device was opened with.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// Exclusive access to the context for one operation.
    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, Context>, CustodyError> {
        self.context.lock().map_err(|_| CustodyError::Tpm {
            op: "lock",
            reason: "a previous TPM operation panicked; context poisoned".into(),
        })
    }
}

/// True for the answers that mean "not now, send it again": TPM_RC_RETRY, TPM_RC_YIELDED,
/// TPM_RC_TESTING.
pub(crate) fn is_transient(e: &tss_esapi::Error) -> bool {
    match e {
        tss_esapi::Error::Tss2Error(rc) => matches!(
            rc.kind(),
            Some(Tss2ResponseCodeKind::Retry | Tss2ResponseCodeKind::Yielded | Tss2ResponseCodeKind::Testing)
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
    retry_raw(op, command).map_err(|(e, attempts)| {
        if is_transient(&e) {
            CustodyError::TpmBusy { op, attempts, reason: e.to_string() }
        } else {
            CustodyError::tpm(op, e)
        }
    })
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
