/**
 * A user's own layer split (`layerSplit`): the planner's per-device predictions for a placement the
 * user chose, so a device that cannot hold its share is refused before anything is loaded.
 */
import { tensorBytes } from '../reader/dtypes.js';
import type { Skeleton } from '../reader/skeleton.js';
import { InputError } from '../util/errors.js';
import { measuredWorkspaceOf, planFit, type MeasuredWorkspace } from './fit.js';
import { alignedKvBytesPerLayer } from './memory-model.js';
import { alignUp } from './placement-units.js';
import type { Plan, PlanDeviceSpec } from './plan.js';

/** How the model's placement units are named (the engine's architecture knows). */
export interface ManualUnits {
  embed: string;
  head: string;
  block: (i: number) => string;
  layers: number;
  /** The head reads the embedding matrix, so it goes with the embedding. */
  tied: boolean;
}

/**
 * A plan for a user's own split, with the same per-device predictions the planner would make, so a
 * device that cannot hold its share is refused by its allocator before anything is loaded.
 */
export function manualPlan(
  s: Skeleton,
  u: ManualUnits,
  specs: PlanDeviceSpec[],
  split: number[],
  workload: Plan['workload'],
  measured: MeasuredWorkspace,
  alignment = 1,
): Plan {
  const accelerators = specs.filter((d) => d.kind !== 'cpu');
  if (split.length !== accelerators.length || split.some((n) => !Number.isSafeInteger(n) || n < 0) || split.reduce((a, b) => a + b, 0) !== u.layers) {
    throw new InputError('--split', `expected ${accelerators.length} layer counts adding up to ${u.layers}, got ${split.join(',')}`);
  }
  // Plan as if each device had room, then pin every unit where the user put it.
  const roomy = accelerators.map((d) => ({ ...d, cap: Number.MAX_SAFE_INTEGER }));
  const base = planFit({ skeleton: s, devices: roomy, workload, target: 'vramfit', measuredWorkspace: measured, alignment, remedies: false });
  const blockOf = new Map(Array.from({ length: u.layers }, (_, i) => [u.block(i), i] as const));
  const where = (unit: string): string => {
    const index = blockOf.get(unit);
    if (index !== undefined) {
      let layer = index;
      for (let d = 0; d < split.length; d++) {
        if (layer < split[d]!) return accelerators[d]!.id;
        layer -= split[d]!;
      }
    }
    // Whatever precedes the first block (GPT-2's wpe beside wte) is embedding-side: the engine loads it with the embedding.
    if (unit === u.embed || (u.tied && unit === u.head) || beforeBlocks.has(unit)) return accelerators[0]!.id;
    return accelerators.at(-1)!.id;
  };
  const units = base.devices.flatMap((d) => d.modules);
  const firstBlock = units.findIndex((m) => blockOf.has(m));
  const beforeBlocks = new Set(units.slice(0, Math.max(0, firstBlock)).filter((m) => m !== u.head));
  const kvLayer = s.attention ? alignedKvBytesPerLayer(s.attention, workload, alignment) : 0;
  const devices = accelerators.map((d) => {
    const modules = units.filter((u) => where(u) === d.id);
    const weights = modules.reduce((sum, m) => sum + unitWeights(s, m, workload.dtype, alignment), 0);
    const layers = modules.filter((m) => blockOf.has(m)).length;
    const roles = { embed: modules.includes(u.embed), block: layers > 0, head: modules.includes(u.head) };
    const workspace = measuredWorkspaceOf(measured, d.kind, roles, layers) ?? 0;
    return {
      ...base.devices[0]!,
      id: d.id,
      kind: d.kind,
      cap: d.cap,
      weights,
      kv: layers * kvLayer,
      workspace,
      overhead: d.overhead,
      used: weights + layers * kvLayer + workspace + d.overhead,
      modules,
      ranges: [] as string[],
      tiedDuplicates: [] as string[],
    };
  });
  return { ...base, strategy: 'manual split', devices };
}

/** Bytes a unit's tensors take as the engine loads them: vectors as float32, matrices as stored or --dtype. */
function unitWeights(s: Skeleton, unit: string, dtype: string | undefined, alignment: number): number {
  const aliases = new Set(s.tied.flatMap((g) => g.slice(1)));
  return s.tensors
    .filter((t) => (t.name.startsWith(`${unit}.`) || t.name === unit) && !aliases.has(t.name) && !(t.kind === 'buffer' && t.persistent === false))
    .reduce((sum, t) => sum + alignUp(tensorBytes(t.shape, t.shape.length === 1 ? 'float32' : (dtype ?? t.dtype)), alignment), 0);
}
