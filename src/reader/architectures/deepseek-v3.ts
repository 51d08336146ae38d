import { KEYS, type ConfigReader } from '../config.js';
import { ModuleTree, type ModuleScope } from '../module-builder.js';
import type { AttentionFacts } from '../skeleton.js';
import type { ArchitectureSpec, ModelLayout } from './spec.js';

interface DeepseekDims {
  layers: number;
  hidden: number;
  heads: number;
  kvHeads: number;
  vocab: number;
  intermediate: number;
  moeIntermediate: number;
  qLoraRank: number | undefined;
  kvLoraRank: number;
  qkNope: number;
  qkRope: number;
  vHead: number;
  routedExperts: number;
  sharedExperts: number;
  expertsPerToken: number;
  firstDense: number;
  attentionBias: boolean;
  /** Multi-token-prediction layers the checkpoint stores after the last decoder layer. */
  nextN: number;
}

/** Dimensions with DeepseekV3Config's defaults (DeepSeek-V3 671B) where config.json is silent. */
function dims(cfg: ConfigReader): DeepseekDims {
  const heads = cfg.int(KEYS.heads, 'attention heads');
  return {
    layers: cfg.int(KEYS.layers, 'layer count'),
    hidden: cfg.int('hidden_size', 'hidden size'),
    heads,
    kvHeads: cfg.optInt('num_key_value_heads', heads),
    vocab: cfg.int(KEYS.vocab, 'vocab size'),
    intermediate: cfg.optInt('intermediate_size', 18432),
    moeIntermediate: cfg.optInt('moe_intermediate_size', 2048),
    // q_lora_rank: null (DeepSeek-V2-Lite style) means a plain q_proj; absent means the 1536 default.
    qLoraRank: cfg.raw['q_lora_rank'] === undefined ? 1536 : cfg.optInt('q_lora_rank'),
    kvLoraRank: cfg.optInt('kv_lora_rank', 512),
    qkNope: cfg.optInt('qk_nope_head_dim', 128),
    qkRope: cfg.optInt('qk_rope_head_dim', 64),
    vHead: cfg.optInt('v_head_dim', 128),
    routedExperts: cfg.optInt('n_routed_experts', 256),
    sharedExperts: cfg.optInt('n_shared_experts', 1),
    expertsPerToken: cfg.optInt('num_experts_per_tok', 8),
    firstDense: cfg.optInt('first_k_dense_replace', 3),
    attentionBias: cfg.bool('attention_bias', false),
    nextN: cfg.optInt('num_nextn_predict_layers', 0),
  };
}

function mlp(m: ModuleScope, name: string, hidden: number, intermediate: number): void {
  m.child(name, 'DeepseekV3MLP', (x) => {
    x.linear('gate_proj', hidden, intermediate);
    x.linear('up_proj', hidden, intermediate);
    x.linear('down_proj', intermediate, hidden);
    x.leaf('act_fn', 'SiLU');
  });
}

/** One DeepseekV3DecoderLayer: MLA attention, then a dense MLP (first layers) or the MoE block. */
function decoderLayer(layer: ModuleScope, i: number, d: DeepseekDims, dtype: string): void {
  const qkHead = d.qkNope + d.qkRope;
  layer.child('self_attn', 'DeepseekV3Attention', (a) => {
    if (d.qLoraRank === undefined) {
      a.linear('q_proj', d.hidden, d.heads * qkHead);
    } else {
      a.linear('q_a_proj', d.hidden, d.qLoraRank, d.attentionBias);
      a.norm('q_a_layernorm', 'DeepseekV3RMSNorm', d.qLoraRank);
      a.linear('q_b_proj', d.qLoraRank, d.heads * qkHead);
    }
    a.linear('kv_a_proj_with_mqa', d.hidden, d.kvLoraRank + d.qkRope, d.attentionBias);
    a.norm('kv_a_layernorm', 'DeepseekV3RMSNorm', d.kvLoraRank);
    a.linear('kv_b_proj', d.kvLoraRank, d.heads * (d.qkNope + d.vHead));
    a.linear('o_proj', d.heads * d.vHead, d.hidden, d.attentionBias);
  });
  if (i >= d.firstDense) {
    layer.child('mlp', 'DeepseekV3MoE', (moe) => {
      moe.list('experts', d.routedExperts, 'DeepseekV3MLP', (e) => {
        e.linear('gate_proj', d.hidden, d.moeIntermediate);
        e.linear('up_proj', d.hidden, d.moeIntermediate);
        e.linear('down_proj', d.moeIntermediate, d.hidden);
        e.leaf('act_fn', 'SiLU');
      });
      moe.child('gate', 'DeepseekV3TopkRouter', (g) => {
        g.param('weight', [d.routedExperts, d.hidden]);
        // A persistent buffer (torch.zeros under the load dtype), so checkpoints store it.
        g.buffer('e_score_correction_bias', [d.routedExperts], dtype, true);
      });
      mlp(moe, 'shared_experts', d.hidden, d.moeIntermediate * d.sharedExperts);
    });
  } else {
    mlp(layer, 'mlp', d.hidden, d.intermediate);
  }
  layer.norm('input_layernorm', 'DeepseekV3RMSNorm', d.hidden);
  layer.norm('post_attention_layernorm', 'DeepseekV3RMSNorm', d.hidden);
}

