// broadcast.js — the /broadcast/{name} page: camera + mic through
// getUserMedia, published one of two ways:
// - WHIP (preferred, lower delay): where the browser has RTCPeerConnection
//   and the relay runs WHIP (`--webrtc`), the tracks go over WebRTC (H.264 +
//   Opus) with an SDP offer POSTed to /whip/{name}; DELETE on the returned
//   Location ends it. The relay says 503 when WHIP is off: then
// - MediaRecorder: recorded as fragmented MP4, every chunk sent as a binary
//   WebSocket message to /publish/{name} (the relay's WebSocket ingest:
//   binary messages = consecutive bytes of the fMP4 stream).
// Query: ?key=K is passed on as the publish key; ?gop=MS asks for a keyframe
// (hence a fragment: Chromium cuts one per GOP) every MS ms; ?autostart=1;
// ?via=ws skips WHIP; ?source=clock sends a test picture whose top row
// codes the page's clock (Date.now(), ms) for measuring the delay to a
// player (see tests/browser/whip.test.mjs, `readClock` there).

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const name = decodeURIComponent(location.pathname.replace(/^\/broadcast\//, '').replace(/\/+$/, '')) || 'browser';
const gopMs = Math.max(200, Number(params.get('gop')) || 1000);
const MIMES = ['video/mp4;codecs=avc1,opus', 'video/mp4;codecs=avc1', 'video/mp4'];

document.title = `${name} · broadcast · relaycast`;
$('name').textContent = name;
$('watch-link').href = `/watch/${encodeURIComponent(name)}`;

const s = {
  state: 'idle',
  mime: null,
  bytes: 0,
  chunks: 0,
  startedAt: 0,
  reconnects: 0,
  closeInfo: '',
  track: '',
};
let media = null;
let ws = null;
let pc = null; // the WHIP peer connection, when publishing over WebRTC
let whipLocation = null;
let whip = false; // the relay offers WHIP and this browser can use it
let rec = null;
let wanted = false; // the user wants to be live (reconnect on drops)
let retryTimer = null;
let backoff = 500;

function setError(text) {
  $('error').classList.toggle('hidden', !text);
  $('error').textContent = text || '';
}
function setInfo(text, ok = false) {
  $('info').classList.toggle('hidden', !text);
  $('info').className = `msg${ok ? ' ok' : ''}${text ? '' : ' hidden'}`;
  $('info').innerHTML = text || '';
}
function setState(st) {
  s.state = st;
  const live = st === 'live';
  $('badge').className = `badge ${live ? 'live' : st === 'idle' ? '' : 'off'}`;
  $('badge').textContent = st;
  $('rec-badge').className = `badge ${live ? 'live' : ''}`;
  $('rec-badge').textContent = live ? 'on air' : media ? 'preview' : 'preview off';
  $('start').disabled = wanted || !s.mime;
  $('stop').disabled = !wanted;
  draw();
}

const fmtBytes = (n) => (n > 1e6 ? `${(n / 1e6).toFixed(2)} MB` : `${(n / 1e3).toFixed(1)} kB`);
function draw() {
  const up = s.startedAt && s.state === 'live' ? (Date.now() - s.startedAt) / 1000 : 0;
  const rows = [
    ['state', s.state],
    ['stream', name],
    ['format', s.mime || 'none supported'],
    ['source', s.track || '–'],
    ['keyframe every', `${gopMs} ms`],
    ['bytes sent', fmtBytes(s.bytes)],
    ['rate', up > 1 ? `${((s.bytes * 8) / up / 1e6).toFixed(2)} Mb/s` : '–'],
    ['send queue', ws ? fmtBytes(ws.bufferedAmount) : '–'],
    ['reconnects', String(s.reconnects)],
    ['last close', s.closeInfo || '–'],
  ];
  $('rows').innerHTML = rows.map(([k, v]) => `<span class="k">${k}</span><span class="v">${String(v).replace(/</g, '&lt;')}</span>`).join('');
}
setInterval(draw, 500);

function pickMime(hasAudio) {
  if (typeof MediaRecorder === 'undefined') return null;
  const order = hasAudio ? MIMES : MIMES.filter((m) => !m.includes('opus'));
  return order.find((m) => MediaRecorder.isTypeSupported(m)) || null;
}

function publishUrl() {
  const u = new URL(`/publish/${encodeURIComponent(name)}`, location.href);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  if (params.get('key')) u.searchParams.set('key', params.get('key'));
  return u.href;
}

/** A canvas stream whose top row codes Date.now() mod 2^20 ms (about 17
 * minutes) in 20 black/white cells, 28 px wide, most significant first. */
function clockStream() {
  const c = document.createElement('canvas');
  c.width = 640; c.height = 360;
  const g = c.getContext('2d');
  const paint = () => {
    const t = Date.now();
    g.fillStyle = '#246'; g.fillRect(0, 0, c.width, c.height);
    for (let i = 0; i < 20; i++) {
      g.fillStyle = (t >> (19 - i)) & 1 ? '#fff' : '#000';
      g.fillRect(i * 28 + 40, 10, 28, 40);
    }
    g.fillStyle = '#fff'; g.font = '40px monospace';
    g.fillText(new Date(t).toISOString().slice(11, 23), 40, 200);
  };
  paint();
  setInterval(paint, 16);
  return c.captureStream(30);
}

async function getMedia() {
  if (media) return media;
  if (params.get('source') === 'clock') {
    const v = clockStream();
    let audio = [];
    try {
      audio = (await navigator.mediaDevices.getUserMedia({ audio: true })).getAudioTracks();
    } catch { /* no microphone: video only */ }
    media = new MediaStream([...v.getVideoTracks(), ...audio]);
    s.track = `clock 640×360@30${audio.length ? ' + audio' : ''}`;
    $('preview').srcObject = media;
    return media;
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error('This page cannot use the camera: getUserMedia is unavailable (the page must be served over HTTPS or from localhost).');
  }
  const video = { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } };
  try {
    media = await navigator.mediaDevices.getUserMedia({ video, audio: true });
  } catch (e) {
    // No microphone (or it was refused): go on with video only.
    media = await navigator.mediaDevices.getUserMedia({ video, audio: false });
  }
  const vt = media.getVideoTracks()[0];
  const set = vt ? vt.getSettings() : {};
  s.track = `${set.width || '?'}×${set.height || '?'}@${Math.round(set.frameRate || 0)}${media.getAudioTracks().length ? ' + audio' : ''}`;
  $('preview').srcObject = media;
  return media;
}

function startRecorder() {
  const opts = {
    mimeType: s.mime,
    videoBitsPerSecond: 2_500_000,
    audioBitsPerSecond: 128_000,
    // Chromium writes one fragment per GOP: ask for short GOPs (ignored where unsupported).
    videoKeyFrameIntervalDuration: gopMs,
  };
  rec = new MediaRecorder(media, opts);
  const mine = rec;
  rec.ondataavailable = (e) => {
    if (!e.data || !e.data.size || !ws || ws.readyState !== WebSocket.OPEN || rec !== mine) return;
    ws.send(e.data); // Blob: sent in order, as binary
    s.bytes += e.data.size;
    s.chunks++;
    if (s.state !== 'live') {
      s.startedAt = Date.now();
      backoff = 500;
      setState('live');
      setInfo(`You are live. Watch at <a href="/watch/${encodeURIComponent(name)}" target="_blank" rel="noopener">${location.origin}/watch/${name.replace(/</g, '&lt;')}</a>`, true);
    }
  };
  rec.onerror = (e) => setError(`Recorder error: ${e.error ? e.error.message : e}`);
  rec.start(100);
}

function stopRecorder() {
  if (rec && rec.state !== 'inactive') {
    try { rec.stop(); } catch { /* ignore */ }
  }
  rec = null;
}

function connect() {
  clearTimeout(retryTimer);
  setState('connecting');
  const sock = new WebSocket(publishUrl());
  ws = sock;
  sock.onopen = () => {
    if (ws !== sock) return;
    setError('');
    try {
      startRecorder();
    } catch (e) {
      setError(`Cannot start MediaRecorder with ${s.mime}: ${e.message}`);
      wanted = false;
      sock.close(1000, 'recorder failed');
    }
  };
  sock.onerror = () => {
    if (ws === sock) s.closeInfo = 'connection error';
  };
  sock.onclose = (e) => {
    if (ws !== sock) return;
    ws = null;
    stopRecorder();
    s.closeInfo = `${e.code}${e.reason ? ` ${e.reason}` : ''}`;
    if (!wanted) {
      // After Stop the page says "stopped" (the close is only the end of it).
      setState(s.state === 'stopped' ? 'stopped' : 'idle');
      return;
    }
    if ([1003, 1007, 1008, 1009, 4001, 4003, 4009].includes(e.code)) {
      // Not allowed (bad key), the name is taken, or the relay cannot take
      // what this browser records (not fMP4, too big): retrying will not help.
      wanted = false;
      setError(`The relay refused the broadcast: ${e.reason || `close code ${e.code}`}${e.code === 1008 && !params.get('key') ? ' (a publish key may be needed: add ?key=… to this page’s address)' : ''}`);
      setState('refused');
      return;
    }
    setError(`Connection closed (${s.closeInfo || 'no reason given'}); reconnecting…`);
    s.reconnects++;
    setState('reconnecting');
    retryTimer = setTimeout(connect, backoff);
    backoff = Math.min(8000, backoff * 2);
  };
}

async function start() {
  setError('');
  try {
    await getMedia();
  } catch (e) {
    setError(`Camera/microphone unavailable: ${e.message || e}`);
    return;
  }
  wanted = true;
  s.bytes = 0;
  if (whip) {
    s.mime = WHIP_FORMAT;
    connectWhip();
    return;
  }
  s.mime = pickMime(media.getAudioTracks().length > 0);
  if (!s.mime) {
    wanted = false;
    noMp4();
    return;
  }
  connect();
}

const WHIP_FORMAT = 'WebRTC (WHIP): H.264 + Opus';

function whipUrl() {
  return `/whip/${encodeURIComponent(name)}`;
}

/** Publish over WHIP: offer (all ICE candidates in it), answer, connect. */
async function connectWhip() {
  clearTimeout(retryTimer);
  setState('connecting');
  const conn = new RTCPeerConnection();
  pc = conn;
  for (const track of media.getTracks()) {
    const t = conn.addTransceiver(track, { direction: 'sendonly' });
    if (track.kind === 'video' && t.setCodecPreferences && RTCRtpSender.getCapabilities) {
      // The relay carries H.264 (and Opus): offer only that for video.
      const h264 = RTCRtpSender.getCapabilities('video').codecs.filter((c) => /h264/i.test(c.mimeType));
      if (h264.length) t.setCodecPreferences(h264);
    }
  }
  const sent = () => conn.getStats().then((st) => {
    let b = 0;
    st.forEach((r) => { if (r.type === 'outbound-rtp') b += r.bytesSent || 0; });
    if (pc === conn) s.bytes = b;
  }).catch(() => {});
  conn.onconnectionstatechange = () => {
    if (pc !== conn) return;
    const st = conn.connectionState;
    if (st === 'connected') {
      s.startedAt = Date.now();
      backoff = 500;
      setError('');
      setState('live');
      setInfo(`You are live over WebRTC. Watch at <a href="/watch/${encodeURIComponent(name)}" target="_blank" rel="noopener">${location.origin}/watch/${name.replace(/</g, '&lt;')}</a>`, true);
    } else if ((st === 'failed' || st === 'disconnected' || st === 'closed') && wanted) {
      s.closeInfo = `WebRTC ${st}`;
      closeWhip();
      setError(`WebRTC connection ${st}; reconnecting…`);
      s.reconnects++;
      setState('reconnecting');
      retryTimer = setTimeout(connectWhip, backoff);
      backoff = Math.min(8000, backoff * 2);
    }
  };
  const statsTimer = setInterval(() => (pc === conn ? sent() : clearInterval(statsTimer)), 500);
  try {
    await conn.setLocalDescription(await conn.createOffer());
    // No trickle ICE: wait for the candidates (host ones come at once).
    await new Promise((resolve) => {
      if (conn.iceGatheringState === 'complete') return resolve();
      const t = setTimeout(resolve, 2000);
      conn.addEventListener('icegatheringstatechange', () => {
        if (conn.iceGatheringState === 'complete') { clearTimeout(t); resolve(); }
      });
    });
    const headers = { 'Content-Type': 'application/sdp' };
    if (params.get('key')) headers.Authorization = `Bearer ${params.get('key')}`;
    const res = await fetch(whipUrl(), { method: 'POST', headers, body: conn.localDescription.sdp });
    if (pc !== conn) return;
    if (res.status !== 201) {
      const why = await res.json().then((j) => j.error).catch(() => res.statusText);
      pc = null;
      conn.close();
      s.closeInfo = `${res.status} ${why}`;
      if (res.status === 503 && /WHIP is off/.test(why)) {
        whip = false; // the relay turned WHIP off: publish the other way
        s.mime = pickMime(media.getAudioTracks().length > 0);
        if (s.mime) return connect();
        wanted = false;
        return noMp4();
      }
      if (res.status >= 500) throw new Error(why);
      wanted = false;
      setError(`The relay refused the broadcast: ${why}${res.status === 401 && !params.get('key') ? ' (a publish key may be needed: add ?key=… to this page’s address)' : ''}`);
      setState('refused');
      return;
    }
    whipLocation = new URL(res.headers.get('Location') || whipUrl(), location.href).href;
    await conn.setRemoteDescription({ type: 'answer', sdp: await res.text() });
  } catch (e) {
    if (pc !== conn) return;
    closeWhip();
    s.closeInfo = String(e.message || e);
    setError(`WHIP failed (${s.closeInfo}); retrying…`);
    s.reconnects++;
    setState('reconnecting');
    retryTimer = setTimeout(connectWhip, backoff);
    backoff = Math.min(8000, backoff * 2);
  }
}

/** End the WHIP session: DELETE its resource, close the connection. */
function closeWhip() {
  if (whipLocation) {
    const headers = params.get('key') ? { Authorization: `Bearer ${params.get('key')}` } : {};
    fetch(whipLocation, { method: 'DELETE', headers, keepalive: true }).catch(() => {});
  }
  whipLocation = null;
  if (pc) pc.close();
  pc = null;
}

function stop() {
  wanted = false;
  clearTimeout(retryTimer);
  if (pc) {
    closeWhip();
    setState('stopped');
    setInfo('');
    return;
  }
  const sock = ws;
  if (rec && rec.state !== 'inactive') {
    // Let the recorder hand over its last chunk, then close cleanly.
    rec.addEventListener('stop', () => setTimeout(() => sock && sock.close(1000, 'broadcast ended'), 50), { once: true });
    stopRecorder();
  } else if (sock) {
    sock.close(1000, 'broadcast ended');
  }
  setState('stopped');
  setInfo('');
}

function noMp4() {
  setError('This browser cannot record MP4: MediaRecorder supports none of ' + MIMES.join(', ') +
    '. relaycast ingests fragmented MP4 only. Use a recent Chrome/Chromium/Edge (or Safari), or publish with ffmpeg.');
  setState('unsupported');
}

$('start').onclick = start;
$('stop').onclick = stop;

/** Does the relay run WHIP? A POST without an offer is 503 when it is off
 * (400 otherwise: no stream is touched). */
async function whipOffered() {
  if (typeof RTCPeerConnection === 'undefined' || params.get('via') === 'ws') return false;
  try {
    const res = await fetch(whipUrl(), { method: 'POST' });
    return res.status !== 503 && res.status !== 404 && res.status !== 405;
  } catch {
    return false;
  }
}

// Check up front so an unsupported browser says so before any click.
whipOffered().then((ok) => {
  whip = ok;
  if (whip) {
    s.mime = WHIP_FORMAT;
    setState('idle');
  } else if (typeof MediaRecorder === 'undefined') {
    setError('This browser has no MediaRecorder, so it cannot broadcast. Publish with ffmpeg instead.');
    setState('unsupported');
  } else {
    s.mime = pickMime(true);
    if (!s.mime) noMp4();
    else setState('idle');
  }
  if (params.get('autostart') && s.mime) start();
});

window.relaycastBroadcast = { stats: () => ({ ...s, whip, wsBuffered: ws ? ws.bufferedAmount : 0, recorder: rec ? rec.state : null, ice: pc ? pc.connectionState : null }) };
