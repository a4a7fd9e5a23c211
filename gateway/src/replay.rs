//! The replay store: single use of writs (`jti`) and proofs (`jkt`, `jti`), in SQLite (WAL,
//! `synchronous=FULL`), shared by every gateway process of one host.
//!
//! Group commit: one writer thread per process owns the connection. Concurrent consumes queue
//! up while it is committing, and the next transaction takes all of them (up to
//! [`MAX_BATCH`]); inside it, which holds the database's write lock, each request's keys are
//! looked up and inserted only if none is present (both or neither), and one commit (one
//! fsync) answers them all. Nobody is answered before that commit: an answer of "fresh" means
//! the keys are durable. A failed write aborts the batch and refuses every request in it.
//! Across processes, each transaction is `BEGIN IMMEDIATE`, so two gateways racing on one writ
//! get exactly one success. Callers on an async runtime await the same writer
//! ([`AsyncReplayStore`]) instead of blocking a worker thread.
//!
//! Entries outlive the writ's expiry plus skew and are then purged. If the store cannot be
//! written, the verification refuses (`replay_store`).
//!
//! The store is also the gateway's spool: decisions and outcomes, one JSON entry each, in the
//! table `spool`. An allow is recorded in the transaction that consumes its writ, so the writ is
//! spent if and only if its decision is durable, with one fsync for both; outcomes are recorded
//! through the same writer. A spool holding [`MAX_SPOOL`] entries (or the bound given at open)
//! refuses (`spool_full`), and its request consumes nothing.
//!
//! The store also remembers, per trust domain, the highest trust bundle sequence seen and that
//! bundle's digest: a lower sequence, or another bundle under the same sequence, is refused
//! (`bundle_rollback`).
//!
//! Not built yet: the PostgreSQL store for gateways of one audience on several hosts.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

use rusqlite::{Connection, OptionalExtension, params};
use writ_attestation::log::audit::check_against_seen;
use writ_attestation::log::merkle::Hash;
use writ_attestation::log::note::Checkpoint;
use writ_attestation::writ::Refusal;
use writ_attestation::writ::verify::{AsyncReplayStore, ReplayKey, ReplayStore};

/// Requests committed together at most.
pub const MAX_BATCH: usize = 256;

/// The default bound of the spool, in entries.
pub const MAX_SPOOL: u64 = 1_000_000;

/// Transactions between purges of expired entries.
const PURGE_EVERY: u64 = 256;

/// Where a consume's answer goes: a blocked thread, or a task awaiting it.
enum Reply {
    Thread(SyncSender<Result<bool, Refusal>>),
    Task(tokio::sync::oneshot::Sender<Result<bool, Refusal>>),
}

impl Reply {
    fn send(self, v: Result<bool, Refusal>) {
        // A caller that gave up waiting is gone; nothing to tell it.
        match self {
            Reply::Thread(r) => {
                let _ = r.send(v);
            }
            Reply::Task(r) => {
                let _ = r.send(v);
            }
        }
    }
}

enum Job {
    Consume {
        keys: Vec<ReplayKey>,
        keep_until: i64,
        /// The decision to spool with the keys, if any.
        record: Option<String>,
        reply: Reply,
    },
    Record {
        entry: String,
        reply: Reply,
    },
    Purge {
        now: i64,
        reply: SyncSender<Result<usize, Refusal>>,
    },
    Bundle {
        trust_domain: String,
        sequence: u64,
        digest: String,
        reply: SyncSender<Result<(), Refusal>>,
    },
    Checkpoint {
        checkpoint: Checkpoint,
        consistency: Option<(u64, Vec<Hash>)>,
        reply: Reply,
    },
    Acknowledge {
        upto: i64,
        reply: Reply,
    },
}

