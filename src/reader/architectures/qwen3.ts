import { ConfigReader } from '../config.js';
import { buildLlamaStyle } from './llama-style.js';
import { qwenSlidingWindow } from './qwen2.js';
import type { ArchitectureSpec } from './spec.js';

/** Qwen3Config's `head_dim` defaults to 128, not hidden_size / heads, when config.json leaves it out. */
export function withQwen3HeadDim(cfg: ConfigReader): ConfigReader {
  return cfg.raw['head_dim'] === undefined ? new ConfigReader({ ...cfg.raw, head_dim: 128 }, cfg.file) : cfg;
}

/** Qwen3 dense models: per-head RMSNorm on queries and keys; `attention_bias` covers q, k, v and o. */
export const qwen3: ArchitectureSpec = {
  family: 'qwen3',
  architectures: ['Qwen3ForCausalLM'],
  modelTypes: ['qwen3'],
  llamaStyle(raw) {
    const cfg = withQwen3HeadDim(raw);
    const bias = cfg.bool('attention_bias', false);
    return {
      cfg,
      options: {
        prefix: 'Qwen3',
        qkvBias: bias,
        oBias: bias,
        qkNorm: true,
        mlpBias: false,
        tieDefault: false,
        slidingWindow: qwenSlidingWindow(cfg, cfg.int('num_hidden_layers')),
      },
    };
  },
  build(cfg, dtype) {
    const f = this.llamaStyle!(cfg);
    return buildLlamaStyle(f.cfg, dtype, f.options);
  },
};
