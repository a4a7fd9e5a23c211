//! SQLite: WAL journal with `synchronous=FULL` (each commit is fsynced before it returns), one
//! writer process (a lock file beside the database), readers on their own connections.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use super::{
    Backend, Hash, LeafRow, LeafVisitor, MIGRATIONS, NodeRow, SCHEMA_VERSION, StoreError,
    StoredCheckpoint, Value, hash_from, migration_sql, to_i64, to_u64,
};

pub(crate) struct Sqlite {
    conn: Connection,
    path: PathBuf,
    writer_lock: Option<std::fs::File>,
}

fn err(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            StoreError::Corrupt(e.to_string())
        }
        Some(ErrorCode::ConstraintViolation) => {
            StoreError::Busy(format!("{e} (another writer, or a reused index: refused)"))
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Busy(e.to_string())
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

impl Sqlite {
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        // WAL: readers never block the writer; FULL: the WAL is fsynced at every commit.
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Config(format!(
                "{}: journal mode {mode}, WAL required",
                path.display()
            )));
        }
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
            .map_err(err)?;
        Ok(Sqlite {
            conn,
            path: path.to_path_buf(),
            writer_lock: None,
        })
    }
}

impl Backend for Sqlite {
    fn migrate(&mut self) -> Result<u32, StoreError> {
        self.conn
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS writ_schema (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
            )
            .map_err(err)?;
        let current: Option<i64> = self
            .conn
            .query_row("SELECT MAX(version) FROM writ_schema", [], |r| r.get(0))
            .map_err(err)?;
        let current = u32::try_from(current.unwrap_or(0))
            .map_err(|_| StoreError::Schema("schema version out of range".into()))?;
        if current > SCHEMA_VERSION {
            return Err(StoreError::Schema(format!(
                "the store is at schema {current}, this writ knows {SCHEMA_VERSION}: refusing to run an older writ on it"
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            let tx = self.conn.transaction().map_err(err)?;
            tx.execute_batch(&migration_sql(sql, "INTEGER", "BLOB"))
                .map_err(|e| StoreError::Schema(format!("migration {version}: {e}")))?;
            tx.execute(
                "INSERT INTO writ_schema (version, applied_at) VALUES ($1, strftime('%s','now'))",
                params![version],
            )
            .map_err(err)?;
            tx.commit().map_err(err)?;
        }
        Ok(SCHEMA_VERSION)
    }

    fn lock_writer(&mut self) -> Result<(), StoreError> {
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".writer-lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Unavailable(format!("writer lock: {e}")))?;
        // A lock held a moment longer than its holder (a forked child of this process holds a
        // copy of the descriptor until it execs) is waited for, briefly; another writer is not.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(StoreError::Busy(format!(
                        "another writ process writes {} (lock {})",
                        self.path.display(),
                        PathBuf::from(lock_path).display()
                    )));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(StoreError::Unavailable(format!("writer lock: {e}")));
                }
            }
        }
        self.writer_lock = Some(file);
        Ok(())
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(err)
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("COMMIT").map_err(err)
    }

    fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    fn insert_leaves(&mut self, rows: &[LeafRow]) -> Result<(), StoreError> {
        let mut st = self
            .conn
            .prepare_cached("INSERT INTO log_leaves (idx, leaf_hash, record) VALUES ($1, $2, $3)")
            .map_err(err)?;
        for r in rows {
            st.execute(params![
                to_i64(r.idx, "leaf index")?,
                &r.hash[..],
                &r.record
            ])
            .map_err(err)?;
        }
        Ok(())
    }

    fn insert_nodes(&mut self, rows: &[NodeRow]) -> Result<(), StoreError> {
        let mut st = self
            .conn
            .prepare_cached("INSERT INTO log_nodes (level, idx, hash) VALUES ($1, $2, $3)")
            .map_err(err)?;
        for r in rows {
            st.execute(params![r.level, to_i64(r.idx, "node index")?, &r.hash[..]])
                .map_err(err)?;
        }
        Ok(())
    }

    fn insert_checkpoint(&mut self, cp: &StoredCheckpoint) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO log_checkpoints (size, root, note, signed_at) VALUES ($1, $2, $3, $4)",
                params![
                    to_i64(cp.size, "checkpoint size")?,
                    &cp.root[..],
                    cp.note,
                    cp.signed_at
                ],
            )
            .map_err(err)?;
        Ok(())
    }

    fn leaf_count(&mut self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM log_leaves", [], |r| r.get(0))
            .map_err(err)?;
        to_u64(n, "leaf count")
    }

    fn leaf(&mut self, idx: u64) -> Result<Option<(Hash, Vec<u8>)>, StoreError> {
        let row: Option<(Vec<u8>, Vec<u8>)> = self
            .conn
            .prepare_cached("SELECT leaf_hash, record FROM log_leaves WHERE idx = $1")
            .map_err(err)?
            .query_row(params![to_i64(idx, "leaf index")?], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(err)?;
        row.map(|(h, rec)| Ok((hash_from(&h, "leaf hash")?, rec)))
            .transpose()
    }

    fn scan_leaves(&mut self, from: u64, f: &mut LeafVisitor<'_>) -> Result<(), StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT idx, leaf_hash, record FROM log_leaves WHERE idx >= $1 ORDER BY idx")
            .map_err(err)?;
        let mut rows = st
            .query(params![to_i64(from, "leaf index")?])
            .map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            let idx: i64 = r.get(0).map_err(err)?;
            let h: Vec<u8> = r.get(1).map_err(err)?;
            let rec = r.get_ref(2).map_err(err)?;
            let rec = rec.as_blob().map_err(|e| {
                StoreError::Corrupt(format!("leaf {idx}: record is not bytes: {e}"))
            })?;
            f(to_u64(idx, "leaf index")?, hash_from(&h, "leaf hash")?, rec)?;
        }
        Ok(())
    }

    fn leaf_range(&mut self, from: u64, count: u64) -> Result<Vec<(Hash, Vec<u8>)>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT leaf_hash, record FROM log_leaves WHERE idx >= $1 AND idx < $2 ORDER BY idx",
            )
            .map_err(err)?;
        let end = from.saturating_add(count);
        let rows = st
            .query_map(
                params![to_i64(from, "leaf index")?, to_i64(end, "leaf index")?],
                |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)),
            )
            .map_err(err)?;
        let mut out = Vec::new();
        for row in rows {
            let (h, rec) = row.map_err(err)?;
            out.push((hash_from(&h, "leaf hash")?, rec));
        }
        Ok(out)
    }

    fn node_range(&mut self, level: u32, from: u64, count: u64) -> Result<Vec<Hash>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT hash FROM log_nodes WHERE level = $1 AND idx >= $2 AND idx < $3 ORDER BY idx",
            )
            .map_err(err)?;
        let end = from.saturating_add(count);
        let rows = st
            .query_map(
                params![
                    level,
                    to_i64(from, "node index")?,
                    to_i64(end, "node index")?
                ],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .map_err(err)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(hash_from(&row.map_err(err)?, "node hash")?);
        }
        Ok(out)
    }

    fn node_count(&mut self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM log_nodes", [], |r| r.get(0))
            .map_err(err)?;
        to_u64(n, "node count")
    }

    fn node(&mut self, level: u32, idx: u64) -> Result<Option<Hash>, StoreError> {
        let h: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT hash FROM log_nodes WHERE level = $1 AND idx = $2")
            .map_err(err)?
            .query_row(params![level, to_i64(idx, "node index")?], |r| r.get(0))
            .optional()
            .map_err(err)?;
        h.map(|h| hash_from(&h, "node hash")).transpose()
    }

    fn index_of(&mut self, leaf_hash: &Hash) -> Result<Option<u64>, StoreError> {
        let i: Option<i64> = self
            .conn
            .prepare_cached("SELECT MIN(idx) FROM log_leaves WHERE leaf_hash = $1")
            .map_err(err)?
            .query_row(params![&leaf_hash[..]], |r| r.get(0))
            .map_err(err)?;
        i.map(|i| to_u64(i, "leaf index")).transpose()
    }

    fn checkpoints(&mut self) -> Result<Vec<StoredCheckpoint>, StoreError> {
        self.checkpoints_page(0, i64::MAX as u64)
    }

    fn checkpoints_page(
        &mut self,
        from: u64,
        limit: u64,
    ) -> Result<Vec<StoredCheckpoint>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT size, root, note, signed_at FROM log_checkpoints WHERE size >= $1 ORDER BY size LIMIT $2",
            )
            .map_err(err)?;
        let rows = st
            .query_map(
                params![
                    to_i64(from, "size")?,
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                checkpoint_row,
            )
            .map_err(err)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(stored_checkpoint(row.map_err(err)?)?);
        }
        Ok(out)
    }

    fn latest_checkpoint(&mut self) -> Result<Option<StoredCheckpoint>, StoreError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT size, root, note, signed_at FROM log_checkpoints ORDER BY size DESC LIMIT 1",
            )
            .map_err(err)?
            .query_row([], checkpoint_row)
            .optional()
            .map_err(err)?;
        row.map(stored_checkpoint).transpose()
    }

    fn max_leaf_index(&mut self) -> Result<Option<u64>, StoreError> {
        let i: Option<i64> = self
            .conn
            .query_row("SELECT MAX(idx) FROM log_leaves", [], |r| r.get(0))
            .map_err(err)?;
        i.map(|i| to_u64(i, "leaf index")).transpose()
    }

    fn read_only(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("PRAGMA query_only=ON").map_err(err)
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.conn.execute_batch(sql).map_err(err)
    }

    fn exec(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let mut st = self.conn.prepare_cached(&numbered(sql)).map_err(err)?;
        let n = st
            .execute(rusqlite::params_from_iter(params.iter().map(to_sqlite)))
            .map_err(err)?;
        Ok(n as u64)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, StoreError> {
        let mut st = self.conn.prepare_cached(&numbered(sql)).map_err(err)?;
        let columns = st.column_count();
        let mut rows = st
            .query(rusqlite::params_from_iter(params.iter().map(to_sqlite)))
            .map_err(err)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(err)? {
            let mut row = Vec::with_capacity(columns);
            for i in 0..columns {
                row.push(match r.get::<_, rusqlite::types::Value>(i).map_err(err)? {
                    rusqlite::types::Value::Null => Value::Null,
                    rusqlite::types::Value::Integer(v) => Value::Int(v),
                    rusqlite::types::Value::Text(v) => Value::Text(v),
                    rusqlite::types::Value::Blob(v) => Value::Blob(v),
                    rusqlite::types::Value::Real(_) => {
                        return Err(StoreError::Corrupt("a REAL in the state tables".into()));
                    }
                });
            }
            out.push(row);
        }
        Ok(out)
    }
}

