// Issue 16, findings 5-8 in the Node.js client: job.info(), custom job ids reused with other
// inputs (JobIdConflict; the digest is the same as Python's: golden vectors and a live
// cross-language check), asStrings for BYTES outputs, and ClientClosed after close().

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import {
  BYTES,
  Client,
  ClientClosed,
  InvalidInput,
  InvalidJob,
  JobIdConflict,
  NoResultYet,
  asStrings,
  celeryMessage,
  jobDigest,
  keys,
  msgpackEncode,
  remoteError,
  submitCall,
} from '../src/index.js';
import { ROOT, Server, python } from './server.js';
import { FakeWorker } from './worker.js';

const GOLDEN = join(ROOT, 'tests', 'golden');
const golden = (name) => JSON.parse(readFileSync(join(GOLDEN, name), 'utf8'));
const hex = (t) => ({ ...t, data: Buffer.from(t.data_hex, 'hex') });

let server;
let worker;
let client;
const MODEL = 'idmodel';
const Q = keys.queue(MODEL);
const x = (...v) => ({ x: { shape: [1, v.length], data: Float32Array.from(v) } });

before(async () => {
  server = await new Server().start();
  worker = new FakeWorker(server.url, 'ids-worker');
  await worker.install();
  await worker.live(MODEL, [1]);
  client = new Client(server.url);
});

after(async () => {
  await client?.close();
  worker?.close();
  await server?.stop();
});

test('the digest vectors: jobDigest reproduces Python, in any input order', () => {
  for (const c of golden('digests.json').cases) {
    const tensors = c.inputs.map(hex);
    assert.equal(jobDigest(c.model, c.version, c.outputs, tensors), c.digest, c.doc);
    assert.equal(jobDigest(c.model, c.version, c.outputs, [...tensors].reverse()), c.digest, c.doc);
  }
});

test('the custom-id job vector: the message with its digest header and the icow_submit call', () => {
  const v = golden('job_custom_id.json');
  const jobBytes = readFileSync(join(GOLDEN, v.files.job));
  const message = readFileSync(join(GOLDEN, v.files.message), 'utf8');
  const made = celeryMessage(jobBytes, { jobId: v.job.id, model: v.job.model, queue: v.queue, deliveryTag: v.delivery_tag, lang: 'py', digest: v.digest });
  assert.equal(made, message);
  const call = submitCall({
    model: v.job.model,
    jobs: [{ id: v.job.id, queueList: keys.queueList(v.queue, 0), message, inputKeys: [], digest: v.digest, ttl: v.job.ttl }],
  });
  assert.deepEqual(call.keys, v.submit.keys);
  assert.deepEqual(call.args, v.submit.args.map((a) => (typeof a === 'object' ? message : a)));
});

test('a custom id reused with other inputs is JobIdConflict; with the same inputs it is idempotent', async () => {
  const id = `node-dup-${Date.now()}`;
  const first = await client.submit(MODEL, x(1, 2), { jobId: id });
  const again = await client.submit(MODEL, x(1, 2), { jobId: id });
  assert.equal(again.id, id);
  await assert.rejects(client.submit(MODEL, x(100, 2), { jobId: id }), (err) => err instanceof JobIdConflict && err instanceof InvalidJob && err.jobId === id);
  assert.equal(await server.conn.llen(Q), 2); // the first and its resubmission, not the other job
  const taken = await worker.waitTake(Q, { want: 1 });
  await worker.claim(taken);
  await worker.answer(taken);
  const out = await first.result({ timeoutS: 10 });
  assert.deepEqual(Array.from(out.x.data), [1, 2]);
  assert.deepEqual(Array.from((await again.result({ timeoutS: 10 })).x.data), [1, 2]); // waited by id
  await server.conn.del(Q);
});

