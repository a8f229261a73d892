// The outsider's viewers: N Node `ws` clients in this process (connected
// CONCURRENCY at a time), as a tutorial would write them. Text messages
// (relaycast's JSON) are received and ignored; each binary message that holds
// a moof is timed on arrival and matched later, by its mfhd seq, to the send
// time the publisher recorded. Prints "ready N" once every client is open,
// then runs until a line on stdin ("stop"; or 300 s), waits for the last
// fragment to reach every viewer (up to 15 s), reads the publisher's send
// times from SENT, and prints one JSON report: fragments per viewer,
// closes, and a latency histogram (10 µs bins).
// With STREAMS > 1, URL holds "{s}": viewer i watches stream live{i % STREAMS}.
// An http:// URL: HTTP streaming viewers instead (Node's `http`, see connectHttp).
// Usage: node viewers.js URL N SENT [STREAMS]
'use strict';
const fs = require('fs');
const http = require('http');
const WebSocket = require('ws');
const { seqOf } = require('./fmp4');

const [urlTemplate, nStr, sentFile, streamsArg] = process.argv.slice(2);
const N = Number(nStr);
const STREAMS = Number(streamsArg || 1);
const urlOf = (i) => urlTemplate.replace('{s}', STREAMS > 1 ? `live${i % STREAMS}` : 'live');
const CONCURRENCY = 200;
const got = [];   // per viewer: [seq, recv ns, seq, recv ns, ...]
let open = 0, closed = 0, errors = 0, bytes = 0, texts = 0, started = 0;

// HTTP streaming (URL http://…): one GET per viewer with Node's own `http`,
// the body cut into top-level boxes as it comes (a newline between boxes,
// nchan's http-raw-stream separator, is skipped); a fragment (moof + mdat)
// is timed when its mdat is whole, matched by the moof's mfhd seq.
function connectHttp(i) {
  got[i] = [];
  let wasOpen = false;
  let buf = Buffer.alloc(0);
  let seq = -1;
  const req = http.get(urlOf(i), { agent: false }, (res) => {
    if (res.statusCode !== 200) { errors++; res.resume(); next(); return; }
    wasOpen = true; open++; next();
    res.on('data', (chunk) => {
      const t = Number(process.hrtime.bigint());
      bytes += chunk.length;
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      let at = 0;
      for (;;) {
        while (at < buf.length && (buf[at] === 0x0a || buf[at] === 0x0d)) at++;
        if (at + 8 > buf.length) break;
        const size = buf.readUInt32BE(at);
        if (size < 8) { errors++; req.destroy(); return; }
        if (at + size > buf.length) break;
        const type = buf.toString('latin1', at + 4, at + 8);
        if (type === 'moof') seq = seqOf(buf.subarray(at, at + size));
        else if (type === 'mdat' && seq >= 0) { got[i].push(seq, t); seq = -1; }
        else if (type === 'free') texts++;
        at += size;
      }
      buf = buf.subarray(at);
    });
    res.on('end', () => { closed++; });
    res.on('error', () => { errors++; });
  });
  req.on('error', () => { errors++; if (!wasOpen) next(); });
}

function connect(i) {
  if (urlOf(i).startsWith('http')) return connectHttp(i);
  const ws = new WebSocket(urlOf(i), { perMessageDeflate: false });
  got[i] = [];
  let wasOpen = false;
  ws.on('open', () => { wasOpen = true; open++; next(); });
  ws.on('message', (data, isBinary) => {
    const t = Number(process.hrtime.bigint());
    if (!isBinary) { texts++; return; }
    bytes += data.length;
    const s = seqOf(data);
    if (s >= 0) got[i].push(s, t);
  });
  ws.on('error', () => { errors++; if (!wasOpen) next(); });
  ws.on('close', () => { if (wasOpen) closed++; });
}
function next() {
  if (started < N) connect(started++);
  else if (open === N) console.log(`ready ${open}`);
}
for (let k = 0; k < Math.min(CONCURRENCY, N); k++) next();

function report() {
  let sent = { sent: {}, frags: 0 };
  try { sent = JSON.parse(fs.readFileSync(sentFile)); } catch (e) { console.error('viewers: no send times:', e.message); }
  const hist = {};
  const counts = [];
  for (const g of got) {
    let c = 0;
    for (let k = 0; k < g.length; k += 2) {
      const s0 = sent.sent[g[k]];
      if (s0 === undefined) continue;
      c++;
      const bin = Math.round((g[k + 1] - s0) / 10000); // 10 µs
      hist[bin] = (hist[bin] || 0) + 1;
    }
    counts.push(c);
  }
  const mem = process.memoryUsage();
  // Exit only once the report is written: a pipe takes it asynchronously.
  process.stdout.write(JSON.stringify({ viewers: N, open, closed, errors, bytes, texts, frags: sent.frags, counts,
    hist, client_rss: mem.rss }) + '\n', () => process.exit(0));
}
// On "stop" (the publisher is done): wait until every open viewer has the
// last fragment, or DRAIN_MS, so that a fragment still on its way counts
// as late, not as missed; then report.
const DRAIN_MS = 15000;
function drain() {
  let last = -1;
  try { last = Math.max(...Object.keys(JSON.parse(fs.readFileSync(sentFile)).sent).map(Number)); } catch (e) { /* report says */ }
  const t0 = Date.now();
  const check = () => {
    const waiting = got.some((g) => g.length > 0 && g[g.length - 2] !== last);
    if (!waiting || Date.now() - t0 > DRAIN_MS) report();
    else setTimeout(check, 100);
  };
  check();
}
process.stdin.once('data', drain);
setTimeout(report, 300000).unref();
