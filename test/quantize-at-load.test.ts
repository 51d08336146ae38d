/**
 * `--quantize TYPE`: float matrices converted to ggml block types at load, planned at their quantized size. A model
 * quantized at load computes exactly what the same weights quantized into a GGUF compute; the type rules (head at
 * least Q6_K, routers and vectors kept, llama.cpp's fallbacks for rows that are not whole blocks) hold.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { loadModel, type LoadOptions } from '../src/engine/load.js';
import { chooseType, parseQuantizeType, quantizeSkeleton, QUANTIZE_TYPES } from '../src/planner/quantize.js';
import { readModel } from '../src/reader/read-model.js';
import { tensorBytes } from '../src/reader/dtypes.js';
import { greedy, maxAbsDiff, type GreedyRun } from './helpers/engine-harness.js';
import { writeTinyFamilyCheckpoint } from './helpers/tiny-llama-family.js';
import { writeTinyMoeCheckpoint } from './helpers/tiny-moe.js';
import { writeTinyGguf, writeTinyMoeGguf } from './helpers/tiny-gguf.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import { cli } from './helpers/run-cli.js';

const root = tempDir('vramfit-quantize-');
after(() => cleanup(root));

const OPTS: LoadOptions = { ctx: 64, ubatch: 4, kvDtype: 'float32', threads: 1 };

async function run(model: string, opts: LoadOptions): Promise<GreedyRun> {
  const m = await loadModel(model, { ...OPTS, ...opts });
  try {
    return await greedy(m);
  } finally {
    m.dispose();
  }
}

describe('--quantize type rules', () => {
  it('matrices take the type, the head at least q6_k, and rows that are not whole blocks fall back as llama.cpp does', () => {
    assert.deepEqual(chooseType('matrix', 4096, 'q4_k'), { to: 'q4_k' });
    assert.deepEqual(chooseType('head', 4096, 'q4_k'), { to: 'q6_k' });
    assert.deepEqual(chooseType('head', 4096, 'q8_0'), { to: 'q8_0' });
    assert.deepEqual(chooseType('embedding', 4096, 'q4_0'), { to: 'q4_0' });
    assert.equal(chooseType('matrix', 4160, 'q4_k')?.to, 'q5_0');
    assert.equal(chooseType('matrix', 4160, 'q5_k')?.to, 'q5_1');
    assert.equal(chooseType('head', 4160, 'q4_k')?.to, 'q8_0');
    assert.deepEqual(chooseType('matrix', 4100, 'q4_k'), { to: 'float16', fallback: 'rows of 4100 values are not whole 32-value blocks' });
    assert.equal(chooseType('router', 4096, 'q4_k'), undefined);
    assert.equal(chooseType('keep', 4096, 'q4_k'), undefined);
  });

  it('a skeleton is planned at its quantized size: vectors and routers kept, the tied embedding treated as the head', async () => {
    const dense = writeTinyFamilyCheckpoint(join(root, 'rules-dense'), 'llama3-tied');
    const s = await readModel(dense.dir);
    const { skeleton, choices } = quantizeSkeleton(s, 'q8_0');
    const byName = new Map(skeleton.tensors.map((t) => [t.name, t]));
    for (const t of s.tensors) {
      const q = byName.get(t.name)!;
      if (t.shape.length === 1) assert.equal(q.dtype, t.dtype, t.name);
    }
    assert.equal(byName.get('model.embed_tokens.weight')!.dtype, 'q8_0');
    assert.equal(choices.find((c) => c.name === 'model.embed_tokens.weight')!.role, 'head');
    const bytes = (x: typeof s): number => x.tensors.reduce((n, t) => n + tensorBytes(t.shape, t.dtype), 0);
    assert.ok(bytes(skeleton) < bytes(s) / 3, `q8_0 planned at ${bytes(skeleton)} bytes, float32 at ${bytes(s)}`);

    const moe = writeTinyMoeCheckpoint(join(root, 'rules-moe'), 'qwen3-moe-gguf');
    const q = quantizeSkeleton(await readModel(moe.dir), 'q4_k');
    const router = q.choices.find((c) => /\.mlp\.gate\.weight$/.test(c.name));
    assert.equal(router, undefined, 'routers are not converted');
    assert.match(
      q.skeleton.warnings.at(-1)!,
      /--quantize q4_k: \d+ tensor\(s\) take another type because rows of 64 values are not whole 256-value blocks of q4_k/,
    );
  });

  it('bad values are refused by name', () => {
    assert.throws(() => parseQuantizeType('q3'), /--quantize: expected one of q8_0, q6_k, q5_k, q4_k, q4_0, got q3/);
    assert.throws(() => parseQuantizeType('auto'), /--quantize: auto .* is not available yet/);
    assert.deepEqual(
      QUANTIZE_TYPES.map((t) => parseQuantizeType(t.toUpperCase())),
      [...QUANTIZE_TYPES],
    );
  });
});

describe('engine: weights quantized at load', () => {
  for (const name of ['llama2', 'qwen2'] as const) {
    it(`${name}: --quantize q8_0 gives the logits of the same weights read from a Q8_0 GGUF, on one device and split`, async () => {
      const ck = writeTinyFamilyCheckpoint(join(root, `${name}-q8`), name, { seed: 4 });
      const gguf = writeTinyGguf(ck, 'q8_0');
      for (const devices of ['virtual:1', 'virtual:2']) {
        const fromGguf = await run(gguf, { devices });
        const atLoad = await run(ck.dir, { devices, quantize: 'q8_0' });
        const diff = Math.max(maxAbsDiff(atLoad.prompt, fromGguf.prompt), maxAbsDiff(atLoad.steps, fromGguf.steps));
        // Same bytes (rows that are not whole blocks in float16 in both); only llama.cpp's permuted rope rows differ.
        assert.ok(diff < 1e-4, `${devices}: logits differ by ${diff}`);
        assert.deepEqual(atLoad.ids, fromGguf.ids, `${devices}: greedy tokens`);
      }
    });
  }

  it('MoE experts are quantized part by part into their stack (q8_0 vs a Q8_0 GGUF)', async () => {
    const ck = writeTinyMoeCheckpoint(join(root, 'moe-q8'), 'qwen3-moe-gguf', { seed: 6 });
    const fromGguf = await run(writeTinyMoeGguf(ck, 'q8_0'), { devices: 'virtual:2' });
    const atLoad = await run(ck.dir, { devices: 'virtual:2', quantize: 'q8_0' });
    const diff = Math.max(maxAbsDiff(atLoad.prompt, fromGguf.prompt), maxAbsDiff(atLoad.steps, fromGguf.steps));
    assert.ok(diff < 1e-4, `logits differ by ${diff}`);
    assert.deepEqual(atLoad.ids, fromGguf.ids);
  });

  it('q4_k (falling back to q5_0/q8_0 on 64-wide rows) errs more than q8_0, stays near float32, and the plan holds less', async () => {
    const ck = writeTinyFamilyCheckpoint(join(root, 'llama-q4'), 'llama2', { seed: 4 });
    const load = (quantize?: 'q8_0' | 'q4_k') => loadModel(ck.dir, { ...OPTS, devices: 'virtual:1', ...(quantize ? { quantize } : {}) });
    const [full, q8, q4] = [await load(), await load('q8_0'), await load('q4_k')];
    try {
      const [a, b, c] = [await greedy(full), await greedy(q8), await greedy(q4)];
      const spread = Math.max(...a.prompt.map((row) => Math.max(...Array.from(row, Math.abs))));
      const e8 = maxAbsDiff(b.prompt, a.prompt);
      const e4 = maxAbsDiff(c.prompt, a.prompt);
      assert.ok(e8 > 0 && e8 < e4 && e4 < 0.25 * spread, `errors q8_0 ${e8}, q4_k ${e4}, largest |logit| ${spread}`);
      const weights = (m: typeof full): number => m.plan.devices.reduce((n, d) => n + d.weights, 0);
      assert.ok(weights(q4) < weights(q8) && weights(q8) < weights(full) / 3, `planned weights ${weights(q4)} < ${weights(q8)} < ${weights(full)} / 3`);
    } finally {
      for (const m of [full, q8, q4]) m.dispose();
    }
  });
});

describe('vramfit plan / run --quantize', () => {
  it('plan --quantize q8_0 --format json plans fewer weight bytes; other exports and --compat are refused', async () => {
    const ck = writeTinyFamilyCheckpoint(join(root, 'cli'), 'llama2');
    const base = ['plan', ck.dir, '--gpu-memory', '1GiB', '--ctx', '64', '--format', 'json'];
    const plain = await cli(base);
    const quant = await cli([...base, '--quantize', 'q8_0']);
    assert.equal(plain.code, 0, plain.err);
    assert.equal(quant.code, 0, quant.err);
    const w = (out: string): number => (JSON.parse(out) as { devices: { weights: number }[] }).devices.reduce((n, d) => n + d.weights, 0);
    assert.ok(w(quant.out) < w(plain.out) / 3, `${w(quant.out)} vs ${w(plain.out)}`);
    const exported = await cli([...base.slice(0, -2), '--format', 'accelerate', '--quantize', 'q8_0']);
    assert.equal(exported.code, 2);
    assert.match(
      exported.err,
      /^vramfit: --quantize: transformers \(--format accelerate\) loads float weights, not ggml block types; .*vramfit quantize for llama\.cpp\n$/,
    );
    const llama = await cli([...base.slice(0, -2), '--format', 'llama.cpp', '--quantize', 'q8_0']);
    assert.equal(llama.code, 2);
    assert.match(llama.err, /^vramfit: --quantize: llama\.cpp reads the types from the GGUF file itself: write it with vramfit quantize MODEL -o OUT\.gguf/);
    const bad = await cli([...base, '--quantize', 'int4']);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /--quantize: expected one of/);
  });

  it('run --quantize q4_0 generates', async () => {
    const ck = writeTinyFamilyCheckpoint(join(root, 'cli-run'), 'llama2');
    const r = await cli(['run', ck.dir, '--input-ids', '1,2,3', '--max-new-tokens', '3', '--quantize', 'q4_0', '--threads', '1', '--ctx', '32', '--json']);
    assert.equal(r.code, 0, r.err);
    assert.equal((JSON.parse(r.out) as { generated_ids: number[] }).generated_ids.length, 3);
  });
});
