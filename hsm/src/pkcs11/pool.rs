//! A pool of logged-in sessions so that concurrent signers do not queue behind one session.
//!
//! `cryptoki::Session` is `Send` but not `Sync`: a session may be used by one thread at a time. Each
//! signature checks a session out, signs, and checks it back in; the pool's lock is held only for the
//! pop and the push, never across a device call. When the token reports a stale session
//! (`CKR_SESSION_HANDLE_INVALID`, `CKR_SESSION_CLOSED`, `CKR_USER_NOT_LOGGED_IN`: the token was
//! reset, the module re-initialised, or someone logged the application out), every idle session is
//! discarded, the key (by label and the id it had when first opened) is looked up again in a fresh
//! logged-in session and checked to be the same key with the same safe attributes, and the
//! signature is retried once. A second failure is returned to the caller.
//!
//! Any other failure may mean the device went away (a token removed, an HSM client restarted, a
//! token's storage gone and back): the failure is returned (nothing is signed), and the pool then
//! re-initialises the PKCS#11 module (`C_Finalize`, `C_Initialize`: at most once per
//! [`super::REINIT_EVERY`] per module, whichever key notices), finds its token again by label, and
//! drops its sessions, so that a later signature works once the device is back, without a
//! restart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use crate::CustodyError;

/// Idle sessions kept for reuse; more concurrent signers than this open extra sessions, which are
/// closed when they come back.
const MAX_IDLE: usize = 16;

/// Counters of a pool's life, for diagnostics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Sessions opened since the key was opened (including the first).
    pub sessions_opened: u64,
    /// Times a stale session was detected and the pool rebuilt.
    pub stale_recoveries: u64,
    /// Times a failure made the pool look for its device again (module re-initialised, token
    /// found again).
    pub device_recoveries: u64,
}

pub(super) struct SessionPool {
    module: Pkcs11,
    module_path: std::path::PathBuf,
    pin: AuthPin,
    token: String,
    login_key: String,
    expected: super::Expected,
    state: Mutex<State>,
    sessions_opened: AtomicU64,
    stale_recoveries: AtomicU64,
    device_recoveries: AtomicU64,
}

struct State {
    idle: Vec<Session>,
    key: ObjectHandle,
    /// The token's slot (found again by label after a re-initialisation).
    slot: Slot,
    /// Bumped whenever the pool is rebuilt; sessions checked out before that are not taken back.
    generation: u64,
}

impl std::fmt::Debug for SessionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The PIN is deliberately absent.
        f.debug_struct("SessionPool")
            .field("token", &self.token)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn is_stale(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid,
            _
        )
    )
}

