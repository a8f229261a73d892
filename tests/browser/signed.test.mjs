// Signed viewer URLs in the player: a relay that signs every stream, a
// link minted by `relaycast sign`; the player carries `exp`/`sig` from its
// page URL to every transport and plays; without them the relay
// refuses and the player gives up with the relay's reason.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startRelay, launchBrowser, newPage, stats, waitPlaying, waitFor, diagnose, relayBin } from './lib.mjs';

const SECRET = 'browser-test-secret';
const TRANSPORTS = ['ws', 'stream', 'longpoll', 'poll'];

describe('signed viewer URLs in Chromium', () => {
  let relay;
  let browser;
  let dir;
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'relaycast-signed-'));
    const conf = path.join(dir, 'relay.toml');
    fs.writeFileSync(conf, `[auth]\nview_secret = "${SECRET}"\n`);
    relay = await startRelay({ args: ['--config', conf] });
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await relay?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  const sign = (name) =>
    execFileSync(relayBin, ['sign', name, '--ttl', '10m', '--secret', SECRET]).toString().split('\n')[0].trim();

  async function withPage(body) {
    const page = await newPage(browser);
    try {
      return await body(page);
    } catch (e) {
      e.message += `\n--- player diagnostics ---\n${await diagnose(page)}`;
      throw e;
    } finally {
      await page.context().close().catch(() => {});
    }
  }

  test('the relay refuses unsigned watch paths', async () => {
    for (const p of ['/live/demo/info', '/live/demo/init.mp4', '/live/demo/poll?wait=0']) {
      const res = await fetch(`${relay.base}${p}`);
      assert.equal(res.status, 403, p);
    }
    const q = sign('demo');
    const res = await fetch(`${relay.base}/live/demo/info?${q}`);
    assert.equal(res.status, 200);
  });

  for (const transport of TRANSPORTS) {
    test(`a signed link plays over ?transport=${transport}`, { timeout: 60000 }, async () => {
      const q = sign('demo');
      await withPage(async (page) => {
        await page.goto(`${relay.base}/watch/demo?transport=${transport}&${q}`);
        const s = await waitPlaying(page);
        assert.equal(s.transport, transport);
      });
    });
  }

  test('without a signature the player says it is not allowed', { timeout: 60000 }, async () => {
    await withPage(async (page) => {
      await page.goto(`${relay.base}/watch/demo?transport=ws`);
      await waitFor(async () => {
        const s = await stats(page);
        return s && /not allowed|forbidden/.test(String(s.state));
      }, { timeout: 20000, what: "the player to give up: not allowed" });
      const s = await stats(page);
      assert.equal(s.appended, 0);
    });
  });
});
