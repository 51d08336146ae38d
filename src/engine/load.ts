/**
 * Loading a model as a plan places it, in named phases: read the checkpoint's facts, resolve and open
 * the devices, measure the compute workspace, plan, lay out each device's tensors, check every cap,
 * allocate weights and KV caches, reserve compute buffers, and only then read the weights. Every
 * device's weights, KV cache and worst-case compute buffer are checked against its cap before a byte
 * of weights is read; an over-cap device fails with OutOfDeviceMemory and nothing stays allocated.
 */
import { appendTo } from '../util/append.js';
import { closeSync, openSync } from 'node:fs';
import { readBytes } from '../util/read-fully.js';
import { alignUp } from '../planner/placement-units.js';
import { availableParallelism } from 'node:os';
import { dirname } from 'node:path';
import { readConfigFile } from '../reader/read-config.js';
import { GGUF_MAPPED_ARCHITECTURES, readGgufFacts } from '../reader/gguf-model.js';
import { KV_DTYPES, quantizeSkeleton, type KvDtype, type QuantizeType } from '../planner/quantize.js';
import { planQuantizeAuto, summarizeQuantization } from '../planner/quantize-auto.js';
import { measureQuantError, type MeasureResult } from './measure-error.js';
import { readModel } from '../reader/read-model.js';
import { kvDefaultDtype } from '../reader/summary.js';
import type { Skeleton } from '../reader/skeleton.js';
import type { RemedyKnobs } from '../planner/remedies.js';
import { InfeasiblePlanError, planFit, type MeasuredWorkspace } from '../planner/fit.js';
import { cudaScratchBytes, TARGETS, vulkanScratchBytes, type BackendScratchShape } from '../planner/memory-model.js';
import { manualPlan } from '../planner/manual-split.js';
import type { GpuBackend } from '../planner/devices/gpu-match.js';
import type { Plan, PlanQuantization } from '../planner/plan.js';
import { FormatError, InputError, VramfitError } from '../util/errors.js';
import { checkWeightDtype, checkWeightRange, dataFile, loadedSourceNames, trustedRoot } from './check-weights.js';
import { engineArchitecture } from './architectures/index.js';
import type { ArchTensor, EngineArchitecture, EngineHyper, LayerCache } from './architectures/types.js';
import { liveResources, openGpuDevices, openVirtualDevices, type EngineDevice } from './device.js';
import { newDeviceState, releaseAll, type DeviceState } from './device-state.js';
import { cpuRepacks, GGML_TYPE, loadGgml, ROPE_MODE, type Gallocr, type GgmlType, type Ggml } from './ggml/binding.js';
import { LoadedModel } from './model.js';
import { resolveRunDevices, type RunDevices } from './run-devices.js';
import { buildStageGraph, deviceLookups, stagesFromPlan, type Stage } from './stages.js';
import { describeWeights, ggmlTypeFor, loadWeightData, placeWeights, storedBytes, type WeightSpec } from './weights.js';
import { measureGraph, measureWorkspace, withPackingMargin, representativeLayers } from './workspace.js';

/** What `run` accepts when suggesting changes to a plan that does not fit: no --ctx auto, KV in F16/F32. */
const RUN_KNOBS: RemedyKnobs = { kvDtypes: [...KV_DTYPES], dtypes: ['float32', 'float16', 'bfloat16'], ctxAuto: false, offload: true };

/** The width of one cached K/V head (every family's hyper names it headDim; one head when it does not). */
function headWidth(h: EngineHyper): number {
  return (h as EngineHyper & { headDim?: number }).headDim ?? h.kvDim;
}

/** The remedies an infeasible plan may suggest for this model: block-quantized caches only where its heads allow. */
function knobsFor(h: EngineHyper): RemedyKnobs {
  return headWidth(h) % 32 === 0 ? RUN_KNOBS : { ...RUN_KNOBS, kvDtypes: ['float32', 'float16'] };
}

