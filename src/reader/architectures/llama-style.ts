import { KEYS, type ConfigReader } from '../config.js';
import { ModuleTree, type ModuleScope } from '../module-builder.js';
import { decoderLayout, type LegacyTensor, type ModelLayout } from './spec.js';

/**
 * The decoder shape shared by Llama, Mistral, Qwen2/3, Mixtral and Qwen3-MoE in transformers:
 * `model.{embed_tokens, layers[N].{self_attn, mlp, input_layernorm, post_attention_layernorm}, norm,
 * rotary_emb}` then `lm_head`. Each family's file states only how it differs.
 */
export interface LlamaStyleOptions {
  /** Class-name prefix: `Llama` gives LlamaForCausalLM, LlamaDecoderLayer, LlamaRMSNorm, ... */
  prefix: string;
  /** Bias on q/k/v projections (Qwen2 always; Llama when `attention_bias`). */
  qkvBias: boolean;
  /** Bias on o_proj (Llama's `attention_bias` covers it too). */
  oBias: boolean;
  /** Qwen3's per-head RMSNorm on queries and keys. */
  qkNorm: boolean;
  mlpBias: boolean;
  /** Default of `tie_word_embeddings` when the config does not say. */
  tieDefault: boolean;
  /** Mixture-of-experts layout; undefined for a dense MLP. */
  moe?: MoeOptions;
  /** Class of the MLPs' `act_fn` (what `ACT2FN[hidden_act]` builds); `SiLU` when unset. */
  actClass?: string;
  /** Gemma2's extra `pre_feedforward_layernorm` and `post_feedforward_layernorm` in every layer. */
  feedforwardNorms?: boolean;
  /**
   * Sliding window for the attention facts; unset reads `sliding_window`, null means none (Qwen2/3 keep
   * `sliding_window` in the config even when `use_sliding_window` is false).
   */
  slidingWindow?: number | null;
}

export interface MoeOptions {
  /** Attribute holding the sparse block (`block_sparse_moe` for Mixtral, `mlp` for Qwen3-MoE). */
  attr: string;
  blockClass: string;
  expertClass: string;
  /** Expert projections: Mixtral's w1/w2/w3 or gate/up/down. */
  names: { gate: string; down: string; up: string };
  numExperts: number;
  expertsPerToken: number;
  expertIntermediate: number;
  /** Layers that stay dense (Qwen3-MoE's `mlp_only_layers`, `decoder_sparse_step`). */
  isDense?: (layer: number) => boolean;
}

export interface LlamaStyleDims {
  layers: number;
  hidden: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  intermediate: number;
  vocab: number;
}

export function llamaStyleDims(cfg: ConfigReader): LlamaStyleDims {
  const hidden = cfg.int(KEYS.hidden, 'hidden size');
  const heads = cfg.int(KEYS.heads, 'attention heads');
  return {
    layers: cfg.int(KEYS.layers, 'layer count'),
    hidden,
    heads,
    kvHeads: cfg.optInt(['num_key_value_heads'], heads),
    headDim: cfg.optInt(['head_dim'], Math.floor(hidden / heads)),
    intermediate: cfg.int(KEYS.intermediate, 'intermediate size'),
    vocab: cfg.int(KEYS.vocab, 'vocab size'),
  };
}

function denseMlp(m: ModuleScope, prefix: string, hidden: number, intermediate: number, bias: boolean, act: string): void {
  m.child('mlp', `${prefix}MLP`, (mlp) => mlpBody(mlp, hidden, intermediate, bias, { gate: 'gate_proj', up: 'up_proj', down: 'down_proj' }, act));
}

function mlpBody(mlp: ModuleScope, hidden: number, intermediate: number, bias: boolean, n: MoeOptions['names'], act: string): void {
  mlp.linear(n.gate, hidden, intermediate, bias);
  // Mixtral registers w1, w2, w3 (gate, down, up); the dense MLPs register gate, up, down.
  if (n.gate === 'w1') {
    mlp.linear(n.down, intermediate, hidden, bias);
    mlp.linear(n.up, hidden, intermediate, bias);
  } else {
    mlp.linear(n.up, hidden, intermediate, bias);
    mlp.linear(n.down, intermediate, hidden, bias);
  }
  mlp.leaf('act_fn', act);
}

