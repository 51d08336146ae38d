import { closeSync, openSync, readSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname } from 'node:path';
import { tensorBytes } from '../reader/dtypes.js';
import { readConfigFile } from '../reader/read-config.js';
import { readGgufFacts } from '../reader/gguf-model.js';
import { readModel } from '../reader/read-model.js';
import { kvDefaultDtype } from '../reader/summary.js';
import type { Skeleton } from '../reader/skeleton.js';
import { parseMaxMemory, resolveBudgets } from '../planner/budgets.js';
import { planFit, rolesKey, type MeasuredWorkspace } from '../planner/fit.js';
import type { Plan, PlanDeviceSpec } from '../planner/plan.js';
import { InputError, VramfitError } from '../util/errors.js';
import { engineArchitecture } from './architectures/index.js';
import { FLASH_ATTENTION, paddedKvLength } from './architectures/kv.js';
import type { ArchTensor, EngineArchitecture, EngineHyper, StepInputs } from './architectures/types.js';
import { closeDevices, gpuDeviceCount, gpuFreeBytes, liveResources, openGpuDevices, openVirtualDevices, type Allocation, type EngineDevice } from './device.js';
import { cpuDevice, GGML_TYPE, loadGgml, ROPE_MODE, type BufferType, type Gallocr, type GgmlType, type Ggml, type Graph, type Tensor } from './ggml/binding.js';
import { GraphBuilder, type LongLivedTensors } from './ggml/graph.js';
import { describeWeights, freeWeights, ggmlTypeFor, loadWeightData, placeWeights, storedBytes, type DeviceWeights, type WeightSpec } from './weights.js';

export interface LoadOptions {
  /** `virtual:N` (N independent CPU backends) or `cpu` (one). */
  devices?: string;
  /** Caps per device, as `vramfit plan --max-memory` takes them. */
  maxMemory?: string;
  ctx?: number;
  ubatch?: number;
  kvDtype?: 'float32' | 'float16';
  /** Load matrices in this dtype instead of the checkpoint's. */
  dtype?: 'float32' | 'float16' | 'bfloat16';
  threads?: number;
  /**
   * Manual split: decoder layers per device, in device order (the embedding goes with the first
   * device, the final norm and head with the last). Skips the planner; caps are still enforced by
   * each device's allocator.
   */
  layerSplit?: number[];
  onProgress?: (loadedBytes: number, totalBytes: number) => void;
}

/** One pipeline stage: consecutive parts of the forward pass computed on one device. */
interface Stage {
  device: EngineDevice;
  embed: boolean;
  layers: number[];
  norm: boolean;
  head: boolean;
}

export interface DeviceReport {
  id: string;
  cap: number;
  /** What the plan predicted this device would hold at most. */
  predicted: number;
  /** The most the capped allocator ever had out on it. */
  measured: number;
  breakdown: Record<string, number>;
  /** Bytes of hidden state copied into this device from another. */
  bytesIn: number;
}

const STAGE_NODES = 8192;
/**
 * Built graphs kept per stage, most recently used last: decode alternates between few shapes (one
 * token at one padded KV length; a prompt's micro-batches), and each graph's metadata context is a
 * few MiB of host memory, so only these many stay.
 */
const GRAPHS_PER_STAGE = 4;

/** A model loaded as planned: weights and each layer's KV cache on their devices, ready to run. */
export class LoadedModel {
  private past = 0;
  private readonly bytesIn = new Map<string, number>();
  private disposed = false;
  /** Shapes of this model's weights and KV cache, read from ggml once for all the graphs of its steps. */
  private readonly longLived: LongLivedTensors = new Map();
  /**
   * Each stage's built graphs by shape key (tokens, padded KV length, last-only): a step of a shape
   * seen before only sets inputs and computes. The graph does not depend on the cache's fill (the
   * rows written and the mask are inputs), which is what makes it reusable.
   */
  private readonly graphs = new Map<Stage, Map<string, BuiltStage>>();
  /**
   * The graph each device's allocator last placed. Its tensors keep their addresses in the
   * allocator's buffer until another graph is allocated there, so running it again needs no
   * allocation.
   */
  private readonly placed = new Map<string, BuiltStage>();

  constructor(
    private readonly g: Ggml,
    readonly skeleton: Skeleton,
    readonly arch: EngineArchitecture,
    readonly hyper: EngineHyper,
    readonly plan: Plan,
    readonly devices: EngineDevice[],
    private readonly stages: Stage[],
    private readonly weights: Map<string, DeviceWeights>,
    private readonly kv: Map<number, { k: Tensor; v: Tensor }>,
    private readonly kvAllocations: Map<string, Allocation>,
    private readonly kvCtx: ReturnType<Ggml['init']>[],
    private readonly gallocs: Map<string, Gallocr>,
    private readonly computeBytes: Map<string, number>,
    readonly ctx: number,
    readonly ubatch: number,
  ) {}

  /** Tokens in the KV cache. */
  get position(): number {
    return this.past;
  }

  reset(): void {
    this.past = 0;
    this.dropGraphs();
  }

  /** Frees every cached graph's context. */
  private dropGraphs(): void {
    for (const byKey of this.graphs.values()) for (const b of byKey.values()) b.gb.free();
    this.graphs.clear();
    this.placed.clear();
  }

