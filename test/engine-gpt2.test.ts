import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { closeDevices, openVirtualDevices } from '../src/engine/device.js';
import { GGML_TYPE, loadGgml, type Gallocr } from '../src/engine/ggml/binding.js';
import { GraphBuilder } from '../src/engine/ggml/graph.js';
import { loadModel } from '../src/engine/load.js';
import { InputError } from '../src/util/errors.js';
import { geluNew, ReferenceGpt2, referenceGreedyGpt2 } from './helpers/reference-gpt2.js';
import { TINY_GPT2_NAMES, writeTinyGpt2Checkpoint, type TinyGpt2Checkpoint, type TinyGpt2Name } from './helpers/tiny-gpt2.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import {
  assertAgreesWithReference,
  assertSplitsAgree,
  greedy,
  maxAbsDiff,
  NEW_TOKENS,
  PROMPT,
  SPLIT_OPTIONS,
  assertRunsUnderTightCaps,
} from './helpers/engine-harness.js';

const root = tempDir('vramfit-engine-gpt2-');
after(() => cleanup(root));

const written = new Map<string, TinyGpt2Checkpoint>();
function checkpoint(name: TinyGpt2Name, dtype: 'float32' | 'float16' = 'float32'): TinyGpt2Checkpoint {
  const key = `${name}-${dtype}`;
  if (!written.has(key)) written.set(key, writeTinyGpt2Checkpoint(join(root, key), name, { dtype, seed: 11 }));
  return written.get(key)!;
}

const reference = (ck: TinyGpt2Checkpoint): ReferenceGpt2 => new ReferenceGpt2(ck.config, ck.tensors);

describe('engine GPT-2: one device against the plain-TypeScript reference', () => {
  for (const name of TINY_GPT2_NAMES) {
    it(`${name}: prompt and step logits within 1e-4, the reference's greedy tokens`, async () => {
      const ck = checkpoint(name);
      // ubatch 4: the 10-token prompt runs as 4 + 4 + 2, so batches attend to a cache and to each other.
      const model = await loadModel(ck.dir, { devices: 'virtual:1', ctx: 64, ubatch: 4, kvDtype: 'float32', threads: 1 });
      try {
        const got = await greedy(model);
        assertAgreesWithReference(got, reference(ck));
        const refGreedy = referenceGreedyGpt2(reference(ck), PROMPT, NEW_TOKENS);
        assert.ok(Math.min(...refGreedy.margins) > 1e-3, `the tiny model has clear greedy choices (margins ${refGreedy.margins.join(', ')})`);
        assert.deepEqual(got.ids, refGreedy.ids, 'greedy tokens match the reference');
      } finally {
        model.dispose();
      }
    });
  }

  it('the last learned position (n_positions − 1) is used, and a longer context is refused before loading', async () => {
    const ck = checkpoint('gpt2');
    const positions = ck.config['n_positions'] as number;
    const tokens = Array.from({ length: positions }, (_, i) => (i * 7 + 3) % (ck.config['vocab_size'] as number));
    const model = await loadModel(ck.dir, { devices: 'virtual:2', ctx: positions, ubatch: 16, kvDtype: 'float32', threads: 1 });
    try {
      const rows = model.forward(tokens, true);
      const diff = maxAbsDiff(rows, reference(ck).forward(tokens, 0));
      assert.ok(diff < 1e-4, `logits over the whole position table differ by ${diff}`);
    } finally {
      model.dispose();
    }
    await assert.rejects(loadModel(ck.dir, { ctx: positions + 1, threads: 1 }), (e: unknown) => {
      assert.ok(e instanceof InputError, `an input error, got ${String(e)}`);
      assert.match(e.message, /exceed the 64 positions/);
      return true;
    });
  });
});

describe('engine GPT-2: the same model split over 1, 2 and 4 virtual devices', () => {
  for (const name of TINY_GPT2_NAMES) {
    it(`${name}: identical greedy tokens, logits within 1e-5, each device under its cap and within 2 % of the plan`, async () => {
      await assertSplitsAgree(checkpoint(name).dir, SPLIT_OPTIONS);
    });
  }
});