/// A replay store in one SQLite file.
pub struct SqliteReplay {
    jobs: Option<Sender<Job>>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SqliteReplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteReplay")
            .field("running", &self.jobs.is_some())
            .finish()
    }
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
    /// Opens (creating if needed) the store at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self, Refusal> {
        Self::open_bounded(path, MAX_SPOOL)
    }

    /// [`SqliteReplay::open`] with a spool of at most `max_spool` entries.
    pub fn open_bounded(path: &Path, max_spool: u64) -> Result<Self, Refusal> {
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
             CREATE INDEX IF NOT EXISTS replay_expiry ON replay (keep_until);
             CREATE TABLE IF NOT EXISTS bundle_seen (
                 trust_domain TEXT PRIMARY KEY, sequence INTEGER NOT NULL, digest TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS checkpoint_seen (
                 origin TEXT PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS spool (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT, entry TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS spool_identity (
                 one INTEGER PRIMARY KEY CHECK (one = 0), id TEXT NOT NULL);",
        )
        .map_err(fail)?;
        // The spool's identity: random, made once with the spool (a spool made again numbers
        // its entries from 1 again, under another identity).
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(fail)?;
        conn.execute(
            "INSERT INTO spool_identity (one, id) VALUES (0, $1) ON CONFLICT DO NOTHING",
            params![hex::encode(id)],
        )
        .map_err(fail)?;
        let (jobs, rx) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("writ-replay".into())
            .spawn(move || writer(conn, rx, max_spool))
            .map_err(fail)?;
        Ok(SqliteReplay {
            jobs: Some(jobs),
            writer: Some(writer),
        })
    }

    fn submit(&self, job: Job) -> Result<(), Refusal> {
        self.jobs
            .as_ref()
            .ok_or_else(|| fail("closed"))?
            .send(job)
            .map_err(|_| fail("the writer thread stopped"))
    }

    fn ask<T>(
        &self,
        job: impl FnOnce(SyncSender<Result<T, Refusal>>) -> Job,
    ) -> Result<T, Refusal> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.submit(job(reply))?;
        answer
            .recv()
            .map_err(|_| fail("the writer thread stopped"))?
    }

    /// Deletes entries kept until more than [`PURGE_GRACE`] before `now`; returns how many.
    pub fn purge(&self, now: i64) -> Result<usize, Refusal> {
        self.ask(|reply| Job::Purge { now, reply })
    }

    /// Queues `job` (its answer to a blocked thread) and waits for the answer.
    fn ask_thread(&self, job: impl FnOnce(Reply) -> Job) -> Result<bool, Refusal> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.submit(job(Reply::Thread(reply)))?;
        answer
            .recv()
            .map_err(|_| fail("the writer thread stopped"))?
    }

    /// Queues `job` now (its answer to a task); the future waits for the answer.
    fn ask_task(
        &self,
        job: impl FnOnce(Reply) -> Job,
    ) -> impl Future<Output = Result<bool, Refusal>> + Send + 'static {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let submitted = self.submit(job(Reply::Task(reply)));
        async move {
            submitted?;
            answer
                .await
                .map_err(|_| fail("the writer thread stopped"))?
        }
    }

    /// Spools `entry` (an outcome), durably (outside the bound: at most one per decision).
    pub fn record(&self, entry: &serde_json::Value) -> Result<(), Refusal> {
        self.ask_thread(record_job(entry)).map(drop)
    }

    /// Drops the spool's entries up to `upto` (the appliance recorded them).
    pub fn acknowledge(&self, upto: i64) -> Result<(), Refusal> {
        self.ask_thread(|reply| Job::Acknowledge { upto, reply })
            .map(drop)
    }

    /// [`SqliteReplay::record`] for callers on an async runtime.
    pub async fn record_async(&self, entry: &serde_json::Value) -> Result<(), Refusal> {
        self.ask_task(record_job(entry)).await.map(drop)
    }

    /// A store for [`Checked::consume_async`](writ_attestation::writ::verify::Checked) that
    /// spools `entry` with the keys.
    pub fn recording<'a>(&'a self, entry: &serde_json::Value) -> Recording<'a> {
        Recording {
            store: self,
            entry: entry.to_string(),
        }
    }

    /// The spool's entries after `after` (sequence number, entry), oldest first, at most
    /// `limit`; read on a connection of its own.
    pub fn spool_entries(
        path: &Path,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, serde_json::Value)>, Refusal> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(fail)?;
        let mut q = conn
            .prepare("SELECT seq, entry FROM spool WHERE seq > $1 ORDER BY seq LIMIT $2")
            .map_err(fail)?;
        let rows = q
            .query_map(params![after, limit], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(fail)?;
        rows.map(|r| {
            let (seq, text) = r.map_err(fail)?;
            let v = serde_json::from_str(&text).map_err(fail)?;
            Ok((seq, v))
        })
        .collect()
    }

    /// Accepts a verified checkpoint of the decision log if it is consistent with the last one
    /// seen on this host (see [`check_against_seen`]; `consistency` is the proof its inclusion
    /// bundle carries) and remembers it if it is larger. Refusals: `inclusion_stale`,
    /// `inclusion_consistency`, `inclusion_fork`.
    pub fn observe_checkpoint(
        &self,
        checkpoint: &Checkpoint,
        consistency: Option<(u64, Vec<Hash>)>,
    ) -> Result<(), Refusal> {
        self.ask_thread(checkpoint_job(checkpoint, consistency))
            .map(drop)
    }

    /// [`SqliteReplay::observe_checkpoint`] for callers on an async runtime.
    pub async fn observe_checkpoint_async(
        &self,
        checkpoint: &Checkpoint,
        consistency: Option<(u64, Vec<Hash>)>,
    ) -> Result<(), Refusal> {
        self.ask_task(checkpoint_job(checkpoint, consistency))
            .await
            .map(drop)
    }

    /// The spool's identity (32 hex digits), read on a connection of its own.
    pub fn spool_identity(path: &Path) -> Result<String, Refusal> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(fail)?;
        conn.query_row("SELECT id FROM spool_identity WHERE one = 0", [], |r| {
            r.get(0)
        })
        .map_err(fail)
    }

    /// The last checkpoint seen of `origin` (size and root), read on a connection of its own.
    pub fn checkpoint_seen(path: &Path, origin: &str) -> Result<Option<(u64, Hash)>, Refusal> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(fail)?;
        let row: Option<(i64, Vec<u8>)> = conn
            .query_row(
                "SELECT size, root FROM checkpoint_seen WHERE origin = $1",
                params![origin],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(fail)?;
        row.map(|(size, root)| {
            Ok((
                u64::try_from(size).map_err(fail)?,
                Hash::try_from(root.as_slice()).map_err(fail)?,
            ))
        })
        .transpose()
    }

    /// Records that a trust bundle of `trust_domain` with `sequence` and `digest` is in use, or
    /// refuses it (`bundle_rollback`) if a higher sequence was seen, or another bundle (another
    /// digest) under the same sequence.
    pub fn observe_bundle(
        &self,
        trust_domain: &str,
        sequence: u64,
        digest: &str,
    ) -> Result<(), Refusal> {
        self.ask(|reply| Job::Bundle {
            trust_domain: trust_domain.to_string(),
            sequence,
            digest: digest.to_string(),
            reply,
        })
    }
}

