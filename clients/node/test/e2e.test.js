// End to end: the Node.js client -> a real Redis -> a real ICOW worker (Python) -> results,
// checked against the Python client and icow.workers.samples on the same inputs.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  Client,
  InvalidInput,
  InvalidJob,
  JobNotFound,
  JobTimeout,
  ModelNotFound,
  NotDurable,
  NotFound,
  QueueFull,
  JobCancelled,
  RemoteError,
  halfToNumbers,
  keys,
} from '../src/index.js';
import { Fleet, python } from './fleet.js';

let fleet;
let client;

before(async () => {
  fleet = new Fleet();
  await fleet.start();
  client = new Client(fleet.url);
});

after(async () => {
  await client?.close();
  await fleet?.stop();
});

const X = Float32Array.from([0.5, -1, 2, 0.25, 3, 0.125, -2, 1.5, 0, 0, 0, 0]);

test('mlp gives bit-for-bit the numbers of the Python client, close to the numpy reference', async () => {
  const out = await client.infer('mlp', { x: { shape: [3, 4], data: X } }, { timeoutS: 30 });
  assert.deepEqual(Object.keys(out), ['y']);
  assert.equal(out.y.datatype, 'FP32');
  assert.deepEqual(out.y.shape, [3, 3]);
  assert.ok(out.y.data instanceof Float32Array);
  const py = JSON.parse(
    python(
      `
import json, sys
import numpy as np
from icow.client import Client
from icow.workers import samples
x = np.array(json.loads(sys.argv[2]), np.float32).reshape(3, 4)
y = Client(sys.argv[1]).infer("mlp", {"x": x}, timeout_s=30)["y"]
print(json.dumps({"hex": y.tobytes().hex(), "reference": samples.mlp_reference(x).reshape(-1).tolist()}))
`,
      fleet.url,
      JSON.stringify(Array.from(X)),
    ),
  );
  assert.equal(Buffer.from(out.y.data.buffer).toString('hex'), py.hex);
  out.y.data.forEach((v, i) => assert.ok(Math.abs(v - py.reference[i]) < 1e-5));
});

test('several inputs and outputs of different datatypes (INT64 as BigInt64Array, FP16 as raw bits)', async () => {
  const out = await client.infer(
    'multi',
    {
      x: { shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, 6]) },
      ids: { shape: [2, 2], data: BigInt64Array.from([1n, -2n, 3n, 4n]) },
      mask: { datatype: 'BOOL', data: [true, false] },
    },
    { timeoutS: 30 },
  );
  assert.deepEqual(Array.from(out.total.data), [6, 15]);
  assert.deepEqual(Array.from(out.doubled.data), [2n, -4n, 6n, 8n]);
  assert.equal(out.flipped.datatype, 'BOOL');
  assert.deepEqual(Array.from(out.flipped.data), [0, 1]);
  assert.equal(out.half.datatype, 'FP16');
  assert.ok(out.half.data instanceof Uint16Array);
  assert.deepEqual(halfToNumbers(out.half.data), [0.5, 1, 1.5, 2, 2.5, 3]);
});

test('BYTES tensors: strings and Buffers in, Buffers out', async () => {
  const words = ['hello', '', 'héllo wörld', '日本語'];
  const out = await client.infer('text', { x: words }, { timeoutS: 30 });
  assert.equal(out.y.datatype, 'BYTES');
  assert.deepEqual(out.y.shape, [4]);
  assert.deepEqual(
    out.y.data.map((b) => b.toString('utf8')),
    words,
  );
  const raw = await client.infer('text', { x: { data: [Buffer.from('abc'), Buffer.from([0xc3, 0xa9])] } }, { timeoutS: 30 });
  assert.deepEqual(raw.y.data, [Buffer.from('abc'), Buffer.from('é')]);
});

test('BYTES that are not UTF-8 fail the job with InvalidJob, and the worker keeps serving', async () => {
  await assert.rejects(client.infer('text', { x: [Buffer.from([0xff, 0xfe])] }, { timeoutS: 30 }), (err) => {
    assert.ok(err instanceof InvalidJob && err instanceof RemoteError);
    assert.match(err.message, /UTF-8/);
    assert.ok(err.jobId);
    return true;
  });
  const ok = await client.infer('text', { x: ['still here'] }, { timeoutS: 30 });
  assert.equal(ok.y.data[0].toString(), 'still here');
});

