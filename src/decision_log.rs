//! The decision log: an append-only RFC 6962 Merkle tree of decision records in the appliance's
//! store, with C2SP checkpoints signed by the `checkpoint` key in custody.
//!
//! Durability: [`DecisionLog::append`] returns only after the transaction holding the record has
//! been committed durably (SQLite: WAL fsynced, `synchronous=FULL`; PostgreSQL: commit after WAL
//! flush). Appends from many threads are grouped by one writer thread into one transaction and
//! one fsync (group commit). A crash can lose only records whose callers were never answered; a
//! caller answered with an error refuses, and its record may still be in the log if the commit's
//! outcome was unknown (a connection lost during COMMIT): the log can over-report a refused
//! decision, never under-report an answered one.
//!
//! Sequencing: the writer thread is the only sequencer; indices are assigned in memory and stored
//! in the same transaction as the leaves (a second writer process is refused by a lock). After a
//! failed commit the writer reconnects and accepts the store only if it holds exactly the tree it
//! had committed, or that tree plus the failed batch (a commit whose outcome was unknown);
//! anything else (a store rolled back or replaced while the log ran) stops the log for good
//! (`log_corrupt`), so an answered index is never reused.
//!
//! Checkpoints: a checkpointer thread signs `origin / size / root` whenever the tree grew, every
//! `checkpoint_interval`, and on demand. The root is the writer's in-memory tree (rebuilt from
//! verified leaves at start, extended only by its own commits); before a checkpoint is stored its
//! consistency with the previous one is proven from the stored subtrees, so a damaged subtree
//! stops checkpoints rather than being signed over. The checkpoint is written to a mark file
//! outside the store, then stored, then published. If no checkpoint could be signed for longer
//! than `max_checkpoint_age`, appends are refused (`checkpoint_stale`): the appliance stops
//! issuing. An append that gets no answer within `append_timeout` is refused.
//!
//! Keys: checkpoints are signed by every checkpoint key whose time has come and that has not left
//! (docs/keys.md, rotation): one key, or two during a rotation (the old one until it leaves, the
//! new one from `signs_from`), so a relying party holding either key verifies them. The schedule
//! is read from the store (`key_schedule`, purpose `checkpoint`) when the log opens and given to
//! it again by the appliance when it changes ([`DecisionLog::set_keys`]).
//!
//! Start-up: every leaf is read back and re-hashed, indices must be contiguous, every stored
//! checkpoint's note must match its row and the tree rebuilt from the leaves (the latest one's
//! signature is verified under one of the log's keys and its origin), the stored subtree count and right edge must
//! match, and the tree must contain the last published checkpoint named by the mark. Anything
//! else is `log_corrupt` and the log does not open. Not verified at start: stored interior nodes
//! off the right edge (they feed proofs, which clients verify against signed roots, and the
//! consistency proof checked before each checkpoint). A rollback by someone who controls both
//! the store and the mark file is caught by auditors (`writ audit` remembers checkpoints), not by
//! the log itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use writ_attestation::crypto::default_provider;
use writ_attestation::log::merkle::{
    RootBuilder, SubtreeSource, consistency_proof_from, empty_root, inclusion_proof_from,
    leaf_hash, range_root, verify_consistency,
};
use writ_attestation::log::note::{Checkpoint, NoteVerifier, signed_note_by};
use writ_hsm::CustodyKey;

use crate::store::{
    Backend, Engine, Hash, LeafRow, NodeRow, Op, StoreError, StoredCheckpoint, Value, connect,
};

/// What the checkpoint key signs to show it answers (never a checkpoint: no note starts so).
const PROBE: &[u8] = b"writ custody probe (not a checkpoint)";

/// Largest record accepted (records hold digests, never evidence; a tile entry is at most 65,535
/// bytes).
pub const MAX_RECORD: usize = 65_535;
/// Jobs waiting for the writer before appends block (backpressure).
const QUEUE: usize = 65_536;
/// Most record bytes in one commit.
const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;
/// Most reader connections open at once (anonymous readers cannot exhaust the database).
const MAX_READERS: usize = 16;

/// How the log runs.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// The log's origin, the first line of every checkpoint (e.g. `writ.example.com/log`).
    pub origin: String,
    /// How often the checkpointer signs when the tree grew.
    pub checkpoint_interval: Duration,
    /// How long appends go on without a fresh checkpoint before they are refused.
    pub max_checkpoint_age: Duration,
    /// Most records in one commit.
    pub max_batch: usize,
    /// How long an append waits for the store before it is refused (its record may still land:
    /// the log can over-report a refused decision, never under-report an answered one).
    pub append_timeout: Duration,
    /// A file outside the store holding the last published checkpoint, written (atomically,
    /// fsynced) before a checkpoint is published. At start the store must contain it: a store
    /// restored from a backup or an asynchronous replica behind it does not open. Default for
    /// SQLite: `<database>.published`; for PostgreSQL none unless set (put it on the appliance's
    /// own disk).
    pub published_mark: Option<std::path::PathBuf>,
    /// Opens a scheduled checkpoint key by its URI (a rotation's new key, when the log opens
    /// after a rotation); without it, a schedule naming a key other than the configured one does
    /// not open.
    pub key_opener: Option<KeyOpener>,
}

/// What opens a key: its URI in, the key or why not out.
pub type OpenKey = dyn Fn(&str) -> Result<Arc<dyn CustodyKey>, String> + Send + Sync;

/// Opens a custody key by URI (with the appliance's open options).
#[derive(Clone)]
pub struct KeyOpener(pub Arc<OpenKey>);

impl std::fmt::Debug for KeyOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyOpener")
    }
}

/// A checkpoint key and its place in the rotation schedule (docs/keys.md): published from
/// `published_at`, signing from `signs_from`, until `retires_at` (never, for the newest key).
#[derive(Clone)]
pub struct LogKey {
    /// The key in custody; `None` for a key that has left (never opened again).
    pub key: Option<Arc<dyn CustodyKey>>,
    /// Its DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
    /// When relying parties learn it (unix seconds).
    pub published_at: i64,
    /// When it starts signing.
    pub signs_from: i64,
    /// When it stops signing and leaves the trust bundle.
    pub retires_at: Option<i64>,
    /// For a rotation's new key: the DER ECDSA signature, by the key that signed when the
    /// rotation was recorded, over [`endorsement_message`] of this key. The log trusts a key of
    /// the schedule only through a chain of these from its configured key.
    pub endorsement: Option<Vec<u8>>,
}

pub use writ_attestation::log::note::endorsement_message;

impl std::fmt::Debug for LogKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogKey")
            .field("open", &self.key.is_some())
            .field("published_at", &self.published_at)
            .field("signs_from", &self.signs_from)
            .field("retires_at", &self.retires_at)
            .finish_non_exhaustive()
    }
}

impl LogKey {
    /// The only key, before any rotation.
    pub fn only(key: Arc<dyn CustodyKey>) -> Self {
        LogKey {
            spki: key.public_key().spki_der().to_vec(),
            key: Some(key),
            published_at: 0,
            signs_from: 0,
            retires_at: None,
            endorsement: None,
        }
    }

