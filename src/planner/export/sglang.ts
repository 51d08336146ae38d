/**
 * `--format sglang`: a `python -m sglang.launch_server` command line that runs the plan with pipeline parallelism,
 * one stage per GPU that holds blocks. What SGLang takes, checked in its source (December 2026):
 *  - `--mem-fraction-static f`: after the weights load, the KV pool gets what is free minus (1 − f) × total
 *    (python/sglang/srt/model_executor/model_runner_kv_cache_mixin.py: `rest_memory = available_gpu_memory -
 *    total_gpu_memory * (1 - self.mem_fraction_static)`), so weights, runtime and KV pool fill f × total and
 *    activations and CUDA graphs run in the rest. One f for every GPU: it is chosen so that the tightest GPU's cap
 *    holds f × total plus those.
 *  - `SGLANG_PP_LAYER_PARTITION=a,b,…` with `--pp-size`: decoder layers per stage (its distributed utils'
 *    get_pp_indices, as vLLM's).
 *  - `--context-length`, `--max-running-requests`, `--chunked-prefill-size` (the activations' token count),
 *    `--cuda-graph-max-bs` (graphs captured up to the batch asked for), `--kv-cache-dtype`.
 * No CPU or disk offload is expressed: the plan is made on the GPUs alone.
 */
import { InputError } from '../../util/errors.js';
import type { Skeleton } from '../../reader/skeleton.js';
import { blockWorkspace, dominantDtype, headWorkspace, TARGETS } from '../memory-model.js';
import type { Plan, PlanDeviceSpec, Workload } from '../plan.js';
import { formatBytes } from '../units.js';
import {
  checkEndsLayout,
  clusterNotes,
  commandWithNotes,
  describeStages,
  nnodesLaunch,
  perHostCommands,
  pipelineStages,
  servedModel,
  stageEnv,
  stagesByHost,
} from './pipeline.js';
import { shellWord } from './shell.js';

/** Model files in python/sglang/srt/models/ for vramfit's families (llama.py, mistral.py, qwen2.py, baichuan.py, chatglm.py, …). */
export const SGLANG_ARCHITECTURES = new Set([
  'LlamaForCausalLM',
  'MistralForCausalLM',
  'MixtralForCausalLM',
  'Qwen2ForCausalLM',
  'Qwen2MoeForCausalLM',
  'Qwen3ForCausalLM',
  'Qwen3MoeForCausalLM',
  'GemmaForCausalLM',
  'Gemma2ForCausalLM',
  'BaichuanForCausalLM',
  'ChatGLMModel',
  'ChatGLMForConditionalGeneration',
  'DeepseekV3ForCausalLM',
]);

const MiB = 1024 ** 2;
/** CUDA graphs captured up to a handful of sequences: a few hundred MiB in SGLang's "Capture cuda graph end" logs. */
export const SGLANG_GRAPHS = 256 * MiB;

/** What runs outside f × total on a GPU: activations for the micro-batch (as if it held the head) and CUDA graphs. */
export function sglangDynamicBytes(s: Skeleton, w: Workload): number {
  const a = s.attention;
  if (!a) throw new InputError('--format', "SGLang's memory split needs the model's attention facts, which this skeleton lacks");
  const d = dominantDtype(s, w.dtype);
  const profile = TARGETS.sglang;
  return SGLANG_GRAPHS + blockWorkspace(a, w, profile, d) + headWorkspace(a, w, profile, d);
}

/**
 * The devices as SGLang runs them: f = the tightest (cap − dynamic) ÷ total, rounded down to 0.001, and every GPU
 * planned under f × total plus the dynamic part (never above its cap), with notes on what the one f costs.
 */
export function sglangDevices(devices: readonly PlanDeviceSpec[], dynamic: number): { devices: PlanDeviceSpec[]; fraction: number; notes: string[] } {
  if (devices.some((d) => d.kind === 'virtual')) throw new InputError('--format', 'SGLang runs on CUDA GPUs, not virtual devices');
  // SGLang keeps every layer on its GPUs: the plan is made on them alone (vLLM's export can offload).
  const gpus = devices.filter((d) => d.kind === 'gpu');
  if (gpus.length === 0) throw new InputError('--format', 'SGLang needs at least one GPU in the plan');
  const missing = gpus.find((d) => !d.totalBytes);
  if (missing) throw new InputError('--format', `SGLang takes a fraction of each GPU's total memory, and GPU ${missing.id} has no known total`);
  const fraction = Math.min(1, Math.floor(Math.min(...gpus.map((d) => (d.cap - dynamic) / d.totalBytes!)) * 1000) / 1000);
  if (fraction <= 0)
    throw new InputError(
      '--max-memory',
      `SGLang needs ${formatBytes(dynamic)} outside its static share for activations and CUDA graphs; a cap leaves nothing for the model`,
    );
  const notes: string[] = devices.some((d) => d.kind === 'cpu' || d.kind === 'disk')
    ? ['SGLang keeps every layer on its GPUs: the plan uses them alone, not CPU RAM or disk']
    : [];
  const out = gpus.map((d) => {
    const cap = Math.min(d.cap, Math.floor(fraction * d.totalBytes!) + dynamic);
    if (d.cap - cap > 64 * MiB)
      notes.push(
        `GPU ${d.id}: SGLang's one --mem-fraction-static ${fraction} holds it to ${formatBytes(cap)} of its ${formatBytes(d.cap)} cap (${formatBytes(d.cap - cap)} unused)`,
      );
    return { ...d, cap };
  });
  return { devices: out, fraction, notes };
}

