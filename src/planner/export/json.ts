import type { Plan } from '../plan.js';

/** The plan as versioned JSON; an unlimited cap (Infinity) is written as null. */
export function renderPlanJson(p: Plan): string {
  return JSON.stringify(
    { ...p, deviceMap: Object.fromEntries(p.deviceMap.map(([k, v]) => [k, deviceValue(v)])) },
    (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v),
    2,
  );
}

/** accelerate's device values: integers for GPUs, strings for cpu and disk. */
export function deviceValue(id: string): number | string {
  return /^\d+$/.test(id) ? Number(id) : id;
}