export interface LoadOptions {
  /**
   * `cpu` (one host device), `virtual:N` (N independent CPU backends), `gpu` (every GPU), `gpu:1,3`
   * (those GPUs by id, as `vramfit devices` numbers them); a GPU form may end in `,cpu`.
   */
  devices?: string;
  /** GPU backend when a card is seen by both: cuda (default when present) or vulkan. */
  backend?: GpuBackend;
  /** Caps per device, as `vramfit plan --max-memory` takes them. */
  maxMemory?: string;
  /** Tokens each sequence may hold in the KV cache. */
  ctx?: number;
  ubatch?: number;
  /**
   * Sequences served at once (the planner's batch): the KV cache holds `parallel` × `ctx` tokens.
   * Default 1; 'auto' takes the most (up to AUTO_PARALLEL_MAX) whose plan fits the caps.
   */
  parallel?: number | 'auto';
  /** The KV cache's type; the block types need flash attention and heads of whole 32-value blocks. */
  kvDtype?: KvDtype;
  /** Load matrices in this dtype instead of the checkpoint's. */
  dtype?: 'float32' | 'float16' | 'bfloat16';
  /** Convert float matrices to this ggml block type at load (rules: src/planner/quantize.ts); planned at that size. */
  quantize?: QuantizeType | 'auto';
  /** --quantize auto ranks types by each tensor's error measured on its weights (cached beside the model). */
  measure?: boolean;
  threads?: number;
  /**
   * Manual split: decoder layers per device, in device order (the embedding goes with the first
   * device, the final norm and head with the last). Skips the planner; caps are still enforced by
   * each device's allocator.
   */
  layerSplit?: number[];
  onProgress?: (loadedBytes: number, totalBytes: number) => void;
}

/** What the checkpoint says, as the engine needs it. */
interface EngineModel {
  model: string;
  /** As read: the checkpoint's own dtypes. */
  source: Skeleton;
  /** Names the head reads under another name (a tied head reads the embedding). */
  headAlias: ReadonlyMap<string, string>;
  /** As loaded: under --quantize, with each converted tensor's dtype the quantized one (what the plan sizes). */
  skeleton: Skeleton;
  arch: EngineArchitecture;
  h: EngineHyper;
  modelDir: string;
  tensorOf: Map<string, Skeleton['tensors'][number]>;
  /** The ggml type a tensor loads as (vectors F32; matrices as stored or as --dtype asks). */
  typeOf: (name: string, ne: number[]) => GgmlType;
}

interface RunShape {
  ctx: number;
  ubatch: number;
  slots: number;
  /** Rows of each layer's unified KV cache: ctx per slot. */
  kvRows: number;
  kvDtype: KvDtype;
  kvType: GgmlType;
}

/** The most slots `parallel: 'auto'` tries. */
export const AUTO_PARALLEL_MAX = 64;

export async function loadModel(model: string, opts: LoadOptions = {}): Promise<LoadedModel> {
  const g = loadGgml();
  let m = await readForEngine(model, opts);
  if (opts.measure && opts.quantize !== 'auto') throw new InputError('--measure', 'ranks the types --quantize auto chooses; add --quantize auto');
  let ranking: PlanQuantization['ranking'];
  const measureWarnings: string[] = [];
  if (opts.quantize === 'auto') {
    const auto = await withAutoTypes(m, opts);
    m = auto.m;
    opts = { ...opts, kvDtype: auto.kvDtype };
    ranking = auto.measured
      ? {
          by: 'measured',
          tensors: auto.measured.tensors,
          fromCache: auto.measured.fromCache,
          ...(auto.measured.cacheFile ? { cache: auto.measured.cacheFile } : {}),
        }
      : { by: 'model' };
    measureWarnings.push(...(auto.measured?.warnings ?? []));
  }
  if (opts.parallel === 'auto') opts = { ...opts, parallel: await mostSlots(g, m, opts) };
  const shape = runShape(m, opts);
  const run = await resolveRunDevices(opts, overheads(m, shape));
  const states = openDevices(run, opts).map(newDeviceState);
  try {
    const devices = states.map((s) => s.device);
    const bufts = [...new Map(devices.map((d) => [`${d.buft}:${d.kind === 'gpu'}`, { buft: d.buft, gpu: d.kind === 'gpu', alignment: d.alignment }])).values()];
    const measured = measureWorkspace(g, m.arch, m.h, m.typeOf, shape.kvRows, shape.ubatch, shape.kvType, bufts);
    // ggml places each tensor on an aligned address: the plan pads as the buffers will.
    const alignment = Math.max(1, ...devices.map((d) => d.alignment));
    let plan = makePlan(m, run, shape, measured, alignment, opts);
    if (opts.quantize)
      plan = { ...plan, quantization: { ...summarizeQuantization(m.source, m.skeleton, opts.quantize, shape.kvDtype), ...(ranking ? { ranking } : {}) } };
    if (run.notes.length > 0 || measureWarnings.length > 0) plan = { ...plan, warnings: [...plan.warnings, ...run.notes, ...measureWarnings] };
    const stages = stagesFromPlan(plan, m.arch, m.h, new Map(devices.map((d) => [d.id, d])));
    describeDeviceWeights(g, m, plan, stages, states);
    plan = withDiskTensorsInRam(plan, states);
    checkCaps(g, plan, stages, states, shape, m.h);
    const kv = allocateWeightsAndCaches(g, m, stages, states, shape);
    reserveCompute(g, m, stages, states, kv, shape);
    await readWeights(g, m, states, opts);
    return new LoadedModel(g, {
      skeleton: m.skeleton,
      arch: m.arch,
      hyper: m.h,
      plan,
      states,
      stages,
      kv,
      ctx: shape.ctx,
      ubatch: shape.ubatch,
      slots: shape.slots,
    });
  } catch (e) {
    releaseAll(g, states);
    throw e;
  }
}

