//! A real PostgreSQL for tests: one cluster per user of this machine (initdb'd and started on first
//! use under the harness's directory, on a leased loopback port, left running for the next test
//! process), and a fresh database per test.
//!
//! `WRIT_TEST_PG` (a libpq key/value string without `dbname`, e.g. `host=127.0.0.1 port=5433
//! user=postgres`) points the tests at a server started elsewhere (CI's `.ci/run` starts one on a
//! private data directory).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A database of its own for one test (dropped with the test's process: databases are cheap and
/// the cluster is private to this user).
#[derive(Debug, Clone)]
pub struct Postgres {
    base: String,
    dbname: String,
}

fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.pop()
        .filter(|d| d.join("initdb").exists())
        .expect("PostgreSQL server binaries (apt-get install postgresql)")
}

/// Runs a server-side command: as the `postgres` user when we are root (PostgreSQL refuses root).
fn server_cmd(program: &Path) -> Command {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    // pg_ctl starts the server, which lives on: nothing of this process may leak into it.
    if root {
        let mut c = crate::daemon("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        crate::daemon(program)
    }
}

fn run(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The per-user cluster's base connection string, starting it if needed.
fn cluster() -> String {
    if let Ok(base) = std::env::var("WRIT_TEST_PG") {
        return base;
    }
    let dir = crate::swtpm::user_dir().join("pg");
    std::fs::create_dir_all(&dir).expect("pg dir");
    let lock = std::fs::File::create(dir.join("lock")).expect("pg lock");
    lock.lock().expect("pg lock");
    let data = dir.join("data");
    let port_file = dir.join("port");
    let bin = bin_dir();
    if !data.join("PG_VERSION").exists() {
        std::fs::create_dir_all(&data).expect("pg data dir");
        let _ = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&data)
            .status();
        let _ = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&dir)
            .status();
        let mut c = server_cmd(&bin.join("initdb"));
        c.args(["-D"]).arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        ]);
        run(c, "initdb");
        let lease = crate::lease_port_pair();
        std::fs::write(&port_file, lease.port.to_string()).expect("port file");
    }
    let port: u16 = std::fs::read_to_string(&port_file)
        .expect("port file")
        .trim()
        .parse()
        .expect("port");
    let mut status = server_cmd(&bin.join("pg_ctl"));
    status.arg("-D").arg(&data).arg("status");
    let running = status.output().map(|o| o.status.success()).unwrap_or(false);
    if !running {
        let mut c = server_cmd(&bin.join("pg_ctl"));
        c.arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(data.join("server.log"))
            .arg("-w")
            .arg("-o")
            .arg(format!(
                "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=200 -c fsync=on -c synchronous_commit=on"
            ))
            .arg("start");
        run(c, "pg_ctl start");
    }
    drop(lock);
    format!("host=127.0.0.1 port={port} user=postgres")
}

impl Postgres {
    /// A fresh, empty database.
    pub fn database() -> Postgres {
        let base = cluster();
        let dbname = format!("writ_test_{}", crate::random_hex(8));
        let mut c = Command::new("psql");
        c.arg(format!("{base} dbname=postgres"))
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-c"])
            .arg(format!("CREATE DATABASE {dbname}"));
        run(c, "CREATE DATABASE");
        Postgres { base, dbname }
    }

    /// The connection string of this database.
    pub fn url(&self) -> String {
        format!("{} dbname={}", self.base, self.dbname)
    }

    /// Runs SQL in this database with psql (for tests that tamper with what is stored).
    pub fn psql(&self, sql: &str) -> String {
        let mut c = Command::new("psql");
        c.arg(self.url())
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-t", "-A", "-c"])
            .arg(sql);
        run(c, "psql")
    }
}
