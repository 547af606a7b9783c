// Redis under Sentinel from Node.js: the redis+sentinel:// URL form of icow/connection.py,
// durable submits (Redis WAIT), and a failover under load with real Python workers. Real
// servers: a primary, a replica and three sentinels (test/sentinel.js, as tests/sentinel.py).

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { connect, parseSentinel, redact, sentinelOptions } from '../src/connection.js';
import { BrokerUnavailable, Client, InvalidInput, NotDurable, keys, msgpackDecode } from '../src/index.js';
import { python, startWorker, stopProcess } from './fleet.js';
import { Server, freePort, installFunctions } from './server.js';
import { SERVICE, SentinelSet, waitFor } from './sentinel.js';

const X = { x: { datatype: 'FP32', shape: [1, 2], data: Float32Array.from([1, 1]) } };

// -- the URL form (no servers)

test('a Sentinel URL becomes ioredis sentinel options, as icow.connection parses it', () => {
  const target = parseSentinel(
    'rediss+sentinel://app:p%40ss@s1:26380,s2,[::1]:26381/icow/2' +
      '?sentinel_password=spw&sentinel_username=watch&socket_timeout=1.5&socket_connect_timeout=0.5&sentinel_ssl=false',
  );
  assert.deepEqual(target.sentinels, [
    { host: 's1', port: 26380 },
    { host: 's2', port: 26379 },
    { host: '::1', port: 26381 },
  ]);
  assert.deepEqual([target.service, target.db, target.username, target.password], ['icow', 2, 'app', 'p@ss']);
  assert.ok(target.tls && !target.sentinelTls);
  const options = sentinelOptions(target, { connectTimeoutMs: 2000, commandTimeoutMs: 10_000 });
  assert.deepEqual(options.sentinels, target.sentinels);
  assert.equal(options.name, 'icow');
  assert.equal(options.db, 2);
  assert.equal(options.username, 'app');
  assert.equal(options.password, 'p@ss');
  assert.equal(options.sentinelUsername, 'watch');
  assert.equal(options.sentinelPassword, 'spw');
  assert.equal(options.connectTimeout, 500); // the URL's timeouts win over the caller's
  assert.equal(options.commandTimeout, 1500);
  assert.deepEqual(options.tls, {}); // TLS to the primary (system CAs), none to the sentinels
  assert.equal(options.enableTLSForSentinelMode, true);
  assert.equal(options.sentinelTLS, undefined);

  const plain = sentinelOptions(parseSentinel('redis+sentinel://h1/mymaster'), { connectTimeoutMs: 2000 });
  assert.deepEqual([plain.sentinels, plain.name, plain.db], [[{ host: 'h1', port: 26379 }], 'mymaster', 0]);
  assert.equal(plain.tls, undefined);
  assert.equal(plain.password, undefined);
  const tls = sentinelOptions(parseSentinel('rediss+sentinel://h1/icow?ssl_cert_reqs=none'));
  assert.equal(tls.tls.rejectUnauthorized, false);
  assert.equal(tls.sentinelTLS.rejectUnauthorized, false); // sentinel_ssl defaults to true
});

for (const url of [
  'redis+sentinel://h1:26379', // no service
  'redis+sentinel:///icow', // no sentinel
  'redis+sentinel://h1/icow/zero',
  'redis+sentinel://h1:port/icow',
  'redis+sentinel://h1/icow?sentinel_pasword=typo',
  'redis+sentinel://h1/icow?socket_timeout=soon',
  'rediss+sentinel://h1/icow?sentinel_ssl=maybe',
  'rediss+sentinel://h1/icow?ssl_cert_reqs=sometimes',
]) {
  test(`a bad Sentinel URL is refused before any I/O: ${url}`, () => {
    assert.throws(() => new Client(url), InvalidInput);
  });
}

test('passwords are redacted from URLs shown in errors', () => {
  const shown = redact('redis+sentinel://u:secret@h1,h2/icow?sentinel_password=also&socket_timeout=1');
  assert.ok(!shown.includes('secret') && !shown.includes('also'), shown);
  assert.ok(shown.includes('h1,h2/icow') && shown.includes('socket_timeout=1'), shown);
});

// -- no hang: every call ends within the client's timeoutS

/** Resolves to [the error `promise` rejected with, milliseconds it took]. */
async function failure(promise) {
  const started = Date.now();
  try {
    await promise;
  } catch (err) {
    return [err, Date.now() - started];
  }
  assert.fail('expected a rejection');
}

test('sentinels that do not answer: submit rejects with BrokerUnavailable within timeoutS', async () => {
  const [a, b] = [await freePort(), await freePort()];
  const client = new Client(`redis+sentinel://127.0.0.1:${a},127.0.0.1:${b}/icow`, { timeoutS: 1, connectTimeoutS: 0.5 });
  try {
    const [err, ms] = await failure(client.submit('m', X));
    assert.ok(err instanceof BrokerUnavailable, err);
    assert.ok(ms < 3000, `${ms} ms`); // 1 s plus a margin, not forever
  } finally {
    await client.close();
  }
});

