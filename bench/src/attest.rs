//! Attestations per second through `writ serve` over HTTPS on loopback, with simulated attesters.
//!
//! The appliance is the release `writ serve` binary, unchanged: TLS with its `ca` key, checkpoint
//! and `ear` keys in a private SoftHSM2 token, a SQLite store, every durable write through the
//! group-commit writer. The attesters are simulated in software (a TPM per runtime would need as
//! many swtpm processes, each with its own EK): each has an ECC P-256 EK whose certificate
//! `swtpm_cert` issues under a bench-only EK CA that only this run's appliance trusts
//! (`--ek-roots`), a software AK and holder key with TPM public areas, and answers the
//! appliance's credential challenge with a software ActivateCredential. Nothing in the server is
//! bypassed: enrollment, nonces, quote and certify verification, the replay and appraisal of
//! Keylime's 49 KB event log, the counters, the state write, the decision record and the EAR
//! signature in SoftHSM2 all run as they do for a real TPM.
//!
//! Each worker thread drives one runtime over one keep-alive connection: ask for a nonce, quote
//! and certify in software, send the evidence, check the answer is affirming. Reported: rate,
//! p50 / p99 latency of the two requests together, and the CPU time of the server and of this
//! load generator (from /proc).
//!
//! With `--writs`, the workers ask for execution writs instead; with `--in-process` too, the server
//! then stops and the same issuance pipeline is measured in this process, and the decision log alone.
//! With `--sign`, they ask the signing service for raw signatures over a digest
//! (`POST /v1/sign/artifacts`: EAR, DPoP proof, Cedar, the `artifacts` key's signature in SoftHSM2, the
//! `sign` record).
//!
//! usage: cargo build --release --bin writ && \
//!        cargo run --release -p writ-bench --bin attest-bench -- [--seconds S] [--workers N] \
//!            [--writs [--in-process] | --sign]
#![forbid(unsafe_code)]
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod machine;
mod tpmsim;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Parser;
use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::elliptic_curve::sec1::ToSec1Point;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tpmsim::{name_of, sign_attest, tpmt_ecc};
use writ_attestation::appraisal::capture;
use writ_attestation::crypto::AwsLc;
use writ_attestation::evidence::{CheckedAk, Nonce, verify_quote};
use writ_attestation::tpm::HashAlg;
use writ_attestation::tpm::attest::{
    Attest, Attested, ClockInfo, ST_ATTEST_CERTIFY, ST_ATTEST_QUOTE, TPM_GENERATED,
};
use writ_attestation::tpm::pcr::{PcrSelection, PcrValues};

#[derive(Debug, Parser)]
struct Args {
    /// Seconds measured (after a 2 s warm-up).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Concurrent simulated runtimes (one connection and one thread each).
    #[arg(long, default_value_t = 32)]
    workers: usize,
    /// The writ binary (default: beside this one; build it with `cargo build --release --bin writ`).
    #[arg(long)]
    writ: Option<PathBuf>,
    /// Measure writ requests (`POST /v1/writs`, a Cedar decision, the issuer's signature in
    /// SoftHSM2, the record) by attested runtimes instead of attestations.
    #[arg(long)]
    writs: bool,
    /// With --writs: then stop the server and measure the same issuance pipeline in this
    /// process (`Appliance::issue` on the same store, keys and runtimes, no HTTP or TLS), and
    /// the decision log alone (the same record appended through the same group-commit writer),
    /// for the HTTP/in-process ratio and the log's share of a writ's cost.
    #[arg(long, requires = "writs")]
    in_process: bool,
    /// Measure signatures (`POST /v1/sign/artifacts` over a SHA-256 digest) by attested runtimes.
    #[arg(long, conflicts_with = "writs")]
    sign: bool,
    /// With --sign: DSSE envelopes over an in-toto Statement naming one subject
    /// (`POST /v1/sign/release`) instead of raw signatures.
    #[arg(long, requires = "sign")]
    envelope: bool,
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}

/// A P-256 key from the OS RNG.
fn random_key() -> p256::SecretKey {
    loop {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).unwrap();
        if let Ok(k) = p256::SecretKey::from_slice(&b) {
            return k;
        }
    }
}

type HmacSha256 = hmac::Hmac<sha2_010::Sha256>;

fn hmac256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    use hmac::Mac;
    let mut m = HmacSha256::new_from_slice(key).unwrap();
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

