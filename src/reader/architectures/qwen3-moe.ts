import { InputError } from '../../util/errors.js';
import type { ConfigReader } from '../config.js';
import { buildLlamaStyle } from './llama-style.js';
import { qwenSlidingWindow } from './qwen2.js';
import type { ArchitectureSpec } from './spec.js';

function mlpOnlyLayers(cfg: ConfigReader): number[] {
  const v = cfg.raw['mlp_only_layers'];
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0)) {
    throw new InputError(cfg.file, `mlp_only_layers must be a list of layer indices, got ${JSON.stringify(v)}`, 'BAD_CONFIG');
  }
  return v as number[];
}

/**
 * Qwen3-MoE (Qwen3-30B-A3B, Qwen3-Coder, 235B-A22B): Qwen3's attention, and in each sparse layer a
 * router `gate` and `num_experts` gate/up/down experts of `moe_intermediate_size`; no shared expert.
 * A layer stays a dense `intermediate_size` MLP when listed in `mlp_only_layers` or off the
 * `decoder_sparse_step` beat. `norm_topk_prob` changes routing only, not tensors.
 */
export const qwen3Moe: ArchitectureSpec = {
  family: 'qwen3-moe',
  architectures: ['Qwen3MoeForCausalLM'],
  modelTypes: ['qwen3_moe'],
  // Unlike Qwen3Config, Qwen3MoeConfig has no head_dim default: without the key it is hidden / heads.
  build(cfg, dtype) {
    const bias = cfg.bool('attention_bias', false);
    const numExperts = cfg.optInt('num_experts', 128);
    const step = cfg.optInt('decoder_sparse_step', 1);
    if (step === 0) throw new InputError(cfg.file, 'decoder_sparse_step must be at least 1', 'BAD_CONFIG');
    const denseOnly = new Set(mlpOnlyLayers(cfg));
    return buildLlamaStyle(cfg, dtype, {
      prefix: 'Qwen3Moe',
      qkvBias: bias,
      oBias: bias,
      qkNorm: true,
      mlpBias: false,
      tieDefault: false,
      slidingWindow: qwenSlidingWindow(cfg, cfg.int('num_hidden_layers')),
      moe: {
        attr: 'mlp',
        blockClass: 'Qwen3MoeSparseMoeBlock',
        expertClass: 'Qwen3MoeMLP',
        names: { gate: 'gate_proj', down: 'down_proj', up: 'up_proj' },
        numExperts,
        expertsPerToken: cfg.optInt('num_experts_per_tok', 8),
        expertIntermediate: cfg.optInt('moe_intermediate_size', 768),
        isDense: (i) => denseOnly.has(i) || !(numExperts > 0 && (i + 1) % step === 0),
      },
    });
  },
};