const KV_DTYPE: Record<string, string> = { float16: 'auto', bfloat16: 'auto', float32: 'auto', float8_e4m3fn: 'fp8_e4m3', float8_e5m2: 'fp8_e5m2' };

export function renderSglang(p: Plan, s: Skeleton, model: string): string {
  if (!p.sglang) throw new InputError('--format', 'this plan was not made for SGLang (--target sglang)');
  if (s.source.kind === 'gguf') throw new InputError('--format', 'give SGLang the Hugging Face folder; for a GGUF file use --format llama.cpp');
  if (!SGLANG_ARCHITECTURES.has(p.model.root_class))
    throw new InputError(
      '--format',
      `${p.model.root_class} is not among the architectures SGLang has model files for in vramfit's families (${[...SGLANG_ARCHITECTURES].slice(0, 6).join(', ')}, …)`,
    );
  const kv = KV_DTYPE[p.workload.kvDtype];
  if (kv === undefined) throw new InputError('--kv-dtype', `SGLang keeps the KV cache in the model's dtype or fp8, not ${p.workload.kvDtype}`);
  const { mem_fraction_static: fraction, dynamic_bytes: dynamic, notes } = p.sglang;
  const { gpus, layers } = pipelineStages(p, s);
  // Static share of each GPU: weights, KV and the runtime must fit in f × total.
  for (const d of gpus) {
    const stat = d.weights + d.kv + d.overhead - SGLANG_GRAPHS;
    if (stat > fraction * d.totalBytes!)
      throw new InputError(
        '--format',
        `GPU ${d.id} needs ${formatBytes(stat)} for weights, KV cache and runtime, more than SGLang's static share ${fraction} × ${formatBytes(d.totalBytes!)}`,
      );
  }
  const staticOf = (d: Plan['devices'][number]): number => Math.floor(fraction * d.totalBytes!) + dynamic;
  const said = [...notes, ...checkEndsLayout(p, s, gpus, 'SGLang', staticOf)];
  const env = stageEnv(gpus, layers, 'SGLANG_PP_LAYER_PARTITION');
  const w = p.workload;
  const args = [
    'python',
    '-m',
    'sglang.launch_server',
    '--model-path',
    servedModel(p, model),
    ...(gpus.length > 1 ? ['--pp-size', String(gpus.length)] : []),
    '--mem-fraction-static',
    String(fraction),
    '--context-length',
    String(w.ctx),
    '--max-running-requests',
    String(w.batch),
    '--chunked-prefill-size',
    String(w.ubatch * w.batch),
    '--cuda-graph-max-bs',
    String(w.batch),
    ...(w.dtype ? ['--dtype', w.dtype] : []),
    ...(kv !== 'auto' ? ['--kv-cache-dtype', kv] : []),
  ];
  said.push(`stages: ${describeStages(gpus, layers)}; SGLang fills each GPU's static share with KV cache`);
  if (p.cluster && p.cluster.boundaries > 0) return renderSglangAcrossHosts(p, gpus, layers, args, said);
  return commandWithNotes([...env, ...args], said);
}

/** Where node rank 0 listens for the others (`--dist-init-addr HOST:PORT`). */
const DIST_INIT_PORT = 50000;

/**
 * Across hosts: `--nnodes --node-rank --dist-init-addr` on every host. SGLang gives each node pp_size ÷ nnodes
 * consecutive pipeline ranks (its engine's pp_rank_range, gpu_id = base_gpu_id + local rank), so every host must run
 * as many stages; each host's CUDA_VISIBLE_DEVICES lists its stages' GPUs in order, and every host reads the same
 * SGLANG_PP_LAYER_PARTITION.
 */
function renderSglangAcrossHosts(p: Plan, gpus: Plan['devices'], layers: readonly number[], args: readonly string[], said: string[]): string {
  const hosts = stagesByHost(p, gpus, 'SGLang');
  const each = hosts[0]!.stages.length;
  if (hosts.some((h) => h.stages.length !== each))
    throw new InputError(
      '--cluster',
      `SGLang gives every node the same number of pipeline stages (pp-size ÷ nnodes) and this plan runs ${hosts.map((h) => `${h.stages.length} on ${h.name}`).join(', ')}; --format vllm (Ray) or llama.cpp (RPC) can run it`,
    );
  const init = shellWord(`${hosts[0]!.address}:${DIST_INIT_PORT}`);
  const sections = nnodesLaunch(hosts, `SGLANG_PP_LAYER_PARTITION=${layers.join(',')}`, args, () => ['--dist-init-addr', init]);
  return perHostCommands(sections, [...said, ...clusterNotes(p, hosts)]);
}
