//! The trust bundle (interfaces.md): a SPIFFE bundle (a JWKS whose keys carry `use`, with
//! `spiffe_sequence` and `spiffe_refresh_hint`) plus a `writ` member: trust domain, issued-at,
//! expires-at, accepted policy bundle hashes, and the log's origin and checkpoint verifier key.
//! SPIFFE consumers read the X.509 part unchanged; writ reads the JWT keys by purpose.

use serde_json::Value;

use super::{Refusal, json};
use crate::jwk::EcJwk;

/// Largest bundle accepted.
pub const MAX_BUNDLE: usize = 1024 * 1024;
/// Most keys accepted.
const MAX_KEYS: usize = 256;

/// What a key may sign (the bundle's `use`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Writs.
    Issuer,
    /// Attestation results.
    Ear,
    /// The signing service's artifacts.
    Signing,
}

impl Purpose {
    fn from_use(u: &str) -> Option<Purpose> {
        match u {
            "issuer" => Some(Purpose::Issuer),
            "ear" => Some(Purpose::Ear),
            "signing" => Some(Purpose::Signing),
            _ => None,
        }
    }
    /// The bundle's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Issuer => "issuer",
            Purpose::Ear => "ear",
            Purpose::Signing => "signing",
        }
    }
}

/// A JWT signing key of the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleKey {
    /// Its `kid`.
    pub kid: String,
    /// Its purpose.
    pub purpose: Purpose,
    /// The key.
    pub jwk: EcJwk,
    /// A signing key's name (`signing` keys only; the service's `/v1/sign/<name>`).
    pub name: Option<String>,
    /// What a signing key signs (`signing` keys only): one form per key.
    pub form: Option<SigningForm>,
}

/// The one form a signing key signs (a key signing raw digests would sign any SHA-256, a DSSE
/// PAE's among them: the forms never share a key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningForm {
    /// Raw ECDSA signatures over SHA-256 digests the caller gives.
    Digest,
    /// DSSE envelopes over in-toto Statements writ writes.
    Dsse,
}

impl SigningForm {
    /// The bundle's and the configuration's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningForm::Digest => "digest",
            SigningForm::Dsse => "dsse",
        }
    }

    /// From its spelling.
    pub fn parse(s: &str) -> Option<SigningForm> {
        match s {
            "digest" => Some(SigningForm::Digest),
            "dsse" => Some(SigningForm::Dsse),
            _ => None,
        }
    }
}

/// A signing key's name: 1 to 64 of `a-z`, `0-9`, `-`, `_`, `.`, not only dots.
pub fn valid_key_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.'))
        && !name.bytes().all(|b| b == b'.')
}

/// A parsed trust bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustBundle {
    /// JWT keys by purpose (X.509 authorities are kept for SPIFFE consumers, not read here).
    pub keys: Vec<BundleKey>,
    /// `spiffe_sequence`.
    pub sequence: u64,
    /// `spiffe_refresh_hint`, seconds.
    pub refresh_hint: u64,
    /// The trust domain.
    pub trust_domain: String,
    /// When the appliance issued it.
    pub issued_at: i64,
    /// After this, it refuses everything.
    pub expires_at: i64,
    /// Accepted policy bundle hashes (the current one and, for a grace period, the previous).
    pub policy_bundles: Vec<String>,
    /// The decision log's origin.
    pub log_origin: String,
    /// The log's checkpoint verifier key (`<origin>+<id>+<base64>`): the oldest one published,
    /// which signs every checkpoint until it leaves.
    pub log_verifier_key: String,
    /// Every checkpoint verifier key published (`writ.log.verifier_keys`; during a rotation of
    /// the log's key, the old and the new one), `log_verifier_key` among them. A checkpoint
    /// signed by any of them is accepted ([`TrustBundle::log_keys`]).
    pub log_verifier_keys: Vec<String>,
}

/// Most checkpoint verifier keys one bundle lists.
const MAX_LOG_KEYS: usize = 8;

fn bad(why: impl Into<String>) -> Refusal {
    Refusal::new("bundle", why)
}

fn str_member<'a>(o: &'a serde_json::Map<String, Value>, k: &str) -> Result<&'a str, Refusal> {
    o.get(k)
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("{k} is missing or not a string")))
}

fn int_member(o: &serde_json::Map<String, Value>, k: &str) -> Result<i64, Refusal> {
    o.get(k)
        .and_then(Value::as_i64)
        .ok_or_else(|| bad(format!("{k} is missing or not an integer")))
}

