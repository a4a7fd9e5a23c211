//! A `writ serve` under test with its devices: a swtpm runtime, a SoftHSM2 token holding the
//! checkpoint key, a SQLite or PostgreSQL store, an admin token; and the calls the tests make.

use std::path::PathBuf;
use std::process::{Command, Output};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use writ_attestation::log::record::DecisionRecord;
use writ_testkit::{Postgres, SoftHsm, Swtpm};

use super::{Served, agent};

#[derive(Clone, Copy)]
pub enum Engine {
    Sqlite,
    Postgres,
}

pub const TD: &str = "writ.test";

pub struct Stack {
    pub tpm: Swtpm,
    pub hsm: SoftHsm,
    pub dir: tempfile::TempDir,
    pub key: String,
    /// The `ear` key's URI (in the token).
    pub ear_key: String,
    /// The `issuer` key's URI (in the token; empty: an appliance without one).
    pub issuer_key: String,
    /// The `ca` key's URI (in the token; empty: plain HTTP on loopback).
    pub ca_key: String,
    pub server: Option<Served>,
    pub roots: Vec<PathBuf>,
    pub store: String,
    pub _pg: Option<Postgres>,
    pub extra: Vec<String>,
}

/// The EK roots (issuer and local root CA certificates) of swtpms.
pub fn roots_of(tpms: &[&Swtpm]) -> Vec<PathBuf> {
    tpms.iter()
        .flat_map(|t| {
            [
                t.ca_dir().join("issuercert.pem"),
                t.ca_dir().join("swtpm-localca-rootca-cert.pem"),
            ]
        })
        .collect()
}

pub fn writ_cmd(hsm: &SoftHsm) -> Command {
    super::writ(Some(hsm))
}

impl Stack {
    pub fn new() -> Stack {
        Stack::on(Engine::Sqlite, &[])
    }

    pub fn on(engine: Engine, extra: &[&str]) -> Stack {
        let tpm = Swtpm::start();
        let roots = roots_of(&[&tpm]);
        Stack::build(tpm, roots, engine, extra)
    }

    /// With the `ca` key in the token: TLS.
    pub fn tls() -> Stack {
        Stack::tls_with(&[])
    }

    /// TLS, with `extra` flags.
    pub fn tls_with(extra: &[&str]) -> Stack {
        let tpm = Swtpm::start();
        let roots = roots_of(&[&tpm]);
        Stack::make(tpm, roots, Engine::Sqlite, extra, true)
    }

    /// A stack (SQLite, `extra` flags) trusting two swtpms' EK roots; the second swtpm (a distinct
    /// EK and CA) for a second runtime.
    pub fn with_second_tpm(extra: &[&str]) -> (Stack, Swtpm) {
        let tpm = Swtpm::start();
        let other = Swtpm::start_second();
        let roots = roots_of(&[&tpm, &other]);
        (Stack::build(tpm, roots, Engine::Sqlite, extra), other)
    }

    pub fn with_roots(tpm: Swtpm, roots: Vec<PathBuf>) -> Stack {
        Stack::build(tpm, roots, Engine::Sqlite, &[])
    }

    pub fn build(tpm: Swtpm, roots: Vec<PathBuf>, engine: Engine, extra: &[&str]) -> Stack {
        Stack::make(tpm, roots, engine, extra, false)
    }

    fn make(tpm: Swtpm, roots: Vec<PathBuf>, engine: Engine, extra: &[&str], tls: bool) -> Stack {
        let hsm = SoftHsm::new();
        let dir = tempfile::tempdir().unwrap();
        let key = super::softhsm_key(&hsm, "checkpoint", "checkpoint");
        let ear_key = super::softhsm_key(&hsm, "ear", "ear");
        let issuer_key = super::softhsm_key(&hsm, "issuer", "issuer");
        let ca_key = if tls {
            super::softhsm_key(&hsm, "ca", "ca")
        } else {
            String::new()
        };
        writ_testkit::write_secret(&dir.path().join("admin.token"), "admin-token-0123456789");
        let (store, pg) = match engine {
            Engine::Sqlite => (
                format!("sqlite:{}", dir.path().join("writ.db").display()),
                None,
            ),
            Engine::Postgres => {
                let pg = Postgres::database();
                (pg.url(), Some(pg))
            }
        };
        let mut s = Stack {
            tpm,
            hsm,
            dir,
            key,
            ear_key,
            issuer_key,
            ca_key,
            server: None,
            roots,
            store,
            _pg: pg,
            extra: extra.iter().map(|e| e.to_string()).collect(),
        };
        s.start();
        s
    }

