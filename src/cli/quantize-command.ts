/**
 * `vramfit quantize MODEL -o OUT.gguf`: the plan's weight types written into a GGUF file llama.cpp loads, and the
 * llama.cpp flags that run it under the same caps. Registration and help here; the work loads when it runs.
 */
import { Option, type Command } from 'commander';
import type { Io } from './main.js';
import type { PlanFlags } from './plan-command.js';
import { QUANTIZE_TYPES } from '../planner/quantize.js';
import { InputError } from '../util/errors.js';
import { formatBytes } from '../planner/units.js';

export interface QuantizeFlags {
  output?: string;
  force?: boolean;
  quantize?: string;
  measure?: boolean;
  maxMemory?: string;
  gpus?: string;
  gpuMemory?: string;
  deviceSpec?: string;
  devices?: string;
  ctx: string;
  ubatch: string;
  kvDtype?: string;
  threads?: string;
}

export function addQuantizeCommand(program: Command, io: Io): void {
  program
    .command('quantize')
    .description(
      "Write a Llama-family checkpoint as a GGUF file in the weight types vramfit's plan chooses (--quantize TYPE or auto under your caps), with its tokenizer and chat template, and print the llama.cpp flags that run it under the same caps.",
    )
    .argument('<model>', 'a Llama, Mistral, Qwen2/2.5 or Qwen3 safetensors folder (or its .safetensors file, or a cached repo id)')
    .requiredOption('-o, --output <file.gguf>', 'the GGUF file to write (written under a temporary name, renamed when complete)')
    .option('--force', 'replace OUTPUT if it exists')
    .option(
      '--quantize <type>',
      `${QUANTIZE_TYPES.join(', ')} for every matrix (llama.cpp's rules: norms and biases stay F32, the head keeps at least q6_k, rows that are not whole blocks fall back), or auto: each block's, the embedding's and the head's type chosen so the model runs on the GPUs alone within the caps (needs --max-memory or simulated GPUs); default: the weights' own float types`,
    )
    .option('--measure', "with --quantize auto: rank types by each tensor's error measured on its weights (see vramfit plan --help)")
    .option('--max-memory <budgets>', 'per-GPU caps the plan must hold, as vramfit plan takes them: 0=5GiB,1=10GB')
    .option('--gpus <ids>', 'physical GPUs to plan for (as CUDA_VISIBLE_DEVICES takes them)')
    .option('--gpu-memory <sizes>', 'plan for GPUs with these totals: 24GiB,24GiB')
    .option('--device-spec <spec>', 'plan for known cards: 2xRTX-4090')
    .option('--devices <spec>', 'virtual:N — plan for N virtual devices')
    .option('--ctx <tokens>', 'context the KV cache must hold on the GPUs', '4096')
    .option('--ubatch <n>', 'tokens per forward pass during prefill', '512')
    .addOption(new Option('--kv-dtype <dtype>', "KV cache type (default: the model's 16-bit type; --quantize auto may choose q8_0 or q4_0)"))
    .option('--threads <n>', 'threads quantizing (default: every core)')
    .addHelpText(
      'after',
      `
The types are the plan's: --quantize TYPE follows vramfit run --quantize's rules, --quantize auto chooses per unit
under the caps given (see vramfit plan --help). The file follows llama.cpp's converter: its tensor names and
<arch>.* keys, q/k rows permuted for its NORMAL rope (architecture llama: Llama, Mistral), vectors in F32, Llama 3
rope scaling as rope_freqs, and tokenizer.json/tokenizer_config.json as tokenizer.ggml.* metadata and
tokenizer.chat_template. The llama.cpp command printed is vramfit plan OUTPUT --format llama.cpp with the same caps,
context and KV type (-ngl, --tensor-split, -ot for blocks llama.cpp's memory model keeps in RAM, -c, -ctk/-ctv).
Other architectures (MoE, GPT-2, ChatGLM, Baichuan) and GGUF inputs are refused.`,
    )
    .action(async (model: string, flags: QuantizeFlags) => {
      await quantizeModel(model, flags, io);
    });
}

