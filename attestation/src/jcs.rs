//! RFC 8785 JSON Canonicalization Scheme for the documents writ hashes and signs (decision
//! records, request objects): object members sorted by the UTF-16 code units of their names, no
//! whitespace, strings escaped minimally, numbers as integers only (within ±(2^53 - 1), the range
//! every JSON parser keeps exactly; writ's documents have no fractions).

use serde_json::Value;

use crate::error::EvidenceError;

/// The largest integer magnitude accepted (I-JSON, RFC 7493).
const MAX_SAFE: u64 = (1 << 53) - 1;
/// Deepest nesting accepted.
const MAX_DEPTH: usize = 32;

fn bad(why: impl Into<String>) -> EvidenceError {
    EvidenceError::Malformed(format!("canonical JSON: {}", why.into()))
}

/// The canonical form of `v`.
pub fn canonical(v: &Value) -> Result<String, EvidenceError> {
    let mut out = String::new();
    write(v, &mut out, 0)?;
    Ok(out)
}

/// Parses bytes that must already be in canonical form (UTF-8, no duplicate member, nothing a
/// re-serialization would change).
pub fn parse_canonical(bytes: &[u8]) -> Result<Value, EvidenceError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if canonical(&v)?.as_bytes() != bytes {
        return Err(bad("not in RFC 8785 canonical form"));
    }
    Ok(v)
}

fn write(v: &Value, out: &mut String, depth: usize) -> Result<(), EvidenceError> {
    if depth > MAX_DEPTH {
        return Err(bad("nested too deeply"));
    }
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                if u > MAX_SAFE {
                    return Err(bad(format!("{u} is beyond 2^53 - 1")));
                }
                out.push_str(&u.to_string());
            } else if let Some(i) = n.as_i64() {
                if i.unsigned_abs() > MAX_SAFE {
                    return Err(bad(format!("{i} is beyond -(2^53 - 1)")));
                }
                out.push_str(&i.to_string());
            } else {
                return Err(bad("numbers must be integers"));
            }
        }
        Value::String(s) => string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out, depth + 1)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                string(k, out);
                out.push(':');
                if let Some(v) = map.get(k) {
                    write(v, out, depth + 1)?;
                }
            }
            out.push('}');
        }
    }
    Ok(())
}

fn string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}
