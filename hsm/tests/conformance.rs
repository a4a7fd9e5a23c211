#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! One conformance suite, run against every custody backend: PKCS#11 on a private SoftHSM2 token,
//! TPM on a private swtpm, and the software backend. Backend-specific error cases follow each
//! backend's instantiation of the suite.

use std::str::FromStr;
use std::sync::Arc;

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{DerSignature, Signature};
use p256::pkcs8::{DecodePublicKey, EncodePublicKey};
use sha2::{Digest, Sha256};
use writ_hsm::signer::CustodySigner;
use writ_hsm::{CustodyError, CustodyKey, KeyUri, OpenOptions, generate_key, open_key};

/// What a backend's tests need: names for fresh keys, and a way to restart the device.
struct Fixture<'a> {
    uri: Box<dyn Fn(&str) -> String + 'a>,
    restart: Box<dyn Fn() + 'a>,
    options: OpenOptions,
    hardware: bool,
}

impl Fixture<'_> {
    fn key_uri(&self, name: &str) -> KeyUri {
        KeyUri::from_str(&(self.uri)(name)).expect("fixture URI parses")
    }
    fn generate(&self, name: &str) -> Arc<dyn CustodyKey> {
        generate_key(&self.key_uri(name), &self.options).expect("generate key")
    }
    fn open(&self, name: &str) -> Result<Arc<dyn CustodyKey>, CustodyError> {
        open_key(&self.key_uri(name), &self.options)
    }
}

mod suite {
    use super::*;

    pub fn sign_verify(fx: &Fixture) {
        let key = fx.generate("sign");
        let vk = *key.public_key().verifying_key();
        assert_eq!(key.algorithm().jws_name(), "ES256");
        assert_eq!(key.hardware_backed(), fx.hardware);
        for i in 0..20u32 {
            let msg = format!("writ conformance message {i}");
            let sig = key.sign(msg.as_bytes()).expect("sign");
            vk.verify(msg.as_bytes(), &sig)
                .expect("signature verifies over the message");
            assert_eq!(sig.normalize_s(), sig, "custody signatures are low-S");
            assert!(
                vk.verify(b"another message", &sig).is_err(),
                "a signature is bound to its message"
            );
        }
        let digest: [u8; 32] = Sha256::digest(b"prehashed").into();
        let sig = key.sign_digest(&digest).expect("sign digest");
        vk.verify_prehash(&digest, &sig)
            .expect("digest signature verifies");
        vk.verify(b"prehashed", &sig)
            .expect("sign_digest(SHA-256(m)) is a signature over m");
    }

    pub fn public_key_round_trip(fx: &Fixture) {
        let key = fx.generate("pub");
        let der = key.public_key().spki_der();
        let parsed = p256::PublicKey::from_public_key_der(der).expect("SPKI DER parses as P-256");
        assert_eq!(
            &p256::ecdsa::VerifyingKey::from(parsed),
            key.public_key().verifying_key()
        );
        assert_eq!(parsed.to_public_key_der().expect("encode").as_bytes(), der);
        let pem = parsed.to_public_key_pem(Default::default()).expect("pem");
        assert_eq!(
            p256::PublicKey::from_public_key_pem(&pem).expect("pem parses"),
            parsed
        );
    }

    pub fn persistence_across_reopen(fx: &Fixture) {
        let first = fx.generate("persist");
        let spki = first.public_key().spki_der().to_vec();
        let vk = *first.public_key().verifying_key();
        let uri = first.uri().to_string();
        drop(first);
        (fx.restart)();
        let again = fx.open("persist").expect("reopen after restart");
        assert_eq!(again.public_key().spki_der(), spki.as_slice());
        let sig = again.sign(b"after reopen").expect("sign after reopen");
        vk.verify(b"after reopen", &sig)
            .expect("verifies under the original public key");
        // The canonical URI names the same key.
        let by_uri = open_key(&uri.parse().expect("canonical URI parses"), &fx.options)
            .expect("open by canonical URI");
        assert_eq!(by_uri.public_key().spki_der(), spki.as_slice());
    }

