//! Rotation of the `issuer`, `ear`, `checkpoint`, `ca` and signing service keys without a restart
//! (docs/keys.md, rotation).
//!
//! A signing service key rotates by name (its schedule's purpose is `signing:<name>`): a signature
//! does not expire, so the old key stays published for the `retain_s` the request states after the
//! new one signs (required).
//!
//! `POST /v1/admin/keys/rotate {"purpose", "key", "overlap_s", "skew_s", "name", "retain_s"}` (`writ admin
//! rotate-key`): the appliance opens the new key (custody checks as at start), refuses one that is
//! any key already in use, and records in one transaction with an `admin` record: the new key,
//! published now and signing from `now + overlap_s` (default the trust bundle's lifetime, so that
//! every relying party holds it before it signs); and the key signing now, which stays published
//! until everything it can still sign has expired: `signs_from` of the new key plus the longest
//! lifetime of what it signs (the policy bundle's `max_writ_lifetime_s`, or `ear_ttl_s`) plus
//! `skew_s` (the relying parties' clock skew, default 60). A new trust bundle version is
//! published at once; another when the old key leaves (each appliance checks every second, and
//! reads rotations other replicas recorded). One rotation per purpose at a time.
//!
//! The `checkpoint` key follows the same schedule, with one difference: both keys sign every
//! checkpoint from the new key's `signs_from` until the old one leaves (the log reads the
//! schedule: [`crate::decision_log::DecisionLog::set_keys`]), and the old one signs alone before
//! that, so a relying party holding either key verifies every checkpoint made while it is
//! published. The old key leaves when the inclusion bundles that carry checkpoints it signed
//! alone have expired with their writs (the issuer key's rule).
//!
//! The `ca` key follows it too. Its new key gets a self-signed CA certificate at the rotation
//! (kept in the schedule), published in the trust bundle at once beside the old one; clients learn
//! it from the bundle over TLS they already trust. From `signs_from` the new CA signs the
//! appliance's server certificate (each replica switches within a second), SVIDs and every other
//! certificate; until then the old one signs them. Admins' and gateways' client certificates are
//! verified by the appliance alone, which trusts every published CA: they come from the newest
//! published CA from [`CLIENT_TRUST_DELAY_S`] after its publication (when every replica's TLS
//! trusts it). The old CA leaves the bundle when its SVIDs have expired (they never outlive their
//! EAR: `ear_ttl_s` after `signs_from`, plus `skew_s`); the appliance alone goes on accepting the
//! admins' and gateways' certificates it signed until the latest of those not revoked expires
//! (`clients_until`). Nothing a rotated-out CA signs outlives its end.
//!
//! The schedule (`key_schedule`) is the keys of that purpose from the first rotation on: the
//! configured key is its first entry, and a restart whose configured key is not in it is refused
//! (the configuration names a key the rotation history does not know).

use std::sync::{Arc, RwLock};

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use writ_attestation::jwk::EcJwk;
use writ_hsm::CustodyKey;

use super::{Appliance, digest, malformed, now};
use crate::http::Problem;
use crate::store::{Op, Value as Db};

/// The overlap when the request names none: the trust bundle's lifetime.
pub const DEFAULT_OVERLAP_S: i64 = super::BUNDLE_LIFETIME_S;
/// Relying parties' clock skew when the request names none, seconds.
pub const DEFAULT_SKEW_S: i64 = 60;
/// Seconds after a new CA's publication before admins' and gateways' certificates come from it:
/// every replica's TLS trusts it by then (each follows the schedule every second).
pub const CLIENT_TRUST_DELAY_S: i64 = 2;

/// A rotation request.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// `issuer`, `ear`, `checkpoint`, `ca` or `signing` (with `name` and `retain_s`).
    pub purpose: String,
    /// The new key's URI (`pkcs11:`, `tpm:`).
    pub key: String,
    /// Seconds the new key is published before it signs (1 to 7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap_s: Option<i64>,
    /// Relying parties' clock skew, seconds (0 to 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew_s: Option<i64>,
    /// For `signing`: the name of the signing service's key to rotate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// For `signing` (required): seconds the old key stays published after the new one signs.
    /// A signature does not expire: this is how long relying parties verify the old key's
    /// signatures with the current trust bundle (after, with the bundle of their time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_s: Option<i64>,
}

/// The longest `retain_s`: ten years.
pub const MAX_RETAIN_S: i64 = 10 * 365 * 86_400;

