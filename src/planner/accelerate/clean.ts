/**
 * accelerate's `clean_device_map`: a subtree whose entries (two or more) all landed on one device becomes one entry
 * under its prefix, moved to the end of the map; a model entirely on one device becomes `{"": device}`.
 */
import type { AccelerateDevice } from './max-memory.js';

export function cleanDeviceMap(map: Map<string, AccelerateDevice>, moduleName = ''): Map<string, AccelerateDevice> {
  const prefix = moduleName === '' ? '' : `${moduleName}.`;
  const under = [...map.keys()].filter((k) => k.startsWith(prefix));
  const values = under.map((k) => map.get(k) as AccelerateDevice);
  if (values.length > 1 && new Set(values).size === 1) {
    for (const k of under) map.delete(k);
    map.set(moduleName, values[0] as AccelerateDevice);
  }
  // Recurse into the next name level below this module (deletions above never touch other subtrees).
  const depth = moduleName === '' ? 1 : moduleName.split('.').length + 1;
  const children = new Set(
    [...map.keys()].filter((k) => k.startsWith(prefix) && k.length > moduleName.length).map((k) => k.split('.').slice(0, depth).join('.')),
  );
  for (const child of children) cleanDeviceMap(map, child);
  return map;
}