    pub fn concurrent_signing(fx: &Fixture) {
        let key = fx.generate("concurrent");
        let vk = *key.public_key().verifying_key();
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let key = key.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let msg = format!("thread {t} message {i}");
                        let sig = key.sign(msg.as_bytes()).expect("concurrent sign");
                        vk.verify(msg.as_bytes(), &sig)
                            .expect("concurrent signature verifies");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("signer thread");
        }
    }

    pub fn x509_builder_signs_with_custody_key(fx: &Fixture) {
        use std::time::Duration;
        use x509_cert::builder::{Builder, CertificateBuilder, profile::cabf::Root};
        use x509_cert::der::{Decode, Encode};
        use x509_cert::name::Name;
        use x509_cert::serial_number::SerialNumber;
        use x509_cert::spki::SubjectPublicKeyInfo;
        use x509_cert::time::Validity;

        let key = fx.generate("ca");
        let signer = CustodySigner::new(key.clone());
        let spki = SubjectPublicKeyInfo::from_der(key.public_key().spki_der()).expect("spki");
        let subject = Name::from_str("CN=writ conformance CA,O=writ,C=US").expect("name");
        let builder = CertificateBuilder::new(
            Root::new(false, subject).expect("profile"),
            SerialNumber::from(7u32),
            Validity::from_now(Duration::from_secs(3600)).expect("validity"),
            spki,
        )
        .expect("builder");
        let cert = builder
            .build::<_, DerSignature>(&signer)
            .expect("certificate signed in custody");
        let tbs = cert.tbs_certificate().to_der().expect("tbs der");
        let sig = DerSignature::from_bytes(cert.signature().raw_bytes()).expect("DER signature");
        let sig = Signature::from_der(sig.as_bytes()).expect("signature");
        key.public_key()
            .verifying_key()
            .verify(&tbs, &sig)
            .expect("certificate signature verifies");
    }

    pub fn generate_refuses_existing_key(fx: &Fixture) {
        let first = fx.generate("exists");
        let err = generate_key(&fx.key_uri("exists"), &fx.options)
            .expect_err("second generate must fail");
        assert!(matches!(err, CustodyError::KeyExists(_)), "{err}");
        // And the first key is untouched.
        let again = fx.open("exists").expect("reopen");
        assert_eq!(again.public_key(), first.public_key());
    }

    pub fn missing_key_is_named(fx: &Fixture) {
        let err = fx.open("never-generated").expect_err("no such key");
        assert!(matches!(err, CustodyError::KeyNotFound(_)), "{err}");
        assert!(err.to_string().contains("not found"), "{err}");
    }
}

macro_rules! conformance_suite {
    ($with:ident) => {
        #[test]
        fn sign_verify() {
            $with(module_path!(), "sign_verify", |fx| {
                crate::suite::sign_verify(fx)
            });
        }
        #[test]
        fn public_key_round_trip() {
            $with(module_path!(), "public_key_round_trip", |fx| {
                crate::suite::public_key_round_trip(fx)
            });
        }
        #[test]
        fn persistence_across_reopen() {
            $with(module_path!(), "persistence_across_reopen", |fx| {
                crate::suite::persistence_across_reopen(fx)
            });
        }
        #[test]
        fn concurrent_signing() {
            $with(module_path!(), "concurrent_signing", |fx| {
                crate::suite::concurrent_signing(fx)
            });
        }
        #[test]
        fn x509_builder_signs_with_custody_key() {
            $with(
                module_path!(),
                "x509_builder_signs_with_custody_key",
                |fx| crate::suite::x509_builder_signs_with_custody_key(fx),
            );
        }
        #[test]
        fn generate_refuses_existing_key() {
            $with(module_path!(), "generate_refuses_existing_key", |fx| {
                crate::suite::generate_refuses_existing_key(fx)
            });
        }
        #[test]
        fn missing_key_is_named() {
            $with(module_path!(), "missing_key_is_named", |fx| {
                crate::suite::missing_key_is_named(fx)
            });
        }
    };
}

mod pkcs11 {
    use super::*;
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::Attribute;
    use cryptoki::session::UserType;
    use writ_testkit::{SOFTHSM2_MODULE, SoftHsm, isolated};

    fn with(module_path: &str, name: &str, body: impl FnOnce(&Fixture)) {
        isolated(module_path, name, |hsm| {
            let fx = Fixture {
                uri: Box::new(|object| hsm.key_uri(object)),
                restart: Box::new(|| {}),
                options: OpenOptions::default(),
                hardware: true,
            };
            body(&fx)
        });
    }

