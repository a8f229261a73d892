// WHIP (#16): headless Chromium publishes H.264 over WebRTC from
// /broadcast/{name} (fake microphone, and a test picture whose top row codes the publishing
// page's clock); ffprobe decodes /live/NAME.mp4 (h264 + opus); the player
// plays it over every viewer transport in a second page; the delay from the
// publishing page's clock to the picture the player shows is measured by
// reading that clock back out of the played frame (both pages share one clock).
// Then Chromium's own RTCPeerConnection offers VP9 alone, and AV1 alone: ffprobe
// decodes them and the player plays `vp09`/`av01` over WebSocket.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import {
  startRelay, launchBrowser, newPage, waitPlaying, watchAdvance, waitFor, screenshot, diagnose, sleep, median,
} from './lib.mjs';

const run = promisify(execFile);

/** In the player page: how long ago (ms) the publishing page painted the
 * frame shown, from the clock coded in its top row (Date.now() mod 2^20 in
 * 20 cells 28 px wide at x = 40, y = 10..50 of 640×360), or null. */
function readClock() {
  const v = document.querySelector('video');
  if (!v || !v.videoWidth) return null;
  const c = document.createElement('canvas');
  c.width = v.videoWidth;
  c.height = v.videoHeight;
  const g = c.getContext('2d', { willReadFrequently: true });
  g.drawImage(v, 0, 0);
  const k = v.videoWidth / 640;
  const now = Date.now();
  let t = 0;
  for (let i = 0; i < 20; i++) {
    const [r, gg, b] = g.getImageData(Math.round((i * 28 + 54) * k), Math.round(30 * k), 1, 1).data;
    const y = (r + gg + b) / 3;
    if (y > 80 && y < 175) return null; // not clearly black or white: not the clock
    t = t * 2 + (y >= 128 ? 1 : 0);
  }
  const d = (now - t) & 0xfffff;
  return d < 60000 ? d : null;
}

