/**
 * `plan --format sglang`: one `sglang.launch_server` line per plan. The pipeline partition sums to the model's
 * layers, the one --mem-fraction-static leaves every GPU room under its cap for activations and CUDA graphs and
 * holds each stage's weights, KV cache and runtime, the environment and flags are spelled as SGLang spells them,
 * and what SGLang cannot run is refused with the reason.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { makePlan, type PlanFlags } from '../src/cli/plan-command.js';
import { SGLANG_GRAPHS } from '../src/planner/export/sglang.js';
import { realModelsDir } from './helpers/paths.js';
import { writeTinyFamilyCheckpoint } from './helpers/tiny-llama-family.js';
import { writeTinyGguf } from './helpers/tiny-gguf.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import { cli } from './helpers/run-cli.js';

const root = tempDir('vramfit-sglang-');
after(() => cleanup(root));

const GiB = 1024 ** 3;
const BASE: PlanFlags = { strategy: 'fit', ctx: '4096', batch: '1', ubatch: '512', format: 'sglang' };

const CASES: { model: string; layers: number; flags: Partial<PlanFlags>; caps: number[]; total: number }[] = [
  { model: 'llama-2-7b', layers: 32, flags: { gpuMemory: '24GiB,24GiB', maxMemory: '0=12GiB,1=10GiB' }, caps: [12 * GiB, 10 * GiB], total: 24 * GiB },
  {
    model: 'qwen2.5-72b',
    layers: 80,
    flags: { deviceSpec: '4xA100-80GB', maxMemory: '0=60GiB,1=70GiB,2=75GiB,3=45GiB', ctx: '8192' },
    caps: [60, 70, 75, 45].map((g) => g * GiB),
    total: 80 * GiB,
  },
  {
    model: join(realModelsDir, 'mistralai__Mixtral-8x7B-v0.1'),
    layers: 32,
    flags: { deviceSpec: '2xA100-80GB', maxMemory: '0=70GiB,1=50GiB', batch: '4', ubatch: '256' },
    caps: [70 * GiB, 50 * GiB],
    total: 80 * GiB,
  },
];

describe('plan --format sglang', () => {
  for (const c of CASES) {
    it(`${c.model.split('/').pop()} ${c.flags.maxMemory}: partition, one static fraction within every cap, flags as SGLang spells them`, async () => {
      const { plan, skeleton } = await makePlan(c.model, { ...BASE, ...c.flags });
      const { renderPlan } = await import('../src/cli/plan-command.js');
      const out = renderPlan(plan, skeleton, c.model, 'sglang');
      const line = out.split('\n')[0]!;
      const env = Object.fromEntries(
        line
          .split(' ')
          .filter((w) => /^[A-Z_]+=/.test(w))
          .map((w) => w.split('=') as [string, string]),
      );
      const flag = (name: string): string | undefined => new RegExp(`${name} (\\S+)`).exec(line)?.[1];
      assert.match(line, /python -m sglang\.launch_server --model-path \S+ /);
      const f = Number(flag('--mem-fraction-static'));
      const dynamic = plan.sglang!.dynamic_bytes;
      assert.ok(dynamic > SGLANG_GRAPHS);
      // f × total plus activations and graphs stays under every cap; the tightest one sets f (to 0.001).
      for (const cap of c.caps) assert.ok(f * c.total + dynamic <= cap, `${f} × total + ${dynamic} passes ${cap}`);
      assert.ok(Math.min(...c.caps.map((cap) => (cap - dynamic) / c.total)) - f < 0.001 + 1e-9);
      const partition = env['SGLANG_PP_LAYER_PARTITION']!.split(',').map(Number);
      assert.equal(
        partition.reduce((a, b) => a + b, 0),
        c.layers,
      );
      assert.equal(Number(flag('--pp-size')), partition.length);
      assert.equal(env['CUDA_VISIBLE_DEVICES']!.split(',').length, partition.length);
      assert.equal(flag('--context-length'), c.flags.ctx ?? '4096');
      assert.equal(flag('--max-running-requests'), c.flags.batch ?? '1');
      assert.equal(flag('--cuda-graph-max-bs'), c.flags.batch ?? '1');
      // Each stage's static part fits the share; nothing is off the GPUs.
      for (const d of plan.devices) {
        assert.equal(d.kind, 'gpu');
        assert.ok(d.weights + d.kv + d.overhead - SGLANG_GRAPHS <= f * c.total, `GPU ${d.id}`);
      }
    });
  }

  it('plans on the GPUs alone, saying so, and an infeasible plan says the caps are SGLang’s share', async () => {
    const r = await cli(['plan', 'llama-2-7b', '--gpu-memory', '24GiB,24GiB', '--max-memory', '0=12GiB,1=10GiB,cpu=30GiB', '--format', 'sglang']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^# SGLang keeps every layer on its GPUs: the plan uses them alone, not CPU RAM or disk$/m);
    const bad = await cli(['plan', 'llama-2-7b', '--gpu-memory', '24GiB,24GiB', '--max-memory', '0=6GB,1=7GB,cpu=20GB', '--format', 'sglang']);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /note: SGLang runs every GPU at one --mem-fraction-static, 0\.\d+ here/);
    assert.doesNotMatch(bad.err, /--max-memory …,cpu=/, 'no remedy suggests offloading');
    assert.doesNotMatch(bad.err, /cpu is short/, 'no cpu to fall short of');
  });

  it('refuses what SGLang cannot run, naming why', async () => {
    const tiny = writeTinyFamilyCheckpoint(join(root, 'tiny'), 'llama2');
    const gguf = writeTinyGguf(tiny);
    const cases: [string[], RegExp][] = [
      [['plan', gguf, '--gpu-memory', '24GiB', '--format', 'sglang'], /give SGLang the Hugging Face folder/],
      [['plan', tiny.dir, '--devices', 'virtual:2', '--format', 'sglang'], /SGLang runs on CUDA GPUs, not virtual devices/],
      [
        ['plan', 'llama-2-7b', '--gpu-memory', '24GiB', '--kv-dtype', 'q8_0', '--format', 'sglang'],
        /--kv-dtype: SGLang keeps the KV cache in the model's dtype or fp8, not q8_0/,
      ],
      [['plan', 'gpt2', '--gpu-memory', '24GiB', '--format', 'sglang'], /GPT2LMHeadModel is not among the architectures SGLang has model files for/],
      [
        ['plan', 'llama-2-7b', '--gpu-memory', '24GiB', '--max-memory', '0=200MiB', '--format', 'sglang'],
        /--max-memory: SGLang needs .* outside its static share/,
      ],
    ];
    for (const [args, re] of cases) {
      const r = await cli(args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.out}${r.err}`);
      assert.match(r.err, re);
    }
  });
});