/// What a rotation scheduled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rotated {
    /// The purpose.
    pub purpose: String,
    /// The new key's kid.
    pub kid: String,
    /// When it signs from.
    pub signs_from: i64,
    /// The previous key's kid.
    pub previous_kid: String,
    /// When the previous key leaves the trust bundle.
    pub previous_retires_at: i64,
    /// The trust bundle version that publishes the new key.
    pub bundle_sequence: i64,
    /// A new `ca` key's CA certificate fingerprint (`sha256:<hex>`), what new clients pin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
    /// For the `ca` key: until when the appliance accepts the client certificates the previous
    /// CA signed (after it left the bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_clients_until: Option<i64>,
}

/// One key of a purpose's schedule.
#[derive(Clone)]
pub(crate) struct Entry {
    purpose: String,
    /// The key in custody; `None` for a key retired when the schedule was read (a retired key
    /// is never opened again: it may be gone from the device).
    key: Option<Arc<dyn CustodyKey>>,
    jwk: EcJwk,
    spki: Vec<u8>,
    published_at: i64,
    signs_from: i64,
    retires_at: Option<i64>,
    /// A checkpoint key's endorsement by the key that signed at its rotation.
    endorsement: Option<Vec<u8>>,
    /// A `ca` key's CA certificate (DER), checked against the key when read.
    certificate: Option<Vec<u8>>,
    /// A rotated-out `ca` key: until when its client certificates are accepted.
    clients_until: Option<i64>,
    /// A signing key's form, as its rotation recorded it.
    form: Option<String>,
}

impl Entry {
    fn published(&self, t: i64) -> bool {
        self.published_at <= t && self.retires_at.is_none_or(|r| t < r)
    }
}

/// The schedules of every purpose, as this process last read them.
#[derive(Default)]
pub(crate) struct Schedule {
    entries: RwLock<Vec<Entry>>,
    /// One read of the store and its replacement in memory at a time (a tick must not put back
    /// what it read before a rotation committed).
    loading: std::sync::Mutex<()>,
}

/// Whether `new` names a key on the same device as `current`: same scheme, and for PKCS#11 the
/// same token, module and PIN source, for a TPM the same TCTI. A rotation request names only
/// which key: never a library to load, a TPM elsewhere or a file to read as a PIN.
pub(crate) fn same_device(current: &str, new: &str) -> Result<(), String> {
    use writ_hsm::uri::KeyUri;
    let parse = |u: &str| u.parse::<KeyUri>().map_err(|e| e.to_string());
    match (parse(current)?, parse(new)?) {
        (KeyUri::Pkcs11(a), KeyUri::Pkcs11(b))
            if a.token == b.token && a.module_path == b.module_path && a.pin_source == b.pin_source =>
        {
            Ok(())
        }
        (KeyUri::Tpm(a), KeyUri::Tpm(b)) if a.tcti == b.tcti => Ok(()),
        (KeyUri::Software(_), KeyUri::Software(_)) => Ok(()),
        _ => Err(
            "the new key must be on the device of the key it replaces (pkcs11: the same token, module-path and pin-source; tpm: the same tcti)"
                .into(),
        ),
    }
}

fn purpose_of(p: &str) -> Option<&'static str> {
    match p {
        "issuer" => Some("issuer"),
        "ear" => Some("ear"),
        "checkpoint" => Some("checkpoint"),
        "ca" => Some("ca"),
        _ => None,
    }
}

impl Appliance {
    fn scheduled(&self, purpose: &str) -> Vec<Entry> {
        self.scheduled_or_poisoned(purpose).unwrap_or_default()
    }

    /// The schedule of `purpose`; `None` when its lock is poisoned (the CA functions fail closed
    /// then, rather than fall back to the configured key).
    fn scheduled_or_poisoned(&self, purpose: &str) -> Option<Vec<Entry>> {
        self.schedule
            .entries
            .read()
            .map(|e| e.iter().filter(|x| x.purpose == purpose).cloned().collect())
            .ok()
    }

    /// The key configured for `purpose` (for the checkpoint key, the log's newest signer).
    fn configured_key(&self, purpose: &str) -> Option<Arc<dyn CustodyKey>> {
        match purpose {
            "issuer" => self.config.issuer_key.clone(),
            "ear" => self.config.ear_key.clone(),
            "checkpoint" => self.log.signing_keys().pop(),
            "ca" => self.config.ca_key.clone(),
            p => p.strip_prefix("signing:").and_then(|n| {
                self.config
                    .signing_keys
                    .iter()
                    .find(|k| k.name == n)
                    .map(|k| Arc::clone(&k.key))
            }),
        }
    }