/** Backend overheads a run's GPUs leave room for, for this shape. */
function overheads(m: EngineModel, shape: RunShape): Record<GpuBackend, number> {
  const scratch = scratchShape(m, shape);
  return { vulkan: vulkanScratchBytes(scratch), cuda: TARGETS.vramfit.gpuOverhead + cudaScratchBytes(scratch) };
}

/**
 * The most slots whose plan fits every cap (KV cache of all slots, workspace measured for their
 * attention, backend scratch), found by doubling then bisection: more slots never need less memory.
 * Devices are opened only to learn their buffer types, and closed again.
 */
async function mostSlots(g: Ggml, m: EngineModel, opts: LoadOptions): Promise<number> {
  const probeOpts = { ...opts, parallel: 1 };
  const states = openDevices(await resolveRunDevices(opts, overheads(m, runShape(m, probeOpts))), opts).map(newDeviceState);
  try {
    const devices = states.map((s) => s.device);
    const bufts = [...new Map(devices.map((d) => [`${d.buft}:${d.kind === 'gpu'}`, { buft: d.buft, gpu: d.kind === 'gpu', alignment: d.alignment }])).values()];
    const alignment = Math.max(1, ...devices.map((d) => d.alignment));
    const fits = async (n: number, explain: boolean): Promise<boolean> => {
      const shape = runShape(m, { ...opts, parallel: n });
      const run = await resolveRunDevices(opts, overheads(m, shape));
      const measured = measureWorkspace(g, m.arch, m.h, m.typeOf, shape.kvRows, shape.ubatch, shape.kvType, bufts);
      try {
        makePlan(m, run, shape, measured, alignment, opts, explain);
        return true;
      } catch (e) {
        if (e instanceof InfeasiblePlanError && !explain) return false;
        throw e;
      }
    };
    // One slot must fit; if not, its error (with remedies) is the answer.
    await fits(1, true);
    let good = 1;
    let bad = AUTO_PARALLEL_MAX + 1;
    while (good * 2 < bad) {
      if (await fits(good * 2, false)) good *= 2;
      else bad = good * 2;
    }
    while (bad - good > 1) {
      const mid = Math.floor((good + bad) / 2);
      if (await fits(mid, false)) good = mid;
      else bad = mid;
    }
    return good;
  } finally {
    releaseAll(g, states);
  }
}

async function readForEngine(model: string, opts: LoadOptions): Promise<EngineModel> {
  const skeleton = await readModel(model);
  const aliases = new Set(skeleton.tied.flatMap((group) => group.slice(1)));
  const needsData = (t: Skeleton['tensors'][number]): boolean => !(t.kind === 'buffer' && t.persistent === false) && !aliases.has(t.name);
  const unreadable = skeleton.tensors.find((t) => !t.location?.range && needsData(t) && t.location?.noRange);
  if (skeleton.source.shapes === 'headers' && unreadable) {
    throw new InputError(model, `the engine cannot load ${unreadable.name} from ${unreadable.location!.file}: ${unreadable.location!.noRange}`);
  }
  if (skeleton.source.shapes !== 'headers' || !skeleton.tensors.every((t) => t.location?.range || !needsData(t))) {
    throw new InputError(model, 'the engine needs weights it can read (safetensors, PyTorch .bin or GGUF with byte ranges); this model has none here');
  }
  const root = trustedRoot(skeleton);
  const { arch, h, modelDir } = hyperFor(model, skeleton, root);
  const archTensors = arch.tensors(h);
  // A tied head reads the embedding matrix.
  const headAlias = h.tied ? new Map(archTensors.head.map((t, i) => [t.name, archTensors.embed[i]?.name ?? t.name])) : new Map<string, string>();
  const tensorOf = new Map(skeleton.tensors.map((t) => [t.name, t]));
  // Nothing reaches ggml before each tensor it will load is known to be loadable and where it says.
  const sizes = new Map<string, number>();
  for (const name of loadedSourceNames(archTensors, h.layers, (n) => headAlias.get(n) ?? n)) {
    const t = tensorOf.get(name);
    if (!t) throw new InputError(model, `the checkpoint has no ${name}`);
    const file = t.location ? dataFile(t.location.file, modelDir, root) : model;
    checkWeightDtype(t, file);
    checkWeightRange(t, file, sizes);
    if (root !== undefined && t.location) t.location.file = file;
  }
  const fixed = opts.quantize && opts.quantize !== 'auto' ? quantizeSkeleton(skeleton, opts.quantize).skeleton : skeleton;
  return withLoadedTypes({ model, skeleton, arch, h, modelDir, tensorOf, typeOf: () => GGML_TYPE.F32, source: skeleton, headAlias }, fixed, opts, headAlias);
}

