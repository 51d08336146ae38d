/**
 * `plan --format exllamav3|tabbyapi`: exllamav3's absolute GiB per GPU (use_per_device, TabbyAPI's gpu_split). Each
 * value is the GPU's cap less the CUDA context torch's allocator does not count, every GPU's predicted use stays under
 * its cap, the plan fills the GPUs in order as exllamav3's loader does (no GPU before the last could take the next
 * layer), the embedding sits in CPU RAM, TabbyAPI's keys are spelled as its config_sample.yml spells them, and what
 * exllamav3 cannot run is refused with the reason.
 */
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { makePlan, renderPlan, type PlanFlags } from '../src/cli/plan-command.js';
import { exporters, planWithSkeleton } from '../src/index.js';
import { isFloatDType, tensorBytes } from '../src/reader/dtypes.js';
import { TORCH_CUDA_CONTEXT } from '../src/planner/memory-model.js';
import { realModelsDir } from './helpers/paths.js';
import { writeTinyFamilyCheckpoint } from './helpers/tiny-llama-family.js';
import { writeTinyGguf } from './helpers/tiny-gguf.js';
import { cleanup, storedTensorsFor, tempDir, TINY_LLAMA_CONFIG } from './helpers/tiny-models.js';
import { writeSafetensors } from '../src/reader/formats/safetensors-writer.js';
import { cli } from './helpers/run-cli.js';

const root = tempDir('vramfit-exllamav3-');
after(() => cleanup(root));

const GiB = 1024 ** 3;
const BASE: PlanFlags = { strategy: 'fit', ctx: '4096', batch: '1', ubatch: '512', format: 'exllamav3' };
/** TabbyAPI's config_sample.yml `model:` keys vramfit writes. */
const TABBY_KEYS = [
  'model_name',
  'backend',
  'max_seq_len',
  'cache_size',
  'cache_mode',
  'chunk_size',
  'max_batch_size',
  'tensor_parallel',
  'gpu_split_auto',
  'gpu_split',
];

const CASES: { model: string; layers: number; flags: Partial<PlanFlags>; caps: number[]; cacheMode: string }[] = [
  {
    model: 'llama-2-13b',
    layers: 40,
    flags: { deviceSpec: '1xRTX-3090,1xRTX-4090', maxMemory: '0=10GiB,1=20GiB,cpu=30GiB' },
    caps: [10 * GiB, 20 * GiB],
    cacheMode: 'FP16',
  },
  {
    model: join(realModelsDir, 'mistralai__Mixtral-8x7B-v0.1'),
    layers: 32,
    flags: { deviceSpec: '2xA100-80GB', maxMemory: '0=60GiB,1=50GiB', ctx: '8192', batch: '2', ubatch: '1024' },
    caps: [60 * GiB, 50 * GiB],
    cacheMode: 'FP16',
  },
  {
    model: 'qwen3-8b',
    layers: 36,
    flags: { deviceSpec: '3xRTX-3060', maxMemory: '0=5GiB,1=6GiB,2=11GiB,cpu=16GiB', kvDtype: 'q8_0', batch: '2' },
    caps: [5 * GiB, 6 * GiB, 11 * GiB],
    cacheMode: '8,8',
  },
  {
    model: 'llama-3.2-3b',
    layers: 28,
    flags: { deviceSpec: '2xRTX-3060', maxMemory: '0=4GiB,1=8GiB,cpu=8GiB', kvDtype: 'q4_0' },
    caps: [4 * GiB, 8 * GiB],
    cacheMode: '4,4',
  },
];

