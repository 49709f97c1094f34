//! Deltas: the operations of Relay's text type (PROTOCOL.md "Versions and
//! deltas").
//!
//! A [`Delta`] is a list of components applied left to right over the whole
//! document: `Retain` keeps characters (optionally changing their
//! formatting), `Insert` adds text, `Delete` removes characters. Lengths and
//! positions count Unicode scalar values (Rust `char`s) everywhere, so no
//! operation can split a character.
//!
//! The builder methods normalise as they go - zero lengths are dropped,
//! neighbours of the same kind and formatting merge, and an insert is always
//! placed before an adjacent delete - so two deltas that do the same thing
//! to every document are `==`.
//!
//! Inside Relay a delta spans its whole base document, trailing retain
//! included: [`Delta::base_len`] is a fact of the value. On the wire the
//! trailing plain retain is omitted; [`Delta::from_json`] gives the shortest
//! delta and [`Delta::fit`] extends it to the document it is applied to.
//!
//! Size: about 530 lines of code. The normalising builder, the wire form
//! (`from_json`, serde) and the `Pieces` walker share private helpers
//! (`grown`, `positive`, the component invariants); splitting them across
//! files would make those helpers crate-visible for no reader's gain.
//! `kind.rs` holds what is separable (the operation kind).

mod kind;

pub use kind::OperationKind;

use crate::attributes::Attributes;
use crate::ids::{MAX_LEN, MAX_WIRE_INT};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// One step of a delta.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Component {
    /// Keep `len` characters, applying `attributes` to them (`null` removes).
    Retain { len: usize, attributes: Attributes },
    /// Insert `text` formatted with `attributes`.
    Insert {
        text: String,
        attributes: Attributes,
    },
    /// Remove `len` characters.
    Delete { len: usize },
}

impl Component {
    /// Length in characters (for an insert, of its text).
    pub fn len(&self) -> usize {
        match self {
            Component::Retain { len, .. } | Component::Delete { len } => *len,
            Component::Insert { text, .. } => text.chars().count(),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Component::Retain { len, .. } | Component::Delete { len } => *len == 0,
            Component::Insert { text, .. } => text.is_empty(),
        }
    }
}

/// Why a delta was refused. Each variant carries what a client author needs
/// to find the mistake.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("the delta spans {actual} characters but the document has {expected}")]
    BaseLengthMismatch { expected: usize, actual: usize },
    #[error(
        "cannot compose: the first delta produces {first_target} characters, the second spans {second_base}"
    )]
    ComposeLengthMismatch {
        first_target: usize,
        second_base: usize,
    },
    #[error("cannot transform deltas made on documents of {left} and {right} characters")]
    TransformLengthMismatch { left: usize, right: usize },
    #[error("component {index}: {reason}")]
    MalformedComponent {
        index: usize,
        reason: MalformedReason,
    },
    #[error("a delta must be a JSON array of components")]
    NotAnArray,
}

/// Why one component of a delta (or of a document's content) is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MalformedReason {
    #[error("a component must be an object")]
    NotAnObject,
    #[error("a retain has only `retain` and `attributes`")]
    RetainFields,
    #[error("an insert has only `insert` and `attributes`")]
    InsertFields,
    #[error("a delete has only `delete`")]
    DeleteFields,
    #[error("unknown component: expected retain, insert or delete")]
    UnknownComponent,
    /// A `delete` directly followed by an `insert` (PROTOCOL.md,
    /// "Canonical form").
    #[error(
        "a delete directly followed by an insert is not canonical: where an insert and a delete meet, the insert comes first ([{{\"retain\":2}},{{\"insert\":\"ab\"}},{{\"delete\":3}}])"
    )]
    NotCanonical,
    #[error("`insert` must be a string (embeds are not supported)")]
    InsertNotText,
    #[error("zero-length insert")]
    EmptyInsert,
    #[error("inserted text must not contain U+0000")]
    NulInText,
    #[error("the delta spans more than 2^53 - 1 characters")]
    SpansTooMuch,
    #[error("the delta produces more than 2^53 - 1 characters")]
    ProducesTooMuch,
    #[error("zero length")]
    ZeroLength,
    #[error("length is over 2^53 - 1")]
    LengthOverMax,
    #[error("length must be a positive integer")]
    LengthNotInteger,
    #[error("{0}")]
    Attributes(#[from] crate::attributes::InvalidAttributes),
    #[error("document content holds inserts only")]
    NotContent,
}

