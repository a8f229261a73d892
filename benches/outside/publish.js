// The outsider's publisher: sends an fMP4 file paced at real time, one
// fragment every FRAG_MS, either as one HTTP PUT with a chunked body (one
// chunk per fragment: relaycast) or as one WebSocket binary message per
// fragment (nchan, the Node ws relay). The init segment goes first; then the
// script prints "ready" and waits for a line on stdin ("go") before it paces
// the fragments, so viewers can connect in between. It writes the send time
// (process.hrtime.bigint(), CLOCK_MONOTONIC, shared by every process on the
// box) of every fragment, by mfhd seq, to OUT as JSON, and exits.
// With STREAMS > 1, URL holds "{s}" and the same fragments go to streams
// live0 … live{STREAMS-1}, one connection each (the send time of a seq is
// taken before its first send).
// Usage: node publish.js put|ws URL FILE FRAG_MS COUNT OUT [STREAMS]
'use strict';
const fs = require('fs');
const http = require('http');
const WebSocket = require('ws');
const { split, seqOf } = require('./fmp4');

const [mode, urlTemplate, file, fragMs, count, out, streamsArg] = process.argv.slice(2);
const STREAMS = Number(streamsArg || 1);
const urls = STREAMS > 1
  ? Array.from({ length: STREAMS }, (_, i) => urlTemplate.replace('{s}', `live${i}`))
  : [urlTemplate.replace('{s}', 'live')];
const { init, frags } = split(fs.readFileSync(file));
const n = Math.min(Number(count), frags.length);
const sent = {};
let send;
let finish;
setTimeout(() => { console.error('publish: gave up after 300 s'); process.exit(3); }, 300000).unref();

function pace() {
  const t0 = process.hrtime.bigint();
  const step = BigInt(Math.round(Number(fragMs) * 1e6));
  let i = 0;
  const tick = () => {
    // Send every fragment whose time has come (real-time pacing; no drift).
    while (i < n && process.hrtime.bigint() >= t0 + step * BigInt(i)) {
      const f = frags[i];
      sent[seqOf(f)] = Number(process.hrtime.bigint());
      send(f);
      i++;
    }
    if (i < n) {
      const next = t0 + step * BigInt(i) - process.hrtime.bigint();
      setTimeout(tick, Math.max(0, Number(next / 1000000n)));
    } else {
      fs.writeFileSync(out, JSON.stringify({ frags: n, bytes: frags.slice(0, n).reduce((a, f) => a + f.length, 0), sent }));
      finish();
    }
  };
  tick();
}

function ready() {
  console.log('ready');
  process.stdin.once('data', pace);
}

// One connection per stream; `ready` once every one has its init segment.
const sends = [];
const finishes = [];
let opened = 0;
function opened1() { if (++opened === urls.length) setTimeout(ready, 300); }
for (const url of urls) {
  if (mode === 'put') {
    const agent = new http.Agent({ keepAlive: false });
    const req = http.request(url, { method: 'PUT', agent, headers: { 'content-type': 'video/mp4' } });
    req.on('error', (e) => { console.error('publish:', e.message); process.exit(2); });
    req.on('response', (res) => { if (res.statusCode >= 300) { console.error('publish: HTTP', res.statusCode); process.exit(2); } });
    req.flushHeaders();
    sends.push((b) => req.write(b));
    finishes.push((done) => req.end(done));
    req.write(init);
    opened1();
  } else {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    ws.on('error', (e) => { console.error('publish:', e.message); process.exit(2); });
    sends.push((b) => ws.send(b, { binary: true }));
    // Done once the server has taken every message (at most 30 s more).
    finishes.push((done) => {
      const until = Date.now() + 30000;
      const check = () => {
        if (ws.bufferedAmount === 0 || Date.now() > until) {
          if (ws.bufferedAmount) console.error('publish: server did not take', ws.bufferedAmount, 'bytes');
          setTimeout(() => { ws.close(); done(); }, 200);
        } else setTimeout(check, 50);
      };
      check();
    });
    ws.on('open', () => { ws.send(init, { binary: true }); opened1(); });
  }
}
send = (b) => { for (const s of sends) s(b); };
finish = () => {
  let left = finishes.length;
  for (const f of finishes) f(() => { if (--left === 0) setTimeout(() => process.exit(0), mode === 'put' ? 200 : 0); });
};
