/**
 * A plain, slow, readable forward pass for the mixture-of-experts decoders Mixtral (MixtralForCausalLM) and
 * Qwen3-MoE (Qwen3MoeForCausalLM), following transformers' modeling_mixtral.py and modeling_qwen3_moe.py, to
 * test the engine against. float64 arithmetic.
 *
 * The attention, norms, embedding and head are exactly ReferenceLlama's (./reference-llama.ts): Mixtral's
 * attention is Mistral's, Qwen3-MoE's is Qwen3's (per-head q_norm / k_norm before rope, attention_bias on all
 * four projections). This file supplies the MLP of every sparse layer through ReferenceLlama's MlpOverride:
 *
 *   logits  = gate(h)                       gate: [num_experts, hidden] (Mixtral `block_sparse_moe.gate`,
 *                                           Qwen3-MoE `mlp.gate`), no bias
 *   p       = softmax(logits)               transformers: F.softmax(..., dtype=torch.float)
 *   top     = the k = num_experts_per_tok experts of largest p, largest first (torch.topk)
 *   w_j     = p[top_j]; Mixtral always, Qwen3-MoE only when norm_topk_prob: w_j /= Σ_j w_j
 *   out     = Σ_j w_j · down_e(silu(gate_e(h)) · up_e(h)),  e = top_j
 *             Mixtral expert e: `block_sparse_moe.experts.e.{w1 (gate), w3 (up), w2 (down)}`
 *             Qwen3-MoE expert e: `mlp.experts.e.{gate_proj, up_proj, down_proj}`, moe_intermediate_size
 *
 * Which layers are sparse: every Mixtral layer; a Qwen3-MoE layer i unless i is in mlp_only_layers or
 * (i + 1) % decoder_sparse_step ≠ 0 (or num_experts is 0). Those keep ReferenceLlama's dense MLP
 * (`mlp.{gate,up,down}_proj` of intermediate_size).
 *
 * Config defaults that differ from the Llama family's and are filled in here before ReferenceLlama reads the
 * config: MixtralConfig rms_norm_eps 1e-5, rope_theta 1e6, sliding_window None (MistralConfig's is 4096);
 * Qwen3MoeConfig head_dim hidden_size / num_attention_heads (Qwen3Config's is 128).
 *
 * TIES: torch.topk documents no order among equal values. Here the lower expert index wins a tie
 * (deterministic). `stats.minMargin` records the smallest gap seen between the k-th and (k+1)-th router logit,
 * so a test can show its routing decisions are far from ties, where float32 and float64 runs agree.
 *
 * PRECISION: transformers computes the routing in float32 and casts the weights to the model dtype; here it is
 * float64 like everything else.
 */
import { ReferenceLlama, type MlpOverride, type TensorSource } from './reference-llama.js';
import { configNumber as num, linear, silu } from './reference-math.js';

export interface MoeReferenceConfig {
  kind: 'mixtral' | 'qwen3_moe';
  hiddenSize: number;
  numExperts: number;
  topK: number;
  normTopK: boolean;
  expertIntermediate: number;
  /** Per layer: sparse MoE block (true) or dense MLP (false). */
  sparse: boolean[];
  /** Checkpoint names of a layer's router and of expert e's projections. */
  router(layer: number): string;
  expert(layer: number, e: number): { gate: string; up: string; down: string };
}

/** The MoE facts of a Mixtral or Qwen3-MoE config.json, and the config ReferenceLlama reads for the rest. */
export function parseMoeConfig(raw: Record<string, unknown>): { moe: MoeReferenceConfig; llamaConfig: Record<string, unknown> } {
  const type = raw['model_type'];
  const hidden = num(raw, 'hidden_size');
  const heads = num(raw, 'num_attention_heads');
  const layers = num(raw, 'num_hidden_layers');
  if (type === 'mixtral') {
    const numExperts = num(raw, 'num_local_experts', 8);
    return {
      moe: {
        kind: 'mixtral',
        hiddenSize: hidden,
        numExperts,
        topK: num(raw, 'num_experts_per_tok', 2),
        normTopK: true,
        expertIntermediate: num(raw, 'intermediate_size'),
        sparse: Array.from({ length: layers }, () => true),
        router: (l) => `model.layers.${l}.block_sparse_moe.gate.weight`,
        expert: (l, e) => {
          const p = `model.layers.${l}.block_sparse_moe.experts.${e}`;
          return { gate: `${p}.w1.weight`, up: `${p}.w3.weight`, down: `${p}.w2.weight` };
        },
      },
      llamaConfig: {
        ...raw,
        model_type: 'mistral',
        architectures: ['MistralForCausalLM'],
        rms_norm_eps: num(raw, 'rms_norm_eps', 1e-5),
        rope_theta: num(raw, 'rope_theta', 1e6),
        sliding_window: raw['sliding_window'] ?? null,
        head_dim: num(raw, 'head_dim', Math.floor(hidden / heads)),
      },
    };
  }
  if (type === 'qwen3_moe') {
    const numExperts = num(raw, 'num_experts', 128);
    const step = num(raw, 'decoder_sparse_step', 1);
    const only = (raw['mlp_only_layers'] ?? []) as number[];
    return {
      moe: {
        kind: 'qwen3_moe',
        hiddenSize: hidden,
        numExperts,
        topK: num(raw, 'num_experts_per_tok', 8),
        normTopK: raw['norm_topk_prob'] === true,
        expertIntermediate: num(raw, 'moe_intermediate_size', 768),
        sparse: Array.from({ length: layers }, (_, i) => !only.includes(i) && numExperts > 0 && (i + 1) % step === 0),
        router: (l) => `model.layers.${l}.mlp.gate.weight`,
        expert: (l, e) => {
          const p = `model.layers.${l}.mlp.experts.${e}`;
          return { gate: `${p}.gate_proj.weight`, up: `${p}.up_proj.weight`, down: `${p}.down_proj.weight` };
        },
      },
      llamaConfig: {
        ...raw,
        model_type: 'qwen3',
        architectures: ['Qwen3ForCausalLM'],
        head_dim: num(raw, 'head_dim', Math.floor(hidden / heads)),
      },
    };
  }
  throw new Error(`not a Mixtral or Qwen3-MoE config: model_type ${JSON.stringify(type)}`);
}

