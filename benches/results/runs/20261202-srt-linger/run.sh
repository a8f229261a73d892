#!/bin/bash
# $1 = label, $2 = extra srt url options, $3 = key (empty: no encryption)
BIN=/work/wt-gaps/target/debug/relaycast
HP=$((20000 + RANDOM % 10000)); SP=$((30000 + RANDOM % 10000))
KEYARG=""; [ -n "$3" ] && KEYARG="--publish-key $3"
RELAYCAST_FANOUT__GRACE=1 RUST_LOG=warn $BIN serve --no-demo --listen 127.0.0.1:$HP --srt 127.0.0.1:$SP $KEYARG > relay.$1.log 2>&1 &
RP=$!
sleep 1
curl -s "http://127.0.0.1:$HP/live/cam.mp4?wait=20" -o out.$1.mp4 &
CP=$!
PASS=""; [ -n "$3" ] && PASS="&passphrase=$3&pbkeylen=16"
ffmpeg -hide_banner -loglevel error -re -f lavfi -i testsrc2=size=320x180:rate=30 -t 3 -c:v libx264 -preset ultrafast -tune zerolatency -g 30 -pix_fmt yuv420p -f mpegts "srt://127.0.0.1:$SP?streamid=#!::r=cam,m=publish$PASS$2"
wait $CP
kill $RP 2>/dev/null; wait $RP 2>/dev/null
N=$(ffprobe -v error -count_frames -select_streams v:0 -show_entries stream=nb_read_frames -of csv=p=0 out.$1.mp4)
echo "$1: $N frames"
