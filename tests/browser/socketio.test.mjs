// The Socket.IO viewer endpoint (/socket.io/) with the real socket.io-client:
// `watch` {name} → hello, init (meta, binary), fragment (meta, binary)…; the
// bytes must equal /live/{name}/init.mp4, a WebSocket viewer's bytes and the
// poll endpoint's bytes for the same seqs. Over the default transports
// (polling then upgrade to websocket) and over polling only.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import WebSocket from 'ws';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startRelay, getJson, sleep, waitFor, ffmpegPublish } from './lib.mjs';

const N = 15; // fragments to collect

const buf = (b) => (Buffer.isBuffer(b) ? b : b instanceof ArrayBuffer ? Buffer.from(b) : ArrayBuffer.isView(b) ? Buffer.from(b.buffer, b.byteOffset, b.byteLength) : null);
const meta = (m) => (typeof m === 'string' ? JSON.parse(m) : m);

/** Collects hello, init and N fragments from Socket.IO. */
function collectSocketIo(base, name, transports) {
  return new Promise((resolve, reject) => {
    const opts = { reconnection: false, timeout: 5000, forceNew: true };
    if (transports) opts.transports = transports;
    const socket = io(base, opts);
    const got = { hello: null, inits: [], frags: [], transport: null, events: [] };
    const timer = setTimeout(() => finish(new Error(`socket.io: got ${got.frags.length}/${N} fragments in 20 s (events: ${got.events.join(',')})`)), 20000);
    function finish(err) {
      clearTimeout(timer);
      got.transport = socket.io.engine ? socket.io.engine.transport.name : null;
      socket.close();
      if (err) reject(err);
      else resolve(got);
    }
    socket.on('connect_error', (e) => finish(new Error(`socket.io connect_error: ${e.message}`)));
    socket.on('connect', () => socket.emit('watch', { name }));
    socket.on('hello', (h) => { got.events.push('hello'); got.hello = meta(h); });
    socket.on('init', (m, b) => { got.events.push('init'); got.inits.push({ meta: meta(m), bytes: buf(b) }); });
    socket.on('fragment', (m, b) => {
      got.events.push('fragment');
      got.frags.push({ meta: meta(m), bytes: buf(b) });
      if (got.frags.length >= N) {
        // Give the engine a moment to upgrade before reading its transport name.
        setTimeout(() => finish(), 50);
      }
    });
    socket.on('end', (e) => finish(new Error(`socket.io end: ${JSON.stringify(e)}`)));
    socket.on('error', (e) => finish(new Error(`socket.io error event: ${JSON.stringify(e)}`)));
  });
}

/** A WebSocket viewer of /live/{name}: resolves with fragments by seq once `until()` says so. */
function wsViewer(base, name) {
  const ws = new WebSocket(`${base.replace(/^http/, 'ws')}/live/${name}`);
  const v = { init: null, frags: new Map(), ws, hello: null };
  let pending = null;
  ws.on('message', (data, isBinary) => {
    if (!isBinary) {
      const m = JSON.parse(data.toString());
      if (m.type === 'hello') v.hello = m;
      if (m.type === 'init' || m.type === 'fragment') pending = m;
      return;
    }
    if (!pending) return;
    if (pending.type === 'init') v.init = Buffer.from(data);
    else v.frags.set(pending.seq, Buffer.from(data));
    pending = null;
  });
  v.opened = new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  return v;
}

async function pollBytes(base, name, after) {
  const res = await fetch(`${base}/live/${name}/poll?after=${after}&wait=0`);
  assert.equal(res.status, 200, `poll after=${after}: ${res.status} ${res.status === 200 ? '' : await res.text()}`);
  const body = Buffer.from(await res.arrayBuffer());
  const seqs = (res.headers.get('x-relaycast-seqs') || '').split(',').filter(Boolean).map(Number);
  const sizes = (res.headers.get('x-relaycast-sizes') || '').split(',').filter(Boolean).map(Number);
  const out = new Map();
  let o = 0;
  seqs.forEach((s, i) => { out.set(s, body.subarray(o, o + sizes[i])); o += sizes[i]; });
  assert.equal(o, body.length, 'poll sizes add up to the body');
  return out;
}

