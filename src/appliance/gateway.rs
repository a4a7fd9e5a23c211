//! Execution gateways as clients of the appliance: their certificates (`spiffe://<td>/gateway/
//! <name>`, clientAuth only, issued by an admin and registered by serial like admins') and the
//! reports of their spools, which become `gate` and `outcome` decision records.
//!
//! A report is a batch of spool entries in the order the gateway spooled them, each with its
//! sequence number, and the spool's random identity (a spool made again, after a reinstall,
//! numbers from 1 again under a new identity). The appliance keeps, per gateway and spool, the
//! sequence numbers it recorded (schema 8 `gateway_reports`), written in the transaction of the
//! entry's record (insert-if-absent: a copy sent concurrently conflicts and is skipped, never
//! recorded twice, and fails nothing else). An entry at or below the highest recorded is skipped
//! as already reported; the answer is the highest sequence number recorded, which the gateway
//! then drops from its spool.
//!
//! A `gate` entry must name a writ this appliance issued: its `jti` and the digest of the compact
//! writ as the `writs` table holds them; otherwise the record is a deny (`report_mismatch`), so a
//! gateway cannot put executions of writs that were never issued into the log as allowed.
//!
//! The records hold digests only: the writ's `jti`, the request digest and the writ's digest for
//! a `gate` record, the `jti` for an `outcome`, and for both the digest of the spool entry as
//! sent (its RFC 8785 form), so the gateway's copy can be matched to the log. An outcome is an
//! allow when the tool exited 0 or the upstream answered below 400, else a deny with
//! `tool_failed`, `upstream_failed` or `not_run`.

use serde::Deserialize;
use serde_json::Value as Json;
use writ_attestation::log::record::Kind;
use writ_attestation::writ::claims::is_digest;

use super::{Appliance, Rec, digest, malformed};
use crate::http::Problem;
use crate::store::{Op, Value};

/// The most entries in one report.
pub const MAX_REPORT: usize = 256;

/// The largest report body, bytes.
pub const MAX_REPORT_BODY: usize = 4 * 1024 * 1024;

/// Who a client certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `spiffe://<td>/admin/<name>`.
    Admin,
    /// `spiffe://<td>/gateway/<name>`.
    Gateway,
}

impl Role {
    /// The SPIFFE ID path segment.
    pub fn path(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Gateway => "gateway",
        }
    }
    pub(crate) fn kind(self) -> Kind {
        match self {
            Role::Admin => Kind::Admin,
            Role::Gateway => Kind::Gate,
        }
    }
    pub(crate) fn forbidden(self) -> &'static str {
        match self {
            Role::Admin => "admin_forbidden",
            Role::Gateway => "gateway_forbidden",
        }
    }
    pub(crate) fn revoked(self) -> &'static str {
        match self {
            Role::Admin => "admin_revoked",
            Role::Gateway => "gateway_revoked",
        }
    }
    pub(crate) fn unknown(self) -> &'static str {
        match self {
            Role::Admin => "admin_unknown",
            Role::Gateway => "gateway_unknown",
        }
    }
    pub(crate) fn certificate_digest(self) -> &'static str {
        match self {
            Role::Admin => "admin_certificate",
            Role::Gateway => "gateway_certificate",
        }
    }
    pub(crate) fn id_digest(self) -> &'static str {
        match self {
            Role::Admin => "admin_id",
            Role::Gateway => "gateway_id",
        }
    }
}

/// One spool entry of a report.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportEntry {
    /// Its sequence number in the gateway's spool.
    pub seq: i64,
    /// The entry as spooled.
    pub entry: Json,
}

fn field<'a>(e: &'a Json, path: &[&str]) -> Option<&'a Json> {
    path.iter().try_fold(e, |v, k| v.get(*k))
}

/// What an entry records: its kind, its denial reason (outcomes), and its digests.
type Recorded = (Kind, Option<&'static str>, Vec<(&'static str, String)>);