describe('WHIP ingest from Chromium', () => {
  let relay;
  let browser;
  before(async () => {
    relay = await startRelay({ args: ['--webrtc', '127.0.0.1:0'] });
    browser = await launchBrowser(['--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream']);
  });
  after(async () => {
    await browser?.close();
    await relay?.stop();
  });

  test('the broadcast page publishes over WHIP; ffprobe and every player transport get it', { timeout: 120000 }, async () => {
    const pub = await newPage(browser);
    const viewer = await newPage(browser);
    try {
      await pub.goto(`${relay.base}/broadcast/wcam?autostart=1&source=clock`);
      const bs = await waitFor(async () => {
        const s = await pub.evaluate(() => window.relaycastBroadcast.stats());
        return s.state === 'live' && s.whip && s;
      }, { timeout: 20000, what: 'the broadcast page to go live over WHIP' });
      assert.match(bs.mime, /WHIP/);
      assert.equal(bs.recorder, null, 'no MediaRecorder involved');

      const { stdout } = await run('ffprobe', ['-v', 'error', '-count_frames', '-read_intervals', '%+2',
        '-show_entries', 'stream=codec_type,codec_name,nb_read_frames', '-of', 'json', `${relay.base}/live/wcam.mp4`],
      { timeout: 30000 });
      const streams = JSON.parse(stdout).streams;
      const codecs = streams.map((s) => s.codec_name);
      assert.deepEqual(codecs, ['h264', 'opus'], stdout);
      const frames = Object.fromEntries(streams.map((s) => [s.codec_type, Number(s.nb_read_frames)]));
      assert.ok(frames.video > 10 && frames.audio > 10, stdout);
      console.log(`# whip: ffprobe ${codecs.join('+')}, ${frames.video} video / ${frames.audio} audio frames in 2 s`);

      for (const transport of ['ws', 'stream', 'longpoll', 'poll']) {
        await viewer.goto(`${relay.base}/watch/wcam?transport=${transport}`);
        await waitPlaying(viewer, 30000);
        const { last } = await watchAdvance(viewer, 1, 25000);
        assert.ok(last.decodedFrames > 0, transport);
        assert.equal(last.mseErrors, 0, last.mseError);
        // Publisher clock → picture shown by the player.
        const delays = [];
        for (let i = 0; i < 12; i++) {
          const d = await viewer.evaluate(readClock);
          if (typeof d === 'number') delays.push(d);
          await sleep(250);
        }
        assert.ok(delays.length >= 6, `${transport}: read the clock in ${delays.length} of 12 frames`);
        console.log(`# whip → ${transport}: publisher clock to picture ${median(delays)} ms (median of ${delays.length}; min ${Math.min(...delays)}, max ${Math.max(...delays)}); player delay ${Math.round(last.delay * 1000)} ms`);
      }
      await screenshot(pub, 'whip-broadcast');
      await screenshot(viewer, 'whip-watch');
      await pub.click('#stop');
      await waitFor(async () => (await pub.evaluate(() => window.relaycastBroadcast.stats())).state === 'stopped', { timeout: 5000, what: 'stopped' });
      // DELETE ended the session: the stream is no longer live.
      await waitFor(async () => {
        const r = await fetch(`${relay.base}/live/wcam/info`);
        return r.status === 404 || (r.ok && (await r.json()).live === false);
      }, { timeout: 10000, what: 'the stream to end' });
    } catch (e) {
      e.message += `\n--- viewer ---\n${await diagnose(viewer)}\n--- publisher ---\n${await pub.evaluate(() => JSON.stringify(window.relaycastBroadcast && window.relaycastBroadcast.stats())).catch(() => '')}\n${pub.consoleLines.join('\n')}\n--- relay ---\n${relay.log.slice(-40).join('\n')}`;
      throw e;
    } finally {
      await pub.context().close().catch(() => {});
      await viewer.context().close().catch(() => {});
    }
  });

  // Chromium's own WebRTC sender (libvpx VP9 / libaom AV1 as browsers send
  // them: picture ids, dependency descriptors, its keyframe cadence), its
  // offer narrowed to one video codec with setCodecPreferences.
  for (const codec of ['VP9', 'AV1']) {
    test(`Chromium publishes ${codec} over WHIP; ffprobe decodes it and the player plays it`, { timeout: 90000 }, async () => {
      const name = `c${codec.toLowerCase()}`;
      const pub = await newPage(browser);
      const viewer = await newPage(browser);
      try {
        await pub.goto(`${relay.base}/watch/${name}`);
        const r = await pub.evaluate(async ({ codec, name }) => {
          const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 360 }, audio: true });
          const pc = new RTCPeerConnection();
          const vt = pc.addTransceiver(stream.getVideoTracks()[0], { direction: 'sendonly' });
          pc.addTransceiver(stream.getAudioTracks()[0], { direction: 'sendonly' });
          const mime = `video/${codec}`.toLowerCase();
          const caps = RTCRtpSender.getCapabilities('video').codecs.filter((c) => c.mimeType.toLowerCase() === mime);
          if (!caps.length) return { error: `no ${codec} sender in this Chromium` };
          vt.setCodecPreferences(caps);
          await pc.setLocalDescription(await pc.createOffer());
          await new Promise((done) => {
            if (pc.iceGatheringState === 'complete') return done();
            pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && done();
            setTimeout(done, 3000);
          });
          const res = await fetch(`/whip/${name}`, { method: 'POST', headers: { 'content-type': 'application/sdp' }, body: pc.localDescription.sdp });
          const answer = await res.text();
          if (res.status !== 201) return { error: `${res.status} ${answer}` };
          await pc.setRemoteDescription({ type: 'answer', sdp: answer });
          window.whipPc = pc;
          const offered = [...pc.localDescription.sdp.matchAll(/a=rtpmap:\d+ ([^/]+)\/90000/g)].map((m) => m[1]);
          return { offered, answer };
        }, { codec, name });
        assert.ok(!r.error, r.error);
        assert.ok(r.offered.includes(codec) && !r.offered.includes('H264'), r.offered.join(' '));
        assert.match(r.answer, new RegExp(`${codec}/90000`));

        const { stdout } = await waitFor(async () => run('ffprobe', ['-v', 'error', '-count_frames', '-read_intervals', '%+2',
          '-show_entries', 'stream=codec_type,codec_name,nb_read_frames', '-of', 'json', `${relay.base}/live/${name}.mp4?wait=15`],
        { timeout: 30000 }).catch(() => null), { timeout: 30000, interval: 500, what: 'ffprobe of the stream' });
        const streams = JSON.parse(stdout).streams;
        const codecs = streams.map((s) => s.codec_name);
        assert.deepEqual(codecs, [codec.toLowerCase(), 'opus'], stdout);
        const frames = Object.fromEntries(streams.map((s) => [s.codec_type, Number(s.nb_read_frames)]));
        assert.ok(frames.video > 10 && frames.audio > 10, stdout);
        console.log(`# whip ${codec} from Chromium: ffprobe ${codecs.join('+')}, ${frames.video} video / ${frames.audio} audio frames in 2 s`);

        await viewer.goto(`${relay.base}/watch/${name}?transport=ws`);
        await waitPlaying(viewer, 30000);
        const { last } = await watchAdvance(viewer, 2, 25000);
        assert.ok(last.decodedFrames > 0, JSON.stringify(last));
        assert.equal(last.mseErrors, 0, last.mseError);
        assert.match(last.mime || '', codec === 'VP9' ? /vp09/ : /av01/);
        console.log(`# whip ${codec} → ws player: ${last.mime}, ${last.decodedFrames} frames decoded`);
      } catch (e) {
        e.message += `\n--- viewer ---\n${await diagnose(viewer)}\n--- relay ---\n${relay.log.slice(-40).join('\n')}`;
        throw e;
      } finally {
        await pub.evaluate(() => window.whipPc && window.whipPc.close()).catch(() => {});
        await pub.context().close().catch(() => {});
        await viewer.context().close().catch(() => {});
      }
    });
  }

  test('a broadcast page on a relay without WHIP falls back to WebSocket', { timeout: 60000 }, async () => {
    const plain = await startRelay();
    const page = await newPage(browser);
    try {
      await page.goto(`${plain.base}/broadcast/fallback?autostart=1`);
      const st = await waitFor(async () => {
        const s = await page.evaluate(() => window.relaycastBroadcast.stats());
        return s.state === 'live' && s;
      }, { timeout: 20000, what: 'the page to go live over WebSocket' });
      assert.equal(st.whip, false);
      assert.match(st.mime, /^video\/mp4/);
    } finally {
      await page.context().close().catch(() => {});
      await plain.stop();
    }
  });
});
