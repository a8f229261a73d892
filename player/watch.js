// watch.js — the /watch/{name} page: builds a Player for the stream named in
// the path, draws the stats overlay, and exposes window.relaycastPlayer.
// Query: ?transport=ws|stream|longpoll|poll pins a transport; ?latency=S
// fixes the target buffer; ?upgrade=MS sets the upgrade-probe delay;
// ?debug=1 shows the event log under the player.

import { Player } from './player.js';
import { MseAppender } from './mse.js';
import { NativeHls } from './native-hls.js';
import { livePath } from './ws.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const name = decodeURIComponent(location.pathname.replace(/^\/watch\//, '').replace(/\/+$/, '')) || 'demo';
const video = $('video');

document.title = `${name} · relaycast`;
$('name').textContent = name;

// Transport selector: links that keep the other query parameters.
for (const a of $('transports').querySelectorAll('a')) {
  const q = new URLSearchParams(location.search);
  if (a.dataset.t) q.set('transport', a.dataset.t);
  else q.delete('transport');
  const qs = q.toString();
  a.href = `${location.pathname}${qs ? `?${qs}` : ''}`;
  if ((params.get('transport') || '') === a.dataset.t) a.classList.add('on');
}

const ICON_MUTED = '<svg viewBox="0 0 24 24"><path d="M3 9v6h4l5 5V4L7 9H3zm13.6 3 2.7-2.7-1.4-1.4-2.7 2.7-2.7-2.7-1.4 1.4 2.7 2.7-2.7 2.7 1.4 1.4 2.7-2.7 2.7 2.7 1.4-1.4-2.7-2.7z"/></svg>';
const ICON_SOUND = '<svg viewBox="0 0 24 24"><path d="M3 9v6h4l5 5V4L7 9H3zm13.5 3A4.5 4.5 0 0 0 14 8v8a4.5 4.5 0 0 0 2.5-4zM14 3.2v2.1a7 7 0 0 1 0 13.4v2.1a9 9 0 0 0 0-17.6z"/></svg>';

function showNotice(text, spinning = true) {
  $('notice').classList.toggle('hidden', !text);
  $('notice-text').textContent = text || '';
  $('notice').querySelector('.spinner').style.display = spinning ? '' : 'none';
}

const logEl = $('log');
if (params.get('debug')) logEl.classList.remove('hidden');

let player = null;
if (NativeHls.isSupported(video)) {
  // No MSE, but the browser plays HLS itself (iPhone, some TVs): LL-HLS rung.
  const q = new URLSearchParams();
  for (const k of ['exp', 'sig']) if (params.has(k)) q.set(k, params.get(k));
  player = new NativeHls(video, {
    name,
    query: q.toString(),
    onLog: (line) => {
      if (params.get('debug')) {
        logEl.textContent += `${line}\n`;
        console.log(`[relaycast] ${line}`);
      }
    },
  });
  window.relaycastPlayer = { player, stats: () => player.stats(), log: () => player.log.slice() };
  player.start();
} else if (!MseAppender.isSupported()) {
  showNotice('This browser has neither Media Source Extensions nor native HLS, so it cannot play this stream here. Try VLC or mpv on /live/' + name + '/index.m3u8 or /live/' + name + '.mp4', false);
} else {
  const num = (k) => (params.has(k) && params.get(k) !== '' && isFinite(Number(params.get(k))) ? Number(params.get(k)) : undefined);
  const chooser = {};
  if (num('upgrade') !== undefined) chooser.upgradeAfter = num('upgrade');
  if (num('firstdata') !== undefined) chooser.firstDataTimeout = num('firstdata');
  player = new Player(video, {
    name,
    transport: params.get('transport'),
    latency: num('latency') ?? null,
    chooser,
    onLog: (line) => {
      if (params.get('debug')) {
        logEl.textContent += `${line}\n`;
        logEl.scrollTop = logEl.scrollHeight;
        console.log(`[relaycast] ${line}`);
      }
    },
  });
  window.relaycastPlayer = {
    player,
    stats: () => player.stats(),
    appendedSeqs: () => player.appendedSeqs(),
    log: () => player.log.slice(),
    history: () => player.chooser.history.slice(),
  };
  player.start();
}

// ---- controls ----
function renderMute() {
  $('mute').innerHTML = video.muted ? ICON_MUTED : ICON_SOUND;
  $('mute').title = video.muted ? 'Unmute (m)' : 'Mute (m)';
}
renderMute();
$('mute').onclick = () => { video.muted = !video.muted; renderMute(); };
video.addEventListener('volumechange', renderMute);
const hud = $('hud');
if (params.get('hud') === '0') hud.classList.add('hidden');
$('stats').onclick = () => hud.classList.toggle('hidden');
$('fs').onclick = () => (document.fullscreenElement ? document.exitFullscreen() : $('player').requestFullscreen());
$('golive').onclick = () => {
  const b = video.buffered;
  if (b.length && player?.latency) video.currentTime = Math.max(b.start(b.length - 1), b.end(b.length - 1) - player.latency.target());
};
document.addEventListener('keydown', (e) => {
  if (e.target && e.target.tagName === 'INPUT') return;
  if (e.key === 'm') $('mute').click();
  if (e.key === 's') $('stats').click();
  if (e.key === 'f') $('fs').click();
});
video.addEventListener('click', () => { if (video.paused) video.play(); });

