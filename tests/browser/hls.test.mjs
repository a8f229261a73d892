// LL-HLS and DASH from the relay in real players, in headless Chromium:
// hls.js (low-latency mode) plays /live/NAME/index.m3u8 and dash.js plays
// /live/NAME/manifest.mpd, each for at least 10 s, with 100 ms fragments
// (= LL-HLS parts) and 1 s GOPs. The delay behind live is measured against
// the relay's clock (GET /api/time): relay now − the program date-time of
// the frame on screen (hls.js `playingDate`, from EXT-X-PROGRAM-DATE-TIME),
// and printed; the figure is not asserted (benchmarks hold timing claims).

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startRelay, launchBrowser, newPage, ffmpegPublish, sleep, waitFor, stats, getJson } from './lib.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const hlsJs = fs.readFileSync(path.join(here, 'node_modules/hls.js/dist/hls.min.js'), 'utf8');
const dashJs = fs.readFileSync(path.join(here, 'node_modules/dashjs/dist/modern/umd/dash.all.min.js'), 'utf8');

/** The relay's clock as seen from the page, corrected by half the round trip, ms. */
const relayNowFn = `async () => {
  const t0 = performance.now();
  const text = await (await fetch('/api/time', { cache: 'no-store' })).text();
  const rtt = performance.now() - t0;
  return Date.parse(text) + rtt / 2;
}`;

const median = (xs) => { const v = [...xs].sort((a, b) => a - b); return v[Math.floor(v.length / 2)]; };