/// `total + n`, checked. Lengths that come from outside are at most
/// 2^53 - 1 ([`Delta::from_json`], document limits), so adding a few of them
/// cannot overflow; this turns a caller's bug into a panic instead of the
/// silent wrap of a release build.
fn grown(total: usize, n: usize) -> usize {
    total
        .checked_add(n)
        .expect("delta lengths are bounded by 2^53 - 1 where they enter")
}

/// A normalised sequence of components with the lengths it goes between.
///
/// The components may end short of [`Delta::base_len`]: the rest is an
/// implicit plain retain, the same delta as with the retain written out
/// (`==` says so). The builder writes it; [`Delta::compact`] drops it, so
/// a delta kept in history costs one component less. Code that walks
/// [`Delta::components`] must treat what is left after them as retained.
#[derive(Clone, Debug, Default)]
pub struct Delta {
    ops: Vec<Component>,
    base_len: usize,
    target_len: usize,
}

/// Equal when they do the same to every document: the same components but
/// for a trailing plain retain, and the same lengths.
impl PartialEq for Delta {
    fn eq(&self, other: &Self) -> bool {
        self.base_len == other.base_len
            && self.target_len == other.target_len
            && self.trimmed_components() == other.trimmed_components()
    }
}

impl Eq for Delta {}

impl Delta {
    /// The empty delta (the identity on the empty document).
    pub const fn new() -> Self {
        Delta {
            ops: Vec::new(),
            base_len: 0,
            target_len: 0,
        }
    }

    pub fn with_capacity(n: usize) -> Self {
        Delta {
            ops: Vec::with_capacity(n),
            base_len: 0,
            target_len: 0,
        }
    }

    /// The identity on a document of `len` characters.
    pub fn identity(len: usize) -> Self {
        let mut d = Delta::new();
        d.retain(len);
        d
    }

    /// Length of the document this delta applies to.
    pub fn base_len(&self) -> usize {
        self.base_len
    }

    /// Length of the document it produces.
    pub fn target_len(&self) -> usize {
        self.target_len
    }

    pub fn components(&self) -> &[Component] {
        &self.ops
    }

    /// Whether it changes nothing: only plain retains (or nothing at all).
    pub fn is_noop(&self) -> bool {
        self.ops
            .iter()
            .all(|c| matches!(c, Component::Retain { attributes, .. } if attributes.is_empty()))
    }

    /// Whether any component carries attributes.
    pub fn has_attributes(&self) -> bool {
        self.ops.iter().any(|c| match c {
            Component::Retain { attributes, .. } | Component::Insert { attributes, .. } => {
                !attributes.is_empty()
            }
            Component::Delete { .. } => false,
        })
    }

