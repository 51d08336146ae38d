#!/usr/bin/env node
/**
 * The checks scripts/gpu-check runs on a lent GPU machine (plain Node, no dependencies beyond the packed
 * vramfit). Each step is independent: a failure is recorded with the end of its output and the next runs.
 *   1. `vramfit devices --json` beside nvidia-smi: ids, names and memory agree?
 *   2. a random-weight Llama-architecture checkpoint generated here (~1.1 B parameters, F16), run on the
 *      GPU under a cap that fits and under one that forces GPU + CPU: nvidia-smi's memory for the process
 *      sampled during the run vs the cap, the plan's prediction, the allocator's and the device's peak;
 *      prefill and decode tokens/s, and decode against the card's memory bandwidth; the first greedy
 *      tokens against a CPU run of the same model;
 *   3. the transformers side: a small random checkpoint saved with save_pretrained, planned by
 *      `vramfit plan --format python` with a 2 GiB cap on GPU 0, the generated script run with the
 *      machine's transformers + accelerate; torch.cuda.max_memory_reserved() against the cap.
 * Options: --size tiny|1b (default 1b; tiny for a dry run on a CPU Vulkan device), --skip-python.
 */
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const CLI = join(ROOT, 'bin', 'vramfit.js');
const WORK = process.env.GPU_CHECK_WORK ?? mkdtempSync(join(tmpdir(), 'vramfit-gpu-check-'));
const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const SIZE = arg('--size', process.env.GPU_CHECK_SIZE ?? '1b');
const GiB = 2 ** 30;
const MiB = 2 ** 20;
const started = Date.now();
const report = { started: new Date().toISOString(), size: SIZE, node: process.version, work: WORK, steps: {} };

const tail = (s, n = 1500) => (s ?? '').slice(-n);
const fmt = (b) => (b === null || b === undefined ? 'n/a' : `${(b / MiB).toFixed(1)} MiB`);

function run(cmd, args, { timeoutMs = 120_000, env = {} } = {}) {
  const t0 = Date.now();
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: timeoutMs, env: { ...process.env, ...env }, maxBuffer: 256 * MiB });
  return { status: r.status, signal: r.signal, error: r.error?.message, stdout: r.stdout ?? '', stderr: r.stderr ?? '', seconds: (Date.now() - t0) / 1000 };
}

async function step(name, fn) {
  const t0 = Date.now();
  console.log(`\n== ${name}`);
  try {
    report.steps[name] = { ok: true, ...(await fn()) };
    if (report.steps[name].skipped) console.log(`   skipped: ${report.steps[name].skipped}`);
  } catch (e) {
    report.steps[name] = { ok: false, error: e instanceof Error ? e.message : String(e) };
    console.log(`   FAILED: ${report.steps[name].error}`);
  }
  report.steps[name].seconds = (Date.now() - t0) / 1000;
  console.log(`   (${report.steps[name].seconds.toFixed(1)} s)`);
}

/** nvidia-smi's GPUs, or null where it is missing. */
function smiGpus() {
  const r = run('nvidia-smi', ['--query-gpu=index,uuid,pci.bus_id,name,memory.total,memory.used', '--format=csv,noheader,nounits'], { timeoutMs: 30_000 });
  if (r.status !== 0) return null;
  return r.stdout
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => {
      const [index, uuid, pci, name, total, used] = l.split(',').map((x) => x.trim());
      return { index: Number(index), uuid, pci, name, totalBytes: Number(total) * MiB, usedBytes: Number(used) * MiB };
    });
}

