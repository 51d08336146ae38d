/**
 * Predicted vs measured, as a property: over random tiny models (Llama family and ChatGLM, F32/F16),
 * splits (the planner's own over 1–4 devices, one layer on the first device, the embedding alone, the
 * head alone), contexts, micro-batches and KV dtypes, a load whose every cap is exactly the plan's own
 * prediction succeeds, generates, and each device's measured peak is at or under its cap and within
 * 2 % of the prediction.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import { loadModel, type LoadOptions } from '../src/engine/load.js';
import { assertUnderCapsAsPredicted, greedy } from './helpers/engine-harness.js';
import { writeTinyChatglmCheckpoint } from './helpers/tiny-chatglm.js';
import { TINY_FAMILY_NAMES, writeTinyFamilyCheckpoint } from './helpers/tiny-llama-family.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';

const root = tempDir('vramfit-prediction-');
after(() => cleanup(root));

const MODELS = [...TINY_FAMILY_NAMES, 'chatglm2'] as const;
type ModelName = (typeof MODELS)[number];
const written = new Map<string, { dir: string; layers: number }>();

function model(name: ModelName, dtype: 'float32' | 'float16'): { dir: string; layers: number } {
  const key = `${name}-${dtype}`;
  const hit = written.get(key);
  if (hit) return hit;
  const dir = join(root, key);
  let layers: number;
  if (name === 'chatglm2') layers = Number(writeTinyChatglmCheckpoint(dir, 'chatglm2', { dtype }).config['num_layers']);
  else layers = Number(writeTinyFamilyCheckpoint(dir, name, { dtype, seed: 5 }).config['num_hidden_layers']);
  const out = { dir, layers };
  written.set(key, out);
  return out;
}

type Split = 'planner' | 'one-layer-first' | 'embedding-alone' | 'head-alone';

interface Case {
  name: ModelName;
  dtype: 'float32' | 'float16';
  split: Split;
  devices: number;
  ctx: number;
  ubatch: number;
  kvDtype: 'float32' | 'float16';
}

const caseArb: fc.Arbitrary<Case> = fc.record({
  name: fc.constantFrom(...MODELS),
  dtype: fc.constantFrom<'float32' | 'float16'>('float32', 'float16'),
  split: fc.constantFrom<Split>('planner', 'one-layer-first', 'embedding-alone', 'head-alone'),
  devices: fc.integer({ min: 1, max: 4 }),
  ctx: fc.integer({ min: 16, max: 256 }),
  ubatch: fc.integer({ min: 1, max: 64 }),
  kvDtype: fc.constantFrom<'float32' | 'float16'>('float32', 'float16'),
});

/** The split's --devices and layer counts: embedding alone is [0, L], the head alone [L, 0]. */
function placement(c: Case, layers: number): Pick<LoadOptions, 'devices' | 'layerSplit'> {
  switch (c.split) {
    case 'planner':
      return { devices: `virtual:${c.devices}` };
    case 'one-layer-first':
      return { devices: 'virtual:2', layerSplit: [1, layers - 1] };
    case 'embedding-alone':
      return { devices: 'virtual:2', layerSplit: [0, layers] };
    case 'head-alone':
      return { devices: 'virtual:2', layerSplit: [layers, 0] };
  }
}

describe('engine: predicted vs measured', () => {
  it('caps equal to the prediction load and run, and every device measures within 2 % of it', async () => {
    const seen = new Set<string>();
    await fc.assert(
      fc.asyncProperty(caseArb, async (c) => {
        const m = model(c.name, c.dtype);
        const base: LoadOptions = { ...placement(c, m.layers), ctx: c.ctx, ubatch: c.ubatch, kvDtype: c.kvDtype, threads: 1 };
        const probe = await loadModel(m.dir, base);
        const predicted = probe.report().map((d) => d.predicted);
        probe.dispose();
        const caps = predicted.map((n, i) => `${i}=${n}B`).join(',');
        const loaded = await loadModel(m.dir, { ...base, maxMemory: caps });
        try {
          await greedy(loaded, [3, 1, 4, 1, 5, 9, 2, 6].slice(0, Math.min(8, c.ctx - 8)), 4);
          const report = loaded.report();
          assert.deepEqual(
            report.map((d) => d.predicted),
            predicted,
            'the capped load plans what the probe predicted',
          );
          assertUnderCapsAsPredicted(report, JSON.stringify(c));
          seen.add(c.split);
        } finally {
          loaded.dispose();
        }
      }),
      { numRuns: Number(process.env['PREDICTION_RUNS'] ?? 40), includeErrorInReport: true },
    );
    assert.ok(seen.size >= 3, `splits seen: ${[...seen].join(', ')}`);
  });
});
