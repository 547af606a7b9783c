// The Node.js client against a real Redis (valkey-server) holding ICOW's Functions library, with
// the worker side played by test/worker.js through the worker functions. What a user relies on:
// submit, wait, status, cancel, bulk, asCompleted, id validation, and what lands in Redis.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  BrokerUnavailable,
  Client,
  InvalidInput,
  JobCancelled,
  JobNotFound,
  JobTimeout,
  ModelNotFound,
  QueueFull,
  jobIdForToken,
  keys,
  msgpackDecode,
} from '../src/index.js';
import { Server, installFunctions, python } from './server.js';
import { FakeWorker } from './worker.js';

let server;
let worker;
let client;

const MODEL = 'echo';
const Q = keys.queue(MODEL);
const x = (...v) => ({ x: { shape: [1, v.length], data: Float32Array.from(v) } });

before(async () => {
  server = await new Server().start();
  worker = new FakeWorker(server.url);
  await worker.install();
  await worker.live(MODEL, [1, 2]);
  await worker.live('bulky');
  client = new Client(server.url);
});

after(async () => {
  await client?.close();
  worker?.close();
  await server?.stop();
});

test('submit queues a Celery message through icow_submit; the id is the one its cancel token commits to', async () => {
  const job = await client.submit(MODEL, x(1, 2));
  assert.match(job.cancelToken, /^[0-9a-f]{32}$/);
  assert.equal(job.id, jobIdForToken(job.cancelToken));
  const taken = await worker.take(Q);
  const [{ job: sent, envelope }] = taken;
  assert.equal(sent.id, job.id);
  assert.equal(sent.reply_to, client.replyList);
  assert.match(client.replyList, /^icow:reply:[0-9a-f]{32}$/);
  assert.equal(envelope.headers.task, 'icow.infer');
  assert.equal(envelope.properties.delivery_info.routing_key, Q);
  assert.equal(await job.status(), 'queued'); // taken, not yet claimed
  await worker.claim(taken);
  assert.equal(await job.status(), 'running'); // icow_claim marks it running before it runs
});

test('the job id derivation is byte-for-byte icow.protocol.job_id_for_token', () => {
  const tokens = ['0'.repeat(32), 'f'.repeat(32), '0123456789abcdef0123456789abcdef'];
  const py = python(
    'import json, sys\nfrom icow.protocol import job_id_for_token as f\nprint(json.dumps([f(t) for t in json.loads(sys.argv[1])]))',
    JSON.stringify(tokens),
  );
  assert.deepEqual(tokens.map(jobIdForToken), JSON.parse(py));
  for (const bad of ['0'.repeat(31), 'F'.repeat(32), `${'0'.repeat(32)}\n`, 7]) assert.throws(() => jobIdForToken(bad), InvalidInput);
});

test('infer: the worker answers on the reply list and the client decodes the outputs', async () => {
  const pending = client.infer(MODEL, x(0.5, -1, 2), { timeoutS: 30 });
  await worker.serve(Q);
  const out = await pending;
  assert.deepEqual(Array.from(out.x.data), [0.5, -1, 2]);
  assert.deepEqual(out.x.shape, [1, 3]);
});

test('a pinned version goes to icow:q:<m>@<v>, a priority to its kombu list', async () => {
  await client.submit(MODEL, x(1), { version: 2, priority: 9 });
  assert.equal(await server.conn.llen(keys.queueList(keys.queue(MODEL, 2), 9)), 1);
  assert.equal(keys.queueList(keys.queue(MODEL, 2), 9), 'icow:q:echo@2\x06\x169');
  const [{ job }] = await worker.take(keys.queue(MODEL, 2));
  assert.equal(job.version, 2);
});

