//! PostgreSQL: the same tables and queries (BIGINT and BYTEA for SQLite's INTEGER and BLOB).
//! A commit returns once PostgreSQL has flushed its WAL (`synchronous_commit` is checked to be
//! on); one writer (a session-level advisory lock); batches go in as arrays, one statement each.

use postgres::error::SqlState;
use postgres::types::{IsNull, ToSql, Type};
use postgres::{Client, NoTls};

use super::{
    Backend, Hash, LeafRow, LeafVisitor, MIGRATIONS, NodeRow, SCHEMA_VERSION, StoreError,
    StoredCheckpoint, Value, hash_from, migration_sql, to_i64, to_u64,
};

/// The advisory lock key of the single writer ("writ").
const WRITER_LOCK: i64 = 0x7772_6974;
/// Rows fetched per round trip when scanning.
const SCAN_BATCH: i64 = 10_000;

pub(crate) struct Pg {
    client: Client,
    /// Prepared statements of the state SQL (a constant set), so that each statement inside
    /// the writer's transaction is one round trip, not two.
    statements: std::collections::HashMap<String, postgres::Statement>,
}

fn err(e: postgres::Error) -> StoreError {
    if e.is_closed() {
        return StoreError::Unavailable(format!("connection lost: {e}"));
    }
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => {
            StoreError::Busy(format!("{e} (another writer, or a reused index: refused)"))
        }
        Some(c) if *c == SqlState::DATA_CORRUPTED || *c == SqlState::INDEX_CORRUPTED => {
            StoreError::Corrupt(e.to_string())
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

impl Pg {
    pub(crate) fn open(url: &str) -> Result<Self, StoreError> {
        // The connection string may hold a password: errors name the failure, not the string.
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Config(format!("PostgreSQL connection string: {e}")))?;
        // A partition or a hung server must turn into an error, not a writer blocked forever.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        config
            .keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(10))
            .tcp_user_timeout(std::time::Duration::from_secs(30));
        let mut client = config
            .connect(NoTls)
            .map_err(|e| StoreError::Unavailable(format!("PostgreSQL connection: {e}")))?;
        let sync: String = client
            .query_one("SHOW synchronous_commit", &[])
            .map_err(err)?
            .get(0);
        let fsync: String = client.query_one("SHOW fsync", &[]).map_err(err)?.get(0);
        if fsync == "off" {
            return Err(StoreError::Config(
                "PostgreSQL fsync is off: commits would not survive a crash".into(),
            ));
        }
        if sync == "off" {
            return Err(StoreError::Config(
                "PostgreSQL synchronous_commit is off: commits would not be durable when they return"
                    .into(),
            ));
        }
        Ok(Pg {
            client,
            statements: std::collections::HashMap::new(),
        })
    }
}

impl Pg {
    fn prepared(&mut self, sql: &str) -> Result<postgres::Statement, StoreError> {
        if let Some(st) = self.statements.get(sql) {
            return Ok(st.clone());
        }
        let st = self.client.prepare(sql).map_err(err)?;
        // The state SQL is a small constant set; a bound keeps a misuse from growing this.
        if self.statements.len() < 256 {
            self.statements.insert(sql.to_string(), st.clone());
        }
        Ok(st)
    }
}

impl Backend for Pg {
    fn migrate(&mut self) -> Result<u32, StoreError> {
        self.client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS writ_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .map_err(err)?;
        let current: Option<i64> = self
            .client
            .query_one("SELECT MAX(version) FROM writ_schema", &[])
            .map_err(err)?
            .get(0);
        let current = u32::try_from(current.unwrap_or(0))
            .map_err(|_| StoreError::Schema("schema version out of range".into()))?;
        if current > SCHEMA_VERSION {
            return Err(StoreError::Schema(format!(
                "the store is at schema {current}, this writ knows {SCHEMA_VERSION}: refusing to run an older writ on it"
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            let mut tx = self.client.transaction().map_err(err)?;
            tx.batch_execute(&migration_sql(sql, "BIGINT", "BYTEA"))
                .map_err(|e| StoreError::Schema(format!("migration {version}: {e}")))?;
            tx.execute(
                "INSERT INTO writ_schema (version, applied_at) VALUES ($1, EXTRACT(EPOCH FROM now())::BIGINT)",
                &[&i64::from(*version)],
            )
            .map_err(err)?;
            tx.commit().map_err(err)?;
        }
        Ok(SCHEMA_VERSION)
    }

    fn lock_writer(&mut self) -> Result<(), StoreError> {
        let got: bool = self
            .client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&WRITER_LOCK])
            .map_err(err)?
            .get(0);
        if got {
            Ok(())
        } else {
            Err(StoreError::Busy(
                "another writ process writes this PostgreSQL database".into(),
            ))
        }
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        self.client.batch_execute("BEGIN").map_err(err)
    }

    // PostgreSQL answers COMMIT of a transaction aborted by an earlier error with a silent
    // ROLLBACK. That cannot pass for success here: every statement error of a batch returns
    // before commit() is called (the writer then rolls back and reconnects).
    fn commit(&mut self) -> Result<(), StoreError> {
        self.client.batch_execute("COMMIT").map_err(err)
    }

    fn rollback(&mut self) {
        let _ = self.client.batch_execute("ROLLBACK");
    }

    fn insert_leaves(&mut self, rows: &[LeafRow]) -> Result<(), StoreError> {
        let idx = rows
            .iter()
            .map(|r| to_i64(r.idx, "leaf index"))
            .collect::<Result<Vec<_>, _>>()?;
        let hashes: Vec<&[u8]> = rows.iter().map(|r| &r.hash[..]).collect();
        let records: Vec<&[u8]> = rows.iter().map(|r| r.record.as_slice()).collect();
        self.client
            .execute(
                "INSERT INTO log_leaves (idx, leaf_hash, record)
                 SELECT * FROM UNNEST($1::BIGINT[], $2::BYTEA[], $3::BYTEA[])",
                &[&idx, &hashes, &records],
            )
            .map_err(err)?;
        Ok(())
    }

    fn insert_nodes(&mut self, rows: &[NodeRow]) -> Result<(), StoreError> {
        let level: Vec<i64> = rows.iter().map(|r| i64::from(r.level)).collect();
        let idx = rows
            .iter()
            .map(|r| to_i64(r.idx, "node index"))
            .collect::<Result<Vec<_>, _>>()?;
        let hashes: Vec<&[u8]> = rows.iter().map(|r| &r.hash[..]).collect();
        self.client
            .execute(
                "INSERT INTO log_nodes (level, idx, hash)
                 SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::BYTEA[])",
                &[&level, &idx, &hashes],
            )
            .map_err(err)?;
        Ok(())
    }