describe('plan --format exllamav3 / tabbyapi', () => {
  for (const c of CASES) {
    it(`${c.model.split('/').pop()} ${c.flags.maxMemory}: caps less the CUDA context, filled in order, TabbyAPI keys as spelled`, async () => {
      const flags = { ...BASE, ...c.flags };
      const { plan, skeleton } = await makePlan(c.model, flags);
      assert.equal(plan.target, 'exllamav3');
      const gpus = plan.devices.filter((d) => d.kind === 'gpu');
      for (const d of gpus) assert.ok(d.used <= d.cap, `GPU ${d.id}: ${d.used} > ${d.cap}`);
      const used = gpus.filter((d) => d.modules.length > 0);
      const x = plan.exllamav3!;
      assert.deepEqual(
        x.gpus,
        used.map((d) => d.id),
      );
      assert.deepEqual(
        x.use_per_device,
        used.map((d) => Math.floor(((c.caps[Number(d.id)]! - TORCH_CUDA_CONTEXT) / GiB) * 100) / 100),
      );
      for (const [i, d] of used.entries()) assert.ok(x.use_per_device[i]! * GiB <= d.cap - TORCH_CUDA_CONTEXT);
      // In order: no GPU before the last could also take the first layer of the GPU after it.
      const prefix = `${skeleton.blocks!.prefix}.`;
      const blockOf = (m: string): number | undefined =>
        m.startsWith(prefix) && /^\d+$/.test(m.slice(prefix.length)) ? Number(m.slice(prefix.length)) : undefined;
      for (let i = 0; i + 1 < used.length; i++) {
        const next = used[i + 1]!;
        const first = next.modules.map(blockOf).find((b) => b !== undefined)!;
        const blocks = next.modules.filter((m) => blockOf(m) !== undefined).length;
        const weights = skeleton.tensors
          .filter((t) => t.name.startsWith(`${prefix}${first}.`))
          .reduce((n, t) => n + tensorBytes(t.shape, isFloatDType(t.dtype) ? 'float16' : t.dtype), 0);
        assert.ok(used[i]!.cap - used[i]!.used < weights + next.kv / blocks, `GPU ${used[i]!.id} had room for layer ${first}`);
      }
      // The embedding is in CPU RAM when there is a budget there; nothing but it.
      const cpu = plan.devices.find((d) => d.kind === 'cpu');
      if (cpu) assert.deepEqual(cpu.modules, ['model.embed_tokens']);
      assert.ok(!gpus.some((d) => d.modules.includes('model.embed_tokens')));
      assert.ok(gpus.at(-1)!.modules.includes('lm_head') || used.at(-1)!.modules.includes('lm_head'));

      const py = renderPlan(plan, skeleton, c.model, 'exllamav3');
      assert.match(
        py,
        new RegExp(
          `^model\\.load\\(use_per_device=\\[${x.use_per_device.join(', ').replace(/\./g, '\\.')}\\], max_chunk_size=${x.chunk_size}, max_batch_size=${plan.workload.batch}\\)$`,
          'm',
        ),
      );
      assert.match(py, new RegExp(`^os\\.environ\\["CUDA_VISIBLE_DEVICES"\\] = "${used.map((d) => d.id).join(',')}"`, 'm'));
      const split = /^# expected split: (.+) \(exllamav3 decides/m.exec(py)![1]!;
      assert.equal(
        [...split.matchAll(/(\d+) layers/g)].reduce((n, m) => n + Number(m[1]), 0),
        c.layers,
      );
      if (c.cacheMode === 'FP16') assert.match(py, new RegExp(`^cache = Cache\\(model, max_num_tokens=${x.cache_tokens}\\)`, 'm'));
      else assert.match(py, new RegExp(`layer_type=CacheLayer_quant, k_bits=${c.cacheMode.split(',')[0]}, v_bits=${c.cacheMode.split(',')[1]}\\)`));

      const yml = renderPlan(plan, skeleton, c.model, 'tabbyapi');
      const doc = parseYaml(yml) as { model: Record<string, unknown> };
      assert.deepEqual(Object.keys(doc.model), TABBY_KEYS);
      assert.deepEqual(doc.model['gpu_split'], x.use_per_device);
      assert.equal(doc.model['backend'], 'exllamav3');
      assert.equal(doc.model['gpu_split_auto'], false);
      assert.equal(doc.model['cache_mode'], c.cacheMode);
      assert.equal(doc.model['max_seq_len'], plan.workload.ctx);
      assert.equal(doc.model['cache_size'], plan.workload.ctx * plan.workload.batch);
      assert.equal((doc.model['cache_size'] as number) % 256, 0);
      assert.equal((doc.model['chunk_size'] as number) % 256, 0);
      assert.ok((doc.model['chunk_size'] as number) <= plan.workload.ubatch * plan.workload.batch);
      assert.equal(doc.model['max_batch_size'], plan.workload.batch);
      assert.match(yml, /^# start TabbyAPI with CUDA_VISIBLE_DEVICES=/);
    });
  }

  it('counts the cache as exllamav3 allocates it: float16 whatever the weights, quantized at bits/8 + a scale per 32', async () => {
    const fp16 = (await makePlan('llama-2-7b', { ...BASE, deviceSpec: '1xA100-80GB' })).plan;
    const q8 = (await makePlan('llama-2-7b', { ...BASE, deviceSpec: '1xA100-80GB', kvDtype: 'q8_0' })).plan;
    // 32 layers × 4096 tokens × 4096 K and 4096 V values.
    const values = 32 * 4096 * 2 * 4096;
    assert.equal(fp16.devices[0]!.kv, values * 2);
    assert.equal(q8.devices[0]!.kv, values * (1 + 1 / 16));
  });

  it('plans an EXL3 folder at the sizes it stores (trellis tiles in place of float weights)', async () => {
    const dir = join(root, 'exl3');
    mkdirSync(dir, { recursive: true });
    const config = { ...TINY_LLAMA_CONFIG, torch_dtype: 'float16', quantization_config: { quant_method: 'exl3', bits: 4 } };
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
    // EXL3 keeps each block matrix as 16×16 tiles of 4-bit codes (16 int16 words per tile per bit) and two sign vectors.
    const tensors = storedTensorsFor({ ...config, torch_dtype: 'float16' }).flatMap((t) =>
      t.name.startsWith('model.layers.') && t.name.endsWith('_proj.weight')
        ? [
            { name: t.name.replace(/weight$/, 'trellis'), shape: [t.shape[1]! / 16, t.shape[0]! / 16, 16 * 4], dtype: 'int16' },
            { name: t.name.replace(/weight$/, 'suh'), shape: [t.shape[1]!], dtype: 'float16' },
            { name: t.name.replace(/weight$/, 'svh'), shape: [t.shape[0]!], dtype: 'float16' },
          ]
        : [t],
    );
    writeSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'pt' }, { fill: 'zero' });
    // Besides what the file stores, the runtime computes the rotary inv_freq buffer: head_dim / 2 float32 values.
    const stored = tensors.reduce((n, t) => n + tensorBytes(t.shape, t.dtype), 0) + (64 / 4 / 2) * 4;
    const { plan } = await makePlan(dir, { ...BASE, ctx: '512', gpuMemory: '24GiB', maxMemory: '0=1GiB,cpu=1GiB' });
    assert.equal(
      plan.devices.reduce((n, d) => n + d.weights, 0),
      stored,
    );
    assert.ok(plan.devices[0]!.modules.includes('model.layers.0'), plan.devices[0]!.modules.join(' '));
  });

  it('the library gives the same exports', async () => {
    const { plan, skeleton } = await planWithSkeleton('llama-2-7b', { deviceSpec: '2xRTX-4090', maxMemory: { 0: '8GiB', 1: '20GiB' }, target: 'exllamav3' });
    assert.equal(exporters.exllamav3(plan, skeleton, 'llama-2-7b'), renderPlan(plan, skeleton, 'llama-2-7b', 'exllamav3'));
    assert.equal(exporters.tabbyapi(plan, skeleton, 'llama-2-7b'), renderPlan(plan, skeleton, 'llama-2-7b', 'tabbyapi'));
    assert.throws(() => exporters.tabbyapi({ ...plan, exllamav3: undefined } as never, skeleton, 'x'), /not made for exllamav3/);
  });

  it('an infeasible plan says exllamav3 keeps every layer on its GPUs, and no remedy offloads', async () => {
    const r = await cli(['plan', 'llama-2-70b', '--device-spec', '2xRTX-4090', '--max-memory', '0=20GiB,1=20GiB,cpu=200GiB', '--format', 'tabbyapi']);
    assert.equal(r.code, 2);
    assert.match(r.err, /note: exllamav3 keeps every layer on its GPUs/);
    assert.doesNotMatch(r.err, /cpu is short/, 'no cpu to fall short of');
    assert.doesNotMatch(r.err, /--max-memory …,cpu=/);
  });

  it('refuses what exllamav3 cannot run, naming why', async () => {
    const tiny = writeTinyFamilyCheckpoint(join(root, 'tiny'), 'llama2');
    const gguf = writeTinyGguf(tiny);
    const gptq = writeTinyFamilyCheckpoint(join(root, 'gptq'), 'llama2', { config: { quantization_config: { quant_method: 'gptq', bits: 4 } } });
    const cases: [string[], RegExp][] = [
      [
        ['plan', gguf, '--gpu-memory', '24GiB', '--format', 'exllamav3'],
        /exllamav3 loads Hugging Face folders \(float16 or EXL3\); for a GGUF file use --format llama\.cpp/,
      ],
      [['plan', gptq.dir, '--gpu-memory', '24GiB', '--format', 'exllamav3'], /exllamav3 loads float16 or EXL3 weights, not gptq/],
      [['plan', tiny.dir, '--devices', 'virtual:2', '--format', 'exllamav3'], /exllamav3 runs on CUDA GPUs, not virtual devices/],
      [
        ['plan', 'llama-2-7b', '--gpu-memory', '24GiB', '--max-memory', '0=20GiB,disk=100GiB', '--format', 'tabbyapi'],
        /exllamav3 cannot offload weights to disk/,
      ],
      [['plan', 'gpt2', '--gpu-memory', '24GiB', '--format', 'exllamav3'], /GPT2LMHeadModel is not among the architectures exllamav3 registers/],
      [
        ['plan', 'chatglm3-6b', '--gpu-memory', '24GiB', '--format', 'tabbyapi'],
        /ChatGLMForConditionalGeneration is not among the architectures exllamav3 registers/,
      ],
      [
        ['plan', 'llama-2-7b', '--gpu-memory', '24GiB', '--kv-dtype', 'q4_1', '--format', 'exllamav3'],
        /--kv-dtype: exllamav3 keeps the cache in float16 or 2–8 bits/,
      ],
      [['plan', 'llama-2-7b', '--gpu-memory', '24GiB', '--dtype', 'bfloat16', '--format', 'exllamav3'], /--dtype: exllamav3 computes in float16, not bfloat16/],
      [['plan', 'llama-2-7b', '--gpu-memory', '24GiB', '--ctx', '1000', '--format', 'exllamav3'], /--ctx: exllamav3's cache holds whole 256-token pages/],
      [['plan', 'llama-2-7b', '--cluster', 'a=1xRTX-4090,b=1xRTX-4090', '--format', 'exllamav3'], /--cluster: exllamav3 runs on one host/],
      [
        ['plan', 'llama-2-7b', '--gpu-memory', '24GiB', '--ubatch', '128', '--format', 'exllamav3'],
        /--ubatch: exllamav3 prefills in chunks of whole 256-token pages/,
      ],
      [
        ['plan', 'llama-2-7b', '--gpu-memory', '24GiB', '--target', 'vllm', '--format', 'tabbyapi'],
        /--target: --format tabbyapi runs under exllamav3, not vllm/,
      ],
    ];
    for (const [args, re] of cases) {
      const r = await cli(args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.out}${r.err}`);
      assert.match(r.err, re);
      assert.equal(r.err.trim().split('\n').length, 1, r.err);
    }
  });
});