test('ModelNotFound says why when workers reported a failed version (icow:failed:<m>), in the Python client\'s words', async () => {
  const failed = { '1:w-b': 'InvalidProtobuf: not a model', '2:w-a': "InvalidInput: max_queue = 'x': must be an integer in 0..1000000" };
  await server.conn.hset(keys.failed('broken'), failed);
  try {
    const messageOf = async (options) => {
      try {
        await client.submit('broken', x(1), options);
      } catch (err) {
        assert.ok(err instanceof ModelNotFound);
        return err.message;
      }
      throw new Error('submit was not refused');
    };
    const unpinned = await messageOf({});
    assert.equal(
      unpinned,
      "no live worker serves model 'broken': nothing was queued; model 'broken' version 1 failed to load on worker w-b: InvalidProtobuf: not a model; " +
        "model 'broken' version 2 failed to load on worker w-a: InvalidInput: max_queue = 'x': must be an integer in 0..1000000",
    );
    const pinned = await messageOf({ version: 2 });
    assert.match(pinned, /version 2 failed to load on worker w-a/);
    assert.doesNotMatch(pinned, /version 1/);
    const py = python(
      [
        'import json, sys',
        'from icow.client import _core',
        'failed = json.loads(sys.argv[1])',
        'for v in (None, 2):',
        '    t = _core.Target("broken", v, 0)',
        '    try:',
        '        _core.submit_outcome(t, [0, 0, -1, 0], failed)',
        '    except Exception as exc:',
        '        print(exc.message)',
      ].join('\n'),
      JSON.stringify(failed),
    );
    assert.deepEqual(py.trim().split('\n'), [unpinned, pinned]);
  } finally {
    await server.conn.del(keys.failed('broken'));
  }
});

test('no live worker for the model (or version): ModelNotFound, nothing queued, input keys dropped', async () => {
  const big = { x: new Float32Array(70_000) }; // claim-checked
  await assert.rejects(client.submit('nobody', big), (err) => err instanceof ModelNotFound && /no live worker/.test(err.message));
  await assert.rejects(client.submit(MODEL, x(1), { version: 7 }), ModelNotFound);
  assert.equal(await server.conn.llen(keys.queue('nobody')), 0);
  assert.deepEqual(await server.conn.keys('icow:in:*'), []);
  const lax = new Client(server.url, { requirePublished: false });
  try {
    await lax.submit('nobody', x(1));
    assert.equal(await server.conn.llen(keys.queue('nobody')), 1);
  } finally {
    await lax.close();
    await server.conn.del(keys.queue('nobody'));
  }
});

test('inputs strictly over 262144 bytes travel under icow:in:<nonce> keys that expire with the result', async () => {
  const inline = await client.submit(MODEL, { x: new Float32Array(65_536) }, { resultTtlS: 120 }); // exactly 262144 bytes
  const claimed = await client.submit(MODEL, { x: new Float32Array(65_537) }, { resultTtlS: 120 });
  const taken = await worker.take(Q);
  const sent = new Map(taken.map((t) => [t.job.id, t.job]));
  assert.equal(sent.get(inline.id).inputs[0].data.length, 262_144);
  const ref = sent.get(claimed.id).inputs[0].ref;
  assert.match(ref, /^icow:in:[0-9a-f]{32}$/);
  assert.equal(sent.get(claimed.id).inputs[0].data, undefined);
  assert.equal((await server.conn.getBuffer(ref)).length, 262_148);
  const ttl = await server.conn.ttl(ref);
  assert.ok(ttl > 100 && ttl <= 120);
  const results = [inline.result({ timeoutS: 30 }), claimed.result({ timeoutS: 30 })];
  await worker.claim(taken);
  await worker.answer(taken);
  assert.equal((await results[1]).x.data.length, 65_537);
  assert.equal((await results[0]).x.data.length, 65_536);
});

test('a model at its backlog limit refuses jobs with QueueFull; submitMany reports the queued prefix', async () => {
  await server.conn.hset(keys.LIMITS, MODEL, 2);
  try {
    await client.submit(MODEL, x(1));
    const err = await client.submitMany(MODEL, [x(2), x(3), x(4)]).catch((e) => e);
    assert.ok(err instanceof QueueFull);
    assert.equal(err.limit, 2);
    assert.equal(err.depth, 2);
    assert.equal(err.queued.length, 1);
    await assert.rejects(client.submit(MODEL, x(5)), QueueFull);
    assert.equal(await server.conn.llen(Q), 2);
  } finally {
    await server.conn.hdel(keys.LIMITS, MODEL);
    await worker.take(Q);
  }
});

test('status follows the worker: queued, running, succeeded; a done job without result has expired', async () => {
  const job = await client.submit(MODEL, x(1));
  const again = client.job(job.id); // re-attached by id: no token, pub/sub
  assert.equal(await again.status(), 'queued');
  const taken = await worker.take(Q);
  await worker.claim(taken);
  assert.equal(await again.status(), 'running');
  await worker.answer(taken);
  assert.equal(await again.status(), 'succeeded');
  assert.deepEqual(Array.from((await job.result({ timeoutS: 5 })).x.data), [1]);
  await server.conn.del(keys.result(job.id));
  await assert.rejects(client.job(job.id).status(), JobNotFound);
  await assert.rejects(client.job(job.id).result({ timeoutS: 5 }), JobNotFound);
});

