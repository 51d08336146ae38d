import { dirname } from 'node:path';
import { parseQuantizeMode, quantizeSkeleton, QUANTIZE_TYPES } from '../planner/quantize.js';
import { planQuantizeAuto, summarizeQuantization } from '../planner/quantize-auto.js';
import type { MeasureResult } from '../engine/measure-error.js';
import { Command, Option } from 'commander';
import { canonicalDType, isKnownDType } from '../reader/dtypes.js';
import { readModel } from '../reader/read-model.js';
import type { Skeleton } from '../reader/skeleton.js';
import { kvDefaultDtype } from '../reader/summary.js';
import { largestContext } from '../planner/ctx-auto.js';
import { simulatedInventory, type Inventory } from '../planner/devices/inventory.js';
import { machineInventory } from '../engine/machine-inventory.js';
import { devicesForPlan } from '../planner/devices-for-plan.js';
import { engineBackendOverhead, scratchShapeOf } from '../planner/memory-model.js';
import { renderAccelerate } from '../planner/export/accelerate.js';
import { renderPlanJson } from '../planner/export/json.js';
import { renderLlamaCpp } from '../planner/export/llamacpp.js';
import { renderVllm, vllmDevices } from '../planner/export/vllm.js';
import { clusterGpus, decodeBound, hostBoundaries, parseCluster, parseClusterFile, type Cluster } from '../planner/cluster.js';
import { maxMemoryEntries } from '../planner/budgets.js';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { renderSglang, sglangDevices, sglangDynamicBytes } from '../planner/export/sglang.js';
import { renderPython } from '../planner/export/python.js';
import {
  checkExllamaInput,
  exllamaCacheMode,
  exllamaChunk,
  exllamaDevices,
  exllamaEmbedding,
  finishExllamaPlan,
  renderExllamav3,
  renderTabby,
  withoutEmbedding,
} from '../planner/export/exllamav3.js';
import { EXPORT_TARGET } from '../planner/export/targets.js';
import { renderPlanTable } from '../planner/export/table.js';
import { InfeasiblePlanError, planFit } from '../planner/fit.js';
import { PLAN_KNOBS } from '../planner/remedies.js';
import type { Plan, PlanDeviceSpec, Target } from '../planner/plan.js';
import { InputError } from '../util/errors.js';
import { planAccelerateCompat, type CompatFlags } from './plan-compat.js';
import type { Io } from './main.js';

export const FORMATS = ['table', 'json', 'accelerate', 'python', 'llama.cpp', 'vllm', 'sglang', 'exllamav3', 'tabbyapi'] as const;
export type Format = (typeof FORMATS)[number];
const STRATEGIES = ['fit', 'sequential', 'balanced', 'balanced_low_0', 'auto'] as const;
const TARGET_NAMES = ['vramfit', 'transformers', 'llama.cpp', 'vllm', 'sglang', 'exllamav3'] as const;

export interface PlanFlags extends CompatFlags {
  maxMemory?: string;
  gpus?: string;
  gpuMemory?: string;
  deviceSpec?: string;
  devices?: string;
  offloadFolder?: string;
  strategy: (typeof STRATEGIES)[number];
  compat?: string;
  ctx: string;
  batch: string;
  ubatch: string;
  kvDtype?: string;
  dtype?: string;
  quantize?: string;
  measure?: boolean;
  cluster?: string;
  link?: string;
  target?: Target;
  overhead?: string;
  gpuWeights?: string;
  format: Format;
}

/** Each export implies the runtime that will execute the plan. */
function targetFor(flags: PlanFlags): Target {
  const fromFormat: Target | undefined = (EXPORT_TARGET as Partial<Record<Format, Target>>)[flags.format];
  if (flags.target && fromFormat && flags.target !== fromFormat) {
    throw new InputError('--target', `--format ${flags.format} runs under ${fromFormat}, not ${flags.target}`);
  }
  return flags.target ?? fromFormat ?? 'vramfit';
}

function positive(value: string, flag: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1) throw new InputError(flag, `expected a positive integer, got ${JSON.stringify(value)}`);
  return n;
}

