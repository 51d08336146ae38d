/**
 * `--quantize auto`: the planner chooses each unit's weight type and the KV cache's so the model runs on the GPUs
 * alone within every cap. Properties over random models and caps: every plan fits every cap on GPUs only, no unit
 * could be one step better with everything else unchanged, and an infeasible case names what the smallest
 * configuration lacks (and lacks no more: caps raised by it make that configuration fit).
 */
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import { loadModel } from '../src/engine/load.js';
import { InfeasiblePlanError, planFit } from '../src/planner/fit.js';
import type { PlanDeviceSpec } from '../src/planner/plan.js';
import { applyLevels, AUTO_LEVELS, autoUnits, planQuantizeAuto, type AutoLevel } from '../src/planner/quantize-auto.js';
import { readModel } from '../src/reader/read-model.js';
import type { Skeleton } from '../src/reader/skeleton.js';
import { assertUnderCapsAsPredicted, greedy, maxAbsDiff } from './helpers/engine-harness.js';
import { writeTinyFamilyCheckpoint } from './helpers/tiny-llama-family.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import { cli } from './helpers/run-cli.js';

const root = tempDir('vramfit-quantize-auto-');
after(() => cleanup(root));

const GiB = 2 ** 30;
let configs = 0;

/** A Llama-style model from its config alone (the reader synthesizes the tensors). */
async function llamaSkeleton(c: {
  hidden: number;
  layers: number;
  ffn: number;
  vocab: number;
  heads: number;
  kvHeads: number;
  tied: boolean;
}): Promise<Skeleton> {
  const dir = join(root, `cfg-${configs++}`);
  mkdirSync(dir, { recursive: true });
  const config = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: c.hidden,
    num_hidden_layers: c.layers,
    intermediate_size: c.ffn,
    vocab_size: c.vocab,
    num_attention_heads: c.heads,
    num_key_value_heads: c.kvHeads,
    max_position_embeddings: 4096,
    rms_norm_eps: 1e-5,
    tie_word_embeddings: c.tied,
    torch_dtype: 'float16',
  };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  return readModel(join(dir, 'config.json'));
}

const modelArb = fc
  .record({
    hidden: fc.integer({ min: 1, max: 16 }).map((x) => x * 256),
    layers: fc.integer({ min: 1, max: 12 }),
    ffnBlocks: fc.integer({ min: 1, max: 40 }),
    vocab: fc.integer({ min: 1, max: 64 }).map((x) => x * 512),
    heads: fc.constantFrom(4, 8, 16),
    kvDiv: fc.constantFrom(1, 2, 4),
    tied: fc.boolean(),
  })
  .map((m) => ({ hidden: m.hidden, layers: m.layers, ffn: m.ffnBlocks * 32 * 3, vocab: m.vocab, heads: m.heads, kvHeads: m.heads / m.kvDiv, tied: m.tied }));

function gpus(caps: number[]): PlanDeviceSpec[] {
  return caps.map((cap, i) => ({ id: String(i), kind: 'gpu', cap: Math.floor(cap), overhead: 64 * 2 ** 20, name: `GPU ${i}` }));
}

const WORKLOAD = { ctx: 1024, batch: 1, ubatch: 256, kvDtype: 'float16' };
const KV = ['float16', 'q8_0', 'q4_0'];

