//! A JSON object reader that knows where it is. Every section of the config is read through
//! [`Section`], which records the JSON path of each key, coerces DeepSpeed's loose number forms
//! (`1e9` for an integer), collects every problem instead of stopping at the first, and, when the
//! section is finished, reports keys nobody asked for with the nearest valid key.
//!
//! It is not a schema language: each section's reader is plain code that asks for its keys.

use super::Diagnostics;
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::fmt;

/// A value that may be DeepSpeed/Hugging Face's `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Auto<T> {
    Auto,
    Set(T),
}

/// One JSON object being read. Keys read (or declared known) are remembered so that `finish`
/// can report the rest as unknown.
pub struct Section<'a> {
    path: String,
    map: Option<&'a Map<String, Value>>,
    known: BTreeSet<&'static str>,
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A short description of a JSON value for "found ..." messages.
pub fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

impl<'a> Section<'a> {
    /// A section at `path`; `value` of `None` (key absent) reads every key as its default.
    pub fn new(path: &str, value: Option<&'a Value>, diag: &mut Diagnostics) -> Section<'a> {
        let map = match value {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(other) => {
                diag.error(
                    path,
                    format!("expected an object, found {}", describe(other)),
                );
                None
            }
        };
        Section {
            path: path.to_string(),
            map,
            known: BTreeSet::new(),
        }
    }

    pub fn key_path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    pub fn is_present(&self) -> bool {
        self.map.is_some()
    }

    /// Marks keys as valid without reading them (DeepSpeed keys that do not apply to one node).
    pub fn accept(&mut self, keys: &[&'static str]) {
        self.known.extend(keys.iter().copied());
    }

    /// Records that `key` was `"auto"` and took its default: DeepSpeed builds its config models
    /// non-strict and drops every `"auto"` key (deepspeed/runtime/config_utils.py), so the
    /// field keeps DeepSpeed's default; the `zinf` block keeps zinf's.
    fn auto_default(&self, key: &str, shown: impl fmt::Display, diag: &mut Diagnostics) {
        let whose = if self.path == "zinf" || self.path.starts_with("zinf.") {
            "zinf's default"
        } else {
            "DeepSpeed's default; DeepSpeed drops \"auto\" keys"
        };
        diag.resolved(&self.key_path(key), format!("auto -> {shown} ({whose})"));
    }

    /// The raw value of `key` unless it is `"auto"`, in which case the default (shown as
    /// `shown`) is recorded as the resolution and `None` returned.
    fn raw_or_auto(
        &mut self,
        key: &'static str,
        shown: impl fmt::Display,
        diag: &mut Diagnostics,
    ) -> Option<&'a Value> {
        match self.raw(key) {
            Some(v) if is_auto(v) => {
                self.auto_default(key, shown, diag);
                None
            }
            v => v,
        }
    }

    /// The raw value of `key`, marking it known.
    pub fn raw(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.insert(key);
        self.map.and_then(|m| m.get(key)).filter(|v| !v.is_null())
    }

    /// Whether the user wrote `key` at all.
    pub fn has(&self, key: &str) -> bool {
        self.map
            .is_some_and(|m| m.get(key).is_some_and(|v| !v.is_null()))
    }

    /// Reads `key` or, if absent, `alias` (the `stage3_` forms); both present is an error.
    pub fn raw_aliased(
        &mut self,
        key: &'static str,
        alias: &'static str,
        diag: &mut Diagnostics,
    ) -> (Option<&'a Value>, String) {
        let a = self.raw(key);
        let b = self.raw(alias);
        match (a, b) {
            (Some(_), Some(_)) => {
                diag.error(
                    &self.key_path(alias),
                    format!("both `{key}` and its alias `{alias}` are set; keep one"),
                );
                (a, self.key_path(key))
            }
            (Some(v), None) => (Some(v), self.key_path(key)),
            (None, Some(v)) => (Some(v), self.key_path(alias)),
            (None, None) => (None, self.key_path(key)),
        }
    }

    pub fn bool(&mut self, key: &'static str, default: bool, diag: &mut Diagnostics) -> bool {
        let path = self.key_path(key);
        as_bool(self.raw_or_auto(key, default, diag), &path, diag).unwrap_or(default)
    }

    pub fn auto_bool(&mut self, key: &'static str, diag: &mut Diagnostics) -> Option<Auto<bool>> {
        let path = self.key_path(key);
        match self.raw(key) {
            Some(Value::String(s)) if s == "auto" => Some(Auto::Auto),
            v => as_bool(v, &path, diag).map(Auto::Set),
        }
    }

    pub fn u64(&mut self, key: &'static str, default: u64, diag: &mut Diagnostics) -> u64 {
        let path = self.key_path(key);
        as_u64(self.raw_or_auto(key, default, diag), &path, diag).unwrap_or(default)
    }

    /// An integer in `[min, max]`; outside it is an error naming the bounds (and the default
    /// is used so reading can go on and report everything).
    pub fn u64_in(
        &mut self,
        key: &'static str,
        default: u64,
        (min, max): (u64, u64),
        diag: &mut Diagnostics,
    ) -> u64 {
        let v = self.u64(key, default, diag);
        check_range(v, min, max, &self.key_path(key), diag).unwrap_or(default)
    }

    pub fn opt_u64(&mut self, key: &'static str, diag: &mut Diagnostics) -> Option<u64> {
        let path = self.key_path(key);
        as_u64(self.raw_or_auto(key, "unset", diag), &path, diag)
    }

    pub fn auto_u64(&mut self, key: &'static str, diag: &mut Diagnostics) -> Option<Auto<u64>> {
        let path = self.key_path(key);
        auto_u64_at(self.raw(key), &path, diag)
    }

    pub fn f64(&mut self, key: &'static str, default: f64, diag: &mut Diagnostics) -> f64 {
        let path = self.key_path(key);
        as_f64(self.raw_or_auto(key, default, diag), &path, diag).unwrap_or(default)
    }

    pub fn auto_f64(&mut self, key: &'static str, diag: &mut Diagnostics) -> Option<Auto<f64>> {
        let path = self.key_path(key);
        match self.raw(key) {
            Some(Value::String(s)) if s == "auto" => Some(Auto::Auto),
            v => as_f64(v, &path, diag).map(Auto::Set),
        }
    }

    pub fn opt_string(&mut self, key: &'static str, diag: &mut Diagnostics) -> Option<String> {
        let path = self.key_path(key);
        match self.raw_or_auto(key, "unset", diag) {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                diag.error(
                    &path,
                    format!("expected a string, found {}", describe(other)),
                );
                None
            }
        }
    }

