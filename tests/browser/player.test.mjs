// The player in headless Chromium against the real relay and its built-in
// `demo` stream: every forced transport plays; the chooser falls back on its
// own when WebSocket is blocked or a proxy buffers, and upgrades again; it
// resumes without gap or repeat after network drops and after a relay restart.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import {
  relayBin, repoRoot,
  startRelay, restartRelayOnPort, launchBrowser, newPage, stats, appendedSeqs, waitPlaying, watchAdvance,
  waitFor, sleep, median, checkSeqRuns, screenshot, diagnose, tcpProxy,
} from './lib.mjs';

const TRANSPORTS = ['ws', 'stream', 'longpoll', 'poll'];

/** Runs `body(page)`; on failure adds the player's stats and log to the error. */
async function withPage(browser, body, { init } = {}) {
  const page = await newPage(browser);
  if (init) await init(page);
  try {
    return await body(page);
  } catch (e) {
    e.message += `\n--- player diagnostics ---\n${await diagnose(page)}`;
    throw e;
  } finally {
    await page.context().close().catch(() => {});
  }
}

function assertClean(s, what) {
  assert.equal(s.gaps, 0, `${what}: gaps`);
  assert.equal(s.repeats, 0, `${what}: repeats`);
  assert.equal(s.mseErrors, 0, `${what}: MSE errors (${s.mseError})`);
  assert.equal(s.mediaError, null, `${what}: media element error`);
}