async function quantizeModel(model: string, flags: QuantizeFlags, io: Io): Promise<void> {
  const [{ makePlan, renderPlan }, { exportGguf, checkGgufExport }, { readModel }, { availableParallelism }] = await Promise.all([
    import('./plan-command.js'),
    import('../engine/gguf-export.js'),
    import('../reader/read-model.js'),
    import('node:os'),
  ]);
  const out = flags.output!;
  const threads = flags.threads === undefined ? availableParallelism() : Number(flags.threads);
  if (!Number.isSafeInteger(threads) || threads < 1) throw new InputError('--threads', `expected a positive integer, got ${JSON.stringify(flags.threads)}`);
  if (flags.measure && flags.quantize !== 'auto') throw new InputError('--measure', 'ranks the types --quantize auto chooses; add --quantize auto');
  const source = await readModel(model);
  checkGgufExport(source, out, flags.force ?? false);
  const planFlags: PlanFlags = {
    strategy: 'fit',
    ctx: flags.ctx,
    batch: '1',
    ubatch: flags.ubatch,
    format: 'table',
    ...(flags.maxMemory !== undefined ? { maxMemory: flags.maxMemory } : {}),
    ...(flags.gpus !== undefined ? { gpus: flags.gpus } : {}),
    ...(flags.gpuMemory !== undefined ? { gpuMemory: flags.gpuMemory } : {}),
    ...(flags.deviceSpec !== undefined ? { deviceSpec: flags.deviceSpec } : {}),
    ...(flags.devices !== undefined ? { devices: flags.devices } : {}),
    ...(flags.kvDtype !== undefined ? { kvDtype: flags.kvDtype } : {}),
  };
  // The types: the plan's choice under the caps (auto), llama.cpp's rules (TYPE), or the weights as stored.
  let loaded = source;
  let kvDtype = flags.kvDtype;
  if (flags.quantize !== undefined) {
    const { plan, skeleton } = await makePlan(model, { ...planFlags, quantize: flags.quantize, ...(flags.measure ? { measure: true } : {}) });
    loaded = skeleton;
    kvDtype = plan.workload.kvDtype;
    for (const w of plan.warnings) if (/fall back|measure/.test(w)) io.stderr(`warning: ${w}\n`);
  }
  const tty = Boolean(process.stderr.isTTY);
  const result = await exportGguf({
    source,
    loaded,
    out,
    threads,
    ...(flags.force ? { force: true } : {}),
    ...(tty ? { onProgress: (done: number, total: number) => io.stderr(`\rwriting ${((100 * done) / Math.max(1, total)).toFixed(0)} %`) } : {}),
  });
  if (tty) io.stderr('\n');
  const lines = [`wrote ${result.path}: ${formatBytes(result.bytes)} from ${formatBytes(result.sourceBytes)} of weights in ${result.seconds.toFixed(1)} s`];
  for (const [type, t] of [...result.types].sort((a, b) => b[1].bytes - a[1].bytes))
    lines.push(`  ${type.padEnd(9)} ${String(t.tensors).padStart(5)} tensors  ${formatBytes(t.bytes)}`);
  const matrixBits = (8 * [...result.types].reduce((n, [, t]) => n + t.bytes, 0)) / Math.max(1, result.params);
  lines.push(`  ${matrixBits.toFixed(2)} bits per weight overall`);
  io.stdout(`${lines.join('\n')}\n`);
  // llama.cpp's flags for the written file, planned under its own memory model with the same GPU caps; what does
  // not fit there stays in RAM (-ot … =CPU), as llama.cpp would run it.
  const maxMemory = flags.maxMemory !== undefined && !/(^|,)\s*cpu\s*=/.test(flags.maxMemory) ? `${flags.maxMemory},cpu=90%` : flags.maxMemory;
  try {
    const { plan, skeleton } = await makePlan(out, {
      ...planFlags,
      ...(maxMemory !== undefined ? { maxMemory } : {}),
      format: 'llama.cpp',
      ...(kvDtype !== undefined ? { kvDtype } : {}),
    });
    io.stdout(`llama.cpp: ${renderPlan(plan, skeleton, out, 'llama.cpp')}`);
  } catch (e) {
    io.stdout(`llama.cpp: no flags — planning ${out} for llama.cpp under these caps failed: ${e instanceof Error ? e.message.split('\n')[0] : String(e)}\n`);
  }
}