  /** The stage's graph for this shape, from the cache or built (evicting the least recently used). */
  private stageGraph(stage: Stage, n: number, nKv: number, lastOnly: boolean): BuiltStage {
    let byKey = this.graphs.get(stage);
    if (!byKey) this.graphs.set(stage, (byKey = new Map()));
    const key = `${n}:${nKv}:${lastOnly ? 1 : 0}`;
    const hit = byKey.get(key);
    if (hit) {
      // Most recently used last.
      byKey.delete(key);
      byKey.set(key, hit);
      return hit;
    }
    while (byKey.size >= GRAPHS_PER_STAGE) {
      const [oldKey, old] = byKey.entries().next().value as [string, BuiltStage];
      byKey.delete(oldKey);
      if (this.placed.get(stage.device.id) === old) this.placed.delete(stage.device.id);
      old.gb.free();
    }
    const built = buildStageGraph(this.g, this.arch, this.hyper, stage, deviceLookups(stage, this.weights, this.kv), n, nKv, lastOnly, this.longLived);
    byKey.set(key, built);
    return built;
  }

  /**
   * Runs `tokens` through the pipeline in micro-batches of at most `ubatch`, appending to the KV
   * cache. Returns one logits row per token when `allLogits`, else only the last token's.
   */
  forward(tokens: readonly number[], allLogits = false): Float32Array[] {
    this.ensureOpen();
    if (tokens.length === 0) return [];
    if (this.past + tokens.length > this.ctx) {
      throw new InputError('--ctx', `${this.past + tokens.length} tokens do not fit the ${this.ctx}-token context this model was loaded with`);
    }
    for (const id of tokens) {
      if (!Number.isSafeInteger(id) || id < 0 || id >= this.hyper.vocab) throw new InputError('--input-ids', `token id ${id} is outside the vocabulary (0..${this.hyper.vocab - 1})`);
    }
    const rows: Float32Array[] = [];
    for (let start = 0; start < tokens.length; start += this.ubatch) {
      const chunk = tokens.slice(start, start + this.ubatch);
      const last = start + this.ubatch >= tokens.length;
      // Without allLogits only each micro-batch's last token goes through the final norm and head.
      const logits = this.step(chunk, !allLogits);
      const n = chunk.length;
      const v = this.hyper.vocab;
      if (allLogits) for (let i = 0; i < n; i++) rows.push(logits.slice(i * v, (i + 1) * v));
      else if (last) rows.push(logits.slice(logits.length - v));
    }
    return rows;
  }

  private step(tokens: number[], lastOnly = false): Float32Array {
    const n = tokens.length;
    // Rows this batch writes and attends over; a graph depends only on (n, nKv, lastOnly).
    const nKv = paddedKvLength(this.past + n, this.ctx);
    let carried: Tensor | undefined;
    let result: Float32Array | undefined;
    for (const stage of this.stages) {
      const built = this.stageGraph(stage, n, nKv, lastOnly);
      const id = stage.device.id;
      if (this.placed.get(id) !== built) {
        const galloc = this.gallocs.get(id)!;
        // Forget the previous placement first: if allocation fails, no graph's addresses are trusted.
        this.placed.delete(id);
        if (!this.g.raw.ggml_gallocr_alloc_graph(galloc, built.graph)) throw new VramfitError('GGML', `could not allocate the compute graph on device ${id}`, 1);
        const size = this.g.raw.ggml_gallocr_get_buffer_size(galloc, 0) as number;
        if (size > this.computeBytes.get(id)!) {
          throw new VramfitError('COMPUTE_GREW', `device ${id}: the compute buffer grew past its reservation (${size} bytes); this is a bug`, 1);
        }
        // Inputs the graph does not read get no memory (writing to one would abort inside ggml);
        // which ones is a property of the graph, so it is read once.
        built.live ??= liveInputs(this.g, built);
        this.placed.set(id, built);
      }
      this.setInputs(built, tokens);
      if (carried && built.hidden) {
        this.g.raw.ggml_backend_tensor_copy(carried, built.hidden);
        this.bytesIn.set(id, (this.bytesIn.get(id) ?? 0) + this.g.nbytes(built.hidden));
      }
      const status = this.g.raw.ggml_backend_graph_compute(stage.device.backend, built.graph) as number;
      if (status !== 0) throw new VramfitError('GGML', `graph compute failed on device ${id} (status ${status})`, 1);
      if (stage.head) {
        const out = new Float32Array(this.hyper.vocab * (lastOnly ? 1 : n));
        this.g.raw.ggml_backend_tensor_get(built.output, out, 0, out.byteLength);
        result = out;
      }
      carried = built.output;
    }
    this.past += n;
    if (!result) throw new VramfitError('PIPELINE', 'no stage produced logits', 1);
    return result;
  }

