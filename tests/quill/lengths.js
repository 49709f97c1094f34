// Relay counts lengths in Unicode code points; quill-delta (like every
// JavaScript string) in UTF-16 code units. A client converts at the edge,
// walking the text the delta applies to. Only characters outside the Basic
// Multilingual Plane (emoji, ...) differ: they are 1 code point, 2 units.
'use strict';
const Delta = require('quill-delta');

// The plain text of a document (a delta of string inserts).
function textOf(doc) {
  return doc.ops.map((op) => op.insert).join('');
}

// Rewrites the retain and delete lengths of `ops`, walking `text` (what
// they apply to) from the start: `step(text, at, n)` returns how far n
// lengths of the source unit reach, in [source, target] units.
function convert(ops, text, step) {
  let at = 0;
  return new Delta(
    ops.map((op) => {
      const n = op.retain !== undefined ? op.retain : op.delete;
      if (n === undefined) return op;
      const [source, target] = step(text, at, n);
      at += source;
      return op.retain !== undefined ? { ...op, retain: target } : { delete: target };
    }),
  );
}

// From Relay (code points) to quill-delta (UTF-16 units), for a delta that
// applies to `text`.
function toUtf16(delta, text) {
  return convert(delta.ops || delta, text, (t, at, points) => {
    let units = 0;
    for (let i = 0; i < points; i++) {
      units += t.codePointAt(at + units) > 0xffff ? 2 : 1;
    }
    return [units, units];
  });
}

// From quill-delta (UTF-16 units) to Relay (code points).
function toCodePoints(delta, text) {
  return convert(delta.ops || delta, text, (t, at, units) => {
    return [units, [...t.slice(at, at + units)].length];
  });
}

module.exports = { Delta, textOf, toUtf16, toCodePoints };
