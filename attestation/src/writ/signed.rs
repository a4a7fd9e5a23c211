//! Artifacts signed by the signing service (interfaces.md, the `signing` purpose; docs/signing.md):
//! raw ECDSA P-256 signatures over a SHA-256 digest, and DSSE envelopes over an in-toto
//! Statement v1 whose predicate is writ's account of the runtime that asked.
//!
//! Both signature forms are ASN.1 DER `Ecdsa-Sig-Value` (what `openssl dgst -verify`, DSSE
//! libraries and Sigstore read). A DSSE signature is over the pre-authentication encoding
//! ([`pae`]) of the payload type and payload (DSSE v1 protocol, github.com/secure-systems-lab/dsse).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Refusal;
use super::bundle::{BundleKey, Purpose, SigningForm};
use crate::crypto::{CryptoProvider, SigAlg, SignatureValue, VerifyKey};
use crate::jwk::EcJwk;
use crate::tpm::HashAlg;
use crate::tpm::public::EccCurve;

/// The DSSE payload type of an in-toto Statement (in-toto attestation framework).
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The Statement's `_type`.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The predicate type writ signs: the runtime that asked, as writ's attestation saw it.
pub const PREDICATE_TYPE: &str = "https://writ.dev/signing-request/v1";
/// Largest envelope a verifier reads, bytes.
pub const MAX_ENVELOPE: usize = 1024 * 1024;
/// Largest DER ECDSA P-256 signature (two 33-byte integers and their headers).
pub const MAX_SIGNATURE: usize = 72;

/// DSSE's pre-authentication encoding: `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`,
/// lengths in ASCII decimal.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// One DSSE signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    /// The signing key's `kid` in the trust bundle (its RFC 7638 thumbprint).
    pub keyid: String,
    /// base64 of the DER signature over the PAE.
    pub sig: String,
}

/// A DSSE envelope (JSON, standard base64 as in the DSSE specification).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// base64 of the payload.
    pub payload: String,
    /// The payload's type.
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Its signatures.
    pub signatures: Vec<EnvelopeSignature>,
}

/// An in-toto resource descriptor as writ signs it: a name and its digests (`sha256` required).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    /// The artifact's name (a file name, an image reference...).
    pub name: String,
    /// Its digests by algorithm, lower-case hex.
    pub digest: BTreeMap<String, String>,
}

impl Subject {
    /// Its SHA-256 as `sha256:<hex>`, if well formed.
    pub fn sha256(&self) -> Option<String> {
        self.digest
            .get("sha256")
            .filter(|h| is_hex64(h))
            .map(|h| format!("sha256:{h}"))
    }
}

fn is_hex64(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An opened, verified envelope.
#[derive(Debug, Clone)]
pub struct OpenedEnvelope {
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// The Statement's subjects.
    pub subjects: Vec<Subject>,
    /// The Statement's predicate (writ's account of the runtime that asked).
    pub predicate: Value,
    /// The signing key's name in the bundle.
    pub key_name: String,
    /// The `kid` of the key whose signature verified (a name may have several keys during a
    /// rotation).
    pub kid: String,
    /// The DER signature that verified.
    pub signature: Vec<u8>,
}

/// A `sign` record's `digests.key`: `sha256:` + hex of the key's RFC 7638 thumbprint bytes (its
/// `kid` in the trust bundle, base64url-decoded). `None` for a kid that is not base64url.
pub fn key_digest(kid: &str) -> Option<String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let bytes = URL_SAFE_NO_PAD.decode(kid.as_bytes()).ok()?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("sha256:{hex}"))
}

/// Verifies a DER ECDSA P-256 signature over a SHA-256 `digest` (a raw signature from the
/// signing service) with `key`. High-S signatures are accepted as interfaces.md requires. (The
/// provider trait verifies whole messages; a digest alone is checked with RustCrypto's prehash
/// verifier.)
pub fn verify_digest(key: &EcJwk, digest: &[u8; 32], der: &[u8]) -> Result<(), Refusal> {
    use ecdsa::signature::hazmat::PrehashVerifier as _;
    let vk = key
        .verifying_key()
        .map_err(|e| Refusal::new("signature", format!("the key: {e}")))?;
    let sig = p256::ecdsa::Signature::from_der(der)
        .map_err(|_| Refusal::new("signature", "not a DER ECDSA P-256 signature"))?;
    vk.verify_prehash(digest, &sig)
        .map_err(|_| Refusal::new("signature", "the signature does not verify with this key"))
}

/// Verifies a DER ECDSA P-256 signature over `message` (SHA-256) with `key` through `provider`.
pub fn verify_message(
    provider: &dyn CryptoProvider,
    key: &EcJwk,
    message: &[u8],
    der: &[u8],
) -> Result<(), Refusal> {
    let (r, s) = crate::crypto::der_ecdsa(der)
        .map_err(|_| Refusal::new("signature", "not a DER ECDSA signature"))?;
    let (x, y) = key.coordinates();
    provider
        .verify(
            &VerifyKey::Ecc {
                curve: EccCurve::P256,
                x,
                y,
            },
            SigAlg::Ecdsa(HashAlg::Sha256),
            message,
            &SignatureValue::Ecdsa { r, s },
        )
        .map_err(|_| Refusal::new("signature", "the signature does not verify with this key"))
}

