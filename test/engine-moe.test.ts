import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { moeHyper } from '../src/engine/architectures/moe.js';
import { liveResources } from '../src/engine/device.js';
import { GGML_TYPE, loadGgml } from '../src/engine/ggml/binding.js';
import { GraphBuilder, ShapeError } from '../src/engine/ggml/graph.js';
import { loadModel } from '../src/engine/load.js';
import { ConfigReader } from '../src/reader/config.js';
import { InputError } from '../src/util/errors.js';
import { createReferenceMoe, MoeBlocks, parseMoeConfig } from './helpers/reference-moe.js';
import { ReferenceLlama } from './helpers/reference-llama.js';
import { TINY_MOE_CONFIGS, TINY_MOE_NAMES, writeTinyMoeCheckpoint, type TinyMoeCheckpoint, type TinyMoeName } from './helpers/tiny-moe.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import { assertAgreesWithReference, assertSplitsAgree, greedy, maxAbsDiff, PROMPT, SPLIT_OPTIONS, assertRunsUnderTightCaps } from './helpers/engine-harness.js';

const root = tempDir('vramfit-engine-moe-');
after(() => cleanup(root));

function checkpoint(name: TinyMoeName, dtype: 'float32' | 'float16' | 'bfloat16' = 'float32', shards = 1): TinyMoeCheckpoint {
  return writeTinyMoeCheckpoint(join(root, `${name}-${dtype}-${shards}`), name, { dtype, seed: 11, shards });
}

describe('engine MoE: one device against the plain-TypeScript reference', () => {
  for (const name of TINY_MOE_NAMES) {
    it(`${name}: logits and greedy tokens agree with the reference (F32, < 1e-4)`, async () => {
      const ck = checkpoint(name);
      const model = await loadModel(ck.dir, { devices: 'virtual:1', ctx: 64, ubatch: 4, kvDtype: 'float32', threads: 1 });
      try {
        const ref = createReferenceMoe(ck);
        assertAgreesWithReference(await greedy(model), ref.model);

        // The agreement means something: routing decisions were far from ties, and really varied.
        const { moe } = ref;
        assert.ok(moe.stats.minMargin > 1e-3, `a routing decision was within ${moe.stats.minMargin} of a tie`);
        moe.config.sparse.forEach((sparse, l) => {
          const used = moe.stats.counts[l]!.filter((c) => c > 0).length;
          if (sparse) assert.ok(used > moe.config.topK, `layer ${l} routed every token to the same ${used} experts`);
          else assert.equal(used, 0, `dense layer ${l} has no router`);
        });
      } finally {
        model.dispose();
      }
    });
  }

  it('the comparison is sensitive to routing: renormalising Qwen3-MoE without norm_topk_prob, or picking other experts, is far off', async () => {
    const ck = checkpoint('qwen3-moe');
    const model = await loadModel(ck.dir, { devices: 'virtual:1', ctx: 32, kvDtype: 'float32', threads: 1 });
    try {
      const rows = model.forward(PROMPT, true);
      const { moe, llamaConfig } = parseMoeConfig(ck.config);
      const renormalised = new ReferenceLlama(llamaConfig, ck.tensors, new MoeBlocks({ ...moe, normTopK: true }, ck.tensors));
      const diff = maxAbsDiff(rows, renormalised.forward(PROMPT, 0));
      assert.ok(diff > 1e-2, `norm_topk_prob changes the logits by only ${diff}`);
      const topMore = new ReferenceLlama(llamaConfig, ck.tensors, new MoeBlocks({ ...moe, topK: moe.topK + 1 }, ck.tensors));
      const diffK = maxAbsDiff(rows, topMore.forward(PROMPT, 0));
      assert.ok(diffK > 1e-2, `one more expert changes the logits by only ${diffK}`);
    } finally {
      model.dispose();
    }
  });
});

describe('engine MoE: the same model split over 1, 2 and 4 virtual devices', () => {
  for (const name of ['mixtral', 'qwen3-moe'] as const) {
    it(`${name}: identical greedy tokens, logits within 1e-5, every device under its cap and within 2 % of the plan`, async () => {
      await assertSplitsAgree(checkpoint(name).dir, SPLIT_OPTIONS, {
        // Experts are no unit of their own: each decoder layer (attention and experts) is on one device.
        checkPlan: (model, devices) => {
          for (const d of model.plan.devices)
            assert.ok(
              d.modules.every((m) => !m.includes('experts')),
              `${devices}: device ${d.id} holds a part of a layer: ${d.modules.join(', ')}`,
            );
        },
      });
    });
  }

  it('mixtral: a manual split puts each layer, experts included, on its device', async () => {
    const ck = checkpoint('mixtral');
    const whole = await loadModel(ck.dir, { devices: 'virtual:1', ctx: 32, kvDtype: 'float32', threads: 1 });
    const expected = whole.forward(PROMPT, true);
    whole.dispose();
    const model = await loadModel(ck.dir, { devices: 'virtual:3', ctx: 32, kvDtype: 'float32', threads: 1, layerSplit: [1, 1, 1] });
    try {
      const rows = model.forward(PROMPT, true);
      assert.ok(maxAbsDiff(rows, expected) <= 1e-5, `split logits differ by ${maxAbsDiff(rows, expected)}`);
      const report = model.report();
      assert.equal(report.length, 3, 'three devices');
      // Every device holds one layer's weights (its experts are most of them) and received the hidden state.
      for (const d of report) assert.ok((d.breakdown['weights'] ?? 0) > 0, `device ${d.id} holds weights`);
      for (const d of report.slice(1)) assert.ok(d.bytesIn > 0, `device ${d.id} received the hidden state`);
    } finally {
      model.dispose();
    }
  });
});