describe('player in Chromium', () => {
  let relay;
  let browser;
  before(async () => {
    relay = await startRelay();
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await relay?.stop();
  });

  test('the stream list shows the demo stream and links to it', { timeout: 30000 }, async () => {
    await withPage(browser, async (page) => {
      await page.goto(`${relay.base}/`);
      await page.waitForSelector('a.card[data-name="demo"]', { timeout: 10000 });
      assert.equal(await page.getAttribute('a.card[data-name="demo"]', 'href'), '/watch/demo');
      // It updates itself: a stream that starts now appears without a reload.
      const pub = spawn(relayBin, ['publish', '--re', '--to', `${relay.base}/publish/newcomer`,
        path.join(repoRoot, 'tests/fixtures/h264_aac_keyframe.mp4')], { stdio: 'ignore' });
      try {
        await page.waitForSelector('a.card[data-name="newcomer"]', { timeout: 10000 });
        const card = await page.textContent('a.card[data-name="newcomer"]');
        assert.match(card, /avc1/, `the card shows the codecs: ${card}`);
        await screenshot(page, 'index');
      } finally {
        pub.kill('SIGKILL');
      }
    });
  });

  for (const transport of TRANSPORTS) {
    test(`plays the demo stream over ?transport=${transport}`, { timeout: 60000 }, async () => {
      await withPage(browser, async (page) => {
        await page.goto(`${relay.base}/watch/demo?transport=${transport}&debug=1`);
        await waitPlaying(page);
        await sleep(2000); // let the latency controller settle
        const { first, last, samples } = await watchAdvance(page, 3, 12000);
        assert.equal(last.transport, transport);
        assert.ok(last.decodedFrames > 0, `decoded frames: ${last.decodedFrames}`);
        const types = { transport: 'string', lastSeq: 'number', appended: 'number', gaps: 'number', repeats: 'number', skips: 'number', delay: 'number', reconnects: 'number' };
        for (const [k, t] of Object.entries(types)) assert.equal(typeof last[k], t, `stats().${k}`);
        if (transport === 'longpoll') {
          // A long poll is held until there is a fragment: about one request per batch, no busy loop.
          const req = last.requests - first.requests;
          const got = last.appended - first.appended;
          assert.ok(req <= got + 2, `${req} long-poll requests for ${got} fragments`);
        }
        if (transport === 'poll') {
          const req = last.requests - first.requests;
          const secs = (last.currentTime - first.currentTime) / last.playbackRate;
          assert.ok(req <= 12 * secs + 2, `${req} polls in ${secs.toFixed(1)} s (paced at 100-250 ms)`);
        }
        assertClean(last, transport);
        assert.equal(page.errorsSeen.length, 0, page.errorsSeen.join('\n'));
        const delay = median(samples.slice(-8).map((s) => s.delay));
        const advanced = last.currentTime - first.currentTime;
        console.log(`# ${transport}: delay ${Math.round(delay * 1000)} ms (median of the last 2 s; player p50 ${Math.round(last.delayP50 * 1000)} ms, p90 ${Math.round(last.delayP90 * 1000)} ms), ` +
          `buffer ${Math.round(last.bufferAhead * 1000)} ms, target ${Math.round(last.targetAhead * 1000)} ms, currentTime +${advanced.toFixed(2)} s, ` +
          `frames ${last.decodedFrames} (${last.droppedFrames} dropped), appended ${last.appended}, stalls ${last.stalls}, skips ${last.skips}`);
        // The goal is < 0.5 s on the push transports (measured ~0.3 s, see
        // docs/player.md); the bound leaves room for a loaded CI machine.
        const bound = ['ws', 'stream'].includes(transport) ? 1.5 : 3;
        assert.ok(delay !== null && delay < bound, `delay ${delay} (bound ${bound} s)`);
        await screenshot(page, `watch-${transport}`);
      });
    });
  }

  test('measures the delay on the relay\'s clock, whatever the local clock says', { timeout: 60000 }, async () => {
    await withPage(browser, async (page) => {
      await page.goto(`${relay.base}/watch/demo?transport=ws&debug=1`);
      await waitPlaying(page);
      const { last } = await watchAdvance(page, 2, 10000);
      // The page's clock is 5 minutes fast: the player estimates the offset
      // from the relay's stamps, and the delay stays what it is.
      assert.ok(Math.abs(last.clockOffset + 300000) < 1000, `clock offset ${last.clockOffset} ms`);
      assert.ok(last.delay > 0 && last.delay < 1.5, `delay ${last.delay}`);
      console.log(`# local clock +300 s: offset estimated ${last.clockOffset} ms, delay ${Math.round(last.delay * 1000)} ms`);
    }, {
      init: (page) => page.addInitScript(() => {
        const real = Date.now.bind(Date);
        Date.now = () => real() + 300000;
      }),
    });
  });

  test('plays from a page on another origin (CORS), on every transport', { timeout: 90000 }, async () => {
    // A page served by another server (another port = another origin) that
    // imports the player from the relay and points it at the relay.
    const http = await import('node:http');
    const page0 = (t) => `<!doctype html><html><body style="margin:0;background:#000">
<video id="v" muted playsinline style="width:640px"></video>
<script type="module">
import { Player } from '${relay.base}/player/player.js';
const p = new Player(document.getElementById('v'), { name: 'demo', transport: '${t}', relay: '${relay.base}' });
window.relaycastPlayer = { stats: () => p.stats(), appendedSeqs: () => p.appendedSeqs(), log: () => p.log.slice(), history: () => p.chooser.history.slice() };
p.start();
</script></body></html>`;
    const server = http.createServer((req, res) => {
      const t = new URL(req.url, 'http://x').searchParams.get('t') || 'ws';
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end(page0(t));
    });
    server.listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
    const other = `http://127.0.0.1:${server.address().port}`;
    try {
      for (const t of TRANSPORTS) {
        await withPage(browser, async (page) => {
          await page.goto(`${other}/?t=${t}`);
          await waitPlaying(page);
          const { last } = await watchAdvance(page, 2, 10000);
          assert.equal(last.transport, t);
          assertClean(last, `cross-origin ${t}`);
          assert.equal(page.errorsSeen.length, 0, page.errorsSeen.join('\n'));
          console.log(`# from ${other} (another origin) over ${t}: delay ${Math.round(last.delay * 1000)} ms, appended ${last.appended}`);
        });
      }
    } finally {
      server.close();
    }
  });

  test('falls back by itself when WebSocket throws', { timeout: 60000 }, async () => {
    await withPage(browser, async (page) => {
      await page.goto(`${relay.base}/watch/demo?debug=1`);
      await waitPlaying(page);
      const { last } = await watchAdvance(page, 2, 10000);
      assert.notEqual(last.transport, 'ws');
      assert.ok(last.fallbacks >= 1, `fallbacks ${last.fallbacks}`);
      assertClean(last, 'fallback');
      console.log(`# WebSocket throws → ${last.transport} after ${last.fallbacks} fallback(s)`);
      await screenshot(page, 'fallback-ws-throws');
    }, {
      init: (page) => page.addInitScript(() => {
        window.WebSocket = class {
          constructor() {
            throw new Error('WebSocket blocked by the test');
          }
        };
      }),
    });
  });

  test('falls back by itself when every WebSocket is closed before any data', { timeout: 60000 }, async () => {
    await withPage(browser, async (page) => {
      await page.goto(`${relay.base}/watch/demo?debug=1`);
      await waitPlaying(page);
      const { last } = await watchAdvance(page, 2, 10000);
      assert.notEqual(last.transport, 'ws');
      assertClean(last, 'fallback');
      console.log(`# WebSocket closed by a "proxy" → ${last.transport}`);
    }, {
      init: (page) => page.routeWebSocket(/\/live\//, (ws) => ws.close({ code: 1011, reason: 'blocked by the test' })),
    });
  });

  test('falls back after repeated drops, resuming on the next transport without gap or repeat', { timeout: 60000 }, async () => {
    await withPage(browser, async (page) => {
      await page.goto(`${relay.base}/watch/demo?debug=1`);
      const s = await waitFor(async () => {
        const x = await stats(page);
        return x && x.transport === 'stream' && x.fallbacks >= 1 && x.appended > 20 && x;
      }, { timeout: 40000, what: 'a fall back from ws to stream after repeated drops' });
      const { last } = await watchAdvance(page, 2, 10000);
      assert.equal(last.transport, 'stream');
      assert.ok(s.reconnects >= 2, `reconnects ${s.reconnects}`);
      assertClean(last, 'repeated drops');
      assert.equal(last.skips, 0);
      const check = checkSeqRuns(await appendedSeqs(page));
      assert.deepEqual(check.problems, []);
      assert.equal(check.runs.length, 1);
      console.log(`# ws dropped every 15 messages → ${last.transport} after ${s.reconnects} reconnects; seqs ${check.runs[0].first}..${check.runs[0].last} contiguous`);
    }, {
      // A "proxy" that passes WebSocket traffic but cuts each connection
      // after 15 messages (some data, then a drop), again and again.
      init: (page) => page.routeWebSocket(/\/live\//, (ws) => {
        const server = ws.connectToServer();
        let n = 0;
        server.onMessage((m) => {
          ws.send(m);
          if (++n === 15) {
            ws.close({ code: 1011, reason: 'cut by the test' });
            server.close();
          }
        });
        ws.onMessage((m) => server.send(m));
      }),
    });
  });

  test('falls back past a buffering proxy to long polling', { timeout: 60000 }, async () => {
    const proxy = await tcpProxy(relay.port, { bufferIf: (line) => /\/live\/[^/ ]+\.mp4/.test(line) });
    try {
      await withPage(browser, async (page) => {
        await page.goto(`${proxy.base}/watch/demo?debug=1&firstdata=2500`);
        await waitPlaying(page, 30000);
        const { last } = await watchAdvance(page, 2, 10000);
        assert.ok(['longpoll', 'poll'].includes(last.transport), `transport ${last.transport}`);
        assertClean(last, 'buffering proxy');
        console.log(`# ws blocked + buffering proxy on /live/demo.mp4 → ${last.transport} (${last.fallbacks} fallbacks)`);
      }, {
        init: (page) => page.addInitScript(() => {
          window.WebSocket = class {
            constructor() {
              throw new Error('WebSocket blocked by the test');
            }
          };
        }),
      });
    } finally {
      proxy.close();
    }
  });

  test('upgrades back to WebSocket once it works again', { timeout: 60000 }, async () => {
    await withPage(browser, async (page) => {
      await page.goto(`${relay.base}/watch/demo?debug=1&upgrade=3000`);
      await waitPlaying(page);
      let s = await stats(page);
      assert.equal(s.transport, 'stream');
      await page.evaluate(() => { window.__allowWs = true; });
      s = await waitFor(async () => {
        const x = await stats(page);
        return x.transport === 'ws' && x.upgrades >= 1 && x;
      }, { timeout: 20000, what: 'an upgrade to ws' });
      const { last } = await watchAdvance(page, 2, 10000);
      assert.equal(last.transport, 'ws');
      assertClean(last, 'upgrade');
      const check = checkSeqRuns(await appendedSeqs(page));
      assert.deepEqual(check.problems, []);
      console.log(`# stream → ws upgrade after ${s.probes} probe(s); seq runs ${JSON.stringify(check.runs)}`);
    }, {
      init: (page) => page.addInitScript(() => {
        const Real = window.WebSocket;
        window.WebSocket = class extends Real {
          constructor(...a) {
            if (!window.__allowWs) throw new Error('WebSocket blocked by the test (for now)');
            super(...a);
          }
        };
      }),
    });
  });

  test('catches up with the live edge: a seek when far behind, a gentle speed-up when a little behind', { timeout: 60000 }, async () => {
    await withPage(browser, async (page) => {
      await page.goto(`${relay.base}/watch/demo?transport=ws&debug=1`);
      await waitPlaying(page);
      await watchAdvance(page, 4, 12000); // some back buffer to fall into
      const s0 = await stats(page);
      // Far behind (a stalled tab, a long pause): seeks back to the live edge.
      await page.evaluate(() => { const v = document.querySelector('video'); v.currentTime -= 3; });
      const far = await waitFor(async () => {
        const s = await stats(page);
        return s.liveSeeks > s0.liveSeeks && s.delay < 1 && s;
      }, { timeout: 10000, what: 'a seek back to the live edge' });
      // A little behind: plays faster (never above the cap) until it is back.
      const s1 = await stats(page);
      await page.evaluate(() => { const v = document.querySelector('video'); v.currentTime -= 0.6; });
      const rates = [];
      const near = await waitFor(async () => {
        const s = await stats(page);
        rates.push(s.playbackRate);
        return rates.some((r) => r > 1) && s.playbackRate === 1 && s.delay < s1.delay + 0.15 && s;
      }, { timeout: 15000, interval: 100, what: 'a speed-up back to the live edge' });
      assert.equal(near.liveSeeks, s1.liveSeeks, 'no seek for a small lag');
      assert.ok(Math.max(...rates) <= 1.15 + 1e-9, `rate cap: ${Math.max(...rates)}`);
      assertClean(near, 'catch-up');
      console.log(`# catch-up: 3 s behind → seek (delay ${Math.round(far.delay * 1000)} ms); 0.6 s behind → rate up to ${Math.max(...rates).toFixed(3)}, back to ${Math.round(near.delay * 1000)} ms (was ${Math.round(s1.delay * 1000)} ms)`);
    });
  });

  for (const transport of TRANSPORTS) {
    test(`resumes after network drops without gap or repeat (${transport})`, { timeout: 60000 }, async () => {
      const proxy = await tcpProxy(relay.port);
      try {
        await withPage(browser, async (page) => {
          await page.goto(`${proxy.base}/watch/demo?transport=${transport}&debug=1`);
          await waitPlaying(page);
          // A drop alone is invisible to HTTP polling: Chromium retries an idempotent
          // GET that failed on a reused keep-alive connection by itself. So the
          // network stays down for a moment after each cut, as a real outage does.
          for (let i = 1; i <= 2; i++) {
            await sleep(1000);
            const before = await stats(page);
            const cut = proxy.dropAll({ outageMs: 700 });
            assert.ok(cut > 0, `drop #${i} cut no connection`);
            await waitFor(async () => (await stats(page)).reconnects > before.reconnects, { timeout: 10000, what: `reconnect after drop #${i}` });
            // Back on the network (reconnects back off) and appending again.
            await waitFor(async () => (await stats(page)).appended > before.appended + 3, { timeout: 10000, what: `fragments after drop #${i}` });
          }
          const { last } = await watchAdvance(page, 2, 10000);
          assertClean(last, `drops on ${transport}`);
          assert.equal(last.skips, 0, 'skips');
          assert.equal(last.resets, 0, 'epoch resets');
          const check = checkSeqRuns(await appendedSeqs(page));
          assert.deepEqual(check.problems, []);
          assert.equal(check.runs.length, 1);
          console.log(`# ${transport}: ${last.reconnects} reconnects, seqs ${check.runs[0].first}..${check.runs[0].last} contiguous (${check.runs[0].n})`);
        });
      } finally {
        proxy.close();
      }
    });
  }
});