    /// Whether this delta keeps the wire's bounds, whatever built it: no
    /// U+0000 in text or attributes, no length over 2^53 - 1 (what
    /// [`Delta::from_json`] refuses, and PostgreSQL cannot store).
    pub fn check_storable(&self) -> Result<(), &'static str> {
        if self.base_len > MAX_LEN || self.target_len > MAX_LEN {
            return Err("a length over 2^53 - 1");
        }
        for c in &self.ops {
            let attributes = match c {
                Component::Insert { text, .. } if text.contains('\0') => {
                    return Err("U+0000 in inserted text");
                }
                Component::Insert { attributes, .. } | Component::Retain { attributes, .. } => {
                    attributes
                }
                Component::Delete { .. } => continue,
            };
            if attributes.contains_nul() {
                return Err("U+0000 in an attribute");
            }
        }
        Ok(())
    }

    /// Heap bytes this delta holds: its components and what they own.
    pub fn heap_bytes(&self) -> usize {
        self.ops.capacity() * std::mem::size_of::<Component>()
            + self
                .ops
                .iter()
                .map(|c| match c {
                    Component::Insert { text, attributes } => {
                        text.capacity() + attributes.heap_bytes()
                    }
                    Component::Retain { attributes, .. } => attributes.heap_bytes(),
                    Component::Delete { .. } => 0,
                })
                .sum::<usize>()
    }

    /// Characters inserted by this delta.
    pub fn inserted_chars(&self) -> usize {
        self.ops
            .iter()
            .map(|c| match c {
                Component::Insert { text, .. } => text.chars().count(),
                _ => 0,
            })
            .sum()
    }

    /// Keep `n` characters unchanged.
    pub fn retain(&mut self, n: usize) -> &mut Self {
        self.retain_with(n, Attributes::new())
    }

    /// Keep `n` characters, applying `attributes` to them.
    pub fn retain_with(&mut self, n: usize, attributes: Attributes) -> &mut Self {
        if n == 0 {
            return self;
        }
        self.base_len = grown(self.base_len, n);
        self.target_len = grown(self.target_len, n);
        if let Some(Component::Retain {
            len,
            attributes: last,
        }) = self.ops.last_mut()
            && *last == attributes
        {
            *len = grown(*len, n);
            return self;
        }
        self.ops.push(Component::Retain { len: n, attributes });
        self
    }

    /// Insert plain text.
    pub fn insert(&mut self, text: &str) -> &mut Self {
        self.insert_with(text, Attributes::new())
    }

    /// Insert text with formatting. A `null` value formats nothing, and is
    /// kept as sent, as quill-delta keeps it (dropping it would make the
    /// server's document differ from a quill-delta client's).
    pub fn insert_with(&mut self, text: &str, attributes: Attributes) -> &mut Self {
        if text.is_empty() {
            return self;
        }
        self.target_len = grown(self.target_len, text.chars().count());
        // Insert before delete: [.., Insert?, Delete] + Insert puts the new
        // text before the delete, merging with the insert there if it can.
        let at = match self.ops.last() {
            Some(Component::Delete { .. }) => self.ops.len() - 1,
            _ => self.ops.len(),
        };
        if at > 0
            && let Component::Insert {
                text: prev,
                attributes: prev_attrs,
            } = &mut self.ops[at - 1]
            && *prev_attrs == attributes
        {
            prev.push_str(text);
            return self;
        }
        self.ops.insert(
            at,
            Component::Insert {
                text: text.to_owned(),
                attributes,
            },
        );
        self
    }

    /// Remove `n` characters.
    pub fn delete(&mut self, n: usize) -> &mut Self {
        if n == 0 {
            return self;
        }
        self.base_len = grown(self.base_len, n);
        if let Some(Component::Delete { len }) = self.ops.last_mut() {
            *len = grown(*len, n);
            return self;
        }
        self.ops.push(Component::Delete { len: n });
        self
    }

    /// Append any component through the normalising builder.
    pub fn push(&mut self, component: Component) -> &mut Self {
        match component {
            Component::Retain { len, attributes } => self.retain_with(len, attributes),
            Component::Insert { text, attributes } => self.insert_with(&text, attributes),
            Component::Delete { len } => self.delete(len),
        }
    }

    /// Extends a delta as received (trailing retain possibly omitted) to a
    /// document of `doc_len` characters. A delta that spans more than the
    /// document is refused.
    pub fn fit(mut self, doc_len: usize) -> Result<Delta, DeltaError> {
        match self.base_len.cmp(&doc_len) {
            std::cmp::Ordering::Equal => Ok(self),
            std::cmp::Ordering::Less => {
                self.retain(doc_len - self.base_len);
                Ok(self)
            }
            std::cmp::Ordering::Greater => Err(DeltaError::BaseLengthMismatch {
                expected: doc_len,
                actual: self.base_len,
            }),
        }
    }

    /// Checks that this delta applies to a document of `doc_len` characters.
    pub fn check_base(&self, doc_len: usize) -> Result<(), DeltaError> {
        if self.base_len == doc_len {
            Ok(())
        } else {
            Err(DeltaError::BaseLengthMismatch {
                expected: doc_len,
                actual: self.base_len,
            })
        }
    }

    /// Characters of the base the components span (retains and deletes);
    /// the rest, up to [`Delta::base_len`], is retained implicitly.
    pub fn spanned(&self) -> usize {
        self.ops
            .iter()
            .map(|c| match c {
                Component::Retain { len, .. } | Component::Delete { len } => *len,
                Component::Insert { .. } => 0,
            })
            .sum()
    }

    /// Drops a trailing plain retain (it stays implicit) and frees unused
    /// capacity: the form kept in history.
    pub fn compact(&mut self) {
        if let Some(Component::Retain { attributes, .. }) = self.ops.last()
            && attributes.is_empty()
        {
            self.ops.pop();
        }
        for c in &mut self.ops {
            if let Component::Insert { text, .. } = c {
                text.shrink_to_fit();
            }
        }
        self.ops.shrink_to_fit();
    }

    /// The components without a trailing plain retain (the wire form).
    pub fn trimmed_components(&self) -> &[Component] {
        match self.ops.last() {
            Some(Component::Retain { attributes, .. }) if attributes.is_empty() => {
                &self.ops[..self.ops.len() - 1]
            }
            _ => &self.ops,
        }
    }

    /// Applies the delta to plain text (attributes are ignored). A reference
    /// for tests and tools; documents use [`crate::Document::apply`].
    pub fn apply_to_str(&self, text: &str) -> Result<String, DeltaError> {
        let len = text.chars().count();
        self.check_base(len)?;
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        for c in &self.ops {
            match c {
                Component::Retain { len, .. } => {
                    let at = byte_offset(rest, *len);
                    out.push_str(&rest[..at]);
                    rest = &rest[at..];
                }
                Component::Insert { text, .. } => out.push_str(text),
                Component::Delete { len } => rest = &rest[byte_offset(rest, *len)..],
            }
        }
        // The implicit trailing retain.
        out.push_str(rest);
        Ok(out)
    }

    /// Parses the wire form (PROTOCOL.md). The result spans exactly what its
    /// components span; use [`Delta::fit`] to extend it to a document.
    ///
    /// Refused, naming the component: lengths that are not integers from 1
    /// to 2^53 - 1, a delta spanning or producing more than 2^53 - 1
    /// characters, U+0000 in inserted text, attribute maps beyond the
    /// bounds of [`crate::attributes`], and the non-canonical form - a
    /// `delete` directly followed by an `insert` (PROTOCOL.md "Canonical
    /// form"), which transforms differently from the canonical one, so
    /// reordering it would make the sender diverge.
    pub fn from_json(value: &Value) -> Result<Delta, DeltaError> {
        let items = value.as_array().ok_or(DeltaError::NotAnArray)?;
        let mut delta = Delta::with_capacity(items.len());
        let mut after_delete = false;
        // Totals kept as u64 with checks: each length is at most 2^53 - 1,
        // and so must the totals be.
        let mut base: u64 = 0;
        let mut target: u64 = 0;
        for (index, item) in items.iter().enumerate() {
            let bad = |reason| DeltaError::MalformedComponent { index, reason };
            let grow = |total: &mut u64, n: usize, reason| {
                let n = u64::try_from(n).map_err(|_| bad(reason))?;
                *total = total
                    .checked_add(n)
                    .filter(|&t| t <= MAX_WIRE_INT)
                    .ok_or(bad(reason))?;
                Ok::<(), DeltaError>(())
            };
            let obj = item.as_object().ok_or(bad(MalformedReason::NotAnObject))?;
            let attributes = match obj.get("attributes") {
                None => Attributes::new(),
                Some(v) => Attributes::from_json(v).map_err(|e| bad(e.into()))?,
            };
            let allowed = |n: usize| obj.len() == n + usize::from(obj.contains_key("attributes"));
            if let Some(v) = obj.get("retain") {
                if !allowed(1) {
                    return Err(bad(MalformedReason::RetainFields));
                }
                let n = positive(v).map_err(bad)?;
                grow(&mut base, n, MalformedReason::SpansTooMuch)?;
                grow(&mut target, n, MalformedReason::ProducesTooMuch)?;
                delta.retain_with(n, attributes);
                after_delete = false;
            } else if let Some(v) = obj.get("insert") {
                if !allowed(1) {
                    return Err(bad(MalformedReason::InsertFields));
                }
                if after_delete {
                    return Err(bad(MalformedReason::NotCanonical));
                }
                let text = v.as_str().ok_or(bad(MalformedReason::InsertNotText))?;
                if text.is_empty() {
                    return Err(bad(MalformedReason::EmptyInsert));
                }
                if text.contains('\0') {
                    return Err(bad(MalformedReason::NulInText));
                }
                grow(
                    &mut target,
                    text.chars().count(),
                    MalformedReason::ProducesTooMuch,
                )?;
                delta.insert_with(text, attributes);
            } else if let Some(v) = obj.get("delete") {
                if obj.len() != 1 {
                    return Err(bad(MalformedReason::DeleteFields));
                }
                let n = positive(v).map_err(bad)?;
                grow(&mut base, n, MalformedReason::SpansTooMuch)?;
                delta.delete(n);
                after_delete = true;
            } else {
                return Err(bad(MalformedReason::UnknownComponent));
            }
        }
        Ok(delta)
    }

    /// Parses the wire form from text.
    pub fn from_json_str(text: &str) -> Result<Delta, DeltaError> {
        let value: Value = serde_json::from_str(text).map_err(|_| DeltaError::NotAnArray)?;
        Delta::from_json(&value)
    }
}

