import { buildLlamaStyle } from './llama-style.js';
import type { ArchitectureSpec } from './spec.js';

/** Mistral 7B and its fine-tunes (Zephyr, ...): Llama's layout without biases, plus a sliding window. */
export const mistral: ArchitectureSpec = {
  family: 'mistral',
  architectures: ['MistralForCausalLM'],
  modelTypes: ['mistral'],
  llamaStyle(cfg) {
    // MistralConfig defaults sliding_window to 4096 when the key is absent; an explicit null (v0.3) disables it.
    const slidingWindow = cfg.raw['sliding_window'] === undefined ? 4096 : (cfg.optInt('sliding_window') ?? null);
    return { cfg, options: { prefix: 'Mistral', qkvBias: false, oBias: false, qkNorm: false, mlpBias: false, tieDefault: false, slidingWindow } };
  },
  build(cfg, dtype) {
    const f = this.llamaStyle!(cfg);
    return buildLlamaStyle(f.cfg, dtype, f.options);
  },
};
