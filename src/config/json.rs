//! Config bytes to a JSON value, stricter than `serde_json::from_str` where DeepSpeed is and
//! looser where editors are: a UTF-8 byte-order mark (Windows editors write one) is skipped,
//! invalid UTF-8 is reported with its byte offset, and a key written twice in one object is an
//! error naming its JSON path (Python's `json` keeps the last silently, but DeepSpeed's config
//! loader passes `object_pairs_hook=dict_raise_error_on_duplicate_keys`,
//! deepspeed/runtime/config_utils.py).
//!
//! It only parses; what the keys mean is `reader.rs` and the section readers' business.

use super::reader::join;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::fmt;

/// Why config bytes are not a JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonProblem {
    /// Not UTF-8: the byte offset of the first invalid sequence.
    Utf8 { byte: usize },
    /// Not JSON: serde_json's line, column and message.
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// Well-formed JSON with keys written twice: the JSON path of each repeat.
    Duplicates(Vec<String>),
}

/// Parses config bytes: BOM skipped, UTF-8 checked, duplicate keys refused.
pub fn parse(bytes: &[u8]) -> Result<Value, JsonProblem> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| JsonProblem::Utf8 {
        byte: e.valid_up_to(),
    })?;
    let dups = RefCell::new(Vec::new());
    let mut de = serde_json::Deserializer::from_str(text);
    let seed = Checked {
        path: String::new(),
        dups: &dups,
    };
    let syntax = |e: serde_json::Error| JsonProblem::Syntax {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    };
    let value = seed.deserialize(&mut de).map_err(syntax)?;
    de.end().map_err(syntax)?;
    let dups = dups.into_inner();
    if dups.is_empty() {
        Ok(value)
    } else {
        Err(JsonProblem::Duplicates(dups))
    }
}

/// A value being read at `path`; repeats are pushed to `dups`.
struct Checked<'d> {
    path: String,
    dups: &'d RefCell<Vec<String>>,
}

impl<'de> DeserializeSeed<'de> for Checked<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Checked<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
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
        let mut out = Vec::new();
        loop {
            let seed = Checked {
                path: format!("{}[{}]", self.path, out.len()),
                dups: self.dups,
            };
            match seq.next_element_seed(seed)? {
                Some(v) => out.push(v),
                None => return Ok(Value::Array(out)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = join(&self.path, &key);
            let seed = Checked {
                path: path.clone(),
                dups: self.dups,
            };
            let value = map.next_value_seed(seed)?;
            if out.insert(key, value).is_some() {
                self.dups.borrow_mut().push(path);
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_found_at_any_depth_and_a_bom_is_skipped() {
        let text = br#"{"a": 1, "z": {"b": [{"c": 1, "c": 2}], "b": 3}, "a": 2}"#;
        assert_eq!(
            parse(text),
            Err(JsonProblem::Duplicates(vec![
                "z.b[0].c".into(),
                "z.b".into(),
                "a".into()
            ]))
        );
        let bom = b"\xEF\xBB\xBF{\"x\": 1e9}";
        assert_eq!(parse(bom).expect("valid")["x"], 1e9);
        assert_eq!(
            parse(b"{\"x\": \"\xFF\"}"),
            Err(JsonProblem::Utf8 { byte: 7 })
        );
    }
}