fn bad(code: &'static str, why: impl Into<String>) -> Refusal {
    Refusal::new(code, why)
}

/// Opens a DSSE envelope signed by one of `keys` (the trust bundle's signing keys; `only`
/// narrows them to one name): strict JSON, the in-toto payload type, a signature whose `keyid`
/// is such a key and which verifies over the PAE, and a payload that is an in-toto Statement v1
/// with writ's predicate type and well-formed subjects. Refusal codes: `envelope` (not an
/// envelope), `payload_type`, `key_unknown` (no signature by an accepted key), `signature`,
/// `statement`.
pub fn open_envelope(
    provider: &dyn CryptoProvider,
    bytes: &[u8],
    keys: &[BundleKey],
    only: Option<&str>,
) -> Result<OpenedEnvelope, Refusal> {
    if bytes.len() > MAX_ENVELOPE {
        return Err(bad(
            "envelope",
            format!("{} bytes (at most {MAX_ENVELOPE})", bytes.len()),
        ));
    }
    let v = super::json::parse(bytes).map_err(|r| bad("envelope", r.detail))?;
    let env: Envelope = serde_json::from_value(v)
        .map_err(|e| bad("envelope", format!("not a DSSE envelope: {e}")))?;
    if env.payload_type != PAYLOAD_TYPE {
        return Err(bad(
            "payload_type",
            format!(
                "payloadType {:?} (writ signs {PAYLOAD_TYPE})",
                env.payload_type
            ),
        ));
    }
    let payload = STANDARD
        .decode(env.payload.as_bytes())
        .map_err(|_| bad("envelope", "payload is not base64"))?;
    let accepted: Vec<&BundleKey> = keys
        .iter()
        .filter(|k| k.purpose == Purpose::Signing && k.form == Some(SigningForm::Dsse))
        .filter(|k| only.is_none_or(|n| k.name.as_deref() == Some(n)))
        .collect();
    let message = pae(&env.payload_type, &payload);
    let mut tried = false;
    let mut verified: Option<(&BundleKey, Vec<u8>)> = None;
    for s in &env.signatures {
        let Some(k) = accepted.iter().find(|k| k.kid == s.keyid) else {
            continue;
        };
        tried = true;
        let der = STANDARD
            .decode(s.sig.as_bytes())
            .map_err(|_| bad("envelope", "a signature is not base64"))?;
        if der.len() > MAX_SIGNATURE {
            return Err(bad("signature", "a signature longer than ECDSA P-256's"));
        }
        if verify_message(provider, &k.jwk, &message, &der).is_ok() {
            verified = Some((k, der));
            break;
        }
    }
    let Some((key, signature)) = verified else {
        return Err(if tried {
            bad(
                "signature",
                "the envelope's signature does not verify over its payload (PAE) with the named key",
            )
        } else {
            bad(
                "key_unknown",
                match only {
                    Some(n) => format!(
                        "no signature by the signing key {n:?} of the trust bundle (a key of form dsse)"
                    ),
                    None => {
                        "no signature by a signing key of form dsse of the trust bundle".to_string()
                    }
                },
            )
        });
    };
    let (subjects, predicate) = statement(&payload)?;
    Ok(OpenedEnvelope {
        payload,
        subjects,
        predicate,
        key_name: key.name.clone().unwrap_or_default(),
        kid: key.kid.clone(),
        signature,
    })
}