function virtualCount(devices: string | undefined): number | undefined {
  if (devices === undefined) return undefined;
  const m = /^virtual:(\d+)$/.exec(devices.trim());
  if (!m || Number(m[1]) < 1 || Number(m[1]) > 64) throw new InputError('--devices', `expected virtual:N with N from 1 to 64, got ${JSON.stringify(devices)}`);
  return Number(m[1]);
}

async function inventoryFor(flags: PlanFlags, cluster?: Cluster): Promise<Inventory> {
  if (cluster) {
    for (const [k, flag] of [
      ['gpuMemory', '--gpu-memory'],
      ['deviceSpec', '--device-spec'],
      ['gpus', '--gpus'],
      ['devices', '--devices'],
    ] as const)
      if (flags[k] !== undefined) throw new InputError(flag, '--cluster already names every GPU of every host');
    const inv = await simulatedInventory({
      deviceSpec: clusterGpus(cluster).deviceSpec,
      ...(flags.offloadFolder !== undefined ? { offloadFolder: flags.offloadFolder } : {}),
    });
    return { ...inv, notes: ["GPUs are the cluster's (empty cards); CPU RAM and disk are this machine's, as the first host's", ...inv.notes.slice(1)] };
  }
  const simulated = flags.gpuMemory !== undefined || flags.deviceSpec !== undefined;
  if (simulated && flags.gpus !== undefined) throw new InputError('--gpus', 'selects real GPUs; it cannot be combined with --gpu-memory or --device-spec');
  if (simulated && flags.devices !== undefined) throw new InputError('--devices', 'virtual devices cannot be combined with --gpu-memory or --device-spec');
  if (simulated) {
    const opts: { deviceSpec?: string; gpuMemory?: string; offloadFolder?: string } = {};
    if (flags.deviceSpec !== undefined) opts.deviceSpec = flags.deviceSpec;
    if (flags.gpuMemory !== undefined) opts.gpuMemory = flags.gpuMemory;
    if (flags.offloadFolder !== undefined) opts.offloadFolder = flags.offloadFolder;
    return simulatedInventory(opts);
  }
  const opts: { gpus?: string; offloadFolder?: string } = {};
  if (flags.gpus !== undefined) opts.gpus = flags.gpus;
  if (flags.offloadFolder !== undefined) opts.offloadFolder = flags.offloadFolder;
  return machineInventory(opts);
}

function checkDtype(value: string | undefined, flag: string): string | undefined {
  if (value === undefined) return undefined;
  if (!isKnownDType(value)) throw new InputError(flag, `unknown dtype ${JSON.stringify(value)}`);
  return canonicalDType(value);
}

