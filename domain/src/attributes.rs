//! Formatting attributes carried by `retain` and `insert` components.
//!
//! An attribute map goes from a name to any JSON value. On a `retain`, a
//! value sets that attribute on the retained characters and `null` removes
//! it; on an `insert` the map is the formatting of the new text, where a
//! `null` formats nothing (and is kept, as quill-delta keeps it). Compose,
//! transform and invert follow quill-delta's `AttributeMap`.
//!
//! Maps are immutable and shared: cloning one - as every formatting run,
//! history entry and transformed delta does - copies a pointer, and a
//! composed map shares the values of the maps it came from. Memory is
//! therefore proportional to the distinct content clients sent, not to how
//! many characters or runs a map ends up covering.
//!
//! Bounds (PROTOCOL.md "Bounds"), enforced by [`Attributes::from_json`]: at
//! most [`MAX_KEYS`] names of 1 to [`MAX_KEY_CHARS`] characters, each value
//! at most [`MAX_VALUE_BYTES`] bytes as JSON, and no U+0000 anywhere (a
//! PostgreSQL `jsonb` cannot hold it).

use crate::json_size;
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Most names in one attribute map.
pub const MAX_KEYS: usize = 32;
/// Longest attribute name, in characters.
pub const MAX_KEY_CHARS: usize = 64;
/// Largest attribute value, serialised as JSON, in bytes.
pub const MAX_VALUE_BYTES: usize = 4096;

type Map = BTreeMap<Arc<str>, Arc<Value>>;

/// A map of formatting attributes. The empty map is "no formatting" and costs
/// no allocation, so unformatted text pays nothing for this feature.
#[derive(Clone, Debug, Default)]
pub struct Attributes(Option<Arc<Map>>);

impl PartialEq for Attributes {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        }
    }
}

impl Eq for Attributes {}

/// Why an `attributes` object is refused (PROTOCOL.md, "Bounds").
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAttributes {
    #[error("attributes must be an object")]
    NotAnObject,
    #[error("attributes: at most 32 names")]
    TooManyNames,
    #[error("attribute names are 1 to 64 characters")]
    NameLength,
    #[error("attribute names must not contain U+0000")]
    NulInName,
    #[error("attribute values must not contain U+0000")]
    NulInValue,
    #[error("an attribute value is at most 4096 bytes as JSON")]
    ValueTooLarge,
}

impl Attributes {
    /// No attributes.
    pub const fn new() -> Self {
        Attributes(None)
    }

    fn from_map(map: Map) -> Self {
        if map.is_empty() {
            Attributes(None)
        } else {
            Attributes(Some(Arc::new(map)))
        }
    }

    fn map(&self) -> Option<&Map> {
        self.0.as_deref()
    }