    /// A string that must be exactly one of `choices` (DeepSpeed's enums are case-sensitive).
    pub fn choice(
        &mut self,
        key: &'static str,
        choices: &[&'static str],
        default: &'static str,
        diag: &mut Diagnostics,
    ) -> &'static str {
        let path = self.key_path(key);
        if self.raw(key).is_some_and(is_auto) {
            self.auto_default(key, default, diag);
            return default;
        }
        match self.opt_string(key, diag) {
            None => default,
            Some(s) => match choices.iter().find(|c| **c == s) {
                Some(c) => c,
                None => {
                    let hint = match nearest(&s, choices.iter().copied()) {
                        Some(n) => format!("; did you mean {n}?"),
                        None => String::new(),
                    };
                    diag.error(
                        &path,
                        format!("{s:?} is not one of {}{hint}", choices.join(", ")),
                    );
                    default
                }
            },
        }
    }

    /// Hands the section's known keys and the keys nobody read to `diag`, which reports the
    /// unknown ones once every section is known (so a key in the wrong section can be pointed
    /// to the right one: [`Diagnostics::report_unknown_keys`]).
    pub fn finish(self, diag: &mut Diagnostics) {
        let unknown = self.map.map_or_else(Vec::new, |map| {
            map.keys()
                .filter(|k| !self.known.contains(k.as_str()))
                .cloned()
                .collect()
        });
        diag.section_read(&self.path, self.known.into_iter().collect(), unknown);
    }
}

