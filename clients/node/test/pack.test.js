// The documented install really works from a clean folder: `npm pack` the client, `npm install`
// the tarball into a fresh folder (its dependencies come from the registry, unlike
// `npm install ./clients/node`, which only links the folder), then load it and talk to Redis.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { Server } from './server.js';

const PKG = resolve(dirname(fileURLToPath(import.meta.url)), '..');

function run(cmd, args, cwd) {
  const proc = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: 300_000 });
  assert.equal(proc.status, 0, `${cmd} ${args.join(' ')} failed:\n${proc.stdout}\n${proc.stderr}`);
  return proc.stdout;
}

let dir;
let server;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'icow-node-pack-'));
  server = await new Server().start();
});

after(async () => {
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
});

test('the tarball holds the package, its README and its sources, nothing else', () => {
  const [{ files }] = JSON.parse(run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], PKG));
  const paths = files.map((f) => f.path).sort();
  assert.ok(paths.includes('package.json') && paths.includes('README.md') && paths.includes('src/index.js'));
  assert.deepEqual(
    paths.filter((p) => !['package.json', 'README.md'].includes(p) && !/^src\/[a-z]+\.js$/.test(p)),
    [],
  );
});

test('npm pack, npm install <tarball> in a fresh folder: import (ESM) and import() (CommonJS) load a working client', () => {
  const name = run('npm', ['pack', '--silent', '--pack-destination', dir], PKG).trim().split('\n').at(-1);
  const { version } = JSON.parse(readFileSync(join(PKG, 'package.json'), 'utf8'));
  assert.equal(name, `icow-client-${version}.tgz`);
  for (const readme of [join(PKG, 'README.md'), join(PKG, '..', '..', 'README.md')]) {
    assert.ok(readFileSync(readme, 'utf8').includes(`npm install /tmp/${name}`), `${readme} documents installing ${name}`);
  }
  const tarball = join(dir, name);
  const app = join(dir, 'app');
  run('mkdir', ['-p', app], dir);
  run('npm', ['init', '-y'], app);
  run('npm', ['install', '--no-audit', '--no-fund', tarball], app);
  const esm = `
import { Client, InvalidInput } from 'icow-client';
const c = new Client(process.argv[1]);
await c.ping();
await c.close();
console.log(typeof InvalidInput, 'ok');
`;
  assert.equal(run('node', ['--input-type=module', '-e', esm, server.url], app).trim(), 'function ok');
  const cjs = "import('icow-client').then((m) => console.log(typeof m.Client))";
  assert.equal(run('node', ['-e', cjs], app).trim(), 'function');
});
