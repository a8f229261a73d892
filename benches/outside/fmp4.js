// Splits an fMP4 file into its init segment (everything before the first moof)
// and its fragments (each moof with the boxes up to the next moof, so any
// prft/styp before a moof and the mdat after it travel together), and reads
// the mfhd sequence number of a fragment (how viewers match a received message
// to its send time: every system relays the fragment bytes unchanged).
'use strict';

function boxes(buf) {
  const out = [];
  let at = 0;
  while (at + 8 <= buf.length) {
    let size = buf.readUInt32BE(at);
    const type = buf.toString('latin1', at + 4, at + 8);
    if (size === 1) size = Number(buf.readBigUInt64BE(at + 8));
    if (size === 0) size = buf.length - at;
    if (size < 8 || at + size > buf.length) break;
    out.push({ type, at, size });
    at += size;
  }
  return out;
}

function split(buf) {
  const bs = boxes(buf);
  const first = bs.findIndex((b) => b.type === 'moof');
  if (first < 0) throw new Error('no moof in the file');
  const init = buf.subarray(0, bs[first].at);
  const frags = [];
  let start = bs[first].at;
  for (let i = first + 1; i < bs.length; i++) {
    if (bs[i].type === 'moof' || bs[i].type === 'mfra') {
      frags.push(buf.subarray(start, bs[i].at));
      start = bs[i].at;
      if (bs[i].type === 'mfra') { start = -1; break; }
    }
  }
  if (start >= 0) {
    const last = bs[bs.length - 1];
    frags.push(buf.subarray(start, last.at + last.size));
  }
  return { init, frags };
}

// The mfhd sequence number of the first moof in a message, or -1 (init, JSON).
function seqOf(buf) {
  let at = 0;
  for (let n = 0; n < 4 && at + 8 <= buf.length; n++) {
    const size = buf.readUInt32BE(at);
    const type = buf.toString('latin1', at + 4, at + 8);
    if (type === 'moof') {
      // moof header (8), then mfhd: size (4) 'mfhd' (4) version+flags (4) seq (4).
      if (at + 24 <= buf.length && buf.toString('latin1', at + 12, at + 16) === 'mfhd') {
        return buf.readUInt32BE(at + 20);
      }
      return -1;
    }
    if (size < 8) return -1;
    at += size;
  }
  return -1;
}

module.exports = { boxes, split, seqOf };
