//! The appliance's metrics, in the Prometheus text format (`GET /metrics`): requests by route,
//! status and code; request latencies by route; decisions by kind, decision and code; device
//! and store errors. Label values are route templates and stable codes only (never a
//! subject, a token or a path with an identifier in it).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Latency bucket bounds, seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, u16, String), u64>,
    latency: BTreeMap<String, Histogram>,
    decisions: BTreeMap<(String, String, String), u64>,
    errors: BTreeMap<(String, String), u64>,
}

/// Counters shared by the HTTP layer and the appliance.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// A label value: printable ASCII without quotes or backslashes (route templates and codes
/// already are; anything else is replaced).
fn label(v: &str) -> String {
    v.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Metrics {
    /// One answered request.
    pub fn request(&self, route: &str, status: u16, code: &str, took: Duration) {
        if let Ok(mut m) = self.inner.lock() {
            *m.requests
                .entry((label(route), status, label(code)))
                .or_default() += 1;
            let h = m.latency.entry(label(route)).or_default();
            let s = took.as_secs_f64();
            for (i, b) in BUCKETS.iter().enumerate() {
                if s <= *b
                    && let Some(c) = h.counts.get_mut(i)
                {
                    *c += 1;
                }
            }
            h.count += 1;
            h.sum += s;
        }
    }

    /// One logged decision.
    pub fn decision(&self, kind: &str, decision: &str, code: &str) {
        if let Ok(mut m) = self.inner.lock() {
            *m.decisions
                .entry((label(kind), label(decision), label(code)))
                .or_default() += 1;
        }
    }

    /// One failure of a dependency (`store`, `custody`, `clock`) with its code.
    pub fn error(&self, dependency: &str, code: &str) {
        if let Ok(mut m) = self.inner.lock() {
            *m.errors
                .entry((label(dependency), label(code)))
                .or_default() += 1;
        }
    }

    /// The exposition text; `extra` are gauges and counters owned elsewhere
    /// (name, help, type, value).
    pub fn render(&self, extra: &[(&str, &str, &str, f64)]) -> String {
        let mut out = String::new();
        let Ok(m) = self.inner.lock() else {
            return out;
        };
        out.push_str("# HELP writ_requests_total HTTP requests answered, by route template, status and code.\n# TYPE writ_requests_total counter\n");
        for ((route, status, code), n) in &m.requests {
            let _ = writeln!(
                out,
                "writ_requests_total{{route=\"{route}\",status=\"{status}\",code=\"{code}\"}} {n}"
            );
        }
        out.push_str("# HELP writ_request_seconds Time to answer, by route template.\n# TYPE writ_request_seconds histogram\n");
        for (route, h) in &m.latency {
            for (b, c) in BUCKETS.iter().zip(h.counts.iter()) {
                let _ = writeln!(
                    out,
                    "writ_request_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {c}"
                );
            }
            let _ = writeln!(
                out,
                "writ_request_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "writ_request_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "writ_request_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        out.push_str("# HELP writ_decisions_total Decisions written to the log, by kind, decision and code (allow: ok).\n# TYPE writ_decisions_total counter\n");
        for ((kind, decision, code), n) in &m.decisions {
            let _ = writeln!(
                out,
                "writ_decisions_total{{kind=\"{kind}\",decision=\"{decision}\",code=\"{code}\"}} {n}"
            );
        }
        out.push_str("# HELP writ_dependency_errors_total Failures of the store, the custody device or the clock, by code.\n# TYPE writ_dependency_errors_total counter\n");
        for ((dep, code), n) in &m.errors {
            let _ = writeln!(
                out,
                "writ_dependency_errors_total{{dependency=\"{dep}\",code=\"{code}\"}} {n}"
            );
        }
        for (name, help, kind, v) in extra {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        out
    }
}
