// latency.js — keeps playback near the live edge (after hls.js's
// latency-controller): a target buffer ahead of currentTime that adapts to how
// bursty arrivals are, a gentle playbackRate catch-up when behind it, a seek
// to the live edge when far behind, and nudges over small gaps and stalls.
// It reads the <video> element only; it knows nothing of transports.

export class LatencyController {
  /**
   * @param {HTMLVideoElement} video
   * @param {object} o  minAhead (s), maxRate, maxAhead (s, seek beyond it), fixedTarget (s or null), log
   */
  constructor(video, o = {}) {
    this.video = video;
    this.o = { minAhead: 0.2, maxRate: 1.15, maxAhead: 1.5, fixedTarget: null, ...o };
    this.arrivals = []; // [Date.now() of each fragment arrival]
    this.stats = { liveSeeks: 0, gapJumps: 0, nudges: 0, rate: 1 };
    this.lastCt = -1;
    this.lastMove = 0;
    this.started = false;
    this.catchingUp = false;
  }

  /** Called for every fragment received (the local time it came in). */
  noteArrival(at) {
    this.arrivals.push(at);
    const cut = at - 10000;
    while (this.arrivals.length && this.arrivals[0] < cut) this.arrivals.shift();
  }

  /**
   * The buffer we aim to hold ahead of currentTime: enough to ride over the
   * usual spacing between arrivals (ws/stream: one fragment; polling: one
   * poll period), measured as the 90th percentile of recent gaps.
   */
  target() {
    if (this.o.fixedTarget !== null) return this.o.fixedTarget;
    const a = this.arrivals;
    if (a.length < 5) return Math.max(this.o.minAhead, 0.3);
    const gaps = [];
    for (let i = 1; i < a.length; i++) gaps.push(a[i] - a[i - 1]);
    gaps.sort((x, y) => x - y);
    const p90 = gaps[Math.floor(gaps.length * 0.9)] / 1000;
    return Math.min(3, Math.max(this.o.minAhead, 0.1 + 1.2 * p90));
  }

  /** Where currentTime is: {idx, ahead, end, last} over video.buffered. */
  where() {
    const v = this.video;
    const b = v.buffered;
    const ct = v.currentTime;
    for (let i = 0; i < b.length; i++) {
      if (ct >= b.start(i) - 0.001 && ct < b.end(i)) return { idx: i, ahead: b.end(i) - ct, end: b.end(i), last: b.end(b.length - 1) };
    }
    return { idx: -1, ahead: 0, end: ct, last: b.length ? b.end(b.length - 1) : 0 };
  }

  /** First play after data arrived: start `target` behind the buffered end. */
  startIfReady() {
    const v = this.video;
    const b = v.buffered;
    if (this.started || !b.length) return;
    const end = b.end(b.length - 1);
    const start = b.start(b.length - 1);
    if (end - start < Math.min(0.1, this.target())) return;
    this.started = true;
    v.currentTime = Math.max(start, end - this.target());
    this._play();
  }

  reset() {
    this.started = false;
    this.video.playbackRate = 1;
    this.stats.rate = 1;
  }

  _play() {
    const p = this.video.play();
    if (p && p.catch) {
      p.then(() => { this.blocked = false; }, (e) => {
        this.blocked = e && e.name === 'NotAllowedError';
      });
    }
  }

  _seek(t, why) {
    if (this.o.log) this.o.log(`seek ${this.video.currentTime.toFixed(3)} → ${t.toFixed(3)} (${why})`);
    this.video.currentTime = t;
  }

  _rate(r) {
    if (Math.abs(this.video.playbackRate - r) > 0.001) this.video.playbackRate = r;
    this.stats.rate = r;
  }

  /** Runs every ~100 ms. */
  tick(now = performance.now()) {
    const v = this.video;
    if (!this.started) return this.startIfReady();
    const b = v.buffered;
    if (!b.length) return;
    const ct = v.currentTime;
    if (ct !== this.lastCt) {
      this.lastCt = ct;
      this.lastMove = now;
    }
    const w = this.where();
    const target = this.target();
    if (w.idx < 0) {
      // In a hole: jump to the next range if it is near, else to the live edge.
      for (let i = 0; i < b.length; i++) {
        if (b.start(i) > ct) {
          this.stats.gapJumps++;
          this._seek(b.start(i) - ct < 5 ? b.start(i) + 0.01 : Math.max(b.start(i), w.last - target), 'gap');
          return;
        }
      }
      return; // behind us only: wait for data
    }
    if (w.ahead < 0.15 && w.idx + 1 < b.length && b.start(w.idx + 1) - w.end < 1) {
      // A small hole right ahead (e.g. audio and video ranges not meeting).
      this.stats.gapJumps++;
      this._seek(b.start(w.idx + 1) + 0.01, 'small gap');
      return;
    }
    const behind = w.last - ct; // to the live edge, across any holes
    if (behind > Math.max(this.o.maxAhead, target * 4)) {
      this.stats.liveSeeks++;
      this._rate(1);
      this._seek(Math.max(b.start(b.length - 1), w.last - target), `behind by ${behind.toFixed(2)} s`);
      return;
    }
    if (!v.paused && now - this.lastMove > 1000 && w.ahead > 0.3 && v.readyState < 3) {
      // Stuck although data is there: nudge (hls.js gap-controller style).
      this.stats.nudges++;
      this.lastMove = now;
      this._seek(ct + 0.1, 'stall nudge');
      return;
    }
    if (v.paused && !this.userPaused) this._play();
    // Catch up gently when we hold more than the target.
    const excess = w.ahead - target;
    if (excess > 0.08 || (this.catchingUp && excess > 0.02)) {
      this.catchingUp = true;
      this._rate(Math.min(this.o.maxRate, 1 + 0.03 + excess * 0.25));
    } else {
      this.catchingUp = false;
      this._rate(1);
    }
  }
}