describe('relay restart', () => {
  let browser;
  before(async () => {
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
  });

  for (const transport of ['auto', 'stream', 'longpoll']) {
    test(`the player survives a relay kill + restart on the same port (${transport})`, { timeout: 90000 }, async () => {
      let relay = await startRelay();
      try {
        await withPage(browser, async (page) => {
          const q = transport === 'auto' ? '' : `transport=${transport}&`;
          await page.goto(`${relay.base}/watch/demo?${q}debug=1`);
          await waitPlaying(page);
          await sleep(2000);
          const before = await stats(page);
          const port = relay.port;
          await relay.stop('SIGKILL');
          await sleep(1500);
          relay = await restartRelayOnPort(port);
          const s = await waitFor(async () => {
            const x = await stats(page);
            return x.resets >= 1 && x.appended > before.appended + 5 && x;
          }, { timeout: 25000, what: 'the player to resume on the new epoch' });
          const { last } = await watchAdvance(page, 2, 15000);
          assertClean(last, `restart (${transport})`);
          const check = checkSeqRuns(await appendedSeqs(page));
          assert.deepEqual(check.problems, []);
          assert.equal(check.runs.length, 2, JSON.stringify(check.runs));
          assert.notEqual(before.epoch, last.epoch);
          // A new life of the stream is not a lag: no skip, and the new epoch
          // starts at a keyframe (the old `after` was not applied to it).
          assert.equal(last.skips, before.skips, 'skips');
          assert.equal(last.droppedNonKey, before.droppedNonKey, 'fragments dropped waiting for a keyframe');
          console.log(`# restart (${last.transport}): epochs ${JSON.stringify(check.runs)}, reconnects ${s.reconnects}, delay now ${Math.round(last.delay * 1000)} ms`);
          if (transport === 'auto') await screenshot(page, 'after-restart');
        });
      } finally {
        await relay.stop();
      }
    });
  }
});

