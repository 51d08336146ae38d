import { KEYS, type ConfigReader } from '../config.js';
import { ModuleTree, type ModuleScope } from '../module-builder.js';
import { InputError } from '../../util/errors.js';
import { decoderLayout, type ArchitectureSpec, type ModelLayout } from './spec.js';

/**
 * Class of the module transformers' `ACT2FN[name]` builds, for the families that pick their activation
 * from the config (GPT-2, GPT-J, Falcon, MixFormer). Only the class name reaches the skeleton.
 */
const ACT2CLS: Readonly<Record<string, string>> = {
  gelu: 'GELUActivation',
  gelu_10: 'ClippedGELUActivation',
  gelu_fast: 'FastGELUActivation',
  gelu_new: 'NewGELUActivation',
  gelu_python: 'GELUActivation',
  gelu_pytorch_tanh: 'PytorchGELUTanh',
  gelu_accurate: 'AccurateGELUActivation',
  laplace: 'LaplaceActivation',
  leaky_relu: 'LeakyReLU',
  linear: 'LinearActivation',
  mish: 'MishActivation',
  quick_gelu: 'QuickGELUActivation',
  relu: 'ReLU',
  relu2: 'ReLUSquaredActivation',
  relu6: 'ReLU6',
  sigmoid: 'Sigmoid',
  silu: 'SiLU',
  swish: 'SiLU',
  tanh: 'Tanh',
};

export function activationClass(cfg: ConfigReader, keys: readonly string[], fallback: string): string {
  const name = cfg.optString(keys) ?? fallback;
  const cls = ACT2CLS[name];
  // transformers raises on an unknown activation too, so the model could not be built at all.
  if (!cls) throw new InputError(cfg.file, `${keys[0]} names an activation transformers does not know: ${JSON.stringify(name)}`, 'BAD_CONFIG');
  return cls;
}

/** GPT-2's attention: a causal-mask buffer sized by n_positions, then fused QKV as a Conv1D. */
function gpt2Attention(a: ModuleScope, hidden: number, positions: number, dtype: string, cross: boolean): void {
  // Non-persistent in current transformers; checkpoints saved by older releases still carry both.
  a.buffer('bias', [1, 1, positions, positions], 'bool', false);
  a.buffer('masked_bias', [], dtype, false);
  if (cross) {
    a.conv1d('c_attn', hidden, 2 * hidden);
    a.conv1d('q_attn', hidden, hidden);
  } else {
    a.conv1d('c_attn', hidden, 3 * hidden);
  }
  a.conv1d('c_proj', hidden, hidden);
  a.leaf('attn_dropout', 'Dropout');
  a.leaf('resid_dropout', 'Dropout');
}

export function buildGpt2(cfg: ConfigReader, dtype: string): ModelLayout {
  const layers = cfg.int(KEYS.layers, 'layer count');
  const hidden = cfg.int(KEYS.hidden, 'hidden size');
  const heads = cfg.int(KEYS.heads, 'attention heads');
  const vocab = cfg.int(KEYS.vocab, 'vocab size');
  // GPT2Config maps max_position_embeddings to n_positions; n_ctx is a legacy key nothing reads.
  const positions = cfg.optInt(['n_positions', 'max_position_embeddings'], 1024);
  const inner = cfg.optInt(['n_inner'], 4 * hidden);
  const act = activationClass(cfg, ['activation_function'], 'gelu_new');
  const cross = cfg.bool('add_cross_attention', false);
  const tie = cfg.bool('tie_word_embeddings', true);

  const tree = new ModuleTree(dtype);
  tree.root.child('transformer', 'GPT2Model', (t) => {
    t.embedding('wte', vocab, hidden);
    t.embedding('wpe', positions, hidden);
    t.leaf('drop', 'Dropout');
    t.list('h', layers, 'GPT2Block', (b) => {
      b.norm('ln_1', 'LayerNorm', hidden, true);
      b.child('attn', 'GPT2Attention', (a) => gpt2Attention(a, hidden, positions, dtype, false));
      b.norm('ln_2', 'LayerNorm', hidden, true);
      if (cross) {
        b.child('crossattention', 'GPT2Attention', (a) => gpt2Attention(a, hidden, positions, dtype, true));
        b.norm('ln_cross_attn', 'LayerNorm', hidden, true);
      }
      b.child('mlp', 'GPT2MLP', (m) => {
        m.conv1d('c_fc', hidden, inner);
        m.conv1d('c_proj', inner, hidden);
        m.leaf('act', act);
        m.leaf('dropout', 'Dropout');
      });
    });
    t.norm('ln_f', 'LayerNorm', hidden, true);
  });
  tree.root.linear('lm_head', hidden, vocab, false);

  return decoderLayout({
    rootClass: 'GPT2LMHeadModel',
    tree,
    tie: tie ? ['transformer.wte.weight', 'lm_head.weight'] : undefined,
    blocks: { prefix: 'transformer.h', count: layers, class: 'GPT2Block' },
    attention: {
      hiddenSize: hidden,
      vocabSize: vocab,
      numHeads: heads,
      numKvHeads: heads,
      headDim: Math.floor(hidden / heads),
      intermediateSize: inner,
      maxPositionEmbeddings: positions,
    },
  });
}

/** GPT-2 (and DistilGPT-2, which shares the class). */
export const gpt2: ArchitectureSpec = {
  family: 'gpt2',
  architectures: ['GPT2LMHeadModel'],
  modelTypes: ['gpt2'],
  build: buildGpt2,
  // GPT2Config leaves torch_dtype unset and the original checkpoints are float32.
  defaultDtype: 'float32',
};
