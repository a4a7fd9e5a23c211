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
        // iat - now = i64::MIN: a wrapping subtraction would call this proof fresh. Our signer
        // refuses such numbers; an attacker writes the JSON by hand.
        (
            "iat at the edge of i64",
            {
                let (x, y) = hj.coordinates();
                let h = json!({"alg": "ES256", "typ": "dpop+jwt", "jwk": {"kty": "EC", "crv": "P-256", "x": B64.encode(x), "y": B64.encode(y)}});
                let p = format!(
                    r#"{{"ath":"{}","htm":"EXEC","htu":"{}","iat":{},"jti":"edge"}}"#,
                    dpop::ath(&writ),
                    htu,
                    i64::MIN + 1_800_000_010
                );
                let input = format!("{}.{}", B64.encode(h.to_string()), B64.encode(p));
                let sig = holder.sign_es256(input.as_bytes()).unwrap();
                format!("{input}.{}", B64.encode(sig))
            },
            "proof_time",
        ),
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
    // A delegation child: addressed to the appliance like its parent, its scope within the
    // parent's.
    let mut sub = child.clone();
    sub.as_object_mut().unwrap().remove("act");
    sub["aud"] = json!("spiffe://writ.test/writ/appliance");
    sub["scope"] = json!({
        "actions": ["exec"],
        "resources": ["db/prod/orders"],
        "audiences": ["spiffe://writ.test/gateway/g"],
        "max_depth": 2
    });
    let ok = WritClaims::from_payload(sub.as_object().unwrap().clone()).unwrap();
    check_child(&parent, &parent_digest, &ok).unwrap();
    let variants: Vec<(&str, Edit)> = vec![
        (
            "audience other than the parent's",
            Box::new(|c| c["aud"] = json!("spiffe://writ.test/gateway/g")),
        ),
        (
            "scope action",
            Box::new(|c| c["scope"]["actions"] = json!(["exec", "http"])),
        ),
        (
            "scope resource",
            Box::new(|c| c["scope"]["resources"] = json!(["db"])),
        ),
        (
            "scope audience",
            Box::new(|c| c["scope"]["audiences"] = json!(["spiffe://writ.test/gateway/h"])),
        ),
        (
            "scope depth",
            Box::new(|c| c["scope"]["max_depth"] = json!(3)),
        ),
    ];
    for (what, edit) in variants {
        let mut c = sub.clone();
        edit(&mut c);
        let c = WritClaims::from_payload(c.as_object().unwrap().clone()).unwrap();
        assert!(check_child(&parent, &parent_digest, &c).is_err(), "{what}");
    }
    assert!(covers("db/prod", "db/prod"));
    assert!(covers("db/prod", "db/prod/x/y"));
    assert!(!covers("db/prod", "db/production"));
    assert!(!covers("db/prod", "db"));
    assert!(!covers("", "db"));
}

mod offline {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;
    use writ_attestation::writ::bundle::TrustBundle;
    use writ_attestation::writ::verify::{Context, ReplayKey, ReplayStore, verify};

    /// An in-memory store for the library's tests (the SQLite store is the gateway's, tested there).
    #[derive(Default)]
    struct Memory {
        seen: Mutex<HashSet<ReplayKey>>,
        broken: bool,
    }

    impl ReplayStore for Memory {
        fn consume(&self, keys: &[ReplayKey], _keep_until: i64) -> Result<bool, Refusal> {
            if self.broken {
                return Err(Refusal::new("replay_store", "cannot record (test)"));
            }
            let mut seen = self.seen.lock().unwrap();
            if keys.iter().any(|k| seen.contains(k)) {
                return Ok(false);
            }
            seen.extend(keys.iter().cloned());
            Ok(true)
        }
    }

    const AUD: &str = "spiffe://writ.test/gateway/g";
    const NOW: i64 = 1_800_000_010;

