import type { Plan } from '../plan.js';

/** Records keyed by module or device names: their keys are data, never renamed. */
const NAME_KEYED = new Set(['device_map', 'module_sizes', 'max_memory_used', 'balanced_max_memory']);

const snake = (key: string): string => key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** Field names in snake_case, as Python users read them (`run --json` writes the same convention). */
function snakeKeys(value: unknown, parentKey = ''): unknown {
  if (Array.isArray(value)) return value.map((v) => snakeKeys(v));
  if (value === null || typeof value !== 'object') return value;
  const keep = NAME_KEYED.has(parentKey);
  return Object.fromEntries(
    Object.entries(value as Record<string, unknown>).map(([k, v]) => {
      const key = keep ? k : snake(k);
      return [key, keep ? v : snakeKeys(v, key)];
    }),
  );
}

/** The plan as versioned JSON in snake_case; an unlimited cap (Infinity) is written as null. */
export function renderPlanJson(p: Plan): string {
  const withMap = { ...p, deviceMap: Object.fromEntries(p.deviceMap.map(([k, v]) => [k, deviceValue(v)])) };
  return JSON.stringify(snakeKeys(withMap), (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2);
}

/** accelerate's device values: integers for GPUs, strings for cpu and disk. */
export function deviceValue(id: string): number | string {
  return /^\d+$/.test(id) ? Number(id) : id;
}
