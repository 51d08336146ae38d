/**
 * `--format vllm`: a `vllm serve` command line that runs the plan with pipeline parallelism, one stage per GPU that
 * holds blocks. What vLLM takes, checked in its source and docs (December 2026):
 *  - `--gpu-memory-utilization F`: one fraction of each GPU's total memory for the whole instance — weights,
 *    activations, CUDA graphs and the KV cache, which fills what is left (engine args docs; vllm/v1/worker/utils.py
 *    requests ceil(total × F) at startup). There is no per-GPU value (vllm-project/vllm#9465), so F is the tightest
 *    GPU's cap ÷ total, and the plan is made under F × total on every GPU.
 *  - `VLLM_PP_LAYER_PARTITION=a,b,…`: decoder layers per pipeline stage, as many entries as
 *    `--pipeline-parallel-size` and summing to num_hidden_layers (vllm/distributed/utils.py get_pp_indices).
 *  - `--cpu-offload-gb N`: GiB of weights each GPU streams from CPU RAM (engine args docs: "per GPU").
 *  - `--max-model-len`, `--max-num-seqs`, `--max-num-batched-tokens`, `--kv-cache-dtype`, `--dtype`.
 * vLLM puts the embedding on the first stage and the final norm and head on the last; the plan is checked under
 * that layout.
 */
import { InputError } from '../../util/errors.js';
import type { Skeleton } from '../../reader/skeleton.js';
import type { Plan, PlanDeviceSpec } from '../plan.js';
import { TORCH_CUDA_CONTEXT } from '../memory-model.js';
import { formatBytes } from '../units.js';
import {
  checkEndsLayout,
  clusterNotes,
  describeStages,
  commandWithNotes,
  nnodesLaunch,
  perHostCommands,
  pipelineStages,
  servedModel,
  stageEnv,
  stagesByHost,
  visibleOn,
} from './pipeline.js';
import { shellWord } from './shell.js';

/** Architectures in vLLM's model registry (vllm/model_executor/models/registry.py) that vramfit reads. */
export const VLLM_ARCHITECTURES = new Set([
  'LlamaForCausalLM',
  'MistralForCausalLM',
  'MixtralForCausalLM',
  'Qwen2ForCausalLM',
  'Qwen2MoeForCausalLM',
  'Qwen3ForCausalLM',
  'Qwen3MoeForCausalLM',
  'GPT2LMHeadModel',
  'ChatGLMModel',
  'ChatGLMForConditionalGeneration',
  'BaichuanForCausalLM',
  'GemmaForCausalLM',
  'Gemma2ForCausalLM',
  'PhiForCausalLM',
  'Phi3ForCausalLM',
  'FalconForCausalLM',
  'RWForCausalLM',
  'QWenLMHeadModel',
  'GPTJForCausalLM',
  'BloomForCausalLM',
  'DeepseekV3ForCausalLM',
  'OPTForCausalLM',
]);

const GiB = 1024 ** 3;

/**
 * vLLM's one fraction for all GPUs: the tightest cap over total, rounded down to 0.001. A cap of the whole card
 * counts as the card less the CUDA context: vLLM refuses to start when the memory free after its context is under
 * total × fraction (vllm/v1/worker/utils.py request_memory), so 1.0 could never start.
 */
export function vllmFraction(gpus: readonly PlanDeviceSpec[]): number {
  const missing = gpus.find((d) => !d.totalBytes);
  if (missing)
    throw new InputError(
      '--format',
      `vLLM takes a fraction of each GPU's total memory, and GPU ${missing.id} has no known total (plan for real GPUs, --gpu-memory or --device-spec)`,
    );
  const f = Math.floor(Math.min(...gpus.map((d) => Math.min(d.cap, d.totalBytes! - TORCH_CUDA_CONTEXT) / d.totalBytes!)) * 1000) / 1000;
  if (f <= 0) throw new InputError('--max-memory', 'a GPU cap under 0.1 % of its memory leaves vLLM nothing');
  return Math.min(f, 1);
}

