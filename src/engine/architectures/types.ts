import type { ConfigReader } from '../../reader/config.js';
import type { Tensor } from '../ggml/binding.js';
import type { GraphBuilder } from '../ggml/graph.js';

/** A checkpoint tensor an architecture uses, with the ggml shape it expects (innermost first). */
export interface ArchTensor {
  name: string;
  ne: number[];
  /** Applied once while loading (GPT-2's transposed Conv1D weights, Baichuan2's NormHead). */
  transform?: 'transpose' | 'normalize-rows';
  /**
   * Checkpoint tensors stacked, in order, along the outermost ggml dimension into one tensor (the
   * experts of an MoE layer become [in, out, n_expert] for ggml_mul_mat_id); each has the shape `ne`
   * without its last dimension, and `name` is then the engine's own name for the stack. Never
   * memory-mapped in place (the parts are not adjacent on disk) and never transformed.
   */
  stack?: string[];
  /** The graph reads it through a view or reshape (ChatGLM's row ranges): it keeps ggml's plain layout (no CPU repack). */
  viewed?: true;
}

/** What the engine itself needs to know of any architecture's hyper-parameters. */
export interface EngineHyper {
  family: string;
  layers: number;
  hidden: number;
  vocab: number;
  maxPositions: number;
  /** The head reuses the embedding matrix (and then sits on the embedding's device). */
  tied: boolean;
  /**
   * Learned position embeddings (GPT-2's wpe) have a row per position up to this many and none past
   * it, so a context may not be longer; rotary models extrapolate and leave it unset.
   */
  positionLimit?: number;
  /** Elements of K (and of V) cached per token per layer. */
  kvDim: number;
  /** Per-dimension rope frequency divisors fed to the graph as an input, when the model has them. */
  freqFactors?: Float32Array;
  /**
   * ALiBi model: the KQ mask holds −|pos_k − pos_q| where a token may attend (llama.cpp's
   * hparams.use_alibi), for softMax's maxBias to scale by each head's slope; -inf stays -inf.
   */
  alibi?: boolean;
}

/**
 * One layer's KV cache: [kvDim, rows] each. A step's graph never depends on how many tokens it holds
 * (that is in the step's inputs), so one graph serves many steps.
 */
export interface LayerCache {
  k: Tensor;
  v: Tensor;
}

export interface StepInputs {
  /** I32 [n]: absolute positions of the batch's tokens. */
  positions: Tensor;
  /** I32 [n]: the cache rows this batch's K and V go to (ggml_set_rows). */
  kvRows: Tensor;
  /** Cache rows attended over: the tokens cached so far, this batch's included, padded (see kv.ts). */
  nKv: number;
  /** F32 [nKv, n]: 0 (ALiBi: −|pos_k − pos_q|) where a token may attend, -inf where not (causal, padding). */
  mask: Tensor;
  freqFactors: Tensor | null;
  /** Roots the graph must compute besides its output: the KV cache writes. */
  writes: Tensor[];
  /** Attention's products get contiguous operands (GPU stages: see StagePlan.gpu). */
  contiguousOperands?: boolean;
}

export type WeightLookup = (name: string) => Tensor;

/**
 * One architecture family, as the engine runs it: its hyper-parameters, which checkpoint tensors each
 * part of the forward pass needs, the plan units those parts are, and the graph of each part.
 * Methods (not function properties) so a family's own hyper type stays assignable.
 */
export interface EngineArchitecture<H extends EngineHyper = EngineHyper> {
  families: readonly string[];
  hyper(cfg: ConfigReader, family: string): H;
  /** The plan's module names for the embedding, block i, the final norm and the head. */
  units(h: H): { embed: string; block(i: number): string; norm: string; head: string };
  tensors(h: H): { embed: ArchTensor[]; norm: ArchTensor[]; head: ArchTensor[]; layer(i: number): ArchTensor[] };
  /** Token ids (and positions, for learned position embeddings) → hidden [hidden, n]. */
  embed(gb: GraphBuilder, h: H, w: WeightLookup, tokens: Tensor, positions: Tensor): Tensor;
  layer(gb: GraphBuilder, h: H, w: WeightLookup, i: number, x: Tensor, cache: LayerCache, step: StepInputs): Tensor;
  finalNorm(gb: GraphBuilder, h: H, w: WeightLookup, x: Tensor): Tensor;
  /** Logits [vocab, n]. */
  head(gb: GraphBuilder, h: H, w: WeightLookup, x: Tensor): Tensor;
}
