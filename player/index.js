// index.js — the stream list: GET /api/streams every 2 s, one card per stream
// linking to /watch/{name}; a form that opens /broadcast/{name}.

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
const fmtRate = (bps) => (!bps ? '–' : bps >= 1e6 ? `${(bps / 1e6).toFixed(1)} Mb/s` : `${Math.round(bps / 1e3)} kb/s`);
const fmtDur = (s) => {
  s = Math.max(0, Math.floor(s || 0));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
};

// A stable two-colour gradient per stream name, so cards are told apart at a glance.
function hue(name) {
  let h = 2166136261;
  for (const c of name) h = Math.imul(h ^ c.charCodeAt(0), 16777619);
  return (h >>> 0) % 360;
}

const EYE = '<svg viewBox="0 0 24 24" aria-label="viewers"><path d="M12 5C6.5 5 2.7 9.1 1.5 12c1.2 2.9 5 7 10.5 7s9.3-4.1 10.5-7C21.3 9.1 17.5 5 12 5zm0 11.5a4.5 4.5 0 1 1 0-9 4.5 4.5 0 0 1 0 9zm0-2.3a2.2 2.2 0 1 0 0-4.4 2.2 2.2 0 0 0 0 4.4z"/></svg>';
const PLAY = '<svg viewBox="0 0 24 24"><path d="M8 5v14l11-7z"/></svg>';

// The operator's view of a stream (the same numbers as /metrics).
function opsLine(s) {
  const ms = (v) => (v == null ? '–' : v < 10 ? `${v.toFixed(1)} ms` : `${Math.round(v)} ms`);
  const d = s.delivery || {};
  const by = Object.entries(s.viewers_by_transport || {}).map(([t, n]) => `${t} ${n}`).join(', ');
  return [
    `<span>delivery ${ms(d.p50_ms)} / ${ms(d.p99_ms)}</span>`,
    `<span>skips ${esc(s.skips ?? 0)} · dropped ${esc(s.lag_disconnects ?? 0)}</span>`,
    by ? `<span>${esc(by)}</span>` : '',
  ].join('');
}

function card(s) {
  const h = hue(s.name);
  const bg = `radial-gradient(120% 90% at 15% 10%, hsl(${h} 70% 42%) 0%, transparent 60%),` +
    `radial-gradient(120% 100% at 90% 100%, hsl(${(h + 70) % 360} 65% 30%) 0%, transparent 65%), #0f1218`;
  const live = s.live !== false;
  return `<a class="card" href="/watch/${encodeURIComponent(s.name)}" data-name="${esc(s.name)}">
    <div class="thumb" style="background:${bg}">
      <span class="badge ${live ? 'live' : 'off'}">${live ? 'live' : 'publisher gone'}</span>
      <span class="viewers">${EYE}${esc(s.viewers ?? 0)}</span>
      <span class="play">${PLAY}</span>
      <span class="uptime">${fmtDur(s.uptime_s)}</span>
    </div>
    <div class="body">
      <div class="name">${esc(s.name)}</div>
      <div class="sub"><span>${esc(s.codecs || '–')}</span><span>${fmtRate(s.bitrate_bps)}</span></div>
      <div class="sub ops" title="delivery latency p50 / p99 (arrival → written to a viewer) · viewer skips · lag disconnects · viewers by transport">${opsLine(s)}</div>
    </div>
  </a>`;
}

async function refresh() {
  try {
    const res = await fetch('/api/streams', { cache: 'no-store' });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const { streams = [] } = await res.json();
    streams.sort((a, b) => (b.viewers || 0) - (a.viewers || 0) || a.name.localeCompare(b.name));
    const live = streams.filter((s) => s.live !== false).length;
    $('summary').textContent = streams.length
      ? `${live} live stream${live === 1 ? '' : 's'}${streams.length > live ? `, ${streams.length - live} waiting for their publisher` : ''} · updated ${new Date().toLocaleTimeString()}`
      : 'No streams right now.';
    $('grid').innerHTML = streams.length
      ? streams.map(card).join('')
      : '<div class="empty">Nothing is live. Start one from your camera with the button above, or with ffmpeg (below).</div>';
  } catch (e) {
    $('summary').innerHTML = `<span class="err">Cannot reach the relay (${esc(e.message)}); retrying…</span>`;
  }
}

$('hint-cmd').textContent =
  `ffmpeg -re -i input.mp4 -c copy -f mp4 -movflags frag_keyframe+empty_moov+default_base_moof \\\n` +
  `       -method PUT ${location.origin}/publish/mystream\n` +
  `ffplay ${location.origin}/live/mystream.mp4`;

$('golive').addEventListener('submit', (e) => {
  e.preventDefault();
  const n = $('golive-name').value.trim();
  if (n) location.href = `/broadcast/${encodeURIComponent(n)}`;
});

refresh();
setInterval(refresh, 2000);