// 1. ----------------------------------------------------------------------------------------------
await step('devices', () => {
  const smi = smiGpus();
  const r = run(process.execPath, [CLI, 'devices', '--json'], { timeoutMs: 60_000 });
  if (r.status !== 0) throw new Error(`vramfit devices exited ${r.status}: ${tail(r.stderr)}`);
  const inv = JSON.parse(r.stdout);
  const gpus = inv.gpus.map((g) => ({
    id: g.logicalIndex,
    name: g.name,
    backend: g.backend ?? null,
    ggml: g.ggmlName ?? null,
    totalBytes: g.totalBytes,
    freeBytes: g.freeBytes,
  }));
  const agreement = (smi ?? []).map((card) => {
    const g = inv.gpus.find((x) => x.physicalIndex === card.index);
    return {
      smiIndex: card.index,
      smiName: card.name,
      vramfitId: g?.logicalIndex ?? null,
      nameAgrees: g ? g.name === card.name : false,
      totalAgrees: g ? Math.abs(g.totalBytes - card.totalBytes) <= 0.02 * card.totalBytes : false,
      engine: g?.backend ? `${g.ggmlName} via ${g.backend}` : 'not seen by ggml',
    };
  });
  for (const g of gpus)
    console.log(`   vramfit GPU ${g.id}: ${g.name} ${g.ggml ? `[${g.ggml} via ${g.backend}]` : ''} ${fmt(g.totalBytes)} total, ${fmt(g.freeBytes)} free`);
  if (!smi) console.log('   nvidia-smi: not found');
  for (const a of agreement)
    console.log(
      `   nvidia-smi ${a.smiIndex} ${a.smiName}: vramfit id ${a.vramfitId}, name ${a.nameAgrees ? 'agrees' : 'DIFFERS'}, memory ${a.totalAgrees ? 'agrees' : 'DIFFERS'}, ${a.engine}`,
    );
  console.log(`   backends: ${(inv.packages ?? []).map((p) => `${p.backend} ${p.state}`).join(', ')}`);
  return { nvidiaSmi: smi, vramfit: gpus, packages: inv.packages ?? null, agreement };
});

// 2. ----------------------------------------------------------------------------------------------
const CONFIGS = {
  tiny: { hidden_size: 256, intermediate_size: 704, num_hidden_layers: 8, num_attention_heads: 8, num_key_value_heads: 4, vocab_size: 2048 },
  '1b': { hidden_size: 2048, intermediate_size: 5632, num_hidden_layers: 22, num_attention_heads: 32, num_key_value_heads: 4, vocab_size: 32000 },
};

/** float32 → IEEE half bits (round to nearest). */
function toHalf(v) {
  const f = new Float32Array([v]);
  const x = new Uint32Array(f.buffer)[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = ((x >>> 23) & 0xff) - 112;
  const mant = x & 0x7fffff;
  if (exp <= 0) return sign;
  if (exp >= 31) return sign | 0x7c00;
  return sign | (exp << 10) | ((mant + 0x1000) >>> 13);
}

/** config.json + model.safetensors (F16) of a Llama model with small random weights, streamed to disk. */
function writeCheckpoint(dir, shape) {
  mkdirSync(dir, { recursive: true });
  const cfg = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    max_position_embeddings: 2048,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: false,
    torch_dtype: 'float16',
    ...shape,
  };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg, null, 2));
  const H = shape.hidden_size,
    I = shape.intermediate_size,
    V = shape.vocab_size;
  const KV = (H / shape.num_attention_heads) * shape.num_key_value_heads;
  const tensors = [['model.embed_tokens.weight', [V, H]]];
  for (let l = 0; l < shape.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    tensors.push(
      [`${p}input_layernorm.weight`, [H]],
      [`${p}self_attn.q_proj.weight`, [H, H]],
      [`${p}self_attn.k_proj.weight`, [KV, H]],
      [`${p}self_attn.v_proj.weight`, [KV, H]],
      [`${p}self_attn.o_proj.weight`, [H, H]],
    );
    tensors.push(
      [`${p}post_attention_layernorm.weight`, [H]],
      [`${p}mlp.gate_proj.weight`, [I, H]],
      [`${p}mlp.up_proj.weight`, [I, H]],
      [`${p}mlp.down_proj.weight`, [H, I]],
    );
  }
  tensors.push(['model.norm.weight', [H]], ['lm_head.weight', [V, H]]);
  const header = {};
  let offset = 0;
  for (const [name, shape_] of tensors) {
    const bytes = shape_.reduce((a, b) => a * b, 1) * 2;
    header[name] = { dtype: 'F16', shape: shape_, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const fd = openSync(join(dir, 'model.safetensors'), 'w');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeSync(fd, len);
  writeSync(fd, json);
  // A block of random normal values (σ 0.02), written again and again: fast, and not degenerate.
  let seed = 7;
  const uniform = () => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) + 0.5) / 2 ** 32;
  const block = Buffer.alloc(4 * MiB + 2);
  for (let i = 0; i < block.length / 2; i++) block.writeUInt16LE(toHalf(0.02 * Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform())), 2 * i);
  const one = Buffer.alloc(2 * H);
  for (let i = 0; i < H; i++) one.writeUInt16LE(toHalf(1), 2 * i);
  for (const [name, shape_] of tensors) {
    let left = header[name].data_offsets[1] - header[name].data_offsets[0];
    if (shape_.length === 1) {
      writeSync(fd, one.subarray(0, left));
      continue;
    }
    let at = (name.length * 2) % 1024;
    while (left > 0) {
      const n = Math.min(left, block.length - at) & ~1;
      writeSync(fd, block.subarray(at, at + n));
      left -= n;
      at = 0;
    }
  }
  closeSync(fd);
  return { params: offset / 2, bytes: offset, tensors: tensors.length };
}

