import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { closeDevices, openVirtualDevices } from '../src/engine/device.js';
import { generate } from '../src/engine/generate.js';
import { GGML_TYPE, loadGgml, type Gallocr } from '../src/engine/ggml/binding.js';
import { GraphBuilder } from '../src/engine/ggml/graph.js';
import { loadModel, type LoadedModel } from '../src/engine/model.js';
import { InputError } from '../src/util/errors.js';
import { geluNew, ReferenceGpt2, referenceGreedyGpt2 } from './helpers/reference-gpt2.js';
import { TINY_GPT2_NAMES, writeTinyGpt2Checkpoint, type TinyGpt2Checkpoint, type TinyGpt2Name } from './helpers/tiny-gpt2.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';

const root = tempDir('vramfit-engine-gpt2-');
after(() => cleanup(root));

const PROMPT = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3];
const NEW_TOKENS = 6;

const written = new Map<string, TinyGpt2Checkpoint>();
function checkpoint(name: TinyGpt2Name, dtype: 'float32' | 'float16' = 'float32'): TinyGpt2Checkpoint {
  const key = `${name}-${dtype}`;
  if (!written.has(key)) written.set(key, writeTinyGpt2Checkpoint(join(root, key), name, { dtype, seed: 11 }));
  return written.get(key)!;
}

const reference = (ck: TinyGpt2Checkpoint): ReferenceGpt2 => new ReferenceGpt2(ck.config, ck.tensors);

async function greedy(model: LoadedModel): Promise<{ ids: number[]; prompt: Float32Array[]; steps: Float32Array[] }> {
  const stream = generate(model, PROMPT, { maxNewTokens: NEW_TOKENS, sampling: { greedy: true }, keepLogits: true });
  let step = await stream.next();
  while (!step.done) step = await stream.next();
  return { ids: step.value.generatedIds, prompt: step.value.promptLogits!, steps: step.value.stepLogits! };
}

function maxAbsDiff(a: readonly ArrayLike<number>[], b: readonly ArrayLike<number>[]): number {
  assert.equal(a.length, b.length, 'as many rows on both sides');
  let m = 0;
  a.forEach((row, r) => {
    for (let i = 0; i < row.length; i++) m = Math.max(m, Math.abs(row[i]! - b[r]![i]!));
  });
  return m;
}

describe('engine GPT-2: one device against the plain-TypeScript reference', () => {
  for (const name of TINY_GPT2_NAMES) {
    it(`${name}: prompt and step logits within 1e-4, the reference's greedy tokens`, async () => {
      const ck = checkpoint(name);
      // ubatch 4: the 10-token prompt runs as 4 + 4 + 2, so batches attend to a cache and to each other.
      const model = await loadModel(ck.dir, { devices: 'virtual:1', ctx: 64, ubatch: 4, kvDtype: 'float32', threads: 1 });
      try {
        const got = await greedy(model);
        const ref = reference(ck);
        const promptRef = ref.forward(PROMPT, 0);
        const promptDiff = maxAbsDiff(got.prompt, promptRef);
        assert.ok(promptDiff < 1e-4, `prompt logits differ by ${promptDiff}`);
        // Feed the engine's own tokens to the reference, so one near-tie cannot derail the comparison.
        const stepRef = got.ids.slice(0, -1).map((id) => ref.forward([id])[0]!);
        const stepDiff = maxAbsDiff(got.steps.slice(1), stepRef);
        assert.ok(stepDiff < 1e-4, `step logits differ by ${stepDiff}`);
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
      const ck = checkpoint(name);
      const runs: Awaited<ReturnType<typeof greedy>>[] = [];
      for (const devices of ['virtual:1', 'virtual:2', 'virtual:4']) {
        const model = await loadModel(ck.dir, { devices, ctx: 64, ubatch: 4, kvDtype: 'float32', threads: 1 });
        try {
          if (devices !== 'virtual:1') assert.ok(model.plan.devices.filter((d) => d.modules.length > 0).length > 1, `${devices}: the model is really split`);
          runs.push(await greedy(model));
          for (const d of model.report()) {
            assert.ok(d.measured <= d.cap, `${devices}: device ${d.id} measured ${d.measured} over its cap ${d.cap}`);
            assert.ok(Math.abs(d.measured - d.predicted) <= 0.02 * d.predicted, `${devices}: device ${d.id} measured ${d.measured} vs predicted ${d.predicted}`);
          }
        } finally {
          model.dispose();
        }
      }
      for (const [i, r] of runs.slice(1).entries()) {
        assert.deepEqual(r.ids, runs[0]!.ids, `run ${i + 1}: same greedy tokens as one device`);
        const promptDiff = maxAbsDiff(r.prompt, runs[0]!.prompt);
        const stepDiff = maxAbsDiff(r.steps, runs[0]!.steps);
        assert.ok(promptDiff <= 1e-5, `run ${i + 1}: prompt logits differ by ${promptDiff}`);
        assert.ok(stepDiff <= 1e-5, `run ${i + 1}: step logits differ by ${stepDiff}`);
      }
    });
  }
});

describe('engine GPT-2: caps and manual splits', () => {
  it('under caps set just above the prediction: measured peak below each cap and within 2 %', async () => {
    const ck = checkpoint('gpt2');
    const probe = await loadModel(ck.dir, { devices: 'virtual:2', ctx: 64, ubatch: 8, threads: 1 });
    const need = probe.report().map((d) => d.predicted);
    probe.dispose();
    const model = await loadModel(ck.dir, { devices: 'virtual:2', ctx: 64, ubatch: 8, threads: 1, maxMemory: `0=${need[0]! + 4096},1=${need[1]! + 4096}` });
    try {
      model.forward(PROMPT);
      for (const d of model.report()) {
        assert.ok(d.measured <= d.cap, `device ${d.id} measured ${d.measured} over its cap ${d.cap}`);
        assert.ok(Math.abs(d.measured - d.predicted) <= 0.02 * d.predicted, `device ${d.id} measured ${d.measured} vs predicted ${d.predicted}`);
      }
    } finally {
      model.dispose();
    }
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