/**
 * The devices as vLLM will run them: every GPU capped at F × its total (never above the cap given), with notes on
 * what the single fraction costs the GPUs whose own caps were larger.
 */
export function vllmDevices(devices: readonly PlanDeviceSpec[]): { devices: PlanDeviceSpec[]; fraction: number; notes: string[] } {
  if (devices.some((d) => d.kind === 'virtual')) throw new InputError('--format', 'vLLM runs on CUDA GPUs, not virtual devices');
  if (devices.some((d) => d.kind === 'disk')) throw new InputError('--format', 'vLLM cannot offload weights to disk; drop disk= from --max-memory');
  const gpus = devices.filter((d) => d.kind === 'gpu');
  if (gpus.length === 0) throw new InputError('--format', 'vLLM needs at least one GPU in the plan');
  const fraction = vllmFraction(gpus);
  const notes: string[] = [];
  const out = devices.map((d) => {
    if (d.kind !== 'gpu') return { ...d };
    const cap = Math.floor(fraction * d.totalBytes!);
    if (d.cap - cap > 64 * 1024 ** 2)
      notes.push(
        `GPU ${d.id}: vLLM's one --gpu-memory-utilization ${fraction} lets it use ${formatBytes(cap)} of its ${formatBytes(d.cap)} cap (${formatBytes(d.cap - cap)} unused)`,
      );
    return { ...d, cap };
  });
  return { devices: out, fraction, notes };
}

const KV_DTYPE: Record<string, string> = { float16: 'auto', bfloat16: 'auto', float32: 'auto', float8_e4m3fn: 'fp8_e4m3', float8_e5m2: 'fp8_e5m2', fp8: 'fp8' };

export function renderVllm(p: Plan, s: Skeleton, model: string): string {
  if (!p.vllm) throw new InputError('--format', 'this plan was not made for vLLM (--target vllm)');
  const { gpu_memory_utilization: fraction, notes } = p.vllm;
  if (s.source.kind === 'gguf') throw new InputError('--format', 'give vLLM the Hugging Face folder; for a GGUF file use --format llama.cpp');
  if (!VLLM_ARCHITECTURES.has(p.model.root_class))
    throw new InputError(
      '--format',
      `${p.model.root_class} is not among the architectures vLLM's registry lists for vramfit's families (${[...VLLM_ARCHITECTURES].slice(0, 6).join(', ')}, …)`,
    );
  const kv = KV_DTYPE[p.workload.kvDtype];
  if (kv === undefined) throw new InputError('--kv-dtype', `vLLM keeps the KV cache in the model's dtype or fp8, not ${p.workload.kvDtype}`);
  const { gpus, layers, offloaded } = pipelineStages(p, s);
  const cpuOffloadGiB = Math.ceil(Math.max(...offloaded) / GiB);
  const env = stageEnv(gpus, layers, 'VLLM_PP_LAYER_PARTITION');
  const w = p.workload;
  const args = [
    'vllm',
    'serve',
    servedModel(p, model),
    ...(gpus.length > 1 ? ['--pipeline-parallel-size', String(gpus.length)] : []),
    '--gpu-memory-utilization',
    String(fraction),
    '--max-model-len',
    String(w.ctx),
    '--max-num-seqs',
    String(w.batch),
    '--max-num-batched-tokens',
    String(Math.max(w.ubatch * w.batch, w.batch)),
    ...(w.dtype ? ['--dtype', w.dtype] : []),
    ...(kv !== 'auto' ? ['--kv-cache-dtype', kv] : []),
    ...(cpuOffloadGiB > 0 ? ['--cpu-offload-gb', String(cpuOffloadGiB)] : []),
  ];
  const said = [...notes, ...checkEndsLayout(p, s, gpus, 'vLLM')];
  if (cpuOffloadGiB > 0)
    said.push(
      `the plan keeps ${formatBytes(offloaded.reduce((a, b) => a + b, 0))} of blocks in RAM: vLLM streams up to ${cpuOffloadGiB} GiB of weights from the CPU on every GPU (--cpu-offload-gb is per GPU), slower than keeping them on the GPUs`,
    );
  said.push(`stages: ${describeStages(gpus, layers)}; vLLM fills each GPU's remaining share with KV cache`);
  if (p.cluster && p.cluster.boundaries > 0) return renderVllmAcrossHosts(p, gpus, layers, args, said);
  return commandWithNotes([...env, ...args], said);
}

