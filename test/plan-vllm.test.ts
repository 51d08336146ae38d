/**
 * `plan --format vllm`: one `vllm serve` line per plan. The pipeline partition sums to the model's layers with a
 * stage per GPU that holds blocks, the one --gpu-memory-utilization keeps every GPU within its cap (the tightest
 * one sets it) and the plan holds under that share, flags and environment are spelled as vLLM spells them, the
 * line is valid shell, and what vLLM cannot run is refused with the reason.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { makePlan, renderPlan, type PlanFlags } from '../src/cli/plan-command.js';
import { exporters, planWithSkeleton } from '../src/index.js';
import { realModelsDir } from './helpers/paths.js';
import { writeTinyFamilyCheckpoint } from './helpers/tiny-llama-family.js';
import { writeTinyGguf } from './helpers/tiny-gguf.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import { TORCH_CUDA_CONTEXT } from '../src/planner/memory-model.js';
import { cli } from './helpers/run-cli.js';

const root = tempDir('vramfit-vllm-');
after(() => cleanup(root));

const GiB = 1024 ** 3;
const FLAGS: PlanFlags = { strategy: 'fit', ctx: '4096', batch: '1', ubatch: '512', format: 'vllm' };

/** POSIX shell words of one line with single quotes (what shellWord writes); throws on anything unbalanced. */
function shellWords(line: string): string[] {
  const words: string[] = [];
  const re = /'([^']*)'|([^\s'"\\$`;&|<>()]+)|(\S)/g;
  let word: string | undefined;
  let last = -1;
  for (const m of line.matchAll(re)) {
    if (m[3] !== undefined) throw new Error(`unquoted ${JSON.stringify(m[3])} in ${line}`);
    const piece = m[1] ?? m[2]!;
    word = m.index === last && word !== undefined ? word + piece : piece;
    if (m.index === last) words[words.length - 1] = word;
    else words.push(word);
    last = m.index + m[0].length;
  }
  return words;
}

interface Parsed {
  env: Record<string, string>;
  args: string[];
  flag(name: string): string | undefined;
  notes: string[];
}

function parse(out: string): Parsed {
  const [line, ...rest] = out.trimEnd().split('\n');
  const words = shellWords(line!);
  const env: Record<string, string> = {};
  while (/^[A-Z_]+=/.test(words[0]!)) {
    const [k, v] = words.shift()!.split('=') as [string, string];
    env[k] = v;
  }
  assert.deepEqual(words.slice(0, 2), ['vllm', 'serve']);
  return { env, args: words, flag: (name) => (words.includes(name) ? words[words.indexOf(name) + 1] : undefined), notes: rest };
}

const CASES: { model: string; layers: number; args: string[] }[] = [
  { model: 'llama-2-7b', layers: 32, args: ['--gpu-memory', '24GiB,24GiB', '--max-memory', '0=12GB,1=10GB'] },
  { model: 'qwen2.5-72b', layers: 80, args: ['--device-spec', '4xA100-80GB', '--max-memory', '0=60GiB,1=70GiB,2=75GiB,3=40GiB', '--ctx', '8192'] },
  {
    model: join(realModelsDir, 'mistralai__Mixtral-8x7B-v0.1'),
    layers: 32,
    args: ['--device-spec', '2xA100-80GB', '--max-memory', '0=70GiB,1=50GiB', '--ctx', '16384'],
  },
  { model: 'llama-2-7b', layers: 32, args: ['--gpu-memory', '24GiB,24GiB', '--max-memory', '0=6GB,1=7GB,cpu=30GiB'] },
];