/** What the routing did since the model was made (or the stats were reset). */
export interface RoutingStats {
  /** Per layer, per expert: how many tokens chose it. */
  counts: number[][];
  /** Smallest gap between the k-th and (k+1)-th largest router logit of any token (Infinity when k = E). */
  minMargin: number;
}

interface ExpertWeights {
  gate: Float64Array;
  up: Float64Array;
  down: Float64Array;
}

/** The sparse MoE block of every sparse layer, for ReferenceLlama's MlpOverride. */
export class MoeBlocks implements MlpOverride {
  readonly stats: RoutingStats;
  private readonly routers = new Map<number, Float64Array>();
  private readonly experts = new Map<number, ExpertWeights[]>();

  constructor(
    readonly config: MoeReferenceConfig,
    tensors: TensorSource,
  ) {
    const c = config;
    const get = (name: string, count: number): Float64Array => {
      const t = tensors instanceof Map ? tensors.get(name) : tensors[name];
      if (!t) throw new Error(`tensor ${name} is missing`);
      if (t.length !== count) throw new Error(`tensor ${name} has ${t.length} values, expected ${count}`);
      return Float64Array.from(t);
    };
    const H = c.hiddenSize;
    const F = c.expertIntermediate;
    c.sparse.forEach((sparse, l) => {
      if (!sparse) return;
      this.routers.set(l, get(c.router(l), c.numExperts * H));
      this.experts.set(
        l,
        Array.from({ length: c.numExperts }, (_, e) => {
          const n = c.expert(l, e);
          return { gate: get(n.gate, F * H), up: get(n.up, F * H), down: get(n.down, H * F) };
        }),
      );
    });
    this.stats = { counts: c.sparse.map(() => new Array<number>(c.numExperts).fill(0)), minMargin: Infinity };
  }

  owns(layer: number): boolean {
    return this.config.sparse[layer] === true;
  }

  /** Routing weights of one token: the selected experts, largest probability first, and their weights. */
  route(layer: number, h: Float64Array): { experts: number[]; weights: number[]; logits: Float64Array } {
    const c = this.config;
    const logits = linear(h, this.routers.get(layer)!, c.numExperts);
    let max = -Infinity;
    for (const v of logits) max = Math.max(max, v);
    const exp = Array.from(logits, (v) => Math.exp(v - max));
    const sum = exp.reduce((a, b) => a + b, 0);
    const probs = exp.map((v) => v / sum);
    // Largest first; on equal probabilities the lower index first (see TIES above).
    const order = probs.map((_, e) => e).sort((a, b) => probs[b]! - probs[a]! || a - b);
    const experts = order.slice(0, c.topK);
    let weights = experts.map((e) => probs[e]!);
    if (c.normTopK) {
      const total = weights.reduce((a, b) => a + b, 0);
      weights = weights.map((v) => v / total);
    }
    if (c.topK < c.numExperts) this.stats.minMargin = Math.min(this.stats.minMargin, logits[order[c.topK - 1]!]! - logits[order[c.topK]!]!);
    for (const e of experts) this.stats.counts[layer]![e]!++;
    return { experts, weights, logits };
  }

  forward(layer: number, h: Float64Array): Float64Array {
    const c = this.config;
    const { experts, weights } = this.route(layer, h);
    const out = new Float64Array(c.hiddenSize);
    experts.forEach((e, j) => {
      const x = this.experts.get(layer)![e]!;
      const gate = linear(h, x.gate, c.expertIntermediate);
      const up = linear(h, x.up, c.expertIntermediate);
      const act = new Float64Array(c.expertIntermediate);
      for (let i = 0; i < act.length; i++) act[i] = silu(gate[i]!) * up[i]!;
      const down = linear(act, x.down, c.hiddenSize);
      for (let d = 0; d < out.length; d++) out[d] = out[d]! + weights[j]! * down[d]!;
    });
    return out;
  }
}

/** A reference Mixtral / Qwen3-MoE: ReferenceLlama with the MoE blocks in its sparse layers. */
export function createReferenceMoe(checkpoint: { config: Record<string, unknown>; tensors: TensorSource }): { model: ReferenceLlama; moe: MoeBlocks } {
  const { moe, llamaConfig } = parseMoeConfig(checkpoint.config);
  const blocks = new MoeBlocks(moe, checkpoint.tensors);
  return { model: new ReferenceLlama(llamaConfig, checkpoint.tensors, blocks), moe: blocks };
}
