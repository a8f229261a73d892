// The Socket.IO broadcast relay (written for benches/compare after PEERS.md):
// a publisher connects with ?role=pub and emits `chunk` with a binary
// payload; the relay emits it to the room every viewer joined.
// Usage: node socketio-relay.js PORT
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.argv[2] || 8084);
const srv = http.createServer();
const io = new Server(srv, { maxHttpBufferSize: 64 << 20, transports: ['websocket'] });

io.on('connection', (socket) => {
  if (socket.handshake.query.role === 'pub') {
    socket.on('chunk', (buf) => io.to('live').emit('chunk', buf));
  } else {
    socket.join('live');
  }
});
srv.listen(port, '127.0.0.1', () => console.log(`socketio-relay on 127.0.0.1:${port}`));