describe('plan --format vllm', () => {
  for (const c of CASES) {
    it(`${c.model.split('/').pop()} ${c.args.join(' ')}: partition, one fraction within every cap, flags as vLLM spells them`, async () => {
      const r = await cli(['plan', c.model, ...c.args, '--format', 'vllm']);
      assert.equal(r.code, 0, r.err);
      const p = parse(r.out);
      const caps = Object.fromEntries(
        c.args[c.args.indexOf('--max-memory') + 1]!.split(',').map((kv) => {
          const [k, v] = kv.split('=') as [string, string];
          const n = Number(/[\d.]+/.exec(v)![0]);
          return [k, v.endsWith('GiB') ? n * GiB : n * 1e9];
        }),
      );
      const total = c.args.includes('--device-spec') ? 80 * GiB : 24 * GiB;
      const gpus = p.env['CUDA_VISIBLE_DEVICES']!.split(',');
      const fraction = Number(p.flag('--gpu-memory-utilization'));
      // One fraction: no GPU's share passes its cap, and the tightest GPU's share is its cap to 0.1 %.
      const ratios = Object.entries(caps)
        .filter(([k]) => /^\d+$/.test(k))
        .map(([, v]) => v / total);
      for (const ratio of ratios) assert.ok(fraction * total <= ratio * total + 1, `${fraction} × total passes a cap`);
      assert.ok(Math.min(...ratios) - fraction < 0.001 + 1e-9, `${fraction} is not the tightest cap's ${Math.min(...ratios)}`);
      if (gpus.length > 1) {
        const partition = p.env['VLLM_PP_LAYER_PARTITION']!.split(',').map(Number);
        assert.equal(partition.length, gpus.length);
        assert.equal(Number(p.flag('--pipeline-parallel-size')), gpus.length);
        assert.equal(
          partition.reduce((a, b) => a + b, 0),
          c.layers,
        );
        assert.ok(partition.every((n) => n > 0));
      } else assert.equal(p.env['VLLM_PP_LAYER_PARTITION'], undefined);
      assert.equal(p.flag('--max-model-len'), c.args.includes('--ctx') ? c.args[c.args.indexOf('--ctx') + 1] : '4096');
      assert.equal(p.flag('--max-num-seqs'), '1');
      // Every GPU's predicted use under vLLM's memory model stays within its share.
      const { plan } = await makePlan(c.model, {
        ...FLAGS,
        ...Object.fromEntries(
          [
            ['--gpu-memory', 'gpuMemory'],
            ['--device-spec', 'deviceSpec'],
            ['--max-memory', 'maxMemory'],
            ['--ctx', 'ctx'],
          ]
            .filter(([f]) => c.args.includes(f!))
            .map(([f, k]) => [k, c.args[c.args.indexOf(f!) + 1]]),
        ),
      });
      assert.equal(plan.target, 'vllm');
      for (const d of plan.devices.filter((x) => x.kind === 'gpu'))
        assert.ok(d.used <= Math.floor(fraction * total), `GPU ${d.id} ${d.used} > ${fraction} × total`);
      const offloaded = plan.devices.find((d) => d.kind === 'cpu')?.weights ?? 0;
      if (offloaded > 0) assert.ok(Number(p.flag('--cpu-offload-gb')) * GiB >= offloaded / gpus.length, r.out);
      else assert.equal(p.flag('--cpu-offload-gb'), undefined);
      assert.ok(
        p.notes.every((n) => n.startsWith('# ')),
        'notes are shell comments',
      );
    });
  }

  it('a model on one whole card: no offload where the plan keeps every block on it, and a fraction that leaves the CUDA context free', async () => {
    for (const format of ['vllm', 'sglang']) {
      const r = await cli(['plan', 'llama-2-7b', '--gpu-memory', '24GiB', '--format', format]);
      assert.equal(r.code, 0, r.err);
      assert.doesNotMatch(r.out, /--cpu-offload-gb/);
      assert.match(r.out, /^# stages: GPU 0 32 layers;/m);
      assert.doesNotMatch(r.out, /layout moves/, 'the embedding and head already sit on the one stage');
    }
    const whole = await makePlan('llama-2-7b', { ...FLAGS, gpuMemory: '24GiB' });
    const f = whole.plan.vllm!.gpu_memory_utilization;
    // vLLM starts only when what is free after its CUDA context is at least total × f.
    assert.ok(f < 1 && f * 24 * GiB <= 24 * GiB - TORCH_CUDA_CONTEXT, String(f));
  });

  it('says what the one fraction costs the GPUs whose caps were larger', async () => {
    const r = await cli(['plan', 'llama-2-7b', '--gpu-memory', '24GiB,24GiB', '--max-memory', '0=20GB,1=10GB', '--format', 'vllm']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^# GPU 0: vLLM's one --gpu-memory-utilization 0\.38\d lets it use [\d.]+ GiB of its 18\.63 GiB cap \([\d.]+ GiB unused\)$/m);
    assert.doesNotMatch(r.out, /^# GPU 1:/m);
  });

  it('an infeasible plan says the caps were vLLM’s share', async () => {
    const r = await cli(['plan', 'llama-2-7b', '--gpu-memory', '24GiB,24GiB', '--max-memory', '0=5GB,1=10GB', '--format', 'vllm']);
    assert.equal(r.code, 2);
    assert.match(r.err, /note: vLLM runs every GPU at one --gpu-memory-utilization, 0\.194 here/);
  });

  it('refuses what vLLM cannot run, naming why', async () => {
    const tiny = writeTinyFamilyCheckpoint(join(root, 'tiny'), 'llama2');
    const gguf = writeTinyGguf(tiny);
    const odd = join(root, 'odd');
    mkdirSync(odd);
    const config = JSON.parse(readFileSync(join(tiny.dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    writeFileSync(join(odd, 'config.json'), JSON.stringify({ ...config, architectures: ['OddForCausalLM'], model_type: 'odd' }));
    copyFileSync(join(tiny.dir, 'model.safetensors'), join(odd, 'model.safetensors'));
    const cases: [string[], RegExp][] = [
      [['plan', gguf, '--gpu-memory', '24GiB', '--format', 'vllm'], /give vLLM the Hugging Face folder; for a GGUF file use --format llama\.cpp/],
      [['plan', tiny.dir, '--devices', 'virtual:2', '--format', 'vllm'], /vLLM runs on CUDA GPUs, not virtual devices/],
      [['plan', 'llama-2-7b', '--gpu-memory', '24GiB', '--max-memory', '0=4GB,cpu=2GB,disk=100GB', '--format', 'vllm'], /vLLM cannot offload weights to disk/],
      [
        ['plan', 'llama-2-7b', '--gpu-memory', '24GiB', '--kv-dtype', 'q8_0', '--format', 'vllm'],
        /--kv-dtype: vLLM keeps the KV cache in the model's dtype or fp8, not q8_0/,
      ],
      [['plan', odd, '--gpu-memory', '24GiB', '--format', 'vllm'], /OddForCausalLM is not among the architectures vLLM's registry lists/],
      [['plan', 'llama-2-7b', '--gpu-memory', '24GiB', '--format', 'vllm', '--target', 'transformers'], /--format vllm runs under vllm, not transformers/],
    ];
    for (const [args, re] of cases) {
      const r = await cli(args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.out}${r.err}`);
      assert.match(r.err, re);
    }
  });

  it('renders from the plan object as the library gives it', async () => {
    const made = await planWithSkeleton('qwen3-8b', { gpuMemory: '24GiB', maxMemory: '0=20GiB', target: 'vllm' });
    const out = exporters.vllm(made.plan, made.skeleton, 'qwen3-8b');
    assert.equal(out, renderPlan(made.plan, made.skeleton, 'qwen3-8b', 'vllm'));
    assert.match(out, /^CUDA_VISIBLE_DEVICES=0 vllm serve Qwen\/Qwen3-8B --gpu-memory-utilization 0\.833 --max-model-len 4096 /);
    assert.equal(made.plan.vllm?.gpu_memory_utilization, 0.833);
  });
});
