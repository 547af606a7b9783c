// The golden wire vectors of tests/golden (docs/PROTOCOL.md): the Node.js encoder produces the
// same bytes as the Python one, and the Node.js decoder reads what the Python worker writes.

import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import {
  InvalidInput,
  REMOTE_ERRORS,
  celeryMessage,
  decodeResult,
  encodeTensor,
  halfToNumbers,
  jobEnvelope,
  jobIdForToken,
  cancelRequestCall,
  keys,
  msgpackDecode,
  msgpackEncode,
  outputRefs,
  parseMeta,
  parseReply,
  submitCall,
  submitReply,
} from '../src/index.js';
import { parseRecord, record as bulkRecord } from '../src/bulk.js';
import { cancelWaitKey, replyRoute } from '../src/protocol.js';

const GOLDEN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'tests', 'golden');

function load(kind) {
  return readdirSync(GOLDEN)
    .filter((f) => f.endsWith('.json') && !f.endsWith('.message.json'))
    .sort()
    .map((f) => [f.replace(/\.json$/, ''), JSON.parse(readFileSync(join(GOLDEN, f), 'utf8'))])
    .filter(([, m]) => m.kind === kind);
}

const file = (name) => readFileSync(join(GOLDEN, name));

/** A tensor as a Node.js user writes it, from the vector's JSON meaning. */
function userTensor(t) {
  const { datatype, shape, values } = t;
  switch (datatype) {
    case 'BYTES':
    case 'BOOL':
      return { datatype, shape, data: values };
    case 'FP16': // raw half bits: Node has no float16 array
      return { datatype, shape, data: new Uint16Array(new Uint8Array(Buffer.from(t.data_hex, 'hex')).buffer) };
    case 'INT64':
      return { shape, data: BigInt64Array.from(values, BigInt) };
    case 'UINT64':
      return { shape, data: BigUint64Array.from(values, BigInt) };
    default:
      return { datatype, shape, data: values };
  }
}

/** The decoded tensor's values in the JSON meaning's terms. */
function plain(tensor) {
  const { datatype, data } = tensor;
  if (datatype === 'BYTES') return data.map((b) => b.toString('utf8'));
  if (datatype === 'BOOL') return Array.from(data, (v) => v === 1);
  if (datatype === 'FP16') return halfToNumbers(data);
  if (datatype === 'INT64' || datatype === 'UINT64') return Array.from(data, Number);
  return Array.from(data);
}

const JOBS = load('job');
const RESULTS = load('result');

test('there are golden vectors to check', () => {
  assert.ok(JOBS.length >= 5 && RESULTS.length >= 6);
});

for (const [name, meaning] of JOBS) {
  test(`job ${name}: the Node encoder reproduces the job and message bytes`, () => {
    const job = meaning.job;
    const blobs = {};
    const wire = job.inputs.map((t) => {
      const w = encodeTensor(t.name, userTensor(t));
      if (w.data.length > meaning.inline_max_bytes) {
        // claim-checked: the key is random (icow:in:<nonce>); the vector names the one it used
        blobs[t.ref] = w.data;
        delete w.data;
        w.ref = t.ref;
      } else {
        assert.equal(w.data.toString('hex'), t.data_hex, `input ${t.name}`);
      }
      return w;
    });
    if (meaning.token !== undefined) assert.equal(jobIdForToken(meaning.token), job.id);
    const envelope = jobEnvelope({
      jobId: job.id,
      model: job.model,
      version: job.version,
      inputs: wire,
      outputs: job.outputs,
      resultTtlS: job.ttl,
      replyTo: job.reply_to,
      deadline: job.deadline,
      created: job.created,
    });
    const bytes = msgpackEncode(envelope);
    assert.equal(bytes.toString('hex'), file(meaning.files.job).toString('hex'));
    const queue = meaning.queue_list.split('\x06\x16')[0];
    const message = celeryMessage(bytes, {
      jobId: job.id,
      model: job.model,
      queue,
      priority: meaning.priority,
      deliveryTag: meaning.delivery_tag,
      lang: 'py',
    });
    assert.equal(message, file(meaning.files.message).toString('utf8'));
    assert.equal(keys.queueList(queue, meaning.priority), meaning.queue_list);
    for (const [ref, f] of Object.entries(meaning.blobs)) assert.deepEqual(blobs[ref], file(f));
  });

  test(`job ${name}: the Node decoder reads the job bytes`, () => {
    const decoded = msgpackDecode(file(meaning.files.job));
    for (const field of ['v', 'id', 'model', 'version', 'created', 'outputs', 'ttl', 'reply_to', 'deadline']) {
      assert.deepEqual(decoded[field], meaning.job[field], field);
    }
    assert.equal(decoded.inputs.length, meaning.job.inputs.length);
  });
}

