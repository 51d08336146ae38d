import type { Plan } from '../plan.js';
import { deviceValue } from './json.js';

/** What `from_pretrained(device_map=…, max_memory=…)` takes, as JSON. */
export function accelerateArgs(p: Plan): { device_map: Record<string, number | string>; max_memory: Record<string, number> } {
  const device_map = Object.fromEntries(p.deviceMap.map(([k, v]) => [k, deviceValue(v)]));
  const max_memory: Record<string, number> = {};
  for (const d of p.devices) {
    if (d.kind === 'disk' || !Number.isFinite(d.cap)) continue;
    max_memory[d.id] = Math.floor(d.cap);
  }
  return { device_map, max_memory };
}

export function renderAccelerate(p: Plan): string {
  return JSON.stringify(accelerateArgs(p), null, 2);
}
