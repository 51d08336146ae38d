/**
 * A loaded model as a decode context: stages run in order, each on its device, with the hidden state
 * handed across and each layer's KV cache written in place. Loading is load.ts.
 */
import { tokenizerSourceOf } from './text/model-tokenizer.js';
import type { Skeleton } from '../reader/skeleton.js';
import type { Plan } from '../planner/plan.js';
import { InputError, VramfitError } from '../util/errors.js';
import { paddedKvLength } from './architectures/kv.js';
import type { EngineArchitecture, EngineHyper, LayerCache } from './architectures/types.js';
import type { EngineDevice } from './device.js';
import { releaseAll, type DeviceState } from './device-state.js';
import { GGML_TYPE, type Ggml, type Tensor } from './ggml/binding.js';
import type { LongLivedTensors } from './ggml/graph.js';
import { buildStageGraph, deviceLookups, liveInputs, type BuiltStage, type Stage } from './stages.js';
import { convert, type DeviceWeights } from './weights.js';

/** The loader's name for each float ggml type a weight can hold. */
const FLOAT_NAMES = new Map<number, string>([
  [GGML_TYPE.F32, 'float32'],
  [GGML_TYPE.F16, 'float16'],
  [GGML_TYPE.BF16, 'bfloat16'],
]);

/**
 * Built graphs kept per stage, most recently used last: decode alternates between few shapes (one
 * token at one padded KV length; a prompt's micro-batches), and each graph's metadata context is a
 * few MiB of host memory, so only these many stay.
 */
const GRAPHS_PER_STAGE = 4;

export interface DeviceReport {
  id: string;
  /** ggml's device name (CPU, Vulkan0, CUDA1) or 'disk'. */
  name: string;
  cap: number;
  /** What the plan predicted vramfit's own buffers on this device would hold at most. */
  predicted: number;
  /** What the plan left for the backend's own buffers (CUDA context, Vulkan scratch) on top. */
  overhead: number;
  /** The most the capped allocator ever had out on it. */
  measured: number;
  /**
   * The device's own figure (free memory before the backend started minus the least free seen),
   * everything the backend holds included; null where the backend does not report its use.
   */
  deviceMeasured: number | null;
  breakdown: Record<string, number>;
  /** Bytes of hidden state copied into this device from another. */
  bytesIn: number;
}

/** One sequence's tokens in a batched forward pass. */
export interface BatchEntry {
  /** The slot (0 … slots − 1) whose KV cache rows the tokens append to. */
  slot: number;
  tokens: readonly number[];
  /** Logits for every token ('all') or only the last ('last'). */
  logits: 'all' | 'last';
}

/**
 * A model loaded as planned: weights and each layer's KV cache on their devices, ready to run.
 *
 * The cache holds `slots` sequences of up to `ctx` tokens each in one unified cache per layer (slot s
 * owns rows s·ctx … s·ctx + ctx − 1), as llama.cpp's unified KV cache does: a batch mixes tokens of
 * several sequences in one forward pass, every weight read once for all of them, and the mask keeps
 * each token to its own sequence's rows.
 */
export class LoadedModel {
  private readonly past: Int32Array;
  private readonly bytesIn = new Map<string, number>();
  private disposed = false;
  /** Shapes of this model's weights and KV cache, read from ggml once for all the graphs of its steps. */
  private readonly longLived: LongLivedTensors = new Map();
  /**
   * Each stage's built graphs by shape key (tokens, padded KV length, output rows): a step of a shape
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

  readonly skeleton: Skeleton;
  readonly arch: EngineArchitecture;
  readonly hyper: EngineHyper;
  readonly plan: Plan;
  /** Tokens each sequence's KV cache holds at most, and tokens per forward pass. */
  readonly ctx: number;
  readonly ubatch: number;
  /** Sequences the KV cache holds at once. */
  readonly slots: number;
  private readonly states: DeviceState[];
  private readonly stages: Stage[];
  private readonly kv: Map<number, LayerCache>;

