#!/bin/bash
# Origin requests per part through an nginx cache (RECIPES §12) with N LL-HLS
# clients of `relaycast load --transport hls` (#14): a release relay on
# 127.0.0.1:$RELAY_PORT, a one-process nginx with proxy_cache + proxy_cache_lock
# on 127.0.0.1:$NGINX_PORT in front of it, the clients on nginx, the publisher
# on the relay. Counts, from nginx's log, the requests that went to the origin
# (MISS/EXPIRED/BYPASS) for parts and for playlists, per part published.
#
# usage: benches/hls/nginx_origin.sh [CLIENTS=1000] [SECONDS=10]
set -euo pipefail
CLIENTS=${1:-1000}
SECS=${2:-10}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${RELAYCAST_RELEASE:-$ROOT/target/release}
RELAY_PORT=${RELAY_PORT:-18480}
NGINX_PORT=${NGINX_PORT:-18481}
D=$(mktemp -d /tmp/relaycast-nginx.XXXXXX)
cat > "$D/nginx.conf" <<CONF
master_process off;
daemon off;
user root;
worker_rlimit_nofile 16384;
pid $D/nginx.pid;
error_log $D/error.log warn;
events { worker_connections 8192; }
http {
  log_format origin '\$upstream_cache_status \$request_uri';
  access_log $D/access.log origin;
  client_body_temp_path $D/body; proxy_temp_path $D/proxy;
  fastcgi_temp_path $D/fcgi; uwsgi_temp_path $D/uwsgi; scgi_temp_path $D/scgi;
  proxy_cache_path $D/cache levels=1:2 keys_zone=hls:10m max_size=200m inactive=1m;
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    keepalive_requests 100000;
    location / {
      proxy_pass http://127.0.0.1:$RELAY_PORT;
      proxy_http_version 1.1;
      proxy_cache hls;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 10s;
      proxy_cache_valid 200 1s;
      proxy_read_timeout 30s;
    }
  }
}
CONF
ulimit -n 20000 || true
/usr/sbin/nginx -p "$D" -c "$D/nginx.conf" &
NGINX=$!
trap 'kill $NGINX 2>/dev/null; wait $NGINX 2>/dev/null' EXIT
sleep 0.5
"$BIN/relaycast-load" --transport hls --viewers "$CLIENTS" --fps 10 --gop 1 --bitrate 2.5M \
  --duration "$SECS" --warmup 2 --spawn-relay 127.0.0.1:$RELAY_PORT --relay-bin "$BIN/relaycast" \
  --watch "http://127.0.0.1:$NGINX_PORT/live/{stream}/index.m3u8" --label "hls-nginx-$CLIENTS" --json > "$D/report.json"
cat "$D/report.json"
python3 - "$D/access.log" <<'PY'
import sys, re, collections
origin = collections.Counter(); total = collections.Counter(); parts = set()
for line in open(sys.argv[1]):
    status, _, uri = line.strip().partition(' ')
    kind = 'part' if '/part/' in uri else 'playlist' if 'index.m3u8' in uri else 'other'
    if kind == 'part':
        m = re.search(r'/part/(\d+)\.m4s', uri)
        if m: parts.add(m.group(1))
    total[kind] += 1
    if status in ('MISS', 'EXPIRED', 'BYPASS'):
        origin[kind] += 1
n = max(len(parts), 1)
print(f"parts requested: {n}; client requests: parts {total['part']}, playlists {total['playlist']}, other {total['other']}")
print(f"origin requests: parts {origin['part']} ({origin['part']/n:.2f}/part), playlists {origin['playlist']} ({origin['playlist']/n:.2f}/part), other {origin['other']}")
PY
echo "nginx dir: $D"
