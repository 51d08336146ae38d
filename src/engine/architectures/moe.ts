import { KEYS, type ConfigReader } from '../../reader/config.js';
import { InputError } from '../../util/errors.js';
import { GGML_TYPE, type Tensor } from '../ggml/binding.js';
import type { GraphBuilder } from '../ggml/graph.js';
import { denseMlp, embed, EMBED, finalNorm, globalTensors, layerTensors, llamaHyper, lmHead, selfAttention, type LlamaHyper } from './llama.js';
import type { ArchTensor, EngineArchitecture, LayerCache, StepInputs, WeightLookup } from './types.js';

/**
 * Mixture-of-experts decoders as transformers computes them (modeling_mixtral.py,
 * modeling_qwen3_moe.py): Mixtral (Mistral's attention) and Qwen3-MoE (Qwen3's attention, q/k norms
 * before rope). A sparse layer's MLP, for each token's normed hidden state h:
 *
 *   logits = gate(h)                                  one per expert
 *   p      = softmax(logits), in float32
 *   the k = num_experts_per_tok experts of largest p  (torch.topk)
 *   w_j    = p of the j-th of them; Mixtral always, Qwen3-MoE only with norm_topk_prob: w_j /= Σ w
 *   out    = Σ_j w_j · down_e(silu(gate_e(h)) · up_e(h)),   e the j-th selected expert
 *
 * Qwen3-MoE keeps a dense MLP of intermediate_size in the layers listed in mlp_only_layers and in
 * those off the decoder_sparse_step beat ((i + 1) % step ≠ 0); its experts use moe_intermediate_size.
 *
 * Experts run sparsely, as llama.cpp runs them: the experts of a layer are stacked at load time into
 * three [in, out, n_expert] tensors (ArchTensor.stack) and ggml_mul_mat_id multiplies each token by
 * its k selected experts only. The experts are part of their decoder layer's plan unit, so they live
 * on that layer's device.
 *
 * Selection sorts the router logits (ggml_argsort, descending), not the probabilities: softmax is
 * monotonic, so the chosen experts are torch.topk's on the probabilities wherever those differ, and
 * float32 rounding of exp cannot turn two distinct logits into a tie. Exact ties are broken
 * differently: ggml's CPU argsort is std::sort, which is not stable and leaves equal values in an
 * unspecified order, and torch.topk documents no order for equal values either. Tied experts carry
 * the same weight, so only which expert's MLP is applied could differ; with float router weights
 * (random or trained) an exact tie between distinct experts practically never happens.
 */
export interface MoeHyper extends LlamaHyper {
  experts: number;
  expertsUsed: number;
  /** Intermediate size of each expert (Mixtral's intermediate_size, Qwen3-MoE's moe_intermediate_size). */
  expertFfn: number;
  /** Renormalise the selected experts' weights to sum 1. */
  normTopK: boolean;
  /** Per layer: a sparse MoE block (true) or a dense MLP (false). */
  sparse: boolean[];
  /** Checkpoint names: the attribute holding the sparse block, and the experts' projections. */
  block: string;
  proj: { gate: string; up: string; down: string };
}

const FAMILIES = {
  mixtral: { attention: 'mistral', block: 'block_sparse_moe', proj: { gate: 'w1', up: 'w3', down: 'w2' } },
  'qwen3-moe': { attention: 'qwen3', block: 'mlp', proj: { gate: 'gate_proj', up: 'up_proj', down: 'down_proj' } },
} as const;

function mlpOnlyLayers(cfg: ConfigReader): Set<number> {
  const v = cfg.raw['mlp_only_layers'];
  if (v === undefined || v === null) return new Set();
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0)) {
    throw new InputError(cfg.file, `mlp_only_layers must be a list of layer indices, got ${JSON.stringify(v)}`, 'BAD_CONFIG');
  }
  return new Set(v as number[]);
}

export function moeHyper(cfg: ConfigReader, family: string): MoeHyper {
  const f = FAMILIES[family as keyof typeof FAMILIES];
  if (!f) throw new InputError(cfg.file, `the engine runs the MoE families ${Object.keys(FAMILIES).join(', ')}, not ${family}`, 'UNSUPPORTED_ARCHITECTURE');
  const act = cfg.optString('hidden_act') ?? 'silu';
  if (act !== 'silu') throw new InputError(cfg.file, `hidden_act ${act} is not supported by the engine for ${family} (silu is)`, 'UNSUPPORTED_ARCHITECTURE');
  const base = llamaHyper(cfg, f.attention);
  const layers = base.layers;
  let h: MoeHyper;
  if (family === 'mixtral') {
    h = {
      ...base,
      family,
      // MixtralConfig's defaults, where they differ from the Llama family's.
      eps: cfg.optNumber('rms_norm_eps') ?? 1e-5,
      ropeTheta: cfg.optNumber('rope_theta') ?? 1e6,
      maxPositions: cfg.optInt(KEYS.maxPositions) ?? 4096 * 32,
      qkvBias: false,
      oBias: false,
      experts: cfg.optInt('num_local_experts', 8),
      expertsUsed: cfg.optInt('num_experts_per_tok', 2),
      expertFfn: cfg.int(KEYS.intermediate),
      normTopK: true,
      sparse: Array.from({ length: layers }, () => true),
      block: f.block,
      proj: { ...f.proj },
    };
  } else {
    const bias = cfg.bool('attention_bias', false);
    const experts = cfg.optInt('num_experts', 128);
    const step = cfg.optInt('decoder_sparse_step', 1);
    if (step < 1) throw new InputError(cfg.file, 'decoder_sparse_step must be at least 1', 'BAD_CONFIG');
    const denseOnly = mlpOnlyLayers(cfg);
    h = {
      ...base,
      family,
      maxPositions: cfg.optInt(KEYS.maxPositions) ?? 32768,
      // Qwen3MoeAttention puts attention_bias on all four projections.
      qkvBias: bias,
      oBias: bias,
      experts,
      expertsUsed: cfg.optInt('num_experts_per_tok', 8),
      expertFfn: cfg.optInt('moe_intermediate_size', 768),
      normTopK: cfg.bool('norm_topk_prob', false),
      sparse: Array.from({ length: layers }, (_, i) => !denseOnly.has(i) && experts > 0 && (i + 1) % step === 0),
      block: f.block,
      proj: { ...f.proj },
    };
  }
  if (h.sparse.some(Boolean)) {
    if (h.experts < 1 || h.expertsUsed < 1 || h.expertsUsed > h.experts) {
      throw new InputError(cfg.file, `num_experts_per_tok ${h.expertsUsed} must be between 1 and the ${h.experts} experts`, 'BAD_CONFIG');
    }
    if (h.expertFfn < 1) throw new InputError(cfg.file, 'the experts need a positive intermediate size', 'BAD_CONFIG');
  }
  return h;
}

