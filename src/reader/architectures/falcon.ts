import { type ConfigReader } from '../config.js';
import { ModuleTree, type ModuleScope } from '../module-builder.js';
import { activationClass } from './gpt2.js';
import { decoderLayout, type ArchitectureSpec, type ModelLayout } from './spec.js';

/**
 * Falcon, in two codebases with the same tensor names:
 * - FalconForCausalLM, transformers' own modeling_falcon.py (every current tiiuae config);
 * - RWForCausalLM, the May-2023 remote code `modelling_RW.py`, one file for 7B (model_type
 *   RefinedWebModel: multi-query, input_layernorm) and another for 40B (RefinedWeb: n_head_kv groups,
 *   ln_attn + ln_mlp).
 * Both tie lm_head to word_embeddings (PretrainedConfig's default), yet the released checkpoints store
 * lm_head.weight too: a stored tied copy, loaded once.
 */
interface FalconDims {
  layers: number;
  hidden: number;
  heads: number;
  headDim: number;
  vocab: number;
  bias: boolean;
  /** KV heads the cache really keeps per layer. */
  kvHeads: number;
  qkvOut: number;
  ffn: number;
}

function commonDims(cfg: ConfigReader) {
  const hidden = cfg.int(['hidden_size', 'n_embed'], 'hidden size');
  const heads = cfg.int(['num_attention_heads', 'n_head'], 'attention heads');
  return {
    layers: cfg.int(['num_hidden_layers', 'n_layer'], 'layer count'),
    hidden,
    heads,
    headDim: Math.floor(hidden / heads),
    vocab: cfg.int(['vocab_size'], 'vocab size'),
    bias: cfg.bool('bias', false),
  };
}

function layout(cfg: ConfigReader, d: FalconDims, tree: ModuleTree, rootClass: string, layerClass: string): ModelLayout {
  const tie = cfg.bool('tie_word_embeddings', true);
  tree.root.linear('lm_head', d.hidden, d.vocab, false);
  return decoderLayout({
    rootClass,
    tree,
    tie: tie ? ['transformer.word_embeddings.weight', 'lm_head.weight'] : undefined,
    blocks: { prefix: 'transformer.h', count: d.layers, class: layerClass },
    attention: {
      hiddenSize: d.hidden,
      vocabSize: d.vocab,
      numHeads: d.heads,
      numKvHeads: d.kvHeads,
      headDim: d.headDim,
      intermediateSize: d.ffn,
      maxPositionEmbeddings: cfg.optInt(['max_position_embeddings']),
    },
  });
}

export function buildFalcon(cfg: ConfigReader, dtype: string): ModelLayout {
  const c = commonDims(cfg);
  const newArch = cfg.bool('new_decoder_architecture', false);
  const multiQuery = cfg.bool('multi_query', true);
  const parallel = cfg.bool('parallel_attn', true);
  const numKv = cfg.optInt(['num_kv_heads', 'n_head_kv'], c.heads);
  // FalconDecoderLayer turns an unset num_ln_in_parallel_attn into 2 for the new architecture.
  const lnInParallel = cfg.optInt(['num_ln_in_parallel_attn']) ?? (newArch ? 2 : undefined);
  const qkvOut = newArch ? (2 * numKv + c.heads) * c.headDim : multiQuery ? c.hidden + 2 * c.headDim : 3 * c.hidden;
  const d: FalconDims = {
    ...c,
    // The new architecture's cache is written after K/V are broadcast to every query head in
    // transformers' FalconAttention; the model itself has num_kv_heads groups, which is what engines
    // that keep grouped caches (llama.cpp, vLLM) store and what is reported here.
    kvHeads: newArch ? numKv : multiQuery ? 1 : c.heads,
    qkvOut,
    ffn: cfg.optInt(['ffn_hidden_size'], 4 * c.hidden),
  };
  const act = activationClass(cfg, ['activation'], 'gelu');

  const tree = new ModuleTree(dtype);
  tree.root.child('transformer', 'FalconModel', (t) => {
    t.embedding('word_embeddings', d.vocab, d.hidden);
    t.list('h', d.layers, 'FalconDecoderLayer', (layer) => {
      layer.child('self_attention', 'FalconAttention', (a) => {
        a.linear('query_key_value', d.hidden, d.qkvOut, d.bias, 'FalconLinear');
        a.linear('dense', d.hidden, d.hidden, d.bias, 'FalconLinear');
        a.leaf('attention_dropout', 'Dropout');
      });
      layer.child('mlp', 'FalconMLP', (m) => {
        m.linear('dense_h_to_4h', d.hidden, d.ffn, d.bias, 'FalconLinear');
        m.leaf('act', act);
        m.linear('dense_4h_to_h', d.ffn, d.hidden, d.bias, 'FalconLinear');
      });
      // Norms are registered after attention and MLP here, unlike the RW code.
      if (!parallel) {
        layer.norm('post_attention_layernorm', 'LayerNorm', d.hidden, true);
        layer.norm('input_layernorm', 'LayerNorm', d.hidden, true);
      } else if (lnInParallel === 2) {
        layer.norm('ln_attn', 'LayerNorm', d.hidden, true);
        layer.norm('ln_mlp', 'LayerNorm', d.hidden, true);
      } else {
        layer.norm('input_layernorm', 'LayerNorm', d.hidden, true);
      }
    });
    t.norm('ln_f', 'LayerNorm', d.hidden, true);
    // Built even for ALiBi configs; default RoPE over the full head dimension.
    t.child('rotary_emb', 'FalconRotaryEmbedding', (r) => r.buffer('inv_freq', [Math.ceil(d.headDim / 2)], 'float32', false));
  });
  return layout(cfg, d, tree, 'FalconForCausalLM', 'FalconDecoderLayer');
}

