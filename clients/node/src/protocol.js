// The wire format of protocol version 1 (docs/PROTOCOL.md): job ids and cancel tokens, the job
// envelope, the Celery message that carries it, the KEYS/ARGV of ICOW's Redis Functions that a
// client calls (icow/lua/icow.lua), and the maps the fleet answers with. No I/O here.

import { createHash, randomBytes, randomUUID } from 'node:crypto';

import { BrokerUnavailable, InvalidInput } from './errors.js';
import * as keys from './keys.js';
import { DEFAULT_RESULT_TTL_S } from './keys.js';
import { Float64, decode, encode } from './msgpack.js';

export { keys };
export { DEFAULT_RESULT_TTL_S, MAX_RESULT_TTL_S, checkJobId, checkModelName } from './keys.js';

export const PROTOCOL_VERSION = 1;
export const TASK_NAME = 'icow.infer';
export const CONTENT_TYPE = 'application/x-msgpack';
// Tensors strictly larger than this travel under their own icow:in:<nonce> key (claim check).
export const DEFAULT_INLINE_MAX_BYTES = 256 * 1024;
// Redis refuses bulk strings over 512 MB (proto-max-bulk-len); stay clearly below.
export const MAX_JOB_BYTES = 480 * 1024 * 1024;
export const READY_STATES = Object.freeze(['SUCCESS', 'FAILURE', 'REVOKED']);

/** The client-callable Redis Functions of ICOW's library (workers install it at start). */
export const SUBMIT = 'icow_submit';
export const CANCEL_REQUEST = 'icow_cancel_request';

const EMBED = { callbacks: null, errbacks: null, chain: null, chord: null };

// -- ids

/** 128 random bits as 32 lowercase hex: client ids, cancel tokens, input key nonces. */
export function randomHex() {
  return randomBytes(16).toString('hex');
}

/**
 * The job id a cancel token commits to: the UUID string of the first 16 bytes of
 * SHA-256(token as ASCII). Whoever holds the token may cancel the job; the id alone is not enough.
 */