/**
 * The model as it will be loaded: `loaded` is its skeleton with each converted tensor's dtype (--quantize), which
 * the plan sizes; the ggml type of each tensor follows it (vectors F32; --dtype for the floats left alone).
 */
function withLoadedTypes(m: EngineModel, loaded: Skeleton, opts: LoadOptions, headAlias: ReadonlyMap<string, string>): EngineModel {
  const sourceDtype = new Map(m.source.tensors.map((t) => [t.name, t.dtype]));
  const chosen = new Map(loaded.tensors.filter((t) => t.dtype !== sourceDtype.get(t.name)).map((t) => [t.name, t.dtype]));
  const typeOf = (name: string, ne: number[]): GgmlType => {
    const stored = headAlias.get(name) ?? name;
    const source = m.tensorOf.get(stored);
    if (!source) throw new InputError(m.model, `the checkpoint has no ${name}`);
    if (ne.length === 1) return GGML_TYPE.F32;
    const q = chosen.get(stored);
    if (q) return ggmlTypeFor(q);
    return opts.dtype ? ggmlTypeFor(opts.dtype) : ggmlTypeFor(source.dtype);
  };
  return { ...m, skeleton: loaded, typeOf, headAlias };
}

/**
 * `--quantize auto`: each unit's type and the KV cache's chosen by the planner for these devices (GPUs only), at
 * the memory model's workspace; the load then plans again with the measured one.
 */
async function withAutoTypes(m: EngineModel, opts: LoadOptions): Promise<{ m: EngineModel; kvDtype: KvDtype; measured?: MeasureResult }> {
  const measured = opts.measure ? await measureQuantError(m.source, m.modelDir, { threads: opts.threads ?? availableParallelism() }) : undefined;
  const shape = runShape(m, { ...opts, parallel: opts.parallel === 'auto' ? 1 : opts.parallel });
  const run = await resolveRunDevices(opts, overheads(m, shape));
  const blockKv = headWidth(m.h) % 32 === 0 && !(m.h.alibi && shape.ctx > 2048);
  const kvDtypes: KvDtype[] = opts.kvDtype ? [opts.kvDtype] : blockKv ? [shape.kvDtype, 'q8_0', 'q4_0'] : [shape.kvDtype];
  const choice = planQuantizeAuto({
    skeleton: m.source,
    devices: run.specs,
    workload: { ctx: shape.ctx, batch: shape.slots, ubatch: shape.ubatch, kvDtype: shape.kvDtype },
    target: 'vramfit',
    kvDtypes,
    ...(measured ? { measured: measured.errors } : {}),
  });
  return { m: withLoadedTypes(m, choice.skeleton, opts, m.headAlias), kvDtype: choice.kvDtype as KvDtype, ...(measured ? { measured } : {}) };
}

function runShape(m: EngineModel, opts: LoadOptions): RunShape {
  const h = m.h;
  const ctx = opts.ctx ?? Math.min(h.maxPositions, 4096);
  if (!Number.isSafeInteger(ctx) || ctx < 1) throw new InputError('--ctx', `expected a positive integer, got ${ctx}`);
  const slots = opts.parallel === 'auto' ? 1 : (opts.parallel ?? 1);
  if (!Number.isSafeInteger(slots) || slots < 1 || slots > 256) throw new InputError('--parallel', `expected an integer from 1 to 256, got ${slots}`);
  // A step of a full batch carries one token of every sequence.
  const ubatch = Math.max(Math.min(opts.ubatch ?? 512, ctx), Math.min(slots, 512));
  // A position past a learned position table would be an out-of-range row lookup, which aborts ggml.
  if (h.positionLimit !== undefined && ctx > h.positionLimit)
    throw new InputError('--ctx', `${ctx} tokens exceed the ${h.positionLimit} positions this model has embeddings for`);
  // Past the positions the model was trained for (stretched by linear rope scaling), nothing is
  // meaningful, and a huge cache would only exhaust memory.
  const stretch = 'freqScale' in h && typeof h.freqScale === 'number' && h.freqScale > 0 && h.freqScale < 1 ? 1 / h.freqScale : 1;
  const limit = Math.round(h.maxPositions * stretch);
  if (ctx > limit)
    throw new InputError(
      '--ctx',
      `${ctx} tokens exceed the ${limit}-token context this model was trained for${stretch > 1 ? ` (${h.maxPositions} positions × rope scaling ${stretch})` : ''}`,
    );
  // As transformers does, the cache follows the model: float32 models keep a float32 cache.
  const kvDtype = opts.kvDtype ?? (kvDefaultDtype(m.skeleton) === 'float32' ? 'float32' : 'float16');
  if (kvDtype === 'q8_0' || kvDtype === 'q4_0') checkBlockKv(kvDtype, h, ctx);
  return { ctx, ubatch, slots, kvRows: ctx * slots, kvDtype, kvType: ggmlTypeFor(kvDtype) };
}