  private setInputs(b: BuiltStage, tokens: number[]): void {
    const g = this.g;
    const live = b.live!;
    const n = tokens.length;
    if (live.tokens) g.raw.ggml_backend_tensor_set(b.tokens!, Int32Array.from(tokens), 0, n * 4);
    if (live.positions || live.kvRows) {
      // The batch's positions are also the cache rows its K and V go to.
      const pos = Int32Array.from(tokens, (_, i) => this.past + i);
      if (pos[n - 1]! >= this.ctx) throw new VramfitError('PIPELINE', `cache row ${pos[n - 1]} is past the ${this.ctx}-row KV cache`, 1);
      if (live.positions) g.raw.ggml_backend_tensor_set(b.positions!, pos, 0, pos.byteLength);
      if (live.kvRows) g.raw.ggml_backend_tensor_set(b.kvRows!, pos, 0, pos.byteLength);
    }
    if (live.mask) {
      const nKv = b.nKv;
      if (this.past + n > nKv) throw new VramfitError('PIPELINE', `${this.past + n} cached tokens do not fit the graph's KV length ${nKv}`, 1);
      // -inf past each token's own position: later tokens of the batch and the padding rows.
      const mask = new Float32Array(nKv * n).fill(-Infinity);
      for (let i = 0; i < n; i++) {
        const row = mask.subarray(i * nKv, i * nKv + this.past + i + 1);
        // ALiBi models read the key–query offset from the mask (llama.cpp: -|pos_k - pos_q|).
        if (this.hyper.alibi) for (let j = 0; j < row.length; j++) row[j] = j - (this.past + i);
        else row.fill(0);
      }
      if (b.maskF16) {
        const half = new Uint16Array(mask.length);
        g.raw.ggml_fp32_to_fp16_row(mask, half, mask.length);
        g.raw.ggml_backend_tensor_set(b.mask!, half, 0, half.byteLength);
      } else g.raw.ggml_backend_tensor_set(b.mask!, mask, 0, mask.byteLength);
    }
    if (live.freqFactors && this.hyper.freqFactors) g.raw.ggml_backend_tensor_set(b.freqFactors!, this.hyper.freqFactors, 0, this.hyper.freqFactors.byteLength);
  }

  report(): DeviceReport[] {
    const out: DeviceReport[] = this.devices.map((d) => {
      const p = this.plan.devices.find((x) => x.id === d.id);
      return {
        id: d.id,
        cap: d.allocator.cap,
        predicted: p ? p.weights + p.kv + p.workspace + p.overhead : 0,
        measured: d.allocator.peak,
        breakdown: d.allocator.breakdown(),
        bytesIn: this.bytesIn.get(d.id) ?? 0,
      };
    });
    const disk = this.plan.devices.find((x) => x.id === 'disk');
    if (disk) {
      const mapped = [...this.weights.values()].reduce((sum, w) => sum + w.mappedBytes, 0);
      out.push({ id: 'disk', cap: disk.cap, predicted: disk.weights, measured: mapped, breakdown: { mapped }, bytesIn: 0 });
    }
    return out;
  }

  private ensureOpen(): void {
    if (this.disposed) throw new VramfitError('DISPOSED', 'this model was disposed', 1);
  }

  /** Frees every buffer on every device. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.dropGraphs();
    for (const galloc of this.gallocs.values()) {
      this.g.raw.ggml_gallocr_free(galloc);
      liveResources.graphAllocators--;
    }
    for (const d of this.devices) {
      const w = this.weights.get(d.id);
      if (w) freeWeights(this.g, d, w);
      const kv = this.kvAllocations.get(d.id);
      if (kv) d.allocator.free(kv);
      const compute = this.computeBytes.get(d.id);
      if (compute) d.allocator.releaseExternal(compute, 'compute');
    }
    for (const c of this.kvCtx) this.g.free(c);
    closeDevices(this.devices);
  }
}

interface BuiltStage {
  gb: GraphBuilder;
  graph: Graph;
  output: Tensor;
  /** KV rows attended over. */
  nKv: number;
  tokens?: Tensor;
  hidden?: Tensor;
  positions?: Tensor;
  kvRows?: Tensor;
  mask?: Tensor;
  /** The mask is F16 (flash attention's), filled from float32 values. */
  maskF16?: boolean;
  freqFactors?: Tensor;
  /** Which inputs got memory, once the graph has been allocated. */
  live?: Partial<Record<InputName, boolean>>;
}

type InputName = 'tokens' | 'positions' | 'kvRows' | 'mask' | 'freqFactors';

/** The inputs of an allocated graph that have memory, narrowed so setInputs can write them. */
function liveInputs(g: Ggml, b: BuiltStage): Partial<Record<InputName, boolean>> {
  const live = (t: Tensor | undefined): boolean => t !== undefined && g.isAllocated(t);
  return { tokens: live(b.tokens), positions: live(b.positions), kvRows: live(b.kvRows), mask: live(b.mask), freqFactors: live(b.freqFactors) };
}

type StagePlan = Pick<Stage, 'embed' | 'layers' | 'norm' | 'head'>;

function deviceLookups(stage: Stage, weights: Map<string, DeviceWeights>, kv: Map<number, { k: Tensor; v: Tensor }>): Lookups {
  return {
    weight: (name) => {
      const t = weights.get(stage.device.id)?.tensors.get(name);
      if (!t) throw new VramfitError('PIPELINE', `${name} is not on device ${stage.device.id}`, 1);
      return t;
    },
    cache: (i) => kv.get(i)!,
  };
}

interface Lookups {
  weight: (name: string) => Tensor;
  cache: (layer: number) => { k: Tensor; v: Tensor };
}

/**
 * `lastOnly`: only the batch's last token is needed past the blocks (prompt prefill without all
 * logits), so the stage holding the last block hands on that one row, and the final norm and head
 * (a sizeable share of a prefill's work: vocab × hidden per token) run on it alone, as llama.cpp does.
 */
function buildStageGraph(g: Ggml, arch: EngineArchitecture, h: EngineHyper, stage: StagePlan, look: Lookups, n: number, nKv: number, lastOnly = false, longLived?: LongLivedTensors): BuiltStage {
  if (!Number.isSafeInteger(n) || !Number.isSafeInteger(nKv) || n < 1 || nKv < n) throw new VramfitError('PIPELINE', `a graph of ${n} tokens over ${nKv} KV rows`, 1);
  const gb = new GraphBuilder(g, STAGE_NODES, longLived);
  try {
    return buildInto(gb, arch, h, stage, look, n, nKv, lastOnly);
  } catch (e) {
    gb.free();
    throw e;
  }
}

