//! The writ's formats: strict JWS (one negative test per check of issue 11's list that this part
//! covers), claims, request digests, DPoP proofs, lineage narrowing. Through both providers.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use p256::ecdsa::signature::hazmat::PrehashSigner;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use writ_attestation::crypto::{AwsLc, CryptoProvider, RustCrypto};
use writ_attestation::jwk::EcJwk;
use writ_attestation::writ::Refusal;
use writ_attestation::writ::claims::{WritClaims, check_child, covers};
use writ_attestation::writ::dpop::{self, Expected, ProofClaims};
use writ_attestation::writ::jws::{self, Es256Signer, HeaderShape, TYP_WRIT};
use writ_attestation::writ::request::{Request, digest, normalize_url};

const PROVIDERS: [&dyn CryptoProvider; 2] = [&RustCrypto, &AwsLc];

struct Key(p256::ecdsa::SigningKey);

impl Es256Signer for Key {
    fn sign_es256(&self, message: &[u8]) -> Result<[u8; 64], Refusal> {
        let d: [u8; 32] = Sha256::digest(message).into();
        let s: p256::ecdsa::Signature = self.0.sign_prehash(&d).unwrap();
        let s = s.normalize_s();
        Ok(s.to_bytes().as_slice().try_into().unwrap())
    }
}

fn key(seed: u8) -> Key {
    Key(p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap())
}

fn jwk(k: &Key) -> EcJwk {
    EcJwk::from_verifying_key(k.0.verifying_key())
}

fn d(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

fn claims(req: &str) -> Value {
    json!({
        "iss": "spiffe://writ.test/writ/appliance",
        "sub": "spiffe://writ.test/runtime/a",
        "aud": "spiffe://writ.test/gateway/g",
        "iat": 1_800_000_000i64,
        "nbf": 1_800_000_000i64,
        "exp": 1_800_000_300i64,
        "jti": B64.encode([7u8; 16]),
        "cnf": {"jkt": jwk(&key(9)).thumbprint()},
        "att": {"status": "affirming", "ear": d('a'), "evidence": d('b'), "nonce": B64.encode([1u8; 32]), "policy": d('c')},
        "lin": {"parent": null, "root": null, "depth": 0},
        "act": {"name": "exec", "resource": "tools/deploy", "req": req},
    })
}

fn header() -> Value {
    json!({"alg": "ES256", "typ": TYP_WRIT, "kid": "issuer-1"})
}

fn token(header: &Value, payload: &Value) -> String {
    jws::sign(header, payload, &key(1)).unwrap()
}

/// Parses and verifies as a writ with the issuer key, returning the typed claims.
fn accept(p: &dyn CryptoProvider, t: &str) -> Result<WritClaims, Refusal> {
    let u = jws::parse(t, TYP_WRIT, HeaderShape::Kid)?;
    assert_eq!(u.kid(), Some("issuer-1"));
    WritClaims::from_payload(u.verify(p, &jwk(&key(1)))?)
}

fn code(r: Result<WritClaims, Refusal>) -> &'static str {
    r.expect_err("refused").code
}

/// A token with raw segments (for malformed inputs).
fn raw(h: &str, p: &str) -> String {
    let input = format!("{}.{}", B64.encode(h), B64.encode(p));
    let sig = key(1).sign_es256(input.as_bytes()).unwrap();
    format!("{input}.{}", B64.encode(sig))
}

#[test]
fn a_good_writ_verifies_with_both_providers() {
    let req = digest(&Request::Exec {
        tool: "deploy",
        argv: &["--env".into(), "prod".into()],
    })
    .unwrap();
    let t = token(&header(), &claims(&req));
    for p in PROVIDERS {
        let c = accept(p, &t).unwrap();
        assert_eq!(c.act.unwrap().req, req);
    }
}

