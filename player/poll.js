// poll.js — plain polling loader, the last rung: the long-poll path with
// `wait=0` (the relay answers at once, possibly with an empty body), asked
// again at about the fragment rate (every 100–250 ms).
// Same interface as ws.js (see there).

import { LongPollLoader, sleep } from './longpoll.js';

export class PollLoader extends LongPollLoader {
  static id = 'poll';

  static isSupported() {
    return LongPollLoader.isSupported();
  }

  pollParams() {
    return { wait: 0 };
  }

  async pace() {
    // `interval` follows the spacing of the fragments' relay times.
    const ms = Math.min(250, Math.max(100, this.interval));
    await sleep(ms, this.ctrl.signal);
  }
}