    fn published(&self, t: i64) -> bool {
        self.published_at <= t && self.retires_at.is_none_or(|r| t < r)
    }

    fn signs(&self, t: i64) -> bool {
        self.key.is_some() && self.signs_from <= t && self.published(t)
    }
}

/// A log key with its note verifier, and the trusted key that endorsed it (none for the
/// configured key).
#[derive(Clone)]
struct HeldKey {
    key: LogKey,
    verifier: NoteVerifier,
    endorsed_by: Option<NoteVerifier>,
}

/// A checkpoint key as `GET /v1/log/keys` lists it: what an auditor that trusts an earlier key
/// needs to follow a rotation (the endorsement by the key that signed when it was scheduled).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListedKey {
    /// `<origin>+<key id>+<base64>`.
    pub verifier_key: String,
    /// The key that endorsed it, in the same form (none for the configured key).
    pub endorsed_by: Option<String>,
    /// Base64 of the DER ECDSA endorsement over `endorsement_message(origin, spki)`.
    pub endorsement: Option<String>,
    /// When it was published, signs from, leaves (unix seconds).
    pub published_at: i64,
    /// When it signs from.
    pub signs_from: i64,
    /// When it leaves (none: the newest).
    pub retires_at: Option<i64>,
}

impl LogConfig {
    /// Defaults: a checkpoint every second, appends refused after 30 s without one, batches of
    /// up to 8192 records.
    pub fn new(origin: &str) -> Self {
        LogConfig {
            origin: origin.to_string(),
            checkpoint_interval: Duration::from_secs(1),
            max_checkpoint_age: Duration::from_secs(30),
            max_batch: 8192,
            append_timeout: Duration::from_secs(30),
            published_mark: None,
            key_opener: None,
        }
    }
}

enum Job {
    Append {
        records: Vec<Vec<u8>>,
        /// State changes committed with the records, or neither.
        effect: Vec<Op>,
        reply: SyncSender<Result<u64, StoreError>>,
    },
    Checkpoint {
        cp: StoredCheckpoint,
        reply: SyncSender<Result<(), StoreError>>,
    },
}

/// The tree's right edge, as the writer holds it.
type Tree = RootBuilder;

/// Appends a leaf hash; the perfect subtrees it completes (level >= 1) go to `nodes`.
fn push(tree: &mut Tree, leaf: Hash, nodes: &mut Vec<NodeRow>) {
    tree.push_with(leaf, |level, idx, hash| {
        nodes.push(NodeRow { level, idx, hash })
    });
}

/// Number of stored subtrees (level >= 1) a tree of `size` leaves has.
fn node_count(size: u64) -> u64 {
    // Every leaf i adds one node per trailing one bit of i: sum over i < size.
    let mut total = 0u64;
    let mut level = 1u32;
    while level < 64 && (1u64 << level) <= size {
        total += size >> level;
        level += 1;
    }
    total
}

/// Reads stored subtrees through one connection (level 0 is the leaf hash).
struct Source<'a>(&'a mut dyn Backend);

impl SubtreeSource for Source<'_> {
    type Error = StoreError;
    fn subtree(&mut self, level: u32, index: u64) -> Result<Hash, StoreError> {
        if level == 0 {
            return self
                .0
                .leaf(index)?
                .map(|(h, _)| h)
                .ok_or_else(|| StoreError::Corrupt(format!("leaf {index} missing")));
        }
        self.0
            .node(level, index)?
            .ok_or_else(|| StoreError::Corrupt(format!("subtree {level}/{index} missing")))
    }
}

/// Loads the tree's right edge from stored subtrees (after a failed commit).
fn load_tree(b: &mut dyn Backend) -> Result<Tree, StoreError> {
    let size = b.leaf_count()?;
    let top = b.max_leaf_index()?;
    if top.map_or(0, |t| t + 1) != size {
        return Err(StoreError::Corrupt(format!(
            "{size} leaves stored, the highest index is {top:?}: indices are not contiguous"
        )));
    }
    let mut frontier = Vec::new();
    let mut at = 0u64;
    for level in (0..64u32).rev() {
        if size & (1u64 << level) != 0 {
            frontier.push((level, Source(b).subtree(level, at >> level)?));
            at += 1u64 << level;
        }
    }
    Tree::from_frontier(size, frontier).map_err(|e| StoreError::Corrupt(e.to_string()))
}

struct Inner {
    engine: Engine,
    config: LogConfig,
    /// The configured checkpoint key's SPKI: the anchor of the schedule's chain of endorsements.
    anchor: Vec<u8>,
    /// The checkpoint keys, in schedule order (oldest first).
    keys: RwLock<Vec<HeldKey>>,
    jobs: Mutex<Option<SyncSender<Job>>>,
    head: RwLock<(u64, Hash)>,
    latest: RwLock<Option<StoredCheckpoint>>,
    healthy_at: Mutex<Instant>,
    readers: Mutex<Vec<Box<dyn Backend>>>,
    reader_slots: (Mutex<usize>, Condvar),
    sign_lock: Mutex<()>,
    wake: (Mutex<bool>, Condvar),
    stopping: AtomicBool,
    /// Set once the writer found the store moved under it: nothing is written until a restart.
    dead: AtomicBool,
    /// Checkpoint signatures the key failed to make.
    signing_failures: std::sync::atomic::AtomicU64,
    /// The checkpointer's last signature (checkpoint or probe): when, and whether it worked.
    last_signature: Mutex<(Instant, Result<(), String>)>,
    /// Whether the writer's last transaction (or reconnection) succeeded.
    writer_ok: AtomicBool,
}