    pub fn start(&mut self) {
        let mut cmd = writ_cmd(&self.hsm);
        cmd.args([
            "serve",
            "--store",
            &self.store,
            "--checkpoint-key",
            &self.key,
            "--origin",
            "writ.test/log",
            "--listen",
            "127.0.0.1:0",
            "--trust-domain",
            TD,
            "--admin-token-file",
            self.dir.path().join("admin.token").to_str().unwrap(),
        ]);
        // An empty ear key: an appliance without one.
        if !self.ear_key.is_empty() {
            cmd.args(["--ear-key", &self.ear_key]);
        }
        if !self.issuer_key.is_empty() {
            cmd.args(["--issuer-key", &self.issuer_key]);
        }
        if !self.ca_key.is_empty() {
            cmd.args(["--ca-key", &self.ca_key]);
        }
        for r in &self.roots {
            cmd.arg("--ek-roots").arg(r);
        }
        cmd.args(&self.extra);
        self.server = Some(super::serve(cmd));
    }

    /// kill -9, and start again on the same store.
    pub fn kill_and_restart(&mut self) {
        // Dropping the server kills it with SIGKILL.
        drop(self.server.take());
        self.start();
    }

    pub fn url(&self) -> String {
        self.server.as_ref().unwrap().url.clone()
    }

    pub fn writ(&self, args: &[&str]) -> Output {
        writ_cmd(&self.hsm).args(args).output().unwrap()
    }

    pub fn admin(&self, args: &[&str]) -> Output {
        let url = self.url();
        let token = self.dir.path().join("admin.token");
        let fp = self.server.as_ref().and_then(|s| s.fingerprint.clone());
        let mut all = vec![
            "admin",
            "--server",
            &url,
            "--token-file",
            token.to_str().unwrap(),
        ];
        if let Some(fp) = &fp {
            all.extend(["--fingerprint", fp.as_str()]);
        }
        all.extend(args);
        self.writ(&all)
    }

    pub fn join_token(&self, name: &str, ttl: &str) -> PathBuf {
        let out = self.admin(&["join-token", "--name", name, "--ttl", ttl]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let p = self
            .dir
            .path()
            .join(format!("{name}-{}.token", writ_testkit::random_hex(4)));
        std::fs::write(&p, v["token"].as_str().unwrap()).unwrap();
        p
    }

    pub fn post(&self, path: &str, body: &Value, bearer: Option<&str>) -> (u16, Value) {
        raw_post(&self.url(), path, body.to_string().as_bytes(), bearer)
    }

    /// Every durable record in the log (checkpoints may lag by a second; records do not).
    /// Waits until the latest checkpoint covers every record so far.
    pub fn covered(&self) {
        let want = self.records().len();
        for _ in 0..100 {
            let (_, note) = get(&self.url(), "/v1/log/checkpoint");
            let size: usize = note
                .lines()
                .nth(1)
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            if size >= want {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("no checkpoint covers the log's {want} records");
    }

    pub fn records(&self) -> Vec<DecisionRecord> {
        let mut out = Vec::new();
        loop {
            let (st, r) = get(&self.url(), &format!("/v1/log/records/{}", out.len()));
            if st != 200 {
                return out;
            }
            let v: Value = serde_json::from_str(&r).unwrap();
            out.push(
                DecisionRecord::from_leaf(&STANDARD.decode(v["record"].as_str().unwrap()).unwrap())
                    .unwrap(),
            );
        }
    }

    /// The last record's (subject, decision, reasons).
    pub fn last(&self) -> (String, String, Vec<String>) {
        let r = self.records().pop().expect("a record");
        let d = serde_json::to_value(r.decision).unwrap();
        (r.subject, d.as_str().unwrap().to_string(), r.reasons)
    }
}

pub fn raw_post(url: &str, path: &str, body: &[u8], bearer: Option<&str>) -> (u16, Value) {
    let mut r = agent()
        .post(format!("{url}{path}"))
        .header("Content-Type", "application/json");
    if let Some(b) = bearer {
        r = r.header("Authorization", format!("Bearer {b}"));
    }
    let mut resp = r.send(body).unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub fn get(url: &str, path: &str) -> (u16, String) {
    let mut resp = agent().get(format!("{url}{path}")).call().unwrap();
    (
        resp.status().as_u16(),
        resp.body_mut().read_to_string().unwrap(),
    )
}
