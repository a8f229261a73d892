// mse.js — the Media Source Extensions appender. It knows nothing of
// transports: it is given init segments and fragments, in order, and
//   - queues appendBuffer()/remove() one at a time on `updateend`;
//   - keeps one continuous media timeline: when a fragment's decode time jumps
//     (a publisher restarted, the relay skipped ahead, the relay restarted),
//     `timestampOffset` is moved so the fragment starts where the buffer ends;
//   - switches codecs on a new init: `changeType()` when the track layout
//     stays the same, otherwise a fresh MediaSource;
//   - trims the back buffer (keeps `backBuffer` seconds behind currentTime);
//   - on QuotaExceededError evicts and retries.

import { parseFragmentTiming, parseInit } from './mp4.js';

const JUMP_FORWARD = 0.5; // s: a larger forward jump in decode time is a discontinuity
const JUMP_BACK = 0.05; // s: any backward jump larger than this is one

function sameLayout(a, b) {
  const count = (ts, k) => ts.filter((t) => t.kind === k).length;
  return a && b && count(a, 'video') === count(b, 'video') && count(a, 'audio') === count(b, 'audio');
}

export class MseAppender {
  /**
   * @param {HTMLVideoElement} video
   * @param {object} o  backBuffer (s), onError(err), onReset(reason), onQuota(), log(msg)
   */
  constructor(video, o = {}) {
    this.video = video;
    this.o = { backBuffer: 10, ...o };
    this.ms = null;
    this.sb = null;
    this.url = null;
    this.mime = null;
    this.tracks = null;
    this.initBytes = null;
    this.queue = [];
    this.offset = 0; // the timestampOffset applied to what comes next
    this.ends = new Map(); // trackId → end of its last appended fragment (presentation s)
    this.stats = { appends: 0, bytes: 0, discontinuities: 0, quota: 0, errors: 0, recreated: 0, changeTypes: 0, removes: 0 };
    this.lastError = null;
  }

  static isSupported(mime) {
    const MS = window.ManagedMediaSource || window.MediaSource;
    return !!MS && (!mime || MS.isTypeSupported(mime));
  }

  /** True once a SourceBuffer exists and has data. */
  get ready() {
    return !!this.sb && this.stats.appends > 0;
  }

  buffered() {
    try {
      return this.sb ? this.sb.buffered : this.video.buffered;
    } catch {
      return this.video.buffered;
    }
  }

  /** The end of the buffered range that holds currentTime (or the last range's end). */
  bufferedEnd() {
    const b = this.video.buffered;
    if (!b.length) return 0;
    const ct = this.video.currentTime;
    for (let i = 0; i < b.length; i++) if (ct >= b.start(i) - 0.001 && ct <= b.end(i)) return b.end(i);
    return b.end(b.length - 1);
  }

  /**
   * A new init segment. `fresh` says this starts a new life of the stream
   * (new epoch or recovery), so the next fragment is placed at the buffer's end.
   */
  init(mime, bytes) {
    const tracks = parseInit(bytes);
    if (this.initBytes && mime === this.mime && bytes.length === this.initBytes.length && bytes.every((v, i) => v === this.initBytes[i])) {
      return 'same';
    }
    if (mime && !MseAppender.isSupported(mime)) {
      const e = new Error(`this browser cannot play ${mime}`);
      e.unsupported = true;
      throw e;
    }
    let how;
    if (!this.ms || !this.sb) {
      this._create(mime);
      how = 'create';
    } else if (mime === this.mime || !mime) {
      how = 'reinit';
    } else if (typeof SourceBuffer !== 'undefined' && SourceBuffer.prototype.changeType && sameLayout(tracks, this.tracks)) {
      this.queue.push({ op: 'changeType', mime });
      this.stats.changeTypes++;
      how = 'changeType';
    } else {
      this._create(mime);
      how = 'recreate';
    }
    this.mime = mime || this.mime;
    this.tracks = tracks;
    this.initBytes = bytes;
    this.queue.push({ op: 'append', data: bytes, init: true });
    this._pump();
    return how;
  }

  /** Forget the timeline (the next fragment defines where it goes). */
  _create(mime) {
    if (this.ms) this.stats.recreated++;
    this._detach();
    const MS = window.ManagedMediaSource || window.MediaSource;
    const ms = new MS();
    this.ms = ms;
    this.queue = [];
    this.ends = new Map();
    this.offset = 0;
    this.firstPlaced = false;
    if (window.ManagedMediaSource && ms instanceof window.ManagedMediaSource) this.video.disableRemotePlayback = true;
    this.url = URL.createObjectURL(ms);
    ms.addEventListener('sourceopen', () => {
      if (this.ms !== ms) return;
      try {
        this.sb = ms.addSourceBuffer(this.mime);
        this.sb.mode = 'segments';
        this.sb.addEventListener('updateend', () => this._pump());
        this.sb.addEventListener('error', () => this._error(new Error('SourceBuffer error')));
      } catch (e) {
        this._error(e);
        return;
      }
      this._pump();
    }, { once: true });
    this.mime = mime;
    this.video.src = this.url;
  }