describe('Socket.IO viewers', () => {
  let relay;
  before(async () => {
    relay = await startRelay();
  });
  after(async () => {
    await relay?.stop();
  });

  for (const transports of [null, ['polling']]) {
    const label = transports ? `transports: ${JSON.stringify(transports)}` : 'default transports';
    test(`byte-identical init and fragments (${label})`, { timeout: 40000 }, async () => {
      const ref = wsViewer(relay.base, 'demo');
      await ref.opened;
      try {
        const got = await collectSocketIo(relay.base, 'demo', transports);
        const info = await getJson(`${relay.base}/live/demo/info`);
        assert.ok(got.hello, 'hello received');
        assert.equal(got.hello.epoch, info.epoch, 'hello epoch = info epoch');
        assert.equal(got.inits.length, 1, 'one init');
        const init = got.inits[0];
        assert.equal(init.meta.version, info.init_version);
        assert.equal(init.meta.mime, info.mime);
        assert.equal(init.meta.size, init.bytes.length);
        const initRes = await fetch(`${relay.base}/live/demo/init.mp4`);
        const initBytes = Buffer.from(await initRes.arrayBuffer());
        assert.ok(init.bytes.equals(initBytes), 'init equals /live/demo/init.mp4');
        assert.ok(ref.init && init.bytes.equals(ref.init), 'init equals the WebSocket viewer\'s init');

        const seqs = got.frags.map((f) => f.meta.seq);
        for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1] + 1, `contiguous seqs: ${seqs.join(',')}`);
        assert.equal(got.frags[0].meta.key, true, 'starts at a keyframe');
        for (const f of got.frags) assert.equal(f.meta.size, f.bytes.length, `size of ${f.meta.seq}`);

        // Same bytes as the poll endpoint for the seqs still in the ring. `after`
        // is a seq (u64): on a fresh relay the first fragment is seq 0, and
        // nothing comes before it, so poll after it and compare from seq 1.
        const polled = await pollBytes(relay.base, 'demo', Math.max(0, seqs[0] - 1));
        let samePoll = 0;
        for (const f of got.frags) {
          const p = polled.get(f.meta.seq);
          if (!p) continue;
          assert.ok(f.bytes.equals(p), `fragment ${f.meta.seq} equals the poll bytes`);
          samePoll++;
        }
        assert.ok(samePoll >= N / 2, `compared ${samePoll} fragments with the poll endpoint`);

        // And as the WebSocket viewer that was watching meanwhile.
        let sameWs = 0;
        for (const f of got.frags) {
          const w = ref.frags.get(f.meta.seq);
          if (!w) continue;
          assert.ok(f.bytes.equals(w), `fragment ${f.meta.seq} equals the WebSocket bytes`);
          sameWs++;
        }
        assert.ok(sameWs >= N - 2, `compared ${sameWs} fragments with a WebSocket viewer`);
        console.log(`# socket.io (${label}, ended on ${got.transport}): init ${init.bytes.length} B + seqs ${seqs[0]}..${seqs[seqs.length - 1]} identical to poll (${samePoll}) and ws (${sameWs})`);
        if (transports) assert.equal(got.transport, 'polling');
      } finally {
        ref.ws.close();
      }
    });
  }
});