/// A length on the wire: an integer from 1 to 2^53 - 1.
fn positive(v: &Value) -> Result<usize, MalformedReason> {
    match v.as_u64() {
        Some(0) => Err(MalformedReason::ZeroLength),
        Some(n) if n > MAX_WIRE_INT => Err(MalformedReason::LengthOverMax),
        Some(n) => usize::try_from(n).map_err(|_| MalformedReason::LengthOverMax),
        None => Err(MalformedReason::LengthNotInteger),
    }
}

/// Byte offset of the `chars`-th character of `s` (or `s.len()`).
pub(crate) fn byte_offset(s: &str, chars: usize) -> usize {
    if chars == 0 {
        return 0;
    }
    s.char_indices().nth(chars).map_or(s.len(), |(i, _)| i)
}

impl Serialize for Component {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (attributes, n) = match self {
            Component::Retain { attributes, .. } | Component::Insert { attributes, .. } => {
                (Some(attributes).filter(|a| !a.is_empty()), 1)
            }
            Component::Delete { .. } => (None, 1),
        };
        let mut map = s.serialize_map(Some(n + usize::from(attributes.is_some())))?;
        match self {
            Component::Retain { len, .. } => map.serialize_entry("retain", len)?,
            Component::Insert { text, .. } => map.serialize_entry("insert", text)?,
            Component::Delete { len } => map.serialize_entry("delete", len)?,
        }
        if let Some(a) = attributes {
            map.serialize_entry("attributes", a)?;
        }
        map.end()
    }
}