impl Drop for SqliteReplay {
    fn drop(&mut self) {
        // Closing the queue ends the writer after the jobs already queued.
        drop(self.jobs.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// The job that consumes `keys` (and spools `record` with them).
fn consume_job(
    keys: &[ReplayKey],
    keep_until: i64,
    record: Option<String>,
) -> impl FnOnce(Reply) -> Job {
    let keys = keys.to_vec();
    move |reply| Job::Consume {
        keys,
        keep_until,
        record,
        reply,
    }
}

fn record_job(entry: &serde_json::Value) -> impl FnOnce(Reply) -> Job {
    let entry = entry.to_string();
    move |reply| Job::Record { entry, reply }
}

fn checkpoint_job(
    checkpoint: &Checkpoint,
    consistency: Option<(u64, Vec<Hash>)>,
) -> impl FnOnce(Reply) -> Job {
    let checkpoint = checkpoint.clone();
    move |reply| Job::Checkpoint {
        checkpoint,
        consistency,
        reply,
    }
}

impl ReplayStore for SqliteReplay {
    fn consume(&self, keys: &[ReplayKey], keep_until: i64) -> Result<bool, Refusal> {
        self.ask_thread(consume_job(keys, keep_until, None))
    }
}

/// The job is queued when `consume_async` is called, not when its future is first polled: a
/// future dropped unawaited may still consume its keys (which only ever refuses more).
impl AsyncReplayStore for SqliteReplay {
    fn consume_async<'a>(
        &'a self,
        keys: &'a [ReplayKey],
        keep_until: i64,
    ) -> Pin<Box<dyn Future<Output = Result<bool, Refusal>> + Send + 'a>> {
        Box::pin(self.ask_task(consume_job(keys, keep_until, None)))
    }
}

/// The replay store seen by [`Checked::consume_async`](writ_attestation::writ::verify::Checked)
/// when the decision is spooled with the keys ([`SqliteReplay::recording`]).
#[derive(Debug)]
pub struct Recording<'a> {
    store: &'a SqliteReplay,
    entry: String,
}