describe('Socket.IO polling with large fragments', () => {
  let relay;
  let pub;
  before(async () => {
    relay = await startRelay({ args: ['--no-demo'] });
  });
  after(async () => {
    await pub?.stopNow();
    await relay?.stop();
  });

  test('fragments over 100 KB (socketioxide\'s default polling payload) arrive whole over polling', { timeout: 60000 }, async () => {
    // 1 s fragments at ~3 Mb/s: each one is a few hundred KB.
    pub = ffmpegPublish(relay.base, 'big', { fragMs: 1000, extra: ['-b:v', '3M', '-maxrate', '3M', '-bufsize', '1M'] });
    const ref = wsViewer(relay.base, 'big?wait=20');
    await ref.opened;
    const socket = io(relay.base, { reconnection: false, forceNew: true, transports: ['polling'] });
    const frags = [];
    try {
      await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`got ${frags.length} fragments in 30 s\n${pub.errText}`)), 30000);
        socket.on('connect', () => socket.emit('watch', { name: 'big', wait: 20 }));
        socket.on('connect_error', (e) => reject(new Error(`connect_error: ${e.message}`)));
        socket.on('fragment', (m, b) => {
          frags.push({ meta: meta(m), bytes: buf(b) });
          if (frags.length >= 3) { clearTimeout(timer); resolve(); }
        });
      });
      assert.equal(socket.io.engine.transport.name, 'polling');
      await waitFor(() => frags.every((f) => ref.frags.has(f.meta.seq)), { timeout: 10000, what: 'the WebSocket viewer to have the same seqs' });
      for (const f of frags) {
        assert.equal(f.bytes.length, f.meta.size, `fragment ${f.meta.seq} whole`);
        assert.ok(f.bytes.equals(ref.frags.get(f.meta.seq)), `fragment ${f.meta.seq} equals the WebSocket bytes`);
      }
      const biggest = Math.max(...frags.map((f) => f.bytes.length));
      assert.ok(biggest > 100 * 1024, `the largest fragment is ${biggest} B (want > 100 KB for this test to mean something)`);
      console.log(`# socket.io polling: fragments of ${frags.map((f) => Math.round(f.bytes.length / 1024)).join(', ')} KB, identical to the WebSocket viewer's`);
    } finally {
      socket.close();
      ref.ws.close();
    }
  });
});

/**
 * A bare Engine.IO v4 polling client (fetch only), so that the test decides
 * when to read: socket.io-client reads as fast as it can. Speaks just enough
 * Socket.IO: connect to "/", emit, decode events and binary events (whose
 * attachments arrive as base64 `b…` packets), answer pings.
 */
class RawPollingClient {
  constructor(base) {
    this.base = `${base}/socket.io/?EIO=4&transport=polling`;
    this.events = [];
    this.partial = null; // a binary event waiting for its attachments
  }

  async _get() {
    const res = await fetch(`${this.base}&sid=${this.sid}&t=${Date.now()}`);
    assert.equal(res.status, 200, `engine.io GET: ${res.status}`);
    return res.text();
  }

  async _post(body) {
    const res = await fetch(`${this.base}&sid=${this.sid}`, { method: 'POST', body, headers: { 'content-type': 'text/plain;charset=UTF-8' } });
    assert.equal(res.status, 200, `engine.io POST: ${res.status} ${await res.text()}`);
  }

  async connect() {
    const res = await fetch(this.base);
    const open = await res.text();
    assert.equal(open[0], '0', `engine.io open packet: ${open.slice(0, 80)}`);
    this.sid = JSON.parse(open.slice(1)).sid;
    await this._post('40');
    await waitFor(async () => { await this.read(); return this.connected; }, { timeout: 5000, interval: 0, what: 'the socket.io connect ack' });
  }

  emit(event, data) {
    return this._post(`42${JSON.stringify([event, data])}`);
  }

  /** One GET: decode what it brings into this.events. Returns how many events. */
  async read() {
    const before = this.events.length;
    const text = await this._get();
    for (const p of text.split('\x1e')) {
      if (p === '2') { await this._post('3'); continue; } // ping → pong
      if (p[0] === 'b') {
        const bin = Buffer.from(p.slice(1), 'base64');
        this.partial.bins.push(bin);
        if (this.partial.bins.length === this.partial.n) this._done(this.partial);
        continue;
      }
      if (p.startsWith('40')) {
        this.connected = true;
      } else if (p.startsWith('42')) {
        const [name, ...args] = JSON.parse(p.slice(2));
        this.events.push({ name, args });
      } else if (p.startsWith('45')) {
        const m = /^45(\d+)-(.*)$/s.exec(p);
        const [name, ...args] = JSON.parse(m[2]);
        this.partial = { name, args, n: Number(m[1]), bins: [] };
      } else if (p.startsWith('41')) {
        this.events.push({ name: 'disconnect', args: [] });
      }
    }
    return this.events.length - before;
  }

