// quill-delta clients driving a running Relay: each keeps one submit in
// flight, composes later edits into a buffer, transforms incoming ops with
// quill-delta (`s.transform(pending, true)` / `pending.transform(s, false)`
// for an op `s` committed first) and converts lengths at the edge. When
// every client is done and has caught up, a late joiner reads the document;
// every document is printed (one JSON line) for the test to compare.
//
//   node clients.js '{"url": "ws://...", "tokens": ["..."], "edits": 150, "seed": 1}'
'use strict';
const WebSocket = require('ws');
const { Delta, textOf, toUtf16, toCodePoints } = require('./lengths');

const config = JSON.parse(process.argv[2]);
const EDITS = config.edits;

// A small seeded generator (mulberry32), so a failing seed can be replayed.
function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const PIECES = ['a', 'b', ' ', 'é', '中', '🙂', '𝄞', 'z\n'];
const FORMATS = [
  { bold: true },
  { bold: null },
  { italic: true },
  { italic: null },
  { color: 'red' },
  { color: '#00f' },
  { color: null },
  { bold: true, color: 'green' },
];

function fail(why) {
  process.stderr.write(`quill clients: ${why}\n`);
  process.exit(1);
}

// Code point boundaries of `text`, as UTF-16 offsets.
function boundaries(text) {
  const out = [0];
  let at = 0;
  for (const ch of text) {
    at += ch.length;
    out.push(at);
  }
  return out;
}

// A random edit of `doc` (UTF-16 positions, never inside a character).
function randomEdit(doc, random) {
  const b = boundaries(textOf(doc));
  const kind = random();
  // A short range (up to 4 characters) at a random place.
  const i = Math.floor(random() * b.length);
  const j = Math.min(b.length - 1, i + Math.floor(random() * 5));
  const [from, to] = [b[i], b[j]];
  const d = new Delta().retain(from);
  if (kind < 0.6 || to === from) {
    let text = '';
    const n = 1 + Math.floor(random() * 3);
    for (let i = 0; i < n; i++) text += PIECES[Math.floor(random() * PIECES.length)];
    const attrs = random() < 0.3 ? FORMATS[Math.floor(random() * FORMATS.length)] : undefined;
    return d.insert(text, attrs && Object.fromEntries(Object.entries(attrs).filter(([, v]) => v !== null)));
  }
  if (kind < 0.75) return d.delete(to - from);
  // Formatting: a longer range.
  const k = Math.min(b.length - 1, i + Math.floor(random() * 12));
  if (b[k] > from) return d.retain(b[k] - from, FORMATS[Math.floor(random() * FORMATS.length)]);
  return d.retain(to - from, FORMATS[Math.floor(random() * FORMATS.length)]);
}

// Sorted keys, so two equal documents print the same.
function canonical(ops) {
  return JSON.stringify(ops, (_, v) =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, v[k]]))
      : v,
  );
}

function connect(token, clientId, onMessage) {
  const ws = new WebSocket(config.url, 'relay.v1');
  ws.on('open', () => ws.send(JSON.stringify({ type: 'join', client_id: clientId, token, since: null })));
  ws.on('message', (data) => onMessage(JSON.parse(data.toString())));
  ws.on('error', (e) => fail(`${clientId}: ${e.message}`));
  return ws;
}

class Client {
  constructor(index, token, random, done) {
    this.id = `quill-${index}`;
    this.random = random;
    this.done = done;
    this.server = new Delta(); // the document as the server confirmed it
    this.local = new Delta(); // what the user sees
    this.inflight = null;
    this.buffer = null;
    this.version = 0;
    this.seq = 0;
    this.made = 0;
    this.acks = 0;
    this.waitingFor = null;
    this.ws = connect(token, this.id, (m) => this.receive(m));
  }

  receive(m) {
    switch (m.type) {
      case 'joined':
        this.server = new Delta(m.content);
        this.local = new Delta(m.content);
        this.version = m.version;
        this.tick();
        break;
      case 'ack':
        this.server = this.server.compose(this.inflight);
        this.version = m.version;
        this.acks += 1;
        this.inflight = this.buffer;
        this.buffer = null;
        if (this.inflight) this.send();
        this.check();
        break;
      case 'ops':
        for (const op of m.ops) this.apply(op);
        this.check();
        break;
      case 'error':
        fail(`${this.id} was told ${JSON.stringify(m)}`);
        break;
      default:
    }
  }

  apply(op) {
    if (op.version !== this.version + 1) fail(`${this.id}: version ${op.version} after ${this.version}`);
    let s = toUtf16(new Delta(op.delta), textOf(this.server));
    this.server = this.server.compose(s);
    for (const pending of ['inflight', 'buffer']) {
      const p = this[pending];
      if (!p) continue;
      // `s` was committed first: it wins ties and formatting conflicts.
      this[pending] = s.transform(p, true);
      s = p.transform(s, false);
    }
    this.local = this.local.compose(s);
    this.version = op.version;
  }

  send() {
    this.seq += 1;
    const delta = toCodePoints(this.inflight, textOf(this.server)).chop();
    this.ws.send(JSON.stringify({ type: 'submit', seq: this.seq, base: this.version, delta: delta.ops }));
  }

  tick() {
    if (this.made === EDITS) return this.check();
    const edit = randomEdit(this.local, this.random);
    this.local = this.local.compose(edit);
    this.made += 1;
    if (!this.inflight) {
      this.inflight = edit;
      this.send();
    } else {
      this.buffer = this.buffer ? this.buffer.compose(edit) : edit;
    }
    setTimeout(() => this.tick(), Math.floor(this.random() * 3));
  }

  idle() {
    return this.made === EDITS && !this.inflight && !this.buffer;
  }

  check() {
    if (this.waitingFor !== null && this.version === this.waitingFor) {
      const w = this.waitingFor;
      this.waitingFor = null;
      this.done(this, w);
    } else if (this.idle() && this.waitingFor === null && !this.reported) {
      this.reported = true;
      this.done(this, null);
    }
  }
}

const random = rng(config.seed);
const clients = [];
let idle = 0;
let caughtUp = 0;
function onDone(client, waited) {
  if (waited === null) {
    idle += 1;
    if (idle < clients.length) return;
    // Every client is idle: every op is committed; each client waits for
    // the total number of ops it must have applied.
    const total = clients.reduce((n, c) => n + c.acks, 0);
    for (const c of clients) {
      if (c.version === total) {
        caughtUp += 1;
      } else {
        c.waitingFor = total;
      }
    }
    if (caughtUp === clients.length) finish(total);
    return;
  }
  caughtUp += 1;
  if (caughtUp === clients.length) finish(waited);
}

function finish(total) {
  const docs = clients.map((c) => canonical(toCodePoints(c.local, '').ops));
  const joiner = connect(config.tokens[0], 'late-joiner', (m) => {
    if (m.type !== 'joined') return;
    const out = {
      version: m.version,
      total,
      joiner: canonical(m.content),
      clients: docs,
      text: textOf(new Delta(m.content)),
    };
    process.stdout.write(JSON.stringify(out) + '\n');
    for (const c of clients) c.ws.close();
    joiner.close();
  });
}

config.tokens.forEach((token, i) => clients.push(new Client(i, token, rng(config.seed * 1000 + i), onDone)));
setTimeout(() => fail('timed out'), 60000).unref();