/**
 * A block-quantized cache is read per head (views of head_dim values: whole blocks only) and only through flash
 * attention (V cannot be transposed in blocks), whose F16 mask holds ALiBi's key–query offsets exactly up to 2048.
 */
function checkBlockKv(kvDtype: KvDtype, h: EngineHyper, ctx: number): void {
  const headDim = headWidth(h);
  if (headDim % 32 !== 0) throw new InputError('--kv-dtype', `${kvDtype} stores 32-value blocks, and this model's heads are ${headDim} wide; use float16`);
  if (h.alibi && ctx > 2048)
    throw new InputError(
      '--kv-dtype',
      `${kvDtype} caches attend through flash attention, whose mask holds ALiBi offsets up to 2048 tokens; use --ctx 2048 or float16`,
    );
}

/** The shapes that size a GPU backend's own scratch buffers (memory-model.ts), over the whole model. */
function scratchShape(m: EngineModel, shape: RunShape): BackendScratchShape {
  const t = m.arch.tensors(m.h);
  const matrices = [...t.head, ...representativeLayers(m.arch, m.h).flatMap((i) => t.layer(i))]
    .filter((x) => x.ne.length >= 2)
    .map((x) => {
      const type = m.typeOf(x.stack?.[0] ?? x.name, x.ne);
      const stored = type === GGML_TYPE.F32 ? 'f32' : type === GGML_TYPE.F16 || type === GGML_TYPE.BF16 ? 'f16' : 'quantized';
      return { k: x.ne[0]!, m: x.ne[1]!, stored } as const;
    });
  return {
    ubatch: shape.ubatch,
    ctx: shape.kvRows,
    kvDim: m.h.kvDim,
    queryDim: m.h.hidden,
    matrices,
    // 4: the mul_mat + soft_max path; 2: flash attention (F16 and block-quantized caches).
    kvBytesPerElement: shape.kvType === GGML_TYPE.F32 ? 4 : 2,
  };
}

function openDevices(run: RunDevices, opts: LoadOptions): EngineDevice[] {
  // ggml's CPU threads spin at barriers: more threads than free cores (other work, several backends)
  // slows a step by orders of magnitude, so the default leaves half the cores alone.
  const cores = availableParallelism();
  const threads = opts.threads ?? Math.max(1, Math.min(8, Math.floor(cores / 2)));
  if (!Number.isSafeInteger(threads) || threads < 1 || threads > 2 * cores) {
    throw new InputError(
      '--threads',
      `${threads} threads on ${cores} cores: ggml's threads spin while they wait, so more than the cores only slows every step (at most ${2 * cores})`,
    );
  }
  const hosts = run.specs.filter((s) => s.kind !== 'disk');
  const caps = new Map(hosts.map((s) => [s.id, s.cap]));
  if (run.kind === 'virtual')
    return openVirtualDevices(
      hosts.map((s) => s.id),
      caps,
      threads,
    );
  const gpus = openGpuDevices(
    hosts
      .filter((s) => s.kind === 'gpu')
      .map((s) => {
        const gpu = run.gpus.get(s.id)!;
        return {
          id: s.id,
          backend: gpu.backend,
          handle: gpu.handle,
          label: `GPU ${s.id} (${gpu.name}, ${gpu.description})`,
          cap: s.cap,
          backendReserve: s.overhead,
        };
      }),
  );
  try {
    return [
      ...gpus,
      ...openVirtualDevices(
        hosts.filter((s) => s.kind === 'cpu').map((s) => s.id),
        caps,
        threads,
      ),
    ];
  } catch (e) {
    releaseAll(loadGgml(), gpus.map(newDeviceState));
    throw e;
  }
}

function makePlan(m: EngineModel, run: RunDevices, shape: RunShape, measured: MeasuredWorkspace, alignment: number, opts: LoadOptions, explain = true): Plan {
  const workload = { ctx: shape.ctx, batch: shape.slots, ubatch: shape.ubatch, kvDtype: shape.kvDtype, ...(opts.dtype ? { dtype: opts.dtype } : {}) };
  if (!opts.layerSplit)
    return planFit({
      skeleton: m.skeleton,
      devices: run.specs,
      workload,
      target: 'vramfit',
      measuredWorkspace: measured,
      alignment,
      remedies: explain ? knobsFor(m.h) : false,
    });
  const u = m.arch.units(m.h);
  return manualPlan(
    m.skeleton,
    { embed: u.embed, head: u.head, block: (i) => u.block(i), layers: m.h.layers, tied: m.h.tied },
    run.specs,
    opts.layerSplit,
    workload,
    measured,
    alignment,
  );
}

