// The /broadcast/{name} page with Chromium's fake camera and microphone
// publishes over WebSocket; another page plays that stream.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startRelay, launchBrowser, newPage, waitPlaying, watchAdvance, waitFor, screenshot, diagnose, getJson,
} from './lib.mjs';

describe('browser broadcast', () => {
  let relay;
  let browser;
  before(async () => {
    relay = await startRelay();
    browser = await launchBrowser(['--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream']);
  });
  after(async () => {
    await browser?.close();
    await relay?.stop();
  });

  test('a camera broadcast from /broadcast/{name} plays on /watch/{name}', { timeout: 90000 }, async () => {
    const pub = await newPage(browser);
    const viewer = await newPage(browser);
    try {
      await pub.goto(`${relay.base}/broadcast/cam1?autostart=1&gop=500`);
      const bs = await waitFor(async () => {
        const s = await pub.evaluate(() => window.relaycastBroadcast.stats());
        return s.state === 'live' && s.bytes > 0 && s;
      }, { timeout: 20000, what: 'the broadcast page to go live' });
      assert.match(bs.mime, /^video\/mp4/);
      const info = await waitFor(() => getJson(`${relay.base}/live/cam1/info`).catch(() => null), { timeout: 15000, what: 'the relay to know cam1' });
      console.log(`# broadcast: ${bs.mime} ${bs.track}; relay sees ${info.codecs}`);
      await viewer.goto(`${relay.base}/watch/cam1?debug=1`);
      await waitPlaying(viewer, 30000);
      const { last } = await watchAdvance(viewer, 2, 15000);
      assert.ok(last.decodedFrames > 0);
      assert.equal(last.gaps, 0);
      assert.equal(last.repeats, 0);
      assert.equal(last.mseErrors, 0, last.mseError);
      const bs2 = await pub.evaluate(() => window.relaycastBroadcast.stats());
      console.log(`# broadcast → watch: ${last.transport}, delay ${Math.round(last.delay * 1000)} ms, frames ${last.decodedFrames}, sent ${bs2.bytes} B`);
      await screenshot(pub, 'broadcast');
      await screenshot(viewer, 'broadcast-watch');
      // Stopping ends the publish cleanly.
      await pub.click('#stop');
      await waitFor(async () => (await pub.evaluate(() => window.relaycastBroadcast.stats())).state === 'stopped', { timeout: 5000, what: 'stopped' });
    } catch (e) {
      e.message += `\n--- viewer ---\n${await diagnose(viewer)}\n--- publisher ---\n${await pub.evaluate(() => JSON.stringify(window.relaycastBroadcast && window.relaycastBroadcast.stats())).catch(() => '')}\n${pub.consoleLines.join('\n')}`;
      throw e;
    } finally {
      await pub.context().close().catch(() => {});
      await viewer.context().close().catch(() => {});
    }
  });

  test('a refused broadcast stops and says why (the name is already live)', { timeout: 30000 }, async () => {
    const page = await newPage(browser);
    try {
      // `demo` is the relay's own live stream: a second publisher gets 4009.
      await page.goto(`${relay.base}/broadcast/demo?autostart=1`);
      await waitFor(async () => (await page.evaluate(() => window.relaycastBroadcast.stats())).state === 'refused',
        { timeout: 15000, what: 'the page to give up' });
      const text = await page.textContent('#error');
      assert.match(text, /refused the broadcast: .*already has a live publisher/, text);
      const st = await page.evaluate(() => window.relaycastBroadcast.stats());
      assert.match(st.closeInfo, /^4009/);
      assert.equal(st.reconnects, 0, 'no retrying');
      console.log(`# broadcast refused: "${text}"`);
      await screenshot(page, 'broadcast-refused');
    } finally {
      await page.context().close().catch(() => {});
    }
  });

  // Browsers that cannot record MP4 (Firefox records WebM only) or have no
  // MediaRecorder at all: the page says so at once and offers no Go live.
  const unsupported = {
    'MediaRecorder without MP4': () => {
      const real = MediaRecorder.isTypeSupported.bind(MediaRecorder);
      MediaRecorder.isTypeSupported = (t) => !/mp4/i.test(t) && real(t);
    },
    'no MediaRecorder': () => { delete window.MediaRecorder; },
  };
  for (const [label, script] of Object.entries(unsupported)) {
    test(`the page says clearly when it cannot record MP4 (${label})`, { timeout: 30000 }, async () => {
      const page = await newPage(browser);
      try {
        await page.addInitScript(script);
        await page.goto(`${relay.base}/broadcast/nomp4`);
        await page.waitForSelector('#error:not(.hidden)', { timeout: 10000 });
        const text = await page.textContent('#error');
        assert.match(text, /cannot (record MP4|broadcast)/, text);
        assert.match(text, /ffmpeg/, 'points to another way to publish');
        assert.equal(await page.isDisabled('#start'), true, 'Go live is disabled');
        const st = await page.evaluate(() => window.relaycastBroadcast.stats());
        assert.equal(st.state, 'unsupported');
        assert.equal(st.bytes, 0);
        const res = await fetch(`${relay.base}/live/nomp4/info`);
        assert.equal(res.status, 404, 'nothing was published');
        console.log(`# broadcast page (${label}): "${text}"`);
        await screenshot(page, `broadcast-unsupported-${label.replace(/\W+/g, '-').toLowerCase()}`);
      } finally {
        await page.context().close().catch(() => {});
      }
    });
  }
});