// ---- overlay ----
const fmtRate = (bps) => (bps >= 1e6 ? `${(bps / 1e6).toFixed(2)} Mb/s` : `${Math.round(bps / 1e3)} kb/s`);
const fmtDur = (s) => {
  s = Math.max(0, Math.floor(s));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
};
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);

function row(k, v, cls = '') {
  return `<span class="k">${esc(k)}</span><span class="v ${cls}">${esc(v)}</span>`;
}

function drawHud() {
  if (!player) return;
  const s = player.stats();
  const d = s.delay;
  const dcls = d === null ? '' : d < 0.5 ? 'good' : d < 1.5 ? 'meh' : 'bad';
  hud.innerHTML = [
    row('transport', s.transport + (params.get('transport') ? ' (forced)' : '')),
    row('delay', d === null ? '–' : `${Math.round(d * 1000)} ms`, dcls),
    row('bitrate', fmtRate(s.bitrate)),
    row('buffer', `${Math.round(s.bufferAhead * 1000)} ms`),
    row('speed', `${s.playbackRate.toFixed(2)}×`),
    row('seq', s.lastSeq === null ? '–' : s.lastSeq),
    row('skips', s.skips, s.skips ? 'meh' : ''),
    row('gaps / repeats', `${s.gaps} / ${s.repeats}`, s.gaps || s.repeats ? 'bad' : ''),
    row('reconnects', s.reconnects + (s.fallbacks ? ` · ${s.fallbacks} fallback` : '')),
    row('frames', s.decodedFrames === null ? '–' : `${s.decodedFrames} (${s.droppedFrames} dropped)`),
  ].join('');

  const st = s.state;
  const badge = $('badge');
  if (st === 'playing' && !video.paused && s.publisher !== 'gone') {
    badge.className = 'badge live';
    badge.textContent = 'live';
  } else {
    badge.className = 'badge off';
    badge.textContent = st.startsWith('connecting') ? 'connecting' : st.length > 26 ? `${st.slice(0, 24)}…` : st;
  }
  if (st === 'playing' && s.appended > 0 && (video.readyState >= 2 || s.currentTime > 0)) {
    showNotice(video.paused && player.latency?.blocked ? 'Click to play' : '', false);
  } else if (st !== 'playing') {
    showNotice(st.charAt(0).toUpperCase() + st.slice(1) + (st.startsWith('connecting') ? '…' : ''), !/not|cannot|ended/.test(st));
  }
}
setInterval(drawHud, 250);

// ---- facts below the player (from /live/{name}/info) ----
// Once the stream has been live on this page, a relay that does not answer
// (restarting) or does not know the stream yet (restarted, the publisher not
// back yet) means "reconnecting…", not "not live yet".
let wasLive = false;
const factLine = (v) => { $('facts').innerHTML = `<div class="fact"><div class="k">stream</div><div class="v">${esc(v)}</div></div>`; };
function whyNoInfo(status) {
  const st = player ? player.state : '';
  if (st.startsWith('stream ended')) return 'ended';
  if (wasLive && (status === 404 || status === 0 || status >= 500)) return 'reconnecting…';
  return status === 404 ? 'not live yet' : status === 0 ? 'relay unreachable' : `HTTP ${status}`;
}
async function drawFacts() {
  try {
    let res;
    try {
      res = await fetch(livePath(name, '/info'), { cache: 'no-store' });
    } catch {
      factLine(whyNoInfo(0));
      return;
    }
    if (!res.ok) {
      factLine(whyNoInfo(res.status));
      return;
    }
    const i = await res.json();
    if (i.live) wasLive = true;
    const fact = (k, v, mono) => `<div class="fact"><div class="k">${esc(k)}</div><div class="v${mono ? ' mono' : ''}">${esc(v)}</div></div>`;
    $('facts').innerHTML = [
      fact('viewers', i.viewers ?? '–'),
      fact('uptime', i.uptime_s !== undefined ? fmtDur(i.uptime_s) : '–'),
      fact('bitrate', i.bitrate_bps ? fmtRate(i.bitrate_bps) : '–'),
      fact('codecs', i.codecs || '–', true),
      fact('publisher', i.live ? 'live' : 'gone'),
      fact('epoch', i.epoch ?? '–', true),
      fact('watch elsewhere', `ffplay ${location.origin}/live/${name}.mp4`, true),
    ].join('');
  } catch {
    /* a body cut short: keep the last facts */
  }
}
drawFacts();
setInterval(drawFacts, 2000);
