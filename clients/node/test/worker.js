// The worker side of the protocol, simulated in a few lines for the unit tests: it calls ICOW's
// worker functions (icow_renew, icow_take, icow_claim, icow_answer, icow_cancel) exactly as
// their comments in icow/lua/icow.lua say, and answers every job by echoing its inputs.

import { Redis } from 'ioredis';

import { jobIdForToken, keys, msgpackDecode, msgpackEncode } from '../src/index.js';
import { installFunctions } from './server.js';

const LEASE_MS = 15_000;
const DONE_EXTRA_TTL_S = 7 * 24 * 3600;
const BELL_TTL_S = 60;
const INLINE_MAX_BYTES = 256 * 1024;

function meta(jobId, status, result) {
  return { status, result, traceback: null, children: [], date_done: new Date().toISOString(), task_id: jobId };
}

/** A JobCancelled failure meta, as a worker writes it for a cancelled job. */
export function failureMeta(job, errorType, message) {
  return meta(job.id, 'FAILURE', {
    exc_type: errorType,
    exc_message: [message],
    exc_module: 'icow.errors',
    v: 1,
    id: job.id,
    model: job.model ?? null,
    version: job.version ?? null,
    worker: 'fake',
  });
}

export class FakeWorker {
  constructor(url, name = 'fake-worker') {
    this.conn = new Redis(url);
    this.conn.on('error', () => {});
    this.name = name;
    this.takes = 0;
  }

  async install() {
    await installFunctions(this.conn);
  }

  /** Heartbeat: `model` (versions) is served by a live worker. */
  async live(model, versions = [1]) {
    // per model: number of versions, the versions, the version offered to unpinned jobs
    await this.conn.fcall('icow_renew', 2, 'icow:leases', keys.live(model), this.name, LEASE_MS, 60_000, versions.length, ...versions, Math.max(...versions));
  }

  /** Take up to `want` messages from `queueName` (all priorities); [] if none. */
  async take(queueName, want = 1000) {
    const lists = keys.queueLists(queueName);
    const run = `icow:run:${this.name}:${++this.takes}`;
    const k = [`icow:runs:${this.name}`, 'icow:leases', run, ...lists, ...lists.map(() => keys.wake(queueName))];
    // ARGV: worker, lease ms, lists, largest whole message, per list: most (icow_claim marks them running)
    const out = await this.conn.fcallBuffer('icow_take', k.length, ...k, this.name, LEASE_MS, lists.length, 1 << 30, ...lists.map(() => want));
    const jobs = out.slice(1).map((entry) => {
      // a message, or [length, first 512 bytes] when it is larger than the cap
      const raw = Array.isArray(entry) ? entry[0] : entry;
      const envelope = JSON.parse(raw.toString('utf8'));
      const [[job]] = msgpackDecode(Buffer.from(envelope.body, 'base64'));
      return { job, envelope, run };
    });
    return jobs;
  }

  /** Wait (BZPOPMIN on the queue's wake marker, no polling) until messages can be taken. */
  async waitTake(queueName, { want = 1000, timeoutS = 10 } = {}) {
    const until = Date.now() + timeoutS * 1000;
    for (;;) {
      const got = await this.take(queueName, want);
      if (got.length > 0) return got;
      if (Date.now() > until) throw new Error(`nothing arrived on ${queueName} within ${timeoutS} s`);
      await this.conn.bzpopmin(keys.wake(queueName), 1);
    }
  }

  /** Mark taken jobs running (icow_claim). */
  async claim(taken) {
    const k = taken.flatMap(({ job }) => [keys.result(job.id), keys.state(job.id), `icow:tries:${job.id}`]);
    await this.conn.fcall('icow_claim', k.length, ...k, taken.length, 600, ...taken.map(({ job }) => job.ttl));
  }

  /** The echo of a job's inputs (claim-checked ones read and dropped), as result outputs. */
  async echo(job) {
    const outputs = [];
    for (const [i, t] of job.inputs.entries()) {
      let data = t.data;
      if (t.ref !== undefined) {
        data = await this.conn.getBuffer(t.ref);
        await this.conn.del(t.ref);
      }
      if (data.length > INLINE_MAX_BYTES) {
        const ref = keys.outputBlob(job.id, i);
        await this.conn.set(ref, data, 'EX', job.ttl);
        outputs.push({ name: t.name, datatype: t.datatype, shape: t.shape, ref });
      } else {
        outputs.push({ name: t.name, datatype: t.datatype, shape: t.shape, data });
      }
    }
    return meta(job.id, 'SUCCESS', { v: 1, id: job.id, model: job.model, version: job.version ?? 1, outputs, worker: this.name, timing: {} });
  }

  /** Write the answers (icow_answer: result, state, publish, reply list) and ack the run lists. */
  async answer(taken, metaOf = (job) => this.echo(job)) {
    const runs = [...new Set(taken.map((t) => t.run))];
    const k = [`icow:runs:${this.name}`, ...runs];
    const args = [runs.length, taken.length, DONE_EXTRA_TTL_S];
    for (const { job } of taken) {
      k.push(keys.result(job.id), keys.state(job.id), job.reply_to ?? '');
      args.push(msgpackEncode(await metaOf(job)), job.ttl);
    }
    return this.conn.fcall('icow_answer', k.length, ...k, ...args);
  }

  /** Take whatever waits on `queueName` (waiting for at least one job) and echo it back. */
  async serve(queueName, { want = 1000 } = {}) {
    const taken = await this.waitTake(queueName, { want });
    await this.claim(taken);
    await this.answer(taken);
    return taken;
  }

  /**
   * Answer one cancel request (BZPOPMIN on icow:cancels): icow_cancel, then the CANCEL map on the
   * canceller's reply list. Returns the job id and the code (1 cancelled, 0 finished, -1 running).
   */
  async serveCancel({ timeoutS = 10 } = {}) {
    const popped = await this.conn.bzpopmin(keys.CANCELS, timeoutS);
    if (popped === null) throw new Error('no cancel request arrived');
    const [token, replyList] = popped[1].split(' ');
    const jobId = jobIdForToken(token);
    const cancelled = msgpackEncode(failureMeta({ id: jobId }, 'JobCancelled', 'the job was cancelled before it ran'));
    const code = await this.conn.fcall(
      'icow_cancel',
      3,
      keys.result(jobId),
      keys.state(jobId),
      keys.bell(jobId),
      cancelled,
      3600,
      DONE_EXTRA_TTL_S,
      BELL_TTL_S,
    );
    await this.conn.rpush(replyList, msgpackEncode({ status: 'CANCEL', task_id: `cancel:${jobId}`, result: code }));
    return { jobId, code };
  }

  close() {
    this.conn.disconnect();
  }
}