export async function makePlan(model: string, flags: PlanFlags): Promise<{ plan: Plan; skeleton: Skeleton; notes: string[] }> {
  if (!(FORMATS as readonly string[]).includes(flags.format))
    throw new InputError('--format', `expected one of ${FORMATS.join(', ')}, got ${JSON.stringify(flags.format)}`);
  if (flags.compat !== undefined && flags.compat !== 'accelerate')
    throw new InputError('--compat', `the only compat mode is "accelerate", got ${JSON.stringify(flags.compat)}`);
  const source = await readModel(model);
  let skeleton = source;
  const mode = flags.quantize !== undefined ? parseQuantizeMode(flags.quantize) : undefined;
  if (flags.measure && mode !== 'auto') throw new InputError('--measure', 'ranks the types --quantize auto chooses; add --quantize auto');
  if (mode !== undefined) {
    if (flags.compat !== undefined) throw new InputError('--quantize', 'accelerate loads float weights; ggml block types are planned for vramfit');
    if (flags.format === 'llama.cpp')
      throw new InputError(
        '--quantize',
        'llama.cpp reads the types from the GGUF file itself: write it with vramfit quantize MODEL -o OUT.gguf and the same flags, which prints the llama.cpp flags',
      );
    if (flags.format !== 'table' && flags.format !== 'json')
      throw new InputError(
        '--quantize',
        `transformers (--format ${flags.format}) loads float weights, not ggml block types; use --format table or json, or vramfit quantize for llama.cpp`,
      );
    if (mode !== 'auto') skeleton = quantizeSkeleton(skeleton, mode).skeleton;
  }
  if (flags.compat === 'accelerate') {
    return { plan: await planAccelerateCompat(skeleton, flags, await inventoryFor(flags)), skeleton, notes: [] };
  }
  if (flags.strategy !== 'fit') {
    throw new InputError('--strategy', `${flags.strategy} reproduces accelerate and needs --compat accelerate; the default strategy is fit`);
  }
  const target = targetFor(flags);
  if (flags.link !== undefined && flags.cluster === undefined) throw new InputError('--link', 'describes the link between --cluster hosts; give --cluster too');
  const { cluster, maxMemory } = clusterOf(flags);
  if (mode !== undefined && target !== 'vramfit')
    throw new InputError('--quantize', `ggml block types are planned for the vramfit engine, not target ${target}`);
  const inv = await inventoryFor(flags, cluster);
  const virtual = virtualCount(flags.devices);
  // exllamav3 keeps its cache in float16 unless quantized, whatever the weights' dtype, and computes in float16.
  let kvDtype = checkDtype(flags.kvDtype, '--kv-dtype') ?? (target === 'exllamav3' ? 'float16' : kvDefaultDtype(skeleton));
  const dtype = target === 'exllamav3' ? 'float16' : checkDtype(flags.dtype, '--dtype');
  const batch = positive(flags.batch, '--batch');
  const ubatch = positive(flags.ubatch, '--ubatch');
  const maxCtx = skeleton.attention?.maxPositionEmbeddings ?? 131072;
  // exllamav3: its GPUs, its cpu (the embedding's), and the skeleton its GPUs see (no --quantize here: it stays so).
  let exllama: { gpus: PlanDeviceSpec[]; cpu?: PlanDeviceSpec; embedding?: ReturnType<typeof exllamaEmbedding>; skeleton: Skeleton } | undefined;
  if (target === 'exllamav3') {
    if (cluster) throw new InputError('--cluster', 'exllamav3 runs on one host; --format vllm, sglang or llama.cpp plan across hosts');
    checkExllamaInput(skeleton, flags.ctx === 'auto' ? undefined : positive(flags.ctx, '--ctx'), batch, ubatch, checkDtype(flags.dtype, '--dtype'));
    exllamaCacheMode(kvDtype);
  }
  const deviceOpts: Parameters<typeof devicesForPlan>[1] = { target };
  for (const k of ['offloadFolder', 'overhead', 'gpuWeights'] as const) if (flags[k] !== undefined) deviceOpts[k] = flags[k];
  if (maxMemory !== undefined) deviceOpts.maxMemory = maxMemory;
  if (virtual !== undefined) deviceOpts.virtual = virtual;
  if (target === 'vramfit') {
    // GPUs ggml runs (listed by `vramfit devices`): the backend's own scratch at the largest context asked for.
    const ctx = flags.ctx === 'auto' ? maxCtx : positive(flags.ctx, '--ctx');
    const shape = scratchShapeOf(skeleton, { ctx, batch, ubatch: Math.min(ubatch, ctx), kvDtype, ...(dtype ? { dtype } : {}) });
    deviceOpts.backendOverhead = (backend) => engineBackendOverhead(backend, shape);
  }
  let devices = devicesForPlan(inv, deviceOpts);
  if (cluster) {
    const { hostOf } = clusterGpus(cluster);
    devices = devices.map((d) => (d.kind === 'gpu' ? { ...d, host: hostOf[Number(d.id)]! } : d));
  }
  let measured: MeasureResult | undefined;
  // vLLM runs every GPU under one fraction of its memory: the plan is made under what that fraction gives each.
  const vllm = target === 'vllm' ? vllmDevices(devices) : undefined;
  if (vllm) devices = vllm.devices;
  // SGLang's one static fraction leaves each GPU's activations and CUDA graphs outside it.
  const sglangDynamic =
    target === 'sglang'
      ? sglangDynamicBytes(skeleton, { ctx: flags.ctx === 'auto' ? maxCtx : positive(flags.ctx, '--ctx'), batch, ubatch, kvDtype, ...(dtype ? { dtype } : {}) })
      : 0;
  const sglang = target === 'sglang' ? sglangDevices(devices, sglangDynamic) : undefined;
  if (sglang) devices = sglang.devices;
  // exllamav3 loads every layer onto its GPUs, the embedding into CPU RAM.
  if (target === 'exllamav3') {
    const embedding = exllamaEmbedding(skeleton);
    exllama = { ...exllamaDevices(devices), ...(embedding ? { embedding } : {}), skeleton: embedding ? withoutEmbedding(skeleton, embedding) : skeleton };
    devices = exllama.gpus;
  }
  if (devices.length === 0) throw new InputError('--max-memory', 'names no device the plan could use');
  if (mode === 'auto') {
    // Types chosen at the context asked for (--ctx auto: at most 4096, then the context grows with them fixed).
    const ctx = flags.ctx === 'auto' ? Math.min(4096, maxCtx) : positive(flags.ctx, '--ctx');
    const blockKv = (skeleton.attention?.headDim ?? 1) % 32 === 0;
    // Measuring reads the weights with ggml: loaded only when asked for, so plain planning stays light.
    measured = flags.measure
      ? await (await import('../engine/measure-error.js')).measureQuantError(skeleton, dirname(skeleton.source.files[0] ?? model))
      : undefined;
    const choice = planQuantizeAuto({
      skeleton,
      devices,
      workload: { ctx, batch, ubatch: Math.min(ubatch, ctx), kvDtype },
      target,
      kvDtypes: flags.kvDtype !== undefined || !blockKv ? [kvDtype] : [kvDtype, 'q8_0', 'q4_0'],
      ...(measured ? { measured: measured.errors } : {}),
    });
    skeleton = choice.skeleton;
    kvDtype = choice.kvDtype;
    devices = devices.filter((d) => d.kind === 'gpu' || d.kind === 'virtual');
  }
  const planAt = (ctx: number, remedies: boolean): Plan => {
    const workload = { ctx, batch, ubatch: Math.min(ubatch, ctx), kvDtype, ...(dtype ? { dtype } : {}) };
    // SGLang cannot offload: no remedy may suggest CPU RAM or disk.
    const knobs = target === 'sglang' || target === 'exllamav3' ? { ...PLAN_KNOBS, offload: false } : PLAN_KNOBS;
    // exllamav3's loader fills each GPU before the next: the plan does too, so its split is the loader's.
    return planFit({
      skeleton: exllama?.skeleton ?? skeleton,
      devices,
      workload,
      target,
      remedies: remedies ? knobs : false,
      ...(target === 'exllamav3' ? { fill: 'in-order' as const } : {}),
    });
  };
  // Across hosts: the fewest leading hosts whose GPUs hold every weight, so no boundary is crossed needlessly.
  if (cluster && cluster.hosts.length > 1) {
    const ctx = flags.ctx === 'auto' ? Math.min(4096, maxCtx) : positive(flags.ctx, '--ctx');
    const all = devices;
    for (let k = 1; k < cluster.hosts.length; k++) {
      const used = new Set(cluster.hosts.slice(0, k).map((h) => h.name));
      devices = all.filter((d) => d.kind !== 'gpu' || used.has(d.host!));
      try {
        const p = planAt(ctx, false);
        if (p.devices.every((d) => d.kind === 'gpu' || d.weights === 0)) break;
      } catch (e) {
        if (!(e instanceof InfeasiblePlanError)) throw e;
      }
      devices = all;
    }
  }
  let plan: Plan;
  try {
    plan = flags.ctx === 'auto' ? autoContext(maxCtx, planAt) : planAt(positive(flags.ctx, '--ctx'), true);
  } catch (e) {
    // The caps in the message are vLLM's shares, not the ones typed: say where they come from.
    if (vllm && e instanceof InfeasiblePlanError)
      e.message += `\nnote: vLLM runs every GPU at one --gpu-memory-utilization, ${vllm.fraction} here (the tightest cap over its GPU's memory); the caps above are that share of each GPU`;
    if (sglang && e instanceof InfeasiblePlanError)
      e.message += `\nnote: SGLang runs every GPU at one --mem-fraction-static, ${sglang.fraction} here (the tightest cap, less activations and CUDA graphs, over its GPU's memory); the caps above are that share of each GPU plus those`;
    if (exllama && e instanceof InfeasiblePlanError)
      e.message += '\nnote: exllamav3 keeps every layer on its GPUs (only the embedding in CPU RAM), so no change offloads to CPU RAM or disk';
    throw e;
  }
  if (flags.ctx !== 'auto' && plan.workload.ctx > maxCtx) plan.warnings.push(`--ctx ${plan.workload.ctx} is longer than the model's ${maxCtx}-token maximum`);
  if (flags.ctx === 'auto')
    plan.warnings.unshift(`--ctx auto chose ${plan.workload.ctx} tokens (the longest that keeps the same weights on the GPUs; model maximum ${maxCtx})`);
  if (cluster) {
    const stageHosts = plan.devices.filter((d) => d.kind === 'gpu' && d.modules.length > 0).map((d) => d.host!);
    // The first host serves: tokens enter there, so a pipeline that starts elsewhere crosses to it too.
    const boundaries = hostBoundaries([cluster.hosts[0]!.name, ...stageHosts]);
    plan.cluster = {
      hosts: cluster.hosts.map((h) => ({
        name: h.name,
        address: h.address,
        gpus: clusterGpus(cluster)
          .hostOf.map((host, i) => (host === h.name ? String(i) : undefined))
          .filter((id): id is string => id !== undefined),
      })),
      link_gbps: cluster.linkGbps,
      link_latency_ms: cluster.linkLatencyMs,
      boundaries,
      decode_bound_tps: boundaries === 0 ? null : decodeBound(boundaries, skeleton.attention?.hiddenSize ?? 0, cluster),
    };
  }
  if (vllm) plan.vllm = { gpu_memory_utilization: vllm.fraction, notes: vllm.notes };
  if (sglang) plan.sglang = { mem_fraction_static: sglang.fraction, dynamic_bytes: sglangDynamic, notes: sglang.notes };
  if (exllama) plan.exllamav3 = finishExllamaPlan(plan, exllama.embedding, exllama.cpu, exllamaChunk(plan.workload.ubatch * batch), plan.workload.kvDtype);
  if (mode !== undefined) {
    plan.quantization = summarizeQuantization(source, skeleton, mode, plan.workload.kvDtype);
    if (mode === 'auto')
      plan.quantization.ranking = measured
        ? { by: 'measured', tensors: measured.tensors, fromCache: measured.fromCache, ...(measured.cacheFile ? { cache: measured.cacheFile } : {}) }
        : { by: 'model' };
    plan.warnings.push(...(measured?.warnings ?? []));
  }
  return { plan, skeleton, notes: inv.notes };
}

