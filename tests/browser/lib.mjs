// Shared helpers for the browser tests: start/stop the relay binary, launch
// headless Chromium (playwright-core driving /usr/bin/chromium) or Firefox
// (puppeteer-core over WebDriver BiDi driving /usr/bin/firefox-esr), spawn
// ffmpeg publishers, poll for conditions, save screenshots. Every child process is
// tracked and killed when the test process exits, even on failure.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '..', '..');
// RELAYCAST_BIN, else `cargo build`'s output: $CARGO_TARGET_DIR/debug (a
// relative CARGO_TARGET_DIR taken from the repository root, where cargo runs),
// else target/debug.
export const relayBin = process.env.RELAYCAST_BIN
  ? path.resolve(process.env.RELAYCAST_BIN)
  : path.resolve(repoRoot, process.env.CARGO_TARGET_DIR || 'target', 'debug', 'relaycast');
export const shotsDir = path.join(repoRoot, 'artifacts', 'screenshots');
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
export const firefoxPath = process.env.FIREFOX || '/usr/bin/firefox-esr';

const children = new Set();
function track(p) {
  children.add(p);
  p.once('exit', () => children.delete(p));
  return p;
}
function killAll() {
  for (const p of children) {
    try { p.kill('SIGKILL'); } catch { /* gone */ }
  }
}
process.once('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM']) process.once(sig, () => { killAll(); process.exit(130); });

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` (sync or async) until it returns a truthy value, or throws after `ms`. */
export async function waitFor(fn, { timeout = 10000, interval = 100, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    }
    await sleep(interval);
  }
}

/**
 * Starts `relaycast serve --listen 127.0.0.1:PORT` and waits for its
 * "relaycast: listening on http://127.0.0.1:PORT/" line.
 * Serves the player from the source tree (RELAYCAST_PLAYER_DIR) unless
 * RELAYCAST_TEST_EMBEDDED_PLAYER=1.
 */
export async function startRelay({ port = 0, args = [], env = {}, timeout = 20000 } = {}) {
  if (!fs.existsSync(relayBin)) throw new Error(`relay binary not found at ${relayBin} (run cargo build, or set RELAYCAST_BIN)`);
  const playerEnv = process.env.RELAYCAST_TEST_EMBEDDED_PLAYER === '1' ? {} : { RELAYCAST_PLAYER_DIR: path.join(repoRoot, 'player') };
  const proc = track(spawn(relayBin, ['serve', '--listen', `127.0.0.1:${port}`, ...args], {
    env: { RUST_LOG: 'warn', ...process.env, ...playerEnv, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  }));
  const log = [];
  let buf = '';
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`relay did not print its listening line within ${timeout} ms:\n${log.join('\n')}`)), timeout);
    proc.stdout.on('data', (d) => {
      buf += d.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        log.push(line);
        const m = /relaycast: listening on (http:\/\/[^\s/]+)\/?/.exec(line);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      }
    });
    proc.stderr.on('data', (d) => {
      for (const l of d.toString().split('\n')) if (l) log.push(l);
      if (log.length > 2000) log.splice(0, log.length - 2000);
    });
    proc.once('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`relay exited (${code ?? sig}) before listening:\n${log.join('\n')}`));
    });
  });
  const base = await ready;
  const relay = {
    proc,
    base,
    port: Number(new URL(base).port),
    log,
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill(signal);
      const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await once(proc, 'exit').catch(() => {});
      clearTimeout(t);
    },
  };
  return relay;
}

/** Starts the relay again on the same port (retrying while the port is still held). */
export async function restartRelayOnPort(port, opts = {}) {
  let lastErr;
  for (let i = 0; i < 20; i++) {
    try {
      return await startRelay({ ...opts, port });
    } catch (e) {
      lastErr = e;
      await sleep(250);
    }
  }
  throw lastErr;
}

export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required'];

export async function launchBrowser(extraArgs = []) {
  return chromium.launch({ executablePath: chromiumPath, headless: true, args: [...CHROMIUM_ARGS, ...extraArgs], timeout: 30000 });
}

/**
 * Headless Firefox ESR driven by puppeteer-core over WebDriver BiDi, with a
 * fresh profile puppeteer makes (and removes on close). It runs as root here
 * as it is (HOME writable). Prefs: autoplay allowed (the player's <video> is
 * muted, but a test may unmute it), and nothing that phones home.
 * Pages from it work with stats(), waitPlaying(), watchAdvance(), diagnose()
 * and screenshot() below, as Playwright's do.
 */
export async function launchFirefox() {
  const { default: puppeteer } = await import('puppeteer-core');
  return puppeteer.launch({
    browser: 'firefox',
    protocol: 'webDriverBiDi',
    executablePath: firefoxPath,
    headless: true,
    timeout: 30000,
    env: { ...process.env, MOZ_HEADLESS: '1' },
    extraPrefsFirefox: {
      'media.autoplay.default': 0, // allowed
      'media.autoplay.blocking_policy': 0,
      'media.track.enabled': true, // HTMLMediaElement.audioTracks / videoTracks
      'app.update.enabled': false,
      'browser.shell.checkDefaultBrowser': false,
      'datareporting.policy.dataSubmissionEnabled': false,
      'toolkit.telemetry.enabled': false,
      'network.captive-portal-service.enabled': false,
      'network.connectivity-service.enabled': false,
    },
  });
}

/** Collect a page's errors and its last 500 console lines (Playwright and puppeteer pages alike). */
function collectLogs(page) {
  page.errorsSeen = [];
  page.consoleLines = [];
  page.on('pageerror', (e) => page.errorsSeen.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    page.consoleLines.push(`${m.type()}: ${m.text()}`);
    if (page.consoleLines.length > 500) page.consoleLines.shift();
  });
  return page;
}

/** A puppeteer (Firefox) page whose console errors and page errors are collected, as newPage's. */
export async function newFirefoxPage(browser) {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  return collectLogs(page);
}

/** A page whose console errors, page errors and player log lines are collected. */
export async function newPage(browser, { viewport = { width: 1280, height: 800 } } = {}) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  return collectLogs(page);
}

export const stats = (page) => page.evaluate(() => window.relaycastPlayer && window.relaycastPlayer.stats());
export const appendedSeqs = (page) => page.evaluate(() => window.relaycastPlayer.appendedSeqs());

/** Waits until the player is playing: fragments appended and currentTime moving. */
export async function waitPlaying(page, timeout = 20000) {
  await waitFor(async () => {
    const s = await stats(page);
    return s && s.appended > 0 && s.currentTime > 0 && !s.paused;
  }, { timeout, what: 'the player to start playing' });
  return stats(page);
}

/**
 * Watches currentTime advance by `seconds` (within `timeout`) while sampling
 * stats every 250 ms; returns {first, last, samples}.
 */
export async function watchAdvance(page, seconds, timeout) {
  const first = await stats(page);
  const samples = [first];
  await waitFor(async () => {
    const s = await stats(page);
    samples.push(s);
    return s.currentTime - first.currentTime >= seconds;
  }, { timeout, interval: 250, what: `currentTime to advance ${seconds} s (from ${first.currentTime.toFixed(2)})` });
  return { first, last: samples[samples.length - 1], samples };
}

export function median(xs) {
  const v = xs.filter((x) => typeof x === 'number' && isFinite(x)).sort((a, b) => a - b);
  return v.length ? v[Math.floor(v.length / 2)] : null;
}

/** Splits appended seqs by epoch and checks each run is contiguous (no gap, no repeat). */
export function checkSeqRuns(seqs) {
  const runs = [];
  for (const { epoch, seq } of seqs) {
    let r = runs[runs.length - 1];
    if (!r || r.epoch !== epoch) {
      r = { epoch, seqs: [] };
      runs.push(r);
    }
    r.seqs.push(seq);
  }
  const problems = [];
  for (const r of runs) {
    for (let i = 1; i < r.seqs.length; i++) {
      if (r.seqs[i] !== r.seqs[i - 1] + 1) problems.push(`epoch ${r.epoch}: ${r.seqs[i - 1]} → ${r.seqs[i]}`);
    }
  }
  const epochs = runs.map((r) => r.epoch);
  if (new Set(epochs).size !== epochs.length) problems.push(`an epoch came back: ${epochs.join(',')}`);
  return { runs: runs.map((r) => ({ epoch: r.epoch, first: r.seqs[0], last: r.seqs[r.seqs.length - 1], n: r.seqs.length })), problems };
}

export async function screenshot(page, name) {
  fs.mkdirSync(shotsDir, { recursive: true });
  const file = path.join(shotsDir, `${name}.png`);
  await page.screenshot({ path: file });
  return file;
}

/** What to print when a player test fails: stats, the player's log, console lines. */
export async function diagnose(page) {
  try {
    const d = await page.evaluate(() => ({
      stats: window.relaycastPlayer && window.relaycastPlayer.stats(),
      log: window.relaycastPlayer && window.relaycastPlayer.log().slice(-40),
      history: window.relaycastPlayer && window.relaycastPlayer.history().slice(-20),
    }));
    return JSON.stringify({ ...d, errors: page.errorsSeen, console: page.consoleLines.slice(-30) }, null, 1);
  } catch (e) {
    return `(no diagnostics: ${e.message})`;
  }
}

/**
 * Publishes a live ffmpeg test source to `base`/publish/`name` with HTTP PUT
 * (chunked), or, with `rtmp`, as FLV to that RTMP URL (`base`/`name` unused).
 * codec: 'h264' (H.264/AAC), 'h264-opus' (H.264/Opus) or 'vp9' (VP9/Opus);
 * the Opus ones not over RTMP.
 */
export function ffmpegPublish(base, name, { codec = 'h264', size = '640x360', fragMs = 200, extra = [], rtmp = null } = {}) {
  const src = ['-re', '-f', 'lavfi', '-i', `testsrc2=size=${size}:rate=30`, '-re', '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000'];
  const h264 = ['-c:v', 'libx264', '-preset', 'veryfast', '-tune', 'zerolatency', '-profile:v', 'high', '-level', '3.1', '-pix_fmt', 'yuv420p',
    '-g', '30', '-keyint_min', '30', '-sc_threshold', '0'];
  const opus = ['-c:a', 'libopus', '-b:a', '96k'];
  const enc = codec === 'vp9'
    ? ['-c:v', 'libvpx-vp9', '-deadline', 'realtime', '-cpu-used', '8', '-row-mt', '1', '-b:v', '1M', '-g', '30', '-keyint_min', '30', '-pix_fmt', 'yuv420p', ...opus]
    : codec === 'h264-opus'
      ? [...h264, ...opus]
      : [...h264, '-c:a', 'aac', '-b:a', '128k', '-ac', '2'];
  const mux = rtmp ? ['-f', 'flv', rtmp] : ['-f', 'mp4', '-movflags', 'empty_moov+default_base_moof+frag_keyframe', '-frag_duration', String(fragMs * 1000),
    '-method', 'PUT', '-chunked_post', '1', `${base}/publish/${name}`];
  const proc = track(spawn('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-nostdin', ...src, ...enc, ...extra, ...mux], { stdio: ['ignore', 'ignore', 'pipe'] }));
  proc.errText = '';
  proc.stderr.on('data', (d) => { proc.errText += d.toString(); });
  proc.stopNow = async () => {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill('SIGKILL');
    await once(proc, 'exit').catch(() => {});
  };
  return proc;
}

export async function getJson(url) {
  const res = await fetch(url, { cache: 'no-store' });
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return res.json();
}

/**
 * A TCP proxy in front of the relay, to cut connections (a network drop) or
 * to act as a buffering proxy: responses to requests whose request line
 * matches `bufferIf` are held back until `bufferBytes` have piled up.
 */
export async function tcpProxy(targetPort, { bufferIf = null, bufferBytes = 4 << 20 } = {}) {
  const net = await import('node:net');
  const sockets = new Set();
  let refuseUntil = 0;
  const server = net.createServer((client) => {
    if (Date.now() < refuseUntil) {
      // During an outage: reset every new connection at once.
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect(targetPort, '127.0.0.1');
    sockets.add(client);
    sockets.add(upstream);
    let buffering = false;
    let held = [];
    let heldBytes = 0;
    client.on('data', (d) => {
      const head = d.subarray(0, 200).toString('latin1');
      if (/^(GET|POST|PUT|HEAD) /.test(head)) buffering = !!(bufferIf && bufferIf(head.split('\r\n')[0]));
      upstream.write(d);
    });
    upstream.on('data', (d) => {
      if (!buffering) return client.write(d);
      held.push(d);
      heldBytes += d.length;
      if (heldBytes >= bufferBytes) {
        client.write(Buffer.concat(held));
        held = [];
        heldBytes = 0;
      }
      return undefined;
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = server.address().port;
  return {
    port,
    base: `http://127.0.0.1:${port}`,
    /**
     * Cuts every open connection (both ways), like a network drop; returns how
     * many were cut. With `outageMs`, new connections are reset for that long
     * (the network stays down), so the browser cannot hide the drop by
     * silently retrying an idempotent request on a fresh connection.
     */
    dropAll({ outageMs = 0 } = {}) {
      const n = sockets.size;
      refuseUntil = Date.now() + outageMs;
      for (const s of sockets) s.destroy();
      sockets.clear();
      return n / 2;
    },
    close() {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}
