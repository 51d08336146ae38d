import { InputError } from '../../util/errors.js';
import type { ConfigReader } from '../config.js';
import { buildLlamaStyle } from './llama-style.js';
import type { ArchitectureSpec } from './spec.js';

/**
 * The sliding window Qwen2/Qwen3 attention really uses, or null. Their configs carry `sliding_window`
 * (4096, 131072, ...) even when `use_sliding_window` is false, and then no layer slides; when it is
 * true, the layers from `max_window_layers` on slide (or those `layer_types` marks).
 */
export function qwenSlidingWindow(cfg: ConfigReader, layers: number): number | null {
  const window = cfg.optInt('sliding_window');
  if (!cfg.bool('use_sliding_window', false) || window === undefined) return null;
  const types = cfg.raw['layer_types'];
  if (types !== undefined && types !== null) {
    if (!Array.isArray(types) || !types.every((t) => typeof t === 'string')) {
      throw new InputError(cfg.file, `layer_types must be a list of strings, got ${JSON.stringify(types)}`, 'BAD_CONFIG');
    }
    return types.includes('sliding_attention') ? window : null;
  }
  return layers > cfg.optInt('max_window_layers', 28) ? window : null;
}

/** Qwen2 and Qwen2.5 (and fine-tunes such as cogito): Llama's layout with biases on q, k and v only. */
export const qwen2: ArchitectureSpec = {
  family: 'qwen2',
  architectures: ['Qwen2ForCausalLM'],
  modelTypes: ['qwen2'],
  llamaStyle(cfg) {
    return {
      cfg,
      options: {
        prefix: 'Qwen2',
        qkvBias: true,
        oBias: false,
        qkNorm: false,
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