function buildInto(gb: GraphBuilder, arch: EngineArchitecture, h: EngineHyper, stage: StagePlan, look: Lookups, n: number, nKv: number, lastOnly: boolean): BuiltStage {
  const g = gb.g;
  const w = (name: string): Tensor => gb.known(look.weight(name));
  const built: Partial<BuiltStage> = { gb, nKv };
  // Positions feed rope in the blocks and learned position embeddings in the embedding.
  const positions = stage.embed || stage.layers.length > 0 ? gb.input('positions', GGML_TYPE.I32, [n]) : undefined;
  if (positions) built.positions = positions;
  let x: Tensor;
  if (stage.embed) {
    built.tokens = gb.input('tokens', GGML_TYPE.I32, [n]);
    x = arch.embed(gb, h, w, built.tokens, positions!);
  } else {
    // Stages without blocks come after the last one: with lastOnly they receive one row.
    built.hidden = gb.input('hidden_in', GGML_TYPE.F32, [h.hidden, lastOnly && stage.layers.length === 0 ? 1 : n]);
    x = built.hidden;
  }
  const writes: Tensor[] = [];
  if (stage.layers.length > 0) {
    // F16 caches attend with flash attention, which takes an F16 mask; an ALiBi mask holds key–query
    // offsets, which F16 holds exactly up to 2048.
    const k0 = gb.known(look.cache(stage.layers[0]!).k);
    const maskType = FLASH_ATTENTION && gb.type(k0) === GGML_TYPE.F16 && (!h.alibi || nKv <= 2048) ? GGML_TYPE.F16 : GGML_TYPE.F32;
    built.mask = gb.input('kq_mask', maskType, [nKv, n]);
    built.maskF16 = maskType === GGML_TYPE.F16;
    built.kvRows = gb.input('kv_rows', GGML_TYPE.I32, [n]);
    if (h.freqFactors) built.freqFactors = gb.input('rope_freqs', GGML_TYPE.F32, [h.freqFactors.length]);
    const step: StepInputs = { positions: positions!, kvRows: built.kvRows, nKv, mask: built.mask, freqFactors: built.freqFactors ?? null, writes };
    for (const i of stage.layers) {
      const cache = look.cache(i);
      x = arch.layer(gb, h, w, i, x, { k: gb.known(cache.k), v: gb.known(cache.v) }, step);
    }
    if (lastOnly && n > 1 && stage.layers.includes(h.layers - 1)) {
      const row = g.rowSize(GGML_TYPE.F32, h.hidden);
      x = gb.cont(gb.view(x, [h.hidden, 1], [row], (n - 1) * row));
    }
  }
  if (stage.norm) x = arch.finalNorm(gb, h, w, x);
  if (stage.head) x = arch.head(gb, h, w, x);
  built.output = gb.output(x, stage.head ? 'logits' : 'hidden_out');
  built.graph = gb.build(writes);
  return built as BuiltStage;
}

/** Which device holds each part of the forward pass, in forward order, from the plan. */
function stagesFromPlan(plan: Plan, arch: EngineArchitecture, h: EngineHyper, devices: Map<string, EngineDevice>): Stage[] {
  const u = arch.units(h);
  const where = new Map<string, string>();
  for (const d of plan.devices) for (const m of d.modules) where.set(m, d.id);
  const deviceOf = (unit: string): EngineDevice => {
    const id = where.get(unit);
    // Disk-offloaded blocks run on the host CPU, reading their weights from the mapped file.
    const d = id === undefined ? undefined : devices.get(id === 'disk' ? 'cpu' : id);
    if (!d) throw new VramfitError('PIPELINE', `the plan puts ${unit} on ${id ?? 'no device'}, which the engine has not opened`, 1);
    return d;
  };
  const parts: { device: EngineDevice; kind: 'embed' | 'layer' | 'norm' | 'head'; layer?: number }[] = [];
  parts.push({ device: deviceOf(u.embed), kind: 'embed' });
  for (let i = 0; i < h.layers; i++) parts.push({ device: deviceOf(u.block(i)), kind: 'layer', layer: i });
  parts.push({ device: deviceOf(u.norm), kind: 'norm' });
  parts.push({ device: h.tied ? deviceOf(u.embed) : deviceOf(u.head), kind: 'head' });
  const stages: Stage[] = [];
  for (const p of parts) {
    let s = stages.at(-1);
    if (!s || s.device !== p.device) {
      s = { device: p.device, embed: false, layers: [], norm: false, head: false };
      stages.push(s);
    }
    if (p.kind === 'embed') s.embed = true;
    else if (p.kind === 'layer') s.layers.push(p.layer!);
    else if (p.kind === 'norm') s.norm = true;
    else s.head = true;
  }
  return stages;
}

/** Compute buffer a graph needs, from a no-allocation reservation on `buft`. */
function measureGraph(g: Ggml, buft: ReturnType<typeof cpuBufferType>, graph: Graph): number {
  const probe = g.raw.ggml_gallocr_new(buft) as Gallocr;
  try {
    const sizes = [0];
    g.raw.ggml_gallocr_reserve_n_size(probe, graph, null, null, sizes);
    return Number(sizes[0]);
  } finally {
    g.raw.ggml_gallocr_free(probe);
  }
}