    fn bundle_json(seq: u64) -> Value {
        let k = |key: &Key, kid: &str, u: &str| {
            let mut j = jwk(key).to_json(Some(u));
            j["kid"] = json!(kid);
            j
        };
        json!({
            "keys": [k(&key(1), "issuer-1", "issuer"), k(&key(4), "ear-1", "ear"),
                     {"use": "x509-svid", "kty": "EC", "crv": "P-256", "x5c": ["MIIB"]}],
            "spiffe_sequence": seq,
            "spiffe_refresh_hint": 300,
            "writ": {
                "trust_domain": "writ.test",
                "issued_at": 1_800_000_000i64,
                "expires_at": 1_800_086_400i64,
                "policy_bundles": [d('c')],
                "log": {"origin": "writ.test/log", "verifier_key": "writ.test/log+00000000+AA"}
            }
        })
    }

    fn bundle() -> TrustBundle {
        TrustBundle::parse(bundle_json(7).to_string().as_bytes()).unwrap()
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    struct Case {
        token: String,
        proof: String,
        req: String,
    }

    fn case_with(edit: impl Fn(&mut Value), proof_jti: &str) -> Case {
        let req = digest(&Request::Exec {
            tool: "deploy",
            argv: &argv(&["--env", "prod"]),
        })
        .unwrap();
        let mut c = claims(&req);
        c["jti"] = json!(B64.encode(&Sha256::digest(proof_jti.as_bytes())[..16]));
        edit(&mut c);
        let token = token(&header(), &c);
        let holder = key(9);
        let proof = dpop::create(
            &holder,
            &jwk(&holder),
            &ProofClaims {
                jti: proof_jti.into(),
                iat: NOW,
                htm: "EXEC".into(),
                htu: format!("exec:{req}"),
                ath: dpop::ath(&token),
                nonce: None,
            },
        )
        .unwrap();
        Case { token, proof, req }
    }

    fn case(proof_jti: &str) -> Case {
        case_with(|_| {}, proof_jti)
    }

    fn run(c: &Case, req: &str, store: &Memory) -> Result<(), Refusal> {
        let htu = format!("exec:{req}");
        verify(
            &AwsLc,
            &bundle(),
            &Context {
                token: &c.token,
                proof: Some(&c.proof),
                request_digest: req,
                htm: "EXEC",
                htu: &htu,
                audience: AUD,
                now: NOW,
                skew: 30,
                nonce: None,
                max_bundle_age: 86_400,
            },
            store,
        )
        .map(|_| ())
    }

    fn refused(r: Result<(), Refusal>) -> &'static str {
        r.expect_err("refused").code
    }

    #[test]
    fn checking_consumes_nothing_and_authorizes_nothing_until_consumed() {
        use writ_attestation::writ::verify::check;
        let store = Memory::default();
        let c = case("p-check");
        let htu = format!("exec:{}", c.req);
        let ctx = Context {
            token: &c.token,
            proof: Some(&c.proof),
            request_digest: &c.req,
            htm: "EXEC",
            htu: &htu,
            audience: AUD,
            now: NOW,
            skew: 30,
            nonce: None,
            max_bundle_age: 86_400,
        };
        let first = check(&AwsLc, &bundle(), &ctx).unwrap();
        let second = check(&AwsLc, &bundle(), &ctx).unwrap();
        assert!(store.seen.lock().unwrap().is_empty());
        let broken = Memory {
            broken: true,
            ..Memory::default()
        };
        assert_eq!(first.consume(&broken).unwrap_err().code, "replay_store");
        let auth = second.consume(&store).unwrap();
        let writ_attestation::writ::claims::Form::Execution(act) = auth.claims().form() else {
            panic!("an execution writ");
        };
        assert_eq!(act.req, c.req);
        let third = check(&AwsLc, &bundle(), &ctx).unwrap();
        assert_eq!(third.consume(&store).unwrap_err().code, "replayed");
    }

    impl writ_attestation::writ::verify::AsyncReplayStore for Memory {
        fn consume_async<'a>(
            &'a self,
            keys: &'a [ReplayKey],
            keep_until: i64,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, Refusal>> + Send + 'a>>
        {
            Box::pin(std::future::ready(self.consume(keys, keep_until)))
        }
    }