/// Whether a value is DeepSpeed / Hugging Face's `"auto"`.
pub fn is_auto(v: &Value) -> bool {
    v.as_str() == Some("auto")
}

/// `v` if it lies in `[min, max]`, else an error at `path` that names the bounds.
pub fn check_range(v: u64, min: u64, max: u64, path: &str, diag: &mut Diagnostics) -> Option<u64> {
    if (min..=max).contains(&v) {
        return Some(v);
    }
    diag.error(
        path,
        format!("{v} is out of range: must be between {min} and {max}"),
    );
    None
}

/// `f` as a `u64` when it is a whole number in `[0, 2^64)`. 2^64 itself rounds to
/// `u64::MAX as f64`, so the bound is strict: `as u64` would silently saturate anything above.
pub fn whole_u64(f: f64) -> Option<u64> {
    const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
    ((0.0..TWO_POW_64).contains(&f) && f.fract() == 0.0).then_some(f as u64)
}

pub fn as_bool(v: Option<&Value>, path: &str, diag: &mut Diagnostics) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        other => {
            diag.error(
                path,
                format!("expected a boolean, found {}", describe(other)),
            );
            None
        }
    }
}

/// Integers may be written as JSON floats (`1e9`, `5e8`), as DeepSpeed's configs do, as long as
/// the value is integral and non-negative.
pub fn as_u64(v: Option<&Value>, path: &str, diag: &mut Diagnostics) -> Option<u64> {
    let v = v?;
    if let Some(u) = v.as_u64() {
        return Some(u);
    }
    if let Some(u) = v.as_f64().and_then(whole_u64) {
        return Some(u);
    }
    diag.error(
        path,
        format!("expected a non-negative integer, found {}", describe(v)),
    );
    None
}

pub fn as_f64(v: Option<&Value>, path: &str, diag: &mut Diagnostics) -> Option<f64> {
    let v = v?;
    match v.as_f64() {
        Some(f) if f.is_finite() => Some(f),
        _ => {
            diag.error(path, format!("expected a number, found {}", describe(v)));
            None
        }
    }
}

pub fn auto_u64_at(v: Option<&Value>, path: &str, diag: &mut Diagnostics) -> Option<Auto<u64>> {
    match v {
        Some(Value::String(s)) if s == "auto" => Some(Auto::Auto),
        v => as_u64(v, path, diag).map(Auto::Set),
    }
}

/// Byte sizes in the `zinf` block: an integer, or a string like `"512MiB"`, `"2GB"`, `"1.5GiB"`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        _ => return None,
    };
    whole_u64((num * mult).round())
}

/// Levenshtein distance, for "did you mean" suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The candidate closest to `key`, if it is close enough to be a plausible typo (or `key` is a
/// prefix/suffix form such as `prefetch_bucket_size` vs `stage3_prefetch_bucket_size`).
pub fn nearest<'c>(key: &str, candidates: impl Iterator<Item = &'c str>) -> Option<&'c str> {
    let lower = key.to_ascii_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let mut d = edit_distance(&lower, &c.to_ascii_lowercase());
        if c.ends_with(&lower) || lower.ends_with(c) {
            d = d.min(3);
        }
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    let (d, c) = best?;
    let limit = (key.len() / 3).max(2);
    (d <= limit).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_both_unit_families() {
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("2GB"), Some(2_000_000_000));
        assert_eq!(parse_size("1.5GiB"), Some(3 << 29));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("12 parsecs"), None);
    }

    #[test]
    fn nearest_finds_typos_and_not_strangers() {
        let keys = [
            "stage3_param_persistence_threshold",
            "stage3_max_live_parameters",
        ];
        assert_eq!(
            nearest("stage3_param_persitance_threshold", keys.iter().copied()),
            Some("stage3_param_persistence_threshold")
        );
        assert_eq!(nearest("completely_else", keys.iter().copied()), None);
    }
}