function cpuBufferType(g: Ggml): BufferType {
  return g.raw.ggml_backend_dev_buffer_type(cpuDevice(g)) as BufferType;
}

/**
 * The workspace the plan needs, measured rather than estimated: the real stage graphs (two layers,
 * the head, and both) at a full micro-batch and the full context are reserved without allocating,
 * over weight and cache tensors that hold placeholder pointers. This is the engine's calibration of
 * the memory model, done before the plan is made.
 */
function measureWorkspace(g: Ggml, arch: EngineArchitecture, h: EngineHyper, typeOf: (name: string, ne: number[]) => GgmlType, ctx: number, ubatch: number, kvType: GgmlType): MeasuredWorkspace {
  const t = arch.tensors(h);
  const specs = [...t.embed, ...t.norm, ...t.head, ...t.layer(0), ...t.layer(1 % h.layers)];
  // Every weight of two layers, and the four caches.
  const c = g.init(g.tensorOverhead() * (specs.length + 8), true);
  const tensors = new Map<string, Tensor>();
  const made: Tensor[] = [];
  const make = (name: string, ne: number[], type: GgmlType): Tensor => {
    const t = g.newTensor(c, type, ne);
    g.setPlaceholderData(t, true);
    made.push(t);
    tensors.set(name, t);
    return t;
  };
  try {
    for (const spec of specs) {
      if (!tensors.has(spec.name)) make(spec.name, spec.ne, typeOf(spec.stack?.[0] ?? spec.name, spec.ne));
    }
    const kvDim = h.kvDim;
    const caches = [0, 1].map(() => ({ k: make(`k${made.length}`, [kvDim, ctx], kvType), v: make(`v${made.length}`, [kvDim, ctx], kvType) }));
    const look: Lookups = { weight: (name) => tensors.get(name)!, cache: (i) => caches[Math.min(i, 1)]! };
    const layers = h.layers > 1 ? [0, 1] : [0];
    const buft = cpuBufferType(g);
    const out: MeasuredWorkspace = {};
    for (const embed of [false, true]) {
      for (const block of [false, true]) {
        for (const head of [false, true]) {
          // 'none': a device that only applies the final norm and hands the state on. The embedding and
          // a (tied) head with no block on the device are two stages, the blocks running elsewhere in
          // between: the device needs the larger of the two graphs, not one graph holding both.
          const parts: StagePlan[] =
            embed && head && !block
              ? [
                  { embed: true, layers: [], norm: false, head: false },
                  { embed: false, layers: [], norm: false, head: true },
                ]
              : [{ embed, layers: block ? layers : [], norm: head || (!embed && !block), head }];
          let most = 0;
          for (const part of parts) {
            const b = buildStageGraph(g, arch, h, part, look, ubatch, ctx);
            try {
              most = Math.max(most, measureGraph(g, buft, b.graph));
            } finally {
              b.gb.free();
            }
          }
          out[rolesKey({ embed, block, head })] = most;
        }
      }
    }
    return out;
  } finally {
    for (const t of made) g.setPlaceholderData(t, false);
    g.free(c);
  }
}

/**
 * A plan for a user's own split, with the same per-device predictions the planner would make, so a
 * device that cannot hold its share is refused by its allocator before anything is loaded.
 */
function manualPlan(s: Skeleton, arch: EngineArchitecture, h: EngineHyper, specs: PlanDeviceSpec[], split: number[], workload: Plan['workload'], measured: MeasuredWorkspace): Plan {
  const accelerators = specs.filter((d) => d.kind !== 'cpu');
  if (split.length !== accelerators.length || split.some((n) => !Number.isSafeInteger(n) || n < 0) || split.reduce((a, b) => a + b, 0) !== h.layers) {
    throw new InputError('--split', `expected ${accelerators.length} layer counts adding up to ${h.layers}, got ${split.join(',')}`);
  }
  // Plan as if each device had room, then pin every unit where the user put it.
  const roomy = accelerators.map((d) => ({ ...d, cap: Number.MAX_SAFE_INTEGER }));
  const base = planFit({ skeleton: s, devices: roomy, workload, target: 'vramfit', measuredWorkspace: measured });
  const u = arch.units(h);
  const blockOf = new Map(Array.from({ length: h.layers }, (_, i) => [u.block(i), i] as const));
  const where = (unit: string): string => {
    const index = blockOf.get(unit);
    if (index !== undefined) {
      let layer = index;
      for (let d = 0; d < split.length; d++) {
        if (layer < split[d]!) return accelerators[d]!.id;
        layer -= split[d]!;
      }
    }
    // Whatever precedes the first block (GPT-2's wpe beside wte) is embedding-side: the engine loads it with the embedding.
    if (unit === u.embed || (h.tied && unit === u.head) || beforeBlocks.has(unit)) return accelerators[0]!.id;
    return accelerators.at(-1)!.id;
  };
  const units = base.devices.flatMap((d) => d.modules);
  const firstBlock = units.findIndex((m) => blockOf.has(m));
  const beforeBlocks = new Set(units.slice(0, Math.max(0, firstBlock)).filter((m) => m !== u.head));
  const kvLayer = (s.attention?.kvElementsPerToken ?? 0) * (workload.kvDtype === 'float32' ? 4 : 2) * workload.ctx * workload.batch;
  const devices = accelerators.map((d) => {
    const modules = units.filter((u) => where(u) === d.id);
    const weights = modules.reduce((sum, m) => sum + unitWeights(s, m, workload.dtype), 0);
    const layers = modules.filter((m) => blockOf.has(m)).length;
    const roles = { embed: modules.includes(u.embed), block: layers > 0, head: modules.includes(u.head) };
    const workspace = measured[rolesKey(roles)] ?? 0;
    return { ...base.devices[0]!, id: d.id, kind: d.kind, cap: d.cap, weights, kv: layers * kvLayer, workspace, overhead: 0, used: weights + layers * kvLayer + workspace, modules, ranges: [] as string[], tiedDuplicates: [] as string[] };
  });
  return { ...base, strategy: 'manual split', devices };
}