impl Inner {
    /// The keys that sign at `t`, oldest first.
    fn signers(&self, t: i64) -> Vec<(Arc<dyn CustodyKey>, NoteVerifier)> {
        self.keys
            .read()
            .map(|k| {
                k.iter()
                    .filter(|h| h.key.signs(t))
                    .filter_map(|h| h.key.key.clone().map(|k| (k, h.verifier.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every key of the schedule: what this log stored may be signed by any of them.
    fn known(&self) -> Vec<NoteVerifier> {
        self.keys
            .read()
            .map(|k| k.iter().map(|h| h.verifier.clone()).collect())
            .unwrap_or_default()
    }

    /// Queues a job for the writer.
    fn send(&self, job: Job) -> Result<(), StoreError> {
        let tx = self
            .jobs
            .lock()
            .map_err(|_| StoreError::Stopped)?
            .clone()
            .ok_or(StoreError::Stopped)?;
        tx.send(job).map_err(|_| StoreError::Stopped)
    }
}

/// The decision log. Cheap to share: clone the `Arc` it sits in.
pub struct DecisionLog {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionLog")
            .field("engine", &self.inner.engine)
            .field("origin", &self.inner.config.origin)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl DecisionLog {
    /// Opens (creating and migrating if needed) the log in `engine`, verifies everything stored,
    /// starts the writer and the checkpointer, and signs a checkpoint of the current tree if it
    /// has none. `key` is the configured checkpoint key: before any rotation the one that signs
    /// (it must match what signed the stored checkpoints), after one a key of the rotation's
    /// history, whose schedule (read from the store) decides which keys sign.
    pub fn open(
        engine: Engine,
        mut config: LogConfig,
        key: Arc<dyn CustodyKey>,
    ) -> Result<Self, StoreError> {
        if config.checkpoint_interval.saturating_mul(2) > config.max_checkpoint_age {
            return Err(StoreError::Config(format!(
                "checkpoint interval {:?} must be at most half of the maximum checkpoint age {:?}",
                config.checkpoint_interval, config.max_checkpoint_age
            )));
        }
        if config.published_mark.is_none()
            && let Engine::Sqlite(path) = &engine
        {
            let mut p = path.clone().into_os_string();
            p.push(".published");
            config.published_mark = Some(p.into());
        }
        let mut writer = connect(&engine)?;
        writer.lock_writer()?;
        writer.migrate()?;
        let anchor = key.public_key().spki_der().to_vec();
        let keys = held_keys(
            &config.origin,
            &anchor,
            scheduled_keys(writer.as_mut(), &key, config.key_opener.as_ref())?,
        )?;
        let known: Vec<NoteVerifier> = keys.iter().map(|h| h.verifier.clone()).collect();
        let mut pages = connect(&engine)?;
        let (tree, latest) = verify_all(
            writer.as_mut(),
            pages.as_mut(),
            &config.origin,
            &known,
            config.published_mark.as_deref(),
        )?;
        drop(pages);
        let (tx, rx) = sync_channel(QUEUE);
        let inner = Arc::new(Inner {
            engine,
            config,
            anchor,
            keys: RwLock::new(keys),
            jobs: Mutex::new(Some(tx)),
            head: RwLock::new((tree.size(), tree.root())),
            latest: RwLock::new(latest),
            healthy_at: Mutex::new(Instant::now()),
            readers: Mutex::new(Vec::new()),
            reader_slots: (Mutex::new(0), Condvar::new()),
            sign_lock: Mutex::new(()),
            wake: (Mutex::new(false), Condvar::new()),
            stopping: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            signing_failures: std::sync::atomic::AtomicU64::new(0),
            last_signature: Mutex::new((Instant::now(), Ok(()))),
            writer_ok: AtomicBool::new(true),
        });
        let mut threads = Vec::new();
        let w = Arc::clone(&inner);
        threads.push(
            std::thread::Builder::new()
                .name("writ-log-writer".into())
                .spawn(move || writer_loop(&w, writer, tree, rx))
                .map_err(|e| StoreError::Unavailable(format!("writer thread: {e}")))?,
        );
        let log = DecisionLog {
            inner: Arc::clone(&inner),
            threads: Mutex::new(threads),
        };
        // A checkpoint of what is there before anything new is accepted.
        log.checkpoint_now()?;
        let c = Arc::clone(&inner);
        let handle = std::thread::Builder::new()
            .name("writ-log-checkpointer".into())
            .spawn(move || checkpointer_loop(&c))
            .map_err(|e| StoreError::Unavailable(format!("checkpointer thread: {e}")))?;
        if let Ok(mut t) = log.threads.lock() {
            t.push(handle);
        }
        Ok(log)
    }

    /// Whether the log can record decisions now: its writer has not stopped for good and a
    /// checkpoint was signed (or confirmed) within the bound.
    pub fn health(&self) -> Result<(), StoreError> {
        if self.inner.dead.load(Ordering::SeqCst) {
            return Err(StoreError::Corrupt(
                "the store moved under the log; restart after investigating".into(),
            ));
        }
        let writer_alive = self
            .threads
            .lock()
            .map(|t| t.first().is_some_and(|w| !w.is_finished()))
            .unwrap_or(false);
        if !writer_alive {
            return Err(StoreError::Stopped);
        }
        if !self.inner.writer_ok.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "the writer's last transaction failed".into(),
            ));
        }
        let stale = self
            .inner
            .healthy_at
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or(Duration::MAX);
        if stale > self.inner.config.max_checkpoint_age {
            return Err(StoreError::CheckpointStale(format!(
                "no checkpoint for {} s",
                stale.as_secs()
            )));
        }
        Ok(())
    }

    /// Whether the checkpoint key answered the checkpointer's last signature (a checkpoint, or a
    /// probe when the log is quiet), made within three intervals. Nothing is signed for the
    /// asking: readiness checks cannot be used to queue work on the custody device.
    pub fn custody(&self) -> Result<(), StoreError> {
        let (at, last) = self
            .inner
            .last_signature
            .lock()
            .map(|l| l.clone())
            .map_err(|_| StoreError::Stopped)?;
        if at.elapsed()
            > self.inner.config.checkpoint_interval.saturating_mul(3) + Duration::from_secs(1)
        {
            return Err(StoreError::Signing(
                "the checkpointer has not signed recently".into(),
            ));
        }
        last.map_err(StoreError::Signing)
    }

    /// Checkpoint signatures the key failed to make since the log opened.
    pub fn signing_failures(&self) -> u64 {
        self.inner.signing_failures.load(Ordering::Relaxed)
    }

    /// The checkpoint verifier key (`<origin>+<id>+<base64>`) auditors pin: the oldest key
    /// published now, which signs every checkpoint until it leaves.
    pub fn verifier_key(&self) -> String {
        self.verifier_keys().into_iter().next().unwrap_or_default()
    }

    /// Every checkpoint verifier key published now, oldest first (one, or during a rotation
    /// the old and the new one): a checkpoint is signed by at least one of them.
    pub fn verifier_keys(&self) -> Vec<String> {
        let t = now_secs();
        self.inner
            .keys
            .read()
            .map(|k| {
                k.iter()
                    .filter(|h| h.key.published(t))
                    .map(|h| h.verifier.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The keys that sign checkpoints now, oldest first.
    pub fn signing_keys(&self) -> Vec<Arc<dyn CustodyKey>> {
        self.inner
            .signers(now_secs())
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    /// The checkpoint keys this log trusts, oldest first, with their endorsements.
    pub fn listed_keys(&self) -> Vec<ListedKey> {
        use base64::Engine as _;
        self.inner
            .keys
            .read()
            .map(|k| {
                k.iter()
                    .map(|h| ListedKey {
                        verifier_key: h.verifier.to_string(),
                        endorsed_by: h.endorsed_by.as_ref().map(ToString::to_string),
                        endorsement: h
                            .endorsed_by
                            .as_ref()
                            .and(h.key.endorsement.as_ref())
                            .map(|e| base64::engine::general_purpose::STANDARD.encode(e)),
                        published_at: h.key.published_at,
                        signs_from: h.key.signs_from,
                        retires_at: h.key.retires_at,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The open checkpoint key of this SPKI, if the log holds it (signing, or waiting to).
    pub fn open_key(&self, spki: &[u8]) -> Option<Arc<dyn CustodyKey>> {
        self.inner.keys.read().ok().and_then(|k| {
            k.iter()
                .find(|h| h.key.spki == spki)
                .and_then(|h| h.key.key.clone())
        })
    }

    /// Every key of the checkpoint key's schedule (SPKI DER), whether it signs or has left.
    pub fn key_history(&self) -> Vec<Vec<u8>> {
        self.inner
            .keys
            .read()
            .map(|k| k.iter().map(|h| h.key.spki.clone()).collect())
            .unwrap_or_default()
    }

    /// Replaces the checkpoint keys' schedule (a rotation recorded, here or by another
    /// replica). Keys not endorsed through a chain from the configured key are left out; refused
    /// when no key would sign now, or a key whose time has come is not open (or not the key
    /// recorded); the next checkpoint is signed by every key whose time has come.
    pub fn set_keys(&self, keys: Vec<LogKey>) -> Result<(), StoreError> {
        let held = held_keys(&self.inner.config.origin, &self.inner.anchor, keys)?;
        let mut k = self.inner.keys.write().map_err(|_| StoreError::Stopped)?;
        *k = held;
        Ok(())
    }

    /// The origin.
    pub fn origin(&self) -> &str {
        &self.inner.config.origin
    }

    /// Appends one record; returns its index once it is durable.
    pub fn append(&self, record: &[u8]) -> Result<u64, StoreError> {
        self.append_many(vec![record.to_vec()])
    }

    /// Appends records (consecutive indices); returns the first index once all are durable.
    pub fn append_many(&self, records: Vec<Vec<u8>>) -> Result<u64, StoreError> {
        self.append_with(records, Vec::new())
    }

    /// Appends records together with a change of the appliance's state, in one transaction:
    /// the statements of `effect` run first, in order; if one that must affect a row affects
    /// none, nothing of this call is written and the answer is [`StoreError::Conflict`] (other
    /// callers' records in the same batch are unaffected). Returns the first index once the
    /// records and the change are durable.
    pub fn append_with(&self, records: Vec<Vec<u8>>, effect: Vec<Op>) -> Result<u64, StoreError> {
        if records.is_empty() {
            return Err(StoreError::Range("no records".into()));
        }
        self.submit(records, effect)
    }

    /// Changes the appliance's state without a record (what is not a decision: a nonce handed
    /// out), through the same writer and group commit as the records, so it is as durable as
    /// they are. Refused, like a record, when checkpoints are stale: state that leads to a
    /// decision is not made while decisions cannot be published.
    pub fn write_state(&self, effect: Vec<Op>) -> Result<(), StoreError> {
        if effect.is_empty() {
            return Err(StoreError::Range("no state change".into()));
        }
        self.submit(Vec::new(), effect).map(|_| ())
    }

    fn submit(&self, records: Vec<Vec<u8>>, effect: Vec<Op>) -> Result<u64, StoreError> {
        if let Some(r) = records
            .iter()
            .find(|r| r.len() > MAX_RECORD || r.is_empty())
        {
            return Err(StoreError::Range(format!(
                "a record of {} bytes (1 to {MAX_RECORD})",
                r.len()
            )));
        }
        let stale = self
            .inner
            .healthy_at
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or(Duration::MAX);
        if stale > self.inner.config.max_checkpoint_age {
            return Err(StoreError::CheckpointStale(format!(
                "no checkpoint could be signed for {} s (bound {} s): refusing to record decisions that cannot be published",
                stale.as_secs(),
                self.inner.config.max_checkpoint_age.as_secs()
            )));
        }
        let (reply, answer) = sync_channel(1);
        self.send(Job::Append {
            records,
            effect,
            reply,
        })?;
        match answer.recv_timeout(self.inner.config.append_timeout) {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                Err(StoreError::Unavailable(format!(
                    "the store did not answer within {} s (the record may still be written; the decision is refused)",
                    self.inner.config.append_timeout.as_secs()
                )))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(StoreError::Stopped),
        }
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        self.inner.send(job)
    }

    /// The durable tree size and root.
    pub fn head(&self) -> (u64, Hash) {
        self.inner
            .head
            .read()
            .map(|h| *h)
            .unwrap_or((0, empty_root()))
    }

    /// The latest published checkpoint.
    pub fn latest_checkpoint(&self) -> Option<StoredCheckpoint> {
        self.inner.latest.read().ok().and_then(|l| l.clone())
    }

    /// Signs and publishes a checkpoint of the current tree now (if the latest does not already
    /// cover it); returns the latest checkpoint.
    pub fn checkpoint_now(&self) -> Result<StoredCheckpoint, StoreError> {
        sign_checkpoint(&self.inner)
    }

    /// Every stored checkpoint, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError> {
        self.read(|b| b.checkpoints())
    }

    /// Runs a query of the appliance's state tables on a reader connection (`$1`, `$2`, ...
    /// parameters on both engines). Only reads belong here: every change of state goes through
    /// [`DecisionLog::append_with`], with its record. The SQL is a constant of the code.
    pub fn query(
        &self,
        sql: &'static str,
        params: &[Value],
    ) -> Result<Vec<Vec<Value>>, StoreError> {
        self.read(|b| b.query(sql, params))
    }

    /// The record at `index`.
    pub fn record(&self, index: u64) -> Result<Vec<u8>, StoreError> {
        let (size, _) = self.head();
        if index >= size {
            return Err(StoreError::Range(format!(
                "index {index} outside the log of {size}"
            )));
        }
        self.read(|b| {
            b.leaf(index)?
                .map(|(_, r)| r)
                .ok_or_else(|| StoreError::Corrupt(format!("leaf {index} missing")))
        })
    }

    /// The index of the first record with this leaf hash.
    pub fn index_of(&self, leaf_hash: &Hash) -> Result<Option<u64>, StoreError> {
        self.read(|b| b.index_of(leaf_hash))
    }

    /// The inclusion proof of `index` in the tree of `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        self.check_size(size)?;
        self.read(|b| inclusion_proof_from(&mut Source(b), index, size))
    }

    /// The consistency proof from `old` to `new` leaves.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, StoreError> {
        self.check_size(new)?;
        if old == new {
            return Ok(Vec::new());
        }
        self.read(|b| consistency_proof_from(&mut Source(b), old, new))
    }

    /// The root of the tree of `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, StoreError> {
        self.check_size(size)?;
        self.read(|b| range_root(&mut Source(b), 0, size))
    }

    /// Hashes of tree level `level` (0: leaf hashes) with indices `from..from + count`, all of
    /// which must exist in the durable tree (C2SP tlog-tiles data).
    pub fn level_hashes(&self, level: u32, from: u64, count: u64) -> Result<Vec<Hash>, StoreError> {
        let (size, _) = self.head();
        let available = if level >= 64 { 0 } else { size >> level };
        if from.checked_add(count).is_none_or(|end| end > available) {
            return Err(StoreError::Range(format!(
                "level {level} holds {available} hashes in a tree of {size}"
            )));
        }
        let out = self.read(|b| {
            if level == 0 {
                Ok(b.leaf_range(from, count)?
                    .into_iter()
                    .map(|(h, _)| h)
                    .collect())
            } else {
                b.node_range(level, from, count)
            }
        })?;
        if out.len() as u64 != count {
            return Err(StoreError::Corrupt(format!(
                "{} of {count} hashes of level {level} from {from} are stored",
                out.len()
            )));
        }
        Ok(out)
    }

    /// Records `from..from + count`, all of which must exist.
    pub fn records(&self, from: u64, count: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let (size, _) = self.head();
        if from.checked_add(count).is_none_or(|end| end > size) {
            return Err(StoreError::Range(format!(
                "records {from}..{} outside the log of {size}",
                from.saturating_add(count)
            )));
        }
        let out: Vec<Vec<u8>> = self
            .read(|b| b.leaf_range(from, count))?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        if out.len() as u64 != count {
            return Err(StoreError::Corrupt(format!(
                "{} of {count} records from {from} are stored",
                out.len()
            )));
        }
        Ok(out)
    }

    fn check_size(&self, size: u64) -> Result<(), StoreError> {
        let (n, _) = self.head();
        if size > n {
            return Err(StoreError::Range(format!(
                "tree size {size} is beyond the log's {n}"
            )));
        }
        Ok(())
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&mut dyn Backend) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A slot first: at most MAX_READERS connections, pooled or in use.
        let (lock, cv) = &self.inner.reader_slots;
        {
            let guard = lock.lock().map_err(|_| StoreError::Stopped)?;
            let (mut n, timeout) = cv
                .wait_timeout_while(guard, Duration::from_secs(5), |n| *n >= MAX_READERS)
                .map_err(|_| StoreError::Stopped)?;
            if timeout.timed_out() && *n >= MAX_READERS {
                return Err(StoreError::Unavailable(
                    "every reader connection is busy".into(),
                ));
            }
            *n += 1;
        }
        let release = || {
            if let Ok(mut n) = lock.lock() {
                *n = n.saturating_sub(1);
            }
            cv.notify_one();
        };
        let pooled = self.inner.readers.lock().ok().and_then(|mut p| p.pop());
        let mut conn = match pooled {
            Some(c) => c,
            None => match connect(&self.inner.engine).and_then(|mut c| {
                c.read_only()?;
                Ok(c)
            }) {
                Ok(c) => c,
                Err(e) => {
                    release();
                    return Err(e);
                }
            },
        };
        let out = f(conn.as_mut());
        // A connection that failed is dropped, not pooled.
        if out.is_ok()
            && let Ok(mut p) = self.inner.readers.lock()
        {
            p.push(conn);
        }
        release();
        out
    }

    /// Stops the writer (after it drains what was queued) and the checkpointer.
    pub fn close(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        if let Ok(mut j) = self.inner.jobs.lock() {
            j.take();
        }
        let (lock, cv) = &self.inner.wake;
        if let Ok(mut w) = lock.lock() {
            *w = true;
        }
        cv.notify_all();
        if let Ok(mut t) = self.threads.lock() {
            for h in t.drain(..) {
                let _ = h.join();
            }
        }
    }
}

impl Drop for DecisionLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// The checkpoint keys' schedule as stored (purpose `checkpoint` of `key_schedule`), its keys
/// that may still sign opened; before any rotation, the configured key alone. After one, the
/// configured key must be a key of the history (as the issuer and ear keys').
fn scheduled_keys(
    b: &mut dyn Backend,
    configured: &Arc<dyn CustodyKey>,
    opener: Option<&KeyOpener>,
) -> Result<Vec<LogKey>, StoreError> {
    let rows = b.query(
        "SELECT uri, spki, published_at, signs_from, retires_at, endorsement FROM key_schedule
         WHERE purpose = 'checkpoint' ORDER BY published_at, signs_from",
        &[],
    )?;
    let spki = configured.public_key().spki_der();
    if rows.is_empty() {
        return Ok(vec![LogKey::only(Arc::clone(configured))]);
    }
    if !rows
        .iter()
        .any(|r| r.get(1).and_then(Value::blob) == Some(spki))
    {
        return Err(StoreError::Config(
            "keys.checkpoint is not a key of the checkpoint key's rotation history (key_schedule): configure the key the last rotation made".into(),
        ));
    }
    let t = now_secs();
    let mut keys = Vec::with_capacity(rows.len());
    for r in &rows {
        let uri = r.first().and_then(Value::text).unwrap_or("");
        let row_spki = r.get(1).and_then(Value::blob).unwrap_or_default().to_vec();
        let int = |i: usize| r.get(i).and_then(Value::int).unwrap_or(0);
        let retires_at = r.get(4).and_then(Value::int);
        let key = if retires_at.is_some_and(|r| r <= t) {
            None
        } else if row_spki == spki {
            Some(Arc::clone(configured))
        } else {
            let open = opener.ok_or_else(|| {
                StoreError::Config(format!(
                    "the scheduled checkpoint key {uri} cannot be opened here"
                ))
            })?;
            // A stored URI names which key, never a library, TPM or PIN file of its own.
            crate::appliance::rotation::same_device(configured.uri(), uri).map_err(|e| {
                StoreError::Config(format!("the scheduled checkpoint key {uri}: {e}"))
            })?;
            let k = (open.0)(uri).map_err(|e| {
                StoreError::Signing(format!("a scheduled checkpoint key ({uri}): {e}"))
            })?;
            if k.public_key().spki_der() != row_spki {
                return Err(StoreError::Config(format!(
                    "the scheduled checkpoint key {uri} is not the key recorded for it"
                )));
            }
            Some(k)
        };
        keys.push(LogKey {
            key,
            spki: row_spki,
            published_at: int(2),
            signs_from: int(3),
            retires_at,
            endorsement: r.get(5).and_then(Value::blob).map(<[u8]>::to_vec),
        });
    }
    Ok(keys)
}

/// The keys the log trusts, with their verifiers (named for the origin): the configured key
/// (`anchor`) and, in schedule order, each key endorsed by one already trusted; the others are
/// left out (a row written into the store by someone without a trusted key). Refused when none
/// signs now, or a trusted key whose time has come is not open or not the key recorded.
fn held_keys(origin: &str, anchor: &[u8], keys: Vec<LogKey>) -> Result<Vec<HeldKey>, StoreError> {
    let t = now_secs();
    let mut trusted: Vec<HeldKey> = Vec::with_capacity(keys.len());
    for key in keys {
        let verifier = NoteVerifier::from_spki(origin, &key.spki)
            .map_err(|e| StoreError::Config(format!("checkpoint key: {e}")))?;
        let endorsed_by = key.endorsement.as_deref().and_then(|e| {
            trusted
                .iter()
                .find(|by| {
                    writ_attestation::log::note::endorses(
                        default_provider(),
                        &by.verifier,
                        &key.spki,
                        e,
                    )
                })
                .map(|by| by.verifier.clone())
        });
        let endorsed = key.spki == anchor || endorsed_by.is_some();
        if !endorsed {
            tracing::warn!(
                "a checkpoint key of the schedule is not endorsed by a key trusted from keys.checkpoint: ignored"
            );
            continue;
        }
        if key.signs_from <= t && key.published(t) {
            match &key.key {
                None => {
                    return Err(StoreError::Config(
                        "a checkpoint key whose time has come is not open".into(),
                    ));
                }
                Some(k) if k.public_key().spki_der() != key.spki.as_slice() => {
                    return Err(StoreError::Config(
                        "a checkpoint key is not the key recorded for it".into(),
                    ));
                }
                Some(_) => {}
            }
        }
        trusted.push(HeldKey {
            endorsed_by: if key.spki == anchor {
                None
            } else {
                endorsed_by
            },
            key,
            verifier,
        });
    }
    if !trusted.iter().any(|k| k.key.signs(t)) {
        return Err(StoreError::Config(
            "no checkpoint key signs now (the schedule has none whose time has come, or none endorsed from keys.checkpoint: configure an earlier key of the history)"
                .into(),
        ));
    }
    Ok(trusted)
}

/// Checkpoints fetched per page at start.
const CHECKPOINT_PAGE: u64 = 10_000;

/// Reads a published-checkpoint mark, verified.
fn read_mark(
    path: &std::path::Path,
    origin: &str,
    verifiers: &[NoteVerifier],
) -> Result<Option<Checkpoint>, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Checkpoint::verify_by_any(default_provider(), &text, verifiers, origin)
            .map(Some)
            .map_err(|e| {
                StoreError::Corrupt(format!(
                    "the published-checkpoint mark {}: {e}",
                    path.display()
                ))
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Unavailable(format!("{}: {e}", path.display()))),
    }
}

/// Writes the mark atomically and durably.
fn write_mark(path: &std::path::Path, note: &str) -> Result<(), StoreError> {
    crate::files::write_atomically(
        path,
        note.as_bytes(),
        0o644,
        crate::files::Existing::Replace,
    )
    .map_err(|e| StoreError::Unavailable(format!("published-checkpoint mark {e}")))
}

/// Reads everything back: leaves (contiguous, re-hashed), checkpoints (each note's text matching
/// its row and the tree rebuilt from the leaves; the latest one's signature verified under this
/// key and origin), the subtree count and right edge, and the published-checkpoint mark (the
/// store must contain it).
fn verify_all(
    b: &mut dyn Backend,
    pages: &mut dyn Backend,
    origin: &str,
    verifiers: &[NoteVerifier],
    mark_path: Option<&std::path::Path>,
) -> Result<(Tree, Option<StoredCheckpoint>), StoreError> {
    let latest = b.latest_checkpoint()?;
    if let Some(cp) = &latest {
        Checkpoint::verify_by_any(default_provider(), &cp.note, verifiers, origin).map_err(|e| {
            StoreError::Corrupt(format!(
                "stored checkpoint at size {}: {e} (signed by another key, for another origin, or altered)",
                cp.size
            ))
        })?;
    }
    let mark = match mark_path {
        Some(p) => read_mark(p, origin, verifiers)?,
        None => None,
    };
    let mut tree = Tree::default();
    let mut nodes = Vec::new();
    let mut page: std::collections::VecDeque<StoredCheckpoint> = Default::default();
    let mut next_page_from: Option<u64> = Some(0);
    let mut mark_ok = mark
        .as_ref()
        .is_none_or(|m| m.size == 0 && m.root == empty_root());
    // Checkpoints in size order, a page at a time, matched against the tree as it is rebuilt.
    let mut check_due = |tree: &Tree| -> Result<(), StoreError> {
        loop {
            if page.is_empty() {
                let Some(from) = next_page_from else {
                    return Ok(());
                };
                let got = pages.checkpoints_page(from, CHECKPOINT_PAGE)?;
                next_page_from = match got.last() {
                    Some(last) if got.len() as u64 == CHECKPOINT_PAGE => Some(last.size + 1),
                    _ => None,
                };
                page.extend(got);
                if page.is_empty() {
                    return Ok(());
                }
            }
            let Some(cp) = page.front() else {
                return Ok(());
            };
            if cp.size > tree.size() {
                return Ok(());
            }
            let text = cp.note.split("\n\n").next().unwrap_or_default().to_string() + "\n";
            let parsed = Checkpoint::parse_text(&text).map_err(|e| {
                StoreError::Corrupt(format!("stored checkpoint at size {}: {e}", cp.size))
            })?;
            if parsed.size != cp.size || parsed.root != cp.root || parsed.origin != origin {
                return Err(StoreError::Corrupt(format!(
                    "stored checkpoint at size {}: its note says size {} of {:?}",
                    cp.size, parsed.size, parsed.origin
                )));
            }
            if cp.size == tree.size() && cp.root != tree.root() {
                return Err(StoreError::Corrupt(format!(
                    "the checkpoint at size {} does not match the stored leaves",
                    cp.size
                )));
            }
            page.pop_front();
        }
    };
    check_due(&tree)?;
    b.scan_leaves(0, &mut |idx, stored, record| {
        if idx != tree.size() {
            return Err(StoreError::Corrupt(format!(
                "leaf {} missing (next stored leaf is {idx})",
                tree.size()
            )));
        }
        let h = leaf_hash(record);
        if h != stored {
            return Err(StoreError::Corrupt(format!(
                "leaf {idx}: the record does not hash to its stored leaf hash (altered or truncated)"
            )));
        }
        nodes.clear();
        push(&mut tree, h, &mut nodes);
        if let Some(m) = &mark
            && m.size == tree.size()
        {
            if m.root != tree.root() {
                return Err(StoreError::Corrupt(format!(
                    "the last published checkpoint (size {}) does not match the stored leaves",
                    m.size
                )));
            }
            mark_ok = true;
        }
        check_due(&tree)
    })?;
    if let Some(cp) = &latest
        && cp.size > tree.size()
    {
        return Err(StoreError::Corrupt(format!(
            "a checkpoint at size {} was published, but only {} leaves are stored (truncated)",
            cp.size,
            tree.size()
        )));
    }
    if let Some(m) = &mark
        && !mark_ok
    {
        return Err(StoreError::Corrupt(format!(
            "the store holds {} leaves, behind the last published checkpoint of size {} \
             (restored from a backup, an asynchronous replica, or rolled back)",
            tree.size(),
            m.size
        )));
    }
    let want = node_count(tree.size());
    let have = b.node_count()?;
    if want != have {
        return Err(StoreError::Corrupt(format!(
            "{have} stored subtrees for {} leaves (expected {want})",
            tree.size()
        )));
    }
    let edge = load_tree(b)?;
    if edge != tree {
        return Err(StoreError::Corrupt(
            "the stored right edge of the tree does not match the leaves".into(),
        ));
    }
    Ok((tree, latest))
}

/// After a failed commit: reconnects, and accepts the store only if it holds exactly the tree the
/// writer had committed, or that tree plus the failed batch (a commit whose outcome was unknown).
/// Anything else (fewer leaves, another right edge) is a store that moved under the log.
fn reconnect(
    inner: &Inner,
    committed: &Tree,
    failed: Option<&Tree>,
) -> Result<(Box<dyn Backend>, Tree), StoreError> {
    let mut b = connect(&inner.engine)?;
    b.lock_writer()?;
    let reloaded = load_tree(b.as_mut())?;
    let same = |t: &Tree| *t == reloaded;
    if !same(committed) && !failed.is_some_and(same) {
        return Err(StoreError::Corrupt(format!(
            "after reconnecting, the store holds {} leaves where the log had committed {}: \
             the store was rolled back or replaced while the log ran",
            reloaded.size(),
            committed.size()
        )));
    }
    // A checkpoint whose commit outcome was unknown may be stored: publish what is stored.
    let stored = b.latest_checkpoint()?;
    let published = inner.latest.read().ok().and_then(|l| l.clone());
    match (&stored, &published) {
        (Some(s), Some(p)) if s.size < p.size => {
            return Err(StoreError::Corrupt(format!(
                "after reconnecting, the latest stored checkpoint is of size {}, below the published {}",
                s.size, p.size
            )));
        }
        (Some(s), Some(p)) if s.size == p.size && s.root != p.root => {
            return Err(StoreError::Corrupt(format!(
                "after reconnecting, the stored checkpoint of size {} has another root than the published one",
                s.size
            )));
        }
        (None, Some(p)) => {
            return Err(StoreError::Corrupt(format!(
                "after reconnecting, no checkpoint is stored, but one of size {} was published",
                p.size
            )));
        }
        (Some(s), p) if p.as_ref().is_none_or(|p| s.size > p.size) => {
            Checkpoint::verify_by_any(
                default_provider(),
                &s.note,
                &inner.known(),
                &inner.config.origin,
            )
            .map_err(|e| StoreError::Corrupt(format!("stored checkpoint: {e}")))?;
            if s.size > reloaded.size() {
                return Err(StoreError::Corrupt(
                    "a stored checkpoint beyond the tree".into(),
                ));
            }
            if let Ok(mut l) = inner.latest.write() {
                *l = Some(s.clone());
            }
        }
        _ => {}
    }
    Ok((b, reloaded))
}

fn writer_loop(inner: &Inner, backend: Box<dyn Backend>, mut tree: Tree, rx: Receiver<Job>) {
    // `None` after a failure: the connection (and its writer lock) is dropped, and the next batch
    // reconnects and checks what is durable first.
    let mut backend = Some(backend);
    let mut failed: Option<Tree> = None;
    // Once the store is found moved under the log, every write is refused until a restart.
    let mut dead: Option<StoreError> = None;
    let mut pending: Option<Job> = None;
    loop {
        let first = match pending.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        // A batch is either one checkpoint, or appends (up to the record and byte bounds).
        let mut count = job_records(&first);
        let mut bytes = job_bytes(&first);
        let checkpoint_batch = matches!(first, Job::Checkpoint { .. });
        let mut batch = vec![first];
        while !checkpoint_batch && count < inner.config.max_batch && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(j @ Job::Checkpoint { .. }) => {
                    pending = Some(j);
                    break;
                }
                Ok(j) => {
                    count += job_records(&j);
                    bytes += job_bytes(&j);
                    batch.push(j);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        if let Some(e) = &dead {
            fail_all(batch, e);
            continue;
        }
        let b = match backend.as_mut() {
            Some(b) => b,
            None => match reconnect(inner, &tree, failed.as_ref()) {
                Ok((b, t)) => {
                    tree = t;
                    failed = None;
                    if let Ok(mut h) = inner.head.write() {
                        *h = (tree.size(), tree.root());
                    }
                    backend.insert(b)
                }
                Err(e) => {
                    inner.writer_ok.store(false, Ordering::SeqCst);
                    tracing::error!(code = e.code(), "decision log: {e}");
                    if matches!(e, StoreError::Corrupt(_)) {
                        dead = Some(e.clone());
                        inner.dead.store(true, Ordering::SeqCst);
                    }
                    fail_all(batch, &e);
                    continue;
                }
            },
        };
        match commit_batch(inner, b.as_mut(), &tree, &mut batch) {
            Ok((staged, firsts)) => {
                inner.writer_ok.store(true, Ordering::SeqCst);
                tree = staged;
                if let Ok(mut h) = inner.head.write() {
                    *h = (tree.size(), tree.root());
                }
                for (job, first) in batch.into_iter().zip(firsts) {
                    match job {
                        Job::Append { reply, .. } => {
                            let _ = reply.send(first);
                        }
                        Job::Checkpoint { cp, reply } => {
                            if let Ok(mut l) = inner.latest.write() {
                                *l = Some(cp);
                            }
                            let _ = reply.send(Ok(()));
                        }
                    }
                }
            }
            Err((e, staged)) => {
                inner.writer_ok.store(false, Ordering::SeqCst);
                b.rollback();
                backend = None;
                failed = staged;
                tracing::warn!(code = e.code(), "decision log commit failed: {e}");
                if matches!(e, StoreError::Corrupt(_)) {
                    dead = Some(e.clone());
                    inner.dead.store(true, Ordering::SeqCst);
                }
                fail_all(batch, &e);
            }
        }
    }
}

fn job_bytes(j: &Job) -> usize {
    match j {
        Job::Append { records, .. } => records.iter().map(Vec::len).sum(),
        Job::Checkpoint { .. } => 0,
    }
}

fn job_records(j: &Job) -> usize {
    match j {
        // A state change without records still counts towards the batch bound.
        Job::Append { records, .. } => records.len().max(1),
        Job::Checkpoint { .. } => 1,
    }
}

fn fail_all(batch: Vec<Job>, e: &StoreError) {
    for job in batch {
        match job {
            Job::Append { reply, .. } => {
                let _ = reply.send(Err(e.clone()));
            }
            Job::Checkpoint { reply, .. } => {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// One transaction: checkpoints are checked against the committed tree; each append's state
/// change runs in a savepoint and, if it holds, its records are sequenced onto a copy of the
/// tree. Returns the new tree and each job's answer (its first index, or its conflict).
#[allow(clippy::type_complexity)]
fn commit_batch(
    inner: &Inner,
    b: &mut dyn Backend,
    tree: &Tree,
    batch: &mut [Job],
) -> Result<(Tree, Vec<Result<u64, StoreError>>), (StoreError, Option<Tree>)> {
    let mut staged = tree.clone();
    let before = |e: StoreError| (e, None);
    let mut leaves = Vec::new();
    let mut nodes = Vec::new();
    let mut firsts = Vec::with_capacity(batch.len());
    let mut checkpoints = Vec::new();
    b.begin().map_err(before)?;
    for job in batch {
        match job {
            Job::Append {
                records, effect, ..
            } => {
                if !effect.is_empty() {
                    match apply(b, effect).map_err(before)? {
                        Ok(()) => {}
                        Err(conflict) => {
                            firsts.push(Err(conflict));
                            continue;
                        }
                    }
                }
                firsts.push(Ok(staged.size()));
                // The records move into the rows (only the replies are needed afterwards).
                for record in std::mem::take(records) {
                    let h = leaf_hash(&record);
                    leaves.push(LeafRow {
                        idx: staged.size(),
                        hash: h,
                        record,
                    });
                    push(&mut staged, h, &mut nodes);
                }
            }
            Job::Checkpoint { cp, .. } => {
                firsts.push(Ok(cp.size));
                check_checkpoint(inner, b, tree, cp).map_err(before)?;
                checkpoints.push(cp);
            }
        }
    }
    let written = (|| {
        if !leaves.is_empty() {
            b.insert_leaves(&leaves)?;
        }
        if !nodes.is_empty() {
            b.insert_nodes(&nodes)?;
        }
        for cp in &checkpoints {
            b.insert_checkpoint(cp)?;
        }
        b.commit()
    })();
    // A failure from here on may have been a commit whose outcome is unknown.
    written.map_err(|e| (e, Some(staged.clone())))?;
    Ok((staged, firsts))
}

/// Runs one append's state change in a savepoint. The outer error is the store's (the batch
/// fails); the inner one is this change's conflict (rolled back, the batch goes on).
fn apply(b: &mut dyn Backend, effect: &[Op]) -> Result<Result<(), StoreError>, StoreError> {
    b.batch("SAVEPOINT writ_effect")?;
    for op in effect {
        let n = match b.exec(op.sql, &op.params) {
            Ok(n) => n,
            Err(e) => {
                let _ = b.batch("ROLLBACK TO SAVEPOINT writ_effect");
                return Err(e);
            }
        };
        if n == 0
            && let Some((code, detail)) = op.must_affect
        {
            b.batch("ROLLBACK TO SAVEPOINT writ_effect; RELEASE SAVEPOINT writ_effect")?;
            return Ok(Err(StoreError::Conflict {
                code,
                detail: detail.to_string(),
            }));
        }
    }
    b.batch("RELEASE SAVEPOINT writ_effect")?;
    Ok(Ok(()))
}

/// A checkpoint is stored only if its root is the committed tree's at its size and the tree
/// at the previous checkpoint's size is a prefix of it (the log never signs a fork).
fn check_checkpoint(
    inner: &Inner,
    b: &mut dyn Backend,
    tree: &Tree,
    cp: &StoredCheckpoint,
) -> Result<(), StoreError> {
    if cp.size > tree.size() {
        return Err(StoreError::Corrupt(format!(
            "checkpoint of size {} beyond the tree's {}",
            cp.size,
            tree.size()
        )));
    }
    let root = if cp.size == tree.size() {
        tree.root()
    } else {
        range_root(&mut Source(b), 0, cp.size)?
    };
    if root != cp.root {
        return Err(StoreError::Corrupt(format!(
            "checkpoint of size {} does not carry the tree's root",
            cp.size
        )));
    }
    let previous = inner.latest.read().ok().and_then(|l| l.clone());
    if let Some(prev) = previous {
        if prev.size >= cp.size {
            return Err(StoreError::Range(format!(
                "a checkpoint of size {} after one of size {}",
                cp.size, prev.size
            )));
        }
        let proof = if prev.size == 0 {
            Vec::new()
        } else {
            consistency_proof_from(&mut Source(b), prev.size, cp.size)?
        };
        verify_consistency(prev.size, cp.size, &proof, &prev.root, &cp.root).map_err(|e| {
            StoreError::Corrupt(format!(
                "the tree at {} is not an extension of the checkpoint at {}: {e}",
                cp.size, prev.size
            ))
        })?;
    }
    Ok(())
}

/// Signs the current head if no checkpoint covers it, stores it through the writer, publishes it.
fn sign_checkpoint(inner: &Inner) -> Result<StoredCheckpoint, StoreError> {
    let _one_at_a_time = inner.sign_lock.lock().map_err(|_| StoreError::Stopped)?;
    let (size, root) = inner
        .head
        .read()
        .map(|h| *h)
        .map_err(|_| StoreError::Stopped)?;
    let latest = inner.latest.read().ok().and_then(|l| l.clone());
    if let Some(l) = &latest {
        if l.size > size {
            // The head went below what was published: never "covered", always an alarm.
            return Err(StoreError::Corrupt(format!(
                "the log holds {size} leaves, below its published checkpoint of size {}",
                l.size
            )));
        }
        if l.size == size {
            // Nothing new to sign: the key still has to answer (a probe, not a checkpoint), so
            // that a custody device that disappeared stops decisions within the bound even
            // when the log is quiet. Every key that signs checkpoints now answers.
            let signers = inner.signers(now_secs());
            if signers.is_empty() {
                return Err(StoreError::Signing("no checkpoint key signs now".into()));
            }
            for (key, _) in &signers {
                key.sign(PROBE)
                    .map_err(|e| StoreError::Signing(e.to_string()))?;
            }
            if let Ok(mut t) = inner.healthy_at.lock() {
                *t = Instant::now();
            }
            return Ok(l.clone());
        }
    }
    let text = Checkpoint {
        origin: inner.config.origin.clone(),
        size,
        root,
        extensions: Vec::new(),
    }
    .text();
    // Signed by every key whose time has come (two during a rotation's overlap): a relying party
    // holding either verifies it.
    let signers = inner.signers(now_secs());
    if signers.is_empty() {
        return Err(StoreError::Signing("no checkpoint key signs now".into()));
    }
    let mut signatures = Vec::with_capacity(signers.len());
    for (key, verifier) in &signers {
        let signature = key
            .sign(text.as_bytes())
            .map_err(|e| StoreError::Signing(e.to_string()))?;
        signatures.push((verifier, signature.to_der().as_bytes().to_vec()));
    }
    let lines: Vec<(&NoteVerifier, &[u8])> =
        signatures.iter().map(|(v, d)| (*v, d.as_slice())).collect();
    let note = signed_note_by(&text, &lines);
    // Each key must verify what it signed before anything is published.
    for (_, verifier) in &signers {
        Checkpoint::verify(default_provider(), &note, verifier, &inner.config.origin)
            .map_err(|e| StoreError::Signing(format!("the checkpoint key's signature: {e}")))?;
    }
    let cp = StoredCheckpoint {
        size,
        root,
        note,
        signed_at: now_secs(),
    };
    // The mark outside the store first: it only ever names a committed tree, so a store that
    // does not contain it later was rolled back.
    if let Some(path) = &inner.config.published_mark {
        write_mark(path, &cp.note)?;
    }
    let (reply, answer) = sync_channel(1);
    inner.send(Job::Checkpoint {
        cp: cp.clone(),
        reply,
    })?;
    answer.recv().map_err(|_| StoreError::Stopped)??;
    if let Ok(mut t) = inner.healthy_at.lock() {
        *t = Instant::now();
    }
    Ok(cp)
}

fn checkpointer_loop(inner: &Arc<Inner>) {
    let (lock, cv) = &inner.wake;
    loop {
        if let Ok(guard) = lock.lock() {
            let _ = cv.wait_timeout_while(guard, inner.config.checkpoint_interval, |woken| {
                !*woken && !inner.stopping.load(Ordering::SeqCst)
            });
        }
        if inner.stopping.load(Ordering::SeqCst) {
            return;
        }
        let signed = sign_checkpoint(inner);
        if let Err(e) = &signed {
            if matches!(e, StoreError::Signing(_)) {
                inner.signing_failures.fetch_add(1, Ordering::Relaxed);
            }
            tracing::warn!(code = e.code(), "checkpoint not signed: {e}");
        }
        if let Ok(mut l) = inner.last_signature.lock() {
            *l = (
                Instant::now(),
                match signed {
                    Err(StoreError::Signing(e)) => Err(e),
                    _ => Ok(()),
                },
            );
        }
    }
}
