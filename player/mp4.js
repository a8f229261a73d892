// mp4.js — the few ISO-BMFF reads the player needs: walking top-level boxes,
// the relaycast in-band `free` meta box, track ids/timescales of an init
// segment, and the decode times/durations of a fragment (for stitching the
// media timeline across publisher restarts and relay skips).
//
// No I/O and no DOM here: Uint8Array in, plain objects out.

const TEXT = new TextDecoder();
const CONTAINERS = new Set(['moov', 'trak', 'mdia', 'minf', 'stbl', 'mvex', 'moof', 'traf', 'edts']);
const RELAYCAST = [0x72, 0x65, 0x6c, 0x61, 0x79, 0x63, 0x61, 0x73, 0x74]; // "relaycast"

function u32(b, o) {
  return ((b[o] << 24) >>> 0) + (b[o + 1] << 16) + (b[o + 2] << 8) + b[o + 3];
}

function u64(b, o) {
  return u32(b, o) * 4294967296 + u32(b, o + 4);
}

function type4(b, o) {
  return String.fromCharCode(b[o], b[o + 1], b[o + 2], b[o + 3]);
}

/**
 * Reads the box header at `o`. Returns `{type, size, hdr}`; `null` when fewer
 * than the header's bytes are there yet; `size` is 0 for "to end of input".
 */
export function boxHeader(b, o, end = b.length) {
  if (end - o < 8) return null;
  let size = u32(b, o);
  const type = type4(b, o + 4);
  let hdr = 8;
  if (size === 1) {
    if (end - o < 16) return null;
    size = u64(b, o + 8);
    hdr = 16;
  }
  return { type, size, hdr };
}

/** Top-level boxes of a complete buffer: `[{type, start, size, hdr}]`. */
export function boxes(b, start = 0, end = b.length) {
  const out = [];
  let o = start;
  while (o < end) {
    const h = boxHeader(b, o, end);
    if (!h) break;
    const size = h.size === 0 ? end - o : h.size;
    if (size < h.hdr || o + size > end) break;
    out.push({ type: h.type, start: o, size, hdr: h.hdr });
    o += size;
  }
  return out;
}

function* walk(b, start, end) {
  for (const box of boxes(b, start, end)) {
    yield box;
    if (CONTAINERS.has(box.type)) yield* walk(b, box.start + box.hdr, box.start + box.size);
  }
}

/**
 * If `b[start..start+size]` is a relaycast meta box (`free` whose payload
 * starts with "relaycast"), returns its parsed JSON; otherwise `null`.
 */
export function relaycastMeta(b, start, size, hdr = 8) {
  if (type4(b, start + 4) !== 'free') return null;
  const p = start + hdr;
  for (let i = 0; i < RELAYCAST.length; i++) if (b[p + i] !== RELAYCAST[i]) return null;
  let j = p + RELAYCAST.length;
  const end = start + size;
  while (j < end && b[j] !== 0x7b /* { */) j++;
  try {
    return JSON.parse(TEXT.decode(b.subarray(j, end)));
  } catch {
    return null;
  }
}

/**
 * Tracks of an init segment: `[{id, kind: 'video'|'audio'|'other', timescale, defaultDuration}]`.
 */
export function parseInit(b) {
  const tracks = [];
  const trex = new Map();
  let cur = null;
  for (const box of walk(b, 0, b.length)) {
    const p = box.start + box.hdr;
    switch (box.type) {
      case 'trak':
        cur = { id: 0, kind: 'other', timescale: 0, defaultDuration: 0 };
        tracks.push(cur);
        break;
      case 'tkhd':
        if (cur) cur.id = b[p] === 1 ? u32(b, p + 4 + 16) : u32(b, p + 4 + 8);
        break;
      case 'mdhd':
        if (cur) cur.timescale = b[p] === 1 ? u32(b, p + 4 + 16) : u32(b, p + 4 + 8);
        break;
      case 'hdlr':
        if (cur) {
          const h = type4(b, p + 8);
          cur.kind = h === 'vide' ? 'video' : h === 'soun' ? 'audio' : 'other';
        }
        break;
      case 'trex':
        trex.set(u32(b, p + 4), u32(b, p + 12));
        break;
      default:
    }
  }
  for (const t of tracks) t.defaultDuration = trex.get(t.id) || 0;
  return tracks;
}

/**
 * Timing of a fragment: `[{trackId, baseTime, duration}]` (in the track's
 * timescale), one per `traf`. Fragments without a `tfdt` give `baseTime: null`.
 */
export function parseFragmentTiming(b, tracks) {
  const out = [];
  let cur = null;
  for (const box of walk(b, 0, b.length)) {
    const p = box.start + box.hdr;
    if (box.type === 'traf') {
      cur = { trackId: 0, baseTime: null, duration: 0, defaultDuration: 0 };
      out.push(cur);
    } else if (box.type === 'tfhd' && cur) {
      const flags = (b[p + 1] << 16) | (b[p + 2] << 8) | b[p + 3];
      cur.trackId = u32(b, p + 4);
      let o = p + 8;
      if (flags & 0x01) o += 8;
      if (flags & 0x02) o += 4;
      const t = tracks && tracks.find((x) => x.id === cur.trackId);
      cur.defaultDuration = flags & 0x08 ? u32(b, o) : t ? t.defaultDuration : 0;
    } else if (box.type === 'tfdt' && cur) {
      cur.baseTime = b[p] === 1 ? u64(b, p + 4) : u32(b, p + 4);
    } else if (box.type === 'trun' && cur) {
      const flags = (b[p + 1] << 16) | (b[p + 2] << 8) | b[p + 3];
      const count = u32(b, p + 4);
      let o = p + 8;
      if (flags & 0x01) o += 4;
      if (flags & 0x04) o += 4;
      const per = ((flags & 0x100) ? 4 : 0) + ((flags & 0x200) ? 4 : 0) + ((flags & 0x400) ? 4 : 0) + ((flags & 0x800) ? 4 : 0);
      if (flags & 0x100) {
        for (let i = 0; i < count && o + 4 <= b.length; i++, o += per) cur.duration += u32(b, o);
      } else {
        cur.duration += count * cur.defaultDuration;
      }
    }
  }
  return out.map(({ trackId, baseTime, duration }) => ({ trackId, baseTime, duration }));
}

/** True when the bytes start with an `ftyp` (an init segment) box. */
export function looksLikeInit(b) {
  return b.length >= 8 && type4(b, 4) === 'ftyp';
}

/** Concatenates Uint8Arrays. */
export function concat(parts, total = parts.reduce((n, p) => n + p.length, 0)) {
  const out = new Uint8Array(total);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}