test('a re-attached waiter (another client, pub/sub) gets the result', async () => {
  const job = await client.submit(MODEL, x(4, 5));
  const other = new Client(server.url);
  try {
    const waiting = other.job(job.id).result({ timeoutS: 30 });
    await worker.serve(Q);
    assert.deepEqual(Array.from((await waiting).x.data), [4, 5]);
  } finally {
    await other.close();
  }
});

test('waiting past the timeout rejects with JobTimeout; the job stays queued', async () => {
  const job = await client.submit(MODEL, x(1));
  await assert.rejects(job.result({ timeoutS: 0.3 }), JobTimeout);
  await assert.rejects(client.job(job.id).result({ timeoutS: 0.3 }), JobTimeout);
  assert.equal(await job.status(), 'queued');
  await worker.take(Q);
});

test('cancel before it runs: true, the waiter gets JobCancelled, the worker sees it answered', async () => {
  const job = await client.submit(MODEL, x(1));
  const waiting = job.result({ timeoutS: 30 }).catch((err) => err);
  const cancelling = job.cancel();
  const answered = await worker.serveCancel();
  assert.deepEqual(answered, { jobId: job.id, code: 1 });
  assert.equal(await cancelling, true);
  assert.ok((await waiting) instanceof JobCancelled);
  assert.equal(await job.status(), 'failed');
  const taken = await worker.take(Q);
  await worker.claim(taken);
  assert.deepEqual(await worker.answer(taken), [0]); // the first answer (the cancel) stands
});

test('a cancel from another process (by token) wakes the waiter through the bell', async () => {
  const job = await client.submit(MODEL, x(1));
  const waiting = job.result({ timeoutS: 30 }).catch((err) => err);
  const other = new Client(server.url);
  try {
    const cancelling = other.cancel(job.cancelToken);
    await worker.serveCancel();
    assert.equal(await cancelling, true);
    assert.ok((await waiting) instanceof JobCancelled);
    // The waiter popped the bell: it woke on it, not on its next re-read of the result key.
    assert.equal(await server.conn.llen(keys.bell(job.id)), 0);
  } finally {
    await other.close();
    await worker.take(Q);
  }
});

test('cancelling a running or finished job answers false and the result stands', async () => {
  const job = await client.submit(MODEL, x(3));
  const taken = await worker.take(Q);
  await worker.claim(taken);
  const running = job.cancel();
  assert.equal((await worker.serveCancel()).code, -1);
  assert.equal(await running, false);
  await worker.answer(taken);
  assert.deepEqual(Array.from((await job.result({ timeoutS: 5 })).x.data), [3]);
  const finished = client.job(job.id, { cancelToken: job.cancelToken }).cancel();
  assert.equal((await worker.serveCancel()).code, 0);
  assert.equal(await finished, false);
});

test('cancel needs the token; with no worker to answer it rejects with JobTimeout', async () => {
  const job = await client.submit(MODEL, x(1));
  await assert.rejects(client.job(job.id).cancel(), InvalidInput);
  assert.throws(() => client.job(job.id, { cancelToken: 'a'.repeat(32) }), InvalidInput);
  await assert.rejects(job.cancel({ timeoutS: 0.3 }), JobTimeout);
  assert.equal(await server.conn.zcard(keys.CANCELS), 1); // the request stays for the fleet
  await server.conn.del(keys.CANCELS);
  await worker.take(Q);
});

