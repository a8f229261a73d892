// The player in headless Chromium behind a three-tier cascade: the origin's
// built-in demo stream pulled over QUIC by a mid relay and again by an edge
// (origin → mid → edge); the page plays it from the edge over WebSocket and
// HTTP streaming, with the origin's seqs and without gaps.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startRelay, launchBrowser, newPage, waitPlaying, watchAdvance, screenshot, diagnose } from './lib.mjs';

/** `quic://ADDR?fingerprint=HEX` from a relay's "QUIC on …" stdout line. */
function quicUrl(relay) {
  for (const line of relay.log) {
    const m = /relaycast: QUIC on (\S+) \(certificate sha256 ([0-9a-f]{64})\)/.exec(line);
    if (m) return `quic://${m[1]}?fingerprint=${m[2]}`;
  }
  throw new Error(`no QUIC line in the relay's output:\n${relay.log.join('\n')}`);
}

describe('player behind origin → mid → edge', () => {
  let origin;
  let mid;
  let edge;
  let browser;
  before(async () => {
    origin = await startRelay({ args: ['--quic', '127.0.0.1:0'] });
    mid = await startRelay({ args: ['--no-demo', '--quic', '127.0.0.1:0', '--origin', quicUrl(origin)] });
    edge = await startRelay({ args: ['--no-demo', '--origin', quicUrl(mid)] });
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await edge?.stop();
    await mid?.stop();
    await origin?.stop();
  });

  for (const transport of ['ws', 'stream']) {
    test(`plays the origin's demo stream from the edge over ?transport=${transport}`, { timeout: 60000 }, async () => {
      const page = await newPage(browser);
      try {
        await page.goto(`${edge.base}/watch/demo?transport=${transport}&debug=1`);
        await waitPlaying(page);
        const { last } = await watchAdvance(page, 3, 15000);
        assert.equal(last.transport, transport);
        assert.ok(last.decodedFrames > 0, `decoded frames: ${last.decodedFrames}`);
        assert.equal(last.gaps, 0, 'gaps');
        assert.equal(last.mseErrors, 0, `MSE errors (${last.mseError})`);
        assert.equal(last.mediaError, null, 'media element error');
        assert.equal(page.errorsSeen.length, 0, page.errorsSeen.join('\n'));
        const info = await (await fetch(`${edge.base}/live/demo/info`)).json();
        assert.equal(info.source.kind, 'pulled');
        const originInfo = await (await fetch(`${origin.base}/live/demo/info`)).json();
        assert.ok(Math.abs(originInfo.seq - info.seq) <= 3, `the edge's seqs are the origin's (${info.seq} vs ${originInfo.seq})`);
        console.log(`# cascade ${transport}: frames ${last.decodedFrames}, currentTime ${last.currentTime.toFixed(2)} s, seq ${info.seq} (origin ${originInfo.seq})`);
        await screenshot(page, `cascade-${transport}`);
      } catch (e) {
        e.message += `\n--- player diagnostics ---\n${await diagnose(page)}`;
        throw e;
      } finally {
        await page.context().close().catch(() => {});
      }
    });
  }
});
