import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { main } from '../src/cli/main.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import { writeTinyFamilyCheckpoint } from './helpers/tiny-llama-family.js';
import { writeTinyGguf } from './helpers/tiny-gguf.js';

const root = tempDir('vramfit-exports-');
after(() => cleanup(root));

async function run(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(argv, { stdout: (s) => (out += s), stderr: (s) => (err += s) });
  return { code, out, err };
}

describe('plan exports for llama.cpp', () => {
  it('a GGUF plan with blocks in RAM becomes -ngl, --tensor-split counts and -ot overrides', async () => {
    const ck = writeTinyFamilyCheckpoint(join(root, 'llama2'), 'llama2', { dtype: 'float32', seed: 2 });
    const gguf = writeTinyGguf(ck);
    const json = await run(
      'plan',
      gguf,
      '--gpu-memory',
      '1GiB,1GiB',
      '--max-memory',
      '0=1GiB,1=1GiB,cpu=1GiB',
      '--format',
      'json',
      '--target',
      'llama.cpp',
      '--overhead',
      '0',
      '--ctx',
      '64',
    );
    assert.equal(json.code, 0, json.err);
    const whole = JSON.parse(json.out) as { devices: { id: string; modules: string[]; used: number }[] };
    const layers = Number((await import('node:fs')).readFileSync(join(ck.dir, 'config.json'), 'utf8').match(/"num_hidden_layers": (\d+)/)![1]);
    assert.ok(
      whole.devices.some((d) => d.id === '1' && d.modules.length > 0),
      'both GPUs used when there is room',
    );

    // GPU 0 keeps exactly what it held; GPU 1 is too small for a block, so the rest stays in RAM.
    const first = whole.devices.find((d) => d.id === '0')!;
    const r = await run(
      'plan',
      gguf,
      '--gpu-memory',
      '1GiB,1GiB',
      '--max-memory',
      `0=${first.used}B,1=1000B,cpu=1GiB`,
      '--format',
      'llama.cpp',
      '--overhead',
      '0',
      '--ctx',
      '64',
    );
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /CUDA_VISIBLE_DEVICES=0,1 llama-server -m \S+\.gguf /);
    // Layer il goes to the first GPU whose cumulative count exceeds il; blocks in RAM are moved back by -ot.
    assert.ok(r.out.includes(`-ngl ${layers + 1} --split-mode layer --tensor-split 1,${layers}`), r.out);
    // Single-quoted for the shell, so the regex's backslashes reach llama.cpp as written.
    assert.ok(r.out.includes(`-ot 'blk\\.(${Array.from({ length: layers - 1 }, (_, i) => i + 1).join('|')})\\.=CPU'`), r.out);
    assert.ok(r.out.includes("-ot '^output\\.=CPU'"), r.out);
    assert.match(r.out, / -c 64 /);
  });

  it('quotes a model path for the shell: pasted, the command runs nothing hidden in the path', async () => {
    const { shellWord } = await import('../src/planner/export/shell.js');
    const { spawnSync } = await import('node:child_process');
    for (const word of ['plain/path-1.gguf', 'with space.gguf', "it's.gguf", '$(touch /tmp/vramfit-pwned).gguf', '`id`;rm -rf x', 'a"b\\c$HOME']) {
      const echoed = spawnSync('sh', ['-c', `printf %s ${shellWord(word)}`], { encoding: 'utf8' }).stdout;
      assert.equal(echoed, word, `the shell sees exactly ${word}`);
    }
    const ck = writeTinyFamilyCheckpoint(join(root, '$(echo pwned)'), 'llama2', { dtype: 'float32', seed: 2 });
    const gguf = writeTinyGguf(ck);
    const r = await run('plan', gguf, '--gpu-memory', '1GiB', '--format', 'llama.cpp', '--overhead', '0', '--ctx', '64');
    assert.equal(r.code, 0, r.err);
    assert.ok(r.out.includes(`-m '${gguf}'`), r.out);
  });

  it('refuses llama.cpp flags for a safetensors model, naming the flag', async () => {
    const ck = writeTinyFamilyCheckpoint(join(root, 'st'), 'llama2', { dtype: 'float32', seed: 2 });
    const r = await run('plan', ck.dir, '--gpu-memory', '1GiB', '--format', 'llama.cpp');
    assert.equal(r.code, 2);
    assert.match(r.err, /--format: llama\.cpp flags need a GGUF model/);
  });
});