export function jobIdForToken(token) {
  if (!keys.isHex32(token)) throw new InvalidInput('a cancel token is 32 lowercase hex characters');
  const h = createHash('sha256').update(token, 'ascii').digest('hex').slice(0, 32);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** {id, token} for a new job. */
export function newJob() {
  const token = randomHex();
  return { id: jobIdForToken(token), token };
}

/** A claim-check key for one input tensor: icow:in:<128 random bits>, unguessable by others. */
export function newInputKey() {
  return keys.inputBlob(randomHex());
}

/** A random id for a bulk record. */
export function newBulkId() {
  return randomUUID();
}

// -- jobs

/** The job envelope (a msgpack map); field order is part of the golden bytes. */
export function jobEnvelope({
  jobId,
  model,
  version = null,
  inputs,
  outputs = null,
  resultTtlS = DEFAULT_RESULT_TTL_S,
  replyTo = null,
  deadline = null,
  created = Date.now() / 1000,
}) {
  return {
    v: PROTOCOL_VERSION,
    id: jobId,
    model,
    version,
    created: new Float64(created),
    inputs,
    outputs: outputs === null ? null : [...outputs],
    ttl: resultTtlS,
    reply_to: replyTo,
    deadline: deadline === null ? null : new Float64(deadline),
  };
}

/**
 * The kombu Redis-transport envelope (one line of JSON) that carries `jobBytes`, the msgpack of
 * the job envelope, to a Celery worker. `queue` is keys.queue(model, version); icow_submit
 * pushes it on keys.queueList(queue, priority).
 */
export function celeryMessage(
  jobBytes,
  { jobId, model, queue = keys.queue(model), priority = 0, deliveryTag = randomUUID(), lang = 'js', digest = null },
) {
  // body = msgpack([[job], {}, embed]), with the job's own bytes spliced in as they are
  const body = Buffer.concat([Buffer.from([0x93, 0x91]), jobBytes, encode({}), encode(EMBED)]);
  // Headers first, the id first among them: a worker's take reads the id from the first bytes
  // and claims the job in the same atomic step, without reading the body.
  // A caller-chosen id carries its job digest right after the id (docs/PROTOCOL.md 8.4).
  const first = digest === null ? { id: jobId } : { id: jobId, icow_digest: digest };
  const envelope = {
    headers: {
      ...first,
      task: TASK_NAME,
      lang,
      root_id: jobId,
      parent_id: null,
      group: null,
      retries: 0,
      eta: null,
      expires: null,
      timelimit: [null, null],
      argsrepr: `<icow job ${model}>`,
      kwargsrepr: '{}',
      ignore_result: false,
    },
    properties: {
      correlation_id: jobId,
      reply_to: '',
      delivery_mode: 2,
      delivery_info: { exchange: '', routing_key: queue },
      priority,
      body_encoding: 'base64',
      delivery_tag: deliveryTag,
    },
    'content-type': CONTENT_TYPE,
    'content-encoding': 'binary',
    body: body.toString('base64'),
  };
  return JSON.stringify(envelope);
}

/** A result meta map from the bytes of celery-task-meta-<id> (or a reply / pub/sub message). */
export function parseMeta(bytes) {
  const meta = decode(bytes);
  const known = [...READY_STATES, 'PENDING', 'STARTED', 'RETRY'];
  if (meta === null || typeof meta !== 'object' || !known.includes(meta.status)) {
    throw new InvalidInput('not a result meta map');
  }
  return meta;
}

/** [error type, message] of a FAILURE or REVOKED meta. */
export function failureOf(meta) {
  if (meta.status === 'REVOKED') return ['JobCancelled', 'the job was revoked'];
  const res = meta.result;
  if (res !== null && typeof res === 'object' && !(res instanceof Uint8Array)) {
    let msg = res.exc_message;
    if (Array.isArray(msg)) msg = msg.map(String).join(' ');
    return [String(res.exc_type ?? 'RemoteError'), String(msg ?? '')];
  }
  return ['RemoteError', String(res)];
}

// -- the Redis Functions a client calls

/**
 * KEYS and ARGV of one `FCALL icow_submit` queuing `jobs` (all for one queue: same model and
 * version). Each job is {queueList, message, inputKeys}: its priority list, its Celery message,
 * and its claim-checked input keys (SET by the caller earlier in the same pipeline).
 */
export function submitCall({ model, version = null, requireLive = true, jobs }) {
  const q = keys.queue(model, version);
  const callKeys = [keys.LIMITS, keys.live(model), keys.wake(q), ...keys.queueLists(q)];
  const args = [model, version === null ? '' : String(version), requireLive ? '1' : '0', String(jobs.length)];
  for (const job of jobs) {
    callKeys.push(job.queueList, ...job.inputKeys);
    args.push(job.message, String(job.inputKeys.length));
  }
  // Job digests (8.4): when any job has one, per job its digest key, digest ('' for none) and TTL.
  if (jobs.some((job) => job.digest)) {
    for (const job of jobs) {
      callKeys.push(keys.digest(job.id));
      args.push(job.digest ?? '', String(job.ttl + keys.DONE_EXTRA_TTL_S));
    }
  }
  return { keys: callKeys, args };
}

/** icow_submit's per-job code for a job refused because its id holds another job's digest. */
export const DIGEST_CONFLICT = 2;

/**
 * {queued, depth, limit (-1: none), served, codes} from icow_submit's reply; `codes`: one per
 * job when digests were sent (0 new, 1 a resubmission, 2 refused: JobIdConflict), else [].
 */
export function submitReply(reply) {
  const [queued, depth, limit, served, ...codes] = reply.map(Number);
  return { queued, depth, limit, served: served === 1, codes };
}

/**
 * The job digest (docs/PROTOCOL.md 8.4): lowercase hex SHA-256 of msgpack(["icow-digest", 1,
 * model, version, outputs, [[name, datatype, shape], ...]]) then each input's data bytes, the
 * inputs sorted by the UTF-8 bytes of their names. `tensors`: wire tensors with their `data`.
 */
export function jobDigest(model, version, outputs, tensors) {
  const ordered = [...tensors].sort((a, b) => Buffer.compare(Buffer.from(a.name, 'utf8'), Buffer.from(b.name, 'utf8')));
  const head = ['icow-digest', 1, model, version, outputs === null ? null : [...outputs], ordered.map((t) => [t.name, t.datatype, [...t.shape]])];
  const h = createHash('sha256').update(encode(head));
  for (const t of ordered) h.update(t.data);
  return h.digest('hex');
}

/** KEYS and ARGV of `FCALL icow_cancel_request`: the fleet answers on `replyList`. */
export function cancelRequestCall(token, replyList, ttlS = null) {
  jobIdForToken(token); // InvalidInput for a malformed token, before anything is sent
  const args = [token, replyList];
  if (ttlS !== null) {
    if (!Number.isSafeInteger(ttlS) || ttlS < 1 || ttlS > keys.MAX_RESULT_TTL_S) {
      throw new InvalidInput(`resultTtlS must be an integer in 1..${keys.MAX_RESULT_TTL_S}`);
    }
    args.push(String(ttlS)); // the job's result TTL: its JobCancelled result keeps it (else one day)
  }
  return { keys: [keys.CANCELS], args };
}

/** The task_id of the fleet's answer to a cancel request for `jobId`. */
export const cancelAnswerId = (jobId) => `cancel:${jobId}`;

/**
 * Who waits for a reply-list entry: a result goes to its task_id; a cancel answer (status
 * CANCEL, task_id cancel:<job id>) to `cancel <job id>`, a space no job id holds. Routed by the
 * status, never the task_id alone: a custom job id may itself read `cancel:abc` (PROTOCOL.md §12).
 */
export function replyRoute(msg) {
  if (msg.status !== 'CANCEL') return msg.task_id;
  return msg.task_id.startsWith('cancel:') ? cancelWaitKey(msg.task_id.slice('cancel:'.length)) : null;
}

/** The waiter key of the answer to a cancel request for `jobId` (see replyRoute). */
export const cancelWaitKey = (jobId) => `cancel ${jobId}`;

/** 'cancelled' | 'finished' | 'running' from the result field of a CANCEL answer (1 / 0 / -1). */
export function cancelOutcome(answer) {
  const code = Number(answer.result);
  if (code === 1) return 'cancelled';
  if (code === 0) return 'finished';
  if (code === -1) return 'running';
  throw new InvalidInput(`unexpected cancel answer ${JSON.stringify(answer.result)}`);
}

/** True for the error Redis gives when FCALL names a function that is not loaded. */
export function isFunctionMissing(err) {
  return /function not found/i.test(String(err?.message ?? ''));
}

/** The error for a missing library: the fleet has not installed ICOW's functions yet. */
export function functionsMissing(err) {
  return new BrokerUnavailable(
    "ICOW's Redis functions are not installed on this Redis: no ICOW worker has started against it " +
      '(workers install them at start and every heartbeat, or run `icow admin install`)',
    { cause: err },
  );
}

/**
 * A map read from a reply list: a result meta (task_id = job id) or the fleet's answer to a
 * cancel request (status CANCEL, task_id = cancel:<job id>). Null for anything else.
 */
export function parseReply(bytes) {
  let msg;
  try {
    msg = decode(bytes);
  } catch {
    return null;
  }
  if (msg === null || typeof msg !== 'object' || typeof msg.task_id !== 'string') return null;
  if (msg.status === 'CANCEL' || [...READY_STATES, 'PENDING', 'STARTED', 'RETRY'].includes(msg.status)) return msg;
  return null;
}