    /// The key that signs for `purpose` at `t`: the schedule's latest key whose time has come,
    /// or, before any rotation, the configured one.
    pub(crate) fn signing_key(&self, purpose: &str, t: i64) -> Option<Arc<dyn CustodyKey>> {
        // A poisoned schedule signs nothing (never the configured key, which may have left).
        let entries = self.scheduled_or_poisoned(purpose)?;
        if entries.is_empty() {
            return self.configured_key(purpose);
        }
        entries
            .iter()
            .filter(|e| e.signs_from <= t && e.published(t))
            .max_by_key(|e| e.signs_from)
            .and_then(|e| e.key.clone())
    }

    /// The keys of `purpose` published at `t`, when a schedule exists for it.
    pub(crate) fn scheduled_keys(&self, purpose: &str, t: i64) -> Option<Vec<EcJwk>> {
        // A poisoned schedule publishes nothing of the purpose.
        let Some(entries) = self.scheduled_or_poisoned(purpose) else {
            return Some(Vec::new());
        };
        (!entries.is_empty()).then(|| {
            entries
                .iter()
                .filter(|e| e.published(t))
                .map(|e| e.jwk.clone())
                .collect()
        })
    }

    /// The configured `ca` key and the CA certificate it was started with.
    fn configured_authority(&self) -> Option<crate::tls::Authority> {
        let key = self.config.ca_key.clone()?;
        let der = super::x509_der(self.config.ca_certificate_pem.as_deref()?).ok()?;
        Some(crate::tls::Authority {
            key,
            der,
            until: None,
        })
    }

    /// The CA that signs certificates at `t` (the server's, SVIDs): the `ca` schedule's key
    /// whose time has come, or, before any rotation, the configured one. `None`: plain HTTP.
    pub fn signing_authority(&self, t: i64) -> Option<crate::tls::Authority> {
        let entries = self.scheduled_or_poisoned("ca")?;
        if entries.is_empty() {
            return self.configured_authority();
        }
        let e = entries
            .iter()
            .filter(|e| e.signs_from <= t && e.published(t))
            .max_by_key(|e| e.signs_from)?;
        Some(crate::tls::Authority {
            key: e.key.clone()?,
            der: e.certificate.clone()?,
            until: e.retires_at,
        })
    }

    /// The CA that signs the certificates only this appliance verifies (admins' and gateways'
    /// client certificates) at `t`: the newest one published for [`CLIENT_TRUST_DELAY_S`] (every
    /// replica's TLS trusts it by then), else the one signing now.
    pub(crate) fn client_authority(&self, t: i64) -> Option<crate::tls::Authority> {
        let entries = self.scheduled_or_poisoned("ca")?;
        if entries.is_empty() {
            return self.configured_authority();
        }
        let Some(e) = entries
            .iter()
            .filter(|e| e.published(t) && e.published_at.saturating_add(CLIENT_TRUST_DELAY_S) <= t)
            .max_by_key(|e| e.signs_from)
        else {
            return self.signing_authority(t);
        };
        Some(crate::tls::Authority {
            key: e.key.clone()?,
            der: e.certificate.clone()?,
            until: e.clients_until.or(e.retires_at),
        })
    }

    /// The CA certificates published at `t` (DER), oldest first, with their keys' JWKs: what the
    /// trust bundle lists and what client certificates may chain to.
    pub fn published_authorities(&self, t: i64) -> Vec<(EcJwk, Vec<u8>)> {
        let Some(entries) = self.scheduled_or_poisoned("ca") else {
            return Vec::new();
        };
        if entries.is_empty() {
            return self
                .configured_authority()
                .map(|a| {
                    vec![(
                        EcJwk::from_verifying_key(a.key.public_key().verifying_key()),
                        a.der,
                    )]
                })
                .unwrap_or_default();
        }
        entries
            .iter()
            .filter(|e| e.published(t))
            .filter_map(|e| Some((e.jwk.clone(), e.certificate.clone()?)))
            .collect()
    }

    /// What the appliance's TLS follows now: the CA that signs, and the CAs client certificates
    /// may chain to (those published, and a rotated-out one until its `clients_until`).
    pub fn certificate_authorities(&self) -> Option<(crate::tls::Authority, Vec<Vec<u8>>)> {
        let t = now().ok()?;
        let signing = self.signing_authority(t)?;
        let mut trusted: Vec<Vec<u8>> = self
            .published_authorities(t)
            .into_iter()
            .map(|(_, der)| der)
            .collect();
        for e in self.scheduled_or_poisoned("ca")? {
            if let Some(der) = e.certificate
                && e.clients_until.is_some_and(|u| t < u)
                && !trusted.contains(&der)
            {
                trusted.push(der);
            }
        }
        Some((signing, trusted))
    }