/** Which checkpoint tensors each device loads, and the ggml tensors (no data yet) they become. */
function describeDeviceWeights(g: Ggml, m: EngineModel, plan: Plan, stages: Stage[], states: DeviceState[]): void {
  const { model, tensorOf, typeOf, h } = m;
  const archTensors = m.arch.tensors(h);
  const onDisk = new Set(plan.devices.find((d) => d.id === 'disk')?.modules ?? []);
  const stored = (name: string, ne: number[], transform?: ArchTensor['transform']): Skeleton['tensors'][number] => {
    const source = tensorOf.get(name);
    if (!source) throw new InputError(model, `the checkpoint has no ${name}`);
    // A transposed tensor is stored the other way round.
    const expected = transform === 'transpose' ? [...ne] : [...ne].reverse();
    if (source.shape.length !== expected.length || source.shape.some((v, i) => v !== expected[i])) {
      throw new InputError(model, `${name} is [${source.shape.join(', ')}] but config.json implies [${expected.join(', ')}]`);
    }
    return source;
  };
  const specFor = (name: string, ne: number[], transform?: ArchTensor['transform'], stack?: string[]): WeightSpec => {
    if (stack) {
      // One ggml tensor from several checkpoint tensors of one shape and dtype (an MoE layer's experts).
      if (transform || ne.length < 2 || stack.length !== ne.at(-1))
        throw new VramfitError('PIPELINE', `${name}: ${stack.length} stacked tensors cannot make [${ne.join(', ')}]${transform ? ' with a transform' : ''}`, 1);
      const parts = stack.map((part) => stored(part, ne.slice(0, -1)));
      if (parts.some((p) => p.dtype !== parts[0]!.dtype)) throw new InputError(model, `the tensors stacked into ${name} do not share one dtype`);
      return { name, ne, type: typeOf(stack[0]!, ne), source: parts[0]!, parts };
    }
    const source = stored(name, ne, transform);
    const spec: WeightSpec = { name, ne, type: typeOf(name, ne), source };
    // A matrix the file already stores transposed (GPT-2's Conv1D weights in a GGUF) loads as stored.
    const applied = transform === 'transpose' && source.transposed ? undefined : transform;
    if (applied) spec.transform = applied;
    return spec;
  };
  const perDevice = new Map<string, WeightSpec[]>();
  // Matrices the graph reads only through ggml_mul_mat, in a type the CPU repacks (Q4_0, Q4_K, …), go to its repack
  // buffer as llama.cpp puts them: its GEMM kernels then read interleaved blocks (prefill ~2× on AVX2). Embeddings
  // (get_rows), stacked experts and matrices read through views keep the plain layout.
  const plainOnly = new Set(archTensors.embed.map((t) => t.name));
  for (const t of archTensors.head) if (t.viewed) plainOnly.add(t.name);
  for (const st of stages) for (const i of st.layers) for (const t of archTensors.layer(i)) if (t.viewed) plainOnly.add(t.name);
  const repackable = (s: WeightSpec): boolean =>
    !s.parts &&
    s.ne.length === 2 &&
    !plainOnly.has(s.name) &&
    s.type !== GGML_TYPE.F32 &&
    s.type !== GGML_TYPE.F16 &&
    s.type !== GGML_TYPE.BF16 &&
    cpuRepacks(g, states[0]!.device.backend, s.type, s.ne[0]!, s.ne[1]!);
  const add = (d: EngineDevice, s: WeightSpec): void => {
    // A disk-offloaded tensor is used in place when the kernels can read it as stored.
    const onDiskUnit = [...onDisk].some((unit) => s.name.startsWith(`${unit}.`));
    if (onDiskUnit && s.parts) {
      throw new InputError(
        '--max-memory',
        `the plan offloads ${s.name} to disk, but it is assembled at load time from several stored tensors (an MoE layer's experts, a GGUF's split q/k/v) and cannot be used in place from the file; give the devices or cpu room for those blocks`,
      );
    }
    if (onDiskUnit && !s.transform && s.type === ggmlTypeFor(s.source.dtype)) s.mapped = true;
    else if (onDiskUnit) s.offloadedToRam = true;
    if (d.kind !== 'gpu' && !s.mapped && repackable(s)) s.repacked = true;
    appendTo(perDevice, d.id, s);
  };
  const addOnce = (d: EngineDevice, t: ArchTensor): void => {
    if (!perDevice.get(d.id)?.some((s) => s.name === t.name)) add(d, specFor(t.name, t.ne, t.transform, t.stack));
  };
  for (const st of stages) {
    if (st.embed || (st.head && h.tied)) for (const t of archTensors.embed) addOnce(st.device, t);
    for (const i of st.layers) for (const t of archTensors.layer(i)) add(st.device, specFor(t.name, t.ne, t.transform, t.stack));
    if (st.norm) for (const t of archTensors.norm) addOnce(st.device, t);
    if (st.head) for (const t of archTensors.head) addOnce(st.device, t);
  }
  for (const s of states) s.weights = describeWeights(g, s.device, perDevice.get(s.device.id) ?? []);
}