/** Peak bandwidth of known cards, bytes/s, by nvidia-smi's name. */
function peakBandwidth(name) {
  if (/H200/.test(name)) return 4.8e12;
  if (/H100.*PCIe/.test(name)) return 2.0e12;
  if (/H100/.test(name)) return 3.35e12;
  if (/A100.*80/.test(name)) return 2.0e12;
  if (/A100/.test(name)) return 1.55e12;
  return null;
}

/** Runs `vramfit run …` while sampling nvidia-smi's memory for that process every 100 ms. */
function runSampled(args, timeoutMs) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, [CLI, 'run', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    let smiMax = null;
    let samples = 0;
    const sampler = setInterval(() => {
      const r = spawnSync('nvidia-smi', ['--query-compute-apps=pid,used_memory', '--format=csv,noheader,nounits'], { encoding: 'utf8', timeout: 2000 });
      if (r.status !== 0) return;
      for (const line of r.stdout.trim().split('\n')) {
        const [pid, used] = line.split(',').map((x) => x.trim());
        if (Number(pid) === child.pid) {
          smiMax = Math.max(smiMax ?? 0, Number(used) * MiB);
          samples++;
        }
      }
    }, 100);
    const killer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (status, signal) => {
      clearInterval(sampler);
      clearTimeout(killer);
      resolve({ status, signal, stdout, stderr, smiMax, samples, seconds: (Date.now() - t0) / 1000 });
    });
  });
}

const smiNow = smiGpus();
const card = smiNow?.[0]?.name ?? report.steps.devices?.vramfit?.[0]?.name ?? 'unknown';
const shape = CONFIGS[SIZE] ?? CONFIGS['1b'];
const modelDir = join(WORK, `llama-${SIZE}`);
let model;
await step('checkpoint', () => {
  model = writeCheckpoint(modelDir, shape);
  console.log(`   ${(model.params / 1e9).toFixed(3)} B parameters, ${fmt(model.bytes)} F16, in ${modelDir}`);
  return { ...model, config: shape };
});

const PROMPT = Array.from({ length: 128 }, (_, i) => 3 + ((i * 7919 + 104729) % (shape.vocab_size - 3)));
const NEW = 64;
const runArgs = (devices, maxMemory, newTokens = NEW) => [
  modelDir,
  '--devices',
  devices,
  '--max-memory',
  maxMemory,
  '--input-ids',
  PROMPT.join(','),
  '--max-new-tokens',
  String(newTokens),
  '--greedy',
  '--json',
  '--ctx',
  '512',
];
const gpuRuns = {};