test('fire and forget, then re-attach by id from another client and from Python', async () => {
  const job = await client.submit('scale', { x: { shape: [1, 2], data: Float32Array.from([7, 8]) } }, { version: 1 });
  assert.match(job.id, /^[0-9a-f-]{36}$/);
  const other = new Client(fleet.url);
  try {
    const again = other.job(job.id);
    assert.deepEqual(Array.from((await again.result({ timeoutS: 30 })).y.data), [14, 16]);
    assert.equal(await again.status(), 'succeeded');
  } finally {
    await other.close();
  }
  const py = python(
    `
import sys
from icow.client import Client
print(Client(sys.argv[1]).job(sys.argv[2]).result(timeout_s=30)["y"].tolist())
`,
    fleet.url,
    job.id,
  );
  assert.equal(py.trim(), '[[14.0, 16.0]]');
  assert.deepEqual(Array.from((await job.result()).y.data), [14, 16]);
});

test('a waiter re-attached before the job is even submitted gets its result (pub/sub, then GET)', async () => {
  const jobId = `node-${process.pid}-${Date.now()}`;
  const other = new Client(fleet.url);
  try {
    const waiting = other.job(jobId).result({ timeoutS: 30 });
    await client.submit('scale', { x: { shape: [2, 2], data: Float32Array.from([1, 2, 3, 4]) } }, { jobId });
    assert.deepEqual(Array.from((await waiting).y.data), [3, 6, 9, 12]);
  } finally {
    await other.close();
  }
});

test('cancel a queued job by its token from another client: the waiter gets JobCancelled', async () => {
  const lax = new Client(fleet.url, { requirePublished: false });
  const other = new Client(fleet.url);
  try {
    const job = await lax.submit('nobody-serves-this', { x: new Float32Array(1) });
    const waiting = job.result({ timeoutS: 30 }).catch((err) => err);
    assert.equal(await other.cancel(job.cancelToken, { timeoutS: 30 }), true); // answered by the real worker
    assert.ok((await waiting) instanceof JobCancelled);
    assert.equal(await job.status(), 'failed');
    assert.equal(await lax.job(job.id, { cancelToken: job.cancelToken }).cancel({ timeoutS: 30 }), false); // already answered
  } finally {
    await other.close();
    await lax.close();
  }
});

test('a cancelled result keeps the job\'s TTL; a malformed cancel request is refused at FCALL as InvalidInput', async () => {
  const lax = new Client(fleet.url, { requirePublished: false });
  try {
    const job = await lax.submit('nobody-serves-this', { x: new Float32Array(1) }, { resultTtlS: 120 });
    assert.equal(await job.cancel({ timeoutS: 30 }), true); // the request carries the TTL: "<token> <list> 120"
    const ttl = await lax._r.ttl(keys.result(job.id));
    assert.ok(ttl > 0 && ttl <= 120, `ttl ${ttl}`);
    await assert.rejects(lax.cancel('A'.repeat(32)), InvalidInput); // checked before sending
    const bad = new Client(fleet.url);
    bad._replies.key = 'icow:reply:not-hex'; // a reply list no worker would answer on
    try {
      await assert.rejects(bad.cancel('0'.repeat(32), { timeoutS: 30 }), (err) => err instanceof InvalidInput && /reply list/.test(err.message));
    } finally {
      await bad.close();
    }
  } finally {
    await lax.close();
  }
});