test('job ids and model names are validated as whole strings before anything reaches Redis', async () => {
  for (const bad of ['abc\n', '-abc', 'a b', 'a'.repeat(129), '', 12]) assert.throws(() => client.job(bad), InvalidInput);
  assert.equal(client.job('a'.repeat(128)).id, 'a'.repeat(128));
  for (const bad of ['echo\n', 'a..b', '../x', '.x', 'a/b', 'a'.repeat(129)]) {
    await assert.rejects(client.submit(bad, x(1)), InvalidInput);
  }
  await assert.rejects(client.bulk('no\n'), InvalidInput);
  await assert.rejects(client.submit(MODEL, x(1), { jobId: 'mine\n' }), InvalidInput);
  await assert.rejects(client.submit(MODEL, x(1), { jobID: 'mine' }), InvalidInput); // unknown option
  const own = await client.submit(MODEL, x(1), { jobId: 'my-own-id' }); // an id of the caller's making...
  assert.equal(own.id, 'my-own-id');
  assert.equal(own.cancelToken, null);
  await assert.rejects(own.cancel(), InvalidInput); // ...cannot be cancelled: no token commits to it
  await worker.take(Q);
});

test('submitBulk cuts along the first axis, queues at batch priority, records the bulk; any client re-attaches', async () => {
  const data = Float32Array.from({ length: 30 }, (_, i) => i); // 10 samples x 3
  const words = Array.from({ length: 10 }, (_, i) => `w${i}`);
  const bulk = await client.submitBulk('bulky', { x: { shape: [10, 3], data }, s: words }, { samplesPerJob: 4 });
  assert.equal(bulk.samples, 10);
  assert.equal(bulk.jobs.length, 3);
  assert.equal(await server.conn.llen(keys.queueList(keys.queue('bulky'), 6)), 3);
  const rec = msgpackDecode(await server.conn.getBuffer(keys.bulk(bulk.id)));
  assert.deepEqual(rec, { id: bulk.id, model: 'bulky', jobs: bulk.jobs.map((j) => j.id), samples: 10 });
  assert.deepEqual(await bulk.progress(), [0, 3]);
  const taken = await worker.take(keys.queue('bulky'));
  assert.deepEqual(
    taken.map((t) => t.job.inputs[0].shape),
    [
      [4, 3],
      [4, 3],
      [2, 3],
    ],
  );
  await worker.claim(taken);
  await worker.answer(taken);
  const out = await bulk.result({ timeoutS: 10 });
  assert.deepEqual(out.x.shape, [10, 3]);
  assert.deepEqual(out.x.data, data);
  assert.deepEqual(
    out.s.data.map((b) => b.toString()),
    words,
  );
  assert.deepEqual(await bulk.progress(), [3, 3]);
  const other = new Client(server.url);
  try {
    const again = await other.bulk(bulk.id);
    assert.deepEqual((await again.result({ timeoutS: 10 })).x.data, data);
  } finally {
    await other.close();
  }
  await assert.rejects(client.bulk('00000000-0000-0000-0000-000000000000'), JobNotFound);
});

test('asCompleted yields jobs in the order they finish, own jobs and re-attached ones alike', async () => {
  const [a, b] = await client.submitMany(MODEL, [x(1), x(2)]);
  const c = await client.submit(MODEL, x(3));
  const other = new Client(server.url);
  try {
    const cAttached = other.job(c.id);
    const mine = client.asCompleted([a, b], { timeoutS: 30 })[Symbol.asyncIterator]();
    const theirs = other.asCompleted([cAttached], { timeoutS: 30 })[Symbol.asyncIterator]();
    const taken = new Map((await worker.take(Q)).map((t) => [t.job.id, t]));
    await worker.claim([...taken.values()]);
    const first = mine.next();
    const attached = theirs.next();
    await worker.answer([taken.get(b.id)]);
    assert.equal((await first).value.id, b.id);
    await worker.answer([taken.get(c.id)]);
    assert.equal((await attached).value.id, c.id);
    await worker.answer([taken.get(a.id)]);
    const second = await mine.next();
    assert.equal(second.value.id, a.id);
    assert.deepEqual(Array.from((await second.value.result()).x.data), [1]);
    assert.equal((await mine.next()).done, true);
    assert.equal((await theirs.next()).done, true);
  } finally {
    await other.close();
  }
});

test('asCompleted past its timeout rejects with JobTimeout', async () => {
  const job = await client.submit(MODEL, x(1));
  const iterate = async () => {
    for await (const j of client.asCompleted([job], { timeoutS: 0.3 })) void j;
  };
  await assert.rejects(iterate(), JobTimeout);
  await worker.take(Q);
});

test('without ICOW functions on the server, submit and cancel say the fleet has not installed them', async () => {
  await server.conn.call('FUNCTION', 'DELETE', 'icow');
  try {
    await assert.rejects(client.submit(MODEL, x(1)), (err) => err instanceof BrokerUnavailable && /functions are not installed/.test(err.message));
    await assert.rejects(client.cancel('0'.repeat(32)), (err) => err instanceof BrokerUnavailable && /not installed/.test(err.message));
  } finally {
    await installFunctions(server.conn);
  }
});

