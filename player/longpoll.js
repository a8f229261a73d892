// longpoll.js — long-polling loader: `GET /live/{name}/poll?after=SEQ`, which
// answers at once with the fragments after SEQ or holds the request until the
// next one arrives. The body is the fragments concatenated; the
// X-Relaycast-Seqs/Sizes/Keyframes/Times headers say where each one is.
// The init segment comes from `GET /live/{name}/init.mp4`, fetched again
// whenever X-Relaycast-Init-Version or X-Relaycast-Epoch changes.
// poll.js reuses this with `wait=0` and its own pacing.
// Same interface as ws.js (see there).

import { livePath } from './ws.js';

const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  if (signal) signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
});

function list(h) {
  if (!h) return [];
  return h.split(',').map((s) => s.trim()).filter((s) => s.length > 0).map(Number);
}

class HttpStatusError extends Error {
  constructor(status, text) {
    super(`HTTP ${status} ${text}`.trim());
    this.status = status;
  }
}

export class LongPollLoader {
  static id = 'longpoll';

  static isSupported() {
    return typeof fetch === 'function' && typeof AbortController === 'function';
  }

  constructor(name, { origin = location.origin } = {}) {
    this.name = name;
    this.origin = origin;
    this.onevent = () => {};
    this.onclose = () => {};
    this.ctrl = null;
    this.gotData = false;
    this.closed = false;
    this.bytes = 0;
    this.epoch = null;
    this.initVersion = null;
    this.live = null;
    this.interval = 200; // poll.js: estimated fragment interval (ms)
    this.requests = 0;
  }

  /** Extra query parameters of each poll request. */
  pollParams() {
    return { timeout: 20 };
  }

  /** Pause before the next request (poll.js paces; long polling does not). */
  async pace() {}

  open({ after = null, epoch = null } = {}) {
    this.ctrl = new AbortController();
    this._run(after, epoch).catch((error) => {
      if (this.closed) return;
      const status = error && error.status;
      this._close({
        code: status || 0,
        reason: String(error && error.message || error),
        error: !status || status >= 500,
        notFound: status === 404,
      });
    });
  }

  async _get(path, timeoutMs) {
    const ctrl = new AbortController();
    const abort = () => ctrl.abort();
    this.ctrl.signal.addEventListener('abort', abort, { once: true });
    const timer = setTimeout(abort, timeoutMs);
    try {
      const res = await fetch(new URL(path, this.origin), { signal: ctrl.signal, cache: 'no-store' });
      if (!res.ok) throw new HttpStatusError(res.status, (await res.text().catch(() => '')).slice(0, 120));
      const body = new Uint8Array(await res.arrayBuffer());
      return { res, body };
    } finally {
      clearTimeout(timer);
      this.ctrl.signal.removeEventListener('abort', abort);
    }
  }

  async _hello() {
    const t0 = Date.now();
    const { body } = await this._get(livePath(this.name, '/info'), 10000);
    const t1 = Date.now();
    const info = JSON.parse(new TextDecoder().decode(body));
    this.info = info;
    this.epoch = info.epoch;
    this.live = info.live;
    // The info answer was stamped somewhere between t0 and t1: use the midpoint.
    this.onevent({ kind: 'hello', epoch: info.epoch, server_time: info.server_time, live: info.live, recvAt: Math.round((t0 + t1) / 2) });
  }

  async _init() {
    const { res, body } = await this._get(livePath(this.name, '/init.mp4'), 10000);
    const version = res.headers.get('X-Relaycast-Init-Version');
    const codecs = res.headers.get('X-Relaycast-Codecs');
    const ctype = res.headers.get('Content-Type') || '';
    let mime = res.headers.get('X-Relaycast-Mime');
    if (mime) { /* the relay says it */ } else if (/codecs=/.test(ctype)) mime = ctype;
    else if (this.info && this.info.mime && String(this.info.init_version) === String(version)) mime = this.info.mime;
    else if (codecs) mime = `${/^(mp4a|opus|flac|ac-3|ec-3)/.test(codecs) ? 'audio' : 'video'}/mp4; codecs="${codecs}"`;
    this.initVersion = version === null ? null : Number(version);
    this.bytes += body.length;
    this.gotData = true;
    this.onevent({ kind: 'init', version: this.initVersion, mime, codecs, bytes: body, recvAt: Date.now() });
  }

