// A throwaway Redis (>= 7: the embedded valkey-server of the ICOW venv, or one on PATH) on a free
// loopback port, and ICOW's Redis Functions library (icow/lua/icow.lua) loaded into it the way
// workers load it at start.

import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { Redis } from 'ioredis';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** The Python that has ICOW installed: $ICOW_PYTHON (set by dev.py), else the repo's .venv. */
export const PYTHON = process.env.ICOW_PYTHON || [join(ROOT, '.venv', 'bin', 'python')].find(existsSync) || 'python3';

/** Run Python code with ICOW importable; returns stdout (throws with stderr on failure). */
export function python(code, ...args) {
  const proc = spawnSync(PYTHON, ['-c', code, ...args], { encoding: 'utf8', timeout: 120_000 });
  if (proc.status !== 0) throw new Error(`python failed (${proc.status}): ${proc.stderr}`);
  return proc.stdout;
}

function which(exe) {
  const dirs = (process.env.PATH ?? '').split(delimiter);
  return dirs.map((d) => join(d, exe)).find((p) => existsSync(p)) ?? null;
}

/** $ICOW_REDIS_SERVER, else ICOW's own choice (icow.cli.fleet.find_redis_server), else PATH. */
export function findServer() {
  if (process.env.ICOW_REDIS_SERVER) return process.env.ICOW_REDIS_SERVER;
  try {
    const found = python('from icow.cli.fleet import find_redis_server as f; print(f() or "")').trim();
    if (found) return found;
  } catch {
    // no ICOW Python here: look on PATH
  }
  const exe = which('valkey-server') ?? which('redis-server');
  if (exe === null) throw new Error('no redis-server >= 7 found: set ICOW_REDIS_SERVER or create the ICOW venv (python dev.py)');
  return exe;
}

export function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

/** ICOW's library source as workers load it (the version placeholder replaced by its SHA-1). */
export function library() {
  const source = readFileSync(join(ROOT, 'icow', 'lua', 'icow.lua'), 'utf8');
  const sha = createHash('sha1').update(source).digest('hex');
  return source.replace('__ICOW_LIBRARY_SHA__', sha);
}

export async function installFunctions(conn) {
  await conn.call('FUNCTION', 'LOAD', 'REPLACE', library());
}

function stop(proc, timeoutMs = 10_000) {
  if (proc === null || proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((res) => {
    const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
    proc.once('exit', () => {
      clearTimeout(timer);
      res();
    });
    proc.kill('SIGTERM');
  });
}

export class Server {
  constructor() {
    this.proc = null;
    this.dir = mkdtempSync(join(tmpdir(), 'icow-node-redis-'));
  }

  /** Start the server; `this.url` and `this.conn` (an admin connection) are then set. */
  async start() {
    const port = await freePort();
    this.port = port;
    this.url = `redis://127.0.0.1:${port}/0`;
    const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', this.dir];
    this.proc = spawn(findServer(), args, { stdio: 'ignore' });
    this.conn = new Redis(this.url, { retryStrategy: () => 50 });
    this.conn.on('error', () => {});
    await this.conn.ping(); // queued until the server accepts connections
    return this;
  }

  /** A URL for `user` / `password` on this server. */
  urlFor(user, password) {
    return `redis://${encodeURIComponent(user)}:${encodeURIComponent(password)}@127.0.0.1:${this.port}/0`;
  }

  async stop() {
    this.conn?.disconnect();
    await stop(this.proc);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export { stop as stopProcess };