const pad = alignUp;

/**
 * A disk-offloaded tensor is used in place only when the kernels read it as stored; one converted
 * (a half-precision norm to F32, --dtype) or transformed at load (GPT-2's transposed Conv1D) is held in
 * host RAM instead. The plan counted it on disk: move those bytes to the cpu device, which its cap
 * check then sees, and say so.
 */
function withDiskTensorsInRam(plan: Plan, states: readonly DeviceState[]): Plan {
  const disk = plan.devices.find((d) => d.id === 'disk');
  const host = states.find((s) => s.device.id === 'cpu');
  if (!disk || !host?.weights) return plan;
  const cpuPlan = plan.devices.find((d) => d.id === 'cpu')!;
  const g = loadGgml();
  const inRam = host.weights.specs.filter((x) => x.offloadedToRam).reduce((sum, x) => sum + g.nbytes(host.weights!.tensors.get(x.name)!), 0);
  if (inRam === 0) return plan;
  const devices = plan.devices.map((d) =>
    d === cpuPlan
      ? { ...d, weights: d.weights + inRam, used: d.used + inRam }
      : d === disk
        ? { ...d, weights: host.weights!.mappedBytes, used: host.weights!.mappedBytes }
        : d,
  );
  const warning = `${inRam} bytes of disk-offloaded tensors are converted or transformed at load, so they are held in CPU RAM, not used in place`;
  return { ...plan, devices, warnings: [...plan.warnings, warning] };
}

/** Bytes of one device's KV cache: K and V of each of its layers at the full context. */
function kvBytes(g: Ggml, stages: Stage[], d: EngineDevice, shape: RunShape, h: EngineHyper): number {
  const layers = stages.filter((s) => s.device === d).reduce((sum, s) => sum + s.layers.length, 0);
  return layers * 2 * pad(g.rowSize(shape.kvType, h.kvDim) * shape.kvRows, d.alignment);
}

/**
 * Nothing is allocated until every device is known to hold its weights, KV cache and the workspace the
 * plan measured; the allocations after this re-check each request.
 */
function checkCaps(g: Ggml, plan: Plan, stages: Stage[], states: DeviceState[], shape: RunShape, h: EngineHyper): void {
  for (const { device: d, weights } of states) {
    const w = weights!.bytes;
    const kv = kvBytes(g, stages, d, shape, h);
    const planned = plan.devices.find((x) => x.id === d.id)?.workspace ?? 0;
    d.allocator.check(w, 'weights');
    d.allocator.check(kv, 'KV cache', w);
    d.allocator.check(planned, 'compute workspace', w + kv);
  }
}

function allocateWeightsAndCaches(g: Ggml, m: EngineModel, stages: Stage[], states: DeviceState[], shape: RunShape): Map<number, LayerCache> {
  const kv = new Map<number, LayerCache>();
  for (const s of states) {
    const d = s.device;
    placeWeights(g, d, s.weights!, m.modelDir);
    d.watch?.sample();
    const layers = stages.filter((st) => st.device === d).flatMap((st) => st.layers);
    if (layers.length === 0) continue;
    s.kvCtx = g.init(g.tensorOverhead() * (layers.length * 2 + 4), true);
    const per = pad(g.rowSize(shape.kvType, m.h.kvDim) * shape.kvRows, d.alignment);
    s.kv = d.allocator.allocate(per * 2 * layers.length, 'kv');
    const base = g.raw.ggml_backend_buffer_get_base(s.kv.buffer) as bigint;
    layers.forEach((i, j) => {
      const k = g.newTensor(s.kvCtx!, shape.kvType, [m.h.kvDim, shape.kvRows]);
      const v = g.newTensor(s.kvCtx!, shape.kvType, [m.h.kvDim, shape.kvRows]);
      g.raw.ggml_backend_tensor_alloc(s.kv!.buffer, k, base + BigInt(per * 2 * j));
      g.raw.ggml_backend_tensor_alloc(s.kv!.buffer, v, base + BigInt(per * (2 * j + 1)));
      kv.set(i, { k, v });
    });
    g.raw.ggml_backend_buffer_clear(s.kv.buffer, 0);
    d.watch?.sample();
  }
  return kv;
}