for (const [name, meaning] of RESULTS) {
  test(`result ${name}: the Node decoder reads the result bytes`, () => {
    const meta = parseMeta(file(meaning.files.result));
    assert.equal(keys.result(meta.task_id), meaning.key);
    if (meta.status === 'SUCCESS') {
      const blobs = new Map(Object.entries(meaning.blobs).map(([ref, f]) => [ref, file(f)]));
      assert.deepEqual(outputRefs(meta), [...blobs.keys()]);
      const out = decodeResult(meta, blobs);
      for (const want of meaning.meta.result.outputs) {
        assert.deepEqual(out[want.name].shape, want.shape);
        assert.equal(out[want.name].datatype, want.datatype);
        assert.deepEqual(plain(out[want.name]), want.values, want.name);
      }
      assert.deepEqual(meta.result.timing, meaning.meta.result.timing);
    } else {
      assert.throws(
        () => decodeResult(meta),
        (err) => {
          assert.ok(err instanceof REMOTE_ERRORS[meaning.error.type]);
          assert.equal(err.remoteType, meaning.error.type);
          assert.equal(err.message, meaning.error.message);
          assert.equal(err.jobId, meta.task_id);
          return true;
        },
      );
    }
  });

  test(`result ${name}: the Node encoder reproduces the result bytes`, () => {
    // A Node.js program can write results too (e.g. a test double); floats in timing are float64.
    const decoded = msgpackDecode(file(meaning.files.result));
    assert.deepEqual(msgpackEncode(decoded), file(meaning.files.result));
  });
}

for (const [name, meaning] of load('model')) {
  test(`model metadata ${name} decodes to the published signature (unsupported_outputs apart)`, () => {
    const meta = msgpackDecode(file(meaning.files.model));
    assert.deepEqual(meta, meaning.meta);
    assert.ok(Array.isArray(meta.unsupported_outputs));
  });
}

test('the encoder refuses tensors whose shape does not match the data, and unknown datatypes', () => {
  assert.throws(() => encodeTensor('x', { shape: [2, 2], data: new Float32Array(3) }), InvalidInput);
  assert.throws(() => encodeTensor('x', { datatype: 'FP8', data: [1] }), InvalidInput);
  assert.throws(() => encodeTensor('x', { datatype: 'FP32', data: new Int32Array(2) }), InvalidInput);
  assert.throws(() => encodeTensor('x', [1, 2]), InvalidInput); // numbers need a datatype
});

for (const name of ['submit_claim_check', 'submit_pinned']) {
  test(`${name}: the Node submit call reproduces KEYS and ARGV (every ARGV a string)`, () => {
    const vector = JSON.parse(file(`${name}.json`));
    const job = JSON.parse(file(`${vector.job}.json`));
    const call = submitCall({
      model: vector.model,
      version: vector.version,
      requireLive: vector.require_published,
      jobs: [{ queueList: job.queue_list, message: file(job.files.message).toString('utf8'), inputKeys: Object.keys(job.blobs) }],
    });
    assert.deepEqual(call.keys, vector.keys);
    const want = vector.args.map((a) => (typeof a === 'object' ? file(a.file).toString('utf8') : a));
    assert.deepEqual(call.args, want);
    const { queued, depth, limit, served } = vector.reply;
    const reply = submitReply([queued, depth, limit, served]);
    assert.deepEqual([reply.queued, reply.depth, reply.limit, reply.served], [queued, depth, limit, true]);
  });
}

test('cancel_request: the Node call reproduces KEYS and ARGV, with and without the TTL; malformed tokens never leave', () => {
  const request = JSON.parse(file('cancel_request.json'));
  assert.equal(jobIdForToken(request.token), request.job_id);
  assert.deepEqual(cancelRequestCall(request.token, request.args[1]), { keys: request.keys, args: request.args });
  assert.deepEqual(cancelRequestCall(request.token, request.args[1], request.with_ttl.ttl), {
    keys: request.keys,
    args: request.with_ttl.args,
  });
  for (const c of request.refused.slice(0, 2)) assert.throws(() => cancelRequestCall(c.args[0], c.args[1]), InvalidInput);
});

test('reply entries are routed by status: a custom id cancel:<id> never meets the cancel answer of <id>', () => {
  const request = JSON.parse(file('cancel_request.json'));
  const outcome = JSON.parse(file('reply_cancel_outcome.json'));
  const answer = parseReply(file(outcome.files.entry));
  assert.equal(answer.task_id, `cancel:${request.job_id}`);
  assert.equal(replyRoute(answer), cancelWaitKey(request.job_id));
  const [[, result]] = load('result').filter(([n]) => n === 'result_mlp');
  const custom = parseReply(msgpackEncode({ ...result.meta, task_id: `cancel:${request.job_id}` }));
  assert.equal(replyRoute(custom), `cancel:${request.job_id}`);
  assert.notEqual(replyRoute(custom), replyRoute(answer));
});

test('bulk_record: the Node client writes and reads the same icow:bulk:<id> record', () => {
  const [[, meaning]] = load('bulk_record');
  const { id, model, jobs, samples } = meaning.record;
  const raw = file(meaning.files.record);
  assert.deepEqual(Buffer.from(bulkRecord(id, model, jobs, samples)), raw);
  assert.deepEqual(parseRecord(id, raw), { model, jobIds: jobs, samples });
  assert.equal(keys.bulk(id), meaning.key);
});
