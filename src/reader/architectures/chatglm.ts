import { KEYS, type ConfigReader } from '../config.js';
import { ModuleTree, type ModuleScope } from '../module-builder.js';
import { InputError } from '../../util/errors.js';
import { standardAttention, type ArchitectureSpec, type ModelLayout } from './spec.js';

/**
 * ChatGLM2 / ChatGLM3 / GLM-4 (THUDM remote code, `modeling_chatglm.py`). Whatever the config's
 * `architectures` says (`ChatGLMModel` in the released configs), `auto_map` loads
 * ChatGLMForConditionalGeneration for AutoModel and AutoModelForCausalLM alike, whose only child is the
 * `transformer` tree; the LM head is `transformer.output_layer`.
 */
export function buildChatglm(cfg: ConfigReader, dtype: string): ModelLayout {
  if (!cfg.has('padded_vocab_size', 'kv_channels', 'ffn_hidden_size') && cfg.has('inner_hidden_size', 'position_encoding_2d')) {
    throw new InputError(cfg.file, 'this is a ChatGLM-6B (first generation) config; vramfit models ChatGLM2 and later only', 'UNSUPPORTED_ARCHITECTURE');
  }
  const layers = cfg.int(['num_layers', 'num_hidden_layers'], 'layer count');
  const hidden = cfg.int(KEYS.hidden, 'hidden size');
  const heads = cfg.int(KEYS.heads, 'attention heads');
  const vocab = cfg.int(['padded_vocab_size', 'vocab_size'], 'vocab size');
  const ffn = cfg.int(['ffn_hidden_size'], 'ffn hidden size');
  // ChatGLMConfig's defaults for the keys a config may leave out.
  const headDim = cfg.optInt(['kv_channels'], Math.floor(hidden / heads));
  const mqa = cfg.bool('multi_query_attention', false);
  const groups = mqa ? cfg.optInt(['multi_query_group_num'], 1) : heads;
  const qkvBias = cfg.bool('add_bias_linear', false) || cfg.bool('add_qkv_bias', false);
  const linearBias = cfg.bool('add_bias_linear', false);
  const rms = cfg.bool('rmsnorm', true);
  const norm = rms ? 'RMSNorm' : 'LayerNorm';
  const postNorm = cfg.bool('post_layer_norm', true);
  const preSeqLen = cfg.optInt(['pre_seq_len']);
  const projection = heads * headDim;
  const bits = cfg.optInt(['quantization_bit'], 0);
  if (bits !== 0 && bits !== 4 && bits !== 8) {
    throw new InputError(cfg.file, `quantization_bit must be 0, 4 or 8, got ${bits}`, 'BAD_CONFIG');
  }
  // chatglm2-6b-int4 and kin: the constructor swaps the encoder's Linears for QuantizedLinear, whose
  // weight packs 8 / bits values per int8 byte and carries one scale per output row.
  const linear = (m: ModuleScope, name: string, inF: number, outF: number, bias: boolean): void => {
    if (bits === 0) {
      m.linear(name, inF, outF, bias);
      return;
    }
    m.child(name, 'QuantizedLinear', (q) => {
      q.param('weight', [outF, Math.floor((inF * bits) / 8)], 'int8');
      q.param('weight_scale', [outF]);
      if (bias) q.param('bias', [outF]);
    });
  };

  const tree = new ModuleTree(dtype);
  tree.root.child('transformer', 'ChatGLMModel', (t) => {
    t.child('embedding', 'Embedding', (e) => e.embedding('word_embeddings', vocab, hidden));
    // Registered without persistent=False, so every checkpoint stores it; built in config.torch_dtype.
    // RotaryEmbedding(rotary_dim // 2) keeps one frequency per pair of those.
    const freqs = Math.ceil(Math.floor(headDim / 2) / 2);
    t.child('rotary_pos_emb', 'RotaryEmbedding', (r) => r.buffer('inv_freq', [freqs], dtype, true));
    t.child('encoder', 'GLMTransformer', (enc) => {
      enc.list('layers', layers, 'GLMBlock', (b) => {
        b.norm('input_layernorm', norm, hidden, !rms);
        b.child('self_attention', 'SelfAttention', (a) => {
          linear(a, 'query_key_value', hidden, projection + 2 * groups * headDim, qkvBias);
          // CoreAttention also holds an attention Dropout in the remote code; the accelerate oracle
          // (fixtures 017) lists CoreAttention as a leaf, and a tensorless leaf never moves a split.
          a.leaf('core_attention', 'CoreAttention');
          linear(a, 'dense', projection, hidden, linearBias);
        });
        b.norm('post_attention_layernorm', norm, hidden, !rms);
        b.child('mlp', 'MLP', (m) => {
          // SwiGLU: gate and up projections fused into one [2 × ffn, hidden] weight.
          linear(m, 'dense_h_to_4h', hidden, 2 * ffn, linearBias);
          linear(m, 'dense_4h_to_h', ffn, hidden, linearBias);
        });
      });
      if (postNorm) enc.norm('final_layernorm', norm, hidden, !rms);
    });
    t.linear('output_layer', hidden, vocab, false);
    if (preSeqLen !== undefined) {
      // P-tuning v2 prefix: learned past key/values for every layer.
      const kvSize = layers * headDim * groups * 2;
      t.child('prefix_encoder', 'PrefixEncoder', (p) => {
        p.embedding('embedding', preSeqLen, kvSize);
        if (cfg.bool('prefix_projection', false)) {
          p.child('trans', 'Sequential', (s) => {
            s.linear('0', kvSize, hidden, true);
            s.leaf('1', 'Tanh');
            s.linear('2', hidden, kvSize, true);
          });
        }
      });
      t.leaf('dropout', 'Dropout');
    }
  });

  return {
    rootClass: 'ChatGLMForConditionalGeneration',
    tree,
    // The remote code defines no get_output_embeddings, so tie_word_embeddings never ties anything.
    tied: [],
    noSplit: ['GLMBlock'],
    blocks: { prefix: 'transformer.encoder.layers', count: layers, class: 'GLMBlock' },
    attention: standardAttention({
      numLayers: layers,
      hiddenSize: hidden,
      vocabSize: vocab,
      numHeads: heads,
      // The KV cache keeps the groups before they are expanded to all heads.
      numKvHeads: groups,
      headDim,
      intermediateSize: ffn,
      maxPositionEmbeddings: cfg.optInt(['seq_length', 'max_position_embeddings']),
    }),
  };
}

export const chatglm: ArchitectureSpec = {
  family: 'chatglm',
  architectures: ['ChatGLMModel', 'ChatGLMForConditionalGeneration'],
  modelTypes: ['chatglm'],
  build: buildChatglm,
};
