//! What a delta does, in one word: the `operation_type` of the operations
//! table and of the operations metric.

use super::{Component, Delta};

/// The kind of a delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OperationKind {
    /// Only inserts text.
    Insert,
    /// Only deletes.
    Delete,
    /// Only changes attributes (retains with attributes).
    Format,
    /// Several of the above.
    Mixed,
    /// Changes nothing (a bare retain).
    Noop,
}

impl OperationKind {
    pub const ALL: [OperationKind; 5] = [
        OperationKind::Insert,
        OperationKind::Delete,
        OperationKind::Format,
        OperationKind::Mixed,
        OperationKind::Noop,
    ];

    /// The kind of `delta` (the same as [`Delta::kind`]).
    pub fn of(delta: &Delta) -> OperationKind {
        let (mut ins, mut del, mut fmt) = (false, false, false);
        for c in delta.components() {
            match c {
                Component::Insert { .. } => ins = true,
                Component::Delete { .. } => del = true,
                Component::Retain { attributes, .. } => fmt |= !attributes.is_empty(),
            }
        }
        match (ins, del, fmt) {
            (false, false, false) => OperationKind::Noop,
            (true, false, false) => OperationKind::Insert,
            (false, true, false) => OperationKind::Delete,
            (false, false, true) => OperationKind::Format,
            _ => OperationKind::Mixed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Insert => "insert",
            OperationKind::Delete => "delete",
            OperationKind::Format => "format",
            OperationKind::Mixed => "mixed",
            OperationKind::Noop => "noop",
        }
    }
}

impl Delta {
    /// What this delta does: see [`OperationKind`].
    pub fn kind(&self) -> OperationKind {
        OperationKind::of(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_name_what_the_delta_does() {
        let d = |json: &str| Delta::from_json_str(json).unwrap();
        let cases = [
            (r#"[{"insert":"a"}]"#, OperationKind::Insert),
            (r#"[{"retain":2},{"delete":1}]"#, OperationKind::Delete),
            (
                r#"[{"retain":1,"attributes":{"bold":true}}]"#,
                OperationKind::Format,
            ),
            (r#"[{"insert":"a"},{"delete":1}]"#, OperationKind::Mixed),
            (r#"[{"retain":3}]"#, OperationKind::Noop),
        ];
        for (json, want) in cases {
            assert_eq!(d(json).kind(), want, "{json}");
        }
    }
}
