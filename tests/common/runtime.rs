//! A runtime driven by hand with the attester's TPM calls (what `writ agent` does), for the
//! attestation and issuance tests: enrolled in a swtpm running the simulated boot, with a holder
//! key; and what the tests ask of the appliance about it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use writ_attestation::tpm::pcr::PcrSelection;
use writ_hsm::tpm::attester::{Attester, EkKind, KeyBlob};
use writ_hsm::tpm::simboot::{BootProfile, simulate_boot};
use writ_testkit::Swtpm;

use super::stack::Stack;

/// A runtime driven by hand: its TPM, its AK and holder key, enrolled under `name`.
pub struct Runtime {
    pub name: String,
    pub tpm: Attester,
    pub ak: KeyBlob,
    pub holder: KeyBlob,
    pub log: Vec<u8>,
}

pub const HOLDER_AUTH: &[u8] = b"holder-auth-value";

impl Runtime {
    /// Boots `tpm` (simulated), makes an AK and enrolls it under `name` with a join token.
    pub fn enroll(s: &Stack, tpm: &Swtpm, name: &str) -> Runtime {
        let a = Attester::open(Some(&tpm.tcti())).unwrap();
        let log = simulate_boot(&a, BootProfile::SecureBoot).unwrap();
        let ek_cert = a
            .ek_certificates()
            .unwrap()
            .into_iter()
            .find(|c| c.kind == EkKind::Rsa2048)
            .unwrap()
            .der;
        let ak = a.create_ak().unwrap();
        let token = std::fs::read_to_string(s.join_token(name, "600")).unwrap();
        let (st, challenge) = s.post(
            "/v1/enroll",
            &json!({
                "ek_certificate": STANDARD.encode(&ek_cert),
                "ak_public": STANDARD.encode(&ak.public),
                "join_token": token,
            }),
            None,
        );
        assert_eq!(st, 200, "{challenge}");
        let f = |k: &str| STANDARD.decode(challenge[k].as_str().unwrap()).unwrap();
        let secret = a
            .activate_credential(&ak, &f("id_object"), &f("encrypted_secret"))
            .unwrap();
        let (st, v) = s.post(
            "/v1/enroll/activate",
            &json!({"enrollment": challenge["enrollment"], "secret": STANDARD.encode(secret.as_slice())}),
            None,
        );
        assert_eq!(st, 200, "{v}");
        let holder = a.create_holder_key(Some(HOLDER_AUTH)).unwrap();
        Runtime {
            name: name.to_string(),
            tpm: a,
            ak,
            holder,
            log,
        }
    }

    /// The holder key's public JWK.
    pub fn holder_jwk(&self) -> writ_attestation::jwk::EcJwk {
        let public = writ_attestation::tpm::public::Public::from_tpmt(&self.holder.public).unwrap();
        let writ_attestation::tpm::public::KeyParams::Ecc { x, y, .. } = public.params() else {
            panic!("an ECC key")
        };
        writ_attestation::jwk::EcJwk::from_coordinates(x, y).unwrap()
    }

    /// A DPoP proof by the holder key in the TPM for `POST htu` with `token`.
    pub fn dpop(&self, htu: &str, token: &str) -> String {
        use writ_attestation::writ::dpop;
        let key = self
            .tpm
            .load_holder_key(&self.holder, Some(HOLDER_AUTH))
            .unwrap();
        let signer = writ_hsm::tpm::attester::HolderSigner {
            tpm: &self.tpm,
            key,
            bound: None,
        };
        let claims = dpop::ProofClaims {
            jti: writ_testkit::random_hex(16),
            iat: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64,
            htm: "POST".into(),
            htu: htu.to_string(),
            ath: dpop::ath(token),
            nonce: None,
        };
        dpop::create(&signer, &self.holder_jwk(), &claims).unwrap()
    }

    pub fn nonce(&self, s: &Stack) -> Value {
        let (st, n) = s.post("/v1/attest/nonce", &json!({"name": self.name}), None);
        assert_eq!(st, 200, "{n}");
        n
    }

