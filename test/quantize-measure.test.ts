/**
 * `--measure`: each tensor's relative error under each type `--quantize auto` may choose, measured on the
 * checkpoint's own weights — on Gaussian weights it agrees with the error model; a block that loses nothing under
 * the smallest type measures so, and the planner spends its bytes on the others; the figures are cached beside the model
 * (elsewhere when that folder is read-only) and measured again when a weight file changes; misuse exits 2.
 */
import assert from 'node:assert/strict';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, utimesSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { makePlan, type PlanFlags } from '../src/cli/plan-command.js';
import { measureQuantError } from '../src/engine/measure-error.js';
import { loadModel } from '../src/engine/load.js';
import { AUTO_LEVELS, RELATIVE_ERROR, type AutoLevel } from '../src/planner/quantize-auto.js';
import { readModel } from '../src/reader/read-model.js';
import { writeTinyFamilyCheckpoint } from './helpers/tiny-llama-family.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import { cli } from './helpers/run-cli.js';

const root = tempDir('vramfit-measure-');
after(() => cleanup(root));

/** Rows of 256 and 512 values: every level is its own type (no K-quant fallbacks). */
const WIDE = { hidden_size: 256, intermediate_size: 512, num_hidden_layers: 4, vocab_size: 256 };

function checkpoint(name: string): string {
  return writeTinyFamilyCheckpoint(join(root, name), 'llama2', { seed: 5, config: WIDE }).dir;
}

/** Block `layer`'s matrices made constant (0.02): every type holds them but for its float16 scale, so they lose next to nothing to q4_0. */
async function lossless(dir: string, layer: number): Promise<void> {
  const s = await readModel(dir);
  const fd = openSync(join(dir, 'model.safetensors'), 'r+');
  try {
    for (const t of s.tensors.filter((x) => x.name.startsWith(`model.layers.${layer}.`) && x.shape.length === 2)) {
      const [start, end] = t.location!.range!;
      const f = new Float32Array((end - start) / 4).fill(0.02);
      writeSync(fd, new Uint8Array(f.buffer), 0, end - start, start);
    }
  } finally {
    closeSync(fd);
  }
}

const FLAGS: PlanFlags = { strategy: 'fit', ctx: '256', batch: '1', ubatch: '64', format: 'table', gpuMemory: '24GiB', quantize: 'auto' };

/** A cap on one GPU (every unit competes for its bytes) at which the auto plan mixes levels: between all-q4_0 and all-float. */
async function mixingCaps(dir: string): Promise<string> {
  // The GPUs' fixed overhead is ~300 MiB; the weights are ~10 MB as float32, ~1.5 MB in q4_0.
  for (let kib = 300 * 1024; kib < 330 * 1024; kib += 256) {
    const caps = `0=${kib}KiB`;
    try {
      const { plan } = await makePlan(dir, { ...FLAGS, maxMemory: caps, kvDtype: 'float16' });
      const types = new Set(plan.quantization!.units.filter((u) => u.name.startsWith('model.layers.')).map((u) => u.type));
      if (types.size > 1) return caps;
    } catch {
      // Not even q4_0 fits yet.
    }
  }
  throw new Error('no caps between all-q4_0 and all-float mix the levels');
}