describe('HLS and DASH players', () => {
  let relay;
  let browser;
  const pubs = [];
  before(async () => {
    relay = await startRelay({ args: ['--no-demo'] });
    browser = await launchBrowser();
  });
  after(async () => {
    for (const p of pubs) await p.stopNow();
    await browser?.close();
    await relay?.stop();
  });

  test('hls.js plays index.m3u8 in low-latency mode', { timeout: 90000 }, async () => {
    const name = 'llhls';
    pubs.push(ffmpegPublish(relay.base, name, { fragMs: 100 }));
    const page = await newPage(browser);
    try {
      await page.goto(`${relay.base}/api/time`);
      await page.setContent('<video id="v" muted autoplay playsinline></video>');
      await page.addScriptTag({ content: hlsJs });
      await page.evaluate(async (url) => {
        const v = document.getElementById('v');
        const hls = new window.Hls({ lowLatencyMode: true, backBufferLength: 10 });
        window.hls = hls;
        window.hlsErrors = [];
        hls.on(window.Hls.Events.ERROR, (_, d) => window.hlsErrors.push(`${d.type}/${d.details}${d.fatal ? ' FATAL' : ''}`));
        hls.loadSource(url);
        hls.attachMedia(v);
        v.play().catch(() => {});
      }, `${relay.base}/live/${name}/index.m3u8?wait=10`);
      await waitFor(() => page.evaluate(() => document.getElementById('v').currentTime > 0.5), { timeout: 30000, what: 'hls.js playing' });
      const t0 = await page.evaluate(() => document.getElementById('v').currentTime);
      const delays = [];
      for (let i = 0; i < 22; i++) {
        await sleep(500);
        const d = await page.evaluate(async (src) => {
          const relayNow = await eval(`(${src})`)();
          const pd = window.hls.playingDate;
          return pd ? (relayNow - pd.getTime()) / 1000 : null;
        }, relayNowFn);
        if (typeof d === 'number') delays.push(d);
      }
      const s = await page.evaluate(() => {
        const v = document.getElementById('v');
        const q = v.getVideoPlaybackQuality();
        return { t: v.currentTime, frames: q.totalVideoFrames, dropped: q.droppedVideoFrames, latency: window.hls.latency, errors: window.hlsErrors, ll: window.hls.lowLatencyMode };
      });
      assert.ok(s.t - t0 >= 10, `played ${s.t - t0} s`);
      assert.ok(s.frames > 200, `decoded ${s.frames} frames`);
      assert.ok(delays.length > 10, 'playingDate known');
      assert.equal(s.errors.filter((e) => e.includes('FATAL')).length, 0, s.errors.join(', '));
      console.log(`# hls.js LL-HLS, 100 ms parts: delay behind live (relay clock) p50 ${(median(delays) * 1000).toFixed(0)} ms, ` +
        `max ${(Math.max(...delays) * 1000).toFixed(0)} ms; hls.latency ${s.latency?.toFixed(2)} s; frames ${s.frames}, dropped ${s.dropped}; ` +
        `non-fatal errors: ${s.errors.length ? s.errors.join(', ') : 'none'}`);
    } finally {
      for (const p of pubs.splice(0)) await p.stopNow();
      await page.context().close().catch(() => {});
    }
  });

  test('the player plays LL-HLS natively where MSE is missing', { timeout: 90000 }, async () => {
    const name = 'native';
    pubs.push(ffmpegPublish(relay.base, name, { fragMs: 100 }));
    const page = await newPage(browser);
    try {
      // A browser without MSE/ManagedMediaSource that plays HLS itself
      // (Chromium does: canPlayType('application/vnd.apple.mpegurl') is "maybe").
      await page.addInitScript(() => {
        for (const k of ['MediaSource', 'ManagedMediaSource', 'WebKitMediaSource']) {
          try { delete window[k]; } catch { /* not there */ }
          window[k] = undefined;
        }
      });
      // Chromium's own HLS demuxer fails (DEMUXER_ERROR_COULD_NOT_PARSE) on a
      // playlist that holds one complete segment so far; join 4 s in.
      await waitFor(() => getJson(`${relay.base}/live/${name}/info`).then((i) => i.seq > 40), { timeout: 20000, what: 'the stream' });
      await page.goto(`${relay.base}/watch/${name}?debug=1`);
      await waitFor(async () => (await stats(page))?.currentTime > 1, { timeout: 30000, what: 'native HLS playing' });
      const t0 = (await stats(page)).currentTime;
      await sleep(5000);
      const s = await stats(page);
      assert.equal(s.transport, 'LL-HLS');
      assert.ok(s.currentTime - t0 > 3, `played ${s.currentTime - t0} s`);
      assert.match(await page.evaluate(() => document.getElementById('video').currentSrc), /\/live\/native\/index\.m3u8$/);
      assert.equal(s.errors, 0);
      console.log(`# player, native HLS rung (Chromium's own HLS): delay ${s.delay === null ? '?' : Math.round(s.delay * 1000)} ms, frames ${s.decodedFrames}`);
    } finally {
      for (const p of pubs.splice(0)) await p.stopNow();
      await page.context().close().catch(() => {});
    }
  });

  test('dash.js plays manifest.mpd', { timeout: 90000 }, async () => {
    const name = 'dash';
    pubs.push(ffmpegPublish(relay.base, name, { fragMs: 100 }));
    const page = await newPage(browser);
    try {
      await page.goto(`${relay.base}/api/time`);
      await page.setContent('<video id="v" muted autoplay playsinline></video>');
      await page.addScriptTag({ content: dashJs });
      await page.evaluate((url) => {
        const v = document.getElementById('v');
        const p = window.dashjs.MediaPlayer().create();
        window.dashErrors = [];
        p.on(window.dashjs.MediaPlayer.events.ERROR, (e) => window.dashErrors.push(JSON.stringify(e.error || e).slice(0, 200)));
        p.initialize(v, url, true);
        window.dash = p;
      }, `${relay.base}/live/${name}/manifest.mpd?wait=10`);
      await waitFor(() => page.evaluate(() => document.getElementById('v').currentTime > 0.5), { timeout: 30000, what: 'dash.js playing' });
      const t0 = await page.evaluate(() => document.getElementById('v').currentTime);
      const lat = [];
      for (let i = 0; i < 22; i++) {
        await sleep(500);
        const l = await page.evaluate(() => window.dash.getCurrentLiveLatency());
        if (typeof l === 'number' && !Number.isNaN(l)) lat.push(l);
      }
      const s = await page.evaluate(() => {
        const v = document.getElementById('v');
        const q = v.getVideoPlaybackQuality();
        return { t: v.currentTime, frames: q.totalVideoFrames, errors: window.dashErrors };
      });
      assert.ok(s.t - t0 >= 10, `played ${s.t - t0} s; errors: ${s.errors.join(', ')}`);
      assert.ok(s.frames > 200, `decoded ${s.frames} frames`);
      console.log(`# dash.js: live latency (its own figure, UTCTiming = relay clock) p50 ${lat.length ? (median(lat) * 1000).toFixed(0) : '?'} ms; ` +
        `frames ${s.frames}; errors: ${s.errors.length ? s.errors.join(', ') : 'none'}`);
    } finally {
      for (const p of pubs.splice(0)) await p.stopNow();
      await page.context().close().catch(() => {});
    }
  });
});
