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

/// `(anchor, head)`, as the app's room code still carries it.
impl From<(usize, usize)> for Selection {
    fn from((anchor, head): (usize, usize)) -> Selection {
        Selection { anchor, head }
    }
}

impl From<Selection> for (usize, usize) {
    fn from(s: Selection) -> (usize, usize) {
        (s.anchor, s.head)
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
        assert_eq!(Selection::from((1, 3)), s);
        assert_eq!(<(usize, usize)>::from(s), (1, 3));
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
