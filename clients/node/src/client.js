// The Node.js client: submit jobs, wait for results without polling, re-attach by id, read model
// metadata. The wire format is docs/PROTOCOL.md; this file only does Redis I/O around
// protocol.js and tensor.js.

import { randomUUID } from 'node:crypto';

import { Redis } from 'ioredis';

import {
  BrokerUnavailable,
  IcowError,
  InvalidInput,
  JobNotFound,
  JobTimeout,
  ModelNotFound,
  NotFound,
  PayloadTooLarge,
  QueueFull,
  remoteError,
} from './errors.js';
import { decode as msgpackDecode, encode as msgpackEncode } from './msgpack.js';
import {
  DEFAULT_INLINE_MAX_BYTES,
  DEFAULT_RESULT_TTL_S,
  MAX_RESULT_TTL_S,
  READY_STATES,
  SUBMIT_SCRIPT,
  celeryMessage,
  checkJobId,
  checkModelName,
  failureOf,
  jobEnvelope,
  keys,
  newJobId,
  parseMeta,
} from './protocol.js';
import { DEFAULT_MAX_TENSOR_BYTES, decode as decodeTensor, encode as encodeTensor } from './tensor.js';

// One blocking read never waits longer than this, so the result key (the source of truth) is
// re-read now and then and a silently dead connection is noticed.
const SLICE_S = 2;
const STASH_MAX = 10000;
const MAX_JOB_BYTES = 480 * 1024 * 1024;

function checkTimeout(timeoutS) {
  if (timeoutS !== null && (typeof timeoutS !== 'number' || !(timeoutS >= 0))) {
    throw new InvalidInput(`timeoutS must be a non-negative number or null, got ${timeoutS}`);
  }
  return timeoutS;
}

function deadlineOf(timeoutS) {
  return timeoutS === null ? Infinity : Date.now() + timeoutS * 1000;
}

async function io(what, fn) {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof IcowError) throw err;
    throw new BrokerUnavailable(`Redis is unavailable while ${what}: ${err.message}`, { cause: err });
  }
}

/** Claim-check keys a SUCCESS meta's outputs point at (fetch them, then call decodeResult). */
export function outputRefs(meta) {
  return (meta.result?.outputs ?? []).filter((t) => t.ref !== undefined).map((t) => t.ref);
}

/** Outputs by name from a READY result meta (`blobs`: ref -> bytes), or throw the remote error it carries. */
export function decodeResult(meta, blobs = new Map()) {
  const jobId = meta.task_id ?? null;
  if (meta.status !== 'SUCCESS') {
    const [type, message] = failureOf(meta);
    throw remoteError(type, message, jobId);
  }
  const out = {};
  for (const t of meta.result?.outputs ?? []) {
    let wire = t;
    if (t.ref !== undefined) {
      const data = blobs.get(t.ref);
      if (data === null || data === undefined) throw new JobNotFound(`job ${jobId}: output '${t.name}' has expired`);
      wire = { ...t, data };
    }
    out[t.name] = decodeTensor(wire);
  }
  return out;
}

/** A handle on one job. `client.job(id)` builds one from the id in any process. */
export class Job {
  constructor(client, id, model = null, { viaReply = false } = {}) {
    this.client = client;
    this.id = id;
    this.model = model;
    this._viaReply = viaReply;
    this._meta = null;
  }

  /** 'queued' | 'running' | 'succeeded' | 'failed'; JobNotFound if unknown or expired. */
  async status() {
    if (this._meta === null) {
      const [meta, state] = await this.client._readState(this.id);
      if (meta !== null) this._meta = meta;
      return statusOf(meta, state, this.id);
    }
    return statusOf(this._meta, null, this.id);
  }

  async done() {
    return ['succeeded', 'failed'].includes(await this.status());
  }

  /**
   * Wait (blocking on Redis, no polling) until the job finishes; resolve to its outputs by name.
   * Rejects with JobTimeout after `timeoutS` (null waits forever), the job's RemoteError subclass
   * if it failed, JobNotFound if the job is unknown or expired.
   */
  async result({ timeoutS = null } = {}) {
    checkTimeout(timeoutS);
    if (this._meta === null) this._meta = await this.client._waitMeta(this.id, timeoutS, this._viaReply);
    return this.client._decode(this._meta);
  }
}

function statusOf(meta, state, jobId) {
  if (meta !== null) return meta.status === 'SUCCESS' ? 'succeeded' : 'failed';
  if (state === null) throw new JobNotFound(`job ${jobId} is unknown or its result has expired`);
  return state.toString() === 'running' ? 'running' : 'queued';
}

