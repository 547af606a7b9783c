// The Node.js client: submit jobs (FCALL icow_submit), wait for results without polling, cancel,
// bulk, re-attach by id, read model metadata. The wire format is docs/PROTOCOL.md; this file
// only does Redis I/O around protocol.js, keys.js, tensor.js, bulk.js and waiting.js.

import * as bulk from './bulk.js';
import { connect } from './connection.js';
import {
  BrokerUnavailable,
  ClientClosed,
  IcowError,
  InvalidInput,
  JobIdConflict,
  JobNotFound,
  JobTimeout,
  ModelNotFound,
  NoResultYet,
  NotDurable,
  NotFound,
  PayloadTooLarge,
  PermissionDenied,
  QueueFull,
  remoteError,
} from './errors.js';
import * as keys from './keys.js';
import { decode as msgpackDecode, encode as msgpackEncode } from './msgpack.js';
import {
  CANCEL_REQUEST,
  DEFAULT_INLINE_MAX_BYTES,
  DIGEST_CONFLICT,
  MAX_JOB_BYTES,
  READY_STATES,
  SUBMIT,
  cancelOutcome,
  cancelRequestCall,
  cancelWaitKey,
  celeryMessage,
  failureOf,
  functionsMissing,
  isFunctionMissing,
  jobEnvelope,
  jobDigest,
  jobIdForToken,
  newBulkId,
  newInputKey,
  newJob,
  parseMeta,
  randomHex,
  submitCall,
  submitReply,
} from './protocol.js';
import { DEFAULT_MAX_TENSOR_BYTES, decode as decodeTensor, encode as encodeTensor } from './tensor.js';
import { ReplyRouter, SLICE_S, Subscriptions } from './waiting.js';

const SUBMIT_OPTIONS = new Set(['version', 'outputs', 'priority', 'deadlineS', 'resultTtlS', 'jobId', 'durable']);
const MGET_CHUNK = 10000;
/** The bound of every Redis command of a call that takes no timeoutS of its own (submit, status, models...). */
export const DEFAULT_TIMEOUT_S = 10;
/** How long a durable submit waits for a replica to acknowledge (Redis WAIT), as icow.connection. */
export const DURABLE_WAIT_MS = 1000;
const MARGIN_MS = 500;

/** NotDurable (a BrokerUnavailable) for queued jobs only `acknowledged` (< `replicas`) replicas hold, as icow.connection.not_durable. */
export function notDurable(acknowledged, replicas, jobIds = [], jobs = []) {
  let text =
    `only ${acknowledged} of ${replicas} Redis replica(s) acknowledged the write in time: it is on the primary but not yet ` +
    'durable (no replica, or replication lagging)';
  if (jobIds.length > 0) {
    const shown = jobIds.slice(0, 3).join(', ') + (jobIds.length > 3 ? ` and ${jobIds.length - 3} more` : '');
    text += `; the job(s) ARE queued and will run (${shown}): re-attach to them (.jobs), do not resubmit`;
  }
  return new NotDurable(text, { jobIds, jobs, acknowledged, replicas });
}

/** NotDurable unless `acknowledged` (WAIT's count) reaches `replicas`, as icow.connection.require_replicas. */
export function requireReplicas(acknowledged, replicas = 1, jobIds = []) {
  const got = Number(acknowledged);
  if (!(got >= replicas)) throw notDurable(Number.isFinite(got) ? got : 0, replicas, jobIds);
  return got;
}

function checkTimeout(timeoutS) {
  if (timeoutS !== null && (typeof timeoutS !== 'number' || !(timeoutS >= 0))) {
    throw new InvalidInput(`timeoutS must be a non-negative number or null, got ${timeoutS}`);
  }
  return timeoutS;
}

function deadlineOf(timeoutS) {
  return timeoutS === null ? Infinity : Date.now() + timeoutS * 1000;
}

/**
 * Why workers do not serve `model` (or its `version`), from `icow:failed:<m>` (field
 * `<version>:<worker>`, value the reason): one sentence per failed version and worker, the
 * same text as the Python client's.
 */
