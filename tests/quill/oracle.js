// quill-delta as the oracle of Relay's delta tests: reads one case per
// line on stdin (JSON, lengths in code points), answers one line each with
// what quill-delta computes (lengths converted back to code points).
//
// A case: {"doc": [inserts], "a": delta on doc, "b": delta on doc,
//          "c": delta on doc.compose(a)}.
// The answer: {"applied": doc.compose(a), "composed": a.compose(c),
//   "a_over_b_first": a transformed over b with b first - b.transform(a, true),
//   "a_over_b_second": b.transform(a, false), and the same for b over a}.
'use strict';
const readline = require('readline');
const { Delta, textOf, toUtf16, toCodePoints } = require('./lengths');

const rl = readline.createInterface({ input: process.stdin, terminal: false });
rl.on('line', (line) => {
  if (!line.trim()) return;
  const c = JSON.parse(line);
  const doc = new Delta(c.doc);
  const text = textOf(doc);
  const a = toUtf16(c.a, text);
  const b = toUtf16(c.b, text);
  const applied = doc.compose(a);
  const appliedText = textOf(applied);
  const cc = toUtf16(c.c, appliedText);
  const composed = a.compose(cc);
  const docAfterB = textOf(doc.compose(b));
  // a transformed to apply after b lives on doc.compose(b); b after a on
  // doc.compose(a).
  const out = {
    applied: applied.ops,
    composed: toCodePoints(composed, text).ops,
    a_over_b_first: toCodePoints(b.transform(a, true), docAfterB).ops,
    a_over_b_second: toCodePoints(b.transform(a, false), docAfterB).ops,
    b_over_a_first: toCodePoints(a.transform(b, true), appliedText).ops,
    b_over_a_second: toCodePoints(a.transform(b, false), appliedText).ops,
  };
  process.stdout.write(JSON.stringify(out) + '\n');
});