/** One reader (BLPOP on the client's reply list) hands every result to the job waiting for it. */
class ReplyRouter {
  constructor(client, key) {
    this.client = client;
    this.key = key;
    this.waiters = new Map(); // job id -> Set of {resolve, timer}
    this.stash = new Map(); // results popped before anyone waited for them
    this.reading = false;
  }

  /** The job's meta, or null once `untilMs` passes. */
  wait(jobId, untilMs) {
    const stashed = this.stash.get(jobId);
    if (stashed !== undefined) {
      this.stash.delete(jobId);
      return Promise.resolve(stashed);
    }
    return new Promise((resolve) => {
      const waiter = { resolve };
      waiter.timer = setTimeout(() => this._settle(jobId, waiter, null), Math.max(0, untilMs - Date.now()));
      if (!this.waiters.has(jobId)) this.waiters.set(jobId, new Set());
      this.waiters.get(jobId).add(waiter);
      this._read();
    });
  }

  _settle(jobId, waiter, meta) {
    clearTimeout(waiter.timer);
    const set = this.waiters.get(jobId);
    if (set) {
      set.delete(waiter);
      if (set.size === 0) this.waiters.delete(jobId);
    }
    waiter.resolve(meta);
  }

  _deliver(meta) {
    const jobId = String(meta.task_id);
    const set = this.waiters.get(jobId);
    if (set) {
      for (const waiter of [...set]) this._settle(jobId, waiter, meta);
      return;
    }
    this.stash.set(jobId, meta);
    while (this.stash.size > STASH_MAX) this.stash.delete(this.stash.keys().next().value);
  }

  async _read() {
    if (this.reading) return;
    this.reading = true;
    try {
      while (this.waiters.size > 0 && !this.client._closed) {
        let popped;
        try {
          popped = await this.client._blocking().blpopBuffer(this.key, SLICE_S);
        } catch {
          // The callers re-read the result keys when their slice passes; that surfaces the error.
          await new Promise((r) => setTimeout(r, 200));
          continue;
        }
        if (popped !== null) {
          try {
            this._deliver(parseMeta(popped[1]));
          } catch {
            // not a result meta: nothing waits for it
          }
        }
      }
    } finally {
      this.reading = false;
    }
  }

  closeAll() {
    for (const [jobId, set] of this.waiters) for (const waiter of [...set]) this._settle(jobId, waiter, null);
  }
}

/** A pub/sub connection shared by every re-attached job of a client. */
class Subscriptions {
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

