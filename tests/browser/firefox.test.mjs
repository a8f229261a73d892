// Firefox (#16): Opus in fMP4 plays through the player in Firefox ESR too
// (puppeteer-core over WebDriver BiDi driving Debian's /usr/bin/firefox-esr,
// headless). Two publishers of H.264 + Opus: ffmpeg over HTTP PUT, and
// headless Chromium's broadcast page over WHIP (its fake camera and
// microphone). For each, /watch/NAME in Firefox must play for several seconds
// with the Opus track there, and report the transport the player chose
// (its own choice; the ffmpeg stream also on each forced ?transport=).
//
// Skipped, saying so, when firefox-esr is not installed, unless
// RELAYCAST_REQUIRE_FIREFOX=1 (as .ci/run sets), where a missing Firefox fails.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import {
  startRelay, launchBrowser, newPage, launchFirefox, newFirefoxPage, firefoxPath, ffmpegPublish,
  waitPlaying, watchAdvance, waitFor, screenshot, diagnose,
} from './lib.mjs';

const TRANSPORTS = ['ws', 'stream', 'longpoll', 'poll'];
const haveFirefox = fs.existsSync(firefoxPath);
const required = process.env.RELAYCAST_REQUIRE_FIREFOX === '1';
const skip = !haveFirefox && !required
  ? `${firefoxPath} not found (apt-get install firefox-esr; RELAYCAST_REQUIRE_FIREFOX=1 makes this a failure)`
  : false;

/**
 * In the page: what the media element says of its audio. mozHasAudio is set
 * once the decoder has set up an audio track, and audioTracks (the
 * media.track.enabled pref, see launchFirefox) lists the tracks it found in
 * the init segment. (The decoded samples themselves cannot be read here: with
 * no sound device, headless Firefox's AudioContext never leaves 'suspended',
 * so neither a MediaElementSource nor a captured stream reaches an analyser.)
 * That the muxed SourceBuffer plays at all means Opus frames are buffered
 * along with the video: its buffered range is the two tracks' intersection.
 */
function audioInPage() {
  const v = document.querySelector('video');
  const tracks = (list) => Array.from(list || [], (t) => ({ id: t.id, kind: t.kind, on: t.enabled ?? t.selected }));
  return { mozHasAudio: v.mozHasAudio, audioTracks: tracks(v.audioTracks), videoTracks: tracks(v.videoTracks) };
}

/**
 * Plays /watch/NAME in a Firefox page (the player's own choice of transport,
 * or `transport` forced): playing, `seconds` of advance, the Opus track;
 * returns the last stats and the audio report.
 */
async function playsInFirefox(page, base, name, label, { transport = null, seconds = 3 } = {}) {
  await page.goto(`${base}/watch/${name}?debug=1${transport ? `&transport=${transport}` : ''}`);
  await waitPlaying(page, 30000);
  const { first, last } = await watchAdvance(page, seconds, 15000);
  if (transport) assert.equal(last.transport, transport, label);
  assert.match(last.mime || '', /avc1/, `${label}: mime ${last.mime}`);
  assert.match(last.mime || '', /opus/, `${label}: mime ${last.mime}`);
  assert.ok(TRANSPORTS.includes(last.transport), `${label}: the player reports its transport (got ${last.transport})`);
  assert.equal(last.state, 'playing', label);
  assert.ok(last.decodedFrames > first.decodedFrames, `${label}: decoded video frames ${first.decodedFrames} → ${last.decodedFrames}`);
  assert.equal(last.mseErrors, 0, last.mseError);
  assert.equal(last.mediaError, null);
  const audio = await page.evaluate(audioInPage);
  assert.equal(audio.mozHasAudio, true, `${label}: the media element has audio (${JSON.stringify(audio)})`);
  assert.equal(audio.audioTracks.length, 1, `${label}: one audio track (${JSON.stringify(audio)})`);
  assert.equal(audio.audioTracks[0].on, true, `${label}: the audio track is enabled (${JSON.stringify(audio)})`);
  assert.equal(audio.videoTracks.length, 1, `${label}: one video track (${JSON.stringify(audio)})`);
  return { last, audio };
}