/** `--cluster` as a string or a JSON/YAML file, and --max-memory with the file's caps added (a GPU capped in both is refused). */
function clusterOf(flags: PlanFlags): { cluster?: Cluster; maxMemory?: string } {
  const given = flags.cluster;
  if (given === undefined) return flags.maxMemory !== undefined ? { maxMemory: flags.maxMemory } : {};
  const isFile = /\.(json|ya?ml)$/i.test(given) || (existsSync(given) && statSync(given).isFile());
  if (!isFile) return { cluster: parseCluster(given, flags.link), ...(flags.maxMemory !== undefined ? { maxMemory: flags.maxMemory } : {}) };
  let text: string;
  try {
    text = readFileSync(given, 'utf8');
  } catch (e) {
    throw new InputError('--cluster', `cannot read ${given}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const { cluster, caps } = parseClusterFile(text, given);
  if (flags.link !== undefined) throw new InputError('--link', `${given} describes the cluster; put the link there (link: {gbps, latency_ms})`);
  if (Object.keys(caps).length === 0) return { cluster, ...(flags.maxMemory !== undefined ? { maxMemory: flags.maxMemory } : {}) };
  const merged: Record<string, unknown> = { ...caps };
  for (const [key, value] of flags.maxMemory !== undefined ? maxMemoryEntries(flags.maxMemory) : []) {
    if (key.trim() in caps) throw new InputError('--max-memory', `GPU ${key.trim()} already has a cap in ${given}`);
    merged[key.trim()] = value;
  }
  return { cluster, maxMemory: JSON.stringify(merged) };
}

/** `--ctx auto`, probing plans without remedies; when nothing fits, the shortest context's error with them. */
function autoContext(maxCtx: number, planAt: (ctx: number, remedies: boolean) => Plan): Plan {
  try {
    return largestContext(maxCtx, (ctx) => planAt(ctx, false));
  } catch (e) {
    if (e instanceof InfeasiblePlanError) planAt(Math.min(256, maxCtx), true);
    throw e;
  }
}

export function renderPlan(plan: Plan, skeleton: Skeleton, model: string, format: Format): string {
  switch (format) {
    case 'json':
      return `${renderPlanJson(plan)}\n`;
    case 'accelerate':
      return `${renderAccelerate(plan)}\n`;
    case 'python':
      return renderPython(plan, plan.model.repo_id ?? model);
    case 'llama.cpp':
      return renderLlamaCpp(plan, skeleton, model);
    case 'vllm':
      return renderVllm(plan, skeleton, model);
    case 'sglang':
      return renderSglang(plan, skeleton, model);
    case 'exllamav3':
      return renderExllamav3(plan, skeleton, model);
    case 'tabbyapi':
      return renderTabby(plan, skeleton, model);
    default:
      return `${renderPlanTable(plan)}\n`;
  }
}

export function addPlanCommand(program: Command, io: Io): void {
  program
    .command('plan')
    .description('Plan where every block goes (GPUs, then CPU RAM, then disk) under per-device caps, budgeting KV cache, workspace and overhead.')
    .argument(
      '<model>',
      'model folder, .safetensors, .gguf, config.json, skeleton .json, catalog name (llama-2-7b, …), an Ollama or LM Studio model name (qwen2.5:7b, ollama:NAME[:TAG], lmstudio:publisher/repo), or cached repo id',
    )
    .option(
      '--max-memory <budgets>',
      'per-device caps: 0=5GiB,1=10GB,cpu=30GiB,disk=200GiB; 0=40% (of total); 0=free-2GiB / 0=total-2GiB (leave room); or a JSON dict. GB = 10^9, GiB = 2^30',
    )
    .option('--gpus <ids>', 'physical GPUs to use, as CUDA_VISIBLE_DEVICES takes them (indices, UUIDs, MIG ids)')
    .option('--gpu-memory <sizes>', 'simulate GPUs with these totals: 24GiB,24GiB or 2x24GiB')
    .option('--device-spec <spec>', 'simulate known cards: 4xA100-80GB, 2xRTX-4090,1xA6000')
    .option('--devices <spec>', 'virtual:N — N independent CPU backends standing in for GPUs (capped like GPUs)')
    .option(
      '--cluster <hosts|file>',
      'plan across hosts: a=2xRTX-4090,b@10.0.0.2=1xA100-80GB (cards as --device-spec takes them; GPUs numbered on from host to host for --max-memory; the first host serves), or a JSON/YAML file with hosts (name, address, gpus, caps) and link (gbps, latency_ms). The fewest leading hosts that hold the weights on GPUs are used',
    )
    .option('--link <gbps[,ms]>', 'the link between --cluster hosts: Gbit/s and latency in ms (default 10,0.5); sets the decode bound printed')
    .option('--offload-folder <dir>', 'allow disk offload into this folder (its free space is the disk budget)')
    .addOption(
      new Option('--strategy <name>', 'fit (default, ours) or, with --compat accelerate, sequential|balanced|balanced_low_0|auto')
        .choices([...STRATEGIES])
        .default('fit'),
    )
    .option('--compat <mode>', "accelerate: reproduce accelerate's infer_auto_device_map exactly (weights only, its quirks included)")
    .option('--ctx <tokens>', 'context tokens the KV cache must hold, or auto for the longest that fits', '4096')
    .option('--batch <n>', 'sequences generated together', '1')
    .option('--ubatch <n>', 'tokens per forward pass during prefill (sizes activations and logits)', '512')
    .option('--kv-dtype <dtype>', "KV cache dtype (default: the model's 16-bit dtype)")
    .option('--dtype <dtype>', 'load floating weights in this dtype (float16, bfloat16, float32)')
    .option(
      '--quantize <type>',
      `plan the float matrices as converted at load to ${QUANTIZE_TYPES.join(', ')} (the rules of vramfit run --quantize), or auto: the planner chooses each block's, the embedding's and the head's type, and the KV cache's unless --kv-dtype is given, so that the model runs on the GPUs alone within every cap — most quality first (an error model per type and role), then fewest GPU bytes`,
    )
    .option(
      '--measure',
      "with --quantize auto: rank the types by each tensor's relative error measured on its own weights (64 evenly spaced rows each, ggml's quantizer; the weights must be at hand), cached beside the model, instead of the error model",
    )
    .addOption(new Option('--target <runtime>', 'runtime that will run the plan (its workspace and overhead); implied by --format').choices([...TARGET_NAMES]))
    .option('--overhead <size>', 'runtime overhead per GPU (CUDA context, …): one size or 0=1GiB,1=512MiB (default depends on --target)')
    .option('--gpu-weights <w>', 'relative share of each GPU when balancing, e.g. 1,2 (default: balance utilisation)')
    .addOption(new Option('--format <format>', 'output format').choices([...FORMATS]).default('table'))
    .option('--no-split <classes>', '[compat] no_split_module_classes, comma-separated')
    .option('--special-dtypes <list>', '[compat] per-tensor dtypes: NAME=float32,…')
    .option('--keep-in-fp32 <modules>', '[compat] keep_in_fp32_modules (with --dtype float16)')
    .option('--fallback-allocation', "[compat] accelerate's fallback_allocation")
    .option('--offload-buffers', "[compat] accelerate's offload_buffers")
    .option('--reserved-unused <bytes>', '[compat] per-GPU reserved-but-unallocated bytes transformers adds: 0=500000000,…')
    .addHelpText(
      'after',
      `
The fit strategy never exceeds a cap after counting, per device: weights (tied weights once when kept
together, on both devices otherwise), the KV cache of its layers (--ctx × --batch at --kv-dtype), the
compute workspace (activations, attention scores, and logits on the device with the head, for --ubatch
tokens) and the runtime overhead. It keeps no-split blocks whole and stages contiguous, fills GPUs, then
CPU RAM, then disk, and prefers the most bytes on GPUs, then balanced utilisation, then fewer hand-offs.
Under --target transformers (implied by --format accelerate|python) modules mapped to cpu or disk run on
the first GPU, as accelerate's dispatch_model does: their KV cache, activations and largest module in
transit are counted there. --format vllm (--target vllm) plans every GPU under vLLM's one
--gpu-memory-utilization, the tightest cap over its GPU's memory, and prints a vllm serve line with a
pipeline stage per GPU (VLLM_PP_LAYER_PARTITION); --format sglang likewise with --mem-fraction-static, the
tightest cap less activations and CUDA graphs, and SGLANG_PP_LAYER_PARTITION. --format exllamav3 (a Python load
script) and --format tabbyapi (config.yml keys) give each GPU its cap less the CUDA context as use_per_device /
gpu_split, the plan filling GPUs in order as exllamav3's loader does. With --cluster, vllm prints one command per
host (its --nnodes launch, or Ray where hosts run unequal stage counts), sglang one per host (--nnodes,
--dist-init-addr), llama.cpp an rpc-server per remote GPU. An infeasible plan lists each short device and changes that would fit,
each checked by planning again.
Without --max-memory it uses every visible GPU's free memory and the available RAM; with it, only the
devices named. A lower-case b (5gb) is refused as ambiguous: accelerate reads it as bits.`,
    )
    .action(async (model: string, flags: PlanFlags) => {
      const { plan, skeleton, notes } = await makePlan(model, flags);
      io.stdout(renderPlan(plan, skeleton, model, flags.format));
      if (flags.format === 'table') for (const n of notes) io.stdout(`note: ${n}\n`);
    });
}