impl TrustBundle {
    /// Parses a bundle strictly (no duplicate members; every `writ` member present and typed; at
    /// least one issuer key; one `kid` per key).
    pub fn parse(bytes: &[u8]) -> Result<Self, Refusal> {
        if bytes.len() > MAX_BUNDLE {
            return Err(bad(format!("{} bytes", bytes.len())));
        }
        let Value::Object(root) = json::parse(bytes).map_err(|e| bad(e.detail))? else {
            return Err(bad("not an object"));
        };
        let keys_json = root
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("keys is missing"))?;
        if keys_json.len() > MAX_KEYS {
            return Err(bad("too many keys"));
        }
        let mut keys: Vec<BundleKey> = Vec::new();
        // The X.509 authorities' keys: no JWT key may be one of them.
        let mut authorities: Vec<EcJwk> = Vec::new();
        for k in keys_json {
            let Value::Object(k) = k else {
                return Err(bad("a key is not an object"));
            };
            let key_use = str_member(k, "use")?;
            if key_use == "x509-svid" {
                // An EC P-256 authority (writ's CA is one) may not also be a JWT key or the
                // log's key; others cannot be.
                let member = |m: &str| k.get(m).and_then(Value::as_str).unwrap_or("");
                if let Ok(j) =
                    EcJwk::from_members(member("kty"), member("crv"), member("x"), member("y"))
                {
                    authorities.push(j);
                }
                continue;
            }
            let purpose = Purpose::from_use(key_use)
                .ok_or_else(|| bad(format!("a key with use {key_use:?}")))?;
            let kid = str_member(k, "kid")?.to_string();
            if let Some(alg) = k.get("alg")
                && alg.as_str() != Some("ES256")
            {
                return Err(bad(format!("key {kid:?}: alg {alg}")));
            }
            let jwk = EcJwk::from_members(
                str_member(k, "kty")?,
                str_member(k, "crv")?,
                str_member(k, "x")?,
                str_member(k, "y")?,
            )
            .map_err(|e| bad(format!("key {kid:?}: {e}")))?;

            if keys.iter().any(|o| o.kid == kid) {
                return Err(bad(format!("kid {kid:?} twice")));
            }
            // One key, one purpose, one name: a key listed twice is refused, whatever its use.
            if keys.iter().any(|o| o.jwk == jwk) {
                return Err(bad(format!("key {kid:?} is published twice")));
            }
            let (name, form) = if purpose == Purpose::Signing {
                let n = str_member(k, "name")?;
                if !valid_key_name(n) {
                    return Err(bad(format!("signing key {kid:?}: name {n:?}")));
                }
                let form = SigningForm::parse(str_member(k, "form")?)
                    .ok_or_else(|| bad(format!("signing key {n:?}: form (digest or dsse)")))?;
                // Several keys of one name (a rotation publishes the next before it signs), all
                // of its one form.
                if keys
                    .iter()
                    .any(|o| o.name.as_deref() == Some(n) && o.form != Some(form))
                {
                    return Err(bad(format!("signing keys named {n:?} of two forms")));
                }
                (Some(n.to_string()), Some(form))
            } else {
                (None, None)
            };
            keys.push(BundleKey {
                kid,
                purpose,
                jwk,
                name,
                form,
            });
        }
        if !keys.iter().any(|k| k.purpose == Purpose::Issuer) {
            return Err(bad("no issuer key"));
        }
        let sequence = u64::try_from(int_member(&root, "spiffe_sequence")?)
            .map_err(|_| bad("negative spiffe_sequence"))?;
        let refresh_hint = u64::try_from(int_member(&root, "spiffe_refresh_hint")?)
            .map_err(|_| bad("negative spiffe_refresh_hint"))?;
        let Some(Value::Object(w)) = root.get("writ") else {
            return Err(bad("the writ member is missing"));
        };
        let policy_bundles: Vec<String> = w
            .get("policy_bundles")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("policy_bundles is missing"))?
            .iter()
            .map(|v| {
                v.as_str()
                    .filter(|s| super::claims::is_digest(s))
                    .map(str::to_string)
                    .ok_or_else(|| bad("a policy bundle hash is not a sha256: digest"))
            })
            .collect::<Result<_, _>>()?;
        if policy_bundles.is_empty() || policy_bundles.len() > 2 {
            return Err(bad("one or two accepted policy bundle hashes"));
        }
        let Some(Value::Object(log)) = w.get("log") else {
            return Err(bad("writ.log is missing"));
        };
        let origin = str_member(log, "origin")?;
        let verifier_key = str_member(log, "verifier_key")?;
        // Every published checkpoint key (absent: the one `verifier_key`).
        let log_verifier_keys: Vec<String> = match log.get("verifier_keys") {
            None => vec![verifier_key.to_string()],
            Some(Value::Array(list)) => list
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad("writ.log.verifier_keys holds a non-string"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(bad("writ.log.verifier_keys is not an array")),
        };
        if log_verifier_keys.is_empty() || log_verifier_keys.len() > MAX_LOG_KEYS {
            return Err(bad(format!(
                "writ.log.verifier_keys: 1 to {MAX_LOG_KEYS} keys"
            )));
        }
        if !log_verifier_keys.iter().any(|k| k == verifier_key) {
            return Err(bad(
                "writ.log.verifier_keys does not list writ.log.verifier_key",
            ));
        }
        // (A log key that does not parse is no P-256 key; it is refused where it is used, at
        // inclusion checks: `log_keys`.)
        let mut log_jwks = Vec::with_capacity(log_verifier_keys.len());
        let mut log_ids = Vec::with_capacity(log_verifier_keys.len());
        for text in &log_verifier_keys {
            let Ok(k) = crate::log::note::NoteVerifier::parse(text) else {
                continue;
            };
            if k.name() != origin {
                return Err(bad(format!(
                    "the checkpoint verifier key {:?} is not named for the log's origin",
                    k.name()
                )));
            }
            if log_ids.contains(&k.id()) {
                // Two keys of one key ID: a signature line could not say which it is.
                return Err(bad("two checkpoint verifier keys share a key ID"));
            }
            log_ids.push(k.id());
            let (x, y) = k.point();
            let Ok(jwk) = EcJwk::from_coordinates(x, y) else {
                continue;
            };
            if log_jwks.contains(&jwk) {
                return Err(bad("a checkpoint verifier key is listed twice"));
            }
            log_jwks.push(jwk);
        }
        // The log's keys and the X.509 authorities' are none of the JWT keys.
        if let Some(k) = keys
            .iter()
            .find(|k| log_jwks.contains(&k.jwk) || authorities.contains(&k.jwk))
        {
            return Err(bad(format!(
                "key {:?} is also the log's or an X.509 authority's key",
                k.kid
            )));
        }
        if log_jwks.iter().any(|l| authorities.contains(l)) {
            return Err(bad("the log's key is also an X.509 authority's key"));
        }
        let b = TrustBundle {
            keys,
            sequence,
            refresh_hint,
            trust_domain: str_member(w, "trust_domain")?.to_string(),
            issued_at: int_member(w, "issued_at")?,
            expires_at: int_member(w, "expires_at")?,
            policy_bundles,
            log_origin: origin.to_string(),
            log_verifier_key: verifier_key.to_string(),
            log_verifier_keys,
        };
        if b.trust_domain.is_empty() || b.trust_domain.contains('/') {
            return Err(bad("trust_domain"));
        }
        if b.expires_at <= b.issued_at {
            return Err(bad("expires_at is not after issued_at"));
        }
        Ok(b)
    }

    /// The checkpoint verifier keys a checkpoint of this bundle's log may be signed by.
    pub fn log_keys(&self) -> Result<Vec<crate::log::note::NoteVerifier>, Refusal> {
        self.log_verifier_keys
            .iter()
            .map(|k| {
                crate::log::note::NoteVerifier::parse(k)
                    .map_err(|e| bad(format!("a checkpoint verifier key: {e}")))
            })
            .collect()
    }

    /// The appliance's SPIFFE ID (`iss` of every writ).
    pub fn appliance_id(&self) -> String {
        format!("spiffe://{}/writ/appliance", self.trust_domain)
    }

    /// Whether the bundle may be used at `now`: not expired, not older than `max_age` seconds,
    /// and not a lower sequence than `last_sequence` (a rolled-back bundle).
    pub fn check(&self, now: i64, max_age: i64, last_sequence: Option<u64>) -> Result<(), Refusal> {
        if now >= self.expires_at {
            return Err(Refusal::new(
                "bundle_stale",
                format!(
                    "the trust bundle expired at {} (now {now})",
                    self.expires_at
                ),
            ));
        }
        // saturating: an issued_at near i64::MIN must not wrap into a young age.
        if now.saturating_sub(self.issued_at) > max_age {
            return Err(Refusal::new(
                "bundle_stale",
                format!(
                    "the trust bundle is {} s old (bound {max_age} s)",
                    now.saturating_sub(self.issued_at)
                ),
            ));
        }
        if let Some(last) = last_sequence
            && self.sequence < last
        {
            return Err(Refusal::new(
                "bundle_rollback",
                format!(
                    "spiffe_sequence {} is below the {last} already seen",
                    self.sequence
                ),
            ));
        }
        Ok(())
    }

    /// The key `kid` of `purpose`: an unknown `kid` and a key of another purpose are refusals,
    /// whatever the token says.
    pub fn key(&self, kid: &str, purpose: Purpose) -> Result<&EcJwk, Refusal> {
        let k = self.keys.iter().find(|k| k.kid == kid).ok_or_else(|| {
            Refusal::new("key_unknown", format!("no key {kid:?} in the trust bundle"))
        })?;
        if k.purpose != purpose {
            return Err(Refusal::new(
                "key_purpose",
                format!(
                    "key {kid:?} is for {}, not {}",
                    k.purpose.as_str(),
                    purpose.as_str()
                ),
            ));
        }
        Ok(&k.jwk)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use p256::pkcs8::EncodePublicKey;
    use serde_json::json;

    fn key(n: u8) -> p256::ecdsa::SigningKey {
        p256::ecdsa::SigningKey::from_slice(&[n; 32]).unwrap()
    }

    fn jwk(n: u8, key_use: &str) -> Value {
        EcJwk::from_verifying_key(key(n).verifying_key()).to_json(Some(key_use))
    }

    fn signing(n: u8, name: &str, form: &str) -> Value {
        let mut j = jwk(n, "signing");
        j["name"] = json!(name);
        j["form"] = json!(form);
        j
    }

    fn bundle(keys: Vec<Value>, log_key: u8) -> Value {
        let spki = key(log_key)
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .into_vec();
        let verifier = crate::log::note::NoteVerifier::from_spki("writ.test/log", &spki)
            .unwrap()
            .to_string();
        json!({
            "keys": keys,
            "spiffe_sequence": 1,
            "spiffe_refresh_hint": 300,
            "writ": {
                "trust_domain": "writ.test",
                "issued_at": 1_800_000_000i64,
                "expires_at": 1_800_003_600i64,
                "policy_bundles": [format!("sha256:{}", "c".repeat(64))],
                "log": {"origin": "writ.test/log", "verifier_key": verifier}
            }
        })
    }

    fn parses(b: &Value) -> Result<TrustBundle, Refusal> {
        TrustBundle::parse(b.to_string().as_bytes())
    }

    #[test]
    fn signing_keys_carry_a_name_and_one_form() {
        let b = parses(&bundle(
            vec![
                jwk(1, "issuer"),
                signing(2, "release", "dsse"),
                signing(3, "artifacts", "digest"),
            ],
            9,
        ))
        .unwrap();
        let forms: Vec<_> = b.keys.iter().map(|k| (k.name.clone(), k.form)).collect();
        assert_eq!(
            forms,
            [
                (None, None),
                (Some("release".into()), Some(SigningForm::Dsse)),
                (Some("artifacts".into()), Some(SigningForm::Digest)),
            ]
        );
        // Two keys of one name and form (a rotation): both kept, each with its kid.
        let b = parses(&bundle(
            vec![
                jwk(1, "issuer"),
                signing(2, "release", "dsse"),
                signing(3, "release", "dsse"),
            ],
            9,
        ))
        .unwrap();
        let release: Vec<_> = b
            .keys
            .iter()
            .filter(|k| k.name.as_deref() == Some("release"))
            .map(|k| k.kid.clone())
            .collect();
        assert_eq!(release.len(), 2);
        assert_ne!(release[0], release[1]);
        let mut no_name = signing(2, "release", "dsse");
        no_name.as_object_mut().unwrap().remove("name");
        let mut no_form = signing(2, "release", "dsse");
        no_form.as_object_mut().unwrap().remove("form");
        for bad in [
            vec![jwk(1, "issuer"), no_name],
            vec![jwk(1, "issuer"), no_form],
            vec![jwk(1, "issuer"), signing(2, "release", "both")],
            vec![jwk(1, "issuer"), signing(2, "Release", "dsse")],
            vec![
                jwk(1, "issuer"),
                signing(2, "release", "dsse"),
                signing(3, "release", "digest"),
            ],
        ] {
            assert_eq!(parses(&bundle(bad, 9)).unwrap_err().code, "bundle");
        }
    }

    #[test]
    fn one_key_is_never_published_twice_or_for_two_purposes() {
        let mut authority = jwk(5, "x509-svid");
        authority.as_object_mut().unwrap().remove("kid");
        authority["x5c"] = json!(["MIIB"]);
        for (keys, log_key) in [
            // The same key under two names, or for two purposes.
            (
                vec![
                    jwk(1, "issuer"),
                    signing(2, "release", "dsse"),
                    signing(2, "nightly", "digest"),
                ],
                9,
            ),
            (vec![jwk(1, "issuer"), signing(1, "release", "dsse")], 9),
            // A signing key that is the log's key, or the CA's.
            (vec![jwk(1, "issuer"), signing(9, "release", "digest")], 9),
            (
                vec![jwk(1, "issuer"), authority.clone(), signing(5, "r", "dsse")],
                9,
            ),
            // The log's key is the CA's.
            (vec![jwk(1, "issuer"), authority.clone()], 5),
        ] {
            let err = parses(&bundle(keys, log_key)).unwrap_err();
            assert_eq!(err.code, "bundle", "{err}");
        }
        assert!(parses(&bundle(vec![jwk(1, "issuer"), authority], 9)).is_ok());
    }

    fn log_key(n: u8, origin: &str) -> String {
        let spki = key(n)
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .into_vec();
        crate::log::note::NoteVerifier::from_spki(origin, &spki)
            .unwrap()
            .to_string()
    }

    #[test]
    fn the_log_may_publish_several_checkpoint_keys() {
        // Without verifier_keys: the one key.
        let b = parses(&bundle(vec![jwk(1, "issuer")], 9)).unwrap();
        assert_eq!(b.log_verifier_keys, [log_key(9, "writ.test/log")]);
        assert_eq!(b.log_keys().unwrap().len(), 1);
        // During a rotation: both, the oldest as verifier_key.
        let with = |list: Value, keys: Vec<Value>| {
            let mut v = bundle(keys, 9);
            v["writ"]["log"]["verifier_keys"] = list;
            parses(&v)
        };
        let two = json!([log_key(9, "writ.test/log"), log_key(8, "writ.test/log")]);
        let b = with(two.clone(), vec![jwk(1, "issuer")]).unwrap();
        assert_eq!(b.log_keys().unwrap().len(), 2);
        assert_eq!(b.log_verifier_key, log_key(9, "writ.test/log"));
        for (list, keys) in [
            // Not listing verifier_key; empty; not strings; not an array.
            (json!([log_key(8, "writ.test/log")]), vec![jwk(1, "issuer")]),
            (json!([]), vec![jwk(1, "issuer")]),
            (json!([1]), vec![jwk(1, "issuer")]),
            (json!(log_key(9, "writ.test/log")), vec![jwk(1, "issuer")]),
            // A key twice; a key for another origin; a key that is also a JWT key.
            (
                json!([log_key(9, "writ.test/log"), log_key(9, "writ.test/log")]),
                vec![jwk(1, "issuer")],
            ),
            (
                json!([log_key(9, "writ.test/log"), log_key(8, "other/log")]),
                vec![jwk(1, "issuer")],
            ),
            (two, vec![jwk(1, "issuer"), jwk(8, "ear")]),
            // Too many.
            (
                json!(
                    (0..9u8)
                        .map(|n| log_key(9 - n, "writ.test/log"))
                        .collect::<Vec<_>>()
                ),
                vec![jwk(20, "issuer")],
            ),
        ] {
            let err = with(list.clone(), keys).unwrap_err();
            assert_eq!(err.code, "bundle", "{list}: {err}");
        }
        // A log key that is also the X.509 authority's.
        let mut authority = jwk(5, "x509-svid");
        authority.as_object_mut().unwrap().remove("kid");
        authority["x5c"] = json!(["MIIB"]);
        let err = with(
            json!([log_key(9, "writ.test/log"), log_key(5, "writ.test/log")]),
            vec![jwk(1, "issuer"), authority],
        )
        .unwrap_err();
        assert_eq!(err.code, "bundle");
        // A listed key that does not parse: the bundle reads, and its log keys are refused
        // where they are used (no checkpoint verifies against a partial list).
        let b = with(
            json!([log_key(9, "writ.test/log"), "writ.test/log+00000000+AA"]),
            vec![jwk(1, "issuer")],
        )
        .unwrap();
        assert_eq!(b.log_keys().unwrap_err().code, "bundle");
    }
}