impl AsyncReplayStore for Recording<'_> {
    fn consume_async<'a>(
        &'a self,
        keys: &'a [ReplayKey],
        keep_until: i64,
    ) -> Pin<Box<dyn Future<Output = Result<bool, Refusal>> + Send + 'a>> {
        Box::pin(
            self.store
                .ask_task(consume_job(keys, keep_until, Some(self.entry.clone()))),
        )
    }
}

impl ReplayStore for Recording<'_> {
    fn consume(&self, keys: &[ReplayKey], keep_until: i64) -> Result<bool, Refusal> {
        self.store
            .ask_thread(consume_job(keys, keep_until, Some(self.entry.clone())))
    }
}

fn row(k: &ReplayKey) -> (&'static str, &str, &str) {
    match k {
        ReplayKey::Writ { jti } => ("writ", jti.as_str(), ""),
        ReplayKey::Proof { jkt, jti } => ("proof", jkt.as_str(), jti.as_str()),
    }
}

/// The writer thread: takes what is queued, commits it in one transaction, answers.
fn writer(mut conn: Connection, rx: Receiver<Job>, max_spool: u64) {
    let mut transactions: u64 = 0;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        if transactions.is_multiple_of(PURGE_EVERY) {
            // Best effort here: a failing purge shows up on the next transaction's writes.
            let _ = conn.execute(
                "DELETE FROM replay WHERE keep_until < $1",
                params![now().saturating_sub(PURGE_GRACE)],
            );
        }
        transactions = transactions.wrapping_add(1);
        commit(&mut conn, batch, max_spool);
    }
}

/// What one job produced, answered only after the commit.
enum Answer {
    Consume(Reply, Result<bool, Refusal>),
    Purge(SyncSender<Result<usize, Refusal>>, Result<usize, Refusal>),
    Bundle(SyncSender<Result<(), Refusal>>, Result<(), Refusal>),
}

impl Answer {
    /// The store error this answer carries, if any (refusals of the request itself, such as
    /// `bundle_rollback`, are not store errors).
    fn store_error(&self) -> Option<Refusal> {
        let e = match self {
            Answer::Consume(_, Err(e)) | Answer::Purge(_, Err(e)) | Answer::Bundle(_, Err(e)) => e,
            _ => return None,
        };
        (e.code == "replay_store").then(|| e.clone())
    }

    /// The answer to a job that a failed batch never ran.
    fn refused(job: Job, e: &Refusal) -> Answer {
        match job {
            Job::Consume { reply, .. }
            | Job::Record { reply, .. }
            | Job::Checkpoint { reply, .. }
            | Job::Acknowledge { reply, .. } => Answer::Consume(reply, Err(e.clone())),
            Job::Purge { reply, .. } => Answer::Purge(reply, Err(e.clone())),
            Job::Bundle { reply, .. } => Answer::Bundle(reply, Err(e.clone())),
        }
    }

    /// Sends the answer, or `err` in its place if the transaction did not commit.
    fn send(self, committed: Result<(), &Refusal>) {
        // A caller that gave up waiting is gone; nothing to tell it.
        match self {
            Answer::Consume(r, v) => r.send(committed.map_err(Clone::clone).and(v)),
            Answer::Purge(r, v) => {
                let _ = r.send(committed.map_err(Clone::clone).and(v));
            }
            Answer::Bundle(r, v) => {
                let _ = r.send(committed.map_err(Clone::clone).and(v));
            }
        }
    }
}