  async _run(after, epoch) {
    await this._hello();
    if (this.closed) return;
    await this._init();
    // A seq from another life of the stream (the relay restarted) means
    // nothing here: start afresh. Every poll says which epoch its `after`
    // is from, so a restart between two polls is caught by the relay too.
    let next = epoch !== null && epoch !== undefined && epoch !== this.epoch ? null : after;
    while (!this.closed) {
      const path = livePath(this.name, '/poll', { after: next, epoch: next === null ? null : this.epoch, ...this.pollParams() });
      const { res, body } = await this._get(path, 35000);
      if (this.closed) return;
      this.requests++;
      const recvAt = Date.now();
      const h = (k) => res.headers.get(k);
      const epoch = h('X-Relaycast-Epoch');
      if (epoch !== null && Number(epoch) !== this.epoch) {
        // The relay restarted (or the stream was recreated) under us.
        this.epoch = Number(epoch);
        this.onevent({ kind: 'hello', epoch: this.epoch, recvAt });
        this.initVersion = null;
      }
      const version = h('X-Relaycast-Init-Version');
      if (version !== null && Number(version) !== this.initVersion) {
        await this._init();
        if (this.closed) return;
      }
      const live = h('X-Relaycast-Live');
      if (live !== null) {
        const isLive = live === '1' || live === 'true';
        if (this.live !== null && isLive !== this.live) this.onevent({ kind: 'publisher', state: isLive ? 'back' : 'gone', recvAt });
        this.live = isLive;
      }
      const seqs = list(h('X-Relaycast-Seqs'));
      const sizes = list(h('X-Relaycast-Sizes'));
      const keys = new Set(list(h('X-Relaycast-Keyframes')));
      const times = list(h('X-Relaycast-Times'));
      const skipped = Number(h('X-Relaycast-Skipped') || 0);
      if (seqs.length !== sizes.length || sizes.reduce((a, b) => a + b, 0) !== body.length) {
        throw new Error(`poll: X-Relaycast-Seqs/Sizes (${seqs.length}/${sizes.length}) do not match the body (${body.length} bytes)`);
      }
      if (skipped > 0 && seqs.length > 0) {
        this.onevent({ kind: 'skip', from: next === null ? null : next + 1, to: seqs[0], skipped, recvAt });
      }
      this.bytes += body.length;
      let o = 0;
      for (let i = 0; i < seqs.length; i++) {
        const bytes = body.subarray(o, o + sizes[i]);
        o += sizes[i];
        this.gotData = true;
        if (i > 0 && times[i] && times[i - 1]) this.interval = 0.8 * this.interval + 0.2 * Math.max(20, times[i] - times[i - 1]);
        this.onevent({ kind: 'fragment', seq: seqs[i], key: keys.has(seqs[i]), t: times[i] ?? null, bytes, recvAt });
        if (this.closed) return;
      }
      if (h('X-Relaycast-End') === '1') {
        this.onevent({ kind: 'end', reason: 'stream ended', recvAt });
        this._close({ code: 0, reason: 'stream ended', ended: true });
        return;
      }
      const nx = h('X-Relaycast-Next');
      if (nx !== null && nx !== '') next = Number(nx);
      else if (seqs.length) next = seqs[seqs.length - 1];
      await this.pace(seqs.length);
    }
  }

  _close(info) {
    if (this.closed) return;
    this.closed = true;
    this.onclose({ gotData: this.gotData, ended: false, ...info });
  }

  abort() {
    this.closed = true;
    if (this.ctrl) this.ctrl.abort();
  }
}

export { sleep };
