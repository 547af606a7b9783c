// Waiting for answers without polling: the client's reply list (results of its own jobs and the
// fleet's answers to its cancel requests) and pub/sub (jobs re-attached by id).

import * as keys from './keys.js';
import { cancelWaitKey, parseReply, replyRoute } from './protocol.js';

// One blocking read never waits longer than this, so result keys (the source of truth) are
// re-read now and then and a silently dead connection is noticed.
export const SLICE_S = 2;
const STASH_MAX = 10000;
const BELLS_MAX = 64; // bell lists read along with the reply list in one BLPOP
const DRAIN_MAX = 1000;

const isNoPerm = (err) => /NOPERM|no permissions/i.test(String(err?.message ?? ''));

/**
 * One reader (BLPOP on the client's reply list) hands every map it pops to whoever waits for its
 * task_id: a job id (a result meta) or cancel:<job id> (the fleet's answer to a cancel request).
 * It also reads the bell lists of the jobs it waits for, so a job cancelled from another process
 * wakes its waiter at once; where the ACL does not let the client read bells, it stops trying and
 * such a waiter learns at its next slice (a cancel from this client still wakes it at once).
 */
export class ReplyRouter {
  constructor(client, key) {
    this.client = client;
    this.key = key;
    this.waiters = new Map(); // task id -> Set of {resolve, timer}
    this.collectors = new Set(); // {has(id), deliver(id, meta), nudge(id)}: asCompleted
    this.stash = new Map(); // maps popped before anyone waited for them
    this.reading = false;
    this.bells = true;
  }

  /** The map for `taskId`, or null once `untilMs` passes (or the job is nudged). */
  wait(taskId, untilMs) {
    const stashed = this.stash.get(taskId);
    if (stashed !== undefined) {
      this.stash.delete(taskId);
      return Promise.resolve(stashed);
    }
    return new Promise((resolve) => {
      const waiter = { resolve, timer: null };
      if (Number.isFinite(untilMs)) {
        waiter.timer = setTimeout(() => this._settle(taskId, waiter, null), Math.max(0, untilMs - Date.now()));
      }
      if (!this.waiters.has(taskId)) this.waiters.set(taskId, new Set());
      this.waiters.get(taskId).add(waiter);
      this._read();
    });
  }

  /** Route maps for many jobs to `collector` until `remove()` is called; stashed ones at once. */
  collect(collector) {
    this.collectors.add(collector);
    for (const [id, meta] of [...this.stash]) {
      if (collector.has(id)) {
        this.stash.delete(id);
        collector.deliver(id, meta);
      }
    }
    this._read();
    return () => this.collectors.delete(collector);
  }

  /** Wake the waiters of `jobId` with null: they re-read its result key now. */
  nudge(jobId) {
    for (const waiter of [...(this.waiters.get(jobId) ?? [])]) this._settle(jobId, waiter, null);
    for (const c of this.collectors) if (c.has(jobId)) c.nudge(jobId);
  }

  _settle(taskId, waiter, meta) {
    clearTimeout(waiter.timer);
    const set = this.waiters.get(taskId);
    if (set) {
      set.delete(waiter);
      if (set.size === 0) this.waiters.delete(taskId);
    }
    waiter.resolve(meta);
  }

  _deliver(msg) {
    if (msg === null) return; // not an ICOW map: nothing waits for it
    const taskId = replyRoute(msg);
    if (taskId === null) return;
    if (msg.status === 'CANCEL' && Number(msg.result) === 1) {
      // The job's JobCancelled result is written before this answer is pushed.
      this.nudge(msg.task_id.slice('cancel:'.length));
    }
    const set = this.waiters.get(taskId);
    if (set) {
      for (const waiter of [...set]) this._settle(taskId, waiter, msg);
      return;
    }
    for (const c of this.collectors) {
      if (c.has(taskId)) {
        c.deliver(taskId, msg);
        return;
      }
    }
    this.stash.set(taskId, msg);
    while (this.stash.size > STASH_MAX) this.stash.delete(this.stash.keys().next().value);
  }

  _bellKeys() {
    if (!this.bells) return [];
    const out = [];
    for (const id of this.waiters.keys()) {
      if (out.length >= BELLS_MAX) break;
      if (!id.startsWith(cancelWaitKey(''))) out.push(keys.bell(id));
    }
    return out;
  }

  async _read() {
    if (this.reading) return;
    this.reading = true;
    try {
      while ((this.waiters.size > 0 || this.collectors.size > 0) && !this.client._closed) {
        const bells = this._bellKeys();
        let popped;
        try {
          popped = await this.client._blocking().blpopBuffer(this.key, ...bells, SLICE_S);
        } catch (err) {
          if (bells.length > 0 && isNoPerm(err)) {
            this.bells = false; // this ACL user may not read bells: the reply list alone
            continue;
          }
          // The waiters re-read the result keys when their slice passes; that surfaces the error.
          await new Promise((r) => setTimeout(r, 200));
          continue;
        }
        if (popped === null) continue;
        this._deliver(parseReply(popped[1]));
        if (popped[0].toString() !== this.key) continue;
        let more = null;
        try {
          // More results are probably waiting: take them in one round trip.
          more = await this.client._blocking().lpopBuffer(this.key, DRAIN_MAX);
        } catch {
          // read again by the next BLPOP
        }
        for (const raw of more ?? []) this._deliver(parseReply(raw));
      }
    } finally {
      this.reading = false;
    }
  }

  closeAll() {
    for (const [taskId, set] of this.waiters) for (const waiter of [...set]) this._settle(taskId, waiter, null);
  }
}

/** A pub/sub connection shared by every re-attached job of a client. */
export class Subscriptions {
  constructor(client) {
    this.client = client;
    this.conn = null;
    this.listeners = new Map(); // channel -> Set of callbacks
  }

  _connection() {
    if (this.conn === null) {
      this.conn = this.client._r.duplicate();
      this.conn.on('error', () => {});
      this.conn.on('messageBuffer', (channel, message) => {
        for (const cb of this.listeners.get(channel.toString()) ?? []) cb(message);
      });
    }
    return this.conn;
  }

  /**
   * Call `callback(channel, message)` for every message on `channels`; resolves once the
   * subscriptions are confirmed. Returns a function that stops listening.
   */
  async listen(channels, callback) {
    const conn = this._connection();
    const added = channels.map((channel) => {
      const cb = (message) => callback(channel, message);
      if (!this.listeners.has(channel)) this.listeners.set(channel, new Set());
      this.listeners.get(channel).add(cb);
      return [channel, cb];
    });
    const stop = () => {
      for (const [channel, cb] of added) this._drop(channel, cb);
    };
    try {
      for (let i = 0; i < channels.length; i += 10000) await conn.subscribe(...channels.slice(i, i + 10000));
    } catch (err) {
      stop();
      throw err;
    }
    return stop;
  }

  _drop(channel, callback) {
    const set = this.listeners.get(channel);
    if (!set) return;
    set.delete(callback);
    if (set.size === 0) {
      this.listeners.delete(channel);
      this.conn?.unsubscribe(channel).catch(() => {});
    }
  }

  close() {
    this.conn?.disconnect();
  }
}