  /** Takes ownership of every device state: `dispose` frees them. */
  constructor(
    private readonly g: Ggml,
    parts: {
      skeleton: Skeleton;
      arch: EngineArchitecture;
      hyper: EngineHyper;
      plan: Plan;
      states: DeviceState[];
      stages: Stage[];
      kv: Map<number, LayerCache>;
      ctx: number;
      ubatch: number;
      slots?: number;
    },
  ) {
    ({
      skeleton: this.skeleton,
      arch: this.arch,
      hyper: this.hyper,
      plan: this.plan,
      states: this.states,
      stages: this.stages,
      kv: this.kv,
      ctx: this.ctx,
      ubatch: this.ubatch,
    } = parts);
    this.slots = parts.slots ?? 1;
    this.past = new Int32Array(this.slots);
    this.weights = new Map(this.states.flatMap((s) => (s.weights ? [[s.device.id, s.weights] as const] : [])));
  }

  private readonly weights: Map<string, DeviceWeights>;

  get devices(): EngineDevice[] {
    return this.states.map((s) => s.device);
  }

  /** The folder whose tokenizer files belong to this model: config.json's, else the first weight file's. */
  get modelDir(): string {
    return tokenizerSourceOf(this.skeleton.source)?.modelDir ?? '.';
  }

  /** The GGUF file the weights were read from (its metadata may hold the tokenizer); undefined for other formats. */
  get ggufFile(): string | undefined {
    return tokenizerSourceOf(this.skeleton.source)?.ggufFile;
  }

  /** Tokens in slot 0's KV cache (the single-sequence API's). */
  get position(): number {
    return this.past[0]!;
  }

  /** Tokens in a slot's KV cache. */
  positionOf(slot: number): number {
    this.checkSlot(slot);
    return this.past[slot]!;
  }

  /** Empties every slot and frees the cached graphs. */
  reset(): void {
    this.past.fill(0);
    this.dropGraphs();
  }

  /** Empties one slot: its rows are masked out until written again, so nothing needs clearing. */
  resetSlot(slot: number): void {
    this.checkSlot(slot);
    this.past[slot] = 0;
  }

  /** Graphs built and kept (each a ggml context of host memory): bounded, so a long-running server does not grow. */
  get cachedGraphs(): number {
    let n = 0;
    for (const byKey of this.graphs.values()) n += byKey.size;
    return n;
  }

  /** Frees every cached graph's context. */
  private dropGraphs(): void {
    for (const byKey of this.graphs.values()) for (const b of byKey.values()) b.gb.free();
    this.graphs.clear();
    this.placed.clear();
  }

  /** The stage's graph for this shape, from the cache or built (evicting the least recently used). */
  private stageGraph(stage: Stage, n: number, nKv: number, outputs: number): BuiltStage {
    let byKey = this.graphs.get(stage);
    if (!byKey) this.graphs.set(stage, (byKey = new Map()));
    const key = `${n}:${nKv}:${outputs}`;
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
    const built = buildStageGraph(this.g, this.arch, this.hyper, stage, deviceLookups(stage, this.weights, this.kv), n, nKv, outputs, this.longLived);
    byKey.set(key, built);
    return built;
  }

  /**
   * Runs `tokens` through the pipeline in micro-batches of at most `ubatch`, appending to slot 0's KV
   * cache. Returns one logits row per token when `allLogits`, else only the last token's.
   */
  forward(tokens: readonly number[], allLogits = false): Float32Array[] {
    this.ensureOpen();
    if (tokens.length === 0) return [];
    this.checkTokens(0, tokens);
    const rows: Float32Array[] = [];
    for (let start = 0; start < tokens.length; start += this.ubatch) {
      const chunk = tokens.slice(start, start + this.ubatch);
      const last = start + this.ubatch >= tokens.length;
      // Without allLogits only each micro-batch's last token goes through the final norm and head.
      const [out] = this.forwardBatch([{ slot: 0, tokens: chunk, logits: allLogits ? 'all' : 'last' }]);
      if (allLogits || last) rows.push(...out!);
    }
    return rows;
  }

