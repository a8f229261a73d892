// player.js — the relaycast player: joins the transport chooser (which yields
// hello/init/fragment/control events in order) to the MSE appender and the
// latency controller, and keeps the books: which seqs were appended in which
// epoch, gaps, repeats, skips, and the delay behind live on the relay's clock.
//
//   TransportChooser ──events──▶ Player (seq bookkeeping, relay clock)
//                                  ├──▶ MseAppender (SourceBuffer)
//                                  └──▶ LatencyController (<video> rate/seeks)

import { TransportChooser } from './transport.js';
import { MseAppender } from './mse.js';
import { LatencyController } from './latency.js';

/**
 * The relay's clock, from stamps it gave us (hello.server_time and each
 * fragment's `t`). A stamp taken by the relay before we received it says
 * relay_now ≥ stamp at that local moment, so (stamp − local receipt time) is a
 * lower bound of the offset; the largest recent one is the estimate.
 */
export class RelayClock {
  constructor() {
    this.samples = []; // [localAt, offset]
    this.offset = null;
  }

  observe(relayMs, localMs) {
    if (typeof relayMs !== 'number' || !isFinite(relayMs)) return;
    this.samples.push([localMs, relayMs - localMs]);
    const cut = localMs - 30000;
    while (this.samples.length > 1 && this.samples[0][0] < cut) this.samples.shift();
    let best = -Infinity;
    for (const s of this.samples) best = Math.max(best, s[1]);
    this.offset = best;
  }

  now() {
    return Date.now() + (this.offset ?? 0);
  }
}

const MAX_SEQS = 50000;

export class Player {
  /**
   * @param {HTMLVideoElement} video
   * @param {object} o  name, transport (forced id or null), latency (target s or null),
   *                    relay (the relay's origin, e.g. 'https://relay.example:8080',
   *                    when the page is served from elsewhere; default: this page's),
   *                    onState(text), onLog(msg), chooser overrides (upgradeAfter…)
   */
  constructor(video, o) {
    this.video = video;
    this.o = o;
    this.name = o.name;
    this.clock = new RelayClock();
    this.log = [];
    this.epoch = null;
    this.lastSeq = null;
    this.newestT = null;
    this.initVersion = null;
    this.mime = null;
    this.seqs = []; // [{epoch, seq}]
    this.needKey = true;
    this.pendingSkip = null;
    this.state = 'starting';
    this.publisher = 'unknown';
    this.n = { appended: 0, gaps: 0, repeats: 0, skips: 0, resets: 0, droppedNonKey: 0, inits: 0, mseErrors: 0, recoveries: 0, stalls: 0, bytes: 0 };
    this.rx = []; // [at, bytes] for the bitrate
    this.delays = []; // recent delay samples (s)
    this.appender = new MseAppender(video, {
      backBuffer: 10,
      log: (m) => this._log(m),
      onError: (e) => this._mseError(e),
      onQuota: () => this._log('quota exceeded: evicting'),
    });
    this.latency = new LatencyController(video, {
      fixedTarget: o.latency ?? null,
      log: (m) => this._log(m),
    });
    this.chooser = new TransportChooser(this.name, {
      forced: o.transport || null,
      origin: o.relay || null,
      onEvent: (ev, id) => this._event(ev, id),
      onState: (s) => this._setState(s),
      onFatal: (why) => this._setState(why),
      // `after` with the epoch it belongs to: a relay that restarted (a new
      // epoch) ignores it and starts us at a keyframe instead of mid-group.
      resume: () => ({ after: this.lastSeq, epoch: this.lastSeq === null ? null : this.epoch }),
      log: (m) => this._log(m),
      ...(o.chooser || {}),
    });
    // A stall is playback that had started and then ran dry; the 'waiting'
    // before the first frame, and the one a seek causes, are not stalls.
    video.addEventListener('playing', () => { this.hasPlayed = true; });
    video.addEventListener('waiting', () => { if (this.latency.started && this.hasPlayed && !video.seeking) this.n.stalls++; });
    video.addEventListener('error', () => this._mseError(video.error ? new Error(`media error ${video.error.code}: ${video.error.message}`) : new Error('media error')));
  }