// #12 item 24: what the page says and does when it cannot play, and while
// the relay restarts.
describe('player: told why', () => {
  let browser;
  before(async () => {
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
  });

  /** `relaycast publish --re --loop FILE` to `name` on `base` (it reconnects by itself). */
  function publishLoop(base, name, file) {
    const p = spawn(relayBin, ['publish', '--re', '--loop', '--to', `${base}/publish/${name}`, file], {
      env: { ...process.env, RUST_LOG: 'warn' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    p.errText = '';
    p.stderr.on('data', (d) => { p.errText += d.toString(); });
    return p;
  }
  const info = async (base, name) => {
    const r = await fetch(`${base}/live/${name}/info`, { cache: 'no-store' });
    return r.ok ? r.json() : null;
  };

  test('a stream the browser cannot decode (HEVC in Chromium): says so and stops downloading', { timeout: 60000 }, async () => {
    const relay = await startRelay({ args: ['--no-demo'] });
    const pub = publishLoop(relay.base, 'hevc', path.join(repoRoot, 'tests/fixtures/hevc_aac.mp4'));
    try {
      await waitFor(async () => (await info(relay.base, 'hevc'))?.live, { timeout: 20000, what: 'the HEVC stream' });
      await withPage(browser, async (page) => {
        await page.goto(`${relay.base}/watch/hevc?debug=1`);
        const s = await waitFor(async () => {
          const x = await stats(page);
          return x && /cannot play/.test(x.state) && x;
        }, { timeout: 20000, what: 'the "cannot play" message' });
        assert.match(s.state, /hvc1|hev1/);
        // The notice is drawn after the state changes: wait for it too.
        await waitFor(async () => /cannot play/i.test(await page.textContent('#notice-text')),
          { timeout: 5000, what: 'the "cannot play" notice' });
        // The transport is closed: the relay has no viewer left, and the
        // page receives nothing more.
        await waitFor(async () => (await info(relay.base, 'hevc'))?.viewers === 0, { timeout: 10000, what: 'the relay to see the viewer leave' });
        const a = await stats(page);
        await sleep(2500);
        const b = await stats(page);
        assert.equal(b.bytes, a.bytes, 'bytes received stopped growing');
        assert.equal((await info(relay.base, 'hevc')).viewers, 0);
        console.log(`# HEVC: "${s.state}", ${b.bytes} bytes received before the transport stopped`);
      });
    } finally {
      pub.kill('SIGKILL');
      await relay.stop();
    }
  });

  test('while the relay restarts the footer says "reconnecting…", never "not live yet"', { timeout: 90000 }, async () => {
    let relay = await startRelay({ args: ['--no-demo'] });
    const pub = publishLoop(relay.base, 'cam', path.join(repoRoot, 'crates/relaycast-media/src/demo/demo.mp4'));
    try {
      await withPage(browser, async (page) => {
        await page.goto(`${relay.base}/watch/cam?debug=1`);
        await waitPlaying(page, 30000);
        await waitFor(async () => /live/.test(await page.textContent('#facts')), { timeout: 10000, what: 'the facts of the live stream' });
        const port = relay.port;
        // Sample the footer every 100 ms from the kill until the stream is back.
        const seen = new Set();
        let sampling = true;
        const sampler = (async () => {
          while (sampling) {
            seen.add((await page.textContent('#facts').catch(() => '')).trim());
            await sleep(100);
          }
        })();
        await relay.stop('SIGKILL');
        await waitFor(async () => /reconnecting…/.test(await page.textContent('#facts')), { timeout: 10000, what: '"reconnecting…" while the relay is down' });
        await sleep(1000);
        relay = await restartRelayOnPort(port, { args: ['--no-demo'] });
        // The publisher comes back by itself (after its backoff); until then
        // the new relay answers 404 for the stream: still "reconnecting…".
        await waitFor(async () => (await info(relay.base, 'cam'))?.live, { timeout: 30000, what: 'the publisher to come back' });
        await waitFor(async () => /viewers/.test(await page.textContent('#facts')), { timeout: 10000, what: 'the facts again' });
        sampling = false;
        await sampler;
        const texts = [...seen];
        assert.ok(texts.some((t) => /reconnecting…/.test(t)), JSON.stringify(texts));
        assert.ok(!texts.some((t) => /not live yet/.test(t)), `the footer said "not live yet": ${JSON.stringify(texts)}`);
        console.log(`# footer during the restart: ${JSON.stringify(texts.map((t) => t.slice(0, 40)))}`);
      });
    } finally {
      pub.kill('SIGKILL');
      await relay.stop();
    }
  });
});
