//! Checks shared by the domain's tests and the fuzz targets (feature
//! `testing`; never in the server's build).

use crate::{Component, Delta};

/// Asserts the normal form every delta the domain hands out has: no empty
/// component, neighbours of the same kind and formatting merged, never a
/// delete directly before an insert, and lengths that add up. `what` names
/// the delta in the failure.
pub fn assert_normal(d: &Delta, what: &str) {
    let ops = d.components();
    let mut spanned = 0usize;
    let mut target = 0usize;
    for (i, c) in ops.iter().enumerate() {
        assert!(!c.is_empty(), "{what}: empty component {i} in {ops:?}");
        match c {
            Component::Retain { len, .. } => {
                spanned += len;
                target += len;
            }
            Component::Insert { text, .. } => {
                target += text.chars().count();
            }
            Component::Delete { len } => spanned += len,
        }
        if i > 0 {
            let merged = match (&ops[i - 1], c) {
                (
                    Component::Retain { attributes: a, .. },
                    Component::Retain { attributes: b, .. },
                )
                | (
                    Component::Insert { attributes: a, .. },
                    Component::Insert { attributes: b, .. },
                ) => a == b,
                (Component::Delete { .. }, Component::Delete { .. }) => true,
                (Component::Delete { .. }, Component::Insert { .. }) => {
                    panic!("{what}: delete directly followed by an insert: {ops:?}")
                }
                _ => false,
            };
            assert!(
                !merged,
                "{what}: neighbours {} and {i} not merged: {ops:?}",
                i - 1
            );
        }
    }
    assert_eq!(spanned, d.spanned(), "{what}: spanned");
    assert!(spanned <= d.base_len(), "{what}: spans past its base");
    let tail = d.base_len() - spanned;
    assert_eq!(target + tail, d.target_len(), "{what}: target length");
}