test('cross-language: a Python client and the Node client compute the same digest for one custom id', async () => {
  const id = `xlang-${Date.now()}`;
  await client.submit(MODEL, { x: { shape: [2, 2], data: Float32Array.from([1, 2, 3, 4]) }, s: { datatype: BYTES, shape: [2], data: ['hé', ''] } }, { jobId: id });
  const stored = await server.conn.get(keys.digest(id)); // the Node client's digest, kept by icow_submit
  const py = python(
    [
      'import sys, numpy as np',
      'from icow import digest',
      'from icow.client import Client',
      'from icow.errors import JobIdConflict',
      'c = Client(sys.argv[1])',
      `inputs = {"s": np.array(["hé", ""], dtype=object), "x": np.array([[1, 2], [3, 4]], np.float32)}`,
      'x = inputs["x"]',
      'print(digest.job_digest(sys.argv[2], None, None, [("x", "FP32", [2, 2], x.tobytes()), ("s", "BYTES", [2], b"\\x03\\x00\\x00\\x00h\\xc3\\xa9\\x00\\x00\\x00\\x00")]))',
      'c.submit(sys.argv[2], inputs, job_id=sys.argv[3])',
      'try:',
      '    c.submit(sys.argv[2], {**inputs, "x": inputs["x"] * 2}, job_id=sys.argv[3])',
      'except JobIdConflict:',
      '    print("conflict")',
      'c.close()',
    ].join('\n'),
    server.url,
    MODEL,
    id,
  );
  const [pyDigest, outcome] = py.trim().split('\n');
  assert.match(stored, /^[0-9a-f]{64}$/);
  assert.equal(pyDigest, stored);
  assert.equal(outcome, 'conflict'); // the same inputs from Python: accepted; other inputs: refused
  await server.conn.del(Q);
});

test('job.info(): the version, the worker and the timings of the result; NoResultYet before', async () => {
  const job = await client.submit(MODEL, x(3));
  assert.throws(() => job.info(), NoResultYet);
  const taken = await worker.waitTake(Q);
  await worker.claim(taken);
  await worker.answer(taken, async (j) => {
    const meta = await worker.echo(j);
    meta.result.timing = { queued_s: 0.25, compute_s: 0.5, batch: 2, batch_samples: 3 };
    return meta;
  });
  await job.result({ timeoutS: 10 });
  const info = job.info();
  assert.deepEqual(
    { ...info, finished: typeof info.finished },
    { jobId: job.id, status: 'succeeded', model: MODEL, version: 1, worker: 'ids-worker', queuedS: 0.25, computeS: 0.5, batch: 2, batchSamples: 3, finished: 'string' },
  );
  assert.ok(Object.isFrozen(info));
});

test('asStrings turns a BYTES output into strings; non-UTF-8 bytes are refused', () => {
  const out = { datatype: BYTES, shape: [2], data: [Buffer.from('hello'), Buffer.from('wörld')] };
  assert.deepEqual(asStrings(out), ['hello', 'wörld']);
  assert.deepEqual(asStrings(out.data), ['hello', 'wörld']);
  assert.throws(() => asStrings([Buffer.from([0xff])]), (err) => err instanceof InvalidInput && /element 0/.test(err.message));
});

test('a JobIdConflict failure on the wire maps to its class', () => {
  const err = remoteError('JobIdConflict', 'taken', 'j');
  assert.ok(err instanceof JobIdConflict && err.jobId === 'j');
  assert.ok(msgpackEncode); // the wire helpers are exported beside it
});

test('every call after close() rejects with ClientClosed; closing again does nothing', async () => {
  const c = new Client(server.url);
  const job = await c.submit(MODEL, x(1));
  await c.close();
  await c.close();
  for (const call of [
    () => c.submit(MODEL, x(1)),
    () => c.infer(MODEL, x(1), { timeoutS: 1 }),
    () => c.submitMany(MODEL, [x(1)]),
    () => c.models(),
    () => c.model(MODEL),
    () => c.ping(),
    () => job.status(),
    () => job.result({ timeoutS: 1 }),
    () => c.job(job.id).status(),
  ]) {
    await assert.rejects(call(), ClientClosed);
  }
  await server.conn.del(Q);
});
