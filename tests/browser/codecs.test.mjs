// A publisher that reconnects (timeline restarts at 0) and then comes back
// with other codecs (H.264/AAC → VP9/Opus): the player keeps one timeline and
// switches its SourceBuffer cleanly (changeType or a fresh MediaSource).

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startRelay, launchBrowser, newPage, stats, waitPlaying, watchAdvance, waitFor, sleep, screenshot, diagnose, ffmpegPublish,
} from './lib.mjs';

describe('publisher restarts and codec changes', () => {
  let relay;
  let browser;
  const pubs = [];
  before(async () => {
    relay = await startRelay();
    browser = await launchBrowser();
  });
  after(async () => {
    for (const p of pubs) await p.stopNow();
    await browser?.close();
    await relay?.stop();
  });

  for (const transport of ['ws', 'longpoll']) {
    test(`H.264 → H.264 (restart) → VP9 over ${transport}`, { timeout: 120000 }, async () => {
      const name = `cc-${transport}`;
      const page = await newPage(browser);
      try {
        pubs.push(ffmpegPublish(relay.base, name, { codec: 'h264' }));
        await page.goto(`${relay.base}/watch/${name}?transport=${transport}&debug=1`);
        await waitPlaying(page, 30000);
        await watchAdvance(page, 2, 10000);
        const s0 = await stats(page);
        assert.match(s0.mime, /avc1/);

        // Same codecs, new publisher connection: new init, decode times from 0 again.
        await pubs.pop().stopNow();
        pubs.push(ffmpegPublish(relay.base, name, { codec: 'h264' }));
        await waitFor(async () => (await stats(page)).appended > s0.appended + 10, { timeout: 20000, what: 'fragments from the second publisher' });
        const { last: s1 } = await watchAdvance(page, 2, 15000);
        assert.equal(s1.mseErrors, 0, s1.mseError);

        // Other codecs.
        await pubs.pop().stopNow();
        pubs.push(ffmpegPublish(relay.base, name, { codec: 'vp9' }));
        await waitFor(async () => /vp09/.test((await stats(page)).mime || ''), { timeout: 20000, what: 'the VP9 init' });
        await sleep(500);
        const { last: s2 } = await watchAdvance(page, 2, 15000);
        assert.match(s2.mime, /vp09/);
        assert.equal(s2.mseErrors, 0, s2.mseError);
        assert.equal(s2.mediaError, null);
        assert.equal(s2.gaps, 0);
        assert.equal(s2.repeats, 0);
        assert.ok(s2.changeTypes + s2.recreated >= 1, 'switched the SourceBuffer');
        console.log(`# ${transport}: inits ${s2.inits}, discontinuities stitched ${s2.discontinuities}, changeType ${s2.changeTypes}, new MediaSource ${s2.recreated}, frames ${s2.decodedFrames}, delay ${Math.round(s2.delay * 1000)} ms`);
        if (transport === 'ws') await screenshot(page, 'codec-change-vp9');
      } catch (e) {
        e.message += `\n--- player diagnostics ---\n${await diagnose(page)}\n--- ffmpeg ---\n${pubs.map((p) => p.errText).join('\n')}`;
        throw e;
      } finally {
        for (const p of pubs.splice(0)) await p.stopNow();
        await page.context().close().catch(() => {});
      }
    });
  }
});
