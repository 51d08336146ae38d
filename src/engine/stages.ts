/**
 * Pipeline stages: runs of consecutive parts of the forward pass (embedding, blocks, final norm, head)
 * on one device, and the ggml graph of one stage for a batch shape. The hidden state is handed from
 * stage to stage; each block's KV cache lives on its own stage's device.
 */
import type { Plan } from '../planner/plan.js';
import { VramfitError } from '../util/errors.js';
import { FLASH_ATTENTION } from './architectures/kv.js';
import type { EngineArchitecture, EngineHyper, StepInputs } from './architectures/types.js';
import type { EngineDevice } from './device.js';
import { GGML_TYPE, type Ggml, type Graph, type Tensor } from './ggml/binding.js';
import { GraphBuilder, type LongLivedTensors } from './ggml/graph.js';
import type { DeviceWeights } from './weights.js';

/** One pipeline stage: consecutive parts of the forward pass computed on one device. */
export interface Stage {
  device: EngineDevice;
  /** The device is a GPU (see StagePlan). */
  gpu: boolean;
  embed: boolean;
  layers: number[];
  norm: boolean;
  head: boolean;
}

export const STAGE_NODES = 8192;

/** Rows the KQ mask is padded to a multiple of. */
export const KQ_MASK_PAD = 64;

const padTo = (x: number, m: number): number => Math.ceil(x / m) * m;

export interface BuiltStage {
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
  /** I32 [m]: the rows of the batch that go on past the last block (absent when every row does). */
  outRows?: Tensor;
  /** Rows past the last block: m of the batch's n. */
  outputs: number;
  /** Which inputs got memory, once the graph has been allocated. */
  live?: Partial<Record<InputName, boolean>>;
}

export type InputName = 'tokens' | 'positions' | 'kvRows' | 'mask' | 'freqFactors' | 'outRows';

/** The inputs of an allocated graph that have memory, narrowed so setInputs can write them. */
export function liveInputs(g: Ggml, b: BuiltStage): Partial<Record<InputName, boolean>> {
  const live = (t: Tensor | undefined): boolean => t !== undefined && g.isAllocated(t);
  return {
    tokens: live(b.tokens),
    positions: live(b.positions),
    kvRows: live(b.kvRows),
    mask: live(b.mask),
    freqFactors: live(b.freqFactors),
    outRows: live(b.outRows),
  };
}

/**
 * What a stage computes; `gpu`: it runs on a GPU backend, whose matrix kernels want contiguous operands
 * (ggml-vulkan copies a strided operand to F16 first, which an F32 cache must not lose).
 */
export type StagePlan = Pick<Stage, 'embed' | 'layers' | 'norm' | 'head'> & { gpu?: boolean };

export function deviceLookups(stage: Stage, weights: Map<string, DeviceWeights>, kv: Map<number, { k: Tensor; v: Tensor }>): Lookups {
  return {
    weight: (name) => {
      const t = weights.get(stage.device.id)?.tensors.get(name);
      if (!t) throw new VramfitError('PIPELINE', `${name} is not on device ${stage.device.id}`, 1);
      return t;
    },
    cache: (i) => kv.get(i)!,
  };
}

export interface Lookups {
  weight: (name: string) => Tensor;
  cache: (layer: number) => { k: Tensor; v: Tensor };
}

/**
 * `outputs` (m ≤ n): how many of the batch's rows are needed past the blocks. Prefill wants only its
 * last token's logits, and a batch of several sequences only each one's last row, so the stage holding
 * the last block picks those m rows (an input, `outRows`) and the final norm and head (a sizeable share
 * of a prefill's work: vocab × hidden per token) run on them alone, as llama.cpp's output ids do.
 */
export function buildStageGraph(
  g: Ggml,
  arch: EngineArchitecture,
  h: EngineHyper,
  stage: StagePlan,
  look: Lookups,
  n: number,
  nKv: number,
  outputs = n,
  longLived?: LongLivedTensors,
): BuiltStage {
  if (!Number.isSafeInteger(n) || !Number.isSafeInteger(nKv) || n < 1 || nKv < n)
    throw new VramfitError('PIPELINE', `a graph of ${n} tokens over ${nKv} KV rows`, 1);
  if (!Number.isSafeInteger(outputs) || outputs < 1 || outputs > n) throw new VramfitError('PIPELINE', `${outputs} output rows of a ${n}-token batch`, 1);
  const gb = new GraphBuilder(g, STAGE_NODES, longLived);
  try {
    return buildInto(gb, arch, h, stage, look, n, nKv, outputs);
  } catch (e) {
    gb.free();
    throw e;
  }
}