export function notServedReasons(model, version, failed) {
  const found = [];
  for (const [field, why] of Object.entries(failed ?? {})) {
    const at = field.indexOf(':');
    const v = field.slice(0, at);
    const worker = field.slice(at + 1);
    if (at > 0 && /^[0-9]+$/.test(v) && worker && (version === null || Number(v) === version)) found.push([Number(v), worker, String(why)]);
  }
  found.sort((a, b) => a[0] - b[0] || (a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
  return found.map(([v, w, why]) => `model '${model}' version ${v} failed to load on worker ${w}: ${why}`);
}

/** A Redis ACL refusal (inside a function Redis words it differently), as icow.client._core.is_acl_denial. */
const isAclDenial = (err) => /^NOPERM|no permissions|can't access/.test(String(err?.message ?? ''));

async function io(what, fn) {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof IcowError) throw err;
    if (isFunctionMissing(err)) throw functionsMissing(err);
    if (isAclDenial(err)) {
      throw new PermissionDenied(
        `Redis refused ${what}: the ACL user lacks a permission ICOW's client needs (see \`icow admin acl\`): ${err.message}`,
        { cause: err },
      );
    }
    // An ICOW function refused an argument (icow_cancel_request): nothing was done.
    const text = String(err?.message ?? '');
    if (text.startsWith('ICOW_INVALID ')) throw new InvalidInput(`Redis refused ${what}: ${text.slice(13)}`, { cause: err });
    throw new BrokerUnavailable(`Redis is unavailable while ${what}: ${err.message}`, { cause: err });
  }
}