/// The subjects and predicate of an in-toto Statement v1 with writ's predicate type.
pub fn statement(payload: &[u8]) -> Result<(Vec<Subject>, Value), Refusal> {
    let v = super::json::parse(payload).map_err(|r| bad("statement", r.detail))?;
    let Value::Object(o) = v else {
        return Err(bad("statement", "the payload is not a JSON object"));
    };
    if o.get("_type").and_then(Value::as_str) != Some(STATEMENT_TYPE) {
        return Err(bad(
            "statement",
            format!("the payload's _type is not {STATEMENT_TYPE}"),
        ));
    }
    if o.get("predicateType").and_then(Value::as_str) != Some(PREDICATE_TYPE) {
        return Err(bad(
            "statement",
            format!("the predicateType is not {PREDICATE_TYPE}"),
        ));
    }
    let subjects: Vec<Subject> = o
        .get("subject")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| bad("statement", format!("subject: {e}")))?
        .unwrap_or_default();
    if subjects.is_empty() {
        return Err(bad("statement", "no subject"));
    }
    if let Some(s) = subjects.iter().find(|s| s.sha256().is_none()) {
        return Err(bad(
            "statement",
            format!(
                "subject {:?} has no sha256 digest in lower-case hex",
                s.name
            ),
        ));
    }
    let predicate = o
        .get("predicate")
        .filter(|p| p.is_object())
        .cloned()
        .ok_or_else(|| bad("statement", "no predicate object"))?;
    Ok((subjects, predicate))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_specification_example() {
        // From the DSSE v1 protocol document: PAE("http://example.com/HelloWorld", "hello world").
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn a_statement_needs_writs_types_subjects_and_a_predicate() {
        let good = serde_json::json!({
            "_type": STATEMENT_TYPE,
            "subject": [{"name": "a", "digest": {"sha256": "ab".repeat(32)}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {"runtime": "x"},
        });
        assert!(statement(good.to_string().as_bytes()).is_ok());
        for (k, v) in [
            (
                "_type",
                serde_json::json!("https://in-toto.io/Statement/v0.1"),
            ),
            (
                "predicateType",
                serde_json::json!("https://slsa.dev/provenance/v1"),
            ),
            ("subject", serde_json::json!([])),
            (
                "subject",
                serde_json::json!([{"name": "a", "digest": {"sha256": "AB".repeat(32)}}]),
            ),
            (
                "subject",
                serde_json::json!([{"name": "a", "digest": {"sha512": "ab".repeat(64)}}]),
            ),
            ("predicate", serde_json::json!("text")),
        ] {
            let mut b = good.clone();
            b[k] = v;
            assert_eq!(
                statement(b.to_string().as_bytes()).unwrap_err().code,
                "statement",
                "{k}"
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod forms {
    use super::*;
    use crate::writ::bundle::SigningForm;
    use sha2::Digest as _;

    fn key(n: u8) -> p256::ecdsa::SigningKey {
        p256::ecdsa::SigningKey::from_slice(&[n; 32]).unwrap()
    }

    fn bundle_key(n: u8, name: &str, form: SigningForm) -> BundleKey {
        let jwk = EcJwk::from_verifying_key(key(n).verifying_key());
        BundleKey {
            kid: jwk.thumbprint(),
            purpose: Purpose::Signing,
            jwk,
            name: Some(name.into()),
            form: Some(form),
        }
    }

    /// An envelope over `payload` whose signature is ECDSA over SHA-256(PAE) by key `n`: exactly
    /// what a digest-form key signs when asked for that digest.
    fn envelope(n: u8, payload: &[u8]) -> Vec<u8> {
        use ecdsa::signature::hazmat::PrehashSigner as _;
        let digest: [u8; 32] = sha2::Sha256::digest(pae(PAYLOAD_TYPE, payload)).into();
        let sig: p256::ecdsa::Signature = key(n).sign_prehash(&digest).unwrap();
        serde_json::to_vec(&Envelope {
            payload: STANDARD.encode(payload),
            payload_type: PAYLOAD_TYPE.into(),
            signatures: vec![EnvelopeSignature {
                keyid: EcJwk::from_verifying_key(key(n).verifying_key()).thumbprint(),
                sig: STANDARD.encode(sig.to_der().as_bytes()),
            }],
        })
        .unwrap()
    }

    #[test]
    fn an_envelope_verifies_only_by_a_key_of_the_dsse_form() {
        let statement = serde_json::json!({
            "_type": STATEMENT_TYPE,
            "subject": [{"name": "a", "digest": {"sha256": "ab".repeat(32)}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {"runtime": "spiffe://writ.test/runtime/x"},
        })
        .to_string();
        let keys = [
            bundle_key(1, "release", SigningForm::Dsse),
            bundle_key(2, "artifacts", SigningForm::Digest),
        ];
        let provider = crate::crypto::default_provider();
        let opened =
            open_envelope(provider, &envelope(1, statement.as_bytes()), &keys, None).unwrap();
        assert_eq!(opened.key_name, "release");
        // The same envelope made through the digest key (a raw signature over the PAE's
        // digest): no dsse key signed it.
        let forged = envelope(2, statement.as_bytes());
        assert_eq!(
            open_envelope(provider, &forged, &keys, None)
                .unwrap_err()
                .code,
            "key_unknown"
        );
        assert_eq!(
            open_envelope(provider, &forged, &keys, Some("artifacts"))
                .unwrap_err()
                .code,
            "key_unknown"
        );
        // Two keys of one name (a rotation): an envelope by either opens, naming the key that
        // verified.
        let rotating = [
            bundle_key(1, "release", SigningForm::Dsse),
            bundle_key(3, "release", SigningForm::Dsse),
        ];
        for n in [1, 3] {
            let o = open_envelope(
                provider,
                &envelope(n, statement.as_bytes()),
                &rotating,
                Some("release"),
            )
            .unwrap();
            assert_eq!(o.key_name, "release");
            assert_eq!(
                o.kid,
                EcJwk::from_verifying_key(key(n).verifying_key()).thumbprint()
            );
        }
        assert_eq!(
            open_envelope(
                provider,
                &envelope(4, statement.as_bytes()),
                &rotating,
                Some("release")
            )
            .unwrap_err()
            .code,
            "key_unknown"
        );
    }
}
