//! The appliance's store: one schema on SQLite (the default, one file) or PostgreSQL, versioned
//! migrations, and the tables of the decision log. Every durable write goes through the one
//! group-commit writer (see [`crate::decision_log`]); this module is the per-engine SQL.
//!
//! Engines are named like `sqlite:/var/lib/writ/writ.db` or `postgres://user@host:5432/writ`
//! (any libpq-style connection string starting with `postgres://`, `postgresql://` or `host=`).

mod pg;
mod sqlite;

use std::path::PathBuf;

pub use writ_attestation::log::merkle::Hash;

/// Where the store lives.
#[derive(Clone, PartialEq, Eq)]
pub enum Engine {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection string (its password, if any, never printed).
    Postgres(String),
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Engine::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            Engine::Postgres(_) => write!(f, "postgres:(connection string withheld)"),
        }
    }
}

impl std::str::FromStr for Engine {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        if let Some(path) = s.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err(StoreError::Config("sqlite: needs a file path".into()));
            }
            Ok(Engine::Sqlite(PathBuf::from(path)))
        } else if s.starts_with("postgres://")
            || s.starts_with("postgresql://")
            || s.starts_with("host=")
        {
            Ok(Engine::Postgres(s.to_string()))
        } else {
            Err(StoreError::Config(
                "a store is sqlite:PATH or a postgres:// connection string".into(),
            ))
        }
    }
}

/// Store failures. Each has a stable code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store's configuration is unusable.
    #[error("store configuration: {0}")]
    Config(String),
    /// The store cannot be written or read now (disk full, I/O error, connection lost): the
    /// caller refuses; the store recovers when the fault clears.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Another writer holds the store.
    #[error("store busy: {0}")]
    Busy(String),
    /// The schema is from a newer writ, or a migration failed.
    #[error("store schema: {0}")]
    Schema(String),
    /// What is stored contradicts itself (an altered or truncated record, a checkpoint the tree
    /// does not match): the service refuses to start rather than sign over it.
    #[error("log corrupt: {0}")]
    Corrupt(String),
    /// A proof or look-up outside the tree.
    #[error("out of range: {0}")]
    Range(String),
    /// The writer has stopped.
    #[error("the store's writer has stopped")]
    Stopped,
    /// No checkpoint could be signed for longer than the bound: decisions are refused.
    #[error("checkpoint stale: {0}")]
    CheckpointStale(String),
    /// The checkpoint key failed to sign.
    #[error("checkpoint signing: {0}")]
    Signing(String),
    /// A state change's precondition did not hold when its transaction ran (a challenge
    /// already used, a join token spent, a name enrolled with other keys): nothing of that
    /// decision was written. `code` is the stable code of the check.
    #[error("{code}: {detail}")]
    Conflict {
        /// The stable code.
        code: &'static str,
        /// What did not hold.
        detail: String,
    },
}

impl StoreError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Config(_) => "store_config",
            StoreError::Unavailable(_) => "store_unavailable",
            StoreError::Busy(_) => "store_busy",
            StoreError::Schema(_) => "store_schema",
            StoreError::Corrupt(_) => "log_corrupt",
            StoreError::Range(_) => "out_of_range",
            StoreError::Stopped => "store_stopped",
            StoreError::CheckpointStale(_) => "checkpoint_stale",
            StoreError::Signing(_) => "checkpoint_signing",
            StoreError::Conflict { code, .. } => code,
        }
    }
}

impl From<writ_attestation::EvidenceError> for StoreError {
    fn from(e: writ_attestation::EvidenceError) -> Self {
        StoreError::Range(e.to_string())
    }
}