  _done(ev) {
    const fill = (v) => (v && v._placeholder ? ev.bins[v.num] : v);
    this.events.push({ name: ev.name, args: ev.args.map(fill) });
    this.partial = null;
  }
}

describe('a slow Socket.IO viewer', () => {
  let relay;
  let dir;
  before(async () => {
    // A short ring, so that a viewer that stops reading for a few seconds falls out of it.
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'relaycast-sio-'));
    const cfg = path.join(dir, 'relay.toml');
    fs.writeFileSync(cfg, '[fanout.ring]\nmax_fragments = 20\n');
    relay = await startRelay({ args: ['--config', cfg] });
  });
  after(async () => {
    await relay?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  test('gets the lag policy: skipped to a keyframe, counted, while a fast viewer misses nothing', { timeout: 60000 }, async () => {
    const fast = wsViewer(relay.base, 'demo');
    await fast.opened;
    const slow = new RawPollingClient(relay.base);
    await slow.connect();
    await slow.emit('watch', { name: 'demo' });
    const frags = () => slow.events.filter((e) => e.name === 'fragment');
    await waitFor(async () => { await slow.read(); return frags().length >= 5; }, { timeout: 15000, interval: 50, what: 'the first fragments over polling' });
    const infoBefore = await getJson(`${relay.base}/live/demo/info`);
    // Stop reading: the relay's queue for this socket fills, its cursor
    // stands still and the ring moves on without it.
    await sleep(8000);
    const skip = await waitFor(async () => {
      await slow.read();
      return slow.events.find((e) => e.name === 'skip' || e.name === 'end' || e.name === 'disconnect');
    }, { timeout: 15000, interval: 50, what: 'a skip after the stall' });
    assert.equal(skip.name, 'skip', `after the stall: ${JSON.stringify(skip.args[0])}`);
    const sk = meta(skip.args[0]);
    assert.ok(sk.skipped > 0 && sk.to > sk.from, `skip ${JSON.stringify(sk)}`);
    assert.equal(sk.skips, 1, 'the first skip of this viewer');
    // After the skip it goes on at a keyframe, contiguous, and the bytes are whole.
    const at = slow.events.indexOf(skip);
    await waitFor(async () => { await slow.read(); return slow.events.slice(at).filter((e) => e.name === 'fragment').length >= 3; },
      { timeout: 10000, interval: 50, what: 'fragments after the skip' });
    const beforeSkip = slow.events.slice(0, at).filter((e) => e.name === 'fragment').map((e) => meta(e.args[0]));
    const afterSkip = slow.events.slice(at).filter((e) => e.name === 'fragment').map((e) => ({ m: meta(e.args[0]), b: e.args[1] }));
    for (let i = 1; i < beforeSkip.length; i++) assert.equal(beforeSkip[i].seq, beforeSkip[i - 1].seq + 1, 'contiguous before the skip');
    assert.equal(beforeSkip[beforeSkip.length - 1].seq + 1, sk.from, 'the skip starts where delivery stopped');
    assert.equal(afterSkip[0].m.seq, sk.to, 'continues where the skip says');
    assert.equal(afterSkip[0].m.key, true, 'at a keyframe');
    for (const f of afterSkip) assert.equal(f.b.length, f.m.size, `fragment ${f.m.seq} whole`);
    const infoAfter = await getJson(`${relay.base}/live/demo/info`);
    assert.ok(infoAfter.skips > infoBefore.skips, `the relay counted the skip (${infoBefore.skips} → ${infoAfter.skips})`);
    // The WebSocket viewer watching all along was not slowed: no hole.
    const seqs = [...fast.frags.keys()].sort((a, b) => a - b);
    assert.ok(seqs.length > 60, `fast viewer got ${seqs.length} fragments`);
    for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1] + 1, 'fast viewer contiguous');
    console.log(`# slow socket.io viewer: stalled 8 s, skip ${sk.from} → ${sk.to} (${sk.skipped} fragments), relay skips ${infoBefore.skips} → ${infoAfter.skips}; ws viewer ${seqs[0]}..${seqs[seqs.length - 1]} contiguous`);
    fast.ws.close();
  });
});
