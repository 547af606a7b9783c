// A throwaway ICOW fleet for the end-to-end tests: a Redis >= 7 on a free port (test/server.js),
// a model repository built by Python (icow.workers.samples), and a real `icow worker` process.

import { spawn } from 'node:child_process';
import { join } from 'node:path';

import { PYTHON, Server, python, stopProcess } from './server.js';

export { python, stopProcess };

const MODELS = ['mlp', 'multi', 'ident', 'text', 'scale'];

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

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Build the sample models (or only `models`) into a repository at `root`. */
export function buildRepo(root, models = MODELS) {
  const lines = BUILD_REPO.split('\n').filter((l) => !l.startsWith('samples.') || models.some((m) => l.includes(`"${m}"`)));
  python(lines.join('\n'), root);
}

/** Start `icow worker` on `repo` against `url` (any URL form); its output goes to `log` (last 200 chunks). */
export function startWorker(repo, url, name, log = [], extra = []) {
  const args = ['-m', 'icow.cli', 'worker', '--repo', repo, '--redis', url, '--name', name, '--threads', '1', ...extra];
  const worker = spawn(PYTHON, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  for (const stream of [worker.stdout, worker.stderr]) {
    stream.on('data', (chunk) => {
      log.push(chunk.toString());
      if (log.length > 200) log.shift();
    });
  }
  return worker;
}

export class Fleet {
  constructor() {
    this.server = new Server();
    this.worker = null;
    this.workerLog = [];
  }

  async start() {
    await this.server.start();
    this.url = this.server.url;
    this.conn = this.server.conn;
    this.repo = join(this.server.dir, 'repo');
    buildRepo(this.repo);
    this.name = `node-test-${process.pid}@local`;
    this.worker = startWorker(this.repo, this.url, this.name, this.workerLog);
    await this.waitReady();
    return this;
  }

  /** Every sample model has a live worker (icow:live:<m>, what icow_submit checks). */
  async waitReady(timeoutMs = 90_000) {
    const until = Date.now() + timeoutMs;
    while (Date.now() < until) {
      if (this.worker.exitCode !== null) throw new Error(`worker exited: ${this.workerLog.join('')}`);
      const live = await Promise.all(MODELS.map((m) => this.conn.zrangebyscore(`icow:live:${m}`, Date.now(), '+inf')));
      if (live.every((versions) => versions.length > 0)) return;
      await sleep(100);
    }
    throw new Error(`worker not ready in time: ${this.workerLog.join('')}`);
  }

  async stop() {
    await stopProcess(this.worker);
    await this.server.stop();
  }
}
