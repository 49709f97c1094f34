//! A caret or selection in a document: the one shape the client, the
//! presence roster and the protocol speak of.

use crate::delta::Delta;
use crate::ot::Bias;
use serde::{Deserialize, Serialize};

/// Where a selection starts (`anchor`) and where its caret is (`head`), in
/// characters; a caret alone has both equal. On the wire it is the
/// `anchor` and `head` fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Selection {
    pub anchor: usize,
    pub head: usize,
}

impl Selection {
    /// A caret at `at`.
    pub fn caret(at: usize) -> Selection {
        Selection {
            anchor: at,
            head: at,
        }
    }

    /// The selection moved through `op`.
    #[must_use]
    pub fn transform(self, op: &Delta, bias: Bias) -> Selection {
        Selection {
            anchor: op.transform_position(self.anchor, bias),
            head: op.transform_position(self.head, bias),
        }
    }

    /// The selection with both ends at most `len`.
    #[must_use]
    pub fn clamp(self, len: usize) -> Selection {
        Selection {
            anchor: self.anchor.min(len),
            head: self.head.min(len),
        }
    }
}

/// Serde for an `Option<Selection>` flattened into its object as the two
/// nullable fields `anchor` and `head` (both written, as `null` when the
/// caret is hidden): `#[serde(flatten, with = "relay_domain::selection::fields")]`.
/// A field left out reads as `null`; a selection with only one end known
/// reads as hidden.
pub mod fields {
    use super::Selection;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Fields {
        anchor: Option<usize>,
        head: Option<usize>,
    }

    pub fn serialize<S: Serializer>(
        selection: &Option<Selection>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        Fields {
            anchor: selection.map(|x| x.anchor),
            head: selection.map(|x| x.head),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Selection>, D::Error> {
        let f = Fields::deserialize(d)?;
        Ok(match (f.anchor, f.head) {
            (Some(anchor), Some(head)) => Some(Selection { anchor, head }),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn is_anchor_and_head_on_the_wire() {
        let s = Selection { anchor: 1, head: 3 };
        assert_eq!(
            serde_json::to_value(s).unwrap(),
            json!({"anchor": 1, "head": 3})
        );
        let back: Selection = serde_json::from_value(json!({"anchor": 1, "head": 3})).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn moves_through_an_op_and_clamps() {
        let op = Delta::from_json_str(r#"[{"insert":"ab"}]"#).unwrap();
        let op = op.fit(5).unwrap();
        assert_eq!(
            Selection::caret(0).transform(&op, Bias::After),
            Selection::caret(2)
        );
        assert_eq!(
            Selection::caret(0).transform(&op, Bias::Before),
            Selection::caret(0)
        );
        assert_eq!(
            Selection { anchor: 9, head: 1 }.clamp(4),
            Selection { anchor: 4, head: 1 }
        );
    }
}