#[test]
fn header_checks() {
    let p = claims(&d('e'));
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "alg none",
            json!({"alg": "none", "typ": TYP_WRIT, "kid": "issuer-1"}),
            "algorithm",
        ),
        (
            "HS256",
            json!({"alg": "HS256", "typ": TYP_WRIT, "kid": "issuer-1"}),
            "algorithm",
        ),
        (
            "ES384",
            json!({"alg": "ES384", "typ": TYP_WRIT, "kid": "issuer-1"}),
            "algorithm",
        ),
        (
            "ES256K",
            json!({"alg": "ES256K", "typ": TYP_WRIT, "kid": "issuer-1"}),
            "algorithm",
        ),
        (
            "EdDSA",
            json!({"alg": "EdDSA", "typ": TYP_WRIT, "kid": "issuer-1"}),
            "algorithm",
        ),
        (
            "crit",
            json!({"alg": "ES256", "typ": TYP_WRIT, "kid": "issuer-1", "crit": ["exp"]}),
            "header",
        ),
        (
            "jku",
            json!({"alg": "ES256", "typ": TYP_WRIT, "kid": "issuer-1", "jku": "https://x"}),
            "header",
        ),
        (
            "x5u",
            json!({"alg": "ES256", "typ": TYP_WRIT, "kid": "issuer-1", "x5u": "https://x"}),
            "header",
        ),
        (
            "jwk",
            json!({"alg": "ES256", "typ": TYP_WRIT, "kid": "issuer-1", "jwk": {}}),
            "header",
        ),
        (
            "x5c",
            json!({"alg": "ES256", "typ": TYP_WRIT, "kid": "issuer-1", "x5c": []}),
            "header",
        ),
        (
            "wrong typ",
            json!({"alg": "ES256", "typ": "JWT", "kid": "issuer-1"}),
            "header",
        ),
        (
            "dpop typ",
            json!({"alg": "ES256", "typ": "dpop+jwt", "kid": "issuer-1"}),
            "header",
        ),
        ("no kid", json!({"alg": "ES256", "typ": TYP_WRIT}), "header"),
        (
            "numeric kid",
            json!({"alg": "ES256", "typ": TYP_WRIT, "kid": 1}),
            "header",
        ),
    ];
    for (what, h, want) in cases {
        let t = token(&h, &p);
        assert_eq!(code(accept(&RustCrypto, &t)), want, "{what}");
    }
    // Duplicate header parameters (raw JSON; a map cannot hold them).
    let t = raw(
        r#"{"alg":"ES256","typ":"writ+jwt","kid":"issuer-1","alg":"ES256"}"#,
        &p.to_string(),
    );
    assert_eq!(code(accept(&RustCrypto, &t)), "malformed");
    // A byte order mark before the header.
    let t = raw(
        "\u{feff}{\"alg\":\"ES256\",\"typ\":\"writ+jwt\",\"kid\":\"issuer-1\"}",
        &p.to_string(),
    );
    assert_eq!(code(accept(&RustCrypto, &t)), "malformed");
}

#[test]
fn structure_and_encoding_checks() {
    let good = token(&header(), &claims(&d('e')));
    let parts: Vec<&str> = good.split('.').collect();
    let cases: Vec<(&str, String)> = vec![
        ("four segments", format!("{good}.AAAA")),
        ("two segments", format!("{}.{}", parts[0], parts[1])),
        (
            "padding",
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        ),
        (
            "standard base64",
            good.replace('-', "+").replace('_', "/")
                + if good.contains(['-', '_']) { "" } else { "+" },
        ),
        (
            "whitespace",
            format!("{}.{} .{}", parts[0], parts[1], parts[2]),
        ),
        ("leading whitespace", format!(" {good}")),
        ("newline", format!("{good}\n")),
        ("BOM", format!("\u{feff}{good}")),
        ("empty", String::new()),
        (
            "oversize",
            format!("{}.{}.{}", parts[0], "A".repeat(20_000), parts[2]),
        ),
    ];
    for (what, t) in cases {
        let c = code(accept(&RustCrypto, &t));
        assert!(c == "malformed" || c == "signature", "{what}: {c}");
    }
    // Non-canonical base64url: the last character with non-zero unused bits decodes to the same
    // bytes in lenient decoders.
    let sig = parts[2];
    let last = sig.chars().last().unwrap();
    let twin = match last {
        'A' => 'B',
        c if c.is_ascii_uppercase() && c != 'Z' => ((c as u8) + 1) as char,
        _ => 'B',
    };
    let t = format!(
        "{}.{}.{}{}",
        parts[0],
        parts[1],
        &sig[..sig.len() - 1],
        twin
    );
    assert_ne!(t, good);
    assert!(accept(&RustCrypto, &t).is_err());
}