  start() {
    this.chooser.start();
    this.ticker = setInterval(() => this._tick(), 100);
  }

  stop() {
    this.chooser.stop();
    clearInterval(this.ticker);
  }

  _log(msg) {
    const line = `${new Date().toISOString().slice(11, 23)} ${msg}`;
    this.log.push(line);
    if (this.log.length > 300) this.log.shift();
    if (this.o.onLog) this.o.onLog(line);
  }

  _setState(s) {
    this.state = s;
    if (this.o.onState) this.o.onState(s);
  }

  _event(ev, transport) {
    switch (ev.kind) {
      case 'hello': return this._hello(ev);
      case 'init': return this._init(ev);
      case 'fragment': return this._fragment(ev);
      case 'skip':
        this.n.skips++;
        this.pendingSkip = { to: ev.to };
        this._log(`relay skip ${ev.from} → ${ev.to} (${ev.skipped} fragments) on ${transport}`);
        return undefined;
      case 'publisher':
        this.publisher = ev.state;
        this._setState(ev.state === 'gone' ? 'publisher gone, waiting' : 'playing');
        this._log(`publisher ${ev.state}`);
        return undefined;
      case 'end':
        this._setState(`stream ended${ev.reason ? `: ${ev.reason}` : ''}`);
        this._log(`end ${ev.reason || ''}`);
        return undefined;
      default:
        return undefined;
    }
  }

  _hello(ev) {
    if (typeof ev.server_time === 'number') this.clock.observe(ev.server_time, ev.recvAt);
    if (ev.epoch !== undefined && ev.epoch !== null) {
      if (this.epoch !== null && ev.epoch !== this.epoch) {
        // A new life of the stream: seqs start afresh. Not a gap.
        this.n.resets++;
        this._log(`epoch ${this.epoch} → ${ev.epoch}: resetting seq bookkeeping`);
        this.lastSeq = null;
        this.pendingSkip = null;
        this.needKey = true;
      }
      this.epoch = ev.epoch;
    }
    if (ev.resumed === false && this.lastSeq !== null) this.pendingSkip = { fromHello: true };
    if (ev.live === false) this._setState('waiting for the publisher');
  }

  _init(ev) {
    let mime = ev.mime;
    if (!mime && ev.codecs) mime = `video/mp4; codecs="${ev.codecs}"`;
    if (!mime) mime = this.mime;
    try {
      const how = this.appender.init(mime, ev.bytes);
      if (how !== 'same') {
        this.n.inits++;
        this._log(`init v${ev.version} ${mime}: ${how}`);
        this.needKey = true;
        if (how === 'create' || how === 'recreate') this.latency.reset();
      }
      this.mime = mime;
      this.initVersion = ev.version;
    } catch (e) {
      this._log(`init failed: ${e.message || e}`);
      if (e.unsupported) {
        // Nothing of this stream can play here: stop downloading it (a
        // transport left open would keep fetching every fragment for
        // nothing) and say so. A reload tries again.
        this.unsupported = mime;
        this.stop();
        this._log('transport stopped: the browser cannot decode this stream');
      }
      this._setState(String(e.message || e));
    }
  }

  _fragment(ev) {
    const seq = ev.seq;
    this.latency.noteArrival(ev.recvAt);
    this.rx.push([ev.recvAt, ev.bytes.length]);
    this.n.bytes += ev.bytes.length;
    if (typeof ev.t === 'number') this.clock.observe(ev.t, ev.recvAt);
    if (seq !== null && seq !== undefined && this.lastSeq !== null && seq <= this.lastSeq) {
      this.n.repeats++;
      this._log(`repeat: seq ${seq} ≤ last ${this.lastSeq}, dropped`);
      return;
    }
    if (this.needKey && !ev.key && seq !== null && seq !== undefined) {
      // After a (re)start the first fragment must open a group.
      this.n.droppedNonKey++;
      if (seq !== null && seq !== undefined) this.lastSeq = seq;
      return;
    }
    if (seq !== null && seq !== undefined && this.lastSeq !== null && seq !== this.lastSeq + 1) {
      if (this.pendingSkip) {
        if (this.pendingSkip.fromHello) this.n.skips++;
      } else {
        this.n.gaps++;
        this._log(`gap: seq ${seq} after ${this.lastSeq}`);
      }
    }
    this.pendingSkip = null;
    if (!this.appender.append(ev.bytes, { seq })) return;
    this.needKey = false;
    if (seq !== null && seq !== undefined) {
      this.lastSeq = seq;
      this.seqs.push({ epoch: this.epoch, seq });
      if (this.seqs.length > MAX_SEQS) this.seqs.splice(0, this.seqs.length - MAX_SEQS);
    }
    if (typeof ev.t === 'number') this.newestT = ev.t;
    this.n.appended++;
    if (this.state !== 'playing' && this.publisher !== 'gone') this._setState('playing');
  }

