import { KEYS, type ConfigReader } from '../config.js';
import { ModuleTree } from '../module-builder.js';
import { InputError } from '../../util/errors.js';
import { decoderLayout, type ArchitectureSpec, type ModelLayout } from './spec.js';

/**
 * Baichuan 2 (7B and 13B) and Baichuan 13B, remote code `modeling_baichuan.py`. The 7B and 13B files
 * differ: 7B uses RoPE with DecoderLayer/Attention, 13B uses ALiBi with BaichuanLayer/BaichuanAttention.
 * The config does not say which file a repo ships; like vLLM we tell them apart by hidden_size 4096.
 * A config may say it instead (a vramfit override, for checkpoints such as small test models whose
 * width breaks the rule): `"position_embedding": "ROPE"` or `"ALIBI"` (vLLM's names for the two).
 */
export function baichuanUsesRope(cfg: ConfigReader): boolean {
  const declared = cfg.optString('position_embedding');
  if (declared === undefined) return cfg.int(KEYS.hidden, 'hidden size') === 4096;
  const v = declared.toUpperCase();
  if (v !== 'ROPE' && v !== 'ALIBI')
    throw new InputError(cfg.file, `position_embedding must be "ROPE" or "ALIBI", got ${JSON.stringify(declared)}`, 'BAD_CONFIG');
  return v === 'ROPE';
}

/**
 * Baichuan 2's NormHead (lm_head rows L2-normalised before use) goes with its 125,696-token vocabulary;
 * Baichuan 13B (64,000 tokens) has a plain Linear head. vLLM keys the normalisation on the same number.
 * `"norm_head": true|false` in the config overrides it (a vramfit override, as position_embedding).
 */
export function baichuanNormHead(cfg: ConfigReader): boolean {
  return cfg.bool('norm_head', cfg.int(KEYS.vocab, 'vocab size') === 125696);
}

/**
 * `"split_w_pack": true` (set by the GGUF reader): the checkpoint stores W_pack's three parts as q_proj, k_proj and
 * v_proj, as llama.cpp's converter writes them; same bytes, three modules.
 */
export function splitWPack(cfg: ConfigReader): boolean {
  return cfg.bool('split_w_pack', false);
}

function variant(cfg: ConfigReader) {
  const hidden = cfg.int(KEYS.hidden, 'hidden size');
  const rotary = baichuanUsesRope(cfg);
  return {
    hidden,
    rotary,
    layerClass: rotary ? 'DecoderLayer' : 'BaichuanLayer',
    attnClass: rotary ? 'Attention' : 'BaichuanAttention',
  };
}

export function buildBaichuan(cfg: ConfigReader, dtype: string): ModelLayout {
  if (cfg.architectures()[0] === 'BaiChuanForCausalLM') {
    // Reached through model_type "baichuan": the first Baichuan-7B, whose remote code (Model,
    // BaiChuanForCausalLM, persistent rotary tables) this spec does not describe.
    throw new InputError(
      cfg.file,
      'BaiChuanForCausalLM (the first Baichuan-7B) is not modelled; vramfit knows BaichuanForCausalLM (Baichuan 2, Baichuan 13B)',
      'UNSUPPORTED_ARCHITECTURE',
    );
  }
  const v = variant(cfg);
  const hidden = v.hidden;
  const layers = cfg.int(KEYS.layers, 'layer count');
  const heads = cfg.int(KEYS.heads, 'attention heads');
  const vocab = cfg.int(KEYS.vocab, 'vocab size');
  const intermediate = cfg.int(['intermediate_size'], 'intermediate size');
  // NormHead normalises its weight on first use (eval) or every call (training); same tensor either way.
  const headClass = baichuanNormHead(cfg) ? 'NormHead' : 'Linear';
  const tie = cfg.bool('tie_word_embeddings', false);

  const tree = new ModuleTree(dtype);
  tree.root.child('model', 'BaichuanModel', (model) => {
    model.embedding('embed_tokens', vocab, hidden);
    model.list('layers', layers, v.layerClass, (layer) => {
      layer.child('self_attn', v.attnClass, (a) => {
        if (splitWPack(cfg)) for (const part of ['q_proj', 'k_proj', 'v_proj']) a.linear(part, hidden, hidden);
        else a.linear('W_pack', hidden, 3 * hidden);
        a.linear('o_proj', hidden, hidden);
        // 7B keeps inv_freq and the cos/sin tables as plain attributes: a module with no tensors.
        if (v.rotary) a.leaf('rotary_emb', 'RotaryEmbedding');
      });
      layer.child('mlp', 'MLP', (m) => {
        m.linear('gate_proj', hidden, intermediate);
        m.linear('down_proj', intermediate, hidden);
        m.linear('up_proj', hidden, intermediate);
        m.leaf('act_fn', 'SiLU');
      });
      layer.norm('input_layernorm', 'RMSNorm', hidden);
      layer.norm('post_attention_layernorm', 'RMSNorm', hidden);
    });
    model.norm('norm', 'RMSNorm', hidden);
    // 13B's ALiBi mask (`future_mask`, [heads, max_len, max_len]) is registered on the first forward,
    // so it is runtime memory, not part of the built model.
  });
  tree.root.child('lm_head', headClass, (h) => h.param('weight', [vocab, hidden]));

  return decoderLayout({
    rootClass: 'BaichuanForCausalLM',
    tree,
    tie: tie ? ['model.embed_tokens.weight', 'lm_head.weight'] : undefined,
    blocks: { prefix: 'model.layers', count: layers, class: v.layerClass },
    attention: {
      hiddenSize: hidden,
      vocabSize: vocab,
      numHeads: heads,
      numKvHeads: heads,
      headDim: Math.floor(hidden / heads),
      intermediateSize: intermediate,
      maxPositionEmbeddings: cfg.optInt(v.rotary ? ['max_position_embeddings', 'model_max_length'] : ['model_max_length', 'max_position_embeddings']),
    },
  });
}

export const baichuan: ArchitectureSpec = {
  family: 'baichuan',
  architectures: ['BaichuanForCausalLM'],
  modelTypes: ['baichuan'],
  build: buildBaichuan,
};
