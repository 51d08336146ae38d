import { KEYS, type ConfigReader } from '../config.js';
import { ModuleTree } from '../module-builder.js';
import { activationClass } from './gpt2.js';
import { decoderLayout, type ArchitectureSpec, type LegacyTensor, type ModelLayout } from './spec.js';

function dims(cfg: ConfigReader) {
  const hidden = cfg.int(KEYS.hidden, 'hidden size');
  return {
    layers: cfg.int(KEYS.layers, 'layer count'),
    hidden,
    heads: cfg.int(KEYS.heads, 'attention heads'),
    vocab: cfg.int(KEYS.vocab, 'vocab size'),
    positions: cfg.optInt(['n_positions', 'max_position_embeddings'], 2048),
    inner: cfg.optInt(['n_inner'], 4 * hidden),
  };
}

export function buildGptj(cfg: ConfigReader, dtype: string): ModelLayout {
  const d = dims(cfg);
  const act = activationClass(cfg, ['activation_function'], 'gelu_new');
  // GPTJConfig defaults tie_word_embeddings to False, unlike PretrainedConfig.
  const tie = cfg.bool('tie_word_embeddings', false);

  const tree = new ModuleTree(dtype);
  tree.root.child('transformer', 'GPTJModel', (t) => {
    t.embedding('wte', d.vocab, d.hidden);
    t.leaf('drop', 'Dropout');
    t.list('h', d.layers, 'GPTJBlock', (b) => {
      b.norm('ln_1', 'LayerNorm', d.hidden, true);
      // Current GPTJAttention keeps its sin/cos table as a plain attribute and no mask buffer at all.
      b.child('attn', 'GPTJAttention', (a) => {
        a.leaf('attn_dropout', 'Dropout');
        a.leaf('resid_dropout', 'Dropout');
        a.linear('k_proj', d.hidden, d.hidden);
        a.linear('v_proj', d.hidden, d.hidden);
        a.linear('q_proj', d.hidden, d.hidden);
        a.linear('out_proj', d.hidden, d.hidden);
      });
      b.child('mlp', 'GPTJMLP', (m) => {
        m.linear('fc_in', d.hidden, d.inner, true);
        m.linear('fc_out', d.inner, d.hidden, true);
        m.leaf('act', act);
        m.leaf('dropout', 'Dropout');
      });
    });
    t.norm('ln_f', 'LayerNorm', d.hidden, true);
  });
  tree.root.linear('lm_head', d.hidden, d.vocab, true);

  return decoderLayout({
    rootClass: 'GPTJForCausalLM',
    tree,
    tie: tie ? ['transformer.wte.weight', 'lm_head.weight'] : undefined,
    blocks: { prefix: 'transformer.h', count: d.layers, class: 'GPTJBlock' },
    attention: {
      hiddenSize: d.hidden,
      vocabSize: d.vocab,
      numHeads: d.heads,
      numKvHeads: d.heads,
      headDim: Math.floor(d.hidden / d.heads),
      intermediateSize: d.inner,
      maxPositionEmbeddings: d.positions,
    },
  });
}

const LEGACY_MASK = /^transformer\.h\.(\d+)\.attn\.(bias|masked_bias)$/;

/**
 * GPT-J checkpoints saved before transformers dropped the attention mask buffers (pygmalion-6b,
 * gpt-j-6B's float16 branch) store a bool causal mask [1, 1, n_positions, n_positions] and the scalar
 * `masked_bias` per layer: 4 MiB + 2 B each at 2048 positions in float16.
 */
export function legacyGptjMask(name: string, cfg: ConfigReader, dtype: string): LegacyTensor | undefined {
  const m = LEGACY_MASK.exec(name);
  if (!m) return undefined;
  const d = dims(cfg);
  if (Number(m[1]) >= d.layers) return undefined;
  const module = `transformer.h.${m[1]}.attn`;
  if (m[2] === 'bias') return { module, moduleClass: 'GPTJAttention', shape: [1, 1, d.positions, d.positions], dtypes: ['bool'] };
  // Created as float32 and converted with the model when it was saved in half precision.
  return { module, moduleClass: 'GPTJAttention', shape: [], dtypes: dtype === 'float32' ? ['float32'] : [dtype, 'float32'] };
}

/** GPT-J (EleutherAI gpt-j-6B and its fine-tunes). */
export const gptj: ArchitectureSpec = {
  family: 'gptj',
  architectures: ['GPTJForCausalLM'],
  modelTypes: ['gptj'],
  build: buildGptj,
  legacyTensor: legacyGptjMask,
};
