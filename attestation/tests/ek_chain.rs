//! EK certificate chain validation: a forged CA hierarchy (software keys, x509-cert builder) so each
//! constraint can be broken on its own, the manufacturer roots from shared/vectors, both providers.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::str::FromStr;
use std::time::Duration;

use p256::ecdsa::{DerSignature, SigningKey};
use writ_attestation::crypto::{AwsLc, CryptoProvider, RustCrypto};
use writ_attestation::evidence::{EkPublicKey, EkTrustStore};
use x509_cert::TbsCertificate;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::der::asn1::OctetString;
use x509_cert::der::oid::AssociatedOid;
use x509_cert::der::{Encode, asn1::ObjectIdentifier};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{SubjectPublicKeyInfo, SubjectPublicKeyInfoRef};
use x509_cert::time::Validity;

const PROVIDERS: [&dyn CryptoProvider; 2] = [&RustCrypto, &AwsLc];

struct Profile {
    issuer: Name,
    subject: Name,
    extensions: Vec<Extension>,
}

impl BuilderProfile for Profile {
    fn get_issuer(&self, _: &Name) -> Name {
        self.issuer.clone()
    }
    fn get_subject(&self) -> Name {
        self.subject.clone()
    }
    fn build_extensions(
        &self,
        _: SubjectPublicKeyInfoRef<'_>,
        _: SubjectPublicKeyInfoRef<'_>,
        _: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        Ok(self.extensions.clone())
    }
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_slice(&[seed; 32]).unwrap()
}

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

fn ext<T: AssociatedOid + Encode>(value: T, critical: bool) -> Extension {
    Extension {
        extn_id: T::OID,
        critical,
        extn_value: OctetString::new(value.to_der().unwrap()).unwrap(),
    }
}

fn ca_exts(path_len: Option<u8>) -> Vec<Extension> {
    vec![
        ext(
            BasicConstraints {
                ca: true,
                path_len_constraint: path_len,
            },
            true,
        ),
        ext(KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign), true),
    ]
}

fn ek_exts() -> Vec<Extension> {
    vec![
        ext(
            BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
            true,
        ),
        ext(KeyUsage(KeyUsages::KeyAgreement.into()), true),
    ]
}

/// A certificate for `subject_key`, issued by `issuer_key` under `issuer`.
fn cert(
    subject: &str,
    subject_key: &SigningKey,
    issuer: &str,
    issuer_key: &SigningKey,
    extensions: Vec<Extension>,
    validity: Validity,
) -> Vec<u8> {
    let profile = Profile {
        issuer: name(issuer),
        subject: name(subject),
        extensions,
    };
    let spki = SubjectPublicKeyInfo::from_key(subject_key.verifying_key()).unwrap();
    let builder =
        CertificateBuilder::new(profile, SerialNumber::from(1u32), validity, spki).unwrap();
    builder
        .build::<_, DerSignature>(issuer_key)
        .unwrap()
        .to_der()
        .unwrap()
}