const RAY_PORT = 6379;

/**
 * Across hosts. Where every host runs as many stages, vLLM's own multi-node launch (`--nnodes --node-rank
 * --master-addr`, `--headless` on the others) gives host k ranks k·L … k·L+L−1, L = world size ÷ nnodes
 * (vllm/config/parallel.py asserts world_size % nnodes == 0). Otherwise Ray, which takes any count per host: its
 * executor ranks the driver's host first, then the others by how few workers they hold, then by IP
 * (ray_utils sort_by_driver_then_worker_ip), so the plan's host order must be that one. vLLM copies VLLM_*
 * variables to its Ray workers (vllm/ray/ray_env.py), not CUDA_VISIBLE_DEVICES: each host sets that at `ray start`.
 */
function renderVllmAcrossHosts(p: Plan, gpus: Plan['devices'], layers: readonly number[], args: readonly string[], said: string[]): string {
  const hosts = stagesByHost(p, gpus, 'vLLM');
  const head = hosts[0]!;
  const partition = `VLLM_PP_LAYER_PARTITION=${layers.join(',')}`;
  const notes = [...said, ...clusterNotes(p, hosts)];
  if (hosts.every((h) => h.stages.length === head.stages.length)) {
    const sections = nnodesLaunch(hosts, partition, args, (rank) => ['--master-addr', shellWord(head.address), ...(rank > 0 ? ['--headless'] : [])]);
    notes.push(
      `vLLM's multi-node launch: each host runs ${head.stages.length} stage${head.stages.length === 1 ? '' : 's'}, node rank k the k-th run of stages`,
    );
    return perHostCommands(sections, notes);
  }
  const others = hosts.slice(1);
  const rayOrder = [...others].sort((a, b) => a.stages.length - b.stages.length || (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
  const ipv4 = /^\d{1,3}(\.\d{1,3}){3}$/;
  if (rayOrder.some((h, i) => h !== others[i])) {
    const order = [head, ...rayOrder].map((h) => h.name).join(', ');
    if (others.every((h) => ipv4.test(h.address)))
      throw new InputError(
        '--cluster',
        `vLLM's Ray executor ranks the other hosts by GPU count, then IP, so the pipeline would run ${order}; list the hosts in that order`,
      );
    notes.push(
      `vLLM's Ray executor ranks the other hosts by GPU count, then IP: give them as name@IP so vramfit can check the order (${order} by the names given)`,
    );
  } else if (!others.every((h) => ipv4.test(h.address))) {
    notes.push(
      "vLLM's Ray executor ranks the other hosts by GPU count, then IP: the plan assumes the order given; give them as name@IP so vramfit can check it",
    );
  }
  const sections = [
    { host: head.name, role: 'Ray head', lines: [`${visibleOn(head)} ray start --head --port ${RAY_PORT} --num-gpus ${head.localGpus.length}`] },
    ...others.map((h) => ({
      host: h.name,
      lines: [`${visibleOn(h)} ray start --address ${shellWord(`${head.address}:${RAY_PORT}`)} --num-gpus ${h.localGpus.length}`],
    })),
    { host: head.name, role: 'then, serves the API', lines: [[partition, ...args, '--distributed-executor-backend', 'ray'].join(' ')] },
  ];
  notes.push("the hosts run different numbers of stages, which only vLLM's Ray executor places (its --nnodes launch gives every host as many)");
  return perHostCommands(sections, notes);
}