/// Serialises the wire form: the trailing plain retain is omitted.
impl Serialize for Delta {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let comps = self.trimmed_components();
        let mut seq = s.serialize_seq(Some(comps.len()))?;
        for c in comps {
            seq.serialize_element(c)?;
        }
        seq.end()
    }
}

/// Deserialises the wire form with [`Delta::from_json`]'s checks.
impl<'de> Deserialize<'de> for Delta {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        Delta::from_json(&value).map_err(serde::de::Error::custom)
    }
}

/// A borrowed slice of one component, as produced by [`Pieces`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Piece<'a> {
    Retain(usize, &'a Attributes),
    Insert(&'a str, &'a Attributes),
    Delete(usize),
}

impl Piece<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Piece::Retain(n, _) | Piece::Delete(n) => *n,
            Piece::Insert(s, _) => s.chars().count(),
        }
    }
}

/// Walks a delta's components, handing out pieces of at most a requested
/// length, so two deltas can be traversed in step (compose, transform).
#[derive(Debug)]
pub(crate) struct Pieces<'a> {
    ops: &'a [Component],
    index: usize,
    /// Characters of `ops[index]` already handed out.
    used: usize,
    /// Bytes of an insert's text already handed out.
    used_bytes: usize,
    /// Length of `ops[index]` in characters (cached: inserts count chars).
    current_len: usize,
    /// The implicit plain retain after the last component (a delta may end
    /// short of its base length; see [`Delta::compact`]).
    tail: usize,
}