const gpu0Total = report.steps.devices?.vramfit?.find((g) => g.id === 0)?.totalBytes ?? Infinity;
/** The GPU's whole need in the run that fits (vramfit's buffers and the backend's allowance). */
const fitNeed = () => {
  const d = gpuRuns['fits on the GPU']?.perDevice.find((x) => x.id === '0');
  return d ? d.predicted_peak + d.backend_overhead : model.bytes;
};
for (const [name, devices, cap] of [
  ['fits on the GPU', 'gpu:0', () => `0=${Math.min(model.bytes + 2 * GiB, gpu0Total)}B`],
  // 60 % of what fitting took: the rest of the blocks must go to the CPU.
  ['GPU + CPU', 'gpu:0,cpu', () => `0=${Math.floor(0.6 * fitNeed())}B,cpu=${model.bytes + 8 * GiB}B`],
]) {
  await step(`run: ${name}`, async () => {
    if (!model) throw new Error('no checkpoint');
    const maxMemory = cap();
    const r = await runSampled(runArgs(devices, maxMemory), 300_000);
    if (r.status !== 0) throw new Error(`vramfit run exited ${r.status ?? r.signal}: ${tail(r.stderr)}`);
    const j = JSON.parse(r.stdout);
    const gpu = j.devices.find((d) => d.id === '0');
    const gpuWeights = gpu?.breakdown?.weights ?? 0;
    const bw = peakBandwidth(card);
    const achieved = j.generation_tokens_per_second ? gpuWeights * j.generation_tokens_per_second : null;
    const out = {
      devices,
      maxMemory,
      generatedIds: j.generated_ids,
      promptTokS: j.prompt_tokens_per_second,
      decodeTokS: j.generation_tokens_per_second,
      perDevice: j.devices,
      nvidiaSmiPeakBytes: r.smiMax,
      nvidiaSmiSamples: r.samples,
      gpuWeightBytes: gpuWeights,
      decodeBytesPerSecond: achieved,
      bandwidthFraction: achieved && bw ? achieved / bw : null,
      underCap: gpu
        ? {
            allocator: gpu.measured_peak <= gpu.cap,
            device: gpu.device_measured_peak === null ? null : gpu.device_measured_peak <= gpu.cap,
            nvidiaSmi: r.smiMax === null ? null : r.smiMax <= gpu.cap,
          }
        : null,
    };
    for (const d of j.devices)
      console.log(
        `   device ${d.id} ${d.name ?? ''}: cap ${fmt(d.cap)}, predicted ${fmt(d.predicted_peak)} + ${fmt(d.backend_overhead)} backend, allocator peak ${fmt(d.measured_peak)}, device-measured ${fmt(d.device_measured_peak)}`,
      );
    console.log(`   nvidia-smi for the process: ${fmt(r.smiMax)} at most (${r.samples} samples)`);
    console.log(
      `   prefill ${j.prompt_tokens_per_second?.toFixed(1)} tok/s, decode ${j.generation_tokens_per_second?.toFixed(1)} tok/s; decode reads ${fmt(gpuWeights)} of GPU weights a token = ${achieved ? (achieved / 1e9).toFixed(1) : 'n/a'} GB/s${out.bandwidthFraction ? ` = ${(out.bandwidthFraction * 100).toFixed(1)} % of ${card}'s ${(bw / 1e12).toFixed(2)} TB/s` : ''}`,
    );
    gpuRuns[name] = out;
    return out;
  });
}

