/**
 * CPU devices keep Q4_0/Q4_K matrices in the CPU backend's repack buffer (interleaved for its GEMM kernels), as
 * llama.cpp does: the logits equal the plain layout's within the kernels' rounding, the caps and predictions hold,
 * and VRAMFIT_CPU_REPACK=0 turns it off.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';
import { loadModel, type LoadOptions } from '../src/engine/load.js';
import { assertUnderCapsAsPredicted, greedy, maxAbsDiff, type GreedyRun } from './helpers/engine-harness.js';
import { writeTinyFamilyCheckpoint } from './helpers/tiny-llama-family.js';
import { writeTinyChatglmCheckpoint } from './helpers/tiny-chatglm.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';

const root = tempDir('vramfit-repack-');
after(() => cleanup(root));

async function run(dir: string, opts: LoadOptions, repack: boolean): Promise<{ run: GreedyRun; repacked: number }> {
  const before = process.env['VRAMFIT_CPU_REPACK'];
  if (!repack) process.env['VRAMFIT_CPU_REPACK'] = '0';
  try {
    const m = await loadModel(dir, { ctx: 64, ubatch: 8, threads: 1, kvDtype: 'float32', ...opts });
    try {
      assertUnderCapsAsPredicted(m.report());
      const repacked = m.report().reduce((n, d) => n + (d.breakdown['weights-repacked'] ?? 0), 0);
      return { run: await greedy(m), repacked };
    } finally {
      m.dispose();
    }
  } finally {
    if (before === undefined) delete process.env['VRAMFIT_CPU_REPACK'];
    else process.env['VRAMFIT_CPU_REPACK'] = before;
  }
}

describe('CPU repack of quantized matrices', () => {
  for (const [label, write] of [
    ['llama2', (d: string) => writeTinyFamilyCheckpoint(d, 'llama2', { seed: 2 }).dir],
    ['qwen3', (d: string) => writeTinyFamilyCheckpoint(d, 'qwen3', { seed: 2 }).dir],
    // ChatGLM reads its fused matrices through views: those stay plain, the others repack.
    ['chatglm2', (d: string) => writeTinyChatglmCheckpoint(d, 'chatglm2', { seed: 2 }).dir],
  ] as const) {
    it(`${label} --quantize q4_0: the same tokens and logits as the plain layout, on one and two devices`, async () => {
      const dir = write(join(root, label));
      for (const devices of ['virtual:1', 'virtual:2']) {
        const plain = await run(dir, { devices, quantize: 'q4_0' }, false);
        const packed = await run(dir, { devices, quantize: 'q4_0' }, true);
        const diff = Math.max(maxAbsDiff(packed.run.prompt, plain.run.prompt), maxAbsDiff(packed.run.steps, plain.run.steps));
        assert.ok(diff < 1e-3, `${devices}: logits differ by ${diff}`);
        assert.deepEqual(packed.run.ids, plain.run.ids);
        assert.equal(plain.repacked, 0);
        assert.ok(packed.repacked > 0, `${devices}: nothing was repacked`);
      }
    });
  }

  it('a worker thread that loaded ggml and ended leaves no hook behind: the next repack log does not abort the process', async () => {
    // ggml's log hook is process-wide; one registered from a finished thread aborts on the next message
    // (the repack logs one per tensor), which is how `serve` followed by a run in one process died.
    const binding = new URL('../src/engine/ggml/binding.ts', import.meta.url).href;
    const boot = `import('tsx/esm/api').then(({ register }) => { register(); return import(${JSON.stringify(binding)}); }).then((b) => { b.loadGgml(); });`;
    const worker = new Worker(boot, { eval: true });
    const code = await new Promise<number>((resolve, reject) => worker.once('exit', resolve).once('error', reject));
    assert.equal(code, 0);
    const dir = writeTinyFamilyCheckpoint(join(root, 'after-worker'), 'llama2', { seed: 3 }).dir;
    const packed = await run(dir, { devices: 'virtual:1', quantize: 'q4_0' }, true);
    assert.ok(packed.repacked > 0);
  });
});