export function buildLlamaStyle(cfg: ConfigReader, dtype: string, o: LlamaStyleOptions): ModelLayout {
  const d = llamaStyleDims(cfg);
  const p = o.prefix;
  const tree = new ModuleTree(dtype);
  const tie = cfg.bool('tie_word_embeddings', o.tieDefault);
  const norm = `${p}RMSNorm`;
  const act = o.actClass ?? 'SiLU';
  tree.root.child('model', `${p}Model`, (model) => {
    model.embedding('embed_tokens', d.vocab, d.hidden);
    model.list('layers', d.layers, `${p}DecoderLayer`, (layer, i) => {
      layer.child('self_attn', `${p}Attention`, (a) => {
        a.linear('q_proj', d.hidden, d.heads * d.headDim, o.qkvBias);
        a.linear('k_proj', d.hidden, d.kvHeads * d.headDim, o.qkvBias);
        a.linear('v_proj', d.hidden, d.kvHeads * d.headDim, o.qkvBias);
        a.linear('o_proj', d.heads * d.headDim, d.hidden, o.oBias);
        if (o.qkNorm) {
          a.norm('q_norm', norm, d.headDim);
          a.norm('k_norm', norm, d.headDim);
        }
      });
      const moe = o.moe;
      if (moe && !moe.isDense?.(i)) {
        layer.child(moe.attr, moe.blockClass, (b) => {
          b.linear('gate', d.hidden, moe.numExperts, false);
          b.list('experts', moe.numExperts, moe.expertClass, (e) => mlpBody(e, d.hidden, moe.expertIntermediate, false, moe.names, act));
        });
      } else {
        denseMlp(layer, p, d.hidden, d.intermediate, o.mlpBias, act);
      }
      layer.norm('input_layernorm', norm, d.hidden);
      layer.norm('post_attention_layernorm', norm, d.hidden);
      if (o.feedforwardNorms) {
        layer.norm('pre_feedforward_layernorm', norm, d.hidden);
        layer.norm('post_feedforward_layernorm', norm, d.hidden);
      }
    });
    model.norm('norm', norm, d.hidden);
    model.child('rotary_emb', `${p}RotaryEmbedding`, (r) => r.buffer('inv_freq', [d.headDim / 2], 'float32', false));
  });
  tree.root.linear('lm_head', d.hidden, d.vocab, false);
  return decoderLayout({
    rootClass: `${p}ForCausalLM`,
    tree,
    tie: tie ? ['model.embed_tokens.weight', 'lm_head.weight'] : undefined,
    blocks: { prefix: 'model.layers', count: d.layers, class: `${p}DecoderLayer` },
    attention: {
      hiddenSize: d.hidden,
      vocabSize: d.vocab,
      numHeads: d.heads,
      numKvHeads: d.kvHeads,
      headDim: d.headDim,
      intermediateSize: d.intermediate,
      maxPositionEmbeddings: cfg.optInt(KEYS.maxPositions),
      slidingWindow: o.slidingWindow === undefined ? cfg.optInt('sliding_window') : (o.slidingWindow ?? undefined),
      numExperts: o.moe?.numExperts,
      expertsPerToken: o.moe?.expertsPerToken,
    },
  });
}

const LEGACY_ROTARY = /^model\.layers\.(\d+)\.self_attn\.rotary_emb\.inv_freq$/;

/** Checkpoints saved by transformers < 4.31 carry a persistent `inv_freq` in every attention layer. */
export function legacyRotary(prefix: string) {
  return (name: string, cfg: ConfigReader, dtype: string): LegacyTensor | undefined => {
    const m = LEGACY_ROTARY.exec(name);
    if (!m) return undefined;
    const d = llamaStyleDims(cfg);
    if (Number(m[1]) >= d.layers) return undefined;
    return {
      module: `model.layers.${m[1]}.self_attn.rotary_emb`,
      moduleClass: `${prefix}RotaryEmbedding`,
      shape: [d.headDim / 2],
      dtypes: dtype === 'float32' ? ['float32'] : ['float32', dtype],
    };
  };
}
