// Measures the player's delay behind live on the built-in demo stream, per
// transport, in headless Chromium: `node delay.mjs [seconds] [runs] [transports…]`.
// The delay is the player's own figure (stats().delay), measured against the
// relay's clock: relay now − relay arrival time of the newest appended
// fragment + what is buffered ahead of currentTime. Not part of `npm test`
// (figures, not pass/fail); see docs/player.md for results.

import { startRelay, launchBrowser, newPage, stats, waitPlaying, sleep, median } from './lib.mjs';

const seconds = Number(process.argv[2] || 10);
const runs = Number(process.argv[3] || 3);
const transports = process.argv.slice(4).length ? process.argv.slice(4) : ['ws', 'stream', 'longpoll', 'poll'];

const pct = (xs, p) => {
  const v = [...xs].sort((a, b) => a - b);
  return v[Math.min(v.length - 1, Math.floor(v.length * p))];
};

const relay = await startRelay();
const browser = await launchBrowser();
try {
  for (const t of transports) {
    const medians = [];
    for (let r = 0; r < runs; r++) {
      const page = await newPage(browser);
      await page.goto(`${relay.base}/watch/demo?transport=${t}`);
      await waitPlaying(page);
      await sleep(3000); // let the latency controller settle
      const d = [];
      let last;
      for (let i = 0; i < seconds * 4; i++) {
        last = await stats(page);
        if (typeof last.delay === 'number') d.push(last.delay);
        await sleep(250);
      }
      await page.context().close();
      medians.push(median(d));
      console.log(`${t} run ${r + 1}: delay p50 ${(median(d) * 1000).toFixed(0)} ms, p90 ${(pct(d, 0.9) * 1000).toFixed(0)} ms, ` +
        `max ${(Math.max(...d) * 1000).toFixed(0)} ms over ${d.length} samples; stalls ${last.stalls}, dropped frames ${last.droppedFrames}, skips ${last.skips}`);
    }
    console.log(`${t}: median of ${runs} run medians = ${(median(medians) * 1000).toFixed(0)} ms`);
  }
} finally {
  await browser.close();
  await relay.stop();
}
