// ws.js — WebSocket loader: `GET /live/{name}` upgraded to a WebSocket.
//
// Every loader (ws.js, stream.js, longpoll.js, poll.js) has the same shape:
//   static isSupported() → bool
//   new Loader(name, {origin})
//   loader.onevent = (ev) => …   in order: {kind:'hello', epoch, server_time, live, resumed, next_seq}
//                                 {kind:'init', version, mime, codecs, bytes}
//                                 {kind:'fragment', seq, key, t, bytes}
//                                 {kind:'skip', from, to, skipped}
//                                 {kind:'publisher', state:'gone'|'back'}
//                                 {kind:'end', reason}
//   loader.onclose = (info) => …  once, unless abort() was called first:
//                                 {code, reason, error, gotData, notFound, ended}
//   loader.open({after, epoch})   after: the last seq appended (or null);
//                                 epoch: the stream life it belongs to (ignored by a relay in another)
//   loader.abort()
// `bytes` are Uint8Arrays; `recvAt` (performance-independent Date.now() at
// receipt) is added to every event for the relay-clock estimate.

/** Builds the URL of a watch path, with `after` when resuming, and the
 *  signed-URL `exp`/`sig` of the page URL (docs/security.md) on every one. */
export function livePath(name, suffix, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== null && v !== undefined) q.set(k, String(v));
  const page = new URLSearchParams(typeof location === 'object' ? location.search : '');
  for (const k of ['exp', 'sig']) if (page.has(k) && !q.has(k)) q.set(k, page.get(k));
  const qs = q.toString();
  return `/live/${encodeURIComponent(name)}${suffix}${qs ? `?${qs}` : ''}`;
}

export class WsLoader {
  static id = 'ws';

  static isSupported() {
    return typeof WebSocket === 'function';
  }

  constructor(name, { origin = location.origin } = {}) {
    this.name = name;
    this.origin = origin;
    this.onevent = () => {};
    this.onclose = () => {};
    this.ws = null;
    this.pending = null; // the meta of the binary message that comes next
    this.gotData = false;
    this.closed = false;
    this.bytes = 0;
  }

  open({ after = null, epoch = null } = {}) {
    const u = new URL(livePath(this.name, '', { after, epoch: after === null ? null : epoch }), this.origin);
    u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
    let ws;
    try {
      ws = new WebSocket(u.href);
    } catch (error) {
      // A page or proxy that forbids WebSockets: report it like a failed connect.
      queueMicrotask(() => this._close({ code: 0, reason: String(error && error.message || error), error: true }));
      return;
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    ws.onmessage = (m) => this._message(m);
    ws.onerror = () => {
      this.sawError = true;
    };
    ws.onclose = (e) => {
      this._close({ code: e.code, reason: e.reason || (this.sawError ? 'connection failed' : ''), error: !!this.sawError });
    };
  }

  _message(m) {
    if (this.closed) return;
    const recvAt = Date.now();
    if (typeof m.data === 'string') {
      let msg;
      try {
        msg = JSON.parse(m.data);
      } catch {
        return this._fail(`bad control message: ${m.data.slice(0, 80)}`);
      }
      switch (msg.type) {
        case 'hello':
          this.onevent({ ...msg, kind: 'hello', recvAt });
          break;
        case 'init':
        case 'fragment':
          if (this.pending) return this._fail(`${msg.type} meta while waiting for ${this.pending.type} bytes`);
          this.pending = msg;
          break;
        case 'skip':
        case 'publisher':
          this.onevent({ ...msg, kind: msg.type, recvAt });
          break;
        case 'end':
          this.ended = true;
          this.onevent({ ...msg, kind: 'end', recvAt });
          break;
        default:
          // Unknown control messages are ignored: the protocol may grow.
      }
      return;
    }
    const bytes = new Uint8Array(m.data);
    this.bytes += bytes.length;
    const meta = this.pending;
    this.pending = null;
    if (!meta) return this._fail('binary message without its meta');
    if (typeof meta.size === 'number' && meta.size !== bytes.length) {
      return this._fail(`${meta.type} size ${bytes.length} != announced ${meta.size}`);
    }
    this.gotData = true;
    if (meta.type === 'init') {
      this.onevent({ kind: 'init', version: meta.version, mime: meta.mime, codecs: meta.codecs, bytes, recvAt });
    } else {
      this.onevent({ kind: 'fragment', seq: meta.seq, key: !!meta.key, t: meta.t, bytes, recvAt });
    }
  }

  _fail(reason) {
    const ws = this.ws;
    this._close({ code: 0, reason, error: true });
    try {
      ws && ws.close(4000, 'protocol error');
    } catch {
      /* already closing */
    }
  }

  _close(info) {
    if (this.closed) return;
    this.closed = true;
    const ended = this.ended || info.code === 1000;
    this.onclose({ ...info, gotData: this.gotData, notFound: info.code === 4004, ended });
  }

  abort() {
    this.closed = true;
    if (this.ws) {
      this.ws.onmessage = this.ws.onclose = this.ws.onerror = null;
      try {
        this.ws.close(1000);
      } catch {
        /* ignore */
      }
    }
  }
}