test('close deletes the client reply list', async () => {
  const own = new Client(server.url);
  await own.submit(MODEL, x(1)); // fire and forget: its result is still pushed on the reply list
  await worker.serve(Q);
  assert.equal(await server.conn.llen(own.replyList), 1);
  await own.close();
  assert.equal(await server.conn.exists(own.replyList), 0);
});

test('a Redis that is not there gives BrokerUnavailable', async () => {
  const gone = new Client('redis://127.0.0.1:1/0', { connectTimeoutS: 0.5, redisOptions: { retryStrategy: () => null } });
  try {
    await assert.rejects(gone.submit(MODEL, x(1)), BrokerUnavailable);
  } finally {
    await gone.close();
  }
});

test('as the client ACL user (icow.keys.CLIENT_ACL_RULES): submit, wait, status, cancel, bulk, close', async () => {
  const rules = JSON.parse(python('import json\nfrom icow.keys import CLIENT_ACL_RULES\nprint(json.dumps(CLIENT_ACL_RULES))'));
  await server.conn.call('ACL', 'SETUSER', 'icow-client', 'reset', 'on', '>client-pw', ...rules);
  const limited = new Client(server.urlFor('icow-client', 'client-pw'));
  try {
    const pending = limited.infer(MODEL, { x: new Float32Array(70_000).fill(2) }, { timeoutS: 30 }); // claim-checked input
    await worker.serve(Q);
    assert.equal((await pending).x.data[69_999], 2);

    const job = await limited.submit(MODEL, x(1));
    assert.equal(await job.status(), 'queued');
    const waiting = job.result({ timeoutS: 30 }).catch((err) => err);
    const cancelling = job.cancel();
    await worker.serveCancel();
    assert.equal(await cancelling, true);
    assert.ok((await waiting) instanceof JobCancelled); // woken by the bell, or by the cancel answer where bells are not readable
    await worker.take(Q);

    const bulk = await limited.submitBulk('bulky', { x: { shape: [3, 1], data: Float32Array.of(1, 2, 3) } }, { samplesPerJob: 2 });
    await worker.serve(keys.queue('bulky'));
    assert.deepEqual(Array.from((await (await limited.bulk(bulk.id)).result({ timeoutS: 10 })).x.data), [1, 2, 3]);
    assert.deepEqual(await bulk.progress(), [2, 2]);

    await assert.rejects(limited.job(job.id).result({ timeoutS: 5 }), JobCancelled); // pub/sub + GET
    assert.ok((await limited.models()) !== null);
  } finally {
    await limited.close();
  }
  assert.equal(await server.conn.exists(limited.replyList), 0);
  await server.conn.call('ACL', 'DELUSER', 'icow-client');
});

test('an ACL user that may not read bells still waits and learns of a cancel (reply list alone)', async () => {
  const rules = JSON.parse(python('import json\nfrom icow.keys import CLIENT_ACL_RULES\nprint(json.dumps(CLIENT_ACL_RULES))'));
  const withoutBells = rules.filter((r) => !r.includes('bell:'));
  await server.conn.call('ACL', 'SETUSER', 'icow-nobell', 'reset', 'on', '>pw', ...withoutBells);
  const limited = new Client(server.urlFor('icow-nobell', 'pw'));
  const other = new Client(server.url);
  try {
    const job = await limited.submit(MODEL, x(1));
    const waiting = job.result({ timeoutS: 30 }).catch((err) => err);
    const cancelling = other.cancel(job.cancelToken); // another process: no cancel answer reaches `limited`
    await worker.serveCancel();
    assert.equal(await cancelling, true);
    assert.ok((await waiting) instanceof JobCancelled); // from the result key, at the next slice
    assert.equal(limited._replies.bells, false);
    await worker.take(Q); // the cancelled job
    const pending = limited.infer(MODEL, x(7), { timeoutS: 30 });
    await worker.serve(Q);
    assert.deepEqual(Array.from((await pending).x.data), [7]);
  } finally {
    await other.close();
    await limited.close();
    await server.conn.call('ACL', 'DELUSER', 'icow-nobell');
  }
});