/** Bytes a unit's tensors take as the engine loads them: vectors as float32, matrices as stored or --dtype. */
function unitWeights(s: Skeleton, unit: string, dtype: string | undefined): number {
  const aliases = new Set(s.tied.flatMap((g) => g.slice(1)));
  return s.tensors
    .filter((t) => (t.name.startsWith(`${unit}.`) || t.name === unit) && !aliases.has(t.name) && !(t.kind === 'buffer' && t.persistent === false))
    .reduce((sum, t) => sum + tensorBytes(t.shape, t.shape.length === 1 ? 'float32' : (dtype ?? t.dtype)), 0);
}

/** The model's hyper-parameters, from config.json, or from GGUF metadata (with llama.cpp's rope layout). */
function hyperFor(model: string, skeleton: Skeleton): { arch: EngineArchitecture; h: EngineHyper; modelDir: string } {
  const arch = engineArchitecture(skeleton.family, model);
  if (skeleton.source.kind === 'gguf') {
    const file = skeleton.source.files[0]!;
    const facts = readGgufFacts(file);
    if (!facts) throw new InputError(model, 'the engine runs GGUF files of the Llama family (llama, mistral, qwen2, qwen3)', 'UNSUPPORTED_ARCHITECTURE');
    const h = arch.hyper(facts.config, skeleton.family);
    // llama.cpp's converter permuted q/k rows for its NORMAL rope mode.
    if (facts.permutedQK) (h as EngineHyper & { ropeMode?: number }).ropeMode = ROPE_MODE.NORMAL;
    if (facts.ropeFreqs) {
      const [start, end] = facts.ropeFreqs.range;
      const bytes = Buffer.alloc(end - start);
      const fd = openSync(file, 'r');
      try {
        readSync(fd, bytes, 0, bytes.length, start);
      } finally {
        closeSync(fd);
      }
      h.freqFactors = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
    }
    return { arch, h, modelDir: dirname(file) };
  }
  const configPath = skeleton.source.files.find((f) => f.endsWith('config.json'));
  if (!configPath) throw new InputError(model, 'no config.json beside the weights');
  const modelDir = dirname(skeleton.source.files.find((f) => f.endsWith('.safetensors')) ?? configPath);
  return { arch, h: arch.hyper(readConfigFile(configPath), skeleton.family), modelDir };
}

/** `cpu` (one host device), `virtual:N`, or `gpu` / `gpu:N` (the GPUs ggml registered). */
function parseDevices(spec: string | undefined): { ids: string[]; kind: 'virtual' | 'gpu' } {
  const text = (spec ?? 'cpu').trim();
  if (text === 'cpu') return { ids: ['0'], kind: 'virtual' };
  const gpu = /^gpu(?::(\d+))?$/.exec(text);
  if (gpu) {
    const available = gpuDeviceCount();
    const n = gpu[1] === undefined ? available : Number(gpu[1]);
    if (available === 0) throw new InputError('--devices', 'no GPU backend is available (install @node-llama-cpp/linux-x64-cuda or -vulkan at the pinned version, with its system libraries)');
    if (n < 1 || n > available) throw new InputError('--devices', `asked for ${n} GPU(s) but ggml sees ${available}`);
    return { ids: Array.from({ length: n }, (_, i) => String(i)), kind: 'gpu' };
  }
  const m = /^virtual:(\d+)$/.exec(text);
  if (!m || Number(m[1]) < 1 || Number(m[1]) > 64) throw new InputError('--devices', `expected cpu, virtual:N (1–64), gpu or gpu:N, got ${JSON.stringify(spec)}`);
  return { ids: Array.from({ length: Number(m[1]) }, (_, i) => String(i)), kind: 'virtual' };
}

/**
 * Loads a safetensors checkpoint as a plan places it. Every device's weights, KV cache and worst-case
 * compute buffer are checked against its cap before a byte of weights is read; an over-cap device
 * fails with OutOfDeviceMemory and nothing stays allocated.
 */