describe('--measure', () => {
  it('on Gaussian weights the measured errors are the error model’s, within 15 %, and ordered best type first', async () => {
    const dir = checkpoint('gauss');
    const s = await readModel(dir);
    const r = await measureQuantError(s, dir);
    assert.equal(r.fromCache, false);
    const matrices = s.tensors.filter((t) => t.name.startsWith('model.layers.') && t.shape.length === 2);
    assert.equal(r.tensors, matrices.length + 2, 'every block matrix, the embedding and the head');
    for (const t of matrices) {
      const e = r.errors.get(t.name)!;
      for (const level of AUTO_LEVELS.slice(1) as Exclude<AutoLevel, 'keep'>[]) {
        const ratio = e[level]! / RELATIVE_ERROR[level]!;
        assert.ok(ratio > 0.85 && ratio < 1.15, `${t.name} ${level}: measured ${e[level]} vs model ${RELATIVE_ERROR[level]}`);
      }
      assert.ok(e.q8_0! < e.q6_k! && e.q6_k! < e.q5_k! && e.q5_k! < e.q4_k! && e.q4_k! < e.q4_0!, `${t.name}: ${JSON.stringify(e)}`);
    }
  });

  it('a block that loses nothing under q4_0 measures so and stays there while the others get the bytes; the table says the ranking was measured', async () => {
    const dir = checkpoint('lossless');
    await lossless(dir, 0);
    const s = await readModel(dir);
    const r = await measureQuantError(s, dir);
    const easy = r.errors.get('model.layers.0.mlp.down_proj.weight')!;
    const normal = r.errors.get('model.layers.1.mlp.down_proj.weight')!;
    assert.ok(easy.q4_0! < 1e-3 && normal.q4_0! > 0.05, `q4_0: constant block ${easy.q4_0}, Gaussian block ${normal.q4_0}`);

    const caps = await mixingCaps(dir);
    const level = (type: string): number => (type === 'float32' ? 0 : AUTO_LEVELS.indexOf(type as AutoLevel));
    const blockLevels = (plan: Awaited<ReturnType<typeof makePlan>>['plan']): Map<string, number> =>
      new Map(plan.quantization!.units.filter((u) => /^model\.layers\.\d+$/.test(u.name)).map((u) => [u.name.slice('model.layers.'.length), level(u.type)]));
    const measured = blockLevels((await makePlan(dir, { ...FLAGS, maxMemory: caps, kvDtype: 'float16', measure: true })).plan);
    // The lossless block is not raised above the shared starting type while the bytes go to another block.
    const easyLevel = measured.get('0')!;
    assert.equal(easyLevel, Math.max(...measured.values()), `block 0 at ${AUTO_LEVELS[easyLevel]}: ${JSON.stringify([...measured])}`);
    assert.ok(
      [...measured.values()].some((l) => l < easyLevel),
      JSON.stringify([...measured]),
    );
    // The error model sees four equal blocks and upgrades in name order: block 0 first.
    const modelled = blockLevels((await makePlan(dir, { ...FLAGS, maxMemory: caps, kvDtype: 'float16' })).plan);
    assert.notDeepEqual([...modelled], [...measured]);

    const out = await cli([
      'plan',
      dir,
      '--gpu-memory',
      '24GiB',
      '--max-memory',
      caps,
      '--ctx',
      '256',
      '--ubatch',
      '64',
      '--kv-dtype',
      'float16',
      '--quantize',
      'auto',
      '--measure',
    ]);
    assert.equal(out.code, 0, out.err);
    assert.match(out.out, /^quantize auto: KV cache float16 · types ranked by measured error \(\d+ tensors, from the cache; .*\.vramfit-quant-error\.json\)$/m);
    const model = await cli(['plan', dir, '--gpu-memory', '24GiB', '--max-memory', caps, '--ctx', '256', '--ubatch', '64', '--quantize', 'auto']);
    assert.match(model.out, /^quantize auto: KV cache \S+ · types ranked by the error model$/m);
  });

  it('caches beside the model, measures again when a weight file changes, falls back to the user cache when the folder cannot take it, and warns when neither can', async () => {
    const dir = checkpoint('cache');
    const s = await readModel(dir);
    const first = await measureQuantError(s, dir);
    assert.equal(first.cacheFile, join(dir, '.vramfit-quant-error.json'));
    const again = await measureQuantError(s, dir);
    assert.equal(again.fromCache, true);
    assert.deepEqual([...again.errors], [...first.errors]);
    // Touched: the cache no longer vouches for the file.
    const later = new Date(Date.now() + 5000);
    utimesSync(join(dir, 'model.safetensors'), later, later);
    assert.equal((await measureQuantError(s, dir)).fromCache, false);

    // A folder where the cache file would go: the model's folder cannot take it (as a read-only one, even for root).
    const ro = checkpoint('unwritable');
    mkdirSync(join(ro, '.vramfit-quant-error.json'));
    const xdg = join(root, 'xdg');
    const saved = process.env['XDG_CACHE_HOME'];
    process.env['XDG_CACHE_HOME'] = xdg;
    try {
      const r = await measureQuantError(await readModel(ro), ro);
      assert.ok(r.cacheFile?.startsWith(join(xdg, 'vramfit', 'quant-error-')), r.cacheFile);
      assert.deepEqual(r.warnings, []);
      assert.equal((await measureQuantError(await readModel(ro), ro)).fromCache, true);
      assert.deepEqual(readdirSync(ro).sort(), ['.vramfit-quant-error.json', 'config.json', 'model.safetensors'], 'no temp file left behind');
      // Neither place writable: measured all the same, with a warning.
      process.env['XDG_CACHE_HOME'] = join(ro, 'config.json');
      const w = await measureQuantError(await readModel(ro), ro);
      assert.equal(w.cacheFile, undefined);
      assert.match(w.warnings.join('\n'), /^--measure: could not keep the figures in .*; the next run measures again$/);
    } finally {
      if (saved === undefined) delete process.env['XDG_CACHE_HOME'];
      else process.env['XDG_CACHE_HOME'] = saved;
    }
  });

  it('run --quantize auto --measure loads the measured choice and says so in its plan', async () => {
    const dir = checkpoint('run');
    const m = await loadModel(dir, { devices: 'virtual:2', maxMemory: '0=40MiB,1=40MiB', ctx: 64, threads: 1, quantize: 'auto', measure: true });
    try {
      const q = m.plan.quantization!;
      assert.equal(q.ranking?.by, 'measured');
      assert.ok(existsSync(join(dir, '.vramfit-quant-error.json')));
      const cache = JSON.parse(readFileSync(join(dir, '.vramfit-quant-error.json'), 'utf8')) as { tensors: Record<string, unknown> };
      assert.ok(Object.keys(cache.tensors).length > 0);
    } finally {
      m.dispose();
    }
  });

  it('exits 2 with one line: without --quantize auto, on a config-only model, on already quantized weights', async () => {
    const dir = checkpoint('errors');
    for (const [args, re] of [
      [['plan', dir, '--measure'], /^vramfit: --measure: ranks the types --quantize auto chooses; add --quantize auto\n$/],
      [['plan', dir, '--quantize', 'q8_0', '--measure'], /^vramfit: --measure: ranks the types --quantize auto chooses/],
      [['run', dir, '--input-ids', '1', '--measure'], /^vramfit: --measure: ranks the types --quantize auto chooses/],
      [
        ['plan', 'llama-2-7b', '--gpu-memory', '24GiB,24GiB', '--quantize', 'auto', '--measure'],
        /^vramfit: --measure: needs the weights at hand; .* has only a config/,
      ],
    ] as const) {
      const r = await cli([...args]);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.err}`);
      assert.match(r.err, re);
      assert.equal(r.err.trim().split('\n').length, 1, r.err);
    }
  });
});
