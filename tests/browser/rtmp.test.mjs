// An RTMP publisher (ffmpeg -re … -f flv rtmp://…, as OBS publishes) plays in
// the player in Chromium: the relay remuxes FLV to CMAF, and the player
// reaches "playing" and advances with no MSE error (#13).

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startRelay, launchBrowser, newPage, waitPlaying, watchAdvance, waitFor, screenshot, diagnose, ffmpegPublish,
} from './lib.mjs';

describe('RTMP publisher → player', () => {
  let relay;
  let browser;
  let pub;
  before(async () => {
    relay = await startRelay({ args: ['--no-demo', '--rtmp', '127.0.0.1:0'] });
    browser = await launchBrowser();
  });
  after(async () => {
    await pub?.stopNow();
    await browser?.close();
    await relay?.stop();
  });

  test('ffmpeg -f flv rtmp://HOST/live/NAME plays on /watch/NAME', { timeout: 90000 }, async () => {
    const line = await waitFor(() => relay.log.find((l) => /RTMP ingest on rtmp:\/\//.test(l)), { what: 'the RTMP ingest line' });
    const rtmp = /(rtmp:\/\/\S+\/live)/.exec(line)[1];
    pub = ffmpegPublish(relay.base, 'rtmpcam', { rtmp: `${rtmp}/rtmpcam` });
    await waitFor(async () => {
      const r = await fetch(`${relay.base}/live/rtmpcam/info`);
      return r.ok && (await r.json()).live;
    }, { timeout: 20000, what: 'the RTMP stream to go live' });
    const page = await newPage(browser);
    try {
      await page.goto(`${relay.base}/watch/rtmpcam?transport=ws&debug=1`);
      const s0 = await waitPlaying(page, 30000);
      assert.match(s0.mime, /avc1\..*mp4a\.40\.2/);
      const { last } = await watchAdvance(page, 3, 15000);
      assert.equal(last.mseErrors, 0, last.mseError);
      assert.equal(last.mediaError, null);
      assert.ok(last.decodedFrames > 30, `decoded ${last.decodedFrames} frames`);
      console.log(`# RTMP → player: ${last.decodedFrames} frames, delay ${Math.round(last.delay * 1000)} ms`);
      await screenshot(page, 'rtmp-publish');
    } catch (e) {
      e.message += `\n--- player diagnostics ---\n${await diagnose(page)}\n--- ffmpeg ---\n${pub?.errText}`;
      throw e;
    } finally {
      await page.close();
    }
  });
});