  _mseError(e) {
    this.n.mseErrors++;
    this._log(`MSE error: ${e && e.message || e}`);
    if (this.n.recoveries < 20) {
      this.n.recoveries++;
      this.needKey = true;
      this.latency.reset();
      this.appender.recover();
    }
  }

  _tick() {
    this.latency.tick();
    const d = this.delay();
    if (d !== null) {
      this.delays.push(d);
      if (this.delays.length > 300) this.delays.shift();
    }
  }

  /** Seconds behind live on the relay's clock, or null before any fragment. */
  delay() {
    if (this.newestT === null || !this.latency.started) return null;
    const v = this.video;
    const w = this.latency.where();
    const ahead = w.idx < 0 ? 0 : Math.max(0, w.last - v.currentTime);
    return Math.max(0, (this.clock.now() - this.newestT) / 1000) + ahead;
  }

  bitrate() {
    const now = Date.now();
    while (this.rx.length && this.rx[0][0] < now - 2000) this.rx.shift();
    let sum = 0;
    for (const r of this.rx) sum += r[1];
    return (sum * 8) / 2;
  }

  stats() {
    const v = this.video;
    const q = v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : null;
    const w = this.latency.where();
    const sorted = [...this.delays].sort((a, b) => a - b);
    const pct = (p) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] : null);
    const c = this.chooser;
    return {
      transport: c.id,
      state: this.state,
      epoch: this.epoch,
      lastSeq: this.lastSeq,
      appended: this.n.appended,
      gaps: this.n.gaps,
      repeats: this.n.repeats,
      skips: this.n.skips,
      delay: this.delay(),
      delayP50: pct(0.5),
      delayP90: pct(0.9),
      targetAhead: this.latency.target(),
      reconnects: c.reconnects,
      // HTTP requests of the current polling connection (null on ws/stream).
      requests: c.current && typeof c.current.loader.requests === 'number' ? c.current.loader.requests : null,
      fallbacks: c.fallbacks,
      upgrades: c.upgrades,
      probes: c.probes,
      resets: this.n.resets,
      inits: this.n.inits,
      initVersion: this.initVersion,
      mime: this.mime,
      droppedNonKey: this.n.droppedNonKey,
      bufferAhead: w.idx < 0 ? 0 : w.ahead,
      currentTime: v.currentTime,
      playbackRate: v.playbackRate,
      paused: v.paused,
      bitrate: this.bitrate(),
      bytes: this.n.bytes,
      decodedFrames: q ? q.totalVideoFrames : null,
      droppedFrames: q ? q.droppedVideoFrames : null,
      stalls: this.n.stalls,
      liveSeeks: this.latency.stats.liveSeeks,
      gapJumps: this.latency.stats.gapJumps,
      nudges: this.latency.stats.nudges,
      discontinuities: this.appender.stats.discontinuities,
      changeTypes: this.appender.stats.changeTypes,
      recreated: this.appender.stats.recreated,
      mseErrors: this.n.mseErrors,
      mseError: this.appender.lastError,
      mediaError: v.error ? `${v.error.code}: ${v.error.message}` : null,
      clockOffset: this.clock.offset,
      publisher: this.publisher,
    };
  }

  /** Appended seqs in order, each with the epoch it belongs to (for tests). */
  appendedSeqs() {
    return this.seqs.slice();
  }
}
