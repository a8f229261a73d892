// native-hls.js — the rung for browsers that play HLS themselves but have no
// Media Source Extensions (iPhone Safari before ManagedMediaSource, some TV
// browsers): the <video> element is given /live/NAME/index.m3u8 and the
// browser's own LL-HLS client does the rest. None of the push transports,
// seq bookkeeping or MSE appender is involved; stats() reports what the
// <video> element and the playlist's program date-time tell.

export class NativeHls {
  /** True where there is no MSE/ManagedMediaSource but the browser plays HLS. */
  static isSupported(video) {
    const mse = !!(window.ManagedMediaSource || window.MediaSource);
    return !mse && !!video.canPlayType && video.canPlayType('application/vnd.apple.mpegurl') !== '';
  }

  /**
   * @param {HTMLVideoElement} video
   * @param {object} o  name, relay (origin; default this page's), query
   *                    (extra query string, e.g. a signed URL's exp/sig), onLog
   */
  constructor(video, o) {
    this.video = video;
    this.o = o;
    this.offset = 0; // relay clock − local clock, ms
    this.state = 'connecting';
    this.errors = 0;
    this.log = [];
  }

  url() {
    const base = this.o.relay || '';
    const q = this.o.query ? `?${this.o.query}` : '';
    return `${base}/live/${encodeURIComponent(this.o.name)}/index.m3u8${q}`;
  }

  _log(line) {
    this.log.push(line);
    if (this.log.length > 200) this.log.shift();
    this.o.onLog?.(line);
  }

  async _syncClock() {
    try {
      const t0 = Date.now();
      const text = await (await fetch(`${this.o.relay || ''}/api/time`, { cache: 'no-store' })).text();
      const t1 = Date.now();
      const relay = Date.parse(text);
      if (isFinite(relay)) this.offset = relay - (t0 + t1) / 2;
    } catch (e) {
      this._log(`relay clock: ${e.message}`);
    }
  }

  start() {
    const v = this.video;
    v.addEventListener('playing', () => { this.state = 'playing'; });
    v.addEventListener('waiting', () => { this.state = 'buffering'; });
    v.addEventListener('error', () => {
      this.errors += 1;
      this.state = `error ${v.error ? v.error.code : ''}`;
      this._log(`video error ${v.error ? v.error.message || v.error.code : ''}`);
    });
    v.src = this.url();
    this._log(`native HLS: ${v.src}`);
    v.play().catch((e) => this._log(`play(): ${e.message}`));
    this._syncClock();
    this.clockTimer = setInterval(() => this._syncClock(), 30000);
  }

  stop() {
    clearInterval(this.clockTimer);
    this.video.removeAttribute('src');
    this.video.load();
  }

  /** Delay behind live on the relay's clock: now − program date-time on screen. */
  delay() {
    const v = this.video;
    const start = v.getStartDate ? v.getStartDate().getTime() : NaN;
    if (!isFinite(start)) return null;
    return (Date.now() + this.offset - (start + v.currentTime * 1000)) / 1000;
  }

  stats() {
    const v = this.video;
    const q = v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : null;
    const b = v.buffered.length ? v.buffered.end(v.buffered.length - 1) - v.currentTime : 0;
    return {
      transport: 'LL-HLS',
      state: this.state,
      delay: this.delay(),
      currentTime: v.currentTime,
      bufferAhead: Math.max(0, b),
      playbackRate: v.playbackRate,
      decodedFrames: q ? q.totalVideoFrames : null,
      droppedFrames: q ? q.droppedVideoFrames : null,
      errors: this.errors,
      // The push transports' figures do not exist here; "appended" is
      // whether anything played (the page's "playing" check reads it).
      bitrate: 0, lastSeq: null, skips: 0, gaps: 0, repeats: 0, reconnects: 0, fallbacks: 0,
      appended: v.currentTime > 0 ? 1 : 0,
      publisher: null,
    };
  }
}