/// `$1`, `$2`, ... (PostgreSQL's parameters, in which the state SQL is written) as SQLite's
/// numbered `?1`, `?2`, ... (SQLite would take `$1` for a *named* parameter, numbered by first
/// appearance).
/// Quoted strings and identifiers are copied unchanged.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push('?');
                continue;
            }
            None => {}
        }
        out.push(c);
    }
    out
}

fn to_sqlite(v: &Value) -> rusqlite::types::Value {
    match v {
        Value::Null => rusqlite::types::Value::Null,
        Value::Int(i) => rusqlite::types::Value::Integer(*i),
        Value::Text(t) => rusqlite::types::Value::Text(t.clone()),
        Value::Blob(b) => rusqlite::types::Value::Blob(b.clone()),
    }
}

type CheckpointRow = (i64, Vec<u8>, String, i64);

fn checkpoint_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CheckpointRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn stored_checkpoint(
    (size, root, note, signed_at): CheckpointRow,
) -> Result<StoredCheckpoint, StoreError> {
    Ok(StoredCheckpoint {
        size: to_u64(size, "checkpoint size")?,
        root: hash_from(&root, "checkpoint root")?,
        note,
        signed_at,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbered_parameters_outside_quotes_only() {
        assert_eq!(
            super::numbered("SELECT $1, '$2', \"a$3\" FROM t WHERE x = $10"),
            "SELECT ?1, '$2', \"a$3\" FROM t WHERE x = ?10"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod plans {
    use super::*;

    /// How often a read's statement was compiled again after it ran `runs` times with other
    /// values bound (SQLite re-plans a statement per binding when the value may change its plan,
    /// e.g. a join's constant propagation: a parse and plan per request on the hot path).
    fn reprepared(sql: &str, runs: usize) -> i32 {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.db");
        let mut s = Sqlite::open(&p).unwrap();
        s.migrate().unwrap();
        let mut r = Sqlite::open(&p).unwrap();
        r.read_only().unwrap();
        for i in 0..runs {
            let params: Vec<Value> = (1..=sql.matches('$').count())
                .map(|n| format!("v{n}-{i}").into())
                .collect();
            r.query(sql, &params).unwrap();
        }
        let st = r.conn.prepare_cached(&numbered(sql)).unwrap();
        st.get_status(rusqlite::StatementStatus::RePrepare)
    }

    #[test]
    fn the_runtime_reads_of_each_request_are_planned_once() {
        // The pitfall, pinned: a joined column compared with a bare parameter re-plans.
        assert!(
            reprepared(
                "SELECT r.state FROM runtimes r LEFT JOIN attestations a ON a.name = r.name WHERE r.name = $1",
                4
            ) > 0
        );
        for sql in [
            crate::appliance::RUNTIME_ROW,
            "SELECT 1 FROM proof_jtis WHERE jkt = $1 AND jti = $2",
        ] {
            assert_eq!(reprepared(sql, 4), 0, "{sql}");
        }
    }
}