/// The attributes of the implicit trailing retain.
static NO_ATTRIBUTES: Attributes = Attributes::new();

impl<'a> Pieces<'a> {
    pub(crate) fn new(delta: &'a Delta) -> Self {
        let mut p = Pieces {
            ops: &delta.ops,
            index: 0,
            used: 0,
            used_bytes: 0,
            current_len: 0,
            tail: delta.base_len - delta.spanned(),
        };
        p.load();
        p
    }

    fn load(&mut self) {
        self.used = 0;
        self.used_bytes = 0;
        self.current_len = match self.ops.get(self.index) {
            Some(c) => c.len(),
            None if self.index == self.ops.len() => self.tail,
            None => 0,
        };
    }

    /// Whether the current piece is the implicit trailing retain.
    fn in_tail(&self) -> bool {
        self.index == self.ops.len() && self.tail > 0
    }

    /// Kind of the next piece, if any: `Some(true)` for an insert.
    pub(crate) fn peek_is_insert(&self) -> Option<bool> {
        match self.ops.get(self.index) {
            Some(c) => Some(matches!(c, Component::Insert { .. })),
            None => self.in_tail().then_some(false),
        }
    }

    pub(crate) fn peek_is_delete(&self) -> bool {
        matches!(self.ops.get(self.index), Some(Component::Delete { .. }))
    }

    /// Remaining length of the current component (0 when exhausted).
    pub(crate) fn peek_len(&self) -> usize {
        self.current_len - self.used
    }

    pub(crate) fn has_next(&self) -> bool {
        self.index < self.ops.len() || self.in_tail()
    }

    /// The next piece, at most `max` characters long.
    pub(crate) fn next(&mut self, max: usize) -> Option<Piece<'a>> {
        let rest = self.current_len - self.used;
        let n = rest.min(max);
        let piece = match self.ops.get(self.index) {
            None if self.in_tail() => Piece::Retain(n, &NO_ATTRIBUTES),
            None => return None,
            Some(Component::Retain { attributes, .. }) => Piece::Retain(n, attributes),
            Some(Component::Delete { .. }) => Piece::Delete(n),
            Some(Component::Insert { text, attributes }) => {
                let tail = &text[self.used_bytes..];
                let end = if n == rest {
                    tail.len()
                } else {
                    byte_offset(tail, n)
                };
                self.used_bytes += end;
                Piece::Insert(&tail[..end], attributes)
            }
        };
        self.used += n;
        if self.used == self.current_len {
            self.index += 1;
            self.load();
        }
        Some(piece)
    }

    /// The whole rest of the current component.
    pub(crate) fn next_whole(&mut self) -> Option<Piece<'a>> {
        self.next(usize::MAX)
    }
}