/**
 * Compute buffers: each device's worst-case graph (a full micro-batch at the full context) measured on
 * its own buffer type without allocating, checked against the cap, then reserved.
 */
function reserveCompute(g: Ggml, m: EngineModel, stages: Stage[], states: DeviceState[], kv: Map<number, LayerCache>, shape: RunShape): void {
  const weights = new Map(states.map((s) => [s.device.id, s.weights!]));
  for (const s of states) {
    const d = s.device;
    const mine = stages.filter((st) => st.device === d);
    if (mine.length === 0) continue;
    let most = 0;
    for (const st of mine) {
      const b = buildStageGraph(g, m.arch, m.h, st, deviceLookups(st, weights, kv), shape.ubatch, shape.kvRows);
      try {
        most = Math.max(most, measureGraph(g, d.buft, b.graph));
      } finally {
        b.gb.free();
      }
    }
    most = withPackingMargin(most, d.alignment);
    d.allocator.reserveExternal(most, 'compute');
    s.computeBytes = most;
    s.galloc = g.raw.ggml_gallocr_new(d.buft) as Gallocr;
    liveResources.graphAllocators++;
    for (const st of mine) {
      const b = buildStageGraph(g, m.arch, m.h, st, deviceLookups(st, weights, kv), shape.ubatch, shape.kvRows);
      const ok = g.raw.ggml_gallocr_reserve(s.galloc, b.graph) as boolean;
      b.gb.free();
      if (!ok) throw new VramfitError('GGML', `could not reserve the compute buffer on device ${d.id}`, 1);
    }
    d.watch?.sample();
  }
}

/** Only now are the weights read, shard by shard, into their devices. */
async function readWeights(g: Ggml, m: EngineModel, states: DeviceState[], opts: LoadOptions): Promise<void> {
  const total = states.reduce((sum, s) => sum + s.weights!.specs.reduce((x, sp) => x + storedBytes(sp), 0), 0);
  // Quantizing at load is the one CPU-bound part of loading and no graph's threads spin meanwhile:
  // it may use every core the user allows (--threads), else every core.
  const threads = opts.threads ?? availableParallelism();
  let loaded = 0;
  for (const s of states) {
    await loadWeightData(
      g,
      m.modelDir,
      s.weights!,
      (n) => {
        loaded += n;
        opts.onProgress?.(loaded, total);
      },
      threads,
    );
    s.device.watch?.sample();
  }
}

/** The model's hyper-parameters, from config.json, or from GGUF metadata (with llama.cpp's rope layout). */
function hyperFor(model: string, skeleton: Skeleton, root: string | undefined): { arch: EngineArchitecture; h: EngineHyper; modelDir: string } {
  const arch = engineArchitecture(skeleton.family, model);
  if (skeleton.source.kind === 'gguf') {
    const file = root === undefined ? skeleton.source.files[0]! : dataFile(skeleton.source.files[0]!, root, root);
    const facts = readGgufFacts(file);
    if (!facts)
      throw new InputError(
        model,
        `the engine runs GGUF files of architectures ${GGUF_MAPPED_ARCHITECTURES.join(', ')} (llama incl. Mixtral); this file's is another`,
        'UNSUPPORTED_ARCHITECTURE',
      );
    const h = arch.hyper(facts.config, skeleton.family);
    // llama.cpp's converter permuted q/k rows for its NORMAL rope mode.
    if (facts.permutedQK) (h as EngineHyper & { ropeMode?: number }).ropeMode = ROPE_MODE.NORMAL;
    if (facts.ropeFreqs) {
      const [start, end] = facts.ropeFreqs.range;
      const fd = openSync(file, 'r');
      let bytes: Uint8Array;
      try {
        bytes = readBytes(fd, end - start, start);
      } finally {
        closeSync(fd);
      }
      if (bytes.length !== end - start) throw new FormatError(file, 'ends inside rope_freqs.weight');
      h.freqFactors = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
    }
    return { arch, h, modelDir: dirname(file) };
  }
  const named = skeleton.source.files.find((f) => f.endsWith('config.json'));
  if (!named) throw new InputError(model, 'no config.json beside the weights');
  // A skeleton JSON's files are read from its own folder only.
  const configPath = root === undefined ? named : dataFile(named, root, root);
  const modelDir = root ?? dirname(skeleton.source.files.find((f) => f.endsWith('.safetensors')) ?? configPath);
  return { arch, h: arch.hyper(readConfigFile(configPath), skeleton.family), modelDir };
}
