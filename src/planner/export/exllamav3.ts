/**
 * `--format exllamav3` (a Python load script) and `--format tabbyapi` (TabbyAPI's config.yml keys). What they take,
 * checked in their source (exllamav3 4f8ad01, August 2026; tabbyAPI e632af4):
 *  - `Model.load(use_per_device=[GB, …])`: GiB per visible GPU (× 1024³ in model.py load_gen); a device given 0 is
 *    not used. The autosplit loader (model_ls.py _load_autosplit) fills the devices in order: each module is loaded on
 *    the current device under torch.cuda.set_per_process_memory_fraction(use) and a dummy forward of max_chunk_size
 *    tokens runs through it; on out-of-memory it moves to the next device. The cap covers torch's allocator only
 *    (util/memory.py set_memory_fraction_use), so the CUDA context comes on top, and it is lifted after loading.
 *  - `Cache(model, max_num_tokens=N)` made before load: every attention layer's K/V for N tokens (all sequences
 *    share them, in 256-token pages) is allocated with its layer on that layer's device, so the cache is inside
 *    use_per_device. Float16 K/V, or `layer_type=CacheLayer_quant, k_bits, v_bits` (2–8 bits plus a float16 scale
 *    per 32 values: cache/quant.py).
 *  - The embedding loads to system RAM (modules/embedding.py caps prefer_cpu); a tied head gets its own GPU copy.
 *  - TabbyAPI (backends/exllamav3/model.py): `gpu_split` is passed as use_per_device and turns autosplit off;
 *    `cache_size` (tokens, a multiple of 256), `max_seq_len`, `cache_mode` (FP16 or "k_bits,v_bits"),
 *    `chunk_size` (max_chunk_size, a multiple of 256), `max_batch_size`, `backend: exllamav3`.
 * The plan fills the GPUs in order under the same caps, so its split is the one the loader is expected to make.
 */
import { tensorBytes } from '../../reader/dtypes.js';
import type { Skeleton } from '../../reader/skeleton.js';
import { InputError } from '../../util/errors.js';
import { TORCH_CUDA_CONTEXT } from '../memory-model.js';
import type { DevicePlan, Plan, PlanDeviceSpec } from '../plan.js';
import { formatBytes } from '../units.js';
import { basename } from 'node:path';
import { Document, type YAMLSeq } from 'yaml';
import { describeStages, pipelineStages } from './pipeline.js';

/** Architectures exllamav3 registers (exllamav3/architecture/architectures.py arch_string) among vramfit's families. */
export const EXLLAMAV3_ARCHITECTURES = new Set([
  'LlamaForCausalLM',
  'MistralForCausalLM',
  'MixtralForCausalLM',
  'Qwen2ForCausalLM',
  'Qwen3ForCausalLM',
  'Qwen3MoeForCausalLM',
  'Gemma2ForCausalLM',
  'Phi3ForCausalLM',
  'DeepseekV3ForCausalLM',
  'CohereForCausalLM',
]);

const GiB = 1024 ** 3;
/** exllamav3's cache page (constants.py PAGE_SIZE); TabbyAPI rounds cache_size and chunk_size to it. */
export const EXLLAMA_PAGE = 256;

/** KV types the quantized cache stores at the same bytes as the ggml type named: bits/8 + a float16 scale per 32 values. */
const CACHE_MODES: Record<string, { mode: string; bits?: number }> = {
  float16: { mode: 'FP16' },
  bfloat16: { mode: 'FP16' },
  q8_0: { mode: '8,8', bits: 8 },
  q5_0: { mode: '5,5', bits: 5 },
  q4_0: { mode: '4,4', bits: 4 },
};

/** The cache mode for a --kv-dtype, refused where exllamav3 has none of the same size. */
export function exllamaCacheMode(kvDtype: string): { mode: string; bits?: number } {
  const m = CACHE_MODES[kvDtype];
  if (!m) throw new InputError('--kv-dtype', `exllamav3 keeps the cache in float16 or 2–8 bits (q8_0, q5_0, q4_0 here), not ${kvDtype}`);
  return m;
}

/** What can be refused before planning: the source, the architecture, the devices, the context. */
export function checkExllamaInput(s: Skeleton, ctx: number | undefined, batch: number, ubatch: number, dtype: string | undefined): void {
  if (s.source.kind === 'gguf')
    throw new InputError('--format', 'exllamav3 loads Hugging Face folders (float16 or EXL3); for a GGUF file use --format llama.cpp');
  if (!EXLLAMAV3_ARCHITECTURES.has(s.root_class))
    throw new InputError(
      '--format',
      `${s.root_class} is not among the architectures exllamav3 registers in vramfit's families (${[...EXLLAMAV3_ARCHITECTURES].slice(0, 6).join(', ')}, …)`,
    );
  if (s.quantization && s.quantization.method !== 'exl3')
    throw new InputError('--format', `exllamav3 loads float16 or EXL3 weights, not ${s.quantization.method}; quantize with its convert.py`);
  if (dtype !== undefined && dtype !== 'float16') throw new InputError('--dtype', `exllamav3 computes in float16, not ${dtype}`);
  if (ubatch * batch < EXLLAMA_PAGE)
    throw new InputError('--ubatch', `exllamav3 prefills in chunks of whole 256-token pages and --ubatch × --batch is ${ubatch * batch}; give at least 256`);
  if (ctx !== undefined && (ctx * batch) % EXLLAMA_PAGE !== 0)
    throw new InputError('--ctx', `exllamav3's cache holds whole 256-token pages and --ctx × --batch is ${ctx * batch}; give a multiple of 256`);
}