/// Reads a spool entry into its record's parts, or says what is wrong with it.
fn record_of(e: &Json) -> Result<Recorded, String> {
    let canonical =
        writ_attestation::jcs::canonical(e).map_err(|e| format!("not canonical JSON: {e}"))?;
    let entry_digest = digest(canonical.as_bytes());
    let jti = |v: Option<&Json>| {
        v.and_then(Json::as_str)
            .filter(|j| !j.is_empty() && j.len() <= 64)
            .map(|j| digest(j.as_bytes()))
            .ok_or("no jti")
    };
    match e.get("kind").and_then(Json::as_str) {
        Some("gate") => {
            if e.get("decision").and_then(Json::as_str) != Some("allow") {
                return Err("a gate entry is an allow".into());
            }
            let req = field(e, &["writ", "request"])
                .and_then(Json::as_str)
                .filter(|r| is_digest(r))
                .ok_or("writ.request is not a sha256: digest")?;
            let mut digests = vec![
                ("jti", jti(field(e, &["writ", "jti"]))?),
                ("request", req.to_string()),
                ("entry", entry_digest),
            ];
            if let Some(w) = field(e, &["writ", "digest"]) {
                let w = w
                    .as_str()
                    .filter(|w| is_digest(w))
                    .ok_or("writ.digest is not a sha256: digest")?;
                digests.push(("writ", w.to_string()));
            }
            Ok((Kind::Gate, None, digests))
        }
        Some("outcome") => {
            // A command's outcome has `exit` (null: not started, or ended by a signal); an HTTP
            // request's has `status` (null: the upstream failed or did not answer).
            let reason = if let Some(exit) = e.get("exit") {
                let not_run = e.get("status").and_then(Json::as_str).is_some_and(|s| {
                    s.starts_with("not run") || s.contains("could not be started")
                });
                match exit.as_i64() {
                    Some(0) => None,
                    Some(_) => Some("tool_failed"),
                    None if not_run => Some("not_run"),
                    None => Some("tool_failed"),
                }
            } else {
                match e.get("status").and_then(Json::as_u64) {
                    Some(s) if (100..400).contains(&s) => None,
                    _ => Some("upstream_failed"),
                }
            };
            Ok((
                Kind::Outcome,
                reason,
                vec![("jti", jti(e.get("jti"))?), ("entry", entry_digest)],
            ))
        }
        _ => Err("kind is gate or outcome".into()),
    }
}

