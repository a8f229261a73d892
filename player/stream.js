// stream.js — HTTP streaming loader: one never-ending
// `GET /live/{name}.mp4?meta=1` read through fetch() + ReadableStream.
//
// With `meta=1` the relay puts a top-level `free` box ("relaycast" + JSON)
// right before each init/fragment; its `size` says how many bytes that
// init/fragment has, so the body is cut exactly where the relay cut it.
// Same interface as ws.js (see there).

import { boxHeader, relaycastMeta } from './mp4.js';
import { livePath } from './ws.js';

/** A growable byte queue: append at the end, consume from the front. */
class ByteQueue {
  constructor() {
    this.buf = new Uint8Array(1 << 16);
    this.start = 0;
    this.end = 0;
  }

  get length() {
    return this.end - this.start;
  }

  push(chunk) {
    if (this.end + chunk.length > this.buf.length) {
      const len = this.length;
      const need = len + chunk.length;
      if (need <= this.buf.length) {
        this.buf.copyWithin(0, this.start, this.end);
      } else {
        const next = new Uint8Array(Math.max(need * 2, 1 << 16));
        next.set(this.buf.subarray(this.start, this.end));
        this.buf = next;
      }
      this.start = 0;
      this.end = len;
    }
    this.buf.set(chunk, this.end);
    this.end += chunk.length;
  }

  /** Removes and returns (a copy of) the first n bytes. */
  take(n) {
    const out = this.buf.slice(this.start, this.start + n);
    this.start += n;
    if (this.start === this.end) this.start = this.end = 0;
    return out;
  }
}

export class StreamLoader {
  static id = 'stream';

  static isSupported() {
    return typeof fetch === 'function' && typeof ReadableStream === 'function' &&
      typeof Response === 'function' && 'body' in Response.prototype;
  }

  constructor(name, { origin = location.origin } = {}) {
    this.name = name;
    this.origin = origin;
    this.onevent = () => {};
    this.onclose = () => {};
    this.ctrl = null;
    this.q = new ByteQueue();
    this.pending = null; // meta whose payload comes next
    this.plain = null; // fallback when the relay sends no meta: {init: [...]} grouping
    this.gotData = false;
    this.closed = false;
    this.bytes = 0;
  }

  open({ after = null, epoch = null } = {}) {
    this.resumeEpoch = after === null ? null : epoch;
    this.ctrl = new AbortController();
    this._run(after).catch((error) => {
      if (!this.closed) this._close({ code: 0, reason: String(error && error.message || error), error: true });
    });
  }

  async _run(after) {
    const url = new URL(livePath(this.name, '.mp4', { meta: 1, after, epoch: this.resumeEpoch }), this.origin);
    const res = await fetch(url, { signal: this.ctrl.signal, cache: 'no-store' });
    if (!res.ok || !res.body) {
      const text = await res.text().catch(() => '');
      this._close({ code: res.status, reason: `HTTP ${res.status} ${text.slice(0, 120)}`.trim(), error: res.status >= 500, notFound: res.status === 404 });
      return;
    }
    const epoch = res.headers.get('X-Relaycast-Epoch');
    this.headerEpoch = epoch === null ? null : Number(epoch);
    const reader = res.body.getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (this.closed) return;
      if (done) break;
      const recvAt = Date.now();
      this.bytes += value.length;
      this.q.push(value);
      this._parse(recvAt);
      if (this.closed) return;
    }
    this._close({ code: 0, reason: 'response ended', error: false });
  }

  _parse(recvAt) {
    const q = this.q;
    for (;;) {
      if (this.closed) return;
      if (this.pending) {
        if (q.length < this.pending.size) return;
        const meta = this.pending;
        this.pending = null;
        const bytes = q.take(meta.size);
        this.gotData = true;
        if (meta.type === 'init') {
          this.onevent({ kind: 'init', version: meta.version, mime: meta.mime, codecs: meta.codecs, bytes, recvAt });
        } else {
          this.onevent({ kind: 'fragment', seq: meta.seq, key: !!meta.key, t: meta.t, bytes, recvAt });
        }
        continue;
      }
      const h = boxHeader(q.buf, q.start, q.end);
      if (!h) return;
      if (h.size < h.hdr) return this._fail(`bad box size ${h.size}`);
      if (q.length < h.size) return;
      const meta = relaycastMeta(q.buf, q.start, h.size, h.hdr);
      if (!meta) {
        // Not a relaycast meta box: the relay ignored meta=1. Cut by boxes
        // (ftyp…moov = init, [styp…]moof+mdat = fragment) without seqs.
        this._plainBox(h, q.take(h.size), recvAt);
        continue;
      }
      q.take(h.size);
      this._meta(meta, recvAt);
    }
  }

  _meta(meta, recvAt) {
    switch (meta.type) {
      case 'init':
      case 'fragment':
        if (typeof meta.size !== 'number') return this._fail(`${meta.type} meta without size`);
        this.pending = meta;
        break;
      case 'hello':
        this.onevent({ ...meta, epoch: meta.epoch ?? this.headerEpoch, kind: 'hello', recvAt });
        break;
      case 'end':
        this.ended = true;
        this.onevent({ ...meta, kind: 'end', recvAt });
        break;
      case 'skip':
      case 'publisher':
        this.onevent({ ...meta, kind: meta.type, recvAt });
        break;
      default:
    }
  }

  _plainBox(h, bytes, recvAt) {
    const p = this.plain || (this.plain = { parts: [], kind: null, seq: 0 });
    if (!this.sentHello) {
      this.sentHello = true;
      this.onevent({ kind: 'hello', epoch: this.headerEpoch, recvAt });
    }
    p.parts.push(bytes);
    if (h.type === 'ftyp') p.kind = 'init';
    if (h.type === 'moov' || h.type === 'mdat') {
      let n = 0;
      for (const x of p.parts) n += x.length;
      const all = new Uint8Array(n);
      let o = 0;
      for (const x of p.parts) {
        all.set(x, o);
        o += x.length;
      }
      const kind = h.type === 'moov' ? 'init' : 'fragment';
      p.parts = [];
      p.kind = null;
      this.gotData = true;
      if (kind === 'init') this.onevent({ kind: 'init', version: null, mime: null, bytes: all, recvAt });
      else this.onevent({ kind: 'fragment', seq: null, key: false, t: null, bytes: all, recvAt });
    }
  }

  _fail(reason) {
    this._close({ code: 0, reason, error: true });
    this.ctrl && this.ctrl.abort();
  }

  _close(info) {
    if (this.closed) return;
    this.closed = true;
    this.onclose({ gotData: this.gotData, ended: !!this.ended, ...info });
  }

  abort() {
    this.closed = true;
    if (this.ctrl) this.ctrl.abort();
  }
}
