/**
 * `--kv-dtype q8_0|q4_0`: the KV cache in ggml's block types (written by set_rows, read by flash attention, as
 * llama.cpp's -ctk/-ctv with -fa), on virtual CPU devices and on Vulkan GPUs, planned at its block size.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { main } from '../src/cli/main.js';
import { loadModel, type LoadOptions } from '../src/engine/load.js';
import { assertUnderCapsAsPredicted, greedy, maxAbsDiff, type GreedyRun } from './helpers/engine-harness.js';
import { writeTinyFamilyCheckpoint } from './helpers/tiny-llama-family.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import { vulkanSkip } from './helpers/vulkan.js';

const root = tempDir('vramfit-kv-quant-');
after(() => cleanup(root));

// qwen3's tiny heads are 32 wide: one block per head.
const ck = writeTinyFamilyCheckpoint(join(root, 'qwen3'), 'qwen3', { seed: 4 });
const OPTS: LoadOptions = { ctx: 64, ubatch: 4, threads: 1 };

async function run(opts: LoadOptions): Promise<{ run: GreedyRun; kv: number }> {
  const m = await loadModel(ck.dir, { ...OPTS, ...opts });
  try {
    const r = await greedy(m);
    assertUnderCapsAsPredicted(m.report(), String(opts.kvDtype));
    return { run: r, kv: m.plan.devices.reduce((n, d) => n + d.kv, 0) };
  } finally {
    m.dispose();
  }
}

/** Largest logit change from the F16 cache (tiny random model: logits up to ~7), and the bytes per value. */
const KV_CASES = [
  { kvDtype: 'q8_0', tolerance: 0.2, bytes: 34 / 32 },
  { kvDtype: 'q4_0', tolerance: 2, bytes: 18 / 32 },
] as const;

for (const devices of ['virtual:2', 'gpu']) {
  const skip = devices === 'gpu' ? vulkanSkip(2) : false;
  describe(`quantized KV caches on ${devices}`, { skip }, () => {
    for (const c of KV_CASES) {
      it(`${c.kvDtype}: the F16 cache's first tokens, logits within ${c.tolerance}, the cache ${c.bytes * 50}% of F16's as planned and measured`, async () => {
        const f16 = await run({ devices, kvDtype: 'float16' });
        const q = await run({ devices, kvDtype: c.kvDtype });
        const diff = Math.max(maxAbsDiff(q.run.prompt, f16.run.prompt), maxAbsDiff(q.run.steps, f16.run.steps));
        assert.ok(diff > 0 && diff < c.tolerance, `logits differ by ${diff}`);
        assert.deepEqual(q.run.ids.slice(0, 3), f16.run.ids.slice(0, 3));
        assert.equal(q.kv, (f16.kv / 2) * c.bytes);
      });
    }
  });
}

describe('--kv-dtype errors', () => {
  async function cli(args: string[]): Promise<{ code: number; err: string }> {
    let err = '';
    const code = await main(args, { stdout: () => undefined, stderr: (s) => (err += s) });
    return { code, err };
  }

  it('heads that are not whole 32-value blocks, and unknown types, are refused by flag', async () => {
    const narrow = writeTinyFamilyCheckpoint(join(root, 'llama2'), 'llama2');
    const r = await cli(['run', narrow.dir, '--input-ids', '1,2', '--max-new-tokens', '1', '--kv-dtype', 'q8_0', '--threads', '1']);
    assert.equal(r.code, 2);
    assert.match(r.err, /--kv-dtype: q8_0 stores 32-value blocks, and this model's heads are 16 wide; use float16/);
    const bad = await cli(['run', narrow.dir, '--input-ids', '1,2', '--kv-dtype', 'q5_k']);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /--kv-dtype: the engine keeps the KV cache in float32, float16, q8_0, q4_0, not q5_k/);
  });
});