describe('engine MoE: caps, storage and placement', () => {
  it('a plan under caps: measured peak within 2 % of the prediction and below each cap', async () => {
    await assertRunsUnderTightCaps(checkpoint('qwen3-moe').dir, { devices: 'virtual:2', ctx: 128, ubatch: 8, threads: 1 });
  });

  it('experts split across two safetensors shards load as from one file', async () => {
    const one = checkpoint('mixtral');
    const two = checkpoint('mixtral', 'float32', 2);
    const a = await loadModel(one.dir, { ctx: 32, kvDtype: 'float32', threads: 1 });
    const expected = a.forward(PROMPT, true);
    a.dispose();
    const b = await loadModel(two.dir, { devices: 'virtual:2', ctx: 32, kvDtype: 'float32', threads: 1 });
    try {
      assert.equal(maxAbsDiff(b.forward(PROMPT, true), expected), 0, 'sharded and single-file runs give the same logits');
    } finally {
      b.dispose();
    }
  });

  it('bfloat16 experts converted to float32 while stacking match the reference exactly as float32 ones do', async () => {
    const ck = checkpoint('qwen3-moe-step', 'bfloat16');
    const model = await loadModel(ck.dir, { devices: 'virtual:2', ctx: 32, kvDtype: 'float32', dtype: 'float32', threads: 1 });
    try {
      const rows = model.forward(PROMPT, true);
      const ref = createReferenceMoe(ck).model.forward(PROMPT, 0);
      assert.ok(maxAbsDiff(rows, ref) < 1e-4, `differs by ${maxAbsDiff(rows, ref)}`);
    } finally {
      model.dispose();
    }
  });

  it('float16 experts used as stored stay close to the reference', async () => {
    const ck = checkpoint('mixtral', 'float16');
    const model = await loadModel(ck.dir, { devices: 'virtual:2', ctx: 32, kvDtype: 'float32', threads: 1 });
    try {
      const rows = model.forward(PROMPT, true);
      const ref = createReferenceMoe(ck).model.forward(PROMPT, 0);
      // Half-precision matrices make ggml round the activations too: a looser bound than F32's.
      assert.ok(maxAbsDiff(rows, ref) < 0.05, `differs by ${maxAbsDiff(rows, ref)}`);
    } finally {
      model.dispose();
    }
  });

  it('MoE blocks are not offloaded to disk: a clear error before anything is loaded, nothing leaked', async () => {
    const ck = checkpoint('mixtral');
    const ram = await loadModel(ck.dir, { devices: 'virtual:1', ctx: 32, threads: 1 });
    const need = ram.report()[0]!.predicted;
    ram.dispose();
    const before = { ...liveResources };
    let progressed = 0;
    await assert.rejects(
      loadModel(ck.dir, {
        devices: 'virtual:1',
        ctx: 32,
        threads: 1,
        maxMemory: `0=${Math.floor(need / 3)}B,cpu=${Math.floor(need / 3)}B,disk=1GB`,
        onProgress: (n) => (progressed = n),
      }),
      (e: unknown) => {
        assert.ok(e instanceof InputError, String(e));
        assert.match(e.message, /assembled at load time from several stored tensors/);
        return true;
      },
    );
    assert.equal(progressed, 0, 'no weight byte was read');
    assert.deepEqual({ ...liveResources }, before, 'every buffer, backend and allocator was released');
  });

  it('dispose frees every buffer', async () => {
    const ck = checkpoint('qwen3-moe');
    const before = { ...liveResources };
    const model = await loadModel(ck.dir, { devices: 'virtual:2', ctx: 32, threads: 1 });
    assert.ok(liveResources.buffers > before.buffers, 'buffers were allocated');
    model.dispose();
    assert.deepEqual({ ...liveResources }, before, 'every buffer, backend and allocator was released');
  });
});