function mlaAttention(cfg: ConfigReader, d: DeepseekDims): AttentionFacts {
  const facts: AttentionFacts = {
    numLayers: d.layers,
    hiddenSize: d.hidden,
    vocabSize: d.vocab,
    numHeads: d.heads,
    numKvHeads: d.kvHeads,
    headDim: d.qkNope + d.qkRope,
    // transformers caches the decompressed per-head K (nope + rope) and V.
    kvElementsPerToken: d.heads * (d.qkNope + d.qkRope) + d.heads * d.vHead,
    attention: 'mla',
    kvLayers: d.layers,
    kvLatentElementsPerToken: d.kvLoraRank + d.qkRope,
    intermediateSize: d.intermediate,
    numExperts: d.routedExperts,
    expertsPerToken: d.expertsPerToken,
  };
  const maxPos = cfg.optInt(KEYS.maxPositions);
  if (maxPos !== undefined) facts.maxPositionEmbeddings = maxPos;
  return facts;
}

function build(cfg: ConfigReader, dtype: string): ModelLayout {
  const d = dims(cfg);
  const tree = new ModuleTree(dtype);
  tree.root.child('model', 'DeepseekV3Model', (model) => {
    model.embedding('embed_tokens', d.vocab, d.hidden);
    model.list('layers', d.layers, 'DeepseekV3DecoderLayer', (layer, i) => decoderLayer(layer, i, d, dtype));
    model.norm('norm', 'DeepseekV3RMSNorm', d.hidden);
    // Rotary covers only the qk_rope_head_dim part of each head (the config's head_dim).
    model.child('rotary_emb', 'DeepseekV3RotaryEmbedding', (r) => r.buffer('inv_freq', [Math.floor(d.qkRope / 2)], 'float32', false));
  });
  tree.root.linear('lm_head', d.hidden, d.vocab);
  return {
    rootClass: 'DeepseekV3ForCausalLM',
    tree,
    tied: cfg.bool('tie_word_embeddings', false) ? [['model.embed_tokens.weight', 'lm_head.weight']] : [],
    noSplit: ['DeepseekV3DecoderLayer'],
    blocks: { prefix: 'model.layers', count: d.layers, class: 'DeepseekV3DecoderLayer' },
    attention: mlaAttention(cfg, d),
  };
}

const MTP_LAYER = /^model\.layers\.(\d+)\./;

/**
 * DeepSeek checkpoints store `num_nextn_predict_layers` multi-token-prediction layers after the last
 * decoder layer (`model.layers.61.*` in V3/R1). transformers never builds them and skips them on load,
 * so they cost no memory: the reader sets them aside instead of counting them.
 */
function ignoredStored(name: string, cfg: ConfigReader): string | undefined {
  const m = MTP_LAYER.exec(name);
  if (!m) return undefined;
  const d = dims(cfg);
  const index = Number(m[1]);
  return index >= d.layers && index < d.layers + d.nextN ? 'multi-token-prediction layer, which transformers does not load' : undefined;
}

/**
 * DeepSeek-V3 and R1 as transformers 4.5x builds them: multi-head latent attention (low-rank q and
 * kv projections), `first_k_dense_replace` dense layers, then MoE layers with `n_routed_experts`
 * experts, a sigmoid top-k router and `n_shared_experts` shared experts fused into one MLP.
 */
export const deepseekV3: ArchitectureSpec = {
  family: 'deepseek-v3',
  architectures: ['DeepseekV3ForCausalLM'],
  modelTypes: ['deepseek_v3'],
  build,
  ignoredStored,
};