test('a frozen Redis (SIGSTOP: TCP up, no answer): submit rejects with BrokerUnavailable within timeoutS', async () => {
  const server = await new Server().start();
  const client = new Client(server.url, { timeoutS: 1, requirePublished: false });
  try {
    await installFunctions(server.conn);
    await client.submit('m', X);
    server.proc.kill('SIGSTOP');
    const [err, ms] = await failure(client.submit('m', X));
    assert.ok(err instanceof BrokerUnavailable, err);
    assert.ok(ms < 3000, `${ms} ms`);
  } finally {
    server.proc.kill('SIGCONT');
    await client.close();
    await server.stop();
  }
});

// -- durable submits (no worker: requirePublished false)

async function withSet(fn) {
  const set = await new SentinelSet().start();
  try {
    await set.primary.with((c) => installFunctions(c)); // what the first worker does at start
    return await fn(set);
  } finally {
    await set.stop();
  }
}

const queuedOnReplica = (set, model) => set.replica.with((c) => c.llen(keys.queueList(keys.queue(model, null), 0)));

test('a durable submit resolves once the replica holds the job; without a replica it is NotDurable naming the queued job', async () => {
  await withSet(async (set) => {
    const durable = new Client(set.url, { durable: true, requirePublished: false, timeoutS: 3 });
    const plain = new Client(set.url, { requirePublished: false, timeoutS: 3 });
    try {
      await durable.submit('m', X);
      await durable.submitMany('m', [X, X]);
      await plain.submit('m', X, { durable: true });
      // No replication wait here: WAIT already saw the replica acknowledge the writes.
      assert.equal(await queuedOnReplica(set, 'm'), 4);

      await set.replica.kill();
      await plain.submit('m', X); // not durable: the primary alone is enough
      await assert.rejects(
        plain.submit('m', X, { durable: true, jobId: `durable-${process.pid}` }),
        (err) => err instanceof NotDurable && err instanceof BrokerUnavailable && err.jobIds[0] === `durable-${process.pid}` && err.jobs.length === 1,
      );
      await assert.rejects(durable.submitMany('m', [X]), (err) => err instanceof BrokerUnavailable && /replica/.test(err.message));
      const samples = { x: { datatype: 'FP32', shape: [4, 2], data: new Float32Array(8) } };
      await assert.rejects(plain.submitBulk('m', samples, { samplesPerJob: 2, durable: true }), (err) => err instanceof BrokerUnavailable && /replica/.test(err.message));
      await durable.submit('m', X, { durable: false }); // the call's choice wins over the client's
    } finally {
      await durable.close();
      await plain.close();
    }
  });
});

test('a graceful failover (SENTINEL FAILOVER, the old primary demoted alive): the client moves to the new primary', async () => {
  await withSet(async (set) => {
    const client = new Client(set.url, { requirePublished: false, timeoutS: 3 });
    try {
      await client.submit('m', X);
      const [old, next] = [set.primary, set.replica];
      await set.sentinels[0].with((c) => c.call('SENTINEL', 'FAILOVER', SERVICE));
      await set.waitPromoted(next);
      [set.primary, set.replica] = [next, old];
      await set.demote(old); // the test, not the sentinels' timing, makes the old primary a replica
      assert.equal((await old.with((c) => c.call('ROLE')))[0], 'slave');
      // The client's connection still points at the old primary: a READONLY reply (or the
      // dropped connection) makes it ask the sentinels again; the next submit lands.
      const refused = [];
      for (let i = 0; i < 3; i += 1) {
        try {
          await client.submit('m', X);
          break;
        } catch (err) {
          refused.push(err);
        }
      }
      assert.ok(refused.length <= 1 && refused.every((err) => err instanceof BrokerUnavailable), refused.map(String).join('; '));
      assert.equal(await next.with((c) => c.llen(keys.queueList(keys.queue('m', null), 0))), 2);
    } finally {
      await client.close();
    }
  });
});

