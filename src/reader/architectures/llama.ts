import { buildLlamaStyle, legacyRotary } from './llama-style.js';
import type { ArchitectureSpec } from './spec.js';

/** Llama 1/2/3 (and LLaMA-derived fine-tunes): `attention_bias` covers q/k/v and o. */
export const llama: ArchitectureSpec = {
  family: 'llama',
  architectures: ['LlamaForCausalLM', 'LLaMAForCausalLM'],
  modelTypes: ['llama'],
  llamaStyle(cfg) {
    const bias = cfg.bool('attention_bias', false);
    return { cfg, options: { prefix: 'Llama', qkvBias: bias, oBias: bias, qkNorm: false, mlpBias: cfg.bool('mlp_bias', false), tieDefault: false } };
  },
  build(cfg, dtype) {
    const f = this.llamaStyle!(cfg);
    return buildLlamaStyle(f.cfg, dtype, f.options);
  },
  legacyTensor: legacyRotary('Llama'),
};