    /// Reads the schedule from the store (opening keys not open yet), if it changed. The first
    /// read also checks it against the configuration (`at_start`).
    pub fn load_schedule(&self, at_start: bool) -> Result<(), Problem> {
        let _one = self.schedule.loading.lock().map_err(|_| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "key_schedule",
                "the key schedule's lock is poisoned",
            )
        })?;
        let rows = self.query(
                                                "SELECT purpose, uri, spki, published_at, signs_from, retires_at, endorsement, certificate, clients_until, form
             FROM key_schedule ORDER BY purpose, published_at, signs_from",
            &[],
        )?;
        let current = self.schedule.entries.read().map(|e| e.len()).unwrap_or(0);
        let same = self
            .schedule
            .entries
            .read()
            .map(|e| {
                e.len() == rows.len()
                    && e.iter().zip(&rows).all(|(x, r)| {
                        r.get(5).and_then(Db::int) == x.retires_at
                            && r.get(2).and_then(Db::blob) == Some(x.spki.as_slice())
                    })
            })
            .unwrap_or(false);
        if same && !(at_start && current == 0 && rows.is_empty()) {
            return Ok(());
        }
        let t = now()?;
        let mut entries = Vec::with_capacity(rows.len());
        for r in &rows {
            let text = |i: usize| r.get(i).and_then(Db::text).unwrap_or("").to_string();
            let int = |i: usize| r.get(i).and_then(Db::int).unwrap_or(0);
            let spki = r.get(2).and_then(Db::blob).unwrap_or_default().to_vec();
            let (purpose, uri) = (text(0), text(1));
            let retires_at = r.get(5).and_then(Db::int);
            let jwk = {
                use p256::pkcs8::DecodePublicKey;
                p256::ecdsa::VerifyingKey::from_public_key_der(&spki)
                    .map(|k| EcJwk::from_verifying_key(&k))
                    .map_err(|e| start_problem(format!("a scheduled key's SPKI: {e}")))?
            };
            // A retired key is never opened again; nor is a key of a signing name no longer
            // configured (its schedule is neither published nor used).
            let unconfigured =
                purpose.starts_with("signing:") && self.configured_key(&purpose).is_none();
            let key = if retires_at.is_some_and(|r| r <= t) || unconfigured {
                None
            } else {
                // Open already: here, or by the log (a checkpoint key).
                let known = self
                    .schedule
                    .entries
                    .read()
                    .ok()
                    .and_then(|e| {
                        e.iter()
                            .find(|x| x.spki == spki)
                            .and_then(|x| x.key.clone())
                    })
                    .or_else(|| self.log.open_key(&spki));
                Some(match known {
                    Some(k) => k,
                    None => {
                        // A stored URI names which key, never a library, TPM or PIN file of
                        // its own: the configured key's device.
                        let on = self
                            .configured_key(&purpose)
                            .map(|k| k.uri().to_string())
                            .unwrap_or_default();
                        same_device(&on, &uri)
                            .map_err(|e| start_problem(format!("the scheduled key {uri}: {e}")))?;
                        self.open_scheduled(&uri, &spki)?
                    }
                })
            };
            let certificate = r.get(7).and_then(Db::blob).map(<[u8]>::to_vec);
            let clients_until = r.get(8).and_then(Db::int);
            if purpose == "ca" && (key.is_some() || clients_until.is_some_and(|u| t < u)) {
                // A stored certificate is published and chained to only if it is the key's own.
                let c = certificate.as_deref().ok_or_else(|| {
                    start_problem(format!("the scheduled ca key {uri} has no CA certificate"))
                })?;
                crate::tls::check_ca_certificate(c, &spki).map_err(|e| {
                    start_problem(format!("the scheduled ca key {uri}'s CA certificate: {e}"))
                })?;
            }
            entries.push(Entry {
                purpose,
                jwk,
                key,
                spki,
                published_at: int(3),
                signs_from: int(4),
                retires_at,
                endorsement: r.get(6).and_then(Db::blob).map(<[u8]>::to_vec),
                certificate,
                clients_until,
                form: r.get(9).and_then(Db::text).map(str::to_string),
            });
        }
        if at_start {
            // One key, one purpose: no scheduled key is any other configured key.
            let c = &self.config;
            let others: Vec<(String, Vec<u8>)> = [("ca", &c.ca_key)]
                .into_iter()
                .filter_map(|(p, k)| {
                    k.as_ref()
                        .map(|k| (p.to_string(), k.public_key().spki_der().to_vec()))
                })
                .chain(c.signing_keys.iter().map(|k| {
                    (
                        format!("signing:{}", k.name),
                        k.key.public_key().spki_der().to_vec(),
                    )
                }))
                .chain(
                    [("issuer", &c.issuer_key), ("ear", &c.ear_key)]
                        .into_iter()
                        .filter_map(|(p, k)| {
                            k.as_ref()
                                .map(|k| (p.to_string(), k.public_key().spki_der().to_vec()))
                        }),
                )
                .chain(
                    self.log
                        .key_history()
                        .into_iter()
                        .map(|spki| ("checkpoint".to_string(), spki)),
                )
                .collect();
            for e in &entries {
                if let Some((p, _)) = others
                    .iter()
                    .find(|(p, spki)| *spki == e.spki && *p != e.purpose)
                {
                    return Err(start_problem(format!(
                        "a key of the {} key's rotation history is also the {p} key: one key, one purpose",
                        e.purpose
                    )));
                }
            }
            let signing: Vec<(String, Option<Arc<dyn CustodyKey>>)> = self
                .config
                .signing_keys
                .iter()
                .map(|k| (format!("signing:{}", k.name), Some(Arc::clone(&k.key))))
                .collect();
            // A signing name keeps its form across rotations: a key that signed DSSE envelopes
            // must never be published as one that signs raw digests (or the reverse).
            for k in &self.config.signing_keys {
                let purpose = format!("signing:{}", k.name);
                if let Some(stored) = entries
                    .iter()
                    .filter(|e| e.purpose == purpose)
                    .find_map(|e| e.form.as_deref())
                    && stored != k.form.as_str()
                {
                    return Err(start_problem(format!(
                        "keys.signing.{}: form {} but its rotation history signs {stored}: one form per key (name a new key for the other form)",
                        k.name,
                        k.form.as_str()
                    )));
                }
            }
            for (purpose, configured) in [
                ("issuer", &self.config.issuer_key),
                ("ear", &self.config.ear_key),
                ("ca", &self.config.ca_key),
            ]
            .into_iter()
            .chain(signing.iter().map(|(p, k)| (p.as_str(), k)))
            {
                let of: Vec<&Entry> = entries.iter().filter(|e| e.purpose == purpose).collect();
                if of.is_empty() {
                    continue;
                }
                let in_schedule = configured
                    .as_ref()
                    .is_some_and(|k| of.iter().any(|e| e.spki == k.public_key().spki_der()));
                if !in_schedule {
                    let setting = purpose.replace(':', ".");
                    return Err(start_problem(format!(
                        "keys.{setting} is not a key of the {purpose} key's rotation history (key_schedule): configure a key of that history (the first one is enough)"
                    )));
                }
                if self
                    .config
                    .published_keys
                    .iter()
                    .any(|(p, _)| *p == purpose)
                {
                    return Err(start_problem(format!(
                        "keys.{purpose}_published and a rotation history of the {purpose} key: the history publishes its keys; remove keys.{purpose}_published"
                    )));
                }
            }
        }
        // The log signs with the checkpoint keys of the schedule (it read them when it opened;
        // this is a rotation since, here or by another replica).
        let checkpoint: Vec<crate::decision_log::LogKey> = entries
            .iter()
            .filter(|e| e.purpose == "checkpoint")
            .map(|e| crate::decision_log::LogKey {
                key: e.key.clone(),
                spki: e.spki.clone(),
                published_at: e.published_at,
                signs_from: e.signs_from,
                retires_at: e.retires_at,
                endorsement: e.endorsement.clone(),
            })
            .collect();
        if !checkpoint.is_empty() {
            self.log
                .set_keys(checkpoint)
                .map_err(|e| start_problem(format!("the checkpoint keys: {e}")))?;
        }
        if let Ok(mut e) = self.schedule.entries.write() {
            *e = entries;
        }
        Ok(())
    }

    fn open_scheduled(&self, uri: &str, spki: &[u8]) -> Result<Arc<dyn CustodyKey>, Problem> {
        let key = writ_hsm::open_key(
            &uri.parse()
                .map_err(|e| start_problem(format!("a scheduled key {uri}: {e}")))?,
            &self.config.open_options,
        )
        .map_err(|e| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "key_unavailable",
                format!("a scheduled key ({uri}): {e}"),
            )
        })?;
        if key.public_key().spki_der() != spki {
            return Err(start_problem(format!(
                "the scheduled key {uri} is not the key recorded for it"
            )));
        }
        Ok(key)
    }

    /// Every second: the schedule other replicas may have changed, and a new trust bundle version
    /// when a key left it (or anything else changed).
    ///
    /// Only a departure or an arrival publishes here: the latest version still lists a key that
    /// this schedule says has left, or lacks a purpose's newest key (one that never leaves: a
    /// rotation whose publication failed after it committed). A replica whose clock is behind, or
    /// whose read failed, never puts a departed key back (the versions cannot flap between
    /// replicas); anything else publishes on its own events (start, policy load, rotation).
    pub fn tick(&self) {
        if let Err(p) = self.load_schedule(false) {
            tracing::error!("key schedule: {}", p.detail());
            return;
        }
        let Ok(t) = now() else { return };
        let departed: Vec<String> = self
            .schedule
            .entries
            .read()
            .map(|e| {
                e.iter()
                    .filter(|x| x.retires_at.is_some_and(|r| r <= t))
                    .map(|x| x.jwk.thumbprint())
                    .collect()
            })
            .unwrap_or_default();
        let newest: Vec<String> = self
            .schedule
            .entries
            .read()
            .map(|e| {
                e.iter()
                    .filter(|x| x.retires_at.is_none() && x.published_at <= t)
                    .map(|x| x.jwk.thumbprint())
                    .collect()
            })
            .unwrap_or_default();
        let departure = !departed.is_empty() && self.latest_bundle_lists(&departed);
        let arrival = newest
            .iter()
            .any(|kid| !self.latest_bundle_lists(std::slice::from_ref(kid)));
        if !departure && !arrival {
            return;
        }
        match self.publish_bundle() {
            Ok(sequence) => tracing::info!(sequence, "trust bundle published: a rotated key left"),
            Err(p) if p.code() == "no_policy" => {}
            Err(p) => tracing::warn!("trust bundle: {}: {}", p.code(), p.detail()),
        }
    }

    /// Rotates a key; see the module's documentation.
    pub fn rotate_key(&self, admin: &str, req: &RotateRequest) -> Result<Rotated, Problem> {
        let t = now()?;
        let refuse = |p: Problem| self.admin_refused(admin, p);
        // A signing service key's schedule is its name's: `signing:<name>`.
        let purpose_owned = match (req.purpose.as_str(), &req.name) {
            ("signing", Some(n)) if self.config.signing_keys.iter().any(|k| &k.name == n) => {
                format!("signing:{n}")
            }
            ("signing", _) => {
                return Err(refuse(malformed(
                    "name: the name of a signing key of this appliance",
                )));
            }
            (p, None) => match purpose_of(p) {
                Some(p) => p.to_string(),
                None => {
                    return Err(refuse(malformed(
                        "purpose: issuer, ear, checkpoint, ca or signing (with name)",
                    )));
                }
            },
            (_, Some(_)) => return Err(refuse(malformed("name: for purpose signing only"))),
        };
        let purpose = purpose_owned.as_str();
        let signing = purpose.starts_with("signing:");
        let retain = match (signing, req.retain_s) {
            (true, Some(r)) if (0..=MAX_RETAIN_S).contains(&r) => r,
            (true, _) => {
                return Err(refuse(malformed(format!(
                    "retain_s: 0 to {MAX_RETAIN_S}, required for a signing key (a signature does not expire: say how long the old key stays published after the new one signs)"
                ))));
            }
            (false, None) => 0,
            (false, Some(_)) => {
                return Err(refuse(malformed("retain_s: for purpose signing only")));
            }
        };
        let current_uri = self
            .signing_key(purpose, t)
            .map(|k| k.uri().to_string())
            .unwrap_or_default();
        if let Err(why) = same_device(&current_uri, &req.key) {
            return Err(refuse(malformed(format!("key: {why}"))));
        }
        let overlap = req.overlap_s.unwrap_or(DEFAULT_OVERLAP_S);
        let skew = req.skew_s.unwrap_or(DEFAULT_SKEW_S);
        if !(1..=7 * 86_400).contains(&overlap) || !(0..=3600).contains(&skew) {
            return Err(refuse(malformed(
                "overlap_s: 1 to 604800; skew_s: 0 to 3600",
            )));
        }
        let key = writ_hsm::open_key(
            &req.key
                .parse()
                .map_err(|e| refuse(malformed(format!("key: {e}"))))?,
            &self.config.open_options,
        )
        .map_err(|e| {
            refuse(Problem::new(
                StatusCode::BAD_REQUEST,
                "key_unusable",
                format!("the new key: {e}"),
            ))
        })?;
        let spki = key.public_key().spki_der().to_vec();
        let jwk = EcJwk::from_verifying_key(key.public_key().verifying_key());
        // A checkpoint key's note key ID (4 bytes of its SPKI's SHA-256) must be new too: a
        // signature line names its key by it.
        if purpose == "checkpoint" {
            let origin = self.log.origin();
            let id = |k: &[u8]| {
                writ_attestation::log::note::NoteVerifier::from_spki(origin, k)
                    .ok()
                    .map(|v| v.id())
            };
            let new_id = id(&spki);
            if new_id.is_none() || self.log.key_history().iter().any(|k| id(k) == new_id) {
                return Err(refuse(Problem::new(
                    StatusCode::CONFLICT,
                    "key_in_use",
                    "the new checkpoint key's note key ID is a key ID of the log's history: generate another key",
                )));
            }
        }
        if self.key_in_use(&spki) {
            return Err(refuse(Problem::new(
                StatusCode::CONFLICT,
                "key_in_use",
                "the new key is already one of this appliance's keys (any purpose): one key, one purpose, used once",
            )));
        }
        if self
            .config
            .published_keys
            .iter()
            .any(|(p, _)| *p == purpose)
        {
            return Err(refuse(Problem::new(
                StatusCode::CONFLICT,
                "rotation_in_progress",
                format!(
                    "keys.{purpose}_published is configured (a rotation by the runbook with restarts is under way): finish it first"
                ),
            )));
        }
        let Some(previous) = self.signing_key(purpose, t) else {
            return Err(refuse(Problem::new(
                StatusCode::CONFLICT,
                "no_key",
                format!("no {purpose} key signs now: configure one (keys.{purpose}) first"),
            )));
        };
        if self.scheduled(purpose).iter().any(|e| e.signs_from > t) {
            return Err(refuse(Problem::new(
                StatusCode::CONFLICT,
                "rotation_in_progress",
                format!("a {purpose} key is already published and waiting to sign"),
            )));
        }
        // The longest life of what the previous key may still sign before the new one does (a
        // checkpoint it signed alone lives in inclusion bundles, with their writs).
        // (An SVID never outlives the EAR it was asked with; the server certificate the old CA
        // signed stops serving at `signs_from`.)
        let lifetime = match purpose {
            "issuer" | "checkpoint" => self
                .current_policy()?
                .map_or(0, |(_, p)| p.bundle.max_writ_lifetime_s),
            _ if signing => retain,
            _ => self.config.ear_ttl,
        };
        let signs_from = t.saturating_add(overlap);
        // Writs issued under the previous policy bundle (by this key) live until its deadline.
        let previous_until = match purpose {
            "issuer" | "checkpoint" => self
                .policy_versions()?
                .0
                .iter()
                .filter_map(|p| p.get("until").and_then(serde_json::Value::as_i64))
                .max()
                .unwrap_or(0),
            _ => 0,
        };
        let retires_at = signs_from
            .saturating_add(lifetime)
            .max(previous_until)
            .saturating_add(skew);
        // The old CA's admins' and gateways' certificates (verified by the appliance alone) stay
        // accepted until the last of those not revoked expires; nothing it signs from now on
        // outlives that (the new CA signs them once every replica trusts it).
        let clients_until = if purpose == "ca" {
            let latest = self
                .query(
                    "SELECT MAX(not_after) FROM admin_certificates WHERE revoked_at IS NULL",
                    &[],
                )?
                .first()
                .and_then(|r| r.first())
                .and_then(Db::int)
                .unwrap_or(0);
            Some(retires_at.max(latest.saturating_add(skew)))
        } else {
            None
        };
        let previous_spki = previous.public_key().spki_der().to_vec();
        // A checkpoint key is endorsed by the one signing now: the log trusts the history only
        // through such a chain from its configured key (a row in the store is no anchor).
        let endorsement: Option<Vec<u8>> = if purpose == "checkpoint" {
            let message = crate::decision_log::endorsement_message(self.log.origin(), &spki);
            let signature = previous.sign(&message).map_err(|e| {
                refuse(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "signing_unavailable",
                    format!("the checkpoint key signing now could not endorse the new key: {e}"),
                ))
            })?;
            Some(signature.to_der().as_bytes().to_vec())
        } else {
            None
        };
        // A new CA's certificate, made by its key now; the configured one's as it was started.
        let (certificate, previous_certificate) = if purpose == "ca" {
            let made = crate::tls::rotated_ca_certificate(&key, &self.config.trust_domain)
                .map_err(|e| {
                    refuse(Problem::new(
                        StatusCode::BAD_REQUEST,
                        "key_unusable",
                        format!("the new key could not sign its CA certificate: {e}"),
                    ))
                })?;
            let Some(before) = self.signing_authority(t).map(|a| a.der) else {
                return Err(refuse(Problem::new(
                    StatusCode::CONFLICT,
                    "no_key",
                    "no CA signs now (its certificate is not at hand): nothing to rotate from",
                )));
            };
            (Some(made), Some(before))
        } else {
            (None, None)
        };
        let mut effect = Vec::new();
        if self.scheduled(purpose).is_empty() {
            // The first rotation: the configured key becomes the schedule's first entry.
            effect.push(Op {
                                                sql: "INSERT INTO key_schedule (purpose, uri, spki, published_at, signs_from, retires_at, certificate, clients_until)
                      VALUES ($1, $2, $3, 0, 0, $4, $5, $6)",
                params: vec![
                    purpose.into(),
                    previous.uri().to_string().into(),
                    previous_spki.clone().into(),
                    retires_at.into(),
                    previous_certificate.map_or(Db::Null, Db::from),
                    clients_until.map_or(Db::Null, Db::from),
                ],
                must_affect: None,
            });
        } else {
            effect.push(Op {
                sql: "UPDATE key_schedule SET retires_at = $3, clients_until = $4
                      WHERE purpose = $1 AND spki = $2 AND retires_at IS NULL",
                params: vec![
                    purpose.into(),
                    previous_spki.clone().into(),
                    retires_at.into(),
                    clients_until.map_or(Db::Null, Db::from),
                ],
                must_affect: Some(("rotation_in_progress", "the key schedule changed meanwhile")),
            });
        }
        effect.push(Op {
            sql: "INSERT INTO key_schedule (purpose, uri, spki, published_at, signs_from, retires_at)
                  SELECT $1, $2, $3, $4, $5, NULL
                  WHERE NOT EXISTS (SELECT 1 FROM key_schedule WHERE spki = $3)
                    AND NOT EXISTS (SELECT 1 FROM key_schedule WHERE purpose = $1 AND signs_from > $4)",
            params: vec![
                purpose.into(),
                req.key.clone().into(),
                spki.clone().into(),
                t.into(),
                signs_from.into(),
            ],
            must_affect: Some((
                "rotation_in_progress",
                "the key schedule changed meanwhile (another rotation, or this key is scheduled)",
            )),
        });
        // A signing name's form, on every key of its history.
        if let Some(n) = purpose.strip_prefix("signing:")
            && let Some(k) = self.config.signing_keys.iter().find(|k| k.name == n)
        {
            effect.push(Op {
                sql: "UPDATE key_schedule SET form = $1 WHERE purpose = $2",
                params: vec![k.form.as_str().into(), purpose.into()],
                must_affect: None,
            });
        }
        if let Some(c) = &certificate {
            effect.push(Op {
                sql: "UPDATE key_schedule SET certificate = $1 WHERE spki = $2",
                params: vec![c.clone().into(), spki.clone().into()],
                must_affect: Some(("rotation_in_progress", "the key schedule changed meanwhile")),
            });
        }
        if let Some(e) = endorsement {
            effect.push(Op {
                sql: "UPDATE key_schedule SET endorsement = $1 WHERE spki = $2",
                params: vec![e.into(), spki.clone().into()],
                must_affect: Some(("rotation_in_progress", "the key schedule changed meanwhile")),
            });
        }
        let name = match purpose {
            "issuer" => "rotated_issuer_key",
            "checkpoint" => "rotated_checkpoint_key",
            "ca" => "rotated_ca_key",
            _ if signing => "rotated_signing_key",
            _ => "rotated_ear_key",
        };
        self.admin_record(admin, &[(name, digest(&spki))], effect)?;
        self.load_schedule(false)?;
        // Without a policy bundle there is no trust bundle yet: the first one will carry both.
        let sequence = match self.publish_bundle() {
            Ok(s) => s,
            Err(p) if p.code() == "no_policy" => 0,
            Err(p) => return Err(p),
        };
        Ok(Rotated {
            purpose: purpose.to_string(),
            kid: jwk.thumbprint(),
            signs_from,
            previous_kid: EcJwk::from_verifying_key(previous.public_key().verifying_key())
                .thumbprint(),
            previous_retires_at: retires_at,
            bundle_sequence: sequence,
            ca_fingerprint: certificate.as_deref().map(crate::tls::fingerprint),
            previous_clients_until: clients_until,
        })
    }

    /// Whether a key is any key this appliance uses or has scheduled.
    fn key_in_use(&self, spki: &[u8]) -> bool {
        let c = &self.config;
        let configured = [&c.issuer_key, &c.ear_key, &c.ca_key]
            .into_iter()
            .flatten()
            .chain(c.published_keys.iter().map(|(_, k)| k))
            .chain(c.signing_keys.iter().map(|k| &k.key))
            .any(|k| k.public_key().spki_der() == spki);
        let scheduled = self
            .schedule
            .entries
            .read()
            .map(|e| e.iter().any(|x| x.spki == spki))
            .unwrap_or(true);
        // The log's history is never empty (its configured key): an empty answer (a poisoned
        // lock) counts as in use.
        let history = self.log.key_history();
        let log = history.is_empty() || history.iter().any(|k| k == spki);
        configured || scheduled || log
    }
}

fn start_problem(detail: String) -> Problem {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "key_schedule", detail)
}