  /**
   * One forward pass over tokens of several sequences (at most `ubatch` in all, each slot at most
   * once), appending each entry's tokens to its slot's cache. Returns, per entry, its logits rows.
   */
  forwardBatch(entries: readonly BatchEntry[]): Float32Array[][] {
    this.ensureOpen();
    const n = entries.reduce((sum, e) => sum + e.tokens.length, 0);
    if (n === 0 || entries.some((e) => e.tokens.length === 0)) throw new VramfitError('PIPELINE', 'a batch entry without tokens', 1);
    if (n > this.ubatch) throw new VramfitError('PIPELINE', `${n} tokens in one forward pass exceed the micro-batch of ${this.ubatch}`, 1);
    const seen = new Set<number>();
    for (const e of entries) {
      if (seen.has(e.slot)) throw new VramfitError('PIPELINE', `slot ${e.slot} appears twice in one batch`, 1);
      seen.add(e.slot);
      this.checkTokens(e.slot, e.tokens);
    }
    // The batch's layout: token order, each token's slot and position, and the rows kept past the blocks.
    const ids = new Int32Array(n);
    const slotOf = new Int32Array(n);
    const pos = new Int32Array(n);
    const keep: number[] = [];
    let t = 0;
    let maxRow = 0;
    for (const e of entries) {
      for (let j = 0; j < e.tokens.length; j++, t++) {
        ids[t] = e.tokens[j]!;
        slotOf[t] = e.slot;
        pos[t] = this.past[e.slot]! + j;
        maxRow = Math.max(maxRow, e.slot * this.ctx + pos[t]!);
        if (e.logits === 'all' || j === e.tokens.length - 1) keep.push(t);
      }
    }
    // Rows this batch writes and attends over; a graph depends only on (n, nKv, outputs).
    const nKv = paddedKvLength(maxRow + 1, this.ctx * this.slots);
    const logits = this.step({ ids, slotOf, pos, keep, nKv });
    for (const e of entries) this.past[e.slot] = this.past[e.slot]! + e.tokens.length;
    const v = this.hyper.vocab;
    const out: Float32Array[][] = [];
    let r = 0;
    for (const e of entries) {
      const count = e.logits === 'all' ? e.tokens.length : 1;
      const rows: Float32Array[] = [];
      for (let i = 0; i < count; i++, r++) rows.push(logits.slice(r * v, (r + 1) * v));
      out.push(rows);
    }
    return out;
  }

  private checkSlot(slot: number): void {
    if (!Number.isSafeInteger(slot) || slot < 0 || slot >= this.slots)
      throw new VramfitError('PIPELINE', `slot ${slot} is not one of the ${this.slots} slots`, 1);
  }

  private checkTokens(slot: number, tokens: readonly number[]): void {
    this.checkSlot(slot);
    if (this.past[slot]! + tokens.length > this.ctx) {
      throw new InputError('--ctx', `${this.past[slot]! + tokens.length} tokens do not fit the ${this.ctx}-token context this model was loaded with`);
    }
    for (const id of tokens) {
      if (!Number.isSafeInteger(id) || id < 0 || id >= this.hyper.vocab)
        throw new InputError('--input-ids', `token id ${id} is outside the vocabulary (0..${this.hyper.vocab - 1})`);
    }
  }

