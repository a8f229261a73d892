// transport.js — picks a loader, falls back, reconnects, and upgrades again.
//
// The ladder is WebSocket → HTTP streaming → long polling → polling. A rung is
// given up when it fails while the relay itself is reachable (a plain
// `GET /live/{name}/info` answers and says the stream is live): it cannot
// connect, it closes before any data, it keeps dropping, or it delivers
// nothing for a while although the stream moves (a buffering proxy). When the
// relay is unreachable (restarting), no rung is blamed: we retry the same one
// with backoff. Every (re)connect resumes with `after=<last seq appended>`.
// After a stretch of stable playback on a lower rung, the rung above is probed
// with a second connection; if it delivers a fragment in time we switch.
// `forced` (from ?transport=) pins one rung: no fallback, no probing.

import { WsLoader } from './ws.js';
import { StreamLoader } from './stream.js';
import { LongPollLoader } from './longpoll.js';
import { PollLoader } from './poll.js';
import { livePath } from './ws.js';

export const LOADERS = { ws: WsLoader, stream: StreamLoader, longpoll: LongPollLoader, poll: PollLoader };
export const LADDER = ['ws', 'stream', 'longpoll', 'poll'];

const DEFAULTS = {
  firstDataTimeout: 5000, // ms without any init/fragment on a fresh connection while the stream is live
  stallTimeout: 5000, // ms without a fragment on a running connection while the stream moves
  upgradeAfter: 30000, // ms of stable playback on a lower rung before probing the one above
  maxUpgradeBackoff: 300000,
  minBackoff: 250,
  maxBackoff: 5000,
  dropsToFall: 3, // disconnects after data, within dropWindow, that make us give up a rung
  dropWindow: 30000,
};

export class TransportChooser {
  /**
   * @param {string} name stream name
   * @param {object} o
   *   forced: one of LADDER or null; origin: the relay (default: this page's
   *   origin); onEvent(ev, transportId); onState(text);
   *   resume(): {after, epoch} to reconnect with; log(msg); plus any DEFAULTS override.
   */
  constructor(name, o) {
    this.name = name;
    this.o = { ...DEFAULTS, ...o };
    const forced = LADDER.includes(o.forced) ? o.forced : null;
    this.forced = forced;
    this.ladder = (forced ? [forced] : LADDER).filter((id) => LOADERS[id].isSupported());
    if (!this.ladder.length) this.ladder = [forced || 'poll'];
    this.rung = 0;
    this.current = null; // {loader, id, gotData, openedAt, lastDataAt}
    this.probe = null;
    this.stopped = true;
    this.attempt = 0;
    this.drops = [];
    this.failures = 0; // consecutive failures before data on this rung
    this.reconnects = 0;
    this.fallbacks = 0;
    this.upgrades = 0;
    this.probes = 0;
    this.history = [];
    this.upgradeBackoff = this.o.upgradeAfter;
    this.stableSince = 0;
    this.timer = null;
    this.tickTimer = null;
  }

  get id() {
    return this.current ? this.current.id : this.ladder[this.rung];
  }

  get bytes() {
    return (this.doneBytes || 0) + (this.current ? this.current.loader.bytes : 0);
  }