#[test]
fn signature_checks() {
    let good = token(&header(), &claims(&d('e')));
    let (input, sig) = good.rsplit_once('.').unwrap();
    let sig = B64.decode(sig).unwrap();
    let n =
        hex::decode("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551").unwrap();
    let with = |s: Vec<u8>| format!("{input}.{}", B64.encode(s));
    let mut cases: Vec<(&str, String)> = vec![
        ("63 bytes", with(sig[..63].to_vec())),
        ("65 bytes", with([sig.clone(), vec![0]].concat())),
        ("r zero", with([vec![0; 32], sig[32..].to_vec()].concat())),
        ("s zero", with([sig[..32].to_vec(), vec![0; 32]].concat())),
        ("r = n", with([n.clone(), sig[32..].to_vec()].concat())),
        ("s = n", with([sig[..32].to_vec(), n.clone()].concat())),
        (
            "r all ones",
            with([vec![0xff; 32], sig[32..].to_vec()].concat()),
        ),
        (
            "flipped bit",
            with({
                let mut s = sig.clone();
                s[10] ^= 1;
                s
            }),
        ),
        (
            "another key",
            jws::sign(&header(), &claims(&d('e')), &key(2)).unwrap(),
        ),
    ];
    // A DER signature (what many libraries emit) is not the JWS encoding.
    let der = p256::ecdsa::Signature::from_slice(&sig).unwrap().to_der();
    cases.push(("DER", with(der.as_bytes().to_vec())));
    for p in PROVIDERS {
        for (what, t) in &cases {
            assert_eq!(code(accept(p, t)), "signature", "{}: {what}", p.name());
        }
    }
    // High-S twins of a valid signature verify (nothing is keyed on signature bytes).
    let s = p256::ecdsa::Signature::from_slice(&sig).unwrap();
    let (r, s_) = s.split_scalars();
    let high = p256::ecdsa::Signature::from_scalars(r, -*s_).unwrap();
    let t = with(high.to_bytes().to_vec());
    for p in PROVIDERS {
        accept(p, &t).unwrap();
    }
}