  private step(b: StepLayout): Float32Array {
    const n = b.ids.length;
    const outputs = b.keep.length;
    let carried: Tensor | undefined;
    let result: Float32Array | undefined;
    for (const stage of this.stages) {
      const built = this.stageGraph(stage, n, b.nKv, outputs);
      const id = stage.device.id;
      if (this.placed.get(id) !== built) {
        const state = this.stateOf(stage.device);
        const galloc = state.galloc!;
        // Forget the previous placement first: if allocation fails, no graph's addresses are trusted.
        this.placed.delete(id);
        if (!this.g.raw.ggml_gallocr_alloc_graph(galloc, built.graph))
          throw new VramfitError('GGML', `could not allocate the compute graph on device ${id}`, 1);
        const size = this.g.raw.ggml_gallocr_get_buffer_size(galloc, 0) as number;
        if (size > state.computeBytes) {
          throw new VramfitError('COMPUTE_GREW', `device ${id}: the compute buffer grew past its reservation (${size} bytes); this is a bug`, 1);
        }
        // Inputs the graph does not read get no memory (writing to one would abort inside ggml);
        // which ones is a property of the graph, so it is read once.
        built.live ??= liveInputs(this.g, built);
        this.placed.set(id, built);
      }
      this.setInputs(built, b);
      if (carried && built.hidden) {
        this.g.raw.ggml_backend_tensor_copy(carried, built.hidden);
        this.bytesIn.set(id, (this.bytesIn.get(id) ?? 0) + this.g.nbytes(built.hidden));
      }
      const status = this.g.raw.ggml_backend_graph_compute(stage.device.backend, built.graph) as number;
      if (status !== 0) throw new VramfitError('GGML', `graph compute failed on device ${id} (status ${status})`, 1);
      stage.device.watch?.sample();
      if (stage.head) {
        const out = new Float32Array(this.hyper.vocab * outputs);
        this.g.raw.ggml_backend_tensor_get(built.output, out, 0, out.byteLength);
        if (!allFinite(out)) throw this.nonFinite(stage, 'logits');
        result = out;
      } else if (!this.lastRowFinite(built.output)) {
        throw this.nonFinite(stage, 'hidden state');
      }
      carried = built.output;
    }
    if (!result) throw new VramfitError('PIPELINE', 'no stage produced logits', 1);
    return result;
  }

  /**
   * A NaN or Inf anywhere reaches the last token's row (attention mixes every row into it), so that
   * row of each stage's output is the cheap check: one hidden vector read back per stage and step.
   */
  private lastRowFinite(output: Tensor): boolean {
    const bytes = this.g.nbytes(output);
    const row = new Float32Array(Math.min(this.hyper.hidden, bytes / 4));
    this.g.raw.ggml_backend_tensor_get(output, row, bytes - row.byteLength, row.byteLength);
    return allFinite(row);
  }

  /** Names the stage whose output went non-finite and, where its weights hold NaN or Inf, the first such tensor. */
  private nonFinite(stage: Stage, what: string): InputError {
    const t = this.arch.tensors(this.hyper);
    const names = [
      ...(stage.embed ? t.embed : []),
      ...stage.layers.flatMap((i) => t.layer(i).map((x) => ({ ...x, layer: i }))),
      ...(stage.head || stage.norm ? [...t.norm, ...t.head] : []),
    ];
    const where = `${stage.layers.length ? `layer${stage.layers.length > 1 ? 's' : ''} ${rangeText(stage.layers)}` : stage.head ? 'the head' : 'the embedding'} on device ${stage.device.id}`;
    for (const spec of names) {
      const tensor = this.weights.get(stage.device.id)?.tensors.get(spec.name);
      if (!tensor) continue;
      const bad = firstNonFinite(this.g, tensor);
      if (bad !== undefined) {
        const layer = 'layer' in spec ? ` (layer ${spec.layer as number})` : '';
        return new InputError(this.skeleton.source.path, `non-finite ${what} from ${where}: weight ${spec.name}${layer} holds ${bad}`, 'NON_FINITE');
      }
    }
    return new InputError(this.skeleton.source.path, `non-finite ${what} from ${where}, whose weights are finite (activations overflowed?)`, 'NON_FINITE');
  }

