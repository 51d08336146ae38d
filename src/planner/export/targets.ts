import type { Target } from '../plan.js';

/** The runtime each export runs under: `plan --format X` plans for this target. */
export const EXPORT_TARGET = {
  accelerate: 'transformers',
  python: 'transformers',
  'llama.cpp': 'llama.cpp',
  vllm: 'vllm',
  sglang: 'sglang',
  exllamav3: 'exllamav3',
  tabbyapi: 'exllamav3',
} as const satisfies Record<string, Target>;

/** Exports that plan for a target other than `target`, e.g. "accelerate|python" → transformers. */
export function exportsNotFor(target: Target): { formats: string; target: Target }[] {
  const by = new Map<Target, string[]>();
  for (const [format, t] of Object.entries(EXPORT_TARGET)) if (t !== target) by.set(t, [...(by.get(t) ?? []), format]);
  return [...by].map(([t, formats]) => ({ formats: formats.join('|'), target: t }));
}
