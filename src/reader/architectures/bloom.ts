import { KEYS, type ConfigReader } from '../config.js';
import { ModuleTree } from '../module-builder.js';
import { decoderLayout, type ArchitectureSpec, type ModelLayout } from './spec.js';

/**
 * BLOOM: ALiBi (no position tensors at all), a LayerNorm right after the embedding, biases everywhere.
 * bigscience/bloom was saved from BloomModel, so its tensor names lack the `transformer.` prefix that
 * BloomForCausalLM adds when loading (base_model_prefix).
 */
export function buildBloom(cfg: ConfigReader, dtype: string): ModelLayout {
  const layers = cfg.int(KEYS.layers, 'layer count');
  const hidden = cfg.int(KEYS.hidden, 'hidden size');
  const heads = cfg.int(KEYS.heads, 'attention heads');
  const vocab = cfg.int(KEYS.vocab, 'vocab size');
  const tie = cfg.bool('tie_word_embeddings', true);

  const tree = new ModuleTree(dtype);
  tree.root.child('transformer', 'BloomModel', (t) => {
    t.embedding('word_embeddings', vocab, hidden);
    t.norm('word_embeddings_layernorm', 'LayerNorm', hidden, true);
    t.list('h', layers, 'BloomBlock', (b) => {
      b.norm('input_layernorm', 'LayerNorm', hidden, true);
      b.child('self_attention', 'BloomAttention', (a) => {
        a.linear('query_key_value', hidden, 3 * hidden, true);
        a.linear('dense', hidden, hidden, true);
        a.leaf('attention_dropout', 'Dropout');
      });
      b.norm('post_attention_layernorm', 'LayerNorm', hidden, true);
      b.child('mlp', 'BloomMLP', (m) => {
        m.linear('dense_h_to_4h', hidden, 4 * hidden, true);
        m.leaf('gelu_impl', 'BloomGelu');
        m.linear('dense_4h_to_h', 4 * hidden, hidden, true);
      });
    });
    t.norm('ln_f', 'LayerNorm', hidden, true);
  });
  tree.root.linear('lm_head', hidden, vocab, false);

  return decoderLayout({
    rootClass: 'BloomForCausalLM',
    tree,
    tie: tie ? ['transformer.word_embeddings.weight', 'lm_head.weight'] : undefined,
    blocks: { prefix: 'transformer.h', count: layers, class: 'BloomBlock' },
    attention: {
      hiddenSize: hidden,
      vocabSize: vocab,
      numHeads: heads,
      numKvHeads: heads,
      headDim: Math.floor(hidden / heads),
      intermediateSize: 4 * hidden,
    },
  });
}

export const bloom: ArchitectureSpec = {
  family: 'bloom',
  architectures: ['BloomForCausalLM'],
  modelTypes: ['bloom'],
  build: buildBloom,
};