fn commit(conn: &mut Connection, batch: Vec<Job>, max_spool: u64) {
    // A transaction left open by a failure whose rollback failed too would make every later
    // BEGIN fail: end it first.
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let e = fail(e);
            for job in batch {
                Answer::refused(job, &e).send(Ok(()));
            }
            return;
        }
    };
    let mut answers = Vec::with_capacity(batch.len());
    // A failing write aborts the batch: nothing commits, every request is refused.
    let mut abort: Option<Refusal> = None;
    for job in batch {
        if let Some(e) = &abort {
            answers.push(Answer::refused(job, e));
            continue;
        }
        let answer = match job {
            Job::Consume {
                keys,
                keep_until,
                record,
                reply,
            } => Answer::Consume(
                reply,
                consume_one(&tx, &keys, keep_until, record.as_deref(), max_spool),
            ),
            // Outcomes are not bounded: there is at most one per decision, which was.
            Job::Record { entry, reply } => {
                Answer::Consume(reply, spool_one(&tx, &entry, u64::MAX).map(|()| true))
            }
            Job::Acknowledge { upto, reply } => Answer::Consume(
                reply,
                tx.execute("DELETE FROM spool WHERE seq <= $1", params![upto])
                    .map(|_| true)
                    .map_err(fail),
            ),
            Job::Checkpoint {
                checkpoint,
                consistency,
                reply,
            } => Answer::Consume(
                reply,
                checkpoint_one(&tx, &checkpoint, consistency.as_ref()).map(|()| true),
            ),
            Job::Purge { now, reply } => Answer::Purge(reply, purge_before(&tx, now)),
            Job::Bundle {
                trust_domain,
                sequence,
                digest,
                reply,
            } => Answer::Bundle(reply, bundle_one(&tx, &trust_domain, sequence, &digest)),
        };
        // A store error (not a refusal such as `bundle_rollback`) aborts; so does a
        // transaction that SQLite ended by itself on an error.
        if let Some(e) = answer.store_error() {
            abort = Some(e);
        } else if tx.is_autocommit() {
            abort = Some(fail("the transaction ended early"));
        }
        answers.push(answer);
    }
    let outcome = match abort {
        Some(e) => Err(e),
        None => tx.commit().map_err(fail),
    };
    for a in answers {
        a.send(outcome.as_ref().map(|_| ()));
    }
}

/// Entries are deleted only this long after their `keep_until`, so that callers with a larger
/// skew than the one that stored an entry, or a request that waited in the queue, still find
/// it (skews are bounded well below this by the verification).
pub const PURGE_GRACE: i64 = 3600;

fn purge_before(tx: &rusqlite::Transaction<'_>, now: i64) -> Result<usize, Refusal> {
    tx.execute(
        "DELETE FROM replay WHERE keep_until < $1",
        params![now.saturating_sub(PURGE_GRACE)],
    )
    .map_err(fail)
}

/// One request's keys, both or neither: inside the batch's transaction, which holds the
/// database's write lock (`BEGIN IMMEDIATE`), a key is looked up and, only if none is present,
/// all are inserted. An error aborts the whole batch (the caller rolls back and refuses all).
fn consume_one(
    tx: &rusqlite::Transaction<'_>,
    keys: &[ReplayKey],
    keep_until: i64,
    record: Option<&str>,
    max_spool: u64,
) -> Result<bool, Refusal> {
    // A request naming one key twice is a replay of itself: refused, nothing inserted.
    for (i, k) in keys.iter().enumerate() {
        if keys.iter().skip(i + 1).any(|o| o == k) {
            return Ok(false);
        }
    }
    let mut seen = tx
        .prepare_cached("SELECT 1 FROM replay WHERE kind = $1 AND a = $2 AND b = $3")
        .map_err(fail)?;
    for k in keys {
        let (kind, a, b) = row(k);
        if seen.exists(params![kind, a, b]).map_err(fail)? {
            return Ok(false);
        }
    }
    // Room for the decision before any key is written: a full spool consumes nothing.
    if record.is_some() {
        spool_room(tx, max_spool)?;
    }
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO replay (kind, a, b, keep_until) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .map_err(fail)?;
    for k in keys {
        let (kind, a, b) = row(k);
        // Looked up and deduplicated above, under the write lock: a row that is there anyway
        // means the store is not what it seems, and the batch aborts (nothing half-inserted).
        if insert
            .execute(params![kind, a, b, keep_until])
            .map_err(fail)?
            != 1
        {
            return Err(fail("an entry appeared inside the write lock"));
        }
    }
    if let Some(entry) = record {
        spool_one(tx, entry, max_spool)?;
    }
    Ok(true)
}

