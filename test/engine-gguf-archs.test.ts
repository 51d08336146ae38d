/**
 * Every engine architecture llama.cpp defines a GGUF layout for runs from GGUF like from safetensors: a tiny random
 * checkpoint written both ways (GGUF in F32, F16 and Q8_0, as llama.cpp's converter lays it out) gives the same
 * greedy tokens, and logits within the type's error, on one device and split over two.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { loadModel, type LoadOptions } from '../src/engine/load.js';
import { readModel } from '../src/reader/read-model.js';
import { writeTinyMoeCheckpoint, type TinyMoeName } from './helpers/tiny-moe.js';
import { writeTinyMoeGguf, type GgufMatrixDtype } from './helpers/tiny-gguf.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import { greedy, maxAbsDiff, type GreedyRun } from './helpers/engine-harness.js';

const root = tempDir('vramfit-engine-gguf-');
after(() => cleanup(root));

const OPTS: LoadOptions = { ctx: 64, ubatch: 4, kvDtype: 'float32', threads: 1 };

/** Largest logit error accepted per stored type (tiny random weights: logits of order 1). */
const TOLERANCE: Record<GgufMatrixDtype, number> = { float32: 1e-4, float16: 0.02, q8_0: 0.3 };

async function run(model: string, devices: string): Promise<GreedyRun> {
  const m = await loadModel(model, { ...OPTS, devices });
  try {
    return await greedy(m);
  } finally {
    m.dispose();
  }
}

describe('engine: MoE GGUFs (stacked ffn_*_exps experts)', () => {
  for (const name of ['mixtral', 'qwen3-moe-gguf'] as TinyMoeName[]) {
    it(`${name}: the GGUF maps to the safetensors model's modules, experts split per expert`, async () => {
      const ck = writeTinyMoeCheckpoint(join(root, `${name}-map`), name, { seed: 5 });
      const fromSt = await readModel(ck.dir);
      const fromGguf = await readModel(writeTinyMoeGguf(ck));
      assert.equal(fromGguf.family, fromSt.family);
      assert.deepEqual(
        fromGguf.tensors.map((t) => `${t.name} ${t.shape.join('x')}`).sort(),
        fromSt.tensors.map((t) => `${t.name} ${t.shape.join('x')}`).sort(),
      );
      assert.equal(fromGguf.attention?.numExperts, fromSt.attention?.numExperts);
    });

    for (const dtype of ['float32', 'float16', 'q8_0'] as GgufMatrixDtype[]) {
      it(`${name} ${dtype}: greedy tokens equal the safetensors run's, logits within ${TOLERANCE[dtype]}, on one device and split over two`, async () => {
        const ck = writeTinyMoeCheckpoint(join(root, `${name}-${dtype}`), name, { seed: 5 });
        const expected = await run(ck.dir, 'virtual:1');
        const gguf = writeTinyMoeGguf(ck, dtype);
        for (const devices of ['virtual:1', 'virtual:2']) {
          const got = await run(gguf, devices);
          const diff = Math.max(maxAbsDiff(got.prompt, expected.prompt), maxAbsDiff(got.steps, expected.steps));
          assert.ok(diff < TOLERANCE[dtype], `${devices}: logits differ by ${diff}`);
          if (dtype !== 'q8_0') assert.deepEqual(got.ids, expected.ids, `${devices}: greedy tokens`);
          else assert.deepEqual(got.ids.slice(0, 3), expected.ids.slice(0, 3), `${devices}: first greedy tokens`);
        }
      });
    }
  }
});