export async function loadModel(model: string, opts: LoadOptions = {}): Promise<LoadedModel> {
  const g = loadGgml();
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
  const { arch, h, modelDir } = hyperFor(model, skeleton);
  const units = arch.units(h);
  const archTensors = arch.tensors(h);
  // A tied head reads the embedding matrix.
  const headAlias = h.tied ? new Map(archTensors.head.map((t, i) => [t.name, archTensors.embed[i]?.name ?? t.name])) : new Map<string, string>();
  const ctx = opts.ctx ?? Math.min(h.maxPositions, 4096);
  const ubatch = Math.min(opts.ubatch ?? 512, ctx);
  if (!Number.isSafeInteger(ctx) || ctx < 1) throw new InputError('--ctx', `expected a positive integer, got ${ctx}`);
  // A position past a learned position table would be an out-of-range row lookup, which aborts ggml.
  if (h.positionLimit !== undefined && ctx > h.positionLimit) throw new InputError('--ctx', `${ctx} tokens exceed the ${h.positionLimit} positions this model has embeddings for`);
  // As transformers does, the cache follows the model: float32 models keep a float32 cache.
  const kvDtype = opts.kvDtype ?? (kvDefaultDtype(skeleton) === 'float32' ? 'float32' : 'float16');
  const { ids, kind } = parseDevices(opts.devices);

  // Caps per device: --max-memory names them; unnamed devices are uncapped.
  const caps = new Map<string, number>();
  if (opts.maxMemory !== undefined) {
    const resolved = resolveBudgets(parseMaxMemory(opts.maxMemory), { gpus: ids.filter((i) => i !== 'cpu').map((i) => ({ index: Number(i), totalBytes: Number.MAX_SAFE_INTEGER, freeBytes: Number.MAX_SAFE_INTEGER })) });
    for (const [k, v] of Object.entries(resolved)) {
      if (k !== 'cpu' && k !== 'disk' && !ids.includes(k)) throw new InputError('--max-memory', `names device ${k}, which --devices does not open`);
      caps.set(k, v);
    }
  }
  // An uncapped GPU may use what it has free; an uncapped virtual device is limited only by RAM.
  if (kind === 'gpu') for (const id of ids) if (!caps.has(id)) caps.set(id, gpuFreeBytes(Number(id)));
  const specs: PlanDeviceSpec[] = ids.map((id) => ({ id, kind, cap: caps.get(id) ?? Number.MAX_SAFE_INTEGER, overhead: 0 }));
  if (caps.has('cpu')) specs.push({ id: 'cpu', kind: 'cpu', cap: caps.get('cpu')!, overhead: 0 });
  if (caps.has('disk')) {
    if (!caps.has('cpu')) throw new InputError('--max-memory', 'disk offload needs a cpu budget too: disk-offloaded blocks run on the CPU with their KV cache in RAM');
    specs.push({ id: 'disk', kind: 'disk', cap: caps.get('disk')!, overhead: 0 });
  }
  const workload = { ctx, batch: 1, ubatch, kvDtype, ...(opts.dtype ? { dtype: opts.dtype } : {}) };
  const tensorOf = new Map(skeleton.tensors.map((t) => [t.name, t]));
  const typeOf = (name: string, ne: number[]): GgmlType => {
    const source = tensorOf.get(headAlias.get(name) ?? name);
    if (!source) throw new InputError(model, `the checkpoint has no ${name}`);
    return ne.length === 1 ? GGML_TYPE.F32 : opts.dtype ? ggmlTypeFor(opts.dtype) : ggmlTypeFor(source.dtype);
  };
  const kvType = kvDtype === 'float32' ? GGML_TYPE.F32 : GGML_TYPE.F16;
  const measuredWorkspace = measureWorkspace(g, arch, h, typeOf, ctx, ubatch, kvType);
  // Uncapped devices share the work evenly; capped ones are balanced by how full they get.
  if (caps.size === 0) for (const s of specs) s.weight = 1;
  const plan = opts.layerSplit
    ? manualPlan(skeleton, arch, h, specs, opts.layerSplit, workload, measuredWorkspace)
    : planFit({ skeleton, devices: specs, workload, target: 'vramfit', measuredWorkspace });

  // ggml's CPU threads spin at barriers: more threads than free cores (other work, several backends)
  // slows a step by orders of magnitude, so the default leaves half the cores alone.
  const threads = opts.threads ?? Math.max(1, Math.min(8, Math.floor(availableParallelism() / 2)));
  const hosts = specs.filter((s) => s.kind !== 'disk');
  const capOf = new Map(hosts.map((s) => [s.id, s.cap]));
  const devices =
    kind === 'gpu'
      ? [...openGpuDevices(ids, capOf), ...openVirtualDevices(hosts.filter((s) => s.kind === 'cpu').map((s) => s.id), capOf, threads)]
      : openVirtualDevices(hosts.map((s) => s.id), capOf, threads);
  const onDisk = new Set(plan.devices.find((d) => d.id === 'disk')?.modules ?? []);
  const byId = new Map(devices.map((d) => [d.id, d]));
  const weights = new Map<string, DeviceWeights>();
  const kvAllocations = new Map<string, Allocation>();
  const kvCtx: ReturnType<Ggml['init']>[] = [];
  const kv = new Map<number, { k: Tensor; v: Tensor }>();
  const gallocs = new Map<string, Gallocr>();
  const computeBytes = new Map<string, number>();
  try {
    const stages = stagesFromPlan(plan, arch, h, byId);
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
        if (transform || ne.length < 2 || stack.length !== ne.at(-1)) throw new VramfitError('PIPELINE', `${name}: ${stack.length} stacked tensors cannot make [${ne.join(', ')}]${transform ? ' with a transform' : ''}`, 1);
        const parts = stack.map((part) => stored(part, ne.slice(0, -1)));
        if (parts.some((p) => p.dtype !== parts[0]!.dtype)) throw new InputError(model, `the tensors stacked into ${name} do not share one dtype`);
        return { name, ne, type: typeOf(stack[0]!, ne), source: parts[0]!, parts };
      }
      const source = stored(name, ne, transform);
      const spec: WeightSpec = { name, ne, type: typeOf(name, ne), source };
      if (transform) spec.transform = transform;
      return spec;
    };
    const perDevice = new Map<string, WeightSpec[]>();
    const add = (d: EngineDevice, s: WeightSpec): void => {
      // A disk-offloaded tensor is used in place when the kernels can read it as stored.
      const onDiskUnit = [...onDisk].some((unit) => s.name.startsWith(`${unit}.`));
      if (onDiskUnit && s.parts) {
        throw new InputError('--max-memory', `the plan offloads ${s.name} to disk, but stacked expert tensors are assembled at load time and cannot be used in place from the file; give the devices or cpu room for the MoE blocks`);
      }
      if (onDiskUnit && !s.transform && s.type === ggmlTypeFor(s.source.dtype)) s.mapped = true;
      perDevice.set(d.id, [...(perDevice.get(d.id) ?? []), s]);
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
    const kvDim = h.kvDim;

    // 1. Weights and KV cache: sized in TypeScript, checked against every cap before allocating.
    const kvBytes = (d: EngineDevice): number => stages.filter((s) => s.device === d).reduce((sum, s) => sum + s.layers.length, 0) * 2 * g.rowSize(kvType, kvDim) * ctx;
    for (const d of devices) {
      const w = describeWeights(g, d, perDevice.get(d.id) ?? []);
      weights.set(d.id, w);
    }
    // Nothing is allocated until every device is known to hold its weights, KV cache and the
    // workspace the plan measured; the allocations below then re-check each request.
    for (const d of devices) {
      const w = weights.get(d.id)!;
      const planned = plan.devices.find((x) => x.id === d.id)?.workspace ?? 0;
      d.allocator.check(w.bytes, 'weights');
      d.allocator.check(pad(kvBytes(d), d.alignment), 'KV cache', w.bytes);
      d.allocator.check(planned, 'compute workspace', w.bytes + pad(kvBytes(d), d.alignment));
    }
    for (const d of devices) {
      placeWeights(g, d, weights.get(d.id)!, modelDir);
      const layers = stages.filter((s) => s.device === d).flatMap((s) => s.layers);
      if (layers.length === 0) continue;
      const c = g.init(g.tensorOverhead() * (layers.length * 2 + 4), true);
      kvCtx.push(c);
      const per = pad(g.rowSize(kvType, kvDim) * ctx, d.alignment);
      const alloc = d.allocator.allocate(per * 2 * layers.length, 'kv');
      kvAllocations.set(d.id, alloc);
      const base = g.raw.ggml_backend_buffer_get_base(alloc.buffer) as bigint;
      layers.forEach((i, j) => {
        const k = g.newTensor(c, kvType, [kvDim, ctx]);
        const v = g.newTensor(c, kvType, [kvDim, ctx]);
        g.raw.ggml_backend_tensor_alloc(alloc.buffer, k, base + BigInt(per * 2 * j));
        g.raw.ggml_backend_tensor_alloc(alloc.buffer, v, base + BigInt(per * (2 * j + 1)));
        kv.set(i, { k, v });
      });
      g.raw.ggml_backend_buffer_clear(alloc.buffer, 0);
    }

    // 2. Compute buffers: measured on the worst-case graph (a full micro-batch at the full context)
    //    without allocating, checked against the cap, then reserved.
    for (const d of devices) {
      const mine = stages.filter((s) => s.device === d);
      if (mine.length === 0) continue;
      let most = 0;
      for (const s of mine) {
        const b = buildStageGraph(g, arch, h, s, deviceLookups(s, weights, kv), ubatch, ctx);
        const probe = g.raw.ggml_gallocr_new(d.buft) as Gallocr;
        const sizes = [0];
        g.raw.ggml_gallocr_reserve_n_size(probe, b.graph, null, null, sizes);
        g.raw.ggml_gallocr_free(probe);
        b.gb.free();
        most = Math.max(most, Number(sizes[0]));
      }
      d.allocator.reserveExternal(most, 'compute');
      computeBytes.set(d.id, most);
      const galloc = g.raw.ggml_gallocr_new(d.buft) as Gallocr;
      liveResources.graphAllocators++;
      gallocs.set(d.id, galloc);
      for (const s of mine) {
        const b = buildStageGraph(g, arch, h, s, deviceLookups(s, weights, kv), ubatch, ctx);
        const ok = g.raw.ggml_gallocr_reserve(galloc, b.graph) as boolean;
        b.gb.free();
        if (!ok) throw new VramfitError('GGML', `could not reserve the compute buffer on device ${d.id}`, 1);
      }
    }

    // 3. Only now read the weights, shard by shard, into their devices.
    const total = [...weights.values()].reduce((s, w) => s + w.specs.reduce((x, sp) => x + storedBytes(sp), 0), 0);
    let loaded = 0;
    for (const d of devices) {
      loadWeightData(g, modelDir, weights.get(d.id)!, (n) => {
        loaded += n;
        opts.onProgress?.(loaded, total);
      });
    }
    return new LoadedModel(g, skeleton, arch, h, plan, devices, stages, weights, kv, kvAllocations, kvCtx, gallocs, computeBytes, ctx, ubatch);
  } catch (e) {
    for (const galloc of gallocs.values()) {
      g.raw.ggml_gallocr_free(galloc);
      liveResources.graphAllocators--;
    }
    for (const d of devices) {
      const w = weights.get(d.id);
      if (w) freeWeights(g, d, w);
      const a = kvAllocations.get(d.id);
      if (a) d.allocator.free(a);
      const c = computeBytes.get(d.id);
      if (c) d.allocator.releaseExternal(c, 'compute');
    }
    for (const c of kvCtx) g.free(c);
    closeDevices(devices);
    throw e;
  }
}

const pad = (n: number, a: number): number => Math.ceil(n / a) * a;