fn year() -> Validity {
    Validity::from_now(Duration::from_secs(365 * 86400)).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// root -> intermediate -> EK, all valid.
struct Chain {
    root: Vec<u8>,
    intermediate: Vec<u8>,
    ek: Vec<u8>,
}

fn chain_with(intermediate_exts: Vec<Extension>, ek_exts: Vec<Extension>) -> Chain {
    let (rk, ik, ek) = (key(1), key(2), key(3));
    Chain {
        root: cert(
            "CN=Test TPM Root,O=writ",
            &rk,
            "CN=Test TPM Root,O=writ",
            &rk,
            ca_exts(None),
            year(),
        ),
        intermediate: cert(
            "CN=Test TPM CA,O=writ",
            &ik,
            "CN=Test TPM Root,O=writ",
            &rk,
            intermediate_exts,
            year(),
        ),
        ek: cert(
            "CN=EK,O=writ",
            &ek,
            "CN=Test TPM CA,O=writ",
            &ik,
            ek_exts,
            year(),
        ),
    }
}

fn store(_p: &dyn CryptoProvider, certs: &[&[u8]]) -> EkTrustStore {
    let mut s = EkTrustStore::new();
    for c in certs {
        s.add_der(c).unwrap();
    }
    s
}

fn code(p: &dyn CryptoProvider, s: &EkTrustStore, ek: &[u8], at: u64) -> String {
    s.verify(p, ek, at)
        .map(|_| "accepted".to_string())
        .unwrap_or_else(|e| e.code().to_string())
}

#[test]
fn a_good_chain_verifies_and_yields_the_certificate_key() {
    let c = chain_with(ca_exts(Some(0)), ek_exts());
    for p in PROVIDERS {
        let s = store(p, &[&c.root, &c.intermediate]);
        assert_eq!(s.len(), (1, 1), "the self-issued root is the anchor");
        let trusted = s.verify(p, &c.ek, now()).unwrap();
        let point = key(3).verifying_key().to_sec1_point(false);
        assert_eq!(
            trusted.key(),
            &EkPublicKey::Ecc {
                curve: writ_attestation::tpm::public::EccCurve::P256,
                x: point.x().unwrap().to_vec(),
                y: point.y().unwrap().to_vec()
            }
        );
        assert_eq!(trusted.chain().len(), 3);
    }
}

#[test]
fn untrusted_root() {
    let c = chain_with(ca_exts(None), ek_exts());
    let other = chain_with(ca_exts(None), ek_exts());
    for p in PROVIDERS {
        assert_eq!(code(p, &EkTrustStore::new(), &c.ek, now()), "ek_untrusted");
        // The intermediate alone is not an anchor.
        assert_eq!(
            code(p, &store(p, &[&c.intermediate]), &c.ek, now()),
            "ek_untrusted"
        );
        // A root of the same name but another key does not verify the intermediate.
        let rk2 = key(9);
        let fake_root = cert(
            "CN=Test TPM Root,O=writ",
            &rk2,
            "CN=Test TPM Root,O=writ",
            &rk2,
            ca_exts(None),
            year(),
        );
        assert_eq!(
            code(p, &store(p, &[&fake_root, &c.intermediate]), &c.ek, now()),
            "ek_untrusted"
        );
        let _ = &other;
    }
}

#[test]
fn intermediate_without_ca_rights() {
    let not_ca = vec![ext(
        BasicConstraints {
            ca: false,
            path_len_constraint: None,
        },
        true,
    )];
    let c = chain_with(not_ca, ek_exts());
    for p in PROVIDERS {
        assert_eq!(
            code(p, &store(p, &[&c.root, &c.intermediate]), &c.ek, now()),
            "ek_ca"
        );
    }
    let no_cert_sign = vec![
        ext(
            BasicConstraints {
                ca: true,
                path_len_constraint: None,
            },
            true,
        ),
        ext(KeyUsage(KeyUsages::DigitalSignature.into()), true),
    ];
    let c = chain_with(no_cert_sign, ek_exts());
    for p in PROVIDERS {
        assert_eq!(
            code(p, &store(p, &[&c.root, &c.intermediate]), &c.ek, now()),
            "ek_ca"
        );
    }
}

#[test]
fn path_length_is_enforced() {
    // root (pathLen 0) -> intermediate -> EK: the intermediate is one CA below a pathLen-0 root.
    let (rk, ik, ek) = (key(1), key(2), key(3));
    let root = cert("CN=R", &rk, "CN=R", &rk, ca_exts(Some(0)), year());
    let inter = cert("CN=I", &ik, "CN=R", &rk, ca_exts(None), year());
    let ekc = cert("CN=E", &ek, "CN=I", &ik, ek_exts(), year());
    for p in PROVIDERS {
        assert_eq!(code(p, &store(p, &[&root, &inter]), &ekc, now()), "ek_ca");
    }
}

#[test]
fn unknown_critical_extension_is_refused() {
    let odd = Extension {
        extn_id: ObjectIdentifier::new_unwrap("1.3.6.1.4.1.99999.1"),
        critical: true,
        extn_value: OctetString::new(vec![0x05, 0x00]).unwrap(),
    };
    let mut exts = ek_exts();
    exts.push(odd.clone());
    let c = chain_with(ca_exts(None), exts);
    for p in PROVIDERS {
        assert_eq!(
            code(p, &store(p, &[&c.root, &c.intermediate]), &c.ek, now()),
            "ek_untrusted"
        );
    }
    // The same extension, not critical, is fine.
    let mut exts = ek_exts();
    exts.push(Extension {
        critical: false,
        ..odd
    });
    let c = chain_with(ca_exts(None), exts);
    for p in PROVIDERS {
        assert_eq!(
            code(p, &store(p, &[&c.root, &c.intermediate]), &c.ek, now()),
            "accepted"
        );
    }
}

#[test]
fn expired_and_not_yet_valid_certificates() {
    let c = chain_with(ca_exts(None), ek_exts());
    for p in PROVIDERS {
        let s = store(p, &[&c.root, &c.intermediate]);
        assert_eq!(code(p, &s, &c.ek, now() + 2 * 365 * 86400), "ek_expired");
        assert_eq!(code(p, &s, &c.ek, now() - 86400), "ek_expired");
    }
}

#[test]
fn a_ca_certificate_is_not_an_ek() {
    let c = chain_with(ca_exts(None), ca_exts(None));
    for p in PROVIDERS {
        assert_eq!(
            code(p, &store(p, &[&c.root, &c.intermediate]), &c.ek, now()),
            "ek_untrusted"
        );
    }
}

#[test]
fn a_tampered_ek_certificate_is_refused() {
    let c = chain_with(ca_exts(None), ek_exts());
    let mut ek = c.ek.clone();
    // Flip a byte inside the subject public key (well inside the TBS).
    let at = ek.len() / 2;
    ek[at] ^= 0x01;
    for p in PROVIDERS {
        let got = code(p, &store(p, &[&c.root, &c.intermediate]), &ek, now());
        assert!(
            got == "ek_untrusted" || got == "malformed" || got == "unsupported_algorithm",
            "{got}"
        );
    }
}

#[test]
fn manufacturer_roots_load_and_do_not_trust_a_foreign_ek() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/vectors/tpm-manufacturer-roots");
    let mut s = EkTrustStore::new();
    let (mut loaded, mut refused) = (0, Vec::new());
    for entry in std::fs::read_dir(&dir).expect("shared/vectors beside the checkout") {
        let path = entry.unwrap().path();
        let pem = std::fs::read_to_string(&path).unwrap();
        match s.add_pem(&pem) {
            Ok(n) => loaded += n,
            Err(e) => refused.push(format!("{}: {e}", path.display())),
        }
    }
    assert!(loaded >= 40, "loaded {loaded}; refused: {refused:?}");
    let (anchors, intermediates) = s.len();
    assert!(
        anchors >= 10 && intermediates >= 10,
        "{anchors} anchors, {intermediates} intermediates"
    );
    let c = chain_with(ca_exts(None), ek_exts());
    assert_eq!(code(&AwsLc, &s, &c.ek, now()), "ek_untrusted");
}