/// A value in a row of the appliance's state tables (64-bit integers, text, bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// NULL.
    Null,
    /// An integer.
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl Value {
    /// The integer, if this is one.
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }
    /// The text, if this is text.
    pub fn text(&self) -> Option<&str> {
        match self {
            Value::Text(v) => Some(v),
            _ => None,
        }
    }
    /// The bytes, if these are bytes.
    pub fn blob(&self) -> Option<&[u8]> {
        match self {
            Value::Blob(v) => Some(v),
            _ => None,
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Blob(v.to_vec())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// One statement of a state change, with what it must affect. SQL is written once for both
/// engines with `$1`, `$2`, ... parameters.
#[derive(Debug, Clone)]
pub struct Op {
    /// The statement.
    pub sql: &'static str,
    /// Its parameters, in order.
    pub params: Vec<Value>,
    /// If set, the statement must affect at least one row, or the whole change is a
    /// [`StoreError::Conflict`] with this code and detail.
    pub must_affect: Option<(&'static str, &'static str)>,
}

/// A leaf row.
#[derive(Debug, Clone)]
pub(crate) struct LeafRow {
    pub idx: u64,
    pub hash: Hash,
    pub record: Vec<u8>,
}

/// A stored perfect subtree: the root of the 2^level leaves from `idx << level`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NodeRow {
    pub level: u32,
    pub idx: u64,
    pub hash: Hash,
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// Tree size.
    pub size: u64,
    /// Root hash.
    pub root: Hash,
    /// The signed note (C2SP checkpoint).
    pub note: String,
    /// When it was signed (seconds since the Unix epoch).
    pub signed_at: i64,
}

/// A visitor of stored leaves: (index, stored leaf hash, record).
pub(crate) type LeafVisitor<'a> = dyn FnMut(u64, Hash, &[u8]) -> Result<(), StoreError> + 'a;

/// The SQL of one engine, on one connection.
pub(crate) trait Backend: Send {
    /// Applies missing migrations; refuses a schema newer than this code's.
    fn migrate(&mut self) -> Result<u32, StoreError>;
    /// Takes the single-writer lock for the life of this connection.
    fn lock_writer(&mut self) -> Result<(), StoreError>;
    fn begin(&mut self) -> Result<(), StoreError>;
    /// Commits durably (the fsync of group commit).
    fn commit(&mut self) -> Result<(), StoreError>;
    fn rollback(&mut self);
    fn insert_leaves(&mut self, rows: &[LeafRow]) -> Result<(), StoreError>;
    fn insert_nodes(&mut self, rows: &[NodeRow]) -> Result<(), StoreError>;
    fn insert_checkpoint(&mut self, cp: &StoredCheckpoint) -> Result<(), StoreError>;
    fn leaf_count(&mut self) -> Result<u64, StoreError>;
    fn leaf(&mut self, idx: u64) -> Result<Option<(Hash, Vec<u8>)>, StoreError>;
    /// Calls `f` for every leaf from `from`, in index order.
    fn scan_leaves(&mut self, from: u64, f: &mut LeafVisitor<'_>) -> Result<(), StoreError>;
    /// Leaves `from..from + count` in index order (fewer if the log is shorter).
    fn leaf_range(&mut self, from: u64, count: u64) -> Result<Vec<(Hash, Vec<u8>)>, StoreError>;
    /// Stored subtrees of `level` (>= 1) with indices `from..from + count`, in order.
    fn node_range(&mut self, level: u32, from: u64, count: u64) -> Result<Vec<Hash>, StoreError>;
    fn node_count(&mut self) -> Result<u64, StoreError>;
    fn node(&mut self, level: u32, idx: u64) -> Result<Option<Hash>, StoreError>;
    fn index_of(&mut self, leaf_hash: &Hash) -> Result<Option<u64>, StoreError>;
    fn checkpoints(&mut self) -> Result<Vec<StoredCheckpoint>, StoreError>;
    /// Up to `limit` checkpoints of size >= `from`, in size order.
    fn checkpoints_page(
        &mut self,
        from: u64,
        limit: u64,
    ) -> Result<Vec<StoredCheckpoint>, StoreError>;
    /// The checkpoint of the largest size.
    fn latest_checkpoint(&mut self) -> Result<Option<StoredCheckpoint>, StoreError>;
    /// The highest leaf index stored.
    fn max_leaf_index(&mut self) -> Result<Option<u64>, StoreError>;
    /// Makes this connection refuse writes (reader connections: every change of state goes
    /// through the writer, with its record).
    fn read_only(&mut self) -> Result<(), StoreError>;
    /// Runs SQL without parameters or results (savepoints).
    fn batch(&mut self, sql: &str) -> Result<(), StoreError>;
    /// Runs one statement of the state tables; returns the rows it affected.
    fn exec(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError>;
    /// Runs one query of the state tables.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, StoreError>;
}

/// The current schema version: the last migration's.
pub const SCHEMA_VERSION: u32 = match MIGRATIONS.last() {
    Some((v, _)) => *v,
    None => 0,
};

/// Migrations, in order; `{int}` and `{blob}` are the engine's 64-bit integer and byte types.
const MIGRATIONS: &[(u32, &str)] = &[
    (
        1,
        "CREATE TABLE log_leaves (
        idx {int} PRIMARY KEY,
        leaf_hash {blob} NOT NULL,
        record {blob} NOT NULL
    );
    CREATE INDEX log_leaves_by_hash ON log_leaves (leaf_hash);
    CREATE TABLE log_nodes (
        level {int} NOT NULL,
        idx {int} NOT NULL,
        hash {blob} NOT NULL,
        PRIMARY KEY (level, idx)
    );
    CREATE TABLE log_checkpoints (
        size {int} PRIMARY KEY,
        root {blob} NOT NULL,
        note TEXT NOT NULL,
        signed_at {int} NOT NULL
    );",
    ),
    (
        2,
        // The appliance's state: enrolled runtimes, enrollment authorizations, pending
        // enrollment challenges. Secrets are stored only as SHA-256 digests. A runtime's EK is
        // known by its key (`ek_key`, from the verified certificate); `ek_certificate` is the
        // certificate's SHA-256, for people.
        "CREATE TABLE runtimes (
        name TEXT PRIMARY KEY,
        ek_key TEXT NOT NULL UNIQUE,
        ek_certificate TEXT NOT NULL,
        ak_name {blob} NOT NULL,
        ak_public {blob} NOT NULL,
        tpm TEXT NOT NULL,
        state TEXT NOT NULL,
        enrolled_at {int} NOT NULL,
        changed_at {int} NOT NULL
    );
    CREATE TABLE ek_registrations (
        ek_hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        registered_at {int} NOT NULL
    );
    CREATE TABLE join_tokens (
        token_hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        expires_at {int} NOT NULL,
        used_at {int}
    );
    CREATE TABLE enrollments (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        ek_key TEXT NOT NULL,
        ek_certificate TEXT NOT NULL,
        ak_name {blob} NOT NULL,
        ak_public {blob} NOT NULL,
        tpm TEXT NOT NULL,
        secret_hash {blob} NOT NULL,
        expires_at {int} NOT NULL,
        used_at {int}
    );
    CREATE INDEX enrollments_by_expiry ON enrollments (expires_at);",
    ),
    (
        3,
        // Attestation: reference profiles (as loaded, by name), each runtime's profile, the
        // single-use nonces (by SHA-256; the nonce itself is never stored), and each runtime's
        // current appraisal with the counters of its last verified quote. `generation` grows
        // with every change of a runtime's appraisal, so a writer that read an older one cannot
        // overwrite a newer one. `rollback` names the counter once one went backwards: it sticks
        // (every later attestation is contraindicated) until an admin re-baselines the runtime.
        "CREATE TABLE profiles (
        name TEXT PRIMARY KEY,
        profile TEXT NOT NULL,
        digest TEXT NOT NULL,
        loaded_at {int} NOT NULL
    );
    ALTER TABLE runtimes ADD COLUMN profile TEXT;
    CREATE TABLE nonces (
        nonce_hash {blob} PRIMARY KEY,
        name TEXT NOT NULL,
        expires_at {int} NOT NULL,
        used_at {int}
    );
    CREATE INDEX nonces_pending ON nonces (name, expires_at) WHERE used_at IS NULL;
    CREATE INDEX nonces_by_expiry ON nonces (expires_at);
    CREATE TABLE attestations (
        name TEXT PRIMARY KEY,
        generation {int} NOT NULL,
        status TEXT NOT NULL,
        result TEXT NOT NULL,
        profile TEXT NOT NULL,
        reset_count {int} NOT NULL,
        restart_count {int} NOT NULL,
        clock {int} NOT NULL,
        holder_jkt TEXT NOT NULL,
        ear_digest TEXT NOT NULL,
        attested_at {int} NOT NULL,
        rollback TEXT
    );",
    ),
    (
        4,
        // Issuance: every policy bundle loaded (the current one is the highest generation), and
        // the DPoP proofs already used (by holder key and jti) until they could no longer be
        // accepted anyway.
        "CREATE TABLE policy_bundles (
        generation {int} PRIMARY KEY,
        hash TEXT NOT NULL,
        bundle TEXT NOT NULL,
        loaded_at {int} NOT NULL
    );
    CREATE TABLE proof_jtis (
        jkt TEXT NOT NULL,
        jti TEXT NOT NULL,
        keep_until {int} NOT NULL,
        PRIMARY KEY (jkt, jti)
    );
    CREATE INDEX proof_jtis_by_expiry ON proof_jtis (keep_until);",
    ),
    (
        5,
        // Lineage: every writ issued, by jti and by the digest of its compact form, with its
        // holder runtime, its parent's digest and the leaf hash of its `issue` record (what a
        // child's record names as `parent`). Written with the allow record, in its transaction.
        "CREATE TABLE writs (
        jti TEXT PRIMARY KEY,
        digest TEXT NOT NULL UNIQUE,
        runtime TEXT NOT NULL,
        parent TEXT,
        depth {int} NOT NULL,
        delegation {int} NOT NULL,
        expires_at {int} NOT NULL,
        leaf_hash TEXT NOT NULL
    );",
    ),
    (
        6,
        // Admins' client certificates this appliance issued (by serial), and their revocation.
        "CREATE TABLE admin_certificates (
        serial TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL,
        name TEXT NOT NULL,
        not_after {int} NOT NULL,
        issued_at {int} NOT NULL,
        revoked_at {int}
    );
    CREATE INDEX admin_certificates_by_id ON admin_certificates (spiffe_id);",
    ),
    (
        7,
        // Trust bundle versions: what each published (keys, CA, accepted policy bundles, the
        // log's key), by spiffe_sequence.
        "CREATE TABLE trust_bundles (
        sequence {int} PRIMARY KEY,
        digest TEXT NOT NULL,
        content TEXT NOT NULL,
        published_at {int} NOT NULL
    );",
    ),
    (
        8,
        // Gateways' spool entries recorded (gate and outcome records), by the gateway's SPIFFE ID,
        // its spool's random identity and the entry's sequence number in that spool: written with each record, so an entry
        // sent again is never recorded twice. (Gateways' certificates are registered in
        // admin_certificates, by serial, like admins'.)
        "CREATE TABLE gateway_reports (
        gateway TEXT NOT NULL,
        spool TEXT NOT NULL,
        seq {int} NOT NULL,
        PRIMARY KEY (gateway, spool, seq)
    );",
    ),
    (
        9,
        // The issuer and ear keys' rotation history (docs/keys.md): each key of a purpose, when it
        // was published, when it signs from, when it leaves the trust bundle (NULL: the newest).
        "CREATE TABLE key_schedule (
        purpose TEXT NOT NULL,
        uri TEXT NOT NULL,
        spki {blob} NOT NULL UNIQUE,
        published_at {int} NOT NULL,
        signs_from {int} NOT NULL,
        retires_at {int},
        PRIMARY KEY (purpose, spki)
    );",
    ),
    (
        10,
        // A rotated checkpoint key's endorsement by the key that signed when it was scheduled
        // (docs/keys.md): the log trusts a key of the history only through a chain of these
        // from its configured key, so a row written into the store is not a trust anchor.
        "ALTER TABLE key_schedule ADD COLUMN endorsement {blob};",
    ),
    (
        11,
        // A ca key's self-signed CA certificate (DER), made when the key was scheduled: what the
        // trust bundle publishes for it and what the certificates it signs chain to; and, for a
        // rotated-out ca key, until when the appliance still accepts the admins' and gateways'
        // client certificates it signed (after it left the bundle); a signing key's form (digest
        // or dsse), which its name keeps across rotations.
        "ALTER TABLE key_schedule ADD COLUMN certificate {blob};
    ALTER TABLE key_schedule ADD COLUMN clients_until {int};
    ALTER TABLE key_schedule ADD COLUMN form TEXT;",
    ),
];

fn migration_sql(sql: &str, int: &str, blob: &str) -> String {
    sql.replace("{int}", int).replace("{blob}", blob)
}

/// Opens a connection.
pub(crate) fn connect(engine: &Engine) -> Result<Box<dyn Backend>, StoreError> {
    match engine {
        Engine::Sqlite(path) => Ok(Box::new(sqlite::Sqlite::open(path)?)),
        Engine::Postgres(url) => Ok(Box::new(pg::Pg::open(url)?)),
    }
}

fn hash_from(bytes: &[u8], what: &str) -> Result<Hash, StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what}: a stored hash of {} bytes", bytes.len())))
}

fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Range(format!("{what} {v} out of range")))
}

fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what}: negative value {v}")))
}