test('a custom job id cancel:<id> and the cancel answer for job <id> each reach their own waiter', async () => {
  const lax = new Client(fleet.url, { requirePublished: false });
  const other = new Client(fleet.url);
  try {
    const queued = await lax.submit('nobody-serves-this', { x: new Float32Array(1) });
    const twin = await lax.submit('mlp', { x: { shape: [1, 4], data: new Float32Array(4) } }, { jobId: `cancel:${queued.id}` });
    await other.job(twin.id).result({ timeoutS: 30 }); // re-attached elsewhere: its entry still waits on lax's list
    assert.equal(await queued.cancel({ timeoutS: 30 }), true); // not the twin's SUCCESS entry
    assert.deepEqual((await twin.result({ timeoutS: 30 })).y.shape, [1, 3]); // not the CANCEL entry
    await assert.rejects(queued.result({ timeoutS: 5 }), JobCancelled);
  } finally {
    await other.close();
    await lax.close();
  }
});

test('bulk: split along the first axis, results joined in sample order, re-attached from another client', async () => {
  const data = Float32Array.from({ length: 20 }, (_, i) => i); // 10 samples x 2
  const bulk = await client.submitBulk('scale', { x: { shape: [10, 2], data } }, { samplesPerJob: 3, version: 1 });
  assert.equal(bulk.jobs.length, 4);
  const seen = [];
  for await (const job of bulk.asCompleted({ timeoutS: 60 })) seen.push(job.id);
  assert.deepEqual([...seen].sort(), bulk.jobs.map((j) => j.id).sort());
  const out = await bulk.result({ timeoutS: 60 });
  assert.deepEqual(out.y.shape, [10, 2]);
  assert.deepEqual(Array.from(out.y.data), Array.from(data, (v) => 2 * v));
  const other = new Client(fleet.url);
  try {
    assert.deepEqual((await (await other.bulk(bulk.id)).result({ timeoutS: 60 })).y.data, out.y.data);
  } finally {
    await other.close();
  }
});

test('many jobs in flight on one client each get their own result', async () => {
  const jobs = await Promise.all(
    Array.from({ length: 40 }, (_, i) => client.submit('scale', { x: { shape: [1, 2], data: Float32Array.from([i, -i]) } })),
  );
  const results = await Promise.all(jobs.map((j) => j.result({ timeoutS: 60 })));
  results.forEach((r, i) => assert.deepEqual(Array.from(r.y.data), [3 * i, -3 * i]));
});

test('large tensors travel under their own key (claim check) both ways', async () => {
  const x = Float32Array.from({ length: 300_000 }, (_, i) => Math.sin(i)); // 1.2 MB
  const job = await client.submit('ident', { x });
  const y = (await job.result({ timeoutS: 60 })).y;
  assert.deepEqual(y.data, x);
  assert.deepEqual(await fleet.conn.keys('icow:in:*'), []); // consumed inputs are dropped
  assert.equal(await fleet.conn.exists(keys.outputBlob(job.id, 0)), 1);
});

test('priorities use the kombu priority lists', async () => {
  const job = await client.submit('scale', { x: { shape: [1, 2], data: Float32Array.from([1, 1]) } }, { priority: 9 });
  assert.deepEqual(Array.from((await job.result({ timeoutS: 30 })).y.data), [3, 3]);
});

test('model metadata', async () => {
  const models = await client.models();
  assert.deepEqual(models.scale, [1, 2]);
  assert.deepEqual(models.mlp, [1]);
  const multi = await client.model('multi');
  assert.deepEqual(
    multi.inputs.map((t) => [t.name, t.datatype, t.shape]),
    [
      ['x', 'FP32', [-1, 3]],
      ['ids', 'INT64', [-1, 2]],
      ['mask', 'BOOL', [-1]],
    ],
  );
  assert.equal((await client.model('scale', 1)).version, 1);
  assert.equal((await client.model('scale')).version, 2);
  await assert.rejects(client.model('nope'), NotFound);
});

test('failures are typed errors; remote ones carry the job id', async () => {
  await assert.rejects(client.submit('nope', { x: new Float32Array(1) }), ModelNotFound); // no live worker: not queued
  await assert.rejects(client.submit('mlp', { x: { shape: [2], data: new Float32Array(3) } }), InvalidInput);
  await assert.rejects(
    client.infer('mlp', { x: { shape: [1, 5], data: new Float32Array(5) } }, { timeoutS: 30 }),
    (err) => err instanceof InvalidJob && /expects \[-1, 4\]/.test(err.message) && Boolean(err.jobId),
  );
  await assert.rejects(
    client.infer('scale', { x: { shape: [1, 2], data: new Float32Array(2) } }, { version: 7, timeoutS: 30 }),
    (err) => err instanceof ModelNotFound && /version 7/.test(err.message), // refused by icow_submit's live check
  );
  assert.equal(await fleet.conn.llen('icow:q:scale@7'), 0);
  assert.equal(await client.job('00000000-0000-4000-8000-00000000dead').status(), 'queued'); // unknown reads as queued
});