    /// Runs a future that is ready at once (the in-memory store's).
    fn ready<T>(f: impl std::future::Future<Output = T>) -> T {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the in-memory store is never pending"),
        }
    }

    #[test]
    fn the_async_path_refuses_replays_and_a_broken_store_too() {
        use writ_attestation::writ::verify::check;
        let store = Memory::default();
        let c = case("p-async");
        let htu = format!("exec:{}", c.req);
        let ctx = Context {
            token: &c.token,
            proof: Some(&c.proof),
            request_digest: &c.req,
            htm: "EXEC",
            htu: &htu,
            audience: AUD,
            now: NOW,
            skew: 30,
            nonce: None,
            max_bundle_age: 86_400,
        };
        let broken = Memory {
            broken: true,
            ..Memory::default()
        };
        let e = ready(
            check(&AwsLc, &bundle(), &ctx)
                .unwrap()
                .consume_async(&broken),
        );
        assert_eq!(e.unwrap_err().code, "replay_store");
        ready(
            check(&AwsLc, &bundle(), &ctx)
                .unwrap()
                .consume_async(&store),
        )
        .unwrap();
        let e = ready(
            check(&AwsLc, &bundle(), &ctx)
                .unwrap()
                .consume_async(&store),
        );
        assert_eq!(e.unwrap_err().code, "replayed");
        // A bundle older than the caller's bound refuses, whoever calls.
        let stale = Context {
            max_bundle_age: 5,
            ..ctx
        };
        assert_eq!(
            check(&AwsLc, &bundle(), &stale).unwrap_err().code,
            "bundle_stale"
        );
        // A skew outside the bound is refused before anything else.
        for skew in [-1, 301] {
            let bad = Context { skew, ..ctx };
            assert_eq!(check(&AwsLc, &bundle(), &bad).unwrap_err().code, "skew");
        }
    }

    #[test]
    fn a_writ_runs_once() {
        let store = Memory::default();
        let c = case("p1");
        run(&c, &c.req, &store).unwrap();
        assert_eq!(refused(run(&c, &c.req, &store)), "replayed");
    }

    #[test]
    fn each_check_refuses_with_its_code() {
        let store = Memory::default();
        let with = |f: &dyn Fn(&mut Value), jti: &str| case_with(|c| f(c), jti);
        let cases: Vec<(&str, Case, &str)> = vec![
            (
                "issuer",
                with(&|c| c["iss"] = json!("spiffe://other/writ/appliance"), "a1"),
                "issuer",
            ),
            (
                "audience",
                with(
                    &|c| c["aud"] = json!("spiffe://writ.test/gateway/other"),
                    "a2",
                ),
                "audience",
            ),
            (
                "expired",
                with(
                    &|c| {
                        c["iat"] = json!(1_799_990_000i64);
                        c["nbf"] = json!(1_799_990_000i64);
                        c["exp"] = json!(1_799_999_900i64);
                    },
                    "a3",
                ),
                "expired",
            ),
            (
                "not yet valid",
                with(
                    &|c| {
                        c["iat"] = json!(1_800_000_500i64);
                        c["nbf"] = json!(1_800_000_500i64);
                        c["exp"] = json!(1_800_000_900i64);
                    },
                    "a4",
                ),
                "not_yet_valid",
            ),
            (
                "delegation",
                with(
                    &|c| {
                        c.as_object_mut().unwrap().remove("act");
                        c["scope"] = json!({"actions":["exec"],"resources":["x"],"audiences":[AUD],"max_depth":1});
                    },
                    "a5",
                ),
                "form",
            ),
            (
                "policy",
                with(&|c| c["att"]["policy"] = json!(d('f')), "a6"),
                "policy",
            ),
            (
                "attestation",
                with(&|c| c["att"]["status"] = json!("warning"), "a7"),
                "attestation",
            ),
        ];
        for (what, c, want) in cases {
            assert_eq!(refused(run(&c, &c.req, &store)), want, "{what}");
        }
        // The request: one byte, reordered argv, another tool.
        let c = case("b1");
        for other in [
            digest(&Request::Exec {
                tool: "deploy",
                argv: &argv(&["--env", "prod2"]),
            })
            .unwrap(),
            digest(&Request::Exec {
                tool: "deploy",
                argv: &argv(&["prod", "--env"]),
            })
            .unwrap(),
            digest(&Request::Exec {
                tool: "deploy2",
                argv: &argv(&["--env", "prod"]),
            })
            .unwrap(),
        ] {
            assert_eq!(refused(run(&c, &other, &store)), "binding_mismatch");
        }
        // Missing proof; a proof for another writ; a proof replayed with another writ.
        let c = case("c1");
        let htu = format!("exec:{}", c.req);
        let no_proof = verify(
            &AwsLc,
            &bundle(),
            &Context {
                token: &c.token,
                proof: None,
                request_digest: &c.req,
                htm: "EXEC",
                htu: &htu,
                audience: AUD,
                now: NOW,
                skew: 30,
                nonce: None,
                max_bundle_age: 86_400,
            },
            &store,
        );
        assert_eq!(no_proof.unwrap_err().code, "proof_missing");
        let other = case("c2");
        let swapped = Case {
            token: c.token.clone(),
            proof: other.proof.clone(),
            req: c.req.clone(),
        };
        assert_eq!(refused(run(&swapped, &c.req, &store)), "proof_binding");
        run(&c, &c.req, &store).unwrap();
        // Nothing was consumed by the refusals above: c2 still runs.
        run(&other, &other.req, &store).unwrap();
    }

    #[test]
    fn a_proof_replayed_with_another_writ_and_a_high_s_twin_are_replays() {
        let store = Memory::default();
        let first = case("p-same");
        run(&first, &first.req, &store).unwrap();
        // Another writ (new jti), the same proof jti from the same holder: replayed.
        let second = case_with(|c| c["jti"] = json!(B64.encode([0x55u8; 16])), "p-same");
        assert_eq!(refused(run(&second, &second.req, &store)), "replayed");
        // The high-S twin of the used writ: a different signature, the same jti.
        let (input, sig) = first.token.rsplit_once('.').unwrap();
        let s = p256::ecdsa::Signature::from_slice(&B64.decode(sig).unwrap()).unwrap();
        let (r, s_) = s.split_scalars();
        let twin = format!(
            "{input}.{}",
            B64.encode(
                p256::ecdsa::Signature::from_scalars(r, -*s_)
                    .unwrap()
                    .to_bytes()
            )
        );
        assert_ne!(twin, first.token);
        let holder = key(9);
        let proof = dpop::create(
            &holder,
            &jwk(&holder),
            &ProofClaims {
                jti: "p-twin".into(),
                iat: NOW,
                htm: "EXEC".into(),
                htu: format!("exec:{}", first.req),
                ath: dpop::ath(&twin),
                nonce: None,
            },
        )
        .unwrap();
        let c = Case {
            token: twin,
            proof,
            req: first.req.clone(),
        };
        assert_eq!(refused(run(&c, &c.req, &store)), "replayed");
    }

    #[test]
    fn another_holders_proof_jti_does_not_burn_yours() {
        let store = Memory::default();
        // Another holder (another key, another writ) uses proof jti "shared".
        let other_holder = key(11);
        let req = digest(&Request::Exec {
            tool: "deploy",
            argv: &argv(&["--env", "prod"]),
        })
        .unwrap();
        let mut oc = claims(&req);
        oc["cnf"]["jkt"] = json!(jwk(&other_holder).thumbprint());
        oc["jti"] = json!(B64.encode([0x66u8; 16]));
        let ot = token(&header(), &oc);
        let op = dpop::create(
            &other_holder,
            &jwk(&other_holder),
            &ProofClaims {
                jti: "shared".into(),
                iat: NOW,
                htm: "EXEC".into(),
                htu: format!("exec:{req}"),
                ath: dpop::ath(&ot),
                nonce: None,
            },
        )
        .unwrap();
        run(
            &Case {
                token: ot,
                proof: op,
                req: req.clone(),
            },
            &req,
            &store,
        )
        .unwrap();
        // Mine, with the same proof jti: unaffected.
        let mine = case("shared");
        run(&mine, &mine.req, &store).unwrap();
    }

    #[test]
    fn keys_come_from_the_bundle_by_kid_and_purpose() {
        let store = Memory::default();
        let c = case("k1");
        // Signed by the EAR key, kid of the EAR key: wrong purpose.
        let ear_signed = jws::sign(
            &json!({"alg":"ES256","typ":TYP_WRIT,"kid":"ear-1"}),
            &claims(&c.req),
            &key(4),
        )
        .unwrap();
        let x = Case {
            token: ear_signed,
            proof: c.proof.clone(),
            req: c.req.clone(),
        };
        assert_eq!(refused(run(&x, &c.req, &store)), "key_purpose");
        let unknown = jws::sign(
            &json!({"alg":"ES256","typ":TYP_WRIT,"kid":"nobody"}),
            &claims(&c.req),
            &key(1),
        )
        .unwrap();
        let x = Case {
            token: unknown,
            proof: c.proof.clone(),
            req: c.req.clone(),
        };
        assert_eq!(refused(run(&x, &c.req, &store)), "key_unknown");
        // The issuer kid with another key's signature.
        let forged = jws::sign(&header(), &claims(&c.req), &key(4)).unwrap();
        let x = Case {
            token: forged,
            proof: c.proof.clone(),
            req: c.req.clone(),
        };
        assert_eq!(refused(run(&x, &c.req, &store)), "signature");
    }

    #[test]
    fn an_unwritable_replay_store_refuses() {
        let broken = Memory {
            broken: true,
            ..Memory::default()
        };
        let c = case("s1");
        assert_eq!(refused(run(&c, &c.req, &broken)), "replay_store");
    }

    #[test]
    fn bundles_stale_rolled_back_or_malformed_are_refused() {
        let b = bundle();
        assert_eq!(b.appliance_id(), "spiffe://writ.test/writ/appliance");
        b.check(NOW, 3600, Some(7)).unwrap();
        assert_eq!(
            b.check(NOW, 3600, Some(8)).unwrap_err().code,
            "bundle_rollback"
        );
        assert_eq!(
            b.check(1_800_086_400, 200_000, None).unwrap_err().code,
            "bundle_stale"
        );
        assert_eq!(
            b.check(NOW + 4000, 3600, None).unwrap_err().code,
            "bundle_stale"
        );
        let good = bundle_json(7);
        type Edit = Box<dyn Fn(&mut Value)>;
        let edits: Vec<(&str, Edit)> = vec![
            (
                "no issuer key",
                Box::new(|v| {
                    v["keys"].as_array_mut().unwrap().remove(0);
                }),
            ),
            (
                "two kids",
                Box::new(|v| v["keys"][1]["kid"] = json!("issuer-1")),
            ),
            (
                "one key two purposes",
                Box::new(|v| {
                    v["keys"][1] = v["keys"][0].clone();
                    v["keys"][1]["kid"] = json!("x");
                    v["keys"][1]["use"] = json!("ear");
                }),
            ),
            (
                "unknown use",
                Box::new(|v| v["keys"][1]["use"] = json!("admin")),
            ),
            ("alg", Box::new(|v| v["keys"][0]["alg"] = json!("ES384"))),
            (
                "no policy",
                Box::new(|v| v["writ"]["policy_bundles"] = json!([])),
            ),
            (
                "bad policy",
                Box::new(|v| v["writ"]["policy_bundles"] = json!(["md5:0"])),
            ),
            (
                "expires before issued",
                Box::new(|v| v["writ"]["expires_at"] = json!(1)),
            ),
            (
                "negative sequence",
                Box::new(|v| v["spiffe_sequence"] = json!(-1)),
            ),
            (
                "no writ member",
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("writ");
                }),
            ),
        ];
        for (what, edit) in edits {
            let mut v = good.clone();
            edit(&mut v);
            assert!(
                TrustBundle::parse(v.to_string().as_bytes()).is_err(),
                "{what}"
            );
        }
        let dup = good.to_string().replacen(
            "\"spiffe_sequence\":7",
            "\"spiffe_sequence\":7,\"spiffe_sequence\":9",
            1,
        );
        assert!(TrustBundle::parse(dup.as_bytes()).is_err());
    }
}