test('a frozen primary that returns still a primary (SIGSTOP, failover, SIGCONT): the client does not write to it', async () => {
  await withSet(async (set) => {
    const client = new Client(set.url, { requirePublished: false, timeoutS: 3 });
    try {
      await client.submit('m', X); // the client's connection: to the primary
      const [old, next] = [set.primary, set.replica];
      // The test keeps it a primary: the sentinels (default user) may not convert it.
      await old.with((c) => c.call('ACL', 'SETUSER', 'default', '-replicaof', '-slaveof'));
      old.proc.kill('SIGSTOP');
      try {
        await set.waitPromoted(next);
      } finally {
        old.proc.kill('SIGCONT');
      }
      [set.primary, set.replica] = [next, old];
      assert.equal((await old.with((c) => c.call('ROLE')))[0], 'master');
      for (let i = 0; i < 5; i += 1) {
        for (let attempt = 0; ; attempt += 1) {
          try {
            await client.submit('m', X);
            break;
          } catch (err) {
            if (!(err instanceof BrokerUnavailable) || attempt === 2) throw err;
          }
        }
      }
      const queue = keys.queueList(keys.queue('m', null), 0);
      assert.equal(await old.with((c) => c.llen(queue)), 1, 'jobs written to the stale primary');
      assert.equal(await next.with((c) => c.llen(queue)), 6);
    } finally {
      await client.close();
    }
  });
});

// -- failover under load, with real workers

/**
 * Submit job after job (input: its number n; `scale` doubles it) until `run.stop` is set,
 * recording into `run` what was acknowledged and what refused, with the phase of the failover
 * each submit started in; a refused submit is followed by the next after a short pause.
 */