    conformance_suite!(with);

    fn open_err(uri: &str) -> CustodyError {
        open_key(&uri.parse().expect("uri"), &OpenOptions::default()).expect_err("open must fail")
    }

    /// Creates a key pair directly through cryptoki with the given private-key attributes.
    fn raw_key(hsm: &SoftHsm, label: &str, private_attrs: &[Attribute]) {
        let module = writ_hsm::pkcs11::load_module(SOFTHSM2_MODULE.as_ref()).expect("module");
        let slot = module
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| module.get_token_info(*s).unwrap().label().trim_end() == hsm.label())
            .expect("slot");
        let session = module.open_rw_session(slot).unwrap();
        let _ = session.login(UserType::User, Some(&hsm.pin().as_str().into()));
        let params = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        let common = [
            Attribute::Token(true),
            Attribute::Label(label.into()),
            Attribute::Id(vec![9, 9]),
        ];
        let mut public = vec![Attribute::Verify(true), Attribute::EcParams(params)];
        public.extend_from_slice(&common);
        let mut private = vec![Attribute::Sign(true)];
        private.extend_from_slice(&common);
        private.extend_from_slice(private_attrs);
        session
            .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
            .expect("raw keygen");
    }

    #[test]
    fn generated_keys_are_sensitive_non_extractable_and_private() {
        isolated(
            module_path!(),
            "generated_keys_are_sensitive_non_extractable_and_private",
            |hsm| {
                let key = generate_key(
                    &hsm.key_uri("attrs").parse().unwrap(),
                    &OpenOptions::default(),
                )
                .unwrap();
                let fact = |n: &str| {
                    key.facts()
                        .iter()
                        .find(|f| f.name == n)
                        .map(|f| f.value.clone())
                };
                assert_eq!(fact("CKA_SENSITIVE").as_deref(), Some("true"));
                assert_eq!(fact("CKA_EXTRACTABLE").as_deref(), Some("false"));
                assert_eq!(fact("CKA_PRIVATE").as_deref(), Some("true"));
                assert_eq!(fact("CKA_NEVER_EXTRACTABLE").as_deref(), Some("true"));
                assert_eq!(key.backend(), writ_hsm::Backend::Pkcs11);
            },
        );
    }

    #[test]
    fn extractable_key_is_refused() {
        isolated(module_path!(), "extractable_key_is_refused", |hsm| {
            raw_key(
                hsm,
                "leaky",
                &[
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(true),
                ],
            );
            let err = open_err(&hsm.key_uri("leaky"));
            assert!(matches!(err, CustodyError::UnsafeKey { .. }), "{err}");
            assert!(err.to_string().contains("CKA_EXTRACTABLE"), "{err}");
        });
    }

    #[test]
    fn non_sensitive_key_is_refused() {
        isolated(module_path!(), "non_sensitive_key_is_refused", |hsm| {
            raw_key(
                hsm,
                "readable",
                &[
                    Attribute::Private(true),
                    Attribute::Sensitive(false),
                    Attribute::Extractable(false),
                ],
            );
            let err = open_err(&hsm.key_uri("readable"));
            assert!(matches!(err, CustodyError::UnsafeKey { .. }), "{err}");
            assert!(err.to_string().contains("CKA_SENSITIVE"), "{err}");
        });
    }

    #[test]
    fn public_object_key_is_refused() {
        isolated(module_path!(), "public_object_key_is_refused", |hsm| {
            raw_key(
                hsm,
                "nologin",
                &[
                    Attribute::Private(false),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                ],
            );
            let err = open_err(&hsm.key_uri("nologin"));
            assert!(err.to_string().contains("CKA_PRIVATE"), "{err}");
        });
    }

    #[test]
    fn missing_module_is_named() {
        let err = open_err(
            "pkcs11:token=t;object=o?module-path=/nonexistent/libnothing.so&pin-source=env:X",
        );
        assert!(
            matches!(err, CustodyError::ModuleUnavailable { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("/nonexistent/libnothing.so"),
            "{err}"
        );
    }

    #[test]
    fn wrong_pin_is_named_and_not_shown() {
        isolated(module_path!(), "wrong_pin_is_named_and_not_shown", |hsm| {
            let dir = tempfile::tempdir().unwrap();
            let bad = dir.path().join("bad.pin");
            std::fs::write(&bad, "99999999").unwrap();
            let uri = format!(
                "pkcs11:token={};object=any?module-path={SOFTHSM2_MODULE}&pin-source=file:{}",
                hsm.label(),
                bad.display()
            );
            let err = open_err(&uri);
            assert!(matches!(err, CustodyError::WrongPin { .. }), "{err}");
            assert!(!err.to_string().contains("99999999"));
            assert!(!format!("{err:?}").contains("99999999"));
        });
    }

    #[test]
    fn missing_token_is_named_with_the_tokens_present() {
        isolated(
            module_path!(),
            "missing_token_is_named_with_the_tokens_present",
            |hsm| {
                let uri = format!(
                    "pkcs11:token=no-such-token;object=o?module-path={SOFTHSM2_MODULE}&pin-source=file:{}",
                    hsm.pin_file().display()
                );
                let err = open_err(&uri);
                assert!(matches!(err, CustodyError::TokenNotFound { .. }), "{err}");
                assert!(err.to_string().contains(hsm.label()), "{err}");
            },
        );
    }

    #[test]
    fn missing_pin_source_is_named() {
        isolated(module_path!(), "missing_pin_source_is_named", |hsm| {
            let uri = format!(
                "pkcs11:token={};object=o?module-path={SOFTHSM2_MODULE}&pin-source=env:WRIT_TEST_UNSET_PIN_VAR",
                hsm.label()
            );
            let err = open_err(&uri);
            assert!(matches!(err, CustodyError::SecretSource { .. }), "{err}");
            assert!(err.to_string().contains("WRIT_TEST_UNSET_PIN_VAR"), "{err}");
        });
    }

    #[test]
    fn key_on_another_token_is_not_found() {
        isolated(module_path!(), "key_on_another_token_is_not_found", |hsm| {
            hsm.add_token("second");
            generate_key(
                &hsm.key_uri("only-here").parse().unwrap(),
                &OpenOptions::default(),
            )
            .unwrap();
            let other = hsm.key_uri("only-here").replace(hsm.label(), "second");
            let err = open_err(&other);
            assert!(matches!(err, CustodyError::KeyNotFound(_)), "{err}");
        });
    }

    #[test]
    fn stale_sessions_after_logout_are_reopened() {
        isolated(
            module_path!(),
            "stale_sessions_after_logout_are_reopened",
            |hsm| {
                let key = writ_hsm::pkcs11::Pkcs11Key::generate(
                    match &hsm.key_uri("stale").parse().unwrap() {
                        KeyUri::Pkcs11(u) => u,
                        _ => unreachable!(),
                    },
                )
                .unwrap();
                key.sign(b"before").unwrap();
                // Log the whole application out from another session: every pooled session now answers
                // CKR_USER_NOT_LOGGED_IN.
                let module = writ_hsm::pkcs11::load_module(SOFTHSM2_MODULE.as_ref()).unwrap();
                let slot = module
                    .get_slots_with_token()
                    .unwrap()
                    .into_iter()
                    .find(|s| module.get_token_info(*s).unwrap().label().trim_end() == hsm.label())
                    .unwrap();
                let other = module.open_ro_session(slot).unwrap();
                other.logout().expect("logout");
                let before = key.pool_stats().stale_recoveries;
                let sig = key
                    .sign(b"after logout")
                    .expect("sign recovers by logging in again");
                key.public_key()
                    .verifying_key()
                    .verify(b"after logout", &sig)
                    .unwrap();
                assert_eq!(key.pool_stats().stale_recoveries, before + 1);
            },
        );
    }

    #[test]
    fn stale_sessions_after_module_reinitialisation_are_reopened() {
        isolated(
            module_path!(),
            "stale_sessions_after_module_reinitialisation_are_reopened",
            |hsm| {
                let key = writ_hsm::pkcs11::Pkcs11Key::generate(
                    match &hsm.key_uri("reinit").parse().unwrap() {
                        KeyUri::Pkcs11(u) => u,
                        _ => unreachable!(),
                    },
                )
                .unwrap();
                key.sign(b"before").unwrap();
                // C_Finalize + C_Initialize: every session handle the pool holds is now invalid, as after
                // an HSM client restart.
                let module = writ_hsm::pkcs11::load_module(SOFTHSM2_MODULE.as_ref()).unwrap();
                module.clone().finalize().expect("finalize");
                module
                    .initialize(cryptoki::context::CInitializeArgs::new(
                        cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
                    ))
                    .expect("initialize again");
                let sig = key
                    .sign(b"after reinit")
                    .expect("sign recovers with a fresh session");
                key.public_key()
                    .verifying_key()
                    .verify(b"after reinit", &sig)
                    .unwrap();
                assert_eq!(key.pool_stats().stale_recoveries, 1);
            },
        );
    }
}

mod tpm {
    use super::*;
    use writ_testkit::{Fault, FaultProxy, Swtpm};

    fn with(_module_path: &str, _name: &str, body: impl FnOnce(&Fixture)) {
        let tpm = Swtpm::start();
        let handle = std::cell::Cell::new(0x8100_1000u32);
        let names = std::cell::RefCell::new(std::collections::HashMap::<String, u32>::new());
        let fx = Fixture {
            uri: Box::new(|name| {
                let h = *names
                    .borrow_mut()
                    .entry(name.to_string())
                    .or_insert_with(|| {
                        handle.set(handle.get() + 1);
                        handle.get()
                    });
                format!("tpm:handle={h:#010x}?tcti={}", tpm.tcti())
            }),
            restart: Box::new(|| tpm.reboot()),
            options: OpenOptions::default(),
            hardware: true,
        };
        body(&fx);
    }

    conformance_suite!(with);

    fn uri(tpm_tcti: &str, handle: u32) -> KeyUri {
        format!("tpm:handle={handle:#010x}?tcti={tpm_tcti}")
            .parse()
            .unwrap()
    }

    #[test]
    fn unreachable_tpm_is_named() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = open_key(
            &uri(&format!("swtpm:host=127.0.0.1,port={port}"), 0x8100_0001),
            &OpenOptions::default(),
        )
        .expect_err("no TPM there");
        assert!(matches!(err, CustodyError::TpmUnavailable { .. }), "{err}");
    }

    #[test]
    fn transient_retry_answers_are_retried() {
        let tpm = Swtpm::start();
        let key = generate_key(&uri(&tpm.tcti(), 0x8100_0002), &OpenOptions::default()).unwrap();
        let vk = *key.public_key().verifying_key();
        drop(key);
        // TPM2_Sign (0x15D) answered with TPM_RC_RETRY (0x922) three times, then forwarded.
        let proxy = FaultProxy::start(
            &tpm,
            Fault {
                command_code: 0x15D,
                rc: 0x922,
                count: 3,
            },
        );
        let key = open_key(&uri(&proxy.tcti(), 0x8100_0002), &OpenOptions::default()).unwrap();
        let sig = key.sign(b"through the proxy").expect("retried to success");
        vk.verify(b"through the proxy", &sig).unwrap();
        assert_eq!(proxy.injected(), 3);
    }

    #[test]
    fn busy_tpm_fails_after_the_retry_bound() {
        let tpm = Swtpm::start();
        let key = generate_key(&uri(&tpm.tcti(), 0x8100_0003), &OpenOptions::default()).unwrap();
        drop(key);
        // TPM_RC_YIELDED (0x908) forever for TPM2_Sign: the open-time self-test must give up.
        let proxy = FaultProxy::start(
            &tpm,
            Fault {
                command_code: 0x15D,
                rc: 0x908,
                count: u32::MAX,
            },
        );
        let started = std::time::Instant::now();
        let err = open_key(&uri(&proxy.tcti(), 0x8100_0003), &OpenOptions::default())
            .expect_err("busy TPM");
        assert!(matches!(err, CustodyError::TpmBusy { .. }), "{err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the bound is bounded in time"
        );
        let sent = proxy.injected();
        assert!(sent >= writ_hsm::tpm::MAX_ATTEMPTS, "retried: {sent}");
        assert!(
            sent <= writ_hsm::tpm::MAX_ATTEMPTS * 10,
            "but not forever: {sent}"
        );
    }

    #[test]
    fn auth_value_is_required_when_set() {
        let tpm = Swtpm::start();
        let dir = tempfile::tempdir().unwrap();
        let auth = dir.path().join("auth");
        std::fs::write(&auth, "correct horse").unwrap();
        let with_auth: KeyUri = format!(
            "tpm:handle=0x81000004?tcti={}&auth-source=file:{}",
            tpm.tcti(),
            auth.display()
        )
        .parse()
        .unwrap();
        let key = generate_key(&with_auth, &OpenOptions::default()).unwrap();
        assert!(
            key.facts()
                .iter()
                .any(|f| f.name == "authValue" && f.value == "set")
        );
        drop(key);
        let err =
            open_key(&uri(&tpm.tcti(), 0x8100_0004), &OpenOptions::default()).expect_err("no auth");
        assert!(matches!(err, CustodyError::Tpm { op: "Sign", .. }), "{err}");
        open_key(&with_auth, &OpenOptions::default()).expect("right auth opens");
    }

    #[test]
    fn restricted_key_is_refused() {
        // An AK (restricted signing key) persisted at a handle is not a custody key: it signs only
        // TPM-generated structures.
        let tpm = Swtpm::start();
        let attester = writ_hsm::tpm::attester::Attester::open(Some(&tpm.tcti())).unwrap();
        let ak = attester.create_ak().unwrap();
        let loaded = attester.load_ak(&ak).unwrap();
        attester.persist(&loaded, 0x8100_0005).unwrap();
        drop(loaded);
        drop(attester);
        let err = open_key(&uri(&tpm.tcti(), 0x8100_0005), &OpenOptions::default())
            .expect_err("AK refused");
        assert!(matches!(err, CustodyError::UnsupportedKey { .. }), "{err}");
        assert!(err.to_string().contains("restricted"), "{err}");
    }
}

