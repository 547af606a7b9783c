// A throwaway Redis under Sentinel, as tests/sentinel.py builds it: one primary, one replica
// (--replicaof) and three sentinels on free loopback ports, all run by the same server binary
// as test/server.js (a sentinel is that binary started with --sentinel). Failover is quick:
// down-after-milliseconds 1000, failover-timeout 5000, quorum 2.

import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { Redis } from 'ioredis';

import { findServer, freePort, stopProcess } from './server.js';

export const SERVICE = 'icow';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll `check` (errors count as "not yet") every 50 ms until it is true; throw after `timeoutMs`. */
export async function waitFor(what, check, timeoutMs) {
  const until = Date.now() + timeoutMs;
  let last = null;
  while (Date.now() < until) {
    try {
      if (await check()) return;
    } catch (err) {
      last = err;
    }
    await sleep(50);
  }
  throw new Error(`${what}: not within ${timeoutMs} ms${last ? ` (last error: ${last.message})` : ''}`);
}

/** One server process (data node or sentinel); `conn()` opens a short-lived admin connection. */
class Node {
  constructor(exe, args, port, log) {
    this.exe = exe;
    this.args = args;
    this.port = port;
    this.log = log;
    this.proc = null;
  }

  async start() {
    this.proc = spawn(this.exe, this.args, { stdio: ['ignore', 'ignore', 'ignore'] });
    this.exited = new Promise((r) => this.proc.once('exit', r));
    await waitFor(`server on port ${this.port}`, () => this.ping(), 10_000);
    return this;
  }

  conn() {
    const c = new Redis({ host: '127.0.0.1', port: this.port, connectTimeout: 1000, commandTimeout: 5000, retryStrategy: () => null, lazyConnect: true });
    c.on('error', () => {});
    return c;
  }

  /** Run `fn(conn)` on a fresh connection, then close it. */
  async with(fn) {
    const c = this.conn();
    try {
      return await fn(c);
    } finally {
      c.disconnect();
    }
  }

  async ping() {
    if (this.proc.exitCode !== null) throw new Error(`server on port ${this.port} exited: ${this.tail()}`);
    return (await this.with((c) => c.ping())) === 'PONG';
  }

  tail() {
    try {
      return readFileSync(this.log, 'utf8').slice(-2000);
    } catch {
      return '';
    }
  }

  get alive() {
    return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** SIGKILL (a crash). */
  async kill() {
    if (this.alive) this.proc.kill('SIGKILL');
    await this.exited;
  }

  async stop() {
    if (this.proc !== null) await stopProcess(this.proc);
  }
}

/** Primary + replica + three sentinels; `url` is the set's redis+sentinel:// URL. */
export class SentinelSet {
  constructor({ sentinels = 3, downAfterMs = 1000, failoverTimeoutMs = 5000 } = {}) {
    this.count = sentinels;
    this.downAfterMs = downAfterMs;
    this.failoverTimeoutMs = failoverTimeoutMs;
    this.dir = mkdtempSync(join(tmpdir(), 'icow-node-sentinel-'));
    this.nodes = [];
  }

  async start() {
    this.exe = findServer();
    try {
      this.primary = await this._dataNode('a');
      this.replica = await this._dataNode('b', this.primary.port);
      await waitFor('replica in sync', () => this._synced(this.replica), 20_000);
      this.sentinels = [];
      for (let i = 0; i < this.count; i += 1) this.sentinels.push(await this._sentinel(i));
      // Failover needs every sentinel to know its peers (quorum) and the replica.
      await waitFor('sentinels know each other and the replica', () => this._settled(), 30_000);
    } catch (err) {
      await this.stop();
      throw err;
    }
    const hosts = this.sentinels.map((s) => `127.0.0.1:${s.port}`).join(',');
    this.url = `redis+sentinel://${hosts}/${SERVICE}/0`;
    return this;
  }

  async _dataNode(name, replicaOf = null) {
    const port = await freePort();
    const folder = join(this.dir, name);
    mkdirSync(folder);
    const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', folder, '--save', '', '--appendonly', 'no'];
    args.push('--daemonize', 'no', '--maxmemory-policy', 'noeviction', '--logfile', join(this.dir, `${name}.log`));
    if (replicaOf !== null) args.push('--replicaof', '127.0.0.1', String(replicaOf));
    const node = new Node(this.exe, args, port, join(this.dir, `${name}.log`));
    this.nodes.push(node);
    return node.start();
  }