export function buildRw(cfg: ConfigReader, dtype: string): ModelLayout {
  const c = commonDims(cfg);
  // The 40B file reads n_head_kv and always builds ln_attn/ln_mlp; the 7B file reads multi_query.
  const is40b = cfg.modelType() === 'RefinedWeb' || cfg.has('n_head_kv');
  const multiQuery = cfg.bool('multi_query', false);
  const parallel = cfg.bool('parallel_attn', false);
  const numKv = is40b ? cfg.optInt(['n_head_kv'], c.heads) : multiQuery ? 1 : c.heads;
  const d: FalconDims = {
    ...c,
    // The 40B code broadcasts K/V to all heads before caching; the model has n_head_kv groups.
    kvHeads: numKv,
    qkvOut: is40b ? (2 * numKv + c.heads) * c.headDim : multiQuery ? c.hidden + 2 * c.headDim : 3 * c.hidden,
    ffn: 4 * c.hidden,
  };
  const rotary = !cfg.bool('alibi', false);

  const attention = (a: ModuleScope): void => {
    // `maybe_rotary` is a RotaryEmbedding only with RoPE (a lambda, not a module, under ALiBi).
    if (rotary) a.child('maybe_rotary', 'RotaryEmbedding', (r) => r.buffer('inv_freq', [Math.ceil(d.headDim / 2)], 'float32', false));
    a.linear('query_key_value', d.hidden, d.qkvOut, d.bias);
    a.linear('dense', d.hidden, d.hidden, d.bias);
    a.leaf('attention_dropout', 'Dropout');
  };
  const mlp = (m: ModuleScope): void => {
    m.linear('dense_h_to_4h', d.hidden, d.ffn, d.bias);
    m.leaf('act', 'GELU');
    m.linear('dense_4h_to_h', d.ffn, d.hidden, d.bias);
  };

  const tree = new ModuleTree(dtype);
  tree.root.child('transformer', 'RWModel', (t) => {
    t.embedding('word_embeddings', d.vocab, d.hidden);
    t.list('h', d.layers, 'DecoderLayer', (layer) => {
      if (is40b) {
        layer.norm('ln_attn', 'LayerNorm', d.hidden, true);
        layer.norm('ln_mlp', 'LayerNorm', d.hidden, true);
        layer.child('self_attention', 'Attention', attention);
      } else {
        layer.norm('input_layernorm', 'LayerNorm', d.hidden, true);
        layer.child('self_attention', 'Attention', attention);
        if (!parallel) layer.norm('post_attention_layernorm', 'LayerNorm', d.hidden, true);
      }
      layer.child('mlp', 'MLP', mlp);
    });
    t.norm('ln_f', 'LayerNorm', d.hidden, true);
  });
  return layout(cfg, d, tree, 'RWForCausalLM', 'DecoderLayer');
}

/** Which codebase a config loads: its first architecture decides, then its model_type. */
function isRw(cfg: ConfigReader): boolean {
  const arch = cfg.architectures().find((a) => a === 'FalconForCausalLM' || a === 'RWForCausalLM');
  if (arch) return arch === 'RWForCausalLM';
  const type = cfg.modelType();
  return type === 'RefinedWeb' || type === 'RefinedWebModel';
}

export const falcon: ArchitectureSpec = {
  family: 'falcon',
  architectures: ['FalconForCausalLM', 'RWForCausalLM'],
  modelTypes: ['falcon', 'RefinedWeb', 'RefinedWebModel'],
  build: (cfg, dtype) => (isRw(cfg) ? buildRw(cfg, dtype) : buildFalcon(cfg, dtype)),
};