  private setInputs(b: BuiltStage, layout: StepLayout): void {
    const g = this.g;
    const live = b.live!;
    const n = layout.ids.length;
    if (live.tokens) g.raw.ggml_backend_tensor_set(b.tokens!, layout.ids, 0, layout.ids.byteLength);
    if (live.positions) g.raw.ggml_backend_tensor_set(b.positions!, layout.pos, 0, layout.pos.byteLength);
    const rowOf = (t: number): number => layout.slotOf[t]! * this.ctx + layout.pos[t]!;
    if (live.kvRows) {
      // Each token's K and V go to its own slot's row for its position.
      const rows = Int32Array.from(layout.pos, (_, t) => rowOf(t));
      g.raw.ggml_backend_tensor_set(b.kvRows!, rows, 0, rows.byteLength);
    }
    if (live.outRows && b.outRows) {
      const keep = Int32Array.from(layout.keep);
      g.raw.ggml_backend_tensor_set(b.outRows, keep, 0, keep.byteLength);
    }
    if (live.mask) {
      const nKv = b.nKv;
      // -inf outside each token's own slot and past its own position: later tokens of its sequence,
      // other sequences, and the padding rows.
      // Rows past the batch's n are the mask's padding (stages.ts): -inf, read by no token.
      const mask = new Float32Array(nKv * this.g.ne(b.mask!)[1]).fill(-Infinity);
      for (let t = 0; t < n; t++) {
        const first = layout.slotOf[t]! * this.ctx;
        if (rowOf(t) >= nKv) throw new VramfitError('PIPELINE', `cache row ${rowOf(t)} is past the graph's KV length ${nKv}`, 1);
        const row = mask.subarray(t * nKv + first, t * nKv + rowOf(t) + 1);
        // ALiBi models read the key–query offset from the mask (llama.cpp: -|pos_k - pos_q|).
        if (this.hyper.alibi) for (let j = 0; j < row.length; j++) row[j] = j - layout.pos[t]!;
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

  private stateOf(d: EngineDevice): DeviceState {
    return this.states.find((s) => s.device === d)!;
  }

  report(): DeviceReport[] {
    const out: DeviceReport[] = this.devices.map((d) => {
      const p = this.plan.devices.find((x) => x.id === d.id);
      return {
        id: d.id,
        name: d.name,
        cap: d.allocator.cap,
        predicted: p ? p.weights + p.kv + p.workspace : 0,
        overhead: p?.overhead ?? 0,
        measured: d.allocator.peak,
        deviceMeasured: d.watch?.peak ?? null,
        breakdown: d.allocator.breakdown(),
        bytesIn: this.bytesIn.get(d.id) ?? 0,
      };
    });
    const disk = this.plan.devices.find((x) => x.id === 'disk');
    if (disk) {
      const mapped = [...this.weights.values()].reduce((sum, w) => sum + w.mappedBytes, 0);
      out.push({
        id: 'disk',
        name: 'disk',
        cap: disk.cap,
        predicted: disk.weights,
        overhead: 0,
        measured: mapped,
        deviceMeasured: null,
        breakdown: { mapped },
        bytesIn: 0,
      });
    }
    return out;
  }

  private ensureOpen(): void {
    if (this.disposed) throw new VramfitError('DISPOSED', 'this model was disposed', 1);
  }

  /** Frees every buffer on every device, then the devices. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.dropGraphs();
    releaseAll(this.g, this.states);
  }
}

/** Where each token of a forward pass goes: its id, slot and position, the rows kept past the blocks, and the padded KV length. */
interface StepLayout {
  ids: Int32Array;
  slotOf: Int32Array;
  pos: Int32Array;
  keep: number[];
  nKv: number;
}

function allFinite(values: Float32Array): boolean {
  for (let i = 0; i < values.length; i++) if (!Number.isFinite(values[i]!)) return false;
  return true;
}

/** "3" or "2–5" for a run of layer indices. */
function rangeText(layers: readonly number[]): string {
  return layers.length === 1 ? String(layers[0]) : `${layers[0]}–${layers[layers.length - 1]}`;
}

/** 'NaN' or 'Inf' when a float weight (F32, F16, BF16) holds one; undefined otherwise or for block formats. */
function firstNonFinite(g: Ggml, t: Tensor): string | undefined {
  const stored = FLOAT_NAMES.get(g.type(t));
  if (stored === undefined) return undefined;
  const bytes = g.nbytes(t);
  const raw = new Uint8Array(bytes);
  g.raw.ggml_backend_tensor_get(t, raw, 0, bytes);
  const elems = bytes / (stored === 'float32' ? 4 : 2);
  const values = new Float32Array(elems);
  convert(g, raw, stored, GGML_TYPE.F32, elems, values);
  for (let i = 0; i < values.length; i++) if (!Number.isFinite(values[i]!)) return Number.isNaN(values[i]!) ? 'NaN' : 'Inf';
  return undefined;
}