describe('Firefox ESR plays H.264 + Opus in fMP4 through the player', () => {
  let relay;
  let firefox;
  let version;
  before(async () => {
    if (skip) return;
    assert.ok(haveFirefox, `${firefoxPath} not found, and RELAYCAST_REQUIRE_FIREFOX=1: apt-get install firefox-esr`);
    relay = await startRelay({ args: ['--webrtc', '127.0.0.1:0'] });
    firefox = await launchFirefox();
    version = await firefox.version();
  });
  after(async () => {
    await firefox?.close();
    await relay?.stop();
  });

  /** ffmpeg publishes H.264 + Opus as `name`; `body(page)` runs on a Firefox page, with the player's, ffmpeg's and the relay's logs on failure. */
  async function withFfmpegPage(name, body) {
    const pub = ffmpegPublish(relay.base, name, { codec: 'h264-opus' });
    const page = await newFirefoxPage(firefox);
    try {
      await body(page);
    } catch (e) {
      e.message += `\n--- player diagnostics ---\n${await diagnose(page)}\n--- ffmpeg ---\n${pub.errText}\n--- relay ---\n${relay.log.slice(-30).join('\n')}`;
      throw e;
    } finally {
      await page.close().catch(() => {});
      await pub.stopNow();
    }
  }

  test('an ffmpeg H.264/Opus publish over HTTP PUT plays in Firefox', { timeout: 45000, skip }, async () => {
    await withFfmpegPage('ff-opus', async (page) => {
      const { last, audio } = await playsInFirefox(page, relay.base, 'ff-opus', 'ffmpeg');
      await screenshot(page, 'firefox-watch-ffmpeg');
      console.log(`# ${version}: ffmpeg h264+opus over ${last.transport}, ${last.mime}, ${last.decodedFrames} frames, ` +
        `audio tracks ${audio.audioTracks.length}, delay ${Math.round(last.delay * 1000)} ms`);
    });
  });

  test('an ffmpeg H.264/Opus publish plays in Firefox on every forced transport', { timeout: 45000, skip }, async () => {
    await withFfmpegPage('ff-forced', async (page) => {
      for (const transport of TRANSPORTS) {
        const { last } = await playsInFirefox(page, relay.base, 'ff-forced', transport, { transport, seconds: 2 });
        assert.equal(last.gaps, 0, transport);
        assert.equal(last.repeats, 0, transport);
        console.log(`# ${version}: ?transport=${transport}: ${last.appended} fragments, ${last.decodedFrames} frames, delay ${Math.round(last.delay * 1000)} ms`);
      }
    });
  });

  test('a WHIP publish from Chromium (H.264/Opus) plays in Firefox', { timeout: 45000, skip }, async () => {
    const chromium = await launchBrowser(['--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream']);
    const pub = await newPage(chromium);
    const page = await newFirefoxPage(firefox);
    try {
      await pub.goto(`${relay.base}/broadcast/ff-whip?autostart=1`);
      await waitFor(async () => {
        const s = await pub.evaluate(() => window.relaycastBroadcast.stats());
        return s.state === 'live' && s.whip && s;
      }, { timeout: 20000, what: 'the broadcast page to go live over WHIP' });
      const { last, audio } = await playsInFirefox(page, relay.base, 'ff-whip', 'WHIP');
      await screenshot(page, 'firefox-watch-whip');
      console.log(`# ${version}: WHIP h264+opus over ${last.transport}, ${last.mime}, ${last.decodedFrames} frames, ` +
        `audio tracks ${audio.audioTracks.length}, delay ${Math.round(last.delay * 1000)} ms`);
    } catch (e) {
      e.message += `\n--- player diagnostics ---\n${await diagnose(page)}\n--- publisher ---\n${pub.consoleLines.join('\n')}\n--- relay ---\n${relay.log.slice(-30).join('\n')}`;
      throw e;
    } finally {
      await page.close().catch(() => {});
      await chromium.close();
    }
  });
});