describe('engine GPT-2: caps and manual splits', () => {
  it('under caps set just above the prediction: measured peak below each cap and within 2 %', async () => {
    await assertRunsUnderTightCaps(checkpoint('gpt2').dir, { devices: 'virtual:2', ctx: 64, ubatch: 8, threads: 1 });
  });

  it('a manual split predicts wpe on the embedding device, where the engine loads it', async () => {
    const ck = checkpoint('gpt2-layer-scaled');
    const one = await loadModel(ck.dir, { devices: 'virtual:1', ctx: 64, ubatch: 4, kvDtype: 'float32', threads: 1 });
    const expected = one.forward(PROMPT, true);
    one.dispose();
    const model = await loadModel(ck.dir, { devices: 'virtual:2', ctx: 64, ubatch: 4, kvDtype: 'float32', threads: 1, layerSplit: [1, 3] });
    try {
      assert.ok(model.plan.devices[0]!.modules.includes('transformer.wpe'), `wpe planned on device 0 (${model.plan.devices[0]!.modules.join(', ')})`);
      const diff = maxAbsDiff(model.forward(PROMPT, true), expected);
      assert.ok(diff <= 1e-5, `split logits differ from one device's by ${diff}`);
      for (const d of model.report()) {
        assert.ok(Math.abs(d.measured - d.predicted) <= 0.02 * d.predicted, `device ${d.id} measured ${d.measured} vs predicted ${d.predicted}`);
      }
    } finally {
      model.dispose();
    }
  });
});

describe('engine GPT-2: float16 weights', () => {
  it('a float16 checkpoint (transposed Conv1D weights stored as float16, float16 KV cache) stays close to the reference', async () => {
    const ck = checkpoint('gpt2', 'float16');
    const model = await loadModel(ck.dir, { devices: 'virtual:2', ctx: 32, threads: 1 });
    try {
      const rows = model.forward(PROMPT, true);
      const diff = maxAbsDiff(rows, reference(ck).forward(PROMPT, 0));
      // Half-precision matrices and cache make ggml round activations too: a looser bound than F32's.
      assert.ok(diff < 0.05, `float16 logits differ from the reference by ${diff}`);
    } finally {
      model.dispose();
    }
  });
});

describe('GraphBuilder.geluTanh', () => {
  it("computes transformers' gelu_new to float32 precision (ggml_gelu's CPU kernel reads a float16 table)", () => {
    const g = loadGgml();
    const [device] = openVirtualDevices(['0'], new Map(), 1);
    const gb = new GraphBuilder(g, 64);
    const xs = Float32Array.from({ length: 2401 }, (_, i) => -12 + i / 100);
    let galloc: Gallocr | undefined;
    try {
      const x = gb.input('x', GGML_TYPE.F32, [xs.length]);
      const y = gb.output(gb.geluTanh(x), 'y');
      const graph = gb.build();
      galloc = g.raw.ggml_gallocr_new(device!.buft) as Gallocr;
      assert.ok(g.raw.ggml_gallocr_alloc_graph(galloc, graph), 'graph allocated');
      g.raw.ggml_backend_tensor_set(x, xs, 0, xs.byteLength);
      assert.equal(g.raw.ggml_backend_graph_compute(device!.backend, graph), 0, 'graph computed');
      const out = new Float32Array(xs.length);
      g.raw.ggml_backend_tensor_get(y, out, 0, out.byteLength);
      let worst = 0;
      xs.forEach((v, i) => (worst = Math.max(worst, Math.abs(out[i]! - geluNew(v)) / Math.max(1, Math.abs(v)))));
      assert.ok(worst < 1e-6, `gelu_new differs by ${worst} (relative to max(1, |x|))`);
    } finally {
      if (galloc) g.raw.ggml_gallocr_free(galloc);
      gb.free();
      closeDevices([device!]);
    }
  });
});
