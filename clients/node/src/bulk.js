// Bulk jobs: many samples, few round trips, collected later by id from any process (the same
// record as client/bulk.py). `client.submitBulk(model, {x: tensorOfNSamples})` cuts every input
// along its first axis into jobs of `samplesPerJob` samples, queues them in pipelined
// icow_submit calls at batch priority, and records the bulk under icow:bulk:<id> so any process
// can re-attach with `client.bulk(id)`.

import { InvalidInput, JobNotFound } from './errors.js';
import { decode, encode } from './msgpack.js';

export const PRIORITY_BATCH = 6; // kombu step 6: served after interactive (0) jobs, never starved

function normalise(name, value) {
  const spec = ArrayBuffer.isView(value) || Array.isArray(value) ? { data: value } : value;
  if (spec === null || typeof spec !== 'object' || spec.data === undefined || typeof spec.data.length !== 'number') {
    throw new InvalidInput(`bulk input '${name}' must be a TypedArray, an array, or {data, shape, datatype}`);
  }
  const shape = spec.shape === undefined ? [spec.data.length] : [...spec.shape];
  if (shape.length < 1 || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new InvalidInput(`bulk input '${name}' needs a shape with a leading sample axis`);
  }
  const per = shape.slice(1).reduce((a, b) => a * b, 1);
  if (per * shape[0] !== spec.data.length) {
    throw new InvalidInput(`bulk input '${name}': shape [${shape}] holds ${per * shape[0]} elements, the data has ${spec.data.length}`);
  }
  return { ...spec, shape, per };
}

/** Cut every input along axis 0 into chunks of `samplesPerJob` samples: [{name: tensor}]. */
export function split(inputs, samplesPerJob) {
  if (inputs === null || typeof inputs !== 'object' || Object.keys(inputs).length === 0) {
    throw new InvalidInput('inputs must be a non-empty object of input name -> tensor');
  }
  if (!Number.isSafeInteger(samplesPerJob) || samplesPerJob < 1) {
    throw new InvalidInput('samplesPerJob must be a positive integer');
  }
  const specs = Object.entries(inputs).map(([name, value]) => [name, normalise(name, value)]);
  const sizes = [...new Set(specs.map(([, s]) => s.shape[0]))];
  if (sizes.length !== 1) {
    throw new InvalidInput(`bulk inputs disagree on the number of samples: ${sizes.sort((a, b) => a - b).join(', ')}`);
  }
  const n = sizes[0];
  const chunks = [];
  for (let i = 0; i < n; i += samplesPerJob) {
    const k = Math.min(samplesPerJob, n - i);
    const chunk = {};
    for (const [name, s] of specs) {
      const cut = ArrayBuffer.isView(s.data) ? s.data.subarray(i * s.per, (i + k) * s.per) : s.data.slice(i * s.per, (i + k) * s.per);
      chunk[name] = { ...(s.datatype === undefined ? {} : { datatype: s.datatype }), shape: [k, ...s.shape.slice(1)], data: cut };
    }
    chunks.push(chunk);
  }
  return { chunks, samples: n };
}

/** The bulk record (msgpack) stored under icow:bulk:<id>. */
export function record(bulkId, model, jobIds, samples) {
  return encode({ id: bulkId, model, jobs: jobIds, samples });
}

/** {model, jobIds, samples} of a stored bulk record; JobNotFound if it is gone. */
export function parseRecord(bulkId, raw) {
  if (raw === null || raw === undefined) throw new JobNotFound(`bulk ${bulkId} is unknown or has expired`);
  const rec = decode(raw);
  return { model: String(rec.model), jobIds: rec.jobs.map(String), samples: Number(rec.samples) };
}

/** Outputs of the chunks (in sample order) joined along axis 0. */
export function concat(parts) {
  const out = {};
  for (const name of Object.keys(parts[0] ?? {})) {
    const pieces = parts.map((p) => p[name]);
    const { datatype } = pieces[0];
    const rest = pieces[0].shape.slice(1);
    const rows = pieces.reduce((a, t) => a + t.shape[0], 0);
    let data;
    if (Array.isArray(pieces[0].data)) {
      data = pieces.flatMap((t) => t.data);
    } else {
      data = new pieces[0].data.constructor(pieces.reduce((a, t) => a + t.data.length, 0));
      let at = 0;
      for (const t of pieces) {
        data.set(t.data, at);
        at += t.data.length;
      }
    }
    out[name] = { datatype, shape: [rows, ...rest], data };
  }
  return out;
}

/** A handle on a bulk submission: its jobs in sample order. */
export class Bulk {
  constructor(client, id, model, jobs, samples) {
    this.client = client;
    this.id = id;
    this.model = model;
    this.jobs = jobs;
    this.samples = samples;
  }

  /** [jobs finished, jobs in all], in one round trip per 10,000 jobs. */
  async progress() {
    return [await this.client._countFinished(this.jobs.map((j) => j.id)), this.jobs.length];
  }

  /** The bulk's jobs as they finish (an async iterator). */
  asCompleted({ timeoutS = null } = {}) {
    return this.client.asCompleted(this.jobs, { timeoutS });
  }

  /** Every output, joined in sample order; rejects with the first job failure. */
  async result({ timeoutS = null } = {}) {
    const outputs = new Map();
    for await (const job of this.asCompleted({ timeoutS })) outputs.set(job.id, await job.result());
    return concat(this.jobs.map((j) => outputs.get(j.id)));
  }
}
