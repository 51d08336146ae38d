/**
 * Where a file is expected, something else (a named pipe, a folder) is refused with the path and what it
 * is, exit 2 — never a read that blocks forever or an "internal error: EISDIR". Run in child processes,
 * so a read that does block is killed by the timeout and fails the test instead of hanging the suite.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import { TINY_LLAMA_CONFIG } from './helpers/tiny-models.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

function inspect(path: string): { status: number | null; stderr: string; signal: NodeJS.Signals | null } {
  const r = spawnSync(
    process.execPath,
    [
      '--import',
      'tsx',
      '--input-type=module',
      '-e',
      `import { main } from './src/cli/main.ts'; process.exitCode = await main(['inspect', ${JSON.stringify(path)}]);`,
    ],
    { cwd: ROOT, encoding: 'utf8', timeout: 20_000 },
  );
  return { status: r.status, stderr: r.stderr, signal: r.signal };
}

const mkfifo = (path: string): void => {
  const r = spawnSync('mkfifo', [path]);
  assert.equal(r.status, 0, 'mkfifo works here');
};

describe('file types', () => {
  for (const name of ['model.safetensors', 'model.gguf', 'skeleton.json', 'pytorch_model.bin']) {
    it(`a named pipe given as ${name} is refused, not read`, () => {
      const dir = tempDir();
      try {
        const p = join(dir, name);
        mkfifo(p);
        const r = inspect(p);
        assert.equal(r.signal, null, 'the read did not block');
        assert.equal(r.status, 2);
        assert.equal(r.stderr.trim(), `vramfit: ${p}: is a named pipe, not a file`);
      } finally {
        cleanup(dir);
      }
    });
  }

  it('a model folder whose config.json is a named pipe or a folder says which', () => {
    const dir = tempDir();
    try {
      const pipe = join(dir, 'a');
      mkdirSync(pipe);
      mkfifo(join(pipe, 'config.json'));
      assert.equal(inspect(pipe).stderr.trim(), `vramfit: ${join(pipe, 'config.json')}: is a named pipe, not a file`);
      const folder = join(dir, 'b');
      mkdirSync(join(folder, 'config.json'), { recursive: true });
      writeFileSync(join(folder, 'unrelated.txt'), JSON.stringify(TINY_LLAMA_CONFIG));
      const r = inspect(folder);
      assert.equal(r.status, 2);
      assert.equal(r.stderr.trim(), `vramfit: ${join(folder, 'config.json')}: is a folder, not a file`);
    } finally {
      cleanup(dir);
    }
  });
});
