// The wire format of protocol version 1 (docs/PROTOCOL.md): Redis keys, the job envelope, the
// Celery message that carries it, and result meta maps.

import { randomUUID } from 'node:crypto';

import { InvalidInput } from './errors.js';
import { Float64, decode, encode } from './msgpack.js';

export const PROTOCOL_VERSION = 1;
export const TASK_NAME = 'icow.infer';
export const CONTENT_TYPE = 'application/x-msgpack';
export const DEFAULT_INLINE_MAX_BYTES = 256 * 1024;
export const DEFAULT_RESULT_TTL_S = 24 * 3600;
export const MAX_RESULT_TTL_S = 30 * 24 * 3600;
export const READY_STATES = Object.freeze(['SUCCESS', 'FAILURE', 'REVOKED']);

const MODEL_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
const JOB_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;
const PRIORITY_STEPS = [0, 3, 6, 9];
const PRIORITY_SEP = '\x06\x16';
const EMBED = { callbacks: null, errbacks: null, chain: null, chord: null };

/**
 * The submit script (docs/PROTOCOL.md, "Submitting"): checks the model's backlog limit and
 * queues jobs in one atomic step. KEYS: icow:limits, the model's 4 priority lists, then per job
 * its list, its state key and its claim-check blob keys (SET before, in the same round trip).
 * ARGV: model, number of jobs, then per job: message, ttl, number of blob keys.
 * Returns [queued, depth, limit]: jobs 1..queued were queued; limit -1 means none.
 */
export const SUBMIT_SCRIPT = `
local limit = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '')
local depth = 0
if limit then
  for i = 2, 5 do depth = depth + redis.call('LLEN', KEYS[i]) end
end
local k, a, queued = 6, 3, 0
for j = 1, tonumber(ARGV[2]) do
  local nblobs = tonumber(ARGV[a + 2])
  if limit and depth >= limit then
    for b = 1, nblobs do redis.call('DEL', KEYS[k + 1 + b]) end
  else
    redis.call('SET', KEYS[k + 1], 'queued', 'EX', ARGV[a + 1])
    redis.call('LPUSH', KEYS[k], ARGV[a])
    depth = depth + 1
    queued = queued + 1
  end
  k = k + 2 + nblobs
  a = a + 3
end
return {queued, depth, limit or -1}
`;

/** Every Redis key a client uses (icow/keys.py). */
export const keys = Object.freeze({
  MODELS: 'icow:models',
  LIMITS: 'icow:limits',
  queueLists: (model) => PRIORITY_STEPS.map((p) => keys.queueList(model, p)),
  queue: (model) => `icow:q:${model}`,
  queueList: (model, priority = 0) => {
    const step = Math.max(...PRIORITY_STEPS.filter((s) => s <= priority));
    return step === 0 ? `icow:q:${model}` : `icow:q:${model}${PRIORITY_SEP}${step}`;
  },
  result: (jobId) => `celery-task-meta-${jobId}`,
  resultChannel: (jobId) => `celery-task-meta-${jobId}`,
  state: (jobId) => `icow:state:${jobId}`,
  blob: (jobId, direction, index) => `icow:blob:${jobId}:${direction}:${index}`,
  reply: (clientId) => `icow:reply:${clientId}`,
  model: (name) => `icow:model:${name}`,
});

export function checkModelName(name) {
  if (typeof name !== 'string' || !MODEL_NAME_RE.test(name) || name.includes('..')) {
    throw new InvalidInput(
      `invalid model name ${JSON.stringify(name)}: use 1-128 characters of A-Z a-z 0-9 _ . - starting with a letter or digit`,
    );
  }
  return name;
}

export function checkJobId(jobId) {
  if (typeof jobId !== 'string' || !JOB_ID_RE.test(jobId)) throw new InvalidInput(`invalid job id ${JSON.stringify(jobId)}`);
  return jobId;
}

export function newJobId() {
  return randomUUID();
}

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
 * the job envelope, to a Celery worker. LPUSH it on keys.queueList(model, priority).
 */
export function celeryMessage(jobBytes, { jobId, model, priority = 0, deliveryTag = randomUUID(), lang = 'js' }) {
  // body = msgpack([[job], {}, embed]), with the job's own bytes spliced in as they are
  const body = Buffer.concat([Buffer.from([0x93, 0x91]), jobBytes, encode({}), encode(EMBED)]);
  const envelope = {
    body: body.toString('base64'),
    'content-encoding': 'binary',
    'content-type': CONTENT_TYPE,
    headers: {
      lang,
      task: TASK_NAME,
      id: jobId,
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
      delivery_info: { exchange: '', routing_key: keys.queue(model) },
      priority,
      body_encoding: 'base64',
      delivery_tag: deliveryTag,
    },
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