await step('run: CPU, the same first tokens', async () => {
  if (!model) throw new Error('no checkpoint');
  const r = await runSampled(runArgs('cpu', `0=${model.bytes + 4 * GiB}B`, 8), 300_000);
  if (r.status !== 0) throw new Error(`vramfit run exited ${r.status ?? r.signal}: ${tail(r.stderr)}`);
  const ids = JSON.parse(r.stdout).generated_ids;
  const gpuIds = gpuRuns['fits on the GPU']?.generatedIds?.slice(0, 8) ?? null;
  const same = gpuIds ? gpuIds.every((x, i) => x === ids[i]) : null;
  console.log(`   CPU ${ids.join(',')} vs GPU ${gpuIds?.join(',') ?? 'n/a'}: ${same === null ? 'no GPU run' : same ? 'same' : 'DIFFERENT'}`);
  return { cpuIds: ids, gpuIds, same };
});

// 3. ----------------------------------------------------------------------------------------------
const PY_MODEL = `
import json, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from tokenizers import Tokenizer, models, pre_tokenizers
d = sys.argv[1]
cfg = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16, num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, torch_dtype="float16")
torch.manual_seed(0)
LlamaForCausalLM(cfg).to(torch.float16).save_pretrained(d)
vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(997)}, "Hello": 1000}
tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>").save_pretrained(d)
print(json.dumps({"params": sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())}))
`;
const PY_RUN = `
import json, sys, runpy, torch
runpy.run_path(sys.argv[1], run_name="__main__")
print("@@" + json.dumps({"max_memory_reserved": torch.cuda.max_memory_reserved(0), "max_memory_allocated": torch.cuda.max_memory_allocated(0)}))
`;
await step('transformers: the python export runs under its cap', () => {
  if (process.argv.includes('--skip-python')) return { skipped: '--skip-python' };
  const probe = run(
    'python3',
    ['-c', 'import torch, transformers, accelerate; print(torch.__version__, transformers.__version__, accelerate.__version__, torch.cuda.is_available())'],
    { timeoutMs: 120_000 },
  );
  if (probe.status !== 0) return { skipped: `python3 cannot import torch, transformers and accelerate: ${tail(probe.stderr, 300)}` };
  console.log(`   torch, transformers, accelerate, cuda: ${probe.stdout.trim()}`);
  const dir = join(WORK, 'hf-llama');
  const made = run('python3', ['-c', PY_MODEL, dir], { timeoutMs: 240_000 });
  if (made.status !== 0) throw new Error(`saving the model failed: ${tail(made.stderr)}`);
  const capBytes = 2 * GiB;
  const plan = run(process.execPath, [CLI, 'plan', dir, '--max-memory', `0=${capBytes}B,cpu=16GiB`, '--format', 'python'], { timeoutMs: 60_000 });
  if (plan.status !== 0) throw new Error(`vramfit plan exited ${plan.status}: ${tail(plan.stderr)}`);
  const script = join(WORK, 'generated.py');
  writeFileSync(script, plan.stdout);
  const ran = run('python3', ['-c', PY_RUN, script], { timeoutMs: 240_000 });
  const line = ran.stdout.split('\n').find((l) => l.startsWith('@@'));
  const mem = line ? JSON.parse(line.slice(2)) : null;
  console.log(`   generated script: exit ${ran.status}; max_memory_reserved ${fmt(mem?.max_memory_reserved)} against the ${fmt(capBytes)} cap`);
  return {
    model: made.stdout.trim(),
    cap: capBytes,
    script: plan.stdout,
    exit: ran.status,
    stdoutTail: tail(ran.stdout, 600),
    stderrTail: tail(ran.stderr),
    ...mem,
    underCap: mem ? mem.max_memory_reserved <= capBytes : null,
  };
});

report.seconds = (Date.now() - started) / 1000;
const outDir = process.env.OUT ?? process.cwd();
const file = join(outDir, 'gpu-check.json');
writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
console.log(`\nreport: ${file} (${report.seconds.toFixed(0)} s in all)`);
if (!process.env.GPU_CHECK_KEEP) rmSync(modelDir, { recursive: true, force: true });