  async _sentinel(i) {
    const port = await freePort();
    const conf = join(this.dir, `sentinel${i}.conf`); // sentinels rewrite their file: one each
    const log = join(this.dir, `sentinel${i}.log`);
    writeFileSync(
      conf,
      `port ${port}\nbind 127.0.0.1\ndir ${this.dir}\nlogfile ${log}\n` +
        `sentinel monitor ${SERVICE} 127.0.0.1 ${this.primary.port} 2\n` +
        `sentinel down-after-milliseconds ${SERVICE} ${this.downAfterMs}\n` +
        `sentinel failover-timeout ${SERVICE} ${this.failoverTimeoutMs}\n` +
        `sentinel parallel-syncs ${SERVICE} 1\n`,
    );
    const node = new Node(this.exe, [conf, '--sentinel'], port, log);
    this.nodes.push(node);
    return node.start();
  }

  async _synced(node) {
    const info = await node.with((c) => c.info('replication'));
    return /role:slave/.test(info) && /master_link_status:up/.test(info);
  }

  async _settled() {
    for (const s of this.sentinels) {
      const flat = await s.with((c) => c.call('SENTINEL', 'MASTER', SERVICE));
      const state = {};
      for (let i = 0; i + 1 < flat.length; i += 2) state[flat[i]] = flat[i + 1];
      if (Number(state['num-other-sentinels']) < this.sentinels.length - 1 || Number(state['num-slaves']) < 1) return false;
    }
    return true;
  }

  /** What every live sentinel says the primary is: 'host:port' strings (one when they agree). */
  async primaryAddr() {
    const out = new Set();
    for (const s of this.sentinels) {
      if (!s.alive) continue;
      const [host, port] = await s.with((c) => c.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', SERVICE));
      out.add(`${host}:${port}`);
    }
    return [...out];
  }

  /** Until every sentinel names `node` the primary and it serves writes as one. */
  async waitPromoted(node, timeoutMs = 60_000) {
    await waitFor(
      `promotion of the node on port ${node.port}`,
      async () => {
        const addr = await this.primaryAddr();
        const role = await node.with((c) => c.call('ROLE'));
        return addr.length === 1 && addr[0] === `127.0.0.1:${node.port}` && role[0] === 'master';
      },
      timeoutMs,
    );
  }

  /** SIGKILL the primary; resolve once the replica is promoted, with the milliseconds it took. */
  async failPrimary(timeoutMs = 60_000) {
    const start = Date.now();
    await this.primary.kill();
    await this.waitPromoted(this.replica, timeoutMs);
    [this.primary, this.replica] = [this.replica, this.primary];
    return Date.now() - start;
  }

  /**
   * Restart a killed data node (same port, empty) and make it a replica of the current primary
   * at once (REPLICAOF, as an operator would), as tests/sentinel.py does: the test, not the
   * sentinels' timing, decides when the returning node stops being a primary (the sentinels'
   * own conversion waits at least 8 s and took over 60 s under load). Resolves once it is a
   * replica in sync.
   */
  async revive(node, timeoutMs = 60_000) {
    await node.start();
    if (node === this.primary) throw new Error('revive: that node is the primary');
    await node.with((c) => c.call('REPLICAOF', '127.0.0.1', String(this.primary.port)));
    await waitFor(`node on port ${node.port} back as a replica`, () => this._synced(node), timeoutMs);
  }

  /**
   * Make a live old primary (after SENTINEL FAILOVER) a replica of the current primary at once
   * (REPLICAOF) instead of waiting for the sentinels' own conversion (8 s at the least, over a
   * minute under load); resolves once it replicates, in sync.
   */
  async demote(node, timeoutMs = 60_000) {
    if (node === this.primary) throw new Error('demote: that node is the primary');
    await node.with((c) => c.call('REPLICAOF', '127.0.0.1', String(this.primary.port)));
    await waitFor(`node on port ${node.port} a replica in sync`, () => this._synced(node), timeoutMs);
  }

  async stop() {
    for (const node of [...this.nodes].reverse()) await node.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