/// Refuses (`spool_full`) if the spool holds `max_spool` entries. Entries only ever leave from
/// the oldest, so the span of sequence numbers is the count (one index lookup each way).
fn spool_room(tx: &rusqlite::Transaction<'_>, max_spool: u64) -> Result<(), Refusal> {
    let held: i64 = tx
        // Two subqueries: SQLite answers a lone min() or max() from the index, but scans the
        // table for both in one.
        .prepare_cached(
            "SELECT coalesce((SELECT max(seq) FROM spool) - (SELECT min(seq) FROM spool) + 1, 0)",
        )
        .and_then(|mut q| q.query_row([], |r| r.get(0)))
        .map_err(fail)?;
    if u64::try_from(held).unwrap_or(u64::MAX) >= max_spool {
        return Err(Refusal::new(
            "spool_full",
            format!(
                "the spool holds {held} entries (bound {max_spool}): nothing was consumed or run"
            ),
        ));
    }
    Ok(())
}

/// Appends `entry` to the spool, or refuses (`spool_full`, nothing written) if it holds
/// `max_spool` entries.
fn spool_one(tx: &rusqlite::Transaction<'_>, entry: &str, max_spool: u64) -> Result<(), Refusal> {
    spool_room(tx, max_spool)?;
    tx.prepare_cached("INSERT INTO spool (entry) VALUES ($1)")
        .and_then(|mut q| q.execute(params![entry]))
        .map_err(fail)?;
    Ok(())
}

/// Checks `new` against the last checkpoint seen of its log, inside the write lock, and keeps it
/// if it is larger.
fn checkpoint_one(
    tx: &rusqlite::Transaction<'_>,
    new: &Checkpoint,
    consistency: Option<&(u64, Vec<Hash>)>,
) -> Result<(), Refusal> {
    let row: Option<(i64, Vec<u8>)> = tx
        .query_row(
            "SELECT size, root FROM checkpoint_seen WHERE origin = $1",
            params![new.origin],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(fail)?;
    let seen = row
        .map(|(size, root)| {
            Ok::<_, Refusal>(Checkpoint {
                origin: new.origin.clone(),
                size: u64::try_from(size).map_err(fail)?,
                root: Hash::try_from(root.as_slice()).map_err(fail)?,
                extensions: Vec::new(),
            })
        })
        .transpose()?;
    check_against_seen(seen.as_ref(), new, consistency).map_err(crate::inclusion::seen_refusal)?;
    if seen.as_ref().is_none_or(|s| new.size > s.size) {
        let size = i64::try_from(new.size).map_err(fail)?;
        tx.execute(
            "INSERT INTO checkpoint_seen (origin, size, root) VALUES ($1, $2, $3)
             ON CONFLICT (origin) DO UPDATE SET size = $2, root = $3",
            params![new.origin, size, new.root.as_slice()],
        )
        .map_err(fail)?;
    }
    Ok(())
}

fn bundle_one(
    tx: &rusqlite::Transaction<'_>,
    trust_domain: &str,
    sequence: u64,
    digest: &str,
) -> Result<(), Refusal> {
    let seq = i64::try_from(sequence).map_err(|_| {
        Refusal::new(
            "bundle_rollback",
            "spiffe_sequence is out of the range this store keeps",
        )
    })?;
    let seen: Option<(i64, String)> = tx
        .query_row(
            "SELECT sequence, digest FROM bundle_seen WHERE trust_domain = $1",
            params![trust_domain],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(fail)?;
    match seen {
        Some((last, _)) if seq < last => Err(Refusal::new(
            "bundle_rollback",
            format!("spiffe_sequence {seq} is below the {last} already seen"),
        )),
        Some((last, ref d)) if seq == last && d != digest => Err(Refusal::new(
            "bundle_rollback",
            format!("another trust bundle was already seen under spiffe_sequence {seq}"),
        )),
        Some((last, _)) if seq == last => Ok(()),
        _ => tx
            .execute(
                "INSERT INTO bundle_seen (trust_domain, sequence, digest) VALUES ($1, $2, $3)
                 ON CONFLICT (trust_domain) DO UPDATE SET sequence = $2, digest = $3",
                params![trust_domain, seq, digest],
            )
            .map(|_| ())
            .map_err(fail),
    }
}
