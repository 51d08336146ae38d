import { buildLlamaStyle } from './llama-style.js';
import type { ArchitectureSpec } from './spec.js';

/**
 * Mixtral 8x7B / 8x22B (and WizardLM-2): Mistral's attention with a `block_sparse_moe` of
 * `num_local_experts` w1/w2/w3 experts in every layer. transformers 4.x keeps one Linear per expert
 * (the fused 3-D expert tensors came with 5.x), so checkpoint names map one to one.
 */
export const mixtral: ArchitectureSpec = {
  family: 'mixtral',
  architectures: ['MixtralForCausalLM'],
  modelTypes: ['mixtral'],
  build(cfg, dtype) {
    return buildLlamaStyle(cfg, dtype, {
      prefix: 'Mixtral',
      qkvBias: false,
      oBias: false,
      qkNorm: false,
      mlpBias: false,
      tieDefault: false,
      moe: {
        attr: 'block_sparse_moe',
        blockClass: 'MixtralSparseMoeBlock',
        expertClass: 'MixtralBlockSparseTop2MLP',
        names: { gate: 'w1', down: 'w2', up: 'w3' },
        numExperts: cfg.optInt(['num_local_experts'], 8),
        expertsPerToken: cfg.optInt(['num_experts_per_tok'], 2),
        expertIntermediate: cfg.int('intermediate_size'),
      },
    });
  },
};
