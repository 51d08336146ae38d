import type { Skeleton } from '../reader/skeleton.js';
import type { Target } from './plan.js';

/**
 * Modules a runtime needs on the first GPU. ChatGLM's remote code (its own device-map helper and
 * `chat()`) moves inputs to the model's first device and reads the embedding, rotary table, final
 * norm and output layer there, so under transformers they must stay on GPU 0.
 */
const PINS: Record<string, Partial<Record<Target, string[]>>> = {
  chatglm: {
    transformers: ['transformer.embedding', 'transformer.rotary_pos_emb', 'transformer.encoder.final_layernorm', 'transformer.output_layer'],
  },
};

export function pinsFor(s: Skeleton, target: Target): string[] {
  const pins = PINS[s.family]?.[target] ?? [];
  const names = new Set(s.modules.map((m) => m.name));
  return pins.filter((p) => names.has(p));
}