async function load(client, run, first, phase) {
  for (let n = first; !run.stop; n += 1) {
    const started = Date.now();
    const at = phase();
    try {
      const job = await client.submit('scale', { x: { datatype: 'FP32', shape: [1, 2], data: Float32Array.from([n, n]) } });
      run.acked.push({ job, n, phase: at });
    } catch (err) {
      run.refused.push({ n, phase: at, kind: err.constructor.name, message: err.message.slice(0, 100) });
      // Queued on the primary, not on a replica: the job may run; re-attach, never resubmit.
      if (err instanceof NotDurable) run.notDurable.push(...err.jobs.map((job) => ({ job, n, phase: at })));
      await new Promise((r) => setTimeout(r, 50));
    }
    run.slowestMs = Math.max(run.slowestMs, Date.now() - started);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Wait for every acknowledged job: answered correctly, answered wrongly, or lost (no answer). */
async function collect(acked, timeoutS) {
  const outcomes = await Promise.all(
    acked.map(async ({ job, n }) => {
      try {
        const { y } = await job.result({ timeoutS });
        return y.data[0] === 2 * n && y.data[1] === 2 * n ? 'answered' : 'wrong';
      } catch {
        return 'lost';
      }
    }),
  );
  const count = (what) => outcomes.filter((o) => o === what).length;
  return { answered: count('answered'), wrong: count('wrong'), lost: acked.filter((_, i) => outcomes[i] === 'lost').map((a) => a.job.id) };
}

/** Names of the workers whose heartbeat says ready, read through the sentinel URL. */
async function liveWorkers(url) {
  const r = connect(url, { base: { maxRetriesPerRequest: 1 } });
  r.on('error', () => {});
  try {
    const found = [];
    for (const k of await r.keys('icow:worker:*')) {
      const raw = await r.getBuffer(k);
      const beat = raw === null ? null : msgpackDecode(raw);
      if (beat?.ready) found.push(beat.name);
    }
    return found;
  } finally {
    r.disconnect();
  }
}

/** Where each lost job is on the primary: the lists holding it (icow:run:* is a worker's in-flight list). */
async function whereabouts(url, ids) {
  const r = connect(url, { base: { maxRetriesPerRequest: 1 } });
  r.on('error', () => {});
  try {
    const lists = [];
    for (const k of await r.keys('icow:*')) if ((await r.type(k)) === 'list') lists.push(k);
    const out = {};
    for (const id of ids) {
      const holders = [];
      for (const k of lists) if ((await r.lrangeBuffer(k, 0, -1)).some((m) => m.includes(id))) holders.push(k);
      out[id] = holders;
    }
    return out;
  } finally {
    r.disconnect();
  }
}

test('failover: the primary is SIGKILLed under load; the Node client carries on and loses no durable job', { timeout: 180_000 }, async (t) => {
  const TIMEOUT_S = 3;
  const set = await new SentinelSet().start();
  const repo = mkdtempSync(join(tmpdir(), 'icow-node-failover-'));
  const workers = [];
  const logs = [];
  const clients = [];
  const runs = { durable: { acked: [], refused: [], notDurable: [], slowestMs: 0, stop: false }, plain: { acked: [], refused: [], notDurable: [], slowestMs: 0, stop: false } };
  let loops = [];
  try {
    python('import sys; from pathlib import Path; from icow.workers import samples; samples.scale(Path(sys.argv[1]) / "scale" / "1" / "model.onnx", 2.0)', repo);
    for (let i = 0; i < 2; i += 1) {
      const log = [];
      logs.push(log);
      workers.push(startWorker(repo, set.url, `node-failover-${i}-${process.pid}@local`, log, ['--lease', '4']));
    }
    const durable = new Client(set.url, { durable: true, timeoutS: TIMEOUT_S, connectTimeoutS: 1 });
    const plain = new Client(set.url, { timeoutS: TIMEOUT_S, connectTimeoutS: 1 });
    clients.push(durable, plain);
    const names = new Set(workers.map((_, i) => `node-failover-${i}-${process.pid}@local`));
    await waitFor(
      'two workers ready',
      async () => {
        for (const w of workers) if (w.exitCode !== null) throw new Error(`a worker exited: ${logs.flat().join('')}`);
        return (await liveWorkers(set.url)).filter((n) => names.has(n)).length === names.size;
      },
      90_000,
    );

    // Through the sentinel URL, before anything fails (durable: the replica holds the job).
    const out = await durable.infer('scale', { x: { datatype: 'FP32', shape: [1, 2], data: Float32Array.from([3, 4]) } }, { timeoutS: 30 });
    assert.deepEqual(Array.from(out.y.data), [6, 8]);

    let phase = 'before';
    loops = [load(durable, runs.durable, 0, () => phase), load(plain, runs.plain, 1_000_000, () => phase)];
    const ackedIn = (run, p) => run.acked.filter((a) => a.phase === p).length;
    const bothHave = (p, count) => () => ackedIn(runs.durable, p) >= count && ackedIn(runs.plain, p) >= count;
    await waitFor('both clients have jobs acknowledged before the crash', bothHave('before', 30), 30_000);

    phase = 'switch'; // SIGKILL, until every sentinel names the replica and it serves as primary
    const promotionMs = await set.failPrimary();
    phase = 'promoted'; // no replica left: durable submits are refused, plain ones go on
    await waitFor('plain jobs acknowledged by the new primary', () => ackedIn(runs.plain, 'promoted') >= 20, 30_000);
    await set.revive(set.replica); // the crashed node returns, as a replica of the new primary
    phase = 'revived';
    await waitFor('both clients have jobs acknowledged after the revival', bothHave('revived', 30), 30_000);
    runs.durable.stop = runs.plain.stop = true;
    await Promise.all(loops);

    const figures = {};
    for (const [name, run] of Object.entries(runs)) {
      const { answered, wrong, lost } = await collect(run.acked, 30);
      const byPhase = {};
      for (const p of ['before', 'switch', 'promoted', 'revived']) {
        byPhase[p] = { acked: ackedIn(run, p), refused: run.refused.filter((r) => r.phase === p).length };
      }
      figures[name] = {
        acknowledged: run.acked.length,
        refused: run.refused.length,
        answered,
        wrong,
        lost: lost.length,
        lostWhere: await whereabouts(set.url, lost),
        refusedKinds: [...new Set(run.refused.map((r) => `${r.kind}: ${r.message.slice(0, 60)}`))].slice(0, 4),
        byPhase,
        slowestSubmitMs: run.slowestMs,
      };
      // Jobs a NotDurable refusal named: re-attached (they may run, or be lost with the primary).
      const nd = await collect(run.notDurable, 10);
      Object.assign(figures[name], { notDurable: run.notDurable.length, notDurableAnswered: nd.answered, notDurableWrong: nd.wrong });
    }
    t.diagnostic(`failover (node): promotion ${promotionMs} ms; ${JSON.stringify(figures)}`);

    for (const [name, f] of Object.entries(figures)) {
      assert.equal(f.wrong, 0, name);
      // A submit either is acknowledged or refused with BrokerUnavailable, within the client's timeout.
      // (NotDurable, a BrokerUnavailable, when queued on a primary with no replica).
      for (const r of runs[name].refused) assert.ok(['BrokerUnavailable', 'NotDurable'].includes(r.kind), `${name}: ${r.kind}: ${r.message}`);
      assert.equal(f.notDurableWrong, 0, `${name}: a re-attached NotDurable job answered wrongly`);
      assert.ok(f.slowestSubmitMs <= (TIMEOUT_S + 2) * 1000, `${name}: a submit took ${f.slowestSubmitMs} ms`);
      assert.equal(f.answered + f.lost, f.acknowledged, name);
      // Jobs submitted once the new primary serves are all answered.
      const late = runs[name].acked.filter((a) => a.phase === 'revived' || a.phase === 'promoted').map((a) => a.job.id);
      assert.deepEqual(late.filter((id) => id in f.lostWhere), [], `${name}: jobs acknowledged by the new primary lost`);
    }
    // Durable: every acknowledged job survived the primary's death.
    assert.equal(figures.durable.lost, 0, JSON.stringify(figures.durable.lostWhere));
    for (const w of workers) assert.equal(w.exitCode, null, 'a worker died in the failover');
  } finally {
    runs.durable.stop = runs.plain.stop = true;
    await Promise.all(loops);
    for (const c of clients) await c.close();
    for (const w of workers) await stopProcess(w);
    await set.stop();
    rmSync(repo, { recursive: true, force: true });
  }
});