/** The GPUs it runs (virtual devices and disk refused), and the CPU, which keeps only the embedding. */
export function exllamaDevices(devices: readonly PlanDeviceSpec[]): { gpus: PlanDeviceSpec[]; cpu?: PlanDeviceSpec } {
  if (devices.some((d) => d.kind === 'virtual')) throw new InputError('--format', 'exllamav3 runs on CUDA GPUs, not virtual devices');
  if (devices.some((d) => d.kind === 'disk')) throw new InputError('--format', 'exllamav3 cannot offload weights to disk; drop disk= from --max-memory');
  const gpus = devices.filter((d) => d.kind === 'gpu');
  if (gpus.length === 0) throw new InputError('--format', 'exllamav3 needs at least one GPU in the plan');
  const cpu = devices.find((d) => d.kind === 'cpu');
  return { gpus, ...(cpu ? { cpu } : {}) };
}

/** The embedding exllamav3 keeps in system RAM: the float matrices before the first block, and their module. */
export function exllamaEmbedding(s: Skeleton): { module: string; tensors: string[]; bytes: number } | undefined {
  const prefix = s.blocks ? `${s.blocks.prefix}.` : undefined;
  const first = prefix ? s.tensors.findIndex((t) => t.name.startsWith(prefix)) : -1;
  if (first <= 0) return undefined;
  const tensors = s.tensors.slice(0, first).filter((t) => t.kind === 'param' && t.shape.length === 2);
  if (tensors.length === 0) return undefined;
  const module = tensors[0]!.name.split('.').slice(0, -1).join('.');
  const mine = s.tensors.slice(0, first).filter((t) => t.name.startsWith(`${module}.`));
  return { module, tensors: mine.map((t) => t.name), bytes: mine.reduce((n, t) => n + tensorBytes(t.shape, t.dtype), 0) };
}

/** The skeleton the GPUs see: without the embedding, and a head tied to it standing alone (its own GPU copy). */
export function withoutEmbedding(s: Skeleton, e: { module: string; tensors: string[] }): Skeleton {
  const gone = new Set(e.tensors);
  return {
    ...s,
    modules: s.modules.filter((m) => m.name !== e.module && !m.name.startsWith(`${e.module}.`)),
    tensors: s.tensors.filter((t) => !gone.has(t.name)),
    tied: s.tied.map((g) => g.filter((t) => !gone.has(t))).filter((g) => g.length > 1),
  };
}

/**
 * The plan with the embedding put back in CPU RAM, where exllamav3 keeps it, and what each GPU gives the loader:
 * its cap less the CUDA context, in GiB rounded down to 0.01.
 */
export function finishExllamaPlan(
  plan: Plan,
  e: { module: string; bytes: number } | undefined,
  cpu: PlanDeviceSpec | undefined,
  chunk: number,
  kvDtype: string,
): NonNullable<Plan['exllamav3']> {
  const notes: string[] = [];
  if (e && !cpu) notes.push(`exllamav3 keeps the embedding (${formatBytes(e.bytes)}) in CPU RAM; no cpu budget was given, so it is not checked there`);
  if (e && cpu) {
    if (e.bytes > cpu.cap)
      throw new InputError('--max-memory', `exllamav3 keeps the embedding (${formatBytes(e.bytes)}) in CPU RAM, over the cpu cap ${formatBytes(cpu.cap)}`);
    const host: DevicePlan = {
      id: cpu.id,
      kind: 'cpu',
      ...(cpu.name ? { name: cpu.name } : {}),
      cap: cpu.cap,
      weights: e.bytes,
      kv: 0,
      workspace: 0,
      overhead: 0,
      used: e.bytes,
      modules: [e.module],
      ranges: [e.module.split('.').pop()!],
      tiedDuplicates: [],
    };
    plan.devices = [...plan.devices.filter((d) => d.kind !== 'cpu'), host];
    plan.deviceMap.unshift([e.module, cpu.id]);
    plan.handoffs += 1;
    notes.push(`exllamav3 keeps the embedding (${formatBytes(e.bytes)}) in CPU RAM and looks tokens up there`);
  }
  const gpus = plan.devices.filter((d) => d.kind === 'gpu' && d.modules.length > 0);
  const use = gpus.map((d) => Math.floor(((d.cap - TORCH_CUDA_CONTEXT) / GiB) * 100) / 100);
  const bad = gpus.findIndex((_, i) => use[i]! <= 0);
  if (bad >= 0) throw new InputError('--max-memory', `GPU ${gpus[bad]!.id}'s cap leaves nothing beside the CUDA context (${formatBytes(TORCH_CUDA_CONTEXT)})`);
  notes.push(
    `each GPU's value is its cap less ${formatBytes(TORCH_CUDA_CONTEXT)} for the CUDA context, which torch's per-process fraction does not count; the loader fills the GPUs in order`,
  );
  if (exllamaCacheMode(kvDtype).bits === undefined && kvDtype !== 'float16') notes.push(`the cache is float16 (exllamav3 has no ${kvDtype} cache; same size)`);
  return { use_per_device: use, gpus: gpus.map((d) => d.id), cache_tokens: plan.workload.ctx * plan.workload.batch, chunk_size: chunk, notes };
}