impl Appliance {
    /// Records `entries` of `gateway`'s spool (see the module's documentation); returns the
    /// highest sequence number recorded for it.
    pub fn report(
        &self,
        gateway: &str,
        spool: &str,
        entries: &[ReportEntry],
    ) -> Result<i64, Problem> {
        if entries.len() > MAX_REPORT {
            return Err(self.report_refused(
                gateway,
                malformed(format!("at most {MAX_REPORT} entries a report")),
            ));
        }
        if spool.len() != 32
            || !spool
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(
                self.report_refused(gateway, malformed("spool is 32 lower-case hex digits"))
            );
        }
        let highest = |this: &Appliance| -> Result<i64, Problem> {
            let rows = this.query(
                "SELECT max(seq) FROM gateway_reports WHERE gateway = $1 AND spool = $2",
                &[gateway.to_string().into(), spool.to_string().into()],
            )?;
            Ok(rows
                .first()
                .and_then(|r| r.first())
                .and_then(Value::int)
                .unwrap_or(0))
        };
        let mut acked = highest(self)?;
        for e in entries {
            if e.seq <= acked {
                continue;
            }
            let (kind, mut reason, digests) = record_of(&e.entry).map_err(|why| {
                self.report_refused(gateway, malformed(format!("spool entry {}: {why}", e.seq)))
            })?;
            if kind == Kind::Gate && !self.issued_here(&e.entry)? {
                reason = Some("report_mismatch");
            }
            // The sequence number is recorded with the record: a copy sent again conflicts
            // and is skipped.
            let effect = vec![Op {
                sql: "INSERT INTO gateway_reports (gateway, spool, seq) VALUES ($1, $2, $3)
                      ON CONFLICT DO NOTHING",
                params: vec![
                    gateway.to_string().into(),
                    spool.to_string().into(),
                    e.seq.into(),
                ],
                must_affect: Some(("report_duplicate", "this spool entry is already recorded")),
            }];
            let rec = Rec {
                kind,
                subject: gateway,
                reason,
                digests: &digests,
            };
            match self.logged(&rec, effect)? {
                Ok(_) => acked = e.seq,
                Err(crate::store::StoreError::Conflict { .. }) => acked = highest(self)?,
                Err(other) => return Err(super::store_problem(other)),
            }
        }
        Ok(acked)
    }

    /// A refusal of `gateway`'s report (an identified caller): recorded as a `gate` deny first.
    pub fn report_refused(&self, gateway: &str, p: Problem) -> Problem {
        self.refused_as(Kind::Gate, gateway, p)
    }

    /// Whether a gate entry's writ is one this appliance issued (its `jti` and digest in `writs`).
    fn issued_here(&self, entry: &Json) -> Result<bool, Problem> {
        let (Some(jti), Some(d)) = (
            field(entry, &["writ", "jti"]).and_then(Json::as_str),
            field(entry, &["writ", "digest"]).and_then(Json::as_str),
        ) else {
            return Ok(false);
        };
        let rows = self.query(
            "SELECT digest FROM writs WHERE jti = $1",
            &[jti.to_string().into()],
        )?;
        Ok(rows
            .first()
            .and_then(|r| r.first())
            .and_then(Value::text)
            .is_some_and(|stored| stored == d))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_become_records_of_digests_and_outcomes_say_how_they_ended() {
        let d = format!("sha256:{}", "a".repeat(64));
        let gate = json!({"kind": "gate", "decision": "allow", "time": 1,
            "writ": {"jti": "j1", "request": d, "digest": d, "sub": "spiffe://t/runtime/a"}});
        let (k, r, digests) = record_of(&gate).unwrap();
        assert_eq!((k, r), (Kind::Gate, None));
        let names: Vec<&str> = digests.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["jti", "request", "entry", "writ"]);
        for (entry, want) in [
            (json!({"kind": "outcome", "jti": "j1", "exit": 0}), None),
            (
                json!({"kind": "outcome", "jti": "j1", "exit": 3}),
                Some("tool_failed"),
            ),
            (json!({"kind": "outcome", "jti": "j1", "status": 201}), None),
            (
                json!({"kind": "outcome", "jti": "j1", "status": 502}),
                Some("upstream_failed"),
            ),
            (
                json!({"kind": "outcome", "jti": "j1", "exit": null, "status": "not run: tool_hash"}),
                Some("not_run"),
            ),
            (
                json!({"kind": "outcome", "jti": "j1", "exit": null, "status": "signal: 9 (SIGKILL)"}),
                Some("tool_failed"),
            ),
            (
                json!({"kind": "outcome", "jti": "j1", "status": null, "error": "timeout"}),
                Some("upstream_failed"),
            ),
        ] {
            assert_eq!(record_of(&entry).unwrap().1, want, "{entry}");
        }
        for bad in [
            json!({"kind": "issue", "jti": "j"}),
            json!({"kind": "gate", "decision": "deny", "writ": {"jti": "j", "request": d}}),
            json!({"kind": "gate", "decision": "allow", "writ": {"jti": "j", "request": "x"}}),
            json!({"kind": "gate", "decision": "allow", "writ": {"request": d}}),
            json!({"kind": "outcome", "exit": 0}),
        ] {
            assert!(record_of(&bad).is_err(), "{bad}");
        }
    }
}
