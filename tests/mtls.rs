//! Mutual TLS: admins authenticate with client certificates the appliance issues
//! (`spiffe://<td>/admin/<name>`, clientAuth only, verified by openssl as an independent
//! validator); a client certificate of any other identity (a runtime's) never administers, and
//! its refusal is logged under its identity; clients refuse a server whose certificate, although
//! it chains to the pinned CA and names the host, does not carry the appliance's SPIFFE ID.
//!
//! The `ca` key here is a software key (`soft:`, test builds only) so that the test can make,
//! with the appliance's own certificate code, what the appliance does not issue yet: a runtime's
//! client certificate (X.509-SVIDs are the certificates issue) and server certificates for other
//! identities. tests/tls.rs runs the `ca` key in SoftHSM2.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use writ_attestation::log::record::DecisionRecord;
use writ_hsm::{CustodyKey, OpenOptions, generate_key};

const TD: &str = "writ.test";

fn soft_key(dir: &Path, name: &str) -> (String, Arc<dyn CustodyKey>) {
    let uri = format!("soft:path={}", dir.join(name).display());
    let key = generate_key(
        &uri.parse().unwrap(),
        &OpenOptions {
            allow_software_keys: true,
        },
    )
    .unwrap();
    (uri, key)
}

fn writ(args: &[&str]) -> Output {
    common::writ(None).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The last record in the store.
fn last_record(db: &Path) -> DecisionRecord {
    let conn = rusqlite::Connection::open(db).unwrap();
    let leaf: Vec<u8> = conn
        .query_row(
            "SELECT record FROM log_leaves ORDER BY idx DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    DecisionRecord::from_leaf(&leaf).unwrap()
}

fn fresh_key() -> p256::SecretKey {
    loop {
        let mut d = [0u8; 32];
        getrandom::fill(&mut d).unwrap();
        if let Ok(k) = p256::SecretKey::from_slice(&d) {
            return k;
        }
    }
}

/// A fresh P-256 key: its PKCS#8 PEM in `dir/name.key`, and its public key (DER).
fn client_key(dir: &Path, name: &str) -> (PathBuf, Vec<u8>) {
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let key = fresh_key();
    let path = dir.join(format!("{name}.key"));
    std::fs::write(&path, key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
    (
        path,
        key.public_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec(),
    )
}

#[test]
fn admins_authenticate_by_certificate_and_a_runtime_certificate_never_administers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    soft_key(d, "checkpoint");
    let (ca_uri, ca) = soft_key(d, "ca");
    writ_testkit::write_secret(&d.join("admin.token"), "admin-token-0123456789");
    let db = d.join("writ.db");
    let s = common::serve(serve_soft(d, &db, &ca_uri));
    let fp = s.fingerprint.clone().unwrap();
    let ca_pem = d.join("ca.pem");
    let admin = |auth: &[&str], extra: &[&str]| {
        let mut a = vec![
            "admin",
            "--server",
            &s.url,
            "--fingerprint",
            &fp,
            "--ca-file",
            ca_pem.to_str().unwrap(),
        ];
        a.extend(auth);
        a.extend(extra);
        writ(&a)
    };
    let token = ["--token-file", d.join("admin.token").to_str().unwrap()].map(str::to_string);
    let token: Vec<&str> = token.iter().map(String::as_str).collect();

    // With the token, an admin gets a client certificate for a key made on its side.
    let (key, cert) = (d.join("alice.key"), d.join("alice.pem"));
    let out = admin(
        &token,
        &[
            "issue-cert",
            "--name",
            "alice",
            "--key-out",
            key.to_str().unwrap(),
            "--cert-out",
            cert.to_str().unwrap(),
            "--hours",
            "2",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["spiffe_id"], format!("spiffe://{TD}/admin/alice"));
    let r = last_record(&db);
    assert_eq!(serde_json::to_value(r.kind).unwrap(), "admin");
    assert!(
        r.digests.contains_key("admin_certificate"),
        "{:?}",
        r.digests
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // openssl, an independent validator: the certificate chains to the CA for clientAuth, and
    // not for serverAuth.
    let verify = |purpose: &str| {
        std::process::Command::new("openssl")
            .args([
                "verify",
                "-CAfile",
                ca_pem.to_str().unwrap(),
                "-purpose",
                purpose,
                cert.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let ok = verify("sslclient");
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(!verify("sslserver").status.success());
    let shown = std::process::Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-ext",
            "subjectAltName,basicConstraints",
            "-in",
        ])
        .arg(&cert)
        .output()
        .unwrap();
    let shown = text(&shown);
    assert!(
        shown.contains(&format!("URI:spiffe://{TD}/admin/alice")),
        "{shown}"
    );
    assert!(shown.contains("CA:FALSE"), "{shown}");

    // With the certificate and no token: an admin, named by its certificate in the log.
    let by_cert = [
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    let out = admin(&by_cert, &["join-token", "--name", "rt-1"]);
    assert!(out.status.success(), "{}", text(&out));
    let r = last_record(&db);
    assert_eq!(r.subject, format!("spiffe://{TD}/admin/alice"));
    assert_eq!(serde_json::to_value(r.decision).unwrap(), "allow");
    // An admin certificate does not make more admin certificates (only the token admin does),
    // and no certificate takes the token admin's name.
    let issue = |auth: &[&str], name: &str| {
        let (k, c) = (d.join(format!("{name}.key")), d.join(format!("{name}.pem")));
        admin(
            auth,
            &[
                "issue-cert",
                "--name",
                name,
                "--key-out",
                k.to_str().unwrap(),
                "--cert-out",
                c.to_str().unwrap(),
            ],
        )
    };
    let out = issue(&by_cert, "bob");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("admin_forbidden"), "{}", text(&out));
    let out = issue(&token, "token");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("malformed"), "{}", text(&out));

    // A runtime's client certificate from the same CA (what an X.509-SVID will be): refused,
    // and the refusal logged under the runtime's identity.
    let (rt_key, rt_spki) = client_key(d, "rt");
    let ca_der = {
        use x509_cert::der::{DecodePem, Encode};
        x509_cert::Certificate::from_pem(std::fs::read(&ca_pem).unwrap())
            .unwrap()
            .to_der()
            .unwrap()
    };
    let rt_der = writ::tls::client_certificate(
        &ca,
        &ca_der,
        &format!("spiffe://{TD}/runtime/rt-1"),
        &rt_spki,
        Duration::from_secs(600),
    )
    .unwrap();
    let rt_cert = d.join("rt.pem");
    std::fs::write(&rt_cert, writ::tls::pem(&rt_der).unwrap()).unwrap();
    let out = admin(
        &[
            "--cert",
            rt_cert.to_str().unwrap(),
            "--key",
            rt_key.to_str().unwrap(),
        ],
        &["runtimes"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("admin_forbidden"), "{}", text(&out));
    let r = last_record(&db);
    assert_eq!(r.subject, format!("spiffe://{TD}/runtime/rt-1"));
    assert_eq!(r.reasons, ["admin_forbidden"]);
    // Nor does a certificate name an admin the appliance did not make: a key certified by
    // another CA is refused at the handshake.
    let other = tempfile::tempdir().unwrap();
    let (_, other_ca) = soft_key(other.path(), "ca");
    let other_ca_der = {
        let p = other.path().join("ca.pem");
        writ::tls::ca_certificate(&other_ca, TD, &p).unwrap()
    };
    let forged = writ::tls::client_certificate(
        &other_ca,
        &other_ca_der,
        &format!("spiffe://{TD}/admin/alice"),
        &rt_spki,
        Duration::from_secs(600),
    )
    .unwrap();
    let forged_cert = d.join("forged.pem");
    std::fs::write(&forged_cert, writ::tls::pem(&forged).unwrap()).unwrap();
    let out = admin(
        &[
            "--cert",
            forged_cert.to_str().unwrap(),
            "--key",
            rt_key.to_str().unwrap(),
        ],
        &["runtimes"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(
        last_record(&db).subject,
        format!("spiffe://{TD}/runtime/rt-1")
    );
    // A certificate the appliance's CA key signed but the appliance did not issue (not
    // registered): refused, and logged.
    let (m_key, m_spki) = client_key(d, "mallory");
    let m_der = writ::tls::client_certificate(
        &ca,
        &ca_der,
        &format!("spiffe://{TD}/admin/mallory"),
        &m_spki,
        Duration::from_secs(600),
    )
    .unwrap();
    let m_cert = d.join("mallory.pem");
    std::fs::write(&m_cert, writ::tls::pem(&m_der).unwrap()).unwrap();
    let out = admin(
        &[
            "--cert",
            m_cert.to_str().unwrap(),
            "--key",
            m_key.to_str().unwrap(),
        ],
        &["runtimes"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let r = last_record(&db);
    assert_eq!(r.subject, format!("spiffe://{TD}/admin/mallory"));
    assert_eq!(r.reasons, ["admin_revoked"]);
    // Revoked, alice's certificate no longer administers.
    let out = admin(&token, &["revoke-admin", "alice"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = admin(&by_cert, &["runtimes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("admin_revoked"), "{}", text(&out));
    let r = last_record(&db);
    assert_eq!(r.subject, format!("spiffe://{TD}/admin/alice"));
    assert_eq!(r.reasons, ["admin_revoked"]);
}

/// A serverAuth certificate for 127.0.0.1 with the URI SANs `uris`, signed by `ca`.
fn server_cert(
    ca: &Arc<dyn CustodyKey>,
    ca_der: &[u8],
    uris: &[&str],
    key: &p256::SecretKey,
) -> Vec<u8> {
    use std::str::FromStr;
    use x509_cert::builder::profile::BuilderProfile;
    use x509_cert::builder::{Builder, CertificateBuilder};
    use x509_cert::der::asn1::{Ia5String, ObjectIdentifier, OctetString};
    use x509_cert::der::{Decode, Encode};
    use x509_cert::ext::Extension;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::{ExtendedKeyUsage, SubjectAltName};
    use x509_cert::name::Name;

    struct P(Name, Vec<Extension>);
    impl BuilderProfile for P {
        fn get_issuer(&self, _: &Name) -> Name {
            self.0.clone()
        }
        fn get_subject(&self) -> Name {
            Name::from_str("CN=not the appliance").unwrap()
        }
        fn build_extensions(
            &self,
            _: x509_cert::spki::SubjectPublicKeyInfoRef<'_>,
            _: x509_cert::spki::SubjectPublicKeyInfoRef<'_>,
            _: &x509_cert::TbsCertificate,
        ) -> x509_cert::builder::Result<Vec<Extension>> {
            Ok(self.1.clone())
        }
    }
    let ext = |oid: ObjectIdentifier, der: Vec<u8>| Extension {
        extn_id: oid,
        critical: false,
        extn_value: OctetString::new(der).unwrap(),
    };
    let mut sans = vec![GeneralName::IpAddress(
        OctetString::new(vec![127, 0, 0, 1]).unwrap(),
    )];
    for u in uris {
        sans.push(GeneralName::UniformResourceIdentifier(
            Ia5String::new(u).unwrap(),
        ));
    }
    let ca_cert = x509_cert::Certificate::from_der(ca_der).unwrap();
    use x509_cert::der::oid::AssociatedOid;
    let profile = P(
        ca_cert.tbs_certificate().subject().clone(),
        vec![
            ext(
                ExtendedKeyUsage::OID,
                ExtendedKeyUsage(vec![ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1")])
                    .to_der()
                    .unwrap(),
            ),
            ext(SubjectAltName::OID, SubjectAltName(sans).to_der().unwrap()),
        ],
    );
    let now = std::time::SystemTime::now();
    let validity = x509_cert::time::Validity::new(
        x509_cert::time::Time::try_from(now - Duration::from_secs(60)).unwrap(),
        x509_cert::time::Time::try_from(now + Duration::from_secs(3600)).unwrap(),
    );
    let spki = x509_cert::spki::SubjectPublicKeyInfoOwned::from_key(&key.public_key()).unwrap();
    CertificateBuilder::new(
        profile,
        x509_cert::serial_number::SerialNumber::new(&[1, 2, 3, 4]).unwrap(),
        validity,
        spki,
    )
    .unwrap()
    .build::<_, p256::ecdsa::DerSignature>(&writ_hsm::signer::CustodySigner::new(Arc::clone(ca)))
    .unwrap()
    .to_der()
    .unwrap()
}

/// A TLS server on loopback presenting `cert` (then the CA), answering every request with an
/// empty JSON list; its URL.
fn impostor(cert: Vec<u8>, ca_der: Vec<u8>, key: &p256::SecretKey) -> String {
    use p256::pkcs8::EncodePrivateKey;
    use std::io::{Read, Write};
    let key_der = key.to_pkcs8_der().unwrap().as_bytes().to_vec();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.into(), ca_der.into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key_der.into()),
        )
        .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let conn = rustls::ServerConnection::new(Arc::clone(&config)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, stream);
            let mut buf = [0u8; 4096];
            if tls.read(&mut buf).is_ok() {
                let _ = tls.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]",
                );
                let _ = tls.flush();
            }
        }
    });
    url
}

#[test]
fn clients_refuse_a_server_certificate_without_the_appliance_spiffe_id() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, ca) = soft_key(d, "ca");
    let ca_pem = d.join("ca.pem");
    let ca_der = writ::tls::ca_certificate(&ca, TD, &ca_pem).unwrap();
    writ_testkit::write_secret(&d.join("admin.token"), "admin-token-0123456789");
    let key = fresh_key();
    let call = |url: &str| {
        writ(&[
            "admin",
            "--server",
            url,
            "--ca-file",
            ca_pem.to_str().unwrap(),
            "--token-file",
            d.join("admin.token").to_str().unwrap(),
            "runtimes",
        ])
    };
    // A gateway bootstrapping trusts the same way (its CA file already pinned here).
    let gate_dir = tempfile::tempdir().unwrap();
    let g = gate_dir.path();
    let conf = g.join("gate.toml");
    std::fs::write(
        &conf,
        format!(
            "audience = \"spiffe://{TD}/gateway/tools\"\nbundle = \"{d}/bundle.json\"\n\
             replay_db = \"{d}/replay.db\"\nca = \"{ca}\"\n",
            d = g.display(),
            ca = ca_pem.display()
        ),
    )
    .unwrap();
    let fp = writ::tls::fingerprint(&ca_der);
    let bootstrap = |url: &str| {
        common::gate()
            .args([
                "bootstrap",
                "--config",
                conf.to_str().unwrap(),
                "--server",
                url,
            ])
            .args(["--fingerprint", &fp])
            .output()
            .unwrap()
    };
    // The control: the pinned CA, the host, serverAuth and the appliance's SPIFFE ID: accepted.
    let appliance = format!("spiffe://{TD}/writ/appliance");
    let good = impostor(
        server_cert(&ca, &ca_der, &[&appliance], &key),
        ca_der.clone(),
        &key,
    );
    let out = call(&good);
    assert!(out.status.success(), "{}", text(&out));
    // (The gateway gets as far as the bundle, which this server does not serve.)
    let out = bootstrap(&good);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("refused: bundle: "), "{}", text(&out));
    // The same CA and host, serverAuth, but a runtime's SPIFFE ID, none, or two: refused.
    let runtime = format!("spiffe://{TD}/runtime/rt-1");
    for uris in [
        vec![runtime.as_str()],
        vec![],
        vec![appliance.as_str(), runtime.as_str()],
    ] {
        let url = impostor(server_cert(&ca, &ca_der, &uris, &key), ca_der.clone(), &key);
        let out = call(&url);
        assert_eq!(out.status.code(), Some(2), "{uris:?}: {}", text(&out));
        assert!(
            text(&out).contains("not the appliance's SPIFFE ID"),
            "{uris:?}: {}",
            text(&out)
        );
        let out = bootstrap(&url);
        assert_eq!(out.status.code(), Some(1), "{uris:?}: {}", text(&out));
        assert!(
            text(&out).contains("not the appliance's SPIFFE ID"),
            "{uris:?}: {}",
            text(&out)
        );
        assert!(!g.join("bundle.json").exists());
    }
}

/// `writ serve` on `db` with the soft `checkpoint` and `ca` keys of `d` (and `ca`'s URI).
fn serve_soft(d: &Path, db: &Path, ca_uri: &str) -> std::process::Command {
    let mut cmd = common::writ(None);
    cmd.args([
        "serve",
        "--store",
        &format!("sqlite:{}", db.display()),
        "--checkpoint-key",
        &format!("soft:path={}", d.join("checkpoint").display()),
        "--ca-key",
        ca_uri,
        "--allow-software-keys",
        "--listen",
        "127.0.0.1:0",
        "--trust-domain",
        TD,
        "--admin-token-file",
        d.join("admin.token").to_str().unwrap(),
    ]);
    cmd
}

#[test]
fn the_old_ca_stays_while_an_admin_certificate_it_signed_lives_and_a_stored_ca_certificate_is_checked()
 {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    soft_key(d, "checkpoint");
    let (ca_uri, _) = soft_key(d, "ca");
    writ_testkit::write_secret(&d.join("admin.token"), "admin-token-0123456789");
    let db = d.join("writ.db");
    let s = common::serve(serve_soft(d, &db, &ca_uri));
    let fp = s.fingerprint.clone().unwrap();
    let kept = d.join("kept.pem");
    let admin = |auth: &[&str], extra: &[&str]| {
        let mut a = vec![
            "admin",
            "--server",
            &s.url,
            "--fingerprint",
            &fp,
            "--ca-file",
            kept.to_str().unwrap(),
        ];
        a.extend(auth);
        a.extend(extra);
        writ(&a)
    };
    let token = ["--token-file", d.join("admin.token").to_str().unwrap()].map(str::to_string);
    let token: Vec<&str> = token.iter().map(String::as_str).collect();
    let issue = |name: &str, hours: &str| {
        let (k, c) = (d.join(format!("{name}.key")), d.join(format!("{name}.pem")));
        let out = admin(
            &token,
            &[
                "issue-cert",
                "--name",
                name,
                "--key-out",
                k.to_str().unwrap(),
                "--cert-out",
                c.to_str().unwrap(),
                "--hours",
                hours,
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        [
            "--cert".to_string(),
            c.display().to_string(),
            "--key".to_string(),
            k.display().to_string(),
        ]
    };
    let alice = issue("alice", "2");
    let alice: Vec<&str> = alice.iter().map(String::as_str).collect();
    // A revoked certificate does not hold the old CA back.
    issue("carol", "3");
    assert!(admin(&token, &["revoke-admin", "carol"]).status.success());
    let not_after: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT not_after FROM admin_certificates WHERE name = 'alice'",
            [],
            |r| r.get(0),
        )
        .unwrap();

    let (ca_b, key_b) = soft_key(d, "ca-b");
    let out = admin(
        &token,
        &[
            "rotate-key",
            "--purpose",
            "ca",
            "--key-uri",
            &ca_b,
            "--overlap-s",
            "3",
            "--skew-s",
            "5",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // A request during the overlap: the client keeps both CAs (no policy bundle is loaded
    // here: the CAs come from /v1/ca.pem).
    let during = admin(&token, &["runtimes"]);
    assert!(during.status.success(), "{}", text(&during));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    // A leaves the bundle when its SVIDs have expired (at most the EAR lifetime, 300 s); the
    // appliance accepts alice's certificate until it expires.
    let signs_from = r["signs_from"].as_i64().unwrap();
    assert_eq!(
        r["previous_retires_at"].as_i64().unwrap(),
        signs_from + 300 + 5
    );
    assert_eq!(r["previous_clients_until"].as_i64().unwrap(), not_after + 5);
    while now_s() < signs_from + 2 {
        std::thread::sleep(Duration::from_millis(100));
    }
    // B signs the server certificate now; alice's certificate (A's) still administers.
    let out = admin(&alice, &["runtimes"]);
    assert!(out.status.success(), "{}", text(&out));
    let cas = std::fs::read_to_string(&kept).unwrap();
    assert_eq!(cas.matches("BEGIN CERTIFICATE").count(), 2, "{cas}");
    // A client that kept A alone and made no request during the overlap: refused at the
    // handshake.
    let stale = d.join("stale.pem");
    std::fs::write(
        &stale,
        cas.split_inclusive("-----END CERTIFICATE-----\n")
            .next()
            .unwrap(),
    )
    .unwrap();
    let mut a = vec![
        "admin",
        "--server",
        &s.url,
        "--ca-file",
        stale.to_str().unwrap(),
    ];
    a.extend(&token);
    a.push("runtimes");
    let out = writ(&a);
    assert!(!out.status.success());
    assert!(text(&out).contains("UnknownIssuer"), "{}", text(&out));
    drop(s);

    // B's stored CA certificate replaced by A's (a certificate of another key): the appliance
    // does not start.
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        let a_cert: Vec<u8> = c
            .query_row(
                "SELECT certificate FROM key_schedule WHERE purpose = 'ca' AND signs_from = 0",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let n = c
            .execute(
                "UPDATE key_schedule SET certificate = ?1 WHERE spki = ?2",
                rusqlite::params![a_cert, key_b.public_key().spki_der()],
            )
            .unwrap();
        assert_eq!(n, 1);
    }
    let mut child = serve_soft(d, &db, &ca_uri)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("writ serve started with a CA certificate of another key");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = {
        use std::io::Read;
        let mut e = String::new();
        child.stderr.take().unwrap().read_to_string(&mut e).unwrap();
        e
    };
    assert!(!status.success());
    assert!(err.contains("it certifies another key"), "{err}");
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