test('waiting past the timeout raises JobTimeout; the job stays queued', async () => {
  const lax = new Client(fleet.url, { requirePublished: false });
  try {
    const job = await lax.submit('nobody-serves-this', { x: new Float32Array(1) });
    const t0 = Date.now();
    await assert.rejects(job.result({ timeoutS: 0.5 }), JobTimeout);
    assert.ok(Date.now() - t0 < 5000);
    assert.equal(await job.status(), 'queued');
    await assert.rejects(lax.job(job.id).result({ timeoutS: 0.3 }), JobTimeout);
  } finally {
    await lax.close();
  }
});

test('results expire after their TTL; the done state outlives them, so an expired job is told from a queued one', async () => {
  const job = await client.submit('scale', { x: { shape: [1, 2], data: new Float32Array(2) } }, { resultTtlS: 5 });
  await job.result({ timeoutS: 30 });
  const [resultTtl, stateTtl] = await Promise.all([fleet.conn.ttl(keys.result(job.id)), fleet.conn.ttl(keys.state(job.id))]);
  assert.ok(resultTtl > 0 && resultTtl <= 5);
  assert.ok(stateTtl > 5);
  await fleet.conn.del(keys.result(job.id)); // what the TTL does
  await assert.rejects(client.job(job.id).status(), JobNotFound);
  await assert.rejects(client.job(job.id).result({ timeoutS: 5 }), JobNotFound);
});

test('a model at its backlog limit refuses jobs with QueueFull', async () => {
  const lax = new Client(fleet.url, { requirePublished: false });
  try {
    await fleet.conn.hset(keys.LIMITS, 'full-model', 1);
    await lax.submit('full-model', { x: new Float32Array(1) });
    await assert.rejects(lax.submit('full-model', { x: new Float32Array(1) }), (err) => {
      assert.ok(err instanceof QueueFull);
      assert.equal(err.depth, 1);
      assert.equal(err.limit, 1);
      return true;
    });
    assert.equal(await fleet.conn.llen(keys.queue('full-model')), 1);
  } finally {
    await fleet.conn.hdel(keys.LIMITS, 'full-model');
    await lax.close();
  }
});

test('a refused durable submit (a primary with no replica) names the queued jobs; they run and their results can be awaited', async () => {
  const durable = new Client(fleet.url, { durable: true, timeoutS: 3 });
  try {
    const x = { shape: [1, 2], data: Float32Array.from([4, 4]) };
    const one = await durable.submit('scale', { x }, { version: 1, jobId: `nd-${process.pid}` }).then(
      () => assert.fail('a durable submit with no replica resolved'),
      (err) => err,
    );
    assert.ok(one instanceof NotDurable && /ARE queued/.test(one.message), String(one));
    assert.deepEqual(one.jobIds, [`nd-${process.pid}`]);
    assert.equal(one.jobs.length, 1);
    assert.deepEqual(Array.from((await one.jobs[0].result({ timeoutS: 30 })).y.data), [8, 8]);
    const many = await durable.submitMany('scale', [{ x }, { x }], { version: 1 }).then(
      () => assert.fail('resolved'),
      (err) => err,
    );
    assert.ok(many instanceof NotDurable);
    assert.deepEqual(many.jobIds, many.jobs.map((j) => j.id));
    assert.equal(many.jobs.length, 2);
    for (const j of many.jobs) assert.deepEqual(Array.from((await j.result({ timeoutS: 30 })).y.data), [8, 8]);
    assert.equal(await client.job(one.jobIds[0]).status(), 'succeeded'); // by id, from another client
  } finally {
    await durable.close();
  }
});