  _detach() {
    if (this.url) URL.revokeObjectURL(this.url);
    this.sb = null;
    this.ms = null;
    this.url = null;
  }

  /** Tear everything down and start over with the last init (after an error). */
  recover() {
    const mime = this.mime;
    const init = this.initBytes;
    this.initBytes = null;
    this.ms = null;
    this.sb = null;
    if (init) this.init(mime, init);
  }

  append(bytes, meta = {}) {
    if (!this.tracks) return false;
    const timing = parseFragmentTiming(bytes, this.tracks);
    // Place it: when this fragment does not follow on from what the buffer
    // holds for its track, move timestampOffset so that it starts where the
    // buffer ends (no gap, no overlap), whatever its own decode time.
    let jump = !this.firstPlaced;
    let start = Infinity;
    for (const tr of timing) {
      const t = this.tracks.find((x) => x.id === tr.trackId);
      if (!t || !t.timescale || tr.baseTime === null) continue;
      const s = tr.baseTime / t.timescale;
      start = Math.min(start, s);
      const end = this.ends.get(tr.trackId);
      if (end !== undefined) {
        const d = s + this.offset - end;
        if (d > JUMP_FORWARD || d < -JUMP_BACK) jump = true;
      }
    }
    if (jump && start !== Infinity) {
      if (this.firstPlaced) {
        let edge = 0;
        for (const e of this.ends.values()) edge = Math.max(edge, e);
        this.offset = edge - start;
        this.stats.discontinuities++;
        if (this.o.log) this.o.log(`timeline: fragment at ${start.toFixed(3)} s placed at ${edge.toFixed(3)} s`);
      } else {
        // The first fragment keeps its own time (unless it is huge, which some
        // encoders write; MSE copes either way).
        this.offset = 0;
      }
      this.firstPlaced = true;
    }
    for (const tr of timing) {
      const t = this.tracks.find((x) => x.id === tr.trackId);
      if (!t || !t.timescale || tr.baseTime === null) continue;
      const end = (tr.baseTime + tr.duration) / t.timescale + this.offset;
      this.ends.set(tr.trackId, end);
    }
    this.queue.push({ op: 'append', data: bytes, offset: this.offset, meta });
    this._pump();
    return true;
  }

  /** Pending bytes not yet handed to the SourceBuffer. */
  get queued() {
    return this.queue.length;
  }

  _pump() {
    const sb = this.sb;
    if (!sb || sb.updating || !this.ms || this.ms.readyState !== 'open') return;
    const job = this.queue.shift();
    if (!job) {
      this._maybeTrim();
      return;
    }
    try {
      if (job.op === 'changeType') {
        sb.changeType(job.mime);
        this._pump();
        return;
      }
      if (job.op === 'remove') {
        this.stats.removes++;
        sb.remove(job.start, job.end);
        return;
      }
      if (job.offset !== undefined && sb.timestampOffset !== job.offset) sb.timestampOffset = job.offset;
      sb.appendBuffer(job.data);
      this.stats.appends++;
      this.stats.bytes += job.data.length;
      if (job.meta && this.o.onAppend) this.o.onAppend(job.meta);
    } catch (e) {
      if (e && e.name === 'QuotaExceededError') {
        this.stats.quota++;
        this.queue.unshift(job);
        this._evict();
        return;
      }
      this._error(e);
    }
  }

  _evict() {
    const v = this.video;
    const b = this.buffered();
    if (!b.length) return;
    const start = b.start(0);
    const ct = v.currentTime;
    let end;
    if (ct - start > 1) {
      end = ct - 1;
    } else {
      // Nothing behind us: we are far behind live. Drop most of what is
      // ahead; the latency controller then seeks to the live edge.
      end = b.end(b.length - 1) - 1;
      if (this.o.onQuota) this.o.onQuota();
    }
    if (end <= start) return;
    this.queue.unshift({ op: 'remove', start, end });
    this._pump();
  }

  _maybeTrim() {
    const b = this.buffered();
    if (!b.length || !this.sb) return;
    const keep = this.o.backBuffer;
    const ct = this.video.currentTime;
    if (ct - b.start(0) > keep + 5) {
      this.queue.push({ op: 'remove', start: 0, end: ct - keep });
      this._pump();
    }
  }

  _error(e) {
    this.stats.errors++;
    this.lastError = String(e && e.message || e);
    if (this.o.onError) this.o.onError(e);
  }
}
