//! The replay store: single use of writs (`jti`) and proofs (`jkt`, `jti`), in SQLite (WAL,
//! `synchronous=FULL`), shared by every gateway process of one host. Insert-if-absent of all of
//! a request's keys is one `BEGIN IMMEDIATE` transaction: both or neither, across processes.
//! Entries outlive the writ's expiry plus skew and are then purged. If the store cannot be
//! written, the verification refuses (`replay_store`).
//!
//! Not built yet: group commit across concurrent verifications (each consume is one fsync), and
//! the PostgreSQL store for gateways of one audience on several hosts.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, params};
use writ_attestation::writ::Refusal;
use writ_attestation::writ::verify::{ReplayKey, ReplayStore};

/// Consumes between purges of expired entries.
const PURGE_EVERY: u64 = 1024;

/// A replay store in one SQLite file.
#[derive(Debug)]
pub struct SqliteReplay {
    conn: Mutex<Connection>,
    consumed: AtomicU64,
}

fn fail(e: impl std::fmt::Display) -> Refusal {
    Refusal::new(
        "replay_store",
        format!("the replay store cannot record: {e}"),
    )
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl SqliteReplay {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, Refusal> {
        let conn = Connection::open(path).map_err(fail)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(fail)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(fail)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(fail(format!("journal mode {mode}, WAL required")));
        }
        conn.execute_batch(
            "PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS replay (
                 kind TEXT NOT NULL, a TEXT NOT NULL, b TEXT NOT NULL, keep_until INTEGER NOT NULL,
                 PRIMARY KEY (kind, a, b)) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS replay_expiry ON replay (keep_until);",
        )
        .map_err(fail)?;
        Ok(SqliteReplay {
            conn: Mutex::new(conn),
            consumed: AtomicU64::new(0),
        })
    }

    /// Deletes entries kept until before `now`; returns how many.
    pub fn purge(&self, now: i64) -> Result<usize, Refusal> {
        let conn = self.conn.lock().map_err(|_| fail("lock poisoned"))?;
        conn.execute("DELETE FROM replay WHERE keep_until < $1", params![now])
            .map_err(fail)
    }
}

fn row(k: &ReplayKey) -> (&'static str, &str, &str) {
    match k {
        ReplayKey::Writ { jti } => ("writ", jti.as_str(), ""),
        ReplayKey::Proof { jkt, jti } => ("proof", jkt.as_str(), jti.as_str()),
    }
}

impl ReplayStore for SqliteReplay {
    fn consume(&self, keys: &[ReplayKey], keep_until: i64) -> Result<bool, Refusal> {
        if self
            .consumed
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PURGE_EVERY)
        {
            self.purge(now())?;
        }
        let mut conn = self.conn.lock().map_err(|_| fail("lock poisoned"))?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(fail)?;
        let mut fresh = true;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO replay (kind, a, b, keep_until) VALUES ($1, $2, $3, $4)
                     ON CONFLICT DO NOTHING",
                )
                .map_err(fail)?;
            for k in keys {
                let (kind, a, b) = row(k);
                if st.execute(params![kind, a, b, keep_until]).map_err(fail)? == 0 {
                    fresh = false;
                    break;
                }
            }
        }
        if fresh {
            tx.commit().map_err(fail)?;
        } else {
            tx.rollback().map_err(fail)?;
        }
        Ok(fresh)
    }
}