/** The engine's name for a layer's stacked expert projection (no checkpoint tensor has it). */
export function stackedName(h: MoeHyper, i: number, proj: string): string {
  return `model.layers.${i}.${h.block}.experts.*.${proj}.weight`;
}

/** A layer's tensors: attention and norms as the Llama family's, then the dense MLP or the router and the stacked experts. */
export function moeLayerTensors(h: MoeHyper, i: number): ArchTensor[] {
  const p = `model.layers.${i}`;
  const llama = layerTensors(h, i);
  if (!h.sparse[i]) return llama;
  const b = `${p}.${h.block}`;
  const stacked = (proj: string, ne: [number, number]): ArchTensor => ({
    name: stackedName(h, i, proj),
    ne: [...ne, h.experts],
    stack: Array.from({ length: h.experts }, (_, e) => `${b}.experts.${e}.${proj}.weight`),
  });
  return [
    ...llama.filter((t) => !t.name.startsWith(`${p}.mlp.`)),
    { name: `${b}.gate.weight`, ne: [h.hidden, h.experts] },
    stacked(h.proj.gate, [h.hidden, h.expertFfn]),
    stacked(h.proj.up, [h.hidden, h.expertFfn]),
    stacked(h.proj.down, [h.expertFfn, h.hidden]),
  ];
}

/** The sparse MoE block: hs [hidden, n] → [hidden, n]. */
export function sparseMoe(gb: GraphBuilder, h: MoeHyper, w: WeightLookup, i: number, hs: Tensor): Tensor {
  const [hidden, n] = gb.shape(hs);
  const E = h.experts;
  const k = h.expertsUsed;
  const logits = gb.mulMat(w(`model.layers.${i}.${h.block}.gate.weight`), hs); // [E, n]
  const probs = gb.softMax(logits, null, 1); // [E, n]
  const selected = gb.topK(logits, k); // I32 [k, n], largest first
  let weights = gb.getRowsBatched(gb.reshape(probs, [1, E, n]), selected); // [1, k, n]
  if (h.normTopK) {
    const flat = gb.reshape(weights, [k, n]);
    weights = gb.reshape(gb.div(flat, gb.sumRows(flat)), [1, k, n]);
  }
  const x = gb.reshape(hs, [hidden, 1, n]);
  const gate = gb.silu(gb.mulMatId(w(stackedName(h, i, h.proj.gate)), x, selected)); // [ffn, k, n]
  const up = gb.mulMatId(w(stackedName(h, i, h.proj.up)), x, selected);
  const down = gb.mulMatId(w(stackedName(h, i, h.proj.down)), gb.mul(gate, up), selected); // [hidden, k, n]
  const weighted = gb.mul(down, weights);
  // Σ over the k slots: slot j of every token is a strided [hidden, n] view.
  const row = gb.g.rowSize(GGML_TYPE.F32, hidden);
  const slot = (j: number): Tensor => gb.view(weighted, [hidden, n], [row * k], j * row);
  let out = k === 1 ? gb.cont(slot(0)) : gb.add(slot(0), slot(1));
  for (let j = 2; j < k; j++) out = gb.add(out, slot(j));
  return out;
}

/** One decoder layer, as MixtralDecoderLayer / Qwen3MoeDecoderLayer.forward: x [hidden, n] → [hidden, n]. */
export function moeDecoderLayer(gb: GraphBuilder, h: MoeHyper, w: WeightLookup, i: number, x: Tensor, cache: LayerCache, step: StepInputs): Tensor {
  const p = `model.layers.${i}`;
  x = selfAttention(gb, h, w, i, x, cache, step);
  const hs = gb.mul(gb.rmsNorm(x, h.eps), w(`${p}.post_attention_layernorm.weight`));
  return gb.add(x, h.sparse[i] ? sparseMoe(gb, h, w, i, hs) : denseMlp(gb, w, `${p}.mlp`, hs));
}

/** Mixtral and Qwen3-MoE for the engine. */
export const moeArchitecture: EngineArchitecture<MoeHyper> = {
  families: Object.keys(FAMILIES),
  hyper: moeHyper,
  units: () => ({ embed: 'model.embed_tokens', block: (i) => `model.layers.${i}`, norm: 'model.norm', head: 'lm_head' }),
  tensors(h) {
    const g = globalTensors(h);
    const head: ArchTensor[] = g.head ? [g.head] : [];
    return { embed: [g.embed], norm: [g.norm], head, layer: (i) => moeLayerTensors(h, i) };
  },
  embed: (gb, _h, w, tokens) => embed(gb, w(EMBED), tokens),
  layer: moeDecoderLayer,
  finalNorm,
  head: lmHead,
};