/// KDFa with SHA-256 (TPM 2.0 Part 1): SP 800-108 counter mode, label followed by a zero byte.
fn kdfa(key: &[u8], label: &[u8], u: &[u8], v: &[u8], bits: u32) -> Vec<u8> {
    let bytes = (bits as usize).div_ceil(8);
    let mut out = Vec::new();
    let mut counter = 1u32;
    while out.len() < bytes {
        out.extend(hmac256(
            key,
            &[
                &counter.to_be_bytes(),
                label,
                &[0],
                u,
                v,
                &bits.to_be_bytes(),
            ],
        ));
        counter += 1;
    }
    out.truncate(bytes);
    out
}

fn tpm2b(data: &[u8]) -> (&[u8], &[u8]) {
    let n = usize::from(u16::from_be_bytes([data[0], data[1]]));
    (&data[2..2 + n], &data[2 + n..])
}

/// TPM2_ActivateCredential in software for an ECC P-256 EK: the seed from ECDH with the
/// ephemeral point and KDFe("IDENTITY"), the HMAC checked, the credential decrypted.
fn activate(ek: &p256::SecretKey, ak_name: &[u8], id_object: &[u8], secret: &[u8]) -> Vec<u8> {
    let (ex, rest) = tpm2b(secret);
    let (ey, _) = tpm2b(rest);
    let mut sec1 = vec![0x04];
    sec1.extend_from_slice(ex);
    sec1.extend_from_slice(ey);
    let eph = p256::PublicKey::from_sec1_bytes(&sec1).unwrap();
    let shared = p256::ecdh::diffie_hellman(ek.to_nonzero_scalar(), eph.as_affine());
    let ek_point = ek.public_key().to_sec1_point(false);
    let mut data = 1u32.to_be_bytes().to_vec();
    data.extend_from_slice(shared.raw_secret_bytes());
    data.extend_from_slice(b"IDENTITY\0");
    data.extend_from_slice(ex);
    data.extend_from_slice(ek_point.x().unwrap());
    let seed = Sha256::digest(&data).to_vec();
    let (outer, enc_identity) = tpm2b(id_object);
    let hmac_key = kdfa(&seed, b"INTEGRITY", &[], &[], 256);
    assert_eq!(
        hmac256(&hmac_key, &[enc_identity, ak_name]),
        outer,
        "credential integrity"
    );
    let sym = kdfa(&seed, b"STORAGE", ak_name, &[], 128);
    let mut plain = enc_identity.to_vec();
    {
        use cfb_mode::cipher::{AsyncStreamCipher, KeyIvInit};
        cfb_mode::Decryptor::<aes::Aes128>::new_from_slices(&sym, &[0u8; 16])
            .unwrap()
            .decrypt(&mut plain);
    }
    tpm2b(&plain).0.to_vec()
}

/// One simulated runtime.
struct Sim {
    name: String,
    ak: p256::ecdsa::SigningKey,
    ak_name: Vec<u8>,
    holder_public: String,
    holder_name: Vec<u8>,
    holder: p256::ecdsa::SigningKey,
    clock: u64,
    /// The EAR of the last attestation.
    ear: String,
}

struct Appliance {
    child: Child,
    url: String,
    agent: ureq::Agent,
    token: String,
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent(ca_der: &[u8]) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![
            ureq::tls::Certificate::from_der(ca_der).to_owned(),
        ])))
        .build();
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .tls_config(tls)
        .build()
        .new_agent()
}

