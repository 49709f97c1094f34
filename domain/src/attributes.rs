//! Formatting attributes carried by `retain` and `insert` components.
//!
//! An attribute map goes from a name to any JSON value. On a `retain`, a
//! value sets that attribute on the retained characters and `null` removes
//! it; on an `insert` the map is the formatting of the new text, where `null`
//! means nothing and is dropped.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// A map of formatting attributes. The empty map is "no formatting" and costs
/// no allocation, so unformatted text pays nothing for this feature.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Attributes(BTreeMap<String, Value>);

impl Attributes {
    /// No attributes.
    pub const fn new() -> Self {
        Attributes(BTreeMap::new())
    }

    /// This map with `name` set to `value` (a builder for tests and callers).
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.0.insert(name.into(), value.into());
        self
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.0.iter()
    }

    /// Whether any value is `null` (a removal, meaningful only on a retain).
    pub fn has_nulls(&self) -> bool {
        self.0.values().any(Value::is_null)
    }

    /// The same map without its `null` values.
    #[must_use]
    pub fn without_nulls(mut self) -> Self {
        if self.has_nulls() {
            self.0.retain(|_, v| !v.is_null());
        }
        self
    }

    /// `self` followed by `later`: `later`'s values win. With `keep_null` a
    /// `null` in `later` stays (the result is still a retain's change set);
    /// without it the key is removed (the result is formatting of text).
    #[must_use]
    pub fn compose(&self, later: &Attributes, keep_null: bool) -> Attributes {
        if later.is_empty() {
            return self.clone();
        }
        let mut out = self.0.clone();
        for (k, v) in &later.0 {
            if v.is_null() && !keep_null {
                out.remove(k);
            } else {
                out.insert(k.clone(), v.clone());
            }
        }
        Attributes(out)
    }

    /// `self` (a retain's change set) made to apply after `concurrent`, which
    /// changed the same characters. When `concurrent_wins`, the keys both
    /// touched are dropped from `self` so `concurrent`'s values stay.
    #[must_use]
    pub fn transform(&self, concurrent: &Attributes, concurrent_wins: bool) -> Attributes {
        if !concurrent_wins || concurrent.is_empty() || self.is_empty() {
            return self.clone();
        }
        Attributes(
            self.0
                .iter()
                .filter(|(k, _)| !concurrent.0.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    /// The change set that undoes `self` on characters whose formatting was
    /// `base` before `self` applied.
    #[must_use]
    pub fn invert(&self, base: &Attributes) -> Attributes {
        let mut out = BTreeMap::new();
        for (k, v) in &self.0 {
            let old = base.0.get(k);
            match (v.is_null(), old) {
                // Removing something that was not there changed nothing.
                (true, None) => {}
                (_, Some(o)) if o == v => {}
                (_, Some(o)) => {
                    out.insert(k.clone(), o.clone());
                }
                (false, None) => {
                    out.insert(k.clone(), Value::Null);
                }
            }
        }
        Attributes(out)
    }

    /// Parses a JSON object; anything else is refused with a description.
    pub(crate) fn from_json(value: &Value) -> Result<Attributes, &'static str> {
        match value {
            Value::Object(map) => Ok(Attributes(
                map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            )),
            _ => Err("attributes must be an object"),
        }
    }
}

impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for Attributes {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        Attributes(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
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
}
