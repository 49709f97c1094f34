//! Sizes as JSON: one writer that counts the bytes serde_json would write,
//! and the byte bounds the size limits are built from.
//!
//! The bounds hold for the shapes Relay writes: a delta is an array of
//! components, a document's content an array of inserts (one per run of
//! formatting).

use serde::Serialize;

/// `[` and `]` around a delta or a document's content.
pub const BRACKETS: usize = 2;

/// Most bytes one character takes in a JSON string: 4 of UTF-8 and
/// [`ESCAPE_EXTRA`] more for a character escaped as `\u00XX`.
pub const MAX_CHAR: usize = 9;

/// Most bytes a character's JSON escape adds to its UTF-8 (`\u00XX` for a
/// one-byte character).
pub const ESCAPE_EXTRA: usize = 5;

/// An unformatted run of content besides its text: `{"insert":""}` and a
/// comma.
pub const RUN: usize = 14;

/// The key that formats a component besides its map: `,"attributes":`.
pub const ATTRIBUTES_KEY: usize = 14;

/// A formatted run of content besides its text and its attributes' map:
/// [`RUN`] plus [`ATTRIBUTES_KEY`].
pub const FORMATTED_RUN: usize = RUN + ATTRIBUTES_KEY;

/// An unformatted component besides its inserted text (the longest,
/// `{"retain":9007199254740991},`, has 28).
pub const PLAIN_COMPONENT: usize = 40;

/// What a default document-size limit allows for formatting beyond its
/// text.
pub const FORMATTING_ALLOWANCE: usize = 64 << 20;

/// The smallest content limit (in bytes) under which any text of `chars`
/// characters fits ([`MAX_CHAR`] bytes a character), with
/// [`FORMATTING_ALLOWANCE`] for formatting.
pub const fn max_document_bytes_for(chars: usize) -> usize {
    chars
        .saturating_mul(MAX_CHAR)
        .saturating_add(FORMATTING_ALLOWANCE)
}

/// Bytes of `value` as JSON, counted up to just past `limit` (so a huge
/// value costs no more than the limit): at most `limit` means it fits.
pub fn len_within<T: Serialize + ?Sized>(value: &T, limit: usize) -> usize {
    let mut counter = Counter { n: 0, limit };
    // The counter stops serde_json with an error once past the limit; the
    // count so far is the answer either way.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.n
}

/// Bytes of `value` as JSON.
pub fn len<T: Serialize + ?Sized>(value: &T) -> usize {
    len_within(value, usize::MAX)
}

/// Whether `value` as JSON takes at most `limit` bytes.
pub fn fits<T: Serialize + ?Sized>(value: &T, limit: usize) -> bool {
    len_within(value, limit) <= limit
}

/// Counts what is written to it, refusing writes once past `limit`.
struct Counter {
    n: usize,
    limit: usize,
}

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.n = self.n.saturating_add(buf.len());
        if self.n > self.limit {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_what_serde_json_writes() {
        let v = json!([{"insert": "h\u{1}é", "attributes": {"bold": true}}, {"retain": 3}]);
        let n = serde_json::to_string(&v).unwrap().len();
        assert_eq!(len(&v), n);
        assert_eq!(len_within(&v, n), n);
        assert!(fits(&v, n));
        assert!(!fits(&v, n - 1));
        assert!(len_within(&v, 5) > 5, "stops just past the limit");
    }

    #[test]
    fn the_named_bounds_are_what_json_takes() {
        assert_eq!(len(&json!([])), BRACKETS);
        assert_eq!(len(&json!({"insert": ""})) + 1, RUN);
        assert_eq!(",\"attributes\":".len(), ATTRIBUTES_KEY);
        assert!(len(&json!({"retain": crate::ids::MAX_WIRE_INT})) < PLAIN_COMPONENT);
        assert!(len(&json!({"delete": crate::ids::MAX_WIRE_INT})) < PLAIN_COMPONENT);
        assert_eq!(len("\u{1}") - 2, 1 + ESCAPE_EXTRA);
        assert_eq!(4 + ESCAPE_EXTRA, MAX_CHAR);
        assert_eq!(max_document_bytes_for(10), 90 + (64 << 20));
        assert_eq!(max_document_bytes_for(usize::MAX), usize::MAX);
    }
}
