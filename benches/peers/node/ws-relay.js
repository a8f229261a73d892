// The Node.js `ws` broadcast relay that web tutorials give (written for
// benches/compare, after the shape described in PEERS.md): every binary
// message a publisher sends on /publish goes to every viewer on /live.
// Usage: node ws-relay.js PORT
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 8083);
const srv = http.createServer((req, res) => { res.writeHead(404); res.end(); });
const pub = new WebSocketServer({ noServer: true, maxPayload: 64 << 20 });
const live = new WebSocketServer({ noServer: true, perMessageDeflate: false });

srv.on('upgrade', (req, sock, head) => {
  const wss = req.url.startsWith('/publish') ? pub : req.url.startsWith('/live') ? live : null;
  if (!wss) return sock.destroy();
  wss.handleUpgrade(req, sock, head, (ws) => wss.emit('connection', ws, req));
});

pub.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    for (const v of live.clients) {
      if (v.readyState !== 1) continue;
      // A viewer 8 MiB behind is cut off, so memory stays bounded.
      if (v.bufferedAmount > 8 << 20) { v.terminate(); continue; }
      v.send(data, { binary: isBinary });
    }
  });
});

srv.listen(port, '127.0.0.1', () => console.log(`ws-relay on 127.0.0.1:${port}`));