function buildInto(
  gb: GraphBuilder,
  arch: EngineArchitecture,
  h: EngineHyper,
  stage: StagePlan,
  look: Lookups,
  n: number,
  nKv: number,
  outputs: number,
): BuiltStage {
  const w = (name: string): Tensor => gb.known(look.weight(name));
  const built: Partial<BuiltStage> = { gb, nKv, outputs };
  // Positions feed rope in the blocks and learned position embeddings in the embedding.
  const positions = stage.embed || stage.layers.length > 0 ? gb.input('positions', GGML_TYPE.I32, [n]) : undefined;
  if (positions) built.positions = positions;
  let x: Tensor;
  if (stage.embed) {
    built.tokens = gb.input('tokens', GGML_TYPE.I32, [n]);
    x = arch.embed(gb, h, w, built.tokens, positions!);
  } else {
    // Stages without blocks come after the last one: they receive the selected rows only.
    built.hidden = gb.input('hidden_in', GGML_TYPE.F32, [h.hidden, stage.layers.length === 0 ? outputs : n]);
    x = built.hidden;
  }
  const writes: Tensor[] = [];
  if (stage.layers.length > 0) {
    // F16 and block-quantized caches attend with flash attention, which takes an F16 mask; an ALiBi mask holds key–query
    // offsets, which F16 holds exactly up to 2048.
    const k0 = gb.known(look.cache(stage.layers[0]!).k);
    const maskType = FLASH_ATTENTION && gb.type(k0) !== GGML_TYPE.F32 && (!h.alibi || nKv <= 2048) ? GGML_TYPE.F16 : GGML_TYPE.F32;
    // Rows padded as llama.cpp pads them (GGML_KQ_MASK_PAD): ggml-vulkan's flash-attention shader reads
    // the mask in blocks of rows, and an unpadded mask let it read past the tensor (a crash on lavapipe
    // with batches of a few tokens). The padding rows are -inf and belong to no token.
    built.mask = gb.input('kq_mask', maskType, [nKv, padTo(n, KQ_MASK_PAD)]);
    built.maskF16 = maskType === GGML_TYPE.F16;
    built.kvRows = gb.input('kv_rows', GGML_TYPE.I32, [n]);
    if (h.freqFactors) built.freqFactors = gb.input('rope_freqs', GGML_TYPE.F32, [h.freqFactors.length]);
    const step: StepInputs = {
      positions: positions!,
      kvRows: built.kvRows,
      nKv,
      mask: built.mask,
      freqFactors: built.freqFactors ?? null,
      writes,
      contiguousOperands: stage.gpu === true,
    };
    for (const i of stage.layers) {
      const cache = look.cache(i);
      x = arch.layer(gb, h, w, i, x, { k: gb.known(cache.k), v: gb.known(cache.v) }, step);
    }
    if (outputs < n && stage.layers.includes(h.layers - 1)) {
      built.outRows = gb.input('out_rows', GGML_TYPE.I32, [outputs]);
      x = gb.getRows(x, built.outRows);
    }
  }
  if (stage.norm) x = arch.finalNorm(gb, h, w, x);
  if (stage.head) x = arch.head(gb, h, w, x);
  built.output = gb.output(x, stage.head ? 'logits' : 'hidden_out');
  built.graph = gb.build(writes);
  return built as BuiltStage;
}

/** Which device holds each part of the forward pass, in forward order, from the plan. */
export function stagesFromPlan(plan: Plan, arch: EngineArchitecture, h: EngineHyper, devices: Map<string, EngineDevice>): Stage[] {
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
      s = { device: p.device, gpu: p.device.kind === 'gpu', embed: false, layers: [], norm: false, head: false };
      stages.push(s);
    }
    if (p.kind === 'embed') s.embed = true;
    else if (p.kind === 'layer') s.layers.push(p.layer!);
    else if (p.kind === 'norm') s.norm = true;
    else s.head = true;
  }
  return stages;
}
