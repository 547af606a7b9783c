// Every Redis key a Node.js client touches, and the grammar of names and ids: the same schema
// as icow/keys.py (its docstring lists the whole key schema and who writes each key).

import { InvalidInput } from './errors.js';

export const PREFIX = 'icow:';
export const QUEUE_PREFIX = `${PREFIX}q:`;
export const RESULT_PREFIX = 'celery-task-meta-';
export const DEFAULT_RESULT_TTL_S = 24 * 3600;
export const MAX_RESULT_TTL_S = 30 * 24 * 3600;
/** How much longer than a result a job's `done` state (and a custom id's digest) is kept. */
export const DONE_EXTRA_TTL_S = 7 * 24 * 3600;
export const PRIORITY_STEPS = Object.freeze([0, 3, 6, 9]);
const PRIORITY_SEP = '\x06\x16'; // kombu's Redis transport: <queue>\x06\x16<step>

// Whole-string matches, like icow/keys.py's \Z patterns (JavaScript's $ without the m flag
// never matches before a trailing newline).
const MODEL_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
const JOB_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;
const HEX32_RE = /^[0-9a-f]{32}$/;

/** A model name is 1-128 of [A-Za-z0-9_.-], starting alphanumeric, without '..'. */
export function checkModelName(name) {
  if (typeof name !== 'string' || !MODEL_NAME_RE.test(name) || name.includes('..')) {
    throw new InvalidInput(
      `invalid model name ${JSON.stringify(name)}: use 1-128 characters of A-Z a-z 0-9 _ . - starting with a letter or digit`,
    );
  }
  return name;
}

/** A job (or bulk) id is 1-128 of [A-Za-z0-9_.:-], starting alphanumeric. */
export function checkJobId(jobId) {
  if (typeof jobId !== 'string' || !JOB_ID_RE.test(jobId)) {
    throw new InvalidInput(
      `invalid job id ${JSON.stringify(jobId)}: use 1-128 characters of A-Z a-z 0-9 _ . : - starting with a letter or digit`,
    );
  }
  return jobId;
}

/** 32 lowercase hex characters: client ids, cancel tokens and input key nonces. */
export function isHex32(value) {
  return typeof value === 'string' && HEX32_RE.test(value);
}

function priorityStep(priority) {
  return Math.max(...PRIORITY_STEPS.filter((s) => s <= priority));
}

/** The queue of a model's jobs: icow:q:<m> (latest version) or icow:q:<m>@<v> (pinned). */
export function queue(model, version = null) {
  return version === null || version === undefined ? `${QUEUE_PREFIX}${model}` : `${QUEUE_PREFIX}${model}@${version}`;
}

/** The Redis list of `queueName` that a job of `priority` (0-9) is pushed to. */
export function queueList(queueName, priority = 0) {
  const step = priorityStep(priority);
  return step === 0 ? queueName : `${queueName}${PRIORITY_SEP}${step}`;
}

/** All four priority lists of a queue, in the order workers serve them. */
export function queueLists(queueName) {
  return PRIORITY_STEPS.map((s) => queueList(queueName, s));
}

export const LIMITS = `${PREFIX}limits`;
export const MODELS = `${PREFIX}models`;
export const CANCELS = `${PREFIX}cancels`;
export const wake = (queueName) => `${PREFIX}wake:${queueName}`;
export const live = (model) => `${PREFIX}live:${model}`;
/** Why versions of `model` are not served: field `<version>:<worker>` -> the reason. */
export const failed = (model) => `${PREFIX}failed:${model}`;
export const model = (name) => `${PREFIX}model:${name}`;
export const result = (jobId) => `${RESULT_PREFIX}${jobId}`;
export const resultChannel = (jobId) => `${RESULT_PREFIX}${jobId}`;
export const state = (jobId) => `${PREFIX}state:${jobId}`;
export const inputBlob = (nonce) => `${PREFIX}in:${nonce}`;
export const outputBlob = (jobId, index) => `${PREFIX}out:${jobId}:${index}`;
export const reply = (clientId) => `${PREFIX}reply:${clientId}`;
export const bell = (jobId) => `${PREFIX}bell:${jobId}`;
export const bulk = (bulkId) => `${PREFIX}bulk:${bulkId}`;
export const digest = (jobId) => `${PREFIX}digest:${jobId}`;