fn post(agent: &ureq::Agent, url: &str, body: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut r = agent.post(url).header("Content-Type", "application/json");
    if let Some(t) = bearer {
        r = r.header("Authorization", format!("Bearer {t}"));
    }
    let mut resp = r.send(body.as_bytes()).unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn start(writ: &Path, dir: &Path, hsm: &writ_testkit::SoftHsm, roots: &Path) -> Appliance {
    let key = |object: &str, purpose: &str| {
        let uri = hsm.key_uri(object);
        run(Command::new(writ).env("SOFTHSM2_CONF", hsm.conf()).args([
            "keys",
            "generate",
            "--key",
            &uri,
            "--purpose",
            purpose,
        ]));
        uri
    };
    let (checkpoint, ear, ca, issuer, artifacts, release) = (
        key("checkpoint", "checkpoint"),
        key("ear", "ear"),
        key("ca", "ca"),
        key("issuer", "issuer"),
        key("artifacts", "signing"),
        key("release", "signing"),
    );
    let token = "bench-admin-token-0123456789".to_string();
    writ_testkit::write_secret(&dir.join("admin.token"), &token);
    let db = dir.join("writ.db");
    let mut child = Command::new(writ)
        .env("SOFTHSM2_CONF", hsm.conf())
        .env("WRIT_LOG", "warn")
        .args(["serve", "--store"])
        .arg(format!("sqlite:{}", db.display()))
        .args([
            "--checkpoint-key",
            &checkpoint,
            "--ear-key",
            &ear,
            "--ca-key",
            &ca,
            "--issuer-key",
            &issuer,
            "--signing-key",
            &format!("artifacts=digest:{artifacts}"),
            "--signing-key",
            &format!("release=dsse:{release}"),
        ])
        .args(["--listen", "127.0.0.1:0", "--trust-domain", "writ.bench"])
        .arg("--ek-roots")
        .arg(roots)
        .arg("--admin-token-file")
        .arg(dir.join("admin.token"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut url = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(u) = line.strip_prefix("writ serve: listening on ") {
            url = Some(u.to_string());
        }
        if line.starts_with("writ serve: checkpoint verifier key") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let pem = std::fs::read_to_string(dir.join("writ.db.ca.pem")).unwrap();
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>();
    let der = STANDARD.decode(b64).unwrap();
    Appliance {
        child,
        url: url.expect("writ serve printed its address"),
        agent: agent(&der),
        token,
    }
}

/// A bench-only EK CA (openssl) in `dir`: (key, certificate).
fn ek_ca(dir: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join("ekca.key");
    let cert = dir.join("ekca.pem");
    run(Command::new("openssl")
        .args([
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-noout",
            "-out",
        ])
        .arg(&key));
    run(Command::new("openssl")
        .args(["req", "-x509", "-new", "-key"])
        .arg(&key)
        .args([
            "-subj",
            "/CN=writ bench EK CA (not a TPM manufacturer)",
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
        ])
        .arg(&cert));
    (key, cert)
}

/// Enrolls a simulated runtime `name` and returns it.
fn enroll(app: &Appliance, dir: &Path, ca: &(PathBuf, PathBuf), name: &str, serial: u32) -> Sim {
    let ek = random_key();
    let point = ek.public_key().to_sec1_point(false);
    let cert_file = dir.join(format!("{name}.ek.der"));
    run(Command::new("swtpm_cert")
        .args(["--tpm2", "--ecc-curveid", "secp256r1", "--ecc-x"])
        .arg(hex::encode(point.x().unwrap()))
        .arg("--ecc-y")
        .arg(hex::encode(point.y().unwrap()))
        .arg("--signkey")
        .arg(&ca.0)
        .arg("--issuercert")
        .arg(&ca.1)
        .arg("--out-cert")
        .arg(&cert_file)
        .args(["--days", "2", "--serial"])
        .arg(serial.to_string())
        .args([
            "--tpm-manufacturer",
            "id:00001014",
            "--tpm-model",
            "writ-bench-simulated",
            "--tpm-version",
            "id:00000001",
            "--tpm-spec-family",
            "2.0",
            "--tpm-spec-level",
            "0",
            "--tpm-spec-revision",
            "164",
            "--subject",
            "CN=writ bench simulated EK",
        ]));
    let ek_cert = std::fs::read(&cert_file).unwrap();
    let ak = p256::ecdsa::SigningKey::from(random_key());
    let ak_public = tpmt_ecc(tpmsim::AK, ak.verifying_key());
    let ak_name = name_of(&ak_public);
    let admin = Some(app.token.as_str());
    let (st, t) = post(
        &app.agent,
        &format!("{}/v1/admin/join-tokens", app.url),
        &json!({"name": name, "ttl_seconds": 600}).to_string(),
        admin,
    );
    assert_eq!(st, 200, "{t}");
    let (st, ch) = post(
        &app.agent,
        &format!("{}/v1/enroll", app.url),
        &json!({
            "ek_certificate": STANDARD.encode(&ek_cert),
            "ak_public": STANDARD.encode(&ak_public),
            "join_token": t["token"],
        })
        .to_string(),
        None,
    );
    assert_eq!(st, 200, "{ch}");
    let f = |k: &str| STANDARD.decode(ch[k].as_str().unwrap()).unwrap();
    let secret = activate(&ek, &ak_name, &f("id_object"), &f("encrypted_secret"));
    let (st, v) = post(
        &app.agent,
        &format!("{}/v1/enroll/activate", app.url),
        &json!({"enrollment": ch["enrollment"], "secret": STANDARD.encode(&secret)}).to_string(),
        None,
    );
    assert_eq!(st, 200, "{v}");
    let holder = p256::ecdsa::SigningKey::from(random_key());
    let holder_public = tpmt_ecc(tpmsim::HOLDER, holder.verifying_key());
    Sim {
        name: name.to_string(),
        ak,
        ak_name,
        holder_name: name_of(&holder_public),
        holder_public: STANDARD.encode(&holder_public),
        holder,
        ear: String::new(),
        clock: 1,
    }
}

/// One attestation: nonce, software quote and certify, evidence. Returns whether it was
/// affirmed.
fn attest_once(
    app_url: &str,
    agent: &ureq::Agent,
    sim: &mut Sim,
    log_b64: &str,
    pcrs: &PcrValues,
    pcrs_json: &Value,
) -> Result<(), String> {
    let (st, n) = post(
        agent,
        &format!("{app_url}/v1/attest/nonce"),
        &json!({"name": sim.name}).to_string(),
        None,
    );
    if st != 200 {
        return Err(format!("nonce: {st} {n}"));
    }
    let nonce = STANDARD.decode(n["nonce"].as_str().unwrap()).unwrap();
    let selection: PcrSelection = n["selection"].as_str().unwrap().parse().unwrap();
    sim.clock += 10;
    let clock_info = ClockInfo {
        clock: sim.clock,
        reset_count: 1,
        restart_count: 0,
        safe: true,
    };
    let (quote, quote_sig, _) = sign_attest(
        &sim.ak,
        &Attest {
            magic: TPM_GENERATED,
            kind: ST_ATTEST_QUOTE,
            qualified_signer: sim.ak_name.clone(),
            extra_data: nonce.clone(),
            clock_info,
            firmware_version: 1,
            attested: Attested::Quote {
                selection: selection.clone(),
                pcr_digest: pcrs.digest(&selection, HashAlg::Sha256).unwrap(),
            },
        },
    );
    let (certify, certify_sig, _) = sign_attest(
        &sim.ak,
        &Attest {
            magic: TPM_GENERATED,
            kind: ST_ATTEST_CERTIFY,
            qualified_signer: sim.ak_name.clone(),
            extra_data: nonce,
            clock_info,
            firmware_version: 1,
            attested: Attested::Certify {
                name: sim.holder_name.clone(),
                qualified_name: sim.holder_name.clone(),
            },
        },
    );
    // The body without its 65 KB log, serialized, and the log spliced in (a JSON string of
    // base64 needs no escaping): the generator's CPU is not what is measured.
    let small = json!({
        "name": sim.name,
        "nonce": n["nonce"],
        "quote": {"attest": STANDARD.encode(&quote), "signature": STANDARD.encode(&quote_sig)},
        "pcrs": pcrs_json,
        "holder": {
            "public": sim.holder_public,
            "certify": {"attest": STANDARD.encode(&certify), "signature": STANDARD.encode(&certify_sig)},
        },
    })
    .to_string();
    let mut body = String::with_capacity(small.len() + log_b64.len() + 16);
    body.push_str(&small[..small.len() - 1]);
    body.push_str(",\"event_log\":\"");
    body.push_str(log_b64);
    body.push_str("\"}");
    let (st, v) = post(agent, &format!("{app_url}/v1/attest"), &body, None);
    if st != 200 || v["status"] != "affirming" {
        return Err(format!("attest: {st} {v}"));
    }
    sim.ear = v["ear"].as_str().unwrap_or_default().to_string();
    Ok(())
}

/// The holder key in software as a JWS signer.
struct SoftHolder<'a>(&'a p256::ecdsa::SigningKey);

impl writ_attestation::writ::jws::Es256Signer for SoftHolder<'_> {
    fn sign_es256(&self, message: &[u8]) -> Result<[u8; 64], writ_attestation::writ::Refusal> {
        let digest: [u8; 32] = Sha256::digest(message).into();
        let sig: p256::ecdsa::Signature = self.0.sign_prehash(&digest).unwrap();
        Ok(sig.to_bytes().as_slice().try_into().unwrap())
    }
}

/// One writ request: a DPoP proof by the holder key with the EAR, `POST /v1/writs`.
fn writ_once(app_url: &str, agent: &ureq::Agent, sim: &Sim, n: u64) -> Result<(), String> {
    let proof = proof_for(app_url, sim);
    let body = json!({
        "action": "exec",
        "resource": format!("tools/build/{}", n % 64),
        "audience": "spiffe://writ.bench/gateway/tools",
        "req": format!("sha256:{}", hex::encode(Sha256::digest(n.to_be_bytes()))),
    })
    .to_string();
    let mut resp = agent
        .post(format!("{app_url}/v1/writs"))
        .header("Content-Type", "application/json")
        .header("Authorization", format!("DPoP {}", sim.ear))
        .header("DPoP", proof)
        .send(body.as_bytes())
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    if status != 200 {
        return Err(format!("writ: {status} {text}"));
    }
    Ok(())
}

/// One signing request: a DPoP proof by the holder key with the EAR, `POST /v1/sign/artifacts`
/// over a digest; the signature is checked to be there.
fn sign_once(
    app_url: &str,
    agent: &ureq::Agent,
    sim: &Sim,
    n: u64,
    envelope: bool,
) -> Result<(), String> {
    let key = if envelope { "release" } else { "artifacts" };
    let proof = proof_to(&format!("{app_url}/v1/sign/{key}"), sim);
    let digest = hex::encode(Sha256::digest(n.to_be_bytes()));
    let body = if envelope {
        json!({"subjects": [{"name": format!("build-{n}.tar"), "digest": {"sha256": digest}}]})
    } else {
        json!({"digest": format!("sha256:{digest}")})
    }
    .to_string();
    let mut resp = agent
        .post(format!("{app_url}/v1/sign/{key}"))
        .header("Content-Type", "application/json")
        .header("Authorization", format!("DPoP {}", sim.ear))
        .header("DPoP", proof)
        .send(body.as_bytes())
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    if status != 200
        || !text.contains(if envelope {
            "\"envelope\""
        } else {
            "\"signature\""
        })
    {
        return Err(format!("sign: {status} {text}"));
    }
    Ok(())
}

/// The bench's policy bundle: deploy/policy/example.json (for this trust domain), with a rate
/// bound no simulated runtime reaches.
fn bench_policy() -> Value {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policy/example.json"),
    )
    .unwrap()
    .replace("writ.dev", "writ.bench");
    let mut b: Value = serde_json::from_str(&text).unwrap();
    b["rate_per_minute"] = json!(1_000_000);
    b["signing"]["rate_per_minute"] = json!(1_000_000);
    b
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() {
    // SoftHSM2 reads SOFTHSM2_CONF once per process: the bench runs in a child that has it, so
    // that --in-process can open the appliance's keys here.
    writ_testkit::in_private_softhsm(|hsm| bench(Args::parse(), hsm));
}

fn bench(args: Args, hsm: &writ_testkit::SoftHsm) {
    let writ = args.writ.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .join("writ")
    });
    assert!(
        writ.is_file(),
        "{}: build it first (cargo build --release --bin writ)",
        writ.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let ca = ek_ca(dir.path());
    let app = start(&writ, dir.path(), hsm, &ca.1);

    // Keylime's 49 KB log, its replayed PCRs 0-7 (sha256), and a profile captured from them.
    let log_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/vectors/eventlogs/keylime_binary_bios_measurements.bin");
    let log_bytes = std::fs::read(&log_path).unwrap();
    let log = writ_attestation::eventlog::parse(&log_bytes).unwrap();
    let replayed = log.replay().unwrap();
    let extended: Vec<u8> = (0u8..8)
        .filter(|p| replayed.get(HashAlg::Sha256, *p).is_some())
        .collect();
    let mut pcrs = PcrValues::new();
    let mut pcr_map = serde_json::Map::new();
    for p in &extended {
        let v = replayed.get(HashAlg::Sha256, *p).unwrap().to_vec();
        pcr_map.insert(p.to_string(), json!(hex::encode(&v)));
        pcrs.insert(HashAlg::Sha256, *p, v).unwrap();
    }
    let pcrs_json = json!({ "sha256": pcr_map });
    let profile = {
        // capture() reads a verified quote: one made and verified here with a throwaway AK.
        let ak = p256::ecdsa::SigningKey::from_slice(&[1u8; 32]).unwrap();
        let tpmt = tpmt_ecc(tpmsim::AK, ak.verifying_key());
        let checked = CheckedAk::from_tpmt(&tpmt).unwrap();
        let nonce = Nonce::new(&[7u8; 32]).unwrap();
        let spec = format!(
            "sha256:{}",
            extended
                .iter()
                .map(u8::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        let sel: PcrSelection = spec.parse().unwrap();
        let (attest, sig, _) = sign_attest(
            &ak,
            &Attest {
                magic: TPM_GENERATED,
                kind: ST_ATTEST_QUOTE,
                qualified_signer: checked.name().to_vec(),
                extra_data: nonce.as_bytes().to_vec(),
                clock_info: ClockInfo {
                    clock: 1,
                    reset_count: 1,
                    restart_count: 0,
                    safe: true,
                },
                firmware_version: 1,
                attested: Attested::Quote {
                    selection: sel.clone(),
                    pcr_digest: pcrs.digest(&sel, HashAlg::Sha256).unwrap(),
                },
            },
        );
        let quote = verify_quote(&AwsLc, &checked, &attest, &sig, &nonce, &sel, &pcrs).unwrap();
        capture("keylime", &log, &quote, HashAlg::Sha256, &extended).unwrap()
    };
    let admin = Some(app.token.as_str());
    let (st, v) = post(
        &app.agent,
        &format!("{}/v1/admin/profiles", app.url),
        &json!({"name": "keylime", "profile": profile}).to_string(),
        admin,
    );
    assert_eq!(st, 200, "{v}");
    eprintln!(
        "attest-bench: enrolling {} simulated runtimes",
        args.workers
    );
    let mut sims: Vec<Sim> = (0..args.workers)
        .map(|i| {
            let s = enroll(&app, dir.path(), &ca, &format!("sim-{i}"), 1000 + i as u32);
            let (st, v) = post(
                &app.agent,
                &format!("{}/v1/admin/runtimes/{}/profile", app.url, s.name),
                &json!({"profile": "keylime"}).to_string(),
                admin,
            );
            assert_eq!(st, 204, "{v}");
            s
        })
        .collect();
    // One attestation each, checked, before anything is timed.
    let log_b64 = Arc::new(STANDARD.encode(&log_bytes));
    for s in &mut sims {
        attest_once(&app.url, &app.agent, s, &log_b64, &pcrs, &pcrs_json).unwrap();
    }
    let (writs, sign, envelope) = (args.writs, args.sign, args.envelope);
    if writs || sign {
        let (st, v) = post(
            &app.agent,
            &format!("{}/v1/admin/policy", app.url),
            &bench_policy().to_string(),
            admin,
        );
        assert_eq!(st, 200, "{v}");
        for (i, s) in sims.iter().enumerate() {
            if sign {
                sign_once(&app.url, &app.agent, s, i as u64, args.envelope).unwrap();
            } else {
                writ_once(&app.url, &app.agent, s, i as u64).unwrap();
            }
        }
    }

    let warmup = Duration::from_secs(2);
    let window = Duration::from_secs_f64(args.seconds);
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let url = app.url.clone();
    let ca_der = {
        let pem = std::fs::read_to_string(dir.path().join("writ.db.ca.pem")).unwrap();
        STANDARD
            .decode(
                pem.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>(),
            )
            .unwrap()
    };
    let pcrs = Arc::new(pcrs);
    let pcrs_json = Arc::new(pcrs_json);
    let handles: Vec<_> = sims
        .into_iter()
        .map(|mut sim| {
            let (measuring, stop, url, log_b64, pcrs, pcrs_json) = (
                Arc::clone(&measuring),
                Arc::clone(&stop),
                url.clone(),
                Arc::clone(&log_b64),
                Arc::clone(&pcrs),
                Arc::clone(&pcrs_json),
            );
            let agent = agent(&ca_der);
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut errors = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    n += 1;
                    let r = if sign {
                        sign_once(&url, &agent, &sim, n, envelope)
                    } else if writs {
                        writ_once(&url, &agent, &sim, n)
                    } else {
                        attest_once(&url, &agent, &mut sim, &log_b64, &pcrs, &pcrs_json)
                    };
                    if measuring.load(Ordering::Relaxed) {
                        match r {
                            Ok(()) => lat.push(t.elapsed()),
                            Err(e) => errors.push(e),
                        }
                    }
                }
                (lat, errors, sim)
            })
        })
        .collect();
    std::thread::sleep(warmup);
    let server_pid = app.child.id();
    let (server0, self0) = (cpu_seconds(server_pid), cpu_seconds(std::process::id()));
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(window);
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let (server1, self1) = (cpu_seconds(server_pid), cpu_seconds(std::process::id()));
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = Vec::new();
    let mut sims = Vec::new();
    for h in handles {
        let (l, e, sim) = h.join().unwrap();
        all.extend(l);
        errors.extend(e);
        sims.push(sim);
    }
    all.sort();
    let rate = all.len() as f64 / elapsed;
    println!("attest-bench on {}", machine::describe());
    println!(
        "  {} workers, {:.1} s: {} answered, {} refused or failed",
        args.workers,
        elapsed,
        all.len(),
        errors.len()
    );
    if sign && envelope {
        println!(
            "  rate: {rate:.0} envelopes/s (POST /v1/sign/release, one subject, EAR and DPoP proof, HTTPS, key in SoftHSM2)"
        );
    } else if sign {
        println!(
            "  rate: {rate:.0} signatures/s (POST /v1/sign/artifacts over a digest, EAR and DPoP proof, HTTPS, key in SoftHSM2)"
        );
    } else if writs {
        println!("  rate: {rate:.0} writs/s (POST /v1/writs with EAR and DPoP proof, HTTPS)");
    } else {
        println!("  rate: {rate:.0} attestations/s (nonce + attest, HTTPS, 49 KB log)");
    }
    println!(
        "  latency (per round): p50 {:.1} ms, p99 {:.1} ms",
        percentile(&all, 0.50),
        percentile(&all, 0.99)
    );
    println!(
        "  CPU: server {:.2} cores, load generator {:.2} cores (of {})",
        (server1 - server0) / elapsed,
        (self1 - self0) / elapsed,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if let Some(e) = errors.first() {
        println!("  first failure: {e}");
    }
    if args.in_process {
        let url = app.url.clone();
        // The server stops (its writer lock goes with it); this process opens the same store.
        drop(app);
        in_process(&args, hsm, dir.path(), &url, &sims, rate);
    }
}