#[test]
fn payload_checks() {
    let h = header().to_string();
    let base = claims(&d('e'));
    let set = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    let remove = |k: &str| {
        let mut c = base.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let cases: Vec<(&str, String)> = vec![
        ("not an object", raw(&h, "[1,2]")),
        ("a string", raw(&h, "\"writ\"")),
        ("trailing data", raw(&h, &format!("{base} x"))),
        (
            "duplicate claim",
            raw(&h, &base.to_string().replacen('{', "{\"exp\":1,", 1)),
        ),
        ("exp missing", token(&header(), &remove("exp"))),
        (
            "exp string",
            token(&header(), &set("exp", json!("1800000300"))),
        ),
        (
            "exp float",
            raw(&h, &set("exp", json!(1_800_000_300.5)).to_string()),
        ),
        (
            "exp huge",
            raw(
                &h,
                &base
                    .to_string()
                    .replace("1800000300", "99999999999999999999999"),
            ),
        ),
        (
            "unknown claim",
            token(&header(), &set("admin", json!(true))),
        ),
        (
            "both forms",
            token(
                &header(),
                &set(
                    "scope",
                    json!({"actions":[],"resources":[],"audiences":[],"max_depth":0}),
                ),
            ),
        ),
        ("no form", token(&header(), &remove("act"))),
        (
            "short jti",
            token(&header(), &set("jti", json!(B64.encode([1u8; 8])))),
        ),
        (
            "lifetime",
            token(&header(), &set("exp", json!(1_800_000_000i64 + 2 * 86_400))),
        ),
        (
            "bad req",
            token(&header(), &{
                let mut c = base.clone();
                c["act"]["req"] = json!("md5:00");
                c
            }),
        ),
        (
            "lin child without parent",
            token(
                &header(),
                &set("lin", json!({"parent": null, "root": null, "depth": 1})),
            ),
        ),
    ];
    for (what, t) in cases {
        let c = code(accept(&RustCrypto, &t));
        assert!(c == "claims" || c == "malformed", "{what}: {c}");
    }
}

#[test]
fn time_window() {
    let c = accept(&RustCrypto, &token(&header(), &claims(&d('e')))).unwrap();
    assert!(c.check_time(1_800_000_100, 30).is_ok());
    assert_eq!(c.check_time(1_800_000_300, 0).unwrap_err().code, "expired");
    assert_eq!(c.check_time(1_800_000_331, 30).unwrap_err().code, "expired");
    assert!(c.check_time(1_800_000_320, 30).is_ok());
    assert_eq!(
        c.check_time(1_799_999_900, 30).unwrap_err().code,
        "not_yet_valid"
    );
    assert!(c.check_time(1_799_999_980, 30).is_ok());
}

#[test]
fn request_digests_bind_the_exact_request() {
    let a = |tool: &str, argv: &[&str]| {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        digest(&Request::Exec { tool, argv: &argv }).unwrap()
    };
    // Known answer: SHA-256 of {"argv":["-c","1"],"tool":"ping","type":"exec"}.
    let want = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(
            br#"{"argv":["-c","1"],"tool":"ping","type":"exec"}"#
        ))
    );
    assert_eq!(a("ping", &["-c", "1"]), want);
    assert_ne!(a("ping", &["-c", "2"]), want);
    assert_ne!(a("ping", &["1", "-c"]), want);
    assert_ne!(a("pong", &["-c", "1"]), want);
    assert_ne!(a("ping", &["-c", "1", ""]), want);
    assert!(
        digest(&Request::Exec {
            tool: "/bin/ping",
            argv: &[]
        })
        .is_err()
    );
    let h = |m: &str, u: &str, ct: &str, body: &[u8]| {
        digest(&Request::Http {
            method: m,
            url: u,
            content_type: ct,
            body,
        })
    };
    let base = h(
        "POST",
        "https://api.example/v1/x?a=1",
        "application/json",
        b"{}",
    )
    .unwrap();
    assert_eq!(
        h(
            "post",
            "HTTPS://API.example:443/v1/x?a=1",
            "application/json",
            b"{}"
        )
        .unwrap(),
        base
    );
    for other in [
        h(
            "PUT",
            "https://api.example/v1/x?a=1",
            "application/json",
            b"{}",
        ),
        h(
            "POST",
            "https://api.example/v1/x?a=2",
            "application/json",
            b"{}",
        ),
        h(
            "POST",
            "https://api.example/v1/X?a=1",
            "application/json",
            b"{}",
        ),
        h("POST", "https://api.example/v1/x?a=1", "text/plain", b"{}"),
        h(
            "POST",
            "https://api.example/v1/x?a=1",
            "application/json",
            b"{ }",
        ),
        h(
            "POST",
            "https://api.example:8443/v1/x?a=1",
            "application/json",
            b"{}",
        ),
    ] {
        assert_ne!(other.unwrap(), base);
    }
    for bad in [
        "/v1/x",
        "ftp://x/y",
        "https://u:p@x/y",
        "https://x/y#f",
        "https://x/a b",
    ] {
        assert!(normalize_url(bad).is_err(), "{bad}");
    }
}