/**
 * TabbyAPI's and the loader's prefill chunk, a whole number of pages: the tokens of one micro-batch (at least a page,
 * checkExllamaInput) rounded down, never above what the plan's workspace counts.
 */
export function exllamaChunk(tokens: number): number {
  return Math.floor(tokens / EXLLAMA_PAGE) * EXLLAMA_PAGE;
}

function stagesNote(p: Plan, s: Skeleton): string {
  const { gpus, layers } = pipelineStages(p, s);
  return `expected split: ${describeStages(gpus, layers)} (exllamav3 decides it while loading, filling each GPU in turn)`;
}

function exllamaOf(p: Plan): NonNullable<Plan['exllamav3']> {
  if (!p.exllamav3) throw new InputError('--format', 'this plan was not made for exllamav3 (--target exllamav3)');
  return p.exllamav3;
}

/** The folder exllamav3 loads: the one given, or for a model known by repo id, a folder to download it into. */
function modelFolder(p: Plan, s: Skeleton, model: string): { folder: string; note?: string } {
  const local = s.source.kind !== 'config' && s.source.kind !== 'skeleton' && s.source.kind !== 'oracle-case';
  const repo = p.model.repo_id;
  if (local || repo === undefined || !/^[\w.-]+\/[\w.-]+$/.test(repo)) return { folder: model };
  const folder = repo.split('/')[1]!;
  return { folder, note: `exllamav3 loads a local folder: huggingface-cli download ${repo} --local-dir ${folder}` };
}

function visibleDevices(p: Plan, ids: readonly string[]): string {
  return ids.map((id) => String(p.devices.find((d) => d.id === id)!.physical ?? id)).join(',');
}

/** A Python script that loads the model as planned. */
export function renderExllamav3(p: Plan, s: Skeleton, model: string): string {
  const x = exllamaOf(p);
  const mode = exllamaCacheMode(p.workload.kvDtype);
  const cache = mode.bits
    ? `Cache(model, max_num_tokens=${x.cache_tokens}, layer_type=CacheLayer_quant, k_bits=${mode.bits}, v_bits=${mode.bits})`
    : `Cache(model, max_num_tokens=${x.cache_tokens})`;
  const { folder, note } = modelFolder(p, s, model);
  const lines = [
    'import os',
    `os.environ["CUDA_VISIBLE_DEVICES"] = "${visibleDevices(p, x.gpus)}"  # before torch starts`,
    `from exllamav3 import Config, Model, Cache, Tokenizer${mode.bits ? ', CacheLayer_quant' : ''}`,
    '',
    `config = Config.from_directory(${JSON.stringify(folder)})`,
    'model = Model.from_config(config)',
    `cache = ${cache}  # ${p.workload.batch} × ${p.workload.ctx} tokens, allocated with each layer`,
    `model.load(use_per_device=[${x.use_per_device.join(', ')}], max_chunk_size=${x.chunk_size}, max_batch_size=${p.workload.batch})`,
    'tokenizer = Tokenizer.from_config(config)',
    ...[...x.notes, stagesNote(p, s), ...(note ? [note] : [])].map((n) => `# ${n}`),
  ];
  return `${lines.join('\n')}\n`;
}

/** TabbyAPI's config.yml `model:` section for the plan. */
export function renderTabby(p: Plan, s: Skeleton, model: string): string {
  const x = exllamaOf(p);
  const w = p.workload;
  const { folder, note } = modelFolder(p, s, model);
  const doc = new Document({
    model: {
      model_name: basename(folder.replace(/[\\/]+$/, '')),
      backend: 'exllamav3',
      max_seq_len: w.ctx,
      cache_size: x.cache_tokens,
      cache_mode: exllamaCacheMode(w.kvDtype).mode,
      chunk_size: x.chunk_size,
      max_batch_size: w.batch,
      tensor_parallel: false,
      gpu_split_auto: false,
      gpu_split: x.use_per_device,
    },
  });
  (doc.getIn(['model', 'gpu_split'], true) as YAMLSeq).flow = true;
  const notes = [...x.notes, stagesNote(p, s), ...(note ? [note] : []), 'model_name is the folder under model_dir (default models/) that holds the model'];
  const lines = [`# start TabbyAPI with CUDA_VISIBLE_DEVICES=${visibleDevices(p, x.gpus)}`, doc.toString().trimEnd(), ...notes.map((n) => `# ${n}`)];
  return `${lines.join('\n')}\n`;
}
