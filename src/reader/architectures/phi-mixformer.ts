import { KEYS, type ConfigReader } from '../config.js';
import { ModuleTree } from '../module-builder.js';
import { activationClass } from './gpt2.js';
import { decoderLayout, type ArchitectureSpec, type ModelLayout } from './spec.js';

/**
 * microsoft/phi-2 (and phi-1.5) before the PhiForCausalLM port: remote code
 * `modeling_mixformer_sequential.py` (Dec 2023, the version whose config has top-level `flash_rotary`
 * and `fused_dense`). One nn.Sequential `layers`: 0 is the embedding, 1..n_layer the ParallelBlocks,
 * n_layer + 1 the CausalLMHead; the decoder blocks therefore start at index 1, not 0.
 */
export function buildMixformer(cfg: ConfigReader, dtype: string): ModelLayout {
  const layers = cfg.int(KEYS.layers, 'layer count');
  const hidden = cfg.int(KEYS.hidden, 'hidden size');
  const heads = cfg.int(KEYS.heads, 'attention heads');
  const kvHeads = cfg.optInt(['n_head_kv'], heads);
  const vocab = cfg.int(KEYS.vocab, 'vocab size');
  const headDim = Math.floor(hidden / heads);
  const inner = cfg.optInt(['n_inner'], 4 * hidden);
  const rotaryDim = cfg.optInt(['rotary_dim'], 0);
  const act = activationClass(cfg, ['activation_function'], 'gelu_new');
  const tie = cfg.bool('tie_word_embeddings', false);
  const headIndex = layers + 1;

  const tree = new ModuleTree(dtype);
  tree.root.child('layers', 'Sequential', (seq) => {
    seq.child('0', 'Embedding', (e) => {
      e.embedding('wte', vocab, hidden);
      e.leaf('drop', 'Dropout');
    });
    for (let i = 1; i <= layers; i++) {
      seq.child(String(i), 'ParallelBlock', (b) => {
        b.norm('ln', 'LayerNorm', hidden, true);
        b.leaf('resid_dropout', 'Dropout');
        b.child('mixer', 'MHA', (a) => {
          // Non-persistent float32 frequencies; its `scale` buffer is registered as None (no tensor).
          if (rotaryDim > 0) a.child('rotary_emb', 'RotaryEmbedding', (r) => r.buffer('inv_freq', [Math.ceil(rotaryDim / 2)], 'float32', false));
          a.linear('Wqkv', hidden, headDim * (heads + 2 * kvHeads), true);
          a.linear('out_proj', hidden, hidden, true);
          a.child('inner_attn', 'SelfAttention', (s) => s.leaf('drop', 'Dropout'));
          a.child('inner_cross_attn', 'CrossAttention', (s) => s.leaf('drop', 'Dropout'));
        });
        b.child('mlp', 'MLP', (m) => {
          m.linear('fc1', hidden, inner, true);
          m.linear('fc2', inner, hidden, true);
          m.leaf('act', act);
        });
      });
    }
    seq.child(String(headIndex), 'CausalLMHead', (h) => {
      h.norm('ln', 'LayerNorm', hidden, true);
      h.linear('linear', hidden, vocab, true);
    });
  });
  tree.root.child('loss', 'CausalLMLoss', (l) => l.leaf('loss_fct', 'CrossEntropyLoss'));

  return decoderLayout({
    rootClass: 'MixFormerSequentialForCausalLM',
    tree,
    tie: tie ? ['layers.0.wte.weight', `layers.${headIndex}.linear.weight`] : undefined,
    // BlockFacts has no start index: the ParallelBlocks are layers.1 .. layers.<count>.
    blocks: { prefix: 'layers', count: layers, class: 'ParallelBlock' },
    attention: {
      hiddenSize: hidden,
      vocabSize: vocab,
      numHeads: heads,
      numKvHeads: kvHeads,
      headDim,
      intermediateSize: inner,
      maxPositionEmbeddings: cfg.optInt(['n_positions']),
    },
  });
}

export const phiMixformer: ArchitectureSpec = {
  family: 'phi-mixformer',
  architectures: ['MixFormerSequentialForCausalLM'],
  modelTypes: ['mixformer-sequential'],
  build: buildMixformer,
};