  /** Listen on `channel`; resolves once the subscription is confirmed. Returns an unsubscribe function. */
  async listen(channel, callback) {
    const conn = this._connection();
    if (!this.listeners.has(channel)) this.listeners.set(channel, new Set());
    this.listeners.get(channel).add(callback);
    try {
      await conn.subscribe(channel);
    } catch (err) {
      this._drop(channel, callback);
      throw err;
    }
    return () => this._drop(channel, callback);
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

/**
 * Submit jobs to an ICOW fleet and read their results.
 *
 *   const client = new Client('redis://127.0.0.1:6379/0');
 *   const out = await client.infer('mlp', { x: { datatype: 'FP32', shape: [1, 4], data: new Float32Array(4) } });
 */
export class Client {
  constructor(
    url = process.env.ICOW_REDIS_URL ?? 'redis://127.0.0.1:6379/0',
    {
      resultTtlS = DEFAULT_RESULT_TTL_S,
      connectTimeoutS = 2,
      inlineMaxBytes = DEFAULT_INLINE_MAX_BYTES,
      maxTensorBytes = DEFAULT_MAX_TENSOR_BYTES,
      requirePublished = true,
      redisOptions = {},
    } = {},
  ) {
    this.url = url;
    this.resultTtlS = resultTtlS;
    this.inlineMaxBytes = inlineMaxBytes;
    this.maxTensorBytes = maxTensorBytes;
    // Refuse jobs for models no worker has published (they would wait forever).
    this.requirePublished = requirePublished;
    this.clientId = randomUUID().replaceAll('-', '');
    this._published = new Set();
    this._closed = false;
    this._r = new Redis(url, {
      connectTimeout: connectTimeoutS * 1000,
      maxRetriesPerRequest: 1,
      retryStrategy: (times) => Math.min(times * 100, 1000),
      ...redisOptions,
    });
    this._r.on('error', () => {}); // failures surface as BrokerUnavailable from each call
    this._block = null;
    this._replies = new ReplyRouter(this, keys.reply(this.clientId));
    this._subs = new Subscriptions(this);
  }

  _blocking() {
    if (this._block === null) {
      this._block = this._r.duplicate();
      this._block.on('error', () => {});
    }
    return this._block;
  }

  async close() {
    this._closed = true;
    this._replies.closeAll();
    this._subs.close();
    this._block?.disconnect();
    this._r.disconnect();
  }

  async ping() {
    await io('pinging', () => this._r.ping());
  }

  // -- submitting

  _prepare(model, inputs, { version = null, outputs = null, priority = 0, deadlineS = null, resultTtlS, jobId } = {}) {
    checkModelName(model);
    if (version !== null && !(Number.isSafeInteger(version) && version >= 1)) {
      throw new InvalidInput(`version must be a positive integer or null, got ${version}`);
    }
    if (inputs === null || typeof inputs !== 'object' || Object.keys(inputs).length === 0) {
      throw new InvalidInput('inputs must be a non-empty object of input name -> tensor');
    }
    if (outputs !== null && (!Array.isArray(outputs) || !outputs.every((o) => typeof o === 'string'))) {
      throw new InvalidInput('outputs must be an array of output names');
    }
    const ttl = resultTtlS ?? this.resultTtlS;
    if (!Number.isSafeInteger(ttl) || ttl < 1 || ttl > MAX_RESULT_TTL_S) {
      throw new InvalidInput(`resultTtlS must be an integer in 1..${MAX_RESULT_TTL_S}`);
    }
    if (!Number.isSafeInteger(priority) || priority < 0 || priority > 9) {
      throw new InvalidInput('priority must be an integer 0..9 (0 is served first)');
    }
    if (deadlineS !== null && !(typeof deadlineS === 'number' && deadlineS > 0)) {
      throw new InvalidInput('deadlineS must be a positive number of seconds');
    }
    const id = jobId === undefined ? newJobId() : checkJobId(jobId);
    const wire = [];
    const blobs = [];
    let total = 0;
    Object.entries(inputs).forEach(([name, value], i) => {
      const t = encodeTensor(name, value, { maxBytes: this.maxTensorBytes });
      total += t.data.length;
      if (t.data.length > this.inlineMaxBytes) {
        const ref = keys.blob(id, 'in', i);
        blobs.push([ref, t.data]);
        delete t.data;
        t.ref = ref;
      }
      wire.push(t);
    });
    if (total > MAX_JOB_BYTES) throw new PayloadTooLarge(`the job's inputs total ${total} bytes; the limit is ${MAX_JOB_BYTES}`);
    const created = Date.now() / 1000;
    const job = jobEnvelope({
      jobId: id,
      model,
      version,
      inputs: wire,
      outputs,
      resultTtlS: ttl,
      replyTo: this._replies.key,
      deadline: deadlineS === null ? null : created + deadlineS,
      created,
    });
    const message = celeryMessage(msgpackEncode(job), { jobId: id, model, priority });
    return { id, queueList: keys.queueList(model, priority), message, blobs, ttl };
  }

  async _checkPublished(model) {
    checkModelName(model);
    if (!this.requirePublished || this._published.has(model)) return;
    const names = await io('checking the model is published', () => this._r.smembers(keys.MODELS));
    this._published = new Set(names);
    if (!this._published.has(model)) {
      throw new ModelNotFound(`no worker has published model '${model}'; published: ${[...names].sort().join(', ')}`);
    }
  }

  /**
   * Queue one job and return its handle at once. Options: version, outputs (names), priority
   * (0..9, 0 first), deadlineS (fail with JobExpired if not started within), resultTtlS, jobId.
   */
  async submit(model, inputs, options = {}) {
    await this._checkPublished(model);
    const job = this._prepare(model, inputs, options);
    const [queued, depth, limit] = await io('submitting a job', async () => {
      const pipe = this._r.pipeline();
      // Claim-checked tensors first, then the submit script (backlog check, state record,
      // LPUSH), in the same round trip.
      for (const [key, data] of job.blobs) pipe.set(key, data, 'EX', job.ttl);
      const scriptKeys = [keys.LIMITS, ...keys.queueLists(model), job.queueList, keys.state(job.id)];
      for (const [key] of job.blobs) scriptKeys.push(key);
      pipe.eval(SUBMIT_SCRIPT, scriptKeys.length, ...scriptKeys, model, 1, job.message, job.ttl, job.blobs.length);
      const replies = await pipe.exec();
      for (const [err] of replies) if (err) throw err;
      return replies.at(-1)[1].map(Number);
    });
    if (queued < 1) {
      throw new QueueFull(`model '${model}' already has ${depth} jobs waiting, its limit is ${limit}: not queued`, {
        model,
        depth,
        limit,
      });
    }
    return new Job(this, job.id, model, { viaReply: true });
  }

  /** Submit and wait: outputs by name, or the job's error. */
  async infer(model, inputs, { timeoutS = 30, ...options } = {}) {
    checkTimeout(timeoutS);
    const job = await this.submit(model, inputs, { deadlineS: timeoutS || null, ...options });
    return job.result({ timeoutS });
  }

  // -- results

  /** Re-attach to a job by id (from any process). */
  job(jobId) {
    return new Job(this, checkJobId(jobId));
  }

  async _readState(jobId) {
    const [data, state] = await io("reading a job's state", () =>
      this._r.mgetBuffer(keys.result(jobId), keys.state(jobId)),
    );
    return [data === null ? null : parseMeta(data), state];
  }

  async _checkKey(jobId) {
    const [meta, state] = await this._readState(jobId);
    if (meta === null && state === null) throw new JobNotFound(`job ${jobId} is unknown or its result has expired`);
    return meta;
  }

  async _waitMeta(jobId, timeoutS, viaReply) {
    const deadline = deadlineOf(timeoutS);
    if (!viaReply) return this._waitPubsub(jobId, deadline, timeoutS);
    for (;;) {
      const meta = await this._replies.wait(jobId, Math.min(deadline, Date.now() + SLICE_S * 1000));
      if (meta !== null) return meta;
      if (this._closed) throw new BrokerUnavailable('the client was closed');
      const stored = await this._checkKey(jobId); // the key is the source of truth
      if (stored !== null) return stored;
      if (Date.now() >= deadline) throw new JobTimeout(`job ${jobId} not finished within ${timeoutS} s`);
    }
  }

  async _waitPubsub(jobId, deadline, timeoutS) {
    const inbox = [];
    let wake = null;
    const unlisten = await io('subscribing to a result', () =>
      this._subs.listen(keys.resultChannel(jobId), (message) => {
        inbox.push(message);
        wake?.();
      }),
    );
    try {
      for (;;) {
        // Subscribed first, then GET: a result published before the subscription is in the key.
        const meta = await this._checkKey(jobId);
        if (meta !== null && READY_STATES.includes(meta.status)) return meta;
        while (inbox.length > 0) {
          const got = parseMeta(inbox.shift());
          if (READY_STATES.includes(got.status)) return got;
        }
        const left = deadline - Date.now();
        if (left <= 0) throw new JobTimeout(`job ${jobId} not finished within ${timeoutS} s`);
        if (this._closed) throw new BrokerUnavailable('the client was closed');
        await new Promise((resolve) => {
          const done = () => {
            clearTimeout(timer);
            wake = null;
            resolve();
          };
          const timer = setTimeout(done, Math.min(left, SLICE_S * 1000));
          wake = done;
          if (inbox.length > 0) done();
        });
        while (inbox.length > 0) {
          const got = parseMeta(inbox.shift());
          if (READY_STATES.includes(got.status)) return got;
        }
      }
    } finally {
      unlisten();
    }
  }

  async _decode(meta) {
    const refs = meta.status === 'SUCCESS' ? outputRefs(meta) : [];
    const blobs = new Map();
    if (refs.length > 0) {
      const values = await io('reading large outputs', () => this._r.mgetBuffer(...refs));
      refs.forEach((ref, i) => blobs.set(ref, values[i]));
    }
    return decodeResult(meta, blobs);
  }

  // -- models

  /** Every published model and its versions: {mlp: [1], scale: [1, 2]}. */
  async models() {
    return io('listing models', async () => {
      const names = (await this._r.smembers(keys.MODELS)).sort();
      const pipe = this._r.pipeline();
      for (const n of names) pipe.hkeys(keys.model(n));
      const replies = await pipe.exec();
      const out = {};
      names.forEach((n, i) => {
        const [err, versions] = replies[i];
        if (err) throw err;
        if (versions.length > 0) out[n] = versions.map(Number).sort((a, b) => a - b);
      });
      return out;
    });
  }

  /** A model's signature: {name, version, inputs: [{name, datatype, shape}], outputs, versions, providers}. */
  async model(name, version = null) {
    checkModelName(name);
    const raw = await io('reading model metadata', () => this._r.hgetallBuffer(keys.model(name)));
    const metas = new Map(Object.entries(raw).map(([v, data]) => [Number(v), msgpackDecode(data)]));
    if (metas.size === 0) throw new NotFound(`model '${name}' is not published by any worker`);
    const chosen = version ?? Math.max(...metas.keys());
    const meta = metas.get(chosen);
    if (meta === undefined) {
      throw new NotFound(`model '${name}' has no version ${version}; published: ${[...metas.keys()].sort((a, b) => a - b)}`);
    }
    const specs = (items) => items.map((t) => ({ name: t.name, datatype: t.datatype, shape: [...t.shape] }));
    return {
      name: meta.name,
      version: meta.version,
      inputs: specs(meta.inputs),
      outputs: specs(meta.outputs),
      versions: [...metas.keys()].sort((a, b) => a - b),
      providers: meta.providers ?? [],
    };
  }
}