/// The issuance pipeline in this process, then the decision log alone; see `--in-process`.
fn in_process(
    args: &Args,
    hsm: &writ_testkit::SoftHsm,
    dir: &Path,
    url: &str,
    sims: &[Sim],
    http_rate: f64,
) {
    use writ::appliance::{Appliance as InProcess, ApplianceConfig, WritRequest};
    use writ::decision_log::{DecisionLog, LogConfig};
    let key = |object: &str| {
        writ_hsm::open_key(
            &hsm.key_uri(object).parse().unwrap(),
            &writ_hsm::OpenOptions {
                allow_software_keys: false,
            },
        )
        .unwrap()
    };
    let log = Arc::new(
        DecisionLog::open(
            writ::store::Engine::Sqlite(dir.join("writ.db")),
            LogConfig::new("writ.bench/log"),
            key("checkpoint"),
        )
        .unwrap(),
    );
    let app = Arc::new(InProcess::new(
        Arc::clone(&log),
        ApplianceConfig {
            trust_domain: "writ.bench".into(),
            ek_roots: writ_attestation::evidence::EkTrustStore::new(),
            admin_token_sha256: None,
            ca_certificate_pem: None,
            ear_key: Some(key("ear")),
            issuer_key: Some(key("issuer")),
            ca_key: None,
            published_keys: Vec::new(),
            signing_keys: Vec::new(),
            open_options: writ_hsm::OpenOptions::default(),
            nonce_ttl: 60,
            ear_ttl: 300,
            origins: vec![url.to_string()],
        },
    ));
    let window = Duration::from_secs_f64(args.seconds);
    // Each worker: a holder proof in software (as the HTTP workers make) and Appliance::issue.
    let issue_one = |sim: &Sim, n: u64| -> Result<(), String> {
        let proof = proof_for(url, sim);
        let req = WritRequest {
            action: Some("exec".into()),
            resource: Some(format!("tools/build/{}", n % 64)),
            audience: Some("spiffe://writ.bench/gateway/tools".into()),
            req: Some(format!(
                "sha256:{}",
                hex::encode(Sha256::digest(n.to_be_bytes()))
            )),
            ..WritRequest::default()
        };
        app.issue(
            Some(&sim.ear),
            Some(&proof),
            &format!("{url}/v1/writs"),
            &req,
        )
        .map(|_| ())
        .map_err(|p| format!("{p:?}"))
    };
    let (rate, lat, cpu, failures) = measure(window, sims, |sim, n| issue_one(sim, n));
    println!(
        "  in-process issuance ({} workers, no HTTP/TLS): {rate:.0} writs/s, p50 {:.2} ms, p99 {:.2} ms, {cpu:.2} cores, {failures} failed",
        sims.len(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.99)
    );
    println!("  HTTPS / in-process: {:.2}x", http_rate / rate);
    // The log alone: the last `issue` record appended again, as many writers, no state change.
    let size = log.head().0;
    let leaf = log.record(size - 1).unwrap();
    let (log_rate, log_lat, log_cpu, log_failures) = measure(window, sims, |_, _| {
        log.append_with(vec![leaf.clone()], Vec::new())
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    println!(
        "  the decision log alone ({} writers, {}-byte record): {log_rate:.0} records/s, p50 {:.2} ms, p99 {:.2} ms, {log_cpu:.2} cores, {log_failures} failed",
        sims.len(),
        leaf.len(),
        percentile(&log_lat, 0.50),
        percentile(&log_lat, 0.99)
    );
    // CPU per writ and per record; the rates' ratio bounds the share from above when the log
    // alone does not saturate the cores (its writers wait on fsync).
    let (per_writ, per_record) = (cpu / rate * 1e6, log_cpu / log_rate * 1e6);
    println!(
        "  the log's share of a writ's cost: {:.1}% of the CPU ({per_record:.0} of {per_writ:.0} us per writ); {:.1}% by the two rates",
        100.0 * per_record / per_writ,
        100.0 * rate / log_rate
    );
    log.close();
}

/// A holder proof for `POST <url>/v1/writs` with the runtime's EAR.
fn proof_for(url: &str, sim: &Sim) -> String {
    proof_to(&format!("{url}/v1/writs"), sim)
}

/// A holder proof for `POST <htu>` with the runtime's EAR.
fn proof_to(htu: &str, sim: &Sim) -> String {
    use writ_attestation::writ::dpop;
    let mut jti = [0u8; 16];
    getrandom::fill(&mut jti).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    dpop::create(
        &SoftHolder(&sim.holder),
        &writ_attestation::jwk::EcJwk::from_verifying_key(sim.holder.verifying_key()),
        &dpop::ProofClaims {
            jti: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(jti),
            iat: now,
            htm: "POST".into(),
            htu: htu.to_string(),
            ath: dpop::ath(&sim.ear),
            nonce: None,
        },
    )
    .unwrap()
}

/// Runs `one` on one thread per runtime for a 1 s warm-up and then `window`; returns the rate,
/// the sorted latencies, this process's CPU in cores, and the failures.
fn measure(
    window: Duration,
    sims: &[Sim],
    one: impl Fn(&Sim, u64) -> Result<(), String> + Sync,
) -> (f64, Vec<Duration>, f64, usize) {
    let measuring = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    let (mut lat, mut failures, mut elapsed, mut cpu) = (Vec::new(), 0usize, 0.0, 0.0);
    std::thread::scope(|scope| {
        let handles: Vec<_> = sims
            .iter()
            .map(|sim| {
                let (measuring, stop, one) = (&measuring, &stop, &one);
                scope.spawn(move || {
                    let (mut lat, mut failures, mut n) = (Vec::new(), 0usize, 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let t = Instant::now();
                        let r = one(sim, n);
                        if measuring.load(Ordering::Relaxed) {
                            match r {
                                Ok(()) => lat.push(t.elapsed()),
                                Err(e) => {
                                    if failures == 0 {
                                        eprintln!("attest-bench: {e}");
                                    }
                                    failures += 1;
                                }
                            }
                        }
                    }
                    (lat, failures)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(1));
        let cpu0 = cpu_seconds(std::process::id());
        measuring.store(true, Ordering::Relaxed);
        let started = Instant::now();
        std::thread::sleep(window);
        measuring.store(false, Ordering::Relaxed);
        elapsed = started.elapsed().as_secs_f64();
        cpu = (cpu_seconds(std::process::id()) - cpu0) / elapsed;
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            let (l, f) = h.join().unwrap();
            lat.extend(l);
            failures += f;
        }
    });
    lat.sort();
    (lat.len() as f64 / elapsed, lat, cpu, failures)
}