/** JobIdConflict when icow_submit refused a job whose custom id holds another job's digest (8.4). */
function jobIdConflict(reply, prepared) {
  const p = prepared.find((_, i) => reply.codes?.[i] === DIGEST_CONFLICT);
  if (p === undefined) return null;
  return new JobIdConflict(
    `job id '${p.id}' was already used by a job with other inputs (model, version, outputs or tensors): not queued; ` +
      'choose a new id (the same id with the same inputs is idempotent)',
    { jobId: p.id, remoteType: 'JobIdConflict' },
  );
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

/** The result meta stored under celery-task-meta-<id>, if it is this job's answer. */
function readMeta(jobId, data) {
  if (data === null || data === undefined) return null;
  const meta = parseMeta(data);
  return meta.task_id === jobId && READY_STATES.includes(meta.status) ? meta : null;
}

/**
 * 'queued' | 'running' | 'succeeded' | 'failed' from a job's result meta and state key.
 * A 'done' state without a result means the result expired (JobNotFound); no state at all
 * reads as queued (an unknown id cannot be told from a job nobody has taken yet).
 */
export function statusOf(meta, state, jobId) {
  if (meta !== null) return meta.status === 'SUCCESS' ? 'succeeded' : 'failed';
  const s = state === null || state === undefined ? null : state.toString();
  if (s === 'running') return 'running';
  if (s === 'done') throw new JobNotFound(`job ${jobId}: its result has expired`);
  return 'queued';
}

const num = (v) => (typeof v === 'number' ? v : typeof v === 'bigint' ? Number(v) : null);

/** JobInfo of a result meta (docs/PROTOCOL.md 9), as icow.client.JobInfo. */
export function jobInfo(jobId, meta) {
  const res = meta.result !== null && typeof meta.result === 'object' ? meta.result : {};
  const timing = res.timing !== null && typeof res.timing === 'object' ? res.timing : {};
  return Object.freeze({
    jobId,
    status: meta.status === 'SUCCESS' ? 'succeeded' : 'failed',
    model: typeof res.model === 'string' ? res.model : null,
    version: num(res.version),
    worker: typeof res.worker === 'string' && res.worker !== '' ? res.worker : null,
    queuedS: num(timing.queued_s),
    computeS: num(timing.compute_s),
    batch: num(timing.batch),
    batchSamples: num(timing.batch_samples),
    finished: typeof meta.date_done === 'string' ? meta.date_done : null,
  });
}

/**
 * A handle on one job. `client.job(id)` re-attaches from any process; `client.job(id, {cancelToken})`
 * (or a handle from submit) can also cancel it.
 */
export class Job {
  constructor(client, id, { model = null, cancelToken = null, viaReply = false, ttlS = null } = {}) {
    this.client = client;
    this._ttlS = ttlS; // the result TTL it was submitted with (a cancel passes it on), if known
    this.id = id;
    this.model = model;
    /** The cancel token (32 hex): only its holder may cancel the job. Null when re-attached by id. */
    this.cancelToken = cancelToken;
    this._viaReply = viaReply;
    this._meta = null;
  }

  /**
   * How the finished job ran (no Redis call): {jobId, status, model, version (the one that ran),
   * worker, queuedS, computeS, batch, batchSamples, finished}; null where the result does not
   * say (a failure has no timings). Throws NoResultYet until the handle has seen the result
   * (after `await job.result()`, a status() that read it finished, or asCompleted). Frozen.
   */
  info() {
    if (this._meta === null) {
      throw new NoResultYet(`job ${this.id}: no result seen yet; info() is there once result() has settled`);
    }
    return jobInfo(this.id, this._meta);
  }

  /** 'queued' | 'running' | 'succeeded' | 'failed'; JobNotFound once the result has expired. */
  async status() {
    if (this._meta !== null) return statusOf(this._meta, null, this.id);
    const [meta, state] = await this.client._readState(this.id);
    if (meta !== null) this._meta = meta;
    return statusOf(meta, state, this.id);
  }

  async done() {
    return ['succeeded', 'failed'].includes(await this.status());
  }

  /**
   * Wait (blocking on Redis, no polling) until the job finishes; resolve to its outputs by name.
   * Rejects with JobTimeout after `timeoutS` (null waits forever), the job's RemoteError subclass
   * if it failed (JobCancelled if cancelled), JobNotFound if its result has expired.
   */
  async result({ timeoutS = null } = {}) {
    checkTimeout(timeoutS);
    if (this._meta === null) this._meta = await this.client._waitMeta(this.id, timeoutS, this._viaReply);
    return this.client._decode(this._meta);
  }

  /**
   * Ask the fleet to cancel the job; resolves once a worker answers: true if it was cancelled
   * (its waiters get JobCancelled), false if it is already running or finished (its result will
   * stand). Rejects with JobTimeout if no worker answers within `timeoutS`.
   */
  async cancel({ timeoutS = 10 } = {}) {
    if (this.cancelToken === null) {
      throw new InvalidInput(
        `job ${this.id} has no cancel token: only the client that submitted it (with an id of ICOW's making), or ` +
          'whoever it gave job.cancelToken to (client.job(id, { cancelToken })), can cancel it',
      );
    }
    return this.client.cancel(this.cancelToken, { timeoutS, ttlS: this._ttlS });
  }
}

/**
 * Submit jobs to an ICOW fleet and read their results. `url`: redis://, rediss://, or
 * redis+sentinel://host1[:port],host2[:port]/service[/db] (src/connection.js). `timeoutS` bounds
 * each Redis command of calls that take no timeout of their own; `durable: true` makes every
 * submit wait until a replica holds the job (per call: `{ durable }`).
 *
 *   const client = new Client('redis://127.0.0.1:6379/0');
 *   const out = await client.infer('mlp', { x: { datatype: 'FP32', shape: [1, 4], data: new Float32Array(4) } });
 */
export class Client {
  constructor(
    url = process.env.ICOW_REDIS_URL ?? 'redis://127.0.0.1:6379/0',
    {
      resultTtlS = keys.DEFAULT_RESULT_TTL_S,
      connectTimeoutS = 2,
      timeoutS = DEFAULT_TIMEOUT_S,
      durable = false,
      inlineMaxBytes = DEFAULT_INLINE_MAX_BYTES,
      maxTensorBytes = DEFAULT_MAX_TENSOR_BYTES,
      requirePublished = true,
      redisOptions = {},
    } = {},
  ) {
    if (typeof timeoutS !== 'number' || !(timeoutS > 0)) throw new InvalidInput(`timeoutS must be a positive number, got ${timeoutS}`);
    if (typeof durable !== 'boolean') throw new InvalidInput(`durable must be true or false, got ${durable}`);
    this.url = url;
    this.timeoutS = timeoutS;
    this.durable = durable;
    this.resultTtlS = resultTtlS;
    this.inlineMaxBytes = inlineMaxBytes;
    this.maxTensorBytes = maxTensorBytes;
    // Refuse jobs unless a live worker serves the model (version): they would wait forever.
    this.requirePublished = requirePublished;
    this.clientId = randomHex();
    this._closed = false;
    // Each command is bounded (also while queued during a reconnect or a failover): no call hangs.
    this._r = connect(url, {
      base: { maxRetriesPerRequest: 1, retryStrategy: (times) => Math.min(times * 100, 1000) },
      connectTimeoutMs: connectTimeoutS * 1000,
      commandTimeoutMs: timeoutS * 1000 + MARGIN_MS,
      redisOptions,
    });
    this._r.on('error', () => {}); // failures surface as BrokerUnavailable from each call
    this._block = null;
    this._replies = new ReplyRouter(this, keys.reply(this.clientId));
    this._subs = new Subscriptions(this);
  }

  /** The reply list the fleet answers this client on (icow:reply:<client id>). */
  get replyList() {
    return this._replies.key;
  }

  _blocking() {
    if (this._block === null) {
      // A BLPOP blocks SLICE_S on purpose; its bound is that plus the usual one.
      const bound = this._r.options.commandTimeout;
      this._block = this._r.duplicate(typeof bound === 'number' ? { commandTimeout: bound + SLICE_S * 1000 } : {});
      this._block.on('error', () => {});
    }
    return this._block;
  }

  /** Drop the reply list (results stay in their keys) and disconnect. */
  async close() {
    if (this._closed) return;
    this._closed = true;
    this._replies.closeAll();
    this._subs.close();
    this._block?.disconnect();
    try {
      await this._r.del(this.replyList);
    } catch {
      // Redis gone: the list expires with its results
    }
    this._r.disconnect();
  }

  /** ClientClosed: every call that would reach Redis after close(). */
  _closedError() {
    return new ClientClosed(`the client ${this.clientId} was closed: make a new client`);
  }

  _checkOpen() {
    if (this._closed) throw this._closedError();
  }

  async ping() {
    this._checkOpen();
    await io('pinging', () => this._r.ping());
  }

  // -- submitting

  _prepare(model, inputs, options = {}) {
    const unknown = Object.keys(options).filter((k) => !SUBMIT_OPTIONS.has(k));
    if (unknown.length > 0) throw new InvalidInput(`unknown option ${unknown.join(', ')}; use ${[...SUBMIT_OPTIONS].join(', ')}`);
    const { version = null, outputs = null, priority = 0, deadlineS = null, resultTtlS = this.resultTtlS, jobId = null, durable = false } = options;
    if (typeof durable !== 'boolean') throw new InvalidInput(`durable must be true or false, got ${durable}`);
    keys.checkModelName(model);
    if (version !== null && !(Number.isSafeInteger(version) && version >= 1)) {
      throw new InvalidInput(`version must be a positive integer or null, got ${version}`);
    }
    if (inputs === null || typeof inputs !== 'object' || Object.keys(inputs).length === 0) {
      throw new InvalidInput('inputs must be a non-empty object of input name -> tensor');
    }
    if (outputs !== null && (!Array.isArray(outputs) || outputs.length === 0 || !outputs.every((o) => typeof o === 'string'))) {
      throw new InvalidInput('outputs must be a non-empty array of output names, or null for all');
    }
    if (!Number.isSafeInteger(resultTtlS) || resultTtlS < 1 || resultTtlS > keys.MAX_RESULT_TTL_S) {
      throw new InvalidInput(`resultTtlS must be an integer in 1..${keys.MAX_RESULT_TTL_S}`);
    }
    if (!Number.isSafeInteger(priority) || priority < 0 || priority > 9) {
      throw new InvalidInput('priority must be an integer 0..9 (0 is served first)');
    }
    if (deadlineS !== null && !(typeof deadlineS === 'number' && deadlineS > 0)) {
      throw new InvalidInput('deadlineS must be a positive number of seconds');
    }
    // An id of the caller's making cannot be cancelled: no token commits to it.
    const { id, token } = jobId === null ? newJob() : { id: keys.checkJobId(jobId), token: null };
    const wire = [];
    const blobs = [];
    let total = 0;
    const hashed = [];
    for (const [name, value] of Object.entries(inputs)) {
      const t = encodeTensor(name, value, { maxBytes: this.maxTensorBytes });
      if (token === null) hashed.push({ ...t });
      total += t.data.length;
      if (t.data.length > this.inlineMaxBytes) {
        const ref = newInputKey();
        blobs.push([ref, t.data]);
        delete t.data;
        t.ref = ref;
      }
      wire.push(t);
    }
    if (total > MAX_JOB_BYTES) throw new PayloadTooLarge(`the job's inputs total ${total} bytes; the limit is ${MAX_JOB_BYTES}`);
    const created = Date.now() / 1000;
    const job = jobEnvelope({
      jobId: id,
      model,
      version,
      inputs: wire,
      outputs,
      resultTtlS,
      replyTo: this.replyList,
      deadline: deadlineS === null ? null : created + deadlineS,
      created,
    });
    const queue = keys.queue(model, version);
    // A caller-chosen id may be reused: its digest tells a resubmission (idempotent) from another job (JobIdConflict).
    const digest = token === null ? jobDigest(model, version, outputs, hashed) : null;
    const message = celeryMessage(msgpackEncode(job), { jobId: id, model, queue, priority, digest });
    return { id, token, model, version, queueList: keys.queueList(queue, priority), message, blobs, ttl: resultTtlS, digest };
  }

  /**
   * One round trip: SET the claim-checked inputs, then FCALL icow_submit for `prepared`; when
   * `durable`, then WAIT 1 on the same connection (BrokerUnavailable if no replica acknowledged).
   */
  async _queue(model, version, prepared, durable = this.durable) {
    this._checkOpen();
    const call = submitCall({
      model,
      version,
      requireLive: this.requirePublished,
      jobs: prepared.map((p) => ({
        id: p.id,
        queueList: p.queueList,
        message: p.message,
        inputKeys: p.blobs.map(([k]) => k),
        digest: p.digest,
        ttl: p.ttl,
      })),
    });
    const replies = await io('submitting jobs', async () => {
      const pipe = this._r.pipeline();
      for (const p of prepared) for (const [key, data] of p.blobs) pipe.set(key, data, 'EX', p.ttl);
      pipe.fcall(SUBMIT, call.keys.length, ...call.keys, ...call.args);
      // WAIT counts the writes of its own connection: the pipeline's, sent on one connection.
      if (durable) pipe.call('WAIT', 1, Math.max(1, Math.min(DURABLE_WAIT_MS, Math.floor(this.timeoutS * 1000))));
      const out = await pipe.exec();
      for (const [err] of out) if (err) throw err;
      return out;
    });
    const reply = submitReply(replies.at(durable ? -2 : -1)[1]);
    // Queued on the primary, not yet on a replica: NotDurable names the queued jobs.
    if (durable && reply.queued > 0) requireReplicas(replies.at(-1)[1], 1, prepared.slice(0, reply.queued).map((p) => p.id));
    return reply;
  }

  /** `icow:failed:<m>` for ModelNotFound's message; {} when unreadable (still ModelNotFound). */
  async _failedVersions(model) {
    try {
      return await this._r.hgetall(keys.failed(model));
    } catch {
      return {};
    }
  }

  async _refused(model, version, { queued, depth, limit, served }, count, handles) {
    if (!served) {
      const what = version === null ? `model '${model}'` : `model '${model}' version ${version}`;
      const reasons = notServedReasons(model, version, await this._failedVersions(model));
      const more = reasons.length > 3 ? ` (and ${reasons.length - 3} more)` : '';
      const why = reasons.length > 0 ? `; ${reasons.slice(0, 3).join('; ')}${more}` : '';
      return new ModelNotFound(`no live worker serves ${what}: nothing was queued${why}`);
    }
    if (queued < count) {
      const done = handles.length > 0 ? `; ${handles.length} jobs of this call were queued before the limit (err.queued)` : '';
      const err = new QueueFull(`model '${model}' already has ${depth} jobs waiting, its limit is ${limit}: not queued${done}`, {
        model,
        depth,
        limit,
      });
      err.queued = handles;
      return err;
    }
    return null;
  }

  /**
   * Queue one job and return its handle at once. Options: version, outputs (names), priority
   * (0..9, 0 first), deadlineS (fail with JobExpired if not started within), resultTtlS, durable
   * (the client's by default: resolve only once a replica holds the job, else NotDurable naming it).
   * Rejects with ModelNotFound (no live worker serves it) or QueueFull; then nothing was queued.
   */
  async submit(model, inputs, options = {}) {
    const job = this._prepare(model, inputs, options);
    // A caller-chosen id is waited for as re-attached (pub/sub, then its keys): a resubmission the
    // fleet drops at its claim (answered already) is answered at once.
    const handle = new Job(this, job.id, { model, cancelToken: job.token, viaReply: job.digest === null, ttlS: job.ttl });
    let reply;
    try {
      reply = await this._queue(model, job.version, [job], options.durable ?? this.durable);
    } catch (err) {
      // Queued, not yet on a replica: the caller re-attaches to the handle.
      if (err instanceof NotDurable) throw notDurable(err.acknowledged, err.replicas, [job.id], [handle]);
      throw err;
    }
    const conflict = jobIdConflict(reply, [job]);
    if (conflict) throw conflict;
    const refused = await this._refused(model, job.version, reply, 1, []);
    if (refused) throw refused;
    return handle;
  }

  /**
   * Queue many jobs (an iterable of inputs) in few round trips: one icow_submit per `chunk`
   * jobs. At the backlog limit, rejects with QueueFull whose `queued` lists the handles of the
   * jobs queued so far (a prefix of `batch`).
   */
  async submitMany(model, batch, { chunk = 500, ...options } = {}) {
    if (!Number.isSafeInteger(chunk) || chunk < 1) throw new InvalidInput('chunk must be a positive integer');
    const version = options.version ?? null;
    const durable = options.durable ?? this.durable;
    const handles = [];
    let pending = [];
    const flush = async () => {
      let reply;
      try {
        reply = await this._queue(model, version, pending, durable);
      } catch (err) {
        if (!(err instanceof NotDurable)) throw err;
        // Every job queued so far (this chunk's included) is the caller's to re-attach.
        for (const p of pending.filter((q) => err.jobIds.includes(q.id))) {
          handles.push(new Job(this, p.id, { model, cancelToken: p.token, viaReply: true, ttlS: p.ttl }));
        }
        throw notDurable(err.acknowledged, err.replicas, handles.map((h) => h.id), handles);
      }
      for (const p of pending.slice(0, reply.queued)) handles.push(new Job(this, p.id, { model, cancelToken: p.token, viaReply: true, ttlS: p.ttl }));
      const refused = await this._refused(model, version, reply, pending.length, handles);
      if (refused) throw refused;
      pending = [];
    };
    for (const inputs of batch) {
      pending.push(this._prepare(model, inputs, options));
      if (pending.length >= chunk) await flush();
    }
    if (pending.length > 0) await flush();
    return handles;
  }

  /**
   * Queue `inputs` (tensors whose first axis is the sample axis) as jobs of `samplesPerJob`
   * samples at batch priority, and record the bulk so any process can re-attach with
   * `client.bulk(id)`. Resolves to a Bulk: progress(), asCompleted(), result().
   */
  async submitBulk(
    model,
    inputs,
    { samplesPerJob = 256, priority = bulk.PRIORITY_BATCH, resultTtlS = this.resultTtlS, chunk = 500, ...options } = {},
  ) {
    keys.checkModelName(model);
    const { chunks, samples } = bulk.split(inputs, samplesPerJob);
    const jobs = await this.submitMany(model, chunks, { ...options, priority, resultTtlS, chunk });
    const bulkId = newBulkId();
    const rec = bulk.record(
      bulkId,
      model,
      jobs.map((j) => j.id),
      samples,
    );
    await io('recording a bulk', () => this._r.set(keys.bulk(bulkId), rec, 'EX', resultTtlS));
    return new bulk.Bulk(this, bulkId, model, jobs, samples);
  }

  /** Re-attach to a bulk submission by id (from any process). */
  async bulk(bulkId) {
    this._checkOpen();
    keys.checkJobId(bulkId);
    const raw = await io('reading a bulk', () => this._r.getBuffer(keys.bulk(bulkId)));
    const { model, jobIds, samples } = bulk.parseRecord(bulkId, raw);
    return new bulk.Bulk(
      this,
      bulkId,
      model,
      jobIds.map((id) => new Job(this, id, { model })),
      samples,
    );
  }

  async _countFinished(jobIds) {
    this._checkOpen();
    let done = 0;
    for (let i = 0; i < jobIds.length; i += MGET_CHUNK) {
      const part = jobIds.slice(i, i + MGET_CHUNK).map(keys.result);
      done += await io('counting finished jobs', () => this._r.exists(...part));
    }
    return done;
  }

  /** Submit and wait: outputs by name, or the job's error. */
  async infer(model, inputs, { timeoutS = 30, ...options } = {}) {
    checkTimeout(timeoutS);
    const job = await this.submit(model, inputs, { deadlineS: timeoutS || null, ...options });
    return job.result({ timeoutS });
  }

  // -- results

  /** Re-attach to a job by id (from any process); with its `cancelToken` the handle can cancel it. */
  job(jobId, { cancelToken = null } = {}) {
    keys.checkJobId(jobId);
    if (cancelToken !== null && jobIdForToken(cancelToken) !== jobId) {
      throw new InvalidInput(`this cancel token does not belong to job ${jobId}`);
    }
    return new Job(this, jobId, { cancelToken });
  }

  /**
   * Ask the fleet to cancel the job `token` commits to (a submit handle's `cancelToken`).
   * Resolves true if it was cancelled, false if it is already running or finished; rejects with
   * JobTimeout if no worker answers within `timeoutS` (the request stays for the fleet).
   * `ttlS`: the job's result TTL, kept by its JobCancelled result (null: one day).
   */
  async cancel(token, { timeoutS = 10, ttlS = null } = {}) {
    this._checkOpen();
    checkTimeout(timeoutS);
    const jobId = jobIdForToken(token);
    const call = cancelRequestCall(token, this.replyList, ttlS);
    const answer = this._replies.wait(cancelWaitKey(jobId), deadlineOf(timeoutS));
    try {
      await io('requesting a cancel', () => this._r.fcall(CANCEL_REQUEST, call.keys.length, ...call.keys, ...call.args));
    } catch (err) {
      this._replies.nudge(cancelWaitKey(jobId));
      throw err;
    }
    const got = await answer;
    if (got === null) {
      if (this._closed) throw this._closedError();
      throw new JobTimeout(`no ICOW worker answered the cancel request for job ${jobId} within ${timeoutS} s`);
    }
    return cancelOutcome(got) === 'cancelled';
  }

  /**
   * Yield jobs (an async iterator) as their results arrive; each one's result() then resolves
   * at once. Rejects with JobTimeout if some are not finished within `timeoutS`.
   */
  async *asCompleted(jobs, { timeoutS = null } = {}) {
    checkTimeout(timeoutS);
    const deadline = deadlineOf(timeoutS);
    const waiting = new Map();
    for (const job of jobs) {
      if (job._meta !== null) yield job;
      else waiting.set(job.id, job);
    }
    if (waiting.size === 0) return;
    const ready = [];
    const recheck = new Set();
    let checkAll = false;
    let wake = null;
    const signal = () => {
      const w = wake;
      wake = null;
      w?.();
    };
    const reattached = [...waiting.values()].filter((j) => !j._viaReply).map((j) => keys.resultChannel(j.id));
    const stopListening =
      reattached.length === 0
        ? () => {}
        : await io('subscribing to results', () =>
            this._subs.listen(reattached, (channel, message) => {
              ready.push([channel.slice(keys.RESULT_PREFIX.length), parseMeta(message)]);
              signal();
            }),
          );
    checkAll = reattached.length > 0; // subscribed first, then read: nothing published is missed
    // The keys of every job still waited for are read every SLICE_S, also while replies for some
    // of them keep arriving (time-based, PROTOCOL.md section 10).
    let checkedAt = Date.now();
    const stopCollecting = this._replies.collect({
      has: (id) => waiting.has(id),
      deliver: (id, meta) => {
        ready.push([id, meta]);
        signal();
      },
      nudge: (id) => {
        recheck.add(id);
        signal();
      },
    });
    try {
      for (;;) {
        while (ready.length > 0) {
          const [id, meta] = ready.shift();
          const job = waiting.get(id);
          if (job === undefined || !READY_STATES.includes(meta.status)) continue;
          waiting.delete(id);
          job._meta = meta;
          yield job;
        }
        if (waiting.size === 0) return;
        if (Date.now() - checkedAt >= SLICE_S * 1000) checkAll = true;
        if (checkAll || recheck.size > 0) {
          if (checkAll) checkedAt = Date.now();
          const ids = checkAll ? [...waiting.keys()] : [...recheck].filter((id) => waiting.has(id));
          checkAll = false;
          recheck.clear();
          for (const [id, meta, state] of await this._readStates(ids)) {
            const job = waiting.get(id);
            if (meta !== null) ready.push([id, meta]);
            else if (state !== null && state.toString() === 'done') {
              waiting.delete(id); // expired: its result() rejects with JobNotFound
              yield job;
            }
          }
          continue;
        }
        const left = deadline - Date.now();
        if (left <= 0) throw new JobTimeout(`${waiting.size} jobs not finished within ${timeoutS} s`);
        if (this._closed) throw this._closedError();
        await new Promise((resolve) => {
          const timer = setTimeout(
            () => {
              checkAll = true; // a slice passed: the result keys are the source of truth
              wake = null;
              resolve();
            },
            Math.max(0, Math.min(left, checkedAt + SLICE_S * 1000 - Date.now())),
          );
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
          if (ready.length > 0 || recheck.size > 0) signal();
        });
      }
    } finally {
      stopCollecting();
      stopListening();
    }
  }

  async _readState(jobId) {
    this._checkOpen();
    const [data, state] = await io("reading a job's state", () => this._r.mgetBuffer(keys.result(jobId), keys.state(jobId)));
    return [readMeta(jobId, data), state];
  }

  /** [[id, meta or null, state or null]] for many jobs, one MGET per 5,000 jobs. */
  async _readStates(ids) {
    this._checkOpen();
    const out = [];
    for (let i = 0; i < ids.length; i += MGET_CHUNK / 2) {
      const part = ids.slice(i, i + MGET_CHUNK / 2);
      const values = await io('reading job states', () => this._r.mgetBuffer(...part.flatMap((id) => [keys.result(id), keys.state(id)])));
      part.forEach((id, k) => {
        out.push([id, readMeta(id, values[2 * k]), values[2 * k + 1]]);
      });
    }
    return out;
  }

  /** The job's result meta, null if it has none yet; JobNotFound if it has expired. */
  async _checkKey(jobId) {
    const [meta, state] = await this._readState(jobId);
    if (meta === null && state !== null && state.toString() === 'done') {
      throw new JobNotFound(`job ${jobId}: its result has expired`);
    }
    return meta;
  }

  async _waitMeta(jobId, timeoutS, viaReply) {
    this._checkOpen();
    const deadline = deadlineOf(timeoutS);
    if (!viaReply) return this._waitPubsub(jobId, deadline, timeoutS);
    for (;;) {
      const meta = await this._replies.wait(jobId, Math.min(deadline, Date.now() + SLICE_S * 1000));
      if (meta !== null && READY_STATES.includes(meta.status)) return meta;
      if (this._closed) throw this._closedError();
      const stored = await this._checkKey(jobId); // the key is the source of truth
      if (stored !== null) return stored;
      if (Date.now() >= deadline) throw new JobTimeout(`job ${jobId} not finished within ${timeoutS} s`);
    }
  }

  async _waitPubsub(jobId, deadline, timeoutS) {
    const inbox = [];
    let wake = null;
    const stop = await io('subscribing to a result', () =>
      this._subs.listen([keys.resultChannel(jobId)], (_channel, message) => {
        inbox.push(message);
        wake?.();
      }),
    );
    const fromInbox = () => {
      while (inbox.length > 0) {
        const got = parseMeta(inbox.shift());
        if (READY_STATES.includes(got.status)) return got;
      }
      return null;
    };
    try {
      for (;;) {
        // Subscribed first, then GET: a result published before the subscription is in the key.
        const meta = await this._checkKey(jobId);
        if (meta !== null && READY_STATES.includes(meta.status)) return meta;
        const early = fromInbox();
        if (early) return early;
        const left = deadline - Date.now();
        if (left <= 0) throw new JobTimeout(`job ${jobId} not finished within ${timeoutS} s`);
        if (this._closed) throw this._closedError();
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
        const got = fromInbox();
        if (got) return got;
      }
    } finally {
      stop();
    }
  }

  async _decode(meta) {
    this._checkOpen();
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
    this._checkOpen();
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
    this._checkOpen();
    keys.checkModelName(name);
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