    fn insert_checkpoint(&mut self, cp: &StoredCheckpoint) -> Result<(), StoreError> {
        self.client
            .execute(
                "INSERT INTO log_checkpoints (size, root, note, signed_at) VALUES ($1, $2, $3, $4)",
                &[
                    &to_i64(cp.size, "checkpoint size")?,
                    &&cp.root[..],
                    &cp.note,
                    &cp.signed_at,
                ],
            )
            .map_err(err)?;
        Ok(())
    }

    fn leaf_count(&mut self) -> Result<u64, StoreError> {
        let n: i64 = self
            .client
            .query_one("SELECT COUNT(*) FROM log_leaves", &[])
            .map_err(err)?
            .get(0);
        to_u64(n, "leaf count")
    }

    fn leaf(&mut self, idx: u64) -> Result<Option<(Hash, Vec<u8>)>, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT leaf_hash, record FROM log_leaves WHERE idx = $1",
                &[&to_i64(idx, "leaf index")?],
            )
            .map_err(err)?;
        row.map(|r| {
            let h: Vec<u8> = r.get(0);
            Ok((hash_from(&h, "leaf hash")?, r.get(1)))
        })
        .transpose()
    }

    fn scan_leaves(&mut self, from: u64, f: &mut LeafVisitor<'_>) -> Result<(), StoreError> {
        let mut next = to_i64(from, "leaf index")?;
        loop {
            let rows = self
                .client
                .query(
                    "SELECT idx, leaf_hash, record FROM log_leaves WHERE idx >= $1 ORDER BY idx LIMIT $2",
                    &[&next, &SCAN_BATCH],
                )
                .map_err(err)?;
            let Some(last) = rows.last() else {
                return Ok(());
            };
            next = last.get::<_, i64>(0).saturating_add(1);
            for r in &rows {
                let idx: i64 = r.get(0);
                let h: &[u8] = r.get(1);
                let rec: &[u8] = r.get(2);
                f(to_u64(idx, "leaf index")?, hash_from(h, "leaf hash")?, rec)?;
            }
        }
    }

    fn leaf_range(&mut self, from: u64, count: u64) -> Result<Vec<(Hash, Vec<u8>)>, StoreError> {
        let end = from.saturating_add(count);
        let rows = self
            .client
            .query(
                "SELECT leaf_hash, record FROM log_leaves WHERE idx >= $1 AND idx < $2 ORDER BY idx",
                &[&to_i64(from, "leaf index")?, &to_i64(end, "leaf index")?],
            )
            .map_err(err)?;
        rows.iter()
            .map(|r| {
                let h: &[u8] = r.get(0);
                Ok((hash_from(h, "leaf hash")?, r.get(1)))
            })
            .collect()
    }

    fn node_range(&mut self, level: u32, from: u64, count: u64) -> Result<Vec<Hash>, StoreError> {
        let end = from.saturating_add(count);
        let rows = self
            .client
            .query(
                "SELECT hash FROM log_nodes WHERE level = $1 AND idx >= $2 AND idx < $3 ORDER BY idx",
                &[
                    &i64::from(level),
                    &to_i64(from, "node index")?,
                    &to_i64(end, "node index")?,
                ],
            )
            .map_err(err)?;
        rows.iter()
            .map(|r| {
                let h: &[u8] = r.get(0);
                hash_from(h, "node hash")
            })
            .collect()
    }

    fn node_count(&mut self) -> Result<u64, StoreError> {
        let n: i64 = self
            .client
            .query_one("SELECT COUNT(*) FROM log_nodes", &[])
            .map_err(err)?
            .get(0);
        to_u64(n, "node count")
    }

    fn node(&mut self, level: u32, idx: u64) -> Result<Option<Hash>, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT hash FROM log_nodes WHERE level = $1 AND idx = $2",
                &[&i64::from(level), &to_i64(idx, "node index")?],
            )
            .map_err(err)?;
        row.map(|r| {
            let h: &[u8] = r.get(0);
            hash_from(h, "node hash")
        })
        .transpose()
    }

    fn index_of(&mut self, leaf_hash: &Hash) -> Result<Option<u64>, StoreError> {
        let i: Option<i64> = self
            .client
            .query_one(
                "SELECT MIN(idx) FROM log_leaves WHERE leaf_hash = $1",
                &[&&leaf_hash[..]],
            )
            .map_err(err)?
            .get(0);
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
        let rows = self
            .client
            .query(
                "SELECT size, root, note, signed_at FROM log_checkpoints WHERE size >= $1 ORDER BY size LIMIT $2",
                &[&to_i64(from, "size")?, &i64::try_from(limit).unwrap_or(i64::MAX)],
            )
            .map_err(err)?;
        rows.iter().map(stored_checkpoint).collect()
    }

    fn latest_checkpoint(&mut self) -> Result<Option<StoredCheckpoint>, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT size, root, note, signed_at FROM log_checkpoints ORDER BY size DESC LIMIT 1",
                &[],
            )
            .map_err(err)?;
        row.as_ref().map(stored_checkpoint).transpose()
    }

    fn max_leaf_index(&mut self) -> Result<Option<u64>, StoreError> {
        let i: Option<i64> = self
            .client
            .query_one("SELECT MAX(idx) FROM log_leaves", &[])
            .map_err(err)?
            .try_get(0)
            .map_err(err)?;
        i.map(|i| to_u64(i, "leaf index")).transpose()
    }

    fn read_only(&mut self) -> Result<(), StoreError> {
        self.client
            .batch_execute("SET default_transaction_read_only = on")
            .map_err(err)
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.client.batch_execute(sql).map_err(err)
    }

    fn exec(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let st = self.prepared(sql)?;
        let bound = bind(params);
        let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|b| b.as_ref()).collect();
        self.client.execute(&st, &refs).map_err(err)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, StoreError> {
        let st = self.prepared(sql)?;
        let bound = bind(params);
        let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|b| b.as_ref()).collect();
        let rows = self.client.query(&st, &refs).map_err(err)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut row = Vec::with_capacity(r.len());
            for (i, c) in r.columns().iter().enumerate() {
                let t = c.type_();
                let v = if *t == Type::INT8 {
                    r.try_get::<_, Option<i64>>(i).map_err(err)?.into()
                } else if *t == Type::INT4 {
                    r.try_get::<_, Option<i32>>(i)
                        .map_err(err)?
                        .map(i64::from)
                        .into()
                } else if *t == Type::BOOL {
                    r.try_get::<_, Option<bool>>(i)
                        .map_err(err)?
                        .map(i64::from)
                        .into()
                } else if *t == Type::TEXT || *t == Type::VARCHAR {
                    r.try_get::<_, Option<String>>(i).map_err(err)?.into()
                } else if *t == Type::BYTEA {
                    r.try_get::<_, Option<Vec<u8>>>(i).map_err(err)?.into()
                } else {
                    return Err(StoreError::Corrupt(format!(
                        "a column of type {t} in the state tables"
                    )));
                };
                row.push(v);
            }
            out.push(row);
        }
        Ok(out)
    }
}

/// SQL NULL for a parameter of any type.
#[derive(Debug)]
struct Null;

impl ToSql for Null {
    fn to_sql(
        &self,
        _: &Type,
        _: &mut postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        Ok(IsNull::Yes)
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    postgres::types::to_sql_checked!();
}

fn bind(params: &[Value]) -> Vec<Box<dyn ToSql + Sync>> {
    params
        .iter()
        .map(|v| -> Box<dyn ToSql + Sync> {
            match v {
                Value::Null => Box::new(Null),
                Value::Int(i) => Box::new(*i),
                Value::Text(t) => Box::new(t.clone()),
                Value::Blob(b) => Box::new(b.clone()),
            }
        })
        .collect()
}

fn stored_checkpoint(r: &postgres::Row) -> Result<StoredCheckpoint, StoreError> {
    let root: &[u8] = r.try_get(1).map_err(err)?;
    Ok(StoredCheckpoint {
        size: to_u64(r.try_get(0).map_err(err)?, "checkpoint size")?,
        root: hash_from(root, "checkpoint root")?,
        note: r.try_get(2).map_err(err)?,
        signed_at: r.try_get(3).map_err(err)?,
    })
}