describe('--quantize auto (planner)', () => {
  it('property: plans fit every cap on GPUs alone, and no unit can be raised one step and still fit', async () => {
    await fc.assert(
      fc.asyncProperty(modelArb, fc.array(fc.double({ min: 0.05, max: 0.8, noNaN: true }), { minLength: 1, maxLength: 3 }), async (m, shares) => {
        const skeleton = await llamaSkeleton(m);
        const floatBytes = skeleton.tensors.reduce((n, t) => n + t.shape.reduce((a, b) => a * b, 1) * 2, 0);
        const devices = gpus(shares.map((s) => s * floatBytes + 256 * 2 ** 20));
        const input = { skeleton, devices, workload: WORKLOAD, target: 'vramfit' as const, kvDtypes: KV };
        let choice;
        try {
          choice = planQuantizeAuto(input);
        } catch (e) {
          if (!(e instanceof InfeasiblePlanError)) throw e;
          assert.match(e.message, /--quantize auto: even with every unit in q4_0 and a q4_0 KV cache the model does not fit the GPUs/);
          return;
        }
        for (const d of choice.plan.devices) {
          assert.ok(d.kind === 'gpu', `device ${d.id} is ${d.kind}`);
          assert.ok(d.used <= d.cap, `device ${d.id} uses ${d.used} of ${d.cap}`);
        }
        const { unitOf } = autoUnits(skeleton);
        const levels = new Map(choice.units.map((u) => [u.name, u.level]));
        for (const u of choice.units) {
          const at = AUTO_LEVELS.indexOf(u.level);
          if (at === 0) continue;
          const up = new Map<string, AutoLevel>(levels);
          up.set(u.name, AUTO_LEVELS[at - 1]!);
          assert.throws(
            () =>
              planFit({
                skeleton: applyLevels(skeleton, up, unitOf),
                devices,
                workload: { ...WORKLOAD, kvDtype: choice.kvDtype },
                target: 'vramfit',
                remedies: false,
              }),
            InfeasiblePlanError,
            `${u.name} could be ${AUTO_LEVELS[at - 1]} instead of ${u.level}`,
          );
        }
      }),
      { numRuns: 25, seed: 11 },
    );
  });

  it('with room for everything, nothing is quantized; with less, the plan holds fewer bytes and stays on the GPUs', async () => {
    const skeleton = await llamaSkeleton({ hidden: 1024, layers: 8, ffn: 2816, vocab: 8192, heads: 8, kvHeads: 8, tied: false });
    const roomy = planQuantizeAuto({ skeleton, devices: gpus([4 * GiB, 4 * GiB]), workload: WORKLOAD, target: 'vramfit', kvDtypes: KV });
    assert.ok(roomy.units.every((u) => u.level === 'keep'));
    assert.equal(roomy.kvDtype, 'float16');
    const tight = planQuantizeAuto({ skeleton, devices: gpus([0.2 * GiB, 0.16 * GiB]), workload: WORKLOAD, target: 'vramfit', kvDtypes: KV });
    assert.ok(tight.units.some((u) => u.level !== 'keep'));
    assert.ok(tight.error > roomy.error);
  });

  it('an infeasible case names the smallest caps (in proportion to the given ones) with which the smallest configuration fits', async () => {
    const skeleton = await llamaSkeleton({ hidden: 2048, layers: 8, ffn: 5632, vocab: 16384, heads: 16, kvHeads: 16, tied: false });
    const devices = gpus([96 * 2 ** 20, 64 * 2 ** 20]);
    let err: InfeasiblePlanError | undefined;
    try {
      planQuantizeAuto({ skeleton, devices, workload: WORKLOAD, target: 'vramfit', kvDtypes: KV });
    } catch (e) {
      err = e as InfeasiblePlanError;
    }
    assert.ok(err instanceof InfeasiblePlanError, String(err));
    assert.match(err.message, /fits with caps of at least 0=[\d.]+ MiB, 1=[\d.]+ MiB \(×\d+\.\d\d the given ones\)/);
    const short = new Map(err.shortfalls.map((s) => [s.device, s.short]));
    const at = (extra: number) => devices.map((d) => ({ ...d, cap: Math.ceil(d.cap + (short.get(d.id) ?? 0) * extra) }));
    const fits = planQuantizeAuto({ skeleton, devices: at(1), workload: WORKLOAD, target: 'vramfit', kvDtypes: KV });
    assert.ok(fits.plan.devices.every((d) => d.used <= d.cap));
    assert.throws(() => planQuantizeAuto({ skeleton, devices: at(0.98), workload: WORKLOAD, target: 'vramfit', kvDtypes: KV }), InfeasiblePlanError);
  });
});

describe('vramfit plan / run --quantize auto', () => {
  it("plan: a Llama-2-7B that offloads at 5 GB + 10 GB runs on the GPUs alone, the table shows each device's types", async () => {
    const caps = ['--gpu-memory', '24GiB,24GiB', '--max-memory', '0=5GB,1=10GB'];
    const plain = await cli(['plan', 'llama-2-7b', ...caps.slice(0, 3), '0=5GB,1=10GB,cpu=30GiB']);
    assert.equal(plain.code, 0, plain.err);
    assert.match(plain.out, /rest offloaded/);
    const auto = await cli(['plan', 'llama-2-7b', ...caps, '--quantize', 'auto']);
    assert.equal(auto.code, 0, auto.err);
    assert.match(auto.out, /weights all on GPUs/);
    assert.match(auto.out, /^quantize auto: KV cache \S+ · types ranked by the error model$/m);
    assert.match(auto.out, /^ {2}GPU 0: .* \d+\.\d\d bits\/weight \(stored 16\.00\) · .* saved$/m);
    const json = await cli(['plan', 'llama-2-7b', ...caps, '--quantize', 'auto', '--format', 'json']);
    const plan = JSON.parse(json.out) as { quantization: { mode: string; units: { name: string; type: string }[] } };
    assert.equal(plan.quantization.mode, 'auto');
    assert.equal(plan.quantization.units.length, 34);
  });

  it('run --quantize auto on two capped virtual devices where float32 does not fit: under the caps as predicted, near the float32 logits', async () => {
    const ck = writeTinyFamilyCheckpoint(join(root, 'run-auto'), 'qwen3', { seed: 4 });
    const opts = { ctx: 64, ubatch: 4, threads: 1, devices: 'virtual:2' } as const;
    const full = await loadModel(ck.dir, opts);
    const perDevice = full.plan.devices.map((d) => d.used);
    const a = await greedy(full);
    full.dispose();
    const caps = perDevice.map((u, i) => `${i}=${Math.floor(u * 0.6)}B`).join(',');
    await assert.rejects(loadModel(ck.dir, { ...opts, maxMemory: caps }), InfeasiblePlanError);
    const auto = await loadModel(ck.dir, { ...opts, maxMemory: caps, quantize: 'auto' });
    try {
      const b = await greedy(auto);
      assertUnderCapsAsPredicted(auto.report());
      const diff = maxAbsDiff(b.prompt, a.prompt);
      assert.ok(diff > 0 && diff < 1, `logits differ by ${diff}`);
    } finally {
      auto.dispose();
    }
  });
});