#[cfg(feature = "software-keys")]
mod software {
    use super::*;

    fn with(_module_path: &str, _name: &str, body: impl FnOnce(&Fixture)) {
        let dir = tempfile::tempdir().unwrap();
        let fx = Fixture {
            uri: Box::new(|name| format!("soft:path={}", dir.path().join(name).display())),
            restart: Box::new(|| {}),
            options: OpenOptions {
                allow_software_keys: true,
            },
            hardware: false,
        };
        body(&fx);
    }

    conformance_suite!(with);

    #[test]
    fn software_keys_need_the_run_time_flag() {
        let dir = tempfile::tempdir().unwrap();
        let uri: KeyUri = format!("soft:path={}", dir.path().join("k").display())
            .parse()
            .unwrap();
        let err =
            generate_key(&uri, &OpenOptions::default()).expect_err("refused without the flag");
        assert!(matches!(err, CustodyError::SoftwareKeysRefused(_)), "{err}");
        assert!(!dir.path().join("k").exists(), "nothing was written");
    }

    #[test]
    fn debug_output_has_no_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let uri: KeyUri = format!("soft:path={}", dir.path().join("k").display())
            .parse()
            .unwrap();
        let key = generate_key(
            &uri,
            &OpenOptions {
                allow_software_keys: true,
            },
        )
        .unwrap();
        use p256::pkcs8::DecodePrivateKey;
        let der = std::fs::read(dir.path().join("k")).unwrap();
        let scalar = p256::ecdsa::SigningKey::from_pkcs8_der(&der)
            .unwrap()
            .to_bytes();
        let debug = format!("{key:?}");
        assert!(!debug.contains(&hex::encode(scalar)), "{debug}");
        assert!(
            !debug.contains(&format!("{:?}", scalar.as_slice())),
            "{debug}"
        );
    }
}

mod tpm_session {
    use super::*;
    use writ_testkit::Swtpm;

    #[test]
    fn an_open_key_keeps_signing_across_a_tpm_reboot() {
        // The key's shared HMAC session dies with the reboot; the next signature must start a new
        // one rather than fail.
        // Only keys with an authValue use the shared HMAC session (see ObjectAuth).
        let tpm = Swtpm::start();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("auth"), "s3cret").unwrap();
        let uri: KeyUri = format!(
            "tpm:handle=0x81000010?tcti={}&auth-source=file:{}",
            tpm.tcti(),
            dir.path().join("auth").display()
        )
        .parse()
        .unwrap();
        let key = generate_key(&uri, &OpenOptions::default()).unwrap();
        key.sign(b"before").unwrap();
        tpm.reboot();
        let sig = key.sign(b"after reboot").expect("signs after the reboot");
        key.public_key()
            .verifying_key()
            .verify(b"after reboot", &sig)
            .unwrap();
    }
}
