import { InputError } from '../../util/errors.js';
import { ConfigReader } from '../config.js';
import { buildLlamaStyle } from './llama-style.js';
import type { ArchitectureSpec } from './spec.js';

/**
 * Module class `ACT2FN[name]` builds in transformers 4.5x. `gelu_pytorch_tanh` is `GELUTanh` from 4.56
 * on (`PytorchGELUTanh` before); no tensor depends on it.
 */
function activationClass(cfg: ConfigReader, key: string, fallback: string): string {
  const name = cfg.optString(key) ?? fallback;
  const classes: Record<string, string> = {
    gelu: 'GELUActivation',
    gelu_pytorch_tanh: 'GELUTanh',
    gelu_new: 'NewGELUActivation',
    gelu_fast: 'FastGELUActivation',
    gelu_python: 'GELUActivation',
    silu: 'SiLU',
    swish: 'SiLU',
    relu: 'ReLU',
  };
  const cls = classes[name];
  if (cls === undefined) throw new InputError(cfg.file, `${key} names an activation vramfit does not know: ${JSON.stringify(name)}`, 'BAD_CONFIG');
  return cls;
}

/** GemmaConfig and Gemma2Config default `head_dim` to 256, not hidden_size / heads. */
function withGemmaHeadDim(cfg: ConfigReader): ConfigReader {
  return cfg.raw['head_dim'] === undefined ? new ConfigReader({ ...cfg.raw, head_dim: 256 }, cfg.file) : cfg;
}

/**
 * Gemma 1 (2B, 7B): Llama's layout with (1 + w) RMSNorms, GeGLU and a 256-wide head; the LM head is
 * tied to the embedding unless the config says otherwise, so checkpoints store no `lm_head.weight`.
 * transformers 4.5x builds `act_fn` from `hidden_act` (gemma-2b's config says `gelu`).
 */
export const gemma: ArchitectureSpec = {
  family: 'gemma',
  architectures: ['GemmaForCausalLM'],
  modelTypes: ['gemma'],
  build(raw, dtype) {
    const cfg = withGemmaHeadDim(raw);
    const bias = cfg.bool('attention_bias', false);
    return buildLlamaStyle(cfg, dtype, {
      prefix: 'Gemma',
      qkvBias: bias,
      oBias: bias,
      qkNorm: false,
      mlpBias: false,
      tieDefault: true,
      actClass: activationClass(cfg, 'hidden_act', 'gelu_pytorch_tanh'),
      slidingWindow: null,
    });
  },
};

/**
 * Which Gemma2 layers slide: `layer_types` when the config lists them, else every even layer
 * (0, 2, ...), as Gemma2Config derives them.
 */
function gemma2Sliding(cfg: ConfigReader, layers: number): boolean {
  const types = cfg.raw['layer_types'];
  if (types === undefined || types === null) return layers > 0;
  if (!Array.isArray(types) || !types.every((t) => typeof t === 'string')) {
    throw new InputError(cfg.file, `layer_types must be a list of strings, got ${JSON.stringify(types)}`, 'BAD_CONFIG');
  }
  return types.includes('sliding_attention');
}

/**
 * Gemma 2 (2B, 9B, 27B): Gemma's layout plus `pre_feedforward_layernorm` and
 * `post_feedforward_layernorm` in every layer; even layers attend (and cache) only the last
 * `sliding_window` (default 4096) tokens. Its MLP builds `act_fn` from `hidden_activation`.
 */
export const gemma2: ArchitectureSpec = {
  family: 'gemma2',
  architectures: ['Gemma2ForCausalLM'],
  modelTypes: ['gemma2'],
  build(raw, dtype) {
    const cfg = withGemmaHeadDim(raw);
    const bias = cfg.bool('attention_bias', false);
    const window = cfg.raw['sliding_window'] === undefined ? 4096 : cfg.optInt('sliding_window');
    const sliding = window !== undefined && gemma2Sliding(cfg, cfg.int('num_hidden_layers'));
    return buildLlamaStyle(cfg, dtype, {
      prefix: 'Gemma2',
      qkvBias: bias,
      oBias: bias,
      qkNorm: false,
      mlpBias: false,
      tieDefault: true,
      actClass: activationClass(cfg, 'hidden_activation', 'gelu_pytorch_tanh'),
      feedforwardNorms: true,
      slidingWindow: sliding ? window : null,
    });
  },
};