impl SessionPool {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        module: Pkcs11,
        module_path: std::path::PathBuf,
        slot: Slot,
        pin: AuthPin,
        token: String,
        login_key: String,
        key: ObjectHandle,
        expected: super::Expected,
    ) -> Self {
        SessionPool {
            module,
            module_path,
            pin,
            token,
            login_key,
            expected,
            state: Mutex::new(State {
                idle: Vec::new(),
                key,
                slot,
                generation: 0,
            }),
            sessions_opened: AtomicU64::new(1),
            stale_recoveries: AtomicU64::new(0),
            device_recoveries: AtomicU64::new(0),
        }
    }

    pub(super) fn stats(&self) -> PoolStats {
        PoolStats {
            sessions_opened: self.sessions_opened.load(Ordering::Relaxed),
            stale_recoveries: self.stale_recoveries.load(Ordering::Relaxed),
            device_recoveries: self.device_recoveries.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, CustodyError> {
        self.state.lock().map_err(|_| CustodyError::Pkcs11 {
            op: "session pool",
            reason: "pool lock poisoned".into(),
        })
    }

    pub(super) fn generation(&self) -> u64 {
        self.lock().map(|s| s.generation).unwrap_or(u64::MAX)
    }

    /// Signs a 32-byte digest with CKM_ECDSA; returns the raw r||s from the token. After a
    /// failure, looks for the device again (see the module's documentation).
    pub(super) fn sign(&self, digest: &[u8; 32]) -> Result<Vec<u8>, CustodyError> {
        let r = self.sign_once(digest);
        if r.is_err() {
            self.recover_device();
        }
        r
    }

    /// Re-initialises the module (rate-bounded, shared by every key of the module), finds the
    /// token again and drops this pool's sessions.
    fn recover_device(&self) {
        match super::reinitialize_module(&self.module_path) {
            Ok(true) => tracing::warn!(
                token = %self.token,
                "PKCS#11 failure: module re-initialised to find the device again"
            ),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(token = %self.token, error = %e, "PKCS#11 module re-initialisation failed")
            }
        }
        // Whoever re-initialised, the token's slot may have changed and every session is gone.
        if let Ok(slot) = super::find_token(&self.module, &self.token)
            && let Ok(mut state) = self.lock()
        {
            state.slot = slot;
            state.idle.clear();
            state.generation = state.generation.wrapping_add(1);
            self.device_recoveries.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn sign_once(&self, digest: &[u8; 32]) -> Result<Vec<u8>, CustodyError> {
        let (session, key, generation) = self.check_out()?;
        match session.sign(&Mechanism::Ecdsa, key, digest) {
            Ok(sig) => {
                self.check_in(session, generation);
                Ok(sig)
            }
            Err(e) if is_stale(&e) => {
                tracing::warn!(token = %self.token, error = %e, "PKCS#11 session stale; reopening and retrying once");
                drop(session);
                self.rebuild(generation)?;
                let (session, key, generation) = self.check_out()?;
                let sig = session
                    .sign(&Mechanism::Ecdsa, key, digest)
                    .map_err(|e| CustodyError::pkcs11("C_Sign (after reopening the session)", e))?;
                self.check_in(session, generation);
                Ok(sig)
            }
            // A session whose operation failed may be left mid-operation: do not reuse it.
            Err(e) => Err(CustodyError::pkcs11("C_Sign", e)),
        }
    }

    fn check_out(&self) -> Result<(Session, ObjectHandle, u64), CustodyError> {
        let (idle, key, slot, generation) = {
            let mut state = self.lock()?;
            (state.idle.pop(), state.key, state.slot, state.generation)
        };
        match idle {
            Some(s) => Ok((s, key, generation)),
            None => Ok((self.open(slot)?, key, generation)),
        }
    }

    pub(super) fn check_in(&self, session: Session, generation: u64) {
        if let Ok(mut state) = self.lock()
            && state.generation == generation
            && state.idle.len() < MAX_IDLE
        {
            state.idle.push(session);
        }
    }

    fn open(&self, slot: Slot) -> Result<Session, CustodyError> {
        let session = super::open_session(
            &self.module,
            slot,
            &self.pin,
            &self.token,
            &self.login_key,
            false,
        )?;
        self.sessions_opened.fetch_add(1, Ordering::Relaxed);
        Ok(session)
    }

    /// Drops every idle session and finds the key again in a fresh one. Only the first signer to
    /// notice a given generation's staleness rebuilds; later ones just use the new generation.
    fn rebuild(&self, stale_generation: u64) -> Result<(), CustodyError> {
        let slot = {
            let state = self.lock()?;
            if state.generation != stale_generation {
                return Ok(());
            }
            state.slot
        };
        let session = self.open(slot)?;
        let key = super::find_one(&session, &self.expected.private_template(), &self.token)?;
        // The same label and id, the same safe attributes, the same public key, and a probe
        // signature that verifies under it: else refuse.
        self.expected.check(&session, key)?;
        let mut state = self.lock()?;
        if state.generation == stale_generation {
            state.idle.clear();
            state.key = key;
            state.generation = state.generation.wrapping_add(1);
            state.idle.push(session);
            self.stale_recoveries.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}
