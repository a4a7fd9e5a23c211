//! Strict JSON for signed documents: UTF-8 without a BOM, no duplicate member anywhere (parsers
//! disagree on which duplicate wins, so a signed document with one means two things), bounded
//! depth, nothing after the value.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::Refusal;

/// Deepest nesting accepted.
const MAX_DEPTH: usize = 16;

struct Strict(Value);

struct StrictVisitor(usize);

impl<'de> de::Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor(0)).map(Strict)
    }
}

struct Seed(usize);

impl<'de> de::DeserializeSeed<'de> for Seed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor(self.0))
    }
}

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if self.0 >= MAX_DEPTH {
            return Err(de::Error::custom("nested too deeply"));
        }
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Seed(self.0 + 1))? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        if self.0 >= MAX_DEPTH {
            return Err(de::Error::custom("nested too deeply"));
        }
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(de::Error::custom(format!("duplicate member {k:?}")));
            }
            let v = map.next_value_seed(Seed(self.0 + 1))?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// Parses strict JSON.
pub fn parse(bytes: &[u8]) -> Result<Value, Refusal> {
    if bytes.starts_with(b"\xef\xbb\xbf") {
        return Err(Refusal::new("malformed", "JSON with a byte order mark"));
    }
    let mut d = serde_json::Deserializer::from_slice(bytes);
    let v = <Strict as de::Deserialize>::deserialize(&mut d)
        .map_err(|e| Refusal::new("malformed", format!("JSON: {e}")))?;
    d.end()
        .map_err(|e| Refusal::new("malformed", format!("JSON: {e}")))?;
    Ok(v.0)
}