    /// Honest evidence for nonce answer `n`, quoting `selection` (else what the appliance asked).
    pub fn evidence_over(&self, n: &Value, selection: Option<&str>) -> Value {
        let nonce = STANDARD.decode(n["nonce"].as_str().unwrap()).unwrap();
        let sel: PcrSelection = selection
            .unwrap_or(n["selection"].as_str().unwrap())
            .parse()
            .unwrap();
        let ak = self.tpm.load_ak(&self.ak).unwrap();
        let quote = self.tpm.quote(&ak, &nonce, &sel).unwrap();
        let pcrs = self.tpm.read_pcrs(&sel).unwrap();
        let holder = self
            .tpm
            .load_holder_key(&self.holder, Some(HOLDER_AUTH))
            .unwrap();
        let certify = self.tpm.certify(&ak, &holder, &nonce).unwrap();
        let mut values = serde_json::Map::new();
        for (bank, index, v) in pcrs.iter() {
            values
                .entry(bank.name().to_string())
                .or_insert_with(|| json!({}))[index.to_string()] = json!(hex::encode(v));
        }
        json!({
            "name": self.name,
            "nonce": n["nonce"],
            "quote": {"attest": STANDARD.encode(&quote.attest), "signature": STANDARD.encode(&quote.signature)},
            "pcrs": values,
            "event_log": STANDARD.encode(&self.log),
            "holder": {
                "public": STANDARD.encode(&self.holder.public),
                "certify": {"attest": STANDARD.encode(&certify.attest), "signature": STANDARD.encode(&certify.signature)},
            },
        })
    }

    pub fn evidence(&self, n: &Value) -> Value {
        self.evidence_over(n, None)
    }

    pub fn attest(&self, s: &Stack) -> (u16, Value) {
        let n = self.nonce(s);
        s.post("/v1/attest", &self.evidence(&n), None)
    }
}

/// A reference profile of the simulated boot as the TPM now holds it: PCRs 0-7 in sha256,
/// Secure Boot on.
pub fn profile_of(tpm: &Attester) -> Value {
    let sel: PcrSelection = "sha256:0,1,2,3,4,5,6,7".parse().unwrap();
    let pcrs = tpm.read_pcrs(&sel).unwrap();
    let mut map = serde_json::Map::new();
    for (_, i, v) in pcrs.iter() {
        map.insert(i.to_string(), json!([hex::encode(v)]));
    }
    json!({
        "writ_reference_profile": 1,
        "name": "simulated-secure-boot",
        "bank": "sha256",
        "pcrs": map,
        "secure_boot": true,
    })
}

pub fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Loads `profile` as `name` and assigns it to `runtime`.
pub fn assign(s: &Stack, runtime: &str, profile: &Value) {
    let file = s
        .dir
        .path()
        .join(format!("profile-{}.json", writ_testkit::random_hex(4)));
    std::fs::write(&file, profile.to_string()).unwrap();
    ok(&s.admin(&[
        "load-profile",
        "--name",
        "simulated",
        file.to_str().unwrap(),
    ]));
    ok(&s.admin(&[
        "assign-profile",
        "--runtime",
        runtime,
        "--profile",
        "simulated",
    ]));
}

/// Enrolls a runtime in a fresh swtpm and assigns it the profile of its boot.
pub fn ready(s: &Stack, name: &str) -> Runtime {
    let rt = Runtime::enroll(s, &s.tpm, name);
    assign(s, name, &profile_of(&rt.tpm));
    rt
}

/// The last record's (kind, subject, decision, reasons).
pub fn last(s: &Stack) -> (String, String, String, Vec<String>) {
    let r = s.records().pop().expect("a record");
    let kind = serde_json::to_value(r.kind).unwrap();
    let d = serde_json::to_value(r.decision).unwrap();
    (
        kind.as_str().unwrap().to_string(),
        r.subject,
        d.as_str().unwrap().to_string(),
        r.reasons,
    )
}

/// A runtime set up the README's way: the swtpm boots (simulated measured boot, its event log
/// kept in a file), then `writ agent enroll` under a join token for `name`. Returns the TPM
/// handle, the event log file and the agent's state folder.
pub fn agent_enrolled(s: &Stack, name: &str) -> (Attester, std::path::PathBuf, std::path::PathBuf) {
    let a = Attester::open(Some(&s.tpm.tcti())).unwrap();
    let log = simulate_boot(&a, BootProfile::SecureBoot).unwrap();
    let log_file = s.dir.path().join("binary_bios_measurements");
    std::fs::write(&log_file, &log).unwrap();
    let state = s.dir.path().join("agent");
    let token = s.join_token(name, "600");
    let url = s.url();
    let fp = s.server.as_ref().and_then(|x| x.fingerprint.clone());
    let mut args = vec![
        "agent",
        "enroll",
        "--server",
        url.as_str(),
        "--join-token",
        token.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
    ];
    let tcti = s.tpm.tcti();
    args.extend(["--tcti", tcti.as_str()]);
    if let Some(fp) = &fp {
        args.extend(["--fingerprint", fp.as_str()]);
    }
    ok(&s.writ(&args));
    (a, log_file, state)
}