    /// This map with `name` set to `value` (a builder for tests and callers;
    /// it does not check the bounds - [`Attributes::from_json`] does).
    #[must_use]
    pub fn with(self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        let mut map = self.map().cloned().unwrap_or_default();
        map.insert(name.into().into(), Arc::new(value.into()));
        Attributes::from_map(map)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub fn len(&self) -> usize {
        self.map().map_or(0, BTreeMap::len)
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.map()?.get(name).map(|v| &**v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.map()
            .into_iter()
            .flat_map(|m| m.iter().map(|(k, v)| (&**k, &**v)))
    }

    /// Whether any value is `null` (a removal, meaningful only on a retain).
    pub fn has_nulls(&self) -> bool {
        self.iter().any(|(_, v)| v.is_null())
    }

    /// `self` followed by `later`: `later`'s values win. With `keep_null` a
    /// `null` in `later` stays (the result is still a retain's change set);
    /// without it the key is removed (the result is formatting of text).
    #[must_use]
    pub fn compose(&self, later: &Attributes, keep_null: bool) -> Attributes {
        let Some(changes) = later.map() else {
            return self.clone();
        };
        if self.is_empty() && (keep_null || !later.has_nulls()) {
            return later.clone();
        }
        let mut out = self.map().cloned().unwrap_or_default();
        for (k, v) in changes {
            if v.is_null() && !keep_null {
                out.remove(k);
            } else {
                out.insert(k.clone(), v.clone());
            }
        }
        Attributes::from_map(out)
    }

    /// `self` (a retain's change set) made to apply after `concurrent`, which
    /// changed the same characters. When `concurrent_wins`, the keys both
    /// touched are dropped from `self` so `concurrent`'s values stay.
    #[must_use]
    pub fn transform(&self, concurrent: &Attributes, concurrent_wins: bool) -> Attributes {
        let (Some(mine), Some(theirs)) = (self.map(), concurrent.map()) else {
            return self.clone();
        };
        if !concurrent_wins || !mine.keys().any(|k| theirs.contains_key(k)) {
            return self.clone();
        }
        Attributes::from_map(
            mine.iter()
                .filter(|(k, _)| !theirs.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    /// The change set that undoes `self` on characters whose formatting was
    /// `base` before `self` applied.
    #[must_use]
    pub fn invert(&self, base: &Attributes) -> Attributes {
        let mut out = Map::new();
        let old_map = base.map();
        for (k, v) in self.map().into_iter().flatten() {
            let old = old_map.and_then(|m| m.get(k));
            match (v.is_null(), old) {
                // Removing something that was not there changed nothing.
                (true, None) => {}
                (_, Some(o)) if o == v => {}
                (_, Some(o)) => {
                    out.insert(k.clone(), o.clone());
                }
                (false, None) => {
                    out.insert(k.clone(), Arc::new(Value::Null));
                }
            }
        }
        Attributes::from_map(out)
    }

    /// Whether a name or a value holds U+0000 (which [`Attributes::from_json`]
    /// refuses; maps built otherwise may).
    pub fn contains_nul(&self) -> bool {
        self.iter().any(|(k, v)| k.contains('\0') || has_nul(v))
    }

    /// Bytes of this map as JSON (`{}` for none).
    pub fn json_len(&self) -> usize {
        json_size::len(self)
    }

    /// Identifies the shared map (0 for none): equal keys mean the same
    /// allocation, so a result computed from one can be reused.
    pub(crate) fn identity(&self) -> usize {
        self.0.as_ref().map_or(0, |m| Arc::as_ptr(m) as usize)
    }

    /// A rough count of the heap bytes this map holds, for memory budgets.
    /// Shared maps are counted in full by each holder: an upper bound.
    pub fn heap_bytes(&self) -> usize {
        self.iter()
            .map(|(k, v)| 48 + k.len() + value_bytes(v))
            .sum()
    }

    /// Parses a JSON object within the bounds of the module documentation;
    /// anything else is refused with a description.
    pub(crate) fn from_json(value: &Value) -> Result<Attributes, InvalidAttributes> {
        let Value::Object(map) = value else {
            return Err(InvalidAttributes::NotAnObject);
        };
        if map.len() > MAX_KEYS {
            return Err(InvalidAttributes::TooManyNames);
        }
        let mut out = Map::new();
        for (k, v) in map {
            let n = k.chars().count();
            if n == 0 || n > MAX_KEY_CHARS {
                return Err(InvalidAttributes::NameLength);
            }
            if k.contains('\0') {
                return Err(InvalidAttributes::NulInName);
            }
            if has_nul(v) {
                return Err(InvalidAttributes::NulInValue);
            }
            if !json_size::fits(v, MAX_VALUE_BYTES) {
                return Err(InvalidAttributes::ValueTooLarge);
            }
            out.insert(k.as_str().into(), Arc::new(v.clone()));
        }
        Ok(Attributes::from_map(out))
    }
}

/// Whether any string in `v` (or any object key) holds U+0000.
fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Heap bytes of a JSON value, roughly.
fn value_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(|i| 32 + value_bytes(i)).sum(),
        Value::Object(map) => map.iter().map(|(k, v)| 64 + k.len() + value_bytes(v)).sum(),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

impl Serialize for Attributes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for Attributes {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        Attributes::from_map(
            iter.into_iter()
                .map(|(k, v)| (k.into().into(), Arc::new(v.into())))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn a(v: Value) -> Attributes {
        Attributes::from_json(&v).unwrap()
    }

    #[test]
    fn compose_keeps_nulls_only_when_asked() {
        let base = a(json!({"bold": true, "color": "red"}));
        let change = a(json!({"bold": null, "italic": true}));
        assert_eq!(
            base.compose(&change, true),
            a(json!({"bold": null, "color": "red", "italic": true}))
        );
        assert_eq!(
            base.compose(&change, false),
            a(json!({"color": "red", "italic": true}))
        );
        assert_eq!(
            Attributes::new().compose(&a(json!({"bold": null})), false),
            Attributes::new()
        );
    }

    #[test]
    fn transform_drops_the_keys_the_winner_set() {
        let mine = a(json!({"bold": true, "italic": true}));
        let theirs = a(json!({"bold": false}));
        assert_eq!(mine.transform(&theirs, true), a(json!({"italic": true})));
        assert_eq!(mine.transform(&theirs, false), mine);
    }

    #[test]
    fn invert_restores_the_previous_values() {
        let base = a(json!({"bold": true, "color": "red"}));
        let change = a(json!({"bold": null, "color": "blue", "italic": true, "size": null}));
        let inverse = change.invert(&base);
        assert_eq!(
            inverse,
            a(json!({"bold": true, "color": "red", "italic": null}))
        );
        let after = base.compose(&change, false);
        assert_eq!(after.compose(&inverse, false), base);
    }

    #[test]
    fn attributes_must_be_an_object() {
        assert!(Attributes::from_json(&json!([1])).is_err());
        assert!(Attributes::from_json(&json!("bold")).is_err());
    }

    #[test]
    fn attribute_maps_are_bounded_as_the_protocol_says() {
        let many: serde_json::Map<String, Value> =
            (0..33).map(|i| (format!("k{i}"), json!(true))).collect();
        assert_eq!(
            Attributes::from_json(&Value::Object(many.clone())),
            Err(InvalidAttributes::TooManyNames)
        );
        let ok: serde_json::Map<String, Value> = many.into_iter().take(32).collect();
        assert_eq!(Attributes::from_json(&Value::Object(ok)).unwrap().len(), 32);
        assert!(Attributes::from_json(&json!({"": 1})).is_err());
        assert!(Attributes::from_json(&json!({ "k".repeat(64): 1 })).is_ok());
        assert!(Attributes::from_json(&json!({ "k".repeat(65): 1 })).is_err());
        // 4,096 bytes of JSON: a string of 4,094 characters plus its quotes.
        assert!(Attributes::from_json(&json!({"v": "x".repeat(4094)})).is_ok());
        assert_eq!(
            Attributes::from_json(&json!({"v": "x".repeat(4095)})),
            Err(InvalidAttributes::ValueTooLarge)
        );
        assert_eq!(
            Attributes::from_json(&json!({"v": {"deep": ["a\u{0}b"]}})),
            Err(InvalidAttributes::NulInValue)
        );
        assert!(Attributes::from_json(&json!({"v": {"a\u{0}": 1}})).is_err());
        assert!(Attributes::from_json(&json!({"a\u{0}": 1})).is_err());
    }

    #[test]
    fn composed_maps_share_their_values() {
        let big = a(json!({"v": "x".repeat(4000)}));
        let change = a(json!({"bold": true}));
        let composed = big.compose(&change, false);
        let (Some(from), Some(into)) = (big.map(), composed.map()) else {
            panic!("both hold values")
        };
        assert!(Arc::ptr_eq(&from["v"], &into["v"]), "the value is shared");
    }
}