describe('engine MoE: hyper-parameters as transformers reads them', () => {
  const hyper = (family: string, raw: Record<string, unknown>) => moeHyper(new ConfigReader(raw, 'config.json'), family);

  it('Mixtral: MixtralConfig defaults (rms_norm_eps 1e-5, rope_theta 1e6, 8 experts, top-2), always renormalised', () => {
    const raw = { ...TINY_MOE_CONFIGS.mixtral } as Record<string, unknown>;
    for (const k of ['rms_norm_eps', 'rope_theta', 'num_local_experts', 'num_experts_per_tok']) delete raw[k];
    const h = hyper('mixtral', raw);
    assert.equal(h.eps, 1e-5);
    assert.equal(h.ropeTheta, 1e6);
    assert.equal(h.experts, 8);
    assert.equal(h.expertsUsed, 2);
    assert.equal(h.normTopK, true);
    assert.deepEqual(h.sparse, [true, true, true]);
    assert.equal(h.expertFfn, 48);
  });

  it('Qwen3-MoE: mlp_only_layers and decoder_sparse_step choose the dense layers; norm_topk_prob defaults to false', () => {
    const raw = { ...TINY_MOE_CONFIGS['qwen3-moe'] } as Record<string, unknown>;
    delete raw['norm_topk_prob'];
    assert.deepEqual(hyper('qwen3-moe', raw).sparse, [true, false, true]);
    assert.equal(hyper('qwen3-moe', raw).normTopK, false);
    assert.equal(hyper('qwen3-moe', raw).expertFfn, 40);
    assert.deepEqual(hyper('qwen3-moe', { ...raw, mlp_only_layers: [], decoder_sparse_step: 2, num_hidden_layers: 5 }).sparse, [
      false,
      true,
      false,
      true,
      false,
    ]);
    assert.deepEqual(hyper('qwen3-moe', { ...raw, num_experts: 0 }).sparse, [false, false, false]);
    assert.throws(() => hyper('qwen3-moe', { ...raw, decoder_sparse_step: 0 }), /decoder_sparse_step/);
    assert.throws(() => hyper('qwen3-moe', { ...raw, num_experts_per_tok: 5 }), /num_experts_per_tok/);
    assert.throws(() => hyper('qwen3-moe', { ...raw, mlp_only_layers: 'all' }), /mlp_only_layers/);
  });
});

describe('GraphBuilder: the MoE ops refuse what ggml would abort on', () => {
  it('indices must come from argsort/topK over no more values than the table has', () => {
    const gb = new GraphBuilder(loadGgml(), 64);
    try {
      const experts = gb.input('experts', GGML_TYPE.F32, [8, 6, 4]);
      const x = gb.input('x', GGML_TYPE.F32, [8, 1, 3]);
      const handIds = gb.input('ids', GGML_TYPE.I32, [2, 3]);
      assert.throws(
        () => gb.mulMatId(experts, x, handIds),
        (e: unknown) => e instanceof ShapeError && /argsort or topK/.test(e.message),
      );
      const scores4 = gb.input('scores4', GGML_TYPE.F32, [4, 3]);
      const scores5 = gb.input('scores5', GGML_TYPE.F32, [5, 3]);
      assert.throws(
        () => gb.topK(scores4, 5),
        (e: unknown) => e instanceof ShapeError && /between 1 and 4/.test(e.message),
      );
      assert.throws(
        () => gb.mulMatId(experts, x, gb.topK(scores5, 2)),
        (e: unknown) => e instanceof ShapeError && /only 4 rows/.test(e.message),
      );
      const ids = gb.topK(scores4, 2);
      assert.deepEqual(gb.shape(gb.mulMatId(experts, x, ids)), [6, 2, 3, 1], 'one product per selected expert and token');
      const wrongCols = gb.input('wrong', GGML_TYPE.F32, [7, 1, 3]);
      assert.throws(
        () => gb.mulMatId(experts, wrongCols, ids),
        (e: unknown) => e instanceof ShapeError && /cannot multiply/.test(e.message),
      );
      const table = gb.input('table', GGML_TYPE.F32, [1, 4, 3]);
      assert.deepEqual(gb.shape(gb.getRowsBatched(table, ids)), [1, 2, 3, 1], 'one row per selected index and column');
      const otherTokens = gb.input('table2', GGML_TYPE.F32, [1, 4, 2]);
      assert.throws(
        () => gb.getRowsBatched(otherTokens, ids),
        (e: unknown) => e instanceof ShapeError && /must be I32/.test(e.message),
      );
      const big = gb.input('big', GGML_TYPE.F32, [3, 5, 3]);
      assert.throws(
        () => gb.div(gb.sumRows(big), big),
        (e: unknown) => e instanceof ShapeError && /does not broadcast/.test(e.message),
      );
    } finally {
      gb.free();
    }
  });
});