  start() {
    this.stopped = false;
    this._connect();
    this.tickTimer = setInterval(() => this._tick(), 1000);
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.tickTimer);
    if (this.current) this.current.loader.abort();
    if (this.probe) this.probe.loader.abort();
    this.current = this.probe = null;
  }

  _log(msg) {
    this.history.push({ at: Date.now(), msg });
    if (this.history.length > 200) this.history.shift();
    if (this.o.log) this.o.log(msg);
  }

  _open(rung, onEvent, onClose) {
    const id = this.ladder[rung];
    const loader = new LOADERS[id](this.name, this.o.origin ? { origin: this.o.origin } : {});
    const conn = { loader, id, rung, gotData: false, openedAt: Date.now(), lastDataAt: 0 };
    loader.onevent = (ev) => {
      if (ev.kind === 'init' || ev.kind === 'fragment') {
        conn.gotData = true;
        conn.lastDataAt = Date.now();
      }
      onEvent(conn, ev);
    };
    loader.onclose = (info) => onClose(conn, info);
    const { after, epoch } = this.o.resume();
    loader.open({ after, epoch });
    return conn;
  }

  _connect() {
    if (this.stopped) return;
    const conn = this._open(this.rung, (c, ev) => {
      if (c !== this.current) return;
      if (ev.kind === 'fragment' || ev.kind === 'init') {
        if (this.attempt) this._state('playing');
        this.attempt = 0;
        this.failures = 0;
      }
      this.o.onEvent(ev, c.id);
    }, (c, info) => this._closed(c, info));
    this.current = conn;
    this.stableSince = Date.now();
    this._log(`connect ${conn.id}${this.o.resume().after !== null ? ` after=${this.o.resume().after}` : ''}`);
    this._state(`connecting (${conn.id})`);
  }

  _state(s) {
    if (this.o.onState) this.o.onState(s, this.id);
  }

  async _relayStatus() {
    // Is the relay reachable, and is the stream live? Distinguishes "this
    // transport is blocked" from "the relay is down".
    const ctrl = new AbortController();
    const t = setTimeout(() => ctrl.abort(), 3000);
    try {
      const res = await fetch(new URL(livePath(this.name, '/info'), this.o.origin || location.origin), { cache: 'no-store', signal: ctrl.signal });
      if (res.status === 404) return { reachable: true, exists: false, live: false };
      if (!res.ok) return { reachable: res.status < 500, exists: false, live: false };
      const info = await res.json();
      return { reachable: true, exists: true, live: !!info.live, seq: info.seq, info };
    } catch {
      return { reachable: false };
    } finally {
      clearTimeout(t);
    }
  }

  async _closed(conn, info) {
    if (conn !== this.current || this.stopped) return;
    this.doneBytes = (this.doneBytes || 0) + conn.loader.bytes;
    this.current = null;
    const why = `${conn.id} closed${info.code ? ` (${info.code})` : ''}${info.reason ? `: ${info.reason}` : ''}`;
    this._log(why);
    if (info.code === 1008 || info.code === 401 || info.code === 403) {
      this._state(`not allowed: ${info.reason || info.code}`);
      this.o.onFatal && this.o.onFatal(why);
      return;
    }
    let fall = false;
    if (info.ended || info.notFound) {
      this._state(info.notFound ? 'stream not found, waiting' : 'stream ended, waiting');
    } else {
      const st = await this._relayStatus();
      if (this.stopped) return;
      if (!st.reachable) {
        this._state('relay unreachable, retrying');
      } else if (st.live) {
        // The relay answers and the stream is live: blame the transport.
        if (!conn.gotData) {
          this.failures++;
          fall = this.failures >= (info.error && conn.id === 'ws' ? 1 : 2);
        } else {
          const now = Date.now();
          this.drops = this.drops.filter((t) => now - t < this.o.dropWindow);
          this.drops.push(now);
          fall = this.drops.length >= this.o.dropsToFall;
        }
      }
    }
    if (fall && !this.forced && this.rung + 1 < this.ladder.length) {
      this._fallTo(this.rung + 1, why);
      this._connect();
      return;
    }
    this.reconnects++;
    this._reconnectLater();
  }

  _fallTo(rung, why) {
    this._log(`fall back ${this.ladder[this.rung]} → ${this.ladder[rung]} (${why})`);
    this.rung = rung;
    this.fallbacks++;
    this.failures = 0;
    this.drops = [];
    this.attempt = 0;
    this.upgradeBackoff = this.o.upgradeAfter;
  }

  _reconnectLater() {
    const base = Math.min(this.o.maxBackoff, this.o.minBackoff * 2 ** this.attempt);
    const ms = this.attempt === 0 ? 0 : base * (0.75 + Math.random() * 0.5);
    this.attempt++;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this._connect(), ms);
  }

  /** Once a second: watchdogs (no first data, stalls) and upgrade probes. */
  async _tick() {
    if (this.stopped || this.checking) return;
    const c = this.current;
    if (!c) return;
    const now = Date.now();
    const quiet = c.gotData ? now - c.lastDataAt > this.o.stallTimeout : now - c.openedAt > this.o.firstDataTimeout;
    if (quiet) {
      this.checking = true;
      const st = await this._relayStatus();
      this.checking = false;
      if (c !== this.current || this.stopped) return;
      const last = this.o.resume().after;
      const moving = st.live && (last === null || st.seq === undefined || st.seq > last || !c.gotData);
      if (st.reachable && moving) {
        const why = c.gotData ? `no data for ${this.o.stallTimeout} ms while the stream is live` :
          `no data within ${this.o.firstDataTimeout} ms while the stream is live (buffering proxy?)`;
        c.loader.abort();
        this._closed(c, { code: 0, reason: why, error: false });
        // _closed() saw no data (or a drop) and decides whether to fall.
        return;
      }
      // Stream not live or relay down: give the connection more time.
      c.openedAt = c.lastDataAt = Date.now();
      return;
    }
    if (!this.forced && this.rung > 0 && c.gotData && !this.probe && now - this.stableSince > this.upgradeBackoff) {
      this._probe(this.rung - 1);
    }
  }

  _probe(rung) {
    this.probes++;
    const id = this.ladder[rung];
    this._log(`probe ${id}`);
    let done = false;
    const finish = (ok, why) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      p.loader.abort();
      this.probe = null;
      if (this.stopped) return;
      if (ok && this.current) {
        this._log(`upgrade ${this.ladder[this.rung]} → ${id}`);
        this.upgrades++;
        this.doneBytes = (this.doneBytes || 0) + this.current.loader.bytes;
        this.current.loader.abort();
        this.current = null;
        this.rung = rung;
        this.failures = 0;
        this.drops = [];
        this.upgradeBackoff = this.o.upgradeAfter;
        this._connect();
      } else {
        this._log(`probe ${id} failed: ${why}`);
        this.upgradeBackoff = Math.min(this.o.maxUpgradeBackoff, this.upgradeBackoff * 2);
        this.stableSince = Date.now();
      }
    };
    const p = this._open(rung, (c, ev) => {
      if (ev.kind === 'fragment') finish(true);
    }, (c, info) => finish(false, info.reason || `closed ${info.code}`));
    this.probe = p;
    const timer = setTimeout(() => finish(false, `no fragment within ${this.o.firstDataTimeout} ms`), this.o.firstDataTimeout);
  }
}
