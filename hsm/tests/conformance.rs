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
                // C_Finalize + C_Initialize: the process's view of the token starts over, as after
                // an HSM client restart.
                restart: Box::new(reinitialise_module),
                options: OpenOptions::default(),
                hardware: true,
            };
            body(&fx)
        });
    }

    fn reinitialise_module() {
        let module = writ_hsm::pkcs11::load_module(SOFTHSM2_MODULE.as_ref()).unwrap();
        module.clone().finalize().expect("finalize");
        module
            .initialize(cryptoki::context::CInitializeArgs::new(
                cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
            ))
            .expect("initialize again");
    }

    conformance_suite!(with);

    fn open_err(uri: &str) -> CustodyError {
        open_key(&uri.parse().expect("uri"), &OpenOptions::default()).expect_err("open must fail")
    }

    /// Creates a key pair directly through cryptoki with the given private-key attributes.
    const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: [u8; 7] = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    const SAFE: [Attribute; 3] = [
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
    ];

    fn raw_session(hsm: &SoftHsm) -> cryptoki::session::Session {
        let module = writ_hsm::pkcs11::load_module(SOFTHSM2_MODULE.as_ref()).expect("module");
        let slot = module
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| module.get_token_info(*s).unwrap().label().trim_end() == hsm.label())
            .expect("slot");
        let session = module.open_rw_session(slot).unwrap();
        let _ = session.login(UserType::User, Some(&hsm.pin().as_str().into()));
        session
    }

    /// Creates a P-256 key pair directly through cryptoki with the given private-key attributes.
    fn raw_key(hsm: &SoftHsm, label: &str, private_attrs: &[Attribute]) {
        raw_key_with(hsm, label, &P256, private_attrs);
    }

    fn raw_key_with(hsm: &SoftHsm, label: &str, params: &[u8], private_attrs: &[Attribute]) {
        let session = raw_session(hsm);
        let common = [
            Attribute::Token(true),
            Attribute::Label(label.into()),
            Attribute::Id(vec![9, 9]),
        ];
        let mut public = vec![
            Attribute::Verify(true),
            Attribute::EcParams(params.to_vec()),
        ];
        public.extend_from_slice(&common);
        let mut private = vec![];
        if !private_attrs
            .iter()
            .any(|a| matches!(a, Attribute::Sign(_)))
        {
            private.push(Attribute::Sign(true));
        }
        private.extend_from_slice(&common);
        private.extend_from_slice(private_attrs);
        session
            .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
            .expect("raw keygen");
    }

    #[test]
    fn p384_key_is_refused() {
        isolated(module_path!(), "p384_key_is_refused", |hsm| {
            raw_key_with(hsm, "p384", &P384, &SAFE);
            let err = open_err(&hsm.key_uri("p384"));
            assert!(matches!(err, CustodyError::UnsupportedKey { .. }), "{err}");
            assert!(err.to_string().contains("P-256"), "{err}");
        });
    }

    #[test]
    fn key_without_sign_is_refused() {
        isolated(module_path!(), "key_without_sign_is_refused", |hsm| {
            let mut attrs = SAFE.to_vec();
            attrs.push(Attribute::Sign(false));
            raw_key(hsm, "nosign", &attrs);
            let err = open_err(&hsm.key_uri("nosign"));
            assert!(err.to_string().contains("CKA_SIGN"), "{err}");
        });
    }

    #[test]
    fn public_object_of_another_key_is_refused() {
        isolated(
            module_path!(),
            "public_object_of_another_key_is_refused",
            |hsm| {
                raw_key(hsm, "swapped", &SAFE);
                let session = raw_session(hsm);
                let public = session
                    .find_objects(&[
                        Attribute::Class(cryptoki::object::ObjectClass::PUBLIC_KEY),
                        Attribute::Label(b"swapped".to_vec()),
                    ])
                    .unwrap();
                session.destroy_object(public[0]).unwrap();
                // A public object with the same label and id, holding someone else's point.
                let other = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
                let point = other.verifying_key().to_sec1_bytes();
                let mut der = vec![0x04, point.len() as u8];
                der.extend_from_slice(&point);
                session
                    .create_object(&[
                        Attribute::Class(cryptoki::object::ObjectClass::PUBLIC_KEY),
                        Attribute::KeyType(cryptoki::object::KeyType::EC),
                        Attribute::Token(true),
                        Attribute::Verify(true),
                        Attribute::EcParams(P256.to_vec()),
                        Attribute::EcPoint(der),
                        Attribute::Label(b"swapped".to_vec()),
                        Attribute::Id(vec![9, 9]),
                    ])
                    .unwrap();
                // writ must log in itself: a login it did not make cannot be checked.
                drop(session);
                let err = open_err(&hsm.key_uri("swapped"));
                assert!(matches!(err, CustodyError::UnsafeKey { .. }), "{err}");
                assert!(err.to_string().contains("does not match"), "{err}");
            },
        );
    }

    #[test]
    fn ambiguous_label_is_refused() {
        isolated(module_path!(), "ambiguous_label_is_refused", |hsm| {
            raw_key(hsm, "twice", &SAFE);
            let session = raw_session(hsm);
            let common = [
                Attribute::Token(true),
                Attribute::Label(b"twice".to_vec()),
                Attribute::Id(vec![8]),
            ];
            let mut public = vec![Attribute::Verify(true), Attribute::EcParams(P256.to_vec())];
            public.extend_from_slice(&common);
            let mut private = vec![Attribute::Sign(true)];
            private.extend_from_slice(&common);
            private.extend_from_slice(&SAFE);
            session
                .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                .unwrap();
            // writ must log in itself: a login it did not make cannot be checked.
            drop(session);
            let err = open_err(&hsm.key_uri("twice"));
            assert!(matches!(err, CustodyError::KeyAmbiguous(_)), "{err}");
            // Naming the id picks one.
            let by_id = format!(
                "{};id=%08{}",
                hsm.key_uri("twice").split('?').next().unwrap(),
                &hsm.key_uri("twice")[hsm.key_uri("twice").find('?').unwrap()..]
            );
            open_key(&by_id.parse().unwrap(), &OpenOptions::default()).expect("id disambiguates");
        });
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
            writ_testkit::write_secret(&bad, "99999999");
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

/// A token whose storage disappears (SoftHSM2's token folder moved away: what a removed token or
/// a lost HSM looks like to the module) refuses to sign; when it comes back the key signs again,
/// without reopening the key or restarting the process: the pool re-initialises the module and
/// finds the token again.
#[test]
fn a_token_that_disappears_and_comes_back_signs_again_without_a_restart() {
    use writ_testkit::isolated;
    isolated(
        module_path!(),
        "a_token_that_disappears_and_comes_back_signs_again_without_a_restart",
        |hsm| {
            let key = writ_hsm::pkcs11::Pkcs11Key::generate(
                match &hsm.key_uri("gone").parse().unwrap() {
                    KeyUri::Pkcs11(u) => u,
                    _ => unreachable!(),
                },
            )
            .unwrap();
            key.sign(b"before").unwrap();
            let tokens = hsm.dir().join("tokens");
            let moved = hsm.dir().join("tokens.gone");
            std::fs::rename(&tokens, &moved).unwrap();
            for _ in 0..3 {
                assert!(key.sign(b"gone").is_err(), "signed without its token");
            }
            std::fs::rename(&moved, &tokens).unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            let sig = loop {
                match key.sign(b"back") {
                    Ok(sig) => break sig,
                    Err(e) => assert!(
                        std::time::Instant::now() < deadline,
                        "never signed again: {e}"
                    ),
                }
                std::thread::sleep(std::time::Duration::from_millis(250));
            };
            key.public_key()
                .verifying_key()
                .verify(b"back", &sig)
                .unwrap();
            assert!(key.pool_stats().device_recoveries >= 1);
        },
    );
}

mod pkcs11_more {
    use super::*;
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    use cryptoki::session::UserType;
    use writ_testkit::{SOFTHSM2_MODULE, SoftHsm, isolated};

    fn raw_session(hsm: &SoftHsm, label: &str) -> cryptoki::session::Session {
        let module = writ_hsm::pkcs11::load_module(SOFTHSM2_MODULE.as_ref()).unwrap();
        let slot = module
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| module.get_token_info(*s).unwrap().label().trim_end() == label)
            .unwrap();
        let session = module.open_rw_session(slot).unwrap();
        let _ = session.login(UserType::User, Some(&hsm.pin().as_str().into()));
        session
    }

    /// A key pair made with `first` private attributes, then changed to `then`.
    fn key_changed_later(hsm: &SoftHsm, label: &str, first: &[Attribute], then: &[Attribute]) {
        let session = raw_session(hsm, hsm.label());
        let params = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        let common = [
            Attribute::Token(true),
            Attribute::Label(label.into()),
            Attribute::Id(vec![5]),
        ];
        let mut public = vec![Attribute::Verify(true), Attribute::EcParams(params)];
        public.extend_from_slice(&common);
        let mut private = vec![Attribute::Sign(true), Attribute::Private(true)];
        private.extend_from_slice(&common);
        private.extend_from_slice(first);
        let (_, key) = session
            .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
            .unwrap();
        session.update_attributes(key, then).unwrap();
    }

    fn open_err(uri: &str) -> CustodyError {
        open_key(&uri.parse().unwrap(), &OpenOptions::default()).expect_err("open must fail")
    }

    #[test]
    fn key_that_was_once_readable_is_refused() {
        isolated(
            module_path!(),
            "key_that_was_once_readable_is_refused",
            |hsm| {
                key_changed_later(
                    hsm,
                    "was-readable",
                    &[Attribute::Sensitive(false), Attribute::Extractable(false)],
                    &[Attribute::Sensitive(true)],
                );
                let err = open_err(&hsm.key_uri("was-readable"));
                assert!(matches!(err, CustodyError::UnsafeKey { .. }), "{err}");
                assert!(err.to_string().contains("CKA_ALWAYS_SENSITIVE"), "{err}");
            },
        );
    }

    #[test]
    fn key_that_was_once_exportable_is_refused() {
        isolated(
            module_path!(),
            "key_that_was_once_exportable_is_refused",
            |hsm| {
                key_changed_later(
                    hsm,
                    "was-exportable",
                    &[Attribute::Sensitive(true), Attribute::Extractable(true)],
                    &[Attribute::Extractable(false)],
                );
                let err = open_err(&hsm.key_uri("was-exportable"));
                assert!(matches!(err, CustodyError::UnsafeKey { .. }), "{err}");
                assert!(err.to_string().contains("CKA_NEVER_EXTRACTABLE"), "{err}");
            },
        );
    }

    #[test]
    fn two_tokens_with_one_label_are_refused() {
        isolated(
            module_path!(),
            "two_tokens_with_one_label_are_refused",
            |hsm| {
                hsm.add_token(hsm.label());
                let err = open_err(&hsm.key_uri("any"));
                assert!(err.to_string().contains("labels must be unique"), "{err}");
            },
        );
    }

    #[test]
    fn wrong_pin_is_refused_even_when_already_logged_in() {
        isolated(
            module_path!(),
            "wrong_pin_is_refused_even_when_already_logged_in",
            |hsm| {
                let _first = generate_key(
                    &hsm.key_uri("first").parse().unwrap(),
                    &OpenOptions::default(),
                )
                .unwrap();
                let dir = tempfile::tempdir().unwrap();
                let bad = dir.path().join("bad.pin");
                writ_testkit::write_secret(&bad, "00000000");
                let uri = format!(
                    "pkcs11:token={};object=first?module-path={SOFTHSM2_MODULE}&pin-source=file:{}",
                    hsm.label(),
                    bad.display()
                );
                let err = open_err(&uri);
                assert!(matches!(err, CustodyError::WrongPin { .. }), "{err}");
            },
        );
    }

    #[test]
    fn rebuild_refuses_a_different_key_under_the_same_name() {
        isolated(
            module_path!(),
            "rebuild_refuses_a_different_key_under_the_same_name",
            |hsm| {
                let key = generate_key(
                    &hsm.key_uri("swap").parse().unwrap(),
                    &OpenOptions::default(),
                )
                .unwrap();
                key.sign(b"before").unwrap();
                // Replace the pair with another one carrying the same label and id, then log out so
                // the pool has to reopen and look the key up again.
                let session = raw_session(hsm, hsm.label());
                let objects = session
                    .find_objects(&[Attribute::Label(b"swap".to_vec())])
                    .unwrap();
                let id = match session
                    .get_attributes(objects[0], &[AttributeType::Id])
                    .unwrap()
                    .remove(0)
                {
                    Attribute::Id(id) => id,
                    other => panic!("{other:?}"),
                };
                for o in objects {
                    session.destroy_object(o).unwrap();
                }
                let params = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
                let common = [
                    Attribute::Token(true),
                    Attribute::Label(b"swap".to_vec()),
                    Attribute::Id(id),
                ];
                let mut public = vec![Attribute::Verify(true), Attribute::EcParams(params)];
                public.extend_from_slice(&common);
                let mut private = vec![
                    Attribute::Sign(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                ];
                private.extend_from_slice(&common);
                session
                    .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                    .unwrap();
                assert!(
                    !session
                        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
                        .unwrap()
                        .is_empty()
                );
                session.logout().unwrap();
                let err = key
                    .sign(b"after the swap")
                    .expect_err("a different key must not sign");
                assert!(err.to_string().contains("different key"), "{err}");
            },
        );
    }
}

mod pkcs11_swap {
    use super::*;
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
    use cryptoki::session::UserType;
    use writ_testkit::{SOFTHSM2_MODULE, isolated};

    #[test]
    fn rebuild_refuses_a_new_private_key_behind_the_old_public_object() {
        isolated(
            module_path!(),
            "rebuild_refuses_a_new_private_key_behind_the_old_public_object",
            |hsm| {
                let key = generate_key(
                    &hsm.key_uri("copied").parse().unwrap(),
                    &OpenOptions::default(),
                )
                .unwrap();
                key.sign(b"before").unwrap();
                let module = writ_hsm::pkcs11::load_module(SOFTHSM2_MODULE.as_ref()).unwrap();
                let slot = module
                    .get_slots_with_token()
                    .unwrap()
                    .into_iter()
                    .find(|s| module.get_token_info(*s).unwrap().label().trim_end() == hsm.label())
                    .unwrap();
                let session = module.open_rw_session(slot).unwrap();
                let _ = session.login(UserType::User, Some(&hsm.pin().as_str().into()));
                let objects = session
                    .find_objects(&[Attribute::Label(b"copied".to_vec())])
                    .unwrap();
                let mut id = vec![];
                let mut point = vec![];
                for o in &objects {
                    for a in session
                        .get_attributes(*o, &[AttributeType::Id, AttributeType::EcPoint])
                        .unwrap()
                    {
                        match a {
                            Attribute::Id(v) => id = v,
                            Attribute::EcPoint(v) => point = v,
                            _ => {}
                        }
                    }
                }
                assert!(!point.is_empty());
                for o in objects {
                    session.destroy_object(o).unwrap();
                }
                // A new pair under the same label and id; its public object replaced by a copy of
                // the old one, so attributes and CKA_EC_POINT all look unchanged.
                let params = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
                let common = [
                    Attribute::Token(true),
                    Attribute::Label(b"copied".to_vec()),
                    Attribute::Id(id.clone()),
                ];
                let mut public = vec![Attribute::Verify(true), Attribute::EcParams(params.clone())];
                public.extend_from_slice(&common);
                let mut private = vec![
                    Attribute::Sign(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                ];
                private.extend_from_slice(&common);
                let (new_public, _) = session
                    .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                    .unwrap();
                session.destroy_object(new_public).unwrap();
                session
                    .create_object(&[
                        Attribute::Class(ObjectClass::PUBLIC_KEY),
                        Attribute::KeyType(KeyType::EC),
                        Attribute::Token(true),
                        Attribute::Verify(true),
                        Attribute::EcParams(params),
                        Attribute::EcPoint(point),
                        Attribute::Label(b"copied".to_vec()),
                        Attribute::Id(id),
                    ])
                    .unwrap();
                session.logout().unwrap();
                let err = key
                    .sign(b"after")
                    .expect_err("the new private key must not sign as the old one");
                assert!(err.to_string().contains("different key"), "{err}");
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
                tpm.key_uri(h)
            }),
            restart: Box::new(|| tpm.reboot()),
            options: OpenOptions::default(),
            hardware: true,
        };
        body(&fx);
    }

    conformance_suite!(with);

    /// A URI without an authValue (for keys that must be refused before it matters).
    fn uri(tpm_tcti: &str, handle: u32) -> KeyUri {
        format!("tpm:handle={handle:#010x}?tcti={tpm_tcti}")
            .parse()
            .unwrap()
    }

    /// The key at `handle`, reached through `tcti`, with the TPM's test authValue.
    fn auth_uri(tpm: &Swtpm, tcti: &str, handle: u32) -> KeyUri {
        format!(
            "tpm:handle={handle:#010x}?tcti={tcti}&auth-source=file:{}",
            tpm.auth_file().display()
        )
        .parse()
        .unwrap()
    }

    #[test]
    fn unreachable_tpm_is_named() {
        // Leased, never bound: nothing listens there, and no other test's swtpm can take it.
        let lease = writ_testkit::lease_port_pair();
        let port = lease.port;
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
        let key = generate_key(
            &auth_uri(&tpm, &tpm.tcti(), 0x8100_0002),
            &OpenOptions::default(),
        )
        .unwrap();
        let vk = *key.public_key().verifying_key();
        drop(key);
        // TPM2_Sign (0x15D) answered with TPM_RC_RETRY (0x922) twelve times, then forwarded. ESYS
        // resubmits a few times by itself and then gives up; only writ's own bounded retry gets
        // through twelve.
        let proxy = FaultProxy::start(
            &tpm,
            Fault {
                command_code: 0x15D,
                rc: 0x922,
                count: 12,
            },
        );
        let key = open_key(
            &auth_uri(&tpm, &proxy.tcti(), 0x8100_0002),
            &OpenOptions::default(),
        )
        .unwrap();
        let sig = key.sign(b"through the proxy").expect("retried to success");
        vk.verify(b"through the proxy", &sig).unwrap();
        assert_eq!(proxy.injected(), 12);
    }

    #[test]
    fn busy_tpm_fails_after_the_retry_bound() {
        let tpm = Swtpm::start();
        let key = generate_key(
            &auth_uri(&tpm, &tpm.tcti(), 0x8100_0003),
            &OpenOptions::default(),
        )
        .unwrap();
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
        let err = open_key(
            &auth_uri(&tpm, &proxy.tcti(), 0x8100_0003),
            &OpenOptions::default(),
        )
        .expect_err("busy TPM");
        match err {
            CustodyError::TpmBusy { attempts, .. } => {
                assert_eq!(attempts, writ_hsm::tpm::MAX_ATTEMPTS)
            }
            other => panic!("expected TpmBusy, got {other}"),
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the bound is bounded in time"
        );
        let sent = proxy.injected();
        assert!(
            sent > writ_hsm::tpm::MAX_ATTEMPTS,
            "ESYS and writ both retried: {sent}"
        );
        assert!(
            sent <= writ_hsm::tpm::MAX_ATTEMPTS * 10,
            "but not forever: {sent}"
        );
    }

    #[test]
    fn keys_without_an_auth_value_are_refused() {
        let tpm = Swtpm::start();
        let err = generate_key(&uri(&tpm.tcti(), 0x8100_0004), &OpenOptions::default())
            .expect_err("no auth");
        assert!(matches!(err, CustodyError::UnsafeKey { .. }), "{err}");
        assert!(err.to_string().contains("authValue"), "{err}");
        // Nothing was created at the handle.
        generate_key(
            &auth_uri(&tpm, &tpm.tcti(), 0x8100_0004),
            &OpenOptions::default(),
        )
        .expect("handle still free");
        let err =
            open_key(&uri(&tpm.tcti(), 0x8100_0004), &OpenOptions::default()).expect_err("no auth");
        assert!(matches!(err, CustodyError::UnsafeKey { .. }), "{err}");
    }

    #[test]
    fn wrong_auth_value_is_refused_at_open() {
        let tpm = Swtpm::start();
        generate_key(
            &auth_uri(&tpm, &tpm.tcti(), 0x8100_0005),
            &OpenOptions::default(),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        writ_testkit::write_secret(&dir.path().join("wrong"), "not the auth value");
        let wrong: KeyUri = format!(
            "tpm:handle=0x81000005?tcti={}&auth-source=file:{}",
            tpm.tcti(),
            dir.path().join("wrong").display()
        )
        .parse()
        .unwrap();
        let err = open_key(&wrong, &OpenOptions::default()).expect_err("wrong authValue");
        assert!(matches!(err, CustodyError::Tpm { op: "Sign", .. }), "{err}");
        assert!(!format!("{err} {err:?}").contains("not the auth value"));
    }

    #[test]
    fn an_open_key_keeps_signing_across_a_tpm_reboot() {
        // The shared HMAC session dies with the reboot; the next signature must start a new one.
        let tpm = Swtpm::start();
        let key = generate_key(
            &auth_uri(&tpm, &tpm.tcti(), 0x8100_0010),
            &OpenOptions::default(),
        )
        .unwrap();
        key.sign(b"before").unwrap();
        tpm.reboot();
        let sig = key.sign(b"after reboot").expect("signs after the reboot");
        key.public_key()
            .verifying_key()
            .verify(b"after reboot", &sig)
            .unwrap();
    }

    // TPM outages are played by the fault proxy rather than by killing swtpm: a freed port could be
    // taken by another test's swtpm meanwhile, and the key would reconnect to the wrong TPM.

    #[test]
    fn an_open_key_keeps_signing_after_its_connection_is_cut() {
        let tpm = Swtpm::start();
        generate_key(
            &auth_uri(&tpm, &tpm.tcti(), 0x8100_0011),
            &OpenOptions::default(),
        )
        .unwrap();
        let proxy = FaultProxy::start(
            &tpm,
            Fault {
                command_code: 0,
                rc: 0,
                count: 0,
            },
        );
        let key = open_key(
            &auth_uri(&tpm, &proxy.tcti(), 0x8100_0011),
            &OpenOptions::default(),
        )
        .unwrap();
        key.sign(b"before").unwrap();
        proxy.cut_connections();
        let sig = key
            .sign(b"after the cut")
            .expect("signs after reconnecting");
        key.public_key()
            .verifying_key()
            .verify(b"after the cut", &sig)
            .unwrap();
    }

    #[test]
    fn repeated_connection_cuts_do_not_exhaust_the_tpm() {
        // Each cut abandons the salted session on the TPM side; swtpm holds only a few. Signing
        // must keep working however often the connection is cut.
        let tpm = Swtpm::start();
        generate_key(
            &auth_uri(&tpm, &tpm.tcti(), 0x8100_0014),
            &OpenOptions::default(),
        )
        .unwrap();
        let proxy = FaultProxy::start(
            &tpm,
            Fault {
                command_code: 0,
                rc: 0,
                count: 0,
            },
        );
        let key = open_key(
            &auth_uri(&tpm, &proxy.tcti(), 0x8100_0014),
            &OpenOptions::default(),
        )
        .unwrap();
        for round in 0..6 {
            key.sign(b"before the cut")
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            proxy.cut_connections();
            key.sign(b"after the cut")
                .unwrap_or_else(|e| panic!("round {round}, after the cut: {e}"));
            // A real outage: the device is marked broken and reconnected, abandoning its session.
            proxy.set_down(true);
            assert!(key.sign(b"down").is_err());
            proxy.set_down(false);
        }
        key.sign(b"after six outages").expect("still signing");
    }

    #[test]
    fn a_tpm_that_was_down_is_used_again_when_it_returns() {
        let tpm = Swtpm::start();
        generate_key(
            &auth_uri(&tpm, &tpm.tcti(), 0x8100_0013),
            &OpenOptions::default(),
        )
        .unwrap();
        let proxy = FaultProxy::start(
            &tpm,
            Fault {
                command_code: 0,
                rc: 0,
                count: 0,
            },
        );
        let key = open_key(
            &auth_uri(&tpm, &proxy.tcti(), 0x8100_0013),
            &OpenOptions::default(),
        )
        .unwrap();
        proxy.set_down(true);
        let err = key.sign(b"nobody there").expect_err("TPM down");
        assert!(matches!(err, CustodyError::TpmUnavailable { .. }), "{err}");
        let err = key.sign(b"still nobody").expect_err("TPM still down");
        assert!(matches!(err, CustodyError::TpmUnavailable { .. }), "{err}");
        proxy.set_down(false);
        let sig = key.sign(b"back").expect("signs once the TPM is back");
        key.public_key()
            .verifying_key()
            .verify(b"back", &sig)
            .unwrap();
    }

    /// Persists a key built from `public` at `handle`, through a tss-esapi context of the test's own
    /// (writ holds no connection to this swtpm at that moment).
    fn persist_raw(
        tpm: &Swtpm,
        public: tss_esapi::structures::Public,
        handle: u32,
        as_child: bool,
    ) {
        use std::str::FromStr;
        use tss_esapi::handles::PersistentTpmHandle;
        use tss_esapi::interface_types::dynamic_handles::Persistent;
        use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
        let mut ctx = tss_esapi::Context::new(
            tss_esapi::tcti_ldr::TctiNameConf::from_str(&tpm.tcti()).unwrap(),
        )
        .unwrap();
        let object = ctx
            .execute_with_nullauth_session(
                |c| -> tss_esapi::Result<tss_esapi::handles::ObjectHandle> {
                    if as_child {
                        let parent = c
                            .create_primary(
                                Hierarchy::Owner,
                                tss_esapi::utils::create_restricted_decryption_rsa_public(
                                    tss_esapi::structures::SymmetricDefinitionObject::AES_128_CFB,
                                    tss_esapi::interface_types::key_bits::RsaKeyBits::Rsa2048,
                                    tss_esapi::structures::RsaExponent::default(),
                                )?,
                                None,
                                None,
                                None,
                                None,
                            )?
                            .key_handle;
                        let created = c.create(parent, public, None, None, None, None)?;
                        let key = c.load(parent, created.out_private, created.out_public)?;
                        c.flush_context(parent.into())?;
                        Ok(key.into())
                    } else {
                        Ok(
                            c.create_primary(Hierarchy::Owner, public, None, None, None, None)?
                                .key_handle
                                .into(),
                        )
                    }
                },
            )
            .unwrap();
        ctx.execute_with_nullauth_session(|c| {
            c.evict_control(
                Provision::Owner,
                object,
                Persistent::Persistent(PersistentTpmHandle::new(handle).unwrap()),
            )
        })
        .unwrap();
    }

    fn ecc_signing_public(
        curve: tss_esapi::interface_types::ecc::EccCurve,
        duplicable: bool,
        decrypt: bool,
    ) -> tss_esapi::structures::Public {
        use tss_esapi::attributes::ObjectAttributesBuilder;
        use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
        use tss_esapi::structures::{
            EccPoint, EccScheme, HashScheme, PublicBuilder, PublicEccParametersBuilder,
        };
        let attrs = ObjectAttributesBuilder::new()
            .with_fixed_tpm(!duplicable)
            .with_fixed_parent(!duplicable)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_sign_encrypt(true)
            .with_decrypt(decrypt)
            .build()
            .unwrap();
        let scheme = if decrypt {
            EccScheme::Null
        } else {
            EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256))
        };
        PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attrs)
            .with_ecc_parameters(
                PublicEccParametersBuilder::new()
                    .with_ecc_scheme(scheme)
                    .with_curve(curve)
                    // tss-esapi's builder refuses sign+decrypt; the TPM does not. The flags only
                    // steer the builder's checks; the object attributes above are what counts.
                    .with_is_signing_key(!decrypt)
                    .with_is_decryption_key(false)
                    .with_restricted(false)
                    .with_key_derivation_function_scheme(
                        tss_esapi::structures::KeyDerivationFunctionScheme::Null,
                    )
                    .build()
                    .unwrap(),
            )
            .with_ecc_unique_identifier(EccPoint::default())
            .build()
            .unwrap()
    }

    /// A P-256 ECDSA signing key public area with `extra` attribute bits and an authPolicy.
    fn custom_signing_public(extra_no_da: bool, policy: &[u8]) -> tss_esapi::structures::Public {
        use tss_esapi::attributes::ObjectAttributesBuilder;
        use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
        use tss_esapi::structures::{
            Digest, EccPoint, EccScheme, HashScheme, PublicBuilder, PublicEccParametersBuilder,
        };
        let attrs = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_sign_encrypt(true)
            .with_no_da(extra_no_da)
            .build()
            .unwrap();
        PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attrs)
            .with_auth_policy(Digest::try_from(policy.to_vec()).unwrap())
            .with_ecc_parameters(
                PublicEccParametersBuilder::new_unrestricted_signing_key(
                    EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
                    tss_esapi::interface_types::ecc::EccCurve::NistP256,
                )
                .build()
                .unwrap(),
            )
            .with_ecc_unique_identifier(EccPoint::default())
            .build()
            .unwrap()
    }

    #[test]
    fn key_with_an_auth_policy_is_refused() {
        let tpm = Swtpm::start();
        persist_raw(
            &tpm,
            custom_signing_public(false, &[0xab; 32]),
            0x8100_0033,
            true,
        );
        let err = open_key(
            &auth_uri(&tpm, &tpm.tcti(), 0x8100_0033),
            &OpenOptions::default(),
        )
        .expect_err("policy key");
        assert!(matches!(err, CustodyError::UnsafeKey { .. }), "{err}");
        assert!(err.to_string().contains("authPolicy"), "{err}");
    }

    #[test]
    fn key_without_dictionary_attack_protection_is_refused() {
        let tpm = Swtpm::start();
        persist_raw(&tpm, custom_signing_public(true, &[]), 0x8100_0034, true);
        let err = open_key(
            &auth_uri(&tpm, &tpm.tcti(), 0x8100_0034),
            &OpenOptions::default(),
        )
        .expect_err("noDA key");
        assert!(err.to_string().contains("noDA"), "{err}");
    }

    #[test]
    fn the_auth_value_never_crosses_the_bus_in_clear() {
        // Everything goes through the proxy, which records every command: generation (the new
        // authValue inside TPM2_Create's inSensitive) and signing (the authorization). With an
        // unsalted session, no parameter encryption, or a password session, the authValue's bytes
        // would appear in a command.
        let tpm = Swtpm::start();
        let proxy = FaultProxy::start(
            &tpm,
            Fault {
                command_code: 0,
                rc: 0,
                count: 0,
            },
        );
        let uri = auth_uri(&tpm, &proxy.tcti(), 0x8100_0035);
        let key = generate_key(&uri, &OpenOptions::default()).unwrap();
        key.sign(b"over the bus").unwrap();
        let auth = std::fs::read(tpm.auth_file()).unwrap();
        let commands = proxy.commands();
        assert!(commands.len() > 5, "the proxy saw the traffic");
        for c in &commands {
            assert!(
                !c.windows(auth.len()).any(|w| w == auth.as_slice()),
                "authValue in clear in {}",
                hex::encode(c)
            );
        }
        // And the session protecting it was salted: TPM2_StartAuthSession (0x176) names a salt key
        // (tpmKey, the first handle) other than TPM_RH_NULL, so its key is not computable from the
        // bus.
        let salted = commands.iter().any(|c| {
            c.len() > 14 && c[6..10] == [0, 0, 0x01, 0x76] && c[10..14] != [0x40, 0, 0, 0x07]
        });
        assert!(salted, "no salted StartAuthSession was sent");
    }

    #[test]
    fn two_keys_on_one_handle_keep_their_own_auth_values() {
        // Both share one ESYS handle; a wrong auth-source on the second must not break the first.
        let tpm = Swtpm::start();
        let good = generate_key(
            &auth_uri(&tpm, &tpm.tcti(), 0x8100_0036),
            &OpenOptions::default(),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        writ_testkit::write_secret(&dir.path().join("wrong"), "wrong auth");
        let wrong: KeyUri = format!(
            "tpm:handle=0x81000036?tcti={}&auth-source=file:{}",
            tpm.tcti(),
            dir.path().join("wrong").display()
        )
        .parse()
        .unwrap();
        assert!(open_key(&wrong, &OpenOptions::default()).is_err());
        let again = open_key(
            &auth_uri(&tpm, &tpm.tcti(), 0x8100_0036),
            &OpenOptions::default(),
        )
        .unwrap();
        drop(again);
        let sig = good.sign(b"still mine").expect("the first key still signs");
        good.public_key()
            .verifying_key()
            .verify(b"still mine", &sig)
            .unwrap();
    }

    #[test]
    fn duplicable_key_is_refused() {
        let tpm = Swtpm::start();
        let public = ecc_signing_public(
            tss_esapi::interface_types::ecc::EccCurve::NistP256,
            true,
            false,
        );
        persist_raw(&tpm, public, 0x8100_0030, true);
        let err = open_key(&uri(&tpm.tcti(), 0x8100_0030), &OpenOptions::default())
            .expect_err("duplicable");
        assert!(matches!(err, CustodyError::UnsafeKey { .. }), "{err}");
        assert!(err.to_string().contains("fixedTPM"), "{err}");
    }

    #[test]
    fn p384_key_is_refused() {
        let tpm = Swtpm::start();
        let public = ecc_signing_public(
            tss_esapi::interface_types::ecc::EccCurve::NistP384,
            false,
            false,
        );
        persist_raw(&tpm, public, 0x8100_0031, false);
        let err =
            open_key(&uri(&tpm.tcti(), 0x8100_0031), &OpenOptions::default()).expect_err("P-384");
        assert!(matches!(err, CustodyError::UnsupportedKey { .. }), "{err}");
        assert!(err.to_string().contains("P-256"), "{err}");
    }

    #[test]
    fn sign_and_decrypt_key_is_refused() {
        let tpm = Swtpm::start();
        let public = ecc_signing_public(
            tss_esapi::interface_types::ecc::EccCurve::NistP256,
            false,
            true,
        );
        persist_raw(&tpm, public, 0x8100_0032, false);
        let err =
            open_key(&uri(&tpm.tcti(), 0x8100_0032), &OpenOptions::default()).expect_err("decrypt");
        assert!(err.to_string().contains("sign-only"), "{err}");
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