#[test]
fn dpop_proofs() {
    let holder = key(9);
    let hj = jwk(&holder);
    let writ = token(&header(), &claims(&d('e')));
    let req = d('e');
    let htu = format!("exec:{req}");
    let mk =
        |k: &Key, j: &EcJwk, htm: &str, htu: &str, tok: &str, iat: i64, nonce: Option<&str>| {
            dpop::create(
                k,
                j,
                &ProofClaims {
                    jti: "proof-1".into(),
                    iat,
                    htm: htm.into(),
                    htu: htu.into(),
                    ath: dpop::ath(tok),
                    nonce: nonce.map(str::to_string),
                },
            )
            .unwrap()
        };
    let want = Expected {
        jkt: &hj.thumbprint(),
        htm: "EXEC",
        htu: &htu,
        token: &writ,
        now: 1_800_000_010,
        skew: 30,
        nonce: None,
    };
    let good = mk(&holder, &hj, "EXEC", &htu, &writ, 1_800_000_000, None);
    for p in PROVIDERS {
        let v = dpop::verify(p, &good, &want).unwrap();
        assert_eq!(v.jti, "proof-1");
    }
    let other_writ = token(&header(), &claims(&d('f')));
    let thief = key(3);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "another key",
            mk(
                &thief,
                &jwk(&thief),
                "EXEC",
                &htu,
                &writ,
                1_800_000_000,
                None,
            ),
            "proof_key",
        ),
        (
            "key and jwk differ",
            mk(&thief, &hj, "EXEC", &htu, &writ, 1_800_000_000, None),
            "proof",
        ),
        (
            "another request",
            mk(
                &holder,
                &hj,
                "EXEC",
                "exec:sha256:00",
                &writ,
                1_800_000_000,
                None,
            ),
            "proof_binding",
        ),
        (
            "another method",
            mk(&holder, &hj, "POST", &htu, &writ, 1_800_000_000, None),
            "proof_binding",
        ),
        (
            "another writ",
            mk(&holder, &hj, "EXEC", &htu, &other_writ, 1_800_000_000, None),
            "proof_binding",
        ),
        (
            "stale",
            mk(&holder, &hj, "EXEC", &htu, &writ, 1_799_999_000, None),
            "proof_time",
        ),
        (
            "future",
            mk(&holder, &hj, "EXEC", &htu, &writ, 1_800_001_000, None),
            "proof_time",
        ),
        ("a writ as proof", writ.clone(), "proof"),
    ];
    for (what, proof, c) in cases {
        assert_eq!(
            dpop::verify(&RustCrypto, &proof, &want).unwrap_err().code,
            c,
            "{what}"
        );
    }
    let with_nonce = Expected {
        nonce: Some("n-1"),
        ..want
    };
    assert_eq!(
        dpop::verify(&RustCrypto, &good, &with_nonce)
            .unwrap_err()
            .code,
        "proof_nonce"
    );
    let nonced = mk(
        &holder,
        &hj,
        "EXEC",
        &htu,
        &writ,
        1_800_000_000,
        Some("n-1"),
    );
    dpop::verify(&RustCrypto, &nonced, &with_nonce).unwrap();
}

#[test]
fn children_never_exceed_their_parent() {
    let mut parent = claims(&d('e'));
    parent.as_object_mut().unwrap().remove("act");
    parent["aud"] = json!("spiffe://writ.test/writ/appliance");
    parent["scope"] = json!({
        "actions": ["exec"],
        "resources": ["db/prod"],
        "audiences": ["spiffe://writ.test/gateway/g"],
        "max_depth": 2
    });
    let parent_tok = token(&header(), &parent);
    let parent_digest = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(parent_tok.as_bytes()))
    );
    let parent = accept(&RustCrypto, &parent_tok).unwrap();
    let mut child = claims(&d('e'));
    child["lin"] = json!({"parent": parent_digest, "root": parent_digest, "depth": 1});
    child["act"]["resource"] = json!("db/prod/orders");
    let ok = accept(&RustCrypto, &token(&header(), &child)).unwrap();
    check_child(&parent, &parent_digest, &ok).unwrap();
    type Edit = Box<dyn Fn(&mut Value)>;
    let variants: Vec<(&str, Edit)> = vec![
        (
            "resource by prefix only",
            Box::new(|c| c["act"]["resource"] = json!("db/production")),
        ),
        (
            "resource escaping",
            Box::new(|c| c["act"]["resource"] = json!("db/prod/../staging")),
        ),
        ("action", Box::new(|c| c["act"]["name"] = json!("http"))),
        (
            "audience",
            Box::new(|c| c["aud"] = json!("spiffe://writ.test/gateway/other")),
        ),
        ("lifetime", Box::new(|c| c["exp"] = json!(1_800_000_301i64))),
        ("depth", Box::new(|c| c["lin"]["depth"] = json!(2))),
        ("parent", Box::new(|c| c["lin"]["parent"] = json!(d('9')))),
    ];
    for (what, edit) in variants {
        let mut c = child.clone();
        edit(&mut c);
        let c = WritClaims::from_payload(c.as_object().unwrap().clone());
        let refused = match c {
            Err(_) => true,
            Ok(c) => check_child(&parent, &parent_digest, &c).is_err(),
        };
        assert!(refused, "{what}");
    }
    assert!(covers("db/prod", "db/prod"));
    assert!(covers("db/prod", "db/prod/x/y"));
    assert!(!covers("db/prod", "db/production"));
    assert!(!covers("db/prod", "db"));
    assert!(!covers("", "db"));
}