impl Delta {
    /// Appends a borrowed piece through the normalising builder.
    pub(crate) fn push_piece(&mut self, piece: Piece<'_>) {
        match piece {
            Piece::Retain(n, a) => {
                self.retain_with(n, a.clone());
            }
            Piece::Insert(s, a) => {
                self.insert_with(s, a.clone());
            }
            Piece::Delete(n) => {
                self.delete(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// A refused component's index and reason as the client reads it.
    fn malformed(r: Result<Delta, DeltaError>) -> Option<(usize, String)> {
        match r {
            Err(DeltaError::MalformedComponent { index, reason }) => {
                Some((index, reason.to_string()))
            }
            _ => None,
        }
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn builder_drops_zero_lengths_and_merges_neighbours() {
        let mut d = Delta::new();
        d.retain(0)
            .retain(2)
            .retain(3)
            .insert("")
            .insert("ab")
            .insert("c");
        d.delete(0).delete(1).delete(2);
        assert_eq!(
            d.components(),
            &[
                Component::Retain {
                    len: 5,
                    attributes: Attributes::new()
                },
                Component::Insert {
                    text: "abc".into(),
                    attributes: Attributes::new()
                },
                Component::Delete { len: 3 },
            ]
        );
        assert_eq!((d.base_len(), d.target_len()), (8, 8));
    }

    #[test]
    fn insert_goes_before_an_adjacent_delete() {
        let mut a = Delta::new();
        a.retain(1).delete(2).insert("x");
        let mut b = Delta::new();
        b.retain(1).insert("x").delete(2);
        assert_eq!(a, b);
        let mut c = Delta::new();
        c.insert("a").delete(1).insert("b").delete(1);
        let mut d = Delta::new();
        d.insert("ab").delete(2);
        assert_eq!(c, d);
    }

    #[test]
    fn differently_formatted_neighbours_stay_apart() {
        let bold = Attributes::new().with("bold", true);
        let mut d = Delta::new();
        d.retain(2).retain_with(2, bold.clone()).insert("a");
        d.insert_with("b", bold);
        assert_eq!(d.components().len(), 4);
    }

    #[test]
    fn wire_form_round_trips_and_omits_the_trailing_retain() {
        let wire = json!([
            {"retain": 2},
            {"insert": "hé🙂", "attributes": {"bold": true}},
            {"delete": 1},
            {"retain": 3, "attributes": {"italic": null}}
        ]);
        let d = Delta::from_json(&wire).unwrap();
        assert_eq!(d.base_len(), 6);
        assert_eq!(d.target_len(), 8);
        assert_eq!(serde_json::to_value(&d).unwrap(), wire);
        let fitted = d.fit(10).unwrap();
        assert_eq!(fitted.base_len(), 10);
        assert_eq!(serde_json::to_value(&fitted).unwrap(), wire);
        let back: Delta = serde_json::from_value(serde_json::to_value(&fitted).unwrap()).unwrap();
        assert_eq!(back.fit(10).unwrap(), fitted);
    }

    #[test]
    fn fit_refuses_a_delta_longer_than_the_document() {
        let d = Delta::from_json(&json!([{"retain": 5}, {"delete": 2}])).unwrap();
        assert_eq!(
            d.fit(6),
            Err(DeltaError::BaseLengthMismatch {
                expected: 6,
                actual: 7
            })
        );
    }

    #[test]
    fn malformed_components_are_named_by_index() {
        let cases = [
            (json!([{"retain": 0}]), 0, "zero length"),
            (
                json!([{"retain": 1}, {"insert": ""}]),
                1,
                "zero-length insert",
            ),
            (
                json!([{"retain": -1}]),
                0,
                "length must be a positive integer",
            ),
            (
                json!([{"retain": 1.5}]),
                0,
                "length must be a positive integer",
            ),
            (
                json!([{"insert": 3}]),
                0,
                "`insert` must be a string (embeds are not supported)",
            ),
            (
                json!([{"insert": {"image": "https://example.com/a.png"}}]),
                0,
                "`insert` must be a string (embeds are not supported)",
            ),
            (
                json!([{"bogus": 3}]),
                0,
                "unknown component: expected retain, insert or delete",
            ),
            (
                json!([{"delete": 1, "attributes": {}}]),
                0,
                "a delete has only `delete`",
            ),
            (
                json!([{"retain": 1, "insert": "x"}]),
                0,
                "a retain has only `retain` and `attributes`",
            ),
            (
                json!([{"insert": "x", "attributes": 1}]),
                0,
                "attributes must be an object",
            ),
            (json!(["x"]), 0, "a component must be an object"),
        ];
        for (wire, index, reason) in cases {
            assert_eq!(
                malformed(Delta::from_json(&wire)),
                Some((index, reason.to_string())),
                "{wire}"
            );
        }
        assert_eq!(Delta::from_json(&json!({})), Err(DeltaError::NotAnArray));
    }

    #[test]
    fn a_delete_directly_followed_by_an_insert_is_refused_as_not_canonical() {
        let wire = json!([{"retain": 2}, {"delete": 3}, {"insert": "ab"}]);
        assert_eq!(
            Delta::from_json(&wire),
            Err(DeltaError::MalformedComponent {
                index: 2,
                reason: MalformedReason::NotCanonical
            })
        );
        assert!(
            MalformedReason::NotCanonical
                .to_string()
                .contains(r#"[{"retain":2},{"insert":"ab"},{"delete":3}]"#)
        );
        let canonical = json!([{"retain": 2}, {"insert": "ab"}, {"delete": 3}]);
        assert!(Delta::from_json(&canonical).is_ok());
        // A retain in between makes them different positions: fine.
        let apart = json!([{"delete": 1}, {"retain": 1}, {"insert": "x"}]);
        assert!(Delta::from_json(&apart).is_ok());
    }

    #[test]
    fn lengths_and_their_sums_stop_at_two_to_the_fifty_three_minus_one() {
        let max = MAX_WIRE_INT;
        assert!(Delta::from_json(&json!([{ "retain": max }])).is_ok());
        for (wire, index, reason) in [
            (json!([{ "retain": max + 1 }]), 0, "length is over 2^53 - 1"),
            (
                json!([{ "delete": u64::MAX }]),
                0,
                "length is over 2^53 - 1",
            ),
            (
                json!([{ "delete": u64::MAX }, {"retain": 6}]),
                0,
                "length is over 2^53 - 1",
            ),
            (
                json!([{ "retain": max }, {"retain": 1}]),
                1,
                "the delta spans more than 2^53 - 1 characters",
            ),
            (
                json!([{ "delete": max }, {"retain": 2, "attributes": {"b": true}}]),
                1,
                "the delta spans more than 2^53 - 1 characters",
            ),
            (
                json!([{ "retain": max }, {"insert": "x"}]),
                1,
                "the delta produces more than 2^53 - 1 characters",
            ),
            (
                json!([{ "retain": -1 }]),
                0,
                "length must be a positive integer",
            ),
            (
                json!([{ "retain": 1e300 }]),
                0,
                "length must be a positive integer",
            ),
        ] {
            assert_eq!(
                malformed(Delta::from_json(&wire)),
                Some((index, reason.to_string())),
                "{wire}"
            );
        }
    }

    #[test]
    fn nul_in_text_or_attributes_is_refused() {
        assert_eq!(
            Delta::from_json(&json!([{"insert": "a\u{0}b"}])),
            Err(DeltaError::MalformedComponent {
                index: 0,
                reason: MalformedReason::NulInText
            })
        );
        assert!(Delta::from_json(&json!([{"insert": "a", "attributes": {"c": "\u{0}"}}])).is_err());
        assert!(
            Delta::from_json(&json!([{"retain": 1, "attributes": {"c": ["x\u{0}"]}}])).is_err()
        );
    }

    #[test]
    fn attribute_numbers_survive_their_own_wire_form() {
        // Found by fuzzing: without serde_json's `float_roundtrip` this
        // literal parsed one ULP off and read back differently.
        let text = r#"[{"retain":1,"attributes":{"a":992546724145372404518}}]"#;
        let d = Delta::from_json_str(text).unwrap();
        let back = Delta::from_json_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn apply_to_str_counts_characters_not_bytes() {
        let mut d = Delta::new();
        d.retain(1).delete(1).insert("é").retain(1);
        assert_eq!(d.apply_to_str("a🙂b").unwrap(), "aéb");
        assert!(d.apply_to_str("ab").is_err());
    }

    #[test]
    fn pieces_split_inserts_on_character_boundaries() {
        let mut d = Delta::new();
        d.insert("a🙂é").retain(2);
        let mut p = Pieces::new(&d);
        assert!(matches!(p.next(2), Some(Piece::Insert("a🙂", _))));
        assert!(matches!(p.next(5), Some(Piece::Insert("é", _))));
        assert!(matches!(p.next(1), Some(Piece::Retain(1, _))));
        assert!(matches!(p.next_whole(), Some(Piece::Retain(1, _))));
        assert!(p.next(1).is_none());
    }
}
